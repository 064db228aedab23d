// Standalone harness for the conv kernels (no torch): small random NHWC data through the
// CUDA forward (tensor-core fp16/bf16 and SIMT fp32 paths, with prologue, epilogue, residual
// and statistics), dgrad (BN-backward map, residual, ReLU mask, sums) and wgrad (split-K,
// prologue recompute), each against a host loop. For compute-sanitizer on a GPU machine:
//   nvcc -std=c++20 -O2 -arch=sm_90 -Icsrc csrc/cuda/harness/conv_harness.cu -o conv_harness
//   compute-sanitizer --tool memcheck ./conv_harness
//   compute-sanitizer --tool racecheck ./conv_harness
// On the CPU, in the CUDA execution emulator (cuda/emu/README.md; tests/test_cuda_emu.py):
//   g++ -std=c++20 -O2 -x c++ -DFR_CUDA_EMULATOR -include cuda/emu/emu.h -Icsrc \
//       -I$CUDA_HOME/include csrc/cuda/harness/conv_harness.cu -x none \
//       csrc/cuda/emu/runtime.cpp -o conv_harness
// Exit status 0 when every case matches. Not yet run on a GPU; passes in the emulator.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

// The kernels themselves (one TU, no extension build).
#include "cuda/conv_dgrad.cu"
#include "cuda/conv_fwd.cu"
#include "cuda/conv_wgrad.cu"

namespace {

using fr::ConvShape;
using fr::cuda::DType;

// The launch plans' device (cuda/launch_plan.h): an H100's 132 SMs size the wgrad split-K.
constexpr fr::cuda::DeviceTarget kTarget{90, 132, 232448};

#define CUDA_OK(expr)                                                                  \
  do {                                                                                 \
    cudaError_t e_ = (expr);                                                           \
    if (e_ != cudaSuccess) {                                                           \
      std::printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); \
      std::exit(2);                                                                    \
    }                                                                                  \
  } while (0)

float frand(unsigned& state) {  // deterministic LCG in [-1, 1)
  state = state * 1664525u + 1013904223u;
  return float(state >> 8) / float(1u << 23) - 1.f;
}

// Host rounding to the data dtype (the GEMM operands and y are stored in it).
float round_host(float v, DType t) {
  if (t == DType::kHalf) return __half2float(__float2half_rn(v));
  if (t == DType::kBFloat16) return __bfloat162float(__float2bfloat16_rn(v));
  return v;
}

// Host values -> device buffer in dtype t.
void* upload(const std::vector<float>& h, DType t) {
  const size_t n = h.size(), es = t == DType::kFloat ? 4 : 2;
  std::vector<unsigned char> bytes(n * es);
  for (size_t i = 0; i < n; ++i) {
    if (t == DType::kFloat) {
      reinterpret_cast<float*>(bytes.data())[i] = h[i];
    } else if (t == DType::kHalf) {
      reinterpret_cast<__half*>(bytes.data())[i] = __float2half_rn(h[i]);
    } else {
      reinterpret_cast<__nv_bfloat16*>(bytes.data())[i] = __float2bfloat16_rn(h[i]);
    }
  }
  void* d = nullptr;
  CUDA_OK(cudaMalloc(&d, bytes.size()));  // exact size: memcheck sees any over-read
  CUDA_OK(cudaMemcpy(d, bytes.data(), bytes.size(), cudaMemcpyHostToDevice));
  return d;
}

std::vector<float> download(const void* d, size_t n, DType t) {
  const size_t es = t == DType::kFloat ? 4 : 2;
  std::vector<unsigned char> bytes(n * es);
  CUDA_OK(cudaMemcpy(bytes.data(), d, bytes.size(), cudaMemcpyDeviceToHost));
  std::vector<float> h(n);
  for (size_t i = 0; i < n; ++i) {
    if (t == DType::kFloat) h[i] = reinterpret_cast<float*>(bytes.data())[i];
    else if (t == DType::kHalf) h[i] = __half2float(reinterpret_cast<__half*>(bytes.data())[i]);
    else h[i] = __bfloat162float(reinterpret_cast<__nv_bfloat16*>(bytes.data())[i]);
  }
  return h;
}

double data_tol(DType t) { return t == DType::kFloat ? 1e-5 : (t == DType::kHalf ? 2e-3 : 1e-2); }

// ||got - want|| / ||want||.
double rel_err(const std::vector<float>& got, const std::vector<double>& want) {
  double err = 0, ref = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    err += (got[i] - want[i]) * (got[i] - want[i]);
    ref += want[i] * want[i];
  }
  return std::sqrt(err / (ref > 0 ? ref : 1));
}

std::vector<float> random_vec(size_t n, float scale, float offset, DType t, unsigned& seed) {
  std::vector<float> v(n);
  for (auto& e : v) e = round_host(offset + scale * frand(seed), t);
  return v;
}

// Outputs and workspaces start as NaN (all bits set), so an element a kernel fails to write
// shows up as an error instead of a plausible 0.
void* device_poisoned(size_t bytes) {
  void* d = nullptr;
  CUDA_OK(cudaMalloc(&d, bytes));
  CUDA_OK(cudaMemset(d, 0xFF, bytes));
  return d;
}

// The larger error; NaN counts as the worst.
double worse(double a, double b) { return a > b || a != a ? a : b; }

// Besides the relative L2 error: the worst element, relative to the largest reference value
// (one bad row can hide in an L2 norm).
double max_rel_err(const std::vector<float>& got, const std::vector<double>& want) {
  double worst = 0, scale = 1e-30;
  for (size_t i = 0; i < want.size(); ++i) {
    const double d = std::abs(double(got[i]) - want[i]);
    worst = worse(d, worst);
    scale = std::max(scale, std::abs(want[i]));
  }
  return worst / scale;
}

// The host references below index NHWC / KRSC arrays with their own arithmetic, not the
// csrc/common helpers the kernels use, so a bug there cannot cancel out.
int64_t nhwc(int64_t n, int64_t h, int64_t w, int64_t c, int64_t H, int64_t W, int64_t C) {
  return ((n * H + h) * W + w) * C + c;
}

// fn(n, p, q, r, u, h, w) for every output pixel (n, p, q) and tap (r, u) that reads input
// pixel (h, w) inside the image.
template <class F>
void for_each_tap(const ConvShape& s, F fn) {
  for (int64_t n = 0; n < s.N; ++n)
    for (int64_t p = 0; p < s.P; ++p)
      for (int64_t q = 0; q < s.Q; ++q)
        for (int64_t r = 0; r < s.R; ++r)
          for (int64_t u = 0; u < s.S; ++u) {
            const int64_t h = p * s.stride - s.padding + r * s.dilation;
            const int64_t w = q * s.stride - s.padding + u * s.dilation;
            if (h >= 0 && h < s.H && w >= 0 && w < s.W) fn(n, p, q, r, u, h, w);
          }
}

// One case: returns true when y, mean and m2 match the host loop.
bool run_case(int N, int C, int H, int K, int R, int stride, int pad, int dil, DType t) {
  const ConvShape s = fr::make_conv_shape(N, C, H, H, K, R, R, stride, pad, dil, 1);
  const int64_t M = s.N * s.P * s.Q, kd = s.R * s.S * s.C;
  unsigned seed = 1234u + unsigned(C * 31 + K);
  std::vector<float> x(s.N * s.H * s.W * s.C), w(s.K * kd), res(M * s.K);
  std::vector<float> isc(C), ish(C), osc(K), osh(K);
  for (auto& v : x) v = round_host(frand(seed), t);
  for (auto& v : w) v = round_host(frand(seed) * 0.3f, t);
  for (auto& v : res) v = round_host(frand(seed), t);
  for (int c = 0; c < C; ++c) isc[c] = 1.f + 0.5f * frand(seed), ish[c] = 0.3f * frand(seed);
  for (int k = 0; k < K; ++k) osc[k] = 1.f + 0.5f * frand(seed), osh[k] = 0.3f * frand(seed);

  // Host reference: prologue (rounded), zero padding after it, fp32 GEMM, stats, epilogue.
  std::vector<float> acc(M * s.K);
  std::vector<double> yref(M * s.K);
  for (int64_t n = 0; n < s.N; ++n)
    for (int64_t p = 0; p < s.P; ++p)
      for (int64_t q = 0; q < s.Q; ++q)
        for (int64_t k = 0; k < s.K; ++k) {
          const int64_t m = (n * s.P + p) * s.Q + q;
          double a = 0;
          for (int64_t r = 0; r < s.R; ++r)
            for (int64_t u = 0; u < s.S; ++u) {
              const int64_t h = p * stride - pad + r * dil, w_ = q * stride - pad + u * dil;
              if (h < 0 || h >= s.H || w_ < 0 || w_ >= s.W) continue;  // padding: 0
              for (int64_t c = 0; c < s.C; ++c) {
                const float xv = x[nhwc(n, h, w_, c, s.H, s.W, s.C)];
                const float act = round_host(std::max(xv * isc[c] + ish[c], 0.f), t);
                a += double(act) * w[((k * s.R + r) * s.S + u) * s.C + c];
              }
            }
          acc[m * s.K + k] = float(a);
          const float v = float(a) * osc[k] + osh[k] + res[m * s.K + k];
          yref[m * s.K + k] = round_host(std::max(v, 0.f), t);
        }

  fr::cuda::ConvFwdParams prm{};
  void *dx = upload(x, t), *dw = upload(w, t), *dres = upload(res, t);
  void *disc = upload(isc, DType::kFloat), *dish = upload(ish, DType::kFloat);
  void *dosc = upload(osc, DType::kFloat), *dosh = upload(osh, DType::kFloat);
  void *dy, *dmean, *dm2, *dws;
  dy = device_poisoned(M * s.K * 4);
  dmean = device_poisoned(s.K * 4);
  dm2 = device_poisoned(s.K * 4);
  dws = device_poisoned(fr::cuda::conv_fwd_workspace_elems(s) * 4);
  prm.x = dx, prm.w = dw, prm.residual = dres;
  prm.in_scale = disc, prm.in_shift = dish, prm.out_scale = dosc, prm.out_shift = dosh;
  prm.y = dy, prm.mean = dmean, prm.m2 = dm2, prm.workspace = dws;
  prm.s = s, prm.in_relu = true, prm.out_relu = true, prm.stats = true, prm.target = kTarget;
  CUDA_OK(fr::cuda::launch_conv_fwd(prm, t, nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  const std::vector<float> y = download(dy, M * s.K, t);
  const std::vector<float> mean = download(dmean, s.K, DType::kFloat);
  const std::vector<float> m2 = download(dm2, s.K, DType::kFloat);

  // Statistics of the raw fp32 accumulator: the mean to within 1e-4 standard deviations and
  // M2 to 1e-4 relative, per channel (pooling the two would let a bad mean hide behind M2).
  double srel = 0;
  for (int64_t k = 0; k < s.K; ++k) {
    double mu = 0, sq = 0;
    for (int64_t m = 0; m < M; ++m) mu += acc[m * s.K + k];
    mu /= double(M);
    for (int64_t m = 0; m < M; ++m) sq += (acc[m * s.K + k] - mu) * (acc[m * s.K + k] - mu);
    const double dm = std::abs(mean[k] - mu) / std::sqrt(sq / double(M) + 1e-30);
    const double d2 = std::abs(m2[k] - sq) / (sq + 1e-30);
    srel = worse(srel, worse(dm, d2));
  }
  const double rel = rel_err(y, yref), worst = max_rel_err(y, yref);
  const double tol = data_tol(t);
  const bool ok = rel <= tol && worst <= 8 * tol && srel <= 1e-4;
  std::printf("%s fwd N=%d C=%d H=%d K=%d R=%d stride=%d pad=%d dil=%d dtype=%d: y rel %.2e "
              "(worst %.2e), stats rel %.2e\n", ok ? "ok  " : "FAIL", N, C, H, K, R, stride, pad,
              dil, int(t), rel, worst, srel);
  for (void* p : {dx, dw, dres, disc, dish, dosc, dosh, dy, dmean, dm2, dws}) cudaFree(p);
  return ok;
}

// Backward operands shared by the dgrad and wgrad cases: dz, y (NHWC [N,P,Q,K]) and the
// BN-backward coefficients; dy = round(a*dz + b*y + c) as the kernels feed the GEMM.
struct BwdCase {
  ConvShape s;
  DType t;
  std::vector<float> dz, y, a, b, c, w;
  std::vector<float> dy;  // host: the rounded BN-backward map
  BwdCase(int N, int C, int H, int K, int R, int stride, int pad, int dil, DType t_)
      : s(fr::make_conv_shape(N, C, H, H, K, R, R, stride, pad, dil, 1)), t(t_) {
    unsigned seed = 777u + unsigned(C * 131 + K);
    const size_t out = size_t(s.N * s.P * s.Q * s.K);
    dz = random_vec(out, 1.f, 0.f, t, seed);
    y = random_vec(out, 1.f, 0.5f, t, seed);
    a = random_vec(size_t(K), 0.5f, 1.f, DType::kFloat, seed);
    b = random_vec(size_t(K), 0.1f, 0.f, DType::kFloat, seed);
    c = random_vec(size_t(K), 0.1f, 0.f, DType::kFloat, seed);
    w = random_vec(size_t(K * R * R * C), 0.3f, 0.f, t, seed);
    dy.resize(out);
    for (size_t i = 0; i < out; ++i) {
      const int64_t k = int64_t(i) % s.K;
      dy[i] = round_host(fr::bn_bwd_apply(dz[i], y[i], a[k], b[k], c[k]), t);
    }
  }
};

// dgrad with residual, ReLU mask and sums against a host loop.
bool run_dgrad_case(int N, int C, int H, int K, int R, int stride, int pad, int dil, DType t) {
  const BwdCase bc(N, C, H, K, R, stride, pad, dil, t);
  const ConvShape& s = bc.s;
  const int64_t M = s.N * s.H * s.W;
  unsigned seed = 99u + unsigned(C);
  const auto res = random_vec(size_t(M * C), 1.f, 0.f, t, seed);
  const auto prev_y = random_vec(size_t(M * C), 1.f, 0.f, t, seed);
  const auto ps = random_vec(size_t(C), 0.5f, 1.f, DType::kFloat, seed);
  const auto pb = random_vec(size_t(C), 0.3f, 0.f, DType::kFloat, seed);
  const auto pm = random_vec(size_t(C), 0.3f, 0.f, DType::kFloat, seed);
  const auto pi = random_vec(size_t(C), 0.5f, 1.f, DType::kFloat, seed);
  std::vector<double> dx(static_cast<size_t>(M * C)), s0(static_cast<size_t>(C)),
      s1(static_cast<size_t>(C));
  // dx as the transpose of the forward: each (output pixel, tap) scatters into the input
  // pixel the forward read (padding reads nothing, stride holes receive nothing).
  for_each_tap(s, [&](int64_t n, int64_t p, int64_t q, int64_t r, int64_t u, int64_t h,
                      int64_t w_) {
    for (int64_t k = 0; k < s.K; ++k) {
      const double g = bc.dy[nhwc(n, p, q, k, s.P, s.Q, s.K)];
      for (int64_t ci = 0; ci < C; ++ci)
        dx[nhwc(n, h, w_, ci, s.H, s.W, C)] += g * bc.w[((k * R + r) * R + u) * C + ci];
    }
  });
  for (int64_t m = 0; m < M; ++m)  // + residual, ReLU mask of the previous BN's output, sums
    for (int64_t ci = 0; ci < C; ++ci) {
      const int64_t i = m * C + ci;
      const double pre = double(prev_y[i]) * ps[ci] + pb[ci];
      const double g = pre > 0 ? dx[i] + res[i] : 0.0;
      dx[i] = g;
      s0[ci] += g;
      s1[ci] += g * (double(prev_y[i]) - pm[ci]) * pi[ci];
    }
  void *ddz = upload(bc.dz, t), *dyv = upload(bc.y, t), *dw = upload(bc.w, t);
  void *da = upload(bc.a, DType::kFloat), *db = upload(bc.b, DType::kFloat);
  void *dc = upload(bc.c, DType::kFloat), *dres = upload(res, t), *dpy = upload(prev_y, t);
  void *dps = upload(ps, DType::kFloat), *dpb = upload(pb, DType::kFloat);
  void *dpm = upload(pm, DType::kFloat), *dpi = upload(pi, DType::kFloat);
  void* ddx = device_poisoned(size_t(M * C) * 4);
  void* dsum0 = device_poisoned(size_t(C) * 4);
  void* dsum1 = device_poisoned(size_t(C) * 4);
  void* dws = device_poisoned(size_t(fr::cuda::conv_dgrad_workspace_elems(s)) * 4);
  fr::cuda::ConvDgradParams prm{};
  prm.dz = ddz, prm.y = dyv, prm.a = da, prm.b = db, prm.c = dc, prm.w = dw;
  prm.residual = dres, prm.prev_y = dpy, prm.prev_scale = dps, prm.prev_shift = dpb;
  prm.prev_mean = dpm, prm.prev_invstd = dpi;
  prm.dx = ddx, prm.sum_dx = dsum0, prm.sum_dx_xhat = dsum1, prm.workspace = dws, prm.s = s;
  prm.target = kTarget;
  CUDA_OK(fr::cuda::launch_conv_dgrad(prm, t, nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  const std::vector<float> got = download(ddx, size_t(M * C), t);
  const double rel = rel_err(got, dx), worst = max_rel_err(got, dx);
  const double srel = worse(rel_err(download(dsum0, size_t(C), DType::kFloat), s0),
                            rel_err(download(dsum1, size_t(C), DType::kFloat), s1));
  const bool ok = rel <= data_tol(t) && worst <= 8 * data_tol(t) &&
                  srel <= std::max(1e-4, data_tol(t));
  std::printf("%s dgrad N=%d C=%d H=%d K=%d R=%d stride=%d pad=%d dil=%d dtype=%d: dx rel %.2e "
              "(worst %.2e), sums rel %.2e\n", ok ? "ok  " : "FAIL", N, C, H, K, R, stride, pad,
              dil, int(t), rel, worst, srel);
  for (void* p : {ddz, dyv, dw, da, db, dc, dres, dpy, dps, dpb, dpm, dpi, ddx, dsum0, dsum1, dws})
    cudaFree(p);
  return ok;
}

// wgrad (split-K, affine+ReLU prologue recomputed, KRSC output in the data dtype).
bool run_wgrad_case(int N, int C, int H, int K, int R, int stride, int pad, int dil, DType t) {
  const BwdCase bc(N, C, H, K, R, stride, pad, dil, t);
  const ConvShape& s = bc.s;
  unsigned seed = 4242u + unsigned(K);
  const auto x = random_vec(size_t(s.N * s.H * s.W * C), 1.f, 0.f, t, seed);
  const auto isc = random_vec(size_t(C), 0.5f, 1.f, DType::kFloat, seed);
  const auto ish = random_vec(size_t(C), 0.3f, 0.f, DType::kFloat, seed);
  const int64_t cols = s.R * s.S * s.C;
  std::vector<double> dw(size_t(K * cols));
  // dw[k][r][u][c] = sum over output pixels of dy * the (rounded) activation the tap read.
  for_each_tap(s, [&](int64_t n, int64_t p, int64_t q, int64_t r, int64_t u, int64_t h,
                      int64_t w_) {
    for (int64_t ci = 0; ci < C; ++ci) {
      const float xv = x[nhwc(n, h, w_, ci, s.H, s.W, C)];
      const double act = round_host(std::max(xv * isc[ci] + ish[ci], 0.f), t);
      for (int64_t k = 0; k < K; ++k)
        dw[((k * R + r) * R + u) * C + ci] += double(bc.dy[nhwc(n, p, q, k, s.P, s.Q, K)]) * act;
    }
  });
  void *ddz = upload(bc.dz, t), *dyv = upload(bc.y, t), *dx = upload(x, t);
  void *da = upload(bc.a, DType::kFloat), *db = upload(bc.b, DType::kFloat);
  void *dc = upload(bc.c, DType::kFloat), *disc = upload(isc, DType::kFloat);
  void* dish = upload(ish, DType::kFloat);
  void* ddw = device_poisoned(size_t(K * cols) * 4);
  void* dws = device_poisoned(size_t(fr::cuda::conv_wgrad_workspace_elems(s, kTarget)) * 4);
  fr::cuda::ConvWgradParams prm{};
  prm.x = dx, prm.in_scale = disc, prm.in_shift = dish, prm.dz = ddz, prm.y = dyv;
  prm.a = da, prm.b = db, prm.c = dc, prm.dw = ddw, prm.workspace = dws, prm.s = s;
  prm.in_relu = true, prm.dw_krsc = true, prm.target = kTarget;
  CUDA_OK(fr::cuda::launch_conv_wgrad(prm, t, t, nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  const std::vector<float> got = download(ddw, size_t(K * cols), t);
  const double rel = rel_err(got, dw), worst = max_rel_err(got, dw);
  const bool ok = rel <= data_tol(t) && worst <= 8 * data_tol(t);
  const int64_t splits = fr::conv_wgrad_splits(s, fr::cuda::conv_wgrad_target_ctas(kTarget));
  std::printf("%s wgrad N=%d C=%d H=%d K=%d R=%d stride=%d pad=%d dil=%d dtype=%d splits=%lld: "
              "dw rel %.2e (worst %.2e)\n", ok ? "ok  " : "FAIL", N, C, H, K, R, stride, pad, dil,
              int(t), static_cast<long long>(splits), rel, worst);
  for (void* p : {ddz, dyv, dx, da, db, dc, disc, dish, ddw, dws}) cudaFree(p);
  return ok;
}

}  // namespace

int main() {
  bool ok = true;
  for (DType t : {DType::kHalf, DType::kBFloat16, DType::kFloat}) {
    ok &= run_case(2, 16, 9, 24, 3, 1, 1, 1, t);  // vectorised A/B loads (C % 8 == 0)
    ok &= run_case(2, 5, 13, 70, 3, 2, 1, 1, t);  // scalar loads, 2 column tiles, stride 2
    ok &= run_case(1, 64, 7, 64, 1, 1, 0, 1, t);  // 1x1
    ok &= run_case(1, 8, 11, 8, 3, 1, 2, 2, t);   // dilation 2
    ok &= run_case(4, 16, 40, 16, 1, 1, 0, 1, t);  // 100 tiles: both merge levels
    // Backward: tensor cores for 16-bit data with C, K % 8 == 0 (edge tiles, stride holes,
    // two merge levels at 40 x 40); SIMT for fp32 and other channel counts.
    ok &= run_dgrad_case(2, 24, 9, 40, 3, 2, 1, 1, t);  // 4 stride phases
    ok &= run_dgrad_case(2, 16, 11, 24, 1, 2, 0, 1, t);  // 1x1 s2: 3 phases without taps,
                                                         // an empty row tile in phase 3
    ok &= run_dgrad_case(4, 16, 40, 72, 3, 2, 1, 1, t);  // 100 phase tiles: both merge levels
    ok &= run_dgrad_case(2, 8, 2, 8, 1, 3, 0, 1, t);     // H < stride
    ok &= run_dgrad_case(2, 5, 9, 12, 3, 2, 1, 1, t);    // stride 2, SIMT for 16-bit too
    ok &= run_dgrad_case(4, 16, 40, 72, 1, 1, 0, 1, t);
    ok &= run_dgrad_case(2, 5, 7, 12, 3, 1, 2, 2, t);
    ok &= run_wgrad_case(2, 24, 9, 40, 3, 2, 1, 1, t);
    ok &= run_wgrad_case(4, 72, 20, 16, 1, 1, 0, 1, t);
    ok &= run_wgrad_case(2, 5, 7, 12, 3, 1, 2, 2, t);
    ok &= run_wgrad_case(2, 8, 36, 16, 3, 1, 1, 1, t);  // 10 splits, the last one empty
    ok &= run_wgrad_case(2, 3, 15, 16, 7, 2, 3, 1, t);  // the stem: element loads of x
  }
  std::printf("%s\n", ok ? "all ok" : "FAILED");
  return ok ? 0 : 1;
}
