/*
 * ring.c — ring attention over MPI (see attn_ring.h).
 *
 * Step s = 0 … N−1: rank r holds the K/V block of rank (r − s) mod N. It computes its local
 * queries against that block — as a few attn_forward calls over (query chunk, key chunk, batch
 * item), each classified from global positions into rows that see nothing, rows that see a causal
 * prefix (a bottom-right causal call whose kv_len places the diagonal) and rows that see every
 * valid key of the chunk — and merges each result into its running (O, LSE) with attn_merge. The
 * next block is received (and the current one sent on) with MPI_Irecv/MPI_Isend while it computes.
 * The backward runs the same calls through attn_backward with the merged O and LSE; dQ accumulates
 * locally, dK/dV accumulate in buffers that travel with their block and reach its owner after one
 * extra hop.
 */
#include "attn_ring.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local char ring_error[512];

const char *attn_ring_last_error(void) { return ring_error; }

static attn_status ring_fail(attn_status st, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(ring_error, sizeof ring_error, fmt, ap);
  va_end(ap);
  return st;
}

int64_t attn_ring_shard_rows(int64_t local_len, int rank, int ranks, int causal, int64_t i) {
  if (!causal) return (int64_t)rank * local_len + i;
  const int64_t c = local_len / 2;
  const int64_t chunk = i < c ? rank : 2 * (int64_t)ranks - 1 - rank;
  return chunk * c + (i < c ? i : i - c);
}

/* One shard's contiguous row ranges: [local, local + len) holds global rows [global, …). */
typedef struct span {
  int64_t local, global, len;
} span;

static int spans_of(int64_t local_len, int rank, int ranks, int causal, span out[2]) {
  if (!causal) {
    out[0] = (span){0, (int64_t)rank * local_len, local_len};
    return 1;
  }
  const int64_t c = local_len / 2;
  out[0] = (span){0, (int64_t)rank * c, c};
  out[1] = (span){c, (2 * (int64_t)ranks - 1 - rank) * c, c};
  return 2;
}

/* The state of one collective call. */
typedef struct ring {
  const attn_params *p;
  MPI_Comm comm;
  int rank, ranks;
  int64_t B, Hq, Hkv, Lloc, L, D, Dv;
  float *kv[2]; /* K/V block buffers: K [B, Hkv, Lloc, D] then V [B, Hkv, Lloc, Dv] */
  size_t kv_floats;
  attn_status st; /* first local failure; the ranks agree on it at the end */
} ring;

/* A call on (query span qs rows [r0, r1), key span ks, batch item b). */
typedef void (*call_fn)(ring *g, const attn_params *cp, int64_t b, int64_t q_local, int64_t k_local,
                        const float *kblk, const float *vblk, void *ctx);

/* Issues the calls of local query span qs against key span ks of the block in kvb, per batch
 * item, classified from global positions. */
static void span_calls(ring *g, const span *qs, const span *ks, const float *kvb, call_fn fn,
                       void *ctx) {
  const attn_params *p = g->p;
  const float *kblk = kvb, *vblk = kvb + g->B * g->Hkv * g->Lloc * g->D;
  for (int64_t b = 0; b < g->B; b++) {
    const int64_t klen = p->kv_len ? p->kv_len[b] : g->L;
    const int64_t shift = p->align == ATTN_ALIGN_BOTTOM_RIGHT ? klen - g->L : 0;
    int64_t e = klen - ks->global; /* valid keys of the chunk */
    e = e < 0 ? 0 : (e > ks->len ? ks->len : e);
    if (e == 0) continue;
    const int64_t lq = qs->len, delta = qs->global + shift - ks->global; /* pos − key index */
    int64_t r0 = 0, r1 = 0; /* rows [r0, r1) see a causal prefix, [r1, lq) every valid key */
    if (p->causal) {
      r0 = -delta < 0 ? 0 : (-delta > lq ? lq : -delta);
      r1 = e - 1 - delta < r0 ? r0 : (e - 1 - delta > lq ? lq : e - 1 - delta);
    }
    attn_params cp;
    for (int part = 0; part < 2; part++) {
      const int64_t a = part ? r1 : r0, z = part ? lq : r1;
      if (z <= a) continue;
      int64_t kv_len = part ? e : z + delta; /* causal: pos(i) = i + kv_len − rows */
      attn_params_init(&cp, 1, g->Hq, g->Hkv, z - a, ks->len, g->D, g->Dv);
      memcpy(cp.q_stride, p->q_stride, sizeof cp.q_stride);
      attn_strides_packed(cp.k_stride, g->Hkv, g->Lloc, g->D);
      attn_strides_packed(cp.v_stride, g->Hkv, g->Lloc, g->Dv);
      memcpy(cp.o_stride, p->o_stride, sizeof cp.o_stride);
      memcpy(cp.lse_stride, p->lse_stride, sizeof cp.lse_stride);
      memcpy(cp.dout_stride, p->dout_stride, sizeof cp.dout_stride);
      cp.has_scale = 1;
      cp.scale = p->has_scale ? p->scale : (float)(1.0 / sqrt((double)g->D)); /* as attn's */
      cp.softcap = p->softcap;
      cp.threads = p->threads;
      cp.kernel = p->kernel;
      cp.kv_len = &kv_len;
      if (!part) cp.causal = 1, cp.align = ATTN_ALIGN_BOTTOM_RIGHT;
      fn(g, &cp, b, qs->local + a, ks->local, kblk, vblk, ctx);
    }
  }
}

/* Every call of one ring step: local queries against the block of rank src held in kvb. */
static void step_calls(ring *g, int src, const float *kvb, call_fn fn, void *ctx) {
  span qs[2], ks[2];
  const int nq = spans_of(g->Lloc, g->rank, g->ranks, g->p->causal, qs);
  const int nk = spans_of(g->Lloc, src, g->ranks, g->p->causal, ks);
  for (int a = 0; a < nq; a++)
    for (int c = 0; c < nk; c++)
      span_calls(g, &qs[a], &ks[c], kvb, fn, ctx);
}

/* ---- checks, agreed by every rank ---- */

static attn_status check_local(const attn_params *p, int ranks) {
  if (!p) return ring_fail(ATTN_STATUS_INVALID_ARGUMENT, "attn_ring: p (params) is NULL");
  if (p->mask || p->bias || p->alibi_slopes || p->window_left >= 0 || p->window_right >= 0)
    return ring_fail(ATTN_STATUS_UNSUPPORTED,
                     "attn_ring: mask, bias, window and ALiBi are not supported across shards "
                     "(they need per-pair data or key positions a shard's call does not see)");
  if (p->sinks)
    return ring_fail(ATTN_STATUS_UNSUPPORTED,
                     "attn_ring: sinks are not supported across shards (each block's call would "
                     "count the sink again)");
  if (p->q_len)
    return ring_fail(ATTN_STATUS_UNSUPPORTED,
                     "attn_ring: q_len is not supported across shards (every rank holds the same "
                     "number of query rows)");
  if (p->dropout != 0.0f)
    return ring_fail(ATTN_STATUS_UNSUPPORTED,
                     "attn_ring: dropout (%g) is not supported across shards (a shard's call "
                     "numbers its queries and keys locally, so it would drop other pairs)",
                     (double)p->dropout);
  if (p->cu_seqlens_q || p->cu_seqlens_k)
    return ring_fail(ATTN_STATUS_UNSUPPORTED,
                     "attn_ring: cu_seqlens_q or cu_seqlens_k is set: packed sequences are not "
                     "supported across shards (each rank holds [B, H, L, D] shards)");
  if (p->block_table)
    return ring_fail(ATTN_STATUS_UNSUPPORTED,
                     "attn_ring: block_table is set: each rank holds its K and V rows as an "
                     "ordinary tensor (paged K and V are for attn_forward)");
  if (p->q_dtype != ATTN_DTYPE_F32 || p->k_dtype != ATTN_DTYPE_F32 || p->v_dtype != ATTN_DTYPE_F32)
    return ring_fail(ATTN_STATUS_UNSUPPORTED,
                     "attn_ring: q_dtype, k_dtype and v_dtype (%s, %s, %s) must be f32: the ring "
                     "passes fp32 K/V blocks between ranks",
                     attn_dtype_name(p->q_dtype), attn_dtype_name(p->k_dtype),
                     attn_dtype_name(p->v_dtype));
  if (p->len_q != p->len_k)
    return ring_fail(ATTN_STATUS_INVALID_ARGUMENT,
                     "attn_ring: len_q (%" PRId64 ") must equal len_k (%" PRId64
                     "): each rank holds the same rows of Q, K and V",
                     p->len_q, p->len_k);
  if (p->causal && p->len_q % 2)
    return ring_fail(ATTN_STATUS_INVALID_ARGUMENT,
                     "attn_ring: the local length (%" PRId64 ") must be even for causal attention "
                     "(two zig-zag chunks per rank)",
                     p->len_q);
  if (p->kv_len)
    for (int64_t b = 0; b < p->batch; b++)
      if (p->kv_len[b] < 0 || p->kv_len[b] > p->len_k * ranks)
        return ring_fail(ATTN_STATUS_INVALID_ARGUMENT,
                         "attn_ring: kv_len[%" PRId64 "] (%" PRId64
                         ") must be in [0, global length %" PRId64 "]",
                         b, p->kv_len[b], p->len_k * ranks);
  size_t bytes;
  attn_params v = *p;
  v.kv_len = NULL; /* the global lengths exceed the local len_k */
  if (attn_forward_scratch_bytes(&v, 0, &bytes) != ATTN_STATUS_OK)
    return ring_fail(ATTN_STATUS_INVALID_ARGUMENT, "attn_ring: %s", attn_last_error());
  return ATTN_STATUS_OK;
}

/* Every rank contributes its status and its shape signature; returns the worst status, with a
 * message on every rank. */
static attn_status agree(const attn_params *p, MPI_Comm comm, attn_status local) {
  enum { N = 12 };
  int64_t sig[N] = {0}, lo[N], hi[N];
  const char *names[N] = {"status", "batch",  "heads_q", "heads_kv", "len_q", "dim",
                          "dim_v",  "causal", "align",   "kv_len",   "scale", "softcap"};
  sig[0] = local;
  if (p) {
    int64_t kv = 0;
    if (p->kv_len && local == ATTN_STATUS_OK)
      for (int64_t b = 0; b < p->batch; b++)
        kv = kv * 1000003 + p->kv_len[b] + 1;
    const int64_t v[N] = {local,
                          p->batch,
                          p->heads_q,
                          p->heads_kv,
                          p->len_q,
                          p->dim,
                          p->dim_v,
                          p->causal,
                          (int64_t)p->align,
                          kv,
                          p->has_scale ? (int64_t)(p->scale * 1e6f) : -1,
                          (int64_t)(p->softcap * 1e6f)};
    memcpy(sig, v, sizeof sig);
  }
  MPI_Allreduce(sig, lo, N, MPI_INT64_T, MPI_MIN, comm);
  MPI_Allreduce(sig, hi, N, MPI_INT64_T, MPI_MAX, comm);
  if (hi[0] != ATTN_STATUS_OK) {
    if (local == ATTN_STATUS_OK)
      return ring_fail((attn_status)hi[0], "attn_ring: another rank failed (%s); see its message",
                       attn_status_str((attn_status)hi[0]));
    return local;
  }
  for (int i = 1; i < N; i++)
    if (lo[i] != hi[i])
      return ring_fail(ATTN_STATUS_INVALID_ARGUMENT,
                       "attn_ring: the ranks disagree on %s (%" PRId64 " on one rank, %" PRId64
                       " on another): every rank must pass the same shapes and options",
                       names[i], lo[i], hi[i]);
  return ATTN_STATUS_OK;
}

static attn_status setup(ring *g, const attn_params *p, MPI_Comm comm) {
  memset(g, 0, sizeof *g);
  g->p = p;
  g->comm = comm;
  MPI_Comm_rank(comm, &g->rank);
  MPI_Comm_size(comm, &g->ranks);
  attn_status st = agree(p, comm, check_local(p, g->ranks));
  if (st != ATTN_STATUS_OK) return st;
  g->B = p->batch, g->Hq = p->heads_q, g->Hkv = p->heads_kv, g->Lloc = p->len_q;
  g->L = g->Lloc * g->ranks, g->D = p->dim, g->Dv = p->dim_v;
  g->kv_floats = (size_t)(g->B * g->Hkv * g->Lloc * (g->D + g->Dv));
  return ATTN_STATUS_OK;
}

/* Packs the local K and V (any strides) into buf. */
static void pack_kv(const ring *g, const float *k, const float *v, float *buf) {
  const attn_params *p = g->p;
  float *kd = buf, *vd = buf + g->B * g->Hkv * g->Lloc * g->D;
  for (int64_t b = 0; b < g->B; b++)
    for (int64_t h = 0; h < g->Hkv; h++)
      for (int64_t j = 0; j < g->Lloc; j++) {
        for (int64_t d = 0; d < g->D; d++)
          *kd++ =
              k[b * p->k_stride[0] + h * p->k_stride[1] + j * p->k_stride[2] + d * p->k_stride[3]];
        for (int64_t d = 0; d < g->Dv; d++)
          *vd++ =
              v[b * p->v_stride[0] + h * p->v_stride[1] + j * p->v_stride[2] + d * p->v_stride[3]];
      }
}

/* Runs the ring: step(s, src, block) for s = 0 … N−1 while the next block travels. Every rank
 * calls step at every step, also after a local failure (g->st set): a step computes only while
 * g->st is OK but keeps taking part in any exchange of its own, so no rank waits forever. */
typedef void (*step_fn)(ring *g, int s, int src, const float *kvb, void *ctx);
static attn_status run_ring(ring *g, const float *k, const float *v, step_fn step, void *ctx) {
  if (g->kv_floats > (size_t)INT32_MAX)
    return ring_fail(ATTN_STATUS_UNSUPPORTED,
                     "attn_ring: a K/V block of %zu floats exceeds one MPI message (%d)",
                     g->kv_floats, INT32_MAX);
  g->kv[0] = malloc(sizeof(float) * (g->kv_floats + 1));
  g->kv[1] = malloc(sizeof(float) * (g->kv_floats + 1));
  if (!g->kv[0] || !g->kv[1])
    g->st = ring_fail(ATTN_STATUS_OUT_OF_MEMORY, "attn_ring: rank %d: out of memory", g->rank);
  g->st = agree(g->p, g->comm, g->st); /* every rank has its buffers, or none goes on */
  if (g->st != ATTN_STATUS_OK) {
    free(g->kv[0]), free(g->kv[1]);
    return g->st;
  }
  pack_kv(g, k, v, g->kv[0]);
  const int next = (g->rank + 1) % g->ranks, prev = (g->rank + g->ranks - 1) % g->ranks;
  for (int s = 0; s < g->ranks; s++) {
    MPI_Request req[2];
    const int more = s + 1 < g->ranks;
    if (more) {
      MPI_Irecv(g->kv[(s + 1) % 2], (int)g->kv_floats, MPI_FLOAT, prev, 7, g->comm, &req[0]);
      MPI_Isend(g->kv[s % 2], (int)g->kv_floats, MPI_FLOAT, next, 7, g->comm, &req[1]);
    }
    step(g, s, (g->rank - s + g->ranks) % g->ranks, g->kv[s % 2], ctx);
    if (more) MPI_Waitall(2, req, MPI_STATUSES_IGNORE);
  }
  free(g->kv[0]), free(g->kv[1]);
  return g->st;
}

/* ---- forward ---- */

typedef struct fwd_ctx {
  const float *q;
  float *o_acc, *lse_acc, *o_tmp, *lse_tmp; /* packed [B, Hq, Lloc, Dv] and [B, Hq, Lloc] */
  attn_params packed;                       /* strides of the accumulators */
} fwd_ctx;

static void fwd_call(ring *g, const attn_params *cp, int64_t b, int64_t q_local, int64_t k_local,
                     const float *kblk, const float *vblk, void *vctx) {
  fwd_ctx *c = vctx;
  const attn_params *p = g->p;
  attn_params call = *cp;
  memcpy(call.o_stride, c->packed.o_stride, sizeof call.o_stride);
  memcpy(call.lse_stride, c->packed.lse_stride, sizeof call.lse_stride);
  const int64_t qo = b * p->q_stride[0] + q_local * p->q_stride[2];
  const int64_t oo = b * call.o_stride[0] + q_local * call.o_stride[2];
  const int64_t lo = b * call.lse_stride[0] + q_local * call.lse_stride[2];
  const int64_t ko = b * g->Hkv * g->Lloc * g->D + k_local * g->D;
  const int64_t vo = b * g->Hkv * g->Lloc * g->Dv + k_local * g->Dv;
  attn_status st =
      attn_forward(&call, c->q + qo, kblk + ko, vblk + vo, c->o_tmp + oo, c->lse_tmp + lo, NULL);
  const float *op[2] = {c->o_acc + oo, c->o_tmp + oo}, *lp[2] = {c->lse_acc + lo, c->lse_tmp + lo};
  if (st == ATTN_STATUS_OK) st = attn_merge(&call, 2, op, lp, c->o_acc + oo, c->lse_acc + lo);
  if (st != ATTN_STATUS_OK && g->st == ATTN_STATUS_OK)
    g->st = ring_fail(st, "attn_ring: rank %d: %s", g->rank, attn_last_error());
}

static void fwd_step(ring *g, int s, int src, const float *kvb, void *ctx) {
  (void)s;
  if (g->st == ATTN_STATUS_OK) step_calls(g, src, kvb, fwd_call, ctx);
}

attn_status attn_ring_forward(const attn_params *p, MPI_Comm comm, const float *q, const float *k,
                              const float *v, float *o, float *lse) {
  ring g;
  attn_status st = setup(&g, p, comm);
  if (st != ATTN_STATUS_OK) return st;
  fwd_ctx c = {q, NULL, NULL, NULL, NULL, {0}};
  attn_params_init(&c.packed, g.B, g.Hq, g.Hkv, g.Lloc, g.Lloc, g.D, g.Dv);
  const size_t no = (size_t)(g.B * g.Hq * g.Lloc * g.Dv), nl = (size_t)(g.B * g.Hq * g.Lloc);
  c.o_acc = calloc(no + 1, sizeof(float)), c.o_tmp = calloc(no + 1, sizeof(float));
  c.lse_acc = malloc((nl + 1) * sizeof(float)), c.lse_tmp = malloc((nl + 1) * sizeof(float));
  if (!c.o_acc || !c.o_tmp || !c.lse_acc || !c.lse_tmp)
    g.st = ring_fail(ATTN_STATUS_OUT_OF_MEMORY, "attn_ring: rank %d: out of memory", g.rank);
  for (size_t i = 0; c.lse_acc && i < nl; i++)
    c.lse_acc[i] = -INFINITY; /* nothing seen yet: an empty part */
  st = run_ring(&g, k, v, fwd_step, &c);
  st = agree(p, comm, st);
  if (st == ATTN_STATUS_OK) /* copy out with the caller's strides */
    for (int64_t b = 0; b < g.B; b++)
      for (int64_t h = 0; h < g.Hq; h++)
        for (int64_t i = 0; i < g.Lloc; i++) {
          const size_t r = (size_t)((b * g.Hq + h) * g.Lloc + i);
          for (int64_t d = 0; d < g.Dv; d++)
            o[b * p->o_stride[0] + h * p->o_stride[1] + i * p->o_stride[2] + d * p->o_stride[3]] =
                c.o_acc[r * (size_t)g.Dv + (size_t)d];
          if (lse)
            lse[b * p->lse_stride[0] + h * p->lse_stride[1] + i * p->lse_stride[2]] = c.lse_acc[r];
        }
  free(c.o_acc), free(c.o_tmp), free(c.lse_acc), free(c.lse_tmp);
  return st;
}

/* ---- backward ---- */

typedef struct bwd_ctx {
  const float *q, *o, *lse, *dout;
  float *dq_acc; /* packed [B, Hq, Lloc, D] */
  float *dkv;    /* the travelling dK/dV of the current block, laid out like a K/V block */
  float *dkv_next;
  float *dq_tmp;  /* [Hq, Lloc, D] */
  float *dkv_tmp; /* [Hkv, Lloc, D] then [Hkv, Lloc, Dv] */
} bwd_ctx;

static void bwd_call(ring *g, const attn_params *cp, int64_t b, int64_t q_local, int64_t k_local,
                     const float *kblk, const float *vblk, void *vctx) {
  bwd_ctx *c = vctx;
  const attn_params *p = g->p;
  attn_params call = *cp;
  const int64_t rows = call.len_q, lk = call.len_k;
  attn_strides_packed(call.dq_stride, g->Hq, rows, g->D);
  attn_strides_packed(call.dk_stride, g->Hkv, lk, g->D);
  attn_strides_packed(call.dv_stride, g->Hkv, lk, g->Dv);
  float *dk_tmp = c->dkv_tmp, *dv_tmp = c->dkv_tmp + g->Hkv * lk * g->D;
  const int64_t ko = b * g->Hkv * g->Lloc * g->D + k_local * g->D;
  const int64_t vo = b * g->Hkv * g->Lloc * g->Dv + k_local * g->Dv;
  attn_status st =
      attn_backward(&call, c->q + b * p->q_stride[0] + q_local * p->q_stride[2], kblk + ko,
                    vblk + vo, c->o + b * p->o_stride[0] + q_local * p->o_stride[2],
                    c->lse + b * p->lse_stride[0] + q_local * p->lse_stride[2],
                    c->dout + b * p->dout_stride[0] + q_local * p->dout_stride[2], c->dq_tmp,
                    dk_tmp, dv_tmp, NULL);
  if (st != ATTN_STATUS_OK) {
    if (g->st == ATTN_STATUS_OK)
      g->st = ring_fail(st, "attn_ring: rank %d: %s", g->rank, attn_last_error());
    return;
  }
  for (int64_t h = 0; h < g->Hq; h++) /* dQ rows of this call */
    for (int64_t i = 0; i < rows; i++)
      for (int64_t d = 0; d < g->D; d++)
        c->dq_acc[((b * g->Hq + h) * g->Lloc + q_local + i) * g->D + d] +=
            c->dq_tmp[(h * rows + i) * g->D + d];
  float *dk = c->dkv, *dv = c->dkv + g->B * g->Hkv * g->Lloc * g->D;
  for (int64_t h = 0; h < g->Hkv; h++) /* dK, dV rows of the key chunk, in the travelling block */
    for (int64_t j = 0; j < lk; j++) {
      for (int64_t d = 0; d < g->D; d++)
        dk[((b * g->Hkv + h) * g->Lloc + k_local + j) * g->D + d] +=
            dk_tmp[(h * lk + j) * g->D + d];
      for (int64_t d = 0; d < g->Dv; d++)
        dv[((b * g->Hkv + h) * g->Lloc + k_local + j) * g->Dv + d] +=
            dv_tmp[(h * lk + j) * g->Dv + d];
    }
}

/* Computes the block's share, then passes its dK/dV accumulators on with it (a blocking exchange:
 * they are complete only after the step); after N hops each rank holds its own block's. */
static void bwd_step(ring *g, int s, int src, const float *kvb, void *ctx) {
  bwd_ctx *c = ctx;
  (void)s;
  if (g->st == ATTN_STATUS_OK) step_calls(g, src, kvb, bwd_call, c);
  if (g->ranks > 1) {
    const int next = (g->rank + 1) % g->ranks, prev = (g->rank + g->ranks - 1) % g->ranks;
    MPI_Sendrecv(c->dkv, (int)g->kv_floats, MPI_FLOAT, next, 9, c->dkv_next, (int)g->kv_floats,
                 MPI_FLOAT, prev, 9, g->comm, MPI_STATUS_IGNORE);
    float *t = c->dkv;
    c->dkv = c->dkv_next, c->dkv_next = t;
  }
}

attn_status attn_ring_backward(const attn_params *p, MPI_Comm comm, const float *q, const float *k,
                               const float *v, const float *o, const float *lse, const float *dout,
                               float *dq, float *dk, float *dv) {
  ring g;
  attn_status st = setup(&g, p, comm);
  if (st != ATTN_STATUS_OK) return st;
  if (!lse) g.st = ring_fail(ATTN_STATUS_INVALID_ARGUMENT, "attn_ring_backward: lse is NULL");
  bwd_ctx c = {q, o, lse, dout, NULL, NULL, NULL, NULL, NULL};
  c.dq_acc = calloc((size_t)(g.B * g.Hq * g.Lloc * g.D) + 1, sizeof(float));
  c.dkv = calloc(g.kv_floats + 1, sizeof(float));
  c.dkv_next = calloc(g.kv_floats + 1, sizeof(float));
  c.dq_tmp = malloc(((size_t)(g.Hq * g.Lloc * g.D) + 1) * sizeof(float));
  c.dkv_tmp = malloc(((size_t)(g.Hkv * g.Lloc * (g.D + g.Dv)) + 1) * sizeof(float));
  if (!c.dq_acc || !c.dkv || !c.dkv_next || !c.dq_tmp || !c.dkv_tmp)
    g.st = ring_fail(ATTN_STATUS_OUT_OF_MEMORY, "attn_ring: rank %d: out of memory", g.rank);
  st = run_ring(&g, k, v, bwd_step, &c); /* the ranks agree on any failure before the ring */
  st = agree(p, comm, st);
  if (st == ATTN_STATUS_OK) {
    const float *dkp = c.dkv, *dvp = c.dkv + g.B * g.Hkv * g.Lloc * g.D;
    for (int64_t b = 0; b < g.B; b++)
      for (int64_t h = 0; h < g.Hkv; h++)
        for (int64_t j = 0; j < g.Lloc; j++) {
          for (int64_t d = 0; d < g.D; d++)
            dk[b * p->dk_stride[0] + h * p->dk_stride[1] + j * p->dk_stride[2] +
               d * p->dk_stride[3]] = *dkp++;
          for (int64_t d = 0; d < g.Dv; d++)
            dv[b * p->dv_stride[0] + h * p->dv_stride[1] + j * p->dv_stride[2] +
               d * p->dv_stride[3]] = *dvp++;
        }
    for (int64_t b = 0; b < g.B; b++)
      for (int64_t h = 0; h < g.Hq; h++)
        for (int64_t i = 0; i < g.Lloc; i++)
          for (int64_t d = 0; d < g.D; d++)
            dq[b * p->dq_stride[0] + h * p->dq_stride[1] + i * p->dq_stride[2] +
               d * p->dq_stride[3]] = c.dq_acc[((b * g.Hq + h) * g.Lloc + i) * g.D + d];
  }
  free(c.dq_acc), free(c.dkv), free(c.dkv_next), free(c.dq_tmp), free(c.dkv_tmp);
  return st;
}
