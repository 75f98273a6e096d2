/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Refcounts of host clusters: read and update entries of any width (orders 0..6), grow the table.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Read entry i of a refcount block. */
uint64_t
block_get (struct rb_image *img, const uint8_t *b, uint64_t i)
{
  switch (img->refcount_order) {
  case 0: return (b[i / 8] >> (i % 8)) & 1;
  case 1: return (b[i / 4] >> (2 * (i % 4))) & 3;
  case 2: return (b[i / 2] >> (4 * (i % 2))) & 15;
  case 3: return b[i];
  case 4: return get_be16 (b + 2 * i);
  case 5: return get_be32 (b + 4 * i);
  default: return get_be64 (b + 8 * i);
  }
}

/* Set entry i of a refcount block (v fits the width). */
void
block_set (struct rb_image *img, uint8_t *b, uint64_t i, uint64_t v)
{
  unsigned shift;

  switch (img->refcount_order) {
  case 0: shift = i % 8; b[i / 8] = (b[i / 8] & ~(1 << shift)) | (v << shift); break;
  case 1: shift = 2 * (i % 4); b[i / 4] = (b[i / 4] & ~(3 << shift)) | (v << shift); break;
  case 2: shift = 4 * (i % 2); b[i / 2] = (b[i / 2] & ~(15 << shift)) | (v << shift); break;
  case 3: b[i] = v; break;
  case 4: put_be16 (b + 2 * i, v); break;
  case 5: put_be32 (b + 4 * i, v); break;
  default: put_be64 (b + 8 * i, v); break;
  }
}

/* The largest refcount the image's width holds. */
uint64_t
refcount_max (struct rb_image *img)
{
  return img->refcount_order == 6 ? UINT64_MAX : (1ULL << img->refcount_bits) - 1;
}

/* Offset of the refcount block for rt_index (0 if none), validated. */
static int
block_offset (struct rb_image *img, uint64_t rt_index, uint64_t *off)
{
  uint64_t e;

  *off = 0;
  if (rt_index >= img->reftable_entries)
    return 0;
  e = img->reftable[rt_index];
  *off = e & REFT_OFFSET_MASK;
  if (e & REFT_RESERVED_MASK)
    return mark_corrupt (img, "refcount table entry %" PRIu64 " has reserved bits set (%#" PRIx64 ")",
                         rt_index, e);
  if (*off == 0)
    return 0;
  if (!IS_ALIGNED (*off, img->cluster_size) || *off + img->cluster_size > img->file_size)
    return mark_corrupt (img, "refcount block %" PRIu64 " at %#" PRIx64
                         " is unaligned or beyond the end of the file", rt_index, *off);
  return 0;
}

/* Refcount of host cluster cluster_index (0 where no block covers it). */
int
refcount_get (struct rb_image *img, uint64_t cluster_index, uint64_t *refcount)
{
  uint64_t rt_index = cluster_index >> img->refblock_bits;
  uint64_t off;
  uint8_t *b;

  *refcount = 0;
  if (block_offset (img, rt_index, &off) == -1)
    return -1;
  if (off == 0)
    return 0;
  b = cache_get (img->rb_cache, off, false);
  if (!b)
    return -1;
  *refcount = block_get (img, b, cluster_index & (img->refblock_entries - 1));
  cache_put (img->rb_cache, off);
  return 0;
}

/* Write one reftable entry to disk (8 bytes). */
static int
write_reftable_entry (struct rb_image *img, uint64_t rt_index)
{
  uint8_t b[8];

  img->meta_gen++;
  put_be64 (b, img->reftable[rt_index]);
  /* Durable at once: a later block may be placed in this range, its refcount
   * in this block, and its own table entry must never outlive this one.
   */
  return full_pwrite_durable (img->fd, b, 8, img->refcount_table_offset + rt_index * 8,
                              IO_REFTABLE_GROW);
}

/* Grow the refcount table so that rt_index fits.  The new table and the
 * refcount blocks describing it are placed at the start of the first range
 * the old table did not cover, written and synced before the header points
 * at them (invariant 3); the old table is freed after (invariant 4).
 */
static int
grow_reftable (struct rb_image *img, uint64_t rt_index)
{
  const uint64_t E = img->refblock_entries, cs = img->cluster_size;
  uint64_t old_entries = img->reftable_entries;
  uint64_t new_entries, T = 0, k = 1, S, j, c, old_off = img->refcount_table_offset;
  uint32_t old_clusters = img->refcount_table_clusters;
  CLEANUP_FREE uint8_t *blocks = NULL;
  CLEANUP_FREE uint8_t *table = NULL;
  uint64_t *newtab;

  for (;;) {
    new_entries = MAX (rt_index + 1, MAX (old_entries * 2, old_entries + k));
    T = DIV_ROUND_UP (new_entries * 8, cs);
    new_entries = T * cs / 8;
    if (k * E >= k + T)
      break;
    k++;
  }
  if (T * cs > MAX (QCOW_MAX_REFTABLE_BYTES, cs))
    return rb_error (EFBIG, "image file too large: refcount table would exceed %llu bytes",
                     (unsigned long long) QCOW_MAX_REFTABLE_BYTES);

  S = old_entries * E;          /* first cluster no old block covers */
  blocks = calloc (k, cs);
  table = calloc (T, cs);
  if (!blocks || !table)
    return rb_error (ENOMEM, "out of memory growing the refcount table");
  for (c = S; c < S + k + T; c++)
    block_set (img, blocks + ((c - S) / E) * cs, (c - S) % E, 1);
  for (j = 0; j < old_entries; j++)
    put_be64 (table + j * 8, img->reftable[j]);
  for (j = 0; j < k; j++)
    put_be64 (table + (old_entries + j) * 8, (S + j) * cs);

  if (S == 0)
    return mark_corrupt (img, "empty refcount table");
  if (overlap_check (img, S * cs, (k + T) * cs, OV_DATA) == -1 ||
      full_pwrite (img->fd, blocks, k * cs, S * cs, IO_REFTABLE_GROW) == -1 ||
      full_pwrite (img->fd, table, T * cs, (S + k) * cs, IO_REFTABLE_GROW) == -1 ||
      file_sync (img->fd, IO_FLUSH) == -1)
    return -1;
  img->refcount_table_offset = (S + k) * cs;
  img->refcount_table_clusters = T;
  if (header_write (img) == -1 || file_sync (img->fd, IO_FLUSH) == -1) {
    img->refcount_table_offset = old_off;
    img->refcount_table_clusters = old_clusters;
    return -1;
  }

  newtab = calloc (new_entries, 8);
  if (!newtab)
    return rb_error (ENOMEM, "out of memory growing the refcount table");
  memcpy (newtab, img->reftable, old_entries * 8);
  for (j = 0; j < k; j++)
    newtab[old_entries + j] = (S + j) * cs;
  free (img->reftable);
  img->reftable = newtab;
  img->reftable_entries = new_entries;
  grow_file_size (img, (S + k + T) * cs);
  if (refblocks_rebuild (img) == -1)
    return -1;

  /* The header no longer points at the old table: release it. */
  for (c = old_off / cs; c < old_off / cs + old_clusters; c++)
    if (refcount_update (img, c, -1) == -1)
      return -1;
  return 0;
}

/* Create the refcount block of range rt_index (which has none) in the free
 * host cluster `at`.  If `at` lies in that range the block describes
 * itself; otherwise its refcount goes into the block of its own range
 * (which must exist) and is written first.  Invariant 3: the block is
 * durable before the table entry points at it.  Returns 0 / -1.
 */
int
refblock_create (struct rb_image *img, uint64_t rt_index, uint64_t at)
{
  uint64_t b_off = at << img->cluster_bits;
  bool self = (at >> img->refblock_bits) == rt_index;
  uint8_t *b;

  if (rt_index == 0)
    return mark_corrupt (img, "no refcount block covers the header cluster");
  if (rt_index >= img->reftable_entries || img->reftable[rt_index] != 0)
    return rb_error (EINVAL, "internal error: refcount block %" PRIu64 " cannot be created",
                     rt_index);
  if (overlap_check (img, b_off, img->cluster_size, OV_DATA) == -1)
    return -1;
  if (!self && (refcount_update (img, at, 1) == -1 ||
                cache_write_durable (img->rb_cache, img->reftable[at >> img->refblock_bits]) == -1))
    return -1;
  b = cache_get (img->rb_cache, b_off, true);
  if (!b)
    return -1;
  if (self)
    block_set (img, b, at & (img->refblock_entries - 1), 1);
  /* The new block and (above) the block holding its own refcount are made
   * durable by themselves: nothing else written is needed before the table
   * entry, and a whole-file sync here would flush all the guest data written
   * so far while every allocating writer waits (it stalled sequential writes
   * into an empty image every 2 GiB of 64 KiB clusters).
   */
  if (full_pwrite_durable (img->fd, b, img->cluster_size, b_off, IO_REFBLOCK_ALLOC) == -1) {
    cache_put (img->rb_cache, b_off);
    cache_discard (img->rb_cache, b_off);
    return -1;
  }
  cache_put (img->rb_cache, b_off);
  img->reftable[rt_index] = b_off;
  grow_file_size (img, b_off + img->cluster_size);
  if (write_reftable_entry (img, rt_index) == -1) {
    img->reftable[rt_index] = 0;
    return -1;
  }
  img->data_unsynced = true;
  return refblocks_rebuild (img);
}

/* Grow the refcount table so that entry rt_index exists.  0 / -1. */
int
refcount_grow_table (struct rb_image *img, uint64_t rt_index)
{
  if (rt_index < img->reftable_entries)
    return 0;
  return grow_reftable (img, rt_index);
}

/* Make sure a refcount block covers cluster_index, creating it (at the first
 * cluster of the range it covers, counting itself) if needed.  The
 * allocator places new blocks itself (alloc.c); this is for the other
 * callers of refcount_update.
 */
int
refcount_ensure_block (struct rb_image *img, uint64_t cluster_index, bool *created)
{
  uint64_t rt_index = cluster_index >> img->refblock_bits;
  uint64_t off;

  *created = false;
  if (rt_index >= img->reftable_entries) {
    if (grow_reftable (img, rt_index) == -1)
      return -1;
    *created = true;
  }
  if (block_offset (img, rt_index, &off) == -1)
    return -1;
  if (off != 0)
    return 0;
  /* No block: every cluster of its range is free, so the first one can hold
   * it.  In a sound image, that is; range 0 holds the header, so it always
   * has a block, and nothing known may sit where the new block goes.
   */
  *created = true;
  return refblock_create (img, rt_index, rt_index << img->refblock_bits);
}

/* Add delta to the refcount of cluster_index.  Underflow is corruption;
 * overflow is EFBIG.
 */
int
refcount_update (struct rb_image *img, uint64_t cluster_index, int64_t delta)
{
  uint64_t rt_index = cluster_index >> img->refblock_bits;
  uint64_t i = cluster_index & (img->refblock_entries - 1);
  uint64_t off, v;
  bool created;
  uint8_t *b;

  if (refcount_ensure_block (img, cluster_index, &created) == -1)
    return -1;
  if (block_offset (img, rt_index, &off) == -1)
    return -1;
  b = cache_get (img->rb_cache, off, false);
  if (!b)
    return -1;
  v = block_get (img, b, i);
  if (delta < 0 && v < (uint64_t) -delta) {
    cache_put (img->rb_cache, off);
    return mark_corrupt (img, "refcount of host cluster %" PRIu64 " would drop below zero",
                         cluster_index);
  }
  if (delta > 0 && refcount_max (img) - v < (uint64_t) delta) {
    cache_put (img->rb_cache, off);
    return rb_error (EFBIG, "refcount of host cluster %" PRIu64 " would overflow %u bits",
                     cluster_index, img->refcount_bits);
  }
  block_set (img, b, i, v + delta);
  cache_mark_dirty (img->rb_cache, off);
  cache_put (img->rb_cache, off);
  if (v + delta == 0 && cluster_index < img->free_hint)
    img->free_hint = cluster_index;
  return 0;
}
