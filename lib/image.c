/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Opening and closing images and chains, geometry, information and statistics.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define DEFAULT_CACHE_SIZE (32ULL << 20)
#define DEFAULT_CHAIN_DEPTH 32

struct chain_ids {
  unsigned n;
  dev_t dev[RB_MAX_CHAIN + 2];
  ino_t ino[RB_MAX_CHAIN + 2];
};

static void image_free (struct rb_image *img);

/* A dirty image (lazy refcounts, unclean shutdown): rebuild the refcounts
 * from the references (invariant 7), check again, then clear the dirty bit,
 * durably.  Only refcount blocks change.  With io_lock held exclusive and
 * meta_lock (or before anyone else can see img); img->readonly is not
 * looked at, so rb_make_writable repairs before it lets anyone write.
 */
static int
repair_dirty_locked (struct rb_image *img)
{
  struct rb_check_result res;
  char msg[400];

  memset (&res, 0, sizeof res);
  if (check_locked (img, &res, RB_CHECK_REPAIR_ALL | RB_CHECK_REPAIR_LEAKS) == 0 &&
      cache_write_back (img->rb_cache) == 0 && file_sync (img->fd, IO_FLUSH) == 0) {
    memset (&res, 0, sizeof res);
    if (check_locked (img, &res, 0) == 0)
      goto checked;
  }
  snprintf (msg, sizeof msg, "%s", rb_errmsg ());
  return rb_error (rb_errno (), "%s: image is dirty and could not be repaired: %s",
                   img->path, msg);

 checked:
  if (res.corruptions || res.leaks)
    return rb_error (EIO, "%s: image is dirty and still has %" PRIu64 " corruptions and %"
                     PRIu64 " leaks after repair; use 'qemu-img check -r all'",
                     img->path, res.corruptions, res.leaks);
  img->incompatible_features &= ~QCOW_INCOMPAT_DIRTY;
  if (header_update_features (img) == -1 || file_sync (img->fd, IO_FLUSH) == -1)
    return -1;
  return 0;
}

/* Read the active L1 table and the refcount table into memory. */
static int
read_tables (struct rb_image *img)
{
  CLEANUP_FREE uint8_t *buf = NULL;
  uint64_t i, bytes;

  img->l1 = calloc (MAX (img->l1_size, 1), 8);
  img->l1_dirty = calloc (DIV_ROUND_UP ((uint64_t) img->l1_size, 64) + 1, 1);
  bytes = (uint64_t) img->refcount_table_clusters * img->cluster_size;
  img->reftable_entries = bytes / 8;
  img->reftable = calloc (img->reftable_entries, 8);
  buf = malloc (MAX ((uint64_t) img->l1_size * 8, bytes));
  if (!img->l1 || !img->l1_dirty || !img->reftable || !buf)
    return rb_error (ENOMEM, "out of memory reading the L1 and refcount tables");
  if (img->l1_size > 0) {
    if (full_pread (img->fd, buf, (uint64_t) img->l1_size * 8, img->l1_table_offset, IO_META_READ) == -1)
      return -1;
    for (i = 0; i < img->l1_size; i++) {
      img->l1[i] = get_be64 (buf + i * 8);
      if (img->l1[i] & L1E_RESERVED_MASK)
        return rb_error (EIO, "corrupt image: L1 entry %" PRIu64 " has reserved bits set (%#" PRIx64 ")",
                         i, img->l1[i]);
      /* Flags with a zero offset name the header as an L2 table: qemu-img
       * check walks it as one, QEMU's write path asserts.  Refuse it here.
       */
      if (img->l1[i] != 0 && (img->l1[i] & L1E_OFFSET_MASK) == 0)
        return rb_error (EIO, "corrupt image: L1 entry %" PRIu64 " points at the header (%#" PRIx64 ")",
                         i, img->l1[i]);
    }
  }
  if (full_pread (img->fd, buf, bytes, img->refcount_table_offset, IO_META_READ) == -1)
    return -1;
  for (i = 0; i < img->reftable_entries; i++)
    img->reftable[i] = get_be64 (buf + i * 8);
  if (overlap_l2_rebuild (img) == -1)
    return -1;
  return refblocks_rebuild (img);
}

/* Serve internal snapshot `name` (id or name) instead of the active L1
 * table: read-only, with the snapshot's disk size when it is recorded.
 */
static int
select_snapshot (struct rb_image *img, const char *name)
{
  uint32_t i;

  for (i = 0; i < img->nb_snapshots; i++) {
    struct snapshot *sn = &img->snapshots[i];
    if (strcmp (sn->id, name) == 0 || strcmp (sn->name, name) == 0) {
      uint64_t size = sn->disk_size ? sn->disk_size : img->size;
      uint64_t need = DIV_ROUND_UP (size, img->cluster_size << img->l2_bits);
      if (sn->l1_size < need)
        return rb_error (EIO, "corrupt image: snapshot %s L1 table is too small", name);
      img->l1_table_offset = sn->l1_table_offset;
      img->l1_size = sn->l1_size;
      img->size = size;
      img->readonly = true;
      img->ro_reason = "an internal snapshot is served read-only";
      return 0;
    }
  }
  return rb_error (ENOENT, "%s: no internal snapshot with id or name \"%s\"", img->path, name);
}

/* Open path as a qcow2 image (or raw, for a backing file) at chain depth
 * depth.  Returns the image or NULL with the error recorded.
 */
struct rb_image *
image_open (const char *path, const struct rb_open_opts *opts, unsigned depth,
            bool force_raw, struct chain_ids *ids)
{
  unsigned flags = opts ? opts->flags : 0;
  unsigned max_depth = opts && opts->max_chain_depth ? opts->max_chain_depth : DEFAULT_CHAIN_DEPTH;
  uint64_t cache_size = opts && opts->cache_size ? opts->cache_size : DEFAULT_CACHE_SIZE;
  struct rb_image *img;
  pthread_rwlockattr_t attr;
  struct stat st;
  char *tmp;
  unsigned i;

  if (depth > max_depth || depth > RB_MAX_CHAIN) {
    rb_error (ELOOP, "backing chain too deep (more than %u images below %s)",
              MIN (max_depth, RB_MAX_CHAIN), path);
    return NULL;
  }
  img = calloc (1, sizeof *img);
  if (!img) {
    rb_error (ENOMEM, "out of memory");
    return NULL;
  }
  img->fd = -1;
  img->depth = depth;
  img->readonly = depth > 0 || (flags & RB_OPEN_RDONLY);
  img->no_lock = flags & RB_OPEN_NO_LOCK;
  if (depth > 0)
    img->ro_reason = "a backing file is never written";
  pthread_rwlockattr_init (&attr);
  pthread_rwlockattr_setkind_np (&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
  pthread_rwlock_init (&img->io_lock, &attr);
  pthread_rwlockattr_destroy (&attr);
  pthread_mutex_init (&img->meta_lock, NULL);
  pthread_mutex_init (&img->stats_lock, NULL);
  if ((flags & RB_OPEN_CACHE_NONE) && pagecache_init (img) == -1)
    goto err;

  img->path = strdup (path);
  tmp = strdup (path);
  if (!img->path || !tmp) {
    free (tmp);
    rb_error (ENOMEM, "out of memory");
    goto err;
  }
  img->dir = strdup (dirname (tmp));
  free (tmp);
  if (!img->dir) {
    rb_error (ENOMEM, "out of memory");
    goto err;
  }

  /* O_NONBLOCK so that a FIFO cannot block open (); refused below, then cleared. */
  img->fd = open (path, (img->readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC | O_NONBLOCK);
  if (img->fd == -1) {
    rb_error_errno (errno, "%s%s", depth ? "backing file " : "", path);
    goto err;
  }
  if (fstat (img->fd, &st) == -1) {
    rb_error_errno (errno, "%s", path);
    goto err;
  }
  if (S_ISDIR (st.st_mode)) {
    rb_error (EISDIR, "%s%s: is a directory", depth ? "backing file " : "", path);
    goto err;
  }
  if (!S_ISREG (st.st_mode) && !S_ISBLK (st.st_mode)) {
    rb_error (EINVAL, "%s%s: not a regular file or block device", depth ? "backing file " : "", path);
    goto err;
  }
  if (fcntl (img->fd, F_SETFL, fcntl (img->fd, F_GETFL) & ~O_NONBLOCK) == -1) {
    rb_error_errno (errno, "%s", path);
    goto err;
  }
  pagecache_new_fd (img);
  for (i = 0; i < ids->n; i++)
    if (ids->dev[i] == st.st_dev && ids->ino[i] == st.st_ino) {
      rb_error (ELOOP, "backing chain loop: %s is already in the chain", path);
      goto err;
    }
  ids->dev[ids->n] = st.st_dev;
  ids->ino[ids->n] = st.st_ino;
  ids->n++;
  img->dev = st.st_dev;
  img->ino = st.st_ino;

  if (force_raw) {
    img->is_raw = true;
    img->ro_reason = "a raw file is only read";
    if (file_size (img->fd, &img->size) == -1)
      goto err;
    img->file_size = img->size;
    return img;
  }

  if (header_read (img) == -1) {
    if (depth > 0) {
      char msg[600];
      snprintf (msg, sizeof msg, "backing file %s: %s", path, rb_errmsg ());
      rb_error (rb_errno (), "%s", msg);
    }
    goto err;
  }
  if (img->incompatible_features & QCOW_INCOMPAT_CORRUPT) {
    img->readonly = true;       /* invariant 7: corrupt bit means read-only */
    img->ro_reason = "the image is marked corrupt (repair it with 'qemu-img check -r all')";
  }
  if (snapshots_read (img) == -1 || bitmaps_open (img) == -1)
    goto err;
  if (depth == 0 && opts && opts->snapshot && select_snapshot (img, opts->snapshot) == -1)
    goto err;
  if (read_tables (img) == -1)
    goto err;

  {
    uint64_t nr = cache_size / img->cluster_size;
    uint64_t nr_l2 = MIN (MAX (nr * 3 / 4, 16), 65536);
    uint64_t nr_rb = MIN (MAX (nr / 4, 16), 65536);
    img->l2_cache = cache_new (img, "L2", nr_l2);
    img->rb_cache = cache_new (img, "refcount", nr_rb);
    if (!img->l2_cache || !img->rb_cache)
      goto err;
  }

  if (!img->no_lock && image_lock_file (img, !img->readonly) == -1)
    goto err;
  if (!(flags & RB_OPEN_NO_BACKING) && backing_open (img, opts, ids) == -1)
    goto err;
  if (!img->readonly && (img->incompatible_features & QCOW_INCOMPAT_DIRTY) &&
      repair_dirty_locked (img) == -1)
    goto err;
  return img;

 err:
  image_free (img);
  return NULL;
}

/* See rblock.h. */
int
rb_probe_qcow2 (const char *path)
{
  uint8_t m[4];
  int fd = open (path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);   /* a FIFO must not block */
  ssize_t r;

  if (fd == -1)
    return rb_error_errno (errno, "%s", path);
  r = pread (fd, m, 4, 0);
  close (fd);
  return r == 4 && get_be32 (m) == QCOW_MAGIC;
}

struct rb_image *
rb_open (const char *path, const struct rb_open_opts *opts)
{
  struct chain_ids ids = { .n = 0 };

  return image_open (path, opts, 0, opts && (opts->flags & RB_OPEN_RAW), &ids);
}

struct rb_image *
image_open_below (struct rb_image *img, const char *path, bool force_raw)
{
  struct rb_open_opts o = { .flags = RB_OPEN_RDONLY };
  struct chain_ids ids = { .n = 1 };
  struct stat st;

  if (fstat (img->fd, &st) == -1) {
    rb_error_errno (errno, "%s", img->path);
    return NULL;
  }
  ids.dev[0] = st.st_dev;
  ids.ino[0] = st.st_ino;
  return image_open (path, &o, img->depth + 1, force_raw, &ids);
}

static void
image_free (struct rb_image *img)
{
  if (!img)
    return;
  if (img->backing)
    image_free (img->backing);
  if (img->fd >= 0)
    close (img->fd);
  cache_free (img->l2_cache);
  cache_free (img->rb_cache);
  header_free (img);
  bitmaps_free (img);
  pagecache_free (img);
  free (img->l1);
  free (img->l1_dirty);
  free (img->reftable);
  free (img->refblocks);
  overlap_free (img);
  free (img->cow_buf);
  free (img->frees);
  free (img->path);
  free (img->dir);
  pthread_rwlock_destroy (&img->io_lock);
  pthread_mutex_destroy (&img->meta_lock);
  pthread_mutex_destroy (&img->stats_lock);
  free (img);
}

/* Flush twice (the second writes the refcounts the first released), store
 * the live bitmaps (flush.c invariant 8), close.
 */
int
rb_close (struct rb_image *img)
{
  int r = 0;

  if (!img)
    return 0;
  if (!img->readonly && !img->corrupt && !img->is_raw) {
    if (rb_flush (img) == -1 || rb_flush (img) == -1 || bitmaps_close (img) == -1)
      r = -1;
    else
      truncate_free_tail (img);
  }
  image_free (img);
  return r;
}

uint64_t
rb_get_size (const struct rb_image *img)
{
  return img->size;
}

uint32_t
rb_get_cluster_size (const struct rb_image *img)
{
  return img->is_raw ? 512 : img->cluster_size;
}

bool
rb_is_readonly (const struct rb_image *img)
{
  return __atomic_load_n (&img->readonly, __ATOMIC_ACQUIRE);
}

/* rb_make_writable under io_lock (exclusive) and meta_lock, with fd a new
 * O_RDWR descriptor of the file (taken over on success, closed otherwise).
 */
static int
make_writable_locked (struct rb_image *img, int fd)
{
  struct stat st;
  int old;

  if (!img->readonly) {
    close (fd);
    return 0;
  }
  if (img->corrupt) {
    close (fd);
    return rb_error (EROFS, "%s: corrupt metadata was found; the image stays read-only",
                     img->path);
  }
  if (fstat (fd, &st) == -1 || st.st_dev != img->dev || st.st_ino != img->ino) {
    close (fd);
    return rb_error (ESTALE, "%s: the file was replaced since it was opened", img->path);
  }
  if (!img->no_lock && image_lock_reader_fd (img, fd) == -1) {
    close (fd);
    return -1;
  }
  /* No request is in flight: the new descriptor (with the same reader
   * locks) replaces the old one, whose locks are released first (a forked
   * process may share its description and keep it open).
   */
  old = img->fd;
  img->fd = fd;
  pagecache_new_fd (img);
  if (!img->no_lock)
    image_unlock_fd (old);
  close (old);
  if (!img->no_lock && image_lock_upgrade (img) == -1)
    return -1;
  if ((img->incompatible_features & QCOW_INCOMPAT_DIRTY) && repair_dirty_locked (img) == -1) {
    if (!img->no_lock)
      image_lock_downgrade (img);
    return -1;
  }
  __atomic_store_n (&img->readonly, false, __ATOMIC_RELEASE);
  return 0;
}

/* See rblock.h.  The file is opened before the locks are taken, so a file
 * that cannot be written costs the readers nothing.
 */
int
rb_make_writable (struct rb_image *img)
{
  int fd, r;

  if (!rb_is_readonly (img))
    return 0;
  if (img->ro_reason)
    return rb_error (EROFS, "%s: %s", img->path, img->ro_reason);
  fd = open (img->path, O_RDWR | O_CLOEXEC);
  if (fd == -1)
    return rb_error_errno (errno, "%s: cannot open for writing", img->path);
  pthread_rwlock_wrlock (&img->io_lock);
  pthread_mutex_lock (&img->meta_lock);
  r = make_writable_locked (img, fd);
  pthread_mutex_unlock (&img->meta_lock);
  pthread_rwlock_unlock (&img->io_lock);
  return r;
}

/* A copy of the counters: each read under the lock its writers hold
 * (stats_lock for the request counters; meta_lock for the allocator's and
 * the caches', which count under it).
 */
void
rb_get_stats (struct rb_image *img, struct rb_stats *st)
{
  memset (st, 0, sizeof *st);
  pthread_mutex_lock (&img->stats_lock);
  st->reads = img->stats.reads;
  st->read_bytes = img->stats.read_bytes;
  st->writes = img->stats.writes;
  st->write_bytes = img->stats.write_bytes;
  st->zeros = img->stats.zeros;
  st->zero_bytes = img->stats.zero_bytes;
  st->trims = img->stats.trims;
  st->trim_bytes = img->stats.trim_bytes;
  st->flushes = img->stats.flushes;
  st->extents_calls = img->stats.extents_calls;
  pthread_mutex_unlock (&img->stats_lock);
  pthread_mutex_lock (&img->meta_lock);
  st->clusters_allocated = img->stats.clusters_allocated;
  st->cache_hits = img->stats.cache_hits;
  st->cache_misses = img->stats.cache_misses;
  pthread_mutex_unlock (&img->meta_lock);
}

int
rb_get_info (struct rb_image *img, struct rb_info *info)
{
  struct rb_image *b;
  unsigned i;

  memset (info, 0, sizeof *info);
  if (img->is_raw)
    return rb_error (EINVAL, "not a qcow2 image");
  pthread_mutex_lock (&img->meta_lock);
  info->version = img->version;
  info->virtual_size = img->size;
  info->cluster_bits = img->cluster_bits;
  info->cluster_size = img->cluster_size;
  info->refcount_bits = img->refcount_bits;
  info->header_length = img->header_length;
  info->l1_table_offset = img->l1_table_offset;
  info->l1_size = img->l1_size;
  info->refcount_table_offset = img->refcount_table_offset;
  info->refcount_table_clusters = img->refcount_table_clusters;
  info->nb_snapshots = img->nb_snapshots;
  info->snapshots_offset = img->snapshots_offset;
  info->incompatible_features = img->incompatible_features;
  info->compatible_features = img->compatible_features;
  info->autoclear_features = img->autoclear_features;
  info->compression_type = img->compression_type;
  info->extended_l2 = img->extended_l2;
  info->lazy_refcounts = img->compatible_features & QCOW_COMPAT_LAZY_REFCOUNTS;
  info->dirty = img->incompatible_features & QCOW_INCOMPAT_DIRTY;
  info->corrupt = (img->incompatible_features & QCOW_INCOMPAT_CORRUPT) || img->corrupt;
  info->file_size = img->file_size;
  if (img->backing_file)
    snprintf (info->backing_file, sizeof info->backing_file, "%s", img->backing_file);
  if (img->backing_format)
    snprintf (info->backing_format, sizeof info->backing_format, "%s", img->backing_format);
  for (i = 0; i < img->nr_exts && i < 32; i++) {
    info->extensions[i].type = img->exts[i].type;
    info->extensions[i].length = img->exts[i].length;
  }
  info->nr_extensions = i;
  for (i = 0; i < img->nb_snapshots && i < 64; i++) {
    struct rb_snapshot_info *s = &info->snapshots[i];
    snprintf (s->id, sizeof s->id, "%s", img->snapshots[i].id);
    snprintf (s->name, sizeof s->name, "%s", img->snapshots[i].name);
    s->vm_state_size = img->snapshots[i].vm_state_size_large;
    s->disk_size = img->snapshots[i].disk_size;
    s->date_sec = img->snapshots[i].date_sec;
    s->date_nsec = img->snapshots[i].date_nsec;
    s->vm_clock_nsec = img->snapshots[i].vm_clock_nsec;
    s->l1_table_offset = img->snapshots[i].l1_table_offset;
    s->l1_size = img->snapshots[i].l1_size;
    s->icount = img->snapshots[i].icount;
  }
  info->nr_snapshots = i;
  pthread_mutex_unlock (&img->meta_lock);
  for (b = img->backing, i = 0; b && i < RB_MAX_CHAIN; b = b->backing, i++) {
    snprintf (info->chain[i].path, sizeof info->chain[i].path, "%s", b->path);
    snprintf (info->chain[i].format, sizeof info->chain[i].format, "%s",
              b->is_raw ? "raw" : "qcow2");
    info->chain[i].virtual_size = b->size;
  }
  info->chain_depth = i;
  return 0;
}
