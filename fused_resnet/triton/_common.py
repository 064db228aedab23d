"""Helpers shared by the Triton kernels and launchers (GPU-UNVERIFIED, see conv.py)."""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

# Triton decides at @triton.jit decoration time whether a kernel is interpreted, so the
# launchers must agree with the flag as it was when this package was imported.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def interpreter_problem() -> str | None:
    """Why interpreted kernels cannot run, or None. Triton's own library (tl.zeros,
    tl.sum, ...) is decorated when triton is first imported: if that happened before
    TRITON_INTERPRET=1 was set, every interpreted kernel fails."""
    from triton.runtime.interpreter import InterpretedFunction

    if INTERPRET and not isinstance(tl.zeros, InterpretedFunction):
        return ("TRITON_INTERPRET=1 was set after triton was imported (e.g. by torchvision); "
                "set it in the environment, or before anything imports triton")
    return None

DATA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def relu_keep_nan(v):
    """ReLU as torch.relu: NaN propagates (tl.maximum(nan, 0) would return 0)."""
    return tl.where(v < 0, 0.0, v)


@triton.jit
def column_sum_kernel(part_ptr, out_ptr, rows, cols, BLOCK_C: tl.constexpr):
    """out[c] = sum over rows of part[r, c], in row order: deterministic, no atomics."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = offs < cols
    acc = tl.zeros([BLOCK_C], dtype=tl.float32)
    row = offs  # int64: advanced by cols per row
    for _ in range(rows):
        acc += tl.load(part_ptr + row, mask=mask, other=0.0)
        row += cols
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def launcher(kernel):
    """``kernel`` launchable from a custom op: through ``wrap_triton`` on the GPU so
    torch.compile sees the kernel; as is under the interpreter (wrap_triton accepts
    only JIT/Autotuner objects, not interpreted functions)."""
    if INTERPRET:
        return kernel
    return torch.library.wrap_triton(kernel)


def device_guard(t: torch.Tensor):
    """Launch on ``t``'s device (tensors on cuda:1 must not run on cuda:0)."""
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def column_sum(part: torch.Tensor, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Deterministic sum over dim 0 of a contiguous fp32 ``[rows, cols]`` buffer."""
    rows, cols = part.shape
    out = torch.empty(cols, dtype=out_dtype, device=part.device)
    block = 128 if INTERPRET else 256
    launcher(column_sum_kernel)[(triton.cdiv(cols, block),)](part, out, rows, cols,
                                                            BLOCK_C=block)
    return out


def check_data(op: str, t: torch.Tensor, groups: int = 1) -> None:
    """Reject what the kernels do not implement, with a clear message."""
    if t.dtype not in DATA_DTYPES:
        raise NotImplementedError(f"fused_resnet triton {op}: dtype {t.dtype} is not supported "
                                  f"(float16, bfloat16, float32; use another backend for "
                                  f"float64)")
    if groups != 1:
        raise NotImplementedError(f"fused_resnet triton {op}: groups={groups} is not supported "
                                  "(only groups=1)")
    if t.device.type != "cuda" and not (INTERPRET and t.device.type == "cpu"):
        raise RuntimeError(f"fused_resnet triton {op}: tensors on {t.device} need CUDA "
                           "(or CPU tensors with TRITON_INTERPRET=1 set before import)")


def nhwc(t: torch.Tensor | None) -> torch.Tensor | None:
    """Dense NHWC storage (a no-op for channels_last tensors)."""
    if t is None:
        return None
    return t.contiguous(memory_format=torch.channels_last)


def vec(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """A per-channel vector as a contiguous fp32 tensor; absent ones become a 1-element
    dummy (never read: a constexpr flag tells the kernel it is absent)."""
    if t is None:
        return like.new_zeros(1, dtype=torch.float32)
    return t.contiguous().to(torch.float32)


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 convs follow PyTorch's cuDNN TF32 switch; fp16/bf16 ignore it."""
    if dtype == torch.float32 and not torch.backends.cudnn.allow_tf32:
        return "ieee"
    return "tf32"


def arch_of(t: torch.Tensor) -> int:
    if t.device.type != "cuda":
        return 0
    major, minor = torch.cuda.get_device_capability(t.device)
    return major * 10 + minor


def conv_out_size(size: int, k: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1
