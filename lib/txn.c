/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Metadata transactions: refcount changes, a new L1 and snapshot table, all made live by one header write.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Snapshot create/apply/delete and resize change many refcounts together
 * with the QCOW_OFLAG_COPIED flags of the active tables, and qemu-img check
 * counts any disagreement between the two as corruption.  No order of
 * in-place writes avoids that state, so nothing live is changed in place:
 *
 * - the new active L1, copies of every L2 table whose entries change and the
 *   new snapshot table go to clusters allocated now (leaks until the switch);
 * - refcount changes are kept as deltas; at commit the refcount blocks they
 *   touch are copied with the deltas applied into new clusters, and a copy of
 *   the refcount table points at them (invariants 1 and 3);
 * - one 48-byte write of header bytes 24..71 (size, L1, refcount table and
 *   snapshot table fields, all in the first sector) switches from the old
 *   structure to the new one.  Before it the image is the old one plus
 *   leaks, after it the new one; clusters whose count drops to 0 are free at
 *   that instant, so pointer and refcount change together (invariant 4);
 * - what the old structure alone used (old L1, old refcount table and
 *   blocks, old snapshot table) is freed after the switch: a crash leaks it.
 */

#define SWITCH_OFFSET HDR_SIZE          /* 24: size .. snapshots_offset */
#define SWITCH_LENGTH (HDR_SNAPSHOTS_OFFSET + 8 - HDR_SIZE)

struct span {
  uint64_t host_offset;
  uint64_t nr;
};

struct txn {
  struct rb_image *img;
  int32_t **deltas;         /* per refcount table index: one delta per entry, or NULL */
  uint64_t nr_deltas;       /* length of deltas[] */
  struct span *allocs;      /* allocated here: released by txn_abort */
  size_t nr_allocs, allocs_cap;
  struct span *garbage;     /* freed after the switch */
  size_t nr_garbage, garbage_cap;
};

/* Append a span to a growable array.  Returns 0 / -1. */
static int
span_add (struct span **v, size_t *n, size_t *cap, uint64_t host_offset, uint64_t nr)
{
  if (*n == *cap) {
    size_t c = *cap ? *cap * 2 : 16;
    struct span *p = realloc (*v, c * sizeof *p);
    if (!p)
      return rb_error (ENOMEM, "out of memory");
    *v = p;
    *cap = c;
  }
  (*v)[*n].host_offset = host_offset;
  (*v)[*n].nr = nr;
  (*n)++;
  return 0;
}

static void
txn_free (struct txn *t)
{
  uint64_t i;

  for (i = 0; i < t->nr_deltas; i++)
    free (t->deltas[i]);
  free (t->deltas);
  free (t->allocs);
  free (t->garbage);
  free (t);
}

/* Write back what is dirty, then drop the refcounts of the queued frees
 * (their pointers are durable now, invariant 4) and write those too.  With
 * io_lock held exclusively and meta_lock held.  Returns 0 / -1.
 */
int
flush_and_free (struct rb_image *img)
{
  if (flush_metadata (img) == -1)
    return -1;
  return release_deferred_frees (img);
}

/* Start a transaction on img: io_lock held exclusively and meta_lock held
 * by the caller.  Everything pending is written and freed first, so the
 * cached metadata equals the file.  Returns the transaction or NULL.
 */
struct txn *
txn_begin (struct rb_image *img)
{
  struct txn *t;

  if (prepare_first_write (img) == -1 || flush_and_free (img) == -1)
    return NULL;
  t = calloc (1, sizeof *t);
  if (!t) {
    rb_error (ENOMEM, "out of memory");
    return NULL;
  }
  t->img = img;
  return t;
}

/* The image a transaction changes. */
struct rb_image *
txn_image (struct txn *t)
{
  return t->img;
}

/* The delta array of refcount table index rt, created (zeroed) if create.
 * NULL without create when untouched, or on error.
 */
static int32_t *
deltas_of (struct txn *t, uint64_t rt, bool create)
{
  struct rb_image *img = t->img;

  if (rt < t->nr_deltas && t->deltas[rt])
    return t->deltas[rt];
  if (!create)
    return NULL;
  if (rt >= img->reftable_entries || (img->reftable[rt] & REFT_OFFSET_MASK) == 0) {
    mark_corrupt (img, "host cluster %" PRIu64 " is referenced but no refcount block covers it",
                  rt << img->refblock_bits);
    return NULL;
  }
  if (rt >= t->nr_deltas) {
    uint64_t n = MAX (rt + 1, t->nr_deltas * 2);
    int32_t **d = realloc (t->deltas, n * sizeof *d);
    if (!d) {
      rb_error (ENOMEM, "out of memory");
      return NULL;
    }
    memset (d + t->nr_deltas, 0, (n - t->nr_deltas) * sizeof *d);
    t->deltas = d;
    t->nr_deltas = n;
  }
  t->deltas[rt] = calloc (img->refblock_entries, sizeof (int32_t));
  if (!t->deltas[rt])
    rb_error (ENOMEM, "out of memory for the refcount changes");
  return t->deltas[rt];
}

/* Add delta to the refcount host cluster cluster_index will have after the
 * commit.  Returns 0 / -1.
 */
int
txn_ref (struct txn *t, uint64_t cluster_index, int64_t delta)
{
  struct rb_image *img = t->img;
  int32_t *d = deltas_of (t, cluster_index >> img->refblock_bits, true);
  int32_t *e;

  if (!d)
    return -1;
  e = &d[cluster_index & (img->refblock_entries - 1)];
  if ((delta > 0 && *e > INT32_MAX - delta) || (delta < 0 && *e < INT32_MIN - delta))
    return rb_error (EFBIG, "too many references to host cluster %" PRIu64, cluster_index);
  *e += delta;
  return 0;
}

/* Add delta to the refcount of every host cluster the L2 entry refers to:
 * its data cluster (also a preallocated zero cluster) or every cluster the
 * compressed data touches (counted as qemu-img check does).  Returns 0 / -1.
 */
int
txn_ref_entry (struct txn *t, uint64_t l2_entry, int64_t delta)
{
  struct rb_image *img = t->img;
  struct l2_info info;
  uint64_t c, last;

  if (l2_decode (img, l2_entry, &info) == -1)
    return -1;
  if (info.kind == L2_COMPRESSED) {
    uint64_t nb = ((l2_entry >> img->csize_shift) & img->csize_mask) + 1;
    last = (info.host_offset + nb * 512 - (info.host_offset & 511) - 1) >> img->cluster_bits;
  }
  else if (info.host_offset)
    last = info.host_offset >> img->cluster_bits;
  else
    return 0;
  for (c = info.host_offset >> img->cluster_bits; c <= last; c++)
    if (txn_ref (t, c, delta) == -1)
      return -1;
  return 0;
}

/* The refcount host cluster cluster_index will have after the commit. */
int
txn_refcount (struct txn *t, uint64_t cluster_index, uint64_t *rc)
{
  struct rb_image *img = t->img;
  int32_t *d = deltas_of (t, cluster_index >> img->refblock_bits, false);

  if (refcount_get (img, cluster_index, rc) == -1)
    return -1;
  if (d)
    *rc += d[cluster_index & (img->refblock_entries - 1)];
  return 0;
}

/* Allocate nr contiguous clusters for new metadata (refcount 1, as they
 * keep after the commit).  Returns the host offset or -1.
 */
int64_t
txn_alloc (struct txn *t, uint64_t nr)
{
  int64_t off = alloc_clusters (t->img, nr);

  if (off == -1)
    return -1;
  if (span_add (&t->allocs, &t->nr_allocs, &t->allocs_cap, off, nr) == -1) {
    release_unused (t->img, off, nr);
    return -1;
  }
  return off;
}

/* Write new metadata (len bytes) into clusters from txn_alloc. */
int
txn_write (struct txn *t, const void *buf, uint64_t len, uint64_t host_offset,
           enum io_event ev)
{
  if (overlap_check (t->img, host_offset, len, OV_DATA) == -1 ||
      full_pwrite (t->img->fd, buf, len, host_offset, ev) == -1)
    return -1;
  t->img->data_unsynced = true;
  return 0;
}

/* Free nr clusters at host_offset after the switch (something only the old
 * structure uses).  Returns 0 / -1.
 */
int
txn_garbage (struct txn *t, uint64_t host_offset, uint64_t nr)
{
  if (nr == 0)
    return 0;
  return span_add (&t->garbage, &t->nr_garbage, &t->garbage_cap, host_offset, nr);
}

/* Give back what the transaction allocated (nothing points at it) and end
 * it.  Keeps the error that made the caller abort.
 */
void
txn_abort (struct txn *t)
{
  struct rb_image *img = t->img;
  struct saved_error saved;
  size_t i;

  error_save (&saved);
  for (i = 0; i < t->nr_allocs; i++)
    release_unused (img, t->allocs[i].host_offset, t->allocs[i].nr);
  flush_metadata (img);
  txn_free (t);
  error_restore (&saved);
}

/* Build the refcount block for table index rt: the current one with the
 * deltas added, into buf.  Returns 0 / -1 (a count out of range).
 */
static int
build_block (struct txn *t, uint64_t rt, uint8_t *buf)
{
  struct rb_image *img = t->img;
  uint64_t off = img->reftable[rt] & REFT_OFFSET_MASK, i, max = refcount_max (img);
  const int32_t *d = t->deltas[rt];
  uint8_t *b = cache_get (img->rb_cache, off, false);

  if (!b)
    return -1;
  memcpy (buf, b, img->cluster_size);
  cache_put (img->rb_cache, off);
  for (i = 0; i < img->refblock_entries; i++) {
    uint64_t v;
    if (d[i] == 0)
      continue;
    v = block_get (img, buf, i);
    if (d[i] < 0 && v < (uint64_t) -(int64_t) d[i])
      return mark_corrupt (img, "refcount of host cluster %" PRIu64 " would drop below zero",
                           (rt << img->refblock_bits) + i);
    if (d[i] > 0 && max - v < (uint64_t) d[i])
      return rb_error (EFBIG, "refcount of host cluster %" PRIu64 " would overflow %u bits",
                       (rt << img->refblock_bits) + i, img->refcount_bits);
    block_set (img, buf, i, v + d[i]);
  }
  return 0;
}

/* Allocate the new refcount blocks and the new refcount table, sized for
 * the table as it is after those allocations.  Sets *blocks_off (0 if no
 * block changes) and *table_off, *table_clusters.  Returns 0 / -1.
 */
static int
alloc_refcount_copies (struct txn *t, uint64_t nr_blocks, uint64_t *blocks_off,
                       uint64_t *table_off, uint32_t *table_clusters)
{
  struct rb_image *img = t->img;
  int64_t off;
  unsigned tries;

  *blocks_off = 0;
  if (nr_blocks == 0)
    return 0;
  if ((off = txn_alloc (t, nr_blocks)) == -1)
    return -1;
  *blocks_off = off;
  /* Allocating the table may grow the live one; then size it again. */
  for (tries = 0; tries < 8; tries++) {
    uint32_t n = img->refcount_table_clusters;
    if ((off = txn_alloc (t, n)) == -1)
      return -1;
    if (n == img->refcount_table_clusters) {
      *table_off = off;
      *table_clusters = n;
      return 0;
    }
  }
  return rb_error (EIO, "%s: the refcount table keeps growing", img->path);
}

/* Write header bytes 24..71 (size, crypt_method, L1, refcount table and
 * snapshot table fields): the switch.
 */
static int
write_switch (struct rb_image *img, const struct txn_state *s, uint64_t rt_off, uint32_t rt_clusters)
{
  uint8_t b[SWITCH_LENGTH];

  put_be64 (b + HDR_SIZE - SWITCH_OFFSET, s->size);
  put_be32 (b + HDR_CRYPT_METHOD - SWITCH_OFFSET, img->crypt_method);
  put_be32 (b + HDR_L1_SIZE - SWITCH_OFFSET, s->l1_size);
  put_be64 (b + HDR_L1_TABLE_OFFSET - SWITCH_OFFSET, s->l1_table_offset);
  put_be64 (b + HDR_REFCOUNT_TABLE_OFFSET - SWITCH_OFFSET, rt_off);
  put_be32 (b + HDR_REFCOUNT_TABLE_CLUSTERS - SWITCH_OFFSET, rt_clusters);
  put_be32 (b + HDR_NB_SNAPSHOTS - SWITCH_OFFSET, s->nb_snapshots);
  put_be64 (b + HDR_SNAPSHOTS_OFFSET - SWITCH_OFFSET, s->snapshots_offset);
  return full_pwrite (img->fd, b, sizeof b, SWITCH_OFFSET, IO_HEADER_UPDATE);
}

/* Make the in-memory image the new state (ownership of s->l1 and
 * s->snapshots passes to it).
 */
static int
switch_memory (struct txn *t, struct txn_state *s, uint8_t *dirty, uint64_t *new_reftable,
               uint64_t rt_off, uint32_t rt_clusters)
{
  struct rb_image *img = t->img;
  uint64_t i, j;

  img->size = s->size;
  free (img->l1);
  free (img->l1_dirty);
  img->l1 = s->l1;
  img->l1_dirty = dirty;
  img->l1_any_dirty = false;
  img->l1_size = s->l1_size;
  img->l1_table_offset = s->l1_table_offset;
  s->l1 = NULL;
  if (overlap_l2_rebuild (img) == -1)
    return -1;
  if (s->snapshots != img->snapshots) {
    snapshots_free (img->snapshots, img->nb_snapshots);
    img->snapshots = s->snapshots;
  }
  s->snapshots = NULL;
  img->nb_snapshots = s->nb_snapshots;
  img->snapshots_offset = s->snapshots_offset;
  img->snapshots_size = s->snapshots_size;
  if (new_reftable) {
    /* Old blocks are garbage now; the cache must not serve them. */
    for (i = 0; i < t->nr_deltas; i++)
      if (t->deltas[i])
        cache_discard (img->rb_cache, img->reftable[i] & REFT_OFFSET_MASK);
    free (img->reftable);
    img->reftable = new_reftable;
    img->reftable_entries = (uint64_t) rt_clusters * img->cluster_size / 8;
    img->refcount_table_offset = rt_off;
    img->refcount_table_clusters = rt_clusters;
  }
  /* Clusters freed by the switch: drop cached tables, restart the search. */
  for (i = 0; i < t->nr_deltas; i++) {
    if (!t->deltas[i])
      continue;
    for (j = 0; j < img->refblock_entries; j++) {
      uint64_t c = (i << img->refblock_bits) + j, rc;
      if (t->deltas[i][j] >= 0)
        continue;
      if (refcount_get (img, c, &rc) == -1)
        return -1;
      if (rc == 0) {
        cache_discard (img->l2_cache, c << img->cluster_bits);
        img->free_hint = MIN (img->free_hint, c);
      }
    }
  }
  return refblocks_rebuild (img);
}

/* Commit: write the new refcount blocks and table, sync, switch the header,
 * sync, adopt the new state in memory, free the garbage.  Always ends the
 * transaction.  *switched tells whether the new state is in effect (then
 * s->l1 and s->snapshots belong to the image); an error after the switch
 * leaves leaks at worst.  Returns 0 / -1.
 */
int
txn_commit (struct txn *t, struct txn_state *s, bool *switched)
{
  struct rb_image *img = t->img;
  const uint64_t cs = img->cluster_size;
  uint64_t nr_blocks = 0, blocks_off, table_off = img->refcount_table_offset, rt, n, i;
  uint32_t table_clusters = img->refcount_table_clusters;
  CLEANUP_FREE uint8_t *buf = NULL;
  uint64_t *table = NULL;
  uint8_t *dirty = NULL;
  uint64_t old_rt_off = img->refcount_table_offset;
  uint32_t old_rt_clusters = img->refcount_table_clusters;
  int r;

  *switched = false;
  for (rt = 0; rt < t->nr_deltas; rt++)
    nr_blocks += t->deltas[rt] != NULL;
  if (alloc_refcount_copies (t, nr_blocks, &blocks_off, &table_off, &table_clusters) == -1 ||
      flush_metadata (img) == -1)
    goto abort;

  if (nr_blocks) {
    uint64_t entries = (uint64_t) table_clusters * cs / 8;
    buf = malloc (cs);
    table = calloc (entries, 8);
    if (!buf || !table) {
      rb_error (ENOMEM, "out of memory");
      goto abort;
    }
    memcpy (table, img->reftable, MIN (entries, img->reftable_entries) * 8);
    for (rt = 0, n = 0; rt < t->nr_deltas; rt++) {
      if (!t->deltas[rt])
        continue;
      table[rt] = blocks_off + n * cs;
      if (build_block (t, rt, buf) == -1 ||
          txn_write (t, buf, cs, table[rt], IO_REFBLOCK_ALLOC) == -1)
        goto abort;
      n++;
    }
    free (buf);
    buf = calloc (table_clusters, cs);
    if (!buf) {
      rb_error (ENOMEM, "out of memory");
      goto abort;
    }
    for (i = 0; i < entries; i++)
      put_be64 (buf + i * 8, table[i]);
    if (txn_write (t, buf, (uint64_t) table_clusters * cs, table_off, IO_REFTABLE_GROW) == -1)
      goto abort;
  }
  dirty = calloc (DIV_ROUND_UP ((uint64_t) s->l1_size, 64) + 1, 1);
  if (!dirty) {
    rb_error (ENOMEM, "out of memory");
    goto abort;
  }
  /* Invariants 1 and 3: everything the new header points at is durable first. */
  if (file_sync (img->fd, IO_FLUSH) == -1 ||
      write_switch (img, s, table_off, table_clusters) == -1)
    goto abort;

  /* The header is written: from here on the new structure is the image. */
  *switched = true;
  r = file_sync (img->fd, IO_FLUSH);
  img->data_unsynced = false;
  if (nr_blocks) {
    uint64_t rt_old;
    for (rt_old = 0; rt_old < t->nr_deltas; rt_old++)
      if (t->deltas[rt_old] && r == 0)
        r = txn_garbage (t, img->reftable[rt_old] & REFT_OFFSET_MASK, 1);
    if (r == 0)
      r = txn_garbage (t, old_rt_off, old_rt_clusters);
  }
  if (switch_memory (t, s, dirty, nr_blocks ? table : NULL, table_off, table_clusters) == -1)
    r = -1;
  if (nr_blocks)
    table = NULL;
  for (i = 0; r == 0 && i < t->nr_garbage; i++)
    r = free_clusters_deferred (img, t->garbage[i].host_offset, t->garbage[i].nr);
  if (r == 0)
    r = flush_and_free (img);
  free (table);
  txn_free (t);
  return r;

 abort:
  free (table);
  free (dirty);
  txn_abort (t);
  return -1;
}

