/* fuzz_tokenizer.c — libFuzzer target: attn_bert_tokenize on any bytes (invalid UTF-8 included)
 * with the real all-MiniLM-L6-v2 vocabulary (ATTN_FUZZ_VOCAB, set by the build) gives [CLS] …
 * [SEP] of valid ids within the length limit, and never reads outside the text. */
#include "bert.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static attn_bert_vocab vocab;
  static int loaded;
  if (!loaded) {
    char err[512];
    if (attn_bert_vocab_load(&vocab, ATTN_FUZZ_VOCAB, err, sizeof err) != 0) {
      fprintf(stderr, "fuzz_tokenizer: %s (run `make model` first)\n", err);
      abort();
    }
    loaded = 1;
  }
  char *text = malloc(size + 1); /* exactly the text and its terminator */
  if (!text) return 0;
  memcpy(text, data, size);
  text[size] = '\0';
  const int max_len = size % 3 == 0 ? 6 : 512;
  int *ids = NULL, n = 0;
  if (attn_bert_tokenize(&vocab, text, max_len, &ids, &n) == 0) {
    if (n < 2 || n > max_len || ids[0] != vocab.cls || ids[n - 1] != vocab.sep) abort();
    for (int i = 0; i < n; i++)
      if (ids[i] < 0 || ids[i] >= vocab.n) abort();
    free(ids);
  }
  free(text);
  return 0;
}
