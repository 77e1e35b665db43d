/*
 * threads.c — parallel-for over a small persistent pool of pthreads.
 *
 * Workers are started on first need (up to the largest thread count asked for), then park on a
 * condition variable between calls, so a call creates no threads. The caller runs as worker 0.
 * Items are handed out dynamically through an atomic counter; determinism never depends on the
 * schedule, because every item writes its own outputs with the same code whichever worker runs
 * it. One job uses the pool at a time: a call that finds it busy (another user thread is inside
 * attn) runs on threads of its own instead, with the same results.
 */
#include "internal.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

typedef struct pool_job {
  attn__task_fn fn;
  void *ctx;
  int64_t n_items;
  int workers; /* worker indices [0, workers) take part */
  atomic_llong next;
} pool_job;

static void run_items(pool_job *job, int worker) {
  for (;;) {
    int64_t item = atomic_fetch_add_explicit(&job->next, 1, memory_order_relaxed);
    if (item >= job->n_items) return;
    job->fn(job->ctx, item, worker);
  }
}

/* ---- the persistent pool ---- */

static struct {
  pthread_mutex_t busy; /* held by the call that owns the pool */
  pthread_mutex_t lock; /* guards everything below */
  pthread_cond_t wake, done;
  int started;              /* workers 1..started exist */
  unsigned long generation; /* bumped for each job */
  pool_job *job;
  int running; /* workers still inside the current job */
  /* the generation each worker starts from, written by its creator under `lock`, so a worker that
   * is slow to start still takes part in the job published right after its creation */
  unsigned long start_generation[ATTN_MAX_THREADS];
} pool = {PTHREAD_MUTEX_INITIALIZER,
          PTHREAD_MUTEX_INITIALIZER,
          PTHREAD_COND_INITIALIZER,
          PTHREAD_COND_INITIALIZER,
          0,
          0,
          NULL,
          0,
          {0}};

static void *pool_worker(void *arg) {
  const int index = (int)(intptr_t)arg;
  pthread_mutex_lock(&pool.lock);
  unsigned long seen = pool.start_generation[index];
  for (;;) {
    while (pool.generation == seen)
      pthread_cond_wait(&pool.wake, &pool.lock);
    seen = pool.generation;
    pool_job *job = pool.job;
    pthread_mutex_unlock(&pool.lock);
    if (index < job->workers) run_items(job, index);
    pthread_mutex_lock(&pool.lock);
    if (--pool.running == 0) pthread_cond_signal(&pool.done);
  }
  return NULL;
}

/* Starts workers up to index want - 1 (the caller is worker 0); returns how many exist. Called
 * with pool.busy held, so no job is running. */
static int pool_grow(int want) {
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  while (pool.started < want - 1) {
    pthread_t tid;
    pthread_mutex_lock(&pool.lock);
    pool.start_generation[pool.started + 1] = pool.generation;
    int ok = pthread_create(&tid, &attr, pool_worker, (void *)(intptr_t)(pool.started + 1)) == 0;
    if (ok) pool.started++;
    pthread_mutex_unlock(&pool.lock);
    if (!ok) break; /* the OS refused: fewer workers, same results */
  }
  pthread_attr_destroy(&attr);
  return pool.started;
}

/* ---- fallback: threads of its own, for a call that finds the pool busy ---- */

typedef struct own_arg {
  pool_job *job;
  int worker;
} own_arg;

static void *own_worker(void *arg) {
  own_arg *a = arg;
  run_items(a->job, a->worker);
  return NULL;
}

static void run_on_own_threads(pool_job *job) {
  pthread_t tids[ATTN_MAX_THREADS];
  own_arg args[ATTN_MAX_THREADS];
  int started = 0;
  for (int w = 1; w < job->workers; w++) {
    args[w] = (own_arg){job, w};
    if (pthread_create(&tids[w], NULL, own_worker, &args[w]) != 0) break;
    started = w;
  }
  run_items(job, 0);
  for (int w = 1; w <= started; w++)
    pthread_join(tids[w], NULL);
}

static double serial_us = 100.0;

void attn__set_serial_us(double us) { serial_us = us; }

int attn__workers_for(int threads, int64_t n_items, double est_us) {
  if (est_us < serial_us || n_items <= 1 || threads <= 1) return 1;
  return threads < n_items ? threads : (int)n_items;
}

void attn__parallel_for(int workers, int64_t n_items, attn__task_fn fn, void *ctx) {
  if (workers > n_items) workers = (int)n_items;
  pool_job job = {fn, ctx, n_items, workers, 0};
  if (workers <= 1) {
    run_items(&job, 0);
    return;
  }
  if (pthread_mutex_trylock(&pool.busy) != 0) {
    run_on_own_threads(&job);
    return;
  }
  const int extra = pool_grow(workers);
  if (extra + 1 < job.workers) job.workers = extra + 1;
  pthread_mutex_lock(&pool.lock);
  pool.job = &job;
  pool.running = pool.started; /* every worker wakes; those beyond job.workers just report back */
  pool.generation++;
  pthread_cond_broadcast(&pool.wake);
  pthread_mutex_unlock(&pool.lock);
  run_items(&job, 0);
  pthread_mutex_lock(&pool.lock);
  while (pool.running > 0)
    pthread_cond_wait(&pool.done, &pool.lock);
  pool.job = NULL;
  pthread_mutex_unlock(&pool.lock);
  pthread_mutex_unlock(&pool.busy);
}
