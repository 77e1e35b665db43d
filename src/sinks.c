/*
 * sinks.c — the gradient of attention-sink logits. A sink is one more score per row with a zero
 * value, so O_i = Σ_j P_ij v_j with P_ij = exp(s_ij − LSE_i) and LSE_i including exp(sink_h):
 *     ∂O_i/∂sink_h = −P_sink,i · O_i,   P_sink,i = exp(sink_h − LSE_i)
 *     dsinks[h] = −Σ_{b,i} P_sink,i · (dO_i · O_i)
 * over the rows below qlen(b), in double, in (b, i) order (deterministic, one thread: O(B·Hq·Lq·Dv)
 * work). dQ, dK and dV need nothing else: the backward recomputes P from the LSE, which holds the
 * sink.
 */
#include "internal.h"

#include <math.h>

attn_status attn__backward_sinks(const attn__problem *pr, const float *o, const float *lse,
                                 const float *dout, float *dsinks) {
  const attn_params *p = pr->p;
  for (int64_t h = 0; h < p->heads_q; h++) {
    const double sink = p->sinks[h];
    double acc = 0.0;
    for (int64_t b = 0; b < p->batch && sink != -INFINITY; b++)
      for (int64_t i = 0; i < attn__qlen(p, b); i++) { /* padding rows are not in the problem */
        const int64_t row_o = attn__q_row(p, p->o_stride, b, h, i);
        const int64_t row_g = attn__q_row(p, p->dout_stride, b, h, i);
        double delta = 0.0; /* dO·O */
        for (int64_t d = 0; d < p->dim_v; d++)
          delta += (double)dout[row_g + d * p->dout_stride[3]] * o[row_o + d * p->o_stride[3]];
        const double l = lse[attn__q_row(p, p->lse_stride, b, h, i)];
        acc -= exp(sink - l) * delta;
      }
    dsinks[h] = (float)acc;
  }
  return ATTN_STATUS_OK;
}
