/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * libFuzzer target: the JSON-RPC framer and dispatcher on fuzzed byte streams over a small image.
 */
#include <config.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rpc-internal.h"

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

static struct rpc_ctx ctx;

/* A small image with data, zeros and a hole, made once. */
static void
setup (void)
{
  static bool done;
  char path[] = "/tmp/rb-fuzzr-XXXXXX";
  struct rb_create_opts o = { .size = 4 << 20, .cluster_size = 4096 };
  struct rb_open_opts ro = { .flags = RB_OPEN_NO_LOCK };
  static char buf[65536];
  int fd;

  if (done)
    return;
  done = true;
  fd = mkstemp (path);
  if (fd == -1)
    abort ();
  close (fd);
  if (rb_create (path, &o, true) == -1 || !(ctx.img = rb_open (path, &ro)))
    abort ();
  memset (buf, 0x5a, sizeof buf);
  rb_pwrite (ctx.img, buf, sizeof buf, 8192, 0);
  rb_zero (ctx.img, 65536, 1 << 20, 0);
  unlink (path);
  ctx.writable = true;
  pthread_mutex_init (&ctx.lock, NULL);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  json_tokener *tok = json_tokener_new_ex (RPC_MAX_DEPTH);
  size_t off = 0;

  setup ();
  /* The same framing as the server: texts one after another, a parse
   * error skips to the next line.
   */
  while (off < size) {
    json_object *text = json_tokener_parse_ex (tok, (const char *) data + off, size - off);
    enum json_tokener_error e = json_tokener_get_error (tok);
    if (e == json_tokener_continue)
      break;
    if (e != json_tokener_success) {
      json_tokener_reset (tok);
      while (off < size && data[off] != '\n')
        off++;
      off++;
      continue;
    }
    off += json_tokener_get_parse_end (tok);
    json_tokener_reset (tok);
    {
      json_object *reply = rpc_handle (&ctx, text);
      if (reply) {
        const char *s = json_object_to_json_string (reply);
        if (!s || !*s)
          abort ();
        json_object_put (reply);
      }
    }
    json_object_put (text);
  }
  json_tokener_free (tok);
  return 0;
}
