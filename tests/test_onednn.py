"""Eval-mode blocks through oneDNN's fused convolutions (fused_resnet/onednn.py): the
values against torchvision in float64, when the path is (not) taken, and the prepacked
weight cache's invalidation on every kind of change."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torchvision
from conftest import assert_close, make_blocks

import fused_resnet
from fused_resnet import onednn
from fused_resnet.testing import randomize_bn

pytestmark = pytest.mark.skipif(
    onednn.unavailable() is not None or "cpp" not in fused_resnet.available_backends("cpu"),
    reason=f"needs oneDNN and the cpp backend: {onednn.unavailable()}")

CL = torch.channels_last


def _cache(block) -> onednn.PackCache | None:
    return block.__dict__.get("_onednn_cache")


def _oracle(fused, x):
    """torchvision's block with the fused block's current state, in float64."""
    resnet = torchvision.models.resnet
    tv_cls = (resnet.Bottleneck if isinstance(fused, fused_resnet.FusedBottleneck)
              else resnet.BasicBlock)
    tv = tv_cls(fused.conv1.in_channels, fused.conv1.out_channels, fused.stride,
                copy.deepcopy(fused.downsample))
    tv.load_state_dict(fused.state_dict())
    with torch.no_grad():
        return tv.double().eval()(x.double())


def _eval(fused, x):
    with torch.no_grad():
        return fused(x)


@pytest.mark.parametrize("kind", ["bottleneck", "basic"])
@pytest.mark.parametrize("stride,projection", [(1, False), (1, True), (2, True)])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, CL], ids=["nchw", "cl"])
def test_matches_torchvision_and_keeps_the_layout(kind, stride, projection, fmt):
    planes = 5 if kind == "bottleneck" else 12
    inplanes = 12 if projection else planes * (4 if kind == "bottleneck" else 1)
    tv, fused = make_blocks(kind, inplanes, planes, stride, projection, backend="cpp")
    tv.eval(), fused.eval()
    x = torch.randn(3, inplanes, 11, 9).contiguous(memory_format=fmt)
    out = _eval(fused, x)
    with torch.no_grad():
        ref = copy.deepcopy(tv).double()(x.double())
    assert_close(out, ref, torch.float32)
    assert out.is_contiguous(memory_format=fmt)
    assert _cache(fused).packed, "the oneDNN path was not taken"


def test_resnet_with_stem_matches_torchvision():
    tv = torchvision.models.resnet18(num_classes=7).eval()
    randomize_bn(tv)
    fused = fused_resnet.convert(copy.deepcopy(tv), backend="cpp").eval()
    x = torch.randn(2, 3, 45, 37).contiguous(memory_format=CL)
    with torch.no_grad():
        ref = tv.double()(x.double())
    assert_close(_eval(fused, x), ref, torch.float32)
    assert _cache(fused.conv1).packed and _cache(fused.layer4[0]).packed


def test_not_used_when_a_gradient_is_wanted_or_in_training():
    tv, fused = make_blocks("bottleneck", 16, 4, backend="cpp")
    x = torch.randn(2, 16, 7, 7)
    fused.eval()
    out = fused(x)  # parameters require grad, grad mode on: the autograd path
    assert out.grad_fn is not None and _cache(fused) is None
    fused.train()
    _eval(fused, x)  # batch statistics
    assert _cache(fused) is None
    fused.eval()
    _eval(fused.double(), x.double())  # float64: the cpp kernels
    assert _cache(fused) is None


def _poison_input(fused, value):
    x = torch.randn(1, fused.conv1.in_channels, 16, 16).contiguous(memory_format=CL)
    x[0, 2, 6, 9] = value
    return x


def _poison_weight(fused, value):
    with torch.no_grad():
        fused.conv2.weight[1, 0, 1, 1] = value
    return torch.randn(1, fused.conv1.in_channels, 16, 16).contiguous(memory_format=CL)


@pytest.mark.parametrize("kind", ["bottleneck", "basic"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("poison", [_poison_input, _poison_weight], ids=["input", "weight"])
def test_nan_and_inf_propagate_as_in_torchvision(kind, value, poison):
    # oneDNN's ReLU post-op turns NaN into 0: such calls must leave the oneDNN path.
    planes = 6 if kind == "bottleneck" else 8
    tv, fused = make_blocks(kind, 8, planes, 1, True, backend="cpp")
    tv.eval(), fused.eval()
    _eval(fused, torch.randn(1, 8, 16, 16))  # packed while finite
    x = poison(fused, value)
    tv.load_state_dict(fused.state_dict())
    out = _eval(fused, x)
    with torch.no_grad():
        ref = copy.deepcopy(tv).double()(x.double())
    assert torch.equal(out.isnan(), ref.isnan()) and torch.equal(out.isinf(), ref.isinf())
    finite = ref.isfinite()
    assert_close(out[finite], ref[finite], torch.float32)


def test_a_chain_sums_only_inputs_it_did_not_make(monkeypatch):
    blocks = [make_blocks("bottleneck", 16, 4, backend="cpp")[1].eval() for _ in range(3)]
    summed = []
    real = onednn._all_finite
    monkeypatch.setattr(onednn, "_all_finite", lambda x: summed.append(x) or real(x))
    h = torch.randn(1, 16, 16, 16).contiguous(memory_format=CL)
    x = h
    for block in blocks:
        h = _eval(block, h)
    assert len(summed) == 1 and summed[0] is x
    out = _eval(blocks[0], h)  # the last output again: made here, unchanged
    assert len(summed) == 1
    out[0, 3, 2, 2] = float("nan")  # the last output changed in place: summed, NaN propagates
    ref = _eval(copy.deepcopy(blocks[0]).double(), out.double())
    assert torch.equal(_eval(blocks[0], out).isnan(), ref.isnan()) and ref.isnan().any()
    assert len(summed) == 2 and summed[1] is out
    with torch.inference_mode():  # inference tensors keep no version counter: every call sums
        h = x
        for block in blocks:
            h = block(h)
    assert len(summed) == 5


def test_reference_backend_keeps_its_own_path():
    _, fused = make_blocks("basic", 8, 8, backend="reference")
    _eval(fused.eval(), torch.randn(2, 8, 5, 5))
    assert _cache(fused) is None


# ---------------------------------------------------------------------- invalidation
def _sgd_step(fused):
    for p in fused.parameters():
        p.grad = torch.randn_like(p)
    torch.optim.SGD(fused.parameters(), lr=0.1).step()


def _load_other_state(fused):
    other = copy.deepcopy(fused)
    randomize_bn(other)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1.5)
    fused.load_state_dict(other.state_dict())


def _round_trip_float64(fused):
    fused.double()
    with torch.no_grad():
        fused.conv3.weight.mul_(-1)
        fused.downsample[1].running_var.mul_(3)
    fused.float()


def _round_trip_bfloat16(fused):
    fused.to(torch.bfloat16).float()  # new values by rounding alone: no in-place edit


def _in_place(name, op):
    def change(fused):
        with torch.no_grad():
            op(fused.get_parameter(name) if "running" not in name else fused.get_buffer(name))
    return change


TRIGGERS = {
    "conv_weight": _in_place("conv2.weight", lambda t: t.mul_(-2)),
    "bn_weight": _in_place("bn1.weight", lambda t: t.add_(1)),
    "bn_bias": _in_place("bn3.bias", lambda t: t.sub_(1)),
    "running_mean": _in_place("bn2.running_mean", lambda t: t.add_(1)),
    "running_var": _in_place("bn3.running_var", lambda t: t.mul_(4)),
    "shortcut_bn": _in_place("downsample.1.running_mean", lambda t: t.add_(2)),
    "shortcut_weight": _in_place("downsample.0.weight", lambda t: t.mul_(-1)),
    "load_state_dict": _load_other_state,
    "optimizer_step": _sgd_step,
    "to_float64_and_back": _round_trip_float64,
    "to_bfloat16_and_back": _round_trip_bfloat16,
}


@pytest.mark.parametrize("trigger", list(TRIGGERS))
@pytest.mark.parametrize("stride,hw", [(2, 9), (1, 16)], ids=["direct", "winograd"])
def test_cache_never_serves_stale_weights(trigger, stride, hw):
    _, fused = make_blocks("bottleneck", 12, 6, stride, projection=True, backend="cpp")
    # Every tensor at version 0 (a copy's parameters, the buffers .to() makes), as after
    # any later .to(): a version counter alone cannot tell the old tensors from the new.
    fused = copy.deepcopy(fused).double().float().eval()
    x = torch.randn(2, 12, hw, hw).contiguous(memory_format=CL)
    before = _eval(fused, x)
    (units, _), = _cache(fused).packed.values()
    assert isinstance(units[1], onednn._WinogradUnit) == (stride == 1)  # conv2, the 3x3
    TRIGGERS[trigger](fused)
    after = _eval(fused, x)
    assert_close(after, _oracle(fused, x), torch.float32, what=f"after {trigger}")
    assert (after - before).abs().max() > 1e-3, f"{trigger} did not change the block"


def test_packed_per_thread_count_and_input_shape():
    _, fused = make_blocks("basic", 8, 8, backend="cpp")
    fused.eval()
    x = torch.randn(2, 8, 6, 6)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _eval(fused, x)
        torch.set_num_threads(2)
        two = _eval(fused, x)
        _eval(fused, x[:1])
    finally:
        torch.set_num_threads(threads)
    assert set(_cache(fused).packed) == {(1, (2, 8, 6, 6)), (2, (2, 8, 6, 6)), (2, (1, 8, 6, 6))}
    assert_close(two, one.double(), torch.float32)


def test_a_copy_starts_with_an_empty_cache_and_follows_its_own_weights():
    _, fused = make_blocks("basic", 8, 8, backend="cpp")
    fused.eval()
    x = torch.randn(2, 8, 6, 6)
    _eval(fused, x)
    clone = copy.deepcopy(fused)
    assert not _cache(clone).packed
    with torch.no_grad():
        clone.conv1.weight.mul_(-1)
    assert_close(_eval(clone, x), _oracle(clone, x), torch.float32)


def test_missing_aten_op_falls_back_and_says_why_once(monkeypatch):
    tv, fused = make_blocks("bottleneck", 16, 4, backend="cpp")
    fused.eval(), tv.eval()
    monkeypatch.setattr(onednn, "unavailable", lambda: "torch 0.0 has no torch.ops.mkldnn.x")
    monkeypatch.setattr(onednn, "_warned", False)
    x = torch.randn(2, 16, 5, 5)
    with pytest.warns(UserWarning, match="has no torch.ops.mkldnn.x"):
        out = _eval(fused, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _eval(fused, x)
    assert _cache(fused) is None
    with torch.no_grad():
        assert_close(out, copy.deepcopy(tv).double()(x.double()), torch.float32)


# ------------------------------------------------------------------------- auto's rule
def test_auto_on_cpu_eval_takes_onednn_and_says_why():
    tv, fused = make_blocks("bottleneck", 16, 4, backend="auto")
    tv.eval(), fused.eval()
    x = torch.randn(2, 16, 7, 7)
    with torch.no_grad():
        status = fused.backend_status(x)
        assert status["path"] == "onednn" and "prepacked" in status["why"]
        assert_close(fused(x), copy.deepcopy(tv).double()(x.double()), torch.float32)
    assert _cache(fused).packed


def test_auto_on_cpu_float32_bottleneck_training_runs_the_cpp_kernels():
    """float32 bottleneck training (batch statistics): the cpp kernels, measured faster;
    values, gradients and running statistics as torchvision's block in float64."""
    tv, fused = make_blocks("bottleneck", 16, 4, 2, projection=True, backend="auto")
    x = torch.randn(3, 16, 9, 9).contiguous(memory_format=CL)
    status = fused.backend_status(x.requires_grad_())
    assert status["path"] == "cpp" and "float32 bottleneck training" in status["why"], status
    oracle = copy.deepcopy(tv).double()
    x64 = x.detach().double().requires_grad_()
    out, ref = fused(x), oracle(x64)
    assert type(out.grad_fn).__name__ == "ResidualBlockFunctionBackward"  # the fused path ran
    assert_close(out, ref, torch.float32)
    g = torch.randn(ref.shape, dtype=torch.float64)
    out.backward(g.float())
    ref.backward(g)
    assert_close(x.grad, x64.grad, torch.float32, what="x.grad")
    for (name, p), q in zip(fused.named_parameters(), oracle.parameters()):
        assert_close(p.grad, q.grad, torch.float32, what=name)
    for (name, b), c in zip(fused.named_buffers(), oracle.buffers()):
        assert_close(b, c, torch.float32, what=name)
    with torch.no_grad():  # training without a gradient: the same path (running stats)
        assert fused.backend_status(x)["path"] == "cpp"


def test_auto_on_cpu_float64_training_is_atens_own_forward():
    """Where no fused path is measured faster, auto runs the torchvision forward: the very
    values, gradients and running statistics of the torchvision block."""
    tv, fused = make_blocks("bottleneck", 16, 4, 2, projection=True, backend="auto")
    tv, fused = tv.double(), fused.double()
    x = torch.randn(3, 16, 9, 9, dtype=torch.float64, requires_grad=True)
    status = fused.backend_status(x)
    assert status["path"] == "aten" and "batch statistics" in status["why"], status
    out, ref = fused(x), tv(x)
    assert torch.equal(out, ref)
    g_out, = torch.autograd.grad(out.sum(), fused.conv2.weight)
    g_ref, = torch.autograd.grad(ref.sum(), tv.conv2.weight)
    assert torch.equal(g_out, g_ref)
    assert torch.equal(fused.bn3.running_var, tv.bn3.running_var)


@pytest.mark.parametrize("native_bf16", [False, True], ids=["no_native", "native"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_auto_on_cpu_bfloat16_by_onednns_bf16_support(monkeypatch, native_bf16, train):
    """bfloat16: the cpp kernels where oneDNN has no native bf16 convolutions (its own bf16
    path is then many times slower), ATen's where it has them (not measured faster)."""
    monkeypatch.setattr(onednn, "_NATIVE_BF16", native_bf16)
    tv, fused = make_blocks("bottleneck", 16, 4, 2, projection=True, backend="auto")
    tv, fused = tv.bfloat16().train(train), fused.bfloat16().train(train)
    x = torch.randn(3, 16, 9, 9, dtype=torch.bfloat16, requires_grad=True)
    status = fused.backend_status(x)
    out = fused(x)
    assert "bfloat16" in status["why"], status
    if native_bf16:
        assert status["path"] == "aten", status
        assert torch.equal(out, tv(x))
    else:
        assert status["path"] == "cpp", status
        assert type(out.grad_fn).__name__ == "ResidualBlockFunctionBackward"


def test_auto_on_cpu_leaves_autocast_eval_with_gradients_and_basic_blocks_to_aten():
    _, fused = make_blocks("bottleneck", 16, 4, backend="auto")
    x = torch.randn(2, 16, 7, 7, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        status = fused.backend_status(x)
    assert status["path"] == "aten" and status["why"].startswith("under autocast"), status
    fused.eval()  # fixed statistics, a gradient wanted: not measured faster on cpp
    status = fused.backend_status(x)
    assert status["path"] == "aten" and "not faster" in status["why"], status
    _, basic = make_blocks("basic", 8, 8, backend="auto")  # float32 training: no faster
    status = basic.backend_status(torch.randn(2, 8, 5, 5, requires_grad=True))
    assert status["path"] == "aten" and "not faster" in status["why"], status


def test_a_named_backend_keeps_its_kernels_in_training():
    _, fused = make_blocks("basic", 8, 8, backend="cpp")
    status = fused.backend_status(torch.randn(2, 8, 5, 5))
    assert status["path"] == "cpp" and status["why"] == "batch statistics (training mode)"
