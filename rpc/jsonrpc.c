/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * The JSON-RPC 2.0 envelope: requests, notifications, batches, errors, dispatch by the method table.
 */
#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "rpc-internal.h"

json_object *
rpc_error_response (json_object *id, int code, const char *message, json_object *data)
{
  json_object *r = json_object_new_object (), *e = json_object_new_object ();

  json_object_object_add (e, "code", json_object_new_int (code));
  json_object_object_add (e, "message", json_object_new_string (message));
  if (data)
    json_object_object_add (e, "data", data);
  json_object_object_add (r, "jsonrpc", json_object_new_string ("2.0"));
  json_object_object_add (r, "error", e);
  json_object_object_add (r, "id", id ? json_object_get (id) : NULL);
  return r;
}

static void
count (struct rpc_ctx *ctx, uint64_t *counter)
{
  pthread_mutex_lock (&ctx->lock);
  (*counter)++;
  pthread_mutex_unlock (&ctx->lock);
}

/* One request object (not a batch).  Returns the response, or NULL for a
 * notification.
 */
static json_object *
handle_one (struct rpc_ctx *ctx, json_object *req)
{
  json_object *jv, *method, *params = NULL, *id = NULL, *result, *r;
  const struct rpc_method *m;
  struct rpc_error err = { 0, "", NULL };
  bool has_id;

  count (ctx, &ctx->requests);
  if (!json_object_is_type (req, json_type_object)) {
    count (ctx, &ctx->errors);
    return rpc_error_response (NULL, RPC_INVALID_REQUEST, "Invalid Request: not an object", NULL);
  }
  has_id = json_object_object_get_ex (req, "id", &id);
  if (has_id && id && !json_object_is_type (id, json_type_string) &&
      !json_object_is_type (id, json_type_int) && !json_object_is_type (id, json_type_double)) {
    count (ctx, &ctx->errors);
    return rpc_error_response (NULL, RPC_INVALID_REQUEST,
                               "Invalid Request: id must be a string, a number or null", NULL);
  }
  /* No "jsonrpc" member is taken as 2.0 (the seed's get_version example). */
  if (json_object_object_get_ex (req, "jsonrpc", &jv) &&
      (!json_object_is_type (jv, json_type_string) || strcmp (json_object_get_string (jv), "2.0") != 0)) {
    count (ctx, &ctx->errors);
    return rpc_error_response (id, RPC_INVALID_REQUEST, "Invalid Request: jsonrpc must be \"2.0\"", NULL);
  }
  if (!json_object_object_get_ex (req, "method", &method) ||
      !json_object_is_type (method, json_type_string)) {
    count (ctx, &ctx->errors);
    return rpc_error_response (id, RPC_INVALID_REQUEST, "Invalid Request: method must be a string", NULL);
  }
  if (json_object_object_get_ex (req, "params", &params) && params &&
      !json_object_is_type (params, json_type_object)) {
    count (ctx, &ctx->errors);
    if (!has_id)
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
    count (ctx, &ctx->errors);
    if (!has_id)
      return NULL;
    char msg[300];
    snprintf (msg, sizeof msg, "Method not found: %.200s", json_object_get_string (method));
    return rpc_error_response (id, RPC_METHOD_NOT_FOUND, msg, NULL);
  }
  if (m->needs_writable && !rpc_can_write (ctx)) {
    json_object *d = json_object_new_object ();
    count (ctx, &ctx->errors);
    if (!has_id) {
      json_object_put (d);
      return NULL;
    }
    json_object_object_add (d, "errno", json_object_new_int (EROFS));
    r = rpc_error_response (id, RPC_ENGINE_ERROR, !ctx->writable ?
                            "the image is served read-only: start rb-rpc "
                            "with --writable (or the plugin with rpc-writable=true)" :
                            "the image is read-only now (marked corrupt, or in the plugin: "
                            "no NBD client that may write has connected yet; not with "
                            "nbdkit -r or a read-only filter)", d);
    return r;
  }
  result = m->fn (ctx, params, &err);
  if (!result) {
    count (ctx, &ctx->errors);
    if (!has_id) {
      json_object_put (err.data);
      return NULL;
    }
    return rpc_error_response (id, err.code ? err.code : RPC_INTERNAL_ERROR,
                               err.message[0] ? err.message : "Internal error", err.data);
  }
  if (!has_id) {
    count (ctx, &ctx->notifications);
    json_object_put (result);
    return NULL;
  }
  r = json_object_new_object ();
  json_object_object_add (r, "jsonrpc", json_object_new_string ("2.0"));
  json_object_object_add (r, "result", result);
  json_object_object_add (r, "id", id ? json_object_get (id) : NULL);
  return r;
}

/* A request or a batch.  Returns the reply or NULL (nothing to send). */
/* May the write methods run now?  Only if allowed (--writable,
 * rpc-writable=true) and the image is writable at this moment: the plugin
 * gets write access at the first NBD connection that may write.
 */
bool
rpc_can_write (struct rpc_ctx *ctx)
{
  return ctx->writable && !rb_is_readonly (ctx->img);
}

json_object *
rpc_handle (struct rpc_ctx *ctx, json_object *text)
{
  json_object *out;
  size_t i, n;

  if (!json_object_is_type (text, json_type_array))
    return handle_one (ctx, text);
  n = json_object_array_length (text);
  if (n == 0)
    return rpc_error_response (NULL, RPC_INVALID_REQUEST, "Invalid Request: empty batch", NULL);
  if (n > RPC_MAX_BATCH)
    return rpc_error_response (NULL, RPC_INVALID_REQUEST, "Invalid Request: batch of more than 1024 requests", NULL);
  out = json_object_new_array ();
  for (i = 0; i < n; i++) {
    json_object *r = handle_one (ctx, json_object_array_get_idx (text, i));
    if (r)
      json_object_array_add (out, r);
  }
  if (json_object_array_length (out) == 0) {
    json_object_put (out);
    return NULL;                        /* only notifications */
  }
  return out;
}
