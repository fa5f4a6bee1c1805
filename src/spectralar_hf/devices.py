"""Device and precision helpers shared by the models: float32 islands under autocast, float64 only where it exists.

Mixed-precision training (`accelerate launch --mixed_precision bf16`) runs every forward under `torch.autocast`, which
casts the inputs of matrix products to bfloat16 whatever their dtype. The computations whose result must not lose
precision (VQ nearest-code search, DCT bases and transforms, losses) run inside `no_autocast`.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["high_precision_dtype", "no_autocast"]


def no_autocast(device: torch.device | str) -> contextlib.AbstractContextManager:
    """Autocast switched off for `device`'s type, so that operations run in the dtype of their inputs; a no-op for
    device types without autocast (e.g. `meta`)."""
    device_type = torch.device(device).type
    if not torch.amp.is_autocast_available(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, enabled=False)


def high_precision_dtype(device: torch.device | str) -> torch.dtype:
    """float64 for small precision-critical tables built on `device`; float32 on MPS, which has no float64."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64
