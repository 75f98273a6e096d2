/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * rb-convert's outputs: a new qcow2 or raw file, or an existing disk (raw file, block device, qcow2, NBD export).
 */
#ifndef RBLOCK_TARGET_H
#define RBLOCK_TARGET_H

/* How rb-convert uses it.
 *
 *   target_new_qcow2 / target_new_raw (a new file, under a temporary name)
 *   or target_open_existing (-n: the disk is written in place, not atomically)
 *   then, in increasing guest order:
 *     target_copy (t, src_fd, offset, len)    -- data, copied in the kernel (files)
 *     target_write (t, buf, offset, len)      -- data from memory
 *     target_zero (t, offset, len)            -- must read as zeros afterwards
 *   target_finish (t)  or  target_abort (t)
 *
 * Offsets are guest offsets (the same in source and target).  For qcow2
 * outputs data comes in whole clusters (len may end at the source's end
 * inside the last one; buffers then hold the whole cluster, zero-padded).
 * Errors: -1 with the message recorded (rb_errmsg), naming the output.
 */

#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>

#include "rblock.h"
#include "source.h"

enum target_kind {
  TARGET_NEW_QCOW2,                /* the streaming writer */
  TARGET_NEW_RAW,                  /* a new sparse raw file */
  TARGET_FILE,                     /* -n: an existing raw file */
  TARGET_DEVICE,                   /* -n: a block device */
  TARGET_QCOW2,                    /* -n: an existing qcow2, through the engine */
  TARGET_NBD,                      /* an NBD export (sink) */
};

struct target {
  const char *name;                /* as given, for messages */
  enum target_kind kind;
  uint64_t size;                   /* bytes that may be written */
  uint32_t cluster_size;           /* qcow2 targets, else 0 */
  bool reads_zero;                 /* already reads as zeros (new, --target-is-zero): no zeroing */
  bool write_zeros;                /* zero by writing zeros (-S 0: every byte written) */
  bool no_sync;                    /* --no-sync */
  bool can_copy;                   /* copy_file_range is worth trying (cleared when refused) */
  int fd;                          /* raw file or device, else -1 */
  struct rb_writer *w;
  struct rb_image *img;
  struct sink *sink;
  bool punch_ok, zero_range_ok, blkzero_ok;   /* what the file system or device accepted */
  bool no_reserve;                 /* a new raw file: false where each data run is reserved first (rb_reserve) */
  bool copied;                     /* the kernel took a copy: the next ones may go to copiers */
  struct copier *copiers;          /* the copier threads, started at the second copy, or NULL */
  bool copy_here;                  /* RBLOCK_THREADS=1: no copier threads */
  struct source *copy_src;         /* what they copy from */
};

/* A new qcow2 image at path (a temporary name) written by the streaming writer. */
int target_new_qcow2 (struct target *t, const char *name, const char *path,
                      const struct rb_create_opts *o, uint64_t max_clusters, bool compress,
                      bool no_sync);
/* A new raw file at path (a temporary name) of size bytes, sparse. */
int target_new_raw (struct target *t, const char *name, const char *path, uint64_t size);
/* -n: the existing disk name (a raw file, a block device, a qcow2 image, or an
 * NBD URI), which must hold at least need bytes.  format: "raw", "qcow2" or
 * NULL (a block device or NBD export is raw; a file is qcow2 if it has the
 * magic).  src: refused if it is the same file.
 */
int target_open_existing (struct target *t, const char *name, const char *format, uint64_t need,
                          const struct source *src);

/* Data [offset, offset+len) copied from src (a regular file, same offsets)
 * in the kernel.  0, -1 on error, or 1 if this target cannot copy so (nothing
 * written; t->can_copy is then false): use target_write.
 */
int target_copy (struct target *t, struct source *src, uint64_t offset, uint64_t len);
/* With RBLOCK_THREADS (default: the CPUs) above 1, the copies after the
 * first are done by copier threads: target_copy then returns once the
 * copy is queued (its place in a new qcow2 decided), and its failure comes
 * from a later target_copy, target_wait or target_finish.
 */
/* Wait for every queued copy.  0, or -1 with the first failure's message. */
int target_wait (struct target *t);
int target_write (struct target *t, const void *buf, uint64_t offset, uint64_t len);
int target_zero (struct target *t, uint64_t offset, uint64_t len);

/* Sync (unless no_sync) and close.  0 / -1.  target_abort: close, a new file removed. */
int target_finish (struct target *t);
void target_abort (struct target *t);

#endif
