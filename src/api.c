/* api.c — public entry points: validate, pick the kernel, run. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

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
  p->block_table_stride = -1;
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
  /* tensors of query rows and K, V: [B, H, L, ·], or packed [1, H, cu_seqlens[B], ·]; or paged K
   * and V: pools of pages [num_pages, Hkv, page_size, ·] */
  int64_t qn, ql, kv_n, kv_l;
  attn__q_rows(p, &qn, &ql), attn__k_rows(p, &kv_n, &kv_l);
  if (p->block_table) kv_n = p->num_pages, kv_l = p->page_size;
  const int64_t q[4] = {qn, Hq, ql, p->dim}, k[4] = {kv_n, Hkv, kv_l, p->dim};
  const int64_t v[4] = {kv_n, Hkv, kv_l, p->dim_v}, o[4] = {qn, Hq, ql, p->dim_v};
  const int64_t s[4] = {B, Hq, Lq, Lk}, l[3] = {qn, Hq, ql};
  zero_if_empty(c->q_stride, 4, q), zero_if_empty(c->dq_stride, 4, q);
  zero_if_empty(c->k_stride, 4, k), zero_if_empty(c->dk_stride, 4, k); /* dK, dV: not paged */
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

/* The narrow (16- and 8-bit) inputs of a call, widened to fp32 for the kernels that read only fp32
 * (ref, and the backward of every kernel), and paged K and V gathered for ref; the fused forward
 * reads narrow and paged tensors itself. */
typedef struct widened {
  const void *q, *k, *v; /* the pointers to pass: the caller's, or a copy in buf */
  float *buf[3];         /* (blocks of the call's arena) */
} widened;

/* Sizes [n, H, L, ·] of the fp32 copies of Q, K, V in sz: as the caller's tensors, but paged K
 * and V gathered into [B, Hkv, Lk, ·]. */
static void widened_sizes(const attn_params *p, int64_t sz[3][4]) {
  int64_t qn, ql, kn, kl;
  attn__q_rows(p, &qn, &ql), attn__k_rows(p, &kn, &kl);
  const int64_t s[3][4] = {
      {qn, p->heads_q, ql, p->dim}, {kn, p->heads_kv, kl, p->dim}, {kn, p->heads_kv, kl, p->dim_v}};
  memcpy(sz, s, sizeof s);
}

/* Element counts of the copies of Q, K, V in *n (0 for an fp32 input that is not paged, which is
 * never copied); 0 on overflow. */
static int widened_counts(const attn_params *p, int64_t n[3]) {
  const attn_dtype t[3] = {p->q_dtype, p->k_dtype, p->v_dtype};
  const int paged[3] = {0, p->block_table != NULL, p->block_table != NULL};
  int64_t sz[3][4];
  widened_sizes(p, sz);
  for (int i = 0; i < 3; i++) {
    n[i] = t[i] == ATTN_DTYPE_F32 && !paged[i] ? 0 : 1;
    for (int d = 0; d < 4; d++)
      if (!attn__mul_ok(n[i], sz[i][d], &n[i])) return 0;
    if (!attn__mul_ok(n[i], (int64_t)sizeof(float), &(int64_t){0})) return 0;
  }
  return 1;
}

/* Bytes of the fp32 copies widen_inputs makes, added to *bytes (the scratch queries). */
static attn_status widened_bytes(const char *fn, const attn_params *p, size_t *bytes) {
  int64_t n[3];
  int ok = widened_counts(p, n);
  for (int i = 0; ok && i < 3; i++) {
    const size_t block = attn__arena_round((size_t)n[i] * sizeof(float));
    ok = block != SIZE_MAX && block <= SIZE_MAX - *bytes;
    *bytes += ok ? block : 0;
  }
  if (!ok)
    return attn__fail(ATTN_STATUS_SIZE_OVERFLOW,
                      "%s: the fp32 copies of the narrow inputs overflow", fn);
  return ATTN_STATUS_OK;
}

/* For each narrow input among q, k, v, and for paged k and v (of a validated call; c is its
 * copy_params copy): a packed fp32 copy (exact) in the layout widened_sizes gives — packed
 * sequences stay packed, paged K and V are gathered into [B, Hkv, Lk, ·] with the keys at or past
 * klen(b), never read, as 0 — its packed strides, ATTN_DTYPE_F32 and no block table in *c. Nothing
 * is written to the outputs, so a failure here leaves them untouched. */
static attn_status widen_inputs(const char *fn, attn__arena *arena, attn_params *c, const void *q,
                                const void *k, const void *v, widened *w) {
  *w = (widened){q, k, v, {NULL, NULL, NULL}};
  int64_t n[3], sz[3][4];
  if (!widened_counts(c, n))
    return attn__fail(ATTN_STATUS_SIZE_OVERFLOW,
                      "%s: the fp32 copies of the narrow inputs overflow", fn);
  widened_sizes(c, sz);
  const void *src[3] = {q, k, v};
  const char *const names[3] = {"q", "k", "v"};
  const void **dst[3] = {&w->q, &w->k, &w->v};
  attn_dtype *type[3] = {&c->q_dtype, &c->k_dtype, &c->v_dtype};
  int64_t *stride[3] = {c->q_stride, c->k_stride, c->v_stride};
  const int64_t len[3] = {c->len_q, c->len_k, c->len_k};
  for (int i = 0; i < 3; i++) {
    if (n[i] == 0) { /* fp32 already, or empty (then never read) */
      *type[i] = ATTN_DTYPE_F32;
      continue;
    }
    if (!(w->buf[i] = attn__arena_alloc(arena, (size_t)n[i] * sizeof(float))))
      return attn__fail(ATTN_STATUS_OUT_OF_MEMORY,
                        "%s: could not allocate %lld bytes for the fp32 copy of %s (%s)", fn,
                        (long long)n[i] * 4, names[i], attn_dtype_name(*type[i]));
  }
  attn_params to = *c; /* the copies' addressing: packed strides, no block table */
  to.block_table = NULL;
  for (int i = 0; i < 3; i++) {
    if (n[i] == 0) continue;
    int64_t to_stride[4];
    attn_strides_packed(to_stride, sz[i][1], sz[i][2], sz[i][3]);
    const int64_t dim = sz[i][3];
    for (int64_t b = 0; b < c->batch; b++) {
      const int64_t stored = i == 0 ? attn__q_stored(c, b) : attn__k_stored(c, b);
      const int paged = i > 0 && c->block_table;
      for (int64_t h = 0; h < sz[i][1]; h++)
        for (int64_t l = 0; l < (paged ? len[i] : stored); l++) { /* packed: rows that exist */
          float *out = w->buf[i] + (i == 0 ? attn__q_row(&to, to_stride, b, h, l)
                                           : attn__kv_row(&to, to_stride, b, h, l));
          if (l >= stored) { /* paged keys past klen(b): not in the table, never read */
            memset(out, 0, sizeof(float) * (size_t)dim);
            continue;
          }
          attn__widen(*type[i], src[i],
                      i == 0 ? attn__q_row(c, stride[i], b, h, l)
                             : attn__kv_row(c, stride[i], b, h, l),
                      stride[i][3], dim, out);
        }
    }
    *dst[i] = w->buf[i];
    *type[i] = ATTN_DTYPE_F32;
    memcpy(stride[i], to_stride, sizeof to_stride);
  }
  c->block_table = NULL; /* K and V, if paged, are now gathered */
  return ATTN_STATUS_OK;
}

/* The extra memory of a validated call (its scratch query, with_out: P or dBias requested). */
static attn_status scratch_of(const char *fn, const attn__problem *pr, int backward, int with_out,
                              size_t *bytes) {
  const attn_params *p = pr->p;
  if (!backward && (p->batch == 0 || p->heads_q == 0 || p->len_q == 0)) {
    *bytes = 0; /* attn_forward returns at once */
    return ATTN_STATUS_OK;
  }
  attn_status st = backward ? attn__kernel_bwd_scratch(pr->kernel)(pr, with_out, bytes)
                            : attn__kernel_scratch(pr->kernel)(pr, with_out, bytes);
  /* the fp32 copies of narrow inputs: for ref, and for every backward kernel */
  if (st == ATTN_STATUS_OK && (backward || pr->kernel == ATTN_KERNEL_REF))
    st = widened_bytes(fn, p, bytes);
  return st;
}

/* The call's arena over the caller's workspace, if it gives one: at least the bytes its scratch
 * query returns (checked here, before anything is written). */
static attn_status open_arena(const char *fn, const attn__problem *pr, int backward, int with_out,
                              attn__arena *arena) {
  const attn_params *p = pr->p;
  attn__arena_init(arena, p->workspace, p->workspace_bytes);
  if (!p->workspace) return ATTN_STATUS_OK;
  size_t need = 0;
  attn_status st = scratch_of(fn, pr, backward, with_out, &need);
  if (st != ATTN_STATUS_OK) return st;
  if (p->workspace_bytes < need)
    return attn__fail(ATTN_STATUS_INVALID_ARGUMENT,
                      "%s: workspace_bytes (%zu) is less than the %zu bytes this call needs (%s "
                      "with the same parameters and %s %s)",
                      fn, p->workspace_bytes, need,
                      backward ? "attn_backward_scratch_bytes" : "attn_forward_scratch_bytes",
                      backward ? "with_dbias" : "with_probs", with_out ? "1" : "0");
  return ATTN_STATUS_OK;
}

attn_status attn_forward(const attn_params *p, const void *q, const void *k, const void *v,
                         float *o, float *lse, float *probs) {
  attn__problem pr;
  attn_params c;
  attn__clear_error();
  attn_status st = attn__check_forward("attn_forward", p, q, k, v, o, lse, probs, 1, &pr);
  if (st != ATTN_STATUS_OK) return st;
  if (p->batch == 0 || p->heads_q == 0 || p->len_q == 0) return ATTN_STATUS_OK;
  copy_params(p, &c);
  pr.p = &c;
  attn__arena arena;
  if ((st = open_arena("attn_forward", &pr, 0, probs != NULL, &arena)) != ATTN_STATUS_OK) return st;
  pr.arena = &arena;
  widened w = {or_empty(q), or_empty(k), or_empty(v), {NULL, NULL, NULL}};
  if (pr.kernel == ATTN_KERNEL_REF) /* the oracle reads fp32 only */
    st = widen_inputs("attn_forward", &arena, &c, w.q, w.k, w.v, &w);
  if (st == ATTN_STATUS_OK)
    st = attn__kernel_fwd(pr.kernel)(&pr, w.q, w.k, w.v, or_empty(o), lse, probs);
  attn__arena_release(&arena);
  return st;
}

attn_status attn_forward_scratch_bytes(const attn_params *p, int with_probs, size_t *bytes) {
  attn__problem pr;
  attn__clear_error();
  if (!bytes)
    return attn__fail(ATTN_STATUS_INVALID_ARGUMENT, "attn_forward_scratch_bytes: bytes is NULL");
  attn_status st = attn__check_forward("attn_forward_scratch_bytes", p, NULL, NULL, NULL, NULL,
                                       NULL, NULL, 0, &pr);
  if (st != ATTN_STATUS_OK) return st;
  attn_params c; /* as the call sizes it */
  copy_params(p, &c);
  pr.p = &c;
  return scratch_of("attn_forward_scratch_bytes", &pr, 0, with_probs != 0, bytes);
}

attn_status attn_backward(const attn_params *p, const void *q, const void *k, const void *v,
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
  attn__arena arena;
  if ((st = open_arena("attn_backward", &pr, 1, dbias != NULL, &arena)) != ATTN_STATUS_OK)
    return st;
  pr.arena = &arena;
  widened w; /* the backward kernels read fp32 only */
  st = widen_inputs("attn_backward", &arena, &c, or_empty(q), or_empty(k), or_empty(v), &w);
  if (st == ATTN_STATUS_OK) {
    const attn__bwd_tensors nn = {
        w.q,          w.k,          w.v,          or_empty(o), or_empty(lse), or_empty(dout),
        or_empty(dq), or_empty(dk), or_empty(dv), dbias};
    st = attn__kernel_bwd(pr.kernel)(&pr, &nn);
  }
  attn__arena_release(&arena);
  return st;
}

attn_status attn_backward_sinks(const attn_params *p, const float *o, const float *lse,
                                const float *dout, float *dsinks) {
  attn__problem pr;
  attn__clear_error();
  attn_status st = attn__check_sinks_backward("attn_backward_sinks", p, o, lse, dout, dsinks, &pr);
  if (st != ATTN_STATUS_OK) return st;
  attn_params c;
  copy_params(p, &c); /* zero strides for tensors with no element: never offset from NULL */
  pr.p = &c;
  return attn__backward_sinks(&pr, or_empty(o), or_empty(lse), or_empty(dout), dsinks);
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
  attn_params c; /* as the call sizes it */
  copy_params(p, &c);
  pr.p = &c;
  return scratch_of("attn_backward_scratch_bytes", &pr, 1, with_dbias != 0, bytes);
}

attn_status attn_merge(const attn_params *p, int n_parts, const float *const *o_parts,
                       const float *const *lse_parts, float *o, float *lse) {
  attn__problem pr;
  attn__clear_error();
  const attn__merge_tensors t = {0, n_parts, o_parts, lse_parts, o, lse, NULL, NULL, NULL, NULL};
  attn_status st = attn__check_merge("attn_merge", p, &t, 1, &pr);
  if (st != ATTN_STATUS_OK) return st;
  attn_params c; /* zero strides for tensors with no element (Dv = 0): they are not validated */
  copy_params(p, &c);
  pr.p = &c;
  return attn__merge(&pr, &t);
}

attn_status attn_merge_backward(const attn_params *p, int n_parts, const float *const *o_parts,
                                const float *const *lse_parts, const float *o, const float *lse,
                                const float *dout, const float *dlse, float *const *do_parts,
                                float *const *dlse_parts) {
  attn__problem pr;
  attn__clear_error();
  /* dout may be NULL only when it has no element, like every tensor (checked) */
  const attn__merge_tensors t = {1,    n_parts, o_parts,  lse_parts, (float *)o, (float *)lse,
                                 dout, dlse,    do_parts, dlse_parts};
  attn_status st = attn__check_merge("attn_merge_backward", p, &t, 1, &pr);
  if (st != ATTN_STATUS_OK) return st;
  attn_params c; /* as in attn_merge */
  copy_params(p, &c);
  pr.p = &c;
  return attn__merge_backward(&pr, &t);
}
