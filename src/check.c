/*
 * check.c — argument validation only. Every rule of the contract that a caller can break is checked
 * here, in parameter order, before any output is touched; kernels may then assume a valid call.
 * Messages name the function, the parameter, its value and the rule.
 */
#include "internal.h"

#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* A strided tensor as the validator sees it. */
typedef struct tensor_desc {
  const char *name;   /* pointer name as in the prototype: "q", "o", "mask", ... */
  const char *stride; /* stride field name in attn_params: "q_stride", ... */
  const void *ptr;
  int rank;
  int64_t size[4];
  const int64_t *strides;
  int64_t elem_size;
  int is_output;
  /* filled by check_tensor: the byte range [lo, hi) it touches; empty if no elements */
  int empty;
  uintptr_t lo, hi;
  int may_alias; /* an output that may be exactly an input with the same strides (in place) */
} tensor_desc;

/* Checks pointer, strides and byte extent of one tensor and fills its address range. */
static attn_status check_tensor(const char *fn, tensor_desc *t, int check_pointers) {
  int64_t lo_off = 0, hi_off = 0; /* element offsets of the lowest and highest element */
  t->empty = 0;
  for (int d = 0; d < t->rank; d++)
    if (t->size[d] == 0) t->empty = 1;
  if (t->empty) return ATTN_STATUS_OK; /* never dereferenced: NULL and any strides are fine */
  if (!t->ptr && check_pointers)
    return attn__fail(ATTN_STATUS_INVALID_ARGUMENT,
                      "%s: %s is NULL but the tensor has elements (shape [%" PRId64 ", %" PRId64
                      ", %" PRId64 ", %" PRId64 "])",
                      fn, t->name, t->size[0], t->size[1], t->size[2],
                      t->rank > 3 ? t->size[3] : (int64_t)1);
  for (int d = 0; d < t->rank; d++) {
    int64_t s = t->strides[d], span;
    if (t->size[d] == 1) continue;
    if (t->is_output && s <= 0)
      return attn__fail(ATTN_STATUS_INVALID_ARGUMENT,
                        "%s: %s[%d] (%" PRId64 ") must be positive: dimension %d of output %s has "
                        "%" PRId64 " elements",
                        fn, t->stride, d, s, d, t->name, t->size[d]);
    if (!attn__mul_ok(s, t->size[d] - 1, &span) ||
        !attn__add_ok(s < 0 ? lo_off : hi_off, span, s < 0 ? &lo_off : &hi_off))
      return attn__fail(ATTN_STATUS_SIZE_OVERFLOW,
                        "%s: %s[%d] (%" PRId64 ") times %" PRId64 " elements overflows a 64-bit "
                        "offset",
                        fn, t->stride, d, s, t->size[d]);
  }
  /* byte offsets, then the address range; both must stay inside the address space */
  int64_t lo_b, hi_b;
  if (!attn__mul_ok(lo_off, t->elem_size, &lo_b) || !attn__mul_ok(hi_off, t->elem_size, &hi_b) ||
      !attn__add_ok(hi_b, t->elem_size, &hi_b) || hi_b > PTRDIFF_MAX || lo_b < -PTRDIFF_MAX ||
      (check_pointers && ((uintptr_t)t->ptr < (uintptr_t)(-lo_b) ||
                          UINTPTR_MAX - (uintptr_t)t->ptr < (uintptr_t)hi_b)))
    return attn__fail(ATTN_STATUS_SIZE_OVERFLOW,
                      "%s: the byte extent of %s (strides %s) overflows the address space", fn,
                      t->name, t->stride);
  t->lo = (uintptr_t)t->ptr - (uintptr_t)(-lo_b);
  t->hi = (uintptr_t)t->ptr + (uintptr_t)hi_b;

  if (t->is_output) {
    /* No self-overlap: with the dimensions sorted by stride, each stride must exceed the span of
     * all smaller ones (a sufficient condition for distinct elements at distinct addresses). */
    int order[4], n = 0;
    for (int d = 0; d < t->rank; d++)
      if (t->size[d] > 1) order[n++] = d;
    for (int a = 1; a < n; a++)
      for (int b = a; b > 0 && t->strides[order[b]] < t->strides[order[b - 1]]; b--) {
        int tmp = order[b];
        order[b] = order[b - 1];
        order[b - 1] = tmp;
      }
    int64_t inner = 0; /* span of the smaller dimensions, in elements (no overflow: ≤ hi_off) */
    for (int a = 0; a < n; a++) {
      int d = order[a];
      if (t->strides[d] <= inner)
        return attn__fail(ATTN_STATUS_INVALID_ARGUMENT,
                          "%s: %s[%d] (%" PRId64 ") makes output %s overlap itself: it must "
                          "exceed %" PRId64 ", the span of the dimensions with smaller strides",
                          fn, t->stride, d, t->strides[d], t->name, inner);
      inner += t->strides[d] * (t->size[d] - 1);
    }
  }
  return ATTN_STATUS_OK;
}

static int ranges_overlap(const tensor_desc *a, const tensor_desc *b) {
  return !a->empty && !b->empty && a->lo < b->hi && b->lo < a->hi;
}

static attn_status check_sizes(const char *fn, const attn_params *p) {
  const struct {
    const char *name;
    int64_t value, min;
  } sizes[] = {
      {"batch", p->batch, 0}, {"heads_q", p->heads_q, 0}, {"heads_kv", p->heads_kv, 1},
      {"len_q", p->len_q, 0}, {"len_k", p->len_k, 0},     {"dim", p->dim, 1},
      {"dim_v", p->dim_v, 0},
  };
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
    if (sizes[i].value < sizes[i].min)
      return attn__fail(ATTN_STATUS_INVALID_ARGUMENT,
                        "%s: %s (%" PRId64 ") must be at least %" PRId64, fn, sizes[i].name,
                        sizes[i].value, sizes[i].min);
  if (p->heads_q % p->heads_kv != 0)
    return attn__fail(ATTN_STATUS_INVALID_ARGUMENT,
                      "%s: heads_q (%" PRId64 ") is not a multiple of heads_kv (%" PRId64 ")", fn,
                      p->heads_q, p->heads_kv);
  return ATTN_STATUS_OK;
}

static attn_status check_options(const char *fn, const attn_params *p) {
  if (p->has_scale != 0 && p->has_scale != 1)
    return attn__fail(ATTN_STATUS_INVALID_ARGUMENT, "%s: has_scale (%d) must be 0 or 1", fn,
                      p->has_scale);
  if (p->has_scale && !isfinite(p->scale))
    return attn__fail(ATTN_STATUS_INVALID_ARGUMENT, "%s: scale (%g) must be finite", fn,
                      (double)p->scale);
  if (!isfinite(p->softcap) || p->softcap < 0)
    return attn__fail(ATTN_STATUS_INVALID_ARGUMENT,
                      "%s: softcap (%g) must be 0 (off) or a finite positive number", fn,
                      (double)p->softcap);
  if (!(p->dropout >= 0.0f && p->dropout < 1.0f))
    return attn__fail(ATTN_STATUS_INVALID_ARGUMENT,
                      "%s: dropout (%g) must be in [0, 1): the probability of dropping a weight",
                      fn, (double)p->dropout);
  if (p->causal != 0 && p->causal != 1)
    return attn__fail(ATTN_STATUS_INVALID_ARGUMENT, "%s: causal (%d) must be 0 or 1", fn,
                      p->causal);
  if (p->align != ATTN_ALIGN_UNSET && p->align != ATTN_ALIGN_TOP_LEFT &&
      p->align != ATTN_ALIGN_BOTTOM_RIGHT)
    return attn__fail(ATTN_STATUS_INVALID_ARGUMENT,
                      "%s: align (%d) is not an attn_align value (UNSET, TOP_LEFT, BOTTOM_RIGHT)",
                      fn, (int)p->align);
  if (p->window_left < -1)
    return attn__fail(ATTN_STATUS_INVALID_ARGUMENT,
                      "%s: window_left (%" PRId64 ") must be -1 (unbounded) or at least 0", fn,
                      p->window_left);
  if (p->window_right < -1)
    return attn__fail(ATTN_STATUS_INVALID_ARGUMENT,
                      "%s: window_right (%" PRId64 ") must be -1 (unbounded) or at least 0", fn,
                      p->window_right);
  const struct {
    const char *name, *max_name;
    const int64_t *len, max;
  } lengths[] = {{"kv_len", "len_k", p->kv_len, p->len_k}, {"q_len", "len_q", p->q_len, p->len_q}};
  for (size_t i = 0; i < sizeof lengths / sizeof lengths[0]; i++)
    for (int64_t b = 0; lengths[i].len && b < p->batch; b++)
      if (lengths[i].len[b] < 0 || lengths[i].len[b] > lengths[i].max)
        return attn__fail(ATTN_STATUS_INVALID_ARGUMENT,
                          "%s: %s[%" PRId64 "] (%" PRId64 ") must be in [0, %s = %" PRId64 "]", fn,
                          lengths[i].name, b, lengths[i].len[b], lengths[i].max_name,
                          lengths[i].max);
  const struct {
    const char *name, *other, *max_name;
    const int64_t *cu, *other_len, max;
  } packed[] = {{"cu_seqlens_q", "q_len", "len_q", p->cu_seqlens_q, p->q_len, p->len_q},
                {"cu_seqlens_k", "kv_len", "len_k", p->cu_seqlens_k, p->kv_len, p->len_k}};
  for (size_t i = 0; i < sizeof packed / sizeof packed[0]; i++) {
    const int64_t *cu = packed[i].cu;
    if (!cu) continue;
    if (packed[i].other_len)
      return attn__fail(ATTN_STATUS_INVALID_ARGUMENT,
                        "%s: %s and %s are both given: packed sequences take their lengths from "
                        "%s (give one of them)",
                        fn, packed[i].name, packed[i].other, packed[i].name);
    if (cu[0] != 0)
      return attn__fail(ATTN_STATUS_INVALID_ARGUMENT,
                        "%s: %s[0] (%" PRId64 ") must be 0: the first sequence starts at row 0", fn,
                        packed[i].name, cu[0]);
    for (int64_t b = 0; b < p->batch; b++) /* cu[b] ≥ 0 here, so the difference cannot overflow */
      if (cu[b + 1] < cu[b] || cu[b + 1] - cu[b] > packed[i].max)
        return attn__fail(ATTN_STATUS_INVALID_ARGUMENT,
                          "%s: %s[%" PRId64 "] - %s[%" PRId64 "] (%" PRId64 " - %" PRId64
                          "), the length of batch item %" PRId64 ", must be in [0, %s = %" PRId64
                          "]",
                          fn, packed[i].name, b + 1, packed[i].name, b, cu[b + 1], cu[b], b,
                          packed[i].max_name, packed[i].max);
  }
  if (p->alibi_slopes)
    for (int64_t h = 0; h < p->heads_q; h++)
      if (!isfinite(p->alibi_slopes[h]))
        return attn__fail(ATTN_STATUS_INVALID_ARGUMENT,
                          "%s: alibi_slopes[%" PRId64 "] (%g) must be finite", fn, h,
                          (double)p->alibi_slopes[h]);
  if (p->sinks)
    for (int64_t h = 0; h < p->heads_q; h++)
      if (isnan(p->sinks[h]) || p->sinks[h] == INFINITY)
        return attn__fail(ATTN_STATUS_INVALID_ARGUMENT,
                          "%s: sinks[%" PRId64 "] (%g) must be finite or -inf (no sink)", fn, h,
                          (double)p->sinks[h]);
  int uses_position =
      p->causal || p->window_left >= 0 || p->window_right >= 0 || p->alibi_slopes != NULL;
  int positions_differ = p->len_q != p->len_k || p->kv_len != NULL || p->q_len != NULL ||
                         p->cu_seqlens_q != NULL || p->cu_seqlens_k != NULL;
  if (uses_position && positions_differ && p->align == ATTN_ALIGN_UNSET)
    return attn__fail(ATTN_STATUS_INVALID_ARGUMENT,
                      "%s: align is unset but causal, window or ALiBi needs query positions and "
                      "len_q (%" PRId64 ") != len_k (%" PRId64 ")%s%s%s%s: choose "
                      "ATTN_ALIGN_TOP_LEFT (pos(i) = i) or ATTN_ALIGN_BOTTOM_RIGHT (pos(i) = i + "
                      "klen - qlen)",
                      fn, p->len_q, p->len_k, p->kv_len ? " or kv_len is given" : "",
                      p->q_len ? " or q_len is given" : "",
                      p->cu_seqlens_q ? " or cu_seqlens_q is given" : "",
                      p->cu_seqlens_k ? " or cu_seqlens_k is given" : "");
  if (p->threads < 0 || p->threads > ATTN_MAX_THREADS)
    return attn__fail(ATTN_STATUS_INVALID_ARGUMENT,
                      "%s: threads (%d) must be 0 (one per CPU) or in [1, %d]", fn, p->threads,
                      ATTN_MAX_THREADS);
  const struct {
    const char *name;
    attn_dtype value;
  } types[] = {{"q_dtype", p->q_dtype}, {"k_dtype", p->k_dtype}, {"v_dtype", p->v_dtype}};
  for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
    if ((unsigned)types[i].value >= (unsigned)ATTN_DTYPE_COUNT_)
      return attn__fail(ATTN_STATUS_INVALID_ARGUMENT,
                        "%s: %s (%d) is not an attn_dtype value (F32, F16, BF16, F8E4M3, F8E5M2)",
                        fn, types[i].name, (int)types[i].value);
  if ((unsigned)p->kernel >= (unsigned)ATTN_KERNEL_COUNT_)
    return attn__fail(ATTN_STATUS_INVALID_ARGUMENT, "%s: kernel (%d) is not an attn_kernel value",
                      fn, (int)p->kernel);
  return ATTN_STATUS_OK;
}

/* Paged K and V: the paging fields, and every block-table entry a key below klen(b) uses (the
 * tensor extents are checked with the other tensors). */
static attn_status check_paged(const char *fn, const attn_params *p) {
  if (!p->block_table) return ATTN_STATUS_OK;
  if (p->cu_seqlens_k)
    return attn__fail(ATTN_STATUS_INVALID_ARGUMENT,
                      "%s: cu_seqlens_k and block_table are both given: a paged cache addresses "
                      "its keys through the table (give kv_len for the key lengths)",
                      fn);
  if (p->page_size < 1)
    return attn__fail(ATTN_STATUS_INVALID_ARGUMENT,
                      "%s: page_size (%" PRId64 ") must be at least 1 when block_table is given",
                      fn, p->page_size);
  if (p->num_pages < 0)
    return attn__fail(ATTN_STATUS_INVALID_ARGUMENT,
                      "%s: num_pages (%" PRId64 ") must be at least 0", fn, p->num_pages);
  if (p->block_table_stride < -1)
    return attn__fail(ATTN_STATUS_INVALID_ARGUMENT,
                      "%s: block_table_stride (%" PRId64 ") must be -1 (ceil(len_k / page_size)) "
                      "or at least 0",
                      fn, p->block_table_stride);
  const int64_t stride = attn__block_table_stride(p);
  int64_t last;
  if (p->batch > 0 && (!attn__mul_ok(p->batch - 1, stride, &last) ||
                       !attn__add_ok(last, attn__pages_per_seq(p), &last)))
    return attn__fail(ATTN_STATUS_SIZE_OVERFLOW,
                      "%s: block_table_stride (%" PRId64 ") times batch - 1 (%" PRId64
                      ") overflows a 64-bit offset",
                      fn, stride, p->batch - 1);
  for (int64_t b = 0; b < p->batch; b++) {
    const int64_t klen = attn__klen(p, b), used = klen == 0 ? 0 : (klen - 1) / p->page_size + 1;
    for (int64_t e = 0; e < used; e++) {
      const int32_t page = p->block_table[b * stride + e];
      if (page < 0 || page >= p->num_pages)
        return attn__fail(ATTN_STATUS_INVALID_ARGUMENT,
                          "%s: block_table[%" PRId64 " * %" PRId64 " + %" PRId64 "] (%" PRId32
                          ") must be in [0, num_pages = %" PRId64 "): it holds keys %" PRId64
                          "..%" PRId64 " of batch item %" PRId64 ", whose key length is %" PRId64,
                          fn, b, stride, e, page, p->num_pages, e * p->page_size,
                          e * p->page_size + p->page_size - 1, b, klen);
    }
  }
  return ATTN_STATUS_OK;
}

/* Checks each present tensor, then that no output overlaps another output or an input (outputs
 * come after inputs in t). */
static attn_status check_tensors(const char *fn, tensor_desc *t, const int *present, int n,
                                 int first_output, int check_pointers) {
  attn_status st;
  for (int i = 0; i < n; i++) {
    if (!present[i]) {
      t[i].empty = 1;
      continue;
    }
    if ((st = check_tensor(fn, &t[i], check_pointers)) != ATTN_STATUS_OK) return st;
  }
  for (int a = first_output; a < n; a++)
    for (int b = 0; b < a; b++)
      if (check_pointers && present[a] && present[b] && ranges_overlap(&t[a], &t[b]) &&
          !(t[a].may_alias && b < first_output && t[a].ptr == t[b].ptr &&
            t[a].strides == t[b].strides && t[a].rank == t[b].rank))
        return attn__fail(ATTN_STATUS_INVALID_ARGUMENT,
                          "%s: output %s overlaps %s %s: outputs must not overlap each other or "
                          "the inputs",
                          fn, t[a].name, b >= first_output ? "output" : "input", t[b].name);
  return ATTN_STATUS_OK;
}

/* The workspace's alignment (its extent and overlaps are checked with the tensors). */
static attn_status check_workspace(const char *fn, const attn_params *p) {
  if (p->workspace && (uintptr_t)p->workspace % 64 != 0)
    return attn__fail(ATTN_STATUS_INVALID_ARGUMENT,
                      "%s: workspace (%p) must be 64-byte aligned (e.g. aligned_alloc(64, n))", fn,
                      p->workspace);
  if (p->workspace && p->workspace_bytes > (size_t)INT64_MAX)
    return attn__fail(ATTN_STATUS_SIZE_OVERFLOW,
                      "%s: workspace_bytes (%zu) overflows a 64-bit size", fn, p->workspace_bytes);
  return ATTN_STATUS_OK;
}

/* Sizes and options; fills *pr. */
static attn_status check_params(const char *fn, const attn_params *p, attn__problem *pr) {
  attn_status st;
  if (!p) return attn__fail(ATTN_STATUS_INVALID_ARGUMENT, "%s: p (params) is NULL", fn);
  if ((st = check_sizes(fn, p)) != ATTN_STATUS_OK) return st;
  if ((st = check_options(fn, p)) != ATTN_STATUS_OK) return st;
  pr->p = p;
  pr->scale = p->has_scale ? p->scale : (float)(1.0 / sqrt((double)p->dim));
  pr->group = p->heads_q / p->heads_kv;
  pr->threads = p->threads ? p->threads : attn__cpu_count();
  return ATTN_STATUS_OK;
}

attn_status attn__check_forward(const char *fn, const attn_params *p, const void *q, const void *k,
                                const void *v, const float *o, const float *lse, const float *probs,
                                int check_pointers, attn__problem *pr) {
  attn_status st = check_params(fn, p, pr);
  if (st != ATTN_STATUS_OK) return st;
  if ((st = check_paged(fn, p)) != ATTN_STATUS_OK) return st;
  const int64_t B = p->batch, Hq = p->heads_q, Hkv = p->heads_kv, Lq = p->len_q, Lk = p->len_k;
  const int64_t qe = (int64_t)attn__dtype_size(p->q_dtype),
                ke = (int64_t)attn__dtype_size(p->k_dtype),
                ve = (int64_t)attn__dtype_size(p->v_dtype);
  /* K and V: [B, Hkv, Lk, ·], or pools of pages [num_pages, Hkv, page_size, ·] */
  const int paged = p->block_table != NULL;
  int64_t qn, ql, kv_n, kv_l;
  attn__q_rows(p, &qn, &ql), attn__k_rows(p, &kv_n, &kv_l);
  if (paged) kv_n = p->num_pages, kv_l = p->page_size;
  const int64_t bt_stride[2] = {paged ? attn__block_table_stride(p) : 0, 1};
  if ((st = check_workspace(fn, p)) != ATTN_STATUS_OK) return st;
  static const int64_t unit[4] = {1, 0, 0, 0};
  const int64_t ws = (int64_t)p->workspace_bytes;
  enum { Q, K, V, TABLE, MASK, BIAS, O, LSE, PROBS, WORKSPACE, N_TENSORS };
  tensor_desc t[N_TENSORS] = {
      [Q] = {"q", "q_stride", q, 4, {qn, Hq, ql, p->dim}, p->q_stride, qe, 0, 0, 0, 0, 0},
      [K] = {"k", "k_stride", k, 4, {kv_n, Hkv, kv_l, p->dim}, p->k_stride, ke, 0, 0, 0, 0, 0},
      [V] = {"v", "v_stride", v, 4, {kv_n, Hkv, kv_l, p->dim_v}, p->v_stride, ve, 0, 0, 0, 0, 0},
      [TABLE] = {"block_table",
                 "block_table_stride",
                 p->block_table,
                 2,
                 {B, paged ? attn__pages_per_seq(p) : 0},
                 bt_stride,
                 4,
                 0,
                 0,
                 0,
                 0,
                 0},
      [MASK] =
          {"mask", "mask_stride", p->mask, 4, {B, Hq, Lq, Lk}, p->mask_stride, 1, 0, 0, 0, 0, 0},
      [BIAS] =
          {"bias", "bias_stride", p->bias, 4, {B, Hq, Lq, Lk}, p->bias_stride, 4, 0, 0, 0, 0, 0},
      [O] = {"o", "o_stride", o, 4, {qn, Hq, ql, p->dim_v}, p->o_stride, 4, 1, 0, 0, 0, 0},
      [LSE] = {"lse", "lse_stride", lse, 3, {qn, Hq, ql, 1}, p->lse_stride, 4, 1, 0, 0, 0, 0},
      [PROBS] =
          {"probs", "probs_stride", probs, 4, {B, Hq, Lq, Lk}, p->probs_stride, 4, 1, 0, 0, 0, 0},
      [WORKSPACE] =
          {"workspace", "workspace_bytes", p->workspace, 1, {ws, 1, 1, 1}, unit, 1, 1, 0, 0, 0, 0},
  };
  int present[N_TENSORS] = {1,
                            1,
                            1,
                            paged,
                            p->mask != NULL,
                            p->bias != NULL,
                            1,
                            lse != NULL,
                            probs != NULL,
                            p->workspace != NULL};
  if ((st = check_tensors(fn, t, present, N_TENSORS, O, check_pointers)) != ATTN_STATUS_OK)
    return st;
  return attn__resolve_kernel(fn, p->kernel, &pr->kernel);
}

attn_status attn__check_backward(const char *fn, const attn_params *p, const attn__bwd_tensors *x,
                                 int check_pointers, attn__problem *pr) {
  attn_status st = check_params(fn, p, pr);
  if (st != ATTN_STATUS_OK) return st;
  const int64_t B = p->batch, Hq = p->heads_q, Hkv = p->heads_kv, Lq = p->len_q, Lk = p->len_k;
  const int64_t D = p->dim, Dv = p->dim_v;
  if (p->block_table)
    return attn__fail(ATTN_STATUS_UNSUPPORTED,
                      "%s: block_table is set: paged K and V are for attn_forward only (pass K, V "
                      "and their gradients as ordinary [B, Hkv, Lk, D] tensors)",
                      fn);
  if (x->dbias && !p->bias)
    return attn__fail(ATTN_STATUS_INVALID_ARGUMENT,
                      "%s: dbias is given but p->bias is NULL: there is no bias to differentiate",
                      fn);
  int64_t qn, ql, kn, kl;
  attn__q_rows(p, &qn, &ql), attn__k_rows(p, &kn, &kl);
  if (check_pointers && !x->lse && qn * Hq * ql > 0)
    return attn__fail(ATTN_STATUS_INVALID_ARGUMENT,
                      "%s: lse is NULL: the backward needs the forward's log-sum-exp", fn);
  int64_t db[4] = {B, Hq, Lq, Lk}; /* dbias: size 1 where the bias is broadcast */
  for (int d = 0; d < 4; d++)
    if (p->bias_stride[d] == 0) db[d] = 1;
  const int64_t qe = (int64_t)attn__dtype_size(p->q_dtype),
                ke = (int64_t)attn__dtype_size(p->k_dtype),
                ve = (int64_t)attn__dtype_size(p->v_dtype);
  if ((st = check_workspace(fn, p)) != ATTN_STATUS_OK) return st;
  static const int64_t unit[4] = {1, 0, 0, 0};
  const int64_t ws = (int64_t)p->workspace_bytes;
  enum { Q, K, V, O, LSE, DOUT, MASK, BIAS, DQ, DK, DV, DBIAS, WORKSPACE, N_TENSORS };
  tensor_desc t[N_TENSORS] = {
      [Q] = {"q", "q_stride", x->q, 4, {qn, Hq, ql, D}, p->q_stride, qe, 0, 0, 0, 0, 0},
      [K] = {"k", "k_stride", x->k, 4, {kn, Hkv, kl, D}, p->k_stride, ke, 0, 0, 0, 0, 0},
      [V] = {"v", "v_stride", x->v, 4, {kn, Hkv, kl, Dv}, p->v_stride, ve, 0, 0, 0, 0, 0},
      [O] = {"o", "o_stride", x->o, 4, {qn, Hq, ql, Dv}, p->o_stride, 4, 0, 0, 0, 0, 0},
      [LSE] = {"lse", "lse_stride", x->lse, 3, {qn, Hq, ql, 1}, p->lse_stride, 4, 0, 0, 0, 0, 0},
      [DOUT] =
          {"dout", "dout_stride", x->dout, 4, {qn, Hq, ql, Dv}, p->dout_stride, 4, 0, 0, 0, 0, 0},
      [MASK] =
          {"mask", "mask_stride", p->mask, 4, {B, Hq, Lq, Lk}, p->mask_stride, 1, 0, 0, 0, 0, 0},
      [BIAS] =
          {"bias", "bias_stride", p->bias, 4, {B, Hq, Lq, Lk}, p->bias_stride, 4, 0, 0, 0, 0, 0},
      [DQ] = {"dq", "dq_stride", x->dq, 4, {qn, Hq, ql, D}, p->dq_stride, 4, 1, 0, 0, 0, 0},
      [DK] = {"dk", "dk_stride", x->dk, 4, {kn, Hkv, kl, D}, p->dk_stride, 4, 1, 0, 0, 0, 0},
      [DV] = {"dv", "dv_stride", x->dv, 4, {kn, Hkv, kl, Dv}, p->dv_stride, 4, 1, 0, 0, 0, 0},
      [DBIAS] = {"dbias",
                 "dbias_stride",
                 x->dbias,
                 4,
                 {db[0], db[1], db[2], db[3]},
                 p->dbias_stride,
                 4,
                 1,
                 0,
                 0,
                 0,
                 0},
      [WORKSPACE] =
          {"workspace", "workspace_bytes", p->workspace, 1, {ws, 1, 1, 1}, unit, 1, 1, 0, 0, 0, 0},
  };
  int present[N_TENSORS] = {1,
                            1,
                            1,
                            1,
                            1,
                            1,
                            p->mask != NULL,
                            p->bias != NULL,
                            1,
                            1,
                            1,
                            x->dbias != NULL,
                            p->workspace != NULL};
  if ((st = check_tensors(fn, t, present, N_TENSORS, DQ, check_pointers)) != ATTN_STATUS_OK)
    return st;
  return attn__resolve_kernel(fn, p->kernel, &pr->kernel);
}

attn_status attn__check_sinks_backward(const char *fn, const attn_params *p, const float *o,
                                       const float *lse, const float *dout, const float *dsinks,
                                       attn__problem *pr) {
  attn_status st = check_params(fn, p, pr);
  if (st != ATTN_STATUS_OK) return st;
  if (!p->sinks)
    return attn__fail(ATTN_STATUS_INVALID_ARGUMENT,
                      "%s: p->sinks is NULL: there are no sinks to differentiate", fn);
  const int64_t Hq = p->heads_q, Dv = p->dim_v;
  int64_t qn, ql;
  attn__q_rows(p, &qn, &ql);
  static const int64_t unit[4] = {1, 0, 0, 0};
  enum { O, LSE, DOUT, DSINKS, N_TENSORS };
  tensor_desc t[N_TENSORS] = {
      [O] = {"o", "o_stride", o, 4, {qn, Hq, ql, Dv}, p->o_stride, 4, 0, 0, 0, 0, 0},
      [LSE] = {"lse", "lse_stride", lse, 3, {qn, Hq, ql, 1}, p->lse_stride, 4, 0, 0, 0, 0, 0},
      [DOUT] = {"dout", "dout_stride", dout, 4, {qn, Hq, ql, Dv}, p->dout_stride, 4, 0, 0, 0, 0, 0},
      [DSINKS] = {"dsinks", "(contiguous)", dsinks, 1, {Hq, 1, 1, 1}, unit, 4, 1, 0, 0, 0, 0},
  };
  const int present[N_TENSORS] = {1, 1, 1, 1};
  return check_tensors(fn, t, present, N_TENSORS, DSINKS, 1);
}

attn_status attn__check_merge(const char *fn, const attn_params *p, const attn__merge_tensors *x,
                              int check_pointers, attn__problem *pr) {
  attn_status st = check_params(fn, p, pr);
  if (st != ATTN_STATUS_OK) return st;
  const int n = x->n_parts;
  if (n < 0 || n > ATTN_MAX_MERGE_PARTS)
    return attn__fail(ATTN_STATUS_INVALID_ARGUMENT, "%s: n_parts (%d) must be in [0, %d]", fn, n,
                      ATTN_MAX_MERGE_PARTS);
  const int bwd = x->backward;
  const char *arrays[4][2] = {{"o_parts", (const char *)x->o_parts},
                              {"lse_parts", (const char *)x->lse_parts},
                              {"do_parts", (const char *)x->do_parts},
                              {NULL, NULL}};
  for (int a = 0; a < (bwd ? 3 : 2); a++)
    if (n > 0 && !arrays[a][1] && check_pointers)
      return attn__fail(ATTN_STATUS_INVALID_ARGUMENT, "%s: %s is NULL but n_parts is %d", fn,
                        arrays[a][0], n);
  const int64_t Hq = p->heads_q, Dv = p->dim_v;
  int64_t qn, ql;
  attn__q_rows(p, &qn, &ql);
  /* inputs: parts' O and LSE, then (backward) O, LSE, dO, dLSE; outputs: O and LSE (forward) or
   * the parts' dO and dLSE (backward) */
  const int n_t = bwd ? 4 * n + 4 : 2 * n + 2;
  tensor_desc *t = calloc((size_t)n_t + 1, sizeof *t);
  int *present = calloc((size_t)n_t + 1, sizeof *present);
  char(*names)[32] = calloc((size_t)n_t + 1, sizeof *names);
  if (!t || !present || !names) {
    free(t), free(present), free(names);
    return attn__fail(ATTN_STATUS_OUT_OF_MEMORY, "%s: cannot allocate the checks", fn);
  }
  int at = 0;
  const tensor_desc o_like = {.stride = "o_stride",
                              .rank = 4,
                              .size = {qn, Hq, ql, Dv},
                              .strides = p->o_stride,
                              .elem_size = 4};
  const tensor_desc lse_like = {.stride = "lse_stride",
                                .rank = 3,
                                .size = {qn, Hq, ql, 1},
                                .strides = p->lse_stride,
                                .elem_size = 4};
  tensor_desc do_like = o_like, dlse_like = lse_like;
  do_like.stride = "dout_stride", do_like.strides = p->dout_stride;
  for (int k = 0; k < n; k++) {
    t[at] = o_like, t[at].ptr = x->o_parts ? x->o_parts[k] : NULL;
    snprintf(names[at], sizeof names[at], "o_parts[%d]", k);
    present[at++] = 1;
    t[at] = lse_like, t[at].ptr = x->lse_parts ? x->lse_parts[k] : NULL;
    snprintf(names[at], sizeof names[at], "lse_parts[%d]", k);
    present[at++] = 1;
  }
  const int first_output = bwd ? at + 4 : at;
  if (bwd) {
    const struct {
      const char *name;
      const tensor_desc *like;
      const float *ptr;
      int present;
    } in[4] = {{"o", &o_like, x->o, 1},
               {"lse", &lse_like, x->lse, 1},
               {"dout", &do_like, x->dout, 1},
               {"dlse", &dlse_like, x->dlse, x->dlse != NULL}};
    for (int i = 0; i < 4; i++) {
      t[at] = *in[i].like, t[at].ptr = in[i].ptr;
      snprintf(names[at], sizeof names[at], "%s", in[i].name);
      present[at++] = in[i].present;
    }
    for (int k = 0; k < n; k++) {
      t[at] = do_like, t[at].ptr = x->do_parts ? x->do_parts[k] : NULL, t[at].is_output = 1;
      snprintf(names[at], sizeof names[at], "do_parts[%d]", k);
      present[at++] = 1;
      t[at] = lse_like, t[at].ptr = x->dlse_parts ? x->dlse_parts[k] : NULL, t[at].is_output = 1;
      snprintf(names[at], sizeof names[at], "dlse_parts[%d]", k);
      present[at++] = x->dlse_parts != NULL;
    }
  } else {
    t[at] = o_like, t[at].ptr = x->o, t[at].is_output = 1, t[at].may_alias = 1;
    snprintf(names[at], sizeof names[at], "o");
    present[at++] = 1;
    t[at] = lse_like, t[at].ptr = x->lse, t[at].is_output = 1, t[at].may_alias = 1;
    snprintf(names[at], sizeof names[at], "lse");
    present[at++] = x->lse != NULL;
  }
  for (int i = 0; i < at; i++)
    t[i].name = names[i];
  st = check_tensors(fn, t, present, at, first_output, check_pointers);
  free(t), free(present), free(names);
  if (st != ATTN_STATUS_OK) return st;
  pr->kernel = ATTN_KERNEL_REF; /* one implementation: plain C, fp64 accumulation */
  return ATTN_STATUS_OK;
}
