"""Launch plans: what one op launches, as a pure function of shapes, dtype and target.

A backend's launcher builds the plan of its op and then executes it (grids, tile
configs and reduction levels come from the plan, not from a second copy of the rules),
so tests can check the structure of every launch without a GPU: the longest chain of
dependent steps inside one program, the number of waves on the target's SMs, and the
number of launches per op (docs/design.md §5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Target:
    """A GPU family as the planner sees it: what to compile for, how much shared memory
    one block may use (opt-in maximum), and how many SMs the part has."""

    name: str
    arch: int  # compute capability x 10 (90 = sm_90)
    shared_limit: int  # bytes per block
    sms: int

    def with_device(self, shared_limit: int, sms: int) -> Target:
        """This family's tables, bounded by a real device's own limits."""
        return Target(self.name, self.arch, min(self.shared_limit, shared_limit), sms)


# GPU families by shared memory per block (opt-in) and SM count of the reference part; both
# backends plan for these (fused_resnet.triton.configs re-exports them).
TARGETS = {
    "sm80": Target("sm80", 80, 166_912, 108),    # A100
    "sm86": Target("sm86", 86, 101_376, 84),     # consumer Ampere/Ada (sm_86, sm_89)
    "sm90": Target("sm90", 90, 232_448, 132),    # H100/H200
    "sm100": Target("sm100", 100, 232_448, 148),  # B200
    "sm120": Target("sm120", 120, 101_376, 170),  # consumer Blackwell
}


@dataclass(frozen=True)
class Launch:
    """One kernel launch.

    ``serial_steps`` is the trip count of the longest loop one program walks (each step
    depends on the previous one); ``bytes`` and ``flops`` are estimates of DRAM traffic
    and arithmetic, for roofline accounting.
    """

    kernel: str
    grid: tuple[int, ...]
    num_warps: int = 4
    config: Any = None  # the backend's tile config, when the kernel has one
    meta: dict = field(default_factory=dict, compare=False)  # constexprs the launcher passes
    smem_bytes: int = 0
    bytes: int = 0
    flops: int = 0
    serial_steps: int = 1

    @property
    def programs(self) -> int:
        return math.prod(self.grid)

    def waves(self, sms: int, programs_per_sm: int = 1) -> float:
        return self.programs / (sms * programs_per_sm)


@dataclass(frozen=True)
class OpPlan:
    """The launches of one op call, in order."""

    op: str
    launches: tuple[Launch, ...]

    def __iter__(self):
        return iter(self.launches)

    def __len__(self) -> int:
        return len(self.launches)

    def named(self, kernel: str) -> list[Launch]:
        return [launch for launch in self.launches if launch.kernel == kernel]

    @property
    def serial_steps(self) -> int:
        """Dependent steps along the op: launches run one after another."""
        return sum(launch.serial_steps for launch in self.launches)


# ----------------------------------------------------------------------- occupancy
# Per-SM limits by compute capability, from the CUDA C++ Programming Guide ("Compute
# Capabilities", technical specifications table) and the CUDA occupancy calculator:
# resident threads, 32-bit registers, shared memory (the largest carveout), resident CTAs.
SM_LIMITS = {
    80: dict(threads=2048, registers=65536, smem=164 * 1024, ctas=32),
    90: dict(threads=2048, registers=65536, smem=228 * 1024, ctas=32),
}
REGISTER_ALLOCATION_UNIT = 256  # registers are allocated per warp in units of 256
WARP_ALLOCATION_GRANULARITY = 4  # warps per SM are counted in groups of 4 (4 schedulers)
CTA_RESERVED_SMEM = 1024  # shared memory the system reserves per CTA (compute capability 8.0+)


def ctas_per_sm(threads: int, registers: int | None, smem_bytes: int, arch: int) -> int:
    """CTAs of a kernel one SM of compute capability ``arch`` holds at once: the minimum over
    threads, registers per thread (allocated per warp; None: unknown, not a limit), shared
    memory (static + dynamic + the per-CTA reservation) and the CTA limit."""
    lim = SM_LIMITS[arch]
    warps = -(-threads // 32)
    by_registers = lim["ctas"]
    per_warp = -(-(registers or 0) * 32 // REGISTER_ALLOCATION_UNIT) * REGISTER_ALLOCATION_UNIT
    if per_warp:
        max_warps = lim["registers"] // per_warp
        max_warps -= max_warps % WARP_ALLOCATION_GRANULARITY
        by_registers = max_warps // warps
    by_smem = lim["smem"] // (smem_bytes + CTA_RESERVED_SMEM)
    return min(lim["threads"] // threads, by_registers, by_smem, lim["ctas"])
