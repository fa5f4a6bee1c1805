"""Reading foreign checkpoints and writing converted ones safely (used by the scripts in `conversion/`).

Foreign weights are read with safetensors or with `torch.load(..., weights_only=True)`, never with an unrestricted
unpickler; a converter writes into a new (or explicitly overwritten) directory only.
"""

from __future__ import annotations

import pickle
import struct
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

NAMES_LISTED = 8  # names shown per kind in an error message
DETAIL_CHARS = 100  # characters of the underlying error quoted in a one-line message


def list_names(items: list[str], limit: int = NAMES_LISTED) -> str:
    """`"a, b, c, ... (5 more)"`: the first `limit` items of a list for an error message."""
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


class LoadedCheckpoint(NamedTuple):
    """What :func:`load_checkpoint_file` read: the state dict, where it came from and the file's other entries."""

    state_dict: dict[str, torch.Tensor]
    entry: str | None  # the top-level key of the state dict (e.g. "model_ema"); None for a flat file
    extras: dict[str, Any]  # the other top-level entries (e.g. a training checkpoint's "args", "epoch"); {} if flat


def _weights_only_load(path: Path) -> Any:
    """`torch.load(weights_only=True)`, memory-mapped when the file is in the zip format (a multi-GB training
    checkpoint then costs no RAM for the entries that are not used, e.g. optimizer states), else read in full."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as error:
        if "mmap" not in str(error) and "zip" not in str(error).lower():
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


# What `torch.load(weights_only=True)` raises on bytes that are not a torch checkpoint (a text file renamed `.pth`, a
# truncated or zero-byte download): the weights-only unpickler runs whatever opcodes the bytes spell until it fails
# (`KeyError` from an empty memo, `IndexError` from an empty stack, `EOFError`, `struct.error`, `UnicodeDecodeError`,
# an `AssertionError` of a sanity check), and the zip reader raises `RuntimeError` / `BadZipFile`.
UNREADABLE_ERRORS = (RuntimeError, EOFError, IndexError, KeyError, ValueError, TypeError, AttributeError,
                     AssertionError, OverflowError, struct.error, zipfile.BadZipFile)
# `UnpicklingError`s of the weights-only unpickler that mean "not a pickle", as opposed to "a pickle of a class that
# is not allowed" (which keeps its own message: such a file is refused, not reported as damaged).
GARBAGE_PICKLE_MESSAGES = ("Unsupported operand", "String is too long")
# How a torch.save file begins: a zip archive (the default since torch 1.6), or the legacy format's first pickle (the
# magic number) with its PROTO opcode. Text that happens to spell a pickle GLOBAL (a file starting with "c") is
# refused by the unpickler as a class that is not allowed; it is not a checkpoint either.
TORCH_FILE_HEADS = (b"PK\x03\x04", b"\x80")


def _is_damaged(error: pickle.UnpicklingError, path: Path) -> bool:
    if any(message in str(error) for message in GARBAGE_PICKLE_MESSAGES):
        return True
    with path.open("rb") as stream:
        return not stream.read(4).startswith(TORCH_FILE_HEADS)


def _damaged(path: Path, error: BaseException) -> ValueError:
    """The one-line error for a file that is no torch checkpoint at all (damaged, truncated or another format)."""
    text = str(error).split("WeightsUnpickler error:")[-1].strip()
    first = text.splitlines()[0].split(". ")[0].rstrip(".") if text else ""  # torch's first sentence, not its advice
    detail = type(error).__name__ + (f": {first[:DETAIL_CHARS]}" if first else "")
    if path.stat().st_size == 0:
        detail = "the file is empty (0 bytes)"
    return ValueError(f"{path} is not a readable weights-only PyTorch checkpoint: it is damaged, truncated or in "
                      f"another format ({detail}); check that it is the right file, or download or export it again "
                      f"(a torch.save state dict, or a .safetensors file).")


def load_state_dict_file(path: str | Path, flag: str = "--checkpoint", key: str | Sequence[str] | None = None,
                         layout_hint: str = "", safe_globals: Sequence[type] = ()) -> dict[str, torch.Tensor]:
    """The flat `{name: tensor}` state dict in `path`.

    Args:
        path: a `.safetensors` file, or anything `torch.load(..., weights_only=True)` reads (`.bin`, `.pt`, `.pth`).
        flag: the command-line flag that named the file (for the messages).
        key: when the file holds a dict of state dicts (e.g. MAR's `{"model": ..., "model_ema": ...}`), the entry to
            return, or several in order of preference (the first one present and not `None` is used); `None`
            expects the state dict itself.
        layout_hint: appended to the "not a flat state dict" message (what the expected file looks like).
        safe_globals: extra classes the weights-only unpickler may build (e.g. `argparse.Namespace` for the `args`
            entry of MAR / FAR training checkpoints); nothing else is allowed.

    Raises:
        FileNotFoundError: `path` is not a file. ValueError: unreadable, not a mapping, or values that are not tensors.
    """
    return load_checkpoint_file(path, flag, key, layout_hint, safe_globals).state_dict


def load_checkpoint_file(path: str | Path, flag: str = "--checkpoint", key: str | Sequence[str] | None = None,
                         layout_hint: str = "", safe_globals: Sequence[type] = (),
                         allow_flat: bool = False) -> LoadedCheckpoint:
    """:func:`load_state_dict_file` that also returns which entry the state dict came from and the file's other
    top-level entries (read in the same pass: a training checkpoint's `args`, without unpickling the file twice).

    `allow_flat=True` also accepts a file that is itself a flat state dict when `key` is given (`entry` is then
    `None`); a `.safetensors` file is always flat.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{flag} {str(path)!r} is not a file.")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return LoadedCheckpoint(load_file(path), None, {})
        except (SafetensorError, OSError) as error:
            raise ValueError(f"{path} is not a readable safetensors file ({error}).") from error
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            data = _weights_only_load(path)
    except pickle.UnpicklingError as error:
        if _is_damaged(error, path):
            raise _damaged(path, error) from error
        # a pickle that needs more than weights-only unpickling (a class that is not allowed): refused, never run
        lines = [line.strip() for line in str(error).splitlines() if "GLOBAL" in line]
        detail = lines[0] if lines else type(error).__name__
        raise ValueError(f"{path} is not a readable weights-only PyTorch checkpoint: it holds objects that only a full "
                         f"unpickle builds, and loading it could run code ({detail[:DETAIL_CHARS]}); it is refused. "
                         f"Export the weights as a plain state dict or a .safetensors file.") from error
    except UNREADABLE_ERRORS as error:
        raise _damaged(path, error) from error
    if not isinstance(data, Mapping):
        raise ValueError(f"{path} holds a {type(data).__name__}, not a state dict {{key: tensor}}.")
    entry, extras = None, {}
    flat = bool(data) and all(isinstance(value, torch.Tensor) for value in data.values())
    if key is not None and not (allow_flat and flat):
        keys = [key] if isinstance(key, str) else list(key)
        found = [name for name in keys if isinstance(data.get(name), Mapping)]
        if not found:
            wanted = " or ".join(repr(name) for name in keys)
            raise ValueError(f"{path} has no state dict under {wanted} (its entries: "
                             f"{list_names(sorted(map(str, data)))})" + (f"; {layout_hint}" if layout_hint else "."))
        entry = found[0]
        extras = {name: value for name, value in data.items() if name != entry}
        data = data[entry]
    not_tensors = sorted(str(name) for name, value in data.items() if not isinstance(value, torch.Tensor))
    if not_tensors:
        raise ValueError(f"{path} is not a flat state dict: entries {list_names(not_tensors)} are not tensors"
                         + (f" ({layout_hint})." if layout_hint else "."))
    return LoadedCheckpoint(dict(data), entry, extras)


def check_new_output_directory(output: str | Path, overwrite: bool = False, flag: str = "--output") -> Path:
    """Refuse to write into a file or a non-empty directory (unless `overwrite`); returns `output` as a `Path`."""
    output = Path(output)
    if output.exists() and (not output.is_dir() or (any(output.iterdir()) and not overwrite)):
        entries = sorted(p.name for p in output.iterdir())[:6] if output.is_dir() else []
        what = f"a non-empty directory ({entries})" if output.is_dir() else "a file"
        raise ValueError(f"{flag} {str(output)!r} is {what}; choose a new directory"
                         + (" or pass --overwrite." if output.is_dir() else "."))
    return output
