"""Ahead-of-time compilation of the Triton kernels for a GPU that is not here.

``python -m fused_resnet.triton.aot`` compiles every conv kernel with every config of
the tile tables and every fallback (configs.py), for each GPU family (sm_80, sm_90,
sm_100, sm_120) in bf16, fp16 and fp32, and the per-channel kernels, and prints one JSON
line per kernel: registers, spill stack, local memory, shared memory, and whether the
PTX uses ``wgmma``/``mma``. ``--check`` prints only the failures (a register spill,
shared memory past the family's limit or past the launcher's estimate) and a summary
line, and exits 1 on any failure. Needs no GPU: ``triton.compile`` with a ``GPUTarget``,
and the ``cuobjdump`` shipped in triton's wheel for resource usage. Results are cached
under ``build/triton-aot`` keyed by the kernel sources, the job and the Triton version.
``--check`` also fails an integer division or remainder inside a conv kernel's K loop
(the loop around ``tt.dot`` in the Triton IR): ~20 instructions per step on a GPU.
``--k-loops`` runs only that check, from the Triton IR of each conv kernel (seconds).
Run it without ``TRITON_INTERPRET`` (interpreted kernels cannot be compiled).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import triton
from triton._C.libtriton import ir
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.compiler.compiler import make_backend

from . import _common, configs, conv, elementwise
from ._common import column_sum_kernel

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
    "bn_backward": (elementwise.bn_backward_kernel, set()),
    "bn_backward_sums": (elementwise.bn_backward_sums_kernel, set()),
}

# The heaviest flag combinations the blocks use (training forward/backward, inference).
_CONV_FLAGS = {
    "fwd": [dict(HAS_IN_AFFINE=True, IN_RELU=True, HAS_OUT_AFFINE=False, HAS_RES=False,
                 HAS_RES_AFFINE=False, OUT_RELU=False, STATS=True, COUNT_BATCH=True),
            dict(HAS_IN_AFFINE=False, IN_RELU=False, HAS_OUT_AFFINE=True, HAS_RES=True,
                 HAS_RES_AFFINE=True, OUT_RELU=True, STATS=False, COUNT_BATCH=False)],
    "dgrad": [dict(HAS_RES=True, HAS_PREV=True)],
    "wgrad": [dict(HAS_IN_AFFINE=True, IN_RELU=True, OUT_KCRS=False),
              dict(HAS_IN_AFFINE=True, IN_RELU=True, OUT_KCRS=True)],
}
_REDUCE_WARPS = configs.REDUCE_GPU[2]
_ELEMENTWISE_WARPS = configs.ELEMENTWISE_GPU[2]
# (kind, constexprs, warps) of every per-channel and reduction kernel a GPU launch can take.
_OTHER_KERNELS = [
    *(("merge_stats", dict(ROWS_PER_TILE=128, TICKET=True, FINALIZE=finalize, HAS_WEIGHT=True,
                           HAS_BIAS=True, UPDATE=True, HAS_NBT=True, CUMULATIVE=True,
                           BLOCK_R=configs.MERGE_GPU[0], BLOCK_C=configs.MERGE_GPU[1]),
       configs.MERGE_GPU[2]) for finalize in (False, True)),
    *(("column_sum", dict(TICKET=ticket, BLOCK_R=r, BLOCK_C=c), _REDUCE_WARPS)
      for r, c in (configs.REDUCE_GPU[:2], *configs.REDUCE_NARROW_GPU)
      for ticket in (True, False)),
    ("block_end", dict(HAS_RES_AFFINE=True, HAS_BRANCH=True,
                       BLOCK_R=configs.ELEMENTWISE_GPU[0], BLOCK_C=configs.ELEMENTWISE_GPU[1]),
     _ELEMENTWISE_WARPS),
    ("block_end_bwd", dict(HAS_D=True, HAS_BRANCH=True, BLOCK_R=configs.ELEMENTWISE_GPU[0],
                           BLOCK_C=configs.ELEMENTWISE_GPU[1]), _ELEMENTWISE_WARPS),
    ("bn_finalize", dict(HAS_WEIGHT=True, HAS_BIAS=True, UPDATE=True, HAS_NBT=True,
                         CUMULATIVE=True, BLOCK_C=1024), 4),
    ("bn_backward", dict(BATCH_STATS=True, HAS_WEIGHT=True, HAS_BIAS=True,
                         BLOCK_C=configs.REDUCE_GPU[1]), _REDUCE_WARPS),
    *(("bn_backward_sums", dict(HAS_D=True, BATCH_STATS=True, HAS_WEIGHT=True, HAS_BIAS=True,
                                BATCH_STATS_D=True, HAS_WEIGHT_D=True, HAS_BIAS_D=True,
                                TICKET=ticket, BLOCK_R=r, BLOCK_C=c), _REDUCE_WARPS)
      for r, c in (configs.REDUCE_GPU[:2], *configs.REDUCE_NARROW_GPU)
      for ticket in (True, False)),
]


_FLOAT_ARGS = {"count", "count_d", "unbiased_count", "momentum", "eps"}  # passed as floats


def _signature(kind: str, dtype: str, constexprs: dict, divisible: set[str]):
    fn, data_ptrs = KERNELS[kind]
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name == "nbt_ptr":
            sig[name] = "*i64"
        elif name == "counter_ptr":
            sig[name] = "*i32"
        elif name.endswith("_ptr"):
            sig[name] = _TYPES[dtype] if name in data_ptrs else "*fp32"
        elif name in _FLOAT_ARGS:
            sig[name] = "fp32"
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


def _source(job: dict) -> ASTSource:
    constexprs = dict(job["constexprs"])
    fn, sig, attrs = _signature(job["kind"], job["dtype"], constexprs, set(job["divisible"]))
    return ASTSource(fn, sig, constexprs, attrs)


def _options(job: dict) -> dict:
    return {"num_warps": job["num_warps"], "num_stages": job["num_stages"]}


def compile_one(job: dict) -> dict:
    """Compile ``job`` (kind, arch, dtype, constexprs, num_warps, num_stages, divisible)."""
    kernel = triton.compile(_source(job), target=GPUTarget("cuda", job["arch"], 32),
                            options=_options(job))
    ptx = kernel.asm["ptx"]
    return {**job, **_resource_usage(kernel.asm["cubin"]),
            "shared_bytes": kernel.metadata.shared, "wgmma": "wgmma" in ptx,
            "mma": "mma.sync" in ptx,
            "k_loop_divisions": len(k_loop_divisions(kernel.asm["ttir"])),
            "unfenced_releases": len(unfenced_releases(ptx))}


def ttir(job: dict) -> str:
    """The Triton IR of ``job`` (the first compiler stage only: no PTX, no ptxas)."""
    src, target = _source(job), GPUTarget("cuda", job["arch"], 32)
    backend = make_backend(target)
    options = backend.parse_options(_options(job))
    stages: dict = {}
    backend.add_stages(stages, options, src.language)
    context = ir.context()
    ir.load_dialects(context)
    backend.load_dialects(context)
    module = src.make_ir(target, options, backend.get_codegen_implementation(options),
                         backend.get_module_map(), context)
    return str(stages["ttir"](module, {}))


_DIVISIONS = re.compile(r"= arith\.(div|rem|floordiv|ceildiv)[su]i ")


def unfenced_releases(ptx: str) -> list[str]:
    """Release atomics (a reduction's ticket) that a global store reaches without a CTA
    barrier in between, as their PTX lines: Triton issues a scalar atomic from one thread,
    so the other threads' stores are published only if a ``bar.sync`` precedes it."""
    found, pending = [], False
    for line in ptx.splitlines():
        text = line.strip()
        if text.startswith(("st.global", "@")) and "st.global" in text:
            pending = True
        elif text.startswith("bar.sync") or text.startswith("barrier.sync"):
            pending = False
        elif "atom." in text and (".release." in text or ".acq_rel." in text) and pending:
            found.append(text)
    return found


def k_loop_divisions(ir_text: str) -> list[str]:
    """The integer divisions and remainders inside a loop that contains a ``tt.dot`` (a
    GEMM's K loop, nested loops included), as their IR lines."""
    found: list[str] = []
    frames: list[dict | None] = []  # one per open region: a loop's record, or None
    for line in ir_text.splitlines():
        text = line.strip()
        if text.startswith("}"):
            frame = frames.pop()
            if frame is not None and frame["dot"]:
                found += frame["divisions"]
            if frames and frame is not None and frames[-1] is not None:
                frames[-1]["dot"] |= frame["dot"]
        loops = [f for f in frames if f is not None]
        if "tt.dot " in text:
            for f in loops:
                f["dot"] = True
        if _DIVISIONS.search(text) and loops:
            loops[-1]["divisions"].append(text)
        if text.endswith("{"):
            frames.append({"dot": False, "divisions": []} if "scf.for " in text else None)
    return found


def k_loop_jobs() -> list[dict]:
    """One 3x3 job per conv kernel and flag set, for sm_80 (mma) and sm_90 (wgmma)."""
    seen, out = set(), []
    for job in jobs(("sm80", "sm90")):
        if job["kind"] not in _CONV_FLAGS:
            continue
        flags = [i for i, f in enumerate(_CONV_FLAGS[job["kind"]])
                 if f.items() <= job["constexprs"].items()]
        key = (job["kind"], job["target"], *flags)
        if key not in seen:
            seen.add(key)
            out.append({**job, "constexprs": {**job["constexprs"], "KH": 3, "KW": 3},
                        "shape": "3x3"})
    return out


AOT_TARGETS = ("sm80", "sm90", "sm100", "sm120")
DTYPES = {"bf16": "16bit", "fp16": "16bit", "fp32": "fp32"}


def _conv_job(kind, cfg: configs.TileConfig, k: int, target: str, dtype: str, flags: dict,
              divisible: list[str], shape: str) -> dict:
    constexprs = {"KH": k, "KW": k, **flags, "DOT_PRECISION": "tf32", **cfg.meta()}
    if kind == "wgrad":
        constexprs["SPLIT_K"] = 2
    return {"kind": kind, "target": target, "arch": configs.TARGETS[target].arch,
            "dtype": dtype, "constexprs": constexprs, "num_warps": cfg.num_warps,
            "num_stages": cfg.num_stages, "shape": shape, "divisible": divisible,
            "config": str(cfg), "smem_estimate": configs.smem_estimate(kind, cfg, DTYPES[dtype])}


def _conv_configs(target: str, dtype: str):
    """(kind, config, kernel size, divisible, shape) for every table entry of the family
    and dtype, then every fallback; each distinct compile once."""
    dc = DTYPES[dtype]
    for (fam, cls, kind, c_in, c_out, k, s), cfg in sorted(configs.TABLE.items(), key=str):
        if fam == target and cls == dc:
            divisible = [n for n, v in (("C_in", c_in), ("C_out", c_out)) if v % 16 == 0]
            yield kind, cfg, k, divisible, f"{c_in}x{c_out}k{k}s{s}"
    for kind, fallbacks in configs.FALLBACKS.items():
        for cfg in fallbacks:
            yield kind, cfg, 3, ["C_in", "C_out"], "fallback"


def jobs(targets=AOT_TARGETS) -> list[dict]:
    """Every conv config of every table entry and fallback, for each target family and
    dtype (deduplicated), and the per-channel kernels."""
    out, seen = [], set()
    for target in targets:
        for dtype in DTYPES:
            for kind, cfg, k, divisible, shape in _conv_configs(target, dtype):
                for flags in _CONV_FLAGS[kind]:
                    # Shapes differ in kernel size and alignment; compile each config once
                    # per flag set (the first shape that uses it stands for the rest).
                    key = (target, dtype, kind, cfg, tuple(flags.items()))
                    if key not in seen:
                        seen.add(key)
                        out.append(_conv_job(kind, cfg, k, target, dtype, flags, divisible,
                                             shape))
        for kind, constexprs, warps in _OTHER_KERNELS:
            out.append({"kind": kind, "target": target, "arch": configs.TARGETS[target].arch,
                        "dtype": "bf16", "constexprs": constexprs, "num_warps": warps,
                        "num_stages": 1, "shape": "any", "divisible": ["C"]})
    return out


def problems(result: dict) -> list[str]:
    """What is wrong with one compiled kernel: a register spill, shared memory past the
    target's limit, more shared memory than the launcher's estimate allows for, a
    division in a K loop, or a reduction ticket that does not publish the stores before
    it."""
    out = []
    if result.get("stack", 0) or result.get("local", 0):
        out.append(f"spills (stack {result.get('stack', 0)} B, local {result.get('local', 0)} B)")
    limit = configs.TARGETS[result["target"]].shared_limit
    if result["shared_bytes"] > limit:
        out.append(f"shared memory {result['shared_bytes']} B > {limit} B")
    if result.get("k_loop_divisions", 0):
        out.append(f"{result['k_loop_divisions']} integer divisions in the K loop")
    if result.get("unfenced_releases", 0):
        out.append(f"{result['unfenced_releases']} release atomics without a CTA barrier "
                   "after the stores they publish")
    estimate = result.get("smem_estimate")
    if estimate is not None and result["shared_bytes"] > estimate:
        out.append(f"shared memory {result['shared_bytes']} B > smem_estimate {estimate} B")
    return out


def describe(result: dict) -> str:
    tile = result.get("config") or ""
    return (f"{result['kind']} {result['target']} {result['dtype']} {result['shape']} "
            f"{tile}").rstrip()


# ------------------------------------------------------------------------- cache
CACHE_DIR = Path(os.environ.get("FUSED_RESNET_AOT_CACHE",
                                Path(__file__).resolve().parents[2] / "build" / "triton-aot"))


@functools.cache
def _sources_digest() -> str:
    """The source of every kernel of this package and the Triton version: a cached result
    is reused only for the very kernels and compiler that produced it."""
    h = hashlib.sha256(triton.__version__.encode())
    for module in (_common, conv, elementwise):  # every @triton.jit function (they use no
        for name in sorted(vars(module)):        # module constants but each other)
            fn = getattr(getattr(module, name), "fn", None)
            if fn is not None and getattr(fn, "__module__", None) == module.__name__:
                h.update(inspect.getsource(fn).encode())
    return h.hexdigest()


def _cache_path(job: dict) -> Path:
    key = hashlib.sha256((_sources_digest() + json.dumps(job, sort_keys=True)).encode())
    return CACHE_DIR / f"{key.hexdigest()[:32]}.json"


def _cached(job: dict) -> dict | None:
    path = _cache_path(job)
    return json.loads(path.read_text()) if path.exists() else None


def compile_cached(job: dict) -> dict:
    """Compile ``job`` and store its result in the cache."""
    result = compile_one(job)
    path = _cache_path(job)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(path)  # atomic: concurrent runs never read half a file
    return result


def _results(all_jobs: list[dict]):
    """(result, from cache) per job, in order; only the misses start compiler processes."""
    hits = [_cached(job) for job in all_jobs]
    misses = [job for job, hit in zip(all_jobs, hits) if hit is None]
    workers = int(os.environ.get("FUSED_RESNET_AOT_JOBS", os.cpu_count() or 1))
    with ProcessPoolExecutor(max_workers=workers) if misses else contextlib.nullcontext() as pool:
        compiled = pool.map(compile_cached, misses) if misses else iter(())
        for hit in hits:
            yield (hit, True) if hit is not None else (next(compiled), False)


def run(check: bool, targets=AOT_TARGETS, dtypes=tuple(DTYPES)) -> int:
    failures, cached, total = [], 0, 0
    for result, from_cache in _results([j for j in jobs(targets) if j["dtype"] in dtypes]):
        total += 1
        cached += from_cache
        bad = problems(result)
        if check:
            if bad:
                failures.append(f"FAIL {describe(result)}: {'; '.join(bad)}")
                print(failures[-1], flush=True)
        else:
            print(json.dumps(result), flush=True)
    if check:
        print(f"aot check: {total} kernels for {', '.join(targets)} "
              f"({cached} from {CACHE_DIR}), {len(failures)} failing")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="print only failures (spills, shared memory past the limit or "
                             "the launcher's estimate) and a summary; exit 1 on any")
    parser.add_argument("--targets", default=",".join(AOT_TARGETS),
                        help=f"comma list from {','.join(AOT_TARGETS)} (default: all)")
    parser.add_argument("--dtypes", default=",".join(DTYPES),
                        help=f"comma list from {','.join(DTYPES)} (default: all)")
    parser.add_argument("--k-loops", action="store_true",
                        help="only check the conv kernels' K loops for integer divisions "
                             "(Triton IR, no PTX: seconds); exit 1 on any")
    args = parser.parse_args(argv)
    targets, dtypes = args.targets.split(","), args.dtypes.split(",")
    for name, values, allowed in (("targets", targets, AOT_TARGETS), ("dtypes", dtypes, DTYPES)):
        if not values or any(v not in allowed for v in values):
            parser.error(f"--{name}: choose from {','.join(allowed)}, got {values}")
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")
    if args.k_loops:
        return check_k_loops()
    return run(args.check, tuple(targets), tuple(dtypes))


def check_k_loops() -> int:
    failing = 0
    for job in k_loop_jobs():
        divisions = k_loop_divisions(ttir(job))
        failing += bool(divisions)
        print(f"{'FAIL' if divisions else 'ok  '} {describe(job)}: {len(divisions)} "
              f"divisions in the K loop", *divisions, sep="\n    ", flush=True)
    print(f"k-loop check: {len(k_loop_jobs())} conv kernels, {failing} failing")
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
