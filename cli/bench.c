/*
 * bench.c — `attn bench`: times attn_forward on a list of shapes and reports, per shape, the median
 * and minimum time after a warm-up, GFLOP/s (2·(D+Dv) FLOPs per visible (query, key) pair: causal
 * counts only visible pairs), the percentage of the machine's fp32 FMA peak measured in the same
 * run on the same threads, the scratch memory the call allocates, and a check of sampled rows
 * against the ref kernel. Decode shapes (Lq ≤ 16) also report GB/s of K/V read against the
 * measured memory read bandwidth.
 *
 * With --backward it times attn_backward instead (after one forward for O and LSE), counting
 * 2.5× the forward's FLOPs (five matrix products instead of two: S and dP = dO·Vᵀ recomputed, dV,
 * dK, dQ), and checks sampled rows of dQ against the ref kernel.
 *
 *   attn bench [--shape B,Hq,Hkv,Lq,Lk,D[,causal]]... [--threads N] [--kernel NAME] [--reps N]
 *              [--min-time S] [--kv-dtype f32|f16|bf16|f8e4m3|f8e5m2] [--kv-layout bhld|blhd]
 *              [--page-size N] [--csv] [--long] [--quick] [--backward] [--no-machine] [--alloc]
 *
 * Each shape is timed at least --reps times (5) and until its timed calls add up to --min-time
 * seconds (0.25; at most 1000 calls): a shape of 3 ms gets ~80 calls, so its median does not hang
 * on what a shared machine's neighbour did during 15 ms, while a long shape keeps its 5.
 *
 * --kv-dtype stores K and V in that type (values rounded from the same random fp32 data; the check
 * runs ref on the rounded values widened back, so it compares like with like); GB/s then counts
 * the 16- or 8-bit bytes read.
 *
 * --kv-layout blhd stores K and V as [B, Lk, Hkv, D] in memory (FlashAttention's KV-cache layout)
 * instead of [B, Hkv, Lk, D].
 *
 * --page-size N (forward only) passes K and V as a paged KV cache: pools of pages of N keys, each
 * sequence's pages in a shuffled order (a fixed permutation), through p.block_table; the pages are
 * [page, head, slot, dim], or with --kv-layout blhd [page, slot, head, dim]; the check runs ref on
 * the unpaged tensors.
 *
 * The timed calls share one workspace (attn_params.workspace, sized by the scratch query), as a
 * caller that calls again and again would keep one; --alloc times calls that allocate their own
 * extra memory instead (a fresh allocation's page faults are part of such a call's time).
 *
 * --no-machine skips the peak, register-block and bandwidth measurements (their columns read 0):
 * for callers that only want the times, such as bench/peers.py's alternating rounds.
 */
#include "attn.h"
#include "machine.h"
#include "runargs.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct shape {
  int64_t B, Hq, Hkv, Lq, Lk, D;
  int causal;
} shape;

/* The goals' shapes, then the BERT encoder's attention (models/bert: a batch of 32 sentences of
 * 128 tokens, 12 heads of 32 — short keys, many small work items), decode (one query per head of
 * a GQA group against a 32k cache) and one head's chunk of 64 queries against a 32k cache (few
 * work items: the keys are split). */
static const shape default_shapes[] = {
    {1, 2, 2, 1024, 1024, 64, 0},  {1, 2, 2, 2048, 2048, 64, 0},  {1, 2, 2, 4096, 4096, 64, 0},
    {1, 2, 2, 8192, 8192, 64, 0},  {1, 2, 2, 2048, 2048, 128, 0}, {1, 2, 2, 4096, 4096, 128, 0},
    {1, 2, 2, 4096, 4096, 64, 1},  {1, 2, 2, 4096, 4096, 128, 1}, {4, 8, 8, 512, 512, 64, 0},
    {32, 12, 12, 128, 128, 32, 0}, {1, 32, 8, 1, 32768, 128, 1},  {1, 1, 1, 64, 32768, 128, 1},
};
static const shape long_shapes[] = {
    {1, 2, 2, 16384, 16384, 64, 0},
    {1, 1, 1, 131072, 131072, 64, 1},
};
static const shape backward_shapes[] = {
    {1, 2, 2, 2048, 2048, 64, 0},  {1, 2, 2, 4096, 4096, 64, 0}, {1, 2, 2, 2048, 2048, 128, 0},
    {1, 2, 2, 4096, 4096, 128, 0}, {1, 2, 2, 4096, 4096, 64, 1}, {1, 2, 2, 4096, 4096, 128, 1},
    {4, 8, 8, 512, 512, 64, 0},
};
static const shape quick_shapes[] = {
    {1, 2, 2, 512, 512, 64, 0},
    {1, 2, 2, 512, 512, 64, 1},
    {1, 8, 2, 1, 4096, 128, 1},
};

/* 100·x/of, or 0 when `of` was not measured (--no-machine). */
static double pct(double x, double of) { return of > 0 ? 100 * x / of : 0.0; }

/* n floats, 64-byte aligned (free with free). */
static float *tensor(size_t n) { return aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64); }

/* The machine's fp32 FMA peak on `threads` threads, GFLOP/s: what its cores can do. A T-thread
 * measurement during which another tenant held a core comes out low (seen: one core's worth for
 * two threads) and would inflate every percentage, so it is at least the one-thread figure times
 * the cores used. */
static double fma_peak(int threads) {
  const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  const double one = machine_fma_peak_gflops(1), all = machine_fma_peak_gflops(threads);
  const double cores = (double)(cpus > 0 && cpus < threads ? cpus : threads);
  return all < one * cores ? one * cores : all;
}

static int parse_shape(const char *s, shape *out) {
  int64_t v[6];
  int causal;
  if (cli_parse_shape(s, v, 6, &causal) != 0) return -1;
  *out = (shape){v[0], v[1], v[2], v[3], v[4], v[5], causal};
  return 0;
}

/* Visible (query, key) pairs of one (batch, head): bottom-right causal, as the bench runs it. */
static double visible_pairs(const shape *s) {
  if (!s->causal) return (double)s->Lq * (double)s->Lk;
  double n = 0;
  for (int64_t i = 0; i < s->Lq; i++) {
    int64_t pos = i + s->Lk - s->Lq;
    n += (double)(pos < 0 ? 0 : (pos + 1 < s->Lk ? pos + 1 : s->Lk));
  }
  return n;
}

static void fill(float *x, size_t n, uint64_t seed) {
  uint64_t st = seed * 0x9e3779b97f4a7c15ull + 1;
  for (size_t i = 0; i < n; i++) {
    st = st * 6364136223846793005ull + 1442695040888963407ull;
    x[i] = (float)((double)(st >> 40) / (double)(1ull << 24) * 2.0 - 1.0);
  }
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static void cpu_model(char *buf, size_t size) {
  snprintf(buf, size, "unknown");
  FILE *f = fopen("/proc/cpuinfo", "r");
  char line[256];
  while (f && fgets(line, sizeof line, f))
    if (strncmp(line, "model name", 10) == 0) {
      char *c = strchr(line, ':');
      if (c) snprintf(buf, size, "%s", c + 2);
      buf[strcspn(buf, "\n")] = '\0';
      break;
    }
  if (f) fclose(f);
}

/* Moves K and V (p's strides, elements of esz bytes) into pools of pages of page_size keys,
 * [num_pages, Hkv, page_size, D] or (blhd) [num_pages, page_size, Hkv, D], each sequence's pages
 * at shuffled places (a fixed permutation), and sets p's paging fields and K, V strides. Returns
 * 0, or −1 out of memory. */
static int page_kv(const shape *s, int64_t page_size, size_t esz, int blhd, const void *k,
                   const void *v, attn_params *p, int32_t **table, void **k_pool, void **v_pool) {
  const int64_t per_seq = (s->Lk + page_size - 1) / page_size, n_pages = s->B * per_seq;
  const size_t page_bytes = (size_t)(s->Hkv * page_size * s->D) * esz;
  *table = malloc(sizeof(int32_t) * (size_t)(n_pages + 1));
  *k_pool = aligned_alloc(64, ((size_t)n_pages * page_bytes + 63) / 64 * 64);
  *v_pool = aligned_alloc(64, ((size_t)n_pages * page_bytes + 63) / 64 * 64);
  if (!*table || !*k_pool || !*v_pool) {
    free(*table), free(*k_pool), free(*v_pool);
    return -1;
  }
  uint64_t x = 0x9e3779b97f4a7c15ull; /* Fisher–Yates with a fixed xorshift sequence */
  for (int64_t e = 0; e < n_pages; e++)
    (*table)[e] = (int32_t)e;
  for (int64_t e = n_pages - 1; e > 0; e--) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    const int64_t r = (int64_t)(x % (uint64_t)(e + 1));
    const int32_t t = (*table)[e];
    (*table)[e] = (*table)[r], (*table)[r] = t;
  }
  int64_t to_stride[4]; /* K and V have the same shape and strides here */
  if (blhd)
    attn_strides_blhd(to_stride, s->Hkv, page_size, s->D);
  else
    attn_strides_packed(to_stride, s->Hkv, page_size, s->D);
  const size_t row = (size_t)s->D * esz;
  for (int64_t b = 0; b < s->B; b++)
    for (int64_t h = 0; h < s->Hkv; h++)
      for (int64_t j = 0; j < s->Lk; j++) {
        const int64_t page = (*table)[b * per_seq + j / page_size];
        const int64_t to = page * to_stride[0] + h * to_stride[1] + j % page_size * to_stride[2];
        const int64_t from = b * p->k_stride[0] + h * p->k_stride[1] + j * p->k_stride[2];
        memcpy((char *)*k_pool + to * (int64_t)esz, (const char *)k + from * (int64_t)esz, row);
        memcpy((char *)*v_pool + to * (int64_t)esz, (const char *)v + from * (int64_t)esz, row);
      }
  p->block_table = *table;
  p->page_size = page_size;
  p->num_pages = n_pages;
  memcpy(p->k_stride, to_stride, sizeof to_stride);
  memcpy(p->v_stride, to_stride, sizeof to_stride);
  return 0;
}

/* Checks rows {0, Lq/2, Lq−1} of heads {0, Hq−1} against the ref kernel; returns max |error| and
 * the largest |ref| seen. */
static void check_rows(const shape *s, const attn_params *full, const float *q, const float *k,
                       const float *v, const float *o, double *max_err, double *max_ref) {
  const int64_t rows[3] = {0, s->Lq / 2, s->Lq - 1}, heads[2] = {0, s->Hq - 1};
  float *ref = malloc(sizeof(float) * (size_t)s->D);
  *max_err = 0, *max_ref = 0;
  for (int hi = 0; hi < 2; hi++)
    for (int ri = 0; ri < 3; ri++) {
      const int64_t h = heads[hi], i = rows[ri], hk = h / (s->Hq / s->Hkv);
      const int64_t pos = i + s->Lk - s->Lq;
      const int64_t lk = s->causal ? (pos + 1 < s->Lk ? pos + 1 : s->Lk) : s->Lk;
      attn_params one;
      attn_params_init(&one, 1, 1, 1, 1, lk, s->D, s->D);
      one.causal = s->causal;
      one.k_stride[2] = full->k_stride[2], one.v_stride[2] = full->v_stride[2];
      one.align = ATTN_ALIGN_BOTTOM_RIGHT; /* pos(0) = lk − 1, as row i of the full problem */
      one.kernel = ATTN_KERNEL_REF;
      one.threads = 1;
      if (lk < 1) continue;
      const float *qi = q + h * full->q_stride[1] + i * full->q_stride[2];
      const float *kh = k + hk * full->k_stride[1], *vh = v + hk * full->v_stride[1];
      if (attn_forward(&one, qi, kh, vh, ref, NULL, NULL) != ATTN_STATUS_OK) continue;
      const float *oi = o + h * full->o_stride[1] + i * full->o_stride[2];
      for (int64_t d = 0; d < s->D; d++) {
        double e = fabs((double)oi[d] - ref[d]);
        if (e > *max_err || isnan(e)) *max_err = isnan(e) ? INFINITY : e;
        if (fabs(ref[d]) > *max_ref) *max_ref = fabs(ref[d]);
      }
    }
  free(ref);
}

/* Backward check: dQ of rows {0, Lq/2, Lq−1} of heads {0, Hq−1} recomputed by the ref kernel on
 * the one-row problem (a row's dQ depends only on its own query, dO row and K, V). */
static void check_rows_backward(const shape *s, const attn_params *full, const float *q,
                                const float *k, const float *v, const float *d_o, const float *dq,
                                double *max_err, double *max_ref) {
  const int64_t rows[3] = {0, s->Lq / 2, s->Lq - 1}, heads[2] = {0, s->Hq - 1};
  const size_t nkv = (size_t)(s->Lk * s->D);
  float *ref = malloc(sizeof(float) * (3 * (size_t)s->D + 2 * nkv + 2));
  float *o1 = ref + s->D, *scratch_dk = o1 + s->D, *scratch_dv = scratch_dk + nkv, lse1[1];
  *max_err = 0, *max_ref = 0;
  for (int hi = 0; hi < 2; hi++)
    for (int ri = 0; ri < 3; ri++) {
      const int64_t h = heads[hi], i = rows[ri], hk = h / (s->Hq / s->Hkv);
      const int64_t pos = i + s->Lk - s->Lq;
      const int64_t lk = s->causal ? (pos + 1 < s->Lk ? pos + 1 : s->Lk) : s->Lk;
      if (lk < 1) continue;
      attn_params one;
      attn_params_init(&one, 1, 1, 1, 1, lk, s->D, s->D);
      one.causal = s->causal;
      one.k_stride[2] = full->k_stride[2], one.v_stride[2] = full->v_stride[2];
      one.align = ATTN_ALIGN_BOTTOM_RIGHT;
      one.kernel = ATTN_KERNEL_REF;
      one.threads = 1;
      const float *qi = q + h * full->q_stride[1] + i * full->q_stride[2];
      const float *doi = d_o + h * full->dout_stride[1] + i * full->dout_stride[2];
      const float *kh = k + hk * full->k_stride[1], *vh = v + hk * full->v_stride[1];
      if (attn_forward(&one, qi, kh, vh, o1, lse1, NULL) != ATTN_STATUS_OK ||
          attn_backward(&one, qi, kh, vh, o1, lse1, doi, ref, scratch_dk, scratch_dv, NULL) !=
              ATTN_STATUS_OK)
        continue;
      const float *dqi = dq + h * full->dq_stride[1] + i * full->dq_stride[2];
      for (int64_t d = 0; d < s->D; d++) {
        double e = fabs((double)dqi[d] - ref[d]);
        if (e > *max_err || isnan(e)) *max_err = isnan(e) ? INFINITY : e;
        if (fabs(ref[d]) > *max_ref) *max_ref = fabs(ref[d]);
      }
    }
  free(ref);
}

int cmd_bench(int argc, char **argv) {
  shape shapes[64];
  int n_shapes = 0, threads = 0, reps = 5, csv = 0, with_long = 0, quick = 0, backward = 0;
  int machine = 1, alloc = 0;
  double min_time = 0.25; /* seconds of timed calls per shape at least (and reps calls) */
  attn_kernel kernel = ATTN_KERNEL_AUTO;
  attn_dtype kv_dtype = ATTN_DTYPE_F32;
  int64_t page_size = 0; /* 0: K and V not paged */
  int blhd = 0;          /* K and V stored [B, Lk, Hkv, D] */
  for (int i = 0; i < argc; i++) {
    const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(a, "--csv") == 0)
      csv = 1;
    else if (strcmp(a, "--long") == 0)
      with_long = 1;
    else if (strcmp(a, "--quick") == 0)
      quick = 1;
    else if (strcmp(a, "--backward") == 0)
      backward = 1;
    else if (strcmp(a, "--no-machine") == 0)
      machine = 0;
    else if (strcmp(a, "--alloc") == 0)
      alloc = 1;
    else if (strcmp(a, "--shape") == 0 && val && n_shapes < 64) {
      if (parse_shape(val, &shapes[n_shapes++]) != 0) {
        fprintf(stderr, "attn bench: --shape '%s' must be B,Hq,Hkv,Lq,Lk,D[,causal]\n", val);
        return 2;
      }
      i++;
    } else if (strcmp(a, "--threads") == 0 && val) {
      int64_t t;
      threads = cli_parse_i64(val, &t) == 0 && t >= 0 && t <= ATTN_MAX_THREADS ? (int)t : -1, i++;
      if (threads < 0) {
        fprintf(stderr, "attn bench: --threads '%s' must be 0 to %d\n", val, ATTN_MAX_THREADS);
        return 2;
      }
    } else if (strcmp(a, "--reps") == 0 && val) {
      int64_t r;
      reps = cli_parse_i64(val, &r) == 0 && r >= 1 && r <= 1000 ? (int)r : 0, i++;
      if (reps < 1) {
        fprintf(stderr, "attn bench: --reps '%s' must be 1 to 1000\n", val);
        return 2;
      }
    } else if (strcmp(a, "--min-time") == 0 && val) {
      char *end;
      min_time = strtod(val, &end), i++;
      if (end == val || *end != '\0' || !(min_time >= 0.0 && min_time <= 60.0)) {
        fprintf(stderr, "attn bench: --min-time '%s' must be 0 to 60 (seconds)\n", val);
        return 2;
      }
    } else if (strcmp(a, "--kv-dtype") == 0 && val) {
      kv_dtype = attn_dtype_from_name(val), i++;
      if (kv_dtype == ATTN_DTYPE_COUNT_) {
        fprintf(stderr, "attn bench: --kv-dtype '%s' must be f32, f16, bf16, f8e4m3 or f8e5m2\n",
                val);
        return 2;
      }
    } else if (strcmp(a, "--kv-layout") == 0 && val) {
      blhd = strcmp(val, "blhd") == 0;
      if (!blhd && strcmp(val, "bhld") != 0) {
        fprintf(stderr, "attn bench: --kv-layout '%s' must be bhld or blhd\n", val);
        return 2;
      }
      i++;
    } else if (strcmp(a, "--page-size") == 0 && val) {
      if (cli_parse_i64(val, &page_size) != 0 || page_size < 1 || page_size > 1 << 20) {
        fprintf(stderr, "attn bench: --page-size '%s' must be 1 to %d\n", val, 1 << 20);
        return 2;
      }
      i++;
    } else if (strcmp(a, "--kernel") == 0 && val) {
      kernel = attn_kernel_from_name(val), i++;
      if (kernel == ATTN_KERNEL_COUNT_ || !attn_kernel_supported(kernel)) {
        fprintf(stderr, "attn bench: --kernel '%s' is unknown or not supported here\n", val);
        return 2;
      }
    } else {
      fprintf(stderr, "attn bench: unknown option '%s'\n", a);
      return 2;
    }
  }
  if (page_size && backward) {
    fprintf(stderr, "attn bench: --page-size is for the forward only (attn_backward refuses paged "
                    "K and V)\n");
    return 2;
  }
  if (n_shapes == 0) {
    const shape *list = quick ? quick_shapes : backward ? backward_shapes : default_shapes;
    int n = quick      ? (int)(sizeof quick_shapes / sizeof quick_shapes[0])
            : backward ? (int)(sizeof backward_shapes / sizeof backward_shapes[0])
                       : (int)(sizeof default_shapes / sizeof default_shapes[0]);
    for (int i = 0; i < n; i++)
      if (!backward || list[i].Lq > 16) shapes[n_shapes++] = list[i];
    if (with_long && !backward)
      for (size_t i = 0; i < sizeof long_shapes / sizeof long_shapes[0]; i++)
        shapes[n_shapes++] = long_shapes[i];
  }
  if (threads == 0) threads = (int)sysconf(_SC_NPROCESSORS_ONLN);

  char model[128], features[256];
  cpu_model(model, sizeof model);
  attn_cpu_features(features, sizeof features);
  const attn_kernel resolved = kernel == ATTN_KERNEL_AUTO ? attn_kernel_auto() : kernel;
  double peak = 0, bandwidth = 0, block = 0, block_best = 0;
  if (machine) {
    peak = fma_peak(threads);
    bandwidth = machine_read_bandwidth_gbs(threads);
    if (resolved == ATTN_KERNEL_AVX2) /* the AVX2 products' block; no ceiling line for others */
      machine_block_gflops(threads, &block, &block_best);
  }
  if (csv) {
    printf("pass,kernel,B,Hq,Hkv,Lq,Lk,D,causal,threads,kv_dtype,t_med_ms,t_min_ms,gflops,peak_pct,"
           "gbs,"
           "bw_pct,scratch_kib,max_err,check,page_size,runs\n");
  } else {
    printf("attn %s bench | cpu: %s | features: %s\n", attn_version(), model, features);
    if (machine)
      printf("kernel %s, %d threads, K/V %s | fp32 FMA peak measured now: %.1f GFLOP/s | read "
             "bandwidth: %.1f GB/s\n",
             attn_kernel_name(resolved), threads, attn_dtype_name(kv_dtype), peak, bandwidth);
    else
      printf("kernel %s, %d threads, K/V %s | peak and bandwidth not measured (--no-machine)\n",
             attn_kernel_name(resolved), threads, attn_dtype_name(kv_dtype));
    if (blhd) printf("K/V stored [B, Lk, Hkv, D]\n");
    if (page_size)
      printf("K/V paged: pages of %" PRId64 " keys, [page, %s, dim], each sequence's pages "
             "shuffled\n",
             page_size, blhd ? "slot, head" : "head, slot");
    if (block > 0)
      printf("6x16 register block of the AVX2 products alone, operands in L1 (their ceiling): "
             "median %.1f GFLOP/s = %.0f%% of peak, best %.0f%%\n",
             block, 100 * block / peak, 100 * block_best / peak);
    printf("%s: FLOPs = %s per visible (query,key) pair; causal = bottom-right, visible "
           "pairs only; median of at least %d runs and %.2g s of them after 1 warm-up\n\n",
           backward ? "backward" : "forward", backward ? "2.5 x 2*(D+Dv)" : "2*(D+Dv)", reps,
           min_time);
    printf("%-44s %9s %9s %8s %7s %8s %10s %9s %s\n", "shape", "t_med ms", "t_min ms", "GFLOP/s",
           "%peak", "GB/s", "scratch", "max err", "check");
  }
  int failures = 0;
  for (int si = 0; si < n_shapes; si++) {
    const shape *s = &shapes[si];
    if (s->Hq % s->Hkv != 0) {
      fprintf(stderr, "attn bench: Hq %" PRId64 " is not a multiple of Hkv %" PRId64 "\n", s->Hq,
              s->Hkv);
      return 2;
    }
    const size_t nq = (size_t)(s->B * s->Hq * s->Lq * s->D),
                 nk = (size_t)(s->B * s->Hkv * s->Lk * s->D);
    /* tensors 64-byte aligned, as PyTorch's and ggml's allocators give them */
    float *q = tensor(nq), *k = tensor(nk), *v = tensor(nk), *o = tensor(nq);
    float *lse = NULL, *d_o = NULL, *dq = NULL, *dk = NULL, *dv = NULL;
    if (backward) {
      lse = tensor(nq / (size_t)s->D), d_o = tensor(nq), dq = tensor(nq);
      dk = tensor(nk), dv = tensor(nk);
    }
    if (!q || !k || !v || !o || (backward && (!lse || !d_o || !dq || !dk || !dv))) {
      fprintf(stderr, "attn bench: out of memory\n");
      return 1;
    }
    fill(q, nq, 1), fill(k, nk, 2), fill(v, nk, 3);
    if (backward) fill(d_o, nq, 4);
    /* narrow K and V: rounded copies, and k, v overwritten by their values for the check */
    void *k_in = k, *v_in = v;
    const size_t kv_esize = attn_dtype_size(kv_dtype);
    if (kv_dtype != ATTN_DTYPE_F32) {
      k_in = aligned_alloc(64, (nk * kv_esize + 63) / 64 * 64),
      v_in = aligned_alloc(64, (nk * kv_esize + 63) / 64 * 64);
      if (!k_in || !v_in) {
        fprintf(stderr, "attn bench: out of memory\n");
        return 1;
      }
      attn_from_f32(kv_dtype, k, k_in, nk), attn_to_f32(kv_dtype, k_in, k, nk);
      attn_from_f32(kv_dtype, v, v_in, nk), attn_to_f32(kv_dtype, v_in, v, nk);
    }
    attn_params p;
    attn_params_init(&p, s->B, s->Hq, s->Hkv, s->Lq, s->Lk, s->D, s->D);
    p.causal = s->causal;
    p.align = ATTN_ALIGN_BOTTOM_RIGHT;
    p.threads = threads;
    p.kernel = kernel;
    p.k_dtype = p.v_dtype = kv_dtype;
    if (blhd) {
      attn_strides_blhd(p.k_stride, s->Hkv, s->Lk, s->D);
      attn_strides_blhd(p.v_stride, s->Hkv, s->Lk, s->D);
    }
    const attn_params unpaged = p; /* for the check */
    int32_t *table = NULL;
    if (page_size) { /* K and V moved into pools of pages, each sequence's pages shuffled */
      void *k_pool = NULL, *v_pool = NULL;
      if (page_kv(s, page_size, kv_esize, blhd, k_in, v_in, &p, &table, &k_pool, &v_pool) != 0) {
        fprintf(stderr, "attn bench: out of memory\n");
        return 1;
      }
      if (k_in != k) free(k_in), free(v_in);
      k_in = k_pool, v_in = v_pool;
    }
    size_t scratch = 0;
    if (backward)
      attn_backward_scratch_bytes(&p, 0, &scratch);
    else
      attn_forward_scratch_bytes(&p, 0, &scratch);
    /* the timed calls' extra memory: one workspace for all of them (a caller that calls again
     * and again keeps one), or with --alloc each call's own */
    void *workspace = alloc ? NULL : aligned_alloc(64, scratch ? scratch : 64); /* 64·n bytes */
    double times[1000];
    attn_params warm = p; /* the forward for O and LSE; under --backward on its own memory */
    if (!backward) warm.workspace = workspace, warm.workspace_bytes = scratch;
    attn_status st = attn_forward(&warm, q, k_in, v_in, o, lse, NULL); /* warm-up; O, LSE */
    p.workspace = workspace, p.workspace_bytes = scratch;
    if (backward && st == ATTN_STATUS_OK)
      st = attn_backward(&p, q, k_in, v_in, o, lse, d_o, dq, dk, dv, NULL);
    int runs = 0;
    for (double spent = 0; st == ATTN_STATUS_OK && runs < 1000 && (runs < reps || spent < min_time);
         runs++) {
      double t0 = machine_now();
      st = backward ? attn_backward(&p, q, k_in, v_in, o, lse, d_o, dq, dk, dv, NULL)
                    : attn_forward(&p, q, k_in, v_in, o, NULL, NULL);
      times[runs] = machine_now() - t0;
      spent += times[runs];
    }
    p.workspace = NULL, p.workspace_bytes = 0;
    free(workspace);
    if (st != ATTN_STATUS_OK) {
      fprintf(stderr, "attn bench: %s\n", attn_last_error());
      return 1;
    }
    qsort(times, (size_t)runs, sizeof times[0], cmp_double);
    const double t_med = times[runs / 2], t_min = times[0];
    const double flops = (backward ? 2.5 : 1.0) * 2.0 * (double)(s->D + s->D) * visible_pairs(s) *
                         (double)(s->B * s->Hq);
    const double gflops = flops / t_med * 1e-9;
    const double kv_bytes = 2.0 * (double)nk * (double)kv_esize;
    const int decode = s->Lq <= 16;
    const double gbs = kv_bytes / t_med * 1e-9;
    double err, ref_mag;
    if (backward)
      check_rows_backward(s, &p, q, k, v, d_o, dq, &err, &ref_mag);
    else
      check_rows(s, &unpaged, q, k, v, o, &err, &ref_mag);
    const int pass = err <= 1e-5 * (1.0 + ref_mag);
    failures += !pass;
    char name[96];
    snprintf(name, sizeof name,
             "B=%" PRId64 " Hq=%" PRId64 " Hkv=%" PRId64 " L=%" PRId64 "x%" PRId64 " D=%" PRId64
             "%s",
             s->B, s->Hq, s->Hkv, s->Lq, s->Lk, s->D, s->causal ? " causal" : "");
    if (csv)
      printf("%s%s,%" PRId64 ",%" PRId64 ",%" PRId64 ",%" PRId64 ",%" PRId64 ",%" PRId64
             ",%d,%d,%s,%.4f,%.4f,%.2f,%.1f,%.2f,%.1f,%.1f,%.3g,%s,%" PRId64 ",%d\n",
             backward ? "backward," : "forward,", attn_kernel_name(resolved), s->B, s->Hq, s->Hkv,
             s->Lq, s->Lk, s->D, s->causal, threads, attn_dtype_name(kv_dtype), t_med * 1e3,
             t_min * 1e3, gflops, pct(gflops, peak), gbs, decode ? pct(gbs, bandwidth) : 0.0,
             (double)scratch / 1024, err, pass ? "PASS" : "FAIL", page_size, runs);
    else {
      char gbs_str[32] = "-";
      if (decode) snprintf(gbs_str, sizeof gbs_str, "%.1f", gbs);
      printf("%-44s %9.3f %9.3f %8.1f %6.1f%% %8s %7.0f KiB %9.2g %s\n", name, t_med * 1e3,
             t_min * 1e3, gflops, pct(gflops, peak), gbs_str, (double)scratch / 1024, err,
             pass ? "PASS" : "FAIL");
    }
    if (!csv && decode && bandwidth > 0)
      printf("%-44s K/V read at %.1f GB/s = %.0f%% of the measured read bandwidth\n", "", gbs,
             pct(gbs, bandwidth));
    fflush(stdout);
    if (k_in != k) free(k_in), free(v_in);
    free(table);
    free(q), free(k), free(v), free(o), free(lse), free(d_o), free(dq), free(dk), free(dv);
  }
  if (machine) { /* a neighbour busy while the peak was measured skews every percentage: say so */
    const double again = fma_peak(threads);
    if (fabs(again - peak) > 0.15 * peak)
      fprintf(csv ? stderr : stdout,
              "note: the FMA peak measured again after the shapes is %.1f GFLOP/s against %.1f "
              "before them: the machine was busy during one of the two, so this run's "
              "percentages of peak are uncertain (ratios to a peer in alternating rounds are "
              "not)\n",
              again, peak);
  }
  return failures ? 1 : 0;
}
