/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Metadata write-back in crash-safe order, first-write preparation and the corrupt bit.
 *
 * Crash-safety invariants (cited in the code as "invariant N"):
 * 1. A cluster's refcount is raised and durable before any L1/L2 entry points at it.
 *    (alloc.c raises refcounts in the refcount cache; cache.c writes refcount
 *    blocks and syncs before it writes any L2 table; flush_metadata below
 *    writes refcount blocks, syncs, then L2 tables.)
 * 2. Guest data (including copy-on-write head/tail) is written before the L2
 *    entry that exposes it.  (write.c writes data before changing the cached
 *    L2 entry; a sync precedes every L2 table write.)
 * 3. A new L2 table is written before the L1 entry that points at it; a new L1
 *    or refcount table before the header field that points at it.  (L1 entries
 *    are written last here, after a sync; refcount.c makes a new block durable by
 *    itself (full_pwrite_durable: that range alone, not the guest data written so
 *    far), then its table entry likewise, and syncs a new table before pointing at it.)
 * 4. When freeing, the pointer is cleared and written before the refcount drops.
 *    A crash may leak clusters, never leave a pointer to a free cluster.
 *    (alloc.c queues frees; rb_flush applies them after flush_metadata.)
 * 5. A cluster is overwritten in place only if its refcount is exactly 1
 *    (QCOW_OFLAG_COPIED agrees); otherwise allocate and copy.  (write.c)
 * 6. An fdatasync separates a stage from the next one that depends on it (a
 *    durable write of its range where the next stage depends on that range alone);
 *    flush and FUA end with fdatasync.
 * 7. Unknown incompatible bits: refuse to open.  Unknown autoclear bits: clear
 *    before the first write (the bitmaps bit stays: invariant 8).  Corrupt
 *    bit: read-only.  Dirty bit: refuse a writable open (header.c, image.c,
 *    prepare_first_write below).
 * 8. Persistent dirty bitmaps (bitmaps*.c): an enabled bitmap, and one rblock
 *    cannot keep up to date, is durably marked in use before the first guest
 *    write (prepare_first_write); every write, zero and trim then sets the
 *    enabled bitmaps' bits in memory (bitmaps_note_write, after the request
 *    passed prepare_first_write).  A clean close writes the bits into newly
 *    allocated clusters and new tables, a new directory with in_use cleared,
 *    syncs, switches the header extension to it (synced), and only then frees
 *    the old clusters.  A crash leaves the old directory (in use) or the new
 *    one: never a consistent-looking bitmap that misses a write.  Disabled
 *    bitmaps are not touched.
 * 9. Space goes back to the file system only for clusters nobody can reach: a freed
 *    cluster's host range is punched (PUNCH_HOLE) after its refcount has dropped to 0
 *    durably, with io_lock held exclusively and meta_lock from the drop to the punch, so
 *    no allocation can take the cluster in between and no durable L2 entry points at it
 *    (release_deferred_frees below).  Free clusters at the end of the file are cut off at
 *    a clean close, after the last flush (rb_close).
 */
#include <config.h>

#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "internal.h"

/* Remember that L1 entry l1_index must be written at the next flush. */
int
mark_dirty_l1 (struct rb_image *img, uint64_t l1_index)
{
  img->l1_dirty[l1_index / 64] = 1;
  img->l1_any_dirty = true;
  img->meta_gen++;
  return 0;
}

/* Write the dirty 512-byte sectors of the L1 table. */
static int
write_l1 (struct rb_image *img)
{
  uint64_t s, nr_sectors = DIV_ROUND_UP ((uint64_t) img->l1_size, 64);
  uint8_t buf[512];

  for (s = 0; s < nr_sectors; s++) {
    uint64_t i, n;
    if (!img->l1_dirty[s])
      continue;
    n = MIN (64, img->l1_size - s * 64);
    for (i = 0; i < n; i++)
      put_be64 (buf + i * 8, img->l1[s * 64 + i]);
    if (overlap_check (img, img->l1_table_offset + s * 512, n * 8, OV_L1) == -1 ||
        full_pwrite (img->fd, buf, n * 8, img->l1_table_offset + s * 512, IO_L1_UPDATE) == -1)
      return -1;
    img->l1_dirty[s] = 0;
  }
  img->l1_any_dirty = false;
  return 0;
}

/* Write back everything dirty in dependency order, ending with a sync
 * (invariants 1, 2, 3, 6).  Called under meta_lock.  Returns 0 / -1.
 */
int
flush_metadata (struct rb_image *img)
{
  if (img->readonly)
    return 0;
  if (cache_write_back (img->rb_cache) == -1)
    return -1;
  if (cache_has_dirty (img->l2_cache)) {
    if (file_sync (img->fd, IO_FLUSH) == -1)
      return -1;
    img->data_unsynced = false;
    if (cache_write_back (img->l2_cache) == -1)
      return -1;
  }
  if (img->l1_any_dirty) {
    if (file_sync (img->fd, IO_FLUSH) == -1)
      return -1;
    if (write_l1 (img) == -1)
      return -1;
  }
  if (file_sync (img->fd, IO_FLUSH) == -1)
    return -1;
  img->data_unsynced = false;
  return 0;
}

/* Clear the autoclear bits rblock does not maintain (invariant 7); the
 * bitmaps bit stays while there are bitmaps.  Syncs if anything was written
 * (also when the caller says it wrote something).  Under meta_lock.
 */
int
clear_autoclear (struct rb_image *img, bool written)
{
  uint64_t keep = img->nr_bitmaps ? QCOW_AUTOCLEAR_BITMAPS : 0;
  bool clear = img->autoclear_features & ~keep;

  img->autoclear_features &= keep;
  if (clear && header_update_features (img) == -1)
    return -1;
  if ((written || clear) && file_sync (img->fd, IO_FLUSH) == -1)
    return -1;
  return 0;
}

/* Before the first write: mark bitmaps in use and start tracking the
 * enabled ones (invariant 8), clear the autoclear bits we do not maintain
 * (invariant 7), durably.  Under meta_lock.
 */
int
prepare_first_write (struct rb_image *img)
{
  int mark;

  if (img->first_write_done)
    return 0;
  if ((mark = bitmaps_mark_in_use (img)) == -1 || clear_autoclear (img, mark) == -1)
    return -1;
  img->first_write_done = true;
  return 0;
}

/* Record corrupt metadata: EIO with "corrupt image: ..." and no more writes
 * this session; on a writable image also set the corrupt bit (best effort).
 * Returns -1.
 */
int
mark_corrupt (struct rb_image *img, const char *fmt, ...)
{
  char msg[400];
  va_list ap;

  va_start (ap, fmt);
  vsnprintf (msg, sizeof msg, fmt, ap);
  va_end (ap);
  if (!img->readonly && !img->corrupt && img->version >= 3) {
    img->incompatible_features |= QCOW_INCOMPAT_CORRUPT;
    if (header_update_features (img) == 0)
      file_sync (img->fd, IO_FLUSH);
  }
  __atomic_store_n (&img->corrupt, true, __ATOMIC_RELEASE);   /* writable () reads it unlocked */
  return rb_error (EIO, "corrupt image: %s: %s", img->path, msg);
}

/* Release every queued free (invariant 4: their pointers are durable when
 * the caller flushed), make the refcount drops durable, then give the
 * clusters that are now free back to the file system (invariant 9).
 * Called with io_lock held exclusively and meta_lock.  Returns 0 / -1.
 */
int
release_deferred_frees (struct rb_image *img)
{
  size_t i, n = img->nr_frees;
  struct deferred_free *f = NULL;
  uint64_t c, rc, first;

  if (n == 0)
    return 0;
  f = malloc (n * sizeof *f);
  if (f)
    memcpy (f, img->frees, n * sizeof *f);
  if (apply_deferred_frees (img) == -1 || flush_metadata (img) == -1) {
    free (f);
    return -1;
  }
  /* Best effort, as QEMU's discards: no punch (out of memory, a file system
   * without it, an error) only means the space stays allocated.
   */
  for (i = 0; f && i < n; i++) {
    uint64_t start = f[i].host_offset >> img->cluster_bits, end = start + f[i].nr;
    for (c = first = start; c <= end; c++) {
      /* A shared cluster (compressed data of several clusters) may still be in use. */
      if (c < end && refcount_get (img, c, &rc) == 0 && rc == 0)
        continue;
      if (c > first)
        file_punch_hole (img->fd, first << img->cluster_bits, (c - first) << img->cluster_bits);
      first = c + 1;
    }
  }
  free (f);
  return 0;
}

/* At a clean close, after the last flush: cut the free clusters at the end
 * of the file off (invariant 9; their refcounts are 0 durably).  Only after
 * this session wrote, only regular files; best effort.
 */
void
truncate_free_tail (struct rb_image *img)
{
  uint64_t c = DIV_ROUND_UP (img->file_size, img->cluster_size), rc, end;
  struct stat st;

  if (!img->first_write_done || fstat (img->fd, &st) == -1 || !S_ISREG (st.st_mode))
    return;
  pthread_rwlock_wrlock (&img->io_lock);
  pthread_mutex_lock (&img->meta_lock);
  while (c > 1 && refcount_get (img, c - 1, &rc) == 0 && rc == 0)
    c--;
  end = c << img->cluster_bits;
  if (end < (uint64_t) st.st_size && ftruncate (img->fd, end) == 0)
    img->file_size = end;
  pthread_mutex_unlock (&img->meta_lock);
  pthread_rwlock_unlock (&img->io_lock);
}
