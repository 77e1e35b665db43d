/*
 * fuzz_draw.h — what the API fuzz targets share: reading the input bytes as draws, strides drawn
 * per tensor (packed, [B, L, H, D], padded, broadcast, reversed, arbitrary, huge), and tensors
 * allocated to exactly their extent (so AddressSanitizer sees any access outside), poisoned with
 * 0x5a bytes so that an output a call must not touch can be checked.
 */
#ifndef ATTN_FUZZ_DRAW_H
#define ATTN_FUZZ_DRAW_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { FUZZ_MAX_ELEMS = 1 << 20 }; /* the largest extent a tensor may have, in elements */

typedef struct bytes {
  const uint8_t *d;
  size_t n, i;
} bytes;

static unsigned next(bytes *b) { return b->i < b->n ? b->d[b->i++] : 0; }

/* Strides for a tensor of shape n[0..nd): packed, [B, L, H, D]-like (dims 1 and 2 swapped),
 * padded rows, one dimension broadcast (0) or reversed (negative), or one stride arbitrary. */
static void pick_strides(bytes *b, int nd, const int64_t *n, int64_t *s) {
  int64_t acc = 1;
  for (int d = nd - 1; d >= 0; d--)
    s[d] = acc, acc *= n[d] > 0 ? n[d] : 1;
  const unsigned mode = next(b) % 10, d = next(b) % (unsigned)nd;
  if (mode == 4 && nd == 4) { /* [B, L, H, D] in memory */
    s[3] = 1, s[1] = n[3] > 0 ? n[3] : 1, s[2] = s[1] * (n[1] > 0 ? n[1] : 1);
    s[0] = s[2] * (n[2] > 0 ? n[2] : 1);
  } else if (mode == 5) { /* rows padded */
    for (int e = 0; e < nd - 1; e++)
      s[e] += (int64_t)(next(b) % 5) * (e == nd - 2 ? 1 : s[e + 1]);
  } else if (mode == 6) {
    s[d] = 0;
  } else if (mode == 7) {
    s[d] = -s[d];
  } else if (mode == 8) {
    s[d] = (int64_t)(next(b) % 9) - 4;
  } else if (mode == 9) {
    s[d] = (int64_t)1 << (40 + next(b) % 23); /* extents that overflow, or nearly */
  }
}

/* Offsets [lo, hi] an element of the tensor can have; 0 if it has no element, -1 if the extent
 * does not fit the harness. */
static int extent(int nd, const int64_t *n, const int64_t *s, int64_t *lo, int64_t *hi) {
  *lo = *hi = 0;
  for (int d = 0; d < nd; d++)
    if (n[d] == 0) return 0;
  for (int d = 0; d < nd; d++) {
    int64_t span;
    if (__builtin_mul_overflow(n[d] - 1, s[d], &span)) return -1;
    if (span < 0 ? __builtin_add_overflow(*lo, span, lo) : __builtin_add_overflow(*hi, span, hi))
      return -1;
  }
  int64_t span;
  return !__builtin_sub_overflow(*hi, *lo, &span) && span < FUZZ_MAX_ELEMS ? 1 : -1;
}

typedef struct tensor {
  void *buf;   /* the allocation: exactly the extent */
  void *base;  /* element 0 */
  size_t size; /* bytes */
} tensor;

/* Allocates the tensor's extent (NULL base when it has no element); returns 0 if it cannot. */
static int make(tensor *t, int nd, const int64_t *n, const int64_t *s, size_t esize) {
  int64_t lo, hi;
  memset(t, 0, sizeof *t);
  const int e = extent(nd, n, s, &lo, &hi);
  if (e < 0) return 0;
  if (e == 0) return 1;
  t->size = (size_t)(hi - lo + 1) * esize;
  t->buf = malloc(t->size);
  if (!t->buf) return 0;
  t->base = (char *)t->buf - lo * (int64_t)esize;
  return 1;
}

static void drop(tensor *t) { free(t->buf); }

static void poison(tensor *t) {
  if (t->buf) memset(t->buf, 0x5a, t->size);
}

/* 1 if every byte still holds the poison. */
static int untouched(const tensor *t) {
  for (size_t i = 0; i < t->size; i++)
    if (((const unsigned char *)t->buf)[i] != 0x5a) return 0;
  return 1;
}

static float *fp(const tensor *t) { return t->base; }

#endif
