/*
 * dropout.c — which attention weights dropout keeps: Philox4x32-10 (Salmon, Moraes, Dror, Shaw,
 * "Parallel random numbers: as easy as 1, 2, 3", SC'11), a counter-based generator, so the
 * decision for pair (b, h, i, j) is a pure function of the seed and the indices: every kernel,
 * tile order and thread count, and the backward, see the same mask.
 */
#include "internal.h"

/* One Philox4x32-10 block: 4 random words of counter c under key (k0, k1). */
static void philox4x32_10(uint32_t c[4], uint32_t k0, uint32_t k1) {
  for (int round = 0; round < 10; round++) {
    const uint64_t p0 = (uint64_t)0xD2511F53u * c[0], p1 = (uint64_t)0xCD9E8D57u * c[2];
    const uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
    const uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
    c[0] = hi1 ^ c[1] ^ k0, c[1] = lo1, c[2] = hi0 ^ c[3] ^ k1, c[3] = lo0;
    k0 += 0x9E3779B9u, k1 += 0xBB67AE85u;
  }
}

void attn__philox4x32_10(uint32_t ctr[4], uint64_t key) {
  philox4x32_10(ctr, (uint32_t)key, (uint32_t)(key >> 32));
}

/* ⌊p·2³²⌋: words below it drop their pair. */
static uint32_t threshold(float p) { return (uint32_t)((double)p * 4294967296.0); }

int attn_dropout_keep(const attn_params *p, int64_t b, int64_t h, int64_t i, int64_t j) {
  if (!p || !(p->dropout > 0.0f)) return 1;
  uint32_t c[4] = {(uint32_t)(j >> 2), (uint32_t)i, (uint32_t)(b * p->heads_q + h), 0};
  attn__philox4x32_10(c, p->dropout_seed);
  return c[j & 3] >= threshold(p->dropout);
}

/* PB Philox blocks at once, counters c[word][block] in place: independent blocks, so their rounds
 * overlap (one block alone is a chain of 10 dependent multiplies) and the compiler vectorises the
 * lanes (32×32 → 64-bit products: pmuludq). The same function as philox4x32_10, lane by lane. */
enum { PB = 8 };
static void philox_blocks(uint32_t c[4][PB], uint64_t key) {
  uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
  for (int round = 0; round < 10; round++) {
    for (int l = 0; l < PB; l++) {
      const uint64_t p0 = (uint64_t)0xD2511F53u * c[0][l], p1 = (uint64_t)0xCD9E8D57u * c[2][l];
      const uint32_t n0 = (uint32_t)(p1 >> 32) ^ c[1][l] ^ k0;
      const uint32_t n2 = (uint32_t)(p0 >> 32) ^ c[3][l] ^ k1;
      c[0][l] = n0, c[1][l] = (uint32_t)p1, c[2][l] = n2, c[3][l] = (uint32_t)p0;
    }
    k0 += 0x9E3779B9u, k1 += 0xBB67AE85u;
  }
}

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

/* The 32-bit halves of the products a·m, lane by lane (8 lanes; m in every lane): vpmuludq
 * multiplies the even lanes, so the odd ones are shifted down first. */
__attribute__((target("avx2"))) static inline void mulhilo8(__m256i a, __m256i m, __m256i *hi,
                                                            __m256i *lo) {
  const __m256i pe = _mm256_mul_epu32(a, m), po = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  *hi = _mm256_blend_epi32(_mm256_srli_epi64(pe, 32), po, 0xAA);
  *lo = _mm256_blend_epi32(pe, _mm256_slli_epi64(po, 32), 0xAA);
}

/* Eight Philox blocks (counters first .. first + 7, i, bh, 0) in AVX2 registers, the 32 words
 * stored in key order: words[4·l + w] = word w of block l. */
__attribute__((target("avx2"))) static void philox8_avx2(int64_t first, uint32_t i, uint32_t bh,
                                                         uint64_t key, uint32_t words[32]) {
  __m256i c0 = _mm256_add_epi32(_mm256_set1_epi32((int)(uint32_t)first),
                                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  __m256i c1 = _mm256_set1_epi32((int)i), c2 = _mm256_set1_epi32((int)bh);
  __m256i c3 = _mm256_setzero_si256();
  const __m256i m0 = _mm256_set1_epi32((int)0xD2511F53u), m1 = _mm256_set1_epi32((int)0xCD9E8D57u);
  uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
  for (int round = 0; round < 10; round++) {
    __m256i hi0, lo0, hi1, lo1;
    mulhilo8(c0, m0, &hi0, &lo0);
    mulhilo8(c2, m1, &hi1, &lo1);
    c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32((int)k0));
    c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32((int)k1));
    c1 = lo1, c3 = lo0;
    k0 += 0x9E3779B9u, k1 += 0xBB67AE85u;
  }
  /* transpose [word][block] to key order */
  const __m256i t0 = _mm256_unpacklo_epi32(c0, c1), t1 = _mm256_unpackhi_epi32(c0, c1);
  const __m256i t2 = _mm256_unpacklo_epi32(c2, c3), t3 = _mm256_unpackhi_epi32(c2, c3);
  const __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);
  const __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
  _mm256_storeu_si256((__m256i *)(void *)words, _mm256_permute2x128_si256(u0, u1, 0x20));
  _mm256_storeu_si256((__m256i *)(void *)(words + 8), _mm256_permute2x128_si256(u2, u3, 0x20));
  _mm256_storeu_si256((__m256i *)(void *)(words + 16), _mm256_permute2x128_si256(u0, u1, 0x31));
  _mm256_storeu_si256((__m256i *)(void *)(words + 24), _mm256_permute2x128_si256(u2, u3, 0x31));
}

/* attn__dropout_row with the words from philox8_avx2 (the same words: integer arithmetic). */
__attribute__((target("avx2"))) static void dropout_row_avx2(uint32_t thr, float keep, uint64_t key,
                                                             uint32_t i, uint32_t bh, int64_t j0,
                                                             int cols, float *x) {
  uint32_t words[32];
  for (int64_t first = j0 >> 2; first <= (j0 + cols - 1) >> 2; first += 8) {
    philox8_avx2(first, i, bh, key, words);
    const int64_t lo = first * 4 > j0 ? first * 4 : j0;
    const int64_t hi = (first + 8) * 4 < j0 + cols ? (first + 8) * 4 : j0 + cols;
    if (lo == first * 4 && hi == lo + 32) { /* all 32 keys in the row: 8 at a time */
      const __m256i t = _mm256_set1_epi32((int)thr);
      const __m256 k = _mm256_set1_ps(keep);
      for (int g = 0; g < 32; g += 8) {
        const __m256i w = _mm256_loadu_si256((const __m256i *)(const void *)(words + g));
        const __m256i kept = _mm256_cmpeq_epi32(_mm256_max_epu32(w, t), w); /* w ≥ thr */
        float *xg = x + (lo - j0) + g;
        _mm256_storeu_ps(
            xg, _mm256_and_ps(_mm256_mul_ps(_mm256_loadu_ps(xg), k), _mm256_castsi256_ps(kept)));
      }
      continue;
    }
    for (int64_t j = lo; j < hi; j++) {
      float *xj = x + (j - j0);
      *xj = words[j - first * 4] >= thr ? *xj * keep : 0.0f;
    }
  }
}
#endif

void attn__dropout_row(const attn_params *p, int64_t b, int64_t h, int64_t i, int64_t j0, int cols,
                       float *x) {
#if defined(__x86_64__) || defined(__i386__)
  if (attn__cpu_get()->avx2_fma) {
    dropout_row_avx2(threshold(p->dropout), (float)(1.0 / (1.0 - (double)p->dropout)),
                     p->dropout_seed, (uint32_t)i, (uint32_t)(b * p->heads_q + h), j0, cols, x);
    return;
  }
#endif
  attn__dropout_row_c(p, b, h, i, j0, cols, x);
}

void attn__dropout_row_c(const attn_params *p, int64_t b, int64_t h, int64_t i, int64_t j0,
                         int cols, float *x) {
  const uint32_t thr = threshold(p->dropout), bh = (uint32_t)(b * p->heads_q + h);
  const float keep = (float)(1.0 / (1.0 - (double)p->dropout));
  uint32_t c[4][PB];
  for (int64_t first = j0 >> 2; first <= (j0 + cols - 1) >> 2; first += PB) {
    for (int l = 0; l < PB; l++) /* blocks first .. first + PB − 1: keys 4·block .. 4·block + 3 */
      c[0][l] = (uint32_t)(first + l), c[1][l] = (uint32_t)i, c[2][l] = bh, c[3][l] = 0;
    philox_blocks(c, p->dropout_seed);
    const int64_t lo = first * 4 > j0 ? first * 4 : j0;
    const int64_t hi = (first + PB) * 4 < j0 + cols ? (first + PB) * 4 : j0 + cols;
    for (int64_t j = lo; j < hi; j++) {
      float *xj = x + (j - j0);
      *xj = c[j & 3][j / 4 - first] >= thr ? *xj * keep : 0.0f;
    }
  }
}
