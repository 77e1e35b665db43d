/*
 * paged_kv_cache.c — decoding several sequences from one paged KV cache, as a serving engine does
 * (vLLM's PagedAttention): keys and values live in a pool of fixed-size pages, each sequence owns
 * a list of pages (its row of the block table), a page is taken from a free list when a sequence's
 * last page fills up and given back when the sequence ends, and two sequences with the same
 * prompt share that prompt's full pages instead of copying them.
 *
 * Each step runs every sequence's new tokens in one attn_forward call (continuous batching): a
 * sequence that just arrived brings its prompt (a prefill chunk of several queries), the others one
 * generated token each (decode). p.q_len says how many query rows each sequence has (the rest of
 * the padded rows are padding and cost nothing), p.kv_len how many keys, p.block_table where they
 * are, and bottom-right causal alignment puts each sequence's queries at its newest positions.
 * Four query heads read two KV heads. Every step is checked: the paged call gives, bit for bit,
 * the result of the same call on the sequences' keys and values gathered into an ordinary
 * [B, Hkv, L, D] tensor, and padding rows are exactly zero. Pool slots that no sequence owns hold
 * NaN, so reading one would show.
 */
#include "example_util.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

enum { HQ = 4, HKV = 2, D = 16, PAGE = 4, N_PAGES = 10, MAX_SEQ = 3, MAX_PAGES = 6, MAX_NEW = 8 };
enum { MAX_LEN = MAX_PAGES * PAGE };

/* The pool: [page, slot, KV head, dim] (the layout of vLLM and FlashAttention's paged cache). */
static float k_pool[N_PAGES * PAGE * HKV * D], v_pool[N_PAGES * PAGE * HKV * D];
static int refs[N_PAGES]; /* sequences using each page; 0 = free */

typedef struct seq {
  const char *name;
  int tokens[MAX_LEN];        /* token ids: the prompt, then the generated ones */
  int len, fresh, steps_left; /* fresh: tokens appended since the last attention call */
  int32_t pages[MAX_PAGES];
} seq;

/* Deterministic stand-ins for the key, value and query projections of a token. */
static float feature(int token, int h, int d, float f) {
  return sinf(f * (float)(1 + d + 3 * h) + 0.37f * (float)token);
}

static int32_t take_page(void) {
  for (int32_t pg = 0; pg < N_PAGES; pg++)
    if (refs[pg] == 0) {
      refs[pg] = 1;
      return pg;
    }
  fprintf(stderr, "paged_kv_cache: the pool is full\n");
  exit(1);
}

static void give_back(seq *s) {
  for (int e = 0; e * PAGE < s->len; e++)
    if (--refs[s->pages[e]] == 0) /* a shared page stays while another sequence uses it */
      for (int i = 0; i < PAGE * HKV * D; i++)
        k_pool[s->pages[e] * PAGE * HKV * D + i] = v_pool[s->pages[e] * PAGE * HKV * D + i] = NAN;
}

/* Writes token t's key and value (every KV head) into its sequence's page, taking a new page when
 * t starts one. */
static void append(seq *s, int token) {
  const int t = s->len++;
  s->tokens[t] = token;
  if (t % PAGE == 0) s->pages[t / PAGE] = take_page();
  for (int h = 0; h < HKV; h++)
    for (int d = 0; d < D; d++) {
      const int at = ((s->pages[t / PAGE] * PAGE + t % PAGE) * HKV + h) * D + d;
      k_pool[at] = feature(token, h, d, 0.31f), v_pool[at] = feature(token, h, d, 0.17f);
    }
}

/* A new sequence with prompt ids first, first + 1, …; when `share` has the same first tokens, its
 * full pages of them are shared rather than written again. */
static void start(seq *s, const char *name, const int *prompt, int n, int steps, const seq *share) {
  memset(s, 0, sizeof *s);
  s->name = name, s->steps_left = steps;
  int shared = 0;
  while (share && shared < n && shared < share->len && prompt[shared] == share->tokens[shared])
    shared++;
  for (int e = 0; (e + 1) * PAGE <= shared; e++) { /* whole pages only: they are never written */
    s->pages[e] = share->pages[e], refs[s->pages[e]]++;
    memcpy(s->tokens + e * PAGE, prompt + e * PAGE, sizeof(int) * PAGE);
    s->len += PAGE;
  }
  while (s->len < n)
    append(s, prompt[s->len]), s->fresh++; /* the prompt's unshared tokens: a prefill chunk */
}

int main(void) {
  for (int i = 0; i < N_PAGES * PAGE * HKV * D; i++)
    k_pool[i] = v_pool[i] = NAN;
  seq seqs[MAX_SEQ], *run[MAX_SEQ];
  const int prompt_a[6] = {101, 102, 103, 104, 105, 106};
  const int prompt_b[6] = {101, 102, 103, 104, 205, 206}; /* the same first page as a */
  const int prompt_c[3] = {301, 302, 303};
  start(&seqs[0], "a", prompt_a, 6, 4, NULL);
  start(&seqs[1], "b", prompt_b, 6, 8, &seqs[0]);
  int n_run = 2;
  run[0] = &seqs[0], run[1] = &seqs[1];

  printf("paged KV cache: %d pages of %d tokens, %d query heads reading %d KV heads, D = %d\n",
         N_PAGES, PAGE, HQ, HKV, D);
  printf("b's prompt starts with a's first page of tokens: they share that page\n");
  printf("each step is one call: prefill chunks (several queries) and decode tokens (one)\n\n");
  for (int step = 0; n_run > 0; step++) {
    if (step == 5) { /* a has finished: c arrives and takes the pages a gave back */
      start(&seqs[2], "c", prompt_c, 3, 5, NULL);
      run[n_run++] = &seqs[2];
    }
    /* a generated token for every sequence not prefilling, then one call for all of them: query
     * row i < q_len[b] of sequence b is its token len − q_len[b] + i */
    int32_t table[MAX_SEQ * MAX_PAGES];
    int64_t kv_len[MAX_SEQ], q_len[MAX_SEQ], lq = 1;
    for (int b = 0; b < n_run; b++) {
      seq *s = run[b];
      if (s->fresh == 0) append(s, 1000 * (int)(s->name[0] - 'a' + 1) + s->len), s->fresh = 1;
      kv_len[b] = s->len, q_len[b] = s->fresh;
      if (q_len[b] > lq) lq = q_len[b];
      for (int e = 0; e < MAX_PAGES; e++)
        table[b * MAX_PAGES + e] = e * PAGE < s->len ? s->pages[e] : -1; /* −1: never read */
    }
    static float q[MAX_SEQ * HQ * MAX_NEW * D], o[MAX_SEQ * HQ * MAX_NEW * D],
        o_flat[MAX_SEQ * HQ * MAX_NEW * D];
    const size_t n_out = (size_t)(n_run * HQ * lq * D);
    for (int b = 0; b < n_run; b++) /* [B, Hq, lq, D]; padding rows are never read: NaN */
      for (int h = 0; h < HQ; h++)
        for (int i = 0; i < lq; i++)
          for (int d = 0; d < D; d++)
            q[((b * HQ + h) * lq + i) * D + d] =
                i < q_len[b] ? feature(run[b]->tokens[run[b]->len - q_len[b] + i], h, d, 0.53f)
                             : NAN;
    attn_params p;
    attn_params_init(&p, n_run, HQ, HKV, lq, MAX_LEN, D, D);
    p.causal = 1;
    p.align = ATTN_ALIGN_BOTTOM_RIGHT; /* each sequence's queries are its newest tokens */
    p.kv_len = kv_len;
    p.q_len = q_len;
    p.block_table = table;
    p.block_table_stride = MAX_PAGES;
    p.page_size = PAGE;
    p.num_pages = N_PAGES;
    attn_strides_blhd(p.k_stride, HKV, PAGE, D); /* [page, slot, head, dim] */
    attn_strides_blhd(p.v_stride, HKV, PAGE, D);
    for (int b = 0; b < n_run; b++)
      run[b]->fresh = 0;
    example_check(attn_forward(&p, q, k_pool, v_pool, o, NULL, NULL), "attn_forward (paged)");

    /* the check: the same call on the keys and values gathered into [B, Hkv, MAX_LEN, D] */
    static float k_flat[MAX_SEQ * HKV * MAX_LEN * D], v_flat[MAX_SEQ * HKV * MAX_LEN * D];
    for (int b = 0; b < n_run; b++)
      for (int h = 0; h < HKV; h++)
        for (int t = 0; t < MAX_LEN; t++)
          for (int d = 0; d < D; d++) {
            const int to = ((b * HKV + h) * MAX_LEN + t) * D + d;
            const int from = ((run[b]->pages[t / PAGE] * PAGE + t % PAGE) * HKV + h) * D + d;
            k_flat[to] = t < run[b]->len ? k_pool[from] : 0.0f;
            v_flat[to] = t < run[b]->len ? v_pool[from] : 0.0f;
          }
    attn_params flat = p;
    flat.block_table = NULL;
    attn_strides_packed(flat.k_stride, HKV, MAX_LEN, D);
    attn_strides_packed(flat.v_stride, HKV, MAX_LEN, D);
    example_check(attn_forward(&flat, q, k_flat, v_flat, o_flat, NULL, NULL),
                  "attn_forward (gathered)");
    int bad =
        0; /* a NaN (an unowned slot or a padding query was read), or a non-zero padding row */
    for (size_t x = 0; x < n_out; x++) {
      const int64_t i = (int64_t)(x / D) % lq, b = (int64_t)(x / D) / lq / HQ;
      bad |= isnan(o[x]) || (i >= q_len[b] && o[x] != 0.0f);
    }
    const int same = memcmp(o, o_flat, sizeof(float) * n_out) == 0;

    int free_pages = 0;
    for (int pg = 0; pg < N_PAGES; pg++)
      free_pages += refs[pg] == 0;
    printf("step %d:", step);
    for (int b = 0; b < n_run; b++) {
      printf("  %s %s %2d tokens, pages", run[b]->name, q_len[b] > 1 ? "prefills to" : "decodes at",
             run[b]->len);
      for (int e = 0; e * PAGE < run[b]->len; e++)
        printf("%s%d", e ? "," : " ", run[b]->pages[e]);
    }
    printf("  | %d free | %s\n", free_pages,
           same ? "bitwise equal to the gathered call" : "DIFFERENT");
    if (!same || bad) return 1;

    for (int b = 0; b < n_run; b++) /* finished sequences give their pages back */
      if (--run[b]->steps_left == 0) {
        printf("        %s finished: its pages go back to the pool\n", run[b]->name);
        give_back(run[b]);
        for (int c = b; c + 1 < n_run; c++)
          run[c] = run[c + 1];
        n_run--, b--;
      }
  }
  return 0;
}
