#!/usr/bin/env python
"""The ceiling of the demo's paper-style FID: a tokenizer's reconstructions of all 10,000 Fashion-MNIST test images,
saved as an ADM `.npz` (uint8 NHWC, RGB, labels in arr_1) like `examples/sample.py` saves samples, so that
`spectralar-hf evaluate npz` scores them exactly as it scores the samples.

Usage: python benchmarks/demo_reconstruction_npz.py TOKENIZER --output recon.npz
       spectralar-hf evaluate npz recon.npz --idx-data-dir /usr/share/datasets/fashion-mnist --split test --report r.json
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from tqdm.auto import tqdm

from spectralar_hf import SpectralTokenizer
from spectralar_hf.evaluation.report import load_evaluation_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tokenizer")
    parser.add_argument("--output", required=True)
    parser.add_argument("--idx_data_dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--batch_size", type=int, default=100)
    args = parser.parse_args()
    tokenizer = SpectralTokenizer.from_pretrained(args.tokenizer).eval()
    images, labels = load_evaluation_images(tokenizer.config.image_size, tokenizer.config.num_channels,
                                            idx_data_dir=args.idx_data_dir, split="test", num_images=10000, seed=0)
    batches = []
    with torch.no_grad():
        for start in tqdm(range(0, len(images), args.batch_size), desc="reconstruct"):
            x = tokenizer.decode(tokenizer.encode(images[start:start + args.batch_size]).codes).reconstruction
            batches.append(((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8))
    pixels = torch.cat(batches).expand(-1, 3, -1, -1).permute(0, 2, 3, 1).numpy()
    np.savez(args.output, pixels, labels.numpy())
    print(f"wrote {args.output}: {pixels.shape}")


if __name__ == "__main__":
    main()
