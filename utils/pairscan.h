/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Two inputs compared side by side on several threads, results handed back in order.
 */
#ifndef RBLOCK_PAIRSCAN_H
#define RBLOCK_PAIRSCAN_H

/* How to use it (rb-diff, rb-delta).
 *
 *   pair_scan (a, b, &opts, block_fn, commit_fn, opaque);
 *
 * [0, opts.count) is cut into stripes of several blocks.  Worker threads take
 * stripes in turn; for each block of a stripe that may hold data on either
 * side (by source_extents, or by opts.visit) a worker reads both sides into
 * its own small buffers (so they are still in the CPU cache when compared)
 * and calls block_fn.  The stripe's result (whatever block_fn built in
 * *result) is then handed to commit_fn on the calling thread, stripes in
 * increasing order, at most a few stripes ahead of the last commit (memory
 * stays bounded).  On cached files two workers compare faster than one
 * `cat A B` reads.
 *
 * Reads: a side known to read as zeros (a hole, a zero cluster, past that
 * side's end) is not read; the block then shows zeros for it.  Sources may be
 * of any kind: source_pread is safe on several threads (NBD reads of one
 * connection take turns).
 */

#include <stdbool.h>
#include <stdint.h>

#include "source.h"

/* Sorted, disjoint byte ranges. */
struct extent_list {
  uint64_t *start, *len;
  size_t n;
};

/* Append [off, off+len) (at or after the last range; touching ranges merge). 0 / -1. */
int extent_list_add (struct extent_list *l, uint64_t off, uint64_t len);
/* Does [off, off+len) meet a range of l?  (Binary search: any thread.) */
bool extent_list_touches (const struct extent_list *l, uint64_t off, uint64_t len);
void extent_list_free (struct extent_list *l);
/* The data extents of s in [0, count) (holes and zeros left out).  0 / -1. */
int extent_list_of_data (struct source *s, uint64_t count, struct extent_list *l);

/* One block, as a worker sees it. */
struct pair_block {
  uint64_t offset, length;         /* the same bytes of both inputs */
  const uint8_t *a, *b;            /* length bytes each (a is NULL if the scan has no A) */
};

/* Worker: look at one block of the stripe that starts at stripe_offset.
 * *result starts NULL for each stripe; build into it.  0 / -1 (rb_error).
 */
typedef int (*pair_block_fn) (void *opaque, void **result, const struct pair_block *blk);
/* Calling thread, stripes in order: take the stripe's result (NULL if no
 * block was looked at or none set it) and free it.  Called for every stripe,
 * also those with nothing to look at (progress).  0 / -1 (rb_error).
 */
typedef int (*pair_commit_fn) (void *opaque, uint64_t stripe_end, void *result);
/* Free a result that will never be committed (after an error). */
typedef void (*pair_free_fn) (void *result);

struct pair_scan_opts {
  uint64_t count;                  /* scan [0, count) */
  uint64_t block;                  /* block bytes; 0 = RBLOCK_CHUNK_SIZE, else 128 KiB
                                      (1 MiB if a side is NBD); rounded up to align */
  uint64_t align;                  /* blocks are a multiple of this (e.g. the cluster size); 0 = 512 */
  unsigned threads;                /* workers; 0 = RBLOCK_THREADS or the online CPUs (at most 4) */
  const struct extent_list *visit; /* if set, only blocks meeting these ranges are looked at
                                      (instead of where either side holds data) */
  pair_free_fn free_result;        /* NULL: free () */
};

/* Run the scan.  a may be NULL (then only b is read).  0 / -1 (rb_errmsg
 * says why: a read failed, naming the input, or a callback's message).
 */
int pair_scan (struct source *a, struct source *b, const struct pair_scan_opts *opts,
               pair_block_fn block_fn, pair_commit_fn commit_fn, void *opaque);

#endif
