// Where each thread of the tensor-core conv kernel (conv_tc.cuh) puts and finds operand
// elements: smem tile layouts, loader slots, ldmatrix row addresses, accumulator fragments.
// Pure integer functions, so tests/test_mma_layout.py emulates ldmatrix and mma.sync on them
// on the host (g++, no GPU) and checks that a CTA tile computes A * B^T.
#pragma once

#include "common/macros.h"

namespace fr::cuda::mma {

constexpr int kThreads = 128;   // 4 warps in 2x2, 32x32 warp tiles
constexpr int kTile = 64;       // CTA tile: 64 GEMM rows x 64 GEMM columns
constexpr int kBK = 32;         // reduction elements per pipeline stage
constexpr int kLdK = kBK + 8;   // K-major tile [64 rows][kLdK]: 80-byte rows
constexpr int kLdMN = kTile + 8;  // MN-major tile [32 k][kLdMN]: 144-byte rows
constexpr int kStageElems = kTile * kLdK;  // one operand stage (either layout fits)
static_assert(kBK * kLdMN <= kStageElems, "an MN-major tile fits a stage");

// Element offset of (row, k) in a stage of either layout.
FR_HOST_DEVICE int kmajor_at(int row, int k) { return row * kLdK + k; }
FR_HOST_DEVICE int mnmajor_at(int row, int k) { return k * kLdMN + row; }

// Loader slots: thread tid writes two 8-element chunks per operand and stage. A 16-byte
// store is served 8 threads at a time: 8 consecutive threads take 8 consecutive rows at one
// k, whose 80-byte pitch puts them in 8 distinct 16-byte bank groups (no bank conflicts).
// K-major, fused loads: 16 consecutive k of one row per thread (the row decodes once);
// chunk h = 0, 1 covers (row, kc + 8h .. +7).
struct KMajorSlot {
  int row, kc;
  FR_HOST_DEVICE static KMajorSlot of(int tid) { return {tid % kTile, (tid / kTile) * 16}; }
  FR_HOST_DEVICE int at(int h) const { return kmajor_at(row, kc + 8 * h); }
};
// K-major, plain copies (weights): chunk i = 0, 1 of thread tid covers (row, kc .. kc+7).
FR_HOST_DEVICE void kmajor_copy_slot(int tid, int i, int* row, int* kc) {
  const int id = tid + i * kThreads;
  *row = id % kTile;
  *kc = (id / kTile) * 8;
}
// MN-major: 8 threads per k row; chunk u = 0, 1 covers rows rc .. rc+7 at k = kr + 16u.
struct MNMajorSlot {
  int kr, rc;
  FR_HOST_DEVICE static MNMajorSlot of(int tid) { return {tid / 8, (tid % 8) * 8}; }
  FR_HOST_DEVICE int at(int u) const { return mnmajor_at(rc, kr + 16 * u); }
};

// ldmatrix.x4 loads four 8x8 matrices, lane l giving the address of row l%8 of matrix l/8.
// A fragment of m16n8k16 (rows m..m+15, k ks..ks+15) as matrices (rows 0-7, k 0-7),
// (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15) -> registers a0..a3.
// From an MN-major tile the stored rows are k: ldmatrix.trans hands each lane the transpose.
FR_HOST_DEVICE int a_frag_addr(bool mn_major, int lane, int m, int ks) {
  if (mn_major) return mnmajor_at(m + ((lane / 8) % 2) * 8, ks + (lane / 16) * 8 + lane % 8);
  return kmajor_at(m + lane % 16, ks + (lane / 16) * 8);
}
// B fragments of two n8 tiles (columns n..n+15, k ks..ks+15) as matrices (n 0-7, k 0-7),
// (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15): registers {b0, b1} of n-tile 0 and
// {b2, b3} of n-tile 1.
FR_HOST_DEVICE int b_frag_addr(bool mn_major, int lane, int n, int ks) {
  if (mn_major) return mnmajor_at(n + (lane / 16) * 8, ks + ((lane / 8) % 2) * 8 + lane % 8);
  return kmajor_at(n + (lane / 16) * 8 + lane % 8, ks + ((lane / 8) % 2) * 8);
}

// Warp w's 32x32 tile starts at row (w / 2) * 32, column (w % 2) * 32 of the CTA tile.
FR_HOST_DEVICE int warp_row(int warp) { return (warp / 2) * 32; }
FR_HOST_DEVICE int warp_col(int warp) { return (warp % 2) * 32; }
// Accumulator element e (0..3) of a lane in an m16n8 tile: c0, c1 on row lane/4, c2, c3 eight
// rows below; columns 2*(lane%4) + e%2.
FR_HOST_DEVICE int acc_row(int lane, int e) { return lane / 4 + (e / 2) * 8; }
FR_HOST_DEVICE int acc_col(int lane, int e) { return (lane % 4) * 2 + e % 2; }

}  // namespace fr::cuda::mma
