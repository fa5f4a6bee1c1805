#!/usr/bin/env python
"""k-NN class agreement of 1,000 samples (100 per class, seed 0) of the shipped demo pipeline per sampling setting,
as `evaluate pipeline --knn-split train --knn-images 10000` computes it (pixel 5-NN on 10,000 train images, seed 2).
Cheap (no Inception): finds the least guidance that keeps k-NN >= 0.75 before a 10k FID run.

Usage: python benchmarks/demo_knn_guidance.py '[{"guidance_scale": 1.5}, {"guidance_scale": 3.0, "guidance_schedule": "linear"}]' [PIPELINE]"""
import json, sys, time
import torch
from spectralar_hf import SpectralARPipeline
from spectralar_hf.evaluation.classification import knn_class_agreement
from spectralar_hf.evaluation.report import generate_images, load_evaluation_images
torch.set_num_threads(1)
pipe = SpectralARPipeline.from_pretrained(sys.argv[2] if len(sys.argv) > 2 else "checkpoints/spectralar-fashion-mnist")
pipe.set_progress_bar_config(disable=True)
reference = load_evaluation_images(32, 1, idx_data_dir="/usr/share/datasets/fashion-mnist", split="train",
                                   num_images=10000, seed=2)
ids = [c for c in range(10) for _ in range(100)]
for setting in json.loads(sys.argv[1]):
    start = time.time()
    samples = generate_images(pipe, ids, 100, 0, **setting)
    print(setting, "knn", round(knn_class_agreement(samples, ids, *reference), 3), f"{time.time() - start:.0f}s",
          flush=True)
