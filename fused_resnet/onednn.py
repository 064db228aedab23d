"""Eval-mode blocks on the CPU through oneDNN's fused convolutions.

With fixed BN statistics and no gradient wanted, a block on the CPU in float32 runs as one
oneDNN convolution per conv: every BN folded into its conv's weight and bias (scale and
shift by the eval rule all backends share, :func:`fused_resnet.reference.bn_eval_affines`,
in fp32), the ReLUs as post-ops, and the last conv taking the residual (the projection's
conv, its BN folded the same way, run first) and the final ReLU as post-ops.

A 3x3 convolution with enough output tiles runs by Winograd's F(4x4, 3x3) instead
(:mod:`fused_resnet.winograd`: 4x fewer multiplies), its bias, ReLU and residual in the
kernel's output transform.

oneDNN's ReLU post-op maps NaN to 0 (PyTorch's ReLU keeps it): a call whose input or folded
weights hold a NaN or infinity is not served here (:func:`forward` returns None). The input is
summed once per call, unless it is the unchanged output of the previous block served here
(outside ``torch.inference_mode``, whose tensors keep no version counter).

The folded weights are prepacked into oneDNN's blocked layout (or transformed for Winograd)
once and cached on the block:

* keyed by the thread count (a weight packed for one thread count runs up to 40x slower at
  another) and the block's input shape (the packing is chosen for it);
* dropped as soon as any source tensor changes: its version counter (in-place edits,
  optimizer steps, ``load_state_dict``), its storage, dtype or device (``.to()``). The cache
  keeps the source tensors alive, so a stale entry can never match a new tensor.

The ATen ops used are ``torch.ops.mkldnn._convolution_pointwise`` (unary and ``.binary``)
and ``torch.ops.mkldnn._reorder_convolution_weight``; oneDNN fuses the post-ops only for
channels_last inputs, so NCHW inputs are converted and the output is returned in the input's
memory format. A torch build without them keeps the backend's own inference path and says
why once (:func:`unavailable`).
"""

from __future__ import annotations

import math
import threading
import warnings
import weakref
from dataclasses import dataclass

import torch

from . import reference, winograd
from .derived_cache import DerivedCache

Tensor = torch.Tensor
CL = torch.channels_last
DTYPES = (torch.float32,)
_OPS = ("_convolution_pointwise", "_reorder_convolution_weight")
_warned = False


def _missing() -> str | None:
    if not torch.backends.mkldnn.is_available():
        return f"torch {torch.__version__} is built without oneDNN (mkldnn)"
    missing = [op for op in _OPS if not hasattr(torch.ops.mkldnn, op)]
    if missing:
        return f"torch {torch.__version__} has no torch.ops.mkldnn.{', '.join(missing)}"
    return None


_MISSING = _missing()  # once, at import: torch.compile cannot trace the checks


def unavailable() -> str | None:
    """Why oneDNN fused convolutions cannot run in this torch build, or None."""
    return _MISSING


def _grad_wanted(x: Tensor, tensors: tuple) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or any(
        t is not None and t.requires_grad for t in tensors))


def cannot_run(plan, x: Tensor, tensors: tuple) -> str | None:
    """Why this block call cannot take the oneDNN path (None: it can)."""
    if plan.backend.name != "cpp":
        return f"backend {plan.backend.name!r} runs its own kernels"
    if not plan.fixed_stats:
        return "batch statistics (training mode)"
    if _grad_wanted(x, tensors):
        return "a gradient is wanted"
    if x.device.type != "cpu" or x.dtype not in DTYPES:
        return f"oneDNN fused inference serves float32 CPU tensors, not {x.dtype} on {x.device}"
    if torch.compiler.is_compiling():
        return "under torch.compile (Inductor folds and fuses the convolutions itself)"
    return unavailable()


# ----------------------------------------------------------------------- packed block
@dataclass(frozen=True)
class _Unit:
    """One conv with its BN folded: the fp32 weight (channels_last) and bias."""

    weight: Tensor
    bias: Tensor
    padding: list[int]
    stride: list[int]
    dilation: list[int]
    groups: int

    def out_shape(self, shape: list[int]) -> list[int]:
        n, _, h, w = shape
        k_out, _, kh, kw = self.weight.shape
        p, s, d = self.padding[0], self.stride[0], self.dilation[0]
        return [n, k_out, (h + 2 * p - d * (kh - 1) - 1) // s + 1,
                (w + 2 * p - d * (kw - 1) - 1) // s + 1]

    def packed(self, input_shape: list[int]) -> _Unit | _WinogradUnit:
        """The unit ready for inputs of ``input_shape``: by Winograd where that is faster
        (:func:`fused_resnet.winograd.fits`), else with the weight prepacked for oneDNN."""
        if winograd.fits(self.weight, self.stride[0], self.padding[0], self.dilation[0],
                         self.groups, input_shape):
            return _WinogradUnit(winograd.transform_weight(self.weight), self.bias, self)
        w = torch.ops.mkldnn._reorder_convolution_weight(
            self.weight, self.padding, self.stride, self.dilation, self.groups, input_shape)
        return _Unit(w, self.bias, self.padding, self.stride, self.dilation, self.groups)

    def __call__(self, x: Tensor, unary: str = "none", residual: Tensor | None = None):
        args = (self.padding, self.stride, self.dilation, self.groups)
        if residual is None:
            return torch.ops.mkldnn._convolution_pointwise(x, self.weight, self.bias, *args,
                                                           unary, [], "")
        # Out-of-place .binary: (x, other, weight, ...); 'add' then the unary post-op.
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, residual, self.weight, self.bias, *args, "add", None, unary, [], "")


@dataclass(frozen=True)
class _WinogradUnit:
    """A 3x3 unit run by :func:`fused_resnet.winograd.conv3x3` (weight transformed), and
    directly (``direct``: the unpacked unit) when that result is not all finite."""

    u: Tensor
    bias: Tensor
    direct: _Unit

    def __call__(self, x: Tensor, unary: str = "none", residual: Tensor | None = None):
        out, finite = winograd.conv3x3(x, self.u, self.bias, residual, unary == "relu")
        return out if finite else self.direct(x, unary, residual)


def _fold(plan, tensors: tuple) -> list[_Unit]:
    """Every unit's conv with its BN folded in, chain first, then the shortcut."""
    k = len(tensors) // len(plan.units)
    units = [tensors[i * k:(i + 1) * k] for i in range(len(plan.units))]
    folds = reference.bn_eval_affines(
        [(t[3], t[4], t[1], t[2], spec.norm.eps) for spec, t in zip(plan.units, units)],
        torch.float32)
    out = []
    for spec, t, (scale, shift, _) in zip(plan.units, units, folds):
        c = spec.conv
        w = (t[0].float() * scale.view(-1, 1, 1, 1)).contiguous(memory_format=CL)
        out.append(_Unit(w, shift.contiguous(), [c.padding] * 2, [c.stride] * 2,
                         [c.dilation] * 2, c.groups))
    return out


class PackCache:
    """A block's folded weights (a :class:`DerivedCache` of its tensors and BN eps) and
    their prepacked forms, by (threads, input shape)."""

    MAX_SHAPES = 4  # packed forms kept per block (input shapes seen, most recent last)

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.folds = DerivedCache()
        self.packed: dict[tuple, tuple] = {}  # -> (packed units or None, folds)

    def units(self, plan, tensors: tuple, input_shape: list[int]) -> list[_Unit] | None:
        eps = tuple(u.norm.eps for u in plan.units)
        folded = self.folds.get(tensors, eps, lambda: _fold(plan, tensors))
        if any(source is not folded for _, source in self.packed.values()):
            self.packed = {}  # packed from folds that are gone
        key = (torch.get_num_threads(), tuple(input_shape))
        if key not in self.packed:
            if len(self.packed) >= self.MAX_SHAPES:
                del self.packed[next(iter(self.packed))]
            self.packed[key] = (_pack(folded, len(plan.chain), input_shape), folded)
        return self.packed[key][0]

    # Packed oneDNN tensors neither pickle nor need to: a copy starts empty.
    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.clear()


def _pack(folded: list[_Unit], n_chain: int, input_shape: list[int]) -> list[_Unit] | None:
    """The units ready for ``input_shape``; None when a folded weight or bias is not finite
    (oneDNN's ReLU post-op would turn the NaNs it makes into zeros)."""
    if not all(bool(torch.isfinite(u.weight).all() and torch.isfinite(u.bias).all())
               for u in folded):
        return None
    packed, shape = [], list(input_shape)
    for unit in folded[:n_chain]:
        packed.append(unit.packed(shape))
        shape = unit.out_shape(shape)
    packed += [unit.packed(list(input_shape)) for unit in folded[n_chain:]]
    return packed


def forward(owner: dict, plan, x: Tensor, tensors: tuple) -> Tensor | None:
    """The eval forward through oneDNN of the block whose ``__dict__`` is ``owner`` (which
    holds its :class:`PackCache`); only where :func:`choose_path` says ``onednn``.

    None where a NaN or infinity is in ``x`` or the folded weights: oneDNN's ReLU post-op
    maps NaN to 0, where PyTorch's ReLU keeps it, so such a call takes another path."""
    cache = owner.get("_onednn_cache")
    if cache is None:
        cache = owner["_onednn_cache"] = PackCache()
    units = cache.units(plan, tensors, list(x.shape))
    if units is None or not (_made_here(x) or _all_finite(x)):
        return None
    chain, shortcut = units[:len(plan.chain)], units[len(plan.chain):]
    h = x.contiguous(memory_format=CL)
    residual = None
    if plan.residual:
        residual = shortcut[0](plan.shortcut_input(h).contiguous(memory_format=CL)) \
            if shortcut else h
    for unit in chain[:-1]:
        h = unit(h, "relu")
    out = chain[-1](h, "relu", residual).contiguous(memory_format=reference.memory_format(x))
    # Inference tensors keep no version counter: an in-place edit would go unseen.
    _local.last_output = None if out.is_inference() else (weakref.ref(out), out._version)
    return out


# The last output this thread's blocks made on this path (from finite inputs and weights):
# the next block of a chain takes it unchanged and need not sum it again.
_local = threading.local()


def _made_here(x: Tensor) -> bool:
    last = getattr(_local, "last_output", None)
    return last is not None and last[0]() is x and not x.is_inference() \
        and last[1] == x._version


def _all_finite(x: Tensor) -> bool:
    """No NaN or infinity in ``x``: one pass (a sum that overflows only sends a call to
    another path)."""
    return math.isfinite(x.sum().item())


# ------------------------------------------------------------------ the path of a call
# Measured on a 2-core AMD EPYC (Zen3, AVX2, shared), channels_last, interleaved timing,
# eager/variant time ratios (docs: benchmarks/README.md, "CPU paths"):
#   eval, float32, 16 ResNet-50 bottlenecks: oneDNN fused + prepacked 1.24-1.40x (batch 1),
#       1.09-1.18x (batch 8); with Winograd for the 3x3s with enough tiles 1.36-1.42x
#       (batch 1) and 1.47x (batch 8), 1.26-1.36x compile_freezing; the cpp kernels 0.89x;
#   training fwd+bwd, float32, 16 bottlenecks, batch 2, 1 thread: cpp 1.17-1.22x (spatial sizes
#       / 4; per block 0.94-2.24x), 1.02x (224x224 sizes; per block 0.99-1.06x); the 7
#       basic blocks of ResNet-18/34: 0.93-1.00x (/ 4), 0.98-1.03x (224x224);
#   bfloat16, where oneDNN has no native bf16 kernels (AVX2), 16 bottlenecks, batch 2,
#       1 thread: cpp (GEMMs in float32) 3.1x eval and 6.8x training at spatial sizes / 4,
#       8.1x and 16.6x at 224x224 sizes.
# Hence the rule for a block whose backend is "auto", on the CPU: oneDNN where it can run;
# the cpp kernels for float32 bottleneck training (batch statistics) and for bfloat16
# without native bf16 convolutions; else ATen's own ops (the block's torchvision forward).
ONEDNN, ATEN = "onednn", "aten"
_WHY_ONEDNN = ("eval with fixed statistics, float32, no gradient: one oneDNN convolution per "
               "conv with BN folded and ReLU/residual as post-ops, weights prepacked (3x3s "
               "with enough output tiles by Winograd F(4x4, 3x3))")
_WHY_CPP = ("float32 bottleneck training: the cpp kernels' fused forward and backward run "
            "faster than ATen's convolutions and BatchNorm (16 ResNet-50 bottlenecks, batch 2: "
            "1.02-1.22x)")
_WHY_CPP_BF16 = ("bfloat16 without native bf16 convolutions in oneDNN on this CPU: the cpp "
                 "kernels (GEMMs in float32) run 3-17x faster than ATen's")
_WHY_ATEN = "ATen's convolutions and BatchNorm: the cpp kernels are not faster for this call"
_WHY_ATEN_BF16 = ("bfloat16 with native bf16 convolutions in oneDNN on this CPU: ATen's (the "
                  "cpp kernels compute in float32)")
_WHY_ATEN_COMPILE = "under torch.compile: Inductor compiles ATen's graph of the block"


def _native_bf16() -> bool:
    """Whether oneDNN has native bfloat16 convolutions on this CPU (AVX512-BF16, AMX)."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(torch.backends.mkldnn.is_available() and check is not None and check())


_NATIVE_BF16 = _native_bf16()  # once, at import (as _MISSING)


def _bottleneck(plan) -> bool:
    """A chain of three conv-BN units ending in a residual (basic blocks, two units, measured
    no faster in float32 training on the cpp kernels)."""
    return plan.residual and len(plan.chain) == 3


def _auto_on_cpu(plan, x: Tensor, autocast: bool) -> tuple[str, str]:
    """Where auto runs a CPU block call that oneDNN cannot: (path, why)."""
    if torch.compiler.is_compiling():
        return ATEN, _WHY_ATEN_COMPILE
    if plan.backend.name != "cpp" or autocast:
        return ATEN, _WHY_ATEN
    if x.dtype == torch.bfloat16:
        return (ATEN, _WHY_ATEN_BF16) if _NATIVE_BF16 else (plan.backend.name, _WHY_CPP_BF16)
    if x.dtype == torch.float32 and not plan.fixed_stats and _bottleneck(plan):
        return plan.backend.name, _WHY_CPP
    return ATEN, _WHY_ATEN


def choose_path(requested: str, plan, x: Tensor, tensors: tuple,
                autocast: bool) -> tuple[str, str]:
    """How a block call runs, and why: ``onednn``, ``aten`` (the block's torchvision forward)
    or the name of its fused backend. ``requested``: the block's ``backend`` setting. Warns
    once when only missing ATen ops keep a call off oneDNN."""
    global _warned
    reason = "under autocast" if autocast else cannot_run(plan, x, tensors)
    if reason is None:
        return ONEDNN, _WHY_ONEDNN
    if reason == unavailable() and not _warned:
        _warned = True
        warnings.warn(f"fused_resnet: eval blocks on the CPU cannot use oneDNN: {reason}",
                      stacklevel=3)
    # Synchronised BN shares batch statistics across processes: only the fused path does;
    # torch.export keeps the fused ops in the exported program.
    if requested == "auto" and x.device.type == "cpu" and not torch.compiler.is_exporting() \
            and not any(u.norm.sync for u in plan.units):
        path, why = _auto_on_cpu(plan, x, autocast)
        return path, f"{reason}; {why}"
    return plan.backend.name, reason
