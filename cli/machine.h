/*
 * machine.h — what this machine can do, measured in the same run as a benchmark: the fp32 FMA peak
 * (a register-only loop of independent fused multiply-adds on T threads), what the microkernels'
 * register block reaches on its own, and the memory read
 * bandwidth (streaming sums over a buffer much larger than the caches).
 */
#ifndef ATTN_MACHINE_H
#define ATTN_MACHINE_H

/* fp32 GFLOP/s of `threads` threads running independent FMAs on the widest vectors the CPU has
 * (AVX-512, else AVX2): the machine's peak, whichever kernel is measured against it. */
double machine_fma_peak_gflops(int threads);

/* fp32 GFLOP/s of `threads` threads running the 6 × 16 register block of attn's AVX2 products
 * alone on L1-resident operands, the ceiling of those kernels here: median and best of 9 short
 * trials (on a shared machine the two differ: a neighbour's loads slow this loop and not the
 * register-only peak loop). 0 without AVX2 + FMA. */
void machine_block_gflops(int threads, double *median, double *best);

/* GB/s of `threads` threads reading a 512 MiB buffer once. */
double machine_read_bandwidth_gbs(int threads);

/* Monotonic seconds. */
double machine_now(void);

#endif
