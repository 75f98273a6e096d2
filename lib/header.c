/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Reads and validates the qcow2 header, its extensions and the snapshot table; writes header fields.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static const char *const known_incompat[] = {
  "dirty bit", "corrupt bit", "external data file", "compression type",
  "extended L2 entries",
};

/* Returns the feature name for (group, bit) from the image's table or the
 * known names; NULL if unknown.
 */
const char *
rb_feature_name (struct rb_image *img, int group, int bit)
{
  size_t i;

  if (img)
    for (i = 0; i < img->nr_features; i++)
      if (img->features[i].group == group && img->features[i].bit == bit)
        return img->features[i].name;
  if (group == 0 && bit >= 0 && bit < 5)
    return known_incompat[bit];
  if (group == 1 && bit == 0)
    return "lazy refcounts";
  if (group == 2 && bit == 0)
    return "bitmaps";
  if (group == 2 && bit == 1)
    return "raw external data";
  return NULL;
}

/* Check that a table of nr entries of entry_size bytes at offset is cluster
 * aligned, does not overflow, lies after the header cluster and inside the
 * file.  Returns 0 / -1 (EIO "corrupt image").
 */
static int
validate_table (struct rb_image *img, const char *what, uint64_t offset,
                uint64_t nr, const char *unit, uint64_t entry_size, uint64_t max_bytes)
{
  uint64_t bytes, end;

  if (MUL_OVERFLOW (nr, entry_size, &bytes) || bytes > max_bytes)
    return rb_error (EIO, "corrupt image: %s too large (%" PRIu64 " %s, over %" PRIu64 " MiB)",
                     what, nr, unit, max_bytes >> 20);
  if (nr == 0)
    return 0;
  if (!IS_ALIGNED (offset, img->cluster_size))
    return rb_error (EIO, "corrupt image: %s offset %#" PRIx64 " is not cluster aligned",
                     what, offset);
  if (offset < img->cluster_size)
    return rb_error (EIO, "corrupt image: %s offset %#" PRIx64 " overlaps the header",
                     what, offset);
  if (ADD_OVERFLOW (offset, bytes, &end) || end > img->file_size)
    return rb_error (EIO, "corrupt image: %s at %#" PRIx64 " (%" PRIu64
                     " bytes) is beyond the end of the file", what, offset, bytes);
  return 0;
}

/* Parse the header extensions in buf[start..end).  Returns 0 / -1. */
int
read_extensions (struct rb_image *img, const uint8_t *buf, uint64_t start, uint64_t end)
{
  uint64_t off = start;

  while (off + 8 <= end) {
    uint32_t type = get_be32 (buf + off);
    uint32_t len = get_be32 (buf + off + 4);
    uint64_t data = off + 8;
    struct extension *x;

    if (type == QCOW_EXT_END)
      return 0;
    if (len > end - data)
      return rb_error (EIO, "corrupt image: header extension %#x (length %u) runs past the end of the header cluster",
                       type, len);
    switch (type) {
    case QCOW_EXT_BACKING_FORMAT:
      free (img->backing_format);
      img->backing_format = strndup ((const char *) buf + data, len);
      if (!img->backing_format)
        return rb_error (ENOMEM, "out of memory");
      break;
    case QCOW_EXT_FEATURE_TABLE: {
      size_t n = len / 48, i;
      struct feature_name *f = realloc (img->features, n * sizeof *f + 1);
      if (!f)
        return rb_error (ENOMEM, "out of memory");
      img->features = f;
      img->nr_features = n;
      for (i = 0; i < n; i++) {
        const uint8_t *e = buf + data + i * 48;
        f[i].group = e[0];
        f[i].bit = e[1];
        memcpy (f[i].name, e + 2, 46);
        f[i].name[46] = '\0';
      }
      break;
    }
    case QCOW_EXT_CRYPTO:       /* refused below as LUKS encryption */
      if (img->crypt_method != 2)
        return rb_error (EIO, "corrupt image: full disk encryption header with crypt_method %u",
                         img->crypt_method);
      break;
    case QCOW_EXT_DATA_FILE:
      if (img->incompatible_features & QCOW_INCOMPAT_DATA_FILE)
        return rb_error (ENOTSUP, "unsupported feature: external data file");
      break;
    default:
      break;                    /* bitmaps and unknown ones: kept */
    }
    x = realloc (img->exts, (img->nr_exts + 1) * sizeof *x);
    if (!x)
      return rb_error (ENOMEM, "out of memory");
    img->exts = x;
    x = &img->exts[img->nr_exts];
    x->type = type;
    x->length = len;
    x->file_offset = data;
    x->data = malloc (len + 1);
    if (!x->data)
      return rb_error (ENOMEM, "out of memory");
    memcpy (x->data, buf + data, len);
    img->nr_exts++;
    off = data + ROUND_UP ((uint64_t) len, 8);
  }
  return 0;
}

/* Read and validate the header of img->fd into img.  Returns 0 / -1. */
int
header_read (struct rb_image *img)
{
  uint8_t small[QCOW_V3_HEADER_LENGTH + 8];
  CLEANUP_FREE uint8_t *buf = NULL;
  uint64_t l2_coverage, l1_needed, ext_end, unknown;
  int i;

  if (file_size (img->fd, &img->file_size) == -1)
    return -1;
  if (img->file_size < 4)
    return rb_error (ENOTSUP, "not a qcow2 image (file too small: %" PRIu64 " bytes)",
                     img->file_size);
  memset (small, 0, sizeof small);
  if (full_pread (img->fd, small, MIN (img->file_size, sizeof small), 0, IO_META_READ) == -1)
    return -1;
  if (get_be32 (small + HDR_MAGIC) != QCOW_MAGIC)
    return rb_error (ENOTSUP, "not a qcow2 image (no QFI\\xfb magic): rblock serves qcow2 images only");
  img->version = get_be32 (small + HDR_VERSION);
  if (img->version != 2 && img->version != 3)
    return rb_error (ENOTSUP, "unsupported qcow2 version %u (only 2 and 3)", img->version);
  if (img->file_size < QCOW_V2_HEADER_LENGTH ||
      (img->version == 3 && img->file_size < QCOW_V3_HEADER_LENGTH))
    return rb_error (EIO, "corrupt image: truncated header (file is %" PRIu64 " bytes)",
                     img->file_size);

  img->backing_file_offset = get_be64 (small + HDR_BACKING_FILE_OFFSET);
  img->backing_file_size = get_be32 (small + HDR_BACKING_FILE_SIZE);
  img->cluster_bits = get_be32 (small + HDR_CLUSTER_BITS);
  img->size = get_be64 (small + HDR_SIZE);
  img->crypt_method = get_be32 (small + HDR_CRYPT_METHOD);
  img->l1_size = get_be32 (small + HDR_L1_SIZE);
  img->l1_table_offset = get_be64 (small + HDR_L1_TABLE_OFFSET);
  img->refcount_table_offset = get_be64 (small + HDR_REFCOUNT_TABLE_OFFSET);
  img->refcount_table_clusters = get_be32 (small + HDR_REFCOUNT_TABLE_CLUSTERS);
  img->nb_snapshots = get_be32 (small + HDR_NB_SNAPSHOTS);
  img->snapshots_offset = get_be64 (small + HDR_SNAPSHOTS_OFFSET);

  if (img->cluster_bits < QCOW_MIN_CLUSTER_BITS || img->cluster_bits > QCOW_MAX_CLUSTER_BITS)
    return rb_error (EIO, "corrupt image: cluster_bits %u out of range %d..%d",
                     img->cluster_bits, QCOW_MIN_CLUSTER_BITS, QCOW_MAX_CLUSTER_BITS);
  img->cluster_size = 1ULL << img->cluster_bits;

  if (img->version == 2) {
    img->incompatible_features = img->compatible_features = img->autoclear_features = 0;
    img->refcount_order = 4;
    img->header_length = QCOW_V2_HEADER_LENGTH;
    img->compression_type = QCOW_COMPRESSION_ZLIB;
  }
  else {
    img->incompatible_features = get_be64 (small + HDR_INCOMPATIBLE_FEATURES);
    img->compatible_features = get_be64 (small + HDR_COMPATIBLE_FEATURES);
    img->autoclear_features = get_be64 (small + HDR_AUTOCLEAR_FEATURES);
    img->refcount_order = get_be32 (small + HDR_REFCOUNT_ORDER);
    img->header_length = get_be32 (small + HDR_HEADER_LENGTH);
    if (img->header_length < QCOW_V3_HEADER_LENGTH)
      return rb_error (EIO, "corrupt image: header_length %u is below %d",
                       img->header_length, QCOW_V3_HEADER_LENGTH);
    if (img->header_length % 8 != 0)
      return rb_error (EIO, "corrupt image: header_length %u is not a multiple of 8",
                       img->header_length);
    if (img->header_length > img->cluster_size)
      return rb_error (EIO, "corrupt image: header_length %u exceeds the cluster size",
                       img->header_length);
    img->compression_type = img->header_length > HDR_COMPRESSION_TYPE
      ? small[HDR_COMPRESSION_TYPE] : QCOW_COMPRESSION_ZLIB;
  }
  if (img->file_size < img->header_length)
    return rb_error (EIO, "corrupt image: truncated header (file is %" PRIu64 " bytes, header %u)",
                     img->file_size, img->header_length);

  /* The whole header cluster (or what the file has of it), for extensions
   * and the backing file name.
   */
  buf = calloc (1, img->cluster_size);
  if (!buf)
    return rb_error (ENOMEM, "out of memory");
  if (full_pread (img->fd, buf, MIN (img->file_size, img->cluster_size), 0, IO_META_READ) == -1)
    return -1;

  /* Feature table first, so that unknown bits can be named. */
  ext_end = img->cluster_size;
  if (img->backing_file_offset != 0) {
    if (img->backing_file_offset >= img->cluster_size ||
        img->backing_file_offset < img->header_length)
      return rb_error (EIO, "corrupt image: backing file name offset %#" PRIx64
                       " is outside the header cluster", img->backing_file_offset);
    if (img->backing_file_size > QCOW_MAX_BACKING_NAME)
      return rb_error (EIO, "corrupt image: backing file name too long (%u bytes, limit %d)",
                       img->backing_file_size, QCOW_MAX_BACKING_NAME);
    if (img->backing_file_size > img->cluster_size - img->backing_file_offset)
      return rb_error (EIO, "corrupt image: backing file name runs past the header cluster");
    ext_end = img->backing_file_offset;
  }
  if (img->version == 3 && read_extensions (img, buf, img->header_length, ext_end) == -1)
    return -1;

  unknown = img->incompatible_features & ~QCOW_INCOMPAT_KNOWN;
  for (i = 0; i < 64; i++) {
    if (unknown & (1ULL << i)) {
      const char *name = rb_feature_name (img, 0, i);
      return rb_error (ENOTSUP, "unsupported incompatible feature: %s (bit %d)",
                       name ? name : "unknown", i);
    }
  }
  if (img->incompatible_features & QCOW_INCOMPAT_DATA_FILE)
    return rb_error (ENOTSUP, "unsupported feature: external data file");
  if (img->crypt_method == 1 || img->crypt_method == 2)
    return rb_error (ENOTSUP, "unsupported feature: encryption (crypt_method %u, %s)",
                     img->crypt_method, img->crypt_method == 1 ? "AES" : "LUKS");
  if (img->crypt_method != 0)
    return rb_error (EIO, "corrupt image: unknown crypt_method %u", img->crypt_method);
  if (img->refcount_order > 6)
    return rb_error (EIO, "corrupt image: refcount_order %u out of range 0..6",
                     img->refcount_order);
  if (img->compression_type > QCOW_COMPRESSION_ZSTD)
    return rb_error (ENOTSUP, "unsupported compression type %u", img->compression_type);
  if (img->compression_type == QCOW_COMPRESSION_ZLIB &&
      (img->incompatible_features & QCOW_INCOMPAT_COMPRESSION))
    return rb_error (EIO, "corrupt image: compression type bit set but compression_type is zlib");
  if (img->compression_type != QCOW_COMPRESSION_ZLIB &&
      !(img->incompatible_features & QCOW_INCOMPAT_COMPRESSION))
    return rb_error (EIO, "corrupt image: compression_type %u without the compression type bit",
                     img->compression_type);

  img->extended_l2 = (img->incompatible_features & QCOW_INCOMPAT_EXTL2) != 0;
  if (img->extended_l2 && img->cluster_bits < QCOW_EXTL2_MIN_CLUSTER_BITS)
    return rb_error (EIO, "corrupt image: extended L2 entries need clusters of at least 16 KiB");
  img->l2_entry_size = img->extended_l2 ? 16 : 8;
  img->l2_bits = img->cluster_bits - (img->extended_l2 ? 4 : 3);
  img->l2_entries = 1ULL << img->l2_bits;
  img->subcluster_size = img->extended_l2 ? img->cluster_size / QCOW_SUBCLUSTERS : img->cluster_size;
  img->refcount_bits = 1U << img->refcount_order;
  img->refblock_bits = img->cluster_bits + 3 - img->refcount_order;
  img->refblock_entries = 1ULL << img->refblock_bits;
  img->csize_shift = 62 - (img->cluster_bits - 8);
  img->csize_mask = (1ULL << (img->cluster_bits - 8)) - 1;
  img->coffset_mask = (1ULL << img->csize_shift) - 1;

  /* Virtual size and L1 (qcow2_do_open's rules). */
  if (img->size > (1ULL << 62))
    return rb_error (EIO, "corrupt image: virtual size %" PRIu64 " is too large", img->size);
  l2_coverage = img->cluster_size << img->l2_bits;
  l1_needed = DIV_ROUND_UP (img->size, l2_coverage);
  if (validate_table (img, "L1 table", img->l1_table_offset, img->l1_size, "entries", 8,
                      QCOW_MAX_L1_BYTES) == -1)
    return -1;
  if (img->l1_size < l1_needed)
    return rb_error (EIO, "corrupt image: L1 table is too small (%u entries, %" PRIu64
                     " needed for the virtual size)", img->l1_size, l1_needed);

  if (img->refcount_table_clusters == 0)
    return rb_error (EIO, "corrupt image: refcount table has no clusters");
  if (validate_table (img, "refcount table", img->refcount_table_offset,
                      img->refcount_table_clusters, "clusters", img->cluster_size,
                      MAX (QCOW_MAX_REFTABLE_BYTES, img->cluster_size)) == -1)
    return -1;

  if (img->nb_snapshots > QCOW_MAX_SNAPSHOTS)
    return rb_error (EIO, "corrupt image: too many snapshots (%u, limit %d)",
                     img->nb_snapshots, QCOW_MAX_SNAPSHOTS);
  if (validate_table (img, "snapshot table", img->snapshots_offset, img->nb_snapshots,
                      "snapshots", SNAP_HDR_SIZE, UINT64_MAX) == -1)
    return -1;

  if (img->backing_file_offset != 0 && img->backing_file_size > 0) {
    img->backing_file = strndup ((char *) buf + img->backing_file_offset,
                                 img->backing_file_size);
    if (!img->backing_file)
      return rb_error (ENOMEM, "out of memory");
    if (strlen (img->backing_file) != img->backing_file_size)
      return rb_error (EIO, "corrupt image: backing file name contains a NUL byte");
  }
  return 0;
}

/* Read the snapshot table (validated in size by header_read).  Returns 0 / -1. */
int
snapshots_read (struct rb_image *img)
{
  uint64_t off = img->snapshots_offset;
  uint32_t i;

  if (img->nb_snapshots == 0)
    return 0;
  img->snapshots = calloc (img->nb_snapshots, sizeof *img->snapshots);
  if (!img->snapshots)
    return rb_error (ENOMEM, "out of memory");
  for (i = 0; i < img->nb_snapshots; i++) {
    struct snapshot *sn = &img->snapshots[i];
    uint8_t h[SNAP_HDR_SIZE], extra[QCOW_MAX_SNAPSHOT_EXTRA];
    uint16_t id_len, name_len;
    uint32_t extra_len;

    if (off + SNAP_HDR_SIZE > img->file_size)
      return rb_error (EIO, "corrupt image: snapshot table runs past the end of the file");
    if (full_pread (img->fd, h, sizeof h, off, IO_META_READ) == -1)
      return -1;
    sn->l1_table_offset = get_be64 (h);
    sn->l1_size = get_be32 (h + 8);
    id_len = get_be16 (h + 12);
    name_len = get_be16 (h + 14);
    sn->date_sec = get_be32 (h + 16);
    sn->date_nsec = get_be32 (h + 20);
    sn->vm_clock_nsec = get_be64 (h + 24);
    sn->vm_state_size = get_be32 (h + 32);
    extra_len = get_be32 (h + 36);
    if (extra_len > QCOW_MAX_SNAPSHOT_EXTRA)
      return rb_error (EIO, "corrupt image: snapshot %u extra data too large (%u bytes)", i, extra_len);
    off += SNAP_HDR_SIZE;
    if (off + extra_len + id_len + name_len > img->file_size)
      return rb_error (EIO, "corrupt image: snapshot %u runs past the end of the file", i);
    if (full_pread (img->fd, extra, extra_len, off, IO_META_READ) == -1)
      return -1;
    sn->vm_state_size_large = extra_len >= 8 ? get_be64 (extra) : sn->vm_state_size;
    sn->disk_size = extra_len >= 16 ? get_be64 (extra + 8) : 0;
    sn->icount = extra_len >= 24 ? get_be64 (extra + 16) : UINT64_MAX;
    sn->extra_size = extra_len;
    sn->extra = malloc (extra_len + 1);
    if (!sn->extra)
      return rb_error (ENOMEM, "out of memory");
    memcpy (sn->extra, extra, extra_len);
    off += extra_len;
    sn->id = calloc (1, id_len + 1);
    sn->name = calloc (1, name_len + 1);
    if (!sn->id || !sn->name)
      return rb_error (ENOMEM, "out of memory");
    if (full_pread (img->fd, sn->id, id_len, off, IO_META_READ) == -1 ||
        full_pread (img->fd, sn->name, name_len, off + id_len, IO_META_READ) == -1)
      return -1;
    off = ROUND_UP (off + id_len + name_len, 8);
    if (validate_table (img, "snapshot L1 table", sn->l1_table_offset, sn->l1_size, "entries", 8,
                        QCOW_MAX_L1_BYTES) == -1)
      return -1;
  }
  img->snapshots_size = off - img->snapshots_offset;
  return 0;
}

/* Write the refcount table location fields (one 12-byte write). */
int
header_write (struct rb_image *img)
{
  uint8_t b[12];

  put_be64 (b, img->refcount_table_offset);
  put_be32 (b + 8, img->refcount_table_clusters);
  return full_pwrite (img->fd, b, sizeof b, HDR_REFCOUNT_TABLE_OFFSET, IO_HEADER_UPDATE);
}

/* Write the three feature words (version 3 only). */
int
header_update_features (struct rb_image *img)
{
  uint8_t b[24];

  if (img->version < 3)
    return 0;
  put_be64 (b, img->incompatible_features);
  put_be64 (b + 8, img->compatible_features);
  put_be64 (b + 16, img->autoclear_features);
  return full_pwrite (img->fd, b, sizeof b, HDR_INCOMPATIBLE_FEATURES, IO_HEADER_UPDATE);
}

void
header_free (struct rb_image *img)
{
  size_t i;

  for (i = 0; i < img->nr_exts; i++)
    free (img->exts[i].data);
  free (img->exts);
  free (img->features);
  if (img->snapshots)
    for (i = 0; i < img->nb_snapshots; i++) {
      free (img->snapshots[i].id);
      free (img->snapshots[i].name);
      free (img->snapshots[i].extra);
    }
  free (img->snapshots);
  free (img->backing_file);
  free (img->backing_format);
}
