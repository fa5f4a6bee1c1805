#!/usr/bin/env python
"""Convert a released TiTok tokenizer of bytedance/1d-tokenizer into a `spectralar_hf.SpectralTokenizer` directory.

    # tokenizer_titok_l32.bin of the Hub repo fun-research/TiTok (or model.safetensors of yucornetto/tokenizer_titok_*)
    python conversion/convert_titok.py --checkpoint tokenizer_titok_l32.bin --config titok_l32 \
        --output checkpoints/titok-l32

    from spectralar_hf import SpectralTokenizer
    tokenizer = SpectralTokenizer.from_pretrained("checkpoints/titok-l32")
    codes = tokenizer.encode(2 * images - 1).codes          # images in [0, 1], as TiTok takes them
    images_back = (tokenizer.decode(codes).reconstruction + 1) / 2

The result is a plain TiTok (`spectral_supervision=False`, `causal=False`): `encode(2x - 1).codes` are the official
`encode(x)` indices and `decode(codes).reconstruction` is `2 * official.decode_tokens(codes) - 1`. The three
two-stage TiTok tokenizers (`titok_l32`, `titok_b64`, `titok_s128`: legacy latent projection, proxy-code head and the
MaskGIT-VQGAN pixel decoder) and the single-stage VQ ones (`titok_bl64_vq8k`, `titok_bl128_vq8k`,
`titok_sl256_vq8k`: RGB head with an output convolution) are supported; the VAE tokenizers (`*_vae_c16`) are
continuous and are not. `--config` takes one of those names or the official `config.json` saved next to a Hub
checkpoint (its `model.vq_model` and `dataset.preprocessing.crop_size` entries are read).

What changes between the two layouts (every official key is mapped or is an error; nothing is dropped):

* names: `transformer.i.ln_1 / ln_2 / attn.in_proj_* / attn.out_proj / mlp.c_fc / mlp.c_proj` ->
  `layers.i.norm1 / norm2 / attn.qkv / attn.proj / mlp.fc1 / mlp.fc2`; `ln_pre / ln_post` -> `norm_pre / norm_post`;
  `positional_embedding` -> `position_embedding`; `latent_token_positional_embedding` -> `latent_position_embedding`;
  the top-level `latent_tokens` -> `encoder.latent_tokens`; `decoder.decoder_embed` -> `decoder.token_embed`;
  `quantize.embedding` -> `quantizer.codebook`; `pixel_quantize.*` and `pixel_decoder.*` keep their names;
* 1x1 convolutions on token grids become linears: `encoder.conv_out` -> `encoder.proj`, the proxy-code head
  `decoder.ffn.0 / ffn.2` -> `decoder.ffn.0 / ffn.2`, the RGB head `decoder.ffn.0` -> `decoder.head`;
* `class_embedding` `(1, W)` and `mask_token` `(1, 1, W)` -> `(W,)`;
* value ranges: TiTok reads images in [0, 1], we read [-1, 1]: the patch embedding absorbs `x01 = (x + 1) / 2`
  (`weight / 2`, `bias + weight.sum() / 2`). The RGB head's last convolution absorbs `y -> 2y - 1` (`weight * 2`,
  `bias * 2 - 1`); with the pixel decoder the tokenizer applies `2y - 1` itself (the decoder stays the MaskGIT-VQGAN's).

A stage-1 checkpoint (`finetune_decoder: False` with the legacy proxy-code head) has no pixel decoder; `--vqgan DIR`
(a `MaskGITVQGAN` directory, e.g. from `convert_maskgit_vqgan.py`) supplies it, as TiTok's stage 2 starts from the
MaskGIT-VQGAN's decoder and codebook. The checkpoint is read with `torch.load(..., weights_only=True)` (`.bin` /
`.pt` / `.pth`) or safetensors (`.safetensors`). `conversion/verify_titok.py` checks the result against the official
code.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from spectralar_hf import MaskGITVQGAN, SpectralTokenizer, SpectralTokenizerConfig
from spectralar_hf.checkpoint_io import check_new_output_directory, list_names, load_state_dict_file

# TiTok's ViT sizes (`TiTokEncoder` / `TiTokDecoder`): model size -> (width, layers, heads); MLP ratio 4, LayerNorm
# eps 1e-5 (PyTorch's default), GELU.
TITOK_VIT_SIZES = {"small": (512, 8, 8), "base": (768, 12, 12), "large": (1024, 24, 16)}
TITOK_LAYER_NORM_EPS = 1e-5
TITOK_MLP_RATIO = 4.0
TITOK_PROXY_CODES = 1024  # the legacy proxy-code head's output size (the MaskGIT-VQGAN codebook), fixed in TiTok

# `model.vq_model` of bytedance/1d-tokenizer configs/infer/TiTok/<name>.yaml (256 px crops, patch 16 throughout).
_TWO_STAGE = dict(codebook_size=4096, token_size=12, use_l2_norm=True, commitment_cost=0.25, vit_enc_patch_size=16,
                  vit_dec_patch_size=16, finetune_decoder=True, is_legacy=True, quantize_mode="vq")
_SINGLE_STAGE_VQ = dict(codebook_size=8192, token_size=64, use_l2_norm=False, commitment_cost=0.25,
                        vit_enc_patch_size=16, vit_dec_patch_size=16, finetune_decoder=False, is_legacy=False,
                        quantize_mode="vq")
TITOK_CONFIGS: dict[str, dict[str, Any]] = {
    "titok_l32": dict(_TWO_STAGE, vit_enc_model_size="large", vit_dec_model_size="large", num_latent_tokens=32),
    "titok_b64": dict(_TWO_STAGE, vit_enc_model_size="base", vit_dec_model_size="base", num_latent_tokens=64),
    "titok_s128": dict(_TWO_STAGE, vit_enc_model_size="small", vit_dec_model_size="small", num_latent_tokens=128),
    "titok_bl64_vq8k": dict(_SINGLE_STAGE_VQ, vit_enc_model_size="base", vit_dec_model_size="large",
                            num_latent_tokens=64),
    "titok_bl128_vq8k": dict(_SINGLE_STAGE_VQ, vit_enc_model_size="base", vit_dec_model_size="large",
                             num_latent_tokens=128),
    "titok_sl256_vq8k": dict(_SINGLE_STAGE_VQ, vit_enc_model_size="small", vit_dec_model_size="large",
                             num_latent_tokens=256),
}
TITOK_CROP_SIZE = 256


# ---------------------------------------------------------------------------------------------------- configs


def tokenizer_config(vq_model: Mapping[str, Any], crop_size: int = TITOK_CROP_SIZE) -> SpectralTokenizerConfig:
    """The `SpectralTokenizerConfig` of a TiTok with the official `model.vq_model` settings and crop size.

    Defaults are the official code's (`is_legacy` True, `finetune_decoder` True, `quantize_mode` "vq",
    `use_l2_norm` False); unsupported settings raise a `ValueError` that says why.
    """
    vq = dict(vq_model)
    if vq.get("quantize_mode", "vq") != "vq":
        raise ValueError(f"quantize_mode {vq['quantize_mode']!r}: TiTok's VAE tokenizers have continuous tokens; "
                         f"SpectralTokenizer is a VQ tokenizer, so only quantize_mode 'vq' converts.")
    legacy, two_stage = vq.get("is_legacy", True), vq.get("finetune_decoder", True)
    if two_stage and not legacy:
        raise ValueError("finetune_decoder True with is_legacy False: the official decoder then feeds RGB pixels to "
                         "the proxy-code softmax, which no released TiTok does; check the config.")
    missing = [key for key in ("vit_enc_model_size", "vit_dec_model_size", "vit_enc_patch_size", "vit_dec_patch_size",
                               "num_latent_tokens", "codebook_size", "token_size") if key not in vq]
    if missing:
        raise ValueError(f"model.vq_model lacks {missing}; is this a TiTok config?")
    for key in ("vit_enc_model_size", "vit_dec_model_size"):
        if vq[key] not in TITOK_VIT_SIZES:
            raise ValueError(f"{key} {vq[key]!r} is not one of TiTok's sizes {sorted(TITOK_VIT_SIZES)}.")
    if vq["vit_enc_patch_size"] != vq["vit_dec_patch_size"]:
        raise ValueError(f"vit_enc_patch_size {vq['vit_enc_patch_size']} != vit_dec_patch_size "
                         f"{vq['vit_dec_patch_size']}: SpectralTokenizer uses one patch size for both.")
    enc_width, enc_layers, enc_heads = TITOK_VIT_SIZES[vq["vit_enc_model_size"]]
    dec_width, dec_layers, dec_heads = TITOK_VIT_SIZES[vq["vit_dec_model_size"]]
    return SpectralTokenizerConfig(
        image_size=crop_size, num_channels=3, patch_size=vq["vit_enc_patch_size"],
        encoder_hidden_size=enc_width, encoder_num_hidden_layers=enc_layers, encoder_num_attention_heads=enc_heads,
        encoder_mlp_ratio=TITOK_MLP_RATIO,
        decoder_hidden_size=dec_width, decoder_num_hidden_layers=dec_layers, decoder_num_attention_heads=dec_heads,
        decoder_mlp_ratio=TITOK_MLP_RATIO,
        num_latent_tokens=vq["num_latent_tokens"], codebook_size=vq["codebook_size"], token_dim=vq["token_size"],
        l2_normalize_codebook=bool(vq.get("use_l2_norm", False)), commitment_cost=vq.get("commitment_cost", 0.25),
        spectral_supervision=False, causal=False, layer_norm_eps=TITOK_LAYER_NORM_EPS, class_token=True,
        legacy_latent_projection=legacy, decoder_output_conv=not legacy,
        # the legacy head predicts TiTok's fixed 1024 proxy codes of the released MaskGIT-VQGAN ({} = its sizes)
        pixel_decoder={} if legacy else None,
    )


def resolve_config(config: str) -> SpectralTokenizerConfig:
    """`--config`: a name of `TITOK_CONFIGS` or the path of an official TiTok `config.json`."""
    if config in TITOK_CONFIGS:
        return tokenizer_config(TITOK_CONFIGS[config])
    path = Path(config)
    if not path.is_file():
        raise ValueError(f"--config {config!r} is neither one of {sorted(TITOK_CONFIGS)} nor a file (the config.json "
                         f"of a TiTok Hub checkpoint).")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        vq = data["model"]["vq_model"]
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"--config {path} is not JSON ({error}); give a config name or TiTok's config.json (YAML "
                         f"configs: use the matching name, e.g. titok_l32).") from None
    except (KeyError, TypeError):
        raise ValueError(f"--config {path} has no model.vq_model section; is it a TiTok config.json?") from None
    crop = data.get("dataset", {}).get("preprocessing", {}).get("crop_size", TITOK_CROP_SIZE)
    return tokenizer_config(vq, crop)


# ---------------------------------------------------------------------------------------------------- keys

# (official pattern, our name, transform) in order; the first match wins. Transforms get (tensor, config).
_VIT_BLOCK = [
    (r"transformer\.(\d+)\.ln_1\.(weight|bias)", r"layers.\1.norm1.\2"),
    (r"transformer\.(\d+)\.ln_2\.(weight|bias)", r"layers.\1.norm2.\2"),
    (r"transformer\.(\d+)\.attn\.in_proj_(weight|bias)", r"layers.\1.attn.qkv.\2"),
    (r"transformer\.(\d+)\.attn\.out_proj\.(weight|bias)", r"layers.\1.attn.proj.\2"),
    (r"transformer\.(\d+)\.mlp\.c_fc\.(weight|bias)", r"layers.\1.mlp.fc1.\2"),
    (r"transformer\.(\d+)\.mlp\.c_proj\.(weight|bias)", r"layers.\1.mlp.fc2.\2"),
    (r"ln_pre\.(weight|bias)", r"norm_pre.\1"),
    (r"ln_post\.(weight|bias)", r"norm_post.\1"),
    (r"positional_embedding", "position_embedding"),
    (r"latent_token_positional_embedding", "latent_position_embedding"),
    (r"class_embedding", "class_embedding"),
]


def _flatten(tensor: torch.Tensor, config: SpectralTokenizerConfig) -> torch.Tensor:
    return tensor.reshape(-1)


def _squeeze_1x1(tensor: torch.Tensor, config: SpectralTokenizerConfig) -> torch.Tensor:
    """A 1x1 convolution's `(out, in, 1, 1)` weight as a linear `(out, in)` weight (biases pass through)."""
    return tensor.reshape(tensor.shape[0], -1) if tensor.dim() == 4 else tensor


def _patch_embed_weight(tensor: torch.Tensor, config: SpectralTokenizerConfig) -> torch.Tensor:
    return tensor / 2  # conv(W, (x + 1) / 2) = conv(W / 2, x) + sum(W) / 2


def _rgb_conv_weight(tensor: torch.Tensor, config: SpectralTokenizerConfig) -> torch.Tensor:
    return tensor * 2  # 2 * conv(W, y) + 2b - 1 = conv(2W, y) + (2b - 1)


def _rgb_conv_bias(tensor: torch.Tensor, config: SpectralTokenizerConfig) -> torch.Tensor:
    return tensor * 2 - 1


def key_rules(config: SpectralTokenizerConfig) -> list[tuple[str, str, Callable | None]]:
    """The official-key -> our-key rules for a TiTok with `config` (`(regex, replacement, transform)`)."""
    identity = None
    rules: list[tuple[str, str, Callable | None]] = [
        ("latent_tokens", "encoder.latent_tokens", identity),
        ("encoder.patch_embed.weight", "encoder.patch_embed.weight", _patch_embed_weight),
        ("encoder.patch_embed.bias", "encoder.patch_embed.bias", identity),  # + sum(W) / 2, see fold_input_range
        (r"encoder\.conv_out\.(weight|bias)", r"encoder.proj.\1", _squeeze_1x1),
        (r"decoder\.decoder_embed\.(weight|bias)", r"decoder.token_embed.\1", identity),
        ("decoder.mask_token", "decoder.mask_token", _flatten),
        ("quantize.embedding.weight", "quantizer.codebook.weight", identity),
        (r"(pixel_quantize\.embedding\.weight)", r"\1", identity),
        (r"(pixel_decoder\..+)", r"\1", identity),
    ]
    for part in ("encoder", "decoder"):
        for pattern, replacement in _VIT_BLOCK:
            transform = _flatten if pattern == "class_embedding" else identity
            rules.append((rf"{part}\.{pattern}", f"{part}.{replacement}", transform))
    if config.pixel_decoder is not None:  # the legacy proxy-code head: two 1x1 convolutions around a Tanh
        rules.append((r"decoder\.ffn\.(0|2)\.(weight|bias)", r"decoder.ffn.\1.\2", _squeeze_1x1))
    else:  # the RGB head: a 1x1 convolution to p * p * 3 channels (then a rearrange) and a 3x3 output convolution
        rules += [(r"decoder\.ffn\.0\.(weight|bias)", r"decoder.head.\1", _squeeze_1x1),
                  ("decoder.conv_out.weight", "decoder.conv_out.weight", _rgb_conv_weight),
                  ("decoder.conv_out.bias", "decoder.conv_out.bias", _rgb_conv_bias)]
    return rules


def official_to_ours(key: str, rules: list[tuple[str, str, Callable | None]]) -> tuple[str, Callable | None] | None:
    """Our name (and value transform) for an official TiTok state-dict key under `rules` (see `key_rules`), or
    `None` when no rule maps it."""
    for pattern, replacement, transform in rules:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, replacement, key), transform
    return None


def expected_shapes(config: SpectralTokenizerConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of a `SpectralTokenizer(config)` (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = SpectralTokenizer(config)
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The flat `{key: tensor}` state dict in `path`: safetensors, or weights-only unpickling for anything else."""
    return load_state_dict_file(path, layout_hint="the released TiTok .bin maps parameter names straight to tensors")


def vqgan_pixel_weights(vqgan: MaskGITVQGAN) -> dict[str, torch.Tensor]:
    """A MaskGIT-VQGAN's decoder and codebook under TiTok's names (`pixel_decoder.*`, `pixel_quantize.*`)."""
    weights = {f"pixel_decoder.{key}": value for key, value in vqgan.decoder.state_dict().items()}
    weights["pixel_quantize.embedding.weight"] = vqgan.quantize.embedding.weight.detach()
    return weights


def convert_state_dict(state_dict: Mapping[str, torch.Tensor], config: SpectralTokenizerConfig,
                       pixel_weights: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Map an official TiTok state dict to a `SpectralTokenizer(config)` state dict (float32).

    `pixel_weights` (see `vqgan_pixel_weights`) fill in a stage-1 checkpoint's missing pixel decoder; given together
    with a checkpoint that has one, it is an error. Raises one `ValueError` naming every unmapped, missing and
    wrongly shaped key.
    """
    state_dict = dict(state_dict)
    if pixel_weights is not None:
        clash = sorted(key for key in state_dict if key.startswith(("pixel_decoder.", "pixel_quantize.")))
        if clash:
            raise ValueError(f"The checkpoint has its own pixel decoder ({list_names(clash)}); --vqgan is only for "
                             f"stage-1 checkpoints without one.")
        if config.pixel_decoder is None:
            raise ValueError("--vqgan gives a pixel decoder, but this TiTok has the RGB head (is_legacy False).")
        state_dict.update(pixel_weights)
    expected = expected_shapes(config)
    converted, source, unexpected = {}, {}, []
    rules = key_rules(config)
    for key, tensor in state_dict.items():
        mapped = official_to_ours(key, rules)
        if mapped is None or mapped[0] not in expected:  # no rule, or a parameter this config does not have
            unexpected.append(key)
            continue
        name, transform = mapped
        converted[name] = tensor if transform is None else transform(tensor, config)
        source[name] = key
    missing = sorted(set(expected) - set(converted))
    wrong = sorted(f"{source[key]} -> {key} {tuple(converted[key].shape)} (expected {expected[key]})"
                   for key in converted if tuple(converted[key].shape) != expected[key])
    not_float = sorted(source[key] for key, tensor in converted.items() if not torch.is_floating_point(tensor))
    if unexpected or missing or wrong or not_float:
        problems = [f"{len(items)} {kind}: {list_names(items)}" for kind, items in (
            ("unexpected official keys", sorted(unexpected)), ("missing", missing),
            ("wrongly shaped", wrong), ("not floating point", not_float)) if items]
        hint = (" (a stage-1 checkpoint: pass --vqgan DIR for the pixel decoder)"
                if missing and all(key.startswith(("pixel_decoder.", "pixel_quantize.")) for key in missing) else
                "; is --config the checkpoint's?")
        raise ValueError(f"The checkpoint does not fit this TiTok config ({'; '.join(problems)}){hint}")
    converted = {key: tensor.float() for key, tensor in converted.items()}
    fold_input_range(converted, state_dict["encoder.patch_embed.weight"].float())
    return converted


def fold_input_range(converted: dict[str, torch.Tensor], official_patch_weight: torch.Tensor) -> None:
    """Make the patch embedding read [-1, 1] images: `bias += sum(W) / 2` over each filter (the weight is halved by
    its key rule)."""
    converted["encoder.patch_embed.bias"] = (converted["encoder.patch_embed.bias"]
                                             + official_patch_weight.sum(dim=(1, 2, 3)) / 2)


def convert(checkpoint: str | Path, config: str, output: str | Path, vqgan: str | Path | None = None,
            overwrite: bool = False) -> SpectralTokenizer:
    """Read `checkpoint`, build the `SpectralTokenizer` of `config` with its weights and `save_pretrained(output)`."""
    output = check_new_output_directory(output, overwrite)
    tokenizer_config_ = resolve_config(config)
    pixel_weights = None
    if vqgan is not None:
        teacher = MaskGITVQGAN.from_pretrained(vqgan)
        if teacher.config.codebook_size != TITOK_PROXY_CODES:
            raise ValueError(f"--vqgan {vqgan} has {teacher.config.codebook_size} codes; TiTok's proxy-code head "
                             f"predicts {TITOK_PROXY_CODES} (the released MaskGIT-VQGAN).")
        pixel_weights = vqgan_pixel_weights(teacher)
    state_dict = convert_state_dict(load_checkpoint(checkpoint), tokenizer_config_, pixel_weights)
    model = SpectralTokenizer(tokenizer_config_)
    model.load_state_dict(state_dict, strict=True)
    model.eval().save_pretrained(output)
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True,
                        help="the official state dict: tokenizer_titok_*.bin, or a Hub repo's model.safetensors")
    parser.add_argument("--config", required=True,
                        help=f"one of {', '.join(sorted(TITOK_CONFIGS))}, or the official config.json")
    parser.add_argument("--output", required=True, help="the directory to write (config.json + model.safetensors)")
    parser.add_argument("--vqgan", default=None,
                        help="a MaskGITVQGAN directory whose decoder completes a stage-1 checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty directory")
    args = parser.parse_args(argv)
    try:
        model = convert(args.checkpoint, args.config, args.output, args.vqgan, args.overwrite)
    except (FileNotFoundError, ValueError) as error:
        print(f"convert_titok: error: {error}", file=sys.stderr)
        return 2
    output = Path(args.output).resolve()
    config = model.config
    head = "proxy codes + MaskGIT-VQGAN pixel decoder" if config.pixel_decoder is not None else "RGB head"
    print(f"wrote {output} ({', '.join(sorted(p.name for p in output.iterdir()))}): TiTok {args.config} from "
          f"{args.checkpoint}, {len(model.state_dict())} tensors ({model.num_parameters() / 1e6:.2f}M parameters), "
          f"{config.image_size} px -> {config.num_latent_tokens} tokens of a {config.codebook_size} x "
          f"{config.token_dim} codebook, {head}\n"
          f"load it with SpectralTokenizer.from_pretrained({str(output)!r}); it reads images in [-1, 1] (2x - 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
