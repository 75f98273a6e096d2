/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * rb-commit: write an overlay's data into its backing file and empty it, as qemu-img commit.
 */
#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

const char *progname = "rb-commit";

static void __attribute__((noreturn))
usage (FILE *f, int status)
{
  fprintf (f,
           "usage: %s [-b BASE] [-d] [-p] [-q] TOP\n"
           "\n"
           "Writes the data of the qcow2 image TOP (zero clusters as zeros) into its\n"
           "backing file, qcow2 or raw, growing a smaller one, then empties TOP, as\n"
           "'qemu-img commit'.  TOP shows the same disk before, during and after.\n"
           "\n"
           "  -b, --base BASE        commit into BASE, deeper in TOP's chain: the data of\n"
           "                         TOP and every image between goes there (implies -d;\n"
           "                         the images between no longer show their old disks)\n"
           "  -d, --keep             leave TOP as it is (qemu-img's -d)\n"
           "  -p, --progress[=fd:N]  a bar on a terminal, else done/total lines\n"
           "  -q, --quiet            no messages on success\n"
           "  -h, --help             this help\n"
           "  -V, --version          print the version\n"
           "\n"
           "Exit status: 0 done, 1 error (as qemu-img).\n"
           "\n"
           "examples:\n"
           "  %s inc2.qcow2                    # into inc1.qcow2, its backing file\n"
           "  %s -b full.qcow2 -p inc2.qcow2   # the whole chain above full.qcow2\n",
           progname, progname, progname);
  exit (status);
}

int
main (int argc, char **argv)
{
  static const struct option longopts[] = {
    { "base", required_argument, NULL, 'b' },
    { "keep", no_argument, NULL, 'd' },
    { NULL, 0, NULL, 0 },
  };
  struct cmdline cl = { .shortopts = "b:d", .longopts = longopts,
                        .shared = OPT_FORMAT | OPT_PROGRESS | OPT_QUIET, .usage = usage };
  const char *base = NULL;
  struct progress prog;
  struct rb_image *img;
  unsigned flags = 0;
  int c;

  while ((c = cmdline_next (&cl, argc, argv)) != -1) {
    if (c == 'b')
      base = optarg;
    else if (c == 'd')
      flags |= RB_COMMIT_KEEP;
  }
  if (argc - optind != 1)
    cmdline_die (&cl, "expected one image, TOP (see --help)");
  if (cl.format && strcmp (cl.format, "qcow2") != 0)
    cmdline_die (&cl, "TOP must be a qcow2 image (-f %s)", cl.format);
  img = rb_open (argv[optind], NULL);
  if (!img)
    die (EXIT_USAGE, "%s", rb_errmsg ());
  progress_init (&prog, cl.progress, rb_get_size (img));
  if (rb_commit (img, base, flags, progress_cb, &prog) == -1) {
    progress_end (&prog);
    fprintf (stderr, "%s: %s\n", progname, rb_errmsg ());
    rb_close (img);
    exit (EXIT_USAGE);
  }
  progress_end (&prog);
  if (rb_close (img) == -1)
    die (EXIT_USAGE, "%s", rb_errmsg ());
  if (!cl.quiet)
    printf ("Image committed.\n");
  return EXIT_OK;
}
