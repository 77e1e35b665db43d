/* bwd_avx2.c — the fused backward (bwd_tiled_body.h) compiled with -mavx2 -mfma: the compiler
 * maps its 8-lane vectors onto YMM registers. Only called when the CPU has AVX2 and FMA. */
#define ATTN_BWD_FN attn__bwd_f32__avx2
#define ATTN_BWD_SCRATCH_FN attn__bwd_scratch_f32__avx2
#define ATTN_BWD_EXP_FN attn__bwd_exp__avx2
#define ATTN_BWD_FMA 1
#include "../bwd_tiled_body.h"
