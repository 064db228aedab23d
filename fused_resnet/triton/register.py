"""Registration of the Triton kernels as ``fused_resnet::<op>_triton`` custom ops.

On the GPU the ops are ``torch.library.triton_op``s (torch.compile traces into the
kernels through ``wrap_triton``). Under the CPU interpreter (``TRITON_INTERPRET=1``)
they are plain ``custom_op``s: a triton_op's implementation doubles as its fake kernel,
and interpreted kernels cannot run on fake tensors (no data pointer). Either way the
fake kernels are the single set in :mod:`fused_resnet._fakes` (``register_fakes``).
The schemas are those of the C++ ops (csrc/ops.cpp).
"""

from __future__ import annotations

import torch

from .._fakes import (
    fake_block_end_bwd_bn,
    fake_bn_backward,
    fake_conv_bn_fwd,
    fake_conv_bwd_data_bn,
    register_fakes,
)
from . import conv, elementwise
from ._common import INTERPRET

SUFFIX = "_triton"

SCHEMAS = {
    "conv_fwd": "(Tensor x, Tensor weight, int stride, int padding, int dilation, int groups, "
                "Tensor? in_scale, Tensor? in_shift, bool in_relu, Tensor? out_scale, "
                "Tensor? out_shift, Tensor? residual, Tensor? res_scale, Tensor? res_shift, "
                "bool out_relu, bool stats) -> (Tensor, Tensor, Tensor)",
    "bn_finalize": "(Tensor mean, Tensor m2, int count, Tensor? weight, Tensor? bias, "
                   "Tensor(a!)? running_mean, Tensor(b!)? running_var, "
                   "Tensor(c!)? num_batches_tracked, float? momentum, float eps, "
                   "bool update_running_stats) -> (Tensor, Tensor, Tensor)",
    "block_end": "(Tensor y, Tensor scale, Tensor shift, Tensor residual, Tensor? res_scale, "
                 "Tensor? res_shift, Tensor? branch_scale=None) -> Tensor",
    "block_end_bwd": "(Tensor d_out, Tensor out, Tensor y, Tensor mean, Tensor invstd, "
                     "Tensor? y_d, Tensor? mean_d, Tensor? invstd_d, "
                     "Tensor? branch_scale=None) -> (Tensor, Tensor, Tensor, Tensor)",
    "conv_bwd_data": "(Tensor dz, Tensor y, Tensor a, Tensor b, Tensor c, Tensor weight, "
                     "int[] input_size, int stride, int padding, int dilation, int groups, "
                     "Tensor? residual, Tensor? prev_y, Tensor? prev_scale, Tensor? prev_shift, "
                     "Tensor? prev_mean, Tensor? prev_invstd) -> (Tensor, Tensor, Tensor)",
    "conv_bwd_weight": "(Tensor x, Tensor? in_scale, Tensor? in_shift, bool in_relu, "
                       "Tensor dz, Tensor y, Tensor a, Tensor b, Tensor c, Tensor weight, "
                       "int stride, int padding, int dilation, int groups) -> Tensor",
}
# Triton only: BN backward's coefficients and parameter gradients in one launch (the other
# backends run reference.bn_backward, a few torch ops), a training unit's conv with its
# BN finalization (the others run conv_fwd, then bn_finalize), and the block end's and an
# inner dgrad's backward with the BN backward of the sums they reduce (the others run
# block_end_bwd or conv_bwd_data, then bn_backward).
EXTRA_SCHEMAS = {
    "conv_bwd_data_bn": "(Tensor dz, Tensor y, Tensor a, Tensor b, Tensor c, Tensor weight, "
                        "int[] input_size, int stride, int padding, int dilation, int groups, "
                        "Tensor prev_y, Tensor prev_scale, Tensor prev_shift, "
                        "Tensor prev_mean, Tensor prev_invstd, int prev_count, "
                        "bool prev_batch_stats, Tensor? prev_weight, Tensor? prev_bias) "
                        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
    "block_end_bwd_bn": "(Tensor d_out, Tensor out, Tensor y, Tensor mean, Tensor invstd, "
                        "Tensor? y_d, Tensor? mean_d, Tensor? invstd_d, int count, "
                        "Tensor scale, bool batch_stats, Tensor? weight, Tensor? bias, "
                        "int count_d, Tensor? scale_d, bool batch_stats_d, Tensor? weight_d, "
                        "Tensor? bias_d) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, "
                        "Tensor, Tensor, Tensor, Tensor, Tensor)",
    "conv_bn_fwd": "(Tensor x, Tensor weight, int stride, int padding, int dilation, "
                   "int groups, Tensor? in_scale, Tensor? in_shift, bool in_relu, "
                   "Tensor? bn_weight, Tensor? bn_bias, Tensor(a!)? running_mean, "
                   "Tensor(b!)? running_var, Tensor(c!)? num_batches_tracked, float? momentum, "
                   "float eps, bool update_running_stats) "
                   "-> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    "bn_backward": "(Tensor sum_dz, Tensor sum_dz_xhat, int count, Tensor scale, Tensor mean, "
                   "Tensor invstd, bool batch_stats, Tensor? weight, Tensor? bias) "
                   "-> (Tensor, Tensor, Tensor, Tensor, Tensor)",
}

IMPLS = {
    "conv_fwd": conv.conv_fwd,
    "bn_finalize": elementwise.bn_finalize,
    "block_end": elementwise.block_end,
    "block_end_bwd": elementwise.block_end_bwd,
    "conv_bwd_data": conv.conv_bwd_data,
    "conv_bwd_weight": conv.conv_bwd_weight,
    "bn_backward": elementwise.bn_backward,
    "conv_bn_fwd": conv.conv_bn_fwd,
    "block_end_bwd_bn": elementwise.block_end_bwd_bn,
    "conv_bwd_data_bn": conv.conv_bwd_data_bn,
}
_RUNNING_STATS = ("running_mean", "running_var", "num_batches_tracked")
MUTATES = {"bn_finalize": _RUNNING_STATS, "conv_bn_fwd": _RUNNING_STATS}


def _define(name: str):
    qualname = f"fused_resnet::{name}{SUFFIX}"
    make = torch.library.custom_op if INTERPRET else torch.library.triton_op
    return make(qualname, IMPLS[name], mutates_args=MUTATES.get(name, ()),
                schema={**SCHEMAS, **EXTRA_SCHEMAS}[name])


def register_all() -> dict:
    """Define the six ops and the Triton-only ones (once per process) and their fake
    kernels;
    returns the defs."""
    if hasattr(torch.ops.fused_resnet, "conv_fwd" + SUFFIX):
        return {}
    defs = {name: _define(name) for name in IMPLS}
    # Overrides a triton_op's own fake (its implementation): one set of fakes for all.
    register_fakes(SUFFIX)
    torch.library.register_fake(f"fused_resnet::bn_backward{SUFFIX}")(fake_bn_backward)
    torch.library.register_fake(f"fused_resnet::conv_bn_fwd{SUFFIX}")(fake_conv_bn_fwd)
    torch.library.register_fake(f"fused_resnet::block_end_bwd_bn{SUFFIX}")(
        fake_block_end_bwd_bn)
    torch.library.register_fake(f"fused_resnet::conv_bwd_data_bn{SUFFIX}")(
        fake_conv_bwd_data_bn)
    return defs
