"""What is benchmarked: the ResNet-50 bottlenecks, the ResNet-18/34 basic blocks, the whole
ResNet-50, each built in float32 on the CPU as the master copy of its weights."""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from fused_resnet.testing import randomize_bn


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # "bottleneck" or "basic"
    inplanes: int
    planes: int
    stride: int
    proj: bool
    hw: int  # input height = width at 224x224 images
    weight: int  # how often ResNet-50 has this block (0: not in the 16-block summary)


R50_CASES = (
    Case("r50_conv2_first", "bottleneck", 64, 64, 1, True, 56, 1),
    Case("r50_conv2_rep", "bottleneck", 256, 64, 1, False, 56, 2),
    Case("r50_conv3_first", "bottleneck", 256, 128, 2, True, 56, 1),
    Case("r50_conv3_rep", "bottleneck", 512, 128, 1, False, 28, 3),
    Case("r50_conv4_first", "bottleneck", 512, 256, 2, True, 28, 1),
    Case("r50_conv4_rep", "bottleneck", 1024, 256, 1, False, 14, 5),
    Case("r50_conv5_first", "bottleneck", 1024, 512, 2, True, 14, 1),
    Case("r50_conv5_rep", "bottleneck", 2048, 512, 1, False, 7, 2),
)
BASIC_CASES = (
    Case("basic_conv2", "basic", 64, 64, 1, False, 56, 0),
    Case("basic_conv3_first", "basic", 64, 128, 2, True, 56, 0),
    Case("basic_conv3_rep", "basic", 128, 128, 1, False, 28, 0),
    Case("basic_conv4_first", "basic", 128, 256, 2, True, 28, 0),
    Case("basic_conv4_rep", "basic", 256, 256, 1, False, 14, 0),
    Case("basic_conv5_first", "basic", 256, 512, 2, True, 14, 0),
    Case("basic_conv5_rep", "basic", 512, 512, 1, False, 7, 0),
)
ALL_CASES = {c.name: c for c in R50_CASES + BASIC_CASES}
GROUPS = {"r50": R50_CASES, "basic": BASIC_CASES, "all": R50_CASES + BASIC_CASES, "none": ()}
MODES = ("inference", "train_fwd", "train_fwd_bwd")
QUICK_CPU_CASES = ("r50_conv3_first", "r50_conv5_rep", "basic_conv4_first")


def scaled(hw: int, div: int) -> int:
    return max(1, math.ceil(hw / div))


def seed_for(name: str) -> int:
    return zlib.crc32(name.encode())


def make_block(case: Case) -> nn.Module:
    """The torchvision block of ``case`` in float32 on the CPU: the master copy of weights."""
    torch.manual_seed(seed_for(case.name))
    cls = Bottleneck if case.kind == "bottleneck" else BasicBlock
    out_c = case.planes * cls.expansion
    ds = nn.Sequential(nn.Conv2d(case.inplanes, out_c, 1, case.stride, bias=False),
                       nn.BatchNorm2d(out_c)) if case.proj else None
    block = cls(case.inplanes, case.planes, case.stride, ds)
    randomize_bn(block)
    return block


def make_network(image: int) -> nn.Module:
    """Random-weight ResNet-50 (never downloads) with running stats calibrated on noise.

    Random running stats would let activations grow block after block (fp16 overflows);
    one cumulative training pass makes them match the data as a trained model's do.
    """
    torch.manual_seed(seed_for("resnet50"))
    net = torchvision.models.resnet50(weights=None)
    randomize_bn(net)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.momentum = None  # cumulative average: one pass replaces the running stats
        bn.num_batches_tracked.zero_()
    net.train()
    with torch.no_grad():
        net(torch.randn(4, 3, image, image))
    for bn in bns:
        bn.momentum = 0.1
    return net
