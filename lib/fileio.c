/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Full-length pread/pwrite, fdatasync and the size of a file or block device.
 */
#include <config.h>

#include <errno.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <linux/fs.h>

#include "internal.h"

/* Read exactly count bytes; a read past EOF is EIO ("short read").
 * Returns 0 / -1 with the error recorded.
 */
int
full_pread (int fd, void *buf, size_t count, uint64_t offset)
{
  char *p = buf;

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

/* Write exactly count bytes.  Returns 0 / -1 with the error recorded. */
int
full_pwrite (int fd, const void *buf, size_t count, uint64_t offset)
{
  const char *p = buf;

  while (count > 0) {
    ssize_t r = pwrite (fd, p, count, offset);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      return rb_error_errno (errno, "write at host offset %" PRIu64, offset);
    }
    p += r;
    count -= r;
    offset += r;
  }
  return 0;
}

/* fdatasync, retried on EINTR.  Returns 0 / -1. */
int
file_sync (int fd)
{
  while (fdatasync (fd) == -1) {
    if (errno != EINTR)
      return rb_error_errno (errno, "fdatasync");
  }
  return 0;
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
