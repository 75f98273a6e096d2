/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * What a dirty bitmap says changed, read with several requests in flight (rb-delta --bitmap).
 */
#ifndef RBLOCK_DIRTY_H
#define RBLOCK_DIRTY_H

/* How to use it.
 *
 *   struct dirty_scan *ds = dirty_open ("new.qcow2" or "nbd+unix:///?socket=...", &o);
 *   dirty_total (ds)                          -- bytes that will be delivered
 *   dirty_run (ds, fn, opaque);               -- fn for each dirty piece, in order
 *   dirty_close (ds);
 *
 * NEW is a local qcow2 image holding persistent bitmap o.bitmap (read through
 * the engine, backing chain included), or an NBD URI whose server offers the
 * meta context qemu:dirty-bitmap:NAME (qemu-nbd -B NAME, a libvirt pull-mode
 * backup).  The dirty ranges are rounded out to o.unit (the output's cluster
 * or subcluster); where NEW reads as zeros (qcow2 extents, NBD base:allocation)
 * a piece comes with data NULL and is not read.  The other pieces are read
 * by several workers (qcow2: threads; NBD: one per connection, each with
 * several requests in flight) and handed to fn on the calling thread in
 * increasing order, at most a bounded number ahead (memory stays bounded).
 *
 * Errors follow the engine's convention: -1 / NULL with a one-line message
 * (rb_errmsg) naming NEW or the bitmap.
 */

#include <stdbool.h>
#include <stdint.h>

struct dirty_opts {
  const char *bitmap;              /* NAME */
  uint64_t unit;                   /* a power of 2, at least 512 */
  unsigned connections;            /* NBD connections; 0 = 1 */
  unsigned threads;                /* qcow2 readers; 0 = RBLOCK_THREADS or the CPUs (at most 4) */
  bool no_lock;                    /* qcow2: open without QEMU's locks (-U) */
};

struct dirty_scan;

struct dirty_scan *dirty_open (const char *new_name, const struct dirty_opts *o);
uint64_t dirty_disk_size (const struct dirty_scan *ds);
uint64_t dirty_total (const struct dirty_scan *ds);
/* How many clusters of cluster_size the dirty pieces touch (at most). */
uint64_t dirty_max_clusters (const struct dirty_scan *ds, uint64_t cluster_size);

/* One piece: [offset, offset+length), unit-aligned (the last may end at the
 * disk's end); data holds its bytes, or is NULL where NEW reads as zeros.
 * Return 0 to go on, -1 to stop.
 */
typedef int (*dirty_fn) (void *opaque, uint64_t offset, uint64_t length, const uint8_t *data);
int dirty_run (struct dirty_scan *ds, dirty_fn fn, void *opaque);
void dirty_close (struct dirty_scan *ds);

#endif
