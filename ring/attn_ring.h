/*
 * attn_ring.h — ring attention over MPI: exact attention (forward and backward) of a sequence too
 * long for one machine, split by sequence across the ranks of an MPI communicator. Its own library
 * (libattn_ring) on top of libattn; the core never needs MPI.
 *
 * Self-attention over a global sequence of L tokens (Lq = Lk = L) on N ranks. Each rank holds L/N
 * rows of Q, K, V (and O, LSE, dO and the gradients) for every batch item and head:
 *   - non-causal: rank r holds the contiguous block [r·L/N, (r+1)·L/N);
 *   - causal: zig-zag, so every rank does the same work: the sequence is cut into 2N chunks of
 *     C = L/(2N) and rank r holds chunk r followed by chunk 2N−1−r (local rows [0, C) and [C, 2C)).
 *     attn_ring_shard_rows() gives the global row of each local row.
 * K/V blocks travel around the ring (rank r sends to r+1, receives from r−1) with non-blocking
 * sends and receives, so the next block arrives while the current one is computed; each rank
 * merges its partial results exactly through their log-sum-exp (attn_merge), in ring order, so the
 * result is deterministic. The backward sends each block's dK/dV accumulators along with it and
 * returns them to the block's owner after the last step.
 *
 * Parameters: p describes the LOCAL shard with the global problem's options — batch, heads_q,
 * heads_kv, len_q = len_k = L/N (the same on every rank), dim, dim_v, strides of the local
 * tensors, scale, softcap, causal, align, kv_len (global key lengths per batch item), threads,
 * kernel. Grouped-query heads, per-batch key lengths and both alignments are honoured across
 * shards. Not supported across shards (ATTN_STATUS_UNSUPPORTED): mask, bias, window, ALiBi — each
 * needs per-pair data or key positions that a shard's call does not see; sinks (every block's
 * call would count the sink); and 16-bit inputs (the ring passes fp32 K/V blocks). L/N must be even
 * for causal (two chunks per rank).
 *
 * Errors: every rank checks its arguments and the ranks compare shapes and options; if any rank
 * fails, every rank returns the same status with a message (attn_last_error()) — never a hang, as
 * long as every rank of the communicator makes the call.
 */
#ifndef ATTN_RING_H
#define ATTN_RING_H

#include "attn.h"

#include <mpi.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Global row index of local row i (0 ≤ i < local_len) on rank `rank` of `ranks`, for the causal
 * (zig-zag) or contiguous layout. */
int64_t attn_ring_shard_rows(int64_t local_len, int rank, int ranks, int causal, int64_t i);

/* Forward: o [B, Hq, L/N, Dv] (o_stride) and lse (lse_stride, may be NULL) for the local queries
 * against every key of the global sequence. Collective over comm. */
attn_status attn_ring_forward(const attn_params *p, MPI_Comm comm, const float *q, const float *k,
                              const float *v, float *o, float *lse);

/* Backward: dq, dk, dv of the local shard (dq/dk/dv_stride), from the local o, lse (of
 * attn_ring_forward) and dout (dout_stride). Collective over comm. */
attn_status attn_ring_backward(const attn_params *p, MPI_Comm comm, const float *q, const float *k,
                               const float *v, const float *o, const float *lse, const float *dout,
                               float *dq, float *dk, float *dv);

/* The last error message of an attn_ring call on this thread (or of the attn call it made). */
const char *attn_ring_last_error(void);

#ifdef __cplusplus
}
#endif

#endif
