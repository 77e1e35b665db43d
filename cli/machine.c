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
