/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Guest writes, zero and trim: in-place overwrites, allocation, copy-on-write, subclusters.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"
#include "map.h"

#define ALL_ZERO_BITS 0xffffffff00000000ULL
#define ALL_ALLOC_BITS 0x00000000ffffffffULL

static void
count_stat (struct rb_image *img, uint64_t *ops, uint64_t *bytes, uint64_t n)
{
  pthread_mutex_lock (&img->stats_lock);
  (*ops)++;
  *bytes += n;
  pthread_mutex_unlock (&img->stats_lock);
}

/* Refuse writes to read-only or corrupt images. */
static int
writable (struct rb_image *img)
{
  if (rb_is_readonly (img))
    return rb_error (EROFS, "%s: image is read-only", img->path);
  if (img->corrupt)
    return rb_error (EIO, "%s: image is marked corrupt; no more writes", img->path);
  return 0;
}

/* Give back nr clusters at host that were allocated for a write that failed
 * before anything pointed at them: no pointer exists, so the refcount can
 * drop at once (a full disk then leaves no leak).  Best effort.
 */
static void
release_unused (struct rb_image *img, uint64_t host, uint64_t nr)
{
  int e = errno;
  char msg[512];
  uint64_t i;

  snprintf (msg, sizeof msg, "%s", rb_errmsg ());
  for (i = 0; i < nr; i++)
    if (refcount_update (img, (host >> img->cluster_bits) + i, -1) == -1)
      break;
  rb_error (e, "%s", msg);      /* report the original failure */
}

/* Return the L2 table of l1_index pinned for modification in *table,
 * allocating a new one or copying a shared one (invariant 5).  Returns the
 * table's host offset or -1.
 */
static int64_t
l2_table_for_write (struct rb_image *img, uint64_t l1_index, uint8_t **table)
{
  uint64_t off;
  int64_t n;
  uint8_t *t;

  if (l1_get_l2_offset (img, l1_index, &off) == -1)
    return -1;
  if (off && (img->l1[l1_index] & QCOW_OFLAG_COPIED)) {
    *table = cache_get (img->l2_cache, off, false);
    return *table ? (int64_t) off : -1;
  }
  n = alloc_clusters (img, 1);
  if (n == -1)
    return -1;
  t = cache_get (img->l2_cache, n, true);
  if (!t)
    return -1;                  /* a leak, never a corruption */
  if (off) {
    uint8_t *old = cache_get (img->l2_cache, off, false);
    if (!old) {
      cache_put (img->l2_cache, n);
      cache_discard (img->l2_cache, n);
      return -1;
    }
    memcpy (t, old, img->cluster_size);
    cache_put (img->l2_cache, off);
    if (free_clusters_deferred (img, off, 1) == -1) {
      cache_put (img->l2_cache, n);
      return -1;
    }
  }
  /* Invariant 3: flush.c writes this table (and syncs) before the L1 entry. */
  cache_mark_dirty (img->l2_cache, n);
  img->l1[l1_index] = (uint64_t) n | QCOW_OFLAG_COPIED;
  mark_dirty_l1 (img, l1_index);
  *table = t;
  return n;
}

/* Fill buf[from, to) (cluster-relative) with what the guest sees there now,
 * given the cluster's L2 entry and bitmap.
 */
static int
fill_old (struct rb_image *img, uint64_t cluster_start, uint64_t entry, uint64_t bitmap,
          uint8_t *buf, uint64_t from, uint64_t to)
{
  struct l2_info info;
  uint64_t pos;

  if (from >= to)
    return 0;
  if (l2_decode (img, entry, &info) == -1)
    return -1;
  if (info.kind == L2_COMPRESSED)
    return read_compressed (img, entry, buf + from, from, to - from);
  for (pos = from; pos < to; ) {
    uint64_t end = to;
    enum l2_kind kind = info.kind;

    if (img->extended_l2) {
      enum sc_state st;
      unsigned sc = pos / img->subcluster_size;
      end = MIN (to, (uint64_t) (sc + 1) * img->subcluster_size);
      if (l2_subcluster_state (img, entry, bitmap, sc, &st) == -1)
        return -1;
      kind = st == SC_DATA ? L2_DATA : st == SC_ZERO ? L2_ZERO_PLAIN : L2_UNALLOC;
    }
    switch (kind) {
    case L2_DATA:
      if (data_pread (img, buf + pos, end - pos, info.host_offset + pos, IO_COW_READ) == -1)
        return -1;
      break;
    case L2_UNALLOC:
      if (cluster_start + pos < img->size) {
        uint64_t n = MIN (end - pos, img->size - (cluster_start + pos));
        if (backing_read (img, buf + pos, n, cluster_start + pos) == -1)
          return -1;
        memset (buf + pos + n, 0, end - pos - n);
      }
      else
        memset (buf + pos, 0, end - pos);
      break;
    default:
      memset (buf + pos, 0, end - pos);
    }
    pos = end;
  }
  return 0;
}

/* Write len bytes at guest_offset, all inside one cluster, allocating or
 * copying as needed.  Called with meta_lock held; holds it across the data
 * write so no other request sees the cluster half-made.
 */
static int
write_cluster_slow (struct rb_image *img, uint64_t guest_offset, uint64_t len, const void *data)
{
  const uint64_t cs = img->cluster_size;
  uint64_t gc = guest_offset >> img->cluster_bits;
  uint64_t cstart = gc << img->cluster_bits;
  uint64_t l1_index = gc >> img->l2_bits, idx = gc & (img->l2_entries - 1);
  uint64_t in = guest_offset - cstart;
  uint64_t entry, bitmap = 0, new_entry, new_bitmap = 0, host, wfrom, wto;
  CLEANUP_FREE uint8_t *buf = NULL;
  struct l2_info info;
  int64_t toff, n;
  uint8_t *table, *ep;
  bool fresh = false;

  toff = l2_table_for_write (img, l1_index, &table);
  if (toff == -1)
    return -1;
  ep = table + idx * img->l2_entry_size;
  entry = get_be64 (ep);
  if (img->extended_l2)
    bitmap = get_be64 (ep + 8);
  if (l2_decode (img, entry, &info) == -1)
    goto err;

  buf = malloc (cs);
  if (!buf) {
    rb_error (ENOMEM, "out of memory");
    goto err;
  }

  /* Which cluster-relative bytes will be written: whole subclusters for
   * extended L2, the whole cluster otherwise.
   */
  if (img->extended_l2 && info.kind != L2_COMPRESSED) {
    wfrom = ROUND_DOWN (in, img->subcluster_size);
    wto = ROUND_UP (in + len, img->subcluster_size);
  }
  else {
    wfrom = 0;
    wto = cs;
  }

  if ((info.kind == L2_DATA || info.kind == L2_ZERO_ALLOC) && info.copied) {
    host = info.host_offset;              /* owned: write in place (invariant 5) */
    if (info.kind == L2_DATA && !img->extended_l2) {
      wfrom = in;
      wto = in + len;
    }
    else if (info.kind == L2_ZERO_ALLOC)
      memset (buf, 0, cs);
    else if (fill_old (img, cstart, entry, bitmap, buf, wfrom, in) == -1 ||
             fill_old (img, cstart, entry, bitmap, buf, in + len, wto) == -1)
      goto err;
  }
  else {
    n = alloc_clusters (img, 1);
    if (n == -1)
      goto err;
    host = n;
    fresh = true;
    if (img->extended_l2 && info.kind != L2_COMPRESSED && info.host_offset) {
      /* Shared cluster: the new one keeps every allocated subcluster. */
      wfrom = 0;
      wto = cs;
    }
    if (fill_old (img, cstart, entry, bitmap, buf, wfrom, in) == -1 ||
        fill_old (img, cstart, entry, bitmap, buf, in + len, wto) == -1) {
      release_unused (img, host, 1);
      goto err;
    }
  }
  memcpy (buf + in, data, len);

  /* Invariant 2: the data (with its copied head and tail) is written before
   * the L2 entry that exposes it; the cache writes L2 tables only after a sync.
   */
  if (overlap_check (img, host + wfrom, wto - wfrom, OV_DATA) == -1 ||
      data_pwrite (img, buf + wfrom, wto - wfrom, host + wfrom) == -1) {
    if (fresh)
      release_unused (img, host, 1);
    goto err;
  }
  img->data_unsynced = true;

  new_entry = host | QCOW_OFLAG_COPIED;
  if (img->extended_l2) {
    uint64_t bits = 0;
    unsigned sc;
    if (info.kind == L2_COMPRESSED)
      bits = ALL_ALLOC_BITS;
    else {
      for (sc = wfrom / img->subcluster_size; sc < wto / img->subcluster_size; sc++)
        bits |= 1ULL << sc;
      /* Subclusters copied from a shared cluster keep their state. */
      if (fresh && info.host_offset)
        bits = (bitmap & ALL_ALLOC_BITS) | bits;
    }
    new_bitmap = ((bitmap & ~(bits << 32)) | bits);
    if (info.kind == L2_COMPRESSED)
      new_bitmap = ALL_ALLOC_BITS;
    put_be64 (ep + 8, new_bitmap);
  }
  put_be64 (ep, new_entry);
  cache_mark_dirty (img->l2_cache, toff);
  cache_put (img->l2_cache, toff);

  /* Invariant 4: the old cluster is released only after the new pointer is durable. */
  if (fresh) {
    if (info.kind == L2_COMPRESSED)
      return free_compressed_deferred (img, entry);
    if (info.host_offset)
      return free_clusters_deferred (img, info.host_offset, 1);
  }
  return 0;

 err:
  cache_put (img->l2_cache, toff);
  return -1;
}

/* Write nr whole clusters at cluster-aligned guest_offset (all under one L2
 * table) into newly allocated contiguous clusters with one data write: the
 * old contents do not matter, so there is nothing to copy.  Under meta_lock.
 */
static int
write_whole_clusters (struct rb_image *img, uint64_t guest_offset, uint64_t nr, const void *data)
{
  uint64_t gc = guest_offset >> img->cluster_bits, i;
  uint64_t l1_index = gc >> img->l2_bits, idx = gc & (img->l2_entries - 1);
  int64_t toff, host;
  uint8_t *table;
  int r = 0;

  toff = l2_table_for_write (img, l1_index, &table);
  if (toff == -1)
    return -1;
  host = alloc_clusters (img, nr);
  if (host == -1)
    goto out_err;
  /* Invariant 2: data first; the cached L2 entries change after. */
  if (overlap_check (img, host, nr << img->cluster_bits, OV_DATA) == -1 ||
      data_pwrite (img, data, nr << img->cluster_bits, host) == -1) {
    release_unused (img, host, nr);
    goto out_err;
  }
  img->data_unsynced = true;
  for (i = 0; i < nr; i++) {
    uint8_t *ep = table + (idx + i) * img->l2_entry_size;
    uint64_t old = get_be64 (ep);
    struct l2_info info;

    if (r == 0 && l2_decode (img, old, &info) == 0) {
      /* Invariant 4: the old cluster goes after the new pointer is durable. */
      if (info.kind == L2_COMPRESSED)
        r = free_compressed_deferred (img, old);
      else if (info.host_offset)
        r = free_clusters_deferred (img, info.host_offset, 1);
    }
    put_be64 (ep, ((uint64_t) host + (i << img->cluster_bits)) | QCOW_OFLAG_COPIED);
    if (img->extended_l2)
      put_be64 (ep + 8, ALL_ALLOC_BITS);
  }
  cache_mark_dirty (img->l2_cache, toff);
  cache_put (img->l2_cache, toff);
  return r;

 out_err:
  cache_put (img->l2_cache, toff);
  return -1;
}

/* Guest write of [offset, offset+count). */
static int
write_locked (struct rb_image *img, const void *buf, uint64_t count, uint64_t offset)
{
  const char *p = buf;

  while (count > 0) {
    struct run r;
    uint64_t n;
    int ret;

    pthread_mutex_lock (&img->meta_lock);
    ret = prepare_first_write (img);
    if (ret == 0)
      ret = map_run (img, offset, count, &r);
    if (ret == 0 && r.kind == RUN_DATA && r.copied) {
      /* Owned clusters: overwrite in place outside the metadata lock. */
      ret = overlap_check (img, r.host_offset, r.length, OV_DATA);
      pthread_mutex_unlock (&img->meta_lock);
      if (ret == -1)
        return -1;
      if (data_pwrite (img, p, r.length, r.host_offset) == -1)
        return -1;
      n = r.length;
    }
    else if (ret == 0 && (offset & (img->cluster_size - 1)) == 0 &&
             MIN (count, r.length) >= img->cluster_size) {
      /* Whole clusters needing new space: one allocation, one write. */
      n = ROUND_DOWN (MIN (count, r.length), img->cluster_size);
      ret = write_whole_clusters (img, offset, n >> img->cluster_bits, p);
      pthread_mutex_unlock (&img->meta_lock);
      if (ret == -1)
        return -1;
    }
    else {
      n = MIN (count, img->cluster_size - (offset & (img->cluster_size - 1)));
      if (ret == 0)
        ret = write_cluster_slow (img, offset, n, p);
      pthread_mutex_unlock (&img->meta_lock);
      if (ret == -1)
        return -1;
    }
    p += n;
    offset += n;
    count -= n;
  }
  return 0;
}

/* Make writes durable for FUA (no deferred frees applied). */
static int
fua_flush (struct rb_image *img)
{
  int r;

  pthread_mutex_lock (&img->meta_lock);
  r = flush_metadata (img);
  pthread_mutex_unlock (&img->meta_lock);
  return r;
}

int
rb_pwrite (struct rb_image *img, const void *buf, uint64_t count, uint64_t offset,
           unsigned flags)
{
  int r;

  if (writable (img) == -1 || check_range (img, count, offset) == -1)
    return -1;
  pthread_rwlock_rdlock (&img->io_lock);
  r = write_locked (img, buf, count, offset);
  bitmaps_note_write (img, offset, count);      /* invariant 8 */
  pthread_rwlock_unlock (&img->io_lock);
  if (r == 0 && (flags & RB_FUA))
    r = fua_flush (img);
  count_stat (img, &img->stats.writes, &img->stats.write_bytes, count);
  return r;
}

/* True if the guest range reads as zeros without looking at data: a zero
 * run, or unallocated with nothing below.  Under meta_lock.
 */
static int
reads_as_zero (struct rb_image *img, uint64_t offset, uint64_t count, bool *zero)
{
  struct run r;

  *zero = false;
  while (count > 0) {
    if (map_run (img, offset, count, &r) == -1)
      return -1;
    if (!(r.kind == RUN_ZERO || (r.kind == RUN_UNALLOC && !img->backing)))
      return 0;
    offset += r.length;
    count -= r.length;
  }
  *zero = true;
  return 0;
}

/* Set one whole cluster to zero (zero == true) or discard it (trim),
 * metadata only.  Under meta_lock.
 */
static int
zero_whole_cluster (struct rb_image *img, uint64_t gc, bool may_trim, bool trim)
{
  uint64_t l1_index = gc >> img->l2_bits, idx = gc & (img->l2_entries - 1);
  uint64_t entry, bitmap = 0, new_entry, new_bitmap = 0, l2_off;
  struct l2_info info;
  bool keep, backing = img->backing != NULL;
  uint8_t *table, *ep;
  int64_t toff;
  int r = 0;

  /* Nothing to do where the cluster already reads as zeros and stays so. */
  if (l1_get_l2_offset (img, l1_index, &l2_off) == -1)
    return -1;
  if (l2_off == 0 && !backing)
    return 0;
  if (trim && img->version < 3 && backing)
    return 0;                   /* cannot hide the backing file: trim is advisory */
  if (l2_off) {
    if (l2_get_entry (img, gc, &entry, &bitmap, &l2_off) == -1)
      return -1;
    if (entry == 0 && bitmap == 0 && !backing)
      return 0;
  }

  toff = l2_table_for_write (img, l1_index, &table);
  if (toff == -1)
    return -1;
  ep = table + idx * img->l2_entry_size;
  entry = get_be64 (ep);
  bitmap = img->extended_l2 ? get_be64 (ep + 8) : 0;
  if (l2_decode (img, entry, &info) == -1) {
    cache_put (img->l2_cache, toff);
    return -1;
  }
  /* Keep the allocation (preallocated zero) only where the entry can say
   * "zero" while pointing at a cluster: version 3 or extended L2.
   */
  keep = !may_trim && !trim && info.copied && img->version >= 3 &&
    (info.kind == L2_DATA || info.kind == L2_ZERO_ALLOC);

  if (img->extended_l2) {
    new_entry = keep ? (info.host_offset | QCOW_OFLAG_COPIED) : 0;
    new_bitmap = (backing || !trim) ? ALL_ZERO_BITS : 0;
    if (!backing && trim)
      new_bitmap = 0;
    put_be64 (ep + 8, new_bitmap);
  }
  else if (img->version >= 3 && (backing || !trim))
    new_entry = keep ? (info.host_offset | QCOW_OFLAG_COPIED | QCOW_OFLAG_ZERO) : QCOW_OFLAG_ZERO;
  else
    new_entry = 0;              /* no backing file: unallocated reads as zeros */
  put_be64 (ep, new_entry);
  cache_mark_dirty (img->l2_cache, toff);
  cache_put (img->l2_cache, toff);

  if (!keep) {
    if (info.kind == L2_COMPRESSED)
      r = free_compressed_deferred (img, entry);
    else if (info.host_offset)
      r = free_clusters_deferred (img, info.host_offset, 1);
  }
  return r;
}

/* Zero or trim [offset, offset+count) with io_lock held shared. */
static int
zero_locked (struct rb_image *img, uint64_t count, uint64_t offset, unsigned flags, bool trim)
{
  const uint64_t cs = img->cluster_size;
  CLEANUP_FREE uint8_t *zeros = NULL;

  while (count > 0) {
    uint64_t in = offset & (cs - 1);
    uint64_t n = MIN (count, cs - in);
    bool whole = in == 0 && (n == cs || offset + n == img->size);
    bool metadata_only = img->version >= 3 || !img->backing;
    bool zero;
    int r;

    pthread_mutex_lock (&img->meta_lock);
    r = prepare_first_write (img);
    if (r == 0 && whole && (trim || metadata_only))
      r = zero_whole_cluster (img, offset >> img->cluster_bits,
                              (flags & RB_MAY_TRIM) != 0, trim);
    else if (r == 0 && !trim) {
      r = reads_as_zero (img, offset, n, &zero);
      if (r == 0 && !zero) {
        if (!zeros && !(zeros = calloc (1, cs)))
          r = rb_error (ENOMEM, "out of memory");
        else
          r = write_cluster_slow (img, offset, n, zeros);
      }
    }
    pthread_mutex_unlock (&img->meta_lock);
    if (r == -1)
      return -1;
    offset += n;
    count -= n;
  }
  return 0;
}

int
rb_zero (struct rb_image *img, uint64_t count, uint64_t offset, unsigned flags)
{
  int r;

  if (writable (img) == -1 || check_range (img, count, offset) == -1)
    return -1;
  if ((flags & RB_FAST_ZERO) && img->version < 3 && img->backing)
    return rb_error (ENOTSUP, "fast zero is not possible: version 2 image with a backing file");
  pthread_rwlock_rdlock (&img->io_lock);
  r = zero_locked (img, count, offset, flags, false);
  bitmaps_note_write (img, offset, count);      /* invariant 8 */
  pthread_rwlock_unlock (&img->io_lock);
  if (r == 0 && (flags & RB_FUA))
    r = fua_flush (img);
  count_stat (img, &img->stats.zeros, &img->stats.zero_bytes, count);
  return r;
}

int
rb_trim (struct rb_image *img, uint64_t count, uint64_t offset, unsigned flags)
{
  const uint64_t cs = img->cluster_size;
  uint64_t start, end;
  int r = 0;

  if (writable (img) == -1 || check_range (img, count, offset) == -1)
    return -1;
  /* Whole clusters only; partial ones are left as they are. */
  start = ROUND_UP (offset, cs);
  end = offset + count == img->size ? img->size : ROUND_DOWN (offset + count, cs);
  pthread_rwlock_rdlock (&img->io_lock);
  if (end > start)
    r = zero_locked (img, end - start, start, RB_MAY_TRIM, true);
  bitmaps_note_write (img, offset, count);      /* invariant 8: the whole range, as QEMU */
  pthread_rwlock_unlock (&img->io_lock);
  if (r == 0 && (flags & RB_FUA))
    r = fua_flush (img);
  count_stat (img, &img->stats.trims, &img->stats.trim_bytes, count);
  return r;
}

/* Flush: write back metadata in dependency order, then release the
 * clusters freed since, once their pointers are durable (invariant 4).
 */
int
rb_flush (struct rb_image *img)
{
  int r = 0;
  bool frees;

  if (rb_is_readonly (img))
    return 0;
  pthread_rwlock_rdlock (&img->io_lock);
  pthread_mutex_lock (&img->meta_lock);
  r = flush_metadata (img);
  frees = img->nr_frees > 0;
  pthread_mutex_unlock (&img->meta_lock);
  pthread_rwlock_unlock (&img->io_lock);
  if (r == 0 && frees) {
    pthread_rwlock_wrlock (&img->io_lock);
    pthread_mutex_lock (&img->meta_lock);
    r = flush_metadata (img);
    if (r == 0)
      r = apply_deferred_frees (img);
    pthread_mutex_unlock (&img->meta_lock);
    pthread_rwlock_unlock (&img->io_lock);
  }
  pthread_mutex_lock (&img->stats_lock);
  img->stats.flushes++;
  pthread_mutex_unlock (&img->stats_lock);
  return r;
}
