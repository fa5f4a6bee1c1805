"""Shared helpers for the benchmark scripts: timing and markdown tables."""

from __future__ import annotations

import platform
import time
from typing import Callable

import torch


def time_call(function: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of `function()` in seconds over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def machine_line() -> str:
    return (f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, python {platform.python_version()}")


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def worker_table(command: str, description: str, seconds_with: Callable[[int], float], images: int,
                 output: str | None = None) -> str:
    """Time `seconds_with(workers)` for 0 and 2 DataLoader workers over `images` images; the markdown result (the
    command, this machine, `description`, a table of seconds and images/s), printed and written to `output`."""
    rows = []
    for workers in (0, 2):
        seconds = seconds_with(workers)
        rows.append([workers, f"{seconds:.1f}", f"{images / seconds:.2f}"])
    table = "\n".join([f"`{command}` ({machine_line()}): {description}", "",
                       markdown_table(["--dataloader_num_workers", "seconds", "images/s"], rows), ""])
    print(table)
    if output:
        from pathlib import Path

        Path(output).write_text(table)
    return table
