"""Helpers shared by the Triton kernels and launchers."""

from __future__ import annotations

import contextlib
import functools
import os

import torch
import triton
import triton.language as tl

from ..launch_plan import Target
from . import configs

# Triton decides at @triton.jit decoration time whether a kernel is interpreted, so the
# launchers must agree with the flag as it was when this package was imported.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def interpreter_unavailable_reason() -> str | None:
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
def row_tile(pid, rows, BLOCK: tl.constexpr):
    """Rows [pid*BLOCK, +BLOCK) of an NHWC tensor viewed as [rows, C]: int64 offsets
    (tensors may pass 2**31 elements) and the in-range mask."""
    offs = tl.cast(pid, tl.int64) * BLOCK + tl.arange(0, BLOCK)  # pid may be a loop index
    return offs, offs < rows


@triton.jit
def pixel_tile(pid, rows, H, W, BLOCK: tl.constexpr):
    """A :func:`row_tile` of pixels, with each row's (image, h, w)."""
    offs, mask = row_tile(pid, rows, BLOCK)
    w = offs % W
    h = (offs // W) % H
    return offs, mask, offs // (W * H), h, w


@triton.jit
def channel_tile(pid, C, BLOCK: tl.constexpr):
    """Channels [pid*BLOCK, +BLOCK) and their in-range mask."""
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    return offs, offs < C


@triton.jit
def zero_counters(counter_ptr, n, first):
    """The producer of a ticketed reduction clears its arrival counters (``first``: in
    one program only); the reduction launches after it on the same stream."""
    if first:
        for c0 in range(0, n, 128):
            offs = c0 + tl.arange(0, 128)
            tl.store(counter_ptr + offs, tl.zeros([128], dtype=tl.int32), mask=offs < n)


@triton.jit
def last_to_arrive(counter_ptr, arrivals):
    """True in the program that arrives last of ``arrivals`` at this counter. A CTA
    barrier, then the scalar atomic (issued by one thread) with acquire-release semantics
    at GPU scope, then the barrier that broadcasts its result: the last program sees every
    earlier program's stores (the pattern of CUTLASS's semaphores) and reads them with .cg
    loads (L2, never a stale L1 line). Triton puts no barrier before a scalar atomic, so
    without ours the other threads' stores could still be in flight at the release."""
    tl.debug_barrier()
    return tl.atomic_add(counter_ptr, 1, sem="acq_rel", scope="gpu") == arrivals - 1


@triton.jit
def sum_rows(ptr, row_stride, start, end, offs_c, c_mask, BLOCK_R: tl.constexpr,
             BLOCK_C: tl.constexpr, CG: tl.constexpr):
    """Sum of the rows [start, end) of ``ptr[r*row_stride + c]``: [BLOCK_R, BLOCK_C] tiles
    added with tl.sum, in row order."""
    acc = tl.zeros([BLOCK_C], dtype=tl.float32)
    for r0 in range(start, end, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R).to(tl.int64)
        mask = (offs_r < end)[:, None] & c_mask[None, :]
        ptrs = ptr + offs_r[:, None] * row_stride + offs_c[None, :]
        if CG:
            tile = tl.load(ptrs, mask=mask, other=0.0, cache_modifier=".cg")
        else:
            tile = tl.load(ptrs, mask=mask, other=0.0)
        acc += tl.sum(tile, axis=0)
    return acc


@triton.jit
def column_sum_kernel(part_ptr, out0_ptr, out1_ptr, out2_ptr, scratch_ptr, counter_ptr,
                      rows, cols, row_stride, batch_stride, chunk,
                      TICKET: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """out_b[c] = sum over r of part[b, r, c] (at part_ptr + b*batch_stride + r*row_stride
    + c), in out_b's dtype, for the up to three sums b = program_id(2) of one launch.
    Program (c block, g, b) sums rows [g*chunk, (g+1)*chunk); without TICKET there is one
    group, else each group stores its sum in scratch[b, g, c] and the last group of its
    (b, c block) to arrive adds those in group order. Deterministic: the order of every
    addition depends only on the shape; no floating-point atomics."""
    pid_c = tl.program_id(0)
    offs_c, c_mask = channel_tile(pid_c, cols, BLOCK_C)
    g = tl.program_id(1)
    b = tl.program_id(2)
    out_ptr = out0_ptr
    if b == 1:
        out_ptr = out1_ptr
    if b == 2:
        out_ptr = out2_ptr
    start = g * chunk
    acc = sum_rows(part_ptr + b.to(tl.int64) * batch_stride, row_stride, start,
                   tl.minimum(rows, start + chunk), offs_c, c_mask, BLOCK_R, BLOCK_C, False)
    if TICKET:
        groups = tl.num_programs(1)
        scratch_ptr += b.to(tl.int64) * groups * cols
        tl.store(scratch_ptr + g.to(tl.int64) * cols + offs_c, acc, mask=c_mask)
        if last_to_arrive(counter_ptr + b * tl.num_programs(0) + pid_c, groups):
            acc = sum_rows(scratch_ptr, cols, 0, groups, offs_c, c_mask, BLOCK_R, BLOCK_C,
                           True)
            tl.store(out_ptr + offs_c, acc.to(out_ptr.dtype.element_ty), mask=c_mask)
    else:
        tl.store(out_ptr + offs_c, acc.to(out_ptr.dtype.element_ty), mask=c_mask)


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


def reduction_counters(launch, device: torch.device) -> torch.Tensor | None:
    """The arrival counters of a reduction launch (cleared by its producer, see
    :func:`zero_counters`), or None when it needs none."""
    if not launch.meta["counters"]:
        return None
    return torch.empty(launch.meta["counters"], dtype=torch.int32, device=device)


def counter_args(counters: torch.Tensor | None, absent: torch.Tensor) -> tuple:
    """A producer's (counter_ptr, n_counters) for :func:`zero_counters`: ``absent`` (never
    written) and 0 when its reduction needs no counters."""
    return (absent, 0) if counters is None else (counters, counters.numel())


def column_sums(part: torch.Tensor, launch, outs: list[torch.Tensor] | None = None,
                counters: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Deterministic sums over dim 1 of an fp32 ``[batch, rows, cols]`` view (batch <= 3,
    unit column stride) in the one launch ``launch`` of :func:`plans.column_sum_launch`:
    into ``outs`` (any dtype, ``cols`` dense elements each), else into fresh fp32
    ``[cols]`` tensors (distinct: op outputs must not alias). A ticketed launch needs
    ``counters`` from :func:`reduction_counters`, cleared by the producer of ``part``."""
    batch, rows, cols = part.shape
    if outs is None:
        outs = [torch.empty(cols, dtype=torch.float32, device=part.device)
                for _ in range(batch)]
    ticket = launch.meta["TICKET"]
    scratch = (torch.empty((batch, launch.grid[1], cols), dtype=torch.float32,
                           device=part.device) if ticket else part)
    launcher(column_sum_kernel)[launch.grid](
        part, *(outs + outs[-1:] * 2)[:3],  # pointers past ``batch`` are never written
        scratch, counters if ticket else part, rows, cols, part.stride(1), part.stride(0),
        launch.meta["chunk"], TICKET=ticket, BLOCK_R=launch.meta["BLOCK_R"],
        BLOCK_C=launch.meta["BLOCK_C"], **launch_options(launch.num_warps))
    return outs


def launch_options(num_warps: int, num_stages: int | None = None) -> dict:
    """Launch options for the GPU (the interpreter takes none)."""
    if INTERPRET:
        return {}
    opts = {"num_warps": num_warps}
    if num_stages is not None:
        opts["num_stages"] = num_stages
    return opts


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


def vec(t: torch.Tensor | None, absent: torch.Tensor) -> torch.Tensor:
    """A per-channel vector as a contiguous fp32 tensor; an absent one is replaced by
    ``absent``, any tensor of the call (never read: a constexpr flag tells the kernel)."""
    if t is None:
        return absent
    return dense(t, torch.float32)


def dense(t: torch.Tensor, dtype: torch.dtype,
          memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """``t`` dense in ``memory_format`` and ``dtype``: itself when it already is, else one
    copy (``Tensor.to`` ignores the memory format when the dtype already matches)."""
    if t.dtype == dtype:
        return t.contiguous(memory_format=memory_format)
    return t.to(dtype, memory_format=memory_format)


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 convs follow PyTorch's cuDNN TF32 switch; fp16/bf16 ignore it."""
    if dtype == torch.float32 and not torch.backends.cudnn.allow_tf32:
        return "ieee"
    return "tf32"


def dtype_class(dtype: torch.dtype) -> str:
    """The tile-table column of a data dtype (fp16 and bf16 share tiles)."""
    return "fp32" if dtype == torch.float32 else "16bit"


@functools.cache
def _device_target(index: int) -> Target:
    props = torch.cuda.get_device_properties(index)
    fam = configs.family(props.major * 10 + props.minor)
    limit = getattr(props, "shared_memory_per_block_optin", 0) or 48 * 1024
    return fam.with_device(limit, props.multi_processor_count)


def target_of(t: torch.Tensor) -> Target:
    """The planning target for a launch on ``t``'s device: its family's tables bounded by
    the device's own shared memory and SM count (the interpreter has one of its own)."""
    if INTERPRET:
        return configs.INTERPRETER_TARGET
    index = t.device.index if t.device.index is not None else torch.cuda.current_device()
    return _device_target(index)


def conv_out_size(size: int, k: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1
