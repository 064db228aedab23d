"""Fake (meta) kernels of the six fused ops: output shapes, dtypes and memory formats.

One set serves every op family (``fused_resnet::<op>`` of the C++ extension, its test-only
``_<op>_igemm`` CPU twins, the Triton ``<op>_triton`` ops). Depends only on torch and the op
semantics in :mod:`fused_resnet.reference`, so any backend can register them without
importing the op layer (:mod:`fused_resnet.ops`).
"""

from __future__ import annotations

import torch

from . import reference

OP_NAMES = ("conv_fwd", "bn_finalize", "block_end", "block_end_bwd", "conv_bwd_data",
            "conv_bwd_weight")


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


def fake_conv_bwd(x, in_scale, in_shift, in_relu, dz, y, a, b, c, weight, stride, padding,
                  dilation, groups, residual=None, prev_mean=None, prev_invstd=None):
    """Of the cpp backend's ``conv_bwd`` (conv_bwd_data and conv_bwd_weight in one)."""
    return (*_fake_conv_bwd_data(dz, y, a, b, c, weight, list(x.shape), stride, padding,
                                 dilation, groups, residual,
                                 x if prev_mean is not None else None, None, None, None, None),
            _fake_conv_bwd_weight(x, in_scale, in_shift, in_relu, dz, y, a, b, c, weight,
                                  stride, padding, dilation, groups))


def fake_bn_backward(sum_dz, sum_dz_xhat, count, scale, mean, invstd, batch_stats, weight,
                     bias):
    """Of the BN-backward ops (``bn_backward`` of the cpp backend, ``bn_backward_triton``):
    reference.bn_backward, with an empty tensor for an absent parameter's gradient."""
    def grad(p):
        return (torch.empty_like(p, memory_format=torch.contiguous_format) if p is not None
                else scale.new_empty(0))

    return (*(torch.empty_like(scale) for _ in range(3)), grad(weight), grad(bias))


def fake_conv_bn_fwd(x, weight, stride, padding, dilation, groups, in_scale, in_shift,
                     in_relu, bn_weight, bn_bias, running_mean, running_var,
                     num_batches_tracked, momentum, eps, update_running_stats):
    """Of the Triton-only ``conv_bn_fwd_triton`` op (reference.conv_bn_fwd)."""
    y, mean, _ = _fake_conv_fwd(x, weight, stride, padding, dilation, groups, in_scale,
                                in_shift, in_relu, None, None, None, None, None, False, True)
    return (y, mean, *(torch.empty_like(mean) for _ in range(3)))


def fake_block_end_bwd_bn(d_out, out, y, mean, invstd, y_d, mean_d, invstd_d, count, scale,
                          batch_stats, weight, bias, count_d, scale_d, batch_stats_d, weight_d,
                          bias_d):
    """Of the Triton-only ``block_end_bwd_bn_triton`` op (reference.block_end_bwd_bn)."""
    dz = torch.empty_like(d_out, memory_format=reference.memory_format(d_out))
    main = fake_bn_backward(None, None, 0, scale, mean, invstd, batch_stats, weight, bias)
    if y_d is None:
        return (dz, *main, *(scale.new_empty(0) for _ in range(5)))
    return (dz, *main, *fake_bn_backward(None, None, 0, scale_d, mean_d, invstd_d,
                                         batch_stats_d, weight_d, bias_d))


def fake_conv_bwd_data_bn(dz, y, a, b, c, weight, input_size, stride, padding, dilation,
                          groups, prev_y, prev_scale, prev_shift, prev_mean, prev_invstd,
                          prev_count, prev_batch_stats, prev_weight, prev_bias):
    """Of the Triton-only ``conv_bwd_data_bn_triton`` op (reference.conv_bwd_data_bn)."""
    dx = dz.new_empty(list(input_size)).contiguous(memory_format=reference.memory_format(dz))
    return (dx, *fake_bn_backward(None, None, 0, prev_scale, prev_mean, prev_invstd,
                                  prev_batch_stats, prev_weight, prev_bias))


_FAKES = {name: globals()[f"_fake_{name}"] for name in OP_NAMES}


def register_fakes(suffix: str = "", prefix: str = "") -> None:
    """Register the fake kernels for ``fused_resnet::<prefix><op><suffix>`` (once per op
    family)."""
    for name in OP_NAMES:
        if _op_exists(prefix + name + suffix):
            torch.library.register_fake(f"fused_resnet::{prefix}{name}{suffix}")(_FAKES[name])


def _op_exists(qualname: str) -> bool:
    return hasattr(torch.ops.fused_resnet, qualname)
