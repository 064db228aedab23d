"""convert() / unconvert() / the resnet builders on torchvision models (random weights)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torchvision
from conftest import CPU_BACKENDS_ONE_FAST, assert_close, randomize_bn
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

import fused_resnet
from fused_resnet.modules import _FusedBlock


def _blocks(model, cls):
    return [n for n, m in model.named_modules() if isinstance(m, cls)]


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
@pytest.mark.parametrize("cpu_backend", CPU_BACKENDS_ONE_FAST)
def test_convert_round_trip_and_parity(arch, cpu_backend):
    tv = getattr(torchvision.models, arch)(num_classes=10).double()
    randomize_bn(tv)
    tv_blocks = _blocks(tv, (BasicBlock, Bottleneck))
    model = fused_resnet.convert(copy.deepcopy(tv), backend=cpu_backend)

    assert _blocks(model, _FusedBlock) == tv_blocks, "every block converted, names kept"
    assert all(m.backend_in_use == cpu_backend for m in model.modules()
               if isinstance(m, _FusedBlock))
    assert model.state_dict().keys() == tv.state_dict().keys()
    model.load_state_dict(tv.state_dict(), strict=True)
    tv.load_state_dict(model.state_dict(), strict=True)

    x = torch.randn(2, 3, 48, 48, dtype=torch.float64)
    for train in (False, True):
        tv.train(train), model.train(train)
        assert_close(model(x), tv(x), torch.float64, what=f"{arch} train={train}")
    for (name, b), (_, c) in zip(model.named_buffers(), tv.named_buffers()):
        assert_close(b, c, torch.float64, what=name)

    back = fused_resnet.unconvert(model)
    assert _blocks(back, (BasicBlock, Bottleneck)) == tv_blocks
    assert not _blocks(back, _FusedBlock)
    back.eval(), tv.eval()
    assert_close(back(x), tv(x), torch.float64, what="unconverted")


def test_convert_keeps_train_eval_dtype_and_is_inplace_by_default():
    tv = torchvision.models.resnet18(num_classes=4).to(torch.float64).eval()
    tv.layer2.train()
    out = fused_resnet.convert(tv)
    assert out is tv
    assert isinstance(tv.layer2[0], fused_resnet.FusedBasicBlock)
    assert tv.layer2[0].training and not tv.layer1[0].training
    assert tv.layer3[1].conv1.weight.dtype == torch.float64
    copy_ = fused_resnet.convert(torchvision.models.resnet18(), inplace=False)
    assert isinstance(copy_.layer1[0], fused_resnet.FusedBasicBlock)


def test_convert_detection_style_backbone_with_frozen_bn():
    from torchvision.ops.misc import FrozenBatchNorm2d

    tv = torchvision.models.resnet50(norm_layer=FrozenBatchNorm2d).double()
    randomize_bn(tv)
    backbone = torchvision.models._utils.IntermediateLayerGetter(
        tv, return_layers={"layer2": "0", "layer4": "1"})
    fused = fused_resnet.convert(copy.deepcopy(backbone))
    assert isinstance(fused.layer4[2], fused_resnet.FusedBottleneck)
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    ref, out = backbone.train()(x), fused.train()(x)
    for k in ref:
        assert_close(out[k], ref[k], torch.float64, what=k)


def test_unfusable_blocks_stay_and_are_listed_in_one_warning():
    tv = torchvision.models.resnet18()
    tv.layer1[0].bn1 = nn.GroupNorm(4, 64)
    tv.layer2[0].downsample = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(64, 128, 1, bias=False),
                                            nn.BatchNorm2d(128))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        fused_resnet.convert(tv)
    messages = [str(x.message) for x in w if "left" in str(x.message)]
    assert len(messages) == 1
    assert "layer1.0: bn1 is a GroupNorm" in messages[0]
    assert "layer2.0: the shortcut" in messages[0]
    assert type(tv.layer1[0]) is BasicBlock and type(tv.layer2[0]) is BasicBlock
    assert isinstance(tv.layer1[1], fused_resnet.FusedBasicBlock)
    tv.eval()(torch.randn(1, 3, 32, 32))


def test_convert_a_bare_block():
    block = Bottleneck(64, 16)
    fused = fused_resnet.convert(block)
    assert isinstance(fused, fused_resnet.FusedBottleneck)


@pytest.mark.parametrize("arch,block", [("resnet18", "FusedBasicBlock"),
                                        ("resnet34", "FusedBasicBlock"),
                                        ("resnet50", "FusedBottleneck"),
                                        ("resnet101", "FusedBottleneck"),
                                        ("resnet152", "FusedBottleneck")])
def test_builders_match_torchvision_keys_and_init(arch, block):
    torch.manual_seed(0)
    model = getattr(fused_resnet, arch)(num_classes=7, zero_init_residual=True)
    torch.manual_seed(0)
    tv = getattr(torchvision.models, arch)(num_classes=7, zero_init_residual=True)
    assert model.state_dict().keys() == tv.state_dict().keys()
    for (k, a), (_, b) in zip(model.state_dict().items(), tv.state_dict().items()):
        assert torch.equal(a, b), k
    assert type(model.layer1[0]).__name__ == block


def test_builder_keyword_arguments():
    model = fused_resnet.resnet50(groups=2, width_per_group=32,
                                  replace_stride_with_dilation=[False, True, True],
                                  num_classes=3)
    assert model.layer4[0].conv2.dilation == (2, 2)
    model.eval()
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_stem_is_fused_and_unfused():
    from fused_resnet.modules import FoldedBatchNorm2d, FusedStemConv

    tv = torchvision.models.resnet18(num_classes=3).double()
    randomize_bn(tv)
    model = fused_resnet.convert(copy.deepcopy(tv))
    assert type(model.conv1) is FusedStemConv and type(model.bn1) is FoldedBatchNorm2d
    assert isinstance(model.relu, nn.Identity)
    assert model.state_dict().keys() == tv.state_dict().keys()
    x = torch.randn(2, 3, 40, 40, dtype=torch.float64, requires_grad=True)
    for train in (True, False):
        model.train(train), tv.train(train)
        xs = [x.detach().clone().requires_grad_() for _ in range(2)]
        out, ref = model(xs[0]), tv(xs[1])
        assert_close(out, ref, torch.float64, what=f"train={train}")
        out.sum().backward()
        ref.sum().backward()
        assert_close(xs[0].grad, xs[1].grad, torch.float64, what="x.grad")
        for name in ("conv1.weight", "bn1.weight", "bn1.bias"):
            assert_close(model.get_parameter(name).grad, tv.get_parameter(name).grad,
                         torch.float64, what=name)
    assert_close(model.bn1.running_var, tv.bn1.running_var, torch.float64)
    assert model.bn1.num_batches_tracked == tv.bn1.num_batches_tracked

    back = fused_resnet.unconvert(model)
    assert type(back.conv1) is nn.Conv2d and type(back.bn1) is nn.BatchNorm2d
    assert type(back.relu) is nn.ReLU
    assert not hasattr(back.conv1, "_folded_bn")
    untouched = fused_resnet.convert(copy.deepcopy(tv), fuse_stem=False)
    assert type(untouched.conv1) is nn.Conv2d


@pytest.mark.skipif("triton" not in fused_resnet.available_backends("cpu"),
                    reason="Triton kernels cannot run here")
def test_stem_on_triton_in_the_interpreter():
    # A narrow stem of ResNet's shape (7x7 stride 2, 8 channels): the interpreter is slow.
    tv = nn.Module()
    tv.conv1 = nn.Conv2d(3, 8, 7, stride=2, padding=3, bias=False)
    tv.bn1, tv.relu = nn.BatchNorm2d(8), nn.ReLU(inplace=True)
    tv.maxpool, tv.layer1 = nn.MaxPool2d(3, 2, 1), nn.Identity()
    randomize_bn(tv)
    model = fused_resnet.convert(copy.deepcopy(tv), backend="triton")
    assert model.conv1.backend_in_use == "triton"

    def stem(m, x):
        return m.maxpool(m.relu(m.bn1(m.conv1(x))))

    x = torch.randn(2, 3, 15, 15)
    oracle = copy.deepcopy(tv).double()
    for train in (True, False):
        model.train(train), oracle.train(train)
        xs, xr = x.clone().requires_grad_(), x.double().requires_grad_()
        out, ref = stem(model, xs), stem(oracle, xr)
        assert_close(out, ref, torch.float32, what=f"train={train}")
        out.sum().backward()
        ref.sum().backward()
        assert_close(xs.grad, xr.grad, torch.float32, what="x.grad")
        assert_close(model.conv1.weight.grad, oracle.conv1.weight.grad, torch.float32,
                     what="conv1.weight.grad")
        model.zero_grad(), oracle.zero_grad()
