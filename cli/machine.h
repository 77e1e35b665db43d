/*
 * machine.h — what this machine can do, measured in the same run as a benchmark: the fp32 FMA peak
 * (a register-only loop of independent fused multiply-adds on T threads) and the memory read
 * bandwidth (streaming sums over a buffer much larger than the caches).
 */
#ifndef ATTN_MACHINE_H
#define ATTN_MACHINE_H

/* fp32 GFLOP/s of `threads` threads running independent FMAs (AVX2 when the CPU has it). */
double machine_fma_peak_gflops(int threads);

/* GB/s of `threads` threads reading a 512 MiB buffer once. */
double machine_read_bandwidth_gbs(int threads);

/* Monotonic seconds. */
double machine_now(void);

#endif
