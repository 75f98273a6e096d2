/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Persistent dirty bitmaps follow a resize of the disk: truncated or grown with it, crash-safely.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* As QEMU (qcow2_co_truncate, qcow2_truncate_bitmaps_check): a bitmap that
 * is inconsistent (in use while nobody tracks it) stops the resize; every
 * other bitmap is resized with the disk (bit k keeps its value, bits past
 * the new end are dropped, a grown area starts clean) and stored with the
 * table size of the new size.
 *
 * The order, with io_lock exclusive and meta_lock held throughout (resize.c):
 * 1. the new bits of every bitmap are built in memory (live ones from their
 *    bits, disabled ones loaded from disk);
 * 2. every bitmap is in use on disk before the header switches the size:
 *    the live ones are since the first write; the disabled ones are marked
 *    now (flag words written in place, synced);
 * 3. the resize transaction switches the header (txn.c);
 * 4. the live bitmaps go on tracking in their new bits (rb_close stores
 *    them); the disabled ones are stored at once with in_use cleared
 *    (bitmaps_commit).
 * Killed between 2 and 4 the image has its old or new size and bitmaps in
 * use: inconsistent, as QEMU leaves them while it has the image open, never
 * a consistent-looking bitmap whose bits or table belong to the other size.
 * If the resize fails before the switch, the marks of 2 are taken back.
 */

struct bitmaps_resize {
  uint32_t n;                   /* img->nr_bitmaps */
  struct bitmap_bits **bits;    /* per bitmap: its bits at the new size */
  bool *marked;                 /* marked in use by step 2 (a disabled bitmap) */
};

static void
plan_free (struct bitmaps_resize *rs)
{
  uint32_t i;

  if (!rs)
    return;
  for (i = 0; rs->bits && i < rs->n; i++)
    bits_free (rs->bits[i]);
  free (rs->bits);
  free (rs->marked);
  free (rs);
}

/* Write the directory over itself (only flag words differ) and sync.  A
 * flag word never straddles a sector (bitmaps_mark_in_use).  0 / -1.
 */
static int
write_dir_in_place (struct rb_image *img)
{
  if (full_pwrite (img->fd, img->bitmap_dir, img->bitmap_dir_size, img->bitmap_dir_offset,
                   IO_BITMAP_WRITE) == -1)
    return -1;
  return file_sync (img->fd, IO_FLUSH);
}

/* Set or clear in_use of bitmap b in memory and in the directory buffer. */
static void
set_in_use (struct rb_image *img, struct bitmap *b, bool on)
{
  if (on)
    b->flags |= BME_FLAG_IN_USE;
  else
    b->flags &= ~BME_FLAG_IN_USE;
  put_be32 (img->bitmap_dir + b->dir_pos + 12, b->flags);
}

/* Take back the marks of step 2 (the resize did not happen), best effort:
 * a failure leaves them in use on disk, which is safe.  Keeps the error.
 */
static void
unmark (struct rb_image *img, struct bitmaps_resize *rs)
{
  struct saved_error saved;
  bool any = false;
  uint32_t i;

  error_save (&saved);
  for (i = 0; i < rs->n; i++)
    if (rs->marked[i]) {
      set_in_use (img, &img->bitmaps[i], false);
      any = true;
    }
  if (any && write_dir_in_place (img) == -1)
    for (i = 0; i < rs->n; i++)
      if (rs->marked[i])
        set_in_use (img, &img->bitmaps[i], true);   /* as on disk */
  error_restore (&saved);
}

/* Refuse a resize the bitmaps cannot follow, before anything is written.
 * 0 / -1.
 */
int
bitmaps_resize_check (struct rb_image *img, uint64_t new_size)
{
  uint64_t bytes;
  uint32_t i;

  for (i = 0; i < img->nr_bitmaps; i++) {
    const struct bitmap *b = &img->bitmaps[i];

    if ((b->flags & BME_FLAG_IN_USE) && !b->live)
      return rb_error (ENOTSUP, "%s: persistent bitmap '%s' is inconsistent (in use): it "
                       "cannot be resized; remove it first", img->path, b->name);
    if (b->unsupported)
      return rb_error (ENOTSUP, "%s: persistent bitmap '%s' cannot be resized: %s",
                       img->path, b->name, b->unsupported);
    if (new_size == 0)
      return rb_error (EINVAL, "%s: an empty disk cannot keep persistent bitmaps ('%s')",
                       img->path, b->name);
    bytes = bitmap_bytes_at (new_size, b->granularity_bits);
    if (bytes > BME_MAX_PHYS_SIZE || DIV_ROUND_UP (bytes, img->cluster_size) > BME_MAX_TABLE_SIZE)
      return rb_error (EFBIG, "%s: persistent bitmap '%s' would take %" PRIu64 " bytes at the "
                       "new size (over QEMU's limit): remove it or use a larger granularity",
                       img->path, b->name, bytes);
  }
  return 0;
}

/* Steps 1 and 2 for a resize to new_size, after prepare_first_write (so
 * the enabled bitmaps are live).  *out is the plan for
 * bitmaps_resize_finish (NULL without bitmaps).  0 / -1 (nothing changed).
 */
int
bitmaps_resize_prepare (struct rb_image *img, uint64_t new_size, struct bitmaps_resize **out)
{
  struct bitmaps_resize *rs;
  bool any = false;
  uint32_t i;

  *out = NULL;
  if (img->nr_bitmaps == 0)
    return 0;
  if (bitmaps_resize_check (img, new_size) == -1)   /* again: the first write may have marked some */
    return -1;
  rs = calloc (1, sizeof *rs);
  if (!rs || !(rs->bits = calloc (img->nr_bitmaps, sizeof *rs->bits)) ||
      !(rs->marked = calloc (img->nr_bitmaps, sizeof *rs->marked))) {
    plan_free (rs);
    return rb_error (ENOMEM, "out of memory");
  }
  rs->n = img->nr_bitmaps;
  for (i = 0; i < rs->n; i++) {
    struct bitmap *b = &img->bitmaps[i];
    struct bitmap_bits *loaded = NULL;

    if (!b->live && bits_load (img, b, &loaded) == -1)
      goto fail;
    rs->bits[i] = bits_resized (b->live ? b->bits : loaded, new_size);
    bits_free (loaded);
    if (!rs->bits[i])
      goto fail;
  }
  for (i = 0; i < rs->n; i++)
    if (!img->bitmaps[i].live) {
      set_in_use (img, &img->bitmaps[i], true);
      rs->marked[i] = any = true;
    }
  if (any && write_dir_in_place (img) == -1) {
    unmark (img, rs);
    goto fail;
  }
  *out = rs;
  return 0;

 fail:
  plan_free (rs);
  return -1;
}

/* Step 4 (switched: the header has the new size), or step 2 taken back.
 * Frees rs.  0 / -1 (then the bitmaps that could not follow stay in use:
 * inconsistent, never wrong).
 */
int
bitmaps_resize_finish (struct rb_image *img, struct bitmaps_resize *rs, bool switched)
{
  bool live = false, marked = false;
  uint32_t i;
  int r = 0;

  if (!rs)
    return 0;
  if (!switched) {
    unmark (img, rs);
    plan_free (rs);
    return 0;
  }
  for (i = 0; i < rs->n; i++) {
    struct bitmap *b = &img->bitmaps[i];
    struct bitmap_bits *old = b->bits;

    b->bits = rs->bits[i];
    rs->bits[i] = old;          /* the old live bits: freed once unpublished */
    live |= b->live;
    if (rs->marked[i]) {
      b->changed = true;
      b->flags &= ~BME_FLAG_IN_USE;   /* stored so by the commit below */
      marked = true;
    }
  }
  /* io_lock is held exclusively: no writer uses the old set meanwhile. */
  if (live && bitmaps_track_publish (img) == -1) {
    bitmaps_track_free (img);
    for (i = 0; i < rs->n; i++) {
      struct bitmap *b = &img->bitmaps[i];
      if (b->live) {
        b->live = false;        /* in use on disk: inconsistent from now on */
        bits_free (b->bits);
        b->bits = NULL;
      }
    }
    rb_warning ("%s: the enabled bitmaps are left in use (inconsistent): %s",
                img->path, rb_errmsg ());
  }
  if (marked && bitmaps_commit (img, false, NULL, 0) == -1) {
    struct saved_error saved;

    error_save (&saved);
    for (i = 0; i < rs->n; i++)
      if (rs->marked[i]) {
        struct bitmap *b = &img->bitmaps[i];
        b->flags |= BME_FLAG_IN_USE;   /* as the directory on disk says */
        b->changed = false;
        bits_free (b->bits);
        b->bits = NULL;
      }
    r = rb_error (saved.err, "%s: resized, but the disabled bitmaps could not be stored at "
                  "the new size (they are left in use): %s", img->path, saved.msg);
  }
  plan_free (rs);
  return r;
}
