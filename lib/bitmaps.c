/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Persistent dirty bitmaps: the directory, and which bitmaps are tracked or marked in use at the first write.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* The rules (qcow2.txt "Bitmaps"; flush.c invariant 8):
 * - At the first write of a session every enabled ("auto") bitmap that is
 *   not in use is loaded into memory (bitmaps-data.c) and becomes live;
 *   every guest write, zero and trim then sets its bits.
 * - Before that first write each live bitmap, and each bitmap rblock cannot
 *   keep up to date (unknown type, flags or extra data, a granularity QEMU
 *   does not support, a table that does not fit the disk), is marked in use
 *   durably: QEMU treats such a bitmap as inconsistent and never takes an
 *   incremental backup from it.  The second kind gets a warning naming it.
 * - Disabled bitmaps are not touched and stay consistent (but a resize
 *   resizes them with the disk: bitmaps-resize.c); bitmaps already in use
 *   stay so.
 * - rb_close stores the live bitmaps into new clusters and switches to a new
 *   directory with in_use cleared (bitmaps-store.c), so a crash at any point
 *   leaves either the old directory (bitmaps in use) or the new one.
 * The directory, tables and data clusters stay referenced: qemu-img check
 * and rb_check count them.
 */

/* True if b is of a kind rblock does not know (type, flags, extra data):
 * it may have to change on any write, enabled or not.
 */
static bool
unknown_kind (const struct bitmap *b)
{
  return b->type != BME_TYPE_DIRTY || (b->flags & ~BME_KNOWN_FLAGS) ||
    (b->extra_size && !(b->flags & BME_FLAG_EXTRA_COMPAT));
}

/* Which rule stops rblock from keeping b up to date, or NULL. */
static const char *
unsupported_reason (struct rb_image *img, const struct bitmap *b)
{
  uint64_t bytes;

  if (b->type != BME_TYPE_DIRTY)
    return "unknown bitmap type";
  if (b->flags & ~BME_KNOWN_FLAGS)
    return "unknown flags";
  if (b->extra_size && !(b->flags & BME_FLAG_EXTRA_COMPAT))
    return "unknown extra data";
  if (b->granularity_bits < BME_MIN_GRANULARITY_BITS ||
      b->granularity_bits > BME_MAX_GRANULARITY_BITS)
    return "granularity outside 512 B..2 GiB";
  bytes = bitmap_bytes (img, b->granularity_bits);
  if (bytes > BME_MAX_PHYS_SIZE)
    return "bitmap larger than 512 MiB";
  if (b->table_size != DIV_ROUND_UP (bytes, img->cluster_size))
    return "its table does not match the disk size";
  return NULL;
}

/* Bits of a bitmap of a disk_size-byte disk at granularity 2^granularity_bits. */
uint64_t
bitmap_nr_bits (uint64_t disk_size, unsigned granularity_bits)
{
  return granularity_bits >= 64 ? !!disk_size
    : (disk_size >> granularity_bits) + !!(disk_size & ((1ULL << granularity_bits) - 1));
}

/* Bytes of bitmap data for a disk_size-byte disk at granularity 2^granularity_bits. */
uint64_t
bitmap_bytes_at (uint64_t disk_size, unsigned granularity_bits)
{
  return DIV_ROUND_UP (bitmap_nr_bits (disk_size, granularity_bits), 8);
}

/* Bytes of bitmap data for the disk at granularity 2^granularity_bits. */
uint64_t
bitmap_bytes (struct rb_image *img, unsigned granularity_bits)
{
  return bitmap_bytes_at (img->size, granularity_bits);
}

/* Find the bitmaps extension, or NULL. */
static const struct extension *
find_ext (struct rb_image *img)
{
  size_t i;

  for (i = 0; i < img->nr_exts; i++)
    if (img->exts[i].type == QCOW_EXT_BITMAPS)
      return &img->exts[i];
  return NULL;
}

/* Parse the entry at img->bitmap_dir + pos into b; *next is the next entry's
 * position.  Returns 0 / -1 (corrupt).
 */
static int
parse_entry (struct rb_image *img, uint64_t pos, uint32_t i, struct bitmap *b, uint64_t *next)
{
  const uint8_t *e = img->bitmap_dir + pos;
  uint64_t tbytes, tend;

  if (pos + BME_ENTRY_FIXED > img->bitmap_dir_size)
    return rb_error (EIO, "corrupt image: bitmap directory ends inside entry %u", i);
  b->dir_pos = pos;
  b->table_offset = get_be64 (e);
  b->table_size = get_be32 (e + 8);
  b->flags = get_be32 (e + 12);
  b->type = e[16];
  b->granularity_bits = e[17];
  b->name_size = get_be16 (e + 18);
  b->extra_size = get_be32 (e + 20);
  if (b->name_size == 0 || b->name_size > BME_MAX_NAME_SIZE || b->granularity_bits > 63 ||
      b->extra_size > BME_MAX_DIR_SIZE)
    return rb_error (EIO, "corrupt image: bitmap directory entry %u is malformed", i);
  *next = pos + ROUND_UP ((uint64_t) BME_ENTRY_FIXED + b->name_size + b->extra_size, 8);
  if (*next > img->bitmap_dir_size)
    return rb_error (EIO, "corrupt image: bitmap directory ends inside entry %u", i);
  tbytes = (uint64_t) b->table_size * 8;
  if (b->table_size > BME_MAX_TABLE_SIZE || !IS_ALIGNED (b->table_offset, img->cluster_size) ||
      (b->table_size && b->table_offset < img->cluster_size) ||
      ADD_OVERFLOW (b->table_offset, tbytes, &tend) || tend > img->file_size)
    return rb_error (EIO, "corrupt image: bitmap %u's table at %#" PRIx64
                     " is unaligned, too large, over the header or past the end of the file",
                     i, b->table_offset);
  b->name = strndup ((const char *) e + BME_ENTRY_FIXED + b->extra_size, b->name_size);
  b->extra = malloc (b->extra_size + 1);
  if (!b->name || !b->extra)
    return rb_error (ENOMEM, "out of memory");
  memcpy (b->extra, e + BME_ENTRY_FIXED, b->extra_size);
  if (strlen (b->name) != b->name_size)
    return rb_error (EIO, "corrupt image: bitmap %u's name contains a NUL byte", i);
  b->unsupported = unsupported_reason (img, b);
  return 0;
}

/* Load and validate the bitmap directory if the bitmaps autoclear bit is
 * set.  Returns 0 / -1 (corrupt directories are EIO, as QEMU refuses them).
 */
int
bitmaps_open (struct rb_image *img)
{
  const struct extension *x;
  uint64_t pos = 0, end;
  uint32_t i, j, nb;

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
  if (nb == 0 || nb > BME_MAX_BITMAPS)
    return rb_error (EIO, "corrupt image: bitmaps extension: %u bitmaps (1 to %d)", nb, BME_MAX_BITMAPS);
  if (img->bitmap_dir_size == 0 || img->bitmap_dir_size > BME_MAX_DIR_SIZE)
    return rb_error (EIO, "corrupt image: bitmap directory of %" PRIu64 " bytes (at most %u)",
                     img->bitmap_dir_size, BME_MAX_DIR_SIZE);
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
    img->nr_bitmaps = i + 1;       /* so bitmaps_free frees what was parsed */
    if (parse_entry (img, pos, i, &img->bitmaps[i], &pos) == -1)
      return -1;
    for (j = 0; j < i; j++)
      if (strcmp (img->bitmaps[j].name, img->bitmaps[i].name) == 0)
        return rb_error (EIO, "corrupt image: two bitmaps are named '%s'", img->bitmaps[i].name);
  }
  if (pos != img->bitmap_dir_size)
    return rb_error (EIO, "corrupt image: bitmap directory is %" PRIu64
                     " bytes but its %u entries take %" PRIu64, img->bitmap_dir_size, nb, pos);
  return 0;
}

/* Load b's bits and make it live; on failure warn and leave it unloaded
 * (it is marked in use all the same).
 */
static void
load_live (struct rb_image *img, struct bitmap *b)
{
  if (bits_load (img, b, &b->bits) == 0) {
    b->live = true;
    return;
  }
  rb_warning ("%s: bitmap '%s' is marked in use: it could not be loaded (%s)",
              img->path, b->name, rb_errmsg ());
}

int
bitmaps_mark_in_use (struct rb_image *img)
{
  CLEANUP_FREE uint32_t *saved = NULL;
  bool any = false;
  uint32_t i;

  if (img->nr_bitmaps == 0)
    return 0;
  saved = malloc (img->nr_bitmaps * sizeof *saved);
  if (!saved)
    return rb_error (ENOMEM, "out of memory");
  for (i = 0; i < img->nr_bitmaps; i++) {
    struct bitmap *b = &img->bitmaps[i];

    saved[i] = b->flags;
    if (b->flags & BME_FLAG_IN_USE)
      continue;                 /* inconsistent already: stays so, untracked */
    if (!(b->flags & BME_FLAG_AUTO) && !unknown_kind (b))
      continue;                 /* disabled: untouched, stays consistent */
    if (b->unsupported)
      rb_warning ("%s: bitmap '%s' is marked in use: rblock cannot keep it up to date (%s)",
                  img->path, b->name, b->unsupported);
    else
      load_live (img, b);
    b->flags |= BME_FLAG_IN_USE;
    put_be32 (img->bitmap_dir + b->dir_pos + 12, b->flags);
    any = true;
  }
  if (!any)
    return 0;
  /* In place: only flag words change, and a flag word (4 bytes at an
   * 8-aligned entry + 12) never straddles a sector, so even a torn write
   * leaves each entry with its old or its new flags.
   */
  if (full_pwrite (img->fd, img->bitmap_dir, img->bitmap_dir_size, img->bitmap_dir_offset,
                   IO_BITMAP_WRITE) == -1 ||
      bitmaps_track_publish (img) == -1) {
    int e = errno;
    for (i = 0; i < img->nr_bitmaps; i++) {
      struct bitmap *b = &img->bitmaps[i];
      b->flags = saved[i];
      put_be32 (img->bitmap_dir + b->dir_pos + 12, b->flags);
      bits_free (b->bits);
      b->bits = NULL;
      b->live = false;
    }
    errno = e;
    return -1;
  }
  return 1;
}

/* At close: store the live bitmaps with in_use cleared.  Returns 0 / -1
 * (they then stay in use on disk, which is safe).
 */
int
bitmaps_close (struct rb_image *img)
{
  bool live = false;
  uint32_t i;
  int r;

  for (i = 0; i < img->nr_bitmaps; i++)
    live |= img->bitmaps[i].live;
  if (!live || rb_is_readonly (img) || img->corrupt)
    return 0;
  pthread_rwlock_wrlock (&img->io_lock);
  pthread_mutex_lock (&img->meta_lock);
  r = bitmaps_commit (img, true, NULL, 0);
  pthread_mutex_unlock (&img->meta_lock);
  pthread_rwlock_unlock (&img->io_lock);
  return r;
}

/* The bitmap called name, or NULL. */
struct bitmap *
bitmap_find (struct rb_image *img, const char *name)
{
  uint32_t i;

  for (i = 0; i < img->nr_bitmaps; i++)
    if (strcmp (img->bitmaps[i].name, name) == 0)
      return &img->bitmaps[i];
  return NULL;
}

void
bitmaps_free (struct rb_image *img)
{
  uint32_t i;

  bitmaps_track_free (img);
  for (i = 0; i < img->nr_bitmaps; i++) {
    free (img->bitmaps[i].name);
    free (img->bitmaps[i].extra);
    bits_free (img->bitmaps[i].bits);
  }
  free (img->bitmap_dir);
  free (img->bitmaps);
  img->bitmap_dir = NULL;
  img->bitmaps = NULL;
  img->nr_bitmaps = 0;
}
