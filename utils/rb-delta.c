/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * rb-delta: a qcow2 backed by BASE holding only the clusters where NEW differs, in one pass.
 */
#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <json-c/json.h>

#include "common.h"

const char *progname = "rb-delta";

/* Small chunks stay in the CPU cache between the read and the compare. */
#define CHUNK_MIN (256u << 10)

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
"  -p, --progress           show progress on a terminal\n"
"  -f, --force              overwrite OUTPUT if it exists\n"
"  -h, --help / -V, --version\n"
"\n"
"examples:\n"
"  %s base.raw today.raw delta.qcow2\n"
"  %s --relative --extended-l2 /backups/base.qcow2 nbd://host/disk /backups/inc1.qcow2\n"
"  rb-diff --json base.raw new.raw > c.json && %s --changes c.json base.raw new.raw d.qcow2\n"
"\n"
"Exit status: 0 done, 1 usage error, 2 failure (OUTPUT is then not created).\n",
           progname, progname, progname, progname);
  exit (status);
}

/* Sorted, merged byte ranges that changed (from --changes). */
struct ranges { uint64_t *start, *len; size_t n; };

static void
load_changes (const char *file, struct ranges *r, uint64_t new_size)
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
  r->start = calloc (n + 1, sizeof *r->start);
  r->len = calloc (n + 1, sizeof *r->len);
  if (!r->start || !r->len)
    die (EXIT_TROUBLE, "out of memory");
  for (i = 0; i < n; i++) {
    json_object *e = json_object_array_get_idx (ranges, i), *s, *c;
    int64_t sv, cv;
    if (!json_object_object_get_ex (e, "start", &s) || !json_object_object_get_ex (e, "count", &c) ||
        !json_object_is_type (s, json_type_int) || !json_object_is_type (c, json_type_int) ||
        (sv = json_object_get_int64 (s)) < 0 || (cv = json_object_get_int64 (c)) < 1)
      die (EXIT_TROUBLE, "%s: range %zu is not {\"start\":N,\"count\":N}", file, i);
    r->start[i] = sv * sector;
    r->len[i] = cv * sector;
    if (r->start[i] >= new_size)
      die (EXIT_TROUBLE, "%s: range %zu starts past the end of NEW", file, i);
    if (i && r->start[i] < r->start[i - 1] + r->len[i - 1])
      die (EXIT_TROUBLE, "%s: ranges are not sorted and disjoint", file);
  }
  r->n = n;
  json_object_put (root);
}

/* Collect the data extents of a source as ranges (holes and zeros left out). */
static int
collect (void *opaque, uint64_t off, uint64_t len, int kind)
{
  struct ranges *r = opaque;

  if (kind != SOURCE_DATA)
    return 0;
  if (r->n && r->start[r->n - 1] + r->len[r->n - 1] == off) {
    r->len[r->n - 1] += len;
    return 0;
  }
  if ((r->n & (r->n - 1)) == 0) {      /* grow at powers of two */
    size_t cap = r->n ? r->n * 2 : 1;
    r->start = realloc (r->start, cap * sizeof *r->start);
    r->len = realloc (r->len, cap * sizeof *r->len);
    if (!r->start || !r->len)
      return rb_error (ENOMEM, "out of memory");
  }
  r->start[r->n] = off;
  r->len[r->n] = len;
  r->n++;
  return 0;
}

/* Does [off, off+len) meet a changed range?  cursor advances monotonically. */
static bool
touches (const struct ranges *r, size_t *cursor, uint64_t off, uint64_t len)
{
  while (*cursor < r->n && r->start[*cursor] + r->len[*cursor] <= off)
    (*cursor)++;
  return *cursor < r->n && r->start[*cursor] < off + len;
}

/* BASE is read on a second thread while NEW is read on the first. */
struct base_read {
  struct source *src;
  void *buf;
  uint64_t count, offset;
  int ret, err;
  char msg[600];
};

static void *
read_base (void *arg)
{
  struct base_read *b = arg;

  b->ret = b->count ? source_pread (b->src, b->buf, b->count, b->offset) : 0;
  if (b->ret == -1) {
    b->err = rb_errno ();
    snprintf (b->msg, sizeof b->msg, "%s", rb_errmsg ());
  }
  return NULL;
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

int
main (int argc, char **argv)
{
  static const struct option longopts[] = {
    { "cluster-size", required_argument, NULL, 'c' },
    { "compat", required_argument, NULL, 'C' },
    { "extended-l2", no_argument, NULL, 'E' },
    { "relative", no_argument, NULL, 'r' },
    { "changes", required_argument, NULL, 'D' },
    { "progress", no_argument, NULL, 'p' },
    { "force", no_argument, NULL, 'f' },
    { "help", no_argument, NULL, 'h' },
    { "version", no_argument, NULL, 'V' },
    { NULL, 0, NULL, 0 },
  };
  struct rb_create_opts o = { 0 };
  bool relative = false, progress = false, force = false;
  const char *changes = NULL, *tmp;
  struct ranges ch = { 0 }, new_data = { 0 }, base_data = { 0 };
  size_t nd_cursor = 0, bd_cursor = 0;
  struct source *base, *new, *both[2];
  struct rb_writer *w;
  struct progress prog;
  uint8_t *nb, *bb;
  uint64_t cs, scs, disk, pos, size_now, chunk;
  size_t cursor = 0;
  char *backing_name;
  int c;

  while ((c = getopt_long (argc, argv, "c:pfhV", longopts, NULL)) != -1) {
    switch (c) {
    case 'c': o.cluster_size = parse_cluster_size_opt (optarg); break;
    case 'C': o.version = parse_compat_opt (optarg); break;
    case 'E': o.extended_l2 = true; break;
    case 'r': relative = true; break;
    case 'D': changes = optarg; break;
    case 'p': progress = true; break;
    case 'f': force = true; break;
    case 'h': usage (stdout, EXIT_OK);
    case 'V': printf ("%s %s\n", progname, PACKAGE_VERSION); exit (EXIT_OK);
    default: usage (stderr, EXIT_USAGE);
    }
  }
  if (argc - optind != 3)
    usage (stderr, EXIT_USAGE);
  if (o.extended_l2 && o.version == 2)
    die (EXIT_USAGE, "--extended-l2 needs compat 1.1");
  if (!o.cluster_size)
    o.cluster_size = 65536;
  if (o.extended_l2 && o.cluster_size < 16384)
    die (EXIT_USAGE, "--extended-l2 needs clusters of at least 16K");

  base = source_open (argv[optind], 0);
  if (!base)
    die_rb ();
  if (base->kind != SOURCE_RAW && base->kind != SOURCE_QCOW2)
    die (EXIT_TROUBLE, "%s: BASE must be a raw or qcow2 file (it becomes the backing file)",
         argv[optind]);
  new = source_open (argv[optind + 1], 0);
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
  cs = o.cluster_size;
  scs = o.extended_l2 ? cs / 32 : cs;
  disk = ROUND_UP_U64 (new->size, 512);
  o.size = disk;
  o.backing_file = backing_name;
  o.backing_format = base->kind == SOURCE_QCOW2 ? "qcow2" : "raw";
  if (changes)
    load_changes (changes, &ch, new->size);
  /* Where both inputs are holes or zeros nothing can differ: not even read. */
  if (source_extents (new, 0, new->size, collect, &new_data) == -1 ||
      source_extents (base, 0, base->size, collect, &base_data) == -1)
    die_rb ();

  w = rb_writer_new (tmp, &o, false, DIV_ROUND_UP_U64 (disk, cs), false);
  if (!w)
    die_rb ();
  chunk = MAX_U64 (CHUNK_MIN, cs);
  nb = aligned_alloc (4096, chunk);
  bb = aligned_alloc (4096, chunk);
  if (!nb || !bb)
    die (EXIT_TROUBLE, "out of memory");

  progress_init (&prog, progress, disk);
  for (pos = 0; pos < disk; pos += chunk) {
    uint64_t n = MIN_U64 (chunk, disk - pos), k;
    uint64_t nn = pos < new->size ? MIN_U64 (n, new->size - pos) : 0;
    uint64_t bn = pos < base->size ? MIN_U64 (n, base->size - pos) : 0;
    bool any = changes ? touches (&ch, &cursor, pos, n)
      : touches (&new_data, &nd_cursor, pos, n) || touches (&base_data, &bd_cursor, pos, n);

    if (!any)
      continue;
    {
      struct base_read br = { base, bb, changes ? 0 : bn, pos, 0, 0, "" };
      pthread_t th;
      bool threaded = br.count && pthread_create (&th, NULL, read_base, &br) == 0;
      int nr = nn ? source_pread (new, nb, nn, pos) : 0;
      char msg[600] = "";

      if (nr == -1)
        snprintf (msg, sizeof msg, "%s", rb_errmsg ());
      if (threaded)
        pthread_join (th, NULL);
      else
        read_base (&br);
      if (nr == -1 || br.ret == -1) {
        rb_writer_abort (w);
        die (EXIT_TROUBLE, "%s", nr == -1 ? msg : br.msg);
      }
    }
    memset (nb + nn, 0, n - nn);
    if (!changes)
      memset (bb + bn, 0, n - bn);      /* past BASE's end the guest reads zeros */

    for (k = 0; k < n; k += cs) {
      uint64_t gc = (pos + k) / cs, len = MIN_U64 (cs, n - k), s;
      uint32_t alloc = 0, zero = 0;
      size_t sc_cursor = cursor;

      for (s = 0; s * scs < len; s++) {
        uint64_t off = k + s * scs, sl = MIN_U64 (scs, len - s * scs);
        bool differs = changes ? touches (&ch, &sc_cursor, pos + off, sl)
                               : memcmp (nb + off, bb + off, sl) != 0;
        if (!differs)
          continue;
        if (all_zero (nb + off, sl) && o.version != 2)
          zero |= 1u << s;
        else
          alloc |= 1u << s;
      }
      if (!alloc && !zero)
        continue;
      if (!o.extended_l2) {
        /* A whole cluster: data, or the zero flag when NEW is all zeros there. */
        alloc = alloc ? 1 : 0;
        zero = alloc ? 0 : 1;
      }
      if (rb_writer_put (w, gc, nb + k, alloc, zero) == -1) {
        char msg[600];
        snprintf (msg, sizeof msg, "%s", rb_errmsg ());
        rb_writer_abort (w);
        die (EXIT_TROUBLE, "%s: %s", argv[optind + 2], msg);
      }
    }
    progress_update (&prog, pos + n);
  }

  if (source_current_size (new, &size_now) == -1 || size_now != new->size) {
    rb_writer_abort (w);
    die (EXIT_TROUBLE, "%s: NEW changed size while the delta was made", argv[optind + 1]);
  }
  if (rb_writer_finish (w) == -1) {
    char msg[600];
    snprintf (msg, sizeof msg, "%s", rb_errmsg ());
    die (EXIT_TROUBLE, "%s: %s", argv[optind + 2], msg);
  }
  if (output_commit () == -1)
    die_rb ();
  progress_end (&prog);
  source_close (base);
  source_close (new);
  free (backing_name);
  free (nb);
  free (bb);
  free (ch.start);
  free (ch.len);
  return EXIT_OK;
}
