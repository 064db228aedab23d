"""A short training run of a small converted ResNet tracks the eager loss curve.

Both models start from the same weights and see the same batches; fp32 rounding makes
them drift apart slowly (training is chaotic), so the curves are compared window by
window: each 20-step mean loss of the fused model must lie within 10% + 0.02 of the eager
one, and both must have learned (final window < 70% of the first).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

import fused_resnet

pytestmark = pytest.mark.slow  # 120 training steps of two models: `make test` only

STEPS, WINDOW, BATCH = 120, 20, 16


def _data():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (512,), generator=g)
    # Learnable: each class adds its own fixed pattern to the noise.
    patterns = torch.randn(4, 3, 10, 10, generator=g) * 0.7
    images = torch.randn(512, 3, 10, 10, generator=g) + patterns[labels]
    return images, labels


def _small_resnet() -> nn.Module:
    """A narrow ResNet with both block kinds and a projection, cheap enough for CI."""
    def proj(cin, cout, stride):
        return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        BasicBlock(16, 16), Bottleneck(16, 4),
        BasicBlock(16, 24, stride=2, downsample=proj(16, 24, 2)),
        Bottleneck(24, 8, stride=2, downsample=proj(24, 32, 2)),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4))


def _train(model, images, labels):
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    losses = []
    for step in range(STEPS):
        idx = torch.arange(step * BATCH, (step + 1) * BATCH) % images.shape[0]
        loss = F.cross_entropy(model(images[idx]), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return torch.tensor(losses).view(-1, WINDOW).mean(1)


def test_loss_curve_tracks_eager():
    torch.manual_seed(0)
    eager = _small_resnet()
    fused = fused_resnet.convert(copy.deepcopy(eager))  # the default CPU backend
    images, labels = _data()
    ref = _train(eager.train(), images, labels)
    got = _train(fused.train(), images, labels)
    assert ref[-1] < 0.7 * ref[0], f"eager did not learn: {ref.tolist()}"
    assert got[-1] < 0.7 * got[0], f"fused did not learn: {got.tolist()}"
    gap = ((got - ref).abs() - (0.1 * ref + 0.02)).max().item()
    assert gap <= 0, f"fused {got.tolist()} vs eager {ref.tolist()}"
