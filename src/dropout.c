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

void attn__dropout_row(const attn_params *p, int64_t b, int64_t h, int64_t i, int64_t j0, int cols,
                       float *x) {
  const uint32_t thr = threshold(p->dropout), bh = (uint32_t)(b * p->heads_q + h);
  const float keep = (float)(1.0 / (1.0 - (double)p->dropout));
  const uint64_t key = p->dropout_seed;
  uint32_t words[4] = {0, 0, 0, 0};
  int64_t block = -1;
  for (int c = 0; c < cols; c++) {
    const int64_t j = j0 + c;
    if (j >> 2 != block) { /* one Philox block serves 4 consecutive keys */
      block = j >> 2;
      words[0] = (uint32_t)block, words[1] = (uint32_t)i, words[2] = bh, words[3] = 0;
      attn__philox4x32_10(words, key);
    }
    x[c] = words[j & 3] >= thr ? x[c] * keep : 0.0f;
  }
}
