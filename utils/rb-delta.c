/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * rb-delta: a qcow2 backed by BASE holding only the clusters where NEW differs, in one pass.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <json-c/json.h>

#include "common.h"
#include "dirty.h"
#include "pairscan.h"

const char *progname = "rb-delta";

static void __attribute__((noreturn))
usage (FILE *f, int status)
{
  fprintf (f,
"usage: %s [OPTIONS] BASE NEW OUTPUT.qcow2\n"
"\n"
"Write OUTPUT, a qcow2 image whose backing file is BASE (raw or qcow2, format recorded),\n"
"holding only the clusters in which NEW differs from BASE.  NEW may be a raw file, a\n"
"block device, a qcow2 image or an NBD URI; it must not be smaller than BASE.\n"
"\n"
"  -c, --cluster-size SIZE  cluster size, 512 to 2M (default 64K)\n"
"      --compat 0.10|1.1    qcow2 version (0.10 has no zero flag: zeros are written)\n"
"      --extended-l2        subcluster granularity (clusters of 16K or more)\n"
"      --relative           store BASE relative to OUTPUT's folder\n"
"      --changes FILE|-     use 'rb-diff --json' output instead of comparing again\n"
"      --bitmap NAME        copy only what dirty bitmap NAME of NEW marks (NEW: a qcow2\n"
"                           image holding it, or an NBD URI offering qemu:dirty-bitmap:NAME);\n"
"                           BASE is then only recorded as the backing file, not read\n"
"      --clear-bitmap       with --bitmap and a local NEW: clear NAME once OUTPUT is\n"
"                           complete, so the next increment starts from here\n"
"      --connections N      with --bitmap and an NBD NEW: read over N connections\n"
"  -o OPTIONS               the same as qemu-img's -o: cluster_size, compat,\n"
"                           extended_l2, refcount_bits, lazy_refcounts (-o help)\n"
"  -f, --format raw|qcow2   BASE's and NEW's format: do not probe them\n"
"  -U, --force-share        open qcow2 inputs without locks (images in use by a VM)\n"
"  -p, --progress[=fd:N]   a bar on a terminal, else done/total lines (on fd N)\n"
"      --force              overwrite OUTPUT if it exists\n"
"  -h, --help / -V, --version\n"
"\n"
"examples:\n"
"  %s base.raw today.raw delta.qcow2\n"
"  %s --relative --extended-l2 /backups/base.qcow2 nbd://host/disk /backups/inc1.qcow2\n"
"  rb-diff --json base.raw new.raw > c.json && %s --changes c.json base.raw new.raw d.qcow2\n"
"  %s -U -o cluster_size=16k base.qcow2 /var/lib/vm/running.qcow2 inc.qcow2\n"
"  %s --bitmap backup-0 --clear-bitmap full.qcow2 vm.qcow2 inc1.qcow2\n"
"  %s --bitmap backup-0 --connections 4 full.qcow2 'nbd+unix:///?socket=/tmp/b' inc1.qcow2\n"
"\n"
"Exit status: 0 done, 1 usage error, 2 failure (OUTPUT is then not created).\n",
           progname, progname, progname, progname, progname, progname, progname);
  exit (status);
}

/* The byte ranges that changed, from rb-diff --json output. */
static void
load_changes (const char *file, struct extent_list *r, uint64_t new_size)
{
  json_object *root, *ranges, *ss;
  uint64_t sector;
  size_t i, n;

  root = strcmp (file, "-") == 0 ? NULL : json_object_from_file (file);
  if (strcmp (file, "-") == 0) {
    /* Read all of stdin. */
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc (cap);
    ssize_t k;
    while (buf && (k = read (0, buf + len, cap - len - 1)) > 0) {
      len += k;
      if (len + 1 == cap && !(buf = realloc (buf, cap *= 2)))
        break;
    }
    if (!buf)
      die (EXIT_TROUBLE, "out of memory");
    buf[len] = '\0';
    root = json_tokener_parse (buf);
    free (buf);
  }
  if (!root)
    die (EXIT_TROUBLE, "%s: not valid JSON (expected rb-diff --json output)", file);
  if (!json_object_object_get_ex (root, "sector_size", &ss) ||
      !json_object_is_type (ss, json_type_int) || json_object_get_int64 (ss) < 1 ||
      !json_object_object_get_ex (root, "ranges", &ranges) ||
      !json_object_is_type (ranges, json_type_array))
    die (EXIT_TROUBLE, "%s: missing or bad \"sector_size\" or \"ranges\" (expected rb-diff --json output)",
         file);
  sector = json_object_get_int64 (ss);
  n = json_object_array_length (ranges);
  for (i = 0; i < n; i++) {
    json_object *e = json_object_array_get_idx (ranges, i), *s, *c;
    int64_t sv, cv;
    if (!json_object_object_get_ex (e, "start", &s) || !json_object_object_get_ex (e, "count", &c) ||
        !json_object_is_type (s, json_type_int) || !json_object_is_type (c, json_type_int) ||
        (sv = json_object_get_int64 (s)) < 0 || (cv = json_object_get_int64 (c)) < 1)
      die (EXIT_TROUBLE, "%s: range %zu is not {\"start\":N,\"count\":N}", file, i);
    if ((uint64_t) sv * sector >= new_size)
      die (EXIT_TROUBLE, "%s: range %zu starts past the end of NEW", file, i);
    if (r->n && (uint64_t) sv * sector < r->start[r->n - 1] + r->len[r->n - 1])
      die (EXIT_TROUBLE, "%s: ranges are not sorted and disjoint", file);
    if (extent_list_add (r, sv * sector, cv * sector) == -1)
      die_rb ();
  }
  json_object_put (root);
}

/* What the workers and the commits share. */
struct delta {
  const struct extent_list *changes; /* --changes, else NULL: compare */
  uint64_t cs, scs;                /* cluster and subcluster size */
  int version;
  struct rb_writer *w;
  const char *output;
  struct progress prog;
};

/* The changed clusters of one stripe, in order. */
struct delta_stripe {
  size_t n, cap, nr_data;
  struct { uint64_t gc; uint32_t alloc, zero; } *e;
  uint8_t *data;                   /* nr_data clusters, for the entries with alloc bits */
  struct delta_stripe *next_free;
};

/* Finished stripes are kept for reuse: their memory is already mapped (fresh
 * buffers for every stripe cost a page fault per 4 KiB copied).
 */
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static struct delta_stripe *pool;

static struct delta_stripe *
get_stripe (void)
{
  struct delta_stripe *st;

  pthread_mutex_lock (&pool_lock);
  st = pool;
  if (st)
    pool = st->next_free;
  pthread_mutex_unlock (&pool_lock);
  if (!st)
    return calloc (1, sizeof *st);
  st->n = st->nr_data = 0;
  return st;
}

/* pair_scan's free_result: back to the pool. */
static void
put_stripe (void *p)
{
  struct delta_stripe *st = p;

  if (!st)
    return;
  pthread_mutex_lock (&pool_lock);
  st->next_free = pool;
  pool = st;
  pthread_mutex_unlock (&pool_lock);
}

static void
free_pool (void)
{
  while (pool) {
    struct delta_stripe *st = pool;
    pool = st->next_free;
    free (st->e);
    free (st->data);
    free (st);
  }
}

/* Record one changed cluster (its data copied if any subcluster is data). */
static int
add_cluster (struct delta_stripe **pst, uint64_t cs, uint64_t gc, uint32_t alloc, uint32_t zero,
             const uint8_t *data, uint64_t len)
{
  struct delta_stripe *st = *pst;

  if (!st && !(st = *pst = get_stripe ()))
    return rb_error (ENOMEM, "out of memory");
  if (st->n == st->cap) {
    size_t cap = st->cap ? st->cap * 2 : 8;
    void *e = realloc (st->e, cap * sizeof *st->e), *d;
    if (!e)
      return rb_error (ENOMEM, "out of memory");
    st->e = e;
    d = realloc (st->data, cap * cs);
    if (!d)
      return rb_error (ENOMEM, "out of memory");
    st->data = d;
    st->cap = cap;
  }
  st->e[st->n].gc = gc;
  st->e[st->n].alloc = alloc;
  st->e[st->n].zero = zero;
  st->n++;
  if (alloc) {
    uint8_t *to = st->data + st->nr_data++ * cs;
    memcpy (to, data, len);
    memset (to + len, 0, cs - len);
  }
  return 0;
}

/* Worker: the clusters of one block in which NEW (b) differs from BASE (a). */
static int
delta_block (void *opaque, void **result, const struct pair_block *blk)
{
  const struct delta *d = opaque;
  uint64_t k;

  for (k = 0; k < blk->length; k += d->cs) {
    uint64_t len = MIN_U64 (d->cs, blk->length - k), s;
    uint32_t alloc = 0, zero = 0;

    for (s = 0; s * d->scs < len; s++) {
      uint64_t off = k + s * d->scs, sl = MIN_U64 (d->scs, len - s * d->scs);
      bool differs = d->changes ? extent_list_touches (d->changes, blk->offset + off, sl)
                                : memcmp (blk->b + off, blk->a + off, sl) != 0;
      if (!differs)
        continue;
      if (d->version != 2 && all_zero (blk->b + off, sl))
        zero |= 1u << s;
      else
        alloc |= 1u << s;
    }
    if (!alloc && !zero)
      continue;
    if (d->scs == d->cs) {
      /* A whole cluster: data, or the zero flag when NEW is all zeros there. */
      alloc = alloc ? 1 : 0;
      zero = alloc ? 0 : 1;
    }
    if (add_cluster ((struct delta_stripe **) result, d->cs, (blk->offset + k) / d->cs, alloc, zero,
                     blk->b + k, len) == -1)
      return -1;
  }
  return 0;
}

/* Calling thread, stripes in order: store the stripe's clusters. */
static int
delta_commit (void *opaque, uint64_t stripe_end, void *result)
{
  struct delta *d = opaque;
  struct delta_stripe *st = result;
  size_t i, di = 0;
  int r = 0;

  for (i = 0; st && i < st->n && r == 0; i++) {
    const uint8_t *data = st->e[i].alloc ? st->data + di++ * d->cs : NULL;
    r = rb_writer_put (d->w, st->e[i].gc, data, st->e[i].alloc, st->e[i].zero);
  }
  put_stripe (st);
  if (r == -1)
    return source_error_prefixed (d->output);
  progress_update (&d->prog, stripe_end);
  return 0;
}

/* Path of target relative to the folder of output (both made absolute). */
static char *
relative_to (const char *target, const char *output)
{
  char t[PATH_MAX], o[PATH_MAX], *od, *res;
  const char *a, *b;
  size_t common = 0, i, ups = 0;

  if (!realpath (target, t))
    die (EXIT_TROUBLE, "%s: %s", target, strerror (errno));
  {
    char *copy = strdup (output), *d;
    if (!copy)
      die (EXIT_TROUBLE, "out of memory");
    d = dirname (copy);
    if (!realpath (d, o))
      die (EXIT_TROUBLE, "%s: %s", d, strerror (errno));
    free (copy);
  }
  od = o;
  /* Longest common prefix ending at a '/'. */
  for (i = 0; t[i] && t[i] == od[i]; i++)
    if (t[i] == '/')
      common = i;
  if (od[i] == '\0' && t[i] == '/')
    common = i;
  b = od + common;
  for (; *b; b++)
    if (*b == '/')
      ups++;
  a = t + common + 1;
  res = malloc (ups * 3 + strlen (a) + 1);
  if (!res)
    die (EXIT_TROUBLE, "out of memory");
  res[0] = '\0';
  for (i = 0; i < ups; i++)
    strcat (res, "../");
  strcat (res, a);
  return res;
}

/* Die unless name, read as qemu and the engine read a backing name (relative
 * to the folder of output unless absolute), is the file base: a delta whose
 * backing file cannot be found is useless (qemu-img create -b checks too).
 */
static void
check_backing_resolves (const char *name, const char *output, const struct source *base)
{
  char *copy = strdup (output), *path = NULL;
  struct stat st;

  if (!copy || (name[0] == '/' ? !(path = strdup (name))
                                : asprintf (&path, "%s/%s", dirname (copy), name) == -1))
    die (EXIT_TROUBLE, "out of memory");
  if (stat (path, &st) == -1)
    die (EXIT_TROUBLE, "%s: as the backing name of %s it would be read as %s (%s): "
         "give BASE as an absolute path, or use --relative", name, output, path,
         strerror (errno));
  if (st.st_dev != base->dev || st.st_ino != base->ino)
    die (EXIT_TROUBLE, "%s: as the backing name of %s it would be read as %s, another file: "
         "give BASE as an absolute path, or use --relative", name, output, path);
  free (path);
  free (copy);
}

/* What the --bitmap pieces build: the cluster being filled. */
struct bitmap_delta {
  struct rb_writer *w;
  const char *output;
  uint64_t cs, scs;                /* cluster and subcluster (unit) size */
  int version;
  uint64_t gc;                     /* the cluster in buf, if masks != 0 */
  uint32_t alloc, zero;
  uint8_t *buf;                    /* cs bytes */
  uint64_t done;
  struct progress prog;
};

/* Store the cluster being filled, if any. */
static int
bitmap_flush (struct bitmap_delta *b)
{
  int r = 0;

  if (b->alloc | b->zero)
    r = rb_writer_put (b->w, b->gc, b->alloc ? b->buf : NULL, b->alloc, b->zero);
  b->alloc = b->zero = 0;
  return r == -1 ? source_error_prefixed (b->output) : 0;
}

/* dirty_run callback: each unit of a dirty piece becomes data, or a zero
 * cluster (subcluster) where NEW reads as zeros; version 2 has no zero flag:
 * zeros are then written (the backing file may hold data there).
 */
static int
bitmap_piece (void *opaque, uint64_t offset, uint64_t length, const uint8_t *data)
{
  struct bitmap_delta *b = opaque;
  uint64_t pos;

  for (pos = 0; pos < length; pos += b->scs) {
    uint64_t off = offset + pos, n = MIN_U64 (b->scs, length - pos);
    uint64_t gc = off / b->cs, in = off % b->cs;
    uint32_t bit = b->scs == b->cs ? 1 : 1u << (in / b->scs);
    bool zero = !data || all_zero (data + pos, n);

    if ((b->alloc | b->zero) && gc != b->gc && bitmap_flush (b) == -1)
      return -1;
    if (!(b->alloc | b->zero)) {
      b->gc = gc;
      memset (b->buf, 0, b->cs);
    }
    if (zero && b->version != 2)
      b->zero |= bit;
    else {
      b->alloc |= bit;
      if (!zero)
        memcpy (b->buf + in, data + pos, n);
    }
  }
  b->done += length;
  progress_update (&b->prog, b->done);
  return 0;
}

/* rb-delta --bitmap: OUTPUT backed by BASE (only recorded) holding the
 * clusters bitmap NAME of NEW marks dirty; with clear, NAME is cleared once
 * OUTPUT is in place (a crash before leaves the bitmap as it was: the next
 * run does this increment again).  Exits.
 */
static int __attribute__((noreturn))
bitmap_delta (const struct cmdline *cl, struct rb_create_opts *o, const char *name,
              struct source *base, const char *base_name, const char *new_name,
              const char *output, bool relative, bool force, bool clear, unsigned connections)
{
  struct dirty_opts dopts = { .bitmap = name, .connections = connections,
                              .no_lock = cl->force_share };
  struct bitmap_delta b = { .output = output, .version = o->version };
  struct source *srcs[2] = { base, NULL };
  struct dirty_scan *ds;
  char *backing_name;
  const char *tmp;
  uint64_t disk;

  if (!source_is_uri (new_name)) {
    /* Local: a qcow2 image; opened here to check that and OUTPUT is not it. */
    if (!(srcs[1] = source_open (new_name, source_flags_for (cl, cl->format))))
      die_rb ();
    if (srcs[1]->kind != SOURCE_QCOW2)
      die (EXIT_TROUBLE, "%s: with --bitmap, NEW must be a qcow2 image holding the bitmap, "
           "or an NBD URI", new_name);
  }
  else if (clear)
    die (EXIT_USAGE, "--clear-bitmap works on a local NEW only (clear a live bitmap with its server)");
  b.cs = o->cluster_size;
  b.scs = dopts.unit = o->extended_l2 ? o->cluster_size / 32 : o->cluster_size;
  if (!(ds = dirty_open (new_name, &dopts)))
    die_rb ();
  if (base->size > dirty_disk_size (ds))
    die (EXIT_TROUBLE, "%s (%" PRIu64 " bytes) is larger than %s (%" PRIu64
         " bytes): a delta cannot shrink its backing file", base_name, base->size,
         new_name, dirty_disk_size (ds));
  tmp = output_prepare (output, force, srcs, srcs[1] ? 2 : 1);
  if (srcs[1])
    source_close (srcs[1]);
  backing_name = relative ? relative_to (base_name, output) : strdup (base_name);
  if (!backing_name)
    die (EXIT_TROUBLE, "out of memory");
  check_backing_resolves (backing_name, output, base);
  disk = ROUND_UP_U64 (dirty_disk_size (ds), 512);
  o->size = disk;
  o->backing_file = backing_name;
  o->backing_format = base->kind == SOURCE_QCOW2 ? "qcow2" : "raw";
  if (!(b.buf = malloc (b.cs)))
    die (EXIT_TROUBLE, "out of memory");
  /* At most the dirty clusters: refcounts sized for those, not for the disk. */
  if (!(b.w = rb_writer_new (tmp, o, false, dirty_max_clusters (ds, b.cs), false)))
    die_rb ();
  progress_init (&b.prog, cl->progress, dirty_total (ds));
  if (dirty_run (ds, bitmap_piece, &b) == -1 || bitmap_flush (&b) == -1)
    die_writer (b.w, NULL);
  if (rb_writer_finish (b.w) == -1)
    die_writer (NULL, output);
  if (output_commit () == -1)
    die_rb ();
  progress_end (&b.prog);
  dirty_close (ds);
  if (clear) {
    struct rb_open_opts oo = { .flags = RB_OPEN_NO_BACKING };
    struct rb_image *img = rb_open (new_name, &oo);
    if (!img || rb_bitmap_clear (img, name) == -1 || rb_close (img) == -1)
      die (EXIT_TROUBLE, "%s is complete, but bitmap '%s' of %s was not cleared: %s", output,
           name, new_name, rb_errmsg ());
  }
  source_close (base);
  free (backing_name);
  free (b.buf);
  exit (EXIT_OK);
}

int
main (int argc, char **argv)
{
  static const struct option longopts[] = {
    { "cluster-size", required_argument, NULL, 'c' },
    { "compat", required_argument, NULL, 'C' },
    { "extended-l2", no_argument, NULL, 'E' },
    { "relative", no_argument, NULL, 'r' },
    { "changes", required_argument, NULL, 'D' },
    { "force", no_argument, NULL, 'F' },
    { "bitmap", required_argument, NULL, 0x300 },
    { "clear-bitmap", no_argument, NULL, 0x301 },
    { "connections", required_argument, NULL, 0x302 },
    { NULL, 0, NULL, 0 },
  };
  struct cmdline cl = {
    .shortopts = "c:", .longopts = longopts, .usage = usage,
    .shared = OPT_FORMAT | OPT_SHARE | OPT_PROGRESS | OPT_CREATE,
  };
  struct rb_create_opts o = { 0 };
  bool relative = false, force = false, clear_bitmap = false;
  const char *changes = NULL, *tmp, *bitmap = NULL;
  unsigned connections = 0;
  struct extent_list ch = { 0 };
  struct pair_scan_opts opts = { 0 };
  struct delta d;
  struct source *base, *new, *both[2];
  struct rb_writer *w;
  uint64_t cs, disk, size_now;
  char *backing_name;
  int c;

  while ((c = cmdline_next (&cl, argc, argv)) != -1) {
    switch (c) {
    case 'c': o.cluster_size = parse_cluster_size_opt (optarg); break;
    case 'C': o.version = parse_compat_opt (optarg); break;
    case 'E': o.extended_l2 = true; break;
    case 'r': relative = true; break;
    case 'D': changes = optarg; break;
    case 'F': force = true; break;
    case 0x300: bitmap = optarg; break;
    case 0x301: clear_bitmap = true; break;
    case 0x302: {
      char *end;
      long n = strtol (optarg, &end, 10);
      if (*end || n < 1 || n > 16)
        cmdline_die (&cl, "--connections: '%s' is not a number from 1 to 16", optarg);
      connections = n;
      break;
    }
    default: usage (stderr, EXIT_USAGE);
    }
  }
  if (argc - optind != 3)
    usage (stderr, EXIT_USAGE);
  if (bitmap && changes)
    cmdline_die (&cl, "--bitmap and --changes are two ways to say what changed: give one");
  if ((clear_bitmap || connections) && !bitmap)
    cmdline_die (&cl, "%s goes with --bitmap", clear_bitmap ? "--clear-bitmap" : "--connections");
  create_options_apply (&cl, &o, CO_CLUSTER_SIZE | CO_COMPAT | CO_EXTENDED_L2 |
                        CO_REFCOUNT_BITS | CO_LAZY_REFCOUNTS);
  if (o.extended_l2 && o.version == 2)
    die (EXIT_USAGE, "--extended-l2 needs compat 1.1");
  if (!o.cluster_size)
    o.cluster_size = 65536;
  if (o.extended_l2 && o.cluster_size < 16384)
    die (EXIT_USAGE, "--extended-l2 needs clusters of at least 16K");

  base = source_open (argv[optind], source_flags_for (&cl, cl.format));
  if (!base)
    die_rb ();
  if (base->kind != SOURCE_RAW && base->kind != SOURCE_QCOW2)
    die (EXIT_TROUBLE, "%s: BASE must be a raw or qcow2 file (it becomes the backing file)",
         argv[optind]);
  if (bitmap)
    bitmap_delta (&cl, &o, bitmap, base, argv[optind], argv[optind + 1], argv[optind + 2],
                  relative, force, clear_bitmap, connections);
  new = source_open (argv[optind + 1], source_flags_for (&cl, cl.format));
  if (!new)
    die_rb ();
  if (base->size > new->size)
    die (EXIT_TROUBLE, "%s (%" PRIu64 " bytes) is larger than %s (%" PRIu64
         " bytes): a delta cannot shrink its backing file", argv[optind], base->size,
         argv[optind + 1], new->size);
  both[0] = base;
  both[1] = new;
  tmp = output_prepare (argv[optind + 2], force, both, 2);

  backing_name = relative ? relative_to (argv[optind], argv[optind + 2]) : strdup (argv[optind]);
  if (!backing_name)
    die (EXIT_TROUBLE, "out of memory");
  check_backing_resolves (backing_name, argv[optind + 2], base);
  cs = o.cluster_size;
  disk = ROUND_UP_U64 (new->size, 512);
  o.size = disk;
  o.backing_file = backing_name;
  o.backing_format = base->kind == SOURCE_QCOW2 ? "qcow2" : "raw";
  if (changes)
    load_changes (changes, &ch, new->size);

  w = rb_writer_new (tmp, &o, false, DIV_ROUND_UP_U64 (disk, cs), false);
  if (!w)
    die_rb ();
  d.changes = changes ? &ch : NULL;
  d.cs = cs;
  d.scs = o.extended_l2 ? cs / 32 : cs;
  d.version = o.version;
  d.w = w;
  d.output = argv[optind + 2];
  progress_init (&d.prog, cl.progress, disk);
  /* Where both inputs read as zeros nothing can differ: not even read.  With
   * --changes only NEW is read, where the changes are.
   */
  opts.count = disk;
  opts.align = cs;
  opts.visit = d.changes;
  opts.free_result = put_stripe;
  if (pair_scan (changes ? NULL : base, new, &opts, delta_block, delta_commit, &d) == -1)
    die_writer (w, NULL);

  if (source_current_size (new, &size_now) == -1 || size_now != new->size) {
    rb_writer_abort (w);
    die (EXIT_TROUBLE, "%s: NEW changed size while the delta was made", argv[optind + 1]);
  }
  if (rb_writer_finish (w) == -1)
    die_writer (NULL, argv[optind + 2]);
  if (output_commit () == -1)
    die_rb ();
  progress_end (&d.prog);
  source_close (base);
  source_close (new);
  free (backing_name);
  extent_list_free (&ch);
  free_pool ();
  return EXIT_OK;
}
