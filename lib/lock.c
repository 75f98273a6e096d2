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

/* What a reader holds, as QEMU's qcow2 reader (qemu-img info without -U):
 * consistent read, and it lets nobody else write or resize.  A writer also
 * holds write, write unchanged and resize.
 */
#define READER_PERMS    (1U << PERM_CONSISTENT_READ)
#define READER_UNSHARED ((1U << PERM_WRITE) | (1U << PERM_RESIZE))
#define WRITER_PERMS    ((1U << PERM_WRITE) | (1U << PERM_WRITE_UNCHANGED) | (1U << PERM_RESIZE))

static const char *const perm_names[] = { "consistent read", "write", "write unchanged", "resize" };

/* Is byte off locked by another open file description?  (Locks of fd's own
 * description never conflict with it.)  Returns 1, 0 or -1.
 */
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

/* Set (type F_RDLCK) or release (F_UNLCK) the bytes standing for perms and
 * unshared permissions on fd's open file description.  Returns 0 / -1.
 */
static int
set_bytes (int fd, unsigned perms, unsigned unshared, short type)
{
  struct flock fl;
  int i;

  for (i = 0; i < 4; i++) {
    memset (&fl, 0, sizeof fl);
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_len = 1;
    fl.l_start = LOCK_PERM_BASE + i;
    if ((perms & (1U << i)) && fcntl (fd, F_OFD_SETLK, &fl) == -1)
      return -1;
    fl.l_start = LOCK_SHARED_BASE + i;
    if ((unshared & (1U << i)) && fcntl (fd, F_OFD_SETLK, &fl) == -1)
      return -1;
  }
  return 0;
}

/* Does another process hold a lock that forbids perms, or a permission we
 * unshare?  Returns 0 if not, -1 with EAGAIN naming the lock (as QEMU's
 * message), or another errno if the test itself failed.
 */
static int
find_conflict (struct rb_image *img, unsigned perms, unsigned unshared)
{
  int i, r;

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
  return 0;
}

/* Take the locks QEMU would take for a reader or a writer of img->fd.  The
 * bytes are set first and the conflicts tested after (as QEMU does), so two
 * processes opening at once cannot both win.  Returns 0 / -1.
 */
int
image_lock_file (struct rb_image *img, bool writable)
{
  unsigned perms = READER_PERMS | (writable ? WRITER_PERMS : 0);

  if (set_bytes (img->fd, perms, READER_UNSHARED, F_RDLCK) == -1)
    return rb_error_errno (errno, "%s: cannot lock the image", img->path);
  return find_conflict (img, perms, READER_UNSHARED);
}

/* Reader locks on fd, a new descriptor of the same file, before it replaces
 * img->fd: readers' locks are compatible with each other, so this cannot
 * conflict with the locks img->fd already holds.  Returns 0 / -1.
 */
int
image_lock_reader_fd (struct rb_image *img, int fd)
{
  if (set_bytes (fd, READER_PERMS, READER_UNSHARED, F_RDLCK) == -1)
    return rb_error_errno (errno, "%s: cannot lock the image", img->path);
  return 0;
}

/* Release every lock byte of fd's open file description.  Needed before a
 * descriptor is replaced: a forked process (nbdkit --run's parent) may share
 * the description, and closing our descriptor would leave its locks.
 */
void
image_unlock_fd (int fd)
{
  set_bytes (fd, 0xf, 0xf, F_UNLCK);
}

/* A reader's img->fd becomes a writer's: take the write permissions, then
 * test that nobody else reads consistently or writes.  On a conflict the
 * write bytes are released again and the reader locks stay.  Returns 0 / -1.
 */
int
image_lock_upgrade (struct rb_image *img)
{
  int r;

  if (set_bytes (img->fd, WRITER_PERMS, 0, F_RDLCK) == -1)
    r = rb_error_errno (errno, "%s: cannot lock the image for writing", img->path);
  else
    r = find_conflict (img, READER_PERMS | WRITER_PERMS, READER_UNSHARED);
  if (r == -1) {
    int e = errno;
    image_lock_downgrade (img);
    errno = e;
    return -1;
  }
  return 0;
}

/* Give back the write permissions taken by image_lock_upgrade (best effort). */
void
image_lock_downgrade (struct rb_image *img)
{
  set_bytes (img->fd, WRITER_PERMS, 0, F_UNLCK);
}
