"""The correctness gate: every provider is compared, tensor by tensor, with the float64
torchvision module before it is timed (benchmarks/README.md, "Correctness gate").

The rule is the one the tests use (fused_resnet.testing): a tensor passes when its relative
error is within max(the dtype's tolerance, 2x eager PyTorch's error on that tensor in the same
dtype). Eager itself is held to the dtype's tolerance with the same 2x allowance, taken from a
float64 run that rounds every ReLU input to the dtype and inverts the ReLU decisions that
rounding could flip: that run measures how ill-conditioned each tensor is by construction.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from fused_resnet.testing import rel_err, tolerance

from .providers import params_of

# ReLU inputs within this many units of roundoff (relative to the tensor's RMS) of zero may land
# on either side of it: in the activations' dtype, and after accumulating thousands of terms.
ROUNDING_UNITS_STORED = 4
ROUNDING_UNITS_ACCUMULATED = 64


def block_outputs(module: nn.Module, x: torch.Tensor, g: torch.Tensor, mode: str) -> dict:
    """What the gate compares: output; in training also input and parameter gradients."""
    if mode == "inference":
        with torch.no_grad():
            return {"out": module(x)}
    x = x.detach().requires_grad_()
    out = module(x)
    if mode == "train_fwd":
        return {"out": out}
    out.backward(g)
    res = {"out": out, "grad.x": x.grad}
    res.update({f"grad.{n}": p.grad for n, p in params_of(module)})
    return res


def network_outputs(module: nn.Module, x: torch.Tensor, g: torch.Tensor, mode: str) -> dict:
    """As for a block, but parameter gradients as one vector: a single BN weight's gradient
    deep in a 50-layer net is ill-conditioned even for plain PyTorch, the whole one is not."""
    res = block_outputs(module, x, g, "train_fwd_bwd" if mode == "train_step" else mode)
    grads = [res.pop(k) for k in [k for k in res if k.startswith("grad.") and k != "grad.x"]]
    if grads:
        res["grad.params"] = (None if any(t is None for t in grads) else
                              torch.cat([t.detach().double().cpu().flatten() for t in grads]))
    return res


def errors(got: dict, ref: dict) -> dict[str, float]:
    """Relative error of each compared tensor (a missing one is an infinite error)."""
    return {k: (rel_err(got[k], ref[k]) if got.get(k) is not None else math.inf) for k in ref}


def judge(errs: dict[str, float], plain: dict[str, float], dtype: torch.dtype,
          tf32: bool) -> tuple[bool, str, float, float]:
    """(passed, worst tensor, its error, its tolerance): each tensor within
    max(dtype tolerance, 2x ``plain``'s error on it); worst = largest error / tolerance."""
    tols = {k: tolerance(dtype, plain.get(k), tf32=tf32) for k in errs}
    worst = max(errs, key=lambda k: errs[k] / tols[k])
    return all(errs[k] <= tols[k] for k in errs), worst, errs[worst], tols[worst]


def unit_roundoff(dtype: torch.dtype, tf32: bool = False) -> float:
    if tf32 and dtype == torch.float32:
        return 2.0 ** -11  # TF32 keeps 10 mantissa bits
    return torch.finfo(dtype).eps / 2


def rounding_band(dtype: torch.dtype, tf32: bool = False) -> float:
    """Half-width, relative to a tensor's RMS, of the band around zero where rounding in
    ``dtype`` decides a ReLU."""
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    return max(ROUNDING_UNITS_STORED * unit_roundoff(dtype, tf32),
               ROUNDING_UNITS_ACCUMULATED * unit_roundoff(acc))


class _RoundedReLU(torch.autograd.Function):
    """ReLU of the input as the dtype computes it (rounding noise of up to half the band,
    then rounded to ``dtype``), whose backward lets through exactly the elements that
    rounding could have decided the other way (mask inverted within the band)."""

    @staticmethod
    def forward(ctx, z, dtype, band):
        mask = torch.zeros_like(z, dtype=torch.bool)
        if z.numel():
            rms = z.pow(2).mean().sqrt()
            gen = torch.Generator().manual_seed(z.numel())  # deterministic, shape-keyed
            noise = torch.rand(z.shape, generator=gen, dtype=z.dtype) * 2 - 1
            z = (z + noise * (band / 2) * rms).to(dtype).to(z.dtype)
            mask = (z > 0) ^ (z.abs() < band * rms)
        ctx.save_for_backward(mask)
        return z.clamp_min(0)

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask, None, None


class RoundedReLU(nn.Module):
    def __init__(self, dtype: torch.dtype, band: float):
        super().__init__()
        self.dtype, self.band = dtype, band

    def forward(self, z):
        return _RoundedReLU.apply(z, self.dtype, self.band)


def with_rounded_relus(module: nn.Module, dtype: torch.dtype, band: float) -> nn.Module:
    """``module`` (a copy) with every nn.ReLU replaced by a RoundedReLU."""
    module = copy.deepcopy(module)
    for parent in list(module.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.ReLU):
                setattr(parent, name, RoundedReLU(dtype, band))
    return module
