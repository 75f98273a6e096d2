/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * JSON-RPC 2.0 server over the engine: the interface the plugin and rb-rpc use.
 */
#ifndef RBLOCK_RPC_H
#define RBLOCK_RPC_H

#include <stdbool.h>
#include <stddef.h>
#include "rblock.h"

struct rpc_server;

struct rpc_config {
  const char *listen;        /* "unix:PATH" (made mode 0600) or "tcp:HOST:PORT" */
  bool listen_any;           /* allow TCP on an address that is not loopback */
  bool writable;             /* allow write and flush (while the image is writable) */
  const char *token_file;    /* the shared secret every request must carry; NULL = none */
  unsigned max_connections;  /* 0 = default (64); at the limit the longest idle one gives way */
  unsigned idle_timeout;     /* seconds without a complete request or a reply sent; 0 = 300 */
  size_t max_memory;         /* bytes of waiting replies and requests, all connections; 0 = 64 MiB */
  /* Several images: the image a request names by its "export" member ("" when
   * absent), NULL with rb_error set if none; release_image (optional) when that
   * request is done.  Without resolve_image, rpc_server_new's img is the
   * export "" and any other name is refused.
   */
  struct rb_image *(*resolve_image) (void *opaque, const char *export_name);
  void (*release_image) (void *opaque, struct rb_image *img);
  void *opaque;
};

/* Bind the listening socket and read the token (so errors show at start-up).
 * Returns NULL on error with rb_errmsg() set.  The server does not own img
 * (NULL when cfg->resolve_image is given).
 */
struct rpc_server *rpc_server_new (struct rb_image *img, const struct rpc_config *cfg);

/* Serve on a new thread (plugin).  Returns 0 / -1. */
int rpc_server_start (struct rpc_server *srv);

/* Serve on the calling thread until SIGINT or SIGTERM (rb-rpc). */
int rpc_server_run (struct rpc_server *srv);

/* Stop serving, close every connection, join the thread, free srv. */
void rpc_server_free (struct rpc_server *srv);

#endif
