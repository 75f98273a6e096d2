/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Between the pieces of the input layer: the NBD half (source-nbd.c) as seen by source.c and streams.
 */
#ifndef RBLOCK_SOURCE_INTERNAL_H
#define RBLOCK_SOURCE_INTERNAL_H

#include "source.h"

/* Requests of at most this many bytes, and at most this many in flight. */
#define NBD_MAX_REQUEST  (2u << 20)
#define NBD_MAX_INFLIGHT 16

/* Record "NAME: MESSAGE" where MESSAGE is the thread's last rb_errmsg ().  Returns -1. */
int source_error_prefixed (const char *name);

/* Connect s->name (an NBD URI), filling s->nbd and s->size.  0 / -1. */
int nbdsrc_open (struct source *s);
void nbdsrc_close (struct source *s);
int nbdsrc_pread (struct source *s, void *buf, size_t count, uint64_t offset);
int nbdsrc_extents (struct source *s, uint64_t offset, uint64_t count,
                    source_extent_fn fn, void *opaque);

/* Streams: start reading [offset, offset+count) into buf as requests of at
 * most NBD_MAX_REQUEST; done (opaque, err) is called once when all of them
 * completed (err 0 or the first errno).  0 / -1 (nothing was started
 * then, or what was started still calls done).
 */
typedef void (*nbdsrc_done_fn) (void *opaque, int err);
int nbdsrc_aio_read (struct source *s, void *buf, size_t count, uint64_t offset,
                     nbdsrc_done_fn done, void *opaque);
/* Wait for activity on the connection (completions run inside).  0 / -1. */
int nbdsrc_poll (struct source *s);
/* Number of requests in flight. */
int nbdsrc_in_flight (struct source *s);

#endif
