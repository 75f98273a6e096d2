/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Rebase: copy what the old and new backing files show differently, then switch name and format atomically.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "internal.h"
#include "map.h"

/* The backing file name lives anywhere in the header cluster after the
 * extensions, found by the offset and size in header bytes 8..19; the
 * backing format is a header extension.  Every change is one write inside
 * the first 512-byte sector, atomic, after the new name was written where
 * the current header does not look:
 * - the format extension lies in the first sector and keeps its size (raw,
 *   qcow2): the write covers the name pointer and the extension;
 * - else the extension list is rebuilt inside the first sector: the format
 *   extension first, then every other extension but the feature name table
 *   (informative only; QEMU writes it again when it rewrites the header),
 *   and the sector is written whole.  What lay past it becomes unused.
 * Removing the backing file in place leaves the format extension: with no
 * name it has no meaning (QEMU reads such headers the same way).
 */

#define CHUNK (1u << 20)
#define SECTOR 512

struct layout {
  uint64_t start;           /* first extension */
  uint64_t end;             /* position of the end marker */
  int64_t fmt;              /* position of the backing format extension, -1 */
  uint32_t fmt_len;
};

/* Find the extensions of header cluster h (extensions run up to the name). */
static int
parse_layout (struct rb_image *img, const uint8_t *h, struct layout *l)
{
  uint64_t limit = img->backing_file_offset ? img->backing_file_offset : img->cluster_size;
  uint64_t off = img->version >= 3 ? img->header_length : QCOW_V2_HEADER_LENGTH;

  l->start = off;
  l->end = 0;
  l->fmt = -1;
  l->fmt_len = 0;
  while (off + 8 <= limit) {
    uint32_t type = get_be32 (h + off), len = get_be32 (h + off + 4);
    if (type == QCOW_EXT_END) {
      l->end = off;
      return 0;
    }
    if (len > limit - off - 8)
      return mark_corrupt (img, "header extension %#x runs past the header", type);
    if (type == QCOW_EXT_BACKING_FORMAT) {
      l->fmt = off;
      l->fmt_len = len;
    }
    off += 8 + ROUND_UP ((uint64_t) len, 8);
  }
  return rb_error (ENOTSUP, "%s: the header extensions have no end marker", img->path);
}

/* Rebuild the extension list of header h in the first sector: format
 * extension fmt (NULL: none) first, then the others but the feature table.
 * Returns the end of the list (after its end marker), 0 if it does not fit.
 */
static uint64_t
compact_extensions (struct rb_image *img, uint8_t *h, const struct layout *l, const char *fmt)
{
  uint8_t sec[SECTOR];
  uint64_t in = l->start, out = l->start, f = fmt ? strlen (fmt) : 0;

  memcpy (sec, h, l->start);
  memset (sec + l->start, 0, SECTOR - l->start);
  if (fmt) {
    if (out + 8 + ROUND_UP (f, 8) > SECTOR)
      return 0;
    put_be32 (sec + out, QCOW_EXT_BACKING_FORMAT);
    put_be32 (sec + out + 4, f);
    memcpy (sec + out + 8, fmt, f);
    out += 8 + ROUND_UP (f, 8);
  }
  while (in < l->end) {
    uint32_t type = get_be32 (h + in), len = get_be32 (h + in + 4);
    uint64_t size = 8 + ROUND_UP ((uint64_t) len, 8);
    if (type != QCOW_EXT_BACKING_FORMAT && type != QCOW_EXT_FEATURE_TABLE) {
      if (out + size > SECTOR)
        return 0;
      memcpy (sec + out, h + in, size);
      out += size;
    }
    in += size;
  }
  if (out + 8 > SECTOR)
    return 0;
  memcpy (h, sec, SECTOR);      /* end marker: zeros */
  return out + 8;
}

/* Lowest 8-aligned position at or after from where n bytes avoid the
 * intervals busy[0..nb) (pairs start, end) and fit in the cluster; 0 if none.
 */
static uint64_t
free_spot (struct rb_image *img, uint64_t from, uint64_t n, const uint64_t *busy, int nb)
{
  uint64_t pos = ROUND_UP (from, 8);
  int i;

 again:
  if (pos + n > img->cluster_size)
    return 0;
  for (i = 0; i < nb; i++)
    if (pos < busy[2 * i + 1] && busy[2 * i] < pos + n) {
      pos = ROUND_UP (busy[2 * i + 1], 8);
      goto again;
    }
  return pos;
}

/* Write bytes [from, to) of h at the same place in the file. */
static int
put (struct rb_image *img, const uint8_t *h, uint64_t from, uint64_t to)
{
  return to > from ? full_pwrite (img->fd, h + from, to - from, from, IO_HEADER_UPDATE) : 0;
}

/* Switch the backing name and format in the header (see above) and in memory. */
static int
set_backing (struct rb_image *img, const char *name, const char *fmt)
{
  const uint64_t cs = img->cluster_size;
  CLEANUP_FREE uint8_t *h = malloc (cs);
  uint64_t n = name ? strlen (name) : 0, f = fmt ? strlen (fmt) : 0, pos = 0, act_to;
  uint64_t old_pos = img->backing_file_offset, old_n = old_pos ? img->backing_file_size : 0;
  uint64_t busy[4];
  char *new_name = NULL, *new_fmt = NULL;
  bool same_fmt, inplace;
  struct layout l;

  if (n > QCOW_MAX_BACKING_NAME)
    return rb_error (EINVAL, "backing file name too long (%" PRIu64 " bytes, at most %d)",
                     n, QCOW_MAX_BACKING_NAME);
  if (!h)
    return rb_error (ENOMEM, "out of memory");
  if (full_pread (img->fd, h, cs, 0, IO_META_READ) == -1 || parse_layout (img, h, &l) == -1)
    return -1;
  same_fmt = !fmt || (l.fmt >= 0 && l.fmt_len == f && memcmp (h + l.fmt + 8, fmt, f) == 0);
  inplace = same_fmt ||
    (l.fmt >= 0 && ROUND_UP (l.fmt_len, 8) == ROUND_UP (f, 8) && l.fmt + 8 + ROUND_UP (f, 8) <= SECTOR);

  busy[0] = 0; busy[1] = l.end + 8;                 /* what the header reads now */
  busy[2] = old_pos; busy[3] = old_pos + old_n;
  if (inplace) {
    if (!same_fmt) {
      memset (h + l.fmt + 8, 0, ROUND_UP (f, 8));
      put_be32 (h + l.fmt + 4, f);
      memcpy (h + l.fmt + 8, fmt, f);
    }
    act_to = same_fmt ? HDR_BACKING_FILE_SIZE + 4 : l.fmt + 8 + ROUND_UP (f, 8);
    if (n && !(pos = free_spot (img, l.end + 8, n, busy, 2)))
      return rb_error (ENOSPC, "%s: no room in the header cluster for a %" PRIu64 "-byte name",
                       img->path, n);
  }
  else {
    uint64_t end = compact_extensions (img, h, &l, fmt);
    if (!end)
      return rb_error (ENOTSUP, "%s: the header extensions leave no room in the first sector "
                       "to change the backing format atomically", img->path);
    act_to = SECTOR;
    busy[0] = 0; busy[1] = MAX (l.end + 8, SECTOR);  /* the old list and the new sector */
    /* The name right after the new list, in the same write, if it fits. */
    if (n && end + n <= SECTOR && end + n <= cs)
      pos = end;
    else if (n && !(pos = free_spot (img, SECTOR, n, busy, 2)))
      return rb_error (ENOSPC, "%s: no room in the header cluster for a %" PRIu64 "-byte name",
                       img->path, n);
  }
  if (n)
    memcpy (h + pos, name, n);
  put_be64 (h + HDR_BACKING_FILE_OFFSET, pos);
  put_be32 (h + HDR_BACKING_FILE_SIZE, n);

  /* The name first where nothing reads it, then the one atomic write. */
  if ((n && pos >= act_to && (put (img, h, pos, pos + n) == -1 ||
                              file_sync (img->fd, IO_FLUSH) == -1)) ||
      put (img, h, HDR_BACKING_FILE_OFFSET, MIN (act_to, cs)) == -1 ||
      file_sync (img->fd, IO_FLUSH) == -1)
    return -1;

  if ((n && !(new_name = strdup (name))) || (fmt && !(new_fmt = strdup (fmt)))) {
    free (new_name);
    return rb_error (ENOMEM, "out of memory");
  }
  free (img->backing_file);
  img->backing_file = new_name;
  img->backing_file_offset = pos;
  img->backing_file_size = n;
  free (img->backing_format);
  img->backing_format = new_fmt;
  /* The extensions as they are now (bitmaps.c rewrites them from memory). */
  if (img->version >= 3) {
    size_t i;
    for (i = 0; i < img->nr_exts; i++)
      free (img->exts[i].data);
    img->nr_exts = 0;
    if (read_extensions (img, h, img->header_length, pos ? pos : cs) == -1)
      return -1;
    if (!fmt) {
      free (img->backing_format);   /* a stale extension: no name, no format */
      img->backing_format = NULL;
    }
  }
  return 0;
}

/* Read [off, off+len) as backing image b shows it (zeros past its end, or
 * with no backing image).
 */
static int
view_read (struct rb_image *b, void *buf, uint64_t len, uint64_t off)
{
  uint64_t n = b && off < b->size ? MIN (len, b->size - off) : 0;

  if (n && rb_pread (b, buf, n, off) == -1)
    return -1;
  memset ((uint8_t *) buf + n, 0, len - n);
  return 0;
}

/* The backing files' read-only mappings: the two views are compared where
 * the page cache holds them, without copying 2 x the disk into buffers
 * (copying was most of the time).  Anything not mapped is read instead.
 */
struct maps {
  unsigned n;
  struct {
    struct rb_image *img;
    uint8_t *p;                 /* NULL: could not be mapped */
    uint64_t len;
  } m[RB_MAX_CHAIN + 2];
};

/* The mapping of b's file (*len bytes), or NULL. */
static const uint8_t *
map_of (struct maps *ms, struct rb_image *b, uint64_t *len)
{
  unsigned i;
  uint64_t size;
  void *p;

  for (i = 0; i < ms->n; i++)
    if (ms->m[i].img == b) {
      *len = ms->m[i].len;
      return ms->m[i].p;
    }
  if (ms->n == sizeof ms->m / sizeof ms->m[0])
    return NULL;
  p = file_size (b->fd, &size) == 0 && size ? mmap (NULL, size, PROT_READ, MAP_SHARED, b->fd, 0)
    : MAP_FAILED;
  ms->m[ms->n].img = b;
  ms->m[ms->n].p = p == MAP_FAILED ? NULL : p;
  ms->m[ms->n].len = *len = p == MAP_FAILED ? 0 : size;
  return ms->m[ms->n++].p;
}

static void
maps_free (struct maps *ms)
{
  unsigned i;

  for (i = 0; i < ms->n; i++)
    if (ms->m[i].p)
      munmap (ms->m[i].p, ms->m[i].len);
}

/* Point *p at the first *n (1..len) bytes of backing image b's view at off
 * (len at most one chunk): into the mapping of the file holding them, into
 * zeros, or into scratch where they were read (compressed data, a short
 * last cluster, no mapping).  Returns 0 / -1.
 */
static int
view_at (struct maps *ms, struct rb_image *b, uint64_t off, uint64_t len,
         const uint8_t *zeros, uint8_t *scratch, const uint8_t **p, uint64_t *n)
{
  const uint8_t *m;
  uint64_t mlen;
  struct run r;
  int ret;

  for (;;) {
    if (!b || off >= b->size) {
      *p = zeros;
      *n = len;
      return 0;
    }
    len = MIN (len, b->size - off);
    r.kind = RUN_DATA;
    r.host_offset = off;
    r.length = len;
    if (!b->is_raw) {
      pthread_mutex_lock (&b->meta_lock);
      ret = map_run (b, off, len, &r);
      pthread_mutex_unlock (&b->meta_lock);
      if (ret == -1)
        return -1;
    }
    *n = r.length;
    if (r.kind == RUN_UNALLOC) {
      b = b->backing;
      len = r.length;
      continue;
    }
    if (r.kind == RUN_ZERO) {
      *p = zeros;
      return 0;
    }
    if (r.kind == RUN_DATA && (m = map_of (ms, b, &mlen)) && r.host_offset + r.length <= mlen) {
      *p = m + r.host_offset;
      return 0;
    }
    *p = scratch;
    return rb_pread (b, scratch, r.length, off);
  }
}

struct differ {
  struct rb_image *img, *ob;
  uint8_t *wbuf;
  uint64_t from, to;            /* granules found different, not written yet (from == to: none) */
};

/* Write what ob shows over [d->from, d->to) into img (zeros as zeros). */
static int
write_pending (struct differ *d)
{
  uint64_t len = d->to - d->from;
  int r;

  if (len == 0)
    return 0;
  if (view_read (d->ob, d->wbuf, len, d->from) == -1)
    return -1;
  r = is_zero (d->wbuf, len) ? rb_zero (d->img, len, d->from, 0)
    : rb_pwrite (d->img, d->wbuf, len, d->from, 0);
  d->from = d->to;
  return r;
}

/* Write the old view (backing image ob) into img where it differs from
 * the new one (nb), granule by granule (clusters, subclusters for extended
 * L2), merging neighbours into one request.  img->backing is nb meanwhile:
 * a zero written must hide nb, and copy-on-write fills the rest of a cluster
 * from nb, which shows there what ob shows (else it is written too).
 */
static int
copy_differences (struct rb_image *img, struct rb_image *ob, struct rb_image *nb,
                  rb_progress_fn fn, void *opaque)
{
  const uint64_t chunk = MAX (CHUNK, img->cluster_size), g = img->subcluster_size;
  CLEANUP_FREE uint8_t *so = aligned_alloc (4096, chunk);
  CLEANUP_FREE uint8_t *sn = aligned_alloc (4096, chunk);
  CLEANUP_FREE uint8_t *wbuf = aligned_alloc (4096, chunk);
  CLEANUP_FREE uint8_t *zeros = calloc (1, chunk);
  struct differ d = { .img = img, .ob = ob, .wbuf = wbuf };
  struct maps ms = { .n = 0 };
  uint64_t off = 0;
  int ret = 0;

  if (!so || !sn || !wbuf || !zeros)
    return rb_error (ENOMEM, "out of memory");
  while (ret == 0 && off < img->size) {
    uint64_t len = MIN (chunk - offset_in_cluster (img, off), img->size - off), pos, end;
    bool differs = false;
    struct run r;

    pthread_mutex_lock (&img->meta_lock);
    ret = map_run (img, off, len, &r);
    pthread_mutex_unlock (&img->meta_lock);
    if (ret == -1)
      break;
    end = off + r.length;
    d.from = d.to = off;
    /* Runs of both views, compared where they overlap; a granule is done
     * when its end is reached (it may span runs).
     */
    for (pos = off; r.kind == RUN_UNALLOC && ret == 0 && pos < end; ) {
      const uint8_t *po, *pn;
      uint64_t no, nn, m, a, b;
      if ((ret = view_at (&ms, ob, pos, end - pos, zeros, so, &po, &no)) == -1 ||
          (ret = view_at (&ms, nb, pos, end - pos, zeros, sn, &pn, &nn)) == -1)
        break;
      m = MIN (no, nn);
      for (a = pos; a < pos + m && ret == 0; a = b) {
        b = MIN (pos + m, ROUND_DOWN (a, g) + g);
        differs = differs || memcmp (po + (a - pos), pn + (a - pos), b - a) != 0;
        if (b % g != 0 && b != end)
          continue;               /* the granule goes on in the next run */
        if (differs)
          d.to = b;
        else
          ret = write_pending (&d), d.from = d.to = b;
        differs = false;
      }
      pos += m;
    }
    if (ret == 0)
      ret = write_pending (&d);
    off = end;
    if (fn)
      fn (opaque, off, img->size);
  }
  maps_free (&ms);
  return ret == -1 ? -1 : rb_flush (img);
}

int
rb_rebase (struct rb_image *img, const char *backing, const char *format, unsigned flags,
           rb_progress_fn fn, void *opaque)
{
  CLEANUP_FREE char *path = NULL;
  struct rb_image *nb = NULL, *ob = NULL;
  int q = -1, r;

  if (img->is_raw || img->readonly)
    return rb_error (EROFS, "%s: the image to rebase must be a qcow2 image open for writing",
                     img->path);
  if (backing && !*backing)
    backing = NULL;
  if (format && strcmp (format, "raw") != 0 && strcmp (format, "qcow2") != 0)
    return rb_error (ENOTSUP, "unsupported backing format \"%s\" (raw or qcow2)", format);
  if (!(flags & RB_REBASE_UNSAFE) && img->backing_file && !img->backing)
    return rb_error (EINVAL, "%s: the old backing file is not open: a safe rebase reads it",
                     img->path);
  if (backing) {
    if (!(path = backing_resolve (img, backing)))
      return rb_error (ENOMEM, "out of memory");
    q = rb_probe_qcow2 (path);
    if (!format && q == -1)
      return rb_error (rb_errno (), "%s (give its format to record it without opening it)",
                       rb_errmsg ());
    if (!format)
      format = q ? "qcow2" : "raw";
  }
  if (!(flags & RB_REBASE_UNSAFE)) {
    if (backing && !(nb = image_open_below (img, path, strcmp (format, "raw") == 0)))
      return -1;
    ob = img->backing;
    img->backing = nb;
    if (copy_differences (img, ob, nb, fn, opaque) == -1) {
      img->backing = ob;
      rb_close (nb);
      return -1;
    }
  }
  if (txn_lock (img) == -1)
    r = -1;
  else {
    r = prepare_first_write (img);
    if (r == 0)
      r = set_backing (img, backing, backing ? format : NULL);
    txn_unlock (img);
  }
  if (!(flags & RB_REBASE_UNSAFE)) {
    /* Failed: the header still names the old file, so does memory. */
    if (r == -1) {
      img->backing = ob;
      ob = nb;
    }
    rb_close (ob);
  }
  return r;
}
