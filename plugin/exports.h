/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * The images the plugin serves: file= (one, open all along) or dir= (opened by their first connection, closed by their last).
 */
#ifndef RBLOCK_EXPORTS_H
#define RBLOCK_EXPORTS_H

#include <stdbool.h>

#include "rblock.h"

struct nbdkit_exports;

struct export {
  char *name;                /* as the client names it ("" for file=) */
  char *path;                /* the image file */
  struct rb_image *img;
  bool raw;                  /* dir=: a raw file, served read-only */
  unsigned users;            /* connections holding it (dir=) */
  struct export *next;
};

/* file=: open path now, read-only (rb_make_writable gives write access);
 * it stays open until exports_close_all.  NULL with nbdkit_error.
 */
struct export *export_open_file (const char *path, const struct rb_open_opts *o);

/* The file= export (NULL before export_open_file). */
struct export *export_file (void);

/* dir=: the image `name` of folder dir, opened (read-only) if no connection
 * holds it yet; one more user.  NULL with the error recorded (rb_errmsg:
 * unknown name, or an image that cannot be served, with the engine's reason).
 */
struct export *export_get (const char *dir, const char *name, const struct rb_open_opts *o);

/* A connection is done with e: the last user of a dir= export closes it
 * (flushed, bitmaps stored, QEMU's locks released).
 */
void export_put (struct export *e);

/* The same by image, for the JSON-RPC server's release_image. */
void export_put_image (struct rb_image *img);

/* dir=: every regular file or block device in dir, for .list_exports. */
int exports_list (const char *dir, struct nbdkit_exports *exports);

/* Close every export still open (plugin cleanup). */
void exports_close_all (void);

#endif
