/*
 * fwd_ref.c — attn__fwd_f32__ref: the textbook formula, the oracle every other kernel is held to.
 *
 * For each (b, h, i) it materialises the row of scores in double, applies the contract's rules in
 * the contract's order, takes a two-pass softmax (max, then exp and sum) over the visible keys and
 * forms O = P·V in double. No tiles, no SIMD, one thread: simple enough to check by reading.
 * Deliberately does not share visibility code with the fused kernels (only with the ref backward:
 * attn__ref_visible), so a wrong mask in one is not hidden by the same wrong mask in the other.
 */
#include "../internal.h"

#include <math.h>
#include <stdlib.h>

int attn__ref_visible(const attn_params *p, int64_t b, int64_t h, int64_t i, int64_t j, int64_t pos,
                      int64_t klen, double *bias) {
  int visible = i < attn__qlen(p, b) && j < klen;
  if (visible && p->causal && j > pos) visible = 0;
  if (visible && p->window_left >= 0 && pos - j > p->window_left) visible = 0;
  if (visible && p->window_right >= 0 && j - pos > p->window_right) visible = 0;
  if (visible && p->mask &&
      p->mask[b * p->mask_stride[0] + h * p->mask_stride[1] + i * p->mask_stride[2] +
              j * p->mask_stride[3]] == 0)
    visible = 0;
  *bias = 0.0;
  if (visible && p->bias) {
    *bias = p->bias[b * p->bias_stride[0] + h * p->bias_stride[1] + i * p->bias_stride[2] +
                    j * p->bias_stride[3]];
    if (*bias == -INFINITY) visible = 0;
  }
  return visible;
}

/* The weight of a visible key: exactly 0 for a −inf score, even in a row that NaN poisons. */
static double weight(double s, double m, double sum) {
  return s == -INFINITY ? 0.0 : exp(s - m) / sum;
}

/* Row (b, h, i) of the forward. s, w, vis: scratch of len_k entries (scores, weights, visible). */
static void ref_row(const attn__problem *pr, const float *q, const float *k, const float *v,
                    float *o, float *lse, float *probs, int64_t b, int64_t h, int64_t i, double *s,
                    double *w, unsigned char *vis) {
  const attn_params *p = pr->p;
  const int64_t Lk = p->len_k, D = p->dim, Dv = p->dim_v, hk = h / pr->group;
  const int64_t klen = attn__klen(p, b), pos = i + attn__pos_shift(p, b);
  const float *qi = q + attn__q_row(p, p->q_stride, b, h, i);

  /* 1. visibility and scores */
  double m = -INFINITY;
  int any_visible = 0;
  for (int64_t j = 0; j < Lk; j++) {
    double bias;
    const int visible = attn__ref_visible(p, b, h, i, j, pos, klen, &bias);
    vis[j] = (unsigned char)visible;
    if (!visible) continue;

    const float *kj = k + attn__kv_row(p, p->k_stride, b, hk, j);
    double dot = 0.0;
    for (int64_t d = 0; d < D; d++)
      dot += (double)qi[d * p->q_stride[3]] * kj[d * p->k_stride[3]];
    double sij = (double)pr->scale * dot;
    if (p->softcap > 0) sij = p->softcap * tanh(sij / p->softcap);
    if (p->alibi_slopes) sij -= (double)p->alibi_slopes[h] * fabs((double)(pos - j));
    sij += bias;
    s[j] = sij;
    if (sij == -INFINITY) continue; /* infinite Q or K: weight 0 (below), but 0·V still counts */
    any_visible = 1;
    if (isnan(sij) || isnan(m))
      m = NAN; /* a visible NaN poisons the whole row, as in a plain implementation */
    else if (sij > m)
      m = sij;
  }

  /* the sink: one more score in the softmax, with a zero value */
  const double sink = p->sinks ? (double)p->sinks[h] : -INFINITY;
  if (sink != -INFINITY && !isnan(m) && sink > m) m = sink;

  /* 2. softmax over the visible keys: P = exp(s − m) / Σ exp(s − m). (Not exp(s − LSE): when
   * |s| is huge, e.g. a −1e30 bias, LSE = m + log Σ rounds to m and every weight would be 1.) */
  double sum = 0.0, row_lse = -INFINITY;
  if (any_visible || sink != -INFINITY) {
    for (int64_t j = 0; j < Lk; j++)
      if (vis[j] && s[j] != -INFINITY) sum += exp(s[j] - m);
    if (sink != -INFINITY) sum += exp(sink - m);
    row_lse = m + log(sum);
  } else { /* no visible key, or only −inf scores (LSE = log 0), and no sink: the empty row */
    for (int64_t j = 0; j < Lk; j++)
      vis[j] = 0;
  }

  /* 3. O = P·V; P written if requested */
  /* the weights: × 1/(1 − p) where dropout keeps the pair, 0 where it drops it */
  const double keep = p->dropout > 0.0f ? 1.0 / (1.0 - (double)p->dropout) : 1.0;
  for (int64_t j = 0; j < Lk; j++)
    if (vis[j]) w[j] = weight(s[j], m, sum) * (attn_dropout_keep(p, b, h, i, j) ? keep : 0.0);
  float *oi = o + attn__q_row(p, p->o_stride, b, h, i);
  const int stored = i < attn__q_stored(p, b); /* packed: padding rows have only P */
  for (int64_t d = 0; d < Dv && stored; d++) {
    double acc = 0.0;
    for (int64_t j = 0; j < Lk; j++)
      if (vis[j]) acc += w[j] * v[attn__kv_row(p, p->v_stride, b, hk, j) + d * p->v_stride[3]];
    oi[d * p->o_stride[3]] = (float)acc; /* empty row: acc stays +0.0 */
  }
  if (lse && stored) lse[attn__q_row(p, p->lse_stride, b, h, i)] = (float)row_lse;
  if (probs) {
    float *pi = probs + b * p->probs_stride[0] + h * p->probs_stride[1] + i * p->probs_stride[2];
    for (int64_t j = 0; j < Lk; j++)
      pi[j * p->probs_stride[3]] = vis[j] ? (float)weight(s[j], m, sum) : 0.0f;
  }
}

attn_status attn__fwd_f32__ref(const attn__problem *pr, const void *q, const void *k, const void *v,
                               float *o, float *lse, float *probs) {
  const attn_params *p = pr->p;
  size_t n = (size_t)(p->len_k > 0 ? p->len_k : 1);
  double *s = attn__arena_alloc(pr->arena, 2 * n * sizeof *s); /* scores, then weights */
  unsigned char *vis = attn__arena_alloc(pr->arena, n);
  if (!s || !vis)
    return attn__fail(ATTN_STATUS_OUT_OF_MEMORY,
                      "attn_forward: ref kernel could not allocate %zu bytes of row scratch",
                      n * (2 * sizeof *s + 1));
  for (int64_t b = 0; b < p->batch; b++) /* fp32 inputs: api.c widens narrow ones for ref */
    for (int64_t h = 0; h < p->heads_q; h++)
      for (int64_t i = 0; i < p->len_q; i++)
        ref_row(pr, q, k, v, o, lse, probs, b, h, i, s, s + n, vis);
  return ATTN_STATUS_OK; /* the caller releases the arena */
}

attn_status attn__scratch_f32__ref(const attn__problem *pr, int with_probs, size_t *bytes) {
  (void)with_probs;
  const size_t n = (size_t)(pr->p->len_k > 0 ? pr->p->len_k : 1);
  *bytes = attn__arena_round(2 * n * sizeof(double)) + attn__arena_round(n);
  return ATTN_STATUS_OK;
}
