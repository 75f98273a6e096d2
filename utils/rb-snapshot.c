/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * rb-snapshot: list, create, apply and delete internal snapshots, as qemu-img snapshot.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <json-c/json.h>

#include "common.h"

const char *progname = "rb-snapshot";

static void __attribute__((noreturn))
usage (FILE *f, int status)
{
  fprintf (f,
           "usage: %s [-U] [-q] [--output=human|json] -l IMAGE\n"
           "       %s [-q] -c NAME | -a NAME | -d NAME IMAGE\n"
           "\n"
           "Internal snapshots of a qcow2 image, as 'qemu-img snapshot':\n"
           "  -l, --list            list the snapshots (--output=json: qemu-img info's keys)\n"
           "  -c, --create NAME     take a snapshot of the current state (names are unique)\n"
           "  -a, --apply ID|NAME   make the snapshot the current state (its disk size too)\n"
           "  -d, --delete ID|NAME  delete the snapshot (clusters only it used are freed)\n"
           "  -U, --force-share     list without taking QEMU's image locks\n"
           "  -q, --quiet           no messages on success\n"
           "  -h, --help            this help\n"
           "  -V, --version         print the version\n"
           "\n"
           "Each change is crash-safe: killed at any point, the image is the old one or the\n"
           "new one.  Exit status: 0 done, 1 error (as qemu-img).\n"
           "\n"
           "examples:\n"
           "  %s -c before-upgrade disk.qcow2\n"
           "  %s -l disk.qcow2\n"
           "  %s -a before-upgrade disk.qcow2\n"
           "  %s -l --output=json disk.qcow2 | jq -r '.[].name'\n"
           "  %s -d 1 disk.qcow2\n",
           progname, progname, progname, progname, progname, progname, progname);
  exit (status);
}

/* QEMU's size_to_str: three significant digits and a binary unit. */
static void
size_to_str (char *buf, size_t len, uint64_t v)
{
  static const char *const suffixes[] = { "", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei" };
  int i;

  frexp (v / (1000.0 / 1024.0), &i);
  i = (i - 1) / 10;
  snprintf (buf, len, "%0.3g %sB", (double) v / (1ULL << (10 * i)), suffixes[i]);
}

/* The listing of qemu-img snapshot -l. */
static void
list_human (const struct rb_snapshot_info *v, int n)
{
  int i;

  printf ("Snapshot list:\n%-10s%-17s%8s%20s%13s%11s\n",
          "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT");
  for (i = 0; i < n; i++) {
    char size[32], date[32], clock[64], icount[32] = "";
    time_t t = v[i].date_sec;
    uint64_t secs = v[i].vm_clock_nsec / 1000000000;
    struct tm tm;

    size_to_str (size, sizeof size, v[i].vm_state_size);
    strftime (date, sizeof date, "%Y-%m-%d %H:%M:%S", localtime_r (&t, &tm));
    snprintf (clock, sizeof clock, "%02d:%02d:%02d.%03d", (int) (secs / 3600),
              (int) ((secs / 60) % 60), (int) (secs % 60),
              (int) ((v[i].vm_clock_nsec / 1000000) % 1000));
    if (v[i].icount != UINT64_MAX)
      snprintf (icount, sizeof icount, "%" PRId64, (int64_t) v[i].icount);
    printf ("%-9s %-16s %8s%20s%13s%11s\n", v[i].id, v[i].name, size, date, clock, icount);
  }
}

/* A JSON array with the keys of qemu-img info's "snapshots". */
static void
list_json (const struct rb_snapshot_info *v, int n)
{
  json_object *a = json_object_new_array ();
  int i;

  for (i = 0; i < n; i++) {
    json_object *o = json_object_new_object ();
    if (v[i].icount != UINT64_MAX)
      json_object_object_add (o, "icount", json_object_new_int64 (v[i].icount));
    json_object_object_add (o, "vm-clock-nsec",
                            json_object_new_int64 (v[i].vm_clock_nsec % 1000000000));
    json_object_object_add (o, "name", json_object_new_string (v[i].name));
    json_object_object_add (o, "date-sec", json_object_new_int64 (v[i].date_sec));
    json_object_object_add (o, "date-nsec", json_object_new_int64 (v[i].date_nsec));
    json_object_object_add (o, "vm-clock-sec",
                            json_object_new_int64 (v[i].vm_clock_nsec / 1000000000));
    json_object_object_add (o, "id", json_object_new_string (v[i].id));
    json_object_object_add (o, "vm-state-size", json_object_new_int64 (v[i].vm_state_size));
    json_object_array_add (a, o);
  }
  printf ("%s\n", json_object_to_json_string_ext (a, JSON_C_TO_STRING_PRETTY |
                                                  JSON_C_TO_STRING_SPACED));
  json_object_put (a);
}

int
main (int argc, char **argv)
{
  static const struct option longopts[] = {
    { "list", no_argument, NULL, 'l' },
    { "create", required_argument, NULL, 'c' },
    { "apply", required_argument, NULL, 'a' },
    { "delete", required_argument, NULL, 'd' },
    { NULL, 0, NULL, 0 },
  };
  struct cmdline cl = { .shortopts = "lc:a:d:", .longopts = longopts,
                        .shared = OPT_SHARE | OPT_OUTPUT | OPT_QUIET, .usage = usage };
  struct rb_open_opts o = { .flags = RB_OPEN_NO_BACKING };
  struct rb_snapshot_info *list;
  const char *name = NULL;
  struct rb_image *img;
  int c, action = 0, r = 0;

  while ((c = cmdline_next (&cl, argc, argv)) != -1) {
    if (action)
      cmdline_die (&cl, "only one of -l, -c, -a, -d may be given");
    action = c;
    name = optarg;
  }
  if (!action)
    cmdline_die (&cl, "one of -l, -c, -a, -d is needed");
  if (argc - optind != 1)
    cmdline_die (&cl, "expected one IMAGE (see --help)");
  if (action == 'l')
    o.flags |= RB_OPEN_RDONLY | (cl.force_share ? RB_OPEN_NO_LOCK : 0);
  else if (cl.force_share)
    cmdline_die (&cl, "-U/--force-share is only for listing (-l)");

  img = rb_open (argv[optind], &o);
  if (!img)
    die (EXIT_USAGE, "%s", rb_errmsg ());
  switch (action) {
  case 'l':
    if ((r = rb_snapshot_list (img, &list)) >= 0) {
      if (cl.json)
        list_json (list, r);
      else if (r > 0)
        list_human (list, r);
      free (list);
      r = 0;
    }
    break;
  case 'c': r = rb_snapshot_create (img, name); break;
  case 'a': r = rb_snapshot_apply (img, name); break;
  case 'd': r = rb_snapshot_delete (img, name); break;
  }
  if (r == -1) {
    fprintf (stderr, "%s: cannot %s snapshot \"%s\": %s\n", progname,
             action == 'l' ? "list" : action == 'c' ? "create" : action == 'a' ? "apply"
             : "delete", name ? name : "", rb_errmsg ());
    rb_close (img);
    exit (EXIT_USAGE);
  }
  if (rb_close (img) == -1)
    die (EXIT_USAGE, "%s", rb_errmsg ());
  return EXIT_OK;
}
