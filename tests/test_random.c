/*
 * test_random.c — random cases beyond the structured sweeps of test_kernels and test_backward:
 * every option drawn independently (layout, causal, alignment, windows, per-batch key and query
 * lengths, each mask and bias kind, softcap, ALiBi, explicit scale, larger logits, sinks), shapes
 * drawn around all of the forward's paths (decode Lq ≤ 16 and query blocks against 1000–5000 keys,
 * where the keys are split for decode and for few items; ordinary tiles otherwise), D and Dv from
 * 1 to 300, 1–5 threads. Each case runs on every kernel against the fp64 oracle under the
 * tolerance rule (forward: O, LSE and, for small cases, P; backward: dQ, dK, dV and dBias).
 * Deterministic for a seed. Usage: test_random [seed [cases]]   (seed 0 and 48 cases of each pass
 * by default; CI passes a rotating seed). ATTN_TEST_KERNELS limits the kernels as in test_kernels.
 */
#include "harness.h"

#include <stdlib.h>

/* Work bound of one case (B·Hq·Lq·Lk·(D + Dv)): keeps the oracle and the sanitised builds quick. */
enum { MAX_WORK = 8000000 };

static tspec random_spec(rng *r, int backward, uint64_t seed) {
  const int64_t hkv = rng_int(r, 1, 3), group = rng_int(r, 1, 4), B = rng_int(r, 1, 2);
  int64_t D = rng_uniform(r) < 0.3 ? rng_int(r, 1, 20) : rng_int(r, 1, backward ? 160 : 300);
  int64_t Dv = rng_uniform(r) < 0.6 ? D : rng_int(r, 1, 200), Lq, Lk;
  const double u = rng_uniform(r);
  const int many_keys = !backward && u < 0.45; /* keep ≥ 1024 keys: the key-split paths */
  if (backward)
    Lq = rng_int(r, 0, 200), Lk = rng_int(r, 0, 300);
  else if (u < 0.25) /* decode: split keys, direct forms */
    Lq = rng_int(r, 1, 16), Lk = rng_int(r, 1000, 5000);
  else if (u < 0.45) /* query blocks against many keys: split when the items are few */
    Lq = rng_int(r, 17, 200), Lk = rng_int(r, 1000, 4200);
  else
    Lq = rng_int(r, 0, 400), Lk = rng_int(r, 0, 400);
  tspec s = tspec_shape(B, hkv * group, hkv, Lq, Lk, D, Dv);
  tspec_min_rows(&s, backward ? 32 : 64); /* as the sweeps: a sample for the tolerance rule */
  while (s.B * s.Hq * (s.Lq + 1) * (s.Lk + 1) * (s.D + s.Dv) > MAX_WORK) {
    if (s.D > 16 || s.Dv > 16)
      s.D = s.D > 16 ? s.D / 2 : s.D, s.Dv = s.Dv > 16 ? s.Dv / 2 : s.Dv;
    else if (s.Lk > (many_keys ? 2048 : 64))
      s.Lk /= 2;
    else if (s.Lq > 16)
      s.Lq /= 2;
    else
      break;
  }
  s.layout = (int)rng_int(r, 0, N_LAYOUTS - 1);
  s.causal = rng_uniform(r) < 0.4;
  s.align = rng_uniform(r) < 0.5 ? ATTN_ALIGN_TOP_LEFT : ATTN_ALIGN_BOTTOM_RIGHT;
  if (rng_uniform(r) < 0.25) s.window_left = rng_int(r, 0, 700);
  if (!s.causal && rng_uniform(r) < 0.25) s.window_right = rng_int(r, 0, 50);
  s.kv_len = rng_uniform(r) < 0.3;
  s.mask = rng_uniform(r) < 0.25 ? (int)rng_int(r, 1, N_MASKS - 1) : MASK_NONE;
  s.bias = rng_uniform(r) < 0.25 ? (int)rng_int(r, 1, N_BIASES - 1) : BIAS_NONE;
  s.softcap = rng_uniform(r) < 0.15 ? (float)rng_int(r, 1, 30) : 0.0f;
  s.alibi = rng_uniform(r) < 0.15;
  if (rng_uniform(r) < 0.1) s.has_scale = 1, s.scale = (float)(2 * rng_uniform(r));
  /* larger logits (std ~9 instead of ~1), not the extreme ones: with logits in the hundreds the
   * error of an fp32 implementation is a few scores' rounding luck, which a random case's small
   * sample cannot compare fairly (test_kernels covers them on a fixed large sample) */
  if (rng_uniform(r) < 0.1) s.q_mul = s.k_mul = 3.0f;
  s.sinks = rng_uniform(r) < 0.15; /* drawn late: the earlier draws of a seed stay as they were */
  s.q_len = rng_uniform(r) < 0.2;
  s.seed = seed;
  return s;
}

static void run_cases(uint64_t seed, int cases, int backward) {
  rng r = {seed * 0x9e3779b97f4a7c15ull + (uint64_t)backward};
  for (int n = 0; n < cases; n++) {
    const tspec s = random_spec(&r, backward, seed * 1000003u + (uint64_t)n);
    const int threads = (int)rng_int(&r, 1, 5);
    const int extra = rng_uniform(&r) < 0.5; /* P (forward) or dBias (backward) */
    tcase c;
    tcase_make(&c, &s);
    for (int k = 1; k < ATTN_KERNEL_COUNT_; k++) {
      if (!t_kernel_selected((attn_kernel)k)) continue;
      if (!backward)
        t_check_case(&c, (attn_kernel)k, threads, extra && s.Lq * s.Lk <= 40000);
      else if (k >= ATTN_KERNEL_GENERIC) /* ref is the backward's oracle side */
        t_check_backward(&c, (attn_kernel)k, threads, extra && s.bias != BIAS_NONE);
    }
    tcase_free(&c);
  }
}

int main(int argc, char **argv) {
  const uint64_t seed = argc > 1 ? strtoull(argv[1], NULL, 10) : 0;
  const int cases = argc > 2 ? atoi(argv[2]) : 48;
  printf("test_random: seed %llu, %d forward and %d backward cases\n", (unsigned long long)seed,
         cases, cases);
  t_check_kernel_selection();
  run_cases(seed, cases, 0);
  run_cases(seed, cases, 1);
  return t_finish("test_random");
}
