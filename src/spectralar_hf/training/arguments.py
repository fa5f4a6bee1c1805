"""Argument checking shared by the examples/ scripts (numbers: `spectralar_hf.argtypes`): `--config_overrides` (a JSON
object whose keys must be fields of the config class; a typo is named with its close matches) and model folders given
to a flag (what a folder holds, and whether it is what the flag expects)."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
from pathlib import Path
from typing import Any, Callable

from ..utils import describe_folder, read_json


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


def resolve_model_dir(path: str | Path, flag: str, expected: str, *, model_type: str | None = None,
                      class_name: str | None = None, pipeline_class: str | None = None, subfolder: str | None = None,
                      hint: str = "") -> Path:
    """The model directory of `path` for `flag`: `path` itself when its config.json has `model_type` (transformers)
    or `_class_name` == `class_name` (diffusers), or `path/subfolder` when `path` is a `pipeline_class` pipeline.
    Anything else (another model, a pipeline of another kind, a folder that is not a saved model) is a `ValueError`
    saying what `path` is and what `flag` expects."""
    root = Path(path)
    if pipeline_class and subfolder and (root / "model_index.json").is_file():
        if read_json(root / "model_index.json", "pipeline index").get("_class_name") == pipeline_class:
            root = root / subfolder
    config = read_json(root / "config.json", "model config") if (root / "config.json").is_file() else {}
    if (model_type and config.get("model_type") == model_type) or \
            (class_name and config.get("_class_name") == class_name):
        return root
    wanted = f"a {expected} folder" + (f" or a {pipeline_class} folder" if pipeline_class else "")
    what = describe_folder(path) if root == Path(path) else f"a {pipeline_class} whose {subfolder}/ holds " \
        f"{describe_folder(root)}"
    raise ValueError(f"{flag} {str(path)!r} holds {what}, not {wanted}" + (f"; {hint}." if hint else "."))
