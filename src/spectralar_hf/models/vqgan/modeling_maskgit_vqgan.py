"""MaskGIT-VQGAN: a convolutional VQ autoencoder with a 16x downsampling and a 1024 x 256 codebook (the released
checkpoint), images in [0, 1].

TiTok trains its 1D tokenizer in two stages around it: stage 1 predicts this model's codes ("proxy codes"), stage 2
feeds `softmax(logits) @ codebook` into this model's decoder. The architecture is the one of bytedance/1d-tokenizer's
`modeling/modules/maskgit_vqgan.py` (itself from open-muse, a port of MaskGIT's JAX VQGAN); parameter names are the
keys of that code's `PretrainedTokenizer` state dict (`encoder.*`, `decoder.*`, `quantize.embedding.weight`), so
`conversion/convert_maskgit_vqgan.py` is a checked identity mapping. See `pixel_decoder.py` for the layer facts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.utils.accelerate_utils import apply_forward_hook
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from ...devices import no_autocast
from ...hub import SpectralARHubMixin
from ...utils import check_finite_tensor, check_int, check_pixel_range
from .configuration_maskgit_vqgan import MaskGITVQGANConfig
from .pixel_decoder import PixelDecoder, SamePadConv2d, VQGANDownBlock, check_level_sizes, res_blocks

# Largest deviation of a probability row's sum from 1 that `embed_soft_codes` accepts (bf16 softmax rounding).
SOFT_CODE_TOLERANCE = 1e-2


@dataclass
class MaskGITVQGANEncoderOutput(ModelOutput):
    """Output of [`MaskGITVQGAN.encode`].

    Args:
        codes (`torch.LongTensor` of shape `(batch_size, height, width)`): nearest codebook index of every latent
            pixel (`height = H / downsample_factor`).
        quantized (`torch.FloatTensor` of shape `(batch_size, z_channels, height, width)`): the codebook vectors of
            `codes` (float32); when gradients are recorded, with the straight-through gradient to the encoder.
        latents (`torch.FloatTensor` of shape `(batch_size, z_channels, height, width)`): encoder output before
            quantization.
        commitment_loss (`torch.FloatTensor`): `mean((latents - sg(quantized))^2)` (gradient to the encoder).
        codebook_loss (`torch.FloatTensor`): `mean((sg(latents) - quantized)^2)` (gradient to the codebook).
        quantization_loss (`torch.FloatTensor`): `commitment_loss + commitment_cost * codebook_loss`, the weighting
            of the official quantizer (which puts `commitment_cost` on the codebook term).
    """

    codes: torch.LongTensor | None = None
    quantized: torch.FloatTensor | None = None
    latents: torch.FloatTensor | None = None
    commitment_loss: torch.FloatTensor | None = None
    codebook_loss: torch.FloatTensor | None = None
    quantization_loss: torch.FloatTensor | None = None


@dataclass
class MaskGITVQGANDecoderOutput(ModelOutput):
    """Output of [`MaskGITVQGAN.decode`] / `decode_codes` / `decode_soft_codes`.

    Args:
        reconstruction (`torch.FloatTensor` of shape `(batch_size, num_channels, H, W)`): images in [0, 1] when
            clamped (the default), else the raw decoder output (about [0, 1]).
    """

    reconstruction: torch.FloatTensor | None = None


@dataclass
class MaskGITVQGANOutput(ModelOutput):
    """Output of [`MaskGITVQGAN.forward`]: encode, quantize and decode (unclamped).

    Args:
        loss (`torch.FloatTensor`): `reconstruction_loss + quantization_loss` (the plain VQ-VAE objective; the
            released model was also trained with perceptual and adversarial terms, which belong to a training script).
        reconstruction_loss (`torch.FloatTensor`): mean squared error between `reconstruction` and the input.
        quantization_loss, commitment_loss, codebook_loss: see [`MaskGITVQGANEncoderOutput`].
        reconstruction (`torch.FloatTensor` of shape `(batch_size, num_channels, H, W)`): unclamped decoder output.
        codes (`torch.LongTensor` of shape `(batch_size, height, width)`).
        latents, quantized (`torch.FloatTensor` of shape `(batch_size, z_channels, height, width)`).
    """

    loss: torch.FloatTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    quantization_loss: torch.FloatTensor | None = None
    commitment_loss: torch.FloatTensor | None = None
    codebook_loss: torch.FloatTensor | None = None
    reconstruction: torch.FloatTensor | None = None
    codes: torch.LongTensor | None = None
    latents: torch.FloatTensor | None = None
    quantized: torch.FloatTensor | None = None


class MaskGITVQGANEncoder(nn.Module):
    """Convolutional encoder: `(B, C, H, W)` images -> `(B, z_channels, H / f, W / f)` latents,
    `f = 2 ** (len(channel_mult) - 1)`.

    Layout: `conv_in` (3x3, no bias) to `hidden_channels`; levels `down[0..L-1]`, level `i` going from the width of
    level `i - 1` (`hidden_channels` for `i = 0`) to `hidden_channels * channel_mult[i]` and average-pooling 2x2
    except at the last level; `mid` ResNet blocks; `norm_out` -> SiLU -> `conv_out` (1x1) to `z_channels`.
    """

    def __init__(self, in_channels: int = 3, hidden_channels: int = 128,
                 channel_mult: Sequence[int] = (1, 1, 2, 2, 4), num_res_blocks: int = 2, z_channels: int = 256,
                 dropout: float = 0.0, norm_num_groups: int = 32, norm_eps: float = 1e-6):
        super().__init__()
        check_level_sizes(hidden_channels, channel_mult, num_res_blocks, norm_num_groups)
        widths = [hidden_channels * mult for mult in channel_mult]
        levels = len(widths)
        self.conv_in = SamePadConv2d(in_channels, hidden_channels, 3, bias=False)
        self.down = nn.ModuleList(
            VQGANDownBlock(hidden_channels if level == 0 else widths[level - 1], widths[level], num_res_blocks,
                           downsample=level < levels - 1, dropout=dropout, norm_num_groups=norm_num_groups,
                           norm_eps=norm_eps)
            for level in range(levels)
        )
        self.mid = res_blocks(widths[-1], widths[-1], num_res_blocks, dropout, norm_num_groups, norm_eps)
        self.norm_out = nn.GroupNorm(norm_num_groups, widths[-1], eps=norm_eps)
        self.conv_out = SamePadConv2d(widths[-1], z_channels, 1)

    @classmethod
    def from_config(cls, config: MaskGITVQGANConfig) -> "MaskGITVQGANEncoder":
        return cls(in_channels=config.num_channels, hidden_channels=config.hidden_channels,
                   channel_mult=config.channel_mult, num_res_blocks=config.num_res_blocks,
                   z_channels=config.z_channels, dropout=config.dropout, norm_num_groups=config.norm_num_groups,
                   norm_eps=config.norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden_states = self.conv_in(pixel_values)
        for level in self.down:
            hidden_states = level(hidden_states)
        for layer in self.mid:
            hidden_states = layer(hidden_states)
        return self.conv_out(F.silu(self.norm_out(hidden_states)))


class MaskGITVQGANQuantizer(nn.Module):
    """Nearest-neighbour vector quantizer over an unnormalised codebook (`embedding`, `(K, D)`), in float32.

    Squared Euclidean distances are expanded as `|z|^2 + |e|^2 - 2 z.e` (one matrix product), ties go to the lower
    index (`argmin`), and the straight-through estimator passes the gradient of the quantized vectors to the latents.
    """

    def __init__(self, codebook_size: int, codebook_dim: int, commitment_cost: float = 0.25):
        super().__init__()
        self.commitment_cost = commitment_cost
        self.embedding = nn.Embedding(codebook_size, codebook_dim)

    def distances(self, vectors: torch.Tensor) -> torch.Tensor:
        """Squared distances `(N, K)` of `N` vectors `(N, D)` to every codebook entry (float32, also under autocast)."""
        with no_autocast(vectors.device):
            codebook = self.embedding.weight.float()
            vectors = vectors.float()
            offsets = vectors.pow(2).sum(dim=1, keepdim=True) + codebook.pow(2).sum(dim=1)
            return torch.addmm(offsets, vectors, codebook.T, alpha=-2.0)

    def lookup(self, codes: torch.LongTensor) -> torch.Tensor:
        """Codebook vectors of a `(B, h, w)` code grid -> `(B, D, h, w)` (float32)."""
        return F.embedding(codes, self.embedding.weight.float()).permute(0, 3, 1, 2).contiguous()

    def soft_lookup(self, probabilities: torch.Tensor) -> torch.Tensor:
        """Expected codebook vectors `probabilities @ codebook`: `(B, h, w, K)` -> `(B, D, h, w)` (float32, also under
        autocast)."""
        with no_autocast(probabilities.device):
            vectors = probabilities.float() @ self.embedding.weight.float()
        return vectors.permute(0, 3, 1, 2).contiguous()

    def forward(self, latents: torch.Tensor):
        """`latents` `(B, D, h, w)` -> `(quantized (B, D, h, w), codes (B, h, w), commitment, codebook losses)`."""
        with torch.autocast(device_type=latents.device.type, enabled=False):
            z = latents.float()
            batch, dim, height, width = z.shape
            vectors = z.permute(0, 2, 3, 1).reshape(-1, dim)
            codes = self.distances(vectors).argmin(dim=1).view(batch, height, width)
            quantized = self.lookup(codes)
            commitment_loss = F.mse_loss(z, quantized.detach())
            codebook_loss = F.mse_loss(quantized, z.detach())
            if torch.is_grad_enabled() and z.requires_grad:
                quantized = z + (quantized - z).detach()  # straight-through
        return quantized, codes, commitment_loss, codebook_loss


class MaskGITVQGANPreTrainedModel(PreTrainedModel):
    config: MaskGITVQGANConfig
    config_class = MaskGITVQGANConfig
    base_model_prefix = "maskgit_vqgan"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["VQGANResnetBlock"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # Only for fresh models: from_pretrained marks loaded tensors and the `init` helpers leave those alone.
        # transformers (5.24) skips, for models outside its own code base, modules without parameters of their own
        # (e.g. the quantizer): the codebook is initialised through its `nn.Embedding`, the model's only one.
        if isinstance(module, nn.Conv2d):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.GroupNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            size = module.num_embeddings
            init.uniform_(module.weight, -1.0 / size, 1.0 / size)


class MaskGITVQGAN(SpectralARHubMixin, MaskGITVQGANPreTrainedModel):
    """MaskGIT-VQGAN: images in [0, 1] <-> a `(h, w)` grid of codes in `[0, codebook_size)`.

    Parameter names are the official `PretrainedTokenizer`'s: `encoder.*`, `quantize.embedding.weight`, `decoder.*`.

    Example:

    ```python
    >>> import torch
    >>> from spectralar_hf import MaskGITVQGAN, MaskGITVQGANConfig
    >>> model = MaskGITVQGAN(MaskGITVQGANConfig.from_preset("tiny")).eval()
    >>> images = torch.rand(2, 3, 16, 16)                     # (B, C, H, W) in [0, 1]
    >>> codes = model.encode(images).codes                    # (2, 8, 8) int64
    >>> images_back = model.decode_codes(codes).reconstruction  # (2, 3, 16, 16), clamped to [0, 1]
    >>> soft = torch.softmax(torch.randn(2, 8, 8, 32), dim=-1)  # (B, h, w, K) code probabilities
    >>> blurred = model.decode_soft_codes(soft).reconstruction
    ```
    """

    def __init__(self, config: MaskGITVQGANConfig):
        super().__init__(config)
        self.encoder = MaskGITVQGANEncoder.from_config(config)
        self.quantize = MaskGITVQGANQuantizer(config.codebook_size, config.codebook_dim, config.commitment_cost)
        self.decoder = PixelDecoder.from_config(config)
        self.post_init()

    @property
    def codebook(self) -> torch.Tensor:
        """The `(codebook_size, codebook_dim)` codebook."""
        return self.quantize.embedding.weight

    # ------------------------------------------------------------------ input checks

    def _check_pixel_values(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Validate `(B, C, H, W)` float images in [0, 1] with `H`, `W` divisible by the downsampling factor; return
        them in the model's dtype."""
        config = self.config
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(f"pixel_values must be a torch.Tensor of shape (B, C, H, W), got "
                            f"{type(pixel_values).__name__}; convert with `torch.as_tensor(x)`.")
        if not torch.is_floating_point(pixel_values):
            raise ValueError(f"pixel_values has integer dtype {pixel_values.dtype}; the MaskGIT-VQGAN expects floats "
                             f"in [0, 1]: use `images.float() / 255` for uint8 images.")
        if pixel_values.dim() != 4:
            raise ValueError(f"pixel_values must have shape (B, C, H, W), got {tuple(pixel_values.shape)}"
                             + ("; add the batch dimension with `x.unsqueeze(0)`." if pixel_values.dim() == 3 else "."))
        if pixel_values.shape[0] == 0:
            raise ValueError("pixel_values is an empty batch (0 images); pass at least one image.")
        if pixel_values.shape[1] != config.num_channels:
            raise ValueError(f"pixel_values has {pixel_values.shape[1]} channels but the MaskGIT-VQGAN expects "
                             f"{config.num_channels}.")
        height, width = pixel_values.shape[-2:]
        factor = config.downsample_factor
        if height % factor or width % factor:
            raise ValueError(f"pixel_values is {height}x{width}; height and width must be multiples of the "
                             f"downsampling factor {factor} (the model was trained on {config.image_size}x"
                             f"{config.image_size}): resize or crop the images first.")
        check_pixel_range("pixel_values", pixel_values, 0.0, 1.0)
        return pixel_values.to(self.dtype)

    def _check_codes(self, codes: torch.Tensor) -> torch.LongTensor:
        """Validate a `(B, h, w)` (or square `(B, h * w)`) integer code grid in `[0, codebook_size)`; return it as a
        `(B, h, w)` int64 tensor."""
        size = self.config.codebook_size
        if not isinstance(codes, torch.Tensor):
            raise TypeError(f"codes must be a torch.Tensor of shape (B, h, w), got {type(codes).__name__}.")
        if torch.is_floating_point(codes) or torch.is_complex(codes) or codes.dtype == torch.bool:
            raise ValueError(f"codes must be integer codebook indices, got dtype {codes.dtype}; use `codes.long()`.")
        if codes.dim() == 2:  # (B, h * w) of a square grid
            side = math.isqrt(codes.shape[1])
            if side * side != codes.shape[1]:
                raise ValueError(f"codes of shape {tuple(codes.shape)}: a (B, N) code sequence must hold a square grid "
                                 f"(N = side ** 2); pass (B, h, w) for other grids.")
            codes = codes.reshape(codes.shape[0], side, side)
        if codes.dim() != 3 or 0 in codes.shape:
            raise ValueError(f"codes must be a non-empty (B, h, w) integer tensor, got shape {tuple(codes.shape)}.")
        low, high = int(codes.min()), int(codes.max())
        if low < 0 or high >= size:
            raise ValueError(f"codes must lie in [0, {size}) (the codebook size), got values in [{low}, {high}]; were "
                             f"they produced by a model with another codebook?")
        return codes.long()

    def _check_soft_codes(self, probabilities: torch.Tensor, dim: int) -> torch.Tensor:
        """Validate code probabilities with the `K` axis at `dim`; return them as `(B, h, w, K)`."""
        size = self.config.codebook_size
        if not isinstance(probabilities, torch.Tensor) or not torch.is_floating_point(probabilities):
            raise ValueError(f"probabilities must be a float tensor of shape (B, h, w, {size}), got "
                             f"{getattr(probabilities, 'dtype', type(probabilities).__name__)}.")
        if probabilities.dim() != 4:
            raise ValueError(f"probabilities must have 4 dimensions ((B, h, w, {size}), or (B, {size}, h, w) with "
                             f"dim=1), got shape {tuple(probabilities.shape)}.")
        dim = check_int("dim", dim, low=-4, high=3)
        probabilities = probabilities.movedim(dim, -1)
        if probabilities.shape[-1] != size or 0 in probabilities.shape:
            raise ValueError(f"probabilities of shape {tuple(probabilities.shape)} (codebook axis last) must have "
                             f"{size} entries (the codebook size) on the codebook axis dim={dim}.")
        low, _ = check_finite_tensor("probabilities", probabilities.detach())
        sums = probabilities.detach().float().sum(dim=-1)
        error = float((sums - 1).abs().max())
        if low < 0 or error > SOFT_CODE_TOLERANCE:
            raise ValueError(f"probabilities must be non-negative and sum to 1 over the codebook axis (got minimum "
                             f"{low:.4g}, sums off by up to {error:.4g}); pass `logits.softmax(dim)`, not logits.")
        return probabilities

    def _check_quantized(self, quantized: torch.Tensor) -> torch.Tensor:
        if not isinstance(quantized, torch.Tensor) or not torch.is_floating_point(quantized):
            raise ValueError(f"quantized latents must be a float tensor of shape (B, {self.config.z_channels}, h, w), "
                             f"got {getattr(quantized, 'dtype', type(quantized).__name__)}.")
        if quantized.dim() != 4 or quantized.shape[1] != self.config.z_channels or 0 in quantized.shape:
            raise ValueError(f"quantized latents must have shape (B, {self.config.z_channels}, h, w), got "
                             f"{tuple(quantized.shape)}" + ("; for a code grid use decode_codes(codes)."
                                                            if quantized.dim() == 3 else "."))
        return quantized

    # ------------------------------------------------------------------ public API

    @apply_forward_hook
    def encode(self, pixel_values: torch.Tensor, return_dict: bool = True):
        """Encode images to codes.

        Args:
            pixel_values: `(B, C, H, W)` float images in [0, 1], `C = num_channels`, `H` and `W` multiples of
                `config.downsample_factor` (16 for the released model: 256 px -> a 16 x 16 grid).

        Returns:
            [`MaskGITVQGANEncoderOutput`]: `codes` `(B, H/f, W/f)` int64, `quantized` and `latents`
            `(B, z_channels, H/f, W/f)`, and the VQ losses.
        """
        pixel_values = self._check_pixel_values(pixel_values)
        latents = self.encoder(pixel_values)
        quantized, codes, commitment_loss, codebook_loss = self.quantize(latents)
        quantization_loss = commitment_loss + self.config.commitment_cost * codebook_loss
        output = MaskGITVQGANEncoderOutput(
            codes=codes, quantized=quantized, latents=latents, commitment_loss=commitment_loss,
            codebook_loss=codebook_loss, quantization_loss=quantization_loss,
        )
        return output if return_dict else output.to_tuple()

    def embed_codes(self, codes: torch.LongTensor) -> torch.Tensor:
        """Codebook vectors of a code grid: `(B, h, w)` (or square `(B, h * w)`) int -> `(B, z_channels, h, w)`."""
        return self.quantize.lookup(self._check_codes(codes))

    def embed_soft_codes(self, probabilities: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Expected codebook vectors `probabilities @ codebook`: `(B, h, w, K)` -> `(B, z_channels, h, w)` (float32).

        Args:
            probabilities: per-position distributions over the `K = codebook_size` codes (non-negative, summing to
                1), e.g. `logits.softmax(-1)`. A one-hot distribution gives exactly `embed_codes`.
            dim: the axis holding the `K` probabilities: -1 for `(B, h, w, K)`, 1 for TiTok's channel-first
                `(B, K, h, w)` (`decoded.softmax(1)`).
        """
        return self.quantize.soft_lookup(self._check_soft_codes(probabilities, dim))

    @apply_forward_hook
    def decode(self, quantized: torch.Tensor, clamp: bool = True, return_dict: bool = True):
        """Decode latents `(B, z_channels, h, w)` (codebook vectors, or mixtures of them) to images
        `(B, C, h * f, w * f)`, clamped to [0, 1] unless `clamp=False` (e.g. to train through the decoder)."""
        quantized = self._check_quantized(quantized)
        reconstruction = self.decoder(quantized.to(self.dtype))
        if clamp:
            reconstruction = reconstruction.clamp(0.0, 1.0)
        output = MaskGITVQGANDecoderOutput(reconstruction=reconstruction)
        return output if return_dict else output.to_tuple()

    @apply_forward_hook
    def decode_codes(self, codes: torch.LongTensor, clamp: bool = True, return_dict: bool = True):
        """Decode a `(B, h, w)` code grid (or a square `(B, h * w)` one, as the official `get_codebook_entry`) to
        `(B, C, h * f, w * f)` images in [0, 1] (clamped unless `clamp=False`)."""
        return self.decode(self.embed_codes(codes), clamp=clamp, return_dict=return_dict)

    @apply_forward_hook
    def decode_soft_codes(self, probabilities: torch.Tensor, dim: int = -1, clamp: bool = True,
                          return_dict: bool = True):
        """Decode per-position code distributions (see `embed_soft_codes`) to `(B, C, h * f, w * f)` images."""
        return self.decode(self.embed_soft_codes(probabilities, dim), clamp=clamp, return_dict=return_dict)

    def forward(self, pixel_values: torch.Tensor, return_dict: bool = True):
        """Encode, quantize and decode `(B, C, H, W)` images in [0, 1].

        Returns:
            [`MaskGITVQGANOutput`] with the unclamped `reconstruction` and `loss = MSE + quantization_loss`.
        """
        encoded = self.encode(pixel_values)
        reconstruction = self.decoder(encoded.quantized.to(self.dtype))
        reconstruction_loss = F.mse_loss(reconstruction.float(), pixel_values.float())
        output = MaskGITVQGANOutput(
            loss=reconstruction_loss + encoded.quantization_loss, reconstruction_loss=reconstruction_loss,
            quantization_loss=encoded.quantization_loss, commitment_loss=encoded.commitment_loss,
            codebook_loss=encoded.codebook_loss, reconstruction=reconstruction, codes=encoded.codes,
            latents=encoded.latents, quantized=encoded.quantized,
        )
        return output if return_dict else output.to_tuple()
