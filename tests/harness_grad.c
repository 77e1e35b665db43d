/*
 * harness_grad.c — the test kit for attn_backward: guarded gradient buffers in the case's layouts,
 * a plain fp32 baseline backward, and the check of a kernel against the ref kernel's fp64 gradients
 * (the ref backward itself is checked against finite differences in test_backward.c).
 */
#include "harness.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) exit(3);
  return p;
}

void tgrad_make(tgrad *g, tcase *c, int want_dbias, attn_kernel fwd_kernel, uint64_t seed) {
  const tspec *s = &c->spec;
  attn_params *p = &c->p;
  memset(g, 0, sizeof *g);
  const int64_t qn[4] = {s->B, s->Hq, s->Lq, s->D}, kn[4] = {s->B, s->Hkv, s->Lk, s->D},
                vn[4] = {s->B, s->Hkv, s->Lk, s->Dv}, on[4] = {s->B, s->Hq, s->Lq, s->Dv},
                ln[4] = {s->B, s->Hq, s->Lq, 1};
  t_layout_strides(s->layout, on, p->dout_stride);
  t_layout_strides(s->layout, qn, p->dq_stride);
  t_layout_strides(s->layout, kn, p->dk_stride);
  t_layout_strides(s->layout, vn, p->dv_stride);
  const int64_t full[4] = {s->B, s->Hq, s->Lq, s->Lk};
  for (int d = 0; d < 4; d++)
    g->db[d] = p->bias && p->bias_stride[d] == 0 ? 1 : full[d];
  attn_strides_packed(p->dbias_stride, g->db[1], g->db[2], g->db[3]);

  tbuf_make(&g->dout, 4, 4, on, p->dout_stride);
  rng r = {seed * 0x9e3779b97f4a7c15ull + 5};
  float *d = tbuf_f32(&g->dout);
  for (int64_t i0 = 0; i0 < on[0]; i0++)
    for (int64_t i1 = 0; i1 < on[1]; i1++)
      for (int64_t i2 = 0; i2 < on[2]; i2++)
        for (int64_t i3 = 0; i3 < on[3]; i3++)
          d[tbuf_index(&g->dout, i0, i1, i2, i3)] = rng_normal(&r);
  tbuf_poison_gaps(&g->dout);
  tbuf_make(&g->o, 4, 4, on, p->o_stride);
  tbuf_make(&g->lse, 4, 3, ln, p->lse_stride);
  p->kernel = fwd_kernel;
  p->threads = 2;
  attn_status st = attn_forward(p, tcase_input(c, 0), tcase_input(c, 1), tcase_input(c, 2),
                                tbuf_f32(&g->o), tbuf_f32(&g->lse), NULL);
  CHECKF(st == ATTN_STATUS_OK, "forward for the backward: %s", attn_last_error());
  tbuf_poison_gaps(&g->o);
  tbuf_poison_gaps(&g->lse);
  tbuf_make(&g->dq, 4, 4, qn, p->dq_stride);
  tbuf_make(&g->dk, 4, 4, kn, p->dk_stride);
  tbuf_make(&g->dv, 4, 4, vn, p->dv_stride);
  g->has_dbias = want_dbias && p->bias;
  if (g->has_dbias) tbuf_make(&g->dbias, 4, 4, g->db, p->dbias_stride);
}

void tgrad_free(tgrad *g) {
  tbuf_free(&g->dout);
  tbuf_free(&g->o);
  tbuf_free(&g->lse);
  tbuf_free(&g->dq);
  tbuf_free(&g->dk);
  tbuf_free(&g->dv);
  if (g->has_dbias) tbuf_free(&g->dbias);
}

attn_status t_run_backward(tcase *c, tgrad *g, attn_kernel kernel, int threads) {
  c->p.kernel = kernel;
  c->p.threads = threads;
  return attn_backward(&c->p, tcase_input(c, 0), tcase_input(c, 1), tcase_input(c, 2),
                       tbuf_f32(&g->o), tbuf_f32(&g->lse), tbuf_f32(&g->dout), tbuf_f32(&g->dq),
                       tbuf_f32(&g->dk), tbuf_f32(&g->dv),
                       g->has_dbias ? tbuf_f32(&g->dbias) : NULL);
}

tgrads t_backward_gather(tcase *c, tgrad *g, attn_kernel kernel, int threads) {
  tgrads r = {0};
  r.nq = (size_t)tbuf_count(&g->dq), r.nk = (size_t)tbuf_count(&g->dk);
  r.nv = (size_t)tbuf_count(&g->dv), r.nb = g->has_dbias ? (size_t)tbuf_count(&g->dbias) : 0;
  r.dq = xmalloc(sizeof(float) * r.nq), r.dk = xmalloc(sizeof(float) * r.nk);
  r.dv = xmalloc(sizeof(float) * r.nv), r.dbias = xmalloc(sizeof(float) * r.nb);
  attn_status st = t_run_backward(c, g, kernel, threads);
  CHECKF(st == ATTN_STATUS_OK, "%s backward failed: %s: %s", attn_kernel_name(kernel),
         attn_status_str(st), attn_last_error());
  int ok = tbuf_check_output(&g->dq, "dq", 1) & tbuf_check_output(&g->dk, "dk", 1) &
           tbuf_check_output(&g->dv, "dv", 1);
  if (g->has_dbias) ok &= tbuf_check_output(&g->dbias, "dbias", 1);
  CHECKF(ok, "gradient guards/gaps/coverage (%s kernel)", attn_kernel_name(kernel));
  tbuf_gather(&g->dq, r.dq);
  tbuf_gather(&g->dk, r.dk);
  tbuf_gather(&g->dv, r.dv);
  if (g->has_dbias) tbuf_gather(&g->dbias, r.dbias);
  return r;
}

int tgrads_same(const tgrads *a, const tgrads *b) {
  return a->nq == b->nq && a->nk == b->nk && a->nv == b->nv && a->nb == b->nb &&
         memcmp(a->dq, b->dq, a->nq * sizeof(float)) == 0 &&
         memcmp(a->dk, b->dk, a->nk * sizeof(float)) == 0 &&
         memcmp(a->dv, b->dv, a->nv * sizeof(float)) == 0 &&
         memcmp(a->dbias, b->dbias, a->nb * sizeof(float)) == 0;
}

void tgrads_free(tgrads *r) {
  free(r->dq), free(r->dk), free(r->dv), free(r->dbias);
  memset(r, 0, sizeof *r);
}

/* ---- plain fp32 baseline ---- */

static float at4(const float *x, const int64_t *s, int64_t a, int64_t b, int64_t c, int64_t d) {
  return x[a * s[0] + b * s[1] + c * s[2] + d * s[3]];
}

/* Dot product q_i·k_j in fp32, summed forward (order 0) or backward (otherwise). */
static float sdot(const attn_params *p, int order, const float *q, const float *k, int64_t b,
                  int64_t h, int64_t i, int64_t j) {
  const int64_t D = p->dim, hk = h / (p->heads_q / p->heads_kv);
  float dot = 0.0f;
  for (int64_t d0 = 0; d0 < D; d0++) {
    const int64_t d = order ? D - 1 - d0 : d0;
    dot += at4(q, p->q_stride, b, h, i, d) * at4(k, p->k_stride, b, hk, j, d);
  }
  return dot;
}

/* The score of a visible pair in fp32 (softcap, ALiBi, bias), the dot summed in `order`. */
static float score(const attn_params *p, int order, const float *q, const float *k, int64_t b,
                   int64_t h, int64_t i, int64_t j, int64_t pos) {
  const float scale = p->has_scale ? p->scale : (float)(1.0 / sqrt((double)p->dim));
  float x = sdot(p, order, q, k, b, h, i, j) * scale;
  if (p->softcap > 0) x = p->softcap * tanhf(x / p->softcap);
  if (p->alibi_slopes) x -= p->alibi_slopes[h] * (float)(pos > j ? pos - j : j - pos);
  if (p->bias) x += at4(p->bias, p->bias_stride, b, h, i, j);
  return x;
}

void baseline_backward(const attn_params *p, int order, const float *q, const float *k,
                       const float *v, const float *dout, float *dq, float *dk, float *dv,
                       float *dbias) {
  const int64_t B = p->batch, Hq = p->heads_q, Hkv = p->heads_kv, Lq = p->len_q, Lk = p->len_k;
  const int64_t D = p->dim, Dv = p->dim_v, group = Hq / Hkv;
  const float scale = p->has_scale ? p->scale : (float)(1.0 / sqrt((double)D));
  int64_t db[4] = {B, Hq, Lq, Lk};
  for (int d = 0; d < 4; d++)
    if (p->bias && p->bias_stride[d] == 0) db[d] = 1;
  memset(dq, 0, sizeof(float) * (size_t)(B * Hq * Lq * D));
  memset(dk, 0, sizeof(float) * (size_t)(B * Hkv * Lk * D));
  memset(dv, 0, sizeof(float) * (size_t)(B * Hkv * Lk * Dv));
  if (dbias) memset(dbias, 0, sizeof(float) * (size_t)(db[0] * db[1] * db[2] * db[3]));
  float *s = xmalloc(sizeof(float) * (size_t)(4 * Lk + 1)), *t = s + Lk, *pw = t + Lk,
        *dp = pw + Lk;
  unsigned char *vis = xmalloc((size_t)Lk + 1);
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < Hq; h++)
      for (int64_t i = 0; i < Lq; i++) {
        const int64_t hk = h / group, klen = p->kv_len ? p->kv_len[b] : Lk;
        const int64_t pos = oracle_pos(p, b, i);
        float m = -INFINITY;
        for (int64_t j = 0; j < Lk; j++) {
          int ok = !(p->q_len && i >= p->q_len[b]) && j < klen && !(p->causal && j > pos) &&
                   !(p->window_left >= 0 && pos - j > p->window_left) &&
                   !(p->window_right >= 0 && j - pos > p->window_right);
          if (ok && p->mask &&
              !p->mask[b * p->mask_stride[0] + h * p->mask_stride[1] + i * p->mask_stride[2] +
                       j * p->mask_stride[3]])
            ok = 0;
          if (ok && p->bias && at4(p->bias, p->bias_stride, b, h, i, j) == -INFINITY) ok = 0;
          vis[j] = (unsigned char)ok;
          if (!ok) continue;
          const int dot_order = order == 1;
          s[j] = score(p, dot_order, q, k, b, h, i, j, pos);
          t[j] = p->softcap > 0 ? tanhf(sdot(p, dot_order, q, k, b, h, i, j) * scale / p->softcap)
                                : 0.0f;
          m = isnan(s[j]) || isnan(m) ? NAN : (s[j] > m ? s[j] : m);
        }
        const float sink = p->sinks ? p->sinks[h] : -INFINITY; /* one more score, value 0 */
        if (!isnan(m) && sink > m) m = sink;
        if (m == -INFINITY) continue;
        const int rev = order == 1;
        float sum = 0.0f, delta = 0.0f;
        for (int64_t j0 = 0; j0 < Lk; j0++) {
          const int64_t j = rev ? Lk - 1 - j0 : j0;
          if (vis[j]) sum += pw[j] = expf(s[j] - m);
        }
        if (sink != -INFINITY) sum += expf(sink - m);
        const float lse = m + logf(sum);
        for (int64_t j0 = 0; j0 < Lk; j0++) {
          const int64_t j = rev ? Lk - 1 - j0 : j0;
          if (!vis[j]) continue;
          pw[j] = order == 2 ? expf(score(p, order, q, k, b, h, i, j, pos) - lse) : pw[j] / sum;
          float acc = 0.0f;
          for (int64_t d = 0; d < Dv; d++)
            acc += at4(dout, p->dout_stride, b, h, i, d) * at4(v, p->v_stride, b, hk, j, d);
          dp[j] = acc * (float)t_dropout_factor(p, b, h, i, j); /* ∂L/∂P under dropout */
          if (order != 2) delta += pw[j] * dp[j];
        }
        for (int64_t d = 0; order == 2 && d < Dv; d++) { /* Δ = rowsum(dO∘O), O in fp32 */
          float o = 0.0f;
          for (int64_t j = 0; j < Lk; j++)
            if (vis[j])
              o +=
                  pw[j] * (float)t_dropout_factor(p, b, h, i, j) * at4(v, p->v_stride, b, hk, j, d);
          delta += at4(dout, p->dout_stride, b, h, i, d) * o;
        }
        for (int64_t j0 = 0; j0 < Lk; j0++) {
          const int64_t j = rev ? Lk - 1 - j0 : j0;
          if (!vis[j]) continue;
          const float ds = pw[j] * (dp[j] - delta);
          if (dbias)
            dbias[(((db[0] > 1 ? b : 0) * db[1] + (db[1] > 1 ? h : 0)) * db[2] +
                   (db[2] > 1 ? i : 0)) *
                      db[3] +
                  (db[3] > 1 ? j : 0)] += ds;
          const float dx = (p->softcap > 0 ? ds * (1.0f - t[j] * t[j]) : ds) * scale;
          for (int64_t d = 0; d < D; d++) {
            dq[((b * Hq + h) * Lq + i) * D + d] += dx * at4(k, p->k_stride, b, hk, j, d);
            dk[((b * Hkv + hk) * Lk + j) * D + d] += dx * at4(q, p->q_stride, b, h, i, d);
          }
          const float pz = pw[j] * (float)t_dropout_factor(p, b, h, i, j); /* O's weight */
          for (int64_t d = 0; d < Dv; d++)
            dv[((b * Hkv + hk) * Lk + j) * Dv + d] += pz * at4(dout, p->dout_stride, b, h, i, d);
        }
      }
  free(s);
  free(vis);
}

/* ---- the check ---- */

static double *to_double(const float *x, size_t n) {
  double *d = xmalloc(sizeof(double) * n);
  for (size_t i = 0; i < n; i++)
    d[i] = x[i];
  return d;
}

int t_check_backward(tcase *c, attn_kernel kernel, int threads, int want_dbias) {
  char label[512];
  tcase_label(c, label, sizeof label);
  tgrad g;
  /* O and LSE from the kernel's own forward (ref's for ref), as a training step would have */
  tgrad_make(&g, c, want_dbias, kernel == ATTN_KERNEL_REF ? ATTN_KERNEL_REF : kernel, c->spec.seed);
  tgrads ker = t_backward_gather(c, &g, kernel, threads);
  tgrads ref = t_backward_gather(c, &g, ATTN_KERNEL_REF, 1);
  enum { NB = 3 };
  float *bq = xmalloc(sizeof(float) * NB * ker.nq), *bk = xmalloc(sizeof(float) * NB * ker.nk);
  float *bv = xmalloc(sizeof(float) * NB * ker.nv), *bb = xmalloc(sizeof(float) * NB * ker.nb);
  float *dout = xmalloc(sizeof(float) * (size_t)tbuf_count(&g.dout));
  tbuf_gather(&g.dout, dout);
  attn_params pp = c->p; /* the baseline reads dO packed */
  attn_strides_packed(pp.dout_stride, c->spec.Hq, c->spec.Lq, c->spec.Dv);
  for (int bi = 0; bi < NB; bi++)
    baseline_backward(&pp, bi, tbuf_f32(&c->q), tbuf_f32(&c->k), tbuf_f32(&c->v), dout,
                      bq + bi * ker.nq, bk + bi * ker.nk, bv + bi * ker.nv,
                      ker.nb ? bb + bi * ker.nb : NULL);
  const struct {
    const char *name;
    const float *k, *base;
    const float *r;
    size_t n;
  } parts[] = {{"dQ", ker.dq, bq, ref.dq, ker.nq},
               {"dK", ker.dk, bk, ref.dk, ker.nk},
               {"dV", ker.dv, bv, ref.dv, ker.nv},
               {"dBias", ker.dbias, bb, ref.dbias, ker.nb}};
  int ok = 1;
  for (int i = 0; i < 4; i++) {
    if (!parts[i].n) continue;
    double *r = to_double(parts[i].r, parts[i].n);
    const float *bases[NB] = {parts[i].base, parts[i].base + parts[i].n,
                              parts[i].base + 2 * parts[i].n};
    char what[64];
    snprintf(what, sizeof what, "%s(%s)", parts[i].name, attn_kernel_name(kernel));
    ok &= t_compare(label, what, parts[i].k, r, bases, NB, parts[i].n, TOL_FACTOR_BWD,
                    TOL_MAX_FACTOR_BWD);
    free(r);
  }
  CHECKF(ok, "%s backward within tolerance of the fp64 ref backward", attn_kernel_name(kernel));
  /* rows with no visible key: dQ = +0 exactly */
  float *lse = xmalloc(sizeof(float) * (size_t)tbuf_count(&g.lse));
  tbuf_gather(&g.lse, lse);
  size_t bad = 0;
  const size_t D = (size_t)c->spec.D;
  for (size_t row = 0; row < (size_t)tbuf_count(&g.lse); row++)
    if (lse[row] == -INFINITY)
      for (size_t d = 0; d < D; d++)
        bad += ker.dq[row * D + d] != 0.0f || signbit(ker.dq[row * D + d]);
  CHECKF(bad == 0, "%zu dQ values of rows with no visible key are not +0 (%s)\n  case: %s", bad,
         attn_kernel_name(kernel), label);
  free(lse), free(dout), free(bq), free(bk), free(bv), free(bb);
  tgrads_free(&ker);
  tgrads_free(&ref);
  tgrad_free(&g);
  return ok && bad == 0;
}
