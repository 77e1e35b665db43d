/* picture.h — RGB canvas, text, colour scale and PNG writing for the attention heatmaps. */
#ifndef ATTN_BERT_PICTURE_H
#define ATTN_BERT_PICTURE_H

#include <stdint.h>

typedef struct pic {
  int w, h;
  uint8_t *rgb; /* [h, w, 3], white when new */
} pic;

int pic_new(pic *p, int w, int h);
void pic_free(pic *p);
void pic_rect(pic *p, int x, int y, int w, int h, const uint8_t c[3]);
/* ASCII text in 8×16 cells from (x, y) (top-left), or rotated to read upwards from (x, y). */
void pic_text(pic *p, int x, int y, const char *s, int vertical, const uint8_t c[3]);
/* The viridis colour of v in [0, 1]. */
void pic_color(double v, uint8_t out[3]);
int pic_write_png(const pic *p, const char *path);
/* A heatmap of the n × n weights w (row = query token, column = key token) with the tokens as
 * labels on both axes, a title and a colour bar from 0 to the largest weight. */
int pic_heatmap(const char *path, const char *title, const float *w, int n,
                const char *const *labels);

#endif
