/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Persistent dirty bitmaps: their clusters stay referenced, and they are marked in use before the first write.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* rblock does not update bitmaps.  The spec lets such a program clear the
 * "bitmaps" autoclear bit, but then QEMU no longer sees the bitmap directory
 * and counts its clusters as leaks.  Instead, as QEMU does while a bitmap is
 * being changed, each bitmap's in_use flag is set (durably, before the first
 * write): QEMU then treats it as inconsistent and never uses it for an
 * incremental backup, `qemu-img bitmap --remove` still works, and the image
 * checks clean.  The checker counts the directory, tables and data clusters.
 */

#define BITMAPS_EXT_SIZE   24
#define MAX_BITMAPS        65535
#define MAX_DIR_SIZE       (64u << 20)      /* QEMU's limit on the directory */
#define MAX_TABLE_ENTRIES  0x8000000u       /* QEMU's limit on one bitmap table */
#define ENTRY_FIXED        24               /* bytes before the name */
#define BME_FLAG_IN_USE    1u
#define BME_TYPE_DIRTY     1

/* Find the bitmaps extension's data, or NULL. */
static const struct extension *
find_ext (struct rb_image *img)
{
  size_t i;

  for (i = 0; i < img->nr_exts; i++)
    if (img->exts[i].type == QCOW_EXT_BITMAPS)
      return &img->exts[i];
  return NULL;
}

int
bitmaps_open (struct rb_image *img)
{
  const struct extension *x;
  uint64_t pos = 0, end;
  uint32_t i, nb;

  if (!(img->autoclear_features & QCOW_AUTOCLEAR_BITMAPS) || !(x = find_ext (img)))
    return 0;                      /* no bitmaps, or a program already invalidated them */
  if (x->length < BITMAPS_EXT_SIZE)
    return rb_error (EIO, "corrupt image: bitmaps extension of %u bytes (at least %d)",
                     x->length, BITMAPS_EXT_SIZE);
  nb = get_be32 (x->data);
  img->bitmap_dir_size = get_be64 (x->data + 8);
  img->bitmap_dir_offset = get_be64 (x->data + 16);
  if (get_be32 (x->data + 4) != 0)
    return rb_error (EIO, "corrupt image: bitmaps extension: reserved field is not zero");
  if (nb == 0 || nb > MAX_BITMAPS)
    return rb_error (EIO, "corrupt image: bitmaps extension: %u bitmaps (1 to %d)", nb, MAX_BITMAPS);
  if (img->bitmap_dir_size == 0 || img->bitmap_dir_size > MAX_DIR_SIZE)
    return rb_error (EIO, "corrupt image: bitmap directory of %" PRIu64 " bytes (at most %u)",
                     img->bitmap_dir_size, MAX_DIR_SIZE);
  if (!IS_ALIGNED (img->bitmap_dir_offset, img->cluster_size) ||
      img->bitmap_dir_offset < img->cluster_size ||
      ADD_OVERFLOW (img->bitmap_dir_offset, img->bitmap_dir_size, &end) || end > img->file_size)
    return rb_error (EIO, "corrupt image: bitmap directory at %#" PRIx64
                     " is unaligned, over the header or past the end of the file",
                     img->bitmap_dir_offset);

  img->bitmap_dir = malloc (img->bitmap_dir_size);
  img->bitmaps = calloc (nb, sizeof *img->bitmaps);
  if (!img->bitmap_dir || !img->bitmaps)
    return rb_error (ENOMEM, "out of memory");
  if (full_pread (img->fd, img->bitmap_dir, img->bitmap_dir_size, img->bitmap_dir_offset,
                  IO_META_READ) == -1)
    return -1;
  for (i = 0; i < nb; i++) {
    struct bitmap *b = &img->bitmaps[i];
    const uint8_t *e = img->bitmap_dir + pos;
    uint64_t tbytes, tend;
    uint32_t name_size, extra;

    if (pos + ENTRY_FIXED > img->bitmap_dir_size)
      return rb_error (EIO, "corrupt image: bitmap directory ends inside entry %u", i);
    b->dir_pos = pos;
    b->table_offset = get_be64 (e);
    b->table_size = get_be32 (e + 8);
    b->flags = get_be32 (e + 12);
    name_size = get_be16 (e + 18);
    extra = get_be32 (e + 20);
    if (e[16] != BME_TYPE_DIRTY || e[17] < 9 || e[17] > 31 || name_size == 0 || name_size > 1023 ||
        extra > MAX_DIR_SIZE)
      return rb_error (EIO, "corrupt image: bitmap directory entry %u is malformed", i);
    pos += ROUND_UP ((uint64_t) ENTRY_FIXED + name_size + extra, 8);
    if (pos > img->bitmap_dir_size)
      return rb_error (EIO, "corrupt image: bitmap directory ends inside entry %u", i);
    tbytes = (uint64_t) b->table_size * 8;
    if (b->table_size > MAX_TABLE_ENTRIES || !IS_ALIGNED (b->table_offset, img->cluster_size) ||
        (b->table_size && b->table_offset < img->cluster_size) ||
        ADD_OVERFLOW (b->table_offset, tbytes, &tend) || tend > img->file_size)
      return rb_error (EIO, "corrupt image: bitmap %u's table at %#" PRIx64
                       " is unaligned, too large, over the header or past the end of the file",
                       i, b->table_offset);
  }
  if (pos != img->bitmap_dir_size)
    return rb_error (EIO, "corrupt image: bitmap directory is %" PRIu64
                     " bytes but its %u entries take %" PRIu64, img->bitmap_dir_size, nb, pos);
  img->nr_bitmaps = nb;
  return 0;
}

int
bitmaps_mark_in_use (struct rb_image *img)
{
  bool any = false;
  uint32_t i;

  for (i = 0; i < img->nr_bitmaps; i++) {
    struct bitmap *b = &img->bitmaps[i];
    if (b->flags & BME_FLAG_IN_USE)
      continue;
    b->flags |= BME_FLAG_IN_USE;
    put_be32 (img->bitmap_dir + b->dir_pos + 12, b->flags);
    any = true;
  }
  if (!any)
    return 0;
  if (full_pwrite (img->fd, img->bitmap_dir, img->bitmap_dir_size, img->bitmap_dir_offset,
                   IO_HEADER_UPDATE) == -1)
    return -1;
  return 1;
}

void
bitmaps_free (struct rb_image *img)
{
  free (img->bitmap_dir);
  free (img->bitmaps);
  img->bitmap_dir = NULL;
  img->bitmaps = NULL;
  img->nr_bitmaps = 0;
}
