// CPU kernels of conv_fwd, conv_bwd_data, conv_bwd_weight and conv_bwd (the last two in one):
// the GEMM goes through ATen in the accumulate dtype; prologue, epilogue, statistics, masks and
// sums are fused loops over csrc/common math.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/convolution.h>
#include <ATen/ops/convolution_backward.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include "common/fusion.h"
#include "common/stats.h"
#include "conv_staging.h"
#include "cpu/cpu_utils.h"

namespace fr::cpu {
namespace {

#define FR_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

// One row (cpu_utils.h for_each_row) of the prologue [relu](x*scale + shift), rounded to the
// data dtype, stored in the accumulate dtype; restrict-qualified and branch-free so that it
// vectorises.
template <bool kPerElem, bool kAffine, bool kRelu, class scalar_t, class acc_t>
FR_ROW_KERNEL void prologue_row(
    int64_t n, const scalar_t* __restrict__ x, acc_t* __restrict__ a,
    const acc_t* __restrict__ scale, const acc_t* __restrict__ shift) {
  for (int64_t i = 0; i < n; ++i) {
    const int64_t k = kPerElem ? i : 0;
    a[i] = acc_t(static_cast<scalar_t>(prologue<acc_t>(
        acc_t(x[i]), kAffine ? scale : nullptr, kAffine ? shift : nullptr, kRelu, k)));
  }
}

// One row of the BN-backward map dy = a*dz + b*y + c, rounded to dz's dtype.
template <bool kPerElem, class scalar_t, class acc_t>
FR_ROW_KERNEL void bn_bwd_dy_row(
    int64_t n, const scalar_t* __restrict__ dz, const scalar_t* __restrict__ y,
    acc_t* __restrict__ dy, const acc_t* __restrict__ a, const acc_t* __restrict__ b,
    const acc_t* __restrict__ c) {
  for (int64_t i = 0; i < n; ++i) {
    const int64_t k = kPerElem ? i : 0;
    dy[i] = acc_t(static_cast<scalar_t>(
        bn_bwd_apply<acc_t>(acc_t(dz[i]), acc_t(y[i]), a[k], b[k], c[k])));
  }
}

// The forward prologue [relu](x*scale + shift), rounded to x's dtype (the GEMM operand is
// stored in the data dtype) and returned in the accumulate dtype, in x's memory format.
Tensor prologue_act(const Tensor& x_in, const OptTensor& scale_in, const OptTensor& shift_in,
                    bool do_relu) {
  const auto sd = stat_dtype(x_in.scalar_type());
  if (!scale_in && !do_relu) return as_dtype(x_in, sd);
  const auto fmt = memory_format(x_in);
  const Tensor x = x_in.contiguous(fmt);
  const OptTensor scale = contiguous(scale_in), shift = contiguous(shift_in);
  Tensor a = at::empty(x.sizes(), x.options().dtype(sd).memory_format(fmt));
  FR_DISPATCH(x.scalar_type(), "prologue_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    acc_t* ap = a.data_ptr<acc_t>();
    const acc_t* sp = opt_ptr<acc_t>(scale);
    const acc_t* hp = opt_ptr<acc_t>(shift);
    static_flags(
        [&](auto kAffine, auto kRelu) {
          for_each_row(layout_of(x.sizes(), fmt), [&](auto per_elem, int64_t off, int64_t len,
                                                      int64_t c) {
            prologue_row<per_elem, kAffine, kRelu>(len, xp + off, ap + off, offset(sp, c),
                                                   offset(hp, c));
          });
        },
        sp != nullptr, do_relu);
  });
  return a;
}

// The BN-backward map dy = a*dz + b*y + c over staged operands (dz, y in `fmt`), rounded to
// dz's dtype, in the accumulate dtype and `fmt`.
Tensor bn_bwd_dy(const DyOperands& op, at::MemoryFormat fmt) {
  const Tensor &dz = op.dz, &y = op.y;
  Tensor dy = at::empty(dz.sizes(), dz.options().dtype(op.a.scalar_type()).memory_format(fmt));
  FR_DISPATCH(dz.scalar_type(), "bn_bwd_dy_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gp = dz.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    const acc_t* ap = op.a.const_data_ptr<acc_t>();
    const acc_t* bp = op.b.const_data_ptr<acc_t>();
    const acc_t* cp = op.c.const_data_ptr<acc_t>();
    acc_t* out = dy.data_ptr<acc_t>();
    for_each_row(layout_of(dz.sizes(), fmt), [&](auto per_elem, int64_t off, int64_t len,
                                                 int64_t ch) {
      bn_bwd_dy_row<per_elem>(len, gp + off, yp + off, out + off, ap + ch, bp + ch, cp + ch);
    });
  });
  return dy;
}

// One contiguous run of the epilogue. The channel advances with i (kPerElem: a channels-last
// pixel) or stays (an NCHW plane; the coefficient pointers then point at its channel).
// Restrict-qualified (and a row kernel, cpu_utils.h) so that it vectorises with no runtime
// alias check, which an in-place call would fail: in place, y is both read and written and
// src is unused.
template <bool kPerElem, bool kInPlace, bool kOs, bool kRes, bool kRs, bool kRelu,
          class scalar_t, class acc_t>
FR_ROW_KERNEL void epilogue_run(
    int64_t n, const acc_t* __restrict__ src, scalar_t* __restrict__ y,
    const acc_t* __restrict__ os, const acc_t* __restrict__ ob, const scalar_t* __restrict__ r,
    const acc_t* __restrict__ rs, const acc_t* __restrict__ rb) {
  for (int64_t i = 0; i < n; ++i) {
    const acc_t v = kInPlace ? acc_t(y[i]) : src[i];
    const acc_t res = kRes ? acc_t(r[i]) : acc_t(0);
    y[i] = static_cast<scalar_t>(epilogue<acc_t>(v, kOs ? os : nullptr, kOs ? ob : nullptr, kRes,
                                                 res, kRs ? rs : nullptr, kRs ? rb : nullptr,
                                                 kRelu, kPerElem ? i : 0));
  }
}

// y = [relu](c*scale + shift + [res*res_scale + res_shift]) over the [outer, C, inner] view,
// with the options as compile-time constants. y may be c itself (in place).
template <class scalar_t, class acc_t>
void epilogue_loop(const Layout& L, const acc_t* cp, scalar_t* yp, const acc_t* osp,
                   const acc_t* obp, const scalar_t* rp, const acc_t* rsp, const acc_t* rbp,
                   bool out_relu) {
  const bool in_place = static_cast<const void*>(cp) == static_cast<const void*>(yp);
  static_flags(
      [&](auto in_pl, auto has_os, auto has_r, auto has_rs, auto relu) {
        const acc_t* src = in_pl ? nullptr : cp;
        at::parallel_for(0, L.outer, outer_grain(L), [&](int64_t begin, int64_t end) {
          for (int64_t o = begin; o < end; ++o) {
            if (L.inner == 1) {
              const int64_t k = o * L.C;
              epilogue_run<true, in_pl, has_os, has_r, has_rs, relu>(
                  L.C, offset(src, k), yp + k, osp, obp, offset(rp, k), rsp, rbp);
              continue;
            }
            for (int64_t c = 0; c < L.C; ++c) {
              const int64_t k = (o * L.C + c) * L.inner;
              epilogue_run<false, in_pl, has_os, has_r, has_rs, relu>(
                  L.inner, offset(src, k), yp + k, offset(osp, c), offset(obp, c),
                  offset(rp, k), offset(rsp, c), offset(rbp, c));
            }
          }
        });
      },
      in_place, osp != nullptr, rp != nullptr, rsp != nullptr, out_relu);
}

// Channels-last statistics of rows [o_begin, o_end) (pixels of C channels): two passes over
// the chunk (in cache for the second), each vectorised across channels, in double.
template <class acc_t>
FR_ROW_KERNEL void chunk_stats(
    const acc_t* __restrict__ cp, int64_t C, int64_t o_begin, int64_t o_end,
    double* __restrict__ mean, double* __restrict__ m2) {
  for (int64_t c = 0; c < C; ++c) mean[c] = m2[c] = 0.0;
  for (int64_t o = o_begin; o < o_end; ++o)
    for (int64_t c = 0; c < C; ++c) mean[c] += double(cp[o * C + c]);
  const double n = double(o_end - o_begin);
  for (int64_t c = 0; c < C; ++c) mean[c] /= n;
  for (int64_t o = o_begin; o < o_end; ++o)
    for (int64_t c = 0; c < C; ++c) {
      const double d = double(cp[o * C + c]) - mean[c];
      m2[c] += d * d;
    }
}

// Per-channel mean and m2 of the raw conv output, in double: per chunk of rows (fixed by the
// shape, never by the thread count) two passes for channels-last, two passes per H*W run for
// NCHW; chunks and runs merged in order by Chan's formula.
template <class acc_t>
void conv_stats(const Layout& L, const acc_t* cp, acc_t* mean, acc_t* m2) {
  using W = Welford<double>;
  std::vector<W> total;
  if (L.inner == 1) {
    const int64_t grain = outer_grain(L), C = L.C;
    const int64_t nchunk = (L.outer + grain - 1) / grain;
    std::vector<double> part(nchunk * 2 * C);
    at::parallel_for(0, nchunk, 1, [&](int64_t begin, int64_t end) {
      for (int64_t ch = begin; ch < end; ++ch)
        chunk_stats(cp, C, ch * grain, std::min(L.outer, (ch + 1) * grain),
                    part.data() + ch * 2 * C, part.data() + ch * 2 * C + C);
    });
    total.resize(C);
    for (int64_t ch = 0; ch < nchunk; ++ch) {
      const double n = double(std::min(L.outer, (ch + 1) * grain) - ch * grain);
      for (int64_t c = 0; c < C; ++c)
        total[c] = welford_merge(total[c], W{n, part[ch * 2 * C + c], part[ch * 2 * C + C + c]});
    }
  } else {
    total = reduce_runs<W>(
        L,
        [&](W& acc, int64_t, int64_t off, int64_t len) {
          acc = welford_merge(
              acc, welford_run<double>([&](int64_t i) { return double(cp[off + i]); }, len));
        },
        [](W& t, const W& p) { t = welford_merge(t, p); });
  }
  for (int64_t c = 0; c < L.C; ++c) {
    mean[c] = acc_t(total[c].mean);
    m2[c] = acc_t(total[c].m2);
  }
}

constexpr ConvBackend kAten{false, true, "the cpp backend"};

// The GEMMs of the three ops, in the accumulate dtype. A 1x1, stride-1, unpadded, ungrouped
// conv over channels-last tensors is one GEMM over pixels, [N*H*W, C] x [C, K]: at::mm runs
// it without the zero fills and layout handling of ATen's 1x1 convolution path (measured
// 5-15% faster for ResNet-50's 1x1 convs); anything else goes through ATen's convolution.
bool pixel_gemm(const Tensor& weight, int64_t stride, int64_t padding, int64_t groups,
                at::MemoryFormat fmt) {
  return fmt == at::MemoryFormat::ChannelsLast && weight.size(2) == 1 && weight.size(3) == 1 &&
         stride == 1 && padding == 0 && groups == 1;
}

// Views as one as_strided each (permute + reshape dispatch two or three ops, which on small
// layers cost as much as the arithmetic around them):
// [N, C, H, W] channels-last contiguous <-> [N*H*W, C] contiguous, pixels x channels (or
// its transpose, channels x pixels);
Tensor as_pixels(const Tensor& t, bool transposed = false) {
  TORCH_INTERNAL_ASSERT(t.is_contiguous(at::MemoryFormat::ChannelsLast));
  const int64_t P = t.size(0) * t.size(2) * t.size(3), C = t.size(1);
  return transposed ? t.as_strided({C, P}, {1, C}, t.storage_offset())
                    : t.as_strided({P, C}, {C, 1}, t.storage_offset());
}
Tensor from_pixels(const Tensor& m, at::IntArrayRef nchw) {
  TORCH_INTERNAL_ASSERT(m.is_contiguous() && m.size(1) == nchw[1]);
  const int64_t C = nchw[1], W = nchw[3];
  return m.as_strided(nchw, {nchw[2] * W * C, 1, W * C, C}, m.storage_offset());
}
// a 1x1 filter [K, C, 1, 1] (any strides) as the [K, C] matrix, or its transpose [C, K].
Tensor filter_matrix(const Tensor& w, bool transposed) {
  const int64_t K = w.size(0), C = w.size(1), sk = w.stride(0), sc = w.stride(1);
  return transposed ? w.as_strided({C, K}, {sc, sk}, w.storage_offset())
                    : w.as_strided({K, C}, {sk, sc}, w.storage_offset());
}

Tensor gemm_fwd(const Tensor& a, const Tensor& w, int64_t stride, int64_t padding,
                int64_t dilation, int64_t groups, at::MemoryFormat fmt) {
  if (pixel_gemm(w, stride, padding, groups, fmt)) {
    return from_pixels(at::mm(as_pixels(a), filter_matrix(w, true)),
                       {a.size(0), w.size(0), a.size(2), a.size(3)});
  }
  return at::convolution(a, w, std::nullopt, {stride, stride}, {padding, padding},
                         {dilation, dilation}, false, {0, 0}, groups)
      .contiguous(fmt);
}

Tensor gemm_dgrad(const Tensor& dy, const Tensor& w, at::IntArrayRef input_size, int64_t stride,
                  int64_t padding, int64_t dilation, int64_t groups, at::MemoryFormat fmt) {
  if (pixel_gemm(w, stride, padding, groups, fmt))
    return from_pixels(at::mm(as_pixels(dy), filter_matrix(w, false)), input_size);
  // Only the shape and memory format of the input matter; an expanded (stride-0) stand-in
  // reads as NCHW, and ATen then picks slower algorithms and returns dx in NCHW. at::empty
  // touches no page.
  const Tensor input_like = at::empty(input_size, dy.options().memory_format(fmt));
  return std::get<0>(at::convolution_backward(dy, input_like, w, std::nullopt, {stride, stride},
                                              {padding, padding}, {dilation, dilation}, false,
                                              {0, 0}, groups, {true, false, false}))
      .contiguous(fmt);
}

// `w`: the weight in the accumulate dtype; its values are not read, its memory format picks
// the algorithm (a stride-0 stand-in makes oneDNN's 3x3 weight gradient up to 4x slower).
Tensor gemm_wgrad(const Tensor& dy, const Tensor& act, const Tensor& w, int64_t stride,
                  int64_t padding, int64_t dilation, int64_t groups) {
  if (pixel_gemm(w, stride, padding, groups, memory_format(act)) &&
      memory_format(dy) == at::MemoryFormat::ChannelsLast)
    return at::mm(as_pixels(dy, true), as_pixels(act)).view(w.sizes());
  return std::get<1>(at::convolution_backward(dy, act, w, std::nullopt, {stride, stride},
                                              {padding, padding}, {dilation, dilation}, false,
                                              {0, 0}, groups, {false, true, false}));
}

std::tuple<Tensor, Tensor, Tensor> conv_fwd(
    const Tensor& x_in, const Tensor& weight, int64_t stride, int64_t padding, int64_t dilation,
    int64_t groups, const OptTensor& in_scale, const OptTensor& in_shift, bool in_relu,
    const OptTensor& out_scale, const OptTensor& out_shift, const OptTensor& residual,
    const OptTensor& res_scale, const OptTensor& res_shift, bool out_relu, bool stats) {
  const ConvFwdArgs st =
      stage_conv_fwd(kAten, "conv_fwd", x_in, weight, stride, padding, dilation, groups, in_scale,
                     in_shift, out_scale, out_shift, residual, res_scale, res_shift, stats);
  const auto sd = stat_dtype(x_in.scalar_type());
  const bool has_res = st.residual.defined();
  const Tensor a = prologue_act(st.x, st.in_scale, st.in_shift, in_relu);
  const Tensor conv = gemm_fwd(a, as_dtype(st.w, sd), stride, padding, dilation, groups, st.fmt);
  // fp32/fp64: the epilogue overwrites the conv output, which this op owns. A fresh output
  // costs a first touch of every page (on small layers as much as the GEMM) and a stream.
  const bool in_place = conv.scalar_type() == x_in.scalar_type();
  Tensor y = in_place ? conv : st.new_y();
  const bool identity = !st.out_scale && !has_res && !out_relu;
  const Layout L = layout_of(conv.sizes(), st.fmt);

  FR_DISPATCH(x_in.scalar_type(), "conv_fwd_epilogue_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* cp = conv.const_data_ptr<acc_t>();
    if (stats) conv_stats(L, cp, st.mean.data_ptr<acc_t>(), st.m2.data_ptr<acc_t>());
    if (in_place && identity) return;
    epilogue_loop<scalar_t, acc_t>(L, cp, y.data_ptr<scalar_t>(), opt_ptr<acc_t>(st.out_scale),
                                   opt_ptr<acc_t>(st.out_shift),
                                   has_res ? st.residual.const_data_ptr<scalar_t>() : nullptr,
                                   opt_ptr<acc_t>(st.res_scale), opt_ptr<acc_t>(st.res_shift),
                                   out_relu);
  });
  return {y, st.mean, st.m2};
}

// One row of the dgrad output without a previous BN: dx = dgrad [+ residual].
template <bool kRes, class scalar_t, class acc_t>
FR_ROW_KERNEL void dgrad_out_row(
    int64_t n, const acc_t* __restrict__ g, const scalar_t* __restrict__ r,
    scalar_t* __restrict__ dx) {
  for (int64_t i = 0; i < n; ++i)
    dx[i] = static_cast<scalar_t>(kRes ? g[i] + acc_t(r[i]) : g[i]);
}

// One row of the dgrad output behind relu(prev_y*prev_scale + prev_shift): the masked
// gradient and its two sums for the previous BN's backward (s0: dx, s1: dx*(prev_y - mean)),
// of the gradient before its rounding to the data dtype. Where that rounding is none (fp32,
// fp64) the sums read dx back in a second loop, which vectorises (block_end_bwd_row).
template <bool kPerElem, bool kRes, bool kAffine, class scalar_t, class acc_t>
FR_ROW_KERNEL void dgrad_prev_row(
    int64_t n, const acc_t* __restrict__ g, const scalar_t* __restrict__ r,
    const scalar_t* __restrict__ prev_y, scalar_t* __restrict__ dx,
    const acc_t* __restrict__ scale, const acc_t* __restrict__ shift,
    const acc_t* __restrict__ mean, double* __restrict__ s0, double* __restrict__ s1) {
  auto masked = [&](int64_t i) {
    const int64_t k = kPerElem ? i : 0;
    return relu_bwd<acc_t, acc_t>(
        kRes ? g[i] + acc_t(r[i]) : g[i],
        maybe_affine<acc_t>(acc_t(prev_y[i]), kAffine ? scale : nullptr,
                            kAffine ? shift : nullptr, k));
  };
  auto add = [&](int64_t i, acc_t v) {
    const int64_t k = kPerElem ? i : 0;
    s0[k] += double(v);
    s1[k] += double(v) * double(acc_t(prev_y[i]) - mean[k]);
  };
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    for (int64_t i = 0; i < n; ++i) dx[i] = masked(i);
    for (int64_t i = 0; i < n; ++i) add(i, dx[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) {
      const acc_t v = masked(i);
      dx[i] = static_cast<scalar_t>(v);
      add(i, v);
    }
  }
}

// conv_bwd_data's epilogue over the GEMM's dx_acc: dx [+ residual], or behind a previous
// BN+ReLU the masked dx and that BN's backward sums. Returns (dx, sum_dx, sum_dx_xhat).
std::tuple<Tensor, Tensor, Tensor> dgrad_epilogue(const ConvBwdDataArgs& st,
                                                  const Tensor& dx_acc,
                                                  at::IntArrayRef input_size) {
  const bool has_res = st.residual.defined(), has_prev = st.prev_y.defined();
  const int64_t C = input_size[1];
  const Layout L = layout_of(input_size, st.fmt);

  FR_DISPATCH(st.dx.scalar_type(), "conv_bwd_data_epilogue_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* gp = dx_acc.const_data_ptr<acc_t>();
    const scalar_t* rp = has_res ? st.residual.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* pyp = has_prev ? st.prev_y.const_data_ptr<scalar_t>() : nullptr;
    const acc_t* psp = opt_ptr<acc_t>(st.prev_scale);
    const acc_t* pbp = opt_ptr<acc_t>(st.prev_shift);
    const acc_t* pmp = opt_ptr<acc_t>(st.prev_mean);
    scalar_t* out = st.dx.data_ptr<scalar_t>();
    if (!has_prev) {
      static_flags(
          [&](auto kRes) {
            for_each_row(L, [&](auto, int64_t off, int64_t len, int64_t) {
              dgrad_out_row<kRes>(len, gp + off, offset(rp, off), out + off);
            });
          },
          has_res);
      return;
    }
    // The input was relu(prev_y*prev_scale + prev_shift): mask, then the sums of the previous
    // BN's backward over the masked gradient.
    std::vector<double> total;
    static_flags(
        [&](auto kRes, auto kAffine) {
          total = reduce_rows<2>(L, [&](auto per_elem, double* acc, int64_t off, int64_t len,
                                       int64_t ch) {
            dgrad_prev_row<per_elem, kRes, kAffine>(len, gp + off, offset(rp, off), pyp + off,
                                                    out + off, offset(psp, ch), offset(pbp, ch),
                                                    pmp + ch, acc + ch, acc + C + ch);
          });
        },
        has_res, psp != nullptr);
    const acc_t* pip = st.prev_invstd->const_data_ptr<acc_t>();
    for (int64_t ch = 0; ch < C; ++ch) {
      st.sum_dx.data_ptr<acc_t>()[ch] = acc_t(total[ch]);
      st.sum_dx_xhat.data_ptr<acc_t>()[ch] = acc_t(total[C + ch] * double(pip[ch]));
    }
  });
  return {st.dx, st.sum_dx, st.sum_dx_xhat};
}

std::tuple<Tensor, Tensor, Tensor> conv_bwd_data(
    const Tensor& dz, const Tensor& y, const Tensor& a, const Tensor& b, const Tensor& c,
    const Tensor& weight, at::IntArrayRef input_size, int64_t stride, int64_t padding,
    int64_t dilation, int64_t groups, const OptTensor& residual, const OptTensor& prev_y,
    const OptTensor& prev_scale, const OptTensor& prev_shift, const OptTensor& prev_mean,
    const OptTensor& prev_invstd) {
  const ConvBwdDataArgs st = stage_conv_bwd_data(
      kAten, "conv_bwd_data", dz, y, a, b, c, weight, input_size, stride, padding, dilation,
      groups, residual, prev_y, prev_scale, prev_shift, prev_mean, prev_invstd);
  const Tensor dy = bn_bwd_dy(st.dy, st.fmt);
  const Tensor dx_acc = gemm_dgrad(dy, as_dtype(st.w, stat_dtype(dz.scalar_type())),
                                   input_size, stride, padding, dilation, groups, st.fmt);
  return dgrad_epilogue(st, dx_acc, input_size);
}

// A strided 1x1 conv reads every stride-th pixel: stride 1 over those gives the same sums,
// and avoids oneDNN's strided 1x1 channels_last float32 weight gradient, which returns wrong
// values now and then (torch 2.14 on CPU; found by test_randomized).
bool subsampled_wgrad(const Tensor& weight, int64_t stride, int64_t padding) {
  return weight.size(2) == 1 && weight.size(3) == 1 && padding == 0 && stride > 1;
}

// The weight gradient's input operand: the forward prologue's activation, subsampled where
// subsampled_wgrad (then the GEMM runs at stride 1).
Tensor wgrad_input(const ConvBwdWeightArgs& st, bool in_relu, const Tensor& weight,
                   int64_t stride, int64_t padding) {
  Tensor act = prologue_act(st.x, st.in_scale, st.in_shift, in_relu);
  if (!subsampled_wgrad(weight, stride, padding)) return act;
  return act.slice(2, 0, std::nullopt, stride)
      .slice(3, 0, std::nullopt, stride)
      .contiguous(memory_format(act));
}

Tensor conv_bwd_weight(const Tensor& x, const OptTensor& in_scale, const OptTensor& in_shift,
                       bool in_relu, const Tensor& dz, const Tensor& y, const Tensor& a,
                       const Tensor& b, const Tensor& c, const Tensor& weight, int64_t stride,
                       int64_t padding, int64_t dilation, int64_t groups) {
  const ConvBwdWeightArgs st =
      stage_conv_bwd_weight(kAten, "conv_bwd_weight", x, in_scale, in_shift, dz, y, a, b, c,
                            weight, stride, padding, dilation, groups);
  const Tensor act = wgrad_input(st, in_relu, weight, stride, padding);
  const Tensor dy = bn_bwd_dy(st.dy, st.fmt);
  const Tensor dw = gemm_wgrad(dy, act, as_dtype(weight, stat_dtype(dz.scalar_type())),
                               subsampled_wgrad(weight, stride, padding) ? 1 : stride, padding,
                               dilation, groups);
  return as_dtype(dw, weight.scalar_type()).contiguous(st.w_fmt);
}

// conv_bwd_weight and conv_bwd_data of one conv (reference.conv_bwd): the BN-backward map dy
// is made once for both GEMMs, and a conv that is not a pixel GEMM runs both in one ATen
// convolution_backward. With prev_mean/prev_invstd, x is a previous unit's raw output read
// through relu(x*in_scale + in_shift): dx is masked by that ReLU and summed for its BN.
std::tuple<Tensor, Tensor, Tensor, Tensor> conv_bwd(
    const Tensor& x, const OptTensor& in_scale, const OptTensor& in_shift, bool in_relu,
    const Tensor& dz, const Tensor& y, const Tensor& a, const Tensor& b, const Tensor& c,
    const Tensor& weight, int64_t stride, int64_t padding, int64_t dilation, int64_t groups,
    const OptTensor& residual, const OptTensor& prev_mean, const OptTensor& prev_invstd) {
  const bool has_prev = prev_mean.has_value();
  TORCH_CHECK(!has_prev || in_relu, "conv_bwd: prev_mean means x was read through a ReLU; "
              "in_relu must be true");
  const ConvBwdWeightArgs sw =
      stage_conv_bwd_weight(kAten, "conv_bwd", x, in_scale, in_shift, dz, y, a, b, c, weight,
                            stride, padding, dilation, groups);
  const ConvBwdDataArgs sd = stage_conv_bwd_data(
      kAten, "conv_bwd", dz, y, a, b, c, weight, x.sizes(), stride, padding, dilation, groups,
      residual, has_prev ? OptTensor(x) : std::nullopt, has_prev ? in_scale : std::nullopt,
      has_prev ? in_shift : std::nullopt, prev_mean, prev_invstd);
  const auto acc = stat_dtype(dz.scalar_type());
  const Tensor act = wgrad_input(sw, in_relu, weight, stride, padding);
  const Tensor dy = bn_bwd_dy(sd.dy, sd.fmt);
  const Tensor w = as_dtype(weight, acc);
  Tensor dx_acc, dw;
  if (pixel_gemm(w, stride, padding, groups, sd.fmt) ||
      subsampled_wgrad(weight, stride, padding)) {  // GEMMs of their own
    dx_acc = gemm_dgrad(dy, w, x.sizes(), stride, padding, dilation, groups, sd.fmt);
    dw = gemm_wgrad(dy, act, w, subsampled_wgrad(weight, stride, padding) ? 1 : stride, padding,
                    dilation, groups);
  } else {
    std::tie(dx_acc, dw, std::ignore) = at::convolution_backward(
        dy, act, w, std::nullopt, {stride, stride}, {padding, padding}, {dilation, dilation},
        false, {0, 0}, groups, {true, true, false});
    dx_acc = dx_acc.contiguous(sd.fmt);
  }
  auto [dx, sum_dx, sum_dx_xhat] = dgrad_epilogue(sd, dx_acc, x.sizes());
  return {dx, sum_dx, sum_dx_xhat, as_dtype(dw, weight.scalar_type()).contiguous(sw.w_fmt)};
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_resnet, CPU, m) {
  m.impl("conv_fwd", &conv_fwd);
  m.impl("conv_bwd_data", &conv_bwd_data);
  m.impl("conv_bwd_weight", &conv_bwd_weight);
  m.impl("conv_bwd", &conv_bwd);
}

}  // namespace fr::cpu
