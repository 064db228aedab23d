"""Plain PyTorch semantics of every fused op: the oracle for all tests and the
``"reference"`` backend.

Conventions shared by every backend (docs/design.md §1):

* Tensors are logical NCHW; any memory format is accepted, and an op's output keeps
  the memory format of its main input.
* Per-channel vectors (scale, shift, mean, m2, invstd, BN-backward sums) are in the
  *statistics dtype*: float64 for float64 data, else float32 (:func:`stat_dtype`).
* Conv math accumulates in the statistics dtype; the fused prologue's activation is
  rounded to the data dtype before the GEMM, as a kernel that feeds tensor cores does.
* ReLU follows PyTorch: NaN propagates forward, and backward masks where the
  pre-activation is ``<= 0`` (so a NaN pre-activation lets the gradient through).
* Optional tensors that are absent are ``None``; statistics that were not asked for
  come back as empty ``(0,)`` tensors so every op has a fixed number of outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.grad import conv2d_input, conv2d_weight

Tensor = torch.Tensor


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of statistics and per-channel coefficients for data of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def memory_format(t: Tensor) -> torch.memory_format:
    """The memory format an op's output should take to match ``t``."""
    channels_last = t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)
    if channels_last and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _per_channel(v: Tensor) -> Tensor:
    return v.view(1, -1, 1, 1)


def _affine(t: Tensor, scale: Tensor | None, shift: Tensor | None) -> Tensor:
    """``t*scale + shift`` per channel, in ``scale``'s (statistics) dtype."""
    if scale is None:
        return t
    return t.to(scale.dtype) * _per_channel(scale) + _per_channel(shift)


def _prologue(x: Tensor, scale: Tensor | None, shift: Tensor | None, relu: bool) -> Tensor:
    """The input activation ``[relu](x*scale + shift)``, rounded to ``x``'s dtype as a
    kernel rounds it before the GEMM."""
    a = _affine(x, scale, shift)
    if relu:
        a = torch.relu(a)
    return a.to(x.dtype)


def _relu_mask_grad(grad: Tensor, pre_activation: Tensor) -> Tensor:
    """Backward of ReLU as PyTorch's ``threshold_backward``: zero where ``pre <= 0``."""
    return torch.where(pre_activation <= 0, torch.zeros_like(grad), grad)


def _channel_sum(t: Tensor) -> Tensor:
    return t.sum(dim=(0, 2, 3))


def _empty_stats(like: Tensor) -> Tensor:
    return torch.empty(0, dtype=stat_dtype(like.dtype), device=like.device)


def channel_stats(y: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel ``mean`` and ``m2`` (sum of squared deviations) of ``y`` over N, H, W.

    Two-pass, so exact up to rounding even when ``|mean| >> std``.
    """
    acc = y.to(stat_dtype(y.dtype))
    mean = acc.mean(dim=(0, 2, 3))
    m2 = ((acc - _per_channel(mean)) ** 2).sum(dim=(0, 2, 3))
    return mean, m2


def conv_fwd(
    x: Tensor,
    weight: Tensor,
    stride: int,
    padding: int,
    dilation: int,
    groups: int = 1,
    in_scale: Tensor | None = None,
    in_shift: Tensor | None = None,
    in_relu: bool = False,
    out_scale: Tensor | None = None,
    out_shift: Tensor | None = None,
    residual: Tensor | None = None,
    res_scale: Tensor | None = None,
    res_shift: Tensor | None = None,
    out_relu: bool = False,
    stats: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Convolution with a fused input prologue and output epilogue.

    prologue:  a = [relu](x*in_scale + in_shift)      (zero padding applies to ``a``)
    conv:      c = conv2d(a, weight)                    (accumulated in the stat dtype)
    stats:     mean, m2 of ``c`` per output channel     (when ``stats``; else empty)
    epilogue:  y = [relu](c*out_scale + out_shift + [residual*res_scale + res_shift])

    Returns ``(y, mean, m2)`` with ``y`` in ``x``'s dtype and memory format.
    """
    acc_dtype = stat_dtype(x.dtype)
    a = _prologue(x, in_scale, in_shift, in_relu)
    c = F.conv2d(a.to(acc_dtype), weight.to(acc_dtype), None, stride, padding, dilation, groups)
    mean, m2 = channel_stats(c) if stats else (_empty_stats(x), _empty_stats(x))
    y = _affine(c, out_scale, out_shift)
    if residual is not None:
        y = y + _affine(residual, res_scale, res_shift)
    if out_relu:
        y = torch.relu(y)
    return y.to(x.dtype).contiguous(memory_format=memory_format(x)), mean, m2


def bn_finalize(
    mean: Tensor,
    m2: Tensor,
    count: int | Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    num_batches_tracked: Tensor | None,
    momentum: float | None,
    eps: float,
    update_running_stats: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Batch statistics -> per-channel ``(scale, shift, invstd)``; updates running stats.

    scale = weight * invstd, shift = bias - mean * scale, invstd = 1/sqrt(m2/count + eps).
    When ``update_running_stats``, does exactly what ``nn.BatchNorm2d`` does in training:
    ``num_batches_tracked += 1``; the factor is ``momentum``, or ``1/num_batches_tracked``
    (read on the device) when ``momentum`` is None; ``running_var`` takes the unbiased
    variance ``m2/(count-1)``. Mutates ``running_mean``, ``running_var``,
    ``num_batches_tracked`` in place. ``count`` may be a 0-d tensor (synchronised BN).
    """
    invstd = torch.rsqrt(m2 / count + eps)
    scale = invstd * weight.to(invstd.dtype) if weight is not None else invstd
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias.to(shift.dtype)
    if update_running_stats:
        assert running_mean is not None and running_var is not None
        if num_batches_tracked is not None:
            num_batches_tracked.add_(1)
        if momentum is None:
            assert num_batches_tracked is not None, "momentum=None needs num_batches_tracked"
            factor = 1.0 / num_batches_tracked.to(mean.dtype)
        else:
            factor = momentum
        # count is a device tensor when it was gathered across ranks (no host sync).
        unbiased = m2 / ((count - 1).clamp(min=1) if isinstance(count, Tensor)
                         else max(count - 1, 1))
        running_mean.copy_(running_mean + factor * (mean.to(running_mean.dtype) - running_mean))
        running_var.copy_(running_var + factor * (unbiased.to(running_var.dtype) - running_var))
    return scale, shift, invstd


def conv_bn_fwd(
    x: Tensor,
    weight: Tensor,
    stride: int,
    padding: int,
    dilation: int,
    groups: int,
    in_scale: Tensor | None,
    in_shift: Tensor | None,
    in_relu: bool,
    bn_weight: Tensor | None,
    bn_bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    num_batches_tracked: Tensor | None,
    momentum: float | None,
    eps: float,
    update_running_stats: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """A training conv+BN unit's forward: :func:`conv_fwd` with batch statistics, then
    :func:`bn_finalize` over ``count`` = N*H_out*W_out values per channel. Returns
    ``(y, mean, scale, shift, invstd)``; mutates the running statistics as bn_finalize.
    (Backends with a kernel for it finalize in their statistics merge: one launch fewer.)"""
    y, mean, m2 = conv_fwd(x, weight, stride, padding, dilation, groups, in_scale, in_shift,
                           in_relu, stats=True)
    count = y.shape[0] * y.shape[2] * y.shape[3]
    scale, shift, invstd = bn_finalize(mean, m2, count, bn_weight, bn_bias, running_mean,
                                       running_var, num_batches_tracked, momentum, eps,
                                       update_running_stats)
    return y, mean, scale, shift, invstd


def bn_eval_affine(
    running_mean: Tensor, running_var: Tensor, weight: Tensor | None, bias: Tensor | None,
    eps: float, dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor]:
    """Eval-mode BN as ``(scale, shift, invstd)`` from the running statistics."""
    # Few ops: this runs for every BN of every eval-mode call.
    sd = stat_dtype(dtype)
    invstd = (running_var.to(sd) + eps).rsqrt_()
    scale = invstd * weight.to(sd) if weight is not None else invstd
    mean = running_mean.to(sd)
    if bias is None:
        return scale, -mean * scale, invstd
    return scale, torch.addcmul(bias.to(sd), mean, scale, value=-1), invstd



def bn_eval_affines(
    bns: list[tuple[Tensor, Tensor, Tensor | None, Tensor | None, float]], dtype: torch.dtype,
) -> list[tuple[Tensor, Tensor, Tensor]]:
    """:func:`bn_eval_affine` of several BNs ``(running_mean, running_var, weight, bias, eps)``,
    bitwise the same values, in four multi-tensor ops: per-op overhead, not arithmetic, is
    what a small eval-mode block spends on folding its BNs."""
    if any(w is None or b is None for _, _, w, b, _ in bns):
        return [bn_eval_affine(*bn, dtype) for bn in bns]
    sd = stat_dtype(dtype)
    mean, var, weight, bias = ([t.to(sd) for t in ts] for ts in list(zip(*bns))[:4])
    invstd = torch._foreach_add(var, [eps for *_, eps in bns])
    torch._foreach_rsqrt_(invstd)
    scale = torch._foreach_mul(invstd, weight)
    shift = torch._foreach_addcmul(bias, mean, scale, value=-1)
    return list(zip(scale, shift, invstd))

def block_end(
    y: Tensor,
    scale: Tensor,
    shift: Tensor,
    residual: Tensor,
    res_scale: Tensor | None = None,
    res_shift: Tensor | None = None,
    branch_scale: Tensor | None = None,
) -> Tensor:
    """``relu((y*scale + shift)[*branch_scale] + [residual*res_scale + res_shift])`` in
    ``y``'s dtype.

    ``branch_scale``: per-sample factors (N,) in the statistics dtype (stochastic depth:
    0 for a dropped sample's branch, 1/keep_prob for a kept one), or None.
    """
    branch = _per_sample(_affine(y, scale, shift), branch_scale)
    out = torch.relu(branch + _affine(residual, res_scale, res_shift))
    return out.to(y.dtype).contiguous(memory_format=memory_format(y))


def _per_sample(t: Tensor, factors: Tensor | None) -> Tensor:
    """``t`` (N, C, H, W) times ``factors[n]`` per sample (nothing when None)."""
    return t if factors is None else t * factors.to(t.dtype).view(-1, 1, 1, 1)


def bn_relu(y: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """``relu(y*scale + shift)`` in ``y``'s dtype: a BN+ReLU with nothing to add."""
    out = torch.relu(_affine(y, scale, shift))
    return out.to(y.dtype).contiguous(memory_format=memory_format(y))


def block_end_bwd(
    d_out: Tensor,
    out: Tensor,
    y: Tensor,
    mean: Tensor,
    invstd: Tensor,
    y_d: Tensor | None = None,
    mean_d: Tensor | None = None,
    invstd_d: Tensor | None = None,
    branch_scale: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Backward of :func:`block_end` up to the BN-backward sums.

    dz = d_out masked by ``out > 0``: the gradient of the shortcut, and (times
    ``branch_scale[n]`` when given) of bn3's output. Returns ``(dz, sum(dz_b),
    sum(dz_b*xhat), sum(dz*xhat_d))`` with ``dz_b = dz[*branch_scale]``,
    ``xhat = (y-mean)*invstd`` (and ``xhat_d`` for the projection's ``y_d``; empty when
    there is none).
    """
    dz = _relu_mask_grad(d_out, out)
    acc = dz.to(mean.dtype)
    acc_branch = _per_sample(acc, branch_scale)
    xhat = (y.to(mean.dtype) - _per_channel(mean)) * _per_channel(invstd)
    sum_dz_xhat_d = _empty_stats(d_out)
    if y_d is not None:
        xhat_d = (y_d.to(mean.dtype) - _per_channel(mean_d)) * _per_channel(invstd_d)
        sum_dz_xhat_d = _channel_sum(acc * xhat_d)
    return (dz.contiguous(memory_format=memory_format(d_out)), _channel_sum(acc_branch),
            _channel_sum(acc_branch * xhat), sum_dz_xhat_d)


def bn_bwd_coeffs(
    sum_dz: Tensor,
    sum_dz_xhat: Tensor,
    count: int | Tensor,
    scale: Tensor,
    mean: Tensor,
    invstd: Tensor,
    batch_stats: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-channel ``(a, b, c)`` with ``dy = a*dz + b*y + c``: BN backward as an affine map.

    With batch statistics, ``dy = scale*(dz - mean(dz) - xhat*mean(dz*xhat))``; with fixed
    (running or frozen) statistics, ``dy = scale*dz``. ``y`` is the raw conv output.
    """
    if not batch_stats:
        zero = torch.zeros_like(scale)
        return scale, zero, zero
    b = -scale * invstd * sum_dz_xhat / count
    c = -scale * sum_dz / count - b * mean
    return scale, b, c


def bn_param_grads(sum_dz: Tensor, sum_dz_xhat: Tensor, weight: Tensor | None,
                   bias: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
    """``dweight = sum(dz*xhat)``, ``dbias = sum(dz)`` in the parameters' dtypes (None for
    an absent parameter)."""
    return (sum_dz_xhat.to(weight.dtype) if weight is not None else None,
            sum_dz.to(bias.dtype) if bias is not None else None)


def bn_backward(
    sum_dz: Tensor,
    sum_dz_xhat: Tensor,
    count: int | Tensor,
    scale: Tensor,
    mean: Tensor,
    invstd: Tensor,
    batch_stats: bool,
    weight: Tensor | None,
    bias: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """Everything BN backward needs from the sums: ``(a, b, c)`` of :func:`bn_bwd_coeffs`
    and the gradients of ``weight`` and ``bias`` (:func:`bn_param_grads`)."""
    return (*bn_bwd_coeffs(sum_dz, sum_dz_xhat, count, scale, mean, invstd, batch_stats),
            *bn_param_grads(sum_dz, sum_dz_xhat, weight, bias))


def block_end_bwd_bn(
    d_out: Tensor,
    out: Tensor,
    y: Tensor,
    mean: Tensor,
    invstd: Tensor,
    y_d: Tensor | None,
    mean_d: Tensor | None,
    invstd_d: Tensor | None,
    count: int,
    scale: Tensor,
    batch_stats: bool,
    weight: Tensor | None,
    bias: Tensor | None,
    count_d: int,
    scale_d: Tensor | None,
    batch_stats_d: bool,
    weight_d: Tensor | None,
    bias_d: Tensor | None,
) -> tuple[Tensor, ...]:
    """:func:`block_end_bwd` (no drop path) followed by :func:`bn_backward` of the block's
    last BN (``count``, ``scale``, ``mean``, ``invstd``, ...) and, with a projection, of its
    BN (the ``_d`` arguments). Returns ``(dz, a, b, c, dweight, dbias, a_d, b_d, c_d,
    dweight_d, dbias_d)``, an absent gradient (or BN) as empty tensors. (Backends with a
    kernel for it end the sums' reduction in BN backward: one or two launches fewer.)"""
    dz, sum_dz, sum_dz_xhat, sum_dz_xhat_d = block_end_bwd(d_out, out, y, mean, invstd, y_d,
                                                            mean_d, invstd_d)

    def bn(sum_dz_xhat, count, scale, mean, invstd, batch_stats, weight, bias):
        outs = bn_backward(sum_dz, sum_dz_xhat, count, scale, mean, invstd, batch_stats,
                           weight, bias)
        return tuple(t if t is not None else scale.new_empty(0) for t in outs)

    main = bn(sum_dz_xhat, count, scale, mean, invstd, batch_stats, weight, bias)
    if y_d is None:
        return (dz, *main, *(scale.new_empty(0) for _ in range(5)))
    return (dz, *main,
            *bn(sum_dz_xhat_d, count_d, scale_d, mean_d, invstd_d, batch_stats_d, weight_d,
                bias_d))


def _bn_bwd_apply(dz: Tensor, y: Tensor, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """``a*dz + b*y + c`` per channel, in the statistics dtype."""
    return (dz.to(a.dtype) * _per_channel(a) + y.to(a.dtype) * _per_channel(b)
            + _per_channel(c))


def conv_bwd_data(
    dz: Tensor,
    y: Tensor,
    a: Tensor,
    b: Tensor,
    c: Tensor,
    weight: Tensor,
    input_size: list[int],
    stride: int,
    padding: int,
    dilation: int,
    groups: int = 1,
    residual: Tensor | None = None,
    prev_y: Tensor | None = None,
    prev_scale: Tensor | None = None,
    prev_shift: Tensor | None = None,
    prev_mean: Tensor | None = None,
    prev_invstd: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Data gradient of a conv whose output went through BN, with the next BN's sums.

    prologue:  dy = a*dz + b*y + c          (the BN backward of this conv's output ``y``)
    dgrad:     dx = conv2d_input(dy, weight) (+ ``residual``, a gradient to add)
    epilogue:  when ``prev_y`` is given (the input was ``relu(prev_y*prev_scale+prev_shift)``):
               dx masked by that ReLU, and ``sum(dx)``, ``sum(dx*xhat_prev)`` per channel.

    Returns ``(dx, sum_dx, sum_dx_xhat)`` (sums empty without ``prev_y``); ``dx`` in
    ``dz``'s dtype and memory format.
    """
    dy = _bn_bwd_apply(dz, y, a, b, c).to(dz.dtype)
    acc_dtype = a.dtype
    dx = conv2d_input(list(input_size), weight.to(acc_dtype), dy.to(acc_dtype), stride, padding,
                      dilation, groups)
    if residual is not None:
        dx = dx + residual.to(acc_dtype)
    sum_dx = sum_dx_xhat = _empty_stats(dz)
    if prev_y is not None:
        dx = _relu_mask_grad(dx, _affine(prev_y, prev_scale, prev_shift))
        xhat = (prev_y.to(acc_dtype) - _per_channel(prev_mean)) * _per_channel(prev_invstd)
        sum_dx, sum_dx_xhat = _channel_sum(dx), _channel_sum(dx * xhat)
    return dx.to(dz.dtype).contiguous(memory_format=memory_format(dz)), sum_dx, sum_dx_xhat


def conv_bwd_data_bn(
    dz: Tensor,
    y: Tensor,
    a: Tensor,
    b: Tensor,
    c: Tensor,
    weight: Tensor,
    input_size: list[int],
    stride: int,
    padding: int,
    dilation: int,
    groups: int,
    prev_y: Tensor,
    prev_scale: Tensor,
    prev_shift: Tensor,
    prev_mean: Tensor,
    prev_invstd: Tensor,
    prev_count: int,
    prev_batch_stats: bool,
    prev_weight: Tensor | None,
    prev_bias: Tensor | None,
) -> tuple[Tensor, ...]:
    """:func:`conv_bwd_data` into a previous unit (no residual), then :func:`bn_backward`
    of that unit's BN from the sums. Returns ``(dx, a, b, c, dweight, dbias)``, an absent
    parameter's gradient as an empty tensor. (Backends with a kernel for it end the sums'
    reduction in BN backward: one launch fewer.)"""
    dx, sum_dx, sum_dx_xhat = conv_bwd_data(dz, y, a, b, c, weight, input_size, stride,
                                            padding, dilation, groups, None, prev_y,
                                            prev_scale, prev_shift, prev_mean, prev_invstd)
    outs = bn_backward(sum_dx, sum_dx_xhat, prev_count, prev_scale, prev_mean, prev_invstd,
                       prev_batch_stats, prev_weight, prev_bias)
    return (dx, *(t if t is not None else prev_scale.new_empty(0) for t in outs))


def conv_bwd_weight(
    x: Tensor,
    in_scale: Tensor | None,
    in_shift: Tensor | None,
    in_relu: bool,
    dz: Tensor,
    y: Tensor,
    a: Tensor,
    b: Tensor,
    c: Tensor,
    weight: Tensor,
    stride: int,
    padding: int,
    dilation: int,
    groups: int = 1,
) -> Tensor:
    """Weight gradient with both operands recomputed on the fly.

    The input activation is rebuilt from ``x`` by the forward prologue, the output
    gradient from ``dz`` by the BN-backward map ``a*dz + b*y + c``. Returns ``dw`` in
    ``weight``'s dtype and memory format (``weight`` gives only shape, dtype and format).
    """
    act = _prologue(x, in_scale, in_shift, in_relu)
    dy = _bn_bwd_apply(dz, y, a, b, c).to(dz.dtype)
    acc_dtype = a.dtype
    if weight.shape[2:] == (1, 1) and padding == 0 and stride > 1:
        # A strided 1x1 conv reads every stride-th pixel: stride 1 over those gives the same
        # sums, and avoids oneDNN's strided 1x1 channels_last float32 weight gradient, which
        # returns wrong values now and then (torch 2.14 on CPU; found by test_randomized).
        fmt = memory_format(act)
        act, stride = act[:, :, ::stride, ::stride].contiguous(memory_format=fmt), 1
    dw = conv2d_weight(act.to(acc_dtype), list(weight.shape), dy.to(acc_dtype), stride, padding,
                       dilation, groups)
    return dw.to(weight.dtype).contiguous(memory_format=memory_format(weight))


def conv_bwd(
    x: Tensor,
    in_scale: Tensor | None,
    in_shift: Tensor | None,
    in_relu: bool,
    dz: Tensor,
    y: Tensor,
    a: Tensor,
    b: Tensor,
    c: Tensor,
    weight: Tensor,
    stride: int,
    padding: int,
    dilation: int,
    groups: int = 1,
    residual: Tensor | None = None,
    prev_mean: Tensor | None = None,
    prev_invstd: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`conv_bwd_data` and :func:`conv_bwd_weight` of one conv whose forward read
    ``x`` through the prologue ``[relu](x*in_scale + in_shift)``: ``(dx, sum_dx,
    sum_dx_xhat, dw)``. With ``prev_mean``/``prev_invstd``, ``x`` is the previous unit's raw
    output (so ``in_relu``): ``dx`` is masked by that ReLU and summed for its BN backward."""
    dw = conv_bwd_weight(x, in_scale, in_shift, in_relu, dz, y, a, b, c, weight, stride,
                         padding, dilation, groups)
    prev = prev_mean is not None
    dx, sum_dx, sum_dx_xhat = conv_bwd_data(
        dz, y, a, b, c, weight, list(x.shape), stride, padding, dilation, groups, residual,
        x if prev else None, in_scale if prev else None, in_shift if prev else None,
        prev_mean, prev_invstd)
    return dx, sum_dx, sum_dx_xhat, dw
