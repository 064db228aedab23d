"""Launch plans of the ``cuda`` backend's ops, for any arguments and target, without a GPU.

The plans are computed in C++ (csrc/cuda/launch_plan.h) by the same functions the CUDA
launchers execute, and reach Python through ``fused_resnet._C`` (built in every
configuration, CPU-only ones too). :func:`op_plan` turns an op's own arguments (real, fake or
meta tensors: only shapes, dtypes, None-ness, memory formats and storage offsets are read)
into the :class:`~fused_resnet.launch_plan.OpPlan` the launcher would run on ``target``.
:func:`kernel_resources` and :func:`ctas_per_sm` add occupancy from ptxas (needs nvcc and a
source checkout). See docs/design.md §5.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import re
from pathlib import Path

import torch

from . import reference
from ._fakes import OP_NAMES
from .launch_plan import TARGETS, Launch, OpPlan, Target
from .launch_plan import ctas_per_sm as occupancy

__all__ = ["OPS", "TARGETS", "op_plan", "kernel_resources", "ctas_per_sm"]

OPS = OP_NAMES  # the six fused ops (BN backward runs in torch on this backend)

_DTYPE_NAMES = {torch.float32: "f32", torch.float64: "f64", torch.float16: "f16",
                torch.bfloat16: "bf16"}


def _dtype(t: torch.Tensor) -> str:
    try:
        return _DTYPE_NAMES[t.dtype]
    except KeyError:
        raise ValueError(f"the CUDA kernels have no {t.dtype} variant") from None


def _aligned(*operands: tuple[torch.Tensor | None, torch.memory_format]) -> bool:
    """Whether every operand, as the launcher stages it (``t.contiguous(fmt)``), starts on a
    16-byte boundary: a copy is a fresh (aligned) allocation, a tensor already in ``fmt`` keeps
    its storage offset. Storages themselves are taken as aligned (PyTorch's allocators align
    them to 64 bytes or more)."""
    for t, fmt in operands:
        if t is not None and t.is_contiguous(memory_format=fmt) and (
                t.storage_offset() * t.element_size()) % 16:
            return False
    return True


_CL, _C = torch.channels_last, torch.contiguous_format


def _conv(in_size, weight: torch.Tensor, stride, padding, dilation, groups) -> dict:
    n, c, h, w = (int(v) for v in in_size)
    k, _, r, s = weight.shape
    return dict(N=n, C=c, H=h, W=w, K=int(k), R=int(r), S=int(s), stride=int(stride),
                padding=int(padding), dilation=int(dilation), groups=int(groups))


def _layout(t: torch.Tensor) -> dict:
    """The [outer, C, inner] view (common/layout.h) the launcher reads ``t`` in."""
    n, c, h, w = t.shape
    if reference.memory_format(t) == _CL:
        return dict(outer=n * h * w, C=c, inner=1)
    return dict(outer=n, C=c, inner=h * w)


def _conv_fwd(x, weight, stride, padding, dilation, groups, in_scale, in_shift, in_relu,
              out_scale, out_shift, residual, res_scale, res_shift, out_relu, stats) -> dict:
    return dict(_conv(x.shape, weight, stride, padding, dilation, groups), dtype=_dtype(x),
                stats=int(bool(stats)), residual=int(residual is not None))


def _conv_bwd_data(dz, y, a, b, c, weight, input_size, stride, padding, dilation, groups,
                   residual, prev_y, prev_scale, prev_shift, prev_mean, prev_invstd) -> dict:
    aligned = _aligned((dz, _CL), (y, _CL), (weight, _CL), (a, _C), (b, _C), (c, _C))
    return dict(_conv(input_size, weight, stride, padding, dilation, groups), dtype=_dtype(dz),
                prev=int(prev_y is not None), residual=int(residual is not None),
                operands_aligned=int(aligned))


def _conv_bwd_weight(x, in_scale, in_shift, in_relu, dz, y, a, b, c, weight, stride, padding,
                     dilation, groups) -> dict:
    return dict(_conv(x.shape, weight, stride, padding, dilation, groups), dtype=_dtype(x),
                out_dtype=_dtype(weight),
                dy_aligned=int(_aligned((dz, _CL), (y, _CL), (a, _C), (b, _C), (c, _C))),
                act_aligned=int(_aligned((x, _CL), (in_scale, _C), (in_shift, _C))))


def _bn_finalize(mean, m2, count, weight, bias, running_mean, running_var, num_batches_tracked,
                 momentum, eps, update_running_stats) -> dict:
    return dict(C=mean.numel(), dtype=_dtype(mean))


def _block_end(y, scale, shift, residual, res_scale, res_shift, branch_scale=None) -> dict:
    fmt = reference.memory_format(y)
    return dict(_layout(y), dtype=_dtype(y), aligned=int(_aligned((y, fmt), (residual, fmt))))


def _block_end_bwd(d_out, out, y, mean, invstd, y_d, mean_d, invstd_d,
                   branch_scale=None) -> dict:
    return dict(_layout(d_out), dtype=_dtype(d_out), projection=int(y_d is not None))


_PARAMS = {"conv_fwd": _conv_fwd, "bn_finalize": _bn_finalize, "block_end": _block_end,
           "block_end_bwd": _block_end_bwd, "conv_bwd_data": _conv_bwd_data,
           "conv_bwd_weight": _conv_bwd_weight}


def op_plan(op: str, args: tuple, target: Target) -> OpPlan:
    """The launches the ``cuda`` backend makes for ``torch.ops.fused_resnet.<op>(*args)`` on
    ``target`` (a :data:`TARGETS` family, or ``Target.with_device`` of a real device), in
    order. ``Launch.kernel`` names the kernel instantiation (the keys of
    :func:`kernel_resources`), ``config`` its tiling, ``meta`` the ``function``, ``block``
    and ``chunk`` (merge: parts per group; block_end_bwd: rows or images per CTA). The
    ATen copies that stage arguments not already in the kernels' layout or dtype (NCHW data
    for the conv kernels) are not launches of the plan."""
    if op not in _PARAMS:
        raise ValueError(f"unknown op {op!r} (one of {', '.join(OPS)})")
    from . import _C

    params = _PARAMS[op](*args)
    rows = _C.cuda_launch_plan(op, params, (target.arch, target.sms, target.shared_limit))
    return OpPlan(op, tuple(_launch(*row) for row in rows))


def _launch(name, function, grid, block, smem, config, nbytes, flops, steps, chunk) -> Launch:
    return Launch(name, tuple(grid), math.prod(block) // 32, config,
                  {"function": function, "block": tuple(block), "chunk": chunk},
                  smem, nbytes, flops, steps)


# ---------------------------------------------------------------- occupancy
def ctas_per_sm(launch: Launch, resources: dict[str, dict], target: Target) -> int:
    """CTAs of ``launch`` one SM of ``target`` holds at once (:func:`launch_plan.ctas_per_sm`).
    ``resources``: :func:`kernel_resources` of the arch."""
    res = resources[launch.kernel]
    return occupancy(math.prod(launch.meta["block"]), res["registers"],
                     res["smem"] + launch.smem_bytes, target.arch)


def _toolkit():
    """The checkout's cuda_toolkit.py (nvcc runs cached under build/nvcc_cache)."""
    path = Path(__file__).resolve().parents[1] / "cuda_toolkit.py"
    if not (path.is_file() and (path.parent / "csrc" / "cuda").is_dir()):
        raise RuntimeError("kernel_resources needs a source checkout (csrc/ and cuda_toolkit.py)")
    spec = importlib.util.spec_from_file_location("fused_resnet_cuda_toolkit", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_TYPES = {"float": "f32", "double": "f64", "__half": "f16", "__nv_bfloat16": "bf16"}
# Demangled kernel -> plan name: the conv GEMMs by operand policy, the merges by their input.
_GEMMS = {"FwdTc": "conv_fwd_tc", "DgradTc": "conv_dgrad_tc", "FwdOperands": "conv_fwd_simt",
          "DgradOperands": "conv_dgrad_simt", "WgradOperands": "conv_wgrad_simt"}
_MERGES = {"FwdTileStats": "conv_fwd_merge", "DgradTileSums": "conv_dgrad_merge"}
_BY_DTYPE = {"reduce_wgrad_kernel": "conv_wgrad_reduce", "bn_finalize_kernel": "bn_finalize",
             "block_end_bwd_nhwc": "block_end_bwd_nhwc",
             "block_end_bwd_nchw": "block_end_bwd_nchw"}


def _plan_kernel_name(function: str) -> str | None:
    """The plan's name (``Launch.kernel``) of a demangled kernel instantiation, or None."""
    m = re.search(r"(\w+)<(.*)>\(", function)
    if not m:
        return None
    fn, targs = m.groups()
    first = re.sub(r".*::", "", targs.split(",")[0].strip())
    if fn in ("tc_conv_kernel", "simt_conv_kernel"):
        policy, dtype, vec_b = re.search(r"::(\w+)<(\w+)(?:, (true|false))?>", targs).groups()
        if policy == "WgradTc":
            return f"conv_wgrad_tc{'' if vec_b == 'true' else '_scalar_b'}.{_TYPES[dtype]}"
        return f"{_GEMMS[policy]}.{_TYPES[dtype]}"
    if fn == "merge_partials_kernel":
        for key, name in _MERGES.items():
            if key in targs:
                return name
        acc = re.search(r"BlockEndBwdPartials<(\w+)>", targs)
        return f"block_end_bwd_merge.{_TYPES[acc.group(1)]}" if acc else None
    if fn == "block_end_kernel":  # <S, VEC>
        vec = targs.split(",")[1].strip()
        return f"block_end_{'scalar' if vec == '1' else 'vec'}.{_TYPES[first]}"
    return f"{_BY_DTYPE[fn]}.{_TYPES[first]}" if fn in _BY_DTYPE else None


@functools.cache
def kernel_resources(arch: int) -> dict[str, dict]:
    """Registers per thread and static shared memory (bytes) per kernel (the names of
    ``Launch.kernel``), from ``ptxas -v`` of every csrc/cuda/*.cu compiled for ``sm_<arch>``
    (cached under build/nvcc_cache; needs nvcc). A name covering several instantiations (the
    levels of a merge) takes the largest of each."""
    tk = _toolkit()
    reports = {}
    for src in sorted((Path(tk.ROOT) / "csrc" / "cuda").glob("*.cu")):
        log, _ = tk.compile_cu(src, f"sm_{arch}")
        reports.update(tk.parse_ptxas(log))
    out: dict[str, dict] = {}
    for mangled, function in tk.demangle(reports).items():
        name = _plan_kernel_name(function)
        if name is None:
            continue
        info = reports[mangled]
        seen = out.setdefault(name, {"registers": 0, "smem": 0})
        seen["registers"] = max(seen["registers"], info["registers"])
        seen["smem"] = max(seen["smem"], info["smem"])
    return out
