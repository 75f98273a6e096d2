/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * QEMU-compatible image locking: OFD read locks on bytes 100+perm and 200+unshared-perm.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <string.h>

#include "internal.h"

/* QEMU's permission bits (block.h) and lock byte bases (file-posix.c). */
#define PERM_CONSISTENT_READ 0
#define PERM_WRITE           1
#define PERM_WRITE_UNCHANGED 2
#define PERM_RESIZE          3
#define LOCK_PERM_BASE       100
#define LOCK_SHARED_BASE     200

static const char *const perm_names[] = { "consistent read", "write", "write unchanged", "resize" };

/* Is byte off locked by another open file description?  Returns 1, 0 or -1. */
static int
byte_locked_elsewhere (int fd, off_t off)
{
  struct flock fl;

  memset (&fl, 0, sizeof fl);
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = off;
  fl.l_len = 1;
  if (fcntl (fd, F_OFD_GETLK, &fl) == -1)
    return -1;
  return fl.l_type != F_UNLCK;
}

static int
lock_byte (int fd, off_t off)
{
  struct flock fl;

  memset (&fl, 0, sizeof fl);
  fl.l_type = F_RDLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = off;
  fl.l_len = 1;
  return fcntl (fd, F_OFD_SETLK, &fl);
}

/* Take the locks QEMU would take for a reader (consistent read, unsharing
 * write) or a writer (also write, write unchanged and resize, unsharing
 * write and resize), after checking nobody conflicts.  Returns 0 / -1.
 */
int
image_lock_file (struct rb_image *img, bool writable)
{
  unsigned perms = 1U << PERM_CONSISTENT_READ;
  unsigned unshared = 1U << PERM_WRITE;
  int i, r;

  if (writable) {
    perms |= (1U << PERM_WRITE) | (1U << PERM_WRITE_UNCHANGED) | (1U << PERM_RESIZE);
    unshared |= 1U << PERM_RESIZE;
  }
  for (i = 0; i < 4; i++) {
    if (perms & (1U << i)) {
      r = byte_locked_elsewhere (img->fd, LOCK_SHARED_BASE + i);
      if (r == -1)
        return rb_error_errno (errno, "%s: cannot test image locks", img->path);
      if (r)
        return rb_error (EAGAIN, "%s: image is in use by another process "
                         "(failed to get shared \"%s\" lock)", img->path, perm_names[i]);
    }
    if (unshared & (1U << i)) {
      r = byte_locked_elsewhere (img->fd, LOCK_PERM_BASE + i);
      if (r == -1)
        return rb_error_errno (errno, "%s: cannot test image locks", img->path);
      if (r)
        return rb_error (EAGAIN, "%s: image is in use by another process "
                         "(failed to get \"%s\" lock)", img->path, perm_names[i]);
    }
  }
  for (i = 0; i < 4; i++) {
    if (((perms & (1U << i)) && lock_byte (img->fd, LOCK_PERM_BASE + i) == -1) ||
        ((unshared & (1U << i)) && lock_byte (img->fd, LOCK_SHARED_BASE + i) == -1))
      return rb_error_errno (errno, "%s: cannot lock the image", img->path);
  }
  return 0;
}
