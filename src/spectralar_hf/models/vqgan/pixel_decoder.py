"""The convolutional building blocks of the MaskGIT-VQGAN and its decoder, usable on their own.

`PixelDecoder` turns a `(B, z_channels, h, w)` latent grid into a `(B, out_channels, h * f, w * f)` image with
`f = 2 ** (len(channel_mult) - 1)`; it is the decoder of [`MaskGITVQGAN`] and the "pixel decoder" that a 1D tokenizer
can put behind its own decoder (TiTok's stage 2). Parameter names follow the released MaskGIT-VQGAN checkpoint
(`conv_in`, `mid.{i}`, `up.{level}.block.{i}`, `up.{level}.upsample_conv`, `norm_out`, `conv_out`), so its decoder
weights load without renaming.

Architecture facts of the released model, kept here because its weights depend on them:

* every convolution pads TensorFlow-style "same" (`SamePadConv2d`): output size `ceil(input / stride)`, the odd
  pixel of padding at the bottom / right;
* the convolutions inside ResNet blocks have no bias; GroupNorm (32 groups, eps 1e-6) + SiLU before each;
* no attention layers;
* upsampling is nearest-neighbour x2 followed by a 3x3 convolution (with bias);
* a ResNet block that changes width projects *its own output* with a bias-free 1x1 convolution (`nin_shortcut`,
  `out -> out` channels) and adds that instead of its input: the input does not skip such a block.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer


def same_padding(size: int, kernel_size: int, stride: int = 1, dilation: int = 1) -> tuple[int, int]:
    """`(before, after)` padding that makes a convolution's output `ceil(size / stride)` long (TensorFlow "SAME");
    an odd total puts the extra pixel after."""
    span = (kernel_size - 1) * dilation + 1
    total = max((math.ceil(size / stride) - 1) * stride + span - size, 0)
    return total // 2, total - total // 2


class SamePadConv2d(nn.Conv2d):
    """`nn.Conv2d` with TensorFlow-style "same" padding computed from the input size at call time (the layer's own
    `padding` is 0). For stride 1 and an odd kernel this is the symmetric padding `kernel_size // 2`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1,
                 bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, dilation=dilation,
                         bias=bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        top, bottom = same_padding(hidden_states.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0])
        left, right = same_padding(hidden_states.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
        if top or bottom or left or right:
            hidden_states = F.pad(hidden_states, (left, right, top, bottom))
        return super().forward(hidden_states)


class VQGANResnetBlock(GradientCheckpointingLayer):
    """`norm -> SiLU -> conv3x3 -> norm -> SiLU -> dropout -> conv3x3` plus a residual (bias-free convolutions).
    With gradient checkpointing on (`gradient_checkpointing_enable()` of the model that holds it) its activations are
    recomputed in the backward pass.

    With `in_channels == out_channels` the residual is the input. Otherwise, as in the released MaskGIT-VQGAN, the
    residual is `nin_shortcut` (a 1x1 `out -> out` convolution) applied to the branch output, so the block returns
    `h + nin_shortcut(h)` and the input reaches the output only through the branch.
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, dropout: float = 0.0,
                 norm_num_groups: int = 32, norm_eps: float = 1e-6):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = nn.GroupNorm(norm_num_groups, in_channels, eps=norm_eps)
        self.conv1 = SamePadConv2d(in_channels, out_channels, 3, bias=False)
        self.norm2 = nn.GroupNorm(norm_num_groups, out_channels, eps=norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = SamePadConv2d(out_channels, out_channels, 3, bias=False)
        self.nin_shortcut = (SamePadConv2d(out_channels, out_channels, 1, bias=False)
                             if in_channels != out_channels else None)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        branch = self.conv1(F.silu(self.norm1(hidden_states)))
        branch = self.conv2(self.dropout(F.silu(self.norm2(branch))))
        if self.nin_shortcut is None:
            return hidden_states + branch
        return branch + self.nin_shortcut(branch)


def res_blocks(in_channels: int, out_channels: int, count: int, dropout: float, groups: int,
                eps: float) -> nn.ModuleList:
    """`count` ResNet blocks, the first going `in_channels -> out_channels`, the rest keeping `out_channels`."""
    return nn.ModuleList(
        VQGANResnetBlock(in_channels if index == 0 else out_channels, out_channels, dropout, groups, eps)
        for index in range(count)
    )


class VQGANDownBlock(nn.Module):
    """One encoder level: ResNet blocks (`block`), then a 2x2 average pooling unless it is the last level."""

    def __init__(self, in_channels: int, out_channels: int, num_res_blocks: int, downsample: bool,
                 dropout: float = 0.0, norm_num_groups: int = 32, norm_eps: float = 1e-6):
        super().__init__()
        self.block = res_blocks(in_channels, out_channels, num_res_blocks, dropout, norm_num_groups, norm_eps)
        self.downsample = downsample

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for layer in self.block:
            hidden_states = layer(hidden_states)
        return F.avg_pool2d(hidden_states, 2) if self.downsample else hidden_states


class VQGANUpBlock(nn.Module):
    """One decoder level: ResNet blocks (`block`), then (except at the finest level) nearest-neighbour x2 upsampling
    and a 3x3 convolution (`upsample_conv`)."""

    def __init__(self, in_channels: int, out_channels: int, num_res_blocks: int, upsample: bool,
                 dropout: float = 0.0, norm_num_groups: int = 32, norm_eps: float = 1e-6):
        super().__init__()
        self.block = res_blocks(in_channels, out_channels, num_res_blocks, dropout, norm_num_groups, norm_eps)
        self.upsample_conv = SamePadConv2d(out_channels, out_channels, 3) if upsample else None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for layer in self.block:
            hidden_states = layer(hidden_states)
        if self.upsample_conv is not None:
            hidden_states = self.upsample_conv(F.interpolate(hidden_states, scale_factor=2.0, mode="nearest"))
        return hidden_states


def check_level_sizes(hidden_channels: int, channel_mult: Sequence[int], num_res_blocks: int,
                      norm_num_groups: int) -> None:
    """`ValueError` unless there is at least one level and block and every level width fits GroupNorm."""
    if not channel_mult or num_res_blocks < 1 or hidden_channels < 1:
        raise ValueError(f"Need at least one level (channel_mult = {list(channel_mult)}), one ResNet block per level "
                         f"(num_res_blocks = {num_res_blocks}) and hidden_channels >= 1 (got {hidden_channels}).")
    widths = [hidden_channels * mult for mult in channel_mult]
    if any(width % norm_num_groups for width in widths):
        raise ValueError(f"The level widths {widths} must all be divisible by norm_num_groups {norm_num_groups}.")


class PixelDecoder(nn.Module):
    """Convolutional decoder: `(B, z_channels, h, w)` latents -> `(B, out_channels, h * f, w * f)` images,
    `f = 2 ** (len(channel_mult) - 1)`, unclamped (the MaskGIT-VQGAN was trained on [0, 1] images).

    Layout: `conv_in` (3x3) to the coarsest width, `mid` (`num_res_blocks` ResNet blocks), then the levels from the
    coarsest (`up[L-1]`) to the finest (`up[0]`), then `norm_out` -> SiLU -> `conv_out` (3x3). Level `i` has width
    `hidden_channels * channel_mult[i]` and reads the width of level `i + 1` (the coarsest level reads its own).

    Args:
        out_channels: image channels.
        hidden_channels, channel_mult, num_res_blocks: sizes, as in [`MaskGITVQGANConfig`].
        z_channels: channels of the input latents.
        dropout, norm_num_groups, norm_eps: ResNet-block dropout and GroupNorm settings.
    """

    def __init__(self, out_channels: int = 3, hidden_channels: int = 128,
                 channel_mult: Sequence[int] = (1, 1, 2, 2, 4), num_res_blocks: int = 2, z_channels: int = 256,
                 dropout: float = 0.0, norm_num_groups: int = 32, norm_eps: float = 1e-6):
        super().__init__()
        check_level_sizes(hidden_channels, channel_mult, num_res_blocks, norm_num_groups)
        widths = [hidden_channels * mult for mult in channel_mult]
        levels = len(widths)
        self.z_channels = z_channels
        self.upsample_factor = 2 ** (levels - 1)
        self.conv_in = SamePadConv2d(z_channels, widths[-1], 3)
        self.mid = res_blocks(widths[-1], widths[-1], num_res_blocks, dropout, norm_num_groups, norm_eps)
        self.up = nn.ModuleList(
            VQGANUpBlock(widths[min(level + 1, levels - 1)], widths[level], num_res_blocks, upsample=level > 0,
                         dropout=dropout, norm_num_groups=norm_num_groups, norm_eps=norm_eps)
            for level in range(levels)
        )
        self.norm_out = nn.GroupNorm(norm_num_groups, widths[0], eps=norm_eps)
        self.conv_out = SamePadConv2d(widths[0], out_channels, 3)

    @classmethod
    def from_config(cls, config) -> "PixelDecoder":
        """The decoder of a [`MaskGITVQGANConfig`] (or any object with the same field names)."""
        return cls(out_channels=config.num_channels, hidden_channels=config.hidden_channels,
                   channel_mult=config.channel_mult, num_res_blocks=config.num_res_blocks,
                   z_channels=config.z_channels, dropout=config.dropout,
                   norm_num_groups=getattr(config, "norm_num_groups", 32), norm_eps=getattr(config, "norm_eps", 1e-6))

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        hidden_states = self.conv_in(latents)
        for layer in self.mid:
            hidden_states = layer(hidden_states)
        for level in reversed(self.up):
            hidden_states = level(hidden_states)
        return self.conv_out(F.silu(self.norm_out(hidden_states)))
