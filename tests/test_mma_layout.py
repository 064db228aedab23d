"""Host emulation of the tensor-core conv kernel's warp-level data layout (no GPU needed).

csrc/cuda/mma_layout.h holds, as pure integer functions, everything that decides where an
operand element sits in shared memory and which lane finds it in which register. A small C++20
program (MMA_CHECK below, built with g++ against csrc/) emulates one BK = 32 stage of the CTA in
csrc/cuda/conv_tc.cuh (tc_conv_kernel / tc_compute): the loader slots stage A and B, every
ldmatrix.x4[.trans] and mma.sync.m16n8k16 of the 4 warps runs as the PTX ISA defines it, and the
accumulators are scattered to the 64x64 tile as the kernel's store loop does. It checks

  [loader]  every loader slot kind (KMajorSlot, kmajor_copy_slot, MNMajorSlot): 128 threads x 2
            chunks of 8 elements cover each 8-element chunk of the 64 x 32 tile exactly once, at
            the offset the layout function gives, 16-byte aligned, inside kStageElems;
  [staging] the staged tiles hold A(row, k) / B(row, k) at kmajor_at / mnmajor_at(row, k);
  [gemm]    for (A, B) in {K-major, MN-major}^2 the scattered tile is A * B^T exactly, every
            element written once; every ldmatrix row address lies inside the stage;
  [banks]   each 8x8 matrix of each ldmatrix.x4: 8 row addresses 16-byte aligned, in 8
            distinct 16-byte bank groups (4 of the 32 4-byte banks each): no bank conflicts;
            likewise the loaders' 16-byte stores of each 8 consecutive threads.

The kernel's GEMM convention: C[m][n] = sum_k A[m][k] * B[n][k]; an operand stage is K-major
(row, k) -> kmajor_at(row, k) or MN-major (row, k) -> mnmajor_at(row, k).

PTX ISA definitions used (NVIDIA "Parallel Thread Execution ISA", docs.nvidia.com/cuda/
parallel-thread-execution, section numbers as in the PTX ISA 9.0 document; not the comments in
mma_layout.h):

* 9.7.14.5.15 "Warp-level matrix load instruction: ldmatrix" (.m8n8, .b16):
  - "The eight addresses required for each matrix are provided by eight threads ... Each address
    corresponds to the start of a matrix row. Addresses addr0-addr7 correspond to the rows of the
    first matrix, addresses addr8-addr15 correspond to the rows of the second matrix, and so on."
    For .x4: threads 0-7 give addr0-addr7, 8-15 addr8-addr15, 16-23 addr16-addr23, 24-31
    addr24-addr31. So lane l gives the address of row l % 8 of matrix l / 8.
  - "When reading 8x8 matrices, a group of four consecutive threads loads 16 bytes. The matrix
    addresses must be naturally aligned accordingly." (row address % 16 bytes == 0)
  - "Each thread in a warp loads fragments of a row, with thread 0 receiving the first fragment in
    its register r, and so on. A group of four threads loads an entire row of the matrix"
    (Figure 104, ldmatrix fragment layout for one 8x8 matrix with 16-bit elements): lane l
    receives row l / 4, elements 2 * (l % 4) and 2 * (l % 4) + 1 (lower half = lower column).
  - "When .num = .x2, the elements of the second matrix are loaded in the next destination
    register in each thread ... when .num = .x4, elements of the third and fourth matrices are
    loaded in the subsequent destination registers": register j holds matrix j.
  - "Optional qualifier .trans indicates that the matrix is loaded in column-major format": each
    address still starts 16 contiguous bytes (a stored row), and lane l receives row l / 4 of the
    transposed matrix, i.e. stored elements (row 2 * (l % 4) + i, column l / 4), i = 0, 1.
* 9.7.14.5.8 "Matrix Fragments for mma.m16n8k16 with floating point type" (.f16 / .bf16 inputs;
  "Elements (low to high)": each .f16x2 / 32-bit register holds two elements, the lower-index one
  in the lower half), with groupID = %laneid >> 2, threadID_in_group = %laneid % 4:
  - Multiplicand A (16x16, row-major for .row), a0..a7 in four registers:
      row = groupID for ai where 0 <= i < 2 || 4 <= i < 6, groupID + 8 otherwise
      col = threadID_in_group * 2 + (i & 0x1) for i < 4, ... + 8 for i >= 4
  - Multiplicand B (16x8, K x N, .col), b0..b3 in two registers:
      row = threadID_in_group * 2 + (i & 0x1) for bi where i < 2, ... + 8 for i >= 2
      col = groupID
  - Accumulators C / D (.f32), c0..c3 in four registers:
      row = groupID for ci where i < 2, groupID + 8 for i >= 2
      col = threadID_in_group * 2 + (i & 0x1)
  - mma computes D = A * B + C (16x8 += 16x16 * 16x8).
* Shared memory banks: 32 banks of 4 bytes; a 16-byte aligned row spans the 4 banks of the
  16-byte group (byte address / 16) % 8, so the 8 rows of one 8x8 matrix are conflict-free iff
  their groups are distinct (stage bases are multiples of 16 bytes: a common shift of whole
  groups keeps them distinct).

test_mma_layout_detects_mutation proves the check is sensitive: it compiles the same program
against patched copies of the headers (a broken fragment address, accumulator row, loader slot,
padding) and expects the named check to fail.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import run_host_program

ROOT = Path(__file__).resolve().parents[1]
HEADERS = ("common/macros.h", "cuda/mma_layout.h")

MMA_CHECK = r"""
#include <bit>
#include <cstdint>
#include <cstdio>
#include <vector>
#include "cuda/mma_layout.h"
using namespace fr::cuda::mma;
using u16 = std::uint16_t;
using u32 = std::uint32_t;

static const char* g_section = "";
static long g_failures = 0;
#define CHECK(cond, ...)                                                      \
  do {                                                                        \
    if (!(cond) && ++g_failures <= 25) {                                      \
      std::printf("FAILED [%s] line %d: %s | ", g_section, __LINE__, #cond); \
      std::printf(__VA_ARGS__);                                               \
      std::printf("\n");                                                      \
    }                                                                         \
  } while (0)

// bf16 bit patterns (the kernel's 16-bit types move as .b16): exact for small integers.
static u16 enc(float v) { return u16(std::bit_cast<u32>(v) >> 16); }
static float dec(u16 h) { return std::bit_cast<float>(u32(h) << 16); }
static const u16 kPoison = enc(4096.f);  // padding / unwritten smem: poisons any result

constexpr int kRows = kTile, kK = kBK;
enum Kind { kFused, kCopy, kMN };
static const char* kind_name(Kind k) {
  return k == kFused ? "KMajorSlot" : k == kCopy ? "kmajor_copy_slot" : "MNMajorSlot";
}
static int layout_at(bool mn, int row, int k) {
  return mn ? mnmajor_at(row, k) : kmajor_at(row, k);
}

// Chunk c (0, 1) of thread tid, as the kernel's stash / cp.async writes it: 8 elements at
// smem offset off, element e being (row, k + e) (K-major) or (row + e, k) (MN-major).
struct Chunk {
  int off, row, k;
  bool mn;
};
static Chunk chunk(Kind kind, int tid, int c) {
  if (kind == kFused) {
    const KMajorSlot s = KMajorSlot::of(tid);
    return {s.at(c), s.row, s.kc + 8 * c, false};
  }
  if (kind == kCopy) {
    int row = -1, kc = -1;
    kmajor_copy_slot(tid, c, &row, &kc);
    return {kmajor_at(row, kc), row, kc, false};
  }
  const MNMajorSlot s = MNMajorSlot::of(tid);
  return {s.at(c), s.rc, s.kr + 16 * c, true};
}
static void elem(const Chunk& ch, int e, int* r, int* k) {
  *r = ch.mn ? ch.row + e : ch.row;
  *k = ch.mn ? ch.k : ch.k + e;
}

static void check_loader(Kind kind) {
  g_section = "loader";
  std::vector<int> logical(kRows * kK, 0), phys(kStageElems, 0);
  for (int tid = 0; tid < kThreads; ++tid)
    for (int c = 0; c < 2; ++c) {
      const Chunk ch = chunk(kind, tid, c);
      const bool in = ch.off >= 0 && ch.off + 8 <= kStageElems;
      CHECK(in && ch.off % 8 == 0, "%s tid %d chunk %d: offset %d (stage %d)", kind_name(kind),
            tid, c, ch.off, kStageElems);
      for (int e = 0; e < 8; ++e) {
        int r, k;
        elem(ch, e, &r, &k);
        const bool ok = r >= 0 && r < kRows && k >= 0 && k < kK;
        CHECK(ok, "%s tid %d chunk %d: element (%d, %d) outside the tile", kind_name(kind), tid,
              c, r, k);
        if (!ok || !in) continue;
        ++logical[r * kK + k];
        ++phys[ch.off + e];
        CHECK(ch.off + e == layout_at(ch.mn, r, k), "%s tid %d chunk %d: (%d, %d) at %d, not %d",
              kind_name(kind), tid, c, r, k, ch.off + e, layout_at(ch.mn, r, k));
      }
    }
  for (int r = 0; r < kRows; ++r)
    for (int k = 0; k < kK; ++k)
      CHECK(logical[r * kK + k] == 1, "%s: element (%d, %d) written %d times", kind_name(kind), r,
            k, logical[r * kK + k]);
  for (int i = 0; i < kStageElems; ++i)
    CHECK(phys[i] <= 1, "%s: smem element %d written %d times", kind_name(kind), i, phys[i]);
  // A warp's 16-byte stores are served 8 lanes at a time: each 8 lanes' chunks must fall in
  // 8 distinct 16-byte bank groups.
  g_section = "banks";
  for (int c = 0; c < 2; ++c)
    for (int t0 = 0; t0 < kThreads; t0 += 8) {
      bool seen[8] = {};
      for (int t = t0; t < t0 + 8; ++t) {
        const int grp = (chunk(kind, t, c).off * 2 / 16) % 8;
        CHECK(!seen[grp], "%s chunk %d: threads %d-%d store to bank group %d twice",
              kind_name(kind), c, t0, t0 + 7, grp);
        seen[grp] = true;
      }
    }
}

// Stage a 64 x 32 operand M[row][k] through the loader slots of `kind`.
static std::vector<u16> stage(Kind kind, const std::vector<float>& M) {
  std::vector<u16> s(kStageElems, kPoison);
  for (int tid = 0; tid < kThreads; ++tid)
    for (int c = 0; c < 2; ++c) {
      const Chunk ch = chunk(kind, tid, c);
      for (int e = 0; e < 8; ++e) {
        int r, k;
        elem(ch, e, &r, &k);
        const int at = ch.off + e;
        if (r >= 0 && r < kRows && k >= 0 && k < kK && at >= 0 && at < kStageElems)
          s[at] = enc(M[r * kK + k]);
      }
    }
  g_section = "staging";
  const bool mn = kind == kMN;
  for (int r = 0; r < kRows; ++r)
    for (int k = 0; k < kK; ++k) {
      const int at = layout_at(mn, r, k);
      const bool in = at >= 0 && at < kStageElems;
      CHECK(in && s[at] == enc(M[r * kK + k]), "%s: (%d, %d) not at offset %d", kind_name(kind),
            r, k, at);
    }
  return s;
}

// Bank conflicts of one ldmatrix.x4: per 8x8 matrix, 8 distinct 16-byte groups.
static void check_banks(const int (&addr)[32], const char* what) {
  g_section = "banks";
  for (int j = 0; j < 4; ++j) {
    bool seen[8] = {};
    for (int q = 0; q < 8; ++q) {
      const long byte = long(addr[8 * j + q]) * 2;
      CHECK(byte % 16 == 0, "%s matrix %d row %d: byte offset %ld not 16-byte aligned", what, j,
            q, byte);
      const int grp = int(((byte / 16) % 8 + 8) % 8);
      CHECK(!seen[grp], "%s matrix %d row %d: banks %d-%d already used (byte offset %ld)", what,
            j, q, 4 * grp, 4 * grp + 3, byte);
      seen[grp] = true;
    }
  }
}

// ldmatrix.sync.aligned.m8n8.x4{.trans}.shared.b16 (PTX ISA 9.7.14.5.15): lane l gives addr[l],
// the start of row l % 8 of matrix l / 8; register j of lane l holds matrix j's elements
// (row l / 4, cols 2 (l % 4), +1), or with .trans (rows 2 (l % 4), +1, col l / 4).
static void ldmatrix_x4(const std::vector<u16>& s, const int (&addr)[32], bool trans,
                        u32 (&out)[32][4], const char* what) {
  g_section = "gemm";
  bool ok = true;
  for (int l = 0; l < 32; ++l) {
    const bool in = addr[l] >= 0 && addr[l] + 8 <= kStageElems;
    CHECK(in, "%s lane %d: row address %d outside the stage (%d elements)", what, l, addr[l],
          kStageElems);
    ok = ok && in;
  }
  for (int j = 0; j < 4; ++j)
    for (int l = 0; l < 32; ++l) {
      const int g = l / 4, t = l % 4;
      u16 lo = kPoison, hi = kPoison;
      if (ok && !trans) {
        lo = s[addr[8 * j + g] + 2 * t];
        hi = s[addr[8 * j + g] + 2 * t + 1];
      } else if (ok) {
        lo = s[addr[8 * j + 2 * t] + g];
        hi = s[addr[8 * j + 2 * t + 1] + g];
      }
      out[l][j] = u32(lo) | (u32(hi) << 16);
    }
}

static u16 half_of(u32 reg, int i) { return u16(i % 2 ? reg >> 16 : reg & 0xffffu); }

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 (PTX ISA 9.7.14.5.8): rebuild A (16x16)
// and B (16x8, k x n) from the lanes' fragments, D = A * B + C, scatter D back to c0..c3.
static void mma_m16n8k16(float (&d)[32][4], const u32 (&a)[32][4], const u32 (&b)[32][2]) {
  g_section = "gemm";
  float A[16][16] = {}, B[16][8] = {};
  int ca[16][16] = {}, cb[16][8] = {};
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, t = l % 4;
    for (int i = 0; i < 8; ++i) {
      const int row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
      const int col = t * 2 + (i & 1) + (i >= 4 ? 8 : 0);
      A[row][col] = dec(half_of(a[l][i / 2], i));
      ++ca[row][col];
    }
    for (int i = 0; i < 4; ++i) {
      const int row = t * 2 + (i & 1) + (i >= 2 ? 8 : 0), col = g;
      B[row][col] = dec(half_of(b[l][i / 2], i));
      ++cb[row][col];
    }
  }
  for (int r = 0; r < 16; ++r)  // the emulator itself: the fragment maps are bijections
    for (int c = 0; c < 16; ++c)
      CHECK(ca[r][c] == 1 && (c >= 8 || cb[r][c] == 1), "emulator fragment map at (%d, %d)", r, c);
  float D[16][8];
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 8; ++c) {
      float acc = 0.f;
      for (int k = 0; k < 16; ++k) acc += A[r][k] * B[k][c];
      D[r][c] = acc;
    }
  for (int l = 0; l < 32; ++l)
    for (int i = 0; i < 4; ++i) {
      const int row = (l >> 2) + (i >= 2 ? 8 : 0), col = (l % 4) * 2 + (i & 1);
      d[l][i] += D[row][col];
    }
}

// tc_compute for one stage + the accumulator store of tc_conv_kernel, all 4 warps.
static void run_cta(bool transA, bool transB, const std::vector<u16>& As,
                    const std::vector<u16>& Bs, std::vector<float>& C, std::vector<int>& cnt) {
  char what[96];
  for (int warp = 0; warp < kThreads / 32; ++warp) {
    static float acc[2][4][32][4];
    for (auto& x : acc)
      for (auto& y : x)
        for (auto& z : y)
          for (float& v : z) v = 0.f;
    for (int ks = 0; ks < kBK; ks += 16) {
      u32 a[2][32][4], b[2][32][4];
      for (int mi = 0; mi < 2; ++mi) {
        int addr[32];
        for (int lane = 0; lane < 32; ++lane)
          addr[lane] = a_frag_addr(transA, lane, warp_row(warp) + mi * 16, ks);
        std::snprintf(what, sizeof what, "A %s warp %d mi %d ks %d", transA ? "MN" : "K", warp,
                      mi, ks);
        check_banks(addr, what);
        ldmatrix_x4(As, addr, transA, a[mi], what);
      }
      for (int nj = 0; nj < 2; ++nj) {
        int addr[32];
        for (int lane = 0; lane < 32; ++lane)
          addr[lane] = b_frag_addr(transB, lane, warp_col(warp) + nj * 16, ks);
        std::snprintf(what, sizeof what, "B %s warp %d nj %d ks %d", transB ? "MN" : "K", warp,
                      nj, ks);
        check_banks(addr, what);
        ldmatrix_x4(Bs, addr, transB, b[nj], what);
      }
      for (int mi = 0; mi < 2; ++mi)
        for (int ni = 0; ni < 4; ++ni) {
          u32 bb[32][2];
          for (int lane = 0; lane < 32; ++lane) {
            bb[lane][0] = b[ni / 2][lane][(ni % 2) * 2];
            bb[lane][1] = b[ni / 2][lane][(ni % 2) * 2 + 1];
          }
          mma_m16n8k16(acc[mi][ni], a[mi], bb);
        }
    }
    g_section = "gemm";
    for (int mi = 0; mi < 2; ++mi)
      for (int ni = 0; ni < 4; ++ni)
        for (int lane = 0; lane < 32; ++lane)
          for (int e = 0; e < 4; ++e) {
            const int row = warp_row(warp) + mi * 16 + acc_row(lane, e);
            const int col = warp_col(warp) + ni * 8 + acc_col(lane, e);
            const bool in = row >= 0 && row < kTile && col >= 0 && col < kTile;
            CHECK(in, "warp %d mi %d ni %d lane %d e %d stores to (%d, %d)", warp, mi, ni, lane,
                  e, row, col);
            if (!in) continue;
            C[row * kTile + col] = acc[mi][ni][lane][e];
            ++cnt[row * kTile + col];
          }
  }
}

int main() {
  static_assert(kTile == 64 && kBK == 32 && kThreads == 128, "the tile this check emulates");
  g_section = "banks";
  CHECK(kStageElems * 2 % 16 == 0, "stage of %d elements is not a multiple of 16 bytes",
        kStageElems);
  for (Kind kind : {kFused, kCopy, kMN}) check_loader(kind);

  unsigned seed = 12345;
  auto rnd = [&] {
    seed = seed * 1664525u + 1013904223u;
    return float(int((seed >> 16) % 31) - 15);  // -15..15: exact in bf16/fp16 and in f32 sums
  };
  // (A layout, B layout, loaders): forward (K, K), dgrad (K, MN), wgrad (MN, MN), and (MN, K).
  const Kind combos[4][2] = {{kFused, kCopy}, {kFused, kMN}, {kMN, kMN}, {kMN, kCopy}};
  for (int trial = 0; trial < 3; ++trial)
    for (const auto& combo : combos) {
      const bool transA = combo[0] == kMN, transB = combo[1] == kMN;
      std::vector<float> A(kTile * kBK), B(kTile * kBK);
      for (float& v : A) v = rnd();
      for (float& v : B) v = rnd();
      const std::vector<u16> As = stage(combo[0], A), Bs = stage(combo[1], B);
      std::vector<float> C(kTile * kTile, 0.f);
      std::vector<int> cnt(kTile * kTile, 0);
      run_cta(transA, transB, As, Bs, C, cnt);
      g_section = "gemm";
      for (int m = 0; m < kTile; ++m)
        for (int n = 0; n < kTile; ++n) {
          float ref = 0.f;
          for (int k = 0; k < kBK; ++k) ref += A[m * kBK + k] * B[n * kBK + k];
          CHECK(cnt[m * kTile + n] == 1, "A %s, B %s: C(%d, %d) written %d times",
                transA ? "MN" : "K", transB ? "MN" : "K", m, n, cnt[m * kTile + n]);
          CHECK(C[m * kTile + n] == ref, "A %s, B %s: C(%d, %d) = %g, A*B^T = %g",
                transA ? "MN" : "K", transB ? "MN" : "K", m, n, C[m * kTile + n], ref);
        }
    }
  if (g_failures) {
    std::printf("FAILED: %ld check(s)\n", g_failures);
    return 1;
  }
  std::printf("ok\n");
  return 0;
}
"""


def build_and_run(include_dir: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    return run_host_program(MMA_CHECK, tmp_path, include_dir, name="mma_layout_check")


def test_mma_layout_matches_ptx(tmp_path):
    run = build_and_run(ROOT / "csrc", tmp_path)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stdout + run.stderr


# name -> (header, text in it, replacement, the check that must then fail)
MUTATIONS = {
    # B's two matrix-selecting terms swapped in the MN-major (ldmatrix.trans) branch.
    "b_frag_addr_mn_swapped": (
        "cuda/mma_layout.h",
        "mnmajor_at(n + (lane / 16) * 8, ks + ((lane / 8) % 2) * 8 + lane % 8)",
        "mnmajor_at(n + ((lane / 8) % 2) * 8, ks + (lane / 16) * 8 + lane % 8)",
        "gemm"),
    # c2, c3 stored on the row of c0, c1 instead of eight rows below.
    "acc_row_e_mod_2": (
        "cuda/mma_layout.h",
        "return lane / 4 + (e / 2) * 8;",
        "return lane / 4 + (e % 2) * 8;",
        "gemm"),
    # Fused K-major loader: the two threads of a row overlap instead of splitting its 32 k.
    "kmajor_slot_overlap": (
        "cuda/mma_layout.h",
        "return {tid % kTile, (tid / kTile) * 16};",
        "return {tid % kTile, (tid / kTile) * 8};",
        "loader"),
    # 96-byte K-major rows (padding 16 instead of 8) put rows r and r + 4 in the same banks.
    "kmajor_pad_16": (
        "cuda/mma_layout.h",
        "constexpr int kLdK = kBK + 8;",
        "constexpr int kLdK = kBK + 16;",
        "banks"),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_mma_layout_detects_mutation(tmp_path, name):
    header, old, new, section = MUTATIONS[name]
    inc = tmp_path / "csrc"
    for rel in HEADERS:
        (inc / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / "csrc" / rel, inc / rel)
    text = (inc / header).read_text()
    assert text.count(old) == 1, f"mutation {name!r} no longer applies to {header}: update it"
    (inc / header).write_text(text.replace(old, new))
    run = build_and_run(inc, tmp_path)
    assert run.returncode != 0, f"mutation {name!r} went unnoticed:\n{run.stdout}"
    assert f"FAILED [{section}]" in run.stdout, run.stdout + run.stderr
