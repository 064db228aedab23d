"""The cuda backend's launch plans (csrc/cuda/launch_plan.h, fused_resnet/cuda_plans.py),
without a GPU: the emulated ops launch exactly their plans, and the plans' structure at every
ResNet-50 conv (batch 128, bf16, an H100) stays within the bounds of docs/design.md §5."""

from __future__ import annotations

import math
import os
import re

import pytest
import torch

from fused_resnet import cuda_plans
from fused_resnet.launch_plan import Launch, Target

H100 = cuda_plans.TARGETS["sm90"]  # the emulator plans as this device (csrc/cuda/device.h)
MAX_SERIAL_STEPS = 64
CL = torch.channels_last


def _out(h, k, stride, pad):
    return (h + 2 * pad - k) // stride + 1


def conv_args(n, c_in, c_out, k, stride, h, dtype, device="meta", **kw) -> dict:
    """Arguments of the three conv ops (channels-last data, float32 vectors) by name."""
    pad = k // 2
    p = _out(h, k, stride, pad)

    def data(*shape):
        return torch.randn(*shape, device=device).to(dtype).contiguous(memory_format=CL)

    def vec(c, offset=0.0):
        return torch.randn(c, device=device) * 0.5 + offset

    args = dict(x=data(n, c_in, h, h), weight=data(c_out, c_in, k, k) / (c_in * k * k) ** 0.5,
                stride=stride, padding=pad, dilation=1, groups=1, in_scale=vec(c_in, 1.0),
                in_shift=vec(c_in), in_relu=True, out_scale=None, out_shift=None,
                residual=None, res_scale=None, res_shift=None, out_relu=False, stats=True,
                dz=data(n, c_out, p, p), y=data(n, c_out, p, p) + 0.5, a=vec(c_out, 1.0),
                b=vec(c_out) * 0.1, c=vec(c_out) * 0.1, input_size=[n, c_in, h, h],
                prev_y=data(n, c_in, h, h), prev_scale=vec(c_in, 1.0), prev_shift=vec(c_in),
                prev_mean=vec(c_in), prev_invstd=torch.rand(c_in, device=device) + 0.5)
    args.update(kw)
    return args


def block_args(n, c, h, w, dtype, fmt=CL, device="meta", **kw) -> dict:
    def data(*shape):
        return torch.randn(*shape, device=device).to(dtype).contiguous(memory_format=fmt)

    sd = torch.float64 if dtype == torch.float64 else torch.float32

    def vec(offset=0.0):
        return (torch.randn(c, device=device) * 0.5 + offset).to(sd)

    args = dict(y=data(n, c, h, w), scale=vec(1.0), shift=vec(), residual=data(n, c, h, w),
                res_scale=None, res_shift=None, branch_scale=None,
                d_out=data(n, c, h, w), out=data(n, c, h, w).relu(), mean=vec(),
                invstd=vec(1.0).abs() + 0.5, y_d=None, mean_d=None, invstd_d=None,
                m2=vec(2.0).abs(), count=n * h * w, bias=vec(), running_mean=vec(),
                running_var=vec(1.0).abs(), num_batches_tracked=None, momentum=0.1, eps=1e-5,
                update_running_stats=False)
    args["weight"] = vec(1.0)
    args.update(kw)
    return args


SCHEMA = {
    "conv_fwd": ("x", "weight", "stride", "padding", "dilation", "groups", "in_scale",
                 "in_shift", "in_relu", "out_scale", "out_shift", "residual", "res_scale",
                 "res_shift", "out_relu", "stats"),
    "conv_bwd_data": ("dz", "y", "a", "b", "c", "weight", "input_size", "stride", "padding",
                      "dilation", "groups", "residual", "prev_y", "prev_scale", "prev_shift",
                      "prev_mean", "prev_invstd"),
    "conv_bwd_weight": ("x", "in_scale", "in_shift", "in_relu", "dz", "y", "a", "b", "c",
                        "weight", "stride", "padding", "dilation", "groups"),
    "bn_finalize": ("mean", "m2", "count", "weight", "bias", "running_mean", "running_var",
                    "num_batches_tracked", "momentum", "eps", "update_running_stats"),
    "block_end": ("y", "scale", "shift", "residual", "res_scale", "res_shift", "branch_scale"),
    "block_end_bwd": ("d_out", "out", "y", "mean", "invstd", "y_d", "mean_d", "invstd_d",
                      "branch_scale"),
}


def positional(op: str, args: dict) -> tuple:
    return tuple(args[name] for name in SCHEMA[op])


def test_schema_matches_the_ops():
    """SCHEMA is the registered argument order (csrc/op_schemas.h)."""
    pytest.importorskip("fused_resnet._C")
    for op, names in SCHEMA.items():
        schema = getattr(torch.ops.fused_resnet, op).default._schema
        assert tuple(a.name for a in schema.arguments) == names, op


# ------------------------------------------------------------------------ the API itself
def test_plans_follow_dtype_alignment_and_layout():
    """The kernel choices the launchers make: tensor cores for 16-bit data, SIMT for fp32 and
    for a misaligned 16-bit operand, element loads for unaligned activations, vector or
    scalar block_end, NHWC or NCHW partial sums."""
    pytest.importorskip("fused_resnet._C")
    bf = conv_args(2, 16, 24, 3, 1, 9, torch.bfloat16)
    names = {op: [launch.kernel for launch in cuda_plans.op_plan(op, positional(op, bf), H100)]
             for op in ("conv_fwd", "conv_bwd_data", "conv_bwd_weight")}
    assert names == {"conv_fwd": ["conv_fwd_tc.bf16", "conv_fwd_merge"],
                     "conv_bwd_data": ["conv_dgrad_tc.bf16", "conv_dgrad_merge"],
                     "conv_bwd_weight": ["conv_wgrad_tc.bf16", "conv_wgrad_reduce.bf16"]}
    f32 = conv_args(2, 16, 24, 3, 1, 9, torch.float32, stats=False)
    assert [launch.kernel for launch in cuda_plans.op_plan(
        "conv_fwd", positional("conv_fwd", f32), H100)] == ["conv_fwd_simt.f32"]
    skew = torch.randn(25, device="meta")[1:]  # 4-byte storage offset
    dgrad = cuda_plans.op_plan("conv_bwd_data", positional("conv_bwd_data", dict(bf, a=skew)),
                               H100)
    assert dgrad.launches[0].kernel == "conv_dgrad_simt.bf16"
    wgrad = cuda_plans.op_plan("conv_bwd_weight", positional(
        "conv_bwd_weight", dict(bf, in_scale=torch.randn(17, device="meta")[1:])), H100)
    assert wgrad.launches[0].kernel == "conv_wgrad_tc_scalar_b.bf16"
    be = block_args(2, 5, 7, 9, torch.float16, fmt=torch.contiguous_format)
    assert cuda_plans.op_plan("block_end", positional("block_end", be), H100).launches[
        0].kernel == "block_end_vec.f16"
    skewed = torch.randn(2 * 5 * 7 * 9 + 1, device="meta").half()[1:].view(2, 5, 7, 9)
    assert cuda_plans.op_plan("block_end", positional("block_end", dict(be, y=skewed)),
                              H100).launches[0].kernel == "block_end_scalar.f16"
    bwd = cuda_plans.op_plan("block_end_bwd", positional("block_end_bwd", be), H100)
    assert [launch.kernel for launch in bwd] == ["block_end_bwd_nchw.f16",
                                                 "block_end_bwd_merge.f32"]


def test_wgrad_split_k_follows_the_sm_count():
    """Split-K targets about four CTAs per SM of the target (the launcher passes the
    device's own count)."""
    pytest.importorskip("fused_resnet._C")
    args = positional("conv_bwd_weight", conv_args(128, 64, 64, 3, 1, 56, torch.bfloat16))
    for target in cuda_plans.TARGETS.values():
        gemm = cuda_plans.op_plan("conv_bwd_weight", args, target).launches[0]
        assert gemm.grid[0] * gemm.grid[1] == 9
        assert gemm.grid[2] == 4 * target.sms // 9, (target, gemm.grid)


def test_ctas_per_sm_follows_the_occupancy_rules():
    """Hand-computed occupancy: the tensor-core GEMM at its launch bound (168 registers:
    5376 per warp, 12 warps = 3 CTAs of 4 warps), shared-memory and thread limits."""
    tc = Launch("k", (1,), 4, meta={"block": (128, 1, 1)})
    assert cuda_plans.ctas_per_sm(tc, {"k": {"registers": 168, "smem": 30720}}, H100) == 3
    # 40 registers: 1280 per warp, 51 -> 48 warps, 12 CTAs; 64 KB + 1 KB each: 3 (228 KB).
    assert cuda_plans.ctas_per_sm(tc, {"k": {"registers": 40, "smem": 65536}}, H100) == 3
    a100 = cuda_plans.TARGETS["sm80"]
    assert cuda_plans.ctas_per_sm(tc, {"k": {"registers": 40, "smem": 65536}}, a100) == 2
    wide = Launch("k", (1,), 32, meta={"block": (1024, 1, 1)})
    assert cuda_plans.ctas_per_sm(wide, {"k": {"registers": 16, "smem": 0}}, H100) == 2
    tiny = Launch("k", (1,), 1, meta={"block": (32, 1, 1)})
    assert cuda_plans.ctas_per_sm(tiny, {"k": {"registers": 16, "smem": 0}}, H100) == 32


# ------------------------------------------------------------------------ emulated launches
def _recorded(path) -> list[tuple]:
    """(function, grid, block, smem) of each line of the emulator's launch log."""
    out = []
    for line in path.read_text().splitlines():
        kernel, grid, block, smem = line.split("\t")
        out.append((kernel.split("<")[0].strip(), tuple(map(int, grid.split())),
                    tuple(map(int, block.split())), int(smem)))
    return out


def _planned(plan) -> list[tuple]:
    return [(launch.meta["function"], launch.grid, launch.meta["block"], launch.smem_bytes)
            for launch in plan]


def check_launches(op: str, args: dict, tmp_path, monkeypatch):
    """Run the emulated op; its launches must be op_plan's, in order."""
    log = tmp_path / f"{op}.log"
    log.unlink(missing_ok=True)
    monkeypatch.setenv("FUSED_RESNET_CUDA_EMULATOR_LAUNCH_LOG", str(log))
    getattr(torch.ops.fused_resnet_cuda_emu, op)(*positional(op, args))
    monkeypatch.delenv("FUSED_RESNET_CUDA_EMULATOR_LAUNCH_LOG")
    planned = _planned(cuda_plans.op_plan(op, positional(op, args), H100))
    recorded = _recorded(log)
    assert recorded == planned, (op, recorded, planned)
    # The comparison sees a change of any grid dimension.
    fn, grid, block, smem = planned[0]
    assert [(fn, (grid[0] + 1, *grid[1:]), block, smem), *planned[1:]] != recorded
    return recorded


@pytest.fixture(scope="module")
def emulated_ops():
    from test_cuda_emu_ops import load_emulated_ops

    load_emulated_ops()


# (N, C_in, C_out, kernel, stride, H): odd channels (SIMT backward), the tensor-core path,
# stride 2 (four dgrad phases), enough tiles for a two-level merge (69), the stem (C = 3).
CONV_CASES = [(2, 5, 11, 3, 2, 9), (2, 16, 24, 3, 1, 9), (1, 8, 40, 1, 1, 66),
              (2, 3, 8, 7, 2, 11)]
CONV_IDS = ["c5k11_3x3s2", "c16k24_3x3", "two_level_merge", "stem"]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_emulated_conv_ops_launch_their_plans(emulated_ops, case, dtype, tmp_path,
                                              monkeypatch):
    args = conv_args(*case, dtype, device="cpu")
    check_launches("conv_fwd", args, tmp_path, monkeypatch)
    check_launches("conv_fwd", dict(args, stats=False, in_scale=None, in_shift=None),
                   tmp_path, monkeypatch)
    if case[0] * case[5] ** 2 > 4096:
        return  # the backward adds nothing here: its merges have as many tiles
    check_launches("conv_bwd_data", args, tmp_path, monkeypatch)
    check_launches("conv_bwd_data", dict(args, prev_y=None, prev_scale=None, prev_shift=None,
                                         prev_mean=None, prev_invstd=None), tmp_path,
                   monkeypatch)
    skew = (torch.randn(case[2] + 1) * 0.1)[1:]  # misaligned: the SIMT kernel
    check_launches("conv_bwd_data", dict(args, b=skew), tmp_path, monkeypatch)
    check_launches("conv_bwd_weight", args, tmp_path, monkeypatch)
    skew = (torch.randn(case[1] + 1) + 1.0)[1:]  # misaligned activations' scale
    check_launches("conv_bwd_weight", dict(args, in_scale=skew), tmp_path, monkeypatch)


@pytest.mark.slow
def test_emulated_wgrad_splits_for_the_device(emulated_ops, tmp_path, monkeypatch):
    """Enough pixels (115600) that split-K stops at the device's CTA target (4 x 132 SMs =
    528 > 451 = 115600 / 256): the launcher passes the emulated H100's SM count."""
    args = conv_args(1, 8, 8, 1, 1, 340, torch.bfloat16, device="cpu")
    recorded = check_launches("conv_bwd_weight", args, tmp_path, monkeypatch)
    assert recorded[0][1] == (1, 1, 451)
    four_per_sm = cuda_plans.op_plan("conv_bwd_weight", positional("conv_bwd_weight", args),
                                     cuda_plans.TARGETS["sm80"]).launches[0]
    assert four_per_sm.grid == (1, 1, 432)  # an A100's 108 SMs


@pytest.mark.slow
@pytest.mark.parametrize("fmt", [torch.contiguous_format, CL], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64],
                         ids=["f32", "f16", "f64"])
@pytest.mark.parametrize("shape", [(2, 5, 7, 9), (3, 40, 5, 5)], ids=str)
def test_emulated_bn_ops_launch_their_plans(emulated_ops, shape, dtype, fmt, tmp_path,
                                            monkeypatch):
    args = block_args(*shape, dtype, fmt=fmt, device="cpu")
    check_launches("block_end", args, tmp_path, monkeypatch)
    n = math.prod(shape)
    skewed = torch.randn(n + 1).to(dtype)[1:].view(shape)  # misaligned: element by element
    assert check_launches("block_end", dict(args, y=skewed), tmp_path, monkeypatch) != (
        check_launches("block_end", args, tmp_path, monkeypatch))
    check_launches("block_end_bwd", args, tmp_path, monkeypatch)
    proj = dict(args, y_d=args["y"].clone(), mean_d=args["mean"], invstd_d=args["invstd"])
    check_launches("block_end_bwd", proj, tmp_path, monkeypatch)
    check_launches("bn_finalize", args, tmp_path, monkeypatch)


def _profiled_launches(op: str, args: dict) -> list[tuple]:
    """(function, grid, block) of the fused_resnet kernels one CUDA op call launches, from
    the profiler's trace (CUPTI kernel records)."""
    import json
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    fn = getattr(torch.ops.fused_resnet, op)
    fn(*positional(op, args))  # warm up: nothing lazy inside the profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn(*positional(op, args))
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as tmp:
        trace = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(trace)
        with open(trace) as f:
            events = json.load(f)["traceEvents"]
    kernels = sorted((e for e in events if e.get("cat") == "kernel"
                      and "fr::cuda::" in e.get("name", "")), key=lambda e: e["ts"])
    return [(re.search(r"(\w+)<", e["name"]).group(1), tuple(e["args"]["grid"]),
             tuple(e["args"]["block"])) for e in kernels]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("case", [*CONV_CASES, (32, 64, 64, 3, 1, 56)],
                         ids=[*CONV_IDS, "conv2_x_b32"])
def test_gpu_ops_launch_their_plans(case, dtype):
    """On a CUDA device, every op launches exactly its plan for that device (real SM count
    and shared-memory limit), as the profiler records the launches."""
    pytest.importorskip("fused_resnet._C")
    from fused_resnet import ops

    if ops.unavailable_reason("cuda", "cuda", dtype) is not None:
        pytest.skip(ops.unavailable_reason("cuda", "cuda", dtype))
    props = torch.cuda.get_device_properties(0)
    arch = props.major * 10 + props.minor
    target = Target(f"sm{arch}", arch, props.shared_memory_per_block_optin,
                    props.multi_processor_count)
    conv = conv_args(*case, dtype, device="cuda")
    blk = block_args(case[0], case[2], 7, 5, dtype, device="cuda")
    calls = [("conv_fwd", conv), ("conv_fwd", dict(conv, stats=False)),
             ("conv_bwd_data", conv), ("conv_bwd_weight", conv), ("block_end", blk),
             ("block_end_bwd", blk), ("bn_finalize", blk)]
    for op, args in calls:
        planned = [(launch.meta["function"], launch.grid, launch.meta["block"])
                   for launch in cuda_plans.op_plan(op, positional(op, args), target)]
        assert _profiled_launches(op, args) == planned, (op, target)


# ------------------------------------------------------------------------ ResNet-50 structure
def resnet50_convs(batch: int):
    from test_triton_plans import resnet50_convs

    return resnet50_convs(batch)


def _id(conv):
    return "{}x{}k{}s{}h{}".format(*conv[1:])


@pytest.fixture(scope="module")
def resnet50_plans():
    """Per ResNet-50 conv (batch 128, bf16, H100): the plans of its three conv ops (training
    forward and eval forward), and of block_end / block_end_bwd on its output."""
    pytest.importorskip("fused_resnet._C")
    out = {}
    for conv in resnet50_convs(128):
        n, c_in, c_out, k, stride, h = conv
        args = conv_args(n, c_in, c_out, k, stride, h, torch.bfloat16)
        p = _out(h, k, stride, k // 2)
        blk = block_args(n, c_out, p, p, torch.bfloat16)
        out[conv] = {
            "fwd_train": cuda_plans.op_plan("conv_fwd", positional("conv_fwd", args), H100),
            "fwd_eval": cuda_plans.op_plan(
                "conv_fwd", positional("conv_fwd", dict(args, stats=False)), H100),
            "dgrad": cuda_plans.op_plan("conv_bwd_data", positional("conv_bwd_data", args),
                                        H100),
            "wgrad": cuda_plans.op_plan("conv_bwd_weight",
                                        positional("conv_bwd_weight", args), H100),
            "block_end": cuda_plans.op_plan("block_end", positional("block_end", blk), H100),
            "block_end_bwd": cuda_plans.op_plan("block_end_bwd",
                                                positional("block_end_bwd", blk), H100),
        }
    return out


def longest(plans, kernels: tuple[str, ...]) -> tuple[int, str]:
    """The most serial steps any launch of a kernel named ``kernels*`` walks, and where."""
    best = (0, "")
    for conv, per_op in plans.items():
        for op, plan in per_op.items():
            for launch in plan:
                if launch.kernel.startswith(kernels):
                    best = max(best, (launch.serial_steps, f"{op} {_id(conv)} {launch.kernel}"))
    return best


def test_merges_walk_at_most_64_steps(resnet50_plans):
    steps, where = longest(resnet50_plans, ("conv_fwd_merge", "conv_dgrad_merge",
                                            "block_end_bwd_merge"))
    assert 0 < steps <= MAX_SERIAL_STEPS, where


def test_block_end_walks_at_most_64_steps(resnet50_plans):
    steps, where = longest(resnet50_plans, ("block_end_vec",))
    assert 0 < steps <= MAX_SERIAL_STEPS, where


@pytest.mark.xfail(strict=True, reason="144 steps: the 3x3 convs of C_in 512 (layer4) reduce "
                   "over 3*3*512 = 4608 in steps of 32, with no split-K in the forward")
def test_fwd_gemm_walks_at_most_64_steps(resnet50_plans):
    steps, where = longest(resnet50_plans, ("conv_fwd_tc",))
    assert steps <= MAX_SERIAL_STEPS, (steps, where)


@pytest.mark.xfail(strict=True, reason="144 steps: dgrad of the layer4 3x3 convs reduces over "
                   "3*3*512 output-channel taps in steps of 32, with no split-K")
def test_dgrad_gemm_walks_at_most_64_steps(resnet50_plans):
    steps, where = longest(resnet50_plans, ("conv_dgrad_tc",))
    assert steps <= MAX_SERIAL_STEPS, (steps, where)


@pytest.mark.xfail(strict=True, reason="286 steps at the stem (176 splits of 128*112*112 "
                   "pixels), 96-286 at every conv but the 64->64 1x1 (24): split-K stops at "
                   "about four CTAs per SM (528 on an H100), leaving thousands of pixels a split")
def test_wgrad_gemm_walks_at_most_64_steps(resnet50_plans):
    steps, where = longest(resnet50_plans, ("conv_wgrad_tc",))
    assert steps <= MAX_SERIAL_STEPS, (steps, where)


@pytest.mark.xfail(strict=True, reason="528 steps: a 64->64 1x1 wgrad has one CTA tile, so "
                   "split-K takes 528 splits, which reduce_wgrad_kernel sums serially")
def test_wgrad_split_reduction_walks_at_most_64_steps(resnet50_plans):
    steps, where = longest(resnet50_plans, ("conv_wgrad_reduce",))
    assert steps <= MAX_SERIAL_STEPS, (steps, where)


@pytest.mark.xfail(strict=True, reason="392 steps: block_end_bwd's ~1024 CTAs each sum "
                   "3136 rows over 8 lanes at conv2_x (128*56*56 pixels, 256 channels)")
def test_block_end_bwd_sums_walk_at_most_64_steps(resnet50_plans):
    steps, where = longest(resnet50_plans, ("block_end_bwd_nhwc",))
    assert steps <= MAX_SERIAL_STEPS, (steps, where)


def test_wgrad_fills_two_waves_on_132_sms(resnet50_plans):
    for conv, per_op in resnet50_plans.items():
        gemm = per_op["wgrad"].launches[0]
        assert gemm.waves(H100.sms) >= 2, (_id(conv), gemm.grid)


def test_fwd_is_one_kernel_plus_its_statistics(resnet50_plans):
    """Eval: the GEMM alone. Training: the GEMM, then one or two merge levels."""
    for conv, per_op in resnet50_plans.items():
        assert [launch.kernel for launch in per_op["fwd_eval"]] == ["conv_fwd_tc.bf16"], conv
        train = [launch.kernel for launch in per_op["fwd_train"]]
        assert train[0] == "conv_fwd_tc.bf16" and 2 <= len(train) <= 3, (conv, train)
        assert set(train[1:]) == {"conv_fwd_merge"}, (conv, train)


def test_every_launch_is_valid(resnet50_plans):
    """CUDA's launch limits: grid (2^31-1, 65535, 65535), at most 1024 threads."""
    for conv, per_op in resnet50_plans.items():
        for plan in per_op.values():
            for launch in plan:
                x, y, z = launch.grid
                assert 1 <= x < 2**31 and 1 <= y <= 65535 and 1 <= z <= 65535, (conv, launch)
                assert math.prod(launch.meta["block"]) <= 1024, (conv, launch)


# ------------------------------------------------------------------------ ptxas resources
@pytest.mark.slow
@pytest.mark.parametrize("arch", [90, 80])
def test_kernel_resources_cover_every_planned_kernel(arch, resnet50_plans):
    """ptxas reports every kernel the plans name (odd shapes, every dtype too), and the
    tensor-core GEMM keeps 3 CTAs per SM (its __launch_bounds__)."""
    if os.environ.get("FUSED_RESNET_SKIP_NVCC") == "1":
        pytest.skip("FUSED_RESNET_SKIP_NVCC=1")
    try:
        resources = cuda_plans.kernel_resources(arch)
    except RuntimeError as e:
        pytest.skip(str(e))
    target = cuda_plans.TARGETS[f"sm{arch}"]
    plans = [plan for per_op in resnet50_plans.values() for plan in per_op.values()]
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        args = conv_args(2, 5, 11, 3, 2, 9, dtype)
        plans += [cuda_plans.op_plan(op, positional(op, args), target)
                  for op in ("conv_fwd", "conv_bwd_data", "conv_bwd_weight")]
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        for fmt in (torch.contiguous_format, CL):
            args = block_args(2, 5, 7, 9, dtype, fmt=fmt)
            plans += [cuda_plans.op_plan(op, positional(op, args), target)
                      for op in ("block_end", "block_end_bwd", "bn_finalize")]
    for plan in plans:
        for launch in plan:
            assert launch.kernel in resources, (launch.kernel, sorted(resources))
            ctas = cuda_plans.ctas_per_sm(launch, resources, target)
            assert ctas >= 1, launch
            if launch.kernel.startswith(("conv_fwd_tc", "conv_dgrad_tc", "conv_wgrad_tc")):
                assert ctas >= 3, (launch.kernel, resources[launch.kernel])
