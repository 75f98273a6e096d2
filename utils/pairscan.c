/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Two inputs compared side by side on several threads, results handed back in order.
 */
#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"
#include "pairscan.h"

/* Blocks small enough to stay in the CPU cache between the read and the
 * compare (on cached 1 GiB files 128 KiB blocks on two threads ran at twice
 * the speed of `cat A B`); NBD blocks large enough to amortise a round trip.
 */
#define DEFAULT_BLOCK      (128u << 10)
#define DEFAULT_NBD_BLOCK  (1u << 20)
#define STRIPE_BLOCKS      16           /* blocks per hand-out */
#define MIN_HOLE           (64u << 10)  /* shorter holes inside a block are read */
#define MAX_AUTO_THREADS   4
#define MAX_THREADS        64
#define SLOTS_PER_THREAD   2            /* stripes done ahead of the commits, per worker */

int
extent_list_add (struct extent_list *l, uint64_t off, uint64_t len)
{
  if (len == 0)
    return 0;
  if (l->n && l->start[l->n - 1] + l->len[l->n - 1] >= off) {
    uint64_t end = off + len;
    if (end > l->start[l->n - 1] + l->len[l->n - 1])
      l->len[l->n - 1] = end - l->start[l->n - 1];
    return 0;
  }
  if ((l->n & (l->n - 1)) == 0) {      /* grow at powers of two */
    size_t cap = l->n ? l->n * 2 : 1;
    uint64_t *s = realloc (l->start, cap * sizeof *s), *n;
    if (!s)
      return rb_error (ENOMEM, "out of memory");
    l->start = s;
    n = realloc (l->len, cap * sizeof *n);
    if (!n)
      return rb_error (ENOMEM, "out of memory");
    l->len = n;
  }
  l->start[l->n] = off;
  l->len[l->n] = len;
  l->n++;
  return 0;
}

void
extent_list_free (struct extent_list *l)
{
  free (l->start);
  free (l->len);
  l->start = l->len = NULL;
  l->n = 0;
}

/* source_extents callback: keep the data extents. */
static int
collect_data (void *opaque, uint64_t off, uint64_t len, int kind)
{
  return kind == SOURCE_DATA ? extent_list_add (opaque, off, len) : 0;
}

int
extent_list_of_data (struct source *s, uint64_t count, struct extent_list *l)
{
  if (count > s->size)
    count = s->size;
  return count ? source_extents (s, 0, count, collect_data, l) : 0;
}

/* A finished stripe waiting for its commit. */
struct slot {
  bool done, failed;
  int err;
  void *result;
  char msg[512];
};

struct scan {
  struct source *a, *b;
  pair_block_fn block_fn;
  void *opaque;
  const struct extent_list *visit;
  struct extent_list data_a, data_b;
  uint64_t count, block, stripe, nr_stripes;
  const uint8_t *zeros;            /* block bytes of zeros */

  pthread_mutex_t lock;            /* protects what follows */
  pthread_cond_t cond;
  uint64_t next;                   /* next stripe to hand out */
  uint64_t committed;              /* stripes committed */
  bool stop;
  unsigned nr_slots;
  struct slot *slots;              /* stripe i in slots[i % nr_slots] */
};

/* Index of the first range of l that ends after off. */
static size_t
first_after (const struct extent_list *l, uint64_t off)
{
  size_t lo = 0, hi = l->n;

  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (l->start[mid] + l->len[mid] <= off)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

bool
extent_list_touches (const struct extent_list *l, uint64_t off, uint64_t len)
{
  size_t i = first_after (l, off);

  return i < l->n && l->start[i] < off + len;
}

/* Read side s (data extents d) of [off, off+len) into buf: only its data
 * (holes closer than MIN_HOLE are read through), zeros elsewhere and past
 * its end.  A side with no data there is not read: *out points at zeros.
 */
static int
read_side (struct scan *sc, struct source *s, const struct extent_list *d, uint8_t *buf,
           uint64_t off, uint64_t len, const uint8_t **out)
{
  uint64_t end = MIN_U64 (off + len, s->size), pos = off;
  size_t i = first_after (d, off);

  if (off >= s->size || i == d->n || d->start[i] >= end) {
    *out = sc->zeros;
    return 0;
  }
  while (i < d->n && d->start[i] < end) {
    uint64_t from = MAX_U64 (d->start[i], off), to = MIN_U64 (d->start[i] + d->len[i], end);

    /* Extend over the following ranges while the holes between are small. */
    while (to < end && i + 1 < d->n && d->start[i + 1] < end && d->start[i + 1] - to < MIN_HOLE) {
      i++;
      to = MIN_U64 (d->start[i] + d->len[i], end);
    }
    memset (buf + (pos - off), 0, from - pos);
    if (source_pread (s, buf + (from - off), to - from, from) == -1)
      return -1;
    pos = to;
    i++;
  }
  memset (buf + (pos - off), 0, off + len - pos);   /* holes and past the end read as zeros */
  *out = buf;
  return 0;
}

/* Look at every block of stripe i that may differ. */
static int
do_stripe (struct scan *sc, uint64_t i, uint8_t *buf_a, uint8_t *buf_b, void **result)
{
  uint64_t off = i * sc->stripe, end = MIN_U64 (off + sc->stripe, sc->count);

  for (; off < end; off += sc->block) {
    struct pair_block blk = { off, MIN_U64 (sc->block, end - off), NULL, NULL };
    bool want = sc->visit ? extent_list_touches (sc->visit, off, blk.length)
      : extent_list_touches (&sc->data_b, off, blk.length) ||
        (sc->a && extent_list_touches (&sc->data_a, off, blk.length));

    if (!want)
      continue;
    if ((sc->a && read_side (sc, sc->a, &sc->data_a, buf_a, off, blk.length, &blk.a) == -1) ||
        read_side (sc, sc->b, &sc->data_b, buf_b, off, blk.length, &blk.b) == -1 ||
        sc->block_fn (sc->opaque, result, &blk) == -1)
      return -1;
  }
  return 0;
}

/* Worker thread: take stripes until none is left or the scan stops. */
static void *
worker (void *arg)
{
  struct scan *sc = arg;
  size_t bytes = ROUND_UP_U64 (sc->block, 4096);   /* aligned_alloc wants a multiple */
  uint8_t *buf_a = aligned_alloc (4096, bytes), *buf_b = aligned_alloc (4096, bytes);

  pthread_mutex_lock (&sc->lock);
  for (;;) {
    struct slot *slot;
    void *result = NULL;
    uint64_t i;
    int r;

    while (!sc->stop && sc->next < sc->nr_stripes && sc->next >= sc->committed + sc->nr_slots)
      pthread_cond_wait (&sc->cond, &sc->lock);
    if (sc->stop || sc->next >= sc->nr_stripes)
      break;
    i = sc->next++;
    pthread_mutex_unlock (&sc->lock);

    r = !buf_a || !buf_b ? rb_error (ENOMEM, "out of memory")
      : do_stripe (sc, i, buf_a, buf_b, &result);

    pthread_mutex_lock (&sc->lock);
    slot = &sc->slots[i % sc->nr_slots];
    slot->result = result;
    slot->failed = r == -1;
    if (r == -1) {
      slot->err = rb_errno ();
      snprintf (slot->msg, sizeof slot->msg, "%s", rb_errmsg ());
    }
    slot->done = true;
    pthread_cond_broadcast (&sc->cond);
  }
  pthread_mutex_unlock (&sc->lock);
  free (buf_a);
  free (buf_b);
  return NULL;
}

/* Workers to start: opts, else RBLOCK_THREADS, else the online CPUs (capped). */
static unsigned
nr_workers (const struct pair_scan_opts *o)
{
  return threads_wanted (o->threads, MAX_AUTO_THREADS, MAX_THREADS);
}

int
pair_scan (struct source *a, struct source *b, const struct pair_scan_opts *o,
           pair_block_fn block_fn, pair_commit_fn commit_fn, void *opaque)
{
  struct scan sc = { .a = a, .b = b, .block_fn = block_fn, .opaque = opaque,
                     .visit = o->visit, .count = o->count };
  unsigned nr = nr_workers (o), started = 0, t;
  uint64_t align = o->align ? o->align : 512, i;
  pair_free_fn free_result = o->free_result ? o->free_result : free;
  pthread_t th[MAX_THREADS];
  const char *env;
  int ret = 0;

  sc.block = o->block;
  if (!sc.block && (env = getenv ("RBLOCK_CHUNK_SIZE")) && *env)
    sc.block = strtoull (env, NULL, 0);
  if (!sc.block)
    sc.block = (a && a->kind == SOURCE_NBD) || b->kind == SOURCE_NBD ? DEFAULT_NBD_BLOCK
      : DEFAULT_BLOCK;
  sc.block = ROUND_UP_U64 (sc.block, align);
  sc.stripe = sc.block * STRIPE_BLOCKS;
  sc.nr_stripes = DIV_ROUND_UP_U64 (sc.count, sc.stripe);
  sc.nr_slots = nr * SLOTS_PER_THREAD + 1;
  if (sc.count == 0)
    return 0;
  if ((a && extent_list_of_data (a, sc.count, &sc.data_a) == -1) ||
      extent_list_of_data (b, sc.count, &sc.data_b) == -1) {
    extent_list_free (&sc.data_a);
    extent_list_free (&sc.data_b);
    return -1;
  }
  sc.zeros = calloc (1, sc.block);
  sc.slots = calloc (sc.nr_slots, sizeof *sc.slots);
  if (!sc.zeros || !sc.slots) {
    ret = rb_error (ENOMEM, "out of memory");
    goto out;
  }
  pthread_mutex_init (&sc.lock, NULL);
  pthread_cond_init (&sc.cond, NULL);
  for (t = 0; t < nr; t++)
    if (pthread_create (&th[t], NULL, worker, &sc) == 0)
      started++;
  if (started == 0) {
    ret = rb_error (EAGAIN, "cannot start a thread");
    goto out_sync;
  }

  for (i = 0; i < sc.nr_stripes; i++) {
    struct slot *slot = &sc.slots[i % sc.nr_slots];
    void *result;

    pthread_mutex_lock (&sc.lock);
    while (!slot->done)
      pthread_cond_wait (&sc.cond, &sc.lock);
    result = slot->result;
    slot->result = NULL;
    slot->done = false;
    if (slot->failed) {
      ret = rb_error (slot->err, "%s", slot->msg);
      sc.stop = true;
    }
    pthread_mutex_unlock (&sc.lock);
    if (ret == 0 && commit_fn (opaque, MIN_U64 ((i + 1) * sc.stripe, sc.count), result) == -1)
      ret = -1;
    else if (ret == -1 && result)
      free_result (result);
    pthread_mutex_lock (&sc.lock);
    if (ret == -1)
      sc.stop = true;
    sc.committed++;
    pthread_cond_broadcast (&sc.cond);
    pthread_mutex_unlock (&sc.lock);
    if (ret == -1)
      break;
  }
  for (t = 0; t < started; t++)
    pthread_join (th[t], NULL);
  /* Stripes finished after an error are never committed. */
  for (t = 0; t < sc.nr_slots; t++)
    if (sc.slots[t].done && sc.slots[t].result)
      free_result (sc.slots[t].result);
 out_sync:
  pthread_cond_destroy (&sc.cond);
  pthread_mutex_destroy (&sc.lock);
 out:
  free ((void *) sc.zeros);
  free (sc.slots);
  extent_list_free (&sc.data_a);
  extent_list_free (&sc.data_b);
  return ret;
}
