/* fuzz_npy.c — libFuzzer target: npy_read on any bytes returns 0 or −1 with a message, never
 * reads or writes outside its buffers (AddressSanitizer) or hits undefined behaviour (UBSan). A
 * file it accepts has a consistent shape and element count. */
#include "fuzz_input.h"
#include "npy.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  npy_array a;
  char err[512] = "";
  if (npy_read(fuzz_input_file(data, size), &a, err, sizeof err) == 0) {
    int64_t count = 1;
    for (int d = 0; d < a.ndim; d++)
      count *= a.shape[d];
    if (count != a.count || !a.data) abort();
    npy_free(&a);
  } else if (!err[0]) {
    abort(); /* a refusal always says why */
  }
  return 0;
}
