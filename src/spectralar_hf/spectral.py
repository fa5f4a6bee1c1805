"""Pure spectral math shared by every model in the package.

Everything here is a function of tensors and plain Python values: no modules, no configs, no state beyond a
small cache of DCT basis matrices. Models call these functions; they never re-derive the math.

Conventions
-----------
* Images are ``(..., H, W)`` tensors; the last two dimensions are transformed.
* The DCT is the orthonormal DCT-II of SpectralAR Eq. 2 (identical to ``scipy.fft.dctn(x, norm="ortho")``);
  its inverse is the orthonormal DCT-III.
* A spectral level ``omega`` keeps the top-left ``omega x omega`` block of DCT coefficients (Eq. 5):
  ``lowpass(x, omega) = IDCT(DCT(x) * 1_omega)``.
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache
from typing import Sequence

import torch

from .devices import high_precision_dtype, no_autocast

__all__ = [
    "OMEGA_SCHEDULES",
    "dct_matrix",
    "dct_2d",
    "idct_2d",
    "lowpass",
    "omega_schedule",
    "validate_omega",
    "spectral_target",
    "FAR_FILTER_KINDS",
    "frequency_filter",
    "far_loss_weight",
    "far_mask_ratio_range",
    "far_level_schedule",
    "far_diffusion_steps",
]

OMEGA_SCHEDULES = ("spectralar", "uniform")


# ---------------------------------------------------------------------------------------------------------------
# DCT-II / DCT-III as cached basis matrices
# ---------------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _cached_dct_matrix(size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # Built directly on `device` (no host-to-device copy), in float64 where the device has it. A normal tensor even
    # when first requested under `torch.inference_mode()`: the cached basis is reused by later training steps.
    work = high_precision_dtype(device)
    with torch.inference_mode(False):
        frequency = torch.arange(size, dtype=work, device=device).unsqueeze(1)
        position = torch.arange(size, dtype=work, device=device).unsqueeze(0)
        basis = torch.cos(math.pi * (2.0 * position + 1.0) * frequency / (2.0 * size))
        scale = torch.full((size, 1), math.sqrt(2.0 / size), dtype=work, device=device)
        scale[0, 0] = math.sqrt(1.0 / size)
        return (scale * basis).to(dtype)


def dct_matrix(size: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """Orthonormal DCT-II matrix ``C`` of shape ``(size, size)``; row ``u`` is the basis of frequency ``u``.

    ``C @ x`` is the 1D DCT of a column vector ``x`` and ``C.T @ X`` its inverse. Built once on ``device`` in float64
    (float32 on MPS) and cached per ``(size, dtype, device)``.
    """
    if size < 1:
        raise ValueError(f"dct_matrix needs size >= 1, got {size}")
    return _cached_dct_matrix(int(size), dtype, torch.device(device) if device is not None else torch.device("cpu"))


@lru_cache(maxsize=64)
def _cached_dct_matrix_t(size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    with torch.inference_mode(False):
        return _cached_dct_matrix(size, dtype, device).T.contiguous()


def _compute_dtype(x: torch.Tensor, name: str) -> torch.dtype:
    if not torch.is_floating_point(x):
        raise ValueError(f"{name} expects a floating-point tensor, got dtype {x.dtype}; convert it with `x.float()`.")
    if x.dim() < 2:
        raise ValueError(f"{name} expects a tensor of shape (..., H, W), got shape {tuple(x.shape)}.")
    # Half precision is upcast for accuracy (the transform of a 256x256 image sums 65,536 terms); callers also switch
    # autocast off, which would otherwise run the float32 matmuls in bfloat16 under mixed precision.
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def dct_2d(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal 2D DCT-II over the last two dimensions (SpectralAR Eq. 2).

    Args:
        x: ``(..., H, W)`` floating tensor on any device.

    Returns:
        ``(..., H, W)`` DCT coefficients in the dtype of ``x``; ``[..., 0, 0]`` is the DC term (low frequencies
        top-left). Equal to ``scipy.fft.dctn(x, type=2, norm="ortho", axes=(-2, -1))``.
    """
    dtype = _compute_dtype(x, "dct_2d")
    basis_h = _cached_dct_matrix(x.shape[-2], dtype, x.device)
    basis_w_t = _cached_dct_matrix_t(x.shape[-1], dtype, x.device)
    with no_autocast(x.device):
        # W axis first: one large GEMM over all rows; then the H axis as a broadcast batched matmul.
        return (basis_h @ (x.to(dtype) @ basis_w_t)).to(x.dtype)


def idct_2d(coefficients: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`dct_2d` (orthonormal 2D DCT-III) over the last two dimensions.

    Args:
        coefficients: ``(..., H, W)`` DCT coefficients.

    Returns:
        ``(..., H, W)`` image in the dtype of ``coefficients``.
    """
    dtype = _compute_dtype(coefficients, "idct_2d")
    basis_h_t = _cached_dct_matrix_t(coefficients.shape[-2], dtype, coefficients.device)
    basis_w = _cached_dct_matrix(coefficients.shape[-1], dtype, coefficients.device)
    with no_autocast(coefficients.device):
        return (basis_h_t @ (coefficients.to(dtype) @ basis_w)).to(coefficients.dtype)


# ---------------------------------------------------------------------------------------------------------------
# Low-pass images (Eq. 5) and nested targets (Algorithm 1, line 6)
# ---------------------------------------------------------------------------------------------------------------


def _lowpass_projection(basis: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
    """``C.T @ diag(1[u < omega]) @ C`` for each omega: ``(B, S, S)`` projections onto the first omega frequencies."""
    keep = (torch.arange(basis.shape[0], device=basis.device) < omega.unsqueeze(-1)).to(basis.dtype)  # (B, S)
    return basis.T @ (keep.unsqueeze(-1) * basis)


def lowpass(x: torch.Tensor, omega: int | torch.Tensor) -> torch.Tensor:
    """Low-pass image ``IDCT(DCT(x) * 1_omega)``: keeps the top-left ``omega x omega`` DCT coefficients.

    Because the DCT is orthonormal this equals ``P_h @ x @ P_w`` with ``P = C.T diag(1[u < omega]) C``, which is
    what is computed (two matmuls instead of four, one batched op for per-sample levels).

    Args:
        x: ``(B, ..., H, W)`` floating tensor (for an int ``omega`` any ``(..., H, W)`` shape works).
        omega: spectral level in ``[0, min(H, W)]``; an int, or a ``(B,)`` integer tensor giving one level per
            sample along the first dimension of ``x``. ``0`` gives zeros, ``min(H, W) == H == W`` gives ``x``.

    Returns:
        Tensor of the shape and dtype of ``x``.
    """
    dtype = _compute_dtype(x, "lowpass")
    height, width = x.shape[-2], x.shape[-1]
    if isinstance(omega, torch.Tensor):
        if omega.dim() != 1 or omega.shape[0] != x.shape[0] or x.dim() < 3:
            raise ValueError(
                f"lowpass got omega of shape {tuple(omega.shape)} for x of shape {tuple(x.shape)}; a per-sample "
                f"omega must be a (B,) tensor matching x's first dimension, with x of shape (B, ..., H, W)."
            )
        if torch.is_floating_point(omega) or torch.is_complex(omega):
            raise ValueError(f"lowpass needs an integer omega tensor, got dtype {omega.dtype}; use `omega.long()`.")
        levels = omega.to(device=x.device)
    else:
        if isinstance(omega, bool) or not isinstance(omega, int):
            raise ValueError(f"lowpass needs an int or a (B,) integer tensor as omega, got {type(omega).__name__}.")
        levels = torch.tensor([omega], device=x.device)
    low, high = int(levels.min()), int(levels.max())
    if low < 0 or high > min(height, width):
        raise ValueError(
            f"lowpass omega must lie in [0, {min(height, width)}] for a {height}x{width} image, got values in "
            f"[{low}, {high}]."
        )
    work = x.to(dtype)
    with no_autocast(x.device):
        proj_h = _lowpass_projection(dct_matrix(height, dtype, x.device), levels)
        proj_w = proj_h if width == height else _lowpass_projection(dct_matrix(width, dtype, x.device), levels)
        if isinstance(omega, torch.Tensor):
            # (B, S, S) -> (B, 1, ..., 1, S, S) so it broadcasts over the channel dimensions of x.
            view = (x.shape[0],) + (1,) * (x.dim() - 3)
            proj_h = proj_h.view(*view, height, height)
            proj_w = proj_w.view(*view, width, width)
        else:
            proj_h, proj_w = proj_h[0], proj_w[0]
        return (proj_h @ work @ proj_w).to(x.dtype)


def spectral_target(pixel_values: torch.Tensor, omega: Sequence[int], num_tokens: int | torch.Tensor) -> torch.Tensor:
    """Nested reconstruction target of Algorithm 1 (line 6): ``lowpass(x, omega[k - 1])`` for prefix length ``k``.

    Args:
        pixel_values: ``(B, C, H, W)`` images.
        omega: the schedule ``[omega_1, ..., omega_N]``.
        num_tokens: prefix length ``k`` in ``[1, N]``; an int or a ``(B,)`` integer tensor (one per sample).

    Returns:
        ``(B, C, H, W)`` low-pass targets.
    """
    levels = torch.as_tensor(list(omega), dtype=torch.long, device=pixel_values.device)
    if isinstance(num_tokens, torch.Tensor):
        prefix = num_tokens.to(device=pixel_values.device, dtype=torch.long)
        if prefix.numel() and (int(prefix.min()) < 1 or int(prefix.max()) > len(levels)):
            raise ValueError(f"num_tokens must lie in [1, {len(levels)}], got values in [{int(prefix.min())}, "
                             f"{int(prefix.max())}].")
        return lowpass(pixel_values, levels[prefix - 1])
    if not 1 <= num_tokens <= len(levels):
        raise ValueError(f"num_tokens must lie in [1, {len(levels)}], got {num_tokens}.")
    return lowpass(pixel_values, int(levels[num_tokens - 1]))


# ---------------------------------------------------------------------------------------------------------------
# omega schedules (Eq. 5, 7 and 9)
# ---------------------------------------------------------------------------------------------------------------


def _integer_increments(targets: list[Fraction], total: int) -> list[int]:
    """Integer increments close to non-decreasing rational ``targets`` that sum to ``total`` and stay non-decreasing.

    ``targets`` must sum to ``total``. Each increment is ``floor(target)`` or ``floor(target) + 1``. Within a run of
    equal floors the "+1"s go to the end of the run (anything else would make the increments decrease); each run
    receives its share of the fractional remainder, apportioned by largest remainder.
    """
    floors = [math.floor(t) for t in targets]
    runs: list[list[int]] = []
    for index, value in enumerate(floors):
        if runs and floors[runs[-1][0]] == value:
            runs[-1].append(index)
        else:
            runs.append([index])
    quotas = [sum((targets[i] - floors[i] for i in run), Fraction(0)) for run in runs]
    extras = [math.floor(q) for q in quotas]
    missing = total - sum(floors) - sum(extras)
    by_remainder = sorted(range(len(runs)), key=lambda r: (quotas[r] - extras[r], r), reverse=True)
    for r in by_remainder[:missing]:
        extras[r] += 1
    increments = list(floors)
    for run, extra in zip(runs, extras):
        for i in run[len(run) - extra:]:
            increments[i] += 1
    return increments


def _piecewise_linear_schedule(knots: list[tuple[Fraction, Fraction]], num_tokens: int, image_size: int) -> list[int]:
    """Integer schedule following the convex piecewise-linear curve through ``knots`` (token index -> omega)."""

    def curve(i: int) -> Fraction:
        for (x0, y0), (x1, y1) in zip(knots, knots[1:]):
            if i <= x1:
                return y0 + (y1 - y0) * (i - x0) / (x1 - x0)
        return knots[-1][1]

    if num_tokens <= image_size:
        # Increments of at least one from omega_0 = 0: strictly increasing, omega_1 >= 1.
        targets = [curve(i) - curve(i - 1) for i in range(1, num_tokens + 1)]
        return list(_cumsum(_integer_increments(targets, image_size)))
    # More tokens than frequencies: omega_1 = 1 and the remaining (image_size - 1) rows are spread over the rest.
    rest = [curve(i) - curve(i - 1) for i in range(2, num_tokens + 1)]
    scale = Fraction(image_size - 1) / sum(rest, Fraction(0))
    increments = _integer_increments([t * scale for t in rest], image_size - 1)
    return list(_cumsum([1] + increments))


def _cumsum(values: list[int]) -> list[int]:
    out, running = [], 0
    for value in values:
        running += value
        out.append(running)
    return out


def omega_schedule(num_tokens: int, image_size: int, kind: str = "spectralar") -> list[int]:
    """Token-to-frequency schedule ``[omega_1, ..., omega_N]``.

    * ``"spectralar"``: the non-uniform mapping of Eq. 9. For ``(64, 256)`` it is exactly ``omega_i = i`` for
      ``i <= 32``, ``2i - 32`` for ``i <= 48`` and ``12i - 512`` for ``i <= 64``. Other sizes keep the shape: the
      first half of the tokens covers the first eighth of the spectrum, the next quarter the next eighth, the last
      quarter the rest (breakpoints are raised where needed so that every token adds at least one frequency).
    * ``"uniform"``: evenly spaced levels ``omega_i = ceil(i * image_size / N)`` (the ablation baseline, Table 4):
      exactly ``i * image_size / N`` when ``N`` divides ``image_size``, otherwise within one level of it, with
      consecutive increments differing by at most one and the larger increments spread over the whole schedule.

    The result is integer, has ``omega_1 >= 1``, is strictly increasing when ``num_tokens <= image_size``
    (non-decreasing otherwise) and ends at ``image_size``; the ``"spectralar"`` schedule also has non-decreasing
    increments (Eq. 7).
    """
    if not isinstance(num_tokens, int) or not isinstance(image_size, int) or num_tokens < 1 or image_size < 1:
        raise ValueError(f"omega_schedule needs positive ints, got num_tokens={num_tokens!r}, "
                         f"image_size={image_size!r}.")
    n, s = Fraction(num_tokens), Fraction(image_size)
    if kind == "uniform":
        # Exact integer ceil of i * S / N: never below the ideal level, less than one level above it.
        schedule = [-(-i * image_size // num_tokens) for i in range(1, num_tokens + 1)]
        validate_omega(schedule, num_tokens, image_size)
        return schedule
    if kind == "spectralar":
        strict = num_tokens <= image_size
        # Breakpoint (token index, omega); raised to at least the index so every token can add a frequency.
        first = (n / 2, max(s / 8, n / 2) if strict else s / 8)
        second = (3 * n / 4, max(s / 4, 3 * n / 4) if strict else s / 4)
        knots = [(Fraction(0), Fraction(0)), first, second, (n, s)]
    else:
        raise ValueError(f"Unknown omega schedule {kind!r}; choose one of {OMEGA_SCHEDULES} or pass an explicit list.")
    schedule = _piecewise_linear_schedule(knots, num_tokens, image_size)
    validate_omega(schedule, num_tokens, image_size)
    return schedule


def validate_omega(omega: Sequence[int], num_tokens: int, image_size: int) -> list[int]:
    """Check an explicit schedule and return it as a list of ints; raise ``ValueError`` naming the broken rule.

    Rules: one level per token (length ``num_tokens``), integers in ``[1, image_size]``, strictly increasing when
    ``num_tokens <= image_size`` (Eq. 5; non-decreasing otherwise), and the last level equal to ``image_size`` so
    the full prefix reconstructs the full image.
    """
    values = list(omega)
    if len(values) != num_tokens:
        raise ValueError(f"omega has {len(values)} levels but there are {num_tokens} tokens; give one level per token.")
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"omega[{i}] = {value!r} is not an int; spectral levels are integer block sizes.")
        if not 1 <= value <= image_size:
            raise ValueError(f"omega[{i}] = {value} is outside [1, {image_size}] (image_size = {image_size}).")
    for i in range(1, num_tokens):
        if values[i] < values[i - 1]:
            raise ValueError(
                f"omega is decreasing at token {i + 1}: {values[i - 1]} -> {values[i]}; levels must grow with the "
                f"token index (coarse to fine)."
            )
        if values[i] == values[i - 1] and num_tokens <= image_size:
            raise ValueError(
                f"omega repeats {values[i]} at tokens {i} and {i + 1}; with {num_tokens} tokens <= image_size "
                f"{image_size} it must be strictly increasing (Eq. 5)."
            )
    if values[-1] != image_size:
        raise ValueError(
            f"omega ends at {values[-1]} but must end at image_size = {image_size} so that all N tokens decode the "
            f"full image."
        )
    return values


# ---------------------------------------------------------------------------------------------------------------
# FAR: frequency levels of continuous latents (FAR §4.2, §4.3, §5.1 Eq. 3-4)
# ---------------------------------------------------------------------------------------------------------------

FAR_FILTER_KINDS = ("downsample", "fourier")
FAR_TEMPERATURE_SCHEDULES = ("linear", "cosine")


def _far_num_levels(height: int, width: int, num_levels: int | None) -> int:
    levels = min(height, width) if num_levels is None else num_levels
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ValueError(f"num_levels must be a positive int (default min(H, W)), got {num_levels!r}.")
    return levels


def _fourier_lowpass(x: torch.Tensor, level: int, num_levels: int) -> torch.Tensor:
    """Eq. 4: keep the Fourier coefficients with ``|u| <= i H / 2F`` and ``|v| <= i W / 2F`` (centred integer
    frequencies, DC at 0); for the paper's square case ``F = H = W`` this is ``max(|u|, |v|) <= i / 2``."""
    height, width = x.shape[-2], x.shape[-1]
    u = torch.fft.fftfreq(height, d=1.0 / height, device=x.device).abs()  # integers -H/2 .. H/2 - 1
    v = torch.fft.fftfreq(width, d=1.0 / width, device=x.device).abs()
    # |u| <= i * H / (2F)  <=>  2F |u| <= i H: exact in integers, no rounding at the boundary.
    keep_u = (2 * num_levels * u) <= level * height
    keep_v = (2 * num_levels * v) <= level * width
    mask = (keep_u.unsqueeze(1) & keep_v.unsqueeze(0)).to(x.dtype)
    # The kept set is symmetric under (u, v) -> (-u, -v), so the inverse transform is real up to rounding.
    return torch.fft.ifft2(torch.fft.fft2(x) * mask).real


def _downsample_lowpass(x: torch.Tensor, level: int, num_levels: int) -> torch.Tensor:
    """Eq. 3: area down-sampling to ``ceil(H i / F) x ceil(W i / F)``, bicubic up-sampling back to ``H x W``."""
    height, width = x.shape[-2], x.shape[-1]
    size = (-(-height * level // num_levels), -(-width * level // num_levels))  # exact integer ceil
    small = torch.nn.functional.interpolate(x, size=size, mode="area")
    return torch.nn.functional.interpolate(small, size=(height, width), mode="bicubic", align_corners=False)


def frequency_filter(
    latents: torch.Tensor,
    level: int | torch.Tensor,
    num_levels: int | None = None,
    kind: str = "downsample",
) -> torch.Tensor:
    """FAR's spectral filter ``x_i = M_i(x)`` of a latent at frequency level ``i`` (FAR Eq. 2-4).

    Args:
        latents: ``(B, C, H, W)`` floating tensor.
        level: ``i`` in ``[0, F]``: an int, or a ``(B,)`` integer tensor of per-sample levels (samples are grouped by
            level, so the cost is at most ``F + 1`` filter calls). Level 0 gives zeros (the blank first input of the
            outer loop), level ``F`` returns ``latents`` exactly.
        num_levels: ``F``; default ``min(H, W)`` (the paper's choice, 16 for a 16x16 latent).
        kind: ``"downsample"`` (type (a), the paper's default: area down-sampling to
            ``ceil(H i / F) x ceil(W i / F)`` then bicubic up-sampling back, as the reference code) or
            ``"fourier"`` (type (b): the square mask of Eq. 4 centred on DC, via ``torch.fft``; the output is real).

    Returns:
        ``(B, C, H, W)`` tensor of the dtype of ``latents`` (half precision is computed in float32).
    """
    if kind not in FAR_FILTER_KINDS:
        raise ValueError(f"kind must be one of {FAR_FILTER_KINDS}, got {kind!r}.")
    if not torch.is_floating_point(latents) or latents.dim() != 4:
        raise ValueError(f"frequency_filter expects a floating (B, C, H, W) tensor, got {latents.dtype} "
                         f"{tuple(latents.shape)}.")
    height, width = latents.shape[-2], latents.shape[-1]
    levels_total = _far_num_levels(height, width, num_levels)
    if isinstance(level, torch.Tensor):
        if level.dim() != 1 or level.shape[0] != latents.shape[0]:
            raise ValueError(f"A per-sample level must be a ({latents.shape[0]},) tensor, got shape "
                             f"{tuple(level.shape)}.")
        if torch.is_floating_point(level) or torch.is_complex(level):
            raise ValueError(f"frequency_filter needs integer levels, got dtype {level.dtype}; use `level.long()`.")
        levels = level.to(latents.device)
    else:
        if isinstance(level, bool) or not isinstance(level, int):
            raise ValueError(f"level must be an int or a (B,) integer tensor, got {type(level).__name__}.")
        levels = None
    low, high = (level, level) if levels is None else (int(levels.min()), int(levels.max())) if levels.numel() \
        else (0, 0)
    if low < 0 or high > levels_total:
        raise ValueError(f"level must lie in [0, {levels_total}] (F = num_levels), got values in [{low}, {high}].")

    work_dtype = torch.float64 if latents.dtype == torch.float64 else torch.float32
    apply = _fourier_lowpass if kind == "fourier" else _downsample_lowpass

    def single(x: torch.Tensor, value: int) -> torch.Tensor:
        if value == 0:
            return torch.zeros_like(x)
        if value == levels_total:
            return x.clone()
        with no_autocast(x.device):
            return apply(x.to(work_dtype), value, levels_total).to(x.dtype)

    if levels is None:
        return single(latents, level)
    output = torch.empty_like(latents)
    for value in torch.unique(levels).tolist():
        rows = levels == value
        output[rows] = single(latents[rows], int(value))
    return output


def far_loss_weight(level: int | torch.Tensor, num_levels: int) -> float | torch.Tensor:
    """FAR's frequency-aware training loss weight (FTL, §4.3) of a sample whose input is at level ``i``:
    ``w = 1 + sin(pi / 2 * (i + 1) / F)``.

    The paper writes ``w_i = 1 + sin(pi / 2 * i / F)`` for "frequency level i" without saying whether the blank
    input counts as a level; the reference code (the tie-breaker) builds the list
    ``[1 + sin(pi / 2 * (b + 1) / F) for b in range(F)]`` indexed by the input level ``b``, i.e. the paper's ``i``
    is the level being predicted, one above the input. So the blank input (level 0) weighs ``1 + sin(pi / 2F)`` and
    the highest training input, level ``F - 1``, weighs 2.

    Args:
        level: input level ``i`` in ``[0, F)`` (an int or a tensor of levels, any shape).
        num_levels: ``F``.

    Returns:
        A float, or a float32 tensor of the shape of ``level``.
    """
    if isinstance(level, torch.Tensor):
        return 1.0 + torch.sin(0.5 * math.pi * (level.to(torch.float32) + 1) / num_levels)
    return 1.0 + math.sin(0.5 * math.pi * (level + 1) / num_levels)


def far_mask_ratio_range(level: int | torch.Tensor, num_levels: int,
                         low_level_min: float = 0.7) -> tuple[float | torch.Tensor, float]:
    """FAR's frequency-aware mask range ``[r_i, 1]`` (§4.3): the fraction of input tokens masked at input level ``i``
    is drawn from this range.

    ``r_i`` falls linearly from ``low_level_min`` (0.7) at the lowest input level 0 to 0 at the highest input level
    used in training, ``F - 1`` (and stays 0 at ``F``): ``r_i = low_level_min * max(0, 1 - i / (F - 1))``; with
    ``F = 1`` the only level 0 has ``r_0 = low_level_min``.

    Args:
        level: an int, or a tensor of levels (any shape).
        num_levels: ``F``.
        low_level_min: ``r_0``.

    Returns:
        ``(r_i, 1.0)``; ``r_i`` is a float, or a float32 tensor of the shape of ``level``.
    """
    span = max(num_levels - 1, 1)
    if isinstance(level, torch.Tensor):
        fraction = (1.0 - level.to(torch.float32) / span).clamp(min=0.0)
        return (low_level_min * fraction if num_levels > 1 else torch.full_like(fraction, low_level_min)), 1.0
    return (low_level_min * max(0.0, 1.0 - level / span) if num_levels > 1 else low_level_min), 1.0


def far_level_schedule(num_steps: int, num_levels: int) -> list[int]:
    """Frequency level reached by each outer inference step: ``floor((k + 1) F / n)`` for ``k = 0 .. n - 1``.

    Strictly increasing (``n <= F``), spread evenly over ``[1, F]`` and ending at ``F`` (the last step's output is the
    full latent); ``n = F`` gives every level ``1 .. F`` (the training-time maximum of ``F`` steps, §5.2). Outer step
    ``k`` takes as input the previous sample filtered to level ``schedule[k - 1]`` (level 0, the blank input, for
    ``k = 0``) and its sample filtered to ``schedule[k]`` is the next step's input.
    """
    if isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels < 1:
        raise ValueError(f"num_levels must be a positive int, got {num_levels!r}.")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 1 <= num_steps <= num_levels:
        raise ValueError(f"num_steps must be an int in [1, {num_levels}] (at most F = num_levels outer steps), got "
                         f"{num_steps!r}.")
    return [(k + 1) * num_levels // num_steps for k in range(num_steps)]


def far_input_levels(level_schedule: Sequence[int], num_levels: int) -> list[int]:
    """Check an explicit outer-step schedule of FAR given as the INPUT level of every step (the reference code's
    ``latent_core``, e.g. ``[0, 2, 3, 4, 5, 6, 7, 8, 9, 10]`` for 10 steps at ``F = 16``) and return the level each
    step's output is filtered to (the form of :func:`far_level_schedule`): ``schedule[1:] + [F]``.

    The schedule must start at 0 (the blank first input), increase strictly and stay below ``F`` (the last step
    outputs the full latent).
    """
    values = list(level_schedule)
    if not values or any(isinstance(v, bool) or not isinstance(v, int) for v in values):
        raise ValueError(f"level_schedule must be a non-empty list of ints (the input level of each outer step), got "
                         f"{level_schedule!r}.")
    if values[0] != 0 or any(b <= a for a, b in zip(values, values[1:])) or values[-1] >= num_levels:
        raise ValueError(f"level_schedule must start at 0 (the blank input), increase strictly and stay below "
                         f"F = {num_levels}, e.g. [0, 2, 3, 4, 5, 6, 7, 8, 9, 10] (the reference sampler's); got "
                         f"{values}.")
    return values[1:] + [num_levels]


def far_temperatures(temperature: float | Sequence[float], num_steps: int, schedule: str = "linear") -> list[float]:
    """Noise temperature of each of ``num_steps`` outer steps: a constant, or ``(start, end)`` interpolated
    ``"linear"``-ly (``start + (end - start) k / (n - 1)``) or with the reference sampler's ``"cosine"`` ramp
    ``start + (end - start) (1 - cos(pi / 2 (k + 1) / n))`` (FAR: 0.8 -> 1.0)."""
    if schedule not in FAR_TEMPERATURE_SCHEDULES:
        raise ValueError(f"temperature_schedule must be one of {FAR_TEMPERATURE_SCHEDULES}, got {schedule!r}.")
    if not isinstance(temperature, (list, tuple)):
        return [float(temperature)] * num_steps
    start, end = (float(value) for value in temperature)
    if schedule == "cosine":
        return [start + (end - start) * (1 - math.cos(math.pi / 2 * (k + 1) / num_steps)) for k in range(num_steps)]
    return [end if num_steps == 1 else start + (end - start) * k / (num_steps - 1) for k in range(num_steps)]


def far_diffusion_steps(num_steps: int, first: int = 40, last: int = 100) -> list[int]:
    """Frequency-aware inner diffusion steps per outer step (§4.3): linear from ``first`` at the lowest level to
    ``last`` at the highest, rounded (``40 -> 100`` over 10 steps averages 70, saving 30% of the head's time
    against a constant 100). A single outer step gets ``last`` (it must produce the final detail)."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}.")
    if first < 1 or last < 1:
        raise ValueError(f"first and last must be >= 1 diffusion steps, got {first} and {last}.")
    if num_steps == 1:
        return [int(last)]
    return [int(round(first + (last - first) * k / (num_steps - 1))) for k in range(num_steps)]
