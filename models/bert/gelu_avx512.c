/* gelu_avx512.c — the GELU pass (gelu_body.h) on 16 lanes, compiled with -mavx512f; bert.c calls
 * it when the CPU has AVX-512F. */
#include "bert.h"

#define GELU_LANES 16
#define GELU_ROWS_FN attn_bert_gelu_rows_avx512
#include "gelu_body.h"
