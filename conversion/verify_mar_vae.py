#!/usr/bin/env python
"""Check `convert_mar_vae.py` (MAR's KL-16 -> diffusers `AutoencoderKL`) against the official code of LTH14/mar.

    git clone https://github.com/LTH14/mar /tmp/mar       # only models/vae.py is used
    python conversion/verify_mar_vae.py --official-repo /tmp/mar
    python conversion/verify_mar_vae.py --official-repo /tmp/mar --small     # the small config only (seconds)

For MAR's KL-16 (`AutoencoderKL(embed_dim=16, ch_mult=(1, 1, 2, 2, 4))`, 256 px, as `main_mar.py` builds it) and a
small MAR-style config (the official `Encoder` / `Decoder` with 32 channels, `ch_mult` (1, 2, 2) at resolution 64,
so that the encoder's attention at 16 x 16 falls on its last stage as in KL-16), the script builds the official VAE
from `PATH/models/vae.py` (loaded as a single file; it needs only torch and numpy), gives it seeded random weights,
saves `{"model": state_dict}` (the layout of `kl16.ckpt`) to a temporary file, converts it with `convert_mar_vae.py`,
loads the result with `AutoencoderKL.from_pretrained` and compares, in float32:

* the posterior on random images in [-1, 1] (MAR normalizes images with mean 0.5, std 0.5): official
  `encode(x).mean / .std` against our `encode(x).latent_dist.mean / .std`;
* `decode(z)` for random latents `z = N(0, 1) / 0.2325` (MAR decodes `tokens / 0.2325`).

Random weights: convolution and linear weights N(0, 1 / fan_in), GroupNorm scales 1 + N(0, 0.1) and shifts N(0, 0.1),
biases N(0, 0.02). Exit status 0 when every difference is <= --tolerance.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from diffusers import AutoencoderKL
from diffusers.utils import logging as diffusers_logging
from torch import nn

from spectralar_hf.vae_presets import MAR_KL16_SCALING_FACTOR

HERE = Path(__file__).resolve().parent
OFFICIAL_FILE = Path("models") / "vae.py"
MAR_ATTENTION_RESOLUTIONS = (16,)  # the official Encoder's default; its Decoder has none
GROUP_NORM_SCALE_NOISE = 0.1
BIAS_NOISE = 0.02


@dataclass(frozen=True)
class VerifyConfig:
    """One VAE to compare: the official constructor arguments and the batch of images."""

    name: str
    channels: int  # the official `ch` (MAR: 128)
    ch_mult: tuple[int, ...]
    resolution: int  # image side; the official Encoder places attention where the feature maps are 16 x 16
    embed_dim: int  # latent channels
    batch: int


KL16 = VerifyConfig("kl-16", channels=128, ch_mult=(1, 1, 2, 2, 4), resolution=256, embed_dim=16, batch=1)
SMALL = VerifyConfig("small", channels=32, ch_mult=(1, 2, 2), resolution=64, embed_dim=4, batch=2)


def load_module(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_official(official: ModuleType, config: VerifyConfig) -> nn.Module:
    """The official `AutoencoderKL`: MAR's own constructor for KL-16; for other sizes the same object with the
    official `Encoder` / `Decoder` of those sizes (its constructor fixes `ch=128` and `resolution=256`)."""
    with contextlib.redirect_stdout(io.StringIO()):  # the official Decoder prints its latent shape
        if config == KL16:
            return official.AutoencoderKL(embed_dim=config.embed_dim, ch_mult=config.ch_mult).eval()
        model = official.AutoencoderKL.__new__(official.AutoencoderKL)
        nn.Module.__init__(model)
        sizes = dict(ch=config.channels, ch_mult=config.ch_mult, resolution=config.resolution,
                     z_channels=config.embed_dim)
        model.encoder = official.Encoder(**sizes, attn_resolutions=MAR_ATTENTION_RESOLUTIONS)
        model.decoder = official.Decoder(**sizes)
        model.use_variational = True
        model.embed_dim = config.embed_dim
        model.quant_conv = nn.Conv2d(2 * config.embed_dim, 2 * config.embed_dim, 1)
        model.post_quant_conv = nn.Conv2d(config.embed_dim, config.embed_dim, 1)
    return model.eval()


def our_config(config: VerifyConfig) -> dict:
    """The `AutoencoderKL` fields of `config` over the kl-16 preset (what `convert_mar_vae.py --config` takes)."""
    stages = len(config.ch_mult)
    attention = [config.resolution // 2**i in MAR_ATTENTION_RESOLUTIONS for i in range(stages)]
    return dict(
        block_out_channels=[config.channels * mult for mult in config.ch_mult], latent_channels=config.embed_dim,
        sample_size=config.resolution,
        down_block_types=["AttnDownEncoderBlock2D" if attn else "DownEncoderBlock2D" for attn in attention],
        up_block_types=["UpDecoderBlock2D"] * stages,
    )


@torch.no_grad()
def randomize(model: nn.Module, generator: torch.Generator) -> None:
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            fan_in = module.weight[0].numel()
            module.weight.copy_(torch.randn(module.weight.shape, generator=generator) / math.sqrt(fan_in))
            if module.bias is not None:
                module.bias.copy_(BIAS_NOISE * torch.randn(module.bias.shape, generator=generator))
        elif isinstance(module, nn.GroupNorm):
            module.weight.copy_(1 + GROUP_NORM_SCALE_NOISE * torch.randn(module.weight.shape, generator=generator))
            module.bias.copy_(GROUP_NORM_SCALE_NOISE * torch.randn(module.bias.shape, generator=generator))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


@torch.no_grad()
def compare(official: ModuleType, converter: ModuleType, config: VerifyConfig, seed: int,
            work: Path) -> list[tuple[str, float]]:
    generator = torch.Generator().manual_seed(seed)
    reference = build_official(official, config)
    randomize(reference, generator)
    checkpoint = work / f"{config.name}.ckpt"
    torch.save({"model": reference.state_dict()}, checkpoint)
    arguments = ["--checkpoint", str(checkpoint), "--output", str(work / config.name)]
    if config != KL16:
        (work / f"{config.name}.json").write_text(json.dumps(our_config(config)))
        arguments += ["--config", str(work / f"{config.name}.json")]
    status = converter.main(arguments)
    if status != 0:
        raise SystemExit(f"the converter failed on {config.name} (status {status})")
    ours = AutoencoderKL.from_pretrained(work / config.name).eval()
    num_parameters = sum(p.numel() for p in ours.parameters())
    if num_parameters != sum(p.numel() for p in reference.parameters()):
        raise SystemExit(f"{config.name}: {num_parameters} parameters, the official VAE has "
                         f"{sum(p.numel() for p in reference.parameters())}")

    images = torch.rand(config.batch, 3, config.resolution, config.resolution, generator=generator) * 2 - 1
    posterior = reference.encode(images)
    latent_dist = ours.encode(images).latent_dist
    side = config.resolution // 2 ** (len(config.ch_mult) - 1)
    latents = torch.randn(config.batch, config.embed_dim, side, side, generator=generator) / MAR_KL16_SCALING_FACTOR
    decoded = reference.decode(latents)
    return [
        ("encode mean", max_diff(latent_dist.mean, posterior.mean)),
        ("encode std", max_diff(latent_dist.std, posterior.std)),
        ("decode(z)", max_diff(ours.decode(latents).sample, decoded)),
        ("scale: max |mean|", float(posterior.mean.abs().max())),
        ("scale: max std", float(posterior.std.max())),
        ("scale: max |decode(z)|", float(decoded.abs().max())),
        ("parameters", float(num_parameters)),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official-repo", required=True, help="a checkout of github.com/LTH14/mar")
    parser.add_argument("--small", action="store_true", help="only the small config (fast), not the 256 px KL-16")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    official_file = Path(args.official_repo) / OFFICIAL_FILE
    if not official_file.is_file():
        print(f"verify_mar_vae: error: {official_file} not found; --official-repo must be a checkout of "
              f"github.com/LTH14/mar.", file=sys.stderr)
        return 2
    official = load_module(official_file, "official_mar_vae")
    converter = load_module(HERE / "convert_mar_vae.py", "convert_mar_vae")
    diffusers_logging.disable_progress_bar()
    failures = []
    configs = [SMALL] if args.small else [SMALL, KL16]
    with tempfile.TemporaryDirectory() as work:
        for config in configs:
            start = time.perf_counter()
            rows = compare(official, converter, config, args.seed, Path(work))
            print(f"\n{config.name}: official AutoencoderKL(embed_dim={config.embed_dim}, ch_mult={config.ch_mult}), "
                  f"ch {config.channels}, {config.resolution} px, batch {config.batch} "
                  f"({time.perf_counter() - start:.1f} s)")
            for label, value in rows:
                informative = label.startswith("scale") or label == "parameters"
                ok = informative or value <= args.tolerance
                shown = f"{value:.6g}" if label.startswith("scale") else (
                    f"{int(value):,}" if label == "parameters" else f"{value:.3e}")
                print(f"  {label:24s} {shown}" + ("" if ok else "  <-- FAIL"))
                if not ok:
                    failures.append(f"{config.name}: {label}")
    print(f"\n{'PASS' if not failures else 'FAIL: ' + ', '.join(failures)} (tolerance {args.tolerance:g}, "
          f"torch {torch.__version__})")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
