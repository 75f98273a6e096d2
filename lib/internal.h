/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Engine internals shared by the lib/ modules: the image structure and module interfaces.
 */
#ifndef RBLOCK_INTERNAL_H
#define RBLOCK_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "rblock.h"
#include "format.h"
#include "util.h"

/* ---- errors.c ---- */
int rb_error (int err, const char *fmt, ...) __attribute__((format (printf, 2, 3)));
int rb_error_errno (int err, const char *fmt, ...) __attribute__((format (printf, 2, 3)));
/* This thread's last error, kept across clean-up work that may record others. */
struct saved_error {
  int err;
  char msg[512];
};
void error_save (struct saved_error *s);
int error_restore (const struct saved_error *s);   /* records it again; returns -1 */
/* Pass a one-line warning to the function set with rb_set_warning_fn (or drop it). */
void rb_warning (const char *fmt, ...) __attribute__((format (printf, 1, 2)));

/* ---- fileio.c: every image I/O goes through here, tagged with its event ----
 * Tests inject faults with RBLOCK_FAULT=EVENT:ERRNO[:once|:always|:after=N]
 * (EVENT one of the names in fileio.c, ERRNO EIO or ENOSPC...).
 */
enum io_event {
  IO_META_READ, IO_DATA_READ, IO_COW_READ, IO_DATA_WRITE, IO_L1_UPDATE,
  IO_L2_ALLOC, IO_L2_UPDATE, IO_REFBLOCK_ALLOC, IO_REFBLOCK_UPDATE,
  IO_REFTABLE_GROW, IO_HEADER_UPDATE, IO_FLUSH, IO_CREATE, IO_BITMAP_WRITE, IO_DATA_ZERO, IO__MAX
};
int full_pread (int fd, void *buf, size_t count, uint64_t offset, enum io_event ev);
int full_pwrite (int fd, const void *buf, size_t count, uint64_t offset, enum io_event ev);
/* count bytes from fd_in at in_offset to fd at offset with copy_file_range
 * (in the kernel; a reflink where the file system shares extents).  0, or
 * -1 with the error recorded; ENOTSUP (nothing written) when the kernel
 * cannot copy between these files or a replay log needs the bytes.
 */
int full_copy_range (int fd_in, uint64_t in_offset, int fd, uint64_t offset, size_t count,
                     enum io_event ev);
int file_sync (int fd, enum io_event ev);
/* Write exactly count bytes at offset and make that range durable (its data
 * and the file metadata needed to read it back) without writing out the rest
 * of the file's dirty data, as fdatasync would: pwritev2 with RWF_DSYNC, whose
 * sync covers only the range written; pwrite and fdatasync where the kernel
 * lacks it.  For a stage whose successor depends on this range alone
 * (invariant 6).  Faults: ev for the write, then IO_FLUSH.  0 / -1.
 */
int full_pwrite_durable (int fd, const void *buf, size_t count, uint64_t offset,
                         enum io_event ev);
/* Make [offset, offset+count) read as zeros: fallocate ZERO_RANGE, else
 * PUNCH_HOLE (both keeping the size), else written zeros.  0 / -1.
 */
int file_zero_range (int fd, uint64_t offset, uint64_t count, enum io_event ev);
/* Give [offset, offset+count) back to the file system (PUNCH_HOLE, keeping
 * the size); best effort: nothing happens where punching is not supported.
 * true if the range was punched.
 */
bool file_punch_hole (int fd, uint64_t offset, uint64_t count);
int file_extend (int fd, uint64_t end);
int fault_check (enum io_event ev);   /* 0, or -1 with the injected error recorded */
int file_size (int fd, uint64_t *size);   /* regular file or block device */

/* ---- cache.c: bounded LRU of cluster-sized tables keyed by host offset ----
 * All calls are made under the image's meta_lock.
 */
struct cache;
struct cache_entry;
struct cache *cache_new (struct rb_image *img, const char *name, size_t nr_entries);
void cache_free (struct cache *c);
/* Get the table at host_offset, reading it unless `fresh` (then zeroed).
 * The returned pointer stays valid until cache_put.  NULL on error.
 */
void *cache_get (struct cache *c, uint64_t host_offset, bool fresh);
void cache_put (struct cache *c, uint64_t host_offset);
void cache_mark_dirty (struct cache *c, uint64_t host_offset);
/* Write every dirty table (no sync).  Returns 0 / -1. */
int cache_write_back (struct cache *c);
int cache_write_durable (struct cache *c, uint64_t host_offset);   /* that one table, durably */
bool cache_has_dirty (struct cache *c);
/* Drop a table (e.g. freed L2 cluster) without writing it. */
void cache_discard (struct cache *c, uint64_t host_offset);
bool cache_contains (struct cache *c, uint64_t host_offset);

/* ---- header.c ---- */
struct extension {
  uint32_t type;
  uint32_t length;
  uint8_t *data;
  uint64_t file_offset;     /* of the data, in the header cluster */
};
struct feature_name {
  uint8_t group, bit;
  char name[47];
};
struct snapshot {
  uint64_t l1_table_offset;
  uint32_t l1_size;
  char *id, *name;
  uint32_t date_sec, date_nsec;
  uint64_t vm_clock_nsec;
  uint32_t vm_state_size;
  uint64_t vm_state_size_large, disk_size;   /* disk_size 0: not recorded */
  uint64_t icount;                           /* UINT64_MAX: not recorded */
  uint8_t *extra;                            /* the extra data as read (kept when rewriting) */
  uint32_t extra_size;
};

int header_read (struct rb_image *img);
int header_write (struct rb_image *img);           /* rewrite header cluster fields */
int header_update_features (struct rb_image *img); /* write the three feature words */
int snapshots_read (struct rb_image *img);
/* Parse (append to img->exts) the extensions in header cluster buf[start..end). */
int read_extensions (struct rb_image *img, const uint8_t *buf, uint64_t start, uint64_t end);
void header_free (struct rb_image *img);

/* ---- refcount.c ---- */
/* Entry i of refcount block b, read or set at the image's refcount width. */
uint64_t block_get (struct rb_image *img, const uint8_t *b, uint64_t i);
void block_set (struct rb_image *img, uint8_t *b, uint64_t i, uint64_t v);
uint64_t refcount_max (struct rb_image *img);
int refcount_get (struct rb_image *img, uint64_t cluster_index, uint64_t *refcount);
int refcount_update (struct rb_image *img, uint64_t cluster_index, int64_t delta);
/* Make sure refcount block for cluster_index exists (may grow the table). */
int refcount_ensure_block (struct rb_image *img, uint64_t cluster_index, bool *created);
/* Create the block of range rt_index in free host cluster `at` (see there). */
int refblock_create (struct rb_image *img, uint64_t rt_index, uint64_t at);
int refcount_grow_table (struct rb_image *img, uint64_t rt_index);

/* ---- alloc.c ---- */
/* Allocate nr contiguous clusters with refcount 1; returns host offset or -1. */
int64_t alloc_clusters (struct rb_image *img, uint64_t nr);
/* Allocate 1..max contiguous clusters (the first free run); *nr the count,
 * *fresh true if they lie past everything the file held (they read as zeros).
 */
int64_t alloc_clusters_upto (struct rb_image *img, uint64_t max, uint64_t *nr, bool *fresh);
/* Queue a refcount decrement to run after the pointer change is durable (invariant 4). */
int free_clusters_deferred (struct rb_image *img, uint64_t host_offset, uint64_t nr);
int free_compressed_deferred (struct rb_image *img, uint64_t l2_entry);
int apply_deferred_frees (struct rb_image *img);

/* ---- l2.c ---- */
enum l2_kind { L2_UNALLOC, L2_DATA, L2_ZERO_PLAIN, L2_ZERO_ALLOC, L2_COMPRESSED };
struct l2_info {
  enum l2_kind kind;
  uint64_t host_offset;          /* cluster start (DATA/ZERO_ALLOC) or compressed data start */
  uint64_t compressed_size;      /* bytes to read, COMPRESSED only */
  bool copied;
};
int l2_decode (struct rb_image *img, uint64_t entry, struct l2_info *info);
/* Subcluster state for extended L2. */
enum sc_state { SC_UNALLOC, SC_DATA, SC_ZERO };
int l2_subcluster_state (struct rb_image *img, uint64_t entry, uint64_t bitmap,
                         unsigned sc, enum sc_state *st);
/* Get an L2 entry for guest cluster; *table_offset 0 if no table. */
int l2_get_entry (struct rb_image *img, uint64_t guest_cluster,
                  uint64_t *entry, uint64_t *bitmap, uint64_t *table_offset);
int l1_get_l2_offset (struct rb_image *img, uint64_t l1_index, uint64_t *l2_offset);
/* Set L1 entry l1_index (host order) in memory, to be written at the next
 * flush; keeps the overlap checks' set of active L2 tables current.  Every
 * change of the active L1 goes through here.  Under meta_lock.
 */
int l1_set_entry (struct rb_image *img, uint64_t l1_index, uint64_t entry);

/* ---- compress.c ---- */
int decompress_cluster (struct rb_image *img, const void *in, size_t in_len,
                        void *out, size_t out_len);
/* Returns compressed length, 0 if it does not fit in out_len, -1 on error. */
ssize_t compress_buffer (int type, const void *in, size_t in_len,
                         void *out, size_t out_len);

/* ---- io.c ---- */
int data_pread (struct rb_image *img, void *buf, uint64_t count, uint64_t host_offset,
                enum io_event ev);
int check_range (struct rb_image *img, uint64_t count, uint64_t offset);
int read_compressed (struct rb_image *img, uint64_t l2_entry, void *buf,
                     uint64_t in_cluster, uint64_t len);
int read_locked (struct rb_image *img, void *buf, uint64_t count, uint64_t offset);

/* ---- pagecache.c (RB_OPEN_CACHE_NONE) ---- */
struct pagecache;
int pagecache_init (struct rb_image *img);
void pagecache_free (struct rb_image *img);
void pagecache_new_fd (struct rb_image *img);
void pagecache_evict_read (struct rb_image *img, uint64_t host_offset, uint64_t count);
/* Every guest data write goes through here (full_pwrite with IO_DATA_WRITE). */
int data_pwrite (struct rb_image *img, const void *buf, uint64_t count, uint64_t host_offset);

/* ---- check.c ---- */
int check_locked (struct rb_image *img, struct rb_check_result *res, unsigned flags);

/* ---- write.c, zero.c ---- */
int writable (struct rb_image *img);          /* 0, or -1 (read-only or corrupt) */
void count_stat (struct rb_image *img, uint64_t *ops, uint64_t *bytes, uint64_t n);
int fua_flush (struct rb_image *img);
/* The L2 table of l1_index pinned for modification in *table, allocated or
 * copied (invariant 5) as needed.  Returns its host offset or -1.  Under meta_lock.
 */
int64_t l2_table_for_write (struct rb_image *img, uint64_t l1_index, uint8_t **table);
/* Write len bytes (data NULL: zeros) inside one guest cluster, allocating
 * or copying as needed.  Under meta_lock.
 */
int write_cluster_slow (struct rb_image *img, uint64_t guest_offset, uint64_t len,
                        const void *data);
/* Give back nr clusters at host nothing points at yet; keeps the current error. */
void release_unused (struct rb_image *img, uint64_t host, uint64_t nr);

/* ---- image.c ---- */
struct chain_ids;
struct rb_image *image_open (const char *path, const struct rb_open_opts *opts,
                             unsigned depth, bool force_raw, struct chain_ids *ids);
/* Open path (raw if force_raw) read-only with its chain as a backing file
 * of img; a chain that leads back to img is refused.  NULL on error.
 */
struct rb_image *image_open_below (struct rb_image *img, const char *path, bool force_raw);

/* ---- backing.c ---- */
int backing_open (struct rb_image *img, const struct rb_open_opts *opts, struct chain_ids *ids);
int backing_read (struct rb_image *img, void *buf, uint64_t count, uint64_t offset);
void backing_close (struct rb_image *img);
char *backing_resolve (struct rb_image *img, const char *name);

/* ---- flush.c ---- */
int flush_metadata (struct rb_image *img);   /* under meta_lock */
/* Apply the queued frees, durably, and punch what is now free (invariant 9).
 * io_lock exclusive and meta_lock held.
 */
int release_deferred_frees (struct rb_image *img);
void truncate_free_tail (struct rb_image *img);   /* at a clean close */
int mark_dirty_l1 (struct rb_image *img, uint64_t l1_index);
int prepare_first_write (struct rb_image *img);
int clear_autoclear (struct rb_image *img, bool written);
int mark_corrupt (struct rb_image *img, const char *fmt, ...) __attribute__((format (printf, 2, 3)));

/* ---- txn.c: changes made live by one header write (see there) ----
 * All calls with io_lock held exclusively and meta_lock held.
 */
struct txn;
struct txn_state {              /* what the header points at after the switch */
  uint64_t size;
  uint32_t l1_size;
  uint64_t l1_table_offset;
  uint64_t *l1;                 /* the active L1 (host order); the image owns it once switched */
  uint32_t nb_snapshots;
  uint64_t snapshots_offset, snapshots_size;
  struct snapshot *snapshots;   /* img->snapshots when unchanged; else owned once switched */
};
struct txn *txn_begin (struct rb_image *img);
int flush_and_free (struct rb_image *img);
struct rb_image *txn_image (struct txn *t);
int txn_ref (struct txn *t, uint64_t cluster_index, int64_t delta);
int txn_ref_entry (struct txn *t, uint64_t l2_entry, int64_t delta);
int txn_refcount (struct txn *t, uint64_t cluster_index, uint64_t *rc);
int64_t txn_alloc (struct txn *t, uint64_t nr);
int txn_write (struct txn *t, const void *buf, uint64_t len, uint64_t host_offset,
               enum io_event ev);
int txn_garbage (struct txn *t, uint64_t host_offset, uint64_t nr);
int txn_commit (struct txn *t, struct txn_state *s, bool *switched);
void txn_abort (struct txn *t);
/* Commit, freeing what s holds unless the image took it.  Returns 0 / -1. */
int txn_finish (struct txn *t, struct txn_state *s);
/* Abort, freeing what s holds (its snapshots array has nr_snapshots entries).  Returns -1. */
int txn_fail (struct txn *t, struct txn_state *s, uint32_t nr_snapshots);
void snapshots_free (struct snapshot *v, uint32_t n);
int txn_read_table (struct txn *t, uint64_t l1_entry, uint8_t *buf, uint64_t *off);
int txn_ref_table (struct txn *t, const uint8_t *buf, int64_t delta);
int64_t txn_new_table (struct txn *t, const uint8_t *buf);
int64_t txn_new_l1 (struct txn *t, const uint64_t *l1, uint32_t l1_size);
int txn_garbage_l1 (struct txn *t, uint64_t offset, uint32_t l1_size);
int txn_new_active_l1 (struct txn *t, struct txn_state *s);
int txn_lock (struct rb_image *img);
void txn_unlock (struct rb_image *img);

/* ---- overlap.c ---- */
enum overlap_kind { OV_DATA, OV_L2, OV_L1, OV_REFBLOCK, OV_REFTABLE };
int overlap_check (struct rb_image *img, uint64_t host_offset, uint64_t len,
                   enum overlap_kind kind);
int refblocks_rebuild (struct rb_image *img);
/* The set of active L2 tables the checks use (kept by l1_set_entry). */
int overlap_l2_add (struct rb_image *img, uint64_t off);
void overlap_l2_remove (struct rb_image *img, uint64_t off);
int overlap_l2_rebuild (struct rb_image *img);
void overlap_free (struct rb_image *img);

/* ---- bitmaps*.c: persistent dirty bitmaps (the rules are in bitmaps.c) ---- */
struct bitmap_bits;         /* bitmaps-data.c: one bitmap's bits in memory */
struct bitmap_track;        /* the bits every guest write sets (bitmaps-data.c) */
struct bitmap {
  char *name;               /* NUL-terminated copy of the name */
  uint16_t name_size;
  uint8_t type, granularity_bits;
  uint32_t flags;           /* as on disk */
  uint8_t *extra;           /* extra data, kept as it is */
  uint32_t extra_size;
  uint64_t table_offset;
  uint32_t table_size;      /* entries */
  uint64_t dir_pos;         /* of its entry in img->bitmap_dir */
  const char *unsupported;  /* why rblock cannot keep it up to date, or NULL */
  struct bitmap_bits *bits; /* loaded (live, or changed by an operation), or NULL */
  bool live;                /* tracking this session's writes: in use on disk meanwhile */
  bool changed;             /* bits to store in new clusters at the next commit */
};
/* bitmaps.c */
int bitmaps_open (struct rb_image *img);   /* load and validate the directory; 0 / -1 */
/* Before the first write: load every enabled bitmap, mark it (and every
 * bitmap rblock cannot keep) in use and write the directory in place (the
 * caller syncs).  1 written, 0 nothing to do, -1 error.  Under meta_lock.
 */
int bitmaps_mark_in_use (struct rb_image *img);
int bitmaps_close (struct rb_image *img);  /* store live bitmaps, in_use cleared; 0 / -1 */
void bitmaps_free (struct rb_image *img);
struct bitmap *bitmap_find (struct rb_image *img, const char *name);
uint64_t bitmap_bytes (struct rb_image *img, unsigned granularity_bits);  /* of data */
uint64_t bitmap_bytes_at (uint64_t disk_size, unsigned granularity_bits);
uint64_t bitmap_nr_bits (uint64_t disk_size, unsigned granularity_bits);
/* bitmaps-data.c */
void bitmaps_note_write (struct rb_image *img, uint64_t offset, uint64_t count);
struct bitmap_bits *bits_new (struct rb_image *img, unsigned granularity_bits);
/* A copy for a disk of new_size bytes (QEMU's truncation: new bits clear, bits past the end dropped). */
struct bitmap_bits *bits_resized (const struct bitmap_bits *bits, uint64_t new_size);
void bits_free (struct bitmap_bits *bits);
int bits_load (struct rb_image *img, const struct bitmap *b, struct bitmap_bits **out);
int bits_table_read (struct rb_image *img, const struct bitmap *b, uint64_t **table);
void bits_set (struct bitmap_bits *bits, uint64_t offset, uint64_t count);
void bits_merge (struct bitmap_bits *dst, const struct bitmap_bits *src);
void bits_clear (struct bitmap_bits *bits);
uint64_t bits_dirty_bytes (const struct bitmap_bits *bits, uint64_t disk_size);
typedef int (*bits_run_fn) (void *opaque, uint64_t offset, uint64_t length, bool dirty);
int bits_runs (const struct bitmap_bits *bits, uint64_t disk_size, uint64_t offset, uint64_t count,
               bits_run_fn fn, void *opaque);
/* Serialize bitmap cluster i (cluster_size bytes); returns false if all zero. */
bool bits_cluster (const struct bitmap_bits *bits, uint64_t i, uint64_t cluster_size, uint8_t *buf);
int bitmaps_track_publish (struct rb_image *img);   /* under io_lock exclusive or first write */
void bitmaps_track_free (struct rb_image *img);
/* bitmaps-store.c */
/* Store changed (and, if final, live) bitmaps into new clusters, write a new
 * directory, switch the header extension to it, then free what the old
 * directory used (and the entries in removed[0..nr_removed)).  Under
 * meta_lock with io_lock exclusive.  0 / -1 (the old bitmaps stay valid).
 */
int bitmaps_commit (struct rb_image *img, bool final, const struct bitmap *removed,
                    uint32_t nr_removed);
/* bitmaps-ext.c: point the header's bitmaps extension at a directory of nb
 * entries (adding the extension or, for nb 0, removing it), durably.
 */
int bitmaps_ext_switch (struct rb_image *img, uint32_t nb, uint64_t dir_size, uint64_t dir_offset);
/* bitmaps-resize.c: the bitmaps follow a resize (txn locks held; see there). */
struct bitmaps_resize;
int bitmaps_resize_check (struct rb_image *img, uint64_t new_size);
int bitmaps_resize_prepare (struct rb_image *img, uint64_t new_size, struct bitmaps_resize **out);
int bitmaps_resize_finish (struct rb_image *img, struct bitmaps_resize *rs, bool switched);

/* ---- lock.c ---- */
int image_lock_file (struct rb_image *img, bool writable);
int image_lock_reader_fd (struct rb_image *img, int fd);
int image_lock_upgrade (struct rb_image *img);
void image_lock_downgrade (struct rb_image *img);
void image_unlock_fd (int fd);

/* ---- the image ---- */
struct offset_set {         /* host offsets (not 0) with a count each: overlap.c */
  uint64_t *keys;
  uint32_t *counts;
  uint64_t size, used;
};

struct deferred_free {
  uint64_t host_offset;     /* cluster aligned */
  uint64_t nr;
};

struct rb_image {
  char *path;               /* as given */
  char *dir;                /* folder of path, for relative backing names */
  int fd;                   /* replaced by rb_make_writable under io_lock and meta_lock */
  bool readonly;            /* true -> false only in rb_make_writable (under io_lock and
                               meta_lock); read it unlocked with rb_is_readonly */
  const char *ro_reason;    /* why rb_make_writable must refuse, NULL if it may upgrade */
  bool no_lock;             /* opened with RB_OPEN_NO_LOCK */
  struct pagecache *pagecache;  /* RB_OPEN_CACHE_NONE, else NULL */
  dev_t dev;                /* of the file, to recognise it when reopening */
  ino_t ino;
  bool is_raw;              /* a raw backing file (only in a chain) */
  uint64_t file_size;       /* host file size (grows as we allocate) */

  /* header fields, host order */
  uint32_t version;
  uint64_t backing_file_offset;
  uint32_t backing_file_size;
  uint32_t cluster_bits;
  uint64_t size;            /* virtual size */
  uint32_t crypt_method;
  uint32_t l1_size;
  uint64_t l1_table_offset;
  uint64_t refcount_table_offset;
  uint32_t refcount_table_clusters;
  uint32_t nb_snapshots;
  uint64_t snapshots_offset;
  uint64_t incompatible_features;
  uint64_t compatible_features;
  uint64_t autoclear_features;
  uint32_t refcount_order;
  uint32_t header_length;
  uint32_t compression_type;

  char *backing_file;       /* name as stored, NULL if none */
  char *backing_format;     /* from the extension, NULL if none */
  struct extension *exts;
  size_t nr_exts;
  struct feature_name *features;
  size_t nr_features;
  struct snapshot *snapshots;
  uint64_t snapshots_size;  /* bytes of the snapshot table */
  uint8_t *bitmap_dir;      /* the bitmap directory as on disk (bitmaps.c) */
  uint64_t bitmap_dir_offset, bitmap_dir_size;
  struct bitmap *bitmaps;
  uint32_t nr_bitmaps;      /* 0: none, or invalidated (autoclear bit clear) */
  struct bitmap_track *bm_track;  /* live bitmaps' bits; atomic pointer (bitmaps-data.c) */

  /* derived geometry */
  uint64_t cluster_size;
  bool extended_l2;
  unsigned l2_entry_size;   /* 8 or 16 */
  uint64_t l2_entries;      /* per table */
  unsigned l2_bits;         /* log2 l2_entries */
  uint64_t subcluster_size;
  uint32_t refcount_bits;
  uint64_t refblock_entries;
  unsigned refblock_bits;
  unsigned csize_shift;     /* compressed descriptor */
  uint64_t csize_mask;
  uint64_t coffset_mask;

  /* Locks.  Order: io_lock before meta_lock before stats_lock.
   * io_lock (rwlock): every guest request holds it shared; applying deferred
   *   frees holds it exclusive, so no request reads or writes a cluster
   *   while it returns to the free pool (and anything else that changes
   *   which host cluster backs a guest cluster *without* a copy-on-write,
   *   or clears QCOW_OFLAG_COPIED, must hold it exclusive too).
   * meta_lock: L1, refcount table, both caches, allocator, deferred frees,
   *   header fields, file_size, cow_buf, the overlap sets.
   * Which lock protects which guest bytes:
   *   - bytes of a DATA unit (cluster, or subcluster with extended L2) of an
   *     owned cluster (QCOW_OFLAG_COPIED, refcount 1): no lock beyond
   *     io_lock shared.  In-place writers (write_locked's fast path) map
   *     under meta_lock, then write outside it.  So nobody may read-modify-
   *     write bytes of such a unit that its own request does not cover:
   *     write_cluster_slow writes exactly the request's bytes there.
   *   - every other byte (unallocated, zero, compressed or shared units, and
   *     clusters being allocated or copied): meta_lock, held across the data
   *     write and the L2 update, so no request maps the unit half-made.  The
   *     copy-on-write and zeroing of write_cluster_slow touch only these.
   */
  pthread_rwlock_t io_lock;
  pthread_mutex_t meta_lock;
  pthread_mutex_t stats_lock;
  uint64_t meta_gen;        /* under meta_lock: bumped by every change of L1, L2 tables,
                             * refcounts or the refcount table (check.c walks beside I/O) */

  uint64_t *l1;             /* l1_size entries, host order */
  uint8_t *l1_dirty;        /* one flag per L1 entry */
  bool l1_any_dirty;
  uint64_t *reftable;       /* refcount_table_clusters*cluster_size/8 entries */
  uint64_t reftable_entries;
  uint64_t *refblocks;      /* sorted refcount block offsets, for overlap checks */
  uint64_t nr_refblocks;
  struct offset_set l2_tables; /* active L2 tables, for overlap checks */
  struct cache *l2_cache;
  struct cache *rb_cache;
  bool data_unsynced;       /* data or metadata written since the last fdatasync */
  uint8_t *cow_buf;         /* one cluster for write_cluster_slow (meta_lock) */

  uint64_t free_hint;       /* cluster index where the free search starts */
  struct deferred_free *frees;
  size_t nr_frees, frees_alloc;
  bool first_write_done;
  bool corrupt;             /* found corrupt during this session: no more writes */
  bool prealloc_checked;    /* extents.c: metadata_prealloc decided (under meta_lock) */
  bool metadata_prealloc;   /* more clusters referenced than the file holds */

  /* backing chain */
  struct rb_image *backing;
  unsigned depth;           /* 0 for the top image */

  struct rb_stats stats;
};

/* file_size only grows while the image is served, under meta_lock; l2_decode
 * reads it on the read path without the lock, so both sides are atomic.
 */
static inline void
grow_file_size (struct rb_image *img, uint64_t end)
{
  if (end > img->file_size)
    __atomic_store_n (&img->file_size, end, __ATOMIC_RELAXED);
}

static inline uint64_t
file_size_now (struct rb_image *img)
{
  return __atomic_load_n (&img->file_size, __ATOMIC_RELAXED);
}

#define cluster_of(img, off) ((off) >> (img)->cluster_bits)
#define offset_in_cluster(img, off) ((off) & ((img)->cluster_size - 1))

#endif /* RBLOCK_INTERNAL_H */
