/*
 * score.c — visibility and score rules of the contract for the fused kernels (forward and
 * backward share them, so the two cannot disagree on which pairs are visible). Portable C.
 */
#include "tiled.h"

#include <math.h>
#include <string.h>

void attn__row_key_range(const attn_params *p, int64_t b, int64_t i, int64_t *lo, int64_t *hi) {
  if (i >= attn__qlen(p, b)) { /* padding row */
    *lo = *hi = 0;
    return;
  }
  const int64_t pos = i + attn__pos_shift(p, b);
  int64_t a = 0, e = attn__klen(p, b); /* written to avoid overflow for any window */
  if (p->causal && pos < e - 1) e = pos + 1;
  if (p->window_left >= 0 && pos - a > p->window_left) a = pos - p->window_left;
  if (p->window_right >= 0 && e - 1 - pos > p->window_right) e = pos + p->window_right + 1;
  if (e < a) e = a;
  *lo = a;
  *hi = e;
}

void attn__score_row(const attn_params *p, int64_t b, int64_t h, int64_t i, int64_t pos, int64_t lo,
                     int64_t hi, int64_t j0, int cols, float *srow, unsigned char *vrow,
                     float *grow) {
  const float cap = p->softcap;
  if (!p->mask && !p->bias && cap == 0.0f && !p->alibi_slopes) {
    /* visibility only (causal, window, key length): the visible keys are one run [a, e) of the
     * tile and the scores stay as computed — the loop below's result, without its per-pair
     * tests (they cost as much as the products on a causal diagonal tile) */
    const int64_t a64 = lo - j0 < 0 ? 0 : lo - j0 > cols ? cols : lo - j0;
    const int64_t e64 = hi - j0 < a64 ? a64 : hi - j0 > cols ? cols : hi - j0;
    const int a = (int)a64, e = (int)e64;
    memset(vrow, 0, (size_t)a);
    memset(vrow + a, 1, (size_t)(e - a));
    memset(vrow + e, 0, (size_t)(cols - e));
    for (int c = 0; c < a; c++)
      srow[c] = -INFINITY;
    for (int c = e; c < cols; c++)
      srow[c] = -INFINITY;
    if (grow)
      for (int c = 0; c < cols; c++)
        if (c < a || c >= e) grow[c] = 0.0f;
    return;
  }
  const float slope = p->alibi_slopes ? p->alibi_slopes[h] : 0.0f;
  const uint8_t *mrow =
      p->mask ? p->mask + b * p->mask_stride[0] + h * p->mask_stride[1] + i * p->mask_stride[2]
              : NULL;
  const float *brow =
      p->bias ? p->bias + b * p->bias_stride[0] + h * p->bias_stride[1] + i * p->bias_stride[2]
              : NULL;
  for (int c = 0; c < cols; c++) {
    const int64_t j = j0 + c;
    int visible = j >= lo && j < hi;
    if (visible && mrow && mrow[j * p->mask_stride[3]] == 0) visible = 0;
    float bias = 0.0f;
    if (visible && brow) {
      bias = brow[j * p->bias_stride[3]];
      if (bias == -INFINITY) visible = 0;
    }
    vrow[c] = (unsigned char)visible;
    if (!visible) {
      srow[c] = -INFINITY;
      if (grow) grow[c] = 0.0f;
      continue;
    }
    float s = srow[c];
    if (cap > 0.0f) {
      const float t = tanhf(s / cap);
      s = cap * t;
      if (grow) grow[c] = 1.0f - t * t;
    }
    if (p->alibi_slopes) s -= slope * (float)(pos >= j ? pos - j : j - pos);
    if (brow) s += bias;
    srow[c] = s;
  }
}
