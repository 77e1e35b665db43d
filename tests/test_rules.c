/*
 * test_rules.c — each rule of the contract (../shared/design/semantics.md) as its own test, on
 * every kernel, plus metamorphic properties that need no oracle: empty rows; NaN/inf behind every
 * kind of mask; visible NaN propagation; −FLT_MAX bias is data; causal prefix property; GQA =
 * explicit head repetition; infinite scores; P rows sum to 1; causal flag = explicit mask; default
 * scale = explicit scale; batched = per item; Lk = 1; scale 0 averages; attention sinks (−inf =
 * none, bitwise; empty rows give LSE = sink; P sums to 1 − the sink's weight; invalid values);
 * query lengths (padding rows are empty rows, NaN in their Q and dO rows changes nothing);
 * K and V in strided and reversed layouts bitwise the contiguous call (decode and prefill).
 */
#include "harness.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static float *qv(tcase *c, int64_t b, int64_t h, int64_t i, int64_t d) {
  return tbuf_f32(&c->q) + tbuf_index(&c->q, b, h, i, d);
}
static float *kv(tcase *c, int64_t b, int64_t h, int64_t j, int64_t d) {
  return tbuf_f32(&c->k) + tbuf_index(&c->k, b, h, j, d);
}
static float *vv(tcase *c, int64_t b, int64_t h, int64_t j, int64_t d) {
  return tbuf_f32(&c->v) + tbuf_index(&c->v, b, h, j, d);
}

/* ---- empty rows ---- */
static void test_empty_rows(attn_kernel kern) {
  tspec s = tspec_shape(3, 2, 1, 70, 150, 16, 16);
  s.kv_len = 1;                                    /* batch 0 has kv_len 0 */
  s.mask = MASK_FULL;                              /* every 4th row of head 0 fully masked */
  s.bias = BIAS_NEGINF;                            /* rows with i % 5 == 2 all −inf */
  s.align = ATTN_ALIGN_BOTTOM_RIGHT, s.causal = 1; /* Lq < Lk: fine; and below Lq > Lk */
  for (int variant = 0; variant < 2; variant++) {
    if (variant) s.Lq = 150, s.Lk = 70; /* bottom-right, Lq > Lk: first 80 rows see nothing */
    tcase c;
    tcase_make(&c, &s);
    tresult r = t_run_gather(&c, kern, 2);
    size_t empty = 0, bad = 0;
    for (size_t row = 0; row < r.nl; row++) {
      for (size_t d = 0; d < 16; d++)
        bad += isnan(r.o[row * 16 + d]);
      if (r.lse[row] != -INFINITY) continue;
      empty++;
      for (size_t d = 0; d < 16; d++)
        bad += r.o[row * 16 + d] != 0.0f || signbit(r.o[row * 16 + d]);
      for (size_t j = 0; j < (size_t)s.Lk; j++)
        bad += r.probs[row * (size_t)s.Lk + j] != 0.0f;
    }
    CHECKF(empty > (size_t)s.Lq && bad == 0,
           "empty rows (%s, variant %d): %zu empty rows, %zu bad values", attn_kernel_name(kern),
           variant, empty, bad);
    tresult_free(&r);
    tcase_free(&c);
  }
}

/* ---- NaN and inf behind masks leave results bitwise unchanged ---- */

/* Poisons every K, V and bias value the case can never read and compares with zeros there. */
typedef void (*poison_fn)(tcase *c, float value);

static void poison_beyond_kv_len(tcase *c, float x) {
  for (int64_t b = 0; b < c->p.batch; b++)
    for (int64_t h = 0; h < c->p.heads_kv; h++)
      for (int64_t j = c->kv_len[b]; j < c->p.len_k; j++) {
        for (int64_t d = 0; d < c->p.dim; d++)
          *kv(c, b, h, j, d) = x;
        for (int64_t d = 0; d < c->p.dim_v; d++)
          *vv(c, b, h, j, d) = x;
      }
}

/* Key-padding mask [B,1,1,Lk]: masked keys are never visible to any row. */
static void poison_padded_keys(tcase *c, float x) {
  for (int64_t b = 0; b < c->p.batch; b++)
    for (int64_t j = 0; j < c->p.len_k; j++) {
      if (c->p.mask[b * c->p.mask_stride[0] + j * c->p.mask_stride[3]]) continue;
      for (int64_t h = 0; h < c->p.heads_kv; h++) {
        for (int64_t d = 0; d < c->p.dim; d++)
          *kv(c, b, h, j, d) = x;
        for (int64_t d = 0; d < c->p.dim_v; d++)
          *vv(c, b, h, j, d) = x;
      }
    }
}

/* Bias entries that the mask, causal rule, window or key length hide. */
static void poison_hidden_bias(tcase *c, float x) {
  const attn_params *p = &c->p;
  float *bias = tbuf_f32(&c->bias);
  for (int64_t b = 0; b < p->batch; b++)
    for (int64_t h = 0; h < p->heads_q; h++)
      for (int64_t i = 0; i < p->len_q; i++)
        for (int64_t j = 0; j < p->len_k; j++) {
          const int64_t klen = p->kv_len ? p->kv_len[b] : p->len_k;
          const int64_t pos = oracle_pos(p, b, i);
          int hidden = (p->q_len && i >= p->q_len[b]) || j >= klen || (p->causal && j > pos) ||
                       (p->window_left >= 0 && j < pos - p->window_left) ||
                       (p->window_right >= 0 && j > pos + p->window_right) ||
                       (p->mask && !p->mask[b * p->mask_stride[0] + h * p->mask_stride[1] +
                                            i * p->mask_stride[2] + j * p->mask_stride[3]]);
          if (hidden) bias[tbuf_index(&c->bias, b, h, i, j)] = x;
        }
}

/* Keys whose bias column is −inf for every row: their K and V are never read. */
static void poison_neginf_keys(tcase *c, float x) {
  float *bias = tbuf_f32(&c->bias);
  const attn_params *p = &c->p;
  for (int64_t j = 1; j < p->len_k; j += 3) {
    for (int64_t b = 0; b < p->batch; b++)
      for (int64_t h = 0; h < p->heads_q; h++)
        for (int64_t i = 0; i < p->len_q; i++)
          bias[tbuf_index(&c->bias, b, h, i, j)] = -INFINITY;
    for (int64_t b = 0; b < p->batch; b++)
      for (int64_t h = 0; h < p->heads_kv; h++) {
        for (int64_t d = 0; d < p->dim; d++)
          *kv(c, b, h, j, d) = x;
        for (int64_t d = 0; d < p->dim_v; d++)
          *vv(c, b, h, j, d) = x;
      }
  }
}

static void test_masked_values(attn_kernel kern) {
  struct {
    const char *name;
    tspec spec;
    poison_fn fn;
  } cases[8];
  tspec s = tspec_shape(3, 4, 2, 67, 200, 24, 20);
  s.kv_len = 1, s.align = ATTN_ALIGN_BOTTOM_RIGHT, s.causal = 1;
  cases[0].name = "beyond kv_len", cases[0].spec = s, cases[0].fn = poison_beyond_kv_len;
  s = tspec_shape(2, 4, 2, 130, 141, 24, 20);
  s.mask = MASK_KEYPAD;
  cases[1].name = "padded keys", cases[1].spec = s, cases[1].fn = poison_padded_keys;
  s = tspec_shape(2, 4, 2, 90, 140, 16, 16);
  s.bias = BIAS_FULL, s.mask = MASK_FULL, s.causal = 1, s.window_left = 30, s.window_right = 5;
  s.kv_len = 1, s.align = ATTN_ALIGN_TOP_LEFT;
  cases[2].name = "hidden bias", cases[2].spec = s, cases[2].fn = poison_hidden_bias;
  s = tspec_shape(2, 2, 1, 50, 260, 16, 16);
  s.bias = BIAS_FULL;
  cases[3].name = "-inf bias keys", cases[3].spec = s, cases[3].fn = poison_neginf_keys;
  s = tspec_shape(3, 8, 2, 2, 1500, 16, 16); /* decode: the split-key path */
  s.kv_len = 1, s.align = ATTN_ALIGN_BOTTOM_RIGHT, s.causal = 1;
  cases[4].name = "beyond kv_len (decode)", cases[4].spec = s, cases[4].fn = poison_beyond_kv_len;
  /* decode with masked keys inside tiles: a poisoned tile takes the packed, masked P·V, which must
   * give the direct path's bits */
  s = tspec_shape(2, 8, 2, 3, 1500, 24, 20);
  s.mask = MASK_KEYPAD;
  cases[5].name = "padded keys (decode)", cases[5].spec = s, cases[5].fn = poison_padded_keys;
  /* prefill with few query blocks: the split-key path on packed tiles, one row block per KV
   * group (V read in place, each tile scanned), then several (V's bad rows counted once, K packed
   * once) */
  s = tspec_shape(1, 2, 1, 40, 1500, 16, 16);
  s.mask = MASK_KEYPAD;
  cases[6].name = "padded keys (few items)", cases[6].spec = s, cases[6].fn = poison_padded_keys;
  s = tspec_shape(2, 1, 1, 200, 1500, 16, 16);
  s.kv_len = 1, s.align = ATTN_ALIGN_BOTTOM_RIGHT, s.causal = 1;
  cases[7].name = "beyond kv_len (few items)", cases[7].spec = s,
  cases[7].fn = poison_beyond_kv_len;
  const float poisons[] = {NAN, INFINITY, -INFINITY};
  for (int ci = 0; ci < 8; ci++)
    for (int pi = 0; pi < 3; pi++)
      for (int skip_probs = 0; skip_probs < 2; skip_probs++) { /* P off: the split-key paths */
        tcase clean, dirty;
        tcase_make(&clean, &cases[ci].spec);
        tcase_make(&dirty, &cases[ci].spec);
        clean.skip_probs = dirty.skip_probs = skip_probs;
        cases[ci].fn(&clean, 0.0f);
        cases[ci].fn(&dirty, poisons[pi]);
        tresult a = t_run_gather(&clean, kern, 2), b = t_run_gather(&dirty, kern, 2);
        CHECKF(tresult_same(&a, &b), "%s (%s%s): %g stored behind the mask changed the result",
               cases[ci].name, attn_kernel_name(kern), skip_probs ? ", no P" : "",
               (double)poisons[pi]);
        tresult_free(&a), tresult_free(&b);
        tcase_free(&clean), tcase_free(&dirty);
      }

  /* a key visible to some rows only: NaN in its V reaches exactly those rows */
  tspec t = tspec_shape(1, 1, 1, 10, 300, 8, 4);
  t.causal = 1, t.align = ATTN_ALIGN_BOTTOM_RIGHT; /* row i sees keys ≤ 290 + i */
  tcase clean, dirty;
  tcase_make(&clean, &t);
  tcase_make(&dirty, &t);
  const int64_t jn = 295; /* visible to rows 5..9 only */
  *vv(&clean, 0, 0, jn, 2) = 0.0f;
  *vv(&dirty, 0, 0, jn, 2) = NAN;
  tresult a = t_run_gather(&clean, kern, 1), b = t_run_gather(&dirty, kern, 1);
  int ok = 1;
  for (int64_t i = 0; i < 10; i++)
    for (int64_t d = 0; d < 4; d++) {
      const float x = a.o[i * 4 + d], y = b.o[i * 4 + d];
      if (i >= 5 && d == 2)
        ok &= isnan(y) != 0;
      else
        ok &= memcmp(&x, &y, 4) == 0;
    }
  CHECKF(ok && memcmp(a.lse, b.lse, 40) == 0,
         "NaN in V of a key visible to rows 5..9 must reach O[5..9][2] only (%s)",
         attn_kernel_name(kern));
  tresult_free(&a), tresult_free(&b);
  tcase_free(&clean), tcase_free(&dirty);
}

/* ---- visible NaN propagates to exactly the dependent outputs ---- */
static void test_visible_nan(attn_kernel kern) {
  tspec s = tspec_shape(1, 2, 1, 40, 150, 8, 6);
  tcase clean, dirty;
  tcase_make(&clean, &s);
  tresult a = t_run_gather(&clean, kern, 1);
  /* NaN in Q of row 7, head 1 → that row's O and LSE are NaN, nothing else changes */
  tcase_make(&dirty, &s);
  *qv(&dirty, 0, 1, 7, 3) = NAN;
  tresult b = t_run_gather(&dirty, kern, 1);
  size_t row = 1 * 40 + 7, wrong = 0;
  for (size_t r = 0; r < 80; r++) {
    for (size_t d = 0; d < 6; d++) {
      const float x = a.o[r * 6 + d], y = b.o[r * 6 + d];
      wrong += r == row ? !isnan(y) : memcmp(&x, &y, 4) != 0;
    }
    wrong += r == row ? !isnan(b.lse[r]) : memcmp(&a.lse[r], &b.lse[r], 4) != 0;
  }
  CHECKF(wrong == 0, "NaN in q: %zu outputs wrong (%s)", wrong, attn_kernel_name(kern));
  tresult_free(&b);
  tcase_free(&dirty);
  /* NaN in V[key 100][col 4] → column 4 of every row NaN; LSE and other columns unchanged */
  tcase_make(&dirty, &s);
  *vv(&dirty, 0, 0, 100, 4) = NAN;
  b = t_run_gather(&dirty, kern, 1);
  wrong = 0;
  for (size_t r = 0; r < 80; r++) {
    for (size_t d = 0; d < 6; d++) {
      const float x = a.o[r * 6 + d], y = b.o[r * 6 + d];
      wrong += d == 4 ? !isnan(y) : memcmp(&x, &y, 4) != 0;
    }
    wrong += memcmp(&a.lse[r], &b.lse[r], 4) != 0;
  }
  CHECKF(wrong == 0, "NaN in v: %zu outputs wrong (%s)", wrong, attn_kernel_name(kern));
  tresult_free(&b);
  tcase_free(&dirty);
  /* NaN in K of a visible key → every row that sees it is NaN */
  tcase_make(&dirty, &s);
  *kv(&dirty, 0, 0, 3, 0) = NAN;
  b = t_run_gather(&dirty, kern, 1);
  wrong = 0;
  for (size_t r = 0; r < 80 * 6; r++)
    wrong += !isnan(b.o[r]);
  CHECKF(wrong == 0, "NaN in k: %zu outputs not NaN (%s)", wrong, attn_kernel_name(kern));
  tresult_free(&a), tresult_free(&b);
  tcase_free(&clean), tcase_free(&dirty);
}

/* ---- a −FLT_MAX bias is data: a uniform average, no NaN ---- */
static void test_flt_max_bias(attn_kernel kern) {
  const float values[] = {-FLT_MAX, -1e30f};
  for (int vi = 0; vi < 2; vi++) {
    tspec s = tspec_shape(1, 1, 1, 5, 200, 4, 3);
    s.bias = BIAS_FULL;
    s.q_mul = 0.0f; /* all scores equal: the bias decides */
    tcase c;
    tcase_make(&c, &s);
    float *bias = tbuf_f32(&c.bias);
    for (int64_t x = 0; x < tbuf_count(&c.bias); x++)
      bias[x] = values[vi];
    tresult r = t_run_gather(&c, kern, 1);
    for (int64_t d = 0; d < 3; d++) {
      double mean = 0;
      for (int64_t j = 0; j < 200; j++)
        mean += *vv(&c, 0, 0, j, d);
      mean /= 200;
      for (int64_t i = 0; i < 5; i++)
        CHECKF(fabs(r.o[i * 3 + d] - mean) < 1e-5, "bias %g: o[%lld][%lld] = %g, mean %g (%s)",
               (double)values[vi], (long long)i, (long long)d, (double)r.o[i * 3 + d], mean,
               attn_kernel_name(kern));
    }
    CHECK(isfinite(r.lse[0]));
    tresult_free(&r);
    tcase_free(&c);
  }
}

/* ---- infinite scores: −inf weighs nothing (a row of only −inf is empty), +inf makes NaN ---- */
static void test_infinite_scores(attn_kernel kern) {
  tspec s = tspec_shape(1, 1, 1, 40, 40, 4, 3);
  s.causal = 1; /* row 0 sees key 0 only */
  tcase c;
  tcase_make(&c, &s);
  *kv(&c, 0, 0, 0, 0) = -INFINITY;
  for (int64_t i = 0; i < 40; i++) /* q·k0 = −inf on even rows, +inf on odd rows */
    *qv(&c, 0, 0, i, 0) = i % 2 ? -1.0f : 1.0f;
  tresult r = t_run_gather(&c, kern, 2);
  size_t wrong = 0;
  for (size_t i = 0; i < 40; i++) {
    for (size_t d = 0; d < 3; d++) {
      const float o = r.o[i * 3 + d];
      wrong += i == 0 ? (o != 0.0f || signbit(o)) : i % 2 ? !isnan(o) : !isfinite(o);
    }
    wrong += i == 0 ? r.lse[i] != -INFINITY : i % 2 ? !isnan(r.lse[i]) : !isfinite(r.lse[i]);
    if (i % 2 == 0) wrong += r.probs[i * 40] != 0.0f; /* key 0 weighs nothing */
  }
  CHECKF(wrong == 0, "infinite scores: %zu outputs wrong (%s)", wrong, attn_kernel_name(kern));
  tresult_free(&r);
  tcase_free(&c);
}

/* ---- causal prefix: changing later tokens never changes earlier outputs ---- */
/* Four batch items × two KV heads (groups of two): the fused kernels run lanes of (b, KV head)
 * pairs with each pair's K packed in the worker (fwd_tiled's head_items), and the second V tile,
 * NaN in its later rows, takes the masked path for rows that see only its finite part: the same
 * bits. */
static void test_causal_prefix(attn_kernel kern) {
  enum { B = 4, HQ = 4, HKV = 2, L = 200, D = 16 };
  tspec s = tspec_shape(B, HQ, HKV, L, L, D, D);
  s.causal = 1;
  tcase a, b;
  tcase_make(&a, &s);
  tcase_make(&b, &s);
  const int64_t t = 137;
  for (int64_t bb = 0; bb < B; bb++)
    for (int64_t j = t + 1; j < L; j++)
      for (int64_t d = 0; d < D; d++) {
        for (int64_t h = 0; h < HQ; h++)
          *qv(&b, bb, h, j, d) += 1.0f;
        for (int64_t h = 0; h < HKV; h++) {
          *kv(&b, bb, h, j, d) = -*kv(&b, bb, h, j, d);
          *vv(&b, bb, h, j, d) = NAN;
        }
      }
  tresult ra = t_run_gather(&a, kern, 2), rb = t_run_gather(&b, kern, 2);
  int same = 1;
  for (int64_t bh = 0; bh < B * HQ; bh++)
    same &= memcmp(ra.o + bh * L * D, rb.o + bh * L * D, (t + 1) * D * 4) == 0 &&
            memcmp(ra.lse + bh * L, rb.lse + bh * L, (t + 1) * 4) == 0;
  CHECKF(same, "causal prefix changed by later tokens (%s)", attn_kernel_name(kern));
  tresult_free(&ra), tresult_free(&rb);
  tcase_free(&a), tcase_free(&b);
}

/* ---- GQA equals explicit head repetition, bitwise ---- */
static void test_gqa(attn_kernel kern) {
  const int64_t groups[] = {2, 3, 4, 7, 8};
  for (int gi = 0; gi < 5; gi++) {
    const int64_t g = groups[gi], Hkv = gi % 2 ? 1 : 2, Hq = Hkv * g;
    tspec s = tspec_shape(2, Hq, Hkv, 33, 150, 16, 12);
    s.causal = gi % 2, s.align = ATTN_ALIGN_TOP_LEFT;
    tcase c;
    tcase_make(&c, &s);
    tresult gqa = t_run_gather(&c, kern, 2);
    /* the same K/V viewed as Hq heads: stride 0 can't express h / g, so copy */
    tspec m = s;
    m.Hkv = Hq;
    tcase mha;
    tcase_make(&mha, &m);
    memcpy(tbuf_f32(&mha.q), tbuf_f32(&c.q), sizeof(float) * (size_t)tbuf_count(&c.q));
    for (int64_t b = 0; b < 2; b++)
      for (int64_t h = 0; h < Hq; h++)
        for (int64_t j = 0; j < 150; j++) {
          for (int64_t d = 0; d < 16; d++)
            *kv(&mha, b, h, j, d) = *kv(&c, b, h / g, j, d);
          for (int64_t d = 0; d < 12; d++)
            *vv(&mha, b, h, j, d) = *vv(&c, b, h / g, j, d);
        }
    tresult rep = t_run_gather(&mha, kern, 2);
    CHECKF(tresult_same(&gqa, &rep), "GQA group %lld differs from repeated heads (%s)",
           (long long)g, attn_kernel_name(kern));
    tresult_free(&gqa), tresult_free(&rep);
    tcase_free(&c), tcase_free(&mha);
  }
}

/* ---- equivalent spellings give identical bits ---- */
static void test_equivalences(attn_kernel kern) {
  /* causal flag = explicit lower-triangular mask */
  tspec s = tspec_shape(2, 3, 3, 150, 150, 16, 16);
  s.causal = 1;
  tcase c;
  tcase_make(&c, &s);
  tresult flag = t_run_gather(&c, kern, 2);
  uint8_t *tri = malloc(150 * 150);
  for (int i = 0; i < 150; i++)
    for (int j = 0; j < 150; j++)
      tri[i * 150 + j] = j <= i;
  c.p.causal = 0;
  c.p.mask = tri;
  c.p.mask_stride[0] = c.p.mask_stride[1] = 0, c.p.mask_stride[2] = 150, c.p.mask_stride[3] = 1;
  tresult mask = t_run_gather(&c, kern, 2);
  CHECKF(tresult_same(&flag, &mask), "causal flag and explicit causal mask differ (%s)",
         attn_kernel_name(kern));
  c.p.mask = NULL;
  /* default scale = explicit 1/sqrt(D) rounded to float */
  tresult dflt = t_run_gather(&c, kern, 2);
  c.p.has_scale = 1, c.p.scale = (float)(1.0 / sqrt(16.0));
  tresult expl = t_run_gather(&c, kern, 2);
  CHECKF(tresult_same(&dflt, &expl), "default and explicit scale differ (%s)",
         attn_kernel_name(kern));
  /* window ≥ Lk equals no window */
  c.p.window_left = c.p.window_right = 1000;
  tresult wide = t_run_gather(&c, kern, 2);
  CHECKF(tresult_same(&wide, &expl), "window >= Lk differs from no window (%s)",
         attn_kernel_name(kern));
  free(tri);
  tresult_free(&flag), tresult_free(&mask), tresult_free(&dflt), tresult_free(&expl);
  tresult_free(&wide);
  tcase_free(&c);

  /* batched = per item */
  s = tspec_shape(3, 2, 1, 70, 90, 8, 8);
  s.mask = MASK_FULL, s.bias = BIAS_FULL;
  tcase_make(&c, &s);
  tresult all = t_run_gather(&c, kern, 2);
  int same = 1;
  for (int64_t b = 0; b < 3; b++) {
    attn_params one = c.p;
    one.batch = 1;
    one.mask = c.p.mask + b * c.p.mask_stride[0];
    one.bias = c.p.bias + b * c.p.bias_stride[0];
    float o[2 * 70 * 8], lse[2 * 70];
    one.kernel = kern;
    CHECK(attn_forward(&one, tbuf_f32(&c.q) + b * c.p.q_stride[0],
                       tbuf_f32(&c.k) + b * c.p.k_stride[0], tbuf_f32(&c.v) + b * c.p.v_stride[0],
                       o, lse, NULL) == ATTN_STATUS_OK);
    same &= memcmp(o, all.o + b * 2 * 70 * 8, sizeof o) == 0 &&
            memcmp(lse, all.lse + b * 2 * 70, sizeof lse) == 0;
  }
  CHECKF(same, "batched and per-item results differ (%s)", attn_kernel_name(kern));
  tresult_free(&all);
  tcase_free(&c);
}

/* ---- layouts: the same numbers in any memory layout give bitwise the same outputs ---- */

/* K [Hkv, Lk, D] and V [Hkv, Lk, Dv] stored contiguously, with column stride 3 (the gaps NaN)
 * and with column stride −1 (columns reversed in memory), fp32 and bf16; decode (Lq 1 and 5
 * against 1500 keys: the split-key direct forms) and prefill (Lq 100). */
static void test_layouts_bitwise(attn_kernel kern) {
  enum { HQ = 4, HKV = 2, LK = 1500, D = 40, DV = 24, LQ_MAX = 100 };
  const int64_t n_k = (int64_t)HKV * LK * D, n_v = (int64_t)HKV * LK * DV;
  float *q = malloc(sizeof(float) * HQ * LQ_MAX * D), *o[3], lse[3][HQ * LQ_MAX];
  float *k[3], *v[3];
  uint16_t *kb[3], *vb[3];
  for (int l = 0; l < 3; l++) {
    k[l] = malloc(sizeof(float) * (size_t)n_k * 3), v[l] = malloc(sizeof(float) * (size_t)n_v * 3);
    kb[l] = malloc(2 * (size_t)n_k * 3), vb[l] = malloc(2 * (size_t)n_v * 3);
    o[l] = malloc(sizeof(float) * HQ * LQ_MAX * DV);
    for (int64_t i = 0; i < n_k * 3; i++)
      k[l][i] = NAN;
    for (int64_t i = 0; i < n_v * 3; i++)
      v[l][i] = NAN;
  }
  rng rg = {7};
  for (int64_t i = 0; i < (int64_t)HQ * LQ_MAX * D; i++)
    q[i] = (float)rng_uniform(&rg) * 2.0f - 1.0f;
  /* element (row r, column d) of a row of n columns: layout 0 at r·n + d, layout 1 at 3(r·n + d),
   * layout 2 at r·n + (n − 1 − d) */
  for (int64_t r = 0; r < (int64_t)HKV * LK; r++)
    for (int d = 0; d < D + DV; d++) {
      const float x = (float)rng_uniform(&rg) * 2.0f - 1.0f;
      const int n = d < D ? D : DV, c = d < D ? d : d - D;
      float *const *t = d < D ? k : v;
      t[0][r * n + c] = x, t[1][3 * (r * n + c)] = x, t[2][r * n + (n - 1 - c)] = x;
    }
  for (int l = 0; l < 3; l++) {
    attn_from_f32(ATTN_DTYPE_BF16, k[l], kb[l], (size_t)n_k * 3);
    attn_from_f32(ATTN_DTYPE_BF16, v[l], vb[l], (size_t)n_v * 3);
  }
  static const int lqs[] = {1, 5, LQ_MAX};
  for (int dt = 0; dt < 2; dt++)
    for (size_t qi = 0; qi < sizeof lqs / sizeof *lqs; qi++) {
      for (int l = 0; l < 3; l++) {
        attn_params p;
        attn_params_init(&p, 1, HQ, HKV, lqs[qi], LK, D, DV);
        p.kernel = kern, p.threads = 2;
        p.k_dtype = p.v_dtype = dt ? ATTN_DTYPE_BF16 : ATTN_DTYPE_F32;
        const void *kp = dt ? (const void *)kb[l] : k[l], *vp = dt ? (const void *)vb[l] : v[l];
        if (l == 1) {
          for (int t = 0; t < 3; t++)
            p.k_stride[t] *= 3, p.v_stride[t] *= 3;
          p.k_stride[3] = p.v_stride[3] = 3;
        }
        if (l == 2) { /* point at column 0, the last of each row in memory */
          p.k_stride[3] = p.v_stride[3] = -1;
          kp = dt ? (const void *)(kb[2] + D - 1) : (const void *)(k[2] + D - 1);
          vp = dt ? (const void *)(vb[2] + DV - 1) : (const void *)(v[2] + DV - 1);
        }
        CHECK(attn_forward(&p, q, kp, vp, o[l], lse[l], NULL) == ATTN_STATUS_OK);
      }
      const size_t no = (size_t)HQ * (size_t)lqs[qi] * DV, nl = (size_t)HQ * (size_t)lqs[qi];
      for (int l = 1; l < 3; l++) {
        const int eq =
            !memcmp(o[0], o[l], sizeof(float) * no) && !memcmp(lse[0], lse[l], sizeof(float) * nl);
        CHECKF(eq, "%s, Lq %d, %s K and V: not bitwise the contiguous call's (%s)",
               dt ? "bf16" : "fp32", lqs[qi], l == 1 ? "column stride 3" : "column stride -1",
               attn_kernel_name(kern));
      }
    }
  for (int l = 0; l < 3; l++)
    free(k[l]), free(v[l]), free(kb[l]), free(vb[l]), free(o[l]);
  free(q);
}

/* ---- probabilities and simple exact cases ---- */
static void test_probs_and_simple(attn_kernel kern) {
  tspec s = tspec_shape(2, 2, 1, 77, 301, 16, 8);
  s.mask = MASK_FULL, s.alibi = 1, s.causal = 1, s.align = ATTN_ALIGN_BOTTOM_RIGHT;
  tcase c;
  tcase_make(&c, &s);
  tresult r = t_run_gather(&c, kern, 2);
  size_t bad = 0;
  for (size_t row = 0; row < r.nl; row++) {
    double sum = 0;
    for (size_t j = 0; j < 301; j++)
      sum += r.probs[row * 301 + j];
    bad += r.lse[row] == -INFINITY ? sum != 0.0 : fabs(sum - 1.0) > 1e-5;
  }
  CHECKF(bad == 0, "%zu rows of P do not sum to 1 (%s)", bad, attn_kernel_name(kern));
  tresult_free(&r);
  tcase_free(&c);

  /* Lk = 1: O is exactly that V row */
  s = tspec_shape(2, 2, 2, 50, 1, 8, 8);
  tcase_make(&c, &s);
  r = t_run_gather(&c, kern, 1);
  bad = 0;
  for (int64_t b = 0; b < 2; b++)
    for (int64_t h = 0; h < 2; h++)
      for (int64_t i = 0; i < 50; i++)
        for (int64_t d = 0; d < 8; d++)
          bad += r.o[((b * 2 + h) * 50 + i) * 8 + d] != *vv(&c, b, h, 0, d);
  CHECKF(bad == 0, "Lk = 1: %zu outputs differ from the V row (%s)", bad, attn_kernel_name(kern));
  tresult_free(&r);
  tcase_free(&c);

  /* scale 0: every visible key weighs the same, O = mean of V */
  s = tspec_shape(1, 1, 1, 3, 257, 8, 4);
  s.has_scale = 1, s.scale = 0.0f;
  tcase_make(&c, &s);
  r = t_run_gather(&c, kern, 1);
  for (int64_t d = 0; d < 4; d++) {
    double mean = 0;
    for (int64_t j = 0; j < 257; j++)
      mean += *vv(&c, 0, 0, j, d);
    mean /= 257;
    CHECKF(fabs(r.o[d] - mean) < 1e-5, "scale 0: o = %g, mean of V = %g (%s)", (double)r.o[d], mean,
           attn_kernel_name(kern));
  }
  CHECK(fabs(r.lse[0] - log(257.0)) < 1e-5);
  tresult_free(&r);
  tcase_free(&c);
}

/* ---- attention sinks ---- */
static void test_sinks(attn_kernel kern) {
  tspec s = tspec_shape(2, 4, 2, 37, 150, 16, 8);
  s.kv_len = 1, s.causal = 1, s.align = ATTN_ALIGN_BOTTOM_RIGHT; /* batch 0 has kv_len 0 */
  s.mask = MASK_FULL;                                            /* and fully masked rows */
  tcase c;
  tcase_make(&c, &s);
  const float *none = NULL;
  tresult plain = t_run_gather(&c, kern, 2);
  float sinks[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
  c.p.sinks = sinks; /* every sink −inf: no sink, bitwise */
  tresult off = t_run_gather(&c, kern, 2);
  CHECKF(tresult_same(&plain, &off), "sinks of -inf differ from no sinks (%s)",
         attn_kernel_name(kern));
  sinks[0] = 0.5f, sinks[1] = -3.0f, sinks[2] = 2.0f, sinks[3] = 80.0f;
  tresult r = t_run_gather(&c, kern, 2);
  size_t bad_empty = 0, bad_sum = 0, bad_big = 0, n_empty = 0;
  for (int64_t b = 0; b < 2; b++)
    for (int64_t h = 0; h < 4; h++)
      for (int64_t i = 0; i < 37; i++) {
        const size_t row = (size_t)((b * 4 + h) * 37 + i);
        double sum = 0, omax = 0;
        for (size_t j = 0; j < 150; j++)
          sum += r.probs[row * 150 + j];
        for (size_t d = 0; d < 8; d++)
          omax = fmax(omax, fabs(r.o[row * 8 + d]));
        if (plain.lse[row] == -INFINITY) { /* no visible key: LSE = sink, O = +0, P = 0 */
          n_empty++;
          bad_empty += r.lse[row] != sinks[h] || sum != 0.0 || omax != 0.0;
          for (size_t d = 0; d < 8; d++)
            bad_empty += signbit(r.o[row * 8 + d]) != 0;
          continue;
        }
        /* P sums to 1 minus the sink's weight; the sink's weight is exp(sink − LSE) */
        bad_sum += fabs(sum - (1.0 - exp((double)sinks[h] - r.lse[row]))) > 1e-5;
        /* LSE = log(exp(LSE without the sink) + exp(sink)) */
        const double want = log(exp((double)plain.lse[row] - sinks[h]) + 1.0) + sinks[h];
        bad_sum += fabs(r.lse[row] - want) > 1e-5 * (1 + fabs(want));
        if (h == 3) bad_big += omax > 1e-20; /* a sink of 80 takes nearly all the weight */
      }
  CHECKF(n_empty > 0 && bad_empty == 0, "%zu of %zu empty rows wrong with sinks (%s)", bad_empty,
         n_empty, attn_kernel_name(kern));
  CHECKF(bad_sum == 0, "%zu rows' P or LSE wrong with sinks (%s)", bad_sum, attn_kernel_name(kern));
  CHECKF(bad_big == 0, "%zu rows under a sink of 80 have |O| > 1e-20 (%s)", bad_big,
         attn_kernel_name(kern));
  /* invalid sinks: named, nothing written */
  touts out;
  touts_make(&out, &c, 1, 0);
  const float bad_values[2] = {NAN, INFINITY};
  for (int v = 0; v < 2; v++) {
    sinks[2] = bad_values[v];
    CHECK(t_run(&c, kern, 1, &out) == ATTN_STATUS_INVALID_ARGUMENT &&
          strstr(attn_last_error(), "sinks[2]") != NULL);
    CHECK(tbuf_check_output(&out.o, "o", 0));
  }
  sinks[2] = 2.0f;
  /* attn_backward_sinks: needs sinks and a dsinks that overlaps nothing */
  float ds[4] = {7, 7, 7, 7};
  c.p.sinks = none;
  CHECK(attn_backward_sinks(&c.p, r.o, r.lse, r.o, ds) == ATTN_STATUS_INVALID_ARGUMENT &&
        strstr(attn_last_error(), "sinks is NULL") && ds[0] == 7);
  c.p.sinks = sinks;
  attn_params packed = c.p; /* r holds packed outputs */
  attn_strides_packed(packed.o_stride, 4, 37, 8);
  attn_strides_packed(packed.dout_stride, 4, 37, 8);
  packed.lse_stride[0] = 4 * 37, packed.lse_stride[1] = 37, packed.lse_stride[2] = 1;
  CHECK(attn_backward_sinks(&packed, r.o, r.lse, r.o, NULL) == ATTN_STATUS_INVALID_ARGUMENT &&
        strstr(attn_last_error(), "dsinks is NULL"));
  CHECK(attn_backward_sinks(&packed, r.o, r.lse, r.o, r.o + 3) == ATTN_STATUS_INVALID_ARGUMENT &&
        strstr(attn_last_error(), "overlaps"));
  CHECK(attn_backward_sinks(&packed, r.o, r.lse, r.o, ds) == ATTN_STATUS_OK);
  CHECK(!isnan(ds[3]) && !isinf(ds[3])); /* the gradient of the sink of 80 is a number */
  touts_free(&out);
  tresult_free(&plain), tresult_free(&off), tresult_free(&r);
  tcase_free(&c);
}

/* ---- query lengths: rows past q_len[b] are padding ---- */
/* They come out as empty rows (O = +0, LSE = −inf or the sink, P = 0); NaN stored in their Q rows
 * and in their dO rows changes nothing — forward, backward and the sinks' gradient bitwise — and
 * their dQ rows are +0. */
static void test_q_len(attn_kernel kern) {
  tspec s = tspec_shape(3, 4, 2, 37, 150, 16, 8);
  s.q_len = s.kv_len = 1, s.causal = 1, s.align = ATTN_ALIGN_BOTTOM_RIGHT, s.sinks = 1;
  tcase c, poisoned;
  tcase_make(&c, &s);
  tcase_make(&poisoned, &s);
  const int64_t *ql = c.q_len;
  size_t n_pad = 0, bad = 0;
  for (int64_t b = 0; b < 3; b++)
    for (int64_t h = 0; h < 4; h++)
      for (int64_t i = ql[b]; i < 37; i++, n_pad++)
        for (int64_t d = 0; d < 16; d++)
          tbuf_f32(&poisoned.q)[tbuf_index(&poisoned.q, b, h, i, d)] = NAN;
  tresult r = t_run_gather(&c, kern, 2), rp = t_run_gather(&poisoned, kern, 2);
  CHECKF(tresult_same(&r, &rp), "NaN in padding query rows changed the result (%s)",
         attn_kernel_name(kern));
  for (int64_t b = 0; b < 3; b++)
    for (int64_t h = 0; h < 4; h++)
      for (int64_t i = ql[b]; i < 37; i++) {
        const size_t row = (size_t)((b * 4 + h) * 37 + i);
        const float want_lse = c.sinks[h]; /* the sinks include −inf: LSE = sink, or −inf */
        bad += memcmp(&r.lse[row], &want_lse, sizeof want_lse) != 0;
        for (size_t d = 0; d < 8; d++)
          bad += r.o[row * 8 + d] != 0.0f || signbit(r.o[row * 8 + d]);
        for (size_t j = 0; j < 150; j++)
          bad += r.probs[row * 150 + j] != 0.0f;
      }
  CHECKF(n_pad > 37 && bad == 0, "%zu values of %zu padding rows are not empty rows (%s)", bad,
         n_pad, attn_kernel_name(kern));

  /* the backward: dO NaN in the padding rows changes nothing; their dQ is +0 */
  tgrad g;
  tgrad_make(&g, &c, 0, kern, 5);
  tgrads clean = t_backward_gather(&c, &g, kern, 2);
  attn_params pk = c.p; /* the sinks' gradient on the same O, LSE, dO */
  memcpy(pk.o_stride, g.o.stride, sizeof pk.o_stride);
  memcpy(pk.lse_stride, g.lse.stride, sizeof pk.lse_stride);
  memcpy(pk.dout_stride, g.dout.stride, sizeof pk.dout_stride);
  float ds_clean[4], ds_poisoned[4];
  CHECK(attn_backward_sinks(&pk, tbuf_f32(&g.o), tbuf_f32(&g.lse), tbuf_f32(&g.dout), ds_clean) ==
        ATTN_STATUS_OK);
  for (int64_t b = 0; b < 3; b++)
    for (int64_t h = 0; h < 4; h++)
      for (int64_t i = ql[b]; i < 37; i++)
        for (int64_t d = 0; d < 8; d++)
          tbuf_f32(&g.dout)[tbuf_index(&g.dout, b, h, i, d)] = NAN;
  tgrads dirty = t_backward_gather(&c, &g, kern, 2);
  CHECKF(tgrads_same(&clean, &dirty), "NaN in padding dO rows changed the gradients (%s)",
         attn_kernel_name(kern));
  CHECK(attn_backward_sinks(&pk, tbuf_f32(&g.o), tbuf_f32(&g.lse), tbuf_f32(&g.dout),
                            ds_poisoned) == ATTN_STATUS_OK);
  CHECKF(memcmp(ds_clean, ds_poisoned, sizeof ds_clean) == 0 && isfinite(ds_clean[0]),
         "dsinks read padding rows (%s)", attn_kernel_name(kern));
  bad = 0;
  for (int64_t b = 0; b < 3; b++)
    for (int64_t h = 0; h < 4; h++)
      for (int64_t i = ql[b]; i < 37; i++)
        for (size_t d = 0; d < 16; d++) {
          const float x = clean.dq[(size_t)((b * 4 + h) * 37 + i) * 16 + d];
          bad += x != 0.0f || signbit(x);
        }
  CHECKF(bad == 0, "%zu dQ values of padding rows are not +0 (%s)", bad, attn_kernel_name(kern));
  /* q_len out of range: named, nothing written */
  touts out;
  touts_make(&out, &c, 1, 0);
  c.q_len[1] = 38;
  CHECK(t_run(&c, kern, 1, &out) == ATTN_STATUS_INVALID_ARGUMENT &&
        strstr(attn_last_error(), "q_len[1] (38) must be in [0, len_q = 37]"));
  CHECK(tbuf_check_output(&out.o, "o", 0));
  c.q_len[1] = 0, c.p.align = ATTN_ALIGN_UNSET;
  CHECK(t_run(&c, kern, 1, &out) == ATTN_STATUS_INVALID_ARGUMENT &&
        strstr(attn_last_error(), "or q_len is given"));
  touts_free(&out);
  tgrads_free(&clean), tgrads_free(&dirty);
  tgrad_free(&g);
  tresult_free(&r), tresult_free(&rp);
  tcase_free(&c), tcase_free(&poisoned);
}

int main(void) {
  for (int k = 1; k < ATTN_KERNEL_COUNT_; k++) {
    const attn_kernel kern = (attn_kernel)k;
    if (!attn_kernel_supported(kern)) {
      printf("  kernel %s: SKIP (not supported on this CPU)\n", attn_kernel_name(kern));
      continue;
    }
    test_empty_rows(kern);
    test_masked_values(kern);
    test_visible_nan(kern);
    test_flt_max_bias(kern);
    test_infinite_scores(kern);
    test_causal_prefix(kern);
    test_gqa(kern);
    test_equivalences(kern);
    test_layouts_bitwise(kern);
    test_probs_and_simple(kern);
    test_sinks(kern);
    test_q_len(kern);
  }
  return t_finish("test_rules");
}
