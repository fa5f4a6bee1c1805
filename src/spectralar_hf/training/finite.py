"""A diverged run stops with the step named, and saves nothing; a run never records a precision it did not use.

- `check_finite_loss`: every micro-batch, before `backward`, the loss and its named terms must be finite. A NaN /
  infinite loss stops the run (`ValueError`, one line naming the step and the terms) before the update, so neither
  the model nor a checkpoint of the diverged state is written.
- `check_finite_state`: before a checkpoint or the final model is saved, every prepared model and every registered
  custom state (the EMA weights, ...) must be finite. An update can make the weights non-finite while the loss that
  produced it was still finite (an overflowing gradient); the next loss would only be computed after the checkpoint.
- Under DDP every process reduces the same flags (`accelerator.reduce`), so all of them stop at the same step with
  the same message instead of leaving the others waiting in a collective.
- `check_mixed_precision`: accelerate has no fp16 autocast on CPU (no `GradScaler`, `autocast()` is a no-op): the run
  would train in float32 while `run_info.json` recorded fp16; it is refused.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch

DIVERGED_FIX = ("lower --learning_rate (or warm it up over more --lr_warmup_steps, and keep --max_grad_norm "
                "clipping), then resume from a checkpoint saved before step {step} or start a new run")
MAX_NAMED = 3  # tensors named as examples in a message


def _any_process(accelerator, flags: torch.Tensor) -> torch.Tensor:
    """`flags` (0/1 floats) summed over the processes: the same answer on every rank."""
    if accelerator.num_processes > 1:
        flags = accelerator.reduce(flags.to(accelerator.device), reduction="sum")
    return flags


def _scalar(value: Any, device) -> torch.Tensor:
    return torch.as_tensor(value.detach() if isinstance(value, torch.Tensor) else value,
                           dtype=torch.float32, device=device).reshape(())


def check_finite_loss(accelerator, step: int, terms: Mapping[str, Any]) -> None:
    """Raise `ValueError` naming `step` and the non-finite entries of `terms` (name -> scalar tensor or float; `None`
    values are skipped) when any of them is NaN or infinite on any process. Call it before `backward`."""
    names = [name for name, value in terms.items() if value is not None]
    if not names:
        return
    values = torch.stack([_scalar(terms[name], accelerator.device) for name in names])
    local = (~torch.isfinite(values)).float()
    bad = _any_process(accelerator, local).cpu().tolist()
    if not any(bad):
        return
    shown = values.cpu().tolist()
    named = ", ".join(f"{name} = {shown[i]:g}" if local[i] else f"{name} (on another process)"
                      for i, name in enumerate(names) if bad[i])
    raise ValueError(f"Training diverged at step {step}: the loss is not finite ({named}); the run stops before this "
                     f"update, without saving the model or a checkpoint. To continue, "
                     f"{DIVERGED_FIX.format(step=step)}.")


def _floating_tensors(value: Any, prefix: str = "") -> Iterable[tuple[str, torch.Tensor]]:
    """(name, tensor) of every floating-point tensor inside a (nested) state: dicts, lists, tensors."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex():
            yield prefix or "tensor", value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _floating_tensors(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _floating_tensors(item, f"{prefix}[{index}]" if prefix else f"[{index}]")


def nonfinite_summary(what: str, named: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """`None` when every tensor of `named` is finite, else e.g. "the weights of SpectralTokenizer: NaN/Inf in 119 of
    119 tensors (encoder.patch_embed.weight, ...)"."""
    named = list(named)
    if not named:
        return None
    finite = torch.stack([torch.isfinite(tensor.detach()).all().cpu() for _, tensor in named]).tolist()
    bad = [name for (name, _), ok in zip(named, finite) if not ok]
    if not bad:
        return None
    examples = ", ".join(bad[:MAX_NAMED]) + (", ..." if len(bad) > MAX_NAMED else "")
    return f"{what}: NaN/Inf in {len(bad)} of {len(named)} tensors ({examples})"


def custom_state_name(obj: Any) -> str:
    """How a message names a registered custom state."""
    return "the EMA weights" if type(obj).__name__ == "EMAModel" else f"the {type(obj).__name__} state"


def nonfinite_state(accelerator) -> list[str]:
    """What is not finite on this process: the parameters and buffers of every prepared model, and the floating
    tensors of every registered custom state (the EMA weights, LeCAM's running means, ...)."""
    found = []
    for model in accelerator._models:
        module = accelerator.unwrap_model(model)
        tensors = [*module.named_parameters(), *((name, buffer) for name, buffer in module.named_buffers()
                                                  if buffer.is_floating_point())]
        found.append(nonfinite_summary(f"the weights of {type(module).__name__}", tensors))
    for obj in accelerator._custom_objects:
        if hasattr(obj, "state_dict"):
            found.append(nonfinite_summary(custom_state_name(obj), _floating_tensors(obj.state_dict())))
    return [item for item in found if item is not None]


def check_finite_state(accelerator, step: int) -> None:
    """Raise `ValueError` naming `step` and what is not finite (on any process) before a checkpoint or the final model
    is saved: no file of a diverged state is written."""
    found = nonfinite_state(accelerator)
    if not _any_process(accelerator, torch.tensor([float(bool(found))])).item():
        return
    what = "; ".join(found) if found else "on another process"
    raise ValueError(f"Training diverged by step {step}: the weights are not finite ({what}); the run stops without "
                     f"saving the model or a checkpoint of this state. To continue, {DIVERGED_FIX.format(step=step)}.")


def check_mixed_precision(accelerator) -> None:
    """Refuse fp16 where accelerate runs no fp16 autocast (CPU): it would train in float32 and record fp16."""
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise ValueError("--mixed_precision fp16 does not run on CPU: accelerate has no fp16 autocast or gradient "
                         "scaler there, so the run would train in float32 while recording fp16; use "
                         "--mixed_precision bf16 (CPU autocast) or no (also when fp16 comes from accelerate launch "
                         "or its config).")


def close_progress_bars() -> None:
    """Close every open tqdm bar (each ends its line): an error raised during training (a diverged loss) is then
    printed on a line of its own instead of after the bar's last update."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()
