"""The op layer: one signature per fused op, fake kernels, and backend choice.

Every backend serves the same six ops with the signatures (and semantics) of the
functions of the same names in :mod:`fused_resnet.reference`:

``conv_fwd``, ``bn_finalize``, ``block_end``, ``block_end_bwd``, ``conv_bwd_data``,
``conv_bwd_weight``.

* ``reference`` — the plain PyTorch functions themselves (any device).
* ``cpp`` / ``cuda`` — ``torch.ops.fused_resnet.*`` from the C++ extension ``_C``;
  the dispatcher picks the CPU or CUDA kernel by device, so the two names differ only
  in which device they serve. Schemas live in ``csrc/ops.cpp``.
* ``triton`` — ``torch.ops.fused_resnet.*_triton`` from :mod:`fused_resnet.triton`
  (CUDA tensors; CPU tensors under ``TRITON_INTERPRET=1``, for tests).

Backends are chosen per block in Python when a module is built, converted or moved,
never inside a forward.
"""

from __future__ import annotations

import functools
import importlib
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import reference
from ._fakes import (  # noqa: F401 (one set of fakes)
    OP_NAMES,
    _op_exists,
    fake_bn_backward,
    fake_conv_bwd,
    register_fakes,
)

BACKENDS = ("reference", "cpp", "triton", "cuda")
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Preference when several backends serve a device: fastest first, reference last. (On
# the CPU, Triton serves only in the interpreter, a test vehicle: never chosen by auto.)
_AUTO_ORDER = {"cuda": ("triton", "cuda", "reference"), "cpu": ("cpp", "reference")}


def _extension_unavailable_reason() -> str | None:
    """Import ``fused_resnet._C`` (registers the C++ ops); return why not, or None."""
    try:
        importlib.import_module(f"{__package__}._C")
    except ModuleNotFoundError:
        return "the C++ extension fused_resnet._C is not built"
    except ImportError as e:  # built against another torch, missing libraries, ...
        return f"the C++ extension fused_resnet._C failed to load ({e})"
    return None


_EXTENSION_UNAVAILABLE = _extension_unavailable_reason()
if _EXTENSION_UNAVAILABLE is not None:
    warnings.warn(f"fused_resnet: {_EXTENSION_UNAVAILABLE}; serving the reference backend only. "
                  "Build it with `pip install --no-build-isolation -e .`.", stacklevel=2)


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether ``fused_resnet::<op>`` has a kernel registered for ``dispatch_key``."""
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"fused_resnet::{op}",
                                                              dispatch_key)
    except RuntimeError:  # op not registered at all
        return False


# ----------------------------------------------------------------------------- fakes
# The cpp backend's CPU ops beyond the six, with their fakes: BN backward in one call
# (Backend.bn_backward) and a conv's data and weight gradients in one (Backend.conv_bwd).
CPP_EXTRA_OPS = {"bn_backward": fake_bn_backward, "conv_bwd": fake_conv_bwd}
if _EXTENSION_UNAVAILABLE is None:
    register_fakes()
    # The test-only CPU twins of the CUDA conv kernels (_conv_fwd_igemm, _conv_bwd_data_igemm,
    # _conv_bwd_weight_igemm: csrc/cpu/conv_igemm_cpu.cpp) share the ops' signatures.
    register_fakes("_igemm", prefix="_")
    for name, fake in CPP_EXTRA_OPS.items():
        if _op_exists(name):
            torch.library.register_fake(f"fused_resnet::{name}")(fake)


# --------------------------------------------------------------------------- backends
# Ops beyond the six that a backend may implement in one op (the others compose them:
# bn_backward in torch, conv_fwd then bn_finalize, block_end_bwd or conv_bwd_data then
# bn_backward, conv_bwd_weight and conv_bwd_data), and the backends that do: op -> the
# name of its torch.ops.fused_resnet op.
EXTRA_OPS = ("bn_backward", "conv_bn_fwd", "block_end_bwd_bn", "conv_bwd_data_bn", "conv_bwd")
EXTRA_KERNELS = {
    "triton": {op: op + "_triton" for op in EXTRA_OPS if op != "conv_bwd"},
    "cpp": {"bn_backward": "bn_backward", "conv_bwd": "conv_bwd"},
}


@dataclass(frozen=True)
class Backend:
    """The six fused ops of one backend (see the module docstring), ``bn_backward``
    (:func:`fused_resnet.reference.bn_backward`: plain torch unless the backend has a
    kernel for it), ``conv_bn_fwd``, ``block_end_bwd_bn``, ``conv_bwd_data_bn`` and
    ``conv_bwd`` (their :mod:`fused_resnet.reference` compositions, each in one op, where
    the backend has it: :data:`EXTRA_KERNELS`)."""

    name: str
    conv_fwd: Callable
    bn_finalize: Callable
    block_end: Callable
    block_end_bwd: Callable
    conv_bwd_data: Callable
    conv_bwd_weight: Callable
    bn_backward: Callable = reference.bn_backward
    conv_bn_fwd: Callable | None = None  # None: conv_fwd, then bn_finalize
    block_end_bwd_bn: Callable | None = None  # None: block_end_bwd, then bn_backward
    conv_bwd_data_bn: Callable | None = None  # None: conv_bwd_data, then bn_backward
    # None: conv_bwd_weight and conv_bwd_data (cpp has it: dy's BN map made once for both).
    conv_bwd: Callable | None = None

    def __repr__(self) -> str:
        return f"Backend({self.name!r})"


def _backend_from(name: str, ops: Callable[[str], Callable], **extra: Callable) -> Backend:
    return Backend(name, **{op: ops(op) for op in OP_NAMES}, **extra)


@functools.cache
def get_backend(name: str) -> Backend:
    """The ops of backend ``name``; raises if it is not installed (see :func:`backend_status`)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown fused_resnet backend {name!r}; choose one of "
                         f"{('auto',) + BACKENDS}")
    missing = _backend_unavailable_reason(name)
    if missing:
        raise RuntimeError(f"fused_resnet backend {name!r} is not available: {missing}")
    if name == "reference":
        return _backend_from(name, lambda op: getattr(reference, op))
    extra = {op: getattr(torch.ops.fused_resnet, kernel)
             for op, kernel in EXTRA_KERNELS.get(name, {}).items()}
    if name == "triton":
        return _backend_from(name, lambda op: getattr(torch.ops.fused_resnet, op + "_triton"),
                             **extra)
    if name == "cuda" and cuda_emulated():
        return _backend_from(name, lambda op: getattr(torch.ops.fused_resnet_cuda_emu, op))
    return _backend_from(name, lambda op: getattr(torch.ops.fused_resnet, op), **extra)


def cuda_emulated() -> bool:
    """``FUSED_RESNET_CUDA_EMULATOR=1``: backend ``cuda`` runs its real kernels on CPU tensors
    in the CUDA execution emulator (csrc/cuda/emu), as ``torch.ops.fused_resnet_cuda_emu``."""
    return os.environ.get("FUSED_RESNET_CUDA_EMULATOR") == "1"


def _backend_unavailable_reason(name: str) -> str | None:
    """Why backend ``name`` cannot serve any device at all, or None."""
    if name == "reference":
        return None
    if name == "triton":
        return _triton_unavailable_reason()
    if name == "cuda" and cuda_emulated():
        if all(hasattr(torch.ops.fused_resnet_cuda_emu, op) for op in OP_NAMES):
            return None
        return ("FUSED_RESNET_CUDA_EMULATOR=1, but the emulated CUDA ops "
                "(torch.ops.fused_resnet_cuda_emu) are not loaded")
    if _EXTENSION_UNAVAILABLE is not None:
        return _EXTENSION_UNAVAILABLE
    key = {"cpp": "CPU", "cuda": "CUDA"}[name]
    wanted = OP_NAMES + (tuple(CPP_EXTRA_OPS) if name == "cpp" else ())
    missing = [op for op in wanted if not has_kernel(op, key)]
    if missing:
        return f"fused_resnet._C was built without {key} kernels for {', '.join(missing)}"
    return None


def _triton_unavailable_reason() -> str | None:
    """Why the Triton ops cannot run here (importing them registers them), or None."""
    from . import triton as triton_backend

    return triton_backend.unavailable_reason()


def _triton_device_type() -> str:
    """Triton kernels run on CUDA tensors, or on CPU tensors in the interpreter."""
    from . import triton as triton_backend

    return "cpu" if triton_backend.interpreting() else "cuda"


_DEVICE_TYPE = {"cpp": "cpu", "cuda": "cuda", "triton": "cuda"}


# Backends whose conv kernels serve groups == 1 only (ResNeXt blocks need the others).
_UNGROUPED = ("cuda", "triton")


def unavailable_reason(name: str, device: torch.device | str, dtype: torch.dtype,
                       groups: int = 1) -> str | None:
    """Why backend ``name`` cannot run blocks on ``device`` in ``dtype`` whose convs have
    up to ``groups`` groups; None if it can."""
    device = torch.device(device)
    missing = _backend_unavailable_reason(name) if name in BACKENDS else f"unknown backend {name!r}"
    if missing:
        return missing
    if dtype not in SUPPORTED_DTYPES:
        return f"dtype {dtype} is not supported (use one of {SUPPORTED_DTYPES})"
    want = _triton_device_type() if name == "triton" else _DEVICE_TYPE.get(name)
    if name == "cuda" and cuda_emulated():
        want = "cpu"
    if want is not None and device.type != want:
        return f"backend {name!r} runs on {want} tensors, not on {device.type}"
    if name in ("cuda", "triton") and dtype == torch.float64:
        return f"backend {name!r} has no float64 kernels"
    if name == "triton" and device.type == "cpu" and dtype == torch.bfloat16:
        return "the Triton interpreter cannot run bfloat16"
    if name in _UNGROUPED and groups != 1:
        return f"backend {name!r} has conv kernels for groups == 1 only, not groups={groups}"
    return None


def backend_status(device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> dict[str, str | None]:
    """For each backend: None if it serves ``device``/``dtype``, else the reason it does not."""
    return {name: unavailable_reason(name, device, dtype) for name in BACKENDS}


def available_backends(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                       groups: int = 1) -> list[str]:
    """The backends that can run blocks on ``device`` in ``dtype`` (convs of up to ``groups``
    groups); ``auto``'s choices first."""
    order = _AUTO_ORDER.get(torch.device(device).type, ("reference",))
    order += tuple(n for n in BACKENDS if n not in order)
    return [n for n in order if unavailable_reason(n, device, dtype, groups) is None]


def default_backend() -> str:
    """The backend asked for when a block names none: ``$FUSED_RESNET_BACKEND`` or ``auto``."""
    name = os.environ.get("FUSED_RESNET_BACKEND", "auto") or "auto"
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"FUSED_RESNET_BACKEND={name!r} is not one of {('auto',) + BACKENDS}")
    return name


def resolve_backend(name: str, device: torch.device | str, dtype: torch.dtype,
                    groups: int = 1) -> Backend:
    """The backend a block on ``device``/``dtype`` (convs of up to ``groups`` groups) runs:
    ``auto`` takes the fastest that serves."""
    if name == "auto":
        order = _AUTO_ORDER.get(torch.device(device).type, ("reference",))
        choices = [n for n in available_backends(device, dtype, groups) if n in order]
        if not choices:
            raise TypeError(unavailable_reason("reference", device, dtype))
        return get_backend(choices[0])
    reason = unavailable_reason(name, device, dtype, groups)
    if reason:
        raise RuntimeError(f"fused_resnet backend {name!r} cannot serve {torch.device(device)} "
                           f"{dtype}: {reason}")
    return get_backend(name)
