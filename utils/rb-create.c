/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * rb-create: a new qcow2 (or raw) image, with qemu-img create's options and the same header bytes.
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

const char *progname = "rb-create";

static void __attribute__((noreturn))
usage (FILE *f, int status)
{
  fprintf (f,
"usage: %s [-f qcow2|raw] [-b BACKING [-F raw|qcow2] [-u]] [-o OPTIONS] [--force] [-q]\n"
"                 IMAGE [SIZE]\n"
"\n"
"Create IMAGE, an empty qcow2 image of SIZE bytes (or a raw one with -f raw), as\n"
"'qemu-img create' does: the same options, and the same header bytes.\n"
"\n"
"  SIZE                     bytes, with an optional k, M, G, T, P or E suffix and\n"
"                           decimals (1.5G); rounded up to 512.  With -b and no SIZE:\n"
"                           the backing file's size\n"
"  -b, --backing BACKING    the backing file, stored as given and read relative to\n"
"                           IMAGE's folder (as QEMU reads it); it must open, unless -u\n"
"  -F, --backing-format raw|qcow2\n"
"                           its format (needed with -b, as qemu-img asks)\n"
"  -u, --unsafe             do not open BACKING (it may not exist yet; needs SIZE)\n"
"  -o OPTIONS               qemu-img's creation options, key=value,... (-o help):\n"
"                           cluster_size, compat, refcount_bits, lazy_refcounts,\n"
"                           extended_l2, compression_type, size, backing_file,\n"
"                           backing_fmt, preallocation=off|metadata|falloc|full\n"
"  -f, --format qcow2|raw   IMAGE's format (default qcow2)\n"
"      --force              replace an existing IMAGE.  Unlike qemu-img create, which\n"
"                           overwrites without asking, rb-create refuses without it\n"
"  -q, --quiet              do not print the 'Formatting ...' line\n"
"  -h, --help / -V, --version\n"
"\n"
"examples:\n"
"  %s disk.qcow2 20G\n"
"  %s -o cluster_size=2M,preallocation=metadata big.qcow2 1.5T\n"
"  %s -b base.qcow2 -F qcow2 overlay.qcow2\n"
"  %s -f raw -o preallocation=falloc disk.raw 8G\n"
"\n"
"Exit status: 0 done, 1 usage error, 2 failure (IMAGE is then not created).\n",
           progname, progname, progname, progname, progname);
  exit (status);
}

static const char *const prealloc_names[] = { "off", "metadata", "falloc", "full" };

/* qemu-img create's "Formatting ..." line (its keys, in its order). */
static void
print_formatting (const char *image, bool raw, const struct rb_create_opts *o,
                  const struct create_options *co)
{
  unsigned given = co->given;

  printf ("Formatting '%s', fmt=%s ", image, raw ? "raw" : "qcow2");
  if (raw) {
    printf ("size=%" PRIu64, o->size);
    if (given & CO_PREALLOCATION)
      printf (" preallocation=%s", prealloc_names[o->preallocation]);
    printf ("\n");
    return;
  }
  printf ("cluster_size=%u extended_l2=%s", o->cluster_size ? o->cluster_size : 65536,
          o->extended_l2 ? "on" : "off");
  if (given & CO_PREALLOCATION)
    printf (" preallocation=%s", prealloc_names[o->preallocation]);
  printf (" compression_type=%s size=%" PRIu64, o->compression_type ? "zstd" : "zlib", o->size);
  if (given & CO_COMPAT)
    printf (" compat=%s", co->compat);
  if (o->backing_file)
    printf (" backing_file=%s", o->backing_file);
  if (o->backing_format)
    printf (" backing_fmt=%s", o->backing_format);
  printf (" lazy_refcounts=%s refcount_bits=%u\n", o->lazy_refcounts ? "on" : "off",
          o->refcount_bits ? o->refcount_bits : 16);
}

/* Open the backing file as QEMU does at creation (its chain, sharing every
 * lock), for its size.  Dies with the reason if it does not open.
 */
static uint64_t
backing_size (const char *image, const char *full, const char *format)
{
  struct cmdline b = { .format = format, .force_share = true };
  struct rb_image *img;
  uint64_t size;
  bool q;

  img = image_open_as (full, &b, RB_OPEN_RDONLY, &q);
  if (!img)
    die (EXIT_TROUBLE, "%s: could not open the backing file: %s", image, rb_errmsg ());
  size = rb_get_size (img);
  rb_close (img);
  return q ? size : ROUND_UP_U64 (size, 512);
}

/* A raw image at path (the temporary name of image): the file, its size,
 * its preallocation.
 */
static void
create_raw (const char *path, const char *image, const struct rb_create_opts *o)
{
  int fd = open (path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  int err = 0;

  if (fd == -1)
    die (EXIT_TROUBLE, "%s: %s", image, strerror (errno));
  if (ftruncate (fd, o->size) == -1)
    err = errno;
  else if (o->preallocation == RB_PREALLOC_OFF && o->size) {
    /* As QEMU: the first block written (its alignment probe reads it), the rest a hole. */
    static const uint8_t block[4096];
    size_t n = MIN_U64 (sizeof block, o->size);
    if (pwrite (fd, block, n, 0) != (ssize_t) n)
      err = errno ? errno : ENOSPC;
  }
  else if (o->preallocation == RB_PREALLOC_FALLOC && o->size)
    err = posix_fallocate (fd, 0, o->size);
  else if (o->preallocation == RB_PREALLOC_FULL) {
    static const uint8_t zeros[1 << 16];
    uint64_t done;
    for (done = 0; done < o->size && !err; done += sizeof zeros) {
      size_t n = MIN_U64 (sizeof zeros, o->size - done);
      if (pwrite (fd, zeros, n, done) != (ssize_t) n)
        err = errno ? errno : ENOSPC;
    }
  }
  if (!err && fsync (fd) == -1)
    err = errno;
  if (close (fd) == -1 && !err)
    err = errno;
  if (err)
    die (EXIT_TROUBLE, "%s: %s", image, strerror (err));     /* die removes path */
}

/* An existing IMAGE may be replaced only with --force, never while QEMU (or
 * rblock) writes it, and never if it is the backing file.
 */
static void
check_replace (const char *image, const char *backing_full, bool force)
{
  struct cmdline probe = { 0 };
  struct rb_image *img;
  struct stat st, bst;
  bool q;

  if (stat (image, &st) == -1)
    return;
  if (!force)
    die (EXIT_TROUBLE, "%s: already exists (--force replaces it; qemu-img create would "
         "without asking)", image);
  if (!S_ISREG (st.st_mode))
    die (EXIT_TROUBLE, "%s: not a regular file", image);
  if (backing_full && stat (backing_full, &bst) == 0 && bst.st_dev == st.st_dev &&
      bst.st_ino == st.st_ino)
    die (EXIT_TROUBLE, "%s: is the backing file itself", image);
  img = image_open_as (image, &probe, RB_OPEN_RDONLY | RB_OPEN_NO_BACKING, &q);
  if (!img && rb_errno () == EAGAIN)
    die (EXIT_TROUBLE, "%s", rb_errmsg ());
  rb_close (img);
}

int
main (int argc, char **argv)
{
  static const struct option longopts[] = {
    { "backing", required_argument, NULL, 'b' },
    { "backing-format", required_argument, NULL, 'F' },
    { "unsafe", no_argument, NULL, 'u' },
    { "force", no_argument, NULL, 'R' },
    { NULL, 0, NULL, 0 },
  };
  struct cmdline cl = {
    .shortopts = "b:F:u", .longopts = longopts, .usage = usage,
    .shared = OPT_FORMAT | OPT_CREATE | OPT_QUIET,
  };
  struct rb_create_opts o = { 0 };
  const char *image, *backing = NULL, *backing_fmt = NULL, *tmp;
  char *full = NULL;
  bool unsafe = false, force = false, raw;
  uint64_t size;
  int c, r;

  while ((c = cmdline_next (&cl, argc, argv)) != -1) {
    switch (c) {
    case 'b': backing = optarg; break;
    case 'F':
      if (strcmp (optarg, "raw") != 0 && strcmp (optarg, "qcow2") != 0)
        cmdline_die (&cl, "-F: unknown format '%s' (raw or qcow2)", optarg);
      backing_fmt = optarg;
      break;
    case 'u': unsafe = true; break;
    case 'R': force = true; break;
    default: usage (stderr, EXIT_USAGE);
    }
  }
  if (argc - optind < 1 || argc - optind > 2)
    cmdline_die (&cl, "expected IMAGE and SIZE (see --help)");
  image = argv[optind];
  raw = cl.format && strcmp (cl.format, "raw") == 0;

  create_options_apply (&cl, &o, raw ? CO_SIZE | CO_PREALLOCATION : ~0u);
  /* -b and -F win over -o backing_file and backing_fmt, as in qemu-img. */
  if (backing)
    o.backing_file = backing;
  if (backing_fmt)
    o.backing_format = backing_fmt;
  if (raw && o.preallocation == RB_PREALLOC_METADATA)
    cmdline_die (&cl, "-o preallocation=metadata: a raw image has no metadata");
  if (raw && o.backing_file)
    cmdline_die (&cl, "a raw image has no backing file");

  if (argc - optind == 2) {
    if (cl.create.given & CO_SIZE)
      cmdline_die (&cl, "the image size must be given only once (SIZE or -o size)");
    r = parse_size_full (argv[optind + 1], &size);
    if (r == -ERANGE || (r == 0 && size > INT64_MAX))
      cmdline_die (&cl, "SIZE '%s': the image size must be less than 8 EiB", argv[optind + 1]);
    if (r < 0)
      cmdline_die (&cl, "SIZE '%s' is not a size (a number with an optional k, M, G, T, P or E "
                   "suffix, as 1.5G)", argv[optind + 1]);
    o.size = size;
  }
  if (o.backing_file) {
    full = qemu_path_combine (image, o.backing_file);
    if (!o.backing_format) {
      bool q;
      if (unsafe || image_probe_format (full, &cl, &q) == -1)
        cmdline_die (&cl, "-b needs -F raw|qcow2, the backing file's format (as qemu-img asks)");
      cmdline_die (&cl, "-b needs -F raw|qcow2, the backing file's format (as qemu-img asks; "
                   "%s looks like %s)", full, q ? "qcow2" : "raw");
    }
    if (!unsafe) {
      uint64_t bsize = backing_size (image, full, o.backing_format);
      if (argc - optind == 1 && !(cl.create.given & CO_SIZE))
        o.size = bsize;
    }
  }
  if (argc - optind == 1 && !(cl.create.given & CO_SIZE) && !(o.backing_file && !unsafe))
    cmdline_die (&cl, "expected SIZE (the image size; only with -b it may be left out)");
  check_replace (image, full, force);
  if (!cl.quiet)
    print_formatting (image, raw, &o, &cl.create);     /* the size as given */
  fflush (stdout);
  o.size = ROUND_UP_U64 (o.size, 512);
  /* Made under a temporary name and renamed over IMAGE when complete: a
   * failure (a full disk with preallocation=full) leaves the old IMAGE.
   */
  tmp = output_prepare (image, true, NULL, 0);
  if (raw)
    create_raw (tmp, image, &o);
  else if (rb_create (tmp, &o, false) == -1)
    /* EINVAL: options the engine refuses together (nothing was created). */
    die (rb_errno () == EINVAL ? EXIT_USAGE : EXIT_TROUBLE, "%s: %s", image, rb_errmsg ());
  if (output_commit () == -1)
    die_rb ();
  free (full);
  return EXIT_OK;
}
