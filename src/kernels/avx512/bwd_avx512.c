/* bwd_avx512.c — the fused backward (bwd_tiled_body.h) compiled with -mavx512f and 16-lane
 * vectors: 8×32 register blocks for the five products. Only called when the CPU has AVX-512
 * (F, BW) and AVX2 + FMA. */
#define ATTN_BWD_FN attn__bwd_f32__avx512
#define ATTN_BWD_SCRATCH_FN attn__bwd_scratch_f32__avx512
#define ATTN_BWD_EXP_FN attn__bwd_exp__avx512
#define ATTN_BWD_FMA 1
#define ATTN_BWD_VL 16
#include "../bwd_tiled_body.h"
