/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Resizing the virtual disk: L1 growth, the new area zeroed over a larger backing file, shrinking.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Both directions are one transaction (txn.c): a new L1 table (larger, or
 * with the entries past the new end cleared) and copies of the L2 tables
 * whose entries change are written first; the header write that switches
 * to them carries the new size.  Killed at any point, the image has its
 * old size and contents or its new ones.
 *
 * As QEMU: growing an image whose backing file is larger than the old size
 * zeroes the new area (else the backing file would show through); the L1
 * table keeps its size when shrinking; clusters past the new end lose the
 * active image's reference (internal snapshots keep theirs); the close cuts
 * the file after the last cluster still in use.  Persistent bitmaps follow
 * the new size (bitmaps-resize.c): all in use before the switch, stored at
 * the new size after it.
 */

#define ALL_ZERO_BITS 0xffffffff00000000ULL   /* extended L2: every subcluster zero */
#define ALL_ALLOC_BITS 0x00000000ffffffffULL

/* L1 entries needed for size bytes. */
static uint64_t
l1_needed (struct rb_image *img, uint64_t size)
{
  return DIV_ROUND_UP (size, img->cluster_size << img->l2_bits);
}

/* Set L2 entry j of table buf to (entry, bitmap). */
static void
set_entry (struct rb_image *img, uint8_t *buf, uint64_t j, uint64_t entry, uint64_t bitmap)
{
  put_be64 (buf + j * img->l2_entry_size, entry);
  if (img->extended_l2)
    put_be64 (buf + j * img->l2_entry_size + 8, bitmap);
}

/* Replace L1 entry i of new_l1 by a copy of table buf (old: the table's
 * offset, 0 if it is new): the active reference moves from the old table
 * to the copy.
 */
static int
replace_table (struct txn *t, struct rb_image *img, uint64_t *new_l1, uint64_t i,
               const uint8_t *buf, uint64_t old)
{
  int64_t copy = txn_new_table (t, buf);

  if (copy == -1 || (old && txn_ref (t, old >> img->cluster_bits, -1) == -1))
    return -1;
  new_l1[i] = (uint64_t) copy | QCOW_OFLAG_COPIED;
  return 0;
}

/* The new area [old_size, new_size) reads as zeros: zero entries for the
 * whole clusters and, for a partly used last cluster, a data cluster with
 * its head (tail_data, the guest view of the used part).  new_l1 has room
 * for new_size.
 */
static int
zero_new_area (struct txn *t, struct rb_image *img, uint64_t new_size, uint64_t *new_l1,
               const uint8_t *tail_data, uint8_t *buf)
{
  const uint64_t cs = img->cluster_size;
  uint64_t first = img->size >> img->cluster_bits;         /* first cluster to change */
  uint64_t end = DIV_ROUND_UP (new_size, cs), i, off;
  int64_t data = 0;

  if (tail_data) {
    if ((data = txn_alloc (t, 1)) == -1 || txn_write (t, tail_data, cs, data, IO_DATA_WRITE) == -1)
      return -1;
  }
  else
    first = DIV_ROUND_UP (img->size, cs);
  for (i = first >> img->l2_bits; i <= (end - 1) >> img->l2_bits && first < end; i++) {
    uint64_t gc = MAX (first, i << img->l2_bits);
    uint64_t stop = MIN (end, (i + 1) << img->l2_bits);

    if (txn_read_table (t, new_l1[i], buf, &off) == -1)
      return -1;
    if (off == 0)
      memset (buf, 0, cs);
    for (; gc < stop; gc++) {
      uint64_t j = gc & (img->l2_entries - 1);
      if (txn_ref_entry (t, get_be64 (buf + j * img->l2_entry_size), -1) == -1)
        return -1;
      if (data && gc == first)
        set_entry (img, buf, j, (uint64_t) data | QCOW_OFLAG_COPIED, ALL_ALLOC_BITS);
      else if (img->extended_l2)
        set_entry (img, buf, j, 0, ALL_ZERO_BITS);
      else
        set_entry (img, buf, j, QCOW_OFLAG_ZERO, 0);
    }
    if (replace_table (t, img, new_l1, i, buf, off) == -1)
      return -1;
  }
  return 0;
}

/* Start the transaction with s->l1 a copy of the active L1 table padded
 * to s->l1_size entries.  Returns it or NULL.
 */
static struct txn *
begin (struct rb_image *img, struct txn_state *s)
{
  struct txn *t;

  if (!(s->l1 = calloc (MAX (s->l1_size, 1), 8))) {
    rb_error (ENOMEM, "out of memory");
    return NULL;
  }
  memcpy (s->l1, img->l1, (uint64_t) img->l1_size * 8);
  if (!(t = txn_begin (img)))
    free (s->l1);
  return t;
}

/* Grow to new_size (io_lock and meta_lock held); tail_data as for zero_new_area, or NULL. */
static int
grow_locked (struct rb_image *img, uint64_t new_size, bool zero, const uint8_t *tail_data)
{
  struct txn_state s = {
    .size = new_size, .l1_table_offset = img->l1_table_offset,
    .nb_snapshots = img->nb_snapshots, .snapshots_offset = img->snapshots_offset,
    .snapshots_size = img->snapshots_size, .snapshots = img->snapshots,
  };
  CLEANUP_FREE uint8_t *buf = malloc (img->cluster_size);
  struct txn *t;

  s.l1_size = MAX (img->l1_size, l1_needed (img, new_size));
  if (!buf)
    return rb_error (ENOMEM, "out of memory");
  if (!(t = begin (img, &s)))
    return -1;
  if (zero && zero_new_area (t, img, new_size, s.l1, tail_data, buf) == -1)
    goto fail;
  if (zero || s.l1_size != img->l1_size) {
    /* Invariant 3: the larger L1 is written and synced (by the commit) before the header points at it. */
    if (txn_new_active_l1 (t, &s) == -1)
      goto fail;
  }
  return txn_finish (t, &s);

 fail:
  return txn_fail (t, &s, 0);
}

/* Shrink to new_size (io_lock and meta_lock held). */
static int
shrink_locked (struct rb_image *img, uint64_t new_size)
{
  struct txn_state s = {
    .size = new_size, .l1_size = img->l1_size,
    .nb_snapshots = img->nb_snapshots, .snapshots_offset = img->snapshots_offset,
    .snapshots_size = img->snapshots_size, .snapshots = img->snapshots,
  };
  CLEANUP_FREE uint8_t *buf = malloc (img->cluster_size);
  uint64_t keep = DIV_ROUND_UP (new_size, img->cluster_size);   /* clusters kept */
  uint64_t i = keep >> img->l2_bits, off, j;
  struct txn *t;

  if (!buf)
    return rb_error (ENOMEM, "out of memory");
  if (!(t = begin (img, &s)))
    return -1;
  /* The table holding the new end keeps its entries before it. */
  if ((keep & (img->l2_entries - 1)) && i < img->l1_size) {
    bool changed = false;
    if (txn_read_table (t, s.l1[i], buf, &off) == -1)
      goto fail;
    for (j = keep & (img->l2_entries - 1); off && j < img->l2_entries; j++) {
      uint8_t *e = buf + j * img->l2_entry_size;
      if (get_be64 (e) == 0 && (!img->extended_l2 || get_be64 (e + 8) == 0))
        continue;
      if (txn_ref_entry (t, get_be64 (e), -1) == -1)
        goto fail;
      set_entry (img, buf, j, 0, 0);
      changed = true;
    }
    if (changed && replace_table (t, img, s.l1, i, buf, off) == -1)
      goto fail;
    i++;
  }
  for (; i < img->l1_size; i++) {
    if (txn_read_table (t, s.l1[i], buf, &off) == -1)
      goto fail;
    if (off && (txn_ref (t, off >> img->cluster_bits, -1) == -1 ||
                txn_ref_table (t, buf, -1) == -1))
      goto fail;
    s.l1[i] = 0;
  }
  if (txn_new_active_l1 (t, &s) == -1)
    goto fail;
  return txn_finish (t, &s);

 fail:
  return txn_fail (t, &s, 0);
}

/* The refusals qemu-img resize makes, before anything is written. */
static int
check_resize (struct rb_image *img, uint64_t new_size, unsigned flags)
{
  if (new_size % 512)
    return rb_error (EINVAL, "the new size must be a multiple of 512 (%" PRIu64 " is not)", new_size);
  if (l1_needed (img, new_size) > QCOW_MAX_L1_BYTES / 8)
    return rb_error (EFBIG, "%s: %" PRIu64 " bytes is too large for %" PRIu64
                     "-byte clusters (the L1 table would exceed 32 MiB)",
                     img->path, new_size, img->cluster_size);
  if (new_size < img->size && !(flags & RB_RESIZE_SHRINK))
    return rb_error (EINVAL, "%s: %" PRIu64 " bytes is smaller than the current size (%" PRIu64
                     "); shrinking drops the data past the new end and must be asked for "
                     "(--shrink)", img->path, new_size, img->size);
  if (img->nb_snapshots && img->version < 3)
    return rb_error (ENOTSUP, "%s: cannot resize a version 2 image that has internal snapshots",
                     img->path);
  return bitmaps_resize_check (img, new_size);
}

/* Grow or shrink (the locks held) with the bitmaps following the size
 * (bitmaps-resize.c).  Returns 0, or -1 if the resize failed (its error) or
 * the bitmaps could not follow.
 */
static int
resize_with_bitmaps (struct rb_image *img, uint64_t new_size, bool zero, const uint8_t *tail)
{
  struct bitmaps_resize *rs;
  uint64_t old_size = img->size;
  struct saved_error saved;
  int r;

  if (prepare_first_write (img) == -1 || bitmaps_resize_prepare (img, new_size, &rs) == -1)
    return -1;
  if (new_size > img->size)
    r = grow_locked (img, new_size, zero, tail);
  else
    r = shrink_locked (img, new_size);      /* rb_close cuts the freed tail off */
  error_save (&saved);
  if (bitmaps_resize_finish (img, rs, img->size != old_size) == -1 && r == 0)
    return -1;
  if (r == -1)
    error_restore (&saved);
  return r;
}

int
rb_resize (struct rb_image *img, uint64_t new_size, unsigned flags)
{
  CLEANUP_FREE uint8_t *tail = NULL;
  bool zero;
  int r;

  if (txn_lock (img) == -1)
    return -1;
  if (check_resize (img, new_size, flags) == -1 || new_size == img->size) {
    r = new_size == img->size ? 0 : -1;
    txn_unlock (img);
    return r;
  }
  zero = new_size > img->size && img->backing && img->backing->size > img->size;
  if (zero && img->version < 3) {
    txn_unlock (img);
    return rb_error (ENOTSUP, "%s: cannot zero the new area of a version 2 image over a larger "
                     "backing file (qemu-img fails the same way)", img->path);
  }
  if (zero && (img->size & (img->cluster_size - 1))) {
    /* The partly used last cluster becomes data: its head as the guest sees it. */
    uint64_t start = ROUND_DOWN (img->size, img->cluster_size);
    tail = calloc (1, img->cluster_size);
    pthread_mutex_unlock (&img->meta_lock);
    r = tail ? read_locked (img, tail, img->size - start, start) : rb_error (ENOMEM, "out of memory");
    pthread_mutex_lock (&img->meta_lock);
    if (r == -1) {
      txn_unlock (img);
      return -1;
    }
  }
  r = resize_with_bitmaps (img, new_size, zero, tail);
  txn_unlock (img);
  return r;
}
