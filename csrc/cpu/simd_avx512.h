// simd_avx512.h: AVX-512 (F/DQ/BW/VL) vector wrappers with the interface kernels_impl.h expects.
// Included only by isa_avx512.cpp, inside namespace fastlstm::cpu_avx512. One zmm per vector:
// 16 floats or 8 doubles. Tails use masked loads/stores.
#pragma once
#include <immintrin.h>

#define FASTLSTM_ALWAYS_INLINE inline __attribute__((always_inline))

struct VF {
  using T = float;
  using R = __m512;
  static constexpr int W = 16;
  static FASTLSTM_ALWAYS_INLINE R zero() { return _mm512_setzero_ps(); }
  static FASTLSTM_ALWAYS_INLINE R set1(T v) { return _mm512_set1_ps(v); }
  static FASTLSTM_ALWAYS_INLINE R load(const T* p) { return _mm512_loadu_ps(p); }
  static FASTLSTM_ALWAYS_INLINE void store(T* p, R v) { _mm512_storeu_ps(p, v); }
  static FASTLSTM_ALWAYS_INLINE __mmask16 mask(int n) { return static_cast<__mmask16>((1u << n) - 1u); }
  static FASTLSTM_ALWAYS_INLINE R load_n(const T* p, int n) { return _mm512_maskz_loadu_ps(mask(n), p); }
  static FASTLSTM_ALWAYS_INLINE void store_n(T* p, R v, int n) { _mm512_mask_storeu_ps(p, mask(n), v); }
  // p[0..16) += v, widened to double (the bias gradient's running sums)
  static FASTLSTM_ALWAYS_INLINE void add_f64(double* p, R v) {
    _mm512_storeu_pd(p, _mm512_add_pd(_mm512_loadu_pd(p), _mm512_cvtps_pd(_mm512_castps512_ps256(v))));
    _mm512_storeu_pd(p + 8, _mm512_add_pd(_mm512_loadu_pd(p + 8), _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1))));
  }
  // dst[k * ldd + l] = src[l * lds + k] for k, l < 16: one 16 x 16 block transposed (packing W_hh)
  static constexpr bool kTranspose = true;
  static FASTLSTM_ALWAYS_INLINE void transpose(const T* src, int64_t lds, T* dst, int64_t ldd) {
    R r[16], t[16];
    for (int i = 0; i < 16; ++i) r[i] = load(src + i * lds);
    for (int i = 0; i < 16; i += 2) {  // pairs of rows interleaved
      t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
      t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {  // 4 x 4 blocks transposed inside each 128-bit lane
      r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
      r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
      r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
      r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int i = 0; i < 4; ++i) {  // then the 128-bit lanes themselves, in two rounds
      t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
      t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xDD);
      t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
      t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xDD);
    }
    for (int i = 0; i < 8; ++i) {
      r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
      r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
    }
    for (int i = 0; i < 16; ++i) store(dst + i * ldd, r[i]);
  }
  static FASTLSTM_ALWAYS_INLINE R add(R a, R b) { return _mm512_add_ps(a, b); }
  static FASTLSTM_ALWAYS_INLINE R sub(R a, R b) { return _mm512_sub_ps(a, b); }
  static FASTLSTM_ALWAYS_INLINE R mul(R a, R b) { return _mm512_mul_ps(a, b); }
  static FASTLSTM_ALWAYS_INLINE R div(R a, R b) { return _mm512_div_ps(a, b); }
  static FASTLSTM_ALWAYS_INLINE R fma(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }    // a*b+c
  static FASTLSTM_ALWAYS_INLINE R fnma(R a, R b, R c) { return _mm512_fnmadd_ps(a, b, c); }  // c-a*b
  static FASTLSTM_ALWAYS_INLINE R abs(R a) { return _mm512_abs_ps(a); }
  static FASTLSTM_ALWAYS_INLINE R neg(R a) {
    return _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(a), _mm512_set1_epi32(INT32_MIN)));
  }
  // min/max that return x when x is NaN (vminps/vmaxps return the second operand on NaN)
  static FASTLSTM_ALWAYS_INLINE R min_keep_nan(R lim, R x) { return _mm512_min_ps(lim, x); }
  static FASTLSTM_ALWAYS_INLINE R max_keep_nan(R lim, R x) { return _mm512_max_ps(lim, x); }
  static FASTLSTM_ALWAYS_INLINE R round(R a) {
    return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  static FASTLSTM_ALWAYS_INLINE R floor(R a) {
    return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  }
  // 2^n for float vectors holding integers in [-126, 127]
  static FASTLSTM_ALWAYS_INLINE R pow2i(R n) {
    __m512i bits = _mm512_castps_si512(_mm512_add_ps(n, _mm512_set1_ps(0x1.8p23f + 127.0f)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(bits, 23));
  }
  static FASTLSTM_ALWAYS_INLINE R select_neg(R x, R if_neg, R otherwise) {  // x < 0 ? a : b
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, zero(), _CMP_LT_OQ), otherwise, if_neg);
  }
  static FASTLSTM_ALWAYS_INLINE R copysign(R mag, R sgn) {
    __m512i m = _mm512_set1_epi32(INT32_MIN);
    return _mm512_castsi512_ps(_mm512_ternarylogic_epi32(m, _mm512_castps_si512(sgn),
                                                         _mm512_castps_si512(mag), 0xCA));
  }
};

struct VD {
  using T = double;
  using R = __m512d;
  static constexpr int W = 8;
  static constexpr bool kTranspose = false;  // (double weights are packed element by element)
  static FASTLSTM_ALWAYS_INLINE R zero() { return _mm512_setzero_pd(); }
  static FASTLSTM_ALWAYS_INLINE R set1(T v) { return _mm512_set1_pd(v); }
  static FASTLSTM_ALWAYS_INLINE R load(const T* p) { return _mm512_loadu_pd(p); }
  static FASTLSTM_ALWAYS_INLINE void store(T* p, R v) { _mm512_storeu_pd(p, v); }
  static FASTLSTM_ALWAYS_INLINE __mmask8 mask(int n) { return static_cast<__mmask8>((1u << n) - 1u); }
  static FASTLSTM_ALWAYS_INLINE R load_n(const T* p, int n) { return _mm512_maskz_loadu_pd(mask(n), p); }
  static FASTLSTM_ALWAYS_INLINE void store_n(T* p, R v, int n) { _mm512_mask_storeu_pd(p, mask(n), v); }
  static FASTLSTM_ALWAYS_INLINE void add_f64(double* p, R v) { _mm512_storeu_pd(p, _mm512_add_pd(_mm512_loadu_pd(p), v)); }
  static FASTLSTM_ALWAYS_INLINE R add(R a, R b) { return _mm512_add_pd(a, b); }
  static FASTLSTM_ALWAYS_INLINE R sub(R a, R b) { return _mm512_sub_pd(a, b); }
  static FASTLSTM_ALWAYS_INLINE R mul(R a, R b) { return _mm512_mul_pd(a, b); }
  static FASTLSTM_ALWAYS_INLINE R div(R a, R b) { return _mm512_div_pd(a, b); }
  static FASTLSTM_ALWAYS_INLINE R fma(R a, R b, R c) { return _mm512_fmadd_pd(a, b, c); }
  static FASTLSTM_ALWAYS_INLINE R fnma(R a, R b, R c) { return _mm512_fnmadd_pd(a, b, c); }
  static FASTLSTM_ALWAYS_INLINE R abs(R a) { return _mm512_abs_pd(a); }
  static FASTLSTM_ALWAYS_INLINE R neg(R a) {
    return _mm512_castsi512_pd(_mm512_xor_si512(_mm512_castpd_si512(a), _mm512_set1_epi64(INT64_MIN)));
  }
  static FASTLSTM_ALWAYS_INLINE R min_keep_nan(R lim, R x) { return _mm512_min_pd(lim, x); }
  static FASTLSTM_ALWAYS_INLINE R max_keep_nan(R lim, R x) { return _mm512_max_pd(lim, x); }
  static FASTLSTM_ALWAYS_INLINE R round(R a) {
    return _mm512_roundscale_pd(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  static FASTLSTM_ALWAYS_INLINE R floor(R a) {
    return _mm512_roundscale_pd(a, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  }
  // 2^n for double vectors holding integers in [-1022, 1023]
  static FASTLSTM_ALWAYS_INLINE R pow2i(R n) {
    __m512i bits = _mm512_castpd_si512(_mm512_add_pd(n, _mm512_set1_pd(0x1.8p52 + 1023.0)));
    return _mm512_castsi512_pd(_mm512_slli_epi64(bits, 52));
  }
  static FASTLSTM_ALWAYS_INLINE R select_neg(R x, R if_neg, R otherwise) {
    return _mm512_mask_blend_pd(_mm512_cmp_pd_mask(x, zero(), _CMP_LT_OQ), otherwise, if_neg);
  }
  static FASTLSTM_ALWAYS_INLINE R copysign(R mag, R sgn) {
    __m512i m = _mm512_set1_epi64(INT64_MIN);
    return _mm512_castsi512_pd(_mm512_ternarylogic_epi64(m, _mm512_castpd_si512(sgn),
                                                         _mm512_castpd_si512(mag), 0xCA));
  }
};

// rows of the register-blocked micro-kernel: MR rows x 4 vectors of accumulators (24 of 32 zmm)
constexpr int kMR = 6;
