"""The GPU check (issue 16, part 2): one run on a CUDA machine that exercises the training scripts in bf16 and
measures training MFU, sampling, pipeline throughput and CUDA / CPU parity, as one markdown table.

Run it through `benchmarks/gpu_check.sh [--smoke] [--output PATH]`, which calls the stages of this module:

  scripts  under `accelerate launch --mixed_precision bf16 --num_processes 1`: every examples/ script runs a few
           steps on a small generated IDX dataset, then resumes from its saved checkpoint for a few more (each
           script's `main()` is called in this one process, with accelerate's state reset between runs, so the
           imports are paid once); the saved SpectralARPipeline and FARPipeline then generate on the device.
  bench    the bf16 matmul peak (an N^3 GEMM), training throughput and MFU (titok-b64, d16, FAR-B), sampling of d16
           and d16-p4 against `GPT2LMHeadModel.generate` of the same size (with and without CFG), the whole
           pipeline's images/s, FAR-B sampling, CUDA vs CPU float32 parity of encode / decode / greedy sampling, and
           compiled sampling when `sample()` takes `compile_config`.
  fail     record a FAIL row for a stage that crashed or timed out (the wrapper calls it).

`--smoke` runs the same code with tiny presets, batch sizes 1 / 2 and one timed repeat on the CPU (the CI test);
the GPU targets are shown but only evaluated on CUDA. Every row is appended to `--rows` (JSON lines) and the table
at `--output` is rewritten after each row, so a run cut short still leaves a table. A check that raises is a
"FAIL: ..." row naming the exception and the innermost frame in this repository (the traceback goes to stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime
import functools
import gzip
import importlib.util
import inspect
import json
import math
import platform
import struct
import sys
import time
import traceback
from importlib.metadata import version
from pathlib import Path
from typing import Callable, Iterator

import datasets
import numpy as np
import torch
from accelerate.state import AcceleratorState, GradientState
from diffusers import AutoencoderKL
from torch.utils.flop_counter import FlopCounterMode
from transformers import GPT2LMHeadModel
from transformers.utils import logging as transformers_logging

sys.path.insert(0, str(Path(__file__).parent))
from _common import markdown_table, time_call  # noqa: E402
from bench_generator import gpt2_like  # noqa: E402

from spectralar_hf import (  # noqa: E402
    SPECTRALAR_PRESETS,
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
from spectralar_hf.vae_presets import VAE_PRESETS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
HEADER = ["check", "setting", "result", "target", "status"]
CFG = 2.5  # guidance_scale of the CFG rows (VAR's cfg 1.5)
TOP_K, TOP_P = 900, 0.96
MFU_TARGET = 0.40  # training of titok-b64 and d16
IMAGES_PER_S_TARGET = 2000  # the d16 pipeline with CFG at batch 256
LATENCY_TARGET_S = 0.030  # d16 with CFG at batch 1, per image
NOTES = [
    "Script rows: tiny presets on a generated 16-image IDX dataset; each script's `main()` runs in one process "
    "launched by `accelerate launch --mixed_precision bf16 --num_processes 1`, trains N steps (checkpoint-N), then "
    "resumes from that checkpoint for N more; the saved pipelines are then loaded and generate on the device.",
    "MFU = FLOPs of one training step / step time / the `bf16 matmul peak` row. The FLOPs are counted by "
    "`torch.utils.flop_counter.FlopCounterMode` over one forward + backward under bf16 autocast (matmuls, "
    "convolutions and attention; AdamW and elementwise ops not counted); for the generator 6 x parameters x tokens is "
    "shown beside it. On the CPU (smoke) the flash-attention kernel is not counted.",
    "Training: AdamW, fp32 weights under `torch.autocast(bfloat16)` (as `accelerate --mixed_precision bf16`), random "
    "data, median step time after warm-up. Sampling, pipeline and FAR rows: bf16 weights, median of the timed "
    "repeats after a warm-up call, `torch.cuda.synchronize()` after each call; CFG rows use guidance_scale "
    f"{CFG} (GPT-2: its `guidance_scale` + `negative_prompt_ids` of the null class), top-k {TOP_K}, top-p {TOP_P}.",
    "Parity: the same float32 weights on both devices (TF32 off), random weights and inputs.",
    "Status: `ok`, `below target` (a GPU target not met on CUDA), `n/a: ...` (not measured), `FAIL: ...`.",
]


# ---------------------------------------------------------------------------------------------------- sizes


@dataclasses.dataclass(frozen=True)
class Scale:
    """Presets, batch sizes and repeat counts of a run: the paper's sizes on CUDA, or tiny ones for the smoke run."""

    tokenizer: str
    generator: str
    generator_p4: str
    far: str
    vae: str
    gemm_size: int
    tokenizer_batch: int
    generator_batch: int
    far_batch: int
    train_steps: int
    warmup: int
    repeats: int
    far_repeats: int
    sample_batches: tuple[int, ...]
    pipeline_batch: int
    far_batches: tuple[int, ...]
    far_diffusion_steps: str | int | None  # None: the preset's (FAR-B: linear 40 -> 100)
    parity_batch: int
    script_batch: int
    script_steps: int


FULL = Scale(tokenizer="titok-b64", generator="d16", generator_p4="d16-p4", far="far-b", vae="kl-16", gemm_size=8192,
             tokenizer_batch=64, generator_batch=256, far_batch=128, train_steps=10, warmup=2, repeats=3,
             far_repeats=2, sample_batches=(1, 64, 256), pipeline_batch=256, far_batches=(1, 64),
             far_diffusion_steps=None, parity_batch=4, script_batch=8, script_steps=2)
SMOKE = Scale(tokenizer="tiny-32", generator="tiny", generator_p4="tiny-p4", far="tiny", vae="tiny", gemm_size=512,
              tokenizer_batch=2, generator_batch=2, far_batch=2, train_steps=1, warmup=1, repeats=1,
              far_repeats=1, sample_batches=(1, 2), pipeline_batch=2, far_batches=(1, 2), far_diffusion_steps=2,
              parity_batch=2, script_batch=2, script_steps=2)


def generator_config(name: str) -> SpectralARConfig:
    """A SpectralARConfig preset; `NAME-p4` is preset NAME with 4 tokens per step when there is no such preset."""
    if name not in SPECTRALAR_PRESETS and name.endswith("-p4"):
        return SpectralARConfig.from_preset(name[: -len("-p4")], tokens_per_step=4)
    return SpectralARConfig.from_preset(name)


@functools.lru_cache(maxsize=None)
def _random_cpu_model(kind: str, name: str) -> SpectralARForCausalLM | SpectralTokenizer:
    torch.manual_seed(0)
    if kind == "generator":
        return SpectralARForCausalLM(generator_config(name)).eval()
    return SpectralTokenizer(SpectralTokenizerConfig.from_preset(name)).eval()


def random_model(kind: str, name: str, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> SpectralARForCausalLM | SpectralTokenizer:
    """A copy, on `device` in `dtype`, of the random "generator" or "tokenizer" of preset `name` (seed 0). The CPU
    model is built once per run and copied: initialising d16 takes seconds."""
    return copy.deepcopy(_random_cpu_model(kind, name)).to(device, dtype)


def build_vae(name: str) -> AutoencoderKL:
    """A random diffusers AutoencoderKL of a `VAE_PRESETS` entry (one down / up block type per stage by default)."""
    config = copy.deepcopy(VAE_PRESETS[name])
    stages = len(config["block_out_channels"])
    config.setdefault("down_block_types", ["DownEncoderBlock2D"] * stages)
    config.setdefault("up_block_types", ["UpDecoderBlock2D"] * stages)
    return AutoencoderKL(**config)


# ---------------------------------------------------------------------------------------------------- report


@dataclasses.dataclass
class Report:
    """The rows of a run: appended to `rows_file` (JSON lines), rendered to `output` after each row, printed."""

    output: Path
    rows_file: Path
    command: str
    smoke: bool
    device: torch.device
    last_row_at: float = dataclasses.field(default_factory=time.perf_counter)

    def add(self, check: str, setting: str, result: str, target: str = "-", status: str = "ok") -> None:
        row = [check, setting, result, target, status]
        row = [str(cell).replace("|", "\\|").replace("\n", " ") for cell in row]
        with self.rows_file.open("a", encoding="utf-8") as stream:
            stream.write(json.dumps(row) + "\n")
        self.render()
        now = time.perf_counter()
        print("| " + " | ".join(row) + f" |  ({now - self.last_row_at:.1f} s)", flush=True)
        self.last_row_at = now

    def measure(self, check: str, setting: str, target: str, function: Callable[[], tuple[str, bool | None]]) -> None:
        """Add the row of `function() -> (result, target met or None)`; an exception becomes a FAIL row."""
        try:
            result, met = function()
        except Exception as error:  # noqa: BLE001 - every failure is a row, the run goes on
            traceback.print_exc()
            self.add(check, setting, "-", target, f"FAIL: {describe(error)}")
            return
        evaluated = met is not None and not self.smoke  # the targets are GPU targets
        self.add(check, setting, result, target + (" (CUDA only)" if self.smoke and met is not None else ""),
                 "below target" if evaluated and not met else "ok")

    def render(self) -> None:
        rows = [json.loads(line) for line in self.rows_file.read_text(encoding="utf-8").splitlines() if line]
        text = "\n".join([
            "# GPU check (`benchmarks/gpu_check.sh`)", "",
            f"- device: {device_name(self.device)}",
            f"- versions: {versions()}",
            f"- command: `{self.command}`",
            f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
            "- mode: " + ("smoke (tiny presets, batch 1 / 2, one timed repeat; GPU targets not evaluated)"
                          if self.smoke else "full (paper-scale presets)"),
            "", markdown_table(HEADER, rows), "", *(f"- {note}" for note in NOTES), "",
        ])
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.output.write_text(text, encoding="utf-8")


def describe(error: BaseException) -> str:
    """`Type: message (file:line)` with the innermost traceback frame inside this repository."""
    frames = traceback.extract_tb(error.__traceback__)
    ours = [frame for frame in frames if Path(frame.filename).resolve().is_relative_to(ROOT)]
    where = ""
    if frames:
        frame = (ours or frames)[-1]
        name = Path(frame.filename).resolve().relative_to(ROOT) if ours else frame.filename
        where = f" ({name}:{frame.lineno})"
    message = " ".join(str(error).split())[:200]
    return f"{type(error).__name__}: {message}{where}"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def versions() -> str:
    names = ("torch", "transformers", "diffusers", "accelerate")
    cuda = f", CUDA {torch.version.cuda}" if torch.cuda.is_available() else ""
    return ", ".join(f"{name} {version(name)}" for name in names) + f", python {platform.python_version()}{cuda}"


# ---------------------------------------------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(function: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> float:
    """Median wall time of `function()` over `repeats` calls after `warmup` calls, synchronized on CUDA."""
    def call() -> None:
        function()
        synchronize(device)

    synchronize(device)
    return time_call(call, repeats=repeats, warmup=warmup)


def seeded(device: torch.device) -> torch.Generator:
    return torch.Generator(device).manual_seed(0)


def release(device: torch.device) -> None:
    """Return the cached memory of the models just dropped (between checks)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------- scripts stage


class LabelledReport:
    """A `Report` whose rows' check names start with `label` (the scripts stage run again under FSDP)."""

    def __init__(self, report: "Report", label: str):
        self.report, self.label, self.device = report, label, report.device

    def measure(self, check: str, *args, **kwargs) -> None:
        self.report.measure(self.label + check, *args, **kwargs)


def write_idx_dataset(root: Path, count: int = 16, size: int = 28, seed: int = 0) -> None:
    """`count` smooth random blobs (uint8 `size` x `size`) with labels 0..9 as gzipped MNIST IDX files."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size]
    centres, radii = rng.uniform(8, size - 8, (count, 2)), rng.uniform(3, 8, count)
    images = np.stack([255 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r))
                       for (cy, cx), r in zip(centres, radii)]).astype(np.uint8)
    labels = (np.arange(count) % 10).astype(np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "t10k"):
        with gzip.open(root / f"{split}-images-idx3-ubyte.gz", "wb") as stream:
            stream.write(struct.pack(">BBBBIII", 0, 0, 8, 3, *images.shape) + images.tobytes())
        with gzip.open(root / f"{split}-labels-idx1-ubyte.gz", "wb") as stream:
            stream.write(struct.pack(">BBBBI", 0, 0, 8, 1, len(labels)) + labels.tobytes())


_SCRIPTS: dict[str, object] = {}


def run_script(name: str, args: list) -> None:
    """`examples/<name>`'s `main(args)` in this process; accelerate's singletons are reset afterwards."""
    if name not in _SCRIPTS:
        spec = importlib.util.spec_from_file_location(Path(name).stem, EXAMPLES / name)
        _SCRIPTS[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_SCRIPTS[name])
    try:
        _SCRIPTS[name].main([str(arg) for arg in args])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def train_and_resume(name: str, args: list, output: Path, steps: int, saved: str) -> tuple[str, bool | None]:
    """Train `steps` steps (checkpoint at the end), resume from that checkpoint for `steps` more, and check the log,
    the checkpoints, the saved model folder `saved` and that accelerate ran in bf16."""
    common = [*args, "--output_dir", output, "--checkpointing_steps", steps, "--report_to", "none",
              "--logging_steps", 1, "--validation_steps", 1000, "--lr_warmup_steps", 1, "--use_ema"]
    run_script(name, [*common, "--max_train_steps", steps])
    run_script(name, [*common, "--max_train_steps", 2 * steps, "--resume_from_checkpoint", "latest"])
    log = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
    logged = [record["step"] for record in log]
    if logged != list(range(1, 2 * steps + 1)):
        raise AssertionError(f"train_log.jsonl has steps {logged}, not 1..{2 * steps}")
    for path in (output / f"checkpoint-{steps}", output / f"checkpoint-{2 * steps}", output / saved):
        if not path.is_dir():
            raise AssertionError(f"{path} was not written")
    info = json.loads((output / "run_info.json").read_text())
    if info["mixed_precision"] != "bf16":
        raise AssertionError(f"ran with mixed_precision {info['mixed_precision']!r}, not bf16: run this stage under "
                             f"`accelerate launch --mixed_precision bf16`")
    losses = [record["loss"] for record in log]
    if not all(np.isfinite(losses)):
        raise AssertionError(f"non-finite losses {losses}")
    return (f"steps 1-{2 * steps} (resumed at {steps}), loss {losses[0]:.4g} -> {losses[-1]:.4g}, "
            f"{info['mixed_precision']} on {info['device']}; {saved}/ saved"), None


def pretokenize(tokenizer: Path, data: Path, output: Path, batch: int) -> tuple[str, bool | None]:
    """Encode the dataset (and its mirrors), then run again: the finished shards are kept, the data is the same."""
    args = ["--tokenizer", tokenizer, "--idx_data_dir", data, "--flip", "--num_shards", 2, "--batch_size", batch,
            "--output_dir", output]
    run_script("pretokenize.py", args)
    first = datasets.load_from_disk(str(output / "data"))["codes"]
    written = (output / "shards" / "shard-00000").stat().st_mtime_ns
    run_script("pretokenize.py", args)
    again = datasets.load_from_disk(str(output / "data"))["codes"]
    if again != first or (output / "shards" / "shard-00000").stat().st_mtime_ns != written:
        raise AssertionError("a second run into the same folder encoded again or changed the codes")
    return f"{len(first)} sequences x {len(first[0])} codes; a rerun keeps the finished shards", None


@torch.no_grad()
def generate(pipeline_class: type, folder: Path, device: torch.device) -> tuple[str, bool | None]:
    """Load a saved pipeline onto `device` and generate one image of classes 0 and 1 each."""
    pipe = pipeline_class.from_pretrained(folder).to(device)
    pipe.set_progress_bar_config(disable=True)
    start = time.perf_counter()
    images = pipe([0, 1], generator=seeded(device), output_type="pt").images
    elapsed = time.perf_counter() - start
    if not (torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1):
        raise AssertionError("the images are not finite values in [0, 1]")
    return f"{images.shape[0]} images {tuple(images.shape[1:])} on {pipe.device} in {elapsed:.2f} s", None


def scripts_stage(report: Report, scale: Scale, work: Path, label: str = "") -> None:
    """Every examples/ script for a few steps in bf16 (train -> checkpoint -> resume), then the saved pipelines.
    `label` prefixes the rows' names (the FSDP run of the same stage: "FSDP2 ")."""
    if label:
        report = LabelledReport(report, label)
    data, steps, batch = work / "idx", scale.script_steps, scale.script_batch
    write_idx_dataset(data)
    runs = work / "runs"
    gray_tokenizer = ["--preset", "tiny-32", "--config_overrides", '{"num_channels": 1, "codebook_size": 64}']
    setting = f"tiny presets, batch {batch}, {steps} + {steps} steps, EMA"
    report.measure("script train_tokenizer.py", f"{setting}, GAN", "runs, resumes", lambda: train_and_resume(
        "train_tokenizer.py", ["--idx_data_dir", data, *gray_tokenizer, "--train_batch_size", batch, "--gan_weight",
                               0.1, "--discriminator_channels", 16, "--discriminator_stages", 2],
        runs / "tokenizer", steps, "tokenizer"))
    report.measure("script pretokenize.py", f"the tokenizer above, --flip, batch {batch}", "runs, resumes",
                   lambda: pretokenize(runs / "tokenizer" / "tokenizer", data, runs / "codes", batch))
    report.measure("script train_generator.py", setting, "runs, resumes", lambda: train_and_resume(
        "train_generator.py", ["--tokenized_dataset", runs / "codes", "--preset", "tiny", "--train_batch_size", batch,
                               "--guidance_scale", 1.5, "--top_k", 20], runs / "generator", steps, "pipeline"))
    report.measure("script train_vae.py", setting, "runs, resumes", lambda: train_and_resume(
        "train_vae.py", ["--idx_data_dir", data, "--preset", "tiny", "--train_batch_size", batch,
                         "--scaling_samples", 8], runs / "vae", steps, "vae"))
    report.measure("script train_far.py", setting, "runs, resumes", lambda: train_and_resume(
        "train_far.py", ["--vae", runs / "vae" / "vae", "--idx_data_dir", data, "--preset", "tiny",
                         "--train_batch_size", batch, "--num_inference_steps", 2, "--diffusion_steps", 2,
                         "--validation_classes", 0, 1, "--validation_images_per_class", 1,
                         "--validation_num_inference_steps", 2, "--validation_diffusion_steps", 2],
        runs / "far", steps, "pipeline"))
    report.measure("script train_vqgan.py", setting, "runs, resumes", lambda: train_and_resume(
        "train_vqgan.py", ["--idx_data_dir", data, "--preset", "tiny", "--config_overrides", '{"num_channels": 1}',
                           "--train_batch_size", batch, "--eval_samples", 8], runs / "vqgan", steps, "vqgan"))
    device = report.device
    report.measure("saved SpectralARPipeline generates", f"train_generator.py's pipeline/, float32, {device.type}",
                   "2 images", lambda: generate(SpectralARPipeline, runs / "generator" / "pipeline", device))
    report.measure("saved FARPipeline generates", f"train_far.py's pipeline/, float32, {device.type}", "2 images",
                   lambda: generate(FARPipeline, runs / "far" / "pipeline", device))


# ---------------------------------------------------------------------------------------------------- bench stage


def matmul_peak(device: torch.device, size: int, repeats: int = 10) -> float:
    """FLOP/s of a bf16 `size`^3 matmul on `device`."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    return 2 * size**3 / seconds(lambda: a @ b, device, repeats, warmup=3)


def train_step_cost(model: torch.nn.Module, loss: Callable[[], torch.Tensor], device: torch.device,
                    scale: Scale) -> tuple[float, float]:
    """(seconds per AdamW step under bf16 autocast, FLOPs of one forward + backward counted by FlopCounterMode)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            value = loss()
        value.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            value = loss()
        value.backward()
    optimizer.zero_grad(set_to_none=True)
    return seconds(step, device, scale.train_steps, scale.warmup), counter.get_total_flops()


def tflops(flop_per_second: float) -> str:
    """`flop_per_second` in TFLOP/s with at least 3 significant digits (a contended CPU's smoke run measures a few
    GFLOP/s, which 2 decimals would print as 0.00)."""
    magnitude = math.floor(math.log10(flop_per_second / 1e12)) if flop_per_second > 0 else 0
    return f"{flop_per_second / 1e12:,.{max(2, 2 - magnitude)}f} TFLOP/s"


def throughput(items: int, unit: str, step_s: float, flops: float, peak: float | None) -> tuple[str, float | None]:
    mfu = flops / step_s / peak if peak else None
    text = (f"{items / step_s:,.0f} {unit}/s, step {step_s * 1e3:.1f} ms, {flops / 1e9:,.1f} GFLOP/step, "
            f"{tflops(flops / step_s)}, MFU " + (f"{mfu:.1%}" if mfu is not None else "n/a"))
    return text, mfu


def train_tokenizer(scale: Scale, device: torch.device, peak: float | None) -> tuple[str, bool | None]:
    model = random_model("tokenizer", scale.tokenizer, device).train()
    config = model.config
    batch, size = scale.tokenizer_batch, config.image_size
    images = torch.rand(batch, config.num_channels, size, size, device=device) * 2 - 1
    prefix = torch.randint(1, config.num_latent_tokens + 1, (batch,), device=device)
    step_s, flops = train_step_cost(model, lambda: model(images, num_tokens=prefix).loss, device, scale)
    text, mfu = throughput(batch, "img", step_s, flops, peak)
    return text, None if mfu is None else mfu >= MFU_TARGET


def train_generator(scale: Scale, device: torch.device, peak: float | None) -> tuple[str, bool | None]:
    model = random_model("generator", scale.generator, device).train()
    config = model.config
    batch, length = scale.generator_batch, config.num_image_tokens
    codes = torch.randint(0, config.vocab_size, (batch, length), device=device)
    labels = torch.arange(batch, device=device) % config.num_classes
    step_s, flops = train_step_cost(
        model, lambda: model(input_ids=codes, class_labels=labels, labels=codes, use_cache=False).loss, device, scale)
    text, mfu = throughput(batch * length, "tokens", step_s, flops, peak)
    parameters = sum(p.numel() for p in model.parameters())
    text += f" (6 x {parameters / 1e6:.1f}M params x tokens = {6 * parameters * batch * length / 1e9:,.1f} GFLOP)"
    return text, None if mfu is None else mfu >= MFU_TARGET


def train_far(scale: Scale, device: torch.device, peak: float | None) -> tuple[str, bool | None]:
    torch.manual_seed(0)
    config = FARConfig.from_preset(scale.far)
    model = FARTransformer(config).to(device).train()
    batch = scale.far_batch
    latents = torch.randn(batch, config.latent_channels, config.latent_size, config.latent_size, device=device)
    labels = torch.arange(batch, device=device) % config.num_classes
    step_s, flops = train_step_cost(model, lambda: model(latents, class_labels=labels).loss, device, scale)
    return throughput(batch, "img", step_s, flops, peak)[0], None


def bench_training(report: Report, scale: Scale) -> None:
    """The bf16 matmul peak, then training throughput and MFU against it."""
    device = report.device
    peak: float | None = None

    def measure_peak() -> tuple[str, bool | None]:
        nonlocal peak
        peak = matmul_peak(device, scale.gemm_size)
        return tflops(peak), None

    report.measure("bf16 matmul peak", f"{scale.gemm_size}^3 GEMM, {device.type}", "-", measure_peak)
    tokenizer = SpectralTokenizerConfig.from_preset(scale.tokenizer)
    report.measure("train tokenizer", f"{scale.tokenizer}, {tokenizer.image_size} px, batch {scale.tokenizer_batch}",
                   "MFU >= 40%", lambda: train_tokenizer(scale, device, peak))
    release(device)
    report.measure("train generator", f"{scale.generator}, batch {scale.generator_batch} x "
                   f"{generator_config(scale.generator).num_image_tokens} tokens", "MFU >= 40%",
                   lambda: train_generator(scale, device, peak))
    release(device)
    far = FARConfig.from_preset(scale.far)
    report.measure("train FAR", f"{scale.far}, batch {scale.far_batch}, {far.latent_size}x{far.latent_size}x"
                   f"{far.latent_channels} latents", "-", lambda: train_far(scale, device, peak))


def time_ours(model: SpectralARForCausalLM, batch: int, guidance: float, scale: Scale, warmup: int | None = None,
              **extra) -> float:
    device = model.device
    labels = torch.arange(batch, device=device) % model.config.num_classes
    return seconds(lambda: model.sample(labels, guidance_scale=guidance, top_k=TOP_K, top_p=TOP_P,
                                        generator=seeded(device), **extra),
                   device, scale.repeats, scale.warmup if warmup is None else warmup)


@torch.no_grad()
def time_gpt2(gpt2: GPT2LMHeadModel, config: SpectralARConfig, batch: int, guidance: float, scale: Scale) -> float:
    """`GPT2LMHeadModel.generate` of the same length from a class prompt (CFG: the null-class negative prompt)."""
    device = gpt2.device
    prompt = (torch.arange(batch, device=device) % config.num_classes + config.vocab_size).unsqueeze(1)
    extra = {} if guidance == 1.0 else dict(guidance_scale=guidance, negative_prompt_ids=torch.full_like(
        prompt, config.vocab_size + config.num_classes))
    n = config.num_image_tokens
    return seconds(lambda: gpt2.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=True, top_k=TOP_K,
                                         top_p=TOP_P, **extra), device, scale.repeats, scale.warmup)


def compare_with_gpt2(model: SpectralARForCausalLM, gpt2: GPT2LMHeadModel, batch: int, guidance: float, scale: Scale,
                      eager: dict) -> tuple[str, bool | None]:
    ours = time_ours(model, batch, guidance, scale)
    eager[(model.config.tokens_per_step, batch, guidance)] = ours
    theirs = time_gpt2(gpt2, model.config, batch, guidance, scale)
    text = (f"ours {ours * 1e3:.1f} ms ({ours / batch * 1e3:.2f} ms/image), GPT-2 generate {theirs * 1e3:.1f} ms, "
            f"GPT-2 / ours {theirs / ours:.2f}x")
    return text, ours / batch <= LATENCY_TARGET_S if has_latency_target(model, batch, guidance) else None


def has_latency_target(model: SpectralARForCausalLM, batch: int, guidance: float) -> bool:
    """Whether a sampling row has the d16 target of <= 30 ms per image: batch 1 with CFG, one token per step."""
    return batch == 1 and guidance != 1.0 and model.config.tokens_per_step == 1


def sample_setting(name: str, batch: int, guidance: float) -> str:
    cfg = f"CFG {guidance:g}" if guidance != 1.0 else "no CFG"
    return f"{name}, bf16, batch {batch}, {cfg}, top-k {TOP_K}, top-p {TOP_P}"


def sampling_rows(report: Report, scale: Scale, name: str, check: str, eager: dict) -> None:
    """Ours vs GPT-2 generate for generator preset `name` at every batch size, with and without CFG."""
    model = random_model("generator", name, report.device, torch.bfloat16)
    gpt2 = gpt2_like(model).to(report.device, torch.bfloat16)
    for batch in scale.sample_batches:
        for guidance in (1.0, CFG):
            target = "<= 30 ms/image" if has_latency_target(model, batch, guidance) else "-"
            report.measure(check, sample_setting(name, batch, guidance), target,
                           lambda: compare_with_gpt2(model, gpt2, batch, guidance, scale, eager))


def bench_sampling(report: Report, scale: Scale, eager: dict) -> None:
    """Ours vs GPT-2 generate for the p1 and p4 models; our times go into `eager` (for the compiled rows)."""
    sampling_rows(report, scale, scale.generator, "sample p1 vs GPT-2", eager)
    release(report.device)
    sampling_rows(report, scale, scale.generator_p4, "sample p4 vs GPT-2", eager)


def random_pipeline(scale: Scale, device: torch.device) -> SpectralARPipeline:
    """The generator and tokenizer presets of `scale` with random weights, in bf16 on `device`."""
    tokenizer = random_model("tokenizer", scale.tokenizer, device, torch.bfloat16)
    transformer = random_model("generator", scale.generator, device, torch.bfloat16)
    if transformer.config.vocab_size != tokenizer.config.codebook_size:
        raise ValueError(f"{scale.generator} has {transformer.config.vocab_size} codes, {scale.tokenizer} "
                         f"{tokenizer.config.codebook_size}: the pipeline needs equal vocabularies")
    pipe = SpectralARPipeline(tokenizer=tokenizer, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def time_pipeline(pipe: SpectralARPipeline, batch: int, guidance: float, scale: Scale, warmup: int | None = None,
                  **extra) -> float:
    """Seconds of one `pipe(...)` call (sampling + decoding) of `batch` images, output_type "pt"."""
    labels = [label % pipe.transformer.config.num_classes for label in range(batch)]
    device = pipe.transformer.device
    return seconds(lambda: pipe(labels, guidance_scale=guidance, top_k=TOP_K, top_p=TOP_P, output_type="pt",
                                generator=seeded(device), **extra),
                   device, scale.repeats, scale.warmup if warmup is None else warmup)


def images_per_second(elapsed: float, batch: int, guidance: float) -> tuple[str, bool | None]:
    """The row of a pipeline timing; the CFG rows have the >= 2,000 images/s target."""
    return (f"{batch / elapsed:,.1f} images/s ({elapsed * 1e3:.1f} ms per batch)",
            batch / elapsed >= IMAGES_PER_S_TARGET if guidance != 1.0 else None)


def pipeline_setting(scale: Scale, guidance: float) -> str:
    cfg = f"CFG {guidance:g}" if guidance != 1.0 else "no CFG"
    return f"{scale.generator} + {scale.tokenizer}, bf16, batch {scale.pipeline_batch}, {cfg}, output_type pt"


def bench_pipeline(report: Report, scale: Scale, eager: dict) -> None:
    """Images/s of the whole pipeline (sampling + decoding) with and without CFG; the times go into `eager`."""
    device, batch = report.device, scale.pipeline_batch
    pipe = random_pipeline(scale, device)
    for guidance in (CFG, 1.0):
        def measure() -> tuple[str, bool | None]:
            eager[("pipeline", batch, guidance)] = time_pipeline(pipe, batch, guidance, scale)
            return images_per_second(eager[("pipeline", batch, guidance)], batch, guidance)

        report.measure("pipeline images/s", pipeline_setting(scale, guidance),
                       ">= 2,000 images/s" if guidance != 1.0 else "-", measure)


def compiled_unavailable(report: Report, function: Callable) -> str | None:
    """Why compiled sampling is not measured (None: it is)."""
    if "compile_config" not in inspect.signature(function).parameters:
        return "n/a: no compile_config"
    if report.device.type != "cuda":
        return "n/a: compiled sampling is measured on CUDA only"
    return None


def versus(compiled: float, base: float | None) -> str:
    return f", eager {base * 1e3:.1f} ms: {base / compiled:.2f}x" if base else ""


def compiled_sampling(report: Report, scale: Scale, eager: dict) -> None:
    """`sample(compile_config=True)` with CFG at the smallest and the largest batch, against the eager rows."""
    model = random_model("generator", scale.generator, report.device, torch.bfloat16)
    skip = compiled_unavailable(report, model.sample)
    batches = sorted({scale.sample_batches[0], scale.sample_batches[-1]})
    for batch in batches if skip is None else []:
        def measure() -> tuple[str, bool | None]:
            compiled = time_ours(model, batch, CFG, scale, warmup=3, compile_config=True)
            met = compiled / batch <= LATENCY_TARGET_S if has_latency_target(model, batch, CFG) else None
            return (f"{compiled * 1e3:.1f} ms ({compiled / batch * 1e3:.2f} ms/image)"
                    f"{versus(compiled, eager.get((1, batch, CFG)))}", met)

        report.measure("sample p1 compiled", sample_setting(scale.generator, batch, CFG) + ", compile_config=True",
                       "<= 30 ms/image" if has_latency_target(model, batch, CFG) else "-", measure)
    if skip is not None:
        report.add("sample p1 compiled", scale.generator, "-", "-", skip)


def compiled_pipeline(report: Report, scale: Scale, eager: dict) -> None:
    """`pipe(..., compile_config=True)` with CFG at the pipeline batch, against the eager row."""
    pipe = random_pipeline(scale, report.device)
    skip = compiled_unavailable(report, pipe.__call__)
    if skip is not None:
        report.add("pipeline images/s compiled", pipeline_setting(scale, CFG), "-", "-", skip)
        return

    def measure_pipeline() -> tuple[str, bool | None]:
        batch = scale.pipeline_batch
        compiled = time_pipeline(pipe, batch, CFG, scale, warmup=3, compile_config=True)
        text, met = images_per_second(compiled, batch, CFG)
        return text + versus(compiled, eager.get(("pipeline", batch, CFG))), met

    report.measure("pipeline images/s compiled", pipeline_setting(scale, CFG) + ", compile_config=True",
                   ">= 2,000 images/s", measure_pipeline)


def bench_compiled(report: Report, scale: Scale, eager: dict) -> None:
    """`compile_config=True` (torch.compile of the per-step forward; CUDA graphs on CUDA): three warm-up calls
    (compilation, CUDA-graph warm-up and recording) before the timed ones."""
    compiled_sampling(report, scale, eager)
    release(report.device)
    compiled_pipeline(report, scale, eager)


def far_pipeline(scale: Scale, device: torch.device) -> FARPipeline:
    torch.manual_seed(0)
    transformer = FARTransformer(FARConfig.from_preset(scale.far)).eval()
    pipe = FARPipeline(vae=build_vae(scale.vae).eval(), transformer=transformer,
                       scheduler=build_noise_scheduler(transformer.config))
    pipe.to(device, torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def bench_far(report: Report, scale: Scale) -> None:
    """FAR sampling with the preset's defaults (FAR-B: CFG 3.0, inner steps 40 -> 100), VAE decode included."""
    device = report.device
    pipe = far_pipeline(scale, device)
    config = pipe.transformer.config
    outer = min(10, config.num_levels)
    inner = scale.far_diffusion_steps if scale.far_diffusion_steps is not None else config.diffusion_steps
    for batch in scale.far_batches:
        def measure() -> tuple[str, bool | None]:
            labels = [label % config.num_classes for label in range(batch)]
            elapsed = seconds(lambda: pipe(labels, num_inference_steps=outer, diffusion_steps=inner,
                                           output_type="pt", generator=seeded(device)),
                              device, scale.far_repeats, warmup=1)
            return f"{elapsed:.2f} s per batch, {batch / elapsed:,.2f} images/s", None

        inner_text = "40 -> 100 (linear)" if inner == "linear" else inner
        setting = (f"{scale.far} + {scale.vae} VAE, bf16, batch {batch}, {outer} outer steps, inner steps "
                   f"{inner_text}, CFG {config.guidance_scale:g}")
        report.measure("FAR sample", setting, "-", measure)


def parity_pair(report: Report) -> str:
    return "cuda vs cpu" if report.device.type == "cuda" else "cpu vs cpu (smoke)"


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """Full float32 matmuls and convolutions on CUDA (TF32 off) inside the block."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@torch.no_grad()
@no_tf32()
def bench_parity(report: Report, scale: Scale) -> None:
    """The same float32 weights on the CPU and on the device: encode codes, decode images, greedy codes."""
    device = report.device
    pair, batch = parity_pair(report), scale.parity_batch
    tokenizer = random_model("tokenizer", scale.tokenizer)
    config = tokenizer.config
    images = torch.rand(batch, config.num_channels, config.image_size, config.image_size,
                        generator=torch.Generator().manual_seed(0)) * 2 - 1
    state: dict[str, torch.Tensor] = {}

    def encode() -> tuple[str, bool | None]:
        state["codes"] = tokenizer.encode(images).codes
        moved = copy.deepcopy(tokenizer).to(device).encode(images.to(device)).codes.cpu()
        equal = (moved == state["codes"]).float().mean().item()
        return f"codes equal {equal:.2%} ({state['codes'].numel()} codes)", equal >= 0.99

    def decode() -> tuple[str, bool | None]:
        codes = state["codes"] if "codes" in state else torch.randint(0, config.codebook_size,
                                                                      (batch, config.num_latent_tokens))
        here = tokenizer.decode(codes).reconstruction
        there = copy.deepcopy(tokenizer).to(device).decode(codes.to(device)).reconstruction.cpu()
        difference = (here - there).abs().max().item()
        return f"max abs difference {difference:.2e} (images in [-1, 1])", difference <= 1e-3

    def greedy() -> tuple[str, bool | None]:
        model = random_model("generator", scale.generator)
        labels = torch.arange(batch) % model.config.num_classes
        here = model.sample(labels, top_k=1)
        moved = copy.deepcopy(model).to(device)
        there = moved.sample(labels.to(device), top_k=1).cpu()
        equal = (here == there).float().mean().item()
        same = int((here == there).all(dim=1).sum())
        return f"codes equal {equal:.2%}, {same}/{batch} sequences identical", equal >= 0.99

    report.measure("parity encode", f"{pair}, {scale.tokenizer} float32, batch {batch}", ">= 99% equal", encode)
    report.measure("parity decode", f"{pair}, {scale.tokenizer} float32, batch {batch}", "<= 1e-3", decode)
    report.measure("parity greedy sample", f"{pair}, {scale.generator} float32, top_k=1, batch {batch}",
                   ">= 99% equal", greedy)


def bench_stage(report: Report, scale: Scale) -> None:
    """The measurements, most important first (a run cut short keeps the earlier rows)."""
    transformers_logging.set_verbosity_error()
    eager: dict = {}  # eager timings, compared in the compiled rows
    sections = [lambda: bench_training(report, scale), lambda: bench_pipeline(report, scale, eager),
                lambda: bench_parity(report, scale), lambda: bench_sampling(report, scale, eager),
                lambda: bench_far(report, scale), lambda: bench_compiled(report, scale, eager)]
    for section in sections:
        section()
        release(report.device)


# ---------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["scripts", "bench", "fail"])
    parser.add_argument("--output", type=Path, required=True, help="the markdown table")
    parser.add_argument("--rows", type=Path, required=True, help="the rows so far (JSON lines), shared by the stages")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder of the scripts stage")
    parser.add_argument("--label", default="", help="scripts: a prefix of the rows' names (e.g. 'FSDP2 ')")
    parser.add_argument("--command", default="", help="the command line to record in the table")
    parser.add_argument("--smoke", action="store_true", help="tiny presets on any device (the CI test)")
    parser.add_argument("--failed", default="", help="fail: the name of the stage that failed")
    parser.add_argument("--reason", default="crashed", help="fail: why it failed")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        print("gpu_check: no CUDA device; run with --smoke for the CPU smoke run", file=sys.stderr)
        return 2
    report = Report(args.output, args.rows, args.command, args.smoke, device)
    scale = SMOKE if args.smoke else FULL
    if args.stage == "fail":
        report.add(f"stage {args.failed}", "-", "-", "-", f"FAIL: {args.reason}")
    elif args.stage == "scripts":
        scripts_stage(report, scale, args.work, args.label)
    else:
        bench_stage(report, scale)
    return 0


if __name__ == "__main__":
    sys.exit(main())
