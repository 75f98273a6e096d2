/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Guest writes: in-place overwrites, allocation, copy-on-write, subclusters.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"
#include "map.h"

#define ALL_ALLOC_BITS 0x00000000ffffffffULL

void
count_stat (struct rb_image *img, uint64_t *ops, uint64_t *bytes, uint64_t n)
{
  pthread_mutex_lock (&img->stats_lock);
  (*ops)++;
  *bytes += n;
  pthread_mutex_unlock (&img->stats_lock);
}

/* Refuse writes to read-only or corrupt images. */
int
writable (struct rb_image *img)
{
  if (rb_is_readonly (img))
    return rb_error (EROFS, "%s: image is read-only", img->path);
  if (__atomic_load_n (&img->corrupt, __ATOMIC_ACQUIRE))
    return rb_error (EIO, "%s: image is marked corrupt; no more writes", img->path);
  return 0;
}

/* Give back nr clusters at host that were allocated for a write that failed
 * before anything pointed at them: no pointer exists, so the refcount can
 * drop at once (a full disk then leaves no leak).  Best effort.
 */
void
release_unused (struct rb_image *img, uint64_t host, uint64_t nr)
{
  struct saved_error e;
  uint64_t i;

  error_save (&e);
  for (i = 0; i < nr; i++)
    if (refcount_update (img, (host >> img->cluster_bits) + i, -1) == -1)
      break;
  error_restore (&e);           /* report the original failure */
}

int64_t
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
  if (l1_set_entry (img, l1_index, (uint64_t) n | QCOW_OFLAG_COPIED) == -1) {
    cache_put (img->l2_cache, n);
    return -1;
  }
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

/* How each byte range of the target cluster is made by write_cluster_slow. */
enum seg_kind {
  SEG_GUEST,                    /* the request's bytes (zeros for a zero request) */
  SEG_OLD,                      /* what the guest sees there now: copy-on-write */
  SEG_ZERO,                     /* must read as zeros: the file system provides them */
};
struct seg {
  uint64_t from, to;            /* cluster-relative */
  enum seg_kind kind;
};
#define MAX_SEGS (3 * 32 + 2)

static void
seg_add (struct seg *segs, unsigned *n, uint64_t from, uint64_t to, enum seg_kind kind)
{
  if (from >= to)
    return;
  if (*n > 0 && segs[*n - 1].kind == kind && segs[*n - 1].to == from) {
    segs[*n - 1].to = to;
    return;
  }
  segs[*n].from = from;
  segs[*n].to = to;
  segs[*n].kind = kind;
  (*n)++;
}

/* What a mapping unit (a subcluster, or the whole cluster) holds now. */
enum unit_state { U_DATA, U_ZERO, U_UNALLOC };

static int
unit_state (struct rb_image *img, uint64_t entry, uint64_t bitmap, const struct l2_info *info,
            bool by_subcluster, unsigned sc, enum unit_state *st)
{
  enum sc_state s;

  if (by_subcluster) {
    if (l2_subcluster_state (img, entry, bitmap, sc, &s) == -1)
      return -1;
    *st = s == SC_DATA ? U_DATA : s == SC_ZERO ? U_ZERO : U_UNALLOC;
    return 0;
  }
  *st = info->kind == L2_DATA || info->kind == L2_COMPRESSED ? U_DATA
    : info->kind == L2_UNALLOC ? U_UNALLOC : U_ZERO;
  return 0;
}

/* Host bytes [off, off+len) must read as zeros; fresh: they already do
 * (never written, past the old end of the file).  Only for bytes no other
 * writer can reach: a cluster not yet visible, or a unit the guest sees as
 * zero or unallocated.
 */
static int
zero_host (struct rb_image *img, uint64_t off, uint64_t len, bool fresh)
{
  if (fresh || len == 0)
    return 0;
  img->data_unsynced = true;
  return file_zero_range (img->fd, off, len, IO_DATA_ZERO);
}

/* Write len bytes at guest_offset, all inside one cluster, allocating or
 * copying as needed; data NULL writes zeros.  Called with meta_lock held,
 * which it holds across the data write, so no other request maps the
 * cluster while it changes.
 *
 * Concurrent in-place writers (write_locked's fast path) write owned DATA
 * units outside meta_lock.  So this function never rewrites a byte of an
 * owned DATA unit that the request does not cover: there it writes exactly
 * the request's bytes, and it reads-modifies-writes only units that are not
 * DATA (unallocated or zero: nobody writes them in place) or clusters that
 * are not yet visible (newly allocated).  See the lock rules in internal.h.
 *
 * Only the guest's bytes and real copy-on-write data are written: zeros
 * come from the file system (a cluster past the old end of the file already
 * reads as zeros, a reused one gets fallocate), as QEMU does.
 */
int
write_cluster_slow (struct rb_image *img, uint64_t guest_offset, uint64_t len, const void *data)
{
  const uint64_t cs = img->cluster_size;
  uint64_t gc = guest_offset >> img->cluster_bits;
  uint64_t cstart = gc << img->cluster_bits;
  uint64_t l1_index = gc >> img->l2_bits, idx = gc & (img->l2_entries - 1);
  uint64_t in = guest_offset - cstart, end = in + len;
  uint64_t entry, bitmap = 0, new_bitmap = 0, host, unit, u, got, touched_bits = 0;
  bool by_sc, in_place, fresh = false, wrote = false, has_backing = img->backing != NULL;
  struct seg segs[MAX_SEGS];
  unsigned nseg = 0, i;
  struct l2_info info;
  int64_t toff, n;
  uint8_t *table, *ep, *buf;

  if (!img->cow_buf && !(img->cow_buf = aligned_alloc (4096, ROUND_UP (cs, 4096))))
    return rb_error (ENOMEM, "out of memory");
  buf = img->cow_buf;           /* one per image: meta_lock is held */

  toff = l2_table_for_write (img, l1_index, &table);
  if (toff == -1)
    return -1;
  ep = table + idx * img->l2_entry_size;
  entry = get_be64 (ep);
  if (img->extended_l2)
    bitmap = get_be64 (ep + 8);
  if (l2_decode (img, entry, &info) == -1)
    goto err;

  by_sc = img->extended_l2 && info.kind != L2_COMPRESSED;
  unit = by_sc ? img->subcluster_size : cs;
  in_place = (info.kind == L2_DATA || info.kind == L2_ZERO_ALLOC) && info.copied;

  /* What each byte of the target cluster gets. */
  for (u = 0; u < cs; u += unit) {
    uint64_t uend = u + unit, a = MAX (u, in), b = MIN (uend, end);
    enum unit_state st;
    enum seg_kind rest;

    if (unit_state (img, entry, bitmap, &info, by_sc, u / unit, &st) == -1)
      goto err;
    if (a >= b) {
      /* Untouched: a new cluster takes over the old one's data units. */
      if (!in_place && st == U_DATA)
        seg_add (segs, &nseg, u, uend, SEG_OLD);
      continue;
    }
    touched_bits |= 1ULL << (u / img->subcluster_size);
    if (in_place && st == U_DATA) {
      /* Live data: exactly the request's bytes, zeros written as bytes. */
      seg_add (segs, &nseg, a, b, SEG_GUEST);
      continue;
    }
    rest = st == U_DATA || (st == U_UNALLOC && has_backing) ? SEG_OLD : SEG_ZERO;
    seg_add (segs, &nseg, u, a, rest);
    seg_add (segs, &nseg, a, b, data ? SEG_GUEST : SEG_ZERO);
    seg_add (segs, &nseg, b, uend, rest);
  }

  if (in_place)
    host = info.host_offset;              /* owned: write in place (invariant 5) */
  else {
    n = alloc_clusters_upto (img, 1, &got, &fresh);
    if (n == -1)
      goto err;
    host = n;
  }

  /* The bytes to write, in buf; old data that turns out all zero (a sparse
   * backing file) need not be written either.
   */
  for (i = 0; i < nseg; i++) {
    struct seg *sg = &segs[i];
    if (sg->kind == SEG_OLD) {
      if (fill_old (img, cstart, entry, bitmap, buf, sg->from, sg->to) == -1)
        goto err_release;
      if (is_zero (buf + sg->from, sg->to - sg->from))
        sg->kind = SEG_ZERO;
    }
    else if (sg->kind == SEG_GUEST) {
      if (data)
        memcpy (buf + sg->from, (const uint8_t *) data + (sg->from - in), sg->to - sg->from);
      else
        memset (buf + sg->from, 0, sg->to - sg->from);
    }
  }

  /* Invariant 2: the data (with its copied head and tail, and the zeroing)
   * is written before the L2 entry that exposes it; the cache writes L2
   * tables only after a sync.
   */
  if (overlap_check (img, host, cs, OV_DATA) == -1)
    goto err_release;
  for (i = 0; i < nseg; ) {
    unsigned j = i;
    if (segs[i].kind == SEG_ZERO) {
      if (zero_host (img, host + segs[i].from, segs[i].to - segs[i].from, fresh) == -1)
        goto err_release;
      i++;
      continue;
    }
    while (j + 1 < nseg && segs[j + 1].kind != SEG_ZERO && segs[j + 1].from == segs[j].to)
      j++;
    if (data_pwrite (img, buf + segs[i].from, segs[j].to - segs[i].from,
                     host + segs[i].from) == -1)
      goto err_release;
    img->data_unsynced = true;
    wrote = true;
    i = j + 1;
  }
  /* A new cluster past the old end of the file that got nothing written
   * (all its bytes zeros the file system provides) must still lie inside
   * the file for the L2 entry to be valid.
   */
  if (fresh && !wrote && file_extend (img->fd, host + cs) == -1)
    goto err_release;

  if (img->extended_l2) {
    if (info.kind == L2_COMPRESSED)
      new_bitmap = ALL_ALLOC_BITS;
    else
      new_bitmap = (bitmap & ~(touched_bits << 32)) | touched_bits;
    put_be64 (ep + 8, new_bitmap);
  }
  put_be64 (ep, host | QCOW_OFLAG_COPIED);
  cache_mark_dirty (img->l2_cache, toff);
  cache_put (img->l2_cache, toff);

  /* Invariant 4: the old cluster is released only after the new pointer is durable. */
  if (!in_place) {
    if (info.kind == L2_COMPRESSED)
      return free_compressed_deferred (img, entry);
    if (info.host_offset)
      return free_clusters_deferred (img, info.host_offset, 1);
  }
  return 0;

 err_release:
  if (!in_place)
    release_unused (img, host, 1);
 err:
  cache_put (img->l2_cache, toff);
  return -1;
}

/* Write nr whole clusters at cluster-aligned guest_offset (all under one L2
 * table) into newly allocated clusters, as few runs as the free space
 * allows, one data write per run: the old contents do not matter, so there
 * is nothing to copy.  Under meta_lock.
 */
static int
write_whole_clusters (struct rb_image *img, uint64_t guest_offset, uint64_t nr, const void *data)
{
  uint64_t gc = guest_offset >> img->cluster_bits, i, got;
  uint64_t l1_index = gc >> img->l2_bits, idx = gc & (img->l2_entries - 1);
  const uint8_t *p = data;
  int64_t toff, host;
  uint8_t *table;
  bool fresh;
  int r = 0;

  toff = l2_table_for_write (img, l1_index, &table);
  if (toff == -1)
    return -1;
  while (nr > 0) {
    host = alloc_clusters_upto (img, nr, &got, &fresh);
    if (host == -1)
      goto out_err;
    /* Invariant 2: data first; the cached L2 entries change after. */
    if (overlap_check (img, host, got << img->cluster_bits, OV_DATA) == -1 ||
        data_pwrite (img, p, got << img->cluster_bits, host) == -1) {
      release_unused (img, host, got);
      goto out_err;
    }
    img->data_unsynced = true;
    for (i = 0; i < got; i++) {
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
    p += got << img->cluster_bits;
    idx += got;
    nr -= got;
  }
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
int
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

