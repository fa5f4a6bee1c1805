"""SpectralAR Table 4: the tokenizer ablation, one resumable command.

The rows share data, sizes and budgets and differ only in the tokenizer; the four of the paper's Table 4, in its
order, run by default:

    1. TiTok-style 1D tokenizer: no spectral supervision, no causal mask
    2. + nested spectral supervision (uniform omega schedule)
    3. + the spectral causal mask in encoder and decoder
    4. + the non-uniform omega schedule of Eq. 9 (= SpectralAR)

and, with `--rows`, rows of ours that the paper leaves open:

    x-nonuniform-no-mask  supervision and the non-uniform schedule without the causal mask (the other order of adding
                          the last two)
    y-full-length         row 4 plus a second loss term at every step, the full N-token reconstruction against the full
                          image (`full_length_loss_weight` 1): under Algorithm 1 alone token j is trained on only
                          (N - j + 1) / N of the samples
    z-matched             the row-4 tokenizer trained longer (constant learning rate after warm-up, in segments of
                          --matched_segment_steps, up to --matched_max_steps) until its rFID is at most row 1's mean
                          rFID (or --matched_target_rfid); run after the other rows, it reports the steps that took

Every row is trained once per `--seeds` value (the training scripts' `--seed`: initialisation, data order, prefix
draws); the evaluation (test images, sampling seeds) is the same for all, so seeds measure training noise. For each
row and seed: the tokenizer is trained (`examples/train_tokenizer.py`; with `--proxy_teacher` TiTok's two stages:
proxy codes, then the decoder with the pixel decoder's GAN), the training images are tokenized
(`examples/pretokenize.py`), a generator is trained on its codes (`examples/train_generator.py`), and
`spectralar-hf evaluate` measures the tokenizer's PSNR per prefix (`evaluate tokenizer`) and the pipeline's gFID /
precision / recall, its tokenizer's rFID and the generation gap (`evaluate pipeline --generation-gap`: FID of the
samples against the tokenizer's own reconstructions of the test images) against the test split, and the generator's
held-out per-token NLL on the test images' codes is divided by those codes' unigram cross-entropy under the training
codes (so a row cannot win by using fewer codes). The table gives mean +- std over seeds for every column and a
verdict per step of the paper's table (difference of means against 2 x the pooled std). Every row's and seed's
metrics are also written beside the table (`--output` with the suffix .json).

Every stage is skipped when its output exists, and an interrupted training stage resumes from its latest checkpoint,
so rerunning the same command continues where it stopped. A row's training settings are recorded in
`WORK_DIR/ROW/settings.json` (a seed's runs in `WORK_DIR/ROW/seed-S`) and a rerun with other ones is refused;
evaluation reports are named by their sizes, so other --num_eval_images / --samples_per_class evaluate the trained
models again. The table goes to `--output` (markdown) and stdout.

Demo scale (Fashion-MNIST on a 2-core CPU; 24 tokens at 32 px, where the uniform and the non-uniform schedules
differ; --quick trains each tokenizer and generator for 1,000 steps at the demo's learning rates, about 25 minutes
per row and seed on one core; the shipped demo's tokenizer had 4,500 steps):

    python benchmarks/table4_ablation.py --idx_data_dir /usr/share/datasets/fashion-mnist --quick --seeds 0 1 2 \\
        --rows 1-titok 2-nested-uniform 3-causal-uniform 4-spectralar y-full-length z-matched \\
        --work_dir runs/table4-seeds --output benchmarks/results/table4_quick_seeds.md

ImageNet scale (the paper: titok-b64-like tokenizers, 64 tokens at 256 px, a d16 generator; 8 GPUs):

    python benchmarks/table4_ablation.py --dataset_name ILSVRC/imagenet-1k --tokenizer_preset titok-b64 \\
        --generator_preset d16 --tokenizer_steps 1000000 --generator_steps 250000 --tokenizer_batch_size 32 \\
        --generator_batch_size 128 --num_eval_images 50000 --samples_per_class 50 \\
        --proxy_teacher runs/maskgit-vqgan --launcher "accelerate launch --multi_gpu --num_processes 8 \\
        --mixed_precision bf16" --work_dir runs/table4-imagenet --output benchmarks/results/table4_imagenet.md
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import markdown_table  # noqa: E402

from spectralar_hf.training.checkpointing import latest_checkpoint, write_json_atomic  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


@dataclass(frozen=True)
class Row:
    """One Table 4 row: the tokenizer settings that differ between rows."""

    name: str
    label: str
    spectral_supervision: bool
    omega: str
    causal: bool
    full_length_loss_weight: float = 0.0


ROWS = (
    Row("1-titok", "1D tokenizer (TiTok-style)", spectral_supervision=False, omega="uniform", causal=False),
    Row("2-nested-uniform", "+ nested spectral supervision (uniform omega)", True, "uniform", False),
    Row("3-causal-uniform", "+ spectral causal mask", True, "uniform", True),
    Row("4-spectralar", "+ non-uniform omega, Eq. 9 (SpectralAR)", True, "spectralar", True),
    Row("x-nonuniform-no-mask", "supervision + non-uniform omega, no causal mask (ours)", True, "spectralar", False),
    Row("y-full-length", "SpectralAR + full-length loss term (ours)", True, "spectralar", True,
        full_length_loss_weight=1.0),
    Row("z-matched", "SpectralAR tokenizer trained to row 1's rFID (ours)", True, "spectralar", True),
)
MATCHED = "z-matched"  # the row-4 tokenizer trained in segments until its rFID reaches row 1's
DEFAULT_ROWS = [row.name for row in ROWS[:4]]
# The paper's Table 4 (ImageNet 256, d16-size generator): FID of the four default rows.
PAPER_FID = {"1-titok": 6.30, "2-nested-uniform": 5.64, "3-causal-uniform": 3.49, "4-spectralar": 3.02}
# The steps of the paper's table: (from row, to row, what the step adds).
STEPS = (("1-titok", "2-nested-uniform", "nested spectral supervision"),
         ("2-nested-uniform", "3-causal-uniform", "spectral causal mask"),
         ("3-causal-uniform", "4-spectralar", "non-uniform omega (Eq. 9)"),
         ("1-titok", "4-spectralar", "all three steps (SpectralAR vs TiTok-style)"),
         ("4-spectralar", "y-full-length", "the full-length term (ours)"),
         ("1-titok", "y-full-length", "SpectralAR + full-length term (ours) vs TiTok-style"),
         ("1-titok", "z-matched", "SpectralAR at TiTok-style's rFID (ours) vs TiTok-style"))
# --quick: the demo's sizes with budgets that fit one sitting on a 2-core CPU.
QUICK = dict(tokenizer_preset="fmnist-32", generator_preset="small", num_latent_tokens=24, max_train_samples=20000,
             tokenizer_steps=1000, tokenizer_batch_size=32, tokenizer_learning_rate=1e-3, generator_steps=1000,
             generator_batch_size=64, generator_learning_rate=1e-3, num_eval_images=1000, samples_per_class=100)
OPTIONAL = ("num_latent_tokens", "max_train_samples", "tokenizer_learning_rate", "generator_learning_rate")
# What a row's trained models depend on; a work_dir row trained otherwise is refused (evaluations are kept per size).
TRAINING_SETTINGS = ("idx_data_dir", "dataset_name", "max_train_samples", "tokenizer_preset", "num_latent_tokens",
                     "tokenizer_steps", "tokenizer_batch_size", "tokenizer_learning_rate", "generator_preset",
                     "generator_steps", "generator_batch_size", "generator_learning_rate", "proxy_teacher")
WARMUP_FRACTION = 0.05  # linear warm-up over this share of each training run
DEFAULT_MATCHED_MAX_STEPS_FACTOR = 8  # z-matched trains at most this many --tokenizer_steps by default
# Table columns: (key, header, format, better when higher); prefix PSNRs are added per run (k = N/4, N/2).
METRICS = (("rfid", "rFID", ".1f", False), ("psnr", "PSNR", ".2f", True), ("gfid", "gFID", ".1f", False),
           ("generation_gap_fid", "gen. gap FID", ".1f", False), ("precision", "precision", ".3f", True),
           ("recall", "recall", ".3f", True), ("nll", "NLL nats/token", ".3f", False),
           ("nll_ratio", "NLL / unigram CE", ".3f", False))
GENERATOR_SIDE = ("gfid", "generation_gap_fid", "precision", "recall", "nll_ratio")  # what the paper's claim is about
PREFIX_FRACTIONS = (1 / 8, 1 / 4, 1 / 2, 3 / 4, 1)  # prefixes of the per-prefix PSNR table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--idx_data_dir", default=None, help="MNIST-format IDX folder (e.g. Fashion-MNIST)")
    data.add_argument("--dataset_name", default=None, help="a datasets id (ImageNet scale)")
    data.add_argument("--max_train_samples", type=int, default=None, help="train on the first N images")
    sizes = parser.add_argument_group("sizes and budgets (--quick sets the demo's)")
    sizes.add_argument("--quick", action="store_true", help=f"defaults for one sitting on a CPU: {QUICK}")
    sizes.add_argument("--tokenizer_preset", default=None)
    sizes.add_argument("--num_latent_tokens", type=int, default=None, help="default: the preset's")
    sizes.add_argument("--tokenizer_steps", type=int, default=None)
    sizes.add_argument("--tokenizer_batch_size", type=int, default=None)
    sizes.add_argument("--tokenizer_learning_rate", type=float, default=None, help="default: the script's")
    sizes.add_argument("--generator_preset", default=None)
    sizes.add_argument("--generator_steps", type=int, default=None)
    sizes.add_argument("--generator_batch_size", type=int, default=None)
    sizes.add_argument("--generator_learning_rate", type=float, default=None, help="default: the script's")
    sizes.add_argument("--num_eval_images", type=int, default=None, help="test images for rFID / gFID references")
    sizes.add_argument("--samples_per_class", type=int, default=None, help="generated images per class for gFID")
    sizes.add_argument("--matched_max_steps", type=int, default=None,
                       help=f"z-matched: the most tokenizer steps (default {DEFAULT_MATCHED_MAX_STEPS_FACTOR} x "
                            f"--tokenizer_steps)")
    sizes.add_argument("--matched_segment_steps", type=int, default=None,
                       help="z-matched: tokenizer steps per segment, each segment's tokenizer scored (default "
                            "--tokenizer_steps; smaller segments stop nearer the target rFID)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds of every row")
    parser.add_argument("--matched_target_rfid", type=float, default=None,
                        help="z-matched: the rFID to train to (default: row 1's mean rFID over --seeds, which needs "
                             "1-titok in --rows); give the recorded one to run z-matched without rerunning row 1")
    parser.add_argument("--matched_seeds", type=int, nargs="+", default=None,
                        help="z-matched's seeds (default: the first of --seeds; each seed is a long run)")
    parser.add_argument("--proxy_teacher", default=None,
                        help="a MaskGIT-VQGAN folder: train every tokenizer with TiTok's two stages")
    parser.add_argument("--inception", default=None, help="FID network (default: the evaluate command's)")
    parser.add_argument("--rows", nargs="+", default=DEFAULT_ROWS, choices=[row.name for row in ROWS])
    parser.add_argument("--launcher", default=f"{shlex.quote(sys.executable)}",
                        help="how training scripts are started, e.g. 'accelerate launch --multi_gpu ...'")
    parser.add_argument("--work_dir", required=True, help="runs of every row (resumable)")
    parser.add_argument("--output", required=True, help="the markdown table")
    args = parser.parse_args(argv)
    for name, value in QUICK.items():
        if getattr(args, name) is None and args.quick:
            setattr(args, name, value)
    missing = [name for name in QUICK if name not in OPTIONAL and getattr(args, name) is None]
    if missing:
        parser.error(f"give --quick or all of: {', '.join('--' + name for name in missing)}")
    if (args.idx_data_dir is None) == (args.dataset_name is None):
        parser.error("give exactly one of --idx_data_dir and --dataset_name")
    if len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0:
        parser.error(f"--seeds must be distinct non-negative integers, got {args.seeds}")
    if MATCHED in args.rows and "1-titok" not in args.rows and args.matched_target_rfid is None:
        parser.error("z-matched trains until row 1's rFID: add 1-titok to --rows, or give --matched_target_rfid")
    if args.matched_target_rfid is not None and args.matched_target_rfid <= 0:
        parser.error(f"--matched_target_rfid must be a positive FID, got {args.matched_target_rfid}")
    if args.matched_max_steps is None:
        args.matched_max_steps = DEFAULT_MATCHED_MAX_STEPS_FACTOR * args.tokenizer_steps
    if args.matched_segment_steps is None:
        args.matched_segment_steps = args.tokenizer_steps
    if args.matched_segment_steps < 1:
        parser.error(f"--matched_segment_steps must be a positive number of steps, got {args.matched_segment_steps}")
    if args.matched_max_steps < args.matched_segment_steps:
        parser.error(f"--matched_max_steps ({args.matched_max_steps}) is below one segment of "
                     f"--matched_segment_steps ({args.matched_segment_steps})")
    if args.matched_seeds is None:
        args.matched_seeds = args.seeds[:1]
    return args


def data_arguments(args: argparse.Namespace, flag_prefix: str = "--", underscore: bool = True) -> list[str]:
    """The data flags of the training scripts (`--idx_data_dir`) or of the evaluate command (`--idx-data-dir`)."""
    name, value = ("idx_data_dir", args.idx_data_dir) if args.idx_data_dir else ("dataset_name", args.dataset_name)
    if not underscore:
        name = {"idx_data_dir": "idx-data-dir", "dataset_name": "dataset"}[name]
    return [flag_prefix + name, value]


def run_stage(name: str, command: list[str], done: Path, work: Path) -> float:
    """Run `command` unless `done` exists (output in `work/logs/NAME.log`); returns its wall time in seconds, which
    is kept in `work/seconds.json`, so a rerun that skips the stage reports the time it took."""
    times_file = work / "seconds.json"
    times = json.loads(times_file.read_text()) if times_file.exists() else {}
    if done.exists():
        print(f"  {name}: done ({done})", flush=True)
        return times.get(name, float("nan"))
    print(f"  {name}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    log = work / "logs" / f"{name.replace(' ', '-')}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as stream:
        result = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT, cwd=ROOT)
    if result.returncode != 0 or not done.exists():
        raise RuntimeError(f"{name} failed (exit {result.returncode}); see {log}")
    times[name] = time.perf_counter() - start
    write_json_atomic(times_file, times)
    return times[name]


def training_command(args: argparse.Namespace, script: str, output: Path, steps: int, learning_rate: float | None,
                     *flags: str, checkpointing_steps: int | None = None, warmup_steps: int | None = None,
                     ) -> list[str]:
    """A training script under `--launcher` for `steps` steps with a checkpoint halfway (or every
    `checkpointing_steps`), resumed from its latest checkpoint when an earlier run stopped (started afresh when it
    stopped before its first checkpoint)."""
    warmup_steps = int(WARMUP_FRACTION * steps) if warmup_steps is None else warmup_steps
    checkpointing_steps = max(steps // 2, 1) if checkpointing_steps is None else checkpointing_steps
    command = [*shlex.split(args.launcher), str(EXAMPLES / script), *flags, "--max_train_steps", str(steps),
               "--lr_warmup_steps", str(warmup_steps), "--checkpointing_steps", str(checkpointing_steps),
               "--checkpoints_total_limit", "1", "--output_dir", str(output), "--report_to", "none"]
    if learning_rate is not None:
        command += ["--learning_rate", str(learning_rate)]
    if latest_checkpoint(output) is not None:
        command += ["--resume_from_checkpoint", "latest"]
    elif output.exists():
        command += ["--overwrite_output_dir"]
    return command


def tokenizer_overrides(args: argparse.Namespace, row: Row) -> str:
    overrides = dict(spectral_supervision=row.spectral_supervision, omega=row.omega, causal=row.causal)
    if row.full_length_loss_weight:
        overrides["full_length_loss_weight"] = row.full_length_loss_weight
    if args.num_latent_tokens is not None:
        overrides["num_latent_tokens"] = args.num_latent_tokens
    return json.dumps(overrides)


def check_row_settings(args: argparse.Namespace, work: Path, row: Row) -> None:
    """Record the training settings of a row's work folder on its first run; a later run with other settings is a
    `ValueError` (its finished stages would otherwise be reused silently)."""
    settings = {name: getattr(args, name) for name in TRAINING_SETTINGS}
    settings["idx_data_dir"] = settings["idx_data_dir"] and str(Path(settings["idx_data_dir"]).resolve())
    if row.name == MATCHED:
        settings["matched_max_steps"] = args.matched_max_steps
        if args.matched_segment_steps != args.tokenizer_steps:  # absent: segments of --tokenizer_steps
            settings["matched_segment_steps"] = args.matched_segment_steps
    recorded_file = work / "settings.json"
    if recorded_file.exists():
        recorded = json.loads(recorded_file.read_text())
        changed = {name: (recorded.get(name), settings.get(name)) for name in {**recorded, **settings}
                   if recorded.get(name) != settings.get(name)}
        if changed:
            named = ", ".join(f"{name} {old!r} -> {new!r}" for name, (old, new) in changed.items())
            raise ValueError(f"{work} was trained with other settings ({named}); use another --work_dir, or delete "
                             f"{work} to retrain the row.")
    else:
        work.mkdir(parents=True, exist_ok=True)
        write_json_atomic(recorded_file, settings)


def report_files(args: argparse.Namespace, work: Path) -> tuple[Path, Path, Path]:
    """The tokenizer, pipeline and likelihood reports of a row's seed for this run's evaluation sizes."""
    return (work / f"tokenizer-{args.num_eval_images}images.json",
            work / f"pipeline-{args.num_eval_images}images-{args.samples_per_class}perclass.json",
            work / f"likelihood-{args.num_eval_images}images.json")


def evaluate_command(args: argparse.Namespace, target: str, folder: Path, report: Path, *flags: str) -> list[str]:
    """`spectralar-hf evaluate TARGET` on the same --num_eval_images test images (seed 0) for every row."""
    fid = target == "pipeline" or "--fid" in flags
    return [sys.executable, "-m", "spectralar_hf.cli", "evaluate", target, str(folder),
            *data_arguments(args, underscore=False), "--split", "test", "--num-images", str(args.num_eval_images),
            *(["--inception", args.inception] if args.inception and fid else []), *flags, "--report", str(report)]


def write_likelihood_report(args: argparse.Namespace, pipeline: Path, codes: Path, report: Path) -> None:
    """The generator's held-out NLL on the test images' codes and those codes' unigram cross-entropy under the
    training codes (`codes/data`), written to `report`."""
    import datasets
    import torch

    from spectralar_hf import SpectralARPipeline
    from spectralar_hf.evaluation.likelihood import (DEFAULT_BATCH_SIZE, code_negative_log_likelihood,
                                                     unigram_cross_entropy)
    from spectralar_hf.evaluation.report import load_evaluation_images

    pipe = SpectralARPipeline.from_pretrained(pipeline)
    config = pipe.tokenizer.config
    source = {"idx_data_dir": args.idx_data_dir} if args.idx_data_dir else {"dataset_name": args.dataset_name}
    images, labels = load_evaluation_images(config.image_size, config.num_channels, split="test",
                                            num_images=args.num_eval_images, seed=0, **source)
    if labels is None:
        raise ValueError("the test split has no labels: the class-conditional NLL needs them")
    with torch.no_grad():
        test_codes = torch.cat([pipe.tokenizer.encode(images[i : i + DEFAULT_BATCH_SIZE]).codes
                                for i in range(0, len(images), DEFAULT_BATCH_SIZE)])
    train_codes = torch.tensor(datasets.load_from_disk(str(codes / "data"))["codes"])
    likelihood = code_negative_log_likelihood(pipe.transformer, test_codes, labels)
    unigram = unigram_cross_entropy(train_codes, test_codes, config.codebook_size)
    write_json_atomic(report, {**likelihood, "unigram_cross_entropy": unigram, "nll_ratio": likelihood["nll"] / unigram,
                               "codes_used": int(test_codes.unique().numel()), "codebook_size": config.codebook_size})


def train_matched_tokenizer(args: argparse.Namespace, work: Path, seed: int, target_rfid: float,
                            common: list[str], row: Row, seconds: dict) -> tuple[Path, int, float]:
    """z-matched: the row-4 tokenizer trained in segments of --matched_segment_steps at a constant learning rate (after
    the other rows' warm-up of --tokenizer_steps), each segment's tokenizer kept and scored, until its rFID is at most
    `target_rfid` or --matched_max_steps. Returns the chosen segment's tokenizer folder, its steps and its rFID."""
    segment = args.matched_segment_steps
    output = work / "tokenizer"
    steps, rfid, folder = 0, math.inf, None
    seconds.setdefault("tokenizer", 0.0)
    while steps < args.matched_max_steps and rfid > target_rfid:
        steps = min(steps + segment, args.matched_max_steps)
        folder = work / "segments" / f"tokenizer-{steps}"
        if not folder.exists():
            seconds["tokenizer"] += run_stage(
                f"tokenizer to {steps}", training_command(
                    args, "train_tokenizer.py", output, steps, args.tokenizer_learning_rate, *common,
                    "--preset", args.tokenizer_preset, "--config_overrides", tokenizer_overrides(args, row),
                    "--seed", str(seed), "--lr_scheduler", "constant_with_warmup",
                    checkpointing_steps=segment, warmup_steps=int(WARMUP_FRACTION * args.tokenizer_steps)),
                output / f"checkpoint-{steps}", work)
            partial = folder.with_name(folder.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            shutil.copytree(output / "tokenizer", partial)
            partial.rename(folder)
        report = work / "segments" / f"rfid-{steps}-{args.num_eval_images}images.json"
        num_tokens = json.loads((folder / "config.json").read_text())["num_latent_tokens"]
        seconds[f"rFID at {steps}"] = run_stage(  # the full prefix only: the other rows' PSNR curve comes later
            f"rFID at {steps}", evaluate_command(args, "tokenizer", folder, report, "--fid", "--prefixes",
                                                 str(num_tokens)), report, work)
        rfid = json.loads(report.read_text())["rfid"]
        print(f"  {steps} steps: rFID {rfid:.2f} (target {target_rfid:.2f})", flush=True)
    return folder, steps, rfid


def run_row(args: argparse.Namespace, row: Row, seed: int, target_rfid: float | None = None) -> dict:
    """All stages of one row and seed; returns its metrics and wall times. Evaluation reports are named by their
    sizes, so another --num_eval_images / --samples_per_class evaluates the same models again instead of reusing a
    report."""
    check_row_settings(args, Path(args.work_dir) / row.name, row)
    work = Path(args.work_dir) / row.name / f"seed-{seed}"
    samples = ["--max_train_samples", str(args.max_train_samples)] if args.max_train_samples else []
    common = [*data_arguments(args), *samples, "--train_batch_size", str(args.tokenizer_batch_size)]
    seconds, extra = {}, {}
    if row.name == MATCHED:
        tokenizer, steps, rfid = train_matched_tokenizer(args, work, seed, target_rfid, common, row, seconds)
        extra = dict(matched_steps=steps, matched=rfid <= target_rfid, target_rfid=target_rfid,
                     matched_segment_steps=args.matched_segment_steps)
    else:
        tokenizer = work / "tokenizer" / "tokenizer"
        stage1 = work / "tokenizer-stage1" / "tokenizer"
        first_stage = ["--proxy_teacher", args.proxy_teacher] if args.proxy_teacher else []
        seconds["tokenizer"] = run_stage(
            "tokenizer", training_command(
                args, "train_tokenizer.py", (stage1 if args.proxy_teacher else tokenizer).parent,
                args.tokenizer_steps, args.tokenizer_learning_rate, *common, "--preset", args.tokenizer_preset,
                "--config_overrides", tokenizer_overrides(args, row), "--seed", str(seed), *first_stage),
            stage1 if args.proxy_teacher else tokenizer, work)
        if args.proxy_teacher:  # TiTok's stage 2: the decoder (and its pixel decoder) on frozen codes
            seconds["tokenizer"] += run_stage(
                "tokenizer stage 2", training_command(
                    args, "train_tokenizer.py", tokenizer.parent, args.tokenizer_steps,
                    args.tokenizer_learning_rate, *common, "--pretrained_model_name_or_path", str(stage1),
                    "--train_decoder_only", "--seed", str(seed)),
                tokenizer, work)
    codes = work / "codes"
    seconds["pretokenize"] = run_stage(
        "pretokenize", [sys.executable, str(EXAMPLES / "pretokenize.py"), "--tokenizer", str(tokenizer),
                        *data_arguments(args), *(["--max_samples", str(args.max_train_samples)] if samples else []),
                        "--output_dir", str(codes)],
        codes / "pretokenize.json", work)
    pipeline = work / "generator" / "pipeline"
    seconds["generator"] = run_stage(
        "generator", training_command(
            args, "train_generator.py", pipeline.parent, args.generator_steps, args.generator_learning_rate,
            "--tokenized_dataset", str(codes), "--preset", args.generator_preset,
            "--train_batch_size", str(args.generator_batch_size), "--seed", str(seed)),
        pipeline / "model_index.json", work)
    tokenizer_report_file, pipeline_report_file, likelihood_file = report_files(args, work)
    stage = f"PSNR {args.num_eval_images}"
    seconds[stage] = run_stage(stage, evaluate_command(args, "tokenizer", tokenizer, tokenizer_report_file),
                               tokenizer_report_file, work)
    stage = f"gFID {args.num_eval_images}x{args.samples_per_class}"
    seconds[stage] = run_stage(stage, evaluate_command(
        args, "pipeline", pipeline, pipeline_report_file, "--samples-per-class", str(args.samples_per_class),
        "--generation-gap"), pipeline_report_file, work)
    if not likelihood_file.exists():
        print(f"  NLL {args.num_eval_images}: {likelihood_file}", flush=True)
        write_likelihood_report(args, pipeline, codes, likelihood_file)
    tokenizer_report = json.loads(tokenizer_report_file.read_text())
    pipeline_report = json.loads(pipeline_report_file.read_text())
    likelihood = json.loads(likelihood_file.read_text())
    return dict(rfid=pipeline_report["reconstruction_fid"], psnr=tokenizer_report["psnr"],
                prefix_psnr={row["num_tokens"]: row["psnr_full"] for row in tokenizer_report["prefixes"]},
                gfid=pipeline_report["gfid"], generation_gap_fid=pipeline_report["generation_gap_fid"],
                precision=pipeline_report["precision"], recall=pipeline_report["recall"], nll=likelihood["nll"],
                nll_ratio=likelihood["nll_ratio"], seconds=seconds, **extra)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; NaN for one value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def cell(values: list[float], form: str) -> str:
    mean, std = mean_std(values)
    return f"{mean:{form}}" if math.isnan(std) else f"{mean:{form}} ± {std:{form}}"


def prefix_columns(results: dict[str, list[dict]]) -> list[int]:
    """The prefixes of the per-prefix PSNR table: k = N/8, N/4, N/2, 3N/4, N of the rows' token count."""
    first = next(iter(results.values()))[0]["prefix_psnr"]
    n = max(int(k) for k in first)
    return sorted({max(1, round(n * fraction)) for fraction in PREFIX_FRACTIONS})


def verdict(before: list[float], after: list[float], higher_is_better: bool, claim: bool) -> str:
    """The effect of a step on one metric: the difference of means against 2 x the pooled std of the two rows."""
    (mean_a, std_a), (mean_b, std_b) = mean_std(before), mean_std(after)
    difference = mean_b - mean_a
    better = difference > 0 if higher_is_better else difference < 0
    words = ("reproduced", "reversed") if claim else ("better", "worse")
    direction = words[0] if better else words[1]
    if math.isnan(std_a) or math.isnan(std_b):
        return f"{difference:+.3g} ({direction}; one seed, no noise estimate)"
    noise = 2 * math.sqrt((std_a ** 2 + std_b ** 2) / 2)
    return f"{difference:+.3g} vs {noise:.3g}: " + ("within noise" if abs(difference) <= noise else direction)


def format_table(args: argparse.Namespace, results: dict[str, list[dict]]) -> str:
    prefixes = prefix_columns(results)
    header = ["row", "tokenizer", "seeds", *[title for _, title, _, _ in METRICS], "paper FID", "minutes"]
    rows, prefix_rows = [], []
    for row in ROWS:
        if row.name not in results:
            continue
        runs = results[row.name]
        cells = [cell([r[key] for r in runs], form) for key, _, form, _ in METRICS]
        minutes = cell([sum(r["seconds"].values()) / 60 for r in runs], ".1f")
        label = row.label
        if row.name == MATCHED:
            label += "; steps: " + ", ".join(
                f"{r['matched_steps']}" + ("" if r["matched"] else " (not reached)") for r in runs)
            label += f" (segments of {runs[0]['matched_segment_steps']}, target rFID {runs[0]['target_rfid']:.1f})"
        rows.append([row.name.split("-")[0], label, str(len(runs)), *cells, PAPER_FID.get(row.name, "-"), minutes])
        prefix_rows.append([row.name.split("-")[0],
                            *[cell([r["prefix_psnr"][k] for r in runs], ".2f") for k in prefixes]])
    verdicts = []
    for before, after, step in STEPS:
        if before in results and after in results:
            verdicts.append([f"{before.split('-')[0]} -> {after.split('-')[0]}: {step}", *[
                verdict([r[key] for r in results[before]], [r[key] for r in results[after]], higher,
                        claim=key in GENERATOR_SIDE) for key, _, _, higher in METRICS]])
    settings = (f"tokenizer {args.tokenizer_preset}" + (f" ({args.num_latent_tokens} tokens)" if args.num_latent_tokens
                                                        else "")
                + f", {args.tokenizer_steps} steps x {args.tokenizer_batch_size}"
                + (f" at lr {args.tokenizer_learning_rate:g}" if args.tokenizer_learning_rate else "")
                + (" (two stages)" if args.proxy_teacher else "")
                + f"; generator {args.generator_preset}, {args.generator_steps} steps x {args.generator_batch_size}"
                + (f" at lr {args.generator_learning_rate:g}" if args.generator_learning_rate else "")
                + f"; {args.max_train_samples or 'all'} training images; rFID / gFID against {args.num_eval_images} "
                  f"test images, gFID of {args.samples_per_class} samples per class; training seeds {args.seeds}")
    notes = ("mean ± std (n - 1) over the training seeds. gen. gap FID: samples against the tokenizer's own "
             "reconstructions of the test images. NLL: the generator's per-token negative log-likelihood of the test "
             "images' codes; NLL / unigram CE divides it by those codes' cross-entropy under the training codes' "
             "unigram distribution. minutes: wall time of the row's stages (training, tokenization, evaluation), as "
             "first run.")
    parts = [f"`{' '.join(['python', 'benchmarks/table4_ablation.py', *sys.argv[1:]])}`", "", settings, "",
             markdown_table(header, rows), "", notes, "",
             "PSNR (dB) of each prefix's reconstruction against the full image:", "",
             markdown_table(["row", *[f"k = {k}" for k in prefixes]], prefix_rows), ""]
    if verdicts:
        parts += ["Each step of the paper's table, then the steps together and our rows: difference of means (after - "
                  "before) against 2 x the pooled std; "
                  "'reproduced' / 'reversed' for the generator-side metrics the paper's claim is about, 'better' / "
                  "'worse' for the tokenizer's reconstruction.", "",
                  markdown_table(["step", *[title for _, title, _, _ in METRICS]], verdicts), ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    results: dict[str, list[dict]] = {}
    for seed in args.seeds:
        for row in ROWS:
            if row.name in args.rows and row.name != MATCHED:
                print(f"row {row.name}, seed {seed}: {row.label}", flush=True)
                results.setdefault(row.name, []).append(run_row(args, row, seed))
    if MATCHED in args.rows:
        target = (args.matched_target_rfid if args.matched_target_rfid is not None
                  else mean_std([r["rfid"] for r in results["1-titok"]])[0])
        row = next(row for row in ROWS if row.name == MATCHED)
        for seed in args.matched_seeds:
            print(f"row {row.name}, seed {seed}: {row.label} (target rFID {target:.2f})", flush=True)
            results.setdefault(row.name, []).append(run_row(args, row, seed, target_rfid=target))
    table = format_table(args, results)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(table)
    # every row's and seed's metrics, so the table can be checked or extended without the work folder
    write_json_atomic(output.with_suffix(".json"), results)
    print(table)
    return table


if __name__ == "__main__":
    try:
        main()
    except (ValueError, RuntimeError) as error:  # other settings in --work_dir, a failed stage: one line, exit 2
        print(f"table4_ablation: error: {error}", file=sys.stderr)
        sys.exit(2)
