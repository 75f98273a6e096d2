/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * rb-bitmap: list and change a qcow2 image's persistent dirty bitmaps, as qemu-img bitmap.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "common.h"
#include "options.h"

const char *progname = "rb-bitmap";

static void __attribute__((noreturn))
usage (FILE *f, int status)
{
  fprintf (f,
"usage: %s [--output=human|json] [-U] IMAGE\n"
"       %s (--add [-g SIZE] | --remove | --clear | --enable | --disable |\n"
"                  --merge SOURCE [-b SOURCE_IMAGE [-F qcow2]])... [-q] IMAGE BITMAP\n"
"\n"
"Lists the persistent dirty bitmaps of a qcow2 image (name, granularity, flags,\n"
"dirty bytes), or changes bitmap BITMAP: the operations run in the order given,\n"
"each one crash-safe (a crash leaves the old or the new bitmap, or one in use).\n"
"\n"
"  --add                 a new empty bitmap, enabled (recording writes)\n"
"  -g, --granularity SIZE  bytes per bit of a new bitmap, a power of 2 from 512 to\n"
"                        2G (default: the cluster size within 4K..64K, as QEMU)\n"
"  --remove              delete the bitmap (also one in use)\n"
"  --clear               clear every bit\n"
"  --enable, --disable   start or stop recording writes\n"
"  --merge SOURCE        set every bit set in bitmap SOURCE (of IMAGE, or of\n"
"                        SOURCE_IMAGE with -b); granularities may differ\n"
"  -b, --source-file SOURCE_IMAGE   where SOURCE is; -F, --source-format qcow2\n"
"  -f, --format qcow2    the image format (raw images have no bitmaps)\n"
"  -U, --force-share     list without taking QEMU's locks\n"
"  --output=json, --json one JSON array, keys as in qemu-img info, plus count\n"
"  -q, --quiet           no messages\n"
"  -h, --help, -V, --version\n"
"\n"
"exit status: 0 done, 1 usage error, 2 error\n"
"\n"
"examples:\n"
"  %s disk.qcow2\n"
"  %s --add -g 64K disk.qcow2 backup-0\n"
"  %s --add --merge backup-0 --disable disk.qcow2 frozen\n"
"  %s --remove disk.qcow2 backup-0\n",
           progname, progname, progname, progname, progname, progname);
  exit (status);
}

enum op_kind { OP_ADD, OP_REMOVE, OP_CLEAR, OP_ENABLE, OP_DISABLE, OP_MERGE };
static const char *const op_names[] = { "add", "remove", "clear", "enable", "disable", "merge" };

struct op {
  enum op_kind kind;
  const char *arg;          /* merge: the source bitmap */
};

/* The flags as qemu-img info spells them ("in-use", "auto"), then the
 * ones QEMU does not know, in hex.  Returns how many names went into out.
 */
static size_t
flag_names (uint32_t flags, const char **out, char *unknown, size_t len)
{
  size_t n = 0;

  if (flags & RB_BITMAP_IN_USE)
    out[n++] = "in-use";
  if (flags & RB_BITMAP_AUTO)
    out[n++] = "auto";
  if (flags & ~(RB_BITMAP_IN_USE | RB_BITMAP_AUTO)) {
    snprintf (unknown, len, "%#x", flags & ~(RB_BITMAP_IN_USE | RB_BITMAP_AUTO));
    out[n++] = unknown;
  }
  return n;
}

/* One bitmap as a JSON object: qemu-img info's keys, plus count (dirty
 * bytes, when known) and supported (only when false).
 */
static json_object *
bitmap_json (const struct rb_bitmap_info *b)
{
  json_object *o = json_object_new_object (), *fl = json_object_new_array ();
  const char *names[3];
  char unknown[16];
  size_t n, j;

  n = flag_names (b->flags, names, unknown, sizeof unknown);
  for (j = 0; j < n; j++)
    json_object_array_add (fl, json_object_new_string (names[j]));
  json_object_object_add (o, "name", json_object_new_string (b->name));
  json_object_object_add (o, "granularity", json_object_new_uint64 (b->granularity));
  json_object_object_add (o, "flags", fl);
  if (b->have_count)
    json_object_object_add (o, "count", json_object_new_uint64 (b->dirty_bytes));
  if (!b->supported)
    json_object_object_add (o, "supported", json_object_new_boolean (false));
  return o;
}

/* Print the list: a table, or one JSON array. */
static void
list (struct rb_image *img, bool json)
{
  struct rb_bitmap_info *v;
  json_object *arr;
  size_t nr, i, n, j;

  if (rb_bitmap_list (img, true, &v, &nr) == -1)
    die_rb ();
  if (json) {
    arr = json_object_new_array ();
    for (i = 0; i < nr; i++)
      json_object_array_add (arr, bitmap_json (&v[i]));
    printf ("%s\n", json_object_to_json_string_ext (arr, JSON_C_TO_STRING_PLAIN));
    json_object_put (arr);
    free (v);
    return;
  }
  if (nr)
    printf ("%-20s %12s  %-12s %s\n", "NAME", "GRANULARITY", "FLAGS", "DIRTY BYTES");
  for (i = 0; i < nr; i++) {
    const struct rb_bitmap_info *b = &v[i];
    const char *names[3];
    char unknown[16], flags[64] = "", count[32] = "-";

    n = flag_names (b->flags, names, unknown, sizeof unknown);
    for (j = 0; j < n; j++)
      snprintf (flags + strlen (flags), sizeof flags - strlen (flags), "%s%s", j ? "," : "", names[j]);
    if (b->have_count)
      snprintf (count, sizeof count, "%" PRIu64, b->dirty_bytes);
    printf ("%-20s %12" PRIu64 "  %-12s %s%s\n", b->name, b->granularity,
            n ? flags : "-", count, b->supported ? "" : "  (not supported by rblock)");
  }
  free (v);
}

static bool
has_op (const struct op *ops, size_t nr, enum op_kind kind)
{
  size_t i;

  for (i = 0; i < nr; i++)
    if (ops[i].kind == kind)
      return true;
  return false;
}

int
main (int argc, char **argv)
{
  enum { ADD = 0x100, REMOVE, CLEAR, ENABLE, DISABLE, MERGE };
  static const struct option longopts[] = {
    { "add", no_argument, NULL, ADD },
    { "remove", no_argument, NULL, REMOVE },
    { "clear", no_argument, NULL, CLEAR },
    { "enable", no_argument, NULL, ENABLE },
    { "disable", no_argument, NULL, DISABLE },
    { "merge", required_argument, NULL, MERGE },
    { "granularity", required_argument, NULL, 'g' },
    { "source-file", required_argument, NULL, 'b' },
    { "source-format", required_argument, NULL, 'F' },
    { NULL, 0, NULL, 0 },
  };
  struct cmdline cl = { .shortopts = "g:b:F:", .longopts = longopts,
                        .shared = OPT_FORMAT | OPT_SHARE | OPT_OUTPUT | OPT_QUIET,
                        .usage = usage };
  struct rb_open_opts o = { .flags = RB_OPEN_NO_BACKING };
  struct rb_image *img, *src = NULL;
  const char *source_file = NULL, *image, *name;
  struct op *ops = NULL;
  uint64_t granularity = 0;
  size_t nr_ops = 0, i;
  int c;

  ops = calloc (argc, sizeof *ops);
  if (!ops)
    die (EXIT_TROUBLE, "out of memory");
  while ((c = cmdline_next (&cl, argc, argv)) != -1) {
    switch (c) {
    case ADD: case REMOVE: case CLEAR: case ENABLE: case DISABLE: case MERGE:
      ops[nr_ops].kind = c - ADD;
      ops[nr_ops++].arg = c == MERGE ? optarg : NULL;
      break;
    case 'g':
      if (parse_size_full (optarg, &granularity) < 0 || granularity == 0)
        cmdline_die (&cl, "-g: '%s' is not a size", optarg);
      break;
    case 'b':
      source_file = optarg;
      break;
    case 'F':
      if (strcmp (optarg, "qcow2") != 0)
        cmdline_die (&cl, "-F: a bitmap source is a qcow2 image, not '%s'", optarg);
      break;
    default:
      usage (stderr, EXIT_USAGE);
    }
  }
  if (cl.format && strcmp (cl.format, "qcow2") != 0)
    die (EXIT_TROUBLE, "a %s image has no bitmaps: only qcow2 holds them", cl.format);
  if (nr_ops == 0) {
    if (argc - optind != 1)
      cmdline_die (&cl, "give one IMAGE to list its bitmaps (see --help)");
    o.flags |= RB_OPEN_RDONLY | (cl.force_share ? RB_OPEN_NO_LOCK : 0);
    if (!(img = rb_open (argv[optind], &o)))
      die_rb ();
    list (img, cl.json);
    rb_close (img);
    free (ops);
    return EXIT_OK;
  }
  if (argc - optind != 2)
    cmdline_die (&cl, "give IMAGE and BITMAP (see --help)");
  if (granularity && !has_op (ops, nr_ops, OP_ADD))
    cmdline_die (&cl, "-g goes with --add");
  if (source_file && !has_op (ops, nr_ops, OP_MERGE))
    cmdline_die (&cl, "-b goes with --merge");
  if (cl.force_share)
    cmdline_die (&cl, "-U is for listing: a change needs QEMU's write lock");
  image = argv[optind];
  name = argv[optind + 1];

  if (!(img = rb_open (image, &o)))
    die_rb ();
  if (source_file) {
    struct rb_open_opts so = { .flags = RB_OPEN_RDONLY | RB_OPEN_NO_BACKING };
    if (!(src = rb_open (source_file, &so)))
      die (EXIT_TROUBLE, "%s", rb_errmsg ());
  }
  for (i = 0; i < nr_ops; i++) {
    const struct op *op = &ops[i];
    int r = 0;

    switch (op->kind) {
    case OP_ADD:
      r = rb_bitmap_add (img, name, granularity, false);
      break;
    case OP_REMOVE:
      r = rb_bitmap_remove (img, name);
      break;
    case OP_CLEAR:
      r = rb_bitmap_clear (img, name);
      break;
    case OP_ENABLE:
    case OP_DISABLE:
      r = rb_bitmap_enable (img, name, op->kind == OP_ENABLE);
      break;
    case OP_MERGE:
      r = rb_bitmap_merge (img, name, src ? src : img, op->arg);
      break;
    }
    if (r == -1) {
      char msg[1024];
      snprintf (msg, sizeof msg, "%s", rb_errmsg ());
      rb_close (src);
      rb_close (img);
      die (EXIT_TROUBLE, "--%s %s: %s", op_names[op->kind], name, msg);
    }
  }
  if (rb_close (src) == -1 || rb_close (img) == -1)
    die_rb ();
  free (ops);
  return EXIT_OK;
}
