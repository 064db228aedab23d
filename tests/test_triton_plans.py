"""Structure of the Triton launches at ResNet-50 shapes, from the launch plans the launchers
execute (fused_resnet/triton/plans.py), without a GPU: reductions never walk more than
MAX_SERIAL_STEPS dependent steps, wgrad fills an H100 with at least two waves, every op
stays within its launch budget, and no config passes the family's shared memory. And
op_plan, what one op call sends to the device, against what the launchers really do."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fused_resnet.triton import configs, plans

H100 = configs.TARGETS["sm90"]
REDUCTIONS = ("column_sum", "merge_stats", "bn_backward_sums")


def resnet50_convs(batch: int):
    """(C_in, C_out, kernel, stride, H_in) of every distinct ResNet-50 conv."""
    out = [(3, 64, 7, 2, 224)]
    inplanes = 64
    for planes, stride, hw in ((64, 1, 56), (128, 2, 56), (256, 2, 28), (512, 2, 14)):
        hw_out = hw // stride
        out += [(inplanes, planes, 1, 1, hw), (planes, planes, 3, stride, hw),
                (planes, planes * 4, 1, 1, hw_out), (inplanes, planes * 4, 1, stride, hw),
                (planes * 4, planes, 1, 1, hw_out), (planes, planes, 3, 1, hw_out)]
        inplanes = planes * 4
    return [(batch, *c) for c in out]


def _op_plans(batch, c_in, c_out, k, s, h, dc, target=H100):
    h_out = (h + 2 * (k // 2) - k) // s + 1
    return {
        "fwd_train": plans.conv_fwd_plan(batch, c_in, h_out, h_out, c_out, k, s, dc, target,
                                         True),
        "fwd_eval": plans.conv_fwd_plan(batch, c_in, h_out, h_out, c_out, k, s, dc, target,
                                        False),
        "dgrad": plans.conv_dgrad_plan(batch, c_in, h, h, c_out, k, s, dc, target, True),
        "wgrad": plans.conv_wgrad_plan(batch, c_in, c_out, h_out, h_out, k, s, dc, target),
        "block_end_bwd": plans.block_end_bwd_plan(batch * h_out * h_out, c_out, dc, target,
                                                  True),
        # Triton's training ops: the reductions end in BN finalization / BN backward.
        "conv_bn_fwd": plans.conv_fwd_plan(batch, c_in, h_out, h_out, c_out, k, s, dc, target,
                                           True, finalize=True),
        "dgrad_bn": plans.conv_dgrad_plan(batch, c_in, h, h, c_out, k, s, dc, target, True,
                                          bn=True),
        "block_end_bwd_bn": plans.block_end_bwd_bn_plan(batch * h_out * h_out, c_out, dc,
                                                        target, True),
    }


CASES = [(b, *conv) for b in (128, 256) for conv in resnet50_convs(b)]


def _id(case):
    return "b{}-{}x{}k{}s{}h{}".format(*case[1:])


@pytest.mark.parametrize("dc", configs.DTYPE_CLASSES)
@pytest.mark.parametrize("case", CASES, ids=map(_id, CASES))
def test_reductions_walk_at_most_64_steps(case, dc):
    for name, plan in _op_plans(*case[1:], dc).items():
        for launch in plan:
            if launch.kernel in REDUCTIONS:
                assert launch.serial_steps <= configs.MAX_SERIAL_STEPS, (name, launch)


@pytest.mark.parametrize("batch", [32, 64, 128, 256])
@pytest.mark.parametrize("dc", configs.DTYPE_CLASSES)
def test_wgrad_launches_two_waves_on_132_sms(batch, dc):
    for conv in resnet50_convs(batch):
        gemm = _op_plans(*conv, dc)["wgrad"].launches[0]
        assert gemm.waves(H100.sms) >= 2, (conv, gemm.grid, gemm.config)


@pytest.mark.parametrize("dc", configs.DTYPE_CLASSES)
def test_launch_budget_at_batch_128(dc):
    """Eval forward: one kernel per conv. Training: each op is its kernel plus one
    reduction launch (statistics, sums, split-K), which ends in the BN step it feeds
    where Triton has the op for it."""
    for conv in resnet50_convs(128):
        p = _op_plans(*conv, dc)
        assert [launch.kernel for launch in p["fwd_eval"]] == ["conv_fwd"]
        for name in ("fwd_train", "conv_bn_fwd", "dgrad", "dgrad_bn", "block_end_bwd",
                     "block_end_bwd_bn"):
            assert len(p[name]) == 2, (conv, name, p[name])
        assert len(p["wgrad"]) <= 1 + 1, (conv, p["wgrad"])
    assert len(plans.bn_finalize_plan(2048, H100)) == 1
    assert len(plans.block_end_plan(128 * 56 * 56, 256, dc, H100)) == 1


@pytest.mark.parametrize("family", sorted(configs.TARGETS))
@pytest.mark.parametrize("dc", configs.DTYPE_CLASSES)
def test_every_launch_fits_the_family(family, dc):
    target = configs.TARGETS[family]
    for conv in resnet50_convs(128):
        for plan in _op_plans(*conv, dc, target=target).values():
            for launch in plan:
                assert launch.smem_bytes <= target.shared_limit, (family, conv, launch)


def test_unknown_gpu_never_gets_an_oversized_config():
    """A device with less shared memory than its family's tables assume falls back."""
    tiny = configs.TARGETS["sm90"].with_device(64 * 1024, 16)
    for conv in resnet50_convs(32):
        for plan in _op_plans(*conv, "fp32", target=tiny).values():
            for launch in plan:
                assert launch.smem_bytes <= 64 * 1024, (conv, launch)


def test_config_choice_is_a_pure_function():
    """No autotuning: the same shape picks the same config in every process."""
    for conv in resnet50_convs(128):
        assert _op_plans(*conv, "16bit") == _op_plans(*conv, "16bit")


def test_empty_batch_launches_nothing():
    assert len(plans.conv_fwd_plan(0, 64, 56, 56, 64, 3, 1, "16bit", H100, True)) == 0
    assert len(plans.conv_dgrad_plan(0, 64, 56, 56, 64, 3, 1, "16bit", H100, True)) == 0


@pytest.mark.parametrize("dc", configs.DTYPE_CLASSES)
def test_dgrad_skips_stride_holes(dc):
    """By stride phase: a stride-s dgrad walks ceil(k/s)^2 taps per phase, not k^2, and
    does the forward's arithmetic, not s^2 times it."""
    for conv in resnet50_convs(128):
        batch, c_in, c_out, k, s, h = conv
        p = _op_plans(*conv, dc)
        gemm = p["dgrad"].launches[0]
        assert gemm.grid[2] == s * s
        assert gemm.serial_steps == plans.cdiv(k, s) ** 2 * plans.cdiv(c_out, gemm.config.block_k)
        assert gemm.flops == p["fwd_eval"].launches[0].flops


# ------------------------------------------------- op_plan against what the launchers do
# Each Triton op run in the interpreter on odd shapes, recording its kernel launches (with
# grids) and the torch ops that send work to a device (copies, fills; not allocations or
# views): they must be exactly op_plan's launches, in order.
aten = torch.ops.aten
_FREE = {aten.empty.memory_format, aten.empty_like.default, aten.empty_strided.default,
         aten.new_empty.default, aten.new_empty_strided.default, aten.detach.default,
         aten.alias.default, aten.lift_fresh.default}
_FILLS = {aten.full.default, aten.zeros.default, aten.new_zeros.default, aten.fill_.Scalar,
          aten.zero_.default, aten.ones.default, aten.new_full.default}
_COPIES = {aten.copy_.default, aten.clone.default, aten._to_copy.default}


class _DeviceWork(TorchDispatchMode):
    """Records ("copy"|"fill", numel) per torch op that launches device work, and
    ("kernel", name, grid) per Triton launch (whose own host-side copies it ignores)."""

    def __init__(self):
        super().__init__()
        self.events: list[tuple] = []
        self.in_kernel = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.in_kernel or func in _FREE or func.is_view:
            return out
        first = out[0] if isinstance(out, (tuple, list)) else out
        numel = first.numel() if isinstance(first, torch.Tensor) else 1
        if numel:
            kind = "fill" if func in _FILLS else "copy" if func in _COPIES else str(func)
            self.events.append((kind, numel))
        return out

    def launch(self, name: str, grid) -> contextlib.AbstractContextManager:
        self.events.append(("kernel", name.removesuffix("_kernel"), tuple(grid)))
        return _flag(self)


@contextlib.contextmanager
def _flag(work: _DeviceWork):
    work.in_kernel = True
    try:
        yield
    finally:
        work.in_kernel = False


def _expected(op: str, args: tuple) -> list[tuple]:
    out = []
    for launch in plans.op_plan(op, args, configs.INTERPRETER_TARGET):
        kind = launch.kernel.split(":")[0]
        if kind in ("copy", "fill"):
            out.append((kind, launch.meta["numel"]))
        else:
            out.append(("kernel", launch.kernel, launch.grid))
    return out


@pytest.fixture
def record(monkeypatch):
    """``record(op, *args)``: runs the launcher of ``op``; returns (result, events)."""
    ftriton = pytest.importorskip("fused_resnet.triton")
    if not ftriton.interpreting() or ftriton.unavailable_reason():
        pytest.skip("records launches in the Triton interpreter (TRITON_INTERPRET=1, CPU)")
    from triton.runtime.interpreter import InterpretedFunction

    from fused_resnet.triton import register

    work = _DeviceWork()
    run = InterpretedFunction.run

    def recorded_run(self, *args, grid, warmup, **kwargs):
        with work.launch(self.__name__, grid):
            return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    monkeypatch.setattr(InterpretedFunction, "run", recorded_run)

    def call(op: str, *args):
        work.events = []
        with work:
            out = register.IMPLS[op](*args)
        return out, work.events

    return call


def _t(*shape, cl=False, dtype=torch.float32):
    t = torch.randn(*shape, dtype=dtype)
    return t.contiguous(memory_format=torch.channels_last) if cl else t


def _v(c):
    return torch.rand(c) + 0.5


def _weight(c_out, c_in, k, layout):
    w = torch.randn(c_out, c_in, k, k) / (c_in * k * k) ** 0.5
    if layout == "krsc":
        return w.contiguous(memory_format=torch.channels_last)
    if layout == "other":  # dense, but neither KCRS nor KRSC in memory
        return w.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
    return w


def _fwd_args(n, c_in, hw, c_out, k, s, cl, layout, variant, dtype=torch.float32):
    x = _t(n, c_in, hw, hw, cl=cl, dtype=dtype)
    w = _weight(c_out, c_in, k, layout)
    h_out = (hw + 2 * (k // 2) - k) // s + 1
    if variant == "train":
        return (x, w, s, k // 2, 1, 1, _v(c_in), _v(c_in), True, None, None, None, None, None,
                False, True)
    res = _t(n, c_out, h_out, h_out, cl=not cl, dtype=dtype)
    return (x, w, s, k // 2, 1, 1, None, None, False, _v(c_out), _v(c_out), res, _v(c_out),
            _v(c_out), True, False)


FWD_CASES = [(2, 5, 9, 7, 3, 1, False, "kcrs", "train"), (2, 5, 9, 7, 3, 1, True, "krsc", "train"),
             (2, 6, 7, 10, 3, 2, True, "kcrs", "eval"), (1, 12, 7, 7, 1, 2, False, "krsc", "eval"),
             (1, 3, 48, 5, 1, 1, True, "krsc", "train"),  # 72 row tiles: two merge levels
             (0, 5, 9, 7, 3, 1, True, "krsc", "train")]  # empty batch: statistics filled


@pytest.mark.parametrize("case", FWD_CASES, ids=lambda c: "-".join(map(str, c)))
def test_op_plan_is_what_conv_fwd_launches(record, case):
    args = _fwd_args(*case)
    assert record("conv_fwd", *args)[1] == _expected("conv_fwd", args)


@pytest.mark.parametrize("case", [c for c in FWD_CASES if c[-1] == "train"],
                         ids=lambda c: "-".join(map(str, c)))
def test_op_plan_is_what_conv_bn_fwd_launches(record, case):
    x, w, s, p, d, g, in_scale, in_shift, in_relu = _fwd_args(*case)[:9]
    c_out = w.shape[0]
    args = (x, w, s, p, d, g, in_scale, in_shift, in_relu, _v(c_out), _v(c_out), _v(c_out),
            _v(c_out), torch.tensor(3), None, 1e-5, True)
    assert record("conv_bn_fwd", *args)[1] == _expected("conv_bn_fwd", args)


def test_op_plan_counts_the_weight_cast(record):
    """An fp32 weight with fp16 data: one copy (layout and dtype together); the residual
    (contiguous) is the other."""
    args = _fwd_args(2, 5, 9, 7, 3, 1, True, "kcrs", "eval", dtype=torch.float16)
    events = record("conv_fwd", *args)[1]
    assert events == _expected("conv_fwd", args)
    assert [e for e in events if e[0] == "copy"] == [("copy", 7 * 5 * 9), ("copy", 2 * 7 * 81)]


def _dgrad_args(n, c_in, hw, c_out, k, s, cl, layout, prev):
    h_out = (hw + 2 * (k // 2) - k) // s + 1
    dz, y = _t(n, c_out, h_out, h_out, cl=cl), _t(n, c_out, h_out, h_out, cl=cl)
    w = _weight(c_out, c_in, k, layout)
    prev_args = ((_t(n, c_in, hw, hw, cl=cl), _v(c_in), _v(c_in), _v(c_in), _v(c_in)) if prev
                 else (None,) * 5)
    res = _t(n, c_in, hw, hw, cl=not cl) if not prev else None
    return (dz, y, _v(c_out), _v(c_out), _v(c_out), w, [n, c_in, hw, hw], s, k // 2, 1, 1, res,
            *prev_args)


DGRAD_CASES = [(2, 5, 9, 7, 3, 2, False, "kcrs", True), (2, 5, 9, 7, 3, 2, True, "krsc", True),
               (1, 6, 7, 10, 3, 1, True, "kcrs", False), (1, 12, 7, 7, 1, 2, False, "krsc", False),
               (0, 5, 9, 7, 3, 1, True, "krsc", True)]


@pytest.mark.parametrize("case", DGRAD_CASES, ids=lambda c: "-".join(map(str, c)))
def test_op_plan_is_what_conv_bwd_data_launches(record, case):
    args = _dgrad_args(*case)
    assert record("conv_bwd_data", *args)[1] == _expected("conv_bwd_data", args)


@pytest.mark.parametrize("case", [c for c in DGRAD_CASES if c[-1]],
                         ids=lambda c: "-".join(map(str, c)))
def test_op_plan_is_what_conv_bwd_data_bn_launches(record, case):
    dgrad = _dgrad_args(*case)
    c_in = dgrad[6][1]
    scale = torch.rand(2 * c_in)[::2]  # not contiguous: copied for the GEMM and the BN
    args = (*dgrad[:11], dgrad[12], scale, *dgrad[14:], 30, True, _v(c_in), None)
    assert record("conv_bwd_data_bn", *args)[1] == _expected("conv_bwd_data_bn", args)


WGRAD_CASES = [(2, 5, 9, 7, 3, 2, False, "kcrs", 1), (2, 5, 9, 7, 3, 2, True, "krsc", 1),
               (2, 5, 9, 7, 3, 1, True, "kcrs", 3), (2, 5, 9, 7, 3, 1, False, "krsc", 3),
               (1, 12, 7, 7, 1, 2, True, "krsc", 2), (2, 5, 9, 7, 3, 1, True, "other", 2)]


@pytest.mark.parametrize("case", WGRAD_CASES, ids=lambda c: "-".join(map(str, c)))
def test_op_plan_is_what_conv_bwd_weight_launches(record, case):
    """With and without split-K, in each weight layout: the GEMM or the last column-sum
    level writes the weight gradient itself (a copy only for a layout that is neither)."""
    from fused_resnet import reference

    n, c_in, hw, c_out, k, s, cl, layout, split = case
    dz, y, a, b, c, w, *_ = _dgrad_args(n, c_in, hw, c_out, k, s, cl, layout, False)
    args = (_t(n, c_in, hw, hw, cl=not cl), _v(c_in), _v(c_in), True, dz, y, a, b, c, w, s,
            k // 2, 1, 1)
    with configs.forced("split_k", split):
        dw, events = record("conv_bwd_weight", *args)
        assert events == _expected("conv_bwd_weight", args)
    assert dw.dtype == w.dtype and dw.stride() == torch.empty_like(w).stride()
    want = reference.conv_bwd_weight(*args[:13]).to(torch.float64)
    assert (dw.double() - want).abs().max() <= 1e-5 * want.abs().max()
    copies = [e for e in events if e[0] == "copy"]
    assert len(copies) == (1 if cl else 2) + (layout == "other"), copies  # x or dz, y; dw


@pytest.mark.parametrize("cl", [False, True])
@pytest.mark.parametrize("projection", [False, True])
def test_op_plan_is_what_the_per_channel_ops_launch(record, cl, projection):
    shape, c = (2, 37, 5, 3), 37
    y, res = _t(*shape, cl=cl), _t(*shape, cl=not cl)
    args = (y, _v(c), _v(c), res, _v(c) if projection else None, _v(c) if projection else None)
    assert record("block_end", *args)[1] == _expected("block_end", args)
    args = (_t(*shape, cl=cl), _t(*shape, cl=cl), _t(*shape), _v(c), _v(c),
            _t(*shape, cl=True) if projection else None, _v(c) if projection else None,
            _v(c) if projection else None)
    assert record("block_end_bwd", *args)[1] == _expected("block_end_bwd", args)
    args = (_t(*shape, cl=cl), _t(*shape, cl=cl), _t(*shape), _v(c), _v(c),
            _t(*shape, cl=True) if projection else None, _v(c) if projection else None,
            _v(c) if projection else None, 30, _v(c), True, _v(c), None, 30,
            torch.rand(2 * c)[::2] if projection else None, False, None,
            _v(c) if projection else None)
    assert record("block_end_bwd_bn", *args)[1] == _expected("block_end_bwd_bn", args)
    args = (_v(c), _v(c), 50, _v(c), _v(c), _v(c), _v(c), torch.tensor(3), 0.1, 1e-5, True)
    assert record("bn_finalize", *args)[1] == _expected("bn_finalize", args)
    scale = torch.rand(2 * c)[::2]  # not contiguous: one copy
    args = (_v(c), _v(c), 50, scale, _v(c), _v(c), True, _v(c) if projection else None, None)
    events = record("bn_backward", *args)[1]
    assert events == _expected("bn_backward", args)
    assert [e[:2] for e in events] == [("copy", c), ("kernel", "bn_backward")]
