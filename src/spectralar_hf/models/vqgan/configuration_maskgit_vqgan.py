"""Configuration of the MaskGIT-VQGAN: the convolutional VQ autoencoder that TiTok uses as its proxy-code teacher
(stage 1) and whose decoder turns TiTok's proxy codes into pixels (stage 2)."""

from __future__ import annotations

import copy
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from ...remote_code import AutoMapConfigMixin
from ...utils import check_config_types, check_positive_fields

# "maskgit-imagenet-f16-256" is the released `maskgit-vqgan-imagenet-f16-256.bin` of bytedance/1d-tokenizer (the
# sizes of its `PretrainedTokenizer`): 256 px RGB, 5 resolutions (downsampling 16), 1024 x 256 codebook.
# "fmnist-f4" is the offline Fashion-MNIST teacher that examples/train_vqgan.py trains on CPU: 32 px grayscale,
# 3 levels (downsampling 4: an 8 x 8 code grid, the patch grid of the tokenizer preset "fmnist-32"), 512 codes; one
# ResNet block per level trains at 3.3 steps/s (batch 64, 2 CPU cores), two reach the same PSNR at 300 steps at 2.4.
# "small" and "tiny" keep the structure (channel changes, several levels) at a size for CPU checks and tests.
MASKGIT_VQGAN_PRESETS: dict[str, dict[str, Any]] = {
    "maskgit-imagenet-f16-256": dict(
        image_size=256, num_channels=3, hidden_channels=128, channel_mult=[1, 1, 2, 2, 4], num_res_blocks=2,
        z_channels=256, codebook_size=1024, commitment_cost=0.25,
    ),
    "fmnist-f4": dict(
        image_size=32, num_channels=1, hidden_channels=32, channel_mult=[1, 2, 2], num_res_blocks=1,
        z_channels=32, codebook_size=512, commitment_cost=0.25,
    ),
    "small": dict(
        image_size=64, num_channels=3, hidden_channels=32, channel_mult=[1, 2, 2, 4], num_res_blocks=2,
        z_channels=64, codebook_size=256, commitment_cost=0.25,
    ),
    "tiny": dict(
        image_size=16, num_channels=3, hidden_channels=32, channel_mult=[1, 2], num_res_blocks=1,
        z_channels=16, codebook_size=32, commitment_cost=0.25,
    ),
}


@strict
class MaskGITVQGANConfig(AutoMapConfigMixin, PreTrainedConfig):
    r"""
    Configuration of a [`MaskGITVQGAN`]: convolutional encoder, nearest-neighbour vector quantizer and convolutional
    decoder (no attention layers), images in [0, 1].

    Args:
        image_size (`int`, defaults to 256): the side the model was trained on (`resolution` of the official code).
            The model is convolutional: any height and width divisible by `downsample_factor` work.
        num_channels (`int`, defaults to 3): image channels.
        hidden_channels (`int`, defaults to 128): width of the first resolution level.
        channel_mult (`list[int]`, defaults to `[1, 1, 2, 2, 4]`): width multiplier of each resolution level; the
            number of levels `L = len(channel_mult)` sets the downsampling factor `2 ** (L - 1)`.
        num_res_blocks (`int`, defaults to 2): ResNet blocks per level (and in the middle of encoder and decoder).
        z_channels (`int`, defaults to 256): channels of the latent grid, equal to the codebook vector size.
        codebook_size (`int`, defaults to 1024): number of codebook entries `K`.
        codebook_dim (`int`, optional): size of a codebook vector; must equal `z_channels` (filled in from it).
        commitment_cost (`float`, defaults to 0.25): weight of the codebook term in `quantization_loss` (see
            [`MaskGITVQGANEncoderOutput`]).
        dropout (`float`, defaults to 0.0): dropout inside the ResNet blocks.
        norm_num_groups (`int`, defaults to 32): GroupNorm groups; every level's width must be divisible by it.
        norm_eps (`float`, defaults to 1e-6): GroupNorm epsilon.
        initializer_range (`float`, defaults to 0.02): std of the normal init of convolutions.

    Example:

    ```python
    >>> from spectralar_hf import MaskGITVQGANConfig
    >>> config = MaskGITVQGANConfig.from_preset("maskgit-imagenet-f16-256")
    >>> config.downsample_factor, config.latent_size
    (16, 16)
    ```
    """

    model_type = "maskgit_vqgan"

    image_size: int = 256
    num_channels: int = 3
    hidden_channels: int = 128
    channel_mult: list[int] | tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    z_channels: int = 256
    codebook_size: int = 1024
    codebook_dim: int | None = None
    commitment_cost: float | int = 0.25
    dropout: float | int = 0.0
    norm_num_groups: int = 32
    norm_eps: float = 1e-6
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        check_config_types(self)
        check_positive_fields(self, "image_size", "num_channels", "hidden_channels", "num_res_blocks", "z_channels",
                              "norm_num_groups", "norm_eps")
        if not self.channel_mult or not all(isinstance(m, int) and not isinstance(m, bool) and m > 0
                                            for m in self.channel_mult):
            raise ValueError(f"channel_mult must be a non-empty list of positive ints (one per resolution level), got "
                             f"{self.channel_mult!r}.")
        self.channel_mult = list(self.channel_mult)
        widths = [self.hidden_channels * m for m in self.channel_mult]
        odd = [w for w in widths if w % self.norm_num_groups]
        if odd:
            raise ValueError(f"The level widths hidden_channels x channel_mult = {widths} must all be divisible by "
                             f"norm_num_groups {self.norm_num_groups} (GroupNorm); {odd} are not.")
        if self.codebook_size < 2:
            raise ValueError(f"codebook_size must be >= 2, got {self.codebook_size}.")
        if self.codebook_dim is None:
            self.codebook_dim = self.z_channels
        if self.codebook_dim != self.z_channels:
            raise ValueError(f"codebook_dim ({self.codebook_dim}) must equal z_channels ({self.z_channels}): the "
                             f"quantizer matches each latent vector to a codebook vector of the same size.")
        if self.image_size % self.downsample_factor:
            raise ValueError(f"image_size {self.image_size} is not divisible by the downsampling factor "
                             f"{self.downsample_factor} (2 ** (len(channel_mult) - 1)).")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}.")
        if self.commitment_cost < 0 or self.initializer_range < 0:
            raise ValueError(f"commitment_cost ({self.commitment_cost}) and initializer_range "
                             f"({self.initializer_range}) must be >= 0.")
        super().__post_init__(**kwargs)

    @property
    def num_resolutions(self) -> int:
        """Resolution levels, `len(channel_mult)`."""
        return len(self.channel_mult)

    @property
    def downsample_factor(self) -> int:
        """Image pixels per latent pixel along a side, `2 ** (num_resolutions - 1)`."""
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def latent_size(self) -> int:
        """Side of the code grid for `image_size` images."""
        return self.image_size // self.downsample_factor

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "MaskGITVQGANConfig":
        """Build a named configuration (see `MASKGIT_VQGAN_PRESETS`); keyword arguments override fields."""
        if name not in MASKGIT_VQGAN_PRESETS:
            raise ValueError(f"Unknown MaskGIT-VQGAN preset {name!r}; available: {sorted(MASKGIT_VQGAN_PRESETS)}.")
        values = copy.deepcopy(MASKGIT_VQGAN_PRESETS[name])
        values.update(overrides)
        return cls(**values)
