"""examples/train_vae.py and examples/train_far.py on a tiny generated IDX dataset: learning on a fixed batch, the
VAE's measured scaling_factor, the latent cache (contents, reuse, refusal of a cache made otherwise), the saved
FARPipeline (loads, sampling defaults, deterministic generation), exact resume after SIGKILL, and clear errors.

To stay fast, the runs are in-process calls of the scripts' `main()` on one thread; only the run that is killed is a
subprocess (also on one thread, so its checkpoint continues bit-identically in-process).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from conftest import blob_images, write_idx_dataset
from diffusers import AutoencoderKL
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).parents[1]
VAE_SCRIPT = str(ROOT / "examples" / "train_vae.py")
FAR_SCRIPT = str(ROOT / "examples" / "train_far.py")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
COMMON = ["--report_to", "none", "--logging_steps", 1, "--validation_steps", 1000, "--lr_warmup_steps", 2,
          "--train_batch_size", 8]
# tiny sample grids: 2 classes x 1 image, 2 outer x 2 inner steps
FAST_GRIDS = ["--validation_classes", 0, 1, "--validation_images_per_class", 1, "--validation_num_inference_steps", 2,
              "--validation_diffusion_steps", 2]


pytestmark = pytest.mark.usefixtures("one_thread")


def load_script(path: str):
    """Import an examples/ script as a module (to call its main() in-process, fast)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(script: str, *args) -> None:
    """`script`'s main() in this process, then accelerate's singletons are reset for the next run."""
    from accelerate.state import AcceleratorState, GradientState

    try:
        load_script(script).main([str(a) for a in args])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def losses(output_dir: Path, key: str = "loss") -> dict[int, float]:
    records = [json.loads(line) for line in (output_dir / "train_log.jsonl").read_text().splitlines()]
    return {record["step"]: record[key] for record in records}


def kill_after_checkpoint(script: str, args: list, checkpoint: Path) -> None:
    """Start `script` in a subprocess, SIGKILL it once `checkpoint` exists, then drop everything it wrote after that
    checkpoint, so that the resume really starts there."""
    process = subprocess.Popen([sys.executable, script, *map(str, args)], env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate()
    assert checkpoint.exists(), f"the run ended before writing its checkpoint:\n{stderr[-3000:]}"
    step = int(checkpoint.name.split("-")[1])
    for path in checkpoint.parent.iterdir():
        later = path.name.startswith("checkpoint-") and int(path.name.split("-")[1]) > step
        if later or path.name in ("vae", "pipeline"):
            shutil.rmtree(path)


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = load_file(a), load_file(b)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)


@pytest.fixture(scope="module")
def idx_folder(tmp_path_factory) -> Path:
    """40 blob images (28 x 28, resized to 32) with labels 0..9 in the Fashion-MNIST IDX format."""
    root = tmp_path_factory.mktemp("idx")
    write_idx_dataset(root, np.stack(blob_images(40, seed=3)), np.arange(40) % 10)
    return root


# ---------------------------------------------------------------------------------------------------------------
# train_vae.py
# ---------------------------------------------------------------------------------------------------------------


def vae_args(data: Path, output: Path, *extra) -> list:
    return ["--idx_data_dir", data, "--preset", "tiny", "--output_dir", output, *COMMON, *extra]


@pytest.fixture(scope="module")
def trained_vae(idx_folder, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("vae-run")
    # 8 images, batch 8: every step sees the same fixed batch
    run(VAE_SCRIPT, *vae_args(idx_folder, output, "--max_train_steps", 30, "--learning_rate", 3e-3,
                              "--max_train_samples", 8, "--checkpointing_steps", 1000, "--use_ema",
                              "--scaling_samples", 8))
    return output


def test_vae_script_learns_on_a_fixed_batch(trained_vae):
    history = losses(trained_vae)
    assert len(history) == 30 and all(np.isfinite(list(history.values())))
    first, last = np.mean([history[s] for s in (1, 2, 3)]), np.mean([history[s] for s in (28, 29, 30)])
    assert last < 0.5 * first, history
    assert list((trained_vae / "samples").glob("reconstructions-*.png"))


def test_vae_scaling_factor_is_one_over_the_latent_std(trained_vae, idx_folder):
    from spectralar_hf.training.data import ImageTransform, load_idx_dataset

    vae = AutoencoderKL.from_pretrained(trained_vae / "vae").eval()
    stats = json.loads((trained_vae / "latent_stats.json").read_text())
    assert vae.config.scaling_factor == pytest.approx(stats["scaling_factor"], rel=1e-6)
    assert stats["num_images"] == 8 and stats["scaling_factor"] == pytest.approx(1 / stats["std"])
    assert vae.config.latent_channels == 4 and vae.config.in_channels == 1 and vae.config.sample_size == 32
    # re-measure on the same 8 (centre-cropped) images: the scaled posterior means have unit std
    images = load_idx_dataset(idx_folder)["image"][:8]
    pixels = torch.stack([ImageTransform(32, 1)(np.asarray(image, dtype=np.uint8)) for image in images])
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.mean
    assert latents.shape == (8, 4, 8, 8)
    assert float((latents * vae.config.scaling_factor).std()) == pytest.approx(1.0, abs=1e-4)


@pytest.fixture(scope="module")
def lpips_weights(tmp_path_factory) -> Path:
    """Random LPIPS-AlexNet weights in the converted safetensors layout (non-negative heads)."""
    from spectralar_hf.evaluation import LPIPS

    torch.manual_seed(0)
    model = LPIPS("alex")
    for head in model.heads:
        head.weight.data.abs_()
    path = tmp_path_factory.mktemp("lpips") / "lpips_alex.safetensors"
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(path))
    return path


@pytest.mark.same_machine
def test_vae_script_resume_after_sigkill_is_exact(idx_folder, lpips_weights, tmp_path):
    # every loss and feature on: KL, LPIPS, GAN + LeCAM, EMA, random crop + flip, accumulation; 24 images, batch 8,
    # accumulation 2: the checkpoint at step 4 falls in the middle of an epoch
    common = ["--max_train_steps", 8, "--checkpointing_steps", 4, "--use_ema", "--max_train_samples", 24,
              "--gradient_accumulation_steps", 2, "--random_crop", "--random_flip", "--perceptual_weight", 0.1,
              "--lpips_weights", lpips_weights, "--gan_weight", 0.1, "--discriminator_start", 2,
              "--lecam_weight", 0.001, "--discriminator_channels", 16, "--discriminator_stages", 2,
              "--scaling_samples", 8]
    run(VAE_SCRIPT, *vae_args(idx_folder, tmp_path / "straight", *common))
    interrupted = vae_args(idx_folder, tmp_path / "killed", *common)
    kill_after_checkpoint(VAE_SCRIPT, interrupted, tmp_path / "killed" / "checkpoint-4")
    run(VAE_SCRIPT, *interrupted, "--resume_from_checkpoint", "latest")
    assert_same_weights(tmp_path / "straight" / "vae" / "diffusion_pytorch_model.safetensors",
                        tmp_path / "killed" / "vae" / "diffusion_pytorch_model.safetensors")
    straight, resumed = (json.loads((tmp_path / name / "vae" / "config.json").read_text())["scaling_factor"]
                         for name in ("straight", "killed"))
    assert straight == resumed
    assert {"perceptual_loss", "discriminator_loss", "kl_loss"} <= set(
        json.loads((tmp_path / "killed" / "train_log.jsonl").read_text().splitlines()[-1]))


# ---------------------------------------------------------------------------------------------------------------
# train_far.py
# ---------------------------------------------------------------------------------------------------------------


def far_args(vae: Path, data: Path, output: Path, *extra) -> list:
    return ["--vae", vae / "vae", "--idx_data_dir", data, "--preset", "tiny", "--output_dir", output, *COMMON,
            *FAST_GRIDS, *extra]


FIXED_BATCH = ["--max_train_samples", 4, "--flip"]  # 4 images and their mirrors: one fixed batch of 8 latents


@pytest.fixture(scope="module")
def trained_far(trained_vae, idx_folder, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("far-run")
    run(FAR_SCRIPT, *far_args(trained_vae, idx_folder, output, *FIXED_BATCH, "--max_train_steps", 40,
                              "--learning_rate", 2e-3, "--checkpointing_steps", 1000, "--use_ema", "--ema_decay", 0.9,
                              "--guidance_scale", 1.5, "--num_inference_steps", 4, "--diffusion_steps", 5,
                              "--temperature", 0.9, 1.0))
    return output


def test_far_script_learns_on_a_fixed_batch(trained_far):
    history = losses(trained_far)
    assert len(history) == 40 and all(np.isfinite(list(history.values())))
    first, last = np.mean([history[s] for s in range(1, 6)]), np.mean([history[s] for s in range(36, 41)])
    assert last < 0.7 * first, history
    mse = losses(trained_far, "mse_loss")
    assert np.mean([mse[s] for s in range(36, 41)]) < np.mean([mse[s] for s in range(1, 6)])
    assert list((trained_far / "samples").glob("samples-*.png"))


def test_far_latent_cache_holds_scaled_posterior_means(trained_far, trained_vae, idx_folder):
    from spectralar_hf.training.data import ImageTransform, load_idx_dataset

    cache = datasets.load_from_disk(str(trained_far / "latents"))
    assert len(cache) == 8 and sum(cache["flipped"]) == 4
    assert cache.features["label"].names[0] == "T-shirt/top"
    assert sorted(cache["label"]) == [0, 0, 1, 1, 2, 2, 3, 3]
    vae = AutoencoderKL.from_pretrained(trained_vae / "vae").eval()
    image = load_idx_dataset(idx_folder)[0]["image"]
    pixels = ImageTransform(32, 1)(np.asarray(image, dtype=np.uint8)).unsqueeze(0)
    with torch.no_grad():
        expected = vae.encode(torch.cat([pixels, pixels.flip(-1)])).latent_dist.mean * vae.config.scaling_factor
    rows = cache.with_format("torch")
    first = [i for i in range(len(cache)) if cache[i]["label"] == 0]
    by_flip = {bool(rows[i]["flipped"]): rows[i]["latents"] for i in first}
    torch.testing.assert_close(by_flip[False], expected[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(by_flip[True], expected[1], rtol=1e-5, atol=1e-5)
    info = json.loads((trained_far / "latents" / "cache_info.json").read_text())
    assert info["num_rows"] == 8 and info["settings"]["flip"] is True


def test_far_pipeline_loads_and_generates_deterministically(trained_far, trained_vae):
    from spectralar_hf import FARPipeline

    pipe = FARPipeline.from_pretrained(trained_far / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    config = pipe.transformer.config
    assert (config.latent_channels, config.latent_size, config.num_classes) == (4, 8, 10)
    assert config.id2label[7] == "Sneaker"
    assert (config.guidance_scale, config.num_inference_steps, config.diffusion_steps) == (1.5, 4, 5)
    assert list(config.temperature) == [0.9, 1.0]
    trained = AutoencoderKL.from_pretrained(trained_vae / "vae")
    assert pipe.vae.config.scaling_factor == trained.config.scaling_factor
    first = pipe(["Sneaker", 0], generator=torch.Generator().manual_seed(0), output_type="np").images
    second = pipe(["Sneaker", 0], generator=torch.Generator().manual_seed(0), output_type="np").images
    other = pipe(["Sneaker", 0], generator=torch.Generator().manual_seed(1), output_type="np").images
    assert first.shape == (2, 32, 32, 1) and np.isfinite(first).all()
    assert np.array_equal(first, second) and not np.array_equal(first, other)


def test_far_latent_cache_is_reused_not_recomputed(trained_far, trained_vae, idx_folder, tmp_path, monkeypatch):
    output = tmp_path / "again"
    shutil.copytree(trained_far / "latents", output / "latents")
    stamp = {p.name: p.stat().st_mtime_ns for p in (output / "latents").iterdir()}

    def no_encoding(*args, **kwargs):
        raise AssertionError("the VAE encoded images although the latent cache exists")

    with monkeypatch.context() as patch:
        patch.setattr(AutoencoderKL, "encode", no_encoding)
        run(FAR_SCRIPT, *far_args(trained_vae, idx_folder, output, *FIXED_BATCH, "--max_train_steps", 2,
                                  "--checkpointing_steps", 1000))
    assert {p.name: p.stat().st_mtime_ns for p in (output / "latents").iterdir()} == stamp
    assert (output / "pipeline" / "model_index.json").is_file()
    # a cache made with other settings is refused, not silently reused (--overwrite_output_dir: a new run, which
    # deletes the earlier run's files but keeps the cache, which it checks)
    with pytest.raises(ValueError, match="other settings"):
        run(FAR_SCRIPT, *far_args(trained_vae, idx_folder, output, "--max_train_samples", 4, "--max_train_steps", 1,
                                  "--train_batch_size", 4, "--overwrite_output_dir"))
    assert (output / "pipeline" / "model_index.json").is_file()  # the refused run deleted nothing


@pytest.mark.same_machine
def test_far_script_resume_after_sigkill_is_exact(trained_vae, idx_folder, tmp_path):
    # 12 images + mirrors = 24 latents, batch 8: the checkpoint at step 4 falls in the middle of the second epoch;
    # posterior sampling from the cached stds and EMA are on
    common = ["--max_train_samples", 12, "--flip", "--latent_distribution", "sample", "--max_train_steps", 8,
              "--checkpointing_steps", 4, "--use_ema", "--lr_scheduler", "cosine"]
    run(FAR_SCRIPT, *far_args(trained_vae, idx_folder, tmp_path / "straight", *common))
    interrupted = far_args(trained_vae, idx_folder, tmp_path / "killed", *common)
    kill_after_checkpoint(FAR_SCRIPT, interrupted, tmp_path / "killed" / "checkpoint-4")
    run(FAR_SCRIPT, *interrupted, "--resume_from_checkpoint", "latest")
    assert_same_weights(tmp_path / "straight" / "pipeline" / "transformer" / "model.safetensors",
                        tmp_path / "killed" / "pipeline" / "transformer" / "model.safetensors")
    assert "latents_std" in datasets.load_from_disk(str(tmp_path / "killed" / "latents")).column_names


# ---------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "script,args,message",
    [
        (VAE_SCRIPT, ["--idx_data_dir", "/nonexistent", "--output_dir", "TMP/o"], "does not exist"),
        (VAE_SCRIPT, ["--output_dir", "TMP/o"], "exactly one data source"),
        (VAE_SCRIPT, ["--idx_data_dir", "IDX", "--output_dir", "TMP/o", "--vae_config", "{not json"],
         "neither a JSON file nor valid inline JSON"),
        (VAE_SCRIPT, ["--idx_data_dir", "IDX", "--output_dir", "TMP/o", "--preset", "tiny", "--vae_config",
                      '{"block_out_channels": [8, 10, 8]}'], "divisible by norm_num_groups"),
        (VAE_SCRIPT, ["--idx_data_dir", "IDX", "--output_dir", "TMP/o", "--preset", "tiny", "--resolution", "30"],
         "not divisible by the VAE's downsampling factor"),
        (VAE_SCRIPT, ["--idx_data_dir", "IDX", "--output_dir", "TMP/o", "--preset", "tiny",
                      "--resume_from_checkpoint", "latest"], "no complete checkpoint"),
        (FAR_SCRIPT, ["--vae", "VAE", "--idx_data_dir", "/nonexistent", "--output_dir", "TMP/o"], "does not exist"),
        (FAR_SCRIPT, ["--vae", "/nonexistent", "--idx_data_dir", "IDX", "--output_dir", "TMP/o"],
         "--vae '/nonexistent' does not exist"),
        (FAR_SCRIPT, ["--vae", "TMP", "--idx_data_dir", "IDX", "--output_dir", "TMP/o"],
         "is not a diffusers AutoencoderKL directory"),
        (FAR_SCRIPT, ["--vae", "FAR/pipeline/transformer", "--idx_data_dir", "IDX", "--output_dir", "TMP/o"],
         "is not a diffusers AutoencoderKL directory"),
        (FAR_SCRIPT, ["--vae", "VAE", "--idx_data_dir", "IDX", "--output_dir", "TMP/o", "--preset", "tiny",
                      "--config_overrides", '{"latent_size": 16}'], "the VAE's latents are 4 x 8 x 8"),
        (FAR_SCRIPT, ["--vae", "VAE", "--idx_data_dir", "IDX", "--output_dir", "TMP/o", "--preset", "tiny",
                      "--config_overrides", '{"patch_size": 3}'], "not divisible by patch_size"),
        (FAR_SCRIPT, ["--vae", "VAE", "--idx_data_dir", "IDX", "--output_dir", "TMP/o", "--preset", "tiny",
                      "--num_inference_steps", "20"], "num_inference_steps must lie in [1, num_levels = 8]"),
        (FAR_SCRIPT, ["--vae", "VAE", "--idx_data_dir", "IDX", "--output_dir", "TMP/o", "--preset", "tiny",
                      "--resume_from_checkpoint", "latest"], "no complete checkpoint"),
    ],
)
def test_bad_arguments_give_clear_errors(script, args, message, idx_folder, trained_vae, trained_far, tmp_path,
                                         capsys):
    places = {"TMP": str(tmp_path), "IDX": str(idx_folder), "VAE": str(trained_vae / "vae"), "FAR": str(trained_far)}

    def resolve(arg: str) -> str:
        head = arg.split("/")[0]
        return places[head] + arg[len(head):] if head in places else arg

    with pytest.raises((SystemExit, ValueError)) as error:  # argparse exits with 2; the others raise ValueError
        run(script, *map(resolve, args))
    if error.type is SystemExit:
        assert error.value.code == 2 and message in capsys.readouterr().err
    else:
        assert message in str(error.value)
    assert not (tmp_path / "o" / "latents").exists()  # nothing was cached before the error
