/* gelu_avx2.c — the GELU pass (gelu_body.h) on 8 lanes, compiled with -mavx2 -mfma; bert.c calls
 * it when the CPU has AVX2 and FMA. */
#include "bert.h"

#define GELU_LANES 8
#define GELU_ROWS_FN attn_bert_gelu_rows_avx2
#include "gelu_body.h"
