/* example_util.h — printing helpers shared by the examples (not part of the library). */
#ifndef ATTN_EXAMPLE_UTIL_H
#define ATTN_EXAMPLE_UTIL_H

#include "attn.h"

#include <stdio.h>
#include <stdlib.h>

/* Exits with a message if an attn call failed. */
static inline void example_check(attn_status st, const char *what) {
  if (st != ATTN_STATUS_OK) {
    fprintf(stderr, "%s failed: %s: %s\n", what, attn_status_str(st), attn_last_error());
    exit(1);
  }
}

/* Prints the attention weights P [rows, cols] with row and column labels. */
static inline void example_print_weights(const float *probs, int rows, int cols,
                                         const char *const *row_labels,
                                         const char *const *col_labels) {
  printf("%10s", "");
  for (int j = 0; j < cols; j++)
    printf(" %7s", col_labels[j]);
  printf("\n");
  for (int i = 0; i < rows; i++) {
    printf("%10s", row_labels[i]);
    for (int j = 0; j < cols; j++)
      printf(" %7.3f", probs[i * cols + j]);
    printf("\n");
  }
}

#endif
