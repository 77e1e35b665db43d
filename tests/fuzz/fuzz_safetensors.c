/* fuzz_safetensors.c — libFuzzer target: attn_st_open on any bytes returns 0 or −1 with a message,
 * never crashes (deep nesting, huge shapes, offsets past the end); an accepted file's tensors lie
 * inside the data section, do not overlap, and attn_st_get checks dtype and shape. */
#include "bert.h"
#include "fuzz_input.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  attn_st_file f;
  char err[512] = "";
  if (attn_st_open(&f, fuzz_input_file(data, size), err, sizeof err) != 0) {
    if (!err[0]) abort();
    return 0;
  }
  const char *lo = f.map, *hi = lo + f.size;
  for (int i = 0; i < f.n; i++) {
    const char *at = f.t[i].data;
    if (at < lo + 8 || at + f.t[i].bytes > hi) abort();
    for (int j = 0; j < i; j++) {
      const char *bt = f.t[j].data;
      if (f.t[i].bytes && f.t[j].bytes && at < bt + f.t[j].bytes && bt < at + f.t[i].bytes) abort();
    }
    const float *x = attn_st_get(&f, f.t[i].name, f.t[i].ndim, f.t[i].shape, err, sizeof err);
    if (x && (strcmp(f.t[i].dtype, "F32") != 0 || (const char *)x != at)) abort();
  }
  attn_st_close(&f);
  return 0;
}
