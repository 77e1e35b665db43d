/*
 * test_simd.c — the SIMD building blocks on their own: the AVX2 exp2 against double-precision
 * exp2 over [−126, 0] (the documented bound, 1.7e-7 relative, from Cephes exp2f.c, checked with a
 * margin for the FMA evaluation), exact 1 at 0, exact 0 for −inf and below 2^−126.
 */
#include "harness.h"
#include "internal.h"

#include <math.h>
#include <stdlib.h>

#if defined(__x86_64__) || defined(__i386__)
void attn__exp2_avx2(const float *t, float *y, int64_t n);
#define EXP2_BOUND 1.7e-7 /* relative: the Cephes exp2f bound (measured here: 7.9e-8) */

static void test_exp2_avx2(void) {
  if (!attn__cpu_get()->avx2_fma) {
    printf("  exp2 avx2: SKIP (no AVX2/FMA)\n");
    return;
  }
  enum { N = 2000000 };
  float *t = malloc(sizeof(float) * N), *y = malloc(sizeof(float) * N);
  for (int i = 0; i < N; i++)
    t[i] = -126.0f * (float)i / (float)(N - 1); /* dense, both ends */
  attn__exp2_avx2(t, y, N);
  double worst = 0;
  int worst_i = 0;
  for (int i = 0; i < N; i++) {
    const double want = exp2((double)t[i]), rel = fabs((double)y[i] - want) / want;
    if (rel > worst) worst = rel, worst_i = i;
  }
  printf("  exp2 avx2: max relative error %.3g at t = %.7g over [-126, 0]\n", worst,
         (double)t[worst_i]);
  CHECKF(worst <= EXP2_BOUND, "exp2 relative error %.3g exceeds %.3g", worst, EXP2_BOUND);
  const float special[4] = {0.0f, -INFINITY, -126.5f, -1000.0f};
  float out[4];
  attn__exp2_avx2(special, out, 4);
  CHECK(out[0] == 1.0f);
  CHECK(out[1] == 0.0f && !signbit(out[1]));
  CHECK(out[2] == 0.0f && out[3] == 0.0f);
  free(t), free(y);
}
#endif

int main(void) {
#if defined(__x86_64__) || defined(__i386__)
  test_exp2_avx2();
#endif
  return t_finish("test_simd");
}
