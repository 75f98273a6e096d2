/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * rb-diff: every changed sector between two disks (files, block devices, qcow2 images, NBD URIs).
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "pairscan.h"

const char *progname = "rb-diff";

/* Bytes compared at once before dropping to sectors. */
#define COMPARE_UNIT (64u << 10)

enum output_mode { OUT_HUMAN, OUT_JSON, OUT_COUNT, OUT_QUIET };

/* Print the help text and exit with status. */
static void __attribute__((noreturn))
usage (FILE *f, int status)
{
  fprintf (f,
"usage: %s [OPTIONS] A B\n"
"\n"
"List every sector that differs between A and B, as merged ranges, and a summary.\n"
"A and B are raw files, block devices, qcow2 images (read through their backing\n"
"chain) or NBD URIs (nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH).\n"
"\n"
"  -j, --json, --output=json\n"
"                           print one JSON object: sector_size, size_a, size_b,\n"
"                           changed_sectors, changed_bytes, ranges [{start,count}]\n"
"  -c, --count              print only the number of changed sectors\n"
"  -q, -s, --quiet          print nothing; the exit status tells\n"
"  -f, --format raw|qcow2   A's format: do not probe it (as qemu-img compare -f)\n"
"  -F raw|qcow2             B's format (as qemu-img compare -F)\n"
"  -U, --force-share        open qcow2 inputs without locks (images in use by a VM)\n"
"  -S, --sector-size N      sector size, a power of two from 512 to 1M (default 512)\n"
"  -p, --progress[=fd:N]   a bar on a terminal, else done/total lines (on fd N)\n"
"      --size-mismatch=changed|zero-tail\n"
"                           inputs of different sizes: every sector of the longer\n"
"                           input's tail counts as changed (changed, the default),\n"
"                           or the shorter reads as zeros past its end, so a tail\n"
"                           of zeros is no change (zero-tail, as qemu-img compare;\n"
"                           a warning says the sizes differ)\n"
"  -h, --help / -V, --version\n"
"\n"
"examples:\n"
"  %s base.raw new.raw\n"
"  %s --json --sector-size 4096 /dev/vg/snap /dev/vg/live > changes.json\n"
"  %s --count disk.qcow2 nbd+unix:///?socket=/run/vm.sock\n"
"  %s -U --output=json -F raw /var/lib/vm/running.qcow2 backup.img\n"
"\n"
"Exit status: 0 identical, 1 different, 2 trouble (as cmp).\n",
           progname, progname, progname, progname, progname);
  exit (status);
}

struct range {
  uint64_t start, count;           /* in sectors */
};

/* Changed sectors in increasing order, merged. */
struct ranges {
  struct range *v;
  size_t n, alloc;
};

/* Free a stripe's ranges (pair_scan's free_result). */
static void
free_ranges (void *p)
{
  struct ranges *r = p;

  if (r)
    free (r->v);
  free (r);
}

/* Mark sectors [first, first+count) changed (first never below what was marked). */
static void
mark (struct ranges *r, uint64_t first, uint64_t count)
{
  struct range *last = r->n ? &r->v[r->n - 1] : NULL;

  if (last && first <= last->start + last->count) {
    if (first + count > last->start + last->count)
      last->count = first + count - last->start;
    return;
  }
  if (r->n == r->alloc) {
    r->alloc = r->alloc ? r->alloc * 2 : 1024;
    r->v = realloc (r->v, r->alloc * sizeof *r->v);
    if (!r->v)
      die (EXIT_TROUBLE, "out of memory");
  }
  r->v[r->n++] = (struct range) { first, count };
}

static struct ranges changed;

struct diff {
  uint64_t sector_size, unit;
  struct progress *prog;
};

/* Worker: mark the sectors of one block that differ, in the stripe's own ranges. */
static int
diff_block (void *opaque, void **result, const struct pair_block *blk)
{
  const struct diff *d = opaque;
  struct ranges *r = *result;
  uint64_t p = 0;

  while (p < blk->length) {
    uint64_t u = MIN_U64 ((blk->offset + p) / d->unit * d->unit + d->unit - blk->offset,
                          blk->length);

    if (memcmp (blk->a + p, blk->b + p, u - p) != 0) {
      /* Drop to sectors inside the differing unit. */
      uint64_t s;
      for (s = p; s < u; s += d->sector_size) {
        uint64_t e = MIN_U64 (s + d->sector_size, u);
        if (memcmp (blk->a + s, blk->b + s, e - s) == 0)
          continue;
        if (!r && !(r = *result = calloc (1, sizeof *r)))
          return rb_error (ENOMEM, "out of memory");
        mark (r, (blk->offset + s) / d->sector_size, 1);
      }
    }
    p = u;
  }
  return 0;
}

/* Calling thread, stripes in order: merge the stripe's ranges. */
static int
diff_commit (void *opaque, uint64_t stripe_end, void *result)
{
  const struct diff *d = opaque;
  struct ranges *r = result;
  size_t i;

  for (i = 0; r && i < r->n; i++)
    mark (&changed, r->v[i].start, r->v[i].count);
  free_ranges (r);
  progress_update (d->prog, stripe_end);
  return 0;
}

int
main (int argc, char **argv)
{
  static const struct option longopts[] = {
    { "count", no_argument, NULL, 'c' },
    { "silent", no_argument, NULL, 'q' },
    { "sector-size", required_argument, NULL, 'S' },
    { "chunk-size", required_argument, NULL, 'K' },   /* tests: small chunks */
    { "size-mismatch", required_argument, NULL, 'M' },
    { NULL, 0, NULL, 0 },
  };
  /* 1 means "differ": a usage error is 2, as trouble. */
  struct cmdline cl = {
    .shortopts = "csS:F:", .longopts = longopts, .usage = usage, .usage_status = EXIT_TROUBLE,
    .shared = OPT_FORMAT | OPT_SHARE | OPT_OUTPUT | OPT_PROGRESS | OPT_QUIET,
  };
  const char *format_b = NULL;
  bool count = false;
  enum output_mode mode = OUT_HUMAN;
  struct pair_scan_opts opts = { 0 };
  struct diff d;
  uint64_t sector_size = 512, size_a, size_b, common, longer;
  uint64_t nr_sectors = 0, nr_bytes = 0, total_sectors;
  struct source *sa, *sb;
  struct progress prog;
  bool zero_tail = false;
  int64_t v;
  size_t i;
  int c;

  while ((c = cmdline_next (&cl, argc, argv)) != -1) {
    switch (c) {
    case 'c': count = true; break;
    case 's': cl.quiet = true; break;
    case 'F':
      if (strcmp (optarg, "raw") != 0 && strcmp (optarg, "qcow2") != 0)
        cmdline_die (&cl, "-F: unknown format '%s' (raw or qcow2)", optarg);
      format_b = optarg;
      break;
    case 'S':
      v = parse_size (optarg);
      if (v < 512 || v > (1 << 20) || (v & (v - 1)))
        die (EXIT_TROUBLE, "--sector-size: '%s' is not a power of two from 512 to 1M", optarg);
      sector_size = v;
      break;
    case 'K':
      v = parse_size (optarg);
      if (v < 512 || v > (256 << 20))
        die (EXIT_TROUBLE, "--chunk-size: '%s' is not from 512 to 256M", optarg);
      opts.block = v;
      break;
    case 'M':
      if (strcmp (optarg, "zero-tail") == 0) zero_tail = true;
      else if (strcmp (optarg, "changed") == 0) zero_tail = false;
      else die (EXIT_TROUBLE, "--size-mismatch: '%s' is neither changed nor zero-tail", optarg);
      break;
    default:
      usage (stderr, EXIT_TROUBLE);
    }
  }
  if (argc - optind != 2)
    cmdline_die (&cl, "expected two inputs, A and B (see --help)");
  mode = cl.quiet ? OUT_QUIET : count ? OUT_COUNT : cl.json ? OUT_JSON : OUT_HUMAN;

  sa = source_open (argv[optind], source_flags_for (&cl, cl.format));
  if (!sa)
    die_rb ();
  sb = source_open (argv[optind + 1], source_flags_for (&cl, format_b));
  if (!sb)
    die_rb ();
  size_a = source_size (sa);
  size_b = source_size (sb);
  common = size_a < size_b ? size_a : size_b;
  longer = size_a < size_b ? size_b : size_a;

  if (zero_tail && size_a != size_b && mode != OUT_QUIET)
    fprintf (stderr, "%s: warning: %s is %" PRIu64 " bytes, %s %" PRIu64
             ": the longer one's tail is compared with zeros\n",
             progname, sa->name, size_a, sb->name, size_b);

  /* zero-tail: the scan runs to the longer end; the shorter side reads as
   * zeros past its own end (pair_scan does not read it there).
   */
  progress_init (&prog, cl.progress, zero_tail ? longer : common);
  d.sector_size = sector_size;
  d.unit = MAX_U64 (sector_size, COMPARE_UNIT);
  d.prog = &prog;
  opts.count = zero_tail ? longer : common;
  opts.align = sector_size;
  opts.free_result = free_ranges;
  if (pair_scan (sa, sb, &opts, diff_block, diff_commit, &d) == -1)
    die_rb ();
  progress_end (&prog);
  if (!zero_tail && longer > common)   /* the longer input's tail counts as changed */
    mark (&changed, common / sector_size, DIV_ROUND_UP_U64 (longer, sector_size) - common / sector_size);

  for (i = 0; i < changed.n; i++) {
    uint64_t start = changed.v[i].start * sector_size;
    uint64_t end = (changed.v[i].start + changed.v[i].count) * sector_size;
    nr_sectors += changed.v[i].count;
    nr_bytes += (end < longer ? end : longer) - start;
  }
  total_sectors = DIV_ROUND_UP_U64 (longer, sector_size);

  switch (mode) {
  case OUT_QUIET:
    break;
  case OUT_COUNT:
    printf ("%" PRIu64 "\n", nr_sectors);
    break;
  case OUT_JSON:
    {
      /* Streamed: a diff may have millions of ranges. */
      struct json_stream js = { .f = stdout };
      json_stream_open (&js, NULL, false);
      json_stream_value (&js, "sector_size", json_object_new_uint64 (sector_size));
      json_stream_value (&js, "size_a", json_object_new_uint64 (size_a));
      json_stream_value (&js, "size_b", json_object_new_uint64 (size_b));
      json_stream_value (&js, "changed_sectors", json_object_new_uint64 (nr_sectors));
      json_stream_value (&js, "changed_bytes", json_object_new_uint64 (nr_bytes));
      json_stream_open (&js, "ranges", true);
      for (i = 0; i < changed.n; i++) {
        json_object *r = json_object_new_object ();
        json_object_object_add (r, "start", json_object_new_uint64 (changed.v[i].start));
        json_object_object_add (r, "count", json_object_new_uint64 (changed.v[i].count));
        json_stream_value (&js, NULL, r);
      }
      json_stream_close (&js);
      json_stream_close (&js);
    }
    break;
  case OUT_HUMAN:
    for (i = 0; i < changed.n; i++)
      printf ("sectors %" PRIu64 "-%" PRIu64 " (%" PRIu64 ")\n", changed.v[i].start,
              changed.v[i].start + changed.v[i].count - 1, changed.v[i].count);
    if (nr_sectors == 0)
      printf ("%s and %s are identical (%" PRIu64 " bytes)\n", sa->name, sb->name, longer);
    else {
      printf ("%s and %s differ: %" PRIu64 " of %" PRIu64 " sectors of %" PRIu64
              " bytes changed (%" PRIu64 " bytes, %.2f%%) in %zu range%s",
              sa->name, sb->name, nr_sectors, total_sectors, sector_size, nr_bytes,
              100.0 * nr_bytes / longer, changed.n, changed.n == 1 ? "" : "s");
      if (size_a != size_b && !zero_tail)
        printf ("; %s is %" PRIu64 " bytes longer (its tail counts as changed)",
                size_a > size_b ? sa->name : sb->name, longer - common);
      printf ("\n");
    }
    break;
  }
  if (fflush (stdout) == EOF || ferror (stdout))
    die (EXIT_TROUBLE, "standard output: %s", strerror (errno));
  source_close (sa);
  source_close (sb);
  free (changed.v);
  return nr_sectors ? 1 : 0;
}
