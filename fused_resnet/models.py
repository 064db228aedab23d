"""``resnet18`` ... ``resnet152``: torchvision's ResNet built from fused blocks.

Each builder builds torchvision's model (same keyword arguments, same initialisation,
same state_dict keys) and converts it, so ``zero_init_residual`` and friends behave
exactly as in torchvision.
"""

from __future__ import annotations

from torch import nn

from .convert import convert


def _build(arch: str, backend: str, kwargs: dict) -> nn.Module:
    try:
        import torchvision.models as tvm
    except ImportError as e:
        raise ImportError(f"fused_resnet.{arch} needs torchvision") from e
    return convert(getattr(tvm, arch)(**kwargs), backend=backend)


def resnet18(*, backend: str = "auto", **kwargs) -> nn.Module:
    """ResNet-18 of fused basic blocks (torchvision's keyword arguments)."""
    return _build("resnet18", backend, kwargs)


def resnet34(*, backend: str = "auto", **kwargs) -> nn.Module:
    """ResNet-34 of fused basic blocks (torchvision's keyword arguments)."""
    return _build("resnet34", backend, kwargs)


def resnet50(*, backend: str = "auto", **kwargs) -> nn.Module:
    """ResNet-50 of fused bottlenecks (torchvision's keyword arguments)."""
    return _build("resnet50", backend, kwargs)


def resnet101(*, backend: str = "auto", **kwargs) -> nn.Module:
    """ResNet-101 of fused bottlenecks (torchvision's keyword arguments)."""
    return _build("resnet101", backend, kwargs)


def resnet152(*, backend: str = "auto", **kwargs) -> nn.Module:
    """ResNet-152 of fused bottlenecks (torchvision's keyword arguments)."""
    return _build("resnet152", backend, kwargs)
