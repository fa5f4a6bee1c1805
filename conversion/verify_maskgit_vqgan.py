#!/usr/bin/env python
"""Check `MaskGITVQGAN` + `convert_maskgit_vqgan.py` against the official MaskGIT-VQGAN code of bytedance/1d-tokenizer.

    git clone https://github.com/bytedance/1d-tokenizer /tmp/official   # only modeling/modules/maskgit_vqgan.py is used
    python conversion/verify_maskgit_vqgan.py --official-repo /tmp/official

For the released sizes (256 px, `maskgit-imagenet-f16-256`) and a small config, the script builds the official
encoder, decoder and quantizer from `PATH/modeling/modules/maskgit_vqgan.py` (loaded as a file: the package's
`__init__` would pull in the TiTok models and their omegaconf / einops / huggingface_hub imports; that file needs only
torch) with the `PretrainedTokenizer` attribute names (`encoder`, `decoder`, `quantize`), gives them seeded random
weights, saves the state dict to a temporary `.bin`, converts it with `convert_maskgit_vqgan.py`, loads the result
with `MaskGITVQGAN.from_pretrained` and compares, in float32 on random images in [0, 1]:

* encoder latents, quantized latents, codes (agreement in %), the quantizer loss;
* decoding given codes (the official `get_codebook_entry` -> decoder -> clamp to [0, 1], as `PretrainedTokenizer`).
  `get_codebook_entry` returns a permuted, channels-last view, and CPU convolutions round differently on that memory
  layout: the official decoder differs from itself by ~1e-5 between that view and a contiguous copy (printed as
  "official vs itself"); against the contiguous copy our decoder is expected to agree exactly;
* decoding soft codes: TiTok stage 2's `einsum('nchw,cd->ndhw', logits.softmax(1), codebook)` -> decoder, against
  our `decode_soft_codes` with the codebook axis first (`dim=1`) and last.

Random weights: convolutions N(0, 1 / fan_in), GroupNorm scales 1 + N(0, 0.1) and shifts N(0, 0.1), biases
N(0, 0.02); codebook rows are encoder latents of other random images plus noise, so codes are spread over the codebook
and distances are not degenerate. Exit status 0 when every difference is <= --tolerance and the codes are identical.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import transformers
from torch import nn

from spectralar_hf import MASKGIT_VQGAN_PRESETS, MaskGITVQGAN

HERE = Path(__file__).resolve().parent
OFFICIAL_FILE = Path("modeling") / "modules" / "maskgit_vqgan.py"
CONFIGS = {"maskgit-imagenet-f16-256": 2, "small": 4}  # preset -> batch size


def load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_official(official, preset: dict) -> nn.Module:
    """The three parts of the official `PretrainedTokenizer`, under its attribute names (same state-dict keys)."""
    namespace = SimpleNamespace(
        channel_mult=list(preset["channel_mult"]), num_resolutions=len(preset["channel_mult"]), dropout=0.0,
        hidden_channels=preset["hidden_channels"], num_channels=preset["num_channels"],
        num_res_blocks=preset["num_res_blocks"], resolution=preset["image_size"], z_channels=preset["z_channels"],
    )
    model = nn.Module()
    model.encoder = official.Encoder(namespace)
    model.decoder = official.Decoder(namespace)
    model.quantize = official.VectorQuantizer(num_embeddings=preset["codebook_size"],
                                              embedding_dim=preset["z_channels"],
                                              commitment_cost=preset["commitment_cost"])
    return model.eval()


@torch.no_grad()
def randomize(model: nn.Module, preset: dict, generator: torch.Generator) -> None:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            fan_in = module.weight[0].numel()
            module.weight.copy_(torch.randn(module.weight.shape, generator=generator) / math.sqrt(fan_in))
            if module.bias is not None:
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.02)
        elif isinstance(module, nn.GroupNorm):
            module.weight.copy_(1 + 0.1 * torch.randn(module.weight.shape, generator=generator))
            module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
    size = preset["image_size"]
    images = torch.rand(2, preset["num_channels"], size, size, generator=generator)
    latents = model.encoder(images).permute(0, 2, 3, 1).reshape(-1, preset["z_channels"])
    rows = torch.randint(0, latents.shape[0], (preset["codebook_size"],), generator=generator)
    noise = torch.randn(preset["codebook_size"], preset["z_channels"], generator=generator)
    model.quantize.embedding.weight.copy_(latents[rows] + 0.5 * latents.std() * noise)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


@torch.no_grad()
def compare(official, converter, preset_name: str, batch: int, seed: int, work: Path) -> list[tuple[str, float]]:
    preset = MASKGIT_VQGAN_PRESETS[preset_name]
    generator = torch.Generator().manual_seed(seed)
    reference = build_official(official, preset)
    randomize(reference, preset, generator)
    checkpoint = work / f"{preset_name}.bin"
    torch.save(reference.state_dict(), checkpoint)
    output = work / preset_name
    status = converter.main(["--checkpoint", str(checkpoint), "--output", str(output), "--preset", preset_name])
    if status != 0:
        raise SystemExit(f"the converter failed on {preset_name} (status {status})")
    ours = MaskGITVQGAN.from_pretrained(output).eval()

    size, channels, codebook_size = preset["image_size"], preset["num_channels"], preset["codebook_size"]
    images = torch.rand(batch, channels, size, size, generator=generator)
    hidden = reference.encoder(images)
    ref_quantized, ref_codes, _ = reference.quantize(hidden)
    _, _, ref_loss = reference.quantize(hidden, return_loss=True)
    encoded = ours.encode(images)
    grid = encoded.codes.shape[-1]
    agreement = float((encoded.codes.reshape(batch, -1) == ref_codes).double().mean() * 100)

    codes = torch.randint(0, codebook_size, (batch, grid, grid), generator=generator)
    entries = reference.quantize.get_codebook_entry(codes)  # a permuted (channels-last) view
    ref_decoded = reference.decoder(entries).clamp(0.0, 1.0)
    ref_contiguous = reference.decoder(entries.contiguous()).clamp(0.0, 1.0)
    ref_raw = reference.decoder(reference.quantize.get_codebook_entry(codes.reshape(batch, -1)))

    logits = 3 * torch.randn(batch, codebook_size, grid, grid, generator=generator)
    probabilities = logits.softmax(1)
    soft_latents = torch.einsum("nchw,cd->ndhw", probabilities, reference.quantize.embedding.weight)
    ref_soft = reference.decoder(soft_latents).clamp(0.0, 1.0)
    ref_soft_contiguous = reference.decoder(soft_latents.contiguous()).clamp(0.0, 1.0)
    ours_soft_first = ours.decode_soft_codes(probabilities, dim=1).reconstruction
    ours_soft_last = ours.decode_soft_codes(probabilities.permute(0, 2, 3, 1)).reconstruction
    return [
        ("encoder latents", max_diff(encoded.latents, hidden)),
        ("quantized latents", max_diff(encoded.quantized, ref_quantized)),
        ("code agreement (%)", agreement),
        ("codes in use", float(encoded.codes.unique().numel())),
        ("quantizer loss", max_diff(encoded.quantization_loss, ref_loss)),
        ("decode of given codes (clamped)", max_diff(ours.decode_codes(codes).reconstruction, ref_decoded)),
        ("  official input made contiguous", max_diff(ours.decode_codes(codes).reconstruction, ref_contiguous)),
        ("  official vs itself, layout only", max_diff(ref_contiguous, ref_decoded)),
        ("decode of given (B, h*w) codes, raw", max_diff(
            ours.decode_codes(codes.reshape(batch, -1), clamp=False).reconstruction, ref_raw)),
        ("soft-code decode, (B, K, h, w)", max_diff(ours_soft_first, ref_soft)),
        ("soft-code decode, (B, h, w, K)", max_diff(ours_soft_last, ref_soft)),
        ("  soft latents", max_diff(ours.embed_soft_codes(probabilities, dim=1), soft_latents)),
        ("  official input made contiguous", max_diff(ours_soft_last, ref_soft_contiguous)),
        ("scale: max |latent|", float(hidden.abs().max())),
        ("scale: max |raw decode|", float(ref_raw.abs().max())),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official-repo", required=True, help="a checkout of github.com/bytedance/1d-tokenizer")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--presets", nargs="+", default=list(CONFIGS), choices=sorted(MASKGIT_VQGAN_PRESETS))
    args = parser.parse_args(argv)
    official_file = Path(args.official_repo) / OFFICIAL_FILE
    if not official_file.is_file():
        print(f"verify_maskgit_vqgan: error: {official_file} not found; --official-repo must be a checkout of "
              f"github.com/bytedance/1d-tokenizer.", file=sys.stderr)
        return 2
    official = load_module(official_file, "official_maskgit_vqgan")
    converter = load_module(HERE / "convert_maskgit_vqgan.py", "convert_maskgit_vqgan")
    torch.set_grad_enabled(False)
    transformers.utils.logging.disable_progress_bar()
    failures = []
    with tempfile.TemporaryDirectory() as work:
        for name in args.presets:
            start = time.perf_counter()
            batch = CONFIGS.get(name, 2)
            rows = compare(official, converter, name, batch, args.seed, Path(work))
            preset = MASKGIT_VQGAN_PRESETS[name]
            print(f"\n{name}: {preset['image_size']} px, channel_mult {preset['channel_mult']}, codebook "
                  f"{preset['codebook_size']} x {preset['z_channels']}, batch {batch} "
                  f"({time.perf_counter() - start:.1f} s)")
            for label, value in rows:
                if label == "code agreement (%)":
                    ok = value == 100.0
                elif label.startswith(("scale", "codes in use")):
                    ok = True
                else:
                    ok = value <= args.tolerance
                shown = f"{value:g}" if "%" in label or label.startswith(("scale", "codes")) else f"{value:.3e}"
                print(f"  {label:38s} {shown}" + ("" if ok else "  <-- FAIL"))
                if not ok:
                    failures.append(f"{name}: {label}")
    print(f"\n{'PASS' if not failures else 'FAIL: ' + ', '.join(failures)} (tolerance {args.tolerance:g}, "
          f"torch {torch.__version__})")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
