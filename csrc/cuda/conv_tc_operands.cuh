// The tensor-core GEMM's operand policies of conv_fwd, conv_bwd_data and conv_bwd_weight
// (see conv_tc.cuh for the contract). CUDA headers and csrc/common only (docs/design.md §4).
#pragma once

#include "cuda/conv_tc.cuh"

namespace fr::cuda {
namespace {

template <class S>
struct FwdTc {
  static constexpr bool kTransA = false, kTransB = false;
  ConvFwdParams p;
  bool vec_a, vec_b;
  __device__ FwdTc at(int64_t) const { return *this; }
  __device__ GemmSlice slice() const { return fwd_slice(p.s); }
  struct State {
    KMajorSlot slot;
    int64_t n0, n, pp, q;
    bool row_ok;
    Vec8<S> x[2];
    int64_t chan[2];  // channel of chunk h's first element; -1: zeros
  };
  __device__ State begin(int64_t m0, int64_t n0) const {
    State st{};
    st.slot = KMajorSlot::of(threadIdx.x);
    st.n0 = n0;
    st.row_ok = m0 + st.slot.row < fwd_gemm_m(p.s);
    if (st.row_ok) decode_m(p.s, m0 + st.slot.row, &st.n, &st.pp, &st.q);
    return st;
  }
  __device__ void fetch(State& st, S* As, S* Bs, int64_t k0, int64_t k_end) const {
    tc_copy_kmajor<S>(static_cast<const S*>(p.w), p.s.K, fwd_gemm_k(p.s), st.n0, k0, k_end, Bs,
                      vec_b);
    if (!vec_a) return;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t k = k0 + st.slot.kc + 8 * h;
      st.chan[h] = -1;
      if (!st.row_ok || k >= k_end) continue;
      int64_t c;
      const int64_t off = fwd_a_offset(p.s, st.n, st.pp, st.q, k, &c);
      if (off < 0) continue;  // padding: zero after the prologue
      st.x[h] = load8<S>(p.x, off);
      st.chan[h] = c;
    }
  }
  __device__ void stash(const State& st, S* As, S*, int64_t k0, int64_t k_end) const {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      Vec8<S> v;
      if (vec_a) {
        v = st.chan[h] < 0 ? zeros8<S>()
                           : prologue8<S>(st.x[h], p.in_scale, p.in_shift, p.in_relu, st.chan[h]);
      } else {
        const S* x = static_cast<const S*>(p.x);
        const float* sc = static_cast<const float*>(p.in_scale);
        const float* sh = static_cast<const float*>(p.in_shift);
        auto act = [&](int64_t off, int64_t c) {
          return round_to<S>(prologue<float>(Cvt<S>::to(x[off]), sc, sh, p.in_relu, c));
        };
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          const int64_t k = k0 + st.slot.kc + 8 * h + e;
          v.v[e] = Cvt<S>::from(
              st.row_ok && k < k_end ? fwd_a_elem<float>(p.s, st.n, st.pp, st.q, k, act) : 0.f);
        }
      }
      store8(As + st.slot.at(h), v);
    }
  }
};

// conv_bwd_data, per stride phase: A(m, k) = dy at the output pixel that the phase's input
// pixel m reaches through its tap k (K-major, fused BN-backward map; 0 outside the image),
// B(c, k) = w[ko][r][s][c] (MN-major copy: 8 input channels are contiguous in KRSC). Needs
// K % 8 == 0, C % 8 == 0 and 16-byte aligned dz, y, w (else the launcher takes SIMT).
template <class S>
struct DgradTc {
  static constexpr bool kTransA = false, kTransB = true;
  ConvDgradParams p;
  DgradPhase f;
  __device__ DgradTc at(int64_t z) const { return {p, dgrad_phase(p.s, z)}; }
  __device__ GemmSlice slice() const { return dgrad_slice(p.s, f); }
  struct State {
    KMajorSlot a;
    MNMajorSlot b;
    int64_t cn, n, i, j;  // the thread's B channels (cn..cn+7); its A row (phase row)
    bool row_ok;
    Vec8<S> dz[2], y[2];
    int64_t chan[2];  // output channel of A chunk h; -1: zeros
  };
  __device__ State begin(int64_t m0, int64_t n0) const {
    State st{};
    st.a = KMajorSlot::of(threadIdx.x);
    st.b = MNMajorSlot::of(threadIdx.x);
    st.cn = n0 + st.b.rc;
    st.row_ok = m0 + st.a.row < dgrad_gemm_m(p.s, f);
    if (st.row_ok) decode_phase_row(f, m0 + st.a.row, &st.n, &st.i, &st.j);
    return st;
  }
  __device__ void fetch(State& st, S* As, S* Bs, int64_t k0, int64_t k_end) const {
    const S* w = static_cast<const S*>(p.w);
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      const int64_t k = k0 + st.b.kr + 16 * u;
      const bool ok = k < k_end && st.cn < p.s.C;
      const int64_t off = ok ? dgrad_b_offset(p.s, f, st.cn, k) : 0;
      cp_async16(Bs + st.b.at(u), w + off, ok ? 16 : 0);
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t k = k0 + st.a.kc + 8 * h;
      st.chan[h] = -1;
      if (!st.row_ok || k >= k_end) continue;
      int64_t ko;
      const int64_t off = dgrad_a_offset(p.s, f, st.n, st.i, st.j, k, &ko);
      if (off < 0) continue;  // outside the image: zero after the BN-backward map
      st.dz[h] = load8<S>(p.dz, off);
      st.y[h] = load8<S>(p.y, off);
      st.chan[h] = ko;
    }
  }
  __device__ void stash(const State& st, S* As, S*, int64_t, int64_t) const {
#pragma unroll
    for (int h = 0; h < 2; ++h)
      store8(As + st.a.at(h), st.chan[h] < 0 ? zeros8<S>()
                                             : bn_bwd8<S>(st.dz[h], st.y[h], p.a, p.b, p.c,
                                                          st.chan[h]));
  }
};

// conv_bwd_weight: A(ko, i) = dy at output pixel i, channel ko (MN-major, fused), B(j, i) =
// the forward activation of pixel i through tap/channel j (MN-major, fused prologue; 0 on
// padding). Needs K % 8 == 0 and 16-byte aligned dz, y. kVecB: C % 8 == 0 and x 16-byte
// aligned; else element loads for B (the stem's C = 3), in their own instantiation so the
// common path keeps its registers.
template <class S, bool kVecB>
struct WgradTc {
  static constexpr bool kTransA = true, kTransB = true;
  ConvWgradParams p;
  int64_t z;
  __device__ WgradTc at(int64_t zz) const { return {p, zz}; }
  __device__ GemmSlice slice() const { return wgrad_slice(p.s, p.kchunk, z); }
  struct State {
    MNMajorSlot slot;
    int64_t ko;         // the thread's A channels ko..ko+7
    int64_t j;          // the thread's B columns j..j+7 ...
    int64_t r, t, c;    // ... vec_b: tap (r, t), channels c..c+7
    bool a_ok, b_ok;
    Vec8<S> dz[2], y[2], x[2];
    bool dy_ok[2], x_ok[2];
  };
  __device__ State begin(int64_t m0, int64_t n0) const {
    State st{};
    st.slot = MNMajorSlot::of(threadIdx.x);
    st.ko = m0 + st.slot.rc;
    st.a_ok = st.ko < p.s.K;
    st.j = n0 + st.slot.rc;
    st.b_ok = st.j < fwd_gemm_k(p.s);
    // wgrad_b_offset, with the column's tap decoded once: it is the same every stage.
    if (st.b_ok && kVecB) decode_k(p.s, st.j, p.s.C, &st.r, &st.t, &st.c);
    return st;
  }
  __device__ void fetch(State& st, S*, S*, int64_t k0, int64_t k_end) const {
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      const int64_t i = k0 + st.slot.kr + 16 * u;  // output pixel
      st.dy_ok[u] = st.a_ok && i < k_end;
      if (st.dy_ok[u]) {
        st.dz[u] = load8<S>(p.dz, i * p.s.K + st.ko);
        st.y[u] = load8<S>(p.y, i * p.s.K + st.ko);
      }
      st.x_ok[u] = false;
      if (!kVecB || !st.b_ok || i >= k_end) continue;
      int64_t n, pp, q;
      decode_m(p.s, i, &n, &pp, &q);
      const int64_t off = fwd_input_offset(p.s, n, pp, q, st.r, st.t, st.c);
      if (off < 0) continue;
      st.x[u] = load8<S>(p.x, off);
      st.x_ok[u] = true;
    }
  }
  __device__ void stash(const State& st, S* As, S* Bs, int64_t k0, int64_t k_end) const {
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      store8(As + st.slot.at(u),
             st.dy_ok[u] ? bn_bwd8<S>(st.dz[u], st.y[u], p.a, p.b, p.c, st.ko) : zeros8<S>());
      Vec8<S> b;
      if constexpr (kVecB)
        b = st.x_ok[u] ? prologue8<S>(st.x[u], p.in_scale, p.in_shift, p.in_relu, st.c)
                       : zeros8<S>();
      else
        b = b_elements(st, k0 + st.slot.kr + 16 * u, k_end);
      store8(Bs + st.slot.at(u), b);
    }
  }
  // B's 8 columns j.. at pixel i element by element (wgrad_b_elem), for C % 8 != 0.
  __device__ Vec8<S> b_elements(const State& st, int64_t i, int64_t k_end) const {
    const S* x = static_cast<const S*>(p.x);
    const float* sc = static_cast<const float*>(p.in_scale);
    const float* sh = static_cast<const float*>(p.in_shift);
    auto act = [&](int64_t off, int64_t c) {
      return round_to<S>(prologue<float>(Cvt<S>::to(x[off]), sc, sh, p.in_relu, c));
    };
    Vec8<S> v;
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const bool ok = i < k_end && st.j + e < fwd_gemm_k(p.s);
      v.v[e] = Cvt<S>::from(ok ? wgrad_b_elem<float>(p.s, st.j + e, i, act) : 0.f);
    }
    return v;
  }
};

// One BK=32 stage of MMAs for this warp's 32x32 tile (fragment addresses: mma_layout.h).

}  // namespace
}  // namespace fr::cuda
