/* harness.c — see harness.h. */
#include "harness.h"
#include "internal.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

int t_checks, t_failures;

/* The library runs calls whose work would take one core under ~100 µs on the calling thread alone;
 * most test cases are that small, so the kit turns the threshold off before main and every case
 * runs on the threads it asks for (test_api checks the threshold itself). */
__attribute__((constructor)) static void t_threads_always(void) { attn__set_serial_us(0); }

int t_finish(const char *suite) {
  printf("%s: %d checks, %d failures\n", suite, t_checks, t_failures);
  return t_failures ? 1 : 0;
}

/* ---- rng ---- */

uint64_t rng_next(rng *r) {
  uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

double rng_uniform(rng *r) { return (double)(rng_next(r) >> 11) * 0x1.0p-53; }

float rng_normal(rng *r) {
  double u1 = rng_uniform(r), u2 = rng_uniform(r);
  return (float)(sqrt(-2.0 * log(1.0 - u1)) * cos(6.283185307179586 * u2));
}

int64_t rng_int(rng *r, int64_t lo, int64_t hi) {
  return lo + (int64_t)(rng_next(r) % (uint64_t)(hi - lo + 1));
}

/* ---- guarded buffers ---- */

static const uint32_t canary32 = T_CANARY_BITS;
static const unsigned char canary8 = 0xa5;

static void fill_canary(unsigned char *p, size_t n, int elem) {
  if (elem == 4)
    for (size_t i = 0; i + 4 <= n; i += 4)
      memcpy(p + i, &canary32, 4);
  else
    memset(p, canary8, n);
}

void tbuf_make(tbuf *t, int elem, int rank, const int64_t size[4], const int64_t *stride) {
  memset(t, 0, sizeof *t);
  t->elem = elem;
  t->rank = rank;
  for (int d = 0; d < 4; d++)
    t->size[d] = d < rank ? size[d] : 1;
  if (stride) {
    for (int d = 0; d < rank; d++)
      t->stride[d] = stride[d];
  } else {
    int64_t s = 1;
    for (int d = rank - 1; d >= 0; d--) {
      t->stride[d] = s;
      s *= t->size[d];
    }
  }
  int64_t lo = 0, hi = 0, empty = 0;
  for (int d = 0; d < rank; d++) {
    if (t->size[d] == 0) empty = 1;
    int64_t span = t->stride[d] * (t->size[d] - 1);
    if (span < 0)
      lo += span;
    else
      hi += span;
  }
  t->lo_off = lo;
  t->extent_bytes = empty ? 0 : (size_t)(hi - lo + 1) * (size_t)elem;
  size_t total = 2 * T_GUARD_BYTES + t->extent_bytes;
  t->alloc = malloc(total);
  if (!t->alloc) {
    fprintf(stderr, "test harness: out of memory (%zu bytes)\n", total);
    exit(3);
  }
  fill_canary(t->alloc, total, elem);
  t->base = t->alloc + T_GUARD_BYTES - lo * elem;
}

void tbuf_free(tbuf *t) {
  free(t->alloc);
  memset(t, 0, sizeof *t);
}

float *tbuf_f32(const tbuf *t) { return t->extent_bytes ? (float *)(void *)t->base : NULL; }

int64_t tbuf_index(const tbuf *t, int64_t i0, int64_t i1, int64_t i2, int64_t i3) {
  return i0 * t->stride[0] + i1 * t->stride[1] + (t->rank > 2 ? i2 * t->stride[2] : 0) +
         (t->rank > 3 ? i3 * t->stride[3] : 0);
}

int64_t tbuf_count(const tbuf *t) {
  int64_t n = 1;
  for (int d = 0; d < t->rank; d++)
    n *= t->size[d];
  return n;
}

/* Calls fn for every logical element offset, in index order. */
#define TBUF_FOR_EACH(t, off_var, body)                                                            \
  for (int64_t i0_ = 0; i0_ < (t)->size[0]; i0_++)                                                 \
    for (int64_t i1_ = 0; i1_ < (t)->size[1]; i1_++)                                               \
      for (int64_t i2_ = 0; i2_ < (t)->size[2]; i2_++)                                             \
        for (int64_t i3_ = 0; i3_ < (t)->size[3]; i3_++) {                                         \
          int64_t off_var = tbuf_index(t, i0_, i1_, i2_, i3_);                                     \
          body;                                                                                    \
        }

void tbuf_gather(const tbuf *t, float *dst) {
  const float *b = (const float *)(const void *)t->base;
  size_t n = 0;
  TBUF_FOR_EACH(t, off, dst[n++] = b[off]);
}

void tbuf_scatter(tbuf *t, const float *src) {
  float *b = (float *)(void *)t->base;
  size_t n = 0;
  TBUF_FOR_EACH(t, off, b[off] = src[n++]);
}

/* Marks logical elements in a byte map over the extent. */
static unsigned char *element_map(const tbuf *t) {
  unsigned char *map = calloc(t->extent_bytes ? t->extent_bytes : 1, 1);
  if (!map) exit(3);
  TBUF_FOR_EACH(t, off, memset(map + (off - t->lo_off) * t->elem, 1, (size_t)t->elem));
  return map;
}

void tbuf_poison_gaps(tbuf *t) {
  unsigned char *map = element_map(t);
  unsigned char *ext = t->alloc + T_GUARD_BYTES;
  const float qnan = NAN;
  for (size_t i = 0; i < t->extent_bytes; i += (size_t)t->elem)
    if (!map[i]) {
      if (t->elem == 4)
        memcpy(ext + i, &qnan, 4);
      else
        ext[i] = 0x5a;
    }
  free(map);
}

static int is_canary(const unsigned char *p, int elem) {
  return elem == 4 ? memcmp(p, &canary32, 4) == 0 : *p == canary8;
}

int tbuf_check_output(const tbuf *t, const char *name, int written) {
  int ok = 1;
  for (size_t i = 0; i < T_GUARD_BYTES; i += (size_t)t->elem)
    if (!is_canary(t->alloc + i, t->elem) ||
        !is_canary(t->alloc + T_GUARD_BYTES + t->extent_bytes + i, t->elem)) {
      fprintf(stderr, "  %s: guard bytes overwritten\n", name);
      return 0;
    }
  unsigned char *map = element_map(t);
  const unsigned char *ext = t->alloc + T_GUARD_BYTES;
  size_t bad_gap = 0, bad_elem = 0;
  for (size_t i = 0; i < t->extent_bytes; i += (size_t)t->elem) {
    int canary = is_canary(ext + i, t->elem);
    if (!map[i] && !canary) bad_gap++;
    if (map[i] && canary == written) bad_elem++;
  }
  free(map);
  if (bad_gap) {
    fprintf(stderr, "  %s: %zu stride-gap elements overwritten\n", name, bad_gap);
    ok = 0;
  }
  if (bad_elem) {
    fprintf(stderr, "  %s: %zu elements %s\n", name, bad_elem,
            written ? "never written" : "written by a failing call");
    ok = 0;
  }
  return ok;
}

int tbuf_same_bytes(const tbuf *t, const unsigned char *snapshot) {
  return memcmp(t->alloc, snapshot, 2 * T_GUARD_BYTES + t->extent_bytes) == 0;
}

/* ---- cases ---- */

tspec tspec_shape(int64_t B, int64_t Hq, int64_t Hkv, int64_t Lq, int64_t Lk, int64_t D,
                  int64_t Dv) {
  tspec s;
  memset(&s, 0, sizeof s);
  s.B = B, s.Hq = Hq, s.Hkv = Hkv, s.Lq = Lq, s.Lk = Lk, s.D = D, s.Dv = Dv;
  s.window_left = s.window_right = -1;
  s.q_mul = s.k_mul = 1.0f;
  s.seed = 1;
  return s;
}

void tspec_min_rows(tspec *s, int64_t min_rows) {
  if (s->B * s->Hq * s->Lq > 0)
    while (s->B * s->Hq * s->Lq < min_rows)
      s->B *= 2;
}

/* Strides of a [n0, n1, n2, n3] tensor in the given layout (index order B, H, L, D). */
void t_layout_strides(int layout, const int64_t n[4], int64_t s[4]) {
  switch (layout) {
  case LAYOUT_BLHD:
    attn_strides_blhd(s, n[1], n[2], n[3]);
    break;
  case LAYOUT_PADDED: /* every row, head and batch item followed by a gap */
    s[3] = 1;
    s[2] = n[3] + 3;
    s[1] = n[2] * s[2] + 5;
    s[0] = n[1] * s[1] + 7;
    break;
  case LAYOUT_HBLD:
    s[3] = 1;
    s[2] = n[3];
    s[0] = n[2] * n[3];
    s[1] = n[0] * n[2] * n[3];
    break;
  default:
    attn_strides_packed(s, n[1], n[2], n[3]);
  }
}

static void fill_normal(tbuf *t, rng *r, float mul) {
  float *b = tbuf_f32(t);
  TBUF_FOR_EACH(t, off, b[off] = mul * rng_normal(r));
}

void tcase_make(tcase *c, const tspec *s) {
  memset(c, 0, sizeof *c);
  c->spec = *s;
  rng r = {s->seed * 0x2545f4914f6cdd1dull + 17};
  attn_params *p = &c->p;
  attn_params_init(p, s->B, s->Hq, s->Hkv, s->Lq, s->Lk, s->D, s->Dv);
  const int64_t qn[4] = {s->B, s->Hq, s->Lq, s->D}, kn[4] = {s->B, s->Hkv, s->Lk, s->D},
                vn[4] = {s->B, s->Hkv, s->Lk, s->Dv}, on[4] = {s->B, s->Hq, s->Lq, s->Dv};
  t_layout_strides(s->layout, qn, p->q_stride);
  t_layout_strides(s->layout, kn, p->k_stride);
  t_layout_strides(s->layout, vn, p->v_stride);
  t_layout_strides(s->layout, on, p->o_stride);
  if (s->layout == LAYOUT_PADDED) {
    p->lse_stride[2] = 2;
    p->lse_stride[1] = 2 * s->Lq + 1;
    p->lse_stride[0] = s->Hq * p->lse_stride[1];
    p->probs_stride[3] = 1;
    p->probs_stride[2] = s->Lk + 1;
    p->probs_stride[1] = s->Lq * p->probs_stride[2];
    p->probs_stride[0] = s->Hq * p->probs_stride[1];
  }
  tbuf_make(&c->q, 4, 4, qn, p->q_stride);
  tbuf_make(&c->k, 4, 4, kn, p->k_stride);
  tbuf_make(&c->v, 4, 4, vn, p->v_stride);
  fill_normal(&c->q, &r, s->q_mul);
  fill_normal(&c->k, &r, s->k_mul);
  fill_normal(&c->v, &r, 1.0f);
  tbuf_poison_gaps(&c->q);
  tbuf_poison_gaps(&c->k);
  tbuf_poison_gaps(&c->v);

  p->causal = s->causal;
  p->align = s->align;
  p->window_left = s->window_left;
  p->window_right = s->window_right;
  p->softcap = s->softcap;
  p->has_scale = s->has_scale;
  p->scale = s->scale;
  if (s->alibi) {
    c->alibi = malloc(sizeof(float) * (size_t)(s->Hq + 1));
    for (int64_t h = 0; h < s->Hq; h++)
      c->alibi[h] = 0.5f / (float)(1 << (h % 8)); /* 2^-h/2 */
    p->alibi_slopes = c->alibi;
  }
  p->dropout = s->dropout, p->dropout_seed = s->seed * 0x9E3779B97F4A7C15u + 1;
  if (s->sinks) {
    static const float values[4] = {0.75f, -INFINITY, 3.0f, -2.0f};
    c->sinks = malloc(sizeof(float) * (size_t)(s->Hq + 1));
    for (int64_t h = 0; h < s->Hq; h++)
      c->sinks[h] = values[h % 4];
    p->sinks = c->sinks;
  }
  if (s->kv_len) {
    c->kv_len = malloc(sizeof(int64_t) * (size_t)(s->B + 1));
    for (int64_t b = 0; b < s->B; b++)
      c->kv_len[b] = b == 0 && s->B > 1 ? 0 : b == s->B - 1 ? s->Lk : rng_int(&r, 0, s->Lk);
    p->kv_len = c->kv_len;
  }
  if (s->q_len) { /* padding rows past q_len[b]: none, all, and random counts */
    c->q_len = malloc(sizeof(int64_t) * (size_t)(s->B + 1));
    for (int64_t b = 0; b < s->B; b++)
      c->q_len[b] = b == s->B - 1 ? s->Lq : b % 3 == 1 ? 0 : rng_int(&r, 0, s->Lq);
    p->q_len = c->q_len;
  }

  const int64_t B = s->B, Hq = s->Hq, Lq = s->Lq, Lk = s->Lk;
  if (s->mask != MASK_NONE) {
    int64_t shape[4] = {B, Hq, Lq, Lk}, bstride[4];
    if (s->mask == MASK_BCAST_BH) shape[0] = shape[1] = 1;
    if (s->mask == MASK_KEYPAD) shape[1] = shape[2] = 1;
    if (s->mask == MASK_ROWS) shape[0] = 1, shape[3] = 1;
    tbuf_make(&c->mask, 1, 4, shape, NULL);
    for (int d = 0; d < 4; d++)
      bstride[d] = shape[d] == 1 ? 0 : c->mask.stride[d];
    unsigned char *m = c->mask.base;
    for (int64_t i0 = 0; i0 < shape[0]; i0++)
      for (int64_t i1 = 0; i1 < shape[1]; i1++)
        for (int64_t i2 = 0; i2 < shape[2]; i2++)
          for (int64_t i3 = 0; i3 < shape[3]; i3++) {
            int vis = rng_uniform(&r) < 0.75;
            if (s->mask == MASK_FULL && i2 % 4 == 3 && i1 == 0) vis = 0; /* fully masked rows */
            if (s->mask == MASK_ROWS) vis = i2 % 3 != 1;
            m[tbuf_index(&c->mask, i0, i1, i2, i3)] =
                (unsigned char)(vis ? 1 + rng_int(&r, 0, 9) : 0);
          }
    p->mask = m;
    memcpy(p->mask_stride, bstride, sizeof bstride);
  }
  if (s->bias != BIAS_NONE) {
    int64_t shape[4] = {B, Hq, Lq, Lk}, bstride[4];
    if (s->bias == BIAS_BCAST) shape[0] = shape[2] = 1;
    tbuf_make(&c->bias, 4, 4, shape, NULL);
    for (int d = 0; d < 4; d++)
      bstride[d] = shape[d] == 1 ? 0 : c->bias.stride[d];
    float *bb = tbuf_f32(&c->bias);
    for (int64_t i0 = 0; i0 < shape[0]; i0++)
      for (int64_t i1 = 0; i1 < shape[1]; i1++)
        for (int64_t i2 = 0; i2 < shape[2]; i2++)
          for (int64_t i3 = 0; i3 < shape[3]; i3++) {
            float x = rng_normal(&r);
            if (s->bias == BIAS_NEGINF && (rng_uniform(&r) < 0.15 || i2 % 5 == 2)) x = -INFINITY;
            if (bb) bb[tbuf_index(&c->bias, i0, i1, i2, i3)] = x;
          }
    p->bias = bb;
    memcpy(p->bias_stride, bstride, sizeof bstride);
  }
}

/* A NaN of type t (t ≠ F32) in its bytes: what the narrow copies hold where no element is. */
static void narrow_nan(attn_dtype t, unsigned char out[2]) {
  const uint16_t nan16 = t == ATTN_DTYPE_F16 ? 0x7e00 : 0x7fc0;
  if (t == ATTN_DTYPE_F8E4M3 || t == ATTN_DTYPE_F8E5M2)
    out[0] = 0x7f, out[1] = 0;
  else
    memcpy(out, &nan16, 2);
}

/* The narrow (16- or 8-bit) copy h of the fp32 tensor f in type t; f's elements become the copy's
 * values. */
static void make_narrow(tbuf *h, tbuf *f, attn_dtype t) {
  const int esz = (int)attn_dtype_size(t);
  tbuf_make(h, esz, 4, f->size, f->stride);
  unsigned char nan[2];
  narrow_nan(t, nan); /* the gaps: never read */
  unsigned char *ext = h->alloc + T_GUARD_BYTES;
  for (size_t i = 0; i + (size_t)esz <= h->extent_bytes; i += (size_t)esz)
    memcpy(ext + i, nan, (size_t)esz);
  float *fb = tbuf_f32(f);
  TBUF_FOR_EACH(f, off, {
    attn_from_f32(t, &fb[off], h->base + off * esz, 1);
    attn_to_f32(t, h->base + off * esz, &fb[off], 1);
  });
}

void tcase_set_types(tcase *c, attn_dtype q, attn_dtype k, attn_dtype v) {
  tbuf *f[3] = {&c->q, &c->k, &c->v}, *h[3] = {&c->q_narrow, &c->k_narrow, &c->v_narrow};
  const attn_dtype t[3] = {q, k, v};
  for (int i = 0; i < 3; i++) {
    tbuf_free(h[i]);
    if (t[i] != ATTN_DTYPE_F32) make_narrow(h[i], f[i], t[i]);
  }
  c->p.q_dtype = q, c->p.k_dtype = k, c->p.v_dtype = v;
}

void tcase_page(tcase *c, int64_t page_size, int layout, int64_t pad_rows, uint64_t seed) {
  tcase_unpage(c);
  attn_params *p = &c->p;
  rng r = {seed * 0x9e3779b97f4a7c15ull + 5};
  const int64_t B = p->batch, H = p->heads_kv, Lk = p->len_k;
  const int64_t per_seq = Lk == 0 ? 0 : (Lk - 1) / page_size + 1, row = per_seq + pad_rows;
  int64_t used_total = 0;
  for (int64_t b = 0; b < B; b++) {
    const int64_t klen = p->kv_len ? p->kv_len[b] : Lk;
    used_total += klen == 0 ? 0 : (klen - 1) / page_size + 1;
  }
  const int64_t num_pages = used_total + 2; /* two spare pages, never in the table */
  int64_t *perm = malloc(sizeof(int64_t) * (size_t)num_pages);
  for (int64_t i = 0; i < num_pages; i++)
    perm[i] = i;
  for (int64_t i = num_pages - 1; i > 0; i--) {
    const int64_t k = rng_int(&r, 0, i), tmp = perm[i];
    perm[i] = perm[k], perm[k] = tmp;
  }
  c->table = malloc(sizeof(int32_t) * (size_t)(B * row + 1));
  static const int32_t unused[3] = {-1, INT32_MAX, 0}; /* 0 stands for num_pages */
  for (int64_t e = 0; e < B * row; e++)
    c->table[e] = unused[e % 3] ? unused[e % 3] : (int32_t)num_pages;
  int64_t at = 0;
  for (int64_t b = 0; b < B; b++) {
    const int64_t klen = p->kv_len ? p->kv_len[b] : Lk;
    for (int64_t e = 0; e * page_size < klen; e++)
      c->table[b * row + e] = (int32_t)perm[at++];
  }
  free(perm);
  /* the pools, NaN everywhere the table does not point to a key below klen(b) */
  const tbuf *src[2] = {&c->k, &c->v}, *src16[2] = {&c->k_narrow, &c->v_narrow};
  const attn_dtype type[2] = {p->k_dtype, p->v_dtype};
  int64_t *stride[2] = {p->k_stride, p->v_stride},
          *saved[2] = {c->k_stride_unpaged, c->v_stride_unpaged};
  void **pool[2] = {&c->k_pool, &c->v_pool};
  for (int i = 0; i < 2; i++) {
    const int64_t n = src[i]->size[3], esz = (int64_t)attn_dtype_size(type[i]);
    const size_t count = (size_t)(num_pages * H * page_size * n);
    memcpy(saved[i], stride[i], sizeof(int64_t) * 4);
    if (layout == 0)
      attn_strides_packed(stride[i], H, page_size, n);
    else
      attn_strides_blhd(stride[i], H, page_size, n);
    unsigned char *dst = malloc(count * (size_t)esz + 4);
    *pool[i] = dst;
    const uint32_t nan32 = 0x7fc00000u;
    unsigned char nan[2];
    narrow_nan(type[i], nan);
    for (size_t e = 0; e < count; e++)
      memcpy(dst + e * (size_t)esz, esz == 4 ? (const void *)&nan32 : (const void *)nan,
             (size_t)esz);
    for (int64_t b = 0; b < B; b++)
      for (int64_t h = 0; h < H; h++)
        for (int64_t j = 0; j < (p->kv_len ? p->kv_len[b] : Lk); j++)
          for (int64_t d = 0; d < n; d++) {
            const int64_t page = c->table[b * row + j / page_size];
            const int64_t to = page * stride[i][0] + h * stride[i][1] +
                               j % page_size * stride[i][2] + d * stride[i][3];
            const tbuf *from = esz == 4 ? src[i] : src16[i];
            memcpy(dst + to * esz, from->base + tbuf_index(from, b, h, j, d) * esz, (size_t)esz);
          }
  }
  p->block_table = c->table;
  p->block_table_stride = pad_rows ? row : -1;
  p->page_size = page_size;
  p->num_pages = num_pages;
}

void tcase_unpage(tcase *c) {
  if (!c->table) return;
  memcpy(c->p.k_stride, c->k_stride_unpaged, sizeof c->k_stride_unpaged);
  memcpy(c->p.v_stride, c->v_stride_unpaged, sizeof c->v_stride_unpaged);
  c->p.block_table = NULL;
  c->p.block_table_stride = -1;
  c->p.page_size = c->p.num_pages = 0;
  free(c->table), free(c->k_pool), free(c->v_pool);
  c->table = NULL, c->k_pool = c->v_pool = NULL;
}

/* c's parameters for an unpaged call on the same K and V. */
static attn_params unpaged_params(const tcase *c) {
  attn_params p = c->p;
  if (p.block_table) {
    memcpy(p.k_stride, c->k_stride_unpaged, sizeof p.k_stride);
    memcpy(p.v_stride, c->v_stride_unpaged, sizeof p.v_stride);
    p.block_table = NULL;
  }
  return p;
}

const void *tcase_input(const tcase *c, int which) {
  if (which > 0 && c->p.block_table) return which == 1 ? c->k_pool : c->v_pool;
  const tbuf *f = which == 0 ? &c->q : which == 1 ? &c->k : &c->v;
  const tbuf *h = which == 0 ? &c->q_narrow : which == 1 ? &c->k_narrow : &c->v_narrow;
  const attn_dtype t = which == 0 ? c->p.q_dtype : which == 1 ? c->p.k_dtype : c->p.v_dtype;
  if (t == ATTN_DTYPE_F32) return tbuf_f32(f);
  return h->extent_bytes ? h->base : NULL;
}

void tcase_free(tcase *c) {
  tcase_unpage(c);
  tbuf_free(&c->q_narrow);
  tbuf_free(&c->k_narrow);
  tbuf_free(&c->v_narrow);
  tbuf_free(&c->q);
  tbuf_free(&c->k);
  tbuf_free(&c->v);
  tbuf_free(&c->mask); /* zeroed when absent; allocated even when it has no elements */
  tbuf_free(&c->bias);
  free(c->alibi);
  free(c->sinks);
  free(c->kv_len);
  free(c->q_len);
}

const char *tcase_label(const tcase *c, char *buf, size_t size) {
  const tspec *s = &c->spec;
  snprintf(
      buf, size,
      "B=%" PRId64 " Hq=%" PRId64 " Hkv=%" PRId64 " Lq=%" PRId64 " Lk=%" PRId64 " D=%" PRId64
      " Dv=%" PRId64 " layout=%d causal=%d align=%d window=(%" PRId64 ",%" PRId64
      ") kv_len=%d q_len=%d mask=%d bias=%d softcap=%g alibi=%d sinks=%d dropout=%g scale=%s%g "
      "seed=%" PRIu64,
      s->B, s->Hq, s->Hkv, s->Lq, s->Lk, s->D, s->Dv, s->layout, s->causal, (int)s->align,
      s->window_left, s->window_right, s->kv_len, s->q_len, s->mask, s->bias, (double)s->softcap,
      s->alibi, s->sinks, (double)s->dropout, s->has_scale ? "" : "default/", (double)s->scale,
      s->seed);
  return buf;
}

void touts_make(touts *out, const tcase *c, int want_lse, int want_probs) {
  const tspec *s = &c->spec;
  const int64_t on[4] = {s->B, s->Hq, s->Lq, s->Dv}, ln[4] = {s->B, s->Hq, s->Lq, 1},
                pn[4] = {s->B, s->Hq, s->Lq, s->Lk};
  memset(out, 0, sizeof *out);
  tbuf_make(&out->o, 4, 4, on, c->p.o_stride);
  out->has_lse = want_lse;
  out->has_probs = want_probs;
  if (want_lse) tbuf_make(&out->lse, 4, 3, ln, c->p.lse_stride);
  if (want_probs) tbuf_make(&out->probs, 4, 4, pn, c->p.probs_stride);
}

void touts_free(touts *out) {
  tbuf_free(&out->o);
  if (out->has_lse) tbuf_free(&out->lse);
  if (out->has_probs) tbuf_free(&out->probs);
}

attn_status t_run(tcase *c, attn_kernel kernel, int threads, touts *out) {
  c->p.kernel = kernel;
  c->p.threads = threads;
  return attn_forward(&c->p, tcase_input(c, 0), tcase_input(c, 1), tcase_input(c, 2),
                      tbuf_f32(&out->o), out->has_lse ? tbuf_f32(&out->lse) : NULL,
                      out->has_probs ? tbuf_f32(&out->probs) : NULL);
}

tresult t_run_gather(tcase *c, attn_kernel kernel, int threads) {
  touts out;
  touts_make(&out, c, 1, !c->skip_probs);
  attn_status st = t_run(c, kernel, threads, &out);
  CHECKF(st == ATTN_STATUS_OK, "%s: %s", attn_kernel_name(kernel), attn_last_error());
  CHECK(tbuf_check_output(&out.o, "o", 1) && tbuf_check_output(&out.lse, "lse", 1) &&
        (!out.has_probs || tbuf_check_output(&out.probs, "probs", 1)));
  tresult r;
  r.no = (size_t)tbuf_count(&out.o), r.nl = (size_t)tbuf_count(&out.lse);
  r.np = out.has_probs ? (size_t)tbuf_count(&out.probs) : 0;
  r.o = malloc(sizeof(float) * (r.no + 1));
  r.lse = malloc(sizeof(float) * (r.nl + 1));
  r.probs = malloc(sizeof(float) * (r.np + 1));
  tbuf_gather(&out.o, r.o);
  tbuf_gather(&out.lse, r.lse);
  if (out.has_probs) tbuf_gather(&out.probs, r.probs);
  touts_free(&out);
  return r;
}

int tresult_same(const tresult *a, const tresult *b) {
  return a->no == b->no && a->nl == b->nl && a->np == b->np && memcmp(a->o, b->o, a->no * 4) == 0 &&
         memcmp(a->lse, b->lse, a->nl * 4) == 0 && memcmp(a->probs, b->probs, a->np * 4) == 0;
}

void tresult_free(tresult *r) {
  free(r->o);
  free(r->lse);
  free(r->probs);
}

/* ---- oracle: straight from semantics.md, in double ---- */

int64_t oracle_pos(const attn_params *p, int64_t b, int64_t i) {
  if (p->align != ATTN_ALIGN_BOTTOM_RIGHT) return i;
  return i + (p->kv_len ? p->kv_len[b] : p->len_k) - (p->q_len ? p->q_len[b] : p->len_q);
}

/* Visibility of key j for query i (rules 0–5); window arithmetic in double cannot overflow. */
int oracle_visible(const attn_params *p, int64_t b, int64_t h, int64_t i, int64_t j, int64_t klen,
                   int64_t pos) {
  if (p->q_len && i >= p->q_len[b]) return 0;
  if (j >= klen) return 0;
  if (p->causal && j > pos) return 0;
  if (p->window_left >= 0 && (double)j < (double)pos - (double)p->window_left) return 0;
  if (p->window_right >= 0 && (double)j > (double)pos + (double)p->window_right) return 0;
  if (p->mask && !p->mask[b * p->mask_stride[0] + h * p->mask_stride[1] + i * p->mask_stride[2] +
                          j * p->mask_stride[3]])
    return 0;
  if (p->bias && p->bias[b * p->bias_stride[0] + h * p->bias_stride[1] + i * p->bias_stride[2] +
                         j * p->bias_stride[3]] == -INFINITY)
    return 0;
  return 1;
}

double t_dropout_factor(const attn_params *p, int64_t b, int64_t h, int64_t i, int64_t j) {
  if (!(p->dropout > 0.0f)) return 1.0;
  return attn_dropout_keep(p, b, h, i, j) ? 1.0 / (1.0 - (double)p->dropout) : 0.0;
}

void oracle_forward(const attn_params *p, const float *q, const float *k, const float *v, double *o,
                    double *lse, double *probs) {
  const int64_t B = p->batch, Hq = p->heads_q, Lq = p->len_q, Lk = p->len_k, D = p->dim,
                Dv = p->dim_v, group = p->heads_q / p->heads_kv;
  const double scale = p->has_scale ? (double)p->scale : (double)(float)(1.0 / sqrt((double)D));
  double *s = malloc(sizeof(double) * (size_t)(Lk + 1)),
         *wt = malloc(sizeof(double) * (size_t)(Lk + 1));
  char *vis = malloc((size_t)(Lk + 1));
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < Hq; h++)
      for (int64_t i = 0; i < Lq; i++) {
        const int64_t hk = h / group, klen = p->kv_len ? p->kv_len[b] : Lk;
        const int64_t pos = oracle_pos(p, b, i);
        const int64_t row = (b * Hq + h) * Lq + i;
        double m = -INFINITY;
        int n_vis = 0, has_nan = 0;
        for (int64_t j = 0; j < Lk; j++) {
          vis[j] = (char)oracle_visible(p, b, h, i, j, klen, pos);
          if (!vis[j]) continue;
          double dot = 0;
          for (int64_t d = D - 1; d >= 0; d--)
            dot += (double)q[b * p->q_stride[0] + h * p->q_stride[1] + i * p->q_stride[2] +
                             d * p->q_stride[3]] *
                   (double)k[b * p->k_stride[0] + hk * p->k_stride[1] + j * p->k_stride[2] +
                             d * p->k_stride[3]];
          double x = scale * dot;
          if (p->softcap > 0) x = (double)p->softcap * tanh(x / (double)p->softcap);
          if (p->alibi_slopes) x -= (double)p->alibi_slopes[h] * fabs((double)pos - (double)j);
          if (p->bias)
            x += p->bias[b * p->bias_stride[0] + h * p->bias_stride[1] + i * p->bias_stride[2] +
                         j * p->bias_stride[3]];
          s[j] = x;
          n_vis++;
          if (isnan(x))
            has_nan = 1;
          else if (x > m)
            m = x;
        }
        if (has_nan) m = NAN;
        const double sink = p->sinks ? (double)p->sinks[h] : -INFINITY; /* a score, value 0 */
        if (!has_nan && sink > m) m = sink;
        if (n_vis == 0 && sink == -INFINITY) {
          for (int64_t d = 0; d < Dv; d++)
            o[row * Dv + d] = 0.0;
          if (lse) lse[row] = -INFINITY;
          if (probs)
            for (int64_t j = 0; j < Lk; j++)
              probs[row * Lk + j] = 0.0;
          continue;
        }
        double z = sink == -INFINITY ? 0 : exp(sink - m);
        for (int64_t j = 0; j < Lk; j++)
          if (vis[j]) z += exp(s[j] - m);
        for (int64_t j = 0; j < Lk; j++) /* the weights O uses: dropout's factor applied */
          wt[j] = vis[j] ? exp(s[j] - m) / z * t_dropout_factor(p, b, h, i, j) : 0.0;
        for (int64_t d = 0; d < Dv; d++) {
          double acc = 0;
          for (int64_t j = 0; j < Lk; j++)
            if (vis[j])
              acc += wt[j] * (double)v[b * p->v_stride[0] + hk * p->v_stride[1] +
                                       j * p->v_stride[2] + d * p->v_stride[3]];
          o[row * Dv + d] = acc;
        }
        if (lse) lse[row] = m + log(z);
        if (probs)
          for (int64_t j = 0; j < Lk; j++)
            probs[row * Lk + j] = vis[j] ? exp(s[j] - m) / z : 0.0;
      }
  free(s);
  free(wt);
  free(vis);
}

/* ---- baselines: plain fp32 implementations; order 0 pre-scales Q, sums the dot forward and
 * takes a two-pass softmax; order 1 sums the dot backward, then scales; order 2 is order 1's
 * scores with a one-key-at-a-time online softmax ---- */

void baseline_forward(const attn_params *p, int order, const float *q, const float *k,
                      const float *v, float *o, float *lse, float *probs) {
  const int64_t B = p->batch, Hq = p->heads_q, Lq = p->len_q, Lk = p->len_k, D = p->dim,
                Dv = p->dim_v, group = p->heads_q / p->heads_kv;
  const float scale = p->has_scale ? p->scale : (float)(1.0 / sqrt((double)D));
  float *s = malloc(sizeof(float) * (size_t)(Lk + 1)),
        *ez = malloc(sizeof(float) * (size_t)(Lk + 1));
  float *qs = malloc(sizeof(float) * (size_t)(D + 1));
  char *vis = malloc((size_t)(Lk + 1));
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < Hq; h++)
      for (int64_t i = 0; i < Lq; i++) {
        const int64_t hk = h / group, klen = p->kv_len ? p->kv_len[b] : Lk;
        const int64_t pos = oracle_pos(p, b, i);
        const int64_t row = (b * Hq + h) * Lq + i;
        for (int64_t d = 0; d < D; d++)
          qs[d] =
              (order == 0 ? scale : 1.0f) *
              q[b * p->q_stride[0] + h * p->q_stride[1] + i * p->q_stride[2] + d * p->q_stride[3]];
        float m = -INFINITY, z = 0;
        int n_vis = 0, has_nan = 0;
        for (int64_t j = 0; j < Lk; j++) {
          vis[j] = (char)oracle_visible(p, b, h, i, j, klen, pos);
          if (!vis[j]) continue;
          float x = 0;
          for (int64_t e = 0; e < D; e++) {
            const int64_t d = order == 1 ? D - 1 - e : e;
            x += qs[d] * k[b * p->k_stride[0] + hk * p->k_stride[1] + j * p->k_stride[2] +
                           d * p->k_stride[3]];
          }
          if (order != 0) x *= scale;
          if (p->softcap > 0) x = p->softcap * tanhf(x / p->softcap);
          if (p->alibi_slopes) x -= p->alibi_slopes[h] * (float)llabs(pos - j);
          if (p->bias)
            x += p->bias[b * p->bias_stride[0] + h * p->bias_stride[1] + i * p->bias_stride[2] +
                         j * p->bias_stride[3]];
          s[j] = x;
          n_vis++;
          if (isnan(x))
            has_nan = 1;
          else if (x > m)
            m = x;
        }
        if (has_nan) m = NAN;
        const float sink = p->sinks ? p->sinks[h] : -INFINITY; /* one more score, value 0 */
        const int rows_out = n_vis > 0 || sink != -INFINITY;   /* else: the empty row */
        if (order != 2 && !has_nan && sink > m) m = sink;
        if (order != 2 && sink != -INFINITY) z = expf(sink - m);
        if (order == 2) { /* online softmax, one key at a time (Milakov & Gimelshein) */
          float mo = -INFINITY;
          for (int64_t d = 0; d < Dv; d++)
            o[row * Dv + d] = 0.0f;
          for (int64_t j = 0; j < Lk; j++) {
            if (!vis[j]) continue;
            const float mn = isnan(s[j]) || isnan(mo) ? NAN : (s[j] > mo ? s[j] : mo);
            const float alpha = expf(mo - mn), e = expf(s[j] - mn);
            const float ew = e * (float)t_dropout_factor(p, b, h, i, j); /* O's weight */
            z = z * alpha + e;
            for (int64_t d = 0; d < Dv; d++)
              o[row * Dv + d] =
                  o[row * Dv + d] * alpha + ew * v[b * p->v_stride[0] + hk * p->v_stride[1] +
                                                   j * p->v_stride[2] + d * p->v_stride[3]];
            mo = mn;
          }
          if (sink != -INFINITY && !isnan(mo)) { /* the sink, last */
            const float mn = sink > mo ? sink : mo, alpha = expf(mo - mn);
            z = z * alpha + expf(sink - mn);
            for (int64_t d = 0; d < Dv; d++)
              o[row * Dv + d] *= alpha;
            m = mo = mn;
          }
          for (int64_t d = 0; d < Dv; d++)
            o[row * Dv + d] = rows_out ? o[row * Dv + d] / z : 0.0f;
        } else {
          for (int64_t j = 0; j < Lk; j++)
            if (vis[j]) z += expf(s[j] - m);
          for (int64_t j = 0; j < Lk; j++) /* O's weights, unnormalised: dropout applied */
            ez[j] = vis[j] ? expf(s[j] - m) * (float)t_dropout_factor(p, b, h, i, j) : 0.0f;
          for (int64_t d = 0; d < Dv; d++) {
            float acc = 0;
            for (int64_t j = 0; j < Lk; j++)
              if (vis[j])
                acc += ez[j] * v[b * p->v_stride[0] + hk * p->v_stride[1] + j * p->v_stride[2] +
                                 d * p->v_stride[3]];
            o[row * Dv + d] = rows_out ? acc / z : 0.0f;
          }
        }
        if (lse) lse[row] = rows_out ? m + logf(z) : -INFINITY;
        if (probs)
          for (int64_t j = 0; j < Lk; j++)
            probs[row * Lk + j] = vis[j] ? expf(s[j] - m) / z : 0.0f;
      }
  free(s);
  free(ez);
  free(qs);
  free(vis);
}

/* ---- the tolerance rule ---- */

int t_compare(const char *label, const char *what, const float *ker, const double *ref,
              const float *const *bases, int n_bases, size_t n, double factor, double max_factor) {
  double err = 0, ss = 0, base_err = 0, floor_err = 0, base_ss[8] = {0};
  size_t worst = 0, n_finite = 0;
  for (size_t i = 0; i < n; i++) {
    const double r = ref[i], x = ker[i];
    if (isnan(r) != isnan(x) || (isinf(r) && x != r)) {
      fprintf(stderr, "  %s: %s[%zu] = %g but the fp64 oracle has %g\n  case: %s\n", what, what, i,
              x, r, label);
      return 0;
    }
    if (!isfinite(r)) continue;
    n_finite++;
    if (fabs(x - r) > err) err = fabs(x - r), worst = i;
    ss += (x - r) * (x - r);
    for (int bi = 0; bi < n_bases && bi < 8; bi++) {
      const double e = fabs((double)bases[bi][i] - r);
      if (!isfinite(e)) continue;
      if (e > base_err) base_err = e;
      base_ss[bi] += e * e;
    }
    /* one fp32 add's rounding at the output's magnitude, taken as its bound (half an ulp of
     * |ref| + 0.3) so that a case with a single output cannot fail on the luck of one rounding */
    const float mag = (float)fabs(r) + 0.3f;
    const double fl = 0.5 * ((double)nextafterf(mag, INFINITY) - (double)mag);
    if (fl > floor_err) floor_err = fl;
  }
  double base_rms = 0;
  for (int bi = 0; bi < n_bases && bi < 8; bi++)
    if (base_ss[bi] > base_rms) base_rms = base_ss[bi];
  base_rms = n_finite ? sqrt(base_rms / (double)n_finite) : 0;
  const double rms = n_finite ? sqrt(ss / (double)n_finite) : 0;
  const double bound = max_factor * base_err + 2.0 * floor_err;
  const double rms_bound = factor * base_rms + 2.0 * floor_err;
  if (err > bound || rms > rms_bound) {
    fprintf(stderr,
            "  %s: max error %.3g at [%zu] (kernel %.9g, oracle %.9g), bound %.3g = %.1f x "
            "baseline max error %.3g + floor %.3g; rms error %.3g, bound %.3g = %.1f x baseline "
            "rms %.3g + floor\n  case: %s\n",
            what, err, worst, (double)ker[worst], ref[worst], bound, max_factor, base_err,
            2.0 * floor_err, rms, rms_bound, factor, base_rms, label);
    return 0;
  }
  return 1;
}

int t_kernel_selected(attn_kernel kernel) {
  if (!attn_kernel_supported(kernel)) return 0;
  const char *list = getenv("ATTN_TEST_KERNELS");
  if (!list || !*list) return 1;
  const char *name = attn_kernel_name(kernel);
  const size_t n = strlen(name);
  for (const char *p = list; (p = strstr(p, name)) != NULL; p += n)
    if ((p == list || p[-1] == ',') && (p[n] == '\0' || p[n] == ',')) return 1;
  return 0;
}

void t_check_kernel_selection(void) {
  int any = 0;
  for (int k = 1; k < ATTN_KERNEL_COUNT_; k++)
    any |= t_kernel_selected((attn_kernel)k);
  CHECKF(any, "ATTN_TEST_KERNELS=%s names no kernel this CPU supports",
         getenv("ATTN_TEST_KERNELS"));
}

int t_check_case(tcase *c, attn_kernel kernel, int threads, int want_probs) {
  char label[512];
  tcase_label(c, label, sizeof label);
  const tspec *s = &c->spec;
  const size_t no = (size_t)(s->B * s->Hq * s->Lq * s->Dv), nl = (size_t)(s->B * s->Hq * s->Lq),
               np = (size_t)(s->B * s->Hq * s->Lq * s->Lk);
  touts out;
  touts_make(&out, c, 1, want_probs);
  attn_status st = t_run(c, kernel, threads, &out);
  int ok = st == ATTN_STATUS_OK;
  CHECKF(ok, "%s kernel failed: %s: %s\n  case: %s", attn_kernel_name(kernel), attn_status_str(st),
         attn_last_error(), label);
  if (!ok) {
    touts_free(&out);
    return 0;
  }
  ok &= tbuf_check_output(&out.o, "o", 1);
  ok &= tbuf_check_output(&out.lse, "lse", 1);
  if (want_probs) ok &= tbuf_check_output(&out.probs, "probs", 1);
  CHECKF(ok, "output guards/gaps/coverage (%s kernel)\n  case: %s", attn_kernel_name(kernel),
         label);

  enum { NB = 3 }; /* baselines */
  float *ko = malloc(sizeof(float) * (no + 1)), *kl = malloc(sizeof(float) * (nl + 1));
  float *bo = malloc(sizeof(float) * (NB * no + 1)), *bl = malloc(sizeof(float) * (NB * nl + 1));
  double *ro = malloc(sizeof(double) * (no + 1)), *rl = malloc(sizeof(double) * (nl + 1));
  float *kp = NULL, *bp = NULL;
  double *rp = NULL;
  if (want_probs) {
    kp = malloc(sizeof(float) * (np + 1));
    bp = malloc(sizeof(float) * (NB * np + 1));
    rp = malloc(sizeof(double) * (np + 1));
    tbuf_gather(&out.probs, kp);
  }
  tbuf_gather(&out.o, ko);
  tbuf_gather(&out.lse, kl);
  const float *q = tbuf_f32(&c->q), *k = tbuf_f32(&c->k), *v = tbuf_f32(&c->v);
  const attn_params up = unpaged_params(c);
  oracle_forward(&up, q, k, v, ro, rl, rp);
  const float *bos[NB], *bls[NB], *bps[NB];
  for (int bi = 0; bi < NB; bi++) {
    bos[bi] = bo + (size_t)bi * no, bls[bi] = bl + (size_t)bi * nl;
    bps[bi] = bp ? bp + (size_t)bi * np : NULL;
    baseline_forward(&up, bi, q, k, v, bo + (size_t)bi * no, bl + (size_t)bi * nl,
                     bp ? bp + (size_t)bi * np : NULL);
  }

  char what[64];
  snprintf(what, sizeof what, "O(%s)", attn_kernel_name(kernel));
  int cmp = t_compare(label, what, ko, ro, bos, NB, no, TOL_FACTOR_FWD, TOL_MAX_FACTOR);
  snprintf(what, sizeof what, "LSE(%s)", attn_kernel_name(kernel));
  cmp &= t_compare(label, what, kl, rl, bls, NB, nl, TOL_FACTOR_FWD, TOL_MAX_FACTOR);
  if (want_probs) {
    snprintf(what, sizeof what, "P(%s)", attn_kernel_name(kernel));
    cmp &= t_compare(label, what, kp, rp, bps, NB, np, TOL_FACTOR_FWD, TOL_MAX_FACTOR);
  }
  /* the empty-row rule is exact: O = +0.0, LSE = −inf, P = 0 */
  size_t empty_bad = 0;
  for (size_t r = 0; r < nl; r++) {
    if (rl[r] != -INFINITY) continue;
    for (size_t d = 0; d < (size_t)s->Dv; d++)
      if (ko[r * (size_t)s->Dv + d] != 0.0f || signbit(ko[r * (size_t)s->Dv + d])) empty_bad++;
    if (kl[r] != -INFINITY) empty_bad++;
    if (want_probs)
      for (size_t j = 0; j < (size_t)s->Lk; j++)
        if (kp[r * (size_t)s->Lk + j] != 0.0f) empty_bad++;
  }
  CHECKF(cmp, "%s kernel within tolerance of the fp64 oracle", attn_kernel_name(kernel));
  CHECKF(empty_bad == 0, "%zu values break the empty-row rule (%s)\n  case: %s", empty_bad,
         attn_kernel_name(kernel), label);
  free(ko), free(kl), free(bo), free(bl), free(ro), free(rl), free(kp), free(bp), free(rp);
  touts_free(&out);
  return ok && cmp && empty_bad == 0;
}

/* ---- features: each sets one visibility or score option of a spec ---- */

static void f_causal(tspec *s) { s->causal = 1; }
static void f_window_left(tspec *s) { s->window_left = 5; }
static void f_window_right(tspec *s) { s->window_right = 3; }
static void f_window_zero(tspec *s) { s->window_left = s->window_right = 0; }
static void f_window_huge(tspec *s) { s->window_left = s->window_right = 100000; }
static void f_kv_len(tspec *s) { s->kv_len = 1; }
static void f_q_len(tspec *s) { s->q_len = 1; }
static void f_varlen(tspec *s) { s->q_len = s->kv_len = 1, s->causal = 1; }
static void f_mask_full(tspec *s) { s->mask = MASK_FULL; }
static void f_mask_bcast(tspec *s) { s->mask = MASK_BCAST_BH; }
static void f_mask_keypad(tspec *s) { s->mask = MASK_KEYPAD; }
static void f_mask_rows(tspec *s) { s->mask = MASK_ROWS; }
static void f_bias_full(tspec *s) { s->bias = BIAS_FULL; }
static void f_bias_bcast(tspec *s) { s->bias = BIAS_BCAST; }
static void f_bias_neginf(tspec *s) { s->bias = BIAS_NEGINF; }
static void f_softcap(tspec *s) { s->softcap = 1.5f, s->q_mul = 3.0f; }
static void f_alibi(tspec *s) { s->alibi = 1; }
static void f_sinks(tspec *s) { s->sinks = 1; }
static void f_dropout(tspec *s) { s->dropout = 0.25f; }
static void f_scale(tspec *s) { s->has_scale = 1, s->scale = -0.7f; }

const t_feature t_features[] = {
    {"causal", f_causal},
    {"window_left", f_window_left},
    {"window_right", f_window_right},
    {"window_zero", f_window_zero},
    {"window_huge", f_window_huge},
    {"kv_len", f_kv_len},
    {"q_len", f_q_len},
    {"varlen_causal", f_varlen},
    {"mask_full", f_mask_full},
    {"mask_bcast", f_mask_bcast},
    {"mask_keypad", f_mask_keypad},
    {"mask_rows", f_mask_rows},
    {"bias_full", f_bias_full},
    {"bias_bcast", f_bias_bcast},
    {"bias_neginf", f_bias_neginf},
    {"softcap", f_softcap},
    {"alibi", f_alibi},
    {"sinks", f_sinks},
    {"dropout", f_dropout},
    {"scale", f_scale},
};
const int t_n_features = (int)(sizeof t_features / sizeof t_features[0]);
