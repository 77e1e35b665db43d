/*
 * test_ring.c — ring attention under MPI (run by ctest as mpirun --oversubscribe -np 1, 2, 3, 4):
 * every rank builds the same global problem, runs attn_ring_forward/backward on its shard, and
 * holds its rows to the single-process result: the fp64 oracle for the forward (under the
 * forward's tolerance rule, with plain fp32 baselines) and the ref backward for the gradients
 * (with attn_backward on the whole problem as the baseline); then every error must reach every
 * rank without a hang.
 */
#include "attn_ring.h"
#include "harness.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int rank, ranks;

static void *xcalloc(size_t n, size_t size) {
  void *p = calloc(n ? n : 1, size);
  if (!p) exit(3);
  return p;
}

/* Copies the rows of this rank's shard out of a packed global [B, H, L, n] array of elements of
 * `elem` bytes. */
static void *shard_of(const void *global, size_t elem, int64_t B, int64_t H, int64_t L, int64_t n,
                      int64_t lloc, int causal) {
  char *out = xcalloc((size_t)(B * H * lloc * n), elem);
  const size_t row = elem * (size_t)n;
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t i = 0; i < lloc; i++) {
        const int64_t g = attn_ring_shard_rows(lloc, rank, ranks, causal, i);
        memcpy(out + (size_t)((b * H + h) * lloc + i) * row,
               (const char *)global + (size_t)((b * H + h) * L + g) * row, row);
      }
  return out;
}
static float *shard(const float *global, int64_t B, int64_t H, int64_t L, int64_t n, int64_t lloc,
                    int causal) {
  return shard_of(global, sizeof(float), B, H, L, n, lloc, causal);
}
static double *shard_d(const double *global, int64_t B, int64_t H, int64_t L, int64_t n,
                       int64_t lloc, int causal) {
  return shard_of(global, sizeof(double), B, H, L, n, lloc, causal);
}

static int compare(const char *label, const char *what, const float *got, const double *ref,
                   const float *base, size_t n, double factor, double max_factor) {
  const float *bases[1] = {base};
  return t_compare(label, what, got, ref, bases, 1, n, factor, max_factor);
}

/* One configuration: global [B, Hq/Hkv, L = lloc·ranks, D/Dv], forward and backward. */
static void check_ring(tspec s, int64_t lloc) {
  s.Lq = s.Lk = lloc * ranks;
  s.layout = LAYOUT_BHLD;
  tcase c;
  tcase_make(&c, &s); /* the same seed on every rank: the same global problem */
  const int64_t B = s.B, Hq = s.Hq, Hkv = s.Hkv, L = s.Lq, D = s.D, Dv = s.Dv;
  char label[512];
  snprintf(label, sizeof label, "ranks=%d lloc=%lld ", ranks, (long long)lloc);
  tcase_label(&c, label + strlen(label), sizeof label - strlen(label));

  /* single process: oracle, fp32 baseline, and the whole backward */
  const size_t no = (size_t)(B * Hq * L * Dv), nl = (size_t)(B * Hq * L);
  double *ro = xcalloc(no, 8), *rl = xcalloc(nl, 8);
  float *bo = xcalloc(no, 4), *bl = xcalloc(nl, 4);
  const float *q = tbuf_f32(&c.q), *k = tbuf_f32(&c.k), *v = tbuf_f32(&c.v);
  oracle_forward(&c.p, q, k, v, ro, rl, NULL);
  baseline_forward(&c.p, 2, q, k, v, bo, bl, NULL);
  tgrad g;
  tgrad_make(&g, &c, 0, ATTN_KERNEL_AUTO, s.seed); /* layout BHLD: packed */
  tgrads whole = t_backward_gather(&c, &g, ATTN_KERNEL_AUTO, 1);
  tgrads ref = t_backward_gather(&c, &g, ATTN_KERNEL_REF, 1);

  /* this rank's shard */
  attn_params p;
  attn_params_init(&p, B, Hq, Hkv, lloc, lloc, D, Dv);
  p.causal = s.causal, p.align = s.align, p.kv_len = c.p.kv_len, p.softcap = s.softcap;
  p.has_scale = s.has_scale, p.scale = s.scale, p.threads = 1;
  float *ql = shard(q, B, Hq, L, D, lloc, s.causal), *kl = shard(k, B, Hkv, L, D, lloc, s.causal);
  float *vl = shard(v, B, Hkv, L, Dv, lloc, s.causal);
  float *ol = xcalloc((size_t)(B * Hq * lloc * Dv), 4), *lsel = xcalloc((size_t)(B * Hq * lloc), 4);
  attn_status st = attn_ring_forward(&p, MPI_COMM_WORLD, ql, kl, vl, ol, lsel);
  CHECKF(st == ATTN_STATUS_OK, "ring forward: %s\n  case: %s", attn_ring_last_error(), label);
  if (st == ATTN_STATUS_OK) {
    double *rol = shard_d(ro, B, Hq, L, Dv, lloc, s.causal),
           *rll = shard_d(rl, B, Hq, L, 1, lloc, s.causal);
    float *bol = shard(bo, B, Hq, L, Dv, lloc, s.causal),
          *bll = shard(bl, B, Hq, L, 1, lloc, s.causal);
    const size_t nol = (size_t)(B * Hq * lloc * Dv), nll = (size_t)(B * Hq * lloc);
    CHECKF(compare(label, "O(ring)", ol, rol, bol, nol, TOL_FACTOR_FWD, TOL_MAX_FACTOR) &&
               compare(label, "LSE(ring)", lsel, rll, bll, nll, TOL_FACTOR_FWD, TOL_MAX_FACTOR),
           "ring forward equals the single-process oracle on rank %d", rank);
    free(rol), free(rll), free(bol), free(bll);

    /* backward from the ring's own O and LSE */
    float *dout = xcalloc((size_t)tbuf_count(&g.dout), 4);
    tbuf_gather(&g.dout, dout);
    float *dol = shard(dout, B, Hq, L, Dv, lloc, s.causal);
    float *dql = xcalloc((size_t)(B * Hq * lloc * D), 4),
          *dkl = xcalloc((size_t)(B * Hkv * lloc * D), 4);
    float *dvl = xcalloc((size_t)(B * Hkv * lloc * Dv), 4);
    st = attn_ring_backward(&p, MPI_COMM_WORLD, ql, kl, vl, ol, lsel, dol, dql, dkl, dvl);
    CHECKF(st == ATTN_STATUS_OK, "ring backward: %s\n  case: %s", attn_ring_last_error(), label);
    if (st == ATTN_STATUS_OK) {
      const struct {
        const char *name;
        const float *got, *base, *r;
        int64_t H, n;
      } parts[] = {{"dQ(ring)", dql, whole.dq, ref.dq, Hq, D},
                   {"dK(ring)", dkl, whole.dk, ref.dk, Hkv, D},
                   {"dV(ring)", dvl, whole.dv, ref.dv, Hkv, Dv}};
      for (int i = 0; i < 3; i++) {
        const size_t n = (size_t)(B * parts[i].H * L * parts[i].n);
        double *r = xcalloc(n, 8);
        for (size_t j = 0; j < n; j++)
          r[j] = parts[i].r[j];
        double *rs = shard_d(r, B, parts[i].H, L, parts[i].n, lloc, s.causal);
        float *bs = shard(parts[i].base, B, parts[i].H, L, parts[i].n, lloc, s.causal);
        CHECKF(compare(label, parts[i].name, parts[i].got, rs, bs,
                       (size_t)(B * parts[i].H * lloc * parts[i].n), TOL_FACTOR_BWD,
                       TOL_MAX_FACTOR_BWD),
               "ring backward equals the single-process backward on rank %d (%s)", rank,
               parts[i].name);
        free(r), free(rs), free(bs);
      }
    }
    free(dout), free(dol), free(dql), free(dkl), free(dvl);
  }
  free(ql), free(kl), free(vl), free(ol), free(lsel), free(ro), free(rl), free(bo), free(bl);
  tgrads_free(&whole), tgrads_free(&ref);
  tgrad_free(&g);
  tcase_free(&c);
}

/* Errors reach every rank, with the same status, and nothing hangs. */
static void check_errors(void) {
  enum { B = 1, H = 2, LL = 6, D = 4 };
  static float q[B * H * LL * D], o[B * H * LL * D], lse[B * H * LL];
  attn_params p;
  attn_params_init(&p, B, H, H, LL, LL, D, D);
  /* a mismatched shard: rank 0 holds a different length */
  if (rank == 0 && ranks > 1) p.len_q = p.len_k = LL - 2;
  attn_status st = attn_ring_forward(&p, MPI_COMM_WORLD, q, q, q, o, lse);
  if (ranks > 1)
    CHECKF(st == ATTN_STATUS_INVALID_ARGUMENT && strstr(attn_ring_last_error(), "len_q"),
           "a mismatched shard fails on rank %d: %s", rank, attn_ring_last_error());
  attn_params_init(&p, B, H, H, LL, LL, D, D);
  /* one rank with an invalid argument: every rank fails */
  if (rank == ranks - 1) p.threads = -1;
  st = attn_ring_forward(&p, MPI_COMM_WORLD, q, q, q, o, lse);
  CHECKF(st == ATTN_STATUS_INVALID_ARGUMENT, "one rank's bad argument fails rank %d too: %s", rank,
         attn_ring_last_error());
  /* unsupported across shards */
  attn_params_init(&p, B, H, H, LL, LL, D, D);
  p.window_left = 2;
  st = attn_ring_forward(&p, MPI_COMM_WORLD, q, q, q, o, lse);
  CHECKF(st == ATTN_STATUS_UNSUPPORTED && strstr(attn_ring_last_error(), "window"),
         "window is unsupported across shards: %s", attn_ring_last_error());
  p.window_left = -1, p.k_dtype = ATTN_DTYPE_BF16;
  st = attn_ring_forward(&p, MPI_COMM_WORLD, q, q, q, o, lse);
  CHECKF(st == ATTN_STATUS_UNSUPPORTED && strstr(attn_ring_last_error(), "k_dtype"),
         "16-bit K is unsupported across shards: %s", attn_ring_last_error());
  p.k_dtype = ATTN_DTYPE_F32;
  const float sinks[H] = {0.5f, -1.0f};
  p.sinks = sinks;
  st = attn_ring_forward(&p, MPI_COMM_WORLD, q, q, q, o, lse);
  CHECKF(st == ATTN_STATUS_UNSUPPORTED && strstr(attn_ring_last_error(), "sinks"),
         "sinks are unsupported across shards: %s", attn_ring_last_error());
  p.sinks = NULL;
  const int32_t table[1] = {0};
  p.block_table = table, p.page_size = LL, p.num_pages = 1;
  st = attn_ring_forward(&p, MPI_COMM_WORLD, q, q, q, o, lse);
  CHECKF(st == ATTN_STATUS_UNSUPPORTED && strstr(attn_ring_last_error(), "block_table"),
         "paged K and V are unsupported across shards: %s", attn_ring_last_error());
  p.block_table = NULL;
  const int64_t cu[B + 1] = {0};
  p.cu_seqlens_q = cu;
  st = attn_ring_forward(&p, MPI_COMM_WORLD, q, q, q, o, lse);
  CHECKF(st == ATTN_STATUS_UNSUPPORTED && strstr(attn_ring_last_error(), "cu_seqlens_q"),
         "packed sequences are unsupported across shards: %s", attn_ring_last_error());
  p.cu_seqlens_q = NULL, p.dropout = 0.1f;
  st = attn_ring_forward(&p, MPI_COMM_WORLD, q, q, q, o, lse);
  CHECKF(st == ATTN_STATUS_UNSUPPORTED && strstr(attn_ring_last_error(), "dropout"),
         "dropout is unsupported across shards: %s", attn_ring_last_error());
  p.dropout = 0.0f, p.causal = 1, p.len_q = p.len_k = LL - 1;
  st = attn_ring_forward(&p, MPI_COMM_WORLD, q, q, q, o, lse);
  CHECKF(st == ATTN_STATUS_INVALID_ARGUMENT && strstr(attn_ring_last_error(), "even"),
         "causal needs an even local length: %s", attn_ring_last_error());
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  if (rank == 0) printf("test_ring: %d ranks\n", ranks);
  tspec s = tspec_shape(2, 4, 2, 0, 0, 16, 12);
  s.seed = 5;
  check_ring(s, 38); /* non-causal, GQA, Dv != D */
  s.causal = 1;
  check_ring(s, 38); /* zig-zag causal */
  s.causal = 1, s.kv_len = 1, s.align = ATTN_ALIGN_TOP_LEFT;
  check_ring(s, 20); /* padded batch, top-left */
  s.align = ATTN_ALIGN_BOTTOM_RIGHT, s.softcap = 3.0f;
  check_ring(s, 20); /* bottom-right: the diagonal moves across chunks */
  s.causal = 0, s.kv_len = 1, s.softcap = 0, s.has_scale = 1, s.scale = 0.3f;
  check_ring(s, 17);
  tspec t = tspec_shape(1, 2, 2, 0, 0, 64, 64); /* blocks larger than the kernels' tiles */
  t.causal = 1, t.seed = 9;
  check_ring(t, 150);
  check_errors();
  int failures = t_failures, total = 0;
  MPI_Allreduce(&failures, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  int rc = t_finish("test_ring");
  if (rank == 0 && total) printf("test_ring: %d failures over all ranks\n", total);
  MPI_Finalize();
  return total ? 1 : rc;
}
