/* machine.c — see machine.h. The AVX2 loops are compiled for AVX2 + FMA through target
 * attributes and run only when the CPU reports both. */
#include "machine.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define HAVE_X86 1
#endif

double machine_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

enum { PEAK_ITERS = 20000000 };

typedef struct peak_arg {
  double flops, sink;
} peak_arg;

#ifdef HAVE_X86
/* 12 independent accumulators, named so they live in registers at any optimisation level, hide
 * the 4-cycle FMA latency on two pipes. */
__attribute__((target("avx2,fma"))) static void *peak_avx2(void *argp) {
  peak_arg *arg = argp;
  const __m256 x = _mm256_set1_ps(0.999999f), y = _mm256_set1_ps(1e-7f);
  __m256 a0 = _mm256_set1_ps(0), a1 = _mm256_set1_ps(1), a2 = _mm256_set1_ps(2),
         a3 = _mm256_set1_ps(3), a4 = _mm256_set1_ps(4), a5 = _mm256_set1_ps(5),
         a6 = _mm256_set1_ps(6), a7 = _mm256_set1_ps(7), a8 = _mm256_set1_ps(8),
         a9 = _mm256_set1_ps(9), a10 = _mm256_set1_ps(10), a11 = _mm256_set1_ps(11);
  for (long it = 0; it < PEAK_ITERS; it++) {
    a0 = _mm256_fmadd_ps(a0, x, y), a1 = _mm256_fmadd_ps(a1, x, y);
    a2 = _mm256_fmadd_ps(a2, x, y), a3 = _mm256_fmadd_ps(a3, x, y);
    a4 = _mm256_fmadd_ps(a4, x, y), a5 = _mm256_fmadd_ps(a5, x, y);
    a6 = _mm256_fmadd_ps(a6, x, y), a7 = _mm256_fmadd_ps(a7, x, y);
    a8 = _mm256_fmadd_ps(a8, x, y), a9 = _mm256_fmadd_ps(a9, x, y);
    a10 = _mm256_fmadd_ps(a10, x, y), a11 = _mm256_fmadd_ps(a11, x, y);
  }
  __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                           _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
  s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
  float out[8];
  _mm256_storeu_ps(out, s);
  arg->sink = out[0];
  arg->flops = (double)PEAK_ITERS * 12 * 8 * 2;
  return NULL;
}

/* The same with 16-lane registers, for CPUs with AVX-512: their FMA peak. */
__attribute__((target("avx512f"))) static void *peak_avx512(void *argp) {
  peak_arg *arg = argp;
  const __m512 x = _mm512_set1_ps(0.999999f), y = _mm512_set1_ps(1e-7f);
  __m512 a0 = _mm512_set1_ps(0), a1 = _mm512_set1_ps(1), a2 = _mm512_set1_ps(2),
         a3 = _mm512_set1_ps(3), a4 = _mm512_set1_ps(4), a5 = _mm512_set1_ps(5),
         a6 = _mm512_set1_ps(6), a7 = _mm512_set1_ps(7), a8 = _mm512_set1_ps(8),
         a9 = _mm512_set1_ps(9), a10 = _mm512_set1_ps(10), a11 = _mm512_set1_ps(11);
  for (long it = 0; it < PEAK_ITERS; it++) {
    a0 = _mm512_fmadd_ps(a0, x, y), a1 = _mm512_fmadd_ps(a1, x, y);
    a2 = _mm512_fmadd_ps(a2, x, y), a3 = _mm512_fmadd_ps(a3, x, y);
    a4 = _mm512_fmadd_ps(a4, x, y), a5 = _mm512_fmadd_ps(a5, x, y);
    a6 = _mm512_fmadd_ps(a6, x, y), a7 = _mm512_fmadd_ps(a7, x, y);
    a8 = _mm512_fmadd_ps(a8, x, y), a9 = _mm512_fmadd_ps(a9, x, y);
    a10 = _mm512_fmadd_ps(a10, x, y), a11 = _mm512_fmadd_ps(a11, x, y);
  }
  __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                           _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
  s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));
  float out[16];
  _mm512_storeu_ps(out, s);
  arg->sink = out[0];
  arg->flops = (double)PEAK_ITERS * 12 * 16 * 2;
  return NULL;
}

enum { BLOCK_DEPTH = 256, BLOCK_REPS = 20000 };

/* The inner loop of attn's AVX2 products alone: a 6 × 16 register block (12 accumulators; per
 * step 2 loads of B, 6 broadcasts of A, 12 FMAs) over packed operands that stay in L1 (A 6 KiB,
 * B 16 KiB), stored and restarted every BLOCK_DEPTH steps as in a tile. What it reaches relative
 * to peak_avx2 is the ceiling of any kernel built from this block on this machine. */
__attribute__((target("avx2,fma"))) static void *block_avx2(void *argp) {
  peak_arg *arg = argp;
  float *a = aligned_alloc(64, sizeof(float) * 6 * BLOCK_DEPTH);
  float *b = aligned_alloc(64, sizeof(float) * 16 * BLOCK_DEPTH);
  float c[6 * 16] __attribute__((aligned(32)));
  if (!a || !b) {
    free(a), free(b);
    return NULL;
  }
  for (int i = 0; i < 6 * BLOCK_DEPTH; i++)
    a[i] = 1e-3f * (float)(i % 7);
  for (int i = 0; i < 16 * BLOCK_DEPTH; i++)
    b[i] = 1e-3f * (float)(i % 5);
  float sink = 0;
  for (long rep = 0; rep < BLOCK_REPS; rep++) {
    const float *ap = a, *bp = b;
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    for (int d = 0; d < BLOCK_DEPTH; d++, ap += 6, bp += 16) {
      const __m256 b0 = _mm256_load_ps(bp), b1 = _mm256_load_ps(bp + 8);
      __m256 x = _mm256_broadcast_ss(ap);
      c00 = _mm256_fmadd_ps(x, b0, c00), c01 = _mm256_fmadd_ps(x, b1, c01);
      x = _mm256_broadcast_ss(ap + 1);
      c10 = _mm256_fmadd_ps(x, b0, c10), c11 = _mm256_fmadd_ps(x, b1, c11);
      x = _mm256_broadcast_ss(ap + 2);
      c20 = _mm256_fmadd_ps(x, b0, c20), c21 = _mm256_fmadd_ps(x, b1, c21);
      x = _mm256_broadcast_ss(ap + 3);
      c30 = _mm256_fmadd_ps(x, b0, c30), c31 = _mm256_fmadd_ps(x, b1, c31);
      x = _mm256_broadcast_ss(ap + 4);
      c40 = _mm256_fmadd_ps(x, b0, c40), c41 = _mm256_fmadd_ps(x, b1, c41);
      x = _mm256_broadcast_ss(ap + 5);
      c50 = _mm256_fmadd_ps(x, b0, c50), c51 = _mm256_fmadd_ps(x, b1, c51);
    }
    _mm256_store_ps(c, c00), _mm256_store_ps(c + 8, c01), _mm256_store_ps(c + 16, c10);
    _mm256_store_ps(c + 24, c11), _mm256_store_ps(c + 32, c20), _mm256_store_ps(c + 40, c21);
    _mm256_store_ps(c + 48, c30), _mm256_store_ps(c + 56, c31), _mm256_store_ps(c + 64, c40);
    _mm256_store_ps(c + 72, c41), _mm256_store_ps(c + 80, c50), _mm256_store_ps(c + 88, c51);
    sink += c[rep % 96];
  }
  free(a), free(b);
  arg->sink = sink;
  arg->flops = (double)BLOCK_REPS * BLOCK_DEPTH * 12 * 8 * 2;
  return NULL;
}
#endif

static void *peak_scalar(void *argp) {
  peak_arg *arg = argp;
  float a[8] = {0, 1, 2, 3, 4, 5, 6, 7};
  for (long it = 0; it < PEAK_ITERS / 4; it++)
    for (int i = 0; i < 8; i++)
      a[i] = a[i] * 0.999999f + 1e-7f;
  arg->sink = a[0] + a[7];
  arg->flops = (double)(PEAK_ITERS / 4) * 8 * 2;
  return NULL;
}

static double run_threads(int threads, void *(*fn)(void *), peak_arg *args) {
  pthread_t tid[256];
  if (threads > 256) threads = 256;
  double t0 = machine_now();
  for (int t = 1; t < threads; t++)
    pthread_create(&tid[t], NULL, fn, &args[t]);
  fn(&args[0]);
  for (int t = 1; t < threads; t++)
    pthread_join(tid[t], NULL);
  return machine_now() - t0;
}

double machine_fma_peak_gflops(int threads) {
  peak_arg args[256];
  memset(args, 0, sizeof args);
  void *(*fn)(void *) = peak_scalar;
#ifdef HAVE_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) fn = peak_avx2;
  if (__builtin_cpu_supports("avx512f")) fn = peak_avx512;
#endif
  double best = 0;
  for (int rep = 0; rep < 3; rep++) { /* best of three: the peak is an upper bound */
    double secs = run_threads(threads, fn, args), flops = 0;
    for (int t = 0; t < threads && t < 256; t++)
      flops += args[t].flops;
    if (flops / secs > best) best = flops / secs;
  }
  return best * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
  const double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

void machine_block_gflops(int threads, double *median, double *best) {
  *median = *best = 0;
#ifdef HAVE_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    enum { TRIALS = 9 };
    peak_arg args[256];
    memset(args, 0, sizeof args);
    double rate[TRIALS];
    for (int rep = 0; rep < TRIALS; rep++) {
      double secs = run_threads(threads, block_avx2, args), flops = 0;
      for (int t = 0; t < threads && t < 256; t++)
        flops += args[t].flops;
      rate[rep] = flops / secs * 1e-9;
    }
    qsort(rate, TRIALS, sizeof rate[0], cmp_double);
    *median = rate[TRIALS / 2], *best = rate[TRIALS - 1];
  }
#endif
  (void)threads;
}

typedef struct bw_arg {
  const float *data;
  size_t n;
  double sink;
} bw_arg;

static void *bw_read(void *argp) {
  bw_arg *arg = argp;
  float s[16] = {0};
  for (size_t i = 0; i + 16 <= arg->n; i += 16)
    for (int j = 0; j < 16; j++)
      s[j] += arg->data[i + j];
  double total = 0;
  for (int j = 0; j < 16; j++)
    total += s[j];
  arg->sink = total;
  return NULL;
}

double machine_read_bandwidth_gbs(int threads) {
  const size_t bytes = (size_t)512 << 20, n = bytes / sizeof(float);
  float *buf = malloc(bytes);
  if (!buf) return 0;
  for (size_t i = 0; i < n; i++)
    buf[i] = 1.0f;
  if (threads > 256) threads = 256;
  bw_arg args[256];
  pthread_t tid[256];
  double best = 0;
  for (int rep = 0; rep < 3; rep++) {
    size_t per = n / (size_t)threads / 16 * 16;
    for (int t = 0; t < threads; t++)
      args[t] = (bw_arg){buf + per * (size_t)t, per, 0};
    double t0 = machine_now();
    for (int t = 1; t < threads; t++)
      pthread_create(&tid[t], NULL, bw_read, &args[t]);
    bw_read(&args[0]);
    for (int t = 1; t < threads; t++)
      pthread_join(tid[t], NULL);
    double gbs = (double)(per * (size_t)threads * sizeof(float)) / (machine_now() - t0) * 1e-9;
    if (gbs > best) best = gbs;
  }
  free(buf);
  return best;
}
