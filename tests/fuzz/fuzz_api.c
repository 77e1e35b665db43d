/*
 * fuzz_api.c — libFuzzer target for the library's entry points. The input bytes choose a call:
 * sizes (valid and not), strides per tensor (packed, [B, L, H, D], padded, negative, zero, huge),
 * every option with valid and invalid values (sinks, dropout and query/key lengths included), the
 * types of Q, K and V (fp32, fp16, bf16, invalid), input data (NaN and inf included). Every tensor
 * is allocated to exactly its extent, so AddressSanitizer sees any read or write outside it. Then:
 *   - attn_forward_scratch_bytes / attn_backward_scratch_bytes agree with the calls on validity;
 *   - a refused call leaves every output byte as it was and says why, naming the function;
 *   - an accepted forward matches the ref kernel (NaN in the same places, values within a loose
 *     tolerance: the sweeps in test_kernels hold the tight one) and is bitwise the same with 1
 *     and 3 threads, and with narrow (16-bit, fp8) inputs bitwise the call on their fp32 widening;
 * attn_merge of its (O, LSE) with itself gives O and LSE + log 2 (in place too); the call with K
 * and V moved into shuffled pages of a drawn size (p.block_table) gives bitwise the same outputs,
 * and with one table entry out of range is refused without a write; the call with its sequences
 * packed (p.cu_seqlens_q, p.cu_seqlens_k) gives bitwise the same rows, and with an invalid offset
 * is refused without a write; an accepted backward (dBias too, when the call has a bias) is bitwise
 * the same with 1 and 3 threads and, on data without NaN or inf, matches the ref backward within
 * the same loose tolerance. Forward and backward again on a workspace of exactly the bytes the
 * scratch query returned give the same bits and allocate no block. Any violation aborts, which
 * libFuzzer reports with the input that caused it.
 */
#include "attn.h"
#include "fuzz_draw.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const attn_params *current; /* printed when a check fails */

static void dump4(const char *name, const int64_t *s, int n) {
  fprintf(stderr, " %s {", name);
  for (int d = 0; d < n; d++)
    fprintf(stderr, "%s%lld", d ? ", " : "", (long long)s[d]);
  fprintf(stderr, "}");
}

static void dump(const attn_params *p) {
  fprintf(stderr, "call: B %lld Hq %lld Hkv %lld Lq %lld Lk %lld D %lld Dv %lld\n",
          (long long)p->batch, (long long)p->heads_q, (long long)p->heads_kv, (long long)p->len_q,
          (long long)p->len_k, (long long)p->dim, (long long)p->dim_v);
  dump4("q", p->q_stride, 4), dump4("k", p->k_stride, 4), dump4("v", p->v_stride, 4);
  dump4("o", p->o_stride, 4), dump4("lse", p->lse_stride, 3), dump4("P", p->probs_stride, 4);
  fprintf(stderr,
          "\n causal %d align %d window %lld,%lld softcap %g scale %s%g alibi %s "
          "kv_len %s q_len %s mask %s bias %s threads %d kernel %d types %d %d %d\n",
          p->causal, (int)p->align, (long long)p->window_left, (long long)p->window_right,
          (double)p->softcap, p->has_scale ? "" : "default ", (double)p->scale,
          p->alibi_slopes ? "yes" : "no", p->kv_len ? "yes" : "no", p->q_len ? "yes" : "no",
          p->mask ? "yes" : "no", p->bias ? "yes" : "no", p->threads, (int)p->kernel,
          (int)p->q_dtype, (int)p->k_dtype, (int)p->v_dtype);
  if (p->dropout != 0.0f)
    fprintf(stderr, " dropout %g seed %llu", (double)p->dropout,
            (unsigned long long)p->dropout_seed);
  if (p->mask) dump4("mask", p->mask_stride, 4);
  if (p->bias) dump4("bias", p->bias_stride, 4);
  if (p->kv_len)
    for (int64_t b = 0; b < p->batch; b++)
      fprintf(stderr, " kv_len[%lld] = %lld", (long long)b, (long long)p->kv_len[b]);
  if (p->q_len)
    for (int64_t b = 0; b < p->batch; b++)
      fprintf(stderr, " q_len[%lld] = %lld", (long long)b, (long long)p->q_len[b]);
  fputc('\n', stderr);
}

#define REQUIRE(cond, ...)                                                                         \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "fuzz_api: " __VA_ARGS__);                                                   \
      fputc('\n', stderr);                                                                         \
      if (current) dump(current);                                                                  \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

enum { MAX_PAIRS = 1 << 17 };

static int64_t pick_len(bytes *b) {
  static const int64_t lens[] = {0, 1, 2, 3, 5, 7, 16, 17, 31, 64, 65, 97, 130, 1030};
  return lens[next(b) % (sizeof lens / sizeof lens[0])];
}

/* Bytes per element of an input of type t (an invalid type is refused before any read). */
/* Bytes per element of an input of type t; 4 for a value that is not a type (the call is refused).
 */
static size_t esize_of(attn_dtype t) { return attn_dtype_size(t) ? attn_dtype_size(t) : 4; }

/* Fills the whole extent (fp32, or rounded to the narrow type t). */
static void fill(bytes *b, tensor *t, float scale, int specials, attn_dtype type) {
  const size_t n = t->size / esize_of(type);
  if (n == 0) return; /* no element: no allocation either */
  float *x = esize_of(type) == 4 ? t->buf : malloc(n * sizeof(float));
  if (!x) abort();
  uint32_t st = 0x9e3779b9u ^ next(b) ^ (uint32_t)t->size;
  for (size_t i = 0; i < n; i++) {
    st = st * 1664525u + 1013904223u;
    x[i] = scale * ((float)(st >> 8) / 16777216.0f * 2.0f - 1.0f);
  }
  if (specials && n > 0) { /* a NaN or an inf somewhere */
    const unsigned k = next(b);
    x[(k * 7919u) % n] = (k & 1) ? NAN : INFINITY;
  }
  if (x != t->buf) {
    attn_from_f32(type, x, t->buf, n);
    free(x);
  }
}

typedef struct call_out {
  tensor o, lse, probs;
} call_out;

static int make_out(call_out *c, const attn_params *p, int want_lse, int want_probs) {
  const int64_t no[4] = {p->batch, p->heads_q, p->len_q, p->dim_v};
  const int64_t nl[3] = {p->batch, p->heads_q, p->len_q};
  const int64_t np[4] = {p->batch, p->heads_q, p->len_q, p->len_k};
  memset(c, 0, sizeof *c);
  if (!make(&c->o, 4, no, p->o_stride, 4)) return 0;
  if (want_lse && !make(&c->lse, 3, nl, p->lse_stride, 4)) return 0;
  if (want_probs && !make(&c->probs, 4, np, p->probs_stride, 4)) return 0;
  poison(&c->o), poison(&c->lse), poison(&c->probs);
  return 1;
}

static void drop_out(call_out *c) { drop(&c->o), drop(&c->lse), drop(&c->probs); }

/* Set while the data hold an inf: then a kernel's NaN where ref has ±inf is the header's fp32
 * rule (a weight that underflows to 0 meets an infinite V: 0·inf), not a defect. */
static int inf_in_data;

/* Same bits, or both NaN, or within the loose tolerance. */
static int close_enough(float a, float r) {
  if (inf_in_data && isnan(a) && isinf(r)) return 1;
  if (isnan(a) || isnan(r)) return isnan(a) && isnan(r);
  if (isinf(a) || isinf(r)) return a == r;
  return fabsf(a - r) <= 1e-3f + 1e-3f * fabsf(r);
}

/* The accepted call p (outputs a) again with K and V in pools of pages of a drawn size, the pages
 * shuffled, unused pool bytes NaN, table entries past each key length out of range: bitwise the
 * same outputs. Then one used entry out of range: refused, nothing written. */
static void check_paged(bytes *b, const attn_params *p, const tensor *q, const tensor *k,
                        const tensor *v, const call_out *a, int want_lse, int want_probs) {
  const int64_t B = p->batch, H = p->heads_kv, Lk = p->len_k;
  if (B == 0 || Lk == 0) return;
  const int64_t ps = 1 + (int64_t)(next(b) % (unsigned)(Lk + 1)), per = (Lk - 1) / ps + 1;
  const int64_t row = per + next(b) % 3, n_pages = B * per + next(b) % 3;
  int32_t *table = malloc(sizeof(int32_t) * (size_t)(B * row));
  int32_t *order = malloc(sizeof(int32_t) * (size_t)n_pages);
  if (!table || !order) abort();
  for (int64_t e = 0; e < n_pages; e++)
    order[e] = (int32_t)e;
  for (int64_t e = n_pages - 1; e > 0; e--) {
    const int64_t r = (int64_t)((next(b) | next(b) << 8) % (unsigned)(e + 1));
    const int32_t t = order[e];
    order[e] = order[r], order[r] = t;
  }
  static const int32_t unused[] = {-1, INT32_MAX, INT32_MIN};
  int64_t at = 0, first_used = -1;
  for (int64_t bi = 0; bi < B; bi++)
    for (int64_t e = 0; e < row; e++) {
      const int used = e * ps < (p->kv_len ? p->kv_len[bi] : Lk);
      table[bi * row + e] = used ? order[at++] : unused[e % 3];
      if (used && first_used < 0) first_used = bi * row + e;
    }
  free(order);
  /* the pools, [n_pages, Hkv, page, ·] packed; 0xff bytes are NaN in all three types */
  const tensor *src[2] = {k, v};
  const int64_t n[2] = {p->dim, p->dim_v}, *from_stride[2] = {p->k_stride, p->v_stride};
  const size_t es[2] = {esize_of(p->k_dtype), esize_of(p->v_dtype)};
  attn_params pp = *p;
  int64_t *to_stride[2] = {pp.k_stride, pp.v_stride};
  tensor pool[2];
  int ok = 1;
  for (int i = 0; i < 2; i++) {
    const int64_t shape[4] = {n_pages, H, ps, n[i]};
    attn_strides_packed(to_stride[i], H, ps, n[i]);
    ok &= make(&pool[i], 4, shape, to_stride[i], es[i]);
    if (!ok) {
      if (i == 1) drop(&pool[0]);
      free(table);
      return;
    }
    if (pool[i].buf) memset(pool[i].buf, 0xff, pool[i].size);
    for (int64_t bi = 0; bi < B; bi++)
      for (int64_t h = 0; h < H; h++)
        for (int64_t j = 0; j < (p->kv_len ? p->kv_len[bi] : Lk); j++)
          for (int64_t d = 0; d < n[i]; d++) {
            const int64_t page = table[bi * row + j / ps];
            const int64_t to =
                page * to_stride[i][0] + h * to_stride[i][1] + j % ps * to_stride[i][2] + d;
            const int64_t from = bi * from_stride[i][0] + h * from_stride[i][1] +
                                 j * from_stride[i][2] + d * from_stride[i][3];
            memcpy((char *)pool[i].base + to * (int64_t)es[i],
                   (const char *)src[i]->base + from * (int64_t)es[i], es[i]);
          }
  }
  pp.block_table = table;
  pp.block_table_stride = row == per ? -1 : row;
  pp.page_size = ps;
  pp.num_pages = n_pages;
  call_out c;
  if (make_out(&c, p, want_lse, want_probs)) {
    const attn_status st =
        attn_forward(&pp, fp(q), fp(&pool[0]), fp(&pool[1]), fp(&c.o), fp(&c.lse), fp(&c.probs));
    REQUIRE(st == ATTN_STATUS_OK, "the paged call (page size %lld) refused: %s", (long long)ps,
            attn_last_error());
    REQUIRE((!c.o.buf || !memcmp(c.o.buf, a->o.buf, c.o.size)) &&
                (!c.lse.buf || !memcmp(c.lse.buf, a->lse.buf, c.lse.size)) &&
                (!c.probs.buf || !memcmp(c.probs.buf, a->probs.buf, c.probs.size)),
            "paged K and V (page size %lld) differ from the unpaged call", (long long)ps);
    if (first_used >= 0) {
      poison(&c.o), poison(&c.lse), poison(&c.probs);
      table[first_used] = next(b) % 2 ? -1 : (int32_t)n_pages;
      REQUIRE(attn_forward(&pp, fp(q), fp(&pool[0]), fp(&pool[1]), fp(&c.o), fp(&c.lse),
                           fp(&c.probs)) == ATTN_STATUS_INVALID_ARGUMENT &&
                  strstr(attn_last_error(), "block_table[") != NULL,
              "an out-of-range table entry was not refused: %s", attn_last_error());
      REQUIRE(untouched(&c.o) && untouched(&c.lse) && untouched(&c.probs),
              "a refused paged call wrote an output");
    }
  }
  drop_out(&c);
  drop(&pool[0]), drop(&pool[1]);
  free(table);
}

/* Copies rows [0, len[bi]) of every (bi, h) of src (strides fs) into the packed tensor dst
 * (strides ts: row cu[bi] + i); es bytes per element, n per row. */
static void pack_rows(const tensor *src, const int64_t *fs, tensor *dst, const int64_t *ts,
                      int64_t B, int64_t H, int64_t n, const int64_t *cu, size_t es) {
  for (int64_t bi = 0; bi < B; bi++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t i = 0; i < cu[bi + 1] - cu[bi]; i++)
        for (int64_t d = 0; d < n; d++)
          memcpy((char *)dst->base + (h * ts[1] + (cu[bi] + i) * ts[2] + d * ts[3]) * (int64_t)es,
                 (const char *)src->base +
                     (bi * fs[0] + h * fs[1] + i * fs[2] + d * fs[3]) * (int64_t)es,
                 es);
}

/* 1 if every packed row of x (strides xs, row cu[bi] + i) equals the padded tensor a's (strides
 * as) bitwise; rank 3 (LSE) has no element dimension. */
static int same_packed_rows(const tensor *x, const int64_t *xs, const tensor *a, const int64_t *as,
                            int rank, int64_t B, int64_t H, int64_t n, const int64_t *cu) {
  for (int64_t bi = 0; bi < B; bi++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t i = 0; i < cu[bi + 1] - cu[bi]; i++)
        for (int64_t d = 0; d < n; d++) {
          const int64_t at = h * xs[1] + (cu[bi] + i) * xs[2] + (rank > 3 ? d * xs[3] : 0);
          const int64_t from = bi * as[0] + h * as[1] + i * as[2] + (rank > 3 ? d * as[3] : 0);
          if (memcmp(fp(x) + at, fp(a) + from, 4) != 0) return 0;
        }
  return 1;
}

/* The accepted call p (outputs a) again with its sequences packed: queries (cu_seqlens_q from
 * q_len, or Lq each), keys (cu_seqlens_k from kv_len, or Lk each) or both, the packed Q, K, V, O
 * and LSE [total, H, ·] tensors of exactly their size: bitwise the same rows, P the same. Then
 * an invalid cu_seqlens_q: refused, nothing written. */
static void check_packed(bytes *b, const attn_params *p, const tensor *q, const tensor *k,
                         const tensor *v, const call_out *a, int want_lse, int want_probs) {
  const int64_t B = p->batch, Hq = p->heads_q, Hkv = p->heads_kv;
  if (p->block_table || B == 0) return;
  const unsigned sides = 1 + next(b) % 3; /* bit 0: queries packed, bit 1: keys */
  int64_t cu_q[4] = {0}, cu_k[4] = {0};   /* B ≤ 2 */
  for (int64_t bi = 0; bi < B; bi++) {
    cu_q[bi + 1] = cu_q[bi] + (p->q_len ? p->q_len[bi] : p->len_q);
    cu_k[bi + 1] = cu_k[bi] + (p->kv_len ? p->kv_len[bi] : p->len_k);
  }
  attn_params pp = *p;
  if (pp.align == ATTN_ALIGN_UNSET) pp.align = ATTN_ALIGN_TOP_LEFT; /* accepted: they coincide */
  const int64_t tq = cu_q[B], tk = cu_k[B];
  tensor t[5]; /* Q, K, V, O, LSE */
  memset(t, 0, sizeof t);
  int ok = 1;
  if (sides & 1) {
    pp.q_len = NULL, pp.cu_seqlens_q = cu_q;
    const int64_t nq[4] = {1, Hq, tq, p->dim}, no[4] = {1, Hq, tq, p->dim_v};
    const int64_t nl[3] = {1, Hq, tq};
    attn_strides_blhd(pp.q_stride, Hq, tq, p->dim),
        attn_strides_blhd(pp.o_stride, Hq, tq, p->dim_v);
    pp.lse_stride[0] = 0, pp.lse_stride[1] = 1, pp.lse_stride[2] = Hq;
    ok &= make(&t[0], 4, nq, pp.q_stride, esize_of(p->q_dtype)) &&
          make(&t[3], 4, no, pp.o_stride, 4) && (!want_lse || make(&t[4], 3, nl, pp.lse_stride, 4));
    if (ok && t[0].buf)
      pack_rows(q, p->q_stride, &t[0], pp.q_stride, B, Hq, p->dim, cu_q, esize_of(p->q_dtype));
  }
  if (sides & 2) {
    pp.kv_len = NULL, pp.cu_seqlens_k = cu_k;
    const int64_t nk[4] = {1, Hkv, tk, p->dim}, nv[4] = {1, Hkv, tk, p->dim_v};
    attn_strides_blhd(pp.k_stride, Hkv, tk, p->dim),
        attn_strides_packed(pp.v_stride, Hkv, tk, p->dim_v);
    ok &= make(&t[1], 4, nk, pp.k_stride, esize_of(p->k_dtype)) &&
          make(&t[2], 4, nv, pp.v_stride, esize_of(p->v_dtype));
    if (ok && t[1].buf)
      pack_rows(k, p->k_stride, &t[1], pp.k_stride, B, Hkv, p->dim, cu_k, esize_of(p->k_dtype));
    if (ok && t[2].buf)
      pack_rows(v, p->v_stride, &t[2], pp.v_stride, B, Hkv, p->dim_v, cu_k, esize_of(p->v_dtype));
  }
  call_out c; /* the padded outputs (O, LSE when queries are not packed; P always) */
  if (ok && make_out(&c, p, want_lse, want_probs)) {
    poison(&t[3]), poison(&t[4]);
    tensor *o = sides & 1 ? &t[3] : &c.o, *l = sides & 1 ? &t[4] : &c.lse;
    const attn_status st = attn_forward(&pp, fp(sides & 1 ? &t[0] : q), fp(sides & 2 ? &t[1] : k),
                                        fp(sides & 2 ? &t[2] : v), fp(o), fp(l), fp(&c.probs));
    REQUIRE(st == ATTN_STATUS_OK, "the packed call (sides %u) refused: %s", sides,
            attn_last_error());
    int same = !c.probs.buf || !memcmp(c.probs.buf, a->probs.buf, c.probs.size);
    if (sides & 1)
      same = same &&
             (!t[3].buf ||
              same_packed_rows(&t[3], pp.o_stride, &a->o, p->o_stride, 4, B, Hq, p->dim_v, cu_q)) &&
             (!t[4].buf ||
              same_packed_rows(&t[4], pp.lse_stride, &a->lse, p->lse_stride, 3, B, Hq, 1, cu_q));
    else
      same = same && (!c.o.buf || !memcmp(c.o.buf, a->o.buf, c.o.size)) &&
             (!c.lse.buf || !memcmp(c.lse.buf, a->lse.buf, c.lse.size));
    REQUIRE(same, "packed sequences (sides %u) differ from the padded call", sides);
    if (sides & 1) { /* an invalid offset: refused, nothing written */
      poison(&t[3]), poison(&t[4]), poison(&c.probs);
      int64_t bad[4];
      memcpy(bad, cu_q, sizeof bad);
      bad[0] = 1;
      pp.cu_seqlens_q = bad;
      REQUIRE(attn_forward(&pp, fp(&t[0]), fp(sides & 2 ? &t[1] : k), fp(sides & 2 ? &t[2] : v),
                           fp(&t[3]), fp(&t[4]), fp(&c.probs)) == ATTN_STATUS_INVALID_ARGUMENT &&
                  strstr(attn_last_error(), "cu_seqlens_q[0] (1) must be 0") != NULL,
              "cu_seqlens_q[0] = 1 was not refused: %s", attn_last_error());
      REQUIRE(untouched(&t[3]) && untouched(&t[4]) && untouched(&c.probs),
              "a refused packed call wrote an output");
    }
  }
  drop_out(&c);
  for (int i = 0; i < 5; i++)
    drop(&t[i]);
}

/* src/internal.h: the library runs calls of under ~100 µs of one core's work on the calling
 * thread alone; the fuzzer's calls are that small, so it turns the threshold off to compare 1
 * and 3 threads for real. */
void attn__set_serial_us(double us);
/* src/internal.h: blocks a call allocated because its workspace was too small (a scratch query
 * that undercounts); never, when the workspace has the bytes the query returned. */
long attn__arena_fallbacks(void);

/* A workspace of exactly n bytes (the queries return whole 64-byte blocks), 0xff in every byte. */
static void *workspace_of(size_t n) {
  REQUIRE(n % 64 == 0, "scratch query %zu is not a multiple of 64", n);
  void *w = aligned_alloc(64, n ? n : 64);
  if (w) memset(w, 0xff, n);
  return w;
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  attn__set_serial_us(0);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  bytes b = {data, size, 0};
  attn_params p;
  /* sizes: mostly valid, sometimes not */
  const int64_t hkv = 1 + next(&b) % 3, batch = next(&b) % 3;
  int64_t hq = hkv * (1 + next(&b) % 3), dim = 1 + next(&b) % 40, dim_v = next(&b) % 40;
  const unsigned bad = next(&b);
  if (bad % 16 == 1) hq = hkv + 1;
  if (bad % 16 == 2) dim = 0;
  if (bad % 16 == 3) dim_v = -1;
  const int64_t lq = pick_len(&b), lk = pick_len(&b);
  if (batch * hq * lq * lk > MAX_PAIRS) return 0;
  attn_params_init(&p, batch, hq, bad % 16 == 4 ? 0 : hkv, lq, lk, dim, dim_v);
  if (bad % 16 == 5) p.len_q = -1;

  const int64_t nq[4] = {batch, hq, lq, dim}, nk[4] = {batch, hkv, lk, dim};
  const int64_t nv[4] = {batch, hkv, lk, dim_v > 0 ? dim_v : 0};
  const int64_t no[4] = {batch, hq, lq, dim_v > 0 ? dim_v : 0}, nl[3] = {batch, hq, lq};
  const int64_t nm[4] = {batch, hq, lq, lk};
  pick_strides(&b, 4, nq, p.q_stride);
  pick_strides(&b, 4, nk, p.k_stride);
  pick_strides(&b, 4, nv, p.v_stride);
  pick_strides(&b, 4, no, p.o_stride);
  pick_strides(&b, 3, nl, p.lse_stride);
  pick_strides(&b, 4, nm, p.probs_stride);

  /* options */
  const unsigned opt = next(&b) | next(&b) << 8 | next(&b) << 16;
  p.causal = (int)(opt % 3 == 2 ? (opt % 5 == 0 ? 2 : 1) : 0);
  p.align = (attn_align)((opt >> 2) % 4);
  if ((opt >> 4) % 3 == 0) p.window_left = (int64_t)(next(&b) % 9) - 2;
  if ((opt >> 6) % 3 == 0) p.window_right = (int64_t)(next(&b) % 9) - 2;
  static const float softcaps[] = {0, 0, 0, 5.0f, 30.0f, -1.0f, NAN};
  p.softcap = softcaps[(opt >> 8) % 7];
  static const float scales[] = {0.5f, -0.25f, 0.0f, 2.0f, NAN, INFINITY};
  if ((opt >> 11) % 3 == 0) p.has_scale = 1, p.scale = scales[next(&b) % 6];
  static const int threads[] = {0, 1, 2, 3, -1, ATTN_MAX_THREADS + 1};
  p.threads = threads[(opt >> 13) % 6];
  const unsigned kern = (opt >> 16) % 8;
  p.kernel = kern < 5 ? (attn_kernel)kern : kern == 5 ? ATTN_KERNEL_COUNT_ : ATTN_KERNEL_AUTO;
  const int want_lse = (opt >> 19) & 1, want_probs = (opt >> 20) % 4 == 0;
  /* input types: mostly fp32, sometimes 16-bit or fp8, rarely not a type at all */
  static const attn_dtype types[] = {ATTN_DTYPE_F32,    ATTN_DTYPE_F32,   ATTN_DTYPE_F32,
                                     ATTN_DTYPE_F16,    ATTN_DTYPE_BF16,  ATTN_DTYPE_F8E4M3,
                                     ATTN_DTYPE_F8E5M2, ATTN_DTYPE_COUNT_};
  const unsigned tb = next(&b) | next(&b) << 8;
  p.q_dtype = types[tb % 8], p.k_dtype = types[tb / 8 % 8], p.v_dtype = types[tb / 64 % 8];
  const int wide =
      p.q_dtype != ATTN_DTYPE_F32 || p.k_dtype != ATTN_DTYPE_F32 || p.v_dtype != ATTN_DTYPE_F32;

  int64_t kv_len[3], q_len[3];
  float slopes[9], sinks[9];
  tensor q, k, v, mask, bias, dout;
  memset(&q, 0, sizeof q), memset(&k, 0, sizeof k), memset(&v, 0, sizeof v);
  memset(&mask, 0, sizeof mask), memset(&bias, 0, sizeof bias), memset(&dout, 0, sizeof dout);
  if ((opt >> 22) & 1) {
    for (int64_t i = 0; i < batch; i++)
      kv_len[i] = (int64_t)(next(&b) % (unsigned)(lk + 2)) - (next(&b) % 17 == 0);
    p.kv_len = kv_len;
  }
  if (next(&b) % 4 == 0) { /* padding query rows; rarely an invalid length */
    for (int64_t i = 0; i < batch; i++)
      q_len[i] = (int64_t)(next(&b) % (unsigned)(lq + 2)) - (next(&b) % 17 == 0);
    p.q_len = q_len;
  }
  if (next(&b) % 4 == 0) {
    for (int64_t h = 0; h < hq && h < 9; h++)
      slopes[h] = (float)(next(&b) % 8) * 0.125f;
    if (next(&b) % 8 == 0) slopes[0] = NAN;
    p.alibi_slopes = slopes;
  }
  if (next(&b) % 4 == 0) { /* sinks: finite, none (−inf), and rarely invalid (NaN, +inf) */
    static const float values[] = {0.5f, -INFINITY, 3.0f, -2.0f, 40.0f, NAN, INFINITY};
    for (int64_t h = 0; h < hq && h < 9; h++)
      sinks[h] = values[next(&b) % (next(&b) % 8 == 0 ? 7 : 5)];
    p.sinks = sinks;
  }
  if (next(&b) % 5 == 0) { /* dropout: valid, and rarely not a probability */
    static const float values[] = {0.1f, 0.5f, 0.95f, -0.1f, 1.0f, NAN};
    p.dropout = values[next(&b) % (next(&b) % 8 == 0 ? 6 : 3)];
    p.dropout_seed = (uint64_t)next(&b) << 40 | next(&b);
  }
  const unsigned mb = next(&b);
  if (mb % 4 == 0) pick_strides(&b, 4, nm, p.mask_stride);
  if (mb % 5 == 0) pick_strides(&b, 4, nm, p.bias_stride);
  if (!make(&q, 4, nq, p.q_stride, esize_of(p.q_dtype)) ||
      !make(&k, 4, nk, p.k_stride, esize_of(p.k_dtype)) ||
      !make(&v, 4, nv, p.v_stride, esize_of(p.v_dtype)) ||
      (mb % 4 == 0 && !make(&mask, 4, nm, p.mask_stride, 1)) ||
      (mb % 5 == 0 && !make(&bias, 4, nm, p.bias_stride, 4))) {
    /* too large for the harness (or overflowing): only the validation without pointers */
    size_t bytes_needed;
    (void)attn_forward_scratch_bytes(&p, want_probs, &bytes_needed);
    drop(&q), drop(&k), drop(&v), drop(&mask), drop(&bias);
    return 0;
  }
  const int specials = next(&b) % 6 == 0;
  inf_in_data = specials;
  fill(&b, &q, 1.0f, specials, p.q_dtype), fill(&b, &k, 1.0f, specials, p.k_dtype);
  fill(&b, &v, 1.0f, specials, p.v_dtype);
  if (mask.buf)
    for (size_t i = 0; i < mask.size; i++)
      ((uint8_t *)mask.buf)[i] = (uint8_t)((i * 2654435761u >> 7) % 3 != 0);
  if (bias.buf) {
    fill(&b, &bias, 3.0f, 0, ATTN_DTYPE_F32);
    float *x = bias.buf;
    for (size_t i = 0; i < bias.size / 4; i += 5)
      x[i] = -INFINITY;
    if (specials) x[0] = NAN;
  }
  p.mask = mask.base, p.bias = bias.base;

  current = &p;
  size_t scratch = 0;
  const attn_status st_scratch = attn_forward_scratch_bytes(&p, want_probs, &scratch);
  call_out a, r;
  memset(&a, 0, sizeof a), memset(&r, 0, sizeof r);
  const int alias = next(&b) % 16 == 0; /* O over Q's bytes: must be refused */
  if (!make_out(&a, &p, want_lse, want_probs) || !make_out(&r, &p, want_lse, want_probs)) {
    drop_out(&a), drop_out(&r), drop(&q), drop(&k), drop(&v), drop(&mask), drop(&bias);
    return 0;
  }
  float *o_ptr =
      alias && q.buf && a.o.size <= q.size && esize_of(p.q_dtype) == 4 ? fp(&q) : fp(&a.o);
  const attn_status st = attn_forward(&p, fp(&q), fp(&k), fp(&v), o_ptr, fp(&a.lse), fp(&a.probs));
  REQUIRE((st == ATTN_STATUS_OK) == (st_scratch == ATTN_STATUS_OK) ||
              st == ATTN_STATUS_INVALID_ARGUMENT, /* pointers are checked by the call only */
          "scratch_bytes said %d, attn_forward %d (%s)", st_scratch, st, attn_last_error());
  if (st != ATTN_STATUS_OK) {
    REQUIRE(strncmp(attn_last_error(), "attn_forward", 12) == 0, "message '%s'", attn_last_error());
    REQUIRE(untouched(&a.o) && untouched(&a.lse) && untouched(&a.probs),
            "refused call (%s) wrote an output", attn_last_error());
  } else if (o_ptr == fp(&a.o)) {
    /* the ref kernel on the same call, and the same kernel on 1 and 3 threads */
    attn_params pr = p;
    pr.kernel = ATTN_KERNEL_REF;
    REQUIRE(attn_forward(&pr, fp(&q), fp(&k), fp(&v), fp(&r.o), fp(&r.lse), fp(&r.probs)) ==
                ATTN_STATUS_OK,
            "ref refused an accepted call: %s", attn_last_error());
    for (size_t i = 0; i < a.o.size / 4; i++)
      REQUIRE(close_enough(((float *)a.o.buf)[i], ((float *)r.o.buf)[i]),
              "O[%zu] = %g, ref %g (kernel %d)", i, ((float *)a.o.buf)[i], ((float *)r.o.buf)[i],
              (int)p.kernel);
    for (size_t i = 0; i < a.lse.size / 4; i++)
      REQUIRE(close_enough(((float *)a.lse.buf)[i], ((float *)r.lse.buf)[i]),
              "LSE[%zu] = %g, ref %g", i, ((float *)a.lse.buf)[i], ((float *)r.lse.buf)[i]);
    for (size_t i = 0; i < a.probs.size / 4; i++)
      REQUIRE(close_enough(((float *)a.probs.buf)[i], ((float *)r.probs.buf)[i]),
              "P[%zu] = %g, ref %g", i, ((float *)a.probs.buf)[i], ((float *)r.probs.buf)[i]);
    if (wide) { /* the same call on the fp32 widening of the narrow inputs: the same bits */
      tensor w[3];
      const tensor *in[3] = {&q, &k, &v};
      const attn_dtype t[3] = {p.q_dtype, p.k_dtype, p.v_dtype};
      const int64_t *shapes[3] = {nq, nk, nv}, *strides[3] = {p.q_stride, p.k_stride, p.v_stride};
      memset(w, 0, sizeof w);
      int ok = 1;
      for (int i = 0; i < 3; i++) {
        ok &= make(&w[i], 4, shapes[i], strides[i], 4);
        if (ok && w[i].buf) attn_to_f32(t[i], in[i]->buf, w[i].buf, w[i].size / 4);
      }
      call_out c;
      memset(&c, 0, sizeof c);
      if (ok && make_out(&c, &p, want_lse, want_probs)) {
        attn_params pw = p;
        pw.q_dtype = pw.k_dtype = pw.v_dtype = ATTN_DTYPE_F32;
        REQUIRE(attn_forward(&pw, fp(&w[0]), fp(&w[1]), fp(&w[2]), fp(&c.o), fp(&c.lse),
                             fp(&c.probs)) == ATTN_STATUS_OK,
                "the fp32 widening refused: %s", attn_last_error());
        REQUIRE((!c.o.buf || !memcmp(c.o.buf, a.o.buf, c.o.size)) &&
                    (!c.lse.buf || !memcmp(c.lse.buf, a.lse.buf, c.lse.size)) &&
                    (!c.probs.buf || !memcmp(c.probs.buf, a.probs.buf, c.probs.size)),
                "narrow inputs (%d %d %d) differ from their fp32 widening", (int)p.q_dtype,
                (int)p.k_dtype, (int)p.v_dtype);
      }
      drop_out(&c);
      for (int i = 0; i < 3; i++)
        drop(&w[i]);
    }
    if (p.kernel != ATTN_KERNEL_REF && p.threads != 1) {
      attn_params p1 = p, p3 = p;
      p1.threads = 1, p3.threads = 3;
      call_out c1, c3;
      memset(&c1, 0, sizeof c1), memset(&c3, 0, sizeof c3);
      if (make_out(&c1, &p, want_lse, want_probs) && make_out(&c3, &p, want_lse, want_probs)) {
        attn_forward(&p1, fp(&q), fp(&k), fp(&v), fp(&c1.o), fp(&c1.lse), fp(&c1.probs));
        attn_forward(&p3, fp(&q), fp(&k), fp(&v), fp(&c3.o), fp(&c3.lse), fp(&c3.probs));
        REQUIRE((!c1.o.buf || !memcmp(c1.o.buf, c3.o.buf, c1.o.size)) &&
                    (!c1.lse.buf || !memcmp(c1.lse.buf, c3.lse.buf, c1.lse.size)),
                "1 and 3 threads differ");
      }
      drop_out(&c1), drop_out(&c3);
    }
    { /* the same call with a workspace of exactly the queried bytes: the same bits, no block
       * allocated */
      call_out c;
      void *w = workspace_of(scratch);
      if (w && make_out(&c, &p, want_lse, want_probs)) {
        attn_params pw = p;
        pw.workspace = w, pw.workspace_bytes = scratch;
        const long fallbacks = attn__arena_fallbacks();
        REQUIRE(attn_forward(&pw, fp(&q), fp(&k), fp(&v), fp(&c.o), fp(&c.lse), fp(&c.probs)) ==
                    ATTN_STATUS_OK,
                "the call with a workspace refused: %s", attn_last_error());
        REQUIRE(attn__arena_fallbacks() == fallbacks, "the scratch query (%zu) undercounts",
                scratch);
        REQUIRE((!c.o.buf || !memcmp(c.o.buf, a.o.buf, c.o.size)) &&
                    (!c.lse.buf || !memcmp(c.lse.buf, a.lse.buf, c.lse.size)) &&
                    (!c.probs.buf || !memcmp(c.probs.buf, a.probs.buf, c.probs.size)),
                "the call with a workspace differs");
      }
      drop_out(&c);
      free(w);
    }
    if (next(&b) % 3 == 0) check_paged(&b, &p, &q, &k, &v, &a, want_lse, want_probs);
    if (next(&b) % 3 == 0) check_packed(&b, &p, &q, &k, &v, &a, want_lse, want_probs);
    /* attn_merge of the result with itself: the same O, and LSE + log 2 (into fresh outputs, or in
     * place over the first part, which the header allows) */
    if (want_lse && a.o.buf && next(&b) % 2 == 0) {
      call_out m;
      memset(&m, 0, sizeof m);
      const int in_place = next(&b) % 2;
      if (make_out(&m, &p, 1, 0)) {
        const float *parts_o[2] = {fp(&a.o), fp(&a.o)}, *parts_l[2] = {fp(&a.lse), fp(&a.lse)};
        float *mo = fp(&m.o), *ml = fp(&m.lse);
        if (in_place) {
          memcpy(m.o.buf, a.o.buf, a.o.size), memcpy(m.lse.buf, a.lse.buf, a.lse.size);
          parts_o[0] = mo, parts_l[0] = ml;
        }
        const attn_status sm = attn_merge(&p, 2, parts_o, parts_l, mo, ml);
        REQUIRE(sm == ATTN_STATUS_OK, "attn_merge refused a forward's own outputs: %s",
                attn_last_error());
        for (size_t i = 0; i < m.o.size / 4; i++) {
          const float x = ((float *)m.o.buf)[i], want = ((float *)a.o.buf)[i];
          REQUIRE(close_enough(x, want), "merged O[%zu] = %g, want %g", i, x, want);
        }
        for (size_t i = 0; i < m.lse.size / 4; i++) {
          const float x = ((float *)m.lse.buf)[i], l = ((float *)a.lse.buf)[i];
          REQUIRE(close_enough(x, l == -INFINITY ? l : l + 0.6931472f),
                  "merged LSE[%zu] = %g, "
                  "want %g + log 2",
                  i, x, l);
        }
      }
      drop_out(&m);
    }
    /* the backward of the same call, when the forward gave LSE (smaller calls: ref is slow) */
    if (want_lse && batch * hq * lq * lk <= MAX_PAIRS / 4 && next(&b) % 2 == 0) {
      const int64_t ndq[4] = {batch, hq, lq, dim};
      pick_strides(&b, 4, no, p.dout_stride);
      /* dQ, dK, dV, and dBias (the bias's shape reduced over its broadcast dimensions) */
      const int ng = p.bias && next(&b) % 2 == 0 ? 4 : 3;
      int64_t ndb[4];
      for (int d = 0; d < 4; d++)
        ndb[d] = p.bias_stride[d] == 0 ? 1 : nm[d];
      tensor grads[2][4];
      memset(grads, 0, sizeof grads);
      const int64_t *shapes[4] = {ndq, nk, nv, ndb};
      int64_t *strides[4] = {p.dq_stride, p.dk_stride, p.dv_stride, p.dbias_stride};
      for (int g = 0; g < ng; g++)
        pick_strides(&b, 4, shapes[g], strides[g]);
      int ok = make(&dout, 4, no, p.dout_stride, 4);
      for (int t = 0; t < 2; t++)
        for (int g = 0; g < ng; g++)
          ok &= make(&grads[t][g], 4, shapes[g], strides[g], 4);
      if (ok) {
        fill(&b, &dout, 1.0f, 0, ATTN_DTYPE_F32);
        for (int t = 0; t < 2; t++)
          for (int g = 0; g < ng; g++)
            poison(&grads[t][g]);
        /* a requested dBias with no element is still requested: a non-NULL pointer */
        float *db[2] = {ng < 4            ? NULL
                        : grads[0][3].buf ? fp(&grads[0][3])
                                          : (float *)&ndb,
                        ng < 4            ? NULL
                        : grads[1][3].buf ? fp(&grads[1][3])
                                          : (float *)&ndb};
        size_t bwd_scratch;
        const attn_status sb = attn_backward_scratch_bytes(&p, ng == 4, &bwd_scratch);
        attn_params p1 = p, p3 = p;
        p1.threads = 1, p3.threads = 3;
        const attn_status s1 =
            attn_backward(&p1, fp(&q), fp(&k), fp(&v), fp(&a.o), fp(&a.lse), fp(&dout),
                          fp(&grads[0][0]), fp(&grads[0][1]), fp(&grads[0][2]), db[0]);
        if (s1 != ATTN_STATUS_OK) {
          REQUIRE(strncmp(attn_last_error(), "attn_backward", 13) == 0, "message '%s'",
                  attn_last_error());
          for (int g = 0; g < ng; g++)
            REQUIRE(untouched(&grads[0][g]), "refused backward (%s) wrote gradient %d",
                    attn_last_error(), g);
        } else {
          REQUIRE(sb == ATTN_STATUS_OK, "backward scratch_bytes refused an accepted call");
          const attn_status s3 =
              attn_backward(&p3, fp(&q), fp(&k), fp(&v), fp(&a.o), fp(&a.lse), fp(&dout),
                            fp(&grads[1][0]), fp(&grads[1][1]), fp(&grads[1][2]), db[1]);
          REQUIRE(s3 == ATTN_STATUS_OK, "3 threads refused what 1 thread accepted");
          for (int g = 0; g < ng; g++)
            REQUIRE(!grads[0][g].buf || !memcmp(grads[0][g].buf, grads[1][g].buf, grads[0][g].size),
                    "gradient %d differs between 1 and 3 threads", g);
          /* 3 threads again, on a workspace of exactly the queried bytes: the same bits */
          size_t n3 = 0;
          REQUIRE(attn_backward_scratch_bytes(&p3, ng == 4, &n3) == ATTN_STATUS_OK,
                  "backward scratch query refused: %s", attn_last_error());
          void *w = workspace_of(n3);
          if (w) {
            for (int g = 0; g < ng; g++)
              poison(&grads[1][g]);
            p3.workspace = w, p3.workspace_bytes = n3;
            const long fallbacks = attn__arena_fallbacks();
            REQUIRE(attn_backward(&p3, fp(&q), fp(&k), fp(&v), fp(&a.o), fp(&a.lse), fp(&dout),
                                  fp(&grads[1][0]), fp(&grads[1][1]), fp(&grads[1][2]),
                                  db[1]) == ATTN_STATUS_OK,
                    "the backward with a workspace refused: %s", attn_last_error());
            REQUIRE(attn__arena_fallbacks() == fallbacks,
                    "the backward scratch query (%zu) undercounts", n3);
            for (int g = 0; g < ng; g++)
              REQUIRE(!grads[0][g].buf ||
                          !memcmp(grads[0][g].buf, grads[1][g].buf, grads[0][g].size),
                      "gradient %d differs with a workspace", g);
            free(w);
          }
          /* against the ref backward when the data hold no NaN or inf (with them, which gradient
           * entries turn NaN is the kernels' own business beyond the contract's masked rule) */
          if (!specials && p.kernel != ATTN_KERNEL_REF) {
            attn_params pref = p;
            pref.kernel = ATTN_KERNEL_REF;
            for (int g = 0; g < ng; g++)
              poison(&grads[1][g]);
            REQUIRE(attn_backward(&pref, fp(&q), fp(&k), fp(&v), fp(&a.o), fp(&a.lse), fp(&dout),
                                  fp(&grads[1][0]), fp(&grads[1][1]), fp(&grads[1][2]),
                                  db[1]) == ATTN_STATUS_OK,
                    "ref backward refused an accepted call: %s", attn_last_error());
            for (int g = 0; g < ng; g++)
              for (size_t i = 0; i < grads[0][g].size / 4; i++)
                REQUIRE(close_enough(((float *)grads[0][g].buf)[i], ((float *)grads[1][g].buf)[i]),
                        "gradient %d [%zu] = %g, ref %g", g, i, ((float *)grads[0][g].buf)[i],
                        ((float *)grads[1][g].buf)[i]);
          }
        }
      }
      for (int t = 0; t < 2; t++)
        for (int g = 0; g < ng; g++)
          drop(&grads[t][g]);
    }
  }
  drop_out(&a), drop_out(&r);
  drop(&q), drop(&k), drop(&v), drop(&mask), drop(&bias), drop(&dout);
  return 0;
}
