/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Consistency check as qemu-img check does it: recount every reference and compare with refcounts.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* The walk.  A plain check runs in steps (sliced): meta_lock is dropped
 * between two L2 tables and every few thousand refcounts, and L2 tables not
 * in the cache are read with it dropped (io_lock shared instead, as a guest
 * read), so guest I/O (which needs meta_lock to map) waits for one step at
 * most, never for the whole check.
 * Every metadata change bumps img->meta_gen under meta_lock; a step that
 * finds it changed restarts the walk, so a result is always that of one
 * unchanged image (as an exclusive check would give).  Repairs keep the
 * image to themselves (io_lock exclusive, meta_lock throughout).
 */
struct counts {
  struct rb_image *img;
  uint64_t nb_clusters;
  uint32_t *ref;
  struct rb_check_result *res;
  bool sliced;
  uint64_t gen;             /* img->meta_gen when the walk started */
  const uint64_t *l1, *reftable;
  const struct snapshot *snapshots;
  uint32_t l1_size, nb_snapshots;
};

#define CHECK_ATTEMPTS 8              /* walks restarted by concurrent changes */
#define CHECK_STEP_CLUSTERS 4096      /* refcounts compared per step */

/* Whether the metadata changed since the walk started (then it restarts):
 * meta_gen, or the tables themselves (a snapshot or resize transaction,
 * txn.c, switches to a new L1 table and snapshot list at once).
 */
static bool
changed (struct counts *k)
{
  struct rb_image *img = k->img;

  return img->meta_gen != k->gen || img->l1 != k->l1 || img->l1_size != k->l1_size ||
    img->reftable != k->reftable || img->nb_snapshots != k->nb_snapshots ||
    img->snapshots != k->snapshots;
}

/* End a step of a sliced walk: let waiting I/O take meta_lock, take it back.
 * Returns 0 to go on, 1 if the metadata changed meanwhile.
 */
static int
step_end (struct counts *k)
{
  if (!k->sliced)
    return 0;
  pthread_mutex_unlock (&k->img->meta_lock);
  sched_yield ();
  pthread_mutex_lock (&k->img->meta_lock);
  return changed (k) ? 1 : 0;
}

/* Copy the L2 table at l2 into t: from the cache if it holds it (it may be
 * newer than the file), else from the file, with meta_lock dropped in a sliced
 * walk.  Returns 0, 1 (changed meanwhile: restart) or -1 (read error).
 */
static int
read_l2 (struct counts *k, uint64_t l2, uint8_t *t)
{
  struct rb_image *img = k->img;
  int r;

  if (cache_contains (img->l2_cache, l2)) {
    uint8_t *c = cache_get (img->l2_cache, l2, false);
    if (!c)
      return -1;
    memcpy (t, c, img->cluster_size);
    cache_put (img->l2_cache, l2);
    return 0;
  }
  if (!k->sliced)
    return full_pread (img->fd, t, img->cluster_size, l2, IO_META_READ);
  /* io_lock shared, as a guest read: the descriptor stays (rb_make_writable
   * swaps it under io_lock exclusive).
   */
  pthread_mutex_unlock (&img->meta_lock);
  pthread_rwlock_rdlock (&img->io_lock);
  r = full_pread (img->fd, t, img->cluster_size, l2, IO_META_READ);
  pthread_rwlock_unlock (&img->io_lock);
  pthread_mutex_lock (&img->meta_lock);
  if (changed (k))
    return 1;
  return r;
}

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

/* Walk one L1 table (host-order entries).  active: also check the copied
 * flags.  Returns 0, 1 (changed: restart) or -1.
 */
static int
walk_l1 (struct counts *k, const uint64_t *l1, uint64_t l1_size, bool active)
{
  struct rb_image *img = k->img;
  CLEANUP_FREE uint8_t *t = malloc (img->cluster_size);
  uint64_t i, j, rc, next_contiguous;
  int r;

  if (!t)
    return rb_error (ENOMEM, "out of memory");
  for (i = 0; i < l1_size; i++) {
    uint64_t l2 = l1[i] & L1E_OFFSET_MASK;
    if (!l2)
      continue;
    if (step_end (k))
      return 1;
    if (!ref_cluster (k, l2))
      continue;
    if (active) {
      if (refcount_get (img, l2 >> img->cluster_bits, &rc) == -1)
        return -1;
      if ((rc == 1) != ((l1[i] & QCOW_OFLAG_COPIED) != 0))
        k->res->corruptions++;
    }
    r = read_l2 (k, l2, t);
    if (r == 1)
      return 1;
    if (r == -1) {
      k->res->check_errors++;
      continue;
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

/* One walk over the image under meta_lock (dropped between steps when
 * k->sliced), repairing as flags say (then the caller holds io_lock
 * exclusive and has made sure the image may be written).  Adds to *k->res.
 * Returns 0, 1 (the metadata changed: walk again) or -1.
 */
static int
check_pass (struct counts *k, unsigned flags)
{
  struct rb_image *img = k->img;
  struct rb_check_result *res = k->res;
  uint64_t i, rc;
  uint32_t *ref;
  int r;

  k->gen = img->meta_gen;
  k->l1 = img->l1;
  k->l1_size = img->l1_size;
  k->reftable = img->reftable;
  k->nb_snapshots = img->nb_snapshots;
  k->snapshots = img->snapshots;
  k->nb_clusters = DIV_ROUND_UP (img->file_size, img->cluster_size);
  free (k->ref);
  ref = k->ref = calloc (MAX (k->nb_clusters, 1), sizeof *ref);
  if (!ref)
    return rb_error (ENOMEM, "out of memory for the check");
  res->total_clusters = DIV_ROUND_UP (img->size, img->cluster_size);
  res->image_end_offset = k->nb_clusters << img->cluster_bits;

  ref_range (k, 0, img->cluster_size);
  ref_range (k, img->l1_table_offset, (uint64_t) img->l1_size * 8);
  /* Clusters waiting in the deferred-free queue: no pointer left, but their
   * refcount is still held (it drops at the next flush).
   */
  for (i = 0; i < img->nr_frees; i++)
    ref_range (k, img->frees[i].host_offset, img->frees[i].nr << img->cluster_bits);
  if ((r = walk_l1 (k, img->l1, img->l1_size, true)) != 0)
    return r;
  if (img->nb_snapshots > 0)
    ref_range (k, img->snapshots_offset, img->snapshots_size);
  for (i = 0; i < img->nb_snapshots; i++) {
    struct snapshot *sn = &img->snapshots[i];
    CLEANUP_FREE uint64_t *l1 = calloc (MAX (sn->l1_size, 1), 8);
    uint64_t j;
    if (!l1)
      return rb_error (ENOMEM, "out of memory");
    ref_range (k, sn->l1_table_offset, (uint64_t) sn->l1_size * 8);
    if (sn->l1_size && full_pread (img->fd, l1, (uint64_t) sn->l1_size * 8, sn->l1_table_offset, IO_META_READ) == -1)
      return -1;
    for (j = 0; j < sn->l1_size; j++)
      l1[j] = be64toh (l1[j]);
    if ((r = walk_l1 (k, l1, sn->l1_size, false)) != 0)
      return r;
  }
  if (walk_bitmaps (k) == -1)
    return -1;
  ref_range (k, img->refcount_table_offset,
             (uint64_t) img->refcount_table_clusters * img->cluster_size);
  for (i = 0; i < img->reftable_entries; i++) {
    uint64_t off = img->reftable[i] & REFT_OFFSET_MASK;
    if (off)
      ref_cluster (k, off);
  }

  for (i = 0; i < k->nb_clusters; i++) {
    if (i % CHECK_STEP_CLUSTERS == CHECK_STEP_CLUSTERS - 1 && step_end (k))
      return 1;
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
  for (i = k->nb_clusters >> img->refblock_bits; i < img->reftable_entries; i++) {
    uint64_t c = MAX (i << img->refblock_bits, k->nb_clusters);
    if (!(img->reftable[i] & REFT_OFFSET_MASK))
      continue;
    if (step_end (k))
      return 1;
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

/* The walk with io_lock held exclusive and meta_lock, repairing as flags
 * say (the caller has made sure the image may be written).  Adds to *res.
 * Returns 0 / -1.
 */
int
check_locked (struct rb_image *img, struct rb_check_result *res, unsigned flags)
{
  struct counts k = { .img = img, .res = res };
  int r = check_pass (&k, flags);

  free (k.ref);
  return r;
}

/* Check (and with flags repair) img as qemu-img check does.  A plain check
 * runs beside guest I/O (see struct counts) and returns -1 with EAGAIN if the
 * image changed under each of CHECK_ATTEMPTS walks; repairs and
 * RB_CHECK_EXCLUSIVE hold the image for one walk (guest I/O waits).
 */
int
rb_check (struct rb_image *img, struct rb_check_result *res, unsigned flags)
{
  struct counts k = { .img = img, .res = res };
  bool repair = flags & (RB_CHECK_REPAIR_LEAKS | RB_CHECK_REPAIR_ALL);
  int r = 0, attempt;

  memset (res, 0, sizeof *res);
  if (img->is_raw)
    return rb_error (EINVAL, "not a qcow2 image");
  if (repair && rb_is_readonly (img))
    return rb_error (EROFS, "%s: cannot repair a read-only image", img->path);
  if (repair || (flags & RB_CHECK_EXCLUSIVE)) {
    if (!rb_is_readonly (img) && rb_flush (img) == -1)
      return -1;
    pthread_rwlock_wrlock (&img->io_lock);
    pthread_mutex_lock (&img->meta_lock);
    r = check_locked (img, res, flags & ~RB_CHECK_EXCLUSIVE);
    if (r == 0 && (res->leaks_fixed || res->corruptions_fixed))
      r = flush_metadata (img);
    pthread_mutex_unlock (&img->meta_lock);
    pthread_rwlock_unlock (&img->io_lock);
    return r;
  }
  k.sliced = true;
  pthread_mutex_lock (&img->meta_lock);
  for (attempt = 0; attempt < CHECK_ATTEMPTS; attempt++) {
    memset (res, 0, sizeof *res);
    if ((r = check_pass (&k, 0)) != 1)
      break;
  }
  pthread_mutex_unlock (&img->meta_lock);
  free (k.ref);
  if (r == 1) {
    memset (res, 0, sizeof *res);
    return rb_error (EAGAIN, "%s: the image changed during each of %d check attempts; "
                     "check again when fewer writes run (or pause I/O for it)",
                     img->path, CHECK_ATTEMPTS);
  }
  return r;
}
