/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Guest zero and trim (metadata only where the format allows it), and flush.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "map.h"

#define ALL_ZERO_BITS 0xffffffff00000000ULL

/* True if the guest range reads as zeros without looking at data: a zero
 * run, or unallocated with nothing below.  Under meta_lock.
 */
static int
reads_as_zero (struct rb_image *img, uint64_t offset, uint64_t count, bool *zero)
{
  struct run r;

  *zero = false;
  while (count > 0) {
    if (map_run (img, offset, count, &r) == -1)
      return -1;
    if (!(r.kind == RUN_ZERO || (r.kind == RUN_UNALLOC && !img->backing)))
      return 0;
    offset += r.length;
    count -= r.length;
  }
  *zero = true;
  return 0;
}

/* Set one whole cluster to zero (zero == true) or discard it (trim),
 * metadata only.  Under meta_lock.
 */
static int
zero_whole_cluster (struct rb_image *img, uint64_t gc, bool may_trim, bool trim)
{
  uint64_t l1_index = gc >> img->l2_bits, idx = gc & (img->l2_entries - 1);
  uint64_t entry, bitmap = 0, new_entry, new_bitmap = 0, l2_off;
  struct l2_info info;
  bool keep, backing = img->backing != NULL;
  uint8_t *table, *ep;
  int64_t toff;
  int r = 0;

  /* Nothing to do where the cluster already reads as zeros and stays so. */
  if (l1_get_l2_offset (img, l1_index, &l2_off) == -1)
    return -1;
  if (l2_off == 0 && !backing)
    return 0;
  if (trim && img->version < 3 && backing)
    return 0;                   /* cannot hide the backing file: trim is advisory */
  if (l2_off) {
    if (l2_get_entry (img, gc, &entry, &bitmap, &l2_off) == -1)
      return -1;
    if (entry == 0 && bitmap == 0 && !backing)
      return 0;
  }

  toff = l2_table_for_write (img, l1_index, &table);
  if (toff == -1)
    return -1;
  ep = table + idx * img->l2_entry_size;
  entry = get_be64 (ep);
  bitmap = img->extended_l2 ? get_be64 (ep + 8) : 0;
  if (l2_decode (img, entry, &info) == -1) {
    cache_put (img->l2_cache, toff);
    return -1;
  }
  /* Keep the allocation (preallocated zero) only where the entry can say
   * "zero" while pointing at a cluster: version 3 or extended L2.
   */
  keep = !may_trim && !trim && info.copied && img->version >= 3 &&
    (info.kind == L2_DATA || info.kind == L2_ZERO_ALLOC);

  if (img->extended_l2) {
    new_entry = keep ? (info.host_offset | QCOW_OFLAG_COPIED) : 0;
    new_bitmap = (backing || !trim) ? ALL_ZERO_BITS : 0;
    if (!backing && trim)
      new_bitmap = 0;
    put_be64 (ep + 8, new_bitmap);
  }
  else if (img->version >= 3 && (backing || !trim))
    new_entry = keep ? (info.host_offset | QCOW_OFLAG_COPIED | QCOW_OFLAG_ZERO) : QCOW_OFLAG_ZERO;
  else
    new_entry = 0;              /* no backing file: unallocated reads as zeros */
  put_be64 (ep, new_entry);
  cache_mark_dirty (img->l2_cache, toff);
  cache_put (img->l2_cache, toff);

  if (!keep) {
    if (info.kind == L2_COMPRESSED)
      r = free_compressed_deferred (img, entry);
    else if (info.host_offset)
      r = free_clusters_deferred (img, info.host_offset, 1);
  }
  return r;
}

/* Zero or trim [offset, offset+count) with io_lock held shared. */
static int
zero_locked (struct rb_image *img, uint64_t count, uint64_t offset, unsigned flags, bool trim)
{
  const uint64_t cs = img->cluster_size;

  while (count > 0) {
    uint64_t in = offset & (cs - 1);
    uint64_t n = MIN (count, cs - in);
    bool whole = in == 0 && (n == cs || offset + n == img->size);
    bool metadata_only = img->version >= 3 || !img->backing;
    bool zero;
    int r;

    pthread_mutex_lock (&img->meta_lock);
    r = prepare_first_write (img);
    if (r == 0 && whole && (trim || metadata_only))
      r = zero_whole_cluster (img, offset >> img->cluster_bits,
                              (flags & RB_MAY_TRIM) != 0, trim);
    else if (r == 0 && !trim) {
      r = reads_as_zero (img, offset, n, &zero);
      if (r == 0 && !zero)
        r = write_cluster_slow (img, offset, n, NULL);
    }
    pthread_mutex_unlock (&img->meta_lock);
    if (r == -1)
      return -1;
    offset += n;
    count -= n;
  }
  return 0;
}

int
rb_zero (struct rb_image *img, uint64_t count, uint64_t offset, unsigned flags)
{
  int r;

  if (writable (img) == -1 || check_range (img, count, offset) == -1)
    return -1;
  if ((flags & RB_FAST_ZERO) && img->version < 3 && img->backing)
    return rb_error (ENOTSUP, "fast zero is not possible: version 2 image with a backing file");
  pthread_rwlock_rdlock (&img->io_lock);
  r = zero_locked (img, count, offset, flags, false);
  bitmaps_note_write (img, offset, count);      /* invariant 8 */
  pthread_rwlock_unlock (&img->io_lock);
  if (r == 0 && (flags & RB_FUA))
    r = fua_flush (img);
  count_stat (img, &img->stats.zeros, &img->stats.zero_bytes, count);
  return r;
}

int
rb_trim (struct rb_image *img, uint64_t count, uint64_t offset, unsigned flags)
{
  const uint64_t cs = img->cluster_size;
  uint64_t start, end;
  int r = 0;

  if (writable (img) == -1 || check_range (img, count, offset) == -1)
    return -1;
  /* Whole clusters only; partial ones are left as they are. */
  start = ROUND_UP (offset, cs);
  end = offset + count == img->size ? img->size : ROUND_DOWN (offset + count, cs);
  pthread_rwlock_rdlock (&img->io_lock);
  if (end > start)
    r = zero_locked (img, end - start, start, RB_MAY_TRIM, true);
  bitmaps_note_write (img, offset, count);      /* invariant 8: the whole range, as QEMU */
  pthread_rwlock_unlock (&img->io_lock);
  if (r == 0 && (flags & RB_FUA))
    r = fua_flush (img);
  count_stat (img, &img->stats.trims, &img->stats.trim_bytes, count);
  return r;
}

/* Flush: write back metadata in dependency order, then release the
 * clusters freed since, once their pointers are durable (invariant 4).
 */
int
rb_flush (struct rb_image *img)
{
  int r = 0;
  bool frees;

  if (rb_is_readonly (img))
    return 0;
  pthread_rwlock_rdlock (&img->io_lock);
  pthread_mutex_lock (&img->meta_lock);
  r = flush_metadata (img);
  frees = img->nr_frees > 0;
  pthread_mutex_unlock (&img->meta_lock);
  pthread_rwlock_unlock (&img->io_lock);
  if (r == 0 && frees) {
    pthread_rwlock_wrlock (&img->io_lock);
    pthread_mutex_lock (&img->meta_lock);
    r = flush_metadata (img);
    if (r == 0)
      r = release_deferred_frees (img);
    pthread_mutex_unlock (&img->meta_lock);
    pthread_rwlock_unlock (&img->io_lock);
  }
  pthread_mutex_lock (&img->stats_lock);
  img->stats.flushes++;
  pthread_mutex_unlock (&img->stats_lock);
  return r;
}
