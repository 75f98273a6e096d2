/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * NBD inputs and outputs through libnbd: asynchronous reads and writes, block status for holes.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libnbd.h>

#include "source-internal.h"

struct source_nbd {
  struct nbd_handle *h;
  bool base_allocation;            /* the server answers block status */
  uint64_t max_request;            /* bytes per read request */
  pthread_mutex_t read_lock;       /* source_pread callers take turns (one poller at a time) */
};

/* Record "uri: <libnbd's last error, first line>" with libnbd's errno.  Returns -1. */
int
nbd_failed (const char *uri)
{
  const char *msg = nbd_get_error ();
  int err = nbd_get_errno ();
  int len;

  if (!msg)
    msg = "unknown NBD error";
  len = strcspn (msg, "\n");
  return rb_error (err ? err : EIO, "%s: %.*s", uri, len, msg);
}

/* Connect a handle to uri, asking for base:allocation.  NULL on error. */
static struct nbd_handle *
connect_uri (const char *uri)
{
  struct nbd_handle *h = nbd_create ();

  if (!h) {
    nbd_failed (uri);
    return NULL;
  }
  if (nbd_add_meta_context (h, LIBNBD_CONTEXT_BASE_ALLOCATION) == -1 ||
      nbd_connect_uri (h, uri) == -1) {
    nbd_failed (uri);
    nbd_close (h);
    return NULL;
  }
  return h;
}

/* Largest request the server takes, capped to ours. */
static uint64_t
request_limit (struct nbd_handle *h)
{
  int64_t max = nbd_get_block_size (h, LIBNBD_SIZE_MAXIMUM);

  if (max > 0 && (uint64_t) max < NBD_MAX_REQUEST)
    return max;
  return NBD_MAX_REQUEST;
}

/* Connect s->name; fill s->nbd and s->size.  0 / -1. */
int
nbdsrc_open (struct source *s)
{
  int64_t size;

  s->nbd = calloc (1, sizeof *s->nbd);
  if (!s->nbd)
    return rb_error (ENOMEM, "%s: out of memory", s->name);
  pthread_mutex_init (&s->nbd->read_lock, NULL);
  s->nbd->h = connect_uri (s->name);
  if (!s->nbd->h)
    return -1;
  size = nbd_get_size (s->nbd->h);
  if (size == -1)
    return nbd_failed (s->name);
  s->size = size;
  s->nbd->base_allocation =
    nbd_can_meta_context (s->nbd->h, LIBNBD_CONTEXT_BASE_ALLOCATION) == 1;
  s->nbd->max_request = request_limit (s->nbd->h);
  return 0;
}

/* Disconnect and free s->nbd. */
void
nbdsrc_close (struct source *s)
{
  if (s->nbd->h) {
    nbd_shutdown (s->nbd->h, 0);
    nbd_close (s->nbd->h);
  }
  pthread_mutex_destroy (&s->nbd->read_lock);
  free (s->nbd);
  s->nbd = NULL;
}

/* Called once when every request of a group completed (err 0 or the first errno). */
typedef void (*nbdsrc_done_fn) (void *opaque, int err);

/* A group of requests that ends with one call of done. */
struct group {
  unsigned pending;                /* requests not yet completed */
  bool issuing;                    /* more requests may still be added */
  int err;                         /* first error */
  nbdsrc_done_fn done;
  void *opaque;
};

/* Call done once the group is complete and nothing more is being added. */
static void
group_maybe_done (struct group *g)
{
  if (g->pending == 0 && !g->issuing) {
    g->done (g->opaque, g->err);
    free (g);
  }
}

/* Completion callback of one request of a group (runs inside libnbd). */
static int
group_request_done (void *user_data, int *error)
{
  struct group *g = user_data;

  if (*error && !g->err)
    g->err = *error;
  g->pending--;
  group_maybe_done (g);
  return 1;                        /* retire the command */
}

/* Start reading [offset, offset+count) into buf as several requests.  0 / -1. */
static int
nbdsrc_aio_read (struct source *s, void *buf, size_t count, uint64_t offset,
                 nbdsrc_done_fn done, void *opaque)
{
  struct source_nbd *n = s->nbd;
  struct group *g = calloc (1, sizeof *g);
  char *p = buf;
  int ret = 0;

  if (!g)
    return rb_error (ENOMEM, "%s: out of memory", s->name);
  g->done = done;
  g->opaque = opaque;
  g->issuing = true;
  while (count > 0) {
    size_t len = count < n->max_request ? count : n->max_request;
    nbd_completion_callback cb = { .callback = group_request_done, .user_data = g };

    g->pending++;
    if (nbd_aio_pread (n->h, p, len, offset, cb, 0) == -1) {
      g->pending--;
      ret = nbd_failed (s->name);
      if (!g->err)
        g->err = errno;
      break;
    }
    p += len;
    offset += len;
    count -= len;
  }
  g->issuing = false;
  if (ret == -1 && g->pending == 0) {
    free (g);                      /* nothing in flight: the caller sees -1 only */
    return -1;
  }
  group_maybe_done (g);            /* on a failed start, done reports the error */
  return 0;
}

/* Wait for activity on the connection.  0 / -1. */
static int
nbdsrc_poll (struct source *s)
{
  if (nbd_poll (s->nbd->h, -1) == -1)
    return nbd_failed (s->name);
  return 0;
}

struct sync_read {
  bool finished;
  int err;
};

/* done callback of a synchronous read. */
static void
sync_read_done (void *opaque, int err)
{
  struct sync_read *r = opaque;

  r->err = err;
  r->finished = true;
}

/* Read count bytes at offset with several requests in flight.  0 / -1. */
static int
pread_locked (struct source *s, void *buf, size_t count, uint64_t offset)
{
  struct sync_read *r = calloc (1, sizeof *r);
  size_t step = s->nbd->max_request * NBD_MAX_INFLIGHT;
  char *p = buf;

  if (!r)
    return rb_error (ENOMEM, "%s: out of memory", s->name);
  while (count > 0) {
    size_t len = count < step ? count : step;

    r->finished = false;
    if (nbdsrc_aio_read (s, p, len, offset, sync_read_done, r) == -1) {
      free (r);
      return -1;
    }
    while (!r->finished)
      if (nbdsrc_poll (s) == -1)
        return -1;                 /* r may still be referenced: leave it */
    if (r->err) {
      int err = r->err;
      free (r);
      return rb_error (err, "%s: read error at offset %" PRIu64 ": %s",
                       s->name, offset, strerror (err));
    }
    p += len;
    offset += len;
    count -= len;
  }
  free (r);
  return 0;
}

/* Read count bytes at offset with several requests in flight; callers on
 * several threads take turns (two threads polling one handle could each wait
 * for a reply the other consumed).  0 / -1.
 */
int
nbdsrc_pread (struct source *s, void *buf, size_t count, uint64_t offset)
{
  int r;

  pthread_mutex_lock (&s->nbd->read_lock);
  r = pread_locked (s, buf, count, offset);
  pthread_mutex_unlock (&s->nbd->read_lock);
  return r;
}

struct status_walk {
  const char *context;             /* the meta context to read */
  nbd_status_fn fn;
  void *opaque;
  uint64_t pos, end;               /* next offset expected, end of the request */
  bool stopped;
};

/* Block status callback: the walk's context's entries to fn. */
static int
status_entries (void *user_data, const char *metacontext, uint64_t offset,
                uint32_t *entries, size_t nr_entries, int *error)
{
  struct status_walk *w = user_data;
  size_t i;

  (void) offset;
  if (strcmp (metacontext, w->context) != 0)
    return 0;
  for (i = 0; i + 1 < nr_entries && w->pos < w->end; i += 2) {
    uint64_t len = entries[i];

    if (len == 0)
      break;
    if (len > w->end - w->pos)
      len = w->end - w->pos;
    if (w->fn (w->opaque, w->pos, len, entries[i + 1]) == -1) {
      w->stopped = true;
      *error = errno ? errno : EIO;
      return -1;
    }
    w->pos += len;
  }
  return 0;
}

int
nbd_status_walk (struct nbd_handle *h, const char *name, const char *context,
                 uint64_t offset, uint64_t count, nbd_status_fn fn, void *opaque)
{
  uint64_t end = offset + count;

  while (offset < end) {
    uint64_t len = end - offset < (1u << 30) ? end - offset : (1u << 30);
    struct status_walk w = { context, fn, opaque, offset, offset + len, false };
    nbd_extent_callback cb = { .callback = status_entries, .user_data = &w };

    if (nbd_block_status (h, len, offset, cb, 0) == -1)
      return w.stopped ? -1 : nbd_failed (name);
    if (w.pos == offset)
      return rb_error (EIO, "%s: the server's block status made no progress at offset %"
                       PRIu64, name, offset);
    offset = w.pos;
  }
  return 0;
}

struct kinds {
  source_extent_fn fn;
  void *opaque;
};

/* base:allocation flags to extent kinds. */
static int
to_kind (void *opaque, uint64_t offset, uint64_t length, uint32_t flags)
{
  struct kinds *k = opaque;
  int kind = SOURCE_DATA;

  if (flags & LIBNBD_STATE_ZERO)
    kind = SOURCE_ZERO | ((flags & LIBNBD_STATE_HOLE) ? SOURCE_HOLE : 0);
  return k->fn (k->opaque, offset, length, kind);
}

/* Extents by block status, one request after the other.  0 / -1. */
int
nbdsrc_extents (struct source *s, uint64_t offset, uint64_t count,
                source_extent_fn fn, void *opaque)
{
  struct kinds k = { fn, opaque };

  if (!s->nbd->base_allocation)
    return fn (opaque, offset, count, SOURCE_DATA);
  return nbd_status_walk (s->nbd->h, s->name, LIBNBD_CONTEXT_BASE_ALLOCATION, offset, count,
                          to_kind, &k);
}

/* ---- sinks ---- */

struct sink {
  char *uri;
  struct nbd_handle *h;
  uint64_t size;
  bool can_zero;
  int err;                         /* first failed write */
  uint64_t err_offset;
};

struct write_req {
  struct sink *k;
  uint64_t offset;
  void *copy;                      /* owned; NULL for zero requests */
};

/* Completion of an asynchronous write or zero: free the copy, keep the first error. */
static int
write_done (void *user_data, int *error)
{
  struct write_req *w = user_data;

  if (*error && !w->k->err) {
    w->k->err = *error;
    w->k->err_offset = w->offset;
  }
  free (w->copy);
  free (w);
  return 1;
}

/* Record the sink's first write error, if any.  0 / -1. */
static int
sink_check (struct sink *k)
{
  if (k->err)
    return rb_error (k->err, "%s: write error at offset %" PRIu64 ": %s",
                     k->uri, k->err_offset, strerror (k->err));
  return 0;
}

/* Poll until fewer than max requests are in flight.  0 / -1. */
static int
sink_drain (struct sink *k, int max)
{
  while (nbd_aio_in_flight (k->h) > max)
    if (nbd_poll (k->h, -1) == -1)
      return nbd_failed (k->uri);
  return sink_check (k);
}

/* Connect to a writable export. */
struct sink *
sink_open (const char *uri)
{
  struct sink *k = calloc (1, sizeof *k);
  int64_t size;

  if (!k || !(k->uri = strdup (uri))) {
    free (k);
    rb_error (ENOMEM, "%s: out of memory", uri);
    return NULL;
  }
  if (!source_is_uri (uri)) {
    rb_error (EINVAL, "%s: not an NBD URI", uri);
    goto err;
  }
  k->h = nbd_create ();
  if (!k->h || nbd_connect_uri (k->h, uri) == -1) {
    nbd_failed (uri);
    goto err;
  }
  if (nbd_is_read_only (k->h) == 1) {
    rb_error (EROFS, "%s: the export is read-only", uri);
    goto err;
  }
  size = nbd_get_size (k->h);
  if (size == -1) {
    nbd_failed (uri);
    goto err;
  }
  k->size = size;
  k->can_zero = nbd_can_zero (k->h) == 1;
  return k;

 err:
  if (k->h)
    nbd_close (k->h);
  free (k->uri);
  free (k);
  return NULL;
}

/* The export's size in bytes. */
uint64_t
sink_size (const struct sink *k)
{
  return k->size;
}

/* Copy and send [offset, offset+count) as requests in flight.  0 / -1. */
int
sink_pwrite (struct sink *k, const void *buf, size_t count, uint64_t offset)
{
  const char *p = buf;

  if (offset > k->size || count > k->size - offset)
    return rb_error (ENOSPC, "%s: write past the end of the export (%" PRIu64 " bytes)",
                     k->uri, k->size);
  while (count > 0) {
    size_t len = count < NBD_MAX_REQUEST ? count : NBD_MAX_REQUEST;
    struct write_req *w = malloc (sizeof *w);
    nbd_completion_callback cb = { .callback = write_done, .user_data = w };

    if (sink_drain (k, NBD_MAX_INFLIGHT - 1) == -1)
      return -1;
    if (!w || !(w->copy = malloc (len))) {
      free (w);
      return rb_error (ENOMEM, "%s: out of memory", k->uri);
    }
    w->k = k;
    w->offset = offset;
    memcpy (w->copy, p, len);
    if (nbd_aio_pwrite (k->h, w->copy, len, offset, cb, 0) == -1) {
      free (w->copy);
      free (w);
      return nbd_failed (k->uri);
    }
    p += len;
    offset += len;
    count -= len;
  }
  return sink_check (k);
}

/* Zero [offset, offset+count).  0 / -1. */
int
sink_zero (struct sink *k, uint64_t count, uint64_t offset)
{
  static const char zeros[65536];

  if (offset > k->size || count > k->size - offset)
    return rb_error (ENOSPC, "%s: write past the end of the export (%" PRIu64 " bytes)",
                     k->uri, k->size);
  if (!k->can_zero) {
    while (count > 0) {
      size_t len = count < sizeof zeros ? count : sizeof zeros;
      if (sink_pwrite (k, zeros, len, offset) == -1)
        return -1;
      offset += len;
      count -= len;
    }
    return 0;
  }
  while (count > 0) {
    uint64_t len = count < (1u << 30) ? count : (1u << 30);
    struct write_req *w = calloc (1, sizeof *w);
    nbd_completion_callback cb = { .callback = write_done, .user_data = w };

    if (!w)
      return rb_error (ENOMEM, "%s: out of memory", k->uri);
    if (sink_drain (k, NBD_MAX_INFLIGHT - 1) == -1) {
      free (w);
      return -1;
    }
    w->k = k;
    w->offset = offset;
    if (nbd_aio_zero (k->h, len, offset, cb, 0) == -1) {
      free (w);
      return nbd_failed (k->uri);
    }
    offset += len;
    count -= len;
  }
  return sink_check (k);
}

/* Wait for every request, then flush.  0 / -1. */
int
sink_flush (struct sink *k)
{
  if (sink_drain (k, 0) == -1)
    return -1;
  if (nbd_can_flush (k->h) == 1 && nbd_flush (k->h, 0) == -1)
    return nbd_failed (k->uri);
  return 0;
}

/* Flush, disconnect and free.  0 / -1. */
int
sink_close (struct sink *k)
{
  int ret;

  if (!k)
    return 0;
  ret = sink_flush (k);
  if (ret == 0 && nbd_shutdown (k->h, 0) == -1)
    ret = nbd_failed (k->uri);
  nbd_close (k->h);
  free (k->uri);
  free (k);
  return ret;
}
