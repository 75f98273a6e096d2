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
 *   st = source_stream_start (s, 0, size, NULL);    -- a fast sequential scan:
 *   while ((r = source_stream_next (st, &chunk)) == 1) ... use chunk ...
 *   source_stream_stop (st);                        -- r == -1: rb_errmsg () says why
 *   source_close (s);
 *
 * Errors follow the engine's convention (lib/rblock.h): -1 or NULL with errno
 * and a one-line message (rb_errmsg ()) that names the input, recorded for the
 * calling thread.  The utilities print "progname: MESSAGE" and exit 2.
 *
 * A name is an NBD URI if it starts with "nbd://", "nbds://", "nbd+unix://",
 * "nbds+unix://", "nbd+vsock://" or "nbds+vsock://"; otherwise it is a path.
 * A path is a qcow2 image if it starts with the magic "QFI\xfb" (unless
 * SOURCE_FORCE_RAW), read through the engine with its backing chain; else a
 * raw regular file or a block device (its size by BLKGETSIZE64).
 *
 * Threads: a source may be read by one stream and the opening thread, but
 * while a stream runs on an NBD source, do not call source_pread or
 * source_extents on that source from another thread.
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

/* Size of a regular file or block device now (the opened size for qcow2 and
 * NBD), to notice an input changing under us.  0 / -1.
 */
int source_current_size (struct source *s, uint64_t *size);

/* ---- streams: a sequential scan that reads ahead of its consumer ----
 * A stream walks [offset, offset+count) of a source in order and hands out
 * chunks.  Zero runs (by source_extents) come as chunks without data and are
 * never read; data comes in chunks of at most chunk_size bytes, aligned to
 * chunk_size in the source's address space.  A reader thread (files, block
 * devices, qcow2) or several asynchronous NBD requests (libnbd aio) fill up
 * to `depth` buffers ahead, so reading overlaps with whatever the consumer
 * does with the previous chunks.
 */
struct source_stream_opts {
  size_t chunk_size;               /* bytes per data chunk; 0 = env RBLOCK_CHUNK_SIZE,
                                      else 256 KiB (1 MiB for NBD) */
  unsigned depth;                  /* buffers read ahead; 0 = 4 (8 for NBD) */
  uint64_t min_hole;               /* zero runs shorter than this are read as data; 0 = 64 KiB */
  bool no_extents;                 /* read everything: all chunks are data */
};

struct source_chunk {
  uint64_t offset;                 /* in the source */
  uint64_t length;
  int kind;                        /* SOURCE_DATA, or SOURCE_ZERO (| SOURCE_HOLE) */
  const void *data;                /* DATA: length bytes, valid until the next
                                      source_stream_next or _stop; else NULL */
};

struct source_stream;

/* Start a stream over [offset, offset+count) (count 0 = to the end).
 * opts may be NULL.  NULL on error.
 */
struct source_stream *source_stream_start (struct source *s, uint64_t offset, uint64_t count,
                                           const struct source_stream_opts *opts);
/* The next chunk: 1 with *chunk filled, 0 at the end, -1 on error (a read
 * failed or the NBD server went away; rb_errmsg () names the input).
 */
int source_stream_next (struct source_stream *st, struct source_chunk *chunk);
/* Stop the reader (pending reads are waited for) and free the stream. */
void source_stream_stop (struct source_stream *st);

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
