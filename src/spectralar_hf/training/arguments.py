"""Argument checking shared by the examples/ scripts (numbers: `spectralar_hf.argtypes`): `--config_overrides` (a JSON
object whose keys must be fields of the config class; a typo is named with its close matches) and model folders given
to a flag (what a folder holds, and whether it is what the flag expects), and the optimisation / run flag groups that
every training script shares."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import inspect
import json
import os
from pathlib import Path
from typing import Any, Callable

from ..argtypes import positive_int
from ..utils import describe_folder, pipeline_class_name, read_json


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
        if pipeline_class_name(read_json(root / "model_index.json", "pipeline index")) == pipeline_class:
            root = root / subfolder
    config = read_json(root / "config.json", "model config") if (root / "config.json").is_file() else {}
    if (model_type and config.get("model_type") == model_type) or \
            (class_name and config.get("_class_name") == class_name):
        return root
    wanted = f"a {expected} folder" + (f" or a {pipeline_class} folder" if pipeline_class else "")
    what = describe_folder(path) if root == Path(path) else f"a {pipeline_class} whose {subfolder}/ holds " \
        f"{describe_folder(root)}"
    raise ValueError(f"{flag} {str(path)!r} holds {what}, not {wanted}" + (f"; {hint}." if hint else "."))


# ---------------------------------------------------------------------------------------------------- shared groups


@dataclasses.dataclass(frozen=True)
class OptimizationDefaults:
    """The defaults of one script's "optimisation" flags (each script follows its paper's recipe)."""

    title: str = "optimisation"
    train_batch_size: int = 32
    learning_rate: float = 1e-4
    scale_lr_help: str = "multiply the lr by the total batch size / 256"
    adam_beta2: float = 0.99
    adam_weight_decay: float = 1e-4
    lr_scheduler: str = "cosine"
    lr_scheduler_help: str = "a diffusers get_scheduler name"
    max_grad_norm: float = 1.0
    ema_decay: float = 0.999


def add_optimization_arguments(parser: argparse.ArgumentParser, defaults: OptimizationDefaults
                               ) -> argparse._ArgumentGroup:
    """Batch, steps, AdamW, lr schedule, clipping, EMA, precision and seed flags (the same in every training script);
    returns the group so a script can add its own."""
    from diffusers.optimization import SchedulerType

    from ..argtypes import (
        non_negative_float,
        non_negative_int,
        open_unit_float,
        positive_float,
        positive_int,
        unit_float,
    )

    optim = parser.add_argument_group(defaults.title)
    optim.add_argument("--train_batch_size", type=positive_int, default=defaults.train_batch_size, help="per device")
    optim.add_argument("--max_train_steps", type=positive_int, default=10000)
    optim.add_argument("--gradient_accumulation_steps", type=positive_int, default=1)
    optim.add_argument("--learning_rate", type=positive_float, default=defaults.learning_rate)
    optim.add_argument("--scale_lr", action="store_true", help=defaults.scale_lr_help)
    optim.add_argument("--adam_beta1", type=unit_float, default=0.9)
    optim.add_argument("--adam_beta2", type=unit_float, default=defaults.adam_beta2)
    optim.add_argument("--adam_weight_decay", type=non_negative_float, default=defaults.adam_weight_decay)
    optim.add_argument("--adam_epsilon", type=positive_float, default=1e-8)
    optim.add_argument("--lr_scheduler", choices=[kind.value for kind in SchedulerType], type=str,
                       default=defaults.lr_scheduler, help=defaults.lr_scheduler_help)
    optim.add_argument("--lr_warmup_steps", type=non_negative_int, default=500)
    optim.add_argument("--max_grad_norm", type=non_negative_float, default=defaults.max_grad_norm,
                       help="0: no clipping")
    optim.add_argument("--use_ema", action="store_true")
    optim.add_argument("--ema_decay", type=open_unit_float, default=defaults.ema_decay)
    optim.add_argument("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"])
    optim.add_argument("--gradient_checkpointing", action="store_true",
                       help="recompute each block's activations in the backward pass (less memory, same gradients)")
    optim.add_argument("--allow_tf32", action="store_true",
                       help="TF32 matmuls and convolutions on Ampere+ GPUs (faster float32; no effect on a CPU)")
    optim.add_argument("--seed", type=non_negative_int, default=0)
    return optim


def add_run_arguments(parser: argparse.ArgumentParser, validation_help: str, overwrite_note: str = ""
                      ) -> argparse._ArgumentGroup:
    """Output folder, logging, validation cadence, checkpoints, resume and Hub flags (the same in every training
    script); returns the group so a script can add its own validation settings."""
    from ..argtypes import positive_int

    run = parser.add_argument_group("run")
    run.add_argument("--output_dir", type=str, required=True)
    run.add_argument("--logging_dir", type=str, default="logs")
    run.add_argument("--report_to", type=str, default="tensorboard", help='"tensorboard", "none", ...')
    run.add_argument("--overwrite_output_dir", action="store_true",
                     help="delete an earlier run's checkpoints, logs and model in --output_dir and start over"
                          + overwrite_note)
    run.add_argument("--logging_steps", type=positive_int, default=50)
    run.add_argument("--validation_steps", type=positive_int, default=1000, help=validation_help)
    run.add_argument("--checkpointing_steps", type=positive_int, default=1000)
    run.add_argument("--checkpoints_total_limit", type=positive_int, default=None)
    run.add_argument("--resume_from_checkpoint", type=str, default=None, help='a checkpoint-N path or "latest"')
    run.add_argument("--push_to_hub", action="store_true")
    run.add_argument("--hub_model_id", type=str, default=None)
    run.add_argument("--hub_token", type=str, default=None)
    return run


# The image sources every script that reads images takes: exactly one of them.
IMAGE_SOURCES = ("dataset_name", "train_data_dir", "train_data_files", "idx_data_dir")


def add_image_source_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The "data" group's image-source flags (a `datasets` id, an image folder, tar / parquet shards or IDX files;
    the column, split and cache; streaming with its shuffle buffer); returns the group so a script adds its own data
    flags."""
    data = parser.add_argument_group("data")
    data.add_argument("--dataset_name", type=str, default=None, help="a `datasets` id with an image column")
    data.add_argument("--dataset_config_name", type=str, default=None)
    data.add_argument("--train_data_dir", type=str, default=None, help='an image folder (`datasets` "imagefolder")')
    data.add_argument("--train_data_files", type=str, nargs="+", default=None,
                      help='data files: tar shards (webdataset: "shards/{000000..001281}.tar"), parquet or arrow; '
                           "brace ranges and globs are expanded")
    data.add_argument("--idx_data_dir", type=str, default=None, help="MNIST-format IDX files (Fashion-MNIST)")
    data.add_argument("--image_column", type=str, default=None)
    data.add_argument("--split", type=str, default="train")
    data.add_argument("--cache_dir", type=str, default=None, help="`datasets` cache directory")
    data.add_argument("--streaming", action="store_true",
                      help="stream --dataset_name / --train_data_files / --train_data_dir instead of downloading and "
                           "preparing it first: split per process, shuffled in a seeded buffer, resumed exactly")
    data.add_argument("--shuffle_buffer_size", type=positive_int, default=10_000,
                      help="--streaming: examples in the shuffle buffer (with shuffled shard order)")
    return data


def check_image_source(parser: argparse.ArgumentParser, args: argparse.Namespace,
                       other_sources: dict[str, bool] | None = None) -> None:
    """Exactly one image source is given (of `IMAGE_SOURCES` and a script's `other_sources`, flag -> given), a given
    folder exists and --streaming has a source it can stream; otherwise `parser.error` names the flags."""
    given = {f"--{name}": getattr(args, name) is not None for name in IMAGE_SOURCES}
    given.update(other_sources or {})
    if sum(given.values()) != 1:
        flags = list(given)
        parser.error(f"give exactly one data source: {', '.join(flags[:-1])} or {flags[-1]}")
    for flag in ("train_data_dir", "idx_data_dir"):
        folder = getattr(args, flag)
        if folder is not None and not os.path.isdir(folder):
            parser.error(f"--{flag} {folder!r} does not exist or is not a directory")
    if args.streaming and not any(getattr(args, name) is not None for name in IMAGE_SOURCES[:3]):
        parser.error("--streaming streams --dataset_name, --train_data_files or --train_data_dir; the other sources "
                     "are read into memory: drop --streaming")
