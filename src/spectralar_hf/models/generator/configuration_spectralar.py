"""Configuration of the SpectralAR generator (SpectralAR §3.3; architecture and recipe of VAR)."""

from __future__ import annotations

import copy
import json
import math
from functools import lru_cache
from importlib import resources
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from ...remote_code import AutoMapConfigMixin
from ...utils import check_config_types, check_id2label, check_positive_fields


def _var_size(depth: int) -> dict[str, Any]:
    """VAR's sizing rule: width 64 * depth, `depth` heads, drop-path 0.1 * depth / 24."""
    return dict(hidden_size=64 * depth, num_hidden_layers=depth, num_attention_heads=depth,
                drop_path_rate=0.1 * depth / 24)


@lru_cache(maxsize=1)
def imagenet_id2label() -> dict[int, str]:
    """ImageNet-1k class names (WordNet lemmas, comma-separated synonyms) by class index."""
    text = resources.files("spectralar_hf").joinpath("data/imagenet1k_labels.json").read_text(encoding="utf-8")
    return {int(key): value for key, value in json.loads(text)["id2label"].items()}


# "d16" with a 4096-code vocabulary is SpectralAR-d16 (~310M parameters, Table 2); "d16-p4" is SpectralAR-d16-p4
# (16 steps x 4 tokens). The small presets are for tests, demos and CPU training.
_IMAGENET = dict(vocab_size=4096, num_image_tokens=64, num_classes=1000, image_size=256, num_channels=3)
SPECTRALAR_PRESETS: dict[str, dict[str, Any]] = {
    "d16": dict(**_IMAGENET, **_var_size(16)),
    "d16-p4": dict(**_IMAGENET, tokens_per_step=4, **_var_size(16)),
    "d20": dict(**_IMAGENET, **_var_size(20)),
    "d24": dict(**_IMAGENET, **_var_size(24)),
    "small": dict(vocab_size=512, num_image_tokens=32, num_classes=10, hidden_size=256, num_hidden_layers=6,
                  num_attention_heads=4, drop_path_rate=0.0),
    "tiny": dict(vocab_size=256, num_image_tokens=16, num_classes=10, hidden_size=64, num_hidden_layers=2,
                 num_attention_heads=2, drop_path_rate=0.0),
}


@strict
class SpectralARConfig(AutoMapConfigMixin, PreTrainedConfig):
    r"""
    Configuration of a [`SpectralARForCausalLM`]: a GPT-2-like class-conditional causal LM over spectral codes.

    Args:
        vocab_size (`int`, defaults to 4096): number of image codes; must equal the tokenizer's `codebook_size`.
        num_image_tokens (`int`, defaults to 64): N, the codes per image; must equal the tokenizer's
            `num_latent_tokens`.
        num_classes (`int`, defaults to 1000): number of classes. Class id `num_classes` is the null class used for
            classifier-free guidance (trained through `class_dropout_prob`).
        tokens_per_step (`int`, defaults to 1): codes predicted in parallel per step (4 for SpectralAR-d16-p4); must
            divide `num_image_tokens`. Each position of step `g - 1` predicts the code `tokens_per_step` places ahead,
            with block-causal attention (bidirectional inside a step, causal across steps).
        hidden_size / num_hidden_layers / num_attention_heads / mlp_ratio: transformer sizes (VAR: `64 d`, `d`, `d`,
            4).
        class_dropout_prob (`float`, defaults to 0.1): probability that a training label is replaced by the null
            class (VAR's `cond_drop_rate`). 0 means the model has no trained null class, so no CFG.
        dropout (`float`, defaults to 0.0): dropout on the attention and MLP outputs.
        drop_path_rate (`float`, defaults to 0.0): stochastic depth, linearly increasing over the blocks to this
            value (VAR: `0.1 * depth / 24`).
        attn_l2_norm (`bool`, defaults to `True`): l2-normalised queries and keys with a learnable per-head scale
            (init 4, clamped at 100), as VAR, for fp16 stability.
        layer_norm_eps (`float`, defaults to 1e-6).
        initializer_range (`float`, *optional*): std of the weight init; default `sqrt(1 / (3 * hidden_size))`
            (VAR).
        init_adaln (`float`, defaults to 0.5), init_adaln_gamma (`float`, defaults to 1e-5), init_head (`float`,
            defaults to 0.02): VAR's multipliers of the AdaLN scale/shift rows, the AdaLN gate rows and the head.
        image_size (`int`, *optional*), num_channels (`int`, *optional*): size and channels of the tokenizer's images
            this generator was trained for (recorded by the training script; a pipeline checks them on assembly).
        id2label (`dict[int, str]`, *optional*): class names (comma-separated synonyms allowed), used by the pipeline
            to accept class names. The ImageNet presets carry the ImageNet-1k names.
        use_cache (`bool`, defaults to `True`).
    """

    model_type = "spectralar"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]

    vocab_size: int = 4096
    num_image_tokens: int = 64
    num_classes: int = 1000
    tokens_per_step: int = 1
    hidden_size: int = 1024
    num_hidden_layers: int = 16
    num_attention_heads: int = 16
    mlp_ratio: float | int = 4.0
    class_dropout_prob: float | int = 0.1
    dropout: float | int = 0.0
    drop_path_rate: float | int = 0.0
    attn_l2_norm: bool = True
    layer_norm_eps: float = 1e-6
    initializer_range: float | None = None
    init_adaln: float | int = 0.5
    init_adaln_gamma: float | int = 1e-5
    init_head: float | int = 0.02
    use_cache: bool = True
    image_size: int | None = None
    num_channels: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        check_config_types(self)
        check_id2label(self)
        check_positive_fields(self, "hidden_size", "num_hidden_layers", "mlp_ratio", "layer_norm_eps")
        for name in ("image_size", "num_channels"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int or None, got {getattr(self, name)}.")
        for name in ("dropout", "drop_path_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), got {getattr(self, name)}.")
        if self.vocab_size < 2 or self.num_image_tokens < 1 or self.num_classes < 1:
            raise ValueError(
                f"vocab_size ({self.vocab_size}), num_image_tokens ({self.num_image_tokens}) and num_classes "
                f"({self.num_classes}) must be positive (vocab_size >= 2)."
            )
        if self.tokens_per_step < 1 or self.num_image_tokens % self.tokens_per_step != 0:
            raise ValueError(
                f"tokens_per_step {self.tokens_per_step} does not divide num_image_tokens {self.num_image_tokens}; "
                f"choose a divisor (e.g. 1 or 4 for 64 tokens)."
            )
        if self.num_attention_heads < 1 or self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}."
            )
        if not 0.0 <= self.class_dropout_prob < 1.0:
            raise ValueError(f"class_dropout_prob must lie in [0, 1), got {self.class_dropout_prob}.")
        if self.id2label is not None and len(self.id2label) != self.num_classes:
            raise ValueError(f"id2label names {len(self.id2label)} classes but num_classes is {self.num_classes}.")
        if self.id2label is None:
            kwargs["num_labels"] = self.num_classes  # transformers' default names, LABEL_0 .. LABEL_{C-1}
        if self.initializer_range is None:
            self.initializer_range = math.sqrt(1.0 / (3.0 * self.hidden_size))
        super().__post_init__(**kwargs)

    @property
    def null_class_id(self) -> int:
        """Class id of the unconditional (null) class: `num_classes`."""
        return self.num_classes

    @property
    def has_null_class(self) -> bool:
        """Whether the null class was trained (class dropout > 0), i.e. whether CFG is meaningful."""
        return self.class_dropout_prob > 0

    @property
    def num_steps(self) -> int:
        """Autoregressive steps for a full image: `num_image_tokens // tokens_per_step`."""
        return self.num_image_tokens // self.tokens_per_step

    @property
    def start_token_offset(self) -> int:
        """Input id of the start token of class 0 (`vocab_size`); class `c` starts with `vocab_size + c`."""
        return self.vocab_size

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "SpectralARConfig":
        """Build a named configuration (see `SPECTRALAR_PRESETS`); keyword arguments override fields."""
        if name not in SPECTRALAR_PRESETS:
            raise ValueError(f"Unknown generator preset {name!r}; available: {sorted(SPECTRALAR_PRESETS)}.")
        values = copy.deepcopy(SPECTRALAR_PRESETS[name])
        if values["num_classes"] == 1000 and "id2label" not in overrides and overrides.get("num_classes", 1000) == 1000:
            values["id2label"] = dict(imagenet_id2label())
        values.update(overrides)
        return cls(**values)
