"""Shared test set-up: seeds, devices, block factories; the tolerance rules live in
fused_resnet.testing (docs/design.md §5)."""

from __future__ import annotations

import os
import shutil
import subprocess
import zlib
from pathlib import Path

import pytest
import torch

# Without a GPU, the Triton kernels run on CPU tensors in Triton's interpreter; the flag
# must be set before anything imports triton (torchvision does, via fused_resnet).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
from torch import nn

import fused_resnet
from fused_resnet import ops
from fused_resnet.testing import (  # noqa: F401 - re-exported to the tests
    TF32_TOLERANCE,
    TOLERANCE,
    randomize_bn,
    rel_err,
    tolerance,
)

HAS_CUDA = torch.cuda.is_available()


# Backends that run blocks on CPU tensors here: the Triton interpreter is slow, so it is
# exercised by its own op tests and a few small block tests (TRITON_BLOCK_BACKENDS).
def _serving_cpu(names) -> list[str]:
    return [b for b in names if ops.unavailable_reason(b, "cpu", torch.float32) is None]


CPU_BACKENDS = _serving_cpu(("reference", "cpp"))
TRITON_BLOCK_BACKENDS = _serving_cpu(("triton",))


def slow(value):
    """A parametrisation that only `make test` runs (marked `slow`)."""
    return pytest.param(value, marks=pytest.mark.slow)


# CPU_BACKENDS for long tests whose subject is not the backend (convert, DDP, randomized
# blocks): `make test-fast` runs the cpp backend (the reference one when cpp is not built),
# `make test` every one.
CPU_BACKENDS_ONE_FAST = [b if b == CPU_BACKENDS[-1] else slow(b) for b in CPU_BACKENDS]


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed(request):
    # A fresh seed per test (derived from its name) so cases differ but reruns agree.
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
    yield


def assert_close(out, ref, dtype, plain_err=None, what="output"):
    err = rel_err(out, ref)
    tol = tolerance(dtype, plain_err)
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e} ({dtype})"


def make_blocks(kind: str, inplanes: int, planes: int, stride: int = 1, projection: bool = False,
                backend: str = "reference", norm_layer=None, **kwargs):
    """A torchvision block and its fused twin with identical (randomized) state."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    tv_cls, fused_cls = {
        "bottleneck": (Bottleneck, fused_resnet.FusedBottleneck),
        "basic": (BasicBlock, fused_resnet.FusedBasicBlock),
    }[kind]
    norm = norm_layer or nn.BatchNorm2d

    def downsample():
        if not projection:
            return None
        out = planes * tv_cls.expansion
        return nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), norm(out))

    tv = tv_cls(inplanes, planes, stride, downsample(), norm_layer=norm_layer, **kwargs)
    randomize_bn(tv)
    fused = fused_cls(inplanes, planes, stride, downsample(), norm_layer=norm_layer,
                      backend=backend, **kwargs)
    fused.load_state_dict(tv.state_dict(), strict=True)
    return tv, fused


@pytest.fixture(params=CPU_BACKENDS)
def cpu_backend(request):
    return request.param


CSRC = Path(__file__).resolve().parents[1] / "csrc"


def run_host_program(source: str, tmp_path: Path, include_dir: Path = CSRC,
                     name: str = "check") -> subprocess.CompletedProcess:
    """Build C++20 ``source`` with the host compiler (g++: FR_HOST_DEVICE is plain inline)
    against ``include_dir`` and run it; skips without a host compiler."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no host C++ compiler")
    src, exe = tmp_path / f"{name}.cpp", tmp_path / name
    src.write_text(source)
    res = subprocess.run([cxx, "-std=c++20", "-O1", "-Wall", f"-I{include_dir}", str(src), "-o",
                          str(exe)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-4000:]
    return subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
