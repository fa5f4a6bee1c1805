#!/usr/bin/env python
"""Train (or fine-tune) a diffusers `AutoencoderKL`, the continuous tokenizer of FAR / MAR, with accelerate.

Loss (LDM's KL autoencoder recipe, which MAR's KL-16 follows):
    L1 (or L2) reconstruction + --kl_weight * KL  [+ perceptual (LPIPS)]  [+ hinge GAN with a patch discriminator
    from --discriminator_start, + LeCAM]
The GAN term has the weight --gan_weight, times VQGAN / LDM's adaptive weight with --adaptive_gan_weight (as in
train_tokenizer.py).

The KL term is LDM's: the KL of the posterior to N(0, I) summed over the latent, per image. LDM also sums the
reconstruction loss over the pixels of an image; here the reconstruction is a per-pixel mean, so the KL is divided
by the number of pixel values of an image (C x H x W). The ratio of the two terms is then LDM's, and
--kl_weight 1e-6 (the default, LDM's and MAR's) means what it means there.

Model (one of):
  --preset NAME              a configuration below, optionally changed by --vae_config / --latent_channels /
                             --resolution / --num_channels
  --pretrained_model_name_or_path DIR   any diffusers-format AutoencoderKL (or a pipeline with a vae/ folder)

Presets (spectralar_hf.vae_presets; LDM / MAR's KL-16 design: DownEncoderBlock2D stages, mid-block attention,
downsampling 2 ** (stages - 1)):
  kl-16       MAR's KL-16 exactly (66.46M parameters; conversion/convert_mar_vae.py loads MAR's kl16.ckpt into it):
              256 px RGB, 5 stages (128, 128, 256, 256, 512), 2 residual blocks, self-attention after each block of
              the last encoder stage -> 16 x 16 x 16 latents; scaling_factor 0.2325 (MAR's), replaced after training
              by the measured one unless --scaling_factor is given
  fmnist-f4   KL-16 scaled down for 32 px grayscale: 3 stages (32, 64, 128), 1 block -> 8 x 8 x 4 latents
              (the geometry of the FAR "small" / "tiny" presets)
  fmnist-f8   4 stages (32, 64, 128, 128) -> 4 x 4 x 8 latents
  tiny        3 stages (8, 8, 8), for tests -> 8 x 8 x 4 latents of 32 px grayscale images

The saved VAE's `scaling_factor` is 1 / std of its latents: after training, the EMA (or final) weights encode
--scaling_samples images (a fixed random subset, centre-cropped, no augmentation) and the standard deviation over
all values of the posterior means is measured (LDM's rule, which gave Stable Diffusion's 0.18215 and MAR's 0.2325).
Latents times `scaling_factor` then have unit variance, which the diffusion head of FAR assumes. The measured mean,
std and factor are also written to OUTPUT_DIR/latent_stats.json. --scaling_factor F keeps a given value instead.

Data (exactly one): --dataset_name (any `datasets` id with an image column), --train_data_dir (an image folder),
--train_data_files (tar shards for webdataset, e.g. "shards/{000000..001281}.tar", parquet or arrow files) or
--idx_data_dir (MNIST-format IDX files, e.g. Fashion-MNIST from Debian's dataset-fashion-mnist). Images are resized
(shorter side) and cropped to the VAE's sample_size; --random_crop / --random_flip are seeded by (seed, epoch, image
index), so a resumed run sees the same images as an uninterrupted one. --streaming reads the first three without
downloading them first: each process reads its share, shuffled in a seeded buffer (--shuffle_buffer_size), decoded
in --dataloader_num_workers workers, and a resumed run continues with the exact batch; the fixed validation and
evaluation images are then the first ones of the stream.

Examples:
  # offline, CPU: a Fashion-MNIST VAE (8 x 8 x 4 latents) for examples/train_far.py
  python examples/train_vae.py --idx_data_dir /usr/share/datasets/fashion-mnist --preset fmnist-f4 \
      --learning_rate 1e-3 --use_ema --max_train_steps 3000 --output_dir runs/fmnist-vae

  # 8 GPUs, bf16: MAR's KL-16 on ImageNet with perceptual and GAN losses
  accelerate launch --multi_gpu --num_processes 8 --mixed_precision bf16 examples/train_vae.py \
      --dataset_name ILSVRC/imagenet-1k --preset kl-16 --train_batch_size 16 --random_crop --random_flip \
      --perceptual_weight 1.0 --lpips_weights weights/lpips_vgg16.safetensors --gan_weight 0.5 \
      --discriminator_start 50000 --use_ema --output_dir runs/kl-16
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.logging import get_logger
from diffusers import AutoencoderKL

from spectralar_hf.argtypes import non_negative_float, non_negative_int, positive_float, positive_int
from spectralar_hf.training.arguments import (
    OptimizationDefaults,
    add_image_source_arguments,
    add_optimization_arguments,
    add_run_arguments,
    check_config_keys,
    check_image_source,
    resolve_model_dir,
)
from spectralar_hf.training.checkpointing import run_config
from spectralar_hf.training.data import load_training_images
from spectralar_hf.training.gan import AutoencoderGAN, add_gan_arguments, check_gan_arguments
from spectralar_hf.training.scaffold import TrainingRun, run_script, save_image
from spectralar_hf.vae_presets import VAE_PRESETS
from spectralar_hf.visualization import prefix_strip

logger = get_logger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = add_image_source_arguments(parser)
    data.add_argument("--max_train_samples", type=positive_int, default=None, help="use only the first N images")
    data.add_argument("--random_crop", action="store_true", help="random instead of centre crops")
    data.add_argument("--random_flip", action="store_true", help="random horizontal flips")
    data.add_argument("--dataloader_num_workers", type=non_negative_int, default=0)

    model = parser.add_argument_group("model")
    model.add_argument("--preset", type=str, default="fmnist-f4", choices=sorted(VAE_PRESETS),
                       help="an AutoencoderKL configuration (see above)")
    model.add_argument("--vae_config", type=str, default=None,
                       help='AutoencoderKL fields over the preset: a JSON file or inline JSON, e.g. '
                            '\'{"block_out_channels": [64, 128, 256], "layers_per_block": 2}\'')
    model.add_argument("--latent_channels", type=positive_int, default=None,
                       help="latent channels (default: the preset's)")
    model.add_argument("--resolution", type=positive_int, default=None, help="image side = the VAE's sample_size")
    model.add_argument("--num_channels", type=int, default=None, choices=[1, 3], help="image channels (in = out)")
    model.add_argument("--pretrained_model_name_or_path", type=str, default=None,
                       help="fine-tune this diffusers AutoencoderKL (a directory, or a pipeline with vae/)")
    model.add_argument("--deterministic_posterior", action="store_true",
                       help="decode the posterior mean instead of a sample during training")

    losses = parser.add_argument_group("losses (LDM / MAR: L1, KL 1e-6, LPIPS 1.0, GAN 0.5 after warm-up)")
    losses.add_argument("--reconstruction_loss", type=str, default="l1", choices=["l1", "l2"])
    losses.add_argument("--kl_weight", type=non_negative_float, default=1e-6,
                        help="weight of the per-image KL divided by C*H*W (see above; LDM / MAR: 1e-6)")
    add_gan_arguments(losses, discriminator_channels=64)

    add_optimization_arguments(parser, OptimizationDefaults())

    scaling = parser.add_argument_group("latent scaling (saved as the VAE's scaling_factor)")
    scaling.add_argument("--scaling_samples", type=positive_int, default=1000,
                         help="images encoded to measure the latent std (scaling_factor = 1 / std)")
    scaling.add_argument("--scaling_factor", type=positive_float, default=None,
                         help="use this value instead of measuring")

    run = add_run_arguments(parser, "save a reconstruction grid every N steps")
    run.add_argument("--validation_images", type=positive_int, default=8, help="images in the reconstruction grids")
    args = parser.parse_args(argv)

    check_image_source(parser, args)
    check_gan_arguments(parser, args)
    if args.scaling_samples < 2:
        parser.error("--scaling_samples must be >= 2 (a standard deviation needs two values)")
    if args.pretrained_model_name_or_path and args.vae_config:
        parser.error("--vae_config builds a new VAE; it cannot change --pretrained_model_name_or_path")
    if args.vae_config is not None:
        try:
            args.vae_config = read_json_argument(args.vae_config)
        except ValueError as error:
            parser.error(f"--vae_config: {error}")
        try:  # a saved config.json may be passed whole: its bookkeeping keys are allowed
            check_config_keys(args.vae_config, AutoencoderKL, "--vae_config",
                              extra={"_class_name", "_diffusers_version", "_name_or_path"})
        except ValueError as error:
            parser.error(str(error))
    return args


def read_json_argument(value: str) -> dict[str, Any]:
    """A JSON object given inline or as a path to a .json file."""
    text = Path(value).read_text() if os.path.isfile(value) else value
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{value!r} is neither a JSON file nor valid inline JSON ({error.msg}).") from None
    if not isinstance(parsed, dict):
        raise ValueError(f"expected a JSON object of AutoencoderKL fields, got {type(parsed).__name__}.")
    return parsed


def vae_config_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The AutoencoderKL keyword arguments: the preset, then --vae_config, then the single-field flags; checked."""
    config = copy.deepcopy(VAE_PRESETS[args.preset])
    config.update(args.vae_config or {})
    for name in ("_class_name", "_diffusers_version", "_name_or_path"):  # a saved config.json may be passed whole
        config.pop(name, None)
    if args.latent_channels is not None:
        config["latent_channels"] = args.latent_channels
    if args.resolution is not None:
        config["sample_size"] = args.resolution
    if args.num_channels is not None:
        config["in_channels"] = config["out_channels"] = args.num_channels
    def positive_ints(value) -> bool:
        return isinstance(value, list) and len(value) > 0 and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)

    if not positive_ints(config.get("block_out_channels")):
        raise ValueError(f"block_out_channels must be a non-empty list of positive ints, got "
                         f"{config.get('block_out_channels')!r}.")
    for name in ("in_channels", "out_channels", "latent_channels", "layers_per_block", "sample_size",
                 "norm_num_groups"):
        value = config.get(name, 1)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"The VAE's {name} must be an int, got {value!r}.")
    stages = len(config["block_out_channels"])
    config.setdefault("down_block_types", ["DownEncoderBlock2D"] * stages)
    config.setdefault("up_block_types", ["UpDecoderBlock2D"] * stages)
    if len(config["down_block_types"]) != stages or len(config["up_block_types"]) != stages:
        raise ValueError(f"The VAE config has {stages} block_out_channels but {len(config['down_block_types'])} "
                         f"down / {len(config['up_block_types'])} up block types; give one per stage.")
    groups = config.get("norm_num_groups", 32)
    if any(channels % groups for channels in config["block_out_channels"]):
        raise ValueError(f"Every block_out_channels {config['block_out_channels']} must be divisible by "
                         f"norm_num_groups {groups} (GroupNorm).")
    factor = 2 ** (stages - 1)
    if config["sample_size"] % factor != 0:
        raise ValueError(f"sample_size {config['sample_size']} is not divisible by the VAE's downsampling factor "
                         f"{factor} (2 ** (stages - 1)).")
    if config["latent_channels"] < 1:
        raise ValueError("latent_channels must be >= 1.")
    return config


def build_vae(args: argparse.Namespace) -> AutoencoderKL:
    if args.pretrained_model_name_or_path:
        root = Path(args.pretrained_model_name_or_path)
        if root.exists():  # a local folder (else a Hub id): check what it holds
            if (root / "model_index.json").is_file() and (root / "vae").is_dir():
                root = root / "vae"  # a pipeline (FARPipeline, Stable Diffusion, ...)
            root = resolve_model_dir(root, "--pretrained_model_name_or_path", "diffusers AutoencoderKL",
                                     class_name="AutoencoderKL", hint="pass a vae/ folder written by this script")
            vae = AutoencoderKL.from_pretrained(root)
        else:
            vae = AutoencoderKL.from_pretrained(args.pretrained_model_name_or_path)
        changes = {}
        if args.resolution is not None:
            changes["sample_size"] = args.resolution
        if args.latent_channels is not None and args.latent_channels != vae.config.latent_channels:
            raise ValueError("--latent_channels cannot change a pretrained VAE; train a new one with --preset.")
        if changes:
            vae.register_to_config(**changes)
        return vae
    config = vae_config_from_args(args)
    try:
        return AutoencoderKL(**config)
    except (TypeError, ValueError, KeyError, AttributeError) as error:
        raise ValueError(f"AutoencoderKL cannot be built from this config ({type(error).__name__}: {error}); check "
                         f"--vae_config.") from None


def sample_size(vae: AutoencoderKL) -> int:
    size = vae.config.sample_size
    return int(size[0] if isinstance(size, (list, tuple)) else size)


class VAEWithLoss(torch.nn.Module):
    """encode -> sample (or mean) -> decode in ONE forward, so that DDP / FSDP see one forward per step (the VAE's
    `encode` / `decode` are methods, which a wrapper's hooks would not see).

    Returns `(reconstruction, kl)`: the decoded images and the per-image KL of the posterior to N(0, I) summed over
    the latent (LDM's), shape `(B,)`. `_no_split_modules` are the VAE's blocks, which FSDP wraps one by one."""

    _no_split_modules = AutoencoderKL._no_split_modules

    def __init__(self, vae: AutoencoderKL, sample_posterior: bool = True):
        super().__init__()
        self.vae = vae
        self.sample_posterior = sample_posterior

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.vae.encode(pixel_values).latent_dist
        latents = posterior.sample() if self.sample_posterior else posterior.mode()
        return self.vae.decode(latents).sample, posterior.kl()


def scaling_sample_indices(num_images: int, count: int, seed: int) -> list[int]:
    """The fixed random subset of image indices on which the latent std is measured."""
    count = min(count, num_images)
    return sorted(np.random.default_rng(seed).choice(num_images, size=count, replace=False).tolist())


@torch.no_grad()
def latent_statistics(vae: AutoencoderKL, images, indices: list[int], batch_size: int) -> dict[str, float]:
    """Mean and std over all values of the posterior means of `images[indices]` (`{"pixel_values": ...}` items);
    `scaling_factor = 1 / std` (LDM's rule)."""
    was_training = vae.training
    vae.eval()
    means = []
    for start in range(0, len(indices), batch_size):
        pixels = torch.stack([images[i]["pixel_values"] for i in indices[start : start + batch_size]])
        means.append(vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mean.float().cpu())
    vae.train(was_training)
    latents = torch.cat(means)
    std = float(latents.std())
    if not np.isfinite(std) or std == 0:
        raise ValueError(f"The latents have std {std}; cannot set scaling_factor = 1 / std.")
    return {"mean": float(latents.mean()), "std": std, "scaling_factor": 1.0 / std, "num_images": len(indices)}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run = TrainingRun(args, "train_vae", outputs=("vae",), progress_name="vae")
    accelerator = run.accelerator
    torch.manual_seed(args.seed)  # the initial weights (the same on every process)
    vae = build_vae(args)  # config errors before anything is written
    run.reseed()  # the state TrainingRun set, whatever building the VAE drew

    size, channels = sample_size(vae), vae.config.in_channels
    images = load_training_images(args, accelerator, size, channels,
                                  head=max(args.validation_images, args.scaling_samples))
    loader, plain_images = images.loader, images.plain  # plain: centre crops
    validation_images = torch.stack([plain_images[i]["pixel_values"]
                                     for i in range(min(args.validation_images, len(plain_images)))])

    model = VAEWithLoss(vae, sample_posterior=not args.deterministic_posterior)
    optimizer, scheduler = run.optimizer_and_scheduler(model)
    gan = AutoencoderGAN(run, args, channels, size, last_layer=lambda wrapper: wrapper.vae.decoder.conv_out.weight)
    architecture = {key: value for key, value in dict(vae.config).items() if key != "scaling_factor"}
    config = run_config("train_vae.py", architecture, use_ema=args.use_ema, grad_scaler=accelerator.scaler is not None,
                        discriminator=gan.discriminator_record)
    # the EMA, gradient checkpointing and the full model are the VAE's, inside the wrapper
    model, optimizer, loader, scheduler = gan.prepare(model, optimizer, loader, scheduler, config_record=config,
                                                      model_cls=AutoencoderKL,
                                                      ema_module=lambda network: accelerator.unwrap_model(network).vae)

    pixels_per_image = channels * size * size
    model.train()
    for batch in run.batches(loader, *images.epoch_datasets):
        pixels = batch["pixel_values"]
        with gan.accumulate():
            reconstruction, kl = model(pixels)
            if args.reconstruction_loss == "l1":
                reconstruction_loss = (reconstruction.float() - pixels.float()).abs().mean()
            else:
                reconstruction_loss = F.mse_loss(reconstruction.float(), pixels.float())
            kl_loss = kl.float().mean() / pixels_per_image
            loss = reconstruction_loss + args.kl_weight * kl_loss
            logs = {"reconstruction_loss": reconstruction_loss.detach().item(), "kl_loss": kl_loss.detach().item()}
            loss, logs = gan.backward_and_step(loss, logs, reconstruction, pixels)
        if not run.sync_step():
            continue
        run.end_step(model, lambda: {**logs, "loss": loss.detach().item()}, scheduler)
        if run.validation_due:
            with run.full_model(model) as full_vae:  # every rank (sharded weights are gathered)
                if full_vae is not None:
                    log_reconstructions(accelerator, full_vae, validation_images, run.output_dir, run.global_step)

    output_dir = run.output_dir
    with run.full_model(model, final=True) as final:
        if final is not None:
            if args.scaling_factor is None:
                indices = scaling_sample_indices(len(plain_images), args.scaling_samples, args.seed)
                stats = latent_statistics(final, plain_images, indices, args.train_batch_size)
            else:
                stats = {"scaling_factor": args.scaling_factor, "given": True}
            final.register_to_config(scaling_factor=stats["scaling_factor"])
            (output_dir / "latent_stats.json").write_text(json.dumps(stats, indent=2))
            logger.info(f"scaling_factor = {stats['scaling_factor']:.6g}")
            final.save_pretrained(output_dir / "vae", save_function=accelerator.save)
            log_reconstructions(accelerator, final, validation_images, output_dir, run.global_step)
            if args.push_to_hub:
                final.push_to_hub(args.hub_model_id or output_dir.name, token=args.hub_token)
    run.end()


@torch.no_grad()
def log_reconstructions(accelerator, vae: AutoencoderKL, images: torch.Tensor, output_dir: Path, step: int) -> None:
    """Save (and log to TensorBoard) a grid: fixed images over their reconstructions from the posterior mean by `vae`
    (the full model with the EMA weights, in eval mode)."""
    latents = vae.encode(images.to(vae.device, vae.dtype)).latent_dist.mean
    reconstructions = vae.decode(latents).sample.float().cpu()
    grid = prefix_strip([list(images), list(reconstructions)], row_labels=["input", "reconstruction"], min_cell=64)
    save_image(accelerator, grid, output_dir, "reconstructions", step)


if __name__ == "__main__":
    run_script(main, __file__)
