#!/usr/bin/env python
"""Train (or fine-tune) a MaskGIT-VQGAN, the convolutional VQ autoencoder that TiTok uses as its proxy-code teacher,
with accelerate.

The saved OUTPUT_DIR/vqgan is a `MaskGITVQGAN.from_pretrained` folder for `train_tokenizer.py --proxy_teacher`: stage
1 of TiTok's recipe learns its codes, stage 2 trains the tokenizer's copy of its decoder (the tokenizer's
`pixel_decoder` must have this VQGAN's decoder fields and its `patch_size` must equal the VQGAN's downsampling factor).

Loss (images in [0, 1]):
    L2 (or --reconstruction_loss l1) + VQ (commitment + commitment_cost x codebook)  [+ perceptual (LPIPS)]
    [+ hinge GAN with a patch discriminator from --discriminator_start (optionally VQGAN's adaptive weight at the
    decoder's conv_out), + LeCAM]
Dead codes are restarted on recent encoder latents (spectralar_hf.training.vq; off with --no_codebook_restart).

Model (one of):
  --preset NAME [--config_overrides JSON]   a MASKGIT_VQGAN_PRESETS configuration (default fmnist-f4), e.g.
                                            maskgit-imagenet-f16-256 (the released model's sizes), fmnist-f4 (32 px
                                            grayscale, an 8 x 8 grid of 512 codes), small, tiny
  --pretrained_model_name_or_path DIR       fine-tune a saved MaskGITVQGAN (e.g. conversion/convert_maskgit_vqgan.py)

Data (exactly one): --dataset_name (any `datasets` id with an image column), --train_data_dir (an image folder),
--train_data_files (tar shards for webdataset, e.g. "shards/{000000..001281}.tar", parquet or arrow files) or
--idx_data_dir (MNIST-format IDX files, e.g. Fashion-MNIST from Debian's dataset-fashion-mnist). Images are resized
(shorter side) and cropped to the VQGAN's image_size; --random_crop / --random_flip are seeded by (seed, epoch, image
index), so a resumed run sees the same images as an uninterrupted one. --streaming reads the first three without
downloading them first: each process reads its share, shuffled in a seeded buffer (--shuffle_buffer_size), decoded
in --dataloader_num_workers workers, and a resumed run continues with the exact batch; the fixed validation and
evaluation images are then the first ones of the stream.

After training, the final (EMA) weights encode a fixed evaluation set (the first --eval_samples images, centre-cropped)
and OUTPUT_DIR/vqgan_stats.json records the codebook usage (distinct codes used, perplexity), the PSNR of the clamped
reconstructions and the `pixel_decoder` dict that a matching tokenizer needs.

Examples:
  # offline, CPU: the Fashion-MNIST teacher (about 3.3 steps/s, 15 minutes, on 2 idle cores), then TiTok's two
  # stages with it (the pixel_decoder dict is the one the run prints and writes to vqgan_stats.json)
  python examples/train_vqgan.py --idx_data_dir /usr/share/datasets/fashion-mnist --preset fmnist-f4 \
      --learning_rate 1e-3 --lr_warmup_steps 100 --train_batch_size 64 --use_ema --max_train_steps 3000 \
      --output_dir runs/fmnist-vqgan
  python examples/train_tokenizer.py --idx_data_dir /usr/share/datasets/fashion-mnist --preset fmnist-32 \
      --config_overrides '{"pixel_decoder": {"hidden_channels": 32, "channel_mult": [1, 2, 2], "num_res_blocks": 1,
      "z_channels": 32, "codebook_size": 512}}' --proxy_teacher runs/fmnist-vqgan/vqgan \
      --learning_rate 1e-3 --use_ema --max_train_steps 8000 --output_dir runs/fmnist-stage1
  python examples/train_tokenizer.py --idx_data_dir /usr/share/datasets/fashion-mnist --train_decoder_only \
      --pretrained_model_name_or_path runs/fmnist-stage1/tokenizer --learning_rate 1e-4 --use_ema \
      --max_train_steps 4000 --output_dir runs/fmnist-stage2

  # 8 GPUs, bf16: a VQGAN of the released maskgit-imagenet-f16-256 sizes on ImageNet with perceptual and GAN losses
  accelerate launch --multi_gpu --num_processes 8 --mixed_precision bf16 examples/train_vqgan.py \
      --dataset_name ILSVRC/imagenet-1k --preset maskgit-imagenet-f16-256 --train_batch_size 32 --random_crop \
      --random_flip --perceptual_weight 0.1 --lpips_weights weights/lpips_vgg16.safetensors --gan_weight 0.1 \
      --adaptive_gan_weight --discriminator_start 20000 --lecam_weight 0.001 --use_ema --max_train_steps 500000 \
      --output_dir runs/maskgit-vqgan
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

import torch
from accelerate.logging import get_logger

from spectralar_hf import MASKGIT_VQGAN_PRESETS, MaskGITVQGAN, MaskGITVQGANConfig
from spectralar_hf.argtypes import non_negative_int, positive_int
from spectralar_hf.models.tokenizer.configuration_spectral_tokenizer import PIXEL_DECODER_FIELDS
from spectralar_hf.training.arguments import (
    OptimizationDefaults,
    add_image_source_arguments,
    add_optimization_arguments,
    add_run_arguments,
    check_image_source,
    parse_config_overrides,
    resolve_model_dir,
)
from spectralar_hf.training.checkpointing import run_config, write_json_atomic
from spectralar_hf.training.data import load_training_images
from spectralar_hf.training.gan import AutoencoderGAN, add_gan_arguments, check_gan_arguments, signed_range
from spectralar_hf.training.scaffold import TrainingRun, run_script, save_image
from spectralar_hf.training.vq import CodebookRestarter
from spectralar_hf.visualization import prefix_strip

logger = get_logger(__name__)
MODEL_FOLDER = "vqgan"
STATS_FILE = "vqgan_stats.json"
# The PSNR of a perfect reconstruction would be infinite: per-image MSEs are floored here (a 100 dB cap).
MIN_MSE = 1e-10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = add_image_source_arguments(parser)
    data.add_argument("--max_train_samples", type=positive_int, default=None, help="use only the first N images")
    data.add_argument("--random_crop", action="store_true", help="random instead of centre crops")
    data.add_argument("--random_flip", action="store_true", help="random horizontal flips")
    data.add_argument("--dataloader_num_workers", type=non_negative_int, default=0)

    model = parser.add_argument_group("model")
    model.add_argument("--preset", type=str, default="fmnist-f4",
                       help=f"a MaskGIT-VQGAN preset: {', '.join(sorted(MASKGIT_VQGAN_PRESETS))}")
    model.add_argument("--config_overrides", type=str, default=None,
                       help='JSON of MaskGITVQGANConfig fields, e.g. \'{"codebook_size": 256, "num_res_blocks": 2}\'')
    model.add_argument("--pretrained_model_name_or_path", type=str, default=None,
                       help="fine-tune this MaskGITVQGAN (a folder saved with save_pretrained)")

    losses = parser.add_argument_group("losses (TiTok's weights: perceptual 0.1, GAN 0.1 with the adaptive weight "
                                       "from 20k steps, LeCAM 0.001)")
    losses.add_argument("--reconstruction_loss", type=str, default="l2", choices=["l2", "l1"],
                        help="pixel loss against the input (MaskGIT-VQGAN: l2)")
    add_gan_arguments(losses, discriminator_channels=64)
    losses.add_argument("--no_codebook_restart", action="store_true",
                        help="do not restart dead codes on recent encoder latents (see spectralar_hf.training.vq)")

    add_optimization_arguments(parser, OptimizationDefaults())

    run = add_run_arguments(parser, "save a reconstruction strip every N steps")
    run.add_argument("--validation_images", type=positive_int, default=8, help="images in the reconstruction strips")
    run.add_argument("--eval_samples", type=positive_int, default=1000,
                     help="images (the first N, centre-cropped) on which the final codebook usage and PSNR are "
                          "measured")
    args = parser.parse_args(argv)

    check_image_source(parser, args)
    check_gan_arguments(parser, args)
    if args.lpips_weights is not None and args.perceptual_weight == 0:
        parser.error("--lpips_weights is the network of the perceptual loss: it needs --perceptual_weight > 0")
    if args.pretrained_model_name_or_path and args.config_overrides:
        parser.error("--config_overrides builds a new VQGAN; it cannot change --pretrained_model_name_or_path")
    if not args.pretrained_model_name_or_path and args.preset not in MASKGIT_VQGAN_PRESETS:
        parser.error(f"--preset {args.preset!r} is not a MaskGIT-VQGAN preset; choose one of "
                     f"{', '.join(sorted(MASKGIT_VQGAN_PRESETS))}")
    try:
        args.config_overrides = parse_config_overrides(args.config_overrides, MaskGITVQGANConfig)
        model_config(args)  # a config that cannot be built (or a folder that is not a VQGAN) fails here, not later
    except (TypeError, ValueError) as error:
        parser.error(str(error))
    return args


def pretrained_folder(args: argparse.Namespace) -> Path:
    """The MaskGITVQGAN folder of --pretrained_model_name_or_path (`ValueError` saying what it is otherwise)."""
    return resolve_model_dir(args.pretrained_model_name_or_path, "--pretrained_model_name_or_path", "MaskGITVQGAN",
                             model_type="maskgit_vqgan",
                             hint="pass a vqgan/ folder written by this script or by "
                                  "conversion/convert_maskgit_vqgan.py")


def model_config(args: argparse.Namespace) -> MaskGITVQGANConfig:
    """The configuration to train: the pretrained model's, or --preset with --config_overrides (checked)."""
    if args.pretrained_model_name_or_path:
        return MaskGITVQGANConfig.from_pretrained(pretrained_folder(args))
    try:
        return MaskGITVQGANConfig.from_preset(args.preset, **args.config_overrides)
    except (TypeError, ValueError) as error:
        raise ValueError(f"--preset {args.preset!r} with --config_overrides {json.dumps(args.config_overrides)}: "
                         f"{error} Change the overrides.") from None


def build_model(args: argparse.Namespace) -> MaskGITVQGAN:
    if args.pretrained_model_name_or_path:
        return MaskGITVQGAN.from_pretrained(pretrained_folder(args))
    return MaskGITVQGAN(model_config(args))


def unit_range(pixel_values: torch.Tensor) -> torch.Tensor:
    """`ImageTransform`'s [-1, 1] images -> the VQGAN's [0, 1]."""
    return ((pixel_values + 1) / 2).clamp(0.0, 1.0)


def pixel_decoder_fields(config: MaskGITVQGANConfig) -> dict[str, Any]:
    """The `pixel_decoder` dict of a SpectralTokenizerConfig whose pixel decoder is this VQGAN's decoder: the fields
    that differ from MaskGITVQGANConfig's defaults (`codebook_dim` follows `z_channels`)."""
    defaults = MaskGITVQGANConfig()
    return {name: getattr(config, name) for name in PIXEL_DECODER_FIELDS
            if name != "codebook_dim" and getattr(config, name) != getattr(defaults, name)}


@torch.no_grad()
def evaluate(model: MaskGITVQGAN, images: Sequence[dict[str, torch.Tensor]], count: int, batch_size: int
             ) -> dict[str, Any]:
    """Codebook usage and reconstruction quality of `model` on the first `count` images of `images`."""
    was_training = model.training
    model.eval()
    codes, errors = [], []
    for start in range(0, count, batch_size):
        batch = torch.stack([images[i]["pixel_values"] for i in range(start, min(start + batch_size, count))])
        pixels = unit_range(batch).to(model.device)
        encoded = model.encode(pixels)
        reconstruction = model.decode(encoded.quantized, clamp=True).reconstruction
        codes.append(encoded.codes.flatten().cpu())
        errors.append((reconstruction.float() - pixels.float()).pow(2).flatten(1).mean(1).cpu())
    model.train(was_training)
    counts = torch.bincount(torch.cat(codes), minlength=model.config.codebook_size).double()
    probabilities = counts[counts > 0] / counts.sum()
    mse = torch.cat(errors)
    psnr = 10 * torch.log10(1.0 / mse.clamp_min(MIN_MSE))
    return {
        "num_images": count,
        "codes_used": int((counts > 0).sum()),
        "codebook_size": model.config.codebook_size,
        "code_perplexity": float(torch.exp(-(probabilities * probabilities.log()).sum())),
        "mse": float(mse.mean()),
        "psnr": float(psnr.mean()),
        "pixel_decoder": pixel_decoder_fields(model.config),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run = TrainingRun(args, "train_vqgan", outputs=(MODEL_FOLDER, STATS_FILE), progress_name="vqgan")
    accelerator = run.accelerator
    torch.manual_seed(args.seed)  # the initial weights (the same on every process)
    model = build_model(args)
    config = model.config
    run.reseed()  # the state TrainingRun set, whatever building the model drew

    size, channels = config.image_size, config.num_channels
    images = load_training_images(args, accelerator, size, channels, head=max(args.eval_samples,
                                                                            args.validation_images))
    loader, plain_images = images.loader, images.plain  # plain: centre crops
    validation_images = unit_range(torch.stack([plain_images[i]["pixel_values"]
                                                for i in range(min(args.validation_images, len(plain_images)))]))

    optimizer, scheduler = run.optimizer_and_scheduler(model)
    restarter = None if args.no_codebook_restart else CodebookRestarter(config.codebook_size, seed=args.seed)
    gan = AutoencoderGAN(run, args, channels, size, last_layer=lambda vqgan: vqgan.decoder.conv_out.weight,
                         unit_range=True)  # the VQGAN's images are in [0, 1]
    config_record = run_config(
        "train_vqgan.py", config, use_ema=args.use_ema, codebook_restart=restarter is not None,
        grad_scaler=accelerator.scaler is not None, discriminator=gan.discriminator_record)
    model, optimizer, loader, scheduler = gan.prepare(model, optimizer, loader, scheduler, states=(restarter,),
                                                      config_record=config_record, model_cls=MaskGITVQGAN)

    model.train()
    for batch in run.batches(loader, *images.epoch_datasets):
        images = unit_range(batch["pixel_values"])
        with gan.accumulate():
            output = model(images)
            reconstruction = output.reconstruction
            if args.reconstruction_loss == "l1":
                reconstruction_loss = (reconstruction.float() - images.float()).abs().mean()
            else:
                reconstruction_loss = output.reconstruction_loss
            loss = reconstruction_loss + output.quantization_loss
            logs = {"reconstruction_loss": reconstruction_loss.detach().item(),
                    "quantization_loss": output.quantization_loss.detach().item(),
                    "commitment_loss": output.commitment_loss.detach().item(),
                    "codebook_loss": output.codebook_loss.detach().item()}
            loss, logs = gan.backward_and_step(loss, logs, reconstruction, images)
        if not run.sync_step():
            continue
        if restarter is not None:  # gathered, so every rank restarts the same codes identically
            codes, latents = accelerator.gather((output.codes, output.latents.detach()))
            logs["codes_restarted"] = restarter.step(
                accelerator.unwrap_model(model).quantize.embedding, codes.flatten(1),
                latents.flatten(2).transpose(1, 2), l2_normalize=False)
        run.end_step(model, lambda: {**logs, "loss": loss.detach().item(),
                                     "codes_used": int(output.codes.unique().numel())}, scheduler)
        if run.validation_due:
            with run.full_model(model) as vqgan:  # every rank (sharded weights are gathered)
                if vqgan is not None:
                    log_reconstructions(accelerator, vqgan, validation_images, run.output_dir, run.global_step)

    output_dir = run.output_dir
    with run.full_model(model, final=True) as final:
        if final is not None:
            final.save_pretrained(output_dir / MODEL_FOLDER, save_function=accelerator.save)
            log_reconstructions(accelerator, final, validation_images, output_dir, run.global_step)
            stats = evaluate(final, plain_images, min(args.eval_samples, len(plain_images)), args.train_batch_size)
            write_json_atomic(output_dir / STATS_FILE, stats)
            accelerator.log({f"eval_{key}": value for key, value in stats.items() if key != "pixel_decoder"},
                            step=run.global_step)
            logger.info(f"{stats['num_images']} images: PSNR {stats['psnr']:.2f} dB, {stats['codes_used']} of "
                        f"{stats['codebook_size']} codes used (perplexity {stats['code_perplexity']:.1f})")
            logger.info(f"As TiTok's proxy teacher: examples/train_tokenizer.py --proxy_teacher "
                        f"{output_dir / MODEL_FOLDER} with a tokenizer of image_size {config.image_size}, "
                        f"num_channels {config.num_channels}, patch_size {config.downsample_factor} and "
                        f"--config_overrides '{json.dumps({'pixel_decoder': stats['pixel_decoder']})}'")
            if args.push_to_hub:
                datasets = [args.dataset_name] if args.dataset_name else None
                final.push_to_hub(args.hub_model_id or output_dir.name, token=args.hub_token, datasets=datasets)
    run.end()


@torch.no_grad()
def log_reconstructions(accelerator, vqgan: MaskGITVQGAN, images: torch.Tensor, output_dir: Path, step: int) -> None:
    """Save (and log to TensorBoard) a strip: fixed images (in [0, 1]) over their (clamped) reconstructions by `vqgan`
    (the full model with the EMA weights, in eval mode)."""
    codes = vqgan.encode(images.to(vqgan.device)).codes
    reconstructions = vqgan.decode_codes(codes).reconstruction.float().cpu()
    strip = prefix_strip([list(signed_range(images)), list(signed_range(reconstructions))],
                         row_labels=["input", "reconstruction"], min_cell=64)
    save_image(accelerator, strip, output_dir, "reconstructions", step)


if __name__ == "__main__":
    run_script(main, __file__)
