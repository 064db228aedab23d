"""Per-block autograd: the fused training and eval dataflow of docs/design.md §1 on any backend.

A residual block is a *chain* of conv->BN units (two for a basic block, three for a
bottleneck; ReLU between them) plus an optional projection *shortcut* unit, ended by
``out = relu(bn_last(y_last) + shortcut)``. Bottleneck and basic block run the same
code; they differ only in the length of the chain.

Training forward (batch statistics)::

    y1, stats1 = conv(x)                        # stats in the conv epilogue
    scale1, shift1 = bn_finalize(stats1)        # + running-stat update
    y2, stats2 = conv(relu(y1*scale1+shift1))   # BN+ReLU in the next conv's prologue
    ...
    out = block_end(y_last, scale_last, shift_last, x or y_d [, scale_d, shift_d]
                    [, branch_scale])

A projection shortcut may start with an average pool (ResNet-D, ``PoolSpec``), run in
plain torch before its 1x1 conv. Stochastic depth (drop path) multiplies the residual
branch by a per-sample ``branch_scale`` (0 or 1/keep_prob) inside the block end.

Only ``x``, the raw conv outputs ``y_i``, ``out`` and per-channel vectors are saved.
Inference (no gradient, fixed statistics) folds every BN into its conv's epilogue:
one conv kernel per unit and nothing else.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from . import distributed, reference
from .derived_cache import DerivedCache, usable
from .ops import Backend, get_backend

Tensor = torch.Tensor
# Per unit, the tensors handed to the autograd Function, in this order.
UNIT_TENSORS = ("weight", "bn_weight", "bn_bias", "running_mean", "running_var",
                "num_batches_tracked")


@dataclass(frozen=True)
class ConvSpec:
    stride: int
    padding: int
    dilation: int
    groups: int


@dataclass(frozen=True)
class NormSpec:
    batch_stats: bool  # normalise with the batch's statistics (training, or no running stats)
    update: bool  # update the running statistics (training with running stats)
    momentum: float | None
    eps: float
    sync: bool = False  # batch statistics of the whole process group (synchronised BN)
    group: object = None  # its process group (None: the default group)


@dataclass(frozen=True)
class PoolSpec:
    """The ``nn.AvgPool2d`` in front of a projection shortcut's conv (ResNet-D)."""

    kernel_size: int
    stride: int
    padding: int
    ceil_mode: bool
    count_include_pad: bool

    def forward(self, x: Tensor) -> Tensor:
        return torch.nn.functional.avg_pool2d(x, self.kernel_size, self.stride, self.padding,
                                              self.ceil_mode, self.count_include_pad)

    def out_size(self, size: int) -> int:
        """``nn.AvgPool2d``'s output size (a ceil-mode window must start inside the input)."""
        k, st, p = self.kernel_size, self.stride, self.padding
        span = size + 2 * p - k
        out = (-(-span // st) if self.ceil_mode else span // st) + 1
        if self.ceil_mode and (out - 1) * st >= size + p:
            out -= 1
        return out

    def backward(self, d_pooled: Tensor, x: Tensor) -> Tensor:
        k, s, p = [self.kernel_size] * 2, [self.stride] * 2, [self.padding] * 2
        return torch.ops.aten.avg_pool2d_backward(d_pooled, x, k, s, p, self.ceil_mode,
                                                  self.count_include_pad, None)


@dataclass(frozen=True)
class UnitSpec:
    conv: ConvSpec
    norm: NormSpec


@dataclass(frozen=True)
class BlockPlan:
    """Everything static about one call of a block: shapes of the computation, not data."""

    chain: tuple[UnitSpec, ...]
    shortcut: UnitSpec | None
    backend: Backend
    residual: bool = True  # False: out = relu(bn(y_last)), a plain conv-BN-ReLU (the stem)
    shortcut_pool: PoolSpec | None = None  # average pool before the projection (ResNet-D)

    @property
    def units(self) -> tuple[UnitSpec, ...]:
        return self.chain + ((self.shortcut,) if self.shortcut else ())

    @property
    def fixed_stats(self) -> bool:
        return not any(u.norm.batch_stats for u in self.units)

    def key(self) -> tuple:
        """The plan as nested tuples of primitives: what a torch.fx graph can hold as an arg."""
        if any(u.norm.sync for u in self.units):
            raise RuntimeError("a fused block with synchronised BN cannot be traced by torch.fx")

        def unit(u: UnitSpec) -> tuple:
            c, n = u.conv, u.norm
            return ((c.stride, c.padding, c.dilation, c.groups),
                    (n.batch_stats, n.update, n.momentum, n.eps))

        pool = self.shortcut_pool
        return (self.backend.name, tuple(unit(u) for u in self.chain),
                unit(self.shortcut) if self.shortcut else None, self.residual,
                (pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode,
                 pool.count_include_pad) if pool else None)

    @staticmethod
    def from_key(key: tuple) -> BlockPlan:
        name, chain, shortcut, residual, pool = key

        def unit(t: tuple) -> UnitSpec:
            return UnitSpec(ConvSpec(*t[0]), NormSpec(*t[1]))

        return BlockPlan(tuple(unit(u) for u in chain), unit(shortcut) if shortcut else None,
                         get_backend(name), residual, PoolSpec(*pool) if pool else None)

    def shortcut_input(self, x: Tensor) -> Tensor:
        """What the projection conv reads: ``x``, average-pooled for a ResNet-D shortcut."""
        return self.shortcut_pool.forward(x) if self.shortcut_pool else x


@dataclass
class _UnitOut:
    """What a unit's forward leaves for the next unit and for backward."""

    y: Tensor  # raw conv output
    scale: Tensor  # BN as y*scale + shift
    shift: Tensor
    mean: Tensor  # statistics xhat = (y - mean) * invstd is taken with
    invstd: Tensor
    count: int | Tensor  # values per channel behind the statistics (a tensor when synced)


def _split_units(tensors: tuple, n_units: int) -> list[tuple]:
    k = len(UNIT_TENSORS)
    assert len(tensors) == k * n_units
    return [tensors[i * k:(i + 1) * k] for i in range(n_units)]


def _unit_forward(ops: Backend, spec: UnitSpec, tensors: tuple, inp: Tensor,
                  prologue: _UnitOut | None) -> _UnitOut:
    """conv (with the previous BN+ReLU as prologue) -> statistics -> BN coefficients."""
    weight, gamma, beta, running_mean, running_var, nbt = tensors
    c, n = spec.conv, spec.norm
    conv = dict(x=inp, weight=weight, stride=c.stride, padding=c.padding, dilation=c.dilation,
                groups=c.groups, in_scale=prologue.scale if prologue else None,
                in_shift=prologue.shift if prologue else None, in_relu=prologue is not None)
    running = dict(running_mean=running_mean if n.update else None,
                   running_var=running_var if n.update else None,
                   num_batches_tracked=nbt if n.update else None, momentum=n.momentum,
                   eps=n.eps, update_running_stats=n.update)
    fused_finalize = n.batch_stats and not n.sync and ops.conv_bn_fwd is not None
    if fused_finalize:
        y, mean, scale, shift, invstd = ops.conv_bn_fwd(**conv, bn_weight=gamma, bn_bias=beta,
                                                        **running)
    else:
        y, mean, m2 = ops.conv_fwd(**conv, out_scale=None, out_shift=None, residual=None,
                                   res_scale=None, res_shift=None, out_relu=False,
                                   stats=n.batch_stats)
    count = y.shape[0] * y.shape[2] * y.shape[3]
    finalize = ops.bn_finalize
    if n.batch_stats and n.sync:
        mean, m2, count = distributed.gather_stats(mean, m2, count, n.group)
        finalize = reference.bn_finalize  # C values, and a device-side count: plain torch
    if n.batch_stats:
        if not fused_finalize:
            scale, shift, invstd = finalize(mean=mean, m2=m2, count=count, weight=gamma,
                                            bias=beta, **running)
        if n.update and not torch.compiler.is_compiling():
            # C++ kernels write in place without advancing the version counters
            # that cached derivations (eval BN folds, prepacked weights) are keyed by.
            torch.autograd.graph.increment_version(
                [t for t in (running_mean, running_var, nbt) if t is not None])
    else:
        scale, shift, invstd = reference.bn_eval_affine(running_mean, running_var, gamma, beta,
                                                        n.eps, y.dtype)
        mean = running_mean.to(scale.dtype)
    return _UnitOut(y, scale, shift, mean, invstd, count)


def _bn_backward_args(plan, outs: list, unit_tensors: list, last: int,
                      shortcut: _UnitOut | None) -> dict:
    """block_end_bwd_bn's BN arguments: unit ``last``'s, and the projection's (the unit
    after it) when there is one."""
    def bn(i: int, suffix: str) -> dict:
        u, norm = outs[i], plan.units[i].norm
        _, gamma, beta = unit_tensors[i]
        return {f"count{suffix}": u.count, f"scale{suffix}": u.scale,
                f"batch_stats{suffix}": norm.batch_stats, f"weight{suffix}": gamma,
                f"bias{suffix}": beta}

    none = dict(count_d=0, scale_d=None, batch_stats_d=False, weight_d=None, bias_d=None)
    return {**bn(last, ""), **(bn(last + 1, "_d") if shortcut is not None else none)}


def _branch_scale_arg(branch_scale: Tensor | None) -> dict:
    # Passed only when drop path is on, so backends without it serve every other block.
    return {} if branch_scale is None else {"branch_scale": branch_scale}


def forward_train(plan: BlockPlan, x: Tensor, tensors: tuple,
                  branch_scale: Tensor | None = None) -> tuple[Tensor, list[_UnitOut]]:
    """The unfolded dataflow (raw ``y`` + statistics); returns ``out`` and each unit's state.

    ``branch_scale``: per-sample factors (N,) of the residual branch (drop path), or None.
    """
    ops = plan.backend
    units = _split_units(tensors, len(plan.units))
    outs: list[_UnitOut] = []
    h, prev = x, None
    for spec, t in zip(plan.chain, units):
        prev = _unit_forward(ops, spec, t, h, prev)
        outs.append(prev)
        h = prev.y
    residual, res_scale, res_shift = x, None, None
    if plan.shortcut is not None:
        sc = _unit_forward(ops, plan.shortcut, units[-1], plan.shortcut_input(x), None)
        outs.append(sc)
        residual, res_scale, res_shift = sc.y, sc.scale, sc.shift
    last = outs[len(plan.chain) - 1]
    if not plan.residual:
        # No residual to add (the stem): BN+ReLU as one elementwise pass of plain torch,
        # materialised because the next layer (a max-pool) cannot take it as a prologue.
        return reference.bn_relu(last.y, last.scale, last.shift), outs
    out = ops.block_end(y=last.y, scale=last.scale, shift=last.shift, residual=residual,
                        res_scale=res_scale, res_shift=res_shift,
                        **_branch_scale_arg(branch_scale))
    return out, outs


def eval_folds(plan: BlockPlan, tensors: tuple, dtype: torch.dtype) -> list[tuple]:
    """(scale, shift, invstd) of every unit's BN by its running statistics, chain first,
    then the shortcut's."""
    units = _split_units(tensors, len(plan.units))
    return reference.bn_eval_affines(
        [(t[3], t[4], t[1], t[2], spec.norm.eps) for spec, t in zip(plan.units, units)], dtype)


def forward_inference(plan: BlockPlan, x: Tensor, tensors: tuple,
                      fold_cache: DerivedCache | None = None) -> Tensor:
    """Fixed statistics, no gradient: every BN folded into its conv's epilogue. With a
    ``fold_cache`` the folds are made once per change of the BN state, not per call, so a
    call is one conv launch per unit and nothing else."""
    ops = plan.backend
    units = _split_units(tensors, len(plan.units))
    if fold_cache is not None and usable():
        bn_state = [t for u in units for t in u[1:5]]
        eps = tuple(u.norm.eps for u in plan.units)
        folds = fold_cache.get(bn_state, (eps, x.dtype),
                               lambda: eval_folds(plan, tensors, x.dtype))
    else:
        folds = eval_folds(plan, tensors, x.dtype)

    def conv(spec: UnitSpec, weight: Tensor, inp: Tensor, fold: tuple | None, relu: bool,
             **epilogue):
        c = spec.conv
        args = dict(in_scale=None, in_shift=None, in_relu=False,
                    out_scale=fold[0] if fold else None, out_shift=fold[1] if fold else None,
                    residual=None, res_scale=None, res_shift=None, out_relu=relu, stats=False)
        args.update(epilogue)
        return ops.conv_fwd(x=inp, weight=weight, stride=c.stride, padding=c.padding,
                            dilation=c.dilation, groups=c.groups, **args)[0]

    residual = x if plan.residual else None
    res_scale = res_shift = None
    if plan.shortcut is not None:
        # The projection's BN is applied in the last conv's epilogue, in fp32.
        residual = conv(plan.shortcut, units[-1][0], plan.shortcut_input(x), None, relu=False)
        res_scale, res_shift, _ = folds[-1]
    h = x
    for i, (spec, t) in enumerate(zip(plan.chain, units)):
        if i < len(plan.chain) - 1:
            h = conv(spec, t[0], h, folds[i], relu=True)
        else:
            h = conv(spec, t[0], h, folds[i], relu=True, residual=residual, res_scale=res_scale,
                     res_shift=res_shift)
    return h


def run_block(plan: BlockPlan, x: Tensor, tensors: tuple,
              branch_scale: Tensor | None = None,
              fold_cache: DerivedCache | None = None) -> Tensor:
    """One block call: autograd Function when a gradient is wanted, else the lean paths.

    ``branch_scale``: drop path's per-sample factors of the residual branch (N,), or None.
    ``fold_cache``: the block's cache of its eval-mode BN folds (see forward_inference).
    """
    grad = torch.is_grad_enabled() and (x.requires_grad or any(
        t is not None and t.requires_grad for t in tensors))
    if not grad:
        # No autograd graph: nothing is saved; running stats still update in training.
        if plan.fixed_stats and branch_scale is None:
            return forward_inference(plan, x, tensors, fold_cache)
        return forward_train(plan, x, tensors, branch_scale)[0]
    return ResidualBlockFunction.apply(plan, x, branch_scale, *tensors)


class ResidualBlockFunction(torch.autograd.Function):
    """Autograd of one fused residual block (bottleneck or basic), any backend; with
    ``plan.residual`` False, of a plain conv->BN->ReLU (the ResNet stem).

    ``apply(plan, x, branch_scale, *unit_tensors)`` with :data:`UNIT_TENSORS` for every
    unit of ``plan.units`` (``branch_scale``: drop path's (N,) factors, or None).
    Backward runs the fused backward ops and honours ``needs_input_grad`` (frozen weights
    skip their wgrad).
    """

    @staticmethod
    def forward(ctx, plan: BlockPlan, x: Tensor, branch_scale: Tensor | None,
                *tensors: Tensor) -> Tensor:
        out, outs = forward_train(plan, x, tensors, branch_scale)
        ctx.plan = plan
        ctx.counts = [u.count for u in outs]
        weights = [t[0] for t in _split_units(tensors, len(plan.units))]
        vectors = [v for u in outs for v in (u.y, u.scale, u.shift, u.mean, u.invstd)]
        ctx.has_branch_scale = branch_scale is not None
        ctx.save_for_backward(x, out, branch_scale, *weights, *vectors)
        ctx.bn_params = [(t[1], t[2]) for t in _split_units(tensors, len(plan.units))]
        return out

    @staticmethod
    def backward(ctx, d_out: Tensor):
        device = d_out.device.type
        with (torch.autocast(device, enabled=False) if torch.amp.is_autocast_available(device)
              else contextlib.nullcontext()):  # meta tensors (launch traces) have no autocast
            return ResidualBlockFunction._backward(ctx, d_out)

    @staticmethod
    def _backward(ctx, d_out: Tensor):
        plan: BlockPlan = ctx.plan
        ops = plan.backend
        n_units, n_chain = len(plan.units), len(plan.chain)
        x, out, branch_scale, *rest = ctx.saved_tensors
        weights, flat = rest[:n_units], rest[n_units:]
        outs = [_UnitOut(*flat[5 * i:5 * i + 5], ctx.counts[i]) for i in range(n_units)]
        k = len(UNIT_TENSORS)
        needs = ctx.needs_input_grad  # (plan, x, branch_scale, *unit tensors)
        unit_needs = [needs[3 + i * k:3 + (i + 1) * k] for i in range(n_units)]
        unit_tensors = [(weights[i], *ctx.bn_params[i]) for i in range(n_units)]
        grads: list = [None] * (k * n_units)

        done: dict = {}  # unit -> its BN backward, where an op computed it with its sums

        def bn_backward(i: int, sum_dz: Tensor | None, sum_dz_xhat: Tensor | None):
            """(a, b, c) of unit i's BN backward, and its parameters' gradients."""
            if i in done:
                return done.pop(i)
            u, norm = outs[i], plan.units[i].norm
            _, gamma, beta = unit_tensors[i]
            if norm.batch_stats and norm.sync:
                # The parameters' gradients from this rank's own sums (DDP averages them);
                # (a, b, c) from the group's, with a device-side count: plain torch.
                grads = reference.bn_param_grads(sum_dz, sum_dz_xhat, gamma, beta)
                sum_dz, sum_dz_xhat = distributed.all_reduce_sums(sum_dz, sum_dz_xhat, norm.group)
                abc = reference.bn_bwd_coeffs(sum_dz, sum_dz_xhat, u.count, u.scale, u.mean,
                                              u.invstd, norm.batch_stats)
                return abc, grads
            *abc, dgamma, dbeta = ops.bn_backward(sum_dz, sum_dz_xhat, u.count, u.scale, u.mean,
                                                  u.invstd, norm.batch_stats, gamma, beta)
            return abc, (dgamma, dbeta)

        def set_grads(i: int, dw, param_grads):
            needs_gamma, needs_beta = unit_needs[i][1:3]
            dgamma, dbeta = param_grads
            grads[i * k:i * k + 3] = [dw, dgamma if needs_gamma else None,
                                      dbeta if needs_beta else None]

        def wgrad(i: int, inp: Tensor, prologue: _UnitOut | None, dz: Tensor, abc):
            if not unit_needs[i][0]:
                return None
            c = plan.units[i].conv
            return ops.conv_bwd_weight(
                x=inp, in_scale=prologue.scale if prologue else None,
                in_shift=prologue.shift if prologue else None, in_relu=prologue is not None,
                dz=dz, y=outs[i].y, a=abc[0], b=abc[1], c=abc[2], weight=weights[i],
                stride=c.stride, padding=c.padding, dilation=c.dilation, groups=c.groups)

        def dgrad(i: int, dz: Tensor, abc, input_size, residual=None, prev: _UnitOut | None = None):
            c = plan.units[i].conv
            return ops.conv_bwd_data(
                dz=dz, y=outs[i].y, a=abc[0], b=abc[1], c=abc[2], weight=weights[i],
                input_size=list(input_size), stride=c.stride, padding=c.padding,
                dilation=c.dilation, groups=c.groups, residual=residual,
                prev_y=prev.y if prev else None, prev_scale=prev.scale if prev else None,
                prev_shift=prev.shift if prev else None, prev_mean=prev.mean if prev else None,
                prev_invstd=prev.invstd if prev else None)

        def dgrad_bn(i: int, dz: Tensor, abc, prev: _UnitOut):
            c, norm = plan.units[i].conv, plan.units[i - 1].norm
            _, gamma, beta = unit_tensors[i - 1]
            return ops.conv_bwd_data_bn(
                dz=dz, y=outs[i].y, a=abc[0], b=abc[1], c=abc[2], weight=weights[i],
                input_size=list(prev.y.shape), stride=c.stride, padding=c.padding,
                dilation=c.dilation, groups=c.groups, prev_y=prev.y, prev_scale=prev.scale,
                prev_shift=prev.shift, prev_mean=prev.mean, prev_invstd=prev.invstd,
                prev_count=prev.count, prev_batch_stats=norm.batch_stats, prev_weight=gamma,
                prev_bias=beta)

        def conv_backward(i: int, inp: Tensor, prev: _UnitOut | None, dz: Tensor, abc,
                          want_dx: bool, residual: Tensor | None = None):
            """(dw or None, dgrad's outputs or None) of conv i. Where the backend has
            ``conv_bwd_data_bn``, an inner dgrad's sums end in the previous BN's backward
            (recorded in ``done``; the sums come back as None); else one call for both
            where the backend has ``conv_bwd`` and both are wanted (the cpp backend then
            maps dy once)."""
            if (want_dx and prev is not None and ops.conv_bwd_data_bn is not None
                    and not plan.units[i - 1].norm.sync):
                dw = wgrad(i, inp, prev, dz, abc)
                dx, a, b, c, dgamma, dbeta = dgrad_bn(i, dz, abc, prev)
                done[i - 1] = (a, b, c), (dgamma, dbeta)
                return dw, (dx, None, None)
            if ops.conv_bwd is None or not (want_dx and unit_needs[i][0]):
                dw = wgrad(i, inp, prev, dz, abc)
                return dw, dgrad(i, dz, abc, inp.shape, residual, prev) if want_dx else None
            c = plan.units[i].conv
            dx, sum_dx, sum_dx_xhat, dw = ops.conv_bwd(
                inp, prev.scale if prev else None, prev.shift if prev else None,
                prev is not None, dz, outs[i].y, *abc, weights[i], c.stride, c.padding,
                c.dilation, c.groups, residual, prev.mean if prev else None,
                prev.invstd if prev else None)
            return dw, (dx, sum_dx, sum_dx_xhat)

        last = outs[n_chain - 1]
        sc = outs[n_chain] if plan.shortcut else None
        end = dict(d_out=d_out.contiguous(memory_format=reference.memory_format(out)), out=out,
                   y=last.y, mean=last.mean, invstd=last.invstd, y_d=sc.y if sc else None,
                   mean_d=sc.mean if sc else None, invstd_d=sc.invstd if sc else None)
        end_units = [n_chain - 1] + ([n_chain] if sc else [])
        if (ops.block_end_bwd_bn is not None and branch_scale is None
                and not any(plan.units[i].norm.sync for i in end_units)):
            # The block end's backward ends in its BNs' backward: one op.
            dz, *bns = ops.block_end_bwd_bn(**end, **_bn_backward_args(plan, outs, unit_tensors,
                                                                      n_chain - 1, sc))
            for i, (a, b, c, dgamma, dbeta) in zip(end_units, (bns[:5], bns[5:])):
                done[i] = (a, b, c), (dgamma, dbeta)
            sum_dz = sum_dz_xhat = sum_dz_xhat_d = None
        else:
            dz, sum_dz, sum_dz_xhat, sum_dz_xhat_d = ops.block_end_bwd(
                **end, **_branch_scale_arg(branch_scale))
        # dz is the shortcut's gradient; the branch's is dz * branch_scale, whose sums
        # (sum_dz, sum_dz_xhat) block_end_bwd returned.
        dz_shortcut, sum_dz_shortcut = dz, sum_dz
        if branch_scale is not None:
            dz = dz * branch_scale.to(dz.dtype).view(-1, 1, 1, 1)
            if sc is not None:
                sum_dz_shortcut = dz_shortcut.to(sum_dz.dtype).sum(dim=(0, 2, 3))

        # Shortcut: identity passes dz on; a projection runs its own dgrad/wgrad.
        d_shortcut = dz_shortcut if needs[1] and plan.residual else None
        if sc is not None:
            x_sc = plan.shortcut_input(x)
            abc, param_grads = bn_backward(n_chain, sum_dz_shortcut, sum_dz_xhat_d)
            dw, dgrad_out = conv_backward(n_chain, x_sc, None, dz_shortcut, abc, needs[1])
            set_grads(n_chain, dw, param_grads)
            d_shortcut = None
            if needs[1]:
                d_shortcut = dgrad_out[0]
                if plan.shortcut_pool is not None:
                    d_shortcut = plan.shortcut_pool.backward(d_shortcut, x).contiguous(
                        memory_format=reference.memory_format(dz_shortcut))

        # Chain, last unit first: dgrad of conv i yields dz of unit i-1 and its BN sums.
        for i in range(n_chain - 1, -1, -1):
            abc, param_grads = bn_backward(i, sum_dz, sum_dz_xhat)
            prev = outs[i - 1] if i > 0 else None
            inp = prev.y if prev else x
            upstream = needs[1] or any(any(unit_needs[j][:3]) for j in range(i))
            dw, dgrad_out = conv_backward(i, inp, prev, dz, abc, upstream,
                                          residual=None if prev else d_shortcut)
            set_grads(i, dw, param_grads)
            if not upstream:
                break
            if prev is not None:
                dz, sum_dz, sum_dz_xhat = dgrad_out
            else:
                return (None, dgrad_out[0], None, *grads)
        return (None, None, None, *grads)
