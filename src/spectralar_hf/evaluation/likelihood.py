"""How well a generator predicts held-out codes: per-token negative log-likelihood and a unigram baseline.

A generator's NLL alone does not compare tokenizers: one whose codes use fewer entries of the codebook is easier to
predict without being easier to model. Dividing by the codes' unigram cross-entropy (what a model that ignores all
context and the class would pay) gives the share of that cost the generator still pays, comparable across tokenizers.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

# Likelihoods are averaged per token in nats; this many sequences go through the generator at once.
DEFAULT_BATCH_SIZE = 256


def _check_codes(codes: torch.Tensor, vocab_size: int, name: str) -> torch.LongTensor:
    codes = torch.as_tensor(codes)
    if codes.dim() != 2 or codes.numel() == 0 or torch.is_floating_point(codes) or codes.dtype == torch.bool:
        raise ValueError(f"{name} must be a non-empty (num_sequences, num_tokens) integer tensor, got "
                         f"{tuple(codes.shape)} {codes.dtype}.")
    if int(codes.min()) < 0 or int(codes.max()) >= vocab_size:
        raise ValueError(f"{name} holds codes in [{int(codes.min())}, {int(codes.max())}] but the vocabulary has "
                         f"{vocab_size} entries: were they made by another tokenizer?")
    return codes.long()


@torch.no_grad()
def code_negative_log_likelihood(model, codes: torch.Tensor, class_labels: torch.Tensor,
                                 batch_size: int = DEFAULT_BATCH_SIZE) -> dict[str, Any]:
    """Teacher-forced NLL of `codes` under a class-conditional `SpectralARForCausalLM` (in eval mode, so no class
    dropout).

    Args:
        model: the generator.
        codes: `(M, N)` codes of M images, `N = model.config.num_image_tokens`, in `[0, vocab_size)`.
        class_labels: `(M,)` class ids of those images.
        batch_size: sequences per forward pass.

    Returns:
        `nll`: mean over all tokens, in nats per token; `nll_per_position`: N floats, the mean at each position
        (position 0 is the first, coarsest token); `num_sequences`.
    """
    config = model.config
    codes = _check_codes(codes, config.vocab_size, "codes")
    if codes.shape[1] != config.num_image_tokens:
        raise ValueError(f"codes have {codes.shape[1]} tokens per image but the generator models "
                         f"{config.num_image_tokens}.")
    class_labels = torch.as_tensor(class_labels).long().reshape(-1)
    if class_labels.shape[0] != codes.shape[0]:
        raise ValueError(f"{class_labels.shape[0]} class labels for {codes.shape[0]} code sequences.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    was_training = model.training
    model.eval()
    total = torch.zeros(codes.shape[1], dtype=torch.float64)
    try:
        for start in tqdm(range(0, len(codes), batch_size), desc="NLL", leave=False):
            batch = codes[start : start + batch_size].to(model.device)
            labels = class_labels[start : start + batch_size].to(model.device)
            logits = model(input_ids=batch, class_labels=labels, use_cache=False).logits[:, : batch.shape[1]]
            nll = F.cross_entropy(logits.float().transpose(1, 2), batch, reduction="none")  # (B, N)
            total += nll.double().sum(dim=0).cpu()
    finally:
        model.train(was_training)
    per_position = total / len(codes)
    return {"nll": float(per_position.mean()), "nll_per_position": per_position.tolist(),
            "num_sequences": len(codes)}


def unigram_cross_entropy(reference_codes: torch.Tensor, codes: torch.Tensor, vocab_size: int,
                          smoothing: float = 1.0) -> float:
    """Cross-entropy, in nats per token, of `codes` under the unigram distribution of `reference_codes`.

    The distribution counts every code of `reference_codes` `(M', N)` (all positions together) plus `smoothing` for
    each of the `vocab_size` entries (Laplace smoothing, so unseen codes cost a finite amount). With the training
    codes as reference and held-out codes as `codes`, this is what a generator that ignores context and class pays.
    """
    if smoothing <= 0:
        raise ValueError(f"smoothing must be > 0 (a code unseen in reference_codes would cost infinitely), got "
                         f"{smoothing}.")
    reference_codes = _check_codes(reference_codes, vocab_size, "reference_codes")
    codes = _check_codes(codes, vocab_size, "codes")
    counts = torch.bincount(reference_codes.reshape(-1), minlength=vocab_size).double() + smoothing
    log_probabilities = counts.log() - counts.sum().log()
    return float(-log_probabilities[codes.reshape(-1)].mean())
