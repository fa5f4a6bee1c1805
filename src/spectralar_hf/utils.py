"""Input validation shared by the public entry points: one clear `ValueError` / `TypeError` (or `OSError` for files)
that names the bad input and the fix, raised before the input reaches torch / diffusers / safetensors.

Every check here is cheap: plain Python on scalars, at most one device sync per tensor (`amin` / `amax` together), and
header-only reads of weight files. `rand_rows` is the samplers' random draw for one generator or one per image.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

# Values this far outside a pixel range are taken as rounding, not as a wrong convention.
PIXEL_TOLERANCE = 1e-3
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
MODEL_CLASSES = {"spectral_tokenizer": "SpectralTokenizer", "spectralar": "SpectralARForCausalLM",
                 "far": "FARTransformer", "maskgit_vqgan": "MaskGITVQGAN"}
PIPELINE_CLASSES = ("SpectralARPipeline", "FARPipeline")


# ---------------------------------------------------------------------------------------------------------------
# scalars
# ---------------------------------------------------------------------------------------------------------------


def _scalar(value: Any) -> Any:
    """0-dim tensors and NumPy scalars as Python numbers; anything else unchanged."""
    if isinstance(value, torch.Tensor) and value.dim() == 0:
        return value.item()
    if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    return value


def format_bound(bound: float) -> str:
    """A range bound for a message: integral values without decimals (4294967295, not 4.29497e+09)."""
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


def interval(low: float | None, high: float | None, low_open: bool = False, high_open: bool = False) -> str:
    """The interval from `low` to `high` in words, e.g. "(0, 1]" or "[1, inf)" (`None`: unbounded)."""
    left = "-inf" if low is None else format_bound(low)
    right = "inf" if high is None else format_bound(high)
    return f"{'(' if low_open or low is None else '['}{left}, {right}{')' if high_open or high is None else ']'}"


def check_number(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, hint: str = "") -> float:
    """A finite real number in `[low, high]` (open ends with `low_open` / `high_open`), returned as `float`.

    Raises `TypeError` for non-numbers (strings, bools, lists) and `ValueError` for NaN / inf or values out of range.
    """
    value = _scalar(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}{hint_suffix(hint)}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value} (NaN / inf would silently give garbage "
                         f"results){hint_suffix(hint)}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        raise ValueError(f"{name} must lie in {interval(low, high, low_open, high_open)}, got {value:g}"
                         f"{hint_suffix(hint)}")
    return value


def check_int(name: str, value: Any, *, low: int | None = None, high: int | None = None, hint: str = "") -> int:
    """An integer (Python, NumPy or 0-dim integer tensor; not bool, not float) in `[low, high]`, returned as `int`."""
    value = _scalar(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}{hint_suffix(hint)}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        left = "-inf" if low is None else str(low)
        right = "inf" if high is None else str(high)
        raise ValueError(f"{name} must be an int in [{left}, {right}], got {value}{hint_suffix(hint)}")
    return value


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}.")
    return value


def check_generator(generator: Any, num_images: int | None = None) -> None:
    """`None`, one `torch.Generator`, or (samplers, which pass `num_images`) a list / tuple of exactly `num_images`
    generators, one per image (diffusers' convention: image `b`'s random numbers come from generator `b` alone).
    Without `num_images` (a training step) only one generator is accepted."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    if not isinstance(generator, (list, tuple)):
        raise TypeError(f"generator must be a torch.Generator (or None), got {type(generator).__name__} "
                        f"{generator!r}; use generator=torch.Generator().manual_seed(seed)"
                        + ("." if num_images is None else f" or one per image, e.g. "
                           f"[torch.Generator().manual_seed(i) for i in range({num_images})]."))
    kind = type(generator).__name__
    if num_images is None:
        raise TypeError(f"generator must be one torch.Generator (or None) in a training step, got a {kind} of "
                        f"{len(generator)}; per-image generator lists are for sampling (sample() and the pipelines). "
                        f"One generator seeds the whole batch reproducibly, e.g. "
                        f"generator=torch.Generator().manual_seed(0).")
    for index, item in enumerate(generator):
        if not isinstance(item, torch.Generator):
            raise TypeError(f"generator[{index}] must be a torch.Generator, got {type(item).__name__} {item!r}; pass "
                            f"one torch.Generator per image, e.g. [torch.Generator().manual_seed(i) for i in "
                            f"range({num_images})], or a single generator.")
    if len(generator) != num_images:
        what = "an empty list of generators" if not generator else \
            f"{len(generator)} generator{'s' if len(generator) != 1 else ''}"
        raise ValueError(f"got {what} for {num_images} image{'s' if num_images != 1 else ''}; pass one per image "
                         f"or a single generator.")


def rand_rows(shape: tuple[int, ...], generator: torch.Generator | list[torch.Generator] | None,
              device: torch.device | str, kind: str = "rand", dtype: torch.dtype | None = None,
              high: int | None = None) -> torch.Tensor:
    """Random numbers of `shape` `(B, ...)` on `device`, drawn on the generator's device (the default generator's:
    on `device`) and moved there.

    `kind`: `"rand"` (uniform in [0, 1)), `"randn"` (standard normal, diffusers' `randn_tensor`) or `"randint"`
    (`[0, high)`). One generator (or `None`) draws the whole shape at once. A list / tuple of `B` generators draws
    row `b` as `(1, ...)` from generator `b` alone (diffusers' `randn_tensor` with a list), so a row's numbers do not
    depend on the other rows, the batch size or the batching; a list of one gives the single generator's numbers.
    Consecutive rows given the same generator object draw together, as that generator alone would draw them (so
    `[g] * B` is `g`; `super_resolve` gives every sub-image of image `b` generator `b`).
    """
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for {shape[0]} rows; pass one per image or a single "
                             f"generator.")
        runs: list[list] = []  # [generator, number of consecutive rows]
        for item in generator:
            if runs and runs[-1][0] is item:
                runs[-1][1] += 1
            else:
                runs.append([item, 1])
        return torch.cat([rand_rows((count, *shape[1:]), item, device, kind, dtype, high) for item, count in runs])
    source = generator.device if generator is not None else device
    if kind == "randn":
        from diffusers.utils.torch_utils import randn_tensor  # lazy: diffusers is slow to import

        values = randn_tensor(tuple(shape), generator=generator, device=torch.device(source), dtype=dtype)
    elif kind == "randint":
        values = torch.randint(0, high, tuple(shape), generator=generator, device=source, dtype=dtype)
    elif kind == "rand":
        values = torch.rand(tuple(shape), generator=generator, device=source, dtype=dtype)
    else:
        raise ValueError(f"kind must be 'rand', 'randn' or 'randint', got {kind!r}.")
    return values.to(device)


def check_callable(name: str, value: Any) -> None:
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be a function (or None), got {type(value).__name__} {value!r}.")


def hint_suffix(hint: str) -> str:
    return f"; {hint}" if hint else "."


# ---------------------------------------------------------------------------------------------------------------
# tensors
# ---------------------------------------------------------------------------------------------------------------


def value_range(tensor: torch.Tensor) -> tuple[float, float]:
    """`(min, max)` of a non-empty float tensor with one device sync; NaN anywhere makes both NaN."""
    return tuple(torch.stack([tensor.amin(), tensor.amax()]).float().tolist())


def check_finite_tensor(name: str, tensor: torch.Tensor, hint: str = "") -> tuple[float, float]:
    """Raise `ValueError` when a float tensor holds NaN / inf; returns its `(min, max)` (one sync)."""
    low, high = value_range(tensor)
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"{name} contains NaN or inf values; they would silently turn into meaningless results"
                         f"{hint_suffix(hint or 'check how the values were computed (e.g. a division by zero)')}")
    return low, high


def check_pixel_range(name: str, tensor: torch.Tensor, low: float, high: float) -> None:
    """Finite values within `[low, high]` (give or take `PIXEL_TOLERANCE`), else a `ValueError` naming the expected
    range and the conversion from the usual other conventions."""
    found_low, found_high = check_finite_tensor(
        name, tensor, "check the image loading / normalisation (e.g. a division by zero)")
    if found_low >= low - PIXEL_TOLERANCE and found_high <= high + PIXEL_TOLERANCE:
        return
    if low == -1:
        fix = "for [0, 1] images use `2 * x - 1`, for [0, 255] images `x / 127.5 - 1`"
    else:
        fix = "for [0, 255] images use `x / 255`, for [-1, 1] images `(x + 1) / 2`"
    raise ValueError(f"{name} must hold values in [{low:g}, {high:g}], got values in [{found_low:.4g}, "
                     f"{found_high:.4g}]; {fix}.")


# ---------------------------------------------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------------------------------------------


def _kind_matches(kind: str, value: Any) -> bool:
    if kind == "None":
        return value is None
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind in ("list", "tuple"):
        return isinstance(value, (list, tuple))
    if kind == "dict":
        return isinstance(value, dict)
    return True  # an annotation we do not know: no check


def check_config_types(config: Any) -> None:
    """Check every field declared by `type(config)` against its annotation (`int`, `float | int`, `int | None`,
    `list[int] | str`, ...): a `TypeError` naming the field for a wrong type (e.g. `"32"` for an int in a hand-edited
    config.json) and a `ValueError` for a NaN / inf float. Only the class's own fields are checked (transformers'
    base fields are its business)."""
    cls = type(config)
    names = {field.name for field in dataclasses.fields(config)} if dataclasses.is_dataclass(config) else set()
    for name, annotation in cls.__dict__.get("__annotations__", {}).items():
        if name not in names or not isinstance(annotation, str) or annotation.startswith("ClassVar"):
            continue
        value = getattr(config, name)
        kinds = [part.strip().split("[")[0] for part in annotation.split("|")]
        if not any(_kind_matches(kind, value) for kind in kinds):
            wanted = " or ".join(k if k != "None" else "None" for k in kinds)
            raise TypeError(f"{cls.__name__}.{name} must be {wanted}, got {type(value).__name__} {value!r} (a "
                            f"hand-edited config.json? write it as a JSON {kinds[0]}).")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{cls.__name__}.{name} must be a finite number, got {value}.")


def check_positive_fields(config: Any, *names: str) -> None:
    bad = {name: getattr(config, name) for name in names if not getattr(config, name) > 0}
    if bad:
        raise ValueError(f"{type(config).__name__}: {', '.join(f'{k} = {v!r}' for k, v in bad.items())} must be "
                         f"positive.")


def check_id2label(config: Any) -> None:
    id2label = getattr(config, "id2label", None)
    if id2label is not None and not isinstance(id2label, dict):
        raise TypeError(f"{type(config).__name__}.id2label must be a dict {{class id: name}}, got "
                        f"{type(id2label).__name__}; for a list of names use `id2label=dict(enumerate(names))`.")


# ---------------------------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------------------------

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def local_directory(name_or_path: Any, subfolder: str | None = None) -> Path | None:
    """The local directory `name_or_path[/subfolder]` refers to, `None` for a Hub repo id that is not a local path.

    Raises `FileNotFoundError` for something that is clearly a local path (a `Path`, an absolute or relative path,
    `~`) but does not exist: without this the Hub client reports it as a malformed repo id.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"pretrained_model_name_or_path must be a directory or a Hub repo id (str or Path), got "
                        f"{type(name_or_path).__name__}.")
    text = os.fspath(name_or_path)
    path = Path(os.path.expanduser(text))
    if subfolder:
        path = path / subfolder
    if path.exists():
        return path
    looks_local = (isinstance(name_or_path, os.PathLike) or os.path.isabs(text) or text.startswith(("./", "../", "~"))
                   or text in (".", "..") or not _REPO_ID.match(text) or bool(subfolder and Path(text).exists()))
    if looks_local:
        parent = path.parent
        hint = ""
        if parent.is_dir():
            entries = sorted(entry.name for entry in parent.iterdir())[:12]
            hint = f" ({parent} holds {entries})"
        raise FileNotFoundError(f"No such directory: {path}{hint}; pass a directory written by save_pretrained, or "
                                f"a Hub repo id like 'user/model'.")
    return None


def read_json(path: Path, what: str) -> dict:
    """Parse a JSON object from `path`, or raise `OSError` naming the file and the fix."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise OSError(f"{path} is not valid JSON ({error}); the {what} is corrupt or was hand-edited: restore it "
                      f"or save the model again with save_pretrained.") from error
    if not isinstance(data, dict):
        raise OSError(f"{path} must hold a JSON object ({{...}}), got a {type(data).__name__}; the {what} is corrupt: "
                      f"restore it or save the model again with save_pretrained.")
    return data


def pipeline_class_name(index: dict) -> Any:
    """model_index.json's `_class_name`: the pipeline class name, also when it is saved in diffusers' custom-pipeline
    form `[module file, class name]` (what our pipelines write, see `spectralar_hf.remote_code`)."""
    name = index.get("_class_name")
    if isinstance(name, list) and len(name) == 2 and all(isinstance(part, str) for part in name):
        return name[1]
    return name


# What a folder holds, by config.json's `model_type` / `_class_name` or model_index.json's `_class_name`.
FOLDER_KINDS = {
    "spectral_tokenizer": "a SpectralTokenizer",
    "spectralar": "a SpectralAR transformer (SpectralARForCausalLM, no tokenizer)",
    "far": "a FAR transformer (FARTransformer, no VAE)",
    "maskgit_vqgan": "a MaskGIT-VQGAN (MaskGITVQGAN)",
    "AutoencoderKL": "a diffusers AutoencoderKL (VAE)",
    "SpectralARPipeline": "a SpectralARPipeline",
    "FARPipeline": "a FARPipeline (VAE latents, no spectral tokenizer)",
}


def describe_folder(path: str | Path) -> str:
    """What `path` holds, in words, for error messages ("a FARPipeline (VAE latents, no spectral tokenizer)", "a
    SpectralTokenizer (the tokenizer/ of the pipeline 'p')", "no config.json or model_index.json", ...). Raises
    `OSError` for a config file that is not a JSON object."""
    root = Path(path)
    if not root.exists():
        return "a path that does not exist"
    if not root.is_dir():
        return "a file, not a folder"
    if (root / "model_index.json").is_file():
        name = pipeline_class_name(read_json(root / "model_index.json", "pipeline index"))
        return FOLDER_KINDS.get(name, f"a {name!r} pipeline") if isinstance(name, str) else f"a {name!r} pipeline"
    if (root / "config.json").is_file():
        config = read_json(root / "config.json", "model config")
        name = config.get("model_type") or config.get("_class_name")
        kind = FOLDER_KINDS.get(name, f"a {name!r} model")
        if (root.parent / "model_index.json").is_file():
            kind += f" (the {root.name}/ of the pipeline {os.fspath(root.parent)!r})"
        return kind
    if (root / "scheduler_config.json").is_file():
        return "a diffusers scheduler"
    return "no config.json or model_index.json"


def check_safetensors_file(path: Path) -> None:
    """Validate a safetensors file from its header alone (8-byte length, JSON header, tensor extents = file size):
    a truncated, empty or overwritten file raises `OSError` naming it, instead of safetensors' header error."""
    path = Path(path)
    size = path.stat().st_size
    problem = None
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            problem = f"it has {size} bytes, fewer than the 8-byte header length"
        else:
            length = int.from_bytes(head, "little")
            if length > min(size - 8, MAX_SAFETENSORS_HEADER):
                problem = f"its header claims {length} bytes but the file has {size}"
            else:
                try:
                    header = json.loads(handle.read(length))
                    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
                except (ValueError, TypeError, KeyError, IndexError, AttributeError) as error:
                    problem = f"its header is not valid safetensors JSON ({error})"
                else:
                    expected = 8 + length + max(ends, default=0)
                    if expected != size:
                        problem = f"its header describes {expected} bytes but the file has {size}"
    if problem:
        raise OSError(f"{path} is not a valid safetensors file: {problem}. It is truncated or corrupt (an interrupted "
                      f"download or copy?); download or save the model again.")


def check_weight_files(directory: Path) -> None:
    for path in sorted(Path(directory).glob("*.safetensors")):
        check_safetensors_file(path)


def check_model_directory(directory: Path, config_class: Any, class_name: str) -> None:
    """Before transformers' `from_pretrained` reads a local model directory: it is a directory with a valid
    `config.json` of the right `model_type` whose fields build a config, and intact weight files."""
    if directory.is_file():
        raise NotADirectoryError(f"{directory} is a file; {class_name}.from_pretrained needs the directory written by "
                                 f"save_pretrained (config.json + model.safetensors), e.g. {directory.parent}.")
    config_file = directory / "config.json"
    if not config_file.is_file():
        if (directory / "model_index.json").is_file():
            index = read_json(directory / "model_index.json", "pipeline index")
            subfolders = [key for key, value in index.items() if isinstance(value, (list, tuple)) and len(value) == 2
                          and value[1] == class_name]
            where = f"subfolder={subfolders[0]!r}" if subfolders else "the subfolder of this component"
            raise OSError(f"{directory} is a pipeline directory (model_index.json), not a {class_name} directory: use "
                          f"{class_name}.from_pretrained({str(directory)!r}, {where}), or load the whole pipeline with "
                          f"{pipeline_class_name(index) or 'its pipeline class'}.from_pretrained.")
        entries = sorted(entry.name for entry in directory.iterdir())[:12]
        raise FileNotFoundError(f"{directory} has no config.json (it holds {entries}); {class_name}.from_pretrained "
                                f"needs a directory written by save_pretrained.")
    data = read_json(config_file, "model config")
    model_type = data.get("model_type")
    if model_type != config_class.model_type:
        other = MODEL_CLASSES.get(model_type)
        fix = f"load it with {other}.from_pretrained" if other else "point to a directory saved from this class"
        raise ValueError(f"{config_file} is a config of model_type {model_type!r}, not {config_class.model_type!r} "
                         f"({class_name}); {fix}.")
    try:
        config_class.from_dict(data)
    except (TypeError, ValueError) as error:
        # a bad value in a file: ValueError (also for a wrong type), so callers catching file problems see it
        raise ValueError(f"{config_file}: {error} Fix that field in config.json or save the model again.") from error
    weights = [entry for entry in directory.iterdir() if entry.suffix in (".safetensors", ".bin", ".pt", ".pth")
               or entry.name.endswith(".index.json")]
    if not weights:
        raise FileNotFoundError(f"{directory} has config.json but no weights (model.safetensors); copy the weight "
                                f"file next to config.json or save the model again with save_pretrained.")
    check_weight_files(directory)


def check_pipeline_directory(directory: Path, pipeline_name: str, required: tuple[str, ...],
                             model_classes: dict[str, Any]) -> None:
    """Before diffusers' `from_pretrained` reads a local pipeline directory: a readable `model_index.json` written
    for `pipeline_name`, with `[library, class]` entries for the `required` components, each subfolder present with
    a valid config and intact weights. `model_classes` maps our class names to their config classes."""
    if directory.is_file():
        raise NotADirectoryError(f"{directory} is a file; {pipeline_name}.from_pretrained needs the pipeline "
                                 f"directory (the one holding model_index.json), e.g. {directory.parent}.")
    index_file = directory / "model_index.json"
    if not index_file.is_file():
        config_file = next((directory / name for name in ("config.json", "scheduler_config.json")
                            if (directory / name).is_file()), None)
        if config_file is not None:
            data = read_json(config_file, "component config")
            kind = MODEL_CLASSES.get(data.get("model_type"), data.get("_class_name") or data.get("model_type"))
            raise OSError(f"{directory} is a single component ({kind}), not a {pipeline_name} directory: it has "
                          f"{config_file.name} but no model_index.json. Load it with {kind}.from_pretrained, or pass "
                          f"the pipeline directory that holds model_index.json (e.g. {directory.parent}).")
        entries = sorted(entry.name for entry in directory.iterdir())[:12]
        raise FileNotFoundError(f"{directory} has no model_index.json (it holds {entries}); {pipeline_name}"
                                f".from_pretrained needs a directory written by {pipeline_name}.save_pretrained.")
    index = read_json(index_file, "pipeline index")
    class_name = pipeline_class_name(index)
    if class_name != pipeline_name:
        fix = (f"load it with {class_name}.from_pretrained" if class_name in PIPELINE_CLASSES
               else f"it was not saved by {pipeline_name}")
        raise ValueError(f"{index_file} describes a {class_name!r} pipeline, not a {pipeline_name}; {fix}.")
    for name, entry in index.items():
        if name.startswith("_"):
            continue
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2
                and all(part is None or isinstance(part, str) for part in entry)):
            raise ValueError(f"{index_file}: entry {name!r} must be [library, class name] like "
                             f"[\"spectralar_hf\", \"SpectralTokenizer\"], got {entry!r}; restore model_index.json or "
                             f"save the pipeline again.")
    missing = [name for name in required if not (isinstance(index.get(name), (list, tuple)) and index[name][1])]
    if missing:
        raise ValueError(f"{index_file} names no {missing} component(s), which a {pipeline_name} needs; the file is "
                         f"incomplete: restore it or save the pipeline again.")
    for name, entry in index.items():
        if name.startswith("_") or entry[1] is None:
            continue
        folder = directory / name
        if not folder.is_dir():
            raise FileNotFoundError(f"{index_file} names a {name!r} component ({entry[1]}) but {folder} is missing; "
                                    f"copy the whole pipeline directory or save it again.")
        if entry[1] in model_classes:
            check_model_directory(folder, model_classes[entry[1]], entry[1])
            continue
        for config_name in ("config.json", "scheduler_config.json", "tokenizer_config.json"):
            if (folder / config_name).is_file():
                read_json(folder / config_name, f"{name} config")
        check_weight_files(folder)


def reject_unknown_arguments(method: Callable, kwargs: dict[str, Any]) -> None:
    """`TypeError` for keyword arguments that `method` does not take, with the closest names it does take: a typo such
    as `guidence_scale=3` is an error that says what was meant, never silently swallowed."""
    if not kwargs:
        return
    import difflib
    import inspect

    known = [name for name, parameter in inspect.signature(method).parameters.items()
             if parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL) and name != "self"]
    name = next(iter(kwargs))
    close = difflib.get_close_matches(name, known, n=3)
    raise TypeError(f"{method.__qualname__}() got an unexpected keyword argument {name!r}; "
                    + (f"did you mean {' or '.join(map(repr, close))}?" if close else f"it takes {', '.join(known)}."))
