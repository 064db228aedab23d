// fused_resnet::conv_fwd_igemm on CPU: the CPU twin of the CUDA conv_fwd kernel
// (cuda/conv_kernels.cu). Plain C++, no ATen GEMM: the same NHWC implicit-GEMM view, the same
// 64x64 CTA tiles walked in BK=32 steps, the same operand math (common/igemm.h fwd_a_elem:
// prologue, rounding to the data dtype, zero padding after the transform), the same epilogue
// (common/fusion.h) and the same statistics scheme (per-tile two-pass Welford of the
// deviations from a pivot, merged per channel in tile order in double with Chan's formula).
// CI has no GPU: this op is what tests the index/prologue/padding/epilogue/stats math the
// CUDA kernel runs.
// groups == 1 only (as the CUDA kernels); float64 too, for tight checks.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "common/fusion.h"
#include "common/igemm.h"
#include "common/stats.h"
#include "op_utils.h"

namespace fr::cpu {
namespace {

constexpr int64_t BM = 64, BN = 64, BK = 32;  // the CUDA kernels' tile (cuda/kernels.h)

int64_t tiles(int64_t n, int64_t t) { return (n + t - 1) / t; }

template <class scalar_t, class acc_t>
struct FwdTileRunner {
  const ConvShape& s;
  const scalar_t* x;
  const scalar_t* w;  // KRSC: [K][Kdim]
  const acc_t *in_scale, *in_shift, *out_scale, *out_shift, *res_scale, *res_shift;
  const scalar_t* res;  // NHWC or null
  scalar_t* y;          // NHWC
  bool in_relu, out_relu, stats;
  Welford<double>* partial;  // [mtiles][K]

  // One CTA tile: rows m0.., output channels n0...
  void run(int64_t m0, int64_t n0) const {
    const int64_t M = fwd_gemm_m(s), kd = fwd_gemm_k(s);
    acc_t A[BM][BK], B[BN][BK], acc[BM][BN] = {};
    int64_t pix[BM][3];  // the row's (n, p, q), decoded once as the CUDA loader does
    for (int64_t i = 0; i < BM; ++i)
      if (m0 + i < M) decode_m(s, m0 + i, &pix[i][0], &pix[i][1], &pix[i][2]);
    auto act = [&](int64_t off, int64_t c) {
      return acc_t(static_cast<scalar_t>(
          prologue<acc_t>(acc_t(x[off]), in_scale, in_shift, in_relu, c)));
    };
    for (int64_t k0 = 0; k0 < kd; k0 += BK) {
      for (int64_t i = 0; i < BM; ++i)
        for (int64_t kk = 0; kk < BK; ++kk) {
          const int64_t k = k0 + kk;
          A[i][kk] = (m0 + i < M && k < kd)
                         ? fwd_a_elem<acc_t>(s, pix[i][0], pix[i][1], pix[i][2], k, act)
                         : acc_t(0);
        }
      for (int64_t j = 0; j < BN; ++j)
        for (int64_t kk = 0; kk < BK; ++kk) {
          const int64_t n = n0 + j, k = k0 + kk;
          B[j][kk] = (n < s.K && k < kd) ? acc_t(w[n * kd + k]) : acc_t(0);
        }
      for (int64_t i = 0; i < BM; ++i)
        for (int64_t j = 0; j < BN; ++j) {
          acc_t v = acc[i][j];
          for (int64_t kk = 0; kk < BK; ++kk) v += A[i][kk] * B[j][kk];
          acc[i][j] = v;
        }
    }
    epilogue_tile(acc, m0, n0, M);
  }

  void epilogue_tile(const acc_t (&acc)[BM][BN], int64_t m0, int64_t n0, int64_t M) const {
    const int64_t rows = std::min(BM, M - m0);
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

template <class T>
const T* ptr(const OptTensor& t) {
  return t ? t->const_data_ptr<T>() : nullptr;
}

std::tuple<Tensor, Tensor, Tensor> conv_fwd_igemm(
    const Tensor& x_in, const Tensor& weight, int64_t stride, int64_t padding, int64_t dilation,
    int64_t groups, const OptTensor& in_scale, const OptTensor& in_shift, bool in_relu,
    const OptTensor& out_scale, const OptTensor& out_shift, const OptTensor& residual_in,
    const OptTensor& res_scale, const OptTensor& res_shift, bool out_relu, bool stats) {
  const char* op = "conv_fwd_igemm";
  check_data(x_in, op, "x");
  check_conv_args(stride, padding, dilation, groups, op);
  TORCH_CHECK(groups == 1, op, ": groups == 1 only (as the CUDA kernels), got groups=", groups);
  TORCH_CHECK(weight.dim() == 4 && weight.size(1) == x_in.size(1), op, ": weight ",
              weight.sizes(), " does not match x ", x_in.sizes());
  TORCH_CHECK(weight.scalar_type() == x_in.scalar_type() && weight.device() == x_in.device(), op,
              ": weight must match x's dtype and device");
  const auto sd = stat_dtype(x_in.scalar_type());
  const auto dev = x_in.device();
  const ConvShape s = make_conv_shape(x_in.size(0), x_in.size(1), x_in.size(2), x_in.size(3),
                                      weight.size(0), weight.size(2), weight.size(3), stride,
                                      padding, dilation, groups);
  TORCH_CHECK(s.P >= 1 && s.Q >= 1, op, ": input ", x_in.sizes(), " is too small for kernel ",
              weight.sizes());
  check_affine(in_scale, in_shift, s.C, sd, dev, op, "in_scale", "in_shift");
  check_affine(out_scale, out_shift, s.K, sd, dev, op, "out_scale", "out_shift");
  const bool has_res = residual_in.has_value();
  if (has_res) {
    check_optional_data(residual_in, {s.N, s.K, s.P, s.Q}, x_in, op, "residual", "x");
    check_affine(res_scale, res_shift, s.K, sd, dev, op, "res_scale", "res_shift");
  }
  constexpr auto kCL = at::MemoryFormat::ChannelsLast;
  const Tensor x = x_in.contiguous(kCL), w = weight.contiguous(kCL);
  const Tensor res = has_res ? residual_in->contiguous(kCL) : Tensor();
  const OptTensor is = contiguous(in_scale), ib = contiguous(in_shift);
  const OptTensor os = contiguous(out_scale), ob = contiguous(out_shift);
  const OptTensor rs = has_res ? contiguous(res_scale) : std::nullopt;
  const OptTensor rb = has_res ? contiguous(res_shift) : std::nullopt;
  Tensor y = at::empty({s.N, s.K, s.P, s.Q}, x.options().memory_format(kCL));
  Tensor mean = empty_stats(x_in), m2 = empty_stats(x_in);
  const int64_t mtiles = tiles(fwd_gemm_m(s), BM), ntiles = tiles(s.K, BN);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "conv_fwd_igemm",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<Welford<double>> partial(stats ? mtiles * s.K : 0);
    const FwdTileRunner<scalar_t, acc_t> runner{
        s, x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), ptr<acc_t>(is),
        ptr<acc_t>(ib), ptr<acc_t>(os), ptr<acc_t>(ob), ptr<acc_t>(rs), ptr<acc_t>(rb),
        has_res ? res.const_data_ptr<scalar_t>() : nullptr, y.data_ptr<scalar_t>(), in_relu,
        out_relu, stats, partial.data()};
    // The CTA grid; tiles write disjoint outputs and partials, so any thread order works.
    at::parallel_for(0, mtiles * ntiles, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) runner.run((t % mtiles) * BM, (t / mtiles) * BN);
    });
    if (!stats) return;
    // The merge kernel: per channel, tiles in order.
    mean = at::empty({s.K}, x.options().dtype(sd));
    m2 = at::empty({s.K}, x.options().dtype(sd));
    for (int64_t c = 0; c < s.K; ++c) {
      Welford<double> t;
      for (int64_t i = 0; i < mtiles; ++i) t = welford_merge(t, partial[i * s.K + c]);
      mean.data_ptr<acc_t>()[c] = acc_t(t.mean);
      m2.data_ptr<acc_t>()[c] = acc_t(t.m2);
    }
  });
  return {y.contiguous(memory_format(x_in)), mean, m2};
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_resnet, CPU, m) { m.impl("conv_fwd_igemm", &conv_fwd_igemm); }

}  // namespace fr::cpu
