#!/usr/bin/env python
"""Quality diagnostics of the SpectralAR demo, recorded in RESULTS.md:

1. How sharp must an image be for FID? FID of N test images against their own DCT low-pass images at levels omega.
2. The sampling sweep that chose the demo's saved defaults: FID and precision / recall (k = 3) of
   `samples_per_class x classes` samples against the same test images, and the pixel k-NN class agreement of the
   samples (on `knn_images` train images). Each row is one JSON object of pipeline arguments (guidance_scale,
   guidance_schedule, top_k, top_p, temperature, ...).

    python benchmarks/bench_demo_quality.py --pipeline checkpoints/spectralar-fashion-mnist \
        --idx_data_dir /usr/share/datasets/fashion-mnist --omegas 16 24 \
        --settings '[{"guidance_scale": 1.0}, {"guidance_scale": 1.5}, {"guidance_scale": 2.5},
                     {"guidance_scale": 2.5, "guidance_schedule": "linear"}]'

FID of 500 samples is biased upwards: compare the sweep's rows with each other, not with a 1,000-sample gFID.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_line, markdown_table  # noqa: E402

from spectralar_hf import SpectralARPipeline  # noqa: E402
from spectralar_hf.evaluation import (  # noqa: E402
    InceptionFeatureExtractor,
    extract_features,
    feature_statistics,
    frechet_distance,
    knn_class_agreement,
    precision_recall,
)
from spectralar_hf.evaluation.report import generate_images, load_evaluation_images  # noqa: E402
from spectralar_hf.spectral import lowpass  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", required=True)
    parser.add_argument("--idx_data_dir", required=True)
    parser.add_argument("--num_images", type=int, default=1000, help="test images (FID reference)")
    parser.add_argument("--omegas", type=int, nargs="*", default=[16, 24])
    parser.add_argument("--settings", default="[]", help="JSON list of pipeline sampling arguments, one row each")
    parser.add_argument("--samples_per_class", type=int, default=50)
    parser.add_argument("--knn_images", type=int, default=10000)
    args = parser.parse_args()
    settings = json.loads(args.settings)
    if not isinstance(settings, list) or not all(isinstance(s, dict) for s in settings):
        parser.error("--settings must be a JSON list of objects, e.g. '[{\"guidance_scale\": 1.5}]'")

    pipe = SpectralARPipeline.from_pretrained(args.pipeline)
    pipe.set_progress_bar_config(disable=True)
    size, channels = pipe.tokenizer.config.image_size, pipe.tokenizer.config.num_channels
    extractor = InceptionFeatureExtractor()
    test, _ = load_evaluation_images(size, channels, idx_data_dir=args.idx_data_dir, split="test",
                                     num_images=args.num_images, seed=0)
    reference_features = extract_features(test, extractor, progress=False)
    reference = feature_statistics(reference_features)

    def fid(images):
        return frechet_distance(*feature_statistics(extract_features(images, extractor, progress=False)), *reference)

    print(f"# {machine_line()}; {args.num_images} test images as the FID reference\n")
    if args.omegas:  # `--omegas` with no value: the sweep only
        rows = [[omega, f"{fid(lowpass(test, omega).clamp(-1, 1)):.1f}"] for omega in args.omegas]
        print(markdown_table(["DCT low-pass omega", "FID of the low-passed test images"], rows) + "\n", flush=True)

    if settings:
        knn_reference = load_evaluation_images(size, channels, idx_data_dir=args.idx_data_dir, split="train",
                                               num_images=args.knn_images, seed=2)
        classes = [c for c in range(pipe.transformer.config.num_classes) for _ in range(args.samples_per_class)]
        rows = []
        for setting in settings:
            start = time.perf_counter()
            samples = generate_images(pipe, classes, batch_size=100, seed=0, **setting)
            features = extract_features(samples, extractor, progress=False)
            scores = precision_recall(reference_features, features, k=3)
            rows.append([json.dumps(setting),
                         f"{frechet_distance(*feature_statistics(features), *reference):.1f}",
                         f"{scores['precision']:.3f}", f"{scores['recall']:.3f}",
                         f"{knn_class_agreement(samples, classes, *knn_reference):.3f}",
                         f"{time.perf_counter() - start:.0f}"])
            print(rows[-1], flush=True)
        print("\n" + markdown_table([f"sampling ({len(classes)} samples)", "FID", "precision", "recall (k = 3)",
                                     "k-NN class agreement", "s"],
                                    rows))


if __name__ == "__main__":
    main()
