/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Backing chains: resolve and open qcow2 or raw backing files, and read through them.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

/* Resolve a backing name as stored in img against img's folder.  Returns a
 * new string or NULL.
 */
char *
backing_resolve (struct rb_image *img, const char *name)
{
  char *p;

  if (name[0] == '/')
    return strdup (name);
  if (asprintf (&p, "%s/%s", img->dir, name) == -1)
    return NULL;
  return p;
}

/* Open img's backing file (and, through image_open, the rest of the chain). */
int
backing_open (struct rb_image *img, const struct rb_open_opts *opts, struct chain_ids *ids)
{
  CLEANUP_FREE char *path = NULL;
  bool raw;
  int q;

  if (!img->backing_file)
    return 0;
  if (strstr (img->backing_file, "json:") == img->backing_file ||
      strstr (img->backing_file, "://"))
    return rb_error (ENOTSUP, "%s: unsupported backing file name \"%s\" (only local files)",
                     img->path, img->backing_file);
  path = backing_resolve (img, img->backing_file);
  if (!path)
    return rb_error (ENOMEM, "out of memory");
  if (img->backing_format) {
    if (strcmp (img->backing_format, "raw") == 0)
      raw = true;
    else if (strcmp (img->backing_format, "qcow2") == 0)
      raw = false;
    else
      return rb_error (ENOTSUP, "%s: unsupported backing format \"%s\"",
                       img->path, img->backing_format);
  }
  else {
    q = rb_probe_qcow2 (path);
    if (q == -1) {
      char msg[600];
      snprintf (msg, sizeof msg, "%s", rb_errmsg ());
      return rb_error (rb_errno (), "cannot open backing file %s", msg);
    }
    raw = !q;
  }
  img->backing = image_open (path, opts, img->depth + 1, raw, ids);
  return img->backing ? 0 : -1;
}

/* Read guest bytes [offset, offset+count) as the backing chain shows them:
 * zeros with no backing file or past its end.
 */
int
backing_read (struct rb_image *img, void *buf, uint64_t count, uint64_t offset)
{
  struct rb_image *b = img->backing;
  uint64_t n = 0;

  if (b && offset < b->size) {
    n = MIN (count, b->size - offset);
    if (b->is_raw) {
      if (data_pread (b, buf, n, offset, IO_DATA_READ) == -1)
        return -1;
    }
    else {
      int r;
      pthread_rwlock_rdlock (&b->io_lock);
      r = read_locked (b, buf, n, offset);
      pthread_rwlock_unlock (&b->io_lock);
      if (r == -1)
        return -1;
    }
  }
  memset ((char *) buf + n, 0, count - n);
  return 0;
}
