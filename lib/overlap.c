/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Metadata overlap checks before writes, as QEMU's default "cached" overlap-check does.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>

#include "internal.h"

static int
cmp_u64 (const void *a, const void *b)
{
  uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
  return x < y ? -1 : x > y;
}

/* Rebuild the sorted list of refcount block offsets from the table. */
int
refblocks_rebuild (struct rb_image *img)
{
  uint64_t i, n = 0;
  uint64_t *v = malloc (MAX (img->reftable_entries, 1) * sizeof *v);

  if (!v)
    return rb_error (ENOMEM, "out of memory");
  for (i = 0; i < img->reftable_entries; i++)
    if (img->reftable[i] & REFT_OFFSET_MASK)
      v[n++] = img->reftable[i] & REFT_OFFSET_MASK;
  qsort (v, n, sizeof *v, cmp_u64);
  free (img->refblocks);
  img->refblocks = v;
  img->nr_refblocks = n;
  return 0;
}

static bool
is_refblock (struct rb_image *img, uint64_t off)
{
  return img->nr_refblocks &&
    bsearch (&off, img->refblocks, img->nr_refblocks, sizeof off, cmp_u64) != NULL;
}

static bool
overlaps (uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
  return alen && blen && a < b + blen && b < a + alen;
}

/* Refuse a write of len bytes at host_offset that would land on the header,
 * the active L1 table, the refcount table, a refcount block, the snapshot
 * table or an inactive L1 table, the bitmap directory or a bitmap table, or
 * (for data) a cached L2 table.  kind
 * names what is being written.  Returns 0, or -1 with the image marked
 * corrupt.  Called under meta_lock.
 */
int
overlap_check (struct rb_image *img, uint64_t host_offset, uint64_t len,
               enum overlap_kind kind)
{
  uint64_t cs = img->cluster_size, c, first, last, i;

  if (len == 0)
    return 0;

  if (overlaps (host_offset, len, 0, cs))
    goto bad;
  if (kind != OV_L1 && overlaps (host_offset, len, img->l1_table_offset, (uint64_t) img->l1_size * 8))
    goto bad;
  if (kind != OV_REFTABLE &&
      overlaps (host_offset, len, img->refcount_table_offset,
                (uint64_t) img->refcount_table_clusters * cs))
    goto bad;
  if (img->nb_snapshots) {
    if (overlaps (host_offset, len, img->snapshots_offset, img->snapshots_size))
      goto bad;
    for (i = 0; i < img->nb_snapshots; i++)
      if (overlaps (host_offset, len, img->snapshots[i].l1_table_offset,
                    (uint64_t) img->snapshots[i].l1_size * 8))
        goto bad;
  }
  if (overlaps (host_offset, len, img->bitmap_dir_offset, img->nr_bitmaps ? img->bitmap_dir_size : 0))
    goto bad;
  for (i = 0; i < img->nr_bitmaps; i++)
    if (overlaps (host_offset, len, img->bitmaps[i].table_offset,
                  (uint64_t) img->bitmaps[i].table_size * 8))
      goto bad;
  first = host_offset >> img->cluster_bits;
  last = (host_offset + len - 1) >> img->cluster_bits;
  for (c = first; c <= last; c++) {
    uint64_t off = c << img->cluster_bits;
    if (kind != OV_REFBLOCK && is_refblock (img, off))
      goto bad;
    if (kind == OV_DATA && cache_contains (img->l2_cache, off))
      goto bad;
  }
  return 0;

 bad:
  return mark_corrupt (img, "refusing to write %" PRIu64 " bytes at host offset %#" PRIx64
                       ": it would overwrite metadata", len, host_offset);
}
