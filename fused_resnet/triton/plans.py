"""Launch plans of the Triton ops: pure functions of shapes, dtype class and target.

The launchers in ``conv.py`` and ``elementwise.py`` execute these plans (kernel, grid,
tile config, reduction levels); tests check their structure at ResNet-50 shapes without
a GPU. Needs neither triton nor a device.
"""

from __future__ import annotations

from ..launch_plan import Launch, OpPlan, Target
from . import configs
from .configs import INTERPRETER_TARGET, MAX_SERIAL_STEPS, TileConfig


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _interpreting(target: Target) -> bool:
    return target is INTERPRETER_TARGET


def _reduce_tile(target: Target, gpu: tuple[int, int, int] = configs.REDUCE_GPU
                 ) -> tuple[int, int, int]:
    return configs.forced_value("reduce") or (
        configs.REDUCE_INTERPRETER if _interpreting(target) else gpu)


def _elementwise_tile(target: Target) -> tuple[int, int, int]:
    return configs.forced_value("elementwise") or (
        configs.ELEMENTWISE_INTERPRETER if _interpreting(target) else configs.ELEMENTWISE_GPU)


def _two_waves(warps: int, target: Target) -> int:
    """Programs of ``warps`` warps that fill two waves (thread-bound residency; the
    interpreter runs one program at a time per 'SM')."""
    per_sm = 1 if _interpreting(target) else 2048 // (32 * warps)
    return 2 * target.sms * per_sm


def _ticket_groups(parts: int, block_r: int, programs_per_group: int,
                   target: Target, warps: int) -> tuple[int, int]:
    """(groups, parts per group) of one reduction launch: one group when a single step
    covers the parts, else enough groups for two waves (of MIN_GROUP_PARTS parts at
    least), with a group's parts and the last program's merge of the groups at most
    MAX_SERIAL_STEPS steps of ``block_r`` rows together."""
    if parts <= block_r:
        return 1, max(parts, 1)
    min_parts = 1 if _interpreting(target) else configs.MIN_GROUP_PARTS
    chunk = max(min_parts, parts // cdiv(_two_waves(warps, target), programs_per_group))
    while cdiv(chunk, block_r) + cdiv(cdiv(parts, chunk), block_r) > MAX_SERIAL_STEPS:
        chunk *= 2
    return cdiv(parts, chunk), chunk


def _scratch_rows(groups: int) -> int:
    """Rows of group results a ticketed reduction writes and its last programs read."""
    return 2 * groups if groups > 1 else 0


def _reduction_steps(chunk: int, groups: int, block_r: int) -> int:
    """Dependent steps of a reduction program: its group's rows, then (the last to arrive)
    the groups' results."""
    return max(1, cdiv(chunk, block_r) + (cdiv(groups, block_r) if groups > 1 else 0))


def _reduce_layout(rows: int, cols: int, programs_per_group: int, target: Target,
                   ticket: bool) -> tuple[int, int, int, int, int]:
    """(BLOCK_R, BLOCK_C, warps, groups, chunk) of a reduction over ``rows`` of ``cols``
    columns (``programs_per_group`` programs per group and column block): the default tile,
    or the first narrower one whose grid fills two waves (else the narrowest); groups
    (``ticket``) or one group walking every row."""
    tiles = [_reduce_tile(target)]
    if not (_interpreting(target) or configs.forced_value("reduce")):
        tiles += [(r, c, tiles[0][2]) for r, c in configs.REDUCE_NARROW_GPU]
    for block_r, block_c, warps in tiles:
        groups, chunk = (_ticket_groups(rows, block_r, cdiv(cols, block_c) * programs_per_group,
                                        target, warps) if ticket else (1, max(rows, 1)))
        programs = cdiv(cols, block_c) * programs_per_group * groups
        if programs >= _two_waves(warps, target):
            break
    if not ticket and rows > MAX_SERIAL_STEPS * block_r:
        raise ValueError(f"a column sum over {rows} rows needs the ticketed launch")
    return block_r, block_c, warps, groups, chunk


def column_sum_launch(rows: int, cols: int, target: Target, batch: int = 1,
                      ticket: bool = True) -> Launch:
    """One launch summing the rows of ``batch`` [rows, cols] fp32 buffers (batch <= 3):
    programs add [BLOCK_R, BLOCK_C] tiles with tl.sum, in row order, over their group of
    rows; with ``ticket`` (the producer clears the counters) the groups spread over two
    waves and the last of each column block to finish adds the group sums in order, else
    one group walks every row (rows of few, long columns: wgrad's split-K slices).
    Deterministic: the order depends only on the shape."""
    block_r, block_c, warps, groups, chunk = _reduce_layout(rows, cols, batch, target, ticket)
    col_blocks = cdiv(cols, block_c)
    return Launch("column_sum", (col_blocks, groups, batch), warps,
                  meta={"chunk": chunk, "BLOCK_R": block_r, "BLOCK_C": block_c,
                        "TICKET": groups > 1,
                        "counters": col_blocks * batch if groups > 1 else 0},
                  bytes=4 * (rows + _scratch_rows(groups) + 1) * cols * batch,
                  flops=rows * cols * batch,
                  serial_steps=_reduction_steps(chunk, groups, block_r))


def merge_stats_launch(tiles: int, channels: int, target: Target,
                       finalize: bool = False) -> Launch:
    """Merge of per-tile (pivot, mean, M2) in one launch: each program merges its group of
    tiles in [BLOCK_R, BLOCK_C] blocks (a block's totals by tl.sum, then Chan's update);
    with more than one group (spread over two waves), the last of each channel block to
    finish merges the group results in group order (the producer clears the counters).
    ``finalize``: it ends in BN finalization."""
    block_r, block_c, warps = _reduce_tile(target, configs.MERGE_GPU)
    col_blocks = cdiv(channels, block_c)
    groups, chunk = _ticket_groups(tiles, block_r, col_blocks, target, warps)
    return Launch("merge_stats", (col_blocks, groups), warps,
                  meta={"chunk": chunk, "BLOCK_R": block_r, "BLOCK_C": block_c,
                        "TICKET": groups > 1, "FINALIZE": finalize,
                        "counters": col_blocks if groups > 1 else 0},
                  bytes=4 * (3 * (tiles + _scratch_rows(groups)) + (10 if finalize else 2))
                  * channels,
                  flops=10 * tiles * channels,
                  serial_steps=_reduction_steps(chunk, groups, block_r))


def _gemm(kernel: str, grid: tuple[int, ...], cfg: TileConfig, kind: str, dtype_class: str,
          flops: int, nbytes: int, steps: int, **meta) -> Launch:
    return Launch(kernel, grid, cfg.num_warps, cfg, {**cfg.meta(), **meta},
                  configs.smem_estimate(kind, cfg, dtype_class), nbytes, flops, steps)


def conv_fwd_plan(n: int, c_in: int, h_out: int, w_out: int, c_out: int, k: int, stride: int,
                  dtype_class: str, target: Target, stats: bool,
                  residual: bool = False, finalize: bool = False) -> OpPlan:
    """conv_fwd's GEMM and statistics merge; ``finalize``: conv_bn_fwd's (the merge ends
    in BN finalization)."""
    cfg = configs.choose("fwd", target, dtype_class, c_in, c_out, k, stride)
    rows = n * h_out * w_out
    if rows == 0:  # nothing to compute; empty statistics are filled on the host side
        return OpPlan("conv_fwd", ())
    es = configs.elem_bytes(dtype_class)
    tiles = cdiv(rows, cfg.block_m)
    steps = k * k * cdiv(c_in, cfg.block_k)
    gemm = _gemm("conv_fwd", (tiles, cdiv(c_out, cfg.block_n)), cfg, "fwd", dtype_class,
                 2 * rows * c_out * k * k * c_in,
                 es * (rows * (c_in * stride * stride + c_out * (2 if residual else 1))
                       + c_out * k * k * c_in), steps)
    merge = [merge_stats_launch(tiles, c_out, target, finalize)] if stats else []
    return OpPlan("conv_bn_fwd" if finalize else "conv_fwd", (gemm, *merge))


def conv_dgrad_plan(n: int, c_in: int, h: int, w: int, c_out: int, k: int, stride: int,
                    dtype_class: str, target: Target, has_prev: bool,
                    residual: bool = False, bn: bool = False) -> OpPlan:
    """conv_bwd_data's GEMM and the previous BN's sums; ``bn``: conv_bwd_data_bn's (the
    sums' reduction ends in that BN's backward)."""
    cfg = configs.choose("dgrad", target, dtype_class, c_in, c_out, k, stride)
    rows = n * h * w
    if rows == 0:
        return OpPlan("conv_bwd_data", ())
    es = configs.elem_bytes(dtype_class)
    # One grid slice per stride phase, sized by the largest (phase 0); dilation 1 here:
    # a phase is reached by every stride-th tap of each dim.
    phase_tiles = cdiv(n * cdiv(h, stride) * cdiv(w, stride), cfg.block_m)
    tiles = phase_tiles * stride * stride
    steps = cdiv(k, stride) ** 2 * cdiv(c_out, cfg.block_k)
    out_rows = cdiv(rows, stride * stride)
    gemm = _gemm("conv_dgrad", (phase_tiles, cdiv(c_in, cfg.block_n), stride * stride), cfg,
                 "dgrad", dtype_class, 2 * out_rows * c_out * k * k * c_in,
                 es * (2 * out_rows * c_out + c_out * k * k * c_in
                       + rows * c_in * (1 + (2 if has_prev else 0) + (1 if residual else 0))),
                 steps)
    if bn:
        sums = [bn_backward_sums_launch(tiles, c_in, target, False)]
    else:
        sums = [column_sum_launch(tiles, c_in, target, 2)] if has_prev else []  # sum, sum*xhat
    return OpPlan("conv_bwd_data_bn" if bn else "conv_bwd_data", (gemm, *sums))


def conv_wgrad_plan(n: int, c_in: int, c_out: int, h_out: int, w_out: int, k: int, stride: int,
                    dtype_class: str, target: Target) -> OpPlan:
    cfg = configs.choose("wgrad", target, dtype_class, c_in, c_out, k, stride)
    pixels = n * h_out * w_out
    tiles = cdiv(c_out, cfg.block_m) * k * k * cdiv(c_in, cfg.block_n)
    split = (configs.forced_value("split_k")
             or configs.split_k_for(pixels, tiles, cfg.block_k, target.sms))
    es = configs.elem_bytes(dtype_class)
    cols = c_out * k * k * c_in
    gemm = _gemm("conv_wgrad", (cdiv(c_out, cfg.block_m), k * k * cdiv(c_in, cfg.block_n),
                                split), cfg, "wgrad", dtype_class, 2 * pixels * cols,
                 es * pixels * (2 * c_out + c_in * stride * stride) + 4 * split * cols,
                 cdiv(cdiv(pixels, cfg.block_k), split), SPLIT_K=split)
    sums = [column_sum_launch(split, cols, target, ticket=False)] if split > 1 else []
    return OpPlan("conv_bwd_weight", (gemm, *sums))


def block_end_plan(rows: int, channels: int, dtype_class: str, target: Target) -> OpPlan:
    block_r, block_c, warps = _elementwise_tile(target)
    es = configs.elem_bytes(dtype_class)
    return OpPlan("block_end", (Launch(
        "block_end", (cdiv(rows, block_r), cdiv(channels, block_c)), warps,
        meta={"BLOCK_R": block_r, "BLOCK_C": block_c}, bytes=3 * es * rows * channels,
        flops=4 * rows * channels),))


def block_end_bwd_plan(rows: int, channels: int, dtype_class: str, target: Target,
                       has_d: bool) -> OpPlan:
    block_r, block_c, warps = _elementwise_tile(target)
    es = configs.elem_bytes(dtype_class)
    tiles = cdiv(rows, block_r)
    main = Launch("block_end_bwd", (tiles, cdiv(channels, block_c)), warps,
                  meta={"BLOCK_R": block_r, "BLOCK_C": block_c},
                  bytes=es * rows * channels * (5 if has_d else 4), flops=8 * rows * channels)
    sums = column_sum_launch(tiles, channels, target, 3 if has_d else 2)
    return OpPlan("block_end_bwd", (main, sums))


def bn_backward_sums_launch(rows: int, channels: int, target: Target, has_d: bool) -> Launch:
    """block_end_bwd_bn's reduction: the 2 (3 with a projection) sums of
    :func:`column_sum_launch` in each program (one row loop), in groups over two waves
    (the last to arrive adds the groups' sums), ending in BN backward of the channel
    block."""
    block_r, block_c, warps, groups, chunk = _reduce_layout(rows, channels, 1, target, True)
    col_blocks = cdiv(channels, block_c)
    planes = 3 if has_d else 2
    return Launch("bn_backward_sums", (col_blocks, groups), warps,
                  meta={"rows": rows, "chunk": chunk, "BLOCK_R": block_r, "BLOCK_C": block_c,
                        "TICKET": groups > 1, "counters": col_blocks if groups > 1 else 0},
                  bytes=4 * (planes * (rows + _scratch_rows(groups)) + 10 * (planes - 1))
                  * channels, flops=planes * rows * channels,
                  serial_steps=_reduction_steps(chunk, groups, block_r))


def block_end_bwd_bn_plan(rows: int, channels: int, dtype_class: str, target: Target,
                          has_d: bool) -> OpPlan:
    main = block_end_bwd_plan(rows, channels, dtype_class, target, has_d).launches[0]
    return OpPlan("block_end_bwd_bn",
                  (main, bn_backward_sums_launch(main.grid[0], channels, target, has_d)))


def bn_finalize_plan(channels: int, target: Target) -> OpPlan:
    """One program walking the channel blocks: it reads num_batches_tracked, waits for
    every thread (a barrier), then stores the increment, so no thread can read the new
    value (momentum=None uses it)."""
    block_c = 128 if _interpreting(target) else 1024
    return OpPlan("bn_finalize", (Launch(
        "bn_finalize", (1,), 4, meta={"BLOCK_C": block_c}, bytes=4 * 8 * channels,
        flops=10 * channels, serial_steps=cdiv(channels, block_c)),))


def bn_backward_plan(channels: int, target: Target) -> OpPlan:
    """One launch: BN backward's (a, b, c) and parameter gradients of every channel."""
    _, block_c, warps = _reduce_tile(target)
    return OpPlan("bn_backward", (Launch(
        "bn_backward", (cdiv(channels, block_c),), warps, meta={"BLOCK_C": block_c},
        bytes=4 * 10 * channels, flops=8 * channels),))


def weight_grad_layout(weight) -> str | None:
    """How the weight gradient (``torch.empty_like(weight)``, as the fake kernel makes it)
    lies in memory: "kcrs" (contiguous), "krsc" (channels_last), None for any other
    order (then it is computed channels_last and copied)."""
    import torch

    dw = torch.empty_like(weight, device="meta")
    if dw.is_contiguous():
        return "kcrs"
    if dw.is_contiguous(memory_format=torch.channels_last):
        return "krsc"
    return None


# ------------------------------------------------------------------ plans of op calls
def _copy(what: str, numel: int, es_in: int, es_out: int) -> list[Launch]:
    """A copy the launcher makes with torch (a layout or dtype change); none of nothing."""
    if numel == 0:
        return []
    return [Launch(f"copy:{what}", (cdiv(numel, 4 * 128),), 4, meta={"numel": numel},
                   bytes=numel * (es_in + es_out), serial_steps=1)]


def _fill(what: str, numel: int) -> list[Launch]:
    """A fill the launcher makes with torch (statistics of an empty batch)."""
    if numel == 0:
        return []
    return [Launch(f"fill:{what}", (cdiv(numel, 4 * 128),), 4, meta={"numel": numel},
                   bytes=4 * numel, serial_steps=1)]


def _nhwc(name: str, t) -> list[Launch]:
    """``_common.nhwc``: a copy unless the 4-D tensor is dense channels_last."""
    import torch

    if t is None or t.is_contiguous(memory_format=torch.channels_last):
        return []
    return _copy(name, t.numel(), t.dtype.itemsize, t.dtype.itemsize)


def _vec(name: str, t) -> list[Launch]:
    """``_common.vec``: a copy unless the vector is a contiguous fp32 one."""
    import torch

    if t is None or (t.dtype == torch.float32 and t.is_contiguous()):
        return []
    return _copy(name, t.numel(), t.dtype.itemsize, 4)


def _vecs(**named) -> list[Launch]:
    return [copy for name, t in named.items() for copy in _vec(name, t)]


def _krsc(weight, dtype) -> list[Launch]:
    """``conv._krsc``: none when the weight is already KRSC (channels_last) in ``dtype``."""
    import torch

    if weight.dtype == dtype and weight.is_contiguous(memory_format=torch.channels_last):
        return []
    return _copy("weight", weight.numel(), weight.dtype.itemsize, dtype.itemsize)


def _like(name: str, shape, like) -> list[Launch]:
    """``_like``: the channels_last result copied into the memory format of the op's
    main input (reference.memory_format)."""
    import torch

    from ..reference import memory_format

    out = torch.empty(shape, dtype=like.dtype, device="meta",
                      memory_format=torch.channels_last)
    if out.is_contiguous(memory_format=memory_format(like)):
        return []
    return _copy(name, out.numel(), like.dtype.itemsize, like.dtype.itemsize)


def _conv_fwd_shape(x, weight, stride: int, padding: int, dilation: int) -> tuple:
    """(N, C_in, C_out, kernel, [H_out, W_out]) of a forward conv."""
    n, c_in, h, w = x.shape
    c_out, _, kh, _ = weight.shape
    size = [(s + 2 * padding - dilation * (kh - 1) - 1) // stride + 1 for s in (h, w)]
    return n, c_in, c_out, kh, size


def _conv_fwd_stage(x, weight, in_scale, in_shift) -> list[Launch]:
    """The copies of a forward conv's launcher before its GEMM's own arguments."""
    return (_nhwc("x", x) + _krsc(weight, x.dtype)
            + _vecs(in_scale=in_scale, in_shift=in_shift))


def _dgrad_stage(dz, y, a, b, c, weight, residual, prev_y, prev_scale, prev_shift, prev_mean,
                 prev_invstd) -> list[Launch]:
    """The copies of a dgrad launcher before its GEMM."""
    return (_nhwc("dz", dz) + _nhwc("y", y) + _vecs(a=a, b=b, c=c) + _krsc(weight, dz.dtype)
            + _nhwc("residual", residual) + _nhwc("prev_y", prev_y)
            + _vecs(prev_scale=prev_scale, prev_shift=prev_shift, prev_mean=prev_mean,
                    prev_invstd=prev_invstd))


def _block_end_bwd_stage(d_out, out, y, mean, invstd, y_d, mean_d, invstd_d) -> list[Launch]:
    """The copies of block_end_bwd's launcher before its kernel."""
    return (_nhwc("d_out", d_out) + _nhwc("out", out) + _nhwc("y", y)
            + _vecs(mean=mean, invstd=invstd) + _nhwc("y_d", y_d)
            + _vecs(mean_d=mean_d, invstd_d=invstd_d))


def _dtype_class(dtype) -> str:
    import torch

    return "fp32" if dtype == torch.float32 else "16bit"


def op_plan(op: str, args: tuple, target: Target) -> OpPlan:
    """Everything the launcher of Triton op ``op`` sends to the device for these arguments
    (the op's own positional arguments; tensors may be fake or meta: only shapes, dtypes,
    memory formats and presence are read): the plan's kernels plus the copies and fills
    the launcher makes with torch, in launch order."""
    if op == "conv_fwd":
        (x, weight, stride, padding, dilation, _, in_scale, in_shift, _, out_scale, out_shift,
         residual, res_scale, res_shift, _, stats) = args
        n, c_in, c_out, kh, size = _conv_fwd_shape(x, weight, stride, padding, dilation)
        plan = conv_fwd_plan(n, c_in, *size, c_out, kh, stride, _dtype_class(x.dtype), target,
                             stats, residual is not None)
        out = _like("y", (n, c_out, *size), x)
        if not plan.launches:  # empty batch: the statistics of nothing, filled by torch
            return OpPlan(op, (*(_fill("mean", c_out) + _fill("m2", c_out) if stats else []),
                               *out))
        stage = (_conv_fwd_stage(x, weight, in_scale, in_shift)
                 + _vecs(out_scale=out_scale, out_shift=out_shift)
                 + _nhwc("residual", residual) + _vecs(res_scale=res_scale, res_shift=res_shift))
        return OpPlan(op, (*stage, *plan, *out))
    if op == "conv_bn_fwd":
        x, weight, stride, padding, dilation, _, in_scale, in_shift = args[:8]
        n, c_in, c_out, kh, size = _conv_fwd_shape(x, weight, stride, padding, dilation)
        plan = conv_fwd_plan(n, c_in, *size, c_out, kh, stride, _dtype_class(x.dtype), target,
                             True, finalize=True)
        out = _like("y", (n, c_out, *size), x)
        if not plan.launches:  # empty batch: the statistics of nothing, then bn_finalize
            return OpPlan(op, (*_fill("mean", c_out), *_fill("m2", c_out), *out,
                               *bn_finalize_plan(c_out, target)))
        return OpPlan(op, (*_conv_fwd_stage(x, weight, in_scale, in_shift), *plan, *out))
    if op == "conv_bwd_data":
        (dz, y, a, b, c, weight, input_size, stride, _, _, _, residual, prev_y, prev_scale,
         prev_shift, prev_mean, prev_invstd) = args
        n, c_in, h, w = input_size
        has_prev = prev_y is not None
        plan = conv_dgrad_plan(n, c_in, h, w, dz.shape[1], weight.shape[2], stride,
                               _dtype_class(dz.dtype), target, has_prev,
                               residual is not None)
        out = _like("dx", (n, c_in, h, w), dz)
        if not plan.launches:
            sums = _fill("sum_dx", c_in) + _fill("sum_dx_xhat", c_in) if has_prev else []
            return OpPlan(op, (*sums, *out))
        stage = _dgrad_stage(dz, y, a, b, c, weight, residual, prev_y, prev_scale, prev_shift,
                             prev_mean, prev_invstd)
        return OpPlan(op, (*stage, *plan, *out))
    if op == "conv_bwd_data_bn":
        (dz, y, a, b, c, weight, input_size, stride, _, _, _, prev_y, prev_scale, prev_shift,
         prev_mean, prev_invstd) = args[:16]
        n, c_in, h, w = input_size
        plan = conv_dgrad_plan(n, c_in, h, w, dz.shape[1], weight.shape[2], stride,
                               _dtype_class(dz.dtype), target, True, bn=True)
        out = _like("dx", (n, c_in, h, w), dz)
        vectors = _vecs(scale=prev_scale, mean=prev_mean, invstd=prev_invstd)
        if not plan.launches:  # empty batch: zero sums, then BN backward of them
            return OpPlan(op, (*out, *_fill("sum_dx", c_in), *_fill("sum_dx_xhat", c_in),
                               *vectors, *bn_backward_plan(c_in, target)))
        stage = _dgrad_stage(dz, y, a, b, c, weight, None, prev_y, prev_scale, prev_shift,
                             prev_mean, prev_invstd)
        gemm, sums = plan.launches
        return OpPlan(op, (*stage, gemm, *vectors, sums, *out))
    if op == "conv_bwd_weight":
        x, in_scale, in_shift, _, dz, y, a, b, c, weight, stride = args[:11]
        n, c_in, _, _ = x.shape
        _, c_out, h_out, w_out = dz.shape
        plan = conv_wgrad_plan(n, c_in, c_out, h_out, w_out, weight.shape[2], stride,
                               _dtype_class(x.dtype), target)
        stage = (_nhwc("x", x) + _vecs(in_scale=in_scale, in_shift=in_shift) + _nhwc("dz", dz)
                 + _nhwc("y", y) + _vecs(a=a, b=b, c=c))
        # Written in the weight's own layout, unless that is neither KCRS nor KRSC.
        es = weight.dtype.itemsize
        out = [] if weight_grad_layout(weight) else _copy("dw", weight.numel(), es, es)
        return OpPlan(op, (*stage, *plan, *out))
    if op == "block_end":
        y, scale, shift, residual, res_scale, res_shift = args[:6]
        n, c, h, w = y.shape
        stage = (_nhwc("y", y) + _vecs(scale=scale, shift=shift) + _nhwc("residual", residual)
                 + _vecs(res_scale=res_scale, res_shift=res_shift))
        plan = block_end_plan(n * h * w, c, _dtype_class(y.dtype), target)
        return OpPlan(op, (*stage, *plan, *_like("out", y.shape, y)))
    if op == "block_end_bwd":
        d_out, out_t, y, mean, invstd, y_d, mean_d, invstd_d = args[:8]
        n, c, h, w = d_out.shape
        stage = _block_end_bwd_stage(d_out, out_t, y, mean, invstd, y_d, mean_d, invstd_d)
        plan = block_end_bwd_plan(n * h * w, c, _dtype_class(d_out.dtype), target,
                                  y_d is not None)
        return OpPlan(op, (*stage, *plan, *_like("dz", d_out.shape, d_out)))
    if op == "block_end_bwd_bn":
        d_out, out_t, y, mean, invstd, y_d, mean_d, invstd_d, _, scale, _, _, _, _, scale_d = \
            args[:15]
        n, c, h, w = d_out.shape
        stage = _block_end_bwd_stage(d_out, out_t, y, mean, invstd, y_d, mean_d, invstd_d)
        plan = block_end_bwd_bn_plan(n * h * w, c, _dtype_class(d_out.dtype), target,
                                     y_d is not None)
        vectors = _vecs(scale=scale, mean=mean, invstd=invstd)
        if y_d is not None:
            vectors += _vecs(scale_d=scale_d, mean_d=mean_d, invstd_d=invstd_d)
        return OpPlan(op, (*stage, plan.launches[0], *vectors, plan.launches[1],
                           *_like("dz", d_out.shape, d_out)))
    if op == "bn_finalize":
        return bn_finalize_plan(args[0].shape[0], target)
    if op == "bn_backward":
        sum_dz, sum_dz_xhat, _, scale, mean, invstd = args[:6]
        stage = _vecs(sum_dz=sum_dz, sum_dz_xhat=sum_dz_xhat, scale=scale, mean=mean,
                      invstd=invstd)
        return OpPlan(op, (*stage, *bn_backward_plan(scale.shape[0], target)))
    raise ValueError(f"unknown op {op!r}")
