/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * rb-rebase: give a qcow2 image another backing file, keeping its disk (or not: -u), as qemu-img rebase.
 */
#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

const char *progname = "rb-rebase";

static void __attribute__((noreturn))
usage (FILE *f, int status)
{
  fprintf (f,
           "usage: %s -b BACKING [-F raw|qcow2] [-u] [-p] [-q] IMAGE\n"
           "\n"
           "Makes BACKING the backing file of the qcow2 image IMAGE, as 'qemu-img rebase'.\n"
           "First every range where the old and the new backing file differ (and IMAGE\n"
           "has nothing of its own) is copied into IMAGE, so IMAGE shows the same disk;\n"
           "then the name and format switch in one atomic header write.  A relative\n"
           "BACKING is relative to IMAGE's folder and stored as given.\n"
           "\n"
           "  -b, --backing BACKING  the new backing file; \"\" for none (its data is\n"
           "                         copied into IMAGE first)\n"
           "  -F, --backing-format   raw or qcow2 (default: probed, then recorded)\n"
           "  -u, --unsafe           only change the name and format, copy nothing\n"
           "                         (BACKING need not exist; -F is then needed)\n"
           "  -p, --progress[=fd:N]  a bar on a terminal, else done/total lines\n"
           "  -q, --quiet            no messages on success\n"
           "  -h, --help             this help\n"
           "  -V, --version          print the version\n"
           "\n"
           "Exit status: 0 done, 1 error (as qemu-img).\n"
           "\n"
           "examples:\n"
           "  %s -b ../archive/full.qcow2 -F qcow2 inc1.qcow2   # after moving full.qcow2\n"
           "  %s -u -b full.qcow2 -F qcow2 inc1.qcow2           # rename only\n"
           "  %s -b \"\" -p inc1.qcow2                            # stand-alone image\n",
           progname, progname, progname, progname);
  exit (status);
}

int
main (int argc, char **argv)
{
  static const struct option longopts[] = {
    { "backing", required_argument, NULL, 'b' },
    { "backing-format", required_argument, NULL, 'F' },
    { "unsafe", no_argument, NULL, 'u' },
    { NULL, 0, NULL, 0 },
  };
  struct cmdline cl = { .shortopts = "b:F:u", .longopts = longopts,
                        .shared = OPT_FORMAT | OPT_PROGRESS | OPT_QUIET, .usage = usage };
  struct rb_open_opts o = { .flags = 0 };
  const char *backing = NULL, *fmt = NULL;
  struct progress prog;
  struct rb_image *img;
  unsigned flags = 0;
  int c;

  while ((c = cmdline_next (&cl, argc, argv)) != -1) {
    if (c == 'b')
      backing = optarg;
    else if (c == 'F')
      fmt = optarg;
    else if (c == 'u')
      flags |= RB_REBASE_UNSAFE;
  }
  if (argc - optind != 1)
    cmdline_die (&cl, "expected one IMAGE (see --help)");
  if (!backing)
    cmdline_die (&cl, "-b BACKING is needed (\"\" for none)");
  if (cl.format && strcmp (cl.format, "qcow2") != 0)
    cmdline_die (&cl, "IMAGE must be a qcow2 image (-f %s)", cl.format);
  if (fmt && strcmp (fmt, "raw") != 0 && strcmp (fmt, "qcow2") != 0)
    cmdline_die (&cl, "-F takes raw or qcow2, not \"%s\"", fmt);
  if (flags & RB_REBASE_UNSAFE)
    o.flags |= RB_OPEN_NO_BACKING;      /* the old backing file may be gone */
  img = rb_open (argv[optind], &o);
  if (!img)
    die (EXIT_USAGE, "%s", rb_errmsg ());
  progress_init (&prog, cl.progress, rb_get_size (img));
  if (rb_rebase (img, backing, fmt, flags, progress_cb, &prog) == -1) {
    progress_end (&prog);
    fprintf (stderr, "%s: %s\n", progname, rb_errmsg ());
    rb_close (img);
    exit (EXIT_USAGE);
  }
  progress_end (&prog);
  if (rb_close (img) == -1)
    die (EXIT_USAGE, "%s", rb_errmsg ());
  return EXIT_OK;
}
