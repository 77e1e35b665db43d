/*
 * bwd_ref.c — attn__bwd_f32__ref: the gradient of the ref forward, in fp64, the oracle for every
 * backward kernel (itself checked against central finite differences of the forward).
 *
 * For each row (b, h, i) it recomputes the scores in double and, as the contract defines the
 * backward, the weights from the given LSE and Δ from the given O:
 *     P_j = exp(s_j − LSE_i),  dP_j = dO_i · v_j,  Δ = dO_i · O_i,  dS_j = P_j (dP_j − Δ) (∂L/∂s_j)
 *     dBias += dS_j,  dX_j = dS_j · (1 − tanh²(x_j / c)) with softcap c, else dS_j
 *     dq_i = scale Σ_j dX_j k_j,  dk_j += scale dX_j q_i,  dv_j += P_j dO_i
 * over the visible keys only, accumulating dK, dV and dBias in double and rounding once at the end.
 * Extra memory: fp64 copies of dK, dV and dBias, plus one row of scores.
 */
#include "../internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct ref_bwd {
  const attn__problem *pr;
  const attn__bwd_tensors *t;
  double *dk, *dv, *dbias;     /* packed [B, Hkv, Lk, D], [B, Hkv, Lk, Dv], dbias's reduced shape */
  int64_t db_size[4];          /* dbias shape */
  double *x, *s, *pw, *dp, *z; /* [Lk]: scaled dot, score, weight, dO·v, dropout factor */
  double *dq;                  /* [D] */
  unsigned char *vis;          /* [Lk] */
} ref_bwd;

static void ref_bwd_row(ref_bwd *w, int64_t b, int64_t h, int64_t i) {
  const attn_params *p = w->pr->p;
  const attn__bwd_tensors *t = w->t;
  const int64_t Lk = p->len_k, D = p->dim, Dv = p->dim_v, hk = h / w->pr->group;
  const int64_t klen = attn__klen(p, b), pos = i + attn__pos_shift(p, b);
  const double scale = w->pr->scale, cap = p->softcap;
  const float *qi = (const float *)t->q + attn__q_row(p, p->q_stride, b, h, i);
  const float *doi = t->dout + attn__q_row(p, p->dout_stride, b, h, i);
  const float *kb = (const float *)t->k + attn__kv_row(p, p->k_stride, b, hk, 0);
  const float *vb = (const float *)t->v + attn__kv_row(p, p->v_stride, b, hk, 0);

  const double lse = t->lse[attn__q_row(p, p->lse_stride, b, h, i)];
  const float *oi = t->o + attn__q_row(p, p->o_stride, b, h, i);
  int any = 0;
  for (int64_t j = 0; j < Lk; j++) {
    double bias;
    const int visible = attn__ref_visible(p, b, h, i, j, pos, klen, &bias);
    w->vis[j] = (unsigned char)visible;
    if (!visible) continue;
    double dot = 0.0;
    for (int64_t d = 0; d < D; d++)
      dot += (double)qi[d * p->q_stride[3]] * kb[j * p->k_stride[2] + d * p->k_stride[3]];
    double x = scale * dot, s = cap > 0 ? cap * tanh(x / cap) : x;
    if (p->alibi_slopes) s -= (double)p->alibi_slopes[h] * fabs((double)(pos - j));
    w->x[j] = x;
    w->s[j] = s + bias;
    any = 1;
  }
  memset(w->dq, 0, sizeof(double) * (size_t)D);
  if (any && lse != -INFINITY) {
    double delta = 0.0; /* Δ = rowsum(dO∘O) */
    for (int64_t d = 0; d < Dv; d++)
      delta += (double)doi[d * p->dout_stride[3]] * oi[d * p->o_stride[3]];
    /* dropout: O = Σ P·Z·v, so dV gets P·Z and ∂L/∂P = Z·(dO·v); Δ = dO·O is unchanged */
    const double keep = p->dropout > 0.0f ? 1.0 / (1.0 - (double)p->dropout) : 1.0;
    for (int64_t j = 0; j < Lk; j++) {
      if (!w->vis[j]) continue;
      w->pw[j] = exp(w->s[j] - lse);
      double dp = 0.0;
      for (int64_t d = 0; d < Dv; d++)
        dp += (double)doi[d * p->dout_stride[3]] * vb[j * p->v_stride[2] + d * p->v_stride[3]];
      w->z[j] = attn_dropout_keep(p, b, h, i, j) ? keep : 0.0;
      w->dp[j] = dp * w->z[j];
    }
    for (int64_t j = 0; j < Lk; j++) {
      if (!w->vis[j]) continue;
      const double ds = w->pw[j] * (w->dp[j] - delta);
      if (w->dbias) {
        const int64_t *n = w->db_size;
        const int64_t at =
            (((n[0] > 1 ? b : 0) * n[1] + (n[1] > 1 ? h : 0)) * n[2] + (n[2] > 1 ? i : 0)) * n[3] +
            (n[3] > 1 ? j : 0);
        w->dbias[at] += ds;
      }
      double dx = ds;
      if (cap > 0) {
        const double th = tanh(w->x[j] / cap);
        dx *= 1.0 - th * th;
      }
      double *dkj = w->dk + ((b * p->heads_kv + hk) * Lk + j) * D;
      double *dvj = w->dv + ((b * p->heads_kv + hk) * Lk + j) * Dv;
      for (int64_t d = 0; d < D; d++) {
        w->dq[d] += scale * dx * kb[j * p->k_stride[2] + d * p->k_stride[3]];
        dkj[d] += scale * dx * qi[d * p->q_stride[3]];
      }
      for (int64_t d = 0; d < Dv; d++)
        dvj[d] += w->pw[j] * w->z[j] * doi[d * p->dout_stride[3]];
    }
  }
  float *dqi = t->dq + attn__q_row(p, p->dq_stride, b, h, i);
  for (int64_t d = 0; d < D; d++)
    dqi[d * p->dq_stride[3]] = (float)w->dq[d]; /* no visible key: +0 */
}

/* Bytes of the ref backward's blocks: the fp64 accumulators dK, dV, dBias (zeroed), the row
 * scratch (5 rows of Lk doubles), a dQ row, the row's visibility; db gets dBias's shape. */
enum { REF_BLOCKS = 6 };
static void ref_sizes(const attn__problem *pr, int with_dbias, size_t bytes[REF_BLOCKS],
                      int64_t db[4]) {
  const attn_params *p = pr->p;
  const int64_t full[4] = {p->batch, p->heads_q, p->len_q, p->len_k};
  size_t nb = 1;
  for (int d = 0; d < 4; d++) {
    db[d] = p->bias_stride[d] == 0 ? 1 : full[d];
    nb *= (size_t)db[d];
  }
  const size_t lk = (size_t)(p->len_k > 0 ? p->len_k : 1);
  bytes[0] = ((size_t)(p->batch * p->heads_kv * p->len_k * p->dim) + 1) * sizeof(double);
  bytes[1] = ((size_t)(p->batch * p->heads_kv * p->len_k * p->dim_v) + 1) * sizeof(double);
  bytes[2] = with_dbias ? (nb + 1) * sizeof(double) : 0;
  bytes[3] = 5 * lk * sizeof(double);
  bytes[4] = ((size_t)p->dim + 1) * sizeof(double);
  bytes[5] = lk;
}

attn_status attn__bwd_scratch_f32__ref(const attn__problem *pr, int with_dbias, size_t *bytes) {
  size_t n[REF_BLOCKS];
  int64_t db[4];
  ref_sizes(pr, with_dbias, n, db);
  *bytes = 0;
  for (int i = 0; i < REF_BLOCKS; i++)
    *bytes += attn__arena_round(n[i]);
  return ATTN_STATUS_OK;
}

attn_status attn__bwd_f32__ref(const attn__problem *pr, const attn__bwd_tensors *t) {
  const attn_params *p = pr->p;
  size_t n[REF_BLOCKS];
  ref_bwd w = {pr, t, NULL, NULL, NULL, {0}, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
  ref_sizes(pr, t->dbias != NULL, n, w.db_size);
  void *block[REF_BLOCKS] = {0};
  for (int i = 0; i < REF_BLOCKS; i++)
    if (n[i] && !(block[i] = attn__arena_alloc(pr->arena, n[i])))
      return attn__fail(ATTN_STATUS_OUT_OF_MEMORY,
                        "attn_backward: ref kernel could not allocate its fp64 accumulators");
  for (int i = 0; i < 3; i++) /* the accumulators start at zero */
    if (n[i]) memset(block[i], 0, n[i]);
  w.dk = block[0], w.dv = block[1], w.dbias = n[2] ? block[2] : NULL, w.x = block[3];
  w.dq = block[4], w.vis = block[5];
  const size_t lk = n[5]; /* the row scratch: x, s, pw, dp, z of Lk doubles each */
  w.s = w.x + lk, w.pw = w.s + lk, w.dp = w.pw + lk, w.z = w.dp + lk;
  for (int64_t b = 0; b < p->batch; b++)
    for (int64_t h = 0; h < p->heads_q; h++)
      for (int64_t i = 0; i < attn__q_stored(p, b); i++)
        ref_bwd_row(&w, b, h, i); /* packed: no padding rows */

  for (int64_t b = 0; b < p->batch; b++)
    for (int64_t hk = 0; hk < p->heads_kv; hk++)
      for (int64_t j = 0; j < attn__k_stored(p, b); j++) {
        const double *dkj = w.dk + ((b * p->heads_kv + hk) * p->len_k + j) * p->dim;
        const double *dvj = w.dv + ((b * p->heads_kv + hk) * p->len_k + j) * p->dim_v;
        float *dk = t->dk + attn__kv_row(p, p->dk_stride, b, hk, j);
        float *dv = t->dv + attn__kv_row(p, p->dv_stride, b, hk, j);
        for (int64_t d = 0; d < p->dim; d++)
          dk[d * p->dk_stride[3]] = (float)dkj[d];
        for (int64_t d = 0; d < p->dim_v; d++)
          dv[d * p->dv_stride[3]] = (float)dvj[d];
      }
  if (t->dbias) {
    const int64_t *db = w.db_size;
    const double *src = w.dbias;
    for (int64_t b = 0; b < db[0]; b++)
      for (int64_t h = 0; h < db[1]; h++)
        for (int64_t i = 0; i < db[2]; i++)
          for (int64_t j = 0; j < db[3]; j++)
            t->dbias[b * p->dbias_stride[0] + h * p->dbias_stride[1] + i * p->dbias_stride[2] +
                     j * p->dbias_stride[3]] = (float)*src++;
  }
  return ATTN_STATUS_OK; /* the caller releases the arena */
}
