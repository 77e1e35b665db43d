/*
 * runargs.c — what `attn run`, `attn grad` and `attn-ring` share: parsing of the run options,
 * loading and checking the .npy inputs into attn_params, and outputs written to temporary files
 * that are renamed into place only when everything succeeded.
 */
#include "runargs.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char *cli_command = "attn";

int cli_fail(int code, const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, "%s: ", cli_command);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  return code;
}

/* ---- number parsing: the whole string must be consumed ---- */

int cli_parse_i64(const char *s, int64_t *out) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno || end == s || *end) return -1;
  *out = v;
  return 0;
}

/* A decimal integer in [0, 2^64) (no sign), the whole string. */
static int parse_u64(const char *s, uint64_t *out) {
  char *end;
  errno = 0;
  if (*s < '0' || *s > '9') return -1;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || *end) return -1;
  *out = v;
  return 0;
}

static int parse_f32(const char *s, float *out) {
  char *end;
  errno = 0;
  float v = strtof(s, &end);
  if (errno || end == s || *end) return -1;
  *out = v;
  return 0;
}

int64_t cli_parse_list(const char *s, int64_t *vals, int64_t max) {
  int64_t n = 0;
  char buf[64];
  while (*s) {
    const char *comma = strchr(s, ',');
    size_t len = comma ? (size_t)(comma - s) : strlen(s);
    if (len == 0 || len >= sizeof buf || n == max) return -1;
    memcpy(buf, s, len);
    buf[len] = '\0';
    if (cli_parse_i64(buf, &vals[n++]) != 0) return -1;
    s += len;
    if (comma) {
      s++;
      if (!*s) return -1;
    }
  }
  return n;
}

int cli_parse_shape(const char *s, int64_t *vals, int n, int *causal) {
  char buf[128];
  const size_t len = strlen(s), tail = strlen(",causal");
  if (len >= sizeof buf) return -1;
  memcpy(buf, s, len + 1);
  *causal = len > tail && strcmp(buf + len - tail, ",causal") == 0;
  if (*causal) buf[len - tail] = '\0';
  if (cli_parse_list(buf, vals, n) != n) return -1;
  for (int i = 0; i < n; i++)
    if (vals[i] < 1) return -1;
  return 0;
}

/* ---- inputs ---- */

void cli_inputs_free(inputs *in) {
  npy_free(&in->q);
  npy_free(&in->k);
  npy_free(&in->v);
  npy_free(&in->mask);
  npy_free(&in->bias);
  npy_free(&in->alibi);
  npy_free(&in->sinks);
}

int cli_load(const char *flag, const char *path, unsigned dtypes, int ndim, npy_array *a) {
  char err[256];
  if (npy_read(path, a, err, sizeof err) != 0)
    return cli_fail(EXIT_BAD_INPUT, "%s %s: %s", flag, path, err);
  if (!(dtypes >> a->dtype & 1u)) {
    static const char *const names[] = {
        [NPY_F32] = "float32", [NPY_U8] = "uint8 or bool", [NPY_F16] = "float16"};
    char want[64] = "";
    for (int t = 0; t < (int)(sizeof names / sizeof names[0]); t++)
      if (dtypes >> t & 1u)
        snprintf(want + strlen(want), sizeof want - strlen(want), "%s%s", *want ? " or " : "",
                 names[t]);
    return cli_fail(EXIT_BAD_INPUT, "%s %s: dtype must be %s", flag, path, want);
  }
  if (a->ndim != ndim)
    return cli_fail(EXIT_BAD_INPUT, "%s %s: expected a %d-D array, got %d-D", flag, path, ndim,
                    a->ndim);
  return 0;
}

void cli_shape_str(const int64_t *s, int n, char *buf, size_t size) {
  size_t at = 0;
  at += (size_t)snprintf(buf, size, "[");
  for (int d = 0; d < n && at < size; d++)
    at += (size_t)snprintf(buf + at, size - at, "%s%" PRId64, d ? ", " : "", s[d]);
  if (at < size) snprintf(buf + at, size - at, "]");
}

/* Strides for a 4-D [B,Hq,Lq,Lk]-broadcastable array: each dimension 1 (stride 0) or full. */
int cli_broadcast_strides(const char *flag, const npy_array *a, const int64_t full[4],
                          int64_t strides[4]) {
  int64_t packed = 1;
  for (int d = 3; d >= 0; d--) {
    if (a->shape[d] != full[d] && a->shape[d] != 1) {
      char got[128], want[128];
      cli_shape_str(a->shape, 4, got, sizeof got);
      cli_shape_str(full, 4, want, sizeof want);
      return cli_fail(
          EXIT_BAD_INPUT,
          "%s: shape %s does not broadcast to [B, Hq, Lq, Lk] = %s (each dimension must "
          "be 1 or equal)",
          flag, got, want);
    }
    strides[d] = a->shape[d] == 1 ? 0 : packed;
    packed *= a->shape[d];
  }
  return 0;
}

/* ---- outputs: temporary files renamed at the end ---- */

int cli_out_open(out_file *o) {
  size_t n = strlen(o->path) + 16;
  o->tmp = malloc(n);
  if (!o->tmp) return cli_fail(EXIT_RUNTIME, "out of memory");
  snprintf(o->tmp, n, "%s.tmp.XXXXXX", o->path);
  int fd = mkstemp(o->tmp);
  if (fd < 0) {
    free(o->tmp);
    o->tmp = NULL;
    return cli_fail(EXIT_BAD_INPUT, "%s %s: cannot create the output file: %s", o->flag, o->path,
                    strerror(errno));
  }
  o->f = fdopen(fd, "wb");
  if (!o->f) {
    close(fd);
    return cli_fail(EXIT_RUNTIME, "%s %s: %s", o->flag, o->path, strerror(errno));
  }
  return 0;
}

void cli_out_discard(out_file *o) {
  if (o->f) fclose(o->f);
  o->f = NULL;
  if (o->tmp) unlink(o->tmp);
  free(o->tmp);
  o->tmp = NULL;
}

/* ---- attn run ---- */

int cli_parse_run_args(int argc, char **argv, run_opts *o, void (*cli_usage)(FILE *)) {
  struct {
    const char *flag;
    const char **dst;
  } valued[] = {
      {"--q", &o->q},
      {"--k", &o->k},
      {"--v", &o->v},
      {"--out", &o->out},
      {"--lse", &o->lse},
      {"--probs", &o->probs},
      {"--mask", &o->mask},
      {"--bias", &o->bias},
      {"--alibi", &o->alibi},
      {"--sinks", &o->sinks},
      {"--scale", &o->scale},
      {"--align", &o->align},
      {"--window", &o->window},
      {"--kv-len", &o->kv_len},
      {"--q-len", &o->q_len},
      {"--cu-seqlens-q", &o->cu_seqlens_q},
      {"--cu-seqlens-k", &o->cu_seqlens_k},
      {"--dropout", &o->dropout},
      {"--dropout-seed", &o->dropout_seed},
      {"--softcap", &o->softcap},
      {"--threads", &o->threads},
      {"--kernel", &o->kernel},
      {"--dout", &o->dout},
      {"--dq", &o->dq},
      {"--dk", &o->dk},
      {"--dv", &o->dv},
      {"--dbias", &o->dbias},
      {"--dsinks", &o->dsinks},
  };
  const size_t n_valued = sizeof valued / sizeof valued[0] - (o->grad ? 0 : 6); /* grad's own */
  for (int i = 0; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--causal") == 0) {
      o->causal = 1;
      continue;
    }
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      cli_usage(stdout);
      exit(0);
    }
    size_t f;
    for (f = 0; f < n_valued; f++)
      if (strcmp(a, valued[f].flag) == 0) break;
    if (f == n_valued) return cli_fail(EXIT_BAD_INPUT, "unknown option '%s' (see attn --help)", a);
    if (i + 1 >= argc) return cli_fail(EXIT_BAD_INPUT, "%s needs a value", a);
    if (*valued[f].dst) return cli_fail(EXIT_BAD_INPUT, "%s given twice", a);
    *valued[f].dst = argv[++i];
  }
  const char *required[][2] = {
      {"--q", o->q},   {"--k", o->k},
      {"--v", o->v},   {o->grad ? "--dout" : "--out", o->grad ? o->dout : o->out},
      {"--dq", o->dq}, {"--dk", o->dk},
      {"--dv", o->dv}};
  for (int r = 0; r < (o->grad ? 7 : 4); r++)
    if (!required[r][1]) return cli_fail(EXIT_BAD_INPUT, "%s is required", required[r][0]);
  if (o->dbias && !o->bias) return cli_fail(EXIT_BAD_INPUT, "--dbias needs --bias");
  return 0;
}

/* Fills p from the options and the loaded inputs; *kv_len gets malloc'ed lengths if given. */
/* A float32 [Hq] file of one value per query head (ALiBi slopes, sinks) into *dst. */
static int load_per_head(const char *flag, const char *path, int64_t heads_q, npy_array *a,
                         const float **dst) {
  if (cli_load(flag, path, CLI_F32, 1, a)) return EXIT_BAD_INPUT;
  if (a->shape[0] != heads_q)
    return cli_fail(EXIT_BAD_INPUT, "%s: %" PRId64 " values given but Hq = %" PRId64, flag,
                    a->shape[0], heads_q);
  *dst = a->data;
  return 0;
}

/* A list of one length per batch item (B of them, each in [0, max]) into dst [B + 1]. */
static int parse_lengths(const char *flag, const char *max_name, const char *text, int64_t B,
                         int64_t max, int64_t *dst) {
  if (cli_parse_list(text, dst, B + 1) != B)
    return cli_fail(EXIT_BAD_INPUT, "%s '%s' must list %" PRId64 " integers (one per batch item)",
                    flag, text, B);
  for (int64_t b = 0; b < B; b++)
    if (dst[b] < 0 || dst[b] > max)
      return cli_fail(EXIT_BAD_INPUT,
                      "%s: entry %" PRId64 " (%" PRId64 ") must be in [0, %s = %" PRId64 "]", flag,
                      b, dst[b], max_name, max);
  return 0;
}

/* Entries of a comma-separated list (its commas + 1). */
static int64_t list_entries(const char *text) {
  int64_t n = 1;
  for (; *text; text++)
    n += *text == ',';
  return n;
}

/* Packed sequences: the B + 1 row offsets of --cu-seqlens-q or -k into dst, starting at 0, never
 * decreasing, ending at the tensor's row count `rows` (of `tensor`, whose batch size must be 1);
 * *max gets the longest sequence. */
static int parse_offsets(const char *flag, const char *text, const char *tensor,
                         const int64_t *shape, int64_t B, int64_t *dst, int64_t *max) {
  if (cli_parse_list(text, dst, B + 1) != B + 1)
    return cli_fail(EXIT_BAD_INPUT, "%s '%s' must list integers separated by commas", flag, text);
  if (shape[0] != 1)
    return cli_fail(EXIT_BAD_INPUT,
                    "%s: %s must be [1, H, total, D] (sequences packed along dimension 2), not "
                    "batch %" PRId64,
                    flag, tensor, shape[0]);
  *max = 0;
  for (int64_t b = 0; b <= B; b++) {
    if ((b == 0 && dst[0] != 0) || (b > 0 && dst[b] < dst[b - 1]))
      return cli_fail(EXIT_BAD_INPUT,
                      "%s: entry %" PRId64 " (%" PRId64 ") must be %s: offsets start at 0 and "
                      "never decrease",
                      flag, b, dst[b], b == 0 ? "0" : "at least the one before");
    if (b > 0 && dst[b] - dst[b - 1] > *max) *max = dst[b] - dst[b - 1];
  }
  if (dst[B] != shape[2])
    return cli_fail(EXIT_BAD_INPUT,
                    "%s: the last offset (%" PRId64 ") must equal the %" PRId64
                    " rows of %s (dimension 2)",
                    flag, dst[B], shape[2], tensor);
  return 0;
}

int cli_configure(const run_opts *o, inputs *in, attn_params *p, int64_t **kv_len) {
  const int64_t *qs = in->q.shape, *ks = in->k.shape, *vs = in->v.shape;
  /* packed sequences: the batch is the number of offsets − 1 */
  const int64_t bq = o->cu_seqlens_q ? list_entries(o->cu_seqlens_q) - 1 : qs[0];
  const int64_t bk = o->cu_seqlens_k ? list_entries(o->cu_seqlens_k) - 1 : ks[0];
  if (bq != bk || (!o->cu_seqlens_k && vs[0] != ks[0]))
    return cli_fail(
        EXIT_BAD_INPUT, "batch sizes differ: q %" PRId64 ", k %" PRId64 ", v %" PRId64 "%s", bq, bk,
        vs[0], o->cu_seqlens_q || o->cu_seqlens_k ? " (packed: the offsets' count - 1)" : "");
  if (o->cu_seqlens_k && vs[0] != 1)
    return cli_fail(EXIT_BAD_INPUT,
                    "--cu-seqlens-k: v must be [1, Hkv, total, Dv], not batch %" PRId64, vs[0]);
  const int64_t B = bq;
  if (o->kv_len || o->q_len || o->cu_seqlens_q || o->cu_seqlens_k) { /* one allocation */
    *kv_len = malloc(sizeof(int64_t) * (size_t)(4 * B + 4));
    if (!*kv_len) return cli_fail(EXIT_RUNTIME, "out of memory");
  }
  int64_t *cu_q = *kv_len ? *kv_len + 2 * B + 2 : NULL,
          *cu_k = *kv_len ? *kv_len + 3 * B + 3 : NULL;
  int64_t lq = qs[2], lk = ks[2];
  if ((o->cu_seqlens_q &&
       parse_offsets("--cu-seqlens-q", o->cu_seqlens_q, "q", qs, B, cu_q, &lq)) ||
      (o->cu_seqlens_k && parse_offsets("--cu-seqlens-k", o->cu_seqlens_k, "k", ks, B, cu_k, &lk)))
    return EXIT_BAD_INPUT;
  if (ks[3] != qs[3])
    return cli_fail(EXIT_BAD_INPUT, "head dims differ: q has D = %" PRId64 ", k has D = %" PRId64,
                    qs[3], ks[3]);
  if (vs[1] != ks[1] || vs[2] != ks[2])
    return cli_fail(EXIT_BAD_INPUT,
                    "v [B, Hkv, Lk, Dv] must match k in Hkv and Lk: k has %" PRId64 ", %" PRId64
                    ", v has %" PRId64 ", %" PRId64,
                    ks[1], ks[2], vs[1], vs[2]);
  attn_params_init(p, B, qs[1], ks[1], lq, lk, qs[3], vs[3]);
  if (o->cu_seqlens_q) { /* Q, O, dO, dQ [1, Hq, total_q, ·], LSE [1, Hq, total_q] */
    p->cu_seqlens_q = cu_q;
    attn_strides_packed(p->q_stride, qs[1], qs[2], qs[3]);
    attn_strides_packed(p->o_stride, qs[1], qs[2], vs[3]);
    attn_strides_packed(p->dout_stride, qs[1], qs[2], vs[3]);
    attn_strides_packed(p->dq_stride, qs[1], qs[2], qs[3]);
    p->lse_stride[0] = qs[1] * qs[2], p->lse_stride[1] = qs[2], p->lse_stride[2] = 1;
  }
  if (o->cu_seqlens_k) { /* K, V, dK, dV [1, Hkv, total_k, ·] */
    p->cu_seqlens_k = cu_k;
    attn_strides_packed(p->k_stride, ks[1], ks[2], ks[3]);
    attn_strides_packed(p->v_stride, ks[1], ks[2], vs[3]);
    attn_strides_packed(p->dk_stride, ks[1], ks[2], ks[3]);
    attn_strides_packed(p->dv_stride, ks[1], ks[2], vs[3]);
  }
  p->q_dtype = in->q.dtype == NPY_F16 ? ATTN_DTYPE_F16 : ATTN_DTYPE_F32;
  p->k_dtype = in->k.dtype == NPY_F16 ? ATTN_DTYPE_F16 : ATTN_DTYPE_F32;
  p->v_dtype = in->v.dtype == NPY_F16 ? ATTN_DTYPE_F16 : ATTN_DTYPE_F32;
  const int64_t full[4] = {B, qs[1], lq, lk};

  if (o->scale) {
    if (parse_f32(o->scale, &p->scale) != 0 || !isfinite(p->scale))
      return cli_fail(EXIT_BAD_INPUT, "--scale '%s' must be a finite number", o->scale);
    p->has_scale = 1;
  }
  if (o->softcap &&
      (parse_f32(o->softcap, &p->softcap) != 0 || !isfinite(p->softcap) || p->softcap <= 0))
    return cli_fail(EXIT_BAD_INPUT, "--softcap '%s' must be a finite positive number", o->softcap);
  if (o->dropout &&
      (parse_f32(o->dropout, &p->dropout) != 0 || !(p->dropout >= 0.0f) || !(p->dropout < 1.0f)))
    return cli_fail(EXIT_BAD_INPUT, "--dropout '%s' must be a probability in [0, 1)", o->dropout);
  if (o->dropout_seed && parse_u64(o->dropout_seed, &p->dropout_seed) != 0)
    return cli_fail(EXIT_BAD_INPUT, "--dropout-seed '%s' must be an integer in [0, 2^64)",
                    o->dropout_seed);
  p->causal = o->causal;
  if (o->align) {
    if (strcmp(o->align, "top-left") == 0)
      p->align = ATTN_ALIGN_TOP_LEFT;
    else if (strcmp(o->align, "bottom-right") == 0)
      p->align = ATTN_ALIGN_BOTTOM_RIGHT;
    else
      return cli_fail(EXIT_BAD_INPUT, "--align '%s' must be top-left or bottom-right", o->align);
  }
  if (o->window) {
    int64_t w[2];
    if (cli_parse_list(o->window, w, 2) != 2 || w[0] < -1 || w[1] < -1)
      return cli_fail(EXIT_BAD_INPUT,
                      "--window '%s' must be LEFT,RIGHT with each -1 (unbounded) or at least 0",
                      o->window);
    p->window_left = w[0];
    p->window_right = w[1];
  }
  if ((o->kv_len && parse_lengths("--kv-len", "Lk", o->kv_len, B, lk, *kv_len)) ||
      (o->q_len && parse_lengths("--q-len", "Lq", o->q_len, B, lq, *kv_len + B + 1)))
    return EXIT_BAD_INPUT;
  if (o->kv_len) p->kv_len = *kv_len;
  if (o->q_len) p->q_len = *kv_len + B + 1;
  if (o->mask) {
    if (cli_load("--mask", o->mask, CLI_U8, 4, &in->mask) ||
        cli_broadcast_strides("--mask", &in->mask, full, p->mask_stride))
      return EXIT_BAD_INPUT;
    p->mask = in->mask.data;
  }
  if (o->bias) {
    if (cli_load("--bias", o->bias, CLI_F32, 4, &in->bias) ||
        cli_broadcast_strides("--bias", &in->bias, full, p->bias_stride))
      return EXIT_BAD_INPUT;
    p->bias = in->bias.data;
  }
  if ((o->alibi && load_per_head("--alibi", o->alibi, qs[1], &in->alibi, &p->alibi_slopes)) ||
      (o->sinks && load_per_head("--sinks", o->sinks, qs[1], &in->sinks, &p->sinks)))
    return EXIT_BAD_INPUT;
  if (o->threads) {
    int64_t t;
    if (cli_parse_i64(o->threads, &t) != 0 || t < 0 || t > ATTN_MAX_THREADS)
      return cli_fail(EXIT_BAD_INPUT, "--threads '%s' must be 0 (all CPUs) to %d", o->threads,
                      ATTN_MAX_THREADS);
    p->threads = (int)t;
  }
  if (o->kernel) {
    p->kernel = attn_kernel_from_name(o->kernel);
    if (p->kernel == ATTN_KERNEL_COUNT_)
      return cli_fail(EXIT_BAD_INPUT,
                      "--kernel '%s' is unknown (choose auto, ref, generic or avx2)", o->kernel);
    if (!attn_kernel_supported(p->kernel))
      return cli_fail(EXIT_BAD_INPUT, "--kernel %s cannot run on this CPU", o->kernel);
  }
  return 0;
}

float *cli_alloc_floats(int64_t a, int64_t b, int64_t c, int64_t d) {
  int64_t n = 1;
  if (__builtin_mul_overflow(a, b, &n) || __builtin_mul_overflow(n, c, &n) ||
      __builtin_mul_overflow(n, d, &n) || n > (int64_t)(SIZE_MAX / sizeof(float)))
    return NULL;
  return malloc(n > 0 ? (size_t)n * sizeof(float) : 1);
}

/* attn run (grad = 0) and attn grad (grad = 1): outputs out, lse, probs, then dq, dk, dv, dbias. */
int cli_outputs_commit(out_file *outs, int n, float *const *bufs, const int *ranks,
                       const int64_t (*shapes)[4]) {
  for (int i = 0; i < n; i++) {
    if (!outs[i].path) continue;
    int bad = npy_write(outs[i].f, bufs[i], NPY_F32, ranks[i], shapes[i]) != 0;
    bad |= fflush(outs[i].f) != 0 || fsync(fileno(outs[i].f)) != 0;
    bad |= fclose(outs[i].f) != 0;
    outs[i].f = NULL;
    if (bad)
      return cli_fail(EXIT_RUNTIME, "%s %s: write failed: %s", outs[i].flag, outs[i].path,
                      strerror(errno));
  }
  for (int i = 0; i < n; i++) {
    if (!outs[i].path) continue;
    if (rename(outs[i].tmp, outs[i].path) != 0)
      return cli_fail(EXIT_RUNTIME, "%s %s: cannot rename into place: %s", outs[i].flag,
                      outs[i].path, strerror(errno));
    free(outs[i].tmp);
    outs[i].tmp = NULL;
  }
  return 0;
}
