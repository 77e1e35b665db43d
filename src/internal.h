/*
 * internal.h — private declarations shared by the library's source files. Private symbols use the
 * attn__ prefix and are hidden from the shared library.
 */
#ifndef ATTN_INTERNAL_H
#define ATTN_INTERNAL_H

#include "attn.h"

#include <stdint.h>

#if defined(__GNUC__)
#define ATTN__PRINTF(fmt_index, first_arg) __attribute__((format(printf, fmt_index, first_arg)))
#else
#define ATTN__PRINTF(fmt_index, first_arg)
#endif

/* ---- errors (error.c) ---- */

/* Records the detail message for attn_last_error() and returns status. */
attn_status attn__fail(attn_status status, const char *fmt, ...) ATTN__PRINTF(2, 3);
/* Clears the detail message; called at the start of every public entry point. */
void attn__clear_error(void);

/* ---- the extra memory of one call (arena.c) ---- */

/* A call's extra memory: carved in order from the caller's workspace (attn_params.workspace) when
 * it gives one, else allocated block by block here; either way released by attn__arena_release
 * when the call ends. Every block is 64-byte aligned and takes attn__arena_round(bytes) of a
 * workspace, so a kernel's scratch-size query is the sum of attn__arena_round over its blocks. */
enum { ATTN__ARENA_BLOCKS = 12 };
typedef struct attn__arena {
  unsigned char *base; /* the caller's workspace, or NULL */
  size_t size, used;   /* its bytes, and the bytes handed out */
  int n_owned;         /* blocks allocated here */
  void *owned[ATTN__ARENA_BLOCKS];
} attn__arena;

/* An arena over workspace [base, base + size) (base may be NULL: every block is allocated). */
void attn__arena_init(attn__arena *a, void *base, size_t size);
/* bytes rounded up to a multiple of 64 (SIZE_MAX if that overflows). */
size_t attn__arena_round(size_t bytes);
/* A 64-byte aligned block of `bytes` (uninitialised), or NULL when bytes is 0 or memory runs out.
 * A workspace too small for the block (a scratch query that undercounts) does not fail the call:
 * the block is allocated instead and attn__arena_fallbacks() counts it (the tests assert 0). */
void *attn__arena_alloc(attn__arena *a, size_t bytes);
/* Frees the blocks allocated here (the workspace stays the caller's). */
void attn__arena_release(attn__arena *a);
/* Blocks allocated because a workspace was too small, since the process started. */
long attn__arena_fallbacks(void);

/* ---- a validated call (check.c) ---- */

typedef struct attn__problem {
  const attn_params *p; /* the caller's parameters, already validated */
  float scale;          /* resolved: p->scale or 1/sqrt(dim) */
  int64_t group;        /* heads_q / heads_kv: query head h reads kv head h / group */
  int threads;          /* resolved thread count, ≥ 1 */
  attn_kernel kernel;   /* resolved kernel, never AUTO */
  attn__arena *arena;   /* where the kernels take their extra memory (set by api.c) */
} attn__problem;

/* Validates every argument of attn_forward before any output is written; fills *pr on success.
 * check_pointers = 0 validates shapes, strides and options only (for size queries). */
attn_status attn__check_forward(const char *fn, const attn_params *p, const void *q, const void *k,
                                const void *v, const float *o, const float *lse, const float *probs,
                                int check_pointers, attn__problem *pr);

/* The tensors of one attn_backward call. q, k, v are of p's q/k/v_dtype when validated; the
 * backward kernels get fp32 copies of narrow inputs (api.c), so they read them as float. */
typedef struct attn__bwd_tensors {
  const void *q, *k, *v;
  const float *o, *lse, *dout;
  float *dq, *dk, *dv, *dbias; /* dbias may be NULL */
} attn__bwd_tensors;

/* Validates every argument of attn_backward; check_pointers = 0 for size queries (t->dbias is then
 * only tested for NULL). */
attn_status attn__check_backward(const char *fn, const attn_params *p, const attn__bwd_tensors *t,
                                 int check_pointers, attn__problem *pr);

/* Validates every argument of attn_backward_sinks. */
attn_status attn__check_sinks_backward(const char *fn, const attn_params *p, const float *o,
                                       const float *lse, const float *dout, const float *dsinks,
                                       attn__problem *pr);

/* The tensors of one attn_merge (backward = 0) or attn_merge_backward (backward = 1) call. */
typedef struct attn__merge_tensors {
  int backward;
  int n_parts;
  const float *const *o_parts, *const *lse_parts;
  float *o, *lse;           /* attn_merge outputs (o may be o_parts[k], lse lse_parts[k]) */
  const float *dout, *dlse; /* attn_merge_backward inputs (with o, lse as inputs) */
  float *const *do_parts, *const *dlse_parts;
} attn__merge_tensors;

attn_status attn__check_merge(const char *fn, const attn_params *p, const attn__merge_tensors *x,
                              int check_pointers, attn__problem *pr);

/* klen(b): per-batch key length (kv_len, or packed keys' cu_seqlens_k) or len_k. */
static inline int64_t attn__klen(const attn_params *p, int64_t b) {
  if (p->cu_seqlens_k) return p->cu_seqlens_k[b + 1] - p->cu_seqlens_k[b];
  return p->kv_len ? p->kv_len[b] : p->len_k;
}

/* qlen(b): per-batch query length (q_len, or packed queries' cu_seqlens_q) or len_q (rows at or
 * past it are padding and see no key). */
static inline int64_t attn__qlen(const attn_params *p, int64_t b) {
  if (p->cu_seqlens_q) return p->cu_seqlens_q[b + 1] - p->cu_seqlens_q[b];
  return p->q_len ? p->q_len[b] : p->len_q;
}

/* The first two sizes and the row count of a tensor of query rows (Q, O, LSE, dO, dQ) as its
 * strides see it: [B, ·, Lq, ·], or one run of cu_seqlens_q[B] rows when the queries are packed. */
static inline void attn__q_rows(const attn_params *p, int64_t *n, int64_t *rows) {
  *n = p->cu_seqlens_q ? 1 : p->batch;
  *rows = p->cu_seqlens_q ? p->cu_seqlens_q[p->batch] : p->len_q;
}

/* The same for the key rows of K, V, dK, dV (not paged). */
static inline void attn__k_rows(const attn_params *p, int64_t *n, int64_t *rows) {
  *n = p->cu_seqlens_k ? 1 : p->batch;
  *rows = p->cu_seqlens_k ? p->cu_seqlens_k[p->batch] : p->len_k;
}

/* 1 when keys at or past klen(b) have no storage (paged or packed K and V): never address them. */
static inline int attn__kv_per_seq(const attn_params *p) {
  return p->block_table != NULL || p->cu_seqlens_k != NULL;
}

/* Query rows of batch item b that have storage: qlen(b) when the queries are packed, else Lq. */
static inline int64_t attn__q_stored(const attn_params *p, int64_t b) {
  return p->cu_seqlens_q ? attn__qlen(p, b) : p->len_q;
}

/* Key rows of batch item b that have storage: klen(b) when paged or packed, else Lk. */
static inline int64_t attn__k_stored(const attn_params *p, int64_t b) {
  return attn__kv_per_seq(p) ? attn__klen(p, b) : p->len_k;
}

/* Element offset of row i (i < qlen(b) when the queries are packed) of head h of batch item b in
 * a tensor of query rows (Q, O, LSE, dO, dQ) whose strides are `stride`: row cu_seqlens_q[b] + i
 * of [·, H, total, ·] when packed (stride[0] unused). */
static inline int64_t attn__q_row(const attn_params *p, const int64_t *stride, int64_t b, int64_t h,
                                  int64_t i) {
  if (p->cu_seqlens_q) return h * stride[1] + (p->cu_seqlens_q[b] + i) * stride[2];
  return b * stride[0] + h * stride[1] + i * stride[2];
}

/* The offset between query index and key position: pos(i) = i + attn__pos_shift(p, b). */
static inline int64_t attn__pos_shift(const attn_params *p, int64_t b) {
  return p->align == ATTN_ALIGN_BOTTOM_RIGHT ? attn__klen(p, b) - attn__qlen(p, b) : 0;
}

/* Paged K and V: entries per block-table row, ceil(len_k / page_size), and the row stride. */
static inline int64_t attn__pages_per_seq(const attn_params *p) {
  return p->len_k == 0 ? 0 : (p->len_k - 1) / p->page_size + 1;
}
static inline int64_t attn__block_table_stride(const attn_params *p) {
  return p->block_table_stride >= 0 ? p->block_table_stride : attn__pages_per_seq(p);
}

/* Element offset of the row of key j (j < klen(b) when paged or packed) of KV head hk of batch
 * item b in K or V (or dK, dV), whose strides are `stride`: through the block table when K and V
 * are paged, row cu_seqlens_k[b] + j when packed. */
static inline int64_t attn__kv_row(const attn_params *p, const int64_t stride[4], int64_t b,
                                   int64_t hk, int64_t j) {
  if (p->cu_seqlens_k) return hk * stride[1] + (p->cu_seqlens_k[b] + j) * stride[2];
  if (!p->block_table) return b * stride[0] + hk * stride[1] + j * stride[2];
  const int64_t page = p->block_table[b * attn__block_table_stride(p) + j / p->page_size];
  return page * stride[0] + hk * stride[1] + j % p->page_size * stride[2];
}

/* ---- dropout (dropout.c) ---- */

/* Philox4x32-10 of counter ctr (in place) under the 64-bit key. */
void attn__philox4x32_10(uint32_t ctr[4], uint64_t key);
/* x[c] for keys j0 + c (c < cols) of row (b, h, i): × 1/(1 − dropout) if kept, else 0 (p->dropout
 * > 0). The fused kernels' weights; the kept set is attn_dropout_keep's. */
void attn__dropout_row(const attn_params *p, int64_t b, int64_t h, int64_t i, int64_t j0, int cols,
                       float *x);
/* The same in portable C (attn__dropout_row uses AVX2 where the CPU has it: the same words). */
void attn__dropout_row_c(const attn_params *p, int64_t b, int64_t h, int64_t i, int64_t j0,
                         int cols, float *x);

/* ---- kernels (dispatch.c, ref/, kernels/) ---- */

/* q, k, v of the types pr->p->q_dtype, k_dtype, v_dtype (the ref kernel gets fp32 copies of
 * narrow inputs from api.c; the fused kernels read narrow inputs themselves). */
typedef attn_status (*attn__fwd_fn)(const attn__problem *pr, const void *q, const void *k,
                                    const void *v, float *o, float *lse, float *probs);

attn_status attn__fwd_f32__ref(const attn__problem *pr, const void *q, const void *k, const void *v,
                               float *o, float *lse, float *probs);
attn_status attn__fwd_f32__generic(const attn__problem *pr, const void *q, const void *k,
                                   const void *v, float *o, float *lse, float *probs);
attn_status attn__fwd_f32__avx2(const attn__problem *pr, const void *q, const void *k,
                                const void *v, float *o, float *lse, float *probs);
attn_status attn__fwd_f32__avx512(const attn__problem *pr, const void *q, const void *k,
                                  const void *v, float *o, float *lse, float *probs);

typedef attn_status (*attn__bwd_fn)(const attn__problem *pr, const attn__bwd_tensors *t);
attn_status attn__bwd_f32__ref(const attn__problem *pr, const attn__bwd_tensors *t);
attn_status attn__bwd_f32__generic(const attn__problem *pr, const attn__bwd_tensors *t);
attn_status attn__bwd_f32__avx2(const attn__problem *pr, const attn__bwd_tensors *t);
attn_status attn__bwd_f32__avx512(const attn__problem *pr, const attn__bwd_tensors *t);

/* The ref kernels' visibility rule for pair (i, j) of batch b, head h (fwd_ref.c): 1 if visible,
 * with the pair's bias (0 without one) in *bias. */
int attn__ref_visible(const attn_params *p, int64_t b, int64_t h, int64_t i, int64_t j, int64_t pos,
                      int64_t klen, double *bias);

/* Resolves p->kernel (AUTO through ATTN_ISA or detection) to a supported kernel, or fails with a
 * message naming fn. */
attn_status attn__resolve_kernel(const char *fn, attn_kernel requested, attn_kernel *out);

/* CPU features, detected once (cpu.c). */
typedef struct attn__cpu {
  int avx2_fma; /* AVX2, FMA and F16C with OS-saved YMM state */
  int avx512;   /* AVX-512 F and BW with OS-saved ZMM state */
} attn__cpu;
const attn__cpu *attn__cpu_get(void);

/* Bytes of scratch a kernel allocates for a validated call. */
typedef attn_status (*attn__scratch_fn)(const attn__problem *pr, int with_probs, size_t *bytes);
attn_status attn__scratch_f32__ref(const attn__problem *pr, int with_probs, size_t *bytes);
attn_status attn__scratch_f32__generic(const attn__problem *pr, int with_probs, size_t *bytes);
attn_status attn__scratch_f32__avx2(const attn__problem *pr, int with_probs, size_t *bytes);
attn_status attn__scratch_f32__avx512(const attn__problem *pr, int with_probs, size_t *bytes);

attn_status attn__bwd_scratch_f32__ref(const attn__problem *pr, int with_dbias, size_t *bytes);
attn_status attn__bwd_scratch_f32__generic(const attn__problem *pr, int with_dbias, size_t *bytes);
attn_status attn__bwd_scratch_f32__avx2(const attn__problem *pr, int with_dbias, size_t *bytes);
attn_status attn__bwd_scratch_f32__avx512(const attn__problem *pr, int with_dbias, size_t *bytes);

/* The entry points of a resolved (non-AUTO, supported) kernel. */
attn__fwd_fn attn__kernel_fwd(attn_kernel kernel);
attn__scratch_fn attn__kernel_scratch(attn_kernel kernel);
attn__bwd_fn attn__kernel_bwd(attn_kernel kernel);
attn__scratch_fn attn__kernel_bwd_scratch(attn_kernel kernel);

/* attn_backward_sinks on validated tensors (sinks.c). */
attn_status attn__backward_sinks(const attn__problem *pr, const float *o, const float *lse,
                                 const float *dout, float *dsinks);

/* attn_merge and attn_merge_backward on validated tensors (merge.c). */
attn_status attn__merge(const attn__problem *pr, const attn__merge_tensors *x);
attn_status attn__merge_backward(const attn__problem *pr, const attn__merge_tensors *x);

/* ---- narrow inputs: fp16, bf16, fp8 (convert.c) ---- */

/* Bytes per element: 4 for ATTN_DTYPE_F32, 2 for the 16-bit types, 1 for fp8 (a constant where t
 * is one after inlining). */
static inline size_t attn__dtype_size(attn_dtype t) {
  return t == ATTN_DTYPE_F32 ? 4 : t == ATTN_DTYPE_F16 || t == ATTN_DTYPE_BF16 ? 2 : 1;
}

/* Element `offset` of an array base of type t. */
static inline const void *attn__elem(attn_dtype t, const void *base, int64_t offset) {
  return (const char *)base + offset * (int64_t)attn__dtype_size(t);
}

/* dst[d] = element offset + d·stride of src (of type t), as float (exact), for d in [0, n). */
void attn__widen(attn_dtype t, const void *src, int64_t offset, int64_t stride, int64_t n,
                 float *dst);

/* ---- threads (threads.c) ---- */

/* Runs fn(ctx, item, worker) for every item in [0, n_items) on up to `workers` threads (the caller
 * is worker 0). Items are handed out dynamically; each item must write disjoint memory, so the
 * result never depends on which worker ran it. worker < workers indexes per-worker scratch. */
typedef void (*attn__task_fn)(void *ctx, int64_t item, int worker);
void attn__parallel_for(int workers, int64_t n_items, attn__task_fn fn, void *ctx);

/* Workers for a call of n_items items whose work would take one core about est_us microseconds:
 * 1 below the serial threshold (100 µs by default: waking the pool costs ~10–30 µs per parallel
 * pass, more than a second core saves on such a call — on the Zen 4, decode of 8 heads against
 * 512 keys took 64 µs on one thread and 129 on two), else `threads` (at most n_items, at least 1).
 * Results never depend on it. */
int attn__workers_for(int threads, int64_t n_items, double est_us);
/* Sets the serial threshold in µs (0: every call uses its threads); the test kit sets 0 so that
 * its small calls still run on every thread they ask for. Not thread-safe: set it first. */
void attn__set_serial_us(double us);
/* Sets the largest packed K of one KV head (bytes; 1 MiB by default) for which the forward runs
 * a head's query blocks on a per-worker copy (fwd_tiled.c, head_items) instead of after the
 * pre-passes, and returns the previous value; tests set 0 to reach the pre-passes on small
 * shapes. Not thread-safe: set it between calls. Results never depend on it. */
int64_t attn__set_head_item_bytes(int64_t bytes);
/* One core's time in µs for `flops` fp32 FLOPs and `bytes` of memory traffic, by the rule of thumb
 * 100 GFLOP/s and 20 GB/s (a guess in either direction only moves the serial threshold). */
static inline double attn__est_us(double flops, double bytes) { return flops / 1e5 + bytes / 2e4; }

/* Number of online CPUs, at least 1. */
int attn__cpu_count(void);

/* ---- checked size arithmetic ---- */

static inline int attn__mul_ok(int64_t a, int64_t b, int64_t *r) {
  return !__builtin_mul_overflow(a, b, r);
}
static inline int attn__add_ok(int64_t a, int64_t b, int64_t *r) {
  return !__builtin_add_overflow(a, b, r);
}

#endif /* ATTN_INTERNAL_H */
