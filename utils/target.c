/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * rb-convert's outputs: a new qcow2 or raw file, or an existing disk (raw file, block device, qcow2, NBD export).
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <linux/falloc.h>
#include <linux/fs.h>

#include "common.h"
#include "copier.h"
#include "target.h"

#define ZERO_BUF (1u << 20)

/* Record "name: what at offset N: strerror (err)".  Returns -1. */
static int
io_error (const struct target *t, const char *what, uint64_t offset, int err)
{
  return rb_error (err, "%s: %s at offset %" PRIu64 ": %s", t->name, what, offset, strerror (err));
}

/* Write all len bytes at offset (short writes continued; a write of nothing
 * means a full file system).  0 / -1 with the message recorded.
 */
static int
fd_write (const struct target *t, const uint8_t *buf, uint64_t offset, uint64_t len)
{
  while (len > 0) {
    ssize_t r = pwrite (t->fd, buf, MIN_U64 (len, 1u << 30), offset);
    if (r == -1 && errno == EINTR)
      continue;
    if (r <= 0)
      return io_error (t, "write error", offset, r == 0 ? ENOSPC : errno);
    buf += r;
    len -= r;
    offset += r;
  }
  return 0;
}

/* Zeros written over [offset, offset+len): the fallback of every zeroing. */
static int
fd_write_zeros (const struct target *t, uint64_t offset, uint64_t len)
{
  static uint8_t *zeros;

  if (!zeros && !(zeros = calloc (1, ZERO_BUF)))
    return rb_error (ENOMEM, "out of memory");
  while (len > 0) {
    uint64_t n = MIN_U64 (len, ZERO_BUF);
    if (fd_write (t, zeros, offset, n) == -1)
      return -1;
    offset += n;
    len -= n;
  }
  return 0;
}

/* Reset t to an empty target named name. */
static void
target_init (struct target *t, const char *name, enum target_kind kind)
{
  memset (t, 0, sizeof *t);
  t->name = name;
  t->kind = kind;
  t->fd = -1;
  t->punch_ok = t->zero_range_ok = t->blkzero_ok = true;
  t->no_reserve = true;            /* only a new raw file may reserve (target_new_raw) */
}

int
target_new_qcow2 (struct target *t, const char *name, const char *path,
                  const struct rb_create_opts *o, uint64_t max_clusters, bool compress,
                  bool no_sync)
{
  target_init (t, name, TARGET_NEW_QCOW2);
  t->size = o->size;
  t->cluster_size = o->cluster_size ? o->cluster_size : 65536;
  t->reads_zero = true;
  t->can_copy = !compress && !o->extended_l2;
  t->no_sync = no_sync;
  t->w = rb_writer_new (path, o, false, max_clusters, compress);
  if (!t->w)
    return -1;
  if (no_sync)
    rb_writer_no_sync (t->w);
  return 0;
}

int
target_new_raw (struct target *t, const char *name, const char *path, uint64_t size)
{
  target_init (t, name, TARGET_NEW_RAW);
  t->size = size;
  t->reads_zero = true;
  t->can_copy = true;
  t->fd = open (path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (t->fd == -1 || ftruncate (t->fd, size) == -1)
    return rb_error (errno, "%s: %s", name, strerror (errno));
  t->no_reserve = !rb_reserve_pays (t->fd);
  return 0;
}

/* -n onto a qcow2 image: its virtual size checked read-only first, so that a
 * refused target is not even opened for writing.
 */
static int
open_existing_qcow2 (struct target *t, uint64_t need)
{
  struct rb_open_opts ro = { .flags = RB_OPEN_RDONLY | RB_OPEN_NO_LOCK };
  struct rb_image *img = rb_open (t->name, &ro);
  uint64_t size;

  if (!img)
    return strstr (rb_errmsg (), t->name) ? -1 : source_error_prefixed (t->name);
  size = rb_get_size (img);
  rb_close (img);
  if (size < need)
    return rb_error (ENOSPC, "%s: the image (%" PRIu64 " bytes) is smaller than the source (%"
                     PRIu64 " bytes); nothing was written", t->name, size, need);
  t->img = rb_open (t->name, NULL);
  if (!t->img)
    return strstr (rb_errmsg (), t->name) ? -1 : source_error_prefixed (t->name);
  t->size = rb_get_size (t->img);
  t->cluster_size = rb_get_cluster_size (t->img);
  return 0;
}

int
target_open_existing (struct target *t, const char *name, const char *format, uint64_t need,
                      const struct source *src)
{
  struct stat st;
  uint8_t magic[4];
  int fd;

  if (source_is_uri (name)) {
    target_init (t, name, TARGET_NBD);
    if (format && strcmp (format, "raw") != 0)
      return rb_error (EINVAL, "%s: an NBD export is written raw (-O raw)", name);
    t->sink = sink_open (name);
    if (!t->sink)
      return -1;
    t->size = sink_size (t->sink);
    if (t->size < need)
      return rb_error (ENOSPC, "%s: the export (%" PRIu64 " bytes) is smaller than the source (%"
                       PRIu64 " bytes); nothing was written", name, t->size, need);
    return 0;
  }

  target_init (t, name, TARGET_FILE);
  /* O_NONBLOCK: a FIFO must not block open (); refused below. */
  fd = open (name, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd == -1 || fstat (fd, &st) == -1) {
    int err = errno;
    if (fd >= 0)
      close (fd);
    return rb_error (err, "%s: %s%s", name, strerror (err),
                     err == ENOENT ? " (-n writes onto an existing disk)" : "");
  }
  if (!S_ISREG (st.st_mode) && !S_ISBLK (st.st_mode)) {
    close (fd);
    return rb_error (EINVAL, "%s: not a regular file or block device (%s)", name,
                     file_type_name (st.st_mode));
  }
  if (src->dev == st.st_dev && src->ino == st.st_ino) {
    close (fd);
    return rb_error (EINVAL, "%s: refusing to overwrite an input", name);
  }
  if (!format)
    format = S_ISREG (st.st_mode) && pread (fd, magic, 4, 0) == 4 &&
             memcmp (magic, "QFI\xfb", 4) == 0 ? "qcow2" : "raw";
  close (fd);
  if (strcmp (format, "qcow2") == 0) {
    t->kind = TARGET_QCOW2;
    return open_existing_qcow2 (t, need);
  }

  /* Raw: a block device is opened exclusively (EBUSY while it is mounted). */
  t->kind = S_ISBLK (st.st_mode) ? TARGET_DEVICE : TARGET_FILE;
  t->can_copy = t->kind == TARGET_FILE;
  t->fd = open (name, O_WRONLY | O_CLOEXEC | (t->kind == TARGET_DEVICE ? O_EXCL : 0));
  if (t->fd == -1)
    return rb_error (errno, "%s: %s", name, strerror (errno));
  if (t->kind == TARGET_DEVICE) {
    if (ioctl (t->fd, BLKGETSIZE64, &t->size) == -1)
      return rb_error (errno, "%s: BLKGETSIZE64: %s", name, strerror (errno));
  }
  else
    t->size = st.st_size;
  if (t->size < need)
    return rb_error (ENOSPC, "%s: it is smaller (%" PRIu64 " bytes) than the source (%"
                     PRIu64 " bytes); nothing was written", name, t->size, need);
  return 0;
}

/* A copy up to end failed: if the source shrank (the copy met its end),
 * record that, naming the source, and return true.
 */
static bool
source_shrank (struct source *src, uint64_t end)
{
  uint64_t now;

  if (source_current_size (src, &now) == -1 || now >= end)
    return false;
  rb_error (EIO, "%s: unexpected end of input at offset %" PRIu64 " (it shrank)",
            source_name (src), now);
  return true;
}

/* Copy [offset, offset+len) of src_fd to the raw output at out.  0, -1, or 1
 * if may_refuse and the kernel refused the first call (nothing copied).
 */
static int
raw_copy (const struct target *t, struct source *src, int src_fd, uint64_t offset, uint64_t dst,
          uint64_t len, bool may_refuse)
{
  loff_t in = offset, out = dst;
  bool first = may_refuse;

  while (len > 0) {
    ssize_t r = copy_file_range (src_fd, &in, t->fd, &out, MIN_U64 (len, 1u << 30), 0);
    if (r == -1 && errno == EINTR)
      continue;
    if (r == -1 && first && (errno == EXDEV || errno == EOPNOTSUPP || errno == ENOSYS ||
                             errno == EINVAL || errno == EBADF))
      return 1;
    if (r == -1) {
      int err = errno;
      return source_shrank (src, in + len) ? -1 : io_error (t, "write error", out, err);
    }
    if (r == 0)
      return source_shrank (src, in + len) ? -1
        : rb_error (EIO, "%s: copy_file_range met the end of %s at offset %" PRIu64,
                    t->name, source_name (src), (uint64_t) in);
    first = false;
    len -= r;
  }
  return 0;
}

/* A copier thread's job (see target_copy): the copy of a run whose place in
 * the output is decided.  0 / -1 (a refusal is a failure here).
 */
static int
copy_job (void *opaque, const struct copy_job *job)
{
  struct target *t = opaque;
  int src_fd = source_file_fd (t->copy_src);

  if (t->w) {
    if (rb_writer_copy_at (t->w, job->out, src_fd, job->in, job->len) == 0)
      return 0;
    return source_shrank (t->copy_src, job->in + job->len) ? -1 : source_error_prefixed (t->name);
  }
  return raw_copy (t, t->copy_src, src_fd, job->in, job->out, job->len, false);
}

int
target_copy (struct target *t, struct source *src, uint64_t offset, uint64_t len)
{
  int src_fd = source_file_fd (src), r;
  uint64_t host = offset;

  if (!t->can_copy || src_fd == -1)
    return 1;
  /* The kernel took a copy between these files: the next ones go to the
   * copier threads, their place in the output decided here, in order.
   */
  if (t->copied && !t->copiers && !t->copy_here) {
    /* RBLOCK_THREADS, else the online CPUs up to 4; 1: all in this thread. */
    unsigned nr = threads_wanted (0, 4, 64);
    t->copy_here = nr == 1;
    t->copy_src = src;
    if (nr > 1 && !(t->copiers = copier_start (nr, copy_job, t)))
      return -1;
  }
  if (t->copiers) {
    if (t->w && rb_writer_map_run (t->w, offset / t->cluster_size, len, &host) == -1)
      return source_error_prefixed (t->name);
    return copier_submit (t->copiers, offset, host, len);
  }
  if (t->w) {
    if (rb_writer_copy_run (t->w, offset / t->cluster_size, src_fd, offset, len) == 0) {
      t->copied = true;
      return 0;
    }
    if (rb_errno () != ENOTSUP)
      return source_shrank (src, offset + len) ? -1 : source_error_prefixed (t->name);
    t->can_copy = false;
    return 1;
  }
  r = raw_copy (t, src, src_fd, offset, offset, len, true);
  if (r == 1)
    t->can_copy = false;
  if (r == 0)
    t->copied = true;
  return r;
}

int
target_wait (struct target *t)
{
  return t->copiers ? copier_wait (t->copiers) : 0;
}

int
target_write (struct target *t, const void *buf, uint64_t offset, uint64_t len)
{
  switch (t->kind) {
  case TARGET_NEW_QCOW2:
    if (rb_writer_put_run (t->w, offset / t->cluster_size, buf,
                           DIV_ROUND_UP_U64 (len, t->cluster_size)) == -1)
      return source_error_prefixed (t->name);
    return 0;
  case TARGET_QCOW2:
    if (rb_pwrite (t->img, buf, len, offset, 0) == -1)
      return source_error_prefixed (t->name);
    return 0;
  case TARGET_NBD:
    return sink_pwrite (t->sink, buf, len, offset);
  default:
    rb_reserve (t->fd, offset, len, &t->no_reserve);
    return fd_write (t, buf, offset, len);
  }
}

/* A block device: BLKZEROOUT (whole sectors: a partial last sector of the
 * source is zeroed whole, as the guest sees whole sectors), else written zeros.
 */
static int
device_zero (struct target *t, uint64_t offset, uint64_t len)
{
  uint64_t end = MIN_U64 (ROUND_UP_U64 (offset + len, 512), t->size);

  if (t->blkzero_ok && offset % 512 == 0) {
    uint64_t range[2] = { offset, end - offset };
    if (ioctl (t->fd, BLKZEROOUT, range) == 0)
      return 0;
    if (errno != EOPNOTSUPP && errno != ENOTTY && errno != EINVAL)
      return io_error (t, "BLKZEROOUT", offset, errno);
    t->blkzero_ok = false;
  }
  return fd_write_zeros (t, offset, end - offset);
}

/* A raw file: punch a hole (space given back), else ZERO_RANGE, else written zeros. */
static int
file_zero (struct target *t, uint64_t offset, uint64_t len)
{
  if (t->punch_ok) {
    if (fallocate (t->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, len) == 0)
      return 0;
    if (errno != EOPNOTSUPP && errno != ENOSYS)
      return io_error (t, "fallocate (PUNCH_HOLE)", offset, errno);
    t->punch_ok = false;
  }
  if (t->zero_range_ok) {
    if (fallocate (t->fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, len) == 0)
      return 0;
    if (errno != EOPNOTSUPP && errno != ENOSYS)
      return io_error (t, "fallocate (ZERO_RANGE)", offset, errno);
    t->zero_range_ok = false;
  }
  return fd_write_zeros (t, offset, len);
}

int
target_zero (struct target *t, uint64_t offset, uint64_t len)
{
  if (t->reads_zero || len == 0)
    return 0;
  switch (t->kind) {
  case TARGET_QCOW2:
    if (rb_zero (t->img, len, offset, RB_MAY_TRIM) == -1)
      return source_error_prefixed (t->name);
    return 0;
  case TARGET_NBD:
    return sink_zero (t->sink, len, offset);
  case TARGET_DEVICE:
    return device_zero (t, offset, len);
  default:
    return file_zero (t, offset, len);
  }
}

int
target_finish (struct target *t)
{
  int r = 0;

  /* Every copy done before anything that makes the output an image or syncs it. */
  if (target_wait (t) == -1)
    return -1;
  copier_stop (t->copiers);
  t->copiers = NULL;
  switch (t->kind) {
  case TARGET_NEW_QCOW2:
    r = rb_writer_finish (t->w);
    t->w = NULL;
    return r == -1 ? source_error_prefixed (t->name) : 0;
  case TARGET_QCOW2:
    if ((!t->no_sync && rb_flush (t->img) == -1) || rb_close (t->img) == -1)
      r = source_error_prefixed (t->name);
    t->img = NULL;
    return r;
  case TARGET_NBD:
    r = sink_close (t->sink);
    t->sink = NULL;
    return r;
  default:
    if (!t->no_sync && fsync (t->fd) == -1)
      r = rb_error (errno, "%s: fsync: %s", t->name, strerror (errno));
    if (close (t->fd) == -1 && r == 0)
      r = rb_error (errno, "%s: %s", t->name, strerror (errno));
    t->fd = -1;
    return r;
  }
}

void
target_abort (struct target *t)
{
  /* No copy runs any more when the output is closed and removed. */
  copier_stop (t->copiers);
  t->copiers = NULL;
  if (t->w)
    rb_writer_abort (t->w);
  if (t->img)
    rb_close (t->img);
  if (t->sink)
    sink_close (t->sink);
  if (t->fd >= 0)
    close (t->fd);
  t->w = NULL;
  t->img = NULL;
  t->sink = NULL;
  t->fd = -1;
}
