"""Pictures for people: labelled grids and coarse-to-fine strips."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def to_pil(image: torch.Tensor | np.ndarray | Image.Image) -> Image.Image:
    """A `(C, H, W)` tensor in [-1, 1], an `(H, W[, C])` uint8/[0, 1] array, or a PIL image -> PIL (RGB or L)."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, torch.Tensor):
        array = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
        array = array.transpose(1, 2, 0)
    else:
        array = np.asarray(image)
        if array.dtype != np.uint8:
            array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return Image.fromarray(array)


def prefix_strip(
    rows: Sequence[Sequence[torch.Tensor | np.ndarray | Image.Image]],
    row_labels: Sequence[str] | None = None,
    column_labels: Sequence[str] | None = None,
    min_cell: int = 96,
    padding: int = 2,
) -> Image.Image:
    """Labelled grid of images (e.g. the coarse-to-fine strip of Figure 1: one column per prefix length).

    Small images are upscaled with nearest-neighbour by an integer factor so that each cell is >= `min_cell` px.
    """
    cells = [[to_pil(image).convert("RGB") for image in row] for row in rows]
    width, height = cells[0][0].size
    factor = max(1, -(-min_cell // max(width, height)))
    cell_w, cell_h = width * factor, height * factor
    font = ImageFont.load_default()
    label_w = 0 if not row_labels else 8 + max(int(font.getlength(text)) for text in row_labels)
    label_h = 0 if not column_labels else 14
    columns = max(len(row) for row in cells)
    canvas = Image.new("RGB", (label_w + columns * (cell_w + padding) + padding,
                               label_h + len(cells) * (cell_h + padding) + padding), "white")
    draw = ImageDraw.Draw(canvas)
    for c, text in enumerate(column_labels or []):
        draw.text((label_w + padding + c * (cell_w + padding), 1), text, fill="black", font=font)
    for r, row in enumerate(cells):
        top = label_h + padding + r * (cell_h + padding)
        if row_labels:
            draw.text((4, top + cell_h // 2 - 6), row_labels[r], fill="black", font=font)
        for c, image in enumerate(row):
            left = label_w + padding + c * (cell_w + padding)
            canvas.paste(image.resize((cell_w, cell_h), Image.NEAREST), (left, top))
    return canvas
