/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * LD_PRELOAD shim: shrinks a file just before the N-th mmap of it (a source that changes under a mapping).
 *
 * RB_SHRINK_FILE  the file (its path as /proc/self/fd shows it must contain this)
 * RB_SHRINK_AT    N: before the N-th mmap of it (1-based) ...
 * RB_SHRINK_TO    ... truncate it to this many bytes
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <unistd.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static long seen;

/* mmap: count the mappings of RB_SHRINK_FILE, shrink it before the chosen one. */
void *
mmap (void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
  static void *(*real) (void *, size_t, int, int, int, off_t);
  const char *want = getenv ("RB_SHRINK_FILE"), *at = getenv ("RB_SHRINK_AT");
  char link[64], path[PATH_MAX];
  ssize_t n;

  if (!real)
    real = dlsym (RTLD_NEXT, "mmap");
  if (want && at && fd >= 0) {
    snprintf (link, sizeof link, "/proc/self/fd/%d", fd);
    n = readlink (link, path, sizeof path - 1);
    if (n > 0) {
      path[n] = '\0';
      if (strstr (path, want)) {
        pthread_mutex_lock (&lock);
        if (++seen == atol (at) && truncate (path, atoll (getenv ("RB_SHRINK_TO") ?: "0")) == -1)
          abort ();
        pthread_mutex_unlock (&lock);
      }
    }
  }
  return real (addr, len, prot, flags, fd, off);
}
