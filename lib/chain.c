/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Backing chains changed in place: commit an image into its backing file, rebase it onto another.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"
#include "map.h"

/* Both keep the top image's guest view unchanged while they run, so a crash
 * at any point leaves a usable chain:
 * - commit writes the data TOP holds (above BASE) into BASE with the
 *   ordinary guest write path of BASE, syncs, and only then empties TOP
 *   (its L1 entries cleared and written before anything is freed,
 *   invariant 4): TOP over BASE shows the same disk throughout;
 * - rebase copies into IMAGE, with IMAGE's own write path, every range the
 *   old and the new backing file show differently, syncs, and then switches
 *   the backing name and format in one atomic header write (rebase.c).
 */

#define CHUNK (4u << 20)

enum alloc_state { NOT_ALLOCATED, ALLOC_DATA, ALLOC_ZERO };

/* Is [off, off+len) allocated in an image between top (included) and base
 * (excluded)?  *n is the length of the run that answers the same way.  Past
 * the end of an image below top, top's view reads zeros.  For plain data,
 * *src is the image whose file holds it from host offset *host (else NULL).
 */
static int
alloc_above (struct rb_image *top, struct rb_image *base, uint64_t off, uint64_t len,
             uint64_t *n, enum alloc_state *st, struct rb_image **src, uint64_t *host)
{
  struct rb_image *i;
  struct run r;
  int ret;

  *src = NULL;
  for (i = top; i != base; i = i->backing) {
    if (i != top && off >= i->size) {
      *n = len;
      *st = ALLOC_ZERO;
      return 0;
    }
    len = MIN (len, i->size - off);
    if (i->is_raw) {
      *n = len;
      *st = ALLOC_DATA;
      *src = i;
      *host = off;
      return 0;
    }
    pthread_mutex_lock (&i->meta_lock);
    ret = map_run (i, off, len, &r);
    pthread_mutex_unlock (&i->meta_lock);
    if (ret == -1)
      return -1;
    if (r.kind != RUN_UNALLOC) {
      *n = r.length;
      *st = r.kind == RUN_ZERO ? ALLOC_ZERO : ALLOC_DATA;
      if (r.kind == RUN_DATA) {
        *src = i;
        *host = r.host_offset;
      }
      return 0;
    }
    len = r.length;
  }
  *n = len;
  *st = NOT_ALLOCATED;
  return 0;
}

/* Copy n bytes from src's file at host into base at guest offset off in
 * the kernel (copy_file_range), where base owns the clusters there and
 * overwrites them in place as rb_pwrite would (overlap check, bitmaps).
 * Returns 1 done, 0 not here (the caller writes), -1 error.
 */
static int
copy_direct (struct rb_image *src, uint64_t host, struct rb_image *base, uint64_t off,
             uint64_t n, bool *off_switch)
{
  struct run r;
  uint64_t size, avail;
  int ret = 0;

  if (*off_switch || base->is_raw)
    return 0;
  pthread_rwlock_rdlock (&base->io_lock);
  pthread_mutex_lock (&base->meta_lock);
  if (prepare_first_write (base) == -1 || map_run (base, off, n, &r) == -1)
    ret = -1;
  else if (r.kind != RUN_DATA || !r.copied || r.length < n)
    ret = 0;
  else
    ret = overlap_check (base, r.host_offset, n, OV_DATA) == -1 ? -1 : 1;
  pthread_mutex_unlock (&base->meta_lock);
  /* The source file may end inside its last cluster: the rest reads as zeros. */
  size = file_size_now (src);
  avail = host < size ? MIN (n, size - host) : 0;
  if (ret == 1 && avail &&
      full_copy_range (src->fd, host, base->fd, r.host_offset, avail, IO_DATA_WRITE) == -1) {
    if (rb_errno () == ENOTSUP) {
      *off_switch = true;       /* not between these files (or a replay log): write them */
      ret = 0;
    }
    else
      ret = rb_error_errno (rb_errno (), "%s: copying into %s", src->path, base->path);
  }
  if (ret == 1 && avail < n &&
      file_zero_range (base->fd, r.host_offset + avail, n - avail, IO_DATA_WRITE) == -1)
    ret = -1;
  if (ret == 1)
    bitmaps_note_write (base, off, n);
  pthread_rwlock_unlock (&base->io_lock);
  return ret;
}

/* Give chain member b (never written otherwise) write access, as a writer
 * with QEMU's locks.  Returns 0 / -1 (then b stays read-only).
 */
static int
make_writable (struct rb_image *b)
{
  if (!b->is_raw && (b->incompatible_features & QCOW_INCOMPAT_CORRUPT))
    return rb_error (EIO, "%s: the base image is marked corrupt; repair it first", b->path);
  b->ro_reason = NULL;
  return rb_make_writable (b);
}

/* Zero [off, off+len) of base: zero clusters (or unallocated) in a qcow2
 * base, a punched hole (else zeros as file_zero_range makes them) in a raw one.
 */
static int
base_zero (struct rb_image *base, uint64_t off, uint64_t len)
{
  if (!base->is_raw)
    return rb_zero (base, len, off, RB_MAY_TRIM);
  if (file_punch_hole (base->fd, off, len))
    return 0;
  return file_zero_range (base->fd, off, len, IO_DATA_WRITE);
}

/* Write len bytes of data at off into base. */
static int
base_write (struct rb_image *base, const void *buf, uint64_t off, uint64_t len)
{
  if (!base->is_raw)
    return rb_pwrite (base, buf, len, off, 0);
  return full_pwrite (base->fd, buf, len, off, IO_DATA_WRITE);
}

/* Grow base to size bytes (a raw file is extended, a qcow2 image resized). */
static int
base_grow (struct rb_image *base, uint64_t size)
{
  if (!base->is_raw)
    return rb_resize (base, size, 0);
  if (ftruncate (base->fd, size) == -1)
    return rb_error_errno (errno, "%s: cannot grow to %" PRIu64 " bytes", base->path, size);
  base->size = base->file_size = size;
  return 0;
}

/* Copy top's view of every range allocated above base into base. */
static int
copy_into_base (struct rb_image *top, struct rb_image *base, rb_progress_fn fn, void *opaque)
{
  CLEANUP_FREE uint8_t *buf = aligned_alloc (4096, CHUNK);
  uint64_t off = 0, n, host;
  struct rb_image *src;
  enum alloc_state st;
  bool no_copy_range = false;
  int c;

  if (!buf)
    return rb_error (ENOMEM, "out of memory");
  while (off < top->size) {
    if (alloc_above (top, base, off, MIN (CHUNK, top->size - off), &n, &st, &src, &host) == -1)
      return -1;
    c = st == ALLOC_DATA && src ? copy_direct (src, host, base, off, n, &no_copy_range) : 0;
    if (c == -1)
      return -1;
    if (st == ALLOC_DATA && c == 0) {
      if (rb_pread (top, buf, n, off) == -1)
        return -1;
      if (is_zero (buf, n) ? base_zero (base, off, n) == -1
          : base_write (base, buf, off, n) == -1)
        return -1;
    }
    else if (st == ALLOC_ZERO && base_zero (base, off, n) == -1)
      return -1;
    off += n;
    if (fn)
      fn (opaque, off, top->size);
  }
  if (base->is_raw)
    return file_sync (base->fd, IO_FLUSH);
  /* Nothing closes a backing image with a flush: this one writes the data,
   * the metadata and the refcounts it releases.
   */
  return rb_flush (base);
}

/* Drop every cluster of img's active L1 (qemu-img commit empties the top
 * image so): the L1 entries are cleared and written, then the tables and
 * data lose the active image's reference (internal snapshots keep theirs),
 * then the file is cut after the last cluster in use.
 */
static int
empty_image (struct rb_image *img)
{
  CLEANUP_FREE uint8_t *buf = malloc (img->cluster_size);
  uint64_t i, j, off;
  int r = 0;

  if (!buf)
    return rb_error (ENOMEM, "out of memory");
  if (txn_lock (img) == -1)
    return -1;
  if (prepare_first_write (img) == -1) {      /* nothing else is pending: TOP was only read */
    txn_unlock (img);
    return -1;
  }
  for (i = 0; r == 0 && i < img->l1_size; i++) {
    uint8_t *t;
    if ((r = l1_get_l2_offset (img, i, &off)) == -1 || off == 0)
      continue;
    if (!(t = cache_get (img->l2_cache, off, false))) {
      r = -1;
      break;
    }
    memcpy (buf, t, img->cluster_size);
    cache_put (img->l2_cache, off);
    for (j = 0; r == 0 && j < img->l2_entries; j++) {
      uint64_t e = get_be64 (buf + j * img->l2_entry_size);
      struct l2_info info;
      if ((r = l2_decode (img, e, &info)) == -1)
        break;
      if (info.kind == L2_COMPRESSED)
        r = free_compressed_deferred (img, e);
      else if (info.host_offset)
        r = free_clusters_deferred (img, info.host_offset, 1);
    }
    if (r == 0)
      r = free_clusters_deferred (img, off, 1);
    if (r == 0)
      r = l1_set_entry (img, i, 0);
  }
  /* Invariant 4: the cleared L1 is durable before any refcount drops.  No
   * punching (invariant 9): almost everything is free now, and cutting the
   * file after the last cluster in use gives the space back at once.
   */
  if (r == 0)
    r = flush_metadata (img);
  if (r == 0)
    r = apply_deferred_frees (img);
  if (r == 0)
    r = flush_metadata (img);
  txn_unlock (img);
  if (r == 0)
    truncate_free_tail (img);
  return r;
}

/* The chain member below top that is the file at path, or NULL. */
static struct rb_image *
find_in_chain (struct rb_image *top, const char *path)
{
  struct stat want, st;
  struct rb_image *b;

  if (stat (path, &want) == -1) {
    rb_error_errno (errno, "%s", path);
    return NULL;
  }
  for (b = top->backing; b; b = b->backing)
    if (fstat (b->fd, &st) == 0 && st.st_dev == want.st_dev && st.st_ino == want.st_ino)
      return b;
  rb_error (EINVAL, "%s is not in the backing chain of %s", path, top->path);
  return NULL;
}

int
rb_commit (struct rb_image *top, const char *base_path, unsigned flags,
           rb_progress_fn fn, void *opaque)
{
  struct rb_image *base;

  if (top->is_raw || top->readonly)
    return rb_error (EROFS, "%s: the image to commit must be a qcow2 image open for writing",
                     top->path);
  if (!top->backing)
    return rb_error (EINVAL, "%s: the image has no backing file%s", top->path,
                     top->backing_file ? " open" : "");
  base = base_path ? find_in_chain (top, base_path) : top->backing;
  if (!base)
    return -1;
  /* As qemu-img: committing past the direct backing file keeps TOP (-b implies -d). */
  if (base != top->backing)
    flags |= RB_COMMIT_KEEP;
  if (make_writable (base) == -1)
    return -1;
  if (base->size < top->size && base_grow (base, top->size) == -1)
    return -1;
  if (copy_into_base (top, base, fn, opaque) == -1)
    return -1;
  if (flags & RB_COMMIT_KEEP)
    return 0;
  return empty_image (top);
}
