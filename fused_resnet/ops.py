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

OP_NAMES = ("conv_fwd", "bn_finalize", "block_end", "block_end_bwd", "conv_bwd_data",
            "conv_bwd_weight")
BACKENDS = ("reference", "cpp", "triton", "cuda")
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Preference when several backends serve a device: fastest first, reference last. (On
# the CPU, Triton serves only in the interpreter, a test vehicle: never chosen by auto.)
_AUTO_ORDER = {"cuda": ("triton", "cuda", "reference"), "cpu": ("cpp", "reference")}


def _load_extension() -> str | None:
    """Import ``fused_resnet._C`` (registers the C++ ops); return why not, or None."""
    try:
        importlib.import_module(f"{__package__}._C")
    except ModuleNotFoundError:
        return "the C++ extension fused_resnet._C is not built"
    except ImportError as e:  # built against another torch, missing libraries, ...
        return f"the C++ extension fused_resnet._C failed to load ({e})"
    return None


_EXTENSION_ERROR = _load_extension()
if _EXTENSION_ERROR is not None:
    warnings.warn(f"fused_resnet: {_EXTENSION_ERROR}; serving the reference backend only. "
                  "Build it with `pip install --no-build-isolation -e .`.", stacklevel=2)


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether ``fused_resnet::<op>`` has a kernel registered for ``dispatch_key``."""
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"fused_resnet::{op}",
                                                              dispatch_key)
    except RuntimeError:  # op not registered at all
        return False


# ----------------------------------------------------------------------------- fakes
def _conv_out_size(size: int, k: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def _stats_out(x: torch.Tensor, channels: int, stats: bool) -> tuple[torch.Tensor, torch.Tensor]:
    n = channels if stats else 0
    sd = reference.stat_dtype(x.dtype)
    return x.new_empty(n, dtype=sd), x.new_empty(n, dtype=sd)


def _fake_conv_fwd(x, weight, stride, padding, dilation, groups, in_scale, in_shift, in_relu,
                   out_scale, out_shift, residual, res_scale, res_shift, out_relu, stats):
    n, _, h, w = x.shape
    k_out, _, kh, kw = weight.shape
    size = (n, k_out, _conv_out_size(h, kh, stride, padding, dilation),
            _conv_out_size(w, kw, stride, padding, dilation))
    y = x.new_empty(size).contiguous(memory_format=reference.memory_format(x))
    return (y, *_stats_out(x, k_out, stats))


def _fake_bn_finalize(mean, m2, count, weight, bias, running_mean, running_var,
                      num_batches_tracked, momentum, eps, update_running_stats):
    return torch.empty_like(mean), torch.empty_like(mean), torch.empty_like(mean)


def _fake_block_end(y, scale, shift, residual, res_scale, res_shift, branch_scale=None):
    return torch.empty_like(y, memory_format=reference.memory_format(y))


def _fake_block_end_bwd(d_out, out, y, mean, invstd, y_d, mean_d, invstd_d,
                        branch_scale=None):
    dz = torch.empty_like(d_out, memory_format=reference.memory_format(d_out))
    c = mean.shape[0]
    return dz, mean.new_empty(c), mean.new_empty(c), mean.new_empty(c if y_d is not None else 0)


def _fake_conv_bwd_data(dz, y, a, b, c, weight, input_size, stride, padding, dilation, groups,
                        residual, prev_y, prev_scale, prev_shift, prev_mean, prev_invstd):
    dx = dz.new_empty(list(input_size)).contiguous(memory_format=reference.memory_format(dz))
    return (dx, *_stats_out(dz, input_size[1], prev_y is not None))


def _fake_conv_bwd_weight(x, in_scale, in_shift, in_relu, dz, y, a, b, c, weight, stride, padding,
                          dilation, groups):
    return torch.empty_like(weight)


_FAKES = {name: globals()[f"_fake_{name}"] for name in OP_NAMES}


def register_fakes(suffix: str = "") -> None:
    """Register the fake kernels for ``fused_resnet::<op><suffix>`` (once per op family)."""
    for name in OP_NAMES:
        if _op_exists(name + suffix):
            torch.library.register_fake(f"fused_resnet::{name}{suffix}")(_FAKES[name])


def _op_exists(qualname: str) -> bool:
    return hasattr(torch.ops.fused_resnet, qualname)


if _EXTENSION_ERROR is None:
    register_fakes()
    # The CPU twins of the CUDA conv kernels (conv_fwd_igemm, conv_bwd_data_igemm,
    # conv_bwd_weight_igemm: csrc/cpu/conv_igemm_cpu.cpp) share the ops' signatures.
    register_fakes("_igemm")


# --------------------------------------------------------------------------- backends
@dataclass(frozen=True)
class Backend:
    """The six fused ops of one backend (see the module docstring)."""

    name: str
    conv_fwd: Callable
    bn_finalize: Callable
    block_end: Callable
    block_end_bwd: Callable
    conv_bwd_data: Callable
    conv_bwd_weight: Callable

    def __repr__(self) -> str:
        return f"Backend({self.name!r})"


def _backend_from(name: str, ops: Callable[[str], Callable]) -> Backend:
    return Backend(name, **{op: ops(op) for op in OP_NAMES})


@functools.cache
def get_backend(name: str) -> Backend:
    """The ops of backend ``name``; raises if it is not installed (see :func:`backend_status`)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown fused_resnet backend {name!r}; choose one of "
                         f"{('auto',) + BACKENDS}")
    missing = _not_built(name)
    if missing:
        raise RuntimeError(f"fused_resnet backend {name!r} is not available: {missing}")
    if name == "reference":
        return _backend_from(name, lambda op: getattr(reference, op))
    if name == "triton":
        return _backend_from(name, lambda op: getattr(torch.ops.fused_resnet, op + "_triton"))
    return _backend_from(name, lambda op: getattr(torch.ops.fused_resnet, op))


def _not_built(name: str) -> str | None:
    """Why backend ``name`` cannot serve any device at all, or None."""
    if name == "reference":
        return None
    if name == "triton":
        return _triton_problem()
    if _EXTENSION_ERROR is not None:
        return _EXTENSION_ERROR
    key = {"cpp": "CPU", "cuda": "CUDA"}[name]
    missing = [op for op in OP_NAMES if not has_kernel(op, key)]
    if missing:
        return f"fused_resnet._C was built without {key} kernels for {', '.join(missing)}"
    return None


def _triton_problem() -> str | None:
    """Why the Triton ops cannot run here (importing them registers them), or None."""
    from . import triton as triton_backend

    return triton_backend.available()


def _triton_device_type() -> str:
    """Triton kernels run on CUDA tensors, or on CPU tensors in the interpreter."""
    from . import triton as triton_backend

    return "cpu" if triton_backend.interpreting() else "cuda"


_DEVICE_TYPE = {"cpp": "cpu", "cuda": "cuda", "triton": "cuda"}


def cannot_serve(name: str, device: torch.device | str, dtype: torch.dtype) -> str | None:
    """Why backend ``name`` cannot run blocks on ``device`` in ``dtype``; None if it can."""
    device = torch.device(device)
    missing = _not_built(name) if name in BACKENDS else f"unknown backend {name!r}"
    if missing:
        return missing
    if dtype not in SUPPORTED_DTYPES:
        return f"dtype {dtype} is not supported (use one of {SUPPORTED_DTYPES})"
    want = _triton_device_type() if name == "triton" else _DEVICE_TYPE.get(name)
    if want is not None and device.type != want:
        return f"backend {name!r} runs on {want} tensors, not on {device.type}"
    if name in ("cuda", "triton") and dtype == torch.float64:
        return f"backend {name!r} has no float64 kernels"
    if name == "triton" and device.type == "cpu" and dtype == torch.bfloat16:
        return "the Triton interpreter cannot run bfloat16"
    return None


def backend_status(device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> dict[str, str | None]:
    """For each backend: None if it serves ``device``/``dtype``, else the reason it does not."""
    return {name: cannot_serve(name, device, dtype) for name in BACKENDS}


def available_backends(device: torch.device | str = "cpu",
                       dtype: torch.dtype = torch.float32) -> list[str]:
    """The backends that can run blocks on ``device`` in ``dtype``; ``auto``'s choices first."""
    order = _AUTO_ORDER.get(torch.device(device).type, ("reference",))
    order += tuple(n for n in BACKENDS if n not in order)
    return [n for n in order if cannot_serve(n, device, dtype) is None]


def default_backend() -> str:
    """The backend asked for when a block names none: ``$FUSED_RESNET_BACKEND`` or ``auto``."""
    name = os.environ.get("FUSED_RESNET_BACKEND", "auto") or "auto"
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"FUSED_RESNET_BACKEND={name!r} is not one of {('auto',) + BACKENDS}")
    return name


def resolve_backend(name: str, device: torch.device | str, dtype: torch.dtype) -> Backend:
    """The backend a block on ``device``/``dtype`` runs: ``auto`` takes the fastest that serves."""
    if name == "auto":
        order = _AUTO_ORDER.get(torch.device(device).type, ("reference",))
        choices = [n for n in available_backends(device, dtype) if n in order]
        if not choices:
            raise TypeError(cannot_serve("reference", device, dtype))
        return get_backend(choices[0])
    reason = cannot_serve(name, device, dtype)
    if reason:
        raise RuntimeError(f"fused_resnet backend {name!r} cannot serve {torch.device(device)} "
                           f"{dtype}: {reason}")
    return get_backend(name)
