/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * rb-check: consistency check of a qcow2 image with qemu-img check's exit codes, optional leak repair.
 */
#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rblock.h"

static const char *progname = "rb-check";

static void __attribute__((noreturn))
usage (FILE *f, int status)
{
  fprintf (f,
           "usage: %s [--repair leaks|all] [--json] IMAGE\n"
           "\n"
           "Walks the L1/L2 tables and refcounts of a qcow2 image like 'qemu-img check'.\n"
           "Exit status: 0 clean, 2 corruptions, 3 leaks only, 1 the check itself failed.\n"
           "\n"
           "  -r, --repair leaks   drop refcounts no table references (leaked clusters)\n"
           "  -r, --repair all     also raise refcounts that are too low\n"
           "  -j, --json           print the result as one JSON object\n"
           "  -h, --help           this help\n"
           "  -V, --version        print the version\n"
           "\n"
           "examples:\n"
           "  %s disk.qcow2\n"
           "  %s --repair leaks --json disk.qcow2 | jq .leaks\n",
           progname, progname, progname);
  exit (status);
}

int
main (int argc, char **argv)
{
  static const struct option longopts[] = {
    { "repair", required_argument, NULL, 'r' },
    { "json", no_argument, NULL, 'j' },
    { "help", no_argument, NULL, 'h' },
    { "version", no_argument, NULL, 'V' },
    { NULL, 0, NULL, 0 },
  };
  struct rb_open_opts o = { .flags = RB_OPEN_RDONLY };
  struct rb_check_result r;
  struct rb_image *img;
  unsigned flags = 0;
  bool json = false;
  int c;

  while ((c = getopt_long (argc, argv, "r:jhV", longopts, NULL)) != -1) {
    switch (c) {
    case 'r':
      if (strcmp (optarg, "leaks") == 0)
        flags = RB_CHECK_REPAIR_LEAKS;
      else if (strcmp (optarg, "all") == 0)
        flags = RB_CHECK_REPAIR_LEAKS | RB_CHECK_REPAIR_ALL;
      else {
        fprintf (stderr, "%s: --repair takes 'leaks' or 'all', not '%s'\n", progname, optarg);
        exit (1);
      }
      o.flags = 0;
      break;
    case 'j': json = true; break;
    case 'h': usage (stdout, 0);
    case 'V': printf ("%s %s\n", progname, PACKAGE_VERSION); exit (0);
    default: usage (stderr, 1);
    }
  }
  if (argc - optind != 1)
    usage (stderr, 1);

  img = rb_open (argv[optind], &o);
  if (!img) {
    fprintf (stderr, "%s: %s\n", progname, rb_errmsg ());
    exit (1);
  }
  if (rb_check (img, &r, flags) == -1) {
    fprintf (stderr, "%s: %s\n", progname, rb_errmsg ());
    rb_close (img);
    exit (1);
  }
  if (rb_close (img) == -1) {
    fprintf (stderr, "%s: %s\n", progname, rb_errmsg ());
    exit (1);
  }
  /* What a repair fixed is no longer an error. */
  if (json)
    printf ("{\"filename\":\"%s\",\"corruptions\":%" PRIu64 ",\"leaks\":%" PRIu64
            ",\"check_errors\":%" PRIu64 ",\"corruptions_fixed\":%" PRIu64
            ",\"leaks_fixed\":%" PRIu64 ",\"leaks_past_eof\":%" PRIu64 ",\"allocated_clusters\":%" PRIu64
            ",\"total_clusters\":%" PRIu64 ",\"image_end_offset\":%" PRIu64 "}\n",
            argv[optind], r.corruptions, r.leaks - r.leaks_fixed, r.check_errors,
            r.corruptions_fixed, r.leaks_fixed, r.leaks_past_eof, r.allocated_clusters, r.total_clusters,
            r.image_end_offset);
  else {
    if (r.corruptions == 0 && r.leaks == r.leaks_fixed)
      printf ("No errors were found on the image.\n");
    if (r.corruptions)
      printf ("%" PRIu64 " errors were found on the image.\n", r.corruptions);
    if (r.leaks > r.leaks_fixed)
      printf ("%" PRIu64 " leaked clusters were found on the image.\n", r.leaks - r.leaks_fixed);
    if (r.leaks_fixed || r.corruptions_fixed)
      printf ("Repaired %" PRIu64 " leaks and %" PRIu64 " corruptions.\n",
              r.leaks_fixed, r.corruptions_fixed);
    printf ("%" PRIu64 "/%" PRIu64 " clusters allocated\nImage end offset: %" PRIu64 "\n",
            r.allocated_clusters, r.total_clusters, r.image_end_offset);
  }
  if (r.check_errors)
    return 1;
  if (r.corruptions)
    return 2;
  if (r.leaks > r.leaks_fixed)
    return 3;
  return 0;
}
