/*
 * test_simd.c — the SIMD building blocks on their own: the AVX2 and AVX-512 exp2 against
 * double-precision exp2 over [−125.5, 0] (the documented bound, 1.7e-7 relative, from Cephes
 * exp2f.c, checked with a margin for the FMA evaluation), exact 1 at 0, exact +0 for −inf and below
 * t = −125.5 (never a subnormal), NaN for NaN.
 */
#include "harness.h"
#include "internal.h"

#include <math.h>
#include <stdlib.h>

#if defined(__x86_64__) || defined(__i386__)
void attn__exp2_avx2(const float *t, float *y, int64_t n);
void attn__exp2_avx512(const float *t, float *y, int64_t n);
#define EXP2_BOUND 1.7e-7 /* relative: the Cephes exp2f bound (measured here: 7.9e-8) */

static void test_exp2(const char *name, void (*fn)(const float *, float *, int64_t)) {
  enum { N = 2000000 };
  float *t = malloc(sizeof(float) * N), *y = malloc(sizeof(float) * N);
  for (int i = 0; i < N; i++)
    t[i] = -125.5f * (float)i / (float)(N - 1); /* dense, both ends */
  fn(t, y, N);
  double worst = 0;
  int worst_i = 0;
  for (int i = 0; i < N; i++) {
    const double want = exp2((double)t[i]), rel = fabs((double)y[i] - want) / want;
    if (rel > worst) worst = rel, worst_i = i;
  }
  printf("  exp2 %s: max relative error %.3g at t = %.7g over [-125.5, 0]\n", name, worst,
         (double)t[worst_i]);
  CHECKF(worst <= EXP2_BOUND, "exp2 %s: relative error %.3g exceeds %.3g", name, worst, EXP2_BOUND);
  const float special[8] = {0.0f, -INFINITY, -125.501f, -125.51f, -126.0f, -126.5f, -1000.0f, NAN};
  float out[8];
  fn(special, out, 8);
  CHECK(out[0] == 1.0f);
  for (int i = 1; i < 7; i++)
    CHECKF(out[i] == 0.0f && !signbit(out[i]), "exp2 %s(%g) = %g, want +0", name,
           (double)special[i], (double)out[i]);
  CHECK(isnan(out[7]));
  const float edge = -125.5f; /* the smallest results: normal, within the bound */
  float y_edge;
  fn(&edge, &y_edge, 1);
  CHECK(isnormal(y_edge) &&
        fabs((double)y_edge - exp2((double)edge)) <= EXP2_BOUND * exp2((double)edge));
  free(t), free(y);
}
#endif

/* The backward's exp (bwd_tiled_body.h), each build: relative error below 2e-7 on [−86.98, 88]
 * against double exp, exact 1 at 0, +0 from −87 down and for −inf, NaN for NaN. */
void attn__bwd_exp__generic(const float *x, float *y, int64_t n);
#if defined(__x86_64__) || defined(__i386__)
void attn__bwd_exp__avx2(const float *x, float *y, int64_t n);
void attn__bwd_exp__avx512(const float *x, float *y, int64_t n);
#endif
static void test_bwd_exp(const char *name, void (*fn)(const float *, float *, int64_t)) {
  enum { N = 1000003 }; /* odd: the scalar tail runs too */
  float *x = malloc(sizeof(float) * N), *y = malloc(sizeof(float) * N);
  for (int i = 0; i < N; i++)
    x[i] = fminf(-86.98f + (88.0f + 86.98f) * (float)i / (float)(N - 1), 88.0f);
  fn(x, y, N);
  double worst = 0;
  int worst_i = 0;
  for (int i = 0; i < N; i++) {
    const double want = exp((double)x[i]), rel = fabs((double)y[i] - want) / want;
    if (rel > worst) worst = rel, worst_i = i;
  }
  printf("  exp %s: max relative error %.3g at x = %.7g over [-86.98, 88]\n", name, worst,
         (double)x[worst_i]);
  CHECKF(worst < 2e-7, "exp %s: relative error %.3g exceeds 2e-7", name, worst);
  const float special[6] = {0.0f, -INFINITY, -87.0f, -100.0f, -1e30f, NAN};
  float out[6];
  fn(special, out, 6);
  CHECKF(out[0] == 1.0f, "exp %s(0) = %.9g", name, (double)out[0]);
  for (int i = 1; i < 5; i++)
    CHECKF(out[i] == 0.0f && !signbit(out[i]), "exp %s(%g) = %g, want +0", name, (double)special[i],
           (double)out[i]);
  CHECKF(isnan(out[5]), "exp %s(NaN) = %g", name, (double)out[5]);
  free(x), free(y);
}

int main(void) {
  test_bwd_exp("generic", attn__bwd_exp__generic);
#if defined(__x86_64__) || defined(__i386__)
  if (attn__cpu_get()->avx2_fma)
    test_exp2("avx2", attn__exp2_avx2);
  else
    printf("  exp2 avx2: SKIP (no AVX2/FMA)\n");
  if (attn__cpu_get()->avx512) {
    test_exp2("avx512", attn__exp2_avx512);
    test_bwd_exp("avx512", attn__bwd_exp__avx512);
  } else {
    printf("  exp2 avx512, exp avx512: SKIP (no AVX-512 F/BW)\n");
  }
  if (attn__cpu_get()->avx2_fma)
    test_bwd_exp("avx2", attn__bwd_exp__avx2);
  else
    printf("  exp avx2: SKIP (no AVX2/FMA)\n");
#endif
  return t_finish("test_simd");
}
