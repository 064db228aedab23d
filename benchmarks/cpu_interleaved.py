#!/usr/bin/env python3
"""Providers of one CPU workload timed interleaved (ABAB), as ratios to eager.

The workload: ResNet-50's 16 bottlenecks (layer1..layer4 at 224x224 sizes, input
N x 64 x 56 x 56) or the whole ResNet-50, float32, channels_last. Every provider is first
checked against the float64 torchvision model by the tolerance table; then each round times
one block of calls of every provider in turn, and the ratios are medians over rounds, so a
shared machine's changing load falls on all providers alike. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import torch
import torchvision
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))  # run from a checkout (an in-place build works too)

from harness.timing import round_ratios, time_interleaved  # noqa: E402

import fused_resnet  # noqa: E402
from fused_resnet.testing import randomize_bn, rel_err, tolerance  # noqa: E402

CL = torch.channels_last
PROVIDERS = ("eager", "fused_cpp", "fused_auto", "compile_freezing")  # eager first: the gate


def workload(name: str) -> tuple[nn.Module, list[int]]:
    torch.manual_seed(0)
    net = torchvision.models.resnet50()
    randomize_bn(net)
    if name == "resnet50":
        return net, [3, 224, 224]
    return nn.Sequential(net.layer1, net.layer2, net.layer3, net.layer4), [64, 56, 56]


def build(provider: str, master: nn.Module, training: bool) -> nn.Module:
    m = copy.deepcopy(master).to(memory_format=CL).train(training)
    if provider.startswith("fused_"):
        m = fused_resnet.convert(m, backend=provider[len("fused_"):])
    elif provider == "compile_freezing":
        torch._dynamo.reset()
        m = torch.compile(m, options={"freezing": True}, dynamic=False)
    return m


def step_of(module: nn.Module, x: torch.Tensor, training: bool):
    if not training:
        def step():
            with torch.no_grad():
                return module(x)
        return step
    params = list(module.parameters())

    def step():
        module(x).sum().backward()
        for p in params:
            p.grad = None
    return step


def check(provider: str, module: nn.Module, master: nn.Module, x: torch.Tensor,
          training: bool, eager_err: float | None) -> float:
    """Relative error of the output against the float64 model (training: a copy, as the
    running statistics move); allowed: the tolerance table's, or 2x eager's error."""
    ref = copy.deepcopy(master).double().train(training)
    with torch.no_grad():
        want = ref(x.double())
        got = copy.deepcopy(module)(x) if training else module(x)
    err = rel_err(got, want)
    tol = tolerance(torch.float32, eager_err)
    if eager_err is not None and err > tol:
        raise SystemExit(f"{provider}: relative error {err:.2e} > {tol:.1e}")
    return err


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workload", choices=("bottlenecks", "resnet50"), default="bottlenecks")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--mode", choices=("inference", "train"), default="inference")
    p.add_argument("--providers", default=",".join(PROVIDERS))
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    training = args.mode == "train"
    providers = [q for q in args.providers.split(",")
                 if not (training and q == "compile_freezing")]
    master, shape = workload(args.workload)
    x = torch.randn(args.batch, *shape).contiguous(memory_format=CL)
    steps, errs = {}, {}
    for q in providers:
        t0 = time.monotonic()
        module = build(q, master, training)
        steps[q] = step_of(module, x, training)
        steps[q]()  # compiles / prepacks here, not in the timed rounds
        errs[q] = check(q, module, master, x, training, errs.get("eager"))
        print(f"# {q}: ready in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    times = time_interleaved(steps, args.rounds)
    vs_eager = round_ratios(times, "eager")
    anchor = "compile_freezing" if "compile_freezing" in times else None
    vs_anchor = round_ratios(times, anchor) if anchor else {}
    print(f"{args.workload} {args.mode} batch {args.batch} threads {args.threads} "
          f"rounds {args.rounds}")
    for q in providers:
        med = sorted(times[q])[len(times[q]) // 2]
        extra = f"  vs compile_freezing {vs_anchor[q]:.2f}x" if anchor else ""
        print(f"  {q:<17} {med:9.2f} ms  vs eager {vs_eager[q]:.2f}x{extra}  "
              f"err {errs[q]:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
