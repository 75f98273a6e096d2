/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Consistency check as qemu-img check does it: recount every reference and compare with refcounts.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct counts {
  struct rb_image *img;
  uint64_t nb_clusters;
  uint32_t *ref;
  struct rb_check_result *res;
};

/* Count one reference to every cluster of host range [off, off+len). */
static void
ref_range (struct counts *k, uint64_t off, uint64_t len)
{
  uint64_t c, first = off >> k->img->cluster_bits;
  uint64_t last = (off + len - 1) >> k->img->cluster_bits;

  if (len == 0)
    return;
  for (c = first; c <= last; c++) {
    if (c >= k->nb_clusters) {
      k->res->corruptions++;
      return;
    }
    if (k->ref[c] < UINT32_MAX)
      k->ref[c]++;
  }
}

static bool
valid_cluster (struct counts *k, uint64_t off)
{
  return off != 0 && IS_ALIGNED (off, k->img->cluster_size) &&
    (off >> k->img->cluster_bits) < k->nb_clusters;
}

/* Count one reference to the cluster at off, or a corruption if off is not
 * a valid cluster offset (unaligned or past the end).  False if not valid.
 */
static bool
ref_cluster (struct counts *k, uint64_t off)
{
  if (!valid_cluster (k, off)) {
    k->res->corruptions++;
    return false;
  }
  ref_range (k, off, k->img->cluster_size);
  return true;
}

/* Walk one L1 table (host-order entries).  active: also check the copied flags. */
static int
walk_l1 (struct counts *k, const uint64_t *l1, uint64_t l1_size, bool active)
{
  struct rb_image *img = k->img;
  CLEANUP_FREE uint8_t *t = malloc (img->cluster_size);
  uint64_t i, j, rc, next_contiguous;

  if (!t)
    return rb_error (ENOMEM, "out of memory");
  for (i = 0; i < l1_size; i++) {
    uint64_t l2 = l1[i] & L1E_OFFSET_MASK;
    if (!l2)
      continue;
    if (!ref_cluster (k, l2))
      continue;
    if (active) {
      if (refcount_get (img, l2 >> img->cluster_bits, &rc) == -1)
        return -1;
      if ((rc == 1) != ((l1[i] & QCOW_OFLAG_COPIED) != 0))
        k->res->corruptions++;
    }
    /* Through the cache: it may hold newer contents than the file. */
    {
      uint8_t *c = cache_get (img->l2_cache, l2, false);
      if (!c) {
        k->res->check_errors++;
        continue;
      }
      memcpy (t, c, img->cluster_size);
      cache_put (img->l2_cache, l2);
    }
    next_contiguous = 0;             /* fragmentation is counted per L2 table, as QEMU */
    for (j = 0; j < img->l2_entries; j++) {
      uint64_t e = get_be64 (t + j * img->l2_entry_size);
      if (e & QCOW_OFLAG_COMPRESSED) {
        uint64_t nb = ((e >> img->csize_shift) & img->csize_mask) + 1;
        uint64_t off = e & img->coffset_mask;
        ref_range (k, off, nb * 512 - (off & 511));
        if (active) {
          k->res->allocated_clusters++;
          k->res->compressed_clusters++;
          k->res->fragmented_clusters++;   /* compressed clusters are, by nature */
        }
        continue;
      }
      uint64_t off = e & L2E_OFFSET_MASK;
      if (!off)
        continue;
      if (!ref_cluster (k, off))
        continue;
      if (active) {
        k->res->allocated_clusters++;
        if (next_contiguous && off != next_contiguous)
          k->res->fragmented_clusters++;
        next_contiguous = off + img->cluster_size;
        if (refcount_get (img, off >> img->cluster_bits, &rc) == -1)
          return -1;
        if ((rc == 1) != ((e & QCOW_OFLAG_COPIED) != 0))
          k->res->corruptions++;
      }
    }
  }
  return 0;
}

/* Bitmap directory, tables and data clusters (bitmaps.c keeps them referenced).
 * A table entry: bits 9-55 a data cluster's offset (0: all zeros or ones).
 */
static int
walk_bitmaps (struct counts *k)
{
  struct rb_image *img = k->img;
  CLEANUP_FREE uint8_t *t = malloc (img->cluster_size);
  uint32_t i;

  if (!t)
    return rb_error (ENOMEM, "out of memory");
  if (img->nr_bitmaps)
    ref_range (k, img->bitmap_dir_offset, img->bitmap_dir_size);
  for (i = 0; i < img->nr_bitmaps; i++) {
    const struct bitmap *b = &img->bitmaps[i];
    uint64_t bytes = (uint64_t) b->table_size * 8, pos, j;

    ref_range (k, b->table_offset, bytes);
    for (pos = 0; pos < bytes; pos += img->cluster_size) {
      uint64_t n = MIN (img->cluster_size, bytes - pos);
      if (full_pread (img->fd, t, n, b->table_offset + pos, IO_META_READ) == -1)
        return -1;
      for (j = 0; j < n; j += 8) {
        uint64_t off = get_be64 (t + j) & BME_TABLE_OFFSET_MASK;
        if (off)
          ref_cluster (k, off);
      }
    }
  }
  return 0;
}

/* Count references and compare them with the refcounts, repairing as flags
 * say (the caller has made sure the image may be written), with io_lock
 * held exclusive and meta_lock.  Adds to *res.  Returns 0 / -1.
 */
int
check_locked (struct rb_image *img, struct rb_check_result *res, unsigned flags)
{
  struct counts k = { .img = img, .res = res };
  uint64_t i, rc;
  CLEANUP_FREE uint32_t *ref = NULL;

  k.nb_clusters = DIV_ROUND_UP (img->file_size, img->cluster_size);
  ref = k.ref = calloc (MAX (k.nb_clusters, 1), sizeof *ref);
  if (!ref)
    return rb_error (ENOMEM, "out of memory for the check");
  res->total_clusters = DIV_ROUND_UP (img->size, img->cluster_size);
  res->image_end_offset = k.nb_clusters << img->cluster_bits;

  ref_range (&k, 0, img->cluster_size);
  ref_range (&k, img->l1_table_offset, (uint64_t) img->l1_size * 8);
  if (walk_l1 (&k, img->l1, img->l1_size, true) == -1)
    return -1;
  if (img->nb_snapshots > 0)
    ref_range (&k, img->snapshots_offset, img->snapshots_size);
  for (i = 0; i < img->nb_snapshots; i++) {
    struct snapshot *sn = &img->snapshots[i];
    CLEANUP_FREE uint64_t *l1 = calloc (MAX (sn->l1_size, 1), 8);
    uint64_t j;
    if (!l1)
      return rb_error (ENOMEM, "out of memory");
    ref_range (&k, sn->l1_table_offset, (uint64_t) sn->l1_size * 8);
    if (sn->l1_size && full_pread (img->fd, l1, (uint64_t) sn->l1_size * 8, sn->l1_table_offset, IO_META_READ) == -1)
      return -1;
    for (j = 0; j < sn->l1_size; j++)
      l1[j] = be64toh (l1[j]);
    if (walk_l1 (&k, l1, sn->l1_size, false) == -1)
      return -1;
  }
  if (walk_bitmaps (&k) == -1)
    return -1;
  ref_range (&k, img->refcount_table_offset,
             (uint64_t) img->refcount_table_clusters * img->cluster_size);
  for (i = 0; i < img->reftable_entries; i++) {
    uint64_t off = img->reftable[i] & REFT_OFFSET_MASK;
    if (off)
      ref_cluster (&k, off);
  }

  for (i = 0; i < k.nb_clusters; i++) {
    if (refcount_get (img, i, &rc) == -1)
      return -1;
    if (rc != ref[i] && (flags & RB_CHECK_REPAIR_ALL)) {
      uint64_t rt = i >> img->refblock_bits;
      if (rt >= img->reftable_entries || img->reftable[rt] == 0)
        return rb_error (ENOTSUP, "%s: cannot repair: host cluster %" PRIu64
                         " is used but no refcount block covers it; use 'qemu-img check -r all'",
                         img->path, i);
      if (refcount_update (img, i, (int64_t) ref[i] - (int64_t) rc) == -1)
        return -1;
      if (rc < ref[i])
        res->corruptions_fixed++;
      else
        res->leaks_fixed++;
    }
    else if (rc < ref[i])
      res->corruptions++;
    else if (rc > ref[i]) {
      res->leaks++;
      if (flags & RB_CHECK_REPAIR_LEAKS) {
        if (refcount_update (img, i, (int64_t) ref[i] - (int64_t) rc) == -1)
          return -1;
        res->leaks_fixed++;
      }
    }
  }

  /* Refcounts set for clusters past the end of the file (qemu-img does not
   * look there): leaks, freed by a leak repair.
   */
  for (i = k.nb_clusters >> img->refblock_bits; i < img->reftable_entries; i++) {
    uint64_t c = MAX (i << img->refblock_bits, k.nb_clusters);
    if (!(img->reftable[i] & REFT_OFFSET_MASK))
      continue;
    for (; c < (i + 1) << img->refblock_bits; c++) {
      if (refcount_get (img, c, &rc) == -1)
        return -1;
      if (rc == 0)
        continue;
      res->leaks++;
      res->leaks_past_eof++;
      if (flags & RB_CHECK_REPAIR_LEAKS) {
        if (refcount_update (img, c, -(int64_t) rc) == -1)
          return -1;
        res->leaks_fixed++;
      }
    }
  }
  return 0;
}

int
rb_check (struct rb_image *img, struct rb_check_result *res, unsigned flags)
{
  int r;

  memset (res, 0, sizeof *res);
  if (img->is_raw)
    return rb_error (EINVAL, "not a qcow2 image");
  if (!rb_is_readonly (img) && rb_flush (img) == -1)
    return -1;
  if ((flags & (RB_CHECK_REPAIR_LEAKS | RB_CHECK_REPAIR_ALL)) && rb_is_readonly (img))
    return rb_error (EROFS, "%s: cannot repair a read-only image", img->path);
  pthread_rwlock_wrlock (&img->io_lock);
  pthread_mutex_lock (&img->meta_lock);
  r = check_locked (img, res, flags);
  if (r == 0 && (res->leaks_fixed || res->corruptions_fixed))
    r = flush_metadata (img);
  pthread_mutex_unlock (&img->meta_lock);
  pthread_rwlock_unlock (&img->io_lock);
  return r;
}
