/*
 * cross.c — encoder–decoder (cross) attention: queries from one sequence, keys and values from
 * another, Lq ≠ Lk.
 *
 * A decoder translating "la banque" attends to the five encoder states of "I went to the bank".
 * Each decoder query is built to look for one encoder token; the printed weights show which source
 * words each target word reads. Multi-query attention: 2 query heads share 1 key/value head.
 */
#include "example_util.h"

int main(void) {
  enum { HQ = 2, HKV = 1, LQ = 2, LK = 5, D = 4, DV = 3 };
  const char *src[LK] = {"I", "went", "to", "the", "bank"};
  const char *tgt[LQ] = {"la", "banque"};
  const float enc_k[LK * D] = {
      1, 0, 0, 0, /* I    */
      0, 1, 0, 0, /* went */
      0, 0, 1, 0, /* to   */
      0, 0, 0, 1, /* the  */
      1, 1, 0, 0, /* bank */
  };
  const float enc_v[LK * DV] = {1, 0, 0, 0, 1, 0, 0, 0, 1, 0.5f, 0.5f, 0, 0, 0.5f, 0.5f};
  /* head 0 and head 1 ask slightly different questions */
  const float dec_q[HQ * LQ * D] = {0, 0, 1, 4,  /* h0 "la"     → "the"  */
                                    3, 3, 0, 0,  /* h0 "banque" → "bank" */
                                    0, 0, 3, 3,  /* h1 "la"     → "to", "the" */
                                    4, 4, 0, 0}; /* h1 "banque" → "bank" */
  float o[HQ * LQ * DV], probs[HQ * LQ * LK];

  attn_params p;
  attn_params_init(&p, 1, HQ, HKV, LQ, LK, D, DV);
  example_check(attn_forward(&p, dec_q, enc_k, enc_v, o, NULL, probs), "attn_forward");

  for (int h = 0; h < HQ; h++) {
    printf("cross-attention, query head %d (reads key/value head %d):\n", h, h / (HQ / HKV));
    example_print_weights(probs + h * LQ * LK, LQ, LK, tgt, src);
    printf("\n");
  }
  printf("output of 'banque', head 0: [%.3f %.3f %.3f]\n", o[DV], o[DV + 1], o[DV + 2]);
  /* "banque" must attend most to "bank" in both heads */
  for (int h = 0; h < HQ; h++) {
    const float *row = probs + (h * LQ + 1) * LK;
    for (int j = 0; j < LK - 1; j++)
      if (row[j] >= row[LK - 1]) return 1;
  }
  return 0;
}
