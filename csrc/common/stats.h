// Numerically stable per-channel statistics: count/mean/M2 per tile, merged with Chan's
// formula. Never sum(y^2) - n*mean^2, which cancels catastrophically when |mean| >> std.
#pragma once

#include "common/macros.h"

namespace fr {

template <class T>
struct Welford {
  T count = T(0);
  T mean = T(0);
  T m2 = T(0);  // sum of squared deviations from the mean
};

// Welford's single-value update.
template <class T>
FR_HOST_DEVICE void welford_add(Welford<T>& s, T x) {
  s.count += T(1);
  T d = x - s.mean;
  s.mean += d / s.count;
  s.m2 += d * (x - s.mean);
}

// Chan et al.: merge two partial (count, mean, M2) summaries.
template <class T>
FR_HOST_DEVICE Welford<T> welford_merge(const Welford<T>& a, const Welford<T>& b) {
  if (b.count == T(0)) return a;
  if (a.count == T(0)) return b;
  Welford<T> r;
  r.count = a.count + b.count;
  T d = b.mean - a.mean;
  T wb = b.count / r.count;
  r.mean = a.mean + d * wb;
  r.m2 = a.m2 + b.m2 + d * d * a.count * wb;
  return r;
}

// Summary of a contiguous run: two passes (the run is in cache for the second).
template <class T, class Load>
FR_HOST_DEVICE Welford<T> welford_run(Load load, int64_t n) {
  Welford<T> s;
  if (n <= 0) return s;
  T sum = T(0);
  for (int64_t i = 0; i < n; ++i) sum += load(i);
  s.count = T(n);
  s.mean = sum / s.count;
  for (int64_t i = 0; i < n; ++i) {
    T d = load(i) - s.mean;
    s.m2 += d * d;
  }
  return s;
}

}  // namespace fr
