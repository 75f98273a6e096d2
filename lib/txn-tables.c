/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Helpers of the operations built on txn.c: locking, reading and writing L1 and L2 tables, ending.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Read the L2 table an L1 entry (of any L1 table) points at into buf,
 * validating the entry.  *off is the table's offset, 0 (and buf untouched)
 * if none.  Returns 0 / -1.
 */
int
txn_read_table (struct txn *t, uint64_t l1_entry, uint8_t *buf, uint64_t *off)
{
  struct rb_image *img = txn_image (t);
  uint8_t *c;

  *off = l1_entry & L1E_OFFSET_MASK;
  if (l1_entry & L1E_RESERVED_MASK)
    return mark_corrupt (img, "L1 entry %#" PRIx64 " has reserved bits set", l1_entry);
  if (*off == 0)
    return 0;
  if (!IS_ALIGNED (*off, img->cluster_size) || *off < img->cluster_size ||
      *off + img->cluster_size > ROUND_UP (img->file_size, img->cluster_size))
    return mark_corrupt (img, "L1 entry %#" PRIx64 " points at an unaligned offset, the header "
                         "or beyond the end of the file", l1_entry);
  c = cache_get (img->l2_cache, *off, false);
  if (!c)
    return -1;
  memcpy (buf, c, img->cluster_size);
  cache_put (img->l2_cache, *off);
  return 0;
}

/* Add delta to the refcounts of everything the entries of an L2 table refer to. */
int
txn_ref_table (struct txn *t, const uint8_t *buf, int64_t delta)
{
  struct rb_image *img = txn_image (t);
  uint64_t j;

  for (j = 0; j < img->l2_entries; j++)
    if (txn_ref_entry (t, get_be64 (buf + j * img->l2_entry_size), delta) == -1)
      return -1;
  return 0;
}

/* Write an L2 table into a new cluster.  Returns its offset or -1. */
int64_t
txn_new_table (struct txn *t, const uint8_t *buf)
{
  int64_t off = txn_alloc (t, 1);

  if (off == -1 || txn_write (t, buf, txn_image (t)->cluster_size, off, IO_L2_ALLOC) == -1)
    return -1;
  return off;
}

/* Write an L1 table of l1_size entries (host order) into new clusters.
 * Returns its offset (0 for an empty table) or -1.
 */
int64_t
txn_new_l1 (struct txn *t, const uint64_t *l1, uint32_t l1_size)
{
  const uint64_t cs = txn_image (t)->cluster_size;
  uint64_t nr = DIV_ROUND_UP ((uint64_t) l1_size * 8, cs), i;
  CLEANUP_FREE uint8_t *buf = NULL;
  int64_t off;

  if (l1_size == 0)
    return 0;
  buf = calloc (nr, cs);
  if (!buf)
    return rb_error (ENOMEM, "out of memory");
  for (i = 0; i < l1_size; i++)
    put_be64 (buf + i * 8, l1[i]);
  off = txn_alloc (t, nr);
  if (off == -1 || txn_write (t, buf, nr * cs, off, IO_L1_UPDATE) == -1)
    return -1;
  return off;
}

/* Queue the clusters of an L1 table (offset, entries) as garbage. */
int
txn_garbage_l1 (struct txn *t, uint64_t offset, uint32_t l1_size)
{
  if (offset == 0 || l1_size == 0)
    return 0;
  return txn_garbage (t, offset, DIV_ROUND_UP ((uint64_t) l1_size * 8, txn_image (t)->cluster_size));
}

/* Hold off every request of img for an image-wide operation: io_lock
 * exclusively, then meta_lock.  Refuses read-only and corrupt images.
 * Returns 0 (locked) / -1 (not locked).
 */
int
txn_lock (struct rb_image *img)
{
  if (img->is_raw)
    return rb_error (EINVAL, "%s: not a qcow2 image", img->path);
  if (img->readonly)
    return rb_error (EROFS, "%s: image is read-only", img->path);
  pthread_rwlock_wrlock (&img->io_lock);
  pthread_mutex_lock (&img->meta_lock);
  if (img->corrupt) {
    txn_unlock (img);
    return rb_error (EIO, "%s: image is marked corrupt; no more writes", img->path);
  }
  return 0;
}

void
txn_unlock (struct rb_image *img)
{
  pthread_mutex_unlock (&img->meta_lock);
  pthread_rwlock_unlock (&img->io_lock);
}

/* Make s->l1 the new active L1 table: written to new clusters, the current
 * one freed after the switch.  Returns 0 / -1.
 */
int
txn_new_active_l1 (struct txn *t, struct txn_state *s)
{
  struct rb_image *img = txn_image (t);
  int64_t off = txn_new_l1 (t, s->l1, s->l1_size);

  if (off == -1 || txn_garbage_l1 (t, img->l1_table_offset, img->l1_size) == -1)
    return -1;
  s->l1_table_offset = off;
  return 0;
}

/* Free n snapshot entries and the array. */
void
snapshots_free (struct snapshot *v, uint32_t n)
{
  uint32_t i;

  if (!v)
    return;
  for (i = 0; i < n; i++) {
    free (v[i].id);
    free (v[i].name);
    free (v[i].extra);
  }
  free (v);
}

int
txn_finish (struct txn *t, struct txn_state *s)
{
  struct rb_image *img = txn_image (t);
  bool switched;
  int r = txn_commit (t, s, &switched);

  if (!switched) {
    free (s->l1);
    if (s->snapshots != img->snapshots)
      snapshots_free (s->snapshots, s->nb_snapshots);
  }
  return r;
}

int
txn_fail (struct txn *t, struct txn_state *s, uint32_t nr_snapshots)
{
  struct rb_image *img = txn_image (t);

  txn_abort (t);
  free (s->l1);
  if (s->snapshots && s->snapshots != img->snapshots)
    snapshots_free (s->snapshots, nr_snapshots);
  return -1;
}
