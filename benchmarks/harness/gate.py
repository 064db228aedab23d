"""The correctness gate: every provider is compared, tensor by tensor, with the float64
torchvision module before it is timed (benchmarks/README.md, "Correctness gate").

The rule is the one the tests use (fused_resnet.testing): a tensor passes when its relative
error is within max(the dtype's tolerance, 2x eager PyTorch's error on that tensor in the same
dtype). Eager itself is held to the dtype's tolerance with the same 2x allowance, taken from a
float64 run in which every convolution's output and incoming gradient carry the dtype's
rounding and the ReLU decisions that rounding could flip are inverted: that run measures how
ill-conditioned each tensor is by construction.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from fused_resnet.testing import rel_err, tolerance

from .providers import params_of

# A convolution's output in the dtype is off by up to this many units of roundoff, relative to
# its RMS: its inputs are rounded to the dtype, and its sums of thousands of terms accumulate.
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
    """The rounding error of a convolution's output in ``dtype``, relative to its RMS, at most:
    the inputs' rounding, and that of sums of thousands of terms in the accumulator."""
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    return max(ROUNDING_UNITS_STORED * unit_roundoff(dtype, tf32),
               ROUNDING_UNITS_ACCUMULATED * unit_roundoff(acc))


def _as_computed(t: torch.Tensor, dtype: torch.dtype, band: float, seed: int) -> torch.Tensor:
    """``t`` as the dtype would compute it: rounding noise of up to half the band (relative to
    the tensor's RMS: accumulated sums), then rounded to ``dtype``; deterministic."""
    if not t.numel():
        return t
    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand(t.shape, generator=gen, dtype=t.dtype) * 2 - 1
    return (t + noise * (band / 2) * t.pow(2).mean().sqrt()).to(dtype).to(t.dtype)


class _Rounded(torch.autograd.Function):
    """Identity whose value and incoming gradient carry the dtype's rounding."""

    @staticmethod
    def forward(ctx, t, dtype, band):
        ctx.dtype, ctx.band = dtype, band
        return _as_computed(t, dtype, band, seed=t.numel())

    @staticmethod
    def backward(ctx, grad):
        return _as_computed(grad, ctx.dtype, ctx.band, seed=grad.numel() + 1), None, None


class _UncertainReLU(torch.autograd.Function):
    """ReLU whose backward takes float64's decisions and inverts those that rounding could have
    made the other way: inputs closer to zero than the largest change rounding made to their
    channel."""

    @staticmethod
    def forward(ctx, z, clean):
        dev = (z - clean).abs()
        if z.dim() > 1 and z.numel():
            dev = dev.transpose(0, 1).reshape(z.shape[1], -1).amax(1)
            dev = dev.view(1, -1, *([1] * (z.dim() - 2)))
        ctx.save_for_backward((clean > 0) ^ (clean.abs() < dev))
        return z.clamp_min(0)

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask, None


class _ReLUProbe(nn.Module):
    """Replaces nn.ReLU: records its inputs (clean pass) or compares with them (rounded)."""

    def __init__(self, log: list):
        super().__init__()
        self.log, self.rounded = log, False

    def forward(self, z):
        if not self.rounded:
            self.log.append(z.detach())
            return torch.relu(z)
        return _UncertainReLU.apply(z, self.log.pop(0))


def rounded_outputs(module: nn.Module, x: torch.Tensor, run, dtype: torch.dtype,
                    band: float) -> dict:
    """``run(module)``'s outputs (a float64 ``module`` whose input is ``x``) when every
    convolution's output and incoming gradient carry the dtype's rounding, and the ReLU
    decisions that rounding could flip are inverted in the backward: eager's yardstick."""
    module, log = copy.deepcopy(module), []
    probes = []
    for parent in list(module.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.ReLU):
                probes.append(_ReLUProbe(log))
                setattr(parent, name, probes[-1])
    with torch.no_grad():
        module(x)  # clean pass: the ReLU inputs without rounding
    for p in probes:
        p.rounded = True
    hooks = [m.register_forward_hook(lambda m, i, out: _Rounded.apply(out, dtype, band))
             for m in module.modules() if isinstance(m, nn.Conv2d)]
    try:
        return run(module)
    finally:
        for h in hooks:
            h.remove()
