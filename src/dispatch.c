/*
 * dispatch.c — the kernel table: names, availability and entry points, best first. ATTN_KERNEL_AUTO
 * resolves to the first supported entry. A kernel the CPU cannot run is an error, never a fallback.
 */
#include "internal.h"

#include <string.h>

typedef struct kernel_entry {
  attn_kernel id;
  const char *name;
  int auto_rank; /* lower is preferred by AUTO; 0 = never chosen by AUTO */
  attn__fwd_fn fwd;
} kernel_entry;

static const kernel_entry kernels[] = {
    {ATTN_KERNEL_GENERIC, "generic", 1, attn__fwd_f32__generic},
    {ATTN_KERNEL_REF, "ref", 0, attn__fwd_f32__ref},
};
enum { N_KERNELS = sizeof kernels / sizeof kernels[0] };

static const kernel_entry *find(attn_kernel id) {
  for (int i = 0; i < N_KERNELS; i++)
    if (kernels[i].id == id) return &kernels[i];
  return NULL;
}

const char *attn_kernel_name(attn_kernel kernel) {
  if (kernel == ATTN_KERNEL_AUTO) return "auto";
  const kernel_entry *e = find(kernel);
  return e ? e->name : "unknown";
}

attn_kernel attn_kernel_from_name(const char *name) {
  if (!name) return ATTN_KERNEL_COUNT_;
  if (strcmp(name, "auto") == 0) return ATTN_KERNEL_AUTO;
  for (int i = 0; i < N_KERNELS; i++)
    if (strcmp(name, kernels[i].name) == 0) return kernels[i].id;
  return ATTN_KERNEL_COUNT_;
}

/* Both kernels are portable C and run everywhere; SIMD entries will test CPU features here. */
int attn_kernel_supported(attn_kernel kernel) {
  return kernel == ATTN_KERNEL_AUTO || find(kernel) != NULL;
}

attn_kernel attn_kernel_auto(void) {
  const kernel_entry *best = NULL;
  for (int i = 0; i < N_KERNELS; i++)
    if (kernels[i].auto_rank > 0 && attn_kernel_supported(kernels[i].id) &&
        (!best || kernels[i].auto_rank < best->auto_rank))
      best = &kernels[i];
  return best ? best->id : ATTN_KERNEL_REF;
}

attn__fwd_fn attn__kernel_fwd(attn_kernel kernel) {
  const kernel_entry *e = find(kernel);
  return e ? e->fwd : NULL;
}
