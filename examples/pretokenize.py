#!/usr/bin/env python
"""Encode an image dataset once with a trained SpectralTokenizer into an Arrow dataset of (codes, label).

The dataset is processed in shards (`datasets.map`, batched); each finished shard is saved to
`OUTPUT_DIR/shards/shard-XXXXX` through a temporary directory and a rename, so an interrupted run resumes where it
stopped (finished shards are skipped) and never leaves a half-written shard behind. Images are read batch by batch
from the dataset's Arrow files, never all at once. Under `accelerate launch` the shards are divided among the
processes. The merged result is saved to `OUTPUT_DIR/data` (`datasets.load_from_disk`), with the label names.

Example (the demo data):
  python examples/pretokenize.py --tokenizer runs/fmnist-tokenizer/tokenizer \
      --idx_data_dir /usr/share/datasets/fashion-mnist --flip --output_dir runs/fmnist-codes
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import datasets
import numpy as np
import torch
from accelerate import Accelerator
from PIL import Image

from spectralar_hf import SpectralTokenizer
from spectralar_hf.training.data import ImageTransform, find_column, load_idx_dataset, load_image_dataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True, help="a SpectralTokenizer directory (or a pipeline directory)")
    parser.add_argument("--dataset_name", default=None)
    parser.add_argument("--dataset_config_name", default=None)
    parser.add_argument("--train_data_dir", default=None)
    parser.add_argument("--idx_data_dir", default=None)
    parser.add_argument("--split", default="train")
    parser.add_argument("--image_column", default=None)
    parser.add_argument("--label_column", default=None)
    parser.add_argument("--max_samples", type=int, default=None)
    parser.add_argument("--flip", action="store_true", help="also encode each image's horizontal mirror")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--num_shards", type=int, default=None, help="default: about 10,000 images per shard")
    parser.add_argument("--cache_dir", default=None)
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args(argv)
    if sum(x is not None for x in (args.dataset_name, args.train_data_dir, args.idx_data_dir)) != 1:
        parser.error("give exactly one data source: --dataset_name, --train_data_dir or --idx_data_dir")
    for flag in ("train_data_dir", "idx_data_dir"):
        folder = getattr(args, flag)
        if folder is not None and not os.path.isdir(folder):
            parser.error(f"--{flag} {folder!r} does not exist or is not a directory")
    if not Path(args.tokenizer).exists():
        parser.error(f"--tokenizer {args.tokenizer!r} does not exist")
    if args.batch_size < 1:
        parser.error("--batch_size must be >= 1")
    return args


def load_tokenizer(path: str) -> SpectralTokenizer:
    root = Path(path)
    if (root / "model_index.json").is_file():
        root = root / "tokenizer"
    return SpectralTokenizer.from_pretrained(root).eval()


def load_source(args: argparse.Namespace):
    if args.idx_data_dir is not None:
        dataset = load_idx_dataset(args.idx_data_dir, args.split)
    else:
        dataset = load_image_dataset(args.dataset_name, args.dataset_config_name, args.train_data_dir, args.split,
                                     args.cache_dir)
    if args.max_samples is not None:
        dataset = dataset.select(range(min(args.max_samples, len(dataset))))
    if len(dataset) == 0:
        raise ValueError("The dataset is empty; check the data source and --max_samples.")
    return dataset


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    accelerator = Accelerator()
    output = Path(args.output_dir)
    tokenizer = load_tokenizer(args.tokenizer).to(accelerator.device)
    config = tokenizer.config
    source = load_source(args)
    image_column = find_column(source, args.image_column, ("image", "img", "pixel_values"), "image")
    label_column = find_column(source, args.label_column, ("label", "labels", "class"), "label")
    label_feature = source.features[label_column]
    names = label_feature.names if isinstance(label_feature, datasets.ClassLabel) else None
    transform = ImageTransform(config.image_size, config.num_channels)  # deterministic: resize + centre crop
    num_shards = args.num_shards or max(1, len(source) // 10_000)
    shards_dir = output / "shards"
    shards_dir.mkdir(parents=True, exist_ok=True)

    @torch.no_grad()
    def encode(batch: dict[str, list]) -> dict[str, list]:
        pixels = torch.stack([transform(Image.fromarray(np.asarray(img, dtype=np.uint8)) if not isinstance(
            img, Image.Image) else img) for img in batch[image_column]]).to(accelerator.device, tokenizer.dtype)
        variants = [(pixels, False)] + ([(pixels.flip(-1), True)] if args.flip else [])
        codes, flipped, labels = [], [], []
        for images, is_flipped in variants:
            codes += tokenizer.encode(images).codes.cpu().tolist()
            flipped += [is_flipped] * len(images)
            labels += [int(label) for label in batch[label_column]]
        return {"codes": codes, "label": labels, "flipped": flipped}

    features = datasets.Features({
        "codes": datasets.Sequence(datasets.Value("int32"), length=config.num_latent_tokens),
        "label": datasets.ClassLabel(names=names) if names else datasets.Value("int64"),
        "flipped": datasets.Value("bool"),
    })
    for index in range(accelerator.process_index, num_shards, accelerator.num_processes):
        final = shards_dir / f"shard-{index:05d}"
        if final.exists():
            continue  # finished in an earlier run
        shard = source.shard(num_shards, index, contiguous=True)
        encoded = shard.map(encode, batched=True, batch_size=args.batch_size, remove_columns=shard.column_names,
                            features=features, desc=f"shard {index + 1}/{num_shards}", load_from_cache_file=False)
        partial = shards_dir / f".shard-{index:05d}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        encoded.save_to_disk(str(partial))
        partial.rename(final)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        merged = datasets.concatenate_datasets(
            [datasets.load_from_disk(str(shards_dir / f"shard-{i:05d}")) for i in range(num_shards)])
        partial = output / ".data.partial"
        shutil.rmtree(partial, ignore_errors=True)
        merged.save_to_disk(str(partial))
        shutil.rmtree(output / "data", ignore_errors=True)
        partial.rename(output / "data")
        info = {"tokenizer": str(args.tokenizer), "num_rows": len(merged), "num_images": len(source),
                "flip": args.flip, "num_latent_tokens": config.num_latent_tokens,
                "codebook_size": config.codebook_size, "label_names": names}
        (output / "pretokenize.json").write_text(json.dumps(info, indent=2))
        print(f"wrote {len(merged)} code sequences ({len(source)} images{' + flips' if args.flip else ''}) to "
              f"{output / 'data'}")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as error:
        print(f"pretokenize: error: {error}", file=sys.stderr)
        sys.exit(2)
