"""Tile configurations for the Triton kernels.

UNTUNED / GPU-UNVERIFIED: every entry below is a best guess written without a GPU
(tile shapes chosen from the GEMM sizes, warps and stages from shared-memory budgets);
`tests/test_triton_compile.py` only proves they compile for sm_90/sm_80 without
register spills and within shared memory. Replace them with measured winners when a
GPU run is available (autotune the shape, paste ``best_config`` here).

Shapes not in the table are autotuned over :func:`autotune_configs` (keyed on the
conv shape), except under the interpreter, which always runs :data:`INTERPRETER`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TileConfig:
    """One GEMM tiling. For ``wgrad`` M = C_out, N = C_in (per tap), K = pixels."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 3
    split_k: int = 1  # wgrad only: K split into interleaved slices, reduced deterministically

    def meta(self) -> dict:
        """The kernel's tiling constexprs (launch options excluded)."""
        return {"BLOCK_M": self.block_m, "BLOCK_N": self.block_n, "BLOCK_K": self.block_k}


# One small config for the CPU interpreter: tl.dot needs every dim >= 16, and fewer,
# larger programs run faster there (each program is a Python loop of numpy ops).
INTERPRETER = TileConfig(32, 16, 16, num_warps=1, num_stages=1, split_k=2)

# Elementwise kernels (block_end, block_end_bwd): rows x channels tiles.
ELEMENTWISE_GPU = (64, 64, 4)  # (rows, channels, warps)
ELEMENTWISE_INTERPRETER = (64, 32, 1)

# Default when a shape is unknown and autotuning is off (also what the AOT test compiles
# for sm_80 and for fp16/fp32).
DEFAULT = {
    "fwd": TileConfig(128, 64, 32, num_warps=8, num_stages=3),
    "dgrad": TileConfig(128, 64, 32, num_warps=8, num_stages=3),
    "wgrad": TileConfig(64, 64, 32, num_warps=4, num_stages=3, split_k=8),
}

# ResNet-50/18 convs as (C_in, C_out, kernel, stride) -> config per kernel kind, sm_90 bf16.
# UNTUNED guesses (see module docstring): BLOCK_M 128 (M = N*H*W is large at batch >= 32),
# BLOCK_N follows C_out, BLOCK_K 64 for wide K, 8 warps for 128x128 tiles (two warpgroups
# for wgmma), stages bounded by 227 KB of shared memory.
_F = TileConfig
SM90_TABLE: dict[tuple[str, int, int, int, int], TileConfig] = {
    # stem
    ("fwd", 3, 64, 7, 2): _F(128, 64, 16, 8, 3),
    ("dgrad", 3, 64, 7, 2): _F(128, 16, 64, 8, 3),
    ("wgrad", 3, 64, 7, 2): _F(64, 16, 64, 4, 3, split_k=32),
}


def _fill_resnet_table() -> None:
    """Add the bottleneck/basic-block convs with the rules the guesses follow."""
    shapes = [
        # ResNet-50 (C_in, C_out, k, stride)
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
    ]
    for c_in, c_out, k, s in shapes:
        bn = 128 if c_out >= 128 else 64
        bk = 64 if c_in >= 64 else 32
        # 8 warps for every 128-row tile: with 4, the fused prologue + statistics
        # epilogue spill registers (seen in the sm_90 AOT compile).
        SM90_TABLE.setdefault(("fwd", c_in, c_out, k, s),
                              _F(128, bn, bk, 8, 4 if bn == 64 else 3))
        bn_d = 128 if c_in >= 128 else 64
        bk_d = 64 if c_out >= 64 else 32
        SM90_TABLE.setdefault(("dgrad", c_in, c_out, k, s), _F(128, bn_d, bk_d, 8, 3))
        # wgrad: small GEMM (C_out x C_in per tap) with a huge K: split it.
        bm_w = 128 if c_out >= 128 else 64
        bn_w = 128 if c_in >= 128 else 64
        split = max(1, min(32, (128 * 128) // (bm_w * bn_w) * 8 // k))
        SM90_TABLE.setdefault(("wgrad", c_in, c_out, k, s),
                              _F(bm_w, bn_w, 64, 8 if bm_w * bn_w >= 128 * 128 else 4, 3,
                                 split_k=split))


_fill_resnet_table()


def lookup(kind: str, c_in: int, c_out: int, kernel: int, stride: int,
           arch: int) -> TileConfig | None:
    """The committed config for a conv of this shape, or None (then autotune)."""
    if arch >= 90:
        return SM90_TABLE.get((kind, c_in, c_out, kernel, stride))
    return None


def autotune_configs(kind: str, arch: int) -> list[TileConfig]:
    """Candidates for shapes missing from the table. ``block_m`` (and ``split_k``) are
    fixed outside autotuning (they size the statistics/split-K buffers), so only
    ``block_n``, ``block_k``, warps and stages vary here."""
    out = []
    for bn in (64, 128):
        for bk in (32, 64):
            for stages in (3, 4) if arch >= 90 else (2, 3):
                out.append(TileConfig(0, bn, bk, 8, stages))
    return out


def block_m_for(kind: str, rows: int) -> int:
    """BLOCK_M when autotuning (fixed: it sizes the per-tile statistics buffer)."""
    return 128 if rows >= 128 * 64 else 64


def split_k_for(pixels: int, tiles: int) -> int:
    """Split-K factor for an untabled wgrad: enough programs to fill ~132 SMs twice."""
    split = 1
    while tiles * split < 264 and pixels // (split * 2) >= 1024 and split < 64:
        split *= 2
    return split
