/*
 * threads.c — parallel-for over a small persistent pool of pthreads.
 *
 * Workers are started on first need (up to the largest thread count asked for), then spin for a
 * moment and park on a condition variable between calls, so a call creates no threads. The caller
 * runs as worker 0. Items are handed out dynamically through an atomic counter; determinism never
 * depends on the schedule, because every item writes its own outputs with the same code whichever
 * worker runs it. One job uses the pool at a time: a call that finds it busy (another user thread
 * is inside attn) runs on threads of its own instead, with the same results.
 */
#include "internal.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

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
  int started;             /* workers 1..started exist */
  atomic_ulong generation; /* bumped for each job (under `lock`; read without it while spinning) */
  pool_job *job;
  atomic_int running; /* workers still inside the current job (likewise) */
  int spin;           /* 1 while the caller and workers 1..started fit the online CPUs */
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
          0,
          {0}};

/* Before sleeping on a condition variable, a worker waiting for the next job and the caller
 * waiting for the workers spin for up to SPIN_NS: the next pass of the same call (the forward
 * makes up to two) or a call that follows at once is then taken up without a futex sleep and
 * wake-up, which cost ~10–30 µs on the development machine's VM (two threads: decode of 8 heads
 * against 4096 keys 183–204 → 79–110 µs, B = 1 H = 4 L = 128 167–266 → 108–126 µs). Only while
 * the pool has no more threads than the machine has CPUs: oversubscribed, a spinning thread
 * would hold a CPU that a working one needs. */
enum { SPIN_NS = 50000 };

static int64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static inline void cpu_pause(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

/* One step of a spin that began at `start` (ns): pauses, and says whether SPIN_NS have passed
 * (the clock is read every 64th step). */
static int spin_over(int step, int64_t start) {
  cpu_pause();
  return step % 64 == 0 && now_ns() - start > SPIN_NS;
}

static void *pool_worker(void *arg) {
  const int index = (int)(intptr_t)arg;
  pthread_mutex_lock(&pool.lock);
  unsigned long seen = pool.start_generation[index];
  for (;;) {
    if (pool.spin && atomic_load(&pool.generation) == seen) { /* spin a while, then sleep */
      pthread_mutex_unlock(&pool.lock);
      const int64_t start = now_ns();
      for (int i = 1; atomic_load_explicit(&pool.generation, memory_order_relaxed) == seen &&
                      !spin_over(i, start);
           i++) {
      }
      pthread_mutex_lock(&pool.lock);
    }
    while (atomic_load(&pool.generation) == seen)
      pthread_cond_wait(&pool.wake, &pool.lock);
    seen = atomic_load(&pool.generation);
    pool_job *job = pool.job;
    pthread_mutex_unlock(&pool.lock);
    if (index < job->workers) run_items(job, index);
    pthread_mutex_lock(&pool.lock);
    if (atomic_fetch_sub(&pool.running, 1) == 1) pthread_cond_signal(&pool.done);
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
    pool.start_generation[pool.started + 1] = atomic_load(&pool.generation);
    int ok = pthread_create(&tid, &attr, pool_worker, (void *)(intptr_t)(pool.started + 1)) == 0;
    if (ok) pool.started++;
    pool.spin = pool.started + 1 <= attn__cpu_count();
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
  /* every worker wakes; those beyond job.workers just report back */
  atomic_store(&pool.running, pool.started);
  atomic_fetch_add(&pool.generation, 1);
  pthread_cond_broadcast(&pool.wake);
  pthread_mutex_unlock(&pool.lock);
  run_items(&job, 0);
  const int64_t start = now_ns();
  for (int i = 1; pool.spin && atomic_load_explicit(&pool.running, memory_order_relaxed) > 0 &&
                  !spin_over(i, start);
       i++) {
  }
  pthread_mutex_lock(&pool.lock);
  while (atomic_load(&pool.running) > 0)
    pthread_cond_wait(&pool.done, &pool.lock);
  pool.job = NULL;
  pthread_mutex_unlock(&pool.lock);
  pthread_mutex_unlock(&pool.busy);
}
