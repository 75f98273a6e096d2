/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Writes whole qcow2 images in one sequential pass: layout up front, data, then metadata.
 *
 * Layout: [header][refcount table][refcount blocks][L1][data ...][L2 tables].
 * The refcount blocks are sized for an upper bound of the final file given by
 * the caller; the L2 tables go after the data, so no space is reserved for
 * them.  The header is written last, then the file is synced.
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

struct rb_writer {
  char *path;
  int fd;
  struct rb_create_opts o;
  bool compress;
  uint64_t cs;
  unsigned cluster_bits, refcount_order;
  uint64_t l2_entries, entry_size, l1_size, rb_entries;
  uint64_t rt_off, rt_clusters, rb_off, rb_clusters, l1_off, l1_clusters;
  uint64_t next;            /* next free host byte in the data area */
  uint64_t *refcount;       /* per host cluster */
  uint64_t nr_refcount;
  uint8_t **l2;             /* per L1 entry, NULL if unused */
  uint8_t *cbuf;            /* compression output */
  uint64_t last_gc;         /* for order checking */
  bool any;
  bool no_sync;             /* skip the syncs (the caller accepts the risk) */
  uint64_t kicked;          /* data up to here has had its writeback started */
  bool no_reserve;          /* do not reserve a run's space before writing it: no gain on this
                               file system (rb_reserve_pays) or it has no fallocate */
};

/* Start writing back what was stored since the last kick, every few MiB, so
 * that the final sync waits for little (the writer's data is written once and
 * never again: nothing is gained by keeping it dirty).  A hint only.
 */
#define WRITEBACK_KICK (8u << 20)
static void kick_writeback (struct rb_writer *w);

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
  if (o->lazy_refcounts && o->version == 2)
    return rb_error (EINVAL, "lazy refcounts need compat 1.1");
  if (o->preallocation > RB_PREALLOC_FULL)
    return rb_error (EINVAL, "unknown preallocation mode %u", o->preallocation);
  if (o->preallocation && o->backing_file && !o->extended_l2)
    return rb_error (EINVAL, "a backing file and preallocation go together only with "
                     "extended L2 entries (as QEMU: else the backing file would be hidden)");
  if (o->backing_file && strlen (o->backing_file) > QCOW_MAX_BACKING_NAME)
    return rb_error (EINVAL, "backing file name longer than %d bytes", QCOW_MAX_BACKING_NAME);
  if (o->size > (1ULL << 61))
    return rb_error (EINVAL, "virtual size too large");
  return 0;
}

/* Append one header extension at *off in hdr (cluster-sized). */
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

/* Build the header cluster for w in buf (cs bytes, zeroed). */
static int
build_header (struct rb_writer *w, uint8_t *buf)
{
  const struct rb_create_opts *o = &w->o;
  uint64_t off = QCOW_V2_HEADER_LENGTH, i;

  put_be32 (buf + HDR_MAGIC, QCOW_MAGIC);
  put_be32 (buf + HDR_VERSION, o->version);
  put_be32 (buf + HDR_CLUSTER_BITS, w->cluster_bits);
  put_be64 (buf + HDR_SIZE, o->size);
  put_be32 (buf + HDR_L1_SIZE, w->l1_size);
  put_be64 (buf + HDR_L1_TABLE_OFFSET, w->l1_size ? w->l1_off : 0);   /* none: 0, as QEMU */
  put_be64 (buf + HDR_REFCOUNT_TABLE_OFFSET, w->rt_off);
  put_be32 (buf + HDR_REFCOUNT_TABLE_CLUSTERS, w->rt_clusters);
  if (o->version == 3) {
    uint8_t ft[sizeof feature_table / sizeof feature_table[0] * 48];
    put_be64 (buf + HDR_INCOMPATIBLE_FEATURES,
              (o->compression_type ? QCOW_INCOMPAT_COMPRESSION : 0) |
              (o->extended_l2 ? QCOW_INCOMPAT_EXTL2 : 0));
    put_be64 (buf + HDR_COMPATIBLE_FEATURES, o->lazy_refcounts ? QCOW_COMPAT_LAZY_REFCOUNTS : 0);
    put_be32 (buf + HDR_REFCOUNT_ORDER, w->refcount_order);
    put_be32 (buf + HDR_HEADER_LENGTH, 112);
    buf[HDR_COMPRESSION_TYPE] = o->compression_type;
    off = 112;
    if (o->backing_format &&
        put_ext (buf, w->cs, &off, QCOW_EXT_BACKING_FORMAT, o->backing_format,
                 strlen (o->backing_format)) == -1)
      return -1;
    memset (ft, 0, sizeof ft);
    for (i = 0; i < sizeof feature_table / sizeof feature_table[0]; i++) {
      ft[i * 48] = feature_table[i].group;
      ft[i * 48 + 1] = feature_table[i].bit;
      memcpy (ft + i * 48 + 2, feature_table[i].name, strlen (feature_table[i].name));
    }
    /* The feature table is informative; left out, as QEMU 7 does, with
     * clusters of 4 KiB or less (room for the backing name).
     */
    if (w->cs > 4096 &&
        off + 8 + sizeof ft + 8 + (o->backing_file ? strlen (o->backing_file) : 0) <= w->cs &&
        put_ext (buf, w->cs, &off, QCOW_EXT_FEATURE_TABLE, ft, sizeof ft) == -1)
      return -1;
  }
  else if (o->backing_format &&
           put_ext (buf, w->cs, &off, QCOW_EXT_BACKING_FORMAT, o->backing_format,
                    strlen (o->backing_format)) == -1)
    return -1;
  off += 8;                                     /* end-of-extensions marker */
  if (o->backing_file) {
    size_t len = strlen (o->backing_file);
    if (off + len > w->cs)
      return rb_error (EINVAL, "backing file name does not fit in the header cluster");
    put_be64 (buf + HDR_BACKING_FILE_OFFSET, off);
    put_be32 (buf + HDR_BACKING_FILE_SIZE, len);
    memcpy (buf + off, o->backing_file, len);
  }
  return 0;
}

/* Count one more reference to host cluster c. */
static int
ref_cluster (struct rb_writer *w, uint64_t c)
{
  if (c >= w->nr_refcount) {
    uint64_t n = MAX (c + 1, w->nr_refcount * 2);
    uint64_t *r = realloc (w->refcount, n * sizeof *r);
    if (!r)
      return rb_error (ENOMEM, "out of memory");
    memset (r + w->nr_refcount, 0, (n - w->nr_refcount) * sizeof *r);
    w->refcount = r;
    w->nr_refcount = n;
  }
  w->refcount[c]++;
  return 0;
}

void
rb_writer_abort (struct rb_writer *w)
{
  uint64_t i;

  if (!w)
    return;
  if (w->fd >= 0) {
    close (w->fd);
    unlink (w->path);
  }
  if (w->l2)
    for (i = 0; i < w->l1_size; i++)
      free (w->l2[i]);
  free (w->l2);
  free ((char *) w->o.backing_file);
  free ((char *) w->o.backing_format);
  free (w->refcount);
  free (w->cbuf);
  free (w->path);
  free (w);
}

/* Lay out w (options checked) for at most max_data_clusters clusters of
 * data: [header][refcount table][refcount blocks][L1][data ...][L2 tables],
 * the refcount blocks sized for an upper bound of the final file.  0 / -1.
 */
static int
layout (struct rb_writer *w, uint64_t max_data_clusters)
{
  uint64_t total, l2_bound;

  w->cs = w->o.cluster_size;
  w->cluster_bits = __builtin_ctzll (w->cs);
  while ((1U << w->refcount_order) < w->o.refcount_bits)
    w->refcount_order++;
  w->entry_size = w->o.extended_l2 ? 16 : 8;
  w->l2_entries = w->cs / w->entry_size;
  w->l1_size = DIV_ROUND_UP (w->o.size, w->cs * w->l2_entries);
  if (w->l1_size * 8 > QCOW_MAX_L1_BYTES)
    return rb_error (EINVAL, "virtual size too large for %" PRIu64 "-byte clusters", w->cs);
  w->l1_clusters = DIV_ROUND_UP (w->l1_size * 8, w->cs);    /* 0 for an empty disk, as QEMU */
  w->rb_entries = w->cs * 8 / w->o.refcount_bits;
  w->rt_clusters = w->rb_clusters = 1;
  /* L2 tables: at most one per L1 entry, none without data (rb_create):
   * then the layout is QEMU's, L1 right after one refcount block.
   */
  l2_bound = max_data_clusters ? w->l1_size : 0;
  for (;;) {
    /* Upper bound of the final file: metadata, data, the L2 tables. */
    total = 1 + w->rt_clusters + w->rb_clusters + w->l1_clusters + max_data_clusters + l2_bound + 1;
    if (w->rb_clusters * w->rb_entries >= total && w->rt_clusters * w->cs / 8 >= w->rb_clusters)
      break;
    if (w->rb_clusters * w->rb_entries < total)
      w->rb_clusters = DIV_ROUND_UP (total, w->rb_entries);
    else
      w->rt_clusters++;
  }
  if (w->rt_clusters * w->cs > MAX (QCOW_MAX_REFTABLE_BYTES, w->cs))
    return rb_error (EFBIG, "image too large for %" PRIu64 "-byte clusters", w->cs);
  w->rt_off = w->cs;
  w->rb_off = w->rt_off + w->rt_clusters * w->cs;
  w->l1_off = w->rb_off + w->rb_clusters * w->cs;
  w->next = w->l1_off + w->l1_clusters * w->cs;
  return 0;
}

/* Create path (O_EXCL unless overwrite) for an image that will hold at most
 * max_data_clusters clusters of data.  Returns the writer or NULL.
 */
static struct rb_writer *
writer_new (const char *path, const struct rb_create_opts *opts, bool overwrite,
            uint64_t max_data_clusters, bool compress)
{
  struct rb_writer *w = calloc (1, sizeof *w);

  if (!w) {
    rb_error (ENOMEM, "out of memory");
    return NULL;
  }
  w->fd = -1;
  if (check_opts (opts, &w->o) == -1) {
    w->o.backing_file = w->o.backing_format = NULL;
    goto err;
  }
  w->o.backing_file = w->o.backing_format = NULL;     /* copied below */
  w->path = strdup (path);
  if (layout (w, max_data_clusters) == -1)
    goto err;
  w->l2 = calloc (MAX (w->l1_size, 1), sizeof *w->l2);
  w->compress = compress;
  if (compress)
    w->cbuf = malloc (w->cs);
  if (!w->path || !w->l2 || (compress && !w->cbuf) ||
      (opts->backing_file && !(w->o.backing_file = strdup (opts->backing_file))) ||
      (opts->backing_format && !(w->o.backing_format = strdup (opts->backing_format)))) {
    rb_error (ENOMEM, "out of memory");
    goto err;
  }
  w->fd = open (path, O_WRONLY | O_CREAT | O_CLOEXEC | (overwrite ? O_TRUNC : O_EXCL), 0644);
  if (w->fd == -1) {
    rb_error_errno (errno, "%s", path);
    goto err;
  }
  w->no_reserve = !rb_reserve_pays (w->fd);
  return w;

 err:
  rb_writer_abort (w);
  return NULL;
}

struct rb_writer *
rb_writer_new (const char *path, const struct rb_create_opts *opts, bool overwrite,
               uint64_t max_data_clusters, bool compress)
{
  if (opts->preallocation) {
    rb_error (EINVAL, "writer: preallocation is rb_create's");
    return NULL;
  }
  return writer_new (path, opts, overwrite, max_data_clusters, compress);
}

int
rb_writer_measure (const struct rb_create_opts *opts, uint64_t max_data_clusters,
                   uint64_t nr_data, uint64_t nr_l2, uint64_t *file_size)
{
  struct rb_writer w;

  memset (&w, 0, sizeof w);
  if (check_opts (opts, &w.o) == -1 || layout (&w, max_data_clusters) == -1)
    return -1;
  if (nr_data > max_data_clusters || nr_l2 > w.l1_size)
    return rb_error (EINVAL, "writer: %" PRIu64 " data clusters and %" PRIu64 " L2 tables "
                     "do not fit the layout", nr_data, nr_l2);
  /* As rb_writer_finish: the data, then the L2 tables, after the L1 table. */
  *file_size = w.next + (nr_data + nr_l2) * w.cs;
  return 0;
}

static uint8_t *l2_slot (struct rb_writer *w, uint64_t gc);
static int run_check (struct rb_writer *w, uint64_t gc, uint64_t nr);
static int run_map (struct rb_writer *w, uint64_t gc, uint64_t nr, uint64_t host);

/* Store nr consecutive guest clusters of data from gc on with one write
 * (no compression, no extended L2: the common case of a conversion).
 */
int
rb_writer_put_run (struct rb_writer *w, uint64_t gc, const void *data, uint64_t nr)
{
  uint64_t host, i;

  if (w->compress || w->o.extended_l2 || nr == 1) {
    for (i = 0; i < nr; i++)
      if (rb_writer_put (w, gc + i, (const uint8_t *) data + i * w->cs, 1, 0) == -1)
        return -1;
    return 0;
  }
  if (run_check (w, gc, nr) == -1)
    return -1;
  host = ROUND_UP (w->next, w->cs);
  rb_reserve (w->fd, host, nr * w->cs, &w->no_reserve);
  if (full_pwrite (w->fd, data, nr * w->cs, host, IO_DATA_WRITE) == -1 ||
      run_map (w, gc, nr, host) == -1)
    return -1;
  kick_writeback (w);
  return 0;
}

/* The same with the bytes copied in the kernel from fd (see rblock.h). */
int
rb_writer_copy_run (struct rb_writer *w, uint64_t gc, int fd, uint64_t src_offset, uint64_t len)
{
  uint64_t nr = DIV_ROUND_UP (len, w->cs), host;

  if (w->compress || w->o.extended_l2)
    return rb_error (ENOTSUP, "writer: copies need plain clusters (no compression, no extended L2)");
  if (len == 0 || run_check (w, gc, nr) == -1)
    return len ? -1 : 0;
  host = ROUND_UP (w->next, w->cs);
  /* The rest of a partial last cluster is past the end of the file so far: it reads as zeros. */
  if (full_copy_range (fd, src_offset, w->fd, host, len, IO_DATA_WRITE) == -1 ||
      run_map (w, gc, nr, host) == -1)
    return -1;
  kick_writeback (w);
  return 0;
}

/* rb_writer_copy_run's bookkeeping alone (see rblock.h): the host clusters
 * chosen and mapped, the copy left to the caller (rb_writer_copy_at).
 */
int
rb_writer_map_run (struct rb_writer *w, uint64_t gc, uint64_t len, uint64_t *host)
{
  uint64_t nr = DIV_ROUND_UP (len, w->cs);

  if (w->compress || w->o.extended_l2)
    return rb_error (ENOTSUP, "writer: copies need plain clusters (no compression, no extended L2)");
  if (len == 0)
    return rb_error (EINVAL, "writer: an empty run");
  if (run_check (w, gc, nr) == -1)
    return -1;
  *host = ROUND_UP (w->next, w->cs);
  if (run_map (w, gc, nr, *host) == -1)
    return -1;
  /* Not kicked: its data is not there yet; rb_writer_copy_at kicks it. */
  w->kicked = w->next;
  return 0;
}

/* The copy of a run mapped by rb_writer_map_run: reads only w's fd and
 * no_sync, which do not change until rb_writer_finish, so it may run in
 * any thread alongside the writer's other calls.
 */
int
rb_writer_copy_at (struct rb_writer *w, uint64_t host, int fd, uint64_t src_offset, uint64_t len)
{
  if (full_copy_range (fd, src_offset, w->fd, host, len, IO_DATA_WRITE) == -1)
    return -1;
  if (!w->no_sync)
    sync_file_range (w->fd, host, len, SYNC_FILE_RANGE_WRITE);
  return 0;
}

/* 0 if clusters [gc, gc+nr) may be stored next, else -1 (EINVAL). */
static int
run_check (struct rb_writer *w, uint64_t gc, uint64_t nr)
{
  if (gc + nr > DIV_ROUND_UP (w->o.size, w->cs) || (w->any && gc <= w->last_gc))
    return rb_error (EINVAL, "writer: clusters %" PRIu64 "+%" PRIu64 " out of order or range", gc, nr);
  return 0;
}

/* Point clusters [gc, gc+nr) at the host clusters from host on, whose data is written. */
static int
run_map (struct rb_writer *w, uint64_t gc, uint64_t nr, uint64_t host)
{
  uint64_t i;

  for (i = 0; i < nr; i++) {
    uint8_t *e = l2_slot (w, gc + i);
    if (!e || ref_cluster (w, host / w->cs + i) == -1)
      return -1;
    put_be64 (e, (host + i * w->cs) | QCOW_OFLAG_COPIED);
  }
  w->any = true;
  w->last_gc = gc + nr - 1;
  w->next = host + nr * w->cs;
  return 0;
}

/* The L2 entry slot of guest cluster gc (allocating the table). */
static uint8_t *
l2_slot (struct rb_writer *w, uint64_t gc)
{
  uint64_t l1 = gc / w->l2_entries;

  if (!w->l2[l1] && !(w->l2[l1] = calloc (1, w->cs))) {
    rb_error (ENOMEM, "out of memory");
    return NULL;
  }
  return w->l2[l1] + (gc % w->l2_entries) * w->entry_size;
}

/* One guest cluster (see rb_writer_put).  Without extended L2:
 * alloc_mask 1 stores data (cs bytes, compressed when asked and smaller),
 * zero_mask 1 makes a zero cluster (version 3).  With extended L2 the masks
 * are per subcluster and only allocated subclusters of data are written.
 */
static int
put_one (struct rb_writer *w, uint64_t gc, const void *data, uint32_t alloc_mask, uint32_t zero_mask)
{
  uint8_t *e;
  uint64_t host, c;

  if (gc >= DIV_ROUND_UP (w->o.size, w->cs) || (w->any && gc <= w->last_gc))
    return rb_error (EINVAL, "writer: cluster %" PRIu64 " out of order or range", gc);
  w->any = true;
  w->last_gc = gc;
  if (!alloc_mask && !zero_mask)
    return 0;
  if (zero_mask && w->o.version < 3)
    return rb_error (EINVAL, "writer: zero clusters need compat 1.1");
  e = l2_slot (w, gc);
  if (!e)
    return -1;

  if (!w->o.extended_l2 && !alloc_mask) {
    put_be64 (e, QCOW_OFLAG_ZERO);
    return 0;
  }
  if (w->compress && !w->o.extended_l2) {
    ssize_t n = compress_buffer (w->o.compression_type, data, w->cs, w->cbuf, w->cs - 1);
    if (n == -1)
      return -1;
    if (n > 0 && (uint64_t) n < w->cs - 512) {
      uint64_t nb_sectors = DIV_ROUND_UP ((w->next & 511) + n, 512);
      unsigned shift = 62 - (w->cluster_bits - 8);
      if (full_pwrite (w->fd, w->cbuf, n, w->next, IO_DATA_WRITE) == -1)
        return -1;
      put_be64 (e, QCOW_OFLAG_COMPRESSED | w->next | ((nb_sectors - 1) << shift));
      for (c = w->next / w->cs; c <= (w->next + n - 1) / w->cs; c++)
        if (ref_cluster (w, c) == -1)
          return -1;
      w->next += n;
      return 0;
    }
  }
  /* A normal cluster: aligned after any compressed bytes. */
  host = ROUND_UP (w->next, w->cs);
  if (!w->o.extended_l2) {
    if (full_pwrite (w->fd, data, w->cs, host, IO_DATA_WRITE) == -1)
      return -1;
    put_be64 (e, host | QCOW_OFLAG_COPIED);
  }
  else {
    uint64_t scs = w->cs / QCOW_SUBCLUSTERS;
    unsigned sc = 0;
    while (sc < QCOW_SUBCLUSTERS) {      /* runs of allocated subclusters */
      unsigned end = sc;
      if (!(alloc_mask >> sc & 1)) {
        sc++;
        continue;
      }
      while (end < QCOW_SUBCLUSTERS && (alloc_mask >> end & 1))
        end++;
      if (full_pwrite (w->fd, (const uint8_t *) data + sc * scs, (end - sc) * scs,
                       host + sc * scs, IO_DATA_WRITE) == -1)
        return -1;
      sc = end;
    }
    put_be64 (e, alloc_mask ? (host | QCOW_OFLAG_COPIED) : 0);
    put_be64 (e + 8, ((uint64_t) (zero_mask & ~alloc_mask) << 32) | alloc_mask);
    if (!alloc_mask)
      return 0;
  }
  if (ref_cluster (w, host / w->cs) == -1)
    return -1;
  w->next = host + w->cs;
  return 0;
}

/* Start the writeback of the data stored since the last kick (see WRITEBACK_KICK). */
static void
kick_writeback (struct rb_writer *w)
{
  if (w->no_sync || w->next < w->kicked + WRITEBACK_KICK)
    return;
  sync_file_range (w->fd, w->kicked, w->next - w->kicked, SYNC_FILE_RANGE_WRITE);
  w->kicked = w->next;
}

int
rb_writer_put (struct rb_writer *w, uint64_t gc, const void *data,
               uint32_t alloc_mask, uint32_t zero_mask)
{
  if (put_one (w, gc, data, alloc_mask, zero_mask) == -1)
    return -1;
  kick_writeback (w);
  return 0;
}

/* Write the L2 tables, L1, refcounts and the header; sync and close.
 * Returns 0, or -1 (the file is removed).
 */
int
rb_writer_finish (struct rb_writer *w)
{
  uint64_t i, c, end, nb_clusters, needed_rb, shift;
  CLEANUP_FREE uint8_t *buf = NULL;
  CLEANUP_FREE uint8_t *meta = NULL;
  int r = -1;

  end = ROUND_UP (w->next, w->cs);
  /* L2 tables after the data. */
  meta = calloc (MAX (w->l1_clusters, 1), w->cs);
  buf = calloc (1, w->cs);
  if (!meta || !buf) {
    rb_error (ENOMEM, "out of memory");
    goto out;
  }
  for (i = 0; i < w->l1_size; i++) {
    if (!w->l2[i])
      continue;
    if (full_pwrite (w->fd, w->l2[i], w->cs, end, IO_L2_ALLOC) == -1 ||
        ref_cluster (w, end / w->cs) == -1)
      goto out;
    put_be64 (meta + i * 8, end | QCOW_OFLAG_COPIED);
    end += w->cs;
  }
  /* Only the entries (the rest of the clusters stay holes, reading as zeros). */
  if (w->l1_size &&
      full_pwrite (w->fd, meta, MIN (ROUND_UP (w->l1_size * 8, 4096), w->l1_clusters * w->cs),
                   w->l1_off, IO_L1_UPDATE) == -1)
    goto out;

  /* Refcounts of the fixed metadata; reserved refcount blocks that the
   * final size does not need stay free (and unwritten).
   */
  nb_clusters = MAX (end, w->l1_off + w->l1_clusters * w->cs) / w->cs;
  needed_rb = DIV_ROUND_UP (nb_clusters, w->rb_entries);
  for (c = 0; c < w->l1_off / w->cs + w->l1_clusters; c++) {
    if (c >= w->rb_off / w->cs + needed_rb && c < w->l1_off / w->cs)
      continue;
    if (ref_cluster (w, c) == -1)
      goto out;
  }
  if (needed_rb > w->rb_clusters) {
    rb_error (EIO, "writer: refcount blocks underestimated (%" PRIu64 " > %" PRIu64 ")",
              needed_rb, w->rb_clusters);
    goto out;
  }
  /* Refcount blocks and the table. */
  for (i = 0; i < needed_rb; i++) {
    memset (buf, 0, w->cs);
    for (c = i * w->rb_entries; c < (i + 1) * w->rb_entries && c < w->nr_refcount; c++) {
      uint64_t v = w->refcount[c], k = c - i * w->rb_entries;
      if (!v)
        continue;
      switch (w->refcount_order) {
      case 0: case 1: case 2:
        shift = (k % (8 >> w->refcount_order)) << w->refcount_order;
        buf[k >> (3 - w->refcount_order)] |= v << shift;
        break;
      case 3: buf[k] = v; break;
      case 4: put_be16 (buf + 2 * k, v); break;
      case 5: put_be32 (buf + 4 * k, v); break;
      default: put_be64 (buf + 8 * k, v); break;
      }
    }
    if (full_pwrite (w->fd, buf, w->cs, w->rb_off + i * w->cs, IO_REFBLOCK_ALLOC) == -1)
      goto out;
  }
  {
    CLEANUP_FREE uint8_t *rt = calloc (w->rt_clusters, w->cs);
    if (!rt) {
      rb_error (ENOMEM, "out of memory");
      goto out;
    }
    for (i = 0; i < needed_rb; i++)
      put_be64 (rt + i * 8, w->rb_off + i * w->cs);
    if (full_pwrite (w->fd, rt, MIN (ROUND_UP (needed_rb * 8, 4096), w->rt_clusters * w->cs),
                     w->rt_off, IO_REFTABLE_GROW) == -1)
      goto out;
  }
  /* The file covers every cluster it counts (the data area may end in a hole). */
  if (ftruncate (w->fd, MAX (end, w->l1_off + w->l1_clusters * w->cs)) == -1) {
    rb_error_errno (errno, "%s: ftruncate", w->path);
    goto out;
  }
  memset (buf, 0, w->cs);
  /* Everything else is durable before the header makes it an image. */
  if (build_header (w, buf) == -1 ||
      (!w->no_sync && file_sync (w->fd, IO_FLUSH) == -1) ||
      full_pwrite (w->fd, buf, w->cs, 0, IO_HEADER_UPDATE) == -1 ||
      (!w->no_sync && file_sync (w->fd, IO_FLUSH) == -1))
    goto out;
  if (close (w->fd) == -1) {
    rb_error_errno (errno, "%s: close", w->path);
    w->fd = -1;
    unlink (w->path);
    goto out;
  }
  w->fd = -1;
  r = 0;
 out:
  rb_writer_abort (w);
  return r;
}

void
rb_writer_no_sync (struct rb_writer *w)
{
  w->no_sync = true;
}

/* Preallocation: every guest cluster mapped to consecutive host clusters
 * after the fixed metadata (L2 tables follow them), refcount 1.  The data
 * area stays a hole (metadata), is reserved with fallocate (falloc) or is
 * written with zeros (full).  With extended L2 the subclusters are left
 * unallocated, as QEMU leaves them (reads fall to the backing file).
 */
static int
preallocate (struct rb_writer *w)
{
  uint64_t nr = DIV_ROUND_UP (w->o.size, w->cs), host = ROUND_UP (w->next, w->cs), gc, done;
  int err;

  for (gc = 0; gc < nr; gc++) {
    uint8_t *e = l2_slot (w, gc);
    if (!e || ref_cluster (w, host / w->cs + gc) == -1)
      return -1;
    put_be64 (e, (host + gc * w->cs) | QCOW_OFLAG_COPIED);
  }
  w->any = nr > 0;
  w->last_gc = nr - 1;
  w->next = host + nr * w->cs;
  switch (w->o.preallocation) {
  case RB_PREALLOC_FALLOC:
    err = nr ? posix_fallocate (w->fd, host, nr * w->cs) : 0;
    if (err)
      return rb_error_errno (err, "%s: preallocation=falloc", w->path);
    break;
  case RB_PREALLOC_FULL:
    {
      CLEANUP_FREE uint8_t *zeros = calloc (1, 1 << 20);
      if (!zeros)
        return rb_error (ENOMEM, "out of memory");
      for (done = 0; done < nr * w->cs; done += 1 << 20)
        if (full_pwrite (w->fd, zeros, MIN (1ULL << 20, nr * w->cs - done), host + done,
                         IO_DATA_WRITE) == -1)
          return -1;
    }
    break;
  default:
    break;
  }
  return 0;
}

/* An empty image: the writer with no data (or every cluster preallocated). */
int
rb_create (const char *path, const struct rb_create_opts *opts, bool overwrite)
{
  uint64_t cs = opts->cluster_size ? opts->cluster_size : 65536;
  uint64_t nr = opts->preallocation ? DIV_ROUND_UP (opts->size, cs) : 0;
  struct rb_writer *w = writer_new (path, opts, overwrite, nr, false);

  if (!w)
    return -1;
  if (opts->preallocation && preallocate (w) == -1) {
    rb_writer_abort (w);
    return -1;
  }
  return rb_writer_finish (w);
}
