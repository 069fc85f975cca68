// simd_avx2.h: AVX2 + FMA vector wrappers with the interface kernels_impl.h expects.
// Included only by isa_avx2.cpp, inside namespace fastlstm::cpu_avx2. One ymm per vector:
// 8 floats or 4 doubles. Tails use vmaskmov loads/stores.
#pragma once
#include <immintrin.h>

#define FASTLSTM_ALWAYS_INLINE inline __attribute__((always_inline))

struct VF {
  using T = float;
  using R = __m256;
  static constexpr int W = 8;
  static FASTLSTM_ALWAYS_INLINE R zero() { return _mm256_setzero_ps(); }
  static FASTLSTM_ALWAYS_INLINE R set1(T v) { return _mm256_set1_ps(v); }
  static FASTLSTM_ALWAYS_INLINE R load(const T* p) { return _mm256_loadu_ps(p); }
  static FASTLSTM_ALWAYS_INLINE void store(T* p, R v) { _mm256_storeu_ps(p, v); }
  static FASTLSTM_ALWAYS_INLINE __m256i mask(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static FASTLSTM_ALWAYS_INLINE R load_n(const T* p, int n) { return _mm256_maskload_ps(p, mask(n)); }
  static FASTLSTM_ALWAYS_INLINE void store_n(T* p, R v, int n) { _mm256_maskstore_ps(p, mask(n), v); }
  // p[0..8) += v, widened to double (the bias gradient's running sums)
  static FASTLSTM_ALWAYS_INLINE void add_f64(double* p, R v) {
    _mm256_storeu_pd(p, _mm256_add_pd(_mm256_loadu_pd(p), _mm256_cvtps_pd(_mm256_castps256_ps128(v))));
    _mm256_storeu_pd(p + 4, _mm256_add_pd(_mm256_loadu_pd(p + 4), _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1))));
  }
  // dst[k * ldd + l] = src[l * lds + k] for k, l < 8: one 8 x 8 block transposed (packing W_hh)
  static constexpr bool kTranspose = true;
  static FASTLSTM_ALWAYS_INLINE void transpose(const T* src, int64_t lds, T* dst, int64_t ldd) {
    R r[8], t[8];
    for (int i = 0; i < 8; ++i) r[i] = load(src + i * lds);
    for (int i = 0; i < 8; i += 2) {  // pairs of rows interleaved
      t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
      t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {  // 4 x 4 blocks transposed inside each 128-bit lane
      r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
      r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
      r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
      r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int i = 0; i < 4; ++i) {  // then the 128-bit lanes
      t[i] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x20);
      t[i + 4] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x31);
    }
    for (int i = 0; i < 8; ++i) store(dst + i * ldd, t[i]);
  }
  static FASTLSTM_ALWAYS_INLINE R add(R a, R b) { return _mm256_add_ps(a, b); }
  static FASTLSTM_ALWAYS_INLINE R sub(R a, R b) { return _mm256_sub_ps(a, b); }
  static FASTLSTM_ALWAYS_INLINE R mul(R a, R b) { return _mm256_mul_ps(a, b); }
  static FASTLSTM_ALWAYS_INLINE R div(R a, R b) { return _mm256_div_ps(a, b); }
  static FASTLSTM_ALWAYS_INLINE R fma(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  static FASTLSTM_ALWAYS_INLINE R fnma(R a, R b, R c) { return _mm256_fnmadd_ps(a, b, c); }
  static FASTLSTM_ALWAYS_INLINE R abs(R a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
  static FASTLSTM_ALWAYS_INLINE R neg(R a) { return _mm256_xor_ps(_mm256_set1_ps(-0.0f), a); }
  static FASTLSTM_ALWAYS_INLINE R min_keep_nan(R lim, R x) { return _mm256_min_ps(lim, x); }
  static FASTLSTM_ALWAYS_INLINE R max_keep_nan(R lim, R x) { return _mm256_max_ps(lim, x); }
  static FASTLSTM_ALWAYS_INLINE R round(R a) {
    return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  static FASTLSTM_ALWAYS_INLINE R floor(R a) {
    return _mm256_round_ps(a, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  }
  static FASTLSTM_ALWAYS_INLINE R pow2i(R n) {
    __m256i bits = _mm256_castps_si256(_mm256_add_ps(n, _mm256_set1_ps(0x1.8p23f + 127.0f)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(bits, 23));
  }
  static FASTLSTM_ALWAYS_INLINE R select_neg(R x, R if_neg, R otherwise) {
    return _mm256_blendv_ps(otherwise, if_neg, _mm256_cmp_ps(x, zero(), _CMP_LT_OQ));
  }
  static FASTLSTM_ALWAYS_INLINE R copysign(R mag, R sgn) {
    R m = _mm256_set1_ps(-0.0f);
    return _mm256_or_ps(_mm256_andnot_ps(m, mag), _mm256_and_ps(m, sgn));
  }
};

struct VD {
  using T = double;
  using R = __m256d;
  static constexpr int W = 4;
  static constexpr bool kTranspose = false;  // (double weights are packed element by element)
  static FASTLSTM_ALWAYS_INLINE R zero() { return _mm256_setzero_pd(); }
  static FASTLSTM_ALWAYS_INLINE R set1(T v) { return _mm256_set1_pd(v); }
  static FASTLSTM_ALWAYS_INLINE R load(const T* p) { return _mm256_loadu_pd(p); }
  static FASTLSTM_ALWAYS_INLINE void store(T* p, R v) { _mm256_storeu_pd(p, v); }
  static FASTLSTM_ALWAYS_INLINE __m256i mask(int n) {
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
  }
  static FASTLSTM_ALWAYS_INLINE R load_n(const T* p, int n) { return _mm256_maskload_pd(p, mask(n)); }
  static FASTLSTM_ALWAYS_INLINE void store_n(T* p, R v, int n) { _mm256_maskstore_pd(p, mask(n), v); }
  static FASTLSTM_ALWAYS_INLINE void add_f64(double* p, R v) { _mm256_storeu_pd(p, _mm256_add_pd(_mm256_loadu_pd(p), v)); }
  static FASTLSTM_ALWAYS_INLINE R add(R a, R b) { return _mm256_add_pd(a, b); }
  static FASTLSTM_ALWAYS_INLINE R sub(R a, R b) { return _mm256_sub_pd(a, b); }
  static FASTLSTM_ALWAYS_INLINE R mul(R a, R b) { return _mm256_mul_pd(a, b); }
  static FASTLSTM_ALWAYS_INLINE R div(R a, R b) { return _mm256_div_pd(a, b); }
  static FASTLSTM_ALWAYS_INLINE R fma(R a, R b, R c) { return _mm256_fmadd_pd(a, b, c); }
  static FASTLSTM_ALWAYS_INLINE R fnma(R a, R b, R c) { return _mm256_fnmadd_pd(a, b, c); }
  static FASTLSTM_ALWAYS_INLINE R abs(R a) { return _mm256_andnot_pd(_mm256_set1_pd(-0.0), a); }
  static FASTLSTM_ALWAYS_INLINE R neg(R a) { return _mm256_xor_pd(_mm256_set1_pd(-0.0), a); }
  static FASTLSTM_ALWAYS_INLINE R min_keep_nan(R lim, R x) { return _mm256_min_pd(lim, x); }
  static FASTLSTM_ALWAYS_INLINE R max_keep_nan(R lim, R x) { return _mm256_max_pd(lim, x); }
  static FASTLSTM_ALWAYS_INLINE R round(R a) {
    return _mm256_round_pd(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  static FASTLSTM_ALWAYS_INLINE R floor(R a) {
    return _mm256_round_pd(a, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  }
  static FASTLSTM_ALWAYS_INLINE R pow2i(R n) {
    __m256i bits = _mm256_castpd_si256(_mm256_add_pd(n, _mm256_set1_pd(0x1.8p52 + 1023.0)));
    return _mm256_castsi256_pd(_mm256_slli_epi64(bits, 52));
  }
  static FASTLSTM_ALWAYS_INLINE R select_neg(R x, R if_neg, R otherwise) {
    return _mm256_blendv_pd(otherwise, if_neg, _mm256_cmp_pd(x, zero(), _CMP_LT_OQ));
  }
  static FASTLSTM_ALWAYS_INLINE R copysign(R mag, R sgn) {
    R m = _mm256_set1_pd(-0.0);
    return _mm256_or_pd(_mm256_andnot_pd(m, mag), _mm256_and_pd(m, sgn));
  }
};

// rows of the micro-kernel: 2 rows x 4 vectors = 8 accumulators, + 4 weight vectors (of 16 ymm)
constexpr int kMR = 2;
