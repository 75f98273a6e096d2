/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * The nbdkit plugin: serves qcow2 images' guest view (file= or dir=); one rb_* call per callback.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "exports.h"
#include "rblock.h"
#include "rpc.h"
#include "util.h"

static char *filename;              /* file= */
static char *directory;             /* dir= */
static uint64_t metadata_cache;     /* metadata-cache= (or the old cache=SIZE) */
static bool cache_none;             /* cache=none */
static bool discard_ignore;         /* discard=ignore */
static enum { DZ_OFF, DZ_ON, DZ_UNMAP } detect_zeroes;  /* detect-zeroes= */
static bool readonly_param;         /* readonly=true */
static char *snapshot;              /* snapshot= */
static char *rpc_listen;            /* rpc= */
static bool rpc_writable;           /* rpc-writable=true */
static bool rpc_listen_any;         /* rpc-listen-any=true */
static char *rpc_token_file;        /* rpc-token-file= */

/* nbdkit 1.32 refuses reads and writes over 64 MiB (MAX_REQUEST_SIZE in its
 * server/internal.h) with ENOMEM: the maximum block size we advertise.
 */
#define MAX_REQUEST (64u << 20)

static struct rpc_server *rpc;      /* rpc= */

/* Report the engine's last error to nbdkit and the client. */
static void
report (void)
{
  nbdkit_error ("%s", rb_errmsg ());
  nbdkit_set_error (rb_errno () ? rb_errno () : EIO);
}

static void
rblock_unload (void)
{
  free (filename);
  free (directory);
  free (snapshot);
  free (rpc_listen);
  free (rpc_token_file);
}

static int
rblock_config (const char *key, const char *value)
{
  int r;

  if (strcmp (key, "file") == 0) {
    free (filename);
    filename = nbdkit_realpath (value);
    if (!filename)
      return -1;
  }
  else if (strcmp (key, "dir") == 0) {
    free (directory);
    directory = nbdkit_realpath (value);
    if (!directory)
      return -1;
  }
  else if (strcmp (key, "cache") == 0 &&
           (strcmp (value, "none") == 0 || strcmp (value, "default") == 0))
    cache_none = strcmp (value, "none") == 0;
  else if (strcmp (key, "cache") == 0 && !(value[0] >= '0' && value[0] <= '9')) {
    nbdkit_error ("cache=%s: expected default or none (the metadata cache size is "
                  "metadata-cache=SIZE)", value);
    return -1;
  }
  else if (strcmp (key, "metadata-cache") == 0 || strcmp (key, "cache") == 0) {
    int64_t sz = nbdkit_parse_size (value);
    if (sz < 0)
      return -1;
    if (key[0] == 'c')
      nbdkit_error ("warning: cache=%s: a size here is deprecated, use metadata-cache=%s "
                    "(cache= is the page cache mode, as in nbdkit's file plugin: "
                    "default or none)", value, value);
    metadata_cache = sz;
  }
  else if (strcmp (key, "discard") == 0) {
    /* As qemu-nbd --discard (off and on are its synonyms). */
    if (strcmp (value, "unmap") == 0 || strcmp (value, "on") == 0)
      discard_ignore = false;
    else if (strcmp (value, "ignore") == 0 || strcmp (value, "off") == 0)
      discard_ignore = true;
    else {
      nbdkit_error ("discard=%s: expected unmap or ignore", value);
      return -1;
    }
  }
  else if (strcmp (key, "detect-zeroes") == 0) {
    if (strcmp (value, "off") == 0)
      detect_zeroes = DZ_OFF;
    else if (strcmp (value, "on") == 0)
      detect_zeroes = DZ_ON;
    else if (strcmp (value, "unmap") == 0)
      detect_zeroes = DZ_UNMAP;
    else {
      nbdkit_error ("detect-zeroes=%s: expected off, on or unmap", value);
      return -1;
    }
  }
  else if (strcmp (key, "readonly") == 0) {
    if ((r = nbdkit_parse_bool (value)) == -1)
      return -1;
    readonly_param = r;
  }
  else if (strcmp (key, "snapshot") == 0) {
    free (snapshot);
    snapshot = strdup (value);
  }
  else if (strcmp (key, "rpc") == 0) {
    free (rpc_listen);
    rpc_listen = strdup (value);
  }
  else if (strcmp (key, "rpc-writable") == 0) {
    if ((r = nbdkit_parse_bool (value)) == -1)
      return -1;
    rpc_writable = r;
  }
  else if (strcmp (key, "rpc-listen-any") == 0) {
    if ((r = nbdkit_parse_bool (value)) == -1)
      return -1;
    rpc_listen_any = r;
  }
  else if (strcmp (key, "rpc-token-file") == 0) {
    free (rpc_token_file);
    rpc_token_file = nbdkit_realpath (value);
    if (!rpc_token_file)
      return -1;
  }
  else {
    nbdkit_error ("unknown parameter '%s' (see nbdkit rblock --help)", key);
    return -1;
  }
  return 0;
}

static int
rblock_config_complete (void)
{
  if (!filename == !directory) {
    nbdkit_error ("exactly one of file=DISK.qcow2 and dir=DIRECTORY is required");
    return -1;
  }
  if (directory && snapshot) {
    nbdkit_error ("snapshot= needs file=: with dir= each export is an image's active state");
    return -1;
  }
  if (detect_zeroes == DZ_UNMAP && discard_ignore) {
    nbdkit_error ("detect-zeroes=unmap needs discard=unmap (as qemu-nbd)");
    return -1;
  }
  return 0;
}

#define rblock_config_help \
  "file=<FILENAME>                The qcow2 image to serve (or dir=).\n" \
  "dir=<DIRECTORY>                Serve every image in the folder, by file name.\n" \
  "metadata-cache=<SIZE>          L2/refcount cache size (default 32M).\n" \
  "cache=default|none             none: keep guest data out of the page cache.\n" \
  "discard=unmap|ignore           Trim frees clusters (default) or does nothing.\n" \
  "detect-zeroes=off|on|unmap     All-zero writes become zero requests (unmap: may free).\n" \
  "readonly=true                  Open the image read-only (as nbdkit -r).\n" \
  "snapshot=<ID|NAME>             Serve an internal snapshot, read-only.\n" \
  "rpc=unix:PATH|tcp:HOST:PORT    Also serve JSON-RPC 2.0 on this socket (unix: mode 0600).\n" \
  "rpc-writable=true              Allow JSON-RPC write and flush.\n" \
  "rpc-listen-any=true            Allow rpc=tcp: on an address that is not loopback.\n" \
  "rpc-token-file=<FILENAME>      Every JSON-RPC request must carry this secret."

/* The engine's warnings (e.g. a bitmap it cannot keep, marked in use):
 * nbdkit 1.32 has no warning call, and nbdkit_debug is silent without -v.
 */
static void
warn (void *opaque, const char *msg)
{
  nbdkit_error ("warning: %s", msg);
}

/* nbdkit rblock --dump-plugin: what this build serves, one key=value a line
 * (as nbdkit's own plugins print theirs).
 */
static void
rblock_dump_plugin (void)
{
  printf ("rblock_qcow2_versions=2,3\n");
  printf ("rblock_zlib=yes\n");
  printf ("rblock_zstd=yes\n");
  printf ("rblock_extended_l2=yes\n");
  printf ("rblock_refcount_bits=1,2,4,8,16,32,64\n");
  printf ("rblock_backing=qcow2,raw\n");
  printf ("rblock_snapshot=read-only\n");
  printf ("rblock_bitmaps=%s\n", RB_BITMAPS_MODE);
  printf ("rblock_encryption=no\n");
  printf ("rblock_external_data_file=no\n");
  printf ("rblock_rpc=yes\n");
  printf ("rblock_cache_none=yes\n");
  printf ("rblock_discard=unmap,ignore\n");
  printf ("rblock_detect_zeroes=off,on,unmap\n");
  printf ("rblock_max_request=%u\n", MAX_REQUEST);
}

/* How images are opened (read-only at first: see rblock_get_ready). */
static struct rb_open_opts
open_opts (void)
{
  struct rb_open_opts o = { .cache_size = metadata_cache, .snapshot = snapshot,
                            .flags = RB_OPEN_RDONLY | (cache_none ? RB_OPEN_CACHE_NONE : 0) };
  return o;
}

/* dir=: the JSON-RPC request's export, held until rpc_release. */
static struct rb_image *
rpc_resolve (void *opaque, const char *name)
{
  struct rb_open_opts o = open_opts ();
  struct export *e = export_get (directory, name, &o);

  return e ? e->img : NULL;
}

static void
rpc_release (void *opaque, struct rb_image *img)
{
  export_put_image (img);
}

/* file=: open the image once, before serving, so bad images fail at
 * start-up.  Read-only: nbdkit does not tell a plugin about -r or read-only
 * filters until .open, so write access (QEMU's write lock, a dirty image's
 * repair) waits for the first connection that may write (rblock_open).
 * dir=: nothing is opened before a client names an image.
 */
static int
rblock_get_ready (void)
{
  struct rb_open_opts o = open_opts ();
  struct export *e = NULL;
  struct stat st;

  rb_set_warning_fn (warn, NULL);
  if (directory) {
    if (stat (directory, &st) == -1 || !S_ISDIR (st.st_mode)) {
      nbdkit_error ("dir=%s: not a directory", directory);
      return -1;
    }
  }
  else if (!(e = export_open_file (filename, &o)))
    return -1;
  if (rpc_listen) {
    /* RPC writes are served only while the image is writable.  dir=: each
     * request names its export, which is held (opened if no NBD client has
     * it) for the request.
     */
    struct rpc_config cfg = { .listen = rpc_listen,
                              .writable = rpc_writable && !readonly_param,
                              .listen_any = rpc_listen_any, .token_file = rpc_token_file };
    if (directory) {
      cfg.resolve_image = rpc_resolve;
      cfg.release_image = rpc_release;
    }
    rpc = rpc_server_new (directory ? NULL : e->img, &cfg);
    if (!rpc) {
      nbdkit_error ("rpc: %s", rb_errmsg ());   /* the message names the address or file */
      return -1;
    }
  }
  return 0;
}

/* Threads do not survive nbdkit's fork into the background: start the
 * JSON-RPC listener here.
 */
static int
rblock_after_fork (void)
{
  if (rpc && rpc_server_start (rpc) == -1) {
    nbdkit_error ("rpc=%s: %s", rpc_listen, rb_errmsg ());
    return -1;
  }
  return 0;
}

static void
rblock_cleanup (void)
{
  if (rpc) {
    rpc_server_free (rpc);
    rpc = NULL;
  }
  exports_close_all ();
}

/* dir=: the images in the folder (nbdinfo --list). */
static int
rblock_list_exports (int readonly, int is_tls, struct nbdkit_exports *list)
{
  if (!directory)
    return nbdkit_add_export (list, "", NULL);
  return exports_list (directory, list);
}

/* The per-connection handle: the export it uses (every connection of an
 * export shares its engine) and whether it may write.
 */
struct handle {
  struct export *exp;
  bool can_write;
};

#define IMG(hnd) (((struct handle *) (hnd))->exp->img)

/* The connection's export (dir=: the image its export name names, opened
 * if it is the first).  A connection that may write (readonly=0: no -r, no
 * read-only filter) gives the image write access the first time; if the
 * file cannot be written, it is served read-only (as nbdkit's file plugin
 * does).  Raw images of dir= are always read-only.
 */
static void *
rblock_open (int readonly)
{
  struct rb_open_opts o = open_opts ();
  struct handle *h = calloc (1, sizeof *h);

  if (!h) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  h->exp = directory ? export_get (directory, nbdkit_export_name (), &o)
                     : export_file ();
  if (!h->exp) {
    nbdkit_error ("%s", rb_errmsg ());
    free (h);
    return NULL;
  }
  if (!readonly && !readonly_param && !h->exp->raw) {
    if (rb_make_writable (h->exp->img) == 0)
      h->can_write = true;
    else if (rb_errno () == EACCES || rb_errno () == EPERM || rb_errno () == EROFS)
      nbdkit_debug ("serving read-only: %s", rb_errmsg ());
    else {
      nbdkit_error ("%s", rb_errmsg ());
      export_put (h->exp);
      free (h);
      return NULL;
    }
  }
  return h;
}

/* The last connection of a dir= export closes its image. */
static void
rblock_close (void *handle)
{
  struct handle *h = handle;

  export_put (h->exp);
  free (h);
}

static int64_t
rblock_get_size (void *handle)
{
  return rb_get_size (IMG (handle));
}

static int
rblock_block_size (void *handle, uint32_t *minimum, uint32_t *preferred, uint32_t *maximum)
{
  uint32_t cs = rb_get_cluster_size (IMG (handle));

  *minimum = 1;
  *preferred = cs < 4096 ? 4096 : cs > (32u << 20) ? (32u << 20) : cs;
  *maximum = MAX_REQUEST;
  return 0;
}

/* "qcow2 v3 (compat 1.1), virtual size 1073741824 bytes, cluster size 65536;
 * backing: /a/base.qcow2 (qcow2), /a/base.raw (raw)": the description nbdinfo
 * shows (the backing files as opened, top first).
 * Returns an interned string, NULL (no description) on error.
 */
static const char *
rblock_export_description (void *handle)
{
  CLEANUP_FREE struct rb_info *info = malloc (sizeof *info);
  char buf[4096];              /* NBD_MAX_STRING */
  size_t len;
  unsigned i;

  if (((struct handle *) handle)->exp->raw) {
    snprintf (buf, sizeof buf, "raw (read-only), size %" PRIu64 " bytes",
              rb_get_size (IMG (handle)));
    return nbdkit_strdup_intern (buf);
  }
  if (!info || rb_get_info (IMG (handle), info) == -1)
    return NULL;
  len = snprintf (buf, sizeof buf, "qcow2 v%u (compat %s), virtual size %" PRIu64
                  " bytes, cluster size %u%s", info->version,
                  info->version >= 3 ? "1.1" : "0.10", info->virtual_size,
                  info->cluster_size, info->extended_l2 ? ", extended L2" : "");
  if (snapshot && len < sizeof buf)
    len += snprintf (buf + len, sizeof buf - len, ", internal snapshot %s", snapshot);
  for (i = 0; i < info->chain_depth && len < sizeof buf; i++)
    len += snprintf (buf + len, sizeof buf - len, "%s%s (%s)", i ? ", " : "; backing: ",
                     info->chain[i].path, info->chain[i].format);
  return nbdkit_strdup_intern (buf);
}

static int
rblock_can_write (void *handle)
{
  struct handle *h = handle;

  return h->can_write;
}

static int
rblock_can_true (void *handle)
{
  return 1;
}

static int
rblock_can_fua (void *handle)
{
  return NBDKIT_FUA_NATIVE;
}

static int
rblock_can_cache (void *handle)
{
  return NBDKIT_CACHE_EMULATE;
}

/* Flush is global and the cache is shared, so every connection sees every
 * other connection's acknowledged writes: safe to advertise multi-conn.
 */
static int
rblock_can_multi_conn (void *handle)
{
  return 1;
}

static int
rblock_pread (void *handle, void *buf, uint32_t count, uint64_t offset, uint32_t flags)
{
  if (rb_pread (IMG (handle), buf, count, offset) == -1) {
    report ();
    return -1;
  }
  return 0;
}

/* nbdkit's request flags as the engine's; with discard=ignore a zero request
 * never frees clusters (as QEMU's discard=ignore).
 */
static unsigned
engine_flags (uint32_t flags)
{
  return ((flags & NBDKIT_FLAG_FUA) ? RB_FUA : 0) |
    ((flags & NBDKIT_FLAG_MAY_TRIM) && !discard_ignore ? RB_MAY_TRIM : 0) |
    ((flags & NBDKIT_FLAG_FAST_ZERO) ? RB_FAST_ZERO : 0);
}

/* With detect-zeroes=on|unmap an all-zero write is a zero request, which
 * may free clusters with unmap (as qemu-nbd --detect-zeroes).
 */
static int
rblock_pwrite (void *handle, const void *buf, uint32_t count, uint64_t offset, uint32_t flags)
{
  int r;

  if (detect_zeroes != DZ_OFF && is_zero (buf, count))
    r = rb_zero (IMG (handle), count, offset, engine_flags (flags) |
                 (detect_zeroes == DZ_UNMAP ? RB_MAY_TRIM : 0));
  else
    r = rb_pwrite (IMG (handle), buf, count, offset, engine_flags (flags));
  if (r == -1) {
    report ();
    return -1;
  }
  return 0;
}

static int
rblock_flush (void *handle, uint32_t flags)
{
  if (rb_flush (IMG (handle)) == -1) {
    report ();
    return -1;
  }
  return 0;
}

/* Trim frees clusters; with discard=ignore it is accepted and does nothing
 * (trim is advisory), as qemu-nbd --discard=ignore.
 */
static int
rblock_trim (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  if (discard_ignore)
    return 0;
  if (rb_trim (IMG (handle), count, offset, engine_flags (flags)) == -1) {
    report ();
    return -1;
  }
  return 0;
}

static int
rblock_zero (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  if (rb_zero (IMG (handle), count, offset, engine_flags (flags)) == -1) {
    if (rb_errno () == ENOTSUP && (flags & NBDKIT_FLAG_FAST_ZERO)) {
      nbdkit_set_error (ENOTSUP);     /* fast zero refused: not an error to log */
      return -1;
    }
    report ();
    return -1;
  }
  return 0;
}

struct extent_ctx {
  struct nbdkit_extents *extents;
  bool req_one;
};

static int
add_extent (void *opaque, uint64_t offset, uint64_t length, uint32_t type)
{
  struct extent_ctx *x = opaque;
  uint32_t t = ((type & RB_EXTENT_HOLE) ? NBDKIT_EXTENT_HOLE : 0) |
    ((type & RB_EXTENT_ZERO) ? NBDKIT_EXTENT_ZERO : 0);

  if (nbdkit_add_extent (x->extents, offset, length, t) == -1)
    return -1;
  if (x->req_one) {
    errno = 0;                          /* one is enough: stop the walk */
    return -1;
  }
  return 0;
}

static int
rblock_extents (void *handle, uint32_t count, uint64_t offset, uint32_t flags,
                struct nbdkit_extents *extents)
{
  struct extent_ctx x = { extents, (flags & NBDKIT_FLAG_REQ_ONE) != 0 };

  errno = 0;
  if (rb_extents (IMG (handle), count, offset, add_extent, &x) == -1) {
    if (x.req_one && errno == 0)
      return 0;
    report ();
    return -1;
  }
  return 0;
}

static struct nbdkit_plugin plugin = {
  .name              = "rblock",
  .longname          = "rblock qcow2 plugin",
  .version           = PACKAGE_VERSION,
  .description       = "Serve the guest view of a qcow2 image, read/write.",
  .unload            = rblock_unload,
  .config            = rblock_config,
  .config_complete   = rblock_config_complete,
  .config_help       = rblock_config_help,
  .magic_config_key  = "file",
  .dump_plugin       = rblock_dump_plugin,
  .get_ready         = rblock_get_ready,
  .list_exports      = rblock_list_exports,
  .after_fork        = rblock_after_fork,
  .cleanup           = rblock_cleanup,
  .open              = rblock_open,
  .close             = rblock_close,
  .get_size          = rblock_get_size,
  .block_size        = rblock_block_size,
  .export_description = rblock_export_description,
  .can_write         = rblock_can_write,
  .can_flush         = rblock_can_true,
  .can_trim          = rblock_can_true,
  .can_zero          = rblock_can_true,
  .can_fast_zero     = rblock_can_true,
  .can_extents       = rblock_can_true,
  .can_fua           = rblock_can_fua,
  .can_multi_conn    = rblock_can_multi_conn,
  .can_cache         = rblock_can_cache,
  .pread             = rblock_pread,
  .pwrite            = rblock_pwrite,
  .flush             = rblock_flush,
  .trim              = rblock_trim,
  .zero              = rblock_zero,
  .extents           = rblock_extents,
  .errno_is_preserved = 0,
};

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL
NBDKIT_REGISTER_PLUGIN (plugin)
