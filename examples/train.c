/*
 * train.c — training with attn_backward: a one-head attention model learns which sense of "bank"
 * a sentence means (river or money) from the word that disambiguates it.
 *
 * Sentences are 8 tokens: filler words, "bank" somewhere, and one context word somewhere else
 * (river, water, boat, … or money, loan, cash, …). The model: token embeddings E, projections
 * Wq, Wk, Wv, bidirectional self-attention through attn_forward, the output row at "bank" goes
 * through a linear classifier. Cross-entropy loss; attn_backward gives dQ, dK, dV; the rest of the
 * chain rule and Adam are a few loops here. At start-up the analytic gradient is checked against
 * central finite differences. It prints the loss as it falls, the accuracy on fresh sentences, and
 * the attention weights of "bank" over one sentence: most weight lands on the context word.
 */
#include "example_util.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { L = 8, DM = 16, DH = 16, B = 64, STEPS = 200 };

static const char *const vocab[] = {
    "bank",   "river",   "water",   "boat",   "fish", "shore", "mud", "money", "loan",  "cash",
    "salary", "deposit", "account", "credit", "the",  "a",     "I",   "we",    "went",  "to",
    "by",     "saw",     "my",      "at",     "on",   "was",   "old", "near",  "today", "with"};
enum {
  V = sizeof vocab / sizeof vocab[0],
  BANK = 0,
  RIVER0 = 1,
  MONEY0 = 7,
  SENSE_WORDS = 6,
  FILLER0 = 14
};

/* Parameters, their gradients and Adam moments share one layout. */
typedef struct model {
  float e[V * DM], wq[DM * DH], wk[DM * DH], wv[DM * DH], wo[DH * 2], bo[2];
} model;
enum { N_PARAMS = sizeof(model) / sizeof(float) };

static uint64_t rng_state = 42;
static uint32_t rnd(void) { /* xorshift64* */
  rng_state ^= rng_state >> 12, rng_state ^= rng_state << 25, rng_state ^= rng_state >> 27;
  return (uint32_t)((rng_state * 0x2545F4914F6CDD1Dull) >> 32);
}
static float rnd_normal(void) {
  float u = ((float)rnd() + 1.0f) / 4294967296.0f, w = (float)rnd() / 4294967296.0f;
  return sqrtf(-2.0f * logf(u)) * cosf(6.2831853f * w);
}

/* A batch: tokens, the position of "bank", the label (0 river, 1 money). */
typedef struct batch {
  int tok[B][L], pos[B], label[B];
} batch;

static void make_batch(batch *bt) {
  for (int b = 0; b < B; b++) {
    for (int i = 0; i < L; i++)
      bt->tok[b][i] = FILLER0 + (int)(rnd() % (V - FILLER0));
    int p = (int)(rnd() % L), c = (int)(rnd() % (L - 1));
    if (c >= p) c++;
    bt->label[b] = (int)(rnd() % 2);
    bt->pos[b] = p;
    bt->tok[b][p] = BANK;
    bt->tok[b][c] = (bt->label[b] ? MONEY0 : RIVER0) + (int)(rnd() % SENSE_WORDS);
  }
}

/* Activations of one forward pass. */
typedef struct acts {
  float x[B * L * DM], q[B * L * DH], k[B * L * DH], v[B * L * DH], o[B * L * DH], lse[B * L];
  float prob[B][2];
} acts;

/* y [n, cols] = x [n, rows] · w [rows, cols] */
static void matmul(const float *x, const float *w, float *y, int n, int rows, int cols) {
  for (int i = 0; i < n; i++)
    for (int c = 0; c < cols; c++) {
      float s = 0.0f;
      for (int r = 0; r < rows; r++)
        s += x[i * rows + r] * w[r * cols + c];
      y[i * cols + c] = s;
    }
}

/* The attention calls' parameters, with one workspace for all of them (the forward with and
 * without P, the backward): sized once for the largest, it makes every call of the training loop
 * allocate nothing. */
static attn_params attention_params(void) {
  static void *workspace;
  static size_t bytes;
  attn_params p;
  attn_params_init(&p, B, 1, 1, L, L, DH, DH); /* [B, 1 head, L, DH], bidirectional */
  if (!workspace) {
    size_t need[3] = {0, 0, 0};
    example_check(attn_forward_scratch_bytes(&p, 0, &need[0]), "attn_forward_scratch_bytes");
    example_check(attn_forward_scratch_bytes(&p, 1, &need[1]), "attn_forward_scratch_bytes");
    example_check(attn_backward_scratch_bytes(&p, 0, &need[2]), "attn_backward_scratch_bytes");
    for (int i = 0; i < 3; i++)
      bytes = need[i] > bytes ? need[i] : bytes;
    workspace = aligned_alloc(64, bytes ? bytes : 64); /* the queries give multiples of 64 */
    if (!workspace) {
      fprintf(stderr, "train: out of memory\n");
      exit(1);
    }
  }
  p.workspace = workspace, p.workspace_bytes = bytes;
  return p;
}

/* Forward: returns the mean cross-entropy. */
static double forward(const model *m, const batch *bt, acts *a) {
  for (int b = 0; b < B; b++)
    for (int i = 0; i < L; i++)
      memcpy(a->x + (b * L + i) * DM, m->e + bt->tok[b][i] * DM, sizeof(float) * DM);
  matmul(a->x, m->wq, a->q, B * L, DM, DH);
  matmul(a->x, m->wk, a->k, B * L, DM, DH);
  matmul(a->x, m->wv, a->v, B * L, DM, DH);
  attn_params p = attention_params();
  example_check(attn_forward(&p, a->q, a->k, a->v, a->o, a->lse, NULL), "attn_forward");
  double loss = 0;
  for (int b = 0; b < B; b++) {
    const float *h = a->o + (b * L + bt->pos[b]) * DH;
    float z[2];
    for (int c = 0; c < 2; c++) {
      z[c] = m->bo[c];
      for (int d = 0; d < DH; d++)
        z[c] += h[d] * m->wo[d * 2 + c];
    }
    const float mx = z[0] > z[1] ? z[0] : z[1];
    const float e0 = expf(z[0] - mx), e1 = expf(z[1] - mx);
    a->prob[b][0] = e0 / (e0 + e1), a->prob[b][1] = e1 / (e0 + e1);
    loss -= log((double)a->prob[b][bt->label[b]] + 1e-30);
  }
  return loss / B;
}

/* Backward: g = ∂loss/∂parameters (overwritten). */
static void backward(const model *m, const batch *bt, const acts *a, model *g) {
  static float d_o[B * L * DH], dq[B * L * DH], dk[B * L * DH], dv[B * L * DH], dx[B * L * DM];
  memset(g, 0, sizeof *g);
  memset(d_o, 0, sizeof d_o);
  for (int b = 0; b < B; b++) {
    const float *h = a->o + (b * L + bt->pos[b]) * DH;
    float *dh = d_o + (b * L + bt->pos[b]) * DH; /* only the "bank" row feeds the loss */
    for (int c = 0; c < 2; c++) {
      const float dz = (a->prob[b][c] - (bt->label[b] == c ? 1.0f : 0.0f)) / B;
      g->bo[c] += dz;
      for (int d = 0; d < DH; d++) {
        g->wo[d * 2 + c] += h[d] * dz;
        dh[d] += m->wo[d * 2 + c] * dz;
      }
    }
  }
  attn_params p = attention_params();
  example_check(attn_backward(&p, a->q, a->k, a->v, a->o, a->lse, d_o, dq, dk, dv, NULL),
                "attn_backward");
  /* Q = X·Wq: dWq = Xᵀ·dQ, dX = dQ·Wqᵀ (the same for K and V) */
  const float *dproj[3] = {dq, dk, dv}, *w[3] = {m->wq, m->wk, m->wv};
  float *dw[3] = {g->wq, g->wk, g->wv};
  memset(dx, 0, sizeof dx);
  for (int t = 0; t < 3; t++)
    for (int n = 0; n < B * L; n++)
      for (int r = 0; r < DM; r++)
        for (int c = 0; c < DH; c++) {
          dw[t][r * DH + c] += a->x[n * DM + r] * dproj[t][n * DH + c];
          dx[n * DM + r] += dproj[t][n * DH + c] * w[t][r * DH + c];
        }
  for (int b = 0; b < B; b++)
    for (int i = 0; i < L; i++)
      for (int d = 0; d < DM; d++)
        g->e[bt->tok[b][i] * DM + d] += dx[(b * L + i) * DM + d];
}

/* Central differences on a sample of parameters; returns the largest relative error. */
static double gradient_check(model *m, const batch *bt, acts *a) {
  static model g;
  forward(m, bt, a);
  backward(m, bt, a, &g);
  float *w = (float *)(void *)m;
  const float *gw = (const float *)(const void *)&g;
  double worst = 0;
  for (int s = 0; s < 40; s++) {
    const int i = (int)(rnd() % N_PARAMS);
    const float keep = w[i], h = 1e-2f;
    w[i] = keep + h;
    const double lp = forward(m, bt, a);
    w[i] = keep - h;
    const double lm = forward(m, bt, a);
    w[i] = keep;
    const double fd = (lp - lm) / (2.0 * h), err = fabs(fd - gw[i]) / (fabs(fd) + 1e-3);
    if (err > worst) worst = err;
  }
  return worst;
}

int main(void) {
  static model m, g, m1, m2;
  static acts a;
  static batch bt;
  float *w = (float *)(void *)&m, *gw = (float *)(void *)&g;
  float *mom1 = (float *)(void *)&m1, *mom2 = (float *)(void *)&m2;
  for (int i = 0; i < N_PARAMS; i++)
    w[i] = 0.3f * rnd_normal();

  make_batch(&bt);
  const double gc = gradient_check(&m, &bt, &a);
  printf("gradient check (40 parameters, central differences): max relative error %.2e\n", gc);
  if (gc > 2e-2) return 1;

  double first = 0, last = 0;
  const float lr = 0.005f, b1 = 0.9f, b2 = 0.999f;
  for (int step = 1; step <= STEPS; step++) { /* Adam */
    make_batch(&bt);
    const double loss = forward(&m, &bt, &a);
    backward(&m, &bt, &a, &g);
    for (int i = 0; i < N_PARAMS; i++) {
      mom1[i] = b1 * mom1[i] + (1 - b1) * gw[i];
      mom2[i] = b2 * mom2[i] + (1 - b2) * gw[i] * gw[i];
      const float mh = mom1[i] / (1 - powf(b1, (float)step)),
                  vh = mom2[i] / (1 - powf(b2, (float)step));
      w[i] -= lr * mh / (sqrtf(vh) + 1e-8f);
    }
    if (step == 1) first = loss;
    last = loss;
    if (step == 1 || step % 20 == 0) printf("step %3d  loss %.4f\n", step, loss);
  }

  int correct = 0;
  for (int rep = 0; rep < 10; rep++) {
    make_batch(&bt);
    forward(&m, &bt, &a);
    for (int b = 0; b < B; b++)
      correct += (a.prob[b][1] > a.prob[b][0]) == bt.label[b];
  }
  printf("accuracy on %d fresh sentences: %.1f %%\n", 10 * B, 100.0 * correct / (10 * B));

  /* the learned attention of "bank" over the first sentence of a fresh batch */
  make_batch(&bt);
  forward(&m, &bt, &a);
  static float probs[B * L * L];
  attn_params p = attention_params();
  example_check(attn_forward(&p, a.q, a.k, a.v, a.o, NULL, probs), "attn_forward");
  const float *row = probs + bt.pos[0] * L;
  printf("\n\"bank\" attends over: (%s sense, predicted %s)\n", bt.label[0] ? "money" : "river",
         a.prob[0][1] > a.prob[0][0] ? "money" : "river");
  int best = 0; /* the most attended token */
  for (int j = 0; j < L; j++) {
    printf("  %-8s %.3f ", vocab[bt.tok[0][j]], row[j]);
    for (int n = 0; n < (int)(row[j] * 40.0f + 0.5f); n++)
      putchar('#');
    putchar('\n');
    if (row[j] > row[best]) best = j;
  }
  printf("most attended: \"%s\"\n", vocab[bt.tok[0][best]]);
  double on_context = 0; /* mean weight of "bank" on the context word over the batch */
  for (int b = 0; b < B; b++)
    for (int j = 0; j < L; j++)
      if (bt.tok[b][j] >= RIVER0 && bt.tok[b][j] < FILLER0)
        on_context += probs[(b * L + bt.pos[b]) * L + j] / B;
  printf("mean weight of \"bank\" on the context word over %d sentences: %.2f (uniform: %.2f)\n", B,
         on_context, 1.0 / L);
  /* the example is a test too: the loss fell, the classifier works, bank looks at the context */
  return last < 0.1 * first && correct > 9 * B && on_context > 0.3 ? 0 : 1;
}
