/*
 * test_ring_cli.c — `mpirun -np N attn-ring run|grad` against `attn run|grad` on the same .npy
 * files: the same outputs (to the forward's and backward's tolerance), and bad input exits 2 on
 * every rank leaving no file.
 * Usage: test_ring_cli PATH_TO_MPIRUN PATH_TO_ATTN PATH_TO_ATTN_RING
 */
#include "harness.h"
#include "npy.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *mpirun, *attn_bin, *ring_bin;
static char dir[64];

static const char *path(const char *name) {
  static char buf[16][256];
  static int at;
  at = (at + 1) % 16;
  snprintf(buf[at], sizeof buf[at], "%s/%s", dir, name);
  return buf[at];
}

static int sh(const char *fmt, ...) {
  char cmd[4096];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(cmd, sizeof cmd, fmt, ap);
  va_end(ap);
  int st = system(cmd);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void write_npy(const char *name, const float *data, const int64_t *shape) {
  FILE *f = fopen(path(name), "wb");
  if (!f || npy_write(f, data, NPY_F32, 4, shape) != 0 || fclose(f) != 0) exit(3);
}

static float *read_npy(const char *name, size_t *n) {
  npy_array a;
  char err[256];
  if (npy_read(path(name), &a, err, sizeof err) != 0) {
    CHECKF(0, "reading %s: %s", name, err);
    return NULL;
  }
  *n = (size_t)a.count;
  return a.data;
}

/* max |a − b| ≤ tol · max(1, max |b|) */
static int close_enough(const char *what, const char *a, const char *b, double tol) {
  size_t na = 0, nb = 0;
  float *x = read_npy(a, &na), *y = read_npy(b, &nb);
  int ok = x && y && na == nb;
  double err = 0, mag = 1;
  for (size_t i = 0; ok && i < na; i++) {
    if (isnan(x[i]) != isnan(y[i])) ok = 0;
    if (fabs((double)x[i] - y[i]) > err) err = fabs((double)x[i] - y[i]);
    if (fabs(y[i]) > mag) mag = fabs(y[i]);
  }
  ok &= err <= tol * mag;
  CHECKF(ok, "%s: attn-ring and attn differ by %.3g (magnitude %.3g)", what, err, mag);
  free(x), free(y);
  return ok;
}

static void check(int np, const char *flags, int grad) {
  const char *env =
      "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl=self,vader";
  const char *io = "--q %s --k %s --v %s --out %s --lse %s";
  char a[1024], b[1024];
  snprintf(a, sizeof a, io, path("q.npy"), path("k.npy"), path("v.npy"), path("o_a.npy"),
           path("l_a.npy"));
  snprintf(b, sizeof b, io, path("q.npy"), path("k.npy"), path("v.npy"), path("o_r.npy"),
           path("l_r.npy"));
  const char *g_a = "", *g_r = "";
  char ga[512] = "", gr[512] = "";
  if (grad) {
    snprintf(ga, sizeof ga, " --dout %s --dq %s --dk %s --dv %s", path("do.npy"), path("dq_a.npy"),
             path("dk_a.npy"), path("dv_a.npy"));
    snprintf(gr, sizeof gr, " --dout %s --dq %s --dk %s --dv %s", path("do.npy"), path("dq_r.npy"),
             path("dk_r.npy"), path("dv_r.npy"));
    g_a = ga, g_r = gr;
  }
  const char *cmd = grad ? "grad" : "run";
  int rc_a = sh("%s %s %s%s %s", attn_bin, cmd, a, g_a, flags);
  int rc_r = sh("%s %s --oversubscribe --timeout 120 -np %d %s %s %s%s %s", env, mpirun, np,
                ring_bin, cmd, b, g_r, flags);
  CHECKF(rc_a == 0 && rc_r == 0, "attn %s exited %d, attn-ring (np %d) %d (%s)", cmd, rc_a, rc_r,
         np, flags);
  if (rc_a || rc_r) return;
  close_enough("O", "o_r.npy", "o_a.npy", 1e-5);
  close_enough("LSE", "l_r.npy", "l_a.npy", 1e-5);
  if (grad) {
    close_enough("dQ", "dq_r.npy", "dq_a.npy", 1e-4);
    close_enough("dK", "dk_r.npy", "dk_a.npy", 1e-4);
    close_enough("dV", "dv_r.npy", "dv_a.npy", 1e-4);
  }
}

static void expect_bad(int np, const char *why, const char *args, const char *needle) {
  const char *env =
      "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl=self,vader";
  unlink(path("new.npy"));
  int rc = sh("%s %s --quiet --oversubscribe --timeout 120 -np %d %s %s 2> %s", env, mpirun, np,
              ring_bin, args, path("err.txt"));
  char line[512] = "";
  FILE *f = fopen(path("err.txt"), "r");
  int lines = 0;
  while (f && fgets(line, sizeof line, f))
    lines++;
  if (f) fclose(f);
  CHECKF(rc == 2, "%s: exit %d, want 2", why, rc);
  CHECKF(lines == 1, "%s: %d lines on stderr, want 1 (rank 0 speaks)", why, lines);
  f = fopen(path("err.txt"), "r");
  if (f) {
    if (!fgets(line, sizeof line, f)) line[0] = 0;
    fclose(f);
  }
  CHECKF(!needle || strstr(line, needle), "%s: message \"%s\" lacks \"%s\"", why, line, needle);
  CHECKF(access(path("new.npy"), F_OK) != 0, "%s: an output file was created", why);
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: test_ring_cli MPIRUN ATTN ATTN_RING\n");
    return 2;
  }
  mpirun = argv[1], attn_bin = argv[2], ring_bin = argv[3];
  snprintf(dir, sizeof dir, "/tmp/attn_ring_cli_XXXXXX");
  if (!mkdtemp(dir)) return 3;
  tspec s = tspec_shape(2, 4, 2, 48, 48, 16, 8);
  s.seed = 3;
  tcase c;
  tcase_make(&c, &s);
  const int64_t qs[4] = {2, 4, 48, 16}, ks[4] = {2, 2, 48, 16}, vs[4] = {2, 2, 48, 8},
                os[4] = {2, 4, 48, 8};
  write_npy("q.npy", tbuf_f32(&c.q), qs);
  write_npy("k.npy", tbuf_f32(&c.k), ks);
  write_npy("v.npy", tbuf_f32(&c.v), vs);
  write_npy("do.npy", tbuf_f32(&c.q), os); /* any values: the first elements of Q */
  check(2, "", 0);
  check(3, "--causal", 0);
  check(4, "--causal --align bottom-right --kv-len 40,48 --softcap 5", 1);
  check(2, "--kv-len 7,48 --scale 0.2 --threads 1", 1);
  char args[1024];
  snprintf(args, sizeof args, "run --q %s --k %s --v %s --out %s --window 3,3", path("q.npy"),
           path("k.npy"), path("v.npy"), path("new.npy"));
  expect_bad(2, "window across ranks", args, "--window");
  snprintf(args, sizeof args, "run --q %s --k %s --v %s --out %s --causal", path("q.npy"),
           path("k.npy"), path("v.npy"), path("new.npy"));
  expect_bad(5, "L not a multiple of 2N", args, "multiple");
  snprintf(args, sizeof args, "run --q %s --k %s --v %s --out %s", path("q.npy"), path("q.npy"),
           path("v.npy"), path("new.npy"));
  expect_bad(2, "K of the wrong shape", args, NULL);
  tcase_free(&c);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
  return t_finish("test_ring_cli");
}
