"""The implicit-GEMM conv math of the CUDA kernels (csrc/cuda/conv_*.cu).

On CPU: ``fused_resnet::_conv_fwd_igemm``, ``_conv_bwd_data_igemm`` and ``_conv_bwd_weight_igemm``
(csrc/cpu/conv_igemm_cpu.cpp) run the same tile loops, operand index math, prologue / BN-backward
map, padding and stride holes, epilogues, per-tile statistics / sums merges and split-K
reduction as the CUDA kernels, in plain C++; they are checked against ``reference.conv_fwd``,
``conv_bwd_data`` and ``conv_bwd_weight``.
On a GPU (``@pytest.mark.gpu``): the three CUDA conv ops on ResNet-50 stage shapes, and against
the twins.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from fused_resnet import reference as R
from fused_resnet.testing import TOLERANCE, rel_err

try:
    import fused_resnet._C  # noqa: F401  (registers torch.ops.fused_resnet.*)
except ImportError as e:
    pytest.skip(f"fused_resnet._C is not available ({e})", allow_module_level=True)

ops = torch.ops.fused_resnet
if not hasattr(ops, "_conv_fwd_igemm"):
    pytest.skip("fused_resnet._C was built without _conv_fwd_igemm", allow_module_level=True)

HAS_BWD_TWINS = hasattr(ops, "_conv_bwd_data_igemm") and hasattr(ops, "_conv_bwd_weight_igemm")
needs_bwd_twins = pytest.mark.skipif(not HAS_BWD_TWINS,
                                     reason="fused_resnet._C was built without the backward twins")

CL = torch.channels_last
FMTS = [torch.contiguous_format, CL]
HAS_CUDA = torch.cuda.is_available()

# (N, C, H, W, K, R, stride, padding, dilation): odd sizes and channel counts, several
# 64-row / 64-column tiles and BK=32 steps, tile overhangs in every dimension.
GEOMS = [
    (2, 3, 7, 7, 5, 3, 1, 1, 1),
    (2, 5, 13, 13, 11, 3, 2, 1, 1),
    (1, 11, 13, 13, 7, 1, 1, 0, 1),
    (2, 11, 7, 7, 5, 1, 2, 0, 1),
    (1, 5, 13, 13, 3, 3, 1, 2, 2),
    (1, 8, 9, 11, 70, 3, 2, 1, 1),
    (2, 16, 13, 13, 8, 3, 1, 0, 1),
    (2, 5, 11, 11, 7, 3, 2, 1, 1),  # dgrad: phase 0 has two row tiles, phase 3 one
]
GEOM_IDS = ["c3_3x3", "c5_3x3s2", "c11_1x1", "c11_1x1s2", "c5_3x3d2", "k70_3x3s2", "c16_nopad",
             "c5_3x3s2_h11"]
VARIANTS = ["plain", "prologue", "epilogue", "residual", "res_affine", "all"]


def vec(c: int, offset: float = 0.0) -> torch.Tensor:
    return torch.randn(c, dtype=torch.float64) * 0.5 + offset


def fwd_args(geom, variant: str, stats: bool) -> dict:
    """float64 arguments of conv_fwd (schema names) for one geometry and fusion variant."""
    n, c, h, w, k, r, stride, pad, dil = geom
    p = (h + 2 * pad - dil * (r - 1) - 1) // stride + 1
    q = (w + 2 * pad - dil * (r - 1) - 1) // stride + 1
    a = dict(x=torch.randn(n, c, h, w, dtype=torch.float64) + 0.3,
             weight=torch.randn(k, c, r, r, dtype=torch.float64) / (c * r * r) ** 0.5,
             stride=stride, padding=pad, dilation=dil, groups=1, in_relu=False, out_relu=False,
             stats=stats)
    if variant in ("prologue", "all"):  # non-zero shift: padding must stay 0, not relu(shift)
        a.update(in_scale=vec(c, 1.0), in_shift=vec(c, 0.3), in_relu=True)
    if variant in ("epilogue", "all"):
        a.update(out_scale=vec(k, 1.0), out_shift=vec(k), out_relu=True)
    if variant in ("residual", "res_affine", "all"):
        a["residual"] = torch.randn(n, k, p, q, dtype=torch.float64)
    if variant in ("res_affine", "all"):
        a.update(res_scale=vec(k, 1.0), res_shift=vec(k))
    return a


def cast(args: dict, dtype: torch.dtype, fmt=torch.contiguous_format, device="cpu") -> dict:
    """Data (4-D) to ``dtype`` in ``fmt``, per-channel vectors to the statistics dtype."""
    out = {}
    for key, v in args.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device, dtype if v.dim() == 4 else R.stat_dtype(dtype))
            if v.dim() == 4 and key != "weight":
                v = v.contiguous(memory_format=fmt)
        out[key] = v
    return out


def call(name: str, args: dict):
    schema = getattr(ops, name).default._schema
    return getattr(ops, name)(*[args.get(a.name) for a in schema.arguments])


def own_args(fn, args: dict) -> dict:
    """The entries of ``args`` that ``fn`` takes (bwd_args holds both backward ops' inputs)."""
    params = inspect.signature(fn).parameters
    return {k: v for k, v in args.items() if k in params}


def ref_call(fn, args: dict):
    """The reference on CPU float64 copies of ``args`` (already rounded to the data dtype)."""
    return fn(**{k: v.cpu().double() if isinstance(v, torch.Tensor) else v
                 for k, v in own_args(fn, args).items()})


def low_tol(fn, low: dict, ref64, dtype) -> float:
    """docs/design.md §5: fp16/bf16 may be 2x the error of plain PyTorch in the same dtype."""
    if dtype not in (torch.float16, torch.bfloat16):
        return TOLERANCE[dtype]
    plain = fn(**{k: v.cpu() if isinstance(v, torch.Tensor) else v
                  for k, v in own_args(fn, low).items()})
    plain = plain[0] if isinstance(plain, tuple) else plain
    return max(TOLERANCE[dtype], 2 * rel_err(plain, ref64))


def bwd_args(geom) -> dict:
    n, c, h, w, k, r, stride, pad, dil = geom
    p = (h + 2 * pad - dil * (r - 1) - 1) // stride + 1
    q = (w + 2 * pad - dil * (r - 1) - 1) // stride + 1
    return dict(dz=torch.randn(n, k, p, q, dtype=torch.float64),
                y=torch.randn(n, k, p, q, dtype=torch.float64) + 0.5,
                a=vec(k, 1.0), b=vec(k) * 0.1, c=vec(k) * 0.1,
                x=torch.randn(n, c, h, w, dtype=torch.float64),
                weight=torch.randn(k, c, r, r, dtype=torch.float64) / (c * r * r) ** 0.5,
                input_size=[n, c, h, w], stride=stride, padding=pad, dilation=dil, groups=1,
                in_scale=vec(c, 1.0), in_shift=vec(c, 0.2), in_relu=True,
                residual=torch.randn(n, c, h, w, dtype=torch.float64),
                prev_y=torch.randn(n, c, h, w, dtype=torch.float64),
                prev_scale=vec(c, 1.0), prev_shift=vec(c), prev_mean=vec(c),
                prev_invstd=torch.rand(c, dtype=torch.float64) + 0.5)


# ------------------------------------------------------------------ CPU twin vs reference
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("fmt", FMTS, ids=["nchw", "nhwc"])
@pytest.mark.parametrize("geom", GEOMS, ids=GEOM_IDS)
def test_igemm_fwd_matches_reference(geom, fmt, variant):
    args = fwd_args(geom, variant, stats=variant in ("plain", "all"))
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        low = cast(args, dtype, fmt)
        y, mean, m2 = call("_conv_fwd_igemm", low)
        ry, rmean, rm2 = ref_call(R.conv_fwd, low)
        assert y.dtype == dtype and y.shape == ry.shape
        assert R.memory_format(y) == R.memory_format(low["x"]), "output memory format"
        tol = low_tol(R.conv_fwd, low, ry, dtype)
        assert rel_err(y, ry) <= tol, (dtype, rel_err(y, ry), tol)
        if low["stats"]:
            # Statistics of the fp32/fp64 accumulator; in fp16/bf16 the float64 reference
            # does not round the prologue output to the data dtype, so they get its tolerance.
            stol = {torch.float64: 1e-10, torch.float32: 1e-5}.get(dtype, tol)
            assert mean.dtype == R.stat_dtype(dtype)
            assert rel_err(mean, rmean) <= stol and rel_err(m2, rm2) <= stol, dtype
        else:
            assert mean.numel() == 0 and m2.numel() == 0


def test_igemm_fwd_matches_cpp_conv_fwd():
    args = cast(fwd_args(GEOMS[1], "all", stats=True), torch.float32, CL)
    for ours, theirs in zip(call("_conv_fwd_igemm", args), call("conv_fwd", args)):
        assert rel_err(ours, theirs) <= 1e-6


def test_igemm_padding_is_zero_after_prologue():
    """relu(0*scale + shift) with shift > 0 is > 0: a padded tap must still read 0."""
    x = torch.zeros(1, 3, 5, 5, dtype=torch.float64)
    w = torch.ones(1, 3, 3, 3, dtype=torch.float64)
    scale, shift = torch.ones(3, dtype=torch.float64), torch.full((3,), 2.0, dtype=torch.float64)
    y, _, _ = ops._conv_fwd_igemm(x, w, 1, 1, 1, 1, scale, shift, True, None, None, None, None,
                                 None, False, False)
    assert y[0, 0, 0, 0].item() == 2.0 * 3 * 4  # corner: 4 of 9 taps inside
    assert y[0, 0, 2, 2].item() == 2.0 * 3 * 9


@pytest.mark.parametrize("fmt", FMTS, ids=["nchw", "nhwc"])
def test_igemm_stats_stable_when_mean_dominates(fmt):
    """|mean| >> std: statistics against float64 statistics of the same stored y."""
    x = (torch.randn(2, 5, 13, 13) * 0.1 + 100.0).contiguous(memory_format=fmt)
    w = torch.rand(70, 5, 3, 3)
    y, mean, m2 = ops._conv_fwd_igemm(x, w, 1, 0, 1, 1, None, None, False, None, None, None, None,
                                     None, False, True)  # no padding: every output is large
    mean64, m2_64 = R.channel_stats(y.double())  # fp32 y is exactly the accumulator
    assert (mean64.abs() / (m2_64 / y[:, 0].numel()).sqrt()).min() > 100
    assert rel_err(mean, mean64) <= 1e-6
    assert rel_err(m2, m2_64) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_igemm_nan_propagates(dtype):
    args = fwd_args(GEOMS[0], "all", stats=True)
    args["x"][0, 1, 3, 3] = float("nan")  # through the prologue ReLU, the GEMM and the stats
    args["out_shift"][2] = float("nan")   # and through the epilogue ReLU
    low = cast(args, dtype, CL)
    y, mean, m2 = call("_conv_fwd_igemm", low)
    ry, rmean, rm2 = ref_call(R.conv_fwd, low)
    assert y.isnan().any() and mean.isnan().any()
    for ours, ref in ((y, ry), (mean, rmean), (m2, rm2)):
        rel_err(ours, ref)  # asserts equal NaN patterns


def test_igemm_rejects_groups():
    x, w = torch.randn(1, 4, 5, 5), torch.randn(4, 2, 3, 3)
    with pytest.raises(RuntimeError, match="groups == 1"):
        ops._conv_fwd_igemm(x, w, 1, 1, 1, 2, None, None, False, None, None, None, None, None,
                           False, False)


# --------------------------------------------------------- backward twins vs reference
DGRAD_VARIANTS = ["plain", "residual", "prev_y", "prev_y_noaffine", "all"]
WGRAD_VARIANTS = ["plain", "prologue", "prologue_norelu"]
ALL_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
# A 3x3 conv whose wgrad split-K (common/igemm.h conv_wgrad_splits) ends with an empty split
# after a partial one: N*P*Q = 3675 over 14 splits of 288 pixels.
EMPTY_SPLIT_GEOM = (3, 5, 35, 35, 11, 3, 1, 1, 1)


def wgrad_split_ranges(geom) -> list[tuple[int, int]]:
    """The wgrad reduction ranges of the CUDA launcher and the twin (common/igemm.h
    conv_wgrad_splits / conv_wgrad_kchunk), recomputed independently."""
    n, c, h, w, k, r, stride, pad, dil = geom
    p = (h + 2 * pad - dil * (r - 1) - 1) // stride + 1
    q = (w + 2 * pad - dil * (r - 1) - 1) // stride + 1
    npq, ctas = n * p * q, -(-k // 64) * -(-(r * r * c) // 64)
    splits = max(1, min(max(1, npq // 256), min(512, 512 // ctas)))
    kchunk = -(-(-(-npq // splits)) // 32) * 32
    return [(z * kchunk, min(npq, (z + 1) * kchunk)) for z in range(splits)]


def dgrad_args(geom, variant: str) -> dict:
    args = bwd_args(geom)
    if variant in ("plain", "prev_y", "prev_y_noaffine"):
        args.pop("residual")
    if variant in ("plain", "residual"):
        for key in ("prev_y", "prev_scale", "prev_shift", "prev_mean", "prev_invstd"):
            args.pop(key)
    if variant == "prev_y_noaffine":  # the input was relu(prev_y) itself
        args.pop("prev_scale")
        args.pop("prev_shift")
    return args


def wgrad_args(geom, variant: str) -> dict:
    args = bwd_args(geom)
    if variant == "plain":
        args.update(in_scale=None, in_shift=None, in_relu=False)
    if variant == "prologue_norelu":
        args["in_relu"] = False
    return args


def check_bwd_twin(name: str, args64: dict, dtype, fmt, weight_fmt=torch.contiguous_format):
    """The twin ``_<name>_igemm`` vs ``reference.<name>`` on ``args64`` cast to ``dtype``."""
    low = cast(args64, dtype, fmt)
    low["weight"] = low["weight"].contiguous(memory_format=weight_fmt)
    fn = getattr(R, name)
    ours = call(f"_{name}_igemm", low)
    ref = ref_call(fn, low)
    ours, ref = (ours, ref) if isinstance(ref, tuple) else ((ours,), (ref,))
    main = "weight" if name == "conv_bwd_weight" else "dz"
    assert ours[0].dtype == low[main].dtype and ours[0].shape == ref[0].shape
    assert R.memory_format(ours[0]) == R.memory_format(low[main]), "output memory format"
    tol = low_tol(fn, low, ref[0], dtype)
    assert rel_err(ours[0], ref[0]) <= tol, (name, dtype, rel_err(ours[0], ref[0]), tol)
    stol = {torch.float64: 1e-10, torch.float32: 1e-5}.get(dtype, tol)
    for o, r in zip(ours[1:], ref[1:]):  # dgrad's sums (empty without prev_y)
        assert o.dtype == R.stat_dtype(dtype) and o.shape == r.shape
        if r.numel():
            assert rel_err(o, r) <= stol, (name, dtype, rel_err(o, r), stol)


@needs_bwd_twins
@pytest.mark.parametrize("variant", DGRAD_VARIANTS)
@pytest.mark.parametrize("fmt", FMTS, ids=["nchw", "nhwc"])
@pytest.mark.parametrize("geom", GEOMS, ids=GEOM_IDS)
def test_igemm_bwd_data_matches_reference(geom, fmt, variant):
    args = dgrad_args(geom, variant)
    for dtype in ALL_DTYPES:
        check_bwd_twin("conv_bwd_data", args, dtype, fmt)


@needs_bwd_twins
@pytest.mark.parametrize("variant", WGRAD_VARIANTS)
@pytest.mark.parametrize("wfmt", FMTS, ids=["w_kcrs", "w_krsc"])
@pytest.mark.parametrize("fmt", FMTS, ids=["nchw", "nhwc"])
@pytest.mark.parametrize("geom", GEOMS, ids=GEOM_IDS)
def test_igemm_bwd_weight_matches_reference(geom, fmt, wfmt, variant):
    args = wgrad_args(geom, variant)
    for dtype in ALL_DTYPES:
        check_bwd_twin("conv_bwd_weight", args, dtype, fmt, wfmt)


@needs_bwd_twins
@pytest.mark.parametrize("wfmt", FMTS, ids=["w_kcrs", "w_krsc"])
def test_igemm_bwd_weight_empty_split(wfmt):
    """Several split-K ranges, a partial one and an empty last one (zero partials)."""
    ranges = wgrad_split_ranges(EMPTY_SPLIT_GEOM)
    assert len(ranges) > 2 and ranges[-1][0] >= ranges[-1][1], ranges
    assert any(0 < e - b < ranges[0][1] for b, e in ranges), "a partial split"
    args = wgrad_args(EMPTY_SPLIT_GEOM, "prologue")
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        check_bwd_twin("conv_bwd_weight", args, dtype, CL, wfmt)


@needs_bwd_twins
@pytest.mark.parametrize("fmt", FMTS, ids=["nchw", "nhwc"])
def test_igemm_bwd_data_stride_holes(fmt):
    """1x1 stride 2: odd input rows/columns (and the last, past every output) receive no
    gradient. The BN-backward map sends 0 to c != 0, so a hole must give 0 AFTER the map:
    there dx is exactly the residual, masked by the previous ReLU."""
    geom = (2, 3, 8, 9, 5, 1, 2, 0, 1)
    args = dgrad_args(geom, "all")
    args["c"] = args["c"] + 1.0  # a hole read as dz = y = 0 would give c*w != 0
    low = cast(args, torch.float64, fmt)
    dx, sum_dx, sum_dx_xhat = call("_conv_bwd_data_igemm", low)
    ref = ref_call(R.conv_bwd_data, low)
    pre = R._affine(low["prev_y"], low["prev_scale"], low["prev_shift"])
    hole_dx = torch.where(pre <= 0, torch.zeros_like(dx), low["residual"])
    holes = torch.ones(8, 9, dtype=torch.bool)
    holes[::2, ::2] = False
    assert torch.equal(dx[..., holes], hole_dx[..., holes])
    for ours, theirs in zip((dx, sum_dx, sum_dx_xhat), ref):
        assert rel_err(ours, theirs) <= 1e-10
    check_bwd_twin("conv_bwd_data", args, torch.bfloat16, fmt)


@needs_bwd_twins
def test_igemm_bwd_weight_in_weight_dtype():
    """Mixed precision: bf16 activations and gradients, a float32 (master) weight -> float32
    dw, accumulated in float32 and rounded once."""
    args = cast(wgrad_args(GEOMS[5], "prologue"), torch.bfloat16, CL)
    args["weight"] = args["weight"].float().contiguous(memory_format=CL)
    dw = call("_conv_bwd_weight_igemm", args)
    ref = R.conv_bwd_weight(**own_args(R.conv_bwd_weight, args))  # bf16 operands, fp32 math
    assert ref.dtype == dw.dtype == torch.float32 and R.memory_format(dw) == CL
    assert rel_err(dw, ref) <= 1e-5


@needs_bwd_twins
def test_igemm_bwd_match_cpp_ops():
    args = cast(bwd_args(GEOMS[1]), torch.float32, CL)
    for name in ("conv_bwd_data", "conv_bwd_weight"):
        ours, theirs = call(f"_{name}_igemm", args), call(name, args)
        ours, theirs = (ours, theirs) if isinstance(ours, tuple) else ((ours,), (theirs,))
        for o, t in zip(ours, theirs):
            assert rel_err(o, t) <= 1e-6, name


@needs_bwd_twins
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_igemm_bwd_nan_propagates(dtype):
    args = bwd_args(GEOMS[0])
    args["dz"][0, 1, 3, 3] = float("nan")      # through the BN-backward map and both GEMMs
    args["prev_y"][1, 2, 4, 4] = float("nan")  # a NaN pre-activation lets the gradient pass
    args["x"][1, 0, 2, 2] = float("nan")       # through the wgrad prologue ReLU
    low = cast(args, dtype, CL)
    dx, sum_dx, sum_dx_xhat = call("_conv_bwd_data_igemm", low)
    dw = call("_conv_bwd_weight_igemm", low)
    assert dx.isnan().any() and sum_dx_xhat.isnan().any() and dw.isnan().any()
    for ours, ref in zip((dx, sum_dx, sum_dx_xhat), ref_call(R.conv_bwd_data, low)):
        rel_err(ours, ref)  # asserts equal NaN patterns
    rel_err(dw, ref_call(R.conv_bwd_weight, low))


@needs_bwd_twins
def test_igemm_bwd_rejects_groups():
    dz, y, v = torch.randn(1, 4, 5, 5), torch.randn(1, 4, 5, 5), torch.randn(4)
    w = torch.randn(4, 2, 3, 3)
    with pytest.raises(RuntimeError, match="groups == 1"):
        ops._conv_bwd_data_igemm(dz, y, v, v, v, w, [1, 4, 5, 5], 1, 1, 1, 2, None, None, None,
                                None, None, None)
    with pytest.raises(RuntimeError, match="groups == 1"):
        ops._conv_bwd_weight_igemm(torch.randn(1, 4, 5, 5), None, None, False, dz, y, v, v, v, w,
                                  1, 1, 1, 2)


# ------------------------------------------------------------------ CUDA kernels (GPU only)
# ResNet-50 (v1.5) conv shapes at batch 8: (C, H, K, R, stride).
R50 = [(64, 56, 64, 1, 1), (64, 56, 64, 3, 1), (64, 56, 256, 1, 1), (256, 56, 128, 1, 1),
       (128, 56, 128, 3, 2), (512, 28, 256, 1, 1), (256, 28, 256, 3, 2), (256, 14, 1024, 1, 1),
       (1024, 14, 512, 1, 1), (512, 14, 512, 3, 2), (512, 7, 2048, 1, 1), (3, 13, 11, 3, 1),
       (3, 32, 64, 7, 2)]  # the last two: odd channels (SIMT backward), the stem
R50_IDS = [f"c{c}_h{h}_k{k}_{r}x{r}s{s}" for c, h, k, r, s in R50]
GPU_DTYPES = [torch.bfloat16, torch.float16, torch.float32]


def r50_geom(shape):
    c, h, k, r, s = shape
    return (8, c, h, h, k, r, s, r // 2, 1)


def gpu_check(name: str, args64: dict, dtype, fmt):
    """The CUDA op vs the float64 reference, both on the GPU (float64 convs there are fast)."""
    low = cast(args64, dtype, fmt, device="cuda")
    ours = call(name, low)
    ours = ours if isinstance(ours, tuple) else (ours,)
    fn = getattr(R, name)
    sig = fn.__code__.co_varnames[:fn.__code__.co_argcount]
    low = {k: v for k, v in low.items() if k in sig}
    ref = fn(**{k: v.double() if isinstance(v, torch.Tensor) else v for k, v in low.items()})
    ref = ref if isinstance(ref, tuple) else (ref,)
    tol = TOLERANCE[dtype]
    if dtype in (torch.float16, torch.bfloat16):  # 2x plain PyTorch (cuDNN) in the same dtype
        plain = fn(**low)
        tol = max(tol, 2 * rel_err(plain[0] if isinstance(plain, tuple) else plain, ref[0]))
    assert rel_err(ours[0], ref[0]) <= tol, (name, dtype, rel_err(ours[0], ref[0]), tol)
    for o, r in zip(ours[1:], ref[1:]):  # fp32 statistics / sums
        if r.numel():
            assert rel_err(o, r) <= max(1e-4, tol), (name, dtype, rel_err(o, r))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
@pytest.mark.parametrize("shape", R50, ids=R50_IDS)
def test_cuda_conv_fwd_resnet50(shape, dtype):
    args = fwd_args(r50_geom(shape), "all", stats=True)
    gpu_check("conv_fwd", args, dtype, CL)
    gpu_check("conv_fwd", fwd_args(r50_geom(shape), "plain", stats=True), dtype,
              torch.contiguous_format)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
@pytest.mark.parametrize("shape", R50, ids=R50_IDS)
def test_cuda_conv_bwd_data_resnet50(shape, dtype):
    args = bwd_args(r50_geom(shape))
    gpu_check("conv_bwd_data", args, dtype, CL)
    for key in ("residual", "prev_y", "prev_scale", "prev_shift", "prev_mean", "prev_invstd"):
        args.pop(key)
    gpu_check("conv_bwd_data", args, dtype, torch.contiguous_format)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
@pytest.mark.parametrize("shape", R50, ids=R50_IDS)
def test_cuda_conv_bwd_weight_resnet50(shape, dtype):
    args = bwd_args(r50_geom(shape))
    gpu_check("conv_bwd_weight", args, dtype, CL)
    args["weight"] = args["weight"].contiguous(memory_format=CL)
    gpu_check("conv_bwd_weight", args, dtype, torch.contiguous_format)


@pytest.mark.gpu
def test_cuda_conv_matches_igemm_twin_and_is_deterministic():
    args = cast(fwd_args(GEOMS[5], "all", stats=True), torch.bfloat16, CL)
    cpu = call("_conv_fwd_igemm", args)
    cuda_args = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    first, second = call("conv_fwd", cuda_args), call("conv_fwd", cuda_args)
    for a, b, c in zip(first, second, cpu):
        assert torch.equal(a, b)
        assert rel_err(a, c) <= 1e-2


@pytest.mark.gpu
@needs_bwd_twins
@pytest.mark.parametrize("wfmt", FMTS, ids=["w_kcrs", "w_krsc"])
@pytest.mark.parametrize("geom", [GEOMS[5], GEOMS[6], EMPTY_SPLIT_GEOM],
                         ids=["k70_simt", "c16_k8_tc", "empty_split"])
def test_cuda_conv_bwd_matches_igemm_twins_and_is_deterministic(geom, wfmt):
    """bf16: the tensor-core kernels where C % 8 == K % 8 == 0, else the SIMT fallback."""
    args = cast(bwd_args(geom), torch.bfloat16, CL)
    args["weight"] = args["weight"].contiguous(memory_format=wfmt)
    cuda_args = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    for name in ("conv_bwd_data", "conv_bwd_weight"):
        cpu = call(f"_{name}_igemm", args)
        first, second = call(name, cuda_args), call(name, cuda_args)
        if not isinstance(cpu, tuple):
            cpu, first, second = (cpu,), (first,), (second,)
        assert R.memory_format(first[0]) == R.memory_format(cpu[0]), name
        for a, b, c in zip(first, second, cpu):
            assert torch.equal(a, b), name
            assert rel_err(a, c) <= 1e-2, (name, rel_err(a, c))


@pytest.mark.gpu
def test_cuda_conv_rejects_float64_and_groups():
    x, w = torch.randn(1, 4, 5, 5, device="cuda"), torch.randn(4, 2, 3, 3, device="cuda")
    with pytest.raises(RuntimeError, match="groups == 1"):
        ops.conv_fwd(x, w, 1, 1, 1, 2, None, None, False, None, None, None, None, None, False,
                     False)
    with pytest.raises(RuntimeError, match="float64"):
        ops.conv_fwd(x.double(), torch.randn(4, 4, 3, 3, device="cuda", dtype=torch.float64),
                     1, 1, 1, 1, None, None, False, None, None, None, None, None, False, False)
