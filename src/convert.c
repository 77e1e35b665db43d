/*
 * convert.c — the narrow input types (fp16, bf16, fp8 E4M3 and E5M2): exact widening to fp32 for
 * the kernels, and the public conversions both ways.
 *
 * fp16 → fp32 without branches, so the loops vectorise: the half's exponent and fraction are moved
 * into a float's fields (two_w >> 4) and the exponent re-biased by a multiplication by 2^-112 after
 * adding 224 to the exponent field (inf and NaN land on exponent 255 and stay inf / NaN); halves
 * below 2^-14 (zero and subnormals, fraction f) are f·2^-24, made exactly as (0.5 + f·2^-24) − 0.5
 * from a float whose exponent is that of 0.5. Every step is exact (Giesen, "Half to float done
 * quick", 2012; Maratos, FP16). bf16 → fp32 is a shift.
 *
 * fp8 → fp32 goes through the half: E5M2 is a half's upper byte; an E4M3 byte's 7 magnitude bits
 * moved up by 7 are a half of the same fraction with exponent e − 15 instead of e − 7 (subnormals
 * included), so that half times 2^8 is the value, exactly; its NaN (magnitude 0x7f) gets the
 * half's all-ones exponent first. The AVX2 and AVX-512 widenings build the same half with vector
 * integer operations and convert it with vcvtph2ps, so all give the same bits (NaN included;
 * test_dtype compares both with this file on every pattern).
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

static inline float e5m2_to_f32(uint8_t b) { return f16_to_f32((uint16_t)(b << 8)); }

static inline float e4m3_to_f32(uint8_t b) {
  const uint32_t mag = b & 0x7fu;
  const uint32_t h = (b & 0x80u) << 8 | mag << 7 | (mag == 0x7fu ? 0x7c00u : 0u);
  return f16_to_f32((uint16_t)h) * 0x1p8f;
}

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

/* fp32 → an fp8 format with `man` fraction bits and exponent bias `bias`, rounded to nearest, ties
 * to even. Results past the largest finite code `max_code` become `over` (E5M2: inf; E4M3, which
 * has no inf: NaN); NaN becomes S.1111.111, NaN in both formats. */
static uint8_t f32_to_f8(float f, uint32_t man, uint32_t bias, uint32_t max_code, uint32_t over) {
  const uint32_t x = to_bits(f), sign = (x >> 24) & 0x80u, a = x & 0x7fffffffu;
  if (a > 0x7f800000u) return (uint8_t)(sign | 0x7fu);
  uint32_t q;
  if (a >= (128u - bias) << 23) { /* a normal fp8 (or beyond): ≥ 2^(1 − bias) */
    const uint32_t shift = 23u - man;
    uint32_t r = a - ((127u - bias) << 23); /* re-biased; rounding may carry into the exponent */
    r += (1u << (shift - 1u)) - 1u + ((r >> shift) & 1u);
    q = r >> shift;
    if (a == 0x7f800000u || q > max_code) q = over;
  } else { /* a subnormal fp8 or zero: round(|f| / 2^(1 − bias − man)), as f32_to_f16 does */
    const uint32_t e = a >> 23, m = (a & 0x7fffffu) | 0x800000u, shift = 151u - bias - man - e;
    if (shift >= 25u) return (uint8_t)sign; /* below half the smallest subnormal: ±0 */
    q = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u))) q++;
  }
  return (uint8_t)(sign | q);
}

static uint8_t f32_to_e4m3(float f) { return f32_to_f8(f, 3, 7, 0x7e, 0x7f); }
static uint8_t f32_to_e5m2(float f) { return f32_to_f8(f, 2, 15, 0x7b, 0x7c); }

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
  } else if (t == ATTN_DTYPE_BF16) {
    const uint16_t *s = (const uint16_t *)src + offset;
    for (int64_t d = 0; d < n; d++)
      dst[d] = bf16_to_f32(s[d * stride]);
  } else if (t == ATTN_DTYPE_F8E4M3) {
    const uint8_t *s = (const uint8_t *)src + offset;
    for (int64_t d = 0; d < n; d++)
      dst[d] = e4m3_to_f32(s[d * stride]);
  } else {
    const uint8_t *s = (const uint8_t *)src + offset;
    for (int64_t d = 0; d < n; d++)
      dst[d] = e5m2_to_f32(s[d * stride]);
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
  if (attn__dtype_size(t) == 1) {
    uint8_t *out = dst;
    for (size_t i = 0; i < n; i++)
      out[i] = t == ATTN_DTYPE_F8E4M3 ? f32_to_e4m3(src[i]) : f32_to_e5m2(src[i]);
    return 0;
  }
  uint16_t *out = dst;
  for (size_t i = 0; i < n; i++)
    out[i] = t == ATTN_DTYPE_F16 ? f32_to_f16(src[i]) : f32_to_bf16(src[i]);
  return 0;
}

const char *attn_dtype_name(attn_dtype t) {
  static const char *const names[ATTN_DTYPE_COUNT_] = {"f32", "f16", "bf16", "f8e4m3", "f8e5m2"};
  return (unsigned)t < (unsigned)ATTN_DTYPE_COUNT_ ? names[t] : "unknown";
}

size_t attn_dtype_size(attn_dtype t) {
  return (unsigned)t < (unsigned)ATTN_DTYPE_COUNT_ ? attn__dtype_size(t) : 0;
}

attn_dtype attn_dtype_from_name(const char *name) {
  for (int t = 0; name && t < ATTN_DTYPE_COUNT_; t++)
    if (strcmp(name, attn_dtype_name((attn_dtype)t)) == 0) return (attn_dtype)t;
  return ATTN_DTYPE_COUNT_;
}
