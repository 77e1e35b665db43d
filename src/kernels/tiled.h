/*
 * tiled.h — the contract between the fused tile driver (fwd_tiled.c, portable C) and a set of
 * microkernels (one per instruction set). The driver owns loops, visibility, packing of Q and V,
 * threads and the empty-row rule; a microkernel set owns the arithmetic on packed tiles.
 *
 * Packed layouts (all scratch is 64-byte aligned; row strides below keep rows 32-byte aligned):
 *   Qs  [rows_p, D]     query rows pre-scaled by `scale`, rows_p = rows rounded up to mr, pad = 0
 *   Kp  as pack_k writes it (row-major [cols, D] or transposed [D, bc]); padding columns = 0
 *   Vs  [cols, dvp]     value rows, dvp = dv_pad(Dv) columns, pad = 0 (or V itself, see pv)
 *   S   [rows_p, bc]    scores, then probabilities, row stride bc
 *   acc [rows_p, dvp]   unnormalised output, row stride dvp
 */
#ifndef ATTN_TILED_H
#define ATTN_TILED_H

#include "../internal.h"

#include <math.h>

typedef struct attn__fwd_ukernel {
  int br; /* query rows per block: a multiple of mr */
  int bc; /* keys per tile: a multiple of nr */
  int mr; /* rows the qk/pv kernels process at once (Q and S rows are padded to it) */
  int nr; /* columns the kernels process at once (S columns are padded to it with −inf) */
  int64_t (*dv_pad)(int64_t dv);
  /* Packs K rows [j0, j0 + cols) of a strided [L, D] matrix for qk; columns up to nr are zero.
   * The layout must be such that packing all of K in calls at j0 = 0, bc, 2·bc, … into
   * dst + j0·D leaves, for any j0 that is a multiple of nr, the tile at j0 as dst + j0·D: the
   * driver packs K once per call that way and qk reads slices of it (columns past a tile's cols
   * then hold the next keys; qk computes them and the driver overwrites them with −inf). Within
   * one packed tile, likewise, the columns from c on (c a multiple of nr) are at dst + c·D: on a
   * ragged tile the driver runs qk on such column ranges for groups of rows. */
  void (*pack_k)(const float *src, int64_t row_stride, int64_t col_stride, int64_t j0, int cols,
                 int64_t D, float *dst);
  /* Optional (NULL: qk reads Qs as is): rearranges Qs [rows_p, D] into the layout qk reads, once
   * per query block; rows from r on (r a multiple of mr) must start at qp + r·D. */
  void (*pack_q)(const float *qs, int rows_p, int64_t D, float *qp);
  /* S [rows_p, bc] = Qs (or its pack_q layout) · Kpᵀ for the first cols columns; the columns up
   * to round_up(cols, nr) may be computed or left as they are (the driver writes −inf there
   * before the softmax reads them, and pv reads only the first cols). */
  void (*qk)(const float *qs, const float *kp, int rows_p, int cols, int64_t D, float *s);
  /* Online-softmax update of rows [0, rows) over columns [0, round_up(cols, nr)); invisible
   * entries hold −inf. Rewrites S as P = exp(S − m_new), updates m and l, writes alpha =
   * exp(m_old − m_new) (1 for rows with nothing visible yet, whose P row becomes 0). A visible
   * NaN makes m NaN, so it reaches the row's O and LSE. */
  void (*softmax)(float *s, int rows, int cols, float *m, float *l, float *alpha);
  /* acc [rows_p, dvp] = alpha[r]·acc + P [rows_p, bc] · V [cols, dvp], V rows ldv elements
   * apart: the packed Vs (ldv = dvp) or, when Dv is a multiple of nr and its columns are
   * contiguous, the caller's V read in place (ldv = its row stride; no alignment). */
  void (*pv)(const float *p, const float *v, int64_t ldv, const float *alpha, int rows_p, int cols,
             int64_t dvp, float *acc);
  /* The same, skipping pairs with vis = 0 (vis [rows_p, bc]); used when the V tile holds a
   * non-finite value, so NaN behind a mask never meets a 0. Must give bitwise the pv result
   * whenever V is finite (skipping an exact +0 contribution is exact: acc is never −0). */
  void (*pv_masked)(const float *p, const float *vs, const float *alpha, const unsigned char *vis,
                    int rows_p, int cols, int64_t dvp, float *acc);
  /* Optional direct forms for decode blocks (NULL: always pack). They read K and V rows in place
   * (row stride in elements of the types kt and vt, unit column stride; narrow values widened
   * exactly as they are read), vectorised along D, for rows [0, rows) only (no padding rows);
   * qk_direct reads Qs [rows, D] row-major and writes S columns [0, cols). pv_direct returns 1 if
   * every V value was finite, and must then give bitwise the pv_masked result on the widened V
   * (same per-element operations in the same order); on 0, acc is unspecified (the driver
   * restores it from a copy kept in the V tile's scratch, so a set with direct forms needs
   * br ≤ bc, and takes the packed, masked path). */
  void (*qk_direct)(const float *qs, attn_dtype kt, const void *k, int64_t k_row_stride, int rows,
                    int cols, int64_t D, float *s, attn_dtype vt, const void *v,
                    int64_t v_row_stride, int64_t Dv);
  int (*pv_direct)(const float *p, attn_dtype vt, const void *v, int64_t v_row_stride,
                   const float *alpha, int rows, int cols, int64_t Dv, int64_t dvp, float *acc);
  /* Optional (NULL: attn__widen_rows): the same function in the set's instructions, for narrow
   * K and V tiles; exact, so bitwise attn__widen_rows's result. */
  int (*widen_rows)(attn_dtype t, const void *src, int64_t row_stride, int64_t col_stride,
                    int64_t j0, int cols, int64_t n, int64_t ld, float *dst);
  /* Optional (0: mr): qk, pv and pv_masked also take rows_p a multiple of mr_min (a divisor of
   * mr), so a block whose rows end mr_min past a multiple of mr is not computed up to mr (Q is
   * still padded, and pack_q still called, to a multiple of mr) */
  int mr_min;
} attn__fwd_ukernel;

/* Rows that qk, pv and pv_masked compute for `rows` query rows. */
static inline int attn__rows_computed(const attn__fwd_ukernel *uk, int rows) {
  const int m = uk->mr_min ? uk->mr_min : uk->mr;
  return (rows + m - 1) / m * m;
}

/* The fused forward over any microkernel set. */
attn_status attn__fwd_tiled(const attn__fwd_ukernel *uk, const attn__problem *pr, const void *q,
                            const void *k, const void *v, float *o, float *lse, float *probs);

/* Bytes of scratch attn__fwd_tiled allocates for this call. */
attn_status attn__scratch_tiled(const attn__fwd_ukernel *uk, const attn__problem *pr,
                                int with_probs, size_t *bytes);

/* Packs rows [j0, j0 + cols) of a strided [L, n] matrix into dst [cols, ld] (columns [n, ld)
 * zero); returns 1 if every packed value is finite. */
int attn__pack_rows(const float *src, int64_t row_stride, int64_t col_stride, int64_t j0, int cols,
                    int64_t n, int64_t ld, float *dst);

/* The same for a matrix of type t (fp32 or narrow), widened exactly to fp32. */
int attn__widen_rows(attn_dtype t, const void *src, int64_t row_stride, int64_t col_stride,
                     int64_t j0, int cols, int64_t n, int64_t ld, float *dst);

/* 1 if the rows [0, cols) × [0, n) of a matrix with unit column stride are all finite. */
int attn__rows_finite(const float *src, int64_t row_stride, int cols, int64_t n);

/* Visible key range [lo, hi) of query row i of batch item b by the rules that bound it: query
 * length (a padding row, i ≥ qlen(b), sees nothing: lo = hi = 0), key length, causal and window
 * (mask and bias are per pair: attn__score_row). Over the rows below qlen(b), lo and hi never
 * decrease as i grows. */
void attn__row_key_range(const attn_params *p, int64_t b, int64_t i, int64_t *lo, int64_t *hi);

/* Turns one row of scaled dot products srow[c] = (scale·q_i)·k_j for keys j = j0 + c, c < cols, of
 * query i (head h, batch b, key position pos, key range [lo, hi)) into the contract's scores:
 * softcap, ALiBi, bias; −inf and vrow[c] = 0 for invisible pairs, vrow[c] = 1 otherwise. The bias
 * is read only for pairs visible by the other rules. grow (NULL unless needed, softcap only):
 * grow[c] = ∂s/∂x = 1 − tanh²(x / softcap), the chain factor of the backward. */
void attn__score_row(const attn_params *p, int64_t b, int64_t h, int64_t i, int64_t pos, int64_t lo,
                     int64_t hi, int64_t j0, int cols, float *srow, unsigned char *vrow,
                     float *grow);

/* Portable scalar online-softmax update of one row (used by every set for rows whose running max
 * is not finite, and by the generic set for all rows). */
void attn__softmax_row_scalar(float *row, int cols, float *m, float *l, float *alpha);

/* A vector set's softmax may keep a row's running maximum as the reference of a later tile (P =
 * exp(S − m_old), α = 1, no rescale) when no score of the tile exceeds it by more than this
 * (natural-log units): the weights are then at most e^8 ≈ 2981 instead of 1 — the same sums up
 * to rounding, with no maximum to reduce before the exp pass and no exp for α. */
#define ATTN__SOFTMAX_SLACK 8.0f

/* The scalar ends of a vector set's row update. A SIMD row maximum that skips NaN scores gives mt;
 * the new running maximum is *m_new, and the vector path applies if it is finite (else the row
 * takes attn__softmax_row_scalar, which sees NaN). */
static inline int attn__softmax_vector_max(float mt, float m_old, float *m_new) {
  *m_new = isnan(m_old) ? NAN : (mt > m_old ? mt : m_old);
  return isfinite(*m_new) != 0;
}

/* After the vector pass wrote P = exp(S − m_new) over the row's cols_p columns and summed it: a
 * NaN sum means a visible NaN score (with m_new finite nothing else makes it NaN), and the row
 * takes the state the scalar rule gives it — P, m, l and α all NaN; else α = exp(m_old − m_new),
 * l = α·l + sum, m = m_new. */
static inline void attn__softmax_vector_done(float *row, int cols_p, float sum, float m_old,
                                             float m_new, float *m, float *l, float *alpha) {
  if (isnan(sum)) {
    for (int c = 0; c < cols_p; c++)
      row[c] = NAN;
    *m = *l = *alpha = NAN;
    return;
  }
  /* a row's first visible tile (m_old = −inf): exp(−inf) = 0, and an unchanged maximum:
   * exp(0) = 1, both without the call */
  const float a = m_old == -INFINITY ? 0.0f : m_old == m_new ? 1.0f : expf(m_old - m_new);
  *alpha = a;
  *l = *l * a + sum;
  *m = m_new;
}

extern const attn__fwd_ukernel attn__ukernel_generic;
#if defined(__x86_64__) || defined(__i386__)
extern const attn__fwd_ukernel attn__ukernel_avx2;
extern const attn__fwd_ukernel attn__ukernel_avx512;
/* Parts of the AVX2 set that the AVX-512 set shares (ukernel_avx2.c; AVX2 + FMA + F16C only): K
 * packing in panels of w keys (w a multiple of 8), Q packing in panels of mr rows and the masked
 * P·V, with S rows 128 floats apart (bc = 128); the decode direct forms and narrow widening, which
 * test_dtype calls directly. */
void attn__pack_k_panels_avx2(const float *src, int64_t row_stride, int64_t col_stride, int64_t j0,
                              int cols, int64_t D, float *dst, int w);
void attn__pack_q_panels_avx2(const float *qs, int rows_p, int64_t D, float *qp, int mr);
void attn__pv_masked_avx2(const float *p, const float *vs, const float *alpha,
                          const unsigned char *vis, int rows_p, int cols, int64_t dvp, float *acc);
void attn__qk_direct_avx2(const float *qs, attn_dtype kt, const void *k, int64_t k_rs, int rows,
                          int cols, int64_t D, float *s, attn_dtype vt, const void *v, int64_t v_rs,
                          int64_t Dv);
int attn__pv_direct_avx2(const float *p, attn_dtype vt, const void *v, int64_t v_rs,
                         const float *alpha, int rows, int cols, int64_t Dv, int64_t dvp,
                         float *acc);
int attn__widen_rows_avx2(attn_dtype t, const void *src, int64_t row_stride, int64_t col_stride,
                          int64_t j0, int cols, int64_t n, int64_t ld, float *dst);
#endif

static inline int64_t attn__round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

/* CALL(T) with T the constant attn_dtype equal to t (fp32 for any other value): the switch that
 * turns a run-time type into one inlined, type-specialised body per type. */
#define ATTN__BY_DTYPE(t, CALL)                                                                    \
  switch (t) {                                                                                     \
  case ATTN_DTYPE_F16:                                                                             \
    CALL(ATTN_DTYPE_F16);                                                                          \
    break;                                                                                         \
  case ATTN_DTYPE_BF16:                                                                            \
    CALL(ATTN_DTYPE_BF16);                                                                         \
    break;                                                                                         \
  case ATTN_DTYPE_F8E4M3:                                                                          \
    CALL(ATTN_DTYPE_F8E4M3);                                                                       \
    break;                                                                                         \
  case ATTN_DTYPE_F8E5M2:                                                                          \
    CALL(ATTN_DTYPE_F8E5M2);                                                                       \
    break;                                                                                         \
  default:                                                                                         \
    CALL(ATTN_DTYPE_F32);                                                                          \
    break;                                                                                         \
  }

/* The decode direct forms prefetch, for each pair of keys c, c + 1 they read, the K rows
 * ATTN__DECODE_AHEAD keys ahead and the V rows of keys c, c + 1 (read by pv after the tile's
 * softmax), both into L2. On Zen 4 (Lq = 1, Lk = 32768, Hq = 32, Hkv = 8, D = 128, fp32, three
 * alternating rounds): K non-temporal 4 ahead and V into L1 (the Zen 3 choice) took 32 ms on one
 * thread and 17–27 on two; K and V into L2 16–32 ahead 19–21 and 11–14; K into L2 with V into L1
 * or not prefetched 28–34 (presumably prefetches into L1 wait for its few miss buffers; on Zen 3
 * K non-temporal was 1.03–1.04× faster than into L1). 16 rather than 32 ahead: pages of 16 keys
 * took 14–15 ms against 16–17 (prefetches past a page's end fetch rows of other pages). */
enum { ATTN__DECODE_AHEAD = 16 };

/* Prefetches bytes [0, n) from p into L2 (prefetches never fault, so p may lie past an array's
 * end). Always inlined: gcc deems a function that only prefetches free of side effects and may
 * delete calls to one it keeps out of line (see prefetch_next_page in fwd_tiled.c). */
static inline __attribute__((always_inline)) void attn__prefetch_l2(const char *p, int64_t n) {
  for (int64_t b = 0; b < n; b += 64)
    __builtin_prefetch(p + b, 0, 2);
}

#endif
