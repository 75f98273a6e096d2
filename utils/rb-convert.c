/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * rb-convert: a raw file, block device or qcow2 chain to a new qcow2 (or raw) image, or onto an existing disk.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/vfs.h>

#include "common.h"
#include "target.h"

const char *progname = "rb-convert";

#define CHUNK (4u << 20)

/* Long-only options. */
enum { OPT_COMPAT = 0x100, OPT_REFCOUNT_BITS, OPT_FORCE, OPT_NO_SYNC, OPT_TARGET_IS_ZERO };

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
"  -n, --no-create          write onto an existing OUTPUT (a block device, a raw\n"
"                           file or a qcow2 image, at least as large as SOURCE) in\n"
"                           place: what is not data in SOURCE is zeroed there.\n"
"                           NOT ATOMIC: a failure leaves OUTPUT partly written.\n"
"                           Without -O a block device is written raw, a file as\n"
"                           qcow2 if it is one, else raw\n"
"      --target-is-zero     with -n: OUTPUT already reads as zeros; skip zeroing\n"
"  -S, --sparse-size SIZE   zeros found in runs of SIZE bytes (a multiple of 512;\n"
"                           default 4K; qcow2: whole clusters) are not written;\n"
"                           0 writes every byte, holes included\n"
"  -f, --format raw|qcow2   SOURCE's format: do not probe it\n"
"  -U, --force-share        open SOURCE without locks (an image in use by a VM)\n"
"  -p, --progress[=fd:N]   a bar on a terminal, else done/total lines (on fd N)\n"
"      --force              overwrite OUTPUT if it exists (qemu-img convert always does)\n"
"  -C, --copy-offload       copy the data in the kernel (copy_file_range) on any\n"
"                           file system; by default only where OUTPUT's shares\n"
"                           blocks or copies on the server (XFS, btrfs, NFS, SMB,\n"
"                           OCFS2, bcachefs, ZFS), else the data is read and written\n"
"      --no-sync            skip the fsync at the end (faster, like qemu-img\n"
"                           convert's default cache=unsafe; a power failure may then\n"
"                           leave an incomplete OUTPUT)\n"
"  -h, --help / -V, --version\n"
"\n"
"examples:\n"
"  %s /dev/sdb backup.qcow2\n"
"  %s -c 2M -z zstd -p disk.raw disk.qcow2\n"
"  %s -O raw overlay.qcow2 flat.raw\n"
"  %s -U -o cluster_size=2M,compat=0.10 /var/lib/vm/running.qcow2 copy.qcow2\n"
"  %s -n backup.qcow2 /dev/vg/vm-disk             # restore onto a disk\n"
"\n"
"Exit status: 0 done, 1 usage error, 2 failure (a new OUTPUT is then not created).\n",
           progname, progname, progname, progname, progname, progname);
  exit (status);
}

struct extent { uint64_t off, len; };
struct extents { struct extent *v; size_t n, alloc; };

/* source_extents callback: collect the data extents, merged. */
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

/* One stretch of the guest disk, as the scanner found it. */
struct run {
  uint64_t off, len;               /* len: bytes inside the source */
  uint64_t whole;                  /* len rounded up to units (new qcow2: whole clusters) */
  const uint8_t *p;                /* the bytes (whole bytes), data runs only; mapped
                                      or in the slot's buffer */
  bool zero;
};

/* A chunk handed from the scanner to the writing (main) thread.  Mapped
 * chunks cost no memory: up to 16 in flight (64 MiB) absorb the scanner's
 * hiccups; chunks read into buffers: 4 (16 MiB), the buffers shared by the
 * slots.
 */
#define NR_SLOTS 16
#define NR_READ_SLOTS 4
struct slot {
  bool ready;                      /* filled by the scanner, not yet done by main */
  bool last;                       /* nothing after this one */
  uint64_t end;                    /* guest offset reached (progress) */
  struct run *runs;
  size_t nr_runs, max_runs;
  uint8_t *buf;                    /* a read chunk: cv->bufs[buf_index]; NULL if mapped */
  int buf_index;
  struct source_window win;        /* a mapped chunk */
  char msg[1024];                  /* the scanner failed: why (the slot is last) */
};

/* One conversion. */
struct convert {
  struct source *src;
  struct target t;
  const struct extents *ext;
  uint64_t unit;                   /* zero-detection unit: the cluster, or -S */
  bool sparse;                     /* look for zeros (not -S 0) */
  bool map;                        /* map a file source's chunks */
  bool map_cached;                 /* ... only those in the page cache (the data is written
                                      from the mapping, not copied by the kernel) */
  struct progress prog;
  pthread_mutex_t lock;            /* protects the slots' ready flags and buf_busy */
  pthread_cond_t cond;
  struct slot slots[NR_SLOTS];
  uint8_t *bufs[NR_READ_SLOTS];    /* the read chunks' buffers (CHUNK bytes), allocated when first needed */
  bool buf_busy[NR_READ_SLOTS];    /* held by a slot */
  unsigned nr_slots;               /* in use: NR_SLOTS or NR_READ_SLOTS */
  unsigned fill;                   /* scanner: next slot to fill (mod nr_slots) */
  struct slot *cur;                /* scanner: the slot being filled */
};

/* Whether the kernel's copy (copy_file_range) is worth having for the data
 * into path: where its file system shares the blocks (reflinks: XFS, btrfs,
 * OCFS2, bcachefs, ZFS block cloning) or copies on the server (NFS 4.2, SMB).
 * Elsewhere (ext4, tmpfs, ...) it is the same memory copy as a write, made
 * while the output file's lock is held; reading the data outside that lock
 * (where the zeros are found anyway) and writing it from memory measured
 * faster there (bench/convert.sh, one sitting, to qcow2: 1.37x qemu-img
 * convert on tmpfs against 1.21x with the kernel's copy; on ext4 1.57x
 * against 1.00x).  -C asks for the kernel's copy everywhere.
 */
static bool
kernel_copy_pays (const char *path)
{
  static const unsigned long magic[] = {
    0x58465342,                    /* XFS */
    0x9123683e,                    /* btrfs */
    0x7461636f,                    /* OCFS2 */
    0xca451a4e,                    /* bcachefs */
    0x2fc12fc1,                    /* ZFS */
    0x6969,                        /* NFS */
    0xfe534d42,                    /* SMB2 */
    0xff534d42,                    /* CIFS */
  };
  struct statfs sf;
  size_t i;

  if (statfs (path, &sf) == -1)
    return false;
  for (i = 0; i < sizeof magic / sizeof magic[0]; i++)
    if ((unsigned long) sf.f_type == magic[i])
      return true;
  return false;
}

/* Die with the last message, the target aborted (a new OUTPUT removed). */
static void __attribute__((noreturn))
fail (struct convert *cv)
{
  char msg[1024];

  snprintf (msg, sizeof msg, "%s", rb_errmsg ());
  target_abort (&cv->t);
  die (EXIT_TROUBLE, "%s", msg);
}

/* ---- the scanner thread: reads (or maps) the data and finds the zeros ---- */

/* Scanner: the next free slot, its old window released (a window that
 * shows the source changed is an error).  0 / -1.
 */
static int
slot_take (struct convert *cv)
{
  struct slot *sl = &cv->slots[cv->fill++ % cv->nr_slots];

  pthread_mutex_lock (&cv->lock);
  while (sl->ready)
    pthread_cond_wait (&cv->cond, &cv->lock);
  pthread_mutex_unlock (&cv->lock);
  cv->cur = sl;
  sl->nr_runs = 0;
  sl->last = false;
  sl->msg[0] = '\0';
  return source_unmap (cv->src, &sl->win);
}

/* Scanner: hand the current slot to main. */
static void
slot_give (struct convert *cv, uint64_t end)
{
  cv->cur->end = end;
  pthread_mutex_lock (&cv->lock);
  cv->cur->ready = true;
  pthread_cond_broadcast (&cv->cond);
  pthread_mutex_unlock (&cv->lock);
  cv->cur = NULL;
}

/* Scanner: append a run to the current slot, merged with the previous one
 * when it is of the same kind and contiguous.
 */
static void
add_run (struct convert *cv, uint64_t off, uint64_t len, uint64_t whole, const uint8_t *p, bool zero)
{
  struct slot *sl = cv->cur;
  struct run *r = sl->nr_runs ? &sl->runs[sl->nr_runs - 1] : NULL;

  if (r && r->zero == zero && r->off + r->whole == off &&
      (zero || r->p + r->whole == p)) {
    r->len = off + len - r->off;
    r->whole += whole;
    return;
  }
  /* A slot holds one gap and one chunk's units (max_runs counts them). */
  if (sl->nr_runs == sl->max_runs)
    abort ();
  sl->runs[sl->nr_runs++] = (struct run) { off, len, whole, p, zero };
}

/* Scanner: the units of [pos, pos+n) (avail bytes inside the source) at p
 * into the current slot.
 */
static void
scan_units (struct convert *cv, uint64_t pos, uint64_t n, uint64_t avail, const uint8_t *p)
{
  bool mapped = p != cv->cur->buf, zero;
  uint64_t k, j;

  for (k = 0; k < n; k += cv->unit) {
    zero = cv->sparse && all_zero (p + k, cv->unit);
    /* Data in a mapping: every page touched here, where a page that cannot
     * be read is caught (see scan_chunk), not in a later write from the
     * mapping (EFAULT).  A read buffer needs no such look.
     */
    for (j = 0; mapped && !zero && j < cv->unit; j += 4096)
      (void) *(const volatile uint8_t *) (p + k + j);
    add_run (cv, pos + k, MIN_U64 (cv->unit, avail - MIN_U64 (k, avail)), cv->unit, p + k, zero);
  }
}

/* Scanner: a read buffer for slot sl (sl->buf), once one is free.  0 / -1. */
static int
buf_take (struct convert *cv, struct slot *sl)
{
  int i;

  pthread_mutex_lock (&cv->lock);
  for (;;) {
    for (i = 0; i < NR_READ_SLOTS && cv->buf_busy[i]; i++)
      ;
    if (i < NR_READ_SLOTS)
      break;
    pthread_cond_wait (&cv->cond, &cv->lock);
  }
  /* Allocated on first use (at most NR_READ_SLOTS times), under the lock. */
  if (!cv->bufs[i])
    cv->bufs[i] = aligned_alloc (4096, ROUND_UP_U64 (MAX_U64 (CHUNK, cv->unit), 4096));
  cv->buf_busy[i] = cv->bufs[i] != NULL;
  pthread_mutex_unlock (&cv->lock);
  if (!cv->bufs[i])
    return rb_error (ENOMEM, "out of memory");
  sl->buf_index = i;
  sl->buf = cv->bufs[i];
  return 0;
}

/* Scanner: chunk [pos, pos+n) (whole units; avail bytes of it inside the
 * source) into the current slot: mapped from a file source (the page cache,
 * nothing copied) where the kernel copies the data or the chunk is all in
 * the page cache, else (or where a page of the mapping could not be read)
 * read into a buffer and padded with zeros; then cut into runs of zero and
 * non-zero units.  0 / -1.
 */
static int
scan_chunk (struct convert *cv, uint64_t pos, uint64_t n, uint64_t avail)
{
  struct slot *sl = cv->cur;
  const uint8_t *p = avail == n && cv->map ? source_map (cv->src, pos, n, cv->map_cached, &sl->win) : NULL;
  size_t nr_runs = sl->nr_runs;
  struct run last = nr_runs ? sl->runs[nr_runs - 1] : (struct run) { 0 };
  int r;

  if (p) {
    scan_units (cv, pos, n, avail, p);
    r = source_window_check (cv->src, &sl->win);
    if (r <= 0)
      return r;
    /* Undone (the runs as they were), and read instead. */
    sl->nr_runs = nr_runs;
    if (nr_runs)
      sl->runs[nr_runs - 1] = last;
  }
  if (buf_take (cv, sl) == -1)
    return -1;
  if (source_pread (cv->src, sl->buf, avail, pos) == -1)
    return -1;
  memset (sl->buf + avail, 0, n - avail);
  scan_units (cv, pos, n, avail, sl->buf);
  return 0;
}

/* Scanner: a zero run [off, off+len) that needs no bytes. */
static int
scan_gap (struct convert *cv, uint64_t off, uint64_t len)
{
  if (len == 0)
    return 0;
  add_run (cv, off, len, len, NULL, true);
  return 0;
}

/* The scanner thread: the data extents in order, chunk by chunk, each in a
 * slot, with the gaps between them as zero runs.  Its failure travels in the
 * last slot.
 */
static void *
scanner (void *opaque)
{
  struct convert *cv = opaque;
  const struct extents *ext = cv->ext;
  uint64_t size = cv->src->size, done_to = 0, chunk = MAX_U64 (CHUNK / cv->unit, 1) * cv->unit;
  size_t i;
  int r = slot_take (cv);

  for (i = 0; r == 0 && i < ext->n; i++) {
    /* Whole units around the extent; one shared with the previous extent is done. */
    uint64_t pos = MAX_U64 (ext->v[i].off / cv->unit * cv->unit, done_to);
    uint64_t end = ROUND_UP_U64 (ext->v[i].off + ext->v[i].len, cv->unit);

    r = scan_gap (cv, done_to, pos - done_to);
    while (r == 0 && pos < end) {
      uint64_t n = MIN_U64 (chunk, end - pos);
      r = scan_chunk (cv, pos, n, MIN_U64 (n, size - pos));
      pos += n;
      if (r == 0) {
        slot_give (cv, MIN_U64 (pos, size));
        r = slot_take (cv);
      }
    }
    done_to = MAX_U64 (done_to, end);
  }
  if (r == 0 && done_to < size)
    r = scan_gap (cv, done_to, size - done_to);
  if (r == -1)
    snprintf (cv->cur->msg, sizeof cv->cur->msg, "%s", rb_errmsg ());
  cv->cur->last = true;
  slot_give (cv, size);
  return NULL;
}

/* Main, after the scanner ended: release the windows and buffers.  -1 if a
 * window shows the source changed.
 */
static int
release_windows (struct convert *cv)
{
  unsigned i;
  int r = 0;

  for (i = 0; i < NR_SLOTS; i++) {
    if (source_unmap (cv->src, &cv->slots[i].win) == -1)
      r = -1;
    free (cv->slots[i].runs);
  }
  for (i = 0; i < NR_READ_SLOTS; i++)
    free (cv->bufs[i]);
  return r;
}

/* ---- the writing (main) thread ---- */

/* Store a data run of slot sl: copied in the kernel from a file where the
 * target can, else written from memory (whole units to a new qcow2, the
 * source's bytes to the others).  0 / -1.
 */
static int
put_data (struct convert *cv, const struct slot *sl, const struct run *r)
{
  int c = cv->t.can_copy ? target_copy (&cv->t, cv->src, r->off, r->len) : 1;

  if (c != 1)
    return c;
  if (target_write (&cv->t, r->p, r->off, cv->t.w ? r->whole : r->len) == 0)
    return 0;
  /* From a mapping, a page gone since the scan (the file shrank) is EFAULT. */
  return !sl->buf && rb_errno () == EFAULT ? source_window_lost (cv->src) : -1;
}

/* Main: take the slots in order and do their runs, while the scanner fills
 * the next ones.
 */
static void
convert_all (struct convert *cv)
{
  uint64_t max_runs = MAX_U64 (CHUNK / cv->unit, 1) + 2;
  pthread_t th;
  unsigned i;
  int err;

  cv->nr_slots = cv->map ? NR_SLOTS : NR_READ_SLOTS;
  pthread_mutex_init (&cv->lock, NULL);
  pthread_cond_init (&cv->cond, NULL);
  for (i = 0; i < cv->nr_slots; i++) {
    cv->slots[i].max_runs = max_runs;
    cv->slots[i].runs = calloc (max_runs, sizeof (struct run));
    if (!cv->slots[i].runs)
      die (EXIT_TROUBLE, "out of memory");
  }
  err = pthread_create (&th, NULL, scanner, cv);
  if (err)
    die (EXIT_TROUBLE, "cannot start a thread: %s", strerror (err));
  for (i = 0;; i++) {
    struct slot *sl = &cv->slots[i % cv->nr_slots];
    size_t k;
    bool last;

    pthread_mutex_lock (&cv->lock);
    while (!sl->ready)
      pthread_cond_wait (&cv->cond, &cv->lock);
    pthread_mutex_unlock (&cv->lock);
    for (k = 0; k < sl->nr_runs; k++) {
      const struct run *r = &sl->runs[k];
      if ((r->zero ? target_zero (&cv->t, r->off, r->len) : put_data (cv, sl, r)) == -1)
        fail (cv);
    }
    if (sl->msg[0]) {
      rb_error (EIO, "%s", sl->msg);
      fail (cv);
    }
    progress_update (&cv->prog, sl->end);
    last = sl->last;
    pthread_mutex_lock (&cv->lock);
    if (sl->buf) {
      cv->buf_busy[sl->buf_index] = false;
      sl->buf = NULL;
    }
    sl->ready = false;
    pthread_cond_broadcast (&cv->cond);
    pthread_mutex_unlock (&cv->lock);
    if (last)
      break;
  }
  pthread_join (th, NULL);
  if (release_windows (cv) == -1 || target_wait (&cv->t) == -1)
    fail (cv);
}

int
main (int argc, char **argv)
{
  static const struct option longopts[] = {
    { "cluster-size", required_argument, NULL, 'c' },
    { "compat", required_argument, NULL, OPT_COMPAT },
    { "refcount-bits", required_argument, NULL, OPT_REFCOUNT_BITS },
    { "compress", required_argument, NULL, 'z' },
    { "output-format", required_argument, NULL, 'O' },
    { "no-create", no_argument, NULL, 'n' },
    { "target-is-zero", no_argument, NULL, OPT_TARGET_IS_ZERO },
    { "sparse-size", required_argument, NULL, 'S' },
    { "force", no_argument, NULL, OPT_FORCE },
    { "no-sync", no_argument, NULL, OPT_NO_SYNC },
    { "copy-offload", no_argument, NULL, 'C' },
    { NULL, 0, NULL, 0 },
  };
  struct cmdline cl = {
    .shortopts = "c:z:O:nS:C", .longopts = longopts, .usage = usage,
    .shared = OPT_FORMAT | OPT_SHARE | OPT_PROGRESS | OPT_CREATE,
  };
  struct rb_create_opts o = { 0 };
  bool compress = false, force = false, no_create = false, target_is_zero = false, sync = true;
  bool copy_offload = false;
  bool raw_out;
  const char *format = NULL, *input, *output, *tmp = NULL;
  struct extents ext = { 0 };
  struct convert cv = { .sparse = true, .t.fd = -1 };
  uint64_t sparse_size = 4096, max_clusters = 0, size_now;
  int64_t v;
  size_t i;
  int c;

  while ((c = cmdline_next (&cl, argc, argv)) != -1) {
    switch (c) {
    case 'c': o.cluster_size = parse_cluster_size_opt (optarg); break;
    case OPT_COMPAT: o.version = parse_compat_opt (optarg); break;
    case OPT_REFCOUNT_BITS:
      v = parse_size (optarg);
      if (v < 1 || v > 64 || (v & (v - 1)))
        cmdline_die (&cl, "--refcount-bits: '%s' is not 1, 2, 4, 8, 16, 32 or 64", optarg);
      o.refcount_bits = v;
      break;
    case 'z':
      compress = true;
      if (strcmp (optarg, "zlib") == 0) o.compression_type = 0;
      else if (strcmp (optarg, "zstd") == 0) o.compression_type = 1;
      else cmdline_die (&cl, "--compress: '%s' is neither zlib nor zstd", optarg);
      break;
    case 'O':
      if (strcmp (optarg, "raw") != 0 && strcmp (optarg, "qcow2") != 0)
        cmdline_die (&cl, "--output-format: '%s' is neither qcow2 nor raw", optarg);
      format = optarg;
      break;
    case 'n': no_create = true; break;
    case OPT_TARGET_IS_ZERO: target_is_zero = true; break;
    case 'S':
      v = parse_size (optarg);
      if (v < 0 || v % 512 || v > (16 << 20))
        cmdline_die (&cl, "--sparse-size: '%s' is not 0 or a multiple of 512 up to 16M", optarg);
      sparse_size = v;
      cv.sparse = v > 0;
      break;
    case OPT_FORCE: force = true; break;
    case OPT_NO_SYNC: sync = false; break;
    case 'C': copy_offload = true; break;
    default: usage (stderr, EXIT_USAGE);
    }
  }
  if (argc - optind != 2)
    usage (stderr, EXIT_USAGE);
  input = argv[optind];
  output = argv[optind + 1];
  raw_out = format && strcmp (format, "raw") == 0;
  create_options_apply (&cl, &o, CO_CLUSTER_SIZE | CO_COMPAT | CO_REFCOUNT_BITS |
                        CO_LAZY_REFCOUNTS | CO_COMPRESSION);
  if (raw_out && (compress || o.cluster_size || o.version || o.refcount_bits || cl.create.given))
    cmdline_die (&cl, "qcow2 options make no sense with -O raw");
  if (source_is_uri (output) && !no_create) {
    /* Onto an NBD export (restore): raw only, in place as with -n. */
    if (!raw_out)
      cmdline_die (&cl, "%s: an NBD URI output needs -O raw", output);
    no_create = true;
  }
  if (no_create && (compress || o.cluster_size || o.version || o.refcount_bits ||
                    cl.create.given || force))
    cmdline_die (&cl, "-n writes into an existing OUTPUT: -c, --compat, --refcount-bits, -o, -z "
                 "and --force do not apply");
  if (target_is_zero && !no_create)
    cmdline_die (&cl, "--target-is-zero needs -n (a new OUTPUT reads as zeros anyway)");

  cv.src = source_open (input, source_flags_for (&cl, cl.format));
  if (!cv.src)
    die_rb ();
  /* As QEMU: a guest disk is whole 512-byte sectors; a ragged tail reads as zeros. */
  o.size = ROUND_UP_U64 (cv.src->size, 512);
  if (no_create) {
    if (target_open_existing (&cv.t, output, format, cv.src->size, cv.src) == -1)
      fail (&cv);
    cv.t.reads_zero = target_is_zero;
  }
  else {
    tmp = output_prepare (output, force, &cv.src, 1);
    if (raw_out && target_new_raw (&cv.t, output, tmp, cv.src->size) == -1)
      fail (&cv);
  }
  /* Zeros are found in whole clusters of a qcow2 output, in -S runs otherwise. */
  if (!no_create && !raw_out)
    cv.unit = o.cluster_size ? o.cluster_size : 65536;
  else
    cv.unit = cv.t.cluster_size ? cv.t.cluster_size : sparse_size ? sparse_size : 65536;

  /* -S 0: everything is data, holes included. */
  if (!cv.sparse ? collect (&ext, 0, cv.src->size, SOURCE_DATA) == -1
                 : source_extents (cv.src, 0, cv.src->size, collect, &ext) == -1)
    fail (&cv);
  if (!no_create && !raw_out) {
    for (i = 0; i < ext.n; i++)
      max_clusters += (ext.v[i].off + ext.v[i].len - 1) / cv.unit - ext.v[i].off / cv.unit + 1;
    if (target_new_qcow2 (&cv.t, output, tmp, &o, max_clusters, compress, !sync) == -1)
      fail (&cv);
  }
  cv.t.no_sync = !sync;
  if (!copy_offload && !kernel_copy_pays (tmp ? tmp : output))
    cv.t.can_copy = false;
  /* A file source is mapped: the kernel copies from the file, or the data
   * is written from the mapping, where a chunk is in the page cache
   * (measured on ext4 from the page cache: 0.147 s against 0.157 s read
   * into buffers, CPU 0.170 s against 0.224 s; tmpfs the same; a chunk not
   * in the cache read so: 1.24 s against 1.53 s mapped).
   */
  cv.map = source_file_fd (cv.src) >= 0;
  cv.map_cached = !cv.t.can_copy;

  progress_init (&cv.prog, cl.progress, cv.src->size);
  cv.ext = &ext;
  convert_all (&cv);

  if (source_current_size (cv.src, &size_now) == -1 || size_now != cv.src->size) {
    rb_error (EIO, "%s: the source changed size during the conversion", input);
    fail (&cv);
  }
  if (target_finish (&cv.t) == -1)
    fail (&cv);
  if (tmp && output_commit () == -1)
    die_rb ();
  progress_end (&cv.prog);
  source_close (cv.src);
  free (ext.v);
  return EXIT_OK;
}
