"""Class agreement of generated images: a k-nearest-neighbour classifier in pixel space.

For small datasets (Fashion-MNIST, MNIST) a k-NN classifier on raw pixels of the training split is a simple,
dependency-free judge of whether class-conditional samples look like their class (on Fashion-MNIST it labels real
test images correctly about 85% of the time). `knn_class_agreement` reports the fraction of images whose k-NN label
equals the class they were generated for; run it on real held-out images for the ceiling.
"""

from __future__ import annotations

import torch

__all__ = ["DEFAULT_KNN_K", "knn_predict", "knn_class_agreement"]

DEFAULT_KNN_K = 5


@torch.no_grad()
def knn_predict(images: torch.Tensor, reference_images: torch.Tensor, reference_labels: torch.Tensor,
                k: int = DEFAULT_KNN_K, chunk_size: int = 256) -> torch.Tensor:
    """k-NN labels `(N,)` of `images` `(N, ...)` by Euclidean distance to `reference_images` `(M, ...)` (same shape
    per image) with labels `reference_labels` `(M,)`; majority vote, ties to the nearest neighbour's class."""
    if images.shape[1:] != reference_images.shape[1:]:
        raise ValueError(f"images {tuple(images.shape)} and reference images {tuple(reference_images.shape)} must "
                         f"have the same per-image shape.")
    if reference_labels.shape != (len(reference_images),):
        raise ValueError(f"reference_labels must be ({len(reference_images)},), got {tuple(reference_labels.shape)}.")
    if len(reference_images) == 0:
        raise ValueError("knn_predict got an empty reference set; pass labelled reference images.")
    if len(reference_labels) and int(reference_labels.min()) < 0:
        raise ValueError(f"reference_labels must be class ids >= 0, got {int(reference_labels.min())}.")
    if not 1 <= k <= len(reference_images):
        raise ValueError(f"k must lie in [1, {len(reference_images)}] (the reference set size), got {k}.")
    reference = reference_images.flatten(1).float()
    labels = reference_labels.long()
    num_classes = int(labels.max()) + 1
    predictions = []
    for start in range(0, len(images), chunk_size):
        distances = torch.cdist(images[start : start + chunk_size].flatten(1).float(), reference)
        neighbours = labels[distances.topk(k, dim=1, largest=False).indices]  # (n, k), nearest first
        votes = torch.nn.functional.one_hot(neighbours, num_classes).sum(dim=1).float()
        votes[torch.arange(len(neighbours)), neighbours[:, 0]] += 0.5  # ties go to the nearest neighbour
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions)


def knn_class_agreement(images: torch.Tensor, labels: torch.Tensor | list[int], reference_images: torch.Tensor,
                        reference_labels: torch.Tensor, k: int = DEFAULT_KNN_K) -> float:
    """Fraction in [0, 1] of `images` whose k-NN label (see `knn_predict`) equals `labels` `(N,)`."""
    labels = torch.as_tensor(labels).long()
    if labels.shape != (len(images),):
        raise ValueError(f"labels must be ({len(images)},), got {tuple(labels.shape)}.")
    return float((knn_predict(images, reference_images, reference_labels, k) == labels).float().mean())
