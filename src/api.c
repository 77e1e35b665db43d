/* api.c — public entry points: validate, pick the kernel, run. */
#include "internal.h"

void attn_strides_packed(int64_t stride[4], int64_t n1, int64_t n2, int64_t n3) {
  stride[3] = 1;
  stride[2] = n3;
  stride[1] = n2 * n3;
  stride[0] = n1 * n2 * n3;
}

void attn_strides_blhd(int64_t stride[4], int64_t heads, int64_t len, int64_t dim) {
  stride[0] = len * heads * dim;
  stride[1] = dim;
  stride[2] = heads * dim;
  stride[3] = 1;
}

void attn_params_init(attn_params *p, int64_t batch, int64_t heads_q, int64_t heads_kv,
                      int64_t len_q, int64_t len_k, int64_t dim, int64_t dim_v) {
  *p = (attn_params){0};
  p->batch = batch;
  p->heads_q = heads_q;
  p->heads_kv = heads_kv;
  p->len_q = len_q;
  p->len_k = len_k;
  p->dim = dim;
  p->dim_v = dim_v;
  attn_strides_packed(p->q_stride, heads_q, len_q, dim);
  attn_strides_packed(p->k_stride, heads_kv, len_k, dim);
  attn_strides_packed(p->v_stride, heads_kv, len_k, dim_v);
  attn_strides_packed(p->o_stride, heads_q, len_q, dim_v);
  p->lse_stride[0] = heads_q * len_q;
  p->lse_stride[1] = len_q;
  p->lse_stride[2] = 1;
  attn_strides_packed(p->probs_stride, heads_q, len_q, len_k);
  attn_strides_packed(p->mask_stride, heads_q, len_q, len_k);
  attn_strides_packed(p->bias_stride, heads_q, len_q, len_k);
  attn_strides_packed(p->dout_stride, heads_q, len_q, dim_v);
  attn_strides_packed(p->dq_stride, heads_q, len_q, dim);
  attn_strides_packed(p->dk_stride, heads_kv, len_k, dim);
  attn_strides_packed(p->dv_stride, heads_kv, len_k, dim_v);
  attn_strides_packed(p->dbias_stride, heads_q, len_q, len_k);
  p->window_left = -1;
  p->window_right = -1;
  p->align = ATTN_ALIGN_UNSET;
  p->kernel = ATTN_KERNEL_AUTO;
}

/* A tensor with no element may be passed as NULL and with any strides (they address nothing).
 * Once the call is validated, the kernels get this address instead of NULL and zero strides for
 * such tensors, so their base-pointer arithmetic (b·stride[0] + h·stride[1] + …) never starts
 * from a null pointer or overflows. Nothing is ever read from or written to it. */
static float empty_tensor[1];
static float *or_empty(const float *x) { return x ? (float *)x : empty_tensor; }

static void zero_if_empty(int64_t *stride, int n, const int64_t *shape) {
  for (int d = 0; d < n; d++)
    if (shape[d] == 0) {
      for (int e = 0; e < n; e++)
        stride[e] = 0;
      return;
    }
}

/* *c = *p with the strides of every tensor that has no element set to 0. */
static void copy_params(const attn_params *p, attn_params *c) {
  *c = *p;
  const int64_t B = p->batch, Hq = p->heads_q, Hkv = p->heads_kv, Lq = p->len_q, Lk = p->len_k;
  const int64_t q[4] = {B, Hq, Lq, p->dim}, k[4] = {B, Hkv, Lk, p->dim};
  const int64_t v[4] = {B, Hkv, Lk, p->dim_v}, o[4] = {B, Hq, Lq, p->dim_v};
  const int64_t s[4] = {B, Hq, Lq, Lk}, l[3] = {B, Hq, Lq};
  zero_if_empty(c->q_stride, 4, q), zero_if_empty(c->dq_stride, 4, q);
  zero_if_empty(c->k_stride, 4, k), zero_if_empty(c->dk_stride, 4, k);
  zero_if_empty(c->v_stride, 4, v), zero_if_empty(c->dv_stride, 4, v);
  zero_if_empty(c->o_stride, 4, o), zero_if_empty(c->dout_stride, 4, o);
  zero_if_empty(c->lse_stride, 3, l);
  zero_if_empty(c->probs_stride, 4, s), zero_if_empty(c->mask_stride, 4, s);
  /* bias_stride stays: its zeros say which dimensions dBias is reduced over, and dBias can have
   * elements when the bias has none (Lq = 0 with the bias broadcast over queries: zeros) */
  int64_t db[4];
  for (int d = 0; d < 4; d++)
    db[d] = p->bias_stride[d] == 0 ? 1 : s[d];
  zero_if_empty(c->dbias_stride, 4, db);
}

attn_status attn_forward(const attn_params *p, const float *q, const float *k, const float *v,
                         float *o, float *lse, float *probs) {
  attn__problem pr;
  attn_params c;
  attn__clear_error();
  attn_status st = attn__check_forward("attn_forward", p, q, k, v, o, lse, probs, 1, &pr);
  if (st != ATTN_STATUS_OK) return st;
  if (p->batch == 0 || p->heads_q == 0 || p->len_q == 0) return ATTN_STATUS_OK;
  copy_params(p, &c);
  pr.p = &c;
  return attn__kernel_fwd(pr.kernel)(&pr, or_empty(q), or_empty(k), or_empty(v), or_empty(o), lse,
                                     probs);
}

attn_status attn_forward_scratch_bytes(const attn_params *p, int with_probs, size_t *bytes) {
  attn__problem pr;
  attn__clear_error();
  if (!bytes)
    return attn__fail(ATTN_STATUS_INVALID_ARGUMENT, "attn_forward_scratch_bytes: bytes is NULL");
  attn_status st = attn__check_forward("attn_forward_scratch_bytes", p, NULL, NULL, NULL, NULL,
                                       NULL, NULL, 0, &pr);
  if (st != ATTN_STATUS_OK) return st;
  if (p->batch == 0 || p->heads_q == 0 || p->len_q == 0) {
    *bytes = 0;
    return ATTN_STATUS_OK;
  }
  return attn__kernel_scratch(pr.kernel)(&pr, with_probs != 0, bytes);
}

attn_status attn_backward(const attn_params *p, const float *q, const float *k, const float *v,
                          const float *o, const float *lse, const float *dout, float *dq, float *dk,
                          float *dv, float *dbias) {
  attn__problem pr;
  attn_params c;
  attn__clear_error();
  const attn__bwd_tensors t = {q, k, v, o, lse, dout, dq, dk, dv, dbias};
  attn_status st = attn__check_backward("attn_backward", p, &t, 1, &pr);
  if (st != ATTN_STATUS_OK) return st;
  copy_params(p, &c);
  pr.p = &c;
  const attn__bwd_tensors nn = {or_empty(q),   or_empty(k),    or_empty(v),  or_empty(o),
                                or_empty(lse), or_empty(dout), or_empty(dq), or_empty(dk),
                                or_empty(dv),  dbias};
  return attn__kernel_bwd(pr.kernel)(&pr, &nn);
}

attn_status attn_backward_scratch_bytes(const attn_params *p, int with_dbias, size_t *bytes) {
  attn__problem pr;
  attn__clear_error();
  if (!bytes)
    return attn__fail(ATTN_STATUS_INVALID_ARGUMENT, "attn_backward_scratch_bytes: bytes is NULL");
  const attn__bwd_tensors t = {NULL, NULL, NULL, NULL, NULL,
                               NULL, NULL, NULL, NULL, with_dbias ? (float *)1 : NULL};
  attn_status st = attn__check_backward("attn_backward_scratch_bytes", p, &t, 0, &pr);
  if (st != ATTN_STATUS_OK) return st;
  return attn__kernel_bwd_scratch(pr.kernel)(&pr, with_dbias != 0, bytes);
}

attn_status attn_merge(const attn_params *p, int n_parts, const float *const *o_parts,
                       const float *const *lse_parts, float *o, float *lse) {
  attn__problem pr;
  attn__clear_error();
  const attn__merge_tensors t = {n_parts, o_parts, lse_parts, o, lse, NULL, NULL, NULL, NULL};
  attn_status st = attn__check_merge("attn_merge", p, &t, 1, &pr);
  return st != ATTN_STATUS_OK ? st : attn__merge(&pr, &t);
}

attn_status attn_merge_backward(const attn_params *p, int n_parts, const float *const *o_parts,
                                const float *const *lse_parts, const float *o, const float *lse,
                                const float *dout, const float *dlse, float *const *do_parts,
                                float *const *dlse_parts) {
  attn__problem pr;
  attn__clear_error();
  if (!dout) /* dout is what marks a backward call: never let it pass as a forward one */
    return attn__fail(ATTN_STATUS_INVALID_ARGUMENT,
                      "attn_merge_backward: dout is NULL: the backward needs dL/dO");
  const attn__merge_tensors t = {n_parts, o_parts, lse_parts, (float *)o, (float *)lse,
                                 dout,    dlse,    do_parts,  dlse_parts};
  attn_status st = attn__check_merge("attn_merge_backward", p, &t, 1, &pr);
  return st != ATTN_STATUS_OK ? st : attn__merge_backward(&pr, &t);
}
