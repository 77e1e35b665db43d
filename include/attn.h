/*
 * attn.h — exact scaled dot-product attention for CPUs. The only public header; it is the manual.
 *
 *     O = softmax(Q·Kᵀ·scale) · V
 *
 * attn computes the three kinds of attention a language model uses:
 *   - bidirectional self-attention (Lq = Lk, every token sees every token),
 *   - causal self-attention        (token i sees keys j ≤ i: set causal = 1),
 *   - cross (encoder–decoder)      (queries from one sequence, keys/values from another, Lq ≠ Lk).
 *
 * Example (one batch item, 8 heads, 128 tokens, head dim 64, causal):
 *
 *     attn_params p;
 *     attn_params_init(&p, 1, 8, 8, 128, 128, 64, 64);   // packed [B, H, L, D] strides
 *     p.causal = 1;
 *     float *lse = malloc(sizeof(float) * 8 * 128);      // optional: log-sum-exp per row
 *     attn_status st = attn_forward(&p, q, k, v, o, lse, NULL);
 *     if (st != ATTN_STATUS_OK) {
 *         fprintf(stderr, "%s: %s\n", attn_status_str(st), attn_last_error());
 *         return 1;
 *     }
 *
 * ---------------------------------------------------------------------------------------------
 * Shapes (element strides given per dimension; index order is always the order listed here)
 *
 *     Q     [B, Hq,  Lq, D ]      input
 *     K     [B, Hkv, Lk, D ]      input
 *     V     [B, Hkv, Lk, Dv]      input; Dv may differ from D (Dv = 0 is allowed)
 *     O     [B, Hq,  Lq, Dv]      output, overwritten
 *     LSE   [B, Hq,  Lq]          optional output: natural-log log-sum-exp of each row's scores
 *     P     [B, Hq,  Lq, Lk]      optional output: the exact attention weights (O(Lq·Lk) memory)
 *     mask  [B, Hq,  Lq, Lk]      optional input, uint8, non-zero = visible; broadcast by stride 0
 *     bias  [B, Hq,  Lq, Lk]      optional input, float, added to scores; broadcast by stride 0
 *
 * - Grouped-query heads: Hq % Hkv == 0 and query head h reads key/value head h / (Hq / Hkv)
 *   (multi-query attention is Hkv = 1). K/V are never copied per query head.
 * - Strides are in elements and may be 0 (broadcast) or negative for inputs. Output strides must
 *   be positive for every dimension longer than 1 and must not make an output overlap itself.
 *   The address ranges of the outputs must be disjoint from each other and from every input.
 * - Sizes and offsets are 64-bit; a tensor whose byte extent overflows is
 * ATTN_STATUS_SIZE_OVERFLOW.
 * - A pointer may be NULL only when its tensor has no elements (it is then never dereferenced).
 *
 * Positions and alignment (when Lq ≠ Lk)
 *   "The key position of query i", pos(i), is
 *     ATTN_ALIGN_TOP_LEFT:      pos(i) = i
 *     ATTN_ALIGN_BOTTOM_RIGHT:  pos(i) = i + klen(b) − qlen(b)   (KV-cache convention: the last
 *                               query lines up with the last valid key)
 *   where klen(b) = kv_len[b] if kv_len is given (cu_seqlens_k[b + 1] − cu_seqlens_k[b] if that
 *   is), else Lk, and qlen(b) = q_len[b] if q_len is given (likewise from cu_seqlens_q), else Lq.
 *   Causal masking, windows and ALiBi all measure from pos(i). If Lq ≠ Lk or any of kv_len, q_len,
 *   cu_seqlens_q, cu_seqlens_k is given, and causal, a window or ALiBi is used, the alignment must
 *   be set explicitly; leaving it ATTN_ALIGN_UNSET is an error. When Lq = Lk and none of them is
 *   given the two coincide and UNSET is accepted.
 *
 * Variable lengths in a batch: kv_len gives each batch item its number of keys, q_len its number
 * of queries (padded layout: items are padded to Lk keys and Lq queries). Query rows i ≥ qlen(b)
 * are padding: they see no key (rule 0 below), so they get the empty-row result. The fused kernels
 * skip query blocks and row groups of padding; a decode block (Lq ≤ 16) computes a KV group's
 * padding rows beside its real ones, which costs little there (decode is bound by reading K, V).
 * Together with bottom-right alignment this is a batch of sequences that each add qlen(b) tokens
 * to a cache of klen(b) − qlen(b), e.g. prefill chunks and single decode tokens in one call.
 *
 * Packed sequences (FlashAttention's varlen, xFormers' block-diagonal batches): with
 * cu_seqlens_q set, the batch items' queries are packed one after another with no padding:
 *     qlen(b) = cu_seqlens_q[b + 1] − cu_seqlens_q[b],   cu_seqlens_q[0] = 0,   0 ≤ qlen(b) ≤ Lq
 * (Lq is the longest), and query i of item b is row cu_seqlens_q[b] + i of every tensor of query
 * rows, Q, O, LSE, dO and dQ: its element d of head h is at h·stride[1] + (cu_seqlens_q[b] +
 * i)·stride[2] + d·stride[3] (stride[0] is not used; for Q [total_q, Hq, D] as FlashAttention
 * keeps it, attn_strides_blhd(p.q_stride, Hq, total_q, D), and LSE [Hq, total_q] is lse_stride =
 * {0, total_q, 1}). cu_seqlens_k does the same for the keys: klen(b) from it, key j of item b is
 * row cu_seqlens_k[b] + j of K, V, dK and dV. The tensors of query–key pairs (mask, bias, dBias,
 * P) keep their [B, Hq, Lq, Lk] indices. The result is bitwise that of the padded call with
 * q_len = qlen and kv_len = klen (its padding rows simply have no storage: nothing is read or
 * written for them), on every kernel, forward and backward. cu_seqlens_q excludes q_len,
 * cu_seqlens_k excludes kv_len and block_table (a paged cache addresses its keys itself; give
 * kv_len, and cu_seqlens_q for packed queries). attn_merge and attn_backward_sinks take packed
 * queries too; attn_ring does not.
 *
 * Which keys are visible: key j is visible to query i of batch b, head h, when all of these hold
 *   0. i < qlen(b);
 *   1. j < klen(b);
 *   2. causal:  j ≤ pos(i);
 *   3. window (left, right), −1 = unbounded on that side:  pos(i) − left ≤ j ≤ pos(i) + right;
 *   4. mask, if given:  mask[b,h,i,j] != 0;
 *   5. bias, if given:  bias[b,h,i,j] != −inf.
 *   A finite large negative bias (−1e30, −FLT_MAX) is ordinary data, not a mask; −inf is the way
 *   to mask with a bias.
 *
 * The score of a visible pair, in this order
 *   1. s = scale · (q_i · k_j)       scale defaults to 1/sqrt(D) (D of Q and K, not Dv)
 *   2. softcap c > 0:  s = c · tanh(s / c)
 *   3. ALiBi slope m_h:  s = s − m_h · |pos(i) − j|
 *   4. bias:  s = s + bias[b,h,i,j]
 *   Then over the visible keys only: LSE_i = log Σ_j exp(s_ij), P_ij = exp(s_ij − LSE_i),
 *   O_i = Σ_j P_ij · v_j. Invisible keys have P_ij = 0.
 *
 * Attention sinks (sinks[h], optional; gpt-oss, StreamingLLM): every row of head h also sees one
 * virtual key whose score is sinks[h] as given (no scale, softcap, ALiBi or bias) and whose value
 * is zero: LSE_i = log(exp(sinks[h]) + Σ_j exp(s_ij)), P_ij = exp(s_ij − LSE_i) (P does not list
 * the sink; a row's P sums to 1 − exp(sinks[h] − LSE_i)), O_i = Σ_j P_ij · v_j. A sink of −inf
 * is no sink. A row with no visible key then has LSE = sinks[h], O = +0, P = 0.
 *
 * Paged K and V (a KV cache in pages: vLLM's PagedAttention, FlashAttention's block_table), for
 * attn_forward only: with p->block_table set, K and V are pools of num_pages pages of page_size
 * keys, k [num_pages, Hkv, page_size, D] and v [num_pages, Hkv, page_size, Dv] (k_stride and
 * v_stride index these dimensions; attn_strides_blhd(s, Hkv, page_size, D) is the
 * [page, slot, head, dim] layout), and key j of batch item b is slot j % page_size of page
 *     block_table[b · block_table_stride + j / page_size]
 * for j < klen(b). Everything else (len_k, kv_len, masks, bias, P, positions) speaks of the
 * logical keys j, so a paged call gives bitwise the result of the same call on K and V gathered
 * into ordinary [B, Hkv, Lk, ·] tensors with contiguous rows, on every kernel — as any layout of
 * the same numbers does (decode copies K and V rows whose elements are not contiguous into a
 * contiguous tile, so it sums in the same order as on rows read in place). Entries for keys at or
 * past klen(b) are never read (they may hold anything, e.g. −1); the others must lie in
 * [0, num_pages). Pages may be shared between batch items (a common prefix) and appear in any
 * order.
 *
 * Dropout (training; FlashAttention's and SDPA's dropout_p): with p->dropout = p > 0, each
 * visible pair's weight is kept and scaled by 1/(1 − p), or dropped (set to 0), as decided by a
 * counter-based hash of (dropout_seed, b, h, i, j) — Philox4x32-10 (Salmon et al., SC'11), keyed
 * by the seed, on the counter (⌊j/4⌋, i, b·Hq + h, 0) with word j mod 4 (the low 32 bits of the
 * indices), the pair kept when that word is at least ⌊p·2³²⌋:
 *     O_i = Σ_j P_ij · Z_ij · v_j,   Z_ij = keep(b, h, i, j) / (1 − p)
 * LSE, P (the output, before dropout) and the softmax are unchanged: dropout acts on the weights
 * only, as in PyTorch. The decision depends on the seed and the logical indices only — never on
 * tiles, threads, kernels, packing or paging — so attn_backward with the same parameters
 * differentiates exactly the forward's O, and results stay bitwise reproducible.
 * attn_dropout_keep tells a caller which pairs are kept. A dropped pair still counts as visible:
 * NaN in its V value propagates (0·NaN), as in a plain implementation. The indices are the call's
 * own: calls on slices of the keys (to merge with attn_merge) or of the queries number them from
 * 0, so they drop other pairs than one call over the whole (attn_ring refuses dropout for that
 * reason).
 *
 * Rows with no visible key (and no sink): O row = +0.0 exactly, LSE = −inf, P row = 0. Never NaN. A
 * visible key whose score is −inf (only infinite Q or K values make one) gets weight exactly 0 (its
 * V enters O as 0·V, as in a plain softmax: an infinite V there makes NaN); a row whose every
 * visible score is −inf (and no sink) has LSE = log 0 = −inf and is an empty row. A +inf or NaN
 * score makes its row NaN.
 *
 * NaN: K, V and bias values of invisible keys are never read into the result (NaN or inf stored
 * there leaves the output bitwise unchanged). NaN in a visible value propagates to exactly the
 * outputs that depend on it; the library never silently cleans NaN.
 *
 * Numbers: Q, K and V are fp32, or fp16 / bf16 / fp8 (q_dtype, k_dtype, v_dtype below); the mask is
 * uint8, the bias, ALiBi slopes and every output fp32; accumulation fp32 or better. Results are
 * bitwise identical from run to run and for any thread count on the same machine and kernel;
 * different kernels may differ in the last bits. Weights are fp32 in the fused kernels: a visible
 * key whose weight underflows fp32 (in the vector kernels: a score about 87 or more below the
 * running maximum they weigh against, which trails the row's largest score by at most 8) weighs
 * exactly 0 there, so an infinite V value at such a key gives NaN (0·inf) where the fp64 ref
 * kernel, whose weight is still positive, gives ±inf.
 *
 * Errors: a call that cannot be honoured returns a status and writes nothing (outputs keep their
 * previous bytes). attn_last_error() gives a message naming the function, the parameter, its value
 * and the rule, e.g. "attn_forward: heads_q (12) is not a multiple of heads_kv (5)". An unsupported
 * request is an error, never a silent fallback to different semantics.
 */
#ifndef ATTN_H
#define ATTN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(ATTN_BUILDING_LIBRARY) && defined(__GNUC__)
#define ATTN_API __attribute__((visibility("default")))
#else
#define ATTN_API
#endif

#define ATTN_VERSION_MAJOR 0
#define ATTN_VERSION_MINOR 1
#define ATTN_VERSION_PATCH 0
#define ATTN_VERSION_STRING "0.1.0"

/* Status codes: one list feeds both the enum and attn_status_str(), so they cannot drift. */
#define ATTN_STATUS_MAP(XX)                                                                        \
  XX(OK, "success")                                                                                \
  XX(INVALID_ARGUMENT, "invalid argument")                                                         \
  XX(UNSUPPORTED, "unsupported request")                                                           \
  XX(UNSUPPORTED_ISA, "the requested kernel cannot run on this CPU")                               \
  XX(SIZE_OVERFLOW, "size or offset overflows")                                                    \
  XX(OUT_OF_MEMORY, "out of memory")                                                               \
  XX(INTERNAL, "internal error")

typedef enum attn_status {
#define ATTN__STATUS_ENUM(name, msg) ATTN_STATUS_##name,
  ATTN_STATUS_MAP(ATTN__STATUS_ENUM)
#undef ATTN__STATUS_ENUM
      ATTN_STATUS_COUNT_
} attn_status;

/* Alignment of queries to keys when Lq ≠ Lk (see "Positions and alignment" above). */
typedef enum attn_align {
  ATTN_ALIGN_UNSET = 0,        /* accepted only when Lq = Lk and kv_len, q_len are NULL */
  ATTN_ALIGN_TOP_LEFT = 1,     /* pos(i) = i */
  ATTN_ALIGN_BOTTOM_RIGHT = 2, /* pos(i) = i + klen(b) − qlen(b) */
} attn_align;

/*
 * Element types of the inputs Q, K and V (attn_params q_dtype, k_dtype, v_dtype; each input on its
 * own, e.g. an fp32 Q against an fp16 KV cache). A 16-bit tensor is passed as its bit patterns
 * (an array of uint16_t), an 8-bit one as bytes (uint8_t); strides stay in elements. Every fp16,
 * bf16 and fp8 value is exactly a float, so a call on narrow inputs gives bitwise the result of
 * the same call on those values widened to fp32 (attn_to_f32), on every kernel: what changes is
 * the memory read — a half or a quarter of the bytes of K and V, which is what decode against a
 * long KV cache is bound by. NaN and inf are NaN and inf in every type that has them (fp8 E4M3
 * has no inf; its NaN is S.1111.111), and the masking rules hold as for fp32. (attn_ring takes
 * fp32 only.)
 *
 * fp8 caches are usually stored scaled (x / s, to fit E4M3's ±448): attn reads the stored values
 * as they are, so fold the scales in — for K scaled by s_k, set p.scale = s_k / sqrt(D) (scores
 * are linear in K); for V scaled by s_v, multiply O by s_v (O is linear in V). With one scale per
 * KV head, call once per head group or widen with attn_to_f32 and rescale first.
 */
typedef enum attn_dtype {
  ATTN_DTYPE_F32 = 0,    /* float (the default) */
  ATTN_DTYPE_F16 = 1,    /* IEEE 754 binary16: sign, 5 exponent bits, 10 fraction bits */
  ATTN_DTYPE_BF16 = 2,   /* bfloat16: the upper 16 bits of a float (8 exponent, 7 fraction bits) */
  ATTN_DTYPE_F8E4M3 = 3, /* OCP fp8 E4M3 ("e4m3fn", PyTorch's float8_e4m3fn): 4 exponent bits
                            (bias 7), 3 fraction bits, subnormals, no inf, NaN = S.1111.111;
                            largest finite ±448 */
  ATTN_DTYPE_F8E5M2 = 4, /* OCP fp8 E5M2 (PyTorch's float8_e5m2): the upper 8 bits of an fp16 —
                            5 exponent bits, 2 fraction bits, inf and NaN; largest finite ±57344 */
  ATTN_DTYPE_COUNT_
} attn_dtype;

/* Which implementation runs the call. Every kernel computes the same contract; results of
 * different kernels may differ in the last bits. */
typedef enum attn_kernel {
  ATTN_KERNEL_AUTO = 0, /* the fastest kernel this CPU supports, or the one the environment
                           variable ATTN_ISA names (ref, generic, avx2, avx512): an ATTN_ISA the CPU
                           cannot run fails with ATTN_STATUS_UNSUPPORTED_ISA, an unknown one with
                           ATTN_STATUS_INVALID_ARGUMENT — never a silent fallback */
  ATTN_KERNEL_REF = 1,  /* textbook formula, fp64 accumulation, materialised scores: the oracle */
  ATTN_KERNEL_GENERIC =
      2,                /* fused tiled online-softmax kernel in portable C, O(tile) extra memory */
  ATTN_KERNEL_AVX2 = 3, /* the fused kernel with AVX2 + FMA microkernels (x86-64; needs F16C too) */
  ATTN_KERNEL_AVX512 = 4, /* the fused kernel with AVX-512 (F, BW) microkernels and the backward
                             on 16-lane vectors (x86-64; decode blocks run the AVX2 code) */
  ATTN_KERNEL_COUNT_
} attn_kernel;

/*
 * Everything about one attention call except the data pointers. Fill it with attn_params_init()
 * (which sets every field to its default and the strides to packed [B, H, L, D] order), then change
 * the fields you need. Fields added in later versions get defaults from attn_params_init().
 */
typedef struct attn_params {
  /* Sizes. batch, heads_q, heads_kv, len_q, len_k ≥ 0; dim ≥ 1; dim_v ≥ 0; heads_kv ≥ 1 and
   * heads_q % heads_kv == 0. */
  int64_t batch, heads_q, heads_kv, len_q, len_k, dim, dim_v;

  /* Strides in elements, per dimension in the index order of the shapes above. */
  int64_t q_stride[4];     /* Q [B, Hq, Lq, D]  */
  int64_t k_stride[4];     /* K [B, Hkv, Lk, D] */
  int64_t v_stride[4];     /* V [B, Hkv, Lk, Dv] */
  int64_t o_stride[4];     /* O [B, Hq, Lq, Dv] */
  int64_t lse_stride[3];   /* LSE [B, Hq, Lq] */
  int64_t probs_stride[4]; /* P [B, Hq, Lq, Lk] */

  /* Gradient strides, used by attn_backward only (attn_params_init packs them). */
  int64_t dout_stride[4];  /* dO [B, Hq, Lq, Dv]  */
  int64_t dq_stride[4];    /* dQ [B, Hq, Lq, D]   */
  int64_t dk_stride[4];    /* dK [B, Hkv, Lk, D]  */
  int64_t dv_stride[4];    /* dV [B, Hkv, Lk, Dv] */
  int64_t dbias_stride[4]; /* dBias: the bias's shape, size 1 where bias_stride is 0 */

  /* Score. */
  int has_scale;             /* 0: scale = 1/sqrt(dim) (rounded to float); 1: use `scale` */
  float scale;               /* must be finite; 0 and negative are allowed */
  float softcap;             /* 0 = off; > 0: s = softcap · tanh(s / softcap) */
  const float *alibi_slopes; /* [heads_q] finite slopes, or NULL */
  const float *sinks;        /* [heads_q] sink logits, each finite or −inf (none), or NULL */

  /* Visibility. */
  int causal;             /* 0 or 1 */
  attn_align align;       /* see "Positions and alignment" */
  int64_t window_left;    /* −1 = unbounded, else ≥ 0 */
  int64_t window_right;   /* −1 = unbounded, else ≥ 0 */
  const int64_t *kv_len;  /* [batch] key lengths 0 ≤ kv_len[b] ≤ len_k, or NULL */
  const int64_t *q_len;   /* [batch] query lengths 0 ≤ q_len[b] ≤ len_q (rows past: padding), or
                             NULL */
  const uint8_t *mask;    /* [B, Hq, Lq, Lk] non-zero = visible, or NULL */
  int64_t mask_stride[4]; /* default: packed [B, Hq, Lq, Lk]; 0 broadcasts a dimension */
  const float *bias;      /* [B, Hq, Lq, Lk] additive bias, −inf masks, or NULL */
  int64_t bias_stride[4]; /* default: packed [B, Hq, Lq, Lk]; 0 broadcasts a dimension */

  /* Packed sequences (see "Packed sequences"): row offsets, or NULL for [B, H, L, ·] tensors. */
  const int64_t *cu_seqlens_q; /* [batch + 1] query rows of each sequence in Q, O, LSE, dO, dQ */
  const int64_t *cu_seqlens_k; /* [batch + 1] key rows of each sequence in K, V, dK, dV */

  /* Attention dropout (see "Dropout"; training): 0 = off. */
  float dropout;         /* probability in [0, 1) that a visible pair's weight is dropped */
  uint64_t dropout_seed; /* which pairs: the same seed drops the same pairs, forward and backward */

  /* Paged K and V (see "Paged K and V"; attn_forward only, attn_backward refuses them). */
  const int32_t *block_table; /* [batch, ceil(len_k / page_size)] page of each page_size keys, or
                                 NULL: K and V are ordinary [B, Hkv, Lk, ·] tensors */
  int64_t block_table_stride; /* entries between batch rows of block_table: −1 (the default) =
                                 ceil(len_k / page_size); 0 = one row for every batch item */
  int64_t page_size;          /* keys per page, ≥ 1 (used only with block_table) */
  int64_t num_pages;          /* pages in the K and V pools, ≥ 0 (used only with block_table) */

  /* Element types of the inputs (see attn_dtype); attn_params_init sets ATTN_DTYPE_F32. */
  attn_dtype q_dtype, k_dtype, v_dtype;

  /* Execution. */
  int threads;        /* 0 = one per online CPU; otherwise 1..ATTN_MAX_THREADS. An upper bound: a
                       * call whose work would take one core under ~100 µs (a decode step of a
                       * small model, a few heads of 64 tokens) runs on the calling thread alone,
                       * as waking workers costs more than they save; results never depend on it */
  attn_kernel kernel; /* ATTN_KERNEL_AUTO unless you need a specific implementation */

  /* Workspace (attn_forward and attn_backward; every other function ignores it). NULL (the
   * default): each call allocates its extra memory and frees it before it returns. A fresh
   * allocation costs page faults, ~2 µs per 4 KiB page here: 6 % of a backward at Lq = Lk = 2048,
   * 20 % of BERT's attention on a batch of 32 × 128 tokens (docs/performance.md). Callers that
   * call again and again (a training step, a model's layers) can keep one block instead:
   *     size_t n;  attn_forward_scratch_bytes(&p, with_probs, &n);  // same p as the calls
   *     p.workspace = aligned_alloc(64, n ? (n + 63) / 64 * 64 : 64);  p.workspace_bytes = n;
   * Then the call takes all its extra memory from [workspace, workspace + workspace_bytes) and
   * allocates nothing. Rules: 64-byte aligned; at least the bytes the scratch query returns for
   * these parameters (it depends on the shapes, options, threads and kernel; a smaller one is
   * ATTN_STATUS_INVALID_ARGUMENT, with nothing written); not overlapping any input or output;
   * one call at a time (concurrent calls need a workspace each). Its contents are scratch before
   * and after a call. Results are bitwise those of a call without it. */
  void *workspace;
  size_t workspace_bytes;
} attn_params;

#define ATTN_MAX_THREADS 1024

/* Sets every field of *p to its default: the given sizes, packed strides ([B, H, L, D] for Q, K,
 * V, O; [B, Hq, Lq] for LSE; [B, Hq, Lq, Lk] for P, mask and bias), default scale, no softcap, no
 * ALiBi, not causal, alignment unset, unbounded window, no kv_len/q_len/mask/bias, sequences not
 * packed (cu_seqlens_q/k NULL), no dropout (0, seed 0), K and V not paged (block_table NULL,
 * block_table_stride −1), fp32 inputs, threads = 0, kernel AUTO. Never fails; sizes are checked
 * by attn_forward. */
ATTN_API void attn_params_init(attn_params *p, int64_t batch, int64_t heads_q, int64_t heads_kv,
                               int64_t len_q, int64_t len_k, int64_t dim, int64_t dim_v);

/* Strides of a packed array of shape [n0, n1, n2, n3] (n0 is not needed): {n1·n2·n3, n2·n3, n3, 1}.
 */
ATTN_API void attn_strides_packed(int64_t stride[4], int64_t n1, int64_t n2, int64_t n3);

/* Strides, in [B, H, L, D] index order, of a tensor stored as [B, L, H, D] in memory (the
 * "BSHD" layout of most projection outputs): {L·H·D, D, H·D, 1}. */
ATTN_API void attn_strides_blhd(int64_t stride[4], int64_t heads, int64_t len, int64_t dim);

/* Dropout: 1 if the weight of query i, key j of batch item b, head h is kept under p's dropout
 * and dropout_seed (always 1 when p->dropout is 0), as attn_forward and attn_backward apply it
 * (see "Dropout"). Indices are logical (as in P); p is not otherwise validated. */
ATTN_API int attn_dropout_keep(const attn_params *p, int64_t b, int64_t h, int64_t i, int64_t j);

/*
 * The forward pass.
 *   q [B, Hq, Lq, D], k [B, Hkv, Lk, D], v [B, Hkv, Lk, Dv]: read only; float arrays, or uint16_t
 *     arrays of fp16 / bf16 bits or uint8_t arrays of fp8 bits as p->q_dtype, k_dtype and v_dtype
 *     say.
 *   o [B, Hq, Lq, Dv]: overwritten.
 *   lse [B, Hq, Lq]: overwritten if non-NULL (natural log; −inf for rows with no visible key).
 *   probs [B, Hq, Lq, Lk]: overwritten if non-NULL with the exact attention weights.
 * Extra memory: O(threads · tile) for the fused kernels, plus 8 bytes per key and KV head
 * (B·Hkv·(Lk + 1) counts of V rows holding NaN or inf, when V is read in place: contiguous
 * columns, Dv a multiple of the kernel's column block — 16 for avx2 — and more than one query
 * block or head per V row), a packed copy of K when several query blocks or heads read each K
 * row and the copy takes at most 64 MiB (B·Hkv·Lk·D floats, Lk rounded up to the kernel's column
 * block) — or, with short keys (a head's copy at most 1 MiB), one head's copy per thread and no
 * V-row counts — and the split-key partials (decode,
 * and prefill with fewer than 8 batch·head·query block items against ≥ 1024 keys: (Dv + 2) floats
 * per query row and key chunk); the P output itself when requested. Narrow (16- or 8-bit) or paged
 * K or V adds one widened tile per worker (ref: a widened fp32 copy of every narrow input, and of K
 * and V when paged). Returns ATTN_STATUS_OK, or an error status with nothing written (see
 * attn_last_error()). Thread-safe: concurrent calls on disjoint outputs are fine and match serial
 * calls bitwise.
 */
ATTN_API attn_status attn_forward(const attn_params *p, const void *q, const void *k, const void *v,
                                  float *o, float *lse, float *probs);

/* The extra memory (bytes) attn_forward allocates for this call (with_probs: whether P will be
 * requested): tile scratch, V-row counts, packed K and split-key partials for the fused kernels,
 * one row of scores for ref; the outputs are the caller's. A multiple of 64, and the least
 * workspace_bytes a workspace for the call may have (see attn_params.workspace). Validates p like
 * attn_forward (pointers are not needed: pass the shapes, strides and options). Returns
 * ATTN_STATUS_OK and sets *bytes. */
ATTN_API attn_status attn_forward_scratch_bytes(const attn_params *p, int with_probs,
                                                size_t *bytes);

/*
 * The backward pass: gradients of a loss L with respect to Q, K, V (and the bias), given
 * dO = ∂L/∂O. FlashAttention-2 form: the attention weights are recomputed tile by tile from the
 * forward's LSE, so the extra memory is O(L), never O(Lq·Lk). For each visible pair,
 *     P = exp(s − LSE),  dP = dO·v,  Δ = rowsum(dO∘O),  dS = P·(dP − Δ)   (= ∂L/∂s)
 *     dBias += dS,  dq += scale·dS'·k,  dk += scale·dS'·q,  dv += P·dO
 * with dS' = dS·(1 − tanh²(x/c)) under softcap c (x = scale·q·k), else dS' = dS.
 *   q, k, v: the forward's inputs, of the types p->q_dtype, k_dtype, v_dtype (narrow inputs are
 *     widened to fp32 copies first: (B·Hq·Lq·D + B·Hkv·Lk·(D + Dv)) floats of extra memory at
 *     most; the gradients are fp32); o, lse: its outputs (o_stride, lse_stride; lse is required).
 *     The backward is this function of (q, k, v, o, lse, dout): with the o and lse of
 *     attn_forward(p, q, k, v, ...) it is the gradient of that call; with a merged O and LSE over
 *     a larger key set (attn_merge, ring attention) it is that key block's share of the gradient.
 *   dout [B, Hq, Lq, Dv] (dout_stride): ∂L/∂O.
 *   dq [B, Hq, Lq, D], dk [B, Hkv, Lk, D], dv [B, Hkv, Lk, Dv] (dq/dk/dv_stride): overwritten,
 *     never accumulated. With grouped-query heads, dk and dv sum over the query heads of a group.
 *   dbias: NULL, or ∂L/∂bias (requires p->bias), overwritten: the bias's shape with size 1 in
 *     every dimension whose bias_stride is 0, i.e. summed over the dimensions the bias is
 *     broadcast over; written with dbias_stride (set it to match, e.g. attn_strides_packed for
 *     [1, 1, Lq, Lk]). Entries of pairs that are never visible are 0.
 * Every feature of the forward is differentiated: masks, windows, kv_len, q_len, alignment, bias,
 * softcap (through tanh), ALiBi (a constant: slopes get no gradient), GQA, Dv ≠ D, strides, and
 * sinks (through the LSE; the sinks' own gradient is attn_backward_sinks below).
 * Rows with no visible key get dQ = 0 and add nothing to dK, dV or dBias; NaN or inf
 * stored at invisible positions of K, V or the bias never reaches a gradient (bitwise as if it
 * were not there). Deterministic: bitwise identical results for any thread count (fixed reduction
 * order, no atomics). Extra memory: O(threads · tile) plus Q and dO packed (B·Hq·Lq·(D + Dv)
 * floats), Δ and LSE (B·Hq·Lq floats each), key ranges (16 bytes per query row) and a partial dQ
 * per key slice (one slice when batch·heads_kv ≥ 8, up to 8 otherwise; see
 * attn_backward_scratch_bytes). Parallelism: the main pass's work items are (batch, KV head, key
 * slice) with ⌈8 / (batch·heads_kv)⌉ slices (at most one per 64 keys) — a rule on the shape
 * alone, so that the result cannot depend on the thread count — and threads beyond that many
 * items wait in it (more slices would cost every call: a floor of 16 items instead of 8 took
 * 2–8 % longer on 2 cores).
 * Limit: LSE is fp32, so in a row whose scores are so large in magnitude that fp32 cannot resolve
 * LSE − max s (|s| above ~1e7, e.g. a −1e30 bias on every visible key) the recomputed weights are
 * inexact (the forward's own scores have lost those digits too).
 * Errors: as attn_forward; nothing written on error. Paged K and V (block_table) are
 * ATTN_STATUS_UNSUPPORTED: training keeps K and V as ordinary tensors.
 */
ATTN_API attn_status attn_backward(const attn_params *p, const void *q, const void *k,
                                   const void *v, const float *o, const float *lse,
                                   const float *dout, float *dq, float *dk, float *dv,
                                   float *dbias);

/*
 * The gradient of the sink logits (p->sinks is required), from the forward's o, lse and
 * dout = ∂L/∂O (o_stride, lse_stride, dout_stride):
 *     dsinks[h] = −Σ_{b,i} exp(sinks[h] − LSE[b,h,i]) · Σ_d dO[b,h,i,d]·O[b,h,i,d]
 * (the sink's weight times −Δ, summed over the rows of head h below qlen(b): padding rows'
 * dO is never read), overwritten, [heads_q] contiguous.
 * 0 for a sink of −inf. Summed in double in (b, i) order: deterministic. Errors as attn_backward.
 */
ATTN_API attn_status attn_backward_sinks(const attn_params *p, const float *o, const float *lse,
                                         const float *dout, float *dsinks);

/* The extra memory (bytes) attn_backward allocates for this call (with_dbias: whether dbias will
 * be requested): a multiple of 64, and the least workspace_bytes a workspace for the call may
 * have. Validates p like attn_backward, without pointers. */
ATTN_API attn_status attn_backward_scratch_bytes(const attn_params *p, int with_dbias,
                                                 size_t *bytes);

/*
 * Merging partial results. When the keys of one attention call are split into disjoint sets
 * (split-key decode, ring attention across machines, a KV cache in pages), each set's call gives
 * a partial O_k and LSE_k for the same queries; attn_merge combines them into exactly the result
 * of one call over the union of the keys:
 *     LSE = log Σ_k exp(LSE_k),   O = Σ_k exp(LSE_k − LSE) · O_k      (per row, fp64 inside)
 * Parts with LSE_k = −inf (no visible key) contribute nothing, so an empty part never matters and
 * a row empty in every part gives O = +0, LSE = −inf; a NaN LSE_k makes the row NaN. With
 * attention sinks, give p->sinks to exactly one part's call (the sink is one more key).
 *   p: the parameters of the per-part calls; only batch, heads_q, len_q, dim_v, o_stride,
 *     lse_stride (for every part and for the outputs), threads and the validity of the rest are
 *     used. n_parts in [0, ATTN_MAX_MERGE_PARTS].
 *   o_parts[k] [B, Hq, Lq, Dv], lse_parts[k] [B, Hq, Lq]: the parts.
 *   o (overwritten), lse (overwritten if non-NULL): the merged result; o may be o_parts[k] and
 *     lse may be lse_parts[k] (in-place accumulation); other overlaps are errors.
 */
#define ATTN_MAX_MERGE_PARTS 65536
ATTN_API attn_status attn_merge(const attn_params *p, int n_parts, const float *const *o_parts,
                                const float *const *lse_parts, float *o, float *lse);

/*
 * The backward of attn_merge: given the merged o, lse and dout = ∂L/∂O (dout_stride) and optionally
 * dlse = ∂L/∂LSE (lse_stride, NULL = 0), writes for every part, with W_k = exp(LSE_k − LSE):
 *     do_parts[k] = W_k · dout                       (dout_stride)
 *     dlse_parts[k] = W_k · (dout·(O_k − O) + dlse)  (lse_stride; the array may be NULL)
 * Note that a key block's attn_backward with the merged o and lse (not its own) already gives that
 * block's gradients directly; this function is for chaining through a merge explicitly.
 */
ATTN_API attn_status attn_merge_backward(const attn_params *p, int n_parts,
                                         const float *const *o_parts, const float *const *lse_parts,
                                         const float *o, const float *lse, const float *dout,
                                         const float *dlse, float *const *do_parts,
                                         float *const *dlse_parts);

/* Conversions between fp32 and the narrow types (t = ATTN_DTYPE_F16, BF16, F8E4M3 or F8E5M2; with
 * ATTN_DTYPE_F32 they copy). attn_to_f32 is exact. attn_from_f32 rounds to nearest, ties to even,
 * as numpy's astype(float16) and PyTorch's .to(torch.bfloat16) / .to(torch.float8_e4m3fn) do:
 * values beyond the type's range become ±inf — for E4M3, which has no inf, NaN (magnitudes above
 * 464, the midpoint past 448, and ±inf) — NaN stays NaN (quiet; E4M3 and E5M2: S.1111.111), tiny
 * values become subnormals or ±0. Scale before rounding to keep E4M3 values in range. Return 0, or
 * −1 (writing nothing) for an unknown t or a NULL pointer with n > 0. */
ATTN_API int attn_to_f32(attn_dtype t, const void *src, float *dst, size_t n);
ATTN_API int attn_from_f32(attn_dtype t, const float *src, void *dst, size_t n);

/* "f32", "f16", "bf16", "f8e4m3", "f8e5m2"; "unknown" otherwise. attn_dtype_from_name returns
 * ATTN_DTYPE_COUNT_ for an unknown name. */
ATTN_API const char *attn_dtype_name(attn_dtype t);
ATTN_API attn_dtype attn_dtype_from_name(const char *name);

/* Bytes per element: 4 (f32), 2 (f16, bf16), 1 (f8e4m3, f8e5m2); 0 for an unknown t. */
ATTN_API size_t attn_dtype_size(attn_dtype t);

/* A static, never-NULL description of a status ("invalid argument"); "unknown status" otherwise. */
ATTN_API const char *attn_status_str(attn_status status);

/* The detail message of the last attn call on this thread ("" if it succeeded), e.g.
 * "attn_forward: dim (0) must be at least 1". Valid until the next attn call on this thread. */
ATTN_API const char *attn_last_error(void);

/* "0.1.0" */
ATTN_API const char *attn_version(void);

/* Kernel names: "auto", "ref", "generic", "avx2", "avx512". attn_kernel_from_name returns
 * ATTN_KERNEL_COUNT_ for an unknown name. */
ATTN_API const char *attn_kernel_name(attn_kernel kernel);
ATTN_API attn_kernel attn_kernel_from_name(const char *name);

/* 1 if this CPU and build can run the kernel, else 0. AUTO is always supported. */
ATTN_API int attn_kernel_supported(attn_kernel kernel);

/* The kernel ATTN_KERNEL_AUTO resolves to on this CPU: the ATTN_ISA choice if it is valid and
 * supported, else the fastest supported kernel. */
ATTN_API attn_kernel attn_kernel_auto(void);

/* Writes the CPU features attn detected (cpuid plus the OS's xgetbv check), space-separated, e.g.
 * "sse4.2 avx avx2 fma", into buf (always NUL-terminated). Returns buf. */
ATTN_API char *attn_cpu_features(char *buf, size_t size);

#ifdef __cplusplus
}
#endif

#endif /* ATTN_H */
