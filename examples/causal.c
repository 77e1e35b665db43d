/*
 * causal.c — causal self-attention: token i sees tokens j ≤ i, as a language model generating text.
 *
 * Six tokens, two heads of dim 8 from a fixed pseudo-random projection. The printed weights are
 * lower-triangular: no token sees the future. The first token can only see itself (weight 1).
 */
#include "example_util.h"

#include <math.h>

int main(void) {
  enum { H = 2, L = 6, D = 8 };
  const char *tokens[L] = {"the", "river", "bank", "was", "full", "of"};
  static float q[H * L * D], k[H * L * D], v[H * L * D], o[H * L * D], probs[H * L * L];
  for (int i = 0; i < H * L * D; i++) { /* deterministic stand-ins for learned projections */
    q[i] = sinf(0.37f * (float)i);
    k[i] = cosf(0.23f * (float)i);
    v[i] = sinf(0.11f * (float)i + 1.0f);
  }

  attn_params p;
  attn_params_init(&p, 1, H, H, L, L, D, D);
  p.causal = 1; /* Lq = Lk, so no alignment needs to be chosen */
  example_check(attn_forward(&p, q, k, v, o, NULL, probs), "attn_forward");

  for (int h = 0; h < H; h++) {
    printf("causal self-attention, head %d (row i: weights over tokens j ≤ i):\n", h);
    example_print_weights(probs + h * L * L, L, L, tokens, tokens);
    printf("\n");
  }
  for (int h = 0; h < H; h++) /* the library promises exact zeros above the diagonal */
    for (int i = 0; i < L; i++)
      for (int j = i + 1; j < L; j++)
        if (probs[(h * L + i) * L + j] != 0.0f) return 1;
  printf("first output row of head 0 equals v[0]: %s\n", o[0] == v[0] ? "yes" : "no");
  return 0;
}
