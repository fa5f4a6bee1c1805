#!/usr/bin/env python
"""Encode an image dataset once with a trained SpectralTokenizer into an Arrow dataset of (codes, label).

The dataset is processed in shards (`datasets.map`, batched); each finished shard is saved to
`OUTPUT_DIR/shards/shard-XXXXX` through a temporary directory and a rename, so an interrupted run resumes where it
stopped (finished shards are skipped) and never leaves a half-written shard behind. Images are read batch by batch
from the dataset's Arrow files, never all at once. Under `accelerate launch` the shards are divided among the
processes. The merged result is saved to `OUTPUT_DIR/data` (`datasets.load_from_disk`), with the label names.

What the shards depend on (the tokenizer's config and weights, the data source, --max_samples, --flip, the shard count)
is recorded in `OUTPUT_DIR/pretokenize_settings.json`: a later run resumes only with the same settings and refuses an
output directory made otherwise (redo it with --overwrite_output_dir, or choose another --output_dir).
`pretokenize.json` records the tokenizer's absolute path, which examples/train_generator.py loads by default.

Example (the demo data):
  python examples/pretokenize.py --tokenizer runs/fmnist-tokenizer/tokenizer \
      --idx_data_dir /usr/share/datasets/fashion-mnist --flip --output_dir runs/fmnist-codes
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import datasets
import numpy as np
import torch
from accelerate import Accelerator
from PIL import Image
from tqdm.auto import tqdm

from spectralar_hf import SpectralTokenizer
from spectralar_hf.argtypes import non_negative_int, positive_int
from spectralar_hf.training.arguments import add_image_source_arguments, check_image_source, resolve_model_dir
from spectralar_hf.training.checkpointing import model_fingerprint, write_json_atomic
from spectralar_hf.training.data import ImageTransform, find_column, load_training_source


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True, help="a SpectralTokenizer directory (or a pipeline directory)")
    data = add_image_source_arguments(parser)
    data.add_argument("--label_column", default=None)
    parser.add_argument("--max_samples", type=positive_int, default=None)
    parser.add_argument("--flip", action="store_true", help="also encode each image's horizontal mirror")
    parser.add_argument("--batch_size", type=positive_int, default=256)
    parser.add_argument("--dataloader_num_workers", type=non_negative_int, default=0,
                        help="processes that decode and resize the images while the tokenizer encodes")
    parser.add_argument("--num_shards", type=positive_int, default=None,
                        help="default: about 10,000 images per shard")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--overwrite_output_dir", action="store_true",
                        help="delete the shards and data of an earlier run made with other settings and redo them")
    args = parser.parse_args(argv)
    check_image_source(parser, args)
    if not Path(args.tokenizer).exists():
        parser.error(f"--tokenizer {args.tokenizer!r} does not exist")
    if Path(args.output_dir).exists() and not Path(args.output_dir).is_dir():
        parser.error(f"--output_dir {args.output_dir!r} is a file, not a directory")
    return args


def tokenizer_dir(path: str) -> Path:
    """The SpectralTokenizer directory of `path` (a tokenizer, or a SpectralARPipeline with tokenizer/); checked."""
    return resolve_model_dir(path, "--tokenizer", "SpectralTokenizer", model_type="spectral_tokenizer",
                             pipeline_class="SpectralARPipeline", subfolder="tokenizer",
                             hint="pass the tokenizer/ folder written by examples/train_tokenizer.py")


def load_tokenizer(path: str) -> SpectralTokenizer:
    return SpectralTokenizer.from_pretrained(tokenizer_dir(path)).eval()


class PixelBatches:
    """The collate function of pretokenize's loader (it runs in the worker processes): a list of dataset rows ->
    `(pixels (B, C, S, S) in [-1, 1], labels)`, each image resized and centre-cropped by `transform`."""

    def __init__(self, transform: ImageTransform, image_column: str, label_column: str):
        self.transform, self.image_column, self.label_column = transform, image_column, label_column

    def __call__(self, rows: list[dict]) -> tuple[torch.Tensor, list[int]]:
        images = [row[self.image_column] for row in rows]
        pixels = torch.stack([self.transform(image if isinstance(image, Image.Image)
                                             else Image.fromarray(np.asarray(image, dtype=np.uint8)))
                              for image in images])
        return pixels, [int(row[self.label_column]) for row in rows]


def shard_settings(args: argparse.Namespace, tokenizer_folder: Path, num_images: int, num_shards: int,
                   image_column: str, label_column: str) -> dict:
    """What the shards depend on; a later run into the same folder resumes only when these are equal."""
    def folder(value):
        return None if value is None else str(Path(value).resolve())

    return {"tokenizer_sha256": model_fingerprint(tokenizer_folder), "tokenizer": str(tokenizer_folder.resolve()),
            "dataset_name": args.dataset_name, "dataset_config_name": args.dataset_config_name,
            "train_data_dir": folder(args.train_data_dir), "idx_data_dir": folder(args.idx_data_dir),
            "split": args.split, "max_samples": args.max_samples, "num_images": num_images,
            "image_column": image_column, "label_column": label_column, "flip": args.flip, "num_shards": num_shards}


SETTINGS = "pretokenize_settings.json"
OUTPUTS = ("shards", "data", "pretokenize.json", SETTINGS, ".data.partial")


def check_output(output: Path, settings: dict, overwrite: bool) -> list[Path]:
    """The earlier run's files to delete before encoding (with --overwrite_output_dir); `ValueError` when the folder
    holds shards made with other settings (or of unknown origin) and `overwrite` is not given."""
    present = [output / name for name in OUTPUTS if (output / name).exists()]
    if not present or present == [output / "shards"] and not any((output / "shards").iterdir()):
        return []  # nothing encoded yet
    settings_file = output / SETTINGS
    recorded = None
    if settings_file.is_file():
        try:
            recorded = json.loads(settings_file.read_text())
        except json.JSONDecodeError:
            recorded = None

    def compared(values: dict) -> dict:  # the tokenizer is compared by its fingerprint, not where it lies
        return {key: value for key, value in values.items() if key != "tokenizer"}

    if isinstance(recorded, dict) and compared(recorded) == compared(settings):
        return []  # the same settings: resume (finished shards are kept)
    if overwrite:
        return present
    if not isinstance(recorded, dict):
        reason = f"holds shards without a readable {SETTINGS} (an older or interrupted run)"
    else:
        changed = [key for key in compared(settings) if recorded.get(key) != settings[key]]
        named = ", ".join(f"{key} {recorded.get(key)!r} -> {settings[key]!r}" if key != "tokenizer_sha256" else
                          f"the tokenizer's weights or config (the codes were made by {recorded.get('tokenizer')})"
                          for key in changed)
        reason = f"holds codes made with other settings ({named})"
    raise ValueError(f"--output_dir {str(output)!r} {reason}; redo them with --overwrite_output_dir, or choose "
                     f"another --output_dir.")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    accelerator = Accelerator()
    output = Path(args.output_dir)
    folder = tokenizer_dir(args.tokenizer)
    tokenizer = SpectralTokenizer.from_pretrained(folder).eval().to(accelerator.device)
    config = tokenizer.config
    source = load_training_source(args, "max_samples")
    image_column = find_column(source, args.image_column, ("image", "img", "pixel_values"), "image")
    label_column = find_column(source, args.label_column, ("label", "labels", "class"), "label")
    label_feature = source.features[label_column]
    names = label_feature.names if isinstance(label_feature, datasets.ClassLabel) else None
    transform = ImageTransform(config.image_size, config.num_channels)  # deterministic: resize + centre crop
    num_shards = args.num_shards or max(1, len(source) // 10_000)
    if num_shards > len(source):
        raise ValueError(f"--num_shards {num_shards} is more than the {len(source)} images; lower it.")
    settings = shard_settings(args, folder, len(source), num_shards, image_column, label_column)
    stale = check_output(output, settings, args.overwrite_output_dir)  # on every process, before any change
    accelerator.wait_for_everyone()
    shards_dir = output / "shards"
    if accelerator.is_main_process:
        if stale:
            print(f"--overwrite_output_dir: deleting the earlier codes in {output}: "
                  f"{', '.join(path.name for path in stale)}", file=sys.stderr)
        for path in stale:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        shards_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(output / SETTINGS, settings)
    accelerator.wait_for_everyone()

    decode = PixelBatches(transform, image_column, label_column)

    @torch.no_grad()
    def encode(pixels: torch.Tensor, labels: list[int], rows: dict[str, list]) -> None:
        """Append the codes of `pixels` (and, with --flip, of their mirrors after them) to `rows`."""
        pixels = pixels.to(accelerator.device, tokenizer.dtype)
        for images, is_flipped in [(pixels, False)] + ([(pixels.flip(-1), True)] if args.flip else []):
            rows["codes"] += tokenizer.encode(images).codes.cpu().tolist()
            rows["flipped"] += [is_flipped] * len(images)
            rows["label"] += labels

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
        # images are decoded and resized by --dataloader_num_workers worker processes, encoded here
        loader = torch.utils.data.DataLoader(shard.with_format(None), batch_size=args.batch_size,
                                             num_workers=args.dataloader_num_workers, collate_fn=decode)
        rows = {"codes": [], "label": [], "flipped": []}
        for pixels, labels in tqdm(loader, desc=f"shard {index + 1}/{num_shards}",
                                   disable=not accelerator.is_local_main_process):
            encode(pixels, labels, rows)
        encoded = datasets.Dataset.from_dict(rows, features=features)
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
        info = {"tokenizer": str(folder.resolve()), "num_rows": len(merged), "num_images": len(source),
                "flip": args.flip, "num_latent_tokens": config.num_latent_tokens,
                "codebook_size": config.codebook_size, "label_names": names}
        write_json_atomic(output / "pretokenize.json", info)
        print(f"wrote {len(merged)} code sequences ({len(source)} images{' + flips' if args.flip else ''}) to "
              f"{output / 'data'}")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as error:  # bad input, a missing or unreadable file: one line, exit 2
        print(f"pretokenize: error: {' '.join(str(error).split())}", file=sys.stderr)
        sys.exit(2)
