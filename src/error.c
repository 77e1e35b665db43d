/* error.c — status strings and the per-thread detail message behind attn_last_error(). */
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>

static _Thread_local char attn__message[512];

attn_status attn__fail(attn_status status, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(attn__message, sizeof attn__message, fmt, ap);
  va_end(ap);
  return status;
}

void attn__clear_error(void) { attn__message[0] = '\0'; }

const char *attn_last_error(void) { return attn__message; }

const char *attn_status_str(attn_status status) {
  switch (status) {
#define ATTN__STATUS_CASE(name, msg)                                                               \
  case ATTN_STATUS_##name:                                                                         \
    return msg;
    ATTN_STATUS_MAP(ATTN__STATUS_CASE)
#undef ATTN__STATUS_CASE
  default:
    return "unknown status";
  }
}

const char *attn_version(void) { return ATTN_VERSION_STRING; }
