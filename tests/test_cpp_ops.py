"""The C++ ops (torch.ops.fused_resnet.*, csrc/) against fused_resnet.reference.

Every op on CPU (and the CUDA kernels when a GPU is present), float64/32/16/bfloat16,
NCHW and channels_last, odd shapes, non-trivial scale/shift and means, NaN propagation,
statistics when |mean| >> std, running-stat updates and bad-input errors.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from fused_resnet import reference as R
from fused_resnet.testing import TOLERANCE, rel_err

try:
    import fused_resnet._C  # noqa: F401  (loading it registers torch.ops.fused_resnet.*)
except ImportError as e:  # not built, or built against another torch
    pytest.skip(f"fused_resnet._C is not available ({e}); build it with "
                "`pip install --no-build-isolation -e .`", allow_module_level=True)

ops = torch.ops.fused_resnet
CL = torch.channels_last
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
HAS_CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU; none on this machine")


# ----------------------------------------------------------------------------- helpers
def cast(args: dict, dtype: torch.dtype) -> dict:
    """Data (4-D) tensors to ``dtype``, per-channel (1-D) ones to its statistics dtype."""
    out = {}
    for k, v in args.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            v = v.to(dtype if v.dim() == 4 else R.stat_dtype(dtype))
        out[k] = v
    return out


def call_op(name: str, args: dict):
    """Positional call in schema order (absent optionals are None)."""
    schema = getattr(ops, name).default._schema
    out = getattr(ops, name)(*[args.get(a.name) for a in schema.arguments])
    return out if isinstance(out, tuple) else (out,)


def call_ref(name: str, args: dict):
    fn = getattr(R, name)
    args = {p: args.get(p) for p in inspect.signature(fn).parameters}  # absent optionals: None
    out = fn(**args)
    return out if isinstance(out, tuple) else (out,)


def check_op(name: str, args64: dict, dtype: torch.dtype, main: str, device="cpu"):
    """Op in ``dtype`` vs the float64 reference on the same (rounded) inputs.

    4-D outputs take the memory format of ``main`` (dw: that of weight, like the fake kernel;
    the reference leaves dw in whatever format ATen's wgrad picks).

    fp16/bf16 must be no worse than 2x the reference computed in the same dtype (or the floor).
    """
    low = {k: v.to(device) if isinstance(v, torch.Tensor) else v
           for k, v in cast(args64, dtype).items()}
    ours = call_op(name, low)
    ref_low = call_ref(name, {k: v.cpu() if isinstance(v, torch.Tensor) else v
                              for k, v in low.items()})
    ref64 = call_ref(name, cast({k: v.cpu() if isinstance(v, torch.Tensor) else v
                                 for k, v in low.items()}, torch.float64))
    fmt = R.memory_format(low[main])
    for i, (o, rl, r64) in enumerate(zip(ours, ref_low, ref64)):
        what = f"{name} output {i} ({dtype}, {fmt})"
        assert o.dtype == rl.dtype and o.shape == rl.shape, f"{what}: {o.dtype}{tuple(o.shape)}"
        assert o.device.type == device
        if rl.numel() == 0:
            continue
        if o.dim() == 4:
            is_dw = name == "conv_bwd_weight" or (name == "conv_bwd" and i == 3)
            want = R.memory_format(low["weight" if is_dw else main])
            assert o.is_contiguous(memory_format=want), f"{what}: memory format"
        tol = TOLERANCE[dtype]
        if dtype in (torch.float16, torch.bfloat16):
            tol = max(tol, 2 * rel_err(rl, r64))
        err = rel_err(o, r64)
        assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e}"
    return ours


def data(*shape, fmt=torch.contiguous_format, offset=0.5, scale=1.5):
    return (torch.randn(*shape, dtype=torch.float64) * scale + offset).contiguous(
        memory_format=fmt)


def chan(c, lo=None):
    """Per-channel vector: positive factors (lo given) or signed shifts."""
    if lo is not None:
        return torch.rand(c, dtype=torch.float64) + lo
    return torch.randn(c, dtype=torch.float64) * 0.5


# (N, C, H, W, K, kernel, stride, padding, dilation, groups)
GEOMS = [
    (2, 5, 13, 13, 11, 3, 1, 1, 1, 1),
    (2, 11, 7, 7, 5, 3, 2, 2, 2, 1),
    (2, 5, 7, 7, 11, 1, 1, 0, 1, 1),
    (2, 11, 13, 13, 5, 1, 2, 0, 1, 1),
    (2, 6, 7, 7, 10, 3, 1, 1, 1, 2),
]
GEOM_IDS = ["3x3s1", "3x3s2d2", "1x1s1", "1x1s2", "3x3g2"]
FMTS = [pytest.param(torch.contiguous_format, id="nchw"), pytest.param(CL, id="nhwc")]
DT = [pytest.param(d, id=str(d).removeprefix("torch.")) for d in DTYPES]


def out_hw(h, k, s, p, d):
    return (h + 2 * p - d * (k - 1) - 1) // s + 1


# ----------------------------------------------------------------------------- schemas
def test_schema_names_match_reference():
    for name in ("conv_fwd", "bn_finalize", "block_end", "block_end_bwd", "conv_bwd_data",
                 "conv_bwd_weight", "bn_backward", "conv_bwd"):
        schema = [a.name for a in getattr(ops, name).default._schema.arguments]
        assert schema == list(inspect.signature(getattr(R, name)).parameters), name


# ----------------------------------------------------------------------------- conv ops
@pytest.mark.parametrize("dtype", DT)
@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("geom", GEOMS, ids=GEOM_IDS)
@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused"])
def test_conv_fwd(geom, fmt, dtype, fused):
    n, c, h, w, k, r, s, p, d, g = geom
    ho, wo = out_hw(h, r, s, p, d), out_hw(w, r, s, p, d)
    args = dict(x=data(n, c, h, w, fmt=fmt), weight=data(k, c // g, r, r, offset=0.0,
                scale=(c // g * r * r) ** -0.5), stride=s, padding=p, dilation=d, groups=g,
                in_relu=fused, out_relu=fused, stats=True)
    if fused:
        args.update(in_scale=chan(c, 0.5), in_shift=chan(c), out_scale=chan(k, 0.5),
                    out_shift=chan(k), residual=data(n, k, ho, wo, fmt=fmt),
                    res_scale=chan(k, 0.5), res_shift=chan(k))
    check_op("conv_fwd", args, dtype, "x")


def test_conv_fwd_options():
    """Each optional piece alone: prologue relu only, residual without its affine, no stats."""
    x = data(2, 5, 7, 7, fmt=CL)
    w = data(11, 5, 3, 3, offset=0.0, scale=0.2)
    base = dict(x=x, weight=w, stride=1, padding=1, dilation=1, groups=1, in_relu=True,
                out_relu=False, stats=False)
    for dtype in (torch.float32, torch.bfloat16):
        check_op("conv_fwd", base, dtype, "x")
        check_op("conv_fwd", {**base, "residual": data(2, 11, 7, 7), "out_relu": True}, dtype,
                 "x")
        check_op("conv_fwd", {**base, "in_scale": chan(5, 0.5), "in_shift": chan(5),
                              "in_relu": False}, dtype, "x")


@pytest.mark.parametrize("dtype", DT)
@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("geom", GEOMS, ids=GEOM_IDS)
@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused"])
def test_conv_bwd_data(geom, fmt, dtype, fused):
    n, c, h, w, k, r, s, p, d, g = geom
    ho, wo = out_hw(h, r, s, p, d), out_hw(w, r, s, p, d)
    args = dict(dz=data(n, k, ho, wo, fmt=fmt, offset=0.0), y=data(n, k, ho, wo, fmt=fmt),
                a=chan(k, 0.5), b=chan(k) * 0.2, c=chan(k) * 0.2,
                weight=data(k, c // g, r, r, offset=0.0, scale=0.3), input_size=[n, c, h, w],
                stride=s, padding=p, dilation=d, groups=g)
    if fused:
        args.update(residual=data(n, c, h, w, fmt=fmt, offset=0.0),
                    prev_y=data(n, c, h, w, fmt=fmt), prev_scale=chan(c, 0.5),
                    prev_shift=chan(c), prev_mean=chan(c) + 0.5, prev_invstd=chan(c, 0.5))
    check_op("conv_bwd_data", args, dtype, "dz")


def test_conv_bwd_data_prev_without_affine():
    """prev_y with no prev_scale: the ReLU mask is taken on prev_y itself."""
    args = dict(dz=data(2, 5, 7, 7, offset=0.0), y=data(2, 5, 7, 7), a=chan(5, 0.5),
                b=chan(5), c=chan(5), weight=data(5, 11, 1, 1, scale=0.3), input_size=[2, 11, 7, 7],
                stride=1, padding=0, dilation=1, groups=1, prev_y=data(2, 11, 7, 7, offset=0.0),
                prev_mean=chan(11), prev_invstd=chan(11, 0.5))
    check_op("conv_bwd_data", args, torch.float32, "dz")


@pytest.mark.parametrize("dtype", DT)
@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("geom", GEOMS, ids=GEOM_IDS)
@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused"])
def test_conv_bwd_weight(geom, fmt, dtype, fused):
    n, c, h, w, k, r, s, p, d, g = geom
    ho, wo = out_hw(h, r, s, p, d), out_hw(w, r, s, p, d)
    args = dict(x=data(n, c, h, w, fmt=fmt), in_relu=fused,
                dz=data(n, k, ho, wo, fmt=fmt, offset=0.0), y=data(n, k, ho, wo, fmt=fmt),
                a=chan(k, 0.5), b=chan(k) * 0.2, c=chan(k) * 0.2,
                weight=data(k, c // g, r, r), stride=s, padding=p, dilation=d, groups=g)
    if fused:
        args.update(in_scale=chan(c, 0.5), in_shift=chan(c))
    check_op("conv_bwd_weight", args, dtype, "x")


@pytest.mark.parametrize("dtype", DT)
@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("geom", GEOMS, ids=GEOM_IDS)
@pytest.mark.parametrize("input_kind", ["block_input", "prev_unit", "prev_unit_res"])
def test_conv_bwd(geom, fmt, dtype, input_kind):
    """Both gradients in one call (dy mapped once; a 3x3 in one ATen convolution_backward)
    against reference.conv_bwd: the block's input (plain; a projection's or the first conv's
    with the shortcut's gradient as residual) and a previous unit's raw output behind its
    BN+ReLU (dx masked, that BN's sums; with a residual too)."""
    n, c, h, w, k, r, s, p, d, g = geom
    ho, wo = out_hw(h, r, s, p, d), out_hw(w, r, s, p, d)
    args = dict(x=data(n, c, h, w, fmt=fmt), in_relu=False,
                dz=data(n, k, ho, wo, fmt=fmt, offset=0.0), y=data(n, k, ho, wo, fmt=fmt),
                a=chan(k, 0.5), b=chan(k) * 0.2, c=chan(k) * 0.2,
                weight=data(k, c // g, r, r, offset=0.0, scale=0.3), stride=s, padding=p,
                dilation=d, groups=g)
    if input_kind == "block_input":
        args.update(residual=data(n, c, h, w, fmt=fmt, offset=0.0))
    else:
        args.update(in_scale=chan(c, 0.5), in_shift=chan(c), in_relu=True,
                    prev_mean=chan(c) + 0.5, prev_invstd=chan(c, 0.5))
        if input_kind == "prev_unit_res":
            args.update(residual=data(n, c, h, w, fmt=fmt, offset=0.0))
    check_op("conv_bwd", args, dtype, "dz")


def test_conv_bwd_plain_and_strided_1x1():
    """No residual, no prologue; the strided 1x1 (a subsampled weight-gradient GEMM)."""
    for k_size, stride in ((1, 2), (3, 1)):
        args = dict(x=data(2, 11, 9, 9, fmt=CL), in_relu=False,
                    dz=data(2, 7, 5 if stride == 2 else 9, 5 if stride == 2 else 9, fmt=CL,
                            offset=0.0), a=chan(7, 0.5), b=chan(7) * 0.2, c=chan(7) * 0.2,
                    weight=data(7, 11, k_size, k_size, offset=0.0, scale=0.3), stride=stride,
                    padding=k_size // 2, dilation=1, groups=1)
        args["y"] = data(*args["dz"].shape, fmt=CL)
        check_op("conv_bwd", args, torch.float32, "dz")


# ----------------------------------------------------------------------------- elementwise ops
SHAPES = [(2, 5, 7, 7), (3, 11, 13, 13), (2, 16, 5, 3), (1, 7, 1, 1)]


@pytest.mark.parametrize("dtype", DT)
@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("res_affine", [False, True], ids=["res", "res_bn"])
def test_block_end(shape, fmt, dtype, res_affine):
    c = shape[1]
    args = dict(y=data(*shape, fmt=fmt), scale=chan(c, 0.5), shift=chan(c),
                residual=data(*shape, fmt=fmt, offset=-0.3))
    if res_affine:
        args.update(res_scale=chan(c, 0.5), res_shift=chan(c))
    check_op("block_end", args, dtype, "y")


def test_block_end_mixed_formats():
    args = dict(y=data(2, 5, 7, 7, fmt=CL), scale=chan(5, 0.5), shift=chan(5),
                residual=data(2, 5, 7, 7))
    check_op("block_end", args, torch.float32, "y")


@pytest.mark.parametrize("dtype", DT)
@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("proj", [False, True], ids=["identity", "projection"])
def test_block_end_bwd(shape, fmt, dtype, proj):
    c = shape[1]
    args = dict(d_out=data(*shape, fmt=fmt, offset=0.0), out=data(*shape, fmt=fmt, offset=0.2),
                y=data(*shape, fmt=fmt), mean=chan(c) + 0.5, invstd=chan(c, 0.5))
    if proj:
        args.update(y_d=data(*shape, fmt=fmt, offset=-1.0), mean_d=chan(c) - 1.0,
                    invstd_d=chan(c, 0.5))
    check_op("block_end_bwd", args, dtype, "d_out")


# ----------------------------------------------------------------------------- bn_finalize
def bn_state(c, dtype=torch.float32):
    return dict(running_mean=torch.randn(c, dtype=dtype), running_var=torch.rand(c, dtype=dtype)
                + 0.5, num_batches_tracked=torch.tensor(3, dtype=torch.long))


@pytest.mark.parametrize("stat", [torch.float32, torch.float64])
@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no_affine"])
def test_bn_finalize(stat, momentum, affine, device="cpu"):
    c, count = 11, 98
    mean = torch.randn(c, dtype=stat) + 2.0
    m2 = (torch.rand(c, dtype=stat) + 0.1) * count
    w, b = (torch.rand(c, dtype=stat) + 0.5, torch.randn(c, dtype=stat)) if affine else (None,
                                                                                        None)
    state = bn_state(c, stat)
    ref_state = {k: v.clone() for k, v in state.items()}
    dev = {k: v.to(device) for k, v in state.items()}
    def to(t):
        return None if t is None else t.to(device)
    out = ops.bn_finalize(to(mean), to(m2), count, to(w), to(b), dev["running_mean"],
                          dev["running_var"], dev["num_batches_tracked"], momentum, 1e-5, True)
    ref = R.bn_finalize(mean, m2, count, w, b, ref_state["running_mean"],
                        ref_state["running_var"], ref_state["num_batches_tracked"], momentum,
                        1e-5, True)
    tol = TOLERANCE[stat]
    for o, r in zip(out, ref):
        assert o.dtype == r.dtype and rel_err(o, r) <= tol
    for k in state:  # mutated in place, exactly like the reference
        assert rel_err(dev[k], ref_state[k]) <= tol, k
    assert int(dev["num_batches_tracked"]) == 4


def test_bn_finalize_no_update_and_mixed_dtype():
    c = 5
    mean, m2 = torch.randn(c), torch.rand(c) * 10
    state = bn_state(c)
    before = {k: v.clone() for k, v in state.items()}
    out = ops.bn_finalize(mean, m2, 10, None, None, state["running_mean"], state["running_var"],
                          state["num_batches_tracked"], 0.1, 1e-5, False)
    for k in state:
        assert torch.equal(state[k], before[k])
    ref = R.bn_finalize(mean, m2, 10, None, None, None, None, None, 0.1, 1e-5, False)
    for o, r in zip(out, ref):
        assert rel_err(o, r) <= 1e-6
    # float64 running stats with float32 batch statistics, momentum given, no counter
    rm, rv = torch.randn(c, dtype=torch.float64), torch.rand(c, dtype=torch.float64)
    rm_ref, rv_ref = rm.clone(), rv.clone()
    ops.bn_finalize(mean, m2, 10, None, None, rm, rv, None, 0.2, 1e-5, True)
    R.bn_finalize(mean, m2, 10, None, None, rm_ref, rv_ref, None, 0.2, 1e-5, True)
    assert rel_err(rm, rm_ref) <= 1e-6 and rel_err(rv, rv_ref) <= 1e-6


def test_bn_finalize_cumulative_sequence():
    """momentum=None over several batches: the exact cumulative average."""
    c = 4
    state, ref_state = bn_state(c), None
    state["num_batches_tracked"].zero_()
    ref_state = {k: v.clone() for k, v in state.items()}
    for _ in range(3):
        mean, m2 = torch.randn(c), torch.rand(c) * 7
        ops.bn_finalize(mean, m2, 8, None, None, *state.values(), None, 1e-5, True)
        R.bn_finalize(mean, m2, 8, None, None, *ref_state.values(), None, 1e-5, True)
    for k in state:
        assert rel_err(state[k], ref_state[k]) <= 1e-6, k


# ----------------------------------------------------------------------------- bn_backward
@pytest.mark.parametrize("stat", [torch.float32, torch.float64])
@pytest.mark.parametrize("param_dtype", [None, torch.bfloat16], ids=["param_stat", "param_bf16"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no_affine"])
@pytest.mark.parametrize("batch_stats", [True, False], ids=["batch", "fixed"])
def test_bn_backward(stat, param_dtype, affine, batch_stats):
    """(a, b, c) as reference.bn_bwd_coeffs, the same arithmetic in the same order: equal;
    the parameters' gradients in their dtype, fresh tensors; an absent one empty."""
    c, count = 11, 98
    sums = (torch.randn(c, dtype=stat) * count, torch.randn(c, dtype=stat) * count)
    stats = (torch.randn(c, dtype=stat) + 1.0, torch.randn(c, dtype=stat) + 2.0,
             torch.rand(c, dtype=stat) + 0.1)  # scale, mean, invstd
    pd = param_dtype or stat
    w, b = (torch.randn(c, dtype=pd), torch.randn(c, dtype=pd)) if affine else (None, None)
    out = ops.bn_backward(*sums, count, *stats, batch_stats, w, b)
    ref = R.bn_backward(*sums, count, *stats, batch_stats, w, b)
    for i, (o, r) in enumerate(zip(out[:3], ref[:3])):
        assert o.dtype == stat and o.shape == (c,), i
        assert torch.equal(o, r), f"coefficient {'abc'[i]}: {rel_err(o, r):.1e}"
    for o, r, s in zip(out[3:], ref[3:], (sums[1], sums[0])):
        if not affine:
            assert o.numel() == 0
            continue
        assert o.dtype == pd and torch.equal(o, r)
        assert o.data_ptr() != s.data_ptr()  # two BNs' parameters never share a gradient


# ----------------------------------------------------------------------------- numerics
def test_stats_stable_when_mean_dominates():
    """|mean| >> std: statistics against float64 statistics of the same stored y."""
    for fmt in (torch.contiguous_format, CL):
        x = (torch.randn(2, 5, 13, 13) + 300.0).contiguous(memory_format=fmt)
        w = torch.rand(7, 5, 1, 1)
        y, mean, m2 = ops.conv_fwd(x, w, 1, 0, 1, 1, None, None, False, None, None, None, None,
                                   None, False, True)
        mean64, m2_64 = R.channel_stats(y.double())  # fp32 y is exactly the conv output
        assert (mean64.abs() / (m2_64 / y[:, 0].numel()).sqrt()).min() > 100
        assert rel_err(mean, mean64) <= 1e-6
        assert rel_err(m2, m2_64) <= 1e-5


def test_block_end_bwd_sums_when_mean_dominates():
    for fmt in (torch.contiguous_format, CL):
        y = (torch.randn(2, 5, 13, 13) + 300.0).contiguous(memory_format=fmt)
        d_out = torch.randn(2, 5, 13, 13).contiguous(memory_format=fmt)
        out = torch.randn(2, 5, 13, 13).contiguous(memory_format=fmt)
        mean, m2 = R.channel_stats(y)
        invstd = torch.rsqrt(m2 / y[:, 0].numel())
        _, s0, s1, _ = ops.block_end_bwd(d_out, out, y, mean, invstd, None, None, None)
        _, r0, r1, _ = R.block_end_bwd(d_out.double(), out.double(), y.double(), mean.double(),
                                       invstd.double())
        assert rel_err(s0, r0) <= 1e-6 and rel_err(s1, r1) <= 1e-5


def test_nan_propagates():
    x = torch.randn(2, 5, 7, 7)
    x[0, 1, 3, 3] = float("nan")
    w = torch.randn(11, 5, 3, 3) * 0.2
    sc, sh = torch.rand(5) + 0.5, torch.randn(5)
    y, mean, _ = ops.conv_fwd(x, w, 1, 1, 1, 1, sc, sh, True, None, None, None, None, None,
                              True, True)
    ry, rmean, _ = R.conv_fwd(x, w, 1, 1, 1, 1, sc, sh, True, out_relu=True, stats=True)
    assert y.isnan().any() and torch.equal(y.isnan(), ry.isnan())
    assert torch.equal(mean.isnan(), rmean.isnan()) and mean.isnan().all()

    yb = torch.randn(2, 5, 7, 7)
    yb[1, 2, 0, 0] = float("nan")
    s, t = torch.rand(5), torch.randn(5)
    out = ops.block_end(yb, s, t, torch.randn(2, 5, 7, 7), None, None)
    assert out[1, 2, 0, 0].isnan() and out.isnan().sum() == 1

    # backward: a NaN pre-activation lets the gradient through (threshold_backward)
    d_out, o = torch.randn(2, 5, 7, 7), torch.randn(2, 5, 7, 7)
    o[0, 0, 0, 0] = float("nan")
    mean, invstd = torch.zeros(5), torch.ones(5)
    dz, *_ = ops.block_end_bwd(d_out, o, torch.randn(2, 5, 7, 7), mean, invstd, None, None, None)
    rdz, *_ = R.block_end_bwd(d_out, o, torch.randn(2, 5, 7, 7), mean, invstd)
    assert torch.equal(dz, rdz) and dz[0, 0, 0, 0] == d_out[0, 0, 0, 0]


# ----------------------------------------------------------------------------- bad input
def _conv_fwd(x, w, **kw):
    a = dict(stride=1, padding=1, dilation=1, groups=1, in_scale=None, in_shift=None,
             in_relu=False, out_scale=None, out_shift=None, residual=None, res_scale=None,
             res_shift=None, out_relu=False, stats=False)
    a.update(kw)
    return ops.conv_fwd(x, w, *a.values())


@pytest.mark.parametrize("case,match", [
    ("int_x", "must be float32, float64, float16 or bfloat16"),
    ("rank", "must be 4-D"),
    ("weight_dtype", "weight must have dtype"),
    ("channels", "input channels with groups=1"),
    ("groups", "input channels with groups=2"),
    ("scale_size", "in_scale must be a 1-D per-channel tensor of 5 elements"),
    ("scale_dtype", "in_scale must have dtype Float"),
    ("scale_without_shift", "in_scale and in_shift must be given together"),
    ("residual_shape", "residual must have shape"),
    ("stride", "stride must be >= 1"),
    ("too_small", "is too small for kernel"),
])
def test_conv_fwd_errors(case, match):
    x, w = torch.randn(2, 5, 7, 7), torch.randn(11, 5, 3, 3)
    kw = {}
    if case == "int_x":
        x = x.long()
    elif case == "rank":
        x = x[0]
    elif case == "weight_dtype":
        w = w.double()
    elif case == "channels":
        w = torch.randn(11, 4, 3, 3)
    elif case == "groups":
        kw["groups"] = 2
    elif case == "scale_size":
        kw.update(in_scale=torch.ones(4), in_shift=torch.ones(4))
    elif case == "scale_dtype":
        kw.update(in_scale=torch.ones(5, dtype=torch.float64), in_shift=torch.ones(5))
    elif case == "scale_without_shift":
        kw.update(in_scale=torch.ones(5))
    elif case == "residual_shape":
        kw.update(residual=torch.randn(2, 11, 6, 6))
    elif case == "stride":
        kw.update(stride=0)
    elif case == "too_small":
        x, kw = torch.randn(2, 5, 2, 2), dict(padding=0, dilation=2)
    with pytest.raises(RuntimeError, match=match):
        _conv_fwd(x, w, **kw)


def test_other_op_errors():
    y, c = torch.randn(2, 5, 7, 7), torch.ones(5)
    with pytest.raises(RuntimeError, match="residual must have the shape of y"):
        ops.block_end(y, c, c, torch.randn(2, 5, 7, 6), None, None)
    with pytest.raises(RuntimeError, match="residual must have the dtype of y"):
        ops.block_end(y, c, c, y.double(), None, None)
    with pytest.raises(RuntimeError, match="y_d needs mean_d and invstd_d"):
        ops.block_end_bwd(y, y, y, c, c, y, None, None)
    with pytest.raises(RuntimeError, match="momentum=None .* needs num_batches_tracked"):
        ops.bn_finalize(c, c, 10, None, None, c.clone(), c.clone(), None, None, 1e-5, True)
    with pytest.raises(RuntimeError, match="needs running_mean and running_var"):
        ops.bn_finalize(c, c, 10, None, None, None, None, None, 0.1, 1e-5, True)
    with pytest.raises(RuntimeError, match="count must be > 0"):
        ops.bn_finalize(c, c, 0, None, None, None, None, None, 0.1, 1e-5, False)
    with pytest.raises(RuntimeError, match="sum_dz must be a 1-D per-channel tensor of 5"):
        ops.bn_backward(c[:4], c, 10, c, c, c, True, None, None)
    with pytest.raises(RuntimeError, match="invstd must have dtype Float"):
        ops.bn_backward(c, c, 10, c, c, c.double(), True, None, None)
    with pytest.raises(RuntimeError, match="bias must be 1-D with 5 elements"):
        ops.bn_backward(c, c, 10, c, c, c, True, c, c[:3])
    with pytest.raises(RuntimeError, match="dz .* is not the output of a conv"):
        ops.conv_bwd_data(y, y, c, c, c, torch.randn(5, 3, 3, 3), [2, 3, 8, 8], 1, 0, 1, 1,
                          None, None, None, None, None, None)
    with pytest.raises(RuntimeError, match="prev_y needs prev_mean and prev_invstd"):
        ops.conv_bwd_data(y, y, c, c, c, torch.randn(5, 3, 3, 3), [2, 3, 7, 7], 1, 1, 1, 1,
                          None, torch.randn(2, 3, 7, 7), None, None, None, None)
    with pytest.raises(RuntimeError, match="a must have dtype Float"):
        ops.conv_bwd_weight(y, None, None, False, y, y, c.double(), c, c,
                            torch.randn(5, 5, 3, 3), 1, 1, 1, 1)


# ----------------------------------------------------------------------------- CUDA kernels
@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DT)
@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("shape", SHAPES + [(4, 64, 14, 14), (3, 13, 9, 9)],
                         ids=lambda s: "x".join(map(str, s)))
def test_cuda_block_end_and_bwd(shape, fmt, dtype):
    c = shape[1]
    args = dict(y=data(*shape, fmt=fmt), scale=chan(c, 0.5), shift=chan(c),
                residual=data(*shape, fmt=fmt, offset=-0.3), res_scale=chan(c, 0.5),
                res_shift=chan(c))
    check_op("block_end", args, dtype, "y", device="cuda")
    args = dict(d_out=data(*shape, fmt=fmt, offset=0.0), out=data(*shape, fmt=fmt, offset=0.2),
                y=data(*shape, fmt=fmt), mean=chan(c) + 0.5, invstd=chan(c, 0.5),
                y_d=data(*shape, fmt=fmt, offset=-1.0), mean_d=chan(c) - 1.0,
                invstd_d=chan(c, 0.5))
    first = check_op("block_end_bwd", args, dtype, "d_out", device="cuda")
    again = call_op("block_end_bwd", {k: v.to("cuda") if isinstance(v, torch.Tensor) else v
                                      for k, v in cast(args, dtype).items()})
    for a, b in zip(first, again):  # fixed-order reduction: bitwise deterministic
        assert torch.equal(a, b)


@gpu
@pytest.mark.gpu
def test_cuda_block_end_unaligned():
    """Offset views (not 16-byte aligned) and sizes that are no multiple of the vector width."""
    for dtype in (torch.float32, torch.bfloat16):
        base = torch.randn(2 * 5 * 7 * 7 + 1, device="cuda", dtype=dtype)
        y = base[1:].view(2, 5, 7, 7)
        s, t = torch.rand(5, device="cuda") + 0.5, torch.randn(5, device="cuda")
        r = torch.randn(2, 5, 7, 7, device="cuda", dtype=dtype)
        out = ops.block_end(y, s, t, r, None, None)
        ref = R.block_end(y.cpu(), s.cpu(), t.cpu(), r.cpu())
        assert rel_err(out, ref) <= TOLERANCE[dtype]


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative"])
def test_cuda_bn_finalize(momentum):
    test_bn_finalize(torch.float32, momentum, True, device="cuda")
