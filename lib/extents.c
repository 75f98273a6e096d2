/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Where the data and the zeros are, through the backing chain: rb_map (qemu-img map's view) and rb_extents (NBD's).
 *
 * One walker serves both.  For every guest byte it finds the layer that
 * decides what the byte reads as, exactly as QEMU's block status does
 * (block/io.c bdrv_co_block_status, qemu-img.c get_block_status):
 * - a qcow2 layer decides where its L2 entry is data, compressed or zero;
 *   where it is unallocated the byte falls to the backing file, except past
 *   the end of a shorter backing file or below the last image, where it
 *   reads as zero without being present in any layer;
 * - a raw layer decides everywhere: the file's holes (SEEK_HOLE) are zero;
 * - the host file's holes under allocated qcow2 clusters read as zero too.
 *   QEMU asks the host file only when the image looks "metadata
 *   preallocated" (far more clusters referenced than the file has blocks:
 *   qcow2_detect_metadata_preallocation), so that an image written the
 *   usual way is not asked once per cluster; so does this walker.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"
#include "map.h"

/* ---- QEMU's metadata-preallocation heuristic ---- */

/* True if more clusters are referenced than the file holds (by its
 * allocated blocks): the image was made with preallocation=metadata.
 * Decided once per open, under meta_lock.  Returns 1, 0 or -1.
 */
static int
detect_metadata_prealloc (struct rb_image *img)
{
  uint64_t real_clusters, threshold, end_cluster, count = 0, i;
  struct stat st;

  if (img->prealloc_checked)
    return img->metadata_prealloc;
  if (fstat (img->fd, &st) == -1)
    return rb_error_errno (errno, "%s", img->path);
  real_clusters = (uint64_t) st.st_blocks * 512 / img->cluster_size;
  threshold = MAX (real_clusters * 10 / 9, real_clusters + 2);
  end_cluster = DIV_ROUND_UP (img->file_size, img->cluster_size);
  for (i = 0; i < end_cluster && count <= threshold; i++) {
    uint64_t rc;
    if ((i >> img->refblock_bits) < img->reftable_entries &&
        img->reftable[i >> img->refblock_bits] == 0) {
      i |= img->refblock_entries - 1;           /* no refcount block: all free */
      continue;
    }
    if (refcount_get (img, i, &rc) == -1)
      return -1;
    count += rc != 0;
  }
  img->metadata_prealloc = count > threshold;
  img->prealloc_checked = true;
  return img->metadata_prealloc;
}

/* ---- the walker ---- */

/* Report e (host bytes [host_offset, +length) of img's file) split by the
 * file's holes, which read as zero: in a raw layer a hole is not data
 * (QEMU: ZERO), under an allocated qcow2 cluster it stays data (DATA|ZERO).
 */
static int
split_by_host_holes (struct rb_image *img, struct rb_map_entry *e, bool hole_is_data,
                     rb_map_fn fn, void *opaque)
{
  uint64_t host = e->host_offset, end = host + e->length, guest = e->offset;

  while (host < end) {
    off_t d = lseek (img->fd, host, SEEK_DATA), h;
    uint64_t data_end;

    if (d == -1 && errno != ENXIO)
      d = host, h = end;                        /* no SEEK_DATA: all data */
    else {
      if (d == -1 || (uint64_t) d > end)
        d = end;                                /* ENXIO: no data up to EOF and past it */
      h = d < (off_t) end ? lseek (img->fd, d, SEEK_HOLE) : (off_t) end;
      if (h == -1 || (uint64_t) h > end)
        h = end;
    }
    if ((uint64_t) d > host) {
      e->offset = guest;
      e->length = d - host;
      e->host_offset = host;
      e->zero = true;
      e->data = hole_is_data;
      if (fn (opaque, e) == -1)
        return -1;
      guest += d - host;
      host = d;
    }
    data_end = h;
    if (data_end > host) {
      e->offset = guest;
      e->length = data_end - host;
      e->host_offset = host;
      e->zero = false;
      e->data = true;
      if (fn (opaque, e) == -1)
        return -1;
      guest += data_end - host;
      host = data_end;
    }
  }
  return 0;
}

/* A raw layer at depth: data and holes of the file, all present. */
static int
map_raw (struct rb_image *img, unsigned depth, uint64_t count, uint64_t offset,
         rb_map_fn fn, void *opaque)
{
  struct rb_map_entry e = {
    .offset = offset, .length = count, .depth = depth, .present = true,
    .data = true, .has_host_offset = true, .host_offset = offset,
  };

  return split_by_host_holes (img, &e, false, fn, opaque);
}

static int map_layer (struct rb_image *img, unsigned depth, uint64_t count, uint64_t offset,
                      rb_map_fn fn, void *opaque);

/* Guest bytes unallocated in img (at depth; host: their host offset if
 * their cluster is allocated, else 0): from the backing file where it has
 * them, else zero and not present (with the host offset, as QEMU).
 */
static int
map_below (struct rb_image *img, unsigned depth, uint64_t count, uint64_t offset,
           uint64_t host, rb_map_fn fn, void *opaque)
{
  struct rb_image *b = img->backing;
  struct rb_map_entry e = { .depth = depth, .zero = true };
  uint64_t n = 0;

  if (b && offset < b->size) {
    n = MIN (count, b->size - offset);
    if (map_layer (b, depth + 1, n, offset, fn, opaque) == -1)
      return -1;
  }
  if (n == count)
    return 0;
  e.offset = offset + n;
  e.length = count - n;
  e.has_host_offset = host != 0;
  e.host_offset = host ? host + n : 0;
  return fn (opaque, &e);
}

/* Walk [offset, offset+count) of one qcow2 layer (io_lock held shared). */
static int
map_qcow2 (struct rb_image *img, unsigned depth, uint64_t count, uint64_t offset,
           rb_map_fn fn, void *opaque)
{
  int prealloc;

  pthread_mutex_lock (&img->meta_lock);
  prealloc = detect_metadata_prealloc (img);
  pthread_mutex_unlock (&img->meta_lock);
  if (prealloc == -1)
    return -1;

  while (count > 0) {
    struct rb_map_entry e = { .offset = offset, .depth = depth, .present = true };
    struct run r;
    int ret = 0;

    if (map_run_locked (img, offset, count, &r) == -1)
      return -1;
    e.length = r.length;
    switch (r.kind) {
    case RUN_DATA:
      e.data = true;
      e.has_host_offset = true;
      e.host_offset = r.host_offset;
      ret = prealloc ? split_by_host_holes (img, &e, true, fn, opaque) : fn (opaque, &e);
      break;
    case RUN_COMPRESSED:
      e.data = e.compressed = true;
      ret = fn (opaque, &e);
      break;
    case RUN_ZERO:
      e.zero = true;
      e.has_host_offset = r.host_offset != 0;
      e.host_offset = r.host_offset;
      ret = fn (opaque, &e);
      break;
    case RUN_UNALLOC:
      ret = map_below (img, depth, r.length, offset, r.host_offset, fn, opaque);
      break;
    }
    if (ret == -1)
      return -1;
    offset += r.length;
    count -= r.length;
  }
  return 0;
}

/* Walk one layer (and, where it is unallocated, the layers below). */
static int
map_layer (struct rb_image *img, unsigned depth, uint64_t count, uint64_t offset,
           rb_map_fn fn, void *opaque)
{
  int r;

  if (img->is_raw)
    return map_raw (img, depth, count, offset, fn, opaque);
  if (depth > 0)
    pthread_rwlock_rdlock (&img->io_lock);
  r = map_qcow2 (img, depth, count, offset, fn, opaque);
  if (depth > 0)
    pthread_rwlock_unlock (&img->io_lock);
  return r;
}

/* Walk the top image with its io_lock held (shared). */
static int
map_top (struct rb_image *img, uint64_t count, uint64_t offset, rb_map_fn fn, void *opaque)
{
  int r;

  if (check_range (img, count, offset) == -1)
    return -1;
  if (img->is_raw)
    return map_raw (img, 0, count, offset, fn, opaque);
  pthread_rwlock_rdlock (&img->io_lock);
  r = map_qcow2 (img, 0, count, offset, fn, opaque);
  pthread_rwlock_unlock (&img->io_lock);
  return r;
}

int
rb_map (struct rb_image *img, uint64_t count, uint64_t offset, rb_map_fn fn, void *opaque)
{
  return map_top (img, count, offset, fn, opaque);
}

/* ---- rb_extents: NBD base:allocation, merged ---- */

struct merge {
  rb_extent_fn fn;
  void *opaque;
  uint64_t offset, length;
  uint32_t type;
};

static int
merge_emit (struct merge *m)
{
  int r = 0;

  if (m->length > 0)
    r = m->fn (m->opaque, m->offset, m->length, m->type);
  m->length = 0;
  return r;
}

/* rb_map_fn: as QEMU's NBD server, HOLE where not data, ZERO where zero. */
static int
merge_add (void *opaque, const struct rb_map_entry *e)
{
  struct merge *m = opaque;
  uint32_t type = (e->data ? 0 : RB_EXTENT_HOLE) | (e->zero ? RB_EXTENT_ZERO : 0);

  if (m->length > 0 && m->type == type && m->offset + m->length == e->offset) {
    m->length += e->length;
    return 0;
  }
  if (merge_emit (m) == -1)
    return -1;
  m->offset = e->offset;
  m->length = e->length;
  m->type = type;
  return 0;
}

int
rb_extents (struct rb_image *img, uint64_t count, uint64_t offset,
            rb_extent_fn fn, void *opaque)
{
  struct merge m = { .fn = fn, .opaque = opaque };
  int r;

  r = map_top (img, count, offset, merge_add, &m);
  if (r == 0)
    r = merge_emit (&m);
  pthread_mutex_lock (&img->stats_lock);
  img->stats.extents_calls++;
  pthread_mutex_unlock (&img->stats_lock);
  return r;
}
