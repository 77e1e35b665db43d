/*
 * bert.h — a BERT encoder on attn (libattn_bert): safetensors weights, the WordPiece tokenizer,
 * the encoder layers with bidirectional attention through attn_forward, mean pooling and L2
 * normalisation, as sentence-transformers' all-MiniLM-L6-v2 (6 layers, hidden 384, 12 heads of
 * 32, vocabulary 30522, lower-case) computes them. The dense layers multiply on attn_bert's own
 * AVX-512 product, weights packed at load, where the CPU has AVX-512F (on the Zen 4, one thread,
 * the encoder's shapes at 512 rows: 93–100 % of the FMA peak against OpenBLAS sgemm's 81–89 %),
 * through OpenBLAS otherwise.
 */
#ifndef ATTN_BERT_H
#define ATTN_BERT_H

#include <stddef.h>
#include <stdint.h>

/* ---- safetensors (mmap, header validated) ---- */

typedef struct attn_st_tensor {
  char name[128];
  char dtype[8];
  int ndim;
  int64_t shape[8];
  const void *data; /* inside the mapping */
  size_t bytes;
} attn_st_tensor;

typedef struct attn_st_file {
  void *map;
  size_t size;
  attn_st_tensor *t;
  int n;
} attn_st_file;

/* Maps and validates path (header JSON, dtypes, shapes against byte ranges, ranges inside the
 * file and not overlapping). Returns 0, or −1 with a message in err. */
int attn_st_open(attn_st_file *f, const char *path, char *err, size_t err_size);
void attn_st_close(attn_st_file *f);
/* The F32 tensor `name` of exactly the given shape (ndim values), or NULL with a message naming
 * the tensor and what is wrong. */
const float *attn_st_get(const attn_st_file *f, const char *name, int ndim, const int64_t *shape,
                         char *err, size_t err_size);

/* ---- tokenizer ---- */

typedef struct attn_bert_vocab {
  char **words;
  int n;
  int *slots; /* hash table of ids, −1 empty */
  size_t cap;
  int pad, unk, cls, sep, mask;
} attn_bert_vocab;

int attn_bert_vocab_load(attn_bert_vocab *v, const char *path, char *err, size_t err_size);
void attn_bert_vocab_free(attn_bert_vocab *v);
/* The id of the token s[0..n), or −1. */
int attn_bert_vocab_find(const attn_bert_vocab *v, const char *s, size_t n);
/* [CLS] + WordPiece ids of text (UTF-8) + [SEP], at most max_len ids (≤ 0: no limit); *ids is
 * malloc'ed. Returns 0, or −1 when out of memory. */
int attn_bert_tokenize(const attn_bert_vocab *v, const char *text, int max_len, int **ids, int *n);

/* ---- the model ---- */

typedef struct attn_bert_layer {
  const float *wq, *bq, *wk, *bk, *wv, *bv, *wo, *bo, *ln1_g, *ln1_b;
  const float *w1, *b1, *w2, *b2, *ln2_g, *ln2_b;
  float *wqkv, *bqkv; /* [3·hidden, hidden] and [3·hidden]: Q, K, V weights stacked, one product */
  /* wqkv, wo, w1, w2 packed for the AVX-512 product (else NULL; wqkv is then freed): 40.5 MiB for
   * the six layers */
  float *pqkv, *po, *p1, *p2;
} attn_bert_layer;

/* How the dense layers multiply: chosen at load from the environment variable ATTN_BERT_GEMM —
 * "avx512" (an error where the CPU lacks AVX-512F), "openblas", or unset / "auto" (avx512 where
 * the CPU has it). */
typedef enum attn_bert_gemm { ATTN_BERT_GEMM_OPENBLAS, ATTN_BERT_GEMM_AVX512 } attn_bert_gemm;

typedef struct attn_bert {
  attn_st_file st;
  attn_bert_vocab vocab;
  int layers, hidden, heads, inter, max_pos, max_seq;
  const float *word_emb, *pos_emb, *type_emb, *emb_ln_g, *emb_ln_b;
  attn_bert_layer layer[12];
  attn_bert_gemm gemm;
  int threads; /* for attn_forward; 0 = all CPUs */
} attn_bert;

/* Loads DIR/model.safetensors and DIR/vocab.txt (all-MiniLM-L6-v2's shapes). Returns 0 or −1
 * with a message. */
int attn_bert_load(attn_bert *m, const char *dir, char *err, size_t err_size);
void attn_bert_free(attn_bert *m);

/* Encodes n token sequences (ids[i], 1 ≤ len[i] ≤ max_pos) as one batch packed without padding:
 * out [Σ len, hidden] receives the last-layer states, sequence i's len[i] rows right after
 * sequence i − 1's (each sequence sees only its own tokens; no padding row is stored or computed);
 * probs, if non-NULL, receives the attention weights of layer `probs_layer` [n, heads, T, T]
 * (T = the longest length; entries past a sequence's length unspecified). Returns 0 or −1. */
int attn_bert_encode(const attn_bert *m, int n, const int *const *ids, const int *len, float *out,
                     int probs_layer, float *probs, char *err, size_t err_size);

/* x[i] = GELU(x[i]) = x/2 · (1 + erf(x/√2)) (BERT's exact form), erf from a rational
 * approximation: error within 5e-7·(1 + |x|) (tested on [−8, 8]), NaN stays NaN. */
void attn_bert_gelu(float *x, size_t n);
/* The passes behind it (x [rows, n] = GELU(x + b), b [n] or NULL), for tests: 4 lanes at the
 * baseline ISA, and (x86 only; call each only where the CPU has what it needs) 8 lanes (AVX2 and
 * FMA) and 16 lanes (AVX-512F). */
void attn_bert_gelu_rows_sse(float *x, const float *b, size_t rows, size_t n);
void attn_bert_gelu_rows_avx2(float *x, const float *b, size_t rows, size_t n);
void attn_bert_gelu_rows_avx512(float *x, const float *b, size_t rows, size_t n);

/* The dense product behind the AVX-512 choice, for tests. Weights W [out, in] (a Linear layer's)
 * are packed into panels of 32 outputs: wp holds attn_bert_packed_floats(out, in) floats, 64-byte
 * aligned. Then y [rows, out] (rows ldy apart) = x [rows, in] (rows ldx apart) · Wᵀ (+ b [out],
 * unless NULL), each element summed in k order, so a row's result does not depend on which rows
 * are computed with it. Call it only where the CPU has AVX-512F. */
size_t attn_bert_packed_floats(int out, int in);
void attn_bert_pack_weights(const float *w, int out, int in, float *wp);
void attn_bert_gemm_avx512(const float *x, size_t ldx, const float *wp, const float *b, float *y,
                           size_t ldy, int rows, int in, int out);

/* x [rows, h] = LayerNorm(x + r + rb) per row (eps 1e-12; r [rows, h] and rb [h] may be NULL;
 * g, b [h]): the pass behind the encoder's LayerNorms, for tests — at the baseline ISA, and
 * (x86 only; call it only where the CPU has AVX2 and FMA) four doubles at a time, bitwise the
 * same. */
void attn_bert_add_layernorm(float *x, const float *r, const float *rb, const float *g,
                             const float *b, int rows, int h);
void attn_bert_add_layernorm_avx2(float *x, const float *r, const float *rb, const float *g,
                                  const float *b, int rows, int h);

/* Sentence embeddings [n, hidden]: mean of the last-layer states over the tokens, L2-normalised. */
int attn_bert_embed(const attn_bert *m, int n, const char *const *texts, float *emb, char *err,
                    size_t err_size);

#endif
