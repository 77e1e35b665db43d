/*
 * gemm_avx512.c — the encoder's dense layers on AVX-512, compiled with -mavx512f -mfma; bert.c
 * calls it when the CPU has AVX-512F (OpenBLAS otherwise).
 *
 *     y [rows, out] = x [rows, in] · Wᵀ (+ b)      W [out, in] as a Linear layer stores it
 *
 * W is packed once, at load, into panels of 32 output features (attn_bert_pack_weights: panel p
 * holds W[32p .. 32p+31][k] for k = 0..in−1, 32 floats per k, zeros past `out`), so the product
 * streams each panel in order and never repacks. x is read in place: a block of 12 rows
 * broadcasts one float per row and k onto two 16-lane rows of the panel (12 × 32 accumulators,
 * 24 of the 32 registers).
 *
 * Blocking: k in chunks of KC (12 rows × KC floats of x stay in L1 while they meet one group of
 * NC_PANELS panels, 384 KiB from L2); the first chunk writes y, later ones add to it, so every
 * y element is summed in k order — the result does not depend on threads or on rows' grouping.
 */
#include "bert.h"

#include <immintrin.h>
#include <string.h>

#define MR 12
#define NR 32
#define KC 384
#define NC_PANELS 8

/* Shape: c[12, 32 (n valid)] = or += a[12, kc] (rows lda apart) · bp[kc, 32] (+ bias[n]). */
static void block(const float *a, size_t lda, const float *bp, int kc, float *c, size_t ldc,
                  int accumulate, const float *bias, int n) {
  __m512 acc[MR][2];
#pragma GCC unroll 12
  for (int i = 0; i < MR; i++)
    acc[i][0] = _mm512_setzero_ps(), acc[i][1] = _mm512_setzero_ps();
  for (int k = 0; k < kc; k++) {
    const __m512 b0 = _mm512_load_ps(bp + (size_t)k * NR);
    const __m512 b1 = _mm512_load_ps(bp + (size_t)k * NR + 16);
#pragma GCC unroll 12
    for (int i = 0; i < MR; i++) {
      const __m512 ai = _mm512_set1_ps(a[(size_t)i * lda + (size_t)k]);
      acc[i][0] = _mm512_fmadd_ps(ai, b0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(ai, b1, acc[i][1]);
    }
  }
  const __mmask16 m0 = n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1u);
  const __mmask16 m1 = n >= 32   ? (__mmask16)0xFFFF
                       : n <= 16 ? 0
                                 : (__mmask16)((1u << (n - 16)) - 1u);
  __m512 b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps();
  if (bias) b0 = _mm512_maskz_loadu_ps(m0, bias), b1 = _mm512_maskz_loadu_ps(m1, bias + 16);
#pragma GCC unroll 12
  for (int i = 0; i < MR; i++) {
    float *ci = c + (size_t)i * ldc;
    __m512 r0 = acc[i][0], r1 = acc[i][1];
    if (accumulate)
      r0 = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, ci), r0),
      r1 = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, ci + 16), r1);
    if (bias) r0 = _mm512_add_ps(r0, b0), r1 = _mm512_add_ps(r1, b1);
    _mm512_mask_storeu_ps(ci, m0, r0);
    _mm512_mask_storeu_ps(ci + 16, m1, r1);
  }
}

void attn_bert_gemm_avx512(const float *x, size_t ldx, const float *wp, const float *b, float *y,
                           size_t ldy, int rows, int in, int out) {
  const int panels = (out + NR - 1) / NR;
  float a_tail[MR * KC], c_tail[MR * NR]; /* the last block of fewer than 12 rows, padded */
  for (int k0 = 0; k0 < in; k0 += KC) {
    const int kc = in - k0 < KC ? in - k0 : KC, last = k0 + kc == in;
    for (int p0 = 0; p0 < panels; p0 += NC_PANELS) {
      const int p1 = panels - p0 < NC_PANELS ? panels : p0 + NC_PANELS;
      for (int i0 = 0; i0 < rows; i0 += MR) {
        const int mr = rows - i0 < MR ? rows - i0 : MR;
        const float *a = x + (size_t)i0 * ldx + (size_t)k0;
        size_t lda = ldx;
        if (mr < MR) { /* its rows, then zeros */
          for (int i = 0; i < MR; i++)
            for (int k = 0; k < kc; k++)
              a_tail[i * KC + k] = i < mr ? a[(size_t)i * ldx + (size_t)k] : 0.0f;
          a = a_tail, lda = KC;
        }
        for (int p = p0; p < p1; p++) {
          const float *bp = wp + ((size_t)p * (size_t)in + (size_t)k0) * NR;
          float *c = y + (size_t)i0 * ldy + (size_t)p * NR;
          const float *bias = last && b ? b + (size_t)p * NR : NULL;
          const int n = out - p * NR < NR ? out - p * NR : NR, acc = k0 > 0;
          if (mr == MR) {
            block(a, lda, bp, kc, c, ldy, acc, bias, n);
            continue;
          }
          for (int i = 0; i < mr && acc; i++)
            memcpy(c_tail + i * NR, c + (size_t)i * ldy, sizeof(float) * (size_t)n);
          block(a, lda, bp, kc, c_tail, NR, acc, bias, n);
          for (int i = 0; i < mr; i++)
            memcpy(c + (size_t)i * ldy, c_tail + i * NR, sizeof(float) * (size_t)n);
        }
      }
    }
  }
}
