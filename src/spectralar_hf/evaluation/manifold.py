"""Improved precision and recall (Kynkäänniemi et al., NeurIPS 2019) on feature embeddings.

Each set's manifold is the union of balls around its features, the radius of a ball being the distance to the
``k``-th nearest neighbour within the same set (``k = 3`` in the paper). Precision is the fraction of generated
features inside the real manifold, recall the fraction of real features inside the generated manifold.

Pairwise distances are computed in row chunks with ``torch.cdist``, so 10k x 10k sets need
``chunk_size x N`` floats at a time instead of ``N x N``.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

__all__ = ["DEFAULT_K", "manifold_radii", "precision_recall"]

# Neighbourhood size of Kynkäänniemi et al. 2019 (Sec. 3, "k = 3 ... a good trade-off").
DEFAULT_K = 3
# Rows of the distance matrix computed at once: chunk_size x N floats (1024 x 10k float32 = 40 MB).
DEFAULT_CHUNK_SIZE = 1024


def _as_tensor(features: np.ndarray | torch.Tensor, dtype: torch.dtype, name: str) -> torch.Tensor:
    tensor = features.detach() if isinstance(features, torch.Tensor) else torch.as_tensor(np.asarray(features))
    if tensor.dim() != 2:
        raise ValueError(f"{name} must be (N, D) features, got shape {tuple(tensor.shape)}; extract features first "
                         f"(e.g. with `extract_features`).")
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} contains NaN or infinite values; check the images and the feature network.")
    return tensor.to(dtype)


def manifold_radii(features: torch.Tensor, k: int = DEFAULT_K, chunk_size: int = DEFAULT_CHUNK_SIZE,
                   progress: bool = False) -> torch.Tensor:
    """Distance of each feature to its ``k``-th nearest neighbour in the same set (itself excluded).

    Args:
        features: ``(N, D)`` tensor, ``N > k``.

    Returns:
        ``(N,)`` radii in the dtype of ``features``.
    """
    if not 1 <= k < features.shape[0]:
        raise ValueError(f"k = {k} needs at least k + 1 = {k + 1} features per set, got {features.shape[0]}.")
    radii = []
    for start in tqdm(range(0, features.shape[0], chunk_size), desc="radii", disable=not progress):
        distances = torch.cdist(features[start:start + chunk_size], features)
        # The k + 1 smallest include the point itself (distance 0).
        radii.append(distances.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(radii)


def precision_recall(real_features: np.ndarray | torch.Tensor, fake_features: np.ndarray | torch.Tensor,
                     k: int = DEFAULT_K, chunk_size: int = DEFAULT_CHUNK_SIZE, dtype: torch.dtype = torch.float32,
                     progress: bool = False) -> dict[str, float]:
    """Improved precision and recall of generated (``fake``) features against real ones.

    Args:
        real_features: ``(N, D)`` features of real images.
        fake_features: ``(M, D)`` features of generated images (same extractor).
        k: neighbourhood size for the manifold radii.
        chunk_size: rows of the distance matrix held in memory at once.
        dtype: computation dtype (float32 as in the reference implementation; float64 for tiny sets).
        progress: show progress bars.

    Returns:
        ``{"precision": p, "recall": r}`` with values in [0, 1]; both are 1 for identical sets.
    """
    real = _as_tensor(real_features, dtype, "real_features")
    fake = _as_tensor(fake_features, dtype, "fake_features")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real and fake features have different widths ({real.shape[1]} vs {fake.shape[1]}); use "
                         f"the same feature extractor for both sets.")
    real_radii = manifold_radii(real, k, chunk_size, progress)
    fake_radii = manifold_radii(fake, k, chunk_size, progress)
    fake_in_real = torch.zeros(fake.shape[0], dtype=torch.bool)
    real_in_fake = torch.zeros(real.shape[0], dtype=torch.bool)
    # One pass over the fake x real distance matrix serves both directions.
    for start in tqdm(range(0, fake.shape[0], chunk_size), desc="precision/recall", disable=not progress):
        distances = torch.cdist(fake[start:start + chunk_size], real)  # (chunk, N)
        fake_in_real[start:start + chunk_size] = (distances <= real_radii.unsqueeze(0)).any(dim=1)
        real_in_fake |= (distances <= fake_radii[start:start + chunk_size].unsqueeze(1)).any(dim=0)
    return {"precision": float(fake_in_real.double().mean()), "recall": float(real_in_fake.double().mean())}
