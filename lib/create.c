/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Creates an empty qcow2 image: header (with extensions), refcount table and blocks, L1 table.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

static const struct { uint8_t group, bit; const char *name; } feature_table[] = {
  { 0, 0, "dirty bit" }, { 0, 1, "corrupt bit" }, { 0, 2, "external data file" },
  { 0, 3, "compression type" }, { 0, 4, "extended L2 entries" },
  { 1, 0, "lazy refcounts" }, { 2, 0, "bitmaps" }, { 2, 1, "raw external data" },
};

/* Append one header extension at *off in hdr (cluster-sized); returns 0 / -1. */
static int
put_ext (uint8_t *hdr, uint64_t cs, uint64_t *off, uint32_t type, const void *data, uint32_t len)
{
  if (*off + 8 + ROUND_UP ((uint64_t) len, 8) + 8 > cs)
    return rb_error (EINVAL, "header extensions do not fit in one cluster");
  put_be32 (hdr + *off, type);
  put_be32 (hdr + *off + 4, len);
  memcpy (hdr + *off + 8, data, len);
  *off += 8 + ROUND_UP ((uint64_t) len, 8);
  return 0;
}

/* Validate opts and fill defaults into *o.  Returns 0 / -1 (EINVAL). */
static int
check_opts (const struct rb_create_opts *in, struct rb_create_opts *o)
{
  *o = *in;
  if (!o->cluster_size) o->cluster_size = 65536;
  if (!o->version) o->version = 3;
  if (!o->refcount_bits) o->refcount_bits = 16;
  if (o->cluster_size < 512 || o->cluster_size > (2U << 20) ||
      (o->cluster_size & (o->cluster_size - 1)))
    return rb_error (EINVAL, "cluster size %u must be a power of two from 512 to 2M", o->cluster_size);
  if (o->version != 2 && o->version != 3)
    return rb_error (EINVAL, "version %u must be 2 (compat 0.10) or 3 (compat 1.1)", o->version);
  if (o->refcount_bits > 64 || (o->refcount_bits & (o->refcount_bits - 1)))
    return rb_error (EINVAL, "refcount bits %u must be a power of two from 1 to 64", o->refcount_bits);
  if (o->version == 2 && (o->refcount_bits != 16 || o->compression_type || o->extended_l2))
    return rb_error (EINVAL, "compat 0.10 supports only 16 refcount bits, zlib and no extended L2");
  if (o->extended_l2 && o->cluster_size < 16384)
    return rb_error (EINVAL, "extended L2 entries need clusters of at least 16K");
  if (o->compression_type > 1)
    return rb_error (EINVAL, "unknown compression type %u", o->compression_type);
  if (o->backing_file && strlen (o->backing_file) > QCOW_MAX_BACKING_NAME)
    return rb_error (EINVAL, "backing file name longer than %d bytes", QCOW_MAX_BACKING_NAME);
  if (o->size > (1ULL << 61))
    return rb_error (EINVAL, "virtual size too large");
  return 0;
}

int
rb_create (const char *path, const struct rb_create_opts *opts, bool overwrite)
{
  struct rb_create_opts o;
  uint64_t cs, l2_entries, l1_size, l1_clusters, rt_clusters = 1, rb_clusters = 1, total, entries;
  uint64_t off, i, c;
  unsigned order = 0;
  CLEANUP_FREE uint8_t *buf = NULL;
  int fd;

  if (check_opts (opts, &o) == -1)
    return -1;
  cs = o.cluster_size;
  while ((1U << order) < o.refcount_bits)
    order++;
  l2_entries = cs / (o.extended_l2 ? 16 : 8);
  l1_size = DIV_ROUND_UP (o.size, cs * l2_entries);
  if (l1_size * 8 > QCOW_MAX_L1_BYTES)
    return rb_error (EINVAL, "virtual size too large for this cluster size");
  l1_clusters = MAX (DIV_ROUND_UP (l1_size * 8, cs), 1);
  entries = cs * 8 / o.refcount_bits;           /* refcounts per block */
  for (;;) {
    total = 1 + rt_clusters + rb_clusters + l1_clusters;
    if (rb_clusters * entries >= total && rt_clusters * cs / 8 >= rb_clusters)
      break;
    if (rb_clusters * entries < total) rb_clusters++;
    else rt_clusters++;
  }

  buf = calloc (total, cs);
  if (!buf)
    return rb_error (ENOMEM, "out of memory");
  /* Header (cluster 0). */
  put_be32 (buf + HDR_MAGIC, QCOW_MAGIC);
  put_be32 (buf + HDR_VERSION, o.version);
  put_be32 (buf + HDR_CLUSTER_BITS, __builtin_ctzll (cs));
  put_be64 (buf + HDR_SIZE, o.size);
  put_be32 (buf + HDR_L1_SIZE, l1_size);
  put_be64 (buf + HDR_L1_TABLE_OFFSET, (1 + rt_clusters + rb_clusters) * cs);
  put_be64 (buf + HDR_REFCOUNT_TABLE_OFFSET, cs);
  put_be32 (buf + HDR_REFCOUNT_TABLE_CLUSTERS, rt_clusters);
  off = QCOW_V2_HEADER_LENGTH;
  if (o.version == 3) {
    uint64_t incompat = (o.compression_type ? QCOW_INCOMPAT_COMPRESSION : 0) |
      (o.extended_l2 ? QCOW_INCOMPAT_EXTL2 : 0);
    uint8_t ft[sizeof feature_table / sizeof feature_table[0] * 48];
    put_be64 (buf + HDR_INCOMPATIBLE_FEATURES, incompat);
    put_be32 (buf + HDR_REFCOUNT_ORDER, order);
    put_be32 (buf + HDR_HEADER_LENGTH, 112);
    buf[HDR_COMPRESSION_TYPE] = o.compression_type;
    off = 112;
    if (o.backing_format &&
        put_ext (buf, cs, &off, QCOW_EXT_BACKING_FORMAT, o.backing_format, strlen (o.backing_format)) == -1)
      return -1;
    memset (ft, 0, sizeof ft);
    for (i = 0; i < sizeof feature_table / sizeof feature_table[0]; i++) {
      ft[i * 48] = feature_table[i].group;
      ft[i * 48 + 1] = feature_table[i].bit;
      memcpy (ft + i * 48 + 2, feature_table[i].name, strlen (feature_table[i].name));
    }
    /* The feature table is informative; skip it when clusters are tiny. */
    if (off + 8 + sizeof ft + 8 + (o.backing_file ? strlen (o.backing_file) : 0) <= cs &&
        put_ext (buf, cs, &off, QCOW_EXT_FEATURE_TABLE, ft, sizeof ft) == -1)
      return -1;
  }
  else if (o.backing_format &&
           put_ext (buf, cs, &off, QCOW_EXT_BACKING_FORMAT, o.backing_format,
                    strlen (o.backing_format)) == -1)
    return -1;
  off += 8;                                     /* end-of-extensions marker (zeros) */
  if (o.backing_file) {
    size_t len = strlen (o.backing_file);
    if (off + len > cs)
      return rb_error (EINVAL, "backing file name does not fit in the header cluster");
    put_be64 (buf + HDR_BACKING_FILE_OFFSET, off);
    put_be32 (buf + HDR_BACKING_FILE_SIZE, len);
    memcpy (buf + off, o.backing_file, len);
  }
  /* Refcount table and blocks: every cluster of the file counted once. */
  for (i = 0; i < rb_clusters; i++)
    put_be64 (buf + cs + i * 8, (1 + rt_clusters + i) * cs);
  for (c = 0; c < total; c++) {
    uint8_t *b = buf + (1 + rt_clusters + c / entries) * cs;
    uint64_t e = c % entries;
    switch (order) {
    case 0: b[e / 8] |= 1 << (e % 8); break;
    case 1: b[e / 4] |= 1 << (2 * (e % 4)); break;
    case 2: b[e / 2] |= 1 << (4 * (e % 2)); break;
    case 3: b[e] = 1; break;
    case 4: put_be16 (b + 2 * e, 1); break;
    case 5: put_be32 (b + 4 * e, 1); break;
    default: put_be64 (b + 8 * e, 1); break;
    }
  }

  fd = open (path, O_WRONLY | O_CREAT | O_CLOEXEC | (overwrite ? O_TRUNC : O_EXCL), 0644);
  if (fd == -1)
    return rb_error_errno (errno, "%s", path);
  if (full_pwrite (fd, buf, total * cs, 0, IO_CREATE) == -1 || file_sync (fd, IO_FLUSH) == -1) {
    int e = errno;
    close (fd);
    unlink (path);
    errno = e;
    return -1;
  }
  if (close (fd) == -1)
    return rb_error_errno (errno, "close %s", path);
  return 0;
}
