"""Tile configurations for the Triton kernels, keyed by (GPU family, dtype, conv shape).

Untuned: the rules below are first choices written from GEMM sizes and
shared-memory budgets. ``python -m fused_resnet.triton.aot --check`` compiles every
config they can produce (and every fallback) for each family's architecture and fails
on a register spill or on shared memory past the family's limit, or when
:func:`smem_estimate` (what the launcher filters with) undercounts the compiled kernel.
Replace entries of :data:`TABLE` with measured winners when a GPU run is available.

The choice is a pure function of its inputs (no autotuning): the same shape picks the
same config in every process, so results are bitwise reproducible between runs. At run
time the candidates (table entry, then :data:`FALLBACKS`) are filtered by the device's
own shared-memory limit, so an unknown GPU never launches an oversized config.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace

from ..launch_plan import TARGETS, Target  # TARGETS re-exported: the families live there


@dataclass(frozen=True)
class TileConfig:
    """One GEMM tiling. For ``wgrad`` M = C_out, N = C_in (per tap), K = pixels."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 3

    def meta(self) -> dict:
        """The kernel's tiling constexprs (launch options excluded)."""
        return {"BLOCK_M": self.block_m, "BLOCK_N": self.block_n, "BLOCK_K": self.block_k}

    def options(self) -> dict:
        return {"num_warps": self.num_warps, "num_stages": self.num_stages}

    def __str__(self) -> str:
        return (f"{self.block_m}x{self.block_n}x{self.block_k}"
                f"/w{self.num_warps}s{self.num_stages}")


KINDS = ("fwd", "dgrad", "wgrad")
DTYPE_CLASSES = ("16bit", "fp32")  # fp16 and bf16 share tiles

# The interpreter runs one small config (tl.dot needs every dim >= 16; fewer, larger
# programs are faster there: each program is a Python loop of numpy ops).
INTERPRETER_TARGET = Target("interpreter", 0, 1 << 30, 4)
INTERPRETER = TileConfig(32, 16, 16, num_warps=1, num_stages=1)

# Elementwise kernels (block_end, block_end_bwd): rows x channels tiles, and the
# column-sum / statistics-merge reductions.
ELEMENTWISE_GPU = (64, 64, 4)  # (rows, channels, warps)
ELEMENTWISE_INTERPRETER = (64, 32, 1)
# Reductions: [rows per step, channels] fp32 tiles of 4,096 elements over 8 warps; the
# statistics merge, which holds three such tiles, its running totals and BN's pointers,
# a quarter of that (ptxas gives larger ones a stack frame on some families). A reduction
# whose grid would not fill two waves (e.g. wgrad's split-K sum: few rows, many columns)
# takes a narrower tile.
REDUCE_GPU = (64, 64, 8)  # (rows per step, channels, warps)
MERGE_GPU = (32, 32, 8)
REDUCE_NARROW_GPU = ((128, 32), (256, 16))  # (rows per step, channels), same warps
MIN_GROUP_PARTS = 2  # a reduction group's fewest parts: group results cost traffic too
REDUCE_INTERPRETER = (16, 32, 1)
MAX_SERIAL_STEPS = 64  # no reduction program walks more dependent steps than this


def family(arch: int) -> Target:
    """The table family of a compute capability (x10); unknown future parts take the
    smallest shared-memory budget of their generation or, failing that, sm_120's."""
    if arch >= 120:
        return TARGETS["sm120"]
    if arch >= 100:
        return TARGETS["sm100"]
    if arch >= 90:
        return TARGETS["sm90"]
    if arch in (86, 89):
        return TARGETS["sm86"]
    return TARGETS["sm80"]


def elem_bytes(dtype_class: str) -> int:
    return 4 if dtype_class == "fp32" else 2


def smem_estimate(kind: str, cfg: TileConfig, dtype_class: str) -> int:
    """Upper bound of the shared memory a compiled kernel uses: every pipelined operand
    tile once per stage (dgrad/wgrad rebuild dy from two tensors, dz and y), plus an fp32
    accumulator-sized scratch for the epilogue's layout changes and reductions. The AOT
    check proves it is an upper bound for every config here."""
    a_tiles = 1 if kind == "fwd" else 2
    m, n, k = cfg.block_m, cfg.block_n, cfg.block_k
    per_stage = (a_tiles * m * k + k * n) * elem_bytes(dtype_class)
    return max(cfg.num_stages, 1) * per_stage + m * n * 4


def _pow2_at_least(v: int, lo: int, hi: int) -> int:
    p = lo
    while p < v and p < hi:
        p *= 2
    return p


def _channels_tile(channels: int, hi: int) -> int:
    """A tile dim for a channel count: the smallest power of two >= it, in [16, hi]."""
    return _pow2_at_least(channels, 16, hi)


def _fit_stages(kind: str, cfg: TileConfig, dtype_class: str, target: Target) -> TileConfig:
    for stages in (3, 2):
        fitted = replace(cfg, num_stages=stages)
        if smem_estimate(kind, fitted, dtype_class) <= target.shared_limit:
            return fitted
    return replace(cfg, num_stages=1)


def rule_config(kind: str, target: Target, dtype_class: str, c_in: int,
                c_out: int) -> TileConfig:
    """The config for any conv shape (also what fills :data:`TABLE`): GEMM M is pixels
    (fwd, dgrad) or C_out (wgrad), so N and K tiles follow the channel counts; fp32 takes
    narrower tiles (twice the bytes per element, and TF32 fragments)."""
    wide = 64 if dtype_class == "fp32" else 128
    deep = 32 if dtype_class == "fp32" else 64
    if kind == "fwd":
        m, n, k = 128, _channels_tile(c_out, wide), _channels_tile(c_in, deep)
    elif kind == "dgrad":  # 128x128 tiles spill (dy from two tensors; AOT check)
        m, n, k = 128, _channels_tile(c_in, 64), _channels_tile(c_out, deep)
    else:  # wgrad: M = C_out, N = C_in, K = pixels (always long)
        m = 128 if c_out >= 128 and dtype_class != "fp32" else 64
        n, k = _channels_tile(c_in, wide), deep
    warps = 8 if m * n >= 128 * 64 else 4
    if kind == "dgrad":  # two-tensor dy tiles and stride-phase bookkeeping: with fewer
        warps = 8  # warps the 128-row tiles spill (AOT check)
    if target.name == "sm100" and dtype_class == "16bit":
        # The accumulator leaves tensor memory through registers: fewer warps spill
        # (AOT check); wgrad's epilogue is a plain store, but with 8 warps on tiles below
        # 128x128 the compiler holds 128 registers per thread and its K loop (dy and the
        # activation rebuilt in registers) spills: 4 warps there (AOT check).
        if kind == "wgrad":
            warps = 8 if m * n >= 128 * 128 else 4
        else:
            warps = 16 if m * n >= 128 * 128 else 8
    return _fit_stages(kind, TileConfig(m, n, k, warps), dtype_class, target)


# ResNet-50/18 convs as (C_in, C_out, kernel, stride).
RESNET_SHAPES = (
    (3, 64, 7, 2),  # stem
    (64, 64, 1, 1), (64, 64, 3, 1), (64, 256, 1, 1), (256, 64, 1, 1),
    (256, 128, 1, 1), (128, 128, 3, 2), (128, 512, 1, 1), (256, 512, 1, 2),
    (512, 128, 1, 1), (128, 128, 3, 1),
    (512, 256, 1, 1), (256, 256, 3, 2), (256, 1024, 1, 1), (512, 1024, 1, 2),
    (1024, 256, 1, 1), (256, 256, 3, 1),
    (1024, 512, 1, 1), (512, 512, 3, 2), (512, 2048, 1, 1), (1024, 2048, 1, 2),
    (2048, 512, 1, 1), (512, 512, 3, 1),
    # ResNet-18 extras
    (64, 128, 3, 2), (64, 128, 1, 2), (128, 256, 3, 2), (128, 256, 1, 2),
    (256, 512, 3, 2), (256, 512, 1, 2),
)

# (family, dtype class, kind, C_in, C_out, kernel, stride) -> config. Filled by the rule
# (kernel and stride are in the key for tuned entries); measured winners go here.
TABLE: dict[tuple[str, str, str, int, int, int, int], TileConfig] = {
    (fam, dc, kind, c_in, c_out, k, s): rule_config(kind, TARGETS[fam], dc, c_in, c_out)
    for fam in TARGETS for dc in DTYPE_CLASSES for kind in KINDS
    for (c_in, c_out, k, s) in RESNET_SHAPES
}

# Tried in order after the table entry when it does not fit the device's shared memory;
# the last one fits any CUDA GPU (< 48 KB in every dtype).
FALLBACKS = {
    "fwd": (TileConfig(64, 64, 32, 4, 2), TileConfig(64, 32, 16, 4, 1)),
    "dgrad": (TileConfig(64, 64, 32, 4, 2), TileConfig(64, 32, 16, 4, 1)),
    "wgrad": (TileConfig(64, 64, 32, 4, 2), TileConfig(64, 32, 16, 4, 1)),
}

_FORCED: dict[str, object] = {}
FORCEABLE = (*KINDS, "split_k", "elementwise", "reduce")


@contextlib.contextmanager
def forced(what: str, value):
    """Tests only: inside the block, every launch takes ``value`` for ``what`` through the
    normal launch path, also under the interpreter (which otherwise runs its own small
    tiles). ``what``: a conv kind ("fwd", "dgrad", "wgrad") with a :class:`TileConfig`,
    "split_k" with an int, or "elementwise"/"reduce" with a (rows, channels, warps) tile."""
    if what not in FORCEABLE:
        raise ValueError(f"cannot force {what!r} (one of {FORCEABLE})")
    previous = _FORCED.get(what)
    _FORCED[what] = value
    try:
        yield value
    finally:
        if previous is None:
            del _FORCED[what]
        else:
            _FORCED[what] = previous


def forced_value(what: str):
    """The value forced for ``what``, or None."""
    return _FORCED.get(what)


def candidates(kind: str, target: Target, dtype_class: str, c_in: int, c_out: int,
               kernel: int, stride: int) -> list[TileConfig]:
    """The table entry (or the rule's config), then the fallbacks."""
    key = (target.name, dtype_class, kind, c_in, c_out, kernel, stride)
    fam = TARGETS.get(target.name, target)  # the family's rule, not a device's bound
    first = TABLE.get(key) or rule_config(kind, fam, dtype_class, c_in, c_out)
    return [first, *FALLBACKS[kind]]


def choose(kind: str, target: Target, dtype_class: str, c_in: int, c_out: int, kernel: int,
           stride: int) -> TileConfig:
    """The config a launch takes: forced (tests), the interpreter's, or the first
    candidate whose shared memory fits ``target`` (a device's own limit at run time)."""
    if kind in _FORCED:
        return _FORCED[kind]  # type: ignore[return-value]
    if target is INTERPRETER_TARGET:
        return INTERPRETER
    for cfg in candidates(kind, target, dtype_class, c_in, c_out, kernel, stride):
        if smem_estimate(kind, cfg, dtype_class) <= target.shared_limit:
            return cfg
    raise RuntimeError(f"fused_resnet triton: no {kind} tile config fits "
                       f"{target.shared_limit} B of shared memory")


def split_k_for(pixels: int, tiles: int, block_k: int, sms: int) -> int:
    """wgrad split-K: enough programs for two waves on ``sms`` SMs, every slice at least
    one K block, and few enough slices that their fixed-order sum (a column sum over
    ``split`` rows) walks at most :data:`MAX_SERIAL_STEPS` steps."""
    want = -(-2 * sms // max(tiles, 1))
    k_blocks = max(1, -(-pixels // block_k))
    return max(1, min(want, k_blocks, MAX_SERIAL_STEPS * REDUCE_GPU[0]))


def gpu_tiles(kind: str) -> list[TileConfig]:
    """:func:`gpu_configs` with one config per distinct (BLOCK_M, BLOCK_N, BLOCK_K): what
    the interpreter can tell apart (it ignores warps and stages)."""
    tiles = {}
    for cfg in gpu_configs(kind):
        tiles.setdefault((cfg.block_m, cfg.block_n, cfg.block_k), cfg)
    return list(tiles.values())


def gpu_configs(kind: str) -> list[TileConfig]:
    """Every distinct config a GPU launch of ``kind`` can take: the table, the rule over
    every channel class it distinguishes, and the fallbacks."""
    seen = {cfg for key, cfg in TABLE.items() if key[2] == kind}
    for fam in TARGETS.values():
        for dc in DTYPE_CLASSES:
            for c_in in (1, 17, 33, 65, 129):
                for c_out in (1, 17, 33, 65, 129):
                    seen.add(rule_config(kind, fam, dc, c_in, c_out))
    seen.update(FALLBACKS[kind])
    return sorted(seen, key=lambda c: (c.block_m, c.block_n, c.block_k, c.num_warps,
                                       c.num_stages))
