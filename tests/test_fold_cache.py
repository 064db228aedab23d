"""Eval-mode BN folds are cached per block and never stale: after every kind of change to
the BN state or parameters, the fused eval output still matches torchvision's."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import CPU_BACKENDS, assert_close, make_blocks

DT = torch.float64  # the cpp and reference paths (oneDNN serves float32 eval)


def eval_pair(backend):
    tv, fused = make_blocks("bottleneck", 12, 5, 2, True, backend=backend)
    tv, fused = tv.to(DT).eval(), fused.to(DT).eval()
    return tv, fused


def check(tv, fused, x):
    with torch.no_grad():
        assert_close(fused(x), tv(x), DT)


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


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("change", list(CHANGES))
def test_folds_follow_every_change(backend, change):
    tv, fused = eval_pair(backend)
    x = torch.randn(2, 12, 9, 9, dtype=DT)
    check(tv, fused, x)  # the folds are now cached
    if change == "training_step":
        batch = torch.randn(3, 12, 9, 9, dtype=DT) * 3 + 1
        for m in (tv, fused):
            m.train()
            with torch.no_grad():
                m(batch)
            m.eval()
    elif change == "load_state_dict":
        other, _ = eval_pair(backend)
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
