/*
 * bidirectional.c — bidirectional self-attention: every token sees every token.
 *
 * Five tokens of "money in the bank account" with hand-made 4-d embeddings whose dimensions loosely
 * mean (finance, water, function word, place). Q = K = V = the embeddings, one head. "bank" is
 * ambiguous (finance and water); attending to its context pulls its output towards finance.
 */
#include "example_util.h"

int main(void) {
  enum { L = 5, D = 4 };
  const char *tokens[L] = {"money", "in", "the", "bank", "account"};
  const float x[L * D] = {
      2.0f, 0.0f, 0.0f, 0.2f, /* money   */
      0.0f, 0.0f, 1.5f, 0.0f, /* in      */
      0.0f, 0.0f, 1.5f, 0.0f, /* the     */
      1.0f, 1.0f, 0.0f, 1.0f, /* bank: finance and water alike */
      2.0f, 0.0f, 0.0f, 0.5f, /* account */
  };
  float o[L * D], probs[L * L], lse[L];

  attn_params p;
  attn_params_init(&p, 1, 1, 1, L, L, D, D); /* B = 1, one head, Lq = Lk = 5 */
  example_check(attn_forward(&p, x, x, x, o, lse, probs), "attn_forward");

  printf("bidirectional self-attention, softmax(Q·Kᵀ/√%d)·V, each row = one query token:\n", D);
  example_print_weights(probs, L, L, tokens, tokens);
  printf("\n'bank' before attention: finance %.2f, water %.2f\n", x[3 * D], x[3 * D + 1]);
  printf("'bank' after attention:  finance %.2f, water %.2f  (its context is about money)\n",
         o[3 * D], o[3 * D + 1]);
  return o[3 * D] > o[3 * D + 1] ? 0 : 1;
}
