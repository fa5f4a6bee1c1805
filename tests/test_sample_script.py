"""examples/sample.py and evaluation/sampling.py: class-balanced sets with one seed per image, independent of the
batch size and of the number of processes (a real 2-process gloo launch), resumable shards, the ADM `.npz` layout,
the settings JSON, and clear errors."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from spectralar_hf import (
    FARConfig,
    FARPipeline,
    FARTransformer,
    SpectralARConfig,
    SpectralARForCausalLM,
    SpectralARPipeline,
    SpectralTokenizer,
    SpectralTokenizerConfig,
    build_noise_scheduler,
)
from spectralar_hf.evaluation.fid import load_reference_batch
from spectralar_hf.evaluation.sampling import (
    class_balanced_labels,
    image_seed,
    images_to_uint8_rgb,
    merge_shards,
    shard_ranges,
    write_npz,
    write_shard,
)

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "sample.py"
NUM_CLASSES = 3
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
SUBPROCESS_TIMEOUT_S = 600
HAS_CPP_COMPILER = any(shutil.which(name) for name in ("g++", "c++", "clang++"))


def load_script():
    spec = importlib.util.spec_from_file_location("sample_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_in_process(*args) -> None:
    from accelerate.state import AcceleratorState, GradientState

    try:
        load_script().main([str(a) for a in args])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sample")
    torch.manual_seed(0)
    tokenizer = SpectralTokenizer(SpectralTokenizerConfig.from_preset("tiny-32", num_channels=1)).eval()
    transformer = SpectralARForCausalLM(SpectralARConfig.from_preset(
        "tiny", num_classes=NUM_CLASSES, class_dropout_prob=0.1, tokens_per_step=2)).eval()
    SpectralARPipeline(tokenizer=tokenizer, transformer=transformer).save_pretrained(root / "spectralar")
    far = FARTransformer(FARConfig.from_preset("tiny", num_classes=NUM_CLASSES, diffusion_steps=3)).eval()
    vae = AutoencoderKL(in_channels=1, out_channels=1, sample_size=32, block_out_channels=[8, 8, 8],
                        down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
                        layers_per_block=1, latent_channels=4, norm_num_groups=4).eval()
    FARPipeline(vae=vae, transformer=far, scheduler=build_noise_scheduler(far.config)).save_pretrained(root / "far")
    return root


def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as data:
        assert sorted(data.files) == ["arr_0", "arr_1"]
        return data["arr_0"], data["arr_1"]


# ------------------------------------------------------------------ evaluation/sampling.py


def test_image_seeds_are_deterministic_and_distinct():
    seeds = [image_seed(0, index) for index in range(1000)] + [image_seed(1, index) for index in range(1000)]
    assert len(set(seeds)) == len(seeds)
    assert image_seed(7, 123) == image_seed(7, 123)
    assert all(0 <= seed < 2 ** 64 for seed in seeds)
    with pytest.raises(ValueError, match=">= 0"):
        image_seed(0, -1)


def test_labels_are_interleaved_and_balanced():
    labels = class_balanced_labels([4, 1, 7], 5)
    assert labels.dtype == np.int64 and labels.tolist()[:6] == [4, 1, 7, 4, 1, 7]
    assert {label: int((labels == label).sum()) for label in (4, 1, 7)} == {4: 5, 1: 5, 7: 5}
    assert [list(r) for r in shard_ranges(7, 3)] == [[0, 1, 2], [3, 4, 5], [6]]
    with pytest.raises(ValueError, match="at least one class"):
        class_balanced_labels([], 5)


def test_uint8_conversion_rounds_like_diffusers_and_replicates_gray():
    images = np.array([0.0, 0.5, 1.0, 1.2, -0.1, 0.999]).reshape(1, 2, 3, 1)
    array = images_to_uint8_rgb(images)
    assert array.shape == (1, 2, 3, 3) and array.dtype == np.uint8
    assert array[..., 0].ravel().tolist() == [0, 128, 255, 255, 0, 255]
    assert (array[..., 0] == array[..., 2]).all()
    with pytest.raises(ValueError, match="B, H, W"):
        images_to_uint8_rgb(images[0])


def test_streamed_npz_equals_np_savez_and_is_an_adm_batch(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 5, 6, 3), dtype=np.uint8)
    labels = np.arange(10) % 3
    write_npz(tmp_path / "s.npz", (images[:4], images[4:]), 10, (5, 6, 3), labels)
    loaded_images, loaded_labels = load(tmp_path / "s.npz")
    np.testing.assert_array_equal(loaded_images, images)
    np.testing.assert_array_equal(loaded_labels, labels)
    assert loaded_labels.dtype == np.int64
    batch = load_reference_batch(tmp_path / "s.npz")
    assert batch.images_shape == (10, 5, 6, 3)
    with pytest.raises(ValueError, match="hold 4 images, expected 10"):
        write_npz(tmp_path / "t.npz", (images[:4],), 10, (5, 6, 3), labels)
    assert not (tmp_path / "t.npz").exists() and not list(tmp_path.glob(".t.npz*"))  # atomic: nothing left


def test_merge_refuses_shards_that_do_not_continue_the_set(tmp_path):
    images = np.zeros((2, 4, 4, 3), np.uint8)
    labels = np.array([0, 1, 0, 1])
    write_shard(tmp_path / "a.npz", images, labels[:2], np.array([0, 1]), 1.0)
    write_shard(tmp_path / "b.npz", images, labels[:2], np.array([3, 4]), 1.0)
    with pytest.raises(ValueError, match="do not continue the set at 2"):
        merge_shards([tmp_path / "a.npz", tmp_path / "b.npz"], tmp_path / "out.npz", labels)
    write_shard(tmp_path / "b.npz", images, labels[2:], np.array([2, 3]), 2.5)
    assert merge_shards([tmp_path / "a.npz", tmp_path / "b.npz"], tmp_path / "out.npz", labels)["seconds"] == 3.5


# ------------------------------------------------------------------ examples/sample.py


def test_spectralar_set_is_balanced_recorded_and_independent_of_the_batch_size(pipelines, tmp_path):
    common = ["--samples_per_class", 4, "--seed", 3, "--shard_size", 5, "--guidance_scale", 2.0, "--top_k", 20]
    run_in_process(pipelines / "spectralar", *common, "--batch_size", 3, "--output", tmp_path / "a.npz",
                   "--png_dir", tmp_path / "png")
    run_in_process(pipelines / "spectralar", *common, "--batch_size", 5, "--output", tmp_path / "b.npz")
    images, labels = load(tmp_path / "a.npz")
    assert images.shape == (12, 32, 32, 3) and images.dtype == np.uint8
    assert labels.tolist() == [0, 1, 2] * 4
    np.testing.assert_array_equal(images, load(tmp_path / "b.npz")[0])
    assert len({image.tobytes() for image in images}) == 12  # every image its own seed
    record = json.loads((tmp_path / "a.json").read_text())
    assert record["sampling"] == {"guidance_scale": 2.0, "guidance_schedule": "constant", "temperature": 1.0,
                                  "top_k": 20, "top_p": None, "num_tokens": 16}
    assert record["num_samples"] == 12 and record["classes"] == [0, 1, 2] and record["seed"] == 3
    assert record["num_processes"] == 1 and record["sampling_seconds"] > 0 and "torch" in record["versions"]
    assert not (tmp_path / "a.shards").exists()  # merged, then removed
    pngs = sorted((tmp_path / "png").iterdir())
    assert [p.name for p in pngs[:4]] == ["000000_0.png", "000001_1.png", "000002_2.png", "000003_0.png"]
    from PIL import Image

    np.testing.assert_array_equal(np.asarray(Image.open(pngs[5])), images[5])


def test_a_changed_setting_changes_the_images_and_trunc_is_recorded(pipelines, tmp_path):
    run_in_process(pipelines / "spectralar", "--samples_per_class", 2, "--output", tmp_path / "a.npz")
    run_in_process(pipelines / "spectralar", "--samples_per_class", 2, "--seed", 1, "--output", tmp_path / "b.npz")
    run_in_process(pipelines / "spectralar", "--samples_per_class", 2, "--trunc", 10, "--output", tmp_path / "c.npz")
    a, b, c = (load(tmp_path / f"{name}.npz")[0] for name in "abc")
    assert not np.array_equal(a, b) and not np.array_equal(a, c)
    assert json.loads((tmp_path / "c.json").read_text())["sampling"]["num_tokens"] == 6


def test_a_killed_run_resumes_without_redoing_finished_shards(pipelines, tmp_path, monkeypatch):
    args = [pipelines / "spectralar", "--samples_per_class", 3, "--shard_size", 2, "--output", tmp_path / "s.npz",
            "--keep_shards"]
    run_in_process(*args)
    complete = load(tmp_path / "s.npz")[0]
    shards = sorted((tmp_path / "s.shards").glob("shard-*.npz"))
    assert len(shards) == 5
    # as if killed after three shards: the last two shards, the merged file and its JSON are missing
    for path in shards[3:] + [tmp_path / "s.npz", tmp_path / "s.json"]:
        path.unlink()
    kept = {path: path.stat().st_mtime_ns for path in shards[:3]}
    script = load_script()
    sampled = []
    original = script.sample_shard
    monkeypatch.setattr(script, "sample_shard", lambda pipe, acc, indices, *a: sampled.append(indices) or
                        original(pipe, acc, indices, *a))
    from accelerate.state import AcceleratorState

    try:
        script.main([str(a) for a in args])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert sampled == [range(6, 8), range(8, 9)]
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in kept.items())
    np.testing.assert_array_equal(load(tmp_path / "s.npz")[0], complete)
    sampled.clear()  # complete with the same settings: nothing to do
    try:
        script.main([str(a) for a in args])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert sampled == []


def test_other_settings_are_refused_unless_overwrite(pipelines, tmp_path, capsys):
    args = [pipelines / "spectralar", "--samples_per_class", 2, "--output", tmp_path / "s.npz"]
    run_in_process(*args)
    with pytest.raises(ValueError, match=r"other settings \(seed 0 -> 5\); pass --overwrite"):
        run_in_process(*args, "--seed", 5)
    run_in_process(*args, "--seed", 5, "--overwrite")
    assert json.loads((tmp_path / "s.json").read_text())["seed"] == 5
    (tmp_path / "t.shards").mkdir()
    (tmp_path / "t.shards" / "settings.json").write_text(json.dumps({"seed": 9}))
    with pytest.raises(ValueError, match="t.shards holds shards sampled with other settings"):
        run_in_process(pipelines / "spectralar", "--samples_per_class", 2, "--output", tmp_path / "t.npz")


def test_far_set_is_independent_of_the_batch_size(pipelines, tmp_path):
    common = ["--samples_per_class", 2, "--num_inference_steps", 2, "--diffusion_steps", 2, "--guidance_scale", 2.0]
    run_in_process(pipelines / "far", *common, "--batch_size", 2, "--output", tmp_path / "a.npz")
    run_in_process(pipelines / "far", *common, "--batch_size", 6, "--output", tmp_path / "b.npz")
    a, labels = load(tmp_path / "a.npz")
    b, _ = load(tmp_path / "b.npz")
    assert a.shape == (6, 32, 32, 3) and labels.tolist() == [0, 1, 2, 0, 1, 2]
    # float latents through batched GEMMs: equal up to a rounding step of the uint8 grid
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    record = json.loads((tmp_path / "a.json").read_text())
    assert record["sampling"]["num_steps"] == 2 and record["sampling"]["diffusion_steps"] == 2


@pytest.mark.parametrize("flags, message", [
    (["--top_k", 5], "--top_k do(es) not apply to a FARPipeline"),
    (["--top_k", 0], "--top_k do(es) not apply to a FARPipeline"),  # 0 == False was read as not given
    (["--compile"], "--compile do(es) not apply"),
])
def test_far_refuses_spectralar_flags(pipelines, tmp_path, flags, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_in_process(pipelines / "far", *flags, "--output", tmp_path / "x.npz")


@pytest.mark.parametrize("flags, message", [
    (["--trunc", 16], r"--trunc \[16\] would leave no generation step"),
    (["--trunc", 3], "multiple of 2"),
    (["--classes", 5], r"--classes \[5\] outside \[0, 3\)"),
    (["--classes", 1, 1], "names a class twice"),
])
def test_spectralar_bad_settings(pipelines, tmp_path, flags, message):
    with pytest.raises(ValueError, match=message):
        run_in_process(pipelines / "spectralar", *flags, "--output", tmp_path / "x.npz")
    assert not (tmp_path / "x.shards").exists()


def test_command_line_errors_are_one_line(pipelines, tmp_path):
    for args, message in ((["--output", tmp_path / "x.png"], "must end in .npz"),
                          (["--output", tmp_path / "x.npz", "--classes", 9], "outside [0, 3)")):
        result = subprocess.run([sys.executable, str(SCRIPT), str(pipelines / "spectralar"), *map(str, args)],
                                capture_output=True, text=True, env=ENV, timeout=SUBPROCESS_TIMEOUT_S)
        assert result.returncode == 2 and message in result.stderr
        assert "Traceback" not in result.stderr


def test_two_processes_write_the_same_set_as_one(pipelines, tmp_path):
    """A real `accelerate launch --multi_gpu --num_processes 2` on CPU (gloo): the shards are divided between the
    ranks, and the merged set equals the one-process set byte for byte."""
    args = [str(SCRIPT), str(pipelines / "spectralar"), "--samples_per_class", 4, "--shard_size", 3,
            "--batch_size", 2, "--guidance_scale", 1.5, "--keep_shards"]
    run_in_process(*args[1:], "--output", tmp_path / "one.npz")
    process = subprocess.Popen(LAUNCH + [*map(str, args), "--output", str(tmp_path / "two.npz")], env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = process.communicate(timeout=SUBPROCESS_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        raise
    assert process.returncode == 0, stderr[-3000:]
    one, two = load(tmp_path / "one.npz"), load(tmp_path / "two.npz")
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])
    assert json.loads((tmp_path / "two.json").read_text())["num_processes"] == 2
    assert np.bincount(two[1]).tolist() == [4] * NUM_CLASSES  # class-balanced
    # the scorer reads it: the same set against itself has FID 0 and precision = recall = 1
    from test_evaluate_cli import StandIn

    from spectralar_hf.evaluation.fid import InceptionFeatureExtractor
    from spectralar_hf.evaluation.npz import evaluate_npz, read_samples

    batch = read_samples(tmp_path / "two.npz")
    assert (batch.num_images, batch.num_labels, batch.settings["num_processes"]) == (12, 12, 2)
    torch.manual_seed(0)
    extractor = InceptionFeatureExtractor(network=torch.jit.script(StandIn().eval()), input_size=32)
    report = evaluate_npz(tmp_path / "two.npz", tmp_path / "one.npz", extractor=extractor, cache=False,
                          progress=False)
    assert abs(report["fid"]) < 1e-6 and report["precision"] == report["recall"] == 1.0
    assert len(list((tmp_path / "two.shards").glob("shard-*.npz"))) == 4
    with zipfile.ZipFile(tmp_path / "two.npz") as archive:  # stored, not compressed: readable with mmap-free np.load
        assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_STORED}


def test_bf16_autocast_is_recorded_and_samples_valid_images(pipelines, tmp_path, monkeypatch):
    """`accelerate launch --mixed_precision bf16` (here through its environment variable): the pipeline runs under
    bf16 autocast, the JSON says so, and the images are a valid set close to the float32 one."""
    args = [pipelines / "spectralar", "--samples_per_class", 2, "--top_k", 1]  # greedy: float32 and bf16 comparable
    run_in_process(*args, "--output", tmp_path / "fp32.npz")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    run_in_process(*args, "--output", tmp_path / "bf16.npz")
    assert json.loads((tmp_path / "bf16.json").read_text())["mixed_precision"] == "bf16"
    bf16, fp32 = load(tmp_path / "bf16.npz")[0], load(tmp_path / "fp32.npz")[0]
    assert bf16.shape == fp32.shape and np.abs(bf16.astype(int) - fp32.astype(int)).mean() < 8
    assert (bf16 != fp32).any()  # autocast was on (bf16 rounding changes some pixels)


@pytest.mark.skipif(not HAS_CPP_COMPILER, reason="inductor on CPU needs a C++ compiler (g++ / clang++)")
def test_compiled_sampling_writes_the_eager_set(pipelines, tmp_path):
    args = [pipelines / "spectralar", "--samples_per_class", 2, "--guidance_scale", 2.0, "--batch_size", 3]
    run_in_process(*args, "--output", tmp_path / "eager.npz")
    run_in_process(*args, "--compile", "--output", tmp_path / "compiled.npz")
    np.testing.assert_array_equal(load(tmp_path / "eager.npz")[0], load(tmp_path / "compiled.npz")[0])
    assert json.loads((tmp_path / "compiled.json").read_text())["compile"] is True


def test_pipeline_fingerprint_ignores_library_versions_and_sees_weights(pipelines, tmp_path):
    import shutil as _shutil

    from spectralar_hf.evaluation.sampling import pipeline_fingerprint

    copy = tmp_path / "far"
    _shutil.copytree(pipelines / "far", copy)
    before = pipeline_fingerprint(copy)
    for path in (copy / "model_index.json", copy / "scheduler" / "scheduler_config.json"):
        config = json.loads(path.read_text())
        config["_diffusers_version"] = "9.9.9"  # saved again by another diffusers
        path.write_text(json.dumps(config))
    assert pipeline_fingerprint(copy) == before
    config = json.loads((copy / "scheduler" / "scheduler_config.json").read_text())
    config["num_train_timesteps"] = config["num_train_timesteps"] + 1
    (copy / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    assert pipeline_fingerprint(copy) != before
    FARPipeline.from_pretrained(pipelines / "far").save_pretrained(tmp_path / "resaved")
    assert pipeline_fingerprint(tmp_path / "resaved") == pipeline_fingerprint(pipelines / "far")
