/* unicode.h — the Unicode data of the BERT tokenizer (tables generated into unicode_tables.c by
 * tools/gen_unicode_tables.py) and lookups over it. */
#ifndef ATTN_BERT_UNICODE_H
#define ATTN_BERT_UNICODE_H

#include <stdint.h>

typedef struct attn_bert_range {
  uint32_t lo, hi; /* inclusive */
} attn_bert_range;

/* cp → up to 4 code points (0-terminated unless n = 4); n: count, 0 if the map leaves none. */
typedef struct attn_bert_map {
  uint32_t cp;
  uint32_t to[4];
  int n;
} attn_bert_map;

extern const attn_bert_range attn_bert_removed[], attn_bert_space[], attn_bert_cjk[],
    attn_bert_punct[], attn_bert_split[];
extern const int attn_bert_removed_count, attn_bert_space_count, attn_bert_cjk_count,
    attn_bert_punct_count, attn_bert_split_count;
extern const attn_bert_map attn_bert_fold[];
extern const int attn_bert_fold_count;

/* 1 if cp lies in one of the n sorted ranges. */
int attn_bert_in(const attn_bert_range *r, int n, uint32_t cp);
/* The entry for cp in a sorted map, or NULL. */
const attn_bert_map *attn_bert_find(const attn_bert_map *m, int n, uint32_t cp);

#endif
