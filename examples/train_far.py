#!/usr/bin/env python
"""Train FAR (next-frequency prediction with continuous tokens, FAR §4-5) on the latents of a diffusers VAE.

1. Latent cache. The images are encoded ONCE by the VAE (batches of --encode_batch_size, decoded and resized in
   --dataloader_num_workers worker processes; with --flip also each image's mirror) and saved to OUTPUT_DIR/latents
   (or --latents_dir): each process encodes a contiguous share into a temporary directory, the main process
   merges the shares and renames the result into place, so an interrupted run never leaves a cache that looks
   complete. A later run (a resume, or more steps) reuses the cache when its recorded settings (VAE, data, --flip,
   --latent_distribution) match, and refuses a cache made otherwise.
   Stored: the posterior mean times the VAE's scaling_factor (minus its shift_factor, as FARPipeline.encode), and
   with --latent_distribution sample also the posterior std times scaling_factor, from which every training step
   draws a fresh latent (MAR's cached-moments training).
2. Training (FAR / MAR recipe): FARTransformer's loss (random frequency level per sample, frequency-aware mask,
   full-latent target, FTL weights, label dropout for CFG); AdamW (0.9, 0.95), weight decay 0.02, warmup then a
   constant (MAR) or cosine lr, gradient clipping 3.0, EMA 0.9999 (with warm-up). The latent geometry (channels, side)
   comes from the VAE and the classes from the dataset's labels; --preset / --config_overrides set the sizes.
3. Periodic class-conditional sample grids through FARPipeline (TensorBoard and OUTPUT_DIR/samples), and at the end
   a FARPipeline (the VAE, the EMA transformer, the DDPM scheduler) in OUTPUT_DIR/pipeline whose sampling defaults
   (--num_inference_steps, --diffusion_steps, --guidance_scale, ...) are saved in the transformer's config.

Text-to-image (FAR §5.3): with --text_encoder (a local transformers model directory with its tokenizer, frozen) the
transformer is text-conditional only (cross_attention_dim = the encoder's hidden size, num_classes = 0): every batch's
captions are encoded once under torch.no_grad and their last hidden layer enters the blocks through cross-attention.
Captions come from a dataset column (--caption_column, stored in the latent cache) or from the class names
(--caption_template "a photo of a {label}", any data source, also the IDX loader). The saved pipeline holds the text
encoder and its tokenizer.

Data (exactly one): --dataset_name (any `datasets` id with image and label columns), --train_data_dir (an image
folder, one sub-folder per class), --train_data_files (tar shards for webdataset, e.g. "shards/{000000..001281}.tar",
parquet or arrow files) or --idx_data_dir (MNIST-format IDX files). Images are resized (shorter side) and
centre-cropped to the VAE's sample_size.

Streaming (--streaming; not with --idx_data_dir or --latents_dir): no latent cache, as a stream is not stored. Each
process reads its share of the stream (shuffled in a seeded buffer of --shuffle_buffer_size), its images are decoded
in --dataloader_num_workers worker processes and every batch is encoded by the frozen VAE as it trains, exactly as
the cache would have encoded it (posterior mean times scaling_factor minus the shift; --latent_distribution sample
draws from the posterior every step). --flip becomes a random horizontal flip per image. A resumed run continues
the stream at the exact batch. The classes come from the label column's ClassLabel feature; without one, from
--config_overrides' num_classes, else the label column of the whole stream is read once to find the largest label.

Examples:
  # offline, CPU: FAR on Fashion-MNIST latents of a VAE from examples/train_vae.py (--preset fmnist-f4: 8x8x4)
  python examples/train_far.py --vae runs/fmnist-vae/vae --idx_data_dir /usr/share/datasets/fashion-mnist --flip \
      --preset small --use_ema --learning_rate 5e-4 --max_train_steps 10000 --guidance_scale 2.0 \
      --output_dir runs/fmnist-far

  # text-to-image on the same data: captions from the class names, a local text encoder (e.g. a Qwen2 or BERT dir)
  python examples/train_far.py --vae runs/fmnist-vae/vae --idx_data_dir /usr/share/datasets/fashion-mnist --flip \
      --text_encoder models/text-encoder --caption_template "a photo of a {label}" --preset small --use_ema \
      --learning_rate 5e-4 --max_train_steps 10000 --guidance_scale 2.0 --output_dir runs/fmnist-far-text

  # 8 GPUs, bf16: FAR-B on ImageNet latents of a KL-16 VAE (diffusers format)
  accelerate launch --multi_gpu --num_processes 8 --mixed_precision bf16 examples/train_far.py \
      --vae runs/kl-16/vae --dataset_name ILSVRC/imagenet-1k --flip --latent_distribution sample --preset far-b \
      --train_batch_size 128 --learning_rate 1e-4 --scale_lr --use_ema --guidance_scale 3.0 \
      --guidance_schedule linear --temperature 0.8 1.0 --output_dir runs/far-b
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from accelerate.logging import get_logger
from transformers import AutoModel, AutoTokenizer
from diffusers import AutoencoderKL
from datasets.arrow_writer import ArrowWriter
from tqdm.auto import tqdm

from spectralar_hf import FARConfig, FARPipeline, FARTransformer, build_noise_scheduler
from spectralar_hf.pipelines.pipeline_far import check_components, encode_prompt, vae_scale_factor
from spectralar_hf.argtypes import (
    finite_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from spectralar_hf.training.arguments import (
    OptimizationDefaults,
    add_image_source_arguments,
    add_optimization_arguments,
    add_run_arguments,
    check_image_source,
    parse_config_overrides,
    resolve_model_dir,
)
from spectralar_hf.training.checkpointing import run_config
from spectralar_hf.training.data import (
    IMAGE_COLUMNS,
    LABEL_COLUMNS,
    ImageTransform,
    find_column,
    load_training_source,
)
from spectralar_hf.training.streaming import (
    StreamExample,
    StreamLoader,
    load_streamed_source,
    stream_fingerprint,
)
from spectralar_hf.training.scaffold import TrainingRun, run_script, save_image
from spectralar_hf.visualization import prefix_strip

logger = get_logger(__name__)

CACHE_INFO = "cache_info.json"
STATS_ROWS = 10_000  # latents whose std is recorded in cache_info.json (a check that scaling_factor fits)


def diffusion_steps_argument(value: str) -> str | int:
    """`"linear"` or a positive int."""
    if value == "linear":
        return value
    try:
        steps = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'linear' or a positive int, got {value!r}") from None
    if steps < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of steps, got {steps}")
    return steps


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = add_image_source_arguments(parser)
    data.add_argument("--label_column", default=None)
    data.add_argument("--max_train_samples", type=positive_int, default=None, help="use only the first N images")
    data.add_argument("--flip", action="store_true",
                      help="also cache each image's horizontal mirror (--streaming: a random flip per image)")
    data.add_argument("--latents_dir", default=None, help="the latent cache (default: OUTPUT_DIR/latents)")
    data.add_argument("--latent_distribution", default="mean", choices=["mean", "sample"],
                      help="train on the posterior mean, or on a fresh posterior sample every step (caches the std)")
    data.add_argument("--encode_batch_size", type=positive_int, default=256,
                      help="images per VAE batch when caching")
    data.add_argument("--dataloader_num_workers", type=non_negative_int, default=0)

    model = parser.add_argument_group("model")
    model.add_argument("--vae", required=True, help="a diffusers AutoencoderKL directory (or a pipeline with vae/)")
    model.add_argument("--preset", default="small", help="a FARConfig preset (sizes; the latent geometry and classes "
                                                          "come from the VAE and the data)")
    model.add_argument("--config_overrides", default=None,
                       help='JSON of FARConfig fields, e.g. \'{"hidden_size": 128, "diffusion_batch_mul": 2}\'')
    model.add_argument("--pretrained_model_name_or_path", default=None, help="fine-tune this FARTransformer")

    text = parser.add_argument_group("text conditioning (FAR §5.3, text-to-image)")
    text.add_argument("--text_encoder", default=None,
                      help="a local transformers model directory with its tokenizer (frozen); its last hidden layer "
                           "conditions a text-only transformer through cross-attention")
    text.add_argument("--caption_column", default=None, help="a dataset column with one caption per image")
    text.add_argument("--caption_template", default=None,
                      help='captions from the class names, e.g. "a photo of a {label}"')
    text.add_argument("--max_sequence_length", type=positive_int, default=None,
                      help="truncate captions to N tokens (default: the tokenizer's model_max_length)")
    text.add_argument("--validation_prompts", nargs="*", default=None,
                      help="prompts of the sample grids (default: the template filled with the validation classes' "
                           "names, or the first distinct captions)")

    sampling = parser.add_argument_group("sampling defaults saved in the transformer's config (and used for grids)")
    sampling.add_argument("--num_inference_steps", type=positive_int, default=None, help="outer (frequency) steps")
    sampling.add_argument("--diffusion_steps", type=diffusion_steps_argument, default=None,
                          help='inner steps of the head: "linear" (40 -> 100) or an int')
    sampling.add_argument("--guidance_scale", type=finite_float, default=None,
                          help="CFG scale (1.0 = off; FAR: 3.0)")
    sampling.add_argument("--guidance_schedule", choices=["constant", "linear"], default=None)
    sampling.add_argument("--temperature", type=positive_float, nargs="+", default=None,
                          help="a float or START END")
    sampling.add_argument("--mask_schedule", choices=["none", "cosine"], default=None, help="inference mask")
    sampling.add_argument("--sample_clip_range", type=finite_float, default=None,
                          help="clamp the head's x0 prediction to [-R, R] when sampling (default: no clipping)")

    add_optimization_arguments(parser, OptimizationDefaults(
        title="optimisation (defaults: FAR / MAR)", train_batch_size=64, scale_lr_help="lr x total batch / 256 (MAR)",
        adam_beta2=0.95, adam_weight_decay=0.02, lr_scheduler="constant_with_warmup",
        lr_scheduler_help='a diffusers get_scheduler name: "constant_with_warmup" (MAR) or "cosine"', max_grad_norm=3.0,
        ema_decay=0.9999))

    run = add_run_arguments(parser, "save a class-conditional grid every N",
                            overwrite_note=" (a latent cache in it is kept: it is reused only when made with the "
                                           "same settings)")
    run.add_argument("--validation_classes", type=non_negative_int, nargs="*", default=None,
                     help="default: up to 10 classes")
    run.add_argument("--validation_images_per_class", type=positive_int, default=4)
    run.add_argument("--validation_num_inference_steps", type=positive_int, default=None,
                     help="outer steps of the grids (default: the saved sampling default)")
    run.add_argument("--validation_diffusion_steps", type=diffusion_steps_argument, default=None,
                     help="inner steps of the grids (default: the saved sampling default)")
    args = parser.parse_args(argv)

    check_image_source(parser, args)
    if args.streaming and args.latents_dir is not None:
        parser.error("--latents_dir: --streaming caches no latents (each batch is encoded by the VAE as it trains); "
                     "drop --latents_dir, or --streaming to train on a latent cache")
    if not os.path.isdir(args.vae):
        parser.error(f"--vae {args.vae!r} does not exist or is not a directory; train one with "
                     f"examples/train_vae.py or download a diffusers AutoencoderKL")
    if args.max_train_steps < 1 or args.train_batch_size < 1 or args.gradient_accumulation_steps < 1:
        parser.error("--max_train_steps, --train_batch_size and --gradient_accumulation_steps must be >= 1")
    if args.encode_batch_size < 1 or args.validation_images_per_class < 1:
        parser.error("--encode_batch_size and --validation_images_per_class must be >= 1")
    if args.temperature is not None:
        if len(args.temperature) > 2 or min(args.temperature) <= 0:
            parser.error("--temperature takes one value or START END, all > 0")
        args.temperature = args.temperature[0] if len(args.temperature) == 1 else list(args.temperature)
    if args.text_encoder is not None:
        if not os.path.isdir(args.text_encoder):
            parser.error(f"--text_encoder {args.text_encoder!r} does not exist or is not a directory (a local "
                         f"transformers model directory with its tokenizer)")
        if (args.caption_column is None) == (args.caption_template is None):
            parser.error("--text_encoder needs exactly one caption source: --caption_column or --caption_template")
    elif args.caption_column is not None or args.caption_template is not None or args.validation_prompts:
        parser.error("--caption_column, --caption_template and --validation_prompts need --text_encoder")
    if args.caption_template is not None:
        try:
            filled = args.caption_template.format(label="x")
        except (KeyError, IndexError, ValueError):
            filled = None
        if filled is None or "{label}" not in args.caption_template:
            parser.error(f"--caption_template must contain {{label}} and no other fields, got "
                         f"{args.caption_template!r}")
    if args.max_sequence_length is not None and args.max_sequence_length < 1:
        parser.error("--max_sequence_length must be >= 1")
    if args.pretrained_model_name_or_path and args.config_overrides:
        parser.error("--config_overrides builds a new transformer; it cannot change --pretrained_model_name_or_path")
    try:
        args.config_overrides = parse_config_overrides(args.config_overrides, FARConfig)
    except ValueError as error:
        parser.error(str(error))
    return args


# ---------------------------------------------------------------------------------------------------------------
# VAE and data
# ---------------------------------------------------------------------------------------------------------------


def load_vae(path: str) -> tuple[AutoencoderKL, Path]:
    """A diffusers `AutoencoderKL` (in eval mode) from a directory or the vae/ folder of a pipeline directory, and
    the directory it came from."""
    root = Path(path)
    if (root / "model_index.json").is_file():
        root = root / "vae"
    config_file = root / "config.json"
    class_name = None
    if config_file.is_file():
        try:
            class_name = json.loads(config_file.read_text()).get("_class_name")
        except json.JSONDecodeError:
            pass
    if class_name != "AutoencoderKL":
        raise ValueError(f"--vae {path!r} is not a diffusers AutoencoderKL directory (expected a config.json with "
                         f"\"_class_name\": \"AutoencoderKL\"{'' if class_name is None else f', found {class_name!r}'}"
                         f"); pass the vae/ folder written by examples/train_vae.py.")
    return AutoencoderKL.from_pretrained(root).eval(), root


def vae_geometry(vae: AutoencoderKL) -> tuple[int, int, int]:
    """`(image side, latent channels, latent side)` of a VAE."""
    size = vae.config.sample_size
    size = int(size[0] if isinstance(size, (list, tuple)) else size)
    factor = vae_scale_factor(vae)
    if size % factor != 0:
        raise ValueError(f"The VAE's sample_size {size} is not divisible by its downsampling factor {factor}.")
    return size, vae.config.latent_channels, size // factor


def load_source(args: argparse.Namespace) -> tuple[datasets.Dataset, str, str]:
    """The labelled image dataset and its image and label column names."""
    dataset = load_training_source(args)
    image_column = find_column(dataset, args.image_column, IMAGE_COLUMNS, "image")
    label_column = find_column(dataset, args.label_column, LABEL_COLUMNS, "label")
    return dataset, image_column, label_column


def load_stream(args: argparse.Namespace, accelerator):
    """--streaming: this process's share of the shuffled stream (images not decoded), its image and label column
    names and the class names (`stream_class_names`)."""
    source, image_column = load_streamed_source(args, rank=accelerator.process_index,
                                                world_size=accelerator.num_processes)
    label_column = find_column(source, args.label_column, LABEL_COLUMNS, "label")
    return source, image_column, label_column, stream_class_names(args, source, label_column)


def stream_class_names(args: argparse.Namespace, source, label_column: str) -> dict[int, str]:
    """The classes of a stream: `{id: name}` from a `ClassLabel` label column; else `{i: "i"}` for --config_overrides'
    num_classes; else (as `class_names`) up to the largest label, read once from the whole unshuffled stream (the
    label column only); a text-only model from --caption_column needs none."""
    feature = (source.features or {}).get(label_column)
    if isinstance(feature, datasets.ClassLabel):
        return dict(enumerate(feature.names))
    if args.text_encoder is not None and args.caption_column is not None:
        return {}
    count = (args.config_overrides or {}).get("num_classes")
    if count is None:
        logger.warning(f"The stream's label column {label_column!r} has no class names: reading it once through the "
                       f"whole stream to find the number of classes (set --config_overrides '{{\"num_classes\": N}}' "
                       f"to skip this)", main_process_only=True)
        whole, _ = load_streamed_source(args, shuffle=False)
        largest = -1
        for example in whole.select_columns([label_column]):
            label = int(example[label_column])
            if label < 0:
                raise ValueError(f"The label column {label_column!r} has negative labels; expected class ids "
                                 f"0..C-1.")
            largest = max(largest, label)
        count = largest + 1
    return {i: str(i) for i in range(count)}


def load_text_encoder(path: str):
    """A frozen transformers text encoder (`AutoModel`, eval mode, no gradients) and its tokenizer from a local
    directory."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        text_encoder = AutoModel.from_pretrained(path)
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"--text_encoder {path!r} is not a transformers model directory with a tokenizer "
                         f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from None
    return text_encoder.eval().requires_grad_(False), tokenizer


def cache_settings(args: argparse.Namespace, vae: AutoencoderKL, vae_dir: Path, num_images: int) -> dict[str, Any]:
    """What a latent cache depends on (the VAE's config and weights, the data, the flags); a cache is reused only
    when these match."""
    vae_config = {key: value for key, value in dict(vae.config).items() if not key.startswith("_")}
    digest = hashlib.sha256()
    for path in sorted(vae_dir.glob("*.safetensors")) + sorted(vae_dir.glob("*.bin")):
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 24), b""):
                digest.update(chunk)
    settings = {
        "vae_config": json.loads(json.dumps(vae_config, default=list)),
        "vae_weights_sha256": digest.hexdigest(),
        "data": {"dataset_name": args.dataset_name, "dataset_config_name": args.dataset_config_name,
                 "train_data_dir": None if args.train_data_dir is None else str(Path(args.train_data_dir).resolve()),
                 "idx_data_dir": None if args.idx_data_dir is None else str(Path(args.idx_data_dir).resolve()),
                 "split": args.split, "num_images": num_images, "image_column": args.image_column,
                 "label_column": args.label_column},
        "flip": args.flip,
        "latent_distribution": args.latent_distribution,
    }
    if args.caption_column is not None:  # only then are captions cached (caches made without it stay valid)
        settings["caption_column"] = args.caption_column
    if args.train_data_files is not None:  # recorded only when given (caches made before it stay valid)
        settings["data"]["train_data_files"] = [str(Path(pattern).resolve()) for pattern in args.train_data_files]
    return settings


@torch.no_grad()
def posterior_moments(vae: AutoencoderKL, pixels: torch.Tensor, scaling: float, shift: float
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE posterior of `pixels` in the transformer's latent space, float32: `(mean - shift) * scaling` (as
    FARPipeline.encode) and `std * scaling`. The latent cache stores these; --streaming computes them per batch."""
    posterior = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
    return (posterior.mean.float() - shift) * scaling, posterior.std.float() * scaling


def vae_shift(vae: AutoencoderKL) -> float:
    return getattr(vae.config, "shift_factor", None) or 0.0


class CacheBatches:
    """The collate function of the caching loader (it runs in the --dataloader_num_workers worker processes): dataset
    rows -> `(pixels (B, C, S, S) in [-1, 1], labels, captions or None)`, each image resized and centre-cropped."""

    def __init__(self, transform: ImageTransform, image_column: str, label_column: str, caption_column: str | None):
        self.transform, self.image_column = transform, image_column
        self.label_column, self.caption_column = label_column, caption_column

    def __call__(self, rows: list[dict]) -> tuple[torch.Tensor, list[int], list[str] | None]:
        pixels = torch.stack([self.transform(row[self.image_column]) for row in rows])
        captions = None if self.caption_column is None else [str(row[self.caption_column]) for row in rows]
        return pixels, [int(row[self.label_column]) for row in rows], captions


def build_latent_cache(accelerator, args: argparse.Namespace, vae: AutoencoderKL, vae_dir: Path, latents_dir: Path,
                       source: datasets.Dataset, image_column: str, label_column: str) -> datasets.Dataset:
    """Encode `source` once into `latents_dir` (reused when present and made with the same settings)."""
    settings = cache_settings(args, vae, vae_dir, len(source))
    info_file = latents_dir / CACHE_INFO
    if latents_dir.exists():
        if not info_file.is_file():
            raise ValueError(f"{latents_dir} exists but is not a latent cache of this script (no {CACHE_INFO}); "
                             f"remove it or pass another --latents_dir.")
        recorded = json.loads(info_file.read_text())
        if recorded.get("settings") != settings:
            changed = sorted(key for key in settings if recorded.get("settings", {}).get(key) != settings[key])
            raise ValueError(f"The latent cache {latents_dir} was made with other settings ({', '.join(changed)} "
                             f"differ); remove it or pass another --latents_dir.")
        logger.info(f"Reusing the latent cache {latents_dir} ({recorded['num_rows']} latents)")
        return datasets.load_from_disk(str(latents_dir))

    size, channels, side = vae_geometry(vae)
    label_feature = source.features[label_column]
    names = label_feature.names if isinstance(label_feature, datasets.ClassLabel) else None
    transform = ImageTransform(size, vae.config.in_channels)  # deterministic: resize + centre crop
    scaling, shift = vae.config.scaling_factor, vae_shift(vae)
    store_std = args.latent_distribution == "sample"
    vae = vae.to(accelerator.device)

    def encode(pixels: torch.Tensor, labels: list[int], captions: list[str] | None) -> dict[str, list]:
        """The cache rows of a batch: its images, then (with --flip) their mirrors."""
        out: dict[str, list] = {"latents": [], "label": [], "flipped": []}
        if store_std:
            out["latents_std"] = []
        if args.caption_column is not None:
            out["caption"] = []
        for images, flipped in [(pixels, False)] + ([(pixels.flip(-1), True)] if args.flip else []):
            mean, std = posterior_moments(vae, images, scaling, shift)
            out["latents"] += list(mean.cpu().numpy())
            if store_std:
                out["latents_std"] += list(std.cpu().numpy())
            out["label"] += labels
            out["flipped"] += [flipped] * len(images)
            if args.caption_column is not None:
                out["caption"] += captions
        return out

    shape = (channels, side, side)
    features = {"latents": datasets.Array3D(shape=shape, dtype="float32"),
                "label": datasets.ClassLabel(names=names) if names else datasets.Value("int64"),
                "flipped": datasets.Value("bool")}
    if store_std:
        features["latents_std"] = datasets.Array3D(shape=shape, dtype="float32")
    if args.caption_column is not None:
        features["caption"] = datasets.Value("string")
    partial = latents_dir.parent / f".{latents_dir.name}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)  # left by a run killed while caching
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    index, count = accelerator.process_index, accelerator.num_processes
    share = source.shard(count, index, contiguous=True)
    # images decoded and resized by --dataloader_num_workers worker processes, encoded here, written batch by batch
    loader = torch.utils.data.DataLoader(share.with_format(None), batch_size=args.encode_batch_size,
                                         num_workers=args.dataloader_num_workers,
                                         collate_fn=CacheBatches(transform, image_column, label_column,
                                                                 args.caption_column))
    arrow_file = partial / f"encoded-{index:05d}.arrow"
    with ArrowWriter(features=datasets.Features(features), path=str(arrow_file)) as writer:
        for pixels, labels, captions in tqdm(loader, desc=f"encoding latents ({index + 1}/{count})",
                                             disable=not accelerator.is_local_main_process):
            writer.write_batch(encode(pixels, labels, captions))
        writer.finalize()
    datasets.Dataset.from_file(str(arrow_file)).save_to_disk(str(partial / f"share-{index:05d}"))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        merged = datasets.concatenate_datasets(
            [datasets.load_from_disk(str(partial / f"share-{i:05d}")) for i in range(count)])
        merged.save_to_disk(str(partial / "merged"))
        info = {"settings": settings, "num_rows": len(merged), "scaling_factor": scaling, "shift_factor": shift,
                "latent_std": float(np.asarray(merged.select(range(min(len(merged), STATS_ROWS)))
                                               .with_format("numpy")["latents"]).std()),
                "label_names": names}
        (partial / "merged" / CACHE_INFO).write_text(json.dumps(info, indent=2))
        latents_dir.parent.mkdir(parents=True, exist_ok=True)
        (partial / "merged").rename(latents_dir)
        shutil.rmtree(partial, ignore_errors=True)
        logger.info(f"Cached {len(merged)} latents in {latents_dir} (std of the scaled latents: "
                    f"{info['latent_std']:.3f})")
    accelerator.wait_for_everyone()
    return datasets.load_from_disk(str(latents_dir))


# ---------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------


def class_names(dataset: datasets.Dataset, label_column: str) -> dict[int, str]:
    """`{id: name}` from a `ClassLabel` column, else `{i: "i"}` up to the largest label."""
    feature = dataset.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return dict(enumerate(feature.names))
    labels = np.asarray(dataset[label_column])
    if labels.min() < 0:
        raise ValueError(f"The label column {label_column!r} has negative labels; expected class ids 0..C-1.")
    return {i: str(i) for i in range(int(labels.max()) + 1)}


def build_model(args: argparse.Namespace, vae: AutoencoderKL, names: dict[int, str],
                cross_attention_dim: int | None = None) -> FARTransformer:
    """A FARTransformer whose latent geometry comes from the VAE and whose classes come from the data, or, with a
    text encoder of hidden size `cross_attention_dim`, a text-only one (`num_classes = 0`)."""
    if args.pretrained_model_name_or_path:
        root = resolve_model_dir(args.pretrained_model_name_or_path, "--pretrained_model_name_or_path",
                                 "FARTransformer", model_type="far", pipeline_class="FARPipeline",
                                 subfolder="transformer", hint="pass a transformer saved by this script")
        model = FARTransformer.from_pretrained(root)
        if model.config.cross_attention_dim != cross_attention_dim:
            raise ValueError(f"The pretrained transformer has cross_attention_dim {model.config.cross_attention_dim} "
                             f"but the text encoder's hidden size is {cross_attention_dim}"
                             + (" (no --text_encoder given)." if cross_attention_dim is None else "."))
        if cross_attention_dim is None and model.config.num_classes < len(names):
            raise ValueError(f"The pretrained transformer has {model.config.num_classes} classes but the data has "
                             f"{len(names)}.")
        return model
    _, channels, side = vae_geometry(vae)
    overrides = dict(args.config_overrides or {})
    num_classes = len(names) if cross_attention_dim is None else 0
    for name, value in (("latent_channels", channels), ("latent_size", side), ("num_classes", num_classes)):
        if name in overrides and overrides[name] != value:
            where = ("a text-conditional model (--text_encoder) has" if cross_attention_dim is not None else
                     "data has") if name == "num_classes" else "VAE makes latents with"
            raise ValueError(f"--config_overrides sets {name} = {overrides[name]} but the {where} {value}; the "
                             f"VAE's latents are {channels} x {side} x {side}.")
    fields = dict(latent_channels=channels, latent_size=side, num_classes=num_classes,
                  id2label=names if cross_attention_dim is None else None)
    if cross_attention_dim is not None:
        fields["cross_attention_dim"] = cross_attention_dim
    fields.update(overrides)
    try:
        config = FARConfig.from_preset(args.preset, **fields)
    except (TypeError, ValueError) as error:
        raise ValueError(f"The FAR config does not fit {channels} x {side} x {side} latents: {error}") from None
    return FARTransformer(config)


def set_sampling_defaults(config: FARConfig, args: argparse.Namespace) -> None:
    """Write the sampling flags into the transformer's config (FARPipeline's defaults); checked."""
    values = {"num_inference_steps": args.num_inference_steps, "diffusion_steps": args.diffusion_steps,
              "guidance_scale": args.guidance_scale, "guidance_schedule": args.guidance_schedule,
              "temperature": args.temperature, "inference_mask_schedule": args.mask_schedule,
              "sample_clip_range": args.sample_clip_range}
    for name, value in values.items():
        if value is not None:
            setattr(config, name, value)
    if config.sample_clip_range is not None and not config.sample_clip_range > 0:
        raise ValueError(f"--sample_clip_range must be > 0, got {config.sample_clip_range}.")
    if not 1 <= config.num_inference_steps <= config.num_levels:
        raise ValueError(f"--num_inference_steps must lie in [1, num_levels = {config.num_levels}], got "
                         f"{config.num_inference_steps}.")
    if config.guidance_scale != 1.0 and not config.has_null_class:
        raise ValueError("--guidance_scale != 1 needs a null class: the config has class_dropout_prob = 0.")


# ---------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # before anything is written: an earlier run in output_dir is resumed, deleted (--overwrite_output_dir) or kept
    run = TrainingRun(args, "train_far", outputs=("pipeline",), progress_name="far")
    accelerator = run.accelerator
    latents_dir = Path(args.latents_dir) if args.latents_dir else run.output_dir / "latents"
    # Everything that can be wrong with the arguments is checked before the (possibly long) latent caching.
    vae, vae_dir = load_vae(args.vae)
    if args.streaming:  # this process's share of the stream; no latent cache
        source, image_column, label_column, names = load_stream(args, accelerator)
    else:
        source, image_column, label_column = load_source(args)
        names = class_names(source, label_column)
    text_encoder = tokenizer = None
    if args.text_encoder is not None:
        text_encoder, tokenizer = load_text_encoder(args.text_encoder)
        if args.caption_column is not None:
            find_column(source, args.caption_column, (), "caption")
    torch.manual_seed(args.seed)  # the initial weights (the same on every process)
    hidden_size = None if text_encoder is None else getattr(text_encoder.config.get_text_config(), "hidden_size", None)
    if text_encoder is not None and hidden_size is None:
        raise ValueError(f"Cannot read the hidden size of the text encoder {args.text_encoder!r} (no hidden_size in "
                         f"its config).")
    model = build_model(args, vae, names, hidden_size)
    architecture = model.config.to_dict()  # before the sampling defaults, which a resumed run may change
    set_sampling_defaults(model.config, args)
    noise_scheduler = build_noise_scheduler(model.config)
    # latent channels and side of the VAE vs the transformer; the text encoder's hidden size vs cross_attention_dim
    check_components(vae, model, noise_scheduler, text_encoder, tokenizer)
    wrong = [c for c in args.validation_classes or [] if c >= len(names)]
    if wrong:
        raise ValueError(f"--validation_classes {wrong}: the data has {len(names)} classes (0..{len(names) - 1}).")
    captions = None if args.caption_template is None else {
        index: args.caption_template.format(label=name) for index, name in names.items()}
    prompts = None if text_encoder is None else validation_prompts(args, names, caption_head(args, source))
    if not args.streaming:
        rows = len(source) * (2 if args.flip else 1)
        if rows < args.train_batch_size:
            raise ValueError(f"The dataset gives {rows} latents, fewer than one batch of {args.train_batch_size}; "
                             f"lower --train_batch_size or add data.")
    # seeded again (as by TrainingRun): the training's random draws do not depend on what loading and the
    # initialisation drew
    run.reseed()

    scaling, shift = vae.config.scaling_factor, vae_shift(vae)
    if args.streaming:
        # decoded (resized, centre-cropped, --flip: flipped at random) in the workers, encoded by the VAE per batch
        size = vae_geometry(vae)[0]
        example = StreamExample(ImageTransform(size, vae.config.in_channels, random_flip=args.flip), image_column,
                                label_column, (args.caption_column,) if args.caption_column else ())
        loader = StreamLoader(source, example, args.train_batch_size, seed=args.seed, rank=accelerator.process_index,
                              num_workers=args.dataloader_num_workers,
                              fingerprint=stream_fingerprint(args, accelerator.num_processes))
    else:
        latents = build_latent_cache(accelerator, args, vae, vae_dir, latents_dir, source, image_column, label_column)
        columns = ["latents", "label"] + (["latents_std"] if args.latent_distribution == "sample" else [])
        loader = torch.utils.data.DataLoader(
            latents.with_format("torch", columns=columns + (["caption"] if args.caption_column else []),
                                output_all_columns=False), batch_size=args.train_batch_size, shuffle=True,
            drop_last=True, num_workers=args.dataloader_num_workers,
            generator=torch.Generator().manual_seed(args.seed),
        )
    optimizer, scheduler = run.optimizer_and_scheduler(model, no_decay_prefixes=("diffusion_head.",))
    config_record = run_config("train_far.py", architecture, use_ema=args.use_ema,
                               grad_scaler=accelerator.scaler is not None)
    model, optimizer, loader, scheduler = run.prepare(model, optimizer, loader, scheduler,
                                                      config_record=config_record, model_cls=FARTransformer)
    vae.to(accelerator.device)
    if text_encoder is not None:
        text_encoder.to(accelerator.device)

    model.train()
    for batch in run.batches(loader):
        if args.streaming:  # the latents the cache would hold, of this batch's images
            x, x_std = posterior_moments(vae, batch["pixel_values"], scaling, shift)
            labels, caption_key = batch["labels"], args.caption_column
        else:
            x, x_std = batch["latents"].float(), batch.get("latents_std")
            labels, caption_key = batch["label"], "caption"
        if args.latent_distribution == "sample":
            x = x + x_std.float() * torch.randn_like(x)
        condition = {"class_labels": labels.long()}
        if text_encoder is not None:  # frozen: encoded once per batch, no gradients
            texts = list(batch[caption_key]) if captions is None else [captions[int(i)] for i in labels]
            states, mask = encode_prompt(text_encoder, tokenizer, texts, args.max_sequence_length)
            condition = {"encoder_hidden_states": states, "encoder_attention_mask": mask}
        with accelerator.accumulate(model):
            output = model(x, **condition)
            terms = {"mse_loss": output.mse_loss, "vb_loss": output.vb_loss, "loss": output.loss}
            run.check_finite(terms)  # before the update
            run.backward_and_step(output.loss, model, optimizer, scheduler)
        if not run.sync_step():
            continue
        run.end_step(model, lambda: {"loss": output.loss.detach().item(), "mse_loss": output.mse_loss.detach().item(),
                                     "vb_loss": output.vb_loss.detach().item()}, scheduler)
        if run.validation_due:
            with run.full_model(model) as transformer:  # every rank (sharded weights are gathered)
                if transformer is not None:
                    log_samples(accelerator, transformer, vae, noise_scheduler, args, run.output_dir,
                                run.global_step, text_encoder, tokenizer, prompts)

    with run.full_model(model, final=True) as final:
        if final is not None:
            pipeline = FARPipeline(vae=vae, transformer=final, scheduler=noise_scheduler, text_encoder=text_encoder,
                                   tokenizer=tokenizer)
            pipeline.save_pretrained(run.output_dir / "pipeline")
            log_samples(accelerator, final, vae, noise_scheduler, args, run.output_dir, run.global_step,
                        text_encoder, tokenizer, prompts)
            if args.push_to_hub:
                hub_datasets = [args.dataset_name] if args.dataset_name else None
                pipeline.push_to_hub(args.hub_model_id or run.output_dir.name, token=args.hub_token,
                                     datasets=hub_datasets)
    run.end()


STREAM_CAPTION_HEAD = 1_000  # --streaming: the validation captions are looked for among the stream's first examples


def caption_head(args: argparse.Namespace, source):
    """The captions the default validation prompts are taken from (with --caption_column): the dataset's column, or
    the first `STREAM_CAPTION_HEAD` captions of the unshuffled stream (the caption column only)."""
    if args.caption_column is None:
        return ()
    if not args.streaming:
        return source[args.caption_column]
    head, _ = load_streamed_source(args, shuffle=False)
    return (example[args.caption_column]
            for _, example in zip(range(STREAM_CAPTION_HEAD), head.select_columns([args.caption_column])))


def validation_prompts(args: argparse.Namespace, names: dict[int, str], captions) -> list[str]:
    """The prompts of the text-to-image grids: --validation_prompts, else the template filled with the validation
    classes' names, else the first (up to 10) distinct `captions` of the data."""
    if args.validation_prompts:
        return list(args.validation_prompts)
    if args.caption_template is not None:
        classes = args.validation_classes or list(range(min(len(names), 10)))
        return [args.caption_template.format(label=names.get(c, str(c))) for c in classes]
    prompts: list[str] = []
    for caption in captions:
        if str(caption) not in prompts:
            prompts.append(str(caption))
        if len(prompts) == 10:
            break
    return prompts


@torch.no_grad()
def log_samples(accelerator, transformer: FARTransformer, vae, noise_scheduler, args, output_dir: Path, step: int,
                text_encoder=None, tokenizer=None, prompts: list[str] | None = None) -> None:
    """A labelled grid of class-conditional (or, with a text encoder, text-conditional: one row per prompt of
    `validation_prompts`) samples (fixed seed) through FARPipeline, from `transformer` (the full model with the EMA
    weights, in eval mode)."""
    pipeline = FARPipeline(vae=vae, transformer=transformer, scheduler=noise_scheduler, text_encoder=text_encoder,
                           tokenizer=tokenizer)
    pipeline.set_progress_bar_config(disable=True)
    config = transformer.config
    per_class = args.validation_images_per_class
    settings = dict(num_inference_steps=args.validation_num_inference_steps,
                    diffusion_steps=args.validation_diffusion_steps, generator=torch.Generator().manual_seed(args.seed))
    if text_encoder is not None:
        rows = prompts
        images = pipeline(prompt=[p for p in rows for _ in range(per_class)],
                          max_sequence_length=args.max_sequence_length, **settings).images
        row_labels = [p if len(p) <= 40 else p[:37] + "..." for p in rows]
    else:
        rows = args.validation_classes or list(range(min(config.num_classes, 10)))
        images = pipeline([c for c in rows for _ in range(per_class)], **settings).images
        names = config.id2label or {}
        row_labels = [str(names.get(c, c)).split(",")[0] for c in rows]
    grid = prefix_strip([images[i * per_class : (i + 1) * per_class] for i in range(len(rows))],
                        row_labels=row_labels, min_cell=64)
    save_image(accelerator, grid, output_dir, "samples", step)


if __name__ == "__main__":
    run_script(main, __file__)
