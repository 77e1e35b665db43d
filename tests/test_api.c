/*
 * test_api.c — the API surface: every argument made invalid in turn returns the exact status and a
 * message naming the parameter, its value and the rule, with every output byte-identical to its
 * canaries and every input unchanged; valid calls at the limits succeed; status strings, kernel
 * names, version and the last-error message behave as documented.
 */
#include "harness.h"
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* One call's arguments, mutable by a test. */
typedef struct call {
  attn_params p;
  const float *q, *k, *v;
  float *o, *lse, *probs;
  int64_t kv_len[2];
  float slopes[4];
} call;

typedef void (*mutate_fn)(call *c);

typedef struct bad_case {
  const char *name;
  mutate_fn fn;
  attn_status status;
  const char *msg1, *msg2; /* substrings the message must contain */
} bad_case;

/* The valid base call: B=2 Hq=4 Hkv=2 Lq=5 Lk=7 D=8 Dv=6, all optional inputs and outputs. */
static tcase base_case;
static touts base_out;

static call base_call(void) {
  call c;
  memset(&c, 0, sizeof c);
  c.p = base_case.p;
  c.p.kernel = ATTN_KERNEL_AUTO;
  c.p.threads = 2;
  c.q = tbuf_f32(&base_case.q), c.k = tbuf_f32(&base_case.k), c.v = tbuf_f32(&base_case.v);
  c.o = tbuf_f32(&base_out.o), c.lse = tbuf_f32(&base_out.lse);
  c.probs = tbuf_f32(&base_out.probs);
  c.kv_len[0] = 3, c.kv_len[1] = 7;
  for (int h = 0; h < 4; h++)
    c.slopes[h] = 0.25f;
  return c;
}

#define MUT(fname, body)                                                                           \
  static void fname(call *c) { body; }
MUT(m_batch, c->p.batch = -1)
MUT(m_heads_q, c->p.heads_q = -1)
MUT(m_heads_kv, c->p.heads_kv = 0)
MUT(m_len_q, c->p.len_q = -1)
MUT(m_len_k, c->p.len_k = -1)
MUT(m_dim, c->p.dim = 0)
MUT(m_dim_v, c->p.dim_v = -1)
MUT(m_group, (c->p.heads_q = 12, c->p.heads_kv = 5))
MUT(m_scale_nan, (c->p.has_scale = 1, c->p.scale = NAN))
MUT(m_scale_inf, (c->p.has_scale = 1, c->p.scale = -INFINITY))
MUT(m_has_scale, c->p.has_scale = 2)
MUT(m_softcap_neg, c->p.softcap = -1.0f)
MUT(m_softcap_nan, c->p.softcap = NAN)
MUT(m_causal, c->p.causal = 2)
MUT(m_align, c->p.align = (attn_align)7)
MUT(m_window_left, c->p.window_left = -2)
MUT(m_window_right, c->p.window_right = -3)
MUT(m_kv_len_big, (c->kv_len[1] = 8, c->p.kv_len = c->kv_len, c->p.align = ATTN_ALIGN_TOP_LEFT))
MUT(m_kv_len_neg, (c->kv_len[0] = -1, c->p.kv_len = c->kv_len))
MUT(m_alibi_nan,
    (c->slopes[2] = NAN, c->p.alibi_slopes = c->slopes, c->p.align = ATTN_ALIGN_TOP_LEFT))
MUT(m_align_causal, (c->p.causal = 1, c->p.align = ATTN_ALIGN_UNSET))
MUT(m_align_kvlen, (c->p.len_k = 5, c->p.window_left = 2, c->kv_len[1] = 5, c->p.kv_len = c->kv_len,
                    c->p.align = ATTN_ALIGN_UNSET))
MUT(m_threads_neg, c->p.threads = -1)
MUT(m_threads_big, c->p.threads = ATTN_MAX_THREADS + 1)
MUT(m_kernel, c->p.kernel = (attn_kernel)99)
MUT(m_q_null, c->q = NULL)
MUT(m_k_null, c->k = NULL)
MUT(m_v_null, c->v = NULL)
MUT(m_o_null, c->o = NULL)
MUT(m_o_stride_zero, c->p.o_stride[3] = 0)
MUT(m_o_stride_neg, c->p.o_stride[2] = -6)
MUT(m_o_self_overlap, c->p.o_stride[2] = 1)
MUT(m_lse_self_overlap, c->p.lse_stride[0] = 1)
MUT(m_o_alias_q, c->o = (float *)c->q)
MUT(m_lse_overlaps_o, c->lse = c->o + 3)
MUT(m_probs_overlaps_k, c->probs = (float *)c->k + 5)
MUT(m_q_stride_overflow, c->p.q_stride[0] = INT64_MAX / 2)
MUT(m_k_extent_overflow, c->p.k_stride[2] = INT64_MAX / 4)
MUT(m_mask_stride_overflow, (c->p.mask = (const uint8_t *)c->q, c->p.mask_stride[1] = INT64_MAX))

static const bad_case bad_cases[] = {
    {"batch", m_batch, ATTN_STATUS_INVALID_ARGUMENT, "batch (-1) must be at least 0", NULL},
    {"heads_q", m_heads_q, ATTN_STATUS_INVALID_ARGUMENT, "heads_q (-1)", NULL},
    {"heads_kv", m_heads_kv, ATTN_STATUS_INVALID_ARGUMENT, "heads_kv (0) must be at least 1", NULL},
    {"len_q", m_len_q, ATTN_STATUS_INVALID_ARGUMENT, "len_q (-1)", NULL},
    {"len_k", m_len_k, ATTN_STATUS_INVALID_ARGUMENT, "len_k (-1)", NULL},
    {"dim", m_dim, ATTN_STATUS_INVALID_ARGUMENT, "attn_forward: dim (0) must be at least 1", NULL},
    {"dim_v", m_dim_v, ATTN_STATUS_INVALID_ARGUMENT, "dim_v (-1)", NULL},
    {"group", m_group, ATTN_STATUS_INVALID_ARGUMENT,
     "attn_forward: heads_q (12) is not a multiple of heads_kv (5)", NULL},
    {"scale nan", m_scale_nan, ATTN_STATUS_INVALID_ARGUMENT, "scale (nan) must be finite", NULL},
    {"scale inf", m_scale_inf, ATTN_STATUS_INVALID_ARGUMENT, "scale (-inf) must be finite", NULL},
    {"has_scale", m_has_scale, ATTN_STATUS_INVALID_ARGUMENT, "has_scale (2) must be 0 or 1", NULL},
    {"softcap neg", m_softcap_neg, ATTN_STATUS_INVALID_ARGUMENT, "softcap (-1)", "positive"},
    {"softcap nan", m_softcap_nan, ATTN_STATUS_INVALID_ARGUMENT, "softcap (nan)", NULL},
    {"causal", m_causal, ATTN_STATUS_INVALID_ARGUMENT, "causal (2) must be 0 or 1", NULL},
    {"align", m_align, ATTN_STATUS_INVALID_ARGUMENT, "align (7)", NULL},
    {"window_left", m_window_left, ATTN_STATUS_INVALID_ARGUMENT, "window_left (-2)", NULL},
    {"window_right", m_window_right, ATTN_STATUS_INVALID_ARGUMENT, "window_right (-3)", NULL},
    {"kv_len big", m_kv_len_big, ATTN_STATUS_INVALID_ARGUMENT, "kv_len[1] (8)", "len_k = 7"},
    {"kv_len neg", m_kv_len_neg, ATTN_STATUS_INVALID_ARGUMENT, "kv_len[0] (-1)", NULL},
    {"alibi nan", m_alibi_nan, ATTN_STATUS_INVALID_ARGUMENT, "alibi_slopes[2] (nan)", NULL},
    {"align needed (causal)", m_align_causal, ATTN_STATUS_INVALID_ARGUMENT, "ATTN_ALIGN_TOP_LEFT",
     "ATTN_ALIGN_BOTTOM_RIGHT"},
    {"align needed (kv_len)", m_align_kvlen, ATTN_STATUS_INVALID_ARGUMENT, "kv_len is given",
     "ATTN_ALIGN_BOTTOM_RIGHT"},
    {"threads neg", m_threads_neg, ATTN_STATUS_INVALID_ARGUMENT, "threads (-1)", NULL},
    {"threads big", m_threads_big, ATTN_STATUS_INVALID_ARGUMENT, "threads (1025)", NULL},
    {"kernel", m_kernel, ATTN_STATUS_INVALID_ARGUMENT, "kernel (99)", NULL},
    {"q null", m_q_null, ATTN_STATUS_INVALID_ARGUMENT, "q is NULL", NULL},
    {"k null", m_k_null, ATTN_STATUS_INVALID_ARGUMENT, "k is NULL", NULL},
    {"v null", m_v_null, ATTN_STATUS_INVALID_ARGUMENT, "v is NULL", NULL},
    {"o null", m_o_null, ATTN_STATUS_INVALID_ARGUMENT, "o is NULL", NULL},
    {"o stride 0", m_o_stride_zero, ATTN_STATUS_INVALID_ARGUMENT,
     "o_stride[3] (0) must be positive", NULL},
    {"o stride negative", m_o_stride_neg, ATTN_STATUS_INVALID_ARGUMENT, "o_stride[2] (-6)",
     "positive"},
    /* with two equal strides either dimension may be named */
    {"o overlaps itself", m_o_self_overlap, ATTN_STATUS_INVALID_ARGUMENT, "o_stride[",
     "makes output o overlap itself"},
    {"lse overlaps itself", m_lse_self_overlap, ATTN_STATUS_INVALID_ARGUMENT, "lse_stride[",
     "makes output lse overlap itself"},
    {"o aliases q", m_o_alias_q, ATTN_STATUS_INVALID_ARGUMENT, "output o overlaps input q", NULL},
    {"lse overlaps o", m_lse_overlaps_o, ATTN_STATUS_INVALID_ARGUMENT,
     "output lse overlaps output o", NULL},
    {"probs overlaps k", m_probs_overlaps_k, ATTN_STATUS_INVALID_ARGUMENT,
     "output probs overlaps input k", NULL},
    {"q stride overflow", m_q_stride_overflow, ATTN_STATUS_SIZE_OVERFLOW,
     "byte extent of q (strides q_stride)", "overflows"},
    {"k extent overflow", m_k_extent_overflow, ATTN_STATUS_SIZE_OVERFLOW, "k", "overflows"},
    {"mask stride overflow", m_mask_stride_overflow, ATTN_STATUS_SIZE_OVERFLOW, "mask_stride[1]",
     "overflows"},
};

/* Byte snapshots of every input and output allocation, to prove a failing call wrote nothing. */
typedef struct snap {
  unsigned char *bytes[6];
} snap;
static tbuf *all_bufs[6];

static snap take_snap(void) {
  snap s;
  for (int i = 0; i < 6; i++) {
    size_t n = 2 * T_GUARD_BYTES + all_bufs[i]->extent_bytes;
    s.bytes[i] = malloc(n);
    memcpy(s.bytes[i], all_bufs[i]->alloc, n);
  }
  return s;
}

static void test_bad_calls(void) {
  snap before = take_snap();
  for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
    const bad_case *bc = &bad_cases[i];
    call c = base_call();
    bc->fn(&c);
    attn_status st = attn_forward(&c.p, c.q, c.k, c.v, c.o, c.lse, c.probs);
    const char *msg = attn_last_error();
    CHECKF(st == bc->status, "%s: status %s, want %s (%s)", bc->name, attn_status_str(st),
           attn_status_str(bc->status), msg);
    CHECKF(strstr(msg, bc->msg1) && (!bc->msg2 || strstr(msg, bc->msg2)),
           "%s: message \"%s\" lacks \"%s\"%s%s", bc->name, msg, bc->msg1, bc->msg2 ? " / " : "",
           bc->msg2 ? bc->msg2 : "");
    int untouched = 1;
    for (int b = 0; b < 6; b++)
      untouched &= tbuf_same_bytes(all_bufs[b], before.bytes[b]);
    CHECKF(untouched, "%s: a failing call changed an input or output", bc->name);
  }
  /* NULL params */
  CHECK(attn_forward(NULL, NULL, NULL, NULL, NULL, NULL, NULL) == ATTN_STATUS_INVALID_ARGUMENT);
  CHECK(strstr(attn_last_error(), "p (params) is NULL") != NULL);
  for (int b = 0; b < 6; b++)
    free(before.bytes[b]);
  /* after all that, the outputs still hold only canaries: nothing was ever written */
  CHECK(tbuf_check_output(&base_out.o, "o", 0));
  CHECK(tbuf_check_output(&base_out.lse, "lse", 0));
  CHECK(tbuf_check_output(&base_out.probs, "probs", 0));
}

/* Valid calls at the limits: empty shapes with NULL pointers, Lk = 0, Dv = 0, maximal threads. */
static void test_valid_limits(void) {
  attn_params p;
  attn_params_init(&p, 0, 4, 2, 5, 7, 8, 8);
  CHECKF(attn_forward(&p, NULL, NULL, NULL, NULL, NULL, NULL) == ATTN_STATUS_OK, "B = 0: %s",
         attn_last_error());
  attn_params_init(&p, 2, 0, 1, 5, 7, 8, 8);
  /* Hq = 0: nothing is read, so K and V may even be poisoned pointers */
  CHECKF(attn_forward(&p, NULL, (const float *)64, (const float *)64, NULL, NULL, NULL) ==
             ATTN_STATUS_OK,
         "Hq = 0 with poisoned K/V: %s", attn_last_error());
  attn_params_init(&p, 2, 0, 1, 5, 0, 8, 8);
  CHECKF(attn_forward(&p, NULL, NULL, NULL, NULL, NULL, NULL) == ATTN_STATUS_OK, "Hq = 0: %s",
         attn_last_error());
  attn_params_init(&p, 2, 2, 1, 0, 0, 8, 8);
  CHECKF(attn_forward(&p, NULL, NULL, NULL, NULL, NULL, NULL) == ATTN_STATUS_OK, "Lq = 0: %s",
         attn_last_error());
  CHECK(attn_last_error()[0] == '\0'); /* success clears the message */

  /* Lk = 0: K and V may be NULL; O = +0, LSE = −inf */
  float q[2 * 3 * 4], o[2 * 3 * 4], lse[2 * 3];
  for (int i = 0; i < 24; i++)
    q[i] = 1.0f, o[i] = NAN;
  attn_params_init(&p, 1, 2, 1, 3, 0, 4, 4);
  CHECKF(attn_forward(&p, q, NULL, NULL, o, lse, NULL) == ATTN_STATUS_OK, "Lk = 0: %s",
         attn_last_error());
  int ok = 1;
  for (int i = 0; i < 24; i++)
    ok &= o[i] == 0.0f && !signbit(o[i]);
  for (int i = 0; i < 6; i++)
    ok &= lse[i] == -INFINITY;
  CHECKF(ok, "Lk = 0 must give O = +0 and LSE = -inf");
  /* Dv = 0: V and O may be NULL; LSE is still computed */
  float k[5 * 4];
  for (int i = 0; i < 20; i++)
    k[i] = 0.0f;
  attn_params_init(&p, 1, 2, 1, 3, 5, 4, 0);
  CHECKF(attn_forward(&p, q, k, NULL, NULL, lse, NULL) == ATTN_STATUS_OK, "Dv = 0: %s",
         attn_last_error());
  CHECK(fabsf(lse[0] - logf(5.0f)) < 1e-6f);
  /* the strides of tensors with no element address nothing, however large (found by fuzzing:
   * the kernels once did the base-pointer arithmetic with them and overflowed), and the forward
   * and backward of every kernel accept them */
  for (int kern = ATTN_KERNEL_REF; kern < ATTN_KERNEL_COUNT_; kern++) {
    if (!attn_kernel_supported((attn_kernel)kern)) continue;
    attn_params_init(&p, 1, 2, 1, 3, 5, 4, 0);
    p.kernel = (attn_kernel)kern;
    for (int d = 0; d < 3; d++)
      p.v_stride[d] = p.o_stride[d] = p.dv_stride[d] = p.dout_stride[d] = (int64_t)1 << 62;
    float dq[2 * 3 * 4], dk[5 * 4];
    CHECKF(attn_forward(&p, q, k, NULL, NULL, lse, NULL) == ATTN_STATUS_OK &&
               fabsf(lse[0] - logf(5.0f)) < 1e-6f,
           "Dv = 0 with huge strides (%s): %s", attn_kernel_name(p.kernel), attn_last_error());
    CHECKF(attn_backward(&p, q, k, NULL, NULL, lse, NULL, dq, dk, NULL, NULL) == ATTN_STATUS_OK &&
               dq[0] == 0.0f && dk[0] == 0.0f,
           "backward, Dv = 0 with huge strides (%s): %s", attn_kernel_name(p.kernel),
           attn_last_error());
  }
  /* the largest thread count */
  attn_params_init(&p, 1, 2, 1, 3, 5, 4, 0);
  p.threads = ATTN_MAX_THREADS;
  CHECK(attn_forward(&p, q, k, NULL, NULL, lse, NULL) == ATTN_STATUS_OK);
  /* window 0 and kv_len 0 / Lk are valid */
  call c = base_call();
  c.p.window_left = c.p.window_right = 0;
  c.kv_len[0] = 0, c.kv_len[1] = 7;
  c.p.kv_len = c.kv_len, c.p.align = ATTN_ALIGN_BOTTOM_RIGHT;
  CHECKF(attn_forward(&c.p, c.q, c.k, c.v, c.o, c.lse, c.probs) == ATTN_STATUS_OK, "limits: %s",
         attn_last_error());
}

/* Negative input strides (a reversed view) are valid and read the same elements. */
static void test_negative_strides(void) {
  tspec s = tspec_shape(1, 2, 1, 9, 20, 8, 8);
  tcase c;
  tcase_make(&c, &s);
  touts a, b;
  touts_make(&a, &c, 1, 0);
  touts_make(&b, &c, 1, 0);
  CHECK(t_run(&c, ATTN_KERNEL_AUTO, 1, &a) == ATTN_STATUS_OK);
  /* K and V stored with keys in reverse order, viewed through a stride of −D from the last key */
  const int64_t L = 20, D = 8;
  float *kr = malloc(sizeof(float) * L * D), *vr = malloc(sizeof(float) * L * D);
  for (int64_t j = 0; j < L; j++)
    for (int64_t d = 0; d < D; d++) {
      kr[(L - 1 - j) * D + d] = tbuf_f32(&c.k)[j * D + d];
      vr[(L - 1 - j) * D + d] = tbuf_f32(&c.v)[j * D + d];
    }
  attn_params p = c.p;
  p.k_stride[2] = p.v_stride[2] = -D;
  CHECKF(attn_forward(&p, tbuf_f32(&c.q), kr + (L - 1) * D, vr + (L - 1) * D, tbuf_f32(&b.o),
                      tbuf_f32(&b.lse), NULL) == ATTN_STATUS_OK,
         "negative strides: %s", attn_last_error());
  CHECK(memcmp(a.o.alloc, b.o.alloc, 2 * T_GUARD_BYTES + a.o.extent_bytes) == 0);
  free(kr), free(vr);
  touts_free(&a), touts_free(&b);
  tcase_free(&c);
}

static void test_names(void) {
  for (int s = 0; s < ATTN_STATUS_COUNT_; s++)
    CHECK(attn_status_str((attn_status)s) != NULL && attn_status_str((attn_status)s)[0]);
  CHECK(strcmp(attn_status_str(ATTN_STATUS_OK), "success") == 0);
  CHECK(strcmp(attn_status_str((attn_status)999), "unknown status") == 0);
  CHECK(strcmp(attn_version(), ATTN_VERSION_STRING) == 0);
  for (int k = 0; k < ATTN_KERNEL_COUNT_; k++)
    CHECK(attn_kernel_from_name(attn_kernel_name((attn_kernel)k)) == (attn_kernel)k);
  CHECK(attn_kernel_from_name("avx9000") == ATTN_KERNEL_COUNT_);
  CHECK(attn_kernel_from_name(NULL) == ATTN_KERNEL_COUNT_);
  CHECK(attn_kernel_supported(attn_kernel_auto()));
  CHECK(attn_kernel_auto() != ATTN_KERNEL_AUTO);
  char buf[8];
  attn_cpu_features(buf, sizeof buf); /* truncates safely */
  CHECK(strlen(buf) < sizeof buf);
}

/* A call whose work would take one core under ~100 µs runs on the calling thread alone (waking
 * the pool would cost more than the second core saves), a larger one on the threads it asks for;
 * seen through the scratch sizes, which count one tile scratch per worker. The test kit turns
 * the threshold off for the other tests; this one turns it back on. */
static void test_serial_threshold(void) {
  attn__set_serial_us(100);
  static const int64_t shapes[2][3] = {{4, 16, 64}, {8, 1024, 64}}; /* heads, L, D: ~5 µs, ~0.1 s */
  for (int i = 0; i < 2; i++) {
    attn_params p;
    attn_params_init(&p, 1, shapes[i][0], shapes[i][0], shapes[i][1], shapes[i][1], shapes[i][2],
                     shapes[i][2]);
    p.kernel = ATTN_KERNEL_GENERIC;
    size_t fwd[2] = {0, 0}, bwd[2] = {0, 0};
    for (int t = 0; t < 2; t++) {
      p.threads = t ? 8 : 1;
      CHECK(attn_forward_scratch_bytes(&p, 0, &fwd[t]) == ATTN_STATUS_OK);
      CHECK(attn_backward_scratch_bytes(&p, 0, &bwd[t]) == ATTN_STATUS_OK);
    }
    if (i == 0) {
      CHECKF(fwd[1] == fwd[0] && bwd[1] == bwd[0],
             "a 16-key call takes one worker's scratch at 8 threads (forward %zu against %zu, "
             "backward %zu against %zu bytes)",
             fwd[1], fwd[0], bwd[1], bwd[0]);
    } else {
      CHECKF(fwd[1] > fwd[0] && bwd[1] > bwd[0],
             "a 1024-key call takes 8 workers' scratch at 8 threads (forward %zu against %zu, "
             "backward %zu against %zu bytes)",
             fwd[1], fwd[0], bwd[1], bwd[0]);
    }
  }
  attn__set_serial_us(0);
}

int main(void) {
  tspec s = tspec_shape(2, 4, 2, 5, 7, 8, 6);
  s.mask = MASK_FULL, s.bias = BIAS_FULL;
  tcase_make(&base_case, &s);
  touts_make(&base_out, &base_case, 1, 1);
  all_bufs[0] = &base_case.q, all_bufs[1] = &base_case.k, all_bufs[2] = &base_case.v;
  all_bufs[3] = &base_out.o, all_bufs[4] = &base_out.lse, all_bufs[5] = &base_out.probs;
  /* the base call itself is valid */
  call c = base_call();
  attn_params p = c.p;
  touts scratch;
  touts_make(&scratch, &base_case, 1, 1);
  CHECKF(attn_forward(&p, c.q, c.k, c.v, tbuf_f32(&scratch.o), tbuf_f32(&scratch.lse),
                      tbuf_f32(&scratch.probs)) == ATTN_STATUS_OK,
         "base call: %s", attn_last_error());
  touts_free(&scratch);

  test_bad_calls();
  test_valid_limits();
  test_negative_strides();
  test_names();
  test_serial_threshold();
  touts_free(&base_out);
  tcase_free(&base_case);
  return t_finish("test_api");
}
