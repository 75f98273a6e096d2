/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Runs of guest bytes that map the same way (map.c), used by io.c, extents and lookup.
 */
#ifndef RBLOCK_MAP_H
#define RBLOCK_MAP_H

#include "internal.h"

enum run_kind { RUN_UNALLOC, RUN_DATA, RUN_ZERO, RUN_COMPRESSED };

struct run {
  uint64_t guest_offset;
  uint64_t length;
  enum run_kind kind;
  uint64_t host_offset;      /* host byte of guest_offset: DATA, and ZERO or UNALLOC
                                subclusters of an allocated cluster; else 0 */
  uint64_t l2_entry;         /* entry of the first cluster (COMPRESSED: its descriptor) */
  uint64_t l2_table_offset;  /* 0 if no L2 table */
  bool copied;               /* DATA: every cluster of the run has QCOW_OFLAG_COPIED */
};

int map_run (struct rb_image *img, uint64_t guest_offset, uint64_t max_len, struct run *r);
/* map_run under the image's metadata lock (io.c). */
int map_run_locked (struct rb_image *img, uint64_t offset, uint64_t count, struct run *r);

#endif
