/*
 * tokenizer.c — BERT WordPiece tokenization as Hugging Face's tokenizers library does it for
 * all-MiniLM-L6-v2 (BertNormalizer with clean_text, handle_chinese_chars, strip_accents (implied by
 * lowercase), lowercase; BertPreTokenizer; WordPiece with "##" and 100 characters per word at
 * most; [CLS] … [SEP]).
 *
 * Normalisation, per code point of valid UTF-8 (invalid bytes are replaced by U+FFFD, which
 * clean_text then drops): what clean_text drops (U+0000, U+FFFD, control, format and private-use
 * characters) is dropped, White_Space becomes a space, CJK ideographs get a space on each side,
 * and everything else is folded (NFD without combining marks, then lower case). Pre-tokenisation
 * splits at separators and isolates each punctuation character. The character classes and the
 * folded forms are tables (unicode_tables.c) read off the Hugging Face library itself, one code
 * point at a time, so they follow its Unicode data and rules exactly; tools/gen_unicode_tables.py
 * makes them.
 */
#include "bert.h"
#include "unicode.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int attn_bert_in(const attn_bert_range *r, int n, uint32_t cp) {
  int lo = 0, hi = n - 1;
  while (lo <= hi) {
    const int mid = (lo + hi) / 2;
    if (cp < r[mid].lo)
      hi = mid - 1;
    else if (cp > r[mid].hi)
      lo = mid + 1;
    else
      return 1;
  }
  return 0;
}

const attn_bert_map *attn_bert_find(const attn_bert_map *m, int n, uint32_t cp) {
  int lo = 0, hi = n - 1;
  while (lo <= hi) {
    const int mid = (lo + hi) / 2;
    if (cp < m[mid].cp)
      hi = mid - 1;
    else if (cp > m[mid].cp)
      lo = mid + 1;
    else
      return &m[mid];
  }
  return NULL;
}

/* ---- vocabulary: open addressing over FNV-1a hashes ---- */

static uint64_t fnv(const char *s, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++)
    h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
  return h;
}

int attn_bert_vocab_find(const attn_bert_vocab *v, const char *s, size_t n) {
  for (size_t at = fnv(s, n) & (v->cap - 1);; at = (at + 1) & (v->cap - 1)) {
    const int id = v->slots[at];
    if (id < 0) return -1;
    if (strlen(v->words[id]) == n && memcmp(v->words[id], s, n) == 0) return id;
  }
}

int attn_bert_vocab_load(attn_bert_vocab *v, const char *path, char *err, size_t err_size) {
  memset(v, 0, sizeof *v);
  FILE *f = fopen(path, "rb");
  if (!f) return snprintf(err, err_size, "%s: cannot open the vocabulary", path), -1;
  char line[1024];
  size_t cap_words = 0;
  while (fgets(line, sizeof line, f)) {
    size_t n = strcspn(line, "\r\n");
    line[n] = '\0';
    if ((size_t)v->n == cap_words) {
      cap_words = cap_words ? 2 * cap_words : 32768;
      char **w = realloc(v->words, cap_words * sizeof *w);
      if (!w) break;
      v->words = w;
    }
    v->words[v->n] = malloc(n + 1);
    if (!v->words[v->n]) break;
    memcpy(v->words[v->n++], line, n + 1);
  }
  fclose(f);
  if (v->n == 0) return snprintf(err, err_size, "%s: empty vocabulary", path), -1;
  for (v->cap = 1; v->cap < 2 * (size_t)v->n; v->cap *= 2) {
  }
  v->slots = malloc(v->cap * sizeof *v->slots);
  if (!v->slots) return snprintf(err, err_size, "out of memory"), -1;
  for (size_t i = 0; i < v->cap; i++)
    v->slots[i] = -1;
  for (int id = 0; id < v->n; id++) {
    const size_t n = strlen(v->words[id]);
    if (attn_bert_vocab_find(v, v->words[id], n) >= 0) continue; /* first occurrence wins */
    size_t at = fnv(v->words[id], n) & (v->cap - 1);
    while (v->slots[at] >= 0)
      at = (at + 1) & (v->cap - 1);
    v->slots[at] = id;
  }
  const char *special[5] = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"};
  int *ids[5] = {&v->pad, &v->unk, &v->cls, &v->sep, &v->mask};
  for (int i = 0; i < 5; i++)
    if ((*ids[i] = attn_bert_vocab_find(v, special[i], strlen(special[i]))) < 0)
      return snprintf(err, err_size, "%s: the vocabulary lacks %s", path, special[i]), -1;
  return 0;
}

void attn_bert_vocab_free(attn_bert_vocab *v) {
  for (int i = 0; i < v->n; i++)
    free(v->words[i]);
  free(v->words);
  free(v->slots);
  memset(v, 0, sizeof *v);
}

/* ---- UTF-8 ---- */

/* Decodes one code point at s[*i] (advancing *i); invalid sequences give U+FFFD, one byte. */
static uint32_t utf8_next(const unsigned char *s, size_t n, size_t *i) {
  const unsigned char c = s[*i];
  int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
  if (len == 0 || *i + (size_t)len > n) {
    (*i)++;
    return 0xFFFD;
  }
  uint32_t cp = len == 1 ? c : c & (0x7F >> len);
  for (int k = 1; k < len; k++) {
    if ((s[*i + (size_t)k] & 0xC0) != 0x80) {
      (*i)++;
      return 0xFFFD;
    }
    cp = cp << 6 | (s[*i + (size_t)k] & 0x3F);
  }
  static const uint32_t min_of[5] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < min_of[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp < 0xE000)) {
    (*i)++;
    return 0xFFFD;
  }
  *i += (size_t)len;
  return cp;
}

static size_t utf8_put(uint32_t cp, char *out) {
  if (cp < 0x80) return out[0] = (char)cp, 1;
  if (cp < 0x800) return out[0] = (char)(0xC0 | cp >> 6), out[1] = (char)(0x80 | (cp & 0x3F)), 2;
  if (cp < 0x10000) {
    out[0] = (char)(0xE0 | cp >> 12), out[1] = (char)(0x80 | (cp >> 6 & 0x3F));
    out[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
  }
  out[0] = (char)(0xF0 | cp >> 18), out[1] = (char)(0x80 | (cp >> 12 & 0x3F));
  out[2] = (char)(0x80 | (cp >> 6 & 0x3F)), out[3] = (char)(0x80 | (cp & 0x3F));
  return 4;
}

/* ---- character classes ---- */

static int is_removed(uint32_t c) {
  return attn_bert_in(attn_bert_removed, attn_bert_removed_count, c);
}
static int is_space(uint32_t c) { return attn_bert_in(attn_bert_space, attn_bert_space_count, c); }
static int is_cjk(uint32_t c) { return attn_bert_in(attn_bert_cjk, attn_bert_cjk_count, c); }
/* the pre-tokeniser's classes, of a normalised code point */
static int is_punct(uint32_t c) { return attn_bert_in(attn_bert_punct, attn_bert_punct_count, c); }
static int is_split(uint32_t c) { return attn_bert_in(attn_bert_split, attn_bert_split_count, c); }

/* ---- normalisation into a code point buffer ---- */

typedef struct cpbuf {
  uint32_t *cp;
  size_t n, cap;
  int oom;
} cpbuf;

static void push(cpbuf *b, uint32_t c) {
  if (b->n == b->cap) {
    size_t cap = b->cap ? 2 * b->cap : 256;
    uint32_t *p = realloc(b->cp, cap * sizeof *p);
    if (!p) {
      b->oom = 1;
      return;
    }
    b->cp = p, b->cap = cap;
  }
  b->cp[b->n++] = c;
}

/* Appends the folded form of c (NFD without combining marks, then lower case) to b. */
static void fold(cpbuf *b, uint32_t c) {
  if (c >= 0xAC00 && c <= 0xD7A3) { /* Hangul syllable: its jamo (algorithmic NFD, no marks) */
    const uint32_t s = c - 0xAC00;
    push(b, 0x1100 + s / (21 * 28));
    push(b, 0x1161 + s % (21 * 28) / 28);
    if (s % 28) push(b, 0x11A7 + s % 28);
    return;
  }
  const attn_bert_map *m = attn_bert_find(attn_bert_fold, attn_bert_fold_count, c);
  if (!m) {
    push(b, c);
    return;
  }
  for (int i = 0; i < m->n; i++)
    push(b, m->to[i]);
}

/* ---- WordPiece ---- */

typedef struct idbuf {
  int *id;
  int n, cap, oom;
} idbuf;

static void push_id(idbuf *b, int id) {
  if (b->n == b->cap) {
    int cap = b->cap ? 2 * b->cap : 64;
    int *p = realloc(b->id, (size_t)cap * sizeof *p);
    if (!p) {
      b->oom = 1;
      return;
    }
    b->id = p, b->cap = cap;
  }
  b->id[b->n++] = id;
}

/* One pre-token (code points w[0..n)): greedy longest match first; a word that cannot be split
 * entirely, or longer than 100 characters, becomes [UNK]. */
static void wordpiece(const attn_bert_vocab *v, const uint32_t *w, size_t n, idbuf *out) {
  if (n > 100) {
    push_id(out, v->unk);
    return;
  }
  char buf[1024];
  size_t bytes[101]; /* UTF-8 offset of each character boundary */
  size_t at = 2;     /* room for "##" */
  bytes[0] = 0;
  for (size_t i = 0; i < n; i++) {
    at += utf8_put(w[i], buf + at);
    bytes[i + 1] = at - 2;
  }
  const int first = out->n;
  for (size_t start = 0; start < n;) {
    size_t end = n;
    int id = -1;
    for (; end > start; end--) {
      const char *piece = buf + 2 + bytes[start];
      size_t len = bytes[end] - bytes[start];
      if (start > 0) { /* a continuation: "##" before it */
        piece -= 2;
        memcpy((char *)piece, "##", 2);
        len += 2;
      }
      id = attn_bert_vocab_find(v, piece, len);
      if (id >= 0) break;
    }
    if (id < 0) {
      out->n = first;
      push_id(out, v->unk);
      return;
    }
    push_id(out, id);
    start = end;
  }
}

int attn_bert_tokenize(const attn_bert_vocab *v, const char *text, int max_len, int **ids_out,
                       int *n_out) {
  cpbuf norm = {0};
  const size_t len = strlen(text);
  for (size_t i = 0; i < len;) {
    const uint32_t c = utf8_next((const unsigned char *)text, len, &i);
    if (is_removed(c)) continue;
    if (is_space(c)) {
      push(&norm, ' ');
    } else if (is_cjk(c)) {
      push(&norm, ' ');
      fold(&norm, c);
      push(&norm, ' ');
    } else {
      fold(&norm, c);
    }
  }
  idbuf ids = {0};
  push_id(&ids, v->cls);
  for (size_t i = 0; i < norm.n;) { /* pre-tokens: runs of non-space, punctuation alone */
    if (is_split(norm.cp[i])) {
      i++;
      continue;
    }
    size_t j = i + 1;
    if (!is_punct(norm.cp[i]))
      while (j < norm.n && !is_split(norm.cp[j]) && !is_punct(norm.cp[j]))
        j++;
    wordpiece(v, norm.cp + i, j - i, &ids);
    i = j;
  }
  if (max_len >= 2 && ids.n > max_len - 1) ids.n = max_len - 1; /* truncation keeps [SEP] */
  push_id(&ids, v->sep);
  free(norm.cp);
  if (norm.oom || ids.oom) {
    free(ids.id);
    return -1;
  }
  *ids_out = ids.id;
  *n_out = ids.n;
  return 0;
}
