/*
 * test_varlen.c — packed sequences (p.cu_seqlens_q, p.cu_seqlens_k: FlashAttention's varlen). On
 * every kernel, a packed call gives bitwise the result of the padded call with q_len and kv_len,
 * forward (O, LSE, P) and backward (dQ, dK, dV, dBias), for both packed layouts ([total, H, ·] and
 * [H, total, ·]), fp32, 16-bit and fp8 inputs, every feature, decode and split-key prefill, queries
 * packed alone, keys packed alone and both; 1, 2 and 3 threads agree; nothing is written past the
 * packed rows (guards), every packed row is written, and the packed inputs are allocated to their
 * exact size, so a read of a missing padding row past the last sequence is an ASan error in the
 * sanitised build. attn_merge, attn_merge_backward and attn_backward_sinks take packed queries too.
 * Then the errors.
 *
 * The padded call is held to the fp64 oracle by test_kernels, test_backward and test_dtype (the
 * features "q_len" and "varlen_causal"); this file holds the packed call to the padded one.
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
    {ATTN_DTYPE_F32, ATTN_DTYPE_F8E4M3, ATTN_DTYPE_F8E5M2},
};
enum { N_MIXES = sizeof mixes / sizeof mixes[0] };

enum { GUARD = 64 }; /* bytes after every packed output */
static const unsigned char CANARY = 0xA5;

/* A packed tensor of rows: [total, H, dim] (layout 0) or [H, total, dim] (layout 1), elem bytes
 * per element; outputs get GUARD canary bytes after the rows and start as canary. */
typedef struct ptensor {
  unsigned char *data;
  int64_t total, heads, dim, stride[4];
  size_t elem, bytes;
  int output;
} ptensor;

static void ptensor_make(ptensor *t, int64_t total, int64_t heads, int64_t dim, int layout,
                         size_t elem, int output) {
  t->total = total, t->heads = heads, t->dim = dim, t->elem = elem, t->output = output;
  if (layout == 0)
    attn_strides_blhd(t->stride, heads, total, dim);
  else
    attn_strides_packed(t->stride, heads, total, dim);
  t->bytes = (size_t)(total * heads * dim) * elem;
  /* inputs exactly their size (an over-read is an ASan error), outputs with a guard */
  t->data = malloc(t->bytes + (output ? GUARD : 0) + 1);
  memset(t->data, CANARY, t->bytes + (output ? GUARD : 0));
}

/* LSE [total, H] (layout 0) or [H, total] (layout 1): a 3-stride view of a ptensor of dim 1. */
static void lse_strides(const ptensor *t, int64_t s[3]) {
  s[0] = 0, s[1] = t->stride[1], s[2] = t->stride[2];
}

/* Offset (elements) of row i of sequence b, head h. */
static int64_t prow(const ptensor *t, const int64_t *cu, int64_t b, int64_t h, int64_t i) {
  return h * t->stride[1] + (cu[b] + i) * t->stride[2];
}

/* 1 if the guard still holds the canary and no element does (every packed row was written). */
static int ptensor_written(const ptensor *t, const char *what) {
  for (size_t i = t->bytes; i < t->bytes + GUARD; i++)
    if (t->data[i] != CANARY) {
      fprintf(stderr, "  %s: byte %zu past the packed rows was written\n", what, i - t->bytes);
      return 0;
    }
  for (size_t e = 0; e < t->bytes; e += t->elem) {
    size_t k = 0;
    while (k < t->elem && t->data[e + k] == CANARY)
      k++;
    if (k == t->elem) {
      fprintf(stderr, "  %s: element %zu was not written\n", what, e / t->elem);
      return 0;
    }
  }
  return 1;
}

/* Copies rows [0, len(b)) of every (b, h) of a padded tensor (element offsets b·ss[0] + h·ss[1] +
 * i·ss[2] + d·ss[3]) into the packed one. */
static void pack_from(ptensor *t, const int64_t *cu, const void *src, const int64_t *ss,
                      int ss_rank, int64_t B, const int64_t *len) {
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < t->heads; h++)
      for (int64_t i = 0; i < len[b]; i++)
        for (int64_t d = 0; d < t->dim; d++) {
          const int64_t from = b * ss[0] + h * ss[1] + i * ss[2] + (ss_rank > 3 ? d * ss[3] : 0);
          memcpy(t->data + (size_t)(prow(t, cu, b, h, i) + d * t->stride[3]) * t->elem,
                 (const unsigned char *)src + (size_t)from * t->elem, t->elem);
        }
}

/* 1 if every packed row equals the padded tensor's row bitwise (fp32; padded tensor packed
 * [B, H, L, dim]). */
static int same_rows(const ptensor *t, const int64_t *cu, const float *padded, int64_t B, int64_t L,
                     const int64_t *len, const char *what) {
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < t->heads; h++)
      for (int64_t i = 0; i < len[b]; i++)
        for (int64_t d = 0; d < t->dim; d++) {
          float x;
          memcpy(&x, t->data + (size_t)(prow(t, cu, b, h, i) + d * t->stride[3]) * 4, 4);
          const float y = padded[((b * t->heads + h) * L + i) * t->dim + d];
          if (memcmp(&x, &y, 4) != 0) {
            fprintf(stderr, "  %s[b %lld, h %lld, row %lld, %lld]: packed %.9g, padded %.9g\n",
                    what, (long long)b, (long long)h, (long long)i, (long long)d, (double)x,
                    (double)y);
            return 0;
          }
        }
  return 1;
}

static void ptensor_free(ptensor *t) { free(t->data); }

static int64_t *cumulative(const int64_t *len, int64_t B) {
  int64_t *cu = calloc((size_t)B + 1, sizeof *cu);
  for (int64_t b = 0; b < B; b++)
    cu[b + 1] = cu[b] + len[b];
  return cu;
}

static float *falloc(size_t n, float fill) {
  float *x = malloc((n ? n : 1) * sizeof *x);
  for (size_t i = 0; i < n; i++)
    x[i] = fill;
  return x;
}

/* Which sides are packed: bit 0 queries, bit 1 keys. */
enum { PACK_Q = 1, PACK_K = 2, PACK_BOTH = 3 };

/* The case with queries and/or keys packed, on every kernel: forward and (with_grad) backward
 * bitwise the padded call, 1/2/3 threads bitwise. */
static void check_varlen(tspec s, int m, int sides, int want_probs, int with_grad) {
  s.seed = seed_base * 1000003u + (uint64_t)n_cases;
  tcase c;
  tcase_make(&c, &s);
  tcase_set_types(&c, mixes[m][0], mixes[m][1], mixes[m][2]);
  const int layout = n_cases % 2;
  n_cases++;
  char label[512];
  tcase_label(&c, label, sizeof label);
  const attn_params *cp = &c.p;
  const int64_t B = cp->batch, Hq = cp->heads_q, Hkv = cp->heads_kv, Lq = cp->len_q, Lk = cp->len_k,
                D = cp->dim, Dv = cp->dim_v;
  int64_t *qlen = calloc((size_t)B + 1, sizeof *qlen), *klen = calloc((size_t)B + 1, sizeof *klen);
  for (int64_t b = 0; b < B; b++)
    qlen[b] = c.q_len ? c.q_len[b] : Lq, klen[b] = c.kv_len ? c.kv_len[b] : Lk;
  /* the last sequence short by 1–3 rows: a write to a missing padding row past it lands in the
   * guard (or, [H, total, ·], on the next head's first rows, written earlier) */
  if (B > 0 && c.q_len && Lq > 1) qlen[B - 1] = Lq - 1 - (n_cases % 3 < Lq - 1 ? n_cases % 3 : 0);
  if (B > 0 && c.kv_len && Lk > 1) klen[B - 1] = Lk - 1 - (n_cases % 3 < Lk - 1 ? n_cases % 3 : 0);
  int64_t *cu_q = cumulative(qlen, B), *cu_k = cumulative(klen, B);

  /* the padded call: explicit lengths, packed outputs */
  attn_params pad = c.p;
  pad.q_len = qlen, pad.kv_len = klen;
  attn_strides_packed(pad.o_stride, Hq, Lq, Dv);
  attn_strides_packed(pad.probs_stride, Hq, Lq, Lk);
  pad.lse_stride[0] = Hq * Lq, pad.lse_stride[1] = Lq, pad.lse_stride[2] = 1;
  attn_strides_packed(pad.dout_stride, Hq, Lq, Dv);
  attn_strides_packed(pad.dq_stride, Hq, Lq, D);
  attn_strides_packed(pad.dk_stride, Hkv, Lk, D);
  attn_strides_packed(pad.dv_stride, Hkv, Lk, Dv);

  /* the packed call's inputs */
  const size_t es[3] = {attn_dtype_size(cp->q_dtype), attn_dtype_size(cp->k_dtype),
                        attn_dtype_size(cp->v_dtype)};
  ptensor pq, pk, pv;
  attn_params var = pad;
  if (sides & PACK_Q) {
    var.q_len = NULL, var.cu_seqlens_q = cu_q;
    ptensor_make(&pq, cu_q[B], Hq, D, layout, es[0], 0);
    pack_from(&pq, cu_q, tcase_input(&c, 0), cp->q_stride, 4, B, qlen);
    memcpy(var.q_stride, pq.stride, sizeof pq.stride);
  }
  if (sides & PACK_K) {
    var.kv_len = NULL, var.cu_seqlens_k = cu_k;
    ptensor_make(&pk, cu_k[B], Hkv, D, layout, es[1], 0);
    ptensor_make(&pv, cu_k[B], Hkv, Dv, 1 - layout, es[2], 0);
    pack_from(&pk, cu_k, tcase_input(&c, 1), cp->k_stride, 4, B, klen);
    pack_from(&pv, cu_k, tcase_input(&c, 2), cp->v_stride, 4, B, klen);
    memcpy(var.k_stride, pk.stride, sizeof pk.stride);
    memcpy(var.v_stride, pv.stride, sizeof pv.stride);
  }
  const void *vq = sides & PACK_Q ? (const void *)pq.data : tcase_input(&c, 0);
  const void *vk = sides & PACK_K ? (const void *)pk.data : tcase_input(&c, 1);
  const void *vv = sides & PACK_K ? (const void *)pv.data : tcase_input(&c, 2);

  const size_t no = (size_t)(B * Hq * Lq * Dv), nl = (size_t)(B * Hq * Lq),
               np = want_probs ? (size_t)(B * Hq * Lq * Lk) : 0;
  for (int k = 1; k < ATTN_KERNEL_COUNT_; k++) {
    const attn_kernel kernel = (attn_kernel)k;
    if (!t_kernel_selected(kernel)) continue;
    pad.kernel = var.kernel = kernel, pad.threads = var.threads = 2;
    float *o = falloc(no, NAN), *lse = falloc(nl, NAN), *pr = falloc(np, NAN);
    attn_status st = attn_forward(&pad, tcase_input(&c, 0), tcase_input(&c, 1), tcase_input(&c, 2),
                                  o, lse, want_probs ? pr : NULL);
    CHECKF(st == ATTN_STATUS_OK, "%s: padded call: %s\n  case: %s", attn_kernel_name(kernel),
           attn_last_error(), label);
    /* packed O, LSE (queries packed) or the padded layout (keys packed alone) */
    ptensor po, pl;
    float *o2 = NULL, *lse2 = NULL, *pr2 = falloc(np, NAN);
    if (sides & PACK_Q) {
      ptensor_make(&po, cu_q[B], Hq, Dv, 1 - layout, 4, 1);
      ptensor_make(&pl, cu_q[B], Hq, 1, layout, 4, 1);
      memcpy(var.o_stride, po.stride, sizeof po.stride);
      lse_strides(&pl, var.lse_stride);
    } else {
      o2 = falloc(no, NAN), lse2 = falloc(nl, NAN);
    }
    float *vo = sides & PACK_Q ? (float *)(void *)po.data : o2;
    float *vl = sides & PACK_Q ? (float *)(void *)pl.data : lse2;
    for (int threads = 1; threads <= (kernel == ATTN_KERNEL_REF ? 1 : 3); threads++) {
      var.threads = threads;
      st = attn_forward(&var, vq, vk, vv, vo, vl, want_probs ? pr2 : NULL);
      CHECKF(st == ATTN_STATUS_OK, "%s: packed call: %s\n  case: %s", attn_kernel_name(kernel),
             attn_last_error(), label);
      int same;
      if (sides & PACK_Q)
        same = ptensor_written(&po, "o") && ptensor_written(&pl, "lse") &&
               same_rows(&po, cu_q, o, B, Lq, qlen, "o") &&
               same_rows(&pl, cu_q, lse, B, Lq, qlen, "lse");
      else
        same = memcmp(o, o2, no * 4) == 0 && memcmp(lse, lse2, nl * 4) == 0;
      same = same && memcmp(pr, pr2, np * 4) == 0;
      CHECKF(same,
             "%s: packed (sides %d, layout %d, %s/%s/%s, %d threads) is not bitwise the "
             "padded call\n  case: %s",
             attn_kernel_name(kernel), sides, layout, attn_dtype_name(mixes[m][0]),
             attn_dtype_name(mixes[m][1]), attn_dtype_name(mixes[m][2]), threads, label);
    }
    var.threads = 2;

    if (with_grad) {
      /* dO: random rows (padding rows of the padded call included) */
      rng r = {s.seed ^ 0x5eed};
      float *dout = falloc(no, 0.0f);
      for (size_t i = 0; i < no; i++)
        dout[i] = rng_normal(&r);
      int64_t db[4] = {B, Hq, Lq, Lk};
      for (int d = 0; d < 4; d++)
        if (cp->bias_stride[d] == 0) db[d] = 1;
      const size_t nb = cp->bias ? (size_t)(db[0] * db[1] * db[2] * db[3]) : 0;
      attn_strides_packed(pad.dbias_stride, db[1], db[2], db[3]);
      var.dbias_stride[0] = pad.dbias_stride[0], var.dbias_stride[1] = pad.dbias_stride[1];
      var.dbias_stride[2] = pad.dbias_stride[2], var.dbias_stride[3] = pad.dbias_stride[3];
      const size_t nq = (size_t)(B * Hq * Lq * D), nk = (size_t)(B * Hkv * Lk * D),
                   nv = (size_t)(B * Hkv * Lk * Dv);
      float *dq = falloc(nq, NAN), *dk = falloc(nk, NAN), *dv = falloc(nv, NAN),
            *dbias = falloc(nb, NAN);
      st = attn_backward(&pad, tcase_input(&c, 0), tcase_input(&c, 1), tcase_input(&c, 2), o, lse,
                         dout, dq, dk, dv, nb ? dbias : NULL);
      CHECKF(st == ATTN_STATUS_OK, "%s: padded backward: %s", attn_kernel_name(kernel),
             attn_last_error());
      ptensor pdo, pdq, pdk, pdv;
      float *dq2 = NULL, *dk2 = NULL, *dv2 = NULL, *do2 = dout, *dbias2 = falloc(nb, NAN);
      if (sides & PACK_Q) {
        ptensor_make(&pdo, cu_q[B], Hq, Dv, layout, 4, 0);
        pack_from(&pdo, cu_q, dout, pad.dout_stride, 4, B, qlen);
        memcpy(var.dout_stride, pdo.stride, sizeof pdo.stride);
        ptensor_make(&pdq, cu_q[B], Hq, D, 1 - layout, 4, 1);
        memcpy(var.dq_stride, pdq.stride, sizeof pdq.stride);
        do2 = (float *)(void *)pdo.data, dq2 = (float *)(void *)pdq.data;
      } else {
        dq2 = falloc(nq, NAN);
      }
      if (sides & PACK_K) {
        ptensor_make(&pdk, cu_k[B], Hkv, D, 1 - layout, 4, 1);
        ptensor_make(&pdv, cu_k[B], Hkv, Dv, layout, 4, 1);
        memcpy(var.dk_stride, pdk.stride, sizeof pdk.stride);
        memcpy(var.dv_stride, pdv.stride, sizeof pdv.stride);
        dk2 = (float *)(void *)pdk.data, dv2 = (float *)(void *)pdv.data;
      } else {
        dk2 = falloc(nk, NAN), dv2 = falloc(nv, NAN);
      }
      for (int threads = 1; threads <= (kernel == ATTN_KERNEL_REF ? 1 : 3); threads += 2) {
        var.threads = threads;
        st = attn_backward(&var, vq, vk, vv, vo, vl, do2, dq2, dk2, dv2, nb ? dbias2 : NULL);
        CHECKF(st == ATTN_STATUS_OK, "%s: packed backward: %s\n  case: %s",
               attn_kernel_name(kernel), attn_last_error(), label);
        int same = memcmp(dbias, dbias2, nb * 4) == 0;
        if (sides & PACK_Q)
          same =
              same && ptensor_written(&pdq, "dq") && same_rows(&pdq, cu_q, dq, B, Lq, qlen, "dq");
        else
          same = same && memcmp(dq, dq2, nq * 4) == 0;
        if (sides & PACK_K)
          same = same && ptensor_written(&pdk, "dk") && ptensor_written(&pdv, "dv") &&
                 same_rows(&pdk, cu_k, dk, B, Lk, klen, "dk") &&
                 same_rows(&pdv, cu_k, dv, B, Lk, klen, "dv");
        else
          same = same && memcmp(dk, dk2, nk * 4) == 0 && memcmp(dv, dv2, nv * 4) == 0;
        CHECKF(same,
               "%s: packed backward (sides %d, layout %d, %d threads) is not bitwise the "
               "padded one\n  case: %s",
               attn_kernel_name(kernel), sides, layout, threads, label);
      }
      var.threads = 2;
      if (sides & PACK_Q)
        ptensor_free(&pdo), ptensor_free(&pdq);
      else
        free(dq2);
      if (sides & PACK_K)
        ptensor_free(&pdk), ptensor_free(&pdv);
      else
        free(dk2), free(dv2);
      free(dout), free(dq), free(dk), free(dv), free(dbias), free(dbias2);
    }
    if (sides & PACK_Q) ptensor_free(&po), ptensor_free(&pl);
    free(o), free(lse), free(pr), free(o2), free(lse2), free(pr2);
  }
  if (sides & PACK_Q) ptensor_free(&pq);
  if (sides & PACK_K) ptensor_free(&pk), ptensor_free(&pv);
  free(qlen), free(klen), free(cu_q), free(cu_k);
  tcase_free(&c);
}

/* Shapes around the tiles (one tile, tile ± 1, several query blocks: K packed once per call). */
static void sweep_shapes(void) {
  static const int64_t shapes[][7] = {{1, 1, 1, 1, 1, 8, 8},       {3, 2, 1, 63, 129, 17, 17},
                                      {2, 4, 2, 130, 257, 64, 64}, {3, 2, 2, 97, 200, 128, 128},
                                      {4, 3, 1, 33, 127, 80, 48},  {2, 2, 1, 5, 0, 8, 8},
                                      {2, 2, 2, 7, 9, 16, 0},      {5, 1, 1, 1, 1, 4, 4}};
  int n = 0;
  for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
    for (int sides = PACK_Q; sides <= PACK_BOTH; sides++, n++) {
      const int64_t *x = shapes[i];
      tspec s = tspec_shape(x[0], x[1], x[2], x[3], x[4], x[5], x[6]);
      s.causal = n % 3 != 1;
      s.q_len = s.kv_len = 1;
      s.align = n % 2 ? ATTN_ALIGN_BOTTOM_RIGHT : ATTN_ALIGN_TOP_LEFT;
      s.layout = n % N_LAYOUTS;
      check_varlen(s, n % N_MIXES, sides, x[3] * x[4] <= 20000, x[3] * x[4] <= 40000);
    }
}

/* Every feature, both sides packed. */
static void sweep_features(void) {
  for (int f = 0; f < t_n_features; f++) {
    tspec s = tspec_shape(3, 4, 2, 19, 141, 64, 40);
    s.align = ATTN_ALIGN_BOTTOM_RIGHT;
    s.layout = f % N_LAYOUTS;
    t_features[f].fn(&s);
    s.q_len = s.kv_len = 1;
    check_varlen(s, f % N_MIXES, PACK_BOTH, 1, 1);
  }
}

/* Decode (direct forms, key split), a few-item prefill (key split, packed path), and every length
 * full (the packed tensors then hold B·Lq and B·Lk rows). */
static void sweep_long_keys(void) {
  static const int64_t lq[] = {1, 4, 16}, heads[][2] = {{8, 2}, {4, 4}, {8, 1}};
  int n = 0;
  for (int a = 0; a < 3; a++, n++) {
    tspec s = tspec_shape(3, heads[n % 3][0], heads[n % 3][1], lq[a], n % 2 ? 1537 : 1024,
                          n % 2 ? 128 : 83, n % 3 ? 64 : 75);
    s.causal = 1, s.align = ATTN_ALIGN_BOTTOM_RIGHT, s.kv_len = 1, s.q_len = a > 0;
    check_varlen(s, n % N_MIXES, PACK_BOTH, 0, a == 1);
  }
  tspec s = tspec_shape(2, 1, 1, 97, 2053, 64, 64); /* few items: keys split in chunks */
  s.causal = 1, s.align = ATTN_ALIGN_BOTTOM_RIGHT, s.kv_len = 1, s.q_len = 1;
  check_varlen(s, 0, PACK_BOTH, 0, 0);
  check_varlen(s, 1, PACK_K, 0, 0);
  s = tspec_shape(2, 2, 1, 40, 60, 32, 32); /* no length given: all full */
  s.causal = 1, s.align = ATTN_ALIGN_TOP_LEFT;
  check_varlen(s, 0, PACK_BOTH, 1, 1);
}

/* attn_merge, attn_merge_backward and attn_backward_sinks on packed queries: bitwise the padded
 * calls on the rows that exist, nothing written past them. */
static void test_merge_and_sinks(void) {
  enum { B = 3, H = 2, L = 7, DV = 5, PARTS = 2 };
  const int64_t len[B] = {4, 0, 7};
  int64_t *cu = cumulative(len, B);
  rng r = {seed_base + 99};
  attn_params pad, var;
  attn_params_init(&pad, B, H, H, L, L, 8, DV);
  pad.q_len = len;
  float o[PARTS][B * H * L * DV], lse[PARTS][B * H * L], dout[B * H * L * DV];
  for (int k = 0; k < PARTS; k++) {
    for (int i = 0; i < B * H * L * DV; i++)
      o[k][i] = rng_normal(&r);
    for (int i = 0; i < B * H * L; i++)
      lse[k][i] = i % 5 == 0 ? -INFINITY : rng_normal(&r);
  }
  for (int i = 0; i < B * H * L * DV; i++)
    dout[i] = rng_normal(&r);
  var = pad;
  var.q_len = NULL, var.cu_seqlens_q = cu;
  ptensor po[PARTS], pl[PARTS], mo, ml, pdo;
  const float *vo[PARTS], *vl[PARTS];
  for (int k = 0; k < PARTS; k++) { /* [total, H, ·] */
    ptensor_make(&po[k], cu[B], H, DV, 0, 4, 0);
    ptensor_make(&pl[k], cu[B], H, 1, 0, 4, 0);
    pack_from(&po[k], cu, o[k], pad.o_stride, 4, B, len);
    pack_from(&pl[k], cu, lse[k], pad.lse_stride, 3, B, len);
    vo[k] = (const float *)(void *)po[k].data, vl[k] = (const float *)(void *)pl[k].data;
  }
  memcpy(var.o_stride, po[0].stride, sizeof var.o_stride);
  lse_strides(&pl[0], var.lse_stride);
  float mo_pad[B * H * L * DV], ml_pad[B * H * L];
  const float *pad_o[PARTS] = {o[0], o[1]}, *pad_l[PARTS] = {lse[0], lse[1]};
  CHECK(attn_merge(&pad, PARTS, pad_o, pad_l, mo_pad, ml_pad) == ATTN_STATUS_OK);
  ptensor_make(&mo, cu[B], H, DV, 0, 4, 1);
  ptensor_make(&ml, cu[B], H, 1, 0, 4, 1);
  CHECKF(attn_merge(&var, PARTS, vo, vl, (float *)(void *)mo.data, (float *)(void *)ml.data) ==
             ATTN_STATUS_OK,
         "%s", attn_last_error());
  CHECK(ptensor_written(&mo, "merged o") && ptensor_written(&ml, "merged lse"));
  CHECK(same_rows(&mo, cu, mo_pad, B, L, len, "merged o") &&
        same_rows(&ml, cu, ml_pad, B, L, len, "merged lse"));

  /* merge backward: dO of the merged result into the parts */
  float dpo_pad[PARTS][B * H * L * DV], dpl_pad[PARTS][B * H * L];
  float *dpo_p[PARTS] = {dpo_pad[0], dpo_pad[1]}, *dpl_p[PARTS] = {dpl_pad[0], dpl_pad[1]};
  CHECK(attn_merge_backward(&pad, PARTS, pad_o, pad_l, mo_pad, ml_pad, dout, NULL, dpo_p, dpl_p) ==
        ATTN_STATUS_OK);
  ptensor_make(&pdo, cu[B], H, DV, 0, 4, 0);
  memcpy(var.dout_stride, pdo.stride, sizeof var.dout_stride);
  pack_from(&pdo, cu, dout, pad.dout_stride, 4, B, len);
  ptensor dpo[PARTS], dpl[PARTS];
  float *dpo_v[PARTS], *dpl_v[PARTS];
  for (int k = 0; k < PARTS; k++) {
    ptensor_make(&dpo[k], cu[B], H, DV, 0, 4, 1);
    ptensor_make(&dpl[k], cu[B], H, 1, 0, 4, 1);
    dpo_v[k] = (float *)(void *)dpo[k].data, dpl_v[k] = (float *)(void *)dpl[k].data;
  }
  CHECKF(attn_merge_backward(&var, PARTS, vo, vl, (const float *)(void *)mo.data,
                             (const float *)(void *)ml.data, (const float *)(void *)pdo.data, NULL,
                             dpo_v, dpl_v) == ATTN_STATUS_OK,
         "%s", attn_last_error());
  for (int k = 0; k < PARTS; k++)
    CHECK(ptensor_written(&dpo[k], "do_parts") && ptensor_written(&dpl[k], "dlse_parts") &&
          same_rows(&dpo[k], cu, dpo_pad[k], B, L, len, "do_parts") &&
          same_rows(&dpl[k], cu, dpl_pad[k], B, L, len, "dlse_parts"));

  /* the sinks' gradient */
  const float sinks[H] = {0.5f, -1.0f};
  pad.sinks = var.sinks = sinks;
  float ds_pad[H], ds_var[H];
  CHECK(attn_backward_sinks(&pad, mo_pad, ml_pad, dout, ds_pad) == ATTN_STATUS_OK);
  CHECKF(attn_backward_sinks(&var, (const float *)(void *)mo.data, (const float *)(void *)ml.data,
                             (const float *)(void *)pdo.data, ds_var) == ATTN_STATUS_OK,
         "%s", attn_last_error());
  CHECK(memcmp(ds_pad, ds_var, sizeof ds_pad) == 0);

  for (int k = 0; k < PARTS; k++)
    ptensor_free(&po[k]), ptensor_free(&pl[k]), ptensor_free(&dpo[k]), ptensor_free(&dpl[k]);
  ptensor_free(&mo), ptensor_free(&ml), ptensor_free(&pdo);
  free(cu);
}

/* ---- errors: a clear message, nothing written ---- */

static int msg_has(const char *part) {
  const int ok = strstr(attn_last_error(), part) != NULL;
  if (!ok) fprintf(stderr, "  message: %s\n", attn_last_error());
  return ok;
}

static void test_errors(void) {
  enum { B = 2, H = 2, L = 6, D = 4, TOTAL = 9 };
  float q[TOTAL * H * D], k[TOTAL * H * D], v[TOTAL * H * D], o[TOTAL * H * D], lse[TOTAL * H];
  for (int i = 0; i < TOTAL * H * D; i++)
    q[i] = 0.1f * (float)(i % 7), k[i] = 0.2f * (float)(i % 5), v[i] = (float)i;
  int64_t cu[B + 1] = {0, 3, 9};
  attn_params p;
  attn_params_init(&p, B, H, H, L, L, D, D);
  p.cu_seqlens_q = p.cu_seqlens_k = cu;
  attn_strides_blhd(p.q_stride, H, TOTAL, D), attn_strides_blhd(p.k_stride, H, TOTAL, D);
  attn_strides_blhd(p.v_stride, H, TOTAL, D), attn_strides_blhd(p.o_stride, H, TOTAL, D);
  p.lse_stride[0] = 0, p.lse_stride[1] = TOTAL, p.lse_stride[2] = 1;
  for (int i = 0; i < TOTAL * H * D; i++)
    o[i] = -7.0f;
  CHECKF(attn_forward(&p, q, k, v, o, lse, NULL) == ATTN_STATUS_OK, "%s", attn_last_error());
  unsigned char before[sizeof o];
  memcpy(before, o, sizeof o);

  const int64_t lens[B] = {3, 6};
  attn_params e = p;
  e.q_len = lens;
  CHECK(attn_forward(&e, q, k, v, o, lse, NULL) == ATTN_STATUS_INVALID_ARGUMENT);
  CHECK(msg_has("cu_seqlens_q and q_len are both given"));
  e = p, e.kv_len = lens;
  CHECK(attn_forward(&e, q, k, v, o, lse, NULL) == ATTN_STATUS_INVALID_ARGUMENT);
  CHECK(msg_has("cu_seqlens_k and kv_len are both given"));
  int64_t bad[B + 1] = {1, 3, 9};
  e = p, e.cu_seqlens_q = bad;
  CHECK(attn_forward(&e, q, k, v, o, lse, NULL) == ATTN_STATUS_INVALID_ARGUMENT);
  CHECK(msg_has("cu_seqlens_q[0] (1) must be 0"));
  bad[0] = 0, bad[1] = 4, bad[2] = 3;
  e = p, e.cu_seqlens_k = bad;
  CHECK(attn_forward(&e, q, k, v, o, lse, NULL) == ATTN_STATUS_INVALID_ARGUMENT);
  CHECK(msg_has("cu_seqlens_k[2] - cu_seqlens_k[1] (3 - 4), the length of batch item 1, must be "
                "in [0, len_k = 6]"));
  bad[1] = 1, bad[2] = 8; /* item 1 has 7 > len_q queries */
  e = p, e.cu_seqlens_q = bad;
  CHECK(attn_forward(&e, q, k, v, o, lse, NULL) == ATTN_STATUS_INVALID_ARGUMENT);
  CHECK(msg_has("must be in [0, len_q = 6]"));
  e = p, e.causal = 1;
  CHECK(attn_forward(&e, q, k, v, o, lse, NULL) == ATTN_STATUS_INVALID_ARGUMENT);
  CHECK(msg_has("or cu_seqlens_q is given or cu_seqlens_k is given"));
  /* the default LSE strides [B, H, Lq] make the packed rows of two heads overlap */
  attn_params_init(&e, B, H, H, L, L, D, D);
  memcpy(e.q_stride, p.q_stride, sizeof e.q_stride),
      memcpy(e.o_stride, p.o_stride, sizeof e.o_stride);
  e.cu_seqlens_q = cu;
  CHECK(attn_forward(&e, q, q, q, o, lse, NULL) == ATTN_STATUS_INVALID_ARGUMENT);
  CHECK(msg_has("lse_stride[1] (6) makes output lse overlap itself"));
  /* the packed extent: cu_seqlens_q[B] rows; an output one row short of it overlaps Q */
  e = p;
  CHECK(attn_forward(&e, q, k, v, q + (TOTAL - 1) * H * D, NULL, NULL) ==
        ATTN_STATUS_INVALID_ARGUMENT);
  CHECK(msg_has("output o overlaps input q"));
  /* paged K and V address their keys through the table */
  int32_t table[B * 2] = {0, 1, 2, 3};
  static float pool[4 * H * 4 * D]; /* [page, head, slot, dim] */
  e = p, e.block_table = table, e.page_size = 4, e.num_pages = 4;
  CHECK(attn_forward(&e, q, k, v, o, lse, NULL) == ATTN_STATUS_INVALID_ARGUMENT);
  CHECK(msg_has("cu_seqlens_k and block_table are both given"));
  CHECK(memcmp(o, before, sizeof o) == 0);

  /* packed queries against a paged cache are fine: the keys of item b through its table row */
  e = p, e.cu_seqlens_k = NULL, e.kv_len = lens, e.block_table = table, e.page_size = 4;
  e.num_pages = 4, e.align = ATTN_ALIGN_BOTTOM_RIGHT, e.causal = 1;
  attn_strides_packed(e.k_stride, H, 4, D), attn_strides_packed(e.v_stride, H, 4, D);
  CHECKF(attn_forward(&e, q, pool, pool, o, lse, NULL) == ATTN_STATUS_OK, "%s", attn_last_error());
}

int main(int argc, char **argv) {
  seed_base = argc > 1 ? strtoull(argv[1], NULL, 10) : 0;
  printf("test_varlen: seed %llu\n", (unsigned long long)seed_base);
  t_check_kernel_selection();
  test_errors();
  test_merge_and_sinks();
  sweep_shapes();
  sweep_features();
  sweep_long_keys();
  printf("  %d packed cases\n", n_cases);
  return t_finish("test_varlen");
}
