/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * The utilities' inputs (raw file, block device, qcow2 chain, NBD URI) and NBD outputs.
 */
#ifndef RBLOCK_SOURCE_H
#define RBLOCK_SOURCE_H

/* How to use it.
 *
 *   struct source *s = source_open (name, 0);      -- NULL: rb_errmsg () says why
 *   source_size (s), source_name (s)
 *   source_pread (s, buf, count, offset)            -- random reads
 *   source_extents (s, offset, count, fn, opaque)   -- where the data and zeros are
 *   source_close (s);
 *
 * Two inputs side by side on several threads: pairscan.h.
 *
 * Errors follow the engine's convention (lib/rblock.h): -1 or NULL with errno
 * and a one-line message (rb_errmsg ()) that names the input, recorded for the
 * calling thread.  The utilities print "progname: MESSAGE" and exit 2.
 *
 * A name is an NBD URI if it starts with "nbd://", "nbds://", "nbd+unix://",
 * "nbds+unix://", "nbd+vsock://" or "nbds+vsock://"; otherwise it is a path.
 * A path is a qcow2 image if it starts with the magic "QFI\xfb" (unless
 * SOURCE_FORCE_RAW; always with SOURCE_FORCE_QCOW2), read through the
 * engine with its backing chain; else a
 * raw regular file or a block device (its size by BLKGETSIZE64).
 *
 * Threads: source_pread may be called on several threads at once (NBD
 * reads of one connection take turns); source_extents on one thread only.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "rblock.h"

enum source_kind {
  SOURCE_RAW,                      /* regular file */
  SOURCE_BLOCKDEV,
  SOURCE_QCOW2,                    /* through the engine, chain followed */
  SOURCE_NBD,                      /* through libnbd */
};

struct source_nbd;

/* The fields above the line may be read by callers; never written. */
struct source {
  char *name;                      /* as given (file name or URI), for messages */
  enum source_kind kind;
  uint64_t size;                   /* bytes (virtual size for qcow2, export size for NBD) */
  dev_t dev;                       /* identity of a file or device (0 for NBD), */
  ino_t ino;                       /* to refuse writing an output over an input */
  /* ---- private ---- */
  int fd;                          /* raw file or block device, else -1 */
  struct rb_image *img;            /* qcow2 */
  struct source_nbd *nbd;          /* NBD */
};

/* source_open flags. */
#define SOURCE_FORCE_RAW  0x1      /* do not probe for qcow2: read the file's bytes */
#define SOURCE_NO_LOCK    0x2      /* qcow2: open without the engine's OFD locks */
#define SOURCE_FORCE_QCOW2 0x4     /* a path is a qcow2 image, whatever its first bytes */

/* Extent kinds (bit flags, as NBD's base:allocation).  SOURCE_DATA (0) must be
 * read.  SOURCE_ZERO reads as zeros.  SOURCE_HOLE is only ever reported
 * together with SOURCE_ZERO (a hole whose contents are not known to be zero
 * is reported as SOURCE_DATA), so "kind != SOURCE_DATA" means "reads as zeros".
 */
#define SOURCE_DATA 0
#define SOURCE_ZERO 1
#define SOURCE_HOLE 2

/* Extent callback: consecutive extents covering the requested range, in
 * order.  Return 0 to go on, -1 to stop (source_extents then returns -1).
 */
typedef int (*source_extent_fn) (void *opaque, uint64_t offset, uint64_t length, int kind);

/* Record "NAME: MESSAGE" where MESSAGE is the thread's last rb_errmsg ()
 * (an input's or output's name in front of the engine's message).  Returns -1.
 */
int source_error_prefixed (const char *name);

/* What kind of file a stat mode describes, for messages: "a FIFO", "a directory", ... */
const char *file_type_name (mode_t mode);

/* True if name has the form of an NBD URI (see above). */
bool source_is_uri (const char *name);

/* Open name read-only (flags: SOURCE_*).  NULL on error, with a one-line
 * message in rb_errmsg () naming the input.  Free with source_close.
 */
struct source *source_open (const char *name, unsigned flags);
void source_close (struct source *s);

uint64_t source_size (const struct source *s);
const char *source_name (const struct source *s);

/* Read exactly count bytes at offset (offset + count <= size).  NBD sources
 * split large reads into several requests in flight.  0 / -1.
 */
int source_pread (struct source *s, void *buf, size_t count, uint64_t offset);

/* Report extents covering [offset, offset+count) in order: files by
 * SEEK_DATA/SEEK_HOLE, qcow2 by rb_extents (holes and zero clusters through
 * the whole chain), NBD by block status "base:allocation" (all data if the
 * server lacks it), block devices as all data.  0 / -1.
 */
int source_extents (struct source *s, uint64_t offset, uint64_t count,
                    source_extent_fn fn, void *opaque);

/* ---- mapped reads (rb-convert: regular files only) ----
 * source_map returns [offset, offset+count) of a regular-file source mapped
 * read-only into *w: the page cache itself, nothing copied (a look for zeros
 * costs no copy, and the bytes may go to a write as they are).  NULL if the
 * source cannot be mapped (not a regular file, mmap refused, too many
 * windows) or, with cached, if a page of it is not in the page cache (a
 * read then reads ahead where faults on the mapping would read page by
 * page): read it instead.  offset + count <= size.  At most
 * SOURCE_MAX_WINDOWS at a time, on any threads; release each with
 * source_unmap.  If the file shrinks under a window, its pages past the new
 * end read as zeros instead of killing the process (SIGBUS), and
 * source_unmap of any window then fails naming the input: what was read is
 * not the input.  (The same for a page that cannot be read: see
 * source_window_check.)
 */
#define SOURCE_MAX_WINDOWS 32
struct source_window {
  void *addr;                      /* page-aligned start, NULL if none */
  size_t len;
};
const uint8_t *source_map (struct source *s, uint64_t offset, size_t count, bool cached,
                           struct source_window *w);
int source_unmap (struct source *s, struct source_window *w);
/* A write from a window failed with EFAULT: a page of it is gone.  -1,
 * naming the input: it shrank, or a page of it could not be read.
 */
int source_window_lost (struct source *s);
/* After reading window w: 0 if every page could be mapped; -1 (naming the
 * input) if the file shrank; 1 if a page could not be mapped though the
 * file did not shrink (a read error, or a hole that a full tmpfs cannot give
 * a page: what was read there is zeros, not the input): w is then released,
 * read the range with source_pread instead.
 */
int source_window_check (struct source *s, struct source_window *w);
/* The file descriptor of a regular-file source (for copy_file_range), else -1. */
int source_file_fd (const struct source *s);

/* Size of a regular file or block device now (the opened size for qcow2 and
 * NBD), to notice an input changing under us.  0 / -1.
 */
int source_current_size (struct source *s, uint64_t *size);

/* ---- NBD helpers (rb-delta --bitmap talks to a server's other meta contexts) ---- */
struct nbd_handle;
/* Record "name: <libnbd's last error, first line>" with its errno.  Returns -1. */
int nbd_failed (const char *name);
/* Block status of meta context `context` over [offset, offset+count), one
 * request after the other: fn (opaque, offset, length, flags) for each entry,
 * in order; return -1 from fn to stop.  0 / -1.
 */
typedef int (*nbd_status_fn) (void *opaque, uint64_t offset, uint64_t length, uint32_t flags);
int nbd_status_walk (struct nbd_handle *h, const char *name, const char *context,
                     uint64_t offset, uint64_t count, nbd_status_fn fn, void *opaque);

/* ---- sinks: an NBD export as an output (rb-convert -O raw onto an export) ----
 * Writes are copied and sent asynchronously with several in flight; errors
 * surface at a later call at the latest at sink_flush / sink_close.
 */
struct sink;

/* Connect to a writable NBD export (name must be an NBD URI).  NULL on error. */
struct sink *sink_open (const char *uri);
uint64_t sink_size (const struct sink *k);
/* Write count bytes at offset (the data is copied).  0 / -1. */
int sink_pwrite (struct sink *k, const void *buf, size_t count, uint64_t offset);
/* Make [offset, offset+count) read as zeros (NBD write-zeroes, or written
 * zeros if the server lacks it).  0 / -1.
 */
int sink_zero (struct sink *k, uint64_t count, uint64_t offset);
/* Wait for every write and flush the export.  0 / -1. */
int sink_flush (struct sink *k);
/* Flush, disconnect and free.  -1 if anything failed (message recorded). */
int sink_close (struct sink *k);

#endif
