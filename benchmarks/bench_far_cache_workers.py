"""Images/s of building `examples/train_far.py`'s latent cache with 0 and 2 `--dataloader_num_workers` at 256 px.

An image folder of JPEGs at ImageNet's typical 500 x 375 (random content, so decoding and resizing cost what they
cost on real photos) is encoded by a randomly initialised AutoencoderKL of MAR's KL-16 shape (`vae_presets["kl-16"]`,
256 px -> 16 x 16 x 16 latents). The script's `build_latent_cache` is timed in-process (the VAE loaded once, so only
reading, decoding, resizing, encoding and writing the cache are timed), after a warm-up on a few images; every setting
writes a fresh cache.

    python benchmarks/bench_far_cache_workers.py [--images 48] [--batch_size 16] [--output results/x.md]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import worker_table  # noqa: E402
from bench_pretokenize_workers import JPEG_SIZE, write_jpegs  # noqa: E402

from spectralar_hf.vae_presets import VAE_PRESETS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def load_train_far():
    spec = importlib.util.spec_from_file_location("train_far", ROOT / "examples" / "train_far.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--note", default="", help="a sentence appended to the header (e.g. what else ran)")
    parser.add_argument("--output", default=None, help="also write the table here")
    args = parser.parse_args()
    from accelerate import Accelerator
    from diffusers import AutoencoderKL

    train_far = load_train_far()
    accelerator = Accelerator()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        write_jpegs(root / "images", args.images)
        torch.manual_seed(0)
        AutoencoderKL(**VAE_PRESETS["kl-16"]).save_pretrained(root / "vae")
        vae, vae_dir = train_far.load_vae(str(root / "vae"))

        def timed(workers: int, images: int, name: str) -> float:
            script_args = train_far.parse_args([
                "--vae", str(root / "vae"), "--train_data_dir", str(root / "images"), "--output_dir", str(root / "o"),
                "--encode_batch_size", str(args.batch_size), "--dataloader_num_workers", str(workers),
                "--max_train_samples", str(images)])
            source, image_column, label_column = train_far.load_source(script_args)
            start = time.perf_counter()
            train_far.build_latent_cache(accelerator, script_args, vae, vae_dir, root / name, source, image_column,
                                         label_column)
            return time.perf_counter() - start

        timed(0, min(args.batch_size, args.images), "warmup")
        worker_table(f"python benchmarks/bench_far_cache_workers.py --images {args.images} --batch_size "
                     f"{args.batch_size}",
                     f"{args.images} JPEGs of {JPEG_SIZE[0]} x {JPEG_SIZE[1]} -> 256 px, a random KL-16-shaped "
                     f"AutoencoderKL, encode batch {args.batch_size}, wall time of `build_latent_cache`. "
                     f"{args.note}".rstrip(),
                     lambda workers: timed(workers, args.images, f"latents-{workers}"), args.images, args.output)

if __name__ == "__main__":
    main()
