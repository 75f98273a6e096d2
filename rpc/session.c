/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * One JSON-RPC connection without its socket: framing, limits, batches member by member, replies.
 */
#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rpc-internal.h"

#define FEED_PIECE 4096          /* bytes given to json-c at once (then counted) */
#define OBJECT_COST 1024         /* what json-c holds per object or array, about */
#define ITEM_COST 128            /* and per member or element */

/* The one reply built without json-c: for when json-c cannot allocate. */
static const char oom_reply[] =
  "{\"jsonrpc\":\"2.0\",\"error\":{\"code\":-32603,\"message\":\"Internal error: out of memory\"},\"id\":null}";

int
rpc_session_init (struct rpc_session *s, struct rpc_state *st)
{
  memset (s, 0, sizeof *s);
  s->state = st;
  s->tok = json_tokener_new_ex (RPC_MAX_DEPTH);
  if (!s->tok)
    return -1;
  /* Invalid UTF-8 is a parse error, so every string taken in is valid. */
  json_tokener_set_flags (s->tok, JSON_TOKENER_VALIDATE_UTF8);
  return 0;
}

void
rpc_session_free (struct rpc_session *s)
{
  if (s->tok)
    json_tokener_free (s->tok);
  json_object_put (s->batch);
  free (s->in);
  free (s->out);
  memset (s, 0, sizeof *s);
}

size_t
rpc_session_unsent (const struct rpc_session *s)
{
  return s->out_len - s->out_off;
}

void
rpc_session_sent (struct rpc_session *s, size_t n)
{
  s->out_off += n;
  if (s->out_off < s->out_len)
    return;
  s->out_off = s->out_len = 0;
  if (s->out_alloc > RPC_OUT_HIGH) {   /* give back what a large reply took */
    free (s->out);
    s->out = NULL;
    s->out_alloc = 0;
  }
}

bool
rpc_session_wants_input (const struct rpc_session *s)
{
  return !s->broken && !s->batch && s->in_off == s->in_len &&
    rpc_session_unsent (s) < RPC_OUT_HIGH;
}

bool
rpc_session_has_work (const struct rpc_session *s)
{
  return !s->broken && rpc_session_unsent (s) < RPC_OUT_HIGH &&
    (s->batch || s->in_off < s->in_len);
}

size_t
rpc_session_memory (const struct rpc_session *s)
{
  return s->out_alloc + s->in_len + s->pending + (size_t) s->containers * OBJECT_COST +
    (size_t) s->items * ITEM_COST + s->batch_cost;
}

int
rpc_session_feed (struct rpc_session *s, const char *buf, size_t len)
{
  char *p;

  if (s->in_off == s->in_len)
    s->in_off = s->in_len = 0;
  p = realloc (s->in, s->in_len + len);
  if (!p)
    return -1;
  s->in = p;
  memcpy (s->in + s->in_len, buf, len);
  s->in_len += len;
  return 0;
}

void
rpc_session_eof (struct rpc_session *s)
{
  /* A newline ends a text waiting for a delimiter (a bare number). */
  if (rpc_session_feed (s, "\n", 1) == -1)
    s->broken = true;
}

/* Append n bytes to the replies.  Returns 0 / -1. */
static int
queue (struct rpc_session *s, const char *data, size_t n)
{
  size_t unsent = rpc_session_unsent (s);

  if (n == 0)
    return 0;
  if (s->out_off > 0) {
    memmove (s->out, s->out + s->out_off, unsent);
    s->out_off = 0;
    s->out_len = unsent;
  }
  if (unsent + n > s->out_alloc) {
    size_t a = s->out_alloc * 2 > unsent + n ? s->out_alloc * 2 : unsent + n;
    char *p = realloc (s->out, a);
    if (!p)
      return -1;
    s->out = p;
    s->out_alloc = a;
  }
  memcpy (s->out + s->out_len, data, n);
  s->out_len += n;
  return 0;
}

/* Queue prefix, the reply (NULL: json-c had no memory for it), suffix; put
 * the reply.  Returns the bytes queued.  If even that fails the connection
 * is broken (it is closed once the rest is sent).
 */
static size_t
queue_reply (struct rpc_session *s, json_object *reply, const char *prefix, const char *suffix)
{
  const int flags = JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE;
  json_object *bad = NULL;
  const char *text = NULL;
  size_t n = 0;

  if (reply)
    text = json_object_to_json_string_length (reply, flags, &n);
  if (text && !rpc_utf8_valid (text, n)) {
    /* Every string is made valid on its way in, so this is a bug: never send it. */
    bad = rpc_error_response (NULL, RPC_INTERNAL_ERROR, "Internal error: the reply was not valid UTF-8", NULL);
    text = bad ? json_object_to_json_string_length (bad, flags, &n) : NULL;
  }
  if (!text) {
    text = oom_reply;
    n = sizeof oom_reply - 1;
  }
  if (queue (s, prefix, strlen (prefix)) == -1 || queue (s, text, n) == -1 ||
      queue (s, suffix, strlen (suffix)) == -1)
    s->broken = true;
  n += strlen (prefix) + strlen (suffix);
  json_object_put (reply);
  json_object_put (bad);
  return n;
}

/* Forget the text being framed. */
static void
reset_text (struct rpc_session *s)
{
  json_tokener_reset (s->tok);
  s->pending = 0;
  s->containers = s->items = 0;
  s->in_string = s->escape = false;
}

/* Count the objects, arrays, members and elements in n more bytes of the text. */
static void
scan (struct rpc_session *s, const char *p, size_t n)
{
  size_t i;

  for (i = 0; i < n; i++) {
    if (s->in_string) {
      if (s->escape)
        s->escape = false;
      else if (p[i] == '\\')
        s->escape = true;
      else if (p[i] == '"')
        s->in_string = false;
    }
    else if (p[i] == '"')
      s->in_string = true;
    else if (p[i] == '{' || p[i] == '[')
      s->containers++;
    else if (p[i] == ',' || p[i] == ':')
      s->items++;
  }
}

/* Why the text being framed is refused before json-c has all of it, or NULL. */
static const char *
over_limit (const struct rpc_session *s)
{
  if (s->pending > RPC_MAX_REQUEST)
    return "Invalid Request: a request is larger than 1 MiB";
  if (s->containers > RPC_MAX_CONTAINERS)
    return "Invalid Request: a request holds more than 4096 objects and arrays";
  if (s->items > RPC_MAX_ITEMS)
    return "Invalid Request: a request holds more than 16384 members and elements";
  return NULL;
}

/* A batch member: run it, or refuse it once the batch's reply is too large. */
static void
batch_step (struct rpc_session *s)
{
  struct rpc_state *st = s->state;
  json_object *m = json_object_array_get_idx (s->batch, s->batch_next++), *reply;
  bool due = true;

  if (s->batch_reply >= RPC_MAX_BATCH_REPLY) {
    rpc_count (st, &st->requests, 1);
    rpc_count (st, &st->errors, 1);
    due = !json_object_is_type (m, json_type_object) || json_object_object_get_ex (m, "id", NULL);
    reply = due ? rpc_refuse (m, RPC_LIMIT_ERROR, "this batch's reply passed 16 MiB, so this "
                              "request was not run: send it in another batch") : NULL;
  }
  else
    reply = rpc_handle_one (s, m, &due);
  if (due) {
    s->batch_reply += queue_reply (s, reply, s->batch_open ? "," : "[", "");
    s->batch_open = true;
  }
  if (s->batch_next == json_object_array_length (s->batch)) {
    if (s->batch_open && queue (s, "]\n", 2) == -1)
      s->broken = true;
    json_object_put (s->batch);
    s->batch = NULL;
    s->batch_cost = 0;
  }
}

/* A complete text: a request is answered, a batch is set up. */
static void
take_text (struct rpc_session *s, json_object *text, size_t cost)
{
  json_object *reply;
  bool due = true;

  if (json_object_is_type (text, json_type_array)) {
    size_t n = json_object_array_length (text);
    if (n == 0 || n > RPC_MAX_BATCH) {
      queue_reply (s, rpc_error_response (NULL, RPC_INVALID_REQUEST, n == 0
                                          ? "Invalid Request: empty batch"
                                          : "Invalid Request: batch of more than 1024 requests",
                                          NULL), "", "\n");
      json_object_put (text);
      return;
    }
    s->batch = text;
    s->batch_next = s->batch_reply = 0;
    s->batch_open = false;
    s->batch_cost = cost;
    return;
  }
  reply = rpc_handle_one (s, text, &due);
  if (due)
    queue_reply (s, reply, "", "\n");
  json_object_put (text);
}

int
rpc_session_step (struct rpc_session *s, bool *request)
{
  bool worked = false;

  *request = false;
  if (s->broken || rpc_session_unsent (s) >= RPC_OUT_HIGH)
    return 0;
  if (s->batch) {
    batch_step (s);
    return 1;
  }
  while (s->in_off < s->in_len) {
    const char *p = s->in + s->in_off, *why;
    size_t avail = s->in_len - s->in_off, used, piece;
    enum json_tokener_error jerr;
    json_object *text;

    worked = true;
    if (s->discard) {
      s->in_off = s->in_len;
      break;
    }
    if (s->skip_line) {
      const char *nl = memchr (p, '\n', avail);
      s->in_off = nl ? (size_t) (nl - s->in) + 1 : s->in_len;
      s->skip_line = !nl;
      continue;
    }
    if (s->pending == 0) {            /* whitespace between texts */
      while (avail > 0 && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
        p++, avail--, s->in_off++;
      if (avail == 0)
        break;
    }
    piece = avail < FEED_PIECE ? avail : FEED_PIECE;
    text = json_tokener_parse_ex (s->tok, p, piece);
    jerr = json_tokener_get_error (s->tok);
    used = jerr == json_tokener_continue ? piece : json_tokener_get_parse_end (s->tok);
    scan (s, p, used);
    s->pending += used;
    s->in_off += used;
    if (jerr == json_tokener_continue || jerr == json_tokener_success) {
      if ((why = over_limit (s)) != NULL) {
        /* The rest of the text cannot be skipped reliably: drop what follows
         * until the client closes (closing now could lose the reply).
         */
        json_object_put (text);
        reset_text (s);
        s->discard = true;
        queue_reply (s, rpc_error_response (NULL, RPC_INVALID_REQUEST, why, NULL), "", "\n");
        return 1;
      }
      if (jerr == json_tokener_continue)
        continue;
      {
        size_t cost = s->pending + (size_t) s->containers * OBJECT_COST + (size_t) s->items * ITEM_COST;
        reset_text (s);
        *request = true;
        take_text (s, text, cost);
      }
      return 1;
    }
    {
      char msg[200];
      snprintf (msg, sizeof msg, "Parse error: %s", jerr == json_tokener_error_depth
                ? "nesting deeper than 32 levels" : json_tokener_error_desc (jerr));
      json_object_put (text);
      reset_text (s);
      s->skip_line = true;            /* resynchronise at the next line */
      queue_reply (s, rpc_error_response (NULL, RPC_PARSE_ERROR, msg, NULL), "", "\n");
    }
    return 1;
  }
  return worked ? 1 : 0;
}
