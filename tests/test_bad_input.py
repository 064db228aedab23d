"""Bad input gets a clear Python error that names the problem."""

from __future__ import annotations

import pytest
import torch

import fused_resnet


@pytest.fixture
def block(cpu_backend):
    return fused_resnet.FusedBottleneck(16, 4, backend=cpu_backend)


def test_wrong_rank(block):
    with pytest.raises(ValueError, match=r"4-D input .* got shape \(16, 7, 7\)"):
        block(torch.randn(16, 7, 7))


def test_channel_mismatch(block):
    with pytest.raises(ValueError, match="expects 16 input channels, got 8"):
        block(torch.randn(2, 8, 7, 7))


def test_dtype_mismatch(block):
    with pytest.raises(TypeError, match="input dtype torch.float64 differs"):
        block(torch.randn(2, 16, 7, 7, dtype=torch.float64))


def test_unsupported_dtype(block):
    with pytest.raises(TypeError, match="unsupported input dtype torch.int64"):
        block(torch.ones(2, 16, 7, 7, dtype=torch.long))


def test_not_a_tensor(block):
    with pytest.raises(TypeError, match="expects a Tensor"):
        block([1, 2, 3])


def test_device_mismatch(block):
    with pytest.raises(ValueError, match="input is on meta but the parameters are on cpu"):
        block(torch.randn(2, 16, 7, 7, device="meta"))


@pytest.mark.parametrize("shape", [(1, 16, 1, 1), (1, 16, 2, 2)])
def test_one_value_per_channel_in_training(shape, cpu_backend):
    # (1, 16, 2, 2) with stride 2: only bn2/bn3 see a single value per channel.
    block = fused_resnet.FusedBottleneck(16, 4, stride=2, backend=cpu_backend,
                                         downsample=torch.nn.Sequential(
                                             torch.nn.Conv2d(16, 16, 1, 2, bias=False),
                                             torch.nn.BatchNorm2d(16)))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        block(torch.randn(*shape))
    block.eval()
    assert block(torch.randn(*shape)).shape == (1, 16, 1, 1)


def test_unfusable_submodule_swapped_in_after_construction(block):
    block.bn2 = torch.nn.GroupNorm(2, 4)
    with pytest.raises(ValueError, match="cannot run fused: bn2 is a GroupNorm"):
        block(torch.randn(2, 16, 7, 7))


def test_basic_block_argument_checks():
    with pytest.raises(ValueError, match="only supports groups=1"):
        fused_resnet.FusedBasicBlock(8, 8, groups=2)
    with pytest.raises(NotImplementedError, match="Dilation > 1"):
        fused_resnet.FusedBasicBlock(8, 8, dilation=2)
