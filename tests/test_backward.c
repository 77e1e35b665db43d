/*
 * test_backward.c — attn_backward:
 *   1. the ref kernel's gradients against central finite differences of the fp64 forward oracle,
 *      for dQ, dK, dV and dBias (full and broadcast), over every feature;
 *   2. every kernel against ref under the tolerance rule: the forward's shape sweep plus
 *      Lq, Lk ∈ {1, 2, 5, 17}, every feature alone, every pair, all at once, both alignments, all
 *      layouts (non-contiguous dO and gradients), GQA, Dv ≠ D, Lq = 0, Lk = 0, Dv = 0;
 *   3. determinism: 50 repeats and 1, 2, 3, 8 threads bitwise equal;
 *   4. rules: NaN/inf behind every mask kind never reaches a gradient (bitwise as clean data);
 *   5. errors: each invalid call returns its status, names the parameter and writes nothing.
 * Usage: test_backward [seed] [threads]   (threads: only 3 and 4, for the TSan build)
 */
#include "harness.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static uint64_t seed_base;
static int n_cases;

/* ---- 1. ref against finite differences ---- */

/* L = Σ W∘O over the packed O, evaluated by the fp64 oracle. */
static double loss(const tcase *c, const float *w, double *o) {
  oracle_forward(&c->p, tbuf_f32(&c->q), tbuf_f32(&c->k), tbuf_f32(&c->v), o, NULL, NULL);
  const size_t n = (size_t)(c->spec.B * c->spec.Hq * c->spec.Lq * c->spec.Dv);
  double l = 0;
  for (size_t i = 0; i < n; i++)
    l += w[i] * o[i];
  return l;
}

/* Rounds every element to a multiple of 2^-12 so that x ± 2^-10 is exact in fp32. */
static void quantize(tbuf *t) {
  float *b = tbuf_f32(t);
  for (int64_t i0 = 0; i0 < t->size[0]; i0++)
    for (int64_t i1 = 0; i1 < t->size[1]; i1++)
      for (int64_t i2 = 0; i2 < t->size[2]; i2++)
        for (int64_t i3 = 0; i3 < t->size[3]; i3++) {
          float *x = &b[tbuf_index(t, i0, i1, i2, i3)];
          if (isfinite(*x)) *x = roundf(*x * 4096.0f) / 4096.0f;
        }
}

/* Compares analytic gradient g (packed, index order over t) with central differences. */
static int fd_check(tcase *c, tbuf *t, const float *g, const float *w, double *o,
                    const char *what) {
  const double eps = 0x1p-10;
  float *b = tbuf_f32(t);
  size_t n = 0;
  double worst = 0;
  int ok = 1;
  for (int64_t i0 = 0; i0 < t->size[0]; i0++)
    for (int64_t i1 = 0; i1 < t->size[1]; i1++)
      for (int64_t i2 = 0; i2 < t->size[2]; i2++)
        for (int64_t i3 = 0; i3 < t->size[3]; i3++, n++) {
          float *x = &b[tbuf_index(t, i0, i1, i2, i3)];
          const float x0 = *x;
          double fd = 0;
          if (isfinite(x0)) {
            *x = x0 + (float)eps;
            const double lp = loss(c, w, o);
            *x = x0 - (float)eps;
            const double lm = loss(c, w, o);
            *x = x0;
            fd = (lp - lm) / (2 * eps);
          }
          const double err = fabs(fd - g[n]), tol = 2e-4 * (1 + fabs(fd));
          if (err / tol > worst) worst = err / tol;
          if (err > tol && ok) {
            char label[512];
            fprintf(stderr, "  %s[%zu]: ref backward %.9g, finite difference %.9g\n  case: %s\n",
                    what, n, (double)g[n], fd, tcase_label(c, label, sizeof label));
            ok = 0;
          }
        }
  return ok;
}

static void check_ref_fd(tspec s) {
  s.seed = seed_base * 1000003u + (uint64_t)n_cases++;
  tcase c;
  tcase_make(&c, &s);
  quantize(&c.q), quantize(&c.k), quantize(&c.v);
  if (c.p.bias) quantize(&c.bias);
  tgrad g;
  tgrad_make(&g, &c, 1, ATTN_KERNEL_REF, s.seed);
  tgrads r = t_backward_gather(&c, &g, ATTN_KERNEL_REF, 1);
  float *w = malloc(sizeof(float) * (size_t)tbuf_count(&g.dout) + 1);
  double *o = malloc(sizeof(double) * (size_t)tbuf_count(&g.dout) + 1);
  tbuf_gather(&g.dout, w);
  int ok = fd_check(&c, &c.q, r.dq, w, o, "dQ") & fd_check(&c, &c.k, r.dk, w, o, "dK") &
           fd_check(&c, &c.v, r.dv, w, o, "dV");
  if (c.p.bias) { /* the bias tensor holds the broadcast shape, so this checks the reduction */
    tbuf bias_view = c.bias;
    ok &= fd_check(&c, &bias_view, r.dbias, w, o, "dBias");
  }
  if (c.p.sinks) { /* attn_backward_sinks against central differences in each sink */
    float ds[64];
    CHECKF(attn_backward_sinks(&c.p, tbuf_f32(&g.o), tbuf_f32(&g.lse), tbuf_f32(&g.dout), ds) ==
               ATTN_STATUS_OK,
           "attn_backward_sinks: %s", attn_last_error());
    for (int64_t h = 0; h < s.Hq && h < 64; h++) {
      const float x0 = c.sinks[h];
      double fd = 0;
      if (x0 != -INFINITY) {
        const double eps = 0x1p-10;
        c.sinks[h] = x0 + (float)eps;
        const double lp = loss(&c, w, o);
        c.sinks[h] = x0 - (float)eps;
        const double lm = loss(&c, w, o);
        c.sinks[h] = x0;
        fd = (lp - lm) / (2 * eps);
      }
      CHECKF(fabs(fd - ds[h]) <= 2e-4 * (1 + fabs(fd)) && (x0 != -INFINITY || ds[h] == 0.0f),
             "dsinks[%lld] = %.9g, finite difference %.9g", (long long)h, (double)ds[h], fd);
    }
  }
  CHECKF(ok, "ref backward equals finite differences of the fp64 forward");
  free(w), free(o);
  tgrads_free(&r);
  tgrad_free(&g);
  tcase_free(&c);
}

static void test_ref_fd(void) {
  tspec base = tspec_shape(2, 2, 1, 5, 6, 3, 4);
  check_ref_fd(base);
  for (int f = 0; f < t_n_features; f++) {
    tspec s = base;
    s.align = ATTN_ALIGN_BOTTOM_RIGHT;
    t_features[f].fn(&s);
    if (s.softcap > 0) s.q_mul = 1.5f; /* keep the third derivative moderate for the difference */
    check_ref_fd(s);
  }
  tspec s = tspec_shape(1, 4, 2, 4, 7, 5, 2); /* GQA, everything at once */
  s.causal = 1, s.align = ATTN_ALIGN_TOP_LEFT, s.window_left = 3, s.mask = MASK_FULL;
  s.bias = BIAS_BCAST, s.softcap = 2.0f, s.alibi = 1, s.kv_len = 1, s.sinks = 1;
  check_ref_fd(s);
}

/* ---- 2. kernels against ref ---- */

static void check_all(const tspec *s, int want_dbias) {
  tspec sp = *s;
  tspec_min_rows(&sp, 32);
  sp.seed = seed_base * 1000003u + (uint64_t)n_cases++;
  tcase c;
  tcase_make(&c, &sp);
  for (int k = ATTN_KERNEL_GENERIC; k < ATTN_KERNEL_COUNT_; k++)
    if (t_kernel_selected((attn_kernel)k)) t_check_backward(&c, (attn_kernel)k, 2, want_dbias);
  tcase_free(&c);
}

static void sweep_shapes(void) {
  static const int64_t dims[] = {1, 3, 8, 17, 32, 64, 80, 128};
  static const int64_t lens[][2] = {{1, 1},     {1, 2},    {2, 5},    {5, 17},  {17, 5},
                                    {17, 17},   {1, 129},  {63, 65},  {64, 64}, {65, 63},
                                    {129, 130}, {200, 77}, {77, 200}, {5, 300}};
  static const int64_t heads[][2] = {{1, 1}, {2, 1}, {3, 1}, {4, 2}, {8, 8}};
  int n = 0;
  for (size_t di = 0; di < sizeof dims / sizeof dims[0]; di++)
    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++, n++) {
      const int64_t D = dims[di], Lq = lens[li][0], Lk = lens[li][1];
      const int64_t *hh = heads[n % 5];
      const int big = D * Lq * Lk > 500000;
      tspec s = tspec_shape(1, big ? 1 : hh[0], big ? 1 : hh[1], Lq, Lk, D, n % 3 ? D : D + 5);
      s.layout = n % N_LAYOUTS;
      s.causal = n % 3 == 1;
      s.align = n % 2 ? ATTN_ALIGN_BOTTOM_RIGHT : ATTN_ALIGN_TOP_LEFT;
      check_all(&s, 1);
    }
}

static void sweep_features(void) {
  int n = 0;
  for (int align = ATTN_ALIGN_TOP_LEFT; align <= ATTN_ALIGN_BOTTOM_RIGHT; align++) {
    for (int f = 0; f < t_n_features; f++, n++) {
      tspec s = tspec_shape(2, 4, 2, n % 2 ? 70 : 37, n % 2 ? 131 : 37, 16 + n % 3, 16);
      s.layout = n % N_LAYOUTS;
      s.align = (attn_align)align;
      t_features[f].fn(&s);
      check_all(&s, 1);
    }
    for (int f = 0; f < t_n_features; f++)
      for (int g = f + 1; g < t_n_features; g++, n++) {
        tspec s = tspec_shape(1, 3, 1, n % 2 ? 23 : 9, n % 2 ? 23 : 41, 8 + n % 5, 7);
        s.layout = n % N_LAYOUTS;
        s.align = (attn_align)align;
        t_features[f].fn(&s);
        t_features[g].fn(&s);
        check_all(&s, 1);
      }
    for (int mk = MASK_FULL; mk < N_MASKS; mk++)
      for (int bk = BIAS_FULL; bk < N_BIASES; bk++, n++) {
        tspec s = tspec_shape(2, 4, 2, 70 + n % 3, 150 - n % 5, 32, 24);
        s.layout = n % N_LAYOUTS;
        s.align = (attn_align)align;
        s.causal = 1, s.window_left = 40, s.window_right = 10, s.kv_len = 1;
        s.mask = mk, s.bias = bk, s.softcap = 5.0f, s.alibi = 1, s.sinks = n % 2;
        check_all(&s, 1);
      }
  }
}

static void sweep_edges(void) {
  const int64_t shapes[][7] = {
      {1, 2, 1, 0, 9, 8, 8},   /* Lq = 0: dK = dV = 0 */
      {2, 2, 2, 9, 0, 8, 8},   /* Lk = 0: dQ = 0 */
      {2, 2, 2, 17, 19, 8, 0}, /* Dv = 0 */
      {1, 2, 1, 33, 65, 40, 24},   {1, 2, 1, 33, 65, 24, 40},
      {1, 8, 1, 300, 300, 64, 64}, /* many slices, multi-query */
  };
  for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
    const int64_t *x = shapes[i];
    tspec s = tspec_shape(x[0], x[1], x[2], x[3], x[4], x[5], x[6]);
    check_all(&s, 0);
    s.causal = 1, s.align = ATTN_ALIGN_BOTTOM_RIGHT, s.bias = BIAS_FULL;
    check_all(&s, 1);
  }
  tspec s = tspec_shape(1, 2, 2, 70, 130, 64, 64); /* large logits, scale 0 and negative */
  s.q_mul = 5.0f, s.k_mul = 3.0f;
  check_all(&s, 0);
  s.q_mul = s.k_mul = 1.0f, s.has_scale = 1, s.scale = 0.0f;
  check_all(&s, 0);
  s.scale = -1.0f;
  check_all(&s, 0);
}

/* ---- 3. determinism ---- */

static void test_determinism(void) {
  tspec s = tspec_shape(1, 2, 1, 300, 333, 64, 48); /* 2 KV heads·slices: shape-chosen split */
  s.causal = 1, s.align = ATTN_ALIGN_BOTTOM_RIGHT, s.bias = BIAS_BCAST, s.layout = LAYOUT_PADDED;
  s.seed = seed_base + 77;
  tcase c;
  tcase_make(&c, &s);
  for (int k = ATTN_KERNEL_GENERIC; k < ATTN_KERNEL_COUNT_; k++) {
    if (!t_kernel_selected((attn_kernel)k)) continue;
    tgrad g;
    tgrad_make(&g, &c, 1, (attn_kernel)k, s.seed);
    tgrads first = t_backward_gather(&c, &g, (attn_kernel)k, 2);
    int same = 1;
    for (int rep = 0; rep < 50; rep++) {
      tgrads again = t_backward_gather(&c, &g, (attn_kernel)k, 2);
      same &= tgrads_same(&first, &again);
      tgrads_free(&again);
    }
    CHECKF(same, "50 repeated backward runs are bitwise equal (%s)", attn_kernel_name(k));
    const int threads[] = {1, 3, 8, 0};
    for (size_t t = 0; t < sizeof threads / sizeof threads[0]; t++) {
      tgrads other = t_backward_gather(&c, &g, (attn_kernel)k, threads[t]);
      CHECKF(tgrads_same(&first, &other), "backward with %d threads equals 2 threads (%s)",
             threads[t], attn_kernel_name(k));
      tgrads_free(&other);
    }
    tgrads_free(&first);
    tgrad_free(&g);
  }
  tcase_free(&c);
}

/* ---- 4. NaN behind masks ---- */

/* Writes NaN or inf into K, V and bias at every pair position no query can see... per kind: keys
 * beyond kv_len (K, V), masked bias entries are −inf already (bias NaN where the mask hides it). */
static void test_nan_behind_masks(void) {
  for (int kind = 0; kind < 3; kind++) {
    tspec s = tspec_shape(3, 2, 1, 70, 90, 16, 16);
    s.align = ATTN_ALIGN_BOTTOM_RIGHT;
    s.seed = seed_base + 500 + (uint64_t)kind;
    if (kind == 0) s.kv_len = 1;                             /* keys past kv_len */
    if (kind == 1) s.mask = MASK_KEYPAD, s.bias = BIAS_FULL; /* masked keys (bias behind mask) */
    if (kind == 2) s.causal = 1, s.window_left = 7;          /* no row sees the last keys... */
    tcase c;
    tcase_make(&c, &s);
    for (int k = 1; k < ATTN_KERNEL_COUNT_; k++) {
      if (!t_kernel_selected((attn_kernel)k)) continue;
      tgrad g;
      tgrad_make(&g, &c, 1, (attn_kernel)k, s.seed);
      tgrads clean = t_backward_gather(&c, &g, (attn_kernel)k, 2);
      /* poison: every (b, j) that no (h, i) sees */
      float *kb = tbuf_f32(&c.k), *vb = tbuf_f32(&c.v), *bb = c.p.bias ? tbuf_f32(&c.bias) : NULL;
      int poisoned = 0;
      for (int64_t b = 0; b < s.B; b++)
        for (int64_t j = 0; j < s.Lk; j++) {
          int seen = 0;
          const int64_t klen = c.p.kv_len ? c.p.kv_len[b] : s.Lk;
          for (int64_t i = 0; i < s.Lq && !seen; i++) {
            const int64_t pos = i + klen - s.Lq;
            int vis = j < klen && !(c.p.causal && j > pos) &&
                      !(c.p.window_left >= 0 && pos - j > c.p.window_left);
            if (vis && c.p.mask)
              vis = c.p.mask[b * c.p.mask_stride[0] + i * c.p.mask_stride[2] +
                             j * c.p.mask_stride[3]] != 0;
            seen |= vis;
          }
          if (seen) continue;
          poisoned++;
          for (int64_t d = 0; d < s.D; d++)
            kb[tbuf_index(&c.k, b, 0, j, d)] = d % 2 ? NAN : INFINITY;
          for (int64_t d = 0; d < s.Dv; d++)
            vb[tbuf_index(&c.v, b, 0, j, d)] = d % 2 ? -INFINITY : NAN;
          if (bb)
            for (int64_t h = 0; h < s.Hq; h++)
              for (int64_t i = 0; i < s.Lq; i++)
                bb[tbuf_index(&c.bias, b, h, i, j)] = NAN;
        }
      CHECKF(poisoned > 0, "the NaN test poisons something (kind %d)", kind);
      tgrads dirty = t_backward_gather(&c, &g, (attn_kernel)k, 2);
      CHECKF(tgrads_same(&clean, &dirty),
             "NaN/inf in K, V and bias behind masks leaves every gradient bitwise unchanged (%s, "
             "kind %d)",
             attn_kernel_name(k), kind);
      tgrads_free(&clean);
      tgrads_free(&dirty);
      tgrad_free(&g);
      tcase_free(&c);
      tcase_make(&c, &s); /* clean inputs for the next kernel */
    }
    tcase_free(&c);
  }
}

/* ---- 5. errors ---- */

static void expect_error(tcase *c, tgrad *g, attn_status want, const char *word, float *dq,
                         const float *lse, float *dbias) {
  const size_t nq = g->dq.extent_bytes + 2 * T_GUARD_BYTES;
  unsigned char *snap = malloc(nq);
  memcpy(snap, g->dq.alloc, nq);
  attn_status st =
      attn_backward(&c->p, tbuf_f32(&c->q), tbuf_f32(&c->k), tbuf_f32(&c->v), tbuf_f32(&g->o), lse,
                    tbuf_f32(&g->dout), dq, tbuf_f32(&g->dk), tbuf_f32(&g->dv), dbias);
  CHECKF(st == want, "backward error status %s, want %s (%s)", attn_status_str(st),
         attn_status_str(want), attn_last_error());
  CHECKF(strstr(attn_last_error(), word) != NULL, "message \"%s\" names %s", attn_last_error(),
         word);
  CHECKF(strstr(attn_last_error(), "attn_backward") != NULL, "message names attn_backward");
  CHECKF(tbuf_same_bytes(&g->dq, snap), "nothing written on error (%s)", word);
  free(snap);
}

static void test_errors(void) {
  tspec s = tspec_shape(1, 2, 1, 9, 11, 8, 8);
  s.seed = 3;
  tcase c;
  tcase_make(&c, &s);
  tgrad g;
  tgrad_make(&g, &c, 0, ATTN_KERNEL_AUTO, 3);
  float *dq = tbuf_f32(&g.dq), *lse = tbuf_f32(&g.lse);
  float fake_dbias[4];
  expect_error(&c, &g, ATTN_STATUS_INVALID_ARGUMENT, "lse", dq, NULL, NULL);
  expect_error(&c, &g, ATTN_STATUS_INVALID_ARGUMENT, "dbias", dq, lse, fake_dbias);
  expect_error(&c, &g, ATTN_STATUS_INVALID_ARGUMENT, "dq", NULL, lse, NULL);
  expect_error(&c, &g, ATTN_STATUS_INVALID_ARGUMENT, "overlaps", (float *)tbuf_f32(&c.q), lse,
               NULL);
  c.p.dq_stride[2] = -c.p.dq_stride[2];
  expect_error(&c, &g, ATTN_STATUS_INVALID_ARGUMENT, "dq_stride", dq, lse, NULL);
  c.p.dq_stride[2] = -c.p.dq_stride[2];
  c.p.dk_stride[3] = 0;
  expect_error(&c, &g, ATTN_STATUS_INVALID_ARGUMENT, "dk_stride", dq, lse, NULL);
  attn_strides_packed(c.p.dk_stride, s.Hkv, s.Lk, s.D);
  c.p.heads_kv = 3;
  expect_error(&c, &g, ATTN_STATUS_INVALID_ARGUMENT, "heads_kv", dq, lse, NULL);
  c.p.heads_kv = 1;
  c.p.softcap = -1;
  expect_error(&c, &g, ATTN_STATUS_INVALID_ARGUMENT, "softcap", dq, lse, NULL);
  c.p.softcap = 0;
  c.p.kernel = (attn_kernel)99;
  expect_error(&c, &g, ATTN_STATUS_INVALID_ARGUMENT, "kernel", dq, lse, NULL);
  c.p.kernel = ATTN_KERNEL_AUTO;
  size_t bytes = 0;
  CHECK(attn_backward_scratch_bytes(&c.p, 0, &bytes) == ATTN_STATUS_OK && bytes > 0);
  CHECK(attn_backward_scratch_bytes(&c.p, 1, &bytes) == ATTN_STATUS_INVALID_ARGUMENT);
  CHECK(attn_backward_scratch_bytes(&c.p, 0, NULL) == ATTN_STATUS_INVALID_ARGUMENT);
  tgrad_free(&g);
  tcase_free(&c);
}

int main(int argc, char **argv) {
  seed_base = argc > 1 ? strtoull(argv[1], NULL, 10) : 0;
  printf("test_backward: seed %llu\n", (unsigned long long)seed_base);
  t_check_kernel_selection();
  if (argc > 2 && strcmp(argv[2], "threads") == 0) { /* the part worth running under TSan */
    test_determinism();
    test_nan_behind_masks();
    return t_finish("test_backward threads");
  }
  test_errors();
  test_ref_fd();
  sweep_edges();
  test_nan_behind_masks();
  test_determinism();
  sweep_shapes();
  sweep_features();
  printf("  %d cases\n", n_cases);
  return t_finish("test_backward");
}
