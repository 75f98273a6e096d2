/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * The public API of the qcow2 engine: everything plugin/, utils/ and rpc/ may call.
 */
#ifndef RBLOCK_H
#define RBLOCK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define RB_VERSION_STRING PACKAGE_VERSION

struct rb_image;

/* ---- errors ----
 * Every function returning int returns 0 (or a count) on success, -1 on error.
 * On error errno is set and a one-line message is recorded for this thread.
 * Corrupt metadata: EIO, message starts "corrupt image:".
 * Unsupported feature: ENOTSUP, message names the feature.
 */
const char *rb_errmsg (void);      /* last error message of this thread ("" if none) */
int rb_errno (void);               /* errno that went with it */
/* Record an error the same way (for the layers above: RPC, utilities).  Returns -1. */
int rb_error (int err, const char *fmt, ...) __attribute__((format (printf, 2, 3)));

/* What persistent dirty bitmaps get from writes (the plugin's --dump-plugin
 * prints it as rblock_bitmaps=): "maintained" = writes set their bits and
 * close stores them (bitmaps.c); "in-use" would be: kept, marked in use and
 * not updated.
 */
#define RB_BITMAPS_MODE "maintained"

/* ---- open / close ---- */
#define RB_OPEN_RDONLY    0x1      /* never write to the image */
#define RB_OPEN_NO_LOCK   0x2      /* do not take QEMU-compatible OFD locks */
#define RB_OPEN_NO_BACKING 0x4     /* do not open the backing chain (reads of
                                      unallocated clusters see zeros) */
#define RB_OPEN_RAW       0x8      /* a raw file (never probed): reads and extents only */
#define RB_OPEN_CACHE_NONE 0x10    /* keep guest data out of the host page cache
                                      (as nbdkit's file plugin cache=none; not O_DIRECT) */

struct rb_open_opts {
  unsigned flags;                  /* RB_OPEN_* */
  uint64_t cache_size;             /* bytes of L2/refcount cache; 0 = default (32 MiB) */
  unsigned max_chain_depth;        /* 0 = default (32) */
  const char *snapshot;            /* internal snapshot (id or name) to serve, read-only; NULL = active */
};

/* Open a qcow2 image (and its backing chain).  opts may be NULL.
 * Returns NULL on error (rb_errmsg says why).  A raw file is refused with
 * ENOTSUP ("not a qcow2 image").
 */
struct rb_image *rb_open (const char *path, const struct rb_open_opts *opts);

/* Is path a qcow2 image (by its magic)?  1 yes, 0 no (raw, for rblock),
 * -1 if it cannot be read.
 */
int rb_probe_qcow2 (const char *path);

/* Write back dirty metadata, release locks, close the chain.  Returns -1 if
 * the final write-back failed (the image is still closed).
 */
int rb_close (struct rb_image *img);

/* ---- geometry ---- */
uint64_t rb_get_size (const struct rb_image *img);      /* virtual size, bytes */
uint32_t rb_get_cluster_size (const struct rb_image *img);
bool rb_is_readonly (const struct rb_image *img);

/* Give an image opened with RB_OPEN_RDONLY write access, as if opened
 * writable: reopen the file O_RDWR, take QEMU's write lock, repair a dirty
 * image.  Safe while other threads read (they wait while it runs).  Returns
 * 0 (also if already writable) or -1: EACCES, EPERM or EROFS when the file
 * or the image cannot be written (internal snapshot, corrupt bit, backing
 * file: the caller may serve read-only), EAGAIN when another process holds
 * a conflicting lock, others when a dirty image cannot be repaired.  The
 * image stays read-only after an error.
 */
int rb_make_writable (struct rb_image *img);

/* ---- guest I/O (thread-safe; any number of threads) ---- */
#define RB_FUA        0x1          /* durable before return */
#define RB_MAY_TRIM   0x2          /* zero: clusters may be deallocated */
#define RB_FAST_ZERO  0x4          /* zero: fail with ENOTSUP if it would be slow */

int rb_pread (struct rb_image *img, void *buf, uint64_t count, uint64_t offset);
int rb_pwrite (struct rb_image *img, const void *buf, uint64_t count,
               uint64_t offset, unsigned flags);
int rb_zero (struct rb_image *img, uint64_t count, uint64_t offset,
             unsigned flags);
int rb_trim (struct rb_image *img, uint64_t count, uint64_t offset,
             unsigned flags);
int rb_flush (struct rb_image *img);

/* ---- extents / mapping ---- */
#define RB_EXTENT_HOLE  0x1        /* as NBD_STATE_HOLE: not allocated anywhere in the chain */
#define RB_EXTENT_ZERO  0x2        /* as NBD_STATE_ZERO: reads as zeros */

/* Called for consecutive extents covering [offset, offset+count) (the last
 * may end at the image end).  Return 0 to go on, -1 to stop (rb_extents then
 * returns -1 with errno as left by the callback).
 */
typedef int (*rb_extent_fn) (void *opaque, uint64_t offset, uint64_t length,
                             uint32_t type);
int rb_extents (struct rb_image *img, uint64_t count, uint64_t offset,
                rb_extent_fn fn, void *opaque);

/* qemu-img map's view of guest bytes: which layer of the chain decides what
 * they read as, and how.  Called for consecutive entries covering the range
 * (not merged: a caller merges as qemu-img does).
 */
struct rb_map_entry {
  uint64_t offset, length;         /* guest bytes */
  unsigned depth;                  /* deciding layer: 0 this image, 1 its backing file, ... */
  bool present;                    /* allocated in that layer (false: unallocated down to
                                      the last image, or past a shorter backing file's end) */
  bool data;                       /* as QEMU's BDRV_BLOCK_DATA */
  bool zero;                       /* reads as zeros (may be set with data: a host hole) */
  bool compressed;
  bool has_host_offset;
  uint64_t host_offset;            /* byte in the file of the layer at depth */
};
typedef int (*rb_map_fn) (void *opaque, const struct rb_map_entry *e);
int rb_map (struct rb_image *img, uint64_t count, uint64_t offset, rb_map_fn fn, void *opaque);

enum rb_cluster_type {
  RB_CLUSTER_UNALLOCATED = 0,      /* reads from backing (or zeros) */
  RB_CLUSTER_DATA,                 /* normal allocated cluster */
  RB_CLUSTER_ZERO,                 /* zero flag (v3) or zero subcluster */
  RB_CLUSTER_COMPRESSED,
  RB_CLUSTER_BACKING,              /* unallocated here, data in the chain below */
};
const char *rb_cluster_type_name (enum rb_cluster_type t);

/* How one guest offset is mapped: the seed's worked example as data. */
struct rb_mapping {
  uint64_t guest_offset;
  uint64_t guest_cluster;
  uint64_t l1_index;
  uint64_t l2_index;
  uint64_t l2_table_offset;        /* 0 if no L2 table */
  uint64_t l2_entry;               /* raw entry (first 64 bits) */
  uint64_t l2_bitmap;              /* extended L2 bitmap, 0 otherwise */
  int subcluster;                  /* index within cluster, -1 if not extended L2 */
  enum rb_cluster_type type;
  uint64_t host_cluster_offset;    /* 0 unless DATA/COMPRESSED (compressed: start of the data) */
  uint64_t host_offset;            /* host byte for guest_offset (DATA only), else 0 */
  uint64_t compressed_size;        /* COMPRESSED only */
  uint64_t refcount_table_index;   /* for host_cluster_offset */
  uint64_t refcount_block_index;
  uint64_t refcount;               /* of the host cluster, 0 if none */
  unsigned backing_depth;          /* BACKING: 1 = direct backing file, ... */
};
int rb_lookup (struct rb_image *img, uint64_t guest_offset, struct rb_mapping *m);

/* ---- information ---- */
#define RB_MAX_CHAIN 64

struct rb_snapshot_info {
  char id[64];
  char name[256];
  uint64_t vm_state_size;
  uint64_t disk_size;              /* 0 if not recorded */
  uint64_t date_sec;
  uint32_t date_nsec;
  uint64_t vm_clock_nsec;
  uint64_t l1_table_offset;
  uint32_t l1_size;
  uint64_t icount;                 /* UINT64_MAX if not recorded */
};

struct rb_info {
  uint32_t version;                /* 2 or 3 */
  uint64_t virtual_size;
  uint32_t cluster_bits;
  uint32_t cluster_size;
  uint32_t refcount_bits;
  uint32_t header_length;
  uint64_t l1_table_offset;
  uint32_t l1_size;
  uint64_t refcount_table_offset;
  uint32_t refcount_table_clusters;
  uint32_t nb_snapshots;
  uint64_t snapshots_offset;
  uint64_t incompatible_features;
  uint64_t compatible_features;
  uint64_t autoclear_features;
  uint32_t compression_type;       /* 0 zlib (deflate), 1 zstd */
  bool extended_l2;
  bool lazy_refcounts;
  bool dirty;
  bool corrupt;
  uint64_t file_size;              /* host file size, bytes */
  char backing_file[1024];         /* as stored, "" if none */
  char backing_format[64];         /* "" if not recorded */
  unsigned chain_depth;            /* number of backing images opened below */
  struct {
    char path[4096];               /* resolved path */
    char format[16];               /* "qcow2" or "raw" */
    uint64_t virtual_size;
  } chain[RB_MAX_CHAIN];
  unsigned nr_extensions;
  struct {
    uint32_t type;
    uint32_t length;
  } extensions[32];
  unsigned nr_snapshots;           /* filled up to 64 */
  struct rb_snapshot_info snapshots[64];
};
int rb_get_info (struct rb_image *img, struct rb_info *info);

/* Name of feature bit `bit` of group 0 (incompatible), 1 (compatible), 2
 * (autoclear); from the image's feature table, or the known names.
 * Returns NULL if unknown.
 */
const char *rb_feature_name (struct rb_image *img, int group, int bit);

/* ---- internal snapshots and resize (lib/snapshot.c, lib/resize.c) ----
 * Each holds off every guest request of img while it runs and is crash-safe:
 * killed at any point, the image is the old one or the new one (plus leaked
 * clusters at worst).  Snapshots are found as qemu-img does: by id, then name.
 */
/* Every snapshot into *list (malloc'd; the caller frees it).  Returns the count or -1. */
int rb_snapshot_list (struct rb_image *img, struct rb_snapshot_info **list);
/* Take snapshot `name` of the active state (a new name: EEXIST otherwise). */
int rb_snapshot_create (struct rb_image *img, const char *name);
/* Make the snapshot the active state (its disk size too); the snapshot stays. */
int rb_snapshot_apply (struct rb_image *img, const char *id_or_name);
int rb_snapshot_delete (struct rb_image *img, const char *id_or_name);

#define RB_RESIZE_SHRINK 0x1       /* allow a smaller size (data past it is dropped) */
/* Change the virtual size (a multiple of 512), as qemu-img resize. */
int rb_resize (struct rb_image *img, uint64_t new_size, unsigned flags);

/* ---- commit and rebase (lib/chain.c, lib/rebase.c) ---- */
/* Progress: bytes done out of total (called from the calling thread). */
typedef void (*rb_progress_fn) (void *opaque, uint64_t done, uint64_t total);

#define RB_COMMIT_KEEP 0x1         /* leave TOP as it is (qemu-img commit -d) */
/* Write what top holds above base (a file in top's backing chain; NULL: its
 * backing file) into base, qcow2 or raw, growing a smaller base; then empty
 * top unless RB_COMMIT_KEEP (implied when base is deeper, as qemu-img -b).
 */
int rb_commit (struct rb_image *top, const char *base, unsigned flags,
               rb_progress_fn fn, void *opaque);

#define RB_REBASE_UNSAFE 0x1       /* only change the name and format (qemu-img rebase -u) */
/* Make `backing` img's backing file (stored as given; a relative name is
 * relative to img's folder; NULL or "" = none) with format "raw" or "qcow2"
 * (NULL: probed, then recorded).  Safe mode first copies into img every range
 * the old and the new backing file show differently, so the guest view stays.
 */
int rb_rebase (struct rb_image *img, const char *backing, const char *format, unsigned flags,
               rb_progress_fn fn, void *opaque);

/* ---- check ---- */
struct rb_check_result {
  uint64_t corruptions;
  uint64_t leaks;
  uint64_t check_errors;
  uint64_t allocated_clusters;     /* data clusters referenced by the active L1 */
  uint64_t total_clusters;         /* virtual size in clusters */
  uint64_t image_end_offset;
  uint64_t leaks_fixed;
  uint64_t corruptions_fixed;
  uint64_t leaks_past_eof;         /* refcounts set past the end of the file (included in leaks) */
  uint64_t fragmented_clusters;    /* active data clusters not right after the previous one
                                      of their L2 table, and compressed ones (as QEMU) */
  uint64_t compressed_clusters;
};
#define RB_CHECK_REPAIR_LEAKS 0x1
#define RB_CHECK_REPAIR_ALL   0x2   /* also raise refcounts that are too low */
#define RB_CHECK_EXCLUSIVE    0x4   /* hold the image for the walk (guest I/O waits) */
int rb_check (struct rb_image *img, struct rb_check_result *res, unsigned flags);

/* ---- statistics ---- */
struct rb_stats {
  uint64_t reads, read_bytes;
  uint64_t writes, write_bytes;
  uint64_t zeros, zero_bytes;
  uint64_t trims, trim_bytes;
  uint64_t flushes;
  uint64_t extents_calls;
  uint64_t clusters_allocated;
  uint64_t cache_hits, cache_misses;
};
void rb_get_stats (struct rb_image *img, struct rb_stats *st);

/* ---- persistent dirty bitmaps (lib/bitmaps*.c; qcow2.txt "Bitmaps") ----
 * Opened for writing, an image keeps its enabled bitmaps up to date: at the
 * first write they are loaded and marked in use on disk, every write, zero
 * and trim sets their bits, and rb_close stores them with in_use cleared.
 * Disabled bitmaps are left alone.  A bitmap rblock cannot keep (unknown
 * type, flags or extra data...) is marked in use with a warning instead.
 * The operations below are crash-safe: the old or the new state survives.
 */
#define RB_BITMAP_IN_USE  0x1      /* on-disk flags */
#define RB_BITMAP_AUTO    0x2      /* enabled: records writes */
#define RB_BITMAP_NAME_MAX 1023

struct rb_bitmap_info {
  char name[RB_BITMAP_NAME_MAX + 1];
  uint64_t granularity;            /* bytes per bit */
  uint32_t flags;                  /* as on disk: RB_BITMAP_* and unknown bits */
  unsigned type;                   /* 1: dirty tracking */
  bool supported;                  /* rblock can read and keep it */
  bool live;                       /* kept up to date by this open image (in use on disk meanwhile) */
  bool have_count;                 /* dirty_bytes known: live, or counted (supported, not in use) */
  uint64_t dirty_bytes;            /* guest bytes marked dirty */
};
/* The image's bitmaps in directory order: *list is malloc'd (free it), *nr
 * entries.  With count, the dirty bytes of each stored bitmap are counted
 * (its data read: a bad table entry is then an error); without, only those
 * of live bitmaps (nothing read, as qemu-img info).  Returns 0 / -1.
 */
int rb_bitmap_list (struct rb_image *img, bool count, struct rb_bitmap_info **list, size_t *nr);
/* Runs of bitmap `name` over [offset, offset+count) (clipped to the disk):
 * fn (opaque, offset, length, dirty) in order; the live state if the
 * bitmap is live.  A bitmap in use (and not live) is EBUSY, an unsupported
 * one ENOTSUP, a missing one ENOENT.  Returns 0 / -1.
 */
typedef int (*rb_dirty_fn) (void *opaque, uint64_t offset, uint64_t length, bool dirty);
int rb_bitmap_extents (struct rb_image *img, const char *name, uint64_t offset, uint64_t count,
                       rb_dirty_fn fn, void *opaque);
/* Add an empty bitmap (granularity 0: the cluster size within 4 KiB..64 KiB,
 * as QEMU); enabled unless `disabled`.
 */
int rb_bitmap_add (struct rb_image *img, const char *name, uint64_t granularity, bool disabled);
int rb_bitmap_remove (struct rb_image *img, const char *name);
int rb_bitmap_clear (struct rb_image *img, const char *name);
int rb_bitmap_enable (struct rb_image *img, const char *name, bool enabled);
/* Set in `name` every range dirty in src_name of src (src may be img). */
int rb_bitmap_merge (struct rb_image *img, const char *name,
                     struct rb_image *src, const char *src_name);

/* ---- warnings ----
 * lib/ never prints: one-line warnings (e.g. a bitmap marked in use that
 * rblock cannot keep) go to this function (process-wide; NULL drops them).
 */
typedef void (*rb_warning_fn) (void *opaque, const char *message);
void rb_set_warning_fn (rb_warning_fn fn, void *opaque);

/* ---- create ---- */
enum rb_preallocation {            /* qemu-img's preallocation= */
  RB_PREALLOC_OFF = 0,             /* nothing allocated */
  RB_PREALLOC_METADATA,            /* L2 tables and data clusters allocated, not written */
  RB_PREALLOC_FALLOC,              /* metadata, and the file's space reserved (fallocate) */
  RB_PREALLOC_FULL,                /* metadata, and zeros written over the data */
};
struct rb_create_opts {
  uint64_t size;                   /* virtual size, bytes */
  uint32_t cluster_size;           /* 0 = 65536 */
  uint32_t version;                /* 2 (compat 0.10) or 3 (1.1); 0 = 3 */
  uint32_t refcount_bits;          /* 0 = 16 */
  uint32_t compression_type;       /* 0 zlib, 1 zstd */
  bool extended_l2;
  const char *backing_file;        /* stored as given; NULL for none */
  const char *backing_format;      /* "raw"/"qcow2"; NULL = not recorded */
  bool lazy_refcounts;             /* compatible feature bit 0 (compat 1.1 only) */
  enum rb_preallocation preallocation;   /* rb_create only (the writer refuses it) */
};
/* Create an empty image at path (O_EXCL unless overwrite).  Returns 0 / -1. */
int rb_create (const char *path, const struct rb_create_opts *opts, bool overwrite);

/* ---- streaming writer: a whole image in one sequential pass (rb-convert, rb-delta) ----
 * rb_writer_new lays out header, refcount table and blocks (sized for at most
 * max_data_clusters data clusters) and L1; rb_writer_put stores guest clusters
 * in increasing order; rb_writer_finish writes the L2 tables after the data,
 * then L1, refcounts and the header, and syncs.  rb_writer_abort removes the
 * file.  Both end the writer.
 */
struct rb_writer;
struct rb_writer *rb_writer_new (const char *path, const struct rb_create_opts *opts,
                                 bool overwrite, uint64_t max_data_clusters, bool compress);
/* Without extended L2: alloc_mask 1 = data (cluster_size bytes), zero_mask 1
 * = zero cluster, both 0 = unallocated.  With extended L2: one bit per
 * subcluster; only allocated subclusters of data are written.
 */
int rb_writer_put (struct rb_writer *w, uint64_t guest_cluster, const void *data,
                   uint32_t alloc_mask, uint32_t zero_mask);
/* nr consecutive data clusters with one write (no compression, no extended L2). */
int rb_writer_put_run (struct rb_writer *w, uint64_t guest_cluster, const void *data, uint64_t nr);
/* The same, the len bytes (nr = len rounded up to clusters; the rest of the
 * last cluster reads as zeros) copied in the kernel from fd, a regular file,
 * at src_offset with copy_file_range: the data does not pass through user
 * space, and a file system that shares extents may not copy it at all.
 * -1 with ENOTSUP and nothing stored when the kernel cannot copy between
 * these files (another file system, a block device...): use rb_writer_put_run.
 */
int rb_writer_copy_run (struct rb_writer *w, uint64_t guest_cluster, int fd, uint64_t src_offset,
                        uint64_t len);
/* rb_writer_copy_run in two steps, for a caller that copies from several
 * threads: rb_writer_map_run chooses and maps the host clusters of the run
 * (in guest order, as rb_writer_copy_run; their host offset in *host) and
 * rb_writer_copy_at copies the bytes there, from any thread, alongside the
 * writer's other calls.  The caller waits for every copy to end before
 * rb_writer_finish and aborts the writer if one failed (a refusal, ENOTSUP,
 * is then a failure too: try rb_writer_copy_run first).  0 / -1.
 */
int rb_writer_map_run (struct rb_writer *w, uint64_t guest_cluster, uint64_t len, uint64_t *host);
int rb_writer_copy_at (struct rb_writer *w, uint64_t host, int fd, uint64_t src_offset,
                       uint64_t len);
/* Writing a new file front to back (rb_writer does; rb-convert's raw output
 * too): rb_reserve_pays tells whether fd's file system takes new data faster
 * into space reserved first (ext4); then rb_reserve reserves [offset,
 * offset+count) just before it is written (fallocate, the size kept).  A hint
 * that never fails: nothing is asked while *no is true (start it as
 * !rb_reserve_pays (fd)), a file system without fallocate sets it, and any
 * other refusal is left for the write to meet.
 */
bool rb_reserve_pays (int fd);
void rb_reserve (int fd, uint64_t offset, uint64_t count, bool *no);
/* Do not fsync in rb_writer_finish (faster; a power failure may then leave
 * an incomplete file).
 */
void rb_writer_no_sync (struct rb_writer *w);
/* The size of the file a writer made with (opts, max_data_clusters) leaves
 * after nr_data uncompressed data clusters in nr_l2 L2 tables (rb-measure).
 * Creates nothing.  0 / -1 (options refused).
 */
int rb_writer_measure (const struct rb_create_opts *opts, uint64_t max_data_clusters,
                       uint64_t nr_data, uint64_t nr_l2, uint64_t *file_size);
int rb_writer_finish (struct rb_writer *w);
void rb_writer_abort (struct rb_writer *w);

#ifdef __cplusplus
}
#endif

#endif /* RBLOCK_H */
