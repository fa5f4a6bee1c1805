"""Nested Spectral Tokenizer (SpectralAR §3.2, Algorithm 1).

An image becomes N discrete spectral tokens whose every prefix ``s_1..s_k`` decodes to the DCT low-pass image of
size ``omega_k`` (Eq. 5-6):

* encoder: ViT over ``[patches; N learned latent tokens]``; with the spectral causal mask latent ``i`` sees all
  patches and latents ``<= i`` while patches never see latents (otherwise later latents would leak into earlier
  ones through the patches);
* quantizer: l2-normalised codebook, straight-through estimator, commitment loss (TiTok);
* decoder: ViT over ``[h*w mask tokens; s_1..s_k]``; mask tokens see every present spectral token, spectral token
  ``i`` sees only spectral tokens ``<= i``. Per-sample prefix lengths are one batched pass with attention masking.
  Its per-patch outputs become pixels through a linear head, or (``config.pixel_decoder``, TiTok's stage 2) through
  proxy-code logits, ``softmax @ codebook`` and a MaskGIT-VQGAN pixel decoder.

TiTok's own options (class token, its legacy latent projection, its RGB output convolution, the pixel decoder) are
config flags; see [`SpectralTokenizerConfig`].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.utils.accelerate_utils import apply_forward_hook
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput

from ...hub import SpectralARHubMixin
from ...spectral import spectral_target, validate_omega
from ...utils import check_generator, check_pixel_range
from ..vqgan.modeling_maskgit_vqgan import MaskGITVQGANQuantizer
from ..vqgan.pixel_decoder import PixelDecoder
from .configuration_spectral_tokenizer import SpectralTokenizerConfig


@dataclass
class SpectralTokenizerEncoderOutput(ModelOutput):
    """Output of [`SpectralTokenizer.encode`].

    Args:
        codes (`torch.LongTensor` of shape `(batch_size, num_latent_tokens)`): codebook indices, spectral order.
        quantized (`torch.FloatTensor` of shape `(batch_size, num_latent_tokens, token_dim)`): codebook vectors with
            the straight-through gradient to the encoder.
        latents (`torch.FloatTensor` of shape `(batch_size, num_latent_tokens, token_dim)`): pre-quantisation
            encoder outputs (before l2 normalisation).
        commitment_loss (`torch.FloatTensor`): `||z - sg(z_q)||^2`, unweighted.
        codebook_loss (`torch.FloatTensor`): `||sg(z) - z_q||^2`.
    """

    codes: torch.LongTensor | None = None
    quantized: torch.FloatTensor | None = None
    latents: torch.FloatTensor | None = None
    commitment_loss: torch.FloatTensor | None = None
    codebook_loss: torch.FloatTensor | None = None


@dataclass
class SpectralTokenizerDecoderOutput(ModelOutput):
    """Output of [`SpectralTokenizer.decode`].

    Args:
        reconstruction (`torch.FloatTensor` of shape `(batch_size, num_channels, image_size, image_size)`): the
            decoded low-pass image for each sample's prefix, in about [-1, 1] (not clamped).
        num_tokens (`torch.LongTensor` of shape `(batch_size,)`): the prefix length used for each sample.
        proxy_logits (`torch.FloatTensor` of shape `(batch_size, pixel_codebook_size, grid_size, grid_size)`, only
            with a pixel decoder): the per-patch logits over the MaskGIT-VQGAN codebook (TiTok's stage 1 trains them
            with `F.cross_entropy(proxy_logits, vqgan_codes)`, `vqgan_codes` of shape `(batch_size, grid, grid)`).
    """

    reconstruction: torch.FloatTensor | None = None
    num_tokens: torch.LongTensor | None = None
    proxy_logits: torch.FloatTensor | None = None


@dataclass
class SpectralTokenizerOutput(ModelOutput):
    """Output of [`SpectralTokenizer.forward`]: one training step of Algorithm 1.

    Args:
        loss (`torch.FloatTensor`): `reconstruction_loss + codebook_loss + commitment_cost * commitment_loss`.
        reconstruction_loss (`torch.FloatTensor`): mean squared error between `reconstruction` and `target`.
        full_length_loss (`torch.FloatTensor`, only with `config.full_length_loss_weight > 0`): mean squared error
            between the all-N-token reconstruction and the full image; `loss` includes it times that weight.
        codebook_loss, commitment_loss (`torch.FloatTensor`): the VQ terms (see [`SpectralTokenizerEncoderOutput`]).
        reconstruction (`torch.FloatTensor` of shape `(batch_size, num_channels, image_size, image_size)`).
        target (`torch.FloatTensor` of the same shape): `lowpass(x, omega_k)` with spectral supervision, else `x`.
        codes (`torch.LongTensor` of shape `(batch_size, num_latent_tokens)`).
        latents (`torch.FloatTensor` of shape `(batch_size, num_latent_tokens, token_dim)`): pre-quantisation
            encoder outputs (used e.g. to restart dead codes).
        num_tokens (`torch.LongTensor` of shape `(batch_size,)`): the prefix length `k` of each sample.
        proxy_logits (`torch.FloatTensor`, only with a pixel decoder): see [`SpectralTokenizerDecoderOutput`].
    """

    loss: torch.FloatTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    full_length_loss: torch.FloatTensor | None = None
    codebook_loss: torch.FloatTensor | None = None
    commitment_loss: torch.FloatTensor | None = None
    reconstruction: torch.FloatTensor | None = None
    target: torch.FloatTensor | None = None
    codes: torch.LongTensor | None = None
    latents: torch.FloatTensor | None = None
    num_tokens: torch.LongTensor | None = None
    proxy_logits: torch.FloatTensor | None = None


class SpectralTokenizerAttention(nn.Module):
    """Multi-head self-attention (SDPA) with an optional boolean mask (`True` = may attend)."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, length, width = hidden_states.shape
        qkv = self.qkv(hidden_states).view(batch, length, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, L, head_dim)
        attended = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)
        return self.proj(attended.transpose(1, 2).reshape(batch, length, width))


class SpectralTokenizerMLP(nn.Module):
    def __init__(self, hidden_size: int, mlp_ratio: float):
        super().__init__()
        inner = int(hidden_size * mlp_ratio)
        self.fc1 = nn.Linear(hidden_size, inner)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(inner, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class SpectralTokenizerBlock(GradientCheckpointingLayer):
    """Pre-norm transformer block."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, eps=eps)
        self.attn = SpectralTokenizerAttention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, eps=eps)
        self.mlp = SpectralTokenizerMLP(hidden_size, mlp_ratio)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        hidden_states = hidden_states + self.attn(self.norm1(hidden_states), attention_mask)
        return hidden_states + self.mlp(self.norm2(hidden_states))


class SpectralTokenizerEncoder(nn.Module):
    """ViT over `[(class token;) patches; latent tokens]` -> `(B, N, token_dim)` continuous latents."""

    def __init__(self, config: SpectralTokenizerConfig):
        super().__init__()
        width = config.encoder_hidden_size
        self.causal = config.causal
        self.num_patches = config.num_patches
        self.num_latent_tokens = config.num_latent_tokens
        self.legacy_latent_projection = config.legacy_latent_projection
        # image-side tokens: the patches, behind TiTok's class token when there is one
        self.num_image_tokens = config.num_patches + int(config.class_token)
        self.patch_embed = nn.Conv2d(config.num_channels, width, config.patch_size, stride=config.patch_size)
        self.class_embedding = nn.Parameter(torch.empty(width)) if config.class_token else None
        self.position_embedding = nn.Parameter(torch.empty(self.num_image_tokens, width))
        self.latent_tokens = nn.Parameter(torch.empty(config.num_latent_tokens, width))
        self.latent_position_embedding = nn.Parameter(torch.empty(config.num_latent_tokens, width))
        self.norm_pre = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(
            SpectralTokenizerBlock(width, config.encoder_num_attention_heads, config.encoder_mlp_ratio,
                                   config.layer_norm_eps)
            for _ in range(config.encoder_num_hidden_layers)
        )
        self.norm_post = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.proj = nn.Linear(width, config.token_dim)

    def attention_mask(self, device: torch.device) -> torch.Tensor | None:
        """`(L, L)` boolean mask over `[(class;) patches; latents]`, or `None` for full attention (`causal=False`)."""
        if not self.causal:
            return None
        num_image, num_latents = self.num_image_tokens, self.num_latent_tokens
        mask = torch.ones(num_image + num_latents, num_image + num_latents, dtype=torch.bool, device=device)
        mask[:num_image, num_image:] = False  # patches (and the class token) never see latents
        mask[num_image:, num_image:] = torch.ones(num_latents, num_latents, dtype=torch.bool, device=device).tril()
        return mask

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed(pixel_values).flatten(2).transpose(1, 2)
        if self.class_embedding is not None:  # TiTok: [class; patches] + positional_embedding
            cls = self.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)
            patches = torch.cat([cls, patches], dim=1)
        patches = patches + self.position_embedding
        latents = (self.latent_tokens + self.latent_position_embedding).expand(patches.shape[0], -1, -1)
        hidden_states = self.norm_pre(torch.cat([patches, latents.to(patches.dtype)], dim=1))
        mask = self.attention_mask(hidden_states.device)
        for layer in self.layers:
            hidden_states = layer(hidden_states, mask)
        latents = self.norm_post(hidden_states[:, self.num_image_tokens:])
        if self.legacy_latent_projection:
            # TiTok's is_legacy head reshapes (B, N, width) to (B, width, N, 1) before its 1x1 conv: row-major
            # reinterpretation, so latent m reads the features at flat positions c * N + m of all tokens.
            batch, length, width = latents.shape
            latents = latents.reshape(batch, width, length).transpose(1, 2)
        return self.proj(latents)


class SpectralTokenizerQuantizer(nn.Module):
    """Vector quantizer with an (optionally l2-normalised) codebook and a straight-through estimator (fp32)."""

    def __init__(self, config: SpectralTokenizerConfig):
        super().__init__()
        self.l2_normalize = config.l2_normalize_codebook
        self.codebook = nn.Embedding(config.codebook_size, config.token_dim)

    def normalized_codebook(self, device: torch.device | None = None) -> torch.Tensor:
        """The `(K, token_dim)` codebook in float32, l2-normalised when configured. With `device`, its rows are read
        through the embedding's forward (onto `device`), so that offload hooks place the weights first."""
        if device is None:
            weight = self.codebook.weight.float()
        else:
            weight = self.codebook(torch.arange(self.codebook.num_embeddings, device=device)).float()
        return F.normalize(weight, dim=-1) if self.l2_normalize else weight

    def lookup(self, codes: torch.LongTensor) -> torch.Tensor:
        """Codebook vectors of `codes` `(B, k)` -> `(B, k, token_dim)` (normalised like the quantizer output). Read
        through the embedding's forward, so that offload hooks (`enable_sequential_cpu_offload`) place it first."""
        vectors = self.codebook(codes).float()
        return F.normalize(vectors, dim=-1) if self.l2_normalize else vectors

    def forward(self, latents: torch.Tensor):
        with torch.autocast(device_type=latents.device.type, enabled=False):
            z = latents.float()
            if self.l2_normalize:
                z = F.normalize(z, dim=-1)
            codebook = self.normalized_codebook(latents.device)
            if self.l2_normalize:  # nearest by cosine similarity
                codes = (z @ codebook.T).argmax(dim=-1)
            else:  # nearest by Euclidean distance
                distances = z.pow(2).sum(-1, keepdim=True) - 2 * z @ codebook.T + codebook.pow(2).sum(-1)
                codes = distances.argmin(dim=-1)
            quantized = F.embedding(codes, codebook)
            commitment_loss = F.mse_loss(z, quantized.detach())
            codebook_loss = F.mse_loss(quantized, z.detach())
            quantized = z + (quantized - z).detach()  # straight-through
        return quantized, codes, commitment_loss, codebook_loss


class SpectralTokenizerDecoder(nn.Module):
    """ViT over `[(class token;) h*w mask tokens; s_1..s_k]` -> `(B, C, H, W)` image of the prefix's spectral level,
    or, with a pixel decoder, `(B, h*w, K)` proxy-code logits per patch (TiTok's `ffn` head)."""

    def __init__(self, config: SpectralTokenizerConfig):
        super().__init__()
        width = config.decoder_hidden_size
        self.causal = config.causal
        self.num_patches = config.num_patches
        self.num_image_tokens = config.num_patches + int(config.class_token)
        self.grid_size = config.grid_size
        self.patch_size = config.patch_size
        self.num_channels = config.num_channels
        self.token_embed = nn.Linear(config.token_dim, width)
        self.class_embedding = nn.Parameter(torch.empty(width)) if config.class_token else None
        self.mask_token = nn.Parameter(torch.empty(width))
        self.position_embedding = nn.Parameter(torch.empty(self.num_image_tokens, width))
        self.latent_position_embedding = nn.Parameter(torch.empty(config.num_latent_tokens, width))
        self.norm_pre = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(
            SpectralTokenizerBlock(width, config.decoder_num_attention_heads, config.decoder_mlp_ratio,
                                   config.layer_norm_eps)
            for _ in range(config.decoder_num_hidden_layers)
        )
        self.norm_post = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.head = self.conv_out = self.ffn = None
        if config.pixel_decoder is None:
            self.head = nn.Linear(width, config.patch_size**2 * config.num_channels)
            # TiTok's is_legacy=False RGB head ends with a 3x3 convolution on the unpatchified image
            if config.decoder_output_conv:
                self.conv_out = nn.Conv2d(config.num_channels, config.num_channels, 3, padding=1)
        else:
            # TiTok's is_legacy=True head (1x1 convs there, per-token linears here): proxy-code logits per patch
            self.ffn = nn.Sequential(nn.Linear(width, 2 * width), nn.Tanh(),
                                     nn.Linear(2 * width, config.pixel_decoder["codebook_size"]))

    def attention_mask(self, num_tokens: torch.Tensor, length: int) -> torch.Tensor | None:
        """`(B, 1, L, L)` boolean mask over `[(class;) mask tokens; s_1..s_length]` for per-sample prefixes
        `num_tokens`.

        Spectral tokens beyond a sample's prefix are hidden from every query. With `causal`, spectral token `i`
        sees only spectral tokens `<= i` (not the mask tokens, which carry information about later tokens, nor the
        class token). Returns `None` when every query may see every key (no causal mask and all prefixes of full
        length).
        """
        if not self.causal and bool((num_tokens == length).all()):
            return None
        device = num_tokens.device
        num_patches = self.num_image_tokens  # the image side: mask tokens and the class token
        present = torch.arange(length, device=device) < num_tokens.unsqueeze(1)  # (B, length)
        keys = torch.cat([present.new_ones(present.shape[0], num_patches), present], dim=1)  # (B, L)
        mask = keys[:, None, :].repeat(1, num_patches + length, 1)  # (B, L, L)
        if self.causal:
            mask[:, num_patches:, :num_patches] = False
            mask[:, num_patches:, num_patches:] &= torch.ones(length, length, dtype=torch.bool, device=device).tril()
        return mask.unsqueeze(1)

    def forward(self, tokens: torch.Tensor, num_tokens: torch.Tensor) -> torch.Tensor:
        """`tokens` `(B, k, token_dim)` quantized vectors, `num_tokens` `(B,)` prefix lengths `<= k`.

        Returns the `(B, C, H, W)` image, or with a pixel decoder the `(B, h*w, K)` proxy-code logits (row-major
        patches).
        """
        batch, length = tokens.shape[:2]
        spectral = self.token_embed(tokens) + self.latent_position_embedding[:length]
        if self.class_embedding is None:
            image_side = self.mask_token + self.position_embedding
        else:  # TiTok: [class; mask tokens] + positional_embedding
            masks = self.mask_token.expand(self.num_patches, -1)
            image_side = torch.cat([self.class_embedding[None], masks], dim=0) + self.position_embedding
        image_side = image_side.expand(batch, -1, -1).to(spectral.dtype)
        hidden_states = self.norm_pre(torch.cat([image_side, spectral], dim=1))
        mask = self.attention_mask(num_tokens, length)
        for layer in self.layers:
            hidden_states = layer(hidden_states, mask)
        first = self.num_image_tokens - self.num_patches  # drop the class token's output
        patches = self.norm_post(hidden_states[:, first : self.num_image_tokens])
        if self.ffn is not None:
            return self.ffn(patches)
        image = self.unpatchify(self.head(patches))
        return image if self.conv_out is None else self.conv_out(image)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """`(B, h*w, p*p*C)` -> `(B, C, h*p, w*p)`."""
        batch, grid, size, channels = patches.shape[0], self.grid_size, self.patch_size, self.num_channels
        image = patches.view(batch, grid, grid, size, size, channels).permute(0, 5, 1, 3, 2, 4)
        return image.reshape(batch, channels, grid * size, grid * size)


class SpectralTokenizerPreTrainedModel(PreTrainedModel):
    config: SpectralTokenizerConfig
    config_class = SpectralTokenizerConfig
    base_model_prefix = "spectral_tokenizer"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["SpectralTokenizerBlock"]
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # Xavier-uniform linear and patch layers (as MAE / timm ViTs): a width-independent gain keeps the latents
        # image-dependent at init for small and large presets alike, so VQ codes do not start collapsed.
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            init.xavier_uniform_(module.weight.view(module.weight.shape[0], -1))
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):  # GroupNorm: the pixel decoder's
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, SpectralTokenizerEncoder):
            scale = module.latent_tokens.shape[-1] ** -0.5
            init.normal_(module.position_embedding, std=scale)
            init.normal_(module.latent_tokens, std=scale)
            init.normal_(module.latent_position_embedding, std=scale)
            if module.class_embedding is not None:  # TiTok: width ** -0.5, as its other embeddings
                init.normal_(module.class_embedding, std=scale)
        elif isinstance(module, SpectralTokenizerDecoder):
            scale = module.mask_token.shape[-1] ** -0.5
            init.normal_(module.mask_token, std=scale)
            init.normal_(module.position_embedding, std=scale)
            init.normal_(module.latent_position_embedding, std=scale)
            if module.class_embedding is not None:
                init.normal_(module.class_embedding, std=scale)
        elif isinstance(module, nn.Embedding):  # the quantizer's codebook (its module has no parameters of its own,
            size = module.num_embeddings      # and transformers skips such modules): uniform in +-1/K, as TiTok;
            # the pixel decoder's proxy codebook too (normally loaded from a MaskGIT-VQGAN)
            init.uniform_(module.weight, -1.0 / size, 1.0 / size)


class SpectralTokenizer(SpectralARHubMixin, SpectralTokenizerPreTrainedModel):
    """Nested Spectral Tokenizer: images in [-1, 1] <-> N spectral codes whose prefixes are DCT low-pass images.

    Example:

    ```python
    >>> import torch
    >>> from spectralar_hf import SpectralTokenizer, SpectralTokenizerConfig
    >>> tokenizer = SpectralTokenizer(SpectralTokenizerConfig.from_preset("tiny-32")).eval()
    >>> images = torch.rand(2, 3, 32, 32) * 2 - 1
    >>> codes = tokenizer.encode(images).codes                      # (2, 16) int64
    >>> coarse = tokenizer.decode(codes, num_tokens=4).reconstruction  # image of omega_4
    >>> step = tokenizer(images)                                    # one Algorithm 1 step: step.loss.backward()
    ```
    """

    def __init__(self, config: SpectralTokenizerConfig):
        super().__init__(config)
        validate_omega(config.omega, config.num_latent_tokens, config.image_size)
        self.encoder = SpectralTokenizerEncoder(config)
        self.quantizer = SpectralTokenizerQuantizer(config)
        self.decoder = SpectralTokenizerDecoder(config)
        pixel_config = config.pixel_decoder_config
        if pixel_config is not None:
            # TiTok's names: `pixel_quantize.embedding.weight` (the MaskGIT-VQGAN codebook) and `pixel_decoder.*`
            # (the MaskGIT-VQGAN `decoder.*`), so both load from a MaskGIT-VQGAN state dict by a prefix change.
            self.pixel_quantize = MaskGITVQGANQuantizer(pixel_config.codebook_size, pixel_config.codebook_dim)
            self.pixel_decoder = PixelDecoder.from_config(pixel_config)
        else:
            self.pixel_quantize = self.pixel_decoder = None
        self.post_init()

    # ------------------------------------------------------------------ input checks

    def _check_pixel_values(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Validate `(B, C, H, W)` images in [-1, 1]; return them in the model's float dtype (float64 / float16
        inputs are converted, as diffusers does)."""
        config = self.config
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(f"pixel_values must be a torch.Tensor of shape (B, C, H, W), got "
                            f"{type(pixel_values).__name__}; convert with `torch.as_tensor(x)`.")
        if not torch.is_floating_point(pixel_values):
            raise ValueError(
                f"pixel_values has integer dtype {pixel_values.dtype}; the tokenizer expects floats in [-1, 1]: use "
                f"`images.float() / 127.5 - 1` for uint8 images."
            )
        if pixel_values.dim() != 4:
            raise ValueError(f"pixel_values must have shape (B, C, H, W), got {tuple(pixel_values.shape)}"
                             + ("; add the batch dimension with `x.unsqueeze(0)`." if pixel_values.dim() == 3 else "."))
        if pixel_values.shape[0] == 0:
            raise ValueError("pixel_values is an empty batch (0 images); pass at least one image.")
        if pixel_values.shape[1] != config.num_channels:
            raise ValueError(
                f"pixel_values has {pixel_values.shape[1]} channels but the tokenizer expects {config.num_channels}; "
                + ("convert RGB to grayscale (e.g. `x.mean(1, keepdim=True)`)." if config.num_channels == 1
                   else "repeat grayscale channels (`x.expand(-1, 3, -1, -1)`).")
            )
        if pixel_values.shape[-2:] != (config.image_size, config.image_size):
            raise ValueError(
                f"pixel_values is {pixel_values.shape[-2]}x{pixel_values.shape[-1]} but the tokenizer expects "
                f"{config.image_size}x{config.image_size}; resize (or crop) the images to that size first."
            )
        check_pixel_range("pixel_values", pixel_values, -1.0, 1.0)
        return pixel_values.to(self.dtype)

    def _prefix_lengths(self, num_tokens: int | torch.Tensor | None, batch: int, available: int,
                        device: torch.device) -> torch.LongTensor:
        """Validate `num_tokens` (None, int, or `(B,)` tensor) against `[1, available]`; return a `(B,)` tensor."""
        limit = self.config.num_latent_tokens
        if num_tokens is None:
            return torch.full((batch,), available, dtype=torch.long, device=device)
        if isinstance(num_tokens, torch.Tensor):
            if num_tokens.dim() == 0:
                num_tokens = int(num_tokens)
            else:
                wrong_type = torch.is_floating_point(num_tokens) or num_tokens.dtype == torch.bool
                if num_tokens.shape != (batch,) or wrong_type:
                    raise ValueError(f"num_tokens must be an int or a (B,) integer tensor with B = {batch}, got "
                                     f"{num_tokens.dtype} of shape {tuple(num_tokens.shape)}.")
                low, high = int(num_tokens.min()), int(num_tokens.max())
                if low < 1 or high > available:
                    raise ValueError(_prefix_error(low, high, available, limit))
                return num_tokens.to(device=device, dtype=torch.long)
        numpy_scalar = not isinstance(num_tokens, torch.Tensor) and getattr(num_tokens, "ndim", 1) == 0
        if hasattr(num_tokens, "dtype") and numpy_scalar:
            num_tokens = num_tokens.item()  # NumPy integer scalars
        if isinstance(num_tokens, bool) or not isinstance(num_tokens, int):
            raise ValueError(f"num_tokens must be an int or a (B,) integer tensor, got {type(num_tokens).__name__}.")
        if not 1 <= num_tokens <= available:
            raise ValueError(_prefix_error(num_tokens, num_tokens, available, limit))
        return torch.full((batch,), num_tokens, dtype=torch.long, device=device)

    def _decode_tokens(self, tokens: torch.Tensor, prefix: torch.LongTensor):
        """ViT decoder (+ pixel decoder): `(reconstruction in [-1, 1], proxy_logits (B, K, h, w) or None)`."""
        output = self.decoder(tokens, prefix)
        if self.pixel_decoder is None:
            return output, None
        proxy_logits = self._proxy_logits(output)
        return self._pixel_decode(proxy_logits.float().softmax(dim=1)), proxy_logits

    def _proxy_logits(self, patch_logits: torch.Tensor) -> torch.Tensor:
        """The decoder's `(B, h*w, K)` per-patch logits as TiTok's `(B, K, h, w)` grid."""
        grid = self.config.grid_size
        return patch_logits.transpose(1, 2).reshape(patch_logits.shape[0], -1, grid, grid)

    def _pixel_decode(self, probabilities: torch.Tensor) -> torch.Tensor:
        # TiTok.decode: einsum('nchw,cd->ndhw', softmax(logits, 1), codebook), then the MaskGIT-VQGAN decoder. Here
        # in float32 (as MaskGITVQGAN.embed_soft_codes); the VQGAN's [0, 1] output is mapped to [-1, 1] by 2y - 1.
        latents = self.pixel_quantize.soft_lookup(probabilities.movedim(1, -1))
        return self.pixel_decoder(latents.to(self.dtype)) * 2 - 1

    def pixel_decode(self, probabilities: torch.Tensor) -> torch.Tensor:
        """Decode per-patch proxy-code distributions with the pixel decoder (only with `config.pixel_decoder`).

        Args:
            probabilities: `(B, K, grid_size, grid_size)` float distributions over the `K` proxy codes (the layout of
                `proxy_logits.softmax(1)`); a one-hot grid gives the MaskGIT-VQGAN decode of those codes.

        Returns:
            `(B, C, H, W)` images in the tokenizer's [-1, 1] convention (`2 * vqgan_output - 1`, unclamped).
        """
        if self.pixel_decoder is None:
            raise ValueError("This tokenizer has no pixel decoder (config.pixel_decoder is None); its decode() "
                             "predicts pixels directly.")
        config = self.config
        size, grid = config.pixel_decoder["codebook_size"], config.grid_size
        if (not isinstance(probabilities, torch.Tensor) or not torch.is_floating_point(probabilities)
                or probabilities.dim() != 4 or tuple(probabilities.shape[1:]) != (size, grid, grid)
                or probabilities.shape[0] == 0):
            raise ValueError(f"probabilities must be a float tensor of shape (B, {size}, {grid}, {grid}) (proxy codes "
                             f"x patch grid), got {getattr(probabilities, 'dtype', type(probabilities).__name__)} of "
                             f"shape {tuple(getattr(probabilities, 'shape', ()))}.")
        return self._pixel_decode(probabilities)

    def last_layer_weight(self) -> nn.Parameter:
        """Weight of the layer that outputs pixels (for the adaptive GAN weight of VQGAN-style training):
        `pixel_decoder.conv_out`, else `decoder.conv_out` (TiTok's RGB head), else the linear head `decoder.head`."""
        if self.pixel_decoder is not None:
            return self.pixel_decoder.conv_out.weight
        if self.decoder.conv_out is not None:
            return self.decoder.conv_out.weight
        return self.decoder.head.weight

    # ------------------------------------------------------------------ public API

    @apply_forward_hook
    def encode(self, pixel_values: torch.Tensor, return_dict: bool = True):
        """Encode images to spectral codes.

        Args:
            pixel_values: `(B, C, H, W)` float images in [-1, 1] with `C = num_channels`, `H = W = image_size`.

        Returns:
            [`SpectralTokenizerEncoderOutput`] with `codes` `(B, N)` int64 and `quantized` `(B, N, token_dim)`.
        """
        return self._encode(self._check_pixel_values(pixel_values), return_dict)

    def _encode(self, pixel_values: torch.Tensor, return_dict: bool = True):
        latents = self.encoder(pixel_values)
        quantized, codes, commitment_loss, codebook_loss = self.quantizer(latents)
        output = SpectralTokenizerEncoderOutput(
            codes=codes, quantized=quantized, latents=latents,
            commitment_loss=commitment_loss, codebook_loss=codebook_loss,
        )
        return output if return_dict else output.to_tuple()

    @apply_forward_hook
    def decode(self, codes: torch.LongTensor, num_tokens: int | torch.Tensor | None = None, return_dict: bool = True):
        """Decode the first `num_tokens` codes of each sample to the low-pass image of `omega_k` (Eq. 6).

        Args:
            codes: `(B, k)` int64 codes in `[0, codebook_size)`, `1 <= k <= N` (a prefix is fine).
            num_tokens: prefix length, an int or a `(B,)` tensor of per-sample lengths in `[1, k]`; defaults to
                `k`. Codes after a sample's prefix are ignored (they cannot change its output).

        Returns:
            [`SpectralTokenizerDecoderOutput`] with `reconstruction` `(B, C, H, W)` (and, with a pixel decoder,
            `proxy_logits` `(B, K, grid_size, grid_size)`).
        """
        config = self.config
        if not isinstance(codes, torch.Tensor) or codes.dim() != 2:
            raise ValueError(f"codes must be a (B, k) integer tensor, got {getattr(codes, 'shape', type(codes))}"
                             + ("; add the batch dimension with `codes.unsqueeze(0)`." if getattr(codes, "ndim", 0) == 1
                                else "."))
        if codes.shape[0] == 0:
            raise ValueError("codes is an empty batch (0 rows); pass at least one row of codes.")
        if torch.is_floating_point(codes) or codes.dtype == torch.bool:
            raise ValueError(f"codes must be integer codebook indices, got dtype {codes.dtype}; use `codes.long()`.")
        if not 1 <= codes.shape[1] <= config.num_latent_tokens:
            raise ValueError(f"codes has {codes.shape[1]} columns; it must hold between 1 and "
                             f"{config.num_latent_tokens} spectral tokens.")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= config.codebook_size):
            raise ValueError(
                f"codes must lie in [0, {config.codebook_size}) (the codebook size), got values in "
                f"[{int(codes.min())}, {int(codes.max())}]; were they produced by a tokenizer with another codebook?"
            )
        prefix = self._prefix_lengths(num_tokens, codes.shape[0], codes.shape[1], codes.device)
        length = int(prefix.max())
        tokens = self.quantizer.lookup(codes[:, :length].long()).to(self.dtype)
        reconstruction, proxy_logits = self._decode_tokens(tokens, prefix)
        output = SpectralTokenizerDecoderOutput(reconstruction=reconstruction, num_tokens=prefix,
                                                proxy_logits=proxy_logits)
        return output if return_dict else output.to_tuple()

    def forward(
        self,
        pixel_values: torch.Tensor,
        num_tokens: int | torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        decode_pixels: bool = True,
        return_dict: bool = True,
    ):
        """One training step of Algorithm 1.

        Args:
            pixel_values: `(B, C, H, W)` float images in [-1, 1].
            num_tokens: prefix length(s) to decode (int or `(B,)` tensor). Default: with `spectral_supervision`, a
                uniform random `k` in `[1, N]` per sample (drawn with `generator`); without it, `N`.
            generator: `torch.Generator` for the random prefix lengths.
            decode_pixels: with a pixel decoder, `False` stops after the proxy-code logits (TiTok's stage 1, whose
                cross-entropy against a teacher's codes of `target` needs no pixels): `reconstruction` and
                `reconstruction_loss` are then `None` and `loss` holds the VQ terms only.

        Returns:
            [`SpectralTokenizerOutput`]; `loss` = MSE(reconstruction, target) + VQ terms. With spectral supervision
            the target of prefix `k` is `lowpass(x, omega_k)`, otherwise the full image `x`. With
            `config.full_length_loss_weight` w > 0 (ours), `loss` adds w * MSE(all-N-token reconstruction, x).
        """
        config = self.config
        if not decode_pixels and self.pixel_decoder is None:
            raise ValueError("decode_pixels=False skips the pixel decoder, but this tokenizer has none "
                             "(config.pixel_decoder is None): its decoder predicts pixels directly.")
        pixel_values = self._check_pixel_values(pixel_values)
        check_generator(generator)
        encoded = self._encode(pixel_values)
        batch = pixel_values.shape[0]
        if num_tokens is None and config.spectral_supervision:
            device = generator.device if generator is not None else pixel_values.device
            num_tokens = torch.randint(1, config.num_latent_tokens + 1, (batch,), generator=generator, device=device)
        prefix = self._prefix_lengths(num_tokens, batch, config.num_latent_tokens, pixel_values.device)
        if config.spectral_supervision:
            target = spectral_target(pixel_values, config.omega, prefix)
        else:
            target = pixel_values
        full_length = config.full_length_loss_weight > 0
        if full_length and not decode_pixels:
            raise ValueError("full_length_loss_weight adds a pixel reconstruction term, but decode_pixels=False "
                             "decodes no pixels (TiTok's stage 1); set full_length_loss_weight=0 for that stage.")
        length = config.num_latent_tokens if full_length else int(prefix.max())
        tokens = encoded.quantized[:, :length].to(pixel_values.dtype)
        loss = encoded.codebook_loss + config.commitment_cost * encoded.commitment_loss
        full_length_loss = None
        if decode_pixels and full_length:  # one batched pass: every sample's prefix, then all N tokens of each
            everything = torch.full_like(prefix, config.num_latent_tokens)
            decoded, logits = self._decode_tokens(torch.cat([tokens, tokens]), torch.cat([prefix, everything]))
            reconstruction, full_reconstruction = decoded.chunk(2)
            proxy_logits = None if logits is None else logits.chunk(2)[0]
            reconstruction_loss = F.mse_loss(reconstruction.float(), target.float())
            full_length_loss = F.mse_loss(full_reconstruction.float(), pixel_values.float())
            loss = reconstruction_loss + config.full_length_loss_weight * full_length_loss + loss
        elif decode_pixels:
            reconstruction, proxy_logits = self._decode_tokens(tokens, prefix)
            reconstruction_loss = F.mse_loss(reconstruction.float(), target.float())
            loss = reconstruction_loss + loss
        else:
            reconstruction = reconstruction_loss = None
            proxy_logits = self._proxy_logits(self.decoder(tokens, prefix))
        output = SpectralTokenizerOutput(
            loss=loss, reconstruction_loss=reconstruction_loss, full_length_loss=full_length_loss,
            codebook_loss=encoded.codebook_loss,
            commitment_loss=encoded.commitment_loss, reconstruction=reconstruction, target=target,
            codes=encoded.codes, latents=encoded.latents, num_tokens=prefix, proxy_logits=proxy_logits,
        )
        return output if return_dict else output.to_tuple()


def _prefix_error(low: int, high: int, available: int, limit: int) -> str:
    values = f"{low}" if low == high else f"values in [{low}, {high}]"
    return (f"num_tokens must lie in [1, {available}] (the number of codes given; the tokenizer has N = {limit}), "
            f"got {values}.")
