"""Winograd F(4x4, 3x3) convolutions of eval blocks on the CPU (fused_resnet/winograd.py and
csrc/cpu/winograd_cpu.cpp): the op against a float64 convolution on odd shapes, its input
checks, when the eval path takes it, and the blocks that use it against torchvision."""

from __future__ import annotations

import copy
import threading

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close, make_blocks

import fused_resnet
from fused_resnet import onednn, winograd

pytestmark = pytest.mark.skipif(
    "cpp" not in fused_resnet.available_backends("cpu"), reason="needs the cpp backend")

CL = torch.channels_last


def _case(n, c, k, h, w, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g, dtype=dtype).contiguous(memory_format=CL)
    weight = torch.randn(k, c, 3, 3, generator=g, dtype=dtype) / (3 * c ** 0.5)
    bias = torch.randn(k, generator=g, dtype=dtype)
    residual = torch.randn(n, k, h, w, generator=g, dtype=dtype).contiguous(memory_format=CL)
    return x, weight, bias, residual


def _expected(x, weight, bias, residual, relu):
    y = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)
    if residual is not None:
        y = y + residual.double()
    return y.relu() if relu else y


# Channels below, at and past the 8-channel vector step; sizes not multiples of the 4x4 tile.
SHAPES = [(1, 3, 5, 1, 1), (2, 13, 21, 9, 7), (3, 8, 16, 4, 4), (1, 17, 9, 6, 11),
          (2, 24, 8, 13, 5)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("relu,with_residual", [(False, False), (True, False), (True, True),
                                                (False, True)])
def test_matches_a_float64_convolution(dtype, shape, relu, with_residual):
    x, weight, bias, residual = _case(*shape, dtype)
    residual = residual if with_residual else None
    out, finite = winograd.conv3x3(x, winograd.transform_weight(weight), bias, residual, relu)
    assert finite
    assert out.dtype == dtype and out.shape == (shape[0], shape[2], *shape[3:])
    assert out.is_contiguous(memory_format=CL)
    assert_close(out, _expected(x, weight, bias, residual, relu), dtype)


def test_float32_error_is_within_the_documented_bound():
    # The documented accuracy: ~1.5-2e-6 relative per convolution at ResNet-50's sizes.
    x, weight, bias, _ = _case(1, 64, 64, 56, 56, torch.float32)
    ref = _expected(x, weight, bias, None, False)
    out, _ = winograd.conv3x3(x, winograd.transform_weight(weight), bias)
    err = ((out.double() - ref).norm() / ref.norm()).item()
    assert 1e-8 < err < 4e-6


def test_transform_weight_layout():
    weight = torch.zeros(2, 3, 3, 3, dtype=torch.float64)
    weight[1, 2, 1, 1] = 1.0  # the centre tap of output channel 1 from input channel 2
    u = winograd.transform_weight(weight)
    assert u.shape == (winograd.POSITIONS, 3, 2) and u.dtype == torch.float64
    g_centre = winograd._G[:, 1]
    assert torch.equal(u[:, 2, 1], torch.outer(g_centre, g_centre).reshape(36))
    assert u[:, :2].abs().sum() == 0 and u[:, 2, 0].abs().sum() == 0


@pytest.mark.parametrize("bad,match", [
    (lambda x, u, b, r: (x.contiguous(), u, b, r), "channels_last"),
    (lambda x, u, b, r: (x, u[:, :-1], b, r), "transformed weight"),
    (lambda x, u, b, r: (x, u[:-1], b, r), "transformed weight"),
    (lambda x, u, b, r: (x, u, b[:-1], r), "bias must be"),
    (lambda x, u, b, r: (x, u.double(), b, r), "dtype"),
    (lambda x, u, b, r: (x.half(), u, b, r), "float32 or float64"),
    (lambda x, u, b, r: (x, u, b, r[:, :-1]), "residual must be"),
    (lambda x, u, b, r: (x[0], u, b, r), "4-D"),
])
def test_rejects_bad_input(bad, match):
    x, weight, bias, residual = _case(2, 5, 6, 7, 7, torch.float32)
    args = bad(x, winograd.transform_weight(weight), bias, residual)
    with pytest.raises(RuntimeError, match=match):
        winograd.conv3x3(*args, relu=True)


def test_workspace_is_used_when_large_enough_and_results_do_not_depend_on_it():
    x, weight, bias, residual = _case(2, 13, 21, 9, 7, torch.float32)
    u, op = winograd.transform_weight(weight), torch.ops.fused_resnet.winograd_conv3x3
    numel = winograd.workspace_numel(list(x.shape), 21)
    plain, _ = op(x, u, bias, residual, True)
    for ws in (torch.full((numel,), float("nan")), torch.full((numel - 1,), float("nan"))):
        before = ws.clone()
        assert torch.equal(op(x, u, bias, residual, True, ws)[0], plain)
        assert ws.isnan().all() == (ws.numel() < numel)  # used as scratch only if it fits
        assert ws.numel() < numel or not torch.equal(ws, before)
    with pytest.raises(RuntimeError, match="workspace must be"):
        op(x, u, bias, residual, True, torch.empty(numel, dtype=torch.float64))


def test_each_thread_keeps_one_workspace():
    x, weight, bias, _ = _case(1, 8, 8, 16, 16, torch.float32)
    u = winograd.transform_weight(weight)
    winograd.conv3x3(x, u, bias)
    ws = winograd._local.workspace
    winograd.conv3x3(x[:, :, :8, :8].contiguous(memory_format=CL), u, bias)  # smaller: same
    assert winograd._local.workspace is ws
    seen = []
    thread = threading.Thread(target=lambda: (winograd.conv3x3(x, u, bias),
                                              seen.append(winograd._local.workspace)))
    thread.start(), thread.join()
    assert seen and seen[0] is not ws


@pytest.mark.parametrize("where,value", [
    ("x", float("nan")), ("x", float("inf")), ("x", -float("inf")), ("x", 3e38),
    ("residual", float("nan")), ("residual", float("inf"))])
def test_says_when_the_output_is_not_finite(where, value):
    x, weight, bias, residual = _case(2, 9, 8, 10, 11, torch.float32)
    u = winograd.transform_weight(weight)
    assert winograd.conv3x3(x, u, bias, residual, True)[1]
    (x if where == "x" else residual)[1, 4, 5, 6] = value
    out, finite = winograd.conv3x3(x, u, bias, residual, True)
    assert not finite and not out.isfinite().all()


def test_unit_recomputes_a_non_finite_result_directly():
    # 3e37 overflows float32 in the input transform (4*d0 - 5*d2 + ...), not in the direct
    # convolution: the unit's Winograd result is not finite, its direct one is.
    x, weight, bias, _ = _case(1, 8, 8, 16, 16, torch.float32)
    x[0, 3, 7, 7] = 3e37
    unit = onednn._Unit(weight.contiguous(memory_format=CL) * 1e-3, bias, [1, 1], [1, 1],
                        [1, 1], 1)
    wino = unit.packed(list(x.shape))
    assert isinstance(wino, onednn._WinogradUnit)
    assert not winograd.conv3x3(x, wino.u, bias, None, True)[1]
    out = wino(x, "relu")
    assert out.isfinite().all() and torch.equal(out, unit(x, "relu"))


def test_blocks_run_in_and_out_of_inference_mode_in_either_order():
    _, fused = make_blocks("bottleneck", 16, 4, 1, False, backend="cpp")
    fused.eval()
    x = torch.randn(1, 16, 16, 16).contiguous(memory_format=CL)
    winograd._local.__dict__.pop("workspace", None)  # made fresh under inference_mode
    with torch.inference_mode():
        first = fused(x)
    assert _paths(fused)[1] == "winograd"
    with torch.no_grad():
        assert torch.equal(fused(x), first)
    with torch.inference_mode():
        assert torch.equal(fused(x), first)


def test_empty_batch():
    x, weight, bias, _ = _case(1, 5, 6, 7, 7, torch.float32)
    out, finite = winograd.conv3x3(x[:0], winograd.transform_weight(weight), bias)
    assert out.shape == (0, 6, 7, 7) and finite


def test_fits_only_stride1_padding1_3x3_with_enough_tiles():
    w3, w1 = torch.empty(8, 8, 3, 3), torch.empty(8, 8, 1, 1)
    many = [1, 8, 16, 16]  # 16 tiles
    assert winograd.tiles(many) == winograd.MIN_TILES and winograd.fits(w3, 1, 1, 1, 1, many)
    assert winograd.tiles([1, 8, 13, 13]) == 16 and winograd.tiles([1, 8, 12, 13]) == 12
    assert not winograd.fits(w3, 1, 1, 1, 1, [1, 8, 12, 13])  # too few tiles
    for stride, padding, dilation, groups in [(2, 1, 1, 1), (1, 2, 2, 1), (1, 1, 1, 2),
                                              (1, 0, 1, 1)]:
        assert not winograd.fits(w3, stride, padding, dilation, groups, many)
    assert not winograd.fits(w1, 1, 1, 1, 1, many)
    # A workspace past the cap (64 channels at 56x56 from batch 10): direct.
    w64 = torch.empty(64, 64, 3, 3)
    assert winograd.fits(w64, 1, 1, 1, 1, [8, 64, 56, 56])
    assert not winograd.fits(w64, 1, 1, 1, 1, [10, 64, 56, 56])


# ------------------------------------------------------------------------ in the blocks
def _paths(block):
    """The packed units' kinds of a block's last eval call: 'winograd' or 'onednn'."""
    (units, _), = block.__dict__["_onednn_cache"].packed.values()
    return ["winograd" if isinstance(u, onednn._WinogradUnit) else "onednn" for u in units]


@pytest.mark.parametrize("kind,hw,paths", [
    ("bottleneck", 16, ["onednn", "winograd", "onednn", "onednn"]),
    ("bottleneck", 12, ["onednn", "onednn", "onednn", "onednn"]),  # 9 tiles: direct
    ("basic", 16, ["winograd", "winograd", "onednn"]),  # conv2 takes the residual
])
def test_eval_blocks_take_it_where_it_fits_and_match_torchvision(kind, hw, paths):
    planes = 6 if kind == "bottleneck" else 10
    tv, fused = make_blocks(kind, 12, planes, 1, True, backend="cpp")
    tv.eval(), fused.eval()
    x = torch.randn(1, 12, hw, hw + 1).contiguous(memory_format=CL)
    with torch.no_grad():
        out = fused(x)
        ref = copy.deepcopy(tv).double()(x.double())
    assert _paths(fused) == paths
    assert_close(out, ref, torch.float32)
