/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * rb-info: what an image is (format, sizes, backing file, snapshots, qcow2 features), as qemu-img info prints it.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <json-c/json.h>

#include "common.h"

const char *progname = "rb-info";

static void __attribute__((noreturn))
usage (FILE *f, int status)
{
  fprintf (f,
"usage: %s [--output=human|json] [--backing-chain] [-f FMT] [-U] IMAGE\n"
"\n"
"Print what IMAGE is, as 'qemu-img info' does: format, virtual and allocated size,\n"
"cluster size, backing file, internal snapshots and the qcow2 features.\n"
"\n"
"  --output=human|json      human (default) or one JSON object with qemu-img's keys:\n"
"                           filename, format, virtual-size, actual-size, dirty-flag,\n"
"                           cluster-size, backing-filename, full-backing-filename,\n"
"                           backing-filename-format, snapshots, format-specific\n"
"                           (qcow2 features and persistent bitmaps)\n"
"      --backing-chain      every image of the chain (JSON: an array, top first)\n"
"  -f, --format raw|qcow2   do not probe the format\n"
"  -U, --force-share        open without locks (an image in use by a running VM)\n"
"  -h, --help / -V, --version\n"
"\n"
"examples:\n"
"  %s disk.qcow2\n"
"  %s --output=json -U /var/lib/vm/disk.qcow2 | jq '.\"virtual-size\"'\n"
"  %s --backing-chain --output=json overlay.qcow2 | jq -r '.[].filename'\n"
"\n"
"Exit status: 0 done, 1 usage error, 2 failure.\n",
           progname, progname, progname, progname);
  exit (status);
}

/* ---- the ImageInfo object ---- */

static void
add_str (json_object *j, const char *key, const char *s)
{
  json_object_object_add (j, key, json_string_qemu (s));
}

static void
add_u64 (json_object *j, const char *key, uint64_t v)
{
  json_object_object_add (j, key, json_object_new_uint64 (v));
}

static void
add_bool (json_object *j, const char *key, bool b)
{
  json_object_object_add (j, key, json_object_new_boolean (b));
}

/* One snapshot, as QEMU's SnapshotInfo. */
static json_object *
snapshot_json (const struct rb_snapshot_info *s)
{
  json_object *j = json_object_new_object ();

  add_str (j, "id", s->id);
  add_str (j, "name", s->name);
  add_u64 (j, "vm-state-size", s->vm_state_size);
  add_u64 (j, "date-sec", s->date_sec);
  add_u64 (j, "date-nsec", s->date_nsec);
  add_u64 (j, "vm-clock-sec", s->vm_clock_nsec / 1000000000);
  add_u64 (j, "vm-clock-nsec", s->vm_clock_nsec % 1000000000);
  if (s->icount != UINT64_MAX)
    add_u64 (j, "icount", s->icount);
  return j;
}

/* The persistent bitmaps, as QEMU's Qcow2BitmapInfo list (NULL if none). */
static json_object *
bitmaps_json (struct rb_image *img)
{
  struct rb_bitmap_info *list;
  json_object *a;
  size_t nr, i;

  if (rb_bitmap_list (img, false, &list, &nr) == -1)
    die_rb ();
  if (nr == 0) {
    free (list);
    return NULL;
  }
  a = json_object_new_array ();
  for (i = 0; i < nr; i++) {
    json_object *b = json_object_new_object (), *flags = json_object_new_array ();
    if (list[i].flags & RB_BITMAP_IN_USE)
      json_object_array_add (flags, json_object_new_string ("in-use"));
    if (list[i].flags & RB_BITMAP_AUTO)
      json_object_array_add (flags, json_object_new_string ("auto"));
    add_str (b, "name", list[i].name);
    add_u64 (b, "granularity", list[i].granularity);
    json_object_object_add (b, "flags", flags);
    json_object_array_add (a, b);
  }
  free (list);
  return a;
}

/* format-specific for a qcow2 image, as QEMU's ImageInfoSpecificQCow2. */
static json_object *
qcow2_specific (const struct rb_info *in, struct rb_image *img)
{
  json_object *fs = json_object_new_object (), *d = json_object_new_object ();
  json_object *bitmaps = in->version >= 3 ? bitmaps_json (img) : NULL;

  json_object_object_add (fs, "type", json_object_new_string ("qcow2"));
  add_str (d, "compat", in->version == 2 ? "0.10" : "1.1");
  add_str (d, "compression-type", in->compression_type ? "zstd" : "zlib");
  if (in->version >= 3)
    add_bool (d, "lazy-refcounts", in->lazy_refcounts);
  if (bitmaps)
    json_object_object_add (d, "bitmaps", bitmaps);
  add_u64 (d, "refcount-bits", in->refcount_bits);
  if (in->version >= 3) {
    add_bool (d, "corrupt", in->corrupt);
    add_bool (d, "extended-l2", in->extended_l2);
  }
  json_object_object_add (fs, "data", d);
  return fs;
}

/* The ImageInfo of the image at name, opened as cl says without its
 * backing chain (as qemu-img info: a missing backing file is no error).
 * Dies on error.
 */
static json_object *
image_info (const char *name, const struct cmdline *cl)
{
  json_object *j = json_object_new_object ();
  struct rb_info *in = NULL;
  struct rb_image *img;
  struct stat st;
  bool q;
  unsigned i;

  img = image_open_as (name, cl, RB_OPEN_RDONLY | RB_OPEN_NO_BACKING, &q);
  if (!img)
    die_rb ();
  if (stat (name, &st) == -1)
    die (EXIT_TROUBLE, "%s: %s", name, strerror (errno));
  if (q) {
    in = malloc (sizeof *in);
    if (!in)
      die (EXIT_TROUBLE, "out of memory");
    if (rb_get_info (img, in) == -1)
      die_rb ();
  }
  add_str (j, "filename", name);
  add_str (j, "format", q ? "qcow2" : "raw");
  add_bool (j, "dirty-flag", q && in->dirty);
  add_u64 (j, "actual-size", (uint64_t) st.st_blocks * 512);
  /* A raw disk is whole sectors, as QEMU counts it. */
  add_u64 (j, "virtual-size", q ? rb_get_size (img) : ROUND_UP_U64 (rb_get_size (img), 512));
  if (q) {
    add_u64 (j, "cluster-size", in->cluster_size);
    if (in->backing_file[0]) {
      char *full = qemu_path_combine (name, in->backing_file);
      add_str (j, "backing-filename", in->backing_file);
      add_str (j, "full-backing-filename", full);
      if (in->backing_format[0])
        add_str (j, "backing-filename-format", in->backing_format);
      free (full);
    }
    if (in->nb_snapshots) {
      struct rb_snapshot_info *list;
      int n = rb_snapshot_list (img, &list);
      json_object *a = json_object_new_array ();
      if (n == -1)
        die_rb ();
      for (i = 0; i < (unsigned) n; i++)
        json_object_array_add (a, snapshot_json (&list[i]));
      json_object_object_add (j, "snapshots", a);
      free (list);
    }
    json_object_object_add (j, "format-specific", qcow2_specific (in, img));
  }
  if (rb_close (img) == -1)
    die_rb ();
  free (in);
  json_qemu_order (j);
  return j;
}

/* ---- human output, as QEMU's bdrv_image_info_dump ---- */

/* QEMU's size_to_str: three significant digits and a binary unit. */
static void
size_str (char *buf, size_t n, uint64_t v)
{
  static const char *const suffix[] = { "", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei" };
  int e, i;

  frexp (v / (1000.0 / 1024.0), &e);
  i = (e - 1) / 10;
  snprintf (buf, n, "%0.3g %sB", (double) v / (double) (1ULL << (i * 10)), suffix[i]);
}

static const char *
get_str (json_object *j, const char *key)
{
  json_object *v;
  return json_object_object_get_ex (j, key, &v) ? json_object_get_string (v) : NULL;
}

static uint64_t
get_u64 (json_object *j, const char *key)
{
  json_object *v;
  return json_object_object_get_ex (j, key, &v) ? json_object_get_uint64 (v) : 0;
}

/* QEMU's dump_qobject: "key: value" lines, dashes as spaces, lists as [i]. */
static void
dump_value (int indent, json_object *v)
{
  size_t i, n;

  switch (json_object_get_type (v)) {
  case json_type_object:
    json_object_object_foreach (v, key, val) {
      enum json_type t = json_object_get_type (val);
      bool composite = t == json_type_object || t == json_type_array;
      char *k = strdup (key), *p;
      if (!k)
        die (EXIT_TROUBLE, "out of memory");
      for (p = k; *p; p++)
        if (*p == '-')
          *p = ' ';
      printf ("%*s%s:%c", indent * 4, "", k, composite ? '\n' : ' ');
      free (k);
      dump_value (indent + 1, val);
      if (!composite)
        putchar ('\n');
    }
    break;
  case json_type_array:
    n = json_object_array_length (v);
    for (i = 0; i < n; i++) {
      json_object *e = json_object_array_get_idx (v, i);
      enum json_type t = json_object_get_type (e);
      bool composite = t == json_type_object || t == json_type_array;
      printf ("%*s[%zu]:%c", indent * 4, "", i, composite ? '\n' : ' ');
      dump_value (indent + 1, e);
      if (!composite)
        putchar ('\n');
    }
    break;
  case json_type_boolean:
    printf ("%s", json_object_get_boolean (v) ? "true" : "false");
    break;
  default:
    printf ("%s", json_object_get_string (v));
  }
}

/* The report of one image (name: its file name, as bytes). */
static void
print_human (json_object *j, const char *name)
{
  char vs[32], ds[32];
  json_object *v;
  const char *b, *fb, *bf;

  size_str (vs, sizeof vs, get_u64 (j, "virtual-size"));
  size_str (ds, sizeof ds, get_u64 (j, "actual-size"));
  printf ("image: %s\nfile format: %s\nvirtual size: %s (%" PRIu64 " bytes)\ndisk size: %s\n",
          name, get_str (j, "format"), vs, get_u64 (j, "virtual-size"), ds);
  if (json_object_object_get_ex (j, "cluster-size", &v))
    printf ("cluster_size: %" PRIu64 "\n", json_object_get_uint64 (v));
  if (json_object_object_get_ex (j, "dirty-flag", &v) && json_object_get_boolean (v))
    printf ("cleanly shut down: no\n");
  if ((b = get_str (j, "backing-filename"))) {
    fb = get_str (j, "full-backing-filename");
    printf ("backing file: %s", b);
    if (fb && strcmp (b, fb) != 0)
      printf (" (actual path: %s)", fb);
    printf ("\n");
    if ((bf = get_str (j, "backing-filename-format")))
      printf ("backing file format: %s\n", bf);
  }
  if (json_object_object_get_ex (j, "snapshots", &v)) {
    size_t i, n = json_object_array_length (v);
    printf ("Snapshot list:\n%-10s%-17s%8s%20s%13s%11s\n",
            "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT");
    for (i = 0; i < n; i++) {
      json_object *s = json_object_array_get_idx (v, i), *ic;
      uint64_t secs = get_u64 (s, "vm-clock-sec"), ms = get_u64 (s, "vm-clock-nsec") / 1000000;
      time_t date = get_u64 (s, "date-sec");
      char size[32], when[64] = "", icount[32] = "", clock[64];
      struct tm tm;
      size_str (size, sizeof size, get_u64 (s, "vm-state-size"));
      if (localtime_r (&date, &tm))
        strftime (when, sizeof when, "%Y-%m-%d %H:%M:%S", &tm);
      if (json_object_object_get_ex (s, "icount", &ic))
        snprintf (icount, sizeof icount, "%" PRIu64, json_object_get_uint64 (ic));
      snprintf (clock, sizeof clock, "%02d:%02d:%02d.%03d", (int) (secs / 3600),
                (int) (secs / 60 % 60), (int) (secs % 60), (int) ms);
      printf ("%-9s %-16s %8s%20s%13s%11s\n", get_str (s, "id"), get_str (s, "name"),
              size, when, clock, icount);
    }
  }
  if (json_object_object_get_ex (j, "format-specific", &v) &&
      json_object_object_get_ex (v, "data", &v)) {
    printf ("Format specific information:\n");
    dump_value (1, v);
  }
}

int
main (int argc, char **argv)
{
  static const struct option longopts[] = {
    { "backing-chain", no_argument, NULL, 'B' },
    { NULL, 0, NULL, 0 },
  };
  struct cmdline cl = {
    .longopts = longopts, .usage = usage, .shared = OPT_FORMAT | OPT_SHARE | OPT_OUTPUT,
  };
  bool chain = false;
  json_object *out;
  char **names = NULL;
  int c;

  while ((c = cmdline_next (&cl, argc, argv)) != -1) {
    switch (c) {
    case 'B': chain = true; break;
    default: usage (stderr, EXIT_USAGE);
    }
  }
  if (argc - optind != 1)
    cmdline_die (&cl, "expected one IMAGE (see --help)");

  out = image_info (argv[optind], &cl);
  if (chain) {
    struct cmdline layer = cl;
    json_object *a = json_object_new_array ();
    unsigned n, i;

    names = image_chain_names (argv[optind], &cl, &n);
    json_object_array_add (a, out);
    for (i = 1; i < n; i++) {
      json_object *up = json_object_array_get_idx (a, i - 1);
      layer.format = get_str (up, "backing-filename-format");
      json_object_array_add (a, image_info (names[i], &layer));
    }
    out = a;
  }
  if (cl.json)
    printf ("%s\n", json_object_to_json_string_ext (out, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED |
                                                      JSON_C_TO_STRING_NOSLASHESCAPE));
  else if (chain) {
    size_t i, n = json_object_array_length (out);
    for (i = 0; i < n; i++) {
      if (i)
        printf ("\n");
      print_human (json_object_array_get_idx (out, i), names[i]);
    }
  }
  else
    print_human (out, argv[optind]);
  json_object_put (out);
  if (fflush (stdout) == EOF || ferror (stdout))
    die (EXIT_TROUBLE, "standard output: %s", strerror (errno));
  return EXIT_OK;
}
