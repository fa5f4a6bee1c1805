"""``evaluate.Metric`` wrappers around the evaluation functions (no Hub loading: instantiate the classes directly).

>>> from spectralar_hf.evaluation.metrics import PSNR
>>> PSNR().compute(predictions=reconstructions, references=images)  # (N, C, H, W) in [-1, 1]
{'psnr': 31.2}

Images are passed as ``(N, C, H, W)`` arrays/tensors (or lists of ``(C, H, W)`` arrays) with float values in
``value_range`` (default ``[-1, 1]``; pass ``value_range=(0, 255)`` for uint8 data). ``evaluate`` stores them as
nested float32 lists, which is fine for evaluation sets of a few thousand small images; for ImageNet-scale FID call
:func:`~spectralar_hf.evaluation.fid.compute_fid` directly. As everywhere in ``evaluate``, ``predictions`` and
``references`` must have the same length.

Configurations (``config_name``) of :class:`FID` and :class:`PrecisionRecall`: ``"images"`` (default) or
``"features"`` (``(N, D)`` precomputed features).
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np
import torch
from torch import nn

from .fid import DEFAULT_BATCH_SIZE, extract_features, fid_from_features
from .manifold import DEFAULT_K, precision_recall
from .reconstruction import DEFAULT_DATA_RANGE, psnr, ssim

__all__ = ["FID", "PSNR", "PrecisionRecall", "SSIM"]

_IMAGE_FEATURE = datasets.List(datasets.List(datasets.List(datasets.Value("float32"))))  # (C, H, W)
_VECTOR_FEATURE = datasets.List(datasets.Value("float32"))  # (D,)
_CONFIGS = ("images", "features")

_IMAGES_DESCRIPTION = """
Args:
    predictions: generated / reconstructed images, (N, C, H, W) floats in `value_range`.
    references: real images, same layout and length.
"""


def _features(config_name: str | None) -> datasets.Features:
    kind = "images" if config_name in (None, "default") else config_name
    if kind not in _CONFIGS:
        raise ValueError(f"Unknown config_name {config_name!r}; choose one of {_CONFIGS}.")
    column = _IMAGE_FEATURE if kind == "images" else _VECTOR_FEATURE
    return datasets.Features({"predictions": column, "references": column})


def _as_tensor(values) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.float32))


class _ExtractorMetric(evaluate.Metric):
    """Shared constructor: an optional feature ``extractor`` (default: the FID Inception-v3) and ``batch_size``."""

    def __init__(self, config_name: str | None = None, extractor: nn.Module | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, **kwargs):
        self.extractor = extractor
        self.batch_size = batch_size
        super().__init__(config_name=config_name, **kwargs)

    def _to_features(self, values, value_range) -> torch.Tensor:
        array = _as_tensor(values)
        if self.config_name == "features":
            return array
        return extract_features(array, self.extractor, batch_size=self.batch_size, value_range=tuple(value_range),
                                progress=False)


class FID(_ExtractorMetric):
    """Fréchet Inception Distance between ``predictions`` and ``references`` (``{"fid": float}``)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Fréchet Inception Distance (Heusel et al. 2017) on Inception-v3 pool3 features.",
            citation="Heusel et al., GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash "
                     "Equilibrium, NeurIPS 2017.",
            inputs_description=_IMAGES_DESCRIPTION + "    value_range: range of the float pixels, default (-1, 1).\n",
            features=_features(self.config_name),
        )

    def _compute(self, predictions, references, value_range=(-1.0, 1.0)) -> dict[str, float]:
        fake = self._to_features(predictions, value_range)
        real = self._to_features(references, value_range)
        return {"fid": fid_from_features(fake, real)}


class PrecisionRecall(_ExtractorMetric):
    """Improved precision / recall (Kynkäänniemi et al. 2019), ``{"precision": p, "recall": r}``."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Improved precision and recall (k-NN manifolds, k = 3) on feature embeddings.",
            citation="Kynkäänniemi et al., Improved Precision and Recall Metric for Assessing Generative Models, "
                     "NeurIPS 2019.",
            inputs_description=_IMAGES_DESCRIPTION + "    k: neighbourhood size (3).\n",
            features=_features(self.config_name),
        )

    def _compute(self, predictions, references, value_range=(-1.0, 1.0), k: int = DEFAULT_K) -> dict[str, float]:
        fake = self._to_features(predictions, value_range)
        real = self._to_features(references, value_range)
        return precision_recall(real, fake, k=k)


class PSNR(evaluate.Metric):
    """Mean PSNR in dB over image pairs (``{"psnr": float}``); ``data_range`` 2 for [-1, 1] images."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Peak signal-to-noise ratio, averaged over images.",
            citation="",
            inputs_description=_IMAGES_DESCRIPTION + "    data_range: max - min of the pixel scale (2.0).\n",
            features=_features("images"),
        )

    def _compute(self, predictions, references, data_range: float = DEFAULT_DATA_RANGE) -> dict[str, float]:
        return {"psnr": float(psnr(_as_tensor(predictions), _as_tensor(references), data_range=data_range))}


class SSIM(evaluate.Metric):
    """Mean SSIM over image pairs (``{"ssim": float}``); Gaussian window 11, sigma 1.5 (Wang et al. 2004)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Structural similarity index (Gaussian-weighted), averaged over channels and images.",
            citation="Wang et al., Image Quality Assessment: From Error Visibility to Structural Similarity, "
                     "IEEE TIP 2004.",
            inputs_description=_IMAGES_DESCRIPTION + "    data_range: max - min of the pixel scale (2.0).\n",
            features=_features("images"),
        )

    def _compute(self, predictions, references, data_range: float = DEFAULT_DATA_RANGE) -> dict[str, float]:
        return {"ssim": float(ssim(_as_tensor(predictions), _as_tensor(references), data_range=data_range))}
