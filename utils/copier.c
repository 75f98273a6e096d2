/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * A small pool of threads doing rb-convert's kernel copies, fed in order through a bounded queue.
 */
#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rblock.h"
#include "copier.h"

/* Jobs queued ahead of the copiers.  A job holds no memory (the data moves
 * file to file in the kernel), so this bounds only how far the caller runs
 * ahead: with 4 MiB runs, 64 MiB.
 */
#define QUEUE 16
#define MAX_COPIERS 64

/* lock protects everything below it. */
struct copier {
  copy_fn fn;
  void *opaque;
  unsigned nr;
  pthread_t th[MAX_COPIERS];
  pthread_mutex_t lock;
  pthread_cond_t cond;             /* a job queued or done, or stop */
  struct copy_job q[QUEUE];
  unsigned head, count;            /* queued jobs: q[head], ... (mod QUEUE) */
  unsigned running;                /* jobs taken, not yet done */
  bool stop;
  int err;                         /* the first failure: its errno and message */
  char msg[1024];
};

/* A pool thread: jobs until stopped; a failure is recorded and later jobs are
 * dropped (the conversion fails anyway).
 */
static void *
copier_thread (void *opaque)
{
  struct copier *c = opaque;
  struct copy_job job;
  int r;

  pthread_mutex_lock (&c->lock);
  for (;;) {
    while (!c->stop && c->count == 0)
      pthread_cond_wait (&c->cond, &c->lock);
    if (c->stop)
      break;
    job = c->q[c->head];
    c->head = (c->head + 1) % QUEUE;
    c->count--;
    if (c->err) {
      pthread_cond_broadcast (&c->cond);
      continue;
    }
    c->running++;
    pthread_mutex_unlock (&c->lock);
    r = c->fn (c->opaque, &job);
    pthread_mutex_lock (&c->lock);
    c->running--;
    if (r == -1 && !c->err) {
      c->err = rb_errno () ? rb_errno () : EIO;
      snprintf (c->msg, sizeof c->msg, "%s", rb_errmsg ());
    }
    pthread_cond_broadcast (&c->cond);
  }
  pthread_mutex_unlock (&c->lock);
  return NULL;
}

struct copier *
copier_start (unsigned nr, copy_fn fn, void *opaque)
{
  struct copier *c = calloc (1, sizeof *c);
  int err;

  if (!c) {
    rb_error (ENOMEM, "out of memory");
    return NULL;
  }
  c->fn = fn;
  c->opaque = opaque;
  pthread_mutex_init (&c->lock, NULL);
  pthread_cond_init (&c->cond, NULL);
  for (c->nr = 0; c->nr < nr && c->nr < MAX_COPIERS; c->nr++) {
    err = pthread_create (&c->th[c->nr], NULL, copier_thread, c);
    if (err) {
      rb_error (err, "cannot start a thread: %s", strerror (err));
      copier_stop (c);
      return NULL;
    }
  }
  return c;
}

/* The first failure recorded as the caller's error.  Returns -1.  Under lock. */
static int
failed (struct copier *c)
{
  return rb_error (c->err, "%s", c->msg);
}

int
copier_submit (struct copier *c, uint64_t in, uint64_t out, uint64_t len)
{
  int r = 0;

  pthread_mutex_lock (&c->lock);
  while (!c->err && c->count == QUEUE)
    pthread_cond_wait (&c->cond, &c->lock);
  if (c->err)
    r = failed (c);
  else {
    c->q[(c->head + c->count) % QUEUE] = (struct copy_job) { in, out, len };
    c->count++;
    pthread_cond_broadcast (&c->cond);
  }
  pthread_mutex_unlock (&c->lock);
  return r;
}

int
copier_wait (struct copier *c)
{
  int r = 0;

  pthread_mutex_lock (&c->lock);
  while (c->count > 0 || c->running > 0)
    pthread_cond_wait (&c->cond, &c->lock);
  if (c->err)
    r = failed (c);
  pthread_mutex_unlock (&c->lock);
  return r;
}

void
copier_stop (struct copier *c)
{
  unsigned i;

  if (!c)
    return;
  pthread_mutex_lock (&c->lock);
  c->stop = true;
  c->count = 0;
  pthread_cond_broadcast (&c->cond);
  pthread_mutex_unlock (&c->lock);
  for (i = 0; i < c->nr; i++)
    pthread_join (c->th[i], NULL);
  pthread_mutex_destroy (&c->lock);
  pthread_cond_destroy (&c->cond);
  free (c);
}
