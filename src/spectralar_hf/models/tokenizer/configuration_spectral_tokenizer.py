"""Configuration of the Nested Spectral Tokenizer (SpectralAR §3.2)."""

from __future__ import annotations

import copy
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from ...remote_code import AutoMapConfigMixin
from ...spectral import OMEGA_SCHEDULES, omega_schedule, validate_omega
from ...utils import check_config_types, check_positive_fields
from ..vqgan.configuration_maskgit_vqgan import MaskGITVQGANConfig

# The MaskGIT-VQGAN fields a `pixel_decoder` dict may set (image size and channels come from the tokenizer). Missing
# ones take `MaskGITVQGANConfig`'s defaults, which are the released `maskgit-vqgan-imagenet-f16-256` decoder's sizes.
PIXEL_DECODER_FIELDS = ("hidden_channels", "channel_mult", "num_res_blocks", "z_channels", "codebook_size",
                        "codebook_dim", "dropout", "norm_num_groups", "norm_eps")

# Named sizes. "titok-b64" is the paper's tokenizer (TiTok-B-64 settings: ViT-B encoder and decoder, 256 px,
# patch 16, 64 tokens, 4096 x 12 l2-normalised codebook). The small ones are for tests, demos and CPU training.
SPECTRAL_TOKENIZER_PRESETS: dict[str, dict[str, Any]] = {
    "titok-b64": dict(
        image_size=256, num_channels=3, patch_size=16,
        encoder_hidden_size=768, encoder_num_hidden_layers=12, encoder_num_attention_heads=12,
        decoder_hidden_size=768, decoder_num_hidden_layers=12, decoder_num_attention_heads=12,
        num_latent_tokens=64, codebook_size=4096, token_dim=12,
    ),
    "titok-s128": dict(
        image_size=256, num_channels=3, patch_size=16,
        encoder_hidden_size=512, encoder_num_hidden_layers=8, encoder_num_attention_heads=8,
        decoder_hidden_size=512, decoder_num_hidden_layers=8, decoder_num_attention_heads=8,
        num_latent_tokens=128, codebook_size=4096, token_dim=12,
    ),
    "small-64": dict(
        image_size=64, num_channels=3, patch_size=8,
        encoder_hidden_size=128, encoder_num_hidden_layers=4, encoder_num_attention_heads=4,
        decoder_hidden_size=128, decoder_num_hidden_layers=4, decoder_num_attention_heads=4,
        num_latent_tokens=32, codebook_size=1024, token_dim=12,
    ),
    "small-32-gray": dict(
        image_size=32, num_channels=1, patch_size=4,
        encoder_hidden_size=128, encoder_num_hidden_layers=4, encoder_num_attention_heads=4,
        decoder_hidden_size=128, decoder_num_hidden_layers=4, decoder_num_attention_heads=4,
        num_latent_tokens=32, codebook_size=512, token_dim=8,
    ),
    # Fashion-MNIST at 24 tokens, where Eq. 9 differs from the uniform schedule (omega_13..24 = 13, .., 18, 20, .., 32;
    # Table 4 --quick). The shipped demo overrides num_latent_tokens to 32, where both schedules are omega_k = k.
    "fmnist-32": dict(
        image_size=32, num_channels=1, patch_size=4,
        encoder_hidden_size=128, encoder_num_hidden_layers=4, encoder_num_attention_heads=4,
        decoder_hidden_size=128, decoder_num_hidden_layers=4, decoder_num_attention_heads=4,
        num_latent_tokens=24, codebook_size=1024, token_dim=8,
    ),
    "tiny-32": dict(
        image_size=32, num_channels=3, patch_size=8,
        encoder_hidden_size=64, encoder_num_hidden_layers=2, encoder_num_attention_heads=2,
        decoder_hidden_size=64, decoder_num_hidden_layers=2, decoder_num_attention_heads=2,
        num_latent_tokens=16, codebook_size=256, token_dim=8,
    ),
}


@strict
class SpectralTokenizerConfig(AutoMapConfigMixin, PreTrainedConfig):
    r"""
    Configuration of a [`SpectralTokenizer`]: a 1D ViT tokenizer whose token prefixes decode to DCT low-pass images.

    Args:
        image_size (`int`, defaults to 256): side of the square input images.
        num_channels (`int`, defaults to 3): 1 (grayscale) or 3 (RGB).
        patch_size (`int`, defaults to 16): patch side of encoder and decoder; must divide `image_size`.
        encoder_hidden_size / encoder_num_hidden_layers / encoder_num_attention_heads / encoder_mlp_ratio:
            width, depth, heads and MLP expansion of the ViT encoder.
        decoder_hidden_size / decoder_num_hidden_layers / decoder_num_attention_heads / decoder_mlp_ratio:
            the same for the decoder.
        num_latent_tokens (`int`, defaults to 64): N, the number of spectral tokens per image.
        codebook_size (`int`, defaults to 4096): number of codebook entries (the generator's vocabulary).
        token_dim (`int`, defaults to 12): dimension of a codebook entry (factorised low-dimensional lookup).
        l2_normalize_codebook (`bool`, defaults to `True`): match l2-normalised latents to an l2-normalised
            codebook (cosine similarity), as TiTok.
        commitment_cost (`float`, defaults to 0.25): weight of the commitment term `||z - sg(z_q)||^2`.
        omega (`list[int]` or `str`, defaults to `"spectralar"`): the spectral level `omega_i` of every token, the
            single source of truth of the token-to-frequency mapping. A schedule name (`"spectralar"` = Eq. 9,
            `"uniform"`) is turned into the explicit list at construction, so `config.json` always stores the list.
        spectral_supervision (`bool`, defaults to `True`): train prefix `k` against `lowpass(x, omega_k)` (nested
            targets). Off: every step decodes all N tokens against the full image.
        causal (`bool`, defaults to `True`): spectral causal mask in encoder and decoder. With both flags off the
            model is the plain TiTok-style 1D tokenizer (Table 4, row 1).
        full_length_loss_weight (`float`, defaults to 0.0): ours, not the paper's. With spectral supervision, the
            weight of a second reconstruction term added to every training step in which prefixes are drawn at
            random: the MSE of the all-N-token reconstruction against the full image. Under Algorithm 1 alone token
            `j` is trained on only `(N - j + 1) / N` of the samples; this term trains every token on every sample.
            0 is Algorithm 1 as published.
        layer_norm_eps (`float`, defaults to 1e-6), initializer_range (`float`, defaults to 0.02). TiTok's ViTs use
            PyTorch's default LayerNorm eps, 1e-5.

    TiTok architecture options (bytedance/1d-tokenizer `TiTokEncoder` / `TiTokDecoder` / `TiTok.decode`). The defaults
    are SpectralAR's own layout; with the options below one class holds TiTok's tokenizers too:

        class_token (`bool`, defaults to `False`): a learned class token (`encoder.class_embedding`,
            `decoder.class_embedding`) in front of the patches (encoder) and of the mask tokens (decoder), as TiTok's
            `class_embedding`. `position_embedding` then has `num_patches + 1` rows, row 0 for the class token, as
            TiTok's `positional_embedding` (added to `[class; patches]`). The class token belongs to the image side of
            the spectral causal mask (it never sees spectral tokens in the encoder; spectral tokens do not see it in
            the decoder) and its output is dropped.
        legacy_latent_projection (`bool`, defaults to `False`): TiTok's `is_legacy=True` encoder head (the released
            TiTok checkpoints): the `(B, N, width)` latent tokens after `ln_post` are *reshaped* (not transposed) to
            `(B, width, N)` before the 1x1 projection to `token_dim`, so every latent mixes features of all N tokens.
            That breaks the prefix property, so it requires `causal=False`.
        decoder_output_conv (`bool`, defaults to `False`): TiTok's `is_legacy=False` pixel head: after the linear
            per-patch head and unpatchify, a 3x3 convolution `decoder.conv_out` (C -> C channels, padding 1).
        pixel_decoder (`dict`, optional): TiTok's two-stage decoder. `None` (default): the ViT decoder predicts pixels
            with the linear per-patch head `decoder.head`. A dict of MaskGIT-VQGAN decoder settings (keys from
            `PIXEL_DECODER_FIELDS`: `hidden_channels`, `channel_mult`, `num_res_blocks`, `z_channels`,
            `codebook_size`, `codebook_dim`, `dropout`, `norm_num_groups`, `norm_eps`; missing keys take the released
            MaskGIT-VQGAN's sizes, so `{}` is TiTok's pixel decoder): the ViT decoder's per-patch output goes through
            TiTok's `ffn` head (`decoder.ffn`: Linear width -> 2 width, Tanh, Linear -> `codebook_size` proxy logits),
            `softmax(logits) @ pixel_quantize.embedding.weight` gives a `(B, z_channels, grid, grid)` latent, and the
            MaskGIT-VQGAN decoder `pixel_decoder` turns it into an image. The VQGAN works in [0, 1]; the tokenizer
            returns `2 * y - 1` so its output stays in the [-1, 1] convention. The VQGAN's downsampling factor
            `2 ** (len(channel_mult) - 1)` must equal `patch_size` (one proxy code per patch). Stored in config.json
            with every field filled in.

    Example:

    ```python
    >>> from spectralar_hf import SpectralTokenizer, SpectralTokenizerConfig
    >>> config = SpectralTokenizerConfig.from_preset("titok-b64")
    >>> config.omega[:4], config.omega[-2:]
    ([1, 2, 3, 4], [244, 256])
    >>> model = SpectralTokenizer(config)
    ```
    """

    model_type = "spectral_tokenizer"

    image_size: int = 256
    num_channels: int = 3
    patch_size: int = 16
    encoder_hidden_size: int = 768
    encoder_num_hidden_layers: int = 12
    encoder_num_attention_heads: int = 12
    encoder_mlp_ratio: float | int = 4.0
    decoder_hidden_size: int = 768
    decoder_num_hidden_layers: int = 12
    decoder_num_attention_heads: int = 12
    decoder_mlp_ratio: float | int = 4.0
    num_latent_tokens: int = 64
    codebook_size: int = 4096
    token_dim: int = 12
    l2_normalize_codebook: bool = True
    commitment_cost: float | int = 0.25
    omega: list[int] | str = "spectralar"
    spectral_supervision: bool = True
    causal: bool = True
    full_length_loss_weight: float | int = 0.0
    layer_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    class_token: bool = False
    legacy_latent_projection: bool = False
    decoder_output_conv: bool = False
    pixel_decoder: dict | None = None

    def __post_init__(self, **kwargs):
        check_config_types(self)
        check_positive_fields(self, "image_size", "encoder_hidden_size", "encoder_num_hidden_layers",
                              "encoder_mlp_ratio", "decoder_hidden_size", "decoder_num_hidden_layers",
                              "decoder_mlp_ratio", "layer_norm_eps")
        if self.full_length_loss_weight < 0:
            raise ValueError(f"full_length_loss_weight must be >= 0 (0 = Algorithm 1 only), got "
                             f"{self.full_length_loss_weight}.")
        if self.full_length_loss_weight and not self.spectral_supervision:
            raise ValueError("full_length_loss_weight adds a full-image term to nested spectral supervision, but "
                             "spectral_supervision is False (every step already decodes all N tokens against the "
                             "full image); set full_length_loss_weight=0 or spectral_supervision=True.")
        if self.commitment_cost < 0 or self.initializer_range < 0:
            raise ValueError(f"commitment_cost ({self.commitment_cost}) and initializer_range "
                             f"({self.initializer_range}) must be >= 0.")
        if self.num_channels not in (1, 3):
            raise ValueError(f"num_channels must be 1 (grayscale) or 3 (RGB), got {self.num_channels}.")
        if self.patch_size < 1 or self.image_size % self.patch_size != 0:
            raise ValueError(
                f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}; choose a patch size "
                f"that divides the image size (e.g. {_divisor_hint(self.image_size, self.patch_size)})."
            )
        for part in ("encoder", "decoder"):
            width = getattr(self, f"{part}_hidden_size")
            heads = getattr(self, f"{part}_num_attention_heads")
            if heads < 1 or width % heads != 0:
                raise ValueError(f"{part}_hidden_size {width} is not divisible by {part}_num_attention_heads {heads}.")
        if self.num_latent_tokens < 1 or self.codebook_size < 2 or self.token_dim < 1:
            raise ValueError(
                f"num_latent_tokens ({self.num_latent_tokens}), codebook_size ({self.codebook_size}) and token_dim "
                f"({self.token_dim}) must be positive (codebook_size >= 2)."
            )
        if isinstance(self.omega, str):
            if self.omega not in OMEGA_SCHEDULES:
                raise ValueError(
                    f"Unknown omega schedule {self.omega!r}; use one of {OMEGA_SCHEDULES} or an explicit list of "
                    f"{self.num_latent_tokens} ints."
                )
            self.omega = omega_schedule(self.num_latent_tokens, self.image_size, self.omega)
        else:
            self.omega = validate_omega(self.omega, self.num_latent_tokens, self.image_size)
        if self.spectral_supervision and self.num_latent_tokens > self.image_size:
            raise ValueError(
                f"num_latent_tokens = {self.num_latent_tokens} exceeds image_size = {self.image_size}: nested spectral "
                f"supervision trains each prefix k against lowpass(x, omega_k), and a {self.image_size}-pixel image "
                f"has only {self.image_size} distinct square low-pass levels, so tokens would share targets. Use at "
                f"most {self.image_size} tokens, a larger image_size, or spectral_supervision=False (TiTok-style 1D "
                f"tokens)."
            )
        if self.legacy_latent_projection and self.causal:
            raise ValueError(
                "legacy_latent_projection=True (TiTok's is_legacy encoder head) mixes the features of all latent "
                "tokens into every code, which breaks the spectral prefix property; set causal=False with it (the "
                "plain TiTok tokenizer), or use the default projection."
            )
        if self.pixel_decoder is not None:
            if self.decoder_output_conv:
                raise ValueError("decoder_output_conv (TiTok's RGB head) and pixel_decoder (TiTok's proxy-code head "
                                 "+ MaskGIT-VQGAN decoder) are alternatives; set only one of them.")
            self.pixel_decoder = self._check_pixel_decoder(self.pixel_decoder)
        super().__post_init__(**kwargs)

    def _check_pixel_decoder(self, settings: dict) -> dict:
        """Validate the `pixel_decoder` dict with `MaskGITVQGANConfig`'s checks; return it with every field filled."""
        unknown = sorted(set(settings) - set(PIXEL_DECODER_FIELDS))
        if unknown:
            hint = (" (image size and channels are the tokenizer's own image_size / num_channels)"
                    if {"image_size", "num_channels"} & set(unknown) else "")
            raise ValueError(f"pixel_decoder has unknown keys {unknown}{hint}; allowed: {list(PIXEL_DECODER_FIELDS)}.")
        try:
            vqgan = MaskGITVQGANConfig(image_size=self.image_size, num_channels=self.num_channels, **settings)
        except (TypeError, ValueError) as error:
            kind = TypeError if isinstance(error, TypeError) else ValueError
            raise kind(f"pixel_decoder: {error}") from None
        if vqgan.downsample_factor != self.patch_size:
            raise ValueError(
                f"pixel_decoder upsamples by {vqgan.downsample_factor} (2 ** (len(channel_mult) - 1) with channel_mult "
                f"{vqgan.channel_mult}) but patch_size is {self.patch_size}: the ViT decoder predicts one proxy code "
                f"per patch, so the upsampling factor must equal patch_size (TiTok: patch 16, channel_mult of 5 "
                f"levels)."
            )
        return {name: copy.deepcopy(getattr(vqgan, name)) for name in PIXEL_DECODER_FIELDS}

    @property
    def pixel_decoder_config(self) -> MaskGITVQGANConfig | None:
        """The `MaskGITVQGANConfig` of the pixel decoder (for `PixelDecoder.from_config` or to build the matching
        MaskGIT-VQGAN teacher), or `None` without a pixel decoder."""
        if self.pixel_decoder is None:
            return None
        return MaskGITVQGANConfig(image_size=self.image_size, num_channels=self.num_channels, **self.pixel_decoder)

    @property
    def grid_size(self) -> int:
        """Patches per side, `image_size // patch_size`."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Patch tokens per image, `grid_size ** 2`."""
        return self.grid_size**2

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "SpectralTokenizerConfig":
        """Build a named configuration (see `SPECTRAL_TOKENIZER_PRESETS`); keyword arguments override fields.

        When the preset's size changes (`num_latent_tokens` or `image_size`) and no `omega` is given, the schedule is
        rebuilt for the new size.
        """
        if name not in SPECTRAL_TOKENIZER_PRESETS:
            raise ValueError(f"Unknown tokenizer preset {name!r}; available: {sorted(SPECTRAL_TOKENIZER_PRESETS)}.")
        values = copy.deepcopy(SPECTRAL_TOKENIZER_PRESETS[name])
        values.update(overrides)
        return cls(**values)


def _divisor_hint(image_size: int, patch_size: int) -> int:
    divisors = [d for d in range(1, image_size + 1) if image_size % d == 0]
    return min(divisors, key=lambda d: (abs(d - patch_size), d))
