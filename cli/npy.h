/*
 * npy.h — reading and writing NumPy .npy files (format versions 1.0–3.0, C order only).
 * Supported dtypes: little-endian float32 ('<f4') and float16 ('<f2'), one-byte uint8/bool ('|u1',
 * '|b1').
 * Readers validate everything (magic, header, dtype, shape, exact file size) and say what is wrong.
 */
#ifndef ATTN_NPY_H
#define ATTN_NPY_H

#include <stddef.h>
#include <stdint.h>

enum { NPY_MAX_DIMS = 8 };

typedef enum npy_dtype { NPY_F32, NPY_U8, NPY_F16 } npy_dtype;

typedef struct npy_array {
  npy_dtype dtype;
  int ndim;
  int64_t shape[NPY_MAX_DIMS];
  int64_t count; /* number of elements */
  void *data;    /* count × element size bytes, malloc'ed; free with npy_free */
} npy_array;

/* Reads path into *a. Returns 0, or -1 with a one-line reason (without the path) in err. */
int npy_read(const char *path, npy_array *a, char *err, size_t err_size);

/* Writes a C-order array (float32, uint8 or float16 bits) of the given shape to an open FILE.
 * Returns 0 or -1. */
int npy_write(void *stream, const void *data, npy_dtype dtype, int ndim, const int64_t *shape);

void npy_free(npy_array *a);

#endif
