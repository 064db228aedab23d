"""torch.autograd.gradcheck of whole fused blocks (float64, small shapes): the fused
backward ops against finite differences of the fused forward, w.r.t. input and parameters."""

from __future__ import annotations

import pytest
import torch
from conftest import make_blocks
from torch.func import functional_call


@pytest.mark.parametrize("shape", [("bottleneck", 6, 2, 2, True), ("basic", 3, 3, 1, False)],
                         ids=["bottleneck-proj", "basic"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_block_gradcheck(cpu_backend, shape, train):
    kind, inplanes, planes, stride, proj = shape
    _, block = make_blocks(kind, inplanes, planes, stride, proj, backend=cpu_backend)
    block = block.double().train(train)
    names = [n for n, _ in block.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in block.parameters()]
    x = torch.randn(2, inplanes, 5, 5, dtype=torch.float64, requires_grad=True)

    def run(x, *ps):
        return functional_call(block, dict(zip(names, ps)), (x,))

    # fast_mode: checks random projections of the Jacobian (one forward pair each).
    assert torch.autograd.gradcheck(run, (x, *params), eps=1e-6, atol=1e-6, rtol=1e-5,
                                    fast_mode=True)
