/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * The JSON-RPC methods over the engine; the table drives dispatch, list_methods and the man page.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rpc-internal.h"

static json_object *fail (struct rpc_error *err, int code, const char *fmt, ...)
  __attribute__((format (printf, 3, 4)));

/* Record a method error; returns NULL. */
static json_object *
fail (struct rpc_error *err, int code, const char *fmt, ...)
{
  va_list ap;

  err->code = code;
  va_start (ap, fmt);
  vsnprintf (err->message, sizeof err->message, fmt, ap);
  va_end (ap);
  return NULL;
}

/* The engine's last error as -32000 with data.errno. */
static json_object *
engine_error (struct rpc_error *err)
{
  err->code = RPC_ENGINE_ERROR;
  snprintf (err->message, sizeof err->message, "%s", rb_errmsg ());
  err->data = json_object_new_object ();
  if (err->data)
    json_object_object_add (err->data, "errno", json_object_new_int (rb_errno ()));
  return NULL;
}

/* json-c's adds abort on a NULL container, and a NULL value is json-c out
 * of memory: add, add_opt (v NULL is a JSON null) and push record that in
 * err->oom instead, and done turns it into an error, never a partial reply.
 */
static void
add_opt (struct rpc_error *err, json_object *o, const char *key, json_object *v)
{
  if (!o || json_object_object_add (o, key, v) != 0) {
    err->oom = true;
    json_object_put (v);
  }
}

static void
add (struct rpc_error *err, json_object *o, const char *key, json_object *v)
{
  if (!v)
    err->oom = true;
  add_opt (err, o, key, v);
}

static void
push (struct rpc_error *err, json_object *a, json_object *v)
{
  if (!v || !a || json_object_array_add (a, v) != 0) {
    err->oom = true;
    json_object_put (v);
  }
}

/* The method's result r, or NULL (an internal error) if anything in it failed. */
static json_object *
done (struct rpc_error *err, json_object *r)
{
  if (r && !err->oom)
    return r;
  json_object_put (r);
  return fail (err, RPC_INTERNAL_ERROR, "%s", "Internal error: out of memory");
}

/* An unsigned integer parameter: required or with a default.  json-c would
 * convert strings and doubles and saturate; check the type and the range.
 */
static int
get_u64 (json_object *params, const char *name, bool required, uint64_t dflt,
         uint64_t *out, struct rpc_error *err)
{
  json_object *v;
  int64_t i;

  if (!params || !json_object_object_get_ex (params, name, &v)) {
    if (required) {
      fail (err, RPC_INVALID_PARAMS, "Invalid params: missing \"%s\"", name);
      return -1;
    }
    *out = dflt;
    return 0;
  }
  if (!json_object_is_type (v, json_type_int)) {
    fail (err, RPC_INVALID_PARAMS, "Invalid params: \"%s\" must be an integer", name);
    return -1;
  }
  errno = 0;
  i = json_object_get_int64 (v);
  if (i < 0 || (i == INT64_MAX && errno == ERANGE) ||
      (i == INT64_MAX && json_object_get_uint64 (v) != (uint64_t) INT64_MAX)) {
    fail (err, RPC_INVALID_PARAMS, "Invalid params: \"%s\" must be a non-negative integer in range", name);
    return -1;
  }
  *out = (uint64_t) i;
  return 0;
}

/* Only the named parameters are accepted. */
static int
only_params (json_object *params, const char *const *names, struct rpc_error *err)
{
  if (!params)
    return 0;
  json_object_object_foreach (params, key, val) {
    const char *const *n;
    (void) val;
    for (n = names; *n; n++)
      if (strcmp (*n, key) == 0)
        break;
    if (!*n) {
      fail (err, RPC_INVALID_PARAMS, "Invalid params: unknown parameter \"%s\"", key);
      return -1;
    }
  }
  return 0;
}

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static char *
base64_encode (const uint8_t *in, size_t n)
{
  char *out = malloc ((n + 2) / 3 * 4 + 1), *p = out;
  size_t i;

  if (!out)
    return NULL;
  for (i = 0; i + 2 < n; i += 3) {
    *p++ = b64[in[i] >> 2];
    *p++ = b64[((in[i] & 3) << 4) | (in[i + 1] >> 4)];
    *p++ = b64[((in[i + 1] & 15) << 2) | (in[i + 2] >> 6)];
    *p++ = b64[in[i + 2] & 63];
  }
  if (i < n) {
    *p++ = b64[in[i] >> 2];
    if (i + 1 < n) {
      *p++ = b64[((in[i] & 3) << 4) | (in[i + 1] >> 4)];
      *p++ = b64[(in[i + 1] & 15) << 2];
    }
    else {
      *p++ = b64[(in[i] & 3) << 4];
      *p++ = '=';
    }
    *p++ = '=';
  }
  *p = '\0';
  return out;
}

/* Decode strict base64 (padding required); returns length or -1. */
static ssize_t
base64_decode (const char *s, uint8_t **out)
{
  size_t n = strlen (s), i, o = 0;
  uint8_t *buf;

  if (n % 4)
    return -1;
  buf = malloc (n / 4 * 3 + 1);
  if (!buf)
    return -1;
  for (i = 0; i < n; i += 4) {
    int v[4], k;
    for (k = 0; k < 4; k++) {
      const char *c = s[i + k] == '=' ? NULL : strchr (b64, s[i + k]);
      if (s[i + k] == '\0' || (s[i + k] != '=' && !c) ||
          (s[i + k] == '=' && (i + 4 != n || k < 2))) {
        free (buf);
        return -1;
      }
      v[k] = c ? c - b64 : 0;
    }
    buf[o++] = (v[0] << 2) | (v[1] >> 4);
    if (s[i + 2] != '=')
      buf[o++] = ((v[1] & 15) << 4) | (v[2] >> 2);
    if (s[i + 3] != '=')
      buf[o++] = ((v[2] & 3) << 6) | v[3];
    else if (s[i + 2] == '=' && s[i + 3] != '=') {
      free (buf);
      return -1;
    }
  }
  *out = buf;
  return o;
}

static json_object *
j_u64 (uint64_t v)
{
  return json_object_new_uint64 (v);
}

/* ---- methods ---- */

static json_object *
method_get_version (struct rpc_ctx *ctx, json_object *params, struct rpc_error *err)
{
  static const char *const names[] = { NULL };
  json_object *r;

  if (only_params (params, names, err) == -1)
    return NULL;
  r = json_object_new_object ();
  add (err, r, "name", json_object_new_string ("rblock"));
  add (err, r, "version", json_object_new_string (PACKAGE_VERSION));
  add (err, r, "jsonrpc", json_object_new_string ("2.0"));
  return done (err, r);
}

static json_object *
feature_list (struct rb_image *img, int group, uint64_t bits, struct rpc_error *err)
{
  json_object *a = json_object_new_array ();
  int i;

  for (i = 0; i < 64; i++)
    if (bits & (1ULL << i)) {
      const char *n = rb_feature_name (img, group, i);
      char buf[32];
      if (!n) {
        snprintf (buf, sizeof buf, "bit %d", i);
        n = buf;
      }
      push (err, a, rpc_string (n));
    }
  return a;
}

static const char *
ext_name (uint32_t type)
{
  switch (type) {
  case 0xe2792acaU: return "backing format";
  case 0x6803f857U: return "feature name table";
  case 0x23852875U: return "bitmaps";
  case 0x0537be77U: return "full disk encryption";
  case 0x44415441U: return "external data file";
  default: return "unknown";
  }
}

/* One internal snapshot, as info and snapshots show it. */
static json_object *
snapshot_object (const struct rb_snapshot_info *sn, struct rpc_error *err)
{
  json_object *e = json_object_new_object ();

  add (err, e, "id", rpc_string (sn->id));
  add (err, e, "name", rpc_string (sn->name));
  add (err, e, "vm_state_size", j_u64 (sn->vm_state_size));
  add (err, e, "date_sec", j_u64 (sn->date_sec));
  add (err, e, "date_nsec", j_u64 (sn->date_nsec));
  add (err, e, "vm_clock_nsec", j_u64 (sn->vm_clock_nsec));
  if (sn->disk_size)
    add (err, e, "disk_size", j_u64 (sn->disk_size));
  if (sn->icount != UINT64_MAX)
    add (err, e, "icount", j_u64 (sn->icount));
  return e;
}

static json_object *
method_info (struct rpc_ctx *ctx, json_object *params, struct rpc_error *err)
{
  static const char *const names[] = { NULL };
  struct rb_info *in;
  json_object *r, *f, *a;
  unsigned i;
  char hex[16];

  if (only_params (params, names, err) == -1)
    return NULL;
  in = malloc (sizeof *in);
  if (!in)
    return fail (err, RPC_INTERNAL_ERROR, "%s", "out of memory");
  if (rb_get_info (ctx->img, in) == -1) {
    free (in);
    return engine_error (err);
  }
  r = json_object_new_object ();
  add (err, r, "virtual_size", j_u64 (in->virtual_size));
  add (err, r, "cluster_size", j_u64 (in->cluster_size));
  add (err, r, "version", json_object_new_int (in->version));
  add (err, r, "compat", json_object_new_string (in->version == 2 ? "0.10" : "1.1"));
  add (err, r, "refcount_bits", json_object_new_int (in->refcount_bits));
  add (err, r, "compression_type",
                          json_object_new_string (in->compression_type ? "zstd" : "zlib"));
  add (err, r, "extended_l2", json_object_new_boolean (in->extended_l2));
  add (err, r, "lazy_refcounts", json_object_new_boolean (in->lazy_refcounts));
  add (err, r, "dirty", json_object_new_boolean (in->dirty));
  add (err, r, "corrupt", json_object_new_boolean (in->corrupt));
  add (err, r, "header_length", json_object_new_int (in->header_length));
  add (err, r, "l1_table_offset", j_u64 (in->l1_table_offset));
  add (err, r, "l1_size", j_u64 (in->l1_size));
  add (err, r, "refcount_table_offset", j_u64 (in->refcount_table_offset));
  add (err, r, "refcount_table_clusters", j_u64 (in->refcount_table_clusters));
  add (err, r, "file_size", j_u64 (in->file_size));
  f = json_object_new_object ();
  add (err, f, "incompatible", feature_list (ctx->img, 0, in->incompatible_features, err));
  add (err, f, "compatible", feature_list (ctx->img, 1, in->compatible_features, err));
  add (err, f, "autoclear", feature_list (ctx->img, 2, in->autoclear_features, err));
  add (err, r, "features", f);
  a = json_object_new_array ();
  for (i = 0; i < in->nr_extensions; i++) {
    json_object *e = json_object_new_object ();
    snprintf (hex, sizeof hex, "0x%08x", in->extensions[i].type);
    add (err, e, "type", json_object_new_string (hex));
    add (err, e, "name", json_object_new_string (ext_name (in->extensions[i].type)));
    add (err, e, "length", json_object_new_int (in->extensions[i].length));
    push (err, a, e);
  }
  add (err, r, "header_extensions", a);
  add_opt (err, r, "backing_file", in->backing_file[0] ? rpc_string (in->backing_file) : NULL);
  add_opt (err, r, "backing_format", in->backing_format[0] ? rpc_string (in->backing_format) : NULL);
  a = json_object_new_array ();
  for (i = 0; i < in->chain_depth; i++) {
    json_object *e = json_object_new_object ();
    add (err, e, "filename", rpc_string (in->chain[i].path));
    add (err, e, "format", rpc_string (in->chain[i].format));
    add (err, e, "virtual_size", j_u64 (in->chain[i].virtual_size));
    push (err, a, e);
  }
  add (err, r, "backing_chain", a);
  a = json_object_new_array ();
  for (i = 0; i < in->nr_snapshots; i++)
    push (err, a, snapshot_object (&in->snapshots[i], err));
  add (err, r, "snapshots", a);
  free (in);
  return done (err, r);
}

/* Read [offset, offset+length) and encode it. */
static json_object *
read_range (struct rpc_ctx *ctx, uint64_t offset, uint64_t length, const char *encoding,
            struct rpc_error *err)
{
  uint64_t size = rb_get_size (ctx->img);
  uint8_t *buf;
  char *enc;
  json_object *r;

  if (length > RPC_MAX_READ)
    return fail (err, RPC_INVALID_PARAMS, "Invalid params: \"%s\" is over the limit of 4194304 bytes", "length");
  if (offset > size || length > size - offset)
    return fail (err, RPC_INVALID_PARAMS, "Invalid params: \"%s\" + length is beyond the end of the disk", "offset");
  buf = malloc (length ? length : 1);
  if (!buf)
    return fail (err, RPC_INTERNAL_ERROR, "%s", "out of memory");
  if (length && rb_pread (ctx->img, buf, length, offset) == -1) {
    free (buf);
    return engine_error (err);
  }
  if (strcmp (encoding, "hex") == 0) {
    static const char digits[] = "0123456789abcdef";
    uint64_t i;
    enc = malloc (length * 2 + 1);
    for (i = 0; enc && i < length; i++) {
      enc[2 * i] = digits[buf[i] >> 4];
      enc[2 * i + 1] = digits[buf[i] & 15];
    }
    if (enc)
      enc[2 * length] = '\0';
  }
  else
    enc = base64_encode (buf, length);
  free (buf);
  if (!enc)
    return fail (err, RPC_INTERNAL_ERROR, "%s", "out of memory");
  rpc_count (ctx->state, &ctx->state->read_bytes, length);
  r = json_object_new_object ();
  add (err, r, "offset", j_u64 (offset));
  add (err, r, "length", j_u64 (length));
  add (err, r, "encoding", json_object_new_string (encoding));
  add (err, r, "data", json_object_new_string (enc));
  free (enc);
  return done (err, r);
}

static int
get_encoding (json_object *params, const char **enc, struct rpc_error *err)
{
  json_object *v;

  *enc = "base64";
  if (params && json_object_object_get_ex (params, "encoding", &v)) {
    if (!json_object_is_type (v, json_type_string) ||
        (strcmp (json_object_get_string (v), "base64") != 0 && strcmp (json_object_get_string (v), "hex") != 0)) {
      fail (err, RPC_INVALID_PARAMS, "Invalid params: \"%s\" must be \"base64\" or \"hex\"", "encoding");
      return -1;
    }
    *enc = json_object_get_string (v);
  }
  return 0;
}

static json_object *
method_read (struct rpc_ctx *ctx, json_object *params, struct rpc_error *err)
{
  static const char *const names[] = { "offset", "length", "encoding", NULL };
  uint64_t offset, length;
  const char *enc;

  if (only_params (params, names, err) == -1 ||
      get_u64 (params, "offset", true, 0, &offset, err) == -1 ||
      get_u64 (params, "length", true, 0, &length, err) == -1 ||
      get_encoding (params, &enc, err) == -1)
    return NULL;
  return read_range (ctx, offset, length, enc, err);
}

static json_object *
method_read_guest_cluster (struct rpc_ctx *ctx, json_object *params, struct rpc_error *err)
{
  static const char *const names[] = { "cluster", "encoding", NULL };
  uint64_t cluster, cs = rb_get_cluster_size (ctx->img), size = rb_get_size (ctx->img);
  const char *enc;
  json_object *r;

  if (only_params (params, names, err) == -1 ||
      get_u64 (params, "cluster", true, 0, &cluster, err) == -1 ||
      get_encoding (params, &enc, err) == -1)
    return NULL;
  if (cluster >= (size + cs - 1) / cs)
    return fail (err, RPC_INVALID_PARAMS, "Invalid params: \"%s\" is beyond the end of the disk", "cluster");
  r = read_range (ctx, cluster * cs, cs < size - cluster * cs ? cs : size - cluster * cs, enc, err);
  if (r) {
    add (err, r, "cluster", j_u64 (cluster));
    r = done (err, r);
  }
  return r;
}

static json_object *
method_lookup (struct rpc_ctx *ctx, json_object *params, struct rpc_error *err)
{
  static const char *const names[] = { "offset", NULL };
  struct rb_mapping m;
  uint64_t offset;
  json_object *r;

  if (only_params (params, names, err) == -1 ||
      get_u64 (params, "offset", true, 0, &offset, err) == -1)
    return NULL;
  if (offset >= rb_get_size (ctx->img))
    return fail (err, RPC_INVALID_PARAMS, "Invalid params: \"%s\" is beyond the end of the disk", "offset");
  if (rb_lookup (ctx->img, offset, &m) == -1)
    return engine_error (err);
  r = json_object_new_object ();
  add (err, r, "offset", j_u64 (m.guest_offset));
  add (err, r, "guest_cluster", j_u64 (m.guest_cluster));
  add (err, r, "l1_index", j_u64 (m.l1_index));
  add (err, r, "l2_index", j_u64 (m.l2_index));
  add (err, r, "l2_table_offset", j_u64 (m.l2_table_offset));
  add (err, r, "l2_entry", j_u64 (m.l2_entry));
  if (m.subcluster >= 0) {
    add (err, r, "subcluster", json_object_new_int (m.subcluster));
    add (err, r, "l2_bitmap", j_u64 (m.l2_bitmap));
  }
  add (err, r, "type", json_object_new_string (rb_cluster_type_name (m.type)));
  add (err, r, "host_cluster_offset", j_u64 (m.host_cluster_offset));
  add (err, r, "host_offset", j_u64 (m.host_offset));
  if (m.type == RB_CLUSTER_COMPRESSED)
    add (err, r, "compressed_size", j_u64 (m.compressed_size));
  add (err, r, "refcount_table_index", j_u64 (m.refcount_table_index));
  add (err, r, "refcount_block_index", j_u64 (m.refcount_block_index));
  add (err, r, "refcount", j_u64 (m.refcount));
  if (m.type == RB_CLUSTER_BACKING)
    add (err, r, "backing_depth", json_object_new_int (m.backing_depth));
  return done (err, r);
}

/* The runs of a map or bitmap_map answer, as the engine reports them.  At
 * most MAX_RUNS in one answer: the array of a whole large disk's runs would
 * be unbounded memory.
 */
#define MAX_RUNS 100000
struct run_acc {
  struct rb_image *img;
  json_object *a;
  unsigned n;
  struct rpc_error *err;
};

/* A new run object with "start" and "length", or NULL (E2BIG) past MAX_RUNS. */
static json_object *
run_new (struct run_acc *acc, uint64_t offset, uint64_t length)
{
  json_object *e;

  if (++acc->n > MAX_RUNS) {
    errno = E2BIG;
    return NULL;
  }
  e = json_object_new_object ();
  add (acc->err, e, "start", j_u64 (offset));
  add (acc->err, e, "length", j_u64 (length));
  return e;
}

/* The answer once the engine has reported the runs (r: its return value). */
static json_object *
run_answer (struct run_acc *acc, int r)
{
  if (r == -1) {
    json_object_put (acc->a);
    if (acc->n > MAX_RUNS)
      return fail (acc->err, RPC_INVALID_PARAMS, "Invalid params: the range has too many extents; ask for a shorter %s", "length");
    return engine_error (acc->err);
  }
  return done (acc->err, acc->a);
}

static int
map_extent (void *opaque, uint64_t offset, uint64_t length, uint32_t type)
{
  struct run_acc *acc = opaque;
  struct rpc_error *err = acc->err;
  json_object *e = run_new (acc, offset, length);
  bool data = !(type & RB_EXTENT_ZERO);
  struct rb_mapping m;

  if (!e)
    return -1;
  add (err, e, "data", json_object_new_boolean (data));
  add (err, e, "zero", json_object_new_boolean (!data));
  if (data && rb_lookup (acc->img, offset, &m) == 0 && m.type == RB_CLUSTER_DATA)
    add (err, e, "offset", j_u64 (m.host_offset));
  push (err, acc->a, e);
  return 0;
}

/* Optional "offset" (default 0) and "length" (default: to the end of the
 * disk) inside the disk.  0 / -1.
 */
static int
get_range (struct rpc_ctx *ctx, json_object *params, uint64_t *offset, uint64_t *length,
           struct rpc_error *err)
{
  uint64_t size = rb_get_size (ctx->img);

  if (get_u64 (params, "offset", false, 0, offset, err) == -1)
    return -1;
  if (*offset > size) {
    fail (err, RPC_INVALID_PARAMS, "Invalid params: \"%s\" is beyond the end of the disk", "offset");
    return -1;
  }
  if (get_u64 (params, "length", false, size - *offset, length, err) == -1)
    return -1;
  if (*length > size - *offset) {
    fail (err, RPC_INVALID_PARAMS, "Invalid params: \"%s\" runs beyond the end of the disk", "length");
    return -1;
  }
  return 0;
}

static json_object *
method_map (struct rpc_ctx *ctx, json_object *params, struct rpc_error *err)
{
  static const char *const names[] = { "offset", "length", NULL };
  uint64_t offset, length;
  struct run_acc acc = { .img = ctx->img, .err = err };

  if (only_params (params, names, err) == -1 || get_range (ctx, params, &offset, &length, err) == -1)
    return NULL;
  acc.a = json_object_new_array ();
  return run_answer (&acc, length ? rb_extents (ctx->img, length, offset, map_extent, &acc) : 0);
}

static json_object *
method_check (struct rpc_ctx *ctx, json_object *params, struct rpc_error *err)
{
  static const char *const names[] = { "exclusive", NULL };
  struct rb_check_result c;
  json_object *r, *x = NULL;
  bool exclusive = false;

  if (only_params (params, names, err) == -1)
    return NULL;
  if (params && json_object_object_get_ex (params, "exclusive", &x)) {
    if (!json_object_is_type (x, json_type_boolean))
      return fail (err, RPC_INVALID_PARAMS, "Invalid params: \"%s\" must be true or false", "exclusive");
    exclusive = json_object_get_boolean (x);
  }
  /* Pausing guest I/O is for writable servers only (a read-only client must not stall NBD). */
  if (exclusive && !rpc_can_write (ctx))
    return fail (err, RPC_INVALID_PARAMS, "Invalid params: \"%s\" pauses guest I/O: only on a "
                 "writable server (rb-rpc --writable, rpc-writable=true)", "exclusive");
  if (rb_check (ctx->img, &c, exclusive ? RB_CHECK_EXCLUSIVE : 0) == -1)
    return engine_error (err);
  r = json_object_new_object ();
  add (err, r, "corruptions", j_u64 (c.corruptions));
  add (err, r, "leaks", j_u64 (c.leaks));
  add (err, r, "check_errors", j_u64 (c.check_errors));
  add (err, r, "allocated_clusters", j_u64 (c.allocated_clusters));
  add (err, r, "total_clusters", j_u64 (c.total_clusters));
  add (err, r, "image_end_offset", j_u64 (c.image_end_offset));
  return done (err, r);
}

static json_object *
method_stats (struct rpc_ctx *ctx, json_object *params, struct rpc_error *err)
{
  static const char *const names[] = { NULL };
  struct rb_stats s;
  json_object *r, *e, *rpc;

  if (only_params (params, names, err) == -1)
    return NULL;
  rb_get_stats (ctx->img, &s);
  r = json_object_new_object ();
  e = json_object_new_object ();
  add (err, e, "reads", j_u64 (s.reads));
  add (err, e, "read_bytes", j_u64 (s.read_bytes));
  add (err, e, "writes", j_u64 (s.writes));
  add (err, e, "write_bytes", j_u64 (s.write_bytes));
  add (err, e, "zeros", j_u64 (s.zeros));
  add (err, e, "zero_bytes", j_u64 (s.zero_bytes));
  add (err, e, "trims", j_u64 (s.trims));
  add (err, e, "trim_bytes", j_u64 (s.trim_bytes));
  add (err, e, "flushes", j_u64 (s.flushes));
  add (err, e, "extents_calls", j_u64 (s.extents_calls));
  add (err, e, "clusters_allocated", j_u64 (s.clusters_allocated));
  add (err, e, "cache_hits", j_u64 (s.cache_hits));
  add (err, e, "cache_misses", j_u64 (s.cache_misses));
  add (err, r, "engine", e);
  rpc = json_object_new_object ();
  pthread_mutex_lock (&ctx->state->lock);
  add (err, rpc, "requests", j_u64 (ctx->state->requests));
  add (err, rpc, "errors", j_u64 (ctx->state->errors));
  add (err, rpc, "notifications", j_u64 (ctx->state->notifications));
  add (err, rpc, "read_bytes", j_u64 (ctx->state->read_bytes));
  add (err, rpc, "write_bytes", j_u64 (ctx->state->write_bytes));
  pthread_mutex_unlock (&ctx->state->lock);
  add (err, r, "rpc", rpc);
  return done (err, r);
}

static json_object *
method_list_methods (struct rpc_ctx *ctx, json_object *params, struct rpc_error *err)
{
  static const char *const names[] = { NULL };
  const struct rpc_method *m;
  json_object *a;

  if (only_params (params, names, err) == -1)
    return NULL;
  a = json_object_new_array ();
  for (m = rpc_methods; m->name; m++) {
    json_object *e = json_object_new_object ();
    add (err, e, "name", json_object_new_string (m->name));
    add (err, e, "params", json_object_new_string (m->params));
    add (err, e, "writable_only", json_object_new_boolean (m->needs_writable));
    add (err, e, "available", json_object_new_boolean (!m->needs_writable || rpc_can_write (ctx)));
    add (err, e, "description", json_object_new_string (m->description));
    push (err, a, e);
  }
  return done (err, a);
}

static json_object *
method_write (struct rpc_ctx *ctx, json_object *params, struct rpc_error *err)
{
  static const char *const names[] = { "offset", "data", "fua", NULL };
  uint64_t offset, size = rb_get_size (ctx->img);
  json_object *d, *r, *fua = NULL;
  uint8_t *buf = NULL;
  ssize_t n;

  if (only_params (params, names, err) == -1 ||
      get_u64 (params, "offset", true, 0, &offset, err) == -1)
    return NULL;
  if (!json_object_object_get_ex (params, "data", &d) || !json_object_is_type (d, json_type_string))
    return fail (err, RPC_INVALID_PARAMS, "Invalid params: \"%s\" must be a base64 string", "data");
  if (json_object_object_get_ex (params, "fua", &fua) && !json_object_is_type (fua, json_type_boolean))
    return fail (err, RPC_INVALID_PARAMS, "Invalid params: \"%s\" must be true or false", "fua");
  n = base64_decode (json_object_get_string (d), &buf);
  if (n < 0)
    return fail (err, RPC_INVALID_PARAMS, "Invalid params: \"%s\" is not valid base64", "data");
  if (offset > size || (uint64_t) n > size - offset) {
    free (buf);
    return fail (err, RPC_INVALID_PARAMS, "Invalid params: \"%s\" + data is beyond the end of the disk", "offset");
  }
  if (n && rb_pwrite (ctx->img, buf, n, offset, fua && json_object_get_boolean (fua) ? RB_FUA : 0) == -1) {
    free (buf);
    return engine_error (err);
  }
  free (buf);
  rpc_count (ctx->state, &ctx->state->write_bytes, n);
  r = json_object_new_object ();
  add (err, r, "offset", j_u64 (offset));
  add (err, r, "length", j_u64 (n));
  return done (err, r);
}

static json_object *
method_flush (struct rpc_ctx *ctx, json_object *params, struct rpc_error *err)
{
  static const char *const names[] = { NULL };

  if (only_params (params, names, err) == -1)
    return NULL;
  if (rb_flush (ctx->img) == -1)
    return engine_error (err);
  return done (err, json_object_new_boolean (1));
}

/* ---- internal snapshots and resize (issue 19) ---- */

/* Every internal snapshot (info lists at most 64). */
static json_object *
method_snapshots (struct rpc_ctx *ctx, json_object *params, struct rpc_error *err)
{
  static const char *const names[] = { NULL };
  struct rb_snapshot_info *v;
  json_object *a;
  int n, i;

  if (only_params (params, names, err) == -1)
    return NULL;
  if ((n = rb_snapshot_list (ctx->img, &v)) == -1)
    return engine_error (err);
  a = json_object_new_array ();
  for (i = 0; i < n; i++)
    push (err, a, snapshot_object (&v[i], err));
  free (v);
  return done (err, a);
}

/* Take snapshot "name" of the served disk: a consistent point between
 * guest requests (the engine holds them off while it runs).  Returns it.
 */
static json_object *
method_snapshot_create (struct rpc_ctx *ctx, json_object *params, struct rpc_error *err)
{
  static const char *const names[] = { "name", NULL };
  struct rb_snapshot_info *v;
  json_object *name, *r = NULL;
  int n, i;

  if (only_params (params, names, err) == -1)
    return NULL;
  if (!params || !json_object_object_get_ex (params, "name", &name))
    return fail (err, RPC_INVALID_PARAMS, "Invalid params: missing \"%s\"", "name");
  if (!json_object_is_type (name, json_type_string))
    return fail (err, RPC_INVALID_PARAMS, "Invalid params: \"%s\" must be a string", "name");
  if (rb_snapshot_create (ctx->img, json_object_get_string (name)) == -1 ||
      (n = rb_snapshot_list (ctx->img, &v)) == -1)
    return engine_error (err);
  for (i = n - 1; i >= 0 && !r; i--)
    if (strcmp (v[i].name, json_object_get_string (name)) == 0)
      r = snapshot_object (&v[i], err);
  free (v);
  return done (err, r);
}

/* Change the virtual size (a smaller one only with "shrink": true). */
static json_object *
method_resize (struct rpc_ctx *ctx, json_object *params, struct rpc_error *err)
{
  static const char *const names[] = { "size", "shrink", NULL };
  json_object *shrink = NULL, *r;
  uint64_t size;

  if (only_params (params, names, err) == -1 ||
      get_u64 (params, "size", true, 0, &size, err) == -1)
    return NULL;
  if (json_object_object_get_ex (params, "shrink", &shrink) &&
      !json_object_is_type (shrink, json_type_boolean))
    return fail (err, RPC_INVALID_PARAMS, "Invalid params: \"%s\" must be true or false", "shrink");
  if (rb_resize (ctx->img, size, shrink && json_object_get_boolean (shrink) ? RB_RESIZE_SHRINK : 0) == -1)
    return engine_error (err);
  r = json_object_new_object ();
  add (err, r, "size", j_u64 (rb_get_size (ctx->img)));
  return done (err, r);
}

/* ---- persistent dirty bitmaps ---- */

static json_object *
method_bitmaps (struct rpc_ctx *ctx, json_object *params, struct rpc_error *err)
{
  static const char *const names[] = { NULL };
  struct rb_bitmap_info *v;
  json_object *a;
  size_t nr, i;

  if (only_params (params, names, err) == -1)
    return NULL;
  if (rb_bitmap_list (ctx->img, true, &v, &nr) == -1)
    return engine_error (err);
  a = json_object_new_array ();
  for (i = 0; i < nr; i++) {
    json_object *o = json_object_new_object (), *fl = json_object_new_array ();
    if (v[i].flags & RB_BITMAP_IN_USE)
      push (err, fl, json_object_new_string ("in-use"));
    if (v[i].flags & RB_BITMAP_AUTO)
      push (err, fl, json_object_new_string ("auto"));
    add (err, o, "name", rpc_string (v[i].name));
    add (err, o, "granularity", j_u64 (v[i].granularity));
    add (err, o, "flags", fl);
    if (v[i].have_count)
      add (err, o, "count", j_u64 (v[i].dirty_bytes));
    add (err, o, "live", json_object_new_boolean (v[i].live));
    if (!v[i].supported)
      add (err, o, "supported", json_object_new_boolean (false));
    push (err, a, o);
  }
  free (v);
  return done (err, a);
}

static int
dirty_extent (void *opaque, uint64_t offset, uint64_t length, bool dirty)
{
  struct run_acc *acc = opaque;
  json_object *e = run_new (acc, offset, length);

  if (!e)
    return -1;
  add (acc->err, e, "dirty", json_object_new_boolean (dirty));
  push (acc->err, acc->a, e);
  return 0;
}

/* The runs of one bitmap: the live state while this process writes the
 * image, what QEMU's qemu:dirty-bitmap meta context would say otherwise.
 */
static json_object *
method_bitmap_map (struct rpc_ctx *ctx, json_object *params, struct rpc_error *err)
{
  static const char *const names[] = { "name", "offset", "length", NULL };
  uint64_t offset, length;
  struct run_acc acc = { .img = ctx->img, .err = err };
  json_object *v;

  if (only_params (params, names, err) == -1)
    return NULL;
  if (!params || !json_object_object_get_ex (params, "name", &v))
    return fail (err, RPC_INVALID_PARAMS, "Invalid params: missing \"%s\"", "name");
  if (!json_object_is_type (v, json_type_string))
    return fail (err, RPC_INVALID_PARAMS, "Invalid params: \"%s\" must be a string", "name");
  if (get_range (ctx, params, &offset, &length, err) == -1)
    return NULL;
  acc.a = json_object_new_array ();
  return run_answer (&acc, rb_bitmap_extents (ctx->img, json_object_get_string (v), offset,
                                              length, dirty_extent, &acc));
}

/* Authenticate the connection: later requests need no token member. */
static json_object *
method_auth (struct rpc_ctx *ctx, json_object *params, struct rpc_error *err)
{
  static const char *const names[] = { "token", NULL };
  json_object *t;

  if (only_params (params, names, err) == -1)
    return NULL;
  if (!params || !json_object_object_get_ex (params, "token", &t) || !json_object_is_type (t, json_type_string))
    return fail (err, RPC_INVALID_PARAMS, "Invalid params: \"%s\" must be a string", "token");
  if (ctx->state->token &&
      !rpc_token_matches (ctx->state, json_object_get_string (t), json_object_get_string_len (t)))
    return fail (err, RPC_UNAUTHORIZED, "%s", "Unauthorized: wrong token");
  ctx->session->authenticated = true;
  return done (err, json_object_new_boolean (1));
}

const struct rpc_method rpc_methods[] = {
  { "get_version", method_get_version, false, "", "name and version of the server" },
  { "info", method_info, false, "", "header fields, features, extensions, backing chain, snapshots" },
  { "read", method_read, false, "offset, length, [encoding: base64|hex]",
    "guest bytes (at most 4 MiB)" },
  { "read_guest_cluster", method_read_guest_cluster, false, "cluster, [encoding]",
    "one whole guest cluster" },
  { "lookup", method_lookup, false, "offset",
    "how a guest offset maps: L1/L2 indexes, host offset, type, refcount" },
  { "map", method_map, false, "[offset], [length]", "data/zero extents, as qemu-img map" },
  { "check", method_check, false, "[exclusive]",
    "corruptions and leaks, as qemu-img check (beside guest I/O; exclusive pauses it)" },
  { "stats", method_stats, false, "", "requests and bytes by kind (NBD traffic included)" },
  { "list_methods", method_list_methods, false, "", "this list" },
  { "bitmaps", method_bitmaps, false, "", "persistent dirty bitmaps: name, granularity, flags, count" },
  { "bitmap_map", method_bitmap_map, false, "name, [offset], [length]",
    "dirty/clean runs of a bitmap (live while served)" },
  { "write", method_write, true, "offset, data (base64), [fua]", "write guest bytes (writable only)" },
  { "flush", method_flush, true, "", "make every write durable (writable only)" },
  { "snapshots", method_snapshots, false, "", "every internal snapshot: id, name, date, sizes" },
  { "snapshot_create", method_snapshot_create, true, "name",
    "take an internal snapshot of the served disk (writable only)" },
  { "resize", method_resize, true, "size, [shrink]",
    "change the virtual size; smaller only with shrink: true (writable only)" },
  { "auth", method_auth, false, "token", "authenticate the connection (servers with a token file)" },
  { NULL, NULL, false, NULL, NULL },
};

bool
rpc_method_no_image (const struct rpc_method *m)
{
  return m->fn == method_get_version || m->fn == method_auth;
}
