"""The Triton backend's six ops against fused_resnet.reference (float64 oracle).

Without a GPU the kernels run in the Triton CPU interpreter on CPU tensors; that needs
TRITON_INTERPRET=1 *before* the kernels are decorated (Triton reads the flag in
``@triton.jit``), so this module sets it when no CUDA device exists, and skips visibly
if fused_resnet.triton was already imported without it. With a GPU the same tests run
on CUDA tensors, plus the ``gpu``-marked ResNet-shape tests.
"""

from __future__ import annotations

import os

import pytest
import torch

# Effective only if nothing imported triton yet (conftest imports fused_resnet, which may
# import torchvision, which imports triton): `make test` exports it for the whole suite.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from conftest import TF32_TOLERANCE, assert_close, rel_err, tolerance  # noqa: E402

import fused_resnet.triton as ftriton  # noqa: E402
from fused_resnet import reference  # noqa: E402

UNAVAILABLE = ftriton.unavailable_reason()
DEVICE = "cpu" if ftriton.interpreting() else "cuda"
pytestmark = pytest.mark.skipif(
    UNAVAILABLE is not None,
    reason=f"triton ops unusable here: {UNAVAILABLE}")

OPS = torch.ops.fused_resnet
DTYPES = [torch.float32, torch.float16]  # the interpreter breaks on bf16: GPU tests cover it


# ---------------------------------------------------------------------------- helpers
def _to(v, dtype=None, device=None):
    """Floating tensors (data and per-channel vectors) to ``dtype``/``device``."""
    if isinstance(v, torch.Tensor):
        v = v.to(device) if device else v
        return v.to(dtype) if dtype is not None and v.is_floating_point() else v
    return v


def _call_reference(op: str, kwargs: dict, dtype=None):
    kwargs = {k: _to(v, dtype).clone() if isinstance(v, torch.Tensor) else v
              for k, v in kwargs.items()}
    out = getattr(reference, op)(**kwargs)
    return out if isinstance(out, tuple) else (out,)


def ieee_fp32():
    """fp32 convs without TF32 (the kernels follow cuDNN's allow_tf32 switch, on by
    default): for checks at the fp32 tolerance on a GPU."""
    return torch.backends.cudnn.flags(enabled=True, allow_tf32=False)


def _tol(dtype: torch.dtype, plain_err: float) -> float:
    if dtype == torch.float32 and DEVICE == "cuda" and torch.backends.cudnn.allow_tf32:
        return TF32_TOLERANCE
    return tolerance(dtype, plain_err)


def check_op(op: str, main: str, fmt_like: str | None = None, **kwargs):
    """Run ``<op>_triton`` and compare every output with the float64 reference of the same
    inputs; low precision may be 2x worse than the reference run in that dtype. 4-d
    outputs take the memory format of input ``fmt_like`` (default: ``main``), as the fake
    kernels in fused_resnet.ops say."""
    dtype = kwargs[main].dtype
    out = getattr(OPS, op + "_triton")(**kwargs)
    out = out if isinstance(out, tuple) else (out,)
    ref64 = _call_reference(op, kwargs, torch.float64)
    plain = _call_reference(op, kwargs)
    for i, (o, r64, p) in enumerate(zip(out, ref64, plain)):
        what = f"{op} output {i}"
        assert o.shape == p.shape and o.dtype == p.dtype, f"{what}: {o.shape} {o.dtype}"
        if o.dim() == 4:
            like = kwargs[fmt_like or main]
            assert reference.memory_format(o) == reference.memory_format(like), what
        err, tol = rel_err(o, r64), _tol(dtype, rel_err(p, r64))
        assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e} ({dtype})"
    return out, ref64


def _fmt(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t


def _vec(c: int, offset: float = 0.0) -> torch.Tensor:
    return torch.randn(c, device=DEVICE) * 0.5 + offset


def _data(*shape, dtype, channels_last=False, offset=0.0):
    return _fmt(torch.randn(*shape, device=DEVICE) + offset, channels_last).to(dtype)


# --------------------------------------------------------------------------- conv_fwd
# (N, C_in, H, W, C_out, kernel, stride, padding, dilation, variant, channels_last)
CONV_CASES = [
    (2, 5, 9, 9, 7, 3, 1, 1, 1, "train", False),     # prologue + stats
    (2, 6, 7, 7, 10, 3, 2, 1, 1, "eval", True),      # BN + residual + relu epilogue
    (1, 5, 9, 9, 12, 1, 1, 0, 1, "plain", True),
    (2, 12, 7, 7, 7, 1, 2, 0, 1, "train", True),
    (1, 3, 9, 9, 8, 7, 2, 3, 1, "eval", False),      # stem-like 7x7 stride 2
    (1, 4, 9, 9, 5, 3, 1, 2, 2, "relu_only", False), # dilation 2
    (2, 17, 5, 5, 18, 3, 1, 1, 1, "eval_res_plain", True),  # > one K and N block
]


def _conv_kwargs(case, dtype):
    n, c_in, h, w, c_out, k, s, p, d, variant, cl = case
    x = _data(n, c_in, h, w, dtype=dtype, channels_last=cl)
    weight = (torch.randn(c_out, c_in, k, k, device=DEVICE) / (c_in * k * k) ** 0.5).to(dtype)
    kw = dict(x=x, weight=weight, stride=s, padding=p, dilation=d, groups=1, in_scale=None,
              in_shift=None, in_relu=False, out_scale=None, out_shift=None, residual=None,
              res_scale=None, res_shift=None, out_relu=False, stats=False)
    h_out = (h + 2 * p - d * (k - 1) - 1) // s + 1
    w_out = (w + 2 * p - d * (k - 1) - 1) // s + 1
    if variant == "train":
        kw.update(in_scale=_vec(c_in, 1.0), in_shift=_vec(c_in), in_relu=True, stats=True)
    elif variant == "relu_only":
        kw.update(in_relu=True, out_relu=True, stats=True)
    elif variant.startswith("eval"):
        residual = _data(n, c_out, h_out, w_out, dtype=dtype, channels_last=not cl)
        kw.update(out_scale=_vec(c_out, 1.0), out_shift=_vec(c_out), residual=residual,
                  out_relu=True)
        if variant == "eval":
            kw.update(res_scale=_vec(c_out, 1.0), res_shift=_vec(c_out))
    return kw


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "-".join(map(str, c)))
def test_conv_fwd(case, dtype):
    check_op("conv_fwd", "x", **_conv_kwargs(case, dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_conv_fwd_stats_large_mean(dtype):
    """|mean| >> std: a naive sum-of-squares variance would lose every digit."""
    x = _data(2, 6, 7, 7, dtype=dtype, offset=300.0)
    w = (torch.rand(5, 6, 3, 3, device=DEVICE) / 54).to(dtype)  # positive: mean ~ 300
    kw = dict(x=x, weight=w, stride=1, padding=0, dilation=1, groups=1, in_scale=None,
              in_shift=None, in_relu=False, out_scale=None, out_shift=None, residual=None,
              res_scale=None, res_shift=None, out_relu=False, stats=True)
    y, mean, m2 = OPS.conv_fwd_triton(**kw)
    ref = _call_reference("conv_fwd", kw, torch.float64)
    assert (ref[1].abs() > 100 * (ref[2] / 50).sqrt()).all()  # really |mean| >> std
    if dtype == torch.float32:
        # The stored y *is* the accumulator: compare with the exact statistics of y itself
        # (against the float64 conv, fp32 accumulation alone costs ~5e-5 on m2 here).
        mean64, m2_64 = reference.channel_stats(y.double())
        assert_close(mean, mean64, dtype, what="mean vs stored y")
        assert_close(m2, m2_64, dtype, what="m2 vs stored y")
    else:  # fp16 rounds y to 0.25 at 300: compare with the float64 conv's statistics
        plain = _call_reference("conv_fwd", kw)
        for i in (1, 2):
            assert_close((mean, m2)[i - 1], ref[i], dtype, rel_err(plain[i], ref[i]),
                         what=("mean", "m2")[i - 1])


# ---------------------------------------------------------------------- conv_bwd_data
# (N, C_in, H, W, C_out, kernel, stride, padding, dilation, with_prev, with_residual, cl)
DGRAD_CASES = [
    (2, 5, 9, 9, 7, 3, 1, 1, 1, True, False, False),
    (2, 6, 9, 9, 10, 3, 2, 1, 1, True, True, True),
    (1, 12, 7, 7, 5, 1, 1, 0, 1, False, True, True),
    (2, 7, 9, 9, 6, 1, 2, 0, 1, True, False, False),
    (1, 3, 9, 9, 8, 7, 2, 3, 1, False, False, True),
    (1, 4, 8, 8, 5, 3, 1, 2, 2, True, True, False),
    (1, 4, 9, 9, 5, 3, 2, 2, 2, True, False, True),   # stride 2, dilation 2: odd phases
    (1, 4, 10, 10, 5, 3, 3, 1, 2, False, True, False),  # reached by no tap; stride 3
]


def _dgrad_kwargs(case, dtype):
    n, c_in, h, w, c_out, k, s, p, d, prev, res, cl = case
    x_shape = [n, c_in, h, w]
    weight = (torch.randn(c_out, c_in, k, k, device=DEVICE) / (c_in * k * k) ** 0.5).to(dtype)
    y = reference.conv_fwd(torch.randn(*x_shape, device=DEVICE).to(dtype), weight, s, p, d)[0]
    y = _fmt(y + 0.3, cl)
    c = y.shape[1]
    kw = dict(dz=_fmt(torch.randn_like(y), cl), y=y, a=_vec(c, 1.0), b=_vec(c) * 0.2,
              c=_vec(c) * 0.2, weight=weight, input_size=x_shape, stride=s, padding=p,
              dilation=d, groups=1, residual=None, prev_y=None, prev_scale=None,
              prev_shift=None, prev_mean=None, prev_invstd=None)
    if res:
        kw["residual"] = _data(*x_shape, dtype=dtype, channels_last=not cl)
    if prev:
        kw.update(prev_y=_data(*x_shape, dtype=dtype, channels_last=cl, offset=0.5),
                  prev_scale=_vec(c_in, 1.0), prev_shift=_vec(c_in), prev_mean=_vec(c_in, 0.5),
                  prev_invstd=_vec(c_in, 1.0).abs() + 0.1)
    return kw


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", DGRAD_CASES, ids=lambda c: "-".join(map(str, c)))
def test_conv_bwd_data(case, dtype):
    check_op("conv_bwd_data", "dz", **_dgrad_kwargs(case, dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", DGRAD_CASES[:5], ids=lambda c: "-".join(map(str, c)))
def test_conv_bwd_weight(case, dtype):
    kw = _dgrad_kwargs(case, dtype)
    prologue = case[9]
    n, c_in, h, w = kw["input_size"]
    x = _data(n, c_in, h, w, dtype=dtype, channels_last=not case[-1])
    check_op("conv_bwd_weight", "x", "weight", x=x, in_scale=_vec(c_in, 1.0) if prologue else None,
             in_shift=_vec(c_in) if prologue else None, in_relu=prologue, dz=kw["dz"],
             y=kw["y"], a=kw["a"], b=kw["b"], c=kw["c"], weight=kw["weight"],
             stride=kw["stride"], padding=kw["padding"], dilation=kw["dilation"], groups=1)


# ----------------------------------------------------------------- elementwise ops
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("projection", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_block_end(dtype, projection, channels_last):
    y = _data(2, 37, 5, 3, dtype=dtype, channels_last=channels_last)
    check_op("block_end", "y", y=y, scale=_vec(37, 1.0), shift=_vec(37),
             residual=_data(2, 37, 5, 3, dtype=dtype, channels_last=not channels_last),
             res_scale=_vec(37, 1.0) if projection else None,
             res_shift=_vec(37) if projection else None)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("projection", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_block_end_bwd(dtype, projection, channels_last):
    shape = (2, 37, 5, 3)
    out = torch.relu(_data(*shape, dtype=dtype, channels_last=channels_last))
    d_out = _data(*shape, dtype=dtype, channels_last=channels_last)
    check_op("block_end_bwd", "d_out", d_out=d_out, out=out,
             y=_data(*shape, dtype=dtype, offset=3.0), mean=_vec(37, 3.0),
             invstd=_vec(37, 1.0).abs() + 0.1,
             y_d=_data(*shape, dtype=dtype, channels_last=True) if projection else None,
             mean_d=_vec(37) if projection else None,
             invstd_d=_vec(37, 1.0).abs() + 0.1 if projection else None)


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("update", [True, False])
def test_bn_finalize(momentum, affine, update):
    c, count = 37, 50
    mean, m2 = _vec(c, 2.0), torch.rand(c, device=DEVICE) * count
    state = (_vec(c), torch.rand(c, device=DEVICE) + 0.5,
             torch.tensor(3, device=DEVICE))
    theirs = [t.clone() for t in state]
    kw = dict(mean=mean, m2=m2, count=count, weight=_vec(c, 1.0) if affine else None,
              bias=_vec(c) if affine else None, momentum=momentum, eps=1e-5,
              update_running_stats=update)
    out = OPS.bn_finalize_triton(**kw, running_mean=state[0], running_var=state[1],
                                 num_batches_tracked=state[2])
    ref = reference.bn_finalize(**kw, running_mean=theirs[0], running_var=theirs[1],
                                num_batches_tracked=theirs[2])
    for o, r, name in zip((*out, *state), (*ref, *theirs),
                          ("scale", "shift", "invstd", "running_mean", "running_var", "nbt")):
        if name == "nbt":
            assert o.item() == r.item() == (4 if update else 3)
        else:
            assert_close(o, r, torch.float32, what=name)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("projection", [False, True])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("size", [(2, 37, 5, 3), (2, 70, 24, 24)], ids=["one_group", "groups"])
def test_block_end_bwd_bn(dtype, projection, affine, size):
    """The block end's backward ending in its BNs' backward (one op), as the reference
    composes block_end_bwd and bn_backward: one reduction group, or groups merged by the
    last to arrive over three channel blocks; the projection's BN with fixed statistics."""
    from fused_resnet.triton import plans

    n, c, h, w = size
    shape = (n, c, h, w)
    main, sums = plans.block_end_bwd_bn_plan(n * h * w, c, "fp32", plans.INTERPRETER_TARGET,
                                             projection)
    assert sums.meta["TICKET"] == (size[2] > 5)
    out = torch.relu(_data(*shape, dtype=dtype, channels_last=True))
    count = n * h * w
    check_op("block_end_bwd_bn", "d_out", d_out=_data(*shape, dtype=dtype, channels_last=True),
             out=out, y=_data(*shape, dtype=dtype, offset=3.0), mean=_vec(c, 3.0),
             invstd=_vec(c, 1.0).abs() + 0.1,
             y_d=_data(*shape, dtype=dtype, channels_last=True) if projection else None,
             mean_d=_vec(c) if projection else None,
             invstd_d=_vec(c, 1.0).abs() + 0.1 if projection else None, count=count,
             scale=_vec(c, 1.0), batch_stats=True, weight=_vec(c, 1.0) if affine else None,
             bias=_vec(c) if affine else None, count_d=count,
             scale_d=_vec(c, 1.0) if projection else None, batch_stats_d=False,
             weight_d=_vec(c, 1.0) if projection else None,
             bias_d=_vec(c) if projection and affine else None)


@pytest.mark.parametrize("case", [(2, 7, 9, 9, 5, 3, 1, 1, 1), (2, 70, 24, 24, 9, 3, 2, 1, 1)],
                         ids=["one_group", "groups_stride2"])
@pytest.mark.parametrize("affine", [True, False])
def test_conv_bwd_data_bn(case, affine):
    """An inner dgrad ending in the previous BN's backward (one op), as the reference
    composes conv_bwd_data and bn_backward: one reduction group, or groups merged by the
    last to arrive over three channel blocks (stride 2: four phases' tiles)."""
    from fused_resnet.triton import plans

    n, c_in, h, w, c_out, k, stride, padding, dilation = case
    kw = _dgrad_kwargs((n, c_in, h, w, c_out, k, stride, padding, dilation, True, False,
                        True), torch.float32)
    kw.pop("residual")
    plan = plans.conv_dgrad_plan(n, c_in, h, w, c_out, k, stride, "fp32",
                                 plans.INTERPRETER_TARGET, True, bn=True)
    assert plan.launches[1].meta["TICKET"] == (c_in > 64)
    with ieee_fp32():
        check_op("conv_bwd_data_bn", "dz", fmt_like="dz", **kw, prev_count=n * h * w,
                 prev_batch_stats=True, prev_weight=_vec(c_in, 1.0) if affine else None,
                 prev_bias=_vec(c_in) if affine else None)


def _conv_bn_fwd_cases():
    flags = [(m, a, u) for m in (0.1, None) for a in (True, False) for u in (True, False)]
    for name, shape, cases in (("one_group", (2, 5, 9, 7), flags),
                               ("groups_and_channel_blocks", (1, 3, 24, 70),
                                [(None, True, True), (0.1, False, True), (0.1, True, False)]),
                               ("empty", (0, 5, 9, 7), [(None, True, True), (0.1, True, False)])):
        for m, a, u in cases:
            yield pytest.param(m, a, u, shape, id=f"{name}-momentum{m}-affine{a}-update{u}")


@pytest.mark.parametrize("momentum, affine, update, shape", list(_conv_bn_fwd_cases()))
def test_conv_bn_fwd(momentum, affine, update, shape):
    """conv_fwd with statistics and bn_finalize in one op, as the reference composes them:
    with one merge group, with groups merged by the last to arrive over three channel
    blocks (num_batches_tracked counted once), and on an empty batch."""
    n, c_in, hw, c_out = shape
    _check_conv_bn_fwd(_data(n, c_in, hw, hw, dtype=torch.float32, channels_last=True,
                             offset=1.0), torch.randn(c_out, c_in, 3, 3, device=DEVICE) / 4,
                       1, 1, momentum, affine, update)


def _check_conv_bn_fwd(x, weight, stride, padding, momentum, affine, update):
    """conv_bn_fwd_triton against reference.conv_bn_fwd on copies of the same running
    statistics (fp32 without TF32), outputs and running statistics alike."""
    c_in, c_out, dtype = x.shape[1], weight.shape[0], x.dtype
    state = (_vec(c_out), torch.rand(c_out, device=DEVICE) + 0.5,
             torch.tensor(3, device=DEVICE))
    theirs = [t.clone() for t in state]
    kw = dict(x=x, weight=weight.to(dtype), stride=stride, padding=padding, dilation=1,
              groups=1, in_scale=_vec(c_in, 1.0), in_shift=_vec(c_in), in_relu=True,
              bn_weight=_vec(c_out, 1.0) if affine else None,
              bn_bias=_vec(c_out) if affine else None, momentum=momentum, eps=1e-5,
              update_running_stats=update)
    with ieee_fp32():
        out = OPS.conv_bn_fwd_triton(**kw, running_mean=state[0], running_var=state[1],
                                     num_batches_tracked=state[2])
        ref = reference.conv_bn_fwd(**kw, running_mean=theirs[0], running_var=theirs[1],
                                    num_batches_tracked=theirs[2])
    names = ("y", "mean", "scale", "shift", "invstd", "running_mean", "running_var")
    assert reference.memory_format(out[0]) == reference.memory_format(ref[0])
    for o, r, name in zip((*out, *state[:2]), (*ref, *theirs[:2]), names):
        assert o.shape == r.shape and o.dtype == r.dtype, name
        if x.shape[0] == 0 and name != "y":  # statistics of nothing: NaN where the reference is
            assert torch.equal(o.isnan(), r.isnan()), name
            continue
        assert_close(o, r, dtype, what=name)
    assert state[2].item() == theirs[2].item() == (4 if update else 3)


@pytest.mark.parametrize("param_dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("batch_stats", [True, False])
def test_bn_backward(param_dtype, affine, batch_stats):
    """One launch: (a, b, c) as reference.bn_bwd_coeffs and the parameter gradients in
    the parameters' dtype, on an odd channel count (more than one channel block)."""
    c, count = 75, 37
    sums = (_vec(c) * count, _vec(c) * count)
    stats = (_vec(c, 1.0), _vec(c, 0.5), _vec(c, 1.0).abs() + 0.1)  # scale, mean, invstd
    weight, bias = (_vec(c).to(param_dtype) for _ in range(2)) if affine else (None, None)
    a, b, cc, dweight, dbias = OPS.bn_backward_triton(*sums, count, *stats, batch_stats,
                                                      weight, bias)
    for got, want, name in zip((a, b, cc), reference.bn_bwd_coeffs(*sums, count, *stats,
                                                                   batch_stats), "abc"):
        assert got.dtype == torch.float32 and got.shape == (c,), name
        assert_close(got, want, torch.float32, what=name)
    if affine:
        for got, want, name in ((dweight, sums[1], "dweight"), (dbias, sums[0], "dbias")):
            assert got.dtype == param_dtype and got.shape == (c,), name
            assert torch.equal(got, want.to(param_dtype)), name
    else:
        assert dweight.numel() == dbias.numel() == 0


# ------------------------------------------------------------------ NaN propagation
def test_nan_propagates_through_conv_fwd():
    kw = _conv_kwargs(CONV_CASES[0], torch.float32)
    kw["x"][0, 1, 4, 4] = float("nan")
    kw.update(out_relu=True, out_scale=_vec(7, 1.0), out_shift=_vec(7))
    y, mean, m2 = OPS.conv_fwd_triton(**kw)
    ref = reference.conv_fwd(**kw)
    assert torch.isnan(y).any()
    assert torch.equal(torch.isnan(y), torch.isnan(ref[0]))
    assert torch.equal(torch.isnan(mean), torch.isnan(ref[1]))


def test_nan_elementwise():
    y = _data(2, 5, 3, 3, dtype=torch.float32)
    y[0, 2, 1, 1] = float("nan")
    kw = dict(y=y, scale=_vec(5, 1.0), shift=_vec(5), residual=torch.randn_like(y),
              res_scale=None, res_shift=None)
    out = OPS.block_end_triton(**kw)
    assert torch.equal(torch.isnan(out), torch.isnan(reference.block_end(**kw)))
    assert torch.isnan(out[0, 2, 1, 1])
    # A NaN in `out` lets the gradient through (threshold_backward), as PyTorch does.
    out[1, 0, 0, 0] = float("nan")
    d_out = torch.randn_like(y)
    dz = OPS.block_end_bwd_triton(d_out, out, torch.randn_like(y), _vec(5), _vec(5, 1.0),
                                  None, None, None)[0]
    assert dz[1, 0, 0, 0] == d_out[1, 0, 0, 0]


def test_nan_pre_activation_passes_dgrad_gradient():
    kw = _dgrad_kwargs(DGRAD_CASES[0], torch.float32)
    kw["prev_y"][0, 1, 2, 2] = float("nan")
    with ieee_fp32():
        dx = OPS.conv_bwd_data_triton(**kw)[0]
    ref = reference.conv_bwd_data(**kw)[0]
    assert not torch.isnan(dx[0, 1, 2, 2]) and dx[0, 1, 2, 2] != 0
    assert_close(dx, ref, torch.float32, what="dx with a NaN pre-activation")


# ---------------------------------------------------------------- errors, compile
def test_rejects_groups_and_float64():
    kw = _conv_kwargs(CONV_CASES[2], torch.float32)
    with pytest.raises(NotImplementedError, match="groups"):
        OPS.conv_fwd_triton(**{**kw, "groups": 5, "weight": kw["weight"][:, :1]})
    with pytest.raises(NotImplementedError, match="float64"):
        OPS.conv_fwd_triton(**{**kw, "x": kw["x"].double(), "weight": kw["weight"].double()})


def test_schemas_match_the_cpp_ops():
    from fused_resnet import ops
    from fused_resnet.triton.register import SCHEMAS

    for name in ops.OP_NAMES:
        schema = str(getattr(OPS, name + "_triton").default._schema)
        assert schema == f"fused_resnet::{name}_triton{SCHEMAS[name]}"
        if ops.has_kernel(name, "CPU"):  # the C++ extension is built: same arguments
            cpp = str(getattr(OPS, name).default._schema)
            assert schema.replace(f"{name}_triton", name) == cpp


def test_opcheck_per_channel_ops_and_conv_bn_fwd():
    y = _data(2, 5, 3, 3, dtype=torch.float32)
    torch.library.opcheck(OPS.block_end_triton.default,
                          (y, _vec(5), _vec(5), torch.randn_like(y), None, None))
    state = (_vec(5), torch.rand(5, device=DEVICE) + 0.5, torch.tensor(3, device=DEVICE))
    torch.library.opcheck(OPS.bn_finalize_triton.default,
                          (_vec(5), torch.rand(5, device=DEVICE), 32, _vec(5), _vec(5), *state,
                           None, 1e-5, True))
    x = _data(2, 3, 5, 5, dtype=torch.float32, channels_last=True)
    torch.library.opcheck(OPS.conv_bn_fwd_triton.default,
                          (x, torch.randn(5, 3, 3, 3, device=DEVICE), 1, 1, 1, 1, None, None,
                           False, _vec(5), _vec(5), *state, None, 1e-5, True))
    torch.library.opcheck(OPS.bn_backward_triton.default,
                          (_vec(5), _vec(5), 32, _vec(5), _vec(5), _vec(5).abs(), True,
                           _vec(5), None))


def test_torch_compile_fullgraph():
    def f(y, scale, shift, residual):
        return OPS.block_end_triton(y, scale, shift, residual, None, None) * 2

    y = _data(2, 5, 3, 3, dtype=torch.float32)
    args = (y, _vec(5, 1.0), _vec(5), torch.randn_like(y))
    backend = "aot_eager" if DEVICE == "cpu" else "inductor"
    compiled = torch.compile(f, fullgraph=True, backend=backend)
    assert_close(compiled(*args), f(*args), torch.float32, what="compiled block_end")


# ----------------------------------------------------------------------------- GPU
# ResNet-50 convs at batch 32 (C_in, C_out, kernel, stride, H): one per stage and kind.
RESNET50_GPU_CASES = [
    (64, 64, 3, 1, 56), (256, 128, 1, 1, 56), (128, 128, 3, 2, 56), (512, 1024, 1, 2, 28),
    (1024, 256, 1, 1, 14), (512, 512, 3, 1, 7), (2048, 512, 1, 1, 7),
]
GPU_DTYPES = [torch.bfloat16, torch.float16, torch.float32]


def _gpu_only():
    if DEVICE != "cuda":
        pytest.skip("runs on CUDA tensors (the interpreter would take hours at these sizes)")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
@pytest.mark.parametrize("case", RESNET50_GPU_CASES, ids=lambda c: "-".join(map(str, c)))
def test_gpu_resnet50_shapes(case, dtype):
    _gpu_only()
    c_in, c_out, k, s, h = case
    p = k // 2
    fwd = _conv_kwargs((32, c_in, h, h, c_out, k, s, p, 1, "train", True), dtype)
    check_op("conv_fwd", "x", **fwd)
    check_op("conv_fwd", "x", **_conv_kwargs((32, c_in, h, h, c_out, k, s, p, 1, "eval", True),
                                             dtype))
    dgrad = _dgrad_kwargs((32, c_in, h, h, c_out, k, s, p, 1, True, True, True), dtype)
    check_op("conv_bwd_data", "dz", **dgrad)
    check_op("conv_bwd_weight", "x", "weight", x=fwd["x"], in_scale=fwd["in_scale"],
             in_shift=fwd["in_shift"], in_relu=True, dz=dgrad["dz"], y=dgrad["y"],
             a=dgrad["a"], b=dgrad["b"], c=dgrad["c"], weight=dgrad["weight"], stride=s,
             padding=p, dilation=1, groups=1)
    # The one-launch reductions across many programs (tickets between them, on a real GPU).
    _check_conv_bn_fwd(fwd["x"], fwd["weight"], s, p, None, True, True)
    shape = (32, c_out, h // s, h // s)
    check_op("block_end_bwd_bn", "d_out", d_out=_data(*shape, dtype=dtype, channels_last=True),
             out=torch.relu(_data(*shape, dtype=dtype, channels_last=True)),
             y=_data(*shape, dtype=dtype, offset=3.0, channels_last=True),
             mean=_vec(c_out, 3.0), invstd=_vec(c_out, 1.0).abs() + 0.1,
             y_d=_data(*shape, dtype=dtype, channels_last=True), mean_d=_vec(c_out),
             invstd_d=_vec(c_out, 1.0).abs() + 0.1, count=32 * (h // s) ** 2,
             scale=_vec(c_out, 1.0), batch_stats=True, weight=_vec(c_out, 1.0),
             bias=_vec(c_out), count_d=32 * (h // s) ** 2, scale_d=_vec(c_out, 1.0),
             batch_stats_d=True, weight_d=_vec(c_out, 1.0), bias_d=_vec(c_out))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
def test_gpu_nan_propagation(dtype):
    _gpu_only()
    kw = _conv_kwargs((32, 64, 14, 14, 64, 3, 1, 1, 1, "eval", True), dtype)
    kw["x"][3, 5, 7, 7] = float("nan")
    y = OPS.conv_fwd_triton(**kw)[0]
    assert torch.equal(torch.isnan(y), torch.isnan(reference.conv_fwd(**kw)[0]))


def test_conv_fwd_stats_merged_in_groups():
    """9,216 rows (288 tiles of the interpreter's 32, 72 of 128): the statistics merge runs
    in groups, the last to arrive merging the groups' results."""
    x = _data(1, 3, 96, 96, dtype=torch.float32, offset=2.0)
    w = (torch.randn(5, 3, 1, 1, device=DEVICE) / 3 ** 0.5).to(torch.float32)
    kw = dict(x=x, weight=w, stride=1, padding=0, dilation=1, groups=1, in_scale=None,
              in_shift=None, in_relu=False, out_scale=None, out_shift=None, residual=None,
              res_scale=None, res_shift=None, out_relu=False, stats=True)
    with ieee_fp32():
        _, mean, m2 = OPS.conv_fwd_triton(**kw)
    ref = _call_reference("conv_fwd", kw, torch.float64)
    assert rel_err(mean, ref[1]) <= 1e-5 and rel_err(m2, ref[2]) <= 1e-5


@pytest.mark.parametrize("op", ["conv_fwd", "conv_bwd_data"])
def test_empty_batch(op):
    """No rows: nothing is launched, and the statistics are those of the reference (NaN
    mean, zero M2 / zero sums)."""
    if op == "conv_fwd":
        kw = _conv_kwargs((0, 5, 9, 9, 7, 3, 1, 1, 1, "train", True), torch.float32)
        out = OPS.conv_fwd_triton(**kw)
        ref = reference.conv_fwd(**kw)
    else:
        kw = _dgrad_kwargs((2, 5, 9, 9, 7, 3, 1, 1, 1, True, False, True), torch.float32)
        kw = {k: v[:0] if isinstance(v, torch.Tensor) and v.dim() == 4 and k != "weight"
              else v for k, v in kw.items()}
        kw["input_size"] = [0, *kw["input_size"][1:]]
        out = OPS.conv_bwd_data_triton(**kw)
        ref = reference.conv_bwd_data(**kw)
    for o, r in zip(out, ref):
        assert o.shape == r.shape and o.dtype == r.dtype
        assert torch.equal(torch.isnan(o), torch.isnan(r))
        assert torch.equal(o.nan_to_num(), r.nan_to_num())
