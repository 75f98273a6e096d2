/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * rb-measure: how large rb-convert's (or rb-create's) output would be, in qemu-img measure's form.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <json-c/json.h>

#include "common.h"

const char *progname = "rb-measure";

static void __attribute__((noreturn))
usage (FILE *f, int status)
{
  fprintf (f,
"usage: %s [--output=human|json] [-O qcow2|raw] [-o OPTIONS] [-f FMT] [-U]\n"
"                  (--size SIZE | SOURCE)\n"
"\n"
"Print the size of the file 'rb-convert SOURCE OUTPUT' would write (required) and of a\n"
"fully allocated image of the same disk (as 'rb-create -o preallocation=full'), as\n"
"'qemu-img measure' prints them.  The figures come from rb-convert's own layout: the\n"
"clusters SOURCE's extents hold data, and the metadata the writer lays out for them.\n"
"rb-convert's output is never larger than required (all-zero clusters it finds are\n"
"not stored; compression makes it smaller still).\n"
"\n"
"  --size SIZE              a new disk of SIZE bytes instead of SOURCE (64k, 1.5G...)\n"
"  -O, --output-format qcow2|raw\n"
"                           the output's format (default qcow2, rb-convert's default;\n"
"                           qemu-img measure's default is raw)\n"
"  -o OPTIONS               the output's options as qemu-img's -o: cluster_size,\n"
"                           compat, refcount_bits, lazy_refcounts, compression_type\n"
"  --output=human|json      human (default) or JSON with qemu-img's keys: required,\n"
"                           fully-allocated, bitmaps (a qcow2 SOURCE and a compat 1.1\n"
"                           output only: 0, as rb-convert copies no bitmaps)\n"
"  -f, --format raw|qcow2   SOURCE's format: do not probe it\n"
"  -U, --force-share        open SOURCE without locks (an image in use by a VM)\n"
"  -h, --help / -V, --version\n"
"\n"
"examples:\n"
"  %s disk.raw\n"
"  %s --output=json -o cluster_size=2M /dev/sdb | jq .required\n"
"  %s --size 1.5T -o cluster_size=2M\n"
"\n"
"Exit status: 0 done, 1 usage error, 2 failure.\n",
           progname, progname, progname, progname);
  exit (status);
}

/* What rb-convert stores of a source: the clusters its data extents touch
 * (rb-convert reserves exactly as many), and the L2 tables they need.
 */
struct touched {
  uint64_t cs, per_l2;             /* cluster size, clusters per L2 table */
  uint64_t clusters, l2_tables;
  uint64_t last_cluster, last_l2;  /* UINT64_MAX: none yet */
};

/* source_extents callback: count the clusters and L2 tables data touches. */
static int
count_data (void *opaque, uint64_t off, uint64_t len, int kind)
{
  struct touched *t = opaque;
  uint64_t c, first = off / t->cs, last = (off + len - 1) / t->cs;

  if (kind != SOURCE_DATA || len == 0)
    return 0;
  if (first == t->last_cluster)      /* shared with the previous extent */
    first++;
  if (first > last)
    return 0;
  t->clusters += last - first + 1;
  for (c = first / t->per_l2; c <= last / t->per_l2; c++)
    if (c != t->last_l2) {
      t->l2_tables++;
      t->last_l2 = c;
    }
  t->last_cluster = last;
  return 0;
}

/* The qcow2 version of the image at path (its header's), 0 if unknown. */
static uint32_t
qcow2_version (const char *path)
{
  uint8_t h[8];
  int fd = open (path, O_RDONLY | O_CLOEXEC);
  ssize_t r = fd >= 0 ? pread (fd, h, 8, 0) : -1;

  if (fd >= 0)
    close (fd);
  return r == 8 ? (uint32_t) h[4] << 24 | h[5] << 16 | h[6] << 8 | h[7] : 0;
}

int
main (int argc, char **argv)
{
  static const struct option longopts[] = {
    { "size", required_argument, NULL, 'S' },
    { "output-format", required_argument, NULL, 'O' },
    { NULL, 0, NULL, 0 },
  };
  struct cmdline cl = {
    .shortopts = "O:", .longopts = longopts, .usage = usage,
    .shared = OPT_FORMAT | OPT_SHARE | OPT_OUTPUT | OPT_CREATE,
  };
  struct rb_create_opts o = { 0 };
  struct touched t = { .last_cluster = UINT64_MAX, .last_l2 = UINT64_MAX };
  const char *size_arg = NULL;
  struct source *src = NULL;
  uint64_t required, fully, all;
  bool raw_out = false, bitmaps;
  json_object *j;
  int c;

  while ((c = cmdline_next (&cl, argc, argv)) != -1) {
    switch (c) {
    case 'S': size_arg = optarg; break;
    case 'O':
      if (strcmp (optarg, "raw") == 0)
        raw_out = true;
      else if (strcmp (optarg, "qcow2") != 0)
        cmdline_die (&cl, "-O: '%s' is neither qcow2 nor raw", optarg);
      break;
    default: usage (stderr, EXIT_USAGE);
    }
  }
  if (size_arg ? argc - optind != 0 : argc - optind != 1)
    cmdline_die (&cl, size_arg ? "--size and a SOURCE do not go together"
                 : "expected --size SIZE or one SOURCE (see --help)");
  create_options_apply (&cl, &o, CO_CLUSTER_SIZE | CO_COMPAT | CO_REFCOUNT_BITS |
                        CO_LAZY_REFCOUNTS | CO_COMPRESSION);
  if (raw_out && cl.create.given)
    cmdline_die (&cl, "-o: a raw output has no options");

  if (size_arg) {
    int64_t v = parse_size (size_arg);
    if (v < 0)
      cmdline_die (&cl, "--size: '%s' is not a size below 8 EiB (a number with an optional "
                   "k, M, G, T, P or E suffix)", size_arg);
    o.size = v;
  }
  else {
    src = source_open (argv[optind], source_flags_for (&cl, cl.format));
    if (!src)
      die_rb ();
    o.size = src->size;
  }
  /* As rb-convert: a guest disk is whole 512-byte sectors. */
  o.size = ROUND_UP_U64 (o.size, 512);

  if (raw_out)
    required = fully = o.size;
  else {
    t.cs = o.cluster_size ? o.cluster_size : 65536;
    if (t.cs < 512 || (t.cs & (t.cs - 1)))
      cmdline_die (&cl, "-o cluster_size: not a power of two");
    t.per_l2 = t.cs / 8;
    if (src && src->size && source_extents (src, 0, src->size, count_data, &t) == -1)
      die_rb ();
    all = DIV_ROUND_UP_U64 (o.size, t.cs);
    if (rb_writer_measure (&o, t.clusters, t.clusters, t.l2_tables, &required) == -1 ||
        rb_writer_measure (&o, all, all, DIV_ROUND_UP_U64 (all, t.per_l2), &fully) == -1)
      die (rb_errno () == EINVAL ? EXIT_USAGE : EXIT_TROUBLE, "%s", rb_errmsg ());
  }
  /* qemu-img reports bitmaps for a source that can have them (qcow2 version 3)
   * and a compat 1.1 qcow2 output.
   */
  bitmaps = src && src->kind == SOURCE_QCOW2 && !raw_out && o.version != 2 &&
    qcow2_version (argv[optind]) >= 3;
  source_close (src);

  if (cl.json) {
    j = json_object_new_object ();
    json_object_object_add (j, "required", json_object_new_uint64 (required));
    json_object_object_add (j, "fully-allocated", json_object_new_uint64 (fully));
    if (bitmaps)
      json_object_object_add (j, "bitmaps", json_object_new_uint64 (0));
    json_qemu_order (j);
    printf ("%s\n", json_object_to_json_string_ext (j, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED));
    json_object_put (j);
  }
  else {
    printf ("required size: %" PRIu64 "\nfully allocated size: %" PRIu64 "\n", required, fully);
    if (bitmaps)
      printf ("bitmaps size: 0\n");
  }
  if (fflush (stdout) == EOF || ferror (stdout))
    die (EXIT_TROUBLE, "standard output: %s", strerror (errno));
  return EXIT_OK;
}
