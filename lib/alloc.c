/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Cluster allocator over the refcounts (free-run search from a hint) and deferred freeing.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>

#include "internal.h"

/* Find the first run of free clusters at least min long, starting the
 * search at the hint, and extend it up to max clusters.  Clusters that no
 * refcount block covers are free.  Returns the first cluster index in *start
 * and the run's length in *nr.
 */
static int
find_free_run (struct rb_image *img, uint64_t min, uint64_t max, uint64_t *start, uint64_t *nr)
{
  uint64_t c = MAX (img->free_hint, 1), run = 0, rc;
  uint64_t end_cluster = DIV_ROUND_UP (img->file_size, img->cluster_size);
  bool seen_free = false;

  for (;;) {
    if (c >= end_cluster && (c >> img->refblock_bits) >= img->reftable_entries) {
      /* Past the file and past every block: all free from here. */
      if (!seen_free)
        img->free_hint = c - run;
      *start = c - run;
      *nr = max;
      return 0;
    }
    if (refcount_get (img, c, &rc) == -1)
      return -1;
    if (rc == 0) {
      /* Every cluster between the hint and the first free one is in use:
       * the next search may start there.
       */
      if (!seen_free) {
        img->free_hint = c;
        seen_free = true;
      }
      if (++run == max)
        break;
    }
    else if (run >= min)
      break;
    else
      run = 0;
    c++;
  }
  *start = c + (rc == 0) - run;
  *nr = run;
  return 0;
}

/* Give every refcount range of clusters [start, start+nr) a refcount block,
 * placed as QEMU places them: at the first free cluster (which may well be
 * inside the run: the caller then searches again).  *created says whether
 * anything was made.
 */
static int
ensure_blocks (struct rb_image *img, uint64_t start, uint64_t nr, bool *created)
{
  uint64_t r, first = start >> img->refblock_bits, last = (start + nr - 1) >> img->refblock_bits;
  uint64_t at, n;

  *created = false;
  for (r = first; r <= last; r++) {
    if (r >= img->reftable_entries || img->reftable[r] == 0)
      break;
  }
  if (r > last)
    return 0;
  *created = true;
  if (r >= img->reftable_entries)
    return refcount_grow_table (img, r);
  if (find_free_run (img, 1, 1, &at, &n) == -1)
    return -1;
  /* The block's own cluster needs a block too: in a range without one the
   * new block describes itself.
   */
  if ((at >> img->refblock_bits) >= img->reftable_entries)
    return refcount_grow_table (img, at >> img->refblock_bits);
  if (img->reftable[at >> img->refblock_bits] == 0)
    r = at >> img->refblock_bits;
  return refblock_create (img, r, at);
}

/* Allocate a run of between min and max contiguous clusters, each with
 * refcount 1: the first free run long enough.  Returns the host offset of
 * the first, with the length in *nr and in *fresh whether the run lies past
 * everything the file held (it then reads as zeros without being written);
 * -1 on error.  The refcounts are only in the cache: the write-back order
 * of flush.c makes them durable before any L2 entry that points at them
 * (invariant 1).  Failing to allocate is never corruption: the image is not
 * marked corrupt here.
 */
static int64_t
alloc_run (struct rb_image *img, uint64_t min, uint64_t max, uint64_t *nr, bool *fresh)
{
  /* Every round that does not allocate makes a refcount block (or grows
   * the table) for a range the run touches: bounded by their number.
   */
  uint64_t rounds = 0, limit = 64 + 4 * (max >> img->refblock_bits), start, n, c;
  bool created;

  for (;;) {
    if (++rounds > limit)
      return rb_error (EIO, "%s: cannot allocate %" PRIu64 " clusters: the refcount "
                       "structure keeps changing under the search", img->path, min);
    if (find_free_run (img, min, max, &start, &n) == -1 ||
        ensure_blocks (img, start, n, &created) == -1)
      return -1;
    if (!created)
      break;
  }
  for (c = start; c < start + n; c++)
    if (refcount_update (img, c, 1) == -1)
      return -1;                /* leaves a leak at worst */
  if (img->free_hint == start)
    img->free_hint = start + n;
  *fresh = (start << img->cluster_bits) >= img->file_size;
  grow_file_size (img, (start + n) << img->cluster_bits);
  img->stats.clusters_allocated += n;
  *nr = n;
  return (int64_t) (start << img->cluster_bits);
}

int64_t
alloc_clusters (struct rb_image *img, uint64_t nr)
{
  uint64_t got;
  bool fresh;

  return alloc_run (img, nr, nr, &got, &fresh);
}

int64_t
alloc_clusters_upto (struct rb_image *img, uint64_t max, uint64_t *nr, bool *fresh)
{
  return alloc_run (img, 1, max, nr, fresh);
}

/* Queue the release of nr clusters at host_offset.  The caller has already
 * cleared (in the cache) every pointer to them; the refcounts drop only
 * after those pointers are durable (invariant 4), in apply_deferred_frees.
 */
int
free_clusters_deferred (struct rb_image *img, uint64_t host_offset, uint64_t nr)
{
  if (img->nr_frees == img->frees_alloc) {
    size_t n = img->frees_alloc ? img->frees_alloc * 2 : 64;
    struct deferred_free *f = realloc (img->frees, n * sizeof *f);
    if (!f)
      return rb_error (ENOMEM, "out of memory");
    img->frees = f;
    img->frees_alloc = n;
  }
  /* Merge with the previous run when contiguous. */
  if (img->nr_frees > 0) {
    struct deferred_free *p = &img->frees[img->nr_frees - 1];
    if (p->host_offset + (p->nr << img->cluster_bits) == host_offset) {
      p->nr += nr;
      return 0;
    }
  }
  img->frees[img->nr_frees].host_offset = host_offset;
  img->frees[img->nr_frees].nr = nr;
  img->nr_frees++;
  return 0;
}

/* Queue the release of the host clusters a compressed entry touches. */
int
free_compressed_deferred (struct rb_image *img, uint64_t l2_entry)
{
  struct l2_info info;
  uint64_t first, last;

  if (l2_decode (img, l2_entry, &info) == -1)
    return -1;
  first = info.host_offset >> img->cluster_bits;
  last = (info.host_offset + info.compressed_size - 1) >> img->cluster_bits;
  for (; first <= last; first++)
    if (free_clusters_deferred (img, first << img->cluster_bits, 1) == -1)
      return -1;
  return 0;
}

/* Drop the refcounts of every queued free.  Called by flush after the
 * pointer changes are durable, with io_lock held exclusively.
 */
int
apply_deferred_frees (struct rb_image *img)
{
  size_t i;
  uint64_t c;

  for (i = 0; i < img->nr_frees; i++) {
    struct deferred_free *f = &img->frees[i];
    for (c = 0; c < f->nr; c++) {
      uint64_t ci = (f->host_offset >> img->cluster_bits) + c;
      cache_discard (img->l2_cache, ci << img->cluster_bits);
      if (refcount_update (img, ci, -1) == -1) {
        /* Keep what is left queued. */
        f->host_offset += c << img->cluster_bits;
        f->nr -= c;
        memmove (img->frees, f, (img->nr_frees - i) * sizeof *f);
        img->nr_frees -= i;
        return -1;
      }
    }
  }
  img->nr_frees = 0;
  return 0;
}
