// CPU kernels of bn_finalize, block_end, block_end_bwd and bn_backward (fused loops over
// csrc/common math).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/util/TypeCast.h>
#include <torch/library.h>

#include "common/bn.h"
#include "common/fusion.h"
#include "cpu/cpu_utils.h"
#include "op_utils.h"

namespace fr::cpu {
namespace {

// One row of block_end (cpu_utils.h for_each_row: per-channel vectors indexed by
// `kPerElem ? i : 0`), restrict-qualified and branch-free so that it vectorises.
template <bool kPerElem, bool kRs, class scalar_t, class acc_t>
FR_ROW_KERNEL void block_end_row(
    int64_t n, const scalar_t* __restrict__ y, const scalar_t* __restrict__ r,
    scalar_t* __restrict__ out, const acc_t* __restrict__ scale, const acc_t* __restrict__ shift,
    acc_t branch, const acc_t* __restrict__ rs, const acc_t* __restrict__ rb) {
  for (int64_t i = 0; i < n; ++i) {
    const int64_t k = kPerElem ? i : 0;
    out[i] = static_cast<scalar_t>(block_end_value<acc_t>(
        acc_t(y[i]), scale, shift, branch, acc_t(r[i]), kRs ? rs : nullptr, kRs ? rb : nullptr,
        k));
  }
}

// One row of block_end_bwd: dz = relu_bwd(d_out, out) and its three sums (sum k of the row's
// channel in s_k[kPerElem ? i : 0]). The sums read dz back in a second loop: GCC vectorises
// a select that is stored, not one that only feeds a conversion to double.
template <bool kPerElem, bool kD, class scalar_t, class acc_t>
FR_ROW_KERNEL void block_end_bwd_row(
    int64_t n, const scalar_t* __restrict__ d_out, const scalar_t* __restrict__ out,
    const scalar_t* __restrict__ y, const scalar_t* __restrict__ y_d, scalar_t* __restrict__ dz,
    const acc_t* __restrict__ mean, const acc_t* __restrict__ mean_d, double branch,
    double* __restrict__ s0, double* __restrict__ s1, double* __restrict__ s2) {
  for (int64_t i = 0; i < n; ++i) dz[i] = relu_bwd<acc_t, scalar_t>(d_out[i], acc_t(out[i]));
  for (int64_t i = 0; i < n; ++i) {
    const int64_t k = kPerElem ? i : 0;
    const double gd = double(acc_t(dz[i]));
    s0[k] += gd * branch;
    s1[k] += gd * branch * double(acc_t(y[i]) - mean[k]);
    if (kD) s2[k] += gd * double(acc_t(y_d[i]) - mean_d[k]);
  }
}

std::tuple<Tensor, Tensor, Tensor> bn_finalize(
    const Tensor& mean_in, const Tensor& m2_in, int64_t count, const OptTensor& weight,
    const OptTensor& bias, const OptTensor& running_mean, const OptTensor& running_var,
    const OptTensor& num_batches_tracked, std::optional<double> momentum, double eps,
    bool update_running_stats) {
  check_bn_finalize(mean_in, m2_in, count, weight, bias, running_mean, running_var,
                    num_batches_tracked, momentum, update_running_stats);
  const auto sd = mean_in.scalar_type();
  const Tensor mean = mean_in.contiguous(), m2 = m2_in.contiguous();
  const OptTensor w = working_copy(weight, sd), b = working_copy(bias, sd);
  Tensor scale = at::empty_like(mean), shift = at::empty_like(mean), invstd = at::empty_like(mean);
  Tensor rm, rv;
  int64_t nbt = 0;
  if (update_running_stats) {
    rm = working_copy(*running_mean, sd);
    rv = working_copy(*running_var, sd);
    if (num_batches_tracked) {  // a CPU int64 scalar: no add_ and item (two dispatches)
      nbt = ++*num_batches_tracked->data_ptr<int64_t>();
    }
  }
  const int64_t C = mean.numel();
  AT_DISPATCH_FLOATING_TYPES(sd, "bn_finalize_cpu", [&] {
    using T = scalar_t;
    const T* mp = mean.const_data_ptr<T>();
    const T* vp = m2.const_data_ptr<T>();
    const T* wp = opt_ptr<T>(w);
    const T* bp = opt_ptr<T>(b);
    T* sp = scale.data_ptr<T>();
    T* hp = shift.data_ptr<T>();
    T* ip = invstd.data_ptr<T>();
    const T factor = bn_momentum_factor<T>(momentum.has_value(), T(momentum.value_or(0.0)), nbt);
    for (int64_t c = 0; c < C; ++c) {
      ip[c] = bn_invstd<T>(vp[c], T(count), T(eps));
      bn_scale_shift<T>(mp[c], ip[c], wp, bp, c, &sp[c], &hp[c]);
      if (update_running_stats) {
        T* rmp = rm.data_ptr<T>();
        T* rvp = rv.data_ptr<T>();
        rmp[c] = bn_running_update<T>(rmp[c], mp[c], factor);
        rvp[c] = bn_running_update<T>(rvp[c], bn_unbiased_var<T>(vp[c], count), factor);
      }
    }
  });
  if (update_running_stats) {
    copy_back(*running_mean, rm);
    copy_back(*running_var, rv);
  }
  return {scale, shift, invstd};
}

Tensor block_end(const Tensor& y_in, const Tensor& scale_in, const Tensor& shift_in,
                 const Tensor& residual_in, const OptTensor& res_scale_in,
                 const OptTensor& res_shift_in, const OptTensor& branch_scale_in) {
  check_block_end(y_in, scale_in, shift_in, residual_in, res_scale_in, res_shift_in);
  check_branch_scale(branch_scale_in, y_in, "block_end");
  const auto fmt = memory_format(y_in);
  const Tensor y = y_in.contiguous(fmt), res = residual_in.contiguous(fmt);
  const Tensor scale = scale_in.contiguous(), shift = shift_in.contiguous();
  const OptTensor rs = contiguous(res_scale_in), rb = contiguous(res_shift_in);
  const OptTensor bs = contiguous(branch_scale_in);
  Tensor out = at::empty(y.sizes(), y.options().memory_format(fmt));
  const Layout L = layout_of(y.sizes(), fmt);
  const int64_t per_sample = y.numel() / std::max<int64_t>(y.size(0), 1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "block_end_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    const scalar_t* rp = res.const_data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const acc_t* sp = scale.const_data_ptr<acc_t>();
    const acc_t* hp = shift.const_data_ptr<acc_t>();
    const acc_t* rsp = opt_ptr<acc_t>(rs);
    const acc_t* rbp = opt_ptr<acc_t>(rb);
    const acc_t* bsp = opt_ptr<acc_t>(bs);
    static_flags(
        [&](auto kRs) {
          for_each_row(L, [&](auto per_elem, int64_t off, int64_t len, int64_t c) {
            const acc_t branch = branch_factor(bsp, off, per_sample);  // a row is in one sample
            block_end_row<per_elem, kRs>(len, yp + off, rp + off, op + off, sp + c, hp + c,
                                            branch, offset(rsp, c), offset(rbp, c));
          });
        },
        rsp != nullptr);
  });
  return out;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> block_end_bwd(
    const Tensor& d_out_in, const Tensor& out_in, const Tensor& y_in, const Tensor& mean_in,
    const Tensor& invstd_in, const OptTensor& y_d_in, const OptTensor& mean_d_in,
    const OptTensor& invstd_d_in, const OptTensor& branch_scale_in) {
  check_block_end_bwd(d_out_in, out_in, y_in, mean_in, invstd_in, y_d_in, mean_d_in, invstd_d_in);
  check_branch_scale(branch_scale_in, d_out_in, "block_end_bwd");
  const OptTensor bs = contiguous(branch_scale_in);
  const int64_t per_sample = d_out_in.numel() / std::max<int64_t>(d_out_in.size(0), 1);
  const auto fmt = memory_format(d_out_in);
  const Tensor d_out = d_out_in.contiguous(fmt), out = out_in.contiguous(fmt),
               y = y_in.contiguous(fmt);
  const Tensor mean = mean_in.contiguous(), invstd = invstd_in.contiguous();
  const bool has_d = y_d_in.has_value();
  const Tensor y_d = has_d ? y_d_in->contiguous(fmt) : Tensor();
  const Tensor mean_d = has_d ? mean_d_in->contiguous() : Tensor();
  const Tensor invstd_d = has_d ? invstd_d_in->contiguous() : Tensor();
  Tensor dz = at::empty(d_out.sizes(), d_out.options().memory_format(fmt));
  const Layout L = layout_of(d_out.sizes(), fmt);
  Tensor sum_dz = at::empty({L.C}, mean.options()), sum_dz_xhat = at::empty({L.C}, mean.options());
  Tensor sum_dz_xhat_d = has_d ? at::empty({L.C}, mean.options()) : empty_stats(d_out);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, d_out.scalar_type(), "block_end_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gp = d_out.const_data_ptr<scalar_t>();
    const scalar_t* op = out.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    const scalar_t* ydp = has_d ? y_d.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* dzp = dz.data_ptr<scalar_t>();
    const acc_t* mp = mean.const_data_ptr<acc_t>();
    const acc_t* mdp = has_d ? mean_d.const_data_ptr<acc_t>() : nullptr;
    const acc_t* bsp = opt_ptr<acc_t>(bs);
    const int64_t C = L.C;
    std::vector<double> total;
    static_flags(
        [&](auto kD) {
          total = reduce_rows<3>(L, [&](auto per_elem, double* acc, int64_t off, int64_t len,
                                       int64_t c) {
            // The branch's gradient is dz * branch (sums 0 and 1); the shortcut's is dz.
            const double branch = double(branch_factor(bsp, off, per_sample));
            block_end_bwd_row<per_elem, kD>(len, gp + off, op + off, yp + off,
                                               offset(ydp, off), dzp + off, mp + c,
                                               offset(mdp, c), branch, acc + c, acc + C + c,
                                               acc + 2 * C + c);
          });
        },
        has_d);
    const acc_t* ip = invstd.const_data_ptr<acc_t>();
    const acc_t* idp = has_d ? invstd_d.const_data_ptr<acc_t>() : nullptr;
    acc_t* s0 = sum_dz.data_ptr<acc_t>();
    acc_t* s1 = sum_dz_xhat.data_ptr<acc_t>();
    for (int64_t c = 0; c < C; ++c) {
      s0[c] = acc_t(total[c]);
      s1[c] = acc_t(total[C + c] * double(ip[c]));
      if (has_d) sum_dz_xhat_d.data_ptr<acc_t>()[c] = acc_t(total[2 * C + c] * double(idp[c]));
    }
  });
  return {dz, sum_dz, sum_dz_xhat, sum_dz_xhat_d};
}

// reference.bn_backward in one call: (a, b, c) of dy = a*dz + b*y + c and the BN parameters'
// gradients in their dtypes (an empty tensor for an absent parameter). A few small torch ops
// each, these coefficients cost more per block call than the arithmetic of whole passes.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> bn_backward(
    const Tensor& sum_dz_in, const Tensor& sum_dz_xhat_in, int64_t count, const Tensor& scale_in,
    const Tensor& mean_in, const Tensor& invstd_in, bool batch_stats, const OptTensor& weight,
    const OptTensor& bias) {
  check_bn_backward(sum_dz_in, sum_dz_xhat_in, count, scale_in, mean_in, invstd_in, weight, bias);
  const Tensor sum_dz = sum_dz_in.contiguous(), sum_dz_xhat = sum_dz_xhat_in.contiguous();
  const Tensor scale = scale_in.contiguous(), mean = mean_in.contiguous(),
               invstd = invstd_in.contiguous();
  Tensor a = at::empty_like(scale), b = at::empty_like(scale), c = at::empty_like(scale);
  AT_DISPATCH_FLOATING_TYPES(scale.scalar_type(), "bn_backward_cpu", [&] {
    using T = scalar_t;
    const T* s0 = sum_dz.const_data_ptr<T>();
    const T* s1 = sum_dz_xhat.const_data_ptr<T>();
    const T* sp = scale.const_data_ptr<T>();
    const T* mp = mean.const_data_ptr<T>();
    const T* ip = invstd.const_data_ptr<T>();
    T* ap = a.data_ptr<T>();
    T* bp = b.data_ptr<T>();
    T* cp = c.data_ptr<T>();
    for (int64_t k = 0; k < scale.numel(); ++k)
      bn_bwd_coeffs<T>(s0[k], s1[k], T(count), sp[k], mp[k], ip[k], batch_stats, &ap[k], &bp[k],
                       &cp[k]);
  });
  // dweight = sum(dz*xhat), dbias = sum(dz), in the parameters' dtypes (as Tensor.to rounds).
  auto grad = [&](const OptTensor& p, const Tensor& sum) {
    if (!p) return at::empty({0}, scale.options());
    Tensor g = at::empty({sum.numel()}, p->options().memory_format(at::MemoryFormat::Contiguous));
    AT_DISPATCH_FLOATING_TYPES(sum.scalar_type(), "bn_backward_grad_cpu", [&] {
      const scalar_t* sp = sum.const_data_ptr<scalar_t>();
      using S = scalar_t;
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(),
                                      "bn_backward_grad_cpu", [&] {
        scalar_t* gp = g.data_ptr<scalar_t>();
        for (int64_t k = 0; k < g.numel(); ++k) gp[k] = c10::convert<scalar_t, S>(sp[k]);
      });
    });
    return g;
  };
  return {a, b, c, grad(weight, sum_dz_xhat), grad(bias, sum_dz)};
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_resnet, CPU, m) {
  m.impl("bn_finalize", &bn_finalize);
  m.impl("block_end", &block_end);
  m.impl("block_end_bwd", &block_end_bwd);
  m.impl("bn_backward", &bn_backward);
}

}  // namespace fr::cpu
