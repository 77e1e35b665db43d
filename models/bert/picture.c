/*
 * picture.c — attention heatmaps as PNG without a library: an RGB canvas, text in Terminus 8×16
 * (font8x16.c), a perceptually ordered colour scale (viridis, linear between 9 of its points) and a
 * PNG writer (zlib stream of stored deflate blocks, CRC-32 and Adler-32 computed here).
 */
#include "picture.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern const uint8_t attn_bert_font8x16[95][16];

int pic_new(pic *p, int w, int h) {
  p->w = w, p->h = h;
  p->rgb = malloc((size_t)w * (size_t)h * 3);
  if (!p->rgb) return -1;
  memset(p->rgb, 255, (size_t)w * (size_t)h * 3);
  return 0;
}

void pic_free(pic *p) {
  free(p->rgb);
  p->rgb = NULL;
}

void pic_rect(pic *p, int x, int y, int w, int h, const uint8_t c[3]) {
  for (int j = y < 0 ? 0 : y; j < y + h && j < p->h; j++)
    for (int i = x < 0 ? 0 : x; i < x + w && i < p->w; i++)
      memcpy(p->rgb + ((size_t)j * (size_t)p->w + (size_t)i) * 3, c, 3);
}

static void dot(pic *p, int x, int y, const uint8_t c[3]) {
  if (x >= 0 && y >= 0 && x < p->w && y < p->h)
    memcpy(p->rgb + ((size_t)y * (size_t)p->w + (size_t)x) * 3, c, 3);
}

void pic_text(pic *p, int x, int y, const char *s, int vertical, const uint8_t c[3]) {
  for (int k = 0; s[k]; k++) {
    const unsigned char ch = (unsigned char)s[k];
    const uint8_t *g = attn_bert_font8x16[ch >= 32 && ch < 127 ? ch - 32 : '?' - 32];
    for (int row = 0; row < 16; row++)
      for (int col = 0; col < 8; col++)
        if (g[row] & (0x80 >> col)) {
          if (vertical) /* rotated 90° counter-clockwise, reading bottom to top */
            dot(p, x + row, y - 8 * k - col, c);
          else
            dot(p, x + 8 * k + col, y + row, c);
        }
  }
}

void pic_color(double v, uint8_t out[3]) {
  static const uint8_t viridis[9][3] = {{68, 1, 84},    {71, 44, 122},  {59, 81, 139},
                                        {44, 113, 142}, {33, 144, 141}, {39, 173, 129},
                                        {92, 200, 99},  {170, 220, 50}, {253, 231, 37}};
  v = v < 0 ? 0 : v > 1 ? 1 : v;
  const double at = v * 8;
  const int i = at >= 8 ? 7 : (int)at;
  const double f = at - i;
  for (int c = 0; c < 3; c++)
    out[c] = (uint8_t)(viridis[i][c] + f * (viridis[i + 1][c] - viridis[i][c]) + 0.5);
}

/* ---- PNG ---- */

static uint32_t crc_table[256];
static void crc_init(void) {
  for (uint32_t n = 0; n < 256; n++) {
    uint32_t c = n;
    for (int k = 0; k < 8; k++)
      c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    crc_table[n] = c;
  }
}
static uint32_t crc(uint32_t c, const uint8_t *b, size_t n) {
  c = ~c;
  for (size_t i = 0; i < n; i++)
    c = crc_table[(c ^ b[i]) & 0xff] ^ (c >> 8);
  return ~c;
}

static void be32(uint8_t *b, uint32_t v) {
  b[0] = (uint8_t)(v >> 24), b[1] = (uint8_t)(v >> 16), b[2] = (uint8_t)(v >> 8), b[3] = (uint8_t)v;
}

static int chunk(FILE *f, const char *type, const uint8_t *data, size_t n) {
  uint8_t head[8];
  be32(head, (uint32_t)n);
  memcpy(head + 4, type, 4);
  uint32_t c = crc(0, head + 4, 4);
  c = crc(c, data, n);
  uint8_t tail[4];
  be32(tail, c);
  return fwrite(head, 1, 8, f) == 8 && (n == 0 || fwrite(data, 1, n, f) == n) &&
                 fwrite(tail, 1, 4, f) == 4
             ? 0
             : -1;
}

int pic_write_png(const pic *p, const char *path) {
  crc_init();
  const size_t row = (size_t)p->w * 3 + 1, raw = row * (size_t)p->h;
  const size_t blocks = (raw + 65534) / 65535;
  uint8_t *z = malloc(2 + raw + 5 * blocks + 4), *r = malloc(raw);
  if (!z || !r) {
    free(z), free(r);
    return -1;
  }
  for (int y = 0; y < p->h; y++) { /* filter type 0 per row */
    r[(size_t)y * row] = 0;
    memcpy(r + (size_t)y * row + 1, p->rgb + (size_t)y * (size_t)p->w * 3, row - 1);
  }
  size_t at = 0;
  z[at++] = 0x78, z[at++] = 0x01; /* zlib header, no compression */
  for (size_t off = 0; off < raw; off += 65535) {
    const size_t n = raw - off < 65535 ? raw - off : 65535;
    z[at++] = off + n == raw; /* BFINAL, BTYPE = 00 (stored) */
    z[at++] = (uint8_t)n, z[at++] = (uint8_t)(n >> 8);
    z[at++] = (uint8_t)~n, z[at++] = (uint8_t)(~n >> 8);
    memcpy(z + at, r + off, n);
    at += n;
  }
  uint32_t a = 1, b = 0; /* Adler-32 */
  for (size_t i = 0; i < raw; i++)
    a = (a + r[i]) % 65521, b = (b + a) % 65521;
  be32(z + at, b << 16 | a);
  at += 4;
  uint8_t ihdr[13];
  be32(ihdr, (uint32_t)p->w), be32(ihdr + 4, (uint32_t)p->h);
  ihdr[8] = 8, ihdr[9] = 2, ihdr[10] = 0, ihdr[11] = 0, ihdr[12] = 0; /* 8-bit RGB */
  FILE *f = fopen(path, "wb");
  static const uint8_t sig[8] = {137, 80, 78, 71, 13, 10, 26, 10};
  int rc = !f || fwrite(sig, 1, 8, f) != 8 || chunk(f, "IHDR", ihdr, 13) ||
                   chunk(f, "IDAT", z, at) || chunk(f, "IEND", NULL, 0)
               ? -1
               : 0;
  if (f && fclose(f) != 0) rc = -1;
  free(z), free(r);
  return rc;
}

int pic_heatmap(const char *path, const char *title, const float *w, int n,
                const char *const *labels) {
  int lab = 0;
  for (int i = 0; i < n; i++)
    if ((int)strlen(labels[i]) > lab) lab = (int)strlen(labels[i]);
  const int cell = n <= 16 ? 32 : n <= 32 ? 20 : 12, margin = 8 * lab + 16;
  const int W = margin + n * cell + 110, Hh = 40 + n * cell + margin;
  pic p;
  if (pic_new(&p, W, Hh)) return -1;
  static const uint8_t black[3] = {0, 0, 0}, grey[3] = {120, 120, 120};
  pic_text(&p, 8, 8, title, 0, black);
  const int x0 = margin, y0 = 40;
  float mx = 0;
  for (int i = 0; i < n * n; i++)
    if (w[i] > mx) mx = w[i];
  for (int i = 0; i < n; i++) { /* row i: query token i, column j: key token j */
    pic_text(&p, x0 - 8 * (int)strlen(labels[i]) - 6, y0 + i * cell + (cell - 16) / 2, labels[i], 0,
             black);
    pic_text(&p, x0 + i * cell + (cell - 16) / 2, y0 + n * cell + 6 + 8 * (int)strlen(labels[i]),
             labels[i], 1, black);
    for (int j = 0; j < n; j++) {
      uint8_t c[3];
      pic_color(mx > 0 ? w[i * n + j] / mx : 0, c);
      pic_rect(&p, x0 + j * cell, y0 + i * cell, cell - 1, cell - 1, c);
    }
  }
  const int bx = x0 + n * cell + 24, bh = n * cell; /* colour bar: max at the top */
  for (int y = 0; y < bh; y++) {
    uint8_t c[3];
    pic_color(1.0 - (double)y / (bh > 1 ? bh - 1 : 1), c);
    pic_rect(&p, bx, y0 + y, 16, 1, c);
  }
  char txt[32];
  snprintf(txt, sizeof txt, "%.2f", (double)mx);
  pic_text(&p, bx + 20, y0, txt, 0, black);
  pic_text(&p, bx + 20, y0 + bh - 16, "0", 0, black);
  pic_text(&p, bx - 4, y0 + bh + 8, "weight", 0, grey);
  const int rc = pic_write_png(&p, path);
  pic_free(&p);
  return rc;
}
