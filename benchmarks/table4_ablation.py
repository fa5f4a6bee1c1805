"""SpectralAR Table 4: the tokenizer ablation, one resumable command.

The rows share data, sizes and budgets and differ only in the tokenizer; the four of the paper's Table 4, in its
order, run by default:

    1. TiTok-style 1D tokenizer: no spectral supervision, no causal mask
    2. + nested spectral supervision (uniform omega schedule)
    3. + the spectral causal mask in encoder and decoder
    4. + the non-uniform omega schedule of Eq. 9 (= SpectralAR)

and, with `--rows`, `x-nonuniform-no-mask`: supervision and the non-uniform schedule without the causal mask (the
other order of adding the last two).

For each row: the tokenizer is trained (`examples/train_tokenizer.py`; with `--proxy_teacher` TiTok's two stages:
proxy codes, then the decoder with the pixel decoder's GAN), the training images are tokenized
(`examples/pretokenize.py`), a generator is trained on its codes (`examples/train_generator.py`), and
`spectralar-hf evaluate` measures rFID / PSNR of the tokenizer and gFID / precision / recall of the pipeline
against the test split. Every stage is skipped when its output exists, and an interrupted training stage resumes
from its latest checkpoint, so rerunning the same command continues where it stopped. A row's training settings are
recorded in `WORK_DIR/ROW/settings.json` and a rerun with other ones is refused; evaluation reports are named by
their sizes, so other --num_eval_images / --samples_per_class evaluate the trained models again. The table goes to `--output`
(markdown) and stdout.

Demo scale (Fashion-MNIST on a 2-core CPU; 24 tokens at 32 px, where the uniform and the non-uniform schedules
differ; --quick trains each tokenizer and generator for 1,000 steps at the demo's learning rates, about 45 minutes
for the four rows; the shipped demo's tokenizer had 4,500 steps):

    python benchmarks/table4_ablation.py --idx_data_dir /usr/share/datasets/fashion-mnist --quick \\
        --work_dir runs/table4 --output benchmarks/results/table4_quick.md

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
import shlex
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


ROWS = (
    Row("1-titok", "1D tokenizer (TiTok-style)", spectral_supervision=False, omega="uniform", causal=False),
    Row("2-nested-uniform", "+ nested spectral supervision (uniform omega)", True, "uniform", False),
    Row("3-causal-uniform", "+ spectral causal mask", True, "uniform", True),
    Row("4-spectralar", "+ non-uniform omega, Eq. 9 (SpectralAR)", True, "spectralar", True),
    Row("x-nonuniform-no-mask", "supervision + non-uniform omega, no causal mask", True, "spectralar", False),
)
DEFAULT_ROWS = [row.name for row in ROWS[:4]]
# The paper's Table 4 (ImageNet 256, d16-size generator): FID of the four default rows.
PAPER_FID = {"1-titok": 6.30, "2-nested-uniform": 5.64, "3-causal-uniform": 3.49, "4-spectralar": 3.02}
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
                     *flags: str) -> list[str]:
    """A training script under `--launcher` for `steps` steps with a checkpoint halfway, resumed from its latest
    checkpoint when an earlier run stopped (started afresh when it stopped before its first checkpoint)."""
    command = [*shlex.split(args.launcher), str(EXAMPLES / script), *flags, "--max_train_steps", str(steps),
               "--lr_warmup_steps", str(int(WARMUP_FRACTION * steps)),
               "--checkpointing_steps", str(max(steps // 2, 1)), "--checkpoints_total_limit", "1",
               "--output_dir", str(output), "--report_to", "none"]
    if learning_rate is not None:
        command += ["--learning_rate", str(learning_rate)]
    if latest_checkpoint(output) is not None:
        command += ["--resume_from_checkpoint", "latest"]
    elif output.exists():
        command += ["--overwrite_output_dir"]
    return command


def tokenizer_overrides(args: argparse.Namespace, row: Row) -> str:
    overrides = dict(spectral_supervision=row.spectral_supervision, omega=row.omega, causal=row.causal)
    if args.num_latent_tokens is not None:
        overrides["num_latent_tokens"] = args.num_latent_tokens
    return json.dumps(overrides)


def check_row_settings(args: argparse.Namespace, work: Path) -> None:
    """Record the training settings of a row's work folder on its first run; a later run with other settings is a
    `ValueError` (its finished stages would otherwise be reused silently)."""
    settings = {name: getattr(args, name) for name in TRAINING_SETTINGS}
    settings["idx_data_dir"] = settings["idx_data_dir"] and str(Path(settings["idx_data_dir"]).resolve())
    recorded_file = work / "settings.json"
    if recorded_file.exists():
        recorded = json.loads(recorded_file.read_text())
        changed = {name: (recorded.get(name), value) for name, value in settings.items() if recorded.get(name) != value}
        if changed:
            named = ", ".join(f"{name} {old!r} -> {new!r}" for name, (old, new) in changed.items())
            raise ValueError(f"{work} was trained with other settings ({named}); use another --work_dir, or delete "
                             f"{work} to retrain the row.")
    else:
        write_json_atomic(recorded_file, settings)


def report_files(args: argparse.Namespace, work: Path) -> tuple[Path, Path]:
    """The rFID and gFID reports of a row for this run's evaluation sizes."""
    return (work / f"tokenizer-{args.num_eval_images}images.json",
            work / f"pipeline-{args.num_eval_images}images-{args.samples_per_class}perclass.json")


def run_row(args: argparse.Namespace, row: Row) -> dict:
    """All stages of one row; returns its metrics and wall times. Evaluation reports are named by their sizes, so
    another --num_eval_images / --samples_per_class evaluates the same models again instead of reusing a report."""
    work = Path(args.work_dir) / row.name
    check_row_settings(args, work)
    samples = ["--max_train_samples", str(args.max_train_samples)] if args.max_train_samples else []
    common = [*data_arguments(args), *samples, "--train_batch_size", str(args.tokenizer_batch_size)]
    tokenizer = work / "tokenizer" / "tokenizer"
    stage1 = work / "tokenizer-stage1" / "tokenizer"
    seconds = {}
    first_stage = ["--proxy_teacher", args.proxy_teacher] if args.proxy_teacher else []
    seconds["tokenizer"] = run_stage(
        "tokenizer", training_command(
            args, "train_tokenizer.py", (stage1 if args.proxy_teacher else tokenizer).parent, args.tokenizer_steps,
            args.tokenizer_learning_rate, *common, "--preset", args.tokenizer_preset, "--config_overrides", tokenizer_overrides(args, row),
            *first_stage),
        stage1 if args.proxy_teacher else tokenizer, work)
    if args.proxy_teacher:  # TiTok's stage 2: the decoder (and its pixel decoder) on frozen codes
        seconds["tokenizer"] += run_stage(
            "tokenizer stage 2", training_command(
                args, "train_tokenizer.py", tokenizer.parent, args.tokenizer_steps, args.tokenizer_learning_rate,
                *common,
                "--pretrained_model_name_or_path", str(stage1), "--train_decoder_only"),
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
            "--tokenized_dataset", str(codes),
            "--preset", args.generator_preset, "--train_batch_size", str(args.generator_batch_size)),
        pipeline / "model_index.json", work)
    evaluate = [sys.executable, "-m", "spectralar_hf.cli", "evaluate"]
    shared = [*data_arguments(args, underscore=False), "--split", "test", "--num-images", str(args.num_eval_images),
              *(["--inception", args.inception] if args.inception else [])]
    tokenizer_report_file, pipeline_report_file = report_files(args, work)
    rfid_stage, gfid_stage = f"rFID {args.num_eval_images}", f"gFID {args.num_eval_images}x{args.samples_per_class}"
    seconds[rfid_stage] = run_stage(
        rfid_stage, [*evaluate, "tokenizer", str(tokenizer), *shared, "--fid", "--report", str(tokenizer_report_file)],
        tokenizer_report_file, work)
    seconds[gfid_stage] = run_stage(
        gfid_stage, [*evaluate, "pipeline", str(pipeline), *shared, "--samples-per-class", str(args.samples_per_class),
                     "--report", str(pipeline_report_file)],
        pipeline_report_file, work)
    tokenizer_report = json.loads(tokenizer_report_file.read_text())
    pipeline_report = json.loads(pipeline_report_file.read_text())
    return dict(rfid=tokenizer_report["rfid"], psnr=tokenizer_report["psnr"], gfid=pipeline_report["gfid"],
                precision=pipeline_report["precision"], recall=pipeline_report["recall"], seconds=seconds)


def format_table(args: argparse.Namespace, results: dict[str, dict]) -> str:
    header = ["row", "tokenizer", "rFID", "PSNR", "gFID", "precision", "recall", "paper FID", "minutes"]
    rows = []
    for row in ROWS:
        if row.name not in results:
            continue
        r = results[row.name]
        rows.append([row.name.split("-")[0], row.label, f"{r['rfid']:.2f}", f"{r['psnr']:.2f}", f"{r['gfid']:.2f}",
                     f"{r['precision']:.3f}", f"{r['recall']:.3f}", PAPER_FID.get(row.name, "-"),
                     f"{sum(r['seconds'].values()) / 60:.1f}"])
    settings = (f"tokenizer {args.tokenizer_preset}" + (f" ({args.num_latent_tokens} tokens)" if args.num_latent_tokens
                                                        else "")
                + f", {args.tokenizer_steps} steps x {args.tokenizer_batch_size}"
                + (f" at lr {args.tokenizer_learning_rate:g}" if args.tokenizer_learning_rate else "")
                + (" (two stages)" if args.proxy_teacher else "")
                + f"; generator {args.generator_preset}, {args.generator_steps} steps x {args.generator_batch_size}"
                + (f" at lr {args.generator_learning_rate:g}" if args.generator_learning_rate else "")
                + f"; {args.max_train_samples or 'all'} training images; rFID / gFID against {args.num_eval_images} "
                  f"test images, gFID of {args.samples_per_class} samples per class")
    minutes = "minutes: wall time of the row's stages (training, tokenization, evaluation), as first run"
    return "\n".join([f"`{' '.join(['python', 'benchmarks/table4_ablation.py', *sys.argv[1:]])}`", "",
                      settings, "", markdown_table(header, rows), "", minutes, ""])


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    results = {}
    for row in ROWS:
        if row.name in args.rows:
            print(f"row {row.name}: {row.label}", flush=True)
            results[row.name] = run_row(args, row)
    table = format_table(args, results)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(table)
    print(table)
    return table


if __name__ == "__main__":
    try:
        main()
    except (ValueError, RuntimeError) as error:  # other settings in --work_dir, a failed stage: one line, exit 2
        print(f"table4_ablation: error: {error}", file=sys.stderr)
        sys.exit(2)
