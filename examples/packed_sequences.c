/*
 * packed_sequences.c — sequences of different lengths packed one after another, as a trainer
 * packs documents into one batch (p.cu_seqlens_q, p.cu_seqlens_k: FlashAttention's varlen): no
 * padding is stored, read or computed, and no document sees another.
 *
 * Four documents of 5, 12, 1 and 9 tokens, causal self-attention with grouped-query heads, forward
 * and backward in one call each. Then every document alone — a call on its own rows, addressed by
 * pointer offsets into the same tensors, no copies — gives the same outputs and gradients.
 */
#include "example_util.h"

#include <math.h>

enum { N = 4, HQ = 4, HKV = 2, D = 16, TOTAL = 27, MAXLEN = 12 };

static float frand(unsigned *s) {
  *s = *s * 1664525u + 1013904223u;
  return (float)(*s >> 8) / 16777216.0f * 2.0f - 1.0f;
}

/* Causal self-attention over `batch` sequences of at most `len` tokens whose rows lie in tensors
 * of `total` rows laid out [total, H, D]; LSE [HQ, total]. */
static void params_for(attn_params *p, int64_t batch, int64_t len, int64_t total) {
  attn_params_init(p, batch, HQ, HKV, len, len, D, D);
  attn_strides_blhd(p->q_stride, HQ, total, D), attn_strides_blhd(p->o_stride, HQ, total, D);
  attn_strides_blhd(p->dout_stride, HQ, total, D), attn_strides_blhd(p->dq_stride, HQ, total, D);
  attn_strides_blhd(p->k_stride, HKV, total, D), attn_strides_blhd(p->v_stride, HKV, total, D);
  attn_strides_blhd(p->dk_stride, HKV, total, D), attn_strides_blhd(p->dv_stride, HKV, total, D);
  p->lse_stride[0] = 0, p->lse_stride[1] = total, p->lse_stride[2] = 1;
  p->causal = 1, p->align = ATTN_ALIGN_BOTTOM_RIGHT; /* = top-left here: qlen = klen */
}

static double max_diff(const float *a, const float *b, int n) {
  double m = 0;
  for (int i = 0; i < n; i++)
    m = fmax(m, fabs((double)a[i] - b[i]));
  return m;
}

int main(void) {
  const int64_t cu[N + 1] = {0, 5, 17, 18, 27}; /* document b: rows cu[b] .. cu[b + 1] − 1 */
  static float q[TOTAL * HQ * D], k[TOTAL * HKV * D], v[TOTAL * HKV * D], dout[TOTAL * HQ * D];
  static float o[TOTAL * HQ * D], lse[HQ * TOTAL], dq[TOTAL * HQ * D], dk[TOTAL * HKV * D],
      dv[TOTAL * HKV * D];
  static float o1[TOTAL * HQ * D], lse1[HQ * TOTAL], dq1[TOTAL * HQ * D], dk1[TOTAL * HKV * D],
      dv1[TOTAL * HKV * D];
  unsigned seed = 7;
  for (int i = 0; i < TOTAL * HQ * D; i++)
    q[i] = frand(&seed), dout[i] = frand(&seed);
  for (int i = 0; i < TOTAL * HKV * D; i++)
    k[i] = frand(&seed), v[i] = frand(&seed);

  /* the whole batch: one forward, one backward */
  attn_params p;
  params_for(&p, N, MAXLEN, TOTAL);
  p.cu_seqlens_q = p.cu_seqlens_k = cu;
  example_check(attn_forward(&p, q, k, v, o, lse, NULL), "attn_forward (packed)");
  example_check(attn_backward(&p, q, k, v, o, lse, dout, dq, dk, dv, NULL),
                "attn_backward (packed)");

  /* each document alone, on its rows of the same tensors */
  for (int b = 0; b < N; b++) {
    const int64_t len = cu[b + 1] - cu[b], rq = cu[b] * HQ * D, rk = cu[b] * HKV * D;
    attn_params s;
    params_for(&s, 1, len, TOTAL);
    example_check(attn_forward(&s, q + rq, k + rk, v + rk, o1 + rq, lse1 + cu[b], NULL),
                  "attn_forward (one document)");
    example_check(attn_backward(&s, q + rq, k + rk, v + rk, o1 + rq, lse1 + cu[b], dout + rq,
                                dq1 + rq, dk1 + rk, dv1 + rk, NULL),
                  "attn_backward (one document)");
  }

  printf("%d documents of %lld, %lld, %lld and %lld tokens packed into %d rows (padded to the "
         "longest: %d rows)\n",
         N, (long long)(cu[1] - cu[0]), (long long)(cu[2] - cu[1]), (long long)(cu[3] - cu[2]),
         (long long)(cu[4] - cu[3]), TOTAL, N * MAXLEN);
  const double d[5] = {max_diff(o, o1, TOTAL * HQ * D), max_diff(lse, lse1, HQ * TOTAL),
                       max_diff(dq, dq1, TOTAL * HQ * D), max_diff(dk, dk1, TOTAL * HKV * D),
                       max_diff(dv, dv1, TOTAL * HKV * D)};
  printf("packed call against each document alone, max |difference|:\n"
         "  O %.1e  LSE %.1e  dQ %.1e  dK %.1e  dV %.1e\n",
         d[0], d[1], d[2], d[3], d[4]);
  for (int i = 0; i < 5; i++)
    if (!(d[i] <= 1e-5)) {
      fprintf(stderr, "the packed call differs from the documents alone\n");
      return 1;
    }
  printf("no document sees another: the packed batch is the documents, one call each way\n");
  return 0;
}
