/*
 * test_dtype.c — the narrow input types (fp16, bf16, fp8 E4M3 and E5M2):
 *   1. conversions: attn_to_f32 of all 65 536 fp16 patterns against an independent decoder (ldexp),
 *      bf16 as the upper half of a float; attn_from_f32 round trips every pattern and rounds to
 *      nearest even at, just above and just below every midpoint between neighbours (overflow to
 *      inf at 65 520 for fp16), NaN stays NaN; fp8: all 256 patterns of each format against a
 *      decoder written from the OCP definition, round trips, every midpoint, overflow (E4M3 to
 *      NaN past 464, E5M2 to inf from 61 440), and 200 000 random floats against a brute-force
 *      nearest-even search; the AVX2 and AVX-512 widenings equal the portable one bitwise on
 *      every pattern;
 *   2. every kernel on narrow Q, K, V (eight type mixes) over shapes, layouts, features, decode and
 *      few-item prefill: within the tolerance rule of the oracle on the same values, bitwise equal
 *      to the same call on the values widened to fp32, bitwise equal on 1 and 3 threads, and NaN /
 *      inf stored behind masks and key lengths (as narrow patterns) leaving it bitwise unchanged;
 *   3. the backward on narrow inputs: against the ref backward and bitwise equal to fp32;
 *   4. errors: an unknown type, byte extents and overlaps counted in 2- and 1-byte elements,
 *      scratch.
 * Usage: test_dtype [seed]
 */
#include "harness.h"
#include "internal.h"
#include "kernels/tiled.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static uint64_t seed_base;
static int n_cases;

/* ---- 1. conversions ---- */

/* fp16 bits → value, written from the format's definition. */
static float f16_oracle(uint16_t h) {
  const int e = (h >> 10) & 31, m = h & 1023;
  float v;
  if (e == 31)
    v = m ? NAN : INFINITY;
  else if (e == 0)
    v = ldexpf((float)m, -24);
  else
    v = ldexpf((float)(m + 1024), e - 25);
  return (h & 0x8000) ? -v : v;
}

/* One value of type t (16-bit, or fp8 in the low byte) widened, and one float rounded to t. */
static float widen1(attn_dtype t, uint16_t h) {
  const uint8_t b = (uint8_t)h;
  float f;
  attn_to_f32(t, attn_dtype_size(t) == 1 ? (const void *)&b : (const void *)&h, &f, 1);
  return f;
}

static uint16_t round1(attn_dtype t, float f) {
  uint16_t h = 0;
  uint8_t b = 0;
  attn_from_f32(t, &f, attn_dtype_size(t) == 1 ? (void *)&b : (void *)&h, 1);
  return attn_dtype_size(t) == 1 ? b : h;
}

static void test_conversions(void) {
  int bad_widen = 0, bad_trip = 0, bad_tie = 0;
  for (uint32_t i = 0; i < 65536; i++) {
    const uint16_t h = (uint16_t)i;
    const float f = widen1(ATTN_DTYPE_F16, h), want = f16_oracle(h);
    uint32_t fb, wb;
    memcpy(&fb, &f, 4), memcpy(&wb, &want, 4);
    if (isnan(want) ? !isnan(f) || (fb >> 31) != (uint32_t)(h >> 15) : fb != wb) bad_widen++;
    const float g = widen1(ATTN_DTYPE_BF16, h);
    uint32_t gb;
    memcpy(&gb, &g, 4);
    if (gb != (uint32_t)h << 16) bad_widen++;
    for (int t = ATTN_DTYPE_F16; t <= ATTN_DTYPE_BF16; t++) {
      const float x = t == ATTN_DTYPE_F16 ? f : g;
      const uint16_t back = round1((attn_dtype)t, x);
      if (isnan(x) ? !isnan(widen1((attn_dtype)t, back)) : back != h) bad_trip++;
    }
  }
  CHECKF(bad_widen == 0, "%d 16-bit patterns widen wrongly", bad_widen);
  CHECKF(bad_trip == 0, "%d 16-bit values do not round-trip through fp32", bad_trip);

  /* neighbours a < b (positive, finite): the midpoint goes to the one with an even pattern, and
   * the floats beside it to the nearer one; the midpoint is exact in fp32 (≤ 12 bits) */
  for (int t = ATTN_DTYPE_F16; t <= ATTN_DTYPE_BF16; t++) {
    const uint16_t top = t == ATTN_DTYPE_F16 ? 0x7c00 : 0x7f80; /* +inf */
    for (uint32_t i = 0; i + 1 < top; i++) {
      const float a = widen1((attn_dtype)t, (uint16_t)i),
                  b = widen1((attn_dtype)t, (uint16_t)(i + 1));
      const float mid = a + (b - a) * 0.5f;
      const uint16_t even = (i & 1) ? (uint16_t)(i + 1) : (uint16_t)i;
      bad_tie += round1((attn_dtype)t, mid) != even;
      bad_tie += round1((attn_dtype)t, nextafterf(mid, INFINITY)) != i + 1;
      bad_tie += round1((attn_dtype)t, nextafterf(mid, -INFINITY)) != i;
      bad_tie += round1((attn_dtype)t, -mid) != (uint16_t)(even | 0x8000);
    }
  }
  CHECKF(bad_tie == 0, "%d roundings to nearest even are wrong", bad_tie);
  CHECK(round1(ATTN_DTYPE_F16, 65504.0f) == 0x7bff);
  CHECK(round1(ATTN_DTYPE_F16, 65519.996f) == 0x7bff); /* below the midpoint to 2^16 */
  CHECK(round1(ATTN_DTYPE_F16, 65520.0f) == 0x7c00);   /* the midpoint: even, i.e. inf */
  CHECK(round1(ATTN_DTYPE_F16, 1e30f) == 0x7c00 && round1(ATTN_DTYPE_F16, -INFINITY) == 0xfc00);
  CHECK(round1(ATTN_DTYPE_BF16, 3.4028235e38f) == 0x7f80); /* FLT_MAX rounds up to inf */
  CHECK(round1(ATTN_DTYPE_F16, 1e-30f) == 0 && round1(ATTN_DTYPE_F16, -1e-30f) == 0x8000);
  CHECK(round1(ATTN_DTYPE_F16, 0x1p-25f) == 0);                   /* half the smallest: even 0 */
  CHECK(round1(ATTN_DTYPE_F16, nextafterf(0x1p-25f, 1.0f)) == 1); /* above it: the smallest */
  CHECK(isnan(widen1(ATTN_DTYPE_F16, round1(ATTN_DTYPE_F16, NAN))));
  CHECK(isnan(widen1(ATTN_DTYPE_BF16, round1(ATTN_DTYPE_BF16, -NAN))));

  float f[2] = {1, 2};
  uint16_t h[2] = {7, 7};
  CHECK(attn_from_f32(ATTN_DTYPE_COUNT_, f, h, 2) == -1 && h[0] == 7);
  CHECK(attn_to_f32((attn_dtype)-1, h, f, 2) == -1 && f[0] == 1);
  CHECK(attn_to_f32(ATTN_DTYPE_F16, NULL, f, 1) == -1 &&
        attn_to_f32(ATTN_DTYPE_F16, NULL, f, 0) == 0);
  CHECK(attn_from_f32(ATTN_DTYPE_F32, f, f + 1, 1) == 0 && f[1] == 1);
  for (int t = 0; t < ATTN_DTYPE_COUNT_; t++)
    CHECK(attn_dtype_from_name(attn_dtype_name((attn_dtype)t)) == (attn_dtype)t);
  CHECK(attn_dtype_from_name("f64") == ATTN_DTYPE_COUNT_ &&
        attn_dtype_from_name(NULL) == ATTN_DTYPE_COUNT_);
  CHECK(strcmp(attn_dtype_name((attn_dtype)9), "unknown") == 0);
  CHECK(attn_dtype_size(ATTN_DTYPE_F32) == 4 && attn_dtype_size(ATTN_DTYPE_BF16) == 2 &&
        attn_dtype_size(ATTN_DTYPE_F8E4M3) == 1 && attn_dtype_size(ATTN_DTYPE_F8E5M2) == 1 &&
        attn_dtype_size(ATTN_DTYPE_COUNT_) == 0 && attn_dtype_size((attn_dtype)-1) == 0);
}

/* fp8 bits → value, written from the OCP 8-bit floating point definition (v1.0): E4M3 with bias 7,
 * no inf, NaN only at S.1111.111; E5M2 with bias 15, inf and NaN as in IEEE 754. */
static double f8_oracle(attn_dtype t, uint8_t b) {
  const int e4 = t == ATTN_DTYPE_F8E4M3;
  const int man = e4 ? 3 : 2, e = (b & 0x7f) >> man, m = b & ((1 << man) - 1);
  const int bias = e4 ? 7 : 15, top = e4 ? 15 : 31;
  double v;
  if (e4 && e == top && m == 7)
    v = NAN;
  else if (!e4 && e == top)
    v = m ? NAN : INFINITY;
  else if (e == 0)
    v = ldexp(m, 1 - bias - man);
  else
    v = ldexp(m + (1 << man), e - bias - man);
  return (b & 0x80) ? -v : v;
}

/* The rounding expected of attn_from_f32 for fp8, by search: the nearest of the positive codes
 * [0, max] (values[c], from f8_oracle) and of the first value past the largest finite one
 * (values[max + 1]; E4M3: 480, which is NaN; E5M2: 65 536, which is inf), ties to the even code;
 * magnitudes beyond that overflow too. */
static uint8_t f8_round_oracle(attn_dtype t, const double *values, float f) {
  const int e4 = t == ATTN_DTYPE_F8E4M3;
  const uint8_t sign = signbit(f) ? 0x80 : 0, max = e4 ? 0x7e : 0x7b, over = e4 ? 0x7f : 0x7c;
  if (isnan(f)) return (uint8_t)(sign | 0x7f);
  const double a = fabs((double)f);
  if (a >= values[max + 1]) return (uint8_t)(sign | over);
  int best = 0;
  double best_d = INFINITY;
  for (int c = 0; c <= max + 1; c++) {
    const double d = fabs(a - values[c]);
    if (d < best_d || (d == best_d && !(c & 1))) best = c, best_d = d;
  }
  return (uint8_t)(sign | (best == max + 1 ? over : best));
}

static void test_conversions_f8(void) {
  int bad_widen = 0, bad_trip = 0, bad_tie = 0, bad_random = 0;
  for (int t = ATTN_DTYPE_F8E4M3; t <= ATTN_DTYPE_F8E5M2; t++) {
    const attn_dtype type = (attn_dtype)t;
    for (int i = 0; i < 256; i++) {
      const float f = widen1(type, (uint8_t)i);
      const double want = f8_oracle(type, (uint8_t)i);
      if (isnan(want) ? !isnan(f) || !signbit(f) != !(i & 0x80)
                      : (double)f != want || !signbit(f) != !(i & 0x80))
        bad_widen++;
      const uint8_t back = round1(type, f);
      if (isnan(f) ? (back & 0x7f) != 0x7f : back != i) bad_trip++;
    }
    /* neighbours a < b up to the largest finite value and the first one past it */
    const int max = t == ATTN_DTYPE_F8E4M3 ? 0x7e : 0x7b;
    for (int i = 0; i <= max; i++) {
      const float a = widen1(type, (uint8_t)i),
                  b = i == max ? (t == ATTN_DTYPE_F8E4M3 ? 480.0f : 65536.0f)
                               : widen1(type, (uint8_t)(i + 1));
      const float mid = a + (b - a) * 0.5f;
      const uint8_t up = i == max ? (t == ATTN_DTYPE_F8E4M3 ? 0x7f : 0x7c) : (uint8_t)(i + 1);
      const uint8_t even = (i & 1) ? up : (uint8_t)i;
      bad_tie += round1(type, mid) != even;
      bad_tie += round1(type, nextafterf(mid, INFINITY)) != up;
      bad_tie += round1(type, nextafterf(mid, -INFINITY)) != i;
      bad_tie += round1(type, -mid) != (uint8_t)(even | 0x80);
    }
    double values[0x80];
    for (int c = 0; c <= max; c++)
      values[c] = f8_oracle(type, (uint8_t)c);
    values[max + 1] = t == ATTN_DTYPE_F8E4M3 ? 480.0 : 65536.0;
    uint64_t r = seed_base * 0x9e3779b97f4a7c15ull + (uint64_t)t;
    for (int n = 0; n < 200000; n++) {
      r = r * 6364136223846793005ull + 1442695040888963407ull;
      const uint32_t bits = (uint32_t)(r >> 32);
      /* exponents 2^-24 .. 2^17 (the formats' range and a little beyond), any fraction and sign */
      const uint32_t e = 103u + (bits >> 8) % 42u;
      const uint32_t u = (bits & 0x80000000u) | e << 23 | ((uint32_t)r & 0x7fffffu);
      float f;
      memcpy(&f, &u, 4);
      bad_random += round1(type, f) != f8_round_oracle(type, values, f);
    }
  }
  CHECKF(bad_widen == 0, "%d fp8 patterns widen wrongly", bad_widen);
  CHECKF(bad_trip == 0, "%d fp8 values do not round-trip through fp32", bad_trip);
  CHECKF(bad_tie == 0, "%d fp8 roundings at midpoints are wrong", bad_tie);
  CHECKF(bad_random == 0, "%d random floats round to the wrong fp8 value", bad_random);
  const attn_dtype e4 = ATTN_DTYPE_F8E4M3, e5 = ATTN_DTYPE_F8E5M2;
  CHECK(round1(e4, 448.0f) == 0x7e && round1(e4, 464.0f) == 0x7e); /* the midpoint: even */
  CHECK(round1(e4, 464.5f) == 0x7f && round1(e4, -1e30f) == 0xff); /* past it: NaN */
  CHECK(round1(e4, INFINITY) == 0x7f && round1(e4, -INFINITY) == 0xff);
  CHECK(round1(e5, 57344.0f) == 0x7b && round1(e5, 61439.996f) == 0x7b);
  CHECK(round1(e5, 61440.0f) == 0x7c && round1(e5, -INFINITY) == 0xfc);
  CHECK(round1(e4, 0x1p-10f) == 0 && round1(e4, nextafterf(0x1p-10f, 1.0f)) == 1);
  CHECK(round1(e5, 0x1p-17f) == 0 && round1(e5, -0x1p-16f) == 0x81);
  CHECK(round1(e4, 1.0f) == 0x38 && round1(e5, 1.0f) == 0x3c);
  CHECK(isnan(widen1(e4, round1(e4, NAN))) && isnan(widen1(e5, round1(e5, -NAN))));
  CHECK(isnan(widen1(e4, 0x7f)) && isnan(widen1(e4, 0xff)) && widen1(e5, 0x7c) == INFINITY);
}

/* The vector widenings (AVX2's 8 lanes, AVX-512's 16) against the portable one on every pattern,
 * as rows of 29 values (vector steps and a tail), with a padded leading dimension. */
static void test_widen_simd(void) {
#if defined(__x86_64__) || defined(__i386__)
  typedef int (*widen_fn)(attn_dtype t, const void *src, int64_t row_stride, int64_t col_stride,
                          int64_t j0, int cols, int64_t n, int64_t ld, float *dst);
  const struct {
    const char *name;
    attn_kernel kernel;
    widen_fn fn;
  } sets[] = {{"AVX2", ATTN_KERNEL_AVX2, attn__widen_rows_avx2},
              {"AVX-512", ATTN_KERNEL_AVX512, attn__ukernel_avx512.widen_rows}};
  enum { N = 29, LD = 32, ROWS = 65536 / N + 1 }; /* ROWS ≥ 256: src and a, b serve fp8 too */
  uint16_t *src = malloc(sizeof(uint16_t) * ROWS * N);
  float *a = malloc(sizeof(float) * ROWS * LD), *b = malloc(sizeof(float) * ROWS * LD);
  for (size_t si = 0; si < sizeof sets / sizeof sets[0]; si++) {
    if (!attn_kernel_supported(sets[si].kernel)) continue;
    const widen_fn widen = sets[si].fn;
    for (int i = 0; i < ROWS * N; i++)
      src[i] = (uint16_t)i;
    for (int t = ATTN_DTYPE_F16; t <= ATTN_DTYPE_BF16; t++) {
      const int fa = widen((attn_dtype)t, src, N, 1, 0, ROWS, N, LD, a);
      const int fb = attn__widen_rows((attn_dtype)t, src, N, 1, 0, ROWS, N, LD, b);
      CHECKF(memcmp(a, b, sizeof(float) * ROWS * LD) == 0 && fa == fb && fa == 0,
             "%s: the %s widening differs from the portable one", attn_dtype_name((attn_dtype)t),
             sets[si].name);
      /* finite rows only (exponent field below all ones): both report finite */
      const uint16_t one = t == ATTN_DTYPE_F16 ? 0x3c00 : 0x3f80;
      uint16_t fin[2 * N];
      for (int i = 0; i < 2 * N; i++)
        fin[i] = (uint16_t)(one + i);
      CHECK(widen((attn_dtype)t, fin, N, 1, 0, 2, N, LD, a) == 1);
      fin[N + 28] = t == ATTN_DTYPE_F16 ? 0x7c00 : 0x7f80; /* inf in the tail */
      CHECK(widen((attn_dtype)t, fin, N, 1, 0, 2, N, LD, a) == 0);
      fin[N + 28] = one, fin[N + 5] = t == ATTN_DTYPE_F16 ? 0xfc00 : 0xff80; /* −inf, a step */
      CHECK(widen((attn_dtype)t, fin, N, 1, 0, 2, N, LD, a) == 0);
    }
    /* fp8: every pattern in every lane of a vector step and in the tail (256 rows of 29) */
    uint8_t *src8 = (uint8_t *)src;
    for (int i = 0; i < 256 * N; i++)
      src8[i] = (uint8_t)(i / N + i * 37);
    for (int t = ATTN_DTYPE_F8E4M3; t <= ATTN_DTYPE_F8E5M2; t++) {
      const int fa = widen((attn_dtype)t, src8, N, 1, 0, 256, N, LD, a);
      const int fb = attn__widen_rows((attn_dtype)t, src8, N, 1, 0, 256, N, LD, b);
      CHECKF(memcmp(a, b, sizeof(float) * 256 * LD) == 0 && fa == fb && fa == 0,
             "%s: the %s widening differs from the portable one", attn_dtype_name((attn_dtype)t),
             sets[si].name);
      uint8_t fin[2 * N];
      for (int i = 0; i < 2 * N; i++)
        fin[i] = (uint8_t)(0x30 + i); /* finite in both formats */
      CHECK(widen((attn_dtype)t, fin, N, 1, 0, 2, N, LD, a) == 1);
      fin[3] = 0xff; /* NaN in a vector step */
      CHECK(widen((attn_dtype)t, fin, N, 1, 0, 2, N, LD, a) == 0);
      fin[3] = 0x30, fin[N + 28] = 0x7f; /* NaN in the tail */
      CHECK(widen((attn_dtype)t, fin, N, 1, 0, 2, N, LD, a) == 0);
    }
  }
  free(src), free(a), free(b);
#endif
}

/* ---- 2. every kernel on narrow inputs ---- */

static const attn_dtype mixes[][3] = {
    {ATTN_DTYPE_F16, ATTN_DTYPE_F16, ATTN_DTYPE_F16},
    {ATTN_DTYPE_F32, ATTN_DTYPE_F16, ATTN_DTYPE_F16},
    {ATTN_DTYPE_F32, ATTN_DTYPE_BF16, ATTN_DTYPE_BF16},
    {ATTN_DTYPE_BF16, ATTN_DTYPE_BF16, ATTN_DTYPE_BF16},
    {ATTN_DTYPE_F16, ATTN_DTYPE_BF16, ATTN_DTYPE_F32},
    {ATTN_DTYPE_F32, ATTN_DTYPE_F32, ATTN_DTYPE_BF16},
    {ATTN_DTYPE_F32, ATTN_DTYPE_F8E4M3, ATTN_DTYPE_F8E4M3},
    {ATTN_DTYPE_F8E5M2, ATTN_DTYPE_F8E5M2, ATTN_DTYPE_F8E4M3},
};
enum { N_MIXES = sizeof mixes / sizeof mixes[0] };

/* Stores inf in K and NaN in V (as the inputs' types) at every key no query of batch b can see:
 * beyond kv_len[b], and where a key-padding mask is 0. */
static int poison_invisible(tcase *c) {
  const attn_params *p = &c->p;
  const int keypad = c->spec.mask == MASK_KEYPAD;
  int n = 0;
  for (int64_t b = 0; b < p->batch; b++)
    for (int64_t j = 0; j < p->len_k; j++) {
      int hidden = p->kv_len && j >= p->kv_len[b];
      if (keypad) hidden |= p->mask[b * p->mask_stride[0] + j * p->mask_stride[3]] == 0;
      if (!hidden) continue;
      n++;
      for (int which = 1; which <= 2; which++) {
        const attn_dtype t = which == 1 ? p->k_dtype : p->v_dtype;
        const tbuf *f = which == 1 ? &c->k : &c->v, *h = which == 1 ? &c->k_narrow : &c->v_narrow;
        const float bad = which == 1 ? INFINITY : NAN; /* E4M3 has no inf: NaN there */
        unsigned char bad_bytes[4];
        attn_from_f32(t, &bad, bad_bytes, 1);
        const size_t esz = attn_dtype_size(t);
        for (int64_t hk = 0; hk < p->heads_kv; hk++)
          for (int64_t d = 0; d < f->size[3]; d++) {
            const int64_t off = tbuf_index(f, b, hk, j, d);
            if (t == ATTN_DTYPE_F32)
              tbuf_f32(f)[off] = bad;
            else
              memcpy(h->base + (size_t)off * esz, bad_bytes, esz);
          }
      }
    }
  return n;
}

/* The case in type mix m on every kernel: the tolerance rule against the oracle (on the same
 * values), bitwise equal to fp32 and across thread counts, and unchanged by poison behind masks. */
static void check_mix(tspec s, int m, int want_probs) {
  tcase c, poisoned;
  tspec_min_rows(&s, 64);
  s.seed = seed_base * 1000003u + (uint64_t)n_cases++;
  tcase_make(&c, &s);
  tcase_make(&poisoned, &s);
  tcase_set_types(&c, mixes[m][0], mixes[m][1], mixes[m][2]);
  tcase_set_types(&poisoned, mixes[m][0], mixes[m][1], mixes[m][2]);
  c.skip_probs = poisoned.skip_probs = !want_probs; /* the bitwise checks on the split paths too */
  const int n_poisoned = poison_invisible(&poisoned);
  char label[512];
  tcase_label(&c, label, sizeof label);
  for (int k = 1; k < ATTN_KERNEL_COUNT_; k++) {
    const attn_kernel kernel = (attn_kernel)k;
    if (!t_kernel_selected(kernel)) continue;
    t_check_case(&c, kernel, 2, want_probs);
    /* ref runs single-threaded on fp32 copies that api.c makes of 16-bit inputs: the bitwise
     * checks below would compare that copy with itself (and cost a third of the test's time) */
    if (kernel == ATTN_KERNEL_REF) continue;
    tresult typed = t_run_gather(&c, kernel, 2), three = t_run_gather(&c, kernel, 3);
    c.p.q_dtype = c.p.k_dtype = c.p.v_dtype = ATTN_DTYPE_F32;
    tresult wide = t_run_gather(&c, kernel, 2);
    tcase_set_types(&c, mixes[m][0], mixes[m][1], mixes[m][2]);
    CHECKF(tresult_same(&typed, &wide),
           "%s, q/k/v %s/%s/%s: not bitwise the fp32 result\n  case: %s", attn_kernel_name(kernel),
           attn_dtype_name(mixes[m][0]), attn_dtype_name(mixes[m][1]), attn_dtype_name(mixes[m][2]),
           label);
    CHECKF(tresult_same(&typed, &three), "%s: 2 and 3 threads differ\n  case: %s",
           attn_kernel_name(kernel), label);
    if (n_poisoned) {
      tresult pr = t_run_gather(&poisoned, kernel, 2);
      CHECKF(tresult_same(&typed, &pr), "%s: inf/NaN behind masks changed the result\n  case: %s",
             attn_kernel_name(kernel), label);
      tresult_free(&pr);
    }
    tresult_free(&typed), tresult_free(&three), tresult_free(&wide);
  }
  tcase_free(&c);
  tcase_free(&poisoned);
}

static void sweep_forward(void) {
  static const int64_t shapes[][7] = {{1, 1, 1, 1, 1, 1, 1},      {2, 2, 1, 63, 129, 17, 17},
                                      {1, 4, 2, 130, 67, 64, 64}, {1, 2, 2, 200, 300, 128, 128},
                                      {1, 3, 1, 97, 97, 80, 48},  {1, 1, 1, 33, 45, 256, 7},
                                      {1, 2, 1, 5, 0, 8, 8},      {1, 2, 2, 7, 9, 16, 0}};
  int n = 0;
  for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
    for (int layout = 0; layout < N_LAYOUTS; layout++, n++) {
      const int64_t *x = shapes[i];
      tspec s = tspec_shape(x[0], x[1], x[2], x[3], x[4], x[5], x[6]);
      s.layout = layout;
      s.causal = n % 3 == 1;
      s.align = ATTN_ALIGN_BOTTOM_RIGHT;
      check_mix(s, n % N_MIXES, x[3] * x[4] <= 20000);
    }
  for (int f = 0; f < t_n_features; f++)
    for (int shape = 0; shape < 2; shape++, n++) {
      tspec s = shape ? tspec_shape(2, 4, 2, 9, 41, 64, 40) : tspec_shape(1, 2, 1, 37, 37, 32, 32);
      s.align = shape ? ATTN_ALIGN_BOTTOM_RIGHT : ATTN_ALIGN_TOP_LEFT;
      s.layout = n % N_LAYOUTS;
      t_features[f].fn(&s);
      check_mix(s, n % N_MIXES, 1);
    }
}

/* Decode (the widened tiles through the direct forms) and few-item prefill (split keys). */
static void sweep_long_keys(void) {
  static const int64_t lq[] = {1, 4, 16}, lk[] = {1024, 1537};
  static const int64_t heads[][2] = {{8, 2}, {8, 1}, {4, 4}};
  int n = 0;
  for (int a = 0; a < 3; a++)
    for (int b = 0; b < 2; b++, n++) {
      tspec s = tspec_shape(2, heads[n % 3][0], heads[n % 3][1], lq[a], lk[b], n % 2 ? 128 : 83,
                            n % 3 ? 64 : 75); /* 83, 75: vector tails of K and V rows */
      s.causal = 1, s.align = ATTN_ALIGN_BOTTOM_RIGHT, s.kv_len = 1;
      s.layout = n % N_LAYOUTS;
      check_mix(s, n % N_MIXES, 0);
      s.causal = 0, s.kv_len = n % 2, s.mask = MASK_KEYPAD, s.bias = 1 + n % 3;
      s.softcap = n % 2 ? 0.0f : 5.0f;
      check_mix(s, (n + 3) % N_MIXES, 0);
    }
  tspec s = tspec_shape(1, 1, 1, 97, 2053, 64, 64); /* few items: keys split in chunks */
  s.causal = 1, s.align = ATTN_ALIGN_BOTTOM_RIGHT;
  for (int m = 0; m < N_MIXES; m++)
    check_mix(s, m, 0);
}

/* ---- 3. the backward ---- */

static void sweep_backward(void) {
  int n = 0;
  for (int f = 0; f < t_n_features; f++, n++) {
    tspec s = tspec_shape(2, 4, 2, 21, 37, 24, 16);
    s.align = ATTN_ALIGN_BOTTOM_RIGHT;
    s.layout = n % N_LAYOUTS;
    s.seed = seed_base * 7919u + (uint64_t)n;
    t_features[f].fn(&s);
    tcase c;
    tcase_make(&c, &s);
    const int m = n % N_MIXES;
    tcase_set_types(&c, mixes[m][0], mixes[m][1], mixes[m][2]);
    for (int k = 1; k < ATTN_KERNEL_COUNT_; k++) {
      const attn_kernel kernel = (attn_kernel)k;
      if (!t_kernel_selected(kernel)) continue;
      t_check_backward(&c, kernel, 2, 1);
      tgrad g;
      tgrad_make(&g, &c, 1, kernel, s.seed);
      tgrads typed = t_backward_gather(&c, &g, kernel, 2);
      c.p.q_dtype = c.p.k_dtype = c.p.v_dtype = ATTN_DTYPE_F32;
      tgrads wide = t_backward_gather(&c, &g, kernel, 2);
      tcase_set_types(&c, mixes[m][0], mixes[m][1], mixes[m][2]);
      CHECKF(tgrads_same(&typed, &wide), "%s backward, %s %s/%s/%s: not bitwise the fp32 result",
             attn_kernel_name(kernel), t_features[f].name, attn_dtype_name(mixes[m][0]),
             attn_dtype_name(mixes[m][1]), attn_dtype_name(mixes[m][2]));
      tgrads_free(&typed), tgrads_free(&wide);
      tgrad_free(&g);
    }
    tcase_free(&c);
  }
}

/* ---- 4. errors ---- */

static void test_errors(void) {
  enum { L = 6, D = 4 };
  /* K, V as fp16, then room for an fp32 O [L, D] (2·L·D halves) right after them */
  _Alignas(16) uint16_t kv[4 * L * D];
  float q[L * D], o[L * D + 8], lse[L];
  for (int i = 0; i < 4 * L * D; i++)
    kv[i] = 0x3c00; /* 1.0 in fp16 */
  for (int i = 0; i < L * D; i++)
    q[i] = 0.25f * (float)(i % 5);
  attn_params p;
  attn_params_init(&p, 1, 1, 1, L, L, D, D);
  p.k_dtype = p.v_dtype = ATTN_DTYPE_F16;
  memset(o, 0x5a, sizeof o);
  unsigned char before[sizeof o];
  memcpy(before, o, sizeof o);

  p.v_dtype = ATTN_DTYPE_COUNT_;
  CHECK(attn_forward(&p, q, kv, kv + L * D, o, lse, NULL) == ATTN_STATUS_INVALID_ARGUMENT);
  CHECKF(strstr(attn_last_error(), "v_dtype (5)") != NULL, "message: %s", attn_last_error());
  CHECK(memcmp(o, before, sizeof o) == 0);
  p.v_dtype = ATTN_DTYPE_F16;
  p.q_dtype = (attn_dtype)-2;
  CHECK(attn_backward(&p, q, kv, kv, o, lse, o, o, o, o, NULL) == ATTN_STATUS_INVALID_ARGUMENT);
  CHECKF(strstr(attn_last_error(), "q_dtype (-2)") != NULL, "message: %s", attn_last_error());
  p.q_dtype = ATTN_DTYPE_F32;

  /* byte extents in 2-byte elements: O may start right after V's L·D halves, not one before */
  float *after = (float *)(void *)(kv + 2 * L * D);
  CHECKF(attn_forward(&p, q, kv, kv + L * D, after, NULL, NULL) == ATTN_STATUS_OK, "%s",
         attn_last_error());
  CHECK(after[0] == 1.0f); /* every V value is 1, so every output is 1 */
  CHECK(attn_forward(&p, q, kv, kv + L * D, (float *)(void *)(kv + 2 * L * D - 2), NULL, NULL) ==
        ATTN_STATUS_INVALID_ARGUMENT);
  CHECKF(strstr(attn_last_error(), "overlaps input v") != NULL, "message: %s", attn_last_error());

  /* in 1-byte elements: fp8 K, V of L·D bytes each; O may start right after V, not a float before
   * (1.0 is 0x38 in E4M3) */
  _Alignas(16) uint8_t kv8[2 * L * D + sizeof(float) * L * D];
  memset(kv8, 0x38, 2 * L * D);
  p.k_dtype = p.v_dtype = ATTN_DTYPE_F8E4M3;
  float *after8 = (float *)(void *)(kv8 + 2 * L * D);
  CHECKF(attn_forward(&p, q, kv8, kv8 + L * D, after8, NULL, NULL) == ATTN_STATUS_OK, "%s",
         attn_last_error());
  CHECK(after8[0] == 1.0f && after8[L * D - 1] == 1.0f);
  CHECK(attn_forward(&p, q, kv8, kv8 + L * D, (float *)(void *)(kv8 + 2 * L * D - 4), NULL, NULL) ==
        ATTN_STATUS_INVALID_ARGUMENT);
  CHECKF(strstr(attn_last_error(), "overlaps input v") != NULL, "message: %s", attn_last_error());
  p.k_dtype = p.v_dtype = ATTN_DTYPE_F16;

  /* ref reads fp32 copies of 16-bit inputs: its scratch grows by exactly their size (each a block
   * of whole 64-byte lines) */
  const size_t copy = (L * D * sizeof(float) + 63) / 64 * 64;
  size_t b32 = 0, b16 = 0;
  p.kernel = ATTN_KERNEL_REF;
  p.k_dtype = p.v_dtype = ATTN_DTYPE_F32;
  CHECK(attn_forward_scratch_bytes(&p, 0, &b32) == ATTN_STATUS_OK);
  p.k_dtype = p.v_dtype = ATTN_DTYPE_BF16;
  CHECK(attn_forward_scratch_bytes(&p, 0, &b16) == ATTN_STATUS_OK);
  CHECKF(b16 == b32 + 2 * copy, "ref scratch %zu vs %zu", b16, b32);
  p.k_dtype = p.v_dtype = ATTN_DTYPE_F32;
  CHECK(attn_backward_scratch_bytes(&p, 0, &b32) == ATTN_STATUS_OK);
  p.q_dtype = ATTN_DTYPE_F16;
  CHECK(attn_backward_scratch_bytes(&p, 0, &b16) == ATTN_STATUS_OK);
  CHECKF(b16 == b32 + copy, "backward scratch %zu vs %zu", b16, b32);
  p.q_dtype = ATTN_DTYPE_F8E5M2;
  CHECK(attn_backward_scratch_bytes(&p, 0, &b16) == ATTN_STATUS_OK);
  CHECKF(b16 == b32 + copy, "backward scratch (fp8) %zu vs %zu", b16, b32);
}

int main(int argc, char **argv) {
  seed_base = argc > 1 ? strtoull(argv[1], NULL, 10) : 0;
  printf("test_dtype: seed %llu\n", (unsigned long long)seed_base);
  t_check_kernel_selection();
  test_conversions();
  test_conversions_f8();
  test_widen_simd();
  test_errors();
  sweep_forward();
  sweep_long_keys();
  sweep_backward();
  printf("  %d forward cases\n", n_cases);
  return t_finish("test_dtype");
}
