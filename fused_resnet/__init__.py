"""fused_resnet: ResNet blocks whose conv + BatchNorm + ReLU + residual-add run fused.

Public API: :class:`FusedBottleneck`, :class:`FusedBasicBlock` (drop-in for torchvision's
blocks), :func:`convert` / :func:`unconvert`, the ``resnet*`` builders, and backend
queries :func:`available_backends` / :func:`backend_status`.
"""

from . import reference
from .convert import convert, unconvert
from .models import resnet18, resnet34, resnet50, resnet101, resnet152
from .modules import FusedBasicBlock, FusedBottleneck
from .ops import BACKENDS, available_backends, backend_status

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "FusedBasicBlock",
    "FusedBottleneck",
    "available_backends",
    "backend_status",
    "convert",
    "reference",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "unconvert",
]
