/*
 * kv_cache.c — decoding with a KV cache kept in bf16: the keys and values of the tokens generated
 * so far stay in 16-bit memory (half of fp32's), each step appends the new token's key and value
 * (rounded to bf16 with attn_from_f32) and attends one query per head to the cache.
 *
 * Two sequences of different lengths share one cache allocation: kv_len says how many slots of
 * each are filled, so nothing is read beyond them (the slots hold NaN here to prove it), and
 * bottom-right alignment lines the query up with its sequence's last key. Grouped-query heads:
 * four query heads read two KV heads. Every step is checked: the bf16 call equals, bit for bit,
 * the same call on an fp32 cache holding the bf16 values, and differs from the unrounded fp32
 * cache only by bf16's rounding of K and V.
 */
#include "example_util.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

enum { B = 2, HQ = 4, HKV = 2, D = 16, CAP = 24, STEPS = 8 };

/* Rounds token t's key and value of sequence b into the bf16 cache, and their bf16 values into
 * the fp32 one (every KV head). */
static void append(int b, int t, const float *k_exact, const float *v_exact, uint16_t *k16,
                   uint16_t *v16, float *k32, float *v32) {
  for (int h = 0; h < HKV; h++) {
    const int at = ((b * HKV + h) * CAP + t) * D;
    attn_from_f32(ATTN_DTYPE_BF16, k_exact + at, k16 + at, D);
    attn_from_f32(ATTN_DTYPE_BF16, v_exact + at, v16 + at, D);
    attn_to_f32(ATTN_DTYPE_BF16, k16 + at, k32 + at, D);
    attn_to_f32(ATTN_DTYPE_BF16, v16 + at, v32 + at, D);
  }
}

/* Deterministic stand-ins for the projections of token t of sequence b. */
static float feature(int b, int t, int h, int d, float f) {
  return sinf(f * (float)(1 + d + 3 * h) + 0.7f * (float)t + 1.3f * (float)b);
}

int main(void) {
  /* [B, Hkv, CAP, D] caches: bf16 bits, the same values widened, and the unrounded fp32 data */
  static uint16_t k16[B * HKV * CAP * D], v16[B * HKV * CAP * D];
  static float k32[B * HKV * CAP * D], v32[B * HKV * CAP * D];
  static float k_exact[B * HKV * CAP * D], v_exact[B * HKV * CAP * D];
  const float nan = NAN;
  uint16_t nan16;
  attn_from_f32(ATTN_DTYPE_BF16, &nan, &nan16, 1);
  for (int i = 0; i < B * HKV * CAP * D; i++) /* unused slots: never read */
    k16[i] = v16[i] = nan16, k32[i] = v32[i] = k_exact[i] = v_exact[i] = NAN;

  int64_t len[B] = {3, 9}; /* the two prompts' lengths */
  for (int b = 0; b < B; b++)
    for (int t = 0; t < len[b] + STEPS; t++)
      for (int h = 0; h < HKV; h++)
        for (int d = 0; d < D; d++) {
          const int at = ((b * HKV + h) * CAP + t) * D + d;
          k_exact[at] = feature(b, t, h, d, 0.31f), v_exact[at] = feature(b, t, h, d, 0.17f);
        }
  for (int b = 0; b < B; b++) /* the prompts go into the cache */
    for (int t = 0; t < len[b]; t++)
      append(b, t, k_exact, v_exact, k16, v16, k32, v32);

  attn_params p;
  attn_params_init(&p, B, HQ, HKV, 1, CAP, D, D); /* one query per head against the cache */
  p.causal = 1;
  p.align = ATTN_ALIGN_BOTTOM_RIGHT; /* the query is the newest token of its sequence */
  p.kv_len = len;
  printf("decode with a bf16 KV cache: %d sequences, %d query heads reading %d KV heads, D = %d\n",
         B, HQ, HKV, D);
  printf("cache: %zu bytes in bf16 (fp32: %zu)\n\n", sizeof k16 + sizeof v16,
         sizeof k32 + sizeof v32);
  printf("%4s %12s %22s %26s\n", "step", "cache slots", "bf16 vs fp32 of bf16",
         "bf16 vs unrounded fp32");
  for (int step = 0; step < STEPS; step++) {
    float q[B * HQ * D], o16[B * HQ * D], o32[B * HQ * D], o_exact[B * HQ * D];
    for (int b = 0; b < B; b++) {
      const int t = (int)len[b]; /* the new token: append its key and value, rounded to bf16 */
      append(b, t, k_exact, v_exact, k16, v16, k32, v32);
      len[b]++;
      for (int h = 0; h < HQ; h++)
        for (int d = 0; d < D; d++)
          q[(b * HQ + h) * D + d] = feature(b, t, h, d, 0.53f);
    }
    p.k_dtype = p.v_dtype = ATTN_DTYPE_BF16;
    example_check(attn_forward(&p, q, k16, v16, o16, NULL, NULL), "attn_forward (bf16 cache)");
    p.k_dtype = p.v_dtype = ATTN_DTYPE_F32;
    example_check(attn_forward(&p, q, k32, v32, o32, NULL, NULL), "attn_forward (fp32 cache)");
    example_check(attn_forward(&p, q, k_exact, v_exact, o_exact, NULL, NULL),
                  "attn_forward (unrounded)");
    float rounding = 0;
    int nan_seen = 0; /* a NaN output: a slot beyond kv_len was read */
    for (int i = 0; i < B * HQ * D; i++) {
      nan_seen |= isnan(o16[i]) || isnan(o_exact[i]);
      rounding = fmaxf(rounding, fabsf(o16[i] - o_exact[i]));
    }
    const int same = memcmp(o16, o32, sizeof o16) == 0;
    printf("%4d %5lld, %4lld %22s %26.2e\n", step, (long long)len[0], (long long)len[1],
           same ? "bitwise equal" : "DIFFERENT", (double)rounding);
    if (!same || nan_seen || !(rounding < 1e-2f)) return 1; /* bf16: ~3 significant digits */
  }
  return 0;
}
