/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Storing bitmaps crash-safely: new data clusters, tables and directory, then the header extension, then frees.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* The order (flush.c invariant 8):
 * 1. bits into newly allocated data clusters, a new table per stored bitmap,
 *    a new directory: nothing on disk points at any of them yet;
 * 2. flush_metadata: their refcounts and contents are durable;
 * 3. the header extension switched to the new directory (one write of its
 *    24 bytes, 8-aligned; synced): this is the commit point;
 * 4. the old directory, tables and data clusters are freed (invariant 4).
 * A crash before 3 leaves the old directory, whose live bitmaps are marked
 * in use; after 3, the new one.  At worst clusters leak.
 */

struct runs {                   /* cluster runs: to free later, or to give back on failure */
  struct { uint64_t off, nr; } *v;
  size_t n, alloc;
};

static int
runs_add (struct runs *r, uint64_t off, uint64_t nr)
{
  if (nr == 0)
    return 0;
  if (r->n == r->alloc) {
    size_t n = r->alloc ? r->alloc * 2 : 16;
    void *v = realloc (r->v, n * sizeof *r->v);
    if (!v)
      return rb_error (ENOMEM, "out of memory");
    r->v = v;
    r->alloc = n;
  }
  r->v[r->n].off = off;
  r->v[r->n].nr = nr;
  r->n++;
  return 0;
}

/* Give back clusters that were allocated but never pointed at (so their
 * refcounts can drop at once).  Best effort; keeps the current error.
 */
static void
release_fresh (struct rb_image *img, struct runs *fresh)
{
  struct saved_error e;
  size_t i;
  uint64_t c;

  error_save (&e);
  for (i = 0; i < fresh->n; i++)
    for (c = 0; c < fresh->v[i].nr; c++)
      refcount_update (img, (fresh->v[i].off >> img->cluster_bits) + c, -1);
  error_restore (&e);
}

/* Queue b's table and data clusters for freeing after the commit.  A table
 * that does not read back as valid frees only itself: a leak, never the
 * release of a cluster something else may use.
 */
static int
collect_old (struct rb_image *img, const struct bitmap *b, struct runs *old)
{
  CLEANUP_FREE uint64_t *table = NULL;
  uint64_t i;

  if (b->table_size == 0)
    return 0;
  if (bits_table_read (img, b, &table) == 0)
    for (i = 0; i < b->table_size; i++)
      if ((table[i] & BME_TABLE_OFFSET_MASK) &&
          runs_add (old, table[i] & BME_TABLE_OFFSET_MASK, 1) == -1)
        return -1;
  return runs_add (old, b->table_offset,
                   DIV_ROUND_UP ((uint64_t) b->table_size * 8, img->cluster_size));
}

/* Allocate and write count bytes of metadata (bitmap data, table or
 * directory) into new clusters; the offset in *off.  0 / -1.
 */
static int
write_new (struct rb_image *img, const void *buf, uint64_t count, struct runs *fresh, uint64_t *off)
{
  uint64_t nr = DIV_ROUND_UP (count, img->cluster_size);
  int64_t n = alloc_clusters (img, nr);

  if (n == -1)
    return -1;
  if (runs_add (fresh, n, nr) == -1) {
    uint64_t c;
    for (c = 0; c < nr; c++)    /* nothing points at them: give them back now */
      refcount_update (img, ((uint64_t) n >> img->cluster_bits) + c, -1);
    return rb_error (ENOMEM, "out of memory");
  }
  if (overlap_check (img, n, count, OV_DATA) == -1 ||
      full_pwrite (img->fd, buf, count, n, IO_BITMAP_WRITE) == -1)
    return -1;
  *off = n;
  return 0;
}

/* Store b's bits: data clusters for the non-zero ones, then the table. */
static int
store_bits (struct rb_image *img, const struct bitmap *b, struct runs *fresh,
            uint64_t *table_offset, uint32_t *table_size)
{
  const uint64_t cs = img->cluster_size;
  uint64_t n = DIV_ROUND_UP (bitmap_bytes (img, b->granularity_bits), cs), i, off;
  CLEANUP_FREE uint8_t *buf = malloc (cs);
  CLEANUP_FREE uint8_t *table = calloc (MAX (n, 1), 8);

  if (!buf || !table)
    return rb_error (ENOMEM, "out of memory");
  for (i = 0; i < n; i++) {
    if (!bits_cluster (b->bits, i, cs, buf))
      continue;                 /* entry 0: all zeros */
    if (write_new (img, buf, cs, fresh, &off) == -1)
      return -1;
    put_be64 (table + i * 8, off);
  }
  *table_size = n;
  *table_offset = 0;
  return n ? write_new (img, table, n * 8, fresh, table_offset) : 0;
}

/* The flags b gets in the new directory. */
static uint32_t
new_flags (const struct bitmap *b, bool final)
{
  return final && b->live ? b->flags & ~BME_FLAG_IN_USE : b->flags;
}

/* Build the directory of img->bitmaps with the given tables into *dir. */
static int
build_dir (struct rb_image *img, const uint64_t *toff, const uint32_t *tsize, bool final,
           uint8_t **dir, uint64_t *size, uint64_t *pos)
{
  uint64_t total = 0;
  uint32_t i;
  uint8_t *d;

  for (i = 0; i < img->nr_bitmaps; i++)
    total += ROUND_UP ((uint64_t) BME_ENTRY_FIXED + img->bitmaps[i].name_size +
                       img->bitmaps[i].extra_size, 8);
  if (total > BME_MAX_DIR_SIZE)
    return rb_error (ENOSPC, "the bitmap directory would be larger than %u bytes", BME_MAX_DIR_SIZE);
  d = calloc (1, MAX (total, 1));
  if (!d)
    return rb_error (ENOMEM, "out of memory");
  total = 0;
  for (i = 0; i < img->nr_bitmaps; i++) {
    const struct bitmap *b = &img->bitmaps[i];
    uint8_t *e = d + total;

    pos[i] = total;
    put_be64 (e, toff[i]);
    put_be32 (e + 8, tsize[i]);
    put_be32 (e + 12, new_flags (b, final));
    e[16] = b->type;
    e[17] = b->granularity_bits;
    put_be16 (e + 18, b->name_size);
    put_be32 (e + 20, b->extra_size);
    memcpy (e + BME_ENTRY_FIXED, b->extra, b->extra_size);
    memcpy (e + BME_ENTRY_FIXED + b->extra_size, b->name, b->name_size);
    total += ROUND_UP ((uint64_t) BME_ENTRY_FIXED + b->name_size + b->extra_size, 8);
  }
  *dir = d;
  *size = total;
  return 0;
}

int
bitmaps_commit (struct rb_image *img, bool final, const struct bitmap *removed,
                uint32_t nr_removed)
{
  uint32_t nr = img->nr_bitmaps, i;
  CLEANUP_FREE uint64_t *toff = calloc (MAX (nr, 1), 8);
  CLEANUP_FREE uint64_t *pos = calloc (MAX (nr, 1), 8);
  CLEANUP_FREE uint32_t *tsize = calloc (MAX (nr, 1), 4);
  struct runs fresh = { .n = 0 }, old = { .n = 0 };
  uint8_t *dir = NULL;
  uint64_t dir_size = 0, dir_off = 0;
  int r = -1;

  if (!toff || !pos || !tsize) {
    rb_error (ENOMEM, "out of memory");
    goto out;
  }
  /* 1. New data clusters, tables and directory. */
  for (i = 0; i < nr; i++) {
    struct bitmap *b = &img->bitmaps[i];
    toff[i] = b->table_offset;
    tsize[i] = b->table_size;
    if (!b->bits || !(b->changed || (final && b->live)))
      continue;
    if (collect_old (img, b, &old) == -1 ||
        store_bits (img, b, &fresh, &toff[i], &tsize[i]) == -1)
      goto fail;
  }
  for (i = 0; i < nr_removed; i++)
    if (collect_old (img, &removed[i], &old) == -1)
      goto fail;
  if (build_dir (img, toff, tsize, final, &dir, &dir_size, pos) == -1 ||
      (nr && write_new (img, dir, dir_size, &fresh, &dir_off) == -1))
    goto fail;
  /* 2. Durable (invariants 1, 6). */
  if (flush_metadata (img) == -1)
    goto fail;
  /* 3. The commit point.  If it fails half-way nothing is freed: leaks only. */
  if (bitmaps_ext_switch (img, nr, dir_size, dir_off) == -1)
    goto out;
  if (img->bitmap_dir_size &&
      runs_add (&old, img->bitmap_dir_offset, DIV_ROUND_UP (img->bitmap_dir_size, img->cluster_size)) == -1)
    goto out;                   /* committed: the old directory leaks */
  free (img->bitmap_dir);
  img->bitmap_dir = dir;
  dir = NULL;
  img->bitmap_dir_offset = dir_off;
  img->bitmap_dir_size = dir_size;
  for (i = 0; i < nr; i++) {
    struct bitmap *b = &img->bitmaps[i];
    b->table_offset = toff[i];
    b->table_size = tsize[i];
    b->dir_pos = pos[i];
    b->flags = new_flags (b, final);
    b->changed = false;
    if (final)
      b->live = false;
    if (!b->live) {
      bits_free (b->bits);
      b->bits = NULL;
    }
  }
  if (final)
    bitmaps_track_publish (img);
  /* 4. Free the old clusters once nothing durable points at them. */
  for (i = 0; i < old.n; i++)
    if (free_clusters_deferred (img, old.v[i].off, old.v[i].nr) == -1)
      goto out;
  r = 0;
  if (flush_metadata (img) == -1 || release_deferred_frees (img) == -1)
    r = -1;
  goto out;

 fail:
  release_fresh (img, &fresh);
 out:
  free (dir);
  free (fresh.v);
  free (old.v);
  return r;
}
