"""Optimizer helpers shared by the training scripts."""

from __future__ import annotations

import torch
from torch import nn


def decay_parameter_groups(model: nn.Module, weight_decay: float, no_decay_prefixes: tuple[str, ...] = ()
                           ) -> list[dict]:
    """AdamW parameter groups: weight decay only on Linear / Conv weights.

    Biases, norms, embeddings (positional, class, token, codebook) and learned tokens (latent / mask tokens) get no
    decay, as in TiTok and VAR; neither does any parameter of a submodule named in `no_decay_prefixes` (e.g.
    `("diffusion_head.",)`: MAR and FAR do not decay their diffusion MLP).
    """
    decayed: set[int] = set()
    for name, module in model.named_modules():
        if no_decay_prefixes and name.startswith(no_decay_prefixes):
            continue
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d)):
            decayed.add(id(module.weight))
    with_decay, without_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (with_decay if id(parameter) in decayed else without_decay).append(parameter)
    return [
        {"params": with_decay, "weight_decay": weight_decay},
        {"params": without_decay, "weight_decay": 0.0},
    ]


def grad_norm(parameters) -> torch.Tensor:
    """Global l2 norm of the gradients (for logging)."""
    norms = [p.grad.detach().float().norm() for p in parameters if p.grad is not None]
    return torch.stack(norms).norm() if norms else torch.tensor(0.0)
