#!/usr/bin/env python
"""Convert the released MaskGIT-VQGAN checkpoint of bytedance/1d-tokenizer (TiTok's proxy-code teacher and pixel
decoder) into a `spectralar_hf.MaskGITVQGAN` directory (config.json + model.safetensors).

    # the file the official `PretrainedTokenizer` loads (Hub: fun-research/TiTok, maskgit-vqgan-imagenet-f16-256.bin)
    python conversion/convert_maskgit_vqgan.py --checkpoint maskgit-vqgan-imagenet-f16-256.bin \
        --output checkpoints/maskgit-vqgan-imagenet-f16-256

    from spectralar_hf import MaskGITVQGAN
    vqgan = MaskGITVQGAN.from_pretrained("checkpoints/maskgit-vqgan-imagenet-f16-256")

The checkpoint is a flat state dict (the official code passes it straight to `load_state_dict(strict=True)`), read with
`torch.load(..., weights_only=True)`. Our parameter names are the official keys (`encoder.*`, `decoder.*`,
`quantize.embedding.weight`), so the mapping is the identity; it is checked in full: every official key must be one of
ours with the same shape and every one of ours must be present, else the script names the missing, unexpected and
wrongly shaped keys and exits with status 2. `conversion/verify_maskgit_vqgan.py` checks the outputs against the
official code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path

import torch

from spectralar_hf import MASKGIT_VQGAN_PRESETS, MaskGITVQGAN, MaskGITVQGANConfig
from spectralar_hf.checkpoint_io import check_new_output_directory, list_names, load_state_dict_file

DEFAULT_PRESET = "maskgit-imagenet-f16-256"


def official_to_ours(key: str) -> str:
    """Our parameter name for an official state-dict key: the same name (the model was built to match)."""
    return key


def expected_shapes(config: MaskGITVQGANConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of a `MaskGITVQGAN` with `config` (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = MaskGITVQGAN(config)
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The flat `{key: tensor}` state dict in `path` (weights-only unpickling, or safetensors)."""
    return load_state_dict_file(path, layout_hint="the released MaskGIT-VQGAN .bin maps parameter names straight "
                                                  "to tensors")


def convert_state_dict(state_dict: Mapping[str, torch.Tensor], config: MaskGITVQGANConfig) -> dict[str, torch.Tensor]:
    """Map the official keys to ours and check names and shapes against a `MaskGITVQGAN(config)`.

    Raises one `ValueError` naming the missing, unexpected and wrongly shaped keys (nothing is dropped silently).
    """
    expected = expected_shapes(config)
    converted = {official_to_ours(key): tensor for key, tensor in state_dict.items()}
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    wrong = sorted(f"{key} {tuple(converted[key].shape)} (expected {expected[key]})"
                   for key in set(expected) & set(converted) if tuple(converted[key].shape) != expected[key])
    if missing or unexpected or wrong:
        problems = [f"{len(items)} {kind}: {list_names(items)}" for kind, items in
                    (("missing", missing), ("unexpected", unexpected), ("wrongly shaped", wrong)) if items]
        raise ValueError(f"The checkpoint does not fit a MaskGITVQGAN with this config ({'; '.join(problems)}); "
                         f"is it the MaskGIT-VQGAN .bin, and is the preset right?")
    not_float = sorted(key for key, tensor in converted.items() if not torch.is_floating_point(tensor))
    if not_float:
        raise ValueError(f"Non-float tensors in the checkpoint: {list_names(not_float)}.")
    return {key: tensor.float() for key, tensor in converted.items()}


def convert(checkpoint: str | Path, output: str | Path, preset: str = DEFAULT_PRESET,
            overwrite: bool = False) -> MaskGITVQGAN:
    """Read `checkpoint`, build `MaskGITVQGAN(from_preset(preset))` with its weights and `save_pretrained(output)`."""
    output = check_new_output_directory(output, overwrite)
    config = MaskGITVQGANConfig.from_preset(preset)
    state_dict = convert_state_dict(load_checkpoint(checkpoint), config)
    model = MaskGITVQGAN(config)
    model.load_state_dict(state_dict, strict=True)
    model.eval().save_pretrained(output)
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="the official state dict, e.g. "
                        "maskgit-vqgan-imagenet-f16-256.bin")
    parser.add_argument("--output", required=True, help="the directory to write (config.json + model.safetensors)")
    parser.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(MASKGIT_VQGAN_PRESETS),
                        help=f"the sizes of the checkpoint (default: {DEFAULT_PRESET}, the released model)")
    parser.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty directory")
    args = parser.parse_args(argv)
    try:
        model = convert(args.checkpoint, args.output, args.preset, args.overwrite)
    except (FileNotFoundError, ValueError) as error:
        print(f"convert_maskgit_vqgan: error: {error}", file=sys.stderr)
        return 2
    output = Path(args.output).resolve()
    config = model.config
    files = ", ".join(sorted(p.name for p in output.iterdir()))
    print(f"wrote {output} ({files}): MaskGITVQGAN preset {args.preset!r} from {args.checkpoint}, "
          f"{len(model.state_dict())} tensors ({model.num_parameters() / 1e6:.2f}M parameters), "
          f"{config.image_size} px -> {config.latent_size}x{config.latent_size} codes of a {config.codebook_size} x "
          f"{config.codebook_dim} codebook\n"
          f"load it with MaskGITVQGAN.from_pretrained({str(output)!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
