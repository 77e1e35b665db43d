/*
 * ukernel_generic.c — attn__fwd_f32__generic: the portable microkernel set for the fused tile
 * driver (fwd_tiled.c). Plain C, no intrinsics, compiled for the baseline ISA; it runs everywhere
 * and is the fallback when no SIMD set is supported. Tiles: 64 query rows × 128 keys.
 */
#include "../tiled.h"

enum { BR = 64, BC = 128 };

static int64_t dv_identity(int64_t dv) { return dv; }

/* K tile as rows: Kp [cols, D]. */
static void pack_k_rows(const float *src, int64_t row_stride, int64_t col_stride, int64_t j0,
                        int cols, int64_t D, float *dst) {
  attn__pack_rows(src, row_stride, col_stride, j0, cols, D, D, dst);
}

/* S [rows, BC] = Qs [rows, D] · Kp [cols, D]ᵀ. Eight interleaved partial sums, combined pairwise:
 * the error grows like D/8 instead of D, as in a SIMD kernel's lanes. */
static void qk_generic(const float *qs, const float *kp, int rows, int cols, int64_t D, float *s) {
  const int64_t D8 = D & ~(int64_t)7;
  for (int r = 0; r < rows; r++)
    for (int c = 0; c < cols; c++) {
      const float *a = qs + (int64_t)r * D, *b = kp + (int64_t)c * D;
      float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int64_t d = 0; d < D8; d += 8)
        for (int u = 0; u < 8; u++)
          acc[u] += a[d + u] * b[d + u];
      for (int64_t d = D8; d < D; d++)
        acc[d - D8] += a[d] * b[d];
      s[r * BC + c] =
          ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
    }
}

static void softmax_generic(float *s, int rows, int cols, float *m, float *l, float *alpha) {
  for (int r = 0; r < rows; r++)
    attn__softmax_row_scalar(s + r * BC, cols, &m[r], &l[r], &alpha[r]);
}

/* acc [rows, Dv] = α[r]·acc + P [rows, BC] · V [cols, Dv] (rows ldv apart); with vis, invisible
 * pairs are skipped. */
static void pv_any(const float *pm, const float *vs, int64_t ldv, const float *alpha,
                   const unsigned char *vis, int rows, int cols, int64_t Dv, float *acc) {
  for (int r = 0; r < rows; r++) {
    float *a = acc + (int64_t)r * Dv;
    const float ar = alpha[r];
    if (ar != 1.0f)
      for (int64_t d = 0; d < Dv; d++)
        a[d] *= ar;
    for (int c = 0; c < cols; c++) {
      if (vis && !vis[r * BC + c]) continue;
      const float pr = pm[r * BC + c];
      const float *vr = vs + (int64_t)c * ldv;
      for (int64_t d = 0; d < Dv; d++)
        a[d] += pr * vr[d];
    }
  }
}

static void pv_generic(const float *pm, const float *vs, int64_t ldv, const float *alpha, int rows,
                       int cols, int64_t Dv, float *acc) {
  pv_any(pm, vs, ldv, alpha, NULL, rows, cols, Dv, acc);
}

static void pv_masked_generic(const float *pm, const float *vs, const float *alpha,
                              const unsigned char *vis, int rows, int cols, int64_t Dv,
                              float *acc) {
  pv_any(pm, vs, Dv, alpha, vis, rows, cols, Dv, acc);
}

const attn__fwd_ukernel attn__ukernel_generic = {
    BR,
    BC,
    1,
    1,
    dv_identity,
    pack_k_rows,
    NULL,
    qk_generic,
    softmax_generic,
    pv_generic,
    pv_masked_generic,
    NULL, /* qk_direct */
    NULL, /* pv_direct */
    NULL, /* widen_rows: the portable attn__widen_rows */
    0,    /* mr_min: mr */
};

attn_status attn__fwd_f32__generic(const attn__problem *pr, const void *q, const void *k,
                                   const void *v, float *o, float *lse, float *probs) {
  return attn__fwd_tiled(&attn__ukernel_generic, pr, q, k, v, o, lse, probs);
}

attn_status attn__scratch_f32__generic(const attn__problem *pr, int with_probs, size_t *bytes) {
  return attn__scratch_tiled(&attn__ukernel_generic, pr, with_probs, bytes);
}
