/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * L1/L2 entries: decode and validate them, and find the L2 entry of a guest cluster.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>

#include "internal.h"

/* Decode a (first 64 bits of an) L2 entry, validating it against the file.
 * Returns 0, or -1 with EIO "corrupt image" (and the image marked corrupt).
 */
int
l2_decode (struct rb_image *img, uint64_t entry, struct l2_info *info)
{
  uint64_t file_size = file_size_now (img);

  info->copied = (entry & QCOW_OFLAG_COPIED) != 0;
  info->compressed_size = 0;

  if (entry & QCOW_OFLAG_COMPRESSED) {
    uint64_t nb_sectors = ((entry >> img->csize_shift) & img->csize_mask) + 1;
    uint64_t off = entry & img->coffset_mask;
    uint64_t size = nb_sectors * 512 - (off & 511);

    info->kind = L2_COMPRESSED;
    info->host_offset = off;
    info->compressed_size = size;
    info->copied = false;
    if (entry & QCOW_OFLAG_COPIED)
      return mark_corrupt (img, "compressed L2 entry %#" PRIx64 " has the copied flag", entry);
    if (off == 0 || off >= file_size)
      return mark_corrupt (img, "compressed cluster at %#" PRIx64 " is beyond the end of the file",
                           off);
    /* The descriptor may overstate the length by padding; clamp to EOF. */
    if (off + size > file_size)
      info->compressed_size = file_size - off;
    return 0;
  }

  info->host_offset = entry & L2E_OFFSET_MASK;
  if (!img->extended_l2 && (entry & QCOW_OFLAG_ZERO)) {
    if (img->version < 3)
      return mark_corrupt (img, "zero flag in a version 2 image (L2 entry %#" PRIx64 ")", entry);
    info->kind = info->host_offset ? L2_ZERO_ALLOC : L2_ZERO_PLAIN;
  }
  else
    info->kind = info->host_offset ? L2_DATA : L2_UNALLOC;

  if (info->host_offset) {
    if (!IS_ALIGNED (info->host_offset, img->cluster_size))
      return mark_corrupt (img, "L2 entry %#" PRIx64 " points at an unaligned offset", entry);
    if (info->host_offset + img->cluster_size > ROUND_UP (file_size, img->cluster_size) ||
        info->host_offset < img->cluster_size)
      return mark_corrupt (img, "L2 entry points at host offset %#" PRIx64
                           " beyond the end of the file or at the header", info->host_offset);
  }
  return 0;
}

/* State of subcluster sc of an extended L2 entry (entry, bitmap). */
int
l2_subcluster_state (struct rb_image *img, uint64_t entry, uint64_t bitmap,
                     unsigned sc, enum sc_state *st)
{
  bool alloc = (bitmap >> sc) & 1;
  bool zero = (bitmap >> (sc + 32)) & 1;

  if (alloc && zero)
    return mark_corrupt (img, "subcluster %u both allocated and zero (bitmap %#" PRIx64 ")",
                         sc, bitmap);
  if (alloc && (entry & L2E_OFFSET_MASK) == 0)
    return mark_corrupt (img, "subcluster %u allocated in an unallocated cluster", sc);
  *st = alloc ? SC_DATA : zero ? SC_ZERO : SC_UNALLOC;
  return 0;
}

/* Validate an L1 entry and return its L2 table offset (0 if none) in *l2_offset. */
static int
l1_decode (struct rb_image *img, uint64_t l1_index, uint64_t *l2_offset)
{
  uint64_t e = img->l1[l1_index];
  uint64_t off = e & L1E_OFFSET_MASK;

  *l2_offset = off;
  if (off == 0)
    return 0;
  if (!IS_ALIGNED (off, img->cluster_size))
    return mark_corrupt (img, "L1 entry %" PRIu64 " points at unaligned offset %#" PRIx64,
                         l1_index, off);
  if (off < img->cluster_size || off + img->cluster_size > ROUND_UP (img->file_size, img->cluster_size))
    return mark_corrupt (img, "L1 entry %" PRIu64 " points at %#" PRIx64
                         ", beyond the end of the file or at the header", l1_index, off);
  return 0;
}

/* Read the L2 entry of guest_cluster (under meta_lock).  *table_offset is 0
 * and the entry 0 when no L2 table exists.  Returns 0 / -1.
 */
int
l2_get_entry (struct rb_image *img, uint64_t guest_cluster,
              uint64_t *entry, uint64_t *bitmap, uint64_t *table_offset)
{
  uint64_t l1_index = guest_cluster >> img->l2_bits;
  uint64_t l2_index = guest_cluster & (img->l2_entries - 1);
  uint64_t l2_off;
  uint8_t *table;

  *entry = *bitmap = *table_offset = 0;
  if (l1_index >= img->l1_size)
    return 0;
  if (l1_decode (img, l1_index, &l2_off) == -1)
    return -1;
  if (l2_off == 0)
    return 0;
  table = cache_get (img->l2_cache, l2_off, false);
  if (!table)
    return -1;
  *entry = get_be64 (table + l2_index * img->l2_entry_size);
  if (img->extended_l2)
    *bitmap = get_be64 (table + l2_index * img->l2_entry_size + 8);
  cache_put (img->l2_cache, l2_off);
  *table_offset = l2_off;
  return 0;
}

/* The validated L2 table offset of L1 entry l1_index (0 if none). */
int
l1_get_l2_offset (struct rb_image *img, uint64_t l1_index, uint64_t *l2_offset)
{
  return l1_decode (img, l1_index, l2_offset);
}

int
l1_set_entry (struct rb_image *img, uint64_t l1_index, uint64_t entry)
{
  uint64_t old = img->l1[l1_index] & L1E_OFFSET_MASK, off = entry & L1E_OFFSET_MASK;

  if (off && overlap_l2_add (img, off) == -1)
    return -1;
  if (old)
    overlap_l2_remove (img, old);
  img->l1[l1_index] = entry;
  return mark_dirty_l1 (img, l1_index);
}
