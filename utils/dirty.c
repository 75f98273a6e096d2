/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * What a dirty bitmap says changed, read with several requests in flight (rb-delta --bitmap).
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libnbd.h>

#include "common.h"
#include "dirty.h"
#include "pairscan.h"
#include "source.h"

#define CHUNK_MAX    (1u << 20)    /* bytes per read */
#define WINDOW       64            /* chunks read ahead of the one handed out */
#define NBD_INFLIGHT 16            /* requests in flight per connection */
#define MAX_THREADS  16

enum { CHUNK_PENDING, CHUNK_READING, CHUNK_DONE };

struct chunk {
  uint64_t off, len;
  bool zero;                       /* reads as zeros: not read */
  int state;
  uint8_t *buf;
  int err;                         /* after a failed read */
  char *msg;
};

struct dirty_scan {
  char *name;
  char *context;                   /* "qemu:dirty-bitmap:NAME" (NBD) */
  struct rb_image *img;            /* qcow2 */
  struct nbd_handle **h;           /* NBD: one handle per connection */
  unsigned nh;
  unsigned workers;
  uint64_t size, unit, total;

  struct extent_list runs;         /* dirty, unit-aligned, merged */
  struct chunk *c;
  size_t nc, alloc;

  pthread_mutex_t lock;            /* the fields below and every chunk's state */
  pthread_cond_t cond;
  size_t next;                     /* the next chunk a worker takes */
  size_t committed;                /* chunks handed to the caller */
  bool stop;
};

/* ---- the dirty ranges ---- */

/* Add [off, off+len) rounded out to the unit (and cut at the disk's end);
 * ranges arrive in increasing order, so a rounded one can only meet the last.
 */
static int
add_dirty (struct dirty_scan *ds, uint64_t off, uint64_t len)
{
  uint64_t s = off / ds->unit * ds->unit, e = MIN_U64 (ROUND_UP_U64 (off + len, ds->unit), ds->size);
  struct extent_list *r = &ds->runs;

  if (r->n && s < r->start[r->n - 1] + r->len[r->n - 1]) {
    uint64_t last = r->start[r->n - 1] + r->len[r->n - 1];
    if (e <= last)
      return 0;
    s = last;
  }
  return extent_list_add (r, s, e - s);
}

/* rb_bitmap_extents callback. */
static int
qcow2_dirty (void *opaque, uint64_t offset, uint64_t length, bool dirty)
{
  return dirty ? add_dirty (opaque, offset, length) : 0;
}

/* The checks on a local bitmap: it must exist, be consistent, enabled (it
 * recorded every write up to now) and readable.
 */
static int
check_bitmap (struct dirty_scan *ds, const char *name)
{
  struct rb_bitmap_info *v;
  size_t nr, i;
  int r = -1;

  if (rb_bitmap_list (ds->img, false, &v, &nr) == -1)
    return source_error_prefixed (ds->name);
  for (i = 0; i < nr && strcmp (v[i].name, name) != 0; i++)
    ;
  if (i == nr)
    rb_error (ENOENT, "%s: no bitmap named '%s'", ds->name, name);
  else if (v[i].flags & RB_BITMAP_IN_USE)
    rb_error (EBUSY, "%s: bitmap '%s' is in use (inconsistent: a program writing the image "
              "is running, or was killed): it may miss writes", ds->name, name);
  else if (!v[i].supported)
    rb_error (ENOTSUP, "%s: bitmap '%s' cannot be used: its granularity (%" PRIu64
              " bytes) or kind is not one rblock reads", ds->name, name, v[i].granularity);
  else if (!(v[i].flags & RB_BITMAP_AUTO))
    rb_error (EINVAL, "%s: bitmap '%s' is disabled: the writes since it was disabled are "
              "not in it (enable it with rb-bitmap --enable to record from now on)", ds->name, name);
  else
    r = 0;
  free (v);
  return r;
}

static int add_piece (struct dirty_scan *ds, uint64_t off, uint64_t len, bool zero);

/* Cutting one dirty run (unit-aligned) into unit-aligned pieces: the units
 * that read as zeros all through, and the others (read: even a unit only
 * partly data is data).  Extents arrive in order, covering the run.
 */
struct run_cut {
  struct dirty_scan *ds;
  uint64_t cursor, end;            /* what is not yet a piece */
};

static int
cut_extent (struct run_cut *rc, uint64_t off, uint64_t len, bool zero)
{
  struct dirty_scan *ds = rc->ds;
  uint64_t zs, ze;

  if (!zero)
    return 0;
  zs = ROUND_UP_U64 (off, ds->unit);
  ze = off + len >= ds->size ? ds->size : (off + len) / ds->unit * ds->unit;
  if (ze > rc->end)
    ze = rc->end;
  if (ze <= zs)
    return 0;
  if (zs > rc->cursor && add_piece (ds, rc->cursor, zs - rc->cursor, false) == -1)
    return -1;
  rc->cursor = ze;
  return add_piece (ds, zs, ze - zs, true);
}

/* The rest of the run after its last zero units. */
static int
cut_end (struct run_cut *rc)
{
  return rc->end > rc->cursor ? add_piece (rc->ds, rc->cursor, rc->end - rc->cursor, false) : 0;
}

/* rb_extents callback. */
static int
qcow2_piece (void *opaque, uint64_t offset, uint64_t length, uint32_t type)
{
  return cut_extent (opaque, offset, length, type & RB_EXTENT_ZERO);
}

static int
open_qcow2 (struct dirty_scan *ds, const struct dirty_opts *o)
{
  struct rb_open_opts oo = { .flags = RB_OPEN_RDONLY | (o->no_lock ? RB_OPEN_NO_LOCK : 0) };
  size_t i;

  if (!(ds->img = rb_open (ds->name, &oo)))
    return source_error_prefixed (ds->name);
  ds->size = rb_get_size (ds->img);
  if (check_bitmap (ds, o->bitmap) == -1 ||
      rb_bitmap_extents (ds->img, o->bitmap, 0, ds->size, qcow2_dirty, ds) == -1)
    return -1;
  for (i = 0; i < ds->runs.n; i++) {
    struct run_cut rc = { ds, ds->runs.start[i], ds->runs.start[i] + ds->runs.len[i] };
    if (rb_extents (ds->img, ds->runs.len[i], ds->runs.start[i], qcow2_piece, &rc) == -1)
      return source_error_prefixed (ds->name);
    if (cut_end (&rc) == -1)
      return -1;
  }
  return 0;
}

/* nbd_status_walk callbacks: qemu:dirty-bitmap (bit 0: dirty) and
 * base:allocation (LIBNBD_STATE_ZERO: reads as zeros).
 */
static int
nbd_dirty (void *opaque, uint64_t offset, uint64_t length, uint32_t flags)
{
  return (flags & 1) ? add_dirty (opaque, offset, length) : 0;
}

static int
nbd_piece (void *opaque, uint64_t offset, uint64_t length, uint32_t flags)
{
  return cut_extent (opaque, offset, length, flags & LIBNBD_STATE_ZERO);
}

/* Connect handle k (not the first): a server that takes fewer clients
 * leaves the connection waiting, so give up after CONNECT_WAIT seconds.
 */
#define CONNECT_WAIT 10
static int
connect_more (struct dirty_scan *ds, unsigned k)
{
  struct nbd_handle *h = ds->h[k];
  int waited = 0;

  if (nbd_aio_connect_uri (h, ds->name) == -1)
    return nbd_failed (ds->name);
  while (!nbd_aio_is_ready (h)) {
    int r;
    if (nbd_aio_is_dead (h) || nbd_aio_is_closed (h))
      return nbd_failed (ds->name);
    if ((r = nbd_poll (h, 1000)) == -1)
      return nbd_failed (ds->name);
    if (r == 0 && ++waited >= CONNECT_WAIT)
      return rb_error (ETIMEDOUT, "%s: connection %u of %u not served within %d s (the server "
                       "takes fewer clients: give fewer --connections, or qemu-nbd --shared=%u)",
                       ds->name, k + 1, ds->nh, CONNECT_WAIT, ds->nh);
  }
  return 0;
}

static int
open_nbd (struct dirty_scan *ds, const struct dirty_opts *o)
{
  unsigned k;
  size_t i;
  int64_t size;

  if (asprintf (&ds->context, "qemu:dirty-bitmap:%s", o->bitmap) == -1)
    return rb_error (ENOMEM, "out of memory");
  ds->nh = o->connections ? o->connections : 1;
  ds->h = calloc (ds->nh, sizeof *ds->h);
  if (!ds->h)
    return rb_error (ENOMEM, "out of memory");
  for (k = 0; k < ds->nh; k++) {
    if (!(ds->h[k] = nbd_create ()) ||
        nbd_add_meta_context (ds->h[k], LIBNBD_CONTEXT_BASE_ALLOCATION) == -1 ||
        nbd_add_meta_context (ds->h[k], ds->context) == -1)
      return nbd_failed (ds->name);
    if (k == 0 ? nbd_connect_uri (ds->h[k], ds->name) == -1 : connect_more (ds, k) == -1)
      return k == 0 ? nbd_failed (ds->name) : -1;
  }
  if (nbd_can_meta_context (ds->h[0], ds->context) != 1)
    return rb_error (ENOENT, "%s: the server offers no bitmap '%s' (no meta context %s; "
                     "qemu-nbd -B %s offers it)", ds->name, o->bitmap, ds->context, o->bitmap);
  if ((size = nbd_get_size (ds->h[0])) == -1)
    return nbd_failed (ds->name);
  ds->size = size;
  if (nbd_status_walk (ds->h[0], ds->name, ds->context, 0, ds->size, nbd_dirty, ds) == -1)
    return -1;
  for (i = 0; i < ds->runs.n; i++) {
    struct run_cut rc = { ds, ds->runs.start[i], ds->runs.start[i] + ds->runs.len[i] };
    if (nbd_can_meta_context (ds->h[0], LIBNBD_CONTEXT_BASE_ALLOCATION) == 1 &&
        nbd_status_walk (ds->h[0], ds->name, LIBNBD_CONTEXT_BASE_ALLOCATION, ds->runs.start[i],
                         ds->runs.len[i], nbd_piece, &rc) == -1)
      return -1;
    if (cut_end (&rc) == -1)
      return -1;
  }
  return 0;
}

/* ---- the pieces ---- */

/* Append [off, off+len) as chunks of at most CHUNK_MAX (zeros: one chunk). */
static int
add_piece (struct dirty_scan *ds, uint64_t off, uint64_t len, bool zero)
{
  while (len > 0) {
    uint64_t n = zero ? len : MIN_U64 (len, CHUNK_MAX);
    struct chunk *c;

    if (ds->nc && ds->c[ds->nc - 1].zero && zero &&
        ds->c[ds->nc - 1].off + ds->c[ds->nc - 1].len == off) {
      ds->c[ds->nc - 1].len += n;          /* zeros next to zeros */
    }
    else {
      if (ds->nc == ds->alloc) {
        size_t a = ds->alloc ? ds->alloc * 2 : 64;
        void *p = realloc (ds->c, a * sizeof *ds->c);
        if (!p)
          return rb_error (ENOMEM, "out of memory");
        ds->c = p;
        ds->alloc = a;
      }
      c = &ds->c[ds->nc++];
      memset (c, 0, sizeof *c);
      c->off = off;
      c->len = n;
      c->zero = zero;
    }
    ds->total += n;
    off += n;
    len -= n;
  }
  return 0;
}

struct dirty_scan *
dirty_open (const char *new_name, const struct dirty_opts *o)
{
  struct dirty_scan *ds = calloc (1, sizeof *ds);
  int r;

  if (!ds || !(ds->name = strdup (new_name))) {
    free (ds);
    rb_error (ENOMEM, "out of memory");
    return NULL;
  }
  pthread_mutex_init (&ds->lock, NULL);
  pthread_cond_init (&ds->cond, NULL);
  ds->unit = o->unit;
  r = source_is_uri (new_name) ? open_nbd (ds, o) : open_qcow2 (ds, o);
  if (r == -1) {
    dirty_close (ds);
    return NULL;
  }
  if (ds->h)
    ds->workers = ds->nh;
  else
    ds->workers = threads_wanted (o->threads, 4, MAX_THREADS);
  return ds;
}

uint64_t
dirty_disk_size (const struct dirty_scan *ds)
{
  return ds->size;
}

uint64_t
dirty_total (const struct dirty_scan *ds)
{
  return ds->total;
}

uint64_t
dirty_max_clusters (const struct dirty_scan *ds, uint64_t cluster_size)
{
  uint64_t n = 0;
  size_t i;

  for (i = 0; i < ds->runs.n; i++)
    n += (ds->runs.start[i] + ds->runs.len[i] - 1) / cluster_size - ds->runs.start[i] / cluster_size + 1;
  return n;
}

/* ---- reading ---- */

struct worker {
  struct dirty_scan *ds;
  unsigned k;
  unsigned inflight;
};

/* Take the next chunk to read (zero chunks are done at once), waiting while
 * the window is full.  Returns its index, or -1 when there is none (or the
 * run stopped).  With `wait` false, returns -1 instead of waiting.
 */
static ssize_t
take_chunk (struct dirty_scan *ds, bool wait)
{
  ssize_t i = -1;

  pthread_mutex_lock (&ds->lock);
  for (;;) {
    while (!ds->stop && ds->next < ds->nc && ds->c[ds->next].zero) {
      ds->c[ds->next++].state = CHUNK_DONE;
      pthread_cond_broadcast (&ds->cond);
    }
    if (ds->stop || ds->next >= ds->nc)
      break;
    if (ds->next < ds->committed + WINDOW) {
      i = ds->next++;
      ds->c[i].state = CHUNK_READING;
      break;
    }
    if (!wait)
      break;
    pthread_cond_wait (&ds->cond, &ds->lock);
  }
  pthread_mutex_unlock (&ds->lock);
  return i;
}

/* Mark chunk i read (err 0) or failed, with the message of this thread. */
static void
chunk_done (struct dirty_scan *ds, size_t i, int err)
{
  pthread_mutex_lock (&ds->lock);
  ds->c[i].err = err;
  if (err && !ds->c[i].msg)
    ds->c[i].msg = strdup (rb_errmsg ());
  ds->c[i].state = CHUNK_DONE;
  pthread_cond_broadcast (&ds->cond);
  pthread_mutex_unlock (&ds->lock);
}

/* A qcow2 reader thread: whole chunks through the engine. */
static void *
qcow2_worker (void *arg)
{
  struct worker *w = arg;
  struct dirty_scan *ds = w->ds;
  ssize_t i;

  while ((i = take_chunk (ds, true)) >= 0) {
    struct chunk *c = &ds->c[i];
    int err = 0;
    if (!(c->buf = malloc (c->len))) {
      rb_error (ENOMEM, "out of memory");
      err = ENOMEM;
    }
    else if (rb_pread (ds->img, c->buf, c->len, c->off) == -1) {
      source_error_prefixed (ds->name);
      err = rb_errno () ? rb_errno () : EIO;
    }
    chunk_done (ds, i, err);
  }
  return NULL;
}

struct nbd_req {
  struct worker *w;
  size_t i;
};

/* Completion of one NBD read (inside nbd_poll, on the worker's thread). */
static int
nbd_read_done (void *user_data, int *error)
{
  struct nbd_req *q = user_data;
  struct dirty_scan *ds = q->w->ds;

  if (*error)
    rb_error (*error, "%s: read of %" PRIu64 " bytes at offset %" PRIu64 " failed: %s",
              ds->name, ds->c[q->i].len, ds->c[q->i].off, strerror (*error));
  chunk_done (ds, q->i, *error);
  q->w->inflight--;
  free (q);
  return 1;
}

/* An NBD reader thread: its own connection, several reads in flight. */
static void *
nbd_worker (void *arg)
{
  struct worker *w = arg;
  struct dirty_scan *ds = w->ds;
  struct nbd_handle *h = ds->h[w->k];

  for (;;) {
    ssize_t i = -1;
    while (w->inflight < NBD_INFLIGHT && (i = take_chunk (ds, w->inflight == 0)) >= 0) {
      struct chunk *c = &ds->c[i];
      struct nbd_req *q = malloc (sizeof *q);
      nbd_completion_callback cb = { .callback = nbd_read_done, .user_data = q };
      if (!q || !(c->buf = malloc (c->len))) {
        free (q);
        rb_error (ENOMEM, "out of memory");
        chunk_done (ds, i, ENOMEM);
        continue;
      }
      q->w = w;
      q->i = i;
      w->inflight++;
      if (nbd_aio_pread (h, c->buf, c->len, c->off, cb, 0) == -1) {
        nbd_failed (ds->name);
        w->inflight--;
        free (q);
        chunk_done (ds, i, rb_errno ());
      }
    }
    if (w->inflight == 0)
      break;                    /* nothing in flight and nothing to take */
    if (nbd_poll (h, -1) == -1) {
      nbd_failed (ds->name);
      pthread_mutex_lock (&ds->lock);
      ds->stop = true;
      pthread_cond_broadcast (&ds->cond);
      pthread_mutex_unlock (&ds->lock);
      break;
    }
  }
  return NULL;
}

int
dirty_run (struct dirty_scan *ds, dirty_fn fn, void *opaque)
{
  pthread_t tid[MAX_THREADS];
  struct worker w[MAX_THREADS];
  unsigned k, started = 0;
  size_t i;
  int r = 0;

  for (k = 0; k < ds->workers; k++) {
    w[k] = (struct worker) { ds, k, 0 };
    if (pthread_create (&tid[k], NULL, ds->h ? nbd_worker : qcow2_worker, &w[k]) != 0)
      break;
    started++;
  }
  if (!started)
    return rb_error (EAGAIN, "cannot start a reader thread");
  for (i = 0; i < ds->nc && r == 0; i++) {
    struct chunk *c = &ds->c[i];
    pthread_mutex_lock (&ds->lock);
    while (c->state != CHUNK_DONE && !ds->stop)
      pthread_cond_wait (&ds->cond, &ds->lock);
    pthread_mutex_unlock (&ds->lock);
    if (c->state != CHUNK_DONE)
      r = rb_error (EIO, "%s: the NBD connection failed", ds->name);
    else if (c->err)
      r = rb_error (c->err, "%s", c->msg ? c->msg : "read failed");
    else
      r = fn (opaque, c->off, c->len, c->zero ? NULL : c->buf);
    free (c->buf);
    c->buf = NULL;
    pthread_mutex_lock (&ds->lock);
    ds->committed = i + 1;
    if (r == -1)
      ds->stop = true;
    pthread_cond_broadcast (&ds->cond);
    pthread_mutex_unlock (&ds->lock);
  }
  pthread_mutex_lock (&ds->lock);
  ds->stop = true;
  pthread_cond_broadcast (&ds->cond);
  pthread_mutex_unlock (&ds->lock);
  for (k = 0; k < started; k++)
    pthread_join (tid[k], NULL);
  return r;
}

void
dirty_close (struct dirty_scan *ds)
{
  size_t i;
  unsigned k;

  if (!ds)
    return;
  for (i = 0; i < ds->nc; i++) {
    free (ds->c[i].buf);
    free (ds->c[i].msg);
  }
  free (ds->c);
  for (k = 0; ds->h && k < ds->nh; k++)
    if (ds->h[k]) {
      nbd_shutdown (ds->h[k], 0);
      nbd_close (ds->h[k]);
    }
  free (ds->h);
  rb_close (ds->img);
  extent_list_free (&ds->runs);
  pthread_mutex_destroy (&ds->lock);
  pthread_cond_destroy (&ds->cond);
  free (ds->context);
  free (ds->name);
  free (ds);
}
