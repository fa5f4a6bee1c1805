"""FAR: next-frequency prediction with continuous tokens (FAR §4.2-4.3) on MAR's encoder-decoder and diffusion head.

Training (`FARTransformer.forward`), for a batch of VAE latents `x` `(B, C, H, W)`:

1. a random input level `i` per sample in `0 .. F-1`, input `x_i = frequency_filter(x, i)` (level 0 = zeros);
2. a fraction of the input tokens drawn from a normal (mean 1, std 0.25) truncated to `[r_i, 1]` is masked, `r_i`
   linear from 0.7 at level 0 to 0 at level `F - 1` (frequency-aware mask, as the paper states: more masking at
   low levels; the reference code's optional `--mask` does the reverse, `r_i = 0.7 i / 16`, and its released
   FAR-B/L/H were trained without the mask: convert them with `use_mask=False`);
3. the encoder sees `[class buffer; visible tokens]`, the decoder `[buffer; all tokens, a learned mask token at
   the masked places]` (MAR's two stages, bidirectional attention) and outputs one condition vector per token;
4. the diffusion head learns `p(x | x_i)`: the FULL latent at every token (DMS), with diffusers' `DDPMScheduler`
   (cosine, 1000 steps) for the noise, epsilon-MSE plus the variational bound of the learned-range variance
   (improved DDPM's hybrid loss), each token repeated `diffusion_batch_mul` times (MAR);
5. each sample's loss is weighted by `1 + sin(pi/2 * (i + 1)/F)` for input level `i` (FTL; the paper's `w_i` with
   the reference code's indexing, see `far_loss_weight`); labels are dropped to the null class with probability
   `class_dropout_prob` (CFG).

Text conditioning (FAR §5.3, text-to-image; `config.cross_attention_dim` set): the last hidden layer of a text encoder
over all text tokens `(B, T, cross_attention_dim)` enters every encoder and decoder block through a cross-attention
sublayer after the self-attention. A learned null text token is prepended to the text and is always visible, so a
sample whose text is dropped (training, same draw as the class dropout) or an unconditional CFG row (sampling)
attends to the null token only.

Sampling (`FARTransformer.sample`): outer steps over the levels of `far_level_schedule` (10 by default, any number up
to `F` without retraining); at each step the previous full-latent sample is filtered to the step's level, the
transformer gives the conditions and the head samples the full latent with `T_s` inner steps (40 -> 100 linear, or
constant) of a respaced 1000-step schedule, with CFG inside the head and a noise temperature.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.utils.accelerate_utils import apply_forward_hook
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput

from ...devices import high_precision_dtype
from ...hub import SpectralARHubMixin
from ...utils import check_callable, check_finite_tensor, check_generator, check_int, check_number, rand_rows
from ...spectral import (
    far_diffusion_steps,
    far_input_levels,
    far_level_schedule,
    far_loss_weight,
    far_mask_ratio_range,
    far_temperatures,
    frequency_filter,
)
from .configuration_far import GUIDANCE_SCHEDULES, INFERENCE_MASK_SCHEDULES, FARConfig


def build_noise_scheduler(config: FARConfig) -> DDPMScheduler:
    """The diffusers `DDPMScheduler` of a FAR head: `num_train_timesteps` / `beta_schedule` of the config (MAR:
    cosine, 1000), epsilon prediction, learned-range variance, `"linspace"` spacing, so a respaced schedule of `T`
    steps runs from 999 to 0 like improved DDPM's `space_timesteps` (MAR), and x0 clipping only when the config sets
    `sample_clip_range` (MAR / FAR: none, latents are unbounded).

    Its tables are built on the CPU whatever the default device (diffusers' convention; `add_noise` and
    `DiffusionTables` move what they use to the model's device)."""
    clip_range = config.sample_clip_range
    with torch.device("cpu"):
        return DDPMScheduler(num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule,
                             prediction_type="epsilon", variance_type="learned_range",
                             clip_sample=clip_range is not None, clip_sample_range=float(clip_range or 1.0),
                             timestep_spacing="linspace")


def check_scheduler(scheduler: DDPMScheduler, config: FARConfig) -> None:
    """Raise `ValueError` unless `scheduler` is the noise schedule the head was trained with."""
    if not isinstance(scheduler, DDPMScheduler):
        raise ValueError(f"FAR needs a diffusers DDPMScheduler, got {type(scheduler).__name__}.")
    s = scheduler.config
    expected = {"num_train_timesteps": config.num_train_timesteps, "beta_schedule": config.beta_schedule,
                "prediction_type": "epsilon", "variance_type": "learned_range"}
    wrong = {key: s.get(key) for key, value in expected.items() if s.get(key) != value}
    if wrong:
        raise ValueError(f"The scheduler does not match the transformer's noise schedule: got {wrong}, expected "
                         f"{ {key: expected[key] for key in wrong} } (use build_noise_scheduler(transformer.config)).")


class DiffusionTables:
    """Gaussian-diffusion coefficients (improved DDPM) of the timesteps `timesteps` (ascending) of a schedule with
    cumulative products `alphas_cumprod`: the full training schedule, or a respaced one for sampling (betas
    recomputed between consecutive kept timesteps, as improved DDPM's respacing and diffusers' `step()` do).

    All tables are `(T,)` tensors on `device` (default: `alphas_cumprod`'s), computed there in float64 (float32 on
    MPS, which has no float64), so that sampling and training steps index them without host-device copies.
    """

    def __init__(self, alphas_cumprod: torch.Tensor, timesteps: torch.Tensor | None = None,
                 device: torch.device | str | None = None):
        self.device = alphas_cumprod.device if device is None else torch.device(device)
        acp_all = alphas_cumprod.to(device=self.device, dtype=high_precision_dtype(self.device))
        self.timesteps = torch.arange(len(acp_all), device=self.device) if timesteps is None \
            else timesteps.to(self.device)
        acp = acp_all[self.timesteps]
        acp_prev = torch.cat([acp.new_ones(1), acp[:-1]])
        betas = 1.0 - acp / acp_prev
        self.sqrt_recip_acp = torch.sqrt(1.0 / acp)
        self.sqrt_recipm1_acp = torch.sqrt(1.0 / acp - 1.0)
        posterior_variance = betas * (1.0 - acp_prev) / (1.0 - acp)
        # log of the posterior variance with its first (zero) entry replaced by the second (improved DDPM)
        clipped = torch.cat([posterior_variance[1:2], posterior_variance[1:]]) if len(acp) > 1 else posterior_variance
        self.posterior_log_variance = torch.log(clipped.clamp(min=1e-20))
        self.log_betas = torch.log(betas.clamp(min=1e-20))
        self.mean_coef_x0 = betas * torch.sqrt(acp_prev) / (1.0 - acp)
        self.mean_coef_xt = (1.0 - acp_prev) * torch.sqrt(1.0 - betas) / (1.0 - acp)

    def _take(self, table: torch.Tensor, index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return table.to(like.device)[index].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))

    def predict_x0(self, x_t: torch.Tensor, index: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return self._take(self.sqrt_recip_acp, index, x_t) * x_t - self._take(self.sqrt_recipm1_acp, index, x_t) * eps

    def posterior_mean(self, x0: torch.Tensor, x_t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return self._take(self.mean_coef_x0, index, x_t) * x0 + self._take(self.mean_coef_xt, index, x_t) * x_t

    def model_log_variance(self, raw: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Learned-range variance: `raw` in about [-1, 1] interpolates between the posterior and the beta log-var."""
        fraction = (raw + 1.0) / 2.0
        return fraction * self._take(self.log_betas, index, raw) + (1 - fraction) * self._take(
            self.posterior_log_variance, index, raw)


def _normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


@dataclass
class FAROutput(ModelOutput):
    """Output of [`FARTransformer.forward`] (one training step).

    Args:
        loss (`torch.FloatTensor` of shape `()`): `mean_b(w_b * l_b)`, `l_b` the sample's mean per-token loss
            (epsilon MSE + variational bound, improved DDPM), `w_b` the frequency-aware weight of its level.
        mse_loss, vb_loss (`torch.FloatTensor` of shape `()`): unweighted means of the two parts.
        sample_losses (`torch.FloatTensor` of shape `(B,)`): `l_b` before weighting.
        loss_weights (`torch.FloatTensor` of shape `(B,)`): `w_b` (all ones with `loss_weighting=False`).
        levels (`torch.LongTensor` of shape `(B,)`): each sample's input level `i`.
        mask_ratios (`torch.FloatTensor` of shape `(B,)`), mask (`torch.BoolTensor` of shape `(B, L)`): the masked
            fraction and the masked input tokens (True = masked).
        class_labels (`torch.LongTensor` of shape `(B,)`): labels after class dropout (`num_classes` = null).
        text_dropped (`torch.BoolTensor` of shape `(B,)`, text-conditional models only): samples whose text was
            dropped (only the null text token visible).
        inputs (`torch.FloatTensor` of shape `(B, C, H, W)`): the filtered inputs `x_i`.
        target (`torch.FloatTensor` of shape `(B, C, H, W)`): what the head was trained to model: the full latent.
    """

    loss: torch.FloatTensor | None = None
    mse_loss: torch.FloatTensor | None = None
    vb_loss: torch.FloatTensor | None = None
    sample_losses: torch.FloatTensor | None = None
    loss_weights: torch.FloatTensor | None = None
    levels: torch.LongTensor | None = None
    mask_ratios: torch.FloatTensor | None = None
    mask: torch.BoolTensor | None = None
    class_labels: torch.LongTensor | None = None
    inputs: torch.FloatTensor | None = None
    target: torch.FloatTensor | None = None
    text_dropped: torch.BoolTensor | None = None


# ---------------------------------------------------------------------------------------------------------------
# Transformer (MAR's encoder-decoder)
# ---------------------------------------------------------------------------------------------------------------


class FARAttention(nn.Module):
    def __init__(self, config: FARConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.attention_dropout = config.attention_dropout

    def forward(self, hidden_states: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        batch, length, width = hidden_states.shape
        qkv = self.qkv(hidden_states).view(batch, length, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, heads, L, head_dim)
        attended = F.scaled_dot_product_attention(
            query, key, value, attn_mask=None if key_mask is None else key_mask[:, None, None, :],
            dropout_p=self.attention_dropout if self.training else 0.0,
        )
        return self.proj(attended.transpose(1, 2).reshape(batch, length, width))


class FARCrossAttention(nn.Module):
    """Multi-head attention of the sequence (queries, `hidden_size`) to text states (keys and values projected from
    `cross_attention_dim`). The output projection starts at zero, so a new cross-attention sublayer is initially the
    identity of its residual branch (a class-conditional checkpoint can be fine-tuned into a text-conditional one)."""

    def __init__(self, config: FARConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.q = nn.Linear(config.hidden_size, config.hidden_size)
        self.kv = nn.Linear(config.cross_attention_dim, 2 * config.hidden_size)
        self.proj = _with_init(nn.Linear(config.hidden_size, config.hidden_size), "zeros")
        self.attention_dropout = config.attention_dropout

    def forward(self, hidden_states: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        """`(B, L, hidden_size)` queries, `(B, S, cross_attention_dim)` context, `(B, S)` bool mask (True = visible;
        at least one visible per row) -> `(B, L, hidden_size)`."""
        batch, length, width = hidden_states.shape
        query = self.q(hidden_states).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        key, value = self.kv(context).view(batch, context.shape[1], 2, self.num_heads, self.head_dim).permute(
            2, 0, 3, 1, 4).unbind(0)  # (B, heads, S, head_dim)
        attended = F.scaled_dot_product_attention(
            query, key, value, attn_mask=context_mask[:, None, None, :],
            dropout_p=self.attention_dropout if self.training else 0.0,
        )
        return self.proj(attended.transpose(1, 2).reshape(batch, length, width))


class FARBlock(GradientCheckpointingLayer):
    """Pre-LN bidirectional transformer block (timm's ViT `Block`, as MAR); with `config.cross_attention_dim` set, a
    pre-LN cross-attention sublayer to the text follows the self-attention (FAR §5.3)."""

    def __init__(self, config: FARConfig):
        super().__init__()
        width = config.hidden_size
        self.norm1 = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.attn = FARAttention(config)
        if config.cross_attention_dim is not None:  # no submodules at all otherwise (checkpoint compatibility)
            self.norm_cross = nn.LayerNorm(width, eps=config.layer_norm_eps)
            self.cross_attn = FARCrossAttention(config)
        self.norm2 = nn.LayerNorm(width, eps=config.layer_norm_eps)
        inner = int(width * config.mlp_ratio)
        # timm's Mlp (MAR / FAR) drops after the GELU as well as after fc2; the activation and its dropout share
        # index 1, so the parameter names stay `mlp.0` / `mlp.2`
        self.mlp = nn.Sequential(nn.Linear(width, inner), nn.Sequential(nn.GELU(), nn.Dropout(config.dropout)),
                                 nn.Linear(inner, width))
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden_states: torch.Tensor, key_mask: torch.Tensor | None, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`(B, L, hidden_size)` -> same; `key_mask` `(B, L)` (True = attend), `context` `(B, S, cross_attention_dim)`
        text states with the null token first and `context_mask` `(B, S)` (text-conditional blocks only)."""
        hidden_states = hidden_states + self.dropout(self.attn(self.norm1(hidden_states), key_mask))
        if context is not None:
            hidden_states = hidden_states + self.dropout(
                self.cross_attn(self.norm_cross(hidden_states), context, context_mask))
        return hidden_states + self.dropout(self.mlp(self.norm2(hidden_states)))


# ---------------------------------------------------------------------------------------------------------------
# Diffusion head (MAR's SimpleMLPAdaLN) with the level embedding of FAR
# ---------------------------------------------------------------------------------------------------------------


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


# transformers only calls `_init_weights` on modules that own parameters, so linears with a special initialisation
# carry it as an attribute (read by `FARPreTrainedModel._init_weights`).
_INIT_ATTRIBUTE = "_far_init"


def _with_init(linear: nn.Linear, kind: str) -> nn.Linear:
    setattr(linear, _INIT_ATTRIBUTE, kind)  # "zeros" (AdaLN-zero, final layer) or "normal" (time MLP, MAR)
    return linear


class FARHeadBlock(nn.Module):
    """Residual AdaLN block: `x + gate * MLP(modulate(LN(x), shift, scale))`, (shift, scale, gate) from `y`."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), _with_init(nn.Linear(width, 3 * width), "zeros"))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(_modulate(self.norm(x), shift, scale))


class FARHeadFinalLayer(nn.Module):
    def __init__(self, width: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = _with_init(nn.Linear(width, out_channels), "zeros")
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), _with_init(nn.Linear(width, 2 * width), "zeros"))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        return self.linear(_modulate(self.norm(x), shift, scale))


class FARDiffusionHead(nn.Module):
    """MAR's denoising MLP (SimpleMLPAdaLN) over single tokens, conditioned on the transformer's vector and the level.

    `y = TimeMLP(sinusoid(t)) + Linear(z) + LevelEmbedding(i)` drives every residual AdaLN block and the final AdaLN
    layer, whose `2 * token_dim` outputs are the predicted noise and the learned-range variance interpolation.
    AdaLN layers and the final linear layer start at zero (the head initially predicts `eps = 0`, variance midway).
    """

    def __init__(self, config: FARConfig):
        super().__init__()
        width = config.head_width
        self.time_proj = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)  # MAR: [cos, sin], 256 freqs
        self.time_embedding = TimestepEmbedding(256, width)
        _with_init(self.time_embedding.linear_1, "normal")
        _with_init(self.time_embedding.linear_2, "normal")
        self.condition_embedding = nn.Linear(config.hidden_size, width)
        self.level_embedding = nn.Embedding(config.num_levels, width)
        self.input_proj = nn.Linear(config.token_dim, width)
        self.blocks = nn.ModuleList(FARHeadBlock(width) for _ in range(config.head_depth))
        self.final_layer = FARHeadFinalLayer(width, 2 * config.token_dim)

    def embed_condition(self, condition: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        """`(N, hidden_size)` transformer outputs and `(N,)` levels -> `(N, head_width)` (reused over inner steps)."""
        return self.condition_embedding(condition) + self.level_embedding(levels)

    def embed_time(self, timesteps: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.time_embedding(self.time_proj(timesteps).to(dtype))

    def denoise(self, x_t: torch.Tensor, time_embedding: torch.Tensor,
                condition_embedding: torch.Tensor) -> torch.Tensor:
        y = time_embedding + condition_embedding
        hidden = self.input_proj(x_t)
        for block in self.blocks:
            hidden = block(hidden, y)
        return self.final_layer(hidden, y)

    def forward(self, x_t: torch.Tensor, timesteps: torch.Tensor, condition: torch.Tensor,
                levels: torch.Tensor) -> torch.Tensor:
        """`(N, token_dim)` noisy tokens, `(N,)` timesteps, `(N, hidden_size)` conditions, `(N,)` levels ->
        `(N, 2 * token_dim)`: predicted noise, then the variance interpolation."""
        return self.denoise(x_t, self.embed_time(timesteps, x_t.dtype), self.embed_condition(condition, levels))


# ---------------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------------


class FARPreTrainedModel(PreTrainedModel):
    config: FARConfig
    config_class = FARConfig
    base_model_prefix = "far"
    main_input_name = "latents"
    supports_gradient_checkpointing = True
    _no_split_modules = ["FARBlock"]
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """MAR's initialisation: Xavier-uniform linears with zero bias, N(0, 0.02) embeddings / positions / mask
        token, N(0, 0.02) time MLP, zero AdaLN modulations and final layer of the head."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            kind = getattr(module, _INIT_ATTRIBUTE, "xavier")
            if kind == "zeros":
                init.zeros_(module.weight)
            elif kind == "normal":
                init.normal_(module.weight, std=std)
            else:
                init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, std=std)
        elif isinstance(module, nn.LayerNorm) and module.weight is not None:
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, FARTransformer):
            for parameter in (module.encoder_position_embedding, module.decoder_position_embedding,
                              module.diffusion_position_embedding, module.mask_token):
                init.normal_(parameter, std=std)
            if module.config.cross_attention_dim is not None:
                init.normal_(module.null_text_embedding, std=std)


class FARTransformer(SpectralARHubMixin, FARPreTrainedModel):
    """FAR's transformer (MAR's two-stage encoder-decoder) with its diffusion head: class-conditional next-frequency
    prediction of continuous latent tokens.

    Why a transformers `PreTrainedModel` (not diffusers' `ModelMixin` + `ConfigMixin`): every model of this package
    is one, so the config system (`PreTrainedConfig` with presets and validation, `AutoConfig`/`AutoModel`
    registration), `save_pretrained` / `from_pretrained` / `push_to_hub` with our model card, initialisation
    (`_init_weights`), gradient checkpointing and SDPA handling are the same as for the SpectralAR models. The head
    is a submodule, so one `config.json` + `model.safetensors` holds the whole learned part. The VAE and the noise
    scheduler stay diffusers objects (`AutoencoderKL`, `DDPMScheduler`) in `FARPipeline`; diffusers' pipeline loader
    handles a `PreTrainedModel` component (model_index.json names it `["spectralar_hf", "FARTransformer"]`).

    With `config.cross_attention_dim` set it is also text-conditional (FAR §5.3): `forward` and `sample` take the
    text encoder's last hidden states `encoder_hidden_states` `(B, T, cross_attention_dim)` and their
    `encoder_attention_mask` `(B, T)` (1 = real token); `class_labels` may then be left out (every row uses the null
    class embedding).

    Example:

    ```python
    >>> import torch
    >>> from spectralar_hf import FARConfig, FARTransformer
    >>> model = FARTransformer(FARConfig.from_preset("tiny"))           # 4 x 8 x 8 latents, 10 classes
    >>> latents = torch.randn(2, 4, 8, 8)
    >>> loss = model(latents, class_labels=torch.tensor([3, 7])).loss   # one training step: loss.backward()
    >>> samples = model.eval().sample([3, 7], num_steps=4, diffusion_steps=10,
    ...                               generator=torch.Generator().manual_seed(0))  # (2, 4, 8, 8)
    >>> text_model = FARTransformer(FARConfig.from_preset("tiny", num_classes=0, cross_attention_dim=32))
    >>> states, mask = torch.randn(2, 5, 32), torch.ones(2, 5, dtype=torch.long)  # a text encoder's outputs
    >>> loss = text_model(latents, encoder_hidden_states=states, encoder_attention_mask=mask).loss
    ```
    """

    def __init__(self, config: FARConfig):
        super().__init__(config)
        width, length, buffer = config.hidden_size, config.num_tokens, config.class_buffer_size
        # the last row is the null class (MAR's fake latent)
        self.class_embedding = nn.Embedding(config.num_classes + 1, width)
        if config.cross_attention_dim is not None:  # FAR §5.3: text states, with a learned null token prepended
            self.text_norm = nn.LayerNorm(config.cross_attention_dim, eps=config.layer_norm_eps)
            self.null_text_embedding = nn.Parameter(torch.empty(1, 1, config.cross_attention_dim))
        self.token_embedding = nn.Linear(config.token_dim, width)  # MAR's z_proj
        self.encoder_position_embedding = nn.Parameter(torch.empty(1, buffer + length, width))
        self.encoder_input_norm = nn.LayerNorm(width, eps=config.layer_norm_eps)  # MAR's z_proj_ln
        self.encoder_layers = nn.ModuleList(FARBlock(config) for _ in range(config.encoder_layers))
        self.encoder_norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.decoder_embedding = nn.Linear(width, width)
        self.mask_token = nn.Parameter(torch.empty(1, 1, width))
        self.decoder_position_embedding = nn.Parameter(torch.empty(1, buffer + length, width))
        self.decoder_layers = nn.ModuleList(FARBlock(config) for _ in range(config.decoder_layers))
        self.decoder_norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.diffusion_position_embedding = nn.Parameter(torch.empty(1, length, width))
        self.diffusion_head = FARDiffusionHead(config)
        self._noise_scheduler: DDPMScheduler | None = None
        self._tables: DiffusionTables | None = None
        self.post_init()

    # ------------------------------------------------------------------ helpers

    @property
    def noise_scheduler(self) -> DDPMScheduler:
        """The training noise schedule (built lazily from the config, never on the meta device)."""
        if self._noise_scheduler is None:
            self._noise_scheduler = build_noise_scheduler(self.config)
        return self._noise_scheduler

    def _training_tables(self) -> DiffusionTables:
        """The training schedule's tables on the model's device (rebuilt after the model moves)."""
        if self._tables is None or self._tables.device != self.device:
            self._tables = DiffusionTables(self.noise_scheduler.alphas_cumprod, device=self.device)
        return self._tables

    def patchify(self, latents: torch.Tensor) -> torch.Tensor:
        """`(B, C, H, W)` -> `(B, L, C * p * p)` tokens in raster order (MAR's layout)."""
        batch, channels, height, width = latents.shape
        p = self.config.patch_size
        x = latents.reshape(batch, channels, height // p, p, width // p, p)
        return torch.einsum("nchpwq->nhwcpq", x).reshape(batch, (height // p) * (width // p), channels * p * p)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`patchify`."""
        config = self.config
        p, side, channels = config.patch_size, config.tokens_per_side, config.latent_channels
        x = tokens.reshape(tokens.shape[0], side, side, channels, p, p)
        return torch.einsum("nhwcpq->nchpwq", x).reshape(tokens.shape[0], channels, side * p, side * p)

    def _check_latents(self, latents: torch.Tensor) -> None:
        config = self.config
        expected = (config.latent_channels, config.latent_size, config.latent_size)
        if not isinstance(latents, torch.Tensor) or latents.dim() != 4 or tuple(latents.shape[1:]) != expected:
            shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ValueError(f"latents must have shape (B, {expected[0]}, {expected[1]}, {expected[2]}) "
                             f"(latent_channels, latent_size, latent_size of this model), got {shape}.")
        if not torch.is_floating_point(latents):
            raise ValueError(f"latents must be a floating-point tensor, got {latents.dtype}.")
        if latents.shape[0] == 0:
            raise ValueError("latents is an empty batch (0 rows); pass at least one latent.")
        check_finite_tensor("latents", latents, "check the VAE encoding (a diverged VAE, or NaN / inf images)")

    def _check_class_labels(self, class_labels, allow_null: bool = True) -> torch.LongTensor:
        config = self.config
        if config.num_classes == 0:
            raise ValueError("This model has no classes (num_classes = 0: text-conditional only); leave class_labels "
                             "out and condition on encoder_hidden_states.")
        if isinstance(class_labels, str) or (isinstance(class_labels, (list, tuple))
                                             and any(isinstance(value, str) for value in class_labels)):
            raise TypeError(f"class_labels must be integer class ids, got {class_labels!r}; class names are mapped to "
                            f"ids by the pipeline (FARPipeline.get_label_ids) or config.label2id.")
        labels = torch.as_tensor(class_labels, device=self.device)
        if labels.dim() == 0:
            labels = labels.unsqueeze(0)
        if labels.numel() == 0:
            raise ValueError("class_labels is empty; pass at least one class id (one sample per entry).")
        if labels.dim() != 1 or torch.is_floating_point(labels) or labels.dtype == torch.bool:
            raise ValueError(f"class_labels must be a 1D sequence of integer class ids, got {tuple(labels.shape)} "
                             f"{labels.dtype}.")
        high = config.num_classes if allow_null else config.num_classes - 1
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > high):
            raise ValueError(
                f"class id out of range: got values in [{int(labels.min())}, {int(labels.max())}] but this model has "
                f"{config.num_classes} classes (ids 0..{config.num_classes - 1}"
                + (f", {config.null_class_id} = null class" if allow_null else "") + ")."
            )
        return labels.long()

    def _null_class_rows(self, batch: int | None) -> torch.LongTensor:
        """`(batch,)` null-class ids: the class input of a text-conditional model when `class_labels` is omitted."""
        if not self.config.is_text_conditional or batch is None:
            raise ValueError("class_labels is required: this model is class-conditional only (cross_attention_dim is "
                             "None); only a text-conditional model may leave it out.")
        return torch.full((batch,), self.config.null_class_id, dtype=torch.long, device=self.device)

    def _check_text(self, encoder_hidden_states: torch.Tensor | None, encoder_attention_mask: torch.Tensor | None,
                    batch: int | None) -> tuple[torch.Tensor | None, torch.BoolTensor | None]:
        """Validate text states `(B, T, cross_attention_dim)` and their mask `(B, T)` (1 / True = real token; default
        all real) against the config; returns them on the model's device with a bool mask, or `(None, None)` for a
        class-conditional model."""
        config = self.config
        if not config.is_text_conditional:
            if encoder_hidden_states is not None or encoder_attention_mask is not None:
                raise ValueError("This model has no cross-attention (config.cross_attention_dim is None), so it cannot "
                                 "take encoder_hidden_states / encoder_attention_mask; it is class-conditional only. "
                                 "Train a text-conditional model with cross_attention_dim = the text encoder's hidden "
                                 "size.")
            return None, None
        if encoder_hidden_states is None:
            if encoder_attention_mask is not None:
                raise ValueError("encoder_attention_mask was given without encoder_hidden_states.")
            raise ValueError(f"This model is text-conditional (cross_attention_dim = {config.cross_attention_dim}): "
                             f"pass encoder_hidden_states (B, T, {config.cross_attention_dim}), the text encoder's "
                             f"last hidden states, and encoder_attention_mask (B, T); for unconditional samples pass "
                             f"an all-zero encoder_attention_mask (or T = 0 states).")
        states = encoder_hidden_states
        if not isinstance(states, torch.Tensor) or states.dim() != 3 or not torch.is_floating_point(states):
            shape = tuple(states.shape) if isinstance(states, torch.Tensor) else type(states).__name__
            raise ValueError(f"encoder_hidden_states must be a floating-point (B, T, {config.cross_attention_dim}) "
                             f"tensor, got {shape}.")
        if states.shape[-1] != config.cross_attention_dim:
            raise ValueError(f"encoder_hidden_states has hidden size {states.shape[-1]} but this model's "
                             f"cross_attention_dim is {config.cross_attention_dim}: use the text encoder it was "
                             f"trained with (hidden size {config.cross_attention_dim}).")
        if batch is not None and states.shape[0] != batch:
            raise ValueError(f"encoder_hidden_states has {states.shape[0]} rows for a batch of {batch}.")
        if states.shape[0] == 0:
            raise ValueError("encoder_hidden_states is an empty batch (0 rows); pass at least one prompt's states.")
        if states.numel():
            check_finite_tensor("encoder_hidden_states", states, "check the text encoder's outputs")
        if encoder_attention_mask is None:
            mask = torch.ones(states.shape[:2], dtype=torch.bool, device=self.device)
        else:
            mask = torch.as_tensor(encoder_attention_mask, device=self.device)
            if tuple(mask.shape) != tuple(states.shape[:2]):
                raise ValueError(f"encoder_attention_mask must have shape (B, T) = {tuple(states.shape[:2])} like "
                                 f"encoder_hidden_states, got {tuple(mask.shape)}.")
            if mask.numel() and not bool(((mask == 0) | (mask == 1)).all()):
                raise ValueError("encoder_attention_mask must hold 0 / 1 (or False / True; 1 = real token), not an "
                                 "additive mask.")
            mask = mask.bool()
        return states.to(self.device), mask

    def _random(self, shape: tuple[int, ...], generator: torch.Generator | list[torch.Generator] | None,
                kind: str = "rand", high: int | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Random numbers of `shape` `(B, ...)` from `generator` (on its device) moved to the model's device; with a
        list of `B` generators, row `b` from generator `b` alone (see `rand_rows`)."""
        return rand_rows(shape, generator, self.device, kind, dtype=dtype, high=high)

    def _mask_from_counts(self, num_masked: torch.Tensor, generator: torch.Generator | None) -> torch.BoolTensor:
        """`(B, L)` masks with `num_masked[b]` uniformly chosen masked tokens (True) in row `b`."""
        scores = self._random((num_masked.shape[0], self.config.num_tokens), generator)
        rank = scores.argsort(dim=1).argsort(dim=1)
        return rank < num_masked.unsqueeze(1)

    def sample_mask(self, levels: torch.Tensor, generator: torch.Generator | None = None
                    ) -> tuple[torch.BoolTensor, torch.Tensor]:
        """Frequency-aware training mask: a ratio from N(1, std) truncated to `[r_i, 1]` per sample (inverse CDF),
        `ceil(L * ratio)` random tokens masked (MAR). Returns `(mask (B, L), ratios (B,))`."""
        config = self.config
        levels = levels.to(self.device)
        work = high_precision_dtype(self.device)  # the inverse CDF near 1 needs float64 where there is one
        low, high = far_mask_ratio_range(levels.float(), config.num_levels, config.mask_min_ratio)
        low = low.to(work)
        mean, std = 1.0, float(config.mask_ratio_std)
        normal = torch.distributions.Normal(torch.zeros((), dtype=work, device=self.device),
                                            torch.ones((), dtype=work, device=self.device), validate_args=False)
        cdf_low = normal.cdf((low - mean) / std)
        cdf_high = normal.cdf(torch.full((), (high - mean) / std, dtype=work, device=self.device))
        uniform = self._random((levels.shape[0],), generator).to(work)
        ratios = mean + std * normal.icdf(cdf_low + uniform * (cdf_high - cdf_low))
        ratios = torch.maximum(ratios, low).clamp(max=high)
        num_masked = torch.ceil(config.num_tokens * ratios).long().clamp(0, config.num_tokens)
        return self._mask_from_counts(num_masked, generator), ratios.float()

    # ------------------------------------------------------------------ transformer

    def conditions(self, tokens: torch.Tensor, class_labels: torch.LongTensor, mask: torch.BoolTensor | None = None,
                   encoder_hidden_states: torch.Tensor | None = None,
                   encoder_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """MAR's encoder-decoder: `(B, L, token_dim)` input tokens, `(B,)` labels (null = `num_classes`), optional
        `(B, L)` mask (True = masked) -> `(B, L, hidden_size)` condition vectors for the head.

        Masked tokens are dropped before the encoder (rows with fewer visible tokens are padded and the padding is
        excluded from attention), and replaced by the learned mask token before the decoder.

        Text-conditional models also take `encoder_hidden_states` `(B, T, cross_attention_dim)` and
        `encoder_attention_mask` `(B, T)` (1 = real token, 0 = padding or dropped text); every block cross-attends to
        `[null text token; LayerNorm(text states)]`, the null token always visible.
        """
        config = self.config
        batch, buffer = tokens.shape[0], config.class_buffer_size
        text, text_mask = self._check_text(encoder_hidden_states, encoder_attention_mask, batch)
        context = context_mask = None
        if text is not None:
            context = torch.cat([self.null_text_embedding.expand(batch, -1, -1),
                                 self.text_norm(text.to(self.null_text_embedding.dtype))], dim=1)
            context_mask = torch.cat([text_mask.new_ones(batch, 1), text_mask], dim=1)
        text_args = () if context is None else (context, context_mask)  # positional: also under reentrant checkpointing
        hidden = self.token_embedding(tokens)
        classes = self.class_embedding(class_labels).unsqueeze(1).expand(-1, buffer, -1).to(hidden.dtype)
        hidden = self.encoder_input_norm(torch.cat([classes, hidden], dim=1) + self.encoder_position_embedding)
        order = valid = None
        if mask is not None and bool(mask.any()):
            keep = torch.cat([mask.new_ones(batch, buffer), ~mask], dim=1)
            counts = keep.sum(dim=1)
            order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, : int(counts.max())]
            hidden = hidden.gather(1, order.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
            valid = torch.arange(order.shape[1], device=hidden.device).unsqueeze(0) < counts.unsqueeze(1)
        for layer in self.encoder_layers:
            hidden = layer(hidden, valid, *text_args)
        hidden = self.decoder_embedding(self.encoder_norm(hidden))
        if order is not None:
            mask_tokens = self.mask_token.to(hidden.dtype).expand(batch, buffer + config.num_tokens, -1)
            hidden = torch.where(valid.unsqueeze(-1), hidden, self.mask_token.to(hidden.dtype))
            hidden = mask_tokens.scatter(1, order.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]), hidden)
        hidden = hidden + self.decoder_position_embedding
        for layer in self.decoder_layers:
            hidden = layer(hidden, None, *text_args)
        return self.decoder_norm(hidden)[:, buffer:] + self.diffusion_position_embedding

    # ------------------------------------------------------------------ training

    def forward(
        self,
        latents: torch.Tensor,
        class_labels: torch.Tensor | list[int] | None = None,
        levels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        return_dict: bool | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
    ) -> FAROutput | tuple:
        """One FAR training step's loss (see the module docstring).

        Args:
            latents: `(B, C, H, W)` scaled VAE latents (the full latent `x`, the DMS target).
            class_labels: `(B,)` class ids (`num_classes` = null class allowed). Required for a class-conditional
                model; optional for a text-conditional one (default: the null class for every row).
            levels: `(B,)` input levels in `[0, F)`; default uniform random per sample.
            generator: one `torch.Generator` for every random choice of the step (levels, condition dropout, masks,
                timesteps, noise); lists of per-image generators are for `sample` only.
            encoder_hidden_states: `(B, T, cross_attention_dim)` text states (text-conditional models only).
            encoder_attention_mask: `(B, T)`, 1 = real token, 0 = padding (default: all real). In training, the
                class-dropout draw also drops the text of its samples (only the null text token stays visible).

        Returns:
            [`FAROutput`].
        """
        config = self.config
        self._check_latents(latents)
        latents = latents.to(self.dtype)  # float64 / float16 latents: the model's dtype, as diffusers does
        check_generator(generator)
        batch = latents.shape[0]
        labels = self._null_class_rows(batch) if class_labels is None else self._check_class_labels(class_labels)
        if labels.shape[0] != batch:
            raise ValueError(f"class_labels has {labels.shape[0]} entries for a batch of {batch} latents.")
        text, text_mask = self._check_text(encoder_hidden_states, encoder_attention_mask, batch)
        if levels is None:
            levels = self._random((batch,), generator, "randint", config.num_levels)
        else:
            levels = torch.as_tensor(levels, device=self.device)
            if torch.is_floating_point(levels) or levels.dtype == torch.bool:
                raise ValueError(f"levels must be integer input levels in [0, {config.num_levels}), got dtype "
                                 f"{levels.dtype}; use `levels.long()`.")
            levels = levels.long().reshape(-1)
            if levels.shape[0] != batch or int(levels.min()) < 0 or int(levels.max()) >= config.num_levels:
                raise ValueError(f"levels must be {batch} input levels in [0, {config.num_levels}), got "
                                 f"{levels.tolist()}.")
        if self.training and config.class_dropout_prob > 0:
            dropped = self._random((batch,), generator) < config.class_dropout_prob
            labels = torch.where(dropped, torch.full_like(labels, config.null_class_id), labels)
            if text is not None:  # the same draw drops the text: only the null text token stays visible
                text_mask = text_mask & ~dropped.unsqueeze(1)
        text_dropped = None if text is None else ~text_mask.any(dim=1)

        target = latents  # DMS: the head always models the full latent x, whatever the input level
        inputs = frequency_filter(latents, levels, config.num_levels, config.filter_kind)
        if config.use_mask:
            mask, ratios = self.sample_mask(levels, generator)
        else:
            mask, ratios = torch.zeros(batch, config.num_tokens, dtype=torch.bool, device=self.device), \
                torch.zeros(batch, device=self.device)
        text_inputs = {} if text is None else {"encoder_hidden_states": text, "encoder_attention_mask": text_mask}
        condition = self.conditions(self.patchify(inputs), labels, mask, **text_inputs)  # (B, L, D)

        repeat = config.diffusion_batch_mul
        length = config.num_tokens
        x0 = self.patchify(target).reshape(batch * length, -1).repeat(repeat, 1)
        condition = condition.reshape(batch * length, -1).repeat(repeat, 1)
        token_levels = levels.repeat_interleave(length).repeat(repeat)
        rows = x0.shape[0]
        timesteps = self._random((rows,), generator, "randint", config.num_train_timesteps)
        noise = self._random(tuple(x0.shape), generator, "randn").to(x0.dtype)
        x_t = self.noise_scheduler.add_noise(x0, noise, timesteps)
        output = self.diffusion_head(x_t, timesteps, condition, token_levels)
        eps, raw_variance = output.float().chunk(2, dim=-1)
        mse = (noise.float() - eps).pow(2).mean(dim=-1)
        vb = self._variational_bound(x0.float(), x_t.float(), timesteps, eps.detach(), raw_variance)
        per_row = (mse + vb).view(repeat, batch, length)
        sample_losses = per_row.mean(dim=(0, 2))
        weights = far_loss_weight(levels, config.num_levels).to(sample_losses) if config.loss_weighting \
            else torch.ones_like(sample_losses)
        loss = (weights * sample_losses).mean()
        result = FAROutput(loss=loss, mse_loss=mse.mean(), vb_loss=vb.mean(), sample_losses=sample_losses,
                           loss_weights=weights, levels=levels, mask_ratios=ratios, mask=mask, class_labels=labels,
                           inputs=inputs, target=target, text_dropped=text_dropped)
        return_dict = config.return_dict if return_dict is None else return_dict
        return result if return_dict else result.to_tuple()

    def _variational_bound(self, x0: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor, eps: torch.Tensor,
                           raw_variance: torch.Tensor) -> torch.Tensor:
        """Improved DDPM's `L_vlb` term for the learned variance, in bits per dimension, per row: the KL between the
        true posterior and the model's step at `t > 0`, the Gaussian negative log-likelihood of `x0` at `t = 0`
        (continuous latents, so no discretised likelihood). The mean is computed from the detached `eps`
        (stop-gradient: this term trains only the variance)."""
        tables = self._training_tables()
        true_mean = tables.posterior_mean(x0, x_t, timesteps)
        true_log_variance = tables._take(tables.posterior_log_variance, timesteps, x_t)
        model_mean = tables.posterior_mean(tables.predict_x0(x_t, timesteps, eps), x_t, timesteps)
        model_log_variance = tables.model_log_variance(raw_variance, timesteps)
        kl = _normal_kl(true_mean, true_log_variance, model_mean, model_log_variance).mean(dim=-1)
        nll = 0.5 * (math.log(2 * math.pi) + model_log_variance
                     + (x0 - model_mean) ** 2 * torch.exp(-model_log_variance)).mean(dim=-1)
        return torch.where(timesteps == 0, nll, kl) / math.log(2.0)

    # ------------------------------------------------------------------ sampling

    @apply_forward_hook
    @torch.no_grad()
    def sample(
        self,
        class_labels: torch.Tensor | list[int] | None = None,
        num_steps: int | None = None,
        diffusion_steps: str | int | Sequence[int] | None = None,
        guidance_scale: float | None = None,
        guidance_schedule: str | None = None,
        temperature: float | Sequence[float] | None = None,
        mask_schedule: str | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        scheduler: DDPMScheduler | None = None,
        callback: Callable[[int, int, torch.Tensor], torch.Tensor | None] | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        level_schedule: Sequence[int] | None = None,
        temperature_schedule: str | None = None,
        interrupt: Callable[[], bool] | None = None,
    ) -> torch.Tensor:
        """Sample latents coarse to fine (next-frequency prediction).

        Args:
            class_labels: `(B,)` class ids (`num_classes` = null class for unconditional samples). Required for a
                class-conditional model; optional for a text-conditional one (default: the null class).
            num_steps: outer steps `n` in `[1, F]`; step `k` produces the full latent, filtered to level
                `far_level_schedule(n, F)[k]` for the next step (step 0's input is blank, level 0).
            level_schedule: instead, the input level of every outer step, e.g. the reference sampler's
                `[0, 2, 3, 4, 5, 6, 7, 8, 9, 10]` (starts at 0, increasing, below `F`; see `far_input_levels`).
                Default: the config's `level_schedule` when `num_steps` is left out or equals its length, else the
                even spread of `num_steps`.
            diffusion_steps: inner steps of the head per outer step: `"linear"` (frequency-aware, 40 at the first
                level to 100 at the last, §4.3), an int (constant, e.g. MAR's 100), or one int per outer step.
            guidance_scale: classifier-free guidance `g` (`1.0` = off, the identity): the head's noise prediction is
                `g * eps_c - (g - 1) * eps_u`, i.e. the paper's `(1 + w) x_c - w x_u` with `w = g - 1` (FAR's default
                cfg 3.0 is `guidance_scale=3.0`). Conditional and null-class rows run as ONE batch through the
                transformer and the head, with shared noise (MAR).
            guidance_schedule: `"constant"`, or `"linear"`: outer step `k` (from 0) uses `1 + (g - 1) * k / n`, the
                reference sampler's ramp (no guidance at the blank first step; the paper does not state the ramp).
            temperature: scale of the noise std of every inner step (MAR); a float, or `(start, end)` over the outer
                steps (the reference uses 0.8 -> 1.0) on the `temperature_schedule` ramp.
            temperature_schedule: `"linear"` (`start + (end - start) k / (n - 1)`) or `"cosine"`, the reference
                sampler's `start + (end - start) (1 - cos(pi/2 (k + 1) / n))`.
            mask_schedule: `"none"` (every input token visible), or `"cosine"` (the paper's inference mask, appendix C
                and its diversity analysis; MAR's cosine schedule): one random token order per sample, fixed over the
                outer steps as in the reference sampler; step `k` masks the first `floor(L * cos(pi/2 * k / n))`
                tokens of that order (all of them at the blank first step).
            generator: `torch.Generator`, or a list of `B` of them (one per image, diffusers' convention), for
                reproducible samples. With a list, every random number of row `b` (its token order, initial noise
                and step noise, each a `(1, L, ...)` draw) comes from generator `b` only, so an image does not depend
                on the rest of the batch or on how images are batched; the null-class rows of CFG share the
                conditional rows' noise and draw nothing. A list of one generator samples exactly what that
                generator alone does.
            scheduler: the `DDPMScheduler` whose `set_timesteps` and `alphas_cumprod` drive the inner loop (the
                pipeline's); default `build_noise_scheduler(config)`.
            callback: called as `callback(step, level, latents)` after each outer step with the full latent sampled
                at that step and the level it will be filtered to; a returned tensor of the same shape replaces it.
            encoder_hidden_states: `(B, T, cross_attention_dim)` text states (text-conditional models only).
            encoder_attention_mask: `(B, T)`, 1 = real token (default: all real). With CFG the unconditional rows are
                the same text fully masked (only the null text token visible) and the null class.
            interrupt: called after each outer step (after `callback`); when it returns True, sampling stops there
                and the full latent sampled at that step is returned (a pipeline's `interrupt`, set from its step
                callback).

        Every setting left `None` comes from the sampling defaults saved in the config (`num_inference_steps`,
        `level_schedule`, `diffusion_steps`, `guidance_scale`, `guidance_schedule`, `temperature`,
        `temperature_schedule`, `inference_mask_schedule`).

        Returns:
            `(B, C, H, W)` latents (in the scaled latent space the model was trained on).
        """
        config = self.config
        if level_schedule is None and config.level_schedule is not None and num_steps in (None, len(
                config.level_schedule)):
            level_schedule = config.level_schedule
        if level_schedule is not None:
            levels = far_input_levels(level_schedule, config.num_levels)
            if num_steps is not None and num_steps != len(levels):
                raise ValueError(f"num_steps {num_steps} does not match level_schedule {list(level_schedule)} "
                                 f"({len(levels)} outer steps); give one of them.")
            num_steps = len(levels)
        else:
            num_steps = config.num_inference_steps if num_steps is None else num_steps
            levels = far_level_schedule(num_steps, config.num_levels)
        diffusion_steps = config.diffusion_steps if diffusion_steps is None else diffusion_steps
        guidance_scale = config.guidance_scale if guidance_scale is None else guidance_scale
        guidance_schedule = config.guidance_schedule if guidance_schedule is None else guidance_schedule
        temperature = config.temperature if temperature is None else temperature
        temperature_schedule = config.temperature_schedule if temperature_schedule is None else temperature_schedule
        mask_schedule = config.inference_mask_schedule if mask_schedule is None else mask_schedule
        guidance_scale = check_number("guidance_scale", guidance_scale, low=0.0, low_open=True,
                                      hint="1.0 = no guidance, > 1 guides towards the class; 0 or less would "
                                           "ignore or invert the condition")
        check_callable("callback", callback)
        check_callable("interrupt", interrupt)
        labels = None if class_labels is None else self._check_class_labels(class_labels, allow_null=True)
        text, text_mask = self._check_text(encoder_hidden_states, encoder_attention_mask,
                                           None if labels is None else labels.shape[0])
        if labels is None:
            labels = self._null_class_rows(None if text is None else text.shape[0])
        check_generator(generator, labels.shape[0])
        inner_steps = self._inner_steps(diffusion_steps, num_steps)
        temperatures = self._temperatures(temperature, num_steps, temperature_schedule)
        if guidance_schedule not in GUIDANCE_SCHEDULES:
            raise ValueError(f"guidance_schedule must be one of {GUIDANCE_SCHEDULES}, got {guidance_schedule!r}.")
        if mask_schedule not in INFERENCE_MASK_SCHEDULES:
            raise ValueError(f"mask_schedule must be one of {INFERENCE_MASK_SCHEDULES}, got {mask_schedule!r}.")
        use_cfg = guidance_scale != 1.0
        if use_cfg and not config.has_null_class:
            raise ValueError("This model was trained without class dropout (class_dropout_prob = 0), so it has no "
                             "null class for classifier-free guidance; use guidance_scale=1.0.")
        if scheduler is None:
            scheduler = build_noise_scheduler(config)
        else:
            check_scheduler(scheduler, config)

        batch = labels.shape[0]
        rows = torch.cat([labels, torch.full_like(labels, config.null_class_id)]) if use_cfg else labels
        text_inputs = {}
        if text is not None:  # unconditional rows: the same text, all masked (only the null text token visible)
            text_inputs = {"encoder_hidden_states": torch.cat([text, text]) if use_cfg else text,
                           "encoder_attention_mask": torch.cat([text_mask, torch.zeros_like(text_mask)]) if use_cfg
                           else text_mask}
        dtype = self.dtype
        latents = torch.zeros(batch, config.latent_channels, config.latent_size, config.latent_size,
                              device=self.device, dtype=torch.float32)
        # the inference mask: one random token order per sample, fixed over the outer steps (reference sampler)
        order_rank = self._random((batch, config.num_tokens), generator).argsort(dim=1).argsort(dim=1) \
            if mask_schedule == "cosine" else None
        for step, next_level in enumerate(levels):
            level = levels[step - 1] if step > 0 else 0  # the input level: blank first, then the previous output
            inputs = frequency_filter(latents, level, config.num_levels, config.filter_kind)  # level 0: zeros
            tokens = self.patchify(inputs).to(dtype)
            mask = None
            if order_rank is not None:
                mask = order_rank < math.floor(config.num_tokens * math.cos(math.pi / 2 * step / num_steps))
            if use_cfg:
                tokens, mask = torch.cat([tokens, tokens]), None if mask is None else torch.cat([mask, mask])
            condition = self.conditions(tokens, rows, mask, **text_inputs)
            scale = guidance_scale
            if use_cfg and guidance_schedule == "linear":
                scale = 1.0 + (guidance_scale - 1.0) * step / num_steps
            sampled = self._sample_tokens(condition, level, inner_steps[step], scale if use_cfg else 1.0,
                                          temperatures[step], scheduler, generator, guided=use_cfg)
            latents = self.unpatchify(sampled)
            if callback is not None:
                replaced = callback(step, next_level, latents)
                if replaced is not None:
                    if not isinstance(replaced, torch.Tensor) or replaced.shape != latents.shape:
                        raise ValueError(f"A callback may only return latents of shape {tuple(latents.shape)}.")
                    check_finite_tensor("the latents returned by the callback", replaced)
                    latents = replaced.to(latents)
            if interrupt is not None and interrupt():
                break
        return latents

    def _inner_steps(self, diffusion_steps, num_steps: int) -> list[int]:
        if isinstance(diffusion_steps, str):
            if diffusion_steps != "linear":
                raise ValueError(f"diffusion_steps must be 'linear', an int or one int per outer step, got "
                                 f"{diffusion_steps!r}.")
            steps = far_diffusion_steps(num_steps)
        elif isinstance(diffusion_steps, (list, tuple)):
            steps = [check_int("diffusion_steps entries", value) for value in diffusion_steps]
            if len(steps) != num_steps:
                raise ValueError(f"diffusion_steps gives {len(steps)} values for {num_steps} outer steps; give one "
                                 f"int per outer step, one int for all, or 'linear'.")
        else:
            steps = [check_int("diffusion_steps", diffusion_steps,
                               hint="pass 'linear', an int or one int per outer step")] * num_steps
            if len(steps) != num_steps:
                raise ValueError(f"diffusion_steps gives {len(steps)} values for {num_steps} outer steps.")
        if min(steps) < 1 or max(steps) > self.config.num_train_timesteps:
            raise ValueError(f"diffusion_steps must lie in [1, {self.config.num_train_timesteps}], got {steps}.")
        return steps

    @staticmethod
    def _temperatures(temperature, num_steps: int, schedule: str = "linear") -> list[float]:
        if not isinstance(temperature, (list, tuple)):
            temperature = check_number("temperature", temperature, low=0.0, low_open=True)
        else:
            if len(temperature) != 2:
                raise ValueError(f"temperature must be a float or a (start, end) pair, got {temperature!r}.")
            temperature = [check_number("temperature", value, low=0.0, low_open=True) for value in temperature]
        values = far_temperatures(temperature, num_steps, schedule)
        if min(values) <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}.")
        return values

    def _sample_tokens(self, condition: torch.Tensor, level: int, num_inference_steps: int, guidance_scale: float,
                       temperature: float, scheduler: DDPMScheduler,
                       generator: torch.Generator | list[torch.Generator] | None,
                       guided: bool = False) -> torch.Tensor:
        """Run the head's reverse diffusion for every token at once: `(R, L, D)` conditions (R = B, or 2B with CFG,
        `guided=True`: conditional rows first) -> `(B, L, token_dim)` sampled full-latent tokens. A guided step may
        have `guidance_scale` 1.0 (the first step of the linear ramp): the unconditional rows are then unused. The
        noise is drawn as `(B, L, token_dim)` (from a list of `B` generators: `(1, L, token_dim)` per row) and shared
        by the unconditional rows.

        The step is written here from the scheduler's tables (`set_timesteps` picks the respaced timesteps,
        `alphas_cumprod` gives the coefficients) instead of calling `DDPMScheduler.step`, because `step` draws its
        noise internally and so cannot apply MAR's temperature (a factor on the noise std, not on the variance
        prediction), and because CFG must combine the two halves' noise predictions before the step.
        """
        config = self.config
        head = self.diffusion_head
        use_cfg = guided
        rows, length = condition.shape[0], condition.shape[1]
        batch = rows // 2 if use_cfg else rows
        dtype = condition.dtype
        flat = condition.reshape(rows * length, -1)
        condition_embedding = head.embed_condition(flat, torch.full((rows * length,), level, device=flat.device))
        scheduler.set_timesteps(num_inference_steps, device=self.device)
        timesteps = scheduler.timesteps.flip(0).long()  # ascending
        tables = DiffusionTables(scheduler.alphas_cumprod, timesteps, device=self.device)
        noise_shape = (batch, length, config.token_dim)
        x = self._random(noise_shape, generator, "randn", dtype=torch.float32).view(batch * length, -1)
        for index in range(len(timesteps) - 1, -1, -1):
            time_embedding = head.embed_time(timesteps[index : index + 1], dtype)
            model_input = torch.cat([x, x]) if use_cfg else x
            output = head.denoise(model_input.to(dtype), time_embedding, condition_embedding).float()
            eps, raw_variance = output.chunk(2, dim=-1)
            if use_cfg:
                eps_conditional, eps_unconditional = eps.chunk(2)
                eps = guidance_scale * eps_conditional - (guidance_scale - 1.0) * eps_unconditional
                raw_variance = raw_variance.chunk(2)[0]  # the conditional rows' variance (MAR)
            step = torch.full((x.shape[0],), index, dtype=torch.long, device=x.device)
            x0 = tables.predict_x0(x, step, eps)
            if scheduler.config.clip_sample:  # the scheduler's x0 clipping (see FARConfig.sample_clip_range)
                limit = scheduler.config.clip_sample_range
                x0 = x0.clamp(-limit, limit)
            mean = tables.posterior_mean(x0, x, step)
            if index == 0:
                x = mean
                continue
            log_variance = tables.model_log_variance(raw_variance, step)
            noise = self._random(noise_shape, generator, "randn", dtype=torch.float32).view(x.shape)
            x = mean + torch.exp(0.5 * log_variance) * noise * temperature
        return x.view(batch, length, config.token_dim)
