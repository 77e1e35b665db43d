/*
 * bert.c — the BERT encoder on attn. Per layer, for a batch of sequences packed one after another
 * without padding, X [Σ len, H] (no work and no memory for padding rows):
 *     [Q K V] = X·[Wq Wk Wv]ᵀ + b            (one sgemm; heads are column blocks, read by attn
 *                                            with strides {·, Dh, 3H, 1}, no copies)
 *     A = attn_forward(Q, K, V)              bidirectional within each sequence (cu_seqlens)
 *     X = LayerNorm(X + A·Woᵀ + bo)
 *     X = LayerNorm(X + GELU(X·W1ᵀ + b1)·W2ᵀ + b2)     (GELU with erf, as BERT)
 * after the embeddings LayerNorm(word + position + token type 0). Weights are Linear [out, in].
 * Everything but attention is row-wise, so it runs as fixed bands of rows on `threads` workers
 * (each multiplying single-threaded: gemm_avx512.c on packed weights, or OpenBLAS); attention
 * runs on attn's pool.
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

static int cpu_has_avx512f(void) {
#if defined(__x86_64__) || defined(__i386__)
  return __builtin_cpu_supports("avx512f");
#else
  return 0;
#endif
}

size_t attn_bert_packed_floats(int out, int in) {
  return (size_t)(out + 31) / 32 * 32 * (size_t)in;
}

/* Panel p of wp: W[32p + j][k] at wp[(p·in + k)·32 + j], zeros for outputs past `out`. */
void attn_bert_pack_weights(const float *w, int out, int in, float *wp) {
  for (int p = 0; p < (out + 31) / 32; p++)
    for (int k = 0; k < in; k++)
      for (int j = 0; j < 32; j++) {
        const int o = 32 * p + j;
        wp[((size_t)p * (size_t)in + (size_t)k) * 32 + (size_t)j] =
            o < out ? w[(size_t)o * (size_t)in + (size_t)k] : 0.0f;
      }
}

/* w [out, in] packed into a new 64-byte-aligned array, or NULL when out of memory. */
static float *packed(const float *w, int out, int in) {
  const size_t bytes = sizeof(float) * attn_bert_packed_floats(out, in);
  float *wp = aligned_alloc(64, (bytes + 63) / 64 * 64);
  if (wp) attn_bert_pack_weights(w, out, in, wp);
  return wp;
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
  const char *choice = getenv("ATTN_BERT_GEMM");
  const int has_avx512 = cpu_has_avx512f();
  if (!bad && choice && *choice && strcmp(choice, "auto") != 0 && strcmp(choice, "avx512") != 0 &&
      strcmp(choice, "openblas") != 0) {
    snprintf(err, es, "ATTN_BERT_GEMM is '%s': it must be auto, avx512 or openblas", choice);
    bad = 1;
  } else if (!bad && choice && strcmp(choice, "avx512") == 0 && !has_avx512) {
    snprintf(err, es, "ATTN_BERT_GEMM is 'avx512' but this CPU has no AVX-512F");
    bad = 1;
  }
  m->gemm = has_avx512 && !(choice && strcmp(choice, "openblas") == 0) ? ATTN_BERT_GEMM_AVX512
                                                                       : ATTN_BERT_GEMM_OPENBLAS;
  for (int l = 0; l < m->layers && !bad && m->gemm == ATTN_BERT_GEMM_AVX512; l++) {
    attn_bert_layer *L = &m->layer[l];
    const int F = m->inter;
    if (!(L->pqkv = packed(L->wqkv, 3 * H, H)) || !(L->po = packed(L->wo, H, H)) ||
        !(L->p1 = packed(L->w1, F, H)) || !(L->p2 = packed(L->w2, H, F))) {
      snprintf(err, es, "out of memory");
      bad = 1;
    }
    free(L->wqkv); /* only OpenBLAS reads the stacked copy */
    L->wqkv = NULL;
  }
  if (bad) attn_bert_free(m);
  return bad ? -1 : 0;
}

void attn_bert_free(attn_bert *m) {
  for (int l = 0; l < 12; l++) {
    attn_bert_layer *L = &m->layer[l];
    free(L->wqkv), free(L->bqkv), free(L->pqkv), free(L->po), free(L->p1), free(L->p2);
  }
  attn_st_close(&m->st);
  attn_bert_vocab_free(&m->vocab);
}

/* y [rows, out] = x [rows, in] · wᵀ (+ b, unless b is NULL: the caller adds it in a later pass),
 * w [out, in], or wp: w packed (attn_bert_pack_weights) for the AVX-512 product */
static void linear(const attn_bert *m, const float *x, const float *w, const float *wp,
                   const float *b, float *y, int rows, int in, int out) {
#if defined(__x86_64__) || defined(__i386__)
  if (m->gemm == ATTN_BERT_GEMM_AVX512) {
    attn_bert_gemm_avx512(x, (size_t)in, wp, b, y, (size_t)out, rows, in, out);
    return;
  }
#else
  (void)wp;
#endif
  if (b)
    for (int r = 0; r < rows; r++)
      memcpy(y + (size_t)r * (size_t)out, b, sizeof(float) * (size_t)out);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, out, in, 1.0f, x, in, w, in,
              b ? 1.0f : 0.0f, y, out);
}

/* x = LayerNorm(x + r + rb) per row (eps 1e-12, as BERT; r and rb may be NULL), statistics in
 * double over four interleaved partial sums. */
void attn_bert_add_layernorm(float *x, const float *r, const float *rb, const float *g,
                             const float *b, int rows, int h) {
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

/* The same pass four doubles at a time where the CPU has AVX2 (layernorm_avx2.c; the same bits;
 * on the Zen 4 0.77 against 1.5 ns per value, where the scalar pass took 2.1 % of a 32-token
 * batch's time). */
static void add_layernorm(float *x, const float *r, const float *rb, const float *g, const float *b,
                          int rows, int h) {
#if defined(__x86_64__) || defined(__i386__)
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    attn_bert_add_layernorm_avx2(x, r, rb, g, b, rows, h);
    return;
  }
#endif
  attn_bert_add_layernorm(x, r, rb, g, b, rows, h);
}

/* GELU passes (gelu_body.h): 4 lanes at the baseline ISA, 8 with AVX2 + FMA where the CPU has
 * them (2.2× faster per value on the Zen 4), 16 with AVX-512F (0.48 against 0.64 ns per value
 * there); they differ in rounding only, where a compiler fuses multiply-adds. */
#define GELU_LANES 4
#define GELU_ROWS_FN attn_bert_gelu_rows_sse
#include "gelu_body.h"

/* x [rows, n] = GELU(x + b) with b [n] or NULL: the bias of the first FFN product folded into its
 * activation pass. */
static void gelu_rows(float *x, const float *b, size_t rows, size_t n) {
#if defined(__x86_64__) || defined(__i386__)
  if (__builtin_cpu_supports("avx512f")) {
    attn_bert_gelu_rows_avx512(x, b, rows, n);
    return;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    attn_bert_gelu_rows_avx2(x, b, rows, n);
    return;
  }
#endif
  attn_bert_gelu_rows_sse(x, b, rows, n);
}

void attn_bert_gelu(float *x, size_t n) { gelu_rows(x, NULL, 1, n); }

/* The row-wise part of a layer — everything but attention: each worker takes a fixed band of
 * rows (so results do not depend on timing) with single-threaded products, keeping the band's
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

/* Rows per step of a band's chain on the AVX-512 path: the step's activations (x, the attention
 * output, the intermediate [48, 1536]) stay in L2 while the layer's packed weights stream from L3
 * (1 thread, 128 tokens: 3 % faster than whole bands, and bitwise the same). OpenBLAS takes the
 * whole band in each call: it packs the weights on every call, and on 48 rows that made the
 * encoder 1.2–1.4× slower. */
enum { SUB_ROWS = 48 };

static void *band(void *arg) {
  const band_arg *ba = arg;
  const band_job *j = ba->job;
  const int H = j->m->hidden, F = j->m->inter;
  const int r0 = (int)((int64_t)j->rows * ba->w / j->workers);
  const int r1 = (int)((int64_t)j->rows * (ba->w + 1) / j->workers);
  const int step = j->m->gemm == ATTN_BERT_GEMM_AVX512 ? SUB_ROWS : r1 - r0;
  for (int s0 = r0; s0 < r1; s0 += step) {
    const int nr = r1 - s0 < step ? r1 - s0 : step;
    float *x = j->x + (size_t)s0 * (size_t)H, *t = j->qkv + (size_t)s0 * (size_t)H * 3;
    if (j->phase == 0) {
      linear(j->m, x, j->L->wqkv, j->L->pqkv, j->L->bqkv, t, nr, H, 3 * H);
      continue;
    }
    float *inter = j->inter + (size_t)s0 * (size_t)F;
    /* the biases of these three products are added in the pass that follows each */
    linear(j->m, j->a + (size_t)s0 * (size_t)H, j->L->wo, j->L->po, NULL, t, nr, H, H);
    add_layernorm(x, t, j->L->bo, j->L->ln1_g, j->L->ln1_b, nr, H);
    linear(j->m, x, j->L->w1, j->L->p1, NULL, inter, nr, H, F);
    gelu_rows(inter, j->L->b1, (size_t)nr, (size_t)F);
    linear(j->m, inter, j->L->w2, j->L->p2, NULL, t, nr, F, H);
    add_layernorm(x, t, j->L->b2, j->L->ln2_g, j->L->ln2_b, nr, H);
  }
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
  int64_t *cu = malloc(sizeof(int64_t) * ((size_t)n + 1)); /* sequence i: rows cu[i] .. cu[i+1]-1 */
  if (!cu) {
    snprintf(err, es, "out of memory");
    return -1;
  }
  cu[0] = 0;
  for (int i = 0; i < n; i++) {
    if (len[i] < 1 || len[i] > m->max_pos) {
      snprintf(err, es, "sequence %d has %d tokens (1 to %d allowed)", i, len[i], m->max_pos);
      free(cu);
      return -1;
    }
    if (len[i] > T) T = len[i];
    cu[i + 1] = cu[i] + len[i];
  }
  const int rows = (int)cu[n];
  float *x = out, *q = malloc(sizeof(float) * (size_t)rows * (size_t)H * 4);
  float *inter = malloc(sizeof(float) * (size_t)rows * (size_t)m->inter);
  if (!q || !inter) {
    free(q), free(inter), free(cu);
    snprintf(err, es, "out of memory");
    return -1;
  }
  float *qkv = q, *a = q + (size_t)rows * (size_t)H * 3; /* qkv [rows, 3H], a [rows, H] */
  for (int i = 0; i < n; i++)                            /* embeddings */
    for (int t = 0; t < len[i]; t++) {
      const int id = ids[i][t];
      float *row = x + ((size_t)cu[i] + (size_t)t) * (size_t)H;
      for (int d = 0; d < H; d++)
        row[d] = m->word_emb[(size_t)id * (size_t)H + (size_t)d] +
                 m->pos_emb[(size_t)t * (size_t)H + (size_t)d] + m->type_emb[d];
    }
  add_layernorm(x, NULL, NULL, m->emb_ln_g, m->emb_ln_b, rows, H);
  attn_params p;
  attn_params_init(&p, n, NH, NH, T, T, Dh, Dh);
  /* packed sequences: Q, K, V are column blocks of qkv [rows, 3H]; O is [rows, heads, Dh] */
  const int64_t qkv_stride[4] = {(int64_t)rows * 3 * H, Dh, 3 * H, 1};
  memcpy(p.q_stride, qkv_stride, sizeof qkv_stride);
  memcpy(p.k_stride, qkv_stride, sizeof qkv_stride);
  memcpy(p.v_stride, qkv_stride, sizeof qkv_stride);
  attn_strides_blhd(p.o_stride, NH, rows, Dh);
  p.cu_seqlens_q = cu, p.cu_seqlens_k = cu; /* bidirectional over each sequence's own tokens */
  p.threads = m->threads;
  /* one workspace for the layers' attention calls (the one that returns P may need more) */
  size_t ws_bytes = 0, with_p = 0;
  if (attn_forward_scratch_bytes(&p, 0, &ws_bytes) != ATTN_STATUS_OK ||
      (probs_layer >= 0 && attn_forward_scratch_bytes(&p, 1, &with_p) != ATTN_STATUS_OK)) {
    snprintf(err, es, "attention: %s", attn_last_error());
    free(q), free(inter), free(cu);
    return -1;
  }
  ws_bytes = with_p > ws_bytes ? with_p : ws_bytes;
  void *workspace = aligned_alloc(64, ws_bytes ? ws_bytes : 64); /* multiples of 64 */
  if (!workspace) {
    snprintf(err, es, "out of memory");
    free(q), free(inter), free(cu);
    return -1;
  }
  p.workspace = workspace, p.workspace_bytes = ws_bytes;
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
  free(q), free(inter), free(cu), free(workspace);
  return rc;
}

int attn_bert_embed(const attn_bert *m, int n, const char *const *texts, float *emb, char *err,
                    size_t es) {
  int **ids = calloc((size_t)n + 1, sizeof *ids), *len = calloc((size_t)n + 1, sizeof *len);
  int rc = ids && len ? 0 : -1;
  size_t total = 0;
  for (int i = 0; i < n && rc == 0; i++) {
    rc = attn_bert_tokenize(&m->vocab, texts[i], m->max_seq, &ids[i], &len[i]);
    total += rc == 0 ? (size_t)len[i] : 0;
  }
  float *out = rc ? NULL : malloc(sizeof(float) * (total ? total : 1) * (size_t)m->hidden);
  if (!out) {
    snprintf(err, es, "out of memory");
    rc = -1;
  }
  if (rc == 0) rc = attn_bert_encode(m, n, (const int *const *)ids, len, out, -1, NULL, err, es);
  const float *seq = out;                  /* sequence i's rows follow sequence i − 1's */
  for (int i = 0; i < n && rc == 0; i++) { /* mean over the tokens, then L2 */
    const int H = m->hidden;
    double acc[1024] = {0}, norm = 0;
    for (int t = 0; t < len[i]; t++)
      for (int d = 0; d < H; d++)
        acc[d] += seq[(size_t)t * (size_t)H + (size_t)d];
    seq += (size_t)len[i] * (size_t)H;
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
