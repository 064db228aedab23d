"""GPU-only checks (skipped visibly without CUDA): every fused CUDA backend on the real
ResNet-50 stage shapes against float64, activation memory below eager's, and int64 offsets
on tensors past 2^31 elements."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import HAS_CUDA, TF32_TOLERANCE, assert_close, make_blocks, rel_err, tolerance

import fused_resnet
from fused_resnet import ops, reference

pytestmark = pytest.mark.gpu

GPU_BACKENDS = [b for b in ("triton", "cuda")
                if HAS_CUDA and ops.cannot_serve(b, "cuda", torch.bfloat16) is None]
# (inplanes, planes, stride, projection, H=W): a first and a repeating block per stage.
STAGES = [(64, 64, 1, True, 56), (256, 128, 2, True, 56), (512, 128, 1, False, 28),
          (1024, 256, 1, False, 14), (1024, 512, 2, True, 14), (2048, 512, 1, False, 7)]


def test_a_fused_gpu_backend_exists():
    assert GPU_BACKENDS, f"no fused backend serves CUDA: {fused_resnet.backend_status('cuda')}"


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("stage", STAGES, ids=[f"{s[0]}x{s[1]}-s{s[2]}" for s in STAGES])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_stage_blocks_against_float64(backend, stage, dtype, train):
    inplanes, planes, stride, proj, hw = stage
    tv, fused = make_blocks("bottleneck", inplanes, planes, stride, proj, backend=backend)
    tv, fused = tv.cuda().train(train), fused.cuda().to(dtype).train(train)
    oracle = copy.deepcopy(tv).double()
    plain = copy.deepcopy(tv).to(dtype).to(memory_format=torch.channels_last)
    x = torch.randn(32, inplanes, hw, hw, device="cuda").to(dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    xs = [x.clone().requires_grad_() for _ in range(3)]
    out, out_plain, ref = fused(xs[0]), plain(xs[1]), oracle(xs[2].double())
    g = torch.randn_like(ref)
    for o in (out, out_plain, ref):
        o.backward(g.to(o.dtype))
    for what, got, base, want in (("out", out, out_plain, ref),
                                  ("x.grad", xs[0].grad, xs[1].grad, xs[2].grad)):
        plain_err = rel_err(base, want)
        tol = tolerance(dtype, plain_err)
        if dtype == torch.float32 and torch.backends.cudnn.allow_tf32:
            tol = max(TF32_TOLERANCE, 2 * plain_err)  # convs run in TF32, as cuDNN's do
        err = rel_err(got, want)
        assert err <= tol, f"{what}: {err:.3e} > {tol:.1e} (plain {dtype}: {plain_err:.3e})"


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_nan_propagates(backend):
    _, fused = make_blocks("bottleneck", 256, 64, 1, False, backend=backend)
    fused = fused.cuda().to(torch.bfloat16).eval()
    x = torch.randn(2, 256, 14, 14, device="cuda", dtype=torch.bfloat16)
    x[1, 5, 3, 3] = float("nan")
    with torch.no_grad():
        out = fused(x)
    assert torch.isnan(out[1]).any() and not torch.isnan(out[0]).any()


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_training_peak_memory_below_eager(backend):
    tv, fused = make_blocks("bottleneck", 512, 128, 1, False, backend=backend)
    x = torch.randn(64, 512, 28, 28, device="cuda", dtype=torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last)
    peaks = {}
    for name, block in (("eager", tv), ("fused", fused)):
        block = block.cuda().to(torch.bfloat16).to(memory_format=torch.channels_last).train()
        inp = x.clone().requires_grad_()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        block(inp).sum().backward()
        torch.cuda.synchronize()
        peaks[name] = torch.cuda.max_memory_allocated() - base
    assert peaks["fused"] < peaks["eager"], peaks


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_tensors_past_2_to_the_31_elements(backend):
    # y of 2^31 + a bit elements in bf16 (4.3 GB each); several live at once.
    n, c, h, w = 1371, 256, 78, 78  # 2.135e9 elements
    need = 6 * n * c * h * w * 2
    free, _ = torch.cuda.mem_get_info()
    if free < need:
        pytest.skip(f"needs {need / 2**30:.0f} GiB of free GPU memory, {free / 2**30:.0f} free")
    be = ops.get_backend(backend)
    y = torch.randn(n, c, h, w, device="cuda", dtype=torch.bfloat16).contiguous(
        memory_format=torch.channels_last)
    r = torch.randn_like(y)
    scale = torch.rand(c, device="cuda") + 0.5
    shift = torch.randn(c, device="cuda")
    out = be.block_end(y=y, scale=scale, shift=shift, residual=r, res_scale=None,
                       res_shift=None)
    tail = slice(n - 3, n)  # where 32-bit offsets would have wrapped
    want = reference.block_end(y[tail], scale, shift, r[tail])
    assert torch.equal(out[tail], want)
    del out, r
    w1 = torch.randn(64, c, 1, 1, device="cuda", dtype=torch.bfloat16)
    z, mean, m2 = be.conv_fwd(x=y, weight=w1, stride=1, padding=0, dilation=1, groups=1,
                              in_scale=scale, in_shift=shift, in_relu=True, out_scale=None,
                              out_shift=None, residual=None, res_scale=None, res_shift=None,
                              out_relu=False, stats=True)
    want = reference.conv_fwd(y[tail], w1, 1, 0, 1, 1, scale, shift, True)[0]
    assert_close(z[tail], want, torch.bfloat16)
