/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Multi-threaded engine model test: threads hammer interleaved byte ranges they own; a byte model judges.
 *
 * The disk is cut into slots (1 byte to a few clusters, some much larger);
 * neighbouring slots belong to different threads, so threads keep writing
 * different bytes of the same cluster and subcluster at the same time.  Each
 * thread only writes bytes it owns, so the expected content of every byte is
 * known: the model.  Every read (during the run, at checkpoints, at the end,
 * after reopening) must equal it.  Exit 0 when it does, 1 on a mismatch (a
 * lost or misplaced write), 2 when the engine or the system fails.
 *
 * --jitter delays some of the engine's pread and pwrite calls (this program
 * interposes them): a yield or a sleep of up to 200 us after a read or
 * before a write widens every window between a read-modify-write's read and
 * its write, so races show up far more often.  Delays never change a
 * correct engine's results.
 *
 * Also: --fill-raw writes a deterministic starting disk, --one-write makes one
 * rb_pwrite of a whole file (the allocation-size tests).
 */
#include <config.h>

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "rblock.h"

#define MAX_THREADS 16
#define PHASE_OPS 40            /* ops per hot window */
#define REPORT_OPS 12           /* suspect ops printed per failure */

enum op_kind { OP_WRITE, OP_ZERO, OP_TRIM, OP_FLUSH, OP_READ };
static const char *const op_names[] = { "pwrite", "zero", "trim", "flush", "read" };

/* One request as issued, for the failure report.  tick_start/tick_end order
 * requests across threads (a global counter bumped around each call).
 */
struct op {
  uint64_t offset, len;
  uint64_t tick_start, tick_end;
  uint32_t seq;
  uint8_t kind;
  unsigned flags;
};

struct slot {
  uint64_t start, len;
  unsigned owner;
};

struct worker {
  unsigned id;
  pthread_t thread;
  uint64_t rng;
  size_t *own;                  /* indices into slots[], in disk order */
  size_t nr_own;
  struct op *log;
  size_t nr_log;
  uint8_t *buf;
  const struct op *bad_read;    /* a verifying read that differed (buf holds it) */
  const struct op *failed;      /* a request that failed, with its message */
  char error[512];
  uint64_t nr_by_kind[5], bytes_by_kind[5];
};

/* Run parameters and shared state (the model bytes of a slot are touched only
 * by its owner, except at checkpoints when every thread waits).
 */
static struct {
  uint64_t seed;
  unsigned nr_threads;
  unsigned nr_ops;
  unsigned checkpoints;
  uint64_t big_max;
  uint64_t cache_size;
  const char *image, *initial, *expect;
  bool seeded;
  bool free_run;
  bool jitter;
  int argc;
  char **argv;
} opt = { .nr_threads = 4, .nr_ops = 2000, .checkpoints = 4 };

static struct rb_image *img;
static uint64_t disk_size, cluster_size, subcluster_size, window_len;
static bool trim_keeps_data;    /* compat 0.10 with a backing file: trim is advisory */
static uint8_t *model;
static struct slot *slots;
static size_t nr_slots;
static struct slot *fine;       /* the fine regions (owner unused) */
static size_t nr_fine;
static struct worker workers[MAX_THREADS];
static pthread_barrier_t barrier;
static uint64_t ticks;
static bool stop;               /* a mismatch or a failed request: the workers stop */
static pthread_mutex_t report_lock = PTHREAD_MUTEX_INITIALIZER;

/* Print a line to stderr. */
static void __attribute__((format (printf, 1, 2)))
say (const char *fmt, ...)
{
  va_list ap;

  va_start (ap, fmt);
  vfprintf (stderr, fmt, ap);
  va_end (ap);
}

/* The line that reproduces this run. */
static void
print_reproduce (void)
{
  int i;

  say ("reproduce (on the same starting image):");
  for (i = 0; i < opt.argc; i++)
    say (" %s", opt.argv[i]);
  if (!opt.seeded)
    say (" --seed %" PRIu64, opt.seed);
  say ("\n");
}

/* Stop on an engine or system failure: exit 2. */
static void __attribute__((noreturn, format (printf, 1, 2)))
fail (const char *fmt, ...)
{
  va_list ap;

  pthread_mutex_lock (&report_lock);
  va_start (ap, fmt);
  if (model)
    fprintf (stderr, "mt-model: seed %" PRIu64 ": ", opt.seed);
  else
    fprintf (stderr, "mt-model: ");
  vfprintf (stderr, fmt, ap);
  va_end (ap);
  fprintf (stderr, "\n");
  if (model)
    print_reproduce ();
  exit (2);
}

/* splitmix64: returns the next number of the stream in *s. */
static uint64_t
rng_next (uint64_t *s)
{
  uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);

  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/* Uniform in [0, n) (0 when n is 0). */
static uint64_t
rng_below (uint64_t *s, uint64_t n)
{
  return n ? rng_next (s) % n : 0;
}

/* Log-uniform in [lo, hi] (1 <= lo <= hi): every power of two equally likely. */
static uint64_t
rng_log (uint64_t *s, uint64_t lo, uint64_t hi)
{
  unsigned blo = 63 - __builtin_clzll (lo), bhi = 63 - __builtin_clzll (hi);
  unsigned b = blo + rng_below (s, bhi - blo + 1);
  uint64_t v = (1ULL << b) + rng_below (s, 1ULL << b);

  return v < lo ? lo : v > hi ? hi : v;
}

/* Fill buf with len pseudo-random bytes. */
static void
rng_fill (uint64_t *s, uint8_t *buf, uint64_t len)
{
  uint64_t i, v;

  for (i = 0; i + 8 <= len; i += 8) {
    v = rng_next (s);
    memcpy (buf + i, &v, 8);
  }
  v = rng_next (s);
  memcpy (buf + i, &v, len - i);
}

/* ---- jitter: this program's pread and pwrite replace libc's for lib/ ---- */
static bool jitter_on;
static __thread uint64_t jitter_rng;

/* Sometimes yield the processor or sleep a little (--jitter). */
static void
jitter (void)
{
  uint64_t r;

  if (!__atomic_load_n (&jitter_on, __ATOMIC_RELAXED))
    return;
  if (!jitter_rng)
    jitter_rng = (uintptr_t) &jitter_rng ^ (uint64_t) time (NULL);
  r = rng_next (&jitter_rng) % 1000;
  if (r < 120)
    sched_yield ();
  else if (r < 150) {
    struct timespec ts = { 0, (r - 119) * 6000 };
    nanosleep (&ts, NULL);
  }
}

/* The next pread / pwrite after ours (libc's, or a sanitizer's interceptor). */
static void *
next_symbol (const char *name)
{
  void *f = dlsym (RTLD_NEXT, name);

  if (!f) {
    fprintf (stderr, "mt-model: dlsym %s: %s\n", name, dlerror ());
    abort ();
  }
  return f;
}

ssize_t pwrite (int fd, const void *buf, size_t count, off_t offset);
ssize_t pread (int fd, void *buf, size_t count, off_t offset);

/* pwrite for the whole program: a possible delay, then the real one. */
ssize_t
pwrite (int fd, const void *buf, size_t count, off_t offset)
{
  static ssize_t (*real) (int, const void *, size_t, off_t);
  /* One atomic load into a local: a plain read of REAL would race with the first store. */
  ssize_t (*f) (int, const void *, size_t, off_t) = __atomic_load_n (&real, __ATOMIC_ACQUIRE);

  if (!f)
    {
      f = next_symbol ("pwrite");
      __atomic_store_n (&real, f, __ATOMIC_RELEASE);
    }
  jitter ();
  return f (fd, buf, count, offset);
}

/* pread for the whole program: the real one, then a possible delay. */
ssize_t
pread (int fd, void *buf, size_t count, off_t offset)
{
  static ssize_t (*real) (int, void *, size_t, off_t);
  ssize_t (*f) (int, void *, size_t, off_t) = __atomic_load_n (&real, __ATOMIC_ACQUIRE);
  ssize_t r;

  if (!f)
    {
      f = next_symbol ("pread");
      __atomic_store_n (&real, f, __ATOMIC_RELEASE);
    }
  r = f (fd, buf, count, offset);
  jitter ();
  return r;
}

/* The smaller of two numbers (a function: arguments are evaluated once). */
static uint64_t
umin (uint64_t a, uint64_t b)
{
  return a < b ? a : b;
}

/* The larger of two numbers. */
static uint64_t
umax (uint64_t a, uint64_t b)
{
  return a > b ? a : b;
}

/* x rounded down to a multiple of a (any a >= 1). */
static uint64_t
round_down (uint64_t x, uint64_t a)
{
  return x / a * a;
}

/* x rounded up to a multiple of a (any a >= 1). */
static uint64_t
round_up (uint64_t x, uint64_t a)
{
  return (x + a - 1) / a * a;
}

/* Make room for one more slot and one more fine region. */
static void
grow_slots (size_t *alloc)
{
  if (nr_slots + 1 < *alloc)
    return;
  *alloc = *alloc ? *alloc * 2 : 1024;
  slots = realloc (slots, *alloc * sizeof *slots);
  fine = realloc (fine, *alloc * sizeof *fine);
  if (!slots || !fine)
    fail ("out of memory");
}

/* Cut the disk into slots, region by region (a region is 1 to 8 clusters):
 * fine regions hold slots of 1 byte to a subcluster (several threads inside
 * one subcluster) and a few longer ones, medium regions slots of 1 byte to
 * 3 clusters, big regions slots of 1 byte to big_max (whole-cluster and
 * multi-refcount-block requests).  Slot ends are often aligned to 512 bytes,
 * a subcluster or a cluster.  Neighbours never share an owner.
 */
static void
make_slots (void)
{
  uint64_t s = opt.seed ^ 0x51075107ULL, pos = 0;
  uint64_t small_max = umin (3 * cluster_size, umax (disk_size / 8, 1));
  const uint64_t units[3] = { 512, subcluster_size, cluster_size };
  size_t alloc = 0;
  unsigned owner = 0;

  while (pos < disk_size) {
    unsigned kind = rng_below (&s, 20);
    bool is_fine = false;
    uint64_t region_end, max;

    grow_slots (&alloc);
    if (kind < 3 && opt.big_max >= cluster_size) {
      region_end = pos + rng_log (&s, cluster_size, opt.big_max);
      max = opt.big_max;
    }
    else {
      region_end = pos + rng_log (&s, cluster_size, 8 * cluster_size);
      is_fine = kind < 13;
      max = is_fine ? subcluster_size : small_max;
    }
    region_end = umin (region_end, disk_size);
    if (is_fine) {
      fine[nr_fine].start = pos;
      fine[nr_fine].len = region_end - pos;
      nr_fine++;
    }
    while (pos < region_end) {
      /* A few long slots among fine ones: long in-place writes next to
       * read-modify-writes of a neighbour's subcluster.
       */
      uint64_t m = is_fine && rng_below (&s, 6) == 0 ? small_max : max;
      uint64_t end = umin (pos + rng_log (&s, 1, m), region_end);
      if (rng_below (&s, 3) == 0) {
        uint64_t e = round_down (end, units[rng_below (&s, 3)]);
        if (e > pos)
          end = e;
      }
      grow_slots (&alloc);
      if (opt.nr_threads > 1)
        owner = (owner + 1 + rng_below (&s, opt.nr_threads - 1)) % opt.nr_threads;
      slots[nr_slots].start = pos;
      slots[nr_slots].len = end - pos;
      slots[nr_slots].owner = owner;
      nr_slots++;
      pos = end;
    }
  }
}

/* Index of the slot holding guest byte off. */
static size_t
slot_of (uint64_t off)
{
  size_t lo = 0, hi = nr_slots;

  while (hi - lo > 1) {
    size_t mid = (lo + hi) / 2;
    if (slots[mid].start <= off)
      lo = mid;
    else
      hi = mid;
  }
  return lo;
}

/* Give every worker the list of its slots. */
static void
assign_slots (void)
{
  size_t i;
  unsigned t;

  for (t = 0; t < opt.nr_threads; t++) {
    workers[t].own = malloc (nr_slots * sizeof (size_t));
    if (!workers[t].own)
      fail ("out of memory");
  }
  for (i = 0; i < nr_slots; i++) {
    struct worker *w = &workers[slots[i].owner];
    w->own[w->nr_own++] = i;
  }
}

/* The hot window of a phase: the same for every thread, so threads working
 * through the same phase write near each other.  Half the windows are one
 * subcluster (the unit a read-modify-write rewrites) of a fine region, a
 * quarter one cluster, the rest 512 bytes to window_len anywhere.
 */
static void
window_of (uint64_t phase, uint64_t *start, uint64_t *len)
{
  uint64_t s = opt.seed ^ (phase * 0x7f4a7c15ULL) ^ 0xabcdef;
  unsigned kind = rng_below (&s, 4);

  *start = rng_below (&s, disk_size);
  if (kind < 2) {
    if (nr_fine) {
      const struct slot *f = &fine[rng_below (&s, nr_fine)];
      *start = f->start + rng_below (&s, f->len);
    }
    *start = round_down (*start, subcluster_size);
    *len = subcluster_size;
  }
  else if (kind == 2) {
    *start = round_down (*start, cluster_size);
    *len = cluster_size;
  }
  else
    *len = rng_log (&s, 512, window_len);
}

/* First of w's slots (an index into w->own) that ends after guest byte p;
 * w->nr_own if none.
 */
static size_t
own_slot_after (const struct worker *w, uint64_t p)
{
  size_t lo = 0, hi = w->nr_own;

  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    const struct slot *sl = &slots[w->own[mid]];
    if (sl->start + sl->len <= p)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

/* Choose one of w's slots: mostly any of those in the current hot window
 * (each equally likely, so small slots are chosen as often as big ones),
 * sometimes any slot of the disk.  Returns the slot index.
 */
static size_t
pick_slot (struct worker *w, unsigned seq)
{
  uint64_t ws, wl;
  size_t first, last;

  if (rng_below (&w->rng, 5) == 0)
    return w->own[rng_below (&w->rng, w->nr_own)];
  window_of (seq / PHASE_OPS, &ws, &wl);
  first = own_slot_after (w, ws);
  last = own_slot_after (w, ws + wl);
  if (last < w->nr_own && slots[w->own[last]].start < ws + wl)
    last++;
  if (first >= w->nr_own)
    return w->own[w->nr_own - 1];
  if (last <= first)
    return w->own[first];
  return w->own[first + rng_below (&w->rng, last - first)];
}

/* Choose a range inside slot sl: sometimes the whole slot, otherwise a
 * random start and a log-uniform length, often aligned.
 */
static void
pick_range (struct worker *w, const struct slot *sl, uint64_t *offset, uint64_t *len)
{
  const uint64_t units[5] = { 1, 1, 512, subcluster_size, cluster_size };
  uint64_t a = units[rng_below (&w->rng, 5)], end = sl->start + sl->len, off, n;

  if (rng_below (&w->rng, 7) == 0) {
    *offset = sl->start;
    *len = sl->len;
    return;
  }
  off = round_up (sl->start + rng_below (&w->rng, sl->len), a);
  if (off >= end) {
    a = 1;
    off = sl->start + rng_below (&w->rng, sl->len);
  }
  n = rng_log (&w->rng, 1, end - off);
  if (a > 1 && n >= a)
    n = round_down (n, a);
  *offset = off;
  *len = n;
}

/* The bytes [*start, *end) a request sets (none: *start >= *end).  A trim
 * follows lib/write.c rb_trim: only whole clusters (the last may end at the
 * disk's end) are discarded, and they then read as zeros, except on a
 * compat 0.10 image with a backing file, where trim does nothing.
 */
static void
op_span (const struct op *o, uint64_t *start, uint64_t *end)
{
  *start = o->offset;
  *end = o->offset + o->len;
  if (o->kind == OP_READ || o->kind == OP_FLUSH)
    *end = *start;
  else if (o->kind == OP_TRIM) {
    *start = round_up (o->offset, cluster_size);
    *end = *end == disk_size ? disk_size : round_down (*end, cluster_size);
    if (trim_keeps_data)
      *end = *start;
  }
}

/* Apply a finished request to the model. */
static void
model_apply (const struct op *o, const uint8_t *data)
{
  uint64_t start, end;

  op_span (o, &start, &end);
  if (start >= end)
    return;
  if (o->kind == OP_WRITE)
    memcpy (model + start, data, end - start);
  else
    memset (model + start, 0, end - start);
}

/* Describe one logged request into buf. */
static void
describe_op (char *buf, size_t n, unsigned thread, const struct op *o)
{
  snprintf (buf, n, "thread %u op #%" PRIu32 " %s [%" PRIu64 ", +%" PRIu64 ")%s%s%s%s"
            " (ticks %" PRIu64 "-%" PRIu64 ")",
            thread, o->seq, op_names[o->kind], o->offset, o->len,
            o->flags & RB_FUA ? " FUA" : "", o->flags & RB_MAY_TRIM ? " MAY_TRIM" : "",
            o->flags & RB_FAST_ZERO ? " FAST_ZERO" : "",
            o->tick_end ? "" : " (in flight)", o->tick_start, o->tick_end);
}

/* Explain a wrong byte: where it is, its owner, the owner's last request
 * that set it, and the other threads' requests in the same cluster since.
 */
static void
explain_byte (uint64_t off, uint8_t want, uint8_t got)
{
  const struct slot *sl = &slots[slot_of (off)];
  struct worker *ow = &workers[sl->owner];
  uint64_t cluster = off / cluster_size, since = 0, until = UINT64_MAX, unit_start;
  unsigned t, pass;
  char d[256];
  size_t i;

  say ("  byte %" PRIu64 " (cluster %" PRIu64 " +%" PRIu64 ", subcluster %" PRIu64 " +%" PRIu64
       "): model 0x%02x, read 0x%02x\n", off, cluster, off % cluster_size,
       (off % cluster_size) / subcluster_size, off % subcluster_size, want, got);
  say ("  owner thread %u, slot [%" PRIu64 ", +%" PRIu64 ")\n", sl->owner, sl->start, sl->len);
  /* The owner's last request that set the byte (a trim only where it discards). */
  for (i = ow->nr_log; i-- > 0; ) {
    const struct op *o = &ow->log[i];
    uint64_t start, end;
    op_span (o, &start, &end);
    if (start <= off && off < end) {
      describe_op (d, sizeof d, sl->owner, o);
      say ("  owner's last request there: %s\n", d);
      since = o->tick_start;
      until = o->tick_end ? o->tick_end : UINT64_MAX;
      break;
    }
  }
  if (i == (size_t) -1)
    say ("  the owner never wrote it: the starting content\n");
  /* Suspects: other threads' requests touching the same subcluster (the
   * unit a read-modify-write rewrites) while that request ran, then a few
   * after it.
   */
  unit_start = round_down (off, subcluster_size);
  for (pass = 0; pass < 2; pass++) {
    size_t shown = 0;
    for (t = 0; t < opt.nr_threads; t++) {
      const struct worker *w = &workers[t];
      if (t == sl->owner)
        continue;
      for (i = w->nr_log; i-- > 0 && shown < (pass ? 4 : REPORT_OPS); ) {
        const struct op *o = &w->log[i];
        bool during = o->tick_start <= until;
        if (o->tick_end && o->tick_end < since)
          break;
        if (o->kind == OP_READ || o->kind == OP_FLUSH || o->len == 0 || during != !pass ||
            o->offset >= unit_start + subcluster_size || unit_start >= o->offset + o->len)
          continue;
        describe_op (d, sizeof d, t, o);
        say ("  %s in that %s: %s\n", pass ? "after it" : "at the same time",
             subcluster_size < cluster_size ? "subcluster" : "cluster", d);
        shown++;
      }
    }
    if (!pass && !shown)
      say ("  no other thread touched that %s at the same time\n",
           subcluster_size < cluster_size ? "subcluster" : "cluster");
  }
}

/* Compare len bytes read at off with the model.  On a difference report the
 * first wrong byte and the extent of the damage, and return false.
 */
static bool
compare (const char *when, const uint8_t *got, uint64_t off, uint64_t len)
{
  uint64_t i, first = 0, last = 0, bad = 0;

  if (memcmp (got, model + off, len) == 0)
    return true;
  for (i = 0; i < len; i++)
    if (got[i] != model[off + i]) {
      if (!bad)
        first = i;
      last = i;
      bad++;
    }
  pthread_mutex_lock (&report_lock);
  say ("mt-model: seed %" PRIu64 ": %s: %" PRIu64 " bytes differ from the model in [%" PRIu64
       ", %" PRIu64 ")\n", opt.seed, when, bad, off + first, off + last + 1);
  explain_byte (off + first, model[off + first], got[first]);
  if (last != first && slot_of (off + last) != slot_of (off + first)) {
    say ("  and the last one:\n");
    explain_byte (off + last, model[off + last], got[last]);
  }
  print_reproduce ();
  pthread_mutex_unlock (&report_lock);
  return false;
}

/* Read the whole disk through im and compare it with the model.  Returns
 * false on the first difference (reported).
 */
static bool
verify_all (struct rb_image *im, const char *when)
{
  const uint64_t chunk = 4 << 20;
  uint8_t *buf = malloc (chunk);
  uint64_t off;
  bool ok = true;

  if (!buf)
    fail ("out of memory");
  for (off = 0; off < disk_size && ok; off += chunk) {
    uint64_t n = umin (chunk, disk_size - off);
    if (rb_pread (im, buf, n, off) == -1)
      fail ("%s: read [%" PRIu64 ", +%" PRIu64 "): %s", when, off, n, rb_errmsg ());
    ok = compare (when, buf, off, n);
  }
  free (buf);
  return ok;
}

/* Issue one random request of worker w (request number seq). */
static void
one_request (struct worker *w, unsigned seq)
{
  const struct slot *sl = &slots[pick_slot (w, seq)];
  struct op *o = &w->log[w->nr_log++];
  unsigned k = rng_below (&w->rng, 400);
  int r = 0;

  memset (o, 0, sizeof *o);
  o->seq = seq;
  pick_range (w, sl, &o->offset, &o->len);
  /* 40% writes, 22% zeros, 10% trims, 0.25% flushes, the rest reads; 1% FUA
   * (syncs are slow and the model cannot see durability anyway).
   */
  o->kind = k < 160 ? OP_WRITE : k < 248 ? OP_ZERO : k < 288 ? OP_TRIM : k < 289 ? OP_FLUSH : OP_READ;
  if (o->kind == OP_FLUSH)
    o->offset = o->len = 0;
  if (o->kind == OP_WRITE) {
    o->flags = rng_below (&w->rng, 100) == 0 ? RB_FUA : 0;
    rng_fill (&w->rng, w->buf, o->len);
  }
  else if (o->kind == OP_ZERO) {
    unsigned z = rng_below (&w->rng, 20);
    o->flags = z < 10 ? 0 : z < 17 ? RB_MAY_TRIM : RB_FAST_ZERO;
    if (rng_below (&w->rng, 100) == 0)
      o->flags |= RB_FUA;
  }
  else if (o->kind == OP_TRIM && rng_below (&w->rng, 100) == 0)
    o->flags = RB_FUA;

  o->tick_start = __atomic_add_fetch (&ticks, 1, __ATOMIC_SEQ_CST);
  switch (o->kind) {
  case OP_WRITE: r = rb_pwrite (img, w->buf, o->len, o->offset, o->flags); break;
  case OP_ZERO: r = rb_zero (img, o->len, o->offset, o->flags); break;
  case OP_TRIM: r = rb_trim (img, o->len, o->offset, o->flags); break;
  case OP_FLUSH: r = rb_flush (img); break;
  case OP_READ: r = rb_pread (img, w->buf, o->len, o->offset); break;
  }
  o->tick_end = __atomic_add_fetch (&ticks, 1, __ATOMIC_SEQ_CST);
  if (r == -1) {
    int e = rb_errno ();
    /* A fast zero may always be refused; then nothing changed. */
    if (o->kind == OP_ZERO && (o->flags & RB_FAST_ZERO) && e == ENOTSUP) {
      o->len = 0;
      return;
    }
    /* Stop everyone; report_failures tells what failed. */
    w->failed = o;
    snprintf (w->error, sizeof w->error, "%s", rb_errmsg ());
    __atomic_store_n (&stop, true, __ATOMIC_SEQ_CST);
    return;
  }
  w->nr_by_kind[o->kind]++;
  w->bytes_by_kind[o->kind] += o->kind == OP_FLUSH ? 0 : o->len;
  if (o->kind == OP_READ) {
    /* Only this thread writes these bytes: they must be what it left.  The
     * report waits until every thread has stopped (run_model).
     */
    if (memcmp (w->buf, model + o->offset, o->len) != 0) {
      w->bad_read = o;
      __atomic_store_n (&stop, true, __ATOMIC_SEQ_CST);
    }
  }
  else
    model_apply (o, w->buf);
}

/* Worker thread: nr_ops requests, meeting the others at the start of each
 * hot window (unless --free-run) and at each checkpoint,
 * where one thread reads the whole disk while the rest wait.  After a
 * mismatch it issues no more requests but still meets the others.
 */
static void *
worker_main (void *arg)
{
  struct worker *w = arg;
  unsigned seq, every = opt.checkpoints ? umax (opt.nr_ops / (opt.checkpoints + 1), 1) : 0;

  for (seq = 0; seq < opt.nr_ops; seq++) {
    if (!__atomic_load_n (&stop, __ATOMIC_SEQ_CST))
      one_request (w, seq);
    /* Every thread enters the next hot window together. */
    if (!opt.free_run && (seq + 1) % PHASE_OPS == 0)
      pthread_barrier_wait (&barrier);
    if (every && (seq + 1) % every == 0 && (seq + 1) / every <= opt.checkpoints) {
      int r = pthread_barrier_wait (&barrier);
      if (r == PTHREAD_BARRIER_SERIAL_THREAD && !__atomic_load_n (&stop, __ATOMIC_SEQ_CST)) {
        char when[64];
        snprintf (when, sizeof when, "checkpoint after %u requests per thread", seq + 1);
        if (!verify_all (img, when))
          __atomic_store_n (&stop, true, __ATOMIC_SEQ_CST);
      }
      pthread_barrier_wait (&barrier);
    }
  }
  return NULL;
}

/* Read a whole file of exactly len bytes into buf.  Returns 0 / -1. */
static int
read_file (const char *path, uint8_t *buf, uint64_t len)
{
  int fd = open (path, O_RDONLY);
  uint64_t done = 0;

  if (fd == -1)
    return -1;
  while (done < len) {
    ssize_t r = pread (fd, buf + done, len - done, done);
    if (r <= 0) {
      if (r == 0)
        errno = EINVAL;
      close (fd);
      return -1;
    }
    done += r;
  }
  close (fd);
  return 0;
}

/* Write len bytes of buf to a new file at path.  Returns 0 / -1. */
static int
write_file (const char *path, const uint8_t *buf, uint64_t len)
{
  int fd = open (path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  uint64_t done = 0;

  if (fd == -1)
    return -1;
  while (done < len) {
    ssize_t r = pwrite (fd, buf + done, len - done, done);
    if (r <= 0) {
      close (fd);
      return -1;
    }
    done += r;
  }
  return close (fd);
}

/* After the workers stopped: print the requests that failed in the order
 * they began (the first is the cause, the others may be its echo).  Returns
 * true if there was one.
 */
static bool
report_failures (void)
{
  bool any = false;
  uint64_t last = 0;
  char d[256];

  for (;;) {
    struct worker *next = NULL;
    unsigned t;
    for (t = 0; t < opt.nr_threads; t++) {
      struct worker *w = &workers[t];
      if (w->failed && w->failed->tick_start > last &&
          (!next || w->failed->tick_start < next->failed->tick_start))
        next = w;
    }
    if (!next)
      break;
    describe_op (d, sizeof d, next->id, next->failed);
    say ("mt-model: seed %" PRIu64 ": %s%s failed: %s\n", opt.seed, any ? "then " : "", d,
         next->error);
    last = next->failed->tick_start;
    any = true;
  }
  if (any)
    print_reproduce ();
  return any;
}

/* Open the image read-write (for the run, and again to verify). */
static struct rb_image *
open_image (void)
{
  struct rb_open_opts o = { .cache_size = opt.cache_size };
  struct rb_image *im = rb_open (opt.image, &o);

  if (!im)
    fail ("open %s: %s", opt.image, rb_errmsg ());
  return im;
}

/* The model test proper. */
static int
run_model (void)
{
  struct rb_info *info = malloc (sizeof *info);
  uint64_t total[5] = { 0 }, bytes[5] = { 0 };
  unsigned t, k;

  if (!info)
    fail ("out of memory");
  img = open_image ();
  if (rb_get_info (img, info) == -1)
    fail ("info: %s", rb_errmsg ());
  disk_size = rb_get_size (img);
  cluster_size = rb_get_cluster_size (img);
  subcluster_size = info->extended_l2 ? cluster_size / 32 : cluster_size;
  trim_keeps_data = info->version < 3 && info->chain_depth > 0;
  window_len = umin (umax (2 * cluster_size, 4096), 1 << 20);
  if (!opt.big_max)
    opt.big_max = umax (umin (disk_size / 8, 4 << 20), cluster_size);
  say ("mt-model: seed %" PRIu64 ", %u threads x %u requests, %" PRIu64 " bytes, %" PRIu64
       "-byte clusters%s, compat %s, refcount_bits %u, backing chain %u, %u snapshots\n",
       opt.seed, opt.nr_threads, opt.nr_ops, disk_size, cluster_size,
       info->extended_l2 ? " (extended L2)" : "", info->version < 3 ? "0.10" : "1.1",
       info->refcount_bits, info->chain_depth, info->nr_snapshots);
  free (info);

  model = malloc (disk_size);
  if (!model)
    fail ("out of memory");
  if (read_file (opt.initial, model, disk_size) == -1)
    fail ("%s: cannot read %" PRIu64 " bytes: %m", opt.initial, disk_size);
  if (!verify_all (img, "before the run"))
    return 1;
  make_slots ();
  assign_slots ();
  pthread_barrier_init (&barrier, NULL, opt.nr_threads);
  for (t = 0; t < opt.nr_threads; t++) {
    struct worker *w = &workers[t];
    w->id = t;
    w->rng = opt.seed * 1000003 + t + 1;
    w->log = malloc (opt.nr_ops * sizeof *w->log);
    w->buf = malloc (umax (opt.big_max, 3 * cluster_size) + 8);
    if (!w->log || !w->buf)
      fail ("out of memory");
  }
  for (t = 0; t < opt.nr_threads; t++)
    if (workers[t].nr_own == 0)
      fail ("thread %u owns no slot: the disk is too small", t);
  __atomic_store_n (&jitter_on, opt.jitter, __ATOMIC_RELAXED);
  for (t = 0; t < opt.nr_threads; t++)
    if ((errno = pthread_create (&workers[t].thread, NULL, worker_main, &workers[t])) != 0)
      fail ("pthread_create: %m");
  for (t = 0; t < opt.nr_threads; t++)
    pthread_join (workers[t].thread, NULL);
  __atomic_store_n (&jitter_on, false, __ATOMIC_RELAXED);
  if (report_failures ())
    return 2;
  for (t = 0; t < opt.nr_threads; t++)
    if (workers[t].bad_read) {
      char d[256];
      describe_op (d, sizeof d, t, workers[t].bad_read);
      compare (d, workers[t].buf, workers[t].bad_read->offset, workers[t].bad_read->len);
    }
  if (stop)
    return 1;

  if (!verify_all (img, "at the end of the run"))
    return 1;
  if (rb_close (img) == -1)
    fail ("close: %s", rb_errmsg ());
  img = open_image ();
  if (!verify_all (img, "after close and reopen"))
    return 1;
  if (rb_close (img) == -1)
    fail ("close after reopen: %s", rb_errmsg ());
  img = NULL;
  if (opt.expect && write_file (opt.expect, model, disk_size) == -1)
    fail ("%s: %m", opt.expect);

  for (t = 0; t < opt.nr_threads; t++)
    for (k = 0; k < 5; k++) {
      total[k] += workers[t].nr_by_kind[k];
      bytes[k] += workers[t].bytes_by_kind[k];
    }
  say ("mt-model: %zu slots; %" PRIu64 " writes (%" PRIu64 " bytes), %" PRIu64 " zeros (%" PRIu64
       " bytes), %" PRIu64 " trims (%" PRIu64 " bytes), %" PRIu64 " flushes, %" PRIu64
       " verified reads, %u checkpoints: every byte equals the model\n",
       nr_slots, total[OP_WRITE], bytes[OP_WRITE], total[OP_ZERO], bytes[OP_ZERO],
       total[OP_TRIM], bytes[OP_TRIM], total[OP_FLUSH], total[OP_READ], opt.checkpoints);
  return 0;
}

/* --fill-raw FILE: a deterministic starting disk of --size bytes: runs of
 * pseudo-random data and of compressible text-like data between holes.
 */
static int
fill_raw (const char *path, uint64_t size)
{
  uint64_t s = opt.seed ^ 0xf111ULL, pos = 0, i;
  uint8_t *buf = malloc (1 << 20);
  int fd = open (path, O_WRONLY | O_CREAT | O_TRUNC, 0644);

  if (!buf || fd == -1 || ftruncate (fd, size) == -1)
    fail ("%s: %m", path);
  while (pos < size) {
    uint64_t n = umin (rng_log (&s, 512, 1 << 20), size - pos);
    unsigned kind = rng_below (&s, 3);
    if (kind == 1)
      rng_fill (&s, buf, n);
    else if (kind == 2) {
      uint8_t base = rng_next (&s);
      for (i = 0; i < n; i++)
        buf[i] = 'a' + (base + i / 61 + (rng_below (&s, 16) == 0)) % 26;
    }
    if (kind && pwrite (fd, buf, n, pos) != (ssize_t) n)
      fail ("%s: %m", path);
    pos += n;
  }
  free (buf);
  if (close (fd) == -1)
    fail ("%s: %m", path);
  return 0;
}

/* --one-write FILE: one rb_pwrite of the whole file at --offset, then close,
 * reopen and read it back.
 */
static int
one_write (const char *path, uint64_t offset)
{
  struct stat st;
  uint8_t *buf, *back;

  if (stat (path, &st) == -1)
    fail ("%s: %m", path);
  buf = malloc (st.st_size + 1);
  back = malloc (st.st_size + 1);
  if (!buf || !back || read_file (path, buf, st.st_size) == -1)
    fail ("%s: %m", path);
  img = open_image ();
  if (rb_pwrite (img, buf, st.st_size, offset, 0) == -1)
    fail ("one write of %lld bytes at %" PRIu64 ": %s", (long long) st.st_size, offset,
          rb_errmsg ());
  if (rb_close (img) == -1)
    fail ("close: %s", rb_errmsg ());
  img = open_image ();
  if (rb_pread (img, back, st.st_size, offset) == -1)
    fail ("read back: %s", rb_errmsg ());
  if (memcmp (buf, back, st.st_size) != 0) {
    say ("mt-model: the %lld bytes read back at %" PRIu64 " differ from what was written\n",
         (long long) st.st_size, offset);
    return 1;
  }
  if (rb_close (img) == -1)
    fail ("close: %s", rb_errmsg ());
  return 0;
}

static void __attribute__((noreturn))
usage (int code)
{
  fprintf (code ? stderr : stdout,
           "usage: mt-model [OPTIONS] --initial RAW [--expect OUT] IMAGE\n"
           "       mt-model --fill-raw FILE --size BYTES [--seed N]\n"
           "       mt-model --one-write FILE [--offset N] IMAGE\n"
           "Options: --seed N  --threads N (4)  --ops N per thread (2000)\n"
           "         --checkpoints N (4)  --big-max BYTES  --cache-size BYTES\n"
           "         --free-run (threads do not meet at each hot window)\n"
           "         --jitter (delay some of the engine's reads and writes)\n"
           "RAW holds the guest content before the run (qemu-img convert -O raw);\n"
           "OUT receives the model at the end.  Exit 0: every byte matched the\n"
           "model; 1: a byte differs (reported with its owner and the requests);\n"
           "2: a request or the system failed.\n");
  exit (code);
}

/* Parse a number option (with an optional k, M or G suffix) or die. */
static uint64_t
number (const char *s)
{
  char *end;
  uint64_t v;

  errno = 0;
  v = strtoull (s, &end, 0);
  if (*end && strchr ("kKMG", *end) && end[1] == '\0')
    v <<= *end == 'G' ? 30 : *end == 'M' ? 20 : 10, end++;
  if (errno || end == s || *end) {
    fprintf (stderr, "mt-model: not a number: %s\n", s);
    exit (2);
  }
  return v;
}

int
main (int argc, char **argv)
{
  static const struct option longopts[] = {
    { "seed", required_argument, NULL, 's' },
    { "threads", required_argument, NULL, 't' },
    { "ops", required_argument, NULL, 'n' },
    { "checkpoints", required_argument, NULL, 'c' },
    { "big-max", required_argument, NULL, 'b' },
    { "cache-size", required_argument, NULL, 'C' },
    { "initial", required_argument, NULL, 'i' },
    { "expect", required_argument, NULL, 'e' },
    { "fill-raw", required_argument, NULL, 'F' },
    { "size", required_argument, NULL, 'S' },
    { "one-write", required_argument, NULL, 'W' },
    { "offset", required_argument, NULL, 'o' },
    { "free-run", no_argument, NULL, 'R' },
    { "jitter", no_argument, NULL, 'J' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  const char *fill = NULL, *one = NULL;
  uint64_t size = 0, offset = 0;
  int c;

  opt.argc = argc;
  opt.argv = argv;
  while ((c = getopt_long (argc, argv, "", longopts, NULL)) != -1) {
    switch (c) {
    case 's': opt.seed = number (optarg); opt.seeded = true; break;
    case 't': opt.nr_threads = number (optarg); break;
    case 'n': opt.nr_ops = number (optarg); break;
    case 'c': opt.checkpoints = number (optarg); break;
    case 'b': opt.big_max = number (optarg); break;
    case 'C': opt.cache_size = number (optarg); break;
    case 'i': opt.initial = optarg; break;
    case 'e': opt.expect = optarg; break;
    case 'F': fill = optarg; break;
    case 'S': size = number (optarg); break;
    case 'W': one = optarg; break;
    case 'o': offset = number (optarg); break;
    case 'R': opt.free_run = true; break;
    case 'J': opt.jitter = true; break;
    case 'h': usage (0);
    default: usage (2);
    }
  }
  if (!opt.seeded)
    opt.seed = ((uint64_t) time (NULL) << 16) ^ getpid ();
  if (fill)
    return optind == argc && size ? fill_raw (fill, size) : (usage (2), 2);
  if (optind != argc - 1)
    usage (2);
  opt.image = argv[optind];
  if (one)
    return one_write (one, offset);
  if (!opt.initial || opt.nr_threads < 1 || opt.nr_threads > MAX_THREADS || opt.nr_ops < 1)
    usage (2);
  return run_model ();
}
