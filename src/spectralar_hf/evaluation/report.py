"""Evaluation reports for checkpoints: tokenizer reconstruction (PSNR / SSIM / rFID per prefix) and pipeline
generation (gFID / precision / recall, the paper's Trunc.k rows), computed the way the papers do, offline.

Used by `spectralar-hf evaluate tokenizer|pipeline` and `examples/evaluate.py`; every function returns plain dicts
that serialise to the JSON report.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .classification import knn_class_agreement
from .curves import format_markdown_table, tokenizer_prefix_curve
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
    labels when the dataset has them. `num_images` draws a seeded random subset.

    16-bit and float images (PIL modes `I;16`, `I`, `F`) are brought to 8 bits by their value range first (a plain
    `convert("L")` would clip them to white). Raises `ValueError` naming the first unreadable file (and how many
    there are) when image files of the split cannot be decoded."""
    from ..training.data import ImageTransform, find_column, load_idx_dataset, load_image_dataset

    if sum(x is not None for x in (idx_data_dir, train_data_dir, dataset_name)) != 1:
        raise ValueError("Give exactly one data source: an IDX folder, an image folder or a datasets id.")
    if num_images is not None and num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}.")
    try:
        if idx_data_dir is not None:
            dataset = load_idx_dataset(idx_data_dir, split)
        else:
            dataset = load_image_dataset(dataset_name, None, train_data_dir, split)
    except (ValueError, FileNotFoundError) as error:
        # the training scripts' flag names -> the `spectralar-hf evaluate` ones
        message = str(error).replace("--train_data_dir", "--data-dir").replace("--idx_data_dir", "--idx-data-dir")
        if "has no split" in message and train_data_dir is not None:
            message = (f"{message.rstrip('.')}; an image folder without train/test sub-folders only has a 'train' "
                       f"split: pass --split train.")
        raise (ValueError if isinstance(error, ValueError) else FileNotFoundError)(message) from None
    if num_images is not None:
        order = np.random.default_rng(seed).permutation(len(dataset))[: min(num_images, len(dataset))]
        dataset = dataset.select(sorted(order.tolist()))
    image_column = find_column(dataset, None, ("image", "img", "pixel_values"), "image")
    label_column = next((c for c in ("label", "labels", "class") if c in dataset.column_names), None)
    transform = ImageTransform(image_size, num_channels)
    images = torch.stack(_decode_images(dataset, image_column, split, transform))
    labels = torch.tensor(dataset[label_column]) if label_column is not None else None
    return images, labels


def _decode_images(dataset, image_column: str, split: str, transform) -> list[torch.Tensor]:
    """Every image of `dataset` through `transform`; unreadable image files are collected and reported together."""
    import datasets

    feature = dataset.features.get(image_column)
    encoded = isinstance(feature, datasets.Image) and feature.decode
    if encoded:  # decode here, so that an unreadable file can be named
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    images, unreadable = [], []
    for index, example in enumerate(dataset):
        value = example[image_column]
        if encoded:
            name = value.get("path") or f"image #{index}"
            try:
                value = Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"])
                value.load()
            except (OSError, ValueError, Image.DecompressionBombError) as error:
                unreadable.append((name, error))
                continue
        images.append(transform(to_8bit(value) if isinstance(value, Image.Image) else value))
    if unreadable:
        name, error = unreadable[0]
        raise ValueError(f"{len(unreadable)} of {len(dataset)} images of the {split!r} split cannot be read as "
                         f"images, e.g. {name!r} ({type(error).__name__}: {str(error).splitlines()[0]}); remove or "
                         f"re-save them.")
    return images


def to_8bit(image: Image.Image) -> Image.Image:
    """`image` with 16-bit / 32-bit / float pixels (modes `I;16*`, `I`, `F`) mapped to 8-bit `L`, other modes as they
    are: `I;16` is divided by 257, `I` by 257 when its values exceed 255, `F` is read as [0, 1] when its values stay
    within it and as [0, 255] otherwise (values beyond are min-max scaled)."""
    if not (image.mode.startswith("I") or image.mode == "F"):
        return image
    array = np.asarray(image, dtype=np.float64)
    high = float(array.max()) if array.size else 0.0
    low = float(array.min()) if array.size else 0.0
    if image.mode.startswith("I;16") or (image.mode == "I" and 255 < high <= 65535 and low >= 0):
        array = array / 257.0
    elif image.mode == "F" and low >= 0 and high <= 1:
        array = array * 255.0
    elif low < 0 or high > 255:
        array = (array - low) * (255.0 / (high - low))
    return Image.fromarray(np.clip(np.round(array), 0, 255).astype(np.uint8), mode="L")


# Improved precision / recall with k = 3 need k + 1 = 4 images per set.
PRECISION_RECALL_MIN = 4


def _check_images(images: torch.Tensor, name: str, minimum: int) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"{name} must be an (N, C, S, S) tensor in [-1, 1], got "
                         f"{tuple(getattr(images, 'shape', ())) or type(images).__name__}.")
    if len(images) < minimum:
        raise ValueError(f"{name} holds {len(images)} image(s); this evaluation needs at least {minimum} (use more "
                         f"reference images: --num-images, or a larger split).")
    if not torch.isfinite(images).all():
        raise ValueError(f"{name} contains NaN or infinite pixel values.")


@torch.no_grad()
def reconstruct_images(tokenizer, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Full-prefix reconstructions of `images` `(N, C, S, S)` in [-1, 1] by a `SpectralTokenizer`: `(N, C, S, S)`
    float32 on the CPU, clamped to [-1, 1]."""
    reconstructions = []
    for start in tqdm(range(0, len(images), batch_size), desc="reconstruct", leave=False):
        batch = images[start : start + batch_size].to(tokenizer.device, tokenizer.dtype)
        reconstructions.append(tokenizer.decode(tokenizer.encode(batch).codes).reconstruction.float().cpu())
    return torch.cat(reconstructions).clamp(-1, 1)


@torch.no_grad()
def evaluate_tokenizer(tokenizer, images: torch.Tensor, prefixes: Sequence[int] | None = None,
                       extractor: torch.nn.Module | None = None, batch_size: int = 64) -> dict[str, Any]:
    """Reconstruction quality of a `SpectralTokenizer` on `images` `(N, C, S, S)` in [-1, 1].

    Returns `psnr`, `ssim` and (with an extractor) `rfid` of the full-prefix reconstructions, and `prefixes`: one row
    per prefix length with PSNR to the omega_k low-pass target and to the full image.
    """
    _check_images(images, "images", 2 if extractor is not None else 1)
    reconstruction = reconstruct_images(tokenizer, images, batch_size)
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
    *,
    trunc: Sequence[int] = (),
    batch_size: int = 64,
    seed: int = 0,
    classifier_reference: tuple[torch.Tensor, torch.Tensor] | None = None,
    generation_gap: bool = False,
    **sampling: Any,
) -> dict[str, Any]:
    """Generation quality of a `SpectralARPipeline` against `reference_images` `(N, C, S, S)` in [-1, 1].

    Generates `samples_per_class` images of every class (or of `classes`) with the sampling settings `sampling`
    (`guidance_scale`, `top_k`, ...) and reports `gfid`, improved `precision` / `recall` (k = 3) on Inception
    features, and `truncation`: one row per k of `trunc`, the paper's "Trunc.k" (Table 3): the last k of the N
    tokens discarded, i.e. the same samples generated and decoded from only their first N - k tokens. Rows are
    `{"label": "Trunc.k", "trunc": k, "num_tokens": N - k, "gfid": ...}`; Trunc.0 is `gfid` itself. With
    `classifier_reference = (images, labels)` also `knn_accuracy`: the fraction of samples that a pixel-space k-NN
    classifier on those images assigns to the class they were generated for. With `generation_gap` (SpectralAR
    pipelines) also `generation_gap_fid`, the FID of the samples against the pipeline tokenizer's own reconstructions
    of the reference images (what the generator loses on top of the decoder's ceiling), and `reconstruction_fid`, the
    FID of those reconstructions against the reference images. `trunc` (and what follows it) is keyword-only: it
    counts tokens discarded, where the former positional `truncation` counted tokens kept.
    """
    classes = list(range(pipe.transformer.config.num_classes)) if classes is None else list(classes)
    if not classes:
        raise ValueError("evaluate_pipeline got no classes; pass class ids (or None for all classes).")
    if int(samples_per_class) < 1:
        raise ValueError(f"samples_per_class must be >= 1, got {samples_per_class}.")
    if "truncation" in sampling:
        raise TypeError(f"evaluate_pipeline's `truncation` (tokens kept) was replaced by `trunc`: the paper's "
                        f"Trunc.k, the number of tokens discarded from the end; truncation=[m] is trunc=[N - m] "
                        f"with N = {pipe.transformer.config.num_image_tokens} here.")
    config = pipe.transformer.config
    if generation_gap and getattr(pipe, "tokenizer", None) is None:
        raise ValueError("generation_gap compares samples with the tokenizer's reconstructions, so it applies to "
                         "SpectralAR pipelines; this pipeline has no tokenizer.")
    if trunc and not hasattr(config, "num_image_tokens"):
        raise ValueError("trunc (the Trunc.k rows) applies to SpectralAR pipelines, whose images are token sequences; "
                         "this pipeline's generator has no tokens to discard.")
    trunc = check_trunc(trunc, config.num_image_tokens, config.tokens_per_step) if trunc else []
    class_ids = [c for c in classes for _ in range(samples_per_class)]
    if len(class_ids) < PRECISION_RECALL_MIN:
        raise ValueError(f"{samples_per_class} sample(s) per class x {len(classes)} class(es) = {len(class_ids)} "
                         f"samples; precision / recall (k = 3) need at least {PRECISION_RECALL_MIN}: generate more "
                         f"samples per class (--samples-per-class).")
    _check_images(reference_images, "reference_images", PRECISION_RECALL_MIN)
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
    if generation_gap:
        reconstruction_stats = feature_statistics(extract_features(
            reconstruct_images(pipe.tokenizer, reference_images, batch_size), extractor, progress=False))
        report["generation_gap_fid"] = frechet_distance(*feature_statistics(features), *reconstruction_stats)
        report["reconstruction_fid"] = frechet_distance(*reconstruction_stats, *reference_stats)
    if classifier_reference is not None:
        report["knn_accuracy"] = knn_class_agreement(samples, class_ids, *classifier_reference)
    rows = []
    for k in tqdm(trunc, desc="Trunc.k", leave=False):
        kept = config.num_image_tokens - k
        if k == 0:  # the full samples
            gfid = report["gfid"]
        else:  # the same seeds: the truncated samples are the first `kept` codes of the full ones
            truncated = generate_images(pipe, class_ids, batch_size, seed, num_tokens=kept, **sampling)
            stats = feature_statistics(extract_features(truncated, extractor, progress=False))
            gfid = frechet_distance(*stats, *reference_stats)
        rows.append({"label": TRUNC_LABEL.format(k), "trunc": k, "num_tokens": kept, "gfid": gfid})
    report["truncation"] = rows
    return report


# The paper's name of a truncated row (SpectralAR Table 3): "Trunc.k" = generation with the last k tokens discarded.
TRUNC_LABEL = "Trunc.{}"
# Markdown headers of the report's `truncation` rows (row key -> header).
TRUNC_COLUMNS = {"label": "row", "trunc": "tokens discarded (k)", "num_tokens": "tokens kept (N - k)", "gfid": "gFID"}


def check_trunc(trunc: Sequence[int], num_tokens: int, tokens_per_step: int = 1, name: str = "trunc") -> list[int]:
    """The Trunc.k values `trunc` (tokens discarded from the end of a `num_tokens`-token sequence) as a list of ints,
    duplicates dropped, order kept. Each k must lie in `[0, num_tokens - tokens_per_step]` (at least one step is
    generated) and leave a whole number of steps (`(num_tokens - k) % tokens_per_step == 0`); otherwise raises
    `ValueError` (`TypeError` for non-ints) naming `name` and the allowed values."""
    values = list(trunc)
    wrong_type = [k for k in values if isinstance(k, bool) or not isinstance(k, (int, np.integer))]
    if wrong_type:
        raise TypeError(f"{name} takes ints (numbers of tokens discarded), got {wrong_type}.")
    values = list(dict.fromkeys(int(k) for k in values))
    highest = num_tokens - tokens_per_step
    negative = [k for k in values if k < 0]
    if negative:
        raise ValueError(f"{name} {negative} below 0: Trunc.k discards the last k tokens (k = 0 keeps all "
                         f"{num_tokens}).")
    too_many = [k for k in values if k > highest]
    if too_many:
        raise ValueError(f"{name} {too_many} would leave no generation step: Trunc.k discards the last k of this "
                         f"generator's {num_tokens} tokens, so k must lie in [0, {highest}].")
    mid_step = [k for k in values if (num_tokens - k) % tokens_per_step]
    if mid_step:
        allowed = list(range(0, highest + 1, tokens_per_step))
        raise ValueError(f"{name} {mid_step} would stop mid-step: this generator samples {tokens_per_step} tokens "
                         f"per step, so k must be a multiple of {tokens_per_step} (one of {allowed}).")
    return values


def format_truncation_table(rows: Sequence[dict[str, Any]], float_format: str = "{:.3f}") -> str:
    """Markdown table of the report's `truncation` rows: `| row | tokens discarded (k) | tokens kept (N - k) | gFID |`
    (the paper's Table 3 labels, e.g. `Trunc.8`)."""
    return format_markdown_table([{header: row[key] for key, header in TRUNC_COLUMNS.items()} for row in rows],
                                 float_format=float_format)


def reference_fid(images_a: torch.Tensor, images_b: torch.Tensor, extractor: torch.nn.Module | None = None) -> float:
    """FID between two image sets (e.g. train vs test: the floor a generator of this data can reach)."""
    _check_images(images_a, "images_a", 2)
    _check_images(images_b, "images_b", 2)
    a = feature_statistics(extract_features(images_a, extractor, progress=False))
    b = feature_statistics(extract_features(images_b, extractor, progress=False))
    return frechet_distance(*a, *b)


REPORT_SUFFIX = ".json"
# A previous report: a JSON object with these keys and one of REPORT_ROWS (tokenizer: prefixes, pipeline: truncation).
REPORT_KEYS = ("checkpoint", "split")
REPORT_ROWS = ("prefixes", "truncation")
# A previous `evaluate npz` report (evaluation.npz.evaluate_npz): a JSON object with these keys.
NPZ_REPORT_KEYS = ("samples", "reference", "fid")
# Weight files that make a folder with a config.json a model directory.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def is_model_directory(folder: str | os.PathLike) -> bool:
    """Whether `folder` is a saved model or pipeline (or a component folder of a pipeline): it holds
    `model_index.json`, or `config.json` next to weights, or its parent holds `model_index.json`."""
    folder = Path(folder)
    if (folder / "model_index.json").is_file() or (folder.parent / "model_index.json").is_file():
        return True
    return (folder / "config.json").is_file() and any(
        child.suffix in WEIGHT_SUFFIXES for child in folder.iterdir() if child.is_file())


def is_report(path: str | os.PathLike) -> bool:
    """Whether `path` holds a report written by `write_report` (a JSON object with `checkpoint`, `split` and
    `prefixes` or `truncation`; or, from `evaluate npz`, with `samples`, `reference` and `fid`)."""
    try:
        with open(path) as stream:
            content = json.load(stream)
    except (OSError, ValueError):
        return False
    if not isinstance(content, dict):
        return False
    return ((all(key in content for key in REPORT_KEYS) and any(key in content for key in REPORT_ROWS))
            or all(key in content for key in NPZ_REPORT_KEYS))


def check_report_path(path: str | os.PathLike) -> Path:
    """The rule for report paths, checked before any work (raises `ValueError` saying what to do):

    * the name ends in `.json`;
    * it is not inside a model or pipeline directory (see `is_model_directory`), so a checkpoint is never
      changed (`push_to_hub` would upload the report, and a report named `config.json` would break loading);
    * an existing file is overwritten only when it is a previous report (see `is_report`); anything else
      (`config.json`, `model_index.json`, weights, other JSON) is refused;
    * its folder can be created and written.
    """
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"report path {os.fspath(path)!r} is a directory; give a file name, e.g. "
                         f"{os.path.join(os.fspath(path), 'evaluation.json')}.")
    if target.suffix.lower() != REPORT_SUFFIX:
        raise ValueError(f"report path {os.fspath(path)!r} must end in {REPORT_SUFFIX} (the report is JSON), e.g. "
                         f"outputs/evaluation.json.")
    folder = _existing_ancestor(target.parent)
    if is_model_directory(folder):
        raise ValueError(f"report path {os.fspath(path)!r} is inside the model/pipeline directory "
                         f"{os.fspath(folder)!r}; "
                         f"refusing to write there (the checkpoint would change): write the report elsewhere, e.g. "
                         f"outputs/evaluation.json.")
    if target.exists() or target.is_symlink():
        if not target.is_file() or not is_report(target):
            raise ValueError(f"report path {os.fspath(path)!r} exists and is not a report of `spectralar-hf evaluate`;"
                             f" refusing to overwrite it: choose another path or delete the file.")
    _check_writable_folder(target.parent, folder, f"report path {os.fspath(path)!r}")
    return target


def _existing_ancestor(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _check_writable_folder(folder: Path, existing: Path, what: str) -> None:
    """`existing` (the nearest existing ancestor of `folder`) must be a folder where a file can be created: checked
    by creating and removing a temporary file (permissions alone miss read-only mounts and /proc-like folders)."""
    if not existing.is_dir():
        raise ValueError(f"{what}: {os.fspath(existing)!r} is a file, not a folder; choose another path.")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise ValueError(f"{what}: cannot write in the folder {os.fspath(existing)!r} ({error.strerror or error}); "
                         f"choose another path.") from None


def write_report(path: str | os.PathLike, report: dict[str, Any]) -> None:
    """Write `report` as indented JSON, atomically (temporary file + rename), after `check_report_path`."""
    target = check_report_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(report, stream, indent=2, default=float)
            stream.write("\n")
        os.replace(temporary, target)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
