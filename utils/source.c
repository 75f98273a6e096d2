/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * The utilities' inputs: raw files (holes by SEEK_DATA/SEEK_HOLE), block devices, qcow2 images, NBD URIs.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <linux/fs.h>

#include "source-internal.h"

/* Record "name: <the last message>" (copied first: rb_error formats into the
 * same buffer rb_errmsg returns).  Returns -1.
 */
int
source_error_prefixed (const char *name)
{
  char msg[1024];
  int err = rb_errno ();

  snprintf (msg, sizeof msg, "%s", rb_errmsg ());
  return rb_error (err ? err : EIO, "%s: %s", name, msg);
}

/* True if name looks like an NBD URI that libnbd understands. */
bool
source_is_uri (const char *name)
{
  static const char *const schemes[] = {
    "nbd://", "nbds://", "nbd+unix://", "nbds+unix://", "nbd+vsock://", "nbds+vsock://",
  };
  size_t i;

  for (i = 0; i < sizeof schemes / sizeof schemes[0]; i++)
    if (strncmp (name, schemes[i], strlen (schemes[i])) == 0)
      return true;
  return false;
}

/* Record "name: strerror (errno)".  Returns -1. */
static int
sys_error (const char *name)
{
  int err = errno;

  return rb_error (err, "%s: %s", name, strerror (err));
}

/* What kind of file mode describes, for messages ("a FIFO", ...). */
const char *
file_type_name (mode_t mode)
{
  if (S_ISFIFO (mode)) return "a FIFO";
  if (S_ISCHR (mode)) return "a character device";
  if (S_ISSOCK (mode)) return "a socket";
  if (S_ISDIR (mode)) return "a directory";
  if (S_ISLNK (mode)) return "a symbolic link";
  if (S_ISBLK (mode)) return "a block device";
  return "a regular file";
}

/* Size of the open file or block device fd (st from fstat).  0 / -1 (errno). */
static int
fd_size (int fd, const struct stat *st, uint64_t *size)
{
  if (S_ISBLK (st->st_mode)) {
    uint64_t sz;
    if (ioctl (fd, BLKGETSIZE64, &sz) == -1)
      return -1;
    *size = sz;
  }
  else
    *size = st->st_size;
  return 0;
}

/* Open a path: raw file, block device, or qcow2 image by its magic. */
static int
open_path (struct source *s, unsigned flags)
{
  struct stat st;
  uint8_t magic[4];

  /* O_NONBLOCK: a FIFO would block open () until a writer comes; it is
   * refused below (the type is known only once it is open), then cleared.
   */
  s->fd = open (s->name, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (s->fd == -1)
    return sys_error (s->name);
  if (fstat (s->fd, &st) == -1)
    return sys_error (s->name);
  if (!S_ISREG (st.st_mode) && !S_ISBLK (st.st_mode))
    return rb_error (EINVAL, "%s: not a regular file or block device (%s)", s->name,
                     file_type_name (st.st_mode));
  if (fcntl (s->fd, F_SETFL, fcntl (s->fd, F_GETFL) & ~O_NONBLOCK) == -1 ||
      fd_size (s->fd, &st, &s->size) == -1)
    return sys_error (s->name);
  s->dev = st.st_dev;
  s->ino = st.st_ino;
  s->kind = S_ISBLK (st.st_mode) ? SOURCE_BLOCKDEV : SOURCE_RAW;
  if ((flags & SOURCE_FORCE_QCOW2) ||
      (!(flags & SOURCE_FORCE_RAW) && s->size >= 4 &&
       pread (s->fd, magic, 4, 0) == 4 && memcmp (magic, "QFI\xfb", 4) == 0)) {
    struct rb_open_opts o = { .flags = RB_OPEN_RDONLY };

    if (flags & SOURCE_NO_LOCK)
      o.flags |= RB_OPEN_NO_LOCK;
    s->img = rb_open (s->name, &o);
    if (!s->img) {
      /* The engine's messages usually name the file already. */
      if (strstr (rb_errmsg (), s->name) == NULL)
        return source_error_prefixed (s->name);
      return -1;
    }
    close (s->fd);
    s->fd = -1;
    s->kind = SOURCE_QCOW2;
    s->size = rb_get_size (s->img);
  }
  return 0;
}

/* Open name read-only; NULL with the message recorded on error. */
struct source *
source_open (const char *name, unsigned flags)
{
  struct source *s = calloc (1, sizeof *s);

  if (!s || !(s->name = strdup (name))) {
    free (s);
    rb_error (ENOMEM, "%s: out of memory", name);
    return NULL;
  }
  s->fd = -1;
  if (source_is_uri (name)) {
    if (flags & SOURCE_FORCE_QCOW2) {
      rb_error (ENOTSUP, "%s: -f qcow2: an NBD export is read as raw bytes", name);
      goto err;
    }
    s->kind = SOURCE_NBD;
    if (nbdsrc_open (s) == -1)
      goto err;
  }
  else if (open_path (s, flags) == -1)
    goto err;
  return s;

 err:
  source_close (s);
  return NULL;
}

/* Close whatever the source holds and free it (NULL is fine). */
void
source_close (struct source *s)
{
  if (!s)
    return;
  if (s->fd >= 0)
    close (s->fd);
  if (s->img)
    rb_close (s->img);
  if (s->nbd)
    nbdsrc_close (s);
  free (s->name);
  free (s);
}

/* The size in bytes. */
uint64_t
source_size (const struct source *s)
{
  return s->size;
}

/* The name as given, for messages. */
const char *
source_name (const struct source *s)
{
  return s->name;
}

/* Read exactly count bytes at offset.  0 / -1. */
int
source_pread (struct source *s, void *buf, size_t count, uint64_t offset)
{
  char *p = buf;

  if (count == 0)
    return 0;
  if (offset > s->size || count > s->size - offset)
    return rb_error (EINVAL, "%s: read of %zu bytes at offset %" PRIu64
                     " is past the end (%" PRIu64 " bytes)", s->name, count, offset, s->size);
  if (s->img) {
    if (rb_pread (s->img, buf, count, offset) == -1)
      return source_error_prefixed (s->name);
    return 0;
  }
  if (s->nbd)
    return nbdsrc_pread (s, buf, count, offset);
  while (count > 0) {
    ssize_t r = pread (s->fd, p, count, offset);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      return rb_error (errno, "%s: read error at offset %" PRIu64 ": %s",
                       s->name, offset, strerror (errno));
    }
    if (r == 0)
      return rb_error (EIO, "%s: unexpected end of input at offset %" PRIu64
                       " (did it shrink?)", s->name, offset);
    p += r;
    offset += r;
    count -= r;
  }
  return 0;
}

struct engine_adapter {
  source_extent_fn fn;
  void *opaque;
  bool stopped;                    /* the callback asked to stop */
};

/* rb_extents callback: engine extent types to SOURCE_* kinds. */
static int
from_engine (void *opaque, uint64_t offset, uint64_t length, uint32_t type)
{
  struct engine_adapter *a = opaque;
  int kind = SOURCE_DATA;

  if (type & RB_EXTENT_ZERO)
    kind = SOURCE_ZERO | ((type & RB_EXTENT_HOLE) ? SOURCE_HOLE : 0);
  if (a->fn (a->opaque, offset, length, kind) == -1) {
    a->stopped = true;
    return -1;
  }
  return 0;
}

/* Files: SEEK_DATA / SEEK_HOLE; a file system without them is all data. */
static int
file_extents (struct source *s, uint64_t offset, uint64_t count,
              source_extent_fn fn, void *opaque)
{
  uint64_t end = offset + count;

  while (offset < end) {
    off_t d = lseek (s->fd, offset, SEEK_DATA), h;

    if (d == -1) {
      if (errno == ENXIO)           /* only a hole up to the end of the file */
        return fn (opaque, offset, end - offset, SOURCE_ZERO | SOURCE_HOLE);
      return fn (opaque, offset, end - offset, SOURCE_DATA);
    }
    if ((uint64_t) d >= end)
      return fn (opaque, offset, end - offset, SOURCE_ZERO | SOURCE_HOLE);
    if ((uint64_t) d > offset) {
      if (fn (opaque, offset, d - offset, SOURCE_ZERO | SOURCE_HOLE) == -1)
        return -1;
      offset = d;
    }
    h = lseek (s->fd, offset, SEEK_HOLE);
    if (h == -1 || (uint64_t) h > end)
      h = end;
    if ((uint64_t) h <= offset)     /* the file changed under us: read it */
      h = end;
    if (fn (opaque, offset, h - offset, SOURCE_DATA) == -1)
      return -1;
    offset = h;
  }
  return 0;
}

/* Report extents covering [offset, offset+count).  0 / -1. */
int
source_extents (struct source *s, uint64_t offset, uint64_t count,
                source_extent_fn fn, void *opaque)
{
  if (offset > s->size || count > s->size - offset)
    return rb_error (EINVAL, "%s: extents past the end", s->name);
  if (count == 0)
    return 0;
  if (s->img) {
    struct engine_adapter a = { fn, opaque, false };

    if (rb_extents (s->img, count, offset, from_engine, &a) == -1)
      return a.stopped ? -1 : source_error_prefixed (s->name);
    return 0;
  }
  if (s->nbd)
    return nbdsrc_extents (s, offset, count, fn, opaque);
  if (s->kind == SOURCE_BLOCKDEV)
    return fn (opaque, offset, count, SOURCE_DATA);
  return file_extents (s, offset, count, fn, opaque);
}

/* The size now (files and devices), to notice a changing input.  0 / -1. */
int
source_current_size (struct source *s, uint64_t *size)
{
  struct stat st;

  if (s->fd == -1) {
    *size = s->size;
    return 0;
  }
  if (fstat (s->fd, &st) == -1 || fd_size (s->fd, &st, size) == -1)
    return rb_error (errno, "%s: %s", s->name, strerror (errno));
  return 0;
}

/* The mapped windows SIGBUS may hit (slots set before and cleared after
 * use), and whether it did.
 */
static struct { void *volatile addr; volatile size_t len; volatile sig_atomic_t hit; } windows[SOURCE_MAX_WINDOWS];
static pthread_mutex_t windows_lock = PTHREAD_MUTEX_INITIALIZER;
static volatile sig_atomic_t bus_hit;

/* SIGBUS: a page of a window past the file's (new) end.  Put a page of
 * zeros there so the access completes, and remember; anything else is fatal
 * as usual.
 */
static void
on_sigbus (int sig, siginfo_t *si, void *ctx)
{
  uintptr_t a = (uintptr_t) si->si_addr;
  long page = sysconf (_SC_PAGESIZE);
  size_t i;

  (void) ctx;
  for (i = 0; i < SOURCE_MAX_WINDOWS; i++) {
    uintptr_t w = (uintptr_t) windows[i].addr;
    if (w && a >= w && a < w + windows[i].len &&
        mmap ((void *) (a & ~(uintptr_t) (page - 1)), page, PROT_READ,
              MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != MAP_FAILED) {
      windows[i].hit = 1;
      bus_hit = 1;
      return;
    }
  }
  signal (sig, SIG_DFL);
  raise (sig);
}

/* Whether every page of [p, p+len) (page-aligned) is in the page cache. */
static bool
all_cached (void *p, size_t len)
{
  long page = sysconf (_SC_PAGESIZE);
  size_t n = (len + page - 1) / page, i;
  unsigned char vec[1024];

  for (i = 0; i < n; i += sizeof vec) {
    size_t k, m = n - i < sizeof vec ? n - i : sizeof vec;
    if (mincore ((uint8_t *) p + i * page, m * page, vec) == -1)
      return false;
    for (k = 0; k < m; k++)
      if (!(vec[k] & 1))
        return false;
  }
  return true;
}

/* Map [offset, offset+count) of a regular-file source (with cached, only
 * if all of it is in the page cache); NULL: read instead.
 */
const uint8_t *
source_map (struct source *s, uint64_t offset, size_t count, bool cached, struct source_window *w)
{
  static bool handler;
  long page = sysconf (_SC_PAGESIZE);
  uint64_t start = offset / page * page;
  size_t i, len = offset - start + count;
  void *p;

  w->addr = NULL;
  if (s->kind != SOURCE_RAW || s->fd == -1 || count == 0)
    return NULL;
  pthread_mutex_lock (&windows_lock);
  for (i = 0; i < SOURCE_MAX_WINDOWS && windows[i].addr; i++)
    ;
  if (i < SOURCE_MAX_WINDOWS && !handler) {
    struct sigaction sa = { .sa_sigaction = on_sigbus, .sa_flags = SA_SIGINFO };
    sigemptyset (&sa.sa_mask);
    handler = sigaction (SIGBUS, &sa, NULL) == 0;
  }
  p = i < SOURCE_MAX_WINDOWS && handler
    ? mmap (NULL, len, PROT_READ, MAP_SHARED, s->fd, start) : MAP_FAILED;
  if (p != MAP_FAILED && cached && !all_cached (p, len)) {
    munmap (p, len);
    p = MAP_FAILED;
  }
  if (p != MAP_FAILED) {
    madvise (p, len, MADV_SEQUENTIAL);
    windows[i].hit = 0;
    windows[i].len = len;
    windows[i].addr = p;
    w->addr = p;
    w->len = len;
  }
  pthread_mutex_unlock (&windows_lock);
  return p == MAP_FAILED ? NULL : (const uint8_t *) p + (offset - start);
}

/* Forget window w and unmap it.  Returns whether SIGBUS hit it. */
static bool
window_release (struct source_window *w)
{
  bool hit = false;
  size_t i;

  pthread_mutex_lock (&windows_lock);
  for (i = 0; i < SOURCE_MAX_WINDOWS; i++)
    if (windows[i].addr == w->addr) {
      hit = windows[i].hit;
      windows[i].addr = NULL;
    }
  pthread_mutex_unlock (&windows_lock);
  munmap (w->addr, w->len);
  w->addr = NULL;
  return hit;
}

/* True (the message recorded, naming the input) if the file is now shorter than it was. */
static bool
shrank (struct source *s)
{
  uint64_t now;

  if (source_current_size (s, &now) == -1 || now >= s->size)
    return false;
  rb_error (EIO, "%s: the input shrank while it was read", s->name);
  return true;
}

int
source_window_lost (struct source *s)
{
  return shrank (s) ? -1 : rb_error (EIO, "%s: a page of the input could not be read", s->name);
}

/* Release a window.  -1 (naming the input) if the file shrank under one,
 * or a page of this one could not be read.
 */
int
source_unmap (struct source *s, struct source_window *w)
{
  if (!w->addr)
    return 0;
  if (window_release (w))
    return source_window_lost (s);
  return bus_hit && shrank (s) ? -1 : 0;
}

int
source_window_check (struct source *s, struct source_window *w)
{
  bool hit = false;
  size_t i;

  pthread_mutex_lock (&windows_lock);
  for (i = 0; w->addr && i < SOURCE_MAX_WINDOWS; i++)
    if (windows[i].addr == w->addr)
      hit = windows[i].hit;
  pthread_mutex_unlock (&windows_lock);
  if (!hit)
    return 0;
  if (shrank (s))
    return -1;
  window_release (w);
  return 1;
}

/* The fd of a regular-file source, else -1. */
int
source_file_fd (const struct source *s)
{
  return s->kind == SOURCE_RAW ? s->fd : -1;
}
