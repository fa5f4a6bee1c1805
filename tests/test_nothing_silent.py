"""Nothing silent (issue 30): a diverged run, a checkpoint of one, a model with non-finite weights, an fp16 run on
CPU, a sample set written over a user's files, and a negative FID are each one clear error (or a documented,
tested behaviour), and nothing a user wrote is replaced or deleted.

- training (all five scripts): a NaN / infinite loss (or discriminator loss) stops the run at that step, before the
  update, with one line naming the step and the terms; weights that became non-finite are caught before a
  checkpoint or the final model is saved; nothing of the diverged state is written. Under DDP every rank stops.
- resume: a checkpoint whose weights or EMA weights are not finite, or whose EMA state was replaced by something
  else, is refused in one line; the run folder is unchanged.
- `--mixed_precision fp16` on CPU (where accelerate runs no fp16 autocast) is refused instead of training in float32
  and recording fp16.
- `spectralar-hf reconstruct / generate / evaluate` refuse a model with non-finite weights, and reconstruct refuses a
  non-finite output, instead of "nan dB" and black images.
- `examples/sample.py` never overwrites an OUTPUT.json or PNGs it did not write, and `--overwrite` deletes only its
  own shard files and settings file in OUTPUT.shards/ (a corrupt shard of its own included).
- FID is never negative: identical sets give 0, and it still equals the scipy.linalg.sqrtm formula.

The training scripts run in-process on the tiny data and 1-step runs of tests/test_checkpoint_payloads.py.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_checkpoint_payloads import SCRIPTS, data, load_script, run, runs, script_args  # noqa: F401 (fixtures)
from test_run_state import snapshot
from test_sample_script import pipelines, run_in_process  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
SUBPROCESS_TIMEOUT_S = 300
MODEL_FOLDERS = {"train_tokenizer": "tokenizer", "train_vqgan": "vqgan", "train_generator": "pipeline",
                 "train_vae": "vae", "train_far": "pipeline"}
DIVERGE = ["--learning_rate", 1e4, "--lr_warmup_steps", 0]


def one_line(message: str) -> str:
    assert "\n" not in message, message
    return message


def saved_nothing(output: Path) -> None:
    """No model folder and no checkpoint (complete or partial) in `output`."""
    names = {path.name for path in output.iterdir()} if output.exists() else set()
    assert not names & set(MODEL_FOLDERS.values()), names
    assert not [name for name in names if name.startswith(("checkpoint-", ".checkpoint-"))], names


# ---------------------------------------------------------------------------------------------------------------
# Training: a non-finite loss or state stops the run, names the step, saves nothing
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_diverging_run_stops_at_the_step_and_saves_nothing(name, data, tmp_path):
    """--learning_rate 1e4 (the issue's case): the loss turns NaN / inf within a few steps."""
    output = tmp_path / "run"
    with pytest.raises(ValueError) as error:
        run(name, *script_args(name, data), *DIVERGE, "--max_train_steps", 6, "--checkpointing_steps", 100,
            "--output_dir", output)
    message = one_line(str(error.value))
    assert message.startswith("Training diverged "), message
    step = int(message.split("step ")[1].split(":")[0])
    assert 1 <= step <= 6 and "lower --learning_rate" in message and f"before step {step}" in message, message
    assert "the loss is not finite (" in message or "the weights are not finite (" in message, message
    saved_nothing(output)
    # the log holds the steps trained before the divergence (a loss: up to the step before; weights: up to the step)
    records = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
    last = step - 1 if "the loss is not finite" in message else step
    assert [record["step"] for record in records] == list(range(1, last + 1))
    assert all(np.isfinite(record["loss"]) for record in records)


@pytest.mark.parametrize("name", ["train_tokenizer", "train_vqgan", "train_vae"])
def test_a_nan_discriminator_loss_stops_the_run(name, data, tmp_path, monkeypatch):
    from spectralar_hf.training import losses

    # training/gan.py (the scripts' discriminator update) calls it from losses
    monkeypatch.setattr(losses, "hinge_discriminator_loss", lambda real, fake: (real.mean() + fake.mean()) * np.nan)
    output = tmp_path / "run"
    with pytest.raises(ValueError) as error:
        run(name, *script_args(name, data), "--max_train_steps", 2, "--checkpointing_steps", 1,
            "--output_dir", output)
    message = one_line(str(error.value))
    assert message.startswith("Training diverged at step 1: the loss is not finite (discriminator_loss = nan)"), message
    saved_nothing(output)


def _poison_after_step(monkeypatch) -> None:
    """Every optimizer step ends with a NaN in its first parameter: the loss of that step was finite."""
    original = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        with torch.no_grad():
            self.param_groups[0]["params"][0].fill_(float("nan"))
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", step)


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_nan_loss_is_named_with_its_terms_at_its_step(name, data, tmp_path, monkeypatch):
    """Deterministic: the update of step 1 leaves a NaN weight, so the loss of step 2 is NaN (no checkpoint is due)."""
    _poison_after_step(monkeypatch)
    output = tmp_path / "run"
    with pytest.raises(ValueError) as error:
        run(name, *script_args(name, data), "--max_train_steps", 3, "--checkpointing_steps", 100,
            "--output_dir", output)
    message = one_line(str(error.value))
    assert message.startswith("Training diverged at step 2: the loss is not finite ("), message
    assert "loss = nan" in message and "before this update" in message and "before step 2" in message, message
    saved_nothing(output)
    records = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records] == [1] and np.isfinite(records[0]["loss"])


@pytest.mark.parametrize("name", SCRIPTS)
@pytest.mark.parametrize("when", ["checkpoint", "final"])
def test_non_finite_weights_are_never_saved(name, when, data, tmp_path, monkeypatch):
    """The update of step 1 makes a weight NaN while the loss of step 1 was finite: the checkpoint of step 1 (or the
    final model of a 1-step run) is refused, naming the step and the tensors."""
    _poison_after_step(monkeypatch)
    output = tmp_path / "run"
    with pytest.raises(ValueError) as error:
        run(name, *script_args(name, data), "--max_train_steps", 1,
            "--checkpointing_steps", 1 if when == "checkpoint" else 100, "--output_dir", output)
    message = one_line(str(error.value))
    assert message.startswith("Training diverged by step 1: the weights are not finite (the weights of "), message
    assert "NaN/Inf in " in message and "the EMA weights: NaN/Inf" in message, message  # --use_ema: the shadow too
    assert "without saving the model or a checkpoint" in message, message
    saved_nothing(output)


def test_the_script_exits_2_with_one_line_and_saves_nothing(data, tmp_path):
    output = tmp_path / "run"
    args = [*script_args("train_generator", data), *DIVERGE, "--max_train_steps", 6, "--checkpointing_steps", 100,
            "--output_dir", output]
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "train_generator.py"), *map(str, args)],
                            capture_output=True, text=True, env=ENV, timeout=SUBPROCESS_TIMEOUT_S)
    lines = [line for line in result.stderr.splitlines() if line.strip() and "%|" not in line and " INFO " not in line]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("train_generator.py: error: Training diverged "), lines[0]
    saved_nothing(output)


class _TwoRanks:
    """The accelerator interface that `finite` uses, as seen by one of two processes whose other process reports
    `remote` flags (what `accelerator.reduce(..., "sum")` returns)."""

    num_processes = 2
    device = torch.device("cpu")

    def __init__(self, remote: list[float]) -> None:
        self.remote = torch.tensor(remote)

    def reduce(self, tensor, reduction):
        assert reduction == "sum"
        return tensor + self.remote


def test_a_rank_with_a_finite_loss_stops_with_the_rank_that_has_a_nan():
    from spectralar_hf.training.finite import check_finite_loss

    check_finite_loss(_TwoRanks([0.0, 0.0]), 5, {"mse_loss": 1.0, "loss": torch.tensor(2.0)})  # all finite: passes
    with pytest.raises(ValueError) as error:
        check_finite_loss(_TwoRanks([0.0, 1.0]), 5, {"mse_loss": 1.0, "loss": torch.tensor(2.0)})
    assert one_line(str(error.value)).startswith("Training diverged at step 5: the loss is not finite (loss (on another "
                                                 "process))")


DDP_SCRIPT = """
import sys, torch
from accelerate import Accelerator
from spectralar_hf.training.finite import check_finite_loss
accelerator = Accelerator(cpu=True)
loss = torch.tensor(float("nan") if accelerator.process_index == 1 else 0.5)
try:
    check_finite_loss(accelerator, 3, {"loss": loss})
    result = "continued"
except ValueError as error:
    result = str(error)
with open(f"{sys.argv[1]}/rank{accelerator.process_index}.txt", "w") as stream:  # stdout would interleave
    stream.write(result)
import os
os._exit(0)  # as the training scripts' end_run: a gloo teardown at interpreter exit can abort (pytorch#56297)
"""


def test_every_ddp_rank_stops_when_one_rank_has_a_nan_loss(tmp_path):
    """A real 2-process gloo launch: only rank 1's loss is NaN, and both ranks stop with the step named."""
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(script), str(tmp_path)]
    result = subprocess.run(launch, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S,
                            env={**ENV, "ACCELERATE_USE_CPU": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = ((tmp_path / f"rank{rank}.txt").read_text() for rank in (0, 1))
    assert first.startswith("Training diverged at step 3: the loss is not finite (loss (on another process))"), first
    assert second.startswith("Training diverged at step 3: the loss is not finite (loss = nan)"), second


# ---------------------------------------------------------------------------------------------------------------
# Resume: a checkpoint of a diverged run, or with a replaced EMA state, is refused
# ---------------------------------------------------------------------------------------------------------------


def _ema_file(checkpoint: Path) -> Path:
    for path in sorted(checkpoint.glob("custom_checkpoint_*.pkl")):
        state = torch.load(path, weights_only=True)
        if isinstance(state, dict) and "shadow_params" in state:
            return path
    raise AssertionError(f"no EMA state in {checkpoint}")


def _resume_refused(name: str, data: Path, output: Path) -> str:
    before = snapshot(output)
    with pytest.raises(ValueError) as error:
        run(name, *script_args(name, data), "--max_train_steps", 2, "--output_dir", output,
            "--resume_from_checkpoint", "latest")
    assert snapshot(output) == before, "the refused resume changed the run folder"
    return one_line(str(error.value))


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_checkpoint_with_non_finite_weights_is_not_resumed(name, runs, data, tmp_path):
    from safetensors.torch import load_file, save_file

    output = tmp_path / "run"
    shutil.copytree(runs[name], output)
    weights = output / "checkpoint-1" / "model.safetensors"
    tensors = load_file(weights)
    first = sorted(tensors)[0]
    tensors[first] = torch.full_like(tensors[first], float("nan"))
    save_file(tensors, weights)
    message = _resume_refused(name, data, output)
    assert message.startswith(f"Cannot resume {output / 'checkpoint-1'}: the weights of "), message
    assert ": NaN/Inf in 1 of " in message and "the run had diverged before this checkpoint was saved" in message
    assert "resume from an earlier checkpoint" in message, message


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_checkpoint_with_non_finite_ema_weights_is_not_resumed(name, runs, data, tmp_path):
    output = tmp_path / "run"
    shutil.copytree(runs[name], output)
    path = _ema_file(output / "checkpoint-1")
    state = torch.load(path, weights_only=True)
    state["shadow_params"][0] = torch.full_like(state["shadow_params"][0], float("inf"))
    torch.save(state, path)
    message = _resume_refused(name, data, output)
    assert message.startswith(f"Cannot resume {output / 'checkpoint-1'}: the EMA weights in {path.name}: NaN/Inf in 1 "
                              f"of "), message
    assert "resume from an earlier checkpoint" in message, message


@pytest.mark.parametrize("replacement, named", [
    ({"foo": 1}, "keys: unexpected foo; missing decay"),
    ("shorter", "shadow_params"),
    ("reshaped", "shape"),
], ids=["foo", "fewer-tensors", "other-shape"])
@pytest.mark.parametrize("name", ["train_tokenizer", "train_generator"])
def test_a_replaced_ema_state_is_refused(name, replacement, named, runs, data, tmp_path):
    """diffusers' EMAModel.load_state_dict accepts {'foo': 1} (keeping the fresh EMA) and shadow weights of any number
    and shape; the resume checks the state against this run's EMA first."""
    output = tmp_path / "run"
    shutil.copytree(runs[name], output)
    path = _ema_file(output / "checkpoint-1")
    state = torch.load(path, weights_only=True)
    if replacement == "shorter":
        state["shadow_params"] = state["shadow_params"][:-1]
    elif replacement == "reshaped":
        state["shadow_params"][0] = state["shadow_params"][0].reshape(-1, 1)[:1]
    else:
        state = replacement
    torch.save(state, path)
    message = _resume_refused(name, data, output)
    assert message.startswith(f"Cannot resume {output / 'checkpoint-1'}: {path.name} is not a state of the EMA weights "
                              f"of this run ("), message
    assert named in message and "resume from an earlier checkpoint" in message, message


def test_diffusers_ema_accepts_a_replaced_state_by_itself():
    """What the check above guards against (if diffusers starts refusing these, the check is merely redundant)."""
    from diffusers.training_utils import EMAModel

    model = torch.nn.Linear(3, 2)
    ema = EMAModel(model.parameters())
    ema.load_state_dict({"foo": 1})
    ema.load_state_dict({**ema.state_dict(), "shadow_params": [torch.zeros(7)]})
    assert len(ema.shadow_params) == 1  # one tensor of the wrong shape for a model of two


# ---------------------------------------------------------------------------------------------------------------
# --mixed_precision fp16 on CPU
# ---------------------------------------------------------------------------------------------------------------


FP16_MESSAGE = ("--mixed_precision fp16 does not run on CPU: accelerate has no fp16 autocast or gradient scaler there, "
                "so the run would train in float32 while recording fp16; use --mixed_precision bf16 (CPU autocast) or "
                "no")


@pytest.mark.parametrize("name", SCRIPTS)
def test_fp16_on_cpu_is_refused_before_anything_is_written(name, data, tmp_path):
    output = tmp_path / "run"
    with pytest.raises(ValueError) as error:
        run(name, *script_args(name, data), "--max_train_steps", 1, "--mixed_precision", "fp16", "--output_dir", output)
    assert one_line(str(error.value)).startswith(FP16_MESSAGE)
    assert not output.exists()


def test_fp16_from_accelerate_launch_is_refused_and_what_accelerate_does_on_cpu(data, tmp_path, monkeypatch):
    """accelerate on CPU with fp16: no GradScaler, and autocast() is a no-op (float32 matmuls); bf16 autocasts."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    try:
        accelerator = Accelerator(mixed_precision="fp16", cpu=True)
        with accelerator.autocast():
            product = torch.ones(2, 2) @ torch.ones(2, 2)
        assert accelerator.mixed_precision == "fp16" and accelerator.scaler is None and product.dtype == torch.float32
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    output = tmp_path / "run"
    with pytest.raises(ValueError, match="^--mixed_precision fp16 does not run on CPU"):
        run("train_generator", *script_args("train_generator", data), "--max_train_steps", 1, "--output_dir", output)
    assert not output.exists()
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what the message suggests runs, and is recorded
    run("train_generator", *script_args("train_generator", data), "--max_train_steps", 1, "--output_dir", output)
    assert json.loads((output / "run_info.json").read_text())["mixed_precision"] == "bf16"


# ---------------------------------------------------------------------------------------------------------------
# FID is never negative
# ---------------------------------------------------------------------------------------------------------------


def _statistics(count: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from spectralar_hf.evaluation import feature_statistics

    features = np.abs(np.random.default_rng(seed).normal(size=(count, dim))) * 3.0  # ReLU-like pool features
    return feature_statistics(features)


def _reference_fid(mu1, sigma1, mu2, sigma2) -> float:
    """pytorch-fid's formula with scipy.linalg.sqrtm (what the ADM evaluator computes)."""
    import scipy.linalg

    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean).real)


def _old_eigh_fid(mu1, sigma1, mu2, sigma2) -> float:
    """The formula before issue 30: square roots of the eigenvalues of sigma1^1/2 sigma2 sigma1^1/2."""
    eigenvalues, eigenvectors = np.linalg.eigh(sigma1)
    root = (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T
    product = root @ sigma2 @ root
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((product + product.T) / 2.0), 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


@pytest.mark.parametrize("count, dim", [(50, 256), (30, 64), (400, 64)], ids=["rank-deficient", "small", "full-rank"])
def test_fid_of_identical_statistics_is_zero_never_negative(count, dim):
    from spectralar_hf.evaluation import frechet_distance

    mu, sigma = _statistics(count, dim, seed=0)
    for method in ("eigh", "sqrtm"):
        fid = frechet_distance(mu, sigma, mu, sigma, method=method)
        assert 0.0 <= fid < 1e-6 * np.trace(sigma), (method, fid)
    if count < dim:  # what the test guards against: rounding lifted by the square root, summed over the null space
        assert _old_eigh_fid(mu, sigma, mu, sigma) < 0


@pytest.mark.parametrize("count, dim", [(400, 64), (200, 32), (50, 256)], ids=["full-rank", "small", "rank-deficient"])
def test_fid_still_equals_the_sqrtm_formula(count, dim):
    from spectralar_hf.evaluation import frechet_distance

    first, second = _statistics(count, dim, seed=1), _statistics(count, dim, seed=2)
    shifted = (second[0] + 0.05, second[1] * 1.1)
    for other in (second, shifted):
        expected = _reference_fid(*first, *other)
        assert expected > 0
        assert frechet_distance(*first, *other) == pytest.approx(expected, rel=1e-6)
        assert frechet_distance(*first, *other, method="sqrtm") == pytest.approx(expected, rel=1e-6)


class _WideFeatures(torch.nn.Module):
    """A stand-in feature network wider than the number of images (as 2048 Inception features of a small set):
    a fixed random projection of the 8 x 8 average-pooled pixels, ReLU."""

    def __init__(self, dim: int = 256):
        super().__init__()
        self.projection = torch.nn.Linear(3 * 8 * 8, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.projection(torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1)))


def test_evaluate_npz_of_a_set_against_itself_reports_fid_zero(tmp_path, capsys):
    """The issue's case: `spectralar-hf evaluate npz S.npz --reference S.npz` reported FID -0.0002."""
    from spectralar_hf.cli import main

    size, count = 16, 24
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "s.npz", rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8), np.arange(count) % 3)
    torch.manual_seed(0)
    torch.jit.script(_WideFeatures().eval()).save(str(tmp_path / "wide.pt"))
    code = main(["evaluate", "npz", str(tmp_path / "s.npz"), "--reference", str(tmp_path / "s.npz"), "--inception",
                 str(tmp_path / "wide.pt"), "--report", str(tmp_path / "r.json"), "--no-cache"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "r.json").read_text())
    assert 0.0 <= report["fid"] < 1e-6, report["fid"]


# ---------------------------------------------------------------------------------------------------------------
# spectralar-hf: a model with non-finite weights, or a non-finite output, is one line (exit 2), nothing written
# ---------------------------------------------------------------------------------------------------------------


def _poison(module: torch.nn.Module, count: int | None = None) -> None:
    """NaN into the first `count` parameters (all when None), as a diverged run would leave them."""
    with torch.no_grad():
        for parameter in list(module.parameters())[:count]:
            parameter.fill_(float("nan"))


@pytest.fixture(scope="module")
def cli_models(tmp_path_factory) -> Path:
    """A tiny tokenizer and its all-NaN copy, SpectralAR pipelines with a good / NaN transformer, FAR pipelines with
    a good / NaN VAE, a photo and an IDX folder."""
    from diffusers import AutoencoderKL
    from PIL import Image
    from conftest import blob_images, write_idx_dataset

    from spectralar_hf import (FARConfig, FARPipeline, FARTransformer, SpectralARConfig, SpectralARForCausalLM,
                               SpectralARPipeline, SpectralTokenizer, SpectralTokenizerConfig, build_noise_scheduler)

    root = tmp_path_factory.mktemp("cli-models")
    torch.manual_seed(0)
    tokenizer = SpectralTokenizer(SpectralTokenizerConfig.from_preset("tiny-32", num_channels=1)).eval()
    tokenizer.save_pretrained(root / "tok")
    transformer = SpectralARForCausalLM(SpectralARConfig.from_preset("tiny", num_classes=3)).eval()
    SpectralARPipeline(tokenizer=tokenizer, transformer=transformer).save_pretrained(root / "pipe")
    far = FARTransformer(FARConfig.from_preset("tiny", num_classes=3, diffusion_steps=2)).eval()
    vae = AutoencoderKL(in_channels=1, out_channels=1, sample_size=32, block_out_channels=[8, 8, 8],
                        down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
                        layers_per_block=1, latent_channels=4, norm_num_groups=4).eval()
    FARPipeline(vae=vae, transformer=far, scheduler=build_noise_scheduler(far.config)).save_pretrained(root / "far")
    _poison(transformer, 1)
    SpectralARPipeline(tokenizer=tokenizer, transformer=transformer).save_pretrained(root / "nan_pipe")
    _poison(vae, 1)
    FARPipeline(vae=vae, transformer=far, scheduler=build_noise_scheduler(far.config)).save_pretrained(root / "nan_far")
    _poison(tokenizer)
    tokenizer.save_pretrained(root / "nan_tok")
    Image.fromarray((np.random.default_rng(0).random((32, 32)) * 255).astype(np.uint8)).save(root / "photo.png")
    (root / "idx").mkdir()
    write_idx_dataset(root / "idx", np.stack(blob_images(8, seed=1)), np.arange(8) % 3)
    return root


def _cli(capsys, *args) -> tuple[int, str]:
    from spectralar_hf.cli import main

    status = main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return status, captured.err


@pytest.mark.parametrize("command, model, named", [
    (("reconstruct", "{m}", "{root}/photo.png", "--output", "{out}/strip.png"), "nan_tok",
     "the weights of its tokenizer: NaN/Inf in 71 of 71 tensors ("),
    (("evaluate", "tokenizer", "{m}", "--idx-data-dir", "{root}/idx", "--report", "{out}/r.json"), "nan_tok",
     "the weights of its tokenizer: NaN/Inf in "),
    (("generate", "{m}", "--classes", "0", "--output", "{out}/grid.png"), "nan_pipe",
     "the weights of its transformer: NaN/Inf in 1 of "),
    (("generate", "{m}", "--classes", "0", "--output", "{out}/grid.png"), "nan_far",
     "the weights of its vae: NaN/Inf in 1 of "),
    (("evaluate", "pipeline", "{m}", "--idx-data-dir", "{root}/idx", "--report", "{out}/r.json"), "nan_pipe",
     "the weights of its transformer: NaN/Inf in 1 of "),
], ids=["reconstruct", "evaluate-tokenizer", "generate", "generate-far", "evaluate-pipeline"])
def test_a_model_with_non_finite_weights_is_refused_in_one_line(command, model, named, cli_models, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    args = [part.format(m=cli_models / model, root=cli_models, out=out) for part in command]
    status, err = _cli(capsys, *args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"spectralar-hf {command[0]}: error: '{cli_models / model}' is not usable: "), lines[0]
    assert named in lines[0] and "use an earlier checkpoint" in lines[0], lines[0]
    assert list(out.iterdir()) == []  # no strip, grid or report


def test_reconstruct_before_the_check_said_nan_db_and_wrote_a_black_strip(cli_models, tmp_path):
    """What the check replaces: the NaN tokenizer decodes to NaN (clamped to black, PSNR nan)."""
    from spectralar_hf import SpectralTokenizer

    tokenizer = SpectralTokenizer.from_pretrained(cli_models / "nan_tok").eval()
    with torch.no_grad():
        image = torch.zeros(1, 1, 32, 32)
        decoded = tokenizer.decode(tokenizer.encode(image).codes).reconstruction
    assert torch.isnan(decoded).all()


def test_info_still_describes_a_model_with_non_finite_weights(cli_models, capsys):
    status, err = _cli(capsys, "info", cli_models / "nan_tok")
    assert status == 0, err


def test_good_models_pass_the_check(cli_models, tmp_path, capsys):
    status, err = _cli(capsys, "reconstruct", cli_models / "tok", cli_models / "photo.png", "--output",
                       tmp_path / "strip.png")
    assert status == 0 and (tmp_path / "strip.png").is_file(), err
    status, err = _cli(capsys, "generate", cli_models / "far", "--classes", "0", "--num-inference-steps", 2,
                       "--output", tmp_path / "grid.png")
    assert status == 0 and (tmp_path / "grid.png").is_file(), err


def test_reconstruct_refuses_a_non_finite_output_of_finite_weights(cli_models, tmp_path, capsys, monkeypatch):
    """Finite weights that overflow on an input (here: decode patched to overflow) are one line, no strip."""
    from spectralar_hf import SpectralTokenizer

    original = SpectralTokenizer.decode

    def overflowing(self, *args, **kwargs):
        output = original(self, *args, **kwargs)
        output.reconstruction = output.reconstruction * float("inf")
        return output

    monkeypatch.setattr(SpectralTokenizer, "decode", overflowing)
    status, err = _cli(capsys, "reconstruct", cli_models / "tok", cli_models / "photo.png", "--output",
                       tmp_path / "strip.png")
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"spectralar-hf reconstruct: error: the reconstruction of '{cli_models / 'photo.png'}' "
                               f"by '{cli_models / 'tok'}': NaN/Inf in "), lines[0]
    assert "although the model's weights are finite" in lines[0] and "nothing was written" in lines[0], lines[0]
    assert not (tmp_path / "strip.png").exists()


def test_generate_refuses_non_finite_far_latents(cli_models, tmp_path, capsys, monkeypatch):
    """FAR's latents are floats (SpectralAR's codes are integers): latents that overflowed are one line, no grid."""
    from spectralar_hf import FARPipeline

    original = FARPipeline.__call__

    def overflowing(self, *args, **kwargs):
        output = original(self, *args, **kwargs)
        output.latents = output.latents * float("inf")
        return output

    monkeypatch.setattr(FARPipeline, "__call__", overflowing)
    status, err = _cli(capsys, "generate", cli_models / "far", "--classes", "0", "--num-inference-steps", 2,
                       "--output", tmp_path / "grid.png")
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"spectralar-hf generate: error: the latents sampled by '{cli_models / 'far'}': "
                               f"NaN/Inf in "), lines[0]
    assert not (tmp_path / "grid.png").exists()


# ---------------------------------------------------------------------------------------------------------------
# examples/sample.py: nothing a user wrote is replaced or deleted
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sampling(pipelines):
    """The tiny 3-class SpectralARPipeline of tests/test_sample_script.py and sample.py's main() in this process."""
    return pipelines / "spectralar", run_in_process


def _set_args(pipeline: Path, output: Path, *extra) -> list:
    return [pipeline, "--samples_per_class", 2, "--shard_size", 2, "--output", output, *extra]


def _sample_refused(sample, args, folder: Path) -> str:
    """sample.py refuses `args` in one line and changes nothing under `folder`."""
    before = snapshot(folder)
    with pytest.raises(ValueError) as error:
        sample(*args)
    assert snapshot(folder) == before, "the refused run changed files"
    return one_line(str(error.value))


@pytest.mark.parametrize("content, named", [
    ('{"my": "notes"}\n', "is not a settings record of sample.py"),
    ("not json at all\n", "is not a settings record of sample.py"),
    ("OTHER_SET", "records a set sampled with other settings (seed 1 -> 0)"),
], ids=["user-json", "user-text", "record-of-another-set"])
def test_an_existing_output_json_is_not_overwritten(content, named, sampling, tmp_path):
    pipeline, sample = sampling
    if content == "OTHER_SET":  # a complete set of seed 1, whose .npz was then deleted
        sample(*_set_args(pipeline, tmp_path / "s.npz", "--seed", 1))
        (tmp_path / "s.npz").unlink()
    else:
        (tmp_path / "s.json").write_text(content)
    message = _sample_refused(sample, _set_args(pipeline, tmp_path / "s.npz"), tmp_path)
    assert message.startswith(f"{tmp_path / 's.json'} ") and named in message, message
    assert "pass --overwrite to replace" in message and "or choose another --output" in message, message
    assert not (tmp_path / "s.shards").exists() and not (tmp_path / "s.npz").exists()
    sample(*_set_args(pipeline, tmp_path / "s.npz", "--overwrite"))  # the fix the message names
    assert json.loads((tmp_path / "s.json").read_text())["seed"] == 0 and (tmp_path / "s.npz").is_file()


def test_the_record_of_the_same_set_is_rewritten_without_overwrite(sampling, tmp_path):
    """OUTPUT.json of this very set (its .npz deleted): the set is sampled again and the record rewritten."""
    pipeline, sample = sampling
    sample(*_set_args(pipeline, tmp_path / "s.npz"))
    (tmp_path / "s.npz").unlink()
    sample(*_set_args(pipeline, tmp_path / "s.npz"))
    assert (tmp_path / "s.npz").is_file()


def test_pngs_this_run_did_not_write_are_not_overwritten(sampling, tmp_path):
    pipeline, sample = sampling
    png_dir = tmp_path / "pngs"
    png_dir.mkdir()
    (png_dir / "000001_1.png").write_bytes(b"my own picture")
    (png_dir / "holiday.png").write_bytes(b"another picture")
    message = _sample_refused(sample, _set_args(pipeline, tmp_path / "s.npz", "--png_dir", png_dir), tmp_path)
    assert message == (f"--png_dir {png_dir} already holds 1 PNG(s) with this set's names (e.g. "
                       f"{png_dir / '000001_1.png'}) that this run did not write; pass --overwrite to replace them, or "
                       f"choose another --png_dir."), message
    assert not (tmp_path / "s.shards").exists()
    sample(*_set_args(pipeline, tmp_path / "s.npz", "--png_dir", png_dir, "--overwrite"))
    from PIL import Image

    assert Image.open(png_dir / "000001_1.png").size == (32, 32)  # replaced by the set's image, as asked
    assert (png_dir / "holiday.png").read_bytes() == b"another picture"  # other names are never touched


def test_a_killed_run_resumes_into_its_own_png_dir(sampling, tmp_path):
    """The PNGs that a killed run of the same set wrote are its own: the resumed run may rewrite them."""
    pipeline, sample = sampling
    args = _set_args(pipeline, tmp_path / "s.npz", "--png_dir", tmp_path / "pngs", "--keep_shards")
    sample(*args)
    shards = sorted((tmp_path / "s.shards").glob("shard-*.npz"))
    for path in [tmp_path / "s.npz", tmp_path / "s.json", shards[-1]]:  # as if killed before the last shard
        path.unlink()
    sample(*args)
    assert (tmp_path / "s.npz").is_file() and len(list((tmp_path / "pngs").iterdir())) == 6
    # another --png_dir holding the same names is not this run's folder
    shutil.copytree(tmp_path / "pngs", tmp_path / "other")
    (tmp_path / "s.npz").unlink()
    (tmp_path / "s.json").unlink()
    message = _sample_refused(sample, [*args[:-3], "--png_dir", tmp_path / "other", "--keep_shards"], tmp_path)
    assert message.startswith(f"--png_dir {tmp_path / 'other'} already holds 6 PNG(s)"), message


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
def test_a_user_folder_named_like_the_shards_is_never_deleted(overwrite, sampling, tmp_path):
    """OUTPUT.shards/ holding no shards of ours (a user's notes): refused naming the files, with or without
    --overwrite; it was deleted whole by --overwrite before."""
    pipeline, sample = sampling
    folder = tmp_path / "s.shards"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    (folder / "data").mkdir()
    message = _sample_refused(sample, _set_args(pipeline, tmp_path / "s.npz", *(["--overwrite"] * overwrite)),
                              tmp_path)
    assert message == (f"{folder} holds 2 file(s) that sample.py did not write (data, notes.txt); it is not this "
                       f"script's shard folder (--overwrite deletes only its shards and settings.json): move them "
                       f"away, or choose another --output."), message


def test_overwrite_deletes_only_our_shards_and_settings_even_a_corrupt_shard(sampling, tmp_path, capsys):
    pipeline, sample = sampling
    args = _set_args(pipeline, tmp_path / "s.npz", "--keep_shards")
    sample(*args, "--seed", 1)
    folder = tmp_path / "s.shards"
    (tmp_path / "s.npz").unlink()
    (tmp_path / "s.json").unlink()
    corrupt = folder / "shard-00001.npz"
    corrupt.write_bytes(corrupt.read_bytes()[:40])  # a corrupt shard of ours
    (folder / ".shard-00002.npz.x1y2.tmp").write_bytes(b"left by a kill")
    capsys.readouterr()
    with pytest.raises(ValueError, match=r"holds shards sampled with other settings \(seed 1 -> 0\); pass --overwrite"):
        sample(*args)
    sample(*args, "--overwrite")
    deleted = [line for line in capsys.readouterr().err.splitlines() if line.startswith("--overwrite: deleting")]
    assert any(str(corrupt) in line for line in deleted), deleted  # the corrupt shard is named and cleared
    assert not (folder / ".shard-00002.npz.x1y2.tmp").exists()
    assert json.loads((folder / "settings.json").read_text())["seed"] == 0
    with np.load(tmp_path / "s.npz") as merged:
        assert merged["arr_0"].shape == (6, 32, 32, 3)


def test_a_corrupt_shard_of_the_same_set_is_named_and_resampled(sampling, tmp_path, capsys):
    pipeline, sample = sampling
    args = _set_args(pipeline, tmp_path / "s.npz", "--keep_shards")
    sample(*args)
    complete = np.load(tmp_path / "s.npz")["arr_0"]
    (tmp_path / "s.npz").unlink()
    corrupt = tmp_path / "s.shards" / "shard-00002.npz"
    corrupt.write_bytes(b"")
    capsys.readouterr()
    sample(*args)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and f"shard {corrupt} is damaged (the file is empty (0 bytes))" in warnings[0]
    assert np.array_equal(np.load(tmp_path / "s.npz")["arr_0"], complete)


def test_the_clean_up_after_the_merge_keeps_files_that_are_not_ours(sampling, tmp_path, capsys):
    pipeline, sample = sampling
    args = _set_args(pipeline, tmp_path / "s.npz")
    sample(*args, "--keep_shards")
    (tmp_path / "s.npz").unlink()
    (tmp_path / "s.json").unlink()
    (tmp_path / "s.shards" / "notes.txt").write_text("mine")  # put there while the set is resumed
    capsys.readouterr()
    sample(*args)  # same settings: resumed (the foreign file is left alone), merged, then our files removed
    assert sorted(path.name for path in (tmp_path / "s.shards").iterdir()) == ["notes.txt"]
    assert (tmp_path / "s.shards" / "notes.txt").read_text() == "mine"
    assert f"kept {tmp_path / 's.shards'}: it also holds 1 file(s) this script did not write (notes.txt)" in \
        capsys.readouterr().err


def test_a_file_in_the_place_of_the_shard_folder_is_refused(sampling, tmp_path):
    pipeline, sample = sampling
    (tmp_path / "s.shards").write_text("a file of mine")
    for extra in ([], ["--overwrite"]):
        message = _sample_refused(sample, _set_args(pipeline, tmp_path / "s.npz", *extra), tmp_path)
        assert message == (f"{tmp_path / 's.shards'} is a file, not a folder of this script's shards; move it away, "
                           f"or choose another --output."), message


# ---------------------------------------------------------------------------------------------------------------
# Python API: what the CLI rejects, the pipelines reject too; a misspelt argument says what was meant
# ---------------------------------------------------------------------------------------------------------------


def api_pipelines():
    from test_far import spread, tiny_config, tiny_vae
    from test_pipeline import make_pipeline

    from spectralar_hf import FARPipeline, FARTransformer, build_noise_scheduler

    far = spread(FARTransformer(tiny_config(beta_schedule="linear"))).eval()
    far_pipe = FARPipeline(vae=tiny_vae(), transformer=far, scheduler=build_noise_scheduler(far.config))
    spectralar = make_pipeline()
    for pipe in (spectralar, far_pipe):
        pipe.set_progress_bar_config(disable=True)
    return {"spectralar": (spectralar, {}), "far": (far_pipe, {"num_inference_steps": 2, "diffusion_steps": 2})}


@pytest.mark.parametrize("kind", ["spectralar", "far"])
def test_pipelines_refuse_what_the_cli_refuses_and_name_misspelt_arguments(kind):
    pipe, fast = api_pipelines()[kind]
    for scale in (0, -1, 0.0):
        with pytest.raises(ValueError, match=r"guidance_scale must lie in \(0, inf\), got -?0?1?(\.0)?; 1.0 = no "
                                             r"guidance.*0 or less would ignore or invert the condition"):
            pipe([0], guidance_scale=scale, output_type="pt", **fast)
    with pytest.raises(TypeError, match=r"__call__\(\) got an unexpected keyword argument 'guidence_scale'; did you "
                                        r"mean 'guidance_scale'"):
        pipe([0], guidence_scale=2.0, output_type="pt", **fast)
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'zzz'; it takes class_labels, "):
        pipe([0], zzz=1, output_type="pt", **fast)
    # a guidance scale in (0, 1) is a blend towards the unconditional model: allowed, and it changes the result
    generator = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    blended = pipe([0], guidance_scale=0.5, generator=generator(), output_type="pt", **fast).images
    plain = pipe([0], guidance_scale=1.0, generator=generator(), output_type="pt", **fast).images
    assert not torch.equal(blended, plain)
