/*
 * convert.c — the 16-bit input types (fp16, bf16): exact widening to fp32 for the kernels, and the
 * public conversions both ways.
 *
 * fp16 → fp32 without branches, so the loops vectorise: the half's exponent and fraction are moved
 * into a float's fields (two_w >> 4) and the exponent re-biased by a multiplication by 2^-112 after
 * adding 224 to the exponent field (inf and NaN land on exponent 255 and stay inf / NaN); halves
 * below 2^-14 (zero and subnormals, fraction f) are f·2^-24, made exactly as (0.5 + f·2^-24) − 0.5
 * from a float whose exponent is that of 0.5. Every step is exact (Giesen, "Half to float done
 * quick", 2012; Maratos, FP16). bf16 → fp32 is a shift.
 */
#include "internal.h"

#include <math.h>
#include <string.h>

static inline float from_bits(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

static inline uint32_t to_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

static inline float f16_to_f32(uint16_t h) {
  const uint32_t w = (uint32_t)h << 16, sign = w & 0x80000000u, two_w = w + w;
  const float normal = from_bits((two_w >> 4) + (224u << 23)) * 0x1p-112f;
  const float small = from_bits((two_w >> 17) | (126u << 23)) - 0.5f;
  return from_bits(sign | (two_w < (1u << 27) ? to_bits(small) : to_bits(normal)));
}

static inline float bf16_to_f32(uint16_t h) { return from_bits((uint32_t)h << 16); }

/* Round to nearest, ties to even; overflow to ±inf; NaN quiet with the top of its payload. */
static uint16_t f32_to_f16(float f) {
  const uint32_t x = to_bits(f), sign = (x >> 16) & 0x8000u, a = x & 0x7fffffffu;
  if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
  if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* ≥ 65520 (halfway to 2^16), inf */
  if (a >= 0x38800000u) {                                  /* a normal half: ≥ 2^-14 */
    uint32_t r = a - (112u << 23);                         /* re-biased; rounding may carry */
    r += 0xfffu + ((r >> 13) & 1u);
    return (uint16_t)(sign | (r >> 13));
  }
  /* a subnormal half (or zero): round(|f| / 2^-24) = m · 2^(e − 126) with the float's integer
   * significand m and biased exponent e; 1024 is the smallest normal's encoding, as it should be */
  const uint32_t e = a >> 23, m = (a & 0x7fffffu) | 0x800000u, shift = 126u - e;
  if (shift >= 25u) return (uint16_t)sign; /* below 2^-25: rounds to ±0 (never a tie) */
  uint32_t q = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
  if (rem > half || (rem == half && (q & 1u))) q++;
  return (uint16_t)(sign | q);
}

static uint16_t f32_to_bf16(float f) {
  const uint32_t x = to_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u); /* NaN, quiet */
  return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16); /* overflow carries into inf */
}

size_t attn__dtype_size(attn_dtype t) { return t == ATTN_DTYPE_F32 ? 4 : 2; }

void attn__widen(attn_dtype t, const void *src, int64_t offset, int64_t stride, int64_t n,
                 float *dst) {
  if (t == ATTN_DTYPE_F32) {
    const float *s = (const float *)src + offset;
    for (int64_t d = 0; d < n; d++)
      dst[d] = s[d * stride];
  } else if (t == ATTN_DTYPE_F16) {
    const uint16_t *s = (const uint16_t *)src + offset;
    if (stride == 1) /* the common layout, in vectors */
      for (int64_t d = 0; d < n; d++)
        dst[d] = f16_to_f32(s[d]);
    else
      for (int64_t d = 0; d < n; d++)
        dst[d] = f16_to_f32(s[d * stride]);
  } else {
    const uint16_t *s = (const uint16_t *)src + offset;
    for (int64_t d = 0; d < n; d++)
      dst[d] = bf16_to_f32(s[d * stride]);
  }
}

int attn_to_f32(attn_dtype t, const void *src, float *dst, size_t n) {
  if ((unsigned)t >= (unsigned)ATTN_DTYPE_COUNT_ || (n > 0 && (!src || !dst))) return -1;
  if (t == ATTN_DTYPE_F32) {
    if (n > 0) memmove(dst, src, n * sizeof(float));
    return 0;
  }
  attn__widen(t, src, 0, 1, (int64_t)n, dst);
  return 0;
}

int attn_from_f32(attn_dtype t, const float *src, void *dst, size_t n) {
  if ((unsigned)t >= (unsigned)ATTN_DTYPE_COUNT_ || (n > 0 && (!src || !dst))) return -1;
  if (t == ATTN_DTYPE_F32) {
    if (n > 0) memmove(dst, src, n * sizeof(float));
    return 0;
  }
  uint16_t *out = dst;
  for (size_t i = 0; i < n; i++)
    out[i] = t == ATTN_DTYPE_F16 ? f32_to_f16(src[i]) : f32_to_bf16(src[i]);
  return 0;
}

const char *attn_dtype_name(attn_dtype t) {
  static const char *const names[ATTN_DTYPE_COUNT_] = {"f32", "f16", "bf16"};
  return (unsigned)t < (unsigned)ATTN_DTYPE_COUNT_ ? names[t] : "unknown";
}

attn_dtype attn_dtype_from_name(const char *name) {
  for (int t = 0; name && t < ATTN_DTYPE_COUNT_; t++)
    if (strcmp(name, attn_dtype_name((attn_dtype)t)) == 0) return (attn_dtype)t;
  return ATTN_DTYPE_COUNT_;
}
