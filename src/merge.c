/*
 * merge.c — attn_merge and attn_merge_backward: exact combination of partial attention results of
 * the same queries over disjoint key sets through their log-sum-exp (the step that split-key
 * decode, ring attention and any key-sharded attention end with).
 *
 * Per row, with parts i = 0..n−1:
 *     m = max_i LSE_i,  w_i = exp(LSE_i − m),  LSE = m + log Σ_i w_i,  O = Σ_i (w_i / Σ w) O_i
 * in double, skipping parts with LSE_i = −inf (no visible key there), so an empty part never
 * contributes and all-empty rows give O = +0, LSE = −inf. A NaN LSE_i makes the row NaN.
 * Backward, with W_i = exp(LSE_i − LSE):  dO_i = W_i·dO,  dLSE_i = W_i·(dO·(O_i − O) + dLSE).
 */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct merge_job {
  const attn_params *p;
  const attn__merge_tensors *x;
  int n;
  const float *const *o_parts, *const *lse_parts;
  double *scratch; /* per worker: n weights + dim_v accumulators */
} merge_job;

/* Item = (b, h): every row of one head. */
static void merge_item(void *ctx, int64_t item, int worker) {
  const merge_job *job = ctx;
  const attn_params *p = job->p;
  const int64_t h = item % p->heads_q, b = item / p->heads_q, Dv = p->dim_v;
  double *w = job->scratch + (size_t)worker * (size_t)(job->n + Dv + 1), *acc = w + job->n;
  const int64_t rows = attn__q_stored(p, b); /* packed: no padding */
  for (int64_t i = 0; i < rows; i++) {
    const int64_t lo = attn__q_row(p, p->lse_stride, b, h, i),
                  oo = attn__q_row(p, p->o_stride, b, h, i);
    double m = -INFINITY;
    for (int k = 0; k < job->n; k++) {
      const double l = job->lse_parts[k][lo];
      m = (isnan(l) || isnan(m)) ? NAN : (l > m ? l : m);
    }
    double sum = 0.0;
    for (int k = 0; k < job->n; k++) {
      const double l = job->lse_parts[k][lo];
      w[k] = l == -INFINITY && !isnan(m) ? 0.0 : exp(l - m);
      sum += w[k];
    }
    for (int64_t d = 0; d < Dv; d++)
      acc[d] = 0.0;
    if (m != -INFINITY)
      for (int k = 0; k < job->n; k++) {
        if (w[k] == 0.0) continue; /* an empty part, or one negligible against the others */
        const double wk = w[k] / sum;
        for (int64_t d = 0; d < Dv; d++) /* indexed, not offset: O may be NULL when Dv = 0 */
          acc[d] += wk * job->o_parts[k][oo + d * p->o_stride[3]];
      }
    for (int64_t d = 0; d < Dv; d++) /* after every read: o may be one of the parts */
      job->x->o[oo + d * p->o_stride[3]] = (float)acc[d];
    if (job->x->lse) job->x->lse[lo] = m == -INFINITY ? -INFINITY : (float)(m + log(sum));
  }
}

static void merge_backward_item(void *ctx, int64_t item, int worker) {
  const merge_job *job = ctx;
  const attn_params *p = job->p;
  const int64_t h = item % p->heads_q, b = item / p->heads_q, Dv = p->dim_v;
  const int64_t rows = attn__q_stored(p, b); /* packed: no padding */
  (void)worker;
  for (int64_t i = 0; i < rows; i++) {
    const int64_t lo = attn__q_row(p, p->lse_stride, b, h, i),
                  oo = attn__q_row(p, p->o_stride, b, h, i);
    const attn__merge_tensors *x = job->x;
    const double lse = x->lse[lo], dl = x->dlse ? x->dlse[lo] : 0.0;
    const int64_t go = attn__q_row(p, p->dout_stride, b, h, i), so = p->o_stride[3],
                  sg = p->dout_stride[3];
    for (int k = 0; k < job->n; k++) {
      const double lk = job->lse_parts[k][lo];
      const double wk = lk == -INFINITY || lse == -INFINITY ? 0.0 : exp(lk - lse);
      double dot = 0.0;
      for (int64_t d = 0; d < Dv; d++) { /* indexed: O, dO may be NULL when Dv = 0 */
        const double g = x->dout[go + d * sg];
        x->do_parts[k][go + d * sg] = (float)(wk * g);
        if (wk != 0.0) dot += g * ((double)job->o_parts[k][oo + d * so] - x->o[oo + d * so]);
      }
      if (x->dlse_parts) x->dlse_parts[k][lo] = (float)(wk * (dot + dl));
    }
  }
}

static attn_status run(const attn__problem *pr, const attn__merge_tensors *x, attn__task_fn fn) {
  const attn_params *p = pr->p;
  const int64_t items = p->batch * p->heads_q;
  if (items == 0 || p->len_q == 0) return ATTN_STATUS_OK;
  int workers = pr->threads < items ? pr->threads : (int)items;
  const size_t per = (size_t)x->n_parts + (size_t)p->dim_v + 1;
  merge_job job = {p, x, x->n_parts, x->o_parts, x->lse_parts, NULL};
  job.scratch = malloc(sizeof(double) * per * (size_t)workers);
  if (!job.scratch)
    return attn__fail(ATTN_STATUS_OUT_OF_MEMORY, "attn_merge: cannot allocate %zu bytes",
                      sizeof(double) * per * (size_t)workers);
  attn__parallel_for(workers, items, fn, &job);
  free(job.scratch);
  return ATTN_STATUS_OK;
}

attn_status attn__merge(const attn__problem *pr, const attn__merge_tensors *x) {
  return run(pr, x, merge_item);
}

attn_status attn__merge_backward(const attn__problem *pr, const attn__merge_tensors *x) {
  return run(pr, x, merge_backward_item);
}
