"""Implicit-GEMM convolution kernels (forward, dgrad, wgrad) with the fused prologues
and epilogues of docs/design.md §1, and their launchers.

Checked without a GPU under the Triton CPU interpreter (exact fp32, no bf16) and by
ahead-of-time compilation for every target (tests/test_triton_compile.py); speed and
TF32/bf16 numerics need a GPU run (benchmarks/device_check.sh).

Layout: activations are NHWC (channels_last) internally; a GEMM row is one output (or,
for dgrad, input) pixel, a column one channel, and the reduction runs tap by tap
(kh, kw) over channel blocks, so no division sits in the inner loop. Offsets are int64
(tensors may exceed 2**31 elements). Reductions (statistics, BN-backward sums, split-K)
write per-tile partials that one more launch merges in a fixed order (docs/design.md §1,
"Reductions in one launch"): deterministic.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import plans
from ._common import (
    channel_tile,
    check_data,
    column_sums,
    conv_out_size,
    counter_args,
    dense,
    device_guard,
    dot_precision,
    dtype_class,
    last_to_arrive,
    launch_options,
    launcher,
    nhwc,
    pixel_tile,
    reduction_counters,
    relu_keep_nan,
    target_of,
    vec,
    zero_counters,
)
from .elementwise import (
    bn_backward,
    bn_backward_sums,
    bn_finalize,
    bn_finalize_channels,
    check_finalize_args,
)

Tensor = torch.Tensor


# ----------------------------------------------------------------------------- kernels
@triton.jit
def _load_activation(x_ptr, rows, row_ok, offs_c, c_mask, scale_ptr, shift_ptr,
                     HAS_AFFINE: tl.constexpr, RELU: tl.constexpr):
    """A [rows, channels] tile of the input activation [relu](x*scale + shift), rounded to
    the data dtype; padded positions are zero *after* the transform (docs/design.md §1)."""
    mask = row_ok[:, None] & c_mask[None, :]
    a = tl.load(x_ptr + rows[:, None] + offs_c[None, :], mask=mask, other=0.0)
    if HAS_AFFINE:
        scale = tl.load(scale_ptr + offs_c, mask=c_mask, other=0.0)
        shift = tl.load(shift_ptr + offs_c, mask=c_mask, other=0.0)
        v = a.to(tl.float32) * scale[None, :] + shift[None, :]
        if RELU:
            v = relu_keep_nan(v)
        a = tl.where(mask, v, 0.0).to(x_ptr.dtype.element_ty)
    elif RELU:
        a = relu_keep_nan(a)
    return a


@triton.jit
def _load_output_grad(dz_ptr, y_ptr, rows, row_ok, offs_k, k_mask, a_ptr, b_ptr, c_ptr):
    """A [rows, channels] tile of dy = a*dz + b*y + c (BN backward as an affine map),
    rounded to the data dtype, zero outside the valid rows (padding, stride holes)."""
    mask = row_ok[:, None] & k_mask[None, :]
    offs = rows[:, None] + offs_k[None, :]
    dz = tl.load(dz_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    a = tl.load(a_ptr + offs_k, mask=k_mask, other=0.0)
    b = tl.load(b_ptr + offs_k, mask=k_mask, other=0.0)
    c = tl.load(c_ptr + offs_k, mask=k_mask, other=0.0)
    dy = dz * a[None, :] + y * b[None, :] + c[None, :]
    return tl.where(mask, dy, 0.0).to(dz_ptr.dtype.element_ty)


@triton.jit
def conv_fwd_kernel(
    x_ptr, w_ptr, y_ptr, in_scale_ptr, in_shift_ptr, out_scale_ptr, out_shift_ptr,
    res_ptr, res_scale_ptr, res_shift_ptr, part_pivot_ptr, part_mean_ptr, part_m2_ptr,
    counter_ptr, n_counters, nbt_ptr, N, H, W, C_in, H_out, W_out, C_out, stride, padding, dilation,
    KH: tl.constexpr, KW: tl.constexpr,
    HAS_IN_AFFINE: tl.constexpr, IN_RELU: tl.constexpr, HAS_OUT_AFFINE: tl.constexpr,
    HAS_RES: tl.constexpr, HAS_RES_AFFINE: tl.constexpr, OUT_RELU: tl.constexpr,
    STATS: tl.constexpr, COUNT_BATCH: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """y[m, n] = epilogue(sum_k A[m, k] * W[n, k]); m = output pixel, n = C_out,
    k = (tap, C_in). x: NHWC; w: [C_out, KH, KW, C_in]; y, residual: NHWC. STATS: each
    tile's statistics for merge_stats_kernel, whose counters program (0, 0) clears (and,
    COUNT_BATCH, counts the batch in BN's num_batches_tracked)."""
    pid_m = tl.program_id(0)
    M = N * H_out * W_out
    offs_m, m_mask, img, h_o, w_o = pixel_tile(pid_m, M, H_out, W_out, BLOCK_M)
    offs_n, n_mask = channel_tile(tl.program_id(1), C_out, BLOCK_N)
    k_total = KH * KW * C_in

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    # One flat loop over (tap, channel block): the software pipeliner only overlaps the
    # loads of a single innermost loop. The tap (r, s) and first channel c0 are carried
    # from step to step (no division in the loop).
    r = 0
    s = 0
    c0 = 0
    for _ in range(0, KH * KW * tl.cdiv(C_in, BLOCK_K)):
        tap = r * KW + s
        offs_k = c0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < C_in
        h_in = h_o * stride - padding + r * dilation
        w_in = w_o * stride - padding + s * dilation
        row_ok = m_mask & (h_in >= 0) & (h_in < H) & (w_in >= 0) & (w_in < W)
        rows = ((img * H + h_in) * W + w_in) * C_in
        a = _load_activation(x_ptr, rows, row_ok, offs_k, k_mask, in_scale_ptr, in_shift_ptr,
                             HAS_IN_AFFINE, IN_RELU)
        b = tl.load(w_ptr + offs_n[None, :] * k_total + (tap * C_in + offs_k)[:, None],
                    mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        c0, s, r = _next_step(c0, s, r, BLOCK_K, C_in, KW)

    if STATS:
        # Per-tile (pivot, mean - pivot, M2) of the raw accumulator, the pivot being the
        # tile's first row: when |mean| >> std, tile means stored as plain fp32 would lose
        # the digits that Chan's merge (merge_stats_kernel) needs.
        count = tl.minimum(M - pid_m.to(tl.int64) * BLOCK_M, BLOCK_M).to(tl.float32)
        pivot = tl.sum(tl.where((tl.arange(0, BLOCK_M) == 0)[:, None], acc, 0.0), axis=0)
        shifted = tl.where(m_mask[:, None], acc - pivot[None, :], 0.0)
        tile_mean = tl.sum(shifted, axis=0) / count
        dev = tl.where(m_mask[:, None], shifted - tile_mean[None, :], 0.0)
        part = pid_m.to(tl.int64) * C_out + offs_n
        tl.store(part_pivot_ptr + part, pivot, mask=n_mask)
        tl.store(part_mean_ptr + part, tile_mean, mask=n_mask)
        tl.store(part_m2_ptr + part, tl.sum(dev * dev, axis=0), mask=n_mask)
        first = (pid_m == 0) & (tl.program_id(1) == 0)
        zero_counters(counter_ptr, n_counters, first)
        if COUNT_BATCH:  # BN's num_batches_tracked += 1, once (read by the merge after)
            if first:
                tl.atomic_add(nbt_ptr, 1, sem="relaxed")  # publishes nothing

    v = acc
    if HAS_OUT_AFFINE:
        v = v * tl.load(out_scale_ptr + offs_n, mask=n_mask, other=0.0)[None, :] \
            + tl.load(out_shift_ptr + offs_n, mask=n_mask, other=0.0)[None, :]
    out_offs = offs_m[:, None] * C_out + offs_n[None, :]
    mask = m_mask[:, None] & n_mask[None, :]
    if HAS_RES:
        r = tl.load(res_ptr + out_offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_RES_AFFINE:
            r = r * tl.load(res_scale_ptr + offs_n, mask=n_mask, other=0.0)[None, :] \
                + tl.load(res_shift_ptr + offs_n, mask=n_mask, other=0.0)[None, :]
        v = v + r
    if OUT_RELU:
        v = relu_keep_nan(v)
    tl.store(y_ptr + out_offs, v.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _merge_parts(pivot_ptr, mean_ptr, m2_ptr, count_ptr, base, start, end, rows, C,
                 offs_c, c_mask, ROWS_PER_TILE: tl.constexpr, BLOCK_R: tl.constexpr,
                 BLOCK_C: tl.constexpr, TILES: tl.constexpr):
    """(count, mean relative to ``base``, M2) of parts [start, end), merged in blocks of
    BLOCK_R in order: a block's count, mean and M2 (the parts' M2 plus their spread about
    the block mean) by tl.sum, then Chan's update of the running totals. TILES: the parts
    are conv tiles (pivot + mean, counts from ``rows``), read as written; else groups
    (count, relative mean, M2) of this launch, read through L2 (.cg)."""
    n_a = tl.zeros([BLOCK_C], dtype=tl.float32)
    mean_a = tl.zeros([BLOCK_C], dtype=tl.float32)
    m2_a = tl.zeros([BLOCK_C], dtype=tl.float32)
    for t0 in range(start, end, BLOCK_R):
        offs_t = t0 + tl.arange(0, BLOCK_R).to(tl.int64)
        mask = (offs_t < end)[:, None] & c_mask[None, :]
        at = offs_t[:, None] * C + offs_c[None, :]
        if TILES:
            tile_rows = tl.minimum(rows - offs_t * ROWS_PER_TILE, ROWS_PER_TILE)
            n_b = tl.where(mask, tile_rows.to(tl.float32)[:, None], 0.0)
            mean_b = (tl.load(pivot_ptr + at, mask=mask, other=0.0) - base[None, :]) \
                + tl.load(mean_ptr + at, mask=mask, other=0.0)
            m2_b = tl.load(m2_ptr + at, mask=mask, other=0.0)
        else:
            n_b = tl.load(count_ptr + at, mask=mask, other=0.0, cache_modifier=".cg")
            mean_b = tl.load(mean_ptr + at, mask=mask, other=0.0, cache_modifier=".cg")
            m2_b = tl.load(m2_ptr + at, mask=mask, other=0.0, cache_modifier=".cg")
        n_blk = tl.sum(n_b, axis=0)
        mean_blk = tl.sum(n_b * mean_b, axis=0) / tl.maximum(n_blk, 1.0)
        spread = tl.where(mask, mean_b - mean_blk[None, :], 0.0)
        m2_blk = tl.sum(m2_b + n_b * spread * spread, axis=0)
        n = n_a + n_blk
        w_b = n_blk / tl.maximum(n, 1.0)  # counts are whole: n = 0 only for no parts
        delta = mean_blk - mean_a
        mean_a = mean_a + delta * w_b
        m2_a = m2_a + m2_blk + delta * delta * (n_a * w_b)
        n_a = n
    return n_a, mean_a, m2_a


@triton.jit
def merge_stats_kernel(pivot_ptr, mean_ptr, m2_ptr, group_ptr, counter_ptr, out_mean_ptr,
                       out_m2_ptr, tiles, chunk, rows, C,
                       bn_weight_ptr, bn_bias_ptr, scale_ptr, shift_ptr, invstd_ptr,
                       running_mean_ptr, running_var_ptr, nbt_ptr, count, unbiased_count,
                       momentum, eps, ROWS_PER_TILE: tl.constexpr, TICKET: tl.constexpr,
                       FINALIZE: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                       HAS_BIAS: tl.constexpr, UPDATE: tl.constexpr, HAS_NBT: tl.constexpr,
                       CUMULATIVE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Batch mean and M2 per channel from the conv tiles' (pivot, mean - pivot, M2):
    program (channel block, g) merges tiles [g*chunk, (g+1)*chunk). Means are kept
    relative to tile 0's pivot (pivot differences are exact or tiny), so the merge works
    on numbers of the size of the spread, not of the mean. TICKET: each group stores its
    (count, mean, M2) in group[0|1|2, g, c] and the last group of its channel block to
    arrive merges them in group order; else one group merges every tile.

    FINALIZE: instead of M2, the channel block's BN (scale, shift, invstd) and running
    statistics (bn_finalize); num_batches_tracked was incremented by the conv GEMM
    (COUNT_BATCH), so every channel block reads the same, new count."""
    pid_c = tl.program_id(0)
    offs_c, c_mask = channel_tile(pid_c, C, BLOCK_C)
    g = tl.program_id(1)
    base = tl.load(pivot_ptr + offs_c, mask=c_mask, other=0.0)
    start = g * chunk
    n, mean, m2 = _merge_parts(pivot_ptr, mean_ptr, m2_ptr, mean_ptr, base, start,
                               tl.minimum(tiles, start + chunk), rows, C, offs_c, c_mask,
                               ROWS_PER_TILE, BLOCK_R, BLOCK_C, True)
    done = True
    if TICKET:
        groups = tl.num_programs(1)
        plane = groups.to(tl.int64) * C
        at = g.to(tl.int64) * C + offs_c
        tl.store(group_ptr + at, n, mask=c_mask)
        tl.store(group_ptr + plane + at, mean, mask=c_mask)
        tl.store(group_ptr + 2 * plane + at, m2, mask=c_mask)
        done = last_to_arrive(counter_ptr + pid_c, groups)
        if done:
            _, mean, m2 = _merge_parts(pivot_ptr, group_ptr + plane, group_ptr + 2 * plane,
                                       group_ptr, base, 0, groups, rows, C, offs_c, c_mask,
                                       ROWS_PER_TILE, BLOCK_R, BLOCK_C, False)
    if done:
        mean = base + mean
        tl.store(out_mean_ptr + offs_c, mean, mask=c_mask)
        if FINALIZE:
            factor = momentum
            if UPDATE and HAS_NBT and CUMULATIVE:  # the GEMM has counted this batch
                factor = 1.0 / tl.load(nbt_ptr).to(tl.float32)
            bn_finalize_channels(mean, m2, offs_c, c_mask, bn_weight_ptr, bn_bias_ptr,
                                 scale_ptr, shift_ptr, invstd_ptr, running_mean_ptr,
                                 running_var_ptr, count, unbiased_count, factor,
                                 eps, HAS_WEIGHT, HAS_BIAS, UPDATE)
        else:
            tl.store(out_m2_ptr + offs_c, m2, mask=c_mask)


@triton.jit
def _next_step(k0, j, i, BLOCK: tl.constexpr, k_end, j_end):
    """The step after (i, j, k0) of a flat loop over i, then j < j_end, then channel
    blocks k0 = 0, BLOCK, ... < k_end: counters with carries instead of a division of
    the flat index (an integer division is ~20 instructions on a GPU)."""
    k0 += BLOCK
    wrap = k0 >= k_end
    k0 = tl.where(wrap, 0, k0)
    j = tl.where(wrap, j + 1, j)
    wrap = j >= j_end
    j = tl.where(wrap, 0, j)
    i = tl.where(wrap, i + 1, i)
    return k0, j, i


@triton.jit
def _wrap(v, size):
    """``v`` in [0, 2*size) brought into [0, size), and the carry (1 where it wrapped)."""
    over = v >= size
    return tl.where(over, v - size, v), over.to(v.dtype)


@triton.jit
def _first_tap(base, dilation, stride, K, step):
    """The first tap r of a dim whose output pixel (base - r*dilation) / stride is whole,
    or K when none is (the solutions repeat every ``step`` = stride / gcd taps)."""
    first = K
    for r in range(0, step):
        hit = ((base - r * dilation) % stride == 0) & (r < first) & (r < K)
        first = tl.where(hit, r, first)
    return first


@triton.jit
def conv_dgrad_kernel(
    dz_ptr, y_ptr, a_ptr, b_ptr, c_ptr, w_ptr, dx_ptr, res_ptr,
    prev_y_ptr, prev_scale_ptr, prev_shift_ptr, prev_mean_ptr, prev_invstd_ptr,
    part_ptr, counter_ptr, n_counters,
    N, H, W, C_in, H_out, W_out, C_out, stride, padding, dilation, tap_step,
    KH: tl.constexpr, KW: tl.constexpr, HAS_RES: tl.constexpr, HAS_PREV: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dx[m, n] = sum over taps and C_out of dy[out pixel of (m, tap), k] * w[k, n, tap];
    m = input pixel, n = C_in. dy is rebuilt from (dz, y) as tiles load; w: [C_out, KH,
    KW, C_in] (KRSC, as conv_fwd reads it); dz, y, dx, residual, prev_y: NHWC.

    By stride phase: program_id(2) = (ph, pw) takes the input pixels h = ph (mod stride),
    w = pw (mod stride), which only the taps r = r0, r0 + tap_step, ... reach, each at
    output pixel hq + (ph + padding - r*dilation) / stride: no stride-hole products and no
    per-row division in the K loop; a phase no tap reaches runs no K loop at all."""
    pid_m = tl.program_id(0)
    ph = tl.program_id(2) // stride
    pw = tl.program_id(2) % stride
    h_q = (H - ph + stride - 1) // stride  # this phase's rows and columns per image
    w_q = (W - pw + stride - 1) // stride
    offs_q, m_mask, img, hq, wq = pixel_tile(pid_m, N * h_q * w_q, h_q, w_q, BLOCK_M)
    offs_m = (img * H + hq * stride + ph) * W + wq * stride + pw  # input pixel index
    offs_n, n_mask = channel_tile(tl.program_id(1), C_in, BLOCK_N)
    r0 = _first_tap(ph + padding, dilation, stride, KH, tap_step)
    s0 = _first_tap(pw + padding, dilation, stride, KW, tap_step)
    n_r = (KH - r0 + tap_step - 1) // tap_step
    n_s = (KW - s0 + tap_step - 1) // tap_step

    # Tap r0 + i*tap_step reaches output row h_base - i*tap_shift (exact divisions: r0
    # was chosen so, and tap_step*dilation is a multiple of stride). 32-bit coordinates
    # (fewer registers live across the loop); addresses are 64-bit.
    h_base = hq.to(tl.int32) + (ph + padding - r0 * dilation) // stride
    w_base = wq.to(tl.int32) + (pw + padding - s0 * dilation) // stride
    img = img.to(tl.int32)
    tap_shift = tap_step * dilation // stride

    k_total = KH * KW * C_in
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    i = 0
    j = 0
    k0 = 0
    # Flat (tap, C_out block) loop with carried counters, see conv_fwd.
    for _ in range(0, n_r * n_s * tl.cdiv(C_out, BLOCK_K)):
        r = r0 + i * tap_step
        s = s0 + j * tap_step
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < C_out
        h_o = h_base - i * tap_shift
        w_o = w_base - j * tap_shift
        row_ok = m_mask & (h_o >= 0) & (h_o < H_out) & (w_o >= 0) & (w_o < W_out)
        rows = ((img.to(tl.int64) * H_out + h_o) * W_out + w_o) * C_out
        dy = _load_output_grad(dz_ptr, y_ptr, rows, row_ok, offs_k, k_mask, a_ptr, b_ptr,
                               c_ptr)
        wt = tl.load(w_ptr + offs_k[:, None] * k_total + (r * KW + s) * C_in + offs_n[None, :],
                     mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        acc = tl.dot(dy, wt, acc, input_precision=DOT_PRECISION)
        k0, j, i = _next_step(k0, j, i, BLOCK_K, C_out, n_s)

    out_offs = offs_m[:, None] * C_in + offs_n[None, :]
    mask = m_mask[:, None] & n_mask[None, :]
    if HAS_RES:
        acc += tl.load(res_ptr + out_offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_PREV:
        # The input was relu(prev_y*prev_scale + prev_shift): mask as threshold_backward
        # (a NaN pre-activation lets the gradient through), then BN-backward sums.
        prev_y = tl.load(prev_y_ptr + out_offs, mask=mask, other=0.0).to(tl.float32)
        pre = prev_y * tl.load(prev_scale_ptr + offs_n, mask=n_mask, other=0.0)[None, :] \
            + tl.load(prev_shift_ptr + offs_n, mask=n_mask, other=0.0)[None, :]
        acc = tl.where(pre <= 0, 0.0, acc)
        xhat = (prev_y - tl.load(prev_mean_ptr + offs_n, mask=n_mask, other=0.0)[None, :]) \
            * tl.load(prev_invstd_ptr + offs_n, mask=n_mask, other=0.0)[None, :]
        masked = tl.where(mask, acc, 0.0)
        tile = tl.program_id(2) * tl.num_programs(0) + pid_m
        part = tile.to(tl.int64) * 2 * C_in + offs_n  # part[tile, 0|1, c]
        tl.store(part_ptr + part, tl.sum(masked, axis=0), mask=n_mask)
        tl.store(part_ptr + C_in + part, tl.sum(tl.where(mask, masked * xhat, 0.0), axis=0),
                 mask=n_mask)
        zero_counters(counter_ptr, n_counters, (tile == 0) & (tl.program_id(1) == 0))
    tl.store(dx_ptr + out_offs, acc.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def conv_wgrad_kernel(
    x_ptr, in_scale_ptr, in_shift_ptr, dz_ptr, y_ptr, a_ptr, b_ptr, c_ptr, out_ptr,
    N, H, W, C_in, H_out, W_out, C_out, stride, padding, dilation,
    KH: tl.constexpr, KW: tl.constexpr, HAS_IN_AFFINE: tl.constexpr, IN_RELU: tl.constexpr,
    DOT_PRECISION: tl.constexpr, SPLIT_K: tl.constexpr, OUT_KCRS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dw[k, tap, c] = sum_p dy[p, k] * act[input pixel of (p, tap), c]; program
    (k block, (tap, c block), split) sums the pixel blocks split, split + SPLIT_K, ...
    and writes out[split] in the weight's layout (OUT_KCRS: [C_out, C_in, KH, KW], else
    [C_out, KH, KW, C_in]) and out's dtype: the weight gradient itself when SPLIT_K is 1,
    else fp32 partials that a column sum reduces in split order."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    c_blocks = tl.cdiv(C_in, BLOCK_N)
    tap = pid_n // c_blocks
    r = tap // KW
    s = tap % KW
    offs_m, m_mask = channel_tile(pid_m, C_out, BLOCK_M)  # output channels
    offs_n, n_mask = channel_tile(pid_n % c_blocks, C_in, BLOCK_N)  # input channels
    P = N * H_out * W_out

    # Pixels are decoded once; each step advances them by SPLIT_K*BLOCK_K pixels, as
    # (images, rows, columns) with carries: no division in the K loop. 32-bit
    # coordinates (fewer registers live across the loop); addresses are 64-bit.
    _, _, img, h_o, w_o = pixel_tile(pid_k, P, H_out, W_out, BLOCK_K)
    img, h_o, w_o = img.to(tl.int32), h_o.to(tl.int32), w_o.to(tl.int32)
    step = SPLIT_K * BLOCK_K
    step_w = step % W_out
    step_h = step // W_out % H_out
    step_img = step // (W_out * H_out)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for _ in range(pid_k, tl.cdiv(P, BLOCK_K), SPLIT_K):
        offs_p = (img.to(tl.int64) * H_out + h_o) * W_out + w_o
        p_mask = offs_p < P
        # dy^T tile [C_out, pixels], loaded transposed: rows are channels here.
        dy = tl.trans(_load_output_grad(dz_ptr, y_ptr, offs_p * C_out, p_mask, offs_m,
                                        m_mask, a_ptr, b_ptr, c_ptr))
        h_in = h_o * stride - padding + r * dilation
        w_in = w_o * stride - padding + s * dilation
        row_ok = p_mask & (h_in >= 0) & (h_in < H) & (w_in >= 0) & (w_in < W)
        rows = ((img.to(tl.int64) * H + h_in) * W + w_in) * C_in
        act = _load_activation(x_ptr, rows, row_ok, offs_n, n_mask, in_scale_ptr, in_shift_ptr,
                               HAS_IN_AFFINE, IN_RELU)
        acc = tl.dot(dy, act, acc, input_precision=DOT_PRECISION)
        w_o, carry = _wrap(w_o + step_w, W_out)
        h_o, carry = _wrap(h_o + step_h + carry, H_out)
        img += step_img + carry

    taps = KH * KW
    out_ptr += pid_k.to(tl.int64) * C_out * taps * C_in  # this split's slice
    # 32-bit offsets inside one weight (the launcher checks its size): half the
    # registers of a [BLOCK_M, BLOCK_N] tile of 64-bit ones.
    row = offs_m[:, None] * (taps * C_in)
    if OUT_KCRS:
        offs = row + offs_n[None, :] * taps + tap
    else:
        offs = row + tap * C_in + offs_n[None, :]
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty),
             mask=m_mask[:, None] & n_mask[None, :])


# ---------------------------------------------------------------------------- launchers
_KERNELS = {"conv_fwd": conv_fwd_kernel, "conv_dgrad": conv_dgrad_kernel,
            "conv_wgrad": conv_wgrad_kernel}


def _run_gemm(launch, *args, **constexprs) -> None:
    """Launch a plan's GEMM with its grid, tile constexprs and (GPU) launch options."""
    cfg = launch.config
    launcher(_KERNELS[launch.kernel])[launch.grid](
        *args, **constexprs, **launch.meta, **launch_options(cfg.num_warps, cfg.num_stages))


def _krsc(weight: Tensor, dtype: torch.dtype) -> Tensor:
    """The weight as [C_out, KH, KW, C_in] storage in ``dtype``: no copy when it is
    already channels_last in ``dtype``, else one."""
    return dense(weight.permute(0, 2, 3, 1), dtype)


def conv_fwd(x: Tensor, weight: Tensor, stride: int, padding: int, dilation: int, groups: int,
             in_scale: Tensor | None, in_shift: Tensor | None, in_relu: bool,
             out_scale: Tensor | None, out_shift: Tensor | None, residual: Tensor | None,
             res_scale: Tensor | None, res_shift: Tensor | None, out_relu: bool,
             stats: bool) -> tuple[Tensor, Tensor, Tensor]:
    """See :func:`fused_resnet.reference.conv_fwd`."""
    return _conv_fwd(x, weight, stride, padding, dilation, groups, in_scale, in_shift,
                     in_relu, out_scale, out_shift, residual, res_scale, res_shift, out_relu,
                     stats)


def conv_bn_fwd(x: Tensor, weight: Tensor, stride: int, padding: int, dilation: int,
                groups: int, in_scale: Tensor | None, in_shift: Tensor | None, in_relu: bool,
                bn_weight: Tensor | None, bn_bias: Tensor | None,
                running_mean: Tensor | None, running_var: Tensor | None,
                num_batches_tracked: Tensor | None, momentum: float | None, eps: float,
                update_running_stats: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """See :func:`fused_resnet.reference.conv_bn_fwd`: the statistics merge ends in BN
    finalization, so the unit takes two launches (GEMM, merge) instead of three."""
    check_finalize_args(update_running_stats, running_mean, running_var, momentum,
                        num_batches_tracked)
    bn = dict(weight=bn_weight, bias=bn_bias, running_mean=running_mean,
              running_var=running_var, num_batches_tracked=num_batches_tracked,
              momentum=momentum, eps=eps, update_running_stats=update_running_stats)
    y, mean, *finalized = _conv_fwd(x, weight, stride, padding, dilation, groups, in_scale,
                                    in_shift, in_relu, None, None, None, None, None, False,
                                    True, bn)
    if len(finalized) == 1:  # empty batch: the statistics of nothing, finalized as such
        finalized = bn_finalize(mean, finalized[0], 0, **bn)
    return (y, mean, *finalized)


def _conv_fwd(x: Tensor, weight: Tensor, stride: int, padding: int, dilation: int,
              groups: int, in_scale: Tensor | None, in_shift: Tensor | None, in_relu: bool,
              out_scale: Tensor | None, out_shift: Tensor | None, residual: Tensor | None,
              res_scale: Tensor | None, res_shift: Tensor | None, out_relu: bool,
              stats: bool, bn: dict | None = None) -> tuple[Tensor, ...]:
    """(y, mean, m2), or with ``bn`` (bn_finalize's arguments but the statistics) the merge
    finalizes: (y, mean, scale, shift, invstd); (y, mean, m2) for an empty batch."""
    check_data("conv_fwd", x, groups)
    n, c_in, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    h_out, w_out = (conv_out_size(h, kh, stride, padding, dilation),
                    conv_out_size(w, kw, stride, padding, dilation))
    y = torch.empty((n, c_out, h_out, w_out), dtype=x.dtype, device=x.device,
                    memory_format=torch.channels_last)
    plan = plans.conv_fwd_plan(n, c_in, h_out, w_out, c_out, kh, stride, dtype_class(x.dtype),
                               target_of(x), stats, finalize=bn is not None)
    if not stats:  # two distinct tensors: op outputs must not alias each other
        mean, m2 = (x.new_empty(0, dtype=torch.float32) for _ in range(2))
    if not plan.launches:  # empty batch: the reference's statistics of nothing
        if stats:
            mean = torch.full((c_out,), float("nan"), dtype=torch.float32, device=x.device)
            m2 = torch.zeros(c_out, dtype=torch.float32, device=x.device)
        return _like(y, x), mean, m2
    gemm, *merge = plan.launches
    tiles = gemm.grid[0]
    part = torch.empty((3, tiles, c_out), dtype=torch.float32, device=x.device) if stats else y
    stat = (part[0], part[1], part[2]) if stats else (y, y, y)
    counters = reduction_counters(merge[0], x.device) if stats else None
    count_batch = bn["num_batches_tracked"] if bn and bn["update_running_stats"] else None
    with device_guard(x):
        _run_gemm(gemm, nhwc(x), _krsc(weight, x.dtype), y, vec(in_scale, x), vec(in_shift, x),
                  vec(out_scale, x), vec(out_shift, x),
                  nhwc(residual) if residual is not None else y, vec(res_scale, x),
                  vec(res_shift, x), *stat, *counter_args(counters, y),
                  count_batch if count_batch is not None else y, n, h, w, c_in, h_out,
                  w_out, c_out, stride, padding, dilation, KH=kh, KW=kw,
                  HAS_IN_AFFINE=in_scale is not None, IN_RELU=in_relu,
                  HAS_OUT_AFFINE=out_scale is not None, HAS_RES=residual is not None,
                  HAS_RES_AFFINE=res_scale is not None, OUT_RELU=out_relu, STATS=stats,
                  COUNT_BATCH=count_batch is not None, DOT_PRECISION=dot_precision(x.dtype))
        stats_out = (_merge_stats(merge[0], part, counters, n * h_out * w_out,
                                  gemm.config.block_m, bn) if stats else (mean, m2))
    return (_like(y, x), *stats_out)


def _merge_stats(launch, part: Tensor, counters: Tensor | None, rows: int, block_m: int,
                 bn: dict | None) -> tuple[Tensor, ...]:
    """Run the plan's merge over the per-tile (pivot, mean, M2) buffer ``part[3, tiles, C]``:
    (mean, m2), or with ``bn`` (mean, scale, shift, invstd), the running statistics
    updated."""
    _, tiles, c = part.shape
    # Distinct tensors: op outputs must not share storage.
    outs = [torch.empty(c, dtype=torch.float32, device=part.device)
            for _ in range(2 if bn is None else 4)]
    groups = (torch.empty((3, launch.grid[1], c), dtype=torch.float32, device=part.device)
              if launch.meta["TICKET"] else part)
    bn = bn or {}
    update = bn.get("update_running_stats", False)
    momentum = bn.get("momentum")

    def ptr(t: Tensor | None) -> Tensor:
        return t if t is not None else part  # absent: never read (a flag says so)

    mean, m2_or_scale, *rest = outs
    scale_shift_invstd = (m2_or_scale, *rest) if bn else (part, part, part)
    launcher(merge_stats_kernel)[launch.grid](
        part[0], part[1], part[2], groups, ptr(counters), mean,
        part if bn else m2_or_scale, tiles, launch.meta["chunk"], rows, c,
        ptr(bn.get("weight")), ptr(bn.get("bias")), *scale_shift_invstd,
        ptr(bn.get("running_mean") if update else None),
        ptr(bn.get("running_var") if update else None),
        ptr(bn.get("num_batches_tracked") if update else None), float(rows),
        float(max(rows - 1, 1)), float(momentum) if momentum is not None else 0.0,
        float(bn.get("eps", 0.0)), ROWS_PER_TILE=block_m, TICKET=launch.meta["TICKET"],
        FINALIZE=launch.meta["FINALIZE"], HAS_WEIGHT=bn.get("weight") is not None,
        HAS_BIAS=bn.get("bias") is not None, UPDATE=update,
        HAS_NBT=update and bn.get("num_batches_tracked") is not None,
        CUMULATIVE=momentum is None, BLOCK_R=launch.meta["BLOCK_R"],
        BLOCK_C=launch.meta["BLOCK_C"], **launch_options(launch.num_warps))
    return tuple(outs)


def _like(out: Tensor, main: Tensor) -> Tensor:
    """``out`` (channels_last) in the memory format of the op's main input."""
    from ..reference import memory_format
    return out.contiguous(memory_format=memory_format(main))


def conv_bwd_data(dz: Tensor, y: Tensor, a: Tensor, b: Tensor, c: Tensor, weight: Tensor,
                  input_size: list[int], stride: int, padding: int, dilation: int, groups: int,
                  residual: Tensor | None, prev_y: Tensor | None, prev_scale: Tensor | None,
                  prev_shift: Tensor | None, prev_mean: Tensor | None,
                  prev_invstd: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """See :func:`fused_resnet.reference.conv_bwd_data`."""
    return _conv_bwd_data(dz, y, a, b, c, weight, input_size, stride, padding, dilation,
                          groups, residual, prev_y, prev_scale, prev_shift, prev_mean,
                          prev_invstd)


def conv_bwd_data_bn(dz: Tensor, y: Tensor, a: Tensor, b: Tensor, c: Tensor, weight: Tensor,
                     input_size: list[int], stride: int, padding: int, dilation: int,
                     groups: int, prev_y: Tensor, prev_scale: Tensor, prev_shift: Tensor,
                     prev_mean: Tensor, prev_invstd: Tensor, prev_count: int,
                     prev_batch_stats: bool, prev_weight: Tensor | None,
                     prev_bias: Tensor | None) -> tuple[Tensor, ...]:
    """See :func:`fused_resnet.reference.conv_bwd_data_bn`: the sums' reduction ends in the
    previous BN's backward, so no bn_backward launch follows."""
    bn = (prev_count, prev_scale, prev_mean, prev_invstd, prev_batch_stats, prev_weight,
          prev_bias)
    dx, *outs = _conv_bwd_data(dz, y, a, b, c, weight, input_size, stride, padding, dilation,
                               groups, None, prev_y, prev_scale, prev_shift, prev_mean,
                               prev_invstd, bn)
    if len(outs) == 2:  # empty batch: the sums of nothing, then BN backward of them
        outs = bn_backward(*outs, *bn)
    return (dx, *outs)


def _conv_bwd_data(dz: Tensor, y: Tensor, a: Tensor, b: Tensor, c: Tensor, weight: Tensor,
                   input_size: list[int], stride: int, padding: int, dilation: int,
                   groups: int, residual: Tensor | None, prev_y: Tensor | None,
                   prev_scale: Tensor | None, prev_shift: Tensor | None,
                   prev_mean: Tensor | None, prev_invstd: Tensor | None,
                   bn: tuple | None = None) -> tuple[Tensor, ...]:
    """(dx, sum_dx, sum_dx_xhat); with ``bn`` (the previous BN's bn_backward arguments
    but the sums) the sums' reduction ends in its backward: (dx, a, b, c, dweight,
    dbias), or (dx, sums) for an empty batch."""
    check_data("conv_bwd_data", dz, groups)
    n, c_out, h_out, w_out = dz.shape
    _, c_in, h, w = input_size
    kh = weight.shape[2]
    dx = torch.empty((n, c_in, h, w), dtype=dz.dtype, device=dz.device,
                     memory_format=torch.channels_last)
    has_prev = prev_y is not None
    plan = plans.conv_dgrad_plan(n, c_in, h, w, c_out, kh, stride, dtype_class(dz.dtype),
                                 target_of(dz), has_prev, bn=bn is not None)
    if not plan.launches:
        sums = (dz.new_zeros(c_in if has_prev else 0, dtype=torch.float32) for _ in range(2))
        return (_like(dx, dz), *sums)
    gemm, *sums = plan.launches
    part = (torch.empty((gemm.grid[0] * gemm.grid[2], 2 * c_in), dtype=torch.float32,
                        device=dz.device) if has_prev else dx)
    counters = reduction_counters(sums[0], dz.device) if has_prev else None
    with device_guard(dz):
        _run_gemm(gemm, nhwc(dz), nhwc(y), vec(a, dz), vec(b, dz), vec(c, dz),
                  _krsc(weight, dz.dtype), dx, nhwc(residual) if residual is not None else dx,
                  nhwc(prev_y) if has_prev else dx, vec(prev_scale, dx), vec(prev_shift, dx),
                  vec(prev_mean, dx), vec(prev_invstd, dx), part,
                  *counter_args(counters, dx), n, h, w, c_in, h_out,
                  w_out, c_out, stride, padding, dilation, stride // math.gcd(stride, dilation),
                  KH=kh, KW=weight.shape[3], HAS_RES=residual is not None, HAS_PREV=has_prev,
                  DOT_PRECISION=dot_precision(dz.dtype))
    # part[tile, i*c_in + c]: the two sums as planes c_in apart, rows 2*c_in apart.
    planes = part.view(-1, 2, c_in).transpose(0, 1) if has_prev else None
    if bn is not None:
        outs = bn_backward_sums(sums[0], planes, 2 * c_in, counters, bn, None)[:5]
    elif has_prev:
        with device_guard(dz):
            outs = column_sums(planes, sums[0], counters=counters)
    else:  # two distinct tensors: op outputs must not alias each other
        outs = [dz.new_empty(0, dtype=torch.float32) for _ in range(2)]
    return (_like(dx, dz), *outs)


def conv_bwd_weight(x: Tensor, in_scale: Tensor | None, in_shift: Tensor | None, in_relu: bool,
                    dz: Tensor, y: Tensor, a: Tensor, b: Tensor, c: Tensor, weight: Tensor,
                    stride: int, padding: int, dilation: int, groups: int) -> Tensor:
    """See :func:`fused_resnet.reference.conv_bwd_weight`."""
    check_data("conv_bwd_weight", x, groups)
    if dz.dtype != x.dtype:  # both feed one tl.dot
        raise NotImplementedError(f"fused_resnet triton conv_bwd_weight: x is {x.dtype} but "
                                  f"dz is {dz.dtype}")
    if weight.numel() >= 2**31:
        raise NotImplementedError("fused_resnet triton conv_bwd_weight: weights of 2**31 "
                                  "or more elements are not supported")
    n, c_in, h, w = x.shape
    _, c_out, h_out, w_out = dz.shape
    kh, kw = weight.shape[2], weight.shape[3]
    target = target_of(x)
    gemm, *sums = plans.conv_wgrad_plan(n, c_in, c_out, h_out, w_out, kh, stride,
                                              dtype_class(x.dtype), target).launches
    # In the weight's own dtype and memory format, as the fake kernel says; written by the
    # GEMM (no split) or the last column-sum level, in that layout.
    dw = torch.empty_like(weight)
    layout = plans.weight_grad_layout(weight)
    out = dw if layout is not None else torch.empty_like(dw, memory_format=torch.channels_last)
    split = gemm.meta["SPLIT_K"]
    part = out if split == 1 else torch.empty((split, out.numel()), dtype=torch.float32,
                                              device=x.device)
    with device_guard(x):
        _run_gemm(gemm, nhwc(x), vec(in_scale, x), vec(in_shift, x), nhwc(dz), nhwc(y),
                  vec(a, x), vec(b, x), vec(c, x), part,
                  n, h, w, c_in, h_out, w_out, c_out, stride, padding, dilation,
                  KH=kh, KW=kw, HAS_IN_AFFINE=in_scale is not None, IN_RELU=in_relu,
                  OUT_KCRS=layout == "kcrs", DOT_PRECISION=dot_precision(x.dtype))
        if split > 1:
            column_sums(part[None], sums[0], outs=[out])
    return dw if layout is not None else dw.copy_(out)
