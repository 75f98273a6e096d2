/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * JSON-RPC 2.0 server over the engine: the interface the plugin and rb-rpc use.
 */
#ifndef RBLOCK_RPC_H
#define RBLOCK_RPC_H

#include <stdbool.h>
#include "rblock.h"

struct rpc_server;

struct rpc_config {
  const char *listen;        /* "tcp:HOST:PORT" or "unix:PATH"; NULL = tcp:127.0.0.1:1234 */
  bool writable;             /* allow write and flush */
  unsigned max_connections;  /* 0 = default (64) */
  unsigned idle_timeout;     /* seconds, 0 = default (300) */
};

/* Bind the listening socket (so errors show at start-up).  Returns NULL on
 * error with rb_errmsg() set.  The server does not own img.
 */
struct rpc_server *rpc_server_new (struct rb_image *img, const struct rpc_config *cfg);

/* Serve on a new thread (plugin).  Returns 0 / -1. */
int rpc_server_start (struct rpc_server *srv);

/* Serve on the calling thread until rpc_server_stop or SIGINT/SIGTERM (rb-rpc). */
int rpc_server_run (struct rpc_server *srv);

/* Stop serving, close every connection, join the thread, free srv. */
void rpc_server_free (struct rpc_server *srv);

#endif
