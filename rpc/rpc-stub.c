/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Until the JSON-RPC server lands: rpc= fails at start-up with a clear message.
 */
#include <config.h>

#include <errno.h>

#include "rpc.h"

struct rpc_server *
rpc_server_new (struct rb_image *img, const struct rpc_config *cfg)
{
  rb_error (ENOTSUP, "the JSON-RPC server is not in this build");
  return NULL;
}

int
rpc_server_start (struct rpc_server *srv)
{
  return rb_error (ENOTSUP, "the JSON-RPC server is not in this build");
}

int
rpc_server_run (struct rpc_server *srv)
{
  return rb_error (ENOTSUP, "the JSON-RPC server is not in this build");
}

void
rpc_server_free (struct rpc_server *srv)
{
}
