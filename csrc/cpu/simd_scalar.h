// simd_scalar.h: one-lane "vectors" (plain float/double) with the interface kernels_impl.h expects.
// Included only by isa_scalar.cpp, inside namespace fastlstm::cpu_scalar, compiled with the
// baseline flags of the target: the path for CPUs without AVX2 (and for non-x86 builds).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#define FASTLSTM_ALWAYS_INLINE inline __attribute__((always_inline))

template <typename TT, typename Bits, int kMantBits, int kExpBias>
struct VScalar {
  using T = TT;
  using R = TT;
  static constexpr int W = 1;
  static constexpr bool kTranspose = false;
  static FASTLSTM_ALWAYS_INLINE R zero() { return T(0); }
  static FASTLSTM_ALWAYS_INLINE R set1(T v) { return v; }
  static FASTLSTM_ALWAYS_INLINE R load(const T* p) { return *p; }
  static FASTLSTM_ALWAYS_INLINE void store(T* p, R v) { *p = v; }
  static FASTLSTM_ALWAYS_INLINE R load_n(const T* p, int n) { return n > 0 ? *p : T(0); }
  static FASTLSTM_ALWAYS_INLINE void store_n(T* p, R v, int n) { if (n > 0) *p = v; }
  static FASTLSTM_ALWAYS_INLINE void add_f64(double* p, R v) { *p += static_cast<double>(v); }
  static FASTLSTM_ALWAYS_INLINE R add(R a, R b) { return a + b; }
  static FASTLSTM_ALWAYS_INLINE R sub(R a, R b) { return a - b; }
  static FASTLSTM_ALWAYS_INLINE R mul(R a, R b) { return a * b; }
  static FASTLSTM_ALWAYS_INLINE R div(R a, R b) { return a / b; }
  // plain multiply-add: std::fma is a slow library call without FMA hardware; the math in
  // kernels_impl.h keeps its error bound either way (n * ln2_hi is exact, see Math)
  static FASTLSTM_ALWAYS_INLINE R fma(R a, R b, R c) { return a * b + c; }
  static FASTLSTM_ALWAYS_INLINE R fnma(R a, R b, R c) { return c - a * b; }
  static FASTLSTM_ALWAYS_INLINE R abs(R a) { return std::fabs(a); }
  static FASTLSTM_ALWAYS_INLINE R neg(R a) { return -a; }
  static FASTLSTM_ALWAYS_INLINE R min_keep_nan(R lim, R x) { return x > lim ? lim : x; }
  static FASTLSTM_ALWAYS_INLINE R max_keep_nan(R lim, R x) { return x < lim ? lim : x; }
  static FASTLSTM_ALWAYS_INLINE R round(R a) { return std::nearbyint(a); }
  static FASTLSTM_ALWAYS_INLINE R floor(R a) { return std::floor(a); }
  static FASTLSTM_ALWAYS_INLINE R pow2i(R n) {
    if (n != n) return n;
    Bits bits = static_cast<Bits>(static_cast<int64_t>(n) + kExpBias) << kMantBits;
    T out;
    std::memcpy(&out, &bits, sizeof(out));
    return out;
  }
  static FASTLSTM_ALWAYS_INLINE R select_neg(R x, R if_neg, R otherwise) { return x < 0 ? if_neg : otherwise; }
  static FASTLSTM_ALWAYS_INLINE R copysign(R mag, R sgn) { return std::copysign(mag, sgn); }
};
using VF = VScalar<float, uint32_t, 23, 127>;
using VD = VScalar<double, uint64_t, 52, 1023>;

// rows of the micro-kernel: 4 rows x 4 lanes of scalar accumulators
constexpr int kMR = 4;
