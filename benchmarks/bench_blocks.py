#!/usr/bin/env python3
"""Benchmark fused ResNet blocks against eager PyTorch and torch.compile.

Cases: the ResNet-50 bottlenecks of each stage (first block with stride and projection,
and a repeating block, weighted 1+2, 1+3, 1+5, 1+2 so the 16-block total is real), the
ResNet-18/34 basic blocks, and the whole ResNet-50 (images/s). Every provider is first
checked against a float64 reference (the torchvision block on the CPU); a provider that
fails the check is reported as failed and not timed. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import copy
import csv
import datetime
import itertools
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(1, ROOT)  # run from a checkout without installing (an in-place build works too)
import roofline  # noqa: E402

try:
    import fused_resnet
    FUSED_IMPORT_ERROR = None
except Exception as e:  # noqa: BLE001 - any import failure just skips the fused providers
    fused_resnet = None
    FUSED_IMPORT_ERROR = f"import fused_resnet failed: {type(e).__name__}: {e}"

PROVIDERS = ("eager", "compile", "fused_cuda", "fused_triton", "fused_cpp", "fused_reference")
SUMMARY_PROVIDERS = ("eager", "compile", "fused_cuda", "fused_triton", "fused_cpp")
MODES = ("inference", "train_fwd", "train_fwd_bwd")
DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
          "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}
TF32_TOL = 5e-3


class Skipped(Exception):
    """A provider that cannot run here; the message says why."""


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
QUICK_CPU_CASES = ("r50_conv3_first", "r50_conv5_rep", "basic_conv4_first")


# ----------------------------------------------------------------------------- set-up
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument("--dtype", help="bf16 | fp16 | fp32 (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--batch", type=int, help="batch size (default: 128 on CUDA, 2 on CPU)")
    p.add_argument("--hw-div", type=int,
                   help="divide every spatial size by this, rounding up (default: 1; 4 with "
                        "--quick on CPU)")
    p.add_argument("--providers", help=f"comma list from {','.join(PROVIDERS)} (default: "
                   "eager,compile + the fused providers of the device)")
    p.add_argument("--modes", help=f"comma list from {','.join(MODES)} (default: all; "
                   "inference,train_fwd_bwd with --quick)")
    p.add_argument("--cases", help="comma list of case names or groups r50, basic, all, none "
                   f"(default: all; with --quick on CPU: {','.join(QUICK_CPU_CASES)}, "
                   "on CUDA: r50)")
    p.add_argument("--no-network", action="store_true", help="skip the whole-ResNet-50 rows")
    p.add_argument("--quick", action="store_true", help="few cases, short timing")
    p.add_argument("--budget-s", type=float,
                   help="stop starting new rows after this many seconds (default: none; with "
                        "--quick 150 on CUDA, 180 on CPU); torch.compile rows run last; "
                        "SIGTERM also stops the run and still writes the outputs")
    p.add_argument("--min-time-s", type=float,
                   help="CPU: least timed seconds per row (default 0.3 with --quick, else 2)")
    p.add_argument("--threads", type=int,
                   help="CPU threads (default: torch's; 1 with --quick: on a machine shared "
                        "with a compiler, OpenMP barriers make 2 threads up to 50x slower)")
    p.add_argument("--network-gate-batch", type=int, default=16,
                   help="batch of the float64 correctness check of the whole network")
    p.add_argument("--json", help="write results as JSON here")
    p.add_argument("--csv", help="write the rows as CSV here")
    p.add_argument("--plot", help="write a PNG of speedups and roofline ratios here")
    args = p.parse_args(argv)
    return resolve_defaults(args, p)


def resolve_defaults(args: argparse.Namespace, p: argparse.ArgumentParser) -> argparse.Namespace:
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = args.device.type == "cuda"
    args.threads = args.threads or (1 if args.quick and not cuda else None)
    if args.threads:
        torch.set_num_threads(args.threads)
    if cuda and not torch.cuda.is_available():
        p.error("--device cuda but no CUDA device is available")
    if args.dtype and args.dtype not in DTYPES:
        p.error(f"--dtype must be one of {sorted(DTYPES)}")
    args.dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if cuda else torch.float32)
    args.batch = args.batch or (128 if cuda else 2)
    args.hw_div = args.hw_div or (4 if args.quick and not cuda else 1)
    default_providers = ["eager", "compile"] + (["fused_cuda", "fused_triton"] if cuda
                                                else ["fused_cpp", "fused_reference"])
    args.providers = split_list(args.providers, PROVIDERS, p, "--providers") or default_providers
    quick_modes = ["inference", "train_fwd_bwd"]
    args.modes = split_list(args.modes, MODES, p, "--modes") or (
        quick_modes if args.quick else list(MODES))
    args.cases = resolve_cases(args.cases, args.quick, cuda, p)
    if args.budget_s is None and args.quick:
        args.budget_s = 150.0 if cuda else 180.0
    args.min_time_s = args.min_time_s or (0.3 if args.quick else 2.0)
    args.compile_mode = "default" if args.quick else "max-autotune-no-cudagraphs"
    return args


def split_list(text: str | None, allowed, p, flag) -> list[str]:
    items = [s.strip() for s in (text or "").split(",") if s.strip()]
    bad = [s for s in items if s not in allowed]
    if bad:
        p.error(f"{flag}: unknown {bad}; choose from {list(allowed)}")
    return items


def resolve_cases(text: str | None, quick: bool, cuda: bool, p) -> list[Case]:
    if not text:
        text = "r50" if quick and cuda else ",".join(QUICK_CPU_CASES) if quick else "all"
    groups = {"r50": R50_CASES, "basic": BASIC_CASES, "all": R50_CASES + BASIC_CASES,
              "none": ()}
    out: list[Case] = []
    for name in (s.strip() for s in text.split(",") if s.strip()):
        if name not in groups and name not in ALL_CASES:
            p.error(f"--cases: unknown {name!r}; choose from {list(groups) + list(ALL_CASES)}")
        out += [c for c in groups.get(name, (ALL_CASES.get(name),)) if c not in out]
    return out


def scaled(hw: int, div: int) -> int:
    return max(1, math.ceil(hw / div))


# ----------------------------------------------------------------------------- modules
def randomize_bn(model: nn.Module, running: bool = True) -> None:
    """Non-trivial BN affine (and running stats) so folding and shifts are exercised."""
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.5, 0.5)
                if running:
                    bn.running_mean.normal_(0.0, 0.5)
                    bn.running_var.uniform_(0.5, 2.0)


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
    randomize_bn(net, running=False)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.momentum = None  # cumulative average: one pass sets the stats
    net.train()
    with torch.no_grad():
        net(torch.randn(4, 3, image, image))
    for bn in bns:
        bn.momentum = 0.1
    return net


def fused_reason(backend: str, device: torch.device, dtype: torch.dtype) -> str | None:
    if fused_resnet is None:
        return FUSED_IMPORT_ERROR
    try:
        return fused_resnet.backend_status(device, dtype).get(backend, f"unknown backend {backend}")
    except Exception as e:  # noqa: BLE001 - an API still in flux: report, do not crash
        return f"backend_status failed: {e}"


def fused_twin(master: nn.Module, backend: str, case: Case | None) -> nn.Module:
    """The fused module holding ``master``'s weights (same state_dict keys)."""
    if case is None:
        fused = fused_resnet.resnet50(backend=backend)
    else:
        cls = (fused_resnet.FusedBottleneck if case.kind == "bottleneck"
               else fused_resnet.FusedBasicBlock)
        fused = cls(case.inplanes, case.planes, case.stride, copy.deepcopy(master.downsample),
                    backend=backend)
    fused.load_state_dict(master.state_dict())
    return fused


def build(provider: str, master: nn.Module, case: Case | None, args, training: bool) -> nn.Module:
    """``provider``'s module on the device, in the dtype, channels_last."""
    if provider.startswith("fused_"):
        backend = provider[len("fused_"):]
        reason = fused_reason(backend, args.device, args.dtype)
        if reason:
            raise Skipped(reason)
        module = fused_twin(master, backend, case)
    else:
        module = copy.deepcopy(master)
    module = module.to(device=args.device, dtype=args.dtype, memory_format=torch.channels_last)
    module.train(training)
    if provider == "compile":
        torch._dynamo.reset()  # a fresh cache per module: no recompile limit, no stale graphs
        module = torch.compile(module, mode=args.compile_mode, dynamic=False)
    return module


def params_of(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return list(getattr(module, "_orig_mod", module).named_parameters())


# ----------------------------------------------------------------------------- correctness
def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; a NaN or inf in ``out`` is an infinite error."""
    out = out.detach().to("cpu", torch.float64)
    if not torch.isfinite(out).all():
        return math.inf
    den = torch.linalg.vector_norm(ref).item()
    num = torch.linalg.vector_norm(out - ref).item()
    return num / den if den > 0 else num


def block_outputs(module: nn.Module, x: torch.Tensor, g: torch.Tensor, mode: str) -> dict:
    """What the gate compares: output; in training also input and parameter gradients."""
    if mode == "inference":
        with torch.no_grad():
            return {"out": module(x)}
    x = x.detach().requires_grad_()
    out = module(x)
    if mode == "train_fwd":
        return {"out": out}
    out.backward(g)
    res = {"out": out, "grad.x": x.grad}
    res.update({f"grad.{n}": p.grad for n, p in params_of(module)})
    return res


def network_outputs(module: nn.Module, x: torch.Tensor, g: torch.Tensor, mode: str) -> dict:
    """As for a block, but parameter gradients as one vector: a single BN weight's gradient
    deep in a 50-layer net is ill-conditioned even for plain PyTorch (3 % error in fp32 at
    batch 2), while the whole gradient is not."""
    res = block_outputs(module, x, g, "train_fwd_bwd" if mode == "train_step" else mode)
    grads = [res.pop(k) for k in [k for k in res if k.startswith("grad.") and k != "grad.x"]]
    if grads:
        res["grad.params"] = (None if any(t is None for t in grads) else
                              torch.cat([t.detach().double().cpu().flatten() for t in grads]))
    return res


def compare(got: dict, ref: dict) -> tuple[float, str]:
    """Largest relative error over the compared tensors, and which one it was."""
    errs = {k: (rel_err(got[k], ref[k]) if got.get(k) is not None else math.inf) for k in ref}
    worst = max(errs, key=errs.get)
    return errs[worst], worst


def tolerance(dtype: torch.dtype, device: torch.device, eager_err: float | None) -> float:
    """DESIGN.md §5; ``eager_err`` (plain PyTorch's error, given for fp16/bf16 and for the
    whole network, whose 50 layers compound rounding) relaxes it to 2x that error."""
    tol = TOL[dtype]
    if dtype == torch.float32 and device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        tol = TF32_TOL
    return tol if eager_err is None else max(tol, 2 * eager_err)


# ----------------------------------------------------------------------------- timing
def time_ms(step, device: torch.device, quick: bool,
            min_time_s: float) -> tuple[float, float, float]:
    """(median, p20, p80) of one call, in ms."""
    if device.type == "cuda":
        return time_cuda(step, quick)
    from torch.utils import benchmark
    step()  # warm-up (first calls allocate, compile, pick algorithms)
    timer = benchmark.Timer(stmt="step()", globals={"step": step},
                            num_threads=torch.get_num_threads())
    once = timer.timeit(1).mean
    number = max(1, int(0.02 / max(once, 1e-6)))  # blocks of ~20 ms: timer resolution is moot
    blocks, times = (7 if quick else 15), []
    while len(times) < blocks or sum(times) * number < min_time_s:
        times.append(timer.timeit(number).mean)
    t = np.array(times) * 1e3
    return float(np.median(t)), float(np.percentile(t, 20)), float(np.percentile(t, 80))


def time_cuda(step, quick: bool) -> tuple[float, float, float]:
    warmup, rep, least = (10, 60, 5) if quick else (25, 300, 20)
    times = cuda_event_times(step, 3)  # warm-up and estimate
    rep = max(rep, least * float(np.median(times)))  # slow steps still get `least` samples
    try:
        from triton.testing import do_bench
    except ImportError:
        do_bench = None
    if do_bench is not None:  # flushes L2 before each call, CUDA events around it
        q = do_bench(step, warmup=warmup, rep=rep, quantiles=[0.5, 0.2, 0.8])
        return float(q[0]), float(q[1]), float(q[2])
    t = np.array(cuda_event_times(step, max(least, int(rep / max(np.median(times), 1e-3)))))
    return float(np.median(t)), float(np.percentile(t, 20)), float(np.percentile(t, 80))


def cuda_event_times(step, n: int) -> list[float]:
    """Milliseconds of each of ``n`` calls, by CUDA events."""
    times = []
    for _ in range(n):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        step()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return times


def peak_mem_mb(step, device: torch.device) -> float | None:
    """Memory one call needs on top of what is allocated before it (inputs, weights)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def n_buffers(nbytes: int, device: torch.device) -> int:
    """Input buffers to cycle through so the timed calls do not find their input in cache."""
    cache = (torch.cuda.get_device_properties(device).L2_cache_size
             if device.type == "cuda" else 32 * 2**20)
    return int(min(8, max(2, math.ceil(4 * cache / max(nbytes, 1)))))


def block_step(module: nn.Module, xs: list, gs: list, mode: str):
    """One timed call; each call takes the next input buffer."""
    order = itertools.cycle(range(len(xs)))
    params = [p for _, p in params_of(module)]
    if mode == "inference":
        def step():
            with torch.no_grad():
                return module(xs[next(order)])
    elif mode == "train_fwd":
        def step():
            return module(xs[next(order)])
    else:
        def step():
            i = next(order)
            module(xs[i]).backward(gs[i])
            for t in params + [xs[i]]:
                t.grad = None  # fresh gradients each call, as with zero_grad(set_to_none)
    return step


def network_step(module: nn.Module, xs: list, labels: torch.Tensor, mode: str):
    order = itertools.cycle(range(len(xs)))
    if mode == "inference":
        def step():
            with torch.no_grad():
                return module(xs[next(order)])
        return step
    opt = torch.optim.SGD(module.parameters(), lr=1e-4, momentum=0.9)

    def step():
        loss = F.cross_entropy(module(xs[next(order)]).float(), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


# ----------------------------------------------------------------------------- the runs
class Workload:
    """Inputs, master weights and float64 references of one case (or of the network)."""

    def __init__(self, case: Case | None, args):
        self.case, self.args = case, args
        self.name = case.name if case else "resnet50"
        self.refs: dict[str, dict] = {}
        self.eager_err: dict[str, float] = {}
        gen = torch.Generator().manual_seed(seed_for(self.name) + 1)
        if case:
            self.master = make_block(case)
            hw = scaled(case.hw, args.hw_div)
            chain, _ = roofline.block_convs(case.kind, case.inplanes, case.planes, case.stride,
                                            hw, case.proj)
            self.out_shape = (args.batch, chain[-1].cout, chain[-1].hout, chain[-1].hout)
            self.in_shape = (args.batch, case.inplanes, hw, hw)
        else:
            image = scaled(224, args.hw_div)
            self.master = make_network(image)
            self.in_shape = (args.batch, 3, image, image)
            self.out_shape = (args.batch, 1000)
        elem = torch.tensor([], dtype=args.dtype).element_size()
        k = n_buffers(math.prod(self.in_shape) * elem, args.device)
        # A block sits inside a network: training computes its input gradient too.
        self.xs = [self._rand(self.in_shape, gen).requires_grad_(case is not None)
                   for _ in range(k)]
        self.gs = [self._rand(self.out_shape, gen) for _ in range(k)]
        self.labels = torch.randint(0, 1000, (args.batch,), generator=gen).to(args.device)

    def _rand(self, shape, gen) -> torch.Tensor:
        t = torch.randn(shape, generator=gen).to(self.args.dtype)
        return t.to(self.args.device, memory_format=torch.channels_last if len(shape) == 4
                    else torch.contiguous_format)

    def gate_inputs(self, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Blocks: the first timing buffer. Network in training: a smaller batch (the float64
        reference of a whole ResNet-50 at batch 128 takes minutes); in inference the rows
        are independent, so the full batch runs and its first rows are compared."""
        x, g = self.xs[0], self.gs[0]
        if self.case is None and mode != "inference":
            n = min(self.args.batch, self.args.network_gate_batch)
            x, g = x[:n].contiguous(memory_format=torch.channels_last), g[:n]
        return x, g

    def reference(self, mode: str) -> dict:
        """float64 CPU outputs of the torchvision module with the dtype-rounded weights."""
        key = "inference" if mode == "inference" else "train"
        if key not in self.refs:
            ref_mode = mode if mode == "inference" else (
                "train_step" if self.case is None else "train_fwd_bwd")
            x, g = self.gate_inputs(mode)
            if self.case is None and mode == "inference":
                x = x[: self.args.network_gate_batch]
            module = copy.deepcopy(self.master).to(self.args.dtype).double().train(key == "train")
            outs = (network_outputs if self.case is None else block_outputs)(
                module, x.detach().to("cpu", torch.float64).contiguous(),
                g.to("cpu", torch.float64), ref_mode)
            self.refs[key] = {k: v.detach() for k, v in outs.items()}
        ref = self.refs[key]
        return {"out": ref["out"]} if mode == "train_fwd" else ref

    def check(self, module: nn.Module, mode: str) -> tuple[float, str]:
        x, g = self.gate_inputs(mode)
        fn = network_outputs if self.case is None else block_outputs
        got = fn(module, x, g, mode)
        ref = self.reference(mode)
        if "out" in got and got["out"].shape[0] > ref["out"].shape[0]:
            got["out"] = got["out"][: ref["out"].shape[0]]
        return compare(got, ref)

    def eager_error(self, mode: str) -> float:
        """Error of plain PyTorch in this dtype: the yardstick of the fp16/bf16 tolerance."""
        if mode not in self.eager_err:
            module = build("eager", self.master, self.case, self.args, mode != "inference")
            self.eager_err[mode] = self.check(module, mode)[0]
        return self.eager_err[mode]


def new_row(w: Workload | None, provider: str, mode: str, case: Case | None = None) -> dict:
    name = w.name if w else case.name if case else "resnet50"
    return {"case": name, "provider": provider, "mode": mode, "status": None, "reason": None,
            "median_ms": None, "p20_ms": None, "p80_ms": None, "tflops": None, "gbps": None,
            "floor_ms": None, "floor_ratio": None, "speedup_vs_eager": None,
            "speedup_vs_compile": None, "peak_mem_mb": None, "max_rel_err": None, "tol": None,
            "worst": None}


def block_roofline(case: Case, args, mode: str) -> tuple[int, int, float]:
    chain, proj = roofline.block_convs(case.kind, case.inplanes, case.planes, case.stride,
                                       scaled(case.hw, args.hw_div), case.proj)
    elem = torch.tensor([], dtype=args.dtype).element_size()
    flops, nbytes = roofline.block_model(chain, proj, args.batch, elem, mode)
    return flops, nbytes, roofline.floor_ms(flops, nbytes, args.dtype)


def run_row(w: Workload, provider: str, mode: str) -> dict:
    """Gate, then time, one (workload, provider, mode); never raises."""
    args, row = w.args, new_row(w, provider, mode)
    training = mode != "inference"
    try:
        module = build(provider, w.master, w.case, args, training)
        err, worst = w.check(module, mode)
        if provider == "eager":
            w.eager_err.setdefault(mode, err)
        relative = w.case is None or args.dtype in (torch.float16, torch.bfloat16)
        tol = tolerance(args.dtype, args.device, w.eager_error(mode) if relative else None)
        row.update(max_rel_err=err, tol=tol, worst=worst)
        if not err <= tol:
            hint = (f"; eager's error: {w.eager_err[mode]:.3g}"
                    if provider != "eager" and mode in w.eager_err else "")
            row.update(status="failed",
                       reason=f"max rel err {err:.3g} > tol {tol:.3g} ({worst}){hint}")
            return row
        step = (network_step(module, w.xs, w.labels, mode) if w.case is None
                else block_step(module, w.xs, w.gs, mode))
        med, p20, p80 = time_ms(step, args.device, args.quick, args.min_time_s)
        row.update(status="ok", median_ms=med, p20_ms=p20, p80_ms=p80,
                   peak_mem_mb=peak_mem_mb(step, args.device))
        if w.case is None:
            row["img_s"] = args.batch / (med / 1e3)
        else:
            flops, nbytes, floor = block_roofline(w.case, args, mode)
            row.update(tflops=flops / med / 1e9, gbps=nbytes / med / 1e6, floor_ms=floor,
                       floor_ratio=med / floor)
    except Skipped as e:
        row.update(status="skipped", reason=str(e))
    except Exception as e:  # noqa: BLE001 - a crashing provider is a failed row, not a dead run
        first_line = (str(e).splitlines() or [""])[0][:300]
        row.update(status="failed", reason=f"{type(e).__name__}: {first_line}")
    finally:
        if args.device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def plan(args) -> list[tuple[Case | None, str, str]]:
    """(case or None for the network, provider, mode); torch.compile rows last, so a time
    budget cuts the slow compiles first."""
    items = []
    for compiled in (False, True):
        provs = [p for p in args.providers if (p == "compile") == compiled]
        for mode in args.modes:
            items += [(c, p, mode) for c in args.cases for p in provs]
        if not args.no_network:
            net_modes = [m for m in ("inference", "train_step")
                         if m == "inference" and "inference" in args.modes
                         or m == "train_step" and any(x != "inference" for x in args.modes)]
            items += [(None, p, m) for m in net_modes for p in provs]
    return items


def not_in_quick(case: Case | None, provider: str, args) -> str | None:
    """Rows that --quick leaves out: compiling all of ResNet-50 takes minutes on a CPU."""
    if args.quick and case is None and provider == "compile" and args.device.type == "cpu":
        return "--quick on CPU: compiling the whole network takes minutes"
    return None


def run_all(args) -> list[dict]:
    items, rows = plan(args), []
    start, current = time.monotonic(), None
    stop = None
    for i, (case, provider, mode) in enumerate(items, 1):
        if args.budget_s is not None and time.monotonic() - start > args.budget_s:
            stop = stop or f"time budget of {args.budget_s:.0f} s used up"
        reason = stop or not_in_quick(case, provider, args)
        if reason:
            row = new_row(None, provider, mode, case)
            row.update(status="skipped", reason=reason)
        else:
            try:
                if current is None or current.case != case:
                    current = None  # free the previous workload's buffers first
                    current = Workload(case, args)
                row = run_row(current, provider, mode)
            except KeyboardInterrupt:  # Ctrl-C or SIGTERM: keep what ran, write it out
                stop = "interrupted"
                row = new_row(None, provider, mode, case)
                row.update(status="skipped", reason=stop)
        rows.append(row)
        progress(i, len(items), time.monotonic() - start, row)
    add_speedups(rows)
    return rows


def progress(i: int, n: int, elapsed: float, row: dict) -> None:
    if row["status"] == "ok":
        what = f"{row['median_ms']:.3f} ms  err {row['max_rel_err']:.1e}"
    else:
        what = f"{row['status']}: {row['reason']}"
    print(f"[{i:3d}/{n} {elapsed:6.1f}s] {row['case']:<18} {row['provider']:<15} "
          f"{row['mode']:<13} {what}", file=sys.stderr, flush=True)


def ok_times(rows: list[dict]) -> dict[tuple, float]:
    """(case, provider, mode) -> median ms of the rows that ran."""
    return {(r["case"], r["provider"], r["mode"]): r["median_ms"]
            for r in rows if r["status"] == "ok"}


def add_speedups(rows: list[dict]) -> None:
    ok = ok_times(rows)
    for r in rows:
        if r["status"] != "ok":
            continue
        for base in ("eager", "compile"):
            b = ok.get((r["case"], base, r["mode"]))
            r[f"speedup_vs_{base}"] = b / r["median_ms"] if b else None


# ----------------------------------------------------------------------------- reporting
def summarize(rows: list[dict], args) -> dict:
    """Weighted 16-block ResNet-50 totals (ms) per provider; null unless all 8 cases ran."""
    ok = ok_times(rows)
    out = {}
    for key, mode in (("inference", "inference"), ("training", "train_fwd_bwd")):
        s = {}
        for p in SUMMARY_PROVIDERS + ("fused_reference",):
            times = [ok.get((c.name, p, mode)) for c in R50_CASES]
            s[p] = (sum(c.weight * t for c, t in zip(R50_CASES, times, strict=True))
                    if all(times) else None)
        s["fused_floor"] = sum(c.weight * block_roofline(c, args, mode)[2] for c in R50_CASES)
        out[key] = s
    return out


def network_summary(rows: list[dict]) -> dict:
    net = {"inference_img_s": {}, "training_img_s": {}}
    for r in rows:
        if r["case"] == "resnet50" and r["status"] == "ok":
            key = "inference_img_s" if r["mode"] == "inference" else "training_img_s"
            net[key][r["provider"]] = r["img_s"]
    return net


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return sha or os.environ.get("FUSED_RESNET_COMMIT") or "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                         model)
    except OSError:
        pass
    return f"cpu: {model} ({os.cpu_count()} cores)"


def notes(args) -> list[str]:
    n = [roofline.PEAK_NOTE + "; FLOPs and bytes per benchmarks/roofline.py"]
    if args.device.type == "cpu":
        n.append(f"CPU run: batch {args.batch}, spatial sizes divided by {args.hw_div} "
                 f"(rounded up), dtype {dtype_name(args.dtype)} (bf16 CPU convs are slow), "
                 f"{torch.get_num_threads()} thread(s); the floor still uses the H100 figures "
                 "(a GPU yardstick, not a CPU bound)")
    if args.dtype == torch.float32 and args.device.type == "cuda":
        n.append(f"fp32 with cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}")
    n.append("peak_mem_mb: CUDA memory one call needs above what was allocated before it")
    n.append(f"compile mode: {args.compile_mode}")
    return n


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def clean(v):
    """JSON has no inf/NaN: those become null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: clean(x) for k, x in v.items()}
    if isinstance(v, list):
        return [clean(x) for x in v]
    return v


def report(rows: list[dict], args, wall_s: float) -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    skipped = {p: fused_reason(p[len("fused_"):], args.device, args.dtype)
               for p in args.providers if p.startswith("fused_")}
    return clean({
        "device": device_name(args.device), "torch": torch.__version__,
        "triton": triton_version, "cuda": torch.version.cuda, "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "dtype": dtype_name(args.dtype), "batch": args.batch,
        "summary": summarize(rows, args), "network": network_summary(rows), "rows": rows,
        "hw_div": args.hw_div, "quick": args.quick, "wall_s": wall_s,
        "providers": args.providers, "modes": args.modes,
        "unavailable": {p: r for p, r in skipped.items() if r}, "notes": notes(args),
    })


def fmt(v, spec: str) -> str:
    width = int("".join(itertools.takewhile(str.isdigit, spec)) or 0)
    return "-".rjust(width) if v is None else format(v, spec)


def print_table(res: dict) -> None:
    print(f"\n{res['device']}  torch {res['torch']}  dtype {res['dtype']}  batch {res['batch']}"
          f"  commit {res['commit'][:12]}")
    for note in res["notes"]:
        print(f"note: {note}")
    head = (f"{'case':<18} {'provider':<15} {'mode':<13} {'median':>9} {'p20':>9} {'p80':>9} "
            f"{'x eager':>7} {'x comp':>7} {'TFLOP/s':>8} {'GB/s':>7} {'floor':>8} {'/floor':>7} "
            f"{'mem MB':>8} {'rel err':>8}  status")
    print(head)
    print("-" * len(head))
    for r in res["rows"]:
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r['reason']}"
        print(f"{r['case']:<18} {r['provider']:<15} {r['mode']:<13} {fmt(r['median_ms'], '9.3f')} "
              f"{fmt(r['p20_ms'], '9.3f')} {fmt(r['p80_ms'], '9.3f')} "
              f"{fmt(r['speedup_vs_eager'], '7.2f')} {fmt(r['speedup_vs_compile'], '7.2f')} "
              f"{fmt(r['tflops'], '8.2f')} {fmt(r['gbps'], '7.1f')} {fmt(r['floor_ms'], '8.3f')} "
              f"{fmt(r['floor_ratio'], '7.1f')} {fmt(r['peak_mem_mb'], '8.1f')} "
              f"{fmt(r['max_rel_err'], '8.1e')}  {status}")
    print("\nResNet-50, 16 bottlenecks weighted (ms):")
    for key, s in res["summary"].items():
        print(f"  {key:<10} " + "  ".join(f"{p}={fmt(v, '.3f')}" for p, v in s.items()))
    for key, s in res["network"].items():
        print(f"  network {key}: " + ("  ".join(f"{p}={v:.1f}" for p, v in s.items()) or "-"))


def write_json(res: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(res, f, indent=1)


def write_csv(rows: list[dict], path: str) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def write_plot(res: dict, path: str) -> None:
    """Per-stage speedup vs eager and ratio to the roofline floor, for the ResNet-50 cases."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot skipped: matplotlib is not installed", file=sys.stderr)
        return
    modes = [m for m in MODES if any(r["mode"] == m for r in res["rows"])]
    cases = [c.name for c in R50_CASES + BASIC_CASES
             if any(r["case"] == c.name and r["status"] == "ok" for r in res["rows"])]
    fig, axes = plt.subplots(len(modes), 2, figsize=(14, 3.5 * len(modes)), squeeze=False)
    for ax_row, mode in zip(axes, modes, strict=True):
        for ax, key, title in zip(ax_row, ("speedup_vs_eager", "floor_ratio"),
                                  ("speedup vs eager", "time / roofline floor"), strict=True):
            provs = [p for p in PROVIDERS if any(r["provider"] == p and r["mode"] == mode
                                                 and r[key] for r in res["rows"])]
            width = 0.8 / max(1, len(provs))
            for j, p in enumerate(provs):
                vals = [next((r[key] for r in res["rows"] if r["case"] == c and r["provider"] == p
                              and r["mode"] == mode and r[key]), 0) for c in cases]
                ax.bar(np.arange(len(cases)) + j * width, vals, width, label=p)
            ax.axhline(1.0, color="k", lw=0.8)
            if key == "floor_ratio":
                ax.set_yscale("log")  # ratios span orders of magnitude (CPU vs H100 floor)
            ax.set_xticks(np.arange(len(cases)) + 0.4 - width / 2)
            ax.set_xticklabels(cases, rotation=30, ha="right", fontsize=7)
            ax.set_title(f"{mode}: {title}", fontsize=9)
            ax.legend(fontsize=7)
    fig.suptitle(f"{res['device']} {res['dtype']} batch {res['batch']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device.type == "cpu":
        print(f"note: CPU run at batch {args.batch}, spatial / {args.hw_div}, dtype "
              f"{dtype_name(args.dtype)}, {torch.get_num_threads()} thread(s); roofline floors "
              "use H100 figures", file=sys.stderr)
    if FUSED_IMPORT_ERROR:
        print(f"note: {FUSED_IMPORT_ERROR}; fused providers are skipped", file=sys.stderr)
    signal.signal(signal.SIGTERM, interrupt)
    start = time.monotonic()
    rows = run_all(args)
    res = report(rows, args, time.monotonic() - start)
    print_table(res)
    for path, writer in ((args.json, lambda p: write_json(res, p)),
                         (args.csv, lambda p: write_csv(res["rows"], p)),
                         (args.plot, lambda p: write_plot(res, p))):
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            writer(path)
    return 1 if any(r["status"] == "failed" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
