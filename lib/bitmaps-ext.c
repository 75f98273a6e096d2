/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * The bitmaps header extension: updated, added or removed in the header cluster in crash-safe steps.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Each step below is one write of at most a few aligned bytes inside one
 * 512-byte sector (a kill cannot tear a write; a power failure is assumed
 * not to tear a sector, as QEMU assumes for its whole header), followed by
 * a sync, so a crash between steps leaves a header QEMU and rblock read.
 */

static int
sync_image (struct rb_image *img)
{
  return file_sync (img->fd, IO_FLUSH);
}

/* Index of the bitmaps extension in img->exts, or -1. */
static ssize_t
ext_index (struct rb_image *img)
{
  size_t i;

  for (i = 0; i < img->nr_exts; i++)
    if (img->exts[i].type == QCOW_EXT_BITMAPS)
      return i;
  return -1;
}

/* Where the end-of-extensions marker is. */
static uint64_t
ext_area_end (struct rb_image *img)
{
  if (img->nr_exts == 0)
    return img->header_length;
  return img->exts[img->nr_exts - 1].file_offset +
    ROUND_UP ((uint64_t) img->exts[img->nr_exts - 1].length, 8);
}

/* Set or clear the bitmaps autoclear bit, durably. */
static int
set_autoclear (struct rb_image *img, bool on)
{
  uint64_t was = img->autoclear_features;

  if (on)
    img->autoclear_features |= QCOW_AUTOCLEAR_BITMAPS;
  else
    img->autoclear_features &= ~QCOW_AUTOCLEAR_BITMAPS;
  if (was == img->autoclear_features)
    return 0;
  if (header_update_features (img) == -1 || sync_image (img) == -1) {
    img->autoclear_features = was;
    return -1;
  }
  return 0;
}

static void
ext_data (uint8_t *d, uint32_t nb, uint64_t dir_size, uint64_t dir_offset)
{
  put_be32 (d, nb);
  put_be32 (d + 4, 0);
  put_be64 (d + 8, dir_size);
  put_be64 (d + 16, dir_offset);
}

/* Move the backing file name to the end of the header cluster, out of the
 * way of an extension that must end at `need`: the copy first, then the
 * 8-byte pointer.
 */
static int
move_backing_name (struct rb_image *img, uint64_t need)
{
  uint64_t to = img->cluster_size - img->backing_file_size;
  uint8_t b[8];

  if (to < need || to < img->backing_file_offset + img->backing_file_size)
    return rb_error (ENOSPC, "%s: no room in the header cluster for the bitmaps extension "
                     "(the backing file name is in the way)", img->path);
  put_be64 (b, to);
  if (full_pwrite (img->fd, img->backing_file, img->backing_file_size, to, IO_HEADER_UPDATE) == -1 ||
      sync_image (img) == -1 ||
      full_pwrite (img->fd, b, 8, HDR_BACKING_FILE_OFFSET, IO_HEADER_UPDATE) == -1 ||
      sync_image (img) == -1)
    return -1;
  img->backing_file_offset = to;
  return 0;
}

/* Add the extension after the last one: its data and a new end marker
 * where nothing is read yet, then its type and length over the old end
 * marker, then the autoclear bit (the spec: the bit without the extension
 * is an error; the extension without the bit is "inconsistent").
 */
static int
ext_add (struct rb_image *img, uint32_t nb, uint64_t dir_size, uint64_t dir_offset)
{
  uint64_t end = ext_area_end (img), need = end + 8 + BITMAPS_EXT_SIZE + 8;
  uint8_t d[BITMAPS_EXT_SIZE + 8] = { 0 }, h[8];
  struct extension *x;

  if (img->version < 3)
    return rb_error (ENOTSUP, "%s: a version 2 (compat 0.10) image cannot hold bitmaps", img->path);
  if (need > img->cluster_size)
    return rb_error (ENOSPC, "%s: no room in the header cluster for the bitmaps extension", img->path);
  if (img->backing_file && img->backing_file_offset < need && move_backing_name (img, need) == -1)
    return -1;
  x = realloc (img->exts, (img->nr_exts + 1) * sizeof *x);
  if (!x)
    return rb_error (ENOMEM, "out of memory");
  img->exts = x;
  x = &img->exts[img->nr_exts];
  x->data = malloc (BITMAPS_EXT_SIZE + 1);
  if (!x->data)
    return rb_error (ENOMEM, "out of memory");
  ext_data (d, nb, dir_size, dir_offset);
  put_be32 (h, QCOW_EXT_BITMAPS);
  put_be32 (h + 4, BITMAPS_EXT_SIZE);
  if (full_pwrite (img->fd, d, sizeof d, end + 8, IO_HEADER_UPDATE) == -1 ||
      sync_image (img) == -1 ||
      full_pwrite (img->fd, h, 8, end, IO_HEADER_UPDATE) == -1 ||
      sync_image (img) == -1) {
    free (x->data);
    return -1;
  }
  x->type = QCOW_EXT_BITMAPS;
  x->length = BITMAPS_EXT_SIZE;
  x->file_offset = end + 8;
  memcpy (x->data, d, BITMAPS_EXT_SIZE);
  img->nr_exts++;
  return set_autoclear (img, true);
}

/* Remove the extension: the autoclear bit first (the extension is then
 * ignored), then an end marker over it if it is the last one, else the
 * extensions after it moved down in one write.
 */
static int
ext_remove (struct rb_image *img)
{
  ssize_t idx = ext_index (img);
  struct extension *x;
  uint64_t hdr, span, pos;
  CLEANUP_FREE uint8_t *buf = NULL;
  size_t i;

  if (set_autoclear (img, false) == -1)
    return -1;
  if (idx < 0)
    return 0;
  x = &img->exts[idx];
  hdr = x->file_offset - 8;
  span = 8 + ROUND_UP ((uint64_t) x->length, 8);
  buf = calloc (1, ext_area_end (img) + 8 - hdr);
  if (!buf)
    return rb_error (ENOMEM, "out of memory");
  for (i = idx + 1, pos = 0; i < img->nr_exts; i++) {
    put_be32 (buf + pos, img->exts[i].type);
    put_be32 (buf + pos + 4, img->exts[i].length);
    memcpy (buf + pos + 8, img->exts[i].data, img->exts[i].length);
    pos += 8 + ROUND_UP ((uint64_t) img->exts[i].length, 8);
  }
  /* pos is where the new end marker goes: the 8 zero bytes are in buf.  A
   * last extension is removed by those 8 bytes alone; the rest is tidying.
   */
  if (full_pwrite (img->fd, buf, pos + 8, hdr, IO_HEADER_UPDATE) == -1 ||
      sync_image (img) == -1 ||
      full_pwrite (img->fd, buf + pos + 8, span, hdr + pos + 8, IO_HEADER_UPDATE) == -1)
    return -1;
  free (x->data);
  for (i = idx + 1; i < img->nr_exts; i++)
    img->exts[i].file_offset -= span;
  memmove (x, x + 1, (img->nr_exts - idx - 1) * sizeof *x);
  img->nr_exts--;
  return 0;
}

int
bitmaps_ext_switch (struct rb_image *img, uint32_t nb, uint64_t dir_size, uint64_t dir_offset)
{
  ssize_t idx;
  struct extension *x;
  uint8_t d[BITMAPS_EXT_SIZE];

  if (nb == 0)
    return ext_remove (img);
  idx = ext_index (img);
  if (idx < 0)
    return ext_add (img, nb, dir_size, dir_offset);
  x = &img->exts[idx];
  if (x->length != BITMAPS_EXT_SIZE)
    return rb_error (ENOTSUP, "%s: bitmaps extension of %u bytes (expected %d)",
                     img->path, x->length, BITMAPS_EXT_SIZE);
  /* The 24 bytes are 8-aligned: a sector boundary can only fall between
   * their fields; torn there, nb/size and offset could disagree, which a
   * kill cannot do and which the sector assumption above excludes for the
   * usual layout (QEMU's images keep these bytes in one sector).
   */
  ext_data (d, nb, dir_size, dir_offset);
  if (full_pwrite (img->fd, d, sizeof d, x->file_offset, IO_HEADER_UPDATE) == -1 ||
      sync_image (img) == -1)
    return -1;
  memcpy (x->data, d, sizeof d);
  return set_autoclear (img, true);
}
