"""`pytest --perturb-floats`: run tests as if on a CPU that rounds float32 differently.

Another x86 CPU (another GEMM kernel, vector width or blocking) gives float32 results that differ from this one's in
the last bits, deterministically: the same computation gives the same result on that machine, and a matrix product of
another shape (a batch of 1 against a batch of 4) may round differently. `FloatPerturbation` imitates that: the
float32 result of every matrix product, convolution and attention call has 1 ulp added to about a quarter of its
elements, chosen by a hash of the element's bits and of the output's shape. Identical computations are still
identical (an in-process reference keeps agreeing); a value recorded on another machine, or a comparison across batch
sizes that relies on exact rounding, no longer matches. Denormals are also flushed to zero while it is on.

A test that fails under `--perturb-floats` but passes without it depends on last-bit float rounding: it would fail on
some other CPU. Scripts run in a subprocess are not perturbed (the mode lives in the pytest process).
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

# Calls (by name: functions, Tensor methods and operators alike) whose float32 results are rounded by a kernel whose
# blocking depends on the CPU and on the shapes.
PERTURBED = {"matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "addmm", "baddbmm", "einsum", "linear", "conv1d",
             "conv2d", "conv_transpose2d", "scaled_dot_product_attention"}
GOLDEN = 0x9E3779B1  # Knuth's multiplicative hash constant


def perturb(output: torch.Tensor) -> torch.Tensor:
    """`output` (float32) with 1 ulp added to the elements that a hash of (bits, shape) selects (about 1 in 4)."""
    if not isinstance(output, torch.Tensor) or output.dtype != torch.float32 or output.numel() == 0:
        return output
    salt = hash(tuple(output.shape)) & 0xFFFF
    with torch.no_grad():
        bits = output.detach().contiguous().view(torch.int32).to(torch.int64)
        selected = ((((bits ^ salt) * GOLDEN) >> 13) & 3) == 0
        step = torch.nextafter(output.detach(), torch.full_like(output.detach(), float("inf"))) - output.detach()
        step = torch.where(selected & torch.isfinite(step), step, torch.zeros_like(step))
    return output + step  # the gradient passes through unchanged


class FloatPerturbation(TorchFunctionMode):
    """While active, the float32 results of `PERTURBED` calls are rounded "as on another CPU" (see the module)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        if getattr(func, "__name__", None) in PERTURBED:
            with torch._C.DisableTorchFunction():
                output = perturb(output)
        return output

    def __enter__(self):
        torch.set_flush_denormal(True)
        return super().__enter__()

    def __exit__(self, *exc):
        torch.set_flush_denormal(False)
        return super().__exit__(*exc)
