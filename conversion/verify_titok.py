#!/usr/bin/env python
"""Check `convert_titok.py` + `SpectralTokenizer` against the official TiTok code of bytedance/1d-tokenizer.

    git clone https://github.com/bytedance/1d-tokenizer /tmp/official
    pip install einops omegaconf          # the official modules import them (and torch, accelerate, huggingface_hub)
    python conversion/verify_titok.py --official-repo /tmp/official [--configs titok_s128 titok_b64 ...]

For each TiTok config (default: all of `convert_titok.TITOK_CONFIGS`), the script builds the official `TiTok` from
`PATH/modeling/titok.py` (the packages `modeling`, `modeling.modules` and `modeling.quantizer` are registered without
running their `__init__`, which would import the training losses and torchvision; every module the comparison runs
is the official file), gives it seeded random weights, saves its state dict as a `.bin`, converts it with
`convert_titok.py`, loads the result with `SpectralTokenizer.from_pretrained` and compares in float32, on random
images `x` in [0, 1]:

* the encoder's continuous latents (`official.encoder(x, latent_tokens)` vs ours on `2x - 1`);
* the codes (`official.encode(x)` indices vs `ours.encode(2x - 1).codes`, agreement in %);
* decoding: `2 * official.decode_tokens(codes) - 1` vs `ours.decode(codes).reconstruction`, for the codes of the
  images and for random codes; with the proxy-code head also its logits. `TiTok.decode`'s einsum hands the pixel
  decoder a permuted (channels-last) view, and CPU convolutions round differently on that memory layout: the official
  decoder differs from itself by ~1e-4 between that view and a contiguous copy of it (printed as "official vs
  itself"), so with the pixel decoder the judged row is the comparison with the official code on the contiguous
  copy, and the raw comparison is printed for information.

Random weights: linear and convolution weights N(0, 1 / fan_in), biases N(0, 0.02), LayerNorm / GroupNorm scales
1 + N(0, 0.1) and shifts N(0, 0.1); TiTok's codebook rows are encoder latents of other random images plus noise (codes
spread over the codebook), the proxy codebook N(0, 1). Exit status 0 when the codes are identical and every difference
is <= --tolerance.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import shutil
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
import transformers
from torch import nn

from spectralar_hf import SpectralTokenizer

HERE = Path(__file__).resolve().parent
PACKAGES = ("modeling", "modeling.modules", "modeling.quantizer")
BATCH = 2


def load_converter():
    spec = importlib.util.spec_from_file_location("convert_titok", HERE / "convert_titok.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def import_official_titok(repo: Path):
    """`modeling.titok` of the checkout, with the package `__init__`s skipped (see the module docstring)."""
    for name in PACKAGES:
        package = types.ModuleType(name)
        package.__path__ = [str(repo.joinpath(*name.split(".")))]
        sys.modules[name] = package
    sys.path.insert(0, str(repo))
    return importlib.import_module("modeling.titok")


def official_config(vq_model: dict, crop_size: int) -> dict:
    return {"model": {"vq_model": dict(vq_model)}, "dataset": {"preprocessing": {"crop_size": crop_size}}}


@torch.no_grad()
def randomize(model: nn.Module, images: torch.Tensor, generator: torch.Generator) -> None:
    def normal(shape, std):
        return torch.randn(shape, generator=generator) * std

    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            module.weight.copy_(normal(module.weight.shape, 1 / math.sqrt(module.weight[0].numel())))
            if module.bias is not None:
                module.bias.copy_(normal(module.bias.shape, 0.02))
        elif isinstance(module, nn.MultiheadAttention):
            module.in_proj_weight.copy_(normal(module.in_proj_weight.shape, 1 / math.sqrt(module.embed_dim)))
            module.in_proj_bias.copy_(normal(module.in_proj_bias.shape, 0.02))
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            module.weight.copy_(1 + normal(module.weight.shape, 0.1))
            module.bias.copy_(normal(module.bias.shape, 0.1))
    if hasattr(model, "pixel_quantize"):
        model.pixel_quantize.embedding.weight.copy_(normal(model.pixel_quantize.embedding.weight.shape, 1.0))
    latents = model.encoder(pixel_values=images, latent_tokens=model.latent_tokens)  # (B, D, 1, N)
    latents = latents.flatten(2).transpose(1, 2).reshape(-1, latents.shape[1])
    codebook = model.quantize.embedding.weight
    rows = torch.randint(0, latents.shape[0], (codebook.shape[0],), generator=generator)
    codebook.copy_(latents[rows] + 0.5 * latents.std() * normal(codebook.shape, 1.0))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


@torch.no_grad()
def compare(official, converter, name: str, seed: int, work: Path) -> list[tuple[str, float, str]]:
    vq_model = converter.TITOK_CONFIGS[name]
    size = converter.TITOK_CROP_SIZE
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the official constructor's own random init
    reference = official.TiTok(official_config(vq_model, size)).eval()
    randomize(reference, torch.rand(BATCH, 3, size, size, generator=generator), generator)
    checkpoint = work / f"{name}.bin"
    torch.save(reference.state_dict(), checkpoint)
    output = work / name
    status = converter.main(["--checkpoint", str(checkpoint), "--config", name, "--output", str(output)])
    if status != 0:
        raise SystemExit(f"the converter failed on {name} (status {status})")
    ours = SpectralTokenizer.from_pretrained(output).eval()

    images = torch.rand(BATCH, 3, size, size, generator=generator)
    ref_latents = reference.encoder(pixel_values=images, latent_tokens=reference.latent_tokens)
    ref_latents = ref_latents.flatten(2).transpose(1, 2)  # (B, D, 1, N) -> (B, N, D)
    _, ref_result = reference.encode(images)
    ref_codes = ref_result["min_encoding_indices"].reshape(BATCH, -1)
    encoded = ours.encode(2 * images - 1)
    agreement = float((encoded.codes == ref_codes).double().mean() * 100)

    # (label, value, kind): "diff" rows must be <= --tolerance, "agreement" rows 100 %, "info" rows are context
    rows = [
        ("encoder latents", max_diff(encoded.latents, ref_latents), "diff"),
        ("code agreement (%)", agreement, "agreement"),
        ("codes in use", float(ref_codes.unique().numel()), "info"),
    ]
    random_codes = torch.randint(0, vq_model["codebook_size"], ref_codes.shape, generator=generator)
    for label, codes in (("codes of the images", ref_codes), ("random codes", random_codes)):
        reference_images = 2 * reference.decode_tokens(codes) - 1
        decoded = ours.decode(codes)
        difference = max_diff(decoded.reconstruction, reference_images)
        if decoded.proxy_logits is None:
            rows.append((f"decode, {label}", difference, "diff"))
            continue
        # With the pixel decoder, TiTok.decode's einsum hands it a permuted (channels-last) view, and CPU convolutions
        # round differently on that layout: the official code differs from itself on a contiguous copy of the same
        # input. The judged row is the comparison with that contiguous copy.
        rows.append((f"decode, {label}", difference, "info"))
        z_quantized = reference.quantize.get_codebook_entry(codes.reshape(-1))
        z_quantized = z_quantized.reshape(BATCH, 1, codes.shape[1], -1).permute(0, 3, 1, 2)
        logits = reference.decoder(z_quantized)
        soft = torch.einsum("nchw,cd->ndhw", logits.softmax(1), reference.pixel_quantize.embedding.weight)
        contiguous = 2 * reference.pixel_decoder(soft.contiguous()) - 1
        rows += [("  proxy logits", max_diff(decoded.proxy_logits, logits), "diff"),
                 ("  decode, official input contiguous", max_diff(decoded.reconstruction, contiguous), "diff"),
                 ("  official vs itself, layout only", max_diff(contiguous, reference_images), "info")]
    rows.append(("scale: max |latent|", float(ref_latents.abs().max()), "info"))
    rows.append(("scale: max |decode|", float(reference_images.abs().max()), "info"))
    return rows


def main(argv: list[str] | None = None) -> int:
    converter = load_converter()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official-repo", required=True, help="a checkout of github.com/bytedance/1d-tokenizer")
    parser.add_argument("--configs", nargs="+", default=list(converter.TITOK_CONFIGS),
                        choices=list(converter.TITOK_CONFIGS))
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    repo = Path(args.official_repo)
    if not (repo / "modeling" / "titok.py").is_file():
        print(f"verify_titok: error: {repo / 'modeling' / 'titok.py'} not found; --official-repo must be a checkout "
              f"of github.com/bytedance/1d-tokenizer.", file=sys.stderr)
        return 2
    try:
        official = import_official_titok(repo)
    except ImportError as error:
        print(f"verify_titok: error: importing the official TiTok failed ({error}); install its imports with "
              f"`pip install einops omegaconf`.", file=sys.stderr)
        return 2
    torch.set_grad_enabled(False)
    transformers.utils.logging.disable_progress_bar()
    failures = []
    with tempfile.TemporaryDirectory() as work:
        for name in args.configs:
            start = time.perf_counter()
            rows = compare(official, converter, name, args.seed, Path(work))
            vq = converter.TITOK_CONFIGS[name]
            print(f"\n{name}: encoder {vq['vit_enc_model_size']}, decoder {vq['vit_dec_model_size']}, "
                  f"{vq['num_latent_tokens']} tokens, codebook {vq['codebook_size']} x {vq['token_size']}, "
                  f"{'proxy codes + pixel decoder' if vq['is_legacy'] else 'RGB head'}, batch {BATCH} "
                  f"({time.perf_counter() - start:.1f} s)")
            for label, value, kind in rows:
                ok = {"diff": value <= args.tolerance, "agreement": value == 100.0, "info": True}[kind]
                shown = f"{value:.3e}" if kind == "diff" or label.startswith(("decode", "  official")) else f"{value:g}"
                print(f"  {label:38s} {shown}" + ("" if ok else "  <-- FAIL"), flush=True)
                if not ok:
                    failures.append(f"{name}: {label}")
            for path in Path(work).iterdir():  # keep the temporary disk use to one config
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    print(f"\n{'PASS' if not failures else 'FAIL: ' + ', '.join(failures)} (tolerance {args.tolerance:g}, "
          f"torch {torch.__version__})")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
