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
           trains) learn with L2 + perceptual + GAN. --new_pixel_decoder '{"num_res_blocks": 2, ...}' puts a
           freshly initialised pixel decoder of other sizes in place of the teacher's (the codes stay the same).

Data (exactly one):
  --dataset_name NAME        any `datasets` id with an image column (needs the Hub or a local cache)
  --train_data_dir DIR       an image folder (`datasets` "imagefolder")
  --train_data_files FILES   tar shards (webdataset, e.g. "shards/{000000..001281}.tar"), parquet or arrow files
  --idx_data_dir DIR         MNIST-format IDX files, e.g. Fashion-MNIST from Debian's dataset-fashion-mnist
  --sample_photos            endless random crops of the real photos that ship with scikit-image (offline; a
                             resumed run restarts this stream, so it is not bit-identical to an uninterrupted one)
--streaming reads the first three without downloading them first: each process reads its share, shuffled in a
seeded buffer (--shuffle_buffer_size), decoded in --dataloader_num_workers workers; a resumed run continues with the
exact batch (see spectralar_hf/training/streaming.py).

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
from pathlib import Path
from typing import Iterator

import torch
from accelerate.logging import get_logger
from tqdm.auto import tqdm

from spectralar_hf import MaskGITVQGANConfig, SpectralTokenizer, SpectralTokenizerConfig
from spectralar_hf.spectral import lowpass
from spectralar_hf.argtypes import non_negative_float, non_negative_int, positive_float, positive_int
from spectralar_hf.training.arguments import (
    OptimizationDefaults,
    add_image_source_arguments,
    add_optimization_arguments,
    add_run_arguments,
    check_image_source,
    parse_config_overrides,
    resolve_model_dir,
)
from spectralar_hf.training.checkpointing import model_fingerprint, run_config
from spectralar_hf.training.data import (
    SKIMAGE_PHOTOS,
    PhotoCropDataset,
    TrainingImages,
    collate_pixel_values,
    load_sample_photos,
    load_training_images,
)
from spectralar_hf.training.gan import AutoencoderGAN, add_gan_arguments, check_gan_arguments
from spectralar_hf.training.scaffold import TrainingRun, run_script, save_image
from spectralar_hf.training.vq import CodebookRestarter
from spectralar_hf.visualization import prefix_strip

logger = get_logger(__name__)

# The pixel decoder's sizes that --new_pixel_decoder may set (its proxy codebook fields stay the pretrained ones)
NEW_PIXEL_DECODER_FIELDS = ("hidden_channels", "channel_mult", "num_res_blocks", "dropout", "norm_num_groups",
                            "norm_eps")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = add_image_source_arguments(parser)
    data.add_argument("--sample_photos", action="store_true", help="random crops of scikit-image's photos")
    data.add_argument("--exclude_photos", nargs="*", default=["astronaut"],
                      help="photos kept out of --sample_photos (default: astronaut, the README demo photo)")
    data.add_argument("--photo_crop_scale", type=positive_float, nargs=2, default=(0.1, 0.6),
                      help="MIN MAX area fractions of the crops, 0 < MIN <= MAX <= 1")
    data.add_argument("--max_train_samples", type=positive_int, default=None, help="use only the first N images")
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
    model.add_argument("--new_pixel_decoder", type=str, default=None,
                       help="stage 2 only (--train_decoder_only): replace the pretrained tokenizer's pixel decoder by "
                            "a freshly initialised one with these sizes, JSON of "
                            f"{list(NEW_PIXEL_DECODER_FIELDS)}, e.g. '{{\"channel_mult\": [1, 2, 4], "
                            "\"num_res_blocks\": 2}'; the other fields keep the pretrained values. The proxy codebook "
                            "(and so the ViT decoder's proxy logits) stays; everything else loads from the pretrained "
                            "tokenizer")

    losses = parser.add_argument_group("losses (TiTok weights: perceptual 0.1, GAN 0.01 from 20k steps, LeCAM 0.001)")
    add_gan_arguments(losses, discriminator_channels=128)
    losses.add_argument("--full_length_loss_weight", type=non_negative_float, default=None,
                        help="ours, not the paper's: add W x MSE(all-N-token reconstruction, image) to every step "
                             "besides the nested prefix term (sets config.full_length_loss_weight, saved with the "
                             "tokenizer; also on --pretrained_model_name_or_path). Default: the tokenizer's own")
    losses.add_argument("--no_codebook_restart", action="store_true",
                        help="do not restart dead codes on recent encoder latents (see spectralar_hf.training.vq)")

    add_optimization_arguments(parser, OptimizationDefaults(title="optimisation (defaults: TiTok)"))

    add_run_arguments(parser, "save a reconstruction strip every N steps")
    args = parser.parse_args(argv)

    check_image_source(parser, args, {"--sample_photos": args.sample_photos})
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
        if args.full_length_loss_weight:
            parser.error("--full_length_loss_weight adds a pixel term, but --proxy_teacher (TiTok's stage 1) decodes "
                         "no pixels: use it in stage 2 (--train_decoder_only) or without a teacher")
    if args.pretrained_model_name_or_path and args.config_overrides:
        parser.error("--config_overrides builds a new tokenizer; it cannot change --pretrained_model_name_or_path")
    try:
        args.config_overrides = parse_config_overrides(args.config_overrides, SpectralTokenizerConfig)
    except ValueError as error:
        parser.error(str(error))
    if args.full_length_loss_weight is not None and "full_length_loss_weight" in args.config_overrides:
        parser.error("full_length_loss_weight is given twice (--full_length_loss_weight and --config_overrides): "
                     "keep one")
    if args.train_decoder_only and not args.pretrained_model_name_or_path:
        parser.error("--train_decoder_only fine-tunes a trained tokenizer: pass --pretrained_model_name_or_path")
    if args.new_pixel_decoder is not None:
        if not args.train_decoder_only:
            parser.error("--new_pixel_decoder replaces the pixel decoder of a trained tokenizer in stage 2: add "
                         "--train_decoder_only and --pretrained_model_name_or_path")
        try:
            args.new_pixel_decoder = parse_new_pixel_decoder(args.new_pixel_decoder)
        except ValueError as error:
            parser.error(str(error))
    check_gan_arguments(parser, args)
    return args


def build_model(args: argparse.Namespace) -> SpectralTokenizer:
    if args.pretrained_model_name_or_path:
        root = resolve_model_dir(args.pretrained_model_name_or_path, "--pretrained_model_name_or_path",
                                 "SpectralTokenizer", model_type="spectral_tokenizer",
                                 pipeline_class="SpectralARPipeline", subfolder="tokenizer",
                                 hint="pass a tokenizer saved by this script (its tokenizer/ folder)")
        model = SpectralTokenizer.from_pretrained(root)
        if args.new_pixel_decoder:
            model = replace_pixel_decoder(model, args.new_pixel_decoder)
            logger.info(f"--new_pixel_decoder: a freshly initialised pixel decoder {model.config.pixel_decoder} "
                        f"replaces the pretrained one")
    else:
        try:
            config = SpectralTokenizerConfig.from_preset(args.preset, **args.config_overrides)
        except (TypeError, ValueError) as error:
            raise ValueError(f"--preset {args.preset!r} / --config_overrides: {error}") from None
        model = SpectralTokenizer(config)
    if args.full_length_loss_weight is not None:  # a loss setting: no weights change, the config validates it
        try:
            SpectralTokenizerConfig.from_dict({**model.config.to_dict(),
                                               "full_length_loss_weight": args.full_length_loss_weight})
        except ValueError as error:
            raise ValueError(f"--full_length_loss_weight: {error}") from None
        model.config.full_length_loss_weight = args.full_length_loss_weight
    return model


def parse_new_pixel_decoder(text: str) -> dict:
    """`--new_pixel_decoder`: a JSON object of `NEW_PIXEL_DECODER_FIELDS` (the proxy codebook's fields are refused)."""
    sizes = parse_config_overrides(text, MaskGITVQGANConfig, "--new_pixel_decoder")
    if not sizes:
        raise ValueError(f"--new_pixel_decoder is empty: give at least one of {list(NEW_PIXEL_DECODER_FIELDS)}")
    kept = sorted(set(sizes) - set(NEW_PIXEL_DECODER_FIELDS))
    if kept:
        raise ValueError(f"--new_pixel_decoder cannot change {kept}: the proxy codebook (codebook_size, codebook_dim, "
                         f"z_channels) stays, since the ViT decoder's proxy logits index it, and image size and "
                         f"channels are the tokenizer's; give only {list(NEW_PIXEL_DECODER_FIELDS)}")
    return sizes


def replace_pixel_decoder(model: SpectralTokenizer, sizes: dict) -> SpectralTokenizer:
    """`model` with a freshly initialised pixel decoder of `sizes` (fields of `config.pixel_decoder`); every other
    tensor, the proxy codebook `pixel_quantize` included, is `model`'s own."""
    if model.config.pixel_decoder is None:
        raise ValueError("--new_pixel_decoder: the pretrained tokenizer has no pixel decoder (config.pixel_decoder "
                         "is None) to replace; train one with TiTok's stage 1 (--proxy_teacher) first")
    try:
        config = SpectralTokenizerConfig.from_dict(
            {**model.config.to_dict(), "pixel_decoder": {**model.config.pixel_decoder, **sizes}})
    except (TypeError, ValueError) as error:
        raise ValueError(f"--new_pixel_decoder: {error}") from None
    replaced = SpectralTokenizer(config)
    kept = {name: tensor for name, tensor in model.state_dict().items() if not name.startswith("pixel_decoder.")}
    missing, unexpected = replaced.load_state_dict(kept, strict=False)
    if unexpected or not all(name.startswith("pixel_decoder.") for name in missing):
        raise RuntimeError(f"--new_pixel_decoder: weights outside the pixel decoder did not carry over (missing "
                           f"{[n for n in missing if not n.startswith('pixel_decoder.')]}, unexpected {unexpected})")
    return replaced


def build_images(args: argparse.Namespace, config: SpectralTokenizerConfig, accelerator) -> TrainingImages:
    """The training images (`load_training_images`: map-style, or --streaming), or with --sample_photos an endless
    `PhotoCropDataset` in a DataLoader. Map-style crops / flips of image `i` in epoch `e` are seeded with
    `(seed, e, i)` (see `AugmentedImages`), so a resumed run sees the same augmented images."""
    if not args.sample_photos:
        return load_training_images(args, accelerator, config.image_size, config.num_channels, head=4)
    names = [name for name in SKIMAGE_PHOTOS if name not in set(args.exclude_photos)]
    photos = load_sample_photos(names)
    crops = PhotoCropDataset(photos, config.image_size, tuple(args.photo_crop_scale), seed=args.seed,
                             rank=accelerator.process_index, num_channels=config.num_channels)
    loader = torch.utils.data.DataLoader(crops, batch_size=args.train_batch_size, collate_fn=collate_pixel_values,
                                         num_workers=args.dataloader_num_workers)
    # four fixed crops for the periodic strips, drawn without touching the training stream
    stream = iter(PhotoCropDataset(photos, config.image_size, crops.scale, seed=args.seed + 1,
                                   num_channels=config.num_channels))
    return TrainingImages(loader, (), [next(stream) for _ in range(4)])


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


def stream_batches(run: TrainingRun, loader) -> Iterator[dict[str, torch.Tensor]]:
    """The micro-batches of the endless --sample_photos stream until --max_train_steps. It has no length and no
    epochs, which `TrainingRun.batches` needs: a resumed run restarts the stream."""
    args = run.args
    run.progress = tqdm(range(args.max_train_steps), initial=run.global_step, desc=run.progress_name,
                        disable=not run.accelerator.is_local_main_process)
    while run.global_step < args.max_train_steps:
        for batch in loader:
            yield batch
            if run.global_step >= args.max_train_steps:
                return


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run = TrainingRun(args, "train_tokenizer", outputs=("tokenizer",), progress_name="tokenizer")
    accelerator = run.accelerator

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
    images = build_images(args, config, accelerator)
    loader = images.loader
    validation_images = torch.stack([images.plain[i]["pixel_values"] for i in range(min(4, len(images.plain)))])

    optimizer, scheduler = run.optimizer_and_scheduler(model)
    restart = not (args.no_codebook_restart or args.train_decoder_only)
    restarter = CodebookRestarter(config.codebook_size, seed=args.seed) if restart else None
    gan = AutoencoderGAN(run, args, config.num_channels, config.image_size,
                         last_layer=SpectralTokenizer.last_layer_weight)
    config_record = run_config(
        "train_tokenizer.py", config, use_ema=args.use_ema, codebook_restart=restarter is not None,
        train_decoder_only=args.train_decoder_only, grad_scaler=accelerator.scaler is not None,
        proxy_teacher=teacher_fingerprint, discriminator=gan.discriminator_record)
    model, optimizer, loader, scheduler = gan.prepare(model, optimizer, loader, scheduler, states=(restarter,),
                                                      config_record=config_record, model_cls=SpectralTokenizer)

    model.train()
    for batch in stream_batches(run, loader) if args.sample_photos else run.batches(loader, *images.epoch_datasets):
        with gan.accumulate():
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
            loss, logs = gan.backward_and_step(loss, logs, output.reconstruction, output.target)
        if not run.sync_step():
            continue
        if restarter is not None:  # gathered, so every rank restarts the same codes identically
            codes, latents = accelerator.gather((output.codes, output.latents.detach()))
            logs["codes_restarted"] = restarter.step(accelerator.unwrap_model(model).quantizer.codebook, codes,
                                                     latents, config.l2_normalize_codebook)
        run.end_step(model, lambda: {**logs, "loss": loss.detach().item(),
                                     "codebook_loss": output.codebook_loss.detach().item(),
                                     "codes_used": int(output.codes.unique().numel())}, scheduler)
        if run.validation_due:
            with run.full_model(model) as tokenizer:  # every rank (sharded weights are gathered)
                if tokenizer is not None:
                    log_reconstructions(accelerator, tokenizer, validation_images, run.output_dir, run.global_step)

    with run.full_model(model, final=True) as final:
        if final is not None:
            final.save_pretrained(run.output_dir / "tokenizer", save_function=accelerator.save)
            log_reconstructions(accelerator, final, validation_images, run.output_dir, run.global_step)
            if args.push_to_hub:
                datasets = [args.dataset_name] if args.dataset_name else None
                final.push_to_hub(args.hub_model_id or run.output_dir.name, token=args.hub_token, datasets=datasets)
    run.end()


@torch.no_grad()
def log_reconstructions(accelerator, tokenizer: SpectralTokenizer, images: torch.Tensor, output_dir: Path,
                        step: int) -> None:
    """Save (and log to TensorBoard) a strip: low-pass targets over prefix reconstructions of fixed images by
    `tokenizer` (the full model with the EMA weights, in eval mode)."""
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
    save_image(accelerator, strip, output_dir, "reconstructions", step)


if __name__ == "__main__":
    run_script(main, __file__)
