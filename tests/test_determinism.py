"""With deterministic algorithms on, fused blocks give bitwise-identical results run to run."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_blocks


def _run(block, x, g):
    block = copy.deepcopy(block).train()
    x = x.clone().requires_grad_()
    out = block(x)
    out.backward(g)
    return [out, x.grad] + [p.grad for p in block.parameters()] + list(block.buffers())


def _check_bitwise(block, x):
    torch.use_deterministic_algorithms(True)
    try:
        g = torch.randn_like(block.eval()(x))
        first, second = _run(block, x, g), _run(block, x, g)
    finally:
        torch.use_deterministic_algorithms(False)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["bottleneck", "basic"])
def test_cpu_runs_are_bitwise_identical(cpu_backend, kind):
    _, fused = make_blocks(kind, 12, 6, 2, True, backend=cpu_backend)
    _check_bitwise(fused, torch.randn(3, 12, 13, 13))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_runs_are_bitwise_identical(dtype):
    _, fused = make_blocks("bottleneck", 256, 128, 2, True, backend="auto")
    fused = fused.cuda().to(dtype)
    _check_bitwise(fused, torch.randn(16, 256, 28, 28, device="cuda", dtype=dtype))
