"""SpectralAR generator: a GPT-2-like class-conditional causal LM over spectral codes (SpectralAR §3.3, Eq. 8).

Architecture and recipe follow VAR: the class embedding is the start token of every sequence and drives AdaLN in
every block (`x + gamma * f(LN(x) * (1 + scale) + shift)`) and before the head; attention uses l2-normalised
queries and keys with a learnable per-head scale; SDPA everywhere.

Sequence layout with `k = tokens_per_step` (1 for SpectralAR, 4 for -p4) and `N` image tokens:

    position  0 .. k-1       : start block, class embedding + position embedding
    position  g*k .. g*k+k-1 : codes of step g (g = 1 .. N/k - 1)

Attention is block-causal (a position sees every position of its own and earlier blocks); the output at position
`j` predicts code `j`, i.e. each position of block `g` predicts the code `k` places ahead. With `k = 1` this is the
usual causal LM whose start token is the class.

Input ids: codes are `[0, vocab_size)`. For `generate()` a sequence may begin with a *start token*
`vocab_size + class_id` (`model.start_token_ids(class_labels)`), whose embedding is the class embedding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from diffusers.utils.accelerate_utils import apply_forward_hook
from torch import nn
from transformers import CompileConfig, DynamicCache, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import CausalLMOutputWithPast

from ...hub import SpectralARHubMixin
from ...utils import check_callable, check_generator, check_int, check_number, rand_rows
from .configuration_spectralar import SpectralARConfig

# Attribute under which the class labels of a sequence ride along in its KV cache, so that cached decoding steps
# (including the unconditional branch of transformers' CFG logits processor) know the AdaLN condition.
_CACHE_CLASS_ATTRIBUTE = "spectralar_class_labels"
GUIDANCE_SCHEDULES = ("constant", "linear")
# `torch.compile`d `SpectralARForCausalLM._static_forward` per set of compile settings (the model is an argument,
# so one compiled function serves every model; dynamo guards recompile it for new shapes).
_COMPILED_FORWARDS: dict[tuple, Callable] = {}
# transformers 5.24 renamed the cache of model outputs (and of `forward`, which `generate()` calls) from
# `past_key_values` to `cache`; our outputs use the installed version's field so `generate()` finds the cache.
_CACHE_OUTPUT_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


@dataclass
class SpectralARCausalLMOutput(CausalLMOutputWithPast):
    """[`CausalLMOutputWithPast`] plus the class labels actually used (after class dropout).

    Args:
        logits (`torch.FloatTensor` of shape `(batch_size, length, vocab_size)`): `logits[:, j]` scores the code at
            sequence position `j` (see the module docstring for positions).
        class_labels (`torch.LongTensor` of shape `(batch_size,)`): conditioning class per row; `num_classes` is the
            null class.
    """

    class_labels: torch.LongTensor | None = None


class SpectralARStaticCache:
    """Preallocated KV cache of `sample()`: per layer, one `(rows, heads, max_length, head_dim)` buffer for keys and
    one for values. A forward writes its keys/values in place at `write_positions` (no re-concatenation of the whole
    cache per step, which `DynamicCache` does) and attends over the first `attended_length` positions: the written
    prefix when eager, the whole buffer under a mask when compiled, so that every step has the same shapes. Implements
    the `update` of transformers' `Cache` that the attention layers call."""

    def __init__(self, config: SpectralARConfig, rows: int, max_length: int, dtype: torch.dtype,
                 device: torch.device):
        head_dim = config.hidden_size // config.num_attention_heads
        shape = (rows, config.num_attention_heads, max_length, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.max_length = max_length
        self.write_positions: torch.Tensor | None = None  # (q,) sequence positions of the next forward's keys
        self.attended_length = max_length  # keys the next forward attends over
        self.length = 0  # positions written so far (host-side count)

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.keys[layer_idx].index_copy_(2, self.write_positions, key)
        self.values[layer_idx].index_copy_(2, self.write_positions, value)
        if self.attended_length == self.max_length:
            return self.keys[layer_idx], self.values[layer_idx]
        return self.keys[layer_idx][:, :, : self.attended_length], self.values[layer_idx][:, :, : self.attended_length]


def drop_path(hidden_states: torch.Tensor, probability: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero the residual branch of whole samples with `probability`, rescale the rest."""
    if probability == 0.0 or not training:
        return hidden_states
    keep = 1.0 - probability
    mask = hidden_states.new_empty(hidden_states.shape[0], *([1] * (hidden_states.dim() - 1))).bernoulli_(keep)
    return hidden_states * mask / keep


class SpectralARAttention(nn.Module):
    def __init__(self, config: SpectralARConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = config.dropout
        self.l2_norm = config.attn_l2_norm
        if self.l2_norm:
            self.log_scale = nn.Parameter(torch.full((1, self.num_heads, 1, 1), math.log(4.0)))
            self.max_log_scale = math.log(100.0)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, is_causal: bool,
                cache: Cache | None) -> torch.Tensor:
        batch, length, width = hidden_states.shape
        qkv = self.qkv(hidden_states).view(batch, length, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, heads, L, head_dim)
        scale = None
        if self.l2_norm:
            query = F.normalize(query, dim=-1) * self.log_scale.clamp(max=self.max_log_scale).exp().to(query.dtype)
            key = F.normalize(key, dim=-1)
            scale = 1.0
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)
        attended = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, is_causal=is_causal, scale=scale,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.proj(attended.transpose(1, 2).reshape(batch, length, width))


class SpectralARMLP(nn.Module):
    def __init__(self, config: SpectralARConfig):
        super().__init__()
        inner = int(config.hidden_size * config.mlp_ratio)
        self.fc1 = nn.Linear(config.hidden_size, inner)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(inner, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class SpectralARBlock(GradientCheckpointingLayer):
    """AdaLN transformer block (VAR): the class condition sets gates, scales and shifts of both sub-layers."""

    def __init__(self, config: SpectralARConfig, layer_idx: int, drop_path_rate: float):
        super().__init__()
        width = config.hidden_size
        self.norm = nn.LayerNorm(width, eps=config.layer_norm_eps, elementwise_affine=False)
        self.attn = SpectralARAttention(config, layer_idx)
        self.mlp = SpectralARMLP(config)
        self.ada_lin = nn.Linear(width, 6 * width)  # -> gamma1, gamma2, scale1, scale2, shift1, shift2
        self.drop_path_rate = drop_path_rate
        self.dropout = nn.Dropout(config.dropout)

    def modulation(self, condition: torch.Tensor) -> torch.Tensor:
        """`(B, C)` SiLU-activated condition -> `(B, 6, C)` AdaLN parameters (constant over positions)."""
        return self.ada_lin(condition).unflatten(-1, (6, -1))

    def forward(self, hidden_states: torch.Tensor, modulation: torch.Tensor, attention_mask: torch.Tensor | None,
                is_causal: bool, cache: Cache | None) -> torch.Tensor:
        """`(B, L, C)` -> `(B, L, C)`. `modulation`: the `(B, 6, C)` AdaLN parameters (precomputed once per sequence
        with `self.modulation`, as cached sampling does) or the `(B, C)` SiLU-activated condition, turned into them
        here, inside the block's forward, where per-block sharding (FSDP) has gathered `ada_lin`'s weights."""
        if modulation.dim() == 2:
            modulation = self.modulation(modulation)
        gamma1, gamma2, scale1, scale2, shift1, shift2 = modulation.unsqueeze(1).unbind(2)  # each (B, 1, C)
        attended = self.attn(self.norm(hidden_states) * (1 + scale1) + shift1, attention_mask, is_causal, cache)
        hidden_states = hidden_states + drop_path(self.dropout(attended) * gamma1, self.drop_path_rate,
                                                  self.training)
        fed = self.mlp(self.norm(hidden_states) * (1 + scale2) + shift2)
        return hidden_states + drop_path(self.dropout(fed) * gamma2, self.drop_path_rate, self.training)


class SpectralARPreTrainedModel(PreTrainedModel):
    config: SpectralARConfig
    config_class = SpectralARConfig
    base_model_prefix = "spectralar"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["SpectralARBlock"]
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """VAR's initialisation: truncated normal (std `initializer_range`), scaled residual projections,
        near-zero AdaLN gates, scaled AdaLN scales/shifts and head."""
        config = self.config
        std = config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            init.trunc_normal_(module.weight, std=std)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        elif isinstance(module, SpectralARAttention) and module.l2_norm:
            init.constant_(module.log_scale, math.log(4.0))
        if isinstance(module, SpectralARForCausalLM):
            # transformers calls _init_weights children first and skips modules without parameters of their own
            # (SpectralARBlock), so the blocks' scaled layers are set here, after their Linear defaults above.
            init.trunc_normal_(module.position_embedding, std=std)
            init.copy_(module.head_ada_lin.weight,
                       _trunc_normal_like(module.head_ada_lin.weight, std) * config.init_adaln)
            init.copy_(module.lm_head.weight, _trunc_normal_like(module.lm_head.weight, std) * config.init_head)
            depth_scale = 1.0 / math.sqrt(2 * config.num_hidden_layers)
            width = config.hidden_size
            rows = torch.full((6 * width, 1), float(config.init_adaln), device=module.lm_head.weight.device)
            rows[: 2 * width] = config.init_adaln_gamma
            for block in module.layers:
                for linear in (block.attn.proj, block.mlp.fc2):
                    init.copy_(linear.weight, _trunc_normal_like(linear.weight, std) * depth_scale)
                init.copy_(block.ada_lin.weight, _trunc_normal_like(block.ada_lin.weight, std) * rows)


def _trunc_normal_like(tensor: torch.Tensor, std: float) -> torch.Tensor:
    values = torch.empty(tensor.shape, dtype=torch.float32, device=tensor.device)
    return nn.init.trunc_normal_(values, std=std).to(tensor.dtype)


class SpectralARForCausalLM(SpectralARHubMixin, SpectralARPreTrainedModel, GenerationMixin):
    """Class-conditional autoregressive generator of spectral codes (coarse to fine).

    Example:

    ```python
    >>> import torch
    >>> from spectralar_hf import SpectralARConfig, SpectralARForCausalLM
    >>> model = SpectralARForCausalLM(SpectralARConfig.from_preset("tiny")).eval()
    >>> codes = torch.randint(0, 256, (2, 16))
    >>> loss = model(input_ids=codes, class_labels=torch.tensor([3, 7]), labels=codes).loss  # training
    >>> samples = model.sample(torch.tensor([3, 7]), guidance_scale=2.0, top_k=50)           # (2, 16) codes
    >>> start = model.start_token_ids(torch.tensor([3, 7]))                                  # generate() prompt
    >>> greedy = model.generate(start, max_new_tokens=16, do_sample=False)[:, 1:]            # (2, 16) codes
    ```
    """

    def __init__(self, config: SpectralARConfig):
        super().__init__(config)
        width = config.hidden_size
        self.class_embedding = nn.Embedding(config.num_classes + 1, width)  # last row: the null class
        self.token_embedding = nn.Embedding(config.vocab_size, width)
        self.position_embedding = nn.Parameter(torch.empty(config.num_image_tokens, width))
        depth = config.num_hidden_layers
        rates = [config.drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear, as VAR
        self.layers = nn.ModuleList(SpectralARBlock(config, i, rates[i]) for i in range(config.num_hidden_layers))
        self.head_norm = nn.LayerNorm(width, eps=config.layer_norm_eps, elementwise_affine=False)
        self.head_ada_lin = nn.Linear(width, 2 * width)  # -> scale, shift before the head
        self.lm_head = nn.Linear(width, config.vocab_size)
        self.post_init()

    # ------------------------------------------------------------------ embeddings and helpers

    def get_input_embeddings(self) -> nn.Embedding:
        return self.token_embedding

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def start_token_ids(self, class_labels: torch.Tensor | list[int]) -> torch.LongTensor:
        """`(B, 1)` start-token ids `vocab_size + class_id`: the prompt for `generate()`."""
        labels = self._check_class_labels(class_labels, allow_null=True)
        return (labels + self.config.start_token_offset).unsqueeze(1)

    def _check_class_labels(self, class_labels, allow_null: bool) -> torch.LongTensor:
        config = self.config
        if isinstance(class_labels, str) or (isinstance(class_labels, (list, tuple))
                                             and any(isinstance(value, str) for value in class_labels)):
            raise TypeError(f"class_labels must be integer class ids, got {class_labels!r}; class names are mapped to "
                            f"ids by the pipeline (SpectralARPipeline.get_label_ids) or config.label2id.")
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

    def _condition(self, class_labels: torch.LongTensor, precompute: bool = False
                   ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The conditioning of every block and the head's AdaLN parameters `(B, 2, C)`, from the class embedding.
        A block gets the `(B, C)` SiLU-activated condition, from which its own forward computes its AdaLN parameters
        (so each block's weights are used inside its forward, as FSDP's per-block wrapping requires), or, with
        `precompute` (sampling, where one sequence runs many steps), its `(B, 6, C)` parameters."""
        condition = F.silu(self.class_embedding(class_labels))
        blocks = [layer.modulation(condition) if precompute else condition for layer in self.layers]
        return blocks, self.head_ada_lin(condition).unflatten(-1, (2, -1))

    def _attention_mask(self, query_length: int, past_length: int, padding_mask: torch.Tensor | None,
                        device: torch.device) -> tuple[torch.Tensor | None, bool]:
        """Block-causal mask `(1 or B, 1, query, past + query)` (True = attend), or `(None, is_causal)`."""
        step = self.config.tokens_per_step
        if padding_mask is None:
            if past_length % step == 0 and query_length == step:
                return None, False  # exactly one new block: it sees everything before it and itself
            if step == 1 and past_length == 0:
                return None, True  # plain causal prefill
        positions = torch.arange(past_length, past_length + query_length, device=device)
        mask = self._block_mask(positions, past_length + query_length)  # (1, 1, query, keys)
        if padding_mask is not None:
            mask = mask & padding_mask.bool()[:, None, None, :]
        return mask, False

    def _run(self, embeddings: torch.Tensor, modulations: list[torch.Tensor], head_modulation: torch.Tensor,
             cache: Cache | None, past_length: int, padding_mask: torch.Tensor | None = None,
             logits_to_keep: int = 0) -> torch.Tensor:
        """Blocks + AdaLN head on `(B, L, C)` embeddings at positions `past_length ..`; returns float logits."""
        length = embeddings.shape[1]
        hidden_states = embeddings + self.position_embedding[past_length : past_length + length].to(embeddings.dtype)
        mask, is_causal = self._attention_mask(length, past_length, padding_mask, embeddings.device)
        return self._blocks_and_head(hidden_states, modulations, head_modulation, mask, is_causal, cache,
                                     logits_to_keep)

    def _blocks_and_head(self, hidden_states: torch.Tensor, modulations: list[torch.Tensor],
                         head_modulation: torch.Tensor, mask: torch.Tensor | None, is_causal: bool,
                         cache: Cache | SpectralARStaticCache | None, logits_to_keep: int = 0) -> torch.Tensor:
        for layer, modulation in zip(self.layers, modulations):
            hidden_states = layer(hidden_states, modulation, mask, is_causal, cache)
        if logits_to_keep:
            hidden_states = hidden_states[:, -logits_to_keep:]
        scale, shift = head_modulation.unsqueeze(1).unbind(2)
        return self.lm_head(self.head_norm(hidden_states) * (1 + scale) + shift).float()

    def _static_forward(self, embeddings: torch.Tensor, positions: torch.LongTensor, mask: torch.Tensor | None,
                        modulations: list[torch.Tensor], head_modulation: torch.Tensor,
                        cache: SpectralARStaticCache) -> torch.Tensor:
        """The forward of `sample()`: `(R, q, C)` embeddings at sequence positions `positions` `(q,)` (on the model's
        device; also `cache.write_positions`) attend over `cache.attended_length` keys under `mask`
        `(1, 1, q, keys)` (True = attend; `None`: all). Returns `(R, q, vocab_size)` float logits."""
        hidden_states = embeddings + self.position_embedding.index_select(0, positions).to(embeddings.dtype)
        return self._blocks_and_head(hidden_states, modulations, head_modulation, mask, False, cache)

    def _start_embeddings(self, class_labels: torch.LongTensor) -> torch.Tensor:
        """`(B, k, C)`: the class embedding at each position of the start block (positions are added later)."""
        embedding = self.class_embedding(class_labels).unsqueeze(1)
        return embedding.expand(-1, self.config.tokens_per_step, -1)

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        class_labels: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        return_dict: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> SpectralARCausalLMOutput | tuple:
        """Logits of the next codes.

        Args:
            input_ids: `(B, L)` codes in `[0, vocab_size)`. Without a cache the start block is prepended from
                `class_labels`, so the model input is `[start, codes[:, : N - k]]` and the logits have
                `min(L + k, N)` positions (`L = 0` scores the first step only). A sequence may instead begin with a
                start token (`start_token_ids`, `tokens_per_step = 1` only), as `generate()` does.
            class_labels: `(B,)` class ids; `num_classes` is the null (unconditional) class. Required for a new
                sequence that does not begin with a start token; later cached calls reuse the sequence's labels.
                In training mode labels are replaced by the null class with probability `class_dropout_prob`.
            attention_mask: optional `(B, past + L)` padding mask (1 = keep).
            cache: a [`Cache`] from a previous call (created when `use_cache` and none is given).
            past_key_values: the same, under the name transformers < 5.24 used (give one of the two).
            labels: `(B, M)` target codes; the loss is the mean cross-entropy of `logits[:, :M]` against them, i.e.
                over all `M = N` tokens when `labels` are the image's codes.
            logits_to_keep: if > 0, only the last `logits_to_keep` positions are scored.

        Returns:
            [`SpectralARCausalLMOutput`] with `loss`, `logits` `(B, positions, vocab_size)` (float32), the cache
            (under the installed transformers' field name: `cache`, or `past_key_values` before 5.24) and the
            `class_labels` used.
        """
        config = self.config
        if inputs_embeds is not None:
            raise ValueError("inputs_embeds is not supported: pass input_ids (codes or start tokens) and class_labels.")
        if input_ids is None:
            raise ValueError("input_ids is required (codes, or start_token_ids(class_labels) to begin a sequence).")
        self._check_codes(input_ids, "input_ids", values=False)
        unexpected = sorted(k for k, v in kwargs.items() if v is not None and v is not False)
        if unexpected:
            raise ValueError(f"SpectralARForCausalLM.forward does not support {unexpected}.")
        use_cache = config.use_cache if use_cache is None else use_cache
        return_dict = config.return_dict if return_dict is None else return_dict
        if past_key_values is not None:
            if cache is not None and cache is not past_key_values:
                raise ValueError("Got both cache and past_key_values; pass the cache once, as cache=.")
            cache = past_key_values
        if use_cache and cache is None:
            cache = DynamicCache(config=config)
        past_length = cache.get_seq_length() if cache is not None else 0
        batch = input_ids.shape[0]

        if past_length == 0:
            embeddings, class_labels = self._embed_new_sequence(input_ids, class_labels)
            if cache is not None:
                setattr(cache, _CACHE_CLASS_ATTRIBUTE, class_labels)
        else:
            self._check_codes(input_ids)
            if class_labels is None:
                class_labels = getattr(cache, _CACHE_CLASS_ATTRIBUTE, None)
                if class_labels is None:
                    raise ValueError("class_labels is required to continue a sequence from a cache that did not "
                                     "record them.")
            else:
                class_labels = self._check_class_labels(class_labels, allow_null=True)
            embeddings = self.token_embedding(input_ids)
        if class_labels.shape[0] != batch:
            raise ValueError(f"class_labels has {class_labels.shape[0]} entries for a batch of {batch} sequences.")
        if past_length + embeddings.shape[1] > config.num_image_tokens:
            raise ValueError(f"The sequence would exceed num_image_tokens = {config.num_image_tokens} positions "
                             f"(cache {past_length} + {embeddings.shape[1]} new).")

        padding_mask = None
        if attention_mask is not None:
            self._check_attention_mask(attention_mask, batch, past_length + embeddings.shape[1])
        if attention_mask is not None and not bool(attention_mask.all()):
            padding_mask = attention_mask[:, -(past_length + embeddings.shape[1]):]
        modulations, head_modulation = self._condition(class_labels)
        logits = self._run(embeddings, modulations, head_modulation, cache, past_length, padding_mask, logits_to_keep)

        loss = None
        if labels is not None:
            self._check_codes(labels, "labels")
            if labels.shape[0] != batch:
                raise ValueError(f"labels has {labels.shape[0]} rows for a batch of {batch} sequences.")
            if labels.shape[1] > logits.shape[1]:
                raise ValueError(f"labels has {labels.shape[1]} positions but only {logits.shape[1]} are predicted.")
            loss = F.cross_entropy(logits[:, : labels.shape[1]].reshape(-1, config.vocab_size), labels.reshape(-1))
        output = SpectralARCausalLMOutput(loss=loss, logits=logits, class_labels=class_labels,
                                          **{_CACHE_OUTPUT_FIELD: cache if use_cache else None})
        return output if return_dict else output.to_tuple()

    @staticmethod
    def _check_attention_mask(attention_mask, batch: int, length: int) -> None:
        """A `(B, >= length)` padding mask (no sync: shapes only)."""
        if (not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2
                or attention_mask.shape[0] != batch or attention_mask.shape[1] < length):
            shape = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else \
                type(attention_mask).__name__
            raise ValueError(f"attention_mask must be a (B, positions) padding mask (1 = keep) with B = {batch} and at "
                             f"least {length} positions (cache + new), got {shape}.")

    def _check_codes(self, codes: torch.Tensor, name: str = "codes", values: bool = True) -> None:
        """A `(B, L)` integer tensor; with `values`, every entry in `[0, vocab_size)` (one sync)."""
        if not isinstance(codes, torch.Tensor) or codes.dim() != 2:
            raise ValueError(f"{name} must be a (B, L) integer tensor, got "
                             f"{tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__}"
                             + ("; add the batch dimension with `x.unsqueeze(0)`." if getattr(codes, "ndim", 0) == 1
                                else "."))
        if torch.is_floating_point(codes) or codes.dtype == torch.bool or codes.is_complex():
            raise ValueError(f"{name} must hold integer codes, got dtype {codes.dtype}; use `x.long()`.")
        if values and codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.config.vocab_size):
            raise ValueError(
                f"{'' if name == 'codes' else name + ': '}codes must lie in [0, {self.config.vocab_size}) (the "
                f"vocabulary = the tokenizer's codebook), got "
                f"values in [{int(codes.min())}, {int(codes.max())}]"
                + ("; -100 ('ignore') labels are not supported: every code is a target." if int(codes.min()) == -100
                   else ".")
            )

    def _embed_new_sequence(self, input_ids: torch.LongTensor, class_labels) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of `[start block; codes]` for a sequence starting at position 0, and its class labels."""
        config = self.config
        first = input_ids[:, 0] if input_ids.shape[1] else input_ids.new_zeros(input_ids.shape[0])
        starts = (first >= config.start_token_offset) & (input_ids.shape[1] > 0)
        last_start = config.start_token_offset + config.null_class_id
        if bool(starts.any()) and (class_labels is not None or int(first.max()) > last_start):
            # ids >= vocab_size where codes are expected (class_labels given), or beyond every start token
            self._check_codes(input_ids, "input_ids")
        if bool(starts.any()):
            if not bool(starts.all()):
                raise ValueError(
                    f"codes must lie in [0, {config.vocab_size}) (the vocabulary = the tokenizer's codebook); ids >= "
                    f"{config.vocab_size} are start tokens and may only begin every row (see start_token_ids)."
                )
            if config.tokens_per_step != 1:
                raise ValueError("Start tokens in input_ids need tokens_per_step = 1; pass codes and class_labels.")
            start_labels = self._check_class_labels(first - config.start_token_offset, allow_null=True)
            if class_labels is not None and not torch.equal(self._check_class_labels(class_labels, True),
                                                            start_labels):
                raise ValueError("class_labels disagree with the start tokens at the beginning of input_ids.")
            class_labels, codes = start_labels, input_ids[:, 1:]
        else:
            if class_labels is None:
                raise ValueError(
                    f"class_labels is required for a new sequence (use {config.null_class_id} = the null class for "
                    f"unconditional scores), or begin input_ids with start_token_ids(class_labels)."
                )
            class_labels = self._check_class_labels(class_labels, allow_null=True)
            if input_ids.shape[1] > config.num_image_tokens:
                raise ValueError(f"input_ids has {input_ids.shape[1]} codes but an image has num_image_tokens = "
                                 f"{config.num_image_tokens}; pass at most that many (the last one is only a label).")
            codes = input_ids[:, : config.num_image_tokens - config.tokens_per_step]
        if class_labels.shape[0] != input_ids.shape[0]:
            raise ValueError(f"class_labels has {class_labels.shape[0]} entries for a batch of {input_ids.shape[0]} "
                             f"sequences; pass one class id per row.")
        self._check_codes(codes, "input_ids")
        if self.training and config.class_dropout_prob > 0:
            dropped = torch.rand(class_labels.shape, device=class_labels.device) < config.class_dropout_prob
            class_labels = torch.where(dropped, torch.full_like(class_labels, config.null_class_id), class_labels)
        start = self._start_embeddings(class_labels)
        return torch.cat([start, self.token_embedding(codes).to(start.dtype)], dim=1), class_labels

    # ------------------------------------------------------------------ sampling

    def generate(self, inputs: torch.LongTensor | None = None, generation_config=None, **kwargs):
        """transformers' `generate()` (`tokens_per_step = 1`; prompt: `start_token_ids(class_labels)`).

        With `guidance_scale != 1` and no `negative_prompt_ids`, the unconditional prompt defaults to the null class's
        start token (transformers' own default, the last prompt token, would be the conditional class itself).
        """
        config = generation_config if generation_config is not None else self.generation_config
        scale = kwargs.get("guidance_scale", getattr(config, "guidance_scale", None))
        if scale is not None:
            check_number("guidance_scale", scale, hint="1.0 = no guidance")
        if scale not in (None, 1, 1.0) and kwargs.get("negative_prompt_ids") is None and inputs is not None:
            null = torch.full((inputs.shape[0],), self.config.null_class_id, device=inputs.device)
            kwargs["negative_prompt_ids"] = self.start_token_ids(null)
        return super().generate(inputs, generation_config, **kwargs)

    @apply_forward_hook
    @torch.no_grad()
    def sample(
        self,
        class_labels: torch.Tensor | list[int],
        guidance_scale: float = 1.0,
        guidance_schedule: str = "constant",
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        num_tokens: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        prefix_codes: torch.LongTensor | None = None,
        callback: Callable[[int, torch.LongTensor], None] | None = None,
        compile_config: bool | CompileConfig | None = None,
        interrupt: Callable[[], bool] | None = None,
    ) -> torch.LongTensor:
        """Sample codes coarse to fine with one KV cache.

        Args:
            class_labels: `(B,)` class ids in `[0, num_classes)` (or the null class `num_classes` for unconditional
                samples).
            guidance_scale: classifier-free guidance `w`; logits = `w * cond - (w - 1) * uncond`, i.e. VAR's
                `(1 + t) * cond - t * uncond` with `t = w - 1` (VAR's `cfg=1.5` is `guidance_scale=2.5`). `1.0` is
                the identity (plain conditional sampling). Conditional and null-class rows run as one batch.
            guidance_schedule: `"constant"`, or `"linear"`: `t` ramps from 0 at the first step to `w - 1` at the
                last step of a full-length sequence (VAR).
            temperature, top_k, top_p: sampling filters (transformers' logits warpers); `top_k=1` is greedy,
                `top_k=0` / `None` and `top_p=1.0` / `None` filter nothing.
            num_tokens: stop after this many codes (truncated generation, Table 3); a multiple of
                `tokens_per_step`, at most `num_image_tokens`. Default: all.
            generator: `torch.Generator`, or a list of `B` of them (one per image, diffusers' convention), for
                reproducible samples. With a list, row `b` draws its uniform numbers from generator `b` only (a
                `(1, tokens_per_step)` draw per step), so an image does not depend on the rest of the batch or on
                how images are batched; the null-class rows of CFG draw nothing. A list of one generator samples
                exactly what that generator alone does.
            prefix_codes: `(B, m)` codes to keep as the first `m` codes (a multiple of `tokens_per_step`); sampling
                completes the rest (spectral completion, e.g. super-resolution).
            callback: called as `callback(step, codes_so_far)` after each sampled step.
            interrupt: called after each step (after `callback`); when it returns True, sampling stops there and
                the codes so far are returned (a pipeline's `interrupt`, set from its step callback).
            compile_config: run the per-step forward through `torch.compile` (same codes as eager for a fixed seed, up
                to float rounding): `True` compiles one static-shape graph (`fullgraph`, CUDA graphs on CUDA), a
                `transformers.CompileConfig` sets backend / mode / options, `False` runs eagerly, and `None` uses
                `generation_config.compile_config` (eager when unset). The first call per batch size compiles
                (seconds to a minute); later calls reuse the graph.

        Returns:
            `(B, num_tokens)` int64 codes (starting with `prefix_codes` when given); fewer when interrupted.
        """
        config = self.config
        labels = self._check_class_labels(class_labels, allow_null=True)
        num_tokens = config.num_image_tokens if num_tokens is None else check_int("num_tokens", num_tokens)
        guidance_scale = check_number("guidance_scale", guidance_scale, low=0.0, low_open=True,
                                      hint="1.0 = no guidance, > 1 guides towards the class; 0 or less would "
                                           "ignore or invert the condition")
        check_generator(generator, labels.shape[0])
        check_callable("callback", callback)
        check_callable("interrupt", interrupt)
        step_size = config.tokens_per_step
        if not 1 <= num_tokens <= config.num_image_tokens or num_tokens % step_size != 0:
            raise ValueError(
                f"num_tokens must be a multiple of tokens_per_step = {step_size} in [{step_size}, "
                f"{config.num_image_tokens}], got {num_tokens}."
            )
        if guidance_schedule not in GUIDANCE_SCHEDULES:
            raise ValueError(f"guidance_schedule must be one of {GUIDANCE_SCHEDULES}, got {guidance_schedule!r}.")
        use_cfg = guidance_scale != 1.0
        if use_cfg and not config.has_null_class:
            raise ValueError("This model was trained without class dropout (class_dropout_prob = 0), so it has no "
                             "null class for classifier-free guidance; use guidance_scale=1.0.")
        warpers = _logits_warpers(temperature, top_k, top_p)
        batch = labels.shape[0]
        codes = labels.new_zeros(batch, 0)
        if prefix_codes is not None:
            codes = self._check_prefix(prefix_codes, batch, num_tokens)
            if codes.shape[1] == num_tokens:
                return codes

        rows = torch.cat([labels, torch.full_like(labels, config.null_class_id)]) if use_cfg else labels
        modulations, head_modulation = self._condition(rows, precompute=True)  # once per sequence, for every step
        # The first forward covers the start block and any given prefix; later ones one step of new codes each.
        embeddings = torch.cat([self._start_embeddings(rows), self.token_embedding(_rows_for(codes, use_cfg))], 1)
        compiled = self._compiled_forward(compile_config)
        cache = self._sampling_cache(rows.shape[0], num_tokens, self._activation_dtype(embeddings.dtype),
                                     reuse=compiled is not None)
        positions = torch.arange(embeddings.shape[1], device=self.device)
        while codes.shape[1] < num_tokens:
            step = codes.shape[1] // step_size
            logits = self._sampling_step(embeddings, positions, modulations, head_modulation, cache, compiled)
            logits = logits[:, -step_size:]  # (R, k, V): the next step's codes
            if use_cfg:
                ramp = 1.0 if guidance_schedule == "constant" else step / max(config.num_steps - 1, 1)
                strength = (guidance_scale - 1.0) * ramp
                conditional, unconditional = logits.chunk(2)
                logits = (1.0 + strength) * conditional - strength * unconditional
            next_codes = _sample_from_logits(logits, warpers, generator)  # (B, k)
            codes = torch.cat([codes, next_codes], dim=1)
            if callback is not None:
                callback(step, codes)
            if interrupt is not None and interrupt():
                break
            embeddings = self.token_embedding(_rows_for(next_codes, use_cfg))
            positions = positions[-step_size:] + step_size
        return codes

    def _activation_dtype(self, weight_dtype: torch.dtype) -> torch.dtype:
        """The dtype of the attention keys and values: autocast's (e.g. bf16 under `accelerate --mixed_precision bf16`)
        when it is on for the model's device, else the weights'."""
        device_type = self.device.type
        return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else weight_dtype

    def _sampling_step(self, embeddings: torch.Tensor, positions: torch.LongTensor, modulations: list[torch.Tensor],
                       head_modulation: torch.Tensor, cache: SpectralARStaticCache,
                       compiled: Callable | None) -> torch.Tensor:
        """One forward of `sample()` over `(R, q, C)` embeddings at `positions` `(q,)`. Compiled (when given) for a
        one-step input: the whole cache buffer under a mask, one shape for every step. Eager: only the written
        prefix, where a one-step input needs no mask (a block sees all earlier blocks and itself); a longer prefix
        prefill always runs eagerly."""
        step_size = self.config.tokens_per_step
        length = embeddings.shape[1]
        cache.write_positions = positions
        if compiled is not None and length == step_size:
            cache.attended_length = cache.max_length
            mask = self._block_mask(positions, cache.max_length)
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs are consumed
            try:
                logits = compiled(self, embeddings, positions, mask, modulations, head_modulation, cache)
            except torch._dynamo.exc.FailOnRecompileLimitHit as error:
                raise RuntimeError(
                    f"Compiled sampling needed more than torch._dynamo.config.recompile_limit = "
                    f"{torch._dynamo.config.recompile_limit} graphs (one per model, batch size and length); raise "
                    f"that limit, call torch._dynamo.reset(), or sample eagerly with compile_config=False."
                ) from error
        else:
            cache.attended_length = cache.length + length
            mask = None if length == step_size else self._block_mask(positions, cache.attended_length)
            logits = self._static_forward(embeddings, positions, mask, modulations, head_modulation, cache)
        cache.length += length
        return logits

    def _block_mask(self, positions: torch.LongTensor, num_keys: int) -> torch.Tensor:
        """`(1, 1, q, num_keys)` block-causal mask (True = attend) of queries at `positions` over keys `0 ..`."""
        step_size = self.config.tokens_per_step
        key_blocks = torch.arange(num_keys, device=positions.device) // step_size
        return (key_blocks.unsqueeze(0) <= (positions // step_size).unsqueeze(1))[None, None]

    def _sampling_cache(self, rows: int, max_length: int, dtype: torch.dtype, reuse: bool) -> SpectralARStaticCache:
        """A fresh static cache, or (compiled sampling) the one kept for these shapes: a compiled graph, and CUDA
        graphs in particular, are specialised to the cache buffers' addresses."""
        if not reuse:
            return SpectralARStaticCache(self.config, rows, max_length, dtype, self.device)
        kept = self.__dict__.setdefault("_compiled_sampling_caches", {})
        key = (rows, max_length, dtype, self.device)
        if key not in kept:
            cache = SpectralARStaticCache(self.config, rows, max_length, dtype, self.device)
            for buffer in cache.keys + cache.values:
                torch._dynamo.mark_static_address(buffer)
            kept[key] = cache
        kept[key].length = 0
        return kept[key]

    def _compiled_forward(self, compile_config: bool | CompileConfig | None) -> Callable | None:
        """`_static_forward` compiled as `compile_config` says (see `sample`), or `None` for eager sampling."""
        if compile_config is None:
            compile_config = getattr(self.generation_config, "compile_config", None)
        if compile_config is None or compile_config is False:
            return None
        if compile_config is True:
            mode = "reduce-overhead" if self.device.type == "cuda" else "default"  # CUDA graphs where there are any
            compile_config = CompileConfig(fullgraph=True, dynamic=False, mode=mode)
        if not isinstance(compile_config, CompileConfig):
            raise TypeError(f"compile_config must be True, False, None or a transformers.CompileConfig, got "
                            f"{type(compile_config).__name__}.")
        if compile_config.mode is not None and compile_config.options is not None:
            raise ValueError("compile_config sets both mode and options, but torch.compile takes only one; set "
                             "mode=None to pass options.")
        settings = dict(fullgraph=compile_config.fullgraph, dynamic=compile_config.dynamic,
                        backend=compile_config.backend, mode=compile_config.mode, options=compile_config.options)
        key = tuple((name, repr(value)) for name, value in settings.items())
        if key not in _COMPILED_FORWARDS:
            _COMPILED_FORWARDS[key] = torch.compile(SpectralARForCausalLM._static_forward, **settings)
        return _COMPILED_FORWARDS[key]

    def _check_prefix(self, prefix_codes: torch.Tensor, batch: int, num_tokens: int) -> torch.LongTensor:
        step_size = self.config.tokens_per_step
        if (not isinstance(prefix_codes, torch.Tensor) or prefix_codes.dim() != 2 or prefix_codes.shape[0] != batch
                or torch.is_floating_point(prefix_codes)):
            if not isinstance(prefix_codes, torch.Tensor):
                raise ValueError(f"prefix_codes must be a ({batch}, m) integer tensor, got "
                                 f"{type(prefix_codes).__name__}; use torch.tensor(...).")
            raise ValueError(f"prefix_codes must be a ({batch}, m) integer tensor, got {prefix_codes.dtype} "
                             f"{tuple(prefix_codes.shape)}.")
        if prefix_codes.shape[1] % step_size != 0 or prefix_codes.shape[1] > num_tokens:
            raise ValueError(f"prefix_codes has {prefix_codes.shape[1]} codes; it must be a multiple of "
                             f"tokens_per_step = {step_size} and at most num_tokens = {num_tokens}.")
        self._check_codes(prefix_codes)
        return prefix_codes.to(self.device).long()


def _rows_for(codes: torch.Tensor, use_cfg: bool) -> torch.Tensor:
    """The conditional rows, followed by the same codes for the null-class rows when guidance is on."""
    return torch.cat([codes, codes]) if use_cfg else codes


class _UnsortedTopKLogitsWarper(TopKLogitsWarper):
    """transformers' top-k warper with the k-th largest score found by an unsorted `topk` (about 3x faster on CPU
    for k in the hundreds); same result."""

    def __call__(self, input_ids: torch.LongTensor | None, scores: torch.FloatTensor) -> torch.FloatTensor:
        top_k = min(self.top_k, scores.size(-1))
        threshold = torch.topk(scores, top_k, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)
        return scores.masked_fill(scores < threshold, self.filter_value)


def _logits_warpers(temperature: float, top_k: int | None, top_p: float | None) -> LogitsProcessorList:
    temperature = check_number("temperature", temperature, low=0.0, low_open=True,
                               hint="temperature must be > 0; use top_k=1 for greedy decoding")
    if top_k is not None:
        try:
            top_k = check_int("top_k", top_k, low=0)
        except (TypeError, ValueError) as error:
            raise ValueError(f"top_k must be an int >= 0 (0 = no top-k filtering, transformers' convention) or None, "
                             f"got {top_k!r}.") from error
    if top_p is not None:
        top_p = check_number("top_p", top_p, low=0.0, high=1.0, low_open=True,
                             hint="top_p must lie in (0, 1] or be None (no nucleus filtering)")
    warpers = LogitsProcessorList()
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k:  # None or 0: no top-k filtering
        warpers.append(_UnsortedTopKLogitsWarper(top_k))
    if top_p is not None and top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    return warpers


def _sample_from_logits(scores: torch.Tensor, warpers: LogitsProcessorList,
                        generator: torch.Generator | list[torch.Generator] | None) -> torch.LongTensor:
    """Filter `(B, k, V)` (or `(R, V)`) scores with the warpers and draw one code per row by inverting the CDF with
    one uniform number per row (vectorised; ~30x cheaper on CPU than `torch.multinomial`, which draws V exponentials
    per row). Returns `(B, k)` (or `(R,)`) codes.

    The uniform numbers are `rand_rows(scores.shape[:-1], generator)`: one generator draws all `B * k` at once in
    row-major `(b, j)` order; a list of `B` generators draws `(1, k)` from generator `b` for row `b`."""
    rows = scores.shape[:-1]
    scores = scores.reshape(-1, scores.shape[-1])
    probabilities = warpers(None, scores).softmax(dim=-1)
    cumulative = probabilities.cumsum(dim=-1)
    uniform = rand_rows(tuple(rows), generator, scores.device).reshape(-1, 1) * cumulative[:, -1:]
    codes = torch.searchsorted(cumulative, uniform, right=True).squeeze(1)
    return codes.clamp_(max=scores.shape[-1] - 1).view(rows)
