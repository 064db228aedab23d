"""convert() / unconvert() on timm's ResNets: ResNet, ResNeXt, Wide ResNet, ResNet-D (deep
stem, average-pool shortcut) and stochastic depth, against timm's own models."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from conftest import (
    CPU_BACKENDS,
    CPU_BACKENDS_ONE_FAST,
    TRITON_BLOCK_BACKENDS,
    assert_close,
    randomize_bn,
    rel_err,
    slow,
    tolerance,
)

timm = pytest.importorskip("timm")
from timm.layers import BlurPool2d  # noqa: E402
from timm.models.resnet import BasicBlock, Bottleneck, ResNet  # noqa: E402

import fused_resnet  # noqa: E402
from fused_resnet import ops  # noqa: E402
from fused_resnet.modules import (  # noqa: E402
    FusedStemConv,
    FusedTimmBasicBlock,
    FusedTimmBottleneck,
    _FusedBlock,
)

# The block configurations of timm's ResNet families, one block per stage and narrow
# channels so that a float64 forward + backward of the whole network stays cheap.
_SMALL = dict(layers=(1, 1, 1, 1), channels=(8, 16, 24, 32), num_classes=5)
_DEEP_STEM = dict(stem_width=8, stem_type="deep", avg_down=True)
FAMILIES = {
    "resnet": dict(block=BasicBlock),
    "resnet-d": dict(block=BasicBlock, **_DEEP_STEM),
    "bottleneck": dict(block=Bottleneck),
    "resnext": dict(block=Bottleneck, cardinality=4, base_width=8),
    "wide": dict(block=Bottleneck, base_width=128),
    "bottleneck-d": dict(block=Bottleneck, **_DEEP_STEM),
}


def _timm_model(family: str, dtype: torch.dtype, **kwargs) -> torch.nn.Module:
    model = ResNet(**FAMILIES[family], **_SMALL, **kwargs).to(dtype)
    randomize_bn(model)
    return model


def _blocks(model, cls):
    return [n for n, m in model.named_modules() if isinstance(m, cls)]


def _run(model, x, seed: int):
    """Output, input and parameter gradients of one training step (no optimizer)."""
    x = x.clone().requires_grad_()
    torch.manual_seed(seed)  # drop path draws its masks here
    out = model(x)
    g = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    out.backward(g)
    return out, x.grad, {n: p.grad for n, p in model.named_parameters()}


# The fast loop: every family in float64 (the tight check) on one backend; float32 and the
# other backend in `make test`.
@pytest.mark.parametrize("drop_path_rate", [0.0, 0.5], ids=["plain", "drop_path"])
@pytest.mark.parametrize("dtype", [torch.float64, slow(torch.float32)], ids=["f64", "f32"])
@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("cpu_backend", CPU_BACKENDS_ONE_FAST)
def test_matches_timm(family, dtype, drop_path_rate, cpu_backend):
    oracle = _timm_model(family, torch.float64, drop_path_rate=drop_path_rate)
    model = fused_resnet.convert(copy.deepcopy(oracle).to(dtype), backend=cpu_backend)
    assert _blocks(model, _FusedBlock) == _blocks(oracle, (BasicBlock, Bottleneck))
    n_stems = 3 if "stem_type" in FAMILIES[family] else 1
    assert len(_blocks(model, FusedStemConv)) == n_stems
    x = torch.randn(4, 3, 45, 45, dtype=torch.float64)  # odd size: ceil-mode pool windows

    # A whole network compounds rounding: in float32 the fused model may be off by the
    # table's tolerance or by twice what timm's own float32 model is off, whichever is more;
    # BN parameter gradients (sums that cancel, summed in another order) by up to 1e-4, as
    # in test_randomized.
    plain = copy.deepcopy(oracle).to(dtype) if dtype != torch.float64 else None
    bn_params = {f"{n}.{p}.grad" for n, m in oracle.named_modules()
                 if isinstance(m, torch.nn.BatchNorm2d) for p in ("weight", "bias")}

    def check(fused, timm_plain, timm_oracle, what):
        plain_err = rel_err(timm_plain, timm_oracle) if plain is not None else 0.0
        floor = 1e-4 if plain is not None and what in bn_params else tolerance(dtype)
        tol = max(floor, 2 * plain_err)
        err = rel_err(fused, timm_oracle)
        assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e} ({dtype})"

    oracle.train(), model.train()
    out_o, dx_o, grads_o = _run(oracle, x, seed=7)
    out_f, dx_f, grads_f = _run(model, x.to(dtype), seed=7)
    out_p, dx_p, grads_p = _run(plain.train(), x.to(dtype), seed=7) if plain else (
        out_o, dx_o, grads_o)
    check(out_f, out_p, out_o, "train output")
    check(dx_f, dx_p, dx_o, "x.grad")
    for name, g in grads_o.items():
        check(grads_f[name], grads_p[name], g, f"{name}.grad")
    buffers, plain_buffers = dict(model.named_buffers()), dict((plain or oracle).named_buffers())
    for name, b in oracle.named_buffers():
        check(buffers[name], plain_buffers[name], b, name)

    oracle.eval(), model.eval()
    with torch.no_grad():
        assert_close(model(x.to(dtype)), oracle(x), dtype, what="eval output")


def test_drop_path_draws_timms_masks():
    """Same seed, same masks: another seed (other masks) gives another result, so the
    comparison in test_matches_timm sees the masks."""
    oracle = _timm_model("bottleneck-d", torch.float64, drop_path_rate=0.5)
    model = fused_resnet.convert(copy.deepcopy(oracle), backend="reference")
    x = torch.randn(8, 3, 17, 17, dtype=torch.float64)
    out_o = _run(oracle, x, seed=1)[0]
    assert_close(_run(model, x, seed=1)[0], out_o, torch.float64)
    assert rel_err(_run(copy.deepcopy(model), x, seed=2)[0], out_o) > 1e-3
    model.eval(), oracle.eval()  # eval ignores drop path, as timm does
    with torch.no_grad():
        assert_close(model(x), oracle(x), torch.float64, what="eval")


@pytest.mark.parametrize("projection", [False, True], ids=["identity", "projection"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("backend", CPU_BACKENDS + TRITON_BLOCK_BACKENDS)
def test_block_end_ops_with_branch_scale(backend, channels_last, projection):
    """The block-end ops with drop path's per-sample factors, against the formulas."""
    dtype = torch.float32 if backend == "triton" else torch.float64
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    n, c = 5, 7
    keep = 0.6
    branch_scale = torch.tensor([0, 1 / keep, 1 / keep, 0, 1 / keep], dtype=dtype)

    def data():
        return torch.randn(n, c, 3, 5, dtype=dtype).contiguous(memory_format=fmt)

    def vec(lo=-1.0, hi=1.0):
        return torch.empty(c, dtype=dtype).uniform_(lo, hi)

    y, y_d, residual, d_out = data(), data(), data(), data()
    scale, shift, mean, invstd = vec(0.5, 1.5), vec(), vec(), vec(0.5, 2.0)
    res_scale, res_shift, mean_d, invstd_d = vec(0.5, 1.5), vec(), vec(), vec(0.5, 2.0)
    be = ops.get_backend(backend)

    def per_channel(v):
        return v.double().view(1, -1, 1, 1)

    per_sample = branch_scale.double().view(-1, 1, 1, 1)
    res64 = y_d if projection else residual
    res64 = res64.double() * per_channel(res_scale) + per_channel(res_shift) if projection \
        else res64.double()
    want = torch.relu((y.double() * per_channel(scale) + per_channel(shift)) * per_sample + res64)
    proj = dict(res_scale=res_scale, res_shift=res_shift) if projection else dict(
        res_scale=None, res_shift=None)
    out = be.block_end(y=y, scale=scale, shift=shift, residual=y_d if projection else residual,
                       branch_scale=branch_scale, **proj)
    assert_close(out, want, dtype, what="out")
    assert out.is_contiguous(memory_format=fmt)

    dz, sum_dz, sum_dz_xhat, sum_dz_xhat_d = be.block_end_bwd(
        d_out=d_out, out=out, y=y, mean=mean, invstd=invstd, y_d=y_d if projection else None,
        mean_d=mean_d if projection else None, invstd_d=invstd_d if projection else None,
        branch_scale=branch_scale)
    dz64 = torch.where(out.double() > 0, d_out.double(), 0.0)
    xhat = (y.double() - per_channel(mean)) * per_channel(invstd)
    assert_close(dz, dz64, dtype, what="dz (the shortcut's gradient: not scaled)")
    assert_close(sum_dz, (dz64 * per_sample).sum((0, 2, 3)), dtype, what="sum_dz")
    assert_close(sum_dz_xhat, (dz64 * per_sample * xhat).sum((0, 2, 3)), dtype,
                 what="sum_dz_xhat")
    if projection:
        xhat_d = (y_d.double() - per_channel(mean_d)) * per_channel(invstd_d)
        assert_close(sum_dz_xhat_d, (dz64 * xhat_d).sum((0, 2, 3)), dtype, what="sum_dz_xhat_d")


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "resnext50_32x4d",
                                  "wide_resnet50_2", "resnet18d", "resnet50d"])
def test_registered_models_convert_with_keys_and_unconvert(name):
    oracle = timm.create_model(name, num_classes=3, drop_path_rate=0.1)
    block_cls = FusedTimmBottleneck if "50" in name else FusedTimmBasicBlock
    model = fused_resnet.convert(copy.deepcopy(oracle), backend="reference")
    assert _blocks(model, block_cls) == _blocks(oracle, (BasicBlock, Bottleneck))
    assert model.state_dict().keys() == oracle.state_dict().keys()
    model.load_state_dict(oracle.state_dict(), strict=True)
    oracle.load_state_dict(model.state_dict(), strict=True)
    assert [n for n, _ in model.named_modules()] == [n for n, _ in oracle.named_modules()]

    back = fused_resnet.unconvert(model)
    assert not _blocks(back, (_FusedBlock, FusedStemConv))
    assert ([(n, type(m)) for n, m in back.named_modules()]
            == [(n, type(m)) for n, m in oracle.named_modules()])
    back.load_state_dict(oracle.state_dict(), strict=True)


def test_unfusable_blocks_are_listed_with_reasons():
    se = _timm_model("resnet", torch.float32, block_args=dict(attn_layer="se"))
    aa = _timm_model("bottleneck", torch.float32, aa_layer=BlurPool2d)
    for model, reason, fused in ((se, "se is a SEModule", 0), (aa, "aa is a BlurPool2d", 1)):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            fused_resnet.convert(model, backend="reference")
        messages = [str(m.message) for m in w if "unfused" in str(m.message)]
        assert len(messages) == 1
        listed = [line.strip() for line in messages[0].splitlines()[1:]]
        # aa only where the block strides: layer1 (stride 1) fuses.
        assert len(listed) == 4 - fused and all(reason in line for line in listed), listed
        assert len(_blocks(model, _FusedBlock)) == fused
        model.eval()(torch.randn(1, 3, 32, 32))


@pytest.mark.slow
def test_compile_fullgraph_over_a_converted_timm_model():
    model = fused_resnet.convert(_timm_model("bottleneck-d", torch.float32,
                                             drop_path_rate=0.3), backend=CPU_BACKENDS[-1])
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 32, 32)
    for train in (False, True):
        model.train(train)
        eager = copy.deepcopy(model)
        torch.manual_seed(3)
        ref = eager(x)
        torch.manual_seed(3)
        out = compiled(x)
        assert_close(out, ref, torch.float32, what=f"train={train}")
        if train:
            ref.sum().backward()
            out.sum().backward()
            grads = dict(eager.named_parameters())
            for name, p in model.named_parameters():
                assert_close(p.grad, grads[name].grad, torch.float32, what=f"{name}.grad")
