"""Causality of visual token sequences: the R^2 analysis of SpectralAR §4.2 (Eq. 10, Table 1).

Each 32x32 RGB image becomes three 4-token sequences ``t_1..t_4``:

* **raster-scan**: the four 16x16 patches in raster order; a token's elements are its 16*16*3 pixels;
* **scale-wise**: the image resampled to 8x8, 16x16, 24x24 and 32x32 with area interpolation
  (``F.interpolate(mode="area")``, i.e. adaptive average pooling, the downsampling of VAR's multi-scale
  quantizer); the 32x32 "scale" is the image itself;
* **spectral**: the sub-images of Eq. 5, ``lowpass(x, omega)`` for frequency thresholds 8, 16, 24, 32.

For a token ``t_i`` and the concatenation ``t_<i`` of all earlier tokens, ``R^2_{m,n}`` is the squared Pearson
correlation across the dataset between element ``m`` of ``t_i`` and element ``n`` of ``t_<i``, and Eq. 10 is
``R^2_avg(t_i; t_<i) = mean_m max_n R^2_{m,n}``. It is computed from column-standardised float64 matrices with
chunked matmuls. A constant element (zero variance across the dataset) has no defined correlation; its ``R^2`` is
defined as 0 (it neither explains nor is explained by anything), so it never produces NaN.

Figure 4 ("frequency of each element having the highest correlation with another one") counts, for every element
``m`` of every token ``t_i`` (i >= 2), which element ``n* = argmax_n R^2_{m,n}`` of ``t_<i`` it correlates best with,
i.e. the ``max_n`` of Eq. 10 replaced by its ``argmax``: a histogram over the *source* element ``n`` (not over the
distance). :func:`best_predictor_histogram` computes it and :func:`draw_figure4` draws it as one heat map per earlier
token, at the token's pixel positions, so that raster-scan's dependency on patch boundaries is visible.

Run ``python -m spectralar_hf.evaluation.causality --num_images 10000 [--figure4 figure4.png]``: CIFAR-100's 10,000
test images (the "validation set" of the paper) when the Hub is reachable, else random 32x32 crops of real photos.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageColor, ImageDraw, ImageFont
from tqdm.auto import tqdm

from ..argtypes import number_type
from ..spectral import lowpass

__all__ = [
    "PAPER_TABLE_1",
    "ROW_NAMES",
    "SEQUENCE_TYPES",
    "best_predictor_histogram",
    "build_sequences",
    "causality_table",
    "draw_figure4",
    "format_table",
    "load_cifar100_validation",
    "main",
    "offline_natural_crops",
    "r2_avg",
    "raster_tokens",
    "scale_tokens",
    "spectral_tokens",
]

logger = logging.getLogger(__name__)

SEQUENCE_TYPES = ("raster", "scale", "spectral")
SEQUENCE_LABELS = {"raster": "Raster-scan", "scale": "Scale-wise", "spectral": "Spectral"}
ROW_NAMES = ("R2_avg(t2; t1)", "R2_avg(t3; t1, t2)", "R2_avg(t4; t1, t2, t3)", "Average")
# SpectralAR (Huang et al. 2025), Table 1: R^2_avg of t2, t3, t4 and their average on CIFAR-100's 10k test images.
PAPER_TABLE_1 = {
    "raster": (0.471, 0.366, 0.525, 0.454),
    "scale": (0.889, 0.953, 0.943, 0.928),
    "spectral": (0.916, 0.977, 0.994, 0.962),
}
# §4.2: four tokens; for 32x32 images the scales and frequency thresholds are 8, 16, 24, 32 (= size * i / 4).
NUM_TOKENS = 4
PAPER_IMAGE_SIZE = 32
# The paper's data: CIFAR-100's 10,000-image test split ("validation set"), image column "img".
CIFAR100_DATASET = "uoft-cs/cifar100"
CIFAR100_SPLIT = "test"
CIFAR100_IMAGE_COLUMN = "img"
# A column counts as constant when its std is below this fraction of its largest magnitude (float64 rounding of a
# constant column leaves a std of ~1e-16 relative; real pixels are far above).
CONSTANT_RTOL = 1e-9
DEFAULT_CHUNK_SIZE = 512
# Offline crops: the side of the crop window as a fraction of the photo's shorter side (coarse, CIFAR-like views).
OFFLINE_CROP_SCALE = (0.1, 0.5)
# scikit-image photos for the offline crops: every bundled photo except "horse" (a binary silhouette).
OFFLINE_PHOTOS = (
    "astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
    "camera", "coins", "moon", "brick", "grass", "gravel",
)
# Figure 4 geometry in pixels: a token's heat map is FIGURE4_CELL wide (a multiple of 8, 16, 24 and 32, so every
# token side of §4.2 upscales by an integer factor); heat-map colours run through the viridis stops, 0 -> max count.
FIGURE4_CELL = 192
FIGURE4_PADDING = 12
FIGURE4_TEXT_HEIGHT = 16
FIGURE4_COLORBAR_HEIGHT = 10
FIGURE4_COLORS = ("#440154", "#3b528b", "#21918c", "#5ec962", "#fde725")
FIGURE4_CAPTION = ("Figure 4: how often each element (pixel position, channels summed) of an earlier token is the one "
                   "most correlated (max R^2, Eq. 10) with an element of a later token; colour scale per panel.")


# ---------------------------------------------------------------------------------------------------------------
# Token sequences
# ---------------------------------------------------------------------------------------------------------------


def _check_images(images: torch.Tensor) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"Expected square (N, C, S, S) images, got {getattr(images, 'shape', type(images))}.")
    if images.shape[-1] % NUM_TOKENS:
        raise ValueError(f"The image side must be divisible by {NUM_TOKENS} (32 in the paper), got "
                         f"{images.shape[-1]}.")
    if images.shape[0] < 2:
        raise ValueError(f"Correlations need at least 2 images, got {images.shape[0]}.")
    return images.double()


def _levels(size: int) -> list[int]:
    return [size * i // NUM_TOKENS for i in range(1, NUM_TOKENS + 1)]


def raster_tokens(images: torch.Tensor) -> list[torch.Tensor]:
    """Four ``(N, C * S/2 * S/2)`` tokens: the 2x2 grid of patches in raster order (float64)."""
    x = _check_images(images)
    half = x.shape[-1] // 2
    return [x[..., row:row + half, col:col + half].flatten(1) for row in (0, half) for col in (0, half)]


def scale_tokens(images: torch.Tensor, sizes: Sequence[int] | None = None) -> list[torch.Tensor]:
    """Tokens ``(N, C * s * s)`` of the image area-resampled to each side ``s`` (default S/4, S/2, 3S/4, S)."""
    x = _check_images(images)
    sizes = list(sizes) if sizes is not None else _levels(x.shape[-1])
    return [(x if s == x.shape[-1] else F.interpolate(x, size=(s, s), mode="area")).flatten(1) for s in sizes]


def spectral_tokens(images: torch.Tensor, omegas: Sequence[int] | None = None) -> list[torch.Tensor]:
    """Tokens ``(N, C * S * S)``: the Eq. 5 sub-images ``lowpass(x, omega)`` (default omega = S/4, S/2, 3S/4, S)."""
    x = _check_images(images)
    omegas = list(omegas) if omegas is not None else _levels(x.shape[-1])
    return [lowpass(x, int(omega)).flatten(1) for omega in omegas]


def build_sequences(images: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    """The three sequences of §4.2 for ``(N, C, S, S)`` images: ``{"raster" | "scale" | "spectral": [t1..t4]}``."""
    return {"raster": raster_tokens(images), "scale": scale_tokens(images), "spectral": spectral_tokens(images)}


# ---------------------------------------------------------------------------------------------------------------
# R^2 (Eq. 10)
# ---------------------------------------------------------------------------------------------------------------


def _standardize(columns: torch.Tensor) -> torch.Tensor:
    """``(N, K)`` -> float64 columns with zero mean and unit *norm* (so ``Z_a.T @ Z_b`` is the correlation);
    constant columns become zeros (correlation 0)."""
    x = columns.double()
    centered = x - x.mean(dim=0, keepdim=True)
    norm = centered.pow(2).sum(dim=0).sqrt()
    scale = x.abs().amax(dim=0) * (x.shape[0] ** 0.5)
    constant = norm <= CONSTANT_RTOL * scale
    return torch.where(constant, torch.zeros_like(centered), centered / torch.where(constant, 1.0, norm))


def _best_context_elements(target: torch.Tensor, context: torch.Tensor | Sequence[torch.Tensor],
                           chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """For each element ``m`` of ``target``: ``max_n R^2_{m,n}`` over the elements ``n`` of ``context``, and the
    ``argmax``. Arguments as in :func:`r2_avg`.

    Returns:
        ``(M,)`` float64 maxima in [0, 1], and ``(M,)`` int64 indices ``n*`` into the columns of the concatenated
        context (the first one on ties); ``-1`` where the maximum is 0 (a constant element: no defined correlation).
    """
    blocks = [context] if isinstance(context, torch.Tensor) else list(context)
    if target.dim() != 2 or any(block.dim() != 2 or block.shape[0] != target.shape[0] for block in blocks):
        raise ValueError(f"R^2 needs an (N, M) target and (N, K) context with the same N, got "
                         f"{tuple(target.shape)} and {[tuple(block.shape) for block in blocks]}.")
    z_target = _standardize(target)
    z_context = [_standardize(block) for block in blocks]
    offsets = np.cumsum([0] + [block.shape[1] for block in blocks[:-1]]).tolist()
    best = torch.zeros(z_target.shape[1], dtype=torch.float64)
    best_index = torch.full((z_target.shape[1],), -1, dtype=torch.int64)
    for start in range(0, z_target.shape[1], chunk_size):
        window = slice(start, start + chunk_size)
        chunk = z_target[:, window].T.contiguous()  # (m, N)
        for offset, block in zip(offsets, z_context):
            r2, index = (chunk @ block).pow_(2).max(dim=1)
            better = r2 > best[window]  # strict: an earlier block keeps its ties
            best[window] = torch.where(better, r2, best[window])
            best_index[window] = torch.where(better, index + offset, best_index[window])
    return best.clamp_(max=1.0), best_index


def r2_avg(target: torch.Tensor, context: torch.Tensor | Sequence[torch.Tensor],
           chunk_size: int = DEFAULT_CHUNK_SIZE) -> float:
    """Eq. 10: ``mean_m max_n corr(target[:, m], context[:, n])^2`` across the ``N`` samples.

    Args:
        target: ``(N, M)`` elements of ``t_i`` (one row per image).
        context: ``(N, K)`` elements of ``t_<i``, or a list of such blocks (concatenated along columns).
        chunk_size: target columns per matmul (memory ``chunk_size x K`` float64).

    Returns:
        ``R^2_avg`` in [0, 1]; constant elements have ``R^2 = 0``.
    """
    return float(_best_context_elements(target, context, chunk_size)[0].mean())


def _sequence_statistics(tokens: Sequence[torch.Tensor], chunk_size: int = DEFAULT_CHUNK_SIZE,
                         on_step: Callable[[], object] | None = None) -> tuple[list[float], list[torch.Tensor]]:
    """Eq. 10's ``R^2_avg(t_i; t_<i)`` for i = 2..L and the Figure 4 counts (see :func:`best_predictor_histogram`),
    from one pass of correlations; ``on_step()`` is called after each token."""
    if len(tokens) < 2:
        raise ValueError(f"A sequence needs at least 2 tokens to have earlier elements, got {len(tokens)}.")
    sizes = [token.shape[1] for token in tokens[:-1]]
    counts = torch.zeros(sum(sizes), dtype=torch.int64)
    rows = []
    for i in range(1, len(tokens)):
        best, best_index = _best_context_elements(tokens[i], tokens[:i], chunk_size=chunk_size)
        rows.append(float(best.mean()))
        counts += torch.bincount(best_index[best_index >= 0], minlength=counts.numel())
        if on_step is not None:
            on_step()
    return rows, list(counts.split(sizes))


def best_predictor_histogram(tokens: Sequence[torch.Tensor],
                             chunk_size: int = DEFAULT_CHUNK_SIZE) -> list[torch.Tensor]:
    """Figure 4: how often each element of ``t_1..t_{L-1}`` is the earlier element most correlated with an element.

    For every element ``m`` of every token ``t_i`` (i = 2..L), the best predictor is ``argmax_n R^2_{m,n}`` over the
    elements ``n`` of ``t_<i`` (the ``max_n`` of Eq. 10 / Table 1, single-element squared Pearson correlation across
    the samples; first index on ties). Elements whose best ``R^2`` is 0 (constant across the samples) have no best
    predictor and are not counted.

    Args:
        tokens: the sequence ``t_1..t_L`` (L >= 2), each ``(N, K_i)`` with one row per sample.
        chunk_size: target columns per matmul.

    Returns:
        ``L - 1`` int64 tensors; entry ``[j][n]`` counts the elements whose best predictor is element ``n`` of
        ``t_{j+1}`` (shape ``(K_{j+1},)``). The total is the number of counted elements (at most ``K_2 + ... + K_L``).
    """
    return _sequence_statistics(tokens, chunk_size=chunk_size)[1]


def causality_table(
    images: torch.Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE, progress: bool = True, return_histograms: bool = False
) -> dict[str, list[float]] | tuple[dict[str, list[float]], dict[str, list[torch.Tensor]]]:
    """Table 1 for ``(N, C, S, S)`` images (any fixed float scale; correlations are scale-invariant).

    Returns:
        ``{"raster" | "scale" | "spectral": [R2(t2;t1), R2(t3;t1,t2), R2(t4;t1,t2,t3), average]}``; with
        ``return_histograms``, also Figure 4's ``{name: best_predictor_histogram(tokens)}`` from the same
        correlations (no extra matmuls).
    """
    sequences = build_sequences(images)
    table, histograms = {}, {}
    with tqdm(total=len(SEQUENCE_TYPES) * (NUM_TOKENS - 1), desc="R^2", disable=not progress) as bar:
        for name in SEQUENCE_TYPES:
            rows, histograms[name] = _sequence_statistics(sequences[name], chunk_size=chunk_size,
                                                          on_step=lambda: bar.update(1))
            table[name] = rows + [float(np.mean(rows))]
    return (table, histograms) if return_histograms else table


def _heatmap(counts: np.ndarray, vmax: float) -> Image.Image:
    """``(h, w)`` counts -> RGB image through the ``FIGURE4_COLORS`` ramp (0 -> first stop, ``vmax`` -> last)."""
    stops = np.array([ImageColor.getrgb(color) for color in FIGURE4_COLORS], dtype=np.float64)
    fraction = np.clip(counts / max(vmax, 1.0), 0.0, 1.0)
    positions = np.linspace(0.0, 1.0, len(stops))
    rgb = np.stack([np.interp(fraction, positions, stops[:, k]) for k in range(3)], axis=-1)
    return Image.fromarray(rgb.round().astype(np.uint8))


def _token_maps(counts: Sequence[torch.Tensor], channels: int) -> list[np.ndarray]:
    """Per-token ``(K,)`` counts in ``(C, s, s)`` order -> ``(s, s)`` maps summed over the ``channels``."""
    maps = []
    for j, token_counts in enumerate(counts):
        size = token_counts.numel()
        side = math.isqrt(size // channels)
        if token_counts.dim() != 1 or channels * side * side != size:
            raise ValueError(f"draw_figure4 needs square {channels}-channel tokens (K = {channels} * s * s elements "
                             f"in (C, s, s) order); token t{j + 1} has counts of shape {tuple(token_counts.shape)}.")
        maps.append(token_counts.reshape(channels, side, side).sum(dim=0).double().numpy())
    return maps


def draw_figure4(histograms: dict[str, Sequence[torch.Tensor]], table: dict[str, list[float]] | None = None,
                 channels: int = 3) -> Image.Image:
    """Draw Figure 4: one panel per paradigm, side by side, each a row of heat maps, one per earlier token.

    Pixel ``(y, x)`` of token ``t_j``'s map is the number of elements (of ``t_{j+1}..t_L``) whose best predictor is
    an element of ``t_j`` at that position (channels summed); the label under a map is ``t_j``'s share of all best
    predictors and the colour bar spans 0 to the panel's largest count.

    Args:
        histograms: ``{name: best_predictor_histogram(tokens)}``, names from ``SEQUENCE_TYPES`` first (e.g. from
            ``causality_table(..., return_histograms=True)``); each token's ``K = channels * s * s`` counts are in
            the ``(C, s, s)`` order of :func:`build_sequences`.
        table: Table 1 from :func:`causality_table`; its average ``R^2_avg`` (and the paper's) titles each panel.
        channels: channels per pixel position.

    Returns:
        RGB image of width ``len(histograms) * (FIGURE4_PADDING + T * (FIGURE4_CELL + FIGURE4_PADDING))``, with ``T``
        the largest number of earlier tokens.
    """
    if not histograms:
        raise ValueError("draw_figure4 needs at least one paradigm's histogram.")
    names = [name for name in SEQUENCE_TYPES if name in histograms] + [n for n in histograms if n not in SEQUENCE_TYPES]
    maps = {name: _token_maps(histograms[name], channels) for name in names}
    cell, pad, text_h, bar_h = FIGURE4_CELL, FIGURE4_PADDING, FIGURE4_TEXT_HEIGHT, FIGURE4_COLORBAR_HEIGHT
    panel_w = pad + max(len(token_maps) for token_maps in maps.values()) * (cell + pad)
    panel_h = pad + text_h + cell + text_h + bar_h + text_h
    canvas = Image.new("RGB", (len(names) * panel_w, panel_h + text_h + pad), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for p, name in enumerate(names):
        left = p * panel_w
        title = SEQUENCE_LABELS.get(name, name)
        if table is not None and name in table:
            title += f": R^2_avg {table[name][-1]:.3f}"
            if name in PAPER_TABLE_1:
                title += f" (paper {PAPER_TABLE_1[name][-1]:.3f})"
        draw.text((left + panel_w / 2, pad), title, fill="black", font=font, anchor="ma")
        total = sum(float(m.sum()) for m in maps[name])
        vmax = max(float(m.max()) for m in maps[name])
        top = pad + text_h
        for j, token_map in enumerate(maps[name]):
            x = left + pad + j * (cell + pad)
            canvas.paste(_heatmap(token_map, vmax).resize((cell, cell), Image.NEAREST), (x, top))
            share = float(token_map.sum()) / total if total else 0.0
            draw.text((x + cell / 2, top + cell + 2), f"t{j + 1}: {share:.0%}", fill="black", font=font, anchor="ma")
        bar_top, bar_right = top + cell + text_h, left + panel_w - pad
        ramp = np.linspace(0.0, vmax, bar_right - left - pad)[None, :]
        canvas.paste(_heatmap(ramp, vmax).resize((bar_right - left - pad, bar_h), Image.NEAREST), (left + pad, bar_top))
        draw.text((left + pad, bar_top + bar_h + 2), "0", fill="black", font=font, anchor="la")
        draw.text((bar_right, bar_top + bar_h + 2), f"{vmax:g} per position", fill="black", font=font, anchor="ra")
        if p:
            draw.line([(left, pad), (left, panel_h)], fill="#cccccc")
    draw.text((pad, panel_h + 2), FIGURE4_CAPTION, fill="black", font=font, anchor="la")
    return canvas


def format_table(table: dict[str, list[float]], num_images: int | None = None, source: str | None = None) -> str:
    """Markdown table of ``table`` beside the paper's Table 1 (cell: ``ours (paper)``)."""
    header = ["Correlation type"] + [f"{SEQUENCE_LABELS[name]} ours (paper)" for name in SEQUENCE_TYPES]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    for row, row_name in enumerate(ROW_NAMES):
        cells = [f"{table[name][row]:.3f} ({PAPER_TABLE_1[name][row]:.3f})" for name in SEQUENCE_TYPES]
        lines.append("| " + " | ".join([row_name] + cells) + " |")
    caption = []
    if source is not None:
        caption.append(f"data: {source}")
    if num_images is not None:
        caption.append(f"{num_images} images")
    caption.append("paper: CIFAR-100 test set, 10,000 images (SpectralAR Table 1)")
    return "\n".join(lines) + "\n\n" + "; ".join(caption) + "."


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------


def load_cifar100_validation(num_images: int | None = None, cache_dir: str | None = None) -> torch.Tensor:
    """CIFAR-100's 10,000 test images as ``(N, 3, 32, 32)`` float32 in [-1, 1] (via ``datasets``).

    Raises:
        OSError: the dataset cannot be loaded (offline, no cache); use :func:`offline_natural_crops` instead.
    """
    import datasets

    from ..training.data import numpy_to_pixel_values

    if num_images is not None and num_images < 1:
        raise ValueError(f"num_images must be >= 1 (or None for all 10,000), got {num_images}.")
    try:
        dataset = datasets.load_dataset(CIFAR100_DATASET, split=CIFAR100_SPLIT, cache_dir=cache_dir)
    except Exception as error:  # offline: ConnectionError, DatasetNotFoundError, OSError, ... depending on versions
        raise OSError(f"Could not load {CIFAR100_DATASET!r} ({type(error).__name__}: {error}). Connect to the Hugging "
                      f"Face Hub (or pre-fill the datasets cache), or use `offline_natural_crops(n)`.") from error
    if num_images is not None:
        dataset = dataset.select(range(min(num_images, len(dataset))))
    array = np.stack([np.asarray(image.convert("RGB")) for image in dataset[CIFAR100_IMAGE_COLUMN]])
    return numpy_to_pixel_values(array)


def offline_natural_crops(n: int, seed: int = 0, size: int = PAPER_IMAGE_SIZE,
                          scale: tuple[float, float] = OFFLINE_CROP_SCALE) -> torch.Tensor:
    """``n`` random ``size x size`` crops of real photos, ``(n, 3, size, size)`` float32 in [-1, 1].

    Photos: scikit-image's bundled photos (``OFFLINE_PHOTOS``), plus scikit-learn's ``load_sample_images()`` when
    scikit-learn is installed. Grayscale photos are replicated to RGB.
    """
    from PIL import Image

    from ..training.data import load_sample_photos, random_crops

    if n < 1:
        raise ValueError(f"offline_natural_crops needs n >= 1 crops, got {n}.")
    photos = load_sample_photos(OFFLINE_PHOTOS)
    try:
        from sklearn.datasets import load_sample_images
    except ImportError:
        pass
    else:
        photos += [Image.fromarray(image).convert("RGB") for image in load_sample_images().images]
    return random_crops(photos, n, size, scale=scale, seed=seed)


def main(argv: Sequence[str] | None = None, write_image: Callable[[Image.Image, str], None] | None = None) -> str:
    """CLI: print Table 1 on CIFAR-100 (when reachable) or on offline photo crops; returns the markdown.

    With ``--figure4 PATH``, also draws Figure 4 (same correlations) and writes it with ``write_image(image, PATH)``
    (default: ``image.save``, creating the folder; the ``spectralar-hf`` CLI passes its checked, atomic writer).
    """
    parser = argparse.ArgumentParser(description="SpectralAR §4.2 causality (R^2) analysis, Table 1.")
    parser.add_argument("--num_images", type=number_type(int, 2, hint=" (correlations need at least 2 images)"),
                        default=10_000, help="number of images (paper: 10,000)")
    parser.add_argument("--data", choices=("auto", "cifar100", "crops"), default="auto",
                        help="auto: CIFAR-100 test split when reachable, else offline photo crops")
    parser.add_argument("--seed", type=int, default=0, help="seed of the offline crops")
    parser.add_argument("--chunk_size", type=int, default=DEFAULT_CHUNK_SIZE)
    parser.add_argument("--figure4", default=None, help="also draw Figure 4 to this image file (e.g. figure4.png)")
    args = parser.parse_args(argv)
    figure_format = Image.registered_extensions().get(Path(args.figure4 or "").suffix.lower())
    if args.figure4 is not None and figure_format not in Image.SAVE:
        parser.error(f"--figure4 {args.figure4!r} must end in an image extension PIL can write (e.g. .png)")

    images, source = None, None
    if args.data in ("auto", "cifar100"):
        try:
            images, source = load_cifar100_validation(args.num_images), f"{CIFAR100_DATASET} ({CIFAR100_SPLIT})"
        except OSError as error:
            if args.data == "cifar100":
                raise
            logger.warning("%s Falling back to offline photo crops.", error)
    if images is None:
        images = offline_natural_crops(args.num_images, seed=args.seed)
        source = f"random 32x32 crops of real photos (scikit-image), seed {args.seed}"
    table, histograms = causality_table(images, chunk_size=args.chunk_size, return_histograms=True)
    text = format_table(table, num_images=images.shape[0], source=source)
    print(text)
    if args.figure4 is not None:
        figure = draw_figure4(histograms, table)
        if write_image is not None:
            write_image(figure, args.figure4)
        else:
            Path(args.figure4).parent.mkdir(parents=True, exist_ok=True)
            figure.save(args.figure4)
            print(f"wrote {args.figure4}")
    return text


if __name__ == "__main__":
    main()
