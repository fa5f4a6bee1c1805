"""Paper-style sample sets: class-balanced, one seed per image, written in resumable shards and merged into one
ADM-format ``.npz`` (used by ``examples/sample.py``; scored by ``spectralar-hf evaluate npz``).

Image ``i`` (its *global index*) has the class ``classes[i % C]`` (classes interleaved, so every shard and every
prefix of the set is close to balanced) and its own ``torch.Generator`` seeded from ``(seed, i)``: the pipelines
draw every random number of a row from that row's generator, so the set of images depends neither on the number of
processes nor on how the images are batched (up to float rounding of batched matrix products, which can differ
between batch sizes; shards are fixed ranges of indices and are batched the same way on any number of processes).

Layout of ADM's ``.npz`` (guided-diffusion ``sample.py`` / ``evaluator.py``): ``arr_0`` uint8 ``(N, H, W, 3)``
images, ``arr_1`` int64 ``(N,)`` class labels. Grayscale images are replicated to 3 channels.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..training.checkpointing import VOLATILE_CONFIG_KEYS, atomic_write, model_fingerprint

__all__ = [
    "IMAGES_KEY",
    "LABELS_KEY",
    "class_balanced_labels",
    "image_generators",
    "image_seed",
    "images_to_uint8_rgb",
    "merge_shards",
    "pipeline_fingerprint",
    "read_shard",
    "remove_damaged_shards",
    "remove_our_shard_files",
    "shard_folder_files",
    "shard_path",
    "shard_problem",
    "shard_ranges",
    "write_npz",
    "write_shard",
]

# guided-diffusion's positional np.savez(out_path, images, labels) names.
IMAGES_KEY = "arr_0"
LABELS_KEY = "arr_1"
# Shard files also keep each image's global index and the seconds spent sampling the shard.
INDICES_KEY = "indices"
SECONDS_KEY = "seconds"
UINT8_MAX = 255
RGB_CHANNELS = 3
# Shard files are OUTPUT.shards/shard-00000.npz, shard-00001.npz, ...; only files named so are ever deleted.
SHARD_PREFIX = "shard-"
SHARD_NAME = re.compile(rf"{SHARD_PREFIX}\d{{5,}}\.npz")
# The set's settings in OUTPUT.shards/ (what a resumed run must match); a settings record has this key.
SHARD_SETTINGS_NAME = "settings.json"
SETTINGS_RECORD_KEY = "pipeline_sha256"
# atomic_write's temporary files of a shard or of the settings, left by a killed run: ".shard-00003.npz.k2j1x.tmp".
TEMPORARY_NAME = re.compile(rf"\.({SHARD_PREFIX}\d{{5,}}\.npz|{re.escape(SHARD_SETTINGS_NAME)})\..+\.tmp")
# What reading a truncated, zero-byte or otherwise damaged .npz raises (np.load / zipfile / the .npy reader).
UNREADABLE_SHARD_ERRORS = (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error)


def image_seed(seed: int, index: int) -> int:
    """The 64-bit seed of image ``index`` of a set sampled with ``seed``: NumPy's ``SeedSequence`` of the pair, so
    neighbouring indices (and neighbouring base seeds) give unrelated streams and different ``seed`` never reuse a
    stream by offset."""
    if index < 0 or seed < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}.")
    low, high = np.random.SeedSequence([seed, index]).generate_state(2, dtype=np.uint32)
    return int(high) << 32 | int(low)


def image_generators(seed: int, indices: Sequence[int], device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One generator per global index (on ``device``, default CPU: the same draws on any accelerator)."""
    return [torch.Generator(device=device).manual_seed(image_seed(seed, int(index))) for index in indices]


def class_balanced_labels(classes: Sequence[int], samples_per_class: int) -> np.ndarray:
    """``(len(classes) * samples_per_class,)`` int64 labels, image ``i`` of class ``classes[i % C]``."""
    if not len(classes):
        raise ValueError("class_balanced_labels got no classes; pass at least one class id.")
    if samples_per_class < 1:
        raise ValueError(f"samples_per_class must be >= 1, got {samples_per_class}.")
    return np.tile(np.asarray(classes, dtype=np.int64), samples_per_class)


def shard_ranges(num_images: int, shard_size: int) -> list[range]:
    """Consecutive index ranges of ``shard_size`` images (the last one shorter) covering ``[0, num_images)``."""
    if num_images < 1 or shard_size < 1:
        raise ValueError(f"num_images and shard_size must be >= 1, got {num_images} and {shard_size}.")
    return [range(start, min(start + shard_size, num_images)) for start in range(0, num_images, shard_size)]


def images_to_uint8_rgb(images: np.ndarray) -> np.ndarray:
    """``(B, H, W, C)`` floats in [0, 1] (a pipeline's ``output_type="np"``) -> ``(B, H, W, 3)`` uint8, rounded like
    ``diffusers``' ``numpy_to_pil`` (``round(x * 255)``); one channel is replicated to three."""
    if images.ndim != 4 or images.shape[-1] not in (1, RGB_CHANNELS):
        raise ValueError(f"images must be (B, H, W, 1 or 3) floats in [0, 1], got shape {images.shape}.")
    array = np.clip(np.round(images.astype(np.float64) * UINT8_MAX), 0, UINT8_MAX).astype(np.uint8)
    return np.repeat(array, RGB_CHANNELS, axis=-1) if array.shape[-1] == 1 else array


def _stable_config(path: Path) -> bytes:
    """A config JSON without the keys that change when the same model is saved again (library versions, paths)."""
    config = json.loads(path.read_text())
    kept = {key: value for key, value in config.items()
            if (key == "_class_name" or not key.startswith("_")) and key not in VOLATILE_CONFIG_KEYS}
    return json.dumps(kept, sort_keys=True, default=str).encode()


def pipeline_fingerprint(folder: str | os.PathLike) -> str:
    """sha256 over a saved pipeline: its ``model_index.json`` and every component, a model by ``model_fingerprint``
    (config and tensors) and any other ``*config.json`` (a scheduler's, a text tokenizer's) by its content; library
    versions are left out, so the same pipeline saved again has the same fingerprint."""
    root = Path(folder)
    digest = hashlib.sha256(_stable_config(root / "model_index.json"))
    for component in sorted(path for path in root.iterdir() if path.is_dir()):
        digest.update(component.name.encode())
        if (component / "config.json").is_file():
            digest.update(model_fingerprint(component).encode())
        for config in sorted(component.glob("*config.json")):
            if config.name != "config.json":
                digest.update(config.name.encode() + _stable_config(config))
    return digest.hexdigest()


def write_shard(path: str | os.PathLike, images: np.ndarray, labels: np.ndarray, indices: np.ndarray,
                seconds: float) -> None:
    """Save one shard (uint8 images, labels, global indices, sampling seconds) atomically: a run killed while
    writing leaves no shard, so a resumed run redoes it."""
    with atomic_write(path) as stream:
        np.savez(stream, **{IMAGES_KEY: images, LABELS_KEY: labels, INDICES_KEY: indices,
                            SECONDS_KEY: np.float64(seconds)})


def shard_path(folder: str | os.PathLike, index: int) -> Path:
    """The file of shard ``index`` in ``folder`` (``shard-00007.npz``)."""
    return Path(folder) / f"{SHARD_PREFIX}{index:05d}.npz"


def _shard_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a shard; ``ValueError(what is wrong)`` when the file is not a readable shard."""
    if path.is_file() and path.stat().st_size == 0:
        raise ValueError("the file is empty (0 bytes)")
    try:
        data = np.load(path, allow_pickle=False)
    except UNREADABLE_SHARD_ERRORS as error:
        raise ValueError(_error_text(error)) from error
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError("it holds a single array (.npy), not an .npz archive")
    with data:
        missing = [key for key in (IMAGES_KEY, LABELS_KEY, INDICES_KEY, SECONDS_KEY) if key not in data.files]
        if missing:
            raise ValueError(f"it has no {', '.join(missing)} array(s)")
        try:  # reads every array in full, so a zip member cut short or a CRC mismatch is found here
            return {key: data[key] for key in (IMAGES_KEY, LABELS_KEY, INDICES_KEY, SECONDS_KEY)}
        except UNREADABLE_SHARD_ERRORS as error:
            raise ValueError(_error_text(error)) from error


def _error_text(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return type(error).__name__ + (f": {text}" if text else "")


def read_shard(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of a shard written by :func:`write_shard`.

    Raises ``ValueError`` naming the file when it is not a readable shard (truncated, empty, damaged, not an .npz)."""
    try:
        return _shard_arrays(Path(path))
    except ValueError as error:
        raise ValueError(f"shard {os.fspath(path)!r} is not readable ({error}): it is truncated or damaged; delete it "
                         f"and rerun to resample it.") from error


def shard_problem(path: str | os.PathLike, indices: range, labels: np.ndarray) -> str | None:
    """``None`` when ``path`` is a readable shard of the global ``indices`` (with their entries of the set's
    ``labels``), else what is wrong with it. Reads the whole file."""
    try:
        shard = _shard_arrays(Path(path))
    except ValueError as error:
        return str(error)
    images, expected = shard[IMAGES_KEY], np.arange(indices.start, indices.stop)
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(expected):
        return (f"its images are {images.dtype} {images.shape}, expected {len(expected)} uint8 (n, H, W, 3) images")
    if not np.array_equal(shard[INDICES_KEY], expected) or not np.array_equal(shard[LABELS_KEY], labels[expected]):
        return f"it does not hold the images {indices.start} .. {indices.stop - 1} with their labels"
    return None


def _print_warning(message: str) -> None:
    print(message, file=sys.stderr)


def remove_damaged_shards(paths: Sequence[str | os.PathLike], ranges: Sequence[range], labels: np.ndarray,
                          warn: Callable[[str], None] = _print_warning) -> list[Path]:
    """Delete each existing shard of ``paths`` (shard ``i`` holds ``ranges[i]``) that is not a readable shard of its
    images (truncated, zero bytes, damaged, other images), saying so through ``warn``, so that a resumed run treats
    it as missing and samples it again. Returns the deleted paths.

    Only a file named like a shard (``shard-NNNNN.npz``) is deleted; anything else in the way (a directory, a file of
    another name), or a shard that cannot be deleted, raises ``ValueError`` naming it and the fix."""
    removed = []
    for path, indices in zip(map(Path, paths), ranges):
        if not (path.exists() or path.is_symlink()):
            continue  # missing: sampled anyway
        problem = shard_problem(path, indices, labels)
        if problem is None:
            continue
        if not (SHARD_NAME.fullmatch(path.name) and (path.is_file() or path.is_symlink())):
            raise ValueError(f"{path} is in the place of shard {indices.start} .. {indices.stop - 1} but is not a "
                             f"readable shard ({problem}) nor a shard file to replace; move it away and rerun to "
                             f"resample the shard.")
        warn(f"warning: shard {path} is damaged ({problem}); deleting it: its images are sampled again")
        try:
            path.unlink()
        except OSError as error:
            raise ValueError(f"shard {path} is damaged ({problem}) and cannot be deleted ({_error_text(error)}); "
                             f"delete it by hand and rerun to resample it.") from error
        removed.append(path)
    return removed


def _npy_header(stream, shape: tuple[int, ...], dtype: np.dtype) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_2_0(stream, header)


def write_npz(path: str | os.PathLike, image_chunks, num_images: int, image_shape: tuple[int, int, int],
              labels: np.ndarray) -> None:
    """Write an ADM-format ``.npz`` from an iterable of uint8 ``(n, H, W, 3)`` chunks, streamed into the archive
    (memory holds one chunk, not the 10 GB of 50,000 256 px images), atomically.

    Raises ``ValueError`` when the chunks do not add up to ``num_images`` images of ``image_shape``."""
    with atomic_write(path) as stream, zipfile.ZipFile(stream, "w", compression=zipfile.ZIP_STORED,
                                                        allowZip64=True) as archive:
        with archive.open(f"{IMAGES_KEY}.npy", "w", force_zip64=True) as member:
            _npy_header(member, (num_images, *image_shape), np.uint8)
            written = 0
            for chunk in image_chunks:
                if chunk.dtype != np.uint8 or chunk.shape[1:] != tuple(image_shape):
                    raise ValueError(f"a chunk of shape {chunk.shape} / {chunk.dtype} does not match the set's "
                                     f"(n, {', '.join(map(str, image_shape))}) uint8 images.")
                member.write(np.ascontiguousarray(chunk).tobytes())
                written += len(chunk)
            if written != num_images:
                raise ValueError(f"the chunks hold {written} images, expected {num_images}.")
        with archive.open(f"{LABELS_KEY}.npy", "w") as member:
            np.lib.format.write_array(member, np.asarray(labels, dtype=np.int64))


def merge_shards(shard_paths: Sequence[str | os.PathLike], output: str | os.PathLike,
                 labels: np.ndarray) -> dict[str, Any]:
    """Merge shards (in index order) into one ADM ``.npz`` at ``output``; checks that the shards cover the indices
    ``0 .. N-1`` in order with the expected ``labels``. Returns ``{"num_images", "image_shape", "seconds"}`` (the
    summed sampling seconds of the shards)."""
    first = read_shard(shard_paths[0])
    image_shape = tuple(first[IMAGES_KEY].shape[1:])
    seconds = 0.0

    def chunks():
        nonlocal seconds
        expected_start = 0
        for position, path in enumerate(shard_paths):
            shard = first if position == 0 else read_shard(path)
            indices = shard[INDICES_KEY]
            expected = np.arange(expected_start, expected_start + len(indices))
            if not np.array_equal(indices, expected) or not np.array_equal(shard[LABELS_KEY], labels[expected]):
                raise ValueError(f"shard {os.fspath(path)!r} holds indices {indices[:3].tolist()}... that do not "
                                 f"continue the set at {expected_start} with the expected labels; delete it and "
                                 f"rerun to resample it.")
            seconds += float(shard[SECONDS_KEY])
            expected_start += len(indices)
            yield shard[IMAGES_KEY]

    write_npz(output, chunks(), len(labels), image_shape, labels)
    return {"num_images": len(labels), "image_shape": list(image_shape), "seconds": seconds}


def read_settings(path: Path) -> dict[str, Any] | None:
    """The JSON object at ``path``, or ``None`` when missing or unreadable."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def shard_folder_files(folder: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """``(ours, foreign)``: the entries of a shard folder that ``examples/sample.py`` writes (files named like a shard,
    however damaged, its ``settings.json``, the temporary files of a killed write; known by their names) and
    everything else (other files, folders). Nothing is read."""
    ours, foreign = [], []
    for path in sorted(Path(folder).iterdir()):
        is_file = path.is_file() or path.is_symlink()
        if is_file and (SHARD_NAME.fullmatch(path.name) or TEMPORARY_NAME.fullmatch(path.name)
                        or path.name == SHARD_SETTINGS_NAME):
            ours.append(path)
        else:
            foreign.append(path)
    return ours, foreign


def remove_our_shard_files(folder: str | os.PathLike) -> list[Path]:
    """Delete what ``examples/sample.py`` wrote in ``folder`` (see :func:`shard_folder_files`), then the folder if it
    is empty; anything else stays. Returns the entries that were kept."""
    folder = Path(folder)
    ours, foreign = shard_folder_files(folder)
    for path in ours:
        path.unlink(missing_ok=True)
    if not foreign:
        folder.rmdir()
    return foreign
