"""torch.compile(fullgraph=True) over fused blocks equals eager; no graph breaks (so no
host synchronisation) in forward or backward, the momentum=None path included."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from conftest import TRITON_BLOCK_BACKENDS, assert_close, make_blocks, randomize_bn, rel_err
from torch import nn

import fused_resnet


def _compare(fused, x, compile_backend: str, train: bool):
    eager = copy.deepcopy(fused).train(train)
    inner = copy.deepcopy(fused).train(train)
    compiled = torch.compile(inner, fullgraph=True, backend=compile_backend)
    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_e, out_c = eager(xe), compiled(xc)
    assert_close(out_c, out_e, torch.float64, what="output")
    g = torch.randn_like(out_e)
    out_e.backward(g)
    out_c.backward(g)
    assert_close(xc.grad, xe.grad, torch.float64, what="x.grad")
    compiled_params = dict(inner.named_parameters())
    for name, p in eager.named_parameters():
        assert_close(compiled_params[name].grad, p.grad, torch.float64, what=name)
    compiled_bufs = dict(inner.named_buffers())
    for name, b in eager.named_buffers():
        assert_close(compiled_bufs[name], b, torch.float64, what=name)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_inductor_bottleneck(cpu_backend, train):
    norm = functools.partial(nn.BatchNorm2d, momentum=None)
    _, fused = make_blocks("bottleneck", 12, 5, 2, True, backend=cpu_backend, norm_layer=norm)
    torch._dynamo.reset()
    _compare(fused.double(), torch.randn(2, 12, 9, 9, dtype=torch.float64), "inductor", train)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_aot_eager_basic_block(cpu_backend, train):
    _, fused = make_blocks("basic", 11, 11, 1, False, backend=cpu_backend)
    torch._dynamo.reset()
    _compare(fused.double(), torch.randn(2, 11, 7, 7, dtype=torch.float64), "aot_eager", train)


@pytest.mark.slow
def test_converted_resnet50_aot_eager():
    model = fused_resnet.resnet50(num_classes=5)  # the default backend: one network is enough
    randomize_bn(model)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 48, 48)
    for train in (False, True):
        model.train(train)
        # On the CPU auto runs eager float32 training on the cpp kernels and a compiled graph
        # on ATen's ops: both against float64, the compiled within 2x of eager's error.
        ref = copy.deepcopy(model).double()(x.double())
        eager_err = rel_err(copy.deepcopy(model)(x), ref)
        assert_close(compiled(x), ref, torch.float32, plain_err=eager_err, what=f"train={train}")


@pytest.mark.skipif(not TRITON_BLOCK_BACKENDS, reason="Triton kernels cannot run here")
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_aot_eager_triton_block_in_the_interpreter(train):
    _, fused = make_blocks("basic", 6, 7, 2, True, backend="triton")
    torch._dynamo.reset()
    x = torch.randn(2, 6, 7, 7)  # Triton has no float64 kernels: compare in fp32
    eager = copy.deepcopy(fused).train(train)
    compiled = torch.compile(copy.deepcopy(fused).train(train), fullgraph=True,
                             backend="aot_eager")
    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_e, out_c = eager(xe), compiled(xc)
    assert_close(out_c, out_e, torch.float32)
    out_e.sum().backward()
    out_c.sum().backward()
    assert_close(xc.grad, xe.grad, torch.float32, what="x.grad")
