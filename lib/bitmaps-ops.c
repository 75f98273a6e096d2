/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * The bitmap operations of rblock.h: list, extents, add, remove, clear, enable/disable, merge.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Each changing operation holds io_lock exclusively (no guest request runs,
 * so the live set can change) and meta_lock, edits the in-memory bitmaps,
 * and commits them with bitmaps_commit; on failure the edit is undone and
 * the image keeps its old, valid bitmaps.  A live bitmap (this session
 * writes the image) is changed in memory only: rb_close stores it.
 */

static void
lock_ops (struct rb_image *img)
{
  pthread_rwlock_wrlock (&img->io_lock);
  pthread_mutex_lock (&img->meta_lock);
}

static void
unlock_ops (struct rb_image *img)
{
  pthread_mutex_unlock (&img->meta_lock);
  pthread_rwlock_unlock (&img->io_lock);
}

/* Checks before a change; under the locks.  Also clears the autoclear bits
 * rblock does not maintain, as before any write (invariant 7).  0 / -1.
 */
static int
may_change (struct rb_image *img)
{
  if (img->readonly)
    return rb_error (EROFS, "%s: image is read-only", img->path);
  if (img->corrupt)
    return rb_error (EIO, "%s: image is marked corrupt; no more writes", img->path);
  if (img->version < 3)
    return rb_error (ENOTSUP, "%s: a version 2 (compat 0.10) image cannot hold bitmaps", img->path);
  return clear_autoclear (img, false);
}

/* The bitmap `name`, usable for reading or changing bits: not in use
 * (unless live) and supported.  NULL with the error recorded.
 */
static struct bitmap *
usable (struct rb_image *img, const char *name)
{
  struct bitmap *b = bitmap_find (img, name);

  if (!b)
    rb_error (ENOENT, "%s: no bitmap named '%s'", img->path, name);
  else if ((b->flags & BME_FLAG_IN_USE) && !b->live)
    rb_error (EBUSY, "%s: bitmap '%s' is in use (inconsistent): it can only be removed",
              img->path, name);
  else if (b->unsupported)
    rb_error (ENOTSUP, "%s: bitmap '%s' is not supported: %s", img->path, name, b->unsupported);
  else
    return b;
  return NULL;
}

/* A copy of b's bits (the live ones, or loaded from disk) in *out. */
static int
bits_snapshot (struct rb_image *img, const struct bitmap *b, struct bitmap_bits **out)
{
  if (!b->live)
    return bits_load (img, b, out);
  if (!(*out = bits_new (img, b->granularity_bits)))
    return -1;
  bits_merge (*out, b->bits);
  return 0;
}

/* A copy of the bits of bitmap `name` of img in *out, taken under img's
 * locks (so the caller may then call into any engine).  0 / -1.
 */
static int
snapshot_named (struct rb_image *img, const char *name, struct bitmap_bits **out)
{
  struct bitmap *b;
  int r = -1;

  *out = NULL;
  pthread_rwlock_rdlock (&img->io_lock);
  pthread_mutex_lock (&img->meta_lock);
  if ((b = usable (img, name)))
    r = bits_snapshot (img, b, out);
  pthread_mutex_unlock (&img->meta_lock);
  pthread_rwlock_unlock (&img->io_lock);
  return r;
}

int
rb_bitmap_list (struct rb_image *img, bool count, struct rb_bitmap_info **list, size_t *nr)
{
  struct rb_bitmap_info *v;
  uint32_t i;
  int r = 0;

  *list = NULL;
  *nr = 0;
  pthread_rwlock_rdlock (&img->io_lock);
  pthread_mutex_lock (&img->meta_lock);
  v = calloc (MAX (img->nr_bitmaps, 1), sizeof *v);
  if (!v)
    r = rb_error (ENOMEM, "out of memory");
  for (i = 0; r == 0 && i < img->nr_bitmaps; i++) {
    const struct bitmap *b = &img->bitmaps[i];
    struct rb_bitmap_info *o = &v[i];
    struct bitmap_bits *bits;

    memcpy (o->name, b->name, b->name_size + 1);
    o->granularity = b->granularity_bits < 64 ? 1ULL << b->granularity_bits : 0;
    o->flags = b->flags;
    o->type = b->type;
    o->supported = !b->unsupported;
    o->live = b->live;
    if (b->live) {
      o->have_count = true;
      o->dirty_bytes = bits_dirty_bytes (b->bits, img->size);
    }
    else if (count && !b->unsupported && !(b->flags & BME_FLAG_IN_USE)) {
      if ((r = bits_load (img, b, &bits)) == 0) {
        o->have_count = true;
        o->dirty_bytes = bits_dirty_bytes (bits, img->size);
        bits_free (bits);
      }
    }
  }
  pthread_mutex_unlock (&img->meta_lock);
  pthread_rwlock_unlock (&img->io_lock);
  if (r == -1) {
    free (v);
    return -1;
  }
  *list = v;
  *nr = img->nr_bitmaps;
  return 0;
}

int
rb_bitmap_extents (struct rb_image *img, const char *name, uint64_t offset, uint64_t count,
                   rb_dirty_fn fn, void *opaque)
{
  struct bitmap_bits *bits;
  int r;

  /* Work on a copy, without locks, so fn may call into the engine. */
  r = snapshot_named (img, name, &bits);
  if (r == 0)
    r = bits_runs (bits, img->size, offset, count, fn, opaque);
  bits_free (bits);
  return r;
}

/* Checks on a new bitmap's name and granularity (QEMU's limits). */
static int
check_new (struct rb_image *img, const char *name, uint64_t granularity)
{
  uint64_t bytes;

  if (name[0] == '\0')
    return rb_error (EINVAL, "bitmap name cannot be empty");
  if (strlen (name) > BME_MAX_NAME_SIZE)
    return rb_error (EINVAL, "bitmap name is longer than %d bytes", BME_MAX_NAME_SIZE);
  if (bitmap_find (img, name))
    return rb_error (EEXIST, "%s: bitmap '%s' already exists", img->path, name);
  if (granularity < (1u << BME_MIN_GRANULARITY_BITS) ||
      granularity > (1ULL << BME_MAX_GRANULARITY_BITS) || (granularity & (granularity - 1)))
    return rb_error (EINVAL, "granularity %" PRIu64 " is not a power of 2 from 512 bytes to 2 GiB",
                     granularity);
  bytes = bitmap_bytes (img, __builtin_ctzll (granularity));
  if (bytes > BME_MAX_PHYS_SIZE || DIV_ROUND_UP (bytes, img->cluster_size) > BME_MAX_TABLE_SIZE)
    return rb_error (EINVAL, "bitmap '%s' would take %" PRIu64 " bytes (over QEMU's limit): "
                     "use a larger granularity", name, bytes);
  if (img->nr_bitmaps >= BME_MAX_BITMAPS)
    return rb_error (ENOSPC, "%s: already %d bitmaps (QEMU's limit)", img->path, BME_MAX_BITMAPS);
  return 0;
}

int
rb_bitmap_add (struct rb_image *img, const char *name, uint64_t granularity, bool disabled)
{
  struct bitmap *v, *b;
  int r;

  if (granularity == 0)
    granularity = MIN (MAX (img->cluster_size, 4096), 65536);
  lock_ops (img);
  r = may_change (img);
  if (r == 0)
    r = check_new (img, name, granularity);
  if (r == 0 && !(v = realloc (img->bitmaps, (img->nr_bitmaps + 1) * sizeof *v)))
    r = rb_error (ENOMEM, "out of memory");
  if (r == 0) {
    img->bitmaps = v;
    b = &v[img->nr_bitmaps];
    memset (b, 0, sizeof *b);
    b->name = strdup (name);
    b->extra = malloc (1);
    b->name_size = strlen (name);
    b->type = BME_TYPE_DIRTY;
    b->granularity_bits = __builtin_ctzll (granularity);
    b->flags = disabled ? 0 : BME_FLAG_AUTO;
    b->bits = bits_new (img, b->granularity_bits);
    b->changed = true;
    /* In a session that writes, an enabled bitmap records from now on. */
    b->live = img->first_write_done && !disabled;
    if (b->live)
      b->flags |= BME_FLAG_IN_USE;
    img->nr_bitmaps++;
    if (!b->name || !b->extra || !b->bits)
      r = rb_error (ENOMEM, "out of memory");
    if (r == 0)
      r = bitmaps_commit (img, false, NULL, 0);
    if (r == -1) {
      img->nr_bitmaps--;
      free (b->name);
      free (b->extra);
      bits_free (b->bits);
    }
    else if (b->live && bitmaps_track_publish (img) == -1) {
      b->live = false;          /* stored in use: inconsistent, never wrong */
      bits_free (b->bits);
      b->bits = NULL;
      r = -1;
    }
  }
  unlock_ops (img);
  return r;
}

int
rb_bitmap_remove (struct rb_image *img, const char *name)
{
  struct bitmap *b, removed;
  uint32_t i;
  int r;

  lock_ops (img);
  r = may_change (img);
  b = r == 0 ? bitmap_find (img, name) : NULL;
  if (r == 0 && !b)
    r = rb_error (ENOENT, "%s: no bitmap named '%s'", img->path, name);
  if (r == 0) {
    i = b - img->bitmaps;
    removed = *b;
    memmove (b, b + 1, (img->nr_bitmaps - i - 1) * sizeof *b);
    img->nr_bitmaps--;
    r = bitmaps_commit (img, false, &removed, 1);
    if (r == -1) {              /* put it back where it was */
      memmove (&img->bitmaps[i + 1], &img->bitmaps[i], (img->nr_bitmaps - i) * sizeof *b);
      img->bitmaps[i] = removed;
      img->nr_bitmaps++;
    }
    else {
      if (removed.live)
        bitmaps_track_publish (img);     /* cannot fail: smaller set; before the free */
      free (removed.name);
      free (removed.extra);
      bits_free (removed.bits);
    }
  }
  unlock_ops (img);
  return r;
}

/* Give b (not live, no bits loaded) the bits `bits` (owned) and commit;
 * on failure b is as it was.  0 / -1.
 */
static int
commit_bits (struct rb_image *img, struct bitmap *b, struct bitmap_bits *bits)
{
  int r;

  b->bits = bits;
  b->changed = true;
  r = bitmaps_commit (img, false, NULL, 0);
  if (r == -1) {
    bits_free (b->bits);
    b->bits = NULL;
    b->changed = false;
  }
  return r;
}

int
rb_bitmap_clear (struct rb_image *img, const char *name)
{
  struct bitmap_bits *bits;
  struct bitmap *b = NULL;
  int r;

  lock_ops (img);
  r = may_change (img);
  if (r == 0 && !(b = usable (img, name)))
    r = -1;
  if (r == 0 && b->live)
    bits_clear (b->bits);       /* stored at close */
  else if (r == 0)
    r = (bits = bits_new (img, b->granularity_bits)) ? commit_bits (img, b, bits) : -1;
  unlock_ops (img);
  return r;
}

int
rb_bitmap_enable (struct rb_image *img, const char *name, bool enabled)
{
  struct bitmap *b = NULL, saved;
  int r;

  lock_ops (img);
  r = may_change (img);
  if (r == 0 && !(b = usable (img, name)))
    r = -1;
  if (r == 0 && enabled != !!(b->flags & BME_FLAG_AUTO)) {
    saved = *b;
    if (enabled) {
      b->flags |= BME_FLAG_AUTO;
      if (img->first_write_done) {   /* a writing session: it records from now on */
        r = bits_load (img, b, &b->bits);
        b->live = true;
        b->flags |= BME_FLAG_IN_USE;
      }
    }
    else {
      b->flags &= ~BME_FLAG_AUTO;
      if (b->live) {            /* stop recording; store what it has */
        b->flags &= ~BME_FLAG_IN_USE;
        b->live = false;
        b->changed = true;
      }
    }
    if (r == 0)
      r = bitmaps_commit (img, false, NULL, 0);
    if (r == 0 && (b->live || saved.live))
      r = bitmaps_track_publish (img);
    if (r == -1 && b->bits != saved.bits)
      bits_free (b->bits);
    if (r == -1)
      *b = saved;
  }
  unlock_ops (img);
  return r;
}

int
rb_bitmap_merge (struct rb_image *img, const char *name,
                 struct rb_image *src, const char *src_name)
{
  struct bitmap_bits *sb, *bits;
  struct bitmap *b = NULL;
  int r;

  /* The source's bits first, under the source's own locks. */
  if (snapshot_named (src, src_name, &sb) == -1)
    return -1;

  lock_ops (img);
  r = may_change (img);
  if (r == 0 && !(b = usable (img, name)))
    r = -1;
  if (r == 0 && src->size != img->size)
    r = rb_error (EINVAL, "cannot merge bitmap '%s' of a %" PRIu64 "-byte disk into one of a %"
                  PRIu64 "-byte disk", src_name, src->size, img->size);
  if (r == 0 && b->live)
    bits_merge (b->bits, sb);   /* stored at close */
  else if (r == 0 && (r = bits_load (img, b, &bits)) == 0) {
    bits_merge (bits, sb);
    r = commit_bits (img, b, bits);
  }
  unlock_ops (img);
  bits_free (sb);
  return r;
}
