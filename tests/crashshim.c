/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * LD_PRELOAD shim for crash tests: lets the N-th write to a file happen (optionally torn), then SIGKILLs.
 * A write is a pwrite, a pwritev2 (durable writes), an fallocate (zeroing a range) or a
 * copy_file_range into the file.
 *
 * RB_CRASH_FILE  count writes to files whose path (as passed to open*) contains this
 * RB_CRASH_AT    N: the N-th write (1-based) is the last one; then kill -9
 * RB_CRASH_TORN  if set, the N-th write lands only its first 512 bytes
 * RB_CRASH_COUNT if set (a path), the number of writes seen is written there at exit
 * RB_CRASH_ZEROS if set (a path), the number of those that were fallocates, likewise
 * RB_NO_DSYNC    if set, pwritev2 fails with EOPNOTSUPP (a kernel without RWF_DSYNC)
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/types.h>
#include <sys/uio.h>

static long count, zeros, crash_at = -1;
static int watched[256];
static ssize_t (*real_pwrite64) (int, const void *, size_t, off_t);

static void
save_count (void)
{
  const char *p = getenv ("RB_CRASH_COUNT");
  FILE *f;

  if (p && (f = fopen (p, "w"))) {
    fprintf (f, "%ld\n", count);
    fclose (f);
  }
  p = getenv ("RB_CRASH_ZEROS");
  if (p && (f = fopen (p, "w"))) {
    fprintf (f, "%ld\n", zeros);
    fclose (f);
  }
}

__attribute__((constructor)) static void
init (void)
{
  const char *at = getenv ("RB_CRASH_AT");

  real_pwrite64 = dlsym (RTLD_NEXT, "pwrite64");
  if (at)
    crash_at = atol (at);
  atexit (save_count);
}

static bool
matches (const char *path)
{
  const char *want = getenv ("RB_CRASH_FILE");

  return want && path && strstr (path, want) != NULL;
}

static void
note_fd (int fd, const char *path)
{
  if (fd >= 0 && fd < 256)
    watched[fd] = matches (path);
}

int
open (const char *path, int flags, ...)
{
  static int (*real) (const char *, int, ...);
  mode_t mode = 0;
  va_list ap;
  int fd;

  if (!real)
    real = dlsym (RTLD_NEXT, "open");
  va_start (ap, flags);
  if (flags & (O_CREAT | O_TMPFILE))
    mode = va_arg (ap, mode_t);
  va_end (ap);
  fd = real (path, flags, mode);
  note_fd (fd, path);
  return fd;
}

int open64 (const char *path, int flags, ...) __attribute__((alias ("open")));

/* With _FORTIFY_SOURCE (Debian's hardening flags build the package so), an
 * open whose flags are not known at compile time calls __open_2 or
 * __open64_2 (never with O_CREAT: that needs a mode, checked at compile time).
 */
int
__open_2 (const char *path, int flags)
{
  return open (path, flags);
}

int __open64_2 (const char *path, int flags) __attribute__((alias ("__open_2")));

ssize_t
pwrite64 (int fd, const void *buf, size_t count_bytes, off_t offset)
{
  if (fd >= 0 && fd < 256 && watched[fd]) {
    count++;
    if (count == crash_at) {
      size_t n = getenv ("RB_CRASH_TORN") && count_bytes > 512 ? 512 : count_bytes;
      real_pwrite64 (fd, buf, n, offset);
      save_count ();
      kill (getpid (), SIGKILL);
    }
  }
  return real_pwrite64 (fd, buf, count_bytes, offset);
}

ssize_t pwrite (int fd, const void *buf, size_t n, off_t offset) __attribute__((alias ("pwrite64")));

/* A durable write (RWF_DSYNC) counts as a write like pwrite. */
ssize_t
pwritev2 (int fd, const struct iovec *iov, int iovcnt, off_t offset, int flags)
{
  static ssize_t (*real) (int, const struct iovec *, int, off_t, int);

  if (!real)
    real = dlsym (RTLD_NEXT, "pwritev2");
  if (getenv ("RB_NO_DSYNC")) {
    errno = EOPNOTSUPP;
    return -1;
  }
  if (fd >= 0 && fd < 256 && watched[fd] && ++count == crash_at) {
    if (getenv ("RB_CRASH_TORN") && iovcnt > 0 && iov[0].iov_len > 512)
      real_pwrite64 (fd, iov[0].iov_base, 512, offset);
    else
      real (fd, iov, iovcnt, offset, flags);
    save_count ();
    kill (getpid (), SIGKILL);
  }
  return real (fd, iov, iovcnt, offset, flags);
}

ssize_t pwritev64v2 (int fd, const struct iovec *iov, int iovcnt, off_t offset, int flags)
  __attribute__((alias ("pwritev2")));

int
fallocate64 (int fd, int mode, off_t offset, off_t len)
{
  static int (*real) (int, int, off_t, off_t);
  int r;

  if (!real)
    real = dlsym (RTLD_NEXT, "fallocate64");
  r = real (fd, mode, offset, len);
  if (fd >= 0 && fd < 256 && watched[fd]) {
    zeros++;
    if (++count == crash_at) {
      save_count ();
      kill (getpid (), SIGKILL);
    }
  }
  return r;
}

int fallocate (int fd, int mode, off_t offset, off_t len) __attribute__((alias ("fallocate64")));

ssize_t
copy_file_range (int fd_in, loff_t *off_in, int fd_out, loff_t *off_out, size_t len,
                 unsigned flags)
{
  static ssize_t (*real) (int, loff_t *, int, loff_t *, size_t, unsigned);

  if (!real)
    real = dlsym (RTLD_NEXT, "copy_file_range");
  if (fd_out >= 0 && fd_out < 256 && watched[fd_out] && ++count == crash_at) {
    size_t n = getenv ("RB_CRASH_TORN") && len > 512 ? 512 : len;
    real (fd_in, off_in, fd_out, off_out, n, flags);
    save_count ();
    kill (getpid (), SIGKILL);
  }
  return real (fd_in, off_in, fd_out, off_out, len, flags);
}
