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

// GEMM row m -> output pixel (n, p, q).
FR_HOST_DEVICE void decode_m(const ConvShape& s, int64_t m, int64_t* n, int64_t* p, int64_t* q) {
  *q = m % s.Q;
  int64_t t = m / s.Q;
  *p = t % s.P;
  *n = t / s.P;
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

// Dgrad: input pixel h receives from output p = (h + padding - r*dilation)/stride when that
// division is exact and in range (stride holes give no contribution); -1 otherwise.
FR_HOST_DEVICE int64_t dgrad_out_coord(int64_t h, int64_t r, int64_t stride, int64_t padding,
                                       int64_t dilation, int64_t P) {
  int64_t num = h + padding - r * dilation;
  if (num < 0 || num % stride != 0) return -1;
  int64_t p = num / stride;
  return p < P ? p : -1;
}

// Weight offset of (k, r, s, c) in a KRSC (channels-last) filter of C/groups channels.
FR_HOST_DEVICE int64_t krsc_offset(const ConvShape& s, int64_t k, int64_t r, int64_t t,
                                   int64_t c) {
  return ((k * s.R + r) * s.S + t) * (s.C / s.groups) + c;
}

}  // namespace fr
