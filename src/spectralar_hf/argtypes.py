"""argparse types for numbers, shared by the `spectralar-hf` CLI and the `examples/` scripts.

argparse's `float` accepts "nan" and "inf", and a bare `int` accepts 0 and negative counts; these types refuse them
when the command line is parsed, with a usage error that names the flag, the allowed range and the value
(`argument --top-p: must lie in (0, 1], got '1.5'`), exit status 2.
"""

from __future__ import annotations

import argparse
import math
from typing import Callable

from .utils import format_bound, interval

# NumPy's and torch's generators both accept seeds in [0, 2^32 - 1].
SEED_MAX = 2**32 - 1


def _parse(text: str, kind: type) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") \
            from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _range_words(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if high is None:
        return f"be {'>' if low_open else '>='} {format_bound(low)}"
    if low is None:
        return f"be {'<' if high_open else '<='} {format_bound(high)}"
    return f"lie in {interval(low, high, low_open, high_open)}"


def number_type(kind: type, low: float | None = None, high: float | None = None, *, low_open: bool = False,
                high_open: bool = False, hint: str = "") -> Callable[[str], float | int]:
    """An argparse `type=` for a finite `kind` (`int` or `float`) in the interval from `low` to `high` (`None`: no
    bound; `low_open` / `high_open` exclude the ends); `hint` is appended to the error, e.g. " (1 = no filtering)"."""

    def parse(text: str) -> float | int:
        value = _parse(text, kind)
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            raise argparse.ArgumentTypeError(
                f"must {_range_words(low, high, low_open, high_open)}, got {text!r}{hint}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


finite_float = number_type(float)
positive_float = number_type(float, 0, low_open=True)
non_negative_float = number_type(float, 0)
open_unit_float = number_type(float, 0, 1, low_open=True, high_open=True)  # an EMA decay
unit_float = number_type(float, 0, 1, high_open=True)  # Adam's betas
probability = number_type(float, 0, 1, low_open=True, hint=" (1 = no nucleus filtering)")  # top-p
positive_int = number_type(int, 1)
non_negative_int = number_type(int, 0)
random_seed = number_type(int, 0, SEED_MAX)


def flag_given(value: object) -> bool:
    """Whether a flag whose default is `None` (or `False`, for `store_true`) was given: `0` is a given value, though
    `0 == False`."""
    return value is not None and value is not False


def top_k_type(flag: str) -> Callable[[str], int]:
    """The argparse `type=` of a top-k flag named `flag`: an int >= 0, where 0 = no top-k filtering (transformers'
    convention; it also switches off a top-k saved in the generation config, which omitting the flag keeps)."""
    return number_type(int, 0, hint=f" ({flag} 0 = no top-k filtering)")


def diffusion_steps(value: str) -> str | int:
    """FAR's inner steps per outer step: `linear` or an int >= 1."""
    if value == "linear":
        return value
    try:
        steps = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'linear' or an int, got {value!r}") from None
    if steps < 1:
        raise argparse.ArgumentTypeError(f"must be 'linear' or an int >= 1, got {value!r}")
    return steps

