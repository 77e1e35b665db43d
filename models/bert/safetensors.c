/*
 * safetensors.c — reads the safetensors format: 8 bytes little-endian header length N, N bytes of
 * JSON {"name": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, ...,
 * "__metadata__": {...}}, then the data. The file is mapped read-only; every header field is
 * checked (a malformed, truncated or mismatched file is an error naming the tensor, never a crash).
 */
#include "bert.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* A minimal JSON cursor for the header: strings without escapes beyond \" and \\, integers,
 * arrays of integers, nested objects (skipped when not needed). */
typedef struct cursor {
  const char *s, *end;
} cursor;

static void ws(cursor *c) {
  while (c->s < c->end && (*c->s == ' ' || *c->s == '\n' || *c->s == '\r' || *c->s == '\t'))
    c->s++;
}
static int eat(cursor *c, char ch) {
  ws(c);
  if (c->s < c->end && *c->s == ch) return c->s++, 1;
  return 0;
}
static int str(cursor *c, char *out, size_t size) {
  if (!eat(c, '"')) return -1;
  size_t n = 0;
  while (c->s < c->end && *c->s != '"') {
    char ch = *c->s++;
    if (ch == '\\') {
      if (c->s >= c->end) return -1;
      ch = *c->s++;
    }
    if (n + 1 >= size) return -1;
    out[n++] = ch;
  }
  if (c->s >= c->end) return -1;
  c->s++;
  out[n] = '\0';
  return 0;
}
static int integer(cursor *c, int64_t *v) {
  ws(c);
  const char *start = c->s;
  int64_t x = 0;
  while (c->s < c->end && *c->s >= '0' && *c->s <= '9') {
    if (x > (INT64_MAX - 9) / 10) return -1;
    x = x * 10 + (*c->s++ - '0');
  }
  *v = x;
  return c->s > start ? 0 : -1;
}
/* Skips any JSON value (for __metadata__), nested at most MAX_DEPTH deep: a header of nothing but
 * brackets is an error, not a stack overflow. */
enum { MAX_DEPTH = 32 };
static int skip(cursor *c, int depth) {
  ws(c);
  if (depth > MAX_DEPTH) return -1;
  if (c->s >= c->end) return -1;
  if (*c->s == '"') {
    char tmp[4096];
    return str(c, tmp, sizeof tmp);
  }
  if (*c->s == '{' || *c->s == '[') {
    const char close = *c->s == '{' ? '}' : ']';
    c->s++;
    if (eat(c, close)) return 0;
    do {
      if (close == '}') {
        char key[4096];
        if (str(c, key, sizeof key) || !eat(c, ':')) return -1;
      }
      if (skip(c, depth + 1)) return -1;
    } while (eat(c, ','));
    return eat(c, close) ? 0 : -1;
  }
  while (c->s < c->end && *c->s != ',' && *c->s != '}' && *c->s != ']')
    c->s++;
  return 0;
}

static int fail(char *err, size_t size, const char *path, const char *what, const char *name) {
  snprintf(err, size, "%s: %s%s%s", path, name ? "tensor " : "", name ? name : "", what);
  return -1;
}

static int by_offset(const void *a, const void *b) {
  const attn_st_tensor *x = *(const attn_st_tensor *const *)a,
                       *y = *(const attn_st_tensor *const *)b;
  const char *px = x->data, *py = y->data;
  return px < py ? -1 : px > py;
}

/* The tensors' byte ranges must not overlap (the format's rule; empty tensors overlap nothing).
 * Closes f and names both tensors when two do. */
static int check_disjoint(attn_st_file *f, const char *path, char *err, size_t err_size) {
  const attn_st_tensor **order = malloc(sizeof *order * (size_t)(f->n ? f->n : 1));
  if (!order) {
    attn_st_close(f);
    return fail(err, err_size, path, "out of memory", NULL);
  }
  int m = 0;
  for (int i = 0; i < f->n; i++)
    if (f->t[i].bytes > 0) order[m++] = &f->t[i];
  qsort(order, (size_t)m, sizeof *order, by_offset);
  for (int i = 1; i < m; i++) {
    const char *prev_end = (const char *)order[i - 1]->data + order[i - 1]->bytes;
    if ((const char *)order[i]->data < prev_end) {
      char what[200];
      snprintf(what, sizeof what, ": data_offsets overlap those of tensor %s", order[i - 1]->name);
      const attn_st_tensor *t = order[i];
      char name[sizeof t->name];
      memcpy(name, t->name, sizeof name);
      free(order);
      attn_st_close(f);
      return fail(err, err_size, path, what, name);
    }
  }
  free(order);
  return 0;
}

int attn_st_open(attn_st_file *f, const char *path, char *err, size_t err_size) {
  memset(f, 0, sizeof *f);
  int fd = open(path, O_RDONLY);
  if (fd < 0) return fail(err, err_size, path, "cannot open (is the model installed?)", NULL);
  struct stat stt;
  if (fstat(fd, &stt) != 0 || stt.st_size < 8) {
    close(fd);
    return fail(err, err_size, path, "too short for a safetensors file", NULL);
  }
  f->size = (size_t)stt.st_size;
  f->map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (f->map == MAP_FAILED) {
    f->map = NULL;
    return fail(err, err_size, path, "cannot map the file", NULL);
  }
  const unsigned char *b = f->map;
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; i--)
    hlen = hlen << 8 | b[i];
  if (hlen > f->size - 8) {
    attn_st_close(f);
    return fail(err, err_size, path, "header length runs past the end of the file (truncated?)",
                NULL);
  }
  const size_t data0 = 8 + (size_t)hlen, data_size = f->size - data0;
  cursor c = {(const char *)b + 8, (const char *)b + data0};
  if (!eat(&c, '{')) goto bad;
  int cap = 0;
  if (eat(&c, '}')) return 0;
  do {
    attn_st_tensor t;
    memset(&t, 0, sizeof t);
    if (str(&c, t.name, sizeof t.name) || !eat(&c, ':')) goto bad;
    if (strcmp(t.name, "__metadata__") == 0) {
      if (skip(&c, 0)) goto bad;
      continue;
    }
    if (!eat(&c, '{')) goto bad;
    int64_t off[2] = {-1, -1};
    int have_shape = 0;
    do {
      char key[32];
      if (str(&c, key, sizeof key) || !eat(&c, ':')) goto bad;
      if (strcmp(key, "dtype") == 0) {
        if (str(&c, t.dtype, sizeof t.dtype)) goto bad;
      } else if (strcmp(key, "shape") == 0 || strcmp(key, "data_offsets") == 0) {
        const int is_shape = key[0] == 's';
        int n = 0;
        if (!eat(&c, '[')) goto bad;
        if (!eat(&c, ']')) {
          do {
            int64_t v;
            if (integer(&c, &v) || n >= (is_shape ? 8 : 2)) goto bad;
            if (is_shape)
              t.shape[n++] = v;
            else
              off[n++] = v;
          } while (eat(&c, ','));
          if (!eat(&c, ']')) goto bad;
        }
        if (is_shape) t.ndim = n, have_shape = 1;
      } else if (skip(&c, 0)) {
        goto bad;
      }
    } while (eat(&c, ','));
    if (!eat(&c, '}')) goto bad;
    if (!have_shape || off[0] < 0 || off[1] < off[0] || (uint64_t)off[1] > data_size) {
      attn_st_close(f);
      return fail(err, err_size, path,
                  ": data_offsets missing or outside the file (truncated or corrupt)", t.name);
    }
    int64_t count = 1;
    for (int d = 0; d < t.ndim; d++)
      if (t.shape[d] < 0 || __builtin_mul_overflow(count, t.shape[d], &count)) goto bad;
    const int64_t esize = !strcmp(t.dtype, "F32") || !strcmp(t.dtype, "I32")    ? 4
                          : !strcmp(t.dtype, "I64") || !strcmp(t.dtype, "F64")  ? 8
                          : !strcmp(t.dtype, "F16") || !strcmp(t.dtype, "BF16") ? 2
                                                                                : 0;
    int64_t bytes;
    if (esize == 0 || __builtin_mul_overflow(count, esize, &bytes) || bytes != off[1] - off[0]) {
      attn_st_close(f);
      return fail(err, err_size, path, ": dtype and shape do not match its byte range", t.name);
    }
    t.data = b + data0 + off[0];
    t.bytes = (size_t)(off[1] - off[0]);
    if (f->n == cap) {
      cap = cap ? 2 * cap : 128;
      attn_st_tensor *p = realloc(f->t, (size_t)cap * sizeof *p);
      if (!p) goto bad;
      f->t = p;
    }
    f->t[f->n++] = t;
  } while (eat(&c, ','));
  if (!eat(&c, '}')) goto bad;
  return check_disjoint(f, path, err, err_size);
bad:
  attn_st_close(f);
  return fail(err, err_size, path, "malformed safetensors header", NULL);
}

void attn_st_close(attn_st_file *f) {
  if (f->map) munmap(f->map, f->size);
  free(f->t);
  memset(f, 0, sizeof *f);
}

const float *attn_st_get(const attn_st_file *f, const char *name, int ndim, const int64_t *shape,
                         char *err, size_t err_size) {
  for (int i = 0; i < f->n; i++) {
    const attn_st_tensor *t = &f->t[i];
    if (strcmp(t->name, name) != 0) continue;
    int ok = !strcmp(t->dtype, "F32") && t->ndim == ndim;
    for (int d = 0; ok && d < ndim; d++)
      ok = t->shape[d] == shape[d];
    if (ok && ((uintptr_t)t->data & 3)) {
      snprintf(err, err_size, "tensor %s: data not 4-byte aligned in the file", name);
      return NULL;
    }
    if (!ok) {
      snprintf(err, err_size, "tensor %s: expected F32 of shape [%lld%s%s], found %s with %d dims",
               name, (long long)shape[0], ndim > 1 ? ", ..." : "", "", t->dtype, t->ndim);
      return NULL;
    }
    return t->data;
  }
  snprintf(err, err_size, "tensor %s: missing from the weights file", name);
  return NULL;
}
