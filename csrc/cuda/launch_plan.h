// Launch plans of the cuda backend's ops: every kernel launch one op call makes, in order
// (kernel, grid, block, dynamic shared memory, the kernel's chunking), as a pure function of
// shapes, dtypes, flags and the target device. The launchers (conv_*.cu, bn_kernels.cu)
// execute these plans, and fused_resnet/cuda_plans.py exposes them (through fused_resnet._C),
// so the structure of every launch is checked without a GPU (docs/design.md §5). Plain C++:
// no CUDA or torch header, so it builds in every configuration (CPU-only, emulator, nvcc).
// No op zero-fills a workspace: every launch here is a kernel (no cudaMemsetAsync). Not here:
// the ATen copies a launcher's staging makes when an argument is not already in the layout or
// dtype the kernels read (e.g. NCHW data for the channels-last conv kernels).
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "common/igemm.h"
#include "common/layout.h"
#include "cuda/mma_layout.h"

namespace fr::cuda {

enum class DType : int { kFloat, kDouble, kHalf, kBFloat16 };

inline int64_t elem_bytes(DType t) {
  return t == DType::kDouble ? 8 : t == DType::kFloat ? 4 : 2;
}
inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::kFloat: return "f32";
    case DType::kDouble: return "f64";
    case DType::kHalf: return "f16";
    case DType::kBFloat16: return "bf16";
  }
  return "?";
}
// Per-channel statistics (and block_end_bwd's sums) are float64 for float64 data, else float32.
inline DType stat_dtype(DType t) { return t == DType::kDouble ? DType::kDouble : DType::kFloat; }

// The device a plan is for: the launchers pass the real device's values (device.h).
struct DeviceTarget {
  int arch;              // compute capability x 10
  int64_t sms;           // multiprocessors
  int64_t shared_limit;  // opt-in shared memory per block, bytes
};

// ---------------------------------------------------------------- kernel geometry
// Threads per CTA of every kernel (their __launch_bounds__) and the GEMMs' reduction steps.
constexpr int kTcThreads = mma::kThreads;  // tensor-core conv GEMM (conv_tc.cuh)
constexpr int kTcBK = mma::kBK;
constexpr int kSimtThreads = 256;  // SIMT conv GEMM (conv_simt.cuh)
constexpr int kSimtBK = 16;
constexpr int kMergeLanes = 8;  // merge.cuh: 32 channels x 8 lanes walking the parts
constexpr int kMergeChannels = 32;
constexpr int kMergeThreads = kMergeLanes * kMergeChannels;
constexpr int kReduceThreads = 256;     // the wgrad split-K reduction: one thread per dw element
constexpr int kElementwiseThreads = 256;  // bn_finalize, block_end, block_end_bwd
constexpr int kBlockEndMaxBlocks = 8192;  // block_end's grid-stride loop
constexpr int kBlockEndBwdLanes = 8;  // NHWC block_end_bwd: 32 channels x 8 pixel lanes

// ---------------------------------------------------------------- chunking rules
// Wgrad split-K: enough CTAs for about four per SM (512 on a 128-SM part), each split at
// least 256 pixels (common/igemm.h conv_wgrad_splits).
inline int64_t conv_wgrad_target_ctas(const DeviceTarget& t) { return 4 * t.sms; }

// Per-tile partials [parts][C] are merged per channel in a fixed order by cuda/merge.cuh, in
// two levels: up to ceil(parts / 64) groups, so that ~512 CTAs of 32 channels share the first
// (a group may be short or even empty: an empty group merges as the identity).
inline int64_t merge_groups(int64_t parts, int64_t C) {
  const int64_t cblocks = (C + kMergeChannels - 1) / kMergeChannels;
  return std::max<int64_t>(1, std::min((parts + 63) / 64, std::max<int64_t>(1, 512 / cblocks)));
}
// A conv workspace: `partials` floats, then (8-byte aligned: rounded up to an even count) the
// first merge level's results, `acc_doubles` doubles per group and channel.
inline int64_t merge_results_offset(int64_t partials) { return partials + partials % 2; }
inline int64_t conv_workspace_elems(int64_t partials, int64_t parts, int64_t C,
                                    int64_t acc_doubles) {
  return merge_results_offset(partials) + 2 * acc_doubles * merge_groups(parts, C) * C;
}
// Per-tile Welford partials [count, pivot, mean - pivot, m2][tiles][K] (floats), then the
// merge's Welford<double> group results.
inline int64_t conv_fwd_workspace_elems(const ConvShape& s) {
  const int64_t tiles = conv_tiles(fwd_gemm_m(s), kConvTileM);
  return conv_workspace_elems(4 * tiles * s.K, tiles, s.K, 3);
}
// Per-tile partial sums [sum dx, sum dx*(prev_y - prev_mean)][tiles][C] (floats; tiles of
// every stride phase), then the merge's group sums (2 doubles).
inline int64_t conv_dgrad_workspace_elems(const ConvShape& s) {
  const int64_t tiles = dgrad_tiles(s);
  return conv_workspace_elems(2 * tiles * s.C, tiles, s.C, 2);
}
// Split-K partials (floats), one [K][R*S*C] plane per split.
inline int64_t conv_wgrad_workspace_elems(const ConvShape& s, const DeviceTarget& t) {
  return conv_wgrad_splits(s, conv_wgrad_target_ctas(t)) * s.K * fwd_gemm_k(s);
}

// block_end_bwd: per-CTA partial sums go to a workspace [3][chunks][C] that one merge level
// reduces in a fixed order: deterministic, no atomics. ~1024 CTAs keep every SM busy.
inline int64_t block_end_bwd_chunks(const Layout& L) {
  constexpr int64_t kTargetCtas = 1024;
  if (L.inner == 1) {  // channels-last: CTA = 32 channels x a range of pixels
    const int64_t ctiles = (L.C + 31) / 32;
    return std::max<int64_t>(
        1, std::min((L.outer + 63) / 64, std::max<int64_t>(1, kTargetCtas / ctiles)));
  }
  // NCHW: CTA = one channel x a range of images
  return std::max<int64_t>(1, std::min(L.outer, std::max<int64_t>(1, kTargetCtas / L.C)));
}
inline int64_t block_end_bwd_workspace_elems(const Layout& L) {
  return 3 * block_end_bwd_chunks(L) * L.C;
}

// ---------------------------------------------------------------- plans
// Which kernel a launch runs; the launcher switches on it.
enum class Kernel : int {
  kConvTc,         // tc_conv_kernel (conv_tc.cuh); wgrad: activations in 16-byte vectors
  kConvTcScalarB,  // wgrad's tc_conv_kernel reading activations element by element
  kConvSimt,       // simt_conv_kernel (conv_simt.cuh)
  kMerge,          // merge_partials_kernel (merge.cuh)
  kWgradReduce,    // reduce_wgrad_kernel (conv_wgrad.cu)
  kBnFinalize,     // bn_finalize_kernel (bn_kernels.cu)
  kBlockEndVec,    // block_end_kernel, 16-byte vectors
  kBlockEndScalar,  // block_end_kernel, element by element
  kBlockEndBwdNhwc,
  kBlockEndBwdNchw,
};

struct Dim3 {
  int64_t x = 1, y = 1, z = 1;
};

struct KernelLaunch {
  Kernel kernel;
  std::string name;      // the kernel instantiation, e.g. "conv_fwd_tc.bf16"
  const char* function;  // its __global__ function
  Dim3 grid, block;
  int64_t smem = 0;      // dynamic shared memory bytes (every kernel here uses static smem)
  std::string config;    // tile configuration
  int64_t bytes = 0;     // estimated DRAM bytes read + written
  int64_t flops = 0;
  int64_t serial_steps = 1;  // trip count of the longest dependent loop of one CTA
  int64_t chunk = 0;         // merge: parts per group; block_end_bwd: rows/planes per CTA
  int64_t threads() const { return block.x * block.y * block.z; }
};

struct OpLaunchPlan {
  std::vector<KernelLaunch> launches;
  int64_t workspace_elems = 0;  // floats (conv ops) / statistics-dtype elements (block_end_bwd)
  int64_t splits = 1;           // conv_bwd_weight: split-K ranges and pixels per range
  int64_t kchunk = 0;
};

namespace plan_detail {

inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline KernelLaunch conv_gemm(const char* op, Kernel k, DType data, Dim3 grid, int64_t kdim,
                              int64_t flops, int64_t bytes) {
  const bool tc = k != Kernel::kConvSimt;
  KernelLaunch l{k, std::string(op) + (k == Kernel::kConvTc ? "_tc."
                                       : tc ? "_tc_scalar_b." : "_simt.") + dtype_name(data),
                 tc ? "tc_conv_kernel" : "simt_conv_kernel", grid,
                 Dim3{tc ? kTcThreads : kSimtThreads, 1, 1}};
  const int64_t bk = tc ? kTcBK : kSimtBK;
  l.config = std::to_string(kConvTileM) + "x" + std::to_string(kConvTileN) + "x" +
             std::to_string(bk) + (tc ? "/tc" : "/simt");
  l.bytes = bytes;
  l.flops = flops;
  l.serial_steps = cdiv(kdim, bk);
  return l;
}

// merge.cuh's levels over `parts` partials of C channels: `in_bytes` per partial and channel,
// `acc_bytes` per accumulator (what a level reads from the previous one).
inline void add_merge(OpLaunchPlan& plan, const std::string& name, int64_t parts, int64_t C,
                      int64_t groups, int64_t in_bytes, int64_t acc_bytes) {
  const int64_t cblocks = cdiv(C, kMergeChannels);
  auto level = [&](int64_t n, int64_t g, int64_t chunk, int64_t bytes_in) {
    KernelLaunch l{Kernel::kMerge, name, "merge_partials_kernel", Dim3{cblocks, g, 1},
                   Dim3{kMergeThreads, 1, 1}};
    l.config = std::to_string(kMergeChannels) + "ch x " + std::to_string(kMergeLanes) + "lanes";
    l.bytes = n * C * bytes_in + g * C * acc_bytes;
    l.flops = 10 * n * C;
    l.serial_steps = cdiv(std::min(chunk, n), kMergeLanes);
    l.chunk = chunk;
    plan.launches.push_back(l);
  };
  if (groups <= 1) {
    level(parts, 1, parts, in_bytes);
    return;
  }
  level(parts, groups, cdiv(parts, groups), in_bytes);
  level(groups, 1, groups, acc_bytes);
}

}  // namespace plan_detail

// conv_fwd: the implicit GEMM (tensor cores for 16-bit data), then with stats the merge of
// its per-tile Welford partials.
inline OpLaunchPlan conv_fwd_plan(const ConvShape& s, DType data, bool stats, bool residual,
                                  const DeviceTarget&) {
  using namespace plan_detail;
  const int64_t es = elem_bytes(data), M = fwd_gemm_m(s), kd = fwd_gemm_k(s);
  const int64_t tiles = conv_tiles(M, kConvTileM);
  OpLaunchPlan plan;
  plan.launches.push_back(conv_gemm(
      "conv_fwd", es == 2 ? Kernel::kConvTc : Kernel::kConvSimt, data,
      Dim3{tiles, conv_tiles(s.K, kConvTileN), 1}, kd, 2 * M * s.K * kd,
      es * (s.N * s.H * s.W * s.C + s.K * kd + M * s.K * (residual ? 2 : 1)) +
          (stats ? 4 * 4 * tiles * s.K : 0)));
  if (stats) {
    add_merge(plan, "conv_fwd_merge", tiles, s.K, merge_groups(tiles, s.K), 16, 24);
    plan.workspace_elems = conv_fwd_workspace_elems(s);
  }
  return plan;
}

// conv_bwd_data: one GEMM slice per stride phase (tensor cores for 16-bit data when C and K
// are multiples of 8 and dz, y, w, a, b, c are 16-byte aligned), then with prev_y the merge
// of the per-tile sums.
inline OpLaunchPlan conv_dgrad_plan(const ConvShape& s, DType data, bool prev, bool residual,
                                    bool operands_aligned, const DeviceTarget&) {
  using namespace plan_detail;
  const int64_t es = elem_bytes(data), tiles = dgrad_tiles(s);
  const bool tc = es == 2 && s.C % 8 == 0 && s.K % 8 == 0 && operands_aligned;
  int64_t kmax = 0, macs = 0;
  for (int64_t z = 0; z < dgrad_phases(s); ++z) {
    const DgradPhase f = dgrad_phase(s, z);
    kmax = std::max(kmax, dgrad_gemm_k(s, f));
    macs += dgrad_gemm_m(s, f) * dgrad_gemm_k(s, f) * s.C;
  }
  const int64_t dx = s.N * s.H * s.W * s.C;
  OpLaunchPlan plan;
  plan.launches.push_back(conv_gemm(
      "conv_dgrad", tc ? Kernel::kConvTc : Kernel::kConvSimt, data,
      Dim3{dgrad_row_tiles(s), conv_tiles(s.C, kConvTileN), dgrad_phases(s)}, kmax, 2 * macs,
      es * (2 * fwd_gemm_m(s) * s.K + s.K * fwd_gemm_k(s) + dx * (1 + residual + prev)) +
          (prev ? 2 * 4 * tiles * s.C : 0)));
  if (prev) {
    add_merge(plan, "conv_dgrad_merge", tiles, s.C, merge_groups(tiles, s.C), 8, 16);
    plan.workspace_elems = conv_dgrad_workspace_elems(s);
  }
  return plan;
}

// conv_bwd_weight: the split-K GEMM (tensor cores for 16-bit data when K % 8 == 0 and dz, y,
// a, b, c are 16-byte aligned; activations in vectors when also C % 8 == 0 and x, in_scale,
// in_shift are aligned), then the fixed-order sum of the splits into dw (weight dtype `out`).
inline OpLaunchPlan conv_wgrad_plan(const ConvShape& s, DType data, DType out, bool dy_aligned,
                                    bool act_aligned, const DeviceTarget& t) {
  using namespace plan_detail;
  const int64_t es = elem_bytes(data), M = fwd_gemm_m(s), cols = fwd_gemm_k(s);
  OpLaunchPlan plan;
  plan.splits = conv_wgrad_splits(s, conv_wgrad_target_ctas(t));
  plan.kchunk = conv_wgrad_kchunk(s, plan.splits);
  plan.workspace_elems = conv_wgrad_workspace_elems(s, t);
  const bool tc = es == 2 && s.K % 8 == 0 && dy_aligned;
  const Kernel k = !tc ? Kernel::kConvSimt
                   : s.C % 8 == 0 && act_aligned ? Kernel::kConvTc : Kernel::kConvTcScalarB;
  const int64_t partials = plan.splits * s.K * cols;
  plan.launches.push_back(conv_gemm(
      "conv_wgrad", k, data, Dim3{conv_tiles(s.K, kConvTileM), conv_tiles(cols, kConvTileN),
                                  plan.splits},
      std::min(plan.kchunk, M), 2 * s.K * cols * M,
      es * (2 * M * s.K + s.N * s.H * s.W * s.C) + 4 * partials));
  KernelLaunch r{Kernel::kWgradReduce, std::string("conv_wgrad_reduce.") + dtype_name(out),
                 "reduce_wgrad_kernel", Dim3{cdiv(s.K * cols, kReduceThreads), 1, 1},
                 Dim3{kReduceThreads, 1, 1}};
  r.config = std::to_string(kReduceThreads);
  r.bytes = 4 * partials + elem_bytes(out) * s.K * cols;
  r.flops = partials;
  r.serial_steps = plan.splits;
  plan.launches.push_back(r);
  return plan;
}

// bn_finalize: one CTA (it increments num_batches_tracked race-free) walking the channels.
inline OpLaunchPlan bn_finalize_plan(int64_t C, DType stat, const DeviceTarget&) {
  using namespace plan_detail;
  OpLaunchPlan plan;
  KernelLaunch l{Kernel::kBnFinalize, std::string("bn_finalize.") + dtype_name(stat),
                 "bn_finalize_kernel", Dim3{}, Dim3{kElementwiseThreads, 1, 1}};
  l.config = std::to_string(kElementwiseThreads);
  l.bytes = 11 * elem_bytes(stat) * C;  // mean, m2, weight, bias; 3 outputs; running stats r+w
  l.flops = 12 * C;
  l.serial_steps = std::max<int64_t>(1, cdiv(C, kElementwiseThreads));
  plan.launches.push_back(l);
  return plan;
}

// block_end: a grid-stride loop over 16-byte vectors when y, residual and out are 16-byte
// aligned, else over elements.
inline OpLaunchPlan block_end_plan(const Layout& L, DType data, bool vec_aligned,
                                   const DeviceTarget&) {
  using namespace plan_detail;
  OpLaunchPlan plan;
  const int64_t n = L.numel(), es = elem_bytes(data);
  if (n == 0) return plan;
  const int64_t vec = vec_aligned ? 16 / es : 1, units = n / vec;
  const int64_t blocks = std::min<int64_t>(
      std::max<int64_t>(cdiv(units, kElementwiseThreads), 1), kBlockEndMaxBlocks);
  KernelLaunch l{vec_aligned ? Kernel::kBlockEndVec : Kernel::kBlockEndScalar,
                 std::string(vec_aligned ? "block_end_vec." : "block_end_scalar.") +
                     dtype_name(data),
                 "block_end_kernel", Dim3{blocks, 1, 1}, Dim3{kElementwiseThreads, 1, 1}};
  l.config = std::to_string(kElementwiseThreads) + "x" + std::to_string(vec);
  l.bytes = 3 * es * n;
  l.flops = 5 * n;
  l.serial_steps = std::max<int64_t>(1, cdiv(units, blocks * kElementwiseThreads)) +
                   (n % vec != 0);  // the scalar tail after the vectors
  plan.launches.push_back(l);
  return plan;
}

// block_end_bwd: per-CTA partial sums over chunks of rows (channels-last) or of images
// (NCHW), then one merge level.
inline OpLaunchPlan block_end_bwd_plan(const Layout& L, DType data, bool projection,
                                       const DeviceTarget&) {
  using namespace plan_detail;
  OpLaunchPlan plan;
  if (L.C == 0) return plan;
  const DType acc = stat_dtype(data);
  const int64_t es = elem_bytes(data), as = elem_bytes(acc), n = L.numel();
  const int64_t chunks = block_end_bwd_chunks(L), per_chunk = cdiv(L.outer, chunks);
  const bool nhwc = L.inner == 1;
  const char* function = nhwc ? "block_end_bwd_nhwc" : "block_end_bwd_nchw";
  Dim3 grid{chunks, L.C, 1}, block{kElementwiseThreads, 1, 1};
  if (nhwc) {  // 32 channels x kBlockEndBwdLanes pixel lanes
    grid.y = cdiv(L.C, 32);
    block = Dim3{32, kBlockEndBwdLanes, 1};
  }
  KernelLaunch l{nhwc ? Kernel::kBlockEndBwdNhwc : Kernel::kBlockEndBwdNchw,
                 std::string(function) + "." + dtype_name(data), function, grid, block};
  l.config = nhwc ? "32ch x 8lanes" : "1ch x 256";
  l.bytes = es * n * (projection ? 5 : 4) + as * 3 * chunks * L.C;
  l.flops = 8 * n;
  l.serial_steps = nhwc ? cdiv(per_chunk, kBlockEndBwdLanes)
                        : cdiv(per_chunk * L.inner, kElementwiseThreads);
  l.chunk = per_chunk;
  plan.launches.push_back(l);
  plan_detail::add_merge(plan, std::string("block_end_bwd_merge.") + dtype_name(acc), chunks,
                         L.C, 1, 3 * as, 24);
  plan.workspace_elems = block_end_bwd_workspace_elems(L);
  return plan;
}

}  // namespace fr::cuda
