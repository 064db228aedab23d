"""Ahead-of-time compilation of the Triton kernels for sm_90/sm_80, without a GPU
(DESIGN.md §5): every kernel compiles with the configs the ResNet shapes use, spills no
registers, fits shared memory, and the sm_90 bf16 conv kernels use wgmma.

The compile runs in a subprocess without TRITON_INTERPRET: kernels decorated under the
interpreter cannot be compiled, and the suite may run interpreted.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]
CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


@functools.cache
def compiled() -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-W", "ignore", "-m", "fused_resnet.triton.aot"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"AOT compile failed:\n{proc.stderr[-4000:]}"
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def _name(r: dict) -> str:
    c = r["constexprs"]
    tile = "x".join(str(c[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K") if k in c)
    return f"{r['kind']} sm_{r['arch']} {r['dtype']} {r['shape']} {tile} w{r['num_warps']}"


pytestmark = pytest.mark.skipif(not CUOBJDUMP.exists(),
                                reason=f"triton's cuobjdump not found at {CUOBJDUMP}")


def test_every_kernel_compiles():
    kinds = {r["kind"] for r in compiled()}
    assert kinds == {"fwd", "dgrad", "wgrad", "merge_stats", "column_sum", "block_end",
                     "block_end_bwd", "bn_finalize"}
    assert {(r["arch"], r["dtype"]) for r in compiled()} >= {(90, "bf16"), (80, "bf16"),
                                                             (80, "fp16"), (90, "fp32")}


def test_no_register_spills():
    spilling = [f"{_name(r)}: regs {r['reg']} stack {r['stack']} local {r.get('local', 0)}"
                for r in compiled() if r["stack"] or r.get("local", 0)]
    assert not spilling, "\n".join(spilling)


def test_shared_memory_fits():
    limit = {90: 227 * 1024, 80: 163 * 1024}
    over = [f"{_name(r)}: {r['shared_bytes']} B" for r in compiled()
            if r["shared_bytes"] > limit[r["arch"]]]
    assert not over, "\n".join(over)


def test_tensor_cores():
    convs = [r for r in compiled() if r["kind"] in ("fwd", "dgrad", "wgrad")]
    no_wgmma = [_name(r) for r in convs if r["arch"] == 90 and r["dtype"] == "bf16"
                and not r["wgmma"]]
    assert not no_wgmma, "sm_90 bf16 conv kernels without wgmma:\n" + "\n".join(no_wgmma)
    no_mma = [_name(r) for r in convs if r["arch"] == 80 and not r["mma"]]
    assert not no_mma, "sm_80 conv kernels without mma.sync:\n" + "\n".join(no_mma)
