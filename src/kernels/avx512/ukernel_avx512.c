/*
 * ukernel_avx512.c — attn__fwd_f32__avx512: AVX-512 microkernels for the fused tile driver
 * (fwd_tiled.c). Only this file is compiled with -mavx512f -mavx512bw (plus AVX2 and FMA); the
 * kernel table selects it at run time when cpuid and xgetbv report AVX-512 F and BW with OS-saved
 * ZMM state, and AVX2 and FMA (cpu.c).
 *
 *   qk       S = Qs·Kᵀ: 12×32 register block (24 zmm accumulators, 2 B loads, 12 A broadcasts per
 *            step of D: 27 of the 32 registers), K packed transposed in 32-key panels [D, 32].
 *   softmax  the AVX2 set's algorithm on 16 lanes: row max (a NaN score is skipped there and
 *            reaches the row sum instead), P = exp2((S − m)·log2 e) with the Cephes exp2f
 *            polynomial, magic-add rounding and a saturating exponent (0 below 2^−125.5).
 *   pv       acc = α·acc + P·V: 12×32 register block over 32-column panels of V (Dv padded to 32).
 * The rest is the AVX2 set's (every AVX-512 CPU has AVX2): K packing (panel width 32), the masked
 * P·V (scalar, bitwise the fast one's result when V is finite) and the decode direct forms, which
 * need bc = 128 — so the tiles are the AVX2 set's: 96 query rows × 128 keys.
 * Accuracy: exp2 relative error ≤ 1.7e-7 on [−125.5, 0] (tested in test_simd).
 */
#include "../tiled.h"

#include <immintrin.h>
#include <math.h>

enum { BR = 96, BC = 128, MR = 12, NR = 32 };

static int64_t dv_pad32(int64_t dv) { return attn__round_up(dv, NR); }

static void pack_k_panels32(const float *src, int64_t row_stride, int64_t col_stride, int64_t j0,
                            int cols, int64_t D, float *dst) {
  attn__pack_k_panels_avx2(src, row_stride, col_stride, j0, cols, D, dst, NR);
}

/* Qp, micro-panel-major: rows r0..r0+11 form a contiguous [D, 12] block. */
static void pack_q_panels12(const float *qs, int rows_p, int64_t D, float *qp) {
  attn__pack_q_panels_avx2(qs, rows_p, D, qp, MR);
}

/* S [rows_p, BC] = Q · Kᵀ from Qp and Kp: 12 rows × 32 columns per register block. */
static void qk_avx512(const float *qp, const float *kp, int rows_p, int cols, int64_t D, float *s) {
  const int cols_p = (int)attn__round_up(cols, NR);
  for (int c0 = 0; c0 < cols_p; c0 += NR)
    for (int r0 = 0; r0 < rows_p; r0 += MR) {
      const float *a = qp + (int64_t)r0 * D, *b = kp + (int64_t)c0 * D;
      __m512 acc[MR][2];
#pragma GCC unroll 12
      for (int r = 0; r < MR; r++)
        acc[r][0] = acc[r][1] = _mm512_setzero_ps();
      for (int64_t d = 0; d < D; d++, a += MR, b += NR) {
        const __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
#pragma GCC unroll 12
        for (int r = 0; r < MR; r++) {
          const __m512 x = _mm512_set1_ps(a[r]);
          acc[r][0] = _mm512_fmadd_ps(x, b0, acc[r][0]);
          acc[r][1] = _mm512_fmadd_ps(x, b1, acc[r][1]);
        }
      }
#pragma GCC unroll 12
      for (int r = 0; r < MR; r++) {
        _mm512_store_ps(s + (r0 + r) * BC + c0, acc[r][0]);
        _mm512_store_ps(s + (r0 + r) * BC + c0 + 16, acc[r][1]);
      }
    }
}

/* 2^t for t ≤ 0 (or −inf), the AVX2 set's exp2_ps on 16 lanes: 0 where t < −125.5, NaN for NaN. */
static inline __m512 exp2_ps512(__m512 t) {
  const __m512 magic = _mm512_set1_ps(0x1.8p23f + 127.0f);
  const __m512 tc = _mm512_max_ps(_mm512_set1_ps(-127.0f), t); /* NaN t passes through */
  const __m512 y = _mm512_add_ps(tc, magic);
  const __m512 f = _mm512_sub_ps(tc, _mm512_sub_ps(y, magic));
  __m512 p = _mm512_set1_ps(2 * 1.535336188319500e-4f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2 * 1.339887440266574e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2 * 9.618437357674640e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2 * 5.550332471162809e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2 * 2.402264791363012e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2 * 6.931472028550421e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.0f));
  /* y's low 16 bits hold n + 127; the saturating subtraction gives the exponent of 2^(n−1) */
  const __m512i e =
      _mm512_slli_epi32(_mm512_subs_epu16(_mm512_castps_si512(y), _mm512_set1_epi32(1)), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}

static void softmax_avx512(float *s, int rows, int cols, float *m, float *l, float *alpha) {
  const int cols_p = (int)attn__round_up(cols, NR); /* padding columns hold −inf */
  const __m512 log2e = _mm512_set1_ps(0x1.715476p+0f);
  for (int r = 0; r < rows; r++) {
    float *row = s + r * BC;
    __m512 mx0 = _mm512_set1_ps(-INFINITY), mx1 = mx0;
    for (int c = 0; c < cols_p; c += NR) { /* x first: a NaN x leaves mx as it was */
      mx0 = _mm512_max_ps(_mm512_load_ps(row + c), mx0);
      mx1 = _mm512_max_ps(_mm512_load_ps(row + c + 16), mx1);
    }
    const float m_old = m[r];
    float m_new;
    if (!attn__softmax_vector_max(_mm512_reduce_max_ps(_mm512_max_ps(mx0, mx1)), m_old, &m_new)) {
      attn__softmax_row_scalar(row, cols_p, &m[r], &l[r], &alpha[r]);
      continue;
    }
    const __m512 vm = _mm512_set1_ps(m_new);
    __m512 sum0 = _mm512_setzero_ps(), sum1 = sum0;
    for (int c = 0; c < cols_p; c += NR) {
      const __m512 e0 =
          exp2_ps512(_mm512_mul_ps(_mm512_sub_ps(_mm512_load_ps(row + c), vm), log2e));
      const __m512 e1 =
          exp2_ps512(_mm512_mul_ps(_mm512_sub_ps(_mm512_load_ps(row + c + 16), vm), log2e));
      _mm512_store_ps(row + c, e0), _mm512_store_ps(row + c + 16, e1);
      sum0 = _mm512_add_ps(sum0, e0), sum1 = _mm512_add_ps(sum1, e1);
    }
    attn__softmax_vector_done(row, cols_p, _mm512_reduce_add_ps(_mm512_add_ps(sum0, sum1)), m_old,
                              m_new, &m[r], &l[r], &alpha[r]);
  }
}

/* acc [rows_p, dvp] = α·acc + P [rows_p, BC] · V [cols, dvp] (rows ldv apart): 12 rows × 32
 * columns per block; per output element acc·α, then one fused multiply-add per key in key order
 * (pv_masked's sequence). */
static void pv_avx512(const float *p, const float *vs, int64_t ldv, const float *alpha, int rows_p,
                      int cols, int64_t dvp, float *acc) {
  for (int r0 = 0; r0 < rows_p; r0 += MR)
    for (int64_t d0 = 0; d0 < dvp; d0 += NR) {
      float *o = acc + (int64_t)r0 * dvp + d0;
      const float *pp = p + r0 * BC;
      __m512 c[MR][2];
#pragma GCC unroll 12
      for (int r = 0; r < MR; r++) {
        const __m512 a = _mm512_set1_ps(alpha[r0 + r]);
        c[r][0] = _mm512_mul_ps(_mm512_load_ps(o + r * dvp), a);
        c[r][1] = _mm512_mul_ps(_mm512_load_ps(o + r * dvp + 16), a);
      }
      for (int k = 0; k < cols; k++) {
        const float *vr = vs + (int64_t)k * ldv + d0;
        const __m512 b0 = _mm512_loadu_ps(vr), b1 = _mm512_loadu_ps(vr + 16);
#pragma GCC unroll 12
        for (int r = 0; r < MR; r++) {
          const __m512 x = _mm512_set1_ps(pp[r * BC + k]);
          c[r][0] = _mm512_fmadd_ps(x, b0, c[r][0]);
          c[r][1] = _mm512_fmadd_ps(x, b1, c[r][1]);
        }
      }
#pragma GCC unroll 12
      for (int r = 0; r < MR; r++) {
        _mm512_store_ps(o + r * dvp, c[r][0]);
        _mm512_store_ps(o + r * dvp + 16, c[r][1]);
      }
    }
}

void attn__exp2_avx512(const float *t, float *y, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(y + i, exp2_ps512(_mm512_loadu_ps(t + i)));
  if (i < n) {
    const __mmask16 tail = (__mmask16)((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(y + i, tail, exp2_ps512(_mm512_maskz_loadu_ps(tail, t + i)));
  }
}

const attn__fwd_ukernel attn__ukernel_avx512 = {
    BR,
    BC,
    MR,
    NR,
    dv_pad32,
    pack_k_panels32,
    pack_q_panels12,
    qk_avx512,
    softmax_avx512,
    pv_avx512,
    attn__pv_masked_avx2,
    attn__qk_direct_avx2,
    attn__pv_direct_avx2,
    attn__widen_rows_avx2,
};

attn_status attn__fwd_f32__avx512(const attn__problem *pr, const void *q, const void *k,
                                  const void *v, float *o, float *lse, float *probs) {
  return attn__fwd_tiled(&attn__ukernel_avx512, pr, q, k, v, o, lse, probs);
}

attn_status attn__scratch_f32__avx512(const attn__problem *pr, int with_probs, size_t *bytes) {
  return attn__scratch_tiled(&attn__ukernel_avx512, pr, with_probs, bytes);
}
