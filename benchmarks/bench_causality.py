"""SpectralAR §4.2 causality analysis (Table 1) on natural 32x32 images, with timing.

Uses CIFAR-100's 10,000 test images when the Hugging Face Hub is reachable (as the paper), otherwise random 32x32
crops of the real photos bundled with scikit-image (offline).

Run: `python benchmarks/bench_causality.py [--num_images 10000] [--data auto|cifar100|crops]`; prints markdown.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine_line  # noqa: E402

from spectralar_hf.evaluation import causality  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_images", type=int, default=10_000)
    parser.add_argument("--data", choices=("auto", "cifar100", "crops"), default="auto")
    parser.add_argument("--seed", type=int, default=0)
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
    table = causality.causality_table(images, progress=False)
    r2_seconds = time.perf_counter() - start
    print("### Table 1: R^2_avg between a token and the previous ones (Eq. 10)\n")
    print(causality.format_table(table, num_images=images.shape[0], source=source) + "\n")
    print(f"time: data {data_seconds:.1f} s, R^2 (3 sequences x 3 tokens, float64) {r2_seconds:.1f} s\n")


if __name__ == "__main__":
    main()
