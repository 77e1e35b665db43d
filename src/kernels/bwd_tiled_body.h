/*
 * bwd_tiled_body.h — the fused FlashAttention-2 backward (Dao, arXiv:2307.08691, Algorithm 2),
 * written once in C with GCC/Clang vector extensions and compiled once per instruction set:
 * generic/bwd_generic.c (baseline ISA, 8 lanes), avx2/bwd_avx2.c (-mavx2 -mfma, 8 lanes) and
 * avx512/bwd_avx512.c (-mavx512f, 16 lanes), each of which defines ATTN_BWD_FN,
 * ATTN_BWD_SCRATCH_FN and ATTN_BWD_EXP_FN (and ATTN_BWD_VL, ATTN_BWD_FMA) and includes this file.
 *
 * Passes (each a parallel loop over items that write disjoint memory, so no atomics):
 *   1. Δ = rowsum(dO∘O); scale·Q and dO packed; the rows' LSE and key ranges gathered
 *                                                  items (b, h, query block)
 *   2. main: items (b, KV head, key slice). For each key block kb of the slice (bc keys):
 *        for each query head of the group and each query block that sees kb:
 *          S  = (scale·Q)·Kᵀ, then softcap/ALiBi/bias/visibility (attn__score_row)
 *          P  = exp(S − LSE)                     (recomputed; no O(Lq·Lk) storage)
 *          dP = dO·Vᵀ,  dS = P∘(dP − Δ)  (× 1 − tanh² under softcap)
 *          dV_kb += Pᵀ·dO,  dK_kb += dSᵀ·(scale·Q),  dQpart_slice += dS·K
 *        dK, dV rows of kb written once (the group's heads summed in head order).
 *   3. dQ = scale · Σ_slice dQpart_slice, in slice order     items (b, h, query block)
 *      (with one slice per (b, KV head), the main item writes its dQ rows itself at its end)
 *   4. (dbias requested) items (b', h', query block') of dBias's reduced shape: recompute dS for
 *      every (b, h, i) that maps there, in index order, and sum.
 * The number of slices depends on the shape only (enough items for 8 workers; key blocks dealt to
 * slices zig-zag, so causal slices get equal work), so the result is bitwise the same for any
 * thread count.
 *
 * Non-finite values: products that accumulate over pairs (dV, dK, dQ) skip invisible pairs
 * instead of multiplying them by 0 when the operand tile they read holds NaN or inf (gemm_masked),
 * which gives bitwise the fast path's result whenever the data are finite.
 *
 * Padding rows (past qlen(b)) are loaded as zeros and get no dQ write when the queries are packed
 * (cu_seqlens_q: they have no storage); keys of packed K and V past klen(b) are packed as zero
 * columns and get no dK, dV rows. So a packed call is bitwise the padded one.
 */
#include "tiled.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if !defined(ATTN_BWD_FN) || !defined(ATTN_BWD_SCRATCH_FN) || !defined(ATTN_BWD_EXP_FN)
#error                                                                                             \
    "define ATTN_BWD_FN, ATTN_BWD_SCRATCH_FN and ATTN_BWD_EXP_FN before including bwd_tiled_body.h"
#endif

/* Lanes per vector: 8 (baseline and AVX2 builds) or 16 (the AVX-512 build sets ATTN_BWD_VL). */
#ifndef ATTN_BWD_VL
#define ATTN_BWD_VL 8
#endif
/* Rows of a gemm register block: 6 (12 accumulators of the 16 registers); 8 with AVX-512 (16 of
 * its 32). On the Zen 4, 64 × 64 × 64 products with L1-resident operands: 8 × 32 blocks reach
 * 98–100 % of the FMA peak in all three operand forms, 12 × 32 blocks 98–99 % where A's rows are
 * strided but 87 % where A is read down its columns (dV, dK: twelve consecutive floats of Pᵀ or
 * dSᵀ per step, crossing cache lines) — and 64 = 5 · 12 + 4 leaves a thin last block. */
#ifndef ATTN_BWD_MR
#define ATTN_BWD_MR (ATTN_BWD_VL == 16 ? 8 : 6)
#endif
enum { BR = 64, BC = 64, VL = ATTN_BWD_VL, NB = 2 * VL /* gemm column block: 2 vectors */, MB = 4 };
enum { MR = ATTN_BWD_MR };
enum { MIN_MAIN_ITEMS = 8 };

typedef float vf __attribute__((vector_size(ATTN_BWD_VL * 4)));
typedef int32_t vi __attribute__((vector_size(ATTN_BWD_VL * 4)));

static inline vf ldv(const float *p) {
  vf v;
  memcpy(&v, p, sizeof v);
  return v;
}
static inline void stv(float *p, vf v) { memcpy(p, &v, sizeof v); }
#if ATTN_BWD_VL == 16
#include <immintrin.h>
static inline vf splat(float x) { return (vf)_mm512_set1_ps(x); }
#else
static inline vf splat(float x) { return (vf){x, x, x, x, x, x, x, x}; }
#endif

/* acc + a·b: one fused multiply-add where the build has FMA (ATTN_BWD_FMA), else a multiply and an
 * add; the vector and scalar forms round alike, so gemm and gemm_masked agree bitwise. */
#if defined(ATTN_BWD_FMA)
#include <immintrin.h>
static inline vf madd(vf acc, vf a, vf b) {
#if ATTN_BWD_VL == 16
  return (vf)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)acc);
#else
  return (vf)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)acc);
#endif
}
static inline float madd1(float acc, float a, float b) { return fmaf(a, b, acc); }
#else
static inline vf madd(vf acc, vf a, vf b) { return acc + a * b; }
static inline float madd1(float acc, float a, float b) { return acc + a * b; }
#endif
static inline vf selectv(vi m, vf a, vf b) { /* m ? a : b, m lanes all ones or zero */
  return (vf)(((vi)a & m) | ((vi)b & ~m));
}

/* exp(x) on VL lanes: Cephes expf — n = round(x·log2 e) by adding 1.5·2^23 + 127 (the sum's low
 * bits are then n + 127), r = x − n·ln 2 in two parts, e^r = 1 + r + r²·P(r) with P of degree 5
 * — evaluated as 2·e^r (every coefficient doubled, exactly) times 2^(n−1), whose exponent n + 126
 * is clamped at 0: a zero result for n ≤ −126 (x·log2 e < −125.5, x < −86.989; never a
 * subnormal) with no compare on the result. Relative error below 2e-7 on [−86.98, 88] (tested in
 * test_simd); x > 88 is taken as 88; NaN gives NaN (the clamps keep it, NaN·2^k is NaN). */
static inline vf expv(vf x) {
  vf xc = selectv(x < splat(-87.5f), splat(-87.5f), x);
  xc = selectv(xc > splat(88.0f), splat(88.0f), xc);
  const vf magic = splat(0x1.8p23f + 127.0f);
  const vf y = madd(magic, xc, splat(1.44269504088896341f));
  const vf n = y - magic;
  vf r = madd(xc, n, splat(-0.693359375f));
  r = madd(r, n, splat(2.12194440e-4f));
  vf q = splat(2 * 1.9875691500e-4f);
  q = madd(splat(2 * 1.3981999507e-3f), q, r);
  q = madd(splat(2 * 8.3334519073e-3f), q, r);
  q = madd(splat(2 * 4.1665795894e-2f), q, r);
  q = madd(splat(2 * 1.6666665459e-1f), q, r);
  q = madd(splat(2 * 5.0000001201e-1f), q, r);
  const vf twice = madd(madd(splat(2.0f), splat(2.0f), r), q, r * r); /* 2 + 2r + r²·2P */
  vi k = ((vi)y & 0xffff) - 1;
  k &= k >= 0;
  return twice * (vf)(k << 23);
}

/* expv over an array, for tests (test_simd): y[i] = exp(x[i]). */
void ATTN_BWD_EXP_FN(const float *x, float *y, int64_t n) {
  int64_t i = 0;
  for (; i + VL <= n; i += VL)
    stv(y + i, expv(ldv(x + i)));
  if (i < n) {
    float in[VL] = {0}, out[VL];
    for (int j = 0; i + j < n; j++)
      in[j] = x[i + j];
    stv(out, expv(ldv(in)));
    for (int j = 0; i + j < n; j++)
      y[i + j] = out[j];
  }
}

/* Rows [i, i + R) of C [m, n] = (accumulate ? C : 0) + A·B (see gemm); R ≤ MR is a constant after
 * inlining, so the R × 16 block of accumulators stays in registers. */
static inline __attribute__((always_inline)) void
gemm_rows(int R, int i, int n, int k, const float *a, int64_t ars, int64_t acs, const float *b,
          int64_t ldb, float *c, int64_t ldc, int accumulate) {
  for (int j = 0; j < n; j += NB) {
    vf acc[MR][2];
    for (int r = 0; r < R; r++)
      for (int h = 0; h < 2; h++)
        acc[r][h] = accumulate ? ldv(c + (i + r) * ldc + j + h * VL) : splat(0.0f);
    const float *ai = a + i * ars;
    for (int kk = 0; kk < k; kk++) {
      const vf b0 = ldv(b + kk * ldb + j), b1 = ldv(b + kk * ldb + j + VL);
      for (int r = 0; r < R; r++) {
        const vf av = splat(ai[r * ars + kk * acs]);
        acc[r][0] = madd(acc[r][0], av, b0);
        acc[r][1] = madd(acc[r][1], av, b1);
      }
    }
    for (int r = 0; r < R; r++)
      for (int h = 0; h < 2; h++)
        stv(c + (i + r) * ldc + j + h * VL, acc[r][h]);
  }
}

/* C [m, n] = (accumulate ? C : 0) + A·B with A(i, kk) = a[i·ars + kk·acs], B [k, n] row stride
 * ldb, C row stride ldc; m even, n % NB == 0. Register blocks of MR × NB (2·MR vector
 * accumulators, 2 loads of B and MR broadcasts of A per 2·MR multiply-adds; MR = 6, or 8 with
 * AVX-512), the last rows in one smaller even block;
 * per element the sum runs over kk in increasing order. */
static __attribute__((noinline)) void gemm(int m, int n, int k, const float *a, int64_t ars,
                                           int64_t acs, const float *b, int64_t ldb, float *c,
                                           int64_t ldc, int accumulate) {
  int i = 0;
  for (; i + MR <= m; i += MR)
    gemm_rows(MR, i, n, k, a, ars, acs, b, ldb, c, ldc, accumulate);
  switch (m - i) { /* m is even: the last rows in one smaller block */
#if ATTN_BWD_MR > 6
  case 6:
    gemm_rows(6, i, n, k, a, ars, acs, b, ldb, c, ldc, accumulate);
    break;
#endif
  case 4:
    gemm_rows(4, i, n, k, a, ars, acs, b, ldb, c, ldc, accumulate);
    break;
  case 2:
    gemm_rows(2, i, n, k, a, ars, acs, b, ldb, c, ldc, accumulate);
    break;
  default:
    break;
  }
}

/* The same, skipping the terms whose pair is invisible (vis(i, kk) = vis[i·vrs + kk·vcs] == 0):
 * bitwise gemm's result when those terms are ±0 (an accumulator that starts at +0 or at a sum
 * never holds −0, and x + ±0 = x), and no 0·NaN when they are not. */
static void gemm_masked(int m, int n, int k, const float *a, int64_t ars, int64_t acs,
                        const unsigned char *vis, int64_t vrs, int64_t vcs, const float *b,
                        int64_t ldb, float *c, int64_t ldc, int accumulate) {
  for (int i = 0; i < m; i++)
    for (int j = 0; j < n; j++) {
      float acc = accumulate ? c[i * ldc + j] : 0.0f;
      for (int kk = 0; kk < k; kk++)
        if (vis[i * vrs + kk * vcs]) acc = madd1(acc, a[i * ars + kk * acs], b[kk * ldb + j]);
      c[i * ldc + j] = acc;
    }
}

typedef struct bwd_job {
  const attn__problem *pr;
  const attn__bwd_tensors *t;
  int64_t dp, dvp;          /* D and Dv rounded up to NB */
  int64_t n_qb, n_kb, lq_p; /* query blocks, key blocks, Lq rounded up to BR */
  int64_t n_slices;         /* key slices per (b, KV head) */
  float *delta;             /* [B, Hq, lq_p] Δ, 0 past qlen(b) */
  float *lse;               /* [B, Hq, lq_p] the forward's LSE, −inf past qlen(b) */
  int64_t *lo, *hi;         /* [B, lq_p] each row's visible keys [lo, hi) */
  float *qs_all;            /* [B, Hq, lq_p, dp]  scale·Q, packed once, zero padded */
  float *dos_all;           /* [B, Hq, lq_p, dvp] dO, packed once */
  unsigned char *qfin;      /* [B, Hq, n_qb] bit 0: the block's Q finite, bit 1: its dO */
  float *dq_part;           /* [B, Hkv, n_slices, group, lq_p, dp] */
  unsigned char *dq_wrote; /* [B, Hkv, n_slices, group, n_qb] 1: that block of dq_part is written */
  int64_t db[4];           /* dBias shape */
  unsigned char *scratch;  /* workers × scratch_bytes */
  size_t scratch_bytes;
} bwd_job;

/* One worker's tile buffers (64-byte aligned). */
typedef struct bwd_scratch {
  const float *qs;  /* [BR, dp]  scale·Q rows of the current query block (in job->qs_all) */
  const float *dos; /* [BR, dvp] its dO rows (in job->dos_all) */
  float *kr;        /* [BC, dp]  K rows */
  float *kt;        /* [dp, BC]  K transposed */
  float *vt;        /* [dvp, BC] V transposed */
  float *s;         /* [BR, BC]  scores, then P */
  float *ds;        /* [BR, BC]  dP, then dS */
  float *g;         /* [BR, BC]  softcap chain factor */
  float *dk;        /* [BC, dp]  dK of the key block */
  float *dv;        /* [BC, dvp] dV of the key block */
  const float *lse, *delta; /* [BR] the query block's rows (in job->lse, job->delta) */
  const int64_t *lo, *hi;   /* [BR] their visible key ranges (in job->lo, job->hi) */
  unsigned char *vis;       /* [BR, BC] */
} bwd_scratch;

enum { N_PARTS = 9 };
static int scratch_layout(int64_t dp, int64_t dvp, size_t offs[N_PARTS], size_t *total) {
  const int64_t counts[N_PARTS] = {BC * dp, dp * BC, dvp * BC, BR * BC, BR * BC,
                                   BR * BC, BC * dp, BC * dvp, BR * BC};
  const int64_t sizes[N_PARTS] = {4, 4, 4, 4, 4, 4, 4, 4, 1};
  int64_t at = 0, bytes;
  for (int i = 0; i < N_PARTS; i++) {
    offs[i] = (size_t)at;
    if (!attn__mul_ok(counts[i], sizes[i], &bytes) || !attn__add_ok(at, bytes + 63, &at)) return 0;
    at &= ~(int64_t)63;
  }
  *total = (size_t)at;
  return 1;
}

static bwd_scratch carve(const bwd_job *job, int worker) {
  size_t o[N_PARTS], total;
  scratch_layout(job->dp, job->dvp, o, &total);
  unsigned char *base = job->scratch + (size_t)worker * job->scratch_bytes;
  float *f[8];
  for (int i = 0; i < 8; i++)
    f[i] = (float *)(void *)(base + o[i]);
  bwd_scratch w = {0};
  w.kr = f[0], w.kt = f[1], w.vt = f[2], w.s = f[3], w.ds = f[4], w.g = f[5], w.dk = f[6];
  w.dv = f[7], w.vis = base + o[8];
  return w;
}

/* Packs key block [j0, j0 + cols) of KV head (b, hk): K rows, K transposed, V transposed (zero
 * padded). Returns bit 0: K finite, bit 1: V finite. */
static int pack_kv(const bwd_job *job, bwd_scratch *w, int64_t b, int64_t hk, int64_t j0,
                   int cols) {
  const attn_params *p = job->pr->p;
  const int64_t D = p->dim, Dv = p->dim_v, dp = job->dp, dvp = job->dvp;
  const float *kb = (const float *)job->t->k + attn__kv_row(p, p->k_stride, b, hk, 0);
  const float *vb = (const float *)job->t->v + attn__kv_row(p, p->v_stride, b, hk, 0);
  const int64_t stored = attn__k_stored(p, b) - j0;       /* packed K, V: no rows past klen(b) */
  if (stored < cols) cols = stored < 0 ? 0 : (int)stored; /* (their columns stay zero) */
  const int kfin = attn__pack_rows(kb, p->k_stride[2], p->k_stride[3], j0, cols, D, dp, w->kr);
  memset(w->kr + cols * dp, 0, sizeof(float) * (size_t)((BC - cols) * dp));
  memset(w->kt, 0, sizeof(float) * (size_t)(dp * BC));
  memset(w->vt, 0, sizeof(float) * (size_t)(dvp * BC));
  int vfin = 1;
  for (int c = 0; c < cols; c++) {
    const float *vrow = vb + (j0 + c) * p->v_stride[2];
    for (int64_t d = 0; d < D; d++)
      w->kt[d * BC + c] = w->kr[c * dp + d];
    for (int64_t d = 0; d < Dv; d++) {
      const float x = vrow[d * p->v_stride[3]];
      vfin &= isfinite(x) != 0;
      w->vt[d * BC + c] = x;
    }
  }
  return kfin | vfin << 1;
}

/* Points w at query block qb of head (b, h): its packed rows, LSE, Δ and key ranges (all prepared
 * by pass 1). Returns bit 0: Q finite, bit 1: dO finite. */
static int load_q(const bwd_job *job, bwd_scratch *w, int64_t b, int64_t h, int64_t qb) {
  const int64_t row0 = (b * job->pr->p->heads_q + h) * job->lq_p + qb * BR;
  w->qs = job->qs_all + row0 * job->dp;
  w->dos = job->dos_all + row0 * job->dvp;
  w->lse = job->lse + row0;
  w->delta = job->delta + row0;
  w->lo = job->lo + b * job->lq_p + qb * BR;
  w->hi = job->hi + b * job->lq_p + qb * BR;
  return job->qfin[(b * job->pr->p->heads_q + h) * job->n_qb + qb];
}

/* Recomputes one tile: rows of the packed query block × keys [j0, j0 + cols) of the packed key
 * block. Leaves P in w->s (P∘Z under dropout: the weights O used) and dS = ∂L/∂s in w->ds (times
 * the softcap factor when chain = 1).
 * Returns 1 if every pair of the tile is visible (w->vis is then unwritten). */
static int tile(const bwd_job *job, bwd_scratch *w, int64_t b, int64_t h, int64_t i0, int rows,
                int64_t j0, int cols, int chain) {
  const attn_params *p = job->pr->p;
  const int rows_p = (int)attn__round_up(rows, MB), cols_p = (int)attn__round_up(cols, NB);
  const int64_t shift = attn__pos_shift(p, b);
  gemm(rows_p, cols_p, (int)p->dim, w->qs, job->dp, 1, w->kt, BC, w->s, BC, 0);
  int whole = !p->mask && !p->bias && p->softcap == 0.0f && !p->alibi_slopes;
  for (int r = 0; r < rows && whole; r++)
    whole = w->lo[r] <= j0 && j0 + cols <= w->hi[r];
  const int softcap = p->softcap > 0.0f;
  if (!whole) {
    for (int r = 0; r < rows; r++)
      attn__score_row(p, b, h, i0 + r, i0 + r + shift, w->lo[r], w->hi[r], j0, cols, w->s + r * BC,
                      w->vis + r * BC, softcap ? w->g + r * BC : NULL);
    for (int r = 0; r < rows_p; r++)
      memset(w->vis + r * BC + (r < rows ? cols : 0), 0, (size_t)(BC - (r < rows ? cols : 0)));
  }
  /* P = exp(S − LSE); padding columns and rows with no visible key (LSE = −inf) give 0 */
  for (int r = 0; r < rows_p; r++) {
    float *srow = w->s + r * BC;
    if (w->lse[r] == -INFINITY) {
      memset(srow, 0, sizeof(float) * BC);
      continue;
    }
    const vf l = splat(w->lse[r]);
    for (int c = 0; c < cols_p; c += VL)
      stv(srow + c, expv(ldv(srow + c) - l));
    for (int c = cols; c < cols_p; c++)
      srow[c] = 0.0f;
  }
  gemm(rows_p, cols_p, (int)p->dim_v, w->dos, job->dvp, 1, w->vt, BC, w->ds, BC, 0);
  const int dropout = p->dropout > 0.0f; /* O = (P∘Z)·V: ∂L/∂P = Z∘dP, and dV takes P∘Z */
  for (int r = 0; r < rows && dropout; r++)
    attn__dropout_row(p, b, h, i0 + r, j0, cols, w->ds + r * BC);
  for (int r = 0; r < rows_p; r++) {
    const float *prow = w->s + r * BC, *grow = w->g + r * BC;
    const unsigned char *vrow = w->vis + r * BC;
    float *dsrow = w->ds + r * BC;
    const float delta = w->delta[r];
    if (whole) { /* every pair visible, no softcap: the same two operations, a vector at a time */
      for (int c = 0; c < cols_p; c += VL)
        stv(dsrow + c, ldv(prow + c) * (ldv(dsrow + c) - splat(delta)));
      continue;
    }
    for (int c = 0; c < cols_p; c++) {
      float ds = prow[c] * (dsrow[c] - delta);
      if (!whole && !vrow[c])
        ds = 0.0f; /* never 0·NaN from a masked V or bias */
      else if (chain && softcap && !whole)
        ds *= grow[c];
      dsrow[c] = ds;
    }
  }
  for (int r = 0; r < rows && dropout; r++) /* after dS, which needs P itself */
    attn__dropout_row(p, b, h, i0 + r, j0, cols, w->s + r * BC);
  return whole;
}

/* Pass 1, item (b, h, query block): packs scale·Q and dO (zero padded to BR rows), records whether
 * they are finite, computes Δ = rowsum(dO∘O), gathers the rows' LSE and (for h = 0) the rows' key
 * ranges. */
static void prepare_item(void *ctx, int64_t item, int worker) {
  const bwd_job *job = ctx;
  const attn_params *p = job->pr->p;
  const attn__bwd_tensors *t = job->t;
  const int64_t D = p->dim, Dv = p->dim_v, dp = job->dp, dvp = job->dvp;
  (void)worker;
  const int64_t qb = item % job->n_qb, bh = item / job->n_qb;
  const int64_t h = bh % p->heads_q, b = bh / p->heads_q;
  float *qs = job->qs_all + (bh * job->lq_p + qb * BR) * dp;
  float *dos = job->dos_all + (bh * job->lq_p + qb * BR) * dvp;
  memset(qs, 0, sizeof(float) * (size_t)(BR * dp));
  memset(dos, 0, sizeof(float) * (size_t)(BR * dvp));
  uint32_t nonfinite_q = 0, nonfinite_do = 0;
  /* padding rows stay zero (Δ too, LSE −inf): they see nothing, and have no storage (nor an LSE)
   * when packed */
  const int64_t qlen = attn__qlen(p, b), row0 = bh * job->lq_p + qb * BR;
  for (int64_t r = 0; r < BR; r++) {
    job->lse[row0 + r] = -INFINITY, job->delta[row0 + r] = 0.0f;
    if (h == 0) /* the ranges depend on (b, i) only */
      attn__row_key_range(p, b, qb * BR + r, &job->lo[b * job->lq_p + qb * BR + r],
                          &job->hi[b * job->lq_p + qb * BR + r]);
  }
  for (int64_t r = 0; r < BR && qb * BR + r < qlen; r++) {
    const int64_t i = qb * BR + r;
    const float *q = (const float *)t->q + attn__q_row(p, p->q_stride, b, h, i);
    const float *o = t->o + attn__q_row(p, p->o_stride, b, h, i);
    const float *d_o = t->dout + attn__q_row(p, p->dout_stride, b, h, i);
    for (int64_t d = 0; d < D; d++)
      qs[r * dp + d] = q[d * p->q_stride[3]] * job->pr->scale;
    float sum = 0.0f;
    for (int64_t d = 0; d < Dv; d++) {
      const float x = d_o[d * p->dout_stride[3]];
      dos[r * dvp + d] = x;
      sum = madd1(sum, x, o[d * p->o_stride[3]]); /* as dP = dO·Vᵀ rounds */
    }
    job->delta[row0 + r] = sum;
    job->lse[row0 + r] = t->lse[attn__q_row(p, p->lse_stride, b, h, i)];
  }
  nonfinite_q = !attn__rows_finite(qs, dp, BR, D);
  nonfinite_do = !attn__rows_finite(dos, dvp, BR, Dv);
  job->qfin[bh * job->n_qb + qb] = (unsigned char)((!nonfinite_q) | (!nonfinite_do) << 1);
}

/* Slice of key block kb: blocks are dealt 0, 1, …, S−1, S−1, …, 0, 0, 1, … (zig-zag). */
static int64_t slice_of(int64_t kb, int64_t n_slices) {
  const int64_t r = kb % (2 * n_slices);
  return r < n_slices ? r : 2 * n_slices - 1 - r;
}

/* Query blocks [*qb0, *qb1) of which some row may see a key in [j0, j1): the visible range of a
 * row never moves left as the row index grows (among the rows below qlen(b); the rest see
 * nothing). */
static void query_block_range(const bwd_job *job, int64_t b, int64_t j0, int64_t j1, int64_t *qb0,
                              int64_t *qb1) {
  const attn_params *p = job->pr->p;
  const int64_t qlen = attn__qlen(p, b);
  const int64_t n_qb = (qlen + BR - 1) / BR; /* the blocks holding rows below qlen */
  int64_t a = 0, e = n_qb, lo, hi;
  while (a < e) { /* first block whose last row's range ends after j0 */
    const int64_t mid = (a + e) / 2, last = (mid + 1) * BR < qlen ? (mid + 1) * BR - 1 : qlen - 1;
    attn__row_key_range(p, b, last, &lo, &hi);
    if (hi > j0)
      e = mid;
    else
      a = mid + 1;
  }
  *qb0 = a;
  e = n_qb;
  while (a < e) { /* first block whose first row's range starts at or after j1 */
    const int64_t mid = (a + e) / 2;
    attn__row_key_range(p, b, mid * BR, &lo, &hi);
    if (lo >= j1)
      e = mid;
    else
      a = mid + 1;
  }
  *qb1 = a;
}

/* dQ rows of query block qb of head h of batch item b = scale · Σ_slice partials, in slice order
 * (a slice whose tiles never reached the block adds nothing: its partial holds no rows there). */
static void write_dq_block(const bwd_job *job, int64_t b, int64_t h, int64_t qb) {
  const attn_params *p = job->pr->p;
  const int64_t S = job->n_slices, group = job->pr->group, dp = job->dp, n_qb = job->n_qb;
  const int64_t hk = h / group, hh = h % group;
  const int64_t part_stride = group * job->lq_p * dp, first = (b * p->heads_kv + hk) * S;
  const float *part0 = job->dq_part + first * part_stride;
  const unsigned char *wrote0 = job->dq_wrote + first * group * n_qb;
  const int64_t rows = attn__q_stored(p, b); /* packed: no padding */
  const float scale = job->pr->scale;
  for (int64_t i = qb * BR; i < rows && i < (qb + 1) * BR; i++) {
    float *dq = job->t->dq + attn__q_row(p, p->dq_stride, b, h, i);
    for (int64_t d0 = 0; d0 < p->dim; d0 += VL) { /* VL columns at a time (dp is a multiple) */
      vf sum = splat(0.0f);
      for (int64_t s = 0; s < S; s++)
        if (wrote0[(s * group + hh) * n_qb + qb])
          sum += ldv(part0 + s * part_stride + (hh * job->lq_p + i) * dp + d0);
      float out[VL];
      stv(out, sum);
      for (int64_t l = 0; l < VL && d0 + l < p->dim; l++) /* +0, never −0 */
        dq[(d0 + l) * p->dq_stride[3]] = out[l] == 0.0f ? 0.0f : out[l] * scale;
    }
  }
}

/* Pass 3 (several slices per (b, KV head)): item (b, h, query block). */
static void dq_item(void *ctx, int64_t item, int worker) {
  const bwd_job *job = ctx;
  (void)worker;
  const int64_t qb = item % job->n_qb, bh = item / job->n_qb;
  write_dq_block(job, bh / job->pr->p->heads_q, bh % job->pr->p->heads_q, qb);
}

/* Pass 2: item (b, KV head, slice). With one slice the item has the group's whole partial dQ at
 * its end, in cache, and writes dQ itself instead of a third pass that re-reads every partial
 * after a barrier (2 threads: B = 32, H = 12, L = 128, D = 32 16.3–16.7 → 16.0–16.1 ms). */
static void main_item(void *ctx, int64_t item, int worker) {
  const bwd_job *job = ctx;
  const attn_params *p = job->pr->p;
  const attn__bwd_tensors *t = job->t;
  const int64_t S = job->n_slices, group = job->pr->group, dp = job->dp, dvp = job->dvp;
  const int64_t slice = item % S, bhk = item / S, hk = bhk % p->heads_kv, b = bhk / p->heads_kv;
  float *dq_part = job->dq_part + item * group * job->lq_p * dp;
  unsigned char *wrote = job->dq_wrote + item * group * job->n_qb;
  bwd_scratch w = carve(job, worker);
  /* a block of the partial dQ is written (not accumulated) by its first tile, and one that no tile
   * of the slice sees is never read: nothing to zero (bitwise the same sums: the first FMA onto a
   * zero is the product itself, and pass 3 adds exact zeros no more) */
  memset(wrote, 0, (size_t)(group * job->n_qb));

  for (int64_t kb = 0; kb < job->n_kb; kb++) {
    if (slice_of(kb, S) != slice) continue;
    const int64_t j0 = kb * BC;
    const int cols = (int)(p->len_k - j0 < BC ? p->len_k - j0 : BC);
    const int fin_kv = pack_kv(job, &w, b, hk, j0, cols);
    memset(w.dk, 0, sizeof(float) * (size_t)(BC * dp));
    memset(w.dv, 0, sizeof(float) * (size_t)(BC * dvp));
    int64_t qb0, qb1;
    query_block_range(job, b, j0, j0 + cols, &qb0, &qb1);
    for (int64_t hh = 0; hh < group; hh++)
      for (int64_t qb = qb0; qb < qb1; qb++) {
        const int64_t h = hk * group + hh, i0 = qb * BR;
        const int rows = (int)(p->len_q - i0 < BR ? p->len_q - i0 : BR);
        const int rows_p = (int)attn__round_up(rows, MB), cols_p = (int)attn__round_up(cols, NB);
        const int fin_q = load_q(job, &w, b, h, qb);
        const int whole = tile(job, &w, b, h, i0, rows, j0, cols, 1);
        const int all_finite = (fin_q & 3) == 3 && (fin_kv & 1);
        if (!all_finite && whole) { /* the masked products need vis */
          for (int r = 0; r < rows_p; r++)
            for (int c = 0; c < BC; c++)
              w.vis[r * BC + c] = (unsigned char)(r < rows && c < cols);
        }
        /* dV += Pᵀ·dO, dK += dSᵀ·(scale·Q): A(c, r) = P[r, c] */
        if (fin_q & 2)
          gemm(cols_p, (int)dvp, rows_p, w.s, 1, BC, w.dos, dvp, w.dv, dvp, 1);
        else
          gemm_masked(cols_p, (int)dvp, rows_p, w.s, 1, BC, w.vis, 1, BC, w.dos, dvp, w.dv, dvp, 1);
        if (fin_q & 1)
          gemm(cols_p, (int)dp, rows_p, w.ds, 1, BC, w.qs, dp, w.dk, dp, 1);
        else
          gemm_masked(cols_p, (int)dp, rows_p, w.ds, 1, BC, w.vis, 1, BC, w.qs, dp, w.dk, dp, 1);
        /* dQpart (+)= dS·K */
        float *dq = dq_part + (hh * job->lq_p + i0) * dp;
        const int acc = wrote[hh * job->n_qb + qb];
        if (fin_kv & 1)
          gemm(rows_p, (int)dp, cols_p, w.ds, BC, 1, w.kr, dp, dq, dp, acc);
        else
          gemm_masked(rows_p, (int)dp, cols_p, w.ds, BC, 1, w.vis, BC, 1, w.kr, dp, dq, dp, acc);
        wrote[hh * job->n_qb + qb] = 1;
      }
    for (int c = 0; c < cols && j0 + c < attn__k_stored(p, b); c++) {
      const int64_t j = j0 + c; /* (keys of packed K past klen(b) have no dK, dV rows) */
      float *dk = t->dk + attn__kv_row(p, p->dk_stride, b, hk, j);
      float *dv = t->dv + attn__kv_row(p, p->dv_stride, b, hk, j);
      for (int64_t d = 0; d < p->dim; d++)
        dk[d * p->dk_stride[3]] = w.dk[c * dp + d];
      for (int64_t d = 0; d < p->dim_v; d++)
        dv[d * p->dv_stride[3]] = w.dv[c * dvp + d];
    }
  }
  if (S == 1)
    for (int64_t hh = 0; hh < group; hh++)
      for (int64_t qb = 0; qb < job->n_qb; qb++)
        write_dq_block(job, b, hk * group + hh, qb);
}

/* Pass 4: item (b', h', query block') of dBias's reduced shape. */
static void dbias_item(void *ctx, int64_t item, int worker) {
  const bwd_job *job = ctx;
  const attn_params *p = job->pr->p;
  const int64_t *db = job->db;
  const int64_t nqb = db[2] > 1 ? job->n_qb : 1;
  const int64_t qbr = item % nqb, hr = item / nqb % db[1], br = item / nqb / db[1];
  float *out = job->t->dbias;
  const int64_t *os = p->dbias_stride;
  bwd_scratch w = carve(job, worker);
  /* rows of dBias this item owns: all zero first */
  const int64_t i_lo = db[2] > 1 ? qbr * BR : 0;
  const int64_t i_hi = db[2] > 1 ? (i_lo + BR < p->len_q ? i_lo + BR : p->len_q) : 1;
  for (int64_t i = i_lo; i < i_hi; i++)
    for (int64_t j = 0; j < db[3]; j++)
      out[br * os[0] + hr * os[1] + i * os[2] + j * os[3]] = 0.0f;
  for (int64_t b = db[0] > 1 ? br : 0; b < (db[0] > 1 ? br + 1 : p->batch); b++)
    for (int64_t h = db[1] > 1 ? hr : 0; h < (db[1] > 1 ? hr + 1 : p->heads_q); h++)
      for (int64_t qb = db[2] > 1 ? qbr : 0; qb < (db[2] > 1 ? qbr + 1 : job->n_qb); qb++) {
        const int64_t i0 = qb * BR, hk = h / job->pr->group;
        const int rows = (int)(p->len_q - i0 < BR ? p->len_q - i0 : BR);
        load_q(job, &w, b, h, qb);
        int64_t blo = p->len_k, bhi = 0;
        for (int r = 0; r < rows; r++)
          if (w.lo[r] < w.hi[r]) {
            blo = w.lo[r] < blo ? w.lo[r] : blo;
            bhi = w.hi[r] > bhi ? w.hi[r] : bhi;
          }
        for (int64_t j0 = blo / BC * BC; j0 < bhi; j0 += BC) {
          const int cols = (int)(p->len_k - j0 < BC ? p->len_k - j0 : BC);
          pack_kv(job, &w, b, hk, j0, cols);
          tile(job, &w, b, h, i0, rows, j0, cols, 0);
          for (int r = 0; r < rows; r++) {
            float *orow = out + br * os[0] + hr * os[1] + (db[2] > 1 ? i0 + r : 0) * os[2];
            for (int c = 0; c < cols; c++)
              orow[(db[3] > 1 ? j0 + c : 0) * os[3]] += w.ds[r * BC + c];
          }
        }
      }
}

/* Sizes the job; the plan depends on shapes only. Extra buffers, in bytes: dQ partials, Δ, packed
 * Q and dO, finiteness flags, LSE, key ranges (lo, hi), the partials' written flags (each part
 * rounded up to 64 bytes). */
enum { N_EXTRA = 9 };
static attn_status plan(bwd_job *job, int *workers, int64_t *n_main, size_t extra[N_EXTRA]) {
  const attn_params *p = job->pr->p;
  size_t offs[N_PARTS];
  job->dp = attn__round_up(p->dim, NB);
  job->dvp = attn__round_up(p->dim_v, NB);
  job->n_qb = (p->len_q + BR - 1) / BR;
  job->n_kb = (p->len_k + BC - 1) / BC;
  job->lq_p = job->n_qb * BR;
  const int64_t bhk = p->batch * p->heads_kv, bhq = p->batch * p->heads_q;
  job->n_slices = 1;
  if (bhk > 0 && bhk < MIN_MAIN_ITEMS) job->n_slices = (MIN_MAIN_ITEMS + bhk - 1) / bhk;
  if (job->n_slices > job->n_kb) job->n_slices = job->n_kb > 0 ? job->n_kb : 1;
  const int64_t full[4] = {p->batch, p->heads_q, p->len_q, p->len_k};
  for (int d = 0; d < 4; d++)
    job->db[d] = p->bias_stride[d] == 0 ? 1 : full[d];
  int64_t n[N_EXTRA] = {0}, rows = 0;
  int ok = attn__mul_ok(bhk, job->n_slices, n_main) && attn__mul_ok(bhq, job->lq_p, &rows) &&
           attn__mul_ok(*n_main, job->pr->group * job->lq_p, &n[0]) &&
           attn__mul_ok(n[0], job->dp * 4, &n[0]) && attn__mul_ok(rows, 4, &n[1]) &&
           attn__mul_ok(rows, job->dp * 4, &n[2]) && attn__mul_ok(rows, job->dvp * 4, &n[3]) &&
           attn__mul_ok(bhq, job->n_qb, &n[4]) && attn__mul_ok(rows, 4, &n[5]) &&
           attn__mul_ok(p->batch, job->lq_p * 8, &n[6]) &&
           attn__mul_ok(*n_main, job->pr->group * job->n_qb, &n[8]) &&
           scratch_layout(job->dp, job->dvp, offs, &job->scratch_bytes);
  n[7] = n[6]; /* lo and hi alike */
  for (int i = 0; ok && i < N_EXTRA; i++) {
    ok = attn__add_ok(n[i], 64, &n[i]);
    extra[i] = (size_t)(n[i] & ~(int64_t)63);
  }
  if (!ok) return attn__fail(ATTN_STATUS_SIZE_OVERFLOW, "attn_backward: scratch size overflows");
  /* one core's time for the call (2.5 forward FLOPs per pair, all pairs; Q, K, V, O, dO read and
   * dQ, dK, dV written as fp32), for the serial threshold */
  const double rq = (double)bhq * (double)p->len_q, rk = (double)bhk * (double)p->len_k;
  const double dd = (double)(p->dim + p->dim_v);
  *workers = attn__workers_for(job->pr->threads, *n_main,
                               attn__est_us(5.0 * dd * rq * (double)p->len_k,
                                            4.0 * (rq * (dd + 2.0 * p->dim_v) + 2.0 * rk * dd)));
  return ATTN_STATUS_OK;
}

attn_status ATTN_BWD_SCRATCH_FN(const attn__problem *pr, int with_dbias, size_t *bytes) {
  bwd_job job = {0};
  job.pr = pr;
  int workers = 1;
  int64_t n_main;
  size_t extra[N_EXTRA];
  (void)with_dbias; /* the dBias pass reuses the same buffers */
  attn_status st = plan(&job, &workers, &n_main, extra);
  if (st != ATTN_STATUS_OK) return st;
  size_t total = 0;
  for (int i = 0; i < N_EXTRA; i++)
    total += extra[i];
  *bytes = attn__arena_round(job.scratch_bytes * (size_t)workers) + attn__arena_round(total);
  return ATTN_STATUS_OK;
}

attn_status ATTN_BWD_FN(const attn__problem *pr, const attn__bwd_tensors *t) {
  const attn_params *p = pr->p;
  bwd_job job = {0};
  job.pr = pr;
  job.t = t;
  int workers = 1;
  int64_t n_main;
  size_t extra[N_EXTRA], total = 0;
  attn_status st = plan(&job, &workers, &n_main, extra);
  if (st != ATTN_STATUS_OK) return st;
  for (int i = 0; i < N_EXTRA; i++)
    total += extra[i];
  /* everything is taken before any output is written, so OUT_OF_MEMORY changes nothing */
  job.scratch = attn__arena_alloc(pr->arena, job.scratch_bytes * (size_t)workers);
  unsigned char *block = attn__arena_alloc(pr->arena, total);
  if (!job.scratch || !block) /* (total is never 0: each extra part takes at least 64 bytes) */
    return attn__fail(ATTN_STATUS_OUT_OF_MEMORY,
                      "attn_backward: could not allocate %d x %zu bytes of tile scratch and %zu "
                      "bytes of packed rows and partial dQ",
                      workers, job.scratch_bytes, total);
  unsigned char *part[N_EXTRA];
  for (size_t i = 0, at = 0; i < N_EXTRA; at += extra[i], i++)
    part[i] = block + at;
  job.dq_part = (float *)(void *)part[0];
  job.delta = (float *)(void *)part[1];
  job.qs_all = (float *)(void *)part[2];
  job.dos_all = (float *)(void *)part[3];
  job.qfin = part[4];
  job.lse = (float *)(void *)part[5];
  job.lo = (int64_t *)(void *)part[6];
  job.hi = (int64_t *)(void *)part[7];
  job.dq_wrote = part[8];
  const int64_t n_rows_items = p->batch * p->heads_q * job.n_qb;
  attn__parallel_for(workers, n_rows_items, prepare_item, &job);
  attn__parallel_for(workers, n_main, main_item, &job);
  if (job.n_slices > 1) /* (one slice: main_item wrote dQ) */
    attn__parallel_for(workers, n_rows_items, dq_item, &job);
  if (t->dbias) {
    const int64_t n_db = job.db[0] * job.db[1] * (job.db[2] > 1 ? job.n_qb : 1);
    attn__parallel_for(workers, n_db, dbias_item, &job);
  }
  return ATTN_STATUS_OK; /* the caller releases the arena */
}
