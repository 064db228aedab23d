"""Ahead-of-time compilation of the Triton kernels for every GPU family, without a GPU
(docs/design.md §5): ``python -m fused_resnet.triton.aot --check`` compiles every table
config and fallback for sm_80/sm_90/sm_100/sm_120 in bf16, fp16 and fp32 and fails on a
register spill, on shared memory past the family's limit, or past the estimate the
launcher filters configs with; the sm_90 16-bit convs use wgmma, the sm_80 ones mma.

The compile runs in a subprocess without TRITON_INTERPRET (kernels decorated under the
interpreter cannot be compiled); results are cached under build/triton-aot, keyed by the
kernel sources, the job and the Triton version, so a rerun of unchanged code is fast.
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
needs_cuobjdump = pytest.mark.skipif(not CUOBJDUMP.exists(),
                                     reason=f"triton's cuobjdump not found at {CUOBJDUMP}")


def _aot(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-W", "ignore", "-m", "fused_resnet.triton.aot",
                           *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=3600)


@functools.cache
def compiled() -> list[dict]:
    proc = _aot()
    assert proc.returncode == 0, f"AOT compile failed:\n{proc.stderr[-4000:]}"
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def _name(r: dict) -> str:
    return f"{r['kind']} {r['target']} {r['dtype']} {r['shape']} {r.get('config', '')}"


@pytest.mark.slow
@needs_cuobjdump
def test_aot_check_passes():
    proc = _aot("--check")
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0, "\n".join(lines[-40:]) + proc.stderr[-2000:]
    assert lines[-1].startswith("aot check: ") and lines[-1].endswith(" 0 failing"), lines[-1]


@pytest.mark.slow
@needs_cuobjdump
def test_every_kernel_family_and_dtype_compiles():
    from fused_resnet.triton import aot

    results = compiled()
    assert {r["kind"] for r in results} == {"fwd", "dgrad", "wgrad", "merge_stats",
                                            "column_sum", "block_end", "block_end_bwd",
                                            "bn_finalize", "bn_backward",
                                            "bn_backward_sums"}
    assert {(r["target"], r["dtype"]) for r in results if r["kind"] == "fwd"} == \
        {(t, d) for t in aot.AOT_TARGETS for d in aot.DTYPES}


@pytest.mark.slow
@needs_cuobjdump
def test_tensor_cores():
    convs = [r for r in compiled() if r["kind"] in ("fwd", "dgrad", "wgrad")]
    no_wgmma = [_name(r) for r in convs if r["target"] == "sm90" and r["dtype"] != "fp32"
                and r["constexprs"]["BLOCK_M"] >= 64 and not r["wgmma"]]
    assert not no_wgmma, "sm_90 16-bit conv kernels without wgmma:\n" + "\n".join(no_wgmma)
    no_mma = [_name(r) for r in convs if r["target"] == "sm80" and not r["mma"]]
    assert not no_mma, "sm_80 conv kernels without mma.sync:\n" + "\n".join(no_mma)


def test_every_table_config_and_fallback_is_a_job():
    """The check compiles what the launcher can choose: every table entry and fallback of
    each compiled family, in each dtype."""
    from fused_resnet.triton import aot, configs

    jobs = {(j["target"], j["dtype"], j["kind"], j.get("config")) for j in aot.jobs()}
    for (fam, dc, kind, *_), cfg in configs.TABLE.items():
        if fam in aot.AOT_TARGETS:
            for dtype, cls in aot.DTYPES.items():
                if cls == dc:
                    assert (fam, dtype, kind, str(cfg)) in jobs
    for kind, fallbacks in configs.FALLBACKS.items():
        for cfg in fallbacks:
            assert ("sm120", "fp32", kind, str(cfg)) in jobs


def test_check_flags_each_fault():
    """problems() fails a spill, shared memory past the target, an undercounting
    estimate, a division in a K loop and an unfenced ticket, and passes a clean result."""
    from fused_resnet.triton import aot, configs

    ok = {"kind": "fwd", "target": "sm90", "stack": 0, "local": 0, "shared_bytes": 1000,
          "smem_estimate": 2000}
    assert aot.problems(ok) == []
    assert "spills" in aot.problems({**ok, "stack": 8})[0]
    over = configs.TARGETS["sm90"].shared_limit + 1
    assert any("> 232448 B" in p for p in aot.problems({**ok, "shared_bytes": over,
                                                        "smem_estimate": over}))
    assert "smem_estimate" in aot.problems({**ok, "shared_bytes": 2001})[0]
    assert "in the K loop" in aot.problems({**ok, "k_loop_divisions": 2})[0]
    assert "without a CTA barrier" in aot.problems({**ok, "unfenced_releases": 1})[0]


def test_unfenced_releases_are_found():
    """A ticket's release atomic needs a bar.sync between the stores and it."""
    from fused_resnet.triton import aot

    store, bar = "@%p1 st.global.b32 [ %rd5 + 0 ], { %r1 };", "bar.sync 	0;"
    atom = "@%p2 atom.global.gpu.acq_rel.add.u32 %r2, [ %rd1 + 0 ], %r3;"
    assert aot.unfenced_releases("\n".join([store, atom])) == [atom]
    assert aot.unfenced_releases("\n".join([store, bar, atom])) == []
    relaxed = atom.replace(".acq_rel", ".relaxed")  # counts a batch: publishes nothing
    assert aot.unfenced_releases("\n".join([store, relaxed])) == []


def test_cache_key_covers_sources_job_and_triton(monkeypatch):
    from fused_resnet.triton import aot

    job = aot.jobs()[0]
    path = aot._cache_path(job)
    assert path == aot._cache_path(dict(job))
    assert path != aot._cache_path({**job, "num_stages": job["num_stages"] + 1})
    monkeypatch.setattr(aot, "_sources_digest", lambda: "other sources or triton")
    assert path != aot._cache_path(job)
    assert str(path).startswith(str(aot.CACHE_DIR))


def test_no_division_in_any_conv_k_loop():
    """The K loops of conv forward, dgrad and wgrad carry their indices from step to step:
    no integer division or remainder inside the loop around tl.dot (Triton IR of a 3x3
    kernel of each flag set, for sm_80 and sm_90)."""
    proc = _aot("--k-loops")
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0, "\n".join(lines[-40:]) + proc.stderr[-2000:]
    assert lines[-1].endswith(" 0 failing") and "conv kernels" in lines[-1], lines[-1]


LOOP_IR = """\
  tt.func public @k(%n: i32, %m: i32) {
    %q0 = arith.divsi %n, %m : i32
    %r = scf.for %i = %c0 to %n step %c1 iter_args(%acc = %z) -> (tensor<16x16xf32>) : i32 {
      %q = arith.remsi %i, %m : i32
      %v = scf.if %p -> (i32) {
        %d = arith.divui %i, %m : i32
        scf.yield %d : i32
      } else {
        scf.yield %i : i32
      }
      %acc2 = tt.dot %a, %b, %acc : tensor<16x16xf16> * tensor<16x16xf16> -> tensor<16x16xf32>
      scf.yield %acc2 : tensor<16x16xf32>
    }
    %s = scf.for %j = %c0 to %n step %c1 iter_args(%t = %c0) -> (i32) : i32 {
      %e = arith.remsi %j, %m : i32
      scf.yield %e : i32
    }
    tt.return
  }
"""


def test_k_loop_divisions_are_found_only_in_dot_loops():
    """The IR scan finds divisions in a loop with tl.dot (nested regions included), not
    before it nor in a loop without a dot."""
    from fused_resnet.triton import aot

    found = aot.k_loop_divisions(LOOP_IR)
    assert [line.split(" = ")[0] for line in found] == ["%q", "%d"], found
    clean = LOOP_IR.replace("%q = arith.remsi", "%q = arith.addi").replace("arith.divui",
                                                                           "arith.muli")
    assert aot.k_loop_divisions(clean) == []
