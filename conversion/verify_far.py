#!/usr/bin/env python
"""Check `convert_far.py` (official FAR-B/L/H -> `FARTransformer`) against the official code of yuhuUSTC/FAR.

    git clone https://github.com/yuhuUSTC/FAR /tmp/far      # models/far.py, models/diffloss.py, diffusion/ are used
    python -m venv --system-site-packages /tmp/venv-far && /tmp/venv-far/bin/pip install --no-deps timm==0.9.12
    /tmp/venv-far/bin/python conversion/verify_far.py --official-repo /tmp/far
    /tmp/venv-far/bin/python conversion/verify_far.py --official-repo /tmp/far --models far_base far_large

The official transformer blocks are timm's `vision_transformer.Block`, so timm must be installed (FAR's environment
pins 0.9.12; `--no-deps` skips its torchvision requirement). timm's package import and `models/far.py` also import
`torchvision` and `matplotlib`, which are NOT run on the compared paths (image grids, plotting, datasets,
transforms): when they are not installed, this script puts stub modules into `sys.modules` for exactly the imports
that run (`torchvision.ops.misc.FrozenBatchNorm2d`, `torchvision.datasets.{CIFAR100, CIFAR10, MNIST, KMNIST,
FashionMNIST, ImageFolder}`, `torchvision.transforms(.functional)`, `torchvision.utils.make_grid`,
`matplotlib.pyplot`); every stubbed name raises if it is ever used, and the output lists the stubs.

For each model (default `far_base`; `far_large` and `far_huge` are bigger), the script builds the official `FAR` with
the released training arguments (train.sh / main_far.py: 256 px, KL-16 latents, `mask=False`, buffer 64, head
`diffloss_d` x 1024), gives it seeded random weights (linear weights N(0, 1/fan_in), `index_cond_embed` N(0, 1/F^2)
as its input is the level value 0 .. F-1, linear biases N(0, 0.02), LayerNorm scales 1 + N(0, 0.1) and shifts
N(0, 0.1), the class, fake-latent, mask and position embeddings N(0, 0.02); the head's AdaLN and final layers are
non-zero, so its output is not trivially 0), saves `{"model": raw, "model_ema": ema, "args": Namespace(...)}` (the
layout of `checkpoint-last.pth`; the raw weights differ from the EMA ones, which the converter must pick), converts it
with `convert_far.py`, loads the result with `FARTransformer.from_pretrained` and compares in float32, eval mode
(dropout off):

* (a) the transformer's per-token condition: official `forward_mae_decoder(forward_mae_encoder(tokens,
  class_emb(labels)))` (the `mask=None` path of a `mask=False` model) against our `conditions(tokens, labels)`, for
  latents filtered to several input levels; and the null class (official `fake_latent`) against our class id 1000;
* (b) the diffusion head's output (noise prediction and variance interpolation): official `diffloss.net(x_t, t, c,
  index)` with `index` the float `(N, 1)` level value against our `diffusion_head(x_t, t, c, levels)`, at every level
  0 .. F-1;
* (c) the filter: the two `F.interpolate` calls of the official `processingpregt_latent` (area down to `k x k`,
  bicubic back; on the CPU, as the official function calls `.cuda()`) against `spectralar_hf.spectral.
  frequency_filter(x, k, 16)` for every level `k`.

Exit status 0 when every difference is <= --tolerance.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import math
import sys
import tempfile
import time
import types
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import logging as transformers_logging

from spectralar_hf import FARTransformer
from spectralar_hf.spectral import frequency_filter

HERE = Path(__file__).resolve().parent
OFFICIAL_FILES = (Path("models") / "far.py", Path("models") / "diffloss.py", Path("diffusion") / "__init__.py")

# Imports of timm 0.9.12's package and of models/far.py that are not run on the compared paths.
STUBBED_IMPORTS: dict[str, tuple[str, ...]] = {
    "torchvision": (),
    "torchvision.ops": (),
    "torchvision.ops.misc": ("FrozenBatchNorm2d",),  # timm.layers (isinstance checks when freezing BatchNorm)
    "torchvision.datasets": ("CIFAR100", "CIFAR10", "MNIST", "KMNIST", "FashionMNIST", "ImageFolder"),  # timm.data
    "torchvision.transforms": (),  # timm.data.transforms_factory, far.py (`import torchvision.transforms as T`)
    "torchvision.transforms.functional": (),  # timm.data.transforms (it tests for InterpolationMode itself)
    "torchvision.utils": ("make_grid",),  # far.py's save_image
    "matplotlib": (),
    "matplotlib.pyplot": (),  # far.py (`import matplotlib.pyplot as plt`, used when saving evaluation images)
}

# the released training arguments (train.sh, main_far.py defaults) that shape the model
LATENT_CHANNELS, LATENT_SIZE, IMAGE_SIZE, VAE_STRIDE = 16, 16, 256, 16
NUM_LEVELS = LATENT_SIZE
NULL_CLASS = 1000
HEAD_DEPTHS = {"far_base": 6, "far_large": 3, "far_huge": 3}  # --diffloss_d of train.sh / sample.sh
HEAD_WIDTH = 1024  # --diffloss_w
BUFFER_SIZE = 64
RELEASED_ARGS = dict(img_size=IMAGE_SIZE, vae_stride=VAE_STRIDE, patch_size=1, vae_embed_dim=LATENT_CHANNELS,
                     mask=False, mask_ratio_min=0.7, label_drop_prob=0.1, class_num=1000, attn_dropout=0.1,
                     proj_dropout=0.1, buffer_size=BUFFER_SIZE, diffloss_w=HEAD_WIDTH, num_sampling_steps="100",
                     diffusion_batch_mul=4)

# random weights
BIAS_STD = 0.02
NORM_NOISE = 0.1
EMBEDDING_STD = 0.02
RAW_OFFSET_STD = 0.01  # the raw weights are the EMA ones plus this noise (the converter must take the EMA ones)
EMBEDDINGS = ("class_emb.weight", "fake_latent", "mask_token", "encoder_pos_embed_learned",
              "decoder_pos_embed_learned", "diffusion_pos_embed_learned")

# what is compared
LABELS = [207, 360, 999]
INPUT_LEVELS = [0, 3, 10]  # per row of (a): the blank input, a coarse and a fine one
HEAD_ROWS_PER_LEVEL = 8


@dataclass(frozen=True)
class Row:
    label: str
    value: float
    informative: bool = False  # a scale or a count, not a difference


def _unavailable(name: str) -> type:
    def fail(*args, **kwargs):
        raise RuntimeError(f"{name} is a stub installed by verify_far.py (the package is not installed); it must not "
                           f"be used on the compared paths.")

    return type(name.rsplit(".", 1)[-1], (), {"__init__": fail, "__call__": fail})


def install_stubs() -> list[str]:
    """Stub modules for the imports of `STUBBED_IMPORTS` whose top-level package is not installed; their names."""
    installed = {top for top in {name.split(".")[0] for name in STUBBED_IMPORTS}
                 if top in sys.modules or importlib.util.find_spec(top) is not None}
    stubbed = []
    for name, attributes in STUBBED_IMPORTS.items():
        if name.split(".")[0] in installed:
            continue  # the real package is installed: use it
        module = types.ModuleType(name, "stub installed by conversion/verify_far.py")
        module.__path__ = []  # a package, so that submodules resolve to the stubs below
        for attribute in attributes:
            setattr(module, attribute, _unavailable(f"{name}.{attribute}"))
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)
        stubbed.append(name)
    return stubbed


def load_official(repo: Path) -> ModuleType:
    """`models.far` of the checkout at `repo` (with its `models.diffloss` and `diffusion` package)."""
    sys.path.insert(0, str(repo))
    try:
        return importlib.import_module("models.far")
    finally:
        sys.path.remove(str(repo))


def load_converter() -> ModuleType:
    spec = importlib.util.spec_from_file_location("convert_far", HERE / "convert_far.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@torch.no_grad()
def randomize(model: nn.Module, generator: torch.Generator) -> None:
    """Seeded random weights everywhere (see the module docstring)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            fan_in = NUM_LEVELS**2 if name.endswith("index_cond_embed") else module.in_features
            module.weight.copy_(torch.randn(module.weight.shape, generator=generator) / math.sqrt(fan_in))
            if module.bias is not None:
                module.bias.copy_(BIAS_STD * torch.randn(module.bias.shape, generator=generator))
        elif isinstance(module, nn.LayerNorm) and module.weight is not None:
            module.weight.copy_(1 + NORM_NOISE * torch.randn(module.weight.shape, generator=generator))
            module.bias.copy_(NORM_NOISE * torch.randn(module.bias.shape, generator=generator))
    parameters = dict(model.named_parameters())
    for name in EMBEDDINGS:
        parameters[name].copy_(EMBEDDING_STD * torch.randn(parameters[name].shape, generator=generator))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def official_filter(latents: torch.Tensor, level: int) -> torch.Tensor:
    """The official `processingpregt_latent` for one level `k` (and the sampler's re-filtering), on the CPU:
    zeros at level 0, else area down-sampling to `k x k` and bicubic up-sampling back."""
    if level == 0:
        return torch.zeros_like(latents)
    small = F.interpolate(latents, size=(level, level), mode="area")
    return F.interpolate(small, size=latents.shape[-2:], mode="bicubic")


@torch.no_grad()
def compare(official: ModuleType, converter: ModuleType, model_name: str, seed: int, work: Path) -> list[Row]:
    generator = torch.Generator().manual_seed(seed)
    with contextlib.redirect_stdout(io.StringIO()):
        reference = getattr(official, model_name)(diffloss_d=HEAD_DEPTHS[model_name], **RELEASED_ARGS).eval()
    randomize(reference, generator)
    ema = reference.state_dict()
    raw = {key: value + RAW_OFFSET_STD * torch.randn(value.shape, generator=generator) for key, value in ema.items()}
    arguments = argparse.Namespace(model=model_name, diffloss_d=HEAD_DEPTHS[model_name], **RELEASED_ARGS)
    checkpoint = work / f"{model_name}.pth"
    torch.save({"model": raw, "model_ema": ema, "epoch": 399, "args": arguments}, checkpoint)
    del raw
    output = work / model_name
    with contextlib.redirect_stdout(io.StringIO()):
        status = converter.main(["--checkpoint", str(checkpoint), "--model", model_name, "--output", str(output)])
    if status != 0:
        raise SystemExit(f"the converter failed on {model_name} (status {status})")
    checkpoint.unlink()
    ours = FARTransformer.from_pretrained(output).eval()
    official_parameters = sum(p.numel() for p in reference.parameters())
    our_parameters = ours.num_parameters()
    head_width = ours.config.head_width

    # (a) the transformer's conditions, for inputs filtered to several levels
    latents = torch.randn(len(LABELS), LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE, generator=generator)
    inputs = frequency_filter(latents, torch.tensor(INPUT_LEVELS), NUM_LEVELS)
    tokens = reference.patchify(inputs)
    labels = torch.tensor(LABELS)
    condition = reference.forward_mae_decoder(reference.forward_mae_encoder(tokens, reference.class_emb(labels)))
    our_condition = ours.conditions(ours.patchify(inputs), labels)
    null_embedding = reference.fake_latent.repeat(len(LABELS), 1)
    null_condition = reference.forward_mae_decoder(reference.forward_mae_encoder(tokens, null_embedding))
    our_null_condition = ours.conditions(ours.patchify(inputs), torch.full_like(labels, NULL_CLASS))

    # (b) the head at every level, on the official conditions
    rows = NUM_LEVELS * HEAD_ROWS_PER_LEVEL
    levels = torch.arange(NUM_LEVELS).repeat_interleave(HEAD_ROWS_PER_LEVEL)
    x_t = torch.randn(rows, ours.config.token_dim, generator=generator)
    timesteps = torch.randint(0, ours.config.num_train_timesteps, (rows,), generator=generator)
    head_condition = condition.reshape(-1, condition.shape[-1])[torch.randperm(condition.shape[0] * condition.shape[1],
                                                                               generator=generator)[:rows]]
    head_output = reference.diffloss.net(x_t, timesteps, head_condition, levels.float().unsqueeze(1))
    our_head_output = ours.diffusion_head(x_t, timesteps, head_condition, levels)
    per_level = (head_output - our_head_output).abs().view(NUM_LEVELS, -1).amax(dim=1)

    # (c) the filter at every level
    filter_diff = max(max_diff(official_filter(latents, level), frequency_filter(latents, level, NUM_LEVELS))
                      for level in range(NUM_LEVELS))
    return [
        Row(f"(a) condition, labels {LABELS}, input levels {INPUT_LEVELS}", max_diff(our_condition, condition)),
        Row("(a) condition, null class (fake_latent / id 1000)", max_diff(our_null_condition, null_condition)),
        Row(f"(b) head output (eps, variance), levels 0..{NUM_LEVELS - 1}", float(per_level.max())),
        *[Row(f"    level {level:2d}", float(per_level[level])) for level in (0, 1, 5, 10, NUM_LEVELS - 1)],
        Row(f"(c) filter, levels 0..{NUM_LEVELS - 1}", filter_diff),
        Row("scale: max |condition|", float(condition.abs().max()), True),
        Row("scale: max |null - class condition|", float((null_condition - condition).abs().max()), True),
        Row("scale: max |head output|", float(head_output.abs().max()), True),
        Row("scale: max |head(level 15) - head(level 0)|",
            float((reference.diffloss.net(x_t, timesteps, head_condition, torch.full((rows, 1), NUM_LEVELS - 1.0))
                   - reference.diffloss.net(x_t, timesteps, head_condition, torch.zeros(rows, 1))).abs().max()), True),
        Row("parameters, official", official_parameters, True),
        Row(f"parameters, ours (+ {NUM_LEVELS - 2} x {head_width}: level table for Linear(1, w))", our_parameters,
            True),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official-repo", required=True, help="a checkout of github.com/yuhuUSTC/FAR")
    parser.add_argument("--models", nargs="+", default=["far_base"], choices=sorted(HEAD_DEPTHS),
                        help="the official models to build and compare (default: far_base)")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    repo = Path(args.official_repo)
    absent = [str(repo / path) for path in OFFICIAL_FILES if not (repo / path).is_file()]
    if absent:
        print(f"verify_far: error: {', '.join(absent)} not found; --official-repo must be a checkout of "
              f"github.com/yuhuUSTC/FAR.", file=sys.stderr)
        return 2
    if importlib.util.find_spec("timm") is None:
        print("verify_far: error: timm is not installed; the official blocks are timm's vision_transformer.Block "
              "(pip install --no-deps timm==0.9.12, FAR's version).", file=sys.stderr)
        return 2
    stubbed = install_stubs()
    official = load_official(repo)
    converter = load_converter()
    transformers_logging.disable_progress_bar()
    import timm

    print(f"official code: {repo} (models/far.py, models/diffloss.py, diffusion/), timm {timm.__version__}, "
          f"torch {torch.__version__}")
    print("stub modules (not installed; imported but not run on the compared paths): "
          + (", ".join(stubbed) if stubbed else "none"))
    failures = []
    with tempfile.TemporaryDirectory() as work:
        for model_name in args.models:
            start = time.perf_counter()
            rows = compare(official, converter, model_name, args.seed, Path(work))
            print(f"\n{model_name}: official {model_name}(diffloss_d={HEAD_DEPTHS[model_name]}, "
                  f"diffloss_w={HEAD_WIDTH}, buffer_size={BUFFER_SIZE}, mask=False), converted from model_ema "
                  f"({time.perf_counter() - start:.1f} s)")
            for row in rows:
                ok = row.informative or row.value <= args.tolerance
                shown = (f"{int(row.value):,}" if row.label.startswith("parameters") else f"{row.value:.6g}") \
                    if row.informative else f"{row.value:.3e}"
                print(f"  {row.label:62s} {shown}" + ("" if ok else "  <-- FAIL"))
                if not ok:
                    failures.append(f"{model_name}: {row.label.strip()}")
    print(f"\n{'PASS' if not failures else 'FAIL: ' + ', '.join(failures)} (tolerance {args.tolerance:g})")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
