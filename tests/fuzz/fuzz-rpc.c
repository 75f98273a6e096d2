/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * libFuzzer target: the JSON-RPC framer and dispatcher (a session) on fuzzed byte streams over a small image.
 */
#include <config.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rpc-internal.h"

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

static struct rpc_state st, st_token;

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
  if (rb_create (path, &o, true) == -1 || !(st.img = rb_open (path, &ro)))
    abort ();
  memset (buf, 0x5a, sizeof buf);
  rb_pwrite (st.img, buf, sizeof buf, 8192, 0);
  rb_zero (st.img, 65536, 1 << 20, 0);
  unlink (path);
  st.writable = true;
  pthread_mutex_init (&st.lock, NULL);
  st_token = st;
  pthread_mutex_init (&st_token.lock, NULL);
  st_token.token = (char *) "s3cret";
  st_token.token_len = 6;
}

/* Whether every number in o prints as a JSON number: json-c's parser, even
 * strict, takes NaN, Infinity and "1.", which a client's need not.
 */
static bool
numbers_are_json (json_object *o)
{
  size_t i;

  switch (json_object_get_type (o)) {
  case json_type_int:
  case json_type_double:
    return rpc_json_number_text (json_object_to_json_string_ext (o, JSON_C_TO_STRING_PLAIN));
  case json_type_array:
    for (i = 0; i < json_object_array_length (o); i++)
      if (!numbers_are_json (json_object_array_get_idx (o, i)))
        return false;
    return true;
  case json_type_object: {
    json_object_object_foreach (o, k, v) {
      (void) k;
      if (!numbers_are_json (v))
        return false;
    }
    return true;
  }
  default:
    return true;
  }
}

/* Every complete reply line is one JSON text in valid UTF-8 (json-c checks,
 * strictly, and every number is a JSON number); they are taken as a client
 * would.  At the end nothing is left half-queued.
 */
static void
check_replies (struct rpc_session *s, bool end)
{
  size_t off = s->out_off;

  while (off < s->out_len) {
    const char *line = s->out + off;
    const char *nl = memchr (line, '\n', s->out_len - off);
    json_tokener *t;
    json_object *o;
    size_t n;

    if (!nl) {
      if (end)
        abort ();               /* a batch left open */
      break;
    }
    n = nl - line;
    t = json_tokener_new_ex (64);
    json_tokener_set_flags (t, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
    o = json_tokener_parse_ex (t, line, n);
    if (!o && json_tokener_get_error (t) == json_tokener_continue)
      o = json_tokener_parse_ex (t, "", 1);
    if (!o || (!json_object_is_type (o, json_type_object) && !json_object_is_type (o, json_type_array)) ||
        !numbers_are_json (o))
      abort ();
    json_object_put (o);
    json_tokener_free (t);
    off += n + 1;
  }
  rpc_session_sent (s, off - s->out_off);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  struct rpc_session s;
  size_t off = 1, chunk;
  bool request;

  setup ();
  if (size < 1)
    return 0;
  /* The first byte: with or without a token, and the size of the pieces
   * the stream arrives in (as reads from a socket would cut it).
   */
  if (rpc_session_init (&s, data[0] & 1 ? &st_token : &st) == -1)
    abort ();
  chunk = 1 + (data[0] >> 1) * 97;
  while (off < size) {
    size_t n = size - off < chunk ? size - off : chunk;
    if (rpc_session_feed (&s, (const char *) data + off, n) == -1)
      abort ();
    off += n;
    while (rpc_session_step (&s, &request) == 1)
      check_replies (&s, false);
  }
  rpc_session_eof (&s);
  while (rpc_session_step (&s, &request) == 1)
    check_replies (&s, false);
  check_replies (&s, true);
  rpc_session_free (&s);
  return 0;
}
