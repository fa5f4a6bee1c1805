"""Images/s of `examples/pretokenize.py` with 0 and 2 `--dataloader_num_workers` at 256 px.

An image folder of JPEGs at ImageNet's typical 500 x 375 (random content, so decoding and resizing cost what they
cost on real photos) is encoded by a randomly initialised tokenizer of the given preset (default `titok-b64`, the
paper's 256 px tokenizer); each setting runs in a fresh output folder and is timed end to end (wall time of the
script, model load included), after one warm-up run.

    python benchmarks/bench_pretokenize_workers.py [--images 96] [--preset titok-b64] [--output results/x.md]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _common import worker_table  # noqa: E402

from spectralar_hf import SpectralTokenizer, SpectralTokenizerConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
JPEG_SIZE = (500, 375)  # ImageNet's most common size


def write_jpegs(folder: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    for index in range(count):
        label = folder / f"class{index % 2}"
        label.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (JPEG_SIZE[1], JPEG_SIZE[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(label / f"{index:05d}.jpg", quality=90)


def timed_run(tokenizer: Path, data: Path, output: Path, workers: int, batch: int) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "examples" / "pretokenize.py"), "--tokenizer", str(tokenizer),
                    "--train_data_dir", str(data), "--batch_size", str(batch), "--num_shards", "1",
                    "--dataloader_num_workers", str(workers), "--output_dir", str(output)], check=True,
                   capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--preset", default="titok-b64")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--output", default=None, help="also write the table here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        write_jpegs(root / "images", args.images)
        SpectralTokenizer(SpectralTokenizerConfig.from_preset(args.preset)).save_pretrained(root / "tokenizer")
        timed_run(root / "tokenizer", root / "images", root / "warmup", 0, args.batch_size)
        worker_table(f"python benchmarks/bench_pretokenize_workers.py --images {args.images} --preset {args.preset}",
                     f"{args.images} JPEGs of {JPEG_SIZE[0]} x {JPEG_SIZE[1]} -> 256 px, batch {args.batch_size}, "
                     f"wall time of the script",
                     lambda workers: timed_run(root / "tokenizer", root / "images", root / f"codes-{workers}",
                                               workers, args.batch_size), args.images, args.output)

if __name__ == "__main__":
    main()
