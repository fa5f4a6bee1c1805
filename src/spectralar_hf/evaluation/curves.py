"""Quality against the number of tokens: tokenizer prefix curves (Figure 1) and truncated generation (Table 3).

Also a markdown table helper and a dependency-free PNG line plot (drawn with PIL, so no matplotlib is needed).
"""

from __future__ import annotations

import math
import os
import tempfile
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

from ..spectral import lowpass
from .fid import DEFAULT_BATCH_SIZE, extract_features, feature_statistics, frechet_distance, get_statistics
from .reconstruction import psnr

__all__ = ["format_markdown_table", "plot_curve", "tokenizer_prefix_curve", "truncation_curve"]

# Plot geometry in pixels and the line colours (Tableau 10 palette).
PLOT_SIZE = (640, 420)
PLOT_MARGINS = (70, 30, 30, 55)  # left, top, right, bottom
PLOT_TICKS = 5
PLOT_COLORS = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7")


@torch.no_grad()
def tokenizer_prefix_curve(tokenizer, images: torch.Tensor, prefixes: Sequence[int] | None = None,
                           batch_size: int = 16, extractor: torch.nn.Module | None = None,
                           progress: bool = True) -> list[dict[str, float]]:
    """Reconstruction quality of every token prefix ``k`` of a :class:`SpectralTokenizer` (SpectralAR Figure 1).

    Each image is encoded once; its prefixes are decoded together through the per-sample ``num_tokens`` form of
    ``decode`` (one batch holds several (image, prefix) pairs). Reconstructions are clamped to [-1, 1]; PSNRs are
    per-image values averaged over the images.

    Args:
        tokenizer: a ``SpectralTokenizer`` (``encode(x).codes``, ``decode(codes, num_tokens).reconstruction``,
            ``config.omega``, ``config.num_latent_tokens``).
        images: ``(N, C, H, W)`` pixel values in [-1, 1].
        prefixes: prefix lengths ``k`` in ``[1, N_tokens]`` (default: all).
        batch_size: (image, prefix) pairs per decode call.
        extractor: when given, also the rFID of each prefix's reconstructions against the full ``images``
            (meaningful only for a few thousand images).
        progress: show a progress bar.

    Returns:
        One dict per prefix: ``num_tokens``, ``omega`` (``config.omega[k - 1]``), ``psnr_target`` (PSNR to the
        ``omega_k`` low-pass image, the tokenizer's training target), ``psnr_full`` (PSNR to the image) and, with an
        extractor, ``rfid``.
    """
    config = tokenizer.config
    prefixes = list(range(1, config.num_latent_tokens + 1)) if prefixes is None else [int(k) for k in prefixes]
    if not prefixes or min(prefixes) < 1 or max(prefixes) > config.num_latent_tokens:
        raise ValueError(f"prefixes must lie in [1, {config.num_latent_tokens}] (the tokenizer's number of tokens), "
                         f"got {prefixes}.")
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W) in [-1, 1], got shape {tuple(images.shape)}.")
    parameter = next(tokenizer.parameters())
    images = images.float().cpu()
    codes = torch.cat([tokenizer.encode(images[i:i + batch_size].to(parameter.device, parameter.dtype)).codes.cpu()
                       for i in range(0, images.shape[0], batch_size)])
    omega = torch.tensor(list(config.omega), dtype=torch.long)
    # All (image, prefix) pairs, prefix-major, decoded in chunks with per-sample prefix lengths. Only per-pair
    # metrics (and features) are kept, never the reconstructions, so memory does not grow with N x prefixes.
    num_images, num_prefixes = images.shape[0], len(prefixes)
    pair_image = torch.arange(num_images).repeat(num_prefixes)
    pair_prefix = torch.tensor(prefixes).repeat_interleave(num_images)
    psnr_target, psnr_full, features = [], [], []
    for start in tqdm(range(0, pair_image.shape[0], batch_size), desc="prefix decode", disable=not progress):
        index, prefix = pair_image[start:start + batch_size], pair_prefix[start:start + batch_size]
        output = tokenizer.decode(codes[index].to(parameter.device), num_tokens=prefix.to(parameter.device))
        reconstruction = output.reconstruction.clamp(-1.0, 1.0).float().cpu()
        reference = images[index]
        psnr_target.append(psnr(reconstruction, lowpass(reference, omega[prefix - 1]), reduction="none"))
        psnr_full.append(psnr(reconstruction, reference, reduction="none"))
        if extractor is not None:
            features.append(extract_features(reconstruction, extractor, progress=False))
    psnr_target = torch.cat(psnr_target).view(num_prefixes, num_images)
    psnr_full = torch.cat(psnr_full).view(num_prefixes, num_images)
    real_stats = None
    if extractor is not None:
        real_stats = get_statistics(images, extractor=extractor, progress=False)
        features = torch.cat(features).view(num_prefixes, num_images, -1)
    rows = []
    for position, k in enumerate(prefixes):
        row = {
            "num_tokens": k,
            "omega": int(omega[k - 1]),
            "psnr_target": float(psnr_target[position].mean()),
            "psnr_full": float(psnr_full[position].mean()),
        }
        if real_stats is not None:
            row["rfid"] = frechet_distance(*feature_statistics(features[position]), *real_stats)
        rows.append(row)
    return rows


def truncation_curve(sample_fn: Callable[[int], Any], reference_features_or_stats: Any, token_counts: Sequence[int],
                     extractor: torch.nn.Module | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                     value_range: tuple[float, float] = (-1.0, 1.0), progress: bool = True) -> list[dict[str, float]]:
    """FID against the number of generated tokens (SpectralAR Table 3, "Trunc." rows).

    Args:
        sample_fn: ``sample_fn(num_tokens)`` returns the images generated with only the first ``num_tokens``
            tokens (a tensor, array, PIL list or iterable of batches; see ``extract_features``).
        reference_features_or_stats: anything :func:`~spectralar_hf.evaluation.fid.get_statistics` accepts:
            ``(N, D)`` features, ``(mu, sigma)``, an ``.npz`` path (statistics or ADM batch) or images.
        token_counts: the numbers of tokens to evaluate.
        extractor: feature network (default: the FID Inception-v3).
        batch_size, value_range: passed to feature extraction.
        progress: show a progress bar over ``token_counts``.

    Returns:
        One ``{"num_tokens": k, "fid": value}`` per token count.
    """
    reference = get_statistics(reference_features_or_stats, extractor=extractor, batch_size=batch_size,
                               value_range=value_range, progress=False)
    rows = []
    for k in tqdm(list(token_counts), desc="truncation", disable=not progress):
        features = extract_features(sample_fn(int(k)), extractor, batch_size=batch_size, value_range=value_range,
                                    progress=False)
        rows.append({"num_tokens": int(k), "fid": frechet_distance(*feature_statistics(features), *reference)})
    return rows


def format_markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None,
                          float_format: str = "{:.3f}") -> str:
    """Markdown table of dict rows (columns: ``columns`` or the keys of the first row); floats via ``float_format``."""
    if not rows:
        raise ValueError("format_markdown_table needs at least one row.")
    columns = list(columns) if columns is not None else list(rows[0])

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return float_format.format(value) if math.isfinite(value) else str(value)
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(cell(row.get(column)) for column in columns) + " |" for row in rows]
    return "\n".join(lines)


def _nice_ticks(low: float, high: float, count: int = PLOT_TICKS) -> list[float]:
    if high <= low:
        high = low + 1.0
    raw = (high - low) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = min((m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw), default=raw)
    start = math.floor(low / step) * step
    return [start + i * step for i in range(int(math.ceil((high - start) / step)) + 1)]


def plot_curve(rows: Sequence[dict[str, Any]], x: str, ys: Sequence[str] | str, path: str | os.PathLike,
               title: str | None = None, xlabel: str | None = None, ylabel: str | None = None) -> str:
    """Write a PNG line plot of ``row[x]`` against each ``row[y]`` (drawn with PIL; no matplotlib needed).

    Args:
        rows: dict rows, e.g. the output of :func:`tokenizer_prefix_curve` or :func:`truncation_curve`.
        x: the key on the horizontal axis.
        ys: one key or several keys (one line each, with a legend); non-finite values are skipped.
        path: output ``.png`` path (folders are created).

    Returns:
        The path written.
    """
    ys = [ys] if isinstance(ys, str) else list(ys)
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if Image.registered_extensions().get(suffix) not in Image.SAVE:
        raise ValueError(f"plot_curve: {os.fspath(path)!r} does not end in an image extension PIL can write (e.g. "
                         f".png).")
    missing = [key for key in [x] + ys if any(key not in row for row in rows)]
    if not rows or missing:
        raise ValueError(f"plot_curve needs rows that all contain {[x] + ys}; missing {missing} (row keys: "
                         f"{list(rows[0]) if rows else []}).")
    xs = np.array([float(row[x]) for row in rows])
    series = {key: np.array([float(row[key]) for row in rows]) for key in ys}
    finite = np.concatenate([values[np.isfinite(values)] for values in series.values()])
    if finite.size == 0:
        raise ValueError(f"plot_curve: no finite values in {ys}.")
    x_ticks = _nice_ticks(float(xs.min()), float(xs.max()))
    y_ticks = _nice_ticks(float(finite.min()), float(finite.max()))
    width, height = PLOT_SIZE
    left, top, right, bottom = PLOT_MARGINS
    plot_w, plot_h = width - left - right, height - top - bottom

    def to_pixel(px: float, py: float) -> tuple[float, float]:
        fx = (px - x_ticks[0]) / (x_ticks[-1] - x_ticks[0])
        fy = (py - y_ticks[0]) / (y_ticks[-1] - y_ticks[0])
        return left + fx * plot_w, top + (1.0 - fy) * plot_h

    image = Image.new("RGB", PLOT_SIZE, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    for tick in x_ticks:
        px, _ = to_pixel(tick, y_ticks[0])
        draw.line([(px, top), (px, top + plot_h)], fill="#e6e6e6")
        draw.text((px, top + plot_h + 6), f"{tick:g}", fill="black", font=font, anchor="ma")
    for tick in y_ticks:
        _, py = to_pixel(x_ticks[0], tick)
        draw.line([(left, py), (left + plot_w, py)], fill="#e6e6e6")
        draw.text((left - 6, py), f"{tick:g}", fill="black", font=font, anchor="rm")
    draw.rectangle([left, top, left + plot_w, top + plot_h], outline="black")
    for index, (key, values) in enumerate(series.items()):
        color = PLOT_COLORS[index % len(PLOT_COLORS)]
        points = [to_pixel(px, py) for px, py in zip(xs, values) if math.isfinite(py)]
        if len(points) > 1:
            draw.line(points, fill=color, width=2)
        for px, py in points:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=color)
        draw.line([(left + 10, top + 12 + 14 * index), (left + 30, top + 12 + 14 * index)], fill=color, width=2)
        draw.text((left + 35, top + 12 + 14 * index), key, fill="black", font=font, anchor="lm")
    draw.text((left + plot_w / 2, height - 8), xlabel or x, fill="black", font=font, anchor="md")
    draw.text((8, top - 14), ylabel or ", ".join(ys), fill="black", font=font, anchor="la")
    if title:
        draw.text((left + plot_w / 2, 6), title, fill="black", font=font, anchor="ma")
    path = os.fspath(path)
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder or ".", prefix=f".{os.path.basename(path)}.", suffix=suffix)
    os.close(handle)
    try:  # written to a temporary file and renamed: an interrupted run never leaves half a PNG
        image.save(temporary, format=Image.registered_extensions()[suffix])
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return path
