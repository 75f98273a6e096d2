/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * JSON-RPC stats and check asked while threads write and read: counters grow, checks are clean.
 *
 * usage: rpc-stats IMAGE THREADS OPS
 * Each thread writes and reads back OPS times 4 KiB in its own part of the
 * image (new clusters and overwrites, so the allocator and the caches count
 * too) while the main thread asks "stats", and every 16th time "check",
 * through a JSON-RPC session.  Every check beside the writes finds no
 * corruption and no leak, or says the image kept changing (EAGAIN).  Built
 * with -fsanitize=thread it is the race test for rb_get_stats and the check.
 */
#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rpc-internal.h"

struct worker {
  pthread_t t;
  struct rb_image *img;
  unsigned id, ops;
  int failed;
};

static void *
work (void *arg)
{
  struct worker *w = arg;
  uint64_t size = rb_get_size (w->img), part = size / 64, base = part * w->id;
  char buf[4096], back[4096];
  unsigned i, seed = w->id + 1;

  for (i = 0; i < w->ops; i++) {
    uint64_t off = base + (uint64_t) (rand_r (&seed) % (part / 4096)) * 4096;
    memset (buf, 'a' + (i + w->id) % 26, sizeof buf);
    if (rb_pwrite (w->img, buf, sizeof buf, off, 0) == -1 ||
        rb_pread (w->img, back, sizeof back, off) == -1 || memcmp (buf, back, sizeof buf) != 0) {
      w->failed = 1;
      break;
    }
  }
  return NULL;
}

/* Ask method through the session; the reply, or NULL. */
static json_object *
ask (struct rpc_session *s, const char *method, unsigned id)
{
  char req[64];
  bool request;
  json_object *reply;
  const char *nl;

  snprintf (req, sizeof req, "{\"method\":\"%s\",\"id\":%u}\n", method, id);
  if (rpc_session_feed (s, req, strlen (req)) == -1)
    return NULL;
  while (rpc_session_step (s, &request) == 1)
    ;
  nl = memchr (s->out + s->out_off, '\n', rpc_session_unsent (s));
  if (!nl)
    return NULL;
  {
    json_tokener *t = json_tokener_new ();
    reply = t ? json_tokener_parse_ex (t, s->out + s->out_off, nl - (s->out + s->out_off)) : NULL;
    json_tokener_free (t);
  }
  rpc_session_sent (s, nl + 1 - (s->out + s->out_off));
  return reply;
}

/* The engine counters from "stats", or NULL. */
static json_object *
ask_stats (struct rpc_session *s, unsigned id)
{
  json_object *reply = ask (s, "stats", id), *result, *engine;

  if (!reply || !json_object_object_get_ex (reply, "result", &result) ||
      !json_object_object_get_ex (result, "engine", &engine)) {
    json_object_put (reply);
    return NULL;
  }
  json_object_get (engine);
  json_object_put (reply);
  return engine;
}

/* A check: clean (returns 1), the image kept changing (0), else -1. */
static int
ask_check (struct rpc_session *s, unsigned id)
{
  json_object *reply = ask (s, "check", id), *r, *v;
  int ok = -1;

  if (reply && json_object_object_get_ex (reply, "result", &r))
    ok = json_object_object_get_ex (r, "corruptions", &v) && json_object_get_int64 (v) == 0 &&
      json_object_object_get_ex (r, "leaks", &v) && json_object_get_int64 (v) == 0 &&
      json_object_object_get_ex (r, "check_errors", &v) && json_object_get_int64 (v) == 0 ? 1 : -1;
  else if (reply && json_object_object_get_ex (reply, "error", &r) &&
           json_object_object_get_ex (r, "data", &r) && json_object_object_get_ex (r, "errno", &v) &&
           json_object_get_int (v) == EAGAIN)
    ok = 0;
  if (ok == -1)
    fprintf (stderr, "rpc-stats: check: %s\n", reply ? json_object_to_json_string (reply) : "no reply");
  json_object_put (reply);
  return ok;
}

static uint64_t
counter (json_object *engine, const char *name)
{
  json_object *v;

  return json_object_object_get_ex (engine, name, &v) ? json_object_get_uint64 (v) : 0;
}

int
main (int argc, char **argv)
{
  static const char *const names[] = { "reads", "writes", "clusters_allocated", "cache_hits",
                                       "cache_misses", NULL };
  struct rb_open_opts o = { .flags = 0 };
  struct rpc_state st = { .writable = true };
  struct rpc_session s;
  struct worker *w;
  struct rb_image *img;
  uint64_t last[5] = { 0 };
  unsigned n, ops, i, asks = 0, checks = 0, clean = 0;
  json_object *e;
  int k, running;

  if (argc != 4)
    return 2;
  n = atoi (argv[2]);
  ops = atoi (argv[3]);
  img = rb_open (argv[1], &o);
  if (!img || n < 1 || n > 64) {
    fprintf (stderr, "rpc-stats: %s\n", img ? "1 to 64 threads" : rb_errmsg ());
    return 2;
  }
  st.img = img;
  pthread_mutex_init (&st.lock, NULL);
  if (rpc_session_init (&s, &st) == -1)
    return 2;
  w = calloc (n, sizeof *w);
  for (i = 0; i < n; i++) {
    w[i] = (struct worker) { .img = img, .id = i, .ops = ops };
    pthread_create (&w[i].t, NULL, work, &w[i]);
  }
  /* Ask until the workers are done: every counter only grows. */
  do {
    running = 0;
    if (!(e = ask_stats (&s, ++asks))) {
      fprintf (stderr, "rpc-stats: no stats reply\n");
      return 1;
    }
    for (k = 0; names[k]; k++) {
      uint64_t v = counter (e, names[k]);
      if (v < last[k]) {
        fprintf (stderr, "rpc-stats: %s went back from %llu to %llu\n", names[k],
                 (unsigned long long) last[k], (unsigned long long) v);
        return 1;
      }
      last[k] = v;
    }
    running = counter (e, "writes") < (uint64_t) n * ops;
    json_object_put (e);
    if (asks % 16 == 0) {
      int c = ask_check (&s, ++asks);
      if (c == -1)
        return 1;
      checks++;
      clean += c;
    }
  } while (running && asks < 10000000);
  for (i = 0; i < n; i++) {
    pthread_join (w[i].t, NULL);
    if (w[i].failed) {
      fprintf (stderr, "rpc-stats: thread %u: %s\n", i, rb_errmsg ());
      return 1;
    }
  }
  /* Quiet now: a check must be clean at once. */
  if (ask_check (&s, ++asks) != 1)
    return 1;
  e = ask_stats (&s, ++asks);
  if (!e)
    return 1;
  printf ("checks beside the writes=%u (clean %u, the rest EAGAIN) asks=%u reads=%llu writes=%llu clusters_allocated=%llu cache_hits=%llu cache_misses=%llu\n",
          checks, clean, asks, (unsigned long long) counter (e, "reads"), (unsigned long long) counter (e, "writes"),
          (unsigned long long) counter (e, "clusters_allocated"),
          (unsigned long long) counter (e, "cache_hits"), (unsigned long long) counter (e, "cache_misses"));
  json_object_put (e);
  rpc_session_free (&s);
  free (w);
  return rb_close (img) == -1 ? 1 : 0;
}
