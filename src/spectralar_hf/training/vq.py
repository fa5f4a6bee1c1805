"""Codebook maintenance for VQ training: restart codes that the encoder stopped using.

Without it a randomly initialised codebook collapses to a few dozen live codes and the decoder learns little more
than each image's mean colour (measured on the tiny preset: 40 of 256 codes after 1,500 steps, full-prefix MSE 0.102;
with restarts 255 codes and 0.083; a continuous bottleneck reaches 0.062). Restarting dead codes on recent encoder
outputs is the standard remedy (Jukebox, SoundStream).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class CodebookRestarter:
    """Track code usage with an exponential moving average; move dead codes onto random recent encoder latents.

    Deterministic and DDP-safe when every process passes the same (gathered) `codes` and `latents`: the
    replacement draws come from this object's own seeded generator, so all ranks write identical rows.

    Args:
        codebook_size: number of codes.
        decay: EMA decay of the per-step usage counts.
        dead_fraction: a code is dead when its EMA count falls below this fraction of the mean count.
        seed: seed of the replacement draws.
    """

    def __init__(self, codebook_size: int, decay: float = 0.9, dead_fraction: float = 0.03, seed: int = 0):
        self.decay, self.dead_fraction = decay, dead_fraction
        self.usage: torch.Tensor | None = None
        self.codebook_size = codebook_size
        self.generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def step(self, codebook: torch.nn.Embedding, codes: torch.Tensor, latents: torch.Tensor,
             l2_normalize: bool = True) -> int:
        """Update usage with `codes` `(B, N)`; restart dead rows of `codebook` from `latents` `(B, N, D)`.

        Returns the number of restarted codes.
        """
        counts = torch.bincount(codes.flatten().cpu(), minlength=self.codebook_size).float()
        if self.usage is None:
            self.usage = torch.full_like(counts, counts.mean().item())
        self.usage.mul_(self.decay).add_(counts, alpha=1.0 - self.decay)
        dead = (self.usage < self.dead_fraction * counts.mean()).nonzero().flatten()
        if dead.numel() == 0:
            return 0
        pool = latents.detach().reshape(-1, latents.shape[-1]).float()
        if l2_normalize:
            pool = F.normalize(pool, dim=-1)
        picks = torch.randint(0, pool.shape[0], (dead.numel(),), generator=self.generator,
                              device=self.generator.device)
        weight = codebook.weight
        weight.data[dead.to(weight.device)] = pool[picks.to(pool.device)].to(device=weight.device, dtype=weight.dtype)
        self.usage[dead] = counts.mean()
        return int(dead.numel())

    def state_dict(self) -> dict:
        return {"usage": self.usage, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.usage = state["usage"]
        self.generator.set_state(state["generator"])
