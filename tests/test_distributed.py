"""DDP with synchronised BN: 2 gloo processes on CPU equal one process on the whole batch."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import CPU_BACKENDS_ONE_FAST, assert_close, randomize_bn
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

import fused_resnet

WORLD = 2
PER_RANK = 2


def _model() -> nn.Sequential:
    """Blocks of both kinds, with projections (all BNs inside fused blocks)."""
    torch.manual_seed(0)
    proj = nn.Sequential(nn.Conv2d(8, 12, 1, stride=2, bias=False), nn.BatchNorm2d(12))
    model = nn.Sequential(Bottleneck(8, 3, stride=2, downsample=proj), BasicBlock(12, 12))
    randomize_bn(model)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # the cumulative average path too
    return model.double()


def _batch() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(WORLD * PER_RANK, 8, 9, 9, dtype=torch.float64) + 0.5


def _worker(rank: int, init_file: str, backend: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    try:
        model = fused_resnet.convert(_model(), backend=backend, sync_bn=True)
        assert model[0].sync_bn == (None,)
        ddp = nn.parallel.DistributedDataParallel(model)
        x = _batch()[rank * PER_RANK:(rank + 1) * PER_RANK].requires_grad_()
        out = ddp(x)
        out.sum().backward()
        torch.save({"out": out.detach(), "x.grad": x.grad,
                    "grads": {n: p.grad for n, p in model.named_parameters()},
                    "buffers": dict(model.named_buffers())}, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("backend", CPU_BACKENDS_ONE_FAST)
def test_sync_bn_ddp_equals_one_process_on_the_whole_batch(backend):
    oracle = _model().train()  # torchvision blocks, plain BN, whole batch
    x = _batch().requires_grad_()
    ref = oracle(x)
    ref.sum().backward()
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(os.path.join(tmp, "init"), backend, tmp), nprocs=WORLD)
        ranks = [torch.load(os.path.join(tmp, f"{r}.pt")) for r in range(WORLD)]
    ref_grads = dict(oracle.named_parameters())
    ref_bufs = dict(oracle.named_buffers())
    for r, res in enumerate(ranks):
        part = slice(r * PER_RANK, (r + 1) * PER_RANK)
        assert_close(res["out"], ref[part], torch.float64, what=f"rank {r} output")
        assert_close(res["x.grad"], x.grad[part], torch.float64, what=f"rank {r} x.grad")
        for name, g in res["grads"].items():
            # DDP averages the ranks' gradients of their own sums: 1/WORLD of the whole.
            assert_close(g * WORLD, ref_grads[name].grad, torch.float64, what=name)
        for name, b in res["buffers"].items():
            assert_close(b, ref_bufs[name], torch.float64, what=f"rank {r} {name}")


def test_sync_bn_without_a_process_group_is_plain_bn():
    model = fused_resnet.convert(_model(), sync_bn=True)
    oracle = _model().train()
    x = _batch()
    assert_close(model.train()(x), oracle(x), torch.float64)
