/*
 * test_dropout.c — attention dropout (p.dropout, p.dropout_seed). The mask: Philox4x32-10 against
 * Random123's known-answer vectors, attn_dropout_keep against the header's formula, keep rates
 * near 1 − p, masks that change with the seed and the indices, the kernels' row function (AVX2 and
 * portable) against attn_dropout_keep. On every kernel: LSE and P are
 * bitwise those of the call without dropout (dropout acts on O's weights only), the mean of O over
 * many seeds is the output without dropout (E[Z] = 1), a dropout near 1 drops (almost) everything
 * with no NaN, the mask is bitwise the same for 1, 2 and 3 threads, and invalid probabilities are
 * refused with nothing written. The kernels against the fp64 oracle with dropout, forward and
 * backward (and the ref backward against finite differences), run in the sweeps of
 * test_kernels, test_backward, test_dtype, test_paged and test_varlen (the feature "dropout").
 */
#include "harness.h"
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Random123's kat_vectors for philox4x32_10: counter, key (k0, k1), result. */
static void test_philox_kat(void) {
  static const uint32_t kat[3][10] = {
      {0, 0, 0, 0, 0, 0, 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8},
      {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0x408f276d,
       0x41c83b0e, 0xa20bc7c6, 0x6d5451fd},
      {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0, 0xd16cfe09,
       0x94fdcceb, 0x5001e420, 0x24126ea1}};
  for (int v = 0; v < 3; v++) {
    uint32_t c[4] = {kat[v][0], kat[v][1], kat[v][2], kat[v][3]};
    attn__philox4x32_10(c, (uint64_t)kat[v][5] << 32 | kat[v][4]);
    CHECKF(c[0] == kat[v][6] && c[1] == kat[v][7] && c[2] == kat[v][8] && c[3] == kat[v][9],
           "Philox4x32-10 known-answer vector %d: %08x %08x %08x %08x", v, c[0], c[1], c[2], c[3]);
  }
}

/* attn_dropout_keep is the header's formula: word j mod 4 of Philox(⌊j/4⌋, i, b·Hq + h, 0) under
 * the seed, kept when ≥ ⌊p·2³²⌋; rates near 1 − p; masks differ across seeds and heads. */
static void test_keep(void) {
  attn_params p;
  attn_params_init(&p, 3, 5, 5, 200, 300, 8, 8);
  CHECK(p.dropout == 0.0f && p.dropout_seed == 0);
  CHECK(attn_dropout_keep(&p, 0, 0, 0, 0) == 1);
  rng r = {77};
  static const float rates[] = {0.1f, 0.5f, 0.9f, 1e-6f, 0.999999f};
  for (int k = 0; k < 5; k++) {
    p.dropout = rates[k], p.dropout_seed = rng_next(&r);
    const uint32_t thr = (uint32_t)((double)p.dropout * 4294967296.0);
    int same = 1;
    for (int t = 0; t < 2000; t++) {
      const int64_t b = rng_int(&r, 0, 2), h = rng_int(&r, 0, 4), i = rng_int(&r, 0, 199),
                    j = rng_int(&r, 0, 299);
      uint32_t c[4] = {(uint32_t)(j / 4), (uint32_t)i, (uint32_t)(b * 5 + h), 0};
      attn__philox4x32_10(c, p.dropout_seed);
      same &= attn_dropout_keep(&p, b, h, i, j) == (c[j % 4] >= thr);
    }
    CHECKF(same, "attn_dropout_keep follows the header's formula (p = %g)", (double)p.dropout);
    if (k >= 3) continue;
    long kept = 0, n = 0, differ_seed = 0, differ_head = 0;
    attn_params other = p;
    other.dropout_seed = p.dropout_seed + 1;
    for (int64_t i = 0; i < 200; i++)
      for (int64_t j = 0; j < 300; j++, n++) {
        const int a = attn_dropout_keep(&p, 1, 2, i, j);
        kept += a;
        differ_seed += a != attn_dropout_keep(&other, 1, 2, i, j);
        differ_head += a != attn_dropout_keep(&p, 1, 3, i, j);
      }
    const double rate = (double)kept / (double)n, want = 1.0 - (double)p.dropout;
    const double sd = sqrt(want * (1 - want) / (double)n), cross = 2 * want * (1 - want);
    CHECKF(fabs(rate - want) < 6 * sd, "keep rate %.5f for p = %g (want %.3f ± %.5f)", rate,
           (double)p.dropout, want, 6 * sd);
    CHECKF(fabs((double)differ_seed / (double)n - cross) < 0.02 &&
               fabs((double)differ_head / (double)n - cross) < 0.02,
           "masks of other seeds and heads are independent (p = %g: %ld, %ld of %ld differ)",
           (double)p.dropout, differ_seed, differ_head, n);
  }
}

/* The kernels' row function (AVX2 where the CPU has it, and the portable one) against
 * attn_dropout_keep: kept values × 1/(1 − p) exactly, dropped ones 0, for rows starting anywhere.
 */
static void test_row(void) {
  attn_params p;
  attn_params_init(&p, 2, 3, 3, 100, 1000, 8, 8);
  rng r = {3};
  float x[300], y[300];
  int same = 1;
  for (int t = 0; t < 300; t++) {
    p.dropout = (float)rng_uniform(&r), p.dropout_seed = rng_next(&r);
    const int64_t b = rng_int(&r, 0, 1), h = rng_int(&r, 0, 2), i = rng_int(&r, 0, 99);
    const int64_t j0 = rng_int(&r, 0, 700);
    const int cols = (int)rng_int(&r, 1, 300);
    const float keep = (float)(1.0 / (1.0 - (double)p.dropout));
    for (int c = 0; c < cols; c++)
      x[c] = y[c] = rng_normal(&r);
    attn__dropout_row(&p, b, h, i, j0, cols, x);
    for (int c = 0; c < cols; c++) {
      const float want = attn_dropout_keep(&p, b, h, i, j0 + c) ? y[c] * keep : 0.0f;
      same &= memcmp(&x[c], &want, 4) == 0;
    }
    for (int c = 0; c < cols; c++)
      x[c] = y[c];
    attn__dropout_row_c(&p, b, h, i, j0, cols, x);
    for (int c = 0; c < cols; c++) {
      const float want = attn_dropout_keep(&p, b, h, i, j0 + c) ? y[c] * keep : 0.0f;
      same &= memcmp(&x[c], &want, 4) == 0;
    }
  }
  CHECKF(same, "the kernels' dropout rows (AVX2: %d, and portable) follow attn_dropout_keep",
         attn__cpu_get()->avx2_fma);
}

/* LSE and P bitwise those without dropout; O changed; 1, 2, 3 threads bitwise equal; the mean of
 * O over seeds is the output without dropout; a dropout near 1 gives O = 0 rows, no NaN. */
static void test_kernel(attn_kernel kern) {
  tspec s = tspec_shape(2, 4, 2, 33, 70, 16, 12);
  s.causal = 1, s.align = ATTN_ALIGN_BOTTOM_RIGHT, s.kv_len = 1, s.seed = 5;
  tcase c;
  tcase_make(&c, &s);
  const char *kn = attn_kernel_name(kern);
  tresult plain = t_run_gather(&c, kern, 2);
  c.p.dropout = 0.3f, c.p.dropout_seed = 99;
  tresult dropped = t_run_gather(&c, kern, 2);
  CHECKF(memcmp(plain.lse, dropped.lse, plain.nl * 4) == 0 &&
             memcmp(plain.probs, dropped.probs, plain.np * 4) == 0,
         "%s: dropout changes LSE or P", kn);
  CHECKF(memcmp(plain.o, dropped.o, plain.no * 4) != 0, "%s: dropout left O unchanged", kn);
  if (kern != ATTN_KERNEL_REF) {
    tresult one = t_run_gather(&c, kern, 1), three = t_run_gather(&c, kern, 3);
    CHECKF(tresult_same(&dropped, &one) && tresult_same(&dropped, &three),
           "%s: dropout differs across 1, 2, 3 threads", kn);
    tresult_free(&one), tresult_free(&three);
  }
  /* E[O] over seeds = O without dropout: per output, the mean of n samples within 6 standard
   * errors (estimated from the samples) */
  enum { SEEDS = 300 };
  double *sum = calloc(plain.no, sizeof *sum), *sq = calloc(plain.no, sizeof *sq);
  for (int t = 0; t < SEEDS; t++) {
    c.p.dropout_seed = 1000 + (uint64_t)t;
    tresult x = t_run_gather(&c, kern, 2);
    for (size_t e = 0; e < plain.no; e++)
      sum[e] += x.o[e], sq[e] += (double)x.o[e] * x.o[e];
    tresult_free(&x);
  }
  int mean_ok = 1;
  for (size_t e = 0; e < plain.no; e++) {
    const double mean = sum[e] / SEEDS, var = sq[e] / SEEDS - mean * mean;
    const double se = sqrt(var > 0 ? var / SEEDS : 0) + 1e-6;
    if (fabs(mean - plain.o[e]) > 6 * se) {
      if (mean_ok)
        fprintf(stderr, "  O[%zu]: mean %.6g over %d seeds, without dropout %.6g (se %.2g)\n", e,
                mean, SEEDS, (double)plain.o[e], se);
      mean_ok = 0;
    }
  }
  CHECKF(mean_ok, "%s: the mean of O over seeds is the output without dropout", kn);
  free(sum), free(sq);
  /* nearly everything dropped: finite outputs, rows of kept pairs only */
  c.p.dropout = 0.999999f;
  tresult all = t_run_gather(&c, kern, 2);
  int zeros = 1;
  for (size_t e = 0; e < all.no; e++)
    zeros &= all.o[e] == 0.0f;
  CHECKF(zeros, "%s: with dropout 0.999999 every weight of this case is dropped: O = 0", kn);
  tresult_free(&all), tresult_free(&plain), tresult_free(&dropped);
  tcase_free(&c);
}

static void test_errors(void) {
  enum { L = 6, D = 4 };
  float q[L * D] = {0}, o[L * D], lse[L], g[3][L * D];
  attn_params p;
  attn_params_init(&p, 1, 1, 1, L, L, D, D);
  for (int i = 0; i < L * D; i++)
    o[i] = -7.0f;
  const float bad[] = {-0.1f, 1.0f, 1.5f, NAN, INFINITY};
  for (int k = 0; k < 5; k++) {
    p.dropout = bad[k];
    CHECKF(attn_forward(&p, q, q, q, o, lse, NULL) == ATTN_STATUS_INVALID_ARGUMENT &&
               strstr(attn_last_error(), "dropout (") &&
               strstr(attn_last_error(), ") must be in [0, 1)"),
           "dropout %g refused: %s", (double)bad[k], attn_last_error());
    CHECK(attn_backward(&p, q, q, q, o, lse, q, g[0], g[1], g[2], NULL) ==
          ATTN_STATUS_INVALID_ARGUMENT);
  }
  int untouched = 1;
  for (int i = 0; i < L * D; i++)
    untouched &= o[i] == -7.0f;
  CHECK(untouched);
}

int main(void) {
  test_philox_kat();
  test_keep();
  test_row();
  test_errors();
  for (int k = 1; k < ATTN_KERNEL_COUNT_; k++) {
    const attn_kernel kern = (attn_kernel)k;
    if (!attn_kernel_supported(kern)) {
      printf("  kernel %s: SKIP (not supported on this CPU)\n", attn_kernel_name(kern));
      continue;
    }
    test_kernel(kern);
  }
  return t_finish("test_dropout");
}
