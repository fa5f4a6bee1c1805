"""The R^2 causality analysis of SpectralAR §4.2 (Eq. 10, Table 1)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spectralar_hf.evaluation import causality
from spectralar_hf.evaluation.causality import (
    PAPER_TABLE_1,
    build_sequences,
    causality_table,
    format_table,
    r2_avg,
)
from spectralar_hf.spectral import lowpass


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_r2_exact_values_on_synthetic_tokens():
    t1 = torch.randn(200, 5, generator=_generator(0), dtype=torch.float64)
    # An affine function of earlier elements is perfectly explained.
    assert r2_avg(2 * t1 + 3, t1) == pytest.approx(1.0, abs=1e-12)
    assert r2_avg(-0.5 * t1[:, [2, 0]] + 1, t1) == pytest.approx(1.0, abs=1e-12)
    # Independent noise is not (max of 5 squared correlations with ~1/N variance each).
    noise = torch.randn(20000, 3, generator=_generator(1), dtype=torch.float64)
    other = torch.randn(20000, 4, generator=_generator(2), dtype=torch.float64)
    assert r2_avg(noise, other) < 2e-3
    # y = x + e with var(e) = var(x): R^2 = 1/2.
    x = torch.randn(20000, 1, generator=_generator(3), dtype=torch.float64)
    y = x + torch.randn(20000, 1, generator=_generator(4), dtype=torch.float64)
    assert r2_avg(y, [other, x]) == pytest.approx(0.5, abs=0.02)


def test_r2_constant_elements_count_as_zero_and_never_nan():
    t1 = torch.randn(100, 3, generator=_generator(5), dtype=torch.float64)
    constant = torch.full((100, 1), 0.1, dtype=torch.float64)
    target = torch.cat([2 * t1[:, :1] + 3, constant], dim=1)
    # One perfectly explained element and one constant element (R^2 := 0): average 0.5.
    assert r2_avg(target, t1) == pytest.approx(0.5, abs=1e-12)
    # Constant / all-zero context columns are ignored rather than producing NaN.
    context = torch.cat([constant, torch.zeros(100, 2, dtype=torch.float64), t1], dim=1)
    value = r2_avg(2 * t1 + 3, context)
    assert not np.isnan(value) and value == pytest.approx(1.0, abs=1e-12)
    assert r2_avg(constant, constant) == 0.0


def test_r2_is_chunk_invariant_and_accepts_blocks():
    tokens = torch.randn(64, 30, generator=_generator(6), dtype=torch.float64)
    target = tokens[:, :10] + 0.3 * torch.randn(64, 10, generator=_generator(7), dtype=torch.float64)
    whole = r2_avg(target, tokens[:, 10:], chunk_size=512)
    assert r2_avg(target, tokens[:, 10:], chunk_size=3) == pytest.approx(whole, abs=1e-14)
    assert r2_avg(target, [tokens[:, 10:20], tokens[:, 20:]], chunk_size=1) == pytest.approx(whole, abs=1e-14)
    # Brute force with NumPy: mean over targets of the max squared Pearson correlation.
    corr = np.corrcoef(np.concatenate([target.numpy(), tokens[:, 10:].numpy()], axis=1), rowvar=False)[:10, 10:]
    assert whole == pytest.approx((corr ** 2).max(axis=1).mean(), abs=1e-12)
    with pytest.raises(ValueError, match="same N"):
        r2_avg(target, tokens[:5])


def test_sequences_follow_section_4_2():
    images = torch.randn(3, 3, 32, 32, generator=_generator(8))
    sequences = build_sequences(images)
    raster, scale, spectral = sequences["raster"], sequences["scale"], sequences["spectral"]
    assert [t.shape[1] for t in raster] == [768] * 4
    assert torch.equal(raster[1], images[:, :, :16, 16:].double().flatten(1))
    assert torch.equal(raster[2], images[:, :, 16:, :16].double().flatten(1))
    assert [t.shape[1] for t in scale] == [3 * s * s for s in (8, 16, 24, 32)]
    torch.testing.assert_close(scale[0], F.avg_pool2d(images.double(), 4).flatten(1))
    assert torch.equal(scale[3], images.double().flatten(1))
    assert [t.shape[1] for t in spectral] == [3072] * 4
    torch.testing.assert_close(spectral[0], lowpass(images.double(), 8).flatten(1))
    torch.testing.assert_close(spectral[3], images.double().flatten(1))
    with pytest.raises(ValueError, match="divisible by 4"):
        build_sequences(torch.zeros(2, 3, 30, 30))


@pytest.fixture(scope="module")
def natural_crops():
    pytest.importorskip("skimage")
    return causality.offline_natural_crops(500, seed=0)


def test_spectral_sequences_are_more_causal_than_raster_on_natural_crops(natural_crops):
    assert natural_crops.shape == (500, 3, 32, 32)
    assert natural_crops.min() >= -1 and natural_crops.max() <= 1
    table = causality_table(natural_crops, progress=False)
    assert set(table) == {"raster", "scale", "spectral"}
    for name, values in table.items():
        assert len(values) == 4 and all(0 <= v <= 1 for v in values)
        assert values[3] == pytest.approx(np.mean(values[:3]))
    # Table 1's ordering: spectral > scale-wise > raster-scan on average, spectral > raster on every row.
    assert table["spectral"][3] > table["scale"][3] > table["raster"][3]
    assert all(s > r for s, r in zip(table["spectral"], table["raster"]))
    assert table["spectral"][3] > 0.9 and table["raster"][3] < 0.7
    text = format_table(table, num_images=500, source="crops")
    assert f"{table['spectral'][3]:.3f} ({PAPER_TABLE_1['spectral'][3]:.3f})" in text
    assert "0.454" in text and "500 images" in text


def test_cifar_offline_failure_and_cli_fallback(monkeypatch, capsys):
    # The test session is offline (conftest): loading CIFAR-100 fails with a clear OSError.
    with pytest.raises(OSError, match="offline_natural_crops"):
        causality.load_cifar100_validation(num_images=8)

    fake_crops = torch.rand(40, 3, 32, 32, generator=_generator(9)) * 2 - 1
    calls = []

    def fake_offline_crops(n, seed=0):
        calls.append((n, seed))
        return fake_crops[:n]

    monkeypatch.setattr(causality, "offline_natural_crops", fake_offline_crops)
    text = causality.main(["--num_images", "40", "--seed", "3"])
    assert calls == [(40, 3)]
    assert "random 32x32 crops" in text and "40 images" in text
    assert text in capsys.readouterr().out
    with pytest.raises(OSError):
        causality.main(["--num_images", "8", "--data", "cifar100"])
