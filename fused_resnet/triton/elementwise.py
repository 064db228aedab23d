"""Per-channel kernels: block_end, block_end_bwd (with BN-backward sums, or ending in BN
backward: block_end_bwd_bn), bn_finalize, bn_backward (BN backward's coefficients and
parameter gradients).

Tested under the Triton CPU interpreter and compiled ahead of time (see conv.py). Tensors
are viewed as NHWC rows x channels; sums are per-tile partials reduced in tile order
(deterministic: integer tickets, no floating-point atomics).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import plans
from ._common import (
    channel_tile,
    check_data,
    column_sums,
    counter_args,
    device_guard,
    dtype_class,
    last_to_arrive,
    launch_options,
    launcher,
    nhwc,
    reduction_counters,
    relu_keep_nan,
    row_tile,
    target_of,
    vec,
    zero_counters,
)

Tensor = torch.Tensor


@triton.jit
def _channel_affine(v, scale_ptr, shift_ptr, offs_c, c_mask):
    scale = tl.load(scale_ptr + offs_c, mask=c_mask, other=0.0)
    shift = tl.load(shift_ptr + offs_c, mask=c_mask, other=0.0)
    return v * scale[None, :] + shift[None, :]


@triton.jit
def _branch_factor(branch_ptr, offs_r, r_mask, rows_per_sample):
    """Drop path's factor of each row's sample, as a column to broadcast over channels."""
    return tl.load(branch_ptr + offs_r // rows_per_sample, mask=r_mask, other=0.0)[:, None]


@triton.jit
def block_end_kernel(y_ptr, scale_ptr, shift_ptr, res_ptr, res_scale_ptr, res_shift_ptr,
                     out_ptr, rows, C, branch_ptr, rows_per_sample,
                     HAS_RES_AFFINE: tl.constexpr, HAS_BRANCH: tl.constexpr,
                     BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """out = relu((y*scale + shift)[*branch[n]] + [residual*res_scale + res_shift])."""
    offs_r, r_mask = row_tile(tl.program_id(0), rows, BLOCK_R)
    offs_c, c_mask = channel_tile(tl.program_id(1), C, BLOCK_C)
    mask = r_mask[:, None] & c_mask[None, :]
    offs = offs_r[:, None] * C + offs_c[None, :]
    y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    r = tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES_AFFINE:
        r = _channel_affine(r, res_scale_ptr, res_shift_ptr, offs_c, c_mask)
    v = _channel_affine(y, scale_ptr, shift_ptr, offs_c, c_mask)
    if HAS_BRANCH:
        v = v * _branch_factor(branch_ptr, offs_r, offs_r < rows, rows_per_sample)
    v = relu_keep_nan(v + r)
    tl.store(out_ptr + offs, v.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def block_end_bwd_kernel(d_out_ptr, out_ptr, y_ptr, mean_ptr, invstd_ptr, y_d_ptr, mean_d_ptr,
                         invstd_d_ptr, dz_ptr, part_ptr, counter_ptr, n_counters, rows, C,
                         branch_ptr, rows_per_sample,
                         HAS_D: tl.constexpr, HAS_BRANCH: tl.constexpr,
                         BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """dz = d_out masked where out <= 0; per-tile sums of dz_b, dz_b*xhat, dz*xhat_d written
    to part[0|1|2, tile, c], with dz_b = dz[*branch[n]] the residual branch's gradient."""
    pid_r = tl.program_id(0)
    offs_r, r_mask = row_tile(pid_r, rows, BLOCK_R)
    offs_c, c_mask = channel_tile(tl.program_id(1), C, BLOCK_C)
    mask = r_mask[:, None] & c_mask[None, :]
    offs = offs_r[:, None] * C + offs_c[None, :]
    d_out = tl.load(d_out_ptr + offs, mask=mask, other=0.0)
    out = tl.load(out_ptr + offs, mask=mask, other=0.0)
    dz = tl.where(out <= 0, 0.0, d_out)  # threshold_backward: NaN in `out` passes
    dz = tl.where(mask, dz, 0.0).to(dz_ptr.dtype.element_ty)
    tl.store(dz_ptr + offs, dz, mask=mask)

    acc = dz.to(tl.float32)
    acc_b = acc
    if HAS_BRANCH:
        acc_b = acc * _branch_factor(branch_ptr, offs_r, offs_r < rows, rows_per_sample)
    tiles = tl.num_programs(0)
    part = pid_r.to(tl.int64) * C + offs_c
    stride = tiles.to(tl.int64) * C
    tl.store(part_ptr + part, tl.sum(acc_b, axis=0), mask=c_mask)
    zero_counters(counter_ptr, n_counters, (pid_r == 0) & (tl.program_id(1) == 0))
    y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    xhat = (y - tl.load(mean_ptr + offs_c, mask=c_mask, other=0.0)[None, :]) \
        * tl.load(invstd_ptr + offs_c, mask=c_mask, other=0.0)[None, :]
    tl.store(part_ptr + stride + part, tl.sum(tl.where(mask, acc_b * xhat, 0.0), axis=0),
             mask=c_mask)
    if HAS_D:
        y_d = tl.load(y_d_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        xhat_d = (y_d - tl.load(mean_d_ptr + offs_c, mask=c_mask, other=0.0)[None, :]) \
            * tl.load(invstd_d_ptr + offs_c, mask=c_mask, other=0.0)[None, :]
        tl.store(part_ptr + 2 * stride + part,
                 tl.sum(tl.where(mask, acc * xhat_d, 0.0), axis=0), mask=c_mask)


@triton.jit
def bn_finalize_channels(mean, m2, offs, mask, weight_ptr, bias_ptr, scale_ptr, shift_ptr,
                         invstd_ptr, running_mean_ptr, running_var_ptr, count, unbiased_count,
                         factor, eps, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                         UPDATE: tl.constexpr):
    """BN's (scale, shift, invstd) of channels ``offs`` from their batch mean and M2, and
    the running statistics' update by ``factor`` (reference.bn_finalize)."""
    invstd = 1.0 / tl.sqrt_rn(m2 / count + eps)
    scale = invstd
    if HAS_WEIGHT:
        scale = invstd * tl.load(weight_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    shift = -mean * scale
    if HAS_BIAS:
        shift = shift + tl.load(bias_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(scale_ptr + offs, scale, mask=mask)
    tl.store(shift_ptr + offs, shift, mask=mask)
    tl.store(invstd_ptr + offs, invstd, mask=mask)
    if UPDATE:
        rm = tl.load(running_mean_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        rv = tl.load(running_var_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        rm = rm + factor * (mean - rm)
        rv = rv + factor * (m2 / unbiased_count - rv)
        tl.store(running_mean_ptr + offs, rm.to(running_mean_ptr.dtype.element_ty), mask=mask)
        tl.store(running_var_ptr + offs, rv.to(running_var_ptr.dtype.element_ty), mask=mask)


@triton.jit
def bn_finalize_kernel(mean_ptr, m2_ptr, weight_ptr, bias_ptr, scale_ptr, shift_ptr,
                       invstd_ptr, running_mean_ptr, running_var_ptr, nbt_ptr, C, count,
                       unbiased_count, momentum, eps,
                       HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, UPDATE: tl.constexpr,
                       HAS_NBT: tl.constexpr, CUMULATIVE: tl.constexpr,
                       BLOCK_C: tl.constexpr):
    """One program: updates num_batches_tracked once, then walks the channels (so the
    momentum=None factor 1/num_batches_tracked is read on the device, race-free)."""
    factor = momentum
    if UPDATE:
        if HAS_NBT:
            nbt = tl.load(nbt_ptr) + 1
            # Every thread has read the old count before any thread stores the new one.
            tl.debug_barrier()
            tl.store(nbt_ptr, nbt)
            if CUMULATIVE:
                factor = 1.0 / nbt.to(tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs = c0 + tl.arange(0, BLOCK_C)
        mask = offs < C
        bn_finalize_channels(tl.load(mean_ptr + offs, mask=mask, other=0.0),
                             tl.load(m2_ptr + offs, mask=mask, other=0.0), offs, mask,
                             weight_ptr, bias_ptr, scale_ptr, shift_ptr, invstd_ptr,
                             running_mean_ptr, running_var_ptr, count, unbiased_count, factor,
                             eps, HAS_WEIGHT, HAS_BIAS, UPDATE)


@triton.jit
def bn_backward_channels(sum_dz, sum_dz_xhat, offs, mask, scale_ptr, mean_ptr, invstd_ptr,
                         a_ptr, b_ptr, c_ptr, dweight_ptr, dbias_ptr, count,
                         BATCH_STATS: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                         HAS_BIAS: tl.constexpr):
    """BN backward of channels ``offs`` from their sums: dy = a*dz + b*y + c (see
    reference.bn_bwd_coeffs) and the BN parameters' gradients (dweight = sum(dz*xhat),
    dbias = sum(dz), in their dtypes)."""
    scale = tl.load(scale_ptr + offs, mask=mask, other=0.0)
    b = tl.zeros_like(scale)
    c = tl.zeros_like(scale)
    if BATCH_STATS:
        invstd = tl.load(invstd_ptr + offs, mask=mask, other=0.0)
        mean = tl.load(mean_ptr + offs, mask=mask, other=0.0)
        b = -scale * invstd * sum_dz_xhat / count
        c = -scale * sum_dz / count - b * mean
    tl.store(a_ptr + offs, scale, mask=mask)
    tl.store(b_ptr + offs, b, mask=mask)
    tl.store(c_ptr + offs, c, mask=mask)
    if HAS_WEIGHT:
        tl.store(dweight_ptr + offs, sum_dz_xhat.to(dweight_ptr.dtype.element_ty), mask=mask)
    if HAS_BIAS:
        tl.store(dbias_ptr + offs, sum_dz.to(dbias_ptr.dtype.element_ty), mask=mask)


@triton.jit
def bn_backward_kernel(sum_dz_ptr, sum_dz_xhat_ptr, scale_ptr, mean_ptr, invstd_ptr, a_ptr,
                       b_ptr, c_ptr, dweight_ptr, dbias_ptr, C, count,
                       BATCH_STATS: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                       HAS_BIAS: tl.constexpr, BLOCK_C: tl.constexpr):
    """BN backward (bn_backward_channels) from sums computed before."""
    offs, mask = channel_tile(tl.program_id(0), C, BLOCK_C)
    bn_backward_channels(tl.load(sum_dz_ptr + offs, mask=mask, other=0.0),
                         tl.load(sum_dz_xhat_ptr + offs, mask=mask, other=0.0), offs, mask,
                         scale_ptr, mean_ptr, invstd_ptr, a_ptr, b_ptr, c_ptr, dweight_ptr,
                         dbias_ptr, count, BATCH_STATS, HAS_WEIGHT, HAS_BIAS)


@triton.jit
def _sum_planes(ptr, plane, row_stride, start, end, offs_c, c_mask, THREE: tl.constexpr,
                BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, CG: tl.constexpr):
    """Sums over rows [start, end) of planes 0, 1 (and 2, THREE) of ``ptr[p*plane +
    r*row_stride + c]``, all in one row loop (independent loads per step), in row order;
    CG: read through L2 (another program's stores)."""
    acc0 = tl.zeros([BLOCK_C], dtype=tl.float32)
    acc1 = tl.zeros([BLOCK_C], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    for r0 in range(start, end, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R).to(tl.int64)
        mask = (offs_r < end)[:, None] & c_mask[None, :]
        at = ptr + offs_r[:, None] * row_stride + offs_c[None, :]
        if CG:
            acc0 += tl.sum(tl.load(at, mask=mask, other=0.0, cache_modifier=".cg"), axis=0)
            acc1 += tl.sum(tl.load(at + plane, mask=mask, other=0.0, cache_modifier=".cg"),
                           axis=0)
            if THREE:
                acc2 += tl.sum(tl.load(at + 2 * plane, mask=mask, other=0.0,
                                       cache_modifier=".cg"), axis=0)
        else:
            acc0 += tl.sum(tl.load(at, mask=mask, other=0.0), axis=0)
            acc1 += tl.sum(tl.load(at + plane, mask=mask, other=0.0), axis=0)
            if THREE:
                acc2 += tl.sum(tl.load(at + 2 * plane, mask=mask, other=0.0), axis=0)
    return acc0, acc1, acc2


@triton.jit
def bn_backward_sums_kernel(
    part_ptr, scratch_ptr, counter_ptr, rows, C, row_stride, plane_stride, chunk,
    scale_ptr, mean_ptr, invstd_ptr, a_ptr, b_ptr, c_ptr, dweight_ptr, dbias_ptr, count,
    scale_d_ptr, mean_d_ptr, invstd_d_ptr, a_d_ptr, b_d_ptr, c_d_ptr, dweight_d_ptr,
    dbias_d_ptr, count_d,
    HAS_D: tl.constexpr, BATCH_STATS: tl.constexpr, HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr, BATCH_STATS_D: tl.constexpr, HAS_WEIGHT_D: tl.constexpr,
    HAS_BIAS_D: tl.constexpr, TICKET: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Per-tile BN-backward sums (sum p of row r, channel c at part_ptr + p*plane_stride +
    r*row_stride + c: dz, dz*xhat and, HAS_D, dz*xhat_d) reduced as column_sum_kernel does
    (groups, the last to arrive adding them in order), ending in BN backward
    (bn_backward_channels) of one BN from sums 0 and 1 and, HAS_D, of a projection's BN
    from sums 0 and 2 (block_end_bwd's; conv_bwd_data's have no third)."""
    pid_c = tl.program_id(0)
    offs_c, c_mask = channel_tile(pid_c, C, BLOCK_C)
    g = tl.program_id(1)
    start = g * chunk
    s0, s1, s2 = _sum_planes(part_ptr, plane_stride, row_stride, start,
                             tl.minimum(rows, start + chunk), offs_c, c_mask, HAS_D, BLOCK_R,
                             BLOCK_C, False)
    done = True
    if TICKET:
        groups = tl.num_programs(1)
        gplane = groups.to(tl.int64) * C
        at = g.to(tl.int64) * C + offs_c
        tl.store(scratch_ptr + at, s0, mask=c_mask)
        tl.store(scratch_ptr + gplane + at, s1, mask=c_mask)
        if HAS_D:
            tl.store(scratch_ptr + 2 * gplane + at, s2, mask=c_mask)
        done = last_to_arrive(counter_ptr + pid_c, groups)
        if done:
            s0, s1, s2 = _sum_planes(scratch_ptr, gplane, C, 0, groups, offs_c, c_mask, HAS_D,
                                     BLOCK_R, BLOCK_C, True)
    if done:
        bn_backward_channels(s0, s1, offs_c, c_mask, scale_ptr, mean_ptr, invstd_ptr, a_ptr,
                             b_ptr, c_ptr, dweight_ptr, dbias_ptr, count, BATCH_STATS,
                             HAS_WEIGHT, HAS_BIAS)
        if HAS_D:
            bn_backward_channels(s0, s2, offs_c, c_mask, scale_d_ptr, mean_d_ptr,
                                 invstd_d_ptr, a_d_ptr, b_d_ptr, c_d_ptr, dweight_d_ptr,
                                 dbias_d_ptr, count_d, BATCH_STATS_D, HAS_WEIGHT_D, HAS_BIAS_D)


def _like(out: Tensor, main: Tensor) -> Tensor:
    from ..reference import memory_format
    return out.contiguous(memory_format=memory_format(main))


def _branch_args(branch_scale: Tensor | None, like: Tensor) -> tuple:
    """(branch_ptr, rows_per_sample) of drop path's per-sample factors (rows are pixels)."""
    if branch_scale is None:
        return like, 1
    if branch_scale.shape != (like.shape[0],) or branch_scale.dtype != torch.float32:
        raise ValueError(f"branch_scale must be a float32 ({like.shape[0]},) tensor, got "
                         f"{branch_scale.dtype} {tuple(branch_scale.shape)}")
    return branch_scale.contiguous(), like.shape[2] * like.shape[3]


def block_end(y: Tensor, scale: Tensor, shift: Tensor, residual: Tensor,
              res_scale: Tensor | None, res_shift: Tensor | None,
              branch_scale: Tensor | None = None) -> Tensor:
    """See :func:`fused_resnet.reference.block_end`."""
    check_data("block_end", y)
    n, c, h, w = y.shape
    out = torch.empty_like(y, memory_format=torch.channels_last)
    (launch,) = plans.block_end_plan(n * h * w, c, dtype_class(y.dtype), target_of(y))
    with device_guard(y):
        launcher(block_end_kernel)[launch.grid](
            nhwc(y), vec(scale, y), vec(shift, y), nhwc(residual), vec(res_scale, y),
            vec(res_shift, y), out, n * h * w, c, *_branch_args(branch_scale, y),
            HAS_RES_AFFINE=res_scale is not None, HAS_BRANCH=branch_scale is not None,
            **launch.meta, **launch_options(launch.num_warps))
    return _like(out, y)


def block_end_bwd(d_out: Tensor, out: Tensor, y: Tensor, mean: Tensor, invstd: Tensor,
                  y_d: Tensor | None, mean_d: Tensor | None, invstd_d: Tensor | None,
                  branch_scale: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """See :func:`fused_resnet.reference.block_end_bwd`."""
    has_d = y_d is not None
    main, sum_launch = plans.block_end_bwd_plan(*_rows_channels(d_out), dtype_class(d_out.dtype),
                                                target_of(d_out), has_d)
    dz, part, counters = _block_end_bwd_main(main, sum_launch, d_out, out, y, mean, invstd,
                                             y_d, mean_d, invstd_d, branch_scale)
    with device_guard(d_out):
        sums = column_sums(part, sum_launch, counters=counters)
    if not has_d:
        sums.append(d_out.new_empty(0, dtype=torch.float32))
    return (_like(dz, d_out), *sums)


def block_end_bwd_bn(d_out: Tensor, out: Tensor, y: Tensor, mean: Tensor, invstd: Tensor,
                     y_d: Tensor | None, mean_d: Tensor | None, invstd_d: Tensor | None,
                     count: int, scale: Tensor, batch_stats: bool, weight: Tensor | None,
                     bias: Tensor | None, count_d: int, scale_d: Tensor | None,
                     batch_stats_d: bool, weight_d: Tensor | None,
                     bias_d: Tensor | None) -> tuple[Tensor, ...]:
    """See :func:`fused_resnet.reference.block_end_bwd_bn`: the sums' reduction ends in BN
    backward, so no bn_backward launch follows."""
    has_d = y_d is not None
    main, sums = plans.block_end_bwd_bn_plan(*_rows_channels(d_out), dtype_class(d_out.dtype),
                                             target_of(d_out), has_d)
    dz, part, counters = _block_end_bwd_main(main, sums, d_out, out, y, mean, invstd, y_d,
                                             mean_d, invstd_d, None)
    outs = bn_backward_sums(sums, part, part.shape[2], counters,
                            (count, scale, mean, invstd, batch_stats, weight, bias),
                            (count_d, scale_d, mean_d, invstd_d, batch_stats_d, weight_d,
                             bias_d) if has_d else None)
    return (_like(dz, d_out), *outs)


def bn_backward_sums(launch, part: Tensor, row_stride: int, counters: Tensor | None,
                     bn: tuple, bn_d: tuple | None) -> tuple[Tensor, ...]:
    """Run the plan's bn_backward_sums ``launch`` over the per-tile sums at ``part`` (the
    planes ``part.stride(0)`` apart, rows ``row_stride`` apart, ``part.shape[-1]``
    channels): (a, b, c, dweight, dbias) of ``bn`` = (count, scale, mean, invstd,
    batch_stats, weight, bias), then of ``bn_d`` (empty tensors when None); an absent
    parameter's gradient is empty."""
    count, scale, mean, invstd, batch_stats, weight, bias = bn
    outs = _bn_backward_outputs(scale, weight, bias)
    outs_d = (_bn_backward_outputs(bn_d[1], bn_d[5], bn_d[6]) if bn_d is not None
              else tuple(scale.new_empty(0) for _ in range(5)))

    def args(outs, count, scale, mean, invstd, batch_stats, weight, bias) -> tuple:
        """One BN's pointers (absent ones: ``part``, never touched: flags say so)."""
        a, b, c, dweight, dbias = outs
        return (vec(scale, part), vec(mean, part), vec(invstd, part), a, b, c,
                dweight if weight is not None else part, dbias if bias is not None else part,
                float(count))

    channels = part.shape[-1]
    scratch = (torch.empty((3 if bn_d else 2, launch.grid[1], channels), dtype=torch.float32,
                           device=part.device) if launch.meta["TICKET"] else part)
    with device_guard(part):
        launcher(bn_backward_sums_kernel)[launch.grid](
            part, scratch, counters if counters is not None else part, launch.meta["rows"],
            channels, row_stride, part.stride(0), launch.meta["chunk"], *args(outs, *bn),
            *(args(outs_d, *bn_d) if bn_d is not None else (part,) * 8 + (1.0,)),
            HAS_D=bn_d is not None, BATCH_STATS=batch_stats, HAS_WEIGHT=weight is not None,
            HAS_BIAS=bias is not None, BATCH_STATS_D=bool(bn_d and bn_d[4]),
            HAS_WEIGHT_D=bool(bn_d and bn_d[5] is not None),
            HAS_BIAS_D=bool(bn_d and bn_d[6] is not None), TICKET=launch.meta["TICKET"],
            BLOCK_R=launch.meta["BLOCK_R"], BLOCK_C=launch.meta["BLOCK_C"],
            **launch_options(launch.num_warps))
    return (*outs, *outs_d)


def _rows_channels(t: Tensor) -> tuple[int, int]:
    n, c, h, w = t.shape
    return n * h * w, c


def _block_end_bwd_main(main, sums, d_out, out, y, mean, invstd, y_d, mean_d, invstd_d,
                        branch_scale) -> tuple[Tensor, Tensor, Tensor | None]:
    """block_end_bwd's elementwise kernel: (dz, its per-tile sums part[2|3, tile, C], the
    counters of the reduction ``sums`` that follows, cleared)."""
    check_data("block_end_bwd", d_out)
    rows, c = _rows_channels(d_out)
    has_d = y_d is not None
    dz = torch.empty_like(d_out, memory_format=torch.channels_last)
    part = torch.empty((3 if has_d else 2, main.grid[0], c), dtype=torch.float32,
                       device=d_out.device)
    counters = reduction_counters(sums, d_out.device)
    with device_guard(d_out):
        launcher(block_end_bwd_kernel)[main.grid](
            nhwc(d_out), nhwc(out), nhwc(y), vec(mean, y), vec(invstd, y),
            nhwc(y_d) if has_d else y, vec(mean_d, y), vec(invstd_d, y), dz, part,
            *counter_args(counters, part), rows, c,
            *_branch_args(branch_scale, d_out), HAS_D=has_d,
            HAS_BRANCH=branch_scale is not None, **main.meta, **launch_options(main.num_warps))
    return dz, part, counters


def _bn_backward_outputs(scale: Tensor, weight: Tensor | None,
                         bias: Tensor | None) -> tuple[Tensor, ...]:
    """(a, b, c, dweight, dbias) to be written; an absent parameter's gradient is empty."""
    c = scale.shape[0]
    a, b, cc = (torch.empty(c, dtype=torch.float32, device=scale.device) for _ in range(3))
    dweight = (torch.empty_like(weight, memory_format=torch.contiguous_format)
               if weight is not None else scale.new_empty(0))
    dbias = (torch.empty_like(bias, memory_format=torch.contiguous_format)
             if bias is not None else scale.new_empty(0))
    return a, b, cc, dweight, dbias


def check_finalize_args(update_running_stats: bool, running_mean: Tensor | None,
                        running_var: Tensor | None, momentum: float | None,
                        num_batches_tracked: Tensor | None) -> None:
    if update_running_stats:
        if running_mean is None or running_var is None:
            raise ValueError("bn_finalize: update_running_stats needs running_mean/var")
        if momentum is None and num_batches_tracked is None:
            raise ValueError("bn_finalize: momentum=None needs num_batches_tracked")


def bn_finalize(mean: Tensor, m2: Tensor, count: int, weight: Tensor | None,
                bias: Tensor | None, running_mean: Tensor | None, running_var: Tensor | None,
                num_batches_tracked: Tensor | None, momentum: float | None, eps: float,
                update_running_stats: bool) -> tuple[Tensor, Tensor, Tensor]:
    """See :func:`fused_resnet.reference.bn_finalize`; mutates the running statistics."""
    if mean.dtype != torch.float32:
        raise NotImplementedError(f"fused_resnet triton bn_finalize: statistics dtype "
                                  f"{mean.dtype} is not supported (float32 only)")
    check_finalize_args(update_running_stats, running_mean, running_var, momentum,
                        num_batches_tracked)
    c = mean.shape[0]
    scale, shift, invstd = (torch.empty_like(mean) for _ in range(3))
    (launch,) = plans.bn_finalize_plan(c, target_of(mean))
    dummy = mean
    with device_guard(mean):
        launcher(bn_finalize_kernel)[launch.grid](
            mean.contiguous(), m2.contiguous(), weight if weight is not None else dummy,
            bias if bias is not None else dummy, scale, shift, invstd,
            running_mean if update_running_stats else dummy,
            running_var if update_running_stats else dummy,
            num_batches_tracked if num_batches_tracked is not None else dummy,
            c, float(count), float(max(count - 1, 1)),
            float(momentum) if momentum is not None else 0.0, float(eps),
            HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
            UPDATE=update_running_stats, HAS_NBT=num_batches_tracked is not None,
            CUMULATIVE=momentum is None, **launch.meta, **launch_options(launch.num_warps))
    return scale, shift, invstd


def bn_backward(sum_dz: Tensor, sum_dz_xhat: Tensor, count: int, scale: Tensor, mean: Tensor,
                invstd: Tensor, batch_stats: bool, weight: Tensor | None,
                bias: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """See :func:`fused_resnet.reference.bn_backward`, in one launch; an absent parameter's
    gradient is an empty tensor."""
    c = scale.shape[0]
    a, b, cc, dweight, dbias = _bn_backward_outputs(scale, weight, bias)
    (launch,) = plans.bn_backward_plan(c, target_of(scale))
    with device_guard(scale):
        launcher(bn_backward_kernel)[launch.grid](
            vec(sum_dz, a), vec(sum_dz_xhat, a), vec(scale, a), vec(mean, a), vec(invstd, a),
            a, b, cc, dweight if weight is not None else a, dbias if bias is not None else a,
            c, float(count), BATCH_STATS=batch_stats, HAS_WEIGHT=weight is not None,
            HAS_BIAS=bias is not None, **launch.meta, **launch_options(launch.num_warps))
    return a, b, cc, dweight, dbias
