"""3x3 convolutions of eval blocks on the CPU by Winograd's F(4x4, 3x3).

A stride-1, padding-1 3x3 convolution computes each 4x4 output tile from a 6x6 input tile
with 36 multiplies per (input, output) channel pair instead of 144: the input tile and the
weight are transformed (``B^T d B``, ``G g G^T``), multiplied position by position (36
batched GEMMs over tiles), and transformed back (``A^T m A``). The C++ kernel
(``torch.ops.fused_resnet.winograd_conv3x3``, csrc/cpu/winograd_cpu.cpp) does the input and
output transforms around one batched GEMM; the weight transform is here, done once when the
eval path packs a block's weights (:mod:`fused_resnet.onednn`).

Float32 error: about 1.5-2e-6 relative (L2) per convolution, against about 4e-7 for a direct
convolution; the float32 tolerance is 1e-5. Where it is used (:func:`fits`): where it
measured faster than oneDNN's direct convolution (docs: benchmarks/README.md, "CPU paths").
"""

from __future__ import annotations

import threading

import torch

Tensor = torch.Tensor

# G of F(4x4, 3x3) (interpolation points 0, +-1, +-2 and infinity); B^T and A^T are in the
# C++ kernel.
_G = torch.tensor([[1 / 4, 0, 0],
                   [-1 / 6, -1 / 6, -1 / 6],
                   [-1 / 6, 1 / 6, -1 / 6],
                   [1 / 24, 1 / 12, 1 / 6],
                   [1 / 24, -1 / 12, 1 / 6],
                   [0, 0, 1]], dtype=torch.float64)
TILE = 4  # outputs per tile side
POSITIONS = (TILE + 2) ** 2  # transformed values per 6x6 input tile (the GEMM batch)

# Least output tiles (N * ceil(H/4) * ceil(W/4)) for the batched GEMM to beat oneDNN's direct
# convolution: below it the transformed weight (4x the direct one) is read for too few tiles.
# Measured on a 2-core AMD EPYC (Zen3, AVX2), ResNet-50's 3x3 convolutions at batch 1, 1 and 2
# threads: 196, 49 and 16 tiles (64, 128, 256 channels) 1.6-2.5x faster, 4 tiles (512
# channels at 7x7) 0.6-0.7x; at batch 8 (32 tiles and more) every one 1.6-2.3x faster.
MIN_TILES = 16

# Most bytes of the per-thread workspace (the transformed input and the GEMM products, 36
# values per tile and channel): a convolution that needs more runs direct. Fresh buffers of
# this size would be page-faulted in on every call (measured up to 2.7x slower), so the
# workspace is kept between calls; 32 MiB covers ResNet-50 at 224x224 up to batch 8.
MAX_WORKSPACE_BYTES = 32 << 20

_local = threading.local()


def tiles(input_shape: list[int]) -> int:
    n, _, h, w = input_shape
    return n * -(-h // TILE) * -(-w // TILE)


def workspace_numel(input_shape: list[int], out_channels: int) -> int:
    return POSITIONS * tiles(input_shape) * (input_shape[1] + out_channels)


def fits(weight: Tensor, stride: int, padding: int, dilation: int, groups: int,
         input_shape: list[int]) -> bool:
    """Whether this convolution runs by :func:`conv3x3` on an input of ``input_shape``."""
    if tuple(weight.shape[2:]) != (3, 3) or (stride, padding, dilation, groups) != (1, 1, 1, 1):
        return False
    bytes_needed = workspace_numel(input_shape, weight.shape[0]) * weight.element_size()
    return tiles(input_shape) >= MIN_TILES and bytes_needed <= MAX_WORKSPACE_BYTES


def _workspace(numel: int, dtype: torch.dtype) -> Tensor:
    """This thread's workspace of at least ``numel`` elements of ``dtype`` (grown, kept)."""
    ws = getattr(_local, "workspace", None)
    if ws is None or ws.dtype != dtype or ws.numel() < numel:
        # A normal tensor even when made under inference_mode: an inference tensor could not
        # be written outside it.
        with torch.inference_mode(False):
            ws = _local.workspace = torch.empty(numel, dtype=dtype)
    return ws


def transform_weight(weight: Tensor) -> Tensor:
    """``G g G^T`` of every 3x3 filter of ``weight`` [K, C, 3, 3], as the kernel's u
    [36, C, K] in the weight's dtype (computed in float64)."""
    g = _G.to(weight.device)
    u = torch.einsum("ia,ocab,jb->ijco", g, weight.to(torch.float64), g)
    return u.reshape(POSITIONS, weight.shape[1], weight.shape[0]).to(weight.dtype).contiguous()


def conv3x3(x: Tensor, u: Tensor, bias: Tensor, residual: Tensor | None = None,
            relu: bool = False) -> tuple[Tensor, bool]:
    """``act(conv3x3(x, w, padding=1) + bias [+ residual])`` from ``u = transform_weight(w)``;
    ``x`` (and ``residual``) channels_last float32 or float64 on the CPU. Also whether the
    output is all finite: a NaN or infinity spreads over whole tiles (a direct convolution
    keeps it to the 3x3 neighbourhood), so the caller recomputes a non-finite result directly."""
    ws = None  # malformed arguments: the op says what is wrong
    if x.dim() == 4 and u.dim() == 3:
        ws = _workspace(workspace_numel(list(x.shape), u.shape[2]), x.dtype)
    return torch.ops.fused_resnet.winograd_conv3x3(x, u, bias, residual, relu, ws)
