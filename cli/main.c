/*
 * main.c — the `attn` command line.
 *
 *   attn run --q Q.npy --k K.npy --v V.npy --out O.npy [options]   attention on .npy files
 *   attn grad --q Q.npy --k K.npy --v V.npy --dout DO.npy --dq DQ.npy --dk DK.npy --dv DV.npy
 *             [--dbias DB.npy] [--dsinks DS.npy] [options of run]  its gradients (backward)
 *   attn info                                                      version, CPU, kernels
 *
 * Exit status: 0 success; 2 bad usage or bad input (one line on stderr, no output file created or
 * touched); 1 a failure while computing or writing (out of memory, disk full; also no file left).
 * Outputs are written to temporary files next to their targets and renamed only when all succeed.
 */
#include "attn.h"
#include "npy.h"
#include "runargs.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void usage(FILE *f) {
  fputs("usage:\n"
        "  attn run --q Q.npy --k K.npy --v V.npy --out O.npy [--lse LSE.npy] [--probs P.npy]\n"
        "           [--scale S] [--causal] [--align top-left|bottom-right] [--window LEFT,RIGHT]\n"
        "           [--kv-len N0,N1,...] [--q-len N0,N1,...] [--mask M.npy] [--bias B.npy]\n"
        "           [--cu-seqlens-q 0,E1,...,EB] [--cu-seqlens-k 0,E1,...,EB]  (packed sequences:\n"
        "           Q, O, LSE or K, V [1, H, total, ·]; sequence b is rows E(b) to E(b+1) - 1)\n"
        "           [--softcap C] [--alibi SLOPES.npy] [--sinks SINKS.npy] [--threads N]\n"
        "           [--dropout P --dropout-seed S]  (attention dropout; attn grad differentiates\n"
        "           the same mask)\n"
        "           [--kernel auto|ref|generic|avx2|avx512]\n"
        "  attn grad --q Q.npy --k K.npy --v V.npy --dout DO.npy --dq DQ.npy --dk DK.npy\n"
        "           --dv DV.npy [--dbias DB.npy] [--dsinks DS.npy] [--out O.npy] [--lse LSE.npy]\n"
        "           [--probs P.npy]\n"
        "           [every option of attn run]\n"
        "  attn info\n"
        "  attn bench [--shape B,Hq,Hkv,Lq,Lk,D[,causal]]... [--threads N] [--kernel NAME]\n"
        "             [--reps N] [--min-time S]  (time at least N calls and S s; 5, 0.25)\n"
        "             [--kv-dtype f32|f16|bf16|f8e4m3|f8e5m2] [--kv-layout bhld|blhd]\n"
        "             [--page-size N] [--csv] [--long] [--quick] [--backward] [--no-machine]\n"
        "             [--alloc]  (timed calls allocate their own scratch, no workspace)\n"
        "\n"
        "Q [B,Hq,Lq,D], K [B,Hkv,Lk,D], V [B,Hkv,Lk,Dv] are little-endian C-order .npy, float32\n"
        "or float16 (each on its own: a float16 K and V is a 16-bit KV cache);\n"
        "O [B,Hq,Lq,Dv], LSE [B,Hq,Lq] and P [B,Hq,Lq,Lk] are written as float32 .npy.\n"
        "grad runs the forward, then the backward for dO = DO [B,Hq,Lq,Dv]: DQ, DK, DV have the\n"
        "shapes of Q, K, V; DB (needs --bias) has the bias file's shape.\n"
        "Mask (uint8/bool, non-zero = visible) and bias (float32) are 4-D and broadcast to\n"
        "[B,Hq,Lq,Lk] (each dimension 1 or full); ALiBi slopes and sinks are float32 [Hq];\n"
        "DS (--dsinks, needs --sinks) is the sinks' gradient, float32 [Hq].\n"
        "Exit status: 0 ok, 2 bad input (nothing written), 1 runtime failure.\n",
        f);
}

enum { N_OUTS = 8 };
static int cmd_run(int argc, char **argv, int grad) {
  cli_command = grad ? "attn grad" : "attn run";
  run_opts o = {0};
  o.grad = grad;
  inputs in;
  memset(&in, 0, sizeof in);
  npy_array dout = {0};
  out_file outs[N_OUTS] = {{"--out", NULL, NULL, NULL},   {"--lse", NULL, NULL, NULL},
                           {"--probs", NULL, NULL, NULL}, {"--dq", NULL, NULL, NULL},
                           {"--dk", NULL, NULL, NULL},    {"--dv", NULL, NULL, NULL},
                           {"--dbias", NULL, NULL, NULL}, {"--dsinks", NULL, NULL, NULL}};
  int64_t *kv_len = NULL;
  float *bufs[N_OUTS] = {NULL};
  int rc = cli_parse_run_args(argc, argv, &o, usage);
  if (rc) return rc;
  const char *paths[N_OUTS] = {o.out, o.lse, o.probs, o.dq, o.dk, o.dv, o.dbias, o.dsinks};
  for (int a = 0; a < N_OUTS; a++) {
    outs[a].path = paths[a];
    for (int b = 0; b < a; b++)
      if (outs[a].path && outs[b].path && strcmp(outs[a].path, outs[b].path) == 0)
        return cli_fail(EXIT_BAD_INPUT, "%s and %s name the same file '%s'", outs[b].flag,
                        outs[a].flag, outs[a].path);
  }

  if ((rc = cli_load("--q", o.q, CLI_F32 | CLI_F16, 4, &in.q)) ||
      (rc = cli_load("--k", o.k, CLI_F32 | CLI_F16, 4, &in.k)) ||
      (rc = cli_load("--v", o.v, CLI_F32 | CLI_F16, 4, &in.v)))
    goto done;
  attn_params p;
  if ((rc = cli_configure(&o, &in, &p, &kv_len))) goto done;

  const int64_t B = p.batch, Hq = p.heads_q, Hkv = p.heads_kv, Lq = p.len_q, Lk = p.len_k;
  const int64_t D = p.dim, Dv = p.dim_v;
  const int64_t *bs = in.bias.shape;
  /* tensors of query rows and of key rows: [B, H, L, ·], or packed [1, H, total, ·] */
  const int64_t qn = p.cu_seqlens_q ? 1 : B, ql = p.cu_seqlens_q ? in.q.shape[2] : Lq;
  const int64_t kn = p.cu_seqlens_k ? 1 : B, kl = p.cu_seqlens_k ? in.k.shape[2] : Lk;
  const int64_t shapes[N_OUTS][4] = {{qn, Hq, ql, Dv},
                                     {qn, Hq, ql, 1},
                                     {B, Hq, Lq, Lk},
                                     {qn, Hq, ql, D},
                                     {kn, Hkv, kl, D},
                                     {kn, Hkv, kl, Dv},
                                     {bs[0], bs[1], bs[2], bs[3]},
                                     {Hq, 1, 1, 1}};
  const int ranks[N_OUTS] = {4, 3, 4, 4, 4, 4, 4, 1};
  if (o.dsinks && !o.sinks) {
    rc = cli_fail(EXIT_BAD_INPUT, "--dsinks needs --sinks: there are no sinks to differentiate");
    goto done;
  }
  if (grad) {
    if ((rc = cli_load("--dout", o.dout, CLI_F32, 4, &dout))) goto done;
    if (memcmp(dout.shape, shapes[0], sizeof shapes[0]) != 0) {
      char got[128], want[128];
      cli_shape_str(dout.shape, 4, got, sizeof got);
      cli_shape_str(shapes[0], 4, want, sizeof want);
      rc = cli_fail(EXIT_BAD_INPUT, "--dout %s: shape %s must equal O's [B, Hq, Lq, Dv] = %s",
                    o.dout, got, want);
      goto done;
    }
    attn_strides_packed(p.dbias_stride, bs[1], bs[2], bs[3]);
  }
  for (int i = 0; i < N_OUTS; i++) {
    const int needed = outs[i].path || (grad && i < 2); /* grad needs O and LSE */
    if (!needed) continue;
    bufs[i] = cli_alloc_floats(shapes[i][0], shapes[i][1], shapes[i][2], shapes[i][3]);
    if (!bufs[i]) {
      rc = cli_fail(EXIT_RUNTIME, "%s: cannot allocate the output", outs[i].flag);
      goto done;
    }
  }
  for (int i = 0; i < N_OUTS; i++)
    if (outs[i].path && (rc = cli_out_open(&outs[i]))) goto done;

  attn_status st = attn_forward(&p, in.q.data, in.k.data, in.v.data, bufs[0], bufs[1], bufs[2]);
  if (st == ATTN_STATUS_OK && grad)
    st = attn_backward(&p, in.q.data, in.k.data, in.v.data, bufs[0], bufs[1], dout.data, bufs[3],
                       bufs[4], bufs[5], bufs[6]);
  if (st == ATTN_STATUS_OK && grad && bufs[7])
    st = attn_backward_sinks(&p, bufs[0], bufs[1], dout.data, bufs[7]);
  if (st != ATTN_STATUS_OK) {
    int code = (st == ATTN_STATUS_OUT_OF_MEMORY || st == ATTN_STATUS_INTERNAL) ? EXIT_RUNTIME
                                                                               : EXIT_BAD_INPUT;
    rc = cli_fail(code, "%s (%s)", attn_last_error(), attn_status_str(st));
    goto done;
  }
  if ((rc = cli_outputs_commit(outs, N_OUTS, bufs, ranks, shapes))) goto done;
  rc = 0;
done:
  for (int i = 0; i < N_OUTS; i++) {
    cli_out_discard(&outs[i]);
    free(bufs[i]);
  }
  free(kv_len);
  npy_free(&dout);
  cli_inputs_free(&in);
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
  /* ATTN_ISA naming a kernel that is unknown or cannot run makes every AUTO call fail: say so */
  const char *isa = getenv("ATTN_ISA");
  const attn_kernel named = isa && *isa ? attn_kernel_from_name(isa) : ATTN_KERNEL_AUTO;
  if (named == ATTN_KERNEL_COUNT_ || !attn_kernel_supported(named))
    printf("\nchosen (auto): none: ATTN_ISA=%s %s, so calls with kernel auto fail\n", isa,
           named == ATTN_KERNEL_COUNT_ ? "is not a kernel name" : "cannot run on this CPU");
  else
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
  return cli_fail(EXIT_BAD_INPUT, "unknown command '%s' (run, grad, info, bench, --help)", argv[1]);
}
