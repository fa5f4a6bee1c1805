"""Nested Spectral Tokenizer (SpectralAR §3.2, Algorithm 1).

An image becomes N discrete spectral tokens whose every prefix ``s_1..s_k`` decodes to the DCT low-pass image of
size ``omega_k`` (Eq. 5-6):

* encoder: ViT over ``[patches; N learned latent tokens]``; with the spectral causal mask latent ``i`` sees all
  patches and latents ``<= i`` while patches never see latents (otherwise later latents would leak into earlier
  ones through the patches);
* quantizer: l2-normalised codebook, straight-through estimator, commitment loss (TiTok);
* decoder: ViT over ``[h*w mask tokens; s_1..s_k]``; mask tokens see every present spectral token, spectral token
  ``i`` sees only spectral tokens ``<= i``. Per-sample prefix lengths are one batched pass with attention masking.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput

from ...hub import SpectralARHubMixin
from ...spectral import spectral_target, validate_omega
from ...utils import check_generator, check_pixel_range
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
    """

    reconstruction: torch.FloatTensor | None = None
    num_tokens: torch.LongTensor | None = None


@dataclass
class SpectralTokenizerOutput(ModelOutput):
    """Output of [`SpectralTokenizer.forward`]: one training step of Algorithm 1.

    Args:
        loss (`torch.FloatTensor`): `reconstruction_loss + codebook_loss + commitment_cost * commitment_loss`.
        reconstruction_loss (`torch.FloatTensor`): mean squared error between `reconstruction` and `target`.
        codebook_loss, commitment_loss (`torch.FloatTensor`): the VQ terms (see [`SpectralTokenizerEncoderOutput`]).
        reconstruction (`torch.FloatTensor` of shape `(batch_size, num_channels, image_size, image_size)`).
        target (`torch.FloatTensor` of the same shape): `lowpass(x, omega_k)` with spectral supervision, else `x`.
        codes (`torch.LongTensor` of shape `(batch_size, num_latent_tokens)`).
        latents (`torch.FloatTensor` of shape `(batch_size, num_latent_tokens, token_dim)`): pre-quantisation
            encoder outputs (used e.g. to restart dead codes).
        num_tokens (`torch.LongTensor` of shape `(batch_size,)`): the prefix length `k` of each sample.
    """

    loss: torch.FloatTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    codebook_loss: torch.FloatTensor | None = None
    commitment_loss: torch.FloatTensor | None = None
    reconstruction: torch.FloatTensor | None = None
    target: torch.FloatTensor | None = None
    codes: torch.LongTensor | None = None
    latents: torch.FloatTensor | None = None
    num_tokens: torch.LongTensor | None = None


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
    """ViT over `[patches; latent tokens]` -> `(B, N, token_dim)` continuous latents."""

    def __init__(self, config: SpectralTokenizerConfig):
        super().__init__()
        width = config.encoder_hidden_size
        self.causal = config.causal
        self.num_patches = config.num_patches
        self.num_latent_tokens = config.num_latent_tokens
        self.patch_embed = nn.Conv2d(config.num_channels, width, config.patch_size, stride=config.patch_size)
        self.position_embedding = nn.Parameter(torch.empty(config.num_patches, width))
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
        """`(L, L)` boolean mask over `[patches; latents]`, or `None` for full attention (`causal=False`)."""
        if not self.causal:
            return None
        num_patches, num_latents = self.num_patches, self.num_latent_tokens
        mask = torch.ones(num_patches + num_latents, num_patches + num_latents, dtype=torch.bool, device=device)
        mask[:num_patches, num_patches:] = False  # patches never see latents
        mask[num_patches:, num_patches:] = torch.ones(num_latents, num_latents, dtype=torch.bool, device=device).tril()
        return mask

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed(pixel_values).flatten(2).transpose(1, 2) + self.position_embedding
        latents = (self.latent_tokens + self.latent_position_embedding).expand(patches.shape[0], -1, -1)
        hidden_states = self.norm_pre(torch.cat([patches, latents.to(patches.dtype)], dim=1))
        mask = self.attention_mask(hidden_states.device)
        for layer in self.layers:
            hidden_states = layer(hidden_states, mask)
        return self.proj(self.norm_post(hidden_states[:, self.num_patches:]))


class SpectralTokenizerQuantizer(nn.Module):
    """Vector quantizer with an (optionally l2-normalised) codebook and a straight-through estimator (fp32)."""

    def __init__(self, config: SpectralTokenizerConfig):
        super().__init__()
        self.l2_normalize = config.l2_normalize_codebook
        self.codebook = nn.Embedding(config.codebook_size, config.token_dim)

    def normalized_codebook(self) -> torch.Tensor:
        weight = self.codebook.weight.float()
        return F.normalize(weight, dim=-1) if self.l2_normalize else weight

    def lookup(self, codes: torch.LongTensor) -> torch.Tensor:
        """Codebook vectors of `codes` `(B, k)` -> `(B, k, token_dim)` (normalised like the quantizer output)."""
        return F.embedding(codes, self.normalized_codebook())

    def forward(self, latents: torch.Tensor):
        with torch.autocast(device_type=latents.device.type, enabled=False):
            z = latents.float()
            if self.l2_normalize:
                z = F.normalize(z, dim=-1)
            codebook = self.normalized_codebook()
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
    """ViT over `[h*w mask tokens; s_1..s_k]` -> `(B, C, H, W)` image of the prefix's spectral level."""

    def __init__(self, config: SpectralTokenizerConfig):
        super().__init__()
        width = config.decoder_hidden_size
        self.causal = config.causal
        self.num_patches = config.num_patches
        self.grid_size = config.grid_size
        self.patch_size = config.patch_size
        self.num_channels = config.num_channels
        self.token_embed = nn.Linear(config.token_dim, width)
        self.mask_token = nn.Parameter(torch.empty(width))
        self.position_embedding = nn.Parameter(torch.empty(config.num_patches, width))
        self.latent_position_embedding = nn.Parameter(torch.empty(config.num_latent_tokens, width))
        self.norm_pre = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(
            SpectralTokenizerBlock(width, config.decoder_num_attention_heads, config.decoder_mlp_ratio,
                                   config.layer_norm_eps)
            for _ in range(config.decoder_num_hidden_layers)
        )
        self.norm_post = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.head = nn.Linear(width, config.patch_size**2 * config.num_channels)

    def attention_mask(self, num_tokens: torch.Tensor, length: int) -> torch.Tensor | None:
        """`(B, 1, L, L)` boolean mask over `[mask tokens; s_1..s_length]` for per-sample prefixes `num_tokens`.

        Spectral tokens beyond a sample's prefix are hidden from every query. With `causal`, spectral token `i`
        sees only spectral tokens `<= i` (not the mask tokens, which carry information about later tokens).
        Returns `None` when every query may see every key (no causal mask and all prefixes of full length).
        """
        if not self.causal and bool((num_tokens == length).all()):
            return None
        device = num_tokens.device
        num_patches = self.num_patches
        present = torch.arange(length, device=device) < num_tokens.unsqueeze(1)  # (B, length)
        keys = torch.cat([present.new_ones(present.shape[0], num_patches), present], dim=1)  # (B, L)
        mask = keys[:, None, :].repeat(1, num_patches + length, 1)  # (B, L, L)
        if self.causal:
            mask[:, num_patches:, :num_patches] = False
            mask[:, num_patches:, num_patches:] &= torch.ones(length, length, dtype=torch.bool, device=device).tril()
        return mask.unsqueeze(1)

    def forward(self, tokens: torch.Tensor, num_tokens: torch.Tensor) -> torch.Tensor:
        """`tokens` `(B, k, token_dim)` quantized vectors, `num_tokens` `(B,)` prefix lengths `<= k`."""
        batch, length = tokens.shape[:2]
        spectral = self.token_embed(tokens) + self.latent_position_embedding[:length]
        masks = (self.mask_token + self.position_embedding).expand(batch, -1, -1).to(spectral.dtype)
        hidden_states = self.norm_pre(torch.cat([masks, spectral], dim=1))
        mask = self.attention_mask(num_tokens, length)
        for layer in self.layers:
            hidden_states = layer(hidden_states, mask)
        patches = self.head(self.norm_post(hidden_states[:, : self.num_patches]))
        return self.unpatchify(patches)

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
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, SpectralTokenizerEncoder):
            scale = module.latent_tokens.shape[-1] ** -0.5
            init.normal_(module.position_embedding, std=scale)
            init.normal_(module.latent_tokens, std=scale)
            init.normal_(module.latent_position_embedding, std=scale)
        elif isinstance(module, SpectralTokenizerDecoder):
            scale = module.mask_token.shape[-1] ** -0.5
            init.normal_(module.mask_token, std=scale)
            init.normal_(module.position_embedding, std=scale)
            init.normal_(module.latent_position_embedding, std=scale)
        elif isinstance(module, nn.Embedding):  # the quantizer's codebook (its module has no parameters of its own,
            size = module.num_embeddings      # and transformers skips such modules): uniform in +-1/K, as TiTok
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
                if num_tokens.shape != (batch,) or torch.is_floating_point(num_tokens) or num_tokens.dtype == torch.bool:
                    raise ValueError(f"num_tokens must be an int or a (B,) integer tensor with B = {batch}, got "
                                     f"{num_tokens.dtype} of shape {tuple(num_tokens.shape)}.")
                low, high = int(num_tokens.min()), int(num_tokens.max())
                if low < 1 or high > available:
                    raise ValueError(_prefix_error(low, high, available, limit))
                return num_tokens.to(device=device, dtype=torch.long)
        if hasattr(num_tokens, "dtype") and not isinstance(num_tokens, torch.Tensor) and getattr(num_tokens, "ndim", 1) == 0:
            num_tokens = num_tokens.item()  # NumPy integer scalars
        if isinstance(num_tokens, bool) or not isinstance(num_tokens, int):
            raise ValueError(f"num_tokens must be an int or a (B,) integer tensor, got {type(num_tokens).__name__}.")
        if not 1 <= num_tokens <= available:
            raise ValueError(_prefix_error(num_tokens, num_tokens, available, limit))
        return torch.full((batch,), num_tokens, dtype=torch.long, device=device)

    # ------------------------------------------------------------------ public API

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

    def decode(self, codes: torch.LongTensor, num_tokens: int | torch.Tensor | None = None, return_dict: bool = True):
        """Decode the first `num_tokens` codes of each sample to the low-pass image of `omega_k` (Eq. 6).

        Args:
            codes: `(B, k)` int64 codes in `[0, codebook_size)`, `1 <= k <= N` (a prefix is fine).
            num_tokens: prefix length, an int or a `(B,)` tensor of per-sample lengths in `[1, k]`; defaults to
                `k`. Codes after a sample's prefix are ignored (they cannot change its output).

        Returns:
            [`SpectralTokenizerDecoderOutput`] with `reconstruction` `(B, C, H, W)`.
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
        reconstruction = self.decoder(tokens, prefix)
        output = SpectralTokenizerDecoderOutput(reconstruction=reconstruction, num_tokens=prefix)
        return output if return_dict else output.to_tuple()

    def forward(
        self,
        pixel_values: torch.Tensor,
        num_tokens: int | torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ):
        """One training step of Algorithm 1.

        Args:
            pixel_values: `(B, C, H, W)` float images in [-1, 1].
            num_tokens: prefix length(s) to decode (int or `(B,)` tensor). Default: with `spectral_supervision`, a
                uniform random `k` in `[1, N]` per sample (drawn with `generator`); without it, `N`.
            generator: `torch.Generator` for the random prefix lengths.

        Returns:
            [`SpectralTokenizerOutput`]; `loss` = MSE(reconstruction, target) + VQ terms. With spectral supervision
            the target of prefix `k` is `lowpass(x, omega_k)`, otherwise the full image `x`.
        """
        config = self.config
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
        length = int(prefix.max())
        reconstruction = self.decoder(encoded.quantized[:, :length].to(pixel_values.dtype), prefix)
        reconstruction_loss = F.mse_loss(reconstruction.float(), target.float())
        loss = reconstruction_loss + encoded.codebook_loss + config.commitment_cost * encoded.commitment_loss
        output = SpectralTokenizerOutput(
            loss=loss, reconstruction_loss=reconstruction_loss, codebook_loss=encoded.codebook_loss,
            commitment_loss=encoded.commitment_loss, reconstruction=reconstruction, target=target,
            codes=encoded.codes, latents=encoded.latents, num_tokens=prefix,
        )
        return output if return_dict else output.to_tuple()


def _prefix_error(low: int, high: int, available: int, limit: int) -> str:
    values = f"{low}" if low == high else f"values in [{low}, {high}]"
    return (f"num_tokens must lie in [1, {available}] (the number of codes given; the tokenizer has N = {limit}), "
            f"got {values}.")
