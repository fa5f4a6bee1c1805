"""The R^2 causality analysis of SpectralAR §4.2 (Eq. 10, Table 1)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from spectralar_hf import cli
from spectralar_hf.evaluation import causality
from spectralar_hf.evaluation.causality import (
    FIGURE4_CELL,
    FIGURE4_PADDING,
    PAPER_TABLE_1,
    best_predictor_histogram,
    build_sequences,
    causality_table,
    draw_figure4,
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


# ---------------------------------------------------------------------------------------------------------------
# Figure 4: the most correlated earlier element of each element
# ---------------------------------------------------------------------------------------------------------------


def _noisy(base: torch.Tensor, seed: int, noise: float = 0.5) -> torch.Tensor:
    return base + noise * torch.randn(base.shape, generator=_generator(seed), dtype=torch.float64)


def test_best_predictor_histogram_recovers_planted_structures():
    num_samples, num_elements, num_tokens = 4000, 6, 4
    first = torch.randn(num_samples, num_elements, generator=_generator(10), dtype=torch.float64)
    # Chain: every element of t_{i+1} is a noisy copy of the *last* element of t_i (a "patch boundary").
    chain = [first]
    for i in range(1, num_tokens):
        chain.append(_noisy(chain[-1][:, -1:].expand(-1, num_elements), seed=10 + i))
    boundary = torch.zeros(num_elements, dtype=torch.int64)
    boundary[-1] = num_elements
    for counts in best_predictor_histogram(chain, chunk_size=4):  # chunks of 4 columns: 2 per target token
        assert torch.equal(counts, boundary)
    # Star: every later element is a noisy copy of element 0 of t_1 (independent noise beats shared noise).
    star = [first] + [_noisy(first[:, :1].expand(-1, num_elements), seed=20 + i) for i in range(1, num_tokens)]
    counts = best_predictor_histogram(star)
    assert counts[0].tolist() == [num_elements * (num_tokens - 1)] + [0] * (num_elements - 1)
    assert all(not c.any() for c in counts[1:])
    # Single-element tokens, each a noisy copy of the previous one: each is the best predictor once.
    walk = [first[:, :1]]
    for i in range(1, num_tokens):
        walk.append(_noisy(walk[-1], seed=30 + i))
    assert [c.tolist() for c in best_predictor_histogram(walk)] == [[1]] * (num_tokens - 1)
    # A constant element has no best predictor and is not counted.
    constant = torch.full((num_samples, 1), 0.5, dtype=torch.float64)
    counts = best_predictor_histogram([first, torch.cat([_noisy(first[:, 2:3], seed=40), constant], dim=1)])
    assert counts[0].tolist() == [0, 0, 1, 0, 0, 0]
    with pytest.raises(ValueError, match="at least 2 tokens"):
        best_predictor_histogram([first])


def test_histograms_come_from_the_table_correlations():
    images = torch.rand(24, 3, 8, 8, generator=_generator(11))
    table, histograms = causality_table(images, progress=False, return_histograms=True)
    assert table == causality_table(images, progress=False)
    sequences = build_sequences(images)
    for name, tokens in sequences.items():
        counts = best_predictor_histogram(tokens)  # same chunks: near-ties (low-rank tokens) resolve the same way
        assert all(torch.equal(a, b) for a, b in zip(counts, histograms[name]))
        assert [c.numel() for c in counts] == [t.shape[1] for t in tokens[:-1]]
        assert sum(int(c.sum()) for c in counts) == sum(t.shape[1] for t in tokens[1:])  # no constant elements
        assert table[name][0] == pytest.approx(r2_avg(tokens[1], tokens[0]), abs=1e-15)


def test_draw_figure4_one_panel_per_paradigm():
    images = torch.rand(24, 3, 16, 16, generator=_generator(12))
    table, histograms = causality_table(images, progress=False, return_histograms=True)
    figure = draw_figure4(histograms, table)
    panel_width = FIGURE4_PADDING + 3 * (FIGURE4_CELL + FIGURE4_PADDING)
    assert isinstance(figure, Image.Image) and figure.mode == "RGB"
    assert figure.width == 3 * panel_width
    assert draw_figure4({"raster": histograms["raster"]}, table).size == (panel_width, figure.height)
    # Every panel holds its three heat maps (coloured, not background white).
    pixels = np.asarray(figure)
    heat_top = figure.height // 2
    for panel in range(3):
        for token in range(3):
            x = panel * panel_width + FIGURE4_PADDING + token * (FIGURE4_CELL + FIGURE4_PADDING) + FIGURE4_CELL // 2
            assert (pixels[heat_top, x] != 255).any(), (panel, token)
    with pytest.raises(ValueError, match="square 3-channel tokens"):
        draw_figure4({"raster": [torch.ones(5, dtype=torch.int64)]})


def test_cli_figure4_writes_a_png(monkeypatch, tmp_path, capsys):
    fake_crops = torch.rand(16, 3, 32, 32, generator=_generator(13)) * 2 - 1
    monkeypatch.setattr(causality, "offline_natural_crops", lambda n, seed=0: fake_crops[:n])
    path = tmp_path / "figures" / "figure4.png"
    assert cli.main(["evaluate", "causality", "--causality-data", "crops", "--num-images", "16",
                     "--figure4", str(path)]) == 0
    out = capsys.readouterr().out
    assert "| R2_avg(t2; t1) |" in out and f"wrote {path}" in out
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width == 3 * (FIGURE4_PADDING + 3 * (FIGURE4_CELL + FIGURE4_PADDING))
    # Bad paths and the flag on another target: one-line errors, exit status 2, before any work.
    (tmp_path / "notes.txt").write_text("not an image")
    for flag_value, message in ((str(tmp_path / "notes.txt"), "must end in an image extension"),
                                (str(tmp_path), "is a directory")):
        assert cli.main(["evaluate", "causality", "--num-images", "16", "--figure4", flag_value]) == 2
        assert message in capsys.readouterr().err
    assert cli.main(["evaluate", "tokenizer", str(tmp_path), "--figure4", str(path)]) == 2
    assert "--figure4 does not apply to `evaluate tokenizer`" in capsys.readouterr().err
