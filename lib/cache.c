/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Bounded LRU cache of cluster-sized metadata tables (L2 tables, refcount blocks), write-back.
 */
#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct cache_entry {
  uint64_t offset;              /* host offset; valid only if in_use */
  void *data;
  struct cache_entry *hnext;    /* hash chain */
  struct cache_entry *prev, *next; /* LRU list, most recent at head */
  unsigned refs;
  bool in_use;
  bool dirty;
  bool fresh;                   /* never written yet */
};

struct cache {
  struct rb_image *img;
  const char *name;
  size_t nr;
  struct cache_entry *entries;
  struct cache_entry **buckets;
  size_t nr_buckets;
  struct cache_entry lru;       /* sentinel */
  size_t nr_dirty;
};

static size_t
bucket_of (struct cache *c, uint64_t offset)
{
  uint64_t k = offset >> 9;
  k ^= k >> 17;
  k *= 0x9e3779b97f4a7c15ULL;
  return (k >> 20) & (c->nr_buckets - 1);
}

static void
lru_unlink (struct cache_entry *e)
{
  e->prev->next = e->next;
  e->next->prev = e->prev;
}

static void
lru_push_head (struct cache *c, struct cache_entry *e)
{
  e->next = c->lru.next;
  e->prev = &c->lru;
  c->lru.next->prev = e;
  c->lru.next = e;
}

static void
hash_remove (struct cache *c, struct cache_entry *e)
{
  struct cache_entry **pp = &c->buckets[bucket_of (c, e->offset)];

  while (*pp && *pp != e)
    pp = &(*pp)->hnext;
  if (*pp)
    *pp = e->hnext;
  e->hnext = NULL;
}

/* Returns a new cache of nr_entries tables of the image's cluster size, or NULL. */
struct cache *
cache_new (struct rb_image *img, const char *name, size_t nr_entries)
{
  struct cache *c;
  size_t i;

  c = calloc (1, sizeof *c);
  if (!c)
    goto enomem;
  c->img = img;
  c->name = name;
  c->nr = nr_entries;
  c->nr_buckets = 16;
  while (c->nr_buckets < 2 * nr_entries)
    c->nr_buckets <<= 1;
  c->entries = calloc (nr_entries, sizeof *c->entries);
  c->buckets = calloc (c->nr_buckets, sizeof *c->buckets);
  if (!c->entries || !c->buckets)
    goto enomem;
  c->lru.next = c->lru.prev = &c->lru;
  for (i = 0; i < nr_entries; i++)
    lru_push_head (c, &c->entries[i]);
  return c;

 enomem:
  cache_free (c);
  rb_error (ENOMEM, "out of memory allocating the %s cache", name);
  return NULL;
}

void
cache_free (struct cache *c)
{
  size_t i;

  if (!c)
    return;
  if (c->entries)
    for (i = 0; i < c->nr; i++)
      free (c->entries[i].data);
  free (c->entries);
  free (c->buckets);
  free (c);
}

static struct cache_entry *
lookup (struct cache *c, uint64_t offset)
{
  struct cache_entry *e;

  for (e = c->buckets[bucket_of (c, offset)]; e; e = e->hnext)
    if (e->offset == offset)
      return e;
  return NULL;
}

/* Write one entry, honouring the L2-after-refcount dependency (invariants 1
 * and 2 in flush.c); durable: made durable by itself (full_pwrite_durable).
 */
static int
write_entry (struct cache *c, struct cache_entry *e, bool durable)
{
  struct rb_image *img = c->img;

  if (c == img->l2_cache) {
    /* Invariant 1: refcounts of everything this L2 table points at are
     * durable first; invariant 2: so is the guest data.
     */
    if (cache_has_dirty (img->rb_cache) && cache_write_back (img->rb_cache) == -1)
      return -1;
    if (img->data_unsynced) {
      if (file_sync (img->fd, IO_FLUSH) == -1)
        return -1;
      img->data_unsynced = false;
    }
  }
  if (overlap_check (img, e->offset, img->cluster_size,
                     c == img->l2_cache ? OV_L2 : OV_REFBLOCK) == -1)
    return -1;
  if ((durable ? full_pwrite_durable : full_pwrite)
      (img->fd, e->data, img->cluster_size, e->offset,
       c == img->l2_cache ? (e->fresh ? IO_L2_ALLOC : IO_L2_UPDATE) : IO_REFBLOCK_UPDATE) == -1)
    return -1;
  e->fresh = false;
  /* A refcount block must be durable before the next L2 table is written
   * (invariant 1).  An L2 table is needed by nothing the next L2 table write
   * exposes: its L1 entry and the frees it allows wait for flush_metadata's
   * syncs, so it does not force a sync before every following table (a flush
   * of 32 MiB of 512-byte clusters took 1,372 fdatasyncs).
   */
  if (c == img->rb_cache && !durable)
    img->data_unsynced = true;
  if (e->dirty) {
    e->dirty = false;
    c->nr_dirty--;
  }
  return 0;
}

/* Returns the table at host_offset, pinned until cache_put; NULL on error. */
void *
cache_get (struct cache *c, uint64_t host_offset, bool fresh)
{
  struct rb_image *img = c->img;
  struct cache_entry *e;

  e = lookup (c, host_offset);
  if (e) {
    img->stats.cache_hits++;
    if (fresh) {
      memset (e->data, 0, img->cluster_size);
    }
    e->refs++;
    lru_unlink (e);
    lru_push_head (c, e);
    return e->data;
  }
  img->stats.cache_misses++;

  /* Evict the least recently used unpinned entry. */
  for (e = c->lru.prev; e != &c->lru; e = e->prev)
    if (e->refs == 0)
      break;
  if (e == &c->lru) {
    rb_error (ENOMEM, "%s cache exhausted (every entry pinned)", c->name);
    return NULL;
  }
  if (e->in_use) {
    if (e->dirty && write_entry (c, e, false) == -1)
      return NULL;
    hash_remove (c, e);
    e->in_use = false;
  }
  if (!e->data) {
    e->data = aligned_alloc (4096, ROUND_UP (img->cluster_size, 4096));
    if (!e->data) {
      rb_error (ENOMEM, "out of memory in the %s cache", c->name);
      return NULL;
    }
  }
  if (fresh)
    memset (e->data, 0, img->cluster_size);
  else if (full_pread (img->fd, e->data, img->cluster_size, host_offset, IO_META_READ) == -1)
    return NULL;

  e->offset = host_offset;
  e->fresh = fresh;
  e->in_use = true;
  e->dirty = false;
  e->refs = 1;
  e->hnext = c->buckets[bucket_of (c, host_offset)];
  c->buckets[bucket_of (c, host_offset)] = e;
  lru_unlink (e);
  lru_push_head (c, e);
  return e->data;
}

/* Unpin the table at host_offset. */
void
cache_put (struct cache *c, uint64_t host_offset)
{
  struct cache_entry *e = lookup (c, host_offset);

  if (e && e->refs > 0)
    e->refs--;
}

/* Mark the (pinned) table at host_offset dirty. */
void
cache_mark_dirty (struct cache *c, uint64_t host_offset)
{
  struct cache_entry *e = lookup (c, host_offset);

  c->img->meta_gen++;
  if (e && !e->dirty) {
    e->dirty = true;
    c->nr_dirty++;
  }
}

bool
cache_has_dirty (struct cache *c)
{
  return c && c->nr_dirty > 0;
}

/* Write every dirty table, in ascending host offset order.  No sync. */
int
cache_write_back (struct cache *c)
{
  size_t i;

  if (!c)
    return 0;
  for (i = 0; i < c->nr && c->nr_dirty > 0; i++) {
    struct cache_entry *e = &c->entries[i];
    if (e->in_use && e->dirty && write_entry (c, e, false) == -1)
      return -1;
  }
  return 0;
}

/* Write the table at host_offset and make it durable by itself
 * (full_pwrite_durable): no other table is written and no guest data is
 * flushed with it.  For tables nothing else must precede (refcount blocks:
 * invariant 1 orders them first).  A table not in the cache may be on disk but
 * not yet durable: then everything is written back and synced.  0 / -1.
 */
int
cache_write_durable (struct cache *c, uint64_t host_offset)
{
  struct cache_entry *e = lookup (c, host_offset);

  if (!e)
    return cache_write_back (c) == -1 ? -1 : file_sync (c->img->fd, IO_FLUSH);
  return write_entry (c, e, true);
}

bool
cache_contains (struct cache *c, uint64_t host_offset)
{
  return lookup (c, host_offset) != NULL;
}

void
cache_discard (struct cache *c, uint64_t host_offset)
{
  struct cache_entry *e = lookup (c, host_offset);

  if (!e || e->refs > 0)
    return;
  if (e->dirty) {
    e->dirty = false;
    c->nr_dirty--;
  }
  hash_remove (c, e);
  e->in_use = false;
  lru_unlink (e);
  /* Move to the tail so it is reused first. */
  e->prev = c->lru.prev;
  e->next = &c->lru;
  c->lru.prev->next = e;
  c->lru.prev = e;
}
