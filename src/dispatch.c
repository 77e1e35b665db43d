/*
 * dispatch.c — the kernel table: names, CPU requirements and entry points, best first.
 * ATTN_KERNEL_AUTO resolves to the kernel named by the environment variable ATTN_ISA if set (read
 * once), else to the first supported entry. A kernel the CPU cannot run is an error, never a
 * fallback.
 */
#include "internal.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static int always(void) { return 1; }
#if defined(__x86_64__) || defined(__i386__)
static int has_avx2_fma(void) { return attn__cpu_get()->avx2_fma; }
static int has_avx512(void) { return attn__cpu_get()->avx512 && attn__cpu_get()->avx2_fma; }
#endif

typedef struct kernel_entry {
  attn_kernel id;
  int auto_rank; /* lower is preferred by AUTO; 0 = never chosen by AUTO */
  int (*supported)(void);
  attn__fwd_fn fwd;
  attn__scratch_fn scratch;
  attn__bwd_fn bwd;
  attn__scratch_fn bwd_scratch;
} kernel_entry;

static const kernel_entry kernels[] = {
#if defined(__x86_64__) || defined(__i386__)
    {ATTN_KERNEL_AVX512, 1, has_avx512, attn__fwd_f32__avx512, attn__scratch_f32__avx512,
     attn__bwd_f32__avx512, attn__bwd_scratch_f32__avx512},
    {ATTN_KERNEL_AVX2, 2, has_avx2_fma, attn__fwd_f32__avx2, attn__scratch_f32__avx2,
     attn__bwd_f32__avx2, attn__bwd_scratch_f32__avx2},
#endif
    {ATTN_KERNEL_GENERIC, 3, always, attn__fwd_f32__generic, attn__scratch_f32__generic,
     attn__bwd_f32__generic, attn__bwd_scratch_f32__generic},
    {ATTN_KERNEL_REF, 0, always, attn__fwd_f32__ref, attn__scratch_f32__ref, attn__bwd_f32__ref,
     attn__bwd_scratch_f32__ref},
};
enum { N_KERNELS = sizeof kernels / sizeof kernels[0] };

static const kernel_entry *find(attn_kernel id) {
  for (int i = 0; i < N_KERNELS; i++)
    if (kernels[i].id == id) return &kernels[i];
  return NULL;
}

const char *attn_kernel_name(attn_kernel kernel) {
  static const char *const names[ATTN_KERNEL_COUNT_] = {"auto", "ref", "generic", "avx2", "avx512"};
  return (unsigned)kernel < ATTN_KERNEL_COUNT_ ? names[kernel] : "unknown";
}

attn_kernel attn_kernel_from_name(const char *name) {
  if (!name) return ATTN_KERNEL_COUNT_;
  for (int k = 0; k < ATTN_KERNEL_COUNT_; k++)
    if (strcmp(name, attn_kernel_name((attn_kernel)k)) == 0) return (attn_kernel)k;
  return ATTN_KERNEL_COUNT_;
}

int attn_kernel_supported(attn_kernel kernel) {
  if (kernel == ATTN_KERNEL_AUTO) return 1;
  const kernel_entry *e = find(kernel);
  return e && e->supported();
}

static attn_kernel detected_best(void) {
  const kernel_entry *best = NULL;
  for (int i = 0; i < N_KERNELS; i++)
    if (kernels[i].auto_rank > 0 && kernels[i].supported() &&
        (!best || kernels[i].auto_rank < best->auto_rank))
      best = &kernels[i];
  return best ? best->id : ATTN_KERNEL_REF;
}

/* ATTN_ISA, read once: the requested kernel, or COUNT_ for an unknown name; set = 0 if unset.
 */
static struct {
  int set;
  attn_kernel kernel;
  char value[32];
} env_isa;
static pthread_once_t env_once = PTHREAD_ONCE_INIT;

static void read_env(void) {
  const char *v = getenv("ATTN_ISA");
  if (!v || !*v) return;
  env_isa.set = 1;
  strncpy(env_isa.value, v, sizeof env_isa.value - 1);
  env_isa.kernel = attn_kernel_from_name(v);
  if (env_isa.kernel == ATTN_KERNEL_AUTO) env_isa.set = 0; /* ATTN_ISA=auto: detection */
}

attn_status attn__resolve_kernel(const char *fn, attn_kernel requested, attn_kernel *out) {
  attn_kernel k = requested;
  if (k == ATTN_KERNEL_AUTO) {
    pthread_once(&env_once, read_env);
    if (!env_isa.set) {
      *out = detected_best();
      return ATTN_STATUS_OK;
    }
    if (env_isa.kernel == ATTN_KERNEL_COUNT_)
      return attn__fail(ATTN_STATUS_INVALID_ARGUMENT,
                        "%s: ATTN_ISA=%s is not a kernel name (ref, generic, avx2, avx512, auto)",
                        fn, env_isa.value);
    k = env_isa.kernel;
  }
  if (!attn_kernel_supported(k)) {
    char features[128];
    return attn__fail(ATTN_STATUS_UNSUPPORTED_ISA,
                      "%s: kernel %s%s cannot run on this CPU (detected: %s)", fn,
                      attn_kernel_name(k), requested == ATTN_KERNEL_AUTO ? " (from ATTN_ISA)" : "",
                      attn_cpu_features(features, sizeof features));
  }
  *out = k;
  return ATTN_STATUS_OK;
}

attn_kernel attn_kernel_auto(void) {
  attn_kernel k = ATTN_KERNEL_REF;
  return attn__resolve_kernel("attn_kernel_auto", ATTN_KERNEL_AUTO, &k) == ATTN_STATUS_OK
             ? k
             : detected_best();
}

attn__fwd_fn attn__kernel_fwd(attn_kernel kernel) {
  const kernel_entry *e = find(kernel);
  return e ? e->fwd : NULL;
}

attn__scratch_fn attn__kernel_scratch(attn_kernel kernel) {
  const kernel_entry *e = find(kernel);
  return e ? e->scratch : NULL;
}

attn__bwd_fn attn__kernel_bwd(attn_kernel kernel) {
  const kernel_entry *e = find(kernel);
  return e ? e->bwd : NULL;
}

attn__scratch_fn attn__kernel_bwd_scratch(attn_kernel kernel) {
  const kernel_entry *e = find(kernel);
  return e ? e->bwd_scratch : NULL;
}
