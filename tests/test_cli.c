/*
 * test_cli.c — the `attn` command line, end to end: random cases of every contract rule written as
 * .npy files, `attn run` on them, outputs read back and held to the fp64 oracle under the tolerance
 * rule; then bad inputs, each of which must exit 2 with one line on stderr and leave no output file
 * created or touched; `attn grad` against attn_backward, with its own bad inputs.
 * Usage: test_cli PATH_TO_ATTN_BINARY
 */
#include "harness.h"
#include "npy.h"

#include <dirent.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *attn_bin;
static char dir[64];

static char *path(const char *name) {
  static char buf[8][256];
  static int at;
  at = (at + 1) % 8;
  snprintf(buf[at], sizeof buf[at], "%s/%s", dir, name);
  return buf[at];
}

static void write_npy(const char *name, const void *data, npy_dtype dtype, int ndim,
                      const int64_t *shape) {
  FILE *f = fopen(path(name), "wb");
  if (!f || npy_write(f, data, dtype, ndim, shape) != 0 || fclose(f) != 0) {
    fprintf(stderr, "test_cli: cannot write %s\n", path(name));
    exit(3);
  }
}

static void write_raw(const char *name, const void *bytes, size_t n) {
  FILE *f = fopen(path(name), "wb");
  fwrite(bytes, 1, n, f);
  fclose(f);
}

/* Runs `attn <args>` with stderr captured in dir/err.txt; returns the exit status. */
static int run_attn(const char *fmt, ...) {
  char args[2048], cmd[4096];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(args, sizeof args, fmt, ap);
  va_end(ap);
  snprintf(cmd, sizeof cmd, "%s %s 2> %s/err.txt > %s/out.txt", attn_bin, args, dir, dir);
  int st = system(cmd);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int stderr_lines(char *first, size_t size) {
  FILE *f = fopen(path("err.txt"), "r");
  int lines = 0, c;
  size_t n = 0;
  while (f && (c = fgetc(f)) != EOF) {
    if (c == '\n')
      lines++;
    else if (lines == 0 && n + 1 < size)
      first[n++] = (char)c;
  }
  first[n] = '\0';
  if (f) fclose(f);
  return lines;
}

static int tmp_files_left(void) {
  DIR *d = opendir(dir);
  struct dirent *e;
  int n = 0;
  while ((e = readdir(d)))
    if (strstr(e->d_name, ".tmp.")) n++;
  closedir(d);
  return n;
}

static float *read_f32(const char *name, int ndim, const int64_t *shape) {
  npy_array a;
  char err[256];
  if (npy_read(path(name), &a, err, sizeof err) != 0) {
    CHECKF(0, "reading %s: %s", name, err);
    return NULL;
  }
  int ok = a.dtype == NPY_F32 && a.ndim == ndim;
  for (int d = 0; ok && d < ndim; d++)
    ok &= a.shape[d] == shape[d];
  CHECKF(ok, "%s has the wrong dtype or shape", name);
  if (!ok) {
    npy_free(&a);
    return NULL;
  }
  return a.data;
}

/* Writes the case's inputs (float16 .npy files for those whose bit is set in f16: 1 = Q, 2 = K,
 * 4 = V), runs the CLI with the matching flags and checks the outputs against the oracle on the
 * same values. */
static void check_case_f16(const tspec *s, const char *extra, int f16) {
  tcase c;
  tcase_make(&c, s); /* LAYOUT_BHLD: the tensors are packed C-order arrays */
  const int64_t qs[4] = {s->B, s->Hq, s->Lq, s->D}, ks[4] = {s->B, s->Hkv, s->Lk, s->D},
                vs[4] = {s->B, s->Hkv, s->Lk, s->Dv};
  const attn_dtype t[3] = {f16 & 1 ? ATTN_DTYPE_F16 : ATTN_DTYPE_F32,
                           f16 & 2 ? ATTN_DTYPE_F16 : ATTN_DTYPE_F32,
                           f16 & 4 ? ATTN_DTYPE_F16 : ATTN_DTYPE_F32};
  tcase_set_types(&c, t[0], t[1], t[2]); /* c.q, c.k, c.v now hold the float16 values */
  const char *names[3] = {"q.npy", "k.npy", "v.npy"};
  const int64_t *shapes[3] = {qs, ks, vs};
  for (int i = 0; i < 3; i++)
    write_npy(names[i], tcase_input(&c, i), t[i] == ATTN_DTYPE_F16 ? NPY_F16 : NPY_F32, 4,
              shapes[i]);
  char flags[1024] = "";
  size_t n = 0;
#define ADD(...) n += (size_t)snprintf(flags + n, sizeof flags - n, __VA_ARGS__)
  if (s->causal) ADD(" --causal");
  if (s->align) ADD(" --align %s", s->align == ATTN_ALIGN_TOP_LEFT ? "top-left" : "bottom-right");
  if (s->window_left >= 0 || s->window_right >= 0)
    ADD(" --window %lld,%lld", (long long)s->window_left, (long long)s->window_right);
  if (s->kv_len) {
    ADD(" --kv-len ");
    for (int64_t b = 0; b < s->B; b++)
      ADD("%s%lld", b ? "," : "", (long long)c.kv_len[b]);
  }
  if (s->q_len) {
    ADD(" --q-len ");
    for (int64_t b = 0; b < s->B; b++)
      ADD("%s%lld", b ? "," : "", (long long)c.q_len[b]);
  }
  if (s->mask) {
    write_npy("mask.npy", c.mask.base, NPY_U8, 4, c.mask.size);
    ADD(" --mask %s", path("mask.npy"));
  }
  if (s->bias) {
    write_npy("bias.npy", tbuf_f32(&c.bias), NPY_F32, 4, c.bias.size);
    ADD(" --bias %s", path("bias.npy"));
  }
  if (s->softcap > 0) ADD(" --softcap %.9g", (double)s->softcap);
  if (s->alibi) {
    write_npy("alibi.npy", c.alibi, NPY_F32, 1, &s->Hq);
    ADD(" --alibi %s", path("alibi.npy"));
  }
  if (s->has_scale) ADD(" --scale %.9g", (double)s->scale);
  if (s->dropout > 0)
    ADD(" --dropout %.9g --dropout-seed %llu", (double)s->dropout,
        (unsigned long long)c.p.dropout_seed);
  if (s->sinks) {
    write_npy("sinks.npy", c.sinks, NPY_F32, 1, &s->Hq);
    ADD(" --sinks %s", path("sinks.npy"));
  }
#undef ADD
  unlink(path("o.npy")), unlink(path("lse.npy")), unlink(path("p.npy"));
  int rc = run_attn("run --q %s --k %s --v %s --out %s --lse %s --probs %s%s %s", path("q.npy"),
                    path("k.npy"), path("v.npy"), path("o.npy"), path("lse.npy"), path("p.npy"),
                    flags, extra);
  char label[512], line[512];
  tcase_label(&c, label, sizeof label);
  stderr_lines(line, sizeof line);
  CHECKF(rc == 0, "attn run exited %d: %s\n  case: %s", rc, line, label);
  if (rc == 0) {
    const int64_t os[4] = {s->B, s->Hq, s->Lq, s->Dv}, ps[4] = {s->B, s->Hq, s->Lq, s->Lk};
    float *o = read_f32("o.npy", 4, os), *lse = read_f32("lse.npy", 3, os),
          *pr = read_f32("p.npy", 4, ps);
    if (o && lse && pr) {
      const size_t no = (size_t)(s->B * s->Hq * s->Lq * s->Dv), nl = (size_t)(s->B * s->Hq * s->Lq),
                   np = (size_t)(s->B * s->Hq * s->Lq * s->Lk);
      double *ro = malloc(8 * no + 8), *rl = malloc(8 * nl + 8), *rp = malloc(8 * np + 8);
      float *bo = malloc(4 * no + 4), *bl = malloc(4 * nl + 4), *bp = malloc(4 * np + 4);
      const float *q = tbuf_f32(&c.q), *k = tbuf_f32(&c.k), *v = tbuf_f32(&c.v);
      oracle_forward(&c.p, q, k, v, ro, rl, rp);
      baseline_forward(&c.p, 0, q, k, v, bo, bl, bp);
      const float *bos[1] = {bo}, *bls[1] = {bl}, *bps[1] = {bp};
      /* the CLI runs the same kernels as the library, so a single baseline with the max rule's
       * factor is enough here; test_kernels holds the kernels to the full rule */
      CHECK(t_compare(label, "O(cli)", o, ro, bos, 1, no, TOL_MAX_FACTOR, TOL_MAX_FACTOR));
      CHECK(t_compare(label, "LSE(cli)", lse, rl, bls, 1, nl, TOL_MAX_FACTOR, TOL_MAX_FACTOR));
      CHECK(t_compare(label, "P(cli)", pr, rp, bps, 1, np, TOL_MAX_FACTOR, TOL_MAX_FACTOR));
      free(ro), free(rl), free(rp), free(bo), free(bl), free(bp);
    }
    free(o), free(lse), free(pr);
  }
  CHECK(tmp_files_left() == 0);
  tcase_free(&c);
}

static void check_case(const tspec *s, const char *extra) { check_case_f16(s, extra, 0); }

static void test_good_runs(void) {
  tspec base = tspec_shape(2, 4, 2, 37, 53, 16, 12);
  tspec s = base;
  check_case(&s, "");
  s.causal = 1, s.align = ATTN_ALIGN_BOTTOM_RIGHT;
  check_case(&s, "--threads 2");
  s.align = ATTN_ALIGN_TOP_LEFT, s.kv_len = 1;
  check_case(&s, "--kernel ref");
  s = base, s.window_left = 4, s.window_right = 2, s.align = ATTN_ALIGN_BOTTOM_RIGHT;
  check_case(&s, "--kernel generic --threads 3");
  for (int mk = MASK_FULL; mk < N_MASKS; mk++) {
    s = base, s.mask = mk;
    check_case(&s, "");
  }
  for (int bk = BIAS_FULL; bk < N_BIASES; bk++) {
    s = base, s.bias = bk;
    check_case(&s, "");
  }
  s = base, s.softcap = 2.5f, s.q_mul = 3.0f;
  check_case(&s, "");
  s = base, s.alibi = 1, s.align = ATTN_ALIGN_BOTTOM_RIGHT;
  check_case(&s, "");
  s = base, s.has_scale = 1, s.scale = -0.3f;
  check_case(&s, "");
  s = base, s.sinks = 1, s.kv_len = 1, s.align = ATTN_ALIGN_BOTTOM_RIGHT;
  check_case(&s, "");
  s = base, s.q_len = 1, s.kv_len = 1, s.causal = 1, s.align = ATTN_ALIGN_BOTTOM_RIGHT;
  check_case(&s, "");
  s = base, s.dropout = 0.2f, s.causal = 1, s.align = ATTN_ALIGN_BOTTOM_RIGHT;
  check_case(&s, "");
  s = base, s.causal = 1, s.align = ATTN_ALIGN_BOTTOM_RIGHT, s.kv_len = 1, s.mask = MASK_KEYPAD,
  s.bias = BIAS_NEGINF, s.softcap = 8.0f, s.alibi = 1, s.window_left = 20;
  check_case(&s, "--threads 0");
  check_case_f16(&s, "", 6); /* a float16 KV cache */
  s = base, s.causal = 1, s.align = ATTN_ALIGN_BOTTOM_RIGHT;
  check_case_f16(&s, "--kernel ref", 7);
  check_case_f16(&s, "--kernel generic", 1);
}

/* ---- bad input: exit 2, one line on stderr, no output created or touched ---- */

static void expect_bad(const char *why, const char *args, const char *needle) {
  static const char sentinel[] = "previous contents";
  write_raw("existing.npy", sentinel, sizeof sentinel);
  unlink(path("new.npy"));
  char cmd[2048];
  snprintf(cmd, sizeof cmd, args, path("existing.npy"));
  int rc = run_attn("%s", cmd);
  char line[512];
  int lines = stderr_lines(line, sizeof line);
  CHECKF(rc == 2, "%s: exit status %d, want 2", why, rc);
  CHECKF(lines == 1, "%s: %d lines on stderr, want 1", why, lines);
  CHECKF(!needle || strstr(line, needle), "%s: message \"%s\" lacks \"%s\"", why, line, needle);
  FILE *f = fopen(path("existing.npy"), "rb");
  char got[64] = "";
  size_t n = f ? fread(got, 1, sizeof got, f) : 0;
  if (f) fclose(f);
  CHECKF(n == sizeof sentinel && memcmp(got, sentinel, n) == 0, "%s: the output file was touched",
         why);
  CHECKF(access(path("new.npy"), F_OK) != 0, "%s: an output file was created", why);
  CHECKF(tmp_files_left() == 0, "%s: temporary files left behind", why);
}

/* attn bench takes numbers whole: trailing junk, empty items and words are errors, not zeros */
static void test_bench_options(void) {
  expect_bad("bench threads word", "bench --no-machine --threads abc", "--threads 'abc'");
  expect_bad("bench reps junk", "bench --no-machine --reps 5x", "--reps '5x'");
  expect_bad("bench min-time junk", "bench --no-machine --min-time 0.5s", "--min-time '0.5s'");
  expect_bad("bench min-time negative", "bench --no-machine --min-time -1", "--min-time '-1'");
  expect_bad("bench min-time nan", "bench --no-machine --min-time nan", "--min-time 'nan'");
  expect_bad("bench shape junk", "bench --no-machine --shape 1,2,2,64,64,64x", "--shape");
  expect_bad("bench shape short", "bench --no-machine --shape 1,2,2,64,64", "--shape");
  expect_bad("bench shape empty item", "bench --no-machine --shape 1,2,,64,64,64", "--shape");
  expect_bad("bench shape causal typo", "bench --no-machine --shape 1,2,2,64,64,64,casual",
             "--shape");
  expect_bad("bench kv dtype", "bench --no-machine --kv-dtype f64", "--kv-dtype 'f64'");
}

static void test_bad_inputs(void) {
  const int64_t qs[4] = {1, 2, 5, 4}, ks[4] = {1, 2, 7, 4}, k5[4] = {1, 2, 7, 5},
                vs[4] = {1, 2, 7, 3}, m_bad[4] = {1, 2, 3, 7}, m_ok[4] = {1, 1, 5, 7};
  float data[256] = {0};
  uint8_t bytes[256] = {1};
  write_npy("q.npy", data, NPY_F32, 4, qs);
  write_npy("k.npy", data, NPY_F32, 4, ks);
  write_npy("k5.npy", data, NPY_F32, 4, k5);
  write_npy("v.npy", data, NPY_F32, 4, vs);
  write_npy("mask_bad.npy", bytes, NPY_U8, 4, m_bad);
  write_npy("mask_f32.npy", data, NPY_F32, 4, m_ok);
  write_npy("bias_f16.npy", bytes, NPY_F16, 4, m_ok); /* Q, K, V may be float16; a bias not */
  const int64_t q3[3] = {2, 5, 4};
  write_npy("q3d.npy", data, NPY_F32, 3, q3);
  write_raw("garbage.npy", "this is not an array", 20);
  /* a truncated copy of q.npy */
  FILE *f = fopen(path("q.npy"), "rb");
  char buf[512];
  size_t n = fread(buf, 1, sizeof buf, f);
  fclose(f);
  write_raw("trunc.npy", buf, n - 9);
  /* float64 and Fortran-order headers */
  char hdr[160];
  memcpy(hdr, "\x93NUMPY\x01\x00\x76\x00", 10);
  snprintf(hdr + 10, sizeof hdr - 10, "%-117s\n",
           "{'descr': '<f8', 'fortran_order': False, 'shape': (1, 2, 5, 4), }");
  write_raw("f64.npy", hdr, 128);
  snprintf(hdr + 10, sizeof hdr - 10, "%-117s\n",
           "{'descr': '<f4', 'fortran_order': True, 'shape': (1, 2, 5, 4), }");
  write_raw("fortran.npy", hdr, 128);
  /* found by fuzzing: a header that ends right after 'descr': (its reader once read past the end)
   */
  const char *cut = "{'fortran_order': False, 'shape': (1, 2, 5, 4), 'descr':";
  hdr[8] = (char)strlen(cut);
  memcpy(hdr + 10, cut, strlen(cut));
  write_raw("nodescr.npy", hdr, 10 + strlen(cut));

  char good[1024], q[256], k[256], v[256];
  snprintf(q, sizeof q, "%s", path("q.npy"));
  snprintf(k, sizeof k, "%s", path("k.npy"));
  snprintf(v, sizeof v, "%s", path("v.npy"));
  snprintf(good, sizeof good, "run --q %s --k %s --v %s --lse %s/new.npy --out %%s", q, k, v, dir);
  /* the good command itself works (and then is spoiled one way at a time) */
  char cmd[2048];
  snprintf(cmd, sizeof cmd, good, path("ok.npy"));
  CHECK(run_attn("%s", cmd) == 0);
  unlink(path("new.npy"));
  unlink(path("ok.npy"));

  struct {
    const char *why, *fmt, *needle;
  } bad[] = {
      {"missing file", "run --q %s/nope.npy --k %s --v %s --out %%s", "nope.npy"},
      {"malformed", "run --q %s/garbage.npy --k %s --v %s --out %%s", "not a .npy file"},
      {"truncated", "run --q %s/trunc.npy --k %s --v %s --out %%s", "truncated"},
      {"float64", "run --q %s/f64.npy --k %s --v %s --out %%s", "unsupported dtype '<f8'"},
      {"fortran order", "run --q %s/fortran.npy --k %s --v %s --out %%s", "Fortran"},
      {"empty dtype", "run --q %s/nodescr.npy --k %s --v %s --out %%s", "unsupported dtype"},
      {"3-D q", "run --q %s/q3d.npy --k %s --v %s --out %%s", "expected a 4-D array"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char fmt[1024];
    snprintf(fmt, sizeof fmt, bad[i].fmt, dir, k, v);
    expect_bad(bad[i].why, fmt, bad[i].needle);
  }
  struct {
    const char *why, *extra, *needle;
  } flags[] = {
      {"head dims differ", "--k-replace", "head dims differ"},
      {"scale not a number", "--scale abc", "--scale 'abc'"},
      {"scale inf", "--scale inf", "finite"},
      {"negative threads", "--threads -3", "--threads '-3'"},
      {"one window number", "--window 1", "--window '1'"},
      {"window too small", "--window -2,0", "--window"},
      {"alignment needed", "--causal", "ATTN_ALIGN_BOTTOM_RIGHT"},
      {"bad align", "--align middle", "--align 'middle'"},
      {"mask shape", "--mask MASKBAD", "does not broadcast"},
      {"mask dtype", "--mask MASKF32", "dtype must be uint8 or bool"},
      {"bias dtype", "--bias BIASF16", "dtype must be float32"},
      {"unknown flag", "--foo 1", "unknown option '--foo'"},
      {"unknown kernel", "--kernel avx9000", "--kernel 'avx9000'"},
      {"kv-len count", "--kv-len 3,4", "must list 1 integers"},
      {"kv-len range", "--kv-len 9 --align top-left", "[0, Lk = 7]"},
      {"q-len count", "--q-len 3,4", "--q-len '3,4' must list 1 integers"},
      {"q-len range", "--q-len -1", "[0, Lq = "},
      {"dropout range", "--dropout 1", "--dropout '1' must be a probability in [0, 1)"},
      {"dropout word", "--dropout x", "--dropout 'x'"},
      {"dropout seed", "--dropout 0.1 --dropout-seed -3", "--dropout-seed '-3'"},
      {"cu-seqlens start", "--cu-seqlens-q 1,5", "--cu-seqlens-q: entry 0 (1) must be 0"},
      {"cu-seqlens end", "--cu-seqlens-q 0,6", "the last offset (6) must equal the 5 rows of q"},
      {"cu-seqlens decreasing", "--cu-seqlens-q 0,3,2 --cu-seqlens-k 0,3,7",
       "entry 2 (2) must be at least the one before"},
      {"cu-seqlens count", "--cu-seqlens-q 0,2,5", "batch sizes differ: q 2, k 1"},
      {"cu-seqlens word", "--cu-seqlens-k 0,x", "--cu-seqlens-k '0,x' must list integers"},
      {"cu-seqlens and q-len", "--cu-seqlens-q 0,5 --q-len 5",
       "cu_seqlens_q and q_len are both given"},
      {"softcap", "--softcap -1", "--softcap"},
      {"alibi missing", "--alibi NOPE", "nope"},
      {"flag twice", "--threads 1 --threads 2", "given twice"},
      {"value missing", "--threads", "needs a value"},
  };
  for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
    char extra[512] = "", fmt[2048];
    const char *e = flags[i].extra;
    if (strcmp(e, "--k-replace") == 0) {
      snprintf(fmt, sizeof fmt, "run --q %s --k %s --v %s --out %%s", q, path("k5.npy"), v);
      expect_bad(flags[i].why, fmt, flags[i].needle);
      continue;
    }
    if (strstr(e, "MASKBAD"))
      snprintf(extra, sizeof extra, "--mask %s", path("mask_bad.npy"));
    else if (strstr(e, "MASKF32"))
      snprintf(extra, sizeof extra, "--mask %s", path("mask_f32.npy"));
    else if (strstr(e, "BIASF16"))
      snprintf(extra, sizeof extra, "--bias %s", path("bias_f16.npy"));
    else if (strstr(e, "NOPE"))
      snprintf(extra, sizeof extra, "--alibi %s", path("nope.npy"));
    else
      snprintf(extra, sizeof extra, "%s", e);
    snprintf(fmt, sizeof fmt, "run --q %s --k %s --v %s --lse %s/new.npy --out %%s %s", q, k, v,
             dir, extra);
    expect_bad(flags[i].why, fmt, flags[i].needle);
  }
  /* heads that do not divide: the library's message comes through */
  const int64_t k3[4] = {1, 3, 7, 4}, v3[4] = {1, 3, 7, 3};
  write_npy("k3.npy", data, NPY_F32, 4, k3);
  write_npy("v3.npy", data, NPY_F32, 4, v3);
  char fmt[1024];
  snprintf(fmt, sizeof fmt, "run --q %s --k %s --v %s --out %%s", q, path("k3.npy"),
           path("v3.npy"));
  expect_bad("heads", fmt, "heads_q (2) is not a multiple of heads_kv (3)");
  snprintf(fmt, sizeof fmt, "run --q %s --k %s --v %s --out %%s --lse %s", q, k, v,
           path("existing.npy"));
  expect_bad("same output twice", fmt, "name the same file");
  snprintf(fmt, sizeof fmt, "run --q %s --k %s --v %s --out %s/no/such/dir/o.npy --lse %%s", q, k,
           v, dir);
  expect_bad("output directory missing", fmt, "cannot create the output file");
  expect_bad("missing --out", "run --q x.npy --k y.npy --v z.npy --lse %s", "--out is required");
  expect_bad("unknown command", "frobnicate %s", "unknown command");
}

/* attn grad on a case: the gradients it writes must equal attn_backward's in this process bitwise
 * (same kernel, which is deterministic for any thread count); dbias has the bias file's shape. */
static void check_grad(const tspec *s) {
  tcase c;
  tcase_make(&c, s);
  const int64_t qs[4] = {s->B, s->Hq, s->Lq, s->D}, ks[4] = {s->B, s->Hkv, s->Lk, s->D},
                vs[4] = {s->B, s->Hkv, s->Lk, s->Dv}, os[4] = {s->B, s->Hq, s->Lq, s->Dv};
  write_npy("q.npy", tbuf_f32(&c.q), NPY_F32, 4, qs);
  write_npy("k.npy", tbuf_f32(&c.k), NPY_F32, 4, ks);
  write_npy("v.npy", tbuf_f32(&c.v), NPY_F32, 4, vs);
  tgrad g;
  tgrad_make(&g, &c, 1, ATTN_KERNEL_AUTO, 11);
  write_npy("do.npy", tbuf_f32(&g.dout), NPY_F32, 4, os);
  char flags[512] = "";
  if (s->causal) strcat(flags, " --causal --align bottom-right");
  if (s->bias) {
    write_npy("bias.npy", tbuf_f32(&c.bias), NPY_F32, 4, c.bias.size);
    snprintf(flags + strlen(flags), sizeof flags - strlen(flags), " --bias %s --dbias %s",
             path("bias.npy"), path("db.npy"));
  }
  if (s->sinks) {
    write_npy("sinks.npy", c.sinks, NPY_F32, 1, &s->Hq);
    snprintf(flags + strlen(flags), sizeof flags - strlen(flags), " --sinks %s --dsinks %s",
             path("sinks.npy"), path("ds.npy"));
  }
  if (s->dropout > 0)
    snprintf(flags + strlen(flags), sizeof flags - strlen(flags),
             " --dropout %.9g --dropout-seed %llu", (double)s->dropout,
             (unsigned long long)c.p.dropout_seed);
  if (s->q_len) {
    strcat(flags, " --q-len ");
    for (int64_t b = 0; b < s->B; b++)
      snprintf(flags + strlen(flags), sizeof flags - strlen(flags), "%s%lld", b ? "," : "",
               (long long)c.q_len[b]);
  }
  int rc = run_attn("grad --q %s --k %s --v %s --dout %s --dq %s --dk %s --dv %s --out %s%s",
                    path("q.npy"), path("k.npy"), path("v.npy"), path("do.npy"), path("dq.npy"),
                    path("dk.npy"), path("dv.npy"), path("o.npy"), flags);
  char line[512];
  stderr_lines(line, sizeof line);
  CHECKF(rc == 0, "attn grad exited %d: %s", rc, line);
  tgrads want = t_backward_gather(&c, &g, ATTN_KERNEL_AUTO, 2);
  if (rc == 0) {
    float *dq = read_f32("dq.npy", 4, qs), *dk = read_f32("dk.npy", 4, ks),
          *dv = read_f32("dv.npy", 4, vs), *o = read_f32("o.npy", 4, os);
    float *db = s->bias ? read_f32("db.npy", 4, c.bias.size) : NULL;
    float *o_lib = malloc(sizeof(float) * want.nq + sizeof(float) * (size_t)tbuf_count(&g.o));
    tbuf_gather(&g.o, o_lib);
    CHECK(dq && memcmp(dq, want.dq, want.nq * sizeof(float)) == 0);
    CHECK(dk && memcmp(dk, want.dk, want.nk * sizeof(float)) == 0);
    CHECK(dv && memcmp(dv, want.dv, want.nv * sizeof(float)) == 0);
    CHECK(o && memcmp(o, o_lib, (size_t)tbuf_count(&g.o) * sizeof(float)) == 0);
    CHECK(!s->bias || (db && memcmp(db, want.dbias, want.nb * sizeof(float)) == 0));
    if (s->sinks) { /* the library's attn_backward_sinks on the same O, LSE and dO */
      float *ds = read_f32("ds.npy", 1, &s->Hq), want_ds[16];
      CHECK(s->Hq <= 16 && attn_backward_sinks(&c.p, tbuf_f32(&g.o), tbuf_f32(&g.lse),
                                               tbuf_f32(&g.dout), want_ds) == ATTN_STATUS_OK);
      CHECK(ds && memcmp(ds, want_ds, sizeof(float) * (size_t)s->Hq) == 0);
      free(ds);
    }
    free(dq), free(dk), free(dv), free(o), free(db), free(o_lib);
  }
  CHECK(tmp_files_left() == 0);
  tgrads_free(&want);
  tgrad_free(&g);
  tcase_free(&c);
}

/* Rows [0, len[b]) of every (b, h) of a [B, H, L, n] array, packed into [1, H, total, n] at rows
 * cu[b] + i (unpack = 0), or back (unpack = 1: only the packed rows are written). */
static void repack(float *padded, float *packed, int64_t B, int64_t H, int64_t L, int64_t n,
                   const int64_t *cu, int unpack) {
  const int64_t total = cu[B];
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t i = 0; i < cu[b + 1] - cu[b]; i++) {
        float *pd = padded + ((b * H + h) * L + i) * n, *pk = packed + (h * total + cu[b] + i) * n;
        memcpy(unpack ? pd : pk, unpack ? pk : pd, sizeof(float) * (size_t)n);
      }
}

/* attn grad (which runs attn run's forward) on packed sequences, --cu-seqlens-q and -k with
 * [1, H, total, ·] files: every row bitwise the padded run's with --q-len and --kv-len. */
static void test_packed(void) {
  tspec s = tspec_shape(3, 4, 2, 9, 13, 16, 12);
  s.q_len = s.kv_len = 1, s.causal = 1, s.align = ATTN_ALIGN_BOTTOM_RIGHT, s.seed = 21;
  tcase c;
  tcase_make(&c, &s); /* LAYOUT_BHLD: packed C-order arrays */
  const int64_t B = s.B, Hq = s.Hq, Hkv = s.Hkv, Lq = s.Lq, Lk = s.Lk, D = s.D, Dv = s.Dv;
  int64_t cu_q[4] = {0}, cu_k[4] = {0};
  char lens[128] = "", offs[128] = "";
  for (int64_t b = 0; b < B; b++) {
    cu_q[b + 1] = cu_q[b] + c.q_len[b], cu_k[b + 1] = cu_k[b] + c.kv_len[b];
    snprintf(lens + strlen(lens), sizeof lens - strlen(lens), "%s%lld", b ? "," : " --q-len ",
             (long long)c.q_len[b]);
  }
  for (int64_t b = 0; b < B; b++)
    snprintf(lens + strlen(lens), sizeof lens - strlen(lens), "%s%lld", b ? "," : " --kv-len ",
             (long long)c.kv_len[b]);
  for (int64_t b = 0; b <= B; b++)
    snprintf(offs + strlen(offs), sizeof offs - strlen(offs), "%s%lld",
             b ? "," : " --cu-seqlens-q ", (long long)cu_q[b]);
  for (int64_t b = 0; b <= B; b++)
    snprintf(offs + strlen(offs), sizeof offs - strlen(offs), "%s%lld",
             b ? "," : " --cu-seqlens-k ", (long long)cu_k[b]);
  const int64_t qs[4] = {B, Hq, Lq, D}, ks[4] = {B, Hkv, Lk, D}, vs[4] = {B, Hkv, Lk, Dv},
                os[4] = {B, Hq, Lq, Dv};
  const int64_t pqs[4] = {1, Hq, cu_q[B], D}, pks[4] = {1, Hkv, cu_k[B], D},
                pvs[4] = {1, Hkv, cu_k[B], Dv}, pos[4] = {1, Hq, cu_q[B], Dv},
                pls[3] = {1, Hq, cu_q[B]}, ls[3] = {B, Hq, Lq};
  float *dout = malloc(sizeof(float) * (size_t)(B * Hq * Lq * Dv));
  rng r = {5};
  for (int64_t i = 0; i < B * Hq * Lq * Dv; i++)
    dout[i] = rng_normal(&r);
  float *pq = malloc(sizeof(float) * (size_t)(cu_q[B] * Hq * D + 1)),
        *pk = malloc(sizeof(float) * (size_t)(cu_k[B] * Hkv * D + 1)),
        *pv = malloc(sizeof(float) * (size_t)(cu_k[B] * Hkv * Dv + 1)),
        *pdo = malloc(sizeof(float) * (size_t)(cu_q[B] * Hq * Dv + 1));
  repack(tbuf_f32(&c.q), pq, B, Hq, Lq, D, cu_q, 0),
      repack(tbuf_f32(&c.k), pk, B, Hkv, Lk, D, cu_k, 0);
  repack(tbuf_f32(&c.v), pv, B, Hkv, Lk, Dv, cu_k, 0), repack(dout, pdo, B, Hq, Lq, Dv, cu_q, 0);
  write_npy("q.npy", tbuf_f32(&c.q), NPY_F32, 4, qs),
      write_npy("k.npy", tbuf_f32(&c.k), NPY_F32, 4, ks);
  write_npy("v.npy", tbuf_f32(&c.v), NPY_F32, 4, vs), write_npy("do.npy", dout, NPY_F32, 4, os);
  write_npy("pq.npy", pq, NPY_F32, 4, pqs), write_npy("pk.npy", pk, NPY_F32, 4, pks);
  write_npy("pv.npy", pv, NPY_F32, 4, pvs), write_npy("pdo.npy", pdo, NPY_F32, 4, pos);
  const char *common = "--causal --align bottom-right";
  /* (path() has 8 buffers: the 9 files are named through dir) */
  const char *names =
      "--q %1$s/%2$sq.npy --k %1$s/%2$sk.npy --v %1$s/%2$sv.npy --dout %1$s/%2$sdo.npy "
      "--dq %1$s/%2$sdq.npy --dk %1$s/%2$sdk.npy --dv %1$s/%2$sdv.npy "
      "--out %1$s/%2$so.npy --lse %1$s/%2$slse.npy";
  char files[2][1024];
  snprintf(files[0], sizeof files[0], names, dir, "");
  snprintf(files[1], sizeof files[1], names, dir, "p");
  int rc = run_attn("grad %s %s%s", files[0], common, lens);
  CHECKF(rc == 0, "padded attn grad exited %d", rc);
  rc = run_attn("grad %s %s%s", files[1], common, offs);
  char line[512];
  stderr_lines(line, sizeof line);
  CHECKF(rc == 0, "packed attn grad exited %d: %s", rc, line);
  if (rc == 0) {
    struct {
      const char *padded, *packed;
      int ndim;
      const int64_t *shape, *pshape, *cu;
    } outs[] = {{"o.npy", "po.npy", 4, os, pos, cu_q},
                {"lse.npy", "plse.npy", 3, ls, pls, cu_q},
                {"dq.npy", "pdq.npy", 4, qs, pqs, cu_q},
                {"dk.npy", "pdk.npy", 4, ks, pks, cu_k},
                {"dv.npy", "pdv.npy", 4, vs, pvs, cu_k}};
    for (size_t i = 0; i < sizeof outs / sizeof outs[0]; i++) {
      const int64_t *sh = outs[i].shape, n = outs[i].ndim > 3 ? sh[3] : 1;
      float *a = read_f32(outs[i].padded, outs[i].ndim, sh);
      float *b = read_f32(outs[i].packed, outs[i].ndim, outs[i].pshape);
      float *back = malloc(sizeof(float) * (size_t)(sh[0] * sh[1] * sh[2] * n));
      if (a && b) { /* the packed rows into a copy of the padded array: bitwise equal */
        memcpy(back, a, sizeof(float) * (size_t)(sh[0] * sh[1] * sh[2] * n));
        for (int64_t e = 0; e < sh[0] * sh[1] * sh[2] * n; e++)
          back[e] = NAN;
        repack(back, b, sh[0], sh[1], sh[2], n, outs[i].cu, 1);
        int same = 1;
        for (int64_t bb = 0; bb < sh[0]; bb++)
          for (int64_t h = 0; h < sh[1]; h++)
            for (int64_t row = 0; row < outs[i].cu[bb + 1] - outs[i].cu[bb]; row++) {
              const int64_t at = ((bb * sh[1] + h) * sh[2] + row) * n;
              same &= memcmp(back + at, a + at, sizeof(float) * (size_t)n) == 0;
            }
        CHECKF(same, "packed %s differs from the padded run's rows", outs[i].packed);
      }
      free(a), free(b), free(back);
    }
  }
  CHECK(tmp_files_left() == 0);
  free(dout), free(pq), free(pk), free(pv), free(pdo);
  tcase_free(&c);
}

static void test_grad(void) {
  tspec s = tspec_shape(2, 4, 2, 37, 53, 16, 12);
  check_grad(&s);
  s.causal = 1, s.align = ATTN_ALIGN_BOTTOM_RIGHT, s.bias = BIAS_BCAST;
  check_grad(&s);
  s.sinks = 1;
  check_grad(&s);
  s.q_len = 1; /* padding query rows: zero gradients, nothing added to dK, dV, dBias */
  check_grad(&s);
  s.dropout = 0.3f; /* the same mask, forward and backward */
  check_grad(&s);
  /* bad grad input: exit 2, nothing written */
  const int64_t qs[4] = {1, 2, 5, 4}, ks[4] = {1, 2, 7, 4}, os[4] = {1, 2, 5, 4},
                bad[4] = {1, 2, 5, 3};
  float data[256] = {0};
  write_npy("q.npy", data, NPY_F32, 4, qs);
  write_npy("k.npy", data, NPY_F32, 4, ks);
  write_npy("v.npy", data, NPY_F32, 4, ks);
  write_npy("do.npy", data, NPY_F32, 4, os);
  write_npy("do_bad.npy", data, NPY_F32, 4, bad);
  char args[1024];
  const char *qkv = "--q %s --k %s --v %s";
  char base[512];
  snprintf(base, sizeof base, qkv, path("q.npy"), path("k.npy"), path("v.npy"));
  snprintf(args, sizeof args, "grad %s --dout %s --dq %%s --dk %s --dv %s", base,
           path("do_bad.npy"), path("new.npy"), path("dv_new.npy"));
  expect_bad("dO of the wrong shape", args, "--dout");
  snprintf(args, sizeof args, "grad %s --dout %s --dq %%s --dv %s", base, path("do.npy"),
           path("new.npy"));
  expect_bad("grad without --dk", args, "--dk");
  snprintf(args, sizeof args, "grad %s --dout %s --dq %%s --dk %s --dv %s --dbias %s", base,
           path("do.npy"), path("new.npy"), path("dv_new.npy"), path("db_new.npy"));
  expect_bad("--dbias without --bias", args, "--bias");
  snprintf(args, sizeof args, "grad %s --dout %s --dq %%s --dk %s --dv %s --dsinks %s", base,
           path("do.npy"), path("new.npy"), path("dv_new.npy"), path("db_new.npy"));
  expect_bad("--dsinks without --sinks", args, "--sinks");
  snprintf(args, sizeof args, "run %s --out %%s --dq %s", base, path("new.npy"));
  expect_bad("run does not take gradient flags", args, "--dq");
  CHECK(access(path("dv_new.npy"), F_OK) != 0 && access(path("db_new.npy"), F_OK) != 0);
}

static void test_info(void) {
  CHECK(run_attn("info") == 0);
  FILE *f = fopen(path("out.txt"), "r");
  char text[1024] = "";
  size_t n = fread(text, 1, sizeof text - 1, f);
  text[n] = '\0';
  fclose(f);
  CHECKF(strstr(text, "attn " ATTN_VERSION_STRING) && strstr(text, "generic") &&
             strstr(text, "chosen (auto)") && strstr(text, "cpu features"),
         "attn info printed: %s", text);
  /* an ATTN_ISA that makes every auto call fail is reported, not hidden behind detection */
  CHECK(setenv("ATTN_ISA", "avx9000", 1) == 0);
  CHECK(run_attn("info") == 0);
  unsetenv("ATTN_ISA");
  f = fopen(path("out.txt"), "r");
  n = fread(text, 1, sizeof text - 1, f);
  text[n] = '\0';
  fclose(f);
  CHECKF(strstr(text, "chosen (auto): none: ATTN_ISA=avx9000 is not a kernel name"),
         "attn info with ATTN_ISA=avx9000 printed: %s", text);
  CHECK(run_attn("--help") == 0);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: test_cli PATH_TO_ATTN\n");
    return 2;
  }
  attn_bin = argv[1];
  snprintf(dir, sizeof dir, "/tmp/attn_cli_XXXXXX");
  if (!mkdtemp(dir)) return 3;
  test_good_runs();
  test_bad_inputs();
  test_bench_options();
  test_grad();
  test_packed();
  test_info();
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
  return t_finish("test_cli");
}
