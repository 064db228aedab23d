"""The structure profile: what each backend would launch on a GPU, traced with no GPU, and
a modeled time for it (never a measurement).

Every case is traced on meta tensors (:mod:`fused_resnet.launch_trace`): eager as the
ATen ops it dispatches, the fused providers as the launches of their backends' launch
plans plus the ATen glue around them. Each launch then gets a modeled time::

    t = max(FLOPs / peak, bytes / bandwidth) * stretch
    t = max(t, serial steps * step_s)     (reductions: their steps wait on loads)
    t = t + launch_s

with stretch = ceil(waves) / waves, waves = CTAs / (SMs * CTAs per SM), or SMs / CTAs for
a grid smaller than the GPU; CTAs per SM from the kernel's compiled registers and shared
memory (ATen launches: cuDNN and PyTorch kernels are assumed to fill the GPU). The
constants are in :data:`H100` and printed with every report.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import roofline
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from fused_resnet import FusedBasicBlock, FusedBottleneck, convert
from fused_resnet import launch_trace as lt
from fused_resnet.launch_plan import SM_LIMITS, TARGETS, Launch, Target, ctas_per_sm
from fused_resnet.triton import plans as triton_plans

from .cases import R50_CASES, Case

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROVIDERS = ("eager", "fused_triton", "fused_cuda")
MODES = ("train_fwd_bwd", "inference")
MAX_SERIAL_STEPS = 64  # budget: dependent steps of one reduction program


@dataclass(frozen=True)
class GpuModel:
    """The modeled GPU: its planning target and the constants of the time model (per-SM
    occupancy limits: launch_plan.SM_LIMITS of its arch)."""

    name: str
    target: Target
    bandwidth: float  # bytes/s
    peak_flops: dict = field(compare=False)  # dtype -> FLOP/s
    launch_s: float  # fixed cost of one launch
    step_s: float  # one dependent step of a serial loop
    sources: tuple = ()

    def constants(self, dtype: torch.dtype) -> dict:
        return {"name": self.name, "sms": self.target.sms, "arch": self.target.arch,
                "bandwidth_bytes_s": self.bandwidth, "peak_flops": self.peak_flops[dtype],
                "launch_s": self.launch_s, "serial_step_s": self.step_s,
                "per_sm": SM_LIMITS[self.target.arch], "sources": list(self.sources),
                "kind": "modeled"}

    def ctas_per_sm(self, threads: int, registers: int | None, smem_bytes: int) -> int:
        return ctas_per_sm(threads, registers, smem_bytes, self.target.arch)


H100 = GpuModel(
    "H100 SXM", TARGETS["sm90"], roofline.PEAK_BW, roofline.PEAK_FLOPS,
    launch_s=2e-6, step_s=0.5e-6,
    sources=(
        "bandwidth, peak FLOP/s: benchmarks/roofline.py (measured copy bandwidth, dense "
        "bf16 matmul rate)",
        "launch_s: gap between two dependent kernels on one stream, ~2 us (launch latency "
        "and tail)",
        "serial_step_s: one dependent global-memory round trip, ~0.5 us (~800 cycles at "
        "1.7 GHz)",
        "per SM: threads, registers (allocated per warp in units of 256), shared memory "
        "(1 KB reserved per CTA) and CTAs: CUDA occupancy rules (fused_resnet.launch_plan)"),
)


# Triton kernel name in a plan -> its kind in the ahead-of-time compile table.
_AOT_KIND = {"conv_fwd": "fwd", "conv_dgrad": "dgrad", "conv_wgrad": "wgrad"}


def triton_resources(target_name: str, dtype: str, compile_missing: bool,
                     progress: Callable[[str], None] = print) -> dict | None:
    """(kind, config) -> {"regs", "shared_bytes"} from the ahead-of-time compiles of the
    Triton kernels (``python -m fused_resnet.triton.aot``, cached under build/): the largest
    over the flag variants of each config. None when not all are cached and
    ``compile_missing`` is off (then occupancy comes from threads and the launchers'
    shared-memory estimates)."""
    try:
        from fused_resnet.triton import aot
    except ImportError:  # triton not installed
        return None
    jobs = [j for j in aot.jobs((target_name,)) if j["dtype"] == dtype]
    results = [aot._cached(j) for j in jobs]
    if not all(results):
        if not compile_missing:
            return None
        progress(f"compiling {sum(r is None for r in results)} Triton kernels for "
                 f"{target_name} {dtype} (register and shared-memory use; cached under "
                 f"{aot.CACHE_DIR})")
        # A process of its own: kernels decorated for the interpreter cannot be compiled.
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        proc = subprocess.run([sys.executable, "-m", "fused_resnet.triton.aot", "--targets",
                               target_name, "--dtypes", dtype], env=env, capture_output=True,
                              text=True, cwd=ROOT)
        if proc.returncode != 0:
            raise RuntimeError(f"the Triton kernels failed to compile:\n{proc.stderr[-3000:]}")
        results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    out: dict = {}
    for result in results:
        key = (result["kind"], result.get("config"))
        old = out.get(key, {"regs": 0, "shared_bytes": 0})
        out[key] = {"regs": max(old["regs"], result.get("reg", 0)),
                    "shared_bytes": max(old["shared_bytes"], result["shared_bytes"])}
    return out


def _triton_occupancy(resources: dict | None, gpu: GpuModel) -> Callable[[Launch], int]:
    def occupancy(launch: Launch) -> int:
        kind = _AOT_KIND.get(launch.kernel, launch.kernel)
        res = (resources or {}).get((kind, str(launch.config) if launch.config else None))
        regs = res["regs"] if res else None
        smem = max(res["shared_bytes"] if res else 0, launch.smem_bytes)
        return gpu.ctas_per_sm(32 * launch.num_warps, regs, smem)
    return occupancy


def _cuda_planner(gpu: GpuModel, progress: Callable[[str], None]):
    """(op_plan, occupancy) of the cuda backend, or the reason there is none. Occupancy
    from ptxas (needs nvcc); without it, from threads alone."""
    try:
        from fused_resnet import cuda_plans
    except ImportError as e:
        return f"the cuda backend's launch plans are not available ({e})"
    try:
        resources = cuda_plans.kernel_resources(gpu.target.arch)
    except Exception as e:  # noqa: BLE001 - no nvcc here: say so in the report
        resources = None
        progress(f"fused_cuda occupancy from threads only: no ptxas resources ({e})")

    def occupancy(launch: Launch) -> int:
        if resources is None:
            return gpu.ctas_per_sm(32 * launch.num_warps, None, launch.smem_bytes)
        return cuda_plans.ctas_per_sm(launch, resources, gpu.target)
    return cuda_plans.op_plan, occupancy


# --------------------------------------------------------------------------- tracing
_GEMM = re.compile(r"conv_(fwd|dgrad|wgrad)(_(tc|simt)\w*)?(\.\w+)?$")


def _is_gemm(t: lt.TracedLaunch) -> bool:
    """A conv GEMM (Triton ``conv_fwd``, CUDA ``conv_fwd_tc.bf16``, ...; not their merges and
    reductions): its K loop is software-pipelined (loads of later steps overlap the MMAs of
    earlier ones), so its length is throughput, not latency."""
    return not t.is_aten and _GEMM.match(t.launch.kernel) is not None


@dataclass
class Profile:
    """One (case, provider, mode): its trace and the modeled figures."""

    trace: lt.Trace
    occupancy: Callable[[Launch], int] | None
    flops_needed: int
    floor_bytes: int
    dtype: torch.dtype
    gpu: GpuModel
    weight: int = 1

    def waves(self, t: lt.TracedLaunch) -> float | None:
        if t.is_aten or not self.occupancy:
            return None
        per_sm = self.occupancy(t.launch)
        if per_sm == 0:
            return math.inf  # does not fit on an SM at all
        return t.launch.programs / (self.gpu.target.sms * per_sm)

    def work_s(self, t: lt.TracedLaunch) -> float:
        return max(t.launch.flops / self.gpu.peak_flops[self.dtype],
                   t.launch.bytes / self.gpu.bandwidth)

    def stretch(self, t: lt.TracedLaunch) -> float:
        """How much longer than at full machine: a grid on fewer CTAs than SMs runs on
        that share of the SMs; a larger one pays for its last, partial wave."""
        waves = self.waves(t)
        if waves is None:
            return 1.0
        if math.isinf(waves):
            return math.inf
        if t.launch.programs < self.gpu.target.sms:
            return self.gpu.target.sms / max(t.launch.programs, 1)
        return math.ceil(waves) / waves

    def modeled_s(self, t: lt.TracedLaunch) -> float:
        s = self.work_s(t) * self.stretch(t)
        if not _is_gemm(t):  # a reduction's steps wait on each other's loads
            s = max(s, t.launch.serial_steps * self.gpu.step_s)
        return s + self.gpu.launch_s

    def under_2_waves(self) -> list[lt.TracedLaunch]:
        """Launches over 1 us of work at full machine that make fewer than two waves."""
        return [t for t in self.trace if (w := self.waves(t)) is not None and w < 2
                and self.work_s(t) > 1e-6]

    def serial_violations(self) -> list[lt.TracedLaunch]:
        """Reduction and elementwise launches walking more than MAX_SERIAL_STEPS steps (a
        GEMM's K loop is pipelined: its steps overlap loads with MMAs)."""
        return [t for t in self.trace if not t.is_aten and not _is_gemm(t)
                and t.launch.serial_steps > MAX_SERIAL_STEPS]

    def summary(self) -> dict:
        floor_s = max(self.flops_needed / self.gpu.peak_flops[self.dtype],
                      self.floor_bytes / self.gpu.bandwidth)
        w = self.weight
        return {"launches": w * len(self.trace), "bytes": w * self.trace.bytes,
                "flops": w * self.trace.flops, "flops_needed": w * self.flops_needed,
                "floor_bytes": w * self.floor_bytes,
                "max_serial_steps": max((t.launch.serial_steps for t in self.trace), default=0),
                "launches_under_2_waves": w * len(self.under_2_waves()),
                "modeled_ms": w * 1e3 * sum(map(self.modeled_s, self.trace)),
                "floor_ms": w * 1e3 * floor_s}


def _meta(*size: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(size, device="meta", dtype=dtype).contiguous(
        memory_format=torch.channels_last)


def _run(model: nn.Module, x: torch.Tensor, train: bool, recorder: lt.LaunchRecorder,
         step: Callable | None = None) -> None:
    model.train(train)
    if train:
        with recorder:
            out = (step or model)(x.requires_grad_(step is None))
            out.backward(torch.empty_like(out))
        return
    with torch.no_grad():
        (step or model)(x)  # steady state: what a first call derives and caches is not traced
        with recorder:
            (step or model)(x)


def _block(case: Case, bottleneck: type, basic: type, **kwargs) -> nn.Module:
    """The block of ``case`` as class ``bottleneck`` or ``basic`` (torchvision's or the
    fused twins), with its projection shortcut."""
    cls = bottleneck if case.kind == "bottleneck" else basic
    out_c = case.planes * cls.expansion
    ds = nn.Sequential(nn.Conv2d(case.inplanes, out_c, 1, case.stride, bias=False),
                       nn.BatchNorm2d(out_c)) if case.proj else None
    return cls(case.inplanes, case.planes, case.stride, ds, **kwargs)


class Tracer:
    """Traces cases for one GPU model and dtype; holds each provider's planner."""

    def __init__(self, gpu: GpuModel = H100, dtype: torch.dtype = torch.bfloat16,
                 batch: int = 128, compile_resources: bool = False,
                 progress: Callable[[str], None] = print):
        self.gpu, self.dtype, self.batch = gpu, dtype, batch
        dname = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]
        resources = triton_resources(gpu.target.name, dname, compile_resources, progress)
        self.resources_note = ("Triton occupancy from compiled registers and shared memory"
                               if resources else "Triton occupancy from threads and the "
                               "launchers' shared-memory estimates (no compiled kernels "
                               "cached: run with --compile-resources)")
        self.planners: dict[str, tuple | str] = {
            "fused_triton": (triton_plans.op_plan, _triton_occupancy(resources, gpu)),
            "fused_cuda": _cuda_planner(gpu, progress)}

    def unavailable(self, provider: str) -> str | None:
        planner = self.planners.get(provider)
        return planner if isinstance(planner, str) else None

    def _trace(self, provider: str, eager: nn.Module, fused: Callable[[], nn.Module],
               x: torch.Tensor, train: bool, step=None) -> tuple[lt.Trace, Callable | None]:
        recorder = lt.LaunchRecorder()
        if provider == "eager":
            _run(eager.to(self.dtype, memory_format=torch.channels_last), x, train, recorder,
                 step and step(eager))
            return recorder.trace, None
        op_plan, occupancy = self.planners[provider]
        model = fused().to(self.dtype, memory_format=torch.channels_last)
        backend = lt.planning_backend(provider.removeprefix("fused_"), op_plan,
                                      self.gpu.target, recorder)
        with lt.planned(model, backend):
            _run(model, x, train, recorder, step and step(model))
        return recorder.trace, occupancy

    def block(self, case: Case, provider: str, mode: str) -> Profile:
        es = torch.tensor([], dtype=self.dtype).element_size()
        with torch.device("meta"):
            eager = _block(case, Bottleneck, BasicBlock)
            x = _meta(self.batch, case.inplanes, case.hw, case.hw, dtype=self.dtype)
            fused = functools.partial(_block, case, FusedBottleneck, FusedBasicBlock,
                                      backend="reference")
            trace, occupancy = self._trace(provider, eager, fused, x, mode != "inference")
        chain, proj = roofline.block_convs(case.kind, case.inplanes, case.planes, case.stride,
                                           case.hw, case.proj)
        flops, nbytes = roofline.block_model(chain, proj, self.batch, es, mode)
        return Profile(trace, occupancy, flops, nbytes, self.dtype, self.gpu)

    def network(self, part: str, provider: str, mode: str) -> Profile:
        """``part``: ``"stem"`` (conv1, bn1, relu, maxpool) or ``"resnet50"`` (a whole step)."""
        es = torch.tensor([], dtype=self.dtype).element_size()
        with torch.device("meta"):
            eager = torchvision.models.resnet50()

            def fused():
                return convert(torchvision.models.resnet50(), backend="reference")

            x = _meta(self.batch, 3, 224, 224, dtype=self.dtype)
            step = None
            if part == "stem":
                def step(m):
                    return lambda inp: m.maxpool(m.relu(m.bn1(m.conv1(inp))))
            trace, occupancy = self._trace(provider, eager, fused, x, mode != "inference", step)
        flops, nbytes = roofline.stem_model(self.batch, es, mode)
        if part == "resnet50":
            for case in R50_CASES:
                chain, proj = roofline.block_convs(case.kind, case.inplanes, case.planes,
                                                   case.stride, case.hw, case.proj)
                f, b = roofline.block_model(chain, proj, self.batch, es, mode)
                flops, nbytes = flops + case.weight * f, nbytes + case.weight * b
        return Profile(trace, occupancy, flops, nbytes, self.dtype, self.gpu)


# ---------------------------------------------------------------------------- the run
def profile_all(tracer: Tracer, providers=PROVIDERS, modes=MODES, network: bool = True,
                progress: Callable[[str], None] = print) -> dict:
    """{mode: {case: {provider: Profile}}} for the ResNet-50 bottlenecks, the stem and
    (``network``) the whole ResNet-50, plus the weighted 16-block totals."""
    out: dict = {}
    for mode in modes:
        cases: dict = {}
        for case in R50_CASES:
            cases[case.name] = {p: tracer.block(case, p, mode) for p in providers}
        cases["stem"] = {p: tracer.network("stem", p, mode) for p in providers}
        if network:
            cases["resnet50_step"] = {p: tracer.network("resnet50", p, mode)
                                      for p in providers}
        progress(f"traced {mode}: {len(cases)} cases x {len(providers)} providers")
        out[mode] = cases
    return out


def sixteen_blocks(cases: dict, provider: str) -> dict:
    """The weighted sum of the eight bottleneck cases (the 16 blocks of ResNet-50)."""
    total: dict = {}
    for case in R50_CASES:
        s = cases[case.name][provider].summary()
        for k, v in s.items():
            total[k] = (max(total.get(k, 0), v) if k == "max_serial_steps"
                        else total.get(k, 0) + case.weight * v)
    return total


def summaries(profiles: dict, providers) -> dict:
    """{mode: {case: {provider: summary}}} with the ``r50_16_blocks`` total."""
    out = {}
    for mode, cases in profiles.items():
        table = {name: {p: prof.summary() for p, prof in row.items()}
                 for name, row in cases.items()}
        table["r50_16_blocks"] = {p: sixteen_blocks(cases, p) for p in providers}
        out[mode] = table
    return out


def worst_launches(profiles: dict, provider: str, n: int = 3) -> list[dict]:
    """The ``n`` launches of ``provider`` with the most modeled time over their roofline
    share (modeled - work), across every case of every mode."""
    rows = []
    for mode, cases in profiles.items():
        for name, row in cases.items():
            if name == "resnet50_step" or provider not in row:
                continue
            prof = row[provider]
            for t in prof.trace:
                waves = prof.waves(t)
                rows.append({"mode": mode, "case": name, "op": t.op, "kernel": t.launch.kernel,
                             "grid": list(t.launch.grid), "config": str(t.launch.config),
                             "waves": waves, "serial_steps": t.launch.serial_steps,
                             "modeled_us": 1e6 * prof.modeled_s(t),
                             "excess_us": 1e6 * (prof.modeled_s(t) - prof.work_s(t))})
    return sorted(rows, key=lambda r: -r["excess_us"])[:n]


def to_json(tracer: Tracer, profiles: dict, providers) -> dict:
    table = summaries(profiles, providers)
    return {"target": {**tracer.gpu.constants(tracer.dtype), "batch": tracer.batch,
                       "dtype": str(tracer.dtype).removeprefix("torch."),
                       "memory_format": "channels_last", "occupancy": tracer.resources_note},
            "mode": "train_fwd_bwd",
            "cases": table.get("train_fwd_bwd", {}),
            "inference_cases": table.get("inference", {}),
            "worst_launches": {p: worst_launches(profiles, p) for p in providers
                               if p != "eager"}}

