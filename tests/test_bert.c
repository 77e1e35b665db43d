/*
 * test_bert.c — the BERT encoder on attn against the real reference, through committed fixtures
 * (models/bert/make_fixtures.py made them once with Hugging Face tokenizers and
 * sentence-transformers on PyTorch; this test never needs them):
 *   1. token ids equal the Hugging Face tokenizer's on 52 varied sentences (accents, CJK,
 *      punctuation, control characters, emoji, very long words, the empty string), and on ~2400
 *      probes of single code points across Unicode plus 300 random strings;
 *   2. sentence embeddings match sentence-transformers' (cosine ≥ 0.99999, max |diff| ≤ 1e-4) on
 *      22 sentences, one at a time and as one batch of mixed lengths (packed: no padding);
 *      with each dense-product path (ATTN_BERT_GEMM=avx512 where the CPU has it, and openblas),
 *      and the AVX-512 path bitwise the same at 1, 2 and 3 threads;
 *   3. the GELU (erf from a rational approximation) against erf in double, LayerNorm against
 *      double (its AVX2 pass bitwise the scalar one), and the AVX-512 dense product against
 *      double over awkward sizes;
 *   4. the safetensors reader rejects truncated, malformed and mismatched files with a message
 *      naming the problem.
 * Usage: test_bert MODEL_DIR FIXTURES_DIR
 */
#include "bert.h"
#include "harness.h"
#include "picture.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *model_dir, *fixtures;

/* Reads "hex<TAB>values" lines: the sentence decoded from hex, the rest as text. */
static int read_line(FILE *f, char **sentence, char **rest) {
  static char line[1 << 16];
  if (!fgets(line, sizeof line, f)) return 0;
  line[strcspn(line, "\n")] = '\0';
  char *tab = strchr(line, '\t');
  if (!tab) return 0;
  *tab = '\0';
  const size_t n = strlen(line) / 2;
  *sentence = malloc(n + 1);
  for (size_t i = 0; i < n; i++) {
    unsigned v;
    sscanf(line + 2 * i, "%2x", &v);
    (*sentence)[i] = (char)v;
  }
  (*sentence)[n] = '\0';
  *rest = tab + 1;
  return 1;
}

/* Every line of a token fixture (sentence, Hugging Face's ids) tokenised here; at least min_lines.
 */
static void test_tokenizer(const attn_bert *m, const char *file, int min_lines) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", fixtures, file);
  FILE *f = fopen(path, "r");
  CHECKF(f != NULL, "cannot open %s", path);
  if (!f) return;
  char *s, *rest;
  int lines = 0, equal = 0;
  while (read_line(f, &s, &rest)) {
    int want[4096], nw = 0, *ids, n;
    for (char *tok = strtok(rest, " "); tok && nw < 4096; tok = strtok(NULL, " "))
      want[nw++] = atoi(tok);
    CHECK(attn_bert_tokenize(&m->vocab, s, 0, &ids, &n) == 0);
    const int same = n == nw && memcmp(ids, want, sizeof(int) * (size_t)n) == 0;
    if (!same) {
      fprintf(stderr, "  tokens differ for \"%s\": got %d ids, want %d\n   got:", s, n, nw);
      for (int i = 0; i < n && i < 40; i++)
        fprintf(stderr, " %d", ids[i]);
      fprintf(stderr, "\n  want:");
      for (int i = 0; i < nw && i < 40; i++)
        fprintf(stderr, " %d", want[i]);
      fputc('\n', stderr);
    }
    equal += same, lines++;
    free(ids), free(s);
  }
  fclose(f);
  CHECKF(lines >= min_lines && equal == lines, "%s: token ids equal Hugging Face's on %d of %d",
         file, equal, lines);
  printf("  %s: ids equal Hugging Face's on %d of %d texts\n", file, equal, lines);
}

static void test_embeddings(const attn_bert *m) {
  char path[4096];
  snprintf(path, sizeof path, "%s/bert_embeddings.txt", fixtures);
  FILE *f = fopen(path, "r");
  CHECKF(f != NULL, "cannot open %s", path);
  if (!f) return;
  enum { MAXN = 64, H = 384 };
  char *texts[MAXN], *rest;
  static float want[MAXN][H], one[H], batch[MAXN][H];
  int n = 0;
  while (n < MAXN && read_line(f, &texts[n], &rest)) {
    char *p = rest;
    for (int d = 0; d < H; d++)
      want[n][d] = strtof(p, &p);
    n++;
  }
  fclose(f);
  char err[512];
  CHECKF(attn_bert_embed(m, n, (const char *const *)texts, &batch[0][0], err, sizeof err) == 0,
         "batched embed: %s", err);
  double worst_cos = 1, worst_diff = 0;
  for (int i = 0; i < n; i++) {
    const char *t[1] = {texts[i]};
    CHECKF(attn_bert_embed(m, 1, t, one, err, sizeof err) == 0, "embed: %s", err);
    for (int pass = 0; pass < 2; pass++) {
      const float *got = pass ? batch[i] : one;
      double dot = 0, na = 0, nb = 0, diff = 0;
      for (int d = 0; d < H; d++) {
        dot += (double)got[d] * want[i][d];
        na += (double)got[d] * got[d], nb += (double)want[i][d] * want[i][d];
        if (fabs((double)got[d] - want[i][d]) > diff) diff = fabs((double)got[d] - want[i][d]);
      }
      const double cos = dot / sqrt(na * nb);
      if (cos < worst_cos) worst_cos = cos;
      if (diff > worst_diff) worst_diff = diff;
      CHECKF(cos >= 0.99999 && diff <= 1e-4,
             "embedding of \"%.40s\" (%s): cosine %.7f, max |diff| %.2g", texts[i],
             pass ? "batched" : "alone", cos, diff);
    }
  }
  printf("  %d sentences: worst cosine %.8f, worst max |diff| %.2g (alone and batched)\n", n,
         worst_cos, worst_diff);
  for (int i = 0; i < n; i++)
    free(texts[i]);
}

/* Writes bytes to a file and expects attn_st_open to fail with `needle` in its message. */
static void expect_bad_file(const char *why, const void *bytes, size_t n, const char *needle) {
  char path[] = "/tmp/attn_st_XXXXXX";
  int fd = mkstemp(path);
  FILE *f = fdopen(fd, "wb");
  fwrite(bytes, 1, n, f);
  fclose(f);
  attn_st_file st;
  char err[512] = "";
  const int rc = attn_st_open(&st, path, err, sizeof err);
  CHECKF(rc == -1 && strstr(err, needle), "%s: rc %d, message \"%s\" lacks \"%s\"", why, rc, err,
         needle);
  if (rc == 0) attn_st_close(&st);
  remove(path);
}

static void test_safetensors(void) {
  unsigned char buf[256];
  char hdr[96] = "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}";
  while (strlen(hdr) % 8) /* the format pads the header with spaces to keep the data aligned */
    strcat(hdr, " ");
  const size_t hl = strlen(hdr);
  memset(buf, 0, sizeof buf);
  buf[0] = (unsigned char)hl;
  memcpy(buf + 8, hdr, hl);
  /* a valid file: found with its shape, refused with another */
  char path[] = "/tmp/attn_st_XXXXXX";
  int fd = mkstemp(path);
  FILE *f = fdopen(fd, "wb");
  fwrite(buf, 1, 8 + hl + 16, f);
  fclose(f);
  attn_st_file st;
  char err[512];
  CHECK(attn_st_open(&st, path, err, sizeof err) == 0);
  const int64_t good[2] = {2, 2}, wrong[2] = {4, 1};
  CHECK(attn_st_get(&st, "w", 2, good, err, sizeof err) != NULL);
  CHECK(attn_st_get(&st, "w", 2, wrong, err, sizeof err) == NULL && strstr(err, "tensor w"));
  CHECK(attn_st_get(&st, "missing", 2, good, err, sizeof err) == NULL && strstr(err, "missing"));
  attn_st_close(&st);
  remove(path);
  expect_bad_file("truncated data", buf, 8 + hl + 8, "outside the file");
  expect_bad_file("shorter than a header", buf, 5, "too short");
  unsigned char big[16] = {0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0};
  expect_bad_file("header length past the end", big, sizeof big, "header length");
  unsigned char junk[64] = {20, 0, 0, 0, 0, 0, 0, 0};
  memcpy(junk + 8, "{\"w\": [1, 2, oops]}  ", 20);
  expect_bad_file("malformed JSON", junk, 28, "malformed");
  const char *mism = "{\"w\":{\"dtype\":\"F32\",\"shape\":[3,2],\"data_offsets\":[0,16]}}";
  memset(buf, 0, sizeof buf);
  buf[0] = (unsigned char)strlen(mism);
  memcpy(buf + 8, mism, strlen(mism));
  expect_bad_file("shape against byte range", buf, 8 + strlen(mism) + 16, "tensor w");
  /* found by fuzzing: a shape whose byte count overflows int64, metadata nested deeper than any
   * stack (it recursed once per bracket), and two tensors sharing bytes */
  const char *huge = "{\"w\":{\"dtype\":\"F64\",\"shape\":[4611686018427387904,1],"
                     "\"data_offsets\":[0,0]}}";
  memset(buf, 0, sizeof buf);
  buf[0] = (unsigned char)strlen(huge);
  memcpy(buf + 8, huge, strlen(huge));
  expect_bad_file("byte count overflows", buf, 8 + strlen(huge), "tensor w");
  enum { DEPTH = 200000 };
  unsigned char *deep = calloc(1, 8 + 2 * DEPTH + 32);
  if (deep) {
    size_t n = 8;
    n += (size_t)sprintf((char *)deep + n, "{\"__metadata__\":");
    memset(deep + n, '[', DEPTH), n += DEPTH;
    memset(deep + n, ']', DEPTH), n += DEPTH;
    deep[n++] = '}';
    for (int i = 0; i < 8; i++)
      deep[i] = (unsigned char)((n - 8) >> (8 * i));
    expect_bad_file("metadata nested 200000 deep", deep, n, "malformed");
    free(deep);
  }
  const char *overlap = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                        "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}";
  memset(buf, 0, sizeof buf);
  buf[0] = (unsigned char)strlen(overlap);
  memcpy(buf + 8, overlap, strlen(overlap));
  expect_bad_file("overlapping tensors", buf, 8 + strlen(overlap) + 16,
                  "tensor b: data_offsets overlap those of tensor a");
}

/* A PNG written by picture.c: signature, IHDR, the stored zlib stream's pixels, CRCs. */
static uint32_t be32(const unsigned char *b) {
  return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}
static void test_png(void) {
  pic p;
  CHECK(pic_new(&p, 3, 2) == 0);
  const uint8_t red[3] = {255, 0, 0};
  pic_rect(&p, 1, 1, 1, 1, red);
  char path[] = "/tmp/attn_png_XXXXXX";
  close(mkstemp(path));
  CHECK(pic_write_png(&p, path) == 0);
  pic_free(&p);
  unsigned char b[512];
  FILE *f = fopen(path, "rb");
  const size_t n = f ? fread(b, 1, sizeof b, f) : 0;
  if (f) fclose(f);
  remove(path);
  static const unsigned char sig[8] = {137, 80, 78, 71, 13, 10, 26, 10};
  CHECK(n > 33 && memcmp(b, sig, 8) == 0 && !memcmp(b + 12, "IHDR", 4));
  CHECK(be32(b + 16) == 3 && be32(b + 20) == 2 && b[24] == 8 && b[25] == 2);
  /* IDAT follows IHDR (8 + 25 bytes): zlib header, one stored block of 2 rows × (1 + 9) bytes */
  const unsigned char *z = b + 33 + 8;
  CHECK(!memcmp(b + 37, "IDAT", 4) && z[0] == 0x78 && z[2] == 1 && z[3] == 20 && z[4] == 0);
  const unsigned char *px = z + 7; /* rows: a filter byte (0), then RGB; red at row 1, x 1 */
  CHECK(px[0] == 0 && px[1] == 255 && px[10] == 0 && px[10 + 1 + 3] == 255 && px[10 + 1 + 4] == 0);
}

/* GELU on a dense grid of [−8, 8] and at the edges of the approximation's range: error ≤
 * 5e-7·(1 + |x|) against x/2·(1 + erf(x/√2)) in double (erf's 4.2e-7 times x/2, plus the
 * result's rounding); NaN stays NaN. For attn_bert_gelu and each pass behind it (the 8-lane one
 * where the CPU has AVX2 and FMA, the 16-lane one where it has AVX-512F), and with a bias: rows
 * of 37 values (tails of every lane count) against GELU(x + b) of the float sum. */
typedef void (*gelu_rows_fn)(float *x, const float *b, size_t rows, size_t n);
static void gelu_dispatched(float *x, const float *b, size_t rows, size_t n) {
  (void)b; /* attn_bert_gelu has no bias: one row */
  attn_bert_gelu(x, rows * n);
}
static double gelu_ref(double v) { return 0.5 * v * (1.0 + erf(v / sqrt(2.0))); }

static void test_gelu_pass(const char *name, gelu_rows_fn fn) {
  enum { N = 160001 };
  float *x = malloc(sizeof(float) * (N + 6));
  for (int i = 0; i < N; i++)
    x[i] = -8.0f + 16.0f * (float)i / (N - 1);
  const float edges[5] = {5.656854f, -5.656854f, 5.6568546f, -5.6568546f, 1e-30f};
  memcpy(x + N, edges, sizeof edges);
  x[N + 5] = NAN;
  float *y = malloc(sizeof(float) * (N + 6));
  memcpy(y, x, sizeof(float) * (N + 6));
  fn(y, NULL, 1, N + 6);
  double worst = 0; /* error / allowed */
  int at = 0;
  for (int i = 0; i < N + 5; i++) {
    const double e = fabs(y[i] - gelu_ref(x[i])) / (5e-7 * (1.0 + fabs(x[i])));
    if (!(e <= worst)) worst = e, at = i;
  }
  CHECKF(worst <= 1.0, "GELU %s: error %.3g x the allowed 5e-7*(1+|x|) at x = %.9g", name, worst,
         (double)x[at]);
  CHECKF(isnan(y[N + 5]), "GELU %s (NaN) = %g, want NaN", name, (double)y[N + 5]);
  if (fn != gelu_dispatched) { /* with a bias, rows of 37 */
    enum { R = 3, C = 37 };
    float xb[R * C], yb[R * C], b[C];
    for (int c = 0; c < C; c++)
      b[c] = 0.25f * (float)(c % 7) - 0.75f;
    for (int i = 0; i < R * C; i++)
      xb[i] = yb[i] = 0.37f * (float)(i % 23) - 4.0f;
    fn(yb, b, R, C);
    worst = 0;
    for (int i = 0; i < R * C; i++) {
      const float v = xb[i] + b[i % C];
      const double e = fabs(yb[i] - gelu_ref(v)) / (5e-7 * (1.0 + fabs(v)));
      if (!(e <= worst)) worst = e, at = i;
    }
    CHECKF(worst <= 1.0, "GELU %s with a bias: error %.3g x the allowed at element %d", name, worst,
           at);
  }
  free(x), free(y);
}

static void test_gelu(void) {
  test_gelu_pass("attn_bert_gelu", gelu_dispatched);
  test_gelu_pass("4 lanes", attn_bert_gelu_rows_sse);
#if defined(__x86_64__) || defined(__i386__)
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    test_gelu_pass("8 lanes (AVX2)", attn_bert_gelu_rows_avx2);
  else
    printf("  GELU 8 lanes (AVX2): SKIP (no AVX2/FMA)\n");
  if (__builtin_cpu_supports("avx512f"))
    test_gelu_pass("16 lanes (AVX-512)", attn_bert_gelu_rows_avx512);
  else
    printf("  GELU 16 lanes (AVX-512): SKIP (no AVX-512F)\n");
#endif
}

/* The LayerNorm pass four doubles at a time (AVX2) against the scalar one: the same bits, rows of
 * 384 (the model's), 37 and 3 values (the tails), with and without the residual and its bias; and
 * the scalar one against LayerNorm in double (|error| ≤ 1e-6; the outputs are of order 1). */
static void test_layernorm(void) {
  enum { R = 5, HMAX = 384 };
  static const int hs[] = {384, 37, 3};
  float x[R * HMAX], x2[R * HMAX], res[R * HMAX], rb[HMAX], g[HMAX], bb[HMAX];
  rng rg = {99};
  int bad = 0;
  double worst = 0;
  for (size_t hi = 0; hi < sizeof hs / sizeof *hs; hi++)
    for (int mode = 0; mode < 3; mode++) { /* no residual, residual, residual + bias */
      const int h = hs[hi];
      for (int i = 0; i < R * h; i++) {
        x[i] = (float)rng_uniform(&rg) * 6.0f - 1.0f;
        res[i] = (float)rng_uniform(&rg) * 2.0f - 1.0f;
        x2[i] = x[i];
      }
      for (int d = 0; d < h; d++)
        rb[d] = 0.01f * (float)d, g[d] = 1.0f + 0.001f * (float)d,
        bb[d] = -0.5f + 0.002f * (float)d;
      const float *r = mode ? res : NULL, *rbias = mode == 2 ? rb : NULL;
      float want[R * HMAX];
      for (int i = 0; i < R; i++) { /* in double */
        double v[HMAX], mean = 0, var = 0;
        for (int d = 0; d < h; d++) {
          v[d] = x[i * h + d];
          if (r) v[d] = (float)(x[i * h + d] + (rbias ? res[i * h + d] + rb[d] : res[i * h + d]));
          mean += v[d];
        }
        mean /= h;
        for (int d = 0; d < h; d++)
          var += (v[d] - mean) * (v[d] - mean);
        for (int d = 0; d < h; d++)
          want[i * h + d] = (float)((v[d] - mean) / sqrt(var / h + 1e-12) * g[d] + bb[d]);
      }
      attn_bert_add_layernorm(x, r, rbias, g, bb, R, h);
      for (int i = 0; i < R * h; i++) {
        const double e = fabs((double)x[i] - want[i]);
        if (e > worst) worst = e;
        bad += e > 1e-6;
      }
#if defined(__x86_64__) || defined(__i386__)
      if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        attn_bert_add_layernorm_avx2(x2, r, rbias, g, bb, R, h);
        CHECKF(memcmp(x, x2, sizeof(float) * (size_t)(R * h)) == 0,
               "LayerNorm, AVX2 pass: not the scalar pass's bits (h %d, mode %d)", h, mode);
      }
#endif
    }
  CHECKF(bad == 0, "LayerNorm: %d values off double's by more than 1e-6 (worst %.2g)", bad, worst);
  printf("  LayerNorm: worst |error| %.2g against double; AVX2 pass bitwise the scalar one\n",
         worst);
}

/* The AVX-512 dense product against double: rows, in and out around its blocks (12 rows, 32
 * outputs, k chunks of 384), with and without bias, rows and y padded (ldx > in, ldy > out: the
 * padding must stay untouched), |error| within in·2⁻²³·Σ|x·w| + |b|·2⁻²³; and a row's result
 * bitwise the same when it is computed in a different group of rows. */
static void test_gemm(void) {
#if defined(__x86_64__) || defined(__i386__)
  if (!__builtin_cpu_supports("avx512f")) {
    printf("  dense product (AVX-512): SKIP (no AVX-512F)\n");
    return;
  }
  static const int rows_list[] = {1, 2, 11, 12, 13, 25, 50};
  static const int in_list[] = {1, 3, 16, 383, 384, 385, 800};
  static const int out_list[] = {1, 15, 16, 17, 31, 32, 33, 100};
  rng rg = {12345};
  int cases = 0, bad = 0;
  double worst = 0;
  for (size_t ri = 0; ri < sizeof rows_list / sizeof *rows_list; ri++)
    for (size_t ii = 0; ii < sizeof in_list / sizeof *in_list; ii++)
      for (size_t oi = 0; oi < sizeof out_list / sizeof *out_list; oi++) {
        const int rows = rows_list[ri], in = in_list[ii], out = out_list[oi], bias = (ri + oi) & 1;
        const size_t ldx = (size_t)in + 3, ldy = (size_t)out + 5;
        float *x = malloc(sizeof(float) * (size_t)rows * ldx);
        float *w = malloc(sizeof(float) * (size_t)out * (size_t)in),
              *b = malloc(sizeof(float) * (size_t)out);
        float *wp =
            aligned_alloc(64, (sizeof(float) * attn_bert_packed_floats(out, in) + 63) / 64 * 64);
        float *y = malloc(sizeof(float) * (size_t)rows * ldy),
              *y2 = malloc(sizeof(float) * (size_t)rows * ldy);
        for (size_t i = 0; i < (size_t)rows * ldx; i++)
          x[i] = (float)rng_uniform(&rg) * 2.0f - 1.0f;
        for (size_t i = 0; i < (size_t)out * (size_t)in; i++)
          w[i] = (float)rng_uniform(&rg) - 0.5f;
        for (int o = 0; o < out; o++)
          b[o] = 0.25f * (float)(o % 7) - 0.75f;
        for (size_t i = 0; i < (size_t)rows * ldy; i++)
          y[i] = y2[i] = -12345.0f; /* sentinel: the padding columns must keep it */
        attn_bert_pack_weights(w, out, in, wp);
        attn_bert_gemm_avx512(x, ldx, wp, bias ? b : NULL, y, ldy, rows, in, out);
        for (int r0 = 0; r0 < rows; r0 += 5) /* the same rows in groups of 5 */
          attn_bert_gemm_avx512(x + (size_t)r0 * ldx, ldx, wp, bias ? b : NULL,
                                y2 + (size_t)r0 * ldy, ldy, rows - r0 < 5 ? rows - r0 : 5, in, out);
        int ok = memcmp(y, y2, sizeof(float) * (size_t)rows * ldy) == 0;
        for (int r = 0; r < rows; r++) {
          for (int o = 0; o < out; o++) {
            double ref = bias ? b[o] : 0.0, mag = bias ? fabs(b[o]) : 0.0;
            for (int k = 0; k < in; k++) {
              const double t =
                  (double)x[(size_t)r * ldx + (size_t)k] * w[(size_t)o * (size_t)in + (size_t)k];
              ref += t, mag += fabs(t);
            }
            const double e =
                fabs(y[(size_t)r * ldy + (size_t)o] - ref) / ((in + 1) * 0x1p-23 * mag + 1e-30);
            if (e > worst) worst = e;
            ok &= e <= 1.0;
          }
          for (size_t o = (size_t)out; o < ldy; o++)
            ok &= y[(size_t)r * ldy + o] == -12345.0f;
        }
        if (!ok && bad++ < 5)
          CHECKF(0,
                 "dense product rows %d in %d out %d bias %d: wrong values, padding written, or "
                 "rows' grouping changed a result",
                 rows, in, out, bias);
        cases++;
        free(x), free(w), free(b), free(wp), free(y), free(y2);
      }
  CHECKF(bad == 0, "dense product: %d of %d cases failed", bad, cases);
  printf("  dense product (AVX-512): %d cases, worst error %.3f of its bound\n", cases, worst);
#else
  printf("  dense product (AVX-512): SKIP (not x86)\n");
#endif
}

/* Embeddings of a batch of mixed lengths at 1, 2 and 3 threads: bitwise equal on the AVX-512 path
 * (every product sums in k order whatever the rows' bands; attention is deterministic). */
static void test_threads_bitwise(attn_bert *m) {
  if (m->gemm != ATTN_BERT_GEMM_AVX512) {
    printf("  thread counts bitwise: SKIP (OpenBLAS path)\n");
    return;
  }
  const char *texts[] = {"The bank raised its interest rates again.",
                         "I sat on the bank of the river and watched the water.", "Hi.",
                         ("The plants in my garden need water, and the power plant was shut down "
                          "after the storm took out the lines along the river.")};
  enum { N = 4, H = 384 };
  static float e[3][N][H];
  char err[512];
  const int saved = m->threads;
  for (int t = 1; t <= 3; t++) {
    m->threads = t;
    CHECKF(attn_bert_embed(m, N, texts, &e[t - 1][0][0], err, sizeof err) == 0, "embed: %s", err);
  }
  m->threads = saved;
  CHECK(memcmp(e[0], e[1], sizeof e[0]) == 0);
  CHECK(memcmp(e[0], e[2], sizeof e[0]) == 0);
}

/* ATTN_BERT_GEMM picks the dense-product path at load; a bad value is an error naming it. */
static void test_gemm_choice(void) {
  attn_bert m;
  char err[512] = "";
  setenv("ATTN_BERT_GEMM", "cublas", 1);
  CHECKF(attn_bert_load(&m, model_dir, err, sizeof err) == -1 && strstr(err, "ATTN_BERT_GEMM") &&
             strstr(err, "cublas"),
         "ATTN_BERT_GEMM=cublas: message \"%s\"", err);
#if defined(__x86_64__) || defined(__i386__)
  if (!__builtin_cpu_supports("avx512f")) {
    err[0] = '\0';
    setenv("ATTN_BERT_GEMM", "avx512", 1);
    CHECKF(attn_bert_load(&m, model_dir, err, sizeof err) == -1 && strstr(err, "AVX-512"),
           "ATTN_BERT_GEMM=avx512 without AVX-512F: message \"%s\"", err);
  }
#endif
  unsetenv("ATTN_BERT_GEMM");
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: test_bert MODEL_DIR FIXTURES_DIR\n");
    return 2;
  }
  model_dir = argv[1], fixtures = argv[2];
  test_gelu();
  test_layernorm();
  test_gemm();
  test_safetensors();
  test_png();
  attn_bert m;
  char err[512];
  if (attn_bert_load(&m, model_dir, err, sizeof err) != 0) {
    CHECKF(0, "loading the model: %s (make model installs it)", err);
    return t_finish("test_bert");
  }
  m.threads = 2;
  test_tokenizer(&m, "bert_tokens.txt", 50);
  test_tokenizer(&m, "bert_tokens_unicode.txt", 2000);
  printf("  dense products: %s\n", m.gemm == ATTN_BERT_GEMM_AVX512 ? "avx512" : "openblas");
  test_embeddings(&m);
  test_threads_bitwise(&m);
  attn_bert_free(&m);
  if (m.gemm == ATTN_BERT_GEMM_AVX512) { /* and the other path */
    setenv("ATTN_BERT_GEMM", "openblas", 1);
    const int rc = attn_bert_load(&m, model_dir, err, sizeof err);
    unsetenv("ATTN_BERT_GEMM");
    CHECKF(rc == 0 && m.gemm == ATTN_BERT_GEMM_OPENBLAS, "ATTN_BERT_GEMM=openblas: %s", err);
    if (rc == 0) {
      m.threads = 2;
      printf("  dense products: openblas\n");
      test_embeddings(&m);
      attn_bert_free(&m);
    }
  }
  test_gemm_choice();
  return t_finish("test_bert");
}
