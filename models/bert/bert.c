/*
 * bert.c — the BERT encoder on attn. Per layer, for a padded batch X [n·T, H]:
 *     [Q K V] = X·[Wq Wk Wv]ᵀ + b            (one sgemm; heads are column blocks, read by attn
 *                                            with strides {T·3H, Dh, 3H, 1}, no copies)
 *     A = attn_forward(Q, K, V)              bidirectional, kv_len = each sequence's length
 *     X = LayerNorm(X + A·Woᵀ + bo)
 *     X = LayerNorm(X + GELU(X·W1ᵀ + b1)·W2ᵀ + b2)     (GELU with erf, as BERT)
 * after the embeddings LayerNorm(word + position + token type 0). Weights are Linear [out, in].
 * Everything but attention is row-wise, so it runs as fixed bands of rows on `threads` workers
 * (single-threaded OpenBLAS inside each); attention runs on attn's pool.
 */
#include "bert.h"

#include "attn.h"

#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int get(const attn_bert *m, const float **out, const char *name, int ndim, int64_t a,
               int64_t b, char *err, size_t es) {
  const int64_t shape[2] = {a, b};
  *out = attn_st_get(&m->st, name, ndim, shape, err, es);
  return *out ? 0 : -1;
}

int attn_bert_load(attn_bert *m, const char *dir, char *err, size_t es) {
  memset(m, 0, sizeof *m);
  char path[4096];
  snprintf(path, sizeof path, "%s/model.safetensors", dir);
  if (attn_st_open(&m->st, path, err, es)) return -1;
  snprintf(path, sizeof path, "%s/vocab.txt", dir);
  if (attn_bert_vocab_load(&m->vocab, path, err, es)) {
    attn_st_close(&m->st);
    return -1;
  }
  m->layers = 6, m->hidden = 384, m->heads = 12, m->inter = 1536, m->max_pos = 512;
  m->max_seq = 256; /* sentence-transformers' max_seq_length for this model */
  const int64_t H = m->hidden, V = m->vocab.n;
  int bad =
      get(m, &m->word_emb, "embeddings.word_embeddings.weight", 2, V, H, err, es) ||
      get(m, &m->pos_emb, "embeddings.position_embeddings.weight", 2, m->max_pos, H, err, es) ||
      get(m, &m->type_emb, "embeddings.token_type_embeddings.weight", 2, 2, H, err, es) ||
      get(m, &m->emb_ln_g, "embeddings.LayerNorm.weight", 1, H, 0, err, es) ||
      get(m, &m->emb_ln_b, "embeddings.LayerNorm.bias", 1, H, 0, err, es);
  for (int l = 0; l < m->layers && !bad; l++) {
    attn_bert_layer *L = &m->layer[l];
    const struct {
      const char *suffix;
      const float **dst;
      int ndim;
      int64_t a, b;
    } w[] = {
        {"attention.self.query.weight", &L->wq, 2, H, H},
        {"attention.self.query.bias", &L->bq, 1, H, 0},
        {"attention.self.key.weight", &L->wk, 2, H, H},
        {"attention.self.key.bias", &L->bk, 1, H, 0},
        {"attention.self.value.weight", &L->wv, 2, H, H},
        {"attention.self.value.bias", &L->bv, 1, H, 0},
        {"attention.output.dense.weight", &L->wo, 2, H, H},
        {"attention.output.dense.bias", &L->bo, 1, H, 0},
        {"attention.output.LayerNorm.weight", &L->ln1_g, 1, H, 0},
        {"attention.output.LayerNorm.bias", &L->ln1_b, 1, H, 0},
        {"intermediate.dense.weight", &L->w1, 2, m->inter, H},
        {"intermediate.dense.bias", &L->b1, 1, m->inter, 0},
        {"output.dense.weight", &L->w2, 2, H, m->inter},
        {"output.dense.bias", &L->b2, 1, H, 0},
        {"output.LayerNorm.weight", &L->ln2_g, 1, H, 0},
        {"output.LayerNorm.bias", &L->ln2_b, 1, H, 0},
    };
    for (size_t i = 0; i < sizeof w / sizeof w[0] && !bad; i++) {
      char name[128];
      snprintf(name, sizeof name, "encoder.layer.%d.%s", l, w[i].suffix);
      bad = get(m, w[i].dst, name, w[i].ndim, w[i].a, w[i].b, err, es);
    }
  }
  for (int l = 0; l < m->layers && !bad; l++) { /* Q, K, V as one [3H, H] product */
    attn_bert_layer *L = &m->layer[l];
    L->wqkv = malloc(sizeof(float) * (size_t)(3 * H * H));
    L->bqkv = malloc(sizeof(float) * (size_t)(3 * H));
    if (!L->wqkv || !L->bqkv) {
      snprintf(err, es, "out of memory");
      bad = 1;
      break;
    }
    const float *w[3] = {L->wq, L->wk, L->wv}, *b[3] = {L->bq, L->bk, L->bv};
    for (int t = 0; t < 3; t++) {
      memcpy(L->wqkv + (size_t)(t * H * H), w[t], sizeof(float) * (size_t)(H * H));
      memcpy(L->bqkv + t * H, b[t], sizeof(float) * (size_t)H);
    }
  }
  if (bad) attn_bert_free(m);
  return bad ? -1 : 0;
}

void attn_bert_free(attn_bert *m) {
  for (int l = 0; l < 12; l++)
    free(m->layer[l].wqkv), free(m->layer[l].bqkv);
  attn_st_close(&m->st);
  attn_bert_vocab_free(&m->vocab);
}

/* y [rows, out] = x [rows, in] · wᵀ (+ b, unless b is NULL: the caller adds it in a later pass),
 * w [out, in] */
static void linear(const float *x, const float *w, const float *b, float *y, int rows, int in,
                   int out) {
  if (b)
    for (int r = 0; r < rows; r++)
      memcpy(y + (size_t)r * (size_t)out, b, sizeof(float) * (size_t)out);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, out, in, 1.0f, x, in, w, in,
              b ? 1.0f : 0.0f, y, out);
}

/* x = LayerNorm(x + r + rb) per row (eps 1e-12, as BERT; r and rb may be NULL), statistics in
 * double over four interleaved partial sums. */
static void add_layernorm(float *x, const float *r, const float *rb, const float *g, const float *b,
                          int rows, int h) {
  for (int i = 0; i < rows; i++) {
    float *row = x + (size_t)i * (size_t)h;
    if (r) {
      const float *ri = r + (size_t)i * (size_t)h;
      for (int d = 0; d < h; d++)
        row[d] += rb ? ri[d] + rb[d] : ri[d];
    }
    double s[4] = {0, 0, 0, 0}, v[4] = {0, 0, 0, 0};
    int d = 0;
    for (; d + 4 <= h; d += 4)
      for (int u = 0; u < 4; u++)
        s[u] += row[d + u];
    for (; d < h; d++)
      s[0] += row[d];
    const double mean = ((s[0] + s[1]) + (s[2] + s[3])) / h;
    for (d = 0; d + 4 <= h; d += 4)
      for (int u = 0; u < 4; u++)
        v[u] += (row[d + u] - mean) * (row[d + u] - mean);
    for (; d < h; d++)
      v[0] += (row[d] - mean) * (row[d] - mean);
    const double inv = 1.0 / sqrt(((v[0] + v[1]) + (v[2] + v[3])) / h + 1e-12);
    for (d = 0; d < h; d++)
      row[d] = (float)((row[d] - mean) * inv) * g[d] + b[d];
  }
}

/* GELU passes (gelu_body.h): 4 lanes at the baseline ISA, 8 with AVX2 + FMA where the CPU has
 * them (2.2× faster per value on the Zen 4; the two differ in rounding only, by the fused
 * multiply-adds). */
#define GELU_LANES 4
#define GELU_ROWS_FN attn_bert_gelu_rows_sse
#include "gelu_body.h"

/* x [rows, n] = GELU(x + b) with b [n] or NULL: the bias of the first FFN product folded into its
 * activation pass. */
static void gelu_rows(float *x, const float *b, size_t rows, size_t n) {
#if defined(__x86_64__) || defined(__i386__)
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    attn_bert_gelu_rows_avx2(x, b, rows, n);
    return;
  }
#endif
  attn_bert_gelu_rows_sse(x, b, rows, n);
}

void attn_bert_gelu(float *x, size_t n) { gelu_rows(x, NULL, 1, n); }

/* The row-wise part of a layer — everything but attention: each worker takes a fixed band of
 * rows (so results do not depend on timing) with single-threaded OpenBLAS, keeping the band's
 * activations in its caches through the whole chain, and no BLAS threads spin against attn's. */
typedef struct band_job {
  const attn_bert *m;
  const attn_bert_layer *L;
  float *x, *qkv, *a, *inter;
  int rows, workers, phase; /* phase 0: QKV product; 1: output, LayerNorm, FFN, LayerNorm */
} band_job;

typedef struct band_arg {
  const band_job *job;
  int w;
} band_arg;

static void *band(void *arg) {
  const band_arg *ba = arg;
  const band_job *j = ba->job;
  const int H = j->m->hidden, F = j->m->inter;
  const int r0 = (int)((int64_t)j->rows * ba->w / j->workers);
  const int r1 = (int)((int64_t)j->rows * (ba->w + 1) / j->workers), nr = r1 - r0;
  if (nr <= 0) return NULL;
  float *x = j->x + (size_t)r0 * (size_t)H, *t = j->qkv + (size_t)r0 * (size_t)H * 3;
  if (j->phase == 0) {
    linear(x, j->L->wqkv, j->L->bqkv, t, nr, H, 3 * H);
    return NULL;
  }
  float *inter = j->inter + (size_t)r0 * (size_t)F;
  /* the biases of these three products are added in the pass that follows each */
  linear(j->a + (size_t)r0 * (size_t)H, j->L->wo, NULL, t, nr, H, H);
  add_layernorm(x, t, j->L->bo, j->L->ln1_g, j->L->ln1_b, nr, H);
  linear(x, j->L->w1, NULL, inter, nr, H, F);
  gelu_rows(inter, j->L->b1, (size_t)nr, (size_t)F);
  linear(inter, j->L->w2, NULL, t, nr, F, H);
  add_layernorm(x, t, j->L->b2, j->L->ln2_g, j->L->ln2_b, nr, H);
  return NULL;
}

/* Runs band() for every worker: the caller is worker 0. */
static void run_bands(band_job *job) {
  pthread_t th[64];
  band_arg args[64];
  int started = 0;
  for (int w = 0; w < job->workers; w++)
    args[w] = (band_arg){job, w};
  for (int w = 1; w < job->workers; w++)
    if (pthread_create(&th[w], NULL, band, &args[w]) == 0)
      started = w;
    else
      break;
  for (int w = started + 1; w < job->workers; w++) /* no thread: do it here */
    band(&args[w]);
  band(&args[0]);
  for (int w = 1; w <= started; w++)
    pthread_join(th[w], NULL);
}

int attn_bert_encode(const attn_bert *m, int n, const int *const *ids, const int *len, float *out,
                     int probs_layer, float *probs, char *err, size_t es) {
  const int H = m->hidden, NH = m->heads, Dh = H / NH;
  int T = 1;
  for (int i = 0; i < n; i++) {
    if (len[i] < 1 || len[i] > m->max_pos) {
      snprintf(err, es, "sequence %d has %d tokens (1 to %d allowed)", i, len[i], m->max_pos);
      return -1;
    }
    if (len[i] > T) T = len[i];
  }
  const int rows = n * T;
  float *x = out, *q = malloc(sizeof(float) * (size_t)rows * (size_t)H * 4);
  float *inter = malloc(sizeof(float) * (size_t)rows * (size_t)m->inter);
  int64_t *kv_len = malloc(sizeof(int64_t) * (size_t)n);
  if (!q || !inter || !kv_len) {
    free(q), free(inter), free(kv_len);
    snprintf(err, es, "out of memory");
    return -1;
  }
  float *qkv = q, *a = q + (size_t)rows * (size_t)H * 3; /* qkv [rows, 3H], a [rows, H] */
  for (int i = 0; i < n; i++) { /* embeddings; padding rows repeat [PAD] and are never seen */
    kv_len[i] = len[i];
    for (int t = 0; t < T; t++) {
      const int id = t < len[i] ? ids[i][t] : m->vocab.pad;
      float *row = x + ((size_t)i * (size_t)T + (size_t)t) * (size_t)H;
      for (int d = 0; d < H; d++)
        row[d] = m->word_emb[(size_t)id * (size_t)H + (size_t)d] +
                 m->pos_emb[(size_t)t * (size_t)H + (size_t)d] + m->type_emb[d];
    }
  }
  add_layernorm(x, NULL, NULL, m->emb_ln_g, m->emb_ln_b, rows, H);
  attn_params p;
  attn_params_init(&p, n, NH, NH, T, T, Dh, Dh);
  /* Q, K, V are column blocks of qkv [n, T, 3H]; O is [n, T, heads, Dh] */
  const int64_t qkv_stride[4] = {(int64_t)T * 3 * H, Dh, 3 * H, 1};
  memcpy(p.q_stride, qkv_stride, sizeof qkv_stride);
  memcpy(p.k_stride, qkv_stride, sizeof qkv_stride);
  memcpy(p.v_stride, qkv_stride, sizeof qkv_stride);
  attn_strides_blhd(p.o_stride, NH, T, Dh);
  p.kv_len = kv_len; /* bidirectional over each sequence's own tokens */
  p.threads = m->threads;
  int rc = 0;
  int workers = m->threads > 0 ? m->threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
  workers = workers < 1 ? 1 : workers > 64 ? 64 : workers;
  if (workers > rows / 16 + 1) workers = rows / 16 + 1; /* bands of at least ~16 rows */
  openblas_set_num_threads(1);                          /* the bands are the parallelism */
  band_job job = {m, NULL, x, qkv, a, inter, rows, workers, 0};
  for (int l = 0; l < m->layers && rc == 0; l++) {
    const attn_bert_layer *L = &m->layer[l];
    job.L = L, job.phase = 0;
    run_bands(&job);
    attn_status st =
        attn_forward(&p, qkv, qkv + H, qkv + 2 * H, a, NULL, l == probs_layer ? probs : NULL);
    if (st != ATTN_STATUS_OK) {
      snprintf(err, es, "layer %d: %s", l, attn_last_error());
      rc = -1;
      break;
    }
    job.phase = 1;
    run_bands(&job);
  }
  free(q), free(inter), free(kv_len);
  return rc;
}

int attn_bert_embed(const attn_bert *m, int n, const char *const *texts, float *emb, char *err,
                    size_t es) {
  int **ids = calloc((size_t)n + 1, sizeof *ids), *len = calloc((size_t)n + 1, sizeof *len);
  int rc = ids && len ? 0 : -1, T = 1;
  for (int i = 0; i < n && rc == 0; i++) {
    rc = attn_bert_tokenize(&m->vocab, texts[i], m->max_seq, &ids[i], &len[i]);
    if (len[i] > T) T = len[i];
  }
  float *out = rc ? NULL : malloc(sizeof(float) * (size_t)n * (size_t)T * (size_t)m->hidden);
  if (!out) {
    snprintf(err, es, "out of memory");
    rc = -1;
  }
  if (rc == 0) rc = attn_bert_encode(m, n, (const int *const *)ids, len, out, -1, NULL, err, es);
  for (int i = 0; i < n && rc == 0; i++) { /* mean over the tokens, then L2 */
    const int H = m->hidden;
    double acc[1024] = {0}, norm = 0;
    for (int t = 0; t < len[i]; t++)
      for (int d = 0; d < H; d++)
        acc[d] += out[((size_t)i * (size_t)T + (size_t)t) * (size_t)H + (size_t)d];
    for (int d = 0; d < H; d++)
      norm += (acc[d] / len[i]) * (acc[d] / len[i]);
    norm = sqrt(norm);
    for (int d = 0; d < H; d++)
      emb[(size_t)i * (size_t)H + (size_t)d] =
          (float)(acc[d] / len[i] / (norm > 1e-12 ? norm : 1e-12));
  }
  for (int i = 0; i < n && ids; i++)
    free(ids[i]);
  free(ids), free(len), free(out);
  return rc;
}
