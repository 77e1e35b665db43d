/*
 * test_ref.c — values worked out by hand, for every kernel (ref first: it is the oracle the rest of
 * the suite leans on, and the harness's own fp64 oracle is checked here too).
 */
#include "harness.h"

#include <math.h>
#include <string.h>

#define NEAR(x, want) (fabs((double)(x) - (want)) <= 1e-6 * (1.0 + fabs(want)))

typedef struct hand_case {
  const char *name;
  attn_params p;
  const float *q, *k, *v;
  double o[4], lse[2];
  int rows, dv;
} hand_case;

static void run_hand(const hand_case *hc) {
  for (int kern = 1; kern < ATTN_KERNEL_COUNT_; kern++) {
    if (!attn_kernel_supported((attn_kernel)kern)) continue; /* test_kernels reports SKIPs */
    attn_params p = hc->p;
    p.kernel = (attn_kernel)kern;
    float o[4] = {-7, -7, -7, -7}, lse[2] = {-7, -7};
    attn_status st = attn_forward(&p, hc->q, hc->k, hc->v, o, lse, NULL);
    CHECKF(st == ATTN_STATUS_OK, "%s (%s): %s", hc->name, attn_kernel_name(p.kernel),
           attn_last_error());
    for (int i = 0; i < hc->rows; i++) {
      CHECKF(NEAR(lse[i], hc->lse[i]) || (isinf(hc->lse[i]) && lse[i] == (float)hc->lse[i]),
             "%s (%s): lse[%d] = %.9g, want %.9g", hc->name, attn_kernel_name(p.kernel), i,
             (double)lse[i], hc->lse[i]);
      for (int d = 0; d < hc->dv; d++)
        CHECKF(NEAR(o[i * hc->dv + d], hc->o[i * hc->dv + d]),
               "%s (%s): o[%d][%d] = %.9g, want %.9g", hc->name, attn_kernel_name(p.kernel), i, d,
               (double)o[i * hc->dv + d], hc->o[i * hc->dv + d]);
    }
    /* the harness oracle must agree with the hand values too */
    double ro[4], rl[2];
    oracle_forward(&p, hc->q, hc->k, hc->v, ro, rl, NULL);
    for (int i = 0; i < hc->rows; i++) {
      CHECKF(NEAR(rl[i], hc->lse[i]) || rl[i] == hc->lse[i], "%s: oracle lse[%d] = %.9g", hc->name,
             i, rl[i]);
      for (int d = 0; d < hc->dv; d++)
        CHECKF(NEAR(ro[i * hc->dv + d], hc->o[i * hc->dv + d]), "%s: oracle o[%d][%d] = %.9g",
               hc->name, i, d, ro[i * hc->dv + d]);
    }
  }
}

int main(void) {
  const double e = exp(1.0);
  hand_case hc;

  /* scores [0, ln 3] → P = [1/4, 3/4]; O = 4/4 + 3·8/4 = 7; LSE = ln 4 */
  {
    const float q[1] = {1}, k[2] = {0, (float)log(3.0)}, v[2] = {4, 8};
    memset(&hc, 0, sizeof hc);
    hc.name = "two keys";
    attn_params_init(&hc.p, 1, 1, 1, 1, 2, 1, 1);
    hc.p.has_scale = 1, hc.p.scale = 1;
    hc.q = q, hc.k = k, hc.v = v, hc.rows = 1, hc.dv = 1;
    /* = 7 up to the rounding of ln 3 to float */
    hc.o[0] = 4.0 / (1 + exp((double)(float)log(3.0))) +
              8.0 * exp((double)(float)log(3.0)) / (1 + exp((double)(float)log(3.0)));
    hc.lse[0] = log(1 + exp((double)(float)log(3.0)));
    run_hand(&hc);
  }
  /* default scale 1/√4 = 0.5: q·k = 2 → s = 1 vs 0: P = [e/(1+e), 1/(1+e)] */
  {
    const float q[4] = {1, 1, 1, 1}, k[8] = {0.5f, 0.5f, 0.5f, 0.5f, 0, 0, 0, 0},
                v[4] = {1, 0, 0, 1};
    memset(&hc, 0, sizeof hc);
    hc.name = "default scale";
    attn_params_init(&hc.p, 1, 1, 1, 1, 2, 4, 2);
    hc.q = q, hc.k = k, hc.v = v, hc.rows = 1, hc.dv = 2;
    hc.o[0] = e / (1 + e), hc.o[1] = 1 / (1 + e), hc.lse[0] = log(1 + e);
    run_hand(&hc);
  }
  /* causal 2×2, q = k = 0: row 0 sees key 0 only (O = v0, LSE = 0); row 1 averages */
  {
    const float q[2] = {0, 0}, k[2] = {0, 0}, v[2] = {2, 6};
    memset(&hc, 0, sizeof hc);
    hc.name = "causal";
    attn_params_init(&hc.p, 1, 1, 1, 2, 2, 1, 1);
    hc.p.causal = 1;
    hc.q = q, hc.k = k, hc.v = v, hc.rows = 2, hc.dv = 1;
    hc.o[0] = 2, hc.o[1] = 4, hc.lse[0] = 0, hc.lse[1] = log(2.0);
    run_hand(&hc);
  }
  /* bottom-right vs top-left with Lq = 1, Lk = 3, causal: pos(0) = 2 sees all; pos(0) = 0 one */
  {
    const float q[1] = {0}, k[3] = {0, 0, 0}, v[3] = {3, 6, 9};
    memset(&hc, 0, sizeof hc);
    hc.name = "bottom-right";
    attn_params_init(&hc.p, 1, 1, 1, 1, 3, 1, 1);
    hc.p.causal = 1, hc.p.align = ATTN_ALIGN_BOTTOM_RIGHT;
    hc.q = q, hc.k = k, hc.v = v, hc.rows = 1, hc.dv = 1;
    hc.o[0] = 6, hc.lse[0] = log(3.0);
    run_hand(&hc);
    hc.name = "top-left";
    hc.p.align = ATTN_ALIGN_TOP_LEFT;
    hc.o[0] = 3, hc.lse[0] = 0;
    run_hand(&hc);
  }
  /* softcap 1: scores [100, 0] → [tanh 100, 0] = [1, 0] */
  {
    const float q[1] = {10}, k[2] = {10, 0}, v[2] = {1, 0};
    memset(&hc, 0, sizeof hc);
    hc.name = "softcap";
    attn_params_init(&hc.p, 1, 1, 1, 1, 2, 1, 1);
    hc.p.has_scale = 1, hc.p.scale = 1, hc.p.softcap = 1;
    hc.q = q, hc.k = k, hc.v = v, hc.rows = 1, hc.dv = 1;
    hc.o[0] = e / (1 + e), hc.lse[0] = log(1 + e);
    run_hand(&hc);
  }
  /* ALiBi slope 1, q = 0: row 1 scores [−1, 0] → P = [1/(1+e), e/(1+e)] */
  {
    const float q[2] = {0, 0}, k[2] = {0, 0}, v[2] = {0, 1}, slope[1] = {1};
    memset(&hc, 0, sizeof hc);
    hc.name = "alibi";
    attn_params_init(&hc.p, 1, 1, 1, 2, 2, 1, 1);
    hc.p.alibi_slopes = slope;
    hc.q = q, hc.k = k, hc.v = v, hc.rows = 2, hc.dv = 1;
    hc.o[0] = 1 / (1 + e), hc.o[1] = e / (1 + e);
    hc.lse[0] = hc.lse[1] = log(1 + 1 / e);
    run_hand(&hc);
  }
  /* bias [0, −inf | 1, 0]: row 0 sees key 0 only; row 1: P = [e/(1+e), 1/(1+e)] */
  {
    const float q[2] = {0, 0}, k[2] = {0, 0}, v[2] = {5, 7}, bias[4] = {0, -INFINITY, 1, 0};
    memset(&hc, 0, sizeof hc);
    hc.name = "bias";
    attn_params_init(&hc.p, 1, 1, 1, 2, 2, 1, 1);
    hc.p.bias = bias;
    hc.q = q, hc.k = k, hc.v = v, hc.rows = 2, hc.dv = 1;
    hc.o[0] = 5, hc.o[1] = (5 * e + 7) / (1 + e), hc.lse[0] = 0, hc.lse[1] = log(1 + e);
    run_hand(&hc);
  }
  /* mask and key length: row 0 has no visible key (O = 0, LSE = −inf) */
  {
    const float q[2] = {0, 0}, k[3] = {0, 0, 0}, v[3] = {1, 2, 3};
    const uint8_t mask[6] = {0, 1, 1, 1, 0, 1};
    const int64_t kv_len[1] = {2};
    memset(&hc, 0, sizeof hc);
    hc.name = "mask + kv_len";
    attn_params_init(&hc.p, 1, 1, 1, 2, 3, 1, 1);
    hc.p.mask = mask, hc.p.kv_len = kv_len;
    /* row 0: key 0 masked, key 1 visible, key 2 beyond kv_len; row 1: key 0 only */
    hc.q = q, hc.k = k, hc.v = v, hc.rows = 2, hc.dv = 1;
    hc.o[0] = 2, hc.o[1] = 1, hc.lse[0] = 0, hc.lse[1] = 0;
    run_hand(&hc);
    const uint8_t none[6] = {0, 0, 1, 1, 0, 1};
    hc.name = "empty row";
    hc.p.mask = none;
    hc.o[0] = 0, hc.lse[0] = -INFINITY;
    run_hand(&hc);
  }
  return t_finish("test_ref");
}
