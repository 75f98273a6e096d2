/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * rb-convert: a raw file, block device or qcow2 chain to a new qcow2 (or raw) image, in one pass.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

const char *progname = "rb-convert";

#define CHUNK (4u << 20)

static void __attribute__((noreturn))
usage (FILE *f, int status)
{
  fprintf (f,
"usage: %s [OPTIONS] SOURCE OUTPUT\n"
"\n"
"Convert SOURCE (a raw file, a block device or a qcow2 image, whose backing chain is\n"
"flattened) to a new qcow2 image OUTPUT.  Holes and all-zero clusters are not stored.\n"
"\n"
"  -c, --cluster-size SIZE  cluster size, 512 to 2M (default 64K)\n"
"      --compat 0.10|1.1    qcow2 version 2 or 3 (default 1.1)\n"
"      --refcount-bits N    1, 2, 4, 8, 16, 32 or 64 (default 16)\n"
"  -o OPTIONS               the same as qemu-img's -o: cluster_size, compat,\n"
"                           refcount_bits, lazy_refcounts, compression_type (-o help)\n"
"  -z, --compress zlib|zstd store compressed clusters\n"
"  -O, --output-format qcow2|raw\n"
"                           raw: a sparse raw copy of the guest view; OUTPUT may\n"
"                           then be an NBD URI (a qcow2 restored onto an export)\n"
"  -f, --format raw|qcow2   SOURCE's format: do not probe it\n"
"  -U, --force-share        open SOURCE without locks (an image in use by a VM)\n"
"  -p, --progress[=fd:N]   a bar on a terminal, else done/total lines (on fd N)\n"
"      --force              overwrite OUTPUT if it exists (qemu-img convert always does)\n"
"      --no-sync            skip the fsync before the rename (faster, like qemu-img\n"
"                           convert's default cache=unsafe; a power failure may then\n"
"                           leave an incomplete OUTPUT)\n"
"  -h, --help / -V, --version\n"
"\n"
"examples:\n"
"  %s /dev/sdb backup.qcow2\n"
"  %s -c 2M -z zstd -p disk.raw disk.qcow2\n"
"  %s -O raw overlay.qcow2 flat.raw\n"
"  %s -U -o cluster_size=2M,compat=0.10 /var/lib/vm/running.qcow2 copy.qcow2\n"
"\n"
"Exit status: 0 done, 1 usage error, 2 failure (OUTPUT is then not created).\n",
           progname, progname, progname, progname, progname);
  exit (status);
}

struct extent { uint64_t off, len; };
struct extents { struct extent *v; size_t n, alloc; };

static int
collect (void *opaque, uint64_t off, uint64_t len, int kind)
{
  struct extents *e = opaque;

  if (kind != SOURCE_DATA)
    return 0;
  if (e->n && e->v[e->n - 1].off + e->v[e->n - 1].len == off) {
    e->v[e->n - 1].len += len;
    return 0;
  }
  if (e->n == e->alloc) {
    e->alloc = e->alloc ? e->alloc * 2 : 64;
    e->v = realloc (e->v, e->alloc * sizeof *e->v);
    if (!e->v)
      return rb_error (ENOMEM, "out of memory");
  }
  e->v[e->n].off = off;
  e->v[e->n].len = len;
  e->n++;
  return 0;
}

/* Write all len bytes at off (short writes continued; a write of nothing
 * means a full file system).  0, or -1 with errno set.
 */
static int
pwrite_full (int fd, const uint8_t *buf, size_t len, uint64_t off)
{
  while (len > 0) {
    ssize_t r = pwrite (fd, buf, len, off);
    if (r == -1 && errno == EINTR)
      continue;
    if (r == -1)
      return -1;
    if (r == 0) {
      errno = ENOSPC;
      return -1;
    }
    buf += r;
    len -= r;
    off += r;
  }
  return 0;
}

int
main (int argc, char **argv)
{
  static const struct option longopts[] = {
    { "cluster-size", required_argument, NULL, 'c' },
    { "compat", required_argument, NULL, 'C' },
    { "refcount-bits", required_argument, NULL, 'R' },
    { "compress", required_argument, NULL, 'z' },
    { "output-format", required_argument, NULL, 'O' },
    { "force", no_argument, NULL, 'F' },
    { "no-sync", no_argument, NULL, 'S' },
    { NULL, 0, NULL, 0 },
  };
  struct cmdline cl = {
    .shortopts = "c:z:O:", .longopts = longopts, .usage = usage,
    .shared = OPT_FORMAT | OPT_SHARE | OPT_PROGRESS | OPT_CREATE,
  };
  struct rb_create_opts o = { 0 };
  bool compress = false, force = false, raw_out = false, sync = true;
  struct extents ext = { 0 };
  struct progress prog;
  struct source *src;
  struct rb_writer *w = NULL;
  struct sink *sink = NULL;
  const char *tmp;
  uint8_t *buf;
  uint64_t cs, max_clusters = 0, done = 0, size_now, last_gc = UINT64_MAX;
  int64_t v;
  size_t i;
  int c, out_fd = -1;

  while ((c = cmdline_next (&cl, argc, argv)) != -1) {
    switch (c) {
    case 'c': o.cluster_size = parse_cluster_size_opt (optarg); break;
    case 'C': o.version = parse_compat_opt (optarg); break;
    case 'R':
      v = parse_size (optarg);
      if (v < 1 || v > 64 || (v & (v - 1)))
        die (EXIT_USAGE, "--refcount-bits: '%s' is not 1, 2, 4, 8, 16, 32 or 64", optarg);
      o.refcount_bits = v;
      break;
    case 'z':
      compress = true;
      if (strcmp (optarg, "zlib") == 0) o.compression_type = 0;
      else if (strcmp (optarg, "zstd") == 0) o.compression_type = 1;
      else die (EXIT_USAGE, "--compress: '%s' is neither zlib nor zstd", optarg);
      break;
    case 'O':
      if (strcmp (optarg, "raw") == 0) raw_out = true;
      else if (strcmp (optarg, "qcow2") != 0)
        die (EXIT_USAGE, "--output-format: '%s' is neither qcow2 nor raw", optarg);
      break;
    case 'F': force = true; break;
    case 'S': sync = false; break;
    default: usage (stderr, EXIT_USAGE);
    }
  }
  if (argc - optind != 2)
    usage (stderr, EXIT_USAGE);
  create_options_apply (&cl, &o, CO_CLUSTER_SIZE | CO_COMPAT | CO_REFCOUNT_BITS |
                        CO_LAZY_REFCOUNTS | CO_COMPRESSION);
  if (raw_out && (compress || o.cluster_size || o.version || o.refcount_bits || cl.create.given))
    die (EXIT_USAGE, "qcow2 options make no sense with -O raw");

  src = source_open (argv[optind], source_flags_for (&cl, cl.format));
  if (!src)
    die_rb ();
  if (source_is_uri (argv[optind + 1])) {
    /* Onto an NBD export (restore): raw only, the export's old data replaced. */
    if (!raw_out)
      die (EXIT_USAGE, "%s: an NBD URI output needs -O raw", argv[optind + 1]);
    sink = sink_open (argv[optind + 1]);
    if (!sink)
      die_rb ();
    if (sink_size (sink) < src->size)
      die (EXIT_TROUBLE, "%s: the export (%" PRIu64 " bytes) is smaller than %s (%" PRIu64 " bytes)",
           argv[optind + 1], sink_size (sink), argv[optind], src->size);
    tmp = NULL;
  }
  else
    tmp = output_prepare (argv[optind + 1], force, &src, 1);

  /* As QEMU: a guest disk is whole 512-byte sectors; a ragged tail reads as zeros. */
  o.size = ROUND_UP_U64 (src->size, 512);
  cs = raw_out ? 65536 : (o.cluster_size ? o.cluster_size : 65536);   /* zero-detection unit */
  if (source_extents (src, 0, src->size, collect, &ext) == -1)
    die_rb ();
  for (i = 0; i < ext.n; i++)
    max_clusters += (ext.v[i].off + ext.v[i].len - 1) / cs - ext.v[i].off / cs + 1;

  if (sink) {
    /* Everything that is not data reads as zeros on the export afterwards. */
    uint64_t at = 0;
    for (i = 0; i <= ext.n; i++) {
      uint64_t next = i < ext.n ? ext.v[i].off : src->size;
      if (next > at && sink_zero (sink, next - at, at) == -1)
        die_rb ();
      if (i < ext.n)
        at = ext.v[i].off + ext.v[i].len;
    }
  }
  else if (raw_out) {
    out_fd = open (tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (out_fd == -1 || ftruncate (out_fd, src->size) == -1)
      die (EXIT_TROUBLE, "%s: %s", argv[optind + 1], strerror (errno));
  }
  else {
    w = rb_writer_new (tmp, &o, false, max_clusters, compress);
    if (!w)
      die_rb ();
    if (!sync)
      rb_writer_no_sync (w);
  }

  buf = aligned_alloc (4096, ROUND_UP_U64 (CHUNK + cs, 4096));
  if (!buf)
    die (EXIT_TROUBLE, "out of memory");
  progress_init (&prog, cl.progress, src->size);
  for (i = 0; i < ext.n; i++) {
    /* Whole clusters around the extent, in chunks. */
    uint64_t pos = ext.v[i].off / cs * cs;
    uint64_t end = ext.v[i].off + ext.v[i].len;
    while (pos < end) {
      uint64_t n = MIN_U64 (CHUNK, ROUND_UP_U64 (end, cs) - pos), k;
      uint64_t avail = MIN_U64 (n, src->size - pos);
      if (pos / cs == last_gc) {          /* shared with the previous extent: done */
        pos += cs;
        continue;
      }
      if (source_pread (src, buf, avail, pos) == -1) {
        if (w) rb_writer_abort (w);
        die_rb ();
      }
      memset (buf + avail, 0, n - avail);
      for (k = 0; k < n; ) {
        /* A run of non-zero clusters goes out in one write. */
        uint64_t gc = (pos + k) / cs, run = 0;
        while (k + run * cs < n && gc + run != last_gc &&
               !all_zero (buf + k + run * cs, MIN_U64 (cs, n - k - run * cs)))
          run++;
        if (run == 0) {
          /* A zero cluster: nothing to store, but an export must be cleared. */
          if (sink && gc != last_gc && pos + k < src->size &&
              sink_zero (sink, MIN_U64 (cs, src->size - (pos + k)), pos + k) == -1)
            die_rb ();
          k += cs;
          continue;
        }
        last_gc = gc + run - 1;
        if (sink) {
          uint64_t len = MIN_U64 (run * cs, src->size - (pos + k));
          if (sink_pwrite (sink, buf + k, len, pos + k) == -1)
            die_rb ();
        }
        else if (raw_out) {
          uint64_t len = MIN_U64 (run * cs, src->size - (pos + k));
          if (pwrite_full (out_fd, buf + k, len, pos + k) == -1)
            die (EXIT_TROUBLE, "%s: write error at offset %" PRIu64 ": %s",
                 argv[optind + 1], pos + k, strerror (errno));
        }
        else if (rb_writer_put_run (w, gc, buf + k, run) == -1)
          die_writer (w, argv[optind + 1]);
        k += run * cs;
      }
      pos += n;
      done += n;
      progress_update (&prog, MIN_U64 (pos, src->size));
    }
  }

  if (source_current_size (src, &size_now) == -1 || size_now != src->size) {
    if (w) rb_writer_abort (w);
    die (EXIT_TROUBLE, "%s: the source changed size during the conversion", argv[optind]);
  }
  if (sink) {
    if (sink_close (sink) == -1)
      die_rb ();
    sink = NULL;
  }
  else if (raw_out) {
    if ((sync && fsync (out_fd) == -1) || close (out_fd) == -1)
      die (EXIT_TROUBLE, "%s: %s", argv[optind + 1], strerror (errno));
  }
  else if (rb_writer_finish (w) == -1)
    die_writer (NULL, argv[optind + 1]);
  if (tmp && output_commit () == -1)
    die_rb ();
  progress_end (&prog);
  source_close (src);
  free (buf);
  free (ext.v);
  return EXIT_OK;
}
