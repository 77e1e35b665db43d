/*
 * test_workspace.c — attn_params.workspace. For every kernel, forward and backward, over cases
 * that take each kind of extra memory (tile scratch, packed K, V-row counts, split-key partials,
 * fp32 copies of narrow or paged inputs, ref's fp64 rows and accumulators, the backward's packed
 * rows and partial dQ): a call given a workspace of exactly the bytes its scratch query returns,
 * filled with NaN bytes first, gives bitwise the result of the same call without one, and takes
 * every block from it (no block falls back to an allocation: the query counts every byte).
 * A workspace that is too small, misaligned or overlapping an output is an error that writes
 * nothing, and one larger than needed is fine.
 */
#include "harness.h"
#include "internal.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* A workspace of n bytes (n is a multiple of 64: the queries sum whole 64-byte blocks), every byte
 * 0xff (a NaN pattern: a kernel that read scratch it did not write would show it). */
static void *workspace(size_t n) {
  CHECKF(n % 64 == 0, "scratch query %zu is not a multiple of 64", n);
  void *w = aligned_alloc(64, n ? n : 64);
  memset(w, 0xff, n);
  return w;
}

static void check_forward(tcase *c, attn_kernel kernel, int threads, const char *label) {
  tresult plain = t_run_gather(c, kernel, threads);
  size_t n = 0;
  CHECKF(attn_forward_scratch_bytes(&c->p, !c->skip_probs, &n) == ATTN_STATUS_OK, "%s: %s", label,
         attn_last_error());
  void *w = workspace(n);
  const long fallbacks = attn__arena_fallbacks();
  c->p.workspace = w, c->p.workspace_bytes = n;
  tresult with = t_run_gather(c, kernel, threads);
  CHECKF(tresult_same(&plain, &with), "%s, %s, %d threads: forward with a workspace differs", label,
         attn_kernel_name(kernel), threads);
  CHECKF(attn__arena_fallbacks() == fallbacks,
         "%s, %s, %d threads: the forward's scratch query (%zu bytes) undercounts", label,
         attn_kernel_name(kernel), threads, n);
  c->p.workspace = NULL, c->p.workspace_bytes = 0;
  free(w);
  tresult_free(&plain), tresult_free(&with);
}

static int grads_same(const tgrads *a, const tgrads *b) {
  return memcmp(a->dq, b->dq, a->nq * 4) == 0 && memcmp(a->dk, b->dk, a->nk * 4) == 0 &&
         memcmp(a->dv, b->dv, a->nv * 4) == 0 && memcmp(a->dbias, b->dbias, a->nb * 4) == 0;
}

static void check_backward(tcase *c, attn_kernel kernel, int threads, const char *label) {
  tgrad g;
  const int with_dbias = c->p.bias != NULL;
  tgrad_make(&g, c, with_dbias, ATTN_KERNEL_REF, c->spec.seed);
  tgrads plain = t_backward_gather(c, &g, kernel, threads);
  size_t n = 0;
  CHECKF(attn_backward_scratch_bytes(&c->p, with_dbias, &n) == ATTN_STATUS_OK, "%s: %s", label,
         attn_last_error());
  void *w = workspace(n);
  const long fallbacks = attn__arena_fallbacks();
  c->p.workspace = w, c->p.workspace_bytes = n;
  tgrads with = t_backward_gather(c, &g, kernel, threads);
  CHECKF(grads_same(&plain, &with), "%s, %s, %d threads: backward with a workspace differs", label,
         attn_kernel_name(kernel), threads);
  CHECKF(attn__arena_fallbacks() == fallbacks,
         "%s, %s, %d threads: the backward's scratch query (%zu bytes) undercounts", label,
         attn_kernel_name(kernel), threads, n);
  c->p.workspace = NULL, c->p.workspace_bytes = 0;
  free(w);
  tgrads_free(&plain), tgrads_free(&with);
  tgrad_free(&g);
}

/* Every selected kernel at 1 and 3 threads, forward and (unless paged) backward. */
static void sweep(tcase *c, const char *label, int backward) {
  for (int k = ATTN_KERNEL_REF; k < ATTN_KERNEL_COUNT_; k++) {
    if (!t_kernel_selected((attn_kernel)k)) continue;
    for (int threads = 1; threads <= 3; threads += 2) {
      check_forward(c, (attn_kernel)k, threads, label);
      if (backward) check_backward(c, (attn_kernel)k, threads, label);
    }
  }
}

static void test_cases(void) {
  /* plain and grouped; causal with lengths and a mask; bias, softcap, ALiBi; Lq > one query block
   * with Dv a multiple of every kernel's column block (K packed once, V read in place and its rows
   * counted); decode and a few-item prefill against ≥ 2048 keys (split keys: partials) */
  struct {
    const char *label;
    tspec s;
    int skip_probs;
  } cases[] = {
      {"plain", tspec_shape(2, 4, 2, 33, 47, 16, 16), 0},
      {"causal", tspec_shape(2, 2, 1, 40, 57, 24, 8), 0},
      {"bias", tspec_shape(1, 3, 3, 19, 29, 8, 12), 0},
      {"prefill", tspec_shape(1, 2, 1, 200, 256, 64, 64), 0},
      {"decode", tspec_shape(2, 8, 2, 1, 2100, 32, 32), 1},
      {"few items", tspec_shape(1, 1, 1, 50, 2100, 16, 16), 1},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    tspec s = cases[i].s;
    s.seed = 700 + i;
    if (i == 1) {
      s.causal = 1, s.align = ATTN_ALIGN_BOTTOM_RIGHT, s.kv_len = 1, s.q_len = 1;
      s.mask = MASK_KEYPAD;
    }
    if (i == 2) s.bias = BIAS_BCAST, s.softcap = 5.0f, s.alibi = 1, s.align = ATTN_ALIGN_TOP_LEFT;
    tcase c;
    tcase_make(&c, &s);
    c.skip_probs = cases[i].skip_probs;
    sweep(&c, cases[i].label, 1);
    tcase_free(&c);
  }
  /* narrow inputs (fp32 copies for ref and the backward), then paged K and V */
  tspec s = tspec_shape(2, 4, 2, 21, 37, 16, 16);
  s.seed = 800, s.causal = 1, s.align = ATTN_ALIGN_BOTTOM_RIGHT, s.kv_len = 1;
  tcase c;
  tcase_make(&c, &s);
  tcase_set_types(&c, ATTN_DTYPE_F8E4M3, ATTN_DTYPE_F16, ATTN_DTYPE_BF16);
  sweep(&c, "narrow", 1);
  tcase_page(&c, 8, 1, 0, s.seed);
  sweep(&c, "paged", 0);
  tcase_free(&c);
}

/* The first 64-byte aligned address at or after x. */
static void *aligned_in(float *x) { return (void *)(((uintptr_t)x + 63) & ~(uintptr_t)63); }

/* Too small, misaligned, overlapping: an error naming the rule, nothing written. Larger: fine. */
static void test_errors(void) {
  tspec s = tspec_shape(2, 2, 2, 30, 41, 16, 16);
  s.seed = 900;
  tcase c;
  tcase_make(&c, &s);
  c.p.kernel = ATTN_KERNEL_AUTO, c.p.threads = 2;
  size_t n = 0;
  CHECK(attn_forward_scratch_bytes(&c.p, 0, &n) == ATTN_STATUS_OK && n > 0);
  unsigned char *w = workspace(n + 4096);
  touts out;
  touts_make(&out, &c, 1, 0);
  struct {
    void *ptr;
    size_t bytes;
    const char *message;
  } bad[] = {
      {w, n - 1, "is less than the"},
      {w, 0, "is less than the"},
      {w + 32, n, "must be 64-byte aligned"},
      {aligned_in(tbuf_f32(&out.o)), 64, "output workspace overlaps output o"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    c.p.workspace = bad[i].ptr, c.p.workspace_bytes = bad[i].bytes;
    const attn_status st = t_run(&c, ATTN_KERNEL_AUTO, 2, &out);
    CHECKF(st == ATTN_STATUS_INVALID_ARGUMENT && strstr(attn_last_error(), bad[i].message),
           "bad workspace %zu: %s: %s", i, attn_status_str(st), attn_last_error());
    CHECK(tbuf_check_output(&out.o, "o", 0) && tbuf_check_output(&out.lse, "lse", 0));
  }
  c.p.workspace = NULL, c.p.workspace_bytes = 0;
  /* the backward checks the same rules */
  tgrad g;
  tgrad_make(&g, &c, 0, ATTN_KERNEL_REF, s.seed);
  size_t nb = 0;
  CHECK(attn_backward_scratch_bytes(&c.p, 0, &nb) == ATTN_STATUS_OK && nb > 0);
  unsigned char *wb = workspace(nb);
  c.p.workspace = wb, c.p.workspace_bytes = nb - 64;
  CHECK(t_run_backward(&c, &g, ATTN_KERNEL_AUTO, 2) == ATTN_STATUS_INVALID_ARGUMENT);
  CHECKF(strstr(attn_last_error(), "attn_backward: workspace_bytes") != NULL, "%s",
         attn_last_error());
  CHECK(tbuf_check_output(&g.dq, "dq", 0) && tbuf_check_output(&g.dk, "dk", 0));
  c.p.workspace = aligned_in(tbuf_f32(&g.dk)), c.p.workspace_bytes = 64;
  CHECK(t_run_backward(&c, &g, ATTN_KERNEL_AUTO, 2) == ATTN_STATUS_INVALID_ARGUMENT);
  CHECKF(strstr(attn_last_error(), "workspace overlaps output dk") != NULL, "%s",
         attn_last_error());
  /* a larger workspace than needed */
  c.p.workspace = NULL, c.p.workspace_bytes = 0;
  tresult plain = t_run_gather(&c, ATTN_KERNEL_AUTO, 2);
  c.p.workspace = w, c.p.workspace_bytes = n + 4096;
  tresult with = t_run_gather(&c, ATTN_KERNEL_AUTO, 2);
  CHECK(tresult_same(&plain, &with));
  tresult_free(&plain), tresult_free(&with);
  c.p.workspace = NULL;
  free(w), free(wb);
  tgrad_free(&g);
  touts_free(&out);
  tcase_free(&c);
}

int main(void) {
  t_check_kernel_selection();
  test_cases();
  test_errors();
  return t_finish("test_workspace");
}
