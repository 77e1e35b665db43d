/*
 * fwd_tiled.c — the fused FlashAttention-2 style forward, portable driver over a microkernel set
 * (tiled.h). Compiled without ISA flags; the arithmetic on packed tiles comes from the set.
 *
 * Work item = (batch b, query head h, block of br query rows). For each item, over key tiles of bc
 * keys that some row of the block can see:
 *   1. pack the K tile (any strides) and the V tile. When more than one query block or head
 *      reads each tile, pre-passes do that once per call instead: K is packed whole (if the copy
 *      fits K_PREPACK_MAX_BYTES; a tile starting at a multiple of nr is then a slice of it), and
 *      V is read in place (contiguous columns, Dv a multiple of the set's nr) after a count of
 *      the V rows holding NaN or inf, so only a tile that has one is packed (for the masked
 *      product). With a single reader, V is read in place too, each tile scanned where it is.
 *      Short keys (a head's packed K ≤ 1 MiB) need no pre-pass: work goes in lanes, one per
 *      worker, that take (batch, KV head) pairs in turn, pack the pair's K into the worker's
 *      scratch (hot in its L2) and run the query blocks of the group's heads on it, scanning each
 *      V tile once; a lane out of pairs takes blocks from the lane with the most left, packing
 *      that pair's K too (lane_item);
 *   2. S = (scale·Q)·Kᵀ, Q packed pre-scaled               (uk->qk)
 *   3. S = softcap, ALiBi, bias; −inf where invisible      (score_tile; skipped for tiles every
 *                                                           row sees whole with no per-pair
 * feature)
 *   4. online softmax: m_new = max(m, rowmax S), α = exp(m − m_new), P = exp(S − m_new),
 *      l = α·l + rowsum P   (Milakov & Gimelshein arXiv:1805.02867; Dao arXiv:2307.08691)
 * (uk->softmax)
 *   5. acc = α·acc + P·V                                   (uk->pv)
 * On a ragged tile (rows that see different keys of it: the causal diagonal, window edges) steps
 * 2, 4 and 5 run per group of GROUP_ROWS rows over the nr-aligned columns the group can see, so
 * the triangle of a causal diagonal tile that no row sees is not computed (2–3 % of a causal call).
 * then O = acc / l and LSE = m + log l, with the empty-row rule (l = 0 → O = +0, LSE = −inf); an
 * attention sink is folded in first (fold_sink: one more term of l, with no value).
 * If P is requested, a second sweep recomputes S per tile and writes exp(S − m) / l.
 *
 * Extra memory: one scratch block per worker, O(br·D + bc·(D + Dv) + br·bc + br·Dv), never
 * O(Lq·Lk); with the pre-passes, 8 bytes per key and KV head and the packed K (≤ 64 MiB). Key tiles
 * no row of the block can see (key length, causal, window) are never touched, so causal attention
 * does about half the work. Results do not depend on the thread count: each item is computed by one
 * worker with the same code, and items write disjoint outputs.
 *
 * Key split (no P requested, Lk ≥ 2·DECODE_CHUNK): for decode (Lq ≤ 16, every query row of a
 * KV group in one block), and for prefill whose query blocks alone make fewer than
 * SPLIT_MIN_ITEMS items (one head, a few hundred queries against long keys: one item would leave
 * the other threads idle), work items become (batch, KV head, block of the KV group's query rows,
 * chunk of keys), so K and V are read once per block and the key range is shared by all threads;
 * the partial (m, l, acc) of the chunks are merged exactly through their log-sum-exp, in chunk
 * order ("flash-decoding"). Chunks and blocks depend on shapes only, so results never depend on
 * the thread count. Decode blocks read K and V in place through the set's direct forms (rows whose
 * elements are not contiguous copied into a contiguous tile first, so every layout of the same
 * numbers gives the same sums, bitwise). Few items that cannot split the keys (fewer than
 * 2·DECODE_CHUNK keys, or P requested) get smaller query blocks instead (at least
 * SPLIT_MIN_ROWS·mr rows), again by a rule on shapes only.
 *
 * Masked values: a V tile holding any non-finite value goes through uk->pv_masked, which skips
 * invisible pairs instead of multiplying them by 0 (0·NaN = NaN), so NaN behind a mask never
 * reaches O; with finite values both paths give the same bits.
 *
 * Narrow inputs (fp16, bf16, fp8; every value exactly a float): Q rows are widened as they are
 * scaled, K tiles widened into kc and then packed (the once-per-call pre-pack too), V tiles widened
 * as they are packed (never read in place); decode blocks hand the narrow rows to the direct forms,
 * which widen them in registers, or — blocks of more than DIRECT_WIDE_ROWS rows — widen each tile
 * once into kc and vc. The arithmetic after widening is the fp32 path's, so the results are bitwise
 * those of the fp32 call on the widened values.
 *
 * Paged K and V (block_table): decode blocks give the direct forms each run of a tile's keys that
 * lies in one page, where it is (the rescale by α with the first run only: bitwise one call);
 * for the packed products a K tile in one page is packed from where it is and one that spans
 * pages is gathered run by run into kc first, and V tiles are always packed (never read in
 * place). Only the addresses change, so the results are bitwise those of the call on the gathered
 * tensors.
 *
 * Packed sequences (cu_seqlens_q, cu_seqlens_k): only the addresses change (attn__q_row,
 * attn__kv_row), plus the rule that rows with no storage are never touched: query rows past
 * qlen(b) are packed as zeros and not written (write_row), key rows past klen(b) are widened as
 * zeros (kv_rows_widen, which the K pre-pack reaches) and never read in place. So the results are
 * bitwise those of the padded call with q_len and kv_len.
 */
#include "tiled.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* head_items: one per lane (worker) — the pair it runs, and the next of that pair's blocks,
 * (pair << 32) | block, handed out by fetch-and-add; the pair counter first. A cache line each. */
typedef struct lane_slot {
  _Alignas(64) atomic_ullong word;
} lane_slot;

typedef struct fwd_job {
  const attn__fwd_ukernel *uk;
  const attn__problem *pr;
  const void *q, *k, *v; /* of the types p->q_dtype, k_dtype, v_dtype */
  float *o, *lse, *probs;
  int64_t n_qblocks, qb_rows, dvp; /* prefill: query blocks of qb_rows (≤ br) rows */
  unsigned char *scratch;          /* n_workers × scratch_bytes */
  size_t scratch_bytes;
  /* key split: items (b, KV head, row block, key chunk); direct = decode proper, where the
   * set's direct forms read K and V in place. Row r of block rb is row R = rb·block_rows + r of
   * the KV group's group·Lq rows: query head hk·group + R / Lq, query R % Lq */
  int split, direct;
  int64_t chunk, n_chunks;       /* keys per chunk, chunks per row block */
  int64_t block_rows, n_rblocks; /* KV group rows per block (≤ br), blocks per KV group */
  float *partials; /* [B, Hkv, n_rblocks, n_chunks, block_rows, dv + 2]: acc, then m and l */
  /* prefill reads V in place when its layout allows (contiguous columns, Dv a multiple of the
   * set's nr); with several readers of each tile (v_counts) a pre-pass makes bad[j] = number of
   * V rows before key j holding a non-finite value, [B, Hkv, Lk + 1], so a tile's check is one
   * subtraction instead of a scan per query block; a single reader scans each tile itself */
  int v_rows_ok, v_counts;
  int64_t *v_bad;
  /* prefill with K packed once per call (several query blocks or heads read each K tile, and
   * the copy fits K_PREPACK_MAX_BYTES): [B, Hkv, round_up(Lk, nr) · D] in the set's pack_k
   * layout, so the tile at key j0 (a multiple of nr) starts at j0 · D */
  int k_prepack;
  float *k_packed;
  int64_t k_packed_len; /* floats per (b, KV head) */
  /* prefill with short keys: items are lanes, one per worker, that take (b, KV head) pairs in
   * turn and run the query blocks of each pair's heads on K packed once into the worker's scratch
   * (kh), each V tile checked once (v_ok) — no pre-pass, and the copy is read from L2 while hot.
   * A lane out of pairs takes blocks from the lane with the most left (lane_item) */
  int head_items;
  int64_t blocks_per_pair, n_lanes; /* group · n_qblocks; lanes = workers */
  lane_slot *lanes; /* [1 + n_lanes]: the next pair to take, then each lane's slot */
} fwd_job;

/* Decode: up to DECODE_MAX_LQ queries, keys in chunks of DECODE_CHUNK. Prefill with fewer than
 * SPLIT_MIN_ITEMS items splits the keys into about SPLIT_CHUNKS chunks (multiples of
 * DECODE_CHUNK): enough items to balance the threads, few partials to merge. */
enum {
  DIRECT_WIDE_ROWS = 32,
  DECODE_MAX_LQ = 16,
  DECODE_CHUNK = 512,
  SPLIT_MIN_ITEMS = 8,
  SPLIT_CHUNKS = 16,
  SPLIT_MIN_ROWS = 4
};
#define K_PREPACK_MAX_BYTES ((int64_t)64 << 20)
/* head_items: packed K of one KV head at most this size (Zen 4's L2; 2 threads, t_min against the
 * pre-passes: B = 4, H = 8, D = 64 at L = 1024 (256 KiB) 43.4–44.1 against 44.4–46.5 ms, at
 * L = 4096 (1 MiB) 675–676 against 681–689); tests lower it to reach the pre-passes on small
 * shapes (attn__set_head_item_bytes) */
static int64_t head_item_k_bytes = (int64_t)1 << 20;

int64_t attn__set_head_item_bytes(int64_t bytes) {
  const int64_t was = head_item_k_bytes;
  head_item_k_bytes = bytes;
  return was;
}

/* One worker's scratch, carved from fwd_job.scratch. */
typedef struct tile_scratch {
  int64_t *lo, *hi;       /* [br] visible key range [lo, hi) of each row */
  int64_t *row_h, *row_i; /* [br] query head and query index of each row */
  float *qs;              /* [br, D]  packed query rows */
  float *qp;              /* [br · D] the same in the microkernel's layout (uk->pack_q) */
  float *ks;              /* [bc · D] packed key tile */
  float *vs;              /* [bc, dvp] packed value tile */
  float *s;               /* [br, bc] scores, then probabilities */
  float *acc;             /* [br, dvp] unnormalised output */
  float *m, *l, *alpha;   /* [br] running max, running sum, this tile's rescale factor */
  float *ones;        /* [br] 1.0 (set once per call): the rescale of a tile's later page runs */
  unsigned char *vis; /* [br, bc] 1 where the pair is visible */
  int *grp;           /* [2·br] on a ragged tile: column range of each row group (group_cols) */
  float *kc;          /* [bc, D] a narrow, paged or packed K tile widened to fp32 (else empty) */
  float *vc;          /* [bc, Dv] the same for V, for the decode forms */
  float *kh;          /* head_items: [round_up(Lk, nr) · D] a pair's K, packed; else NULL */
  signed char *v_ok; /* head_items: [tiles of bc keys] V tile finite (1), not (0), unknown (−1) */
} tile_scratch;

/* Byte layout of one worker's scratch (tile_scratch order, each part 64-byte aligned); returns 0
 * if its size overflows. */
enum { N_PARTS = 20 };
static int scratch_layout(const attn__fwd_ukernel *uk, const attn_params *p, int64_t dvp,
                          int head_items, size_t offs[N_PARTS], size_t *total) {
  const int64_t br = uk->br, bc = uk->bc, D = p->dim;
  const int64_t qp = uk->pack_q ? br * D : 0;
  const int per_seq = attn__kv_per_seq(p); /* tiles may span pages or reach rows past klen(b) */
  /* (and for decode on K or V whose columns are not contiguous, copied for the direct forms) */
  const int64_t kc = p->k_dtype != ATTN_DTYPE_F32 || per_seq || p->k_stride[3] != 1 ? bc * D : 0;
  const int64_t vc =
      p->v_dtype != ATTN_DTYPE_F32 || per_seq || p->v_stride[3] != 1 ? bc * p->dim_v : 0;
  const int64_t kh = head_items ? attn__round_up(p->len_k, uk->nr) * D : 0;
  const int64_t v_ok = head_items ? (p->len_k + bc - 1) / bc : 0;
  /* lo, hi, row_h, row_i, qs, qp, ks, vs, s, acc, m, l, alpha, ones, vis, grp, kc, vc, kh, v_ok */
  const int64_t counts[N_PARTS] = {br,       br,      br,       br, br * D, qp,  bc * D,
                                   bc * dvp, br * bc, br * dvp, br, br,     br,  br,
                                   br * bc,  2 * br,  kc,       vc, kh,     v_ok};
  const int64_t sizes[N_PARTS] = {8, 8, 8, 8, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 1, 4, 4, 4, 4, 1};
  int64_t at = 0, bytes;
  for (int i = 0; i < N_PARTS; i++) {
    offs[i] = (size_t)at;
    if (!attn__mul_ok(counts[i], sizes[i], &bytes) || !attn__add_ok(at, bytes, &at) ||
        !attn__add_ok(at, 63, &at))
      return 0;
    at &= ~(int64_t)63;
  }
  *total = (size_t)at;
  return 1;
}

static tile_scratch carve(const fwd_job *job, int worker) {
  size_t o[N_PARTS], total;
  scratch_layout(job->uk, job->pr->p, job->dvp, job->head_items, o, &total);
  unsigned char *base = job->scratch + (size_t)worker * job->scratch_bytes;
  tile_scratch t;
  t.lo = (int64_t *)(void *)(base + o[0]);
  t.hi = (int64_t *)(void *)(base + o[1]);
  t.row_h = (int64_t *)(void *)(base + o[2]);
  t.row_i = (int64_t *)(void *)(base + o[3]);
  t.qs = (float *)(void *)(base + o[4]);
  t.qp = (float *)(void *)(base + o[5]);
  t.ks = (float *)(void *)(base + o[6]);
  t.vs = (float *)(void *)(base + o[7]);
  t.s = (float *)(void *)(base + o[8]);
  t.acc = (float *)(void *)(base + o[9]);
  t.m = (float *)(void *)(base + o[10]);
  t.l = (float *)(void *)(base + o[11]);
  t.alpha = (float *)(void *)(base + o[12]);
  t.ones = (float *)(void *)(base + o[13]);
  t.vis = base + o[14];
  t.grp = (int *)(void *)(base + o[15]);
  t.kc = (float *)(void *)(base + o[16]);
  t.vc = (float *)(void *)(base + o[17]);
  t.kh = job->head_items ? (float *)(void *)(base + o[18]) : NULL;
  t.v_ok = job->head_items ? (signed char *)(base + o[19]) : NULL;
  return t;
}

int attn__rows_finite(const float *src, int64_t row_stride, int cols, int64_t n) {
  uint32_t nonfinite = 0; /* exponent bits all ones: NaN or ±inf; an integer OR vectorises */
  for (int c = 0; c < cols; c++)
    for (int64_t d = 0; d < n; d++) {
      uint32_t bits;
      memcpy(&bits, &src[c * row_stride + d], sizeof bits);
      nonfinite |= (uint32_t)((bits & 0x7f800000u) == 0x7f800000u);
    }
  return nonfinite == 0;
}

int attn__pack_rows(const float *src, int64_t row_stride, int64_t col_stride, int64_t j0, int cols,
                    int64_t n, int64_t ld, float *dst) {
  for (int c = 0; c < cols; c++) {
    const float *row = src + (j0 + c) * row_stride;
    float *out = dst + (int64_t)c * ld;
    if (col_stride == 1) {
      if (n > 0) memcpy(out, row, sizeof(float) * (size_t)n); /* n = 0: row may be NULL */
    } else {
      for (int64_t d = 0; d < n; d++)
        out[d] = row[d * col_stride];
    }
    for (int64_t d = n; d < ld; d++)
      out[d] = 0.0f;
  }
  return attn__rows_finite(dst, ld, cols, n);
}

int attn__widen_rows(attn_dtype t, const void *src, int64_t row_stride, int64_t col_stride,
                     int64_t j0, int cols, int64_t n, int64_t ld, float *dst) {
  if (t == ATTN_DTYPE_F32)
    return attn__pack_rows(src, row_stride, col_stride, j0, cols, n, ld, dst);
  for (int c = 0; c < cols; c++) {
    float *out = dst + (int64_t)c * ld;
    attn__widen(t, src, (j0 + c) * row_stride, col_stride, n, out);
    for (int64_t d = n; d < ld; d++)
      out[d] = 0.0f;
  }
  return attn__rows_finite(dst, ld, cols, n);
}

/* attn__widen_rows through the set's own form when it has one. */
static int widen_rows(const attn__fwd_ukernel *uk, attn_dtype t, const void *src,
                      int64_t row_stride, int64_t col_stride, int64_t j0, int cols, int64_t n,
                      int64_t ld, float *dst) {
  return (uk->widen_rows ? uk->widen_rows : attn__widen_rows)(t, src, row_stride, col_stride, j0,
                                                              cols, n, ld, dst);
}

/* K or V of a call, as the tile functions below address it. */
typedef struct kv_tensor {
  const void *base;
  attn_dtype type;
  const int64_t *stride;
  int64_t n; /* D or Dv */
} kv_tensor;

static kv_tensor k_of(const fwd_job *job) {
  const attn_params *p = job->pr->p;
  return (kv_tensor){job->k, p->k_dtype, p->k_stride, p->dim};
}
static kv_tensor v_of(const fwd_job *job) {
  const attn_params *p = job->pr->p;
  return (kv_tensor){job->v, p->v_dtype, p->v_stride, p->dim_v};
}

/* Keys from j on that lie in j's page, at most n (n itself unless K and V are paged). */
static int page_run(const attn_params *p, int64_t j, int n) {
  if (!p->block_table) return n;
  const int64_t left = p->page_size - j % p->page_size;
  return left < n ? (int)left : n;
}

/* Address of the row of key j (j < klen(b) when paged) of KV head (b, hk) of x. */
static const void *kv_row_at(const fwd_job *job, kv_tensor x, int64_t b, int64_t hk, int64_t j) {
  return attn__elem(x.type, x.base, attn__kv_row(job->pr->p, x.stride, b, hk, j));
}

/* Paged decode: the direct forms prefetch K rows a few keys ahead of the one they read, within
 * the run of keys they are given, so at the end of a page they would prefetch the wrong rows;
 * the first K rows of the next page (from key j on, below j_end) are prefetched here instead,
 * into L2 as the direct forms do. Inlined on purpose: gcc deems a function that only prefetches
 * free of side effects and deletes calls to it (it did so to this one, at -O1 and above, until
 * 2026-11-26's ninth session). */
static inline __attribute__((always_inline)) void
prefetch_next_page(const fwd_job *job, int64_t b, int64_t hk, int64_t j, int64_t j_end) {
  const attn_params *p = job->pr->p;
  const kv_tensor k = k_of(job);
  const int n = page_run(p, j, (int)(j_end - j < 4 ? j_end - j : 4));
  const char *row = kv_row_at(job, k, b, hk, j);
  const int64_t row_bytes = k.n * (int64_t)attn__dtype_size(k.type);
  const int64_t stride_bytes = k.stride[2] * (int64_t)attn__dtype_size(k.type);
  for (int r = 0; r < n; r++)
    attn__prefetch_l2(row + r * stride_bytes, row_bytes);
}

/* What the direct forms read for key j0 + c of KV head (b, hk) of x: its row in place, or row c of
 * the tile widened into wide_tile. */
static const void *direct_row(const fwd_job *job, kv_tensor x, int wide, const float *wide_tile,
                              int64_t b, int64_t hk, int64_t j0, int c) {
  return wide ? (const void *)(wide_tile + (int64_t)c * x.n) : kv_row_at(job, x, b, hk, j0 + c);
}

/* 1 if rows [j0, j0 + cols) of a KV head lie stride[2] apart in memory: always, unless K and V
 * are paged and the rows span pages, or paged or packed and the rows reach past klen(b) (rows
 * with no storage). */
static int kv_rows_in_place(const fwd_job *job, int64_t b, int64_t j0, int cols) {
  const attn_params *p = job->pr->p;
  return !attn__kv_per_seq(p) || (page_run(p, j0, cols) == cols && j0 + cols <= attn__klen(p, b));
}

/* Widens rows [j0, j0 + cols) of KV head (b, hk) of x into dst [cols, ld] (columns [n, ld) zero),
 * one run of rows per page when paged, where rows at or past klen(b) when paged or packed (only
 * the once-per-call K pre-pack asks for them) are zero; returns 1 if every value is finite. */
static int kv_rows_widen(const fwd_job *job, kv_tensor x, int64_t b, int64_t hk, int64_t j0,
                         int cols, int64_t ld, float *dst) {
  const attn_params *p = job->pr->p;
  const int64_t stored = attn__k_stored(p, b);
  int finite = 1;
  for (int c = 0, run; c < cols; c += run) {
    if (j0 + c >= stored) {
      memset(dst + (int64_t)c * ld, 0, sizeof(float) * (size_t)(cols - c) * (size_t)ld);
      break;
    }
    run = page_run(p, j0 + c, cols - c);
    if (run > stored - (j0 + c)) run = (int)(stored - (j0 + c));
    finite &= widen_rows(job->uk, x.type, kv_row_at(job, x, b, hk, j0 + c), x.stride[2],
                         x.stride[3], 0, run, x.n, ld, dst + (int64_t)c * ld);
  }
  return finite;
}

/* Packs K rows [j0, j0 + cols) of KV head (b, hk) into dst with uk->pack_k; a narrow K, or rows
 * spanning pages, are widened into kc [cols, D] first. */
static void pack_k_tile(const fwd_job *job, float *kc, int64_t b, int64_t hk, int64_t j0, int cols,
                        float *dst) {
  const attn_params *p = job->pr->p;
  if (p->k_dtype == ATTN_DTYPE_F32 && kv_rows_in_place(job, b, j0, cols)) {
    job->uk->pack_k(kv_row_at(job, k_of(job), b, hk, j0), p->k_stride[2], p->k_stride[3], 0, cols,
                    p->dim, dst);
    return;
  }
  kv_rows_widen(job, k_of(job), b, hk, j0, cols, p->dim, kc);
  job->uk->pack_k(kc, p->dim, 1, 0, cols, p->dim, dst);
}

/* Packs (widens) V rows [j0, j0 + cols) of KV head (b, hk) into vs [cols, dvp]; returns 1 if every
 * value is finite. */
static int pack_v_tile(const fwd_job *job, int64_t b, int64_t hk, int64_t j0, int cols, float *vs) {
  return kv_rows_widen(job, v_of(job), b, hk, j0, cols, job->dvp, vs);
}

/* Turns the dot products S [rows, bc] for keys [j0, j0 + cols) into the contract's scores (Q was
 * pre-scaled; then softcap, ALiBi, bias), with −inf and vis = 0 for invisible pairs and for the
 * padding columns up to round_up(cols, nr). Bias is read only for pairs visible by the other rules.
 * Returns 1 if every pair was visible (then vis is left unwritten). */
static int score_tile(const attn__fwd_ukernel *uk, const attn__problem *pr, int64_t b,
                      int64_t shift, const tile_scratch *ts, int rows, int64_t j0, int cols) {
  const attn_params *p = pr->p;
  const int bc = uk->bc, cols_p = (int)attn__round_up(cols, uk->nr);
  int whole = !p->mask && !p->bias && p->softcap == 0.0f && !p->alibi_slopes;
  for (int r = 0; r < rows && whole; r++)
    whole = ts->lo[r] <= j0 && j0 + cols <= ts->hi[r];
  for (int r = 0; r < rows; r++)
    for (int c = cols; c < cols_p; c++)
      ts->s[r * bc + c] = -INFINITY;
  if (whole) return 1; /* the common interior tile: S is final as computed */

  for (int r = 0; r < rows; r++)
    attn__score_row(p, b, ts->row_h[r], ts->row_i[r], ts->row_i[r] + shift, ts->lo[r], ts->hi[r],
                    j0, cols, ts->s + r * bc, ts->vis + r * bc, NULL);
  return 0;
}

void attn__softmax_row_scalar(float *srow, int cols, float *m, float *l, float *alpha) {
  float mt = -INFINITY;
  for (int c = 0; c < cols; c++)
    if (srow[c] > mt || isnan(srow[c])) mt = srow[c];
  const float m_old = *m;
  const float m_new = (isnan(m_old) || isnan(mt)) ? NAN : (mt > m_old ? mt : m_old);
  if (m_new == -INFINITY) { /* nothing visible yet: the row is unchanged */
    *alpha = 1.0f;
    for (int c = 0; c < cols; c++)
      srow[c] = 0.0f;
    return;
  }
  const float a = expf(m_old - m_new); /* m_old = −inf → 0 (acc and l are still 0) */
  float sum = 0.0f;
  for (int c = 0; c < cols; c++) {
    const float pv = expf(srow[c] - m_new); /* invisible: exp(−inf) = 0 */
    srow[c] = pv;
    sum += pv;
  }
  *alpha = a;
  *l = *l * a + sum;
  *m = m_new;
}

/* KV head (b, hk)'s K packed whole, in the set's pack_k layout (the tile at key j0, a multiple of
 * nr, starts at j0 · D): the worker's copy (head_items), the call's, or NULL. */
static const float *packed_k(const fwd_job *job, const tile_scratch *ts, int64_t b, int64_t hk) {
  if (ts->kh) return ts->kh;
  return job->k_packed ? job->k_packed + (b * job->pr->p->heads_kv + hk) * job->k_packed_len : NULL;
}

/* The packed K tile of keys [j0, j0 + cols) of KV head (b, hk) for uk->qk: a slice of the packed
 * copy when there is one and the tile starts at a multiple of nr, else packed into ts->ks. */
static const float *k_tile(const fwd_job *job, const tile_scratch *ts, int64_t b, int64_t hk,
                           int64_t j0, int cols) {
  const float *kp = packed_k(job, ts, b, hk);
  if (kp && j0 % job->uk->nr == 0) return kp + j0 * job->pr->p->dim;
  pack_k_tile(job, ts->kc, b, hk, j0, cols, ts->ks);
  return ts->ks;
}

/* Rows per group on ragged tiles (see group_cols), rounded up to the set's mr. */
enum { GROUP_ROWS = 6 };

/* On a ragged tile (rows that see different keys of it: the causal diagonal, window edges) the
 * products of each group of rows [k·group, k·group + group) run over the columns
 * [grp[2k], grp[2k + 1]) the group can see, nr-aligned (the start rounded down, the end up, at
 * most round_up(cols, nr)), instead of the whole tile; the columns outside hold −inf from
 * score_tile. An empty range (0, 0): the group sees nothing of the tile. */
static void group_cols(const attn__fwd_ukernel *uk, tile_scratch *ts, int rows, int group,
                       int64_t j0, int cols) {
  for (int r0 = 0, k = 0; r0 < rows; r0 += group, k++) {
    int64_t lo = j0 + cols, hi = j0;
    for (int r = r0; r < r0 + group && r < rows; r++)
      if (ts->lo[r] < ts->hi[r] && ts->lo[r] < j0 + cols && ts->hi[r] > j0) {
        if (ts->lo[r] < lo) lo = ts->lo[r];
        if (ts->hi[r] > hi) hi = ts->hi[r];
      }
    ts->grp[2 * k] = ts->grp[2 * k + 1] = 0;
    if (hi <= lo) continue;
    if (lo < j0) lo = j0;
    if (hi > j0 + cols) hi = j0 + cols;
    ts->grp[2 * k] = (int)((lo - j0) / uk->nr * uk->nr);
    ts->grp[2 * k + 1] = (int)attn__round_up(hi - j0, uk->nr);
  }
}

/* Prefetches into L2 what a block of rows reads first — its Q rows and the K (or its packed copy)
 * and V rows of its first key tile — so that their memory latencies overlap instead of each
 * stalling the pass that first touches it (short keys: a block's Q, K and V are a few KiB each, too
 * short for the hardware's stream prefetch to ramp up; B = 32, H = 12, L = 64, D = 32, one
 * thread: 1.14× faster). Not for paged K and V. Always inlined: gcc deletes calls to a function
 * that only prefetches (see prefetch_next_page). */
static inline __attribute__((always_inline)) void
prefetch_first_tile(const fwd_job *job, const tile_scratch *ts, int64_t b, int64_t hk, int rows,
                    int64_t blo, int64_t bhi) {
  const attn_params *p = job->pr->p;
  if (p->block_table || job->direct || bhi <= blo) return;
  const int64_t q_bytes = p->dim * (int64_t)attn__dtype_size(p->q_dtype);
  const int64_t stored = attn__q_stored(p, b);
  for (int r = 0; r < rows; r++)
    if (ts->row_i[r] < stored)
      attn__prefetch_l2(attn__elem(p->q_dtype, job->q,
                                   attn__q_row(p, p->q_stride, b, ts->row_h[r], ts->row_i[r])),
                        q_bytes);
  int64_t j_end = blo + job->uk->bc < bhi ? blo + job->uk->bc : bhi;
  if (j_end > attn__k_stored(p, b)) j_end = attn__k_stored(p, b);
  const kv_tensor k = k_of(job), v = v_of(job);
  const int64_t k_size = (int64_t)attn__dtype_size(k.type),
                v_size = (int64_t)attn__dtype_size(v.type);
  const char *k_row = kv_row_at(job, k, b, hk, blo), *v_row = kv_row_at(job, v, b, hk, blo);
  if (job->k_packed && blo % job->uk->nr == 0)
    attn__prefetch_l2((const char *)(packed_k(job, ts, b, hk) + blo * p->dim),
                      (j_end - blo) * p->dim * (int64_t)sizeof(float));
  else if (!ts->kh)                           /* (the item's packed copy is in L2 already) */
    for (int64_t j = 0; j < j_end - blo; j++) /* rows stride[2] apart: not paged */
      attn__prefetch_l2(k_row + j * k.stride[2] * k_size, k.n * k_size);
  for (int64_t j = 0; j < j_end - blo; j++)
    attn__prefetch_l2(v_row + j * v.stride[2] * v_size, v.n * v_size);
}

/* head_items: whether the V rows of the tile at j0 (a multiple of bc) that the call may read —
 * [j0, min(j0 + bc, stored rows)) — are all finite, scanned once per pair a worker takes. A tile
 * used in part may so take the masked path for a non-finite row it does not use, which gives the
 * same bits. */
static int v_tile_ok(const fwd_job *job, tile_scratch *ts, int64_t b, int64_t hk, int64_t j0) {
  const attn_params *p = job->pr->p;
  const int64_t bc = job->uk->bc, t = j0 / bc, stored = attn__k_stored(p, b);
  if (ts->v_ok[t] < 0) {
    const int64_t end = j0 + bc < stored ? j0 + bc : stored;
    ts->v_ok[t] =
        (signed char)(end <= j0 || attn__rows_finite(kv_row_at(job, v_of(job), b, hk, j0),
                                                     p->v_stride[2], (int)(end - j0), p->dim_v));
  }
  return ts->v_ok[t];
}

/* Runs the fused loop for `rows` query rows of batch item b (row r is query row_i[r] of head
 * row_h[r], all reading KV head hk) over the keys in [j_lo, j_hi) that each row can see. Leaves
 * the running max, sum and unnormalised output in ts->m, ts->l, ts->acc; returns the union of the
 * visible ranges in *blo, *bhi. */
static void run_rows(const fwd_job *job, tile_scratch *ts, int64_t b, int64_t hk, int rows,
                     int64_t j_lo, int64_t j_hi, int64_t *blo_out, int64_t *bhi_out) {
  const attn__fwd_ukernel *uk = job->uk;
  const attn__problem *pr = job->pr;
  const attn_params *p = pr->p;
  const int64_t D = p->dim, Dv = p->dim_v, dvp = job->dvp;
  const int bc = uk->bc, rows_p = (int)attn__round_up(rows, uk->mr);
  const int rows_k = attn__rows_computed(uk, rows); /* rows the products compute (≤ rows_p) */
  const int64_t shift = attn__pos_shift(p, b);

  /* key range of every row (padding rows past qlen: empty) and of the block */
  int64_t blo = j_hi, bhi = j_lo;
  for (int r = 0; r < rows; r++) {
    attn__row_key_range(p, b, ts->row_i[r], &ts->lo[r], &ts->hi[r]);
    if (ts->lo[r] < j_lo) ts->lo[r] = j_lo;
    if (ts->hi[r] > j_hi) ts->hi[r] = j_hi;
    if (ts->lo[r] < ts->hi[r]) {
      if (ts->lo[r] < blo) blo = ts->lo[r];
      if (ts->hi[r] > bhi) bhi = ts->hi[r];
    }
  }
  if (bhi <= blo) blo = bhi = 0;
  *blo_out = blo, *bhi_out = bhi;

  prefetch_first_tile(job, ts, b, hk, rows, blo, bhi);

  /* Q rows, pre-scaled: s = (scale·q)·k; padding rows (no storage when packed) as zeros */
  const int64_t qlen = attn__qlen(p, b);
  for (int r = 0; r < rows; r++) {
    const int64_t q_at = attn__q_row(p, p->q_stride, b, ts->row_h[r], ts->row_i[r]);
    float *dst = ts->qs + (int64_t)r * D;
    if (ts->row_i[r] >= qlen) {
      memset(dst, 0, sizeof(float) * (size_t)D);
      continue;
    }
    if (p->q_dtype != ATTN_DTYPE_F32) { /* widened (exactly), then scaled as an fp32 row is */
      attn__widen(p->q_dtype, job->q, q_at, p->q_stride[3], D, dst);
      for (int64_t d = 0; d < D; d++)
        dst[d] = dst[d] * pr->scale;
      continue;
    }
    const float *qrow = (const float *)job->q + q_at;
    if (p->q_stride[3] == 1) /* the common layout, in vector loads */
      for (int64_t d = 0; d < D; d++)
        dst[d] = qrow[d] * pr->scale;
    else
      for (int64_t d = 0; d < D; d++)
        dst[d] = qrow[d * p->q_stride[3]] * pr->scale;
  }
  memset(ts->qs + (int64_t)rows * D, 0, sizeof(float) * (size_t)((rows_p - rows) * D));
  const float *qk_q = ts->qs;
  if (uk->pack_q) {
    uk->pack_q(ts->qs, rows_p, D, ts->qp);
    qk_q = ts->qp;
  }
  for (int r = 0; r < rows_p; r++) {
    ts->m[r] = -INFINITY;
    ts->l[r] = 0.0f;
    ts->alpha[r] = 1.0f; /* padding rows keep 1 */
  }
  memset(ts->acc, 0, sizeof(float) * (size_t)rows_p * (size_t)dvp);

  /* decode blocks read K and V in place (narrow values widened in registers) when the set can,
   * rows whose elements are not contiguous copied into a contiguous tile first, so the sums are
   * the same for every layout; the choice depends on shapes only, and a non-finite V still uses
   * qk_direct's scores */
  const int direct = job->direct && uk->qk_direct && uk->br <= uk->bc && Dv > 0;
  /* a decode block of more than DIRECT_WIDE_ROWS rows widens each narrow K and V tile once into
   * kc, vc for the direct forms, which would otherwise widen it again for every group of 4 rows
   * (bf16, 2 threads, D = 128, 32k keys: at 64 rows in registers 0.90× the fp32 call, widened
   * 1.02×); fewer rows widen in registers as they stream (1.06× faster than widened at 32 rows,
   * 1.18–1.28× at 16) */
  const int widen_tile = direct && rows > DIRECT_WIDE_ROWS;
  const int64_t *v_bad =
      job->v_counts ? job->v_bad + (b * p->heads_kv + hk) * (p->len_k + 1) : NULL;
  const int group = (int)attn__round_up(GROUP_ROWS, uk->mr);
  for (int64_t j0 = blo; j0 < bhi; j0 += bc) {
    const int cols = (int)(bhi - j0 < bc ? bhi - j0 : bc);
    int v_finite = 1, ragged = 0;
    /* the direct forms read K and V where they are, one call per run of keys in one page (one
     * run unless paged), or a narrow tile widened once for a block of many rows, or a tile whose
     * elements are not contiguous copied */
    const int k_wide =
        direct && ((widen_tile && p->k_dtype != ATTN_DTYPE_F32) || p->k_stride[3] != 1);
    const int v_wide =
        direct && ((widen_tile && p->v_dtype != ATTN_DTYPE_F32) || p->v_stride[3] != 1);
    const attn_dtype kd_t = k_wide ? ATTN_DTYPE_F32 : p->k_dtype;
    const attn_dtype vd_t = v_wide ? ATTN_DTYPE_F32 : p->v_dtype;
    const int64_t kd_rs = k_wide ? D : p->k_stride[2], vd_rs = v_wide ? Dv : p->v_stride[2];
    if (k_wide) kv_rows_widen(job, k_of(job), b, hk, j0, cols, D, ts->kc);
    if (v_wide) kv_rows_widen(job, v_of(job), b, hk, j0, cols, Dv, ts->vc);
    if (direct) {
      for (int c = 0, run; c < cols; c += run) {
        run = page_run(p, j0 + c, cols - c);
        if (p->block_table && !k_wide && j0 + c + run < bhi) /* see prefetch_next_page */
          prefetch_next_page(job, b, hk, j0 + c + run, bhi);
        uk->qk_direct(ts->qs, kd_t, direct_row(job, k_of(job), k_wide, ts->kc, b, hk, j0, c), kd_rs,
                      rows, run, D, ts->s + c, vd_t,
                      direct_row(job, v_of(job), v_wide, ts->vc, b, hk, j0, c), vd_rs, Dv);
      }
    } else {
      const float *kt = k_tile(job, ts, b, hk, j0, cols);
      if (job->v_rows_ok) { /* V in place (never paged): its finiteness from the counts, or a scan
                               of the tile */
        v_finite =
            v_bad ? v_bad[j0 + cols] == v_bad[j0]
            : ts->v_ok && j0 % bc == 0
                ? v_tile_ok(job, ts, b, hk, j0)
                : attn__rows_finite(kv_row_at(job, v_of(job), b, hk, j0), p->v_stride[2], cols, Dv);
        if (!v_finite) /* the masked path reads the packed copy */
          pack_v_tile(job, b, hk, j0, cols, ts->vs);
      } else {
        v_finite = pack_v_tile(job, b, hk, j0, cols, ts->vs);
      }
      for (int r = 0; r < rows && !ragged; r++)
        ragged = ts->lo[r] > j0 || ts->hi[r] < j0 + cols;
      if (ragged) group_cols(uk, ts, rows, group, j0, cols);
      if (!ragged) uk->qk(qk_q, kt, rows_k, cols, D, ts->s);
      for (int r0 = 0, k = 0; r0 < rows && ragged; r0 += group, k++) {
        const int g = rows - r0 < group ? rows - r0 : group, c_lo = ts->grp[2 * k];
        if (ts->grp[2 * k + 1] > c_lo)
          uk->qk(qk_q + (int64_t)r0 * D, kt + (int64_t)c_lo * D, attn__rows_computed(uk, g),
                 ts->grp[2 * k + 1] - c_lo, D, ts->s + r0 * bc + c_lo);
      }
    }
    const int whole = score_tile(uk, pr, b, shift, ts, rows, j0, cols);
    if (!ragged) uk->softmax(ts->s, rows, cols, ts->m, ts->l, ts->alpha);
    for (int r0 = 0, k = 0; r0 < rows && ragged; r0 += group, k++) {
      const int g = rows - r0 < group ? rows - r0 : group, c_lo = ts->grp[2 * k];
      if (ts->grp[2 * k + 1] > c_lo)
        uk->softmax(ts->s + r0 * bc + c_lo, g, ts->grp[2 * k + 1] - c_lo, ts->m + r0, ts->l + r0,
                    ts->alpha + r0);
      else /* nothing to see: the rows keep their state (P stays −inf, invisible) */
        for (int r = r0; r < r0 + g; r++)
          ts->alpha[r] = 1.0f;
    }
    if (p->dropout > 0.0f) /* the weights of dropped pairs to 0, the kept ones × 1/(1 − p) */
      for (int r = 0; r < rows; r++)
        attn__dropout_row(p, b, ts->row_h[r], ts->row_i[r], j0, cols, ts->s + r * bc);
    if (direct) {
      /* V is read in place; the kernel reports a non-finite value, and then acc (saved in vs,
       * free in this mode) is restored and the tile takes the packed, masked path. Runs after
       * the first rescale by 1 (exact): each output is one chain of FMAs over the tile's keys in
       * order, as in one call */
      memcpy(ts->vs, ts->acc, sizeof(float) * (size_t)rows * (size_t)dvp);
      for (int c = 0, run; c < cols && v_finite; c += run) {
        run = page_run(p, j0 + c, cols - c);
        v_finite =
            uk->pv_direct(ts->s + c, vd_t, direct_row(job, v_of(job), v_wide, ts->vc, b, hk, j0, c),
                          vd_rs, c ? ts->ones : ts->alpha, rows, run, Dv, dvp, ts->acc);
      }
      if (!v_finite) {
        memcpy(ts->acc, ts->vs, sizeof(float) * (size_t)rows * (size_t)dvp);
        pack_v_tile(job, b, hk, j0, cols, ts->vs);
      }
    } else if (v_finite) { /* V in place, or its packed copy */
      const float *vt =    /* in place (fp32), or the packed tile */
          job->v_rows_ok ? (const float *)kv_row_at(job, v_of(job), b, hk, j0) : ts->vs;
      const int64_t ldv = job->v_rows_ok ? p->v_stride[2] : dvp;
      if (!ragged) uk->pv(ts->s, vt, ldv, ts->alpha, rows_k, cols, dvp, ts->acc);
      for (int r0 = 0, k = 0; r0 < rows && ragged; r0 += group, k++) {
        const int g = rows - r0 < group ? rows - r0 : group, c_lo = ts->grp[2 * k];
        const int c_hi = ts->grp[2 * k + 1] < cols ? ts->grp[2 * k + 1] : cols;
        if (ts->grp[2 * k + 1] > c_lo)
          uk->pv(ts->s + r0 * bc + c_lo, vt + c_lo * ldv, ldv, ts->alpha + r0,
                 attn__rows_computed(uk, g), c_hi - c_lo, dvp, ts->acc + (int64_t)r0 * dvp);
      }
    }
    if (!v_finite) {
      if (whole) memset(ts->vis, 1, (size_t)rows * (size_t)bc);
      memset(ts->vis + (size_t)rows * (size_t)bc, 0, (size_t)(rows_p - rows) * (size_t)bc);
      uk->pv_masked(ts->s, ts->vs, ts->alpha, ts->vis, rows_k, cols, dvp, ts->acc);
    }
  }
}

/* Folds head h's attention sink (one more score, with a zero value) into a finished row's max m
 * and sum l; returns the factor exp(m_old − m) for the row's accumulator (1 without a sink). */
static float fold_sink(const attn_params *p, int64_t h, float *m, float *l) {
  if (!p->sinks || p->sinks[h] == -INFINITY || isnan(*m)) return 1.0f;
  const float sink = p->sinks[h], m_new = *m > sink ? *m : sink;
  const float a = expf(*m - m_new); /* m = −inf (nothing visible): 0 */
  *l = *l * a + expf(sink - m_new);
  *m = m_new;
  return a;
}

/* Writes O = a·acc / l and LSE = m + log l for one row (a from fold_sink); empty rows give O = +0,
 * LSE = −inf; padding rows of packed queries have no storage and are not written. */
static void write_row(const fwd_job *job, int64_t b, int64_t h, int64_t i, const float *acc,
                      float a, float m, float l) {
  const attn_params *p = job->pr->p;
  if (i >= attn__q_stored(p, b)) return;
  float *orow = job->o + attn__q_row(p, p->o_stride, b, h, i);
  float row_lse;
  if (l == 0.0f) {
    for (int64_t d = 0; d < p->dim_v; d++)
      orow[d * p->o_stride[3]] = 0.0f;
    row_lse = -INFINITY;
  } else { /* a = 1 (no sink, or one below the row's maximum) multiplies exactly */
    if (p->o_stride[3] == 1) /* the common layout: in vectors */
      for (int64_t d = 0; d < p->dim_v; d++)
        orow[d] = acc[d] * a / l;
    else
      for (int64_t d = 0; d < p->dim_v; d++)
        orow[d * p->o_stride[3]] = acc[d] * a / l;
    row_lse = m + logf(l);
  }
  if (job->lse) job->lse[attn__q_row(p, p->lse_stride, b, h, i)] = row_lse;
}

/* Pre-pass item (b, KV head) of in-place V (fp32, not paged): prefix counts of V rows holding a
 * non-finite value (rows of packed V past klen(b) do not exist: counted as finite). */
static void count_bad_v_item(void *ctx, int64_t item, int worker) {
  const fwd_job *job = ctx;
  const attn_params *p = job->pr->p;
  (void)worker;
  const int64_t hk = item % p->heads_kv, b = item / p->heads_kv;
  const int64_t rows = attn__k_stored(p, b);
  const float *vbase = (const float *)job->v + attn__kv_row(p, p->v_stride, b, hk, 0);
  int64_t *bad = job->v_bad + item * (p->len_k + 1);
  bad[0] = 0;
  for (int64_t j = 0; j < p->len_k; j++)
    bad[j + 1] =
        bad[j] + (j < rows && !attn__rows_finite(vbase + j * p->v_stride[2], 0, 1, p->dim_v));
}

/* Pre-pass item (b, KV head, tile of bc keys) of pre-packed K. */
static void pack_k_item(void *ctx, int64_t item, int worker) {
  const fwd_job *job = ctx;
  const attn_params *p = job->pr->p;
  const int64_t bc = job->uk->bc, n_tiles = (p->len_k + bc - 1) / bc;
  const int64_t j0 = item % n_tiles * bc, bhk = item / n_tiles;
  const int64_t hk = bhk % p->heads_kv, b = bhk / p->heads_kv;
  const int cols = (int)(p->len_k - j0 < bc ? p->len_k - j0 : bc);
  pack_k_tile(job, carve(job, worker).kc, b, hk, j0, cols,
              job->k_packed + bhk * job->k_packed_len + j0 * p->dim);
}

/* Items of the pre-passes: B·Hkv V counts (if any), then the K pre-pack's tiles (if any);
 * *n_counts (if non-NULL) gets the first number. */
static int64_t prepass_items(const fwd_job *job, int64_t *n_counts) {
  const attn_params *p = job->pr->p;
  const int64_t counts = job->v_bad ? p->batch * p->heads_kv : 0;
  if (n_counts) *n_counts = counts;
  return counts + (job->k_packed
                       ? p->batch * p->heads_kv * ((p->len_k + job->uk->bc - 1) / job->uk->bc)
                       : 0);
}

/* Pre-pass item: a V count (count_bad_v_item) or a K tile to pre-pack (pack_k_item). */
static void prepass_item(void *ctx, int64_t item, int worker) {
  int64_t n_counts;
  prepass_items(ctx, &n_counts);
  if (item < n_counts)
    count_bad_v_item(ctx, item, worker);
  else
    pack_k_item(ctx, item - n_counts, worker);
}

/* Query block qb of head h of batch item b: O, LSE (and P) of its rows. */
static void fwd_block(const fwd_job *job, tile_scratch ts, int64_t b, int64_t h, int64_t qb) {
  const attn__fwd_ukernel *uk = job->uk;
  const attn__problem *pr = job->pr;
  const attn_params *p = pr->p;
  const int64_t D = p->dim, Lq = p->len_q, Lk = p->len_k;
  const int bc = uk->bc;
  const int64_t hk = h / pr->group;
  const int64_t i0 = qb * job->qb_rows;
  const int rows = (int)(Lq - i0 < job->qb_rows ? Lq - i0 : job->qb_rows);
  for (int r = 0; r < rows; r++)
    ts.row_h[r] = h, ts.row_i[r] = i0 + r;
  int64_t blo, bhi;
  run_rows(job, &ts, b, hk, rows, 0, Lk, &blo, &bhi);
  for (int r = 0; r < rows; r++) { /* m, l with the sink folded in: the P sweep uses them too */
    const float a = fold_sink(p, h, &ts.m[r], &ts.l[r]);
    write_row(job, b, h, i0 + r, ts.acc + (int64_t)r * job->dvp, a, ts.m[r], ts.l[r]);
  }

  if (!job->probs) return;
  /* P sweep: zeros outside [blo, bhi), exp(S − m) / l inside (more accurate than exp(S − LSE)
   * when |LSE| is large: S − m is computed exactly near the maximum) */
  const int64_t shift = attn__pos_shift(p, b);
  for (int r = 0; r < rows; r++) {
    float *prow = job->probs + b * p->probs_stride[0] + h * p->probs_stride[1] +
                  (i0 + r) * p->probs_stride[2];
    for (int64_t j = 0; j < Lk; j++)
      if (j < blo || j >= bhi) prow[j * p->probs_stride[3]] = 0.0f;
  }
  for (int64_t j0 = blo; j0 < bhi; j0 += bc) {
    const int cols = (int)(bhi - j0 < bc ? bhi - j0 : bc);
    uk->qk(uk->pack_q ? ts.qp : ts.qs, k_tile(job, &ts, b, hk, j0, cols),
           attn__rows_computed(uk, rows), cols, D, ts.s);
    score_tile(uk, pr, b, shift, &ts, rows, j0, cols);
    for (int r = 0; r < rows; r++) {
      float *prow = job->probs + b * p->probs_stride[0] + h * p->probs_stride[1] +
                    (i0 + r) * p->probs_stride[2];
      for (int c = 0; c < cols; c++) {
        const float s = ts.s[r * bc + c]; /* −inf where invisible */
        prow[(j0 + c) * p->probs_stride[3]] = s == -INFINITY ? 0.0f : expf(s - ts.m[r]) / ts.l[r];
      }
    }
  }
}

/* Prefill item (b, h, query block). */
static void fwd_item(void *ctx, int64_t item, int worker) {
  const fwd_job *job = ctx;
  const attn_params *p = job->pr->p;
  const int64_t qb = item % job->n_qblocks, bh = item / job->n_qblocks;
  fwd_block(job, carve(job, worker), bh / p->heads_q, bh % p->heads_q, qb);
}

/* head_items: takes the blocks of the pair in *slot until none is left: block k is query block
 * n_qblocks − 1 − k % n_qblocks (the last, on causal rows the largest, first) of the group's head
 * k / n_qblocks. The pair's K is packed into the worker's scratch first unless it is there
 * (*have). Every block is computed from the same packed K by the same code whoever takes it. */
static void run_slot(const fwd_job *job, tile_scratch *ts, int64_t *have, lane_slot *slot) {
  const attn_params *p = job->pr->p;
  const int64_t nq = job->n_qblocks, bc = job->uk->bc;
  for (;;) {
    const unsigned long long w = atomic_fetch_add_explicit(&slot->word, 1, memory_order_relaxed);
    const int64_t pair = (int64_t)(w >> 32), k = (int64_t)(w & 0xffffffffu);
    if (k >= job->blocks_per_pair) return;
    const int64_t hk = pair % p->heads_kv, b = pair / p->heads_kv;
    if (*have != pair) {
      for (int64_t j0 = 0; j0 < p->len_k; j0 += bc) {
        pack_k_tile(job, ts->kc, b, hk, j0, (int)(p->len_k - j0 < bc ? p->len_k - j0 : bc),
                    ts->kh + j0 * p->dim);
        ts->v_ok[j0 / bc] = -1;
      }
      *have = pair;
    }
    fwd_block(job, *ts, b, hk * job->pr->group + k / nq, nq - 1 - k % nq);
  }
}

/* head_items: lane item (one per worker). Takes (b, KV head) pairs in turn and runs each one's
 * blocks through its slot; out of pairs, takes blocks from the slot with the most left (packing
 * that pair's K), so a worker that lags — a busy core — leaves no tail, and any number of pairs
 * shares the workers (B = 1, H = 2, L = 4096, D = 64, 2 threads, one core shared with a busy
 * loop: one pair per worker 84.6–84.9 ms, lanes 57–67 (t_min 55.0), items per query block after
 * the pre-passes 66–70 (t_min 55.7)). */
static void lane_item(void *ctx, int64_t lane, int worker) {
  const fwd_job *job = ctx;
  const attn_params *p = job->pr->p;
  const int64_t pairs = p->batch * p->heads_kv, n_lanes = job->n_lanes;
  tile_scratch ts = carve(job, worker);
  int64_t have = -1; /* the pair whose K is in ts.kh */
  lane_slot *own = &job->lanes[1 + lane];
  for (;;) {
    const int64_t pair =
        (int64_t)atomic_fetch_add_explicit(&job->lanes[0].word, 1, memory_order_relaxed);
    if (pair >= pairs) break;
    atomic_store_explicit(&own->word, (unsigned long long)pair << 32, memory_order_relaxed);
    run_slot(job, &ts, &have, own);
  }
  for (;;) {
    int64_t best = -1, most = 0;
    for (int64_t l = 0; l < n_lanes; l++) {
      const unsigned long long w =
          atomic_load_explicit(&job->lanes[1 + l].word, memory_order_relaxed);
      const int64_t left = job->blocks_per_pair - (int64_t)(w & 0xffffffffu);
      if (left > most) best = l, most = left;
    }
    if (best < 0) return;
    run_slot(job, &ts, &have, &job->lanes[1 + best]);
  }
}

/* Rows in row block rb of a KV group (the last one may be short). */
static int block_rows_at(const fwd_job *job, int64_t rb) {
  const int64_t left = job->pr->group * job->pr->p->len_q - rb * job->block_rows;
  return (int)(left < job->block_rows ? left : job->block_rows);
}

/* Key-split item (b, KV head, row block, key chunk): the block's query rows over the chunk's keys;
 * the partial (acc, m, l) of each row goes to job->partials, indexed (b, KV head, row block,
 * chunk). The items are handed out chunk-major, (b, chunk, KV head, row block), so the threads
 * read the KV heads of one chunk of keys at about the same time: where the rows of several heads
 * are interleaved in memory ([B, L, H, D] caches; pages laid out [page, slot, head, dim]) each
 * memory page is then read by all heads while it is fresh rather than once per head across the
 * whole cache (Lq = 1, Hq = 32, Hkv = 8, Lk = 32768, D = 128, 2 threads: a [B, L, H, D] cache
 * 36–42 → 26–31 ms, [B, H, L, D] unchanged at ~20 ms). The order changes no result. */
static void split_item(void *ctx, int64_t item, int worker) {
  const fwd_job *job = ctx;
  const attn_params *p = job->pr->p;
  const int64_t Lq = p->len_q, Dv = p->dim_v, group = job->pr->group;
  /* items run chunk-major: (b, chunk, KV head, row block) */
  const int64_t per_chunk = p->heads_kv * job->n_rblocks;
  const int64_t rb = item % job->n_rblocks, hk = item / job->n_rblocks % p->heads_kv;
  const int64_t chunk = item / per_chunk % job->n_chunks, b = item / per_chunk / job->n_chunks;
  const int64_t bhk = b * p->heads_kv + hk;
  const int64_t slot = (bhk * job->n_rblocks + rb) * job->n_chunks + chunk; /* in partials */
  const int rows = block_rows_at(job, rb);
  tile_scratch ts = carve(job, worker);
  for (int r = 0; r < rows; r++) {
    const int64_t R = rb * job->block_rows + r;
    ts.row_h[r] = hk * group + R / Lq, ts.row_i[r] = R % Lq;
  }
  const int64_t j_lo = chunk * job->chunk;
  const int64_t j_hi = j_lo + job->chunk < p->len_k ? j_lo + job->chunk : p->len_k;
  int64_t blo, bhi;
  run_rows(job, &ts, b, hk, rows, j_lo, j_hi, &blo, &bhi);
  float *out = job->partials + slot * job->block_rows * (Dv + 2);
  for (int r = 0; r < rows; r++, out += Dv + 2) {
    memcpy(out, ts.acc + (int64_t)r * job->dvp, sizeof(float) * (size_t)Dv);
    out[Dv] = ts.m[r];
    out[Dv + 1] = ts.l[r];
  }
}

/* Merge item (b, KV head, row block): for each row, m = max_c m_c, l = Σ_c l_c·exp(m_c − m),
 * acc = Σ_c acc_c·exp(m_c − m), in chunk order; a NaN m_c makes m NaN. */
static void merge_item(void *ctx, int64_t item, int worker) {
  const fwd_job *job = ctx;
  const attn_params *p = job->pr->p;
  const int64_t Lq = p->len_q, Dv = p->dim_v, group = job->pr->group;
  const int64_t rb = item % job->n_rblocks, bhk = item / job->n_rblocks;
  const int64_t hk = bhk % p->heads_kv, b = bhk / p->heads_kv;
  const int64_t rows = block_rows_at(job, rb), stride = job->block_rows * (Dv + 2);
  tile_scratch ts = carve(job, worker); /* acc row 0 as the merge buffer */
  for (int64_t r = 0; r < rows; r++) {
    const int64_t R = rb * job->block_rows + r;
    const float *part = job->partials + item * job->n_chunks * stride + r * (Dv + 2);
    float m = -INFINITY;
    for (int64_t c = 0; c < job->n_chunks; c++) {
      const float mc = part[c * stride + Dv];
      if (isnan(mc) || isnan(m))
        m = NAN;
      else if (mc > m)
        m = mc;
    }
    float l = 0.0f;
    for (int64_t d = 0; d < Dv; d++)
      ts.acc[d] = 0.0f;
    if (m != -INFINITY)
      for (int64_t c = 0; c < job->n_chunks; c++) {
        const float *pc = part + c * stride;
        if (pc[Dv + 1] == 0.0f && !isnan(m)) continue; /* a chunk with nothing visible */
        const float w = expf(pc[Dv] - m);
        l += pc[Dv + 1] * w;
        for (int64_t d = 0; d < Dv; d++)
          ts.acc[d] += pc[d] * w;
      }
    const int64_t h = hk * group + R / Lq;
    const float a = fold_sink(p, h, &m, &l);
    write_row(job, b, h, R % Lq, ts.acc, a, m, l);
  }
}

/* Sizes the job: mode, items, workers, per-worker scratch. The mode depends on shapes only, never
 * on the thread count. */
static attn_status plan(fwd_job *job, int *workers, int64_t *n_items) {
  const attn_params *p = job->pr->p;
  size_t offs[N_PARTS];
  const int64_t group = job->pr->group;
  const int64_t br = job->uk->br, group_rows = group * p->len_q; /* ≤ Hq·Lq: sizes were checked */
  job->n_qblocks = (p->len_q + br - 1) / br;
  job->dvp = job->uk->dv_pad(p->dim_v);
  int64_t prefill_items = 0;
  const int few = attn__mul_ok(p->batch * p->heads_q, job->n_qblocks, &prefill_items) &&
                  prefill_items < SPLIT_MIN_ITEMS;
  job->direct = p->len_q <= DECODE_MAX_LQ && group_rows <= br;
  job->split = (job->direct || few) && p->len_k >= 2 * DECODE_CHUNK && !job->probs;
  job->direct = job->direct && job->split;
  if (job->split) {
    const int64_t per_chunk = (p->len_k + SPLIT_CHUNKS - 1) / SPLIT_CHUNKS;
    job->chunk = job->direct ? DECODE_CHUNK : attn__round_up(per_chunk, DECODE_CHUNK);
    job->n_chunks = (p->len_k + job->chunk - 1) / job->chunk;
    job->n_rblocks = (group_rows + br - 1) / br; /* blocks of even size: no short last one */
    job->block_rows =
        attn__round_up((group_rows + job->n_rblocks - 1) / job->n_rblocks, job->uk->mr);
    if (job->block_rows > group_rows) job->block_rows = group_rows;
  }
  job->qb_rows = br;
  if (few && !job->split && p->batch * p->heads_q > 0) {
    /* too few items and no key split (short keys, or P requested): smaller query blocks, at
     * least SPLIT_MIN_ROWS·mr rows, so that the threads share the work */
    const int64_t want = (SPLIT_MIN_ITEMS + p->batch * p->heads_q - 1) / (p->batch * p->heads_q);
    int64_t rows = attn__round_up((p->len_q + want - 1) / want, job->uk->mr);
    if (rows < SPLIT_MIN_ROWS * job->uk->mr) rows = SPLIT_MIN_ROWS * job->uk->mr;
    job->qb_rows = rows < br ? rows : br;
    job->n_qblocks = (p->len_q + job->qb_rows - 1) / job->qb_rows;
  }
  /* readers of each K and V tile: query blocks times heads of a group, or row blocks */
  const int64_t readers = job->split ? job->n_rblocks : job->n_qblocks * group;
  /* V is read in place whenever its layout allows; the counting pre-pass pays when several
   * query blocks or heads read each V tile (else it would be a second pass over V) */
  job->v_rows_ok = !job->direct && p->v_dtype == ATTN_DTYPE_F32 && !p->block_table &&
                   p->v_stride[3] == 1 && p->dim_v > 0 && p->dim_v % job->uk->nr == 0;
  job->v_counts = job->v_rows_ok && p->len_k > 0 && p->len_q > 0 && readers >= 2;
  /* so does K packed once: each query block would pack every K tile it reads again */
  int64_t kp_bytes = 0;
  job->k_packed_len = attn__round_up(p->len_k, job->uk->nr) * p->dim;
  const int kp_fits = attn__mul_ok(p->batch * p->heads_kv, job->k_packed_len, &kp_bytes) &&
                      attn__mul_ok(kp_bytes, (int64_t)sizeof(float), &kp_bytes) &&
                      kp_bytes <= K_PREPACK_MAX_BYTES;
  job->k_prepack =
      !job->direct && kp_fits && p->dim > 0 && p->len_k > 0 && p->len_q > 0 && readers >= 2;
  int ok = job->split ? attn__mul_ok(p->batch, p->heads_kv, n_items) &&
                            attn__mul_ok(*n_items, job->n_rblocks * job->n_chunks, n_items)
                      : attn__mul_ok(p->batch, p->heads_q, n_items) &&
                            attn__mul_ok(*n_items, job->n_qblocks, n_items);
  if (!ok)
    return attn__fail(ATTN_STATUS_SIZE_OVERFLOW,
                      "attn_forward: work size overflows (batch %lld, heads %lld, len_q %lld)",
                      (long long)p->batch, (long long)p->heads_q, (long long)p->len_q);
  /* one core's time for the call (all pairs visible: an upper bound), for the serial threshold */
  const double rows_q = (double)p->batch * (double)p->heads_q * (double)p->len_q;
  const double rows_k = (double)p->batch * (double)p->heads_kv * (double)p->len_k;
  const double bytes = rows_q * ((double)p->dim * attn__dtype_size(p->q_dtype) + 4.0 * p->dim_v) +
                       rows_k * ((double)p->dim * attn__dtype_size(p->k_dtype) +
                                 (double)p->dim_v * attn__dtype_size(p->v_dtype)) +
                       (job->probs ? rows_q * (double)p->len_k * 4.0 : 0.0);
  *workers = attn__workers_for(
      job->pr->threads, *n_items,
      attn__est_us(2.0 * (double)(p->dim + p->dim_v) * rows_q * (double)p->len_k, bytes));
  /* short keys: lanes that take (b, KV head) pairs and pack each one's K in the worker (B = 32,
   * H = 12, L = 128, D = 32: the pre-passes wrote packed K to memory and read V once more;
   * 8.1–8.5 → 6.7–7.0 ms; B = 1, H = 2, D = 64: L = 1024 2.89–2.91 → 2.68–2.73 ms, L = 4096
   * 43.3 → 42.4). One lane per worker; the worker count stays what it is. */
  const int64_t pairs = job->k_prepack ? p->batch * p->heads_kv : 0; /* fits: kp_fits */
  job->blocks_per_pair = group * job->n_qblocks;
  job->head_items = job->k_prepack && !job->split && kp_bytes / pairs <= head_item_k_bytes &&
                    job->blocks_per_pair < ((int64_t)1 << 31); /* a lane slot's block field */
  if (job->head_items) {
    job->k_prepack = 0, job->v_counts = 0;
    *n_items = job->n_lanes = *workers;
  }
  if (!scratch_layout(job->uk, p, job->dvp, job->head_items, offs, &job->scratch_bytes))
    return attn__fail(ATTN_STATUS_SIZE_OVERFLOW,
                      "attn_forward: scratch size overflows (dim %lld, dim_v %lld)",
                      (long long)p->dim, (long long)p->dim_v);
  if (job->scratch_bytes > SIZE_MAX / (size_t)*workers)
    return attn__fail(ATTN_STATUS_SIZE_OVERFLOW, "attn_forward: scratch size overflows");
  return ATTN_STATUS_OK;
}

/* Floats of key-split partials: n_items × block_rows × (Dv + 2). */
static size_t partial_floats(const fwd_job *job, int64_t n_items) {
  const attn_params *p = job->pr->p;
  return job->split ? (size_t)n_items * (size_t)job->block_rows * (size_t)(p->dim_v + 2) : 0;
}

/* Floats of pre-packed K: B·Hkv·round_up(Lk, nr)·D (checked against K_PREPACK_MAX_BYTES). */
static size_t k_packed_floats(const fwd_job *job) {
  const attn_params *p = job->pr->p;
  return job->k_prepack ? (size_t)(p->batch * p->heads_kv) * (size_t)job->k_packed_len : 0;
}

/* Counts of the in-place V pre-pass: B·Hkv·(Lk + 1) (sizes were checked by attn_params). */
static size_t bad_v_counts(const fwd_job *job) {
  const attn_params *p = job->pr->p;
  return job->v_counts ? (size_t)(p->batch * p->heads_kv) * (size_t)(p->len_k + 1) : 0;
}

/* Bytes of the head_items lanes: the pair counter and a slot per lane. */
static size_t lane_bytes(const fwd_job *job) {
  return job->head_items ? sizeof(lane_slot) * (size_t)(1 + job->n_lanes) : 0;
}

attn_status attn__fwd_tiled(const attn__fwd_ukernel *uk, const attn__problem *pr, const void *q,
                            const void *k, const void *v, float *o, float *lse, float *probs) {
  fwd_job job = {.uk = uk, .pr = pr, .q = q, .k = k, .v = v, .o = o, .lse = lse, .probs = probs};
  int workers = 1;
  int64_t n_items;
  attn_status st = plan(&job, &workers, &n_items);
  if (st != ATTN_STATUS_OK) return st;
  /* all scratch is taken before any output is written, so OUT_OF_MEMORY changes nothing */
  const size_t np = partial_floats(&job, n_items), nb = bad_v_counts(&job),
               nk = k_packed_floats(&job), nl = lane_bytes(&job);
  attn__arena *arena = pr->arena;
  job.scratch = attn__arena_alloc(arena, job.scratch_bytes * (size_t)workers);
  job.partials = attn__arena_alloc(arena, np * sizeof(float));
  job.v_bad = attn__arena_alloc(arena, nb * sizeof(int64_t));
  job.k_packed = attn__arena_alloc(arena, nk * sizeof(float));
  job.lanes = attn__arena_alloc(arena, nl);
  if (!job.scratch || (np && !job.partials) || (nb && !job.v_bad) || (nk && !job.k_packed) ||
      (nl && !job.lanes))
    return attn__fail(ATTN_STATUS_OUT_OF_MEMORY,
                      "attn_forward: could not allocate %d x %zu bytes of tile scratch and %zu "
                      "bytes of partial results, V checks, packed K and work lanes",
                      workers, job.scratch_bytes,
                      (np + nk) * sizeof(float) + nb * sizeof(int64_t) + nl);
  if (job.lanes) { /* no pair taken; every lane's slot empty (its block count reached) */
    atomic_init(&job.lanes[0].word, 0);
    for (int64_t l = 1; l <= job.n_lanes; l++)
      atomic_init(&job.lanes[l].word, (unsigned long long)job.blocks_per_pair);
  }
  for (int w = 0; w < workers; w++) { /* the constant part of each worker's scratch */
    const tile_scratch t = carve(&job, w);
    for (int r = 0; r < uk->br; r++)
      t.ones[r] = 1.0f;
  }
  const attn_params *p = pr->p;
  if (job.v_bad || job.k_packed) /* both pre-passes in one parallel pass: one wake-up */
    attn__parallel_for(workers, prepass_items(&job, NULL), prepass_item, &job);
  if (job.split) {
    attn__parallel_for(workers, n_items, split_item, &job);
    attn__parallel_for(workers, p->batch * p->heads_kv * job.n_rblocks, merge_item, &job);
  } else {
    attn__parallel_for(workers, n_items, job.head_items ? lane_item : fwd_item, &job);
  }
  return ATTN_STATUS_OK; /* the caller releases the arena */
}

attn_status attn__scratch_tiled(const attn__fwd_ukernel *uk, const attn__problem *pr,
                                int with_probs, size_t *bytes) {
  fwd_job job = {.uk = uk, .pr = pr, .probs = with_probs ? (float *)1 : NULL};
  int workers = 1;
  int64_t n_items;
  attn_status st = plan(&job, &workers, &n_items);
  if (st == ATTN_STATUS_OK)
    *bytes = attn__arena_round(job.scratch_bytes * (size_t)workers) +
             attn__arena_round(partial_floats(&job, n_items) * sizeof(float)) +
             attn__arena_round(bad_v_counts(&job) * sizeof(int64_t)) +
             attn__arena_round(k_packed_floats(&job) * sizeof(float)) +
             attn__arena_round(lane_bytes(&job));
  return st;
}
