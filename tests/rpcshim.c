/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * LD_PRELOAD shim for the JSON-RPC tests: allocations that fail above a size; a pread that waits.
 *
 * RPCSHIM_ALLOC_MAX  malloc, calloc and realloc of more than this many bytes return NULL
 * RPCSHIM_PAUSE_AT   a pread at exactly this file offset, once the file RPCSHIM_DIR/arm
 *                    exists, removes it, creates RPCSHIM_DIR/paused and waits (60 s at most)
 *                    until RPCSHIM_DIR/go exists
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/types.h>

extern void *__libc_malloc (size_t);
extern void *__libc_calloc (size_t, size_t);
extern void *__libc_realloc (void *, size_t);

static size_t alloc_max;            /* 0: no limit */
static long long pause_at = -1;
static const char *dir;
static ssize_t (*real_pread64) (int, void *, size_t, off_t);

__attribute__((constructor)) static void
init (void)
{
  const char *m = getenv ("RPCSHIM_ALLOC_MAX"), *p = getenv ("RPCSHIM_PAUSE_AT");

  if (m)
    alloc_max = strtoull (m, NULL, 10);
  if (p)
    pause_at = atoll (p);
  dir = getenv ("RPCSHIM_DIR");
  real_pread64 = dlsym (RTLD_NEXT, "pread64");
}

void *
malloc (size_t n)
{
  if (alloc_max && n > alloc_max) {
    errno = ENOMEM;
    return NULL;
  }
  return __libc_malloc (n);
}

void *
calloc (size_t k, size_t n)
{
  if (alloc_max && n && k > alloc_max / n) {
    errno = ENOMEM;
    return NULL;
  }
  return __libc_calloc (k, n);
}

void *
realloc (void *p, size_t n)
{
  if (alloc_max && n > alloc_max) {
    errno = ENOMEM;
    return NULL;
  }
  return __libc_realloc (p, n);
}

static int
exists (const char *name)
{
  char path[4096];

  snprintf (path, sizeof path, "%s/%s", dir, name);
  return access (path, F_OK) == 0;
}

/* Wait at the armed offset until the test says go. */
static void
maybe_pause (off_t off)
{
  char path[4096];
  struct timespec ts = { 0, 10 * 1000 * 1000 };
  int i, fd;

  if (off != pause_at || !dir || !exists ("arm"))
    return;
  snprintf (path, sizeof path, "%s/arm", dir);
  if (unlink (path) == -1)
    return;                         /* another thread took it */
  snprintf (path, sizeof path, "%s/paused", dir);
  fd = open (path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  if (fd >= 0)
    close (fd);
  for (i = 0; i < 6000 && !exists ("go"); i++)
    nanosleep (&ts, NULL);
}

ssize_t
pread64 (int fd, void *buf, size_t n, off_t off)
{
  maybe_pause (off);
  return real_pread64 (fd, buf, n, off);
}

ssize_t
pread (int fd, void *buf, size_t n, off_t off)
{
  maybe_pause (off);
  return real_pread64 (fd, buf, n, off);
}
