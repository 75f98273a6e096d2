/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * The images the plugin serves: file= (one, open all along) or dir= (opened by their first connection, closed by their last).
 */
#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "exports.h"

/* The open exports.  exports_lock protects the list and every users count;
 * dir= images are opened and closed under it, so a name is never open twice
 * (the second open would meet the first one's locks).  I/O never takes it:
 * a connection holds its export until export_put.
 */
static pthread_mutex_t exports_lock = PTHREAD_MUTEX_INITIALIZER;
static struct export *exports;
static struct export *file_export;     /* file=, never closed by export_put */

static void
export_free (struct export *e)
{
  if (!e)
    return;
  if (e->img && rb_close (e->img) == -1)
    nbdkit_error ("closing %s: %s", e->path, rb_errmsg ());
  free (e->name);
  free (e->path);
  free (e);
}

/* A new export for path, opened read-only (raw: also RB_OPEN_RAW).
 * NULL with the error recorded (rb_errmsg).
 */
static struct export *
export_new (const char *name, const char *path, bool raw, const struct rb_open_opts *o)
{
  struct rb_open_opts opts = *o;
  struct export *e = calloc (1, sizeof *e);

  if (!e || !(e->name = strdup (name)) || !(e->path = strdup (path))) {
    rb_error (ENOMEM, "out of memory");
    export_free (e);
    return NULL;
  }
  opts.flags |= RB_OPEN_RDONLY | (raw ? RB_OPEN_RAW : 0);
  e->raw = raw;
  e->img = rb_open (path, &opts);
  if (!e->img) {
    export_free (e);
    return NULL;
  }
  return e;
}

struct export *
export_open_file (const char *path, const struct rb_open_opts *o)
{
  file_export = export_new ("", path, false, o);
  if (!file_export)
    nbdkit_error ("%s", rb_errmsg ());
  return file_export;
}

struct export *
export_file (void)
{
  return file_export;
}

/* May name be an image of dir?  A plain file name, no path.  0 / -1 (rb_error). */
static int
check_name (const char *dir, const char *name)
{
  if (name[0] == '\0')
    return rb_error (ENOENT, "dir=%s: the default export \"\" is not served: name an image "
                     "(nbdinfo --list shows them)", dir);
  if (strchr (name, '/') || strcmp (name, ".") == 0 || strcmp (name, "..") == 0)
    return rb_error (ENOENT, "dir=%s: export name \"%.200s\" is not a file name in the folder",
                     dir, name);
  return 0;
}

struct export *
export_get (const char *dir, const char *name, const struct rb_open_opts *o)
{
  struct export *e;
  struct stat st;
  char *path = NULL;
  int q;

  if (check_name (dir, name) == -1)
    return NULL;
  pthread_mutex_lock (&exports_lock);
  for (e = exports; e; e = e->next)
    if (strcmp (e->name, name) == 0)
      break;
  if (!e) {
    if (asprintf (&path, "%s/%s", dir, name) == -1) {
      rb_error (ENOMEM, "out of memory");
      path = NULL;
    }
    else if (stat (path, &st) == -1 || !(S_ISREG (st.st_mode) || S_ISBLK (st.st_mode)))
      rb_error (ENOENT, "dir=%s: no image \"%.200s\" in the folder (nbdinfo --list shows them)",
                dir, name);
    else if ((q = rb_probe_qcow2 (path)) != -1 &&
             (e = export_new (name, path, !q, o)) != NULL) {
      e->next = exports;
      exports = e;
    }
    free (path);
  }
  if (e)
    e->users++;
  pthread_mutex_unlock (&exports_lock);
  return e;
}

/* One user less for the dir= export whose image is img (or e if not NULL):
 * the last one closes it.
 */
static void
put (struct export *e, const struct rb_image *img)
{
  struct export **p;

  pthread_mutex_lock (&exports_lock);
  for (p = &exports; *p; p = &(*p)->next)
    if (*p == e || (*p)->img == img)
      break;
  if (*p && --(*p)->users == 0) {
    e = *p;
    *p = e->next;
    export_free (e);
  }
  pthread_mutex_unlock (&exports_lock);
}

void
export_put (struct export *e)
{
  if (e != file_export)
    put (e, NULL);
}

void
export_put_image (struct rb_image *img)
{
  put (NULL, img);
}

/* Is entry (of the folder open as dfd) a regular file or block device,
 * following symbolic links, as nbdkit's file plugin lists them?
 */
static bool
is_image_entry (int dfd, const struct dirent *d)
{
  struct stat st;

  if (d->d_type == DT_REG || d->d_type == DT_BLK)
    return true;
  if (d->d_type != DT_LNK && d->d_type != DT_UNKNOWN)
    return false;
  return fstatat (dfd, d->d_name, &st, 0) == 0 && (S_ISREG (st.st_mode) || S_ISBLK (st.st_mode));
}

int
exports_list (const char *dir, struct nbdkit_exports *list)
{
  DIR *d = opendir (dir);
  struct dirent *ent;
  int r = 0;

  if (!d) {
    nbdkit_error ("dir=%s: %m", dir);
    return -1;
  }
  for (;;) {
    char *path;
    int q;

    errno = 0;
    if ((ent = readdir (d)) == NULL)
      break;
    if (!is_image_entry (dirfd (d), ent))
      continue;
    if (asprintf (&path, "%s/%s", dir, ent->d_name) == -1) {
      nbdkit_error ("out of memory");
      r = -1;
      break;
    }
    q = rb_probe_qcow2 (path);
    free (path);
    /* Unreadable files are not offered. */
    if (q != -1 && nbdkit_add_export (list, ent->d_name, q ? "qcow2" : "raw, read-only") == -1) {
      r = -1;
      break;
    }
  }
  if (r == 0 && errno) {
    nbdkit_error ("dir=%s: readdir: %m", dir);
    r = -1;
  }
  closedir (d);
  return r;
}

void
exports_close_all (void)
{
  struct export *e;

  pthread_mutex_lock (&exports_lock);
  while ((e = exports) != NULL) {
    exports = e->next;
    export_free (e);
  }
  export_free (file_export);
  file_export = NULL;
  pthread_mutex_unlock (&exports_lock);
}
