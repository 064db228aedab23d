"""FLOPs and minimal bytes of a fused ResNet block (docs/design.md §2), and its roofline floor.

The model counts what an ideal fused implementation must move: every kernel reads its
inputs and writes its outputs exactly once (halo re-reads, L2 reuse and per-channel
vectors such as BN parameters and statistics are ignored: < 0.1 %). Weights are read
once by each kernel that uses them (and weight gradients written once).

Kernels of one block (a chain of convs c1..cL, L = 3 for a bottleneck, 2 for a basic
block, plus an optional 1x1 projection cd on the shortcut):

inference (BN folded into each conv's epilogue):
  c_i: read a_{i-1} (x for c1), write a_i; cL also reads the shortcut s (x or yd) and
  writes out; cd: read x, write yd.                                   3 or 4 kernels
training forward (statistics in conv epilogues, BN+ReLU in the next conv's prologue):
  c_i: read y_{i-1} (x for c1), write raw y_i; cd: read x, write yd;
  block end: read yL, s, write out.
training backward (BN-backward of bn_i recomputed in the prologue of its consumers):
  reduction pass: read d_out, out, yL (and yd) -> sums for bnL (and bn_d);
  dgrad c_i: read the sources of dy_i (d_out, out, yL for cL; dz_i, y_i otherwise) and
  w_i, read y_{i-1} in the epilogue (ReLU mask, statistics of bn_{i-1}), write dz_{i-1};
  for c1 the epilogue adds the shortcut gradient (identity: reads d_out, out;
  projection: reads dgrad of cd) and writes dx;
  wgrad c_i: read a_{i-1}'s source (x or y_{i-1}) and dy_i's sources, write dw_i;
  dgrad / wgrad of cd: read d_out, out, yd (and x for wgrad), write dx_d / dw_d.
FLOPs: 2*M*K per conv GEMM (M = output pixels * C_out, K = C_in*k*k); backward = dgrad +
wgrad = 2x forward. Elementwise FLOPs are not counted.

The peaks the floor divides by (:func:`peaks`): on a GPU the H100 figures below; on a CPU
this CPU's own, measured once per process, dtype and thread count (:func:`cpu_peaks`).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import torch

# H100 SXM figures: measured copy bandwidth and dense bf16 matmul rate (docs/design.md §2).
PEAK_BW = 3.0e12  # bytes/s, ~copy bandwidth
PEAK_FLOPS = {
    torch.bfloat16: 790e12,  # dense wgmma matmul, measured
    torch.float16: 790e12,   # same tensor-core rate as bf16
    torch.float32: 395e12,   # TF32 (PyTorch's cuDNN default for fp32 convs): half the bf16 rate
    torch.float64: 60e12,    # FP64 tensor cores (spec), only for completeness
}
PEAK_NOTE = ("H100 roofline: 790 TFLOP/s bf16/fp16, 395 TFLOP/s fp32 (TF32), "
             "3.0 TB/s; floor = max(flops/peak, bytes/bandwidth) per row")
# CPU calibration: a square GEMM large enough to run at the BLAS's full rate (smaller where
# one call already takes CPU_GEMM_CALL_S: a dtype without fast kernels), a copy of 4x a large
# L3 (both operands), each repeated for CPU_CALIBRATION_S; the best call is the peak.
CPU_GEMM_N = 1536
CPU_GEMM_CALL_S = 0.05
CPU_COPY_BYTES = 128 * 2**20
CPU_CALIBRATION_S = 0.5


@dataclass(frozen=True)
class Peaks:
    """What a floor divides by: FLOP/s in the run's dtype and copy bandwidth (bytes/s)."""

    flops: float
    bw: float
    note: str


def h100_peaks(dtype: torch.dtype) -> Peaks:
    return Peaks(PEAK_FLOPS[dtype], PEAK_BW, PEAK_NOTE)


def _best_s(fn, seconds: float) -> float:
    """Shortest of repeated calls of ``fn`` (at least 3) over about ``seconds``."""
    fn()  # warm-up: first-touch page faults, BLAS buffers
    best, n, end = float("inf"), 0, time.perf_counter() + seconds
    while n < 3 or time.perf_counter() < end:
        t = time.perf_counter()
        fn()
        best, n = min(best, time.perf_counter() - t), n + 1
    return best


@functools.cache
def cpu_peaks(dtype: torch.dtype, threads: int) -> Peaks:
    """This CPU's peaks at ``threads`` threads: ``torch.mm`` of two square matrices in
    ``dtype``, CPU_GEMM_N wide or as wide as one CPU_GEMM_CALL_S call allows (FLOP/s), and
    a copy of CPU_COPY_BYTES (bytes read + written per second), each the best call of
    CPU_CALIBRATION_S seconds. Measured once per process, dtype and thread count."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        n = 256
        while True:
            a, c = torch.randn(n, n).to(dtype), torch.empty(n, n, dtype=dtype)
            t = time.perf_counter()
            torch.mm(a, a, out=c)
            if n >= CPU_GEMM_N or time.perf_counter() - t > CPU_GEMM_CALL_S:
                break
            n = min(2 * n, CPU_GEMM_N)
        flops = 2 * n ** 3 / _best_s(lambda: torch.mm(a, a, out=c), CPU_CALIBRATION_S)
        src = torch.empty(CPU_COPY_BYTES, dtype=torch.uint8).random_()
        dst = torch.empty_like(src)
        bw = 2 * CPU_COPY_BYTES / _best_s(lambda: dst.copy_(src), CPU_CALIBRATION_S)
    finally:
        torch.set_num_threads(saved)
    name = str(dtype).replace("torch.", "")
    note = (f"CPU roofline, measured on this CPU at {threads} thread(s): "
            f"{flops / 1e9:.1f} GFLOP/s {name} (torch.mm, {n}x{n}), {bw / 1e9:.1f} GB/s "
            "(copy, read + write); floor = max(flops/peak, bytes/bandwidth) per row")
    return Peaks(flops, bw, note)


def peaks(device: torch.device, dtype: torch.dtype) -> Peaks:
    """The floor's peaks: this CPU's own, measured at the current thread count, on a CPU;
    the H100's on a GPU."""
    if device.type == "cpu":
        return cpu_peaks(dtype, torch.get_num_threads())
    return h100_peaks(dtype)


@dataclass(frozen=True)
class Conv:
    cin: int
    cout: int
    k: int
    stride: int
    hin: int  # input height = width

    @property
    def hout(self) -> int:
        pad = self.k // 2
        return (self.hin + 2 * pad - self.k) // self.stride + 1

    def flops(self, n: int) -> int:
        return 2 * n * self.hout ** 2 * self.cout * self.cin * self.k ** 2

    def weight_elems(self) -> int:
        return self.cout * self.cin * self.k ** 2


def block_convs(kind: str, inplanes: int, planes: int, stride: int, hw: int,
                proj: bool) -> tuple[list[Conv], Conv | None]:
    """The main conv chain and the projection conv of a torchvision v1.5 block."""
    if kind == "bottleneck":
        h2 = Conv(planes, planes, 3, stride, hw).hout
        chain = [Conv(inplanes, planes, 1, 1, hw), Conv(planes, planes, 3, stride, hw),
                 Conv(planes, planes * 4, 1, 1, h2)]
    else:
        h2 = Conv(inplanes, planes, 3, stride, hw).hout
        chain = [Conv(inplanes, planes, 3, stride, hw), Conv(planes, planes, 3, 1, h2)]
    out_c = chain[-1].cout
    return chain, (Conv(inplanes, out_c, 1, stride, hw) if proj else None)


def _act(n: int, c: Conv, out: bool) -> int:
    """Elements of a conv's input (out=False) or output (out=True) activation."""
    return n * (c.hout ** 2 * c.cout if out else c.hin ** 2 * c.cin)


def _inference_elems(chain: list[Conv], proj: Conv | None, n: int) -> int:
    e = sum(_act(n, c, False) + _act(n, c, True) + c.weight_elems() for c in chain)
    out = _act(n, chain[-1], True)
    e += out  # the last conv's epilogue reads the shortcut (x or yd, both out-sized)
    if proj:
        e += _act(n, proj, False) + _act(n, proj, True) + proj.weight_elems()
    return e


def _train_fwd_elems(chain: list[Conv], proj: Conv | None, n: int) -> int:
    e = sum(_act(n, c, False) + _act(n, c, True) + c.weight_elems() for c in chain)
    out = _act(n, chain[-1], True)
    if proj:
        e += _act(n, proj, False) + _act(n, proj, True) + proj.weight_elems()
    return e + 3 * out  # block end: read yL and the shortcut, write out


def _train_bwd_elems(chain: list[Conv], proj: Conv | None, n: int) -> int:
    out = _act(n, chain[-1], True)
    x = _act(n, chain[0], False)
    e = 3 * out + (out if proj else 0)  # bn3 (+ bn_d) reduction pass
    for i in range(len(chain) - 1, -1, -1):
        c = chain[i]
        dy_src = 3 * out if i == len(chain) - 1 else 2 * _act(n, c, True)  # (d_out,out,yL) | (dz,y)
        a_src = _act(n, c, False)  # x or y_{i-1}
        if i > 0:
            e += dy_src + c.weight_elems() + 2 * a_src  # dgrad: epilogue reads y_{i-1}, writes dz
        else:
            e += dy_src + c.weight_elems() + a_src + (a_src if proj else 2 * out)  # + shortcut grad
        e += a_src + dy_src + c.weight_elems()  # wgrad
    if proj:
        e += 3 * out + proj.weight_elems() + x  # dgrad of cd
        e += x + 3 * out + proj.weight_elems()  # wgrad of cd
    return e


def block_model(chain: list[Conv], proj: Conv | None, n: int, elem_bytes: int,
                mode: str) -> tuple[int, int]:
    """(FLOPs, minimal bytes) of one block call in ``mode`` under the fused model."""
    convs = chain + ([proj] if proj else [])
    fwd_flops = sum(c.flops(n) for c in convs)
    if mode == "inference":
        return fwd_flops, elem_bytes * _inference_elems(chain, proj, n)
    fwd = _train_fwd_elems(chain, proj, n)
    if mode == "train_fwd":
        return fwd_flops, elem_bytes * fwd
    if mode == "train_fwd_bwd":
        return 3 * fwd_flops, elem_bytes * (fwd + _train_bwd_elems(chain, proj, n))
    raise ValueError(f"unknown mode {mode!r}")


def floor_ms(flops: int, nbytes: int, peak: Peaks) -> float:
    """Roofline floor in ms at the peaks ``peak`` (:func:`peaks`)."""
    return 1e3 * max(flops / peak.flops, nbytes / peak.bw)


STEM = Conv(3, 64, 7, 2, 224)  # ResNet stem conv; then BN, ReLU and a 3x3/2 max pool


def stem_model(n: int, elem_bytes: int, mode: str) -> tuple[int, int]:
    """(FLOPs, minimal bytes) of the ResNet stem (conv1, BN, ReLU, max pool) under the fused
    model: the conv writes y, one pass applies BN+ReLU and pools. In training the image
    needs no gradient (no dgrad): backward is one pass over (d_pooled, y) for the BN sums
    and the weight gradient reading x and (d_pooled, y)."""
    x, y = _act(n, STEM, False), _act(n, STEM, True)
    pooled = n * STEM.cout * ((STEM.hout - 1) // 2 + 1) ** 2
    w = STEM.weight_elems()
    fwd = x + w + 2 * y + pooled
    if mode in ("inference", "train_fwd"):
        return STEM.flops(n), elem_bytes * fwd
    if mode == "train_fwd_bwd":
        return 2 * STEM.flops(n), elem_bytes * (fwd + 2 * (pooled + y) + x + w)
    raise ValueError(f"unknown mode {mode!r}")
