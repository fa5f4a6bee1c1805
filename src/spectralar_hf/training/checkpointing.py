"""Crash-safe training checkpoints and run state for accelerate runs.

A checkpoint is first written to a hidden `.checkpoint-N.partial` directory and renamed to `checkpoint-N` only when
every file is on disk, so a process killed during a save never leaves a directory that `latest` would pick up.

One output directory holds one run: `plan_run` refuses to start a new run where an earlier one left its files (unless
it is resumed, or `--overwrite_output_dir` deletes them first), and `resume` checks a checkpoint before loading it:
the model configuration and the checkpointed components recorded in its `run_config.json` must match the new run's,
accelerate's RNG state file must load (accelerate itself only logs a failure and continues, which silently loses
the exact resume), every pickled file must load with `weights_only=True` (accelerate unpickles custom states
without that guard, so a planted file would run code), each custom state must have the keys and tensor shapes of the
object it is loaded into (diffusers' `EMAModel.load_state_dict` accepts any dict), and the loaded weights and EMA
weights must be finite (a checkpoint of a diverged run is refused). `run_info.json` is written (atomically) only after
these checks. `save_checkpoint` refuses to save a state whose weights are not finite (see `finite`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

import torch

from .finite import _floating_tensors, check_finite_state, custom_state_name, nonfinite_state, nonfinite_summary

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in `output_dir`, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := CHECKPOINT_PATTERN.match(p.name))]
    return [path for _, path in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete `checkpoint-N` in `output_dir`, or None."""
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def checkpoint_step(path: str | Path) -> int:
    """The step N of a `checkpoint-N` directory."""
    match = CHECKPOINT_PATTERN.match(Path(path).name)
    if match is None:
        raise ValueError(f"{path} is not a checkpoint-N directory.")
    return int(match.group(1))


RUN_CONFIG = "run_config.json"


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside `path` for writing (`mode` "wb" or "w"); when the block ends it replaces `path`
    (`os.replace`), and on an error it is removed: a reader, or a run killed while writing, never sees a half-written
    file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as stream:
            yield stream
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, value: Any) -> None:
    """Write `value` as JSON to `path` atomically (see `atomic_write`)."""
    with atomic_write(path, "w") as stream:
        stream.write(json.dumps(value, indent=2, default=str) + "\n")


def save_checkpoint(accelerator, output_dir: str | Path, step: int, total_limit: int | None = None,
                    run_config: dict | None = None) -> Path:
    """`accelerator.save_state` into `output_dir/checkpoint-{step}` atomically; keep at most `total_limit`.

    `run_config` (see `run_config`) is saved with it as `run_config.json`, which `resume` compares. A state whose
    weights are not finite (a diverged run) is not saved: `ValueError` naming `step` (see `finite.check_finite_state`).
    """
    check_finite_state(accelerator, step)
    root = Path(output_dir)
    final = root / f"checkpoint-{step}"
    partial = root / f".checkpoint-{step}.partial"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if run_config is not None:
            write_json_atomic(partial / RUN_CONFIG, run_config)
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
        if total_limit is not None and total_limit > 0:
            for old in list_checkpoints(root)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


class DataProgress:
    """How many micro-batches a run has consumed, saved with its checkpoints (`register_for_checkpointing`).

    With gradient accumulation the position in the data is NOT `global_step * gradient_accumulation_steps`:
    accelerate also takes an optimizer step at the end of every epoch (`sync_with_dataloader`), so an epoch of `n`
    batches gives `ceil(n / accumulation)` steps. A resumed run computes its epoch and the batches to skip from this
    counter instead.

    A streamed run (`streaming.StreamLoader`, attached as `stream`) saves every rank's stream position instead:
    `gather_stream` collects them (all ranks call it before a checkpoint) and each rank resumes from its own.
    """

    def __init__(self) -> None:
        self.micro_step = 0
        self.stream = None  # a StreamLoader (set by TrainingRun.prepare)
        self.rank, self.world_size = 0, 1
        self._stream_positions: list[list[int]] | None = None

    def gather_stream(self, accelerator) -> None:
        """Collect every rank's stream position (a collective: every rank calls it)."""
        local = torch.tensor([self.stream.position.to_list()], dtype=torch.long, device=accelerator.device)
        self._stream_positions = accelerator.gather(local).tolist()

    def state_dict(self) -> dict:
        state = {"micro_step": self.micro_step}
        if self.stream is not None:
            # before the first gather (a checkpoint is always gathered first): this rank's position in every slot
            positions = self._stream_positions or [self.stream.position.to_list()] * self.world_size
            state["stream"] = {"fingerprint": self.stream.fingerprint, "positions": positions}
        return state

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("stream")
        if (saved is None) != (self.stream is None):
            raise ValueError("The checkpoint was saved " + ("with" if saved is not None else "without") +
                             " --streaming; resume with the same data flags or start a new run.")
        self.micro_step = int(state["micro_step"])
        if saved is not None:
            self.stream.check_resumable(saved["fingerprint"])
            self.stream.position.load_list(saved["positions"][self.rank])


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one JSON line (a training log record) to `path`."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, default=float) + "\n")


# ---------------------------------------------------------------------------------------------------------------
# Run state: one run per output directory, checked resumes
# ---------------------------------------------------------------------------------------------------------------

RUN_FILES = ("run_info.json", "train_log.jsonl", "samples", "latent_stats.json")
VOLATILE_CONFIG_KEYS = {"transformers_version", "architectures", "name_or_path", "dtype", "torch_dtype"}


def run_config(script: str, model_config: Any, **components: Any) -> dict:
    """What a checkpoint must match to be resumed: the script that saved it, the model's configuration (without
    version / bookkeeping keys) and the checkpointed components (EMA, discriminator sizes, a gradient scaler, ...),
    JSON-normalised."""
    if hasattr(model_config, "to_dict"):
        model_config = model_config.to_dict()
    model = {key: value for key, value in dict(model_config).items()
             if not key.startswith("_") and key not in VOLATILE_CONFIG_KEYS}
    record = {"script": script, "model": model, "components": components}
    return json.loads(json.dumps(record, default=str, sort_keys=True))


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in old:
                found.append(f"{name} (not in the checkpoint, now {new[key]!r})")
            elif key not in new:
                found.append(f"{name} (checkpoint {old[key]!r}, not set now)")
            else:
                found += _differences(old[key], new[key], name)
        return found
    return [] if old == new else [f"{prefix} (checkpoint {old!r}, now {new!r})"]


def check_run_config(checkpoint: Path, config: dict | None) -> None:
    """Raise `ValueError` naming the differing fields when `checkpoint` was saved by a run with another model
    configuration or other checkpointed components. Checkpoints of older versions (no run_config.json) pass."""
    recorded_file = Path(checkpoint) / RUN_CONFIG
    if config is None or not recorded_file.is_file():
        return
    try:
        recorded = json.loads(recorded_file.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{recorded_file} is corrupt ({error.msg}); resume from another checkpoint.") from None
    if isinstance(recorded, dict) and recorded.get("script") != config.get("script") and recorded.get("script"):
        raise ValueError(f"Cannot resume {checkpoint}: it was saved by {recorded['script']}, not by "
                         f"{config.get('script')}; point --resume_from_checkpoint to a checkpoint of this script.")
    changed = _differences(recorded, config)
    if changed:
        shown = "; ".join(changed[:6]) + (f"; and {len(changed) - 6} more" if len(changed) > 6 else "")
        raise ValueError(f"Cannot resume {checkpoint}: it was saved by a run with another configuration ({shown}). "
                         f"Resume with the arguments of that run (see {recorded_file}), or start a new run in "
                         f"another --output_dir.")


def find_checkpoint(output_dir: str | Path, choice: str) -> Path:
    """`choice` is "latest", a `checkpoint-N` directory path, or a bare `checkpoint-N` name inside `output_dir` (as
    in diffusers' scripts). Raises `ValueError` when no complete checkpoint matches."""
    if choice == "latest":
        path = latest_checkpoint(output_dir)
    else:
        path = Path(choice)
        if not path.is_dir() and path.parent == Path(".") and (Path(output_dir) / choice).is_dir():
            path = Path(output_dir) / choice
    if path is None or not path.is_dir() or not CHECKPOINT_PATTERN.match(path.name):
        raise ValueError(f"--resume_from_checkpoint {choice!r}: no complete checkpoint found in {output_dir}; start "
                         f"without it or point to a checkpoint-N directory.")
    return path


def earlier_run_files(output_dir: str | Path, outputs: tuple[str, ...] = (), logging_dir: str | None = None
                      ) -> list[Path]:
    """The files and folders of an earlier run in `output_dir`: checkpoints (complete or partial), run_info.json,
    train_log.jsonl, samples, the saved model folders `outputs` and the logging dir (when inside `output_dir`)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    names = set(RUN_FILES) | {RUN_CONFIG} | set(outputs)
    if logging_dir and not Path(logging_dir).is_absolute() and len(Path(logging_dir).parts) == 1:
        names.add(logging_dir)
    found = []
    for path in sorted(root.iterdir()):
        partial = path.name.startswith(".checkpoint-") and path.name.endswith(".partial")
        if path.name in names or CHECKPOINT_PATTERN.match(path.name) or partial:
            found.append(path)
    return found


@dataclasses.dataclass
class RunPlan:
    """What `plan_run` decided: the checkpoint to resume (or None) and the earlier run's files to delete first."""

    output_dir: Path
    checkpoint: Path | None = None
    stale: list[Path] = dataclasses.field(default_factory=list)


def plan_run(output_dir: str | Path, resume: str | None, overwrite: bool = False, outputs: tuple[str, ...] = (),
             logging_dir: str | None = None) -> RunPlan:
    """Check `--output_dir` / `--resume_from_checkpoint` / `--overwrite_output_dir` before anything is written (on
    every process; nothing is changed here).

    A new run (no `resume`) needs an output directory without an earlier run's files (`earlier_run_files`), or
    `overwrite`, in which case those files are listed in `RunPlan.stale` for `start_run` to delete. A resumed run
    needs a complete checkpoint. Raises `ValueError` with the fix otherwise."""
    root = Path(output_dir)
    if root.exists() and not root.is_dir():
        raise ValueError(f"--output_dir {str(root)!r} is a file, not a directory.")
    if resume and overwrite:
        raise ValueError("--overwrite_output_dir would delete the run that --resume_from_checkpoint continues; pass "
                         "only one of them.")
    found = earlier_run_files(root, outputs, logging_dir)
    if resume:
        checkpoint = find_checkpoint(root, resume)
        if found and checkpoint.resolve().parent != root.resolve():
            raise ValueError(f"--resume_from_checkpoint {str(checkpoint)!r} belongs to another directory, but "
                             f"--output_dir {str(root)!r} holds an earlier run of its own; continue a run in the "
                             f"directory of its checkpoints, or resume into an empty --output_dir.")
        return RunPlan(root, checkpoint)
    if found and not overwrite:
        names = ", ".join(path.name for path in found[:5]) + (", ..." if len(found) > 5 else "")
        raise ValueError(f"--output_dir {str(root)!r} holds an earlier run ({names}); continue it with "
                         f"--resume_from_checkpoint latest, delete it and start over with --overwrite_output_dir, "
                         f"or choose another --output_dir.")
    return RunPlan(root, None, found)


PICKLED_SUFFIXES = (".pkl", ".bin", ".pt", ".pth")
RESUME_FIX = "resume from an earlier checkpoint, or start a new run (another --output_dir, or --overwrite_output_dir)"


def load_weights_only(path: Path, checkpoint: Path) -> Any:
    """One pickled file of `checkpoint`, loaded as accelerate loads its RNG states (`weights_only=True` plus its numpy
    allow-list). `ValueError` naming the file: refused when it needs a full unpickle (it could run code), or damaged."""
    import pickle

    from accelerate.utils import load

    try:
        return load(path, map_location="cpu")
    except pickle.UnpicklingError as error:
        if "global" in str(error).lower():  # a class or function outside the weights-only allow-list
            raise ValueError(f"Refusing to resume {checkpoint}: {path.name} holds objects that only a full unpickle "
                             f"builds (loading it could run code from the checkpoint folder); resume from a "
                             f"checkpoint that you saved yourself, or start a new run.") from None
        raise ValueError(f"Cannot resume {checkpoint}: {path.name} is corrupt ({type(error).__name__}); "
                         f"{RESUME_FIX}.") from None
    except Exception as error:  # noqa: BLE001 - truncated / not a torch file: one line naming it
        raise ValueError(f"Cannot resume {checkpoint}: {path.name} is corrupt ({type(error).__name__}); "
                         f"{RESUME_FIX}.") from None


def check_pickled_files(checkpoint: Path) -> None:
    """Refuse a checkpoint any of whose pickled files (`PICKLED_SUFFIXES`) does not load with `weights_only=True`.

    accelerate unpickles the custom states (`custom_checkpoint_N.pkl`: EMA, codebook restarts, data progress, ...)
    with `weights_only=False`, which runs whatever code the file names: a checkpoint folder one did not write (a
    colleague's run, a download) could execute code on resume. Every such file is loaded here first with
    `load_weights_only`, so a file that needs more is refused before accelerate opens it."""
    for path in sorted(checkpoint.iterdir()):
        if path.is_file() and path.suffix in PICKLED_SUFFIXES:
            load_weights_only(path, checkpoint)


def _state_mismatch(saved: Any, current: Any, name: str = "") -> str | None:
    """What in `saved` (a checkpoint's custom state) does not have the structure of `current` (the state the run's
    object has now): other keys, another number of tensors, other tensor shapes, a non-number for a number. `None`
    when it fits; an entry that is `None` now (not yet initialised) accepts anything."""
    where = f" at {name}" if name else ""
    if current is None:
        return None
    if isinstance(current, dict):
        if not isinstance(saved, dict):
            return f"a {type(saved).__name__}{where} instead of a dict with keys {', '.join(map(str, current))}"
        if set(saved) != set(current):
            extra, missing = sorted(map(str, set(saved) - set(current))), sorted(map(str, set(current) - set(saved)))
            return (f"keys{where}: " + "; ".join(part for part in (
                f"unexpected {', '.join(extra[:6])}" if extra else "", f"missing {', '.join(missing[:6])}" if missing
                else "") if part))
        for key in current:
            found = _state_mismatch(saved[key], current[key], f"{name}.{key}" if name else str(key))
            if found:
                return found
        return None
    if isinstance(current, (list, tuple)):
        if not isinstance(saved, (list, tuple)) or len(saved) != len(current):
            size = f"{len(saved)} entries" if isinstance(saved, (list, tuple)) else f"a {type(saved).__name__}"
            per = " (one per parameter of this run's model)" if name == "shadow_params" else ""
            return f"{size}{where} instead of {len(current)}{per}"
        for index, (old, new) in enumerate(zip(saved, current)):
            found = _state_mismatch(old, new, f"{name}[{index}]")
            if found:
                return found
        return None
    if isinstance(current, torch.Tensor):
        if not isinstance(saved, torch.Tensor):
            return f"a {type(saved).__name__}{where} instead of a tensor of shape {tuple(current.shape)}"
        if saved.shape != current.shape:
            return f"shape {tuple(saved.shape)}{where} instead of {tuple(current.shape)}"
        return None
    if isinstance(current, (int, float)) and not isinstance(saved, (int, float)):
        return f"a {type(saved).__name__}{where} instead of a number"
    return None


def custom_state_problem(accelerator, checkpoint: Path) -> str | None:
    """What is wrong with the checkpoint's custom states, as a one-line `ValueError` message, or `None`.

    Each `custom_checkpoint_N.pkl` (loaded with `load_weights_only`) must be a state of the object registered N-th in
    this run, with its keys and tensor shapes (the EMA's shadow weights: one per parameter of the model, of its
    shape), and finite. diffusers' `EMAModel.load_state_dict` accepts any dict (`{'foo': 1}` keeps the fresh EMA)
    and shadow weights of any number and shape, so without this check a replaced or foreign EMA state would be
    resumed silently. Counts that differ are left to accelerate's own error."""
    objects = accelerator._custom_objects
    if len(list(checkpoint.glob("custom_checkpoint_*.pkl"))) != len(objects):
        return None
    for index, obj in enumerate(objects):
        path = checkpoint / f"custom_checkpoint_{index}.pkl"
        if not path.is_file() or not hasattr(obj, "state_dict"):
            continue
        saved = load_weights_only(path, checkpoint)
        mismatch = _state_mismatch(saved, obj.state_dict())
        if mismatch is not None:
            return (f"Cannot resume {checkpoint}: {path.name} is not a state of {custom_state_name(obj)} of this run "
                    f"({mismatch[:300]}); {RESUME_FIX}.")
        problem = nonfinite_summary(f"{custom_state_name(obj)} in {path.name}", _floating_tensors(saved))
        if problem is not None:
            return f"Cannot resume {checkpoint}: {problem}: the run had diverged before this checkpoint was saved; " \
                   f"{RESUME_FIX}."
    return None


def load_rng_states(path: Path) -> dict:
    """accelerate's RNG state file of one process, loaded as `Accelerator.load_state` loads it; `ValueError` naming
    the file when it is missing or unreadable (accelerate would only log "Could not load random states")."""
    fix = f"the resume would not be exact; {RESUME_FIX}"
    if not path.is_file():
        raise ValueError(f"The checkpoint has no RNG state file {path}: {fix}.")
    try:
        states = load_weights_only(path, path.parent)
    except ValueError as error:
        if str(error).startswith("Refusing"):
            raise
        raise ValueError(f"The RNG state file {path} is corrupt: {fix}.") from None
    if not isinstance(states, dict) or not {"random_state", "numpy_random_seed", "torch_manual_seed"} <= set(states):
        raise ValueError(f"The RNG state file {path} does not hold accelerate's random states: {fix}.")
    return states


def resume(accelerator, checkpoint: str | Path | None, config: dict | None = None,
           output_dir: str | Path | None = None) -> int:
    """Load `checkpoint` (None: a fresh run, step 0) after checking its `run_config.json` against `config`, its RNG
    state file, its pickled files and its custom states (`custom_state_problem`); afterwards the weights must be finite
    and the RNG state must be the saved one. Drops the records after the checkpoint's step
    from `output_dir/train_log.jsonl` (they are trained again). Returns the step N of `checkpoint-N`."""
    if checkpoint is None:
        return 0
    checkpoint = Path(checkpoint)
    step = checkpoint_step(checkpoint)
    check_run_config(checkpoint, config)
    # every process checks the files of all processes, so that all of them stop on the same error
    for index in range(accelerator.num_processes):
        if index != accelerator.process_index:
            load_rng_states(checkpoint / f"random_states_{index}.pkl")
    rng_file = checkpoint / f"random_states_{accelerator.process_index}.pkl"
    states = load_rng_states(rng_file)
    check_pickled_files(checkpoint)  # before accelerate unpickles the custom states without weights_only
    # EMAModel.load_state_dict would accept anything: checked against this run's objects before they are loaded; a
    # model that does not fit is named first (accelerate loads the models before the custom states)
    custom_problem = custom_state_problem(accelerator, checkpoint)
    try:
        accelerator.load_state(str(checkpoint))
    except Exception as error:  # noqa: BLE001 - turned into one line naming the checkpoint and the fix
        lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
        mismatch = next((line for line in lines if "size mismatch" in line or "Missing key" in line
                         or "Unexpected key" in line or "Number of custom checkpoints" in line), None)
        if mismatch is not None:
            raise ValueError(f"Cannot resume {checkpoint}: it does not fit this run ({mismatch[:300]}); resume with "
                             f"the arguments of the run that saved it, or start a new run in another --output_dir."
                             ) from None
        if custom_problem is not None:
            raise ValueError(custom_problem) from None
        raise ValueError(f"Cannot resume {checkpoint}: a file of it cannot be read ({type(error).__name__}: "
                         f"{lines[0][:300]}); resume from an earlier checkpoint, or start a new run.") from None
    if custom_problem is not None:
        raise ValueError(custom_problem)
    diverged = nonfinite_state(accelerator)  # the loaded weights (each process checks the same files)
    if diverged:
        raise ValueError(f"Cannot resume {checkpoint}: {'; '.join(diverged)}: the run had diverged before this "
                         f"checkpoint was saved; {RESUME_FIX}.")
    if not torch.equal(torch.get_rng_state(), states["torch_manual_seed"]):
        raise ValueError(f"The RNG states of {rng_file} were not restored: the resume would not be exact; resume "
                         f"from an earlier checkpoint, or start a new run.")
    if accelerator.is_main_process and output_dir is not None:
        truncate_log(Path(output_dir) / "train_log.jsonl", step)
    return step


SCHEDULE_ARGS = ("lr_scheduler", "lr_warmup_steps", "max_train_steps")  # what a resumed schedule is rebuilt from


def schedule_changes(checkpoint: str | Path, args, restored_base_lrs: list[float], learning_rate: float) -> list[str]:
    """Warnings for a resume whose learning-rate plan differs from the run that saved `checkpoint` (its folder's
    `run_info.json`): the schedule is rebuilt from this run's --lr_scheduler / --lr_warmup_steps / --max_train_steps,
    so a decaying one changes course at the checkpoint's step; while the base rate is the checkpoint's
    (`restored_base_lrs`, PyTorch restores it with the scheduler), so a changed --learning_rate has no effect."""
    warnings = []
    if not all(math.isclose(base, learning_rate, rel_tol=1e-6) for base in restored_base_lrs):
        warnings.append(f"--learning_rate: this run's rate {learning_rate:g} is not used; the schedule resumed from "
                        f"{checkpoint} keeps its base rate {max(restored_base_lrs):g}. To train on at another rate, "
                        f"start a new run from the saved weights (--pretrained_model_name_or_path where the script "
                        f"has it).")
    info_file = Path(checkpoint).parent / "run_info.json"
    try:
        saved = json.loads(info_file.read_text())["args"]
    except (OSError, ValueError, KeyError, TypeError):
        return warnings  # no record of the saving run's plan
    before = {name: saved.get(name) for name in SCHEDULE_ARGS}
    now = {name: getattr(args, name, None) for name in SCHEDULE_ARGS}
    constant = {"constant", "constant_with_warmup"}
    step = checkpoint_step(Path(checkpoint))
    if before != now and not (before["lr_scheduler"] in constant and now["lr_scheduler"] in constant
                              and before["lr_warmup_steps"] == now["lr_warmup_steps"]):
        plan = "{lr_scheduler} (warm-up {lr_warmup_steps}, {max_train_steps} steps)".format
        warnings.append(f"The learning-rate schedule changes at step {step}: {info_file} planned {plan(**before)}; "
                        f"this run plans {plan(**now)} and follows that plan from step {step} on (a run that goes on "
                        f"in segments resumes exactly only with a constant schedule after warm-up).")
    return warnings


def truncate_log(path: Path, step: int) -> None:
    """Keep only the records of `train_log.jsonl` up to `step` (a resumed run logs the later steps again)."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = []
    for line in lines:
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a line cut off by a kill
    if len(kept) != len(lines):
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(temporary, path)


def resume_from_checkpoint(accelerator, output_dir: str | Path, choice: str | None, config: dict | None = None) -> int:
    """`resume` of `find_checkpoint(output_dir, choice)`; 0 when `choice` is None."""
    return resume(accelerator, find_checkpoint(output_dir, choice) if choice else None, config, output_dir)


def start_run(accelerator, output_dir: str | Path, args, project_name: str, stale: list[Path] | tuple = (),
              config: dict | None = None) -> None:
    """On the main process: delete an earlier run's files `stale` (`plan_run` with `--overwrite_output_dir`), create
    `output_dir`, record `run_info.json` (world size, device, arguments, `config`) atomically and start the
    trackers. Call it after `resume`, so that a failed resume leaves the run's files as they were."""
    if accelerator.is_main_process:
        root = Path(output_dir)
        if stale:
            logger.warning(f"--overwrite_output_dir: deleting the earlier run in {root}: "
                           f"{', '.join(path.name for path in stale)}")
        for path in stale:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        root.mkdir(parents=True, exist_ok=True)
        info = {"num_processes": accelerator.num_processes, "device": str(accelerator.device),
                "mixed_precision": accelerator.mixed_precision, "args": vars(args), "run_config": config}
        write_json_atomic(root / "run_info.json", info)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        accelerator.init_trackers(project_name, config={key: str(value) for key, value in vars(args).items()})


def end_run(accelerator) -> None:
    """`accelerator.end_training()` (trackers, process group), after freeing the C++ reducers of the DDP-wrapped models.

    A reducer freed after `destroy_process_group` holds the last reference to the gloo / NCCL group, whose destructor
    then joins the group's worker threads while this thread holds the GIL; a worker still releasing Python tensors of
    an earlier collective needs the GIL, and the process hangs at exit (pytorch/pytorch#56297). Freed while the group
    is alive, the reducer is not its last reference."""
    for model in accelerator._models:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model.logger = None  # holds the reducer too
            model.reducer = None
    distributed = getattr(accelerator, "num_processes", 1) > 1
    accelerator.end_training()
    if distributed and _EXIT_AFTER_RUN:
        # A rank of a multi-process script run can still hang while its locals are freed (a gloo destructor joining
        # a busy worker; seen under CPU load despite the above): everything is saved, so it leaves at once.
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


_EXIT_AFTER_RUN = False


def exit_after_distributed_run() -> None:
    """Called by a script's `__main__` block: `end_run` of a multi-process run then ends the process (`os._exit(0)`,
    output flushed) instead of returning, so no teardown can hang (pytorch/pytorch#56297). In-process callers of a
    script's `main()` (tests) keep returning normally."""
    global _EXIT_AFTER_RUN
    _EXIT_AFTER_RUN = True


def model_fingerprint(folder: str | Path) -> str:
    """sha256 of a saved model's configuration (without version / bookkeeping keys) and its weights (every tensor's
    name, dtype, shape and values): equal for the same model saved again, e.g. inside a pipeline."""
    import hashlib

    from safetensors.torch import load_file

    root = Path(folder)
    digest = hashlib.sha256()
    config_file = root / "config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text())
        config = {key: value for key, value in config.items()
                  if not key.startswith("_") and key not in VOLATILE_CONFIG_KEYS}
        digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(root.glob("*.safetensors")):
        tensors.update(load_file(path))
    if not tensors:
        for path in sorted(root.glob("*.bin")):
            tensors.update(torch.load(path, map_location="cpu", weights_only=True))
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
