/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Between the JSON-RPC pieces: the envelope/dispatch (jsonrpc.c), the methods (methods.c), the transport.
 */
#ifndef RBLOCK_RPC_INTERNAL_H
#define RBLOCK_RPC_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include <json-c/json.h>

#include "rpc.h"

/* JSON-RPC 2.0 error codes. */
#define RPC_PARSE_ERROR      -32700
#define RPC_INVALID_REQUEST  -32600
#define RPC_METHOD_NOT_FOUND -32601
#define RPC_INVALID_PARAMS   -32602
#define RPC_INTERNAL_ERROR   -32603
#define RPC_ENGINE_ERROR     -32000

/* Limits. */
#define RPC_MAX_REQUEST   (1u << 20)   /* bytes of one JSON text */
#define RPC_MAX_READ      (4u << 20)   /* bytes one read may return */
#define RPC_MAX_DEPTH     32           /* JSON nesting */
#define RPC_MAX_BATCH     1024         /* requests in one batch */

struct rpc_ctx {
  struct rb_image *img;
  bool writable;
  pthread_mutex_t lock;              /* the counters below */
  uint64_t requests, errors, notifications;
  uint64_t read_bytes, write_bytes;
};

/* An error from a method: code, message, optional data (owned). */
struct rpc_error {
  int code;
  char message[512];
  json_object *data;
};

typedef json_object *(*rpc_method_fn) (struct rpc_ctx *ctx, json_object *params,
                                       struct rpc_error *err);

struct rpc_method {
  const char *name;
  rpc_method_fn fn;
  bool needs_writable;
  const char *params;        /* for list_methods and the man page */
  const char *description;
};

extern const struct rpc_method rpc_methods[];

/* May write and flush run now (allowed, and the image writable)? */
bool rpc_can_write (struct rpc_ctx *ctx);

/* Handle one parsed JSON text; returns the reply (NULL: nothing to send). */
json_object *rpc_handle (struct rpc_ctx *ctx, json_object *text);
/* An error response for id (NULL = null). */
json_object *rpc_error_response (json_object *id, int code, const char *message, json_object *data);

#endif
