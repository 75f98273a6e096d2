/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Dirty bitmap bits in memory: loading from a bitmap table, setting bits on writes, counting, runs, serializing.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Bit k covers guest bytes [k << shift, (k + 1) << shift) and lives in
 * words[k / 64] at bit k % 64: the words serialized little-endian are the
 * on-disk bitmap data (qcow2.txt "Bitmap data": bit k is bit k % 8 of byte
 * k / 8).  Bits past nr_bits are always zero.
 *
 * Concurrency: live bits are set by any number of writers at once, outside
 * meta_lock, with atomic OR; readers (RPC, listing) use atomic loads.  The
 * set of live bitmaps (struct bitmap_track) is published with a release
 * store; it is replaced or freed only under io_lock held exclusively, and
 * bitmaps_note_write runs with io_lock held shared.
 */
struct bitmap_bits {
  uint64_t nr_bits;
  unsigned shift;
  uint64_t nr_words;
  uint64_t words[];
};

struct bitmap_track {
  size_t n;
  struct bitmap_bits *bits[];
};

static inline uint64_t
word_load (const struct bitmap_bits *bits, uint64_t w)
{
  return __atomic_load_n (&bits->words[w], __ATOMIC_RELAXED);
}

/* A bitmap of a disk_size-byte disk at granularity 2^granularity_bits,
 * all clear; NULL on error.
 */
static struct bitmap_bits *
bits_alloc (uint64_t disk_size, unsigned granularity_bits)
{
  uint64_t nr_bits = bitmap_nr_bits (disk_size, granularity_bits);
  struct bitmap_bits *bits;

  bits = calloc (1, sizeof *bits + DIV_ROUND_UP (nr_bits, 64) * 8);
  if (!bits) {
    rb_error (ENOMEM, "out of memory for a bitmap of %" PRIu64 " bits", nr_bits);
    return NULL;
  }
  bits->nr_bits = nr_bits;
  bits->shift = granularity_bits;
  bits->nr_words = DIV_ROUND_UP (nr_bits, 64);
  return bits;
}

/* A bitmap of the disk's size at granularity 2^granularity_bits, all
 * clear; NULL on error.
 */
struct bitmap_bits *
bits_new (struct rb_image *img, unsigned granularity_bits)
{
  return bits_alloc (img->size, granularity_bits);
}

/* A copy of bits for a disk of new_size bytes, as QEMU truncates a bitmap
 * with the disk (hbitmap_truncate): bit k keeps its value, bits past the
 * new end are dropped, new ones are clear.  NULL on error.
 */
struct bitmap_bits *
bits_resized (const struct bitmap_bits *bits, uint64_t new_size)
{
  struct bitmap_bits *n = bits_alloc (new_size, bits->shift);
  uint64_t w;

  if (!n)
    return NULL;
  for (w = 0; w < MIN (n->nr_words, bits->nr_words); w++)
    n->words[w] = word_load (bits, w);
  if (n->nr_bits % 64 && n->nr_words <= bits->nr_words)
    n->words[n->nr_words - 1] &= (1ULL << (n->nr_bits % 64)) - 1;
  return n;
}

void
bits_free (struct bitmap_bits *bits)
{
  free (bits);
}

/* Read b's bitmap table into *table (host order, malloc'd) and check every
 * entry.  Returns 0 / -1 (EIO "corrupt image" for a bad entry).
 */
int
bits_table_read (struct rb_image *img, const struct bitmap *b, uint64_t **table)
{
  uint64_t *t, i;

  *table = NULL;
  t = malloc (MAX ((uint64_t) b->table_size, 1) * 8);
  if (!t)
    return rb_error (ENOMEM, "out of memory");
  if (b->table_size &&
      full_pread (img->fd, t, (uint64_t) b->table_size * 8, b->table_offset, IO_META_READ) == -1) {
    free (t);
    return -1;
  }
  for (i = 0; i < b->table_size; i++) {
    uint64_t e = be64toh (t[i]), off = e & BME_TABLE_OFFSET_MASK;
    t[i] = e;
    if ((e & BME_TABLE_RESERVED_MASK) || (off && (e & BME_TABLE_ALL_ONES)) ||
        (off && (!IS_ALIGNED (off, img->cluster_size) || off < img->cluster_size ||
                 off + img->cluster_size > ROUND_UP (img->file_size, img->cluster_size)))) {
      free (t);
      return rb_error (EIO, "corrupt image: bitmap '%s': table entry %" PRIu64
                       " (%#" PRIx64 ") is invalid", b->name, i, e);
    }
  }
  *table = t;
  return 0;
}

/* Load b's bits from its table and data clusters into *out.  b must be
 * supported (bitmaps.c checked type, granularity and table size).
 * Returns 0 / -1.
 */
int
bits_load (struct rb_image *img, const struct bitmap *b, struct bitmap_bits **out)
{
  const uint64_t cs = img->cluster_size;
  uint64_t bytes = bitmap_bytes (img, b->granularity_bits), i, w;
  CLEANUP_FREE uint64_t *table = NULL;
  struct bitmap_bits *bits;
  uint8_t *p;

  *out = NULL;
  if (bits_table_read (img, b, &table) == -1 || !(bits = bits_new (img, b->granularity_bits)))
    return -1;
  p = (uint8_t *) bits->words;          /* serialized form first, converted below */
  for (i = 0; i < b->table_size && i * cs < bytes; i++) {
    uint64_t off = table[i] & BME_TABLE_OFFSET_MASK;
    uint64_t n = MIN (cs, bytes - i * cs);
    if (off) {
      if (data_pread (img, p + i * cs, n, off, IO_META_READ) == -1) {
        bits_free (bits);
        return -1;
      }
    }
    else if (table[i] & BME_TABLE_ALL_ONES)
      memset (p + i * cs, 0xff, n);
  }
  for (w = 0; w < bits->nr_words; w++)
    bits->words[w] = le64toh (bits->words[w]);
  if (bits->nr_bits % 64)
    bits->words[bits->nr_words - 1] &= (1ULL << (bits->nr_bits % 64)) - 1;
  *out = bits;
  return 0;
}

/* Set the bits covering guest bytes [offset, offset+count): thread-safe,
 * and a bit already set costs one load.
 */
void
bits_set (struct bitmap_bits *bits, uint64_t offset, uint64_t count)
{
  uint64_t first = offset >> bits->shift, last, w, lw;

  if (count == 0 || first >= bits->nr_bits)
    return;
  last = MIN ((offset + count - 1) >> bits->shift, bits->nr_bits - 1);
  lw = last / 64;
  for (w = first / 64; w <= lw; w++) {
    uint64_t mask = ~0ULL;
    if (w == first / 64)
      mask &= ~0ULL << (first % 64);
    if (w == lw)
      mask &= ~0ULL >> (63 - last % 64);
    if ((word_load (bits, w) & mask) != mask)
      __atomic_fetch_or (&bits->words[w], mask, __ATOMIC_RELAXED);
  }
}

/* Clear every bit (no concurrent writer: io_lock held exclusively). */
void
bits_clear (struct bitmap_bits *bits)
{
  uint64_t w;

  for (w = 0; w < bits->nr_words; w++)
    __atomic_store_n (&bits->words[w], 0, __ATOMIC_RELAXED);
}

/* The first bit at or after `from` whose value is not `value`, or nr_bits. */
static uint64_t
next_change (const struct bitmap_bits *bits, uint64_t from, bool value)
{
  uint64_t w = from / 64, x;

  if (from >= bits->nr_bits)
    return bits->nr_bits;
  x = (word_load (bits, w) ^ (value ? ~0ULL : 0)) & (~0ULL << (from % 64));
  while (x == 0) {
    if (++w >= bits->nr_words)
      return bits->nr_bits;
    x = word_load (bits, w) ^ (value ? ~0ULL : 0);
  }
  return MIN (w * 64 + __builtin_ctzll (x), bits->nr_bits);
}

static bool
bit_get (const struct bitmap_bits *bits, uint64_t k)
{
  return (word_load (bits, k / 64) >> (k % 64)) & 1;
}

/* Call fn for consecutive runs (offset, length, dirty) covering guest
 * bytes [offset, offset+count) clipped to the disk.  Returns 0, or -1 as
 * soon as fn does.
 */
int
bits_runs (const struct bitmap_bits *bits, uint64_t disk_size, uint64_t offset, uint64_t count,
           bits_run_fn fn, void *opaque)
{
  uint64_t end = offset + count > disk_size || offset + count < offset ? disk_size : offset + count;

  /* A copy taken before a resize may cover less than disk_size (read unlocked). */
  end = MIN (end, bits->nr_bits << bits->shift);
  while (offset < end) {
    uint64_t k = offset >> bits->shift;
    bool dirty = bit_get (bits, k);
    uint64_t next = next_change (bits, k + 1, dirty), run_end;

    run_end = MIN (next << bits->shift, end);   /* no overflow: sizes are below 2^62 */
    if (fn (opaque, offset, run_end - offset, dirty) == -1)
      return -1;
    offset = run_end;
  }
  return 0;
}

/* Set in dst every guest range dirty in src (granularities may differ). */
void
bits_merge (struct bitmap_bits *dst, const struct bitmap_bits *src)
{
  uint64_t k = 0;

  while ((k = next_change (src, k, false)) < src->nr_bits) {
    uint64_t e = next_change (src, k, true);
    bits_set (dst, k << src->shift, (e - k) << src->shift);
    k = e;
  }
}

/* Guest bytes covered by set bits (the last bit counts only up to the disk's end). */
uint64_t
bits_dirty_bytes (const struct bitmap_bits *bits, uint64_t disk_size)
{
  uint64_t w, n = 0, bytes;

  for (w = 0; w < bits->nr_words; w++)
    n += __builtin_popcountll (word_load (bits, w));
  bytes = n << bits->shift;
  if (bits->nr_bits && bit_get (bits, bits->nr_bits - 1))
    bytes -= (bits->nr_bits << bits->shift) - disk_size;
  return bytes;
}

/* Serialize bitmap data cluster i into buf (cluster_size bytes, zero
 * padded).  Returns false if it is all zero (the table then says so and no
 * cluster is needed).
 */
bool
bits_cluster (const struct bitmap_bits *bits, uint64_t i, uint64_t cluster_size, uint8_t *buf)
{
  uint64_t bytes = DIV_ROUND_UP (bits->nr_bits, 8);
  uint64_t from = i * cluster_size, to = MIN (bytes, from + cluster_size), pos;
  bool any = false;

  memset (buf, 0, cluster_size);
  for (pos = from; pos < to; pos += 8) {
    uint64_t v = word_load (bits, pos / 8);
    if (v) {
      any = true;
      v = htole64 (v);
      memcpy (buf + (pos - from), &v, MIN (8, to - pos));
    }
  }
  return any;
}

/* Publish the set of live bitmaps for bitmaps_note_write.  The old set is
 * freed: call with io_lock held exclusively, or when no set was published
 * yet (the first write).  Returns 0 / -1.
 */
int
bitmaps_track_publish (struct rb_image *img)
{
  struct bitmap_track *t, *old;
  uint32_t i, n = 0;

  for (i = 0; i < img->nr_bitmaps; i++)
    n += img->bitmaps[i].live;
  t = n ? malloc (sizeof *t + n * sizeof t->bits[0]) : NULL;
  if (n && !t)
    return rb_error (ENOMEM, "out of memory");
  if (t) {
    t->n = 0;
    for (i = 0; i < img->nr_bitmaps; i++)
      if (img->bitmaps[i].live)
        t->bits[t->n++] = img->bitmaps[i].bits;
  }
  old = __atomic_exchange_n (&img->bm_track, t, __ATOMIC_ACQ_REL);
  free (old);
  return 0;
}

void
bitmaps_track_free (struct rb_image *img)
{
  free (img->bm_track);
  img->bm_track = NULL;
}

/* A guest write, zero or trim of [offset, offset+count) happened (or was
 * tried): set the bits of every live bitmap.  Called with io_lock held
 * shared, after the request's first-write preparation (flush.c invariant 8).
 */
void
bitmaps_note_write (struct rb_image *img, uint64_t offset, uint64_t count)
{
  struct bitmap_track *t = __atomic_load_n (&img->bm_track, __ATOMIC_ACQUIRE);
  size_t i;

  if (!t)
    return;
  for (i = 0; i < t->n; i++)
    bits_set (t->bits[i], offset, count);
}
