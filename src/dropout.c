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

void attn__dropout_row(const attn_params *p, int64_t b, int64_t h, int64_t i, int64_t j0, int cols,
                       float *x) {
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
