/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * The one I/O layer for image files: full pread/pwrite, fdatasync, sizes, and fault injection.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>
#include <linux/falloc.h>
#include <linux/fs.h>

#include "internal.h"

static const char *const event_names[IO__MAX] = {
  "meta_read", "data_read", "cow_read", "data_write", "l1_update",
  "l2_alloc", "l2_update", "refblock_alloc", "refblock_update",
  "reftable_grow", "header_update", "flush", "create", "bitmap_write", "data_zero",
};

/* Fault injection, configured once from RBLOCK_FAULT (tests only):
 * EVENT:ERRNO[:once|:always|:after=N].  "once" (the default) fails the
 * first occurrence; after=N lets N occurrences through, then fails once.
 */
static struct {
  int event;                    /* -1: off */
  int err;
  bool always;
  long skip;
  bool spent;
  pthread_mutex_t lock;
} fault = { .event = -1, .lock = PTHREAD_MUTEX_INITIALIZER };
static pthread_once_t fault_once = PTHREAD_ONCE_INIT;

static void
fault_parse (void)
{
  const char *env = getenv ("RBLOCK_FAULT");
  char ev[32], er[16], mode[32] = "once";
  int i;

  if (!env || sscanf (env, "%31[a-z0-9_]:%15[A-Z]:%31s", ev, er, mode) < 2)
    return;
  for (i = 0; i < IO__MAX; i++)
    if (strcmp (ev, event_names[i]) == 0)
      fault.event = i;
  fault.err = strcmp (er, "ENOSPC") == 0 ? ENOSPC : strcmp (er, "EDQUOT") == 0 ? EDQUOT
    : strcmp (er, "EROFS") == 0 ? EROFS : strcmp (er, "EOPNOTSUPP") == 0 ? EOPNOTSUPP : EIO;
  fault.always = strcmp (mode, "always") == 0;
  if (strncmp (mode, "after=", 6) == 0)
    fault.skip = atol (mode + 6);
}

/* Returns -1 with the injected error recorded if this event must fail. */
int
fault_check (enum io_event ev)
{
  bool hit = false;

  pthread_once (&fault_once, fault_parse);
  if (fault.event != (int) ev)
    return 0;
  pthread_mutex_lock (&fault.lock);
  if (fault.skip > 0)
    fault.skip--;
  else if (fault.always || !fault.spent) {
    hit = true;
    fault.spent = true;
  }
  pthread_mutex_unlock (&fault.lock);
  if (hit)
    return rb_error (fault.err, "injected fault at %s: %s", event_names[ev],
                     strerrordesc_np (fault.err));
  return 0;
}

/* Write log for power-fail replay tests: RBLOCK_IOLOG=PATH records every
 * image write ('W', offset, length, data; big-endian u64s), every range
 * made to read as zeros ('Z', offset, length) and every completed sync
 * ('S') in order.
 */
static int iolog_fd = -1;
static pthread_mutex_t iolog_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t iolog_once = PTHREAD_ONCE_INIT;

static void
iolog_open (void)
{
  const char *p = getenv ("RBLOCK_IOLOG");

  if (p)
    iolog_fd = open (p, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
}

/* True if writes are being logged: decided once, before any thread logs.
 * The caller then takes iolog_lock around the write and its record.
 */
static bool
iolog_on (void)
{
  pthread_once (&iolog_once, iolog_open);
  return iolog_fd >= 0;
}

/* Append one record (under iolog_lock). */
static void
iolog (char kind, const void *buf, uint64_t count, uint64_t offset)
{
  uint8_t h[17];

  h[0] = kind;
  put_be64 (h + 1, offset);
  put_be64 (h + 9, count);
  if (write (iolog_fd, h, kind == 'S' ? 1 : 17) < 0 ||
      (kind == 'W' && write (iolog_fd, buf, count) < 0))
    abort ();                   /* a test harness without its log is useless */
}

/* Read exactly count bytes; a read past EOF is EIO ("short read").
 * Returns 0 / -1 with the error recorded.
 */
int
full_pread (int fd, void *buf, size_t count, uint64_t offset, enum io_event ev)
{
  char *p = buf;

  if (fault_check (ev) == -1)
    return -1;
  while (count > 0) {
    ssize_t r = pread (fd, p, count, offset);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      return rb_error_errno (errno, "read at host offset %" PRIu64, offset);
    }
    if (r == 0)
      return rb_error (EIO, "corrupt image: read past the end of the file at host offset %" PRIu64,
                       offset);
    p += r;
    count -= r;
    offset += r;
  }
  return 0;
}

/* Write exactly count bytes; dsync: each piece durable as it lands (pwritev2
 * RWF_DSYNC).  Returns 0, -1 with the error recorded, or 1 (nothing written)
 * when the kernel refuses RWF_DSYNC.
 */
static int
write_all (int fd, const void *buf, size_t count, uint64_t offset, bool dsync)
{
  const char *p = buf;
  bool first = true;

  while (count > 0) {
    struct iovec iov = { .iov_base = (void *) p, .iov_len = count };
    ssize_t r = dsync ? pwritev2 (fd, &iov, 1, offset, RWF_DSYNC) : pwrite (fd, p, count, offset);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      if (dsync && first && (errno == EOPNOTSUPP || errno == ENOSYS || errno == EINVAL))
        return 1;
      return rb_error_errno (errno, "%swrite at host offset %" PRIu64,
                             dsync ? "durable " : "", offset);
    }
    first = false;
    p += r;
    count -= r;
    offset += r;
  }
  return 0;
}

/* write_all, recorded in the replay log when one is configured (a durable
 * write as its bytes and a 'D' record).
 */
static int
logged_pwrite (int fd, const void *buf, size_t count, uint64_t offset, bool dsync)
{
  int r;

  if (!iolog_on ())
    return write_all (fd, buf, count, offset, dsync);
  pthread_mutex_lock (&iolog_lock);
  r = write_all (fd, buf, count, offset, dsync);
  if (r == 0)
    iolog ('W', buf, count, offset);
  if (r == 0 && dsync)
    iolog ('D', NULL, count, offset);
  pthread_mutex_unlock (&iolog_lock);
  return r;
}

int
full_pwrite (int fd, const void *buf, size_t count, uint64_t offset, enum io_event ev)
{
  if (fault_check (ev) == -1)
    return -1;
  return logged_pwrite (fd, buf, count, offset, false);
}

/* The kernel cannot sync one range with a write (RWF_DSYNC): learnt on first use. */
static _Atomic bool no_dsync_write;

/* Write exactly count bytes and make them durable, without the rest of the
 * file's dirty data (see internal.h).  Returns 0 / -1 with the error recorded.
 */
int
full_pwrite_durable (int fd, const void *buf, size_t count, uint64_t offset, enum io_event ev)
{
  if (fault_check (ev) == -1)
    return -1;
  if (!no_dsync_write) {
    int r;
    if (fault_check (IO_FLUSH) == -1)
      return -1;
    r = logged_pwrite (fd, buf, count, offset, true);
    if (r != 1)
      return r;
    no_dsync_write = true;
  }
  return logged_pwrite (fd, buf, count, offset, false) == -1 ? -1 : file_sync (fd, IO_FLUSH);
}

/* copy_file_range until count bytes are copied (see internal.h). */
int
full_copy_range (int fd_in, uint64_t in_offset, int fd, uint64_t offset, size_t count,
                 enum io_event ev)
{
  loff_t in = in_offset, out = offset;
  bool first = true;

  if (fault_check (ev) == -1)
    return -1;
  if (iolog_on ())
    return rb_error (ENOTSUP, "copy_file_range: the replay log needs the bytes");
  while (count > 0) {
    ssize_t r = copy_file_range (fd_in, &in, fd, &out, count, 0);
    if (r == -1 && errno == EINTR)
      continue;
    if (r == -1 && first && (errno == EXDEV || errno == EOPNOTSUPP || errno == ENOSYS ||
                             errno == EINVAL || errno == EBADF))
      return rb_error (ENOTSUP, "copy_file_range: %s", strerror (errno));
    if (r == -1)
      return rb_error_errno (errno, "write at host offset %" PRIu64, (uint64_t) out);
    if (r == 0)
      return rb_error (EIO, "copy_file_range: end of input at offset %" PRIu64
                       " (did it shrink?)", (uint64_t) in);
    first = false;
    count -= r;
  }
  return 0;
}

/* fdatasync, retried on EINTR.  Returns 0 / -1. */
int
file_sync (int fd, enum io_event ev)
{
  if (fault_check (ev) == -1)
    return -1;
  while (fdatasync (fd) == -1) {
    if (errno != EINTR)
      return rb_error_errno (errno, "fdatasync");
  }
  if (iolog_on ()) {
    pthread_mutex_lock (&iolog_lock);
    iolog ('S', NULL, 0, 0);
    pthread_mutex_unlock (&iolog_lock);
  }
  return 0;
}

/* What the file system offers for zeroing, learnt on first use (all image
 * files are taken to be alike: a wrong guess only costs speed).
 */
static _Atomic bool no_zero_range, no_punch_hole;

static bool
unsupported (int err)
{
  return err == EOPNOTSUPP || err == ENOSYS;
}

/* Zeros written by hand, where the file system cannot zero a range. */
static int
write_zeros (int fd, uint64_t offset, uint64_t count)
{
  static const uint8_t zeros[65536];

  while (count > 0) {
    size_t n = MIN (count, sizeof zeros);
    if (write_all (fd, zeros, n, offset, false) == -1)
      return -1;
    offset += n;
    count -= n;
  }
  return 0;
}

/* fallocate(mode) over the range; 0, or the errno.  Learns "unsupported". */
static int
try_fallocate (int fd, int mode, uint64_t offset, uint64_t count, _Atomic bool *no)
{
  if (*no)
    return EOPNOTSUPP;
  if (fallocate (fd, mode | FALLOC_FL_KEEP_SIZE, offset, count) == 0)
    return 0;
  if (unsupported (errno))
    *no = true;
  return errno;
}

/* ext4's buffered writes into space not yet allocated reserve it block by
 * block (delayed allocation: a buffer head and an extent-status entry per
 * 4 KiB); into space reserved first they only copy.  Measured writing 512 MiB
 * into a new file from memory: 0.080 s plain, 0.050 s with each 4 MiB
 * reserved first (0.31 s against 0.28 s with the fdatasync).  XFS (large
 * folios) measured no faster, tmpfs slower (the pages are allocated up front).
 */
#define EXT4_SUPER_MAGIC 0xEF53   /* ext2, ext3 and ext4 */

bool
rb_reserve_pays (int fd)
{
  struct statfs sf;

  return fstatfs (fd, &sf) == 0 && sf.f_type == EXT4_SUPER_MAGIC;
}

void
rb_reserve (int fd, uint64_t offset, uint64_t count, bool *no)
{
  if (*no || count == 0)
    return;
  /* A hint: no space (or an I/O error) is for the write to meet and report. */
  if (fallocate (fd, FALLOC_FL_KEEP_SIZE, offset, count) == -1 && (unsupported (errno) || errno == EINVAL))
    *no = true;
}

int
file_zero_range (int fd, uint64_t offset, uint64_t count, enum io_event ev)
{
  bool logged;
  int e, r;

  if (count == 0)
    return 0;
  /* An injected EOPNOTSUPP plays a file system that supports neither. */
  if (fault_check (ev) == -1) {
    if (errno != EOPNOTSUPP)
      return -1;
    no_zero_range = no_punch_hole = true;
  }
  if ((logged = iolog_on ()))
    pthread_mutex_lock (&iolog_lock);
  e = try_fallocate (fd, FALLOC_FL_ZERO_RANGE, offset, count, &no_zero_range);
  /* EINVAL: this range is not one the device can zero (alignment). */
  if (unsupported (e) || e == EINVAL)
    e = try_fallocate (fd, FALLOC_FL_PUNCH_HOLE, offset, count, &no_punch_hole);
  if (unsupported (e) || e == EINVAL)
    r = write_zeros (fd, offset, count);
  else if (e)
    r = rb_error_errno (e, "zeroing %" PRIu64 " bytes at host offset %" PRIu64, count, offset);
  else
    r = 0;
  if (r == 0 && logged)
    iolog ('Z', NULL, count, offset);
  if (logged)
    pthread_mutex_unlock (&iolog_lock);
  return r;
}

bool
file_punch_hole (int fd, uint64_t offset, uint64_t count)
{
  bool logged = iolog_on (), punched;

  if (logged)
    pthread_mutex_lock (&iolog_lock);
  punched = try_fallocate (fd, FALLOC_FL_PUNCH_HOLE, offset, count, &no_punch_hole) == 0;
  if (punched && logged)
    iolog ('Z', NULL, count, offset);
  if (logged)
    pthread_mutex_unlock (&iolog_lock);
  return punched;
}

/* The file must reach at least `end` bytes (a cluster that holds only
 * zeros the file system provides still has to start inside the file, or
 * QEMU counts a reference past its end).  Only extends, as a hole.  0 / -1.
 */
int
file_extend (int fd, uint64_t end)
{
  bool logged = iolog_on ();
  struct stat st;
  int r = 0;

  if (logged)
    pthread_mutex_lock (&iolog_lock);
  if (fstat (fd, &st) == -1)
    r = rb_error_errno (errno, "fstat");
  else if (S_ISREG (st.st_mode) && (uint64_t) st.st_size < end) {
    if (ftruncate (fd, end) == -1)
      r = rb_error_errno (errno, "extending the file to %" PRIu64 " bytes", end);
    else if (logged)
      iolog ('Z', NULL, end - st.st_size, st.st_size);
  }
  if (logged)
    pthread_mutex_unlock (&iolog_lock);
  return r;
}

/* Size of a regular file (st_size) or block device (BLKGETSIZE64). */
int
file_size (int fd, uint64_t *size)
{
  struct stat st;

  if (fstat (fd, &st) == -1)
    return rb_error_errno (errno, "fstat");
  if (S_ISBLK (st.st_mode)) {
    uint64_t sz;
    if (ioctl (fd, BLKGETSIZE64, &sz) == -1)
      return rb_error_errno (errno, "ioctl BLKGETSIZE64");
    *size = sz;
    return 0;
  }
  *size = st.st_size;
  return 0;
}
