/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * The JSON-RPC 2.0 envelope: requests, notifications, errors, the token, exports, dispatch.
 */
#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rpc-internal.h"

/* Length of the valid UTF-8 sequence at s (n bytes left), 0 if invalid:
 * no overlong forms, no surrogates, nothing above U+10FFFF.
 */
static size_t
utf8_seq (const unsigned char *s, size_t n)
{
  size_t len, i;
  uint32_t c;

  if (s[0] < 0x80)
    return 1;
  if (s[0] >= 0xc2 && s[0] <= 0xdf)
    len = 2, c = s[0] & 0x1f;
  else if (s[0] >= 0xe0 && s[0] <= 0xef)
    len = 3, c = s[0] & 0x0f;
  else if (s[0] >= 0xf0 && s[0] <= 0xf4)
    len = 4, c = s[0] & 0x07;
  else
    return 0;
  if (n < len)
    return 0;
  for (i = 1; i < len; i++) {
    if ((s[i] & 0xc0) != 0x80)
      return 0;
    c = (c << 6) | (s[i] & 0x3f);
  }
  if ((len == 3 && (c < 0x800 || (c >= 0xd800 && c <= 0xdfff))) ||
      (len == 4 && (c < 0x10000 || c > 0x10ffff)))
    return 0;
  return len;
}

bool
rpc_utf8_valid (const char *s, size_t n)
{
  const unsigned char *p = (const unsigned char *) s;
  size_t i = 0, k;

  while (i < n) {
    if (p[i] < 0x80) {
      i++;
      continue;
    }
    if ((k = utf8_seq (p + i, n - i)) == 0)
      return false;
    i += k;
  }
  return true;
}

json_object *
rpc_string (const char *s)
{
  const unsigned char *p = (const unsigned char *) s;
  size_t n = strlen (s), i = 0, o = 0, k;
  json_object *r;
  char *t;

  if (rpc_utf8_valid (s, n))
    return json_object_new_string (s);
  t = malloc (n * 3 + 1);       /* each bad byte becomes the 3 bytes of U+FFFD */
  if (!t)
    return NULL;
  while (i < n) {
    k = utf8_seq (p + i, n - i);
    if (k == 0) {
      memcpy (t + o, "\xef\xbf\xbd", 3);
      o += 3;
      i++;
    }
    else {
      memcpy (t + o, s + i, k);
      o += k;
      i += k;
    }
  }
  t[o] = '\0';
  r = json_object_new_string_len (t, o);
  free (t);
  return r;
}

bool
rpc_token_matches (const struct rpc_state *st, const char *token, size_t len)
{
  volatile unsigned char diff = len != st->token_len;
  size_t i;

  /* Always over the whole secret: the time says its length, nothing else. */
  for (i = 0; i < st->token_len; i++)
    diff |= (unsigned char) st->token[i] ^ (unsigned char) (i < len ? token[i] : 0);
  return diff == 0;
}

/* May the write methods run now?  Only if allowed (--writable,
 * rpc-writable=true) and the image is writable at this moment: the plugin
 * gets write access at the first NBD connection that may write.
 */
bool
rpc_can_write (struct rpc_ctx *ctx)
{
  return ctx->writable && ctx->img && !rb_is_readonly (ctx->img);
}

void
rpc_count (struct rpc_state *st, uint64_t *counter, uint64_t n)
{
  pthread_mutex_lock (&st->lock);
  *counter += n;
  pthread_mutex_unlock (&st->lock);
}

/* Returns a new error response, or NULL if json-c has no memory (the
 * caller then queues its fixed out-of-memory reply).
 */
json_object *
rpc_error_response (json_object *id, int code, const char *message, json_object *data)
{
  json_object *r = json_object_new_object (), *e = json_object_new_object ();

  if (!r || !e) {
    json_object_put (r);
    json_object_put (e);
    json_object_put (data);
    return NULL;
  }
  json_object_object_add (e, "code", json_object_new_int (code));
  json_object_object_add (e, "message", rpc_string (message));
  if (data)
    json_object_object_add (e, "data", data);
  json_object_object_add (r, "jsonrpc", json_object_new_string ("2.0"));
  json_object_object_add (r, "error", e);
  json_object_object_add (r, "id", id ? json_object_get (id) : NULL);
  return r;
}

/* -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?  (RFC 8259 section 6) */
bool
rpc_json_number_text (const char *p)
{
  if (*p == '-')
    p++;
  if (*p == '0')
    p++;
  else if (*p >= '1' && *p <= '9')
    while (*p >= '0' && *p <= '9')
      p++;
  else
    return false;
  if (*p == '.') {
    if (*++p < '0' || *p > '9')
      return false;
    while (*p >= '0' && *p <= '9')
      p++;
  }
  if (*p == 'e' || *p == 'E') {
    if (*++p == '+' || *p == '-')
      p++;
    if (*p < '0' || *p > '9')
      return false;
    while (*p >= '0' && *p <= '9')
      p++;
  }
  return *p == '\0';
}

/* The request's id if it is a valid one (string, number, null), else NULL;
 * *has_id tells whether it has one at all.  A number is echoed as the text
 * the client sent, which json-c's lenient parser may have taken from
 * something that is no JSON number (NaN, Infinity, "1.", "0029e" read as
 * "0029"): such an id is invalid, so that every reply stays JSON.
 */
static json_object *
request_id (json_object *req, bool *has_id, bool *valid)
{
  json_object *id = NULL;

  *has_id = json_object_is_type (req, json_type_object) && json_object_object_get_ex (req, "id", &id);
  *valid = !*has_id || !id || json_object_is_type (id, json_type_string) ||
    ((json_object_is_type (id, json_type_int) || json_object_is_type (id, json_type_double)) &&
     rpc_json_number_text (json_object_to_json_string_ext (id, JSON_C_TO_STRING_PLAIN)));
  return *valid ? id : NULL;
}

json_object *
rpc_refuse (json_object *req, int code, const char *message)
{
  bool has_id, valid;
  json_object *id = request_id (req, &has_id, &valid);

  return rpc_error_response (id, code, message, NULL);
}

/* Whether the request may run: the server wants no token, the request
 * carries the right one, or the connection passed an auth call.
 */
static bool
authorized (struct rpc_session *s, json_object *req, const char *method)
{
  json_object *t;

  if (!s->state->token)
    return true;
  if (json_object_object_get_ex (req, "token", &t))
    return json_object_is_type (t, json_type_string) &&
      rpc_token_matches (s->state, json_object_get_string (t), json_object_get_string_len (t));
  return s->authenticated || strcmp (method, "auth") == 0;
}

/* Resolve the request's export (its "export" member, "" when absent).
 * Returns the image, or NULL with msg filled.
 */
static struct rb_image *
resolve (struct rpc_state *st, json_object *req, char *msg, size_t msglen, int *code)
{
  json_object *e;
  const char *name = "";
  struct rb_image *img;

  *code = RPC_INVALID_PARAMS;
  if (json_object_object_get_ex (req, "export", &e)) {
    if (!json_object_is_type (e, json_type_string)) {
      snprintf (msg, msglen, "Invalid Request: \"export\" must be a string");
      *code = RPC_INVALID_REQUEST;
      return NULL;
    }
    name = json_object_get_string (e);
  }
  if (st->resolve_image) {
    img = st->resolve_image (st->opaque, name);
    if (!img) {
      snprintf (msg, msglen, "%s", rb_errmsg ());
      *code = RPC_ENGINE_ERROR;
    }
    return img;
  }
  if (*name) {
    snprintf (msg, msglen, "Invalid params: no export named \"%.200s\" (this server serves one image, "
              "the export \"\")", name);
    return NULL;
  }
  return st->img;
}

/* Run the method m for the (valid) request req. */
static json_object *
call (struct rpc_session *s, const struct rpc_method *m, json_object *req, json_object *id,
      bool has_id, json_object *params)
{
  struct rpc_state *st = s->state;
  struct rpc_ctx ctx = { .state = st, .session = s };
  struct rpc_error err = { 0, "", NULL, false };
  json_object *result, *r;
  char msg[512];
  int code;

  if (!rpc_method_no_image (m)) {
    ctx.img = resolve (st, req, msg, sizeof msg, &code);
    if (!ctx.img) {
      rpc_count (st, &st->errors, 1);
      return has_id ? rpc_error_response (id, code, msg, NULL) : NULL;
    }
    ctx.writable = st->writable;
  }
  if (m->needs_writable && !rpc_can_write (&ctx)) {
    json_object *d = json_object_new_object ();
    rpc_count (st, &st->errors, 1);
    if (ctx.img && st->release_image)
      st->release_image (st->opaque, ctx.img);
    if (!has_id) {
      json_object_put (d);
      return NULL;
    }
    if (d)
      json_object_object_add (d, "errno", json_object_new_int (EROFS));
    return rpc_error_response (id, RPC_ENGINE_ERROR, !ctx.writable ?
                               "the image is served read-only: start rb-rpc "
                               "with --writable (or the plugin with rpc-writable=true)" :
                               "the image is read-only now (marked corrupt, or in the plugin: "
                               "no NBD client that may write has connected yet; not with "
                               "nbdkit -r or a read-only filter)", d);
  }
  result = m->fn (&ctx, params, &err);
  if (ctx.img && st->release_image)
    st->release_image (st->opaque, ctx.img);
  if (!result) {
    rpc_count (st, &st->errors, 1);
    if (!has_id) {
      json_object_put (err.data);
      return NULL;
    }
    return rpc_error_response (id, err.code ? err.code : RPC_INTERNAL_ERROR,
                               err.message[0] ? err.message : "Internal error", err.data);
  }
  if (!has_id) {
    rpc_count (st, &st->notifications, 1);
    json_object_put (result);
    return NULL;
  }
  r = json_object_new_object ();
  if (!r) {
    json_object_put (result);
    return NULL;
  }
  json_object_object_add (r, "jsonrpc", json_object_new_string ("2.0"));
  json_object_object_add (r, "result", result);
  json_object_object_add (r, "id", id ? json_object_get (id) : NULL);
  return r;
}

json_object *
rpc_handle_one (struct rpc_session *s, json_object *req, bool *due)
{
  struct rpc_state *st = s->state;
  json_object *jv, *method, *params = NULL, *id;
  const struct rpc_method *m;
  bool has_id, valid;

  *due = true;
  rpc_count (st, &st->requests, 1);
  if (!json_object_is_type (req, json_type_object)) {
    rpc_count (st, &st->errors, 1);
    return rpc_error_response (NULL, RPC_INVALID_REQUEST, "Invalid Request: not an object", NULL);
  }
  id = request_id (req, &has_id, &valid);
  if (!valid) {
    rpc_count (st, &st->errors, 1);
    return rpc_error_response (NULL, RPC_INVALID_REQUEST,
                               "Invalid Request: id must be a string, a number or null", NULL);
  }
  /* No "jsonrpc" member is taken as 2.0 (the seed's get_version example). */
  if (json_object_object_get_ex (req, "jsonrpc", &jv) &&
      (!json_object_is_type (jv, json_type_string) || strcmp (json_object_get_string (jv), "2.0") != 0)) {
    rpc_count (st, &st->errors, 1);
    return rpc_error_response (id, RPC_INVALID_REQUEST, "Invalid Request: jsonrpc must be \"2.0\"", NULL);
  }
  if (!json_object_object_get_ex (req, "method", &method) ||
      !json_object_is_type (method, json_type_string)) {
    rpc_count (st, &st->errors, 1);
    return rpc_error_response (id, RPC_INVALID_REQUEST, "Invalid Request: method must be a string", NULL);
  }
  /* Before anything else is looked at: nothing is told to a client without the token. */
  if (!authorized (s, req, json_object_get_string (method))) {
    rpc_count (st, &st->errors, 1);
    if (!(*due = has_id))
      return NULL;
    return rpc_error_response (id, RPC_UNAUTHORIZED, "Unauthorized: this server wants its token "
                               "(a \"token\" member in each request, or an \"auth\" call first)", NULL);
  }
  if (json_object_object_get_ex (req, "params", &params) && params &&
      !json_object_is_type (params, json_type_object)) {
    rpc_count (st, &st->errors, 1);
    if (!(*due = has_id))
      return NULL;
    return rpc_error_response (id, json_object_is_type (params, json_type_array)
                               ? RPC_INVALID_PARAMS : RPC_INVALID_REQUEST,
                               json_object_is_type (params, json_type_array)
                               ? "Invalid params: params are taken by name (an object)"
                               : "Invalid Request: params must be an object", NULL);
  }

  for (m = rpc_methods; m->name; m++)
    if (strcmp (m->name, json_object_get_string (method)) == 0)
      break;
  if (!m->name) {
    char msg[300];
    rpc_count (st, &st->errors, 1);
    if (!(*due = has_id))
      return NULL;
    snprintf (msg, sizeof msg, "Method not found: %.200s", json_object_get_string (method));
    return rpc_error_response (id, RPC_METHOD_NOT_FOUND, msg, NULL);
  }
  *due = has_id;
  return call (s, m, req, id, has_id, params);
}
