/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * rb-check: consistency check of a qcow2 image with qemu-img check's output and exit codes, optional leak repair.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "common.h"

const char *progname = "rb-check";

/* qemu-img check's exit codes. */
#define CHECK_ERROR        1        /* the check itself failed */
#define CHECK_CORRUPT      2
#define CHECK_LEAKS        3
#define CHECK_UNSUPPORTED  63       /* the format has no checks (raw) */

static void __attribute__((noreturn))
usage (FILE *f, int status)
{
  fprintf (f,
"usage: %s [-r leaks|all] [--output=human|json] [-f FMT] [-U] [-q] IMAGE\n"
"\n"
"Walk the L1/L2 tables and refcounts of a qcow2 image as 'qemu-img check' does and\n"
"print the same report (human or JSON, with qemu-img's keys).\n"
"\n"
"  -r, --repair leaks       drop refcounts no table references (leaked clusters)\n"
"  -r, --repair all         also raise refcounts that are too low\n"
"      --output=human|json  the report's form (--json, -j: json); JSON keys: filename,\n"
"                           format, check-errors, image-end-offset, total-clusters,\n"
"                           allocated-clusters, fragmented-clusters, compressed-clusters,\n"
"                           corruptions, leaks, corruptions-fixed, leaks-fixed (the last\n"
"                           six only when not zero, as qemu-img) and leaks-past-eof\n"
"  -f, --format raw|qcow2   do not probe the format\n"
"  -U, --force-share        open without locks (an image in use; not with --repair)\n"
"  -q, --quiet              print nothing; the exit status tells\n"
"  -h, --help / -V, --version\n"
"\n"
"examples:\n"
"  %s disk.qcow2\n"
"  %s --repair leaks --output=json disk.qcow2 | jq '.leaks // 0'\n"
"\n"
"Exit status: 0 clean, 1 the check itself failed (or usage), 2 corruptions,\n"
"3 leaks only, 63 the image format has no checks (raw): as qemu-img check.\n",
           progname, progname, progname);
  exit (status);
}

/* Add key: n to j, if n is not zero (qemu-img leaves such keys out). */
static void
add_if_set (json_object *j, const char *key, uint64_t n)
{
  if (n)
    json_object_object_add (j, key, json_object_new_uint64 (n));
}

/* The JSON report, as qemu-img check --output=json (after a repair: what
 * was left, and what was fixed).
 */
static void
print_json (const char *filename, const struct rb_check_result *r)
{
  json_object *j = json_object_new_object ();

  json_object_object_add (j, "filename", json_string_qemu (filename));
  json_object_object_add (j, "format", json_object_new_string ("qcow2"));
  json_object_object_add (j, "check-errors", json_object_new_uint64 (r->check_errors));
  add_if_set (j, "image-end-offset", r->image_end_offset);
  add_if_set (j, "total-clusters", r->total_clusters);
  add_if_set (j, "allocated-clusters", r->allocated_clusters);
  add_if_set (j, "fragmented-clusters", r->fragmented_clusters);
  add_if_set (j, "compressed-clusters", r->compressed_clusters);
  add_if_set (j, "corruptions", r->corruptions);
  add_if_set (j, "leaks", r->leaks - r->leaks_fixed);
  add_if_set (j, "corruptions-fixed", r->corruptions_fixed);
  add_if_set (j, "leaks-fixed", r->leaks_fixed);
  json_object_object_add (j, "leaks-past-eof", json_object_new_uint64 (r->leaks_past_eof));
  printf ("%s\n", json_object_to_json_string_ext (j, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED |
                                                    JSON_C_TO_STRING_NOSLASHESCAPE));
  json_object_put (j);
}

/* The human report, in qemu-img check's words. */
static void
print_human (const struct rb_check_result *r)
{
  uint64_t leaks = r->leaks - r->leaks_fixed;

  if (r->leaks_fixed || r->corruptions_fixed)
    printf ("The following inconsistencies were found and repaired:\n\n"
            "    %" PRIu64 " leaked clusters\n    %" PRIu64 " corruptions\n\n"
            "Double checking the fixed image now...\n", r->leaks_fixed, r->corruptions_fixed);
  if (!r->corruptions && !leaks && !r->check_errors)
    printf ("No errors were found on the image.\n");
  if (r->corruptions)
    printf ("\n%" PRIu64 " errors were found on the image.\n"
            "Data may be corrupted, or further writes to the image may corrupt it.\n",
            r->corruptions);
  if (leaks)
    printf ("\n%" PRIu64 " leaked clusters were found on the image.\n"
            "This means waste of disk space, but no harm to data.\n", leaks);
  if (r->check_errors)
    printf ("\n%" PRIu64 " internal errors have occurred during the check.\n", r->check_errors);
  if (r->total_clusters && r->allocated_clusters)
    printf ("%" PRIu64 "/%" PRIu64 " = %0.2f%% allocated, %0.2f%% fragmented, "
            "%0.2f%% compressed clusters\n", r->allocated_clusters, r->total_clusters,
            r->allocated_clusters * 100.0 / r->total_clusters,
            r->fragmented_clusters * 100.0 / r->allocated_clusters,
            r->compressed_clusters * 100.0 / r->allocated_clusters);
  if (r->image_end_offset)
    printf ("Image end offset: %" PRIu64 "\n", r->image_end_offset);
}

/* Print "rb-check: message" and exit with the check-failed status. */
static void __attribute__((noreturn))
fail (const char *msg)
{
  fprintf (stderr, "%s: %s\n", progname, msg);
  exit (CHECK_ERROR);
}

int
main (int argc, char **argv)
{
  static const struct option longopts[] = {
    { "repair", required_argument, NULL, 'r' },
    { NULL, 0, NULL, 0 },
  };
  struct cmdline cl = {
    .shortopts = "r:", .longopts = longopts, .usage = usage,
    .shared = OPT_FORMAT | OPT_SHARE | OPT_OUTPUT | OPT_QUIET,
  };
  struct rb_check_result r;
  struct rb_image *img;
  unsigned flags = 0;
  bool is_qcow2;
  int c;

  while ((c = cmdline_next (&cl, argc, argv)) != -1) {
    switch (c) {
    case 'r':
      if (strcmp (optarg, "leaks") == 0)
        flags = RB_CHECK_REPAIR_LEAKS;
      else if (strcmp (optarg, "all") == 0)
        flags = RB_CHECK_REPAIR_LEAKS | RB_CHECK_REPAIR_ALL;
      else
        cmdline_die (&cl, "--repair takes 'leaks' or 'all', not '%s'", optarg);
      break;
    default:
      usage (stderr, EXIT_USAGE);
    }
  }
  if (argc - optind != 1)
    cmdline_die (&cl, "expected one IMAGE (see --help)");
  if (flags && cl.force_share)
    cmdline_die (&cl, "--force-share (-U) opens the image read-only: it cannot go with --repair");

  if (image_probe_format (argv[optind], &cl, &is_qcow2) == -1)
    fail (rb_errmsg ());
  if (!is_qcow2) {
    fprintf (stderr, "%s: %s: this image format (raw) does not support checks\n",
             progname, argv[optind]);
    exit (CHECK_UNSUPPORTED);
  }
  img = image_open_as (argv[optind], &cl, flags ? 0 : RB_OPEN_RDONLY, NULL);
  if (!img)
    fail (rb_errmsg ());
  if (rb_check (img, &r, flags) == -1) {
    char msg[1024];
    snprintf (msg, sizeof msg, "%s", rb_errmsg ());
    rb_close (img);
    fail (msg);
  }
  if (rb_close (img) == -1)
    fail (rb_errmsg ());
  if (!cl.quiet) {
    if (cl.json)
      print_json (argv[optind], &r);
    else
      print_human (&r);
  }
  if (fflush (stdout) == EOF || ferror (stdout))
    fail ("standard output: write error");
  /* What a repair fixed is no longer an error. */
  if (r.check_errors)
    return CHECK_ERROR;
  if (r.corruptions)
    return CHECK_CORRUPT;
  if (r.leaks > r.leaks_fixed)
    return CHECK_LEAKS;
  return 0;
}
