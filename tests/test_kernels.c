/*
 * test_kernels.c — every kernel against the fp64 oracle under the tolerance rule (harness.h), over
 * a seeded sweep:
 *   1. shapes: D ∈ {1, 3, 8, 17, 32, 64, 80, 96, 111, 128, 256} × (Lq, Lk) pairs covering 1,
 *      tile−1, tile, tile+1 (query tile 64, key tile 128), primes, Lq < Lk and Lq > Lk, with
 *      Hq/Hkv ∈ {1, 2, 3, 8} and all layouts rotating;
 *   2. features: every visibility and score feature alone, every pair combined, and all at once,
 *      in both alignments and every layout, with broadcast masks and biases;
 *   3. numerical range: large logits, tiny/huge/zero/negative scale, Dv ≠ D, Lk = 0, Dv = 0;
 *   4. decode, few items (keys split), items per (b, KV head) and items per query block after the
 *      pre-passes.
 * Usage: test_kernels [seed]   (seed 0 by default; CI may pass a rotating seed, printed first);
 * ATTN_TEST_KERNELS=avx512 (a comma-separated list) sweeps only the kernels it names.
 */
#include "harness.h"
#include "internal.h"

#include <stdlib.h>
#include <string.h>

static uint64_t seed_base;
static int n_cases;

/* Runs the case on every kernel this CPU supports, its batch raised to at least 64 query rows
 * (tspec_min_rows). */
static void check_all_kernels(const tspec *s, int want_probs) {
  tcase c;
  tspec sp = *s;
  tspec_min_rows(&sp, 64);
  sp.seed = seed_base * 1000003u + (uint64_t)n_cases++;
  tcase_make(&c, &sp);
  for (int k = 1; k < ATTN_KERNEL_COUNT_; k++)
    if (t_kernel_selected((attn_kernel)k)) t_check_case(&c, (attn_kernel)k, 2, want_probs);
  tcase_free(&c);
}

static void sweep_shapes(void) {
  static const int64_t dims[] = {1, 3, 8, 17, 32, 64, 80, 96, 111, 128, 256};
  static const int64_t lens[][2] = {{1, 1},     {1, 127},   {1, 129}, {3, 200},   {63, 63},
                                    {64, 64},   {65, 65},   {97, 97}, {113, 203}, {127, 128},
                                    {128, 129}, {203, 113}, {239, 1}, {129, 257}};
  static const int64_t heads[][2] = {{1, 1}, {2, 1}, {3, 1}, {8, 1}, {4, 2}, {6, 2}, {8, 8}};
  int n = 0;
  for (size_t di = 0; di < sizeof dims / sizeof dims[0]; di++)
    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++, n++) {
      const int64_t D = dims[di], Lq = lens[li][0], Lk = lens[li][1];
      const int64_t *hh = heads[n % 7];
      const int64_t big = D * Lq * Lk > 2000000; /* keep the oracle's work bounded */
      tspec s = tspec_shape(big ? 1 : 1 + n % 2, big ? hh[0] / hh[1] : hh[0], big ? 1 : hh[1], Lq,
                            Lk, D, D);
      s.layout = n % N_LAYOUTS;
      s.causal = n % 3 == 1;
      s.align = Lq == Lk && n % 2 ? ATTN_ALIGN_UNSET
                                  : (n % 2 ? ATTN_ALIGN_BOTTOM_RIGHT : ATTN_ALIGN_TOP_LEFT);
      check_all_kernels(&s, Lq * Lk <= 20000);
    }
}

static void sweep_features(void) {
  static const int64_t alone_shapes[][2] = {{37, 37}, {64, 129}, {130, 67}, {1, 200}};
  static const int64_t pair_shapes[][2] = {{23, 23}, {9, 41}, {41, 9}};
  int n = 0;
  for (int align = ATTN_ALIGN_TOP_LEFT; align <= ATTN_ALIGN_BOTTOM_RIGHT; align++) {
    /* each feature alone */
    for (int f = 0; f < t_n_features; f++)
      for (size_t si = 0; si < 4; si++, n++) {
        tspec s = tspec_shape(3, 4, 2, alone_shapes[si][0], alone_shapes[si][1], 16 + n % 3, 16);
        s.layout = n % N_LAYOUTS;
        s.align = (attn_align)align;
        t_features[f].fn(&s);
        check_all_kernels(&s, 1);
      }
    /* every pair */
    for (int f = 0; f < t_n_features; f++)
      for (int g = f + 1; g < t_n_features; g++)
        for (size_t si = 0; si < 3; si++, n++) {
          tspec s = tspec_shape(2, 3, 1, pair_shapes[si][0], pair_shapes[si][1], 8 + n % 5, 7);
          s.layout = n % N_LAYOUTS;
          s.align = (attn_align)align;
          t_features[f].fn(&s);
          t_features[g].fn(&s);
          check_all_kernels(&s, n % 2);
        }
    /* everything at once (one mask and one bias kind at a time) */
    for (int mk = MASK_FULL; mk < N_MASKS; mk++)
      for (int bk = BIAS_FULL; bk < N_BIASES; bk++, n++) {
        tspec s = tspec_shape(3, 8, 2, 70 + n % 3, 150 - n % 5, 32, 24);
        s.layout = n % N_LAYOUTS;
        s.align = (attn_align)align;
        s.causal = 1, s.window_left = 40, s.window_right = 10, s.kv_len = 1;
        s.mask = mk, s.bias = bk, s.softcap = 5.0f, s.alibi = 1, s.sinks = n % 2;
        check_all_kernels(&s, 1);
      }
  }
}

static void sweep_numbers(void) {
  tspec s = tspec_shape(2, 4, 4, 70, 130, 64, 64);
  /* large logits: a missing max subtraction overflows */
  s.q_mul = 5.0f, s.k_mul = 3.0f;
  check_all_kernels(&s, 1);
  s.q_mul = 40.0f, s.k_mul = 40.0f;
  check_all_kernels(&s, 1);
  s.q_mul = s.k_mul = 1.0f;
  /* scale: 0, negative, tiny, huge */
  const float scales[] = {0.0f, -1.0f, 1e-30f, 1e30f, 1.0f};
  for (size_t i = 0; i < sizeof scales / sizeof scales[0]; i++) {
    s.has_scale = 1, s.scale = scales[i];
    check_all_kernels(&s, 1);
  }
  s.has_scale = 0;
  /* Dv ≠ D, Dv = 0, Lk = 0 */
  tspec t = tspec_shape(1, 2, 1, 33, 65, 40, 24);
  check_all_kernels(&t, 1);
  t = tspec_shape(1, 2, 1, 33, 65, 24, 40);
  check_all_kernels(&t, 1);
  t = tspec_shape(2, 2, 2, 17, 19, 8, 0);
  check_all_kernels(&t, 1);
  t = tspec_shape(2, 2, 2, 17, 0, 8, 8);
  check_all_kernels(&t, 1);
  /* decode: one query against a long key range, bottom-right causal (the KV-cache call) */
  t = tspec_shape(1, 4, 1, 1, 3001, 64, 64);
  t.causal = 1, t.align = ATTN_ALIGN_BOTTOM_RIGHT, t.kv_len = 1;
  check_all_kernels(&t, 0);
  /* every visible logit ≤ −1e5 (bias): must not become zeros */
  t = tspec_shape(1, 1, 1, 20, 30, 8, 8);
  t.bias = BIAS_FULL;
  tcase c;
  tcase_make(&c, &t);
  float *bb = tbuf_f32(&c.bias);
  for (int64_t i = 0; i < tbuf_count(&c.bias); i++)
    bb[i] = -1e5f - (float)(i % 7);
  for (int k = 1; k < ATTN_KERNEL_COUNT_; k++)
    if (t_kernel_selected((attn_kernel)k)) t_check_case(&c, (attn_kernel)k, 1, 1);
  tcase_free(&c);
}

/* Decode (Lq ≤ 16 against ≥ 1024 keys): the split-key path with per-chunk partials merged through
 * their log-sum-exp, all query heads of a KV group in one block. */
static void sweep_decode(void) {
  static const int64_t lq[] = {1, 3, 16}, lk[] = {1024, 1537, 4099};
  static const int64_t heads[][2] = {{4, 4}, {8, 2}, {8, 1}};
  int n = 0;
  for (int a = 0; a < 3; a++)
    for (int b = 0; b < 3; b++, n++) {
      tspec s = tspec_shape(2, heads[n % 3][0], heads[n % 3][1], lq[a], lk[b], 64 + 17 * (n % 3),
                            48 + 17 * (n % 2));
      s.causal = 1, s.align = ATTN_ALIGN_BOTTOM_RIGHT;
      s.kv_len = n % 2;
      s.layout = n % N_LAYOUTS;
      check_all_kernels(&s, 0);
      s.causal = 0, s.window_left = 700, s.window_right = 0, s.mask = 1 + n % 4;
      s.bias = 1 + n % 3, s.alibi = n % 2, s.softcap = n % 3 ? 0.0f : 6.0f, s.sinks = n % 2;
      check_all_kernels(&s, 0);
    }
}

/* Prefill with fewer than 8 items of query blocks (one or two heads, up to a few hundred queries)
 * against ≥ 1024 keys: the keys split into chunks merged through their log-sum-exp, the KV group's
 * rows in one or several row blocks, every feature on the packed path. */
static void sweep_few_items(void) {
  static const int64_t lq[] = {17, 97, 200}, lk[] = {1024, 2053, 8195};
  static const int64_t heads[][2] = {{1, 1}, {2, 1}, {2, 2}};
  int n = 0;
  for (int a = 0; a < 3; a++)
    for (int b = 0; b < 3; b++, n++) {
      /* 8195 keys: chunks of 1024; the 200-query cases stop at 4099 to keep the oracle quick */
      const int64_t Lk = lq[a] > 100 && lk[b] > 4099 ? 4099 : lk[b];
      tspec s = tspec_shape(1, heads[n % 3][0], heads[n % 3][1], lq[a], Lk, 64 + 17 * (n % 2),
                            48 + 16 * (n % 3));
      s.causal = 1, s.align = n % 2 ? ATTN_ALIGN_BOTTOM_RIGHT : ATTN_ALIGN_TOP_LEFT;
      s.kv_len = n % 2;
      s.layout = n % N_LAYOUTS;
      check_all_kernels(&s, 0);
      s.causal = 0, s.window_left = 300 + 200 * (n % 3), s.window_right = 7 * (n % 2);
      s.mask = 1 + n % 4, s.bias = 1 + n % 3, s.alibi = n % 2, s.softcap = n % 3 ? 0.0f : 6.0f;
      s.sinks = (n + 1) % 2;
      check_all_kernels(&s, 0);
    }
}

/* Short keys (a head's packed K ≤ 1 MiB): lanes take (b, KV head) pairs and run every query
 * block of the group's heads on K packed in the worker, each V tile checked once, and take blocks
 * of each other's pairs at the end — every feature alone, on 8 pairs (2 threads) over two key
 * tiles. */
static void sweep_head_items(void) {
  for (int f = 0; f < t_n_features; f++) {
    tspec s = tspec_shape(4, 4, 2, 97 + 31 * (f % 2), 131 + 70 * (f % 2), 24 + 8 * (f % 2), 20);
    s.layout = f % N_LAYOUTS;
    s.align = f % 2 ? ATTN_ALIGN_BOTTOM_RIGHT : ATTN_ALIGN_TOP_LEFT;
    t_features[f].fn(&s);
    check_all_kernels(&s, f % 2);
  }
}

/* The same features with the per-head copy switched off, as for a head's K over 1 MiB: items
 * per query block after the pre-passes (K packed once per call, V rows' finiteness counted). */
static void sweep_prepass(void) {
  const int64_t was = attn__set_head_item_bytes(0);
  for (int f = 0; f < t_n_features; f++) {
    tspec s = tspec_shape(1, 6, 3, 97 + 31 * (f % 2), 131 + 70 * (f % 2), 24 + 8 * (f % 2), 20);
    s.layout = (f + 1) % N_LAYOUTS;
    s.align = f % 2 ? ATTN_ALIGN_TOP_LEFT : ATTN_ALIGN_BOTTOM_RIGHT;
    t_features[f].fn(&s);
    check_all_kernels(&s, (f + 1) % 2);
  }
  attn__set_head_item_bytes(was);
}

int main(int argc, char **argv) {
  seed_base = argc > 1 ? strtoull(argv[1], NULL, 10) : 0;
  printf("test_kernels: seed %llu\n", (unsigned long long)seed_base);
  for (int k = 1; k < ATTN_KERNEL_COUNT_; k++)
    printf("  kernel %-8s %s\n", attn_kernel_name((attn_kernel)k),
           t_kernel_selected((attn_kernel)k)       ? "tested"
           : attn_kernel_supported((attn_kernel)k) ? "SKIP (not in ATTN_TEST_KERNELS)"
                                                   : "SKIP (not supported on this CPU)");
  t_check_kernel_selection();
  sweep_shapes();
  sweep_features();
  sweep_numbers();
  sweep_decode();
  sweep_few_items();
  sweep_head_items();
  sweep_prepass();
  printf("  %d cases\n", n_cases);
  return t_finish("test_kernels");
}
