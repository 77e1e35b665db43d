/*
 * ukernel_avx2.c — attn__fwd_f32__avx2: AVX2 + FMA microkernels for the fused tile driver
 * (fwd_tiled.c). Only this file is compiled with -mavx2 -mfma; the kernel table selects it at run
 * time when cpuid and xgetbv report AVX2, FMA and OS-saved YMM state (cpu.c).
 *
 *   qk       S = Qs·Kᵀ: 6×16 register block (12 ymm accumulators, 2 B loads, 6 A broadcasts per
 *            step of D), K packed transposed [D, 128] so a 16-key panel is one 64-byte row per d.
 *   softmax  vector row max (NaN tracked), P = exp2((S − m)·log2 e) with the Cephes exp2f
 *            polynomial and exponent insertion, row sums reduced in a fixed order.
 *   pv       acc = α·acc + P·V: 6×16 register block over 16-column panels of V (Dv padded to 16),
 *            α applied when the accumulators are loaded.
 * Tiles: 96 query rows × 128 keys (S tile 48 KiB, K/V panels ≤ 64 KiB at D = 128: L2-resident).
 * Accuracy: exp2 relative error ≤ 1.7e-7 on [−125.5, 0] (Cephes exp2f.c; tested in test_simd);
 * results below 2^−125.5 are flushed to 0 (weights under 2e-38 of the row maximum).
 * The AVX-512 set (avx512/ukernel_avx512.c) shares this file's K packing, masked P·V and decode
 * direct forms (exported below as attn__*_avx2).
 */
#include "../tiled.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

enum { BR = 96, BC = 128, MR = 6, NR = 16 };

static int64_t dv_pad16(int64_t dv) { return attn__round_up(dv, NR); }

/* Transposes the 8×8 block at src (row stride ld_src) into dst (row stride ld_dst). */
static inline void transpose8(const float *src, int64_t ld_src, float *dst, int64_t ld_dst) {
  __m256 r0 = _mm256_loadu_ps(src), r1 = _mm256_loadu_ps(src + ld_src),
         r2 = _mm256_loadu_ps(src + 2 * ld_src), r3 = _mm256_loadu_ps(src + 3 * ld_src),
         r4 = _mm256_loadu_ps(src + 4 * ld_src), r5 = _mm256_loadu_ps(src + 5 * ld_src),
         r6 = _mm256_loadu_ps(src + 6 * ld_src), r7 = _mm256_loadu_ps(src + 7 * ld_src);
  __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1),
         t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3),
         t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5),
         t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xee),
         u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xee),
         u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xee),
         u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xee);
  _mm256_store_ps(dst, _mm256_permute2f128_ps(u0, u4, 0x20));
  _mm256_store_ps(dst + ld_dst, _mm256_permute2f128_ps(u1, u5, 0x20));
  _mm256_store_ps(dst + 2 * ld_dst, _mm256_permute2f128_ps(u2, u6, 0x20));
  _mm256_store_ps(dst + 3 * ld_dst, _mm256_permute2f128_ps(u3, u7, 0x20));
  _mm256_store_ps(dst + 4 * ld_dst, _mm256_permute2f128_ps(u0, u4, 0x31));
  _mm256_store_ps(dst + 5 * ld_dst, _mm256_permute2f128_ps(u1, u5, 0x31));
  _mm256_store_ps(dst + 6 * ld_dst, _mm256_permute2f128_ps(u2, u6, 0x31));
  _mm256_store_ps(dst + 7 * ld_dst, _mm256_permute2f128_ps(u3, u7, 0x31));
}

/* Kp, panel-major with panels of w keys (a multiple of 8): panel c/w is a contiguous [D, w] block,
 * Kp[(c/w)·w·D + d·w + c%w] = K[j0 + c][d]; columns [cols, round_up(cols, w)) zero. Contiguous
 * rows go through 8×8 register transposes; the rest element by element. */
void attn__pack_k_panels_avx2(const float *src, int64_t row_stride, int64_t col_stride, int64_t j0,
                              int cols, int64_t D, float *dst, int w) {
  const int cols_p = (int)attn__round_up(cols, w);
#define ATTN__KP(c, d) dst[(int64_t)((c) / w) * w * D + (d)*w + (c) % w]
  if (cols < cols_p) { /* the padding, first: columns from the last block of 8 that cols reaches
                          to the end of the last panel, for every d (the keys' values then
                          overwrite the block's first columns) */
    const int z0 = (cols & ~7) % w;
    float *last = dst + (int64_t)(cols / w) * w * D;
    for (int64_t d = 0; d < D; d++)
      for (int cc = z0; cc < w; cc += 8)
        _mm256_storeu_ps(last + d * w + cc, _mm256_setzero_ps());
  }
  int c = 0;
  int64_t d8 = 0;
  if (col_stride == 1) {
    d8 = D & ~(int64_t)7;
    for (; c + 8 <= cols; c += 8)
      for (int64_t d = 0; d < d8; d += 8)
        transpose8(src + (j0 + c) * row_stride + d, row_stride, &ATTN__KP(c, d), w);
  }
  for (int cc = 0; cc < cols; cc++) { /* whatever the blocks did not cover */
    const float *row = src + (j0 + cc) * row_stride;
    for (int64_t d = cc < c ? d8 : 0; d < D; d++)
      ATTN__KP(cc, d) = row[d * col_stride];
  }
#undef ATTN__KP
}

static void pack_k_panels(const float *src, int64_t row_stride, int64_t col_stride, int64_t j0,
                          int cols, int64_t D, float *dst) {
  attn__pack_k_panels_avx2(src, row_stride, col_stride, j0, cols, D, dst, NR);
}

/* 8 values of a narrow type t (a constant after inlining) as floats, exactly: `raw` holds them in
 * its low 16 bytes (16-bit types) or low 8 bytes (fp8). fp16 through F16C's vcvtph2ps, bf16 as a
 * 16-bit shift; fp8 through the half as convert.c does it — E5M2 is a half's upper byte; E4M3's
 * magnitude moved up 7 bits is a half of 2^-8 times the value (its NaN, magnitude 0x7f, given the
 * half's all-ones exponent), then multiplied by 2^8 — so the bits equal attn__widen's. */
static inline __attribute__((always_inline)) __m256 widen8(attn_dtype t, __m128i raw) {
  if (t == ATTN_DTYPE_F16) return _mm256_cvtph_ps(raw);
  if (t == ATTN_DTYPE_BF16)
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
  if (t == ATTN_DTYPE_F8E5M2) return _mm256_cvtph_ps(_mm_unpacklo_epi8(_mm_setzero_si128(), raw));
  /* E4M3: u = byte << 8; an arithmetic shift right by 1 puts the magnitude at bits 7..13 and
   * copies the sign into bits 15 and 14, bit 14 then cleared; the NaN magnitude (0x3f80 there)
   * gets bit 14 back, the half's all-ones exponent. */
  const __m128i u = _mm_unpacklo_epi8(_mm_setzero_si128(), raw);
  const __m128i h = _mm_and_si128(_mm_srai_epi16(u, 1), _mm_set1_epi16((short)0xbf80));
  const __m128i mag = _mm_and_si128(h, _mm_set1_epi16(0x3f80));
  const __m128i nan =
      _mm_and_si128(_mm_cmpeq_epi16(mag, _mm_set1_epi16(0x3f80)), _mm_set1_epi16(0x4000));
  return _mm256_mul_ps(_mm256_cvtph_ps(_mm_or_si128(h, nan)), _mm256_set1_ps(0x1p8f));
}

/* 8 elements of a narrow type t from p: 16 bytes, or 8 for fp8. */
static inline __attribute__((always_inline)) __m128i load_raw8(attn_dtype t, const void *p) {
  return attn__dtype_size(t) == 1 ? _mm_loadl_epi64((const __m128i *)p)
                                  : _mm_loadu_si128((const __m128i *)p);
}

/* widen_rows of contiguous narrow rows of type t (a constant after inlining), 8 values per step;
 * finiteness tracked in the same pass (exponent bits all ones). */
static inline __attribute__((always_inline)) int widen_rows_typed(attn_dtype t, const void *src,
                                                                  int64_t row_stride, int64_t j0,
                                                                  int cols, int64_t n, int64_t ld,
                                                                  float *dst) {
  const __m256i expo = _mm256_set1_epi32(0x7f800000);
  const int64_t esz = (int64_t)attn__dtype_size(t);
  __m256i bad = _mm256_setzero_si256();
  int tail_finite = 1;
  const int64_t n8 = n & ~(int64_t)7;
  for (int c = 0; c < cols; c++) {
    const char *row = (const char *)src + (j0 + c) * row_stride * esz;
    float *out = dst + (int64_t)c * ld;
    for (int64_t d = 0; d < n8; d += 8) {
      const __m256 f = widen8(t, load_raw8(t, row + d * esz));
      _mm256_storeu_ps(out + d, f);
      bad = _mm256_or_si256(
          bad, _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_castps_si256(f), expo), expo));
    }
    if (n8 < n) {
      attn__widen(t, src, (j0 + c) * row_stride + n8, 1, n - n8, out + n8);
      tail_finite &= attn__rows_finite(out + n8, 0, 1, n - n8);
    }
    for (int64_t d = n; d < ld; d++)
      out[d] = 0.0f;
  }
  return tail_finite && _mm256_testz_si256(bad, bad);
}

/* attn__widen_rows for contiguous narrow rows (16-bit or fp8), in vectors (widen8). Exact, so
 * bitwise the portable function's result, to which fp32 and strided rows go. */
int attn__widen_rows_avx2(attn_dtype t, const void *src, int64_t row_stride, int64_t col_stride,
                          int64_t j0, int cols, int64_t n, int64_t ld, float *dst) {
  switch (col_stride == 1 ? t : ATTN_DTYPE_F32) {
  case ATTN_DTYPE_F16:
    return widen_rows_typed(ATTN_DTYPE_F16, src, row_stride, j0, cols, n, ld, dst);
  case ATTN_DTYPE_BF16:
    return widen_rows_typed(ATTN_DTYPE_BF16, src, row_stride, j0, cols, n, ld, dst);
  case ATTN_DTYPE_F8E4M3:
    return widen_rows_typed(ATTN_DTYPE_F8E4M3, src, row_stride, j0, cols, n, ld, dst);
  case ATTN_DTYPE_F8E5M2:
    return widen_rows_typed(ATTN_DTYPE_F8E5M2, src, row_stride, j0, cols, n, ld, dst);
  default:
    return attn__widen_rows(t, src, row_stride, col_stride, j0, cols, n, ld, dst);
  }
}

/* Qp, micro-panel-major: rows r0..r0+mr-1 form a contiguous [D, mr] block, so the mr broadcasts
 * of one step of d read consecutive bytes (rows_p a multiple of mr). */
void attn__pack_q_panels_avx2(const float *qs, int rows_p, int64_t D, float *qp, int mr) {
  const int64_t d8 = D & ~(int64_t)7;
  for (int r0 = 0; r0 < rows_p; r0 += mr) {
    const float *src = qs + (int64_t)r0 * D;
    float *dst = qp + (int64_t)r0 * D;
    int g = 0;
    for (; g + 4 <= mr; g += 4) /* rows g..g+3, 8 columns at a time: two 4×4 transposes */
      for (int64_t d = 0; d < d8; d += 8) {
        const float *a = src + g * D + d;
        const __m256 r0v = _mm256_loadu_ps(a), r1v = _mm256_loadu_ps(a + D),
                     r2v = _mm256_loadu_ps(a + 2 * D), r3v = _mm256_loadu_ps(a + 3 * D);
        const __m256 t0 = _mm256_unpacklo_ps(r0v, r1v), t1 = _mm256_unpackhi_ps(r0v, r1v),
                     t2 = _mm256_unpacklo_ps(r2v, r3v), t3 = _mm256_unpackhi_ps(r2v, r3v);
        const __m256 u[4] = {_mm256_shuffle_ps(t0, t2, 0x44), _mm256_shuffle_ps(t0, t2, 0xee),
                             _mm256_shuffle_ps(t1, t3, 0x44), _mm256_shuffle_ps(t1, t3, 0xee)};
        for (int k = 0; k < 4; k++) { /* u[k] holds column d + k, then d + 4 + k, of the 4 rows */
          _mm_storeu_ps(dst + (d + k) * mr + g, _mm256_castps256_ps128(u[k]));
          _mm_storeu_ps(dst + (d + 4 + k) * mr + g, _mm256_extractf128_ps(u[k], 1));
        }
      }
    for (int64_t d = 0; d < D; d++) /* rows past the groups of 4, columns past the blocks of 8 */
      for (int r = d < d8 ? g : 0; r < mr; r++)
        dst[d * mr + r] = src[(int64_t)r * D + d];
  }
}

static void pack_q_panels(const float *qs, int rows_p, int64_t D, float *qp) {
  attn__pack_q_panels_avx2(qs, rows_p, D, qp, MR);
}

/* S [rows_p, BC] = Q · Kᵀ from Qp and Kp: 6 rows × 16 columns per register block, both operands
 * read as contiguous streams (the 16-key panel, 4–8 KiB, stays in L1 across the row groups). */
static void qk_avx2(const float *qp, const float *kp, int rows_p, int cols, int64_t D, float *s) {
  const int cols_p = (int)attn__round_up(cols, NR);
  for (int c0 = 0; c0 < cols_p; c0 += NR)
    for (int r0 = 0; r0 < rows_p; r0 += MR) {
      const float *a = qp + (int64_t)r0 * D, *b = kp + (int64_t)c0 * D;
      __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
      __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
      for (int64_t d = 0; d < D; d++, a += MR, b += NR) {
        const __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
        __m256 x;
#define ATTN__ROW(r)                                                                               \
  x = _mm256_broadcast_ss(a + (r));                                                                \
  c##r##0 = _mm256_fmadd_ps(x, b0, c##r##0);                                                       \
  c##r##1 = _mm256_fmadd_ps(x, b1, c##r##1);
        // clang-format off
        ATTN__ROW(0) ATTN__ROW(1) ATTN__ROW(2) ATTN__ROW(3) ATTN__ROW(4) ATTN__ROW(5)
        // clang-format on
#undef ATTN__ROW
      }
      float *o = s + r0 * BC + c0;
      _mm256_store_ps(o, c00), _mm256_store_ps(o + 8, c01);
      _mm256_store_ps(o + BC, c10), _mm256_store_ps(o + BC + 8, c11);
      _mm256_store_ps(o + 2 * BC, c20), _mm256_store_ps(o + 2 * BC + 8, c21);
      _mm256_store_ps(o + 3 * BC, c30), _mm256_store_ps(o + 3 * BC + 8, c31);
      _mm256_store_ps(o + 4 * BC, c40), _mm256_store_ps(o + 4 * BC + 8, c41);
      _mm256_store_ps(o + 5 * BC, c50), _mm256_store_ps(o + 5 * BC + 8, c51);
    }
}

/* 2^t for t ≤ 12 (or −inf; the softmax passes t ≤ ATTN__SOFTMAX_SLACK·log2 e ≈ 11.5); 0 where
 * t < −125.5 (so never a subnormal); NaN for NaN. Range
 * reduction t = n + f, |f| ≤ ½, with n rounded to nearest by adding 1.5·2^23 + 127 (the sum's low
 * bits are then n + 127, the biased exponent of 2^n); 2^f = 1 + f·P(f) with the degree-5 minimax
 * P of Cephes exp2f.c (peak relative error 1.7e-7). The result is (2·2^f)·2^(n−1): the exponent
 * n + 126 comes from a saturating 16-bit subtraction, which is 0 — a zero result — for n ≤ −126 (t
 * < −125.5) with no compare, and doubling the coefficients is exact. The clamp keeps t as its
 * second operand, so a NaN passes through to the result. */
static inline __m256 exp2_ps(__m256 t) {
  const __m256 magic = _mm256_set1_ps(0x1.8p23f + 127.0f);
  const __m256 tc = _mm256_max_ps(_mm256_set1_ps(-127.0f), t);
  const __m256 y = _mm256_add_ps(tc, magic);
  const __m256 f = _mm256_sub_ps(tc, _mm256_sub_ps(y, magic));
  __m256 p = _mm256_set1_ps(2 * 1.535336188319500e-4f);
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2 * 1.339887440266574e-3f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2 * 9.618437357674640e-3f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2 * 5.550332471162809e-2f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2 * 2.402264791363012e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2 * 6.931472028550421e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.0f));
  /* y's low 16 bits hold n + 127 (its high half is 0x4B40 and shifts out) */
  const __m256i e =
      _mm256_slli_epi32(_mm256_subs_epu16(_mm256_castps_si256(y), _mm256_set1_epi32(1)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/* Horizontal sum and max in a fixed order: ((v0+v4)+(v2+v6)) + ((v1+v5)+(v3+v7)). */
static inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

static inline float hmax8(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

/* The 8 lane sums of v[0..7] in one vector: lane i = Σ v[i] (a fixed tree: within 128-bit lanes
 * by unpack and shuffle, then the two halves). */
static inline __m256 sum8_ps(const __m256 v[8]) {
  __m256 q[2];
  for (int k = 0; k < 2; k++) { /* half H of q[k]: rows 4k..4k+3, summed over half H of each */
    const __m256 *w = v + 4 * k;
    const __m256 a = _mm256_add_ps(_mm256_unpacklo_ps(w[0], w[1]), _mm256_unpackhi_ps(w[0], w[1]));
    const __m256 b = _mm256_add_ps(_mm256_unpacklo_ps(w[2], w[3]), _mm256_unpackhi_ps(w[2], w[3]));
    q[k] = _mm256_add_ps(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
  }
  return _mm256_add_ps(_mm256_permute2f128_ps(q[0], q[1], 0x20),
                       _mm256_permute2f128_ps(q[0], q[1], 0x31));
}

/* Per row: the maximum lanes in one pass (loads and vmax only: a NaN score is skipped there);
 * a row whose running maximum m_old is finite keeps it as the reference while no lane exceeds
 * m_old + ATTN__SOFTMAX_SLACK (α = 1; tiled.h), else the reference is the new maximum (the row's
 * first visible tile, a larger score, inf: the scalar rule for a maximum that is not finite);
 * then P = exp2((S − m)·log2 e) and the row sum, 16 scores per step in two chains. A visible NaN
 * reaches the sum (exp2_ps passes it through; with m finite nothing else can make the sum NaN),
 * and the row then takes the state the scalar rule gives it: m, l, α and P all NaN. Rows go in
 * groups of 8 whose lane sums are reduced together (sum8_ps) after the group's exp passes, so no
 * row's l update waits on its own horizontal sum. */
static void softmax_avx2(float *s, int rows, int cols, float *m, float *l, float *alpha) {
  const int cols_p = (int)attn__round_up(cols, NR); /* padding columns hold −inf */
  const __m256 log2e = _mm256_set1_ps(0x1.715476p+0f);
  for (int r0 = 0; r0 < rows; r0 += 8) { /* groups of 8 rows: their sums reduced together */
    const int g = rows - r0 < 8 ? rows - r0 : 8;
    __m256 sums[8]; /* lane sums of the group's vector-path rows, zeros elsewhere */
    float m_old[8], m_new[8];
    unsigned vector_rows = 0;
    for (int i = 0; i < 8; i++) {
      sums[i] = _mm256_setzero_ps();
      if (i >= g) continue;
      const int r = r0 + i;
      float *row = s + r * BC;
      __m256 mx0 = _mm256_set1_ps(-INFINITY), mx1 = mx0;
      for (int c = 0; c < cols_p; c += NR) { /* x first: a NaN x leaves mx as it was */
        mx0 = _mm256_max_ps(_mm256_load_ps(row + c), mx0);
        mx1 = _mm256_max_ps(_mm256_load_ps(row + c + 8), mx1);
      }
      const __m256 mx = _mm256_max_ps(mx0, mx1);
      m_old[i] = m_new[i] = m[r];
      if (!isfinite(m_old[i]) ||
          _mm256_movemask_ps(
              _mm256_cmp_ps(mx, _mm256_set1_ps(m_old[i] + ATTN__SOFTMAX_SLACK), _CMP_GT_OQ))) {
        if (!attn__softmax_vector_max(hmax8(mx), m_old[i], &m_new[i])) {
          attn__softmax_row_scalar(row, cols_p, &m[r], &l[r], &alpha[r]);
          continue;
        }
      }
      const __m256 vm = _mm256_set1_ps(m_new[i]);
      __m256 sum0 = _mm256_setzero_ps(), sum1 = sum0;
      for (int c = 0; c < cols_p; c += NR) {
        const __m256 e0 = exp2_ps(_mm256_mul_ps(_mm256_sub_ps(_mm256_load_ps(row + c), vm), log2e));
        const __m256 e1 =
            exp2_ps(_mm256_mul_ps(_mm256_sub_ps(_mm256_load_ps(row + c + 8), vm), log2e));
        _mm256_store_ps(row + c, e0), _mm256_store_ps(row + c + 8, e1);
        sum0 = _mm256_add_ps(sum0, e0), sum1 = _mm256_add_ps(sum1, e1);
      }
      sums[i] = _mm256_add_ps(sum0, sum1);
      vector_rows |= 1u << i;
    }
    float sum[8];
    _mm256_storeu_ps(sum, sum8_ps(sums));
    for (int i = 0; i < g; i++)
      if (vector_rows >> i & 1)
        attn__softmax_vector_done(s + (r0 + i) * BC, cols_p, sum[i], m_old[i], m_new[i], &m[r0 + i],
                                  &l[r0 + i], &alpha[r0 + i]);
  }
}

/* acc [rows_p, dvp] = α·acc + P [rows_p, BC] · V [cols, dvp] (rows ldv apart): 6 rows × 16
 * columns per block. */
static void pv_avx2(const float *p, const float *vs, int64_t ldv, const float *alpha, int rows_p,
                    int cols, int64_t dvp, float *acc) {
  for (int r0 = 0; r0 < rows_p; r0 += MR)
    for (int64_t d0 = 0; d0 < dvp; d0 += NR) {
      float *o = acc + (int64_t)r0 * dvp + d0;
      const float *pp = p + r0 * BC;
#define ATTN__LOAD(r)                                                                              \
  const __m256 a##r = _mm256_broadcast_ss(alpha + r0 + (r));                                       \
  __m256 c##r##0 = _mm256_mul_ps(_mm256_load_ps(o + (r)*dvp), a##r);                               \
  __m256 c##r##1 = _mm256_mul_ps(_mm256_load_ps(o + (r)*dvp + 8), a##r);
      // clang-format off
      ATTN__LOAD(0) ATTN__LOAD(1) ATTN__LOAD(2) ATTN__LOAD(3) ATTN__LOAD(4) ATTN__LOAD(5)
      // clang-format on
#undef ATTN__LOAD
          for (int c = 0; c < cols; c++) {
        const float *vr = vs + (int64_t)c * ldv + d0;
        const __m256 b0 = _mm256_loadu_ps(vr), b1 = _mm256_loadu_ps(vr + 8);
        __m256 x;
#define ATTN__ROW(r)                                                                               \
  x = _mm256_broadcast_ss(pp + (r)*BC + c);                                                        \
  c##r##0 = _mm256_fmadd_ps(x, b0, c##r##0);                                                       \
  c##r##1 = _mm256_fmadd_ps(x, b1, c##r##1);
        // clang-format off
        ATTN__ROW(0) ATTN__ROW(1) ATTN__ROW(2) ATTN__ROW(3) ATTN__ROW(4) ATTN__ROW(5)
        // clang-format on
#undef ATTN__ROW
      }
#define ATTN__STORE(r)                                                                             \
  _mm256_store_ps(o + (r)*dvp, c##r##0), _mm256_store_ps(o + (r)*dvp + 8, c##r##1);
      // clang-format off
      ATTN__STORE(0) ATTN__STORE(1) ATTN__STORE(2) ATTN__STORE(3) ATTN__STORE(4) ATTN__STORE(5)
      // clang-format on
#undef ATTN__STORE
    }
}

/* pv with invisible pairs skipped, element by element. Each output element sees the same
 * operations in the same order as in pv_avx2 (acc·α, then one fused multiply-add per visible key
 * in key order; fmaf is the same correctly rounded operation as a vfmadd lane), so it gives the
 * same bits whenever the skipped contributions would have been exact zeros. */
void attn__pv_masked_avx2(const float *p, const float *vs, const float *alpha,
                          const unsigned char *vis, int rows_p, int cols, int64_t dvp, float *acc) {
  for (int r = 0; r < rows_p; r++)
    for (int64_t d = 0; d < dvp; d++) {
      float a = acc[(int64_t)r * dvp + d] * alpha[r];
      for (int c = 0; c < cols; c++)
        if (vis[r * BC + c]) a = fmaf(p[r * BC + c], vs[(int64_t)c * dvp + d], a);
      acc[(int64_t)r * dvp + d] = a;
    }
}

/* Lanes [0, n) set, n ≤ 8: masked loads read nothing beyond a row's end. */
static inline __m256i lanes_below(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* 8 values of a row of type t from element i on, as floats; only the first n (≤ 8) are read, the
 * other lanes are 0. t is a constant after inlining. */
static inline __attribute__((always_inline)) __m256 load8(attn_dtype t, const void *row, int64_t i,
                                                          int64_t n) {
  if (t == ATTN_DTYPE_F32) {
    const float *r = (const float *)row + i;
    return n >= 8 ? _mm256_loadu_ps(r) : _mm256_maskload_ps(r, lanes_below(n));
  }
  const size_t esz = attn__dtype_size(t);
  const char *r = (const char *)row + i * (int64_t)esz;
  if (n >= 8) return widen8(t, load_raw8(t, r));
  unsigned char tmp[16] = {0}; /* a row's last values: nothing beyond its end is read */
  memcpy(tmp, r, (size_t)n * esz);
  return widen8(t, _mm_loadu_si128((const __m128i *)(const void *)tmp));
}

/* Rows [r, r + R) of the decode qk below, R ≤ 4 and the K type t constants after inlining: two
 * keys per pass (2R accumulators), K and Q vectors loaded once per step of 8 along D (narrow K
 * widened in registers). */
static inline __attribute__((always_inline)) void qk_direct_rows(int R, attn_dtype t,
                                                                 const float *q, const void *k0,
                                                                 const void *k1, int two, int64_t D,
                                                                 float *o) {
  const int64_t D8 = D & ~(int64_t)7;
  const __m256i tail = lanes_below(D - D8);
  __m256 a[4][2];
  for (int i = 0; i < R; i++)
    a[i][0] = a[i][1] = _mm256_setzero_ps();
  for (int64_t d = 0; d < D8; d += 8) {
    const __m256 x0 = load8(t, k0, d, 8), x1 = load8(t, k1, d, 8);
    for (int i = 0; i < R; i++) {
      const __m256 y = _mm256_loadu_ps(q + i * D + d);
      a[i][0] = _mm256_fmadd_ps(y, x0, a[i][0]), a[i][1] = _mm256_fmadd_ps(y, x1, a[i][1]);
    }
  }
  if (D8 < D) {
    const __m256 x0 = load8(t, k0, D8, D - D8), x1 = load8(t, k1, D8, D - D8);
    for (int i = 0; i < R; i++) {
      const __m256 y = _mm256_maskload_ps(q + i * D + D8, tail);
      a[i][0] = _mm256_fmadd_ps(y, x0, a[i][0]), a[i][1] = _mm256_fmadd_ps(y, x1, a[i][1]);
    }
  }
  for (int i = 0; i < R; i++) {
    o[i * BC] = hsum8(a[i][0]);
    if (two) o[i * BC + 1] = hsum8(a[i][1]);
  }
}

/* The decode qk for K of type t (a constant after inlining). */
static inline __attribute__((always_inline)) void
qk_direct_typed(attn_dtype t, const float *qs, const void *k, int64_t k_rs, int rows, int cols,
                int64_t D, float *s, attn_dtype vt, const void *v, int64_t v_rs, int64_t Dv) {
  /* prefetches: see ATTN__DECODE_AHEAD */
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

/* Decode form of qk: S[r][c] = Qs[r]·K[c] for rows [0, rows), K rows read in place (row stride
 * k_rs elements of type kt; narrow values widened in registers), vectorised along D. Two keys and
 * up to four query rows per pass (4 rows: 6 loads per 8 multiply-adds). Per S element the lanes
 * hold partial sums over d ≡ lane (mod 8), reduced by hsum8. V (type vt) is only prefetched. */
void attn__qk_direct_avx2(const float *qs, attn_dtype kt, const void *k, int64_t k_rs, int rows,
                          int cols, int64_t D, float *s, attn_dtype vt, const void *v, int64_t v_rs,
                          int64_t Dv) {
#define ATTN__QK(T) qk_direct_typed(T, qs, k, k_rs, rows, cols, D, s, vt, v, v_rs, Dv)
  ATTN__BY_DTYPE(kt, ATTN__QK)
#undef ATTN__QK
}

/* Rows [r, r + R) of the decode pv below for columns [d0, d0 + 16), R ≤ 4 and the V type t
 * constants after inlining. Returns the running finiteness check: Σ V·0 over the V vectors read
 * (two chains). */
static inline __attribute__((always_inline)) __m256
pv_direct_rows(int R, attn_dtype t, const float *p, const void *v, int64_t v_rs, const float *alpha,
               int cols, int64_t n, int64_t dvp, float *o) {
  const __m256 zero = _mm256_setzero_ps();
  const int64_t n0 = n < 8 ? n : 8, n1 = n < 8 ? 0 : n < 16 ? n - 8 : 8;
  __m256 a[4][2], check0 = zero, check1 = zero;
  for (int i = 0; i < R; i++) {
    const __m256 al = _mm256_broadcast_ss(alpha + i);
    a[i][0] = _mm256_mul_ps(_mm256_load_ps(o + i * dvp), al);
    a[i][1] = _mm256_mul_ps(_mm256_load_ps(o + i * dvp + 8), al);
  }
  for (int c = 0; c < cols; c++) {
    const void *vr = attn__elem(t, v, c * v_rs);
    const __m256 v0 = load8(t, vr, 0, n0), v1 = load8(t, vr, 8, n1);
    check0 = _mm256_fmadd_ps(v0, zero, check0);
    check1 = _mm256_fmadd_ps(v1, zero, check1);
    for (int i = 0; i < R; i++) {
      const __m256 x = _mm256_broadcast_ss(p + i * BC + c);
      a[i][0] = _mm256_fmadd_ps(x, v0, a[i][0]), a[i][1] = _mm256_fmadd_ps(x, v1, a[i][1]);
    }
  }
  for (int i = 0; i < R; i++)
    _mm256_store_ps(o + i * dvp, a[i][0]), _mm256_store_ps(o + i * dvp + 8, a[i][1]);
  return _mm256_add_ps(check0, check1);
}

/* The decode pv for V of type t (a constant after inlining). */
static inline __attribute__((always_inline)) int
pv_direct_typed(attn_dtype t, const float *p, const void *v, int64_t v_rs, const float *alpha,
                int rows, int cols, int64_t Dv, int64_t dvp, float *acc) {
  __m256 check = _mm256_setzero_ps();
  for (int64_t d0 = 0; d0 < Dv; d0 += 16) {
    int r = 0;
#define ATTN__PV(R)                                                                                \
  check =                                                                                          \
      _mm256_add_ps(check, pv_direct_rows(R, t, p + r * BC, attn__elem(t, v, d0), v_rs, alpha + r, \
                                          cols, Dv - d0, dvp, acc + (int64_t)r * dvp + d0))
    for (; r + 4 <= rows; r += 4)
      ATTN__PV(4);
    switch (rows - r) {
    case 3:
      ATTN__PV(3);
      break;
    case 2:
      ATTN__PV(2);
      break;
    case 1:
      ATTN__PV(1);
      break;
    default:
      break;
    }
#undef ATTN__PV
  }
  return _mm256_movemask_ps(_mm256_cmp_ps(check, check, _CMP_UNORD_Q)) == 0;
}

/* Decode form of pv: acc [rows, dvp] = α·acc + P · V for rows [0, rows), V rows read in place
 * (row stride v_rs elements of type vt; narrow values widened in registers), 16 columns × up to
 * four rows per pass. Per output element: acc·α, then one fused multiply-add per key in key order
 * — the sequence pv_masked_avx2 performs on the widened V, so the two agree bitwise whenever V is
 * finite. Returns 1 if every V value read was finite; otherwise acc is unspecified and the caller
 * redoes the tile with pv_masked. The check is Σ V·0, NaN exactly when some V is ±inf or NaN: one
 * multiply-add per V vector, no second pass over V. */
int attn__pv_direct_avx2(const float *p, attn_dtype vt, const void *v, int64_t v_rs,
                         const float *alpha, int rows, int cols, int64_t Dv, int64_t dvp,
                         float *acc) {
#define ATTN__PV(T) return pv_direct_typed(T, p, v, v_rs, alpha, rows, cols, Dv, dvp, acc)
  ATTN__BY_DTYPE(vt, ATTN__PV)
#undef ATTN__PV
}

void attn__exp2_avx2(const float *t, float *y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, exp2_ps(_mm256_loadu_ps(t + i)));
  if (i < n) {
    float in[8], out[8];
    for (int j = 0; j < 8; j++)
      in[j] = i + j < n ? t[i + j] : 0.0f;
    _mm256_storeu_ps(out, exp2_ps(_mm256_loadu_ps(in)));
    for (int j = 0; i + j < n; j++)
      y[i + j] = out[j];
  }
}

const attn__fwd_ukernel attn__ukernel_avx2 = {
    BR,
    BC,
    MR,
    NR,
    dv_pad16,
    pack_k_panels,
    pack_q_panels,
    qk_avx2,
    softmax_avx2,
    pv_avx2,
    attn__pv_masked_avx2,
    attn__qk_direct_avx2,
    attn__pv_direct_avx2,
    attn__widen_rows_avx2,
    0, /* mr_min: mr */
};

attn_status attn__fwd_f32__avx2(const attn__problem *pr, const void *q, const void *k,
                                const void *v, float *o, float *lse, float *probs) {
  return attn__fwd_tiled(&attn__ukernel_avx2, pr, q, k, v, o, lse, probs);
}

attn_status attn__scratch_f32__avx2(const attn__problem *pr, int with_probs, size_t *bytes) {
  return attn__scratch_tiled(&attn__ukernel_avx2, pr, with_probs, bytes);
}
