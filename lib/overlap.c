/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Metadata overlap checks before writes, as QEMU's default "cached" overlap-check does.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static int
cmp_u64 (const void *a, const void *b)
{
  uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
  return x < y ? -1 : x > y;
}

/* ---- the set of active L2 tables ----
 * Host offsets of every L2 table the active L1 points at (with a count, as a
 * broken image may point twice at one table), in an open-addressing hash
 * table with linear probing: O(1) per cluster checked, whatever the cache
 * holds.  Kept current by l1_set_entry (l2.c).  Under meta_lock.
 */
static uint64_t
slot_of (const struct offset_set *s, uint64_t key)
{
  uint64_t k = key >> 9;
  k ^= k >> 29;
  k *= 0xbf58476d1ce4e5b9ULL;
  k ^= k >> 32;
  return k & (s->size - 1);
}

/* Position of key, or of the empty slot where it would go. */
static uint64_t
set_find (const struct offset_set *s, uint64_t key)
{
  uint64_t i = slot_of (s, key);

  while (s->keys[i] != 0 && s->keys[i] != key)
    i = (i + 1) & (s->size - 1);
  return i;
}

static int
set_grow (struct offset_set *s)
{
  struct offset_set n = { .size = s->size ? s->size * 2 : 64 };
  uint64_t i;

  n.keys = calloc (n.size, sizeof *n.keys);
  n.counts = calloc (n.size, sizeof *n.counts);
  if (!n.keys || !n.counts) {
    free (n.keys);
    free (n.counts);
    return rb_error (ENOMEM, "out of memory for the overlap checks");
  }
  for (i = 0; i < s->size; i++)
    if (s->keys[i]) {
      uint64_t j = set_find (&n, s->keys[i]);
      n.keys[j] = s->keys[i];
      n.counts[j] = s->counts[i];
      n.used++;
    }
  free (s->keys);
  free (s->counts);
  *s = n;
  return 0;
}

static bool
set_contains (const struct offset_set *s, uint64_t key)
{
  return s->used && s->keys[set_find (s, key)] == key;
}

/* Add one reference to the L2 table at host offset off (cluster aligned, not 0). */
int
overlap_l2_add (struct rb_image *img, uint64_t off)
{
  struct offset_set *s = &img->l2_tables;
  uint64_t i;

  if ((s->used + 1) * 2 > s->size && set_grow (s) == -1)
    return -1;
  i = set_find (s, off);
  if (s->keys[i] == off) {
    s->counts[i]++;
    return 0;
  }
  s->keys[i] = off;
  s->counts[i] = 1;
  s->used++;
  return 0;
}

/* Drop one reference to the L2 table at off (backward-shift deletion). */
void
overlap_l2_remove (struct rb_image *img, uint64_t off)
{
  struct offset_set *s = &img->l2_tables;
  uint64_t i, j;

  if (!s->used || s->keys[i = set_find (s, off)] != off)
    return;
  if (--s->counts[i] > 0)
    return;
  s->keys[i] = 0;
  s->used--;
  for (j = (i + 1) & (s->size - 1); s->keys[j]; j = (j + 1) & (s->size - 1)) {
    uint64_t home = slot_of (s, s->keys[j]);
    /* Move j back into the hole at i unless its home lies in (i, j]. */
    if ((j > i && (home <= i || home > j)) || (j < i && home <= i && home > j)) {
      s->keys[i] = s->keys[j];
      s->counts[i] = s->counts[j];
      s->keys[j] = 0;
      i = j;
    }
  }
}

/* Build the set from the active L1 table (at open). */
int
overlap_l2_rebuild (struct rb_image *img)
{
  uint64_t i;

  overlap_free (img);
  for (i = 0; i < img->l1_size; i++)
    if ((img->l1[i] & L1E_OFFSET_MASK) && overlap_l2_add (img, img->l1[i] & L1E_OFFSET_MASK) == -1)
      return -1;
  return 0;
}

void
overlap_free (struct rb_image *img)
{
  free (img->l2_tables.keys);
  free (img->l2_tables.counts);
  memset (&img->l2_tables, 0, sizeof img->l2_tables);
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
 * the active L1 table, an active L2 table, the refcount table, a refcount
 * block, the snapshot table or an inactive L1 table, the bitmap directory or
 * a bitmap table: every check of QEMU's default overlap-check mode.  kind
 * names what is being written (a table may be rewritten in its own place).
 * Returns 0, or -1 with the image marked corrupt, as QEMU does.  Called
 * under meta_lock.
 */
int
overlap_check (struct rb_image *img, uint64_t host_offset, uint64_t len,
               enum overlap_kind kind)
{
  uint64_t cs = img->cluster_size, c, first, last, i;
  const char *what;

  if (len == 0)
    return 0;

  what = "the header";
  if (overlaps (host_offset, len, 0, cs))
    goto bad;
  what = "the active L1 table";
  if (kind != OV_L1 && overlaps (host_offset, len, img->l1_table_offset, (uint64_t) img->l1_size * 8))
    goto bad;
  what = "the refcount table";
  if (kind != OV_REFTABLE &&
      overlaps (host_offset, len, img->refcount_table_offset,
                (uint64_t) img->refcount_table_clusters * cs))
    goto bad;
  if (img->nb_snapshots) {
    what = "the snapshot table";
    if (overlaps (host_offset, len, img->snapshots_offset, img->snapshots_size))
      goto bad;
    what = "an inactive L1 table";
    for (i = 0; i < img->nb_snapshots; i++)
      if (overlaps (host_offset, len, img->snapshots[i].l1_table_offset,
                    (uint64_t) img->snapshots[i].l1_size * 8))
        goto bad;
  }
  what = "the bitmap directory";
  if (overlaps (host_offset, len, img->bitmap_dir_offset, img->nr_bitmaps ? img->bitmap_dir_size : 0))
    goto bad;
  what = "a bitmap table";
  for (i = 0; i < img->nr_bitmaps; i++)
    if (overlaps (host_offset, len, img->bitmaps[i].table_offset,
                  (uint64_t) img->bitmaps[i].table_size * 8))
      goto bad;
  first = host_offset >> img->cluster_bits;
  last = (host_offset + len - 1) >> img->cluster_bits;
  for (c = first; c <= last; c++) {
    uint64_t off = c << img->cluster_bits;
    if (kind != OV_REFBLOCK && is_refblock (img, off)) {
      what = "a refcount block";
      goto bad;
    }
    if (kind != OV_L2 && set_contains (&img->l2_tables, off)) {
      what = "an active L2 table";
      goto bad;
    }
  }
  return 0;

 bad:
  return mark_corrupt (img, "refusing to write %" PRIu64 " bytes at host offset %#" PRIx64
                       ": it would overwrite metadata (%s)", len, host_offset, what);
}
