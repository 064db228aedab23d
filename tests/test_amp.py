"""Under torch.autocast the fused blocks compute what torchvision's compute under the same
autocast: convs in the autocast dtype, BN parameters and statistics in fp32."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import assert_close, make_blocks, rel_err

SEEDS = 4


def _autocast_run(kind, inplanes, planes, stride, proj, backend, train):
    """Errors vs float64 of torchvision and of the fused block, both under CPU bf16 autocast."""
    tv, fused = make_blocks(kind, inplanes, planes, stride, proj, backend=backend)
    oracle = copy.deepcopy(tv).double().train(train)
    tv.train(train), fused.train(train)
    x = torch.randn(3, inplanes, 9, 9)
    xs = [x.clone().requires_grad_() for _ in range(3)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_tv, out = tv(xs[0]), fused(xs[1])
    ref = oracle(xs[2].double())
    assert out.dtype == out_tv.dtype == torch.bfloat16
    g = torch.randn_like(ref)
    for o in (out_tv, out, ref):
        o.backward(g.to(o.dtype))
    errors = {"out": (rel_err(out_tv, ref), rel_err(out, ref)),
              "x.grad": (rel_err(xs[0].grad, xs[2].grad), rel_err(xs[1].grad, xs[2].grad))}
    tv_params, ref_params = dict(tv.named_parameters()), dict(oracle.named_parameters())
    for name, p in fused.named_parameters():
        assert p.dtype == p.grad.dtype == torch.float32, "parameters and grads stay fp32"
        errors[name] = (rel_err(tv_params[name].grad, ref_params[name].grad),
                        rel_err(p.grad, ref_params[name].grad))
    for (name, b), (_, c) in zip(fused.named_buffers(), tv.named_buffers()):
        assert b.dtype == c.dtype
        assert_close(b, c, torch.bfloat16, what=name)
    return errors


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", [("bottleneck", 12, 5, 2, True), ("basic", 11, 11, 1, False)],
                         ids=["bottleneck-proj", "basic"])
def test_cpu_bf16_autocast_matches_torchvision(cpu_backend, train, shape):
    runs = [_autocast_run(*shape, cpu_backend, train) for _ in range(SEEDS)]
    for errors in runs:  # outputs: docs/design.md's bf16 rule, run by run
        plain, fused = errors["out"]
        assert fused <= max(2 * plain, 8e-3), f"output {fused:.3e} vs torchvision {plain:.3e}"
    # Gradients: a bf16 pre-activation near 0 may flip a ReLU mask in either model, which
    # makes single-run gradient errors noisy (seen: 0.5%..5% for both); compare the sums.
    for what in runs[0]:
        plain = sum(r[what][0] for r in runs)
        fused = sum(r[what][1] for r in runs)
        assert fused <= max(2 * plain, SEEDS * 8e-3), f"{what}: {fused:.3e} vs {plain:.3e}"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_autocast_matches_torchvision(dtype):
    tv, fused = make_blocks("bottleneck", 64, 16, 2, True, backend="auto")
    tv, fused = tv.cuda(), fused.cuda()
    oracle = copy.deepcopy(tv).double()
    x = torch.randn(8, 64, 28, 28, device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        out_tv, out = tv(x), fused(x)
    ref = oracle(x.double())
    assert out.dtype == dtype
    assert_close(out, ref, dtype, plain_err=rel_err(out_tv, ref))
