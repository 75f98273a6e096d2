/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Test driver over the public engine API: dump, map, write, random workloads mirrored on a raw file.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rblock.h"

static const char *progname = "rb-tool";

static void
usage (void)
{
  fprintf (stderr,
           "usage: rb-tool cat IMG            guest bytes to stdout\n"
           "       rb-tool map IMG            extents: OFFSET LENGTH data|zero|hole\n"
           "       rb-tool check IMG          corruptions / leaks\n"
           "       rb-tool write IMG OFF LEN BYTE [fua]\n"
           "       rb-tool zero IMG OFF LEN [trim] [fast]\n"
           "       rb-tool trim IMG OFF LEN\n"
           "       rb-tool create IMG SIZE [cluster_size [version [refcount_bits]]]\n"
           "       rb-tool random IMG DIR SEED NOPS   random I/O; DIR/mirror is the raw model;\n"
           "                                  DIR/flushed the model at the last flush;\n"
           "                                  DIR/dirty the ranges touched since;\n"
           "                                  DIR/touched every range written, zeroed or trimmed\n"
           "       rb-tool verify IMG DIR     image equals DIR/flushed outside DIR/dirty\n");
  exit (1);
}

static struct rb_image *open_img;   /* closed by die, so a failure path ends like a real user's */

static void
die (const char *what)
{
  fprintf (stderr, "%s: %s: %s\n", progname, what, rb_errmsg ());
  if (open_img && rb_close (open_img) == -1)
    fprintf (stderr, "%s: close: %s\n", progname, rb_errmsg ());
  exit (2);
}

/* Open path; "IMG@SNAP" opens internal snapshot SNAP. */
static struct rb_image *
open_image (const char *path, bool ro)
{
  struct rb_open_opts o = { .flags = ro ? RB_OPEN_RDONLY : 0 };
  char *p = strdup (path), *at = strrchr (p, '@');
  struct rb_image *img;

  if (at) {
    *at = '\0';
    o.snapshot = at + 1;
  }
  img = rb_open (p, &o);
  free (p);

  if (!img)
    die ("open");
  open_img = img;
  return img;
}

static int
print_extent (void *opaque, uint64_t off, uint64_t len, uint32_t type)
{
  printf ("%" PRIu64 " %" PRIu64 " %s\n", off, len,
          !(type & RB_EXTENT_ZERO) ? "data" : (type & RB_EXTENT_HOLE) ? "hole" : "zero");
  return 0;
}

static void
xpwrite (int fd, const void *buf, size_t len, uint64_t off)
{
  if (pwrite (fd, buf, len, off) != (ssize_t) len) {
    perror ("mirror pwrite");
    exit (2);
  }
}

/* Copy file src to dst atomically (tmp + rename). */
static void
copy_file (const char *dir, const char *src, const char *dst)
{
  char s[4096], d[4096], t[4096];
  static char buf[1 << 20];
  int in, out;
  ssize_t n;

  snprintf (s, sizeof s, "%s/%s", dir, src);
  snprintf (d, sizeof d, "%s/%s", dir, dst);
  snprintf (t, sizeof t, "%s/%s.tmp", dir, dst);
  in = open (s, O_RDONLY);
  out = open (t, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (in == -1 || out == -1) {
    perror ("copy");
    exit (2);
  }
  while ((n = read (in, buf, sizeof buf)) > 0)
    if (write (out, buf, n) != n) {
      perror ("copy");
      exit (2);
    }
  close (in);
  close (out);
  if (rename (t, d) == -1) {
    perror ("rename");
    exit (2);
  }
}

/* Random writes, zeroes, trims, flushes and verifying reads. */
static int
random_workload (const char *path, const char *dir, unsigned seed, long nops)
{
  struct rb_image *img = open_image (path, false);
  uint64_t size = rb_get_size (img), cs = rb_get_cluster_size (img);
  size_t maxbuf = 4 << 20;
  char *buf = malloc (maxbuf), *buf2 = malloc (maxbuf), p[4096];
  FILE *dirty, *touched;
  int fd;
  long i;

  snprintf (p, sizeof p, "%s/mirror", dir);
  fd = open (p, O_RDWR);
  if (fd == -1 || !buf || !buf2) {
    perror (p);
    return 2;
  }
  copy_file (dir, "mirror", "flushed");
  snprintf (p, sizeof p, "%s/dirty", dir);
  dirty = fopen (p, "w");
  snprintf (p, sizeof p, "%s/touched", dir);
  touched = fopen (p, "w");
  if (!dirty || !touched) {
    perror (p);
    return 2;
  }
  srandom (seed);
  for (i = 0; i < nops; i++) {
    int op = random () % 10;
    uint64_t maxlen = random () % 4 == 0 ? 3 * cs + 1000 : cs / 2 + 700;
    uint64_t len = 1 + random () % maxlen;
    uint64_t off = ((uint64_t) random () * 7919) % size;

    if (random () % 3 == 0)
      off = off / cs * cs;
    if (len > maxbuf)
      len = maxbuf;
    if (off + len > size)
      len = size - off;
    if (len == 0)
      continue;
    if (op < 8) {
      fprintf (dirty, "%" PRIu64 " %" PRIu64 "\n", off, len);
      fflush (dirty);
      fprintf (touched, "%" PRIu64 " %" PRIu64 "\n", off, len);
      fflush (touched);
    }
    if (op < 5) {
      uint64_t j;
      memset (buf, random (), len);
      for (j = 0; j < len; j += 97)
        buf[j] = random ();
      if (rb_pwrite (img, buf, len, off, random () % 16 == 0 ? RB_FUA : 0) == -1)
        die ("write");
      xpwrite (fd, buf, len, off);
    }
    else if (op < 7) {
      if (rb_zero (img, len, off, random () % 2 ? RB_MAY_TRIM : 0) == -1)
        die ("zero");
      memset (buf, 0, len);
      xpwrite (fd, buf, len, off);
    }
    else if (op < 8) {
      /* Trimmed bytes are unspecified: the model takes what the image reads. */
      if (rb_trim (img, len, off, 0) == -1 || rb_pread (img, buf, len, off) == -1)
        die ("trim");
      xpwrite (fd, buf, len, off);
    }
    else if (op < 9) {
      if (rb_flush (img) == -1)
        die ("flush");
      copy_file (dir, "mirror", "flushed");
      if (ftruncate (fileno (dirty), 0) == -1 || fseek (dirty, 0, SEEK_SET) == -1) {
        perror ("dirty");
        return 2;
      }
    }
    else {
      if (rb_pread (img, buf, len, off) == -1)
        die ("read");
      if (pread (fd, buf2, len, off) != (ssize_t) len) {
        perror ("mirror pread");
        return 2;
      }
      if (memcmp (buf, buf2, len) != 0) {
        fprintf (stderr, "%s: op %ld: read at %" PRIu64 " length %" PRIu64
                 " differs from the model\n", progname, i, off, len);
        return 1;
      }
    }
  }
  if (rb_close (img) == -1)
    die ("close");
  copy_file (dir, "mirror", "flushed");
  fclose (dirty);
  fclose (touched);
  close (fd);
  return 0;
}

/* The image must equal DIR/flushed everywhere but in the ranges of DIR/dirty. */
static int
verify (const char *path, const char *dir)
{
  struct rb_image *img = open_image (path, true);
  uint64_t size = rb_get_size (img), off, len, bad = 0;
  unsigned char *skip, *a, *b;
  char p[4096];
  FILE *f;
  int fd;

  skip = calloc (size / 512 + 1, 1);
  a = malloc (size);
  b = malloc (size);
  if (!skip || !a || !b) {
    perror ("malloc");
    return 2;
  }
  snprintf (p, sizeof p, "%s/dirty", dir);
  f = fopen (p, "r");
  if (f) {
    while (fscanf (f, "%" SCNu64 " %" SCNu64, &off, &len) == 2)
      for (uint64_t s = off / 512; s <= (off + len - 1) / 512 && s <= size / 512; s++)
        skip[s] = 1;
    fclose (f);
  }
  snprintf (p, sizeof p, "%s/flushed", dir);
  fd = open (p, O_RDONLY);
  if (fd == -1 || pread (fd, b, size, 0) != (ssize_t) size) {
    perror (p);
    return 2;
  }
  if (rb_pread (img, a, size, 0) == -1)
    die ("read");
  for (off = 0; off < size; off += 512) {
    uint64_t n = size - off < 512 ? size - off : 512;
    if (!skip[off / 512] && memcmp (a + off, b + off, n) != 0) {
      if (bad++ < 5)
        fprintf (stderr, "%s: sector at %" PRIu64 " lost a flushed write\n", progname, off);
    }
  }
  rb_close (img);
  printf ("%" PRIu64 " bad sectors\n", bad);
  return bad ? 1 : 0;
}

int
main (int argc, char **argv)
{
  struct rb_image *img;

  if (argc < 3)
    usage ();
  if (strcmp (argv[1], "cat") == 0) {
    static char buf[1 << 20];
    uint64_t off, size;
    img = open_image (argv[2], true);
    size = rb_get_size (img);
    for (off = 0; off < size; off += sizeof buf) {
      size_t n = size - off < sizeof buf ? size - off : sizeof buf;
      if (rb_pread (img, buf, n, off) == -1)
        die ("read");
      if (fwrite (buf, 1, n, stdout) != n)
        return 2;
    }
    rb_close (img);
  }
  else if (strcmp (argv[1], "map") == 0) {
    img = open_image (argv[2], true);
    if (rb_extents (img, rb_get_size (img), 0, print_extent, NULL) == -1)
      die ("extents");
    rb_close (img);
  }
  else if (strcmp (argv[1], "check") == 0) {
    struct rb_check_result r;
    img = open_image (argv[2], true);
    if (rb_check (img, &r, 0) == -1)
      die ("check");
    printf ("corruptions %" PRIu64 " leaks %" PRIu64 " allocated %" PRIu64 "\n",
            r.corruptions, r.leaks, r.allocated_clusters);
    rb_close (img);
    return r.corruptions ? 2 : r.leaks ? 3 : 0;
  }
  else if (strcmp (argv[1], "write") == 0 && argc >= 6) {
    uint64_t off = strtoull (argv[3], NULL, 0), len = strtoull (argv[4], NULL, 0);
    char *buf = malloc (len);
    memset (buf, (int) strtol (argv[5], NULL, 0), len);
    img = open_image (argv[2], false);
    if (rb_pwrite (img, buf, len, off, argc > 6 ? RB_FUA : 0) == -1)
      die ("write");
    if (rb_close (img) == -1)
      die ("close");
    free (buf);
  }
  else if ((strcmp (argv[1], "zero") == 0 || strcmp (argv[1], "trim") == 0) && argc >= 5) {
    uint64_t off = strtoull (argv[3], NULL, 0), len = strtoull (argv[4], NULL, 0);
    unsigned flags = 0;
    int i, r;
    for (i = 5; i < argc; i++)
      flags |= strcmp (argv[i], "trim") == 0 ? RB_MAY_TRIM : strcmp (argv[i], "fast") == 0 ? RB_FAST_ZERO : 0;
    img = open_image (argv[2], false);
    r = argv[1][0] == 'z' ? rb_zero (img, len, off, flags) : rb_trim (img, len, off, 0);
    if (r == -1)
      die (argv[1]);
    if (rb_close (img) == -1)
      die ("close");
  }
  else if (strcmp (argv[1], "create") == 0 && argc >= 4) {
    struct rb_create_opts o = { .size = strtoull (argv[3], NULL, 0) };
    if (argc > 4) o.cluster_size = strtoul (argv[4], NULL, 0);
    if (argc > 5) o.version = strtoul (argv[5], NULL, 0);
    if (argc > 6) o.refcount_bits = strtoul (argv[6], NULL, 0);
    if (rb_create (argv[2], &o, false) == -1)
      die ("create");
  }
  else if (strcmp (argv[1], "random") == 0 && argc >= 6)
    return random_workload (argv[2], argv[3], strtoul (argv[4], NULL, 0), strtol (argv[5], NULL, 0));
  else if (strcmp (argv[1], "verify") == 0 && argc >= 4)
    return verify (argv[2], argv[3]);
  else
    usage ();
  return 0;
}
