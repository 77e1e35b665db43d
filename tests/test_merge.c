/*
 * test_merge.c — attn_merge and attn_merge_backward:
 *   1. keys split into parts (contiguous ranges, empty parts, parts in which rows have no visible
 *      key), each part an attn_forward whose mask is the whole call's visibility restricted to the
 *      part (so causal, windows, kv_len, masks and −inf biases split exactly), merged, and held to
 *      the fp64 oracle of the whole call under the forward's tolerance rule; in place too;
 *   2. the split backward: each part's attn_backward with the merged O and LSE gives dQ (summed)
 *      and dK, dV (concatenated) of the whole call;
 *   3. attn_merge_backward against central differences of attn_merge;
 *   4. the empty and NaN rules and the errors.
 */
#include "harness.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void *xcalloc(size_t n, size_t size) {
  void *p = calloc(n ? n : 1, size);
  if (!p) exit(3);
  return p;
}

/* One split of a case's keys into parts [cuts[k], cuts[k+1]). */
typedef struct split {
  int n;
  attn_params *pp;  /* per-part params: packed O/LSE, a mask from the whole call's visibility */
  uint8_t **mask;   /* [B, Hq, Lq, len_k] */
  float **o, **lse; /* packed parts */
} split;

static void split_make(split *sp, const tcase *c, int n, const int64_t *cuts) {
  const attn_params *p = &c->p;
  const int64_t B = p->batch, Hq = p->heads_q, Lq = p->len_q, Dv = p->dim_v;
  sp->n = n;
  sp->pp = xcalloc((size_t)n, sizeof *sp->pp);
  sp->mask = xcalloc((size_t)n, sizeof *sp->mask);
  sp->o = xcalloc((size_t)n, sizeof *sp->o);
  sp->lse = xcalloc((size_t)n, sizeof *sp->lse);
  for (int k = 0; k < n; k++) {
    const int64_t a = cuts[k], len = cuts[k + 1] - cuts[k];
    attn_params *q = &sp->pp[k];
    attn_params_init(q, B, Hq, p->heads_kv, Lq, len, p->dim, Dv);
    memcpy(q->q_stride, p->q_stride, sizeof q->q_stride);
    memcpy(q->k_stride, p->k_stride, sizeof q->k_stride);
    memcpy(q->v_stride, p->v_stride, sizeof q->v_stride);
    q->has_scale = p->has_scale, q->scale = p->scale, q->softcap = p->softcap;
    q->threads = 2;
    sp->mask[k] = xcalloc((size_t)(B * Hq * Lq * len), 1);
    for (int64_t b = 0; b < B; b++) {
      const int64_t klen = p->kv_len ? p->kv_len[b] : p->len_k;
      for (int64_t h = 0; h < Hq; h++)
        for (int64_t i = 0; i < Lq; i++) {
          const int64_t pos = oracle_pos(p, b, i);
          for (int64_t j = 0; j < len; j++)
            sp->mask[k][((b * Hq + h) * Lq + i) * len + j] =
                (uint8_t)oracle_visible(p, b, h, i, a + j, klen, pos);
        }
    }
    q->mask = sp->mask[k];
    if (p->bias) { /* the part's slice of the bias, same strides */
      q->bias = p->bias + a * p->bias_stride[3];
      memcpy(q->bias_stride, p->bias_stride, sizeof q->bias_stride);
    }
    sp->o[k] = xcalloc((size_t)(B * Hq * Lq * Dv), sizeof(float));
    sp->lse[k] = xcalloc((size_t)(B * Hq * Lq), sizeof(float));
    const float *kp = tbuf_f32(&c->k), *vp = tbuf_f32(&c->v);
    attn_status st = attn_forward(q, tbuf_f32(&c->q), kp ? kp + a * p->k_stride[2] : NULL,
                                  vp ? vp + a * p->v_stride[2] : NULL, sp->o[k], sp->lse[k], NULL);
    CHECKF(st == ATTN_STATUS_OK, "part %d forward: %s", k, attn_last_error());
  }
}

static void split_free(split *sp) {
  for (int k = 0; k < sp->n; k++)
    free(sp->mask[k]), free(sp->o[k]), free(sp->lse[k]);
  free(sp->pp), free(sp->mask), free(sp->o), free(sp->lse);
}

/* Merges a split of the case and checks O and LSE against the whole call's oracle. */
static void check_merge(tspec s, int n, const int64_t *cuts) {
  tcase c;
  tcase_make(&c, &s);
  split sp;
  split_make(&sp, &c, n, cuts);
  const size_t no = (size_t)(s.B * s.Hq * s.Lq * s.Dv), nl = (size_t)(s.B * s.Hq * s.Lq);
  float *o = xcalloc(no, sizeof(float)), *lse = xcalloc(nl, sizeof(float));
  attn_status st =
      attn_merge(&sp.pp[0], n, (const float *const *)sp.o, (const float *const *)sp.lse, o, lse);
  CHECKF(st == ATTN_STATUS_OK, "attn_merge: %s", attn_last_error());
  double *ro = xcalloc(no, sizeof(double)), *rl = xcalloc(nl, sizeof(double));
  float *bo = xcalloc(no, sizeof(float)), *bl = xcalloc(nl, sizeof(float));
  const float *q = tbuf_f32(&c.q), *k = tbuf_f32(&c.k), *v = tbuf_f32(&c.v);
  oracle_forward(&c.p, q, k, v, ro, rl, NULL);
  baseline_forward(&c.p, 2, q, k, v, bo, bl, NULL); /* online softmax: the merge's own peer */
  const float *bos[1] = {bo}, *bls[1] = {bl};
  char label[512];
  tcase_label(&c, label, sizeof label);
  CHECKF(t_compare(label, "O(merged)", o, ro, bos, 1, no, TOL_FACTOR_FWD, TOL_MAX_FACTOR) &&
             t_compare(label, "LSE(merged)", lse, rl, bls, 1, nl, TOL_FACTOR_FWD, TOL_MAX_FACTOR),
         "merge of %d parts equals one call over the union of the keys", n);
  /* empty rows: +0 and −inf exactly */
  size_t bad = 0;
  for (size_t r = 0; r < nl; r++)
    if (rl[r] == -INFINITY) {
      bad += lse[r] != -INFINITY;
      for (size_t d = 0; d < (size_t)s.Dv; d++)
        bad += o[r * (size_t)s.Dv + d] != 0.0f || signbit(o[r * (size_t)s.Dv + d]);
    }
  CHECKF(bad == 0, "rows empty in every part merge to O = +0, LSE = -inf (%zu bad)", bad);
  /* in place: into part 0, bitwise the same */
  if (n > 0) {
    st = attn_merge(&sp.pp[0], n, (const float *const *)sp.o, (const float *const *)sp.lse, sp.o[0],
                    sp.lse[0]);
    CHECKF(st == ATTN_STATUS_OK && memcmp(sp.o[0], o, no * sizeof(float)) == 0 &&
               memcmp(sp.lse[0], lse, nl * sizeof(float)) == 0,
           "in-place merge equals the out-of-place one (%s)", attn_last_error());
  }
  free(o), free(lse), free(ro), free(rl), free(bo), free(bl);
  split_free(&sp);
  tcase_free(&c);
}

/* The split backward: parts' attn_backward with the merged O and LSE sum to the whole one. */
static void check_split_backward(tspec s, int n, const int64_t *cuts) {
  tcase c;
  tcase_make(&c, &s);
  tgrad g;
  tgrad_make(&g, &c, 0, ATTN_KERNEL_AUTO, s.seed); /* dO (and the whole call's O, LSE) */
  tgrads whole = t_backward_gather(&c, &g, ATTN_KERNEL_AUTO, 2);
  tgrads ref = t_backward_gather(&c, &g, ATTN_KERNEL_REF, 1);
  split sp;
  split_make(&sp, &c, n, cuts);
  const int64_t Hkv = s.Hkv, D = s.D, Dv = s.Dv, Lk = s.Lk;
  float *o = xcalloc((size_t)tbuf_count(&g.o), 4), *lse = xcalloc((size_t)tbuf_count(&g.lse), 4);
  float *dout = xcalloc((size_t)tbuf_count(&g.dout), 4);
  tbuf_gather(&g.dout, dout);
  attn_status st =
      attn_merge(&sp.pp[0], n, (const float *const *)sp.o, (const float *const *)sp.lse, o, lse);
  float *dq = xcalloc(whole.nq, 4), *dk = xcalloc(whole.nk, 4), *dv = xcalloc(whole.nv, 4);
  float *dq_k = xcalloc(whole.nq, 4);
  for (int k = 0; k < n && st == ATTN_STATUS_OK; k++) {
    const int64_t a = cuts[k];
    attn_params q = sp.pp[k]; /* packed O, LSE, dO, dQ; K, V, dK, dV as views from key a on */
    attn_strides_packed(q.dk_stride, Hkv, Lk, D);
    attn_strides_packed(q.dv_stride, Hkv, Lk, Dv);
    st = attn_backward(&q, tbuf_f32(&c.q), tbuf_f32(&c.k) + a * c.p.k_stride[2],
                       tbuf_f32(&c.v) + a * c.p.v_stride[2], o, lse, dout, dq_k, dk + a * D,
                       dv + a * Dv, NULL);
    for (size_t i = 0; i < whole.nq; i++)
      dq[i] += dq_k[i];
  }
  CHECKF(st == ATTN_STATUS_OK, "split backward: %s", attn_last_error());
  char label[512];
  tcase_label(&c, label, sizeof label);
  const struct {
    const char *name;
    const float *got, *base, *r;
    size_t n;
  } parts[] = {{"dQ(split)", dq, whole.dq, ref.dq, whole.nq},
               {"dK(split)", dk, whole.dk, ref.dk, whole.nk},
               {"dV(split)", dv, whole.dv, ref.dv, whole.nv}};
  for (int i = 0; i < 3; i++) {
    double *r = xcalloc(parts[i].n, sizeof(double));
    for (size_t j = 0; j < parts[i].n; j++)
      r[j] = parts[i].r[j];
    const float *bases[1] = {parts[i].base};
    CHECKF(t_compare(label, parts[i].name, parts[i].got, r, bases, 1, parts[i].n, TOL_FACTOR_BWD,
                     TOL_MAX_FACTOR_BWD),
           "key-split backward with the merged O and LSE equals the whole backward (%s)",
           parts[i].name);
    free(r);
  }
  free(o), free(lse), free(dout), free(dq), free(dk), free(dv), free(dq_k);
  tgrads_free(&whole), tgrads_free(&ref);
  split_free(&sp);
  tgrad_free(&g);
  tcase_free(&c);
}

/* attn_merge_backward against central differences of L = Σ W∘O + Σ w∘LSE of attn_merge. */
static void check_merge_backward(void) {
  enum { N = 3, B = 1, H = 2, LQ = 3, DV = 4, NO = B * H * LQ * DV, NL = B * H * LQ };
  attn_params p;
  attn_params_init(&p, B, H, H, LQ, 8, 4, DV);
  rng r = {99};
  static float o[N][NO], lse[N][NL], w[NO], wl[NL], mo[NO], ml[NL], dop[N][NO], dlp[N][NL];
  for (int k = 0; k < N; k++) {
    for (int i = 0; i < NO; i++)
      o[k][i] = rng_normal(&r);
    for (int i = 0; i < NL; i++)
      lse[k][i] = k == 1 && i == 2 ? -INFINITY : 2.0f * rng_normal(&r); /* one empty part row */
  }
  for (int i = 0; i < NO; i++)
    w[i] = rng_normal(&r);
  for (int i = 0; i < NL; i++)
    wl[i] = rng_normal(&r);
  const float *op[N] = {o[0], o[1], o[2]}, *lp[N] = {lse[0], lse[1], lse[2]};
  float *dp[N] = {dop[0], dop[1], dop[2]}, *dl[N] = {dlp[0], dlp[1], dlp[2]};
  CHECK(attn_merge(&p, N, op, lp, mo, ml) == ATTN_STATUS_OK);
  CHECK(attn_merge_backward(&p, N, op, lp, mo, ml, w, wl, dp, dl) == ATTN_STATUS_OK);
  double worst = 0;
  for (int k = 0; k < N; k++)
    for (int which = 0; which < 2; which++)
      for (int i = 0; i < (which ? NL : NO); i++) {
        float *x = which ? &lse[k][i] : &o[k][i];
        if (!isfinite(*x)) {
          CHECK(dlp[k][i] == 0.0f); /* an empty part gets no gradient */
          continue;
        }
        const float keep = *x, h = 1e-2f; /* fp32 outputs: noise ~1e-5, curvature ~1e-3 */
        double l[2];
        for (int sgn = 0; sgn < 2; sgn++) {
          *x = keep + (sgn ? -h : h);
          attn_merge(&p, N, op, lp, mo, ml);
          l[sgn] = 0;
          for (int j = 0; j < NO; j++)
            l[sgn] += (double)w[j] * mo[j];
          for (int j = 0; j < NL; j++)
            l[sgn] += (double)wl[j] * ml[j];
        }
        *x = keep;
        const double fd = (l[0] - l[1]) / (2.0 * h), got = which ? dlp[k][i] : dop[k][i];
        const double err = fabs(fd - got) / (1e-2 + fabs(fd));
        if (err > worst) worst = err;
      }
  CHECKF(worst < 1e-2, "attn_merge_backward equals central differences (worst relative %.2g)",
         worst);
}

/* Zero parts, all-empty rows, NaN, and the errors. */
static void check_rules_and_errors(void) {
  attn_params p;
  attn_params_init(&p, 1, 1, 1, 2, 4, 4, 3);
  float o[6], lse[2], o0[6] = {1, 2, 3, 4, 5, 6}, l0[2] = {-INFINITY, NAN}, o1[6] = {0},
                      l1[2] = {-INFINITY, 1.0f};
  CHECK(attn_merge(&p, 0, NULL, NULL, o, lse) == ATTN_STATUS_OK);
  CHECK(o[0] == 0.0f && !signbit(o[5]) && lse[0] == -INFINITY && lse[1] == -INFINITY);
  const float *op[2] = {o0, o1}, *lp[2] = {l0, l1};
  CHECK(attn_merge(&p, 2, op, lp, o, lse) == ATTN_STATUS_OK);
  CHECK(o[0] == 0.0f && o[2] == 0.0f && lse[0] == -INFINITY); /* empty in both: +0, −inf */
  CHECK(isnan(o[3]) && isnan(lse[1]));                        /* a NaN LSE poisons its row */
  float keep[6];
  memcpy(keep, o, sizeof o);
  CHECK(attn_merge(&p, -1, op, lp, o, lse) == ATTN_STATUS_INVALID_ARGUMENT &&
        strstr(attn_last_error(), "n_parts"));
  CHECK(attn_merge(&p, 2, NULL, lp, o, lse) == ATTN_STATUS_INVALID_ARGUMENT &&
        strstr(attn_last_error(), "o_parts"));
  CHECK(attn_merge(&p, 2, op, lp, o0 + 1, lse) == ATTN_STATUS_INVALID_ARGUMENT &&
        strstr(attn_last_error(), "overlaps"));
  CHECK(attn_merge(&p, 2, op, lp, NULL, lse) == ATTN_STATUS_INVALID_ARGUMENT &&
        strstr(attn_last_error(), "o is NULL"));
  p.dim_v = -1;
  CHECK(attn_merge(&p, 2, op, lp, o, lse) == ATTN_STATUS_INVALID_ARGUMENT &&
        strstr(attn_last_error(), "dim_v"));
  p.dim_v = 3;
  CHECK(memcmp(keep, o, sizeof o) == 0); /* nothing written on error */
  float *dp[2] = {o, keep};
  CHECK(attn_merge_backward(&p, 2, op, lp, o1, l1, NULL, NULL, dp, NULL) ==
            ATTN_STATUS_INVALID_ARGUMENT &&
        strstr(attn_last_error(), "dout is NULL"));
  CHECK(attn_merge_backward(&p, 2, op, lp, o1, l1, o0, NULL, NULL, NULL) ==
            ATTN_STATUS_INVALID_ARGUMENT &&
        strstr(attn_last_error(), "do_parts"));

  /* Dv = 0: every O-shaped tensor has no element and may be NULL, with any strides; only the
   * LSEs merge (found by fuzz_merge: the merge once offset the NULL pointers and multiplied the
   * huge strides, undefined behaviour under UBSan) */
  p.dim_v = 0, p.len_q = 3;
  for (int d = 0; d < 4; d++) /* 2·2^62 overflows: such strides must never be multiplied */
    p.o_stride[d] = p.dout_stride[d] = (int64_t)1 << 62;
  const float *none[2] = {NULL, NULL};
  float lz0[3] = {0.0f, -INFINITY, 1.0f}, lz1[3] = {0.0f, 2.0f, -INFINITY}, lz[3], dl[3], dl0[3],
        dl1[3];
  const float *lzp[2] = {lz0, lz1};
  float *no_do[2] = {NULL, NULL}, *dlp[2] = {dl0, dl1};
  CHECK(attn_merge(&p, 2, none, lzp, NULL, lz) == ATTN_STATUS_OK);
  CHECK(fabsf(lz[0] - logf(2.0f)) < 1e-6f && lz[1] == 2.0f && lz[2] == 1.0f);
  dl[0] = 1.0f, dl[1] = 3.0f, dl[2] = 5.0f;
  CHECK(attn_merge_backward(&p, 2, none, lzp, NULL, lz, NULL, dl, no_do, dlp) == ATTN_STATUS_OK);
  CHECK(fabsf(dl0[0] - 0.5f) < 1e-6f && fabsf(dl1[0] - 0.5f) < 1e-6f); /* W_k·dLSE */
  CHECK(dl0[1] == 0.0f && dl1[1] == 3.0f && dl0[2] == 5.0f && dl1[2] == 0.0f);
}

int main(void) {
  const int64_t cuts3[] = {0, 40, 40, 97}; /* an empty part in the middle */
  const int64_t cuts4[] = {0, 1, 64, 65, 97};
  const int64_t cuts1[] = {0, 97};
  tspec s = tspec_shape(2, 4, 2, 33, 97, 16, 12);
  s.seed = 1;
  check_merge(s, 3, cuts3);
  check_merge(s, 1, cuts1);
  for (int f = 0; f < t_n_features; f++) {
    tspec t = s;
    t.seed = 10 + (uint64_t)f;
    t.align = ATTN_ALIGN_BOTTOM_RIGHT;
    t.layout = f % N_LAYOUTS;
    t_features[f].fn(&t);
    /* ALiBi needs key positions, which a part's call does not have; a sink belongs to one part
     * only (checked below); dropout decides by the call's own key indices, so a part's call
     * drops other pairs than the whole call (the header says so) */
    if (t.alibi || t.sinks || t.dropout > 0) continue;
    check_merge(t, 4, cuts4);
    check_split_backward(t, 3, cuts3);
  }
  s.causal = 1, s.align = ATTN_ALIGN_TOP_LEFT, s.kv_len = 1, s.bias = BIAS_NEGINF;
  s.mask = MASK_FULL, s.window_left = 20, s.softcap = 4.0f; /* everything, causal splits */
  check_merge(s, 4, cuts4);
  check_split_backward(s, 4, cuts4);
  check_merge_backward();
  check_rules_and_errors();
  return t_finish("test_merge");
}
