"""How fused_resnet judges a result against its float64 oracle (docs/design.md §5).

One place for the rules the tests and the benchmark share: the tolerance table, the relative
error with its NaN policy, the low-precision allowance, and non-trivial BatchNorm state.
"""

from __future__ import annotations

import torch
from torch import nn

# Relative error ||out - ref|| / ||ref|| allowed against a float64 oracle.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-3,
             torch.bfloat16: 8e-3}
# float32 convolutions on CUDA run in TF32 when torch.backends.cudnn.allow_tf32 is set.
TF32_TOLERANCE = 5e-3
LOW_PRECISION = (torch.float16, torch.bfloat16)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref||, computed in float64 on the CPU.

    NaN policy: a non-finite value (NaN, +-inf) in ``out`` is an infinite error unless ``ref``
    holds the very same value at that position; positions where both are the same non-finite
    value are left out of the norms. A zero ``ref`` gives the absolute error.
    """
    out, ref = out.detach().to("cpu", torch.float64), ref.detach().to("cpu", torch.float64)
    bad_out, bad_ref = ~torch.isfinite(out), ~torch.isfinite(ref)
    if bad_out.any() or bad_ref.any():
        same = (bad_out == bad_ref) & (torch.isnan(out) == torch.isnan(ref))
        same &= torch.where(bad_ref & ~torch.isnan(ref), out == ref, True)
        if not bool(same.all()):
            return float("inf")
        keep = ~bad_ref
        out, ref = out[keep], ref[keep]
    den = torch.linalg.vector_norm(ref).item()
    num = torch.linalg.vector_norm(out - ref).item()
    return num / den if den > 0 else num


def tolerance(dtype: torch.dtype, plain_err: float | None = None, *, tf32: bool = False) -> float:
    """The allowed relative error in ``dtype``: the table's entry, or 2x the error that plain
    PyTorch makes on the same tensor in the same dtype when that is larger (``plain_err``,
    where the caller has measured it). ``tf32``: float32 computed with TF32 convolutions."""
    tol = TF32_TOLERANCE if tf32 and dtype == torch.float32 else TOLERANCE[dtype]
    return tol if plain_err is None else max(tol, 2 * plain_err)


def randomize_bn(module: nn.Module, mean_offset: float = 0.0) -> None:
    """Non-trivial affine parameters and running statistics for every BatchNorm in ``module``,
    so folding, shifts and scales are all exercised."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d) or type(m).__name__ == "FrozenBatchNorm2d":
                c = m.running_mean.shape[0] if m.running_mean is not None else m.num_features
                if m.weight is not None:
                    m.weight.copy_(torch.rand(c) + 0.5)
                    m.bias.copy_(torch.randn(c) * 0.5)
                if m.running_mean is not None:
                    m.running_mean.copy_(torch.randn(c) * 0.5 + mean_offset)
                    m.running_var.copy_(torch.rand(c) + 0.5)
