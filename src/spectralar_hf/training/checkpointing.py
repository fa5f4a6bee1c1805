"""Crash-safe training checkpoints for accelerate runs.

A checkpoint is first written to a hidden `.checkpoint-N.partial` directory and renamed to `checkpoint-N` only when
every file is on disk, so a process killed during a save never leaves a directory that `latest` would pick up.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

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


def save_checkpoint(accelerator, output_dir: str | Path, step: int, total_limit: int | None = None) -> Path:
    """`accelerator.save_state` into `output_dir/checkpoint-{step}` atomically; keep at most `total_limit`."""
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
    """

    def __init__(self) -> None:
        self.micro_step = 0

    def state_dict(self) -> dict:
        return {"micro_step": self.micro_step}

    def load_state_dict(self, state: dict) -> None:
        self.micro_step = int(state["micro_step"])


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one JSON line (a training log record) to `path`."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, default=float) + "\n")


def resume_from_checkpoint(accelerator, output_dir: str | Path, choice: str | None) -> int:
    """Restore a run: `choice` is None (fresh start), "latest", a `checkpoint-N` directory path, or a bare
    `checkpoint-N` name inside `output_dir` (as in diffusers' scripts). Returns the step N.

    Raises `ValueError` when no complete checkpoint matches.
    """
    if not choice:
        return 0
    if choice == "latest":
        path = latest_checkpoint(output_dir)
    else:
        path = Path(choice)
        if not path.is_dir() and path.parent == Path(".") and (Path(output_dir) / choice).is_dir():
            path = Path(output_dir) / choice
    if path is None or not path.is_dir() or not CHECKPOINT_PATTERN.match(path.name):
        raise ValueError(f"--resume_from_checkpoint {choice!r}: no complete checkpoint found in {output_dir}; start "
                         f"without it or point to a checkpoint-N directory.")
    accelerator.load_state(str(path))
    return checkpoint_step(path)


def start_run(accelerator, output_dir: str | Path, args, project_name: str) -> None:
    """On the main process: create `output_dir`, record `run_info.json` (world size, device, arguments) and start
    the trackers."""
    if not accelerator.is_main_process:
        return
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    info = {"num_processes": accelerator.num_processes, "device": str(accelerator.device),
            "mixed_precision": accelerator.mixed_precision, "args": vars(args)}
    (root / "run_info.json").write_text(json.dumps(info, indent=2, default=str))
    accelerator.init_trackers(project_name, config={key: str(value) for key, value in vars(args).items()})
