// Parallel loops over the [outer, C, inner] view (common/macros.h Layout) for the CPU kernels.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "common/layout.h"

namespace fr::cpu {

// ~32K elements per task: enough work to amortise the parallel_for overhead.
inline int64_t outer_grain(const Layout& L) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, L.C * L.inner));
}

// Row kernels (for_each_row, reduce_rows) are not inlined into their callers: inlined, their
// restrict-qualified pointers lose that meaning and the loops fall back to scalar code. On
// x86-64 ELF they are also compiled for AVX2 and picked at load time by the CPU's features
// (the extension builds without -march, so the default clone is SSE2). AVX2 without FMA:
// contracting a*b + c into one rounding would change results between clones.
#if defined(__GNUC__) && defined(__x86_64__) && defined(__ELF__)
#define FR_ROW_KERNEL __attribute__((noinline, target_clones("avx2", "default")))
#else
#define FR_ROW_KERNEL __attribute__((noinline))
#endif

// p + k, or nullptr for an absent operand.
template <class T>
T* offset(T* p, int64_t k) {
  return p ? p + k : nullptr;
}

// f(per_elem, offset, len, c) for each contiguous row, in parallel over `outer`: channels-last
// rows are one pixel's C channels (per_elem is std::true_type: element i is channel i, c is 0),
// NCHW rows one channel's H*W plane (std::false_type: every element is channel c). Row loops
// index per-channel vectors by `per_elem ? i : 0` from `vector + c`, so that the loop body is
// branch-free and vectorises across channels or pixels.
template <class F>
void for_each_row(const Layout& L, const F& f) {
  at::parallel_for(0, L.outer, outer_grain(L), [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      if (L.inner == 1) {
        f(std::true_type{}, o * L.C, L.C, int64_t(0));
        continue;
      }
      for (int64_t c = 0; c < L.C; ++c) f(std::false_type{}, (o * L.C + c) * L.inner, L.inner, c);
    }
  });
}

// K per-channel sums in double, by rows (as for_each_row) with a deterministic result (as
// reduce_runs): f(per_elem, acc, offset, len, c) adds a row into its chunk's accumulators,
// sum k of channel c at acc[k * C + c] (per_elem rows: acc[k * C + i]). Returns the K*C
// totals, chunks added in order.
template <int K, class F>
std::vector<double> reduce_rows(const Layout& L, const F& f) {
  const int64_t grain = outer_grain(L);
  const int64_t nchunk = (L.outer + grain - 1) / grain;
  std::vector<double> part(nchunk * K * L.C, 0.0);
  at::parallel_for(0, nchunk, 1, [&](int64_t begin, int64_t end) {
    for (int64_t ch = begin; ch < end; ++ch) {
      double* acc = part.data() + ch * K * L.C;
      const int64_t o_end = std::min(L.outer, (ch + 1) * grain);
      for (int64_t o = ch * grain; o < o_end; ++o) {
        if (L.inner == 1) {
          f(std::true_type{}, acc, o * L.C, L.C, int64_t(0));
          continue;
        }
        for (int64_t c = 0; c < L.C; ++c)
          f(std::false_type{}, acc, (o * L.C + c) * L.inner, L.inner, c);
      }
    }
  });
  std::vector<double> total(K * L.C, 0.0);
  for (int64_t ch = 0; ch < nchunk; ++ch)
    for (int64_t j = 0; j < K * L.C; ++j) total[j] += part[ch * K * L.C + j];
  return total;
}

// Calls f(std::bool_constant<flags>...) for runtime `flags`, so that a loop body sees them
// as constants: the compiler then drops the dead branches and can vectorise the loop.
template <class F>
void static_flags(F&& f) {
  f();
}
template <class F, class... Rest>
void static_flags(F&& f, bool first, Rest... rest) {
  if (first)
    static_flags([&](auto... bs) { f(std::true_type{}, bs...); }, rest...);
  else
    static_flags([&](auto... bs) { f(std::false_type{}, bs...); }, rest...);
}

// Per-channel reduction with a deterministic result: `outer` is cut into chunks fixed by the
// shape alone (never by the thread count), f(acc, c, offset, len) folds a run into its chunk's
// accumulator for channel c, and the chunks are merged in order by merge(total, part).
template <class Acc, class F, class Merge>
std::vector<Acc> reduce_runs(const Layout& L, const F& f, const Merge& merge) {
  const int64_t grain = outer_grain(L);
  const int64_t nchunk = (L.outer + grain - 1) / grain;
  std::vector<Acc> part(nchunk * L.C);
  at::parallel_for(0, nchunk, 1, [&](int64_t begin, int64_t end) {
    for (int64_t ch = begin; ch < end; ++ch) {
      Acc* acc = part.data() + ch * L.C;
      const int64_t o_end = std::min(L.outer, (ch + 1) * grain);
      for (int64_t o = ch * grain; o < o_end; ++o)
        for (int64_t c = 0; c < L.C; ++c) f(acc[c], c, (o * L.C + c) * L.inner, L.inner);
    }
  });
  std::vector<Acc> total(L.C);
  for (int64_t ch = 0; ch < nchunk; ++ch)
    for (int64_t c = 0; c < L.C; ++c) merge(total[c], part[ch * L.C + c]);
  return total;
}

// K plain sums per channel, accumulated in double.
template <int K>
struct Sums {
  double v[K] = {};
};

template <int K>
inline void add_sums(Sums<K>& total, const Sums<K>& part) {
  for (int k = 0; k < K; ++k) total.v[k] += part.v[k];
}

}  // namespace fr::cpu
