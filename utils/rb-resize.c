/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * rb-resize: change the virtual size of a qcow2 image (or a raw file), as qemu-img resize.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"

const char *progname = "rb-resize";

static void __attribute__((noreturn))
usage (FILE *f, int status)
{
  fprintf (f,
           "usage: %s [--shrink] [-f qcow2|raw] [-q] IMAGE [+|-]SIZE\n"
           "\n"
           "Sets the virtual size of IMAGE to SIZE, or grows or shrinks it by SIZE, as\n"
           "'qemu-img resize'.  SIZE takes the suffixes K M G T P E (powers of 1024) and\n"
           "decimals (1.5G); a qcow2 size must be a multiple of 512.\n"
           "\n"
           "  --shrink         allow a smaller size: the data past the new end is dropped\n"
           "                   (internal snapshots keep what they use)\n"
           "  -f, --format     qcow2 or raw (default: probed)\n"
           "  -q, --quiet      no messages on success\n"
           "  -h, --help       this help\n"
           "  -V, --version    print the version\n"
           "\n"
           "A qcow2 resize is crash-safe: killed at any point, the image has its old size\n"
           "and contents or its new ones.  Growing an image whose backing file is larger\n"
           "zeroes the new area.  Exit status: 0 done, 1 error (as qemu-img).\n"
           "\n"
           "examples:\n"
           "  %s disk.qcow2 +10G\n"
           "  %s disk.qcow2 64G\n"
           "  %s --shrink disk.qcow2 -512M\n",
           progname, progname, progname, progname);
  exit (status);
}

/* Is the file at path a qcow2 image (by its magic)?  Dies if it cannot be read. */
static bool
probe_qcow2 (const char *path)
{
  unsigned char m[4];
  int fd = open (path, O_RDONLY | O_CLOEXEC);
  ssize_t n;

  if (fd == -1)
    die (EXIT_USAGE, "%s: %s", path, strerror (errno));
  n = pread (fd, m, 4, 0);
  close (fd);
  return n == 4 && m[0] == 'Q' && m[1] == 'F' && m[2] == 'I' && m[3] == 0xfb;
}

/* Resize a raw file with ftruncate. */
static void
resize_raw (const char *path, const char *arg, int sign, uint64_t n, bool shrink)
{
  int fd = open (path, O_RDWR | O_CLOEXEC);
  struct stat st;
  uint64_t size;

  if (fd == -1 || fstat (fd, &st) == -1)
    die (EXIT_USAGE, "%s: %s", path, strerror (errno));
  if (!S_ISREG (st.st_mode))
    die (EXIT_USAGE, "%s: only regular raw files can be resized", path);
  size = sign > 0 ? st.st_size + n : sign < 0 ? st.st_size - n : n;
  if (sign < 0 && n > (uint64_t) st.st_size)
    die (EXIT_USAGE, "%s: cannot shrink by %s: the file is only %jd bytes", path, arg,
         (intmax_t) st.st_size);
  if (size < (uint64_t) st.st_size && !shrink)
    die (EXIT_USAGE, "Use the --shrink option to perform a shrink operation.");
  if (ftruncate (fd, size) == -1 || fsync (fd) == -1 || close (fd) == -1)
    die (EXIT_USAGE, "%s: %s", path, strerror (errno));
}

int
main (int argc, char **argv)
{
  enum { OPT_SHRINK = 256 };
  static const struct option longopts[] = {
    { "shrink", no_argument, NULL, OPT_SHRINK },
    { NULL, 0, NULL, 0 },
  };
  struct cmdline cl = { .longopts = longopts, .shared = OPT_FORMAT | OPT_QUIET, .usage = usage };
  const char *arg, *path, *p;
  struct rb_image *img;
  bool shrink = false;
  uint64_t n, size;
  int c, sign = 0, e;

  /* As qemu-img: the size (last) is taken off first, so "-1G" is no option. */
  if (argc >= 3 && (argv[argc - 1][0] != '-' ||
                    (argv[argc - 1][1] >= '0' && argv[argc - 1][1] <= '9'))) {
    arg = argv[--argc];
    argv[argc] = NULL;
  }
  else
    arg = NULL;
  while ((c = cmdline_next (&cl, argc, argv)) != -1)
    if (c == OPT_SHRINK)
      shrink = true;
  if (argc - optind != (arg ? 1 : 2))
    cmdline_die (&cl, "expected IMAGE and SIZE (see --help)");
  path = argv[optind];
  if (!arg)
    arg = argv[optind + 1];
  p = arg;
  if (*p == '+' || *p == '-')
    sign = *p++ == '+' ? 1 : -1;
  if ((e = parse_size_full (p, &n)) < 0)
    cmdline_die (&cl, "invalid size \"%s\"%s", arg,
                 e == -ERANGE ? ": too large" : ": use a number with an optional K M G T P E suffix");

  if (cl.format ? strcmp (cl.format, "raw") == 0 : !probe_qcow2 (path)) {
    resize_raw (path, arg, sign, n, shrink);
    if (!cl.quiet)
      printf ("Image resized.\n");
    return EXIT_OK;
  }
  img = rb_open (path, NULL);
  if (!img)
    die (EXIT_USAGE, "%s", rb_errmsg ());
  size = rb_get_size (img);
  if (sign < 0 && n > size) {
    rb_close (img);
    die (EXIT_USAGE, "%s: cannot shrink by %s: the image is only %" PRIu64 " bytes", path, arg, size);
  }
  if (sign > 0 && n > UINT64_MAX - size) {
    rb_close (img);
    die (EXIT_USAGE, "%s: %s: the new size is too large", path, arg);
  }
  size = sign > 0 ? size + n : sign < 0 ? size - n : n;
  if (size < rb_get_size (img) && shrink && !cl.quiet)
    fprintf (stderr, "%s: warning: shrinking drops all data past the new end of the image\n",
             progname);
  if (rb_resize (img, size, shrink ? RB_RESIZE_SHRINK : 0) == -1) {
    fprintf (stderr, "%s: %s\n", progname, rb_errmsg ());
    rb_close (img);
    exit (EXIT_USAGE);
  }
  if (rb_close (img) == -1)
    die (EXIT_USAGE, "%s", rb_errmsg ());
  if (!cl.quiet)
    printf ("Image resized.\n");
  return EXIT_OK;
}
