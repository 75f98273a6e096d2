/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Between the pieces of the input layer: the NBD half (source-nbd.c) as seen by source.c.
 */
#ifndef RBLOCK_SOURCE_INTERNAL_H
#define RBLOCK_SOURCE_INTERNAL_H

#include "source.h"

/* Requests of at most this many bytes, and at most this many in flight. */
#define NBD_MAX_REQUEST  (2u << 20)
#define NBD_MAX_INFLIGHT 16


/* Connect s->name (an NBD URI), filling s->nbd and s->size.  0 / -1. */
int nbdsrc_open (struct source *s);
void nbdsrc_close (struct source *s);
int nbdsrc_pread (struct source *s, void *buf, size_t count, uint64_t offset);
int nbdsrc_extents (struct source *s, uint64_t offset, uint64_t count,
                    source_extent_fn fn, void *opaque);

#endif
