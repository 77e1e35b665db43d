/* bwd_generic.c — the fused backward (bwd_tiled_body.h) for the baseline instruction set. */
#define ATTN_BWD_FN attn__bwd_f32__generic
#define ATTN_BWD_SCRATCH_FN attn__bwd_scratch_f32__generic
#define ATTN_BWD_EXP_FN attn__bwd_exp__generic
#include "../bwd_tiled_body.h"
