/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Between the JSON-RPC pieces: envelope (jsonrpc.c), framing (session.c), methods, transport.
 */
#ifndef RBLOCK_RPC_INTERNAL_H
#define RBLOCK_RPC_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <json-c/json.h>

#include "rpc.h"

/* JSON-RPC 2.0 error codes; -32000 to -32099 are the server's own. */
#define RPC_PARSE_ERROR      -32700
#define RPC_INVALID_REQUEST  -32600
#define RPC_METHOD_NOT_FOUND -32601
#define RPC_INVALID_PARAMS   -32602
#define RPC_INTERNAL_ERROR   -32603
#define RPC_ENGINE_ERROR     -32000   /* the engine failed: its message, data.errno */
#define RPC_UNAUTHORIZED     -32001   /* the server wants a token: none, or a wrong one */
#define RPC_LIMIT_ERROR      -32002   /* a server limit (batch reply size, connections) */

/* Limits. */
#define RPC_MAX_REQUEST     (1u << 20)   /* bytes of one JSON text */
#define RPC_MAX_READ        (4u << 20)   /* bytes one read may return */
#define RPC_MAX_DEPTH       32           /* JSON nesting */
#define RPC_MAX_BATCH       1024         /* requests in one batch */
#define RPC_MAX_CONTAINERS  4096         /* objects and arrays in one text (json-c */
#define RPC_MAX_ITEMS       16384        /*  needs ~1 KiB per object), members and elements */
#define RPC_MAX_BATCH_REPLY (16u << 20)  /* reply bytes after which a batch runs no more requests */
#define RPC_OUT_HIGH        (1u << 20)   /* no new request while this many reply bytes wait */
#define RPC_MAX_TOKEN       4096         /* bytes of the shared secret */

/* The server-wide part, shared by every connection (one thread uses it). */
struct rpc_state {
  struct rb_image *img;              /* export "" without resolve_image */
  struct rb_image *(*resolve_image) (void *opaque, const char *export_name);
  void (*release_image) (void *opaque, struct rb_image *img);
  void *opaque;
  bool writable;                     /* write/flush allowed while the image is writable */
  char *token;                       /* NULL: requests need no token */
  size_t token_len;
  pthread_mutex_t lock;              /* the counters below */
  uint64_t requests, errors, notifications;
  uint64_t read_bytes, write_bytes;
};

/* One connection: framing, the batch being answered, replies waiting. */
struct rpc_session {
  struct rpc_state *state;
  json_tokener *tok;
  size_t pending;                    /* bytes of the current text fed to the tokener */
  unsigned containers, items;        /* counted in the current text */
  bool in_string, escape;            /* where the counting scanner is */
  char *in;                          /* received, not yet framed: in[in_off..in_len) */
  size_t in_len, in_off;
  json_object *batch;                /* a batch answered member by member */
  size_t batch_next, batch_reply, batch_cost;
  bool batch_open;                   /* its "[" is queued */
  char *out;                         /* replies not yet sent: out[out_off..out_len) */
  size_t out_len, out_off, out_alloc;
  bool authenticated;                /* an auth call succeeded on this connection */
  bool skip_line;                    /* after a parse error: drop input to the next newline */
  bool discard;                      /* after an oversized request: drop all input */
  bool broken;                       /* a reply could not be queued: close after the rest */
};

/* What a method sees: one request. */
struct rpc_ctx {
  struct rb_image *img;              /* the export the request names (NULL: rpc_method_no_image) */
  bool writable;
  struct rpc_state *state;
  struct rpc_session *session;
};

/* An error from a method: code, message, optional data (owned). */
struct rpc_error {
  int code;
  char message[512];
  json_object *data;
  bool oom;                  /* json-c failed to allocate part of the result */
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
/* Whether m runs without an image (get_version, list_methods, auth). */
bool rpc_method_no_image (const struct rpc_method *m);

/* ---- jsonrpc.c ---- */
/* Run one request (not a batch).  *due: whether it gets a reply (not for
 * notifications); the reply, NULL if json-c had no memory for it.
 */
json_object *rpc_handle_one (struct rpc_session *s, json_object *req, bool *due);
/* The error reply refusing req unrun (the caller knows a reply is due). */
json_object *rpc_refuse (json_object *req, int code, const char *message);
/* An error response for id (NULL = null); the message is made valid UTF-8. */
json_object *rpc_error_response (json_object *id, int code, const char *message, json_object *data);
/* A JSON string from bytes that may not be UTF-8 (invalid bytes become U+FFFD). */
json_object *rpc_string (const char *s);
bool rpc_utf8_valid (const char *s, size_t n);
/* Whether text is a JSON number (RFC 8259: no NaN, Infinity, "1." or leading zeros). */
bool rpc_json_number_text (const char *text);
/* Whether token (len bytes) is the server's, in time independent of where they differ. */
bool rpc_token_matches (const struct rpc_state *st, const char *token, size_t len);
void rpc_count (struct rpc_state *st, uint64_t *counter, uint64_t n);

/* ---- session.c ---- */
int rpc_session_init (struct rpc_session *s, struct rpc_state *st);
void rpc_session_free (struct rpc_session *s);
/* True when all input given so far is framed (feed more then). */
bool rpc_session_wants_input (const struct rpc_session *s);
/* Take received bytes; -1 (ENOMEM) if they cannot be kept. */
int rpc_session_feed (struct rpc_session *s, const char *buf, size_t len);
/* The peer closed: a text waiting for a delimiter ends here. */
void rpc_session_eof (struct rpc_session *s);
/* True when a step would work: input or a batch waits and the replies have room. */
bool rpc_session_has_work (const struct rpc_session *s);
/* Answer at most one request or one batch member.  Returns 1 if it framed or
 * answered something (*request: a complete text came in), 0 if it needs
 * input or room for replies.
 */
int rpc_session_step (struct rpc_session *s, bool *request);
/* Replies queued and not sent; mark n of them sent. */
size_t rpc_session_unsent (const struct rpc_session *s);
void rpc_session_sent (struct rpc_session *s, size_t n);
/* Bytes the connection holds (replies, input, parsed requests), an estimate. */
size_t rpc_session_memory (const struct rpc_session *s);

#endif
