/*
 * cpu.c — CPU feature detection: cpuid for what the CPU has, then xgetbv for what the OS saves
 * on context switch (BLIS frame/base/bli_cpuid.c: without the OS bits, AVX state is not usable).
 * Detected once; non-x86 builds report no features.
 */
#include "internal.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>

static unsigned long long xgetbv0(void) {
  unsigned eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return ((unsigned long long)edx << 32) | eax;
}

static attn__cpu detected;
static pthread_once_t detect_once = PTHREAD_ONCE_INIT;

static void detect(void) {
  char buf[256];
  attn_cpu_features(buf, sizeof buf);
  /* whole-word matches in the feature list built below */
  detected.avx2_fma =
      strstr(buf, "avx2") != NULL && strstr(buf, "fma") != NULL && strstr(buf, "f16c") != NULL;
  detected.avx512 = strstr(buf, "avx512f") != NULL && strstr(buf, "avx512bw") != NULL;
}

const attn__cpu *attn__cpu_get(void) {
  pthread_once(&detect_once, detect);
  return &detected;
}

char *attn_cpu_features(char *buf, size_t size) {
  unsigned a, b, c, d;
  int sse42 = 0, avx = 0, fma = 0, f16c = 0, avx2 = 0, f512 = 0, vl512 = 0, bw512 = 0, dq512 = 0;
  if (__get_cpuid(1, &a, &b, &c, &d)) {
    sse42 = (c >> 20) & 1;
    int osxsave = (c >> 27) & 1;
    unsigned long long xcr0 = osxsave ? xgetbv0() : 0;
    int ymm_os = (xcr0 & 0x6) == 0x6;   /* XMM and YMM state */
    int zmm_os = (xcr0 & 0xe6) == 0xe6; /* plus opmask, ZMM_Hi256, Hi16_ZMM */
    avx = ((c >> 28) & 1) && ymm_os;
    fma = ((c >> 12) & 1) && ymm_os;
    f16c = ((c >> 29) & 1) && ymm_os;
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
      avx2 = ((b >> 5) & 1) && ymm_os;
      f512 = ((b >> 16) & 1) && zmm_os;
      dq512 = ((b >> 17) & 1) && zmm_os;
      bw512 = ((b >> 30) & 1) && zmm_os;
      vl512 = ((b >> 31) & 1) && zmm_os;
    }
  }
  snprintf(buf, size, "%s%s%s%s%s%s%s%s%s", sse42 ? "sse4.2 " : "", avx ? "avx " : "",
           avx2 ? "avx2 " : "", fma ? "fma " : "", f16c ? "f16c " : "", f512 ? "avx512f " : "",
           dq512 ? "avx512dq " : "", bw512 ? "avx512bw " : "", vl512 ? "avx512vl " : "");
  size_t n = strlen(buf);
  if (n > 0 && buf[n - 1] == ' ') buf[n - 1] = '\0';
  return buf;
}
#else
char *attn_cpu_features(char *buf, size_t size) {
  if (size) buf[0] = '\0';
  return buf;
}

const attn__cpu *attn__cpu_get(void) {
  static const attn__cpu none = {0};
  return &none;
}
#endif

int attn__cpu_count(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  if (n < 1) return 1;
  return n > ATTN_MAX_THREADS ? ATTN_MAX_THREADS : (int)n;
}
