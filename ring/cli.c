/*
 * cli.c — `attn-ring`: the attn run / attn grad command over MPI ranks.
 *
 *   mpirun -np N attn-ring run  --q Q.npy --k K.npy --v V.npy --out O.npy [options of attn run]
 *   mpirun -np N attn-ring grad --q ... --dout DO.npy --dq DQ.npy --dk DK.npy --dv DV.npy [...]
 *   mpirun -np N attn-ring bench [--shape B,H,L,D[,causal]] [--reps N] [--threads N]
 *
 * Same flags and output files as `attn run` / `attn grad`, so anything attn computes can be checked
 * against it. Rank 0 reads the inputs, checks them, scatters each rank's shard of the sequence
 * (attn_ring_shard_rows), and gathers and writes the outputs (temporary files renamed at the
 * end); the other ranks are silent. Self-attention only (Lq = Lk = L, L a multiple of N, and of 2N
 * for --causal); --mask, --bias, --window, --alibi, --sinks, --probs, --dbias and --dsinks are
 * refused (exit 2).
 * Exit status as attn: 0, 2 bad input (nothing written), 1 runtime failure; the same on every rank.
 */
#include "attn_ring.h"
#include "runargs.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int rank, ranks;

static void usage(FILE *f) {
  fputs("usage: mpirun -np N attn-ring run|grad [the options of attn run / attn grad]\n"
        "       mpirun -np N attn-ring bench [--shape B,H,L,D[,causal]] [--reps N] [--threads N]\n"
        "  self-attention over N ranks: Lq = Lk = L, L a multiple of N (of 2N with --causal);\n"
        "  --mask, --bias, --window, --alibi, --sinks, --probs, --dbias and --dsinks are not\n"
        "  available.\n",
        f);
}

/* Every rank learns rank 0's verdict. */
static int agree_rc(int rc) {
  MPI_Bcast(&rc, 1, MPI_INT, 0, MPI_COMM_WORLD);
  return rc;
}

/* The problem as rank 0 broadcasts it. */
enum {
  H_B,
  H_HQ,
  H_HKV,
  H_L,
  H_D,
  H_DV,
  H_CAUSAL,
  H_ALIGN,
  H_HAS_SCALE,
  H_THREADS,
  H_KERNEL,
  H_KVLEN,
  N_HEADER
};

/* Rows of one shard ([B, H, lloc, n] packed) from or into a global packed [B, H, L, n] array. */
static void shard_copy(float *local, float *global, int64_t B, int64_t H, int64_t L, int64_t n,
                       int r, int causal, int to_local) {
  const int64_t lloc = L / ranks;
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t i = 0; i < lloc; i++) {
        float *l = local + ((b * H + h) * lloc + i) * n;
        float *g = global + ((b * H + h) * L + attn_ring_shard_rows(lloc, r, ranks, causal, i)) * n;
        if (to_local)
          memcpy(l, g, sizeof(float) * (size_t)n);
        else
          memcpy(g, l, sizeof(float) * (size_t)n);
      }
}

/* Rank 0 sends every rank its shard of a global array; returns this rank's shard (malloc'ed). */
static float *scatter(float *global, int64_t B, int64_t H, int64_t L, int64_t n, int causal) {
  const size_t count = (size_t)(B * H * (L / ranks) * n);
  float *local = malloc(sizeof(float) * (count + 1));
  if (!local) MPI_Abort(MPI_COMM_WORLD, EXIT_RUNTIME);
  if (rank == 0) {
    for (int r = ranks - 1; r >= 0; r--) {
      shard_copy(local, global, B, H, L, n, r, causal, 1);
      if (r) MPI_Send(local, (int)count, MPI_FLOAT, r, 1, MPI_COMM_WORLD);
    }
  } else {
    MPI_Recv(local, (int)count, MPI_FLOAT, 0, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
  }
  return local;
}

/* The reverse: rank 0 collects every shard into global. */
static void gather(const float *local, float *global, int64_t B, int64_t H, int64_t L, int64_t n,
                   int causal) {
  const size_t count = (size_t)(B * H * (L / ranks) * n);
  if (rank != 0) {
    MPI_Send(local, (int)count, MPI_FLOAT, 0, 2, MPI_COMM_WORLD);
    return;
  }
  float *buf = malloc(sizeof(float) * (count + 1));
  if (!buf) MPI_Abort(MPI_COMM_WORLD, EXIT_RUNTIME);
  for (int r = 0; r < ranks; r++) {
    if (r)
      MPI_Recv(buf, (int)count, MPI_FLOAT, r, 2, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    else
      memcpy(buf, local, sizeof(float) * count);
    shard_copy(buf, global, B, H, L, n, r, causal, 0);
  }
  free(buf);
}

/* Rank 0: loads and checks everything, opens the outputs; fills the header. */
static int prepare(const run_opts *o, inputs *in, npy_array *dout, attn_params *p, int64_t **kv_len,
                   out_file *outs, int64_t h[N_HEADER]) {
  int rc;
  if ((rc = cli_load("--q", o->q, CLI_F32, 4, &in->q)) ||
      (rc = cli_load("--k", o->k, CLI_F32, 4, &in->k)) ||
      (rc = cli_load("--v", o->v, CLI_F32, 4, &in->v)) || (rc = cli_configure(o, in, p, kv_len)))
    return rc;
  const char *refused[][2] = {{"--mask", o->mask},
                              {"--bias", o->bias},
                              {"--window", o->window},
                              {"--alibi", o->alibi},
                              {"--probs", o->probs},
                              {"--dbias", o->dbias},
                              {"--sinks", o->sinks},
                              {"--dsinks", o->dsinks},
                              {"--q-len", o->q_len},
                              {"--cu-seqlens-q", o->cu_seqlens_q},
                              {"--cu-seqlens-k", o->cu_seqlens_k},
                              {"--dropout", o->dropout}};
  for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++)
    if (refused[i][1])
      return cli_fail(EXIT_BAD_INPUT,
                      "%s is not available across ranks (per-pair data, key positions or the "
                      "O(L^2) weights a shard does not see)",
                      refused[i][0]);
  if (p->len_q != p->len_k)
    return cli_fail(EXIT_BAD_INPUT, "self-attention only: Lq (%lld) must equal Lk (%lld)",
                    (long long)p->len_q, (long long)p->len_k);
  const int64_t per = p->causal ? 2 * (int64_t)ranks : ranks;
  if (p->len_q % per)
    return cli_fail(EXIT_BAD_INPUT, "the length L (%lld) must be a multiple of %lld (%s%d ranks)",
                    (long long)p->len_q, (long long)per, p->causal ? "2 x " : "", ranks);
  if (o->grad) {
    if ((rc = cli_load("--dout", o->dout, CLI_F32, 4, dout))) return rc;
    const int64_t want[4] = {p->batch, p->heads_q, p->len_q, p->dim_v};
    if (memcmp(dout->shape, want, sizeof want) != 0) {
      char got[128], w[128];
      cli_shape_str(dout->shape, 4, got, sizeof got);
      cli_shape_str(want, 4, w, sizeof w);
      return cli_fail(EXIT_BAD_INPUT, "--dout %s: shape %s must equal O's [B, Hq, Lq, Dv] = %s",
                      o->dout, got, w);
    }
  }
  for (int i = 0; i < 5; i++)
    if (outs[i].path && (rc = cli_out_open(&outs[i]))) return rc;
  const int64_t v[N_HEADER] = {p->batch,     p->heads_q, p->heads_kv, p->len_q,
                               p->dim,       p->dim_v,   p->causal,   p->align,
                               p->has_scale, p->threads, p->kernel,   p->kv_len != NULL};
  memcpy(h, v, sizeof v);
  return 0;
}

static int run(int argc, char **argv, int grad) {
  cli_command = grad ? "attn-ring grad" : "attn-ring run";
  run_opts o = {0};
  o.grad = grad;
  inputs in;
  memset(&in, 0, sizeof in);
  npy_array dout_in = {0};
  attn_params p;
  int64_t *kv_len = NULL, h[N_HEADER] = {0};
  float scale_cap[2] = {0};
  out_file outs[5] = {{"--out", o.out, NULL, NULL},
                      {"--lse", NULL, NULL, NULL},
                      {"--dq", NULL, NULL, NULL},
                      {"--dk", NULL, NULL, NULL},
                      {"--dv", NULL, NULL, NULL}};
  int rc = cli_parse_run_args(argc, argv, &o, usage);
  outs[0].path = o.out, outs[1].path = o.lse, outs[2].path = o.dq, outs[3].path = o.dk;
  outs[4].path = o.dv;
  if (rank == 0 && !rc) rc = prepare(&o, &in, &dout_in, &p, &kv_len, outs, h);
  if (rank == 0 && !rc) scale_cap[0] = p.scale, scale_cap[1] = p.softcap;
  if ((rc = agree_rc(rc))) goto done;
  MPI_Bcast(h, N_HEADER, MPI_INT64_T, 0, MPI_COMM_WORLD);
  MPI_Bcast(scale_cap, 2, MPI_FLOAT, 0, MPI_COMM_WORLD);
  const int64_t B = h[H_B], Hq = h[H_HQ], Hkv = h[H_HKV], L = h[H_L], D = h[H_D], Dv = h[H_DV];
  const int causal = (int)h[H_CAUSAL];
  if (rank != 0) kv_len = h[H_KVLEN] ? malloc(sizeof(int64_t) * (size_t)(B + 1)) : NULL;
  if (h[H_KVLEN]) MPI_Bcast(kv_len, (int)B, MPI_INT64_T, 0, MPI_COMM_WORLD);

  attn_params lp; /* this rank's shard, packed */
  attn_params_init(&lp, B, Hq, Hkv, L / ranks, L / ranks, D, Dv);
  lp.causal = causal, lp.align = (attn_align)h[H_ALIGN], lp.kv_len = kv_len;
  lp.has_scale = (int)h[H_HAS_SCALE], lp.scale = scale_cap[0], lp.softcap = scale_cap[1];
  lp.threads = (int)h[H_THREADS], lp.kernel = (attn_kernel)h[H_KERNEL];
  float *q = scatter(in.q.data, B, Hq, L, D, causal), *k = scatter(in.k.data, B, Hkv, L, D, causal);
  float *v = scatter(in.v.data, B, Hkv, L, Dv, causal);
  float *d_o = grad ? scatter(dout_in.data, B, Hq, L, Dv, causal) : NULL;
  const int64_t lloc = L / ranks;
  float *o_l = cli_alloc_floats(B, Hq, lloc, Dv), *lse_l = cli_alloc_floats(B, Hq, lloc, 1);
  float *dq_l = grad ? cli_alloc_floats(B, Hq, lloc, D) : NULL;
  float *dk_l = grad ? cli_alloc_floats(B, Hkv, lloc, D) : NULL;
  float *dv_l = grad ? cli_alloc_floats(B, Hkv, lloc, Dv) : NULL;
  attn_status st = attn_ring_forward(&lp, MPI_COMM_WORLD, q, k, v, o_l, lse_l);
  if (st == ATTN_STATUS_OK && grad)
    st = attn_ring_backward(&lp, MPI_COMM_WORLD, q, k, v, o_l, lse_l, d_o, dq_l, dk_l, dv_l);
  if (st != ATTN_STATUS_OK) /* the ring agrees on failures: every rank is here */
    rc = cli_fail(st == ATTN_STATUS_OUT_OF_MEMORY || st == ATTN_STATUS_INTERNAL ? EXIT_RUNTIME
                                                                                : EXIT_BAD_INPUT,
                  "%s (%s)", attn_ring_last_error(), attn_status_str(st));
  if (!rc) {
    const int64_t shapes[5][4] = {
        {B, Hq, L, Dv}, {B, Hq, L, 1}, {B, Hq, L, D}, {B, Hkv, L, D}, {B, Hkv, L, Dv}};
    const int64_t heads[5] = {Hq, Hq, Hq, Hkv, Hkv}, widths[5] = {Dv, 1, D, D, Dv};
    float *local[5] = {o_l, lse_l, dq_l, dk_l, dv_l}, *global[5] = {NULL};
    const int n_out = grad ? 5 : 2, out_ranks[5] = {4, 3, 4, 4, 4};
    for (int i = 0; i < n_out; i++) {
      if (rank == 0)
        global[i] = cli_alloc_floats(shapes[i][0], shapes[i][1], shapes[i][2], shapes[i][3]);
      if (rank == 0 && !global[i]) MPI_Abort(MPI_COMM_WORLD, EXIT_RUNTIME);
      gather(local[i], global[i], B, heads[i], L, widths[i], causal);
    }
    if (rank == 0) rc = cli_outputs_commit(outs, n_out, global, out_ranks, shapes);
    for (int i = 0; i < n_out; i++)
      free(global[i]);
    rc = agree_rc(rc);
  }
  free(q), free(k), free(v), free(d_o), free(o_l), free(lse_l), free(dq_l), free(dk_l), free(dv_l);
done:
  for (int i = 0; i < 5; i++)
    cli_out_discard(&outs[i]);
  free(kv_len);
  npy_free(&dout_in);
  cli_inputs_free(&in);
  return rc;
}

/* `attn-ring bench --shape B,H,L,D[,causal] [--reps N] [--threads N]`: every rank fills its own
 * shard with pseudo-random data and times attn_ring_forward (and backward) over the ring, after a
 * barrier; prints the slowest rank's median, the per-step compute estimate (the same shard
 * problem run alone on one rank's threads) and the bytes each rank sends per step. */
static int bench(int argc, char **argv) {
  cli_command = "attn-ring bench";
  long long B = 1, H = 2, L = 8192, D = 64;
  int causal = 0, reps = 3, threads = 0;
  for (int i = 0; i < argc; i++) {
    int64_t v[5];
    if (strcmp(argv[i], "--shape") == 0 && i + 1 < argc) {
      const char *arg = argv[++i];
      if (cli_parse_shape(arg, v, 4, &causal) != 0)
        return cli_fail(EXIT_BAD_INPUT, "--shape '%s' must be B,H,L,D[,causal]", arg);
      B = v[0], H = v[1], L = v[2], D = v[3];
    } else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc) {
      if (cli_parse_i64(argv[++i], &v[4]) != 0 || v[4] < 1 || v[4] > 100)
        return cli_fail(EXIT_BAD_INPUT, "--reps '%s' must be 1 to 100", argv[i]);
      reps = (int)v[4];
    } else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
      if (cli_parse_i64(argv[++i], &v[4]) != 0 || v[4] < 0 || v[4] > ATTN_MAX_THREADS)
        return cli_fail(EXIT_BAD_INPUT, "--threads '%s' must be 0 to %d", argv[i],
                        ATTN_MAX_THREADS);
      threads = (int)v[4];
    } else {
      return cli_fail(EXIT_BAD_INPUT, "unknown option '%s'", argv[i]);
    }
  }
  if (L % (causal ? 2 * ranks : ranks))
    return cli_fail(EXIT_BAD_INPUT, "L (%lld) must be a multiple of %d", L,
                    causal ? 2 * ranks : ranks);
  const int64_t lloc = L / ranks;
  attn_params p;
  attn_params_init(&p, B, H, H, lloc, lloc, D, D);
  p.causal = causal, p.threads = threads;
  const size_t n = (size_t)(B * H * lloc * D);
  float *q = malloc(4 * n + 4), *k = malloc(4 * n + 4), *v = malloc(4 * n + 4),
        *o = malloc(4 * n + 4);
  float *lse = malloc(4 * (size_t)(B * H * lloc) + 4), *dq = malloc(4 * n + 4);
  float *dk = malloc(4 * n + 4), *dv = malloc(4 * n + 4);
  if (!q || !k || !v || !o || !lse || !dq || !dk || !dv) MPI_Abort(MPI_COMM_WORLD, EXIT_RUNTIME);
  uint64_t st = 0x9e3779b97f4a7c15ull * (uint64_t)(rank + 1);
  for (size_t i = 0; i < n; i++) {
    st = st * 6364136223846793005ull + 1442695040888963407ull;
    q[i] = k[i] = v[i] = (float)((double)(st >> 40) / 16777216.0 - 0.5);
  }
  double tf[100], tb[100];
  for (int r = -1; r < reps; r++) { /* r = −1: warm-up */
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    attn_status s1 = attn_ring_forward(&p, MPI_COMM_WORLD, q, k, v, o, lse);
    double t1 = MPI_Wtime();
    attn_status s2 = attn_ring_backward(&p, MPI_COMM_WORLD, q, k, v, o, lse, o, dq, dk, dv);
    double t2 = MPI_Wtime();
    if (s1 != ATTN_STATUS_OK || s2 != ATTN_STATUS_OK)
      return cli_fail(EXIT_RUNTIME, "%s", attn_ring_last_error());
    double local[2] = {t1 - t0, t2 - t1}, worst[2];
    MPI_Allreduce(local, worst, 2, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    if (r >= 0) tf[r] = worst[0], tb[r] = worst[1];
  }
  for (int a = 1; a < reps; a++) /* insertion sort for the medians */
    for (int b = a; b > 0 && tf[b] < tf[b - 1]; b--) {
      double t = tf[b];
      tf[b] = tf[b - 1], tf[b - 1] = t;
    }
  for (int a = 1; a < reps; a++)
    for (int b = a; b > 0 && tb[b] < tb[b - 1]; b--) {
      double t = tb[b];
      tb[b] = tb[b - 1], tb[b - 1] = t;
    }
  if (rank == 0) {
    const double pairs = causal ? (double)L * (double)(L + 1) / 2 : (double)L * (double)L;
    const double flops = 4.0 * (double)D * pairs * (double)(B * H);
    printf("ranks %d, threads per rank %d, B=%lld H=%lld L=%lld D=%lld%s, local rows %lld\n", ranks,
           threads, B, H, L, D, causal ? " causal" : "", (long long)lloc);
    printf("forward  %9.3f ms  %7.1f GFLOP/s total\n", tf[reps / 2] * 1e3,
           flops / tf[reps / 2] * 1e-9);
    printf("backward %9.3f ms  %7.1f GFLOP/s total (2.5x forward FLOPs)\n", tb[reps / 2] * 1e3,
           2.5 * flops / tb[reps / 2] * 1e-9);
    printf("bytes sent per rank per step: forward %.0f (K and V), backward %.0f (K, V, dK, dV); "
           "steps %d\n",
           8.0 * (double)n, 16.0 * (double)n, ranks);
  }
  free(q), free(k), free(v), free(o), free(lse), free(dq), free(dk), free(dv);
  return 0;
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  if (rank != 0 && !freopen("/dev/null", "w", stderr)) return EXIT_RUNTIME; /* rank 0 speaks */
  int rc;
  if (argc >= 2 && strcmp(argv[1], "run") == 0)
    rc = run(argc - 2, argv + 2, 0);
  else if (argc >= 2 && strcmp(argv[1], "grad") == 0)
    rc = run(argc - 2, argv + 2, 1);
  else if (argc >= 2 && strcmp(argv[1], "bench") == 0)
    rc = bench(argc - 2, argv + 2);
  else if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "help") == 0)) {
    if (rank == 0) usage(stdout);
    rc = 0;
  } else {
    if (rank == 0) usage(stderr);
    rc = EXIT_BAD_INPUT;
  }
  MPI_Finalize();
  return rc;
}
