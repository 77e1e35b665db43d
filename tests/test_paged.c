/*
 * test_paged.c — paged K and V (p.block_table): on every kernel, a paged call gives bitwise the
 * result of the same call on the unpaged tensors, over page sizes around the kernels' tiles and
 * decode chunks (1, 3, 16, 127, 128, 129, 1000), both pool layouts, shuffled pages, padded table
 * rows, fp32, 16-bit and fp8 pools, every feature, decode and split-key prefill, and P; NaN in
 * spare pages, in the slots past each key length and out-of-range table entries past it change
 * nothing; 1, 2 and 3 threads agree; and a table shared by every batch item (block_table_stride =
 * 0) is the unpaged call with K and V broadcast over the batch. Then the errors.
 *
 * The tolerance against the fp64 oracle is checked on the paged runs too (t_check_case reads the
 * unpaged tensors for the oracle), so the paged path is held to the contract directly, not only
 * to the unpaged kernels.
 */
#include "harness.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static uint64_t seed_base;
static int n_cases;

static const attn_dtype mixes[][3] = {
    {ATTN_DTYPE_F32, ATTN_DTYPE_F32, ATTN_DTYPE_F32},
    {ATTN_DTYPE_F32, ATTN_DTYPE_BF16, ATTN_DTYPE_BF16},
    {ATTN_DTYPE_F16, ATTN_DTYPE_F16, ATTN_DTYPE_F16},
    {ATTN_DTYPE_F32, ATTN_DTYPE_F16, ATTN_DTYPE_F32},
    {ATTN_DTYPE_F32, ATTN_DTYPE_F8E4M3, ATTN_DTYPE_F8E4M3},
    {ATTN_DTYPE_F8E5M2, ATTN_DTYPE_F8E5M2, ATTN_DTYPE_F32},
};
enum { N_MIXES = sizeof mixes / sizeof mixes[0] };

/* The case paged with page_size on every kernel: against the oracle, bitwise the unpaged call,
 * bitwise on 1, 2 and 3 threads. */
static void check_paged(tspec s, int m, int64_t page_size, int want_probs) {
  tcase c;
  tspec_min_rows(&s, 32);
  s.seed = seed_base * 1000003u + (uint64_t)n_cases;
  tcase_make(&c, &s);
  tcase_set_types(&c, mixes[m][0], mixes[m][1], mixes[m][2]);
  c.skip_probs = !want_probs; /* without P the decode direct forms run */
  const int layout = n_cases % 2;
  const int64_t pad = n_cases % 3 == 2 ? 3 : 0;
  n_cases++;
  char label[512];
  tcase_label(&c, label, sizeof label);
  for (int k = 1; k < ATTN_KERNEL_COUNT_; k++) {
    const attn_kernel kernel = (attn_kernel)k;
    if (!t_kernel_selected(kernel)) continue;
    tcase_unpage(&c);
    tresult flat = t_run_gather(&c, kernel, 2);
    tcase_page(&c, page_size, layout, pad, s.seed);
    t_check_case(&c, kernel, 2, want_probs);
    tresult paged = t_run_gather(&c, kernel, 2);
    CHECKF(tresult_same(&flat, &paged),
           "%s: paged (page_size %lld, layout %d, pad %lld, %s/%s/%s) is not bitwise the unpaged "
           "call\n  case: %s",
           attn_kernel_name(kernel), (long long)page_size, layout, (long long)pad,
           attn_dtype_name(mixes[m][0]), attn_dtype_name(mixes[m][1]), attn_dtype_name(mixes[m][2]),
           label);
    if (kernel != ATTN_KERNEL_REF) { /* ref is single-threaded */
      tresult one = t_run_gather(&c, kernel, 1), three = t_run_gather(&c, kernel, 3);
      CHECKF(tresult_same(&paged, &one) && tresult_same(&paged, &three),
             "%s: paged results differ across 1, 2, 3 threads\n  case: %s",
             attn_kernel_name(kernel), label);
      tresult_free(&one), tresult_free(&three);
    }
    tresult_free(&flat), tresult_free(&paged);
  }
  tcase_free(&c);
}

static const int64_t page_sizes[] = {1, 3, 16, 127, 128, 129, 1000};
enum { N_PAGE_SIZES = sizeof page_sizes / sizeof page_sizes[0] };

/* Shapes around the tiles (one tile, tile ± 1, several query blocks: K packed once per call). */
static void sweep_shapes(void) {
  static const int64_t shapes[][7] = {{1, 1, 1, 1, 1, 8, 8},       {2, 2, 1, 63, 129, 17, 17},
                                      {1, 4, 2, 130, 257, 64, 64}, {1, 2, 2, 200, 300, 128, 128},
                                      {2, 3, 1, 97, 127, 80, 48},  {1, 2, 1, 5, 0, 8, 8},
                                      {1, 2, 2, 7, 9, 16, 0}};
  int n = 0;
  for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
    for (int ps = 0; ps < N_PAGE_SIZES; ps++, n++) {
      const int64_t *x = shapes[i];
      tspec s = tspec_shape(x[0], x[1], x[2], x[3], x[4], x[5], x[6]);
      s.causal = n % 3 == 1;
      s.kv_len = n % 2;
      s.align = ATTN_ALIGN_BOTTOM_RIGHT;
      check_paged(s, n % N_MIXES, page_sizes[ps], x[3] * x[4] <= 20000);
    }
}

/* Every feature (the features that read per-key data — masks, bias, kv_len — index logical keys).
 */
static void sweep_features(void) {
  int n = 0;
  for (int f = 0; f < t_n_features; f++, n++) {
    tspec s = tspec_shape(2, 4, 2, 9, 141, 64, 40);
    s.align = ATTN_ALIGN_BOTTOM_RIGHT;
    s.layout = n % N_LAYOUTS;
    t_features[f].fn(&s);
    check_paged(s, n % N_MIXES, page_sizes[n % N_PAGE_SIZES], 1);
  }
}

/* Decode (direct forms, key split; tiles read in place when they lie in one page, gathered when
 * they span pages) and few-item prefill (key split, packed path). */
static void sweep_long_keys(void) {
  static const int64_t lq[] = {1, 4, 16}, heads[][2] = {{8, 2}, {4, 4}, {8, 1}};
  static const int64_t decode_pages[] = {16, 128, 256, 1000, 37, 512};
  int n = 0;
  for (int a = 0; a < 3; a++)
    for (int b = 0; b < 2; b++, n++) {
      tspec s = tspec_shape(2, heads[n % 3][0], heads[n % 3][1], lq[a], b ? 1537 : 1024,
                            n % 2 ? 128 : 83, n % 3 ? 64 : 75);
      s.causal = 1, s.align = ATTN_ALIGN_BOTTOM_RIGHT, s.kv_len = 1;
      check_paged(s, n % N_MIXES, decode_pages[n], 0);
    }
  tspec s = tspec_shape(1, 1, 1, 97, 2053, 64, 64); /* few items: keys split in chunks */
  s.causal = 1, s.align = ATTN_ALIGN_BOTTOM_RIGHT;
  check_paged(s, 0, 16, 0);
  check_paged(s, 1, 256, 0);
}

/* One block-table row for every batch item (block_table_stride = 0): the unpaged call with K and
 * V broadcast over the batch (stride 0), e.g. one shared prompt. */
static void test_shared_table(void) {
  tspec s = tspec_shape(3, 4, 2, 5, 300, 32, 32);
  s.causal = 1, s.align = ATTN_ALIGN_BOTTOM_RIGHT;
  s.seed = seed_base + 77;
  tcase c;
  tcase_make(&c, &s);
  for (int k = 1; k < ATTN_KERNEL_COUNT_; k++) {
    const attn_kernel kernel = (attn_kernel)k;
    if (!t_kernel_selected(kernel)) continue;
    tcase_unpage(&c);
    c.p.k_stride[0] = c.p.v_stride[0] = 0; /* batch item 0's K and V for every item */
    tresult bcast = t_run_gather(&c, kernel, 2);
    c.p.k_stride[0] = c.k.stride[0], c.p.v_stride[0] = c.v.stride[0];
    tcase_page(&c, 16, 1, 0, s.seed);
    c.p.block_table_stride = 0; /* row 0 (batch item 0's pages) for every item */
    tresult shared = t_run_gather(&c, kernel, 2);
    CHECKF(tresult_same(&bcast, &shared), "%s: a shared table is not the broadcast call",
           attn_kernel_name(kernel));
    tresult_free(&bcast), tresult_free(&shared);
  }
  tcase_free(&c);
}

/* ---- errors: a clear message, nothing written ---- */

static int msg_has(const char *part) {
  const int ok = strstr(attn_last_error(), part) != NULL;
  if (!ok) fprintf(stderr, "  message: %s\n", attn_last_error());
  return ok;
}

static void test_errors(void) {
  enum { L = 10, D = 4, PS = 4, PAGES = 3 };
  float q[L * D], kpool[PAGES * PS * D], vpool[PAGES * PS * D], o[L * D], lse[L];
  for (int i = 0; i < L * D; i++)
    q[i] = 0.1f * (float)(i % 7);
  for (int i = 0; i < PAGES * PS * D; i++)
    kpool[i] = 0.2f * (float)(i % 5), vpool[i] = (float)i;
  int32_t table[3] = {2, 0, 1};
  attn_params p;
  attn_params_init(&p, 1, 1, 1, L, L, D, D);
  CHECK(p.block_table == NULL && p.block_table_stride == -1);
  p.block_table = table, p.page_size = PS, p.num_pages = PAGES;
  attn_strides_packed(p.k_stride, 1, PS, D);
  attn_strides_packed(p.v_stride, 1, PS, D);
  for (int i = 0; i < L * D; i++)
    o[i] = -7.0f;
  unsigned char before[sizeof o];
  memcpy(before, o, sizeof o);
  CHECKF(attn_forward(&p, q, kpool, vpool, o, lse, NULL) == ATTN_STATUS_OK, "%s",
         attn_last_error());
  memcpy(before, o, sizeof o);

  attn_params e = p;
  e.page_size = 0;
  CHECK(attn_forward(&e, q, kpool, vpool, o, lse, NULL) == ATTN_STATUS_INVALID_ARGUMENT);
  CHECK(msg_has("page_size (0) must be at least 1"));
  e = p, e.num_pages = -1;
  CHECK(attn_forward(&e, q, kpool, vpool, o, lse, NULL) == ATTN_STATUS_INVALID_ARGUMENT);
  CHECK(msg_has("num_pages (-1)"));
  e = p, e.block_table_stride = -2;
  CHECK(attn_forward(&e, q, kpool, vpool, o, lse, NULL) == ATTN_STATUS_INVALID_ARGUMENT);
  CHECK(msg_has("block_table_stride (-2)"));
  e = p, e.num_pages = 2; /* entry 0 is page 2 */
  CHECK(attn_forward(&e, q, kpool, vpool, o, lse, NULL) == ATTN_STATUS_INVALID_ARGUMENT);
  CHECK(msg_has("block_table[0 * 3 + 0] (2) must be in [0, num_pages = 2)"));
  table[2] = -1; /* keys 8, 9 */
  CHECK(attn_forward(&p, q, kpool, vpool, o, lse, NULL) == ATTN_STATUS_INVALID_ARGUMENT);
  CHECK(msg_has("(-1) must be in [0, num_pages = 3): it holds keys 8..11 of batch item 0"));
  /* an entry past the key length is never read */
  const int64_t kv_len[1] = {8};
  e = p, e.kv_len = kv_len, e.align = ATTN_ALIGN_TOP_LEFT;
  CHECKF(attn_forward(&e, q, kpool, vpool, o, lse, NULL) == ATTN_STATUS_OK, "%s",
         attn_last_error());
  memcpy(before, o, sizeof o);
  table[2] = 1;
  /* the pools are [num_pages, Hkv, page_size, D]: an output overlapping one is an error */
  CHECK(attn_forward(&p, q, kpool, vpool, kpool + (PAGES - 1) * PS * D, NULL, NULL) ==
        ATTN_STATUS_INVALID_ARGUMENT);
  CHECK(msg_has("output o overlaps input k"));
  CHECK(attn_forward(&p, q, kpool, vpool, o, (float *)(void *)table, NULL) ==
        ATTN_STATUS_INVALID_ARGUMENT);
  CHECK(msg_has("output lse overlaps input block_table"));
  e = p, e.k_stride[0] = INT64_MAX / 2;
  CHECK(attn_forward(&e, q, kpool, vpool, o, lse, NULL) == ATTN_STATUS_SIZE_OVERFLOW);
  e = p, e.block_table_stride = INT64_MAX / 2, e.batch = 3;
  CHECK(attn_forward(&e, q, kpool, vpool, o, lse, NULL) == ATTN_STATUS_SIZE_OVERFLOW);
  CHECK(msg_has("block_table_stride"));
  CHECK(memcmp(o, before, sizeof o) == 0);

  /* the backward refuses paged K and V */
  float g[3][L * D];
  CHECK(attn_backward(&p, q, kpool, vpool, o, lse, o, g[0], g[1], g[2], NULL) ==
        ATTN_STATUS_UNSUPPORTED);
  CHECK(msg_has("attn_backward: block_table is set"));
  size_t bytes = 0;
  CHECK(attn_backward_scratch_bytes(&p, 0, &bytes) == ATTN_STATUS_UNSUPPORTED);

  /* ref reads K and V gathered: its scratch grows by exactly their size (each a block of whole
   * 64-byte lines) */
  const size_t copy = (L * D * sizeof(float) + 63) / 64 * 64;
  size_t flat = 0, paged = 0;
  e = p, e.kernel = ATTN_KERNEL_REF;
  CHECK(attn_forward_scratch_bytes(&e, 0, &paged) == ATTN_STATUS_OK);
  e.block_table = NULL;
  CHECK(attn_forward_scratch_bytes(&e, 0, &flat) == ATTN_STATUS_OK);
  CHECKF(paged == flat + 2 * copy, "ref scratch %zu vs %zu", paged, flat);
}

int main(int argc, char **argv) {
  seed_base = argc > 1 ? strtoull(argv[1], NULL, 10) : 0;
  printf("test_paged: seed %llu\n", (unsigned long long)seed_base);
  t_check_kernel_selection();
  test_errors();
  test_shared_table();
  sweep_shapes();
  sweep_features();
  sweep_long_keys();
  printf("  %d paged cases\n", n_cases);
  return t_finish("test_paged");
}
