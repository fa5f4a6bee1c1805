"""SpectralAR §4.2 causality analysis (Table 1) on natural 32x32 images, with timing.

Uses CIFAR-100's 10,000 test images when the Hugging Face Hub is reachable (as the paper), otherwise random 32x32
crops of the real photos bundled with scikit-image (offline).

Run: `python benchmarks/bench_causality.py [--num_images 10000] [--data auto|cifar100|crops] [--figure4 out.png]`;
prints markdown. `--figure4` also draws Figure 4 (from the same correlations) and prints a summary of its histograms.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine_line, markdown_table  # noqa: E402

from spectralar_hf.evaluation import causality  # noqa: E402


def figure4_summary(histograms: dict[str, list[torch.Tensor]], channels: int) -> str:
    """Per paradigm: each earlier token's share of the best predictors, the share lying on the tokens' outer ring of
    pixels (vs. the ring's share of positions, i.e. a uniform histogram), and the fewest positions holding half."""
    rows = []
    for name in causality.SEQUENCE_TYPES:
        maps = causality._token_maps(histograms[name], channels)
        total = sum(m.sum() for m in maps)
        ring = [np.pad(np.zeros((m.shape[0] - 2, m.shape[1] - 2), bool), 1, constant_values=True) for m in maps]
        ring_positions = sum(r.sum() for r in ring) / sum(m.size for m in maps)
        counts = np.sort(np.concatenate([m.ravel() for m in maps]))[::-1]
        half = int(np.searchsorted(np.cumsum(counts), total / 2)) + 1
        rows.append([causality.SEQUENCE_LABELS[name], " / ".join(f"{m.sum() / total:.0%}" for m in maps),
                     f"{sum(m[r].sum() for m, r in zip(maps, ring)) / total:.1%} ({ring_positions:.1%})",
                     f"{half} of {counts.size} ({half / counts.size:.1%})"])
    return markdown_table(["Paradigm", "share of best predictors in t1 / t2 / t3",
                           "on token edges (uniform)", "positions holding half"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_images", type=int, default=10_000)
    parser.add_argument("--data", choices=("auto", "cifar100", "crops"), default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--figure4", default=None, help="also draw Figure 4 to this image file")
    args = parser.parse_args()
    print(f"machine: {machine_line()}\n")
    print(f"command: python benchmarks/bench_causality.py {' '.join(sys.argv[1:])}".rstrip() + "\n")

    start = time.perf_counter()
    images, source = None, None
    if args.data in ("auto", "cifar100"):
        try:
            images = causality.load_cifar100_validation(args.num_images)
            source = f"{causality.CIFAR100_DATASET} ({causality.CIFAR100_SPLIT} split)"
        except OSError as error:
            if args.data == "cifar100":
                raise
            print(f"CIFAR-100 unavailable ({type(error.__cause__ or error).__name__}); using offline photo crops.\n")
    if images is None:
        images = causality.offline_natural_crops(args.num_images, seed=args.seed)
        source = (f"random 32x32 crops (window {causality.OFFLINE_CROP_SCALE[0]}-{causality.OFFLINE_CROP_SCALE[1]} "
                  f"of the short side, bicubic, flips) of {len(causality.OFFLINE_PHOTOS)} scikit-image photos, "
                  f"seed {args.seed}")
    data_seconds = time.perf_counter() - start

    start = time.perf_counter()
    table, histograms = causality.causality_table(images, progress=False, return_histograms=True)
    r2_seconds = time.perf_counter() - start
    print("### Table 1: R^2_avg between a token and the previous ones (Eq. 10)\n")
    print(causality.format_table(table, num_images=images.shape[0], source=source) + "\n")
    print(f"time: data {data_seconds:.1f} s, R^2 (3 sequences x 3 tokens, float64) {r2_seconds:.1f} s\n")
    if args.figure4 is not None:
        start = time.perf_counter()
        causality.draw_figure4(histograms, table).save(args.figure4)
        print(f"### Figure 4: the most correlated earlier element of each element (wrote {args.figure4})\n")
        print(figure4_summary(histograms, channels=images.shape[1]) + "\n")
        print(f"time: drawing {time.perf_counter() - start:.1f} s (the histograms come with the R^2 pass)\n")


if __name__ == "__main__":
    main()
