"""Evaluation reports for checkpoints: tokenizer reconstruction (PSNR / SSIM / rFID per prefix) and pipeline
generation (gFID / precision / recall, truncation curve), computed the way the papers do, offline.

Used by `spectralar-hf evaluate tokenizer|pipeline` and `examples/evaluate.py`; every function returns plain dicts
that serialise to the JSON report.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .classification import knn_class_agreement
from .curves import tokenizer_prefix_curve
from .fid import extract_features, feature_statistics, frechet_distance
from .manifold import precision_recall
from .reconstruction import psnr, ssim


def load_evaluation_images(
    image_size: int,
    num_channels: int,
    idx_data_dir: str | None = None,
    train_data_dir: str | None = None,
    dataset_name: str | None = None,
    split: str = "test",
    num_images: int | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Images of a dataset split, resized and centre-cropped to the model's size: `(N, C, S, S)` in [-1, 1], and the
    labels when the dataset has them. `num_images` draws a seeded random subset."""
    from ..training.data import ImageTransform, find_column, load_idx_dataset, load_image_dataset

    if sum(x is not None for x in (idx_data_dir, train_data_dir, dataset_name)) != 1:
        raise ValueError("Give exactly one data source: an IDX folder, an image folder or a datasets id.")
    if idx_data_dir is not None:
        dataset = load_idx_dataset(idx_data_dir, split)
    else:
        dataset = load_image_dataset(dataset_name, None, train_data_dir, split)
    if num_images is not None:
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}.")
        order = np.random.default_rng(seed).permutation(len(dataset))[: min(num_images, len(dataset))]
        dataset = dataset.select(sorted(order.tolist()))
    image_column = find_column(dataset, None, ("image", "img", "pixel_values"), "image")
    label_column = next((c for c in ("label", "labels", "class") if c in dataset.column_names), None)
    transform = ImageTransform(image_size, num_channels)
    images = torch.stack([transform(example[image_column]) for example in dataset])
    labels = torch.tensor(dataset[label_column]) if label_column is not None else None
    return images, labels


@torch.no_grad()
def evaluate_tokenizer(tokenizer, images: torch.Tensor, prefixes: Sequence[int] | None = None,
                       extractor: torch.nn.Module | None = None, batch_size: int = 64) -> dict[str, Any]:
    """Reconstruction quality of a `SpectralTokenizer` on `images` `(N, C, S, S)` in [-1, 1].

    Returns `psnr`, `ssim` and (with an extractor) `rfid` of the full-prefix reconstructions, and `prefixes`: one row
    per prefix length with PSNR to the omega_k low-pass target and to the full image.
    """
    device = tokenizer.device
    reconstructions = []
    for start in tqdm(range(0, len(images), batch_size), desc="reconstruct", leave=False):
        batch = images[start : start + batch_size].to(device, tokenizer.dtype)
        reconstructions.append(tokenizer.decode(tokenizer.encode(batch).codes).reconstruction.float().cpu())
    reconstruction = torch.cat(reconstructions).clamp(-1, 1)
    report: dict[str, Any] = {
        "num_images": len(images),
        "psnr": float(psnr(reconstruction, images)),
        "ssim": float(ssim(reconstruction, images)),
    }
    if extractor is not None:
        real = feature_statistics(extract_features(images, extractor, progress=False))
        fake = feature_statistics(extract_features(reconstruction, extractor, progress=False))
        report["rfid"] = frechet_distance(*fake, *real)
    n = tokenizer.config.num_latent_tokens
    prefixes = list(range(1, n + 1)) if prefixes is None else list(prefixes)
    report["prefixes"] = tokenizer_prefix_curve(tokenizer, images, prefixes, batch_size=batch_size, progress=False)
    return report


@torch.no_grad()
def generate_images(pipe, class_ids: Sequence[int], batch_size: int = 64, seed: int = 0,
                    **sampling: Any) -> torch.Tensor:
    """Images for `class_ids` (one per entry) in batches: `(N, C, S, S)` in [-1, 1]. Batch `b` uses the generator
    seed `seed + b`, so equal arguments give equal images (also with other `num_tokens`: truncated samples are
    prefixes of the full ones)."""
    images = []
    for index, start in enumerate(tqdm(range(0, len(class_ids), batch_size), desc="generate", leave=False)):
        labels = list(class_ids[start : start + batch_size])
        output = pipe(labels, output_type="pt", generator=torch.Generator().manual_seed(seed + index), **sampling)
        images.append(output.images.float().cpu() * 2 - 1)
    return torch.cat(images)


@torch.no_grad()
def evaluate_pipeline(
    pipe,
    reference_images: torch.Tensor,
    samples_per_class: int,
    classes: Sequence[int] | None = None,
    extractor: torch.nn.Module | None = None,
    truncation: Sequence[int] = (),
    batch_size: int = 64,
    seed: int = 0,
    classifier_reference: tuple[torch.Tensor, torch.Tensor] | None = None,
    **sampling: Any,
) -> dict[str, Any]:
    """Generation quality of a `SpectralARPipeline` against `reference_images` `(N, C, S, S)` in [-1, 1].

    Generates `samples_per_class` images of every class (or of `classes`) with the sampling settings `sampling`
    (`guidance_scale`, `top_k`, ...) and reports `gfid`, improved `precision` / `recall` (k = 3) on Inception
    features, and `truncation`: FID of the same samples decoded from only their first k tokens. With
    `classifier_reference = (images, labels)` also `knn_accuracy`: the fraction of samples that a pixel-space k-NN
    classifier on those images assigns to the class they were generated for.
    """
    classes = list(range(pipe.transformer.config.num_classes)) if classes is None else list(classes)
    class_ids = [c for c in classes for _ in range(samples_per_class)]
    reference_features = extract_features(reference_images, extractor, progress=False)
    reference_stats = feature_statistics(reference_features)
    samples = generate_images(pipe, class_ids, batch_size, seed, **sampling)
    features = extract_features(samples, extractor, progress=False)
    scores = precision_recall(reference_features, features, k=3)
    report: dict[str, Any] = {
        "num_samples": len(class_ids), "num_reference": len(reference_images), "classes": classes,
        "sampling": {k: v for k, v in sampling.items() if v is not None},
        "gfid": frechet_distance(*feature_statistics(features), *reference_stats),
        "precision": float(scores["precision"]), "recall": float(scores["recall"]),
    }
    if classifier_reference is not None:
        report["knn_accuracy"] = knn_class_agreement(samples, class_ids, *classifier_reference)
    rows = []
    for k in truncation:
        truncated = generate_images(pipe, class_ids, batch_size, seed, num_tokens=int(k), **sampling)
        stats = feature_statistics(extract_features(truncated, extractor, progress=False))
        rows.append({"num_tokens": int(k), "fid": frechet_distance(*stats, *reference_stats)})
    report["truncation"] = rows
    return report


def reference_fid(images_a: torch.Tensor, images_b: torch.Tensor, extractor: torch.nn.Module | None = None) -> float:
    """FID between two image sets (e.g. train vs test: the floor a generator of this data can reach)."""
    a = feature_statistics(extract_features(images_a, extractor, progress=False))
    b = feature_statistics(extract_features(images_b, extractor, progress=False))
    return frechet_distance(*a, *b)


def write_report(path: str | os.PathLike, report: dict[str, Any]) -> None:
    """Write `report` as indented JSON, atomically (temporary file + rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
    with os.fdopen(handle, "w") as stream:
        json.dump(report, stream, indent=2, default=float)
        stream.write("\n")
    os.replace(temporary, target)
