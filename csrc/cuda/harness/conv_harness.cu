// Standalone harness for the conv_fwd kernels (no torch): small random NHWC data, the CUDA
// forward (tensor-core fp16/bf16 and SIMT fp32 paths, with prologue, epilogue, residual and
// statistics) against a host loop. For compute-sanitizer on a GPU machine:
//   nvcc -std=c++20 -O2 -arch=sm_90 -Icsrc csrc/cuda/harness/conv_harness.cu -o conv_harness
//   compute-sanitizer --tool memcheck ./conv_harness
//   compute-sanitizer --tool racecheck ./conv_harness
// Exit status 0 when every case matches. GPU-UNVERIFIED: compiled here, never run yet.
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "cuda/conv_kernels.cu"  // the kernels themselves (one TU, no extension build)

namespace {

using fr::ConvShape;
using fr::cuda::DType;

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
  CUDA_OK(cudaMalloc(&d, bytes.size() + 16));
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
  std::vector<float> acc(M * s.K), yref(M * s.K);
  for (int64_t m = 0; m < M; ++m) {
    int64_t n, p, q;
    fr::decode_m(s, m, &n, &p, &q);
    for (int64_t k = 0; k < s.K; ++k) {
      double a = 0;
      for (int64_t r = 0; r < s.R; ++r)
        for (int64_t u = 0; u < s.S; ++u)
          for (int64_t c = 0; c < s.C; ++c) {
            const int64_t off = fr::fwd_input_offset(s, n, p, q, r, u, c);
            if (off < 0) continue;
            const float act = round_host(fr::relu(x[off] * isc[c] + ish[c]), t);
            a += double(act) * w[((k * s.R + r) * s.S + u) * s.C + c];
          }
      acc[m * s.K + k] = float(a);
      const float v = float(a) * osc[k] + osh[k] + res[m * s.K + k];
      yref[m * s.K + k] = round_host(fr::relu(v), t);
    }
  }

  fr::cuda::ConvFwdParams prm{};
  void *dx = upload(x, t), *dw = upload(w, t), *dres = upload(res, t);
  void *disc = upload(isc, DType::kFloat), *dish = upload(ish, DType::kFloat);
  void *dosc = upload(osc, DType::kFloat), *dosh = upload(osh, DType::kFloat);
  void *dy, *dmean, *dm2, *dws;
  CUDA_OK(cudaMalloc(&dy, M * s.K * 4));
  CUDA_OK(cudaMalloc(&dmean, s.K * 4));
  CUDA_OK(cudaMalloc(&dm2, s.K * 4));
  CUDA_OK(cudaMalloc(&dws, fr::cuda::conv_fwd_workspace_elems(s) * 4));
  prm.x = dx, prm.w = dw, prm.residual = dres;
  prm.in_scale = disc, prm.in_shift = dish, prm.out_scale = dosc, prm.out_shift = dosh;
  prm.y = dy, prm.mean = dmean, prm.m2 = dm2, prm.workspace = dws;
  prm.s = s, prm.in_relu = true, prm.out_relu = true, prm.stats = true;
  CUDA_OK(fr::cuda::launch_conv_fwd(prm, t, nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  const std::vector<float> y = download(dy, M * s.K, t);
  const std::vector<float> mean = download(dmean, s.K, DType::kFloat);
  const std::vector<float> m2 = download(dm2, s.K, DType::kFloat);

  double err = 0, ref = 0, serr = 0, sref = 0;
  for (int64_t i = 0; i < M * s.K; ++i) {
    err += double(y[i] - yref[i]) * (y[i] - yref[i]);
    ref += double(yref[i]) * yref[i];
  }
  for (int64_t k = 0; k < s.K; ++k) {
    double mu = 0, sq = 0;
    for (int64_t m = 0; m < M; ++m) mu += acc[m * s.K + k];
    mu /= double(M);
    for (int64_t m = 0; m < M; ++m) sq += (acc[m * s.K + k] - mu) * (acc[m * s.K + k] - mu);
    serr += (mean[k] - mu) * (mean[k] - mu) + (m2[k] - sq) * (m2[k] - sq);
    sref += mu * mu + sq * sq;
  }
  const double rel = std::sqrt(err / ref), srel = std::sqrt(serr / sref);
  const double tol = t == DType::kFloat ? 1e-5 : (t == DType::kHalf ? 2e-3 : 1e-2);
  const bool ok = rel <= tol && srel <= 1e-4;
  std::printf("%s N=%d C=%d H=%d K=%d R=%d stride=%d pad=%d dil=%d dtype=%d: y rel %.2e, "
              "stats rel %.2e\n", ok ? "ok  " : "FAIL", N, C, H, K, R, stride, pad, dil, int(t),
              rel, srel);
  for (void* p : {dx, dw, dres, disc, dish, dosc, dosh, dy, dmean, dm2, dws}) cudaFree(p);
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
  }
  std::printf("%s\n", ok ? "all ok" : "FAILED");
  return ok ? 0 : 1;
}
