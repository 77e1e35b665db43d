/*
 * fwd_tiled.c — the fused FlashAttention-2 style forward, portable driver over a microkernel set
 * (tiled.h). Compiled without ISA flags; the arithmetic on packed tiles comes from the set.
 *
 * Work item = (batch b, query head h, block of br query rows). For each item, over key tiles of bc
 * keys that some row of the block can see:
 *   1. pack the K and V tile (any strides);
 *   2. S = (scale·Q)·Kᵀ, Q packed pre-scaled               (uk->qk)
 *   3. S = softcap, ALiBi, bias; −inf where invisible      (score_tile; skipped for tiles every
 *                                                           row sees whole with no per-pair
 * feature)
 *   4. online softmax: m_new = max(m, rowmax S), α = exp(m − m_new), P = exp(S − m_new),
 *      l = α·l + rowsum P   (Milakov & Gimelshein arXiv:1805.02867; Dao arXiv:2307.08691)
 * (uk->softmax)
 *   5. acc = α·acc + P·V                                   (uk->pv)
 * then O = acc / l and LSE = m + log l, with the empty-row rule (l = 0 → O = +0, LSE = −inf).
 * If P is requested, a second sweep recomputes S per tile and writes exp(S − m) / l.
 *
 * Extra memory: one scratch block per worker, O(br·D + bc·(D + Dv) + br·bc + br·Dv), never
 * O(Lq·Lk). Key tiles no row of the block can see (key length, causal, window) are never touched,
 * so causal attention does about half the work. Results do not depend on the thread count: each
 * item is computed by one worker with the same code, and items write disjoint outputs.
 *
 * Masked values: a V tile holding any non-finite value goes through uk->pv_masked, which skips
 * invisible pairs instead of multiplying them by 0 (0·NaN = NaN), so NaN behind a mask never
 * reaches O; with finite values both paths give the same bits.
 */
#include "tiled.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct fwd_job {
  const attn__fwd_ukernel *uk;
  const attn__problem *pr;
  const float *q, *k, *v;
  float *o, *lse, *probs;
  int64_t n_qblocks, dvp;
  unsigned char *scratch; /* n_workers × scratch_bytes */
  size_t scratch_bytes;
} fwd_job;

/* One worker's scratch, carved from fwd_job.scratch. */
typedef struct tile_scratch {
  int64_t *lo, *hi;     /* [br] visible key range [lo, hi) of each row */
  float *qs;            /* [br, D]  packed query rows */
  float *ks;            /* [bc · D] packed key tile */
  float *vs;            /* [bc, dvp] packed value tile */
  float *s;             /* [br, bc] scores, then probabilities */
  float *acc;           /* [br, dvp] unnormalised output */
  float *m, *l, *alpha; /* [br] running max, running sum, this tile's rescale factor */
  unsigned char *vis;   /* [br, bc] 1 where the pair is visible */
} tile_scratch;

/* Byte layout of one worker's scratch (tile_scratch order, each part 64-byte aligned); returns 0
 * if its size overflows. */
enum { N_PARTS = 11 };
static int scratch_layout(const attn__fwd_ukernel *uk, int64_t D, int64_t dvp, size_t offs[N_PARTS],
                          size_t *total) {
  const int64_t br = uk->br, bc = uk->bc;
  const int64_t counts[N_PARTS] = {br,       br, br * D, bc * D, bc * dvp, br * bc,
                                   br * dvp, br, br,     br,     br * bc};
  const int64_t sizes[N_PARTS] = {8, 8, 4, 4, 4, 4, 4, 4, 4, 4, 1};
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
  scratch_layout(job->uk, job->pr->p->dim, job->dvp, o, &total);
  unsigned char *base = job->scratch + (size_t)worker * job->scratch_bytes;
  tile_scratch t = {
      (int64_t *)(void *)(base + o[0]),
      (int64_t *)(void *)(base + o[1]),
      (float *)(void *)(base + o[2]),
      (float *)(void *)(base + o[3]),
      (float *)(void *)(base + o[4]),
      (float *)(void *)(base + o[5]),
      (float *)(void *)(base + o[6]),
      (float *)(void *)(base + o[7]),
      (float *)(void *)(base + o[8]),
      (float *)(void *)(base + o[9]),
      base + o[10],
  };
  return t;
}

/* Visible key range [lo, hi) of the query at key position pos from key length, causal and window
 * (mask and bias are per pair and handled in score_tile). Written to avoid overflow for any window.
 */
static void row_key_range(const attn_params *p, int64_t pos, int64_t klen, int64_t *lo,
                          int64_t *hi) {
  int64_t a = 0, e = klen;
  if (p->causal && pos < e - 1) e = pos + 1;
  if (p->window_left >= 0 && pos - a > p->window_left) a = pos - p->window_left;
  if (p->window_right >= 0 && e - 1 - pos > p->window_right) e = pos + p->window_right + 1;
  if (e < a) e = a;
  *lo = a;
  *hi = e;
}

int attn__pack_rows(const float *src, int64_t row_stride, int64_t col_stride, int64_t j0, int cols,
                    int64_t n, int64_t ld, float *dst) {
  int finite = 1;
  for (int c = 0; c < cols; c++) {
    const float *row = src + (j0 + c) * row_stride;
    float *out = dst + (int64_t)c * ld;
    for (int64_t d = 0; d < n; d++) {
      float x = row[d * col_stride];
      out[d] = x;
      finite &= (x - x == 0.0f); /* false for NaN and ±inf */
    }
    for (int64_t d = n; d < ld; d++)
      out[d] = 0.0f;
  }
  return finite;
}

/* Turns the dot products S [rows, bc] for keys [j0, j0 + cols) into the contract's scores (Q was
 * pre-scaled; then softcap, ALiBi, bias), with −inf and vis = 0 for invisible pairs and for the
 * padding columns up to round_up(cols, nr). Bias is read only for pairs visible by the other rules.
 * Returns 1 if every pair was visible (then vis is left unwritten). */
static int score_tile(const attn__fwd_ukernel *uk, const attn__problem *pr, int64_t b, int64_t h,
                      int64_t i0, int64_t shift, const tile_scratch *ts, int rows, int64_t j0,
                      int cols) {
  const attn_params *p = pr->p;
  const int bc = uk->bc, cols_p = (int)attn__round_up(cols, uk->nr);
  int whole = !p->mask && !p->bias && p->softcap == 0.0f && !p->alibi_slopes;
  for (int r = 0; r < rows && whole; r++)
    whole = ts->lo[r] <= j0 && j0 + cols <= ts->hi[r];
  for (int r = 0; r < rows; r++)
    for (int c = cols; c < cols_p; c++)
      ts->s[r * bc + c] = -INFINITY;
  if (whole) return 1; /* the common interior tile: S is final as computed */

  const float cap = p->softcap;
  const float slope = p->alibi_slopes ? p->alibi_slopes[h] : 0.0f;
  for (int r = 0; r < rows; r++) {
    const int64_t i = i0 + r, pos = i + shift;
    const uint8_t *mrow =
        p->mask ? p->mask + b * p->mask_stride[0] + h * p->mask_stride[1] + i * p->mask_stride[2]
                : NULL;
    const float *brow =
        p->bias ? p->bias + b * p->bias_stride[0] + h * p->bias_stride[1] + i * p->bias_stride[2]
                : NULL;
    float *srow = ts->s + r * bc;
    unsigned char *vrow = ts->vis + r * bc;
    for (int c = 0; c < cols; c++) {
      const int64_t j = j0 + c;
      int visible = j >= ts->lo[r] && j < ts->hi[r];
      if (visible && mrow && mrow[j * p->mask_stride[3]] == 0) visible = 0;
      float bias = 0.0f;
      if (visible && brow) {
        bias = brow[j * p->bias_stride[3]];
        if (bias == -INFINITY) visible = 0;
      }
      vrow[c] = (unsigned char)visible;
      if (!visible) {
        srow[c] = -INFINITY;
        continue;
      }
      float s = srow[c]; /* already scaled: Q was packed as scale·q */
      if (cap > 0.0f) s = cap * tanhf(s / cap);
      if (p->alibi_slopes) s -= slope * (float)(pos >= j ? pos - j : j - pos);
      if (brow) s += bias;
      srow[c] = s;
    }
  }
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

static void fwd_item(void *ctx, int64_t item, int worker) {
  const fwd_job *job = ctx;
  const attn__fwd_ukernel *uk = job->uk;
  const attn__problem *pr = job->pr;
  const attn_params *p = pr->p;
  const int64_t D = p->dim, Dv = p->dim_v, dvp = job->dvp, Lq = p->len_q, Lk = p->len_k;
  const int bc = uk->bc;
  const int64_t qb = item % job->n_qblocks, bh = item / job->n_qblocks;
  const int64_t h = bh % p->heads_q, b = bh / p->heads_q, hk = h / pr->group;
  const int64_t i0 = qb * uk->br;
  const int rows = (int)(Lq - i0 < uk->br ? Lq - i0 : uk->br);
  const int rows_p = (int)attn__round_up(rows, uk->mr);
  const int64_t klen = attn__klen(p, b), shift = attn__pos_shift(p, b);
  tile_scratch ts = carve(job, worker);

  /* key range of every row and of the block */
  int64_t blo = klen, bhi = 0;
  for (int r = 0; r < rows; r++) {
    row_key_range(p, i0 + r + shift, klen, &ts.lo[r], &ts.hi[r]);
    if (ts.lo[r] < ts.hi[r]) {
      if (ts.lo[r] < blo) blo = ts.lo[r];
      if (ts.hi[r] > bhi) bhi = ts.hi[r];
    }
  }
  if (bhi <= blo) blo = bhi = 0;

  const float *qbase = job->q + b * p->q_stride[0] + h * p->q_stride[1];
  const float *kbase = job->k + b * p->k_stride[0] + hk * p->k_stride[1];
  const float *vbase = job->v + b * p->v_stride[0] + hk * p->v_stride[1];
  attn__pack_rows(qbase, p->q_stride[2], p->q_stride[3], i0, rows, D, D, ts.qs);
  memset(ts.qs + (int64_t)rows * D, 0, sizeof(float) * (size_t)((rows_p - rows) * D));
  for (int64_t x = 0; x < (int64_t)rows * D; x++)
    ts.qs[x] *= pr->scale; /* s = (scale·q)·k */
  for (int r = 0; r < rows_p; r++) {
    ts.m[r] = -INFINITY;
    ts.l[r] = 0.0f;
    ts.alpha[r] = 1.0f; /* padding rows keep 1 */
  }
  memset(ts.acc, 0, sizeof(float) * (size_t)rows_p * (size_t)dvp);

  for (int64_t j0 = blo; j0 < bhi; j0 += bc) {
    const int cols = (int)(bhi - j0 < bc ? bhi - j0 : bc);
    uk->pack_k(kbase, p->k_stride[2], p->k_stride[3], j0, cols, D, ts.ks);
    const int v_finite =
        attn__pack_rows(vbase, p->v_stride[2], p->v_stride[3], j0, cols, Dv, dvp, ts.vs);
    uk->qk(ts.qs, ts.ks, rows_p, cols, D, ts.s);
    const int whole = score_tile(uk, pr, b, h, i0, shift, &ts, rows, j0, cols);
    uk->softmax(ts.s, rows, cols, ts.m, ts.l, ts.alpha);
    if (v_finite) {
      uk->pv(ts.s, ts.vs, ts.alpha, rows_p, cols, dvp, ts.acc);
    } else {
      if (whole) memset(ts.vis, 1, (size_t)rows * (size_t)bc);
      memset(ts.vis + (size_t)rows * (size_t)bc, 0, (size_t)(rows_p - rows) * (size_t)bc);
      uk->pv_masked(ts.s, ts.vs, ts.alpha, ts.vis, rows_p, cols, dvp, ts.acc);
    }
  }

  /* normalise once; empty rows give O = +0, LSE = −inf */
  for (int r = 0; r < rows; r++) {
    const int64_t i = i0 + r;
    float *orow = job->o + b * p->o_stride[0] + h * p->o_stride[1] + i * p->o_stride[2];
    const float l = ts.l[r];
    float row_lse;
    if (l == 0.0f) {
      for (int64_t d = 0; d < Dv; d++)
        orow[d * p->o_stride[3]] = 0.0f;
      row_lse = -INFINITY;
    } else {
      const float *a = ts.acc + (int64_t)r * dvp;
      for (int64_t d = 0; d < Dv; d++)
        orow[d * p->o_stride[3]] = a[d] / l;
      row_lse = ts.m[r] + logf(l);
    }
    if (job->lse)
      job->lse[b * p->lse_stride[0] + h * p->lse_stride[1] + i * p->lse_stride[2]] = row_lse;
  }

  if (!job->probs) return;
  /* P sweep: zeros outside [blo, bhi), exp(S − m) / l inside (more accurate than exp(S − LSE)
   * when |LSE| is large: S − m is computed exactly near the maximum) */
  for (int r = 0; r < rows; r++) {
    float *prow = job->probs + b * p->probs_stride[0] + h * p->probs_stride[1] +
                  (i0 + r) * p->probs_stride[2];
    for (int64_t j = 0; j < Lk; j++)
      if (j < blo || j >= bhi) prow[j * p->probs_stride[3]] = 0.0f;
  }
  for (int64_t j0 = blo; j0 < bhi; j0 += bc) {
    const int cols = (int)(bhi - j0 < bc ? bhi - j0 : bc);
    uk->pack_k(kbase, p->k_stride[2], p->k_stride[3], j0, cols, D, ts.ks);
    uk->qk(ts.qs, ts.ks, rows_p, cols, D, ts.s);
    score_tile(uk, pr, b, h, i0, shift, &ts, rows, j0, cols);
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

/* Sizes the job: items, workers, per-worker scratch. */
static attn_status plan(fwd_job *job, int *workers, int64_t *n_items) {
  const attn_params *p = job->pr->p;
  size_t offs[N_PARTS];
  job->n_qblocks = (p->len_q + job->uk->br - 1) / job->uk->br;
  job->dvp = job->uk->dv_pad(p->dim_v);
  if (!attn__mul_ok(p->batch, p->heads_q, n_items) ||
      !attn__mul_ok(*n_items, job->n_qblocks, n_items) ||
      !scratch_layout(job->uk, p->dim, job->dvp, offs, &job->scratch_bytes))
    return attn__fail(ATTN_STATUS_SIZE_OVERFLOW,
                      "attn_forward: work or scratch size overflows (dim %lld, dim_v %lld)",
                      (long long)p->dim, (long long)p->dim_v);
  *workers = job->pr->threads;
  if (*workers > *n_items) *workers = (int)*n_items;
  if (job->scratch_bytes > SIZE_MAX / (size_t)*workers)
    return attn__fail(ATTN_STATUS_SIZE_OVERFLOW, "attn_forward: scratch size overflows");
  return ATTN_STATUS_OK;
}

attn_status attn__fwd_tiled(const attn__fwd_ukernel *uk, const attn__problem *pr, const float *q,
                            const float *k, const float *v, float *o, float *lse, float *probs) {
  fwd_job job = {uk, pr, q, k, v, o, lse, probs, 0, 0, NULL, 0};
  int workers = 1;
  int64_t n_items;
  attn_status st = plan(&job, &workers, &n_items);
  if (st != ATTN_STATUS_OK) return st;
  /* all scratch is allocated before any output is written, so OUT_OF_MEMORY changes nothing */
  if (!(job.scratch = aligned_alloc(64, job.scratch_bytes * (size_t)workers)))
    return attn__fail(ATTN_STATUS_OUT_OF_MEMORY,
                      "attn_forward: could not allocate %d x %zu bytes of tile scratch", workers,
                      job.scratch_bytes);
  attn__parallel_for(workers, n_items, fwd_item, &job);
  free(job.scratch);
  return ATTN_STATUS_OK;
}

attn_status attn__scratch_tiled(const attn__fwd_ukernel *uk, const attn__problem *pr,
                                size_t *bytes) {
  fwd_job job = {uk, pr, NULL, NULL, NULL, NULL, NULL, NULL, 0, 0, NULL, 0};
  int workers = 1;
  int64_t n_items;
  attn_status st = plan(&job, &workers, &n_items);
  if (st == ATTN_STATUS_OK) *bytes = job.scratch_bytes * (size_t)workers;
  return st;
}
