"""The spectral core against scipy and against its own definitions."""

from fractions import Fraction

import numpy as np
import pytest
import scipy.fft
import torch

from spectralar_hf.spectral import dct_2d, idct_2d, lowpass, omega_schedule, spectral_target, validate_omega


def _scipy_dct(x: torch.Tensor) -> np.ndarray:
    return scipy.fft.dctn(x.double().numpy(), type=2, norm="ortho", axes=(-2, -1))


@pytest.mark.parametrize("shape", [(2, 3, 16, 16), (5, 32, 32), (3, 17, 23), (8, 8)])
def test_dct_matches_scipy_float64(shape):
    x = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ours = dct_2d(x)
    assert ours.dtype == torch.float64 and ours.shape == x.shape
    np.testing.assert_allclose(ours.numpy(), _scipy_dct(x), rtol=0, atol=1e-10 * np.abs(_scipy_dct(x)).max())
    np.testing.assert_allclose(
        idct_2d(ours).numpy(), x.numpy(), rtol=0, atol=1e-10 * x.abs().max().item()
    )


@pytest.mark.parametrize("shape", [(4, 3, 64, 64), (2, 1, 31, 40)])
def test_dct_matches_scipy_float32(shape):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    ours = dct_2d(x)
    reference = _scipy_dct(x)
    assert ours.dtype == torch.float32
    relative = np.abs(ours.double().numpy() - reference).max() / np.abs(reference).max()
    assert relative < 1e-5
    inverse = scipy.fft.idctn(reference, type=2, norm="ortho", axes=(-2, -1))
    relative_inverse = np.abs(idct_2d(ours).double().numpy() - inverse).max() / np.abs(inverse).max()
    assert relative_inverse < 1e-5


def test_dct_half_precision_and_basis_orthonormal():
    x = torch.randn(2, 3, 16, 16)
    assert dct_2d(x.bfloat16()).dtype == torch.bfloat16
    torch.testing.assert_close(dct_2d(x.bfloat16()).float(), dct_2d(x), atol=0.1, rtol=0.05)
    from spectralar_hf.spectral import dct_matrix

    basis = dct_matrix(24, torch.float64)
    torch.testing.assert_close(basis @ basis.T, torch.eye(24, dtype=torch.float64))


def test_parseval_energy_preserved():
    x = torch.randn(3, 2, 32, 32, dtype=torch.float64)
    coefficients = dct_2d(x)
    torch.testing.assert_close(coefficients.pow(2).sum((-2, -1)), x.pow(2).sum((-2, -1)))


def test_dct_rejects_integer_input():
    with pytest.raises(ValueError, match="float"):
        dct_2d(torch.zeros(2, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="float"):
        lowpass(torch.zeros(2, 4, 4, dtype=torch.uint8), 2)


def _scipy_lowpass(x: np.ndarray, omega: int) -> np.ndarray:
    coefficients = scipy.fft.dctn(x, type=2, norm="ortho", axes=(-2, -1))
    mask = np.zeros(coefficients.shape[-2:])
    mask[:omega, :omega] = 1
    return scipy.fft.idctn(coefficients * mask, type=2, norm="ortho", axes=(-2, -1))


@pytest.mark.parametrize("omega", [0, 1, 3, 8, 16])
def test_lowpass_matches_masked_idct(omega):
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    np.testing.assert_allclose(lowpass(x, omega).numpy(), _scipy_lowpass(x.numpy(), omega), atol=1e-10)


def test_lowpass_full_level_is_identity_and_projection_is_idempotent():
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(lowpass(x, 16), x)
    once = lowpass(x, 5)
    torch.testing.assert_close(lowpass(once, 5), once)
    # Nested: a coarser level of a finer low-pass is the coarser low-pass (Eq. 5 inclusion).
    torch.testing.assert_close(lowpass(lowpass(x, 9), 4), lowpass(x, 4))


def test_lowpass_per_sample_equals_loop():
    x = torch.randn(6, 3, 32, 32)
    omega = torch.tensor([1, 4, 32, 7, 0, 16])
    batched = lowpass(x, omega)
    looped = torch.stack([lowpass(x[i : i + 1], int(omega[i]))[0] for i in range(len(omega))])
    torch.testing.assert_close(batched, looped, atol=1e-5, rtol=1e-5)
    # and against scipy in float64
    x64 = x.double()
    reference = np.stack([_scipy_lowpass(x64[i].numpy(), int(omega[i])) for i in range(len(omega))])
    np.testing.assert_allclose(lowpass(x64, omega).numpy(), reference, atol=1e-10)


def test_lowpass_rejects_bad_levels():
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"\[0, 8\]"):
        lowpass(x, 9)
    with pytest.raises(ValueError, match=r"\(B,\)"):
        lowpass(x, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="integer"):
        lowpass(x, torch.tensor([1.0, 2.0]))


def test_spectral_target_uses_schedule():
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    omega = [1, 2, 4, 8, 16]
    prefix = torch.tensor([1, 3, 5])
    target = spectral_target(x, omega, prefix)
    for i, k in enumerate(prefix.tolist()):
        torch.testing.assert_close(target[i], lowpass(x[i : i + 1], omega[k - 1])[0])
    torch.testing.assert_close(spectral_target(x, omega, 2), lowpass(x, 2))
    with pytest.raises(ValueError, match=r"\[1, 5\]"):
        spectral_target(x, omega, 6)


def test_eq9_exactly():
    expected = [i if i <= 32 else (2 * i - 32 if i <= 48 else 12 * i - 512) for i in range(1, 65)]
    assert omega_schedule(64, 256) == expected
    assert omega_schedule(64, 256, "spectralar")[31] == 32 and omega_schedule(64, 256)[47] == 64


SIZES = [(64, 256), (32, 256), (48, 256), (16, 32), (32, 32), (64, 32), (10, 100), (7, 13), (128, 256), (1, 8),
         (2, 8), (100, 64), (256, 256), (20, 512)]


@pytest.mark.parametrize("num_tokens,image_size", SIZES)
@pytest.mark.parametrize("kind", ["spectralar", "uniform"])
def test_schedule_properties(num_tokens, image_size, kind):
    omega = omega_schedule(num_tokens, image_size, kind)
    assert len(omega) == num_tokens and all(isinstance(v, int) for v in omega)
    assert omega[0] >= 1 and omega[-1] == image_size
    increments = np.diff(omega)
    if num_tokens <= image_size:
        assert (increments > 0).all()
    else:
        assert (increments >= 0).all()
    if kind == "spectralar":
        assert (np.diff(increments) >= 0).all(), "increments must be non-decreasing (Eq. 7)"
    else:
        # Evenly spaced as integers allow: increments differ by at most 1 (Eq. 7 would push the larger ones to the end).
        assert np.ptp(np.diff([0] + omega)) <= 1
    assert validate_omega(omega, num_tokens, image_size) == omega


@pytest.mark.parametrize("num_tokens,image_size", [(64, 256), (32, 128), (16, 64), (40, 320)])
def test_spectralar_shape_for_other_sizes(num_tokens, image_size):
    """First half of the tokens cover about the first eighth of the spectrum, the next quarter the next eighth."""
    omega = omega_schedule(num_tokens, image_size)
    assert abs(omega[num_tokens // 2 - 1] - image_size / 8) <= 1
    assert abs(omega[3 * num_tokens // 4 - 1] - image_size / 4) <= 1


def test_uniform_is_evenly_spaced():
    assert omega_schedule(64, 256, "uniform") == [4 * i for i in range(1, 65)]
    assert omega_schedule(8, 32, "uniform") == [4, 8, 12, 16, 20, 24, 28, 32]
    # N does not divide S: 4/3 levels per token, the 2-steps spread over the schedule (not all at the end).
    assert omega_schedule(24, 32, "uniform") == [2, 3, 4, 6, 7, 8, 10, 11, 12, 14, 15, 16, 18, 19, 20, 22, 23, 24,
                                                 26, 27, 28, 30, 31, 32]
    assert omega_schedule(10, 16, "uniform") == [2, 4, 5, 7, 8, 10, 12, 13, 15, 16]


@pytest.mark.parametrize("num_tokens,image_size", [(24, 32), (7, 32), (64, 256), (10, 16), (48, 256), (20, 512),
                                                     (7, 13), (3, 4), (31, 32), (32, 32), (1, 8), (100, 64)])
def test_uniform_tracks_the_ideal_levels(num_tokens, image_size):
    """As evenly spaced as integers allow: every level within one of i * S / N (so no run of small steps followed by
    a run of large ones), increments that differ by at most one, strictly increasing for N <= S, ending at S."""
    omega = omega_schedule(num_tokens, image_size, "uniform")
    ideal = [Fraction(i * image_size, num_tokens) for i in range(1, num_tokens + 1)]
    assert all(abs(level - target) < 1 for level, target in zip(omega, ideal)), list(zip(omega, ideal))
    increments = np.diff([0] + omega)
    assert increments.max() - increments.min() <= 1
    assert omega[0] >= 1 and omega[-1] == image_size
    if num_tokens <= image_size:
        assert (increments > 0).all()


@pytest.mark.parametrize(
    "omega,message",
    [
        ([1, 2, 3], "3 levels but there are 4 tokens"),
        ([1, 3, 2, 8], "decreasing"),
        ([0, 2, 4, 8], r"outside \[1, 8\]"),
        ([1, 2, 4, 9], r"outside \[1, 8\]"),
        ([1, 2, 4, 7], "must end at image_size = 8"),
        ([1, 2, 2, 8], "strictly increasing"),
        ([1, 2.0, 4, 8], "not an int"),
    ],
)
def test_invalid_schedules_rejected(omega, message):
    with pytest.raises(ValueError, match=message):
        validate_omega(omega, 4, 8)


def test_unknown_schedule_name():
    with pytest.raises(ValueError, match="Unknown omega schedule"):
        omega_schedule(4, 8, "cosine")


def test_the_readme_states_the_demo_sizes_nonuniform_schedule():
    """README: at 24 tokens / 32 px Eq. 9's shape gives one level per token up to 18, then steps of 2-3."""
    from pathlib import Path

    schedule = omega_schedule(24, 32)
    assert schedule == list(range(1, 19)) + [20, 22, 24, 26, 29, 32]
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert "`[1, 2, ..., 18, 20, 22, 24, 26, 29, 32]`" in readme
    uniform = omega_schedule(24, 32, "uniform")
    assert uniform[:4] == [2, 3, 4, 6] and uniform[-2:] == [31, 32]
    assert {b - a for a, b in zip(uniform, uniform[1:])} == {1, 2}
