/*
 * fuzz_merge.c — libFuzzer target for attn_merge and attn_merge_backward. The input bytes choose
 * sizes (valid and not), the number of parts (0 to 6, sometimes out of range), strides per tensor
 * (fuzz_draw.h's: packed, [B, L, H, D], padded, zero, negative, arbitrary), log-sum-exps of every
 * kind (finite, large, −inf for an empty part, NaN) and outputs fresh, in place over part 0
 * (allowed) or overlapping a part otherwise (refused). Every tensor is allocated to exactly its
 * extent. Then:
 *   - a refused call leaves every output byte as it was and names the function;
 *   - an accepted merge matches the formula evaluated here in long double: per row
 *     LSE = log Σ_k exp(LSE_k), O = Σ_k exp(LSE_k − LSE)·O_k (empty parts skipped, a row empty in
 *     every part gives O = +0, LSE = −inf, a NaN LSE_k makes the row NaN);
 *   - the backward of the accepted merge matches dO_k = W_k·dO and
 *     dLSE_k = W_k·(dO·(O_k − O) + dLSE), W_k = exp(LSE_k − LSE), and is bitwise the same on 1
 *     and 3 threads.
 * Any violation aborts, which libFuzzer reports with the input that caused it.
 */
#include "attn.h"
#include "fuzz_draw.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REQUIRE(cond, ...)                                                                         \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "fuzz_merge: " __VA_ARGS__);                                                 \
      fputc('\n', stderr);                                                                         \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

enum { MAX_PARTS = 6 };

/* A float tensor's extent as floats, and its allocation (fuzz_draw.h allocates bytes). */
static size_t count(const tensor *t) { return t->size / sizeof(float); }
static float *fbuf(const tensor *t) { return t->buf; }

/* make() for a tensor whose extent was checked to fit. */
#define MAKE(t, nd, n, s) REQUIRE(make(t, nd, n, s, sizeof(float)), "cannot allocate %s", #t)

static float pick_lse(bytes *b) {
  static const float special[] = {-INFINITY, -INFINITY, NAN, 80.0f, -80.0f, 1e30f, -1e30f, 0.0f};
  const unsigned k = next(b);
  return k % 4 == 0 ? special[(k / 4) % 8] : (float)((int)(k % 97) - 48) * 0.37f;
}

static int64_t off(const int64_t *s, int nd, int64_t b, int64_t h, int64_t i, int64_t d) {
  return b * s[0] + h * s[1] + i * s[2] + (nd > 3 ? d * s[3] : 0);
}

/* |got − want| within fp32 rounding of the long double formula, or the same NaN / inf. */
static int close_to(float got, long double want) {
  if (isnan(want)) return isnan(got);
  if (isinf(want)) return got == (float)want;
  return fabsl((long double)got - want) <= 1e-5L + 1e-5L * fabsl(want);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  bytes b = {data, size, 0};
  const int64_t B = next(&b) % 3, Hq = 1 + next(&b) % 3, Lq = next(&b) % 9, Dv = next(&b) % 7;
  const unsigned nb = next(&b);
  const int n = nb % 16 == 15 ? -1 : nb % 16 == 14 ? ATTN_MAX_MERGE_PARTS + 1 : (int)(nb % 7);
  attn_params p;
  attn_params_init(&p, B, Hq, 1, Lq, 1, 1, Dv);
  p.threads = 1 + (int)(next(&b) % 3);
  const int64_t no[4] = {B, Hq, Lq, Dv}, nl[3] = {B, Hq, Lq};
  pick_strides(&b, 4, no, p.o_stride);
  pick_strides(&b, 3, nl, p.lse_stride);
  pick_strides(&b, 4, no, p.dout_stride);
  int64_t lo, hi; /* extents too large for the harness (huge strides) are fuzz_api's business */
  if (extent(4, no, p.o_stride, &lo, &hi) < 0 || extent(3, nl, p.lse_stride, &lo, &hi) < 0 ||
      extent(4, no, p.dout_stride, &lo, &hi) < 0)
    return 0;

  tensor o[MAX_PARTS], l[MAX_PARTS], mo, ml;
  const int np = n > 0 && n <= MAX_PARTS ? n : 0;
  const float *op[MAX_PARTS + 1], *lp[MAX_PARTS + 1];
  for (int k = 0; k < np; k++) {
    MAKE(&o[k], 4, no, p.o_stride);
    MAKE(&l[k], 3, nl, p.lse_stride);
    for (size_t i = 0; i < count(&o[k]); i++) /* finite values, sometimes a NaN */
      fbuf(&o[k])[i] = next(&b) % 64 == 0 ? NAN : (float)((int)(next(&b) % 41) - 20) * 0.05f;
    for (size_t i = 0; i < count(&l[k]); i++)
      fbuf(&l[k])[i] = pick_lse(&b);
    op[k] = o[k].base, lp[k] = l[k].base;
  }
  /* outputs: fresh, in place over part 0 (its own strides: allowed), or over part 0's bytes
   * while its strides make it a different tensor (must be refused) */
  const unsigned where = next(&b) % 8;
  MAKE(&mo, 4, no, p.o_stride);
  MAKE(&ml, 3, nl, p.lse_stride);
  poison(&mo), poison(&ml);
  float *out_o = mo.base, *out_l = ml.base;
  const int in_place = where == 0 && np > 0 && o[0].buf && l[0].buf;
  if (in_place) out_o = o[0].base, out_l = l[0].base;
  const int want_lse = next(&b) % 4 != 0;
  attn_status st =
      attn_merge(&p, n, np ? op : NULL, np ? lp : NULL, out_o, want_lse ? out_l : NULL);
  if (n < 0 || n > ATTN_MAX_MERGE_PARTS) REQUIRE(st != ATTN_STATUS_OK, "n_parts %d accepted", n);
  if (st != ATTN_STATUS_OK) {
    REQUIRE(strncmp(attn_last_error(), "attn_merge", 10) == 0, "message '%s'", attn_last_error());
    REQUIRE(in_place || (untouched(&mo) && untouched(&ml)), "refused merge (%s) wrote an output",
            attn_last_error());
  }
  if (st == ATTN_STATUS_OK && !in_place) {
    /* the formula, in long double, from the parts (unchanged: not in place) */
    for (int64_t bb = 0; bb < B; bb++)
      for (int64_t h = 0; h < Hq; h++)
        for (int64_t i = 0; i < Lq; i++) {
          long double m = -INFINITY, sum = 0;
          int nan_row = 0;
          for (int k = 0; k < np; k++) {
            const long double lk = lp[k][off(p.lse_stride, 3, bb, h, i, 0)];
            nan_row |= isnan(lk);
            if (lk > m) m = lk;
          }
          for (int k = 0; k < np && !nan_row && m != -INFINITY; k++)
            sum += expl(lp[k][off(p.lse_stride, 3, bb, h, i, 0)] - m);
          const long double lse = nan_row ? NAN : m == -INFINITY ? -INFINITY : m + logl(sum);
          if (want_lse)
            REQUIRE(close_to(out_l[off(p.lse_stride, 3, bb, h, i, 0)], lse),
                    "LSE[%lld,%lld,%lld] = %g, want %Lg", (long long)bb, (long long)h, (long long)i,
                    out_l[off(p.lse_stride, 3, bb, h, i, 0)], lse);
          for (int64_t d = 0; d < Dv; d++) {
            long double acc = 0;
            int nan_o = nan_row;
            for (int k = 0; k < np && !nan_row && m != -INFINITY; k++) {
              const long double w = expl(lp[k][off(p.lse_stride, 3, bb, h, i, 0)] - m) / sum;
              const float x = op[k][off(p.o_stride, 4, bb, h, i, d)];
              if (w == 0) continue; /* a part that contributes nothing: its NaN neither */
              nan_o |= isnan(x);
              acc += w * x;
            }
            const float got = out_o[off(p.o_stride, 4, bb, h, i, d)];
            REQUIRE(nan_o ? isnan(got) : close_to(got, acc),
                    "O[%lld,%lld,%lld,%lld] = %g, want %Lg", (long long)bb, (long long)h,
                    (long long)i, (long long)d, got, acc);
          }
        }
  }
  /* the backward of an accepted merge with its LSE: 1 and 3 threads, against the formula */
  if (st == ATTN_STATUS_OK && want_lse && !in_place && np > 0) {
    tensor dout, dlse, dpo[2][MAX_PARTS], dpl[2][MAX_PARTS];
    MAKE(&dout, 4, no, p.dout_stride);
    MAKE(&dlse, 3, nl, p.lse_stride);
    for (size_t i = 0; i < count(&dout); i++)
      fbuf(&dout)[i] = (float)((int)(next(&b) % 21) - 10) * 0.1f;
    for (size_t i = 0; i < count(&dlse); i++)
      fbuf(&dlse)[i] = (float)((int)(next(&b) % 21) - 10) * 0.1f;
    const int with_dlse = next(&b) % 2;
    float *po[2][MAX_PARTS], *pl[2][MAX_PARTS];
    for (int t = 0; t < 2; t++)
      for (int k = 0; k < np; k++) {
        MAKE(&dpo[t][k], 4, no, p.dout_stride);
        MAKE(&dpl[t][k], 3, nl, p.lse_stride);
        poison(&dpo[t][k]), poison(&dpl[t][k]);
        po[t][k] = dpo[t][k].base, pl[t][k] = dpl[t][k].base;
      }
    attn_params p1 = p, p3 = p;
    p1.threads = 1, p3.threads = 3;
    const attn_status s1 = attn_merge_backward(&p1, np, op, lp, out_o, out_l, dout.base,
                                               with_dlse ? dlse.base : NULL, po[0], pl[0]);
    const attn_status s3 = attn_merge_backward(&p3, np, op, lp, out_o, out_l, dout.base,
                                               with_dlse ? dlse.base : NULL, po[1], pl[1]);
    REQUIRE(s1 == s3, "1 and 3 threads disagree on validity");
    if (s1 != ATTN_STATUS_OK) {
      REQUIRE(strncmp(attn_last_error(), "attn_merge_backward", 19) == 0, "message '%s'",
              attn_last_error());
      for (int k = 0; k < np; k++)
        REQUIRE(untouched(&dpo[0][k]) && untouched(&dpl[0][k]), "refused backward wrote part %d",
                k);
    } else {
      for (int k = 0; k < np; k++)
        REQUIRE((!dpo[0][k].buf || !memcmp(dpo[0][k].buf, dpo[1][k].buf, dpo[0][k].size)) &&
                    (!dpl[0][k].buf || !memcmp(dpl[0][k].buf, dpl[1][k].buf, dpl[0][k].size)),
                "1 and 3 threads differ in part %d", k);
      for (int64_t bb = 0; bb < B; bb++)
        for (int64_t h = 0; h < Hq; h++)
          for (int64_t i = 0; i < Lq; i++) {
            const long double lse = out_l[off(p.lse_stride, 3, bb, h, i, 0)];
            const long double dl = with_dlse ? fp(&dlse)[off(p.lse_stride, 3, bb, h, i, 0)] : 0;
            for (int k = 0; k < np; k++) {
              const long double lk = lp[k][off(p.lse_stride, 3, bb, h, i, 0)];
              const long double w = lk == -INFINITY || lse == -INFINITY ? 0 : expl(lk - lse);
              long double dot = 0;
              for (int64_t d = 0; d < Dv; d++) {
                const long double g = fp(&dout)[off(p.dout_stride, 4, bb, h, i, d)];
                REQUIRE(close_to(po[0][k][off(p.dout_stride, 4, bb, h, i, d)], w * g),
                        "dO part %d [%lld,%lld,%lld,%lld] wrong", k, (long long)bb, (long long)h,
                        (long long)i, (long long)d);
                if (w != 0)
                  dot += g * ((long double)op[k][off(p.o_stride, 4, bb, h, i, d)] -
                              out_o[off(p.o_stride, 4, bb, h, i, d)]);
              }
              const long double want = w * (dot + dl);
              /* dO·(O_k − O) cancels: the tolerance is relative to its terms, not its result */
              long double scale = fabsl(dl) + 1;
              for (int64_t d = 0; d < Dv; d++)
                scale += fabsl(fp(&dout)[off(p.dout_stride, 4, bb, h, i, d)] *
                               ((long double)fabsf(op[k][off(p.o_stride, 4, bb, h, i, d)]) +
                                fabsf(out_o[off(p.o_stride, 4, bb, h, i, d)])));
              const float got = pl[0][k][off(p.lse_stride, 3, bb, h, i, 0)];
              const long double tol = 1e-5L * (1 + (w != 0 ? w * scale : 0)); /* w = 0: exact */
              REQUIRE(isnan(want) ? isnan(got) : fabsl((long double)got - want) <= tol,
                      "dLSE part %d [%lld,%lld,%lld] = %g, want %Lg", k, (long long)bb,
                      (long long)h, (long long)i, got, want);
            }
          }
    }
    drop(&dout), drop(&dlse);
    for (int t = 0; t < 2; t++)
      for (int k = 0; k < np; k++)
        drop(&dpo[t][k]), drop(&dpl[t][k]);
  }
  for (int k = 0; k < np; k++)
    drop(&o[k]), drop(&l[k]);
  drop(&mo), drop(&ml);
  return 0;
}
