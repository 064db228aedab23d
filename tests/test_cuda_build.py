"""nvcc compiles every csrc/cuda/*.cu standalone (CUDA headers + csrc/common only, no torch)
for sm_90 and sm_80, and ptxas reports no register spills for any kernel. Needs nvcc, not a GPU.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import run_host_program

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from cuda_toolkit import (  # noqa: E402  (nvcc runs cached under build/nvcc_cache)
    TORCH_NVCC_FLAGS,
    cache_key,
    compile_cu,
    find_nvcc,
    parse_ptxas,
)

CU_FILES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
ARCHS = ["sm_90", "sm_80"]

NVCC = find_nvcc()  # the toolkit setup.py builds with (cuda_toolkit.py)
pytestmark = [
    pytest.mark.skipif(not CU_FILES, reason="no CUDA sources in csrc/cuda"),
    pytest.mark.skipif(NVCC is None, reason="nvcc not found (set CUDA_HOME or put nvcc on PATH)"),
]


def test_cache_key_covers_sources_and_flags(tmp_path):
    """A stale hit is impossible: any source byte, file name or flag changes the key."""
    csrc = tmp_path / "csrc"
    shutil.copytree(ROOT / "csrc" / "common", csrc / "common")
    cmd = [NVCC, "-O3", "-arch=sm_90"]
    key = cache_key(cmd, csrc)
    assert cache_key(cmd, csrc) == key
    assert cache_key([NVCC, "-O2", "-arch=sm_90"], csrc) != key
    header = csrc / "common" / "igemm.h"
    text = header.read_text()
    header.write_text(text + " ")
    assert cache_key(cmd, csrc) != key
    header.write_text(text)
    assert cache_key(cmd, csrc) == key
    header.rename(csrc / "common" / "igemm2.h")
    assert cache_key(cmd, csrc) != key


def dump_sass(cuobjdump: str, cubin: Path) -> str:
    """cuobjdump's SASS of a cached cubin, cached next to it (per cuobjdump binary)."""
    tag = hashlib.sha256(Path(cuobjdump).read_bytes()).hexdigest()[:12]
    cached = cubin.parent / f"sass-{tag}.txt"
    if cached.is_file():
        return cached.read_text()
    res = subprocess.run([cuobjdump, "--dump-sass", str(cubin)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    cached.write_text(res.stdout)
    return res.stdout


@pytest.fixture(scope="module")
def nvcc_outputs():
    """(src, arch) -> (ptxas log, cubin) for every .cu and arch, compiled in parallel."""
    jobs = [(src, arch) for src in CU_FILES for arch in ARCHS]
    with ThreadPoolExecutor(max_workers=max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
        outs = list(pool.map(lambda job: compile_cu(*job, nvcc=NVCC), jobs))
    return dict(zip(jobs, outs))


@pytest.fixture(scope="module")
def ptxas_reports(nvcc_outputs):
    return {job: log for job, (log, _) in nvcc_outputs.items()}


def test_cu_files_include_no_torch_headers():
    # A torch header costs ~50 s of nvcc time per file (docs/design.md §4).
    for src in CU_FILES:
        for inc in re.findall(r'#\s*include\s*[<"]([^>"]+)[>"]', src.read_text()):
            assert not inc.startswith(("torch/", "ATen/", "c10/", "pybind11/")), (src.name, inc)


# Compiling every kernel file for both archs takes minutes cold: `make test` only, with the
# SASS checks and the harness build below.
@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("src", CU_FILES, ids=lambda p: p.name)
def test_no_register_spills(ptxas_reports, src, arch):
    kernels = parse_ptxas(ptxas_reports[(src, arch)])
    assert kernels, f"no ptxas report for {src.name} ({arch})"
    spilled = {k: v for k, v in kernels.items() if v["spill_stores"] or v["spill_loads"]}
    assert not spilled, f"{src.name} ({arch}) spills registers: {spilled}"
    for name, info in sorted(kernels.items()):
        print(f"{arch} {info['registers']:3d} regs {info['smem']:6d} B smem  {name}")


def _setup_report(**env) -> str:
    """What setup.py says it would build (``--name`` configures without compiling)."""
    import sys

    full = {**os.environ, **env}
    res = subprocess.run([sys.executable, "setup.py", "--name"], cwd=ROOT, env=full,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    return "\n".join(line for line in res.stdout.splitlines() if "[fused_resnet setup]" in line)


def test_setup_finds_real_toolkit_and_archs():
    import torch

    if not torch.version.cuda:
        pytest.skip("torch is not a CUDA build: setup.py builds the CPU kernels only")
    env = {"FUSED_RESNET_CUDA_ARCHS": "8.0;9.0+PTX", "FUSED_RESNET_SKIP_CUDA": "0"}
    report = _setup_report(**env)
    m = re.search(r"CUDA: yes \(toolkit (\S+)", report)
    assert m, report
    with open(os.path.join(m.group(1), "bin", "nvcc"), "rb") as f:  # the binary, not a wrapper
        assert f.read(4) == b"\x7fELF", report
    flags = re.search(r"CUDA archs: (.*) -> (.*)", report)
    assert flags and flags.group(1) == "8.0;9.0+PTX", report
    assert flags.group(2).split() == ["-gencode=arch=compute_80,code=sm_80",
                                      "-gencode=arch=compute_90,code=sm_90",
                                      "-gencode=arch=compute_90,code=compute_90"], report
    assert "CUDA: no (FUSED_RESNET_SKIP_CUDA=1)" in _setup_report(FUSED_RESNET_SKIP_CUDA="1")


# csrc/common is shared by host and device code: check its math on the host (g++, where
# FR_HOST_DEVICE is empty) and that nvcc accepts every helper in device code.
COMMON_CHECK = r"""
#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include "common/bn.h"
#include "common/fusion.h"
#include "common/igemm.h"
#include "common/layout.h"
#include "common/stats.h"
using namespace fr;
#define CHECK(cond)                                          \
  do {                                                       \
    if (!(cond)) {                                           \
      std::printf("FAILED line %d: %s\n", __LINE__, #cond); \
      std::exit(1);                                          \
    }                                                        \
  } while (0)

#ifdef __CUDACC__
__global__ void device_instantiation(float* out, double* dout) {
  ConvShape s = make_conv_shape(2, 8, 9, 9, 4, 3, 3, 2, 1, 1, 1);
  int64_t n, p, q;
  decode_m(s, threadIdx.x, &n, &p, &q);
  out[0] = float(fwd_input_offset(s, n, p, q, 1, 1, 3) + krsc_offset(s, 1, 2, 0, 3) +
                 dgrad_phase(s, 1).p0 + nhwc_offset(n, p, q, 0, 9, 9, 8));
  Welford<float> a, b;
  welford_add(a, out[1]);
  b = welford_merge(a, welford_run<float>([&](int64_t i) { return out[i]; }, 3));
  float sc, sh, ca, cb, cc;
  bn_scale_shift(b.mean, bn_invstd(b.m2, b.count, 1e-5f), out, out, 0, &sc, &sh);
  bn_bwd_coeffs(sc, sh, 4.f, sc, b.mean, sc, true, &ca, &cb, &cc);
  out[2] = epilogue(prologue(ca, out, out, true, 0), out, out, true, cb, out, out, true, 0) +
           relu_bwd(cc, sc) + bn_bwd_apply(ca, cb, cc, sc, sh) +
           bn_running_update(sc, sh, bn_momentum_factor(false, 0.1f, 3)) + bn_unbiased_var(sh, 7);
  dout[0] = relu(dout[1]);
}
#endif

int main() {
  // Forward taps vs brute force; dgrad inverts the forward map (stride holes excluded).
  for (int64_t stride = 1; stride <= 2; ++stride)
    for (int64_t dil = 1; dil <= 2; ++dil)
      for (int64_t R = 1; R <= 3; R += 2) {
        const int64_t pad = dil * (R / 2), H = 7;
        ConvShape s = make_conv_shape(2, 6, H, H, 4, R, R, stride, pad, dil, 2);
        CHECK(s.P == (H + 2 * pad - dil * (R - 1) - 1) / stride + 1);
        for (int64_t m = 0; m < s.N * s.P * s.Q; ++m) {
          int64_t n, p, q;
          decode_m(s, m, &n, &p, &q);
          CHECK((n * s.P + p) * s.Q + q == m);
          for (int64_t r = 0; r < R; ++r) {
            const int64_t h = p * stride - pad + r * dil;
            const int64_t off = fwd_input_offset(s, n, p, q, r, 0, 5);
            const int64_t w = q * stride - pad;
            const bool inside = h >= 0 && h < H && w >= 0 && w < H;
            CHECK(inside ? off == ((n * H + h) * H + w) * 6 + 5 : off == -1);
          }
        }
        // Dgrad inverts the forward map through h's stride phase: its taps are exactly the
        // r that reach h, and p0 + i - dstep*a the output row they come from.
        for (int64_t h = 0; h < H; ++h)
          for (int64_t r = 0; r < R; ++r) {
            int64_t hits = 0, found = -1;
            for (int64_t p = 0; p < s.P; ++p)
              if (fwd_in_coord(p, r, stride, pad, dil) == h) { ++hits; found = p; }
            const DgradPhase f = dgrad_phase(s, (h % stride) * dgrad_phase_cols(s));
            const int64_t i = h / stride, a = (r - f.r0) / f.step;
            const bool tap = r >= f.r0 && (r - f.r0) % f.step == 0 && a < f.Rv;
            const int64_t p = tap ? f.p0 + i - f.dstep * a : -1;
            CHECK(hits <= 1 && (hits ? found : -1) == (p >= 0 && p < s.P ? p : -1));
          }
        CHECK(krsc_offset(s, 1, 0, 0, 0) == R * R * 3);
      }
  // Index decode: the 32-bit fast path and the 64-bit path both match the plain formula.
  for (int64_t i : {int64_t(0), int64_t(12345), int64_t(0x7fffffff), int64_t(0x80000000),
                    (int64_t(1) << 40) + 77}) {
    int64_t o, m, in;
    decode3(i, 7, 56, &o, &m, &in);
    CHECK(in == i % 56 && m == i / 56 % 7 && o == i / 56 / 7);
  }
  const Layout L{2, 3, 4};  // [outer, C, inner]
  CHECK(L.numel() == 24 && L.channel(13) == 0 && L.channel(4) == 1 && L.channel(23) == 2);
  CHECK(nhwc_offset(int64_t(1) << 20, 0, 0, 0, 1 << 10, 1 << 10, 64) == int64_t(1) << 46);

  // Welford/Chan merges match a two-pass reference when |mean| >> std.
  double data[1000], sum = 0;
  for (int i = 0; i < 1000; ++i) {
    data[i] = 1e6 + (i % 7) * 0.25 + (i % 13) * 0.125;
    sum += data[i];
  }
  const double mean = sum / 1000;
  double m2 = 0;
  for (double v : data) m2 += (v - mean) * (v - mean);
  Welford<double> all;
  for (int c = 0; c < 1000; c += 37) {
    Welford<double> part;
    const int len = c + 37 <= 1000 ? 37 : 1000 - c;
    if (c % 2)
      for (int i = c; i < c + len; ++i) welford_add(part, data[i]);
    else
      part = welford_run<double>([&](int64_t i) { return data[c + i]; }, len);
    all = welford_merge(all, part);
  }
  CHECK(all.count == 1000);
  CHECK(std::abs(all.mean - mean) < 1e-9 && std::abs(all.m2 - m2) < 1e-6 * m2);

  // ReLU keeps NaN, its backward lets a NaN pre-activation through (as torch).
  const double nan = 0.0 / 0.0;
  CHECK(relu(nan) != relu(nan) && relu(-1.0) == 0.0 && relu(2.0) == 2.0);
  CHECK(relu_bwd(3.0, nan) == 3.0 && relu_bwd(3.0, 0.0) == 0.0 && relu_bwd(3.0, 1.0) == 3.0);
  const double sc[1] = {2.0}, sh[1] = {-1.0};
  CHECK(epilogue(1.0, sc, sh, true, 4.0, sc, sh, true, 0) == 8.0);
  CHECK(epilogue<double>(-3.0, nullptr, nullptr, false, 0.0, nullptr, nullptr, true, 0) == 0.0);
  CHECK(prologue(0.25, sc, sh, true, 0) == 0.0 && prologue(0.25, sc, sh, false, 0) == -0.5);

  // BN finalize and backward coefficients.
  CHECK(std::abs(bn_invstd(8.0, 2.0, 0.0) - 0.5) < 1e-15);
  double s_, t_;
  bn_scale_shift(3.0, 0.5, sc, sh, 0, &s_, &t_);
  CHECK(s_ == 1.0 && t_ == -4.0);
  CHECK(bn_momentum_factor(false, 0.1, 4) == 0.25 && bn_momentum_factor(true, 0.1, 4) == 0.1);
  CHECK(bn_unbiased_var(10.0, 6) == 2.0 && bn_unbiased_var(10.0, 1) == 10.0);
  double a, b, c;
  bn_bwd_coeffs(4.0, 2.0, 4.0, 2.0, 1.0, 0.5, true, &a, &b, &c);
  CHECK(a == 2.0 && b == -0.5 && c == -2.0 + 0.5);
  bn_bwd_coeffs(4.0, 2.0, 4.0, 2.0, 1.0, 0.5, false, &a, &b, &c);
  CHECK(a == 2.0 && b == 0.0 && c == 0.0);
  std::printf("ok\n");
  return 0;
}
"""


def test_common_headers_host_math_and_device_compile(tmp_path):
    run = run_host_program(COMMON_CHECK, tmp_path, name="common_check")
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stdout + run.stderr
    src = tmp_path / "common_check.cpp"
    res = subprocess.run([NVCC, "-std=c++20", "-x", "cu", "-arch=sm_90", "-c",
                          f"-I{ROOT / 'csrc'}", *TORCH_NVCC_FLAGS, str(src), "-o",
                          str(tmp_path / "common_check.o")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr[-4000:]


# ---- conv_*.cu: tensor cores in the 16-bit conv kernels, a standalone sanitizer harness.
HARNESS = ROOT / "csrc" / "cuda" / "harness" / "conv_harness.cu"


def find_cuobjdump() -> str | None:
    """The toolkit's cuobjdump, else the one triton's wheel carries (docs/design.md §5)."""
    if NVCC and os.path.isfile(os.path.join(os.path.dirname(NVCC), "cuobjdump")):
        return os.path.join(os.path.dirname(NVCC), "cuobjdump")
    try:
        import triton
    except ImportError:
        return shutil.which("cuobjdump")
    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(bundled) if bundled.is_file() else shutil.which("cuobjdump")


def sass_by_function(sass: str) -> dict[str, str]:
    """cuobjdump --dump-sass output split per kernel (mangled name -> its SASS)."""
    parts = re.split(r"^\s*Function : (\S+)\s*$", sass, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


# Operand policy -> (ldmatrix flavours its SASS must show, whether it issues cp.async):
# K-major tiles use LDSM.16.M88, MN-major tiles (ldmatrix.trans) LDSM.16.MT88.
TC_POLICIES = {"FwdTc": ({"LDSM.16.M88"}, True),
               "DgradTc": ({"LDSM.16.M88", "LDSM.16.MT88"}, True),
               "WgradTc": ({"LDSM.16.MT88"}, False)}


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_conv_16bit_kernels_use_tensor_cores(nvcc_outputs, arch):
    """fwd, dgrad and wgrad in fp16 and bf16 each run HMMA fed by the expected ldmatrix."""
    srcs = [ROOT / "csrc" / "cuda" / f"conv_{op}.cu" for op in ("fwd", "dgrad", "wgrad")]
    cuobjdump = find_cuobjdump()
    if cuobjdump is None:
        pytest.skip("no cuobjdump (neither in the toolkit nor in triton's wheel)")
    funcs = {}
    for src in srcs:
        funcs.update(sass_by_function(dump_sass(cuobjdump, nvcc_outputs[(src, arch)][1])))
    for policy, (ldsm, cp_async) in TC_POLICIES.items():
        tc = {n: body for n, body in funcs.items() if "tc_conv_kernel" in n and policy in n}
        # One instantiation each for __half (6__half) and __nv_bfloat16.
        assert any("6__half" in n for n in tc) and any("nv_bfloat16" in n for n in tc), (
            policy, list(funcs))
        for name, body in tc.items():
            ops = re.findall(r"\b(HMMA|LDSM|LDGSTS)(\.[\w.]*)?", body)
            counts = {op: sum(o == op for o, _ in ops) for op in ("HMMA", "LDSM", "LDGSTS")}
            flavours = {m.group(0) for m in re.finditer(r"LDSM\.16\.MT?88", body)}
            print(f"{arch} {policy} {name[:60]}: {counts} {sorted(flavours)}")
            assert counts["HMMA"] > 0, f"{name} ({arch}) has no HMMA: {counts}"
            assert flavours == ldsm, f"{name} ({arch}): ldmatrix {flavours}, expected {ldsm}"
            assert (counts["LDGSTS"] > 0) == cp_async, f"{name} ({arch}) cp.async: {counts}"


@pytest.mark.slow
def test_conv_harness_compiles(tmp_path):
    """csrc/cuda/harness/conv_harness.cu (compute-sanitizer target) builds as a program."""
    res = subprocess.run([NVCC, "-std=c++20", "-O2", "-arch=sm_90", f"-I{ROOT / 'csrc'}",
                          str(HARNESS), "-o", str(tmp_path / "conv_harness")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr[-4000:]


# The implicit-GEMM views of common/igemm.h that the CUDA dgrad / wgrad kernels use (only the
# forward has a CPU twin op): on the host, against direct convolution loops. The operand
# transform maps 0 to 1, so a padded tap or stride hole that is not zeroed after it shows up.
IGEMM_CHECK = r"""
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include "common/igemm.h"
using namespace fr;
#define CHECK(cond)                                                    \
  do {                                                                 \
    if (!(cond)) {                                                     \
      std::printf("FAILED line %d: %s (case %d)\n", __LINE__, #cond, kase); \
      std::exit(1);                                                    \
    }                                                                  \
  } while (0)

static unsigned seed = 7;
static double rnd() { seed = seed * 1664525u + 1013904223u; return (seed >> 8) / 16777216.0 - 0.5; }
static bool close(double a, double b) { return std::fabs(a - b) <= 1e-12 * (1 + std::fabs(b)); }

int main() {
  int kase = 0;
  for (int hw = 0; hw < 2; ++hw)  // 7x6, and 2x1: smaller than some strides
  for (int64_t stride = 1; stride <= 3; ++stride)  // 3: phases whose tap step is 3
    for (int64_t dil = 1; dil <= 2; ++dil)
      for (int64_t R = 1; R <= 3; R += 2)
        for (int64_t pad = 0; pad <= dil * (R / 2) + 1; pad += 1 + dil * (R / 2)) {
          ++kase;
          const int64_t N = 2, C = 3, H = hw ? 2 : 7, W = hw ? 1 : 6, K = 5;
          ConvShape s = make_conv_shape(N, C, H, W, K, R, R + (R > 1), stride, pad, dil, 1);
          if (s.P < 1 || s.Q < 1) continue;
          const int64_t P = s.P, Q = s.Q, S = s.S, kd = fwd_gemm_k(s);
          std::vector<double> x(N * H * W * C), w(K * R * S * C), dy(N * P * Q * K);
          for (auto& v : x) v = rnd();
          for (auto& v : w) v = rnd();
          for (auto& v : dy) v = rnd();
          // Direct loops (transform t(v) = v + 1 applied to in-range taps only).
          std::vector<double> y(N * P * Q * K, 0), dx(N * H * W * C, 0), dw(K * R * S * C, 0);
          for (int64_t n = 0; n < N; ++n)
            for (int64_t p = 0; p < P; ++p)
              for (int64_t q = 0; q < Q; ++q)
                for (int64_t k = 0; k < K; ++k)
                  for (int64_t r = 0; r < R; ++r)
                    for (int64_t t = 0; t < S; ++t)
                      for (int64_t c = 0; c < C; ++c) {
                        const int64_t h = p * stride - pad + r * dil;
                        const int64_t ww = q * stride - pad + t * dil;
                        if (h < 0 || h >= H || ww < 0 || ww >= W) continue;
                        const int64_t xi = ((n * H + h) * W + ww) * C + c;
                        const int64_t wi = ((k * R + r) * S + t) * C + c;
                        const int64_t yi = ((n * P + p) * Q + q) * K + k;
                        y[yi] += (x[xi] + 1) * w[wi];
                        dx[xi] += (dy[yi] + 1) * w[wi];
                        dw[wi] += dy[yi] * (x[xi] + 1);
                      }
          auto tx = [&](int64_t off, int64_t) { return x[off] + 1; };
          auto tdy = [&](int64_t off, int64_t) { return dy[off] + 1; };
          // Forward view.
          CHECK(fwd_gemm_m(s) == N * P * Q && kd == R * S * C);
          for (int64_t m = 0; m < fwd_gemm_m(s); ++m) {
            int64_t n, p, q;
            decode_m(s, m, &n, &p, &q);
            for (int64_t k = 0; k < K; ++k) {
              double a = 0;
              for (int64_t i = 0; i < kd; ++i)
                a += fwd_a_elem<double>(s, n, p, q, i, tx) * w[k * kd + i];
              CHECK(close(a, y[m * K + k]));
            }
          }
          // Dgrad view, per stride phase: rows the phase's input pixels (together: every
          // pixel exactly once), columns input channels, reduction (phase taps, k).
          std::vector<int> seen(N * H * W, 0);
          for (int64_t z = 0; z < dgrad_phases(s); ++z) {
            const DgradPhase f = dgrad_phase(s, z);
            CHECK(dgrad_gemm_m(s, f) <= dgrad_gemm_m_max(s));
            for (int64_t m = 0; m < dgrad_gemm_m(s, f); ++m) {
              int64_t n, h, ww, i, j;
              decode_in_pixel(s, f, m, &n, &h, &ww);
              decode_phase_row(f, m, &n, &i, &j);
              CHECK(n < N && h < H && ww < W && h % stride == f.ph && ww % stride == f.pw);
              const int64_t px = (n * H + h) * W + ww;
              ++seen[px];
              for (int64_t c = 0; c < C; ++c) {
                double a = 0;
                for (int64_t k = 0; k < dgrad_gemm_k(s, f); ++k)
                  a += dgrad_a_elem<double>(s, f, n, i, j, k, tdy) *
                       w[dgrad_b_offset(s, f, c, k)];
                CHECK(close(a, dx[px * C + c]));
              }
            }
          }
          for (int v : seen) CHECK(v == 1);
          // Wgrad view: rows output channels, columns (r, s, c), reduction output pixels;
          // stored KRSC and KCRS.
          for (int64_t k = 0; k < K; ++k)
            for (int64_t j = 0; j < kd; ++j) {
              double a = 0;
              for (int64_t i = 0; i < fwd_gemm_m(s); ++i)
                a += dy[i * K + k] * wgrad_b_elem<double>(s, j, i, tx);
              CHECK(close(a, dw[k * kd + j]));
              CHECK(wgrad_out_offset(s, k, j, true) == k * kd + j);
              int64_t r, t, c;
              decode_k(s, j, C, &r, &t, &c);
              CHECK(wgrad_out_offset(s, k, j, false) == ((k * C + c) * R + r) * S + t);
            }
        }
  std::printf("ok %d\n", kase);
  return 0;
}
"""


def test_igemm_views_match_direct_convolution(tmp_path):
    run = run_host_program(IGEMM_CHECK, tmp_path, name="igemm_check")
    assert run.returncode == 0 and run.stdout.startswith("ok"), run.stdout + run.stderr
