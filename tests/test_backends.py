"""Backend choice: names, availability, auto, the environment override, re-choice on moves."""

from __future__ import annotations

import pytest
import torch
import torchvision

import fused_resnet
from fused_resnet import ops


def test_reference_always_serves_cpu():
    assert "reference" in fused_resnet.available_backends("cpu")
    status = fused_resnet.backend_status("cpu")
    assert set(status) == set(fused_resnet.BACKENDS)
    assert status["reference"] is None
    for name, reason in status.items():
        assert reason is None or isinstance(reason, str) and reason


def test_auto_takes_the_first_available():
    block = fused_resnet.FusedBasicBlock(8, 8)
    assert block.backend_in_use == fused_resnet.available_backends("cpu")[0]


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown fused_resnet backend 'fast'"):
        fused_resnet.FusedBottleneck(16, 4, backend="fast")
    with pytest.raises(ValueError, match="unknown"):
        fused_resnet.convert(torchvision.models.resnet18(), backend="fast")


def test_unbuilt_backend_fails_at_construction_not_in_forward():
    reason = fused_resnet.backend_status("cuda")["cuda"]
    if reason is None or "built without" not in reason:
        pytest.skip("the cuda backend is fully built here")
    with pytest.raises(RuntimeError, match="backend 'cuda' is not available"):
        fused_resnet.FusedBottleneck(16, 4, backend="cuda")


def test_backend_that_cannot_serve_the_dtype_fails_on_move():
    status = fused_resnet.backend_status("cpu", torch.float64)
    if status["triton"] is not None and "float64" not in status["triton"]:
        pytest.skip(f"triton does not run here: {status['triton']}")
    block = fused_resnet.FusedBasicBlock(4, 4, backend="triton")
    with pytest.raises(RuntimeError, match="no float64 kernels"):
        block.double()


def test_auto_never_picks_the_interpreter():
    assert fused_resnet.FusedBasicBlock(4, 4).backend_in_use != "triton"


def test_environment_override(monkeypatch):
    monkeypatch.setenv("FUSED_RESNET_BACKEND", "reference")
    assert fused_resnet.FusedBasicBlock(4, 4).backend_in_use == "reference"
    monkeypatch.setenv("FUSED_RESNET_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="FUSED_RESNET_BACKEND"):
        fused_resnet.FusedBasicBlock(4, 4)


@pytest.mark.skipif(ops.unavailable_reason("cpp", "cpu", torch.float32) is not None,
                    reason="the C++ extension is not built")
def test_explicit_cpp_backend_on_cpu():
    block = fused_resnet.FusedBottleneck(16, 4, backend="cpp")
    assert block.backend_in_use == "cpp"
    block.set_backend("reference")
    assert block.backend_in_use == "reference"


def test_move_rechooses_backend():
    block = fused_resnet.FusedBasicBlock(4, 4, backend="reference")
    block.double()
    assert block.backend_in_use == "reference"
    assert block.conv1.weight.dtype == torch.float64


@pytest.mark.gpu
def test_move_to_gpu_rechooses_backend():
    block = fused_resnet.FusedBasicBlock(4, 4).cuda()
    assert block.backend_in_use in fused_resnet.available_backends("cuda")


@pytest.mark.skipif(ops.unavailable_reason("triton", "cpu", torch.float32) is not None,
                    reason="the Triton interpreter does not serve CPU tensors here")
def test_grouped_convs_never_go_to_ungrouped_kernels():
    """ResNeXt blocks (grouped 3x3): triton and cuda have no grouped kernels, so auto
    passes them by and asking for one by name is a clear error, not a failing forward."""
    assert "groups == 1 only" in ops.unavailable_reason("triton", "cpu", torch.float32, 4)
    assert "triton" in ops.available_backends("cpu", torch.float32)
    assert "triton" not in ops.available_backends("cpu", torch.float32, groups=4)
    with pytest.raises(RuntimeError, match="groups == 1 only"):
        fused_resnet.FusedBottleneck(32, 8, groups=4, base_width=8, backend="triton")(
            torch.randn(2, 32, 5, 5))
    resnext = fused_resnet.FusedBottleneck(32, 8, groups=4, base_width=8, backend="auto")
    assert resnext.backend_in_use in ops.available_backends("cpu", torch.float32, groups=4)
