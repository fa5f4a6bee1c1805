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

Data: --dataset_name, --train_data_dir (an image folder), --train_data_files (tar shards for webdataset, e.g.
"shards/{000000..001281}.tar", parquet or arrow files) or --idx_data_dir. With --streaming (not with --idx_data_dir)
nothing is downloaded or prepared first: each process reads its share of the unshuffled stream, decodes it in
--dataloader_num_workers worker processes and writes its codes in chunks of --stream_chunk_rows images to
`OUTPUT_DIR/shards/rank-XXXXX/chunk-XXXXX`, each saved through a temporary directory and a rename together with the
stream position after it; an interrupted run continues after the last finished chunk of each process (the same codes,
nothing repeated or lost). The settings then also record the number of processes, --batch_size and
--dataloader_num_workers, which fix the order of the stream. The merged `data` holds every process's chunks in rank
order.

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
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from spectralar_hf import SpectralTokenizer
from spectralar_hf.argtypes import non_negative_int, positive_int
from spectralar_hf.training.arguments import add_image_source_arguments, check_image_source, resolve_model_dir
from spectralar_hf.training.checkpointing import model_fingerprint, write_json_atomic
from spectralar_hf.training.data import (
    IMAGE_COLUMNS,
    LABEL_COLUMNS,
    ImageTransform,
    find_column,
    load_training_source,
)
from spectralar_hf.training.streaming import StreamExample, StreamLoader, load_streamed_source


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
                        help="default: about 10,000 images per shard (not with --streaming)")
    parser.add_argument("--stream_chunk_rows", type=positive_int, default=10_000,
                        help="--streaming: images per chunk of codes each process saves (an interrupted run resumes "
                             "after the last finished chunk)")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--overwrite_output_dir", action="store_true",
                        help="delete the shards and data of an earlier run made with other settings and redo them")
    args = parser.parse_args(argv)
    check_image_source(parser, args)
    if args.streaming and args.num_shards is not None:
        parser.error("--num_shards divides a dataset of known length; with --streaming each process writes its share "
                     "of the stream in chunks of --stream_chunk_rows images: drop --num_shards")
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
        # ImageTransform takes PIL images, arrays (IDX) and undecoded {"bytes", "path"} dicts
        pixels = torch.stack([self.transform(row[self.image_column]) for row in rows])
        return pixels, [int(row[self.label_column]) for row in rows]


def shard_settings(args: argparse.Namespace, tokenizer_folder: Path, num_images: int | None, num_shards: int | None,
                   image_column: str, label_column: str, world_size: int = 1) -> dict:
    """What the shards depend on; a later run into the same folder resumes only when these are equal. With
    --streaming the number of images is not known beforehand (`None`, as the shard count) and the order of each
    process's stream depends on the number of processes, --batch_size and --dataloader_num_workers (recorded).
    --train_data_files and --streaming are recorded only when given, so older output folders still resume."""
    def folder(value):
        return None if value is None else str(Path(value).resolve())

    settings = {"tokenizer_sha256": model_fingerprint(tokenizer_folder), "tokenizer": str(tokenizer_folder.resolve()),
                "dataset_name": args.dataset_name, "dataset_config_name": args.dataset_config_name,
                "train_data_dir": folder(args.train_data_dir), "idx_data_dir": folder(args.idx_data_dir),
                "split": args.split, "max_samples": args.max_samples, "num_images": num_images,
                "image_column": image_column, "label_column": label_column, "flip": args.flip,
                "num_shards": num_shards}
    if args.train_data_files is not None:
        settings["train_data_files"] = [folder(pattern) for pattern in args.train_data_files]
    if args.streaming:
        settings["streaming"] = {"world_size": world_size, "batch_size": args.batch_size,
                                 "dataloader_num_workers": args.dataloader_num_workers}
    return settings


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
        keys = list(compared(settings)) + [key for key in compared(recorded) if key not in settings]
        changed = [key for key in keys if recorded.get(key) != settings.get(key)]
        named = ", ".join(f"{key} {recorded.get(key)!r} -> {settings.get(key)!r}" if key != "tokenizer_sha256" else
                          f"the tokenizer's weights or config (the codes were made by {recorded.get('tokenizer')})"
                          for key in changed)
        reason = f"holds codes made with other settings ({named})"
    raise ValueError(f"--output_dir {str(output)!r} {reason}; redo them with --overwrite_output_dir, or choose "
                     f"another --output_dir.")


POSITION = "stream_position.json"  # in each chunk of a streamed run: the stream position after it
DONE = "done.json"  # in a process's folder of a streamed run: its stream ended, all its chunks are written


def save_rows(final: Path, rows: dict[str, list], features: datasets.Features, position: dict | None = None) -> None:
    """Save a shard (or a streamed run's chunk, with the stream `position` after it) of codes atomically: through a
    temporary directory renamed to `final`."""
    partial = final.parent / f".{final.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(partial))
    if position is not None:
        write_json_atomic(partial / POSITION, position)
    partial.rename(final)


def finished_chunks(folder: Path) -> list[Path]:
    """A process's finished chunks, in order (temporary directories of an interrupted save are not)."""
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if path.is_dir() and path.name.startswith("chunk-"))


def encode_stream(args: argparse.Namespace, accelerator, source, make_example: StreamExample, encode,
                  features: datasets.Features, folder: Path) -> None:
    """Encode this process's share of the stream into chunks in `folder`, after the last finished chunk of an
    earlier run (its stream position is loaded: the examples before it are read, not decoded)."""
    if (folder / DONE).is_file():
        return  # finished in an earlier run
    folder.mkdir(parents=True, exist_ok=True)
    loader = StreamLoader(source, make_example, args.batch_size, seed=0, rank=accelerator.process_index,
                          num_workers=args.dataloader_num_workers, fingerprint={}, drop_last=False)
    chunks = finished_chunks(folder)
    images = 0
    if chunks:
        state = json.loads((chunks[-1] / POSITION).read_text())
        loader.position.load_list(state["position"])
        images = int(state["images"])
        print(f"process {accelerator.process_index}: resuming after {len(chunks)} chunks ({images} images)",
              file=sys.stderr)
    index = len(chunks)

    def new_rows() -> dict[str, list]:
        return {"codes": [], "label": [], "flipped": []}

    rows, pending = new_rows(), 0
    progress = tqdm(desc=f"stream (process {accelerator.process_index})", unit=" images", initial=images,
                    disable=not accelerator.is_local_main_process)
    for batch, marker in loader:
        labels = batch["labels"].tolist()
        encode(batch["pixel_values"], labels, rows)
        loader.consume(marker)
        pending += len(labels)
        progress.update(len(labels))
        if pending >= args.stream_chunk_rows:
            images += pending
            save_rows(folder / f"chunk-{index:05d}", rows, features,
                      {"position": loader.position.to_list(), "images": images})
            index, rows, pending = index + 1, new_rows(), 0
    progress.close()
    if pending:
        images += pending
        save_rows(folder / f"chunk-{index:05d}", rows, features,
                  {"position": loader.position.to_list(), "images": images})
        index += 1
    write_json_atomic(folder / DONE, {"images": images, "chunks": index})


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    accelerator = Accelerator()
    output = Path(args.output_dir)
    folder = tokenizer_dir(args.tokenizer)
    tokenizer = SpectralTokenizer.from_pretrained(folder).eval().to(accelerator.device)
    config = tokenizer.config
    rank, world_size = accelerator.process_index, accelerator.num_processes
    if args.streaming:
        # this process's share of the unshuffled stream, images not decoded (the workers decode them)
        source, image_column = load_streamed_source(args, "max_samples", rank=rank, world_size=world_size,
                                                    shuffle=False)
        label_column = find_column(source, args.label_column, LABEL_COLUMNS, "label")
        num_images = num_shards = None
    else:
        source = load_training_source(args, "max_samples")
        image_column = find_column(source, args.image_column, IMAGE_COLUMNS, "image")
        label_column = find_column(source, args.label_column, LABEL_COLUMNS, "label")
        num_images = len(source)
        num_shards = args.num_shards or max(1, len(source) // 10_000)
        if num_shards > len(source):
            raise ValueError(f"--num_shards {num_shards} is more than the {len(source)} images; lower it.")
    label_feature = (source.features or {}).get(label_column)
    names = label_feature.names if isinstance(label_feature, datasets.ClassLabel) else None
    transform = ImageTransform(config.image_size, config.num_channels)  # deterministic: resize + centre crop
    settings = shard_settings(args, folder, num_images, num_shards, image_column, label_column, world_size)
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
    if args.streaming:
        encode_stream(args, accelerator, source, StreamExample(transform, image_column, label_column), encode,
                      features, shards_dir / f"rank-{rank:05d}")
    else:
        decode = PixelBatches(transform, image_column, label_column)
        for index in range(rank, num_shards, world_size):
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
            save_rows(final, rows, features)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if args.streaming:  # every process's chunks, in rank order
            folders = [shards_dir / f"rank-{r:05d}" for r in range(world_size)]
            parts = [chunk for path in folders for chunk in finished_chunks(path)]
            num_images = sum(json.loads((path / DONE).read_text())["images"] for path in folders)
            if not parts:
                raise ValueError("The stream gave no images; check the data source, --split and --max_samples.")
        else:
            parts = [shards_dir / f"shard-{i:05d}" for i in range(num_shards)]
        merged = datasets.concatenate_datasets([datasets.load_from_disk(str(path)) for path in parts])
        partial = output / ".data.partial"
        shutil.rmtree(partial, ignore_errors=True)
        merged.save_to_disk(str(partial))
        shutil.rmtree(output / "data", ignore_errors=True)
        partial.rename(output / "data")
        info = {"tokenizer": str(folder.resolve()), "num_rows": len(merged), "num_images": num_images,
                "flip": args.flip, "num_latent_tokens": config.num_latent_tokens,
                "codebook_size": config.codebook_size, "label_names": names}
        write_json_atomic(output / "pretokenize.json", info)
        print(f"wrote {len(merged)} code sequences ({num_images} images{' + flips' if args.flip else ''}) to "
              f"{output / 'data'}")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as error:  # bad input, a missing or unreadable file: one line, exit 2
        print(f"pretokenize: error: {' '.join(str(error).split())}", file=sys.stderr)
        sys.exit(2)
