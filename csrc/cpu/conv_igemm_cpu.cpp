// fused_resnet::_conv_fwd_igemm / _conv_bwd_data_igemm / _conv_bwd_weight_igemm, test-only
// ops: the CPU twins of the CUDA conv_fwd / conv_bwd_data / conv_bwd_weight kernels
// (cuda/conv_*.cu). Plain C++, no ATen GEMM: the same NHWC implicit-GEMM views, the same
// 64x64 CTA tiles walked in BK=32 steps over the same grid slices (split-K reduction ranges
// for wgrad, stride phases for dgrad: common/igemm.h GemmSlice), the same operand math
// (fwd_a_elem / dgrad_a_elem + dgrad_b_offset / wgrad_b_elem: the prologue or the BN-backward
// map, rounding to the data dtype, zeros for padding AFTER the transform), the same epilogues
// (common/fusion.h), the same argument checks and staging (conv_staging.h) and the same
// reduction schemes:
// - forward statistics: per-tile two-pass Welford of the deviations from a pivot, merged per
//   channel in tile order in double with Chan's formula (common/stats.h);
// - dgrad sums: per-tile sums of dx and dx*(prev_y - prev_mean) in the accumulate dtype, added
//   per channel in tile order in double, the second times prev_invstd at the end;
// - wgrad: per-split partial dw tiles, summed per element in split order in the accumulate
//   dtype, stored in the weight's dtype and memory format (wgrad_out_offset).
// The GPU merges the per-tile partials in another fixed order (cuda/merge.cuh: lane-strided,
// two levels), so the twins agree with it to rounding, not bit for bit.
// CI has no GPU: these ops are what test the index/prologue/padding/epilogue/reduction math the
// CUDA kernels run.
// groups == 1 only (as the CUDA kernels); float64 too, for tight checks.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/fusion.h"
#include "common/igemm.h"
#include "common/stats.h"
#include "conv_staging.h"
#include "cpu/cpu_utils.h"

namespace fr::cpu {
namespace {

constexpr int64_t BM = kConvTileM, BN = kConvTileN, BK = kConvTileK;  // the CUDA kernels' tile
constexpr auto kCL = at::MemoryFormat::ChannelsLast;

// ================================================================ the shared tile walker
// One CTA tile of an implicit GEMM (simt_conv_kernel / tc_conv_kernel): rows m0.., columns
// n0.., the reduction range [k_begin, k_end) in BK steps, accumulated into acc. The operand
// policy mirrors the CUDA SIMT loaders (FwdOperands, DgradOperands, WgradOperands): row_a(m) /
// row_b(n) decode a GEMM row / column once; a(row, k) / b(col, k) give the fused operand,
// rounded to the data dtype, 0 for rows / columns out of range.
template <class acc_t, class Ops>
void tile_gemm(const Ops& ops, int64_t m0, int64_t n0, int64_t k_begin, int64_t k_end,
               acc_t (&acc)[BM][BN]) {
  using RowA = decltype(ops.row_a(0));
  using RowB = decltype(ops.row_b(0));
  RowA ra[BM];
  RowB rb[BN];
  for (int64_t i = 0; i < BM; ++i) ra[i] = ops.row_a(m0 + i);
  for (int64_t j = 0; j < BN; ++j) rb[j] = ops.row_b(n0 + j);
  acc_t A[BM][BK], B[BN][BK];
  for (int64_t k0 = k_begin; k0 < k_end; k0 += BK) {
    for (int64_t i = 0; i < BM; ++i)
      for (int64_t kk = 0; kk < BK; ++kk)
        A[i][kk] = k0 + kk < k_end ? ops.a(ra[i], k0 + kk) : acc_t(0);
    for (int64_t j = 0; j < BN; ++j)
      for (int64_t kk = 0; kk < BK; ++kk)
        B[j][kk] = k0 + kk < k_end ? ops.b(rb[j], k0 + kk) : acc_t(0);
    for (int64_t i = 0; i < BM; ++i)
      for (int64_t j = 0; j < BN; ++j) {
        acc_t v = acc[i][j];
        for (int64_t kk = 0; kk < BK; ++kk) v += A[i][kk] * B[j][kk];
        acc[i][j] = v;
      }
  }
}

// The CUDA launch grid -- x: 64-row tiles of the largest slice's `rows`, y: 64-column tiles
// of Ncols, z: the `slices` (common/igemm.h GemmSlice: forward 1, wgrad split-K ranges, dgrad
// stride phases) -- on at::parallel_for. ops.at(z) is the operand policy bound to slice z,
// .slice() its rows and reduction range (maybe empty: the tile is zeros); epi(acc, m0, n0, z)
// runs on each finished tile. Tiles write disjoint outputs and partials, so any thread order
// gives the same result.
template <class acc_t, class Ops, class Epi>
void run_grid(const Ops& ops, const Epi& epi, int64_t rows, int64_t Ncols, int64_t slices) {
  const int64_t mt = conv_tiles(rows, BM), nt = conv_tiles(Ncols, BN);
  at::parallel_for(0, mt * nt * slices, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t m0 = (t % mt) * BM, n0 = (t / mt % nt) * BN, z = t / (mt * nt);
      const auto oz = ops.at(z);
      const GemmSlice sl = oz.slice();
      acc_t acc[BM][BN] = {};
      tile_gemm<acc_t>(oz, m0, n0, sl.k_begin, sl.k_end, acc);
      epi(acc, m0, n0, z);
    }
  });
}

// The merge kernels: per channel, the per-tile partials [tiles][C] combined in tile order
// (cuda/merge.cuh uses another fixed order; both are deterministic).
template <class Acc, class Combine>
std::vector<Acc> merge_tiles(const std::vector<Acc>& part, int64_t ntiles, int64_t C,
                             const Combine& combine) {
  std::vector<Acc> total(C);
  for (int64_t c = 0; c < C; ++c)
    for (int64_t i = 0; i < ntiles; ++i) combine(total[c], part[i * C + c]);
  return total;
}

// A GEMM row / column that is an index or -1 out of range (a channel, a weight column).
struct Index {
  int64_t i = -1;
};
Index index_below(int64_t i, int64_t n) { return Index{i < n ? i : -1}; }

// ================================================================ forward
template <class scalar_t, class acc_t>
struct FwdOps {  // FwdOperands: A(m, k) = prologue(x) (0 on padding), B(n, k) = w[n][k]
  const ConvShape& s;
  const scalar_t* x;
  const scalar_t* w;  // KRSC: [K][Kdim]
  const acc_t *in_scale, *in_shift;
  bool in_relu;
  FwdOps at(int64_t) const { return *this; }
  GemmSlice slice() const { return fwd_slice(s); }
  struct Row {
    int64_t n = 0, p = 0, q = 0;  // the output pixel
    bool ok = false;
  };
  Row row_a(int64_t m) const {
    Row r;
    r.ok = m < fwd_gemm_m(s);
    if (r.ok) decode_m(s, m, &r.n, &r.p, &r.q);
    return r;
  }
  acc_t a(const Row& r, int64_t k) const {
    if (!r.ok) return acc_t(0);
    return fwd_a_elem<acc_t>(s, r.n, r.p, r.q, k, [&](int64_t off, int64_t c) {
      return acc_t(static_cast<scalar_t>(
          prologue<acc_t>(acc_t(x[off]), in_scale, in_shift, in_relu, c)));
    });
  }
  Index row_b(int64_t n) const { return index_below(n, s.K); }
  acc_t b(Index n, int64_t k) const {
    return n.i < 0 ? acc_t(0) : acc_t(w[n.i * fwd_gemm_k(s) + k]);
  }
};

template <class scalar_t, class acc_t>
struct FwdEpi {  // FwdEpilogue: y = epilogue(acc) (NHWC); stats: per-tile Welford partials
  const ConvShape& s;
  const acc_t *out_scale, *out_shift, *res_scale, *res_shift;
  const scalar_t* res;  // NHWC or null
  scalar_t* y;          // NHWC
  bool out_relu, stats;
  Welford<double>* partial;  // [mtiles][K]

  void operator()(const acc_t (&acc)[BM][BN], int64_t m0, int64_t n0, int64_t) const {
    const int64_t rows = std::min(BM, fwd_gemm_m(s) - m0);
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < BN && n0 + j < s.K; ++j) {
        const int64_t n = n0 + j, off = (m0 + i) * s.K + n;
        const acc_t r = res ? acc_t(res[off]) : acc_t(0);
        y[off] = static_cast<scalar_t>(epilogue<acc_t>(acc[i][j], out_scale, out_shift,
                                                       res != nullptr, r, res_scale, res_shift,
                                                       out_relu, n));
      }
    if (!stats) return;
    // Deviations from the tile's first value (as the CUDA kernel), merged in double.
    for (int64_t j = 0; j < BN && n0 + j < s.K; ++j) {
      const acc_t pivot = acc[0][j];
      const auto w = welford_run<acc_t>([&](int64_t i) { return acc[i][j] - pivot; }, rows);
      partial[(m0 / BM) * s.K + n0 + j] = {double(w.count), double(pivot) + double(w.mean),
                                           double(w.m2)};
    }
  }
};

// ================================================================ dgrad
template <class scalar_t, class acc_t>
struct DgradOps {  // DgradOperands: A(m, k) = dy of a phase row (0 on padding), B(c, k) = w
  const ConvShape& s;
  const scalar_t *dz, *y;  // NHWC
  const acc_t *ca, *cb, *cc;
  const scalar_t* w;  // KRSC
  DgradPhase f{};     // the stride phase of slice z (set by at(z))
  DgradOps at(int64_t z) const {
    DgradOps o = *this;
    o.f = dgrad_phase(s, z);
    return o;
  }
  GemmSlice slice() const { return dgrad_slice(s, f); }
  struct Row {
    int64_t n = 0, i = 0, j = 0;  // the phase row
    bool ok = false;
  };
  Row row_a(int64_t m) const {
    Row r;
    r.ok = m < dgrad_gemm_m(s, f);
    if (r.ok) decode_phase_row(f, m, &r.n, &r.i, &r.j);
    return r;
  }
  acc_t a(const Row& r, int64_t k) const {
    if (!r.ok) return acc_t(0);
    return dgrad_a_elem<acc_t>(s, f, r.n, r.i, r.j, k, [&](int64_t off, int64_t ko) {
      return acc_t(static_cast<scalar_t>(
          bn_bwd_apply<acc_t>(acc_t(dz[off]), acc_t(y[off]), ca[ko], cb[ko], cc[ko])));
    });
  }
  Index row_b(int64_t c) const { return index_below(c, s.C); }
  acc_t b(Index c, int64_t k) const {
    return c.i < 0 ? acc_t(0) : acc_t(w[dgrad_b_offset(s, f, c.i, k)]);
  }
};

template <class scalar_t, class acc_t>
struct DgradEpi {  // DgradEpilogue: dx = acc (+ residual), ReLU-masked; per-tile sums
  const ConvShape& s;
  const scalar_t* res;    // NHWC or null
  const scalar_t* py;     // prev_y, NHWC or null (no mask, no sums)
  const acc_t *ps, *pb;   // prev_scale / prev_shift (null: identity)
  const acc_t* pm;        // prev_mean
  scalar_t* dx;           // NHWC
  Sums<2>* partial;       // [mtiles][C]: sum dx, sum dx*(prev_y - prev_mean)

  // Tile (x, z) of the grid: rows m0.. of phase z; its partial goes to tile z*mtiles + x.
  void operator()(const acc_t (&acc)[BM][BN], int64_t m0, int64_t n0, int64_t z) const {
    const DgradPhase f = dgrad_phase(s, z);
    const int64_t rows = std::min(BM, dgrad_gemm_m(s, f) - m0);
    const int64_t tile = z * dgrad_row_tiles(s) + m0 / BM;
    int64_t px[BM];  // the rows' input pixels (NHWC order of dx)
    for (int64_t i = 0; i < rows; ++i) {
      int64_t n, h, w;
      decode_in_pixel(s, f, m0 + i, &n, &h, &w);
      px[i] = (n * s.H + h) * s.W + w;
    }
    for (int64_t j = 0; j < BN && n0 + j < s.C; ++j) {
      const int64_t n = n0 + j;
      acc_t s0 = acc_t(0), s1 = acc_t(0);  // the tile's sums, in the accumulate dtype
      for (int64_t i = 0; i < rows; ++i) {
        const int64_t off = px[i] * s.C + n;
        acc_t g = acc[i][j];
        if (res) g += acc_t(res[off]);
        if (py) {
          const acc_t pyv = acc_t(py[off]);
          g = relu_bwd<acc_t, acc_t>(g, maybe_affine<acc_t>(pyv, ps, pb, n));
          s0 += g;
          s1 += g * (pyv - pm[n]);
        }
        dx[off] = static_cast<scalar_t>(g);
      }
      if (py) partial[tile * s.C + n] = Sums<2>{{double(s0), double(s1)}};
    }
  }
};

// ================================================================ wgrad
template <class scalar_t, class acc_t>
struct WgradOps {  // WgradOperands: A(ko, i) = dy at output pixel i, B(j, i) = activation
  const ConvShape& s;
  const scalar_t* x;  // NHWC
  const acc_t *in_scale, *in_shift;
  bool in_relu;
  const scalar_t *dz, *y;  // NHWC
  const acc_t *ca, *cb, *cc;
  int64_t kchunk;  // conv_wgrad_kchunk
  int64_t z = 0;   // the split-K range of slice z (set by at(z))
  WgradOps at(int64_t zz) const {
    WgradOps o = *this;
    o.z = zz;
    return o;
  }
  GemmSlice slice() const { return wgrad_slice(s, kchunk, z); }
  Index row_a(int64_t ko) const { return index_below(ko, s.K); }
  acc_t a(Index ko, int64_t i) const {
    if (ko.i < 0) return acc_t(0);
    const int64_t off = i * s.K + ko.i;
    return acc_t(static_cast<scalar_t>(
        bn_bwd_apply<acc_t>(acc_t(dz[off]), acc_t(y[off]), ca[ko.i], cb[ko.i], cc[ko.i])));
  }
  Index row_b(int64_t j) const { return index_below(j, fwd_gemm_k(s)); }
  acc_t b(Index j, int64_t i) const {
    if (j.i < 0) return acc_t(0);
    return wgrad_b_elem<acc_t>(s, j.i, i, [&](int64_t off, int64_t c) {
      return acc_t(static_cast<scalar_t>(
          prologue<acc_t>(acc_t(x[off]), in_scale, in_shift, in_relu, c)));
    });
  }
};

template <class acc_t>
struct WgradEpi {  // WgradEpilogue: the split's partial dw tile -> workspace [splits][K][RSC]
  const ConvShape& s;
  acc_t* ws;
  void operator()(const acc_t (&acc)[BM][BN], int64_t m0, int64_t n0, int64_t z) const {
    const int64_t cols = fwd_gemm_k(s);
    acc_t* part = ws + z * s.K * cols;
    for (int64_t i = 0; i < BM && m0 + i < s.K; ++i)
      for (int64_t j = 0; j < BN && n0 + j < cols; ++j)
        part[(m0 + i) * cols + n0 + j] = acc[i][j];
  }
};

// ================================================================ the ops
// Data pointer of a staged operand, null when absent.
template <class T>
const T* ptr(const OptTensor& t) {
  return t ? t->const_data_ptr<T>() : nullptr;
}
template <class T>
const T* ptr(const Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

constexpr ConvBackend kTwin{true, true, "the CPU twins of the CUDA kernels"};

std::tuple<Tensor, Tensor, Tensor> conv_fwd_igemm(
    const Tensor& x, const Tensor& weight, int64_t stride, int64_t padding, int64_t dilation,
    int64_t groups, const OptTensor& in_scale, const OptTensor& in_shift, bool in_relu,
    const OptTensor& out_scale, const OptTensor& out_shift, const OptTensor& residual,
    const OptTensor& res_scale, const OptTensor& res_shift, bool out_relu, bool stats) {
  const ConvFwdArgs st =
      stage_conv_fwd(kTwin, "_conv_fwd_igemm", x, weight, stride, padding, dilation, groups,
                     in_scale, in_shift, out_scale, out_shift, residual, res_scale, res_shift,
                     stats);
  const ConvShape& s = st.s;
  Tensor y = st.new_y();
  const int64_t M = fwd_gemm_m(s), mtiles = conv_tiles(M, BM);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "_conv_fwd_igemm",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<Welford<double>> partial(stats ? mtiles * s.K : 0);
    const FwdOps<scalar_t, acc_t> ops{s, st.x.const_data_ptr<scalar_t>(),
                                      st.w.const_data_ptr<scalar_t>(), ptr<acc_t>(st.in_scale),
                                      ptr<acc_t>(st.in_shift), in_relu};
    const FwdEpi<scalar_t, acc_t> epi{
        s, ptr<acc_t>(st.out_scale), ptr<acc_t>(st.out_shift), ptr<acc_t>(st.res_scale),
        ptr<acc_t>(st.res_shift), ptr<scalar_t>(st.residual), y.data_ptr<scalar_t>(), out_relu,
        stats, partial.data()};
    run_grid<acc_t>(ops, epi, M, s.K, 1);
    if (!stats) return;
    const auto total = merge_tiles(partial, mtiles, s.K, [](Welford<double>& t, const auto& p) {
      t = welford_merge(t, p);
    });
    for (int64_t c = 0; c < s.K; ++c) {
      st.mean.data_ptr<acc_t>()[c] = acc_t(total[c].mean);
      st.m2.data_ptr<acc_t>()[c] = acc_t(total[c].m2);
    }
  });
  return {y.contiguous(st.out_fmt), st.mean, st.m2};
}

std::tuple<Tensor, Tensor, Tensor> conv_bwd_data_igemm(
    const Tensor& dz, const Tensor& y, const Tensor& a, const Tensor& b, const Tensor& c,
    const Tensor& weight, at::IntArrayRef input_size, int64_t stride, int64_t padding,
    int64_t dilation, int64_t groups, const OptTensor& residual, const OptTensor& prev_y,
    const OptTensor& prev_scale, const OptTensor& prev_shift, const OptTensor& prev_mean,
    const OptTensor& prev_invstd) {
  const ConvBwdDataArgs st = stage_conv_bwd_data(
      kTwin, "_conv_bwd_data_igemm", dz, y, a, b, c, weight, input_size, stride, padding,
      dilation, groups, residual, prev_y, prev_scale, prev_shift, prev_mean, prev_invstd);
  const ConvShape& s = st.s;
  const bool has_prev = st.prev_y.defined();
  // Row tiles of the largest stride phase, for every phase: partials [phases * mtiles][C].
  const int64_t mtiles = dgrad_tiles(s);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dz.scalar_type(),
                                  "_conv_bwd_data_igemm", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<Sums<2>> partial(has_prev ? mtiles * s.C : 0);
    const DgradOps<scalar_t, acc_t> ops{s,
                                        st.dy.dz.const_data_ptr<scalar_t>(),
                                        st.dy.y.const_data_ptr<scalar_t>(),
                                        st.dy.a.const_data_ptr<acc_t>(),
                                        st.dy.b.const_data_ptr<acc_t>(),
                                        st.dy.c.const_data_ptr<acc_t>(),
                                        st.w.const_data_ptr<scalar_t>()};
    const DgradEpi<scalar_t, acc_t> epi{
        s, ptr<scalar_t>(st.residual), ptr<scalar_t>(st.prev_y), ptr<acc_t>(st.prev_scale),
        ptr<acc_t>(st.prev_shift), ptr<acc_t>(st.prev_mean), st.dx.data_ptr<scalar_t>(),
        partial.data()};
    run_grid<acc_t>(ops, epi, dgrad_gemm_m_max(s), s.C, dgrad_phases(s));
    if (!has_prev) return;
    // StoreDgradSums: the double tile-order sums; the second times prev_invstd in double.
    const auto total = merge_tiles(partial, mtiles, s.C, add_sums<2>);
    const acc_t* inv = st.prev_invstd->const_data_ptr<acc_t>();
    for (int64_t ch = 0; ch < s.C; ++ch) {
      st.sum_dx.data_ptr<acc_t>()[ch] = acc_t(total[ch].v[0]);
      st.sum_dx_xhat.data_ptr<acc_t>()[ch] = acc_t(total[ch].v[1] * double(inv[ch]));
    }
  });
  return {st.dx.contiguous(st.out_fmt), st.sum_dx, st.sum_dx_xhat};
}

Tensor conv_bwd_weight_igemm(const Tensor& x, const OptTensor& in_scale,
                             const OptTensor& in_shift, bool in_relu, const Tensor& dz,
                             const Tensor& y, const Tensor& a, const Tensor& b, const Tensor& c,
                             const Tensor& weight, int64_t stride, int64_t padding,
                             int64_t dilation, int64_t groups) {
  const ConvBwdWeightArgs st =
      stage_conv_bwd_weight(kTwin, "_conv_bwd_weight_igemm", x, in_scale, in_shift, dz, y, a, b,
                            c, weight, stride, padding, dilation, groups);
  const ConvShape& s = st.s;
  // dw in the accumulate dtype and the weight's memory format; rounded to the weight's dtype
  // once at the end (reduce_wgrad_kernel converts each fp32 sum straight to it).
  Tensor dw = at::empty(weight.sizes(),
                        x.options().dtype(stat_dtype(x.scalar_type())).memory_format(st.w_fmt));
  const int64_t cols = fwd_gemm_k(s), splits = conv_wgrad_splits(s);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                  "_conv_bwd_weight_igemm", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<acc_t> ws(splits * s.K * cols);
    const WgradOps<scalar_t, acc_t> ops{s,
                                        st.x.const_data_ptr<scalar_t>(),
                                        ptr<acc_t>(st.in_scale),
                                        ptr<acc_t>(st.in_shift),
                                        in_relu,
                                        st.dy.dz.const_data_ptr<scalar_t>(),
                                        st.dy.y.const_data_ptr<scalar_t>(),
                                        st.dy.a.const_data_ptr<acc_t>(),
                                        st.dy.b.const_data_ptr<acc_t>(),
                                        st.dy.c.const_data_ptr<acc_t>(),
                                        conv_wgrad_kchunk(s, splits)};
    run_grid<acc_t>(ops, WgradEpi<acc_t>{s, ws.data()}, s.K, cols, splits);
    // reduce_wgrad_kernel: per dw element, the split partials summed in split order.
    const int64_t total = s.K * cols;
    acc_t* out = dw.data_ptr<acc_t>();
    at::parallel_for(0, total, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        acc_t v = acc_t(0);
        for (int64_t z = 0; z < splits; ++z) v += ws[z * total + i];
        out[wgrad_out_offset(s, i / cols, i % cols, st.w_fmt == kCL)] = v;
      }
    });
  });
  return dw.to(weight.scalar_type());  // keeps the memory format
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_resnet, CPU, m) {
  m.impl("_conv_fwd_igemm", &conv_fwd_igemm);
  m.impl("_conv_bwd_data_igemm", &conv_bwd_data_igemm);
  m.impl("_conv_bwd_weight_igemm", &conv_bwd_weight_igemm);
}

}  // namespace fr::cpu
