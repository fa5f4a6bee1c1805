#!/usr/bin/env python
"""Convert a released FAR-B/L/H checkpoint (yuhuUSTC/FAR, `checkpoint-last.pth`) into a `FARTransformer`, or with
`--vae` into a complete `FARPipeline`.

    # MAR's KL-16 VAE first (FAR uses MAR's kl16.ckpt), then the FAR checkpoint with it: a complete pipeline
    python conversion/convert_mar_vae.py --checkpoint pretrained_models/vae/kl16.ckpt --output checkpoints/mar-kl16
    python conversion/convert_far.py --checkpoint pretrained_models/far/far_base/checkpoint-last.pth \
        --model far_base --vae checkpoints/mar-kl16 --output checkpoints/far-b

    from spectralar_hf import FARPipeline
    pipe = FARPipeline.from_pretrained("checkpoints/far-b")
    images = pipe(class_labels=[207, 360]).images          # the paper's sampling defaults are in the config

The official checkpoint is `{"model", "model_ema", "optimizer", "epoch", "scaler", "args"}` (util/misc.py
`save_model`; `args` is the training `argparse.Namespace`). It is read with `torch.load(..., weights_only=True)`
(`argparse.Namespace` is the one class allowed), the EMA weights first (`model_ema`, what the official evaluation
samples with), `model` with `--no-ema`; a flat state dict (`.pth` or `.safetensors`) is read as it is.

The architecture is the preset of `--model` (`far_base` -> `far-b`, `far_large` -> `far-l`, `far_huge` -> `far-h`:
sizes, dropout, the reference sampling defaults) with three sizes read from the weights (the class buffer, from
`encoder_pos_embed_learned`; the diffusion head's depth and width, from `diffloss.net.res_blocks.*` and
`diffloss.net.input_proj`) and `use_mask` from the checkpoint's `args.mask` (the released models were trained
without `--mask`, train.sh; then our sampler runs without its inference mask too; `--mask / --no-mask` override it)
and the class-dropout probability from `args.label_drop_prob`. The other training arguments that shape the model
(`model`, `vae_embed_dim`, `patch_size`, `img_size / vae_stride`, `buffer_size`, `diffloss_d`, `diffloss_w`,
`class_num`) must agree with `--model` and the weights.

What changes between the two layouts (every official key is mapped or is an error; nothing is dropped):

* `class_emb.weight` `(1000, W)` and `fake_latent` `(1, W)` (the class embedding for CFG's unconditional branch) ->
  `class_embedding.weight` `(1001, W)`: the null class is the last row, class id 1000;
* the level input of the head, `diffloss.net.index_cond_embed` (`Linear(1, w)` on the input level `i` as a float,
  0 .. 15), -> the `(F, w)` table `diffusion_head.level_embedding.weight` with row `i = weight[:, 0] * i + bias`
  (computed in float64; exact for the integer levels the official code feeds it);
* names: `z_proj` -> `token_embedding`, `z_proj_ln` -> `encoder_input_norm`, `{encoder,decoder}_blocks.i` ->
  `{encoder,decoder}_layers.i` with timm's `mlp.fc1 / mlp.fc2` -> `mlp.0 / mlp.2` (`norm1 / attn.qkv / attn.proj /
  norm2` keep their names), `{encoder,decoder,diffusion}_pos_embed_learned` -> `*_position_embedding`,
  `decoder_embed` -> `decoder_embedding`; in the head (`diffloss.net` -> `diffusion_head`) `time_embed.mlp.0 / 2` ->
  `time_embedding.linear_1 / 2`, `cond_embed` -> `condition_embedding`, `res_blocks.i.in_ln` -> `blocks.i.norm`
  (`mlp.0 / mlp.2 / adaLN_modulation.1` keep their names); `mask_token`, `encoder_norm`, `decoder_norm`,
  `input_proj`, `final_layer.*` keep theirs.

Unexpected, missing and wrongly shaped keys are named in one error line (exit status 2); every shape is checked
against our model built on the meta device. `--vae DIR` takes a diffusers `AutoencoderKL` folder (e.g. from
`convert_mar_vae.py`) whose latents must be FAR's (16 channels, 16 x 16 for 256 px, scaling factor 0.2325).
`conversion/verify_far.py` checks the result against the official code.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL

from spectralar_hf import FARConfig, FARPipeline, FARTransformer
from spectralar_hf.checkpoint_io import check_new_output_directory, list_names, load_checkpoint_file
from spectralar_hf.models.far.modeling_far import build_noise_scheduler
from spectralar_hf.pipelines.pipeline_far import vae_scale_factor
from spectralar_hf.vae_presets import MAR_KL16_SCALING_FACTOR

# the official constructors (models/far.py) -> our presets of the same sizes
MODEL_PRESETS = {"far_base": "far-b", "far_large": "far-l", "far_huge": "far-h"}
CHECKPOINT_KEYS = ("model_ema", "model")  # EMA first (the official evaluation samples with it), else the raw weights
RAW_KEY = "model"
ARGS_KEY = "args"
LAYOUT_HINT = ("FAR's checkpoint-last.pth is {'model', 'model_ema', 'optimizer', 'epoch', 'scaler', 'args'} "
               "(util/misc.py save_model)")

# the merged keys: our name -> the official keys it is built from
CLASS_EMBEDDING = "class_embedding.weight"
OFFICIAL_CLASS_EMBEDDING, OFFICIAL_NULL_CLASS = "class_emb.weight", "fake_latent"
LEVEL_EMBEDDING = "diffusion_head.level_embedding.weight"
OFFICIAL_LEVEL_WEIGHT = "diffloss.net.index_cond_embed.weight"
OFFICIAL_LEVEL_BIAS = "diffloss.net.index_cond_embed.bias"
MERGED = {CLASS_EMBEDDING: (OFFICIAL_CLASS_EMBEDDING, OFFICIAL_NULL_CLASS),
          LEVEL_EMBEDDING: (OFFICIAL_LEVEL_WEIGHT, OFFICIAL_LEVEL_BIAS)}

# the keys the sizes are read from
OFFICIAL_ENCODER_POSITIONS = "encoder_pos_embed_learned"
OFFICIAL_HEAD_INPUT = "diffloss.net.input_proj.weight"
OFFICIAL_HEAD_BLOCK = re.compile(r"diffloss\.net\.res_blocks\.(\d+)\.")

# (official template, our template): `{i}` is a layer index, `{p}` weight or bias; the first match wins
_TIMM_BLOCK_PARTS = [("norm1", "norm1"), ("attn.qkv", "attn.qkv"), ("attn.proj", "attn.proj"), ("norm2", "norm2"),
                     ("mlp.fc1", "mlp.0"), ("mlp.fc2", "mlp.2")]
_HEAD_PARTS = [("time_embed.mlp.0", "time_embedding.linear_1"), ("time_embed.mlp.2", "time_embedding.linear_2"),
               ("cond_embed", "condition_embedding"), ("input_proj", "input_proj"),
               ("res_blocks.{i}.in_ln", "blocks.{i}.norm"), ("res_blocks.{i}.mlp.0", "blocks.{i}.mlp.0"),
               ("res_blocks.{i}.mlp.2", "blocks.{i}.mlp.2"),
               ("res_blocks.{i}.adaLN_modulation.1", "blocks.{i}.adaLN_modulation.1"),
               ("final_layer.linear", "final_layer.linear"),
               ("final_layer.adaLN_modulation.1", "final_layer.adaLN_modulation.1")]


def _parts(official_prefix: str, our_prefix: str, parts: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """`(official_prefix.part.{p}, our_prefix.part.{p})` for every `(official part, our part)`."""
    return [(f"{official_prefix}.{theirs}.{{p}}", f"{our_prefix}.{ours}.{{p}}") for theirs, ours in parts]


RENAMES: list[tuple[str, str]] = [
    ("z_proj.{p}", "token_embedding.{p}"),
    ("z_proj_ln.{p}", "encoder_input_norm.{p}"),
    ("encoder_pos_embed_learned", "encoder_position_embedding"),
    *_parts("encoder_blocks.{i}", "encoder_layers.{i}", _TIMM_BLOCK_PARTS),
    ("encoder_norm.{p}", "encoder_norm.{p}"),
    ("decoder_embed.{p}", "decoder_embedding.{p}"),
    ("mask_token", "mask_token"),
    ("decoder_pos_embed_learned", "decoder_position_embedding"),
    *_parts("decoder_blocks.{i}", "decoder_layers.{i}", _TIMM_BLOCK_PARTS),
    ("decoder_norm.{p}", "decoder_norm.{p}"),
    ("diffusion_pos_embed_learned", "diffusion_position_embedding"),
    *_parts("diffloss.net", "diffusion_head", _HEAD_PARTS),
]


def _template_regex(template: str) -> re.Pattern:
    pattern = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)")
    return re.compile(pattern)


_RULES = [(_template_regex(theirs), theirs, _template_regex(ours), ours) for theirs, ours in RENAMES]


def official_to_ours(key: str) -> str | None:
    """Our name of an official key that is renamed (not merged), or `None` when no rule maps it."""
    for theirs_regex, _, _, ours in _RULES:
        if match := theirs_regex.fullmatch(key):
            return ours.format(**match.groupdict())
    return None


def ours_to_official(name: str) -> list[str]:
    """The official key(s) our parameter `name` is made from (for the "missing" message)."""
    if name in MERGED:
        return list(MERGED[name])
    for _, theirs, ours_regex, _ in _RULES:
        if match := ours_regex.fullmatch(name):
            return [theirs.format(**match.groupdict())]
    return [name]


# ---------------------------------------------------------------------------------------------------- config


def _arg(args: Any, name: str) -> Any:
    """`args.name` of the checkpoint's training arguments (a Namespace, or a dict), `None` when absent."""
    if args is None:
        return None
    return args.get(name) if isinstance(args, Mapping) else getattr(args, name, None)


def far_config(model: str, state_dict: Mapping[str, torch.Tensor], args: Any = None,
               use_mask: bool | None = None) -> FARConfig:
    """The `FARConfig` of an official checkpoint: the preset of `model` with the class buffer and the head's depth
    and width read from `state_dict`, `use_mask` from `use_mask`, else the checkpoint's `args.mask`, else False (the
    released models), the class-dropout probability from `args.label_drop_prob` and the frequency-aware loss
    weighting from `args.loss_weight` (the released models were trained without it) when present.

    Raises `ValueError` when `model` is unknown or the training arguments contradict `model` or the weights.
    """
    if model not in MODEL_PRESETS:
        raise ValueError(f"--model {model!r} is not one of {sorted(MODEL_PRESETS)}.")
    preset = FARConfig.from_preset(MODEL_PRESETS[model])
    overrides: dict[str, Any] = {}
    positions = state_dict.get(OFFICIAL_ENCODER_POSITIONS)
    if isinstance(positions, torch.Tensor) and positions.dim() == 3 and positions.shape[1] > preset.num_tokens:
        overrides["class_buffer_size"] = positions.shape[1] - preset.num_tokens
    head_blocks = {int(match[1]) for key in state_dict if (match := OFFICIAL_HEAD_BLOCK.match(key))}
    if head_blocks:
        overrides["head_depth"] = max(head_blocks) + 1  # a gap in the indices is then reported as missing keys
    head_input = state_dict.get(OFFICIAL_HEAD_INPUT)
    if isinstance(head_input, torch.Tensor) and head_input.dim() == 2:
        overrides["head_width"] = head_input.shape[0]
    trained_with_mask = _arg(args, "mask")
    overrides["use_mask"] = bool(use_mask if use_mask is not None else trained_with_mask or False)
    label_drop_prob = _arg(args, "label_drop_prob")
    if label_drop_prob is not None:
        overrides["class_dropout_prob"] = float(label_drop_prob)
    loss_weight = _arg(args, "loss_weight")  # FTL: off unless --loss_weight (train.sh leaves it off)
    if loss_weight is not None:
        overrides["loss_weighting"] = bool(loss_weight)

    # the training arguments, where present, must describe the same model
    config = FARConfig.from_preset(MODEL_PRESETS[model], **overrides)
    image_size, vae_stride = _arg(args, "img_size"), _arg(args, "vae_stride")
    checks = [("model", _arg(args, "model"), model),
              ("vae_embed_dim", _arg(args, "vae_embed_dim"), config.latent_channels),
              ("patch_size", _arg(args, "patch_size"), config.patch_size),
              ("img_size // vae_stride", None if image_size is None or vae_stride is None else image_size // vae_stride,
               config.latent_size),
              ("buffer_size", _arg(args, "buffer_size"), config.class_buffer_size),
              ("diffloss_d", _arg(args, "diffloss_d"), config.head_depth),
              ("diffloss_w", _arg(args, "diffloss_w"), config.head_width),
              ("class_num", _arg(args, "class_num"), config.num_classes)]
    contradictions = [f"args.{name} = {given!r} (expected {expected!r})" for name, given, expected in checks
                      if given is not None and given != expected]
    if contradictions:
        raise ValueError(f"The checkpoint's training arguments contradict --model {model} or the sizes of its "
                         f"weights: {'; '.join(contradictions)}; pass the --model it was trained as.")
    return config


def expected_shapes(config: FARConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of `FARTransformer(config)` (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = FARTransformer(config)
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------------- weights


def level_embedding_table(weight: torch.Tensor, bias: torch.Tensor, num_levels: int) -> torch.Tensor:
    """`(F, w)` rows `weight[:, 0] * i + bias` for `i = 0 .. F-1`: the official `Linear(1, w)` of the level value at
    every integer level (float64 arithmetic, float32 result)."""
    levels = torch.arange(num_levels, dtype=torch.float64, device=weight.device).unsqueeze(1)
    return (levels * weight[:, 0].double().unsqueeze(0) + bias.double().unsqueeze(0)).float()


def convert_state_dict(state_dict: Mapping[str, torch.Tensor], config: FARConfig) -> dict[str, torch.Tensor]:
    """Map an official FAR state dict to a `FARTransformer(config)` state dict (float32).

    Raises one `ValueError` naming every unexpected, missing, wrongly shaped and non-float key (nothing is dropped).
    """
    expected = expected_shapes(config)
    converted: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}
    parts: dict[str, torch.Tensor] = {}
    merged_sources = {key for keys in MERGED.values() for key in keys}
    unexpected, wrong = [], []
    for key, tensor in state_dict.items():
        if key in merged_sources:
            parts[key] = tensor
            continue
        name = official_to_ours(key)
        if name is None or name not in expected:  # no rule, or a parameter this config does not have
            unexpected.append(key)
            continue
        converted[name], source[name] = tensor, key

    # the merged keys: shapes of the parts from the shape we need
    classes, width = expected[CLASS_EMBEDDING]
    levels, head_width = expected[LEVEL_EMBEDDING]
    part_shapes = {OFFICIAL_CLASS_EMBEDDING: (classes - 1, width), OFFICIAL_NULL_CLASS: (1, width),
                   OFFICIAL_LEVEL_WEIGHT: (head_width, 1), OFFICIAL_LEVEL_BIAS: (head_width,)}
    wrong += [f"{key} {tuple(tensor.shape)} (expected {part_shapes[key]})" for key, tensor in parts.items()
              if tuple(tensor.shape) != part_shapes[key]]
    fits = {key for key, tensor in parts.items() if tuple(tensor.shape) == part_shapes[key]}
    if {OFFICIAL_CLASS_EMBEDDING, OFFICIAL_NULL_CLASS} <= fits:  # the null class (the official fake latent) last
        converted[CLASS_EMBEDDING] = torch.cat([parts[OFFICIAL_CLASS_EMBEDDING].float(),
                                                parts[OFFICIAL_NULL_CLASS].float()])
        source[CLASS_EMBEDDING] = f"{OFFICIAL_CLASS_EMBEDDING} + {OFFICIAL_NULL_CLASS}"
    if {OFFICIAL_LEVEL_WEIGHT, OFFICIAL_LEVEL_BIAS} <= fits:
        converted[LEVEL_EMBEDDING] = level_embedding_table(parts[OFFICIAL_LEVEL_WEIGHT], parts[OFFICIAL_LEVEL_BIAS],
                                                           levels)
        source[LEVEL_EMBEDDING] = f"{OFFICIAL_LEVEL_WEIGHT} + {OFFICIAL_LEVEL_BIAS}"

    missing = sorted({official for name in set(expected) - set(converted) for official in ours_to_official(name)
                      if official not in state_dict})
    wrong += [f"{source[key]} -> {key} {tuple(converted[key].shape)} (expected {expected[key]})"
              for key in converted if tuple(converted[key].shape) != expected[key]]
    not_float = sorted(key for key, tensor in state_dict.items() if not torch.is_floating_point(tensor))
    if unexpected or missing or wrong or not_float:
        problems = [f"{len(items)} {kind}: {list_names(items)}" for kind, items in (
            ("unexpected official keys", sorted(unexpected)), ("missing", missing),
            ("wrongly shaped", sorted(wrong)), ("not floating point", not_float)) if items]
        raise ValueError(f"The checkpoint does not fit {config.hidden_size}-wide FAR with {config.encoder_layers} + "
                         f"{config.decoder_layers} blocks ({'; '.join(problems)}); is --model the one it was trained "
                         f"as (far_base / far_large / far_huge)?")
    return {key: tensor.float() for key, tensor in converted.items()}


def load_checkpoint(path: str | Path, use_ema: bool = True) -> tuple[dict[str, torch.Tensor], str | None, Any]:
    """`(state_dict, entry, args)` of an official FAR checkpoint: the `model_ema` entry (else `model`; only `model`
    with `use_ema=False`) and the training `args`, or a flat state dict (`entry` and `args` `None`)."""
    loaded = load_checkpoint_file(path, key=CHECKPOINT_KEYS if use_ema else RAW_KEY, layout_hint=LAYOUT_HINT,
                                  safe_globals=[argparse.Namespace], allow_flat=True)
    return loaded.state_dict, loaded.entry, loaded.extras.get(ARGS_KEY)


def load_vae(path: str | Path, config: FARConfig) -> AutoencoderKL:
    """The diffusers `AutoencoderKL` in the folder `path`, checked to make the latents `config` was trained on."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ValueError(f"--vae {str(path)!r} is not a diffusers AutoencoderKL folder (no config.json); convert "
                         f"MAR's kl16.ckpt with conversion/convert_mar_vae.py.")
    try:
        vae = AutoencoderKL.from_pretrained(path)
    except (OSError, ValueError, TypeError, KeyError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"--vae {str(path)!r} is not a loadable diffusers AutoencoderKL folder ({first}).") from None
    vae_config = vae.config
    sample_size = vae_config.sample_size
    sample_size = sample_size[0] if isinstance(sample_size, (list, tuple)) else sample_size
    factor = vae_scale_factor(vae)
    problems = []
    if vae_config.latent_channels != config.latent_channels:
        problems.append(f"{vae_config.latent_channels} latent channels (FAR: {config.latent_channels})")
    if sample_size // factor != config.latent_size:
        problems.append(f"{sample_size} px -> {sample_size // factor} x {sample_size // factor} latents "
                        f"(downsampling {factor}; FAR: {config.latent_size} x {config.latent_size})")
    if not math.isclose(vae_config.scaling_factor, MAR_KL16_SCALING_FACTOR, rel_tol=1e-6):
        problems.append(f"scaling_factor {vae_config.scaling_factor:g} (FAR's latents are KL-16's times "
                        f"{MAR_KL16_SCALING_FACTOR})")
    if problems:
        raise ValueError(f"--vae {str(path)!r} is not the VAE FAR was trained on: {'; '.join(problems)}; use MAR's "
                         f"KL-16 (conversion/convert_mar_vae.py).")
    return vae.eval()


def convert(checkpoint: str | Path, model: str, output: str | Path, vae: str | Path | None = None,
            use_ema: bool = True, use_mask: bool | None = None,
            overwrite: bool = False) -> tuple[FARTransformer, FARPipeline | None, str | None]:
    """Read `checkpoint`, build the `FARTransformer` of `model` with its weights and `save_pretrained(output)`; with
    `vae` (a diffusers `AutoencoderKL` folder) save a complete `FARPipeline` instead. Returns the transformer, the
    pipeline (or `None`) and the checkpoint entry the weights came from."""
    output = check_new_output_directory(output, overwrite)
    if model not in MODEL_PRESETS:
        raise ValueError(f"--model {model!r} is not one of {sorted(MODEL_PRESETS)}.")
    autoencoder = None if vae is None else load_vae(vae, FARConfig.from_preset(MODEL_PRESETS[model]))
    state_dict, entry, args = load_checkpoint(checkpoint, use_ema)
    config = far_config(model, state_dict, args, use_mask)
    weights = convert_state_dict(state_dict, config)
    with torch.device("meta"):  # no random initialisation: the converted tensors become the parameters
        transformer = FARTransformer(config)
    transformer.load_state_dict(weights, strict=True, assign=True)
    transformer.eval()
    if autoencoder is None:
        transformer.save_pretrained(output)
        return transformer, None, entry
    pipeline = FARPipeline(vae=autoencoder, transformer=transformer, scheduler=build_noise_scheduler(config))
    pipeline.save_pretrained(output)
    return transformer, pipeline, entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True,
                        help="the official checkpoint (checkpoint-last.pth), or a flat state dict (.pth/.safetensors)")
    parser.add_argument("--model", required=True, choices=sorted(MODEL_PRESETS),
                        help="the official constructor it was trained with (main_far.py --model)")
    parser.add_argument("--output", required=True,
                        help="the directory to write (a FARTransformer; a FARPipeline with --vae)")
    parser.add_argument("--vae", default=None,
                        help="a diffusers AutoencoderKL folder (MAR's KL-16, from convert_mar_vae.py): save a complete "
                             "FARPipeline")
    parser.add_argument("--no-ema", dest="use_ema", action="store_false",
                        help="convert the raw weights ('model') instead of the EMA ones ('model_ema')")
    parser.add_argument("--mask", dest="use_mask", action=argparse.BooleanOptionalAction, default=None,
                        help="whether the model was trained with masking (default: the checkpoint's args.mask, else "
                             "no: the released models were trained without --mask)")
    parser.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty directory")
    args = parser.parse_args(argv)
    try:
        transformer, pipeline, entry = convert(args.checkpoint, args.model, args.output, args.vae, args.use_ema,
                                               args.use_mask, args.overwrite)
    except (FileNotFoundError, ValueError) as error:
        print(f"convert_far: error: {error}", file=sys.stderr)
        return 2
    output = Path(args.output).resolve()
    config = transformer.config
    weights = {"model_ema": "EMA weights ('model_ema')", "model": "raw weights ('model')"}.get(
        entry, "a flat state dict")
    what = "FARPipeline (vae, transformer, scheduler)" if pipeline is not None else "FARTransformer"
    loader = "FARPipeline" if pipeline is not None else "FARTransformer"
    print(f"wrote {output} ({', '.join(sorted(p.name for p in output.iterdir()))}): {what}, FAR {args.model} "
          f"({MODEL_PRESETS[args.model]}) from {args.checkpoint}, {weights}, "
          f"{transformer.num_parameters() / 1e6:.2f}M transformer parameters; class buffer "
          f"{config.class_buffer_size}, head {config.head_depth} x {config.head_width}, use_mask {config.use_mask} "
          f"(inference mask {config.inference_mask_schedule!r})\n"
          f"load it with {loader}.from_pretrained({str(output)!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
