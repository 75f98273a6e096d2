/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * rb-map: where a disk's data is, layer by layer, as qemu-img map prints it (human or JSON).
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "common.h"

const char *progname = "rb-map";

static void __attribute__((noreturn))
usage (FILE *f, int status)
{
  fprintf (f,
"usage: %s [--output=human|json] [--start-offset N] [--max-length N] [-f FMT] [-U] IMAGE\n"
"\n"
"Print how IMAGE's guest bytes are stored, as 'qemu-img map' does: for each run the\n"
"layer of the backing chain that decides it (depth), whether that layer has it\n"
"(present), whether it reads as zeros (zero), whether it is stored data (data) and where\n"
"(offset).  Adjacent runs that agree are merged as qemu-img merges them.\n"
"\n"
"  --output=human|json      human (default): the data runs with their host offsets and\n"
"                           files; json: every run, with qemu-img's keys (start, length,\n"
"                           depth, present, zero, data, compressed, offset), one\n"
"                           entry a line\n"
"  -s, --start-offset N     start at guest byte N (sizes as 64k, 1.5G)\n"
"  -l, --max-length N       map at most N bytes\n"
"  -f, --format raw|qcow2   do not probe the format\n"
"  -U, --force-share        open without locks (an image in use by a running VM)\n"
"  -h, --help / -V, --version\n"
"\n"
"examples:\n"
"  %s disk.qcow2\n"
"  %s --output=json -U /var/lib/vm/disk.qcow2 | jq '[.[] | select(.data)] | length'\n"
"  %s --output=json --start-offset 1G --max-length 64M overlay.qcow2\n"
"\n"
"Exit status: 0 done, 1 usage error, 2 failure.\n",
           progname, progname, progname, progname);
  exit (status);
}

/* One run, as qemu-img's MapEntry. */
struct entry {
  uint64_t start, length, offset;
  unsigned depth;
  bool present, zero, data, compressed, has_offset;
};

struct mapper {
  bool json, is_qcow2;
  struct json_stream js;           /* the JSON array, streamed */
  char **names;                    /* file name of each layer (human output) */
  unsigned nr_names;
  struct entry curr;
  uint64_t printed;                /* entries printed */
};

/* qemu-img's entry_mergeable. */
static bool
mergeable (const struct entry *a, const struct entry *b)
{
  if (a->length == 0 || a->zero != b->zero || a->data != b->data || a->depth != b->depth ||
      a->present != b->present || a->compressed != b->compressed || a->has_offset != b->has_offset)
    return false;
  return !a->has_offset || a->offset + a->length == b->offset;
}

/* Print e (next: the entry after it, NULL for the last), as qemu-img's
 * dump_map_entry.  Returns 0, or -1 where human output cannot show a run.
 */
static int
dump (struct mapper *m, const struct entry *e, struct entry *next)
{
  if (m->json) {
    json_object *j = json_object_new_object ();
    json_object_object_add (j, "start", json_object_new_uint64 (e->start));
    json_object_object_add (j, "length", json_object_new_uint64 (e->length));
    json_object_object_add (j, "depth", json_object_new_int (e->depth));
    json_object_object_add (j, "present", json_object_new_boolean (e->present));
    json_object_object_add (j, "zero", json_object_new_boolean (e->zero));
    json_object_object_add (j, "data", json_object_new_boolean (e->data));
    if (m->is_qcow2)                /* as QEMU 8: only formats that compress */
      json_object_object_add (j, "compressed", json_object_new_boolean (e->compressed));
    if (e->has_offset)
      json_object_object_add (j, "offset", json_object_new_uint64 (e->offset));
    if (!m->printed)
      json_stream_open (&m->js, NULL, true);
    json_stream_value (&m->js, NULL, j);
  }
  else {
    if (e->data && !e->has_offset)
      return rb_error (ENOTSUP, "file contains compressed clusters (human output cannot show them; "
                       "use --output=json)");
    if (e->data && !e->zero)
      printf ("%#-16" PRIx64 "%#-16" PRIx64 "%#-16" PRIx64 "%s\n", e->start, e->length,
              e->offset, e->depth < m->nr_names ? m->names[e->depth] : "");
    /* As qemu-img: this format does not tell zero from zero-and-data, so
     * they merge.
     */
    if (next && (!next->data || next->zero)) {
      next->data = false;
      next->zero = true;
    }
  }
  m->printed++;
  return 0;
}

/* rb_map callback: merge into the current entry or print it. */
static int
add (void *opaque, const struct rb_map_entry *me)
{
  struct mapper *m = opaque;
  struct entry next = {
    .start = me->offset, .length = me->length, .offset = me->host_offset, .depth = me->depth,
    .present = me->present, .zero = me->zero, .data = me->data, .compressed = me->compressed,
    .has_offset = me->has_host_offset,
  };

  if (mergeable (&m->curr, &next)) {
    m->curr.length += next.length;
    return 0;
  }
  if (m->curr.length > 0 && dump (m, &m->curr, &next) == -1)
    return -1;
  m->curr = next;
  return 0;
}

int
main (int argc, char **argv)
{
  static const struct option longopts[] = {
    { "start-offset", required_argument, NULL, 's' },
    { "max-length", required_argument, NULL, 'l' },
    { NULL, 0, NULL, 0 },
  };
  struct cmdline cl = {
    .shortopts = "s:l:", .longopts = longopts, .usage = usage,
    .shared = OPT_FORMAT | OPT_SHARE | OPT_OUTPUT,
  };
  struct mapper m = { 0 };
  struct rb_image *img;
  int64_t start = 0, max_length = -1;
  uint64_t size, end, disk;
  int c, r;

  while ((c = cmdline_next (&cl, argc, argv)) != -1) {
    switch (c) {
    case 's':
    case 'l':
      {
        int64_t v = parse_size (optarg);
        if (v < 0)
          cmdline_die (&cl, "--%s: '%s' is not a size (a number with an optional k, M, G, T, P "
                       "or E suffix)", c == 's' ? "start-offset" : "max-length", optarg);
        if (c == 's')
          start = v;
        else
          max_length = v;
      }
      break;
    default:
      usage (stderr, EXIT_USAGE);
    }
  }
  if (argc - optind != 1)
    cmdline_die (&cl, "expected one IMAGE (see --help)");

  img = image_open_as (argv[optind], &cl, RB_OPEN_RDONLY, &m.is_qcow2);
  if (!img)
    die_rb ();
  m.json = cl.json;
  m.js.f = stdout;
  m.js.lines = true;                /* one entry a line, as qemu-img */
  if (!m.json)
    m.names = image_chain_names (argv[optind], &cl, &m.nr_names);

  /* A raw disk is whole sectors: a ragged tail belongs to the last run. */
  size = rb_get_size (img);
  disk = m.is_qcow2 ? size : ROUND_UP_U64 (size, 512);
  end = disk;
  if (max_length >= 0 && (uint64_t) start + max_length < end)
    end = start + max_length;
  m.curr.start = start;
  if (!m.json)
    printf ("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
  r = 0;
  if ((uint64_t) start < end) {
    uint64_t mapped_end = MIN_U64 (end, size);
    if ((uint64_t) start < mapped_end)
      r = rb_map (img, mapped_end - start, start, add, &m);
    if (r == 0 && end > mapped_end) {
      /* A raw file's ragged tail reads as zeros (QEMU: past the end of the file). */
      uint64_t from = MAX_U64 (start, mapped_end);
      struct rb_map_entry tail = { .offset = from, .length = end - from, .present = true,
                                   .zero = true, .has_host_offset = true, .host_offset = from };
      r = add (&m, &tail);
    }
  }
  if (r == 0)
    r = dump (&m, &m.curr, NULL);
  if (m.json && m.printed)
    json_stream_close (&m.js);
  if (r == -1) {
    fflush (stdout);
    die_rb ();
  }
  if (rb_close (img) == -1)
    die_rb ();
  if (fflush (stdout) == EOF || ferror (stdout))
    die (EXIT_TROUBLE, "standard output: %s", strerror (errno));
  return EXIT_OK;
}
