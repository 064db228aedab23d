"""Numerics on every CPU-testable backend: statistics when |mean| >> std, fp16 values whose
squares overflow fp16, NaN/inf propagation, checked against float64 of the same data."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import assert_close, make_blocks

from fused_resnet import ops, reference


def _conv_stats(backend: str, x: torch.Tensor, w: torch.Tensor):
    y, mean, m2 = ops.get_backend(backend).conv_fwd(
        x=x, weight=w, stride=1, padding=w.shape[-1] // 2, dilation=1, groups=1, in_scale=None,
        in_shift=None, in_relu=False, out_scale=None, out_shift=None, residual=None, res_scale=None,
        res_shift=None, out_relu=False, stats=True)
    return y, mean, m2


def _exact_stats(x: torch.Tensor, w: torch.Tensor):
    """float64 statistics of the conv of the same (rounded) inputs: the unrounded ``y``
    a kernel's fp32 accumulator approximates."""
    y64 = torch.nn.functional.conv2d(x.double(), w.double(), padding=w.shape[-1] // 2)
    return reference.channel_stats(y64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
def test_stats_when_mean_dwarfs_std(cpu_backend, dtype):
    # 1x1 conv outputs around +-300 with a spread of ~0.1 (mean/std ~ 2000): the naive
    # sum(y^2) - n*mean^2 in fp32 loses everything. The fp32 accumulator itself carries
    # ~3e-5 absolute error at 300, i.e. ~1e-3 of m2 here: hence the 5e-3 bound.
    x = (torch.randn(2, 5, 7, 7) * 0.03 + 30.0).to(dtype)
    w = (torch.rand(11, 5, 1, 1) + 1.5).to(dtype)
    w[::2] *= -1
    _, mean, m2 = _conv_stats(cpu_backend, x, w)
    ref_mean, ref_m2 = _exact_stats(x, w)
    spread = (ref_m2 / (x.numel() / x.shape[1])).sqrt()
    assert ref_mean.abs().min() > 500 * spread.max(), "the case must have |mean| >> std"
    assert ((mean.double() - ref_mean).abs() <= 1e-6 * ref_mean.abs()).all()
    assert ((m2.double() - ref_m2).abs() <= 5e-3 * ref_m2).all(), (m2, ref_m2)


def test_fp16_squares_overflowing_fp16(cpu_backend):
    # |y| ~ 1000: y*y = 1e6 is far past fp16's 65504; statistics accumulate in fp32.
    x = (torch.rand(2, 4, 5, 5) + 5).half()
    w = (torch.rand(6, 4, 3, 3) * 2 + 5).half()
    y, mean, m2 = _conv_stats(cpu_backend, x, w)
    assert y.abs().max() > 300 and torch.isfinite(y).all()
    ref_mean, ref_m2 = _exact_stats(x, w)
    assert torch.isfinite(m2).all() and torch.isfinite(mean).all()
    assert_close(mean, ref_mean, torch.float32, what="mean")
    assert_close(m2, ref_m2, torch.float32, what="m2")


def test_block_running_stats_with_offset_inputs(cpu_backend):
    tv, fused = make_blocks("bottleneck", 12, 5, 1, True, backend=cpu_backend)
    oracle = copy.deepcopy(tv).double().train()
    fused.train()
    x = torch.randn(2, 12, 7, 7) * 0.5 + 300.0  # inputs offset by hundreds
    fused(x)
    oracle(x.double())
    for (name, b), (_, c) in zip(fused.named_buffers(), oracle.named_buffers()):
        assert_close(b, c, torch.float32 if "var" not in name else torch.float16, what=name)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_inf_propagate_like_the_reference(cpu_backend, value):
    if cpu_backend == "reference":
        pytest.skip("the reference is the oracle itself")
    x = torch.randn(2, 5, 7, 7)
    x[0, 1, 3, 3] = value
    r = torch.randn(2, 6, 7, 7)
    r[1, 2, 0, 0] = value
    w = torch.randn(6, 5, 3, 3)
    s, h = torch.rand(5) + 0.5, torch.randn(5)
    args = dict(x=x, weight=w, stride=1, padding=1, dilation=1, groups=1, in_scale=s, in_shift=h,
                in_relu=True, out_scale=torch.rand(6) + 0.5, out_shift=torch.randn(6),
                residual=r, res_scale=None, res_shift=None, out_relu=True, stats=True)
    got = ops.get_backend(cpu_backend).conv_fwd(**args)
    want = reference.conv_fwd(**args)
    for g, w_ in zip(got, want):
        assert torch.equal(torch.isnan(g), torch.isnan(w_))
        assert torch.equal(torch.isinf(g), torch.isinf(w_))
        finite = torch.isfinite(w_)
        assert_close(g[finite], w_[finite], torch.float32)
