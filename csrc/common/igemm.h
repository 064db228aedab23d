// NHWC implicit-GEMM index math for the conv kernels (forward, dgrad, wgrad).
// All offsets are int64: activations can exceed 2^31 elements.
//
// Forward GEMM view: M = N*P*Q output pixels, Ncols = K output channels,
// Kdim = R*S*(C/groups) reduction; row m <-> (n, p, q), reduction k <-> (r, s, c).
#pragma once

#include "common/macros.h"

namespace fr {

FR_HOST_DEVICE int64_t conv_out_size(int64_t in, int64_t kernel, int64_t stride, int64_t padding,
                                     int64_t dilation) {
  return (in + 2 * padding - dilation * (kernel - 1) - 1) / stride + 1;
}

struct ConvShape {
  int64_t N, H, W, C;  // input (logical NCHW sizes, stored NHWC)
  int64_t K, R, S;     // output channels, filter height and width
  int64_t P, Q;        // output height and width
  int64_t stride, padding, dilation, groups;
};

FR_HOST_DEVICE ConvShape make_conv_shape(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K,
                                         int64_t R, int64_t S, int64_t stride, int64_t padding,
                                         int64_t dilation, int64_t groups) {
  ConvShape s{N, H, W, C, K, R, S, 0, 0, stride, padding, dilation, groups};
  s.P = conv_out_size(H, R, stride, padding, dilation);
  s.Q = conv_out_size(W, S, stride, padding, dilation);
  return s;
}

FR_HOST_DEVICE int64_t nhwc_offset(int64_t n, int64_t h, int64_t w, int64_t c, int64_t H,
                                   int64_t W, int64_t C) {
  return ((n * H + h) * W + w) * C + c;
}

// Flat index i -> (i / inner / mid, i / inner % mid, i % inner). Done in 32 bits when i fits:
// a 64-bit division is a ~70-instruction call on a GPU, and the conv kernels decode per stage.
FR_HOST_DEVICE void decode3(int64_t i, int64_t mid, int64_t inner, int64_t* outer, int64_t* m,
                            int64_t* in) {
  if (i <= 0x7fffffff && mid <= 0x7fffffff && inner <= 0x7fffffff) {
    const uint32_t u = uint32_t(i), t = u / uint32_t(inner);
    *in = u - t * uint32_t(inner);
    *m = t % uint32_t(mid);
    *outer = t / uint32_t(mid);
    return;
  }
  const int64_t t = i / inner;
  *in = i - t * inner;
  *m = t % mid;
  *outer = t / mid;
}

// GEMM row m -> output pixel (n, p, q).
FR_HOST_DEVICE void decode_m(const ConvShape& s, int64_t m, int64_t* n, int64_t* p, int64_t* q) {
  decode3(m, s.P, s.Q, n, p, q);
}

// Input coordinate read by output coordinate p through filter tap r.
FR_HOST_DEVICE int64_t fwd_in_coord(int64_t p, int64_t r, int64_t stride, int64_t padding,
                                    int64_t dilation) {
  return p * stride - padding + r * dilation;
}

// Input element of output pixel (n, p, q), tap (r, s), input channel c; -1 when the tap reads
// padding (the caller loads 0: padding applies to the activation, after any prologue).
FR_HOST_DEVICE int64_t fwd_input_offset(const ConvShape& s, int64_t n, int64_t p, int64_t q,
                                        int64_t r, int64_t t, int64_t c) {
  int64_t h = fwd_in_coord(p, r, s.stride, s.padding, s.dilation);
  int64_t w = fwd_in_coord(q, t, s.stride, s.padding, s.dilation);
  if (h < 0 || h >= s.H || w < 0 || w >= s.W) return -1;
  return nhwc_offset(n, h, w, c, s.H, s.W, s.C);
}

// Weight offset of (k, r, s, c) in a KRSC (channels-last) filter of C/groups channels.
FR_HOST_DEVICE int64_t krsc_offset(const ConvShape& s, int64_t k, int64_t r, int64_t t,
                                   int64_t c) {
  return ((k * s.R + r) * s.S + t) * (s.C / s.groups) + c;
}

// ---- Implicit-GEMM views, shared by the CUDA conv kernels and the CPU twin
// (cpu/conv_igemm_cpu.cpp), so CI on a CPU exercises the index math the kernels run.
//
//   forward: M = N*P*Q (output pixel), Ncols = K, Kdim = R*S*C   A(m,k)=act, B(n,k)=w[n][k]
//   dgrad:   per stride phase (below): M = the phase's input pixels, Ncols = C,
//            Kdim = its taps * K                                  A(m,k)=dy,  B(c,k)=w[k'][r][s][c]
//   wgrad:   M = K,  Ncols = R*S*C,    Kdim = N*P*Q              A(k,j)=dy,  B(j,i)=act
// Reduction indices run (r, s, channel) with the channel fastest (KRSC / NHWC order).

FR_HOST_DEVICE int64_t fwd_gemm_m(const ConvShape& s) { return s.N * s.P * s.Q; }
FR_HOST_DEVICE int64_t fwd_gemm_k(const ConvShape& s) { return s.R * s.S * (s.C / s.groups); }

// Reduction index k -> (filter row r, filter column t, channel c) over `channels` channels.
FR_HOST_DEVICE void decode_k(const ConvShape& s, int64_t k, int64_t channels, int64_t* r,
                             int64_t* t, int64_t* c) {
  decode3(k, s.S, channels, r, t, c);
}

// Forward A operand (pixel (n,p,q), reduction k): the input offset and channel *c it reads,
// or -1 on padding. The tensor-core loaders call it per 8-element chunk, fwd_a_elem per element.
FR_HOST_DEVICE int64_t fwd_a_offset(const ConvShape& s, int64_t n, int64_t p, int64_t q,
                                    int64_t k, int64_t* c) {
  int64_t r, t;
  decode_k(s, k, s.C, &r, &t, c);
  return fwd_input_offset(s, n, p, q, r, t, *c);
}

// Forward A element: f(offset, c) (the prologue, rounded to the data dtype) or 0 on padding --
// zero AFTER the transform (docs/design.md §1 Padding).
template <class T, class F>
FR_HOST_DEVICE T fwd_a_elem(const ConvShape& s, int64_t n, int64_t p, int64_t q, int64_t k,
                            const F& f) {
  int64_t c;
  const int64_t off = fwd_a_offset(s, n, p, q, k, &c);
  return off < 0 ? T(0) : f(off, c);
}

// ---- Dgrad by stride phase. Input pixel h receives from output p = (h + pad - r*dil)/stride
// only through the taps r that make the division exact, and which taps those are depends on
// h mod stride alone. So the input pixels split into stride^2 phases (h % stride, w % stride),
// each a dense GEMM over its own taps: a stride-2 dgrad does 1/4 of the products a GEMM over
// every (pixel, tap) would, 3/4 of them zeros (stride holes). Stride 1: one phase, every tap.
struct DgradPhase {  // image coordinates and tap counts: int32 keeps GPU registers down
  int32_t ph, pw;        // the phase's input pixels: h = ph + stride*i (i < Hp), likewise w
  int32_t Hp, Wp;
  int32_t r0, t0, step;  // its taps: r = r0 + step*a (a < Rv), t = t0 + step*b (b < Sv)
  int32_t Rv, Sv;
  int32_t p0, q0, dstep;  // the output pixel of row i through tap a: p = p0 + i - dstep*a
};

// Phases with pixels: a stride above the image size leaves the rest empty.
FR_HOST_DEVICE int64_t dgrad_phase_rows(const ConvShape& s) { return s.stride < s.H ? s.stride : s.H; }
FR_HOST_DEVICE int64_t dgrad_phase_cols(const ConvShape& s) { return s.stride < s.W ? s.stride : s.W; }
FR_HOST_DEVICE int64_t dgrad_phases(const ConvShape& s) {
  return dgrad_phase_rows(s) * dgrad_phase_cols(s);
}

// The taps r in [0, R) with (ph + padding - r*dilation) % stride == 0: an arithmetic
// progression of step stride/g (g = gcd(stride, dilation)) from the smallest solution r0, if
// any. Pixel h = ph + stride*i reads through tap r0 + step*a the output row
// (h + padding - r*dilation) / stride = p0 + i - (dilation/g)*a: exact, no division per tap.
FR_HOST_DEVICE void dgrad_phase_taps(int64_t ph, int64_t R, int64_t stride, int64_t padding,
                                     int64_t dilation, int32_t* r0, int32_t* step,
                                     int32_t* count, int32_t* p0, int32_t* dstep) {
  int64_t g = stride, b = dilation;  // gcd
  while (b != 0) {
    const int64_t t = g % b;
    g = b;
    b = t;
  }
  *step = int32_t(stride / g);
  *dstep = int32_t(dilation / g);
  *r0 = *count = *p0 = 0;
  for (int64_t r = 0; r < *step; ++r)
    if ((ph + padding - r * dilation) % stride == 0) {
      *r0 = int32_t(r);
      *count = int32_t(r < R ? (R - r + *step - 1) / *step : 0);
      *p0 = int32_t((ph + padding - r * dilation) / stride);
      return;
    }
}

// Phase z (0 <= z < dgrad_phases): ph = z / dgrad_phase_cols, pw = z % dgrad_phase_cols.
FR_HOST_DEVICE DgradPhase dgrad_phase(const ConvShape& s, int64_t z) {
  DgradPhase f{};
  f.ph = int32_t(z / dgrad_phase_cols(s));
  f.pw = int32_t(z % dgrad_phase_cols(s));
  f.Hp = int32_t(f.ph < s.H ? (s.H - f.ph + s.stride - 1) / s.stride : 0);
  f.Wp = int32_t(f.pw < s.W ? (s.W - f.pw + s.stride - 1) / s.stride : 0);
  int32_t step_t, dstep_t;  // the same as r's: both depend on stride and dilation only
  dgrad_phase_taps(f.ph, s.R, s.stride, s.padding, s.dilation, &f.r0, &f.step, &f.Rv, &f.p0,
                   &f.dstep);
  dgrad_phase_taps(f.pw, s.S, s.stride, s.padding, s.dilation, &f.t0, &step_t, &f.Sv, &f.q0,
                   &dstep_t);
  return f;
}

// The phase's GEMM: M = its input pixels, Kdim = its taps x K output channels.
FR_HOST_DEVICE int64_t dgrad_gemm_m(const ConvShape& s, const DgradPhase& f) {
  return s.N * f.Hp * f.Wp;
}
FR_HOST_DEVICE int64_t dgrad_gemm_k(const ConvShape& s, const DgradPhase& f) {
  return f.Rv * f.Sv * s.K;
}
// Rows of the largest phase (phase 0): the grid's row tiles cover every phase.
FR_HOST_DEVICE int64_t dgrad_gemm_m_max(const ConvShape& s) {
  return s.N * ((s.H + s.stride - 1) / s.stride) * ((s.W + s.stride - 1) / s.stride);
}

// Phase row m -> (n, i, j): input pixel (n, ph + stride*i, pw + stride*j).
FR_HOST_DEVICE void decode_phase_row(const DgradPhase& f, int64_t m, int64_t* n, int64_t* i,
                                     int64_t* j) {
  decode3(m, f.Hp, f.Wp, n, i, j);
}
// Phase row m -> input pixel (n, h, w).
FR_HOST_DEVICE void decode_in_pixel(const ConvShape& s, const DgradPhase& f, int64_t m,
                                    int64_t* n, int64_t* h, int64_t* w) {
  int64_t i, j;
  decode_phase_row(f, m, n, &i, &j);
  *h = f.ph + s.stride * i;
  *w = f.pw + s.stride * j;
}

// Phase reduction k -> tap (r, t) and output channel *ko (channel fastest).
FR_HOST_DEVICE void decode_dgrad_k(const ConvShape& s, const DgradPhase& f, int64_t k,
                                   int64_t* r, int64_t* t, int64_t* ko) {
  int64_t a, b;
  decode3(k, f.Sv, s.K, &a, &b, ko);
  *r = f.r0 + f.step * a;
  *t = f.t0 + f.step * b;
}

// Dgrad A operand (phase f's row (n, i, j), reduction k): the dz/y offset and output channel
// *ko it reads, or -1 where the tap's output pixel is outside the image (padding).
FR_HOST_DEVICE int64_t dgrad_a_offset(const ConvShape& s, const DgradPhase& f, int64_t n,
                                      int64_t i, int64_t j, int64_t k, int64_t* ko) {
  int64_t a, b;
  decode3(k, f.Sv, s.K, &a, &b, ko);
  const int64_t p = f.p0 + i - int64_t(f.dstep) * a, q = f.q0 + j - int64_t(f.dstep) * b;
  return p < 0 || p >= s.P || q < 0 || q >= s.Q ? -1 : nhwc_offset(n, p, q, *ko, s.P, s.Q, s.K);
}

// Dgrad A element: f(dz offset, out channel) (the BN-backward map, rounded) or 0 outside the
// image, after the transform (it maps 0 to a non-zero value).
template <class T, class F>
FR_HOST_DEVICE T dgrad_a_elem(const ConvShape& s, const DgradPhase& ph, int64_t n, int64_t i,
                              int64_t j, int64_t k, const F& f) {
  int64_t ko;
  const int64_t off = dgrad_a_offset(s, ph, n, i, j, k, &ko);
  return off < 0 ? T(0) : f(off, ko);
}

// Dgrad B element: the offset of w[ko][r][s][c] for input channel c, phase reduction k.
FR_HOST_DEVICE int64_t dgrad_b_offset(const ConvShape& s, const DgradPhase& f, int64_t c,
                                      int64_t k) {
  int64_t r, t, ko;
  decode_dgrad_k(s, f, k, &r, &t, &ko);
  return krsc_offset(s, ko, r, t, c);
}

// Wgrad B operand (weight column j over (r, s, c), reduction i = output pixel): the forward
// A operand of pixel i -- its input offset and channel *c, or -1 on padding.
FR_HOST_DEVICE int64_t wgrad_b_offset(const ConvShape& s, int64_t j, int64_t i, int64_t* c) {
  int64_t n, p, q;
  decode_m(s, i, &n, &p, &q);
  return fwd_a_offset(s, n, p, q, j, c);
}
template <class T, class F>
FR_HOST_DEVICE T wgrad_b_elem(const ConvShape& s, int64_t j, int64_t i, const F& f) {
  int64_t c;
  const int64_t off = wgrad_b_offset(s, j, i, &c);
  return off < 0 ? T(0) : f(off, c);
}

// ---- CTA tiling of the CUDA conv kernels, which their CPU twins (cpu/conv_igemm_cpu.cpp)
// walk the same way: 64 GEMM rows x 64 GEMM columns per tile, the reduction in steps of 32.
constexpr int64_t kConvTileM = 64;
constexpr int64_t kConvTileN = 64;
constexpr int64_t kConvTileK = 32;

FR_HOST_DEVICE int64_t conv_tiles(int64_t n, int64_t tile) { return (n + tile - 1) / tile; }

// Wgrad split-K: the N*P*Q reduction splits so that ~target_ctas CTAs run, each split >= 256
// pixels. The CUDA launcher targets about four CTAs per SM of the device (cuda/launch_plan.h).
inline int64_t conv_wgrad_splits(const ConvShape& s, int64_t target_ctas = 512) {
  const int64_t ctas = conv_tiles(s.K, kConvTileM) * conv_tiles(fwd_gemm_k(s), kConvTileN);
  const int64_t by_work = fwd_gemm_m(s) / 256 > 1 ? fwd_gemm_m(s) / 256 : 1;
  const int64_t by_ctas = target_ctas / ctas > 1 ? target_ctas / ctas : 1;
  return by_work < by_ctas ? by_work : by_ctas;
}
// Pixels per split, a multiple of the reduction step so every split's steps are full; the
// last splits may be empty (they contribute zero partials).
FR_HOST_DEVICE int64_t conv_wgrad_kchunk(const ConvShape& s, int64_t splits) {
  return conv_tiles(conv_tiles(fwd_gemm_m(s), splits), kConvTileK) * kConvTileK;
}

// A conv op's GEMM runs as a grid of tiles over slices (grid z): one for the forward, the
// split-K ranges for wgrad, the stride phases for dgrad. A slice's rows and reduction range:
struct GemmSlice {
  int64_t rows, k_begin, k_end;
};
FR_HOST_DEVICE GemmSlice fwd_slice(const ConvShape& s) {
  return {fwd_gemm_m(s), 0, fwd_gemm_k(s)};
}
FR_HOST_DEVICE GemmSlice wgrad_slice(const ConvShape& s, int64_t kchunk, int64_t z) {
  const int64_t b = z * kchunk;  // kchunk = conv_wgrad_kchunk(s, splits)
  const int64_t e = b + kchunk < fwd_gemm_m(s) ? b + kchunk : fwd_gemm_m(s);
  return {s.K, b, e > b ? e : b};  // past the end: empty (a zero partial)
}
FR_HOST_DEVICE GemmSlice dgrad_slice(const ConvShape& s, const DgradPhase& f) {
  return {dgrad_gemm_m(s, f), 0, dgrad_gemm_k(s, f)};
}
// Dgrad's grid: this many row tiles in each of the dgrad_phases slices; tile (x, z) keeps its
// per-tile partial sums at z * dgrad_row_tiles + x.
FR_HOST_DEVICE int64_t dgrad_row_tiles(const ConvShape& s) {
  return conv_tiles(dgrad_gemm_m_max(s), kConvTileM);
}
FR_HOST_DEVICE int64_t dgrad_tiles(const ConvShape& s) {
  return dgrad_phases(s) * dgrad_row_tiles(s);
}

// Offset of dw[k][j] (j over (r, s, c)) in a KRSC (channels-last) or KCRS (contiguous) weight.
FR_HOST_DEVICE int64_t wgrad_out_offset(const ConvShape& s, int64_t k, int64_t j, bool krsc) {
  const int64_t Cg = s.C / s.groups;
  if (krsc) return k * s.R * s.S * Cg + j;
  int64_t r, t, c;
  decode_k(s, j, Cg, &r, &t, &c);
  return ((k * Cg + c) * s.R + r) * s.S + t;
}

}  // namespace fr
