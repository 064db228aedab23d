"""Triton backend: the six fused ops as ``torch.ops.fused_resnet.<op>_triton``.

Importing this package registers the ops (when triton is importable). They serve CUDA
tensors, or CPU tensors when ``TRITON_INTERPRET=1`` was set before the import (Triton
fixes interpretation when a kernel is decorated).
"""

from __future__ import annotations

_ERROR: str | None = None
try:
    import triton  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    _ERROR = f"triton is not installed ({e})"

if _ERROR is None:
    try:
        from ._common import INTERPRET
        from .register import register_all

        register_all()
    except Exception as e:  # pragma: no cover - a broken triton/torch combination
        _ERROR = f"the Triton ops failed to register ({type(e).__name__}: {e})"
        INTERPRET = False
else:
    INTERPRET = False


def unavailable_reason() -> str | None:
    """Why the ``*_triton`` ops cannot run here, or None when they can."""
    if _ERROR is not None:
        return _ERROR
    if INTERPRET:
        from ._common import interpreter_unavailable_reason

        return interpreter_unavailable_reason()
    import torch

    if not torch.cuda.is_available():
        return ("no CUDA device (set TRITON_INTERPRET=1 before importing fused_resnet to "
                "run the Triton kernels on CPU tensors in the interpreter)")
    return None


def interpreting() -> bool:
    """Whether the kernels are decorated for the Triton CPU interpreter (CPU tensors)."""
    return _ERROR is None and INTERPRET


__all__ = ["interpreting", "unavailable_reason"]
