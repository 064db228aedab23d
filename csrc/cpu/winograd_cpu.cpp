// winograd_conv3x3: a 3x3 convolution (stride 1, padding 1) by Winograd's F(4x4, 3x3), for
// eval blocks on the CPU (fused_resnet/winograd.py has the weight transform and when it is
// used). Each 6x6 input tile becomes 36 transformed values per channel (B^T d B), one batched
// GEMM per transformed position multiplies them by the transformed weights u [36, C, K], and
// each 36-value product becomes the tile's 4x4 outputs (A^T m A), with bias, an optional
// residual and an optional ReLU. 4x fewer multiplies than the direct convolution.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/bmm.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <tuple>

#include "cpu/cpu_utils.h"
#include "op_utils.h"

namespace fr::cpu {
namespace {

constexpr int64_t kOut = 4;    // outputs per tile side
constexpr int64_t kAlpha = 6;  // inputs per tile side (kOut + 3 - 1)
constexpr int64_t kPos = kAlpha * kAlpha;
constexpr int64_t kCB = 8;  // channels per vector step

// out[i] = (B^T in)[i], i < 6, for kCB channels; in and out rows are strided by IS / OS.
template <int64_t IS, int64_t OS, class T>
inline void input_1d(const T* __restrict__ in, T* __restrict__ out) {
  for (int64_t l = 0; l < kCB; ++l) {
    const T d0 = in[0 * IS + l], d1 = in[1 * IS + l], d2 = in[2 * IS + l];
    const T d3 = in[3 * IS + l], d4 = in[4 * IS + l], d5 = in[5 * IS + l];
    out[0 * OS + l] = T(4) * d0 - T(5) * d2 + d4;
    out[1 * OS + l] = -T(4) * (d1 + d2) + d3 + d4;
    out[2 * OS + l] = T(4) * (d1 - d2) - d3 + d4;
    out[3 * OS + l] = T(2) * (d3 - d1) - d2 + d4;
    out[4 * OS + l] = T(2) * (d1 - d3) - d2 + d4;
    out[5 * OS + l] = T(4) * d1 - T(5) * d3 + d5;
  }
}

// out[i] = (A^T in)[i], i < 4, for kCB channels.
template <int64_t IS, int64_t OS, class T>
inline void output_1d(const T* __restrict__ in, T* __restrict__ out) {
  for (int64_t l = 0; l < kCB; ++l) {
    const T m0 = in[0 * IS + l], m1 = in[1 * IS + l], m2 = in[2 * IS + l];
    const T m3 = in[3 * IS + l], m4 = in[4 * IS + l], m5 = in[5 * IS + l];
    const T a = m1 + m2, b = m1 - m2, c = m3 + m4, d = m3 - m4;
    out[0 * OS + l] = m0 + a + c;
    out[1 * OS + l] = b + T(2) * d;
    out[2 * OS + l] = a + T(4) * c;
    out[3 * OS + l] = b + T(8) * d + m5;
  }
}

// dst[0, kCB) = src[0, n) then zeros (n <= kCB): a whole vector step in fixed-size moves.
template <class T>
inline void load_chunk(const T* __restrict__ src, int64_t n, T* __restrict__ dst) {
  if (n == kCB) {
    for (int64_t l = 0; l < kCB; ++l) dst[l] = src[l];
    return;
  }
  for (int64_t l = 0; l < kCB; ++l) dst[l] = l < n ? src[l] : T(0);
}

template <class T>
inline void store_chunk(const T* __restrict__ src, int64_t n, T* __restrict__ dst) {
  if (n == kCB) {
    for (int64_t l = 0; l < kCB; ++l) dst[l] = src[l];
    return;
  }
  for (int64_t l = 0; l < n; ++l) dst[l] = src[l];
}

// out[l] = act(y[l] + bias[l] [+ residual[l]]) for l < n (n <= kCB); nonfinite[l] += v * 0
// (NaN once any v is NaN or infinite). A whole vector step in fixed-size loops.
template <class T>
inline void store_outputs(const T* __restrict__ y, const T* __restrict__ bias,
                          const T* __restrict__ residual, T* __restrict__ out, int64_t n,
                          bool relu, T* __restrict__ nonfinite) {
  alignas(64) T v[kCB];
  for (int64_t l = 0; l < kCB; ++l) v[l] = y[l] + (l < n ? bias[l] : T(0));
  if (residual)
    for (int64_t l = 0; l < n; ++l) v[l] += residual[l];
  for (int64_t l = 0; l < kCB; ++l) {
    nonfinite[l] += v[l] * T(0);
    if (relu) v[l] = std::max(v[l], T(0));  // NaN stays NaN
  }
  store_chunk(v, n, out);
}

struct Geometry {
  int64_t N, H, W, tiles_h, tiles_w;
  int64_t tiles() const { return N * tiles_h * tiles_w; }
};

// V[p, t, c] = (B^T d B)[p] of tile t's 6x6 input window (zero outside the image), for the
// tiles [t0, t1) and every channel (x channels-last, C channels).
template <class T>
FR_ROW_KERNEL void input_tiles(const T* __restrict__ x, T* __restrict__ v, Geometry g,
                               int64_t C, int64_t t0, int64_t t1) {
  alignas(64) T d[kPos * kCB], s[kPos * kCB];
  const int64_t T_all = g.tiles();
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n = t / (g.tiles_h * g.tiles_w), r = t % (g.tiles_h * g.tiles_w);
    const int64_t y0 = (r / g.tiles_w) * kOut - 1, x0 = (r % g.tiles_w) * kOut - 1;
    for (int64_t c0 = 0; c0 < C; c0 += kCB) {
      const int64_t nc = std::min(kCB, C - c0);
      for (int64_t i = 0; i < kAlpha; ++i) {
        for (int64_t j = 0; j < kAlpha; ++j) {
          T* dst = d + (i * kAlpha + j) * kCB;
          const int64_t yy = y0 + i, xx = x0 + j;
          if (yy >= 0 && yy < g.H && xx >= 0 && xx < g.W)
            load_chunk(x + ((n * g.H + yy) * g.W + xx) * C + c0, nc, dst);
          else
            std::fill(dst, dst + kCB, T(0));
        }
      }
      for (int64_t j = 0; j < kAlpha; ++j)  // columns: s = B^T d
        input_1d<kAlpha * kCB, kAlpha * kCB>(d + j * kCB, s + j * kCB);
      for (int64_t i = 0; i < kAlpha; ++i)  // rows: d = s B
        input_1d<kCB, kCB>(s + i * kAlpha * kCB, d + i * kAlpha * kCB);
      for (int64_t p = 0; p < kPos; ++p)
        store_chunk(d + p * kCB, nc, v + (p * T_all + t) * C + c0);
    }
  }
}

// out = act((A^T m A) + bias [+ residual]) for the tiles [t0, t1): m [36, tiles, K] holds the
// GEMM products; out and residual are channels-last with K channels. Returns whether every
// output is finite (sum of v * 0: NaN once any v is NaN or infinite).
template <class T>
FR_ROW_KERNEL bool output_tiles(const T* __restrict__ m, const T* __restrict__ bias,
                                const T* __restrict__ residual, T* __restrict__ out,
                                Geometry g, int64_t K, bool relu, int64_t t0, int64_t t1) {
  alignas(64) T nonfinite[kCB] = {};  // per lane, so that the store loop vectorises
  alignas(64) T a[kPos * kCB], s[kOut * kAlpha * kCB], y[kOut * kOut * kCB];
  const int64_t T_all = g.tiles();
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n = t / (g.tiles_h * g.tiles_w), r = t % (g.tiles_h * g.tiles_w);
    const int64_t y0 = (r / g.tiles_w) * kOut, x0 = (r % g.tiles_w) * kOut;
    for (int64_t k0 = 0; k0 < K; k0 += kCB) {
      const int64_t nk = std::min(kCB, K - k0);
      for (int64_t p = 0; p < kPos; ++p) load_chunk(m + (p * T_all + t) * K + k0, nk, a + p * kCB);
      for (int64_t j = 0; j < kAlpha; ++j)  // columns: s = A^T m  (4 x 6)
        output_1d<kAlpha * kCB, kAlpha * kCB>(a + j * kCB, s + j * kCB);
      for (int64_t i = 0; i < kOut; ++i)  // rows: y = s A  (4 x 4)
        output_1d<kCB, kCB>(s + i * kAlpha * kCB, y + i * kOut * kCB);
      for (int64_t i = 0; i < kOut && y0 + i < g.H; ++i) {
        for (int64_t j = 0; j < kOut && x0 + j < g.W; ++j) {
          const int64_t at = ((n * g.H + y0 + i) * g.W + x0 + j) * K + k0;
          const T* yv = y + (i * kOut + j) * kCB;
          store_outputs(yv, bias + k0, residual ? residual + at : nullptr, out + at, nk, relu,
                        nonfinite);
        }
      }
    }
  }
  T total = T(0);
  for (int64_t l = 0; l < kCB; ++l) total += nonfinite[l];
  return total == T(0);
}

// Returns the output and whether all of it is finite: the transforms mix a whole 6x6 input
// tile, so a NaN or infinity spreads further than in a direct convolution (and large finite
// inputs can overflow); the caller then recomputes directly.
std::tuple<Tensor, bool> winograd_conv3x3(const Tensor& x, const Tensor& u, const Tensor& bias,
                                          const OptTensor& residual, bool relu,
                                          const OptTensor& workspace) {
  constexpr const char* op = "winograd_conv3x3";
  check_data(x, op, "x");
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble, op, ": x must be float32 or float64, got ",
              dt);
  TORCH_CHECK(u.dim() == 3 && u.size(0) == kPos && u.size(1) == x.size(1), op,
              ": u must be the transformed weight [36, C, K] with C = ", x.size(1),
              " (winograd.transform_weight), got ", u.sizes());
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), K = u.size(2);
  TORCH_CHECK(u.scalar_type() == dt && bias.scalar_type() == dt, op,
              ": u and bias must have x's dtype ", dt);
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == K, op, ": bias must be [", K, "], got ",
              bias.sizes());
  const auto cl = at::MemoryFormat::ChannelsLast;
  TORCH_CHECK(x.is_contiguous(cl), op, ": x must be channels_last");
  if (residual) {
    TORCH_CHECK(residual->sizes() == at::IntArrayRef({N, K, H, W}) &&
                    residual->scalar_type() == dt && residual->is_contiguous(cl),
                op, ": residual must be a channels_last ", dt, " tensor of shape [", N, ", ", K,
                ", ", H, ", ", W, "]");
  }
  const Geometry g{N, H, W, (H + kOut - 1) / kOut, (W + kOut - 1) / kOut};
  const int64_t tiles = g.tiles();
  Tensor out = at::empty({N, K, H, W}, x.options().memory_format(cl));
  if (N == 0 || H == 0 || W == 0) return {out, true};
  // The transformed input V [36, tiles, C] and the products M [36, tiles, K]: in the caller's
  // workspace when it is large enough (fresh multi-megabyte buffers are page-faulted in on
  // every call), else allocated.
  const int64_t v_numel = kPos * tiles * C, m_numel = kPos * tiles * K;
  Tensor v, m;
  if (workspace && workspace->numel() >= v_numel + m_numel) {
    TORCH_CHECK(workspace->scalar_type() == dt && workspace->is_contiguous(), op,
                ": workspace must be a contiguous ", dt, " tensor");
    const Tensor flat = workspace->view(-1);
    v = flat.narrow(0, 0, v_numel).view({kPos, tiles, C});
    m = flat.narrow(0, v_numel, m_numel).view({kPos, tiles, K});
  } else {
    v = at::empty({kPos, tiles, C}, x.options());
    m = at::empty({kPos, tiles, K}, x.options());
  }
  const Tensor b = bias.contiguous();
  const Tensor uc = u.contiguous();
  std::atomic<bool> finite{true};
  const int64_t in_grain = std::max<int64_t>(1, 32768 / (kPos * C));
  const int64_t out_grain = std::max<int64_t>(1, 32768 / (kPos * K));
  AT_DISPATCH_FLOATING_TYPES(dt, op, [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* vp = v.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, tiles, in_grain, [&](int64_t t0, int64_t t1) {
      input_tiles<scalar_t>(xp, vp, g, C, t0, t1);
    });
    at::bmm_out(m, v, uc);
    const scalar_t* mp = m.const_data_ptr<scalar_t>();
    const scalar_t* rp = residual ? residual->const_data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, tiles, out_grain, [&](int64_t t0, int64_t t1) {
      if (!output_tiles<scalar_t>(mp, b.const_data_ptr<scalar_t>(), rp,
                                  out.mutable_data_ptr<scalar_t>(), g, K, relu, t0, t1))
        finite.store(false, std::memory_order_relaxed);
    });
  });
  return {out, finite.load()};
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_resnet, CPU, m) { m.impl("winograd_conv3x3", &winograd_conv3x3); }

}  // namespace fr::cpu
