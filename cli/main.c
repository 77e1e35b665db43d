/*
 * main.c — the `attn` command line.
 *
 *   attn run --q Q.npy --k K.npy --v V.npy --out O.npy [options]   attention on .npy files
 *   attn grad --q Q.npy --k K.npy --v V.npy --dout DO.npy --dq DQ.npy --dk DK.npy --dv DV.npy
 *             [--dbias DB.npy] [options of run]                    its gradients (backward)
 *   attn info                                                      version, CPU, kernels
 *
 * Exit status: 0 success; 2 bad usage or bad input (one line on stderr, no output file created or
 * touched); 1 a failure while computing or writing (out of memory, disk full; also no file left).
 * Outputs are written to temporary files next to their targets and renamed only when all succeed.
 */
#include "attn.h"
#include "npy.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { EXIT_BAD_INPUT = 2, EXIT_RUNTIME = 1 };

static const char *command = "attn";

static int fail(int code, const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, "%s: ", command);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  return code;
}

static void usage(FILE *f) {
  fputs("usage:\n"
        "  attn run --q Q.npy --k K.npy --v V.npy --out O.npy [--lse LSE.npy] [--probs P.npy]\n"
        "           [--scale S] [--causal] [--align top-left|bottom-right] [--window LEFT,RIGHT]\n"
        "           [--kv-len N0,N1,...] [--mask M.npy] [--bias B.npy] [--softcap C]\n"
        "           [--alibi SLOPES.npy] [--threads N] [--kernel auto|ref|generic|avx2]\n"
        "  attn grad --q Q.npy --k K.npy --v V.npy --dout DO.npy --dq DQ.npy --dk DK.npy\n"
        "           --dv DV.npy [--dbias DB.npy] [--out O.npy] [--lse LSE.npy] [--probs P.npy]\n"
        "           [every option of attn run]\n"
        "  attn info\n"
        "  attn bench [--shape B,Hq,Hkv,Lq,Lk,D[,causal]]... [--threads N] [--kernel NAME]\n"
        "             [--reps N] [--csv] [--long] [--quick] [--backward]\n"
        "\n"
        "Q [B,Hq,Lq,D], K [B,Hkv,Lk,D], V [B,Hkv,Lk,Dv] are little-endian float32 C-order .npy;\n"
        "O [B,Hq,Lq,Dv], LSE [B,Hq,Lq] and P [B,Hq,Lq,Lk] are written as float32 .npy.\n"
        "grad runs the forward, then the backward for dO = DO [B,Hq,Lq,Dv]: DQ, DK, DV have the\n"
        "shapes of Q, K, V; DB (needs --bias) has the bias file's shape.\n"
        "Mask (uint8/bool, non-zero = visible) and bias (float32) are 4-D and broadcast to\n"
        "[B,Hq,Lq,Lk] (each dimension 1 or full); ALiBi slopes are float32 [Hq].\n"
        "Exit status: 0 ok, 2 bad input (nothing written), 1 runtime failure.\n",
        f);
}

/* ---- number parsing: the whole string must be consumed ---- */

static int parse_i64(const char *s, int64_t *out) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno || end == s || *end) return -1;
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

/* Parses "a,b,c" into up to max int64 values; returns the count or -1. */
static int64_t parse_list(const char *s, int64_t *vals, int64_t max) {
  int64_t n = 0;
  char buf[64];
  while (*s) {
    const char *comma = strchr(s, ',');
    size_t len = comma ? (size_t)(comma - s) : strlen(s);
    if (len == 0 || len >= sizeof buf || n == max) return -1;
    memcpy(buf, s, len);
    buf[len] = '\0';
    if (parse_i64(buf, &vals[n++]) != 0) return -1;
    s += len;
    if (comma) {
      s++;
      if (!*s) return -1;
    }
  }
  return n;
}

/* ---- inputs ---- */

typedef struct inputs {
  npy_array q, k, v, mask, bias, alibi;
} inputs;

static void inputs_free(inputs *in) {
  npy_free(&in->q);
  npy_free(&in->k);
  npy_free(&in->v);
  npy_free(&in->mask);
  npy_free(&in->bias);
  npy_free(&in->alibi);
}

static int load(const char *flag, const char *path, npy_dtype dtype, int ndim, npy_array *a) {
  char err[256];
  if (npy_read(path, a, err, sizeof err) != 0)
    return fail(EXIT_BAD_INPUT, "%s %s: %s", flag, path, err);
  if (a->dtype != dtype)
    return fail(EXIT_BAD_INPUT, "%s %s: dtype must be %s", flag, path,
                dtype == NPY_F32 ? "float32" : "uint8 or bool");
  if (a->ndim != ndim)
    return fail(EXIT_BAD_INPUT, "%s %s: expected a %d-D array, got %d-D", flag, path, ndim,
                a->ndim);
  return 0;
}

static void shape_str(const int64_t *s, int n, char *buf, size_t size) {
  size_t at = 0;
  at += (size_t)snprintf(buf, size, "[");
  for (int d = 0; d < n && at < size; d++)
    at += (size_t)snprintf(buf + at, size - at, "%s%" PRId64, d ? ", " : "", s[d]);
  if (at < size) snprintf(buf + at, size - at, "]");
}

/* Strides for a 4-D [B,Hq,Lq,Lk]-broadcastable array: each dimension 1 (stride 0) or full. */
static int broadcast_strides(const char *flag, const npy_array *a, const int64_t full[4],
                             int64_t strides[4]) {
  int64_t packed = 1;
  for (int d = 3; d >= 0; d--) {
    if (a->shape[d] != full[d] && a->shape[d] != 1) {
      char got[128], want[128];
      shape_str(a->shape, 4, got, sizeof got);
      shape_str(full, 4, want, sizeof want);
      return fail(EXIT_BAD_INPUT,
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

typedef struct out_file {
  const char *flag, *path;
  char *tmp;
  FILE *f;
} out_file;

static int out_open(out_file *o) {
  size_t n = strlen(o->path) + 16;
  o->tmp = malloc(n);
  if (!o->tmp) return fail(EXIT_RUNTIME, "out of memory");
  snprintf(o->tmp, n, "%s.tmp.XXXXXX", o->path);
  int fd = mkstemp(o->tmp);
  if (fd < 0) {
    free(o->tmp);
    o->tmp = NULL;
    return fail(EXIT_BAD_INPUT, "%s %s: cannot create the output file: %s", o->flag, o->path,
                strerror(errno));
  }
  o->f = fdopen(fd, "wb");
  if (!o->f) {
    close(fd);
    return fail(EXIT_RUNTIME, "%s %s: %s", o->flag, o->path, strerror(errno));
  }
  return 0;
}

static void out_discard(out_file *o) {
  if (o->f) fclose(o->f);
  o->f = NULL;
  if (o->tmp) unlink(o->tmp);
  free(o->tmp);
  o->tmp = NULL;
}

/* ---- attn run ---- */

typedef struct run_opts {
  const char *q, *k, *v, *out, *lse, *probs, *mask, *bias, *alibi;
  const char *scale, *align, *window, *kv_len, *softcap, *threads, *kernel;
  const char *dout, *dq, *dk, *dv, *dbias; /* attn grad */
  int causal, grad;
} run_opts;

static int parse_run_args(int argc, char **argv, run_opts *o) {
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
      {"--scale", &o->scale},
      {"--align", &o->align},
      {"--window", &o->window},
      {"--kv-len", &o->kv_len},
      {"--softcap", &o->softcap},
      {"--threads", &o->threads},
      {"--kernel", &o->kernel},
      {"--dout", &o->dout},
      {"--dq", &o->dq},
      {"--dk", &o->dk},
      {"--dv", &o->dv},
      {"--dbias", &o->dbias},
  };
  const size_t n_valued = sizeof valued / sizeof valued[0] - (o->grad ? 0 : 5);
  for (int i = 0; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--causal") == 0) {
      o->causal = 1;
      continue;
    }
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      usage(stdout);
      exit(0);
    }
    size_t f;
    for (f = 0; f < n_valued; f++)
      if (strcmp(a, valued[f].flag) == 0) break;
    if (f == n_valued) return fail(EXIT_BAD_INPUT, "unknown option '%s' (see attn --help)", a);
    if (i + 1 >= argc) return fail(EXIT_BAD_INPUT, "%s needs a value", a);
    if (*valued[f].dst) return fail(EXIT_BAD_INPUT, "%s given twice", a);
    *valued[f].dst = argv[++i];
  }
  const char *required[][2] = {
      {"--q", o->q},   {"--k", o->k},
      {"--v", o->v},   {o->grad ? "--dout" : "--out", o->grad ? o->dout : o->out},
      {"--dq", o->dq}, {"--dk", o->dk},
      {"--dv", o->dv}};
  for (int r = 0; r < (o->grad ? 7 : 4); r++)
    if (!required[r][1]) return fail(EXIT_BAD_INPUT, "%s is required", required[r][0]);
  if (o->dbias && !o->bias) return fail(EXIT_BAD_INPUT, "--dbias needs --bias");
  return 0;
}

/* Fills p from the options and the loaded inputs; *kv_len gets malloc'ed lengths if given. */
static int configure(const run_opts *o, inputs *in, attn_params *p, int64_t **kv_len) {
  const int64_t *qs = in->q.shape, *ks = in->k.shape, *vs = in->v.shape;
  if (ks[0] != qs[0] || vs[0] != qs[0])
    return fail(EXIT_BAD_INPUT, "batch sizes differ: q %" PRId64 ", k %" PRId64 ", v %" PRId64,
                qs[0], ks[0], vs[0]);
  if (ks[3] != qs[3])
    return fail(EXIT_BAD_INPUT, "head dims differ: q has D = %" PRId64 ", k has D = %" PRId64,
                qs[3], ks[3]);
  if (vs[1] != ks[1] || vs[2] != ks[2])
    return fail(EXIT_BAD_INPUT,
                "v [B, Hkv, Lk, Dv] must match k in Hkv and Lk: k has %" PRId64 ", %" PRId64
                ", v has %" PRId64 ", %" PRId64,
                ks[1], ks[2], vs[1], vs[2]);
  attn_params_init(p, qs[0], qs[1], ks[1], qs[2], ks[2], qs[3], vs[3]);
  const int64_t full[4] = {qs[0], qs[1], qs[2], ks[2]};

  if (o->scale) {
    if (parse_f32(o->scale, &p->scale) != 0 || !isfinite(p->scale))
      return fail(EXIT_BAD_INPUT, "--scale '%s' must be a finite number", o->scale);
    p->has_scale = 1;
  }
  if (o->softcap &&
      (parse_f32(o->softcap, &p->softcap) != 0 || !isfinite(p->softcap) || p->softcap <= 0))
    return fail(EXIT_BAD_INPUT, "--softcap '%s' must be a finite positive number", o->softcap);
  p->causal = o->causal;
  if (o->align) {
    if (strcmp(o->align, "top-left") == 0)
      p->align = ATTN_ALIGN_TOP_LEFT;
    else if (strcmp(o->align, "bottom-right") == 0)
      p->align = ATTN_ALIGN_BOTTOM_RIGHT;
    else
      return fail(EXIT_BAD_INPUT, "--align '%s' must be top-left or bottom-right", o->align);
  }
  if (o->window) {
    int64_t w[2];
    if (parse_list(o->window, w, 2) != 2 || w[0] < -1 || w[1] < -1)
      return fail(EXIT_BAD_INPUT,
                  "--window '%s' must be LEFT,RIGHT with each -1 (unbounded) or at least 0",
                  o->window);
    p->window_left = w[0];
    p->window_right = w[1];
  }
  if (o->kv_len) {
    int64_t B = qs[0];
    *kv_len = malloc(sizeof(int64_t) * (size_t)(B + 1));
    if (!*kv_len) return fail(EXIT_RUNTIME, "out of memory");
    int64_t n = parse_list(o->kv_len, *kv_len, B + 1);
    if (n != B)
      return fail(EXIT_BAD_INPUT,
                  "--kv-len '%s' must list %" PRId64 " integers (one per batch item)", o->kv_len,
                  B);
    for (int64_t b = 0; b < B; b++)
      if ((*kv_len)[b] < 0 || (*kv_len)[b] > ks[2])
        return fail(EXIT_BAD_INPUT,
                    "--kv-len: entry %" PRId64 " (%" PRId64 ") must be in [0, Lk = %" PRId64 "]", b,
                    (*kv_len)[b], ks[2]);
    p->kv_len = *kv_len;
  }
  if (o->mask) {
    if (load("--mask", o->mask, NPY_U8, 4, &in->mask) ||
        broadcast_strides("--mask", &in->mask, full, p->mask_stride))
      return EXIT_BAD_INPUT;
    p->mask = in->mask.data;
  }
  if (o->bias) {
    if (load("--bias", o->bias, NPY_F32, 4, &in->bias) ||
        broadcast_strides("--bias", &in->bias, full, p->bias_stride))
      return EXIT_BAD_INPUT;
    p->bias = in->bias.data;
  }
  if (o->alibi) {
    if (load("--alibi", o->alibi, NPY_F32, 1, &in->alibi)) return EXIT_BAD_INPUT;
    if (in->alibi.shape[0] != qs[1])
      return fail(EXIT_BAD_INPUT, "--alibi: %" PRId64 " slopes given but Hq = %" PRId64,
                  in->alibi.shape[0], qs[1]);
    p->alibi_slopes = in->alibi.data;
  }
  if (o->threads) {
    int64_t t;
    if (parse_i64(o->threads, &t) != 0 || t < 0 || t > ATTN_MAX_THREADS)
      return fail(EXIT_BAD_INPUT, "--threads '%s' must be 0 (all CPUs) to %d", o->threads,
                  ATTN_MAX_THREADS);
    p->threads = (int)t;
  }
  if (o->kernel) {
    p->kernel = attn_kernel_from_name(o->kernel);
    if (p->kernel == ATTN_KERNEL_COUNT_)
      return fail(EXIT_BAD_INPUT, "--kernel '%s' is unknown (choose auto, ref, generic or avx2)",
                  o->kernel);
    if (!attn_kernel_supported(p->kernel))
      return fail(EXIT_BAD_INPUT, "--kernel %s cannot run on this CPU", o->kernel);
  }
  return 0;
}

static float *alloc_floats(int64_t a, int64_t b, int64_t c, int64_t d) {
  int64_t n = 1;
  if (__builtin_mul_overflow(a, b, &n) || __builtin_mul_overflow(n, c, &n) ||
      __builtin_mul_overflow(n, d, &n) || n > (int64_t)(SIZE_MAX / sizeof(float)))
    return NULL;
  return malloc(n > 0 ? (size_t)n * sizeof(float) : 1);
}

/* attn run (grad = 0) and attn grad (grad = 1): outputs out, lse, probs, then dq, dk, dv, dbias. */
enum { N_OUTS = 7 };
static int cmd_run(int argc, char **argv, int grad) {
  command = grad ? "attn grad" : "attn run";
  run_opts o = {0};
  o.grad = grad;
  inputs in;
  memset(&in, 0, sizeof in);
  npy_array dout = {0};
  out_file outs[N_OUTS] = {{"--out", NULL, NULL, NULL},   {"--lse", NULL, NULL, NULL},
                           {"--probs", NULL, NULL, NULL}, {"--dq", NULL, NULL, NULL},
                           {"--dk", NULL, NULL, NULL},    {"--dv", NULL, NULL, NULL},
                           {"--dbias", NULL, NULL, NULL}};
  int64_t *kv_len = NULL;
  float *bufs[N_OUTS] = {NULL};
  int rc = parse_run_args(argc, argv, &o);
  if (rc) return rc;
  const char *paths[N_OUTS] = {o.out, o.lse, o.probs, o.dq, o.dk, o.dv, o.dbias};
  for (int a = 0; a < N_OUTS; a++) {
    outs[a].path = paths[a];
    for (int b = 0; b < a; b++)
      if (outs[a].path && outs[b].path && strcmp(outs[a].path, outs[b].path) == 0)
        return fail(EXIT_BAD_INPUT, "%s and %s name the same file '%s'", outs[b].flag, outs[a].flag,
                    outs[a].path);
  }

  if ((rc = load("--q", o.q, NPY_F32, 4, &in.q)) || (rc = load("--k", o.k, NPY_F32, 4, &in.k)) ||
      (rc = load("--v", o.v, NPY_F32, 4, &in.v)))
    goto done;
  attn_params p;
  if ((rc = configure(&o, &in, &p, &kv_len))) goto done;

  const int64_t B = p.batch, Hq = p.heads_q, Hkv = p.heads_kv, Lq = p.len_q, Lk = p.len_k;
  const int64_t D = p.dim, Dv = p.dim_v;
  const int64_t *bs = in.bias.shape;
  const int64_t shapes[N_OUTS][4] = {{B, Hq, Lq, Dv},
                                     {B, Hq, Lq, 1},
                                     {B, Hq, Lq, Lk},
                                     {B, Hq, Lq, D},
                                     {B, Hkv, Lk, D},
                                     {B, Hkv, Lk, Dv},
                                     {bs[0], bs[1], bs[2], bs[3]}};
  const int ranks[N_OUTS] = {4, 3, 4, 4, 4, 4, 4};
  if (grad) {
    if ((rc = load("--dout", o.dout, NPY_F32, 4, &dout))) goto done;
    if (memcmp(dout.shape, shapes[0], sizeof shapes[0]) != 0) {
      char got[128], want[128];
      shape_str(dout.shape, 4, got, sizeof got);
      shape_str(shapes[0], 4, want, sizeof want);
      rc = fail(EXIT_BAD_INPUT, "--dout %s: shape %s must equal O's [B, Hq, Lq, Dv] = %s", o.dout,
                got, want);
      goto done;
    }
    attn_strides_packed(p.dbias_stride, bs[1], bs[2], bs[3]);
  }
  for (int i = 0; i < N_OUTS; i++) {
    const int needed = outs[i].path || (grad && i < 2); /* grad needs O and LSE */
    if (!needed) continue;
    bufs[i] = alloc_floats(shapes[i][0], shapes[i][1], shapes[i][2], shapes[i][3]);
    if (!bufs[i]) {
      rc = fail(EXIT_RUNTIME, "%s: cannot allocate the output", outs[i].flag);
      goto done;
    }
  }
  for (int i = 0; i < N_OUTS; i++)
    if (outs[i].path && (rc = out_open(&outs[i]))) goto done;

  attn_status st = attn_forward(&p, in.q.data, in.k.data, in.v.data, bufs[0], bufs[1], bufs[2]);
  if (st == ATTN_STATUS_OK && grad)
    st = attn_backward(&p, in.q.data, in.k.data, in.v.data, bufs[0], bufs[1], dout.data, bufs[3],
                       bufs[4], bufs[5], bufs[6]);
  if (st != ATTN_STATUS_OK) {
    int code = (st == ATTN_STATUS_OUT_OF_MEMORY || st == ATTN_STATUS_INTERNAL) ? EXIT_RUNTIME
                                                                               : EXIT_BAD_INPUT;
    rc = fail(code, "%s (%s)", attn_last_error(), attn_status_str(st));
    goto done;
  }
  for (int i = 0; i < N_OUTS; i++) {
    if (!outs[i].path) continue;
    int bad = npy_write(outs[i].f, bufs[i], NPY_F32, ranks[i], shapes[i]) != 0;
    bad |= fflush(outs[i].f) != 0 || fsync(fileno(outs[i].f)) != 0;
    bad |= fclose(outs[i].f) != 0;
    outs[i].f = NULL;
    if (bad) {
      rc = fail(EXIT_RUNTIME, "%s %s: write failed: %s", outs[i].flag, outs[i].path,
                strerror(errno));
      goto done;
    }
  }
  for (int i = 0; i < N_OUTS; i++) {
    if (!outs[i].path) continue;
    if (rename(outs[i].tmp, outs[i].path) != 0) {
      rc = fail(EXIT_RUNTIME, "%s %s: cannot rename into place: %s", outs[i].flag, outs[i].path,
                strerror(errno));
      goto done;
    }
    free(outs[i].tmp);
    outs[i].tmp = NULL;
  }
  rc = 0;
done:
  for (int i = 0; i < N_OUTS; i++) {
    out_discard(&outs[i]);
    free(bufs[i]);
  }
  free(kv_len);
  npy_free(&dout);
  inputs_free(&in);
  return rc;
}

/* ---- attn info ---- */

static int cmd_info(void) {
  char features[256];
  printf("attn %s\n", attn_version());
  printf("cpu features: %s\n", attn_cpu_features(features, sizeof features));
  printf("threads: %ld online CPUs\n", sysconf(_SC_NPROCESSORS_ONLN));
  printf("kernels:");
  for (int k = 1; k < ATTN_KERNEL_COUNT_; k++)
    printf(" %s%s", attn_kernel_name((attn_kernel)k),
           attn_kernel_supported((attn_kernel)k) ? "" : " (not supported on this CPU)");
  printf("\nchosen (auto): %s\n", attn_kernel_name(attn_kernel_auto()));
  return 0;
}

int cmd_bench(int argc, char **argv); /* bench.c */

int main(int argc, char **argv) {
  if (argc < 2) {
    usage(stderr);
    return EXIT_BAD_INPUT;
  }
  if (strcmp(argv[1], "run") == 0) return cmd_run(argc - 2, argv + 2, 0);
  if (strcmp(argv[1], "grad") == 0) return cmd_run(argc - 2, argv + 2, 1);
  if (strcmp(argv[1], "info") == 0) return cmd_info();
  if (strcmp(argv[1], "bench") == 0) return cmd_bench(argc - 2, argv + 2);
  if (strcmp(argv[1], "--version") == 0) return printf("attn %s\n", attn_version()) < 0;
  if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "help") == 0) {
    usage(stdout);
    return 0;
  }
  return fail(EXIT_BAD_INPUT, "unknown command '%s' (run, grad, info, bench, --help)", argv[1]);
}
