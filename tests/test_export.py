"""torch.export and torch.fx feature extraction work on converted ResNets; TorchScript and
the TorchScript-based ONNX exporter fail with an error that names unconvert()."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from conftest import assert_close, randomize_bn
from torchvision.models.feature_extraction import create_feature_extractor

import fused_resnet


@pytest.fixture
def model():
    m = fused_resnet.resnet18(num_classes=3)
    randomize_bn(m)
    return m.eval()


def test_torch_export_eval(model):
    x = torch.randn(2, 3, 40, 40)
    ep = torch.export.export(model, (x,))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    backend = model.layer1[0].backend_in_use
    if backend != "reference":
        assert any("fused_resnet" in t for t in targets), "the custom ops stay in the graph"
    assert_close(ep.module()(x), model(x), torch.float32)
    y = torch.randn(2, 3, 40, 40)
    assert_close(ep.module()(y), model(y), torch.float32)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_fx_feature_extraction(model, train):
    plain = fused_resnet.unconvert(copy.deepcopy(model))
    nodes = {"layer1": "c2", "layer3.1": "c4", "layer4": "c5"}
    fe = create_feature_extractor(model.train(train), return_nodes=nodes)
    ref = create_feature_extractor(plain.train(train), return_nodes=nodes)
    x = torch.randn(2, 3, 40, 40)
    got, want = fe(x), ref(x)
    assert got.keys() == want.keys()
    for k in want:
        assert_close(got[k], want[k], torch.float32, what=k)


def test_torchscript_names_unconvert(model):
    with pytest.raises(RuntimeError, match="unconvert"):
        torch.jit.script(model)
    with pytest.raises(RuntimeError, match="unconvert"):
        torch.jit.trace(model, torch.randn(1, 3, 32, 32))


def test_torchscript_onnx_export_names_unconvert(model):
    with pytest.raises(RuntimeError, match="unconvert"):
        torch.onnx.export(model, (torch.randn(1, 3, 32, 32),), io.BytesIO(), dynamo=False)


def test_unconverted_model_scripts(model):
    scripted = torch.jit.script(fused_resnet.unconvert(copy.deepcopy(model)))
    x = torch.randn(1, 3, 32, 32)
    assert_close(scripted(x), model(x), torch.float32)
