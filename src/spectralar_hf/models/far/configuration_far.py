"""Configuration of FAR, frequency progressive autoregression with continuous tokens (FAR §4-5; MAR's backbone)."""

from __future__ import annotations

import copy
import math
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from ...remote_code import AutoMapConfigMixin
from ...spectral import FAR_FILTER_KINDS, FAR_TEMPERATURE_SCHEDULES, far_input_levels
from ...utils import check_config_types, check_id2label, check_positive_fields
from ..generator.configuration_spectralar import imagenet_id2label

GUIDANCE_SCHEDULES = ("constant", "linear")
INFERENCE_MASK_SCHEDULES = ("none", "cosine")

# FAR-B/L/H (FAR §5.1, Table 1; anchors: sizes of the reference code) on MAR's KL-16 latents (16 x 16 x 16 for
# 256 px ImageNet), with the reference recipe's dropout (0.1 on attention weights and on the attention / MLP outputs)
# and the paper's sampling settings: 10 outer steps over the reference sampler's input levels [0, 2, 3, .., 10],
# frequency-aware inner steps 40 -> 100, CFG 3.0 with the linear ramp, noise temperature 0.8 -> 1.0 on the reference
# sampler's cosine ramp. "small" and "tiny" are for CPU demos and tests on 8 x 8 latents.
FAR_REFERENCE_LEVEL_SCHEDULE = [0, 2, 3, 4, 5, 6, 7, 8, 9, 10]
FAR_REFERENCE_SAMPLING = dict(num_inference_steps=10, level_schedule=FAR_REFERENCE_LEVEL_SCHEDULE,
                              diffusion_steps="linear", guidance_scale=3.0, guidance_schedule="linear",
                              temperature=[0.8, 1.0], temperature_schedule="cosine")
_IMAGENET = dict(latent_channels=16, latent_size=16, num_classes=1000, dropout=0.1, attention_dropout=0.1,
                 **FAR_REFERENCE_SAMPLING)
FAR_PRESETS: dict[str, dict[str, Any]] = {
    "far-b": dict(**_IMAGENET, hidden_size=768, encoder_layers=12, decoder_layers=12, num_attention_heads=12,
                  head_depth=6, head_width=1024),
    "far-l": dict(**_IMAGENET, hidden_size=1024, encoder_layers=16, decoder_layers=16, num_attention_heads=16,
                  head_depth=3, head_width=1024),
    "far-h": dict(**_IMAGENET, hidden_size=1280, encoder_layers=20, decoder_layers=20, num_attention_heads=16,
                  head_depth=3, head_width=1024),
    "small": dict(latent_channels=4, latent_size=8, num_classes=10, class_buffer_size=16, hidden_size=256,
                  encoder_layers=4, decoder_layers=4, num_attention_heads=4, head_depth=3, head_width=256),
    "tiny": dict(latent_channels=4, latent_size=8, num_classes=10, class_buffer_size=4, hidden_size=64,
                 encoder_layers=1, decoder_layers=1, num_attention_heads=2, head_depth=2, head_width=64),
}


@strict
class FARConfig(AutoMapConfigMixin, PreTrainedConfig):
    r"""
    Configuration of a [`FARTransformer`]: MAR's bidirectional encoder-decoder over (filtered, masked) latent tokens
    with a buffer of class tokens, and a MAR AdaLN-MLP diffusion head that models every token of the full latent.

    Args:
        latent_channels (`int`, defaults to 16): `C` of the VAE latents (MAR's KL-16: 16).
        latent_size (`int`, defaults to 16): `H = W` of the latents (16 for 256 px images with KL-16).
        patch_size (`int`, defaults to 1): latent pixels per token side; 1 = one token per latent pixel (MAR with
            KL-16). Tokens have `C * patch_size**2` values.
        num_classes (`int`, defaults to 1000): number of classes; class id `num_classes` is the null class (a learned
            embedding, trained through `class_dropout_prob`) used for classifier-free guidance. A text-conditional
            model (`cross_attention_dim` set) may have `num_classes=0`: text only, every row uses the null embedding.
        class_buffer_size (`int`, defaults to 64): copies of the class embedding prepended to the sequence (MAR's
            buffer).
        hidden_size / encoder_layers / decoder_layers / num_attention_heads / mlp_ratio: transformer sizes (FAR-B
            768/12/12/12, FAR-L 1024/16/16/16, FAR-H 1280/20/20/16, MLP ratio 4).
        head_depth (`int`), head_width (`int`): residual AdaLN blocks and width of the diffusion MLP (FAR-B 6/1024,
            FAR-L and FAR-H 3/1024; Table 2).
        num_train_timesteps (`int`, defaults to 1000), beta_schedule (`str`, defaults to `"squaredcos_cap_v2"`): the
            DDPM noise schedule of the head (diffusers `DDPMScheduler`: cosine, 1000 steps, epsilon prediction,
            learned-range variance).
        class_dropout_prob (`float`, defaults to 0.1): probability that a training sample's condition is dropped:
            its label becomes the null class and, with text conditioning, its text is hidden (only the null text
            token stays visible). One draw per sample drops both, so the dropped samples train exactly the
            unconditional branch of classifier-free guidance. 0 means the model has no trained unconditional branch,
            so no CFG.
        cross_attention_dim (`int`, *optional*): hidden size of the text encoder's states (FAR §5.3, text-to-image:
            the last hidden layer of a transformers text encoder over all text tokens). When set, every encoder and
            decoder block gets a cross-attention sublayer after its self-attention whose keys and values are
            projected from `(B, T, cross_attention_dim)` text states, preceded by a learned null text token that is
            always visible. `None` (default): class-conditional only (no cross-attention parameters).
        mask_min_ratio (`float`, defaults to 0.7): `r_0`, the lowest masked fraction at the lowest level; `r_i` falls
            linearly to 0 at the highest level (frequency-aware mask, §4.3); `use_mask=False` trains without
            masking.
        use_mask (`bool`, defaults to `True`): mask `[r_i, 1]` of the input tokens in training (ratio from a normal
            truncated to `[r_i, 1]`, mean 1.0, std `mask_ratio_std`, MAR).
        mask_ratio_std (`float`, defaults to 0.25).
        num_levels (`int`, *optional*): `F`, the frequency levels; default `latent_size` (`min(H, W)`).
        filter_kind (`str`, defaults to `"downsample"`): `"downsample"` (type (a), the paper's default) or
            `"fourier"` (type (b), Eq. 4); see `spectralar_hf.spectral.frequency_filter`.
        loss_weighting (`bool`, defaults to `True`): the frequency-aware loss weight `1 + sin(pi/2 * i/F)` (FTL).
        diffusion_batch_mul (`int`, defaults to 4): each token's target is repeated this many times with different
            noise and timesteps in the loss (MAR).
        dropout / attention_dropout (`float`, defaults to 0.0): on the transformer's MLP/attention outputs and
            attention weights (MAR: 0.1 for its large models).
        layer_norm_eps (`float`, defaults to 1e-6), initializer_range (`float`, defaults to 0.02).
        id2label (`dict[int, str]`, *optional*): class names, used by the pipeline to accept class names.
        num_inference_steps, level_schedule, diffusion_steps, guidance_scale, guidance_schedule, temperature,
        temperature_schedule, inference_mask_schedule:
            sampling defaults saved with the model (the pipeline uses them when a call leaves them out):
            10 outer steps (at most `num_levels`), spread evenly over the levels unless `level_schedule` lists the
            input level of every outer step (the reference sampler's `[0, 2, 3, .., 10]`; then
            `num_inference_steps` is its length), frequency-aware inner steps (`"linear"` 40 -> 100, or an int),
            CFG scale `1.0` (off) with a `"constant"` or `"linear"` ramp (`1 + (g - 1) k / n` at outer step `k`, the
            reference sampler's), noise temperature (a float, or `[start, end]` over the outer steps on a
            `"linear"` or the reference sampler's `"cosine"` ramp) and the inference mask (`"none"`, or `"cosine"`:
            MAR's cosine schedule of masked input tokens over one random order per sample). The inference mask
            defaults to how the model was trained: `"cosine"` with `use_mask`, else `"none"`.
        sample_clip_range (`float`, *optional*): clamp the head's predicted clean latent `x0` to
            `[-sample_clip_range, sample_clip_range]` at every inner step (the `clip_sample` / `clip_sample_range` of
            the `DDPMScheduler` built from this config). `None` (the papers' setting: MAR and FAR do not clip
            latents). Useful for short trainings: the cosine schedule's first step (t = 999, alpha_bar ~ 2e-9)
            multiplies the head's noise-prediction error by ~1e3 in the sampled latent; a range of about the
            data's largest |latent| (e.g. 4 for unit-std latents) keeps such samples in range.
    """

    model_type = "far"

    latent_channels: int = 16
    latent_size: int = 16
    patch_size: int = 1
    num_classes: int = 1000
    class_buffer_size: int = 64
    hidden_size: int = 768
    encoder_layers: int = 12
    decoder_layers: int = 12
    num_attention_heads: int = 12
    mlp_ratio: float | int = 4.0
    head_depth: int = 6
    head_width: int = 1024
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    class_dropout_prob: float | int = 0.1
    cross_attention_dim: int | None = None
    use_mask: bool = True
    mask_min_ratio: float | int = 0.7
    mask_ratio_std: float | int = 0.25
    num_levels: int | None = None
    filter_kind: str = "downsample"
    loss_weighting: bool = True
    diffusion_batch_mul: int = 4
    dropout: float | int = 0.0
    attention_dropout: float | int = 0.0
    layer_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    num_inference_steps: int | None = None
    level_schedule: list[int] | None = None
    diffusion_steps: str | int = "linear"
    guidance_scale: float | int = 1.0
    guidance_schedule: str = "constant"
    temperature: float | int | list[float] = 1.0
    temperature_schedule: str = "linear"
    inference_mask_schedule: str | None = None
    sample_clip_range: float | int | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        check_config_types(self)
        check_id2label(self)
        check_positive_fields(self, "hidden_size", "mlp_ratio", "mask_ratio_std", "layer_norm_eps")
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), got {getattr(self, name)}.")
        temperatures = self.temperature if isinstance(self.temperature, (list, tuple)) else [self.temperature]
        if len(temperatures) not in (1, 2) or not all(
                isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and t > 0
                for t in temperatures):
            raise ValueError(f"temperature must be a positive number or a [start, end] pair of them, got "
                             f"{self.temperature!r}.")
        if min(self.latent_channels, self.latent_size, self.patch_size) < 1:
            raise ValueError(
                f"latent_channels ({self.latent_channels}), latent_size ({self.latent_size}) and patch_size "
                f"({self.patch_size}) must be positive."
            )
        if self.cross_attention_dim is not None and (isinstance(self.cross_attention_dim, bool)
                                                     or self.cross_attention_dim < 1):
            raise ValueError(f"cross_attention_dim must be a positive int (the hidden size of the text encoder's "
                             f"states) or None (class-conditional only), got {self.cross_attention_dim!r}.")
        if self.num_classes < (0 if self.is_text_conditional else 1):
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes} (only a text-conditional model, "
                             f"cross_attention_dim set, may have num_classes = 0).")
        if self.latent_size % self.patch_size != 0:
            raise ValueError(f"latent_size {self.latent_size} is not divisible by patch_size {self.patch_size}.")
        if self.num_attention_heads < 1 or self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}."
            )
        if self.class_buffer_size < 1 or self.encoder_layers < 1 or self.decoder_layers < 1:
            raise ValueError("class_buffer_size, encoder_layers and decoder_layers must be >= 1.")
        if self.head_depth < 1 or self.head_width < 1:
            raise ValueError(f"head_depth ({self.head_depth}) and head_width ({self.head_width}) must be >= 1.")
        if self.num_levels is None:
            self.num_levels = self.latent_size
        if not 1 <= self.num_levels <= self.latent_size:
            raise ValueError(f"num_levels must lie in [1, latent_size = {self.latent_size}], got {self.num_levels}.")
        if self.filter_kind not in FAR_FILTER_KINDS:
            raise ValueError(f"filter_kind must be one of {FAR_FILTER_KINDS}, got {self.filter_kind!r}.")
        if not 0.0 <= self.class_dropout_prob < 1.0:
            raise ValueError(f"class_dropout_prob must lie in [0, 1), got {self.class_dropout_prob}.")
        if not 0.0 <= self.mask_min_ratio <= 1.0 or self.mask_ratio_std <= 0:
            raise ValueError(f"mask_min_ratio must lie in [0, 1] and mask_ratio_std be > 0, got "
                             f"{self.mask_min_ratio} and {self.mask_ratio_std}.")
        if self.diffusion_batch_mul < 1 or self.num_train_timesteps < 2:
            raise ValueError("diffusion_batch_mul must be >= 1 and num_train_timesteps >= 2.")
        if self.beta_schedule not in ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"):
            raise ValueError(f"beta_schedule {self.beta_schedule!r} is not a DDPMScheduler schedule.")
        if self.guidance_schedule not in GUIDANCE_SCHEDULES:
            raise ValueError(f"guidance_schedule must be one of {GUIDANCE_SCHEDULES}, got {self.guidance_schedule!r}.")
        if self.sample_clip_range is not None and not self.sample_clip_range > 0:
            raise ValueError(f"sample_clip_range must be > 0 (or None for no clipping), got {self.sample_clip_range}.")
        if self.temperature_schedule not in FAR_TEMPERATURE_SCHEDULES:
            raise ValueError(f"temperature_schedule must be one of {FAR_TEMPERATURE_SCHEDULES}, got "
                             f"{self.temperature_schedule!r}.")
        if self.inference_mask_schedule is None:  # sample the way the model was trained
            self.inference_mask_schedule = "cosine" if self.use_mask else "none"
        if self.inference_mask_schedule not in INFERENCE_MASK_SCHEDULES:
            raise ValueError(f"inference_mask_schedule must be one of {INFERENCE_MASK_SCHEDULES}, got "
                             f"{self.inference_mask_schedule!r}.")
        if not (self.diffusion_steps == "linear" or (isinstance(self.diffusion_steps, int)
                                                     and self.diffusion_steps >= 1)):
            raise ValueError(f"diffusion_steps must be 'linear' or a positive int, got {self.diffusion_steps!r}.")
        if isinstance(self.diffusion_steps, int) and self.diffusion_steps > self.num_train_timesteps:
            raise ValueError(f"diffusion_steps {self.diffusion_steps} exceeds num_train_timesteps "
                             f"{self.num_train_timesteps}; use at most that many inner steps.")
        if self.level_schedule is not None:
            far_input_levels(self.level_schedule, self.num_levels)  # raises on a bad schedule
            if self.num_inference_steps is None:
                self.num_inference_steps = len(self.level_schedule)
            if self.num_inference_steps != len(self.level_schedule):
                raise ValueError(f"num_inference_steps {self.num_inference_steps} does not match level_schedule "
                                 f"{self.level_schedule} ({len(self.level_schedule)} outer steps); set one of them.")
        if self.num_inference_steps is None:
            self.num_inference_steps = min(10, self.num_levels)
        if not 1 <= self.num_inference_steps <= self.num_levels:
            raise ValueError(f"num_inference_steps must lie in [1, num_levels = {self.num_levels}], got "
                             f"{self.num_inference_steps}.")
        if self.id2label is not None and len(self.id2label) != self.num_classes:
            raise ValueError(f"id2label names {len(self.id2label)} classes but num_classes is {self.num_classes}.")
        if self.id2label is None:
            kwargs["num_labels"] = self.num_classes  # transformers' default names, LABEL_0 .. LABEL_{C-1}
        super().__post_init__(**kwargs)

    @property
    def null_class_id(self) -> int:
        """Class id of the unconditional (null) class: `num_classes`."""
        return self.num_classes

    @property
    def has_null_class(self) -> bool:
        """Whether the unconditional branch (null class, and null text with text conditioning) was trained (class
        dropout > 0), i.e. whether CFG is meaningful."""
        return self.class_dropout_prob > 0

    @property
    def is_text_conditional(self) -> bool:
        """Whether the blocks have cross-attention to text states (`cross_attention_dim` is set)."""
        return self.cross_attention_dim is not None

    @property
    def tokens_per_side(self) -> int:
        return self.latent_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        """Tokens per latent: `(latent_size / patch_size) ** 2`."""
        return self.tokens_per_side**2

    @property
    def token_dim(self) -> int:
        """Values per token: `latent_channels * patch_size ** 2`."""
        return self.latent_channels * self.patch_size**2

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "FARConfig":
        """Build a named configuration (see `FAR_PRESETS`); keyword arguments override fields."""
        if name not in FAR_PRESETS:
            raise ValueError(f"Unknown FAR preset {name!r}; available: {sorted(FAR_PRESETS)}.")
        values = copy.deepcopy(FAR_PRESETS[name])
        if values["num_classes"] == 1000 and "id2label" not in overrides and overrides.get("num_classes", 1000) == 1000:
            values["id2label"] = dict(imagenet_id2label())
        values.update(overrides)
        return cls(**values)
