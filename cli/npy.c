/* npy.c — see npy.h. The header is a Python dict literal; we parse the three keys we need. */
#include "npy.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FAIL(...)                                                                                  \
  do {                                                                                             \
    snprintf(err, err_size, __VA_ARGS__);                                                          \
    goto fail;                                                                                     \
  } while (0)

/* Finds the value text after 'key': in the header dict, or NULL. */
static const char *dict_value(const char *hdr, const char *key) {
  char pattern[64];
  snprintf(pattern, sizeof pattern, "'%s'", key);
  const char *at = strstr(hdr, pattern);
  if (!at) return NULL;
  at += strlen(pattern);
  while (*at == ' ')
    at++;
  if (*at != ':') return NULL;
  at++;
  while (*at == ' ')
    at++;
  return at;
}

static int parse_shape(const char *s, npy_array *a) {
  if (*s++ != '(') return -1;
  a->ndim = 0;
  for (;;) {
    while (*s == ' ')
      s++;
    if (*s == ')') return 0;
    if (a->ndim == NPY_MAX_DIMS) return -1;
    if (*s < '0' || *s > '9') return -1;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || v < 0) return -1;
    a->shape[a->ndim++] = v;
    s = end;
    while (*s == ' ')
      s++;
    if (*s == ',')
      s++;
    else if (*s != ')')
      return -1;
  }
}

int npy_read(const char *path, npy_array *a, char *err, size_t err_size) {
  FILE *f = NULL;
  char *hdr = NULL;
  memset(a, 0, sizeof *a);
  f = fopen(path, "rb");
  if (!f) FAIL("cannot open: %s", strerror(errno));
  unsigned char pre[12];
  if (fread(pre, 1, 10, f) != 10 || memcmp(pre, "\x93NUMPY", 6) != 0)
    FAIL("not a .npy file (bad magic)");
  size_t hlen, prefix;
  if (pre[6] == 1) {
    hlen = (size_t)pre[8] | (size_t)pre[9] << 8;
    prefix = 10;
  } else if (pre[6] == 2 || pre[6] == 3) {
    if (fread(pre + 10, 1, 2, f) != 2) FAIL("truncated .npy header");
    hlen = (size_t)pre[8] | (size_t)pre[9] << 8 | (size_t)pre[10] << 16 | (size_t)pre[11] << 24;
    prefix = 12;
  } else {
    FAIL("unsupported .npy format version %d.%d", pre[6], pre[7]);
  }
  if (hlen > (1u << 20)) FAIL("implausible .npy header length %zu", hlen);
  hdr = malloc(hlen + 1);
  if (!hdr) FAIL("out of memory");
  if (fread(hdr, 1, hlen, f) != hlen) FAIL("truncated .npy header");
  hdr[hlen] = '\0';

  const char *descr = dict_value(hdr, "descr");
  const char *order = dict_value(hdr, "fortran_order");
  const char *shape = dict_value(hdr, "shape");
  if (!descr || !order || !shape) FAIL("malformed .npy header (needs descr, fortran_order, shape)");
  size_t esize;
  if (strncmp(descr, "'<f4'", 5) == 0) {
    a->dtype = NPY_F32;
    esize = 4;
  } else if (strncmp(descr, "'<f2'", 5) == 0) {
    a->dtype = NPY_F16;
    esize = 2;
  } else if (strncmp(descr, "'|u1'", 5) == 0 || strncmp(descr, "'|b1'", 5) == 0) {
    a->dtype = NPY_U8;
    esize = 1;
  } else {
    const char *end = *descr ? strchr(descr + 1, '\'') : NULL; /* the value may be empty */
    FAIL("unsupported dtype %.*s (need little-endian float32 '<f4' or float16 '<f2', or "
         "uint8/bool for masks)",
         end ? (int)(end - descr + 1) : 8, descr);
  }
  if (strncmp(order, "False", 5) != 0)
    FAIL("Fortran-order arrays are not supported (need C order)");
  if (parse_shape(shape, a) != 0) FAIL("malformed shape in .npy header");
  a->count = 1;
  for (int d = 0; d < a->ndim; d++)
    if (__builtin_mul_overflow(a->count, a->shape[d], &a->count)) FAIL("shape overflows");
  int64_t bytes;
  if (__builtin_mul_overflow(a->count, (int64_t)esize, &bytes)) FAIL("shape overflows");

  if (fseek(f, 0, SEEK_END) != 0) FAIL("cannot seek: %s", strerror(errno));
  long size = ftell(f);
  int64_t expect = (int64_t)(prefix + hlen) + bytes;
  if (size < 0 || (int64_t)size != expect)
    FAIL("file is %ld bytes but its header promises %" PRId64 " (%s)", size, expect,
         size < expect ? "truncated" : "trailing data");
  if (fseek(f, (long)(prefix + hlen), SEEK_SET) != 0) FAIL("cannot seek: %s", strerror(errno));
  a->data = malloc(bytes > 0 ? (size_t)bytes : 1);
  if (!a->data) FAIL("out of memory for %" PRId64 " bytes", bytes);
  if (fread(a->data, 1, (size_t)bytes, f) != (size_t)bytes) FAIL("read error");
  free(hdr);
  fclose(f);
  return 0;
fail:
  free(hdr);
  if (f) fclose(f);
  npy_free(a);
  return -1;
}

int npy_write(void *stream, const void *data, npy_dtype dtype, int ndim, const int64_t *shape) {
  FILE *f = stream;
  const size_t esize = dtype == NPY_F32 ? 4 : dtype == NPY_F16 ? 2 : 1;
  char dict[256];
  int n = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (",
                   dtype == NPY_F32   ? "<f4"
                   : dtype == NPY_F16 ? "<f2"
                                      : "|u1");
  int64_t count = 1;
  for (int d = 0; d < ndim; d++) {
    n += snprintf(dict + n, sizeof dict - (size_t)n, "%" PRId64 "%s", shape[d],
                  ndim == 1 ? "," : (d + 1 < ndim ? ", " : ""));
    count *= shape[d];
  }
  n += snprintf(dict + n, sizeof dict - (size_t)n, "), }");
  /* pad with spaces and a newline so data starts at a multiple of 64 bytes */
  size_t total = 10 + (size_t)n + 1;
  size_t padded = (total + 63) / 64 * 64;
  unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, 0, 0};
  size_t hlen = padded - 10;
  pre[8] = (unsigned char)(hlen & 0xff);
  pre[9] = (unsigned char)(hlen >> 8);
  if (fwrite(pre, 1, 10, f) != 10 || fwrite(dict, 1, (size_t)n, f) != (size_t)n) return -1;
  for (size_t i = total; i < padded; i++)
    if (fputc(' ', f) == EOF) return -1;
  if (fputc('\n', f) == EOF) return -1;
  if (count > 0 && fwrite(data, esize, (size_t)count, f) != (size_t)count) return -1;
  return 0;
}

void npy_free(npy_array *a) {
  free(a->data);
  a->data = NULL;
}
