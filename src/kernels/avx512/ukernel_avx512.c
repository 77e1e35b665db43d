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
 *            polynomial, vrndscaleps rounding and vscalefps (0 below 2^−125.5).
 *   pv       acc = α·acc + P·V: 12×32 register block over 32-column panels of V (Dv padded to 32).
 *   decode   direct forms on 16 lanes: K and V read in place (narrow types widened in registers,
 *            the AVX2 set's conversions on 16 lanes), S = Qs·Kᵀ two keys × up to four rows per
 *            pass, P·V in 64-column blocks (16 accumulators for four rows; the AVX2 forms' 16
 *            columns took ~1.1× the time on one thread, fp32, bf16 and E4M3 alike).
 * The rest is the AVX2 set's (every AVX-512 CPU has AVX2): K packing (panel width 32) and the
 * masked P·V (scalar, bitwise the fast one's result when V is finite); the decode forms need
 * bc = 128, so the tiles are the AVX2 set's: 96 query rows × 128 keys.
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

/* One register block of S = Q·Kᵀ: R rows (12, or 4 for the last rows) × 16·H columns (H = 2, or 1
 * for a last panel whose keys fill at most its first half). a points at the block's first row in
 * its Q panel (a row's D values MR floats apart), b at the K panel [D, 32]; R and H are constants
 * after inlining, each S element is the same chain of FMAs over d in every form. */
static inline __attribute__((always_inline)) void qk_block(int R, int H, const float *a,
                                                           const float *b, int64_t D, float *s) {
  __m512 acc[MR][2];
#pragma GCC unroll 12
  for (int r = 0; r < R; r++) {
#pragma GCC unroll 2
    for (int h = 0; h < H; h++)
      acc[r][h] = _mm512_setzero_ps();
  }
  for (int64_t d = 0; d < D; d++, a += MR, b += NR) {
    __m512 bv[2];
#pragma GCC unroll 2
    for (int h = 0; h < H; h++)
      bv[h] = _mm512_load_ps(b + 16 * h);
#pragma GCC unroll 12
    for (int r = 0; r < R; r++) {
      const __m512 x = _mm512_set1_ps(a[r]);
#pragma GCC unroll 2
      for (int h = 0; h < H; h++)
        acc[r][h] = _mm512_fmadd_ps(x, bv[h], acc[r][h]);
    }
  }
#pragma GCC unroll 12
  for (int r = 0; r < R; r++) {
#pragma GCC unroll 2
    for (int h = 0; h < H; h++)
      _mm512_store_ps(s + r * BC + 16 * h, acc[r][h]);
  }
}

/* S [rows_p, BC] = Q · Kᵀ from Qp and Kp over the 32-key panels that hold the cols keys: 12 rows
 * × 32 columns per register block, the last rows (rows_p a multiple of 4, not of 12) in blocks of
 * 4; a last panel with at most 16 keys on 16 columns only (the other 16 are the driver's, −inf). */
static void qk_avx512(const float *qp, const float *kp, int rows_p, int cols, int64_t D, float *s) {
  const int cols_p = (int)attn__round_up(cols, NR);
  for (int c0 = 0; c0 < cols_p; c0 += NR) {
    const int half = cols - c0 <= 16;
    const float *b = kp + (int64_t)c0 * D;
    int r0 = 0;
    for (; r0 + MR <= rows_p; r0 += MR) {
      const float *a = qp + (int64_t)r0 * D;
      if (half)
        qk_block(MR, 1, a, b, D, s + r0 * BC + c0);
      else
        qk_block(MR, 2, a, b, D, s + r0 * BC + c0);
    }
    for (int r = r0; r < rows_p; r += 4) { /* rows r0 .. of the last (partial) Q panel */
      const float *a = qp + (int64_t)r0 * D + (r - r0);
      if (half)
        qk_block(4, 1, a, b, D, s + r * BC + c0);
      else
        qk_block(4, 2, a, b, D, s + r * BC + c0);
    }
  }
}

/* 2^t for t ≤ 12 (or −inf; the softmax passes t ≤ ATTN__SOFTMAX_SLACK·log2 e ≈ 11.5): n = t
 * rounded to the nearest integer (ties to even), f = t − n in [−1/2, 1/2], 2^f from the Cephes
 * exp2f polynomial, then vscalefps multiplies by 2^n exactly — the AVX2 set's exp2_ps (which
 * rounds with a magic addition and builds 2^(n−1) in integer lanes) in 10 operations instead of 13
 * (the softmax's exp pass on a 96 × 128 tile 2.85 → 2.49 µs on the Zen 4); the same bits except
 * at t an odd multiple of 1/2, where the two round n differently (both within the bound). +0 where
 * t < −125.5 or t = −inf (the masked lanes: never a subnormal), NaN for NaN (the compare keeps
 * unordered lanes). */
static inline __m512 exp2_ps512(__m512 t) {
  const __mmask16 keep = _mm512_cmp_ps_mask(t, _mm512_set1_ps(-125.5f), _CMP_NLT_UQ);
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 p = _mm512_set1_ps(1.535336188319500e-4f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.339887440266574e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618437357674640e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550332471162809e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402264791363012e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931472028550421e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_maskz_scalef_ps(keep, p, n);
}

/* The 16 lane sums of v[0..15] in one vector: lane i = Σ v[i] (a fixed tree: within 128-bit
 * lanes by unpack and shuffle, then across them). */
static inline __m512 sum16_ps512(const __m512 v[16]) {
  __m512 q[4];
  for (int k = 0; k < 4; k++) { /* lane L of q[k]: rows 4k..4k+3, summed over lane L of each */
    const __m512 *w = v + 4 * k;
    const __m512 a = _mm512_add_ps(_mm512_unpacklo_ps(w[0], w[1]), _mm512_unpackhi_ps(w[0], w[1]));
    const __m512 b = _mm512_add_ps(_mm512_unpacklo_ps(w[2], w[3]), _mm512_unpackhi_ps(w[2], w[3]));
    q[k] = _mm512_add_ps(_mm512_shuffle_ps(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_ps(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
  }
  const __m512 r01 = _mm512_add_ps(_mm512_shuffle_f32x4(q[0], q[1], _MM_SHUFFLE(1, 0, 1, 0)),
                                   _mm512_shuffle_f32x4(q[0], q[1], _MM_SHUFFLE(3, 2, 3, 2)));
  const __m512 r23 = _mm512_add_ps(_mm512_shuffle_f32x4(q[2], q[3], _MM_SHUFFLE(1, 0, 1, 0)),
                                   _mm512_shuffle_f32x4(q[2], q[3], _MM_SHUFFLE(3, 2, 3, 2)));
  return _mm512_add_ps(_mm512_shuffle_f32x4(r01, r23, _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(r01, r23, _MM_SHUFFLE(3, 1, 3, 1)));
}

/* tiled.h's softmax. A row whose running maximum m_old is finite keeps it as the reference while
 * no score of the tile exceeds m_old + ATTN__SOFTMAX_SLACK (a vector compare of the row's maximum
 * lanes, no reduction): P = exp(S − m_old), α = 1. Otherwise (the row's first visible tile, a
 * larger score, inf or NaN) the reference is the new maximum and α rescales, as in the scalar
 * rule. NaN scores pass the maximum (max(x, mx) keeps mx) and reach the sum, which
 * attn__softmax_vector_done turns into a NaN row. Rows go in groups of 16 whose lane sums are
 * reduced together (sum16_ps512) after the group's exp passes: one row's horizontal sum was a
 * latency chain that held its l update (a third of this function's samples). */
static void softmax_avx512(float *s, int rows, int cols, float *m, float *l, float *alpha) {
  const int cols_p = (int)attn__round_up(cols, NR); /* padding columns hold −inf */
  const __m512 log2e = _mm512_set1_ps(0x1.715476p+0f);
  for (int r0 = 0; r0 < rows; r0 += 16) {
    const int g = rows - r0 < 16 ? rows - r0 : 16;
    __m512 sums[16]; /* lane sums of the group's vector-path rows, zeros elsewhere */
    float m_old[16], m_ref[16];
    unsigned vector_rows = 0;
    for (int i = 0; i < 16; i++) {
      sums[i] = _mm512_setzero_ps();
      if (i >= g) continue;
      const int r = r0 + i;
      float *row = s + r * BC;
      __m512 mx0 = _mm512_set1_ps(-INFINITY), mx1 = mx0;
      for (int c = 0; c < cols_p; c += NR) { /* x first: a NaN x leaves mx as it was */
        mx0 = _mm512_max_ps(_mm512_load_ps(row + c), mx0);
        mx1 = _mm512_max_ps(_mm512_load_ps(row + c + 16), mx1);
      }
      const __m512 mx = _mm512_max_ps(mx0, mx1);
      m_old[i] = m_ref[i] = m[r];
      if (!isfinite(m_old[i]) ||
          _mm512_cmp_ps_mask(mx, _mm512_set1_ps(m_old[i] + ATTN__SOFTMAX_SLACK), _CMP_GT_OQ)) {
        if (!attn__softmax_vector_max(_mm512_reduce_max_ps(mx), m_old[i], &m_ref[i])) {
          attn__softmax_row_scalar(row, cols_p, &m[r], &l[r], &alpha[r]);
          continue;
        }
      }
      const __m512 vm = _mm512_set1_ps(m_ref[i]);
      __m512 sum0 = _mm512_setzero_ps(), sum1 = sum0;
      for (int c = 0; c < cols_p; c += NR) {
        const __m512 e0 =
            exp2_ps512(_mm512_mul_ps(_mm512_sub_ps(_mm512_load_ps(row + c), vm), log2e));
        const __m512 e1 =
            exp2_ps512(_mm512_mul_ps(_mm512_sub_ps(_mm512_load_ps(row + c + 16), vm), log2e));
        _mm512_store_ps(row + c, e0), _mm512_store_ps(row + c + 16, e1);
        sum0 = _mm512_add_ps(sum0, e0), sum1 = _mm512_add_ps(sum1, e1);
      }
      sums[i] = _mm512_add_ps(sum0, sum1);
      vector_rows |= 1u << i;
    }
    float sum[16];
    _mm512_storeu_ps(sum, sum16_ps512(sums));
    for (int i = 0; i < g; i++)
      if (vector_rows >> i & 1)
        attn__softmax_vector_done(s + (r0 + i) * BC, cols_p, sum[i], m_old[i], m_ref[i], &m[r0 + i],
                                  &l[r0 + i], &alpha[r0 + i]);
  }
}

/* One register block of acc = α·acc + P·V: R rows (12, or 4 for the last rows) × 32 columns; p
 * at the block's first P row, v at V's row 0 and the block's first column, o at acc. R is a
 * constant after inlining; every form runs acc·α, then one FMA per key in key order. */
static inline __attribute__((always_inline)) void pv_block(int R, const float *p, const float *v,
                                                           int64_t ldv, const float *alpha,
                                                           int cols, int64_t dvp, float *o) {
  __m512 c[MR][2];
#pragma GCC unroll 12
  for (int r = 0; r < R; r++) {
    const __m512 a = _mm512_set1_ps(alpha[r]);
    c[r][0] = _mm512_mul_ps(_mm512_load_ps(o + r * dvp), a);
    c[r][1] = _mm512_mul_ps(_mm512_load_ps(o + r * dvp + 16), a);
  }
  for (int k = 0; k < cols; k++) {
    const float *vr = v + (int64_t)k * ldv;
    const __m512 b0 = _mm512_loadu_ps(vr), b1 = _mm512_loadu_ps(vr + 16);
#pragma GCC unroll 12
    for (int r = 0; r < R; r++) {
      const __m512 x = _mm512_set1_ps(p[r * BC + k]);
      c[r][0] = _mm512_fmadd_ps(x, b0, c[r][0]);
      c[r][1] = _mm512_fmadd_ps(x, b1, c[r][1]);
    }
  }
#pragma GCC unroll 12
  for (int r = 0; r < R; r++) {
    _mm512_store_ps(o + r * dvp, c[r][0]);
    _mm512_store_ps(o + r * dvp + 16, c[r][1]);
  }
}

/* acc [rows_p, dvp] = α·acc + P [rows_p, BC] · V [cols, dvp] (rows ldv apart): 12 rows × 32
 * columns per block, the last rows (rows_p a multiple of 4, not of 12) in blocks of 4; per output
 * element acc·α, then one fused multiply-add per key in key order (pv_masked's sequence). */
static void pv_avx512(const float *p, const float *vs, int64_t ldv, const float *alpha, int rows_p,
                      int cols, int64_t dvp, float *acc) {
  int r0 = 0;
  for (; r0 + MR <= rows_p; r0 += MR)
    for (int64_t d0 = 0; d0 < dvp; d0 += NR)
      pv_block(MR, p + r0 * BC, vs + d0, ldv, alpha + r0, cols, dvp, acc + (int64_t)r0 * dvp + d0);
  for (; r0 < rows_p; r0 += 4)
    for (int64_t d0 = 0; d0 < dvp; d0 += NR)
      pv_block(4, p + r0 * BC, vs + d0, ldv, alpha + r0, cols, dvp, acc + (int64_t)r0 * dvp + d0);
}

/* ---- decode direct forms (K and V read in place; see attn__fwd_ukernel) ---- */

/* 16 values of a narrow type t (a constant after inlining) as floats, exactly: raw holds them in
 * its low 32 bytes (16-bit types) or low 16 bytes (fp8). The AVX2 set's widen8 on 16 lanes (the
 * same operations, so the same bits): fp16 through vcvtph2ps, bf16 as a shift, E5M2 as a half's
 * upper byte, E4M3 as a half of 2^-8 times the value (its NaN given the all-ones exponent). */
static inline __attribute__((always_inline)) __m512 widen16(attn_dtype t, __m512i raw) {
  const __m256i r256 = _mm512_castsi512_si256(raw);
  if (t == ATTN_DTYPE_F16) return _mm512_cvtph_ps(r256);
  if (t == ATTN_DTYPE_BF16)
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(r256), 16));
  const __m256i u = _mm256_slli_epi16(_mm256_cvtepu8_epi16(_mm512_castsi512_si128(raw)), 8);
  if (t == ATTN_DTYPE_F8E5M2) return _mm512_cvtph_ps(u);
  const __m256i h = _mm256_and_si256(_mm256_srai_epi16(u, 1), _mm256_set1_epi16((short)0xbf80));
  const __m256i mag = _mm256_and_si256(h, _mm256_set1_epi16(0x3f80));
  const __m256i nan = _mm256_and_si256(_mm256_cmpeq_epi16(mag, _mm256_set1_epi16(0x3f80)),
                                       _mm256_set1_epi16(0x4000));
  return _mm512_mul_ps(_mm512_cvtph_ps(_mm256_or_si256(h, nan)), _mm512_set1_ps(0x1p8f));
}

/* 16 values of a row of type t from element i on, as floats; only the first n (≤ 16) are read
 * (masked loads suppress faults), the other lanes are 0. */
static inline __attribute__((always_inline)) __m512 load16(attn_dtype t, const void *row, int64_t i,
                                                           int64_t n) {
  const size_t esz = attn__dtype_size(t);
  const char *r = (const char *)row + i * (int64_t)esz;
  if (t == ATTN_DTYPE_F32)
    return n >= 16 ? _mm512_loadu_ps(r) : _mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1u), r);
  if (esz == 2)
    return widen16(t, n >= 16 ? _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)r))
                              : _mm512_maskz_loadu_epi16((__mmask32)((1u << n) - 1u), r));
  return widen16(t, n >= 16 ? _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)r))
                            : _mm512_maskz_loadu_epi8((__mmask64)((1ull << n) - 1u), r));
}

/* widen_rows of contiguous narrow rows of type t (a constant after inlining), 16 values per step,
 * finiteness tracked in the same pass; tails through attn__widen. */
static inline __attribute__((always_inline)) int widen_rows_typed(attn_dtype t, const void *src,
                                                                  int64_t row_stride, int64_t j0,
                                                                  int cols, int64_t n, int64_t ld,
                                                                  float *dst) {
  const __m512i expo = _mm512_set1_epi32(0x7f800000);
  __mmask16 bad = 0;
  int tail_finite = 1;
  const int64_t n16 = n & ~(int64_t)15;
  for (int c = 0; c < cols; c++) {
    const void *row = attn__elem(t, src, (j0 + c) * row_stride);
    float *out = dst + (int64_t)c * ld;
    for (int64_t d = 0; d < n16; d += 16) {
      const __m512 f = load16(t, row, d, 16);
      _mm512_storeu_ps(out + d, f);
      bad |= _mm512_cmpeq_epi32_mask(_mm512_and_si512(_mm512_castps_si512(f), expo), expo);
    }
    if (n16 < n) {
      attn__widen(t, src, (j0 + c) * row_stride + n16, 1, n - n16, out + n16);
      tail_finite &= attn__rows_finite(out + n16, 0, 1, n - n16);
    }
    for (int64_t d = n; d < ld; d++)
      out[d] = 0.0f;
  }
  return tail_finite && bad == 0;
}

/* attn__widen_rows for contiguous narrow rows on 16 lanes (widen16); exact, so bitwise the
 * portable function's result, to which fp32 and strided rows go. */
static int widen_rows_avx512(attn_dtype t, const void *src, int64_t row_stride, int64_t col_stride,
                             int64_t j0, int cols, int64_t n, int64_t ld, float *dst) {
  if (t == ATTN_DTYPE_F32 || col_stride != 1)
    return attn__widen_rows(t, src, row_stride, col_stride, j0, cols, n, ld, dst);
#define ATTN__WIDEN(T) return widen_rows_typed(T, src, row_stride, j0, cols, n, ld, dst)
  ATTN__BY_DTYPE(t, ATTN__WIDEN)
#undef ATTN__WIDEN
}

/* Rows [r, r + R) of the decode qk, R ≤ 4: two keys per pass, K and Q vectors loaded once per
 * step of 16 along D. */
static inline __attribute__((always_inline)) void qk_direct_rows(int R, attn_dtype t,
                                                                 const float *q, const void *k0,
                                                                 const void *k1, int two, int64_t D,
                                                                 float *o) {
  const int64_t D16 = D & ~(int64_t)15;
  __m512 a[4][2];
  for (int i = 0; i < R; i++)
    a[i][0] = a[i][1] = _mm512_setzero_ps();
  for (int64_t d = 0; d < D16; d += 16) {
    const __m512 x0 = load16(t, k0, d, 16), x1 = load16(t, k1, d, 16);
    for (int i = 0; i < R; i++) {
      const __m512 y = _mm512_loadu_ps(q + i * D + d);
      a[i][0] = _mm512_fmadd_ps(y, x0, a[i][0]), a[i][1] = _mm512_fmadd_ps(y, x1, a[i][1]);
    }
  }
  if (D16 < D) {
    const __m512 x0 = load16(t, k0, D16, D - D16), x1 = load16(t, k1, D16, D - D16);
    for (int i = 0; i < R; i++) {
      const __m512 y = load16(ATTN_DTYPE_F32, q + i * D, D16, D - D16);
      a[i][0] = _mm512_fmadd_ps(y, x0, a[i][0]), a[i][1] = _mm512_fmadd_ps(y, x1, a[i][1]);
    }
  }
  for (int i = 0; i < R; i++) {
    o[i * BC] = _mm512_reduce_add_ps(a[i][0]);
    if (two) o[i * BC + 1] = _mm512_reduce_add_ps(a[i][1]);
  }
}

/* The decode qk for K of type t (a constant after inlining); prefetches: see ATTN__DECODE_AHEAD. */
static inline __attribute__((always_inline)) void
qk_direct_typed(attn_dtype t, const float *qs, const void *k, int64_t k_rs, int rows, int cols,
                int64_t D, float *s, attn_dtype vt, const void *v, int64_t v_rs, int64_t Dv) {
  const int64_t k_bytes = D * (int64_t)attn__dtype_size(t);
  const int64_t v_bytes = Dv * (int64_t)attn__dtype_size(vt);
  for (int c = 0; c < cols; c += 2) {
    const int two = c + 1 < cols; /* the pair's second key exists (else key c is read twice) */
    const char *k0 = attn__elem(t, k, c * k_rs), *k1 = two ? attn__elem(t, k0, k_rs) : k0;
    const char *ka = attn__elem(t, k0, ATTN__DECODE_AHEAD * k_rs),
               *kb = attn__elem(t, k0, (ATTN__DECODE_AHEAD + 1) * k_rs);
    attn__prefetch_l2(ka, k_bytes), attn__prefetch_l2(kb, k_bytes);
    attn__prefetch_l2(attn__elem(vt, v, c * v_rs), v_bytes); /* V rows c, c + 1 for pv */
    attn__prefetch_l2(attn__elem(vt, v, (c + two) * v_rs), v_bytes);
    int r = 0;
    for (; r + 4 <= rows; r += 4)
      qk_direct_rows(4, t, qs + (int64_t)r * D, k0, k1, two, D, s + r * BC + c);
    switch (rows - r) {
    case 3:
      qk_direct_rows(3, t, qs + (int64_t)r * D, k0, k1, two, D, s + r * BC + c);
      break;
    case 2:
      qk_direct_rows(2, t, qs + (int64_t)r * D, k0, k1, two, D, s + r * BC + c);
      break;
    case 1:
      qk_direct_rows(1, t, qs + (int64_t)r * D, k0, k1, two, D, s + r * BC + c);
      break;
    default:
      break;
    }
  }
}

/* Decode form of qk on 16 lanes (the AVX2 form's contract; lanes hold partial sums over
 * d ≡ lane (mod 16), reduced in a fixed order). */
static void qk_direct_avx512(const float *qs, attn_dtype kt, const void *k, int64_t k_rs, int rows,
                             int cols, int64_t D, float *s, attn_dtype vt, const void *v,
                             int64_t v_rs, int64_t Dv) {
#define ATTN__QK(T) qk_direct_typed(T, qs, k, k_rs, rows, cols, D, s, vt, v, v_rs, Dv)
  ATTN__BY_DTYPE(kt, ATTN__QK)
#undef ATTN__QK
}

/* Rows [0, R) of the decode pv for the NV·16 columns from v's first (R ≤ 4, NV ≤ 4 constants after
 * inlining; n columns of V exist from there): acc·α, then one FMA per key in key order. Returns
 * the mask of lanes that met a non-finite V value (exponent bits all ones). */
static inline __attribute__((always_inline)) __mmask16
pv_direct_rows(int R, int NV, attn_dtype t, const float *p, const void *v, int64_t v_rs,
               const float *alpha, int cols, int64_t n, int64_t dvp, float *o) {
  const __m512i expo = _mm512_set1_epi32(0x7f800000);
  int64_t nl[4];
  for (int j = 0; j < NV; j++)
    nl[j] = n - 16 * j < 0 ? 0 : n - 16 * j > 16 ? 16 : n - 16 * j;
  __m512 a[4][4];
  for (int i = 0; i < R; i++) {
    const __m512 al = _mm512_set1_ps(alpha[i]);
    for (int j = 0; j < NV; j++)
      a[i][j] = _mm512_mul_ps(_mm512_load_ps(o + i * dvp + 16 * j), al);
  }
  __mmask16 bad = 0;
  for (int c = 0; c < cols; c++) {
    const void *vr = attn__elem(t, v, c * v_rs);
    __m512 x[4];
    for (int j = 0; j < NV; j++) {
      x[j] = load16(t, vr, 16 * j, nl[j]);
      bad |= _mm512_cmpeq_epi32_mask(_mm512_and_si512(_mm512_castps_si512(x[j]), expo), expo);
    }
    for (int i = 0; i < R; i++) {
      const __m512 w = _mm512_set1_ps(p[i * BC + c]);
      for (int j = 0; j < NV; j++)
        a[i][j] = _mm512_fmadd_ps(w, x[j], a[i][j]);
    }
  }
  for (int i = 0; i < R; i++)
    for (int j = 0; j < NV; j++)
      _mm512_store_ps(o + i * dvp + 16 * j, a[i][j]);
  return bad;
}

/* The decode pv for V of type t: column blocks of 64 (16 accumulators for 4 rows), the last of
 * 32 when dvp leaves 32. */
static inline __attribute__((always_inline)) int
pv_direct_typed(attn_dtype t, const float *p, const void *v, int64_t v_rs, const float *alpha,
                int rows, int cols, int64_t Dv, int64_t dvp, float *acc) {
  __mmask16 bad = 0;
  for (int64_t d0 = 0; d0 < dvp; d0 += 64) {
    const int wide = dvp - d0 >= 64;
    for (int r = 0; r < rows; r += 4) {
      const int R = rows - r < 4 ? rows - r : 4;
      const float *pr = p + r * BC, *al = alpha + r;
      const void *vd = attn__elem(t, v, d0);
      float *o = acc + (int64_t)r * dvp + d0;
#define ATTN__PV(RR, NV) bad |= pv_direct_rows(RR, NV, t, pr, vd, v_rs, al, cols, Dv - d0, dvp, o)
      if (wide) {
        if (R == 4)
          ATTN__PV(4, 4);
        else if (R == 3)
          ATTN__PV(3, 4);
        else if (R == 2)
          ATTN__PV(2, 4);
        else
          ATTN__PV(1, 4);
      } else {
        if (R == 4)
          ATTN__PV(4, 2);
        else if (R == 3)
          ATTN__PV(3, 2);
        else if (R == 2)
          ATTN__PV(2, 2);
        else
          ATTN__PV(1, 2);
      }
#undef ATTN__PV
    }
  }
  return bad == 0;
}

/* Decode form of pv on 16 lanes (the AVX2 form's contract: per output element acc·α, then one
 * FMA per key in key order — pv_masked's sequence — and 1 if every V value read was finite). */
static int pv_direct_avx512(const float *p, attn_dtype vt, const void *v, int64_t v_rs,
                            const float *alpha, int rows, int cols, int64_t Dv, int64_t dvp,
                            float *acc) {
#define ATTN__PV(T) return pv_direct_typed(T, p, v, v_rs, alpha, rows, cols, Dv, dvp, acc)
  ATTN__BY_DTYPE(vt, ATTN__PV)
#undef ATTN__PV
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
    qk_direct_avx512,
    pv_direct_avx512,
    widen_rows_avx512,
    4, /* mr_min: blocks of 4 rows end qk and pv */
};

attn_status attn__fwd_f32__avx512(const attn__problem *pr, const void *q, const void *k,
                                  const void *v, float *o, float *lse, float *probs) {
  return attn__fwd_tiled(&attn__ukernel_avx512, pr, q, k, v, o, lse, probs);
}

attn_status attn__scratch_f32__avx512(const attn__problem *pr, int with_probs, size_t *bytes) {
  return attn__scratch_tiled(&attn__ukernel_avx512, pr, with_probs, bytes);
}
