"""Eval-mode BN folds (and, on oneDNN, prepacked weights) are cached per block and never
stale: after every kind of change to the BN state or parameters, the fused eval output still
matches torchvision's. float64 runs the fused kernels' own eval path, float32 on the cpp
backend the oneDNN one."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import CPU_BACKENDS, assert_close, make_blocks

DT = torch.float64
# (backend, dtype): the fused eval path of each CPU backend, and oneDNN's (cpp, float32).
PATHS = [(b, torch.float64) for b in CPU_BACKENDS] + (
    [("cpp", torch.float32)] if "cpp" in CPU_BACKENDS else [])


def eval_pair(backend, dtype=DT):
    tv, fused = make_blocks("bottleneck", 12, 5, 2, True, backend=backend)
    tv, fused = tv.to(dtype).eval(), fused.to(dtype).eval()
    return tv, fused


def check(tv, fused, x):
    with torch.no_grad():
        assert_close(fused(x), tv(x), x.dtype)


def bns(m):
    return [b for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d)]


CHANGES = {
    "running_stats_in_place": lambda m: [b.running_mean.add_(0.3) for b in bns(m)],
    "running_var_assigned": lambda m: [setattr(b, "running_var", b.running_var * 2 + 0.1)
                                       for b in bns(m)],
    "bn_weight_in_place": lambda m: [b.weight.mul_(-1.5) for b in bns(m)],
    "bn_bias_data_swapped": lambda m: [setattr(b.bias, "data", b.bias.data + 1) for b in bns(m)],
    "eps": lambda m: [setattr(b, "eps", 0.5) for b in bns(m)],
    "training_step": None,  # a training forward updates the running statistics
    "load_state_dict": None,
}


@pytest.mark.parametrize("backend, dtype", PATHS, ids=lambda v: str(v).removeprefix("torch."))
@pytest.mark.parametrize("change", list(CHANGES))
def test_folds_follow_every_change(backend, dtype, change):
    tv, fused = eval_pair(backend, dtype)
    x = torch.randn(2, 12, 9, 9, dtype=dtype)
    check(tv, fused, x)  # the folds are now cached
    if change == "training_step":
        batch = torch.randn(3, 12, 9, 9, dtype=dtype) * 3 + 1
        for m in (tv, fused):
            m.train()
            with torch.no_grad():
                m(batch)
            m.eval()
    elif change == "load_state_dict":
        other, _ = eval_pair(backend, dtype)
        for b in bns(other):
            b.running_mean.uniform_(-1, 1)
        tv.load_state_dict(other.state_dict())
        fused.load_state_dict(other.state_dict())
    else:
        with torch.no_grad():
            for m in (tv, fused):
                CHANGES[change](m)
    check(tv, fused, x)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_folds_follow_dtype_and_copies(backend):
    tv, fused = eval_pair(backend)
    x = torch.randn(2, 12, 9, 9, dtype=DT)
    check(tv, fused, x)
    clone = copy.deepcopy(fused)  # a copy starts without the cache, then makes its own
    for b in bns(clone):
        b.running_mean.zero_()
    with torch.no_grad():
        assert not torch.equal(clone(x), fused(x))
    check(tv, fused, x)
    tv32, f32 = tv.float(), fused.float()
    with torch.no_grad():
        assert f32(x.float()).dtype == torch.float32
    check(tv32.double(), f32.double(), x)
