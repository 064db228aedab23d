"""The cuda backend's real kernels and launchers, through the op layer, on CPU tensors.

The launchers (csrc/cuda/conv_cuda.cpp, bn_cuda.cpp) and kernels are built against the CUDA
execution emulator (csrc/cuda/emu) into torch.ops.fused_resnet_cuda_emu, which
FUSED_RESNET_CUDA_EMULATOR=1 makes backend "cuda" on CPU tensors. Every op and the blocks
are checked against fused_resnet.reference with the tolerance table of tests/conftest.py.
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
# Building the launchers against torch takes minutes cold (ninja keeps build/ warm).
pytestmark = pytest.mark.slow


# Set (by test_op_subset_under_asan_ubsan) in a child pytest run under LD_PRELOADed ASan:
# the ops are then built with the sanitizers, into their own build folder.
SANITIZED = os.environ.get("FUSED_RESNET_CUDA_EMU_SANITIZE") == "1"


def load_emulated_ops() -> None:
    """Build (once; ninja rebuilds what changed) and load torch.ops.fused_resnet_cuda_emu."""
    from test_cuda_emu import SANITIZERS, cuda_include
    from torch.utils import cpp_extension

    inc = cuda_include()
    if inc is None or shutil.which("g++") is None:
        pytest.skip("needs g++ and the CUDA toolkit headers")
    build = ROOT / "build" / ("cuda_emu_ops_asan" if SANITIZED else "cuda_emu_ops")
    build.mkdir(parents=True, exist_ok=True)
    sources = [CSRC / "cuda" / "emu" / f for f in ("module.cpp", "runtime.cpp",
                                                   "conv_kernels.cpp", "bn_kernels.cpp")]
    sources += [CSRC / "cuda" / "conv_cuda.cpp", CSRC / "cuda" / "bn_cuda.cpp"]
    cpp_extension.load(
        name="fused_resnet_cuda_emu", sources=[str(s) for s in sources],
        extra_cflags=["-std=c++20", "-DFR_CUDA_EMULATOR", "-Wno-unknown-pragmas",
                      *(["-O1", "-g", *SANITIZERS] if SANITIZED else ["-O2", "-g0"])],
        extra_include_paths=[str(CSRC), str(inc)], build_directory=str(build),
        with_cuda=False, is_python_module=False, verbose=False)


@pytest.fixture(scope="module", autouse=True)
def emulated_cuda_backend():
    """Backend "cuda" on CPU tensors for this module's tests."""
    from fused_resnet import ops

    load_emulated_ops()
    old = os.environ.get("FUSED_RESNET_CUDA_EMULATOR")
    os.environ["FUSED_RESNET_CUDA_EMULATOR"] = "1"
    ops.get_backend.cache_clear()
    yield
    if old is None:
        del os.environ["FUSED_RESNET_CUDA_EMULATOR"]
    else:
        os.environ["FUSED_RESNET_CUDA_EMULATOR"] = old
    ops.get_backend.cache_clear()


CL = torch.channels_last
FMTS = [torch.contiguous_format, CL]
FMT_IDS = ["nchw", "nhwc"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["f32", "f16", "bf16"]


def emu_op(name: str):
    return getattr(torch.ops.fused_resnet_cuda_emu, name)


def call(name: str, args: dict):
    op = emu_op(name)
    return op(*[args.get(a.name) for a in op.default._schema.arguments])


def cast(args: dict, dtype: torch.dtype, fmt) -> dict:
    """Data (4-D) to ``dtype`` in ``fmt``, per-channel vectors to the statistics dtype."""
    from fused_resnet import reference as R

    out = {}
    for key, v in args.items():
        if isinstance(v, torch.Tensor):
            v = v.to(dtype if v.dim() == 4 else R.stat_dtype(dtype))
            if v.dim() == 4 and key != "weight":
                v = v.contiguous(memory_format=fmt)
        out[key] = v
    return out


def check_op(name: str, args64: dict, dtype, fmt, stat_tol: float = 1e-4):
    """The emulated CUDA op vs reference.<name> on float64 copies of the rounded inputs;
    fp16/bf16 may have twice plain PyTorch's error in the same dtype (tests/conftest.py)."""
    import inspect

    from conftest import rel_err, tolerance

    from fused_resnet import reference as R

    low = cast(args64, dtype, fmt)
    fn = getattr(R, name)
    own = {k: v for k, v in low.items() if k in inspect.signature(fn).parameters}
    ref = fn(**{k: v.double() if isinstance(v, torch.Tensor) else v for k, v in own.items()})
    plain = fn(**own)
    ours = call(name, low)
    ours, ref, plain = [t if isinstance(t, tuple) else (t,) for t in (ours, ref, plain)]
    follows = {"conv_fwd": "x", "conv_bwd_data": "dz", "conv_bwd_weight": "weight",
               "block_end": "y", "block_end_bwd": "d_out"}[name]
    assert R.memory_format(ours[0]) == R.memory_format(low[follows]), "output memory format"
    tol = tolerance(dtype, rel_err(plain[0], ref[0]))
    assert rel_err(ours[0], ref[0]) <= tol, (name, dtype, rel_err(ours[0], ref[0]), tol)
    for i, (o, r) in enumerate(zip(ours[1:], ref[1:])):  # statistics / sums, fp32
        assert o.shape == r.shape, (name, i)
        if r.numel():
            err = rel_err(o, r)
            assert err <= max(stat_tol, tol), (name, dtype, f"output {i + 1}", err)
    return ours


def vec(c: int, offset: float = 0.0) -> torch.Tensor:
    return torch.randn(c, dtype=torch.float64) * 0.5 + offset


def out_size(h, r, stride, pad, dil=1):
    return (h + 2 * pad - dil * (r - 1) - 1) // stride + 1


# (N, C, H, K, R, stride, padding): the stem (C=3, 7x7 s2), tensor-core friendly channels
# (C, K % 8 == 0), odd channel counts (SIMT backward), stride 2, 1x1, two column tiles.
GEOMS = [
    (2, 3, 11, 8, 7, 2, 3),
    (2, 16, 9, 24, 3, 1, 1),
    (2, 5, 9, 11, 3, 2, 1),
    (1, 16, 7, 72, 1, 1, 0),
    (2, 8, 7, 16, 1, 2, 0),
]
GEOM_IDS = ["stem", "c16k24_3x3", "c5k11_3x3s2", "c16k72_1x1", "c8k16_1x1s2"]


def conv_args(geom) -> dict:
    n, c, h, k, r, stride, pad = geom
    p = out_size(h, r, stride, pad)
    return dict(x=torch.randn(n, c, h, h, dtype=torch.float64) + 0.3,
                weight=torch.randn(k, c, r, r, dtype=torch.float64) / (c * r * r) ** 0.5,
                stride=stride, padding=pad, dilation=1, groups=1,
                in_scale=vec(c, 1.0), in_shift=vec(c, 0.3), in_relu=True,
                out_scale=vec(k, 1.0), out_shift=vec(k), out_relu=True,
                residual=torch.randn(n, k, p, p, dtype=torch.float64),
                res_scale=vec(k, 1.0), res_shift=vec(k), stats=True,
                dz=torch.randn(n, k, p, p, dtype=torch.float64),
                y=torch.randn(n, k, p, p, dtype=torch.float64) + 0.5,
                a=vec(k, 1.0), b=vec(k) * 0.1, c=vec(k) * 0.1, input_size=[n, c, h, h],
                prev_y=torch.randn(n, c, h, h, dtype=torch.float64),
                prev_scale=vec(c, 1.0), prev_shift=vec(c), prev_mean=vec(c),
                prev_invstd=torch.rand(c, dtype=torch.float64) + 0.5)


@pytest.mark.parametrize("fmt", FMTS, ids=FMT_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("geom", GEOMS, ids=GEOM_IDS)
def test_conv_fwd(geom, dtype, fmt):
    args = conv_args(geom)
    check_op("conv_fwd", args, dtype, fmt)
    plain = dict(args, in_scale=None, in_shift=None, in_relu=False, out_scale=None,
                 out_shift=None, out_relu=False, residual=None, stats=False)
    check_op("conv_fwd", plain, dtype, fmt)


@pytest.mark.parametrize("fmt", FMTS, ids=FMT_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("geom", GEOMS, ids=GEOM_IDS)
def test_conv_bwd_data(geom, dtype, fmt):
    args = dict(conv_args(geom))
    args["residual"] = torch.randn(args["input_size"], dtype=torch.float64)
    check_op("conv_bwd_data", args, dtype, fmt)
    plain = {k: v for k, v in args.items()
             if not k.startswith("prev_") and k != "residual"}
    check_op("conv_bwd_data", plain, dtype, fmt)


@pytest.mark.parametrize("wfmt", FMTS, ids=["w_kcrs", "w_krsc"])
@pytest.mark.parametrize("fmt", FMTS, ids=FMT_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("geom", GEOMS, ids=GEOM_IDS)
def test_conv_bwd_weight(geom, dtype, fmt, wfmt):
    args = conv_args(geom)
    args["weight"] = args["weight"].contiguous(memory_format=wfmt)
    check_op("conv_bwd_weight", args, dtype, fmt)


@pytest.mark.parametrize("update", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative"])
def test_bn_finalize(update, momentum):
    c = 37
    mean, m2 = vec(c).float(), (torch.rand(c, dtype=torch.float64) * 50 + 1).float()
    rm, rv = vec(c).float(), (torch.rand(c) + 0.5)
    nbt = torch.tensor(3)
    args = dict(mean=mean, m2=m2, count=50, weight=vec(c, 1.0).float(), bias=vec(c).float(),
                running_mean=rm.clone(), running_var=rv.clone(), num_batches_tracked=nbt.clone(),
                momentum=momentum, eps=1e-5, update_running_stats=update)
    from fused_resnet import reference as R

    ref_args = dict(args, running_mean=rm.clone(), running_var=rv.clone(),
                    num_batches_tracked=nbt.clone())
    ours, ref = call("bn_finalize", args), R.bn_finalize(**ref_args)
    for o, r in zip(ours, ref):
        torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-6)
    for key in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(args[key], ref_args[key], rtol=1e-5, atol=1e-6)
    if not update:
        assert torch.equal(args["running_mean"], rm) and torch.equal(args["num_batches_tracked"],
                                                                     nbt)


# (N, C, H, W): vector and scalar paths, C not % 8, more channels than a 32-channel tile.
BLOCK_END_SHAPES = [(2, 5, 7, 9), (3, 40, 5, 5), (2, 8, 4, 4)]


@pytest.mark.parametrize("fmt", FMTS, ids=FMT_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", BLOCK_END_SHAPES, ids=str)
def test_block_end(shape, dtype, fmt):
    c = shape[1]
    args = dict(y=torch.randn(shape, dtype=torch.float64), scale=vec(c, 1.0), shift=vec(c),
                residual=torch.randn(shape, dtype=torch.float64), res_scale=vec(c, 1.0),
                res_shift=vec(c))
    check_op("block_end", args, dtype, fmt)
    check_op("block_end", dict(args, res_scale=None, res_shift=None), dtype, fmt)


@pytest.mark.parametrize("projection", [False, True], ids=["identity", "proj"])
@pytest.mark.parametrize("fmt", FMTS, ids=FMT_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", BLOCK_END_SHAPES, ids=str)
def test_block_end_bwd(shape, dtype, fmt, projection):
    c = shape[1]
    args = dict(d_out=torch.randn(shape, dtype=torch.float64),
                out=torch.randn(shape, dtype=torch.float64).relu(),
                y=torch.randn(shape, dtype=torch.float64), mean=vec(c),
                invstd=torch.rand(c, dtype=torch.float64) + 0.5)
    if projection:
        args.update(y_d=torch.randn(shape, dtype=torch.float64), mean_d=vec(c),
                    invstd_d=torch.rand(c, dtype=torch.float64) + 0.5)
    check_op("block_end_bwd", args, dtype, fmt)


# ------------------------------------------------------------------------ blocks
# (kind, inplanes, planes, stride, projection, spatial), in float32 like the cpp backend's
# block tests (tests/test_blocks.py): fp16/bf16 are checked op by op above, where the
# tolerance rule is stable; at these sizes one ReLU mask flip near 0 makes a low-precision
# block's gradient error erratic for every backend, the reference included.
BLOCK_SHAPES = [("bottleneck", 16, 8, 2, True, 9), ("basic", 8, 8, 1, False, 7),
                ("bottleneck", 12, 5, 1, True, 7)]
BLOCK_IDS = ["bottleneck-s2-proj", "basic", "bottleneck-odd-proj"]


@pytest.mark.parametrize("channels_last", [False, True], ids=FMT_IDS)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", BLOCK_SHAPES, ids=BLOCK_IDS)
def test_block_matches_torchvision(shape, train, channels_last):
    from conftest import make_blocks
    from test_blocks import check, run_pair

    kind, inplanes, planes, stride, projection, hw = shape
    tv, fused = make_blocks(kind, inplanes, planes, stride, projection, backend="cuda")
    assert fused.backend_in_use == "cuda"
    x = torch.randn(2, inplanes, hw, hw) * 1.5 + 0.3
    if channels_last:
        x = x.contiguous(memory_format=CL)
    check(run_pair(tv, fused, x, train), torch.float32)


def test_convert_runs_on_the_emulated_cuda_backend():
    from torchvision.models import resnet18

    import fused_resnet

    model = resnet18(num_classes=10).eval()
    fused = fused_resnet.convert(copy.deepcopy(model), backend="cuda")
    in_use = {m.backend_in_use for m in fused.modules() if hasattr(m, "backend_in_use")}
    assert in_use == {"cuda"}, in_use
    x = torch.randn(1, 3, 32, 32)
    from conftest import assert_close

    with torch.no_grad():
        assert_close(fused(x), model.double()(x.double()), torch.float32)


def sanitizer_runtime(name: str) -> str | None:
    import subprocess

    path = subprocess.run(["g++", f"-print-file-name={name}"], capture_output=True,
                          text=True).stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


@pytest.mark.slow
@pytest.mark.skipif(SANITIZED, reason="runs the others")
def test_op_subset_under_asan_ubsan():
    """Every op and a block, in a child pytest with the ops built under ASan + UBSan."""
    import subprocess
    import sys

    libs = [sanitizer_runtime("libasan.so"), sanitizer_runtime("libubsan.so")]
    if None in libs:
        pytest.skip("no ASan/UBSan runtime for g++")
    env = dict(os.environ, FUSED_RESNET_CUDA_EMU_SANITIZE="1", LD_PRELOAD=":".join(libs),
               ASAN_OPTIONS="detect_leaks=0", UBSAN_OPTIONS="print_stacktrace=1")
    subset = ("(f16 or f32) and (stem or c16k24 or c5k11) and not w_kcrs or block_end or "
              "bn_finalize or bottleneck-s2-proj-train")
    res = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-x", "-p",
                          "no:cacheprovider", "-k", subset], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=3000)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
    assert " passed" in res.stdout and "Sanitizer" not in out and "runtime error" not in out, (
        out[-6000:])
