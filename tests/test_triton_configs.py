"""Every tile config a GPU can launch, run in the interpreter through the normal launch path
(``configs.forced``) on shapes that hit every remainder, against the float64 reference.

The configs come from the tables the launcher reads (``configs.gpu_configs``: the family
tables, the rule over every channel class it distinguishes, the fallbacks), so an entry is
tested the day it is added; one per distinct tile (``configs.gpu_tiles``), as the
interpreter ignores warps and stages (the AOT check compiles each of those). Shapes: rows,
the per-tap K (C_in for fwd, C_out for dgrad) and the N dim each not a multiple of any tile;
stride 2; the 7x7 stem; wgrad split-K with uneven and empty slices.
"""

from __future__ import annotations

import pytest
import torch
from test_triton_ops import (
    DEVICE,
    DTYPES,
    UNAVAILABLE,
    _conv_kwargs,
    _data,
    _dgrad_kwargs,
    _vec,
    check_op,
)

pytestmark = [pytest.mark.skipif(UNAVAILABLE is not None, reason=f"triton: {UNAVAILABLE}"),
              pytest.mark.slow]

configs = pytest.importorskip("fused_resnet.triton.configs")

# (N, C_in, H, W, C_out, kernel, stride, padding). fwd: 49, 200 or 16 output rows; K per
# tap (C_in) 40 or 3; N (C_out) 40 or 20: remainders against every tile size in the tables
# (full tiles plus a remainder where the tile is smaller than the dim, a partial tile where
# it is larger), small enough for the interpreter.
FWD_SHAPES = [(1, 40, 7, 7, 40, 3, 1, 1), (2, 40, 19, 19, 40, 1, 2, 0), (1, 3, 7, 7, 20, 7, 2, 3)]
FWD_VARIANTS = ["train", "eval", "plain"]
# dgrad: 49, 200, 49 input pixels; K per tap = C_out (40, 40, 20); N = C_in (40, 40, 3).
DGRAD_SHAPES = [(1, 40, 7, 7, 40, 3, 1, 1), (2, 40, 10, 10, 40, 3, 2, 1),
                (1, 3, 7, 7, 20, 7, 2, 3)]


def _ids(cfgs):
    return [str(c) for c in cfgs]


def _fwd_case(shape, variant):
    n, c_in, h, w, c_out, k, s, p = shape
    return (n, c_in, h, w, c_out, k, s, p, 1, variant, True)


def _dgrad_case(shape, prev, res):
    n, c_in, h, w, c_out, k, s, p = shape
    return (n, c_in, h, w, c_out, k, s, p, 1, prev, res, False)


def test_configs_come_from_the_launcher_tables():
    """Whatever the launcher can choose (any family, dtype class, shape, a device with
    little shared memory) is in the tested list."""
    small = configs.TARGETS["sm86"].with_device(48 * 1024, 30)
    targets = [*configs.TARGETS.values(), small]
    shapes = [*configs.RESNET_SHAPES, (3, 5, 3, 1), (1000, 17, 1, 1), (40, 96, 5, 2)]
    for kind in configs.KINDS:
        tested = set(configs.gpu_configs(kind))
        for target in targets:
            for dc in configs.DTYPE_CLASSES:
                for c_in, c_out, k, s in shapes:
                    cfg = configs.choose(kind, target, dc, c_in, c_out, k, s)
                    assert cfg in tested, (kind, target.name, dc, c_in, c_out, cfg)
                    assert configs.smem_estimate(kind, cfg, dc) <= target.shared_limit


def test_forcing_reaches_the_launch():
    """A forced config is what the plan (and so the launcher) uses, even here."""
    from fused_resnet.triton import plans

    cfg = configs.FALLBACKS["fwd"][0]
    target = configs.INTERPRETER_TARGET
    assert plans.conv_fwd_plan(1, 8, 8, 8, 8, 3, 1, "fp32", target, False).launches[0].config \
        == configs.INTERPRETER
    with configs.forced("fwd", cfg):
        gemm = plans.conv_fwd_plan(1, 8, 8, 8, 8, 3, 1, "fp32", target, False).launches[0]
    assert gemm.config == cfg and gemm.meta["BLOCK_M"] == cfg.block_m


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cfg", configs.gpu_tiles("fwd"), ids=_ids(configs.gpu_tiles("fwd")))
def test_conv_fwd_every_config(cfg, dtype):
    with configs.forced("fwd", cfg):
        for shape, variant in zip(FWD_SHAPES, FWD_VARIANTS):
            check_op("conv_fwd", "x", **_conv_kwargs(_fwd_case(shape, variant), dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cfg", configs.gpu_tiles("dgrad"),
                         ids=_ids(configs.gpu_tiles("dgrad")))
def test_conv_bwd_data_every_config(cfg, dtype):
    with configs.forced("dgrad", cfg):
        for shape, (prev, res) in zip(DGRAD_SHAPES, [(True, False), (True, True),
                                                     (False, True)]):
            check_op("conv_bwd_data", "dz", **_dgrad_kwargs(_dgrad_case(shape, prev, res),
                                                            dtype))


def _wgrad(shape, dtype, prologue):
    kw = _dgrad_kwargs(_dgrad_case(shape, False, False), dtype)
    n, c_in, h, w = kw["input_size"]
    x = _data(n, c_in, h, w, dtype=dtype, channels_last=True)
    check_op("conv_bwd_weight", "x", "weight", x=x,
             in_scale=_vec(c_in, 1.0) if prologue else None,
             in_shift=_vec(c_in) if prologue else None, in_relu=prologue, dz=kw["dz"],
             y=kw["y"], a=kw["a"], b=kw["b"], c=kw["c"], weight=kw["weight"],
             stride=kw["stride"], padding=kw["padding"], dilation=1, groups=1)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cfg", configs.gpu_tiles("wgrad"),
                         ids=_ids(configs.gpu_tiles("wgrad")))
def test_conv_bwd_weight_every_config(cfg, dtype):
    # 49 / 50 / 16 pixels: with BLOCK_K 16-64 that is 1-4 pixel blocks, so split 3 leaves
    # uneven or empty slices and split 16 empty ones.
    with configs.forced("wgrad", cfg):
        for shape, split in zip(DGRAD_SHAPES, (3, 16, 1)):
            with configs.forced("split_k", split):
                _wgrad(shape, dtype, prologue=split != 1)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_elementwise_gpu_tiles(dtype):
    """block_end and block_end_bwd (with its column sums) at the GPU's tile sizes, on
    198 rows x 70 channels (a full tile plus a remainder in both)."""
    shape = (2, 70, 9, 11)
    with configs.forced("elementwise", configs.ELEMENTWISE_GPU), \
            configs.forced("reduce", configs.REDUCE_GPU):
        check_op("block_end", "y", y=_data(*shape, dtype=dtype, channels_last=True),
                 scale=_vec(70, 1.0), shift=_vec(70), residual=_data(*shape, dtype=dtype),
                 res_scale=_vec(70, 1.0), res_shift=_vec(70))
        out = torch.relu(_data(*shape, dtype=dtype, channels_last=True))
        check_op("block_end_bwd", "d_out", d_out=_data(*shape, dtype=dtype, channels_last=True),
                 out=out, y=_data(*shape, dtype=dtype, offset=3.0), mean=_vec(70, 3.0),
                 invstd=_vec(70, 1.0).abs() + 0.1, y_d=_data(*shape, dtype=dtype),
                 mean_d=_vec(70), invstd_d=_vec(70, 1.0).abs() + 0.1)


@pytest.mark.parametrize("ticket", [True, False], ids=["ticket", "one_group"])
def test_reductions_at_gpu_tiles(ticket):
    """The column sums (three at once, as block_end_bwd runs them) and the statistics merge
    at the GPU's reduce tile: one group walking every row, or groups whose last program to
    arrive adds the group results (the producer's cleared counters: zeros here)."""
    from fused_resnet.triton import _common, plans

    block_r = configs.REDUCE_GPU[0]
    rows = configs.MAX_SERIAL_STEPS // 2 * block_r + 5
    part = torch.randn(3, rows, 70, device=DEVICE, dtype=torch.float32)
    with configs.forced("reduce", configs.REDUCE_GPU):
        launch = plans.column_sum_launch(rows, 70, _common.target_of(part), 3, ticket)
        counters = torch.zeros(launch.meta["counters"], dtype=torch.int32, device=DEVICE)
        got = _common.column_sums(part, launch, counters=counters if ticket else None)
    assert launch.meta["TICKET"] == ticket and (launch.grid[1] > 1) == ticket
    assert torch.equal(counters, torch.full_like(counters, launch.grid[1] if ticket else 0))
    for g, p in zip(got, part):
        assert torch.allclose(g.double(), p.double().sum(0), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("tile, channels, ticket", [
    (configs.REDUCE_GPU, 70, True), (configs.REDUCE_GPU, 520, False), ((2, 32, 8), 70, True)])
def test_statistics_merge_at_gpu_tiles(tile, channels, ticket):
    """Statistics of 9,216 rows in 64-row tiles = 144 tiles, against the reference: at the
    GPU's reduce tile in groups whose last program merges the group results, or in one
    group per channel block (enough channel blocks fill the interpreter's two waves), and
    at a 2-tile block."""
    from fused_resnet.triton import _common, plans

    x = _data(1, 3, 96, 96, dtype=torch.float32, offset=2.0)
    kw = dict(x=x, weight=torch.randn(channels, 3, 1, 1, device=DEVICE), stride=1,
              padding=0, dilation=1, groups=1, in_scale=None, in_shift=None, in_relu=False,
              out_scale=None, out_shift=None, residual=None, res_scale=None, res_shift=None,
              out_relu=False, stats=True)
    fwd = configs.FALLBACKS["fwd"][0]
    with configs.forced("reduce", tile), configs.forced("fwd", fwd):
        launch = plans.merge_stats_launch(9216 // fwd.block_m, channels, _common.target_of(x))
        assert launch.meta["TICKET"] == ticket
        check_op("conv_fwd", "x", **kw)
