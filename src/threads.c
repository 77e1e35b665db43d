/*
 * threads.c — fork/join parallel-for on pthreads with dynamic hand-out of items. Threads are
 * created per call (a persistent pool is future work). Determinism does not depend on the schedule:
 * every item writes its own outputs with the same code whichever worker runs it.
 */
#include "internal.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

typedef struct pool_job {
  attn__task_fn fn;
  void *ctx;
  int64_t n_items;
  atomic_llong next;
} pool_job;

typedef struct worker_arg {
  pool_job *job;
  int worker;
} worker_arg;

static void run_items(pool_job *job, int worker) {
  for (;;) {
    int64_t item = atomic_fetch_add_explicit(&job->next, 1, memory_order_relaxed);
    if (item >= job->n_items) return;
    job->fn(job->ctx, item, worker);
  }
}

static void *worker_main(void *arg) {
  worker_arg *w = arg;
  run_items(w->job, w->worker);
  return NULL;
}

void attn__parallel_for(int workers, int64_t n_items, attn__task_fn fn, void *ctx) {
  pool_job job = {fn, ctx, n_items, 0};
  if (workers > n_items) workers = (int)n_items;
  pthread_t tids[ATTN_MAX_THREADS];
  worker_arg args[ATTN_MAX_THREADS];
  int started = 0;
  for (int w = 1; w < workers; w++) {
    args[w] = (worker_arg){&job, w};
    /* if the OS refuses a thread, the others (and the caller) take over its items */
    if (pthread_create(&tids[w], NULL, worker_main, &args[w]) != 0) break;
    started = w;
  }
  run_items(&job, 0);
  for (int w = 1; w <= started; w++)
    pthread_join(tids[w], NULL);
}
