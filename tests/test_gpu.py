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
                if HAS_CUDA and ops.unavailable_reason(b, "cuda", torch.bfloat16) is None]
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
    """int64 offsets: activations of 2^31 + 43M elements (4.4 GB each in bf16) through
    block_end, block_end_bwd, conv forward, dgrad and wgrad, checked where 32-bit offsets
    would have wrapped (the last images) and, for the sums, chunk by chunk."""
    n, c, h, w = 1371, 256, 79, 79
    assert n * c * h * w > 2**31
    need = 7 * n * c * h * w * 2
    free, _ = torch.cuda.mem_get_info()
    if free < need:
        pytest.skip(f"needs {need / 2**30:.0f} GiB of free GPU memory, {free / 2**30:.0f} free")
    be = ops.get_backend(backend)
    bf16 = torch.bfloat16

    def act(*shape):
        return torch.randn(*shape, device="cuda", dtype=bf16).contiguous(
            memory_format=torch.channels_last)

    def chunked(fn):  # a reference sum over all images, 128 at a time, in float64
        return sum(fn(slice(i, i + 128)) for i in range(0, n, 128))

    tail = slice(n - 3, n)
    y, r = act(n, c, h, w), act(n, c, h, w)
    scale, shift = torch.rand(c, device="cuda") + 0.5, torch.randn(c, device="cuda")
    out = be.block_end(y=y, scale=scale, shift=shift, residual=r, res_scale=None,
                       res_shift=None)
    assert_close(out[tail], reference.block_end(y[tail], scale, shift, r[tail]), bf16)
    # Sums without cancellation (positive terms), so fp32 accumulation meets 1e-5.
    mean = torch.randn(c, device="cuda") * 0.1 - 3
    invstd = torch.rand(c, device="cuda") + 0.5
    d_out = r.abs_()  # reuse the memory
    dz, s_dz, s_xhat, _ = be.block_end_bwd(d_out=d_out, out=out, y=y, mean=mean,
                                           invstd=invstd, y_d=None, mean_d=None, invstd_d=None)
    want = reference.block_end_bwd(d_out[tail], out[tail], y[tail], mean, invstd)
    assert_close(dz[tail], want[0], bf16, what="dz")
    sums = chunked(lambda i: torch.stack(reference.block_end_bwd(
        d_out[i].double(), out[i].double(), y[i].double(), mean, invstd)[1:3]))
    assert_close(s_dz, sums[0], torch.float32, what="sum dz")
    assert_close(s_xhat, sums[1], torch.float32, what="sum dz*xhat")
    out = dz = d_out = r = None  # free 17 GB before the convs
    w1 = torch.randn(64, c, 1, 1, device="cuda", dtype=bf16) / c ** 0.5
    z, _, _ = be.conv_fwd(x=y, weight=w1, stride=1, padding=0, dilation=1, groups=1,
                          in_scale=scale, in_shift=shift, in_relu=True, out_scale=None,
                          out_shift=None, residual=None, res_scale=None, res_shift=None,
                          out_relu=False, stats=True)
    want = reference.conv_fwd(y[tail], w1, 1, 0, 1, 1, scale, shift, True)[0]
    assert_close(z[tail], want, bf16, what="conv_fwd")
    a, b, cc = (torch.randn(64, device="cuda") * 0.1 for _ in range(3))
    dx, _, _ = be.conv_bwd_data(dz=z, y=z, a=a, b=b, c=cc, weight=w1, input_size=list(y.shape),
                                stride=1, padding=0, dilation=1, groups=1, residual=None,
                                prev_y=None, prev_scale=None, prev_shift=None, prev_mean=None,
                                prev_invstd=None)
    want = reference.conv_bwd_data(z[tail], z[tail], a, b, cc, w1, [3, c, h, w], 1, 0, 1)[0]
    assert_close(dx[tail], want, bf16, what="dgrad")
    dx = None
    dw = be.conv_bwd_weight(x=y, in_scale=scale, in_shift=shift, in_relu=True, dz=z, y=z, a=a,
                            b=b, c=cc, weight=w1, stride=1, padding=0, dilation=1, groups=1)
    want = chunked(lambda i: reference.conv_bwd_weight(
        y[i].double(), scale, shift, True, z[i].double(), z[i].double(), a, b, cc,
        w1.double(), 1, 0, 1).float())
    assert_close(dw, want, bf16, what="wgrad")


# ------------------------------------------------------------------- Triton backend
TRITON = pytest.mark.skipif("triton" not in GPU_BACKENDS,
                            reason="the triton backend does not serve CUDA here")
# The ResNet-50 stage blocks at batch 128, as training runs them: each stage's first
# (projection) block and its repeating block.
B128_STAGES = [(64, 64, 1, True, 56), (256, 64, 1, False, 56), (256, 128, 2, True, 56),
               (512, 128, 1, False, 28), (512, 256, 2, True, 28), (1024, 256, 1, False, 14),
               (1024, 512, 2, True, 14), (2048, 512, 1, False, 7)]


def _triton_pair(stage, dtype, batch):
    inplanes, planes, stride, proj, hw = stage
    tv, fused = make_blocks("bottleneck", inplanes, planes, stride, proj, backend="triton")
    tv = tv.cuda().to(dtype).to(memory_format=torch.channels_last)
    fused = fused.cuda().to(dtype).to(memory_format=torch.channels_last)
    x = torch.randn(batch, inplanes, hw, hw, device="cuda", dtype=dtype)
    return tv, fused, x.contiguous(memory_format=torch.channels_last)


def _training_step(fused, tv, oracle, x) -> list[tuple]:
    """One training step of the fused block, its torchvision twin and the float64 oracle on
    the same input and output gradient: (what, fused, plain, oracle) for the output, the
    input gradient and every parameter gradient."""
    xs = [x.clone().requires_grad_() for _ in range(2)] + [x.double().requires_grad_()]
    outs = [fused(xs[0]), tv(xs[1]), oracle(xs[2])]
    g = torch.randn_like(outs[2])
    for o in outs:
        o.backward(g.to(o.dtype))
    plain_params, ref_params = dict(tv.named_parameters()), dict(oracle.named_parameters())
    pairs = [("out", outs[0], outs[1], outs[2]), ("x.grad", *(t.grad for t in xs))]
    return pairs + [(f"{name}.grad", p.grad, plain_params[name].grad, ref_params[name].grad)
                    for name, p in fused.named_parameters()]


@TRITON
@pytest.mark.parametrize("stage", B128_STAGES, ids=[f"{s[0]}x{s[1]}-s{s[2]}" for s in B128_STAGES])
def test_triton_batch128_stage_blocks(stage):
    """bf16 training step at batch 128 against float64: output, input and parameter
    gradients within 2x the error of eager PyTorch in bf16."""
    tv, fused, x = _triton_pair(stage, torch.bfloat16, 128)
    for what, got, plain, want in _training_step(fused, tv, copy.deepcopy(tv).double(), x):
        assert_close(got, want, torch.bfloat16, rel_err(plain, want), what=what)


@TRITON
@pytest.mark.parametrize("stage", [(256, 64, 1, False, 14), (256, 128, 2, True, 28)],
                         ids=["identity", "projection-s2"])
def test_triton_fp32_without_tf32_meets_the_fp32_tolerance(stage):
    """TF32 off: eval output, and a training step's output, input and parameter
    gradients, within the fp32 tolerance of float64 (2x eager fp32's own error)."""
    tv, fused, x = _triton_pair(stage, torch.float32, 8)
    oracle = copy.deepcopy(tv).double()
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        out = fused.eval()(x)
        assert_close(out, oracle.eval()(x.double()), torch.float32, what="eval out")
        for block in (fused, tv, oracle):
            block.train()
        pairs = _training_step(fused, tv, oracle, x)
    for what, got, plain, want in pairs:
        assert_close(got, want, torch.float32, rel_err(plain, want), what=what)


@TRITON
def test_triton_cuda_graph_capture_after_warmup():
    _, fused, x = _triton_pair((256, 64, 1, False, 14), torch.bfloat16, 16)
    fused.eval()
    with torch.no_grad():
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            want = fused(x)  # warm-up: compiles the kernels outside the capture
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            got = fused(x)
        graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(got, want)


@TRITON
def test_triton_non_default_stream_and_second_device():
    _, fused, x = _triton_pair((256, 64, 1, False, 14), torch.bfloat16, 8)
    fused.eval()
    with torch.no_grad():
        want = fused(x)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            got = fused(x)
        torch.cuda.current_stream().wait_stream(s)
        assert torch.equal(got, want)
        if torch.cuda.device_count() > 1:
            other = copy.deepcopy(fused).to("cuda:1")
            got1 = other(x.to("cuda:1"))
            assert got1.device == torch.device("cuda:1")
            assert torch.equal(got1.cpu(), want.cpu())


@TRITON
def test_triton_bottleneck_under_torch_compile_fullgraph():
    """Inductor over a Triton-backend bottleneck: forward, backward and running stats
    match eager execution of the same module."""
    tv, fused, x = _triton_pair((256, 64, 1, False, 14), torch.bfloat16, 8)
    twin = copy.deepcopy(fused)
    compiled = torch.compile(twin, fullgraph=True, backend="inductor")
    xs = [x.clone().requires_grad_() for _ in range(2)]
    out, want = compiled(xs[0]), fused(xs[1])
    g = torch.randn_like(want)
    out.backward(g)
    want.backward(g)
    assert_close(out, want, torch.bfloat16, what="out")
    assert_close(xs[0].grad, xs[1].grad, torch.bfloat16, what="x.grad")
    for (name, a), b in zip(twin.named_buffers(), fused.buffers()):
        if a.is_floating_point():
            assert_close(a, b, torch.float32, what=name)
        else:
            assert torch.equal(a, b), name
