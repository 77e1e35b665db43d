/*
 * test_determinism.c — the same input gives bitwise the same output: 50 repeated runs, thread
 * counts {1, 2, 3, 4, 7, 8, 16, nproc}, and concurrent calls from user threads, for every kernel;
 * the split-key paths (decode, few query blocks, paged decode with padding query rows) over the
 * same thread counts.
 */
#include "harness.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct user_thread {
  tcase *c;
  attn_kernel kern;
  float *o, *lse;
  attn_status st;
} user_thread;

static void *user_call(void *arg) {
  user_thread *u = arg;
  attn_params p = u->c->p; /* each thread its own params, shared inputs, own packed outputs */
  attn_strides_packed(p.o_stride, p.heads_q, p.len_q, p.dim_v);
  p.lse_stride[0] = p.heads_q * p.len_q, p.lse_stride[1] = p.len_q, p.lse_stride[2] = 1;
  p.kernel = u->kern;
  p.threads = 2;
  u->st = attn_forward(&p, tbuf_f32(&u->c->q), tbuf_f32(&u->c->k), tbuf_f32(&u->c->v), u->o, u->lse,
                       NULL);
  return NULL;
}

int main(void) {
  const int nproc = (int)sysconf(_SC_NPROCESSORS_ONLN);
  const int counts[] = {1, 2, 3, 4, 7, 8, 16, nproc};
  for (int k = 1; k < ATTN_KERNEL_COUNT_; k++) {
    const attn_kernel kern = (attn_kernel)k;
    if (!attn_kernel_supported(kern)) continue;
    /* batch 5 × 8 heads × 3 query blocks: more items than threads, and uneven causal blocks */
    tspec s = tspec_shape(5, 8, 2, 150, 170, 32, 24);
    s.causal = 1, s.align = ATTN_ALIGN_BOTTOM_RIGHT, s.mask = MASK_FULL, s.bias = BIAS_FULL;
    s.kv_len = 1, s.softcap = 4.0f, s.alibi = 1, s.layout = LAYOUT_BLHD;
    if (kern == ATTN_KERNEL_REF) s.B = 2; /* the oracle is slow; one kernel is enough to stress */
    tcase c;
    tcase_make(&c, &s);
    tresult first = t_run_gather(&c, kern, 1);
    int repeats_ok = 1;
    for (int r = 0; r < 50; r++) {
      tresult again = t_run_gather(&c, kern, 2);
      repeats_ok &= tresult_same(&first, &again);
      tresult_free(&again);
    }
    CHECKF(repeats_ok, "50 repeated runs are not bitwise identical (%s)", attn_kernel_name(kern));
    for (size_t t = 0; t < sizeof counts / sizeof counts[0]; t++) {
      tresult other = t_run_gather(&c, kern, counts[t]);
      CHECKF(tresult_same(&first, &other), "%d threads differ from 1 thread (%s)", counts[t],
             attn_kernel_name(kern));
      tresult_free(&other);
    }
    /* four user threads calling at once on disjoint outputs match the serial result */
    enum { N_USERS = 4 };
    user_thread users[N_USERS];
    pthread_t tid[N_USERS];
    for (int u = 0; u < N_USERS; u++) {
      users[u] = (user_thread){&c, kern, malloc(4 * first.no), malloc(4 * first.nl), 0};
      pthread_create(&tid[u], NULL, user_call, &users[u]);
    }
    for (int u = 0; u < N_USERS; u++) {
      pthread_join(tid[u], NULL);
      CHECK(users[u].st == ATTN_STATUS_OK);
      /* snapshots are gathered in index order, which is the packed layout the users wrote */
      CHECKF(memcmp(users[u].lse, first.lse, 4 * first.nl) == 0 &&
                 memcmp(users[u].o, first.o, 4 * first.no) == 0,
             "concurrent call %d differs from the serial result (%s)", u, attn_kernel_name(kern));
      free(users[u].o), free(users[u].lse);
    }
    tresult_free(&first);
    tcase_free(&c);

    /* the split-key path, every thread count bitwise equal: decode (Lq = 3 against 2600 keys),
     * then prefill with few query blocks (two heads of one KV group, 130 queries: 3 row blocks),
     * then decode from a paged cache (pages of 16 keys, shuffled) with padding query rows */
    tspec d = tspec_shape(2, 8, 2, 3, 2600, 64, 64);
    d.causal = 1, d.align = ATTN_ALIGN_BOTTOM_RIGHT, d.kv_len = 1, d.bias = BIAS_FULL;
    tspec f = tspec_shape(1, 2, 1, 130, 2600, 64, 64);
    f.window_left = 900, f.window_right = 3, f.bias = BIAS_FULL, f.align = ATTN_ALIGN_BOTTOM_RIGHT;
    tspec g = tspec_shape(3, 8, 2, 4, 2600, 64, 64);
    g.causal = 1, g.align = ATTN_ALIGN_BOTTOM_RIGHT, g.kv_len = 1, g.q_len = 1;
    const tspec *splits[] = {&d, &f, &g};
    static const char *const names[] = {"decode", "few query blocks", "paged decode"};
    for (int si = 0; si < 3; si++) {
      tcase dc;
      tcase_make(&dc, splits[si]);
      if (splits[si] == &g) tcase_page(&dc, 16, 0, 0, 3);
      touts o1, on;
      touts_make(&o1, &dc, 1, 0);
      CHECK(t_run(&dc, kern, 1, &o1) == ATTN_STATUS_OK);
      for (size_t t = 0; t < sizeof counts / sizeof counts[0]; t++) {
        touts_make(&on, &dc, 1, 0);
        CHECK(t_run(&dc, kern, counts[t], &on) == ATTN_STATUS_OK);
        CHECKF(memcmp(o1.o.alloc, on.o.alloc, 2 * T_GUARD_BYTES + o1.o.extent_bytes) == 0 &&
                   memcmp(o1.lse.alloc, on.lse.alloc, 2 * T_GUARD_BYTES + o1.lse.extent_bytes) == 0,
               "%s: %d threads differ from 1 thread (%s)", names[si], counts[t],
               attn_kernel_name(kern));
        touts_free(&on);
      }
      touts_free(&o1);
      tcase_free(&dc);
    }
  }
  return t_finish("test_determinism");
}
