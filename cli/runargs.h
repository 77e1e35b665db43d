/* runargs.h — the run options and file handling shared by the attn and attn-ring commands. */
#ifndef ATTN_CLI_RUNARGS_H
#define ATTN_CLI_RUNARGS_H

#include "attn.h"
#include "npy.h"

#include <stdint.h>
#include <stdio.h>

/* Exit status: 2 bad usage or bad input (nothing written), 1 a failure while computing/writing. */
enum { EXIT_BAD_INPUT = 2, EXIT_RUNTIME = 1 };

/* The command name messages start with ("attn run", "attn-ring grad", ...). */
extern const char *cli_command;

/* Prints "command: message" on stderr; returns code. */
int cli_fail(int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

typedef struct inputs {
  npy_array q, k, v, mask, bias, alibi, sinks;
} inputs;
void cli_inputs_free(inputs *in);
/* Reads path into *a and checks dtype and rank; messages name the flag. */
/* Reads a .npy file that must have ndim dimensions and one of the dtypes in the mask `dtypes`
 * (CLI_F32, CLI_F16, CLI_U8 or'ed; Q, K and V may be float16: cli_configure sets their attn_dtype).
 */
enum { CLI_F32 = 1u << NPY_F32, CLI_U8 = 1u << NPY_U8, CLI_F16 = 1u << NPY_F16 };
int cli_load(const char *flag, const char *path, unsigned dtypes, int ndim, npy_array *a);
void cli_shape_str(const int64_t *s, int n, char *buf, size_t size);

/* Strict numbers for every command's options: the whole string must be the number. */
int cli_parse_i64(const char *s, int64_t *out); /* 0, or −1 (not an integer, or out of range) */
/* "a,b,c" (no empty item) into at most max values; returns the count, or −1. */
int64_t cli_parse_list(const char *s, int64_t *vals, int64_t max);
/* A benchmark shape "v0,…,v(n−1)[,causal]": exactly n integers, each ≥ 1; 0 or −1. */
int cli_parse_shape(const char *s, int64_t *vals, int n, int *causal);

/* The options of attn run (and, with grad = 1, attn grad). */
typedef struct run_opts {
  const char *q, *k, *v, *out, *lse, *probs, *mask, *bias, *alibi, *sinks;
  const char *scale, *align, *window, *kv_len, *q_len, *softcap, *threads, *kernel;
  const char *cu_seqlens_q, *cu_seqlens_k; /* packed sequences: B + 1 row offsets each */
  const char *dropout, *dropout_seed;
  const char *dout, *dq, *dk, *dv, *dbias, *dsinks; /* attn grad */
  int causal, grad;
} run_opts;
int cli_parse_run_args(int argc, char **argv, run_opts *o, void (*usage)(FILE *));
/* Fills p from the options and the loaded Q, K, V (loading mask, bias, ALiBi, sinks); if any of
 * --kv-len, --q-len, --cu-seqlens-q, --cu-seqlens-k is given, *kv_len gets one malloc'ed array of
 * them (kv_len at 0, q_len at B + 1, cu_seqlens_q at 2B + 2, cu_seqlens_k at 3B + 3). With
 * --cu-seqlens-q, Q is [1, Hq, total_q, D] (O, LSE, dO, dQ likewise) and B comes from the offsets;
 * --cu-seqlens-k the same for K, V, dK, dV. */
int cli_configure(const run_opts *o, inputs *in, attn_params *p, int64_t **kv_len);
/* malloc of a·b·c·d floats, NULL on overflow. */
float *cli_alloc_floats(int64_t a, int64_t b, int64_t c, int64_t d);

/* An output written to a temporary file next to its path, renamed at the end. */
typedef struct out_file {
  const char *flag, *path;
  char *tmp;
  FILE *f;
} out_file;
int cli_out_open(out_file *o);
void cli_out_discard(out_file *o);
/* Writes bufs[i] as float32 .npy of shapes[i] (ranks[i] dims) to every opened output, then renames
 * them all into place. */
int cli_outputs_commit(out_file *outs, int n, float *const *bufs, const int *ranks,
                       const int64_t (*shapes)[4]);

#endif
