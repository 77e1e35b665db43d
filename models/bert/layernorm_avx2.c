/* layernorm_avx2.c — bert.c's LayerNorm pass with its double sums four lanes at a time, compiled
 * with -mavx2 -mfma (no contraction: the build passes -ffp-contract=off); bert.c calls it when
 * the CPU has AVX2 and FMA. Every operation is the scalar pass's, lane for lane (four interleaved
 * partial sums in double, combined as ((s0 + s1) + (s2 + s3)); each output
 * (float)((v − mean)·inv)·g + b), so the two give the same bits (tested). Four rows go through
 * each loop together: their sums are independent chains, which the out-of-order core overlaps
 * (one row's chain alone waits on each add's latency). */
#include "bert.h"

#include <immintrin.h>
#include <math.h>

enum { ROWS = 4 };

/* x + (r + rb) into x, for one row (r, rb may be NULL) */
static void add_residual(float *row, const float *ri, const float *rb, int h) {
  int d = 0;
  for (; d + 8 <= h; d += 8) {
    __m256 add = _mm256_loadu_ps(ri + d);
    if (rb) add = _mm256_add_ps(add, _mm256_loadu_ps(rb + d));
    _mm256_storeu_ps(row + d, _mm256_add_ps(_mm256_loadu_ps(row + d), add));
  }
  for (; d < h; d++)
    row[d] += rb ? ri[d] + rb[d] : ri[d];
}

void attn_bert_add_layernorm_avx2(float *x, const float *r, const float *rb, const float *g,
                                  const float *b, int rows, int h) {
  const int h4 = h & ~3;
  for (int i0 = 0; i0 < rows; i0 += ROWS) {
    const int nr = rows - i0 < ROWS ? rows - i0 : ROWS;
    float *row[ROWS];
    double mean[ROWS], inv[ROWS];
    __m256d acc[ROWS];
    for (int k = 0; k < nr; k++) {
      row[k] = x + (size_t)(i0 + k) * (size_t)h;
      if (r) add_residual(row[k], r + (size_t)(i0 + k) * (size_t)h, rb, h);
      acc[k] = _mm256_setzero_pd();
    }
    for (int d = 0; d < h4; d += 4)
      for (int k = 0; k < nr; k++)
        acc[k] = _mm256_add_pd(acc[k], _mm256_cvtps_pd(_mm_loadu_ps(row[k] + d)));
    for (int k = 0; k < nr; k++) {
      double l[4]; /* the scalar pass adds the tail onto partial sum 0, in order */
      _mm256_storeu_pd(l, acc[k]);
      for (int d = h4; d < h; d++)
        l[0] += row[k][d];
      mean[k] = ((l[0] + l[1]) + (l[2] + l[3])) / h;
      acc[k] = _mm256_setzero_pd();
    }
    for (int d = 0; d < h4; d += 4)
      for (int k = 0; k < nr; k++) {
        const __m256d c =
            _mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(row[k] + d)), _mm256_set1_pd(mean[k]));
        acc[k] = _mm256_add_pd(acc[k], _mm256_mul_pd(c, c));
      }
    for (int k = 0; k < nr; k++) {
      double l[4];
      _mm256_storeu_pd(l, acc[k]);
      for (int d = h4; d < h; d++)
        l[0] += (row[k][d] - mean[k]) * (row[k][d] - mean[k]);
      inv[k] = 1.0 / sqrt(((l[0] + l[1]) + (l[2] + l[3])) / h + 1e-12);
    }
    for (int k = 0; k < nr; k++) {
      const __m256d vm = _mm256_set1_pd(mean[k]), vinv = _mm256_set1_pd(inv[k]);
      for (int d = 0; d < h4; d += 4) {
        const __m256d c = _mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(row[k] + d)), vm);
        const __m128 y = _mm256_cvtpd_ps(_mm256_mul_pd(c, vinv));
        _mm_storeu_ps(row[k] + d,
                      _mm_add_ps(_mm_mul_ps(y, _mm_loadu_ps(g + d)), _mm_loadu_ps(b + d)));
      }
      for (int d = h4; d < h; d++)
        row[k][d] = (float)((row[k][d] - mean[k]) * inv[k]) * g[d] + b[d];
    }
  }
}
