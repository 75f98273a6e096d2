/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * RB_OPEN_CACHE_NONE: keep guest data out of the host page cache, as nbdkit's file plugin cache=none.
 *
 * Not O_DIRECT: the descriptor gets POSIX_FADV_RANDOM (no readahead, which
 * would bring in what nobody asked for), reads are followed by
 * POSIX_FADV_DONTNEED on the host range;
 * writes start write-back at once (sync_file_range) and the range written
 * eight writes earlier is waited for and dropped, so the cache holds at most
 * the last few writes.  Metadata (tables read through cache.c) is not evicted.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define NR_WINDOWS 8

struct write_window {
  uint64_t offset, len;          /* len 0: empty */
};

struct pagecache {
  pthread_mutex_t lock;          /* the windows (taken inside meta_lock or none) */
  struct write_window window[NR_WINDOWS];
};

/* Allocate the eviction state for an image opened with RB_OPEN_CACHE_NONE.
 * Returns 0 / -1.
 */
int
pagecache_init (struct rb_image *img)
{
  img->pagecache = calloc (1, sizeof *img->pagecache);
  if (!img->pagecache)
    return rb_error (ENOMEM, "out of memory");
  pthread_mutex_init (&img->pagecache->lock, NULL);
  return 0;
}

void
pagecache_free (struct rb_image *img)
{
  if (!img->pagecache)
    return;
  pthread_mutex_destroy (&img->pagecache->lock);
  free (img->pagecache);
  img->pagecache = NULL;
}

/* img->fd is new (opened, or replaced by rb_make_writable): no readahead on
 * it, and forget the windows of the old one.
 */
void
pagecache_new_fd (struct rb_image *img)
{
  if (!img->pagecache)
    return;
  posix_fadvise (img->fd, 0, 0, POSIX_FADV_RANDOM);
  pthread_mutex_lock (&img->pagecache->lock);
  memset (img->pagecache->window, 0, sizeof img->pagecache->window);
  pthread_mutex_unlock (&img->pagecache->lock);
}

/* Guest data was read from [host_offset, +count): drop it from the page cache. */
void
pagecache_evict_read (struct rb_image *img, uint64_t host_offset, uint64_t count)
{
  if (img->pagecache)
    posix_fadvise (img->fd, host_offset, count, POSIX_FADV_DONTNEED);
}

/* Write guest data (full_pwrite, IO_DATA_WRITE) and, with cache=none, queue
 * its range for eviction.  Returns 0 / -1.
 */
int
data_pwrite (struct rb_image *img, const void *buf, uint64_t count, uint64_t host_offset)
{
  struct pagecache *pc = img->pagecache;
  struct write_window *w;

  if (full_pwrite (img->fd, buf, count, host_offset, IO_DATA_WRITE) == -1)
    return -1;
  if (!pc)
    return 0;
  pthread_mutex_lock (&pc->lock);
  w = &pc->window[0];
  if (w->len > 0) {
    sync_file_range (img->fd, w->offset, w->len, SYNC_FILE_RANGE_WAIT_BEFORE |
                     SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER);
    posix_fadvise (img->fd, w->offset, w->len, POSIX_FADV_DONTNEED);
  }
  memmove (&pc->window[0], &pc->window[1], sizeof pc->window[0] * (NR_WINDOWS - 1));
  sync_file_range (img->fd, host_offset, count, SYNC_FILE_RANGE_WRITE);
  pc->window[NR_WINDOWS - 1].offset = host_offset;
  pc->window[NR_WINDOWS - 1].len = count;
  pthread_mutex_unlock (&pc->lock);
  return 0;
}
