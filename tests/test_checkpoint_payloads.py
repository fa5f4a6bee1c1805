"""No code from a checkpoint folder runs on resume.

accelerate unpickles the custom states of a checkpoint (`custom_checkpoint_N.pkl`: EMA, codebook restarts, LeCAM,
data progress) with `weights_only=False`. `training.checkpointing.resume` loads every pickled file of the folder with
`weights_only=True` first and refuses the checkpoint when one needs more. Here a file whose unpickling would create a
marker file (through `os.system`) replaces, in turn, each pickled file of a real checkpoint of every training script
(custom states, RNG, optimizers, schedulers): the resume must be refused in one line naming that file, the marker must
never appear, and nothing of the run may change."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import blob_images, write_idx_dataset
from test_run_state import snapshot

from spectralar_hf.training.checkpointing import PICKLED_SUFFIXES, check_pickled_files

pytestmark = pytest.mark.usefixtures("one_thread")

QUIET = ["--report_to", "none", "--logging_steps", 1, "--validation_steps", 1000, "--lr_warmup_steps", 1,
         "--train_batch_size", 8, "--use_ema", "--checkpointing_steps", 1]
GAN = ["--gan_weight", 0.1, "--lecam_weight", 0.001, "--discriminator_channels", 8]


class Payload:
    """Unpickling this runs `touch MARKER` (what an attacker's custom_checkpoint_N.pkl could do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


EXAMPLES = Path(__file__).parents[1] / "examples"
_MODULES: dict[str, object] = {}


def load_script(name: str):
    """Import an examples/ script as a module (once)."""
    if name not in _MODULES:
        import importlib.util

        spec = importlib.util.spec_from_file_location(f"payload_{name}", EXAMPLES / f"{name}.py")
        _MODULES[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_MODULES[name])
    return _MODULES[name]


def run(name: str, *args) -> None:
    """`name`'s main() in this process, then accelerate's singletons are reset for the next run."""
    from accelerate.state import AcceleratorState, GradientState

    try:
        load_script(name).main([str(a) for a in args])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """A tiny IDX dataset, a tiny VAE for FAR and the codes of a tiny tokenizer for the generator."""
    from diffusers import AutoencoderKL

    from spectralar_hf import SpectralTokenizer, SpectralTokenizerConfig

    root = tmp_path_factory.mktemp("payload-data")
    (root / "idx").mkdir()
    write_idx_dataset(root / "idx", np.stack(blob_images(16, seed=7)), np.arange(16) % 10)
    torch.manual_seed(0)
    SpectralTokenizer(SpectralTokenizerConfig.from_preset("tiny-32", num_channels=1, codebook_size=64)
                      ).save_pretrained(root / "tokenizer")
    vae = load_script("train_vae").VAE_PRESETS["tiny"]
    AutoencoderKL(**vae, down_block_types=["DownEncoderBlock2D"] * 3,
                  up_block_types=["UpDecoderBlock2D"] * 3).save_pretrained(root / "vae")
    run("pretokenize", "--tokenizer", root / "tokenizer", "--idx_data_dir", root / "idx", "--max_samples", 16,
        "--output_dir", root / "codes")
    return root


def script_args(name: str, data: Path) -> list:
    idx = ["--idx_data_dir", data / "idx", "--max_train_samples", 8]
    return QUIET + {
        "train_tokenizer": [*idx, "--preset", "tiny-32", "--config_overrides",
                            '{"num_channels": 1, "codebook_size": 64}', *GAN],
        "train_vqgan": [*idx, "--preset", "tiny", "--config_overrides", '{"num_channels": 1}', *GAN,
                        "--discriminator_stages", 2],
        "train_generator": ["--tokenized_dataset", data / "codes", "--preset", "tiny"],
        "train_vae": [*idx, "--preset", "tiny", "--scaling_samples", 8, *GAN],
        "train_far": ["--vae", data / "vae", *idx, "--preset", "tiny", "--validation_classes", 0,
                      "--validation_images_per_class", 1, "--validation_num_inference_steps", 2,
                      "--validation_diffusion_steps", 2],
    }[name]


SCRIPTS = ("train_tokenizer", "train_vqgan", "train_generator", "train_vae", "train_far")


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory) -> dict[str, Path]:
    """One 1-step run of every training script, with EMA (and the GAN where the script has one): checkpoint-1."""
    outputs = {}
    for name in SCRIPTS:
        outputs[name] = tmp_path_factory.mktemp(name) / "run"
        run(name, *script_args(name, data), "--max_train_steps", 1, "--output_dir", outputs[name])
    return outputs


def pickled_files(checkpoint: Path) -> list[str]:
    return sorted(p.name for p in checkpoint.iterdir() if p.suffix in PICKLED_SUFFIXES)


def test_every_script_checkpoints_custom_states_rng_optimizer_and_scheduler(runs):
    """What the payload test below plants into: every kind of pickled file, custom states included."""
    for name, output in runs.items():
        files = pickled_files(output / "checkpoint-1")
        assert {"optimizer.bin", "scheduler.bin", "random_states_0.pkl", "custom_checkpoint_0.pkl"} <= set(files), name
        check_pickled_files(output / "checkpoint-1")  # what the scripts save loads with weights_only=True
    # the GAN scripts also save the discriminator's optimizer and LeCAM's running means
    for name in ("train_tokenizer", "train_vqgan", "train_vae"):
        assert "optimizer_1.bin" in pickled_files(runs[name] / "checkpoint-1"), name


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_planted_payload_is_refused_and_never_runs(name, runs, data, tmp_path):
    checkpoint_files = pickled_files(runs[name] / "checkpoint-1")
    for planted in checkpoint_files:
        output = tmp_path / planted / "run"
        shutil.copytree(runs[name], output)
        marker = tmp_path / planted / "marker"
        torch.save({"state": Payload(marker)}, output / "checkpoint-1" / planted)
        before = snapshot(output)
        with pytest.raises(ValueError) as error:
            run(name, *script_args(name, data), "--max_train_steps", 2, "--output_dir", output,
                "--resume_from_checkpoint", "latest")
        message = str(error.value)
        assert not marker.exists(), f"{name}: unpickling {planted} ran its code"
        assert message.startswith("Refusing to resume") and planted in message and "\n" not in message, message
        assert "full unpickle" in message
        assert snapshot(output) == before, f"{name}: the refused resume changed the run folder ({planted})"


def test_the_payload_would_run_without_the_check(tmp_path):
    """The test's payload is real: a plain unpickle (what accelerate does for custom states) runs it."""
    marker = tmp_path / "marker"
    torch.save({"state": Payload(marker)}, tmp_path / "custom_checkpoint_0.pkl")
    torch.load(tmp_path / "custom_checkpoint_0.pkl", weights_only=False)
    assert marker.exists()


def test_a_damaged_pickled_file_is_named(tmp_path):
    checkpoint = tmp_path / "checkpoint-1"
    checkpoint.mkdir()
    torch.save({"micro_step": 3}, checkpoint / "custom_checkpoint_0.pkl")
    check_pickled_files(checkpoint)
    (checkpoint / "custom_checkpoint_1.pkl").write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(ValueError, match=r"Cannot resume .*checkpoint-1: custom_checkpoint_1.pkl is corrupt"):
        check_pickled_files(checkpoint)
