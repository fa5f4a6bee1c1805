"""Argument checking shared by the examples/ scripts: argparse types for numbers (NaN / inf and out-of-range values
are refused with a one-line usage error, exit status 2) and `--config_overrides` (a JSON object whose keys must be
fields of the config class; a typo is named with its close matches)."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import inspect
import json
import math
from pathlib import Path
from typing import Any, Callable


def _number(value: str, kind: type) -> float | int:
    try:
        number = kind(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an int' if kind is int else 'a number'}, got {value!r}") from None
    if kind is float and not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {value!r}")
    return number


def finite_float(value: str) -> float:
    """A float that is neither NaN nor infinite (argparse's `float` accepts "nan" and "inf")."""
    return _number(value, float)


def positive_float(value: str) -> float:
    """A finite float > 0."""
    number = _number(value, float)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value!r}")
    return number


def non_negative_float(value: str) -> float:
    """A finite float >= 0."""
    number = _number(value, float)
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value!r}")
    return number


def open_unit_float(value: str) -> float:
    """A float in (0, 1) (an EMA decay, a beta)."""
    number = _number(value, float)
    if not 0 < number < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {value!r}")
    return number


def unit_float(value: str) -> float:
    """A float in [0, 1) (Adam's betas)."""
    number = _number(value, float)
    if not 0 <= number < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {value!r}")
    return number


def positive_int(value: str) -> int:
    """An int >= 1."""
    number = _number(value, int)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {value!r}")
    return number


def non_negative_int(value: str) -> int:
    """An int >= 0."""
    number = _number(value, int)
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected an int >= 0, got {value!r}")
    return number


def config_fields(config_class: type | Callable) -> set[str]:
    """The keyword fields of a config class: a (transformers) dataclass's fields, else the `__init__` parameters."""
    if dataclasses.is_dataclass(config_class):
        return {field.name for field in dataclasses.fields(config_class)}
    parameters = inspect.signature(config_class).parameters.values()
    return {p.name for p in parameters if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self"}


def check_config_keys(values: dict[str, Any], config_class: type, flag: str = "--config_overrides",
                      extra: set[str] | frozenset[str] = frozenset()) -> None:
    """Raise `ValueError` naming every key of `values` that is not a field of `config_class` (with close matches)."""
    valid = config_fields(config_class) | set(extra)
    unknown = [key for key in values if key not in valid]
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, sorted(valid), n=3, cutoff=0.6)
        hints.append(f"{key!r}" + (f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""))
    raise ValueError(f"{flag}: {config_class.__name__} has no field {', '.join(hints)}; "
                     f"see the class's docstring for its fields.")


def parse_config_overrides(text: str | dict | None, config_class: type, flag: str = "--config_overrides",
                           extra: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    """`--config_overrides`: a JSON object of fields of `config_class` ({} for None). Raises `ValueError` for invalid
    JSON, a non-object, or an unknown key."""
    if text is None:
        return {}
    if isinstance(text, dict):
        values = text
    else:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{flag} is not valid JSON ({error.msg} at character {error.pos}): {text!r}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{flag} must be a JSON object of {config_class.__name__} fields, got "
                         f"{type(values).__name__}.")
    check_config_keys(values, config_class, flag, extra)
    return values


def describe_model_dir(path: str | Path) -> str:
    """What a folder holds, for error messages: "a saved FARPipeline pipeline", "a saved far model", "a folder
    without config.json (not a saved model)", ..."""
    root = Path(path)
    if not root.exists():
        return "a path that does not exist"
    if not root.is_dir():
        return "a file, not a model folder"
    for name in ("model_index.json", "config.json"):
        file = root / name
        if file.is_file():
            try:
                config = json.loads(file.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                return f"a folder with an unreadable {name}"
            kind = config.get("_class_name") or config.get("model_type") if isinstance(config, dict) else None
            what = "pipeline" if name == "model_index.json" else "model"
            return f"a saved {kind} {what}" if kind else f"a folder whose {name} names no model class"
    return "a folder without config.json (not a saved model)"


def resolve_model_dir(path: str | Path, flag: str, expected: str, *, model_type: str | None = None,
                      class_name: str | None = None, pipeline_class: str | None = None, subfolder: str | None = None,
                      hint: str = "") -> Path:
    """The model directory of `path` for `flag`: `path` itself when its config.json has `model_type` (transformers)
    or `_class_name` == `class_name` (diffusers), or `path/subfolder` when `path` is a `pipeline_class` pipeline.
    Anything else (another model, a pipeline of another kind, a folder that is not a saved model) is a `ValueError`
    saying what `path` is and what `flag` expects."""
    root = Path(path)
    index = root / "model_index.json"
    if pipeline_class and subfolder and index.is_file():
        try:
            pipeline = json.loads(index.read_text()).get("_class_name")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            pipeline = None
        if pipeline == pipeline_class:
            root = root / subfolder
    config_file = root / "config.json"
    config = None
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            config = None
    if isinstance(config, dict) and ((model_type and config.get("model_type") == model_type)
                                     or (class_name and config.get("_class_name") == class_name)):
        return root
    wanted = f"a {expected} folder" + (f" or a {pipeline_class} folder" if pipeline_class else "")
    what = describe_model_dir(path) if root == Path(path) else f"a {pipeline_class} whose {subfolder}/ is " \
        f"{describe_model_dir(root)}"
    raise ValueError(f"{flag} {str(path)!r} is {what}, not {wanted}" + (f"; {hint}." if hint else "."))
