"""Ahead-of-time compilation of the Triton kernels for a GPU that is not here.

``python -m fused_resnet.triton.aot`` compiles every kernel with the configs the
ResNet-50/18 shapes use (sm_90, bf16) and the default configs (sm_80; fp16/fp32) and
prints one JSON line per kernel: registers, spill stack, local memory, shared memory,
and whether the PTX uses ``wgmma``/``mma``. Needs no GPU: ``triton.compile`` with a
``GPUTarget``, and the ``cuobjdump`` shipped in triton's wheel for resource usage.
Run it without ``TRITON_INTERPRET`` (interpreted kernels cannot be compiled).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import configs, conv, elementwise
from ._common import column_sum_kernel

SHARED_LIMIT = {90: 227 * 1024, 80: 163 * 1024}  # bytes of shared memory per block
_TYPES = {"bf16": "*bf16", "fp16": "*fp16", "fp32": "*fp32"}

KERNELS = {
    "fwd": (conv.conv_fwd_kernel, {"x_ptr", "w_ptr", "y_ptr", "res_ptr"}),
    "dgrad": (conv.conv_dgrad_kernel, {"dz_ptr", "y_ptr", "w_ptr", "dx_ptr", "res_ptr",
                                       "prev_y_ptr"}),
    "wgrad": (conv.conv_wgrad_kernel, {"x_ptr", "dz_ptr", "y_ptr"}),
    "merge_stats": (conv.merge_stats_kernel, set()),
    "column_sum": (column_sum_kernel, set()),
    "block_end": (elementwise.block_end_kernel, {"y_ptr", "res_ptr", "out_ptr"}),
    "block_end_bwd": (elementwise.block_end_bwd_kernel, {"d_out_ptr", "out_ptr", "y_ptr",
                                                         "y_d_ptr", "dz_ptr"}),
    "bn_finalize": (elementwise.bn_finalize_kernel, set()),
}

# The heaviest flag combinations the blocks use (training forward/backward, inference).
_CONV_FLAGS = {
    "fwd": [dict(HAS_IN_AFFINE=True, IN_RELU=True, HAS_OUT_AFFINE=False, HAS_RES=False,
                 HAS_RES_AFFINE=False, OUT_RELU=False, STATS=True),
            dict(HAS_IN_AFFINE=False, IN_RELU=False, HAS_OUT_AFFINE=True, HAS_RES=True,
                 HAS_RES_AFFINE=True, OUT_RELU=True, STATS=False)],
    "dgrad": [dict(HAS_RES=True, HAS_PREV=True)],
    "wgrad": [dict(HAS_IN_AFFINE=True, IN_RELU=True)],
}
_OTHER_CONSTEXPRS = {
    "merge_stats": dict(ROWS_PER_TILE=128, BLOCK_C=128, FIRST=True, FINAL=False),
    "column_sum": dict(BLOCK_C=256),
    "block_end": dict(HAS_RES_AFFINE=True, HAS_BRANCH=True, BLOCK_R=configs.ELEMENTWISE_GPU[0],
                      BLOCK_C=configs.ELEMENTWISE_GPU[1]),
    "block_end_bwd": dict(HAS_D=True, HAS_BRANCH=True, BLOCK_R=configs.ELEMENTWISE_GPU[0],
                          BLOCK_C=configs.ELEMENTWISE_GPU[1]),
    "bn_finalize": dict(HAS_WEIGHT=True, HAS_BIAS=True, UPDATE=True, HAS_NBT=True,
                        CUMULATIVE=True, BLOCK_C=1024),
}


def _signature(kind: str, dtype: str, constexprs: dict, divisible: set[str]):
    fn, data_ptrs = KERNELS[kind]
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name == "nbt_ptr":
            sig[name] = "*i64"
        elif name.endswith("_ptr"):
            sig[name] = _TYPES[dtype] if name in data_ptrs else "*fp32"
        else:
            sig[name] = "i32"
    # What the JIT would specialize at run time: 16-byte aligned pointers, and the
    # channel counts of the ResNet shapes (multiples of 16).
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in fn.arg_names
             if n not in constexprs and (n.endswith("_ptr") or n in divisible)}
    return fn, sig, attrs


def _resource_usage(cubin: bytes) -> dict:
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                        "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "--dump-resource-usage", f.name], check=True,
                              capture_output=True, text=True).stdout
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", text))
    return {k.lower(): int(v) for k, v in fields.items()}


def compile_one(job: dict) -> dict:
    """Compile ``job`` (kind, arch, dtype, constexprs, num_warps, num_stages, divisible)."""
    constexprs = dict(job["constexprs"])
    fn, sig, attrs = _signature(job["kind"], job["dtype"], constexprs, set(job["divisible"]))
    kernel = triton.compile(ASTSource(fn, sig, constexprs, attrs),
                            target=GPUTarget("cuda", job["arch"], 32),
                            options={"num_warps": job["num_warps"],
                                     "num_stages": job["num_stages"]})
    ptx = kernel.asm["ptx"]
    return {**job, **_resource_usage(kernel.asm["cubin"]),
            "shared_bytes": kernel.metadata.shared, "wgmma": "wgmma" in ptx,
            "mma": "mma.sync" in ptx}


def _conv_job(kind, cfg: configs.TileConfig, k: int, arch: int, dtype: str, flags: dict,
              divisible: list[str], shape: str) -> dict:
    constexprs = {"KH": k, "KW": k, **flags, "DOT_PRECISION": "tf32", **cfg.meta()}
    if kind == "wgrad":
        constexprs["SPLIT_K"] = cfg.split_k
    return {"kind": kind, "arch": arch, "dtype": dtype, "constexprs": constexprs,
            "num_warps": cfg.num_warps, "num_stages": cfg.num_stages, "shape": shape,
            "divisible": divisible}


def jobs() -> list[dict]:
    """Table configs (sm_90 bf16, deduplicated), defaults for sm_80 and fp16/fp32, and
    the per-channel kernels."""
    out, seen = [], set()
    for (kind, c_in, c_out, k, stride), cfg in sorted(configs.SM90_TABLE.items()):
        divisible = [n for n, v in (("C_in", c_in), ("C_out", c_out)) if v % 16 == 0]
        for flags in _CONV_FLAGS[kind]:
            key = (kind, cfg, min(k, 3), tuple(divisible), tuple(flags.items()))
            if key not in seen:
                seen.add(key)
                out.append(_conv_job(kind, cfg, k, 90, "bf16", flags, divisible,
                                     f"{c_in}x{c_out}k{k}s{stride}"))
    for arch, dtype in ((80, "bf16"), (80, "fp16"), (80, "fp32"), (90, "fp16"), (90, "fp32")):
        for kind, cfg in configs.DEFAULT.items():
            out.append(_conv_job(kind, cfg, 3, arch, dtype, _CONV_FLAGS[kind][0],
                                 ["C_in", "C_out"], "default"))
    for kind, constexprs in _OTHER_CONSTEXPRS.items():
        for arch in (90, 80):
            out.append({"kind": kind, "arch": arch, "dtype": "bf16", "constexprs": constexprs,
                        "num_warps": configs.ELEMENTWISE_GPU[2], "num_stages": 1,
                        "shape": "any", "divisible": ["C"]})
    return out


def main() -> None:
    workers = int(os.environ.get("FUSED_RESNET_AOT_JOBS", os.cpu_count() or 1))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for result in pool.map(compile_one, jobs()):
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")
    main()
