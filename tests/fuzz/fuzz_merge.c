/*
 * fuzz_merge.c — libFuzzer target for attn_merge and attn_merge_backward. The input bytes choose
 * sizes (valid and not), the number of parts (0 to 6, sometimes out of range), strides per tensor
 * (packed, padded, zero, negative), log-sum-exps of every kind (finite, large, −inf for an empty
 * part, NaN) and outputs fresh, in place over part 0 (allowed) or overlapping a part otherwise
 * (refused). Every tensor is allocated to exactly its extent. Then:
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

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct bytes {
  const uint8_t *d;
  size_t n, i;
} bytes;

static unsigned next(bytes *b) { return b->i < b->n ? b->d[b->i++] : 0; }

#define REQUIRE(cond, ...)                                                                         \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "fuzz_merge: " __VA_ARGS__);                                                 \
      fputc('\n', stderr);                                                                         \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

enum { MAX_PARTS = 6 };

/* A strided float tensor allocated to exactly its extent (buf NULL when it has no element). */
typedef struct tensor {
  float *buf, *base;
  size_t n; /* floats in the extent */
} tensor;

static void make(tensor *t, int nd, const int64_t *size, const int64_t *stride) {
  int64_t lo = 0, hi = 0;
  memset(t, 0, sizeof *t);
  for (int d = 0; d < nd; d++)
    if (size[d] == 0) return;
  for (int d = 0; d < nd; d++) {
    const int64_t span = stride[d] * (size[d] - 1);
    if (span < 0)
      lo += span;
    else
      hi += span;
  }
  t->n = (size_t)(hi - lo + 1);
  t->buf = malloc(t->n * sizeof(float));
  if (!t->buf) abort();
  t->base = t->buf - lo;
}

static void poison(tensor *t) {
  if (t->buf) memset(t->buf, 0x5a, t->n * sizeof(float));
}

static int untouched(const tensor *t) {
  for (size_t i = 0; t->buf && i < t->n * sizeof(float); i++)
    if (((const unsigned char *)t->buf)[i] != 0x5a) return 0;
  return 1;
}

/* Strides for [n0, n1, n2(, n3)]: packed, padded, one dimension 0 or reversed. */
static void pick_strides(bytes *b, int nd, const int64_t *n, int64_t *s) {
  int64_t acc = 1;
  for (int d = nd - 1; d >= 0; d--)
    s[d] = acc, acc *= n[d] > 0 ? n[d] : 1;
  const unsigned mode = next(b) % 8, d = next(b) % (unsigned)nd;
  if (mode == 4)
    for (int e = 0; e < nd - 1; e++)
      s[e] += (int64_t)(next(b) % 3) * (e == nd - 2 ? 1 : s[e + 1]);
  else if (mode == 5)
    s[d] = 0;
  else if (mode == 6)
    s[d] = -s[d];
}

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

  tensor o[MAX_PARTS], l[MAX_PARTS], mo, ml;
  const int np = n > 0 && n <= MAX_PARTS ? n : 0;
  const float *op[MAX_PARTS + 1], *lp[MAX_PARTS + 1];
  for (int k = 0; k < np; k++) {
    make(&o[k], 4, no, p.o_stride), make(&l[k], 3, nl, p.lse_stride);
    for (size_t i = 0; i < o[k].n; i++) /* finite values, sometimes a NaN */
      o[k].buf[i] = next(&b) % 64 == 0 ? NAN : (float)((int)(next(&b) % 41) - 20) * 0.05f;
    for (size_t i = 0; i < l[k].n; i++)
      l[k].buf[i] = pick_lse(&b);
    op[k] = o[k].base, lp[k] = l[k].base;
  }
  /* outputs: fresh, in place over part 0 (its own strides: allowed), or over part 0's bytes
   * while its strides make it a different tensor (must be refused) */
  const unsigned where = next(&b) % 8;
  make(&mo, 4, no, p.o_stride), make(&ml, 3, nl, p.lse_stride);
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
    make(&dout, 4, no, p.dout_stride), make(&dlse, 3, nl, p.lse_stride);
    for (size_t i = 0; i < dout.n; i++)
      dout.buf[i] = (float)((int)(next(&b) % 21) - 10) * 0.1f;
    for (size_t i = 0; i < dlse.n; i++)
      dlse.buf[i] = (float)((int)(next(&b) % 21) - 10) * 0.1f;
    const int with_dlse = next(&b) % 2;
    float *po[2][MAX_PARTS], *pl[2][MAX_PARTS];
    for (int t = 0; t < 2; t++)
      for (int k = 0; k < np; k++) {
        make(&dpo[t][k], 4, no, p.dout_stride), make(&dpl[t][k], 3, nl, p.lse_stride);
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
        REQUIRE((!dpo[0][k].buf || !memcmp(dpo[0][k].buf, dpo[1][k].buf, dpo[0][k].n * 4)) &&
                    (!dpl[0][k].buf || !memcmp(dpl[0][k].buf, dpl[1][k].buf, dpl[0][k].n * 4)),
                "1 and 3 threads differ in part %d", k);
      for (int64_t bb = 0; bb < B; bb++)
        for (int64_t h = 0; h < Hq; h++)
          for (int64_t i = 0; i < Lq; i++) {
            const long double lse = out_l[off(p.lse_stride, 3, bb, h, i, 0)];
            const long double dl = with_dlse ? dlse.base[off(p.lse_stride, 3, bb, h, i, 0)] : 0;
            for (int k = 0; k < np; k++) {
              const long double lk = lp[k][off(p.lse_stride, 3, bb, h, i, 0)];
              const long double w = lk == -INFINITY || lse == -INFINITY ? 0 : expl(lk - lse);
              long double dot = 0;
              for (int64_t d = 0; d < Dv; d++) {
                const long double g = dout.base[off(p.dout_stride, 4, bb, h, i, d)];
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
                scale += fabsl(dout.base[off(p.dout_stride, 4, bb, h, i, d)] *
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
    free(dout.buf), free(dlse.buf);
    for (int t = 0; t < 2; t++)
      for (int k = 0; k < np; k++)
        free(dpo[t][k].buf), free(dpl[t][k].buf);
  }
  for (int k = 0; k < np; k++)
    free(o[k].buf), free(l[k].buf);
  free(mo.buf), free(ml.buf);
  return 0;
}
