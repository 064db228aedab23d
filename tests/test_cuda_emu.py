"""The CUDA kernels executed on the CPU by the emulator (csrc/cuda/emu, see its README.md).

* The emulator's self-test kernels: a correct one passes, each deliberate fault is reported
  with its message, under every schedule.
* The conv harness (csrc/cuda/harness/conv_harness.cu: forward, dgrad, wgrad; fp16, bf16,
  fp32; tensor-core and SIMT paths) passes under every schedule, and under ASan + UBSan.
* Mutated copies of the real kernels (a removed pipeline barrier, a short cp.async wait,
  ldmatrix without .trans) make the harness fail: the emulator sees those bugs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from cuda_toolkit import cuda_include  # noqa: E402

CSRC = ROOT / "csrc"
EMU = CSRC / "cuda" / "emu"
SCHEDULES = ("lockstep", "warp-greedy", "reversed")
SANITIZERS = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all",
              "-fno-omit-frame-pointer")


def emu_flags(sanitize: bool) -> list[str]:
    inc = cuda_include()
    cxx = shutil.which("g++")
    if inc is None or cxx is None:
        pytest.skip("needs g++ and the CUDA toolkit headers")
    opt = ["-O1", "-g", *SANITIZERS] if sanitize else ["-O2"]
    return [cxx, "-std=c++20", *opt, "-Wall", "-Wno-unknown-pragmas", "-DFR_CUDA_EMULATOR",
            f"-I{CSRC}", f"-I{inc}"]


def build_emulated(out_dir: Path, name: str, source: Path, sanitize: bool = False,
                   include_first: Path | None = None) -> Path:
    """Compile a .cu file as host C++ against the emulator; cached by flags and source text."""
    flags = emu_flags(sanitize)
    pre = [f"-I{include_first}"] if include_first else []
    srcs = sorted([*CSRC.glob("cuda/*.*"), *CSRC.glob("common/*.h"), *EMU.glob("*.*"), source])
    if include_first:
        srcs += sorted(include_first.rglob("*.*"))
    key = hashlib.sha256(" ".join(flags + pre).encode())
    for s in srcs:
        key.update(s.read_bytes())
    exe = out_dir / f"{name}-{key.hexdigest()[:16]}"
    if exe.exists():
        return exe
    cmd = [*flags[:1], *pre, *flags[1:], "-x", "c++", "-include", "cuda/emu/emu.h", str(source),
           "-x", "none", str(EMU / "runtime.cpp"), "-o", str(exe)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    return exe


def run(exe: Path, *args: str, schedule: str = "lockstep") -> subprocess.CompletedProcess:
    env = dict(os.environ, FUSED_RESNET_CUDA_EMULATOR_SCHEDULE=schedule)
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=600,
                          env=env)


@pytest.fixture(scope="session")
def emu_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cuda_emu")


@pytest.fixture(scope="session")
def selftest(emu_dir) -> Path:
    return build_emulated(emu_dir, "selftest", EMU / "selftest.cu")


# ------------------------------------------------------------------------ self-test kernels
# (case, what the emulator or the result check must say)
FAULTS = [
    ("missing-barrier", "NaN: poisoned memory was read"),
    ("missing-wait", "NaN: poisoned memory was read"),
    ("partial-warp", "deadlock: __shfl_down_sync at csrc/cuda/emu/selftest.cu"),
    ("shared-oob", "shared-memory store out of bounds, 0 bytes past the end of buf"),
    ("misaligned-cp-async", "both addresses must be 16-byte aligned"),
    ("split-barrier", "threads wait at different barriers"),
    ("ldmatrix-global", "is not inside a shared-memory array"),
    ("oversized-grid", "grid dimensions exceed"),
    ("oversized-block", "more than 1024 threads per block"),
]


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_selftest_correct_kernel_passes(selftest, schedule):
    res = run(selftest, "ok", schedule=schedule)
    assert res.returncode == 0 and "result ok" in res.stdout, res.stdout + res.stderr


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("case,message", FAULTS, ids=[c for c, _ in FAULTS])
def test_selftest_fault_is_caught(selftest, case, message, schedule):
    res = run(selftest, case, schedule=schedule)
    out = res.stdout + res.stderr
    assert res.returncode != 0 and message in out, out
    if "kernel fault" in out:  # a kernel fault names the kernel and CTA
        assert "kernel " in out and "CTA (0,0,0)" in out, out


# ------------------------------------------------------------------------ the conv harness
HARNESS = CSRC / "cuda" / "harness" / "conv_harness.cu"


@pytest.mark.slow
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_conv_harness_passes(emu_dir, schedule):
    res = run(build_emulated(emu_dir, "conv_harness", HARNESS), schedule=schedule)
    assert res.returncode == 0 and "all ok" in res.stdout, res.stdout[-4000:] + res.stderr
    cases = [line for line in res.stdout.splitlines() if line.startswith("ok   ")]
    assert len(cases) == 51, res.stdout  # 17 cases x 3 dtypes


@pytest.mark.slow
def test_conv_harness_under_asan_ubsan(emu_dir):
    exe = build_emulated(emu_dir, "conv_harness_asan", HARNESS, sanitize=True)
    res = run(exe, schedule="warp-greedy")
    assert res.returncode == 0 and "all ok" in res.stdout, res.stdout[-4000:] + res.stderr
    assert "runtime error" not in res.stderr and "Sanitizer" not in res.stderr, res.stderr


@pytest.mark.slow
def test_shared_oob_caught_by_asan(emu_dir):
    """Under ASan every byte outside a live shared array is poisoned: the access itself is
    reported (reads too), not only a changed guard byte when the CTA ends."""
    exe = build_emulated(emu_dir, "selftest_asan", EMU / "selftest.cu", sanitize=True)
    assert "result ok" in run(exe, "ok").stdout
    res = run(exe, "missing-barrier")  # reads inside the arrays: poison values, no ASan error
    assert "poisoned memory was read" in res.stdout and "Sanitizer" not in res.stderr
    res = run(exe, "shared-oob")
    assert "AddressSanitizer: use-after-poison" in res.stderr, res.stderr[-4000:]


# ------------------------------------------------------------------------ mutated kernels
# (name, text in conv_tc.cuh, its replacement, schedule that must expose it)
MUTATIONS = [
    ("no-pipeline-barrier",
     "    __syncthreads();                 // ... for all threads; stage kt-1 is free again\n",
     "", "warp-greedy"),
    ("short-cp-async-wait", "cp_async_wait<TC_STAGES - 2>();", "cp_async_wait<TC_STAGES - 1>();",
     "lockstep"),
    ("ldmatrix-a-without-trans", "        ldmatrix_x4_trans(a[mi], at);",
     "        ldmatrix_x4(a[mi], at);", "lockstep"),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,old,new,schedule", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_mutated_kernel_fails_the_harness(emu_dir, name, old, new, schedule):
    text = (CSRC / "cuda" / "conv_tc.cuh").read_text()
    assert text.count(old) == 1, f"mutation {name}: the kernel source changed"
    mutant = emu_dir / f"mutant-{name}"
    (mutant / "cuda").mkdir(parents=True, exist_ok=True)
    (mutant / "cuda" / "conv_tc.cuh").write_text(text.replace(old, new))
    exe = build_emulated(emu_dir, f"harness-{name}", HARNESS, include_first=mutant)
    res = run(exe, schedule=schedule)
    assert res.returncode != 0 and "FAIL" in res.stdout, res.stdout[-3000:]
