/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Guest reads and lookup over the mapping runs of map.c (extents: extents.c).
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "map.h"

/* Read host bytes; what lies past the end of the file reads as zeros (QEMU
 * may leave the last data cluster short).  Returns 0 / -1.
 */
int
data_pread (struct rb_image *img, void *buf, uint64_t count, uint64_t host_offset,
            enum io_event ev)
{
  char *p = buf;
  uint64_t start = host_offset, len = count;

  if (fault_check (ev) == -1)
    return -1;
  while (count > 0) {
    ssize_t r = pread (img->fd, p, count, host_offset);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      return rb_error_errno (errno, "%s: read at host offset %" PRIu64, img->path, host_offset);
    }
    if (r == 0) {
      memset (p, 0, count);
      break;
    }
    p += r;
    count -= r;
    host_offset += r;
  }
  pagecache_evict_read (img, start, len);
  return 0;
}

/* Check that [offset, offset+count) lies inside the virtual disk. */
int
check_range (struct rb_image *img, uint64_t count, uint64_t offset)
{
  uint64_t end;

  if (ADD_OVERFLOW (offset, count, &end) || end > img->size)
    return rb_error (EINVAL, "request at offset %" PRIu64 " length %" PRIu64
                     " is beyond the end of the disk (%" PRIu64 " bytes)",
                     offset, count, img->size);
  return 0;
}

/* Read guest bytes [in_cluster, in_cluster+len) of the compressed cluster
 * described by l2_entry into buf.
 */
int
read_compressed (struct rb_image *img, uint64_t l2_entry, void *buf,
                 uint64_t in_cluster, uint64_t len)
{
  struct l2_info info;
  CLEANUP_FREE uint8_t *in = NULL;
  CLEANUP_FREE uint8_t *out = NULL;

  if (l2_decode (img, l2_entry, &info) == -1)
    return -1;
  in = malloc (info.compressed_size);
  out = malloc (img->cluster_size);
  if (!in || !out)
    return rb_error (ENOMEM, "out of memory");
  if (data_pread (img, in, info.compressed_size, info.host_offset, IO_DATA_READ) == -1 ||
      decompress_cluster (img, in, info.compressed_size, out, img->cluster_size) == -1)
    return -1;
  memcpy (buf, out + in_cluster, len);
  return 0;
}

/* map_run under the metadata lock (the data is then read or reported without it). */
int
map_run_locked (struct rb_image *img, uint64_t offset, uint64_t count, struct run *r)
{
  int ret;

  pthread_mutex_lock (&img->meta_lock);
  ret = map_run (img, offset, count, r);
  pthread_mutex_unlock (&img->meta_lock);
  return ret;
}

/* Read guest bytes with io_lock held (shared) by the caller. */
int
read_locked (struct rb_image *img, void *buf, uint64_t count, uint64_t offset)
{
  char *p = buf;

  while (count > 0) {
    struct run r;
    int ret = 0;

    if (map_run_locked (img, offset, count, &r) == -1)
      return -1;
    switch (r.kind) {
    case RUN_DATA:
      ret = data_pread (img, p, r.length, r.host_offset, IO_DATA_READ);
      break;
    case RUN_ZERO:
      memset (p, 0, r.length);
      break;
    case RUN_UNALLOC:
      ret = backing_read (img, p, r.length, offset);
      break;
    case RUN_COMPRESSED:
      ret = read_compressed (img, r.l2_entry, p, offset & (img->cluster_size - 1), r.length);
      break;
    }
    if (ret == -1)
      return -1;
    p += r.length;
    offset += r.length;
    count -= r.length;
  }
  return 0;
}

int
rb_pread (struct rb_image *img, void *buf, uint64_t count, uint64_t offset)
{
  int ret;

  if (check_range (img, count, offset) == -1)
    return -1;
  if (img->is_raw)
    return data_pread (img, buf, count, offset, IO_DATA_READ);
  pthread_rwlock_rdlock (&img->io_lock);
  ret = read_locked (img, buf, count, offset);
  pthread_rwlock_unlock (&img->io_lock);
  pthread_mutex_lock (&img->stats_lock);
  img->stats.reads++;
  img->stats.read_bytes += count;
  pthread_mutex_unlock (&img->stats_lock);
  return ret;
}

/* ---- lookup ---- */

const char *
rb_cluster_type_name (enum rb_cluster_type t)
{
  switch (t) {
  case RB_CLUSTER_DATA: return "data";
  case RB_CLUSTER_ZERO: return "zero";
  case RB_CLUSTER_COMPRESSED: return "compressed";
  case RB_CLUSTER_BACKING: return "backing";
  default: return "unallocated";
  }
}

/* Depth (1..) of the first image below img that has data at guest_offset, 0 if none. */
static unsigned
backing_data_depth (struct rb_image *img, uint64_t guest_offset)
{
  struct rb_image *b;
  unsigned depth = 1;

  for (b = img->backing; b; b = b->backing, depth++) {
    struct rb_mapping m;
    if (guest_offset >= b->size)
      return 0;
    if (b->is_raw)
      return depth;
    if (rb_lookup (b, guest_offset, &m) == -1)
      return 0;
    if (m.type == RB_CLUSTER_DATA || m.type == RB_CLUSTER_COMPRESSED)
      return depth;
    if (m.type == RB_CLUSTER_ZERO)
      return 0;
  }
  return 0;
}

int
rb_lookup (struct rb_image *img, uint64_t guest_offset, struct rb_mapping *m)
{
  uint64_t entry, bitmap, table, in_cluster;
  struct l2_info info;
  int ret = 0;

  memset (m, 0, sizeof *m);
  if (img->is_raw)
    return rb_error (EINVAL, "lookup: not a qcow2 image");
  if (guest_offset >= img->size)
    return rb_error (EINVAL, "offset %" PRIu64 " is beyond the end of the disk (%" PRIu64 " bytes)",
                     guest_offset, img->size);
  in_cluster = guest_offset & (img->cluster_size - 1);
  m->guest_offset = guest_offset;
  m->guest_cluster = guest_offset >> img->cluster_bits;
  m->l1_index = m->guest_cluster >> img->l2_bits;
  m->l2_index = m->guest_cluster & (img->l2_entries - 1);
  m->subcluster = img->extended_l2 ? (int) (in_cluster / img->subcluster_size) : -1;

  pthread_mutex_lock (&img->meta_lock);
  if (l2_get_entry (img, m->guest_cluster, &entry, &bitmap, &table) == -1 ||
      l2_decode (img, entry, &info) == -1) {
    ret = -1;
    goto out;
  }
  m->l2_table_offset = table;
  m->l2_entry = entry;
  m->l2_bitmap = bitmap;
  switch (info.kind) {
  case L2_COMPRESSED:
    m->type = RB_CLUSTER_COMPRESSED;
    m->host_cluster_offset = info.host_offset;
    m->compressed_size = info.compressed_size;
    break;
  case L2_DATA:
    m->type = RB_CLUSTER_DATA;
    m->host_cluster_offset = info.host_offset;
    m->host_offset = info.host_offset + in_cluster;
    break;
  case L2_ZERO_PLAIN: case L2_ZERO_ALLOC:
    m->type = RB_CLUSTER_ZERO;
    m->host_cluster_offset = info.host_offset;
    break;
  default:
    m->type = RB_CLUSTER_UNALLOCATED;
  }
  if (img->extended_l2 && info.kind != L2_COMPRESSED) {
    enum sc_state st;
    if (l2_subcluster_state (img, entry, bitmap, m->subcluster, &st) == -1) {
      ret = -1;
      goto out;
    }
    m->type = st == SC_DATA ? RB_CLUSTER_DATA : st == SC_ZERO ? RB_CLUSTER_ZERO
      : RB_CLUSTER_UNALLOCATED;
    m->host_offset = st == SC_DATA ? info.host_offset + in_cluster : 0;
  }
  if (m->host_cluster_offset) {
    uint64_t hc = m->host_cluster_offset >> img->cluster_bits;
    m->refcount_table_index = hc >> img->refblock_bits;
    m->refcount_block_index = hc & (img->refblock_entries - 1);
    if (refcount_get (img, hc, &m->refcount) == -1)
      ret = -1;
  }
 out:
  pthread_mutex_unlock (&img->meta_lock);
  if (ret == 0 && m->type == RB_CLUSTER_UNALLOCATED) {
    m->backing_depth = backing_data_depth (img, guest_offset);
    if (m->backing_depth)
      m->type = RB_CLUSTER_BACKING;
  }
  return ret;
}
