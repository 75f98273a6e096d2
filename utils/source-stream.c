/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Sequential scans of a source that read ahead of the consumer (a reader thread, or NBD requests in flight).
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "source-internal.h"

/* Local reads: small chunks, so that what the reader just copied is still in
 * the CPU cache when the consumer looks at it (4 MiB chunks ran at a third of
 * the speed of 256 KiB ones on cached files).  NBD: one request per chunk,
 * eight in flight.
 */
#define DEFAULT_CHUNK     (256u << 10)
#define DEFAULT_DEPTH     4
#define DEFAULT_NBD_CHUNK (1u << 20)
#define DEFAULT_NBD_DEPTH 8
#define DEFAULT_MIN_HOLE (64u << 10)
#define EXTENT_WINDOW    (UINT64_C (1) << 30)   /* bytes of extents asked for at once */

enum slot_state { SLOT_FREE, SLOT_FILLING, SLOT_READY };

/* One read-ahead buffer and the piece of the source it holds. */
struct slot {
  enum slot_state state;
  uint64_t offset, length;
  int kind;
  bool failed;                     /* the read failed (the stream's message says why) */
  char *buf;                       /* chunk_size bytes, allocated on first use */
  struct source_stream *st;
};

struct extent {
  uint64_t offset, length;
  int kind;
};

/* The lock protects the slot states, head/tail/nr_used/nr_filling, the
 * flags and the error; everything else is the producer's alone (or the
 * consumer's: head's data while it holds it).
 */
struct source_stream {
  struct source *s;
  uint64_t chunk_size, min_hole;
  unsigned depth;
  bool no_extents;

  /* producer */
  uint64_t pos, end;               /* next byte to plan, end of the scan */
  struct extent *ext;              /* extents of [ext_start, ext_end), coalesced */
  size_t nr_ext, ext_alloc, ext_i;
  uint64_t ext_end;

  pthread_t thread;
  pthread_mutex_t lock;
  pthread_cond_t cond;
  struct slot *slots;
  unsigned head, tail;             /* next to hand out, next to fill */
  unsigned nr_used, nr_filling;    /* slots not free; slots with reads in flight */
  bool holding;                    /* the consumer holds slots[head] */
  bool stop;                       /* the consumer wants the producer to end */
  bool finished;                   /* the producer planned everything (or failed) */
  bool failed;
  int err;
  char errmsg[1024];
};

/* Record the first error of the stream (caller holds the lock). */
static void
set_error_locked (struct source_stream *st, int err, const char *msg)
{
  if (!st->failed) {
    st->failed = true;
    st->err = err ? err : EIO;
    snprintf (st->errmsg, sizeof st->errmsg, "%s", msg);
  }
}

/* Record the thread's last rb_errmsg () as the stream's error. */
static void
set_error_from_rb (struct source_stream *st)
{
  pthread_mutex_lock (&st->lock);
  set_error_locked (st, rb_errno (), rb_errmsg ());
  pthread_cond_broadcast (&st->cond);
  pthread_mutex_unlock (&st->lock);
}

/* source_extents callback: append, merging neighbours that read the same way. */
static int
collect_extent (void *opaque, uint64_t offset, uint64_t length, int kind)
{
  struct source_stream *st = opaque;
  struct extent *last = st->nr_ext ? &st->ext[st->nr_ext - 1] : NULL;

  if (offset >= st->ext_end)
    return 0;
  if (length > st->ext_end - offset)
    length = st->ext_end - offset;
  if (length == 0)
    return 0;
  if (last && last->offset + last->length == offset &&
      (last->kind == SOURCE_DATA) == (kind == SOURCE_DATA)) {
    last->length += length;
    last->kind &= kind;            /* a hole only if both were holes */
    return 0;
  }
  if (st->nr_ext == st->ext_alloc) {
    size_t n = st->ext_alloc ? st->ext_alloc * 2 : 64;
    struct extent *e = realloc (st->ext, n * sizeof *e);
    if (!e)
      return rb_error (ENOMEM, "%s: out of memory", st->s->name);
    st->ext = e;
    st->ext_alloc = n;
  }
  st->ext[st->nr_ext++] = (struct extent) { offset, length, kind };
  return 0;
}

/* Ask for the extents of the next window starting at st->pos.  0 / -1. */
static int
refill_extents (struct source_stream *st)
{
  uint64_t len = st->end - st->pos < EXTENT_WINDOW ? st->end - st->pos : EXTENT_WINDOW;

  st->nr_ext = st->ext_i = 0;
  st->ext_end = st->pos + len;
  if (source_extents (st->s, st->pos, len, collect_extent, st) == -1)
    return -1;
  if (st->nr_ext == 0 || st->ext[0].offset != st->pos) {
    /* Nothing reported: read it. */
    st->nr_ext = 0;
    collect_extent (st, st->pos, len, SOURCE_DATA);
  }
  return 0;
}

/* A zero extent worth skipping rather than reading. */
static bool
skippable (const struct source_stream *st, const struct extent *e)
{
  return e->kind != SOURCE_DATA && e->length >= st->min_hole;
}

/* Decide the next piece from st->pos: a zero run, or data up to the next
 * chunk boundary (short zero runs included).  Advances st->pos.  0 / -1.
 */
static int
plan_piece (struct source_stream *st, uint64_t *offset, uint64_t *length, int *kind)
{
  uint64_t limit = (st->pos / st->chunk_size + 1) * st->chunk_size;
  uint64_t cur;
  const struct extent *e;

  if (limit > st->end)
    limit = st->end;
  *offset = st->pos;
  *kind = SOURCE_DATA;
  if (st->no_extents) {
    *length = limit - st->pos;
    st->pos = limit;
    return 0;
  }
  while (st->ext_i < st->nr_ext &&
         st->ext[st->ext_i].offset + st->ext[st->ext_i].length <= st->pos)
    st->ext_i++;
  if (st->ext_i >= st->nr_ext || st->pos >= st->ext_end ||
      st->ext[st->ext_i].offset > st->pos) {
    if (refill_extents (st) == -1)
      return -1;
  }
  e = &st->ext[st->ext_i];
  if (skippable (st, e)) {
    *kind = e->kind;
    *length = e->offset + e->length - st->pos;
    st->pos += *length;
    st->ext_i++;
    return 0;
  }
  if (limit > st->ext_end)
    limit = st->ext_end;
  cur = st->pos;
  while (cur < limit && st->ext_i < st->nr_ext) {
    e = &st->ext[st->ext_i];
    if (e->offset > st->pos && skippable (st, e))
      break;                       /* a long zero run starts: stop before it */
    if (e->offset + e->length > limit) {
      cur = limit;
      break;
    }
    cur = e->offset + e->length;
    st->ext_i++;
  }
  if (cur <= st->pos)              /* cannot happen with sane extents */
    cur = limit;
  *length = cur - st->pos;
  st->pos = cur;
  return 0;
}

/* NBD completion of a slot's reads (runs in the producer, inside libnbd). */
static void
slot_read_done (void *opaque, int err)
{
  struct slot *sl = opaque;
  struct source_stream *st = sl->st;

  pthread_mutex_lock (&st->lock);
  if (err) {
    char msg[512];
    snprintf (msg, sizeof msg, "%s: read error at offset %" PRIu64 ": %s",
              st->s->name, sl->offset, strerror (err));
    set_error_locked (st, err, msg);
    sl->failed = true;
  }
  sl->state = SLOT_READY;
  st->nr_filling--;
  pthread_cond_broadcast (&st->cond);
  pthread_mutex_unlock (&st->lock);
}

/* Mark a slot failed with the thread's last message as the stream's error. */
static void
slot_failed (struct source_stream *st, struct slot *sl)
{
  pthread_mutex_lock (&st->lock);
  set_error_locked (st, rb_errno (), rb_errmsg ());
  sl->state = SLOT_READY;
  sl->failed = true;
  pthread_cond_broadcast (&st->cond);
  pthread_mutex_unlock (&st->lock);
}

/* Fill one slot: zero runs at once, files by pread here, NBD asynchronously.  0 / -1. */
static int
fill_slot (struct source_stream *st, struct slot *sl)
{
  if (sl->kind != SOURCE_DATA) {
    pthread_mutex_lock (&st->lock);
    sl->state = SLOT_READY;
    pthread_cond_broadcast (&st->cond);
    pthread_mutex_unlock (&st->lock);
    return 0;
  }
  if (!sl->buf) {
    sl->buf = aligned_alloc (4096, (st->chunk_size + 4095) / 4096 * 4096);
    if (!sl->buf)
      return rb_error (ENOMEM, "%s: out of memory", st->s->name);
  }
  if (st->s->nbd) {
    pthread_mutex_lock (&st->lock);
    sl->state = SLOT_FILLING;
    st->nr_filling++;
    pthread_mutex_unlock (&st->lock);
    if (nbdsrc_aio_read (st->s, sl->buf, sl->length, sl->offset, slot_read_done, sl) == -1) {
      pthread_mutex_lock (&st->lock);
      st->nr_filling--;
      pthread_mutex_unlock (&st->lock);
      slot_failed (st, sl);
      return -1;
    }
    return 0;
  }
  if (source_pread (st->s, sl->buf, sl->length, sl->offset) == -1) {
    slot_failed (st, sl);
    return -1;
  }
  pthread_mutex_lock (&st->lock);
  sl->state = SLOT_READY;
  pthread_cond_broadcast (&st->cond);
  pthread_mutex_unlock (&st->lock);
  return 0;
}

/* The producer: plan pieces, fill free slots, keep NBD requests moving. */
static void *
producer (void *opaque)
{
  struct source_stream *st = opaque;
  bool nbd = st->s->nbd != NULL;

  for (;;) {
    struct slot *sl;
    uint64_t offset, length;
    int kind;

    pthread_mutex_lock (&st->lock);
    for (;;) {
      if (st->stop || st->failed || (st->pos >= st->end && st->nr_filling == 0))
        break;
      if (st->nr_used < st->depth && st->pos < st->end)
        break;                     /* a free slot and more to read */
      if (nbd && st->nr_filling > 0) {
        /* NBD reads in flight and nothing else to do: wait for replies. */
        pthread_mutex_unlock (&st->lock);
        if (nbdsrc_poll (st->s) == -1) {
          set_error_from_rb (st);
          goto out;
        }
        pthread_mutex_lock (&st->lock);
        continue;
      }
      pthread_cond_wait (&st->cond, &st->lock);
    }
    if (st->stop || st->failed || st->pos >= st->end) {
      pthread_mutex_unlock (&st->lock);
      break;
    }
    pthread_mutex_unlock (&st->lock);

    if (plan_piece (st, &offset, &length, &kind) == -1) {
      set_error_from_rb (st);
      break;
    }
    pthread_mutex_lock (&st->lock);
    sl = &st->slots[st->tail];
    st->tail = (st->tail + 1) % st->depth;
    st->nr_used++;
    sl->offset = offset;
    sl->length = length;
    sl->kind = kind;
    sl->failed = false;
    sl->state = SLOT_FILLING;
    pthread_mutex_unlock (&st->lock);
    if (fill_slot (st, sl) == -1) {
      set_error_from_rb (st);
      break;
    }
  }

  /* Never leave NBD reads in flight into buffers about to be freed. */
 out:
  if (nbd) {
    for (;;) {
      unsigned filling;

      pthread_mutex_lock (&st->lock);
      filling = st->nr_filling;
      pthread_mutex_unlock (&st->lock);
      if (filling == 0 || nbdsrc_in_flight (st->s) == 0 || nbdsrc_poll (st->s) == -1)
        break;
    }
  }
  pthread_mutex_lock (&st->lock);
  st->finished = true;
  pthread_cond_broadcast (&st->cond);
  pthread_mutex_unlock (&st->lock);
  return NULL;
}

/* Start a stream over [offset, offset+count) of s. */
struct source_stream *
source_stream_start (struct source *s, uint64_t offset, uint64_t count,
                     const struct source_stream_opts *opts)
{
  struct source_stream *st = calloc (1, sizeof *st);
  const char *env = getenv ("RBLOCK_CHUNK_SIZE");
  int r;

  if (!st) {
    rb_error (ENOMEM, "%s: out of memory", s->name);
    return NULL;
  }
  if (offset > s->size || (count && count > s->size - offset)) {
    free (st);
    rb_error (EINVAL, "%s: scan past the end", s->name);
    return NULL;
  }
  st->s = s;
  st->pos = offset;
  st->end = count ? offset + count : s->size;
  st->chunk_size = opts && opts->chunk_size ? opts->chunk_size : 0;
  if (!st->chunk_size && env)
    st->chunk_size = strtoull (env, NULL, 0);
  if (st->chunk_size < 512 || st->chunk_size > (256u << 20))
    st->chunk_size = s->nbd ? DEFAULT_NBD_CHUNK : DEFAULT_CHUNK;
  st->depth = opts && opts->depth ? opts->depth : s->nbd ? DEFAULT_NBD_DEPTH : DEFAULT_DEPTH;
  if (st->depth < 2)
    st->depth = 2;
  st->min_hole = opts && opts->min_hole ? opts->min_hole : DEFAULT_MIN_HOLE;
  if (st->min_hole > st->chunk_size)
    st->min_hole = st->chunk_size;
  st->no_extents = opts && opts->no_extents;
  st->slots = calloc (st->depth, sizeof *st->slots);
  if (!st->slots) {
    free (st);
    rb_error (ENOMEM, "%s: out of memory", s->name);
    return NULL;
  }
  for (unsigned i = 0; i < st->depth; i++)
    st->slots[i].st = st;
  if (s->fd >= 0)                  /* a larger kernel read-ahead for uncached files */
    posix_fadvise (s->fd, st->pos, st->end - st->pos, POSIX_FADV_SEQUENTIAL);
  pthread_mutex_init (&st->lock, NULL);
  pthread_cond_init (&st->cond, NULL);
  r = pthread_create (&st->thread, NULL, producer, st);
  if (r) {
    free (st->slots);
    free (st);
    rb_error (r, "%s: cannot start a reader thread: %s", s->name, strerror (r));
    return NULL;
  }
  return st;
}

/* Hand out the next chunk in order.  1 / 0 at the end / -1. */
int
source_stream_next (struct source_stream *st, struct source_chunk *chunk)
{
  struct slot *sl;

  pthread_mutex_lock (&st->lock);
  if (st->holding) {
    st->slots[st->head].state = SLOT_FREE;
    st->head = (st->head + 1) % st->depth;
    st->nr_used--;
    st->holding = false;
    pthread_cond_broadcast (&st->cond);
  }
  for (;;) {
    sl = &st->slots[st->head];
    if (st->nr_used > 0 && sl->state == SLOT_READY) {
      if (sl->failed)
        break;
      chunk->offset = sl->offset;
      chunk->length = sl->length;
      chunk->kind = sl->kind;
      chunk->data = sl->kind == SOURCE_DATA ? sl->buf : NULL;
      st->holding = true;
      pthread_mutex_unlock (&st->lock);
      return 1;
    }
    if (st->failed)
      break;
    if (st->finished && st->nr_used == 0) {
      pthread_mutex_unlock (&st->lock);
      return 0;
    }
    pthread_cond_wait (&st->cond, &st->lock);
  }
  if (!st->failed)
    set_error_locked (st, EIO, "read failed");
  rb_error (st->err, "%s", st->errmsg);
  pthread_mutex_unlock (&st->lock);
  return -1;
}

/* Stop the producer, wait for it and free everything. */
void
source_stream_stop (struct source_stream *st)
{
  unsigned i;

  if (!st)
    return;
  pthread_mutex_lock (&st->lock);
  st->stop = true;
  pthread_cond_broadcast (&st->cond);
  pthread_mutex_unlock (&st->lock);
  pthread_join (st->thread, NULL);
  pthread_mutex_destroy (&st->lock);
  pthread_cond_destroy (&st->cond);
  for (i = 0; i < st->depth; i++)
    free (st->slots[i].buf);
  free (st->slots);
  free (st->ext);
  free (st);
}
