#!/usr/bin/env python
"""Convert MAR's KL-16 VAE (LTH14/mar, `pretrained_models/vae/kl16.ckpt`) into a diffusers `AutoencoderKL` directory.

    # the file MAR's util/download.py fetches (MAR and FAR both use it)
    python conversion/convert_mar_vae.py --checkpoint pretrained_models/vae/kl16.ckpt --output checkpoints/mar-kl16

    from diffusers import AutoencoderKL
    vae = AutoencoderKL.from_pretrained("checkpoints/mar-kl16")
    latents = vae.encode(images).latent_dist.sample() * vae.config.scaling_factor    # images in [-1, 1]
    images_back = vae.decode(latents / vae.config.scaling_factor).sample

MAR builds the VAE as `AutoencoderKL(embed_dim=16, ch_mult=(1, 1, 2, 2, 4))` (models/vae.py, LDM's KL autoencoder)
and loads `torch.load(path)["model"]`; the same entry is read here, with `torch.load(..., weights_only=True)` (or from
a `.safetensors` file holding the flat state dict). The architecture is the `kl-16` preset of
`spectralar_hf.vae_presets` (66,456,019 parameters, `scaling_factor` 0.2325, MAR's), and the weights are unchanged;
only names (and the attention projections' shapes) change. With L = 5 stages:

* `{encoder,decoder}.conv_in / conv_out`, `quant_conv`, `post_quant_conv` keep their names; `norm_out` ->
  `conv_norm_out`;
* `encoder.down.i.block.j` -> `encoder.down_blocks.i.resnets.j`, `encoder.down.i.downsample.conv` ->
  `encoder.down_blocks.i.downsamplers.0.conv` (both pad (0, 1, 0, 1) and then convolve with stride 2, no padding);
* the decoder's stages run the other way: `decoder.up.i.block.j` -> `decoder.up_blocks.(L-1-i).resnets.j`,
  `decoder.up.i.upsample.conv` -> `decoder.up_blocks.(L-1-i).upsamplers.0.conv` (nearest x2, then the 3x3 conv);
* in a residual block `norm1 / conv1 / norm2 / conv2` keep their names and `nin_shortcut` -> `conv_shortcut`;
* `mid.block_1 / attn_1 / block_2` -> `mid_block.resnets.0 / attentions.0 / resnets.1`;
* attention blocks (`mid.attn_1`, `encoder.down.4.attn.j`): `norm` -> `group_norm`, the 1x1 convolutions
  `q / k / v / proj_out` -> the linears `to_q / to_k / to_v / to_out.0` (weights `(C, C, 1, 1)` -> `(C, C)`).

Every official key is mapped or is an error: unmapped, missing and wrongly shaped keys are named in one error line
and the script exits with status 2. `--config` takes `AutoencoderKL` fields over the preset (a JSON file such as a
saved `config.json`) for MAR-style VAEs of other sizes. `conversion/verify_mar_vae.py` checks the result against the
official code.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL

from spectralar_hf.checkpoint_io import check_new_output_directory, list_names, load_state_dict_file
from spectralar_hf.vae_presets import VAE_PRESETS

PRESET = "kl-16"
CHECKPOINT_KEY = "model"  # MAR's init_from_ckpt reads torch.load(path)["model"]
LAYOUT_HINT = ("MAR's kl16.ckpt is {'model': state_dict} (models/vae.py init_from_ckpt reads "
               "torch.load(path)['model'])")
CONFIG_METADATA = ("_class_name", "_diffusers_version", "_name_or_path", "_use_default_values")

Transform = Callable[[torch.Tensor], torch.Tensor]

# LDM name -> diffusers name of the parts of a residual block and of an attention block.
RESNET_PARTS = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
                "nin_shortcut": "conv_shortcut"}
ATTENTION_PARTS = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


# ---------------------------------------------------------------------------------------------------- config


def vae_config(config: str | Path | None = None) -> dict[str, Any]:
    """`AutoencoderKL` keyword arguments: the `kl-16` preset, with the fields of the JSON file `config` over it."""
    fields = copy.deepcopy(VAE_PRESETS[PRESET])
    if config is None:
        return fields
    path = Path(config)
    if not path.is_file():
        raise ValueError(f"--config {str(path)!r} is not a file (a JSON object of AutoencoderKL fields).")
    try:
        overrides = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"--config {path} is not JSON ({error}).") from None
    if not isinstance(overrides, dict):
        raise ValueError(f"--config {path} holds a {type(overrides).__name__}, not an object of AutoencoderKL fields.")
    fields.update({key: value for key, value in overrides.items() if key not in CONFIG_METADATA})
    return fields


def expected_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of `AutoencoderKL(**config)` (built on the meta device: no memory)."""
    try:
        with torch.device("meta"):
            model = AutoencoderKL(**config)
    except (TypeError, ValueError, KeyError, AttributeError) as error:
        raise ValueError(f"AutoencoderKL cannot be built from this config ({type(error).__name__}: {error}); check "
                         f"--config.") from None
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------------- keys


def _squeeze_1x1(tensor: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution's `(out, in, 1, 1)` weight as a linear `(out, in)` weight."""
    return tensor.reshape(tensor.shape[0], -1) if tensor.dim() == 4 else tensor


def _block_part(prefix: str, kind: str, part: str, parameter: str) -> tuple[str, Transform | None] | None:
    """`prefix.<our part>.parameter` for a part of an LDM residual (`kind` "resnet") or attention block."""
    if kind == "resnet":
        name = RESNET_PARTS.get(part)
        transform = None
    else:
        name = ATTENTION_PARTS.get(part)
        transform = _squeeze_1x1 if part != "norm" and parameter == "weight" else None
    return None if name is None else (f"{prefix}.{name}.{parameter}", transform)


def official_to_ours(key: str, num_stages: int) -> tuple[str, Transform | None] | None:
    """Our name (and value transform) for a key of MAR's VAE state dict, or `None` when no rule maps it.

    `num_stages` is the number of resolutions (`len(ch_mult)`); the decoder's `up.i` is our `up_blocks.(L-1-i)`.
    """
    if match := re.fullmatch(r"(encoder|decoder)\.(conv_in|conv_out)\.(weight|bias)", key):
        return key, None
    if match := re.fullmatch(r"(quant_conv|post_quant_conv)\.(weight|bias)", key):
        return key, None
    if match := re.fullmatch(r"(encoder|decoder)\.norm_out\.(weight|bias)", key):
        return f"{match[1]}.conv_norm_out.{match[2]}", None
    if match := re.fullmatch(r"(encoder|decoder)\.mid\.block_([12])\.(\w+)\.(weight|bias)", key):
        return _block_part(f"{match[1]}.mid_block.resnets.{int(match[2]) - 1}", "resnet", match[3], match[4])
    if match := re.fullmatch(r"(encoder|decoder)\.mid\.attn_1\.(\w+)\.(weight|bias)", key):
        return _block_part(f"{match[1]}.mid_block.attentions.0", "attention", match[2], match[3])
    if match := re.fullmatch(r"encoder\.down\.(\d+)\.(block|attn)\.(\d+)\.(\w+)\.(weight|bias)", key):
        kind, child = ("resnet", "resnets") if match[2] == "block" else ("attention", "attentions")
        return _block_part(f"encoder.down_blocks.{match[1]}.{child}.{match[3]}", kind, match[4], match[5])
    if match := re.fullmatch(r"encoder\.down\.(\d+)\.downsample\.conv\.(weight|bias)", key):
        return f"encoder.down_blocks.{match[1]}.downsamplers.0.conv.{match[2]}", None
    if match := re.fullmatch(r"decoder\.up\.(\d+)\.(block|attn)\.(\d+)\.(\w+)\.(weight|bias)", key):
        if int(match[1]) >= num_stages:
            return None
        kind, child = ("resnet", "resnets") if match[2] == "block" else ("attention", "attentions")
        stage = num_stages - 1 - int(match[1])
        return _block_part(f"decoder.up_blocks.{stage}.{child}.{match[3]}", kind, match[4], match[5])
    if match := re.fullmatch(r"decoder\.up\.(\d+)\.upsample\.conv\.(weight|bias)", key):
        if int(match[1]) >= num_stages:
            return None
        return f"decoder.up_blocks.{num_stages - 1 - int(match[1])}.upsamplers.0.conv.{match[2]}", None
    return None


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The VAE state dict of MAR's checkpoint: its `"model"` entry (weights-only unpickling), or a safetensors file."""
    # MAR saves training checkpoints with their argparse `args`; that one class is allowed, nothing else
    return load_state_dict_file(path, key=CHECKPOINT_KEY, layout_hint=LAYOUT_HINT, safe_globals=[argparse.Namespace])


def convert_state_dict(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Map MAR's VAE state dict to an `AutoencoderKL(**config)` state dict (float32).

    Raises one `ValueError` naming every unmapped, missing, wrongly shaped and non-float key (nothing is dropped).
    """
    expected = expected_shapes(config)
    num_stages = len(config["block_out_channels"])
    converted, source, unexpected = {}, {}, []
    for key, tensor in state_dict.items():
        mapped = official_to_ours(key, num_stages)
        if mapped is None or mapped[0] not in expected:  # no rule, or a parameter this config does not have
            unexpected.append(key)
            continue
        name, transform = mapped
        converted[name] = tensor if transform is None else transform(tensor)
        source[name] = key
    missing = sorted(set(expected) - set(converted))
    wrong = sorted(f"{source[key]} -> {key} {tuple(converted[key].shape)} (expected {expected[key]})"
                   for key in converted if tuple(converted[key].shape) != expected[key])
    not_float = sorted(source[key] for key, tensor in converted.items() if not torch.is_floating_point(tensor))
    if unexpected or missing or wrong or not_float:
        problems = [f"{len(items)} {kind}: {list_names(items)}" for kind, items in (
            ("unexpected official keys", sorted(unexpected)), ("missing", missing),
            ("wrongly shaped", wrong), ("not floating point", not_float)) if items]
        raise ValueError(f"The checkpoint does not fit this AutoencoderKL ({'; '.join(problems)}); is it MAR's "
                         f"kl16.ckpt (AutoencoderKL(embed_dim=16, ch_mult=(1, 1, 2, 2, 4))), or does --config "
                         f"describe it?")
    return {key: tensor.float() for key, tensor in converted.items()}


def convert(checkpoint: str | Path, output: str | Path, config: str | Path | None = None,
            overwrite: bool = False) -> AutoencoderKL:
    """Read `checkpoint`, build the `AutoencoderKL` of `config` (default: the kl-16 preset) with its weights and
    `save_pretrained(output)` (config.json + diffusion_pytorch_model.safetensors)."""
    output = check_new_output_directory(output, overwrite)
    fields = vae_config(config)
    state_dict = convert_state_dict(load_checkpoint(checkpoint), fields)
    model = AutoencoderKL(**fields)
    model.load_state_dict(state_dict, strict=True)
    model.eval().save_pretrained(output)
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True,
                        help="MAR's VAE checkpoint ({'model': state_dict}), e.g. pretrained_models/vae/kl16.ckpt")
    parser.add_argument("--output", required=True,
                        help="the directory to write (config.json + diffusion_pytorch_model.safetensors)")
    parser.add_argument("--config", default=None,
                        help=f"a JSON file of AutoencoderKL fields over the {PRESET!r} preset (default: the preset, "
                             f"MAR's KL-16)")
    parser.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty directory")
    args = parser.parse_args(argv)
    try:
        model = convert(args.checkpoint, args.output, args.config, args.overwrite)
    except (FileNotFoundError, ValueError) as error:
        print(f"convert_mar_vae: error: {error}", file=sys.stderr)
        return 2
    output = Path(args.output).resolve()
    config = model.config
    size, stages = config.sample_size, len(config.block_out_channels)
    latent = size // 2 ** (stages - 1) if isinstance(size, int) else "?"
    print(f"wrote {output} ({', '.join(sorted(p.name for p in output.iterdir()))}): MAR VAE from {args.checkpoint}, "
          f"{len(model.state_dict())} tensors ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters), "
          f"{size} px -> {latent} x {latent} x {config.latent_channels} latents, scaling_factor "
          f"{config.scaling_factor:g}\n"
          f"load it with AutoencoderKL.from_pretrained({str(output)!r}); it reads images in [-1, 1]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
