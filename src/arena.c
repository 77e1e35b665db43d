/* arena.c — the extra memory of one call (internal.h): the caller's workspace, or blocks allocated
 * for the call and freed when it ends. */
#include "internal.h"

#include <stdatomic.h>
#include <stdlib.h>

static atomic_long fallbacks;

void attn__arena_init(attn__arena *a, void *base, size_t size) {
  *a = (attn__arena){0};
  a->base = base;
  a->size = base ? size : 0;
}

size_t attn__arena_round(size_t bytes) {
  return bytes > SIZE_MAX - 63 ? SIZE_MAX : (bytes + 63) & ~(size_t)63;
}

void *attn__arena_alloc(attn__arena *a, size_t bytes) {
  if (bytes == 0) return NULL;
  const size_t need = attn__arena_round(bytes);
  if (need == SIZE_MAX) return NULL;
  if (a->base && need <= a->size - a->used) {
    void *block = a->base + a->used;
    a->used += need;
    return block;
  }
  if (a->base) atomic_fetch_add_explicit(&fallbacks, 1, memory_order_relaxed);
  if (a->n_owned == ATTN__ARENA_BLOCKS) return NULL;
  void *block = aligned_alloc(64, need);
  if (block) a->owned[a->n_owned++] = block;
  return block;
}

void attn__arena_release(attn__arena *a) {
  for (int i = 0; i < a->n_owned; i++)
    free(a->owned[i]);
  a->n_owned = 0;
  a->used = 0;
}

long attn__arena_fallbacks(void) { return atomic_load_explicit(&fallbacks, memory_order_relaxed); }
