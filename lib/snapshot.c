/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Internal snapshots: list, create, apply and delete, each one atomic switch of txn.c.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

/* Refcounts count paths from L1 tables: a cluster reached through the
 * active L1 and one snapshot L1 has refcount 2, even through a shared L2
 * table.  QCOW_OFLAG_COPIED must be set exactly where the count is 1, in the
 * active L1 and its tables.
 *
 * Create: the snapshot keeps the current L1 table and its L2 tables as
 * they are.  The new active L1 points at the same tables (their count + 1)
 * or, where a table has entries marked COPIED, at a copy with the marks
 * cleared (count 1: the active L1 owns it); every cluster the tables refer
 * to gets + 1.  Apply and delete likewise count, copy what must change and
 * write a new active L1; everything becomes live in one header write.
 */

#define SNAP_EXTRA_SIZE   24          /* vm_state_size_large, disk_size, icount */
#define MAX_NAME          255         /* QEMU's QEMUSnapshotInfo.name holds 255 bytes */
#define MAX_TABLE_BYTES   (64ULL << 20) /* QEMU's QCOW_MAX_SNAPSHOTS_SIZE */

/* Index of the snapshot with this id, else this name (as qemu-img), or -1. */
static int
find_snapshot (struct rb_image *img, const char *id_or_name)
{
  uint32_t i;

  for (i = 0; i < img->nb_snapshots; i++)
    if (strcmp (img->snapshots[i].id, id_or_name) == 0)
      return i;
  for (i = 0; i < img->nb_snapshots; i++)
    if (strcmp (img->snapshots[i].name, id_or_name) == 0)
      return i;
  return -1;
}

static int
not_found (struct rb_image *img, const char *id_or_name)
{
  return rb_error (ENOENT, "%s: no snapshot with id or name \"%s\"", img->path, id_or_name);
}

int
rb_snapshot_list (struct rb_image *img, struct rb_snapshot_info **list)
{
  struct rb_snapshot_info *v;
  uint32_t i, n;

  *list = NULL;
  if (img->is_raw)
    return rb_error (EINVAL, "%s: not a qcow2 image", img->path);
  pthread_mutex_lock (&img->meta_lock);
  n = img->nb_snapshots;
  v = calloc (MAX (n, 1), sizeof *v);
  if (!v) {
    pthread_mutex_unlock (&img->meta_lock);
    return rb_error (ENOMEM, "out of memory");
  }
  for (i = 0; i < n; i++) {
    const struct snapshot *sn = &img->snapshots[i];
    snprintf (v[i].id, sizeof v[i].id, "%s", sn->id);
    snprintf (v[i].name, sizeof v[i].name, "%s", sn->name);
    v[i].vm_state_size = sn->vm_state_size_large;
    v[i].disk_size = sn->disk_size;
    v[i].date_sec = sn->date_sec;
    v[i].date_nsec = sn->date_nsec;
    v[i].vm_clock_nsec = sn->vm_clock_nsec;
    v[i].l1_table_offset = sn->l1_table_offset;
    v[i].l1_size = sn->l1_size;
    v[i].icount = sn->icount;
  }
  pthread_mutex_unlock (&img->meta_lock);
  *list = v;
  return n;
}

/* A deep copy of the image's snapshots without index skip (-1: keep all),
 * with room for one more.  NULL on error.
 */
static struct snapshot *
snapshots_copy (struct rb_image *img, int skip)
{
  struct snapshot *v = calloc (img->nb_snapshots + 1, sizeof *v);
  uint32_t i, n = 0;

  if (!v)
    goto enomem;
  for (i = 0; i < img->nb_snapshots; i++) {
    const struct snapshot *sn = &img->snapshots[i];
    if ((int) i == skip)
      continue;
    v[n] = *sn;
    v[n].id = strdup (sn->id);
    v[n].name = strdup (sn->name);
    v[n].extra = malloc (sn->extra_size + 1);
    if (!v[n].id || !v[n].name || !v[n].extra) {
      n++;
      goto enomem;
    }
    memcpy (v[n].extra, sn->extra, sn->extra_size);
    n++;
  }
  return v;

 enomem:
  snapshots_free (v, n);
  rb_error (ENOMEM, "out of memory");
  return NULL;
}

/* Serialize n snapshots as QEMU writes them (extra data at least 24
 * bytes, unknown extra bytes kept; entries 8-aligned).  Returns the
 * malloc'd table in *buf and its length, 0 / -1.
 */
static int
table_build (struct rb_image *img, const struct snapshot *v, uint32_t n,
             uint8_t **buf, uint64_t *len)
{
  uint64_t size = 0, off = 0;
  uint32_t i;
  uint8_t *b;

  for (i = 0; i < n; i++)
    size = ROUND_UP (size, 8) + SNAP_HDR_SIZE + MAX (v[i].extra_size, SNAP_EXTRA_SIZE) +
      strlen (v[i].id) + strlen (v[i].name);
  if (size > MAX_TABLE_BYTES)
    return rb_error (EFBIG, "%s: the snapshot table would exceed %llu MiB", img->path,
                     MAX_TABLE_BYTES >> 20);
  b = calloc (1, ROUND_UP (MAX (size, 1), img->cluster_size));
  if (!b)
    return rb_error (ENOMEM, "out of memory");
  for (i = 0; i < n; i++) {
    const struct snapshot *sn = &v[i];
    uint32_t extra = MAX (sn->extra_size, SNAP_EXTRA_SIZE);
    size_t id_len = strlen (sn->id), name_len = strlen (sn->name);
    uint8_t *h;

    off = ROUND_UP (off, 8);
    h = b + off;
    put_be64 (h, sn->l1_table_offset);
    put_be32 (h + 8, sn->l1_size);
    put_be16 (h + 12, id_len);
    put_be16 (h + 14, name_len);
    put_be32 (h + 16, sn->date_sec);
    put_be32 (h + 20, sn->date_nsec);
    put_be64 (h + 24, sn->vm_clock_nsec);
    /* As QEMU: a VM state over 4 GiB leaves the 32-bit field 0. */
    put_be32 (h + 32, sn->vm_state_size_large <= UINT32_MAX ? sn->vm_state_size_large : 0);
    put_be32 (h + 36, extra);
    off += SNAP_HDR_SIZE;
    if (sn->extra_size > SNAP_EXTRA_SIZE)
      memcpy (b + off, sn->extra, sn->extra_size);
    put_be64 (b + off, sn->vm_state_size_large);
    put_be64 (b + off + 8, sn->disk_size ? sn->disk_size : img->size);
    put_be64 (b + off + 16, sn->icount);
    off += extra;
    memcpy (b + off, sn->id, id_len);
    memcpy (b + off + id_len, sn->name, name_len);
    off += id_len + name_len;
  }
  *buf = b;
  *len = size;
  return 0;
}

/* Write the table of n snapshots into new clusters (none for n == 0) and
 * queue the old table as garbage.  Fills the snapshot fields of *s.
 */
static int
table_write (struct txn *t, struct rb_image *img, struct snapshot *v, uint32_t n,
             struct txn_state *s)
{
  CLEANUP_FREE uint8_t *buf = NULL;
  uint64_t len = 0;
  int64_t off = 0;

  if (table_build (img, v, n, &buf, &len) == -1)
    return -1;
  if (n > 0) {
    uint64_t nr = DIV_ROUND_UP (len, img->cluster_size);
    if ((off = txn_alloc (t, nr)) == -1 ||
        txn_write (t, buf, nr * img->cluster_size, off, IO_HEADER_UPDATE) == -1)
      return -1;
  }
  if (img->nb_snapshots > 0 &&
      txn_garbage (t, img->snapshots_offset,
                   DIV_ROUND_UP (img->snapshots_size, img->cluster_size)) == -1)
    return -1;
  s->nb_snapshots = n;
  s->snapshots_offset = off;
  s->snapshots_size = len;
  s->snapshots = v;
  return 0;
}

/* Read a snapshot's L1 table into a new array of at least min_size entries
 * (zero-padded).  NULL on error.
 */
static uint64_t *
read_snapshot_l1 (struct rb_image *img, const struct snapshot *sn, uint32_t min_size)
{
  uint64_t *l1 = calloc (MAX (MAX (sn->l1_size, min_size), 1), 8);
  uint32_t i;

  if (!l1) {
    rb_error (ENOMEM, "out of memory");
    return NULL;
  }
  if (sn->l1_size &&
      full_pread (img->fd, l1, (uint64_t) sn->l1_size * 8, sn->l1_table_offset, IO_META_READ) == -1) {
    free (l1);
    return NULL;
  }
  for (i = 0; i < sn->l1_size; i++)
    l1[i] = be64toh (l1[i]);
  return l1;
}

/* Take the references of one L1 table: + 1 for each table and everything
 * its tables refer to.  Tables with an entry marked COPIED are copied with
 * the marks cleared (the copy, with count 1, is what new_l1 points at);
 * other tables are shared.  new_l1[i] gets the pointer for entry i.
 */
static int
share_tables (struct txn *t, struct rb_image *img, const uint64_t *l1, uint32_t l1_size,
              uint64_t *new_l1, uint8_t *buf)
{
  uint64_t i, j, off;

  for (i = 0; i < l1_size; i++) {
    bool marked = false;
    if (txn_read_table (t, l1[i], buf, &off) == -1)
      return -1;
    new_l1[i] = 0;
    if (off == 0)
      continue;
    if (txn_ref_table (t, buf, 1) == -1)
      return -1;
    for (j = 0; j < img->l2_entries; j++) {
      uint8_t *e = buf + j * img->l2_entry_size;
      uint64_t v = get_be64 (e);
      if ((v & QCOW_OFLAG_COPIED) && !(v & QCOW_OFLAG_COMPRESSED)) {
        put_be64 (e, v & ~QCOW_OFLAG_COPIED);
        marked = true;
      }
    }
    if (marked) {
      int64_t copy = txn_new_table (t, buf);
      if (copy == -1)
        return -1;
      new_l1[i] = (uint64_t) copy | QCOW_OFLAG_COPIED;
    }
    else {
      if (txn_ref (t, off >> img->cluster_bits, 1) == -1)
        return -1;
      new_l1[i] = off;
    }
  }
  return 0;
}

/* Drop the references of one L1 table: - 1 for each table and everything
 * its tables refer to.
 */
static int
drop_tables (struct txn *t, struct rb_image *img, const uint64_t *l1, uint32_t l1_size,
             uint8_t *buf)
{
  uint64_t i, off;

  for (i = 0; i < l1_size; i++) {
    if (txn_read_table (t, l1[i], buf, &off) == -1)
      return -1;
    if (off && (txn_ref (t, off >> img->cluster_bits, -1) == -1 ||
                txn_ref_table (t, buf, -1) == -1))
      return -1;
  }
  return 0;
}

/* Run fn (img, arg) with every request of img held off. */
static int
locked (struct rb_image *img, int (*fn) (struct rb_image *, const char *), const char *arg)
{
  int r;

  if (txn_lock (img) == -1)
    return -1;
  r = fn (img, arg);
  txn_unlock (img);
  return r;
}

/* Check a new snapshot's name (under meta_lock). */
static int
check_new_name (struct rb_image *img, const char *name)
{
  uint32_t i;

  if (strlen (name) > MAX_NAME)
    return rb_error (EINVAL, "snapshot name too long (%zu bytes, at most %d)", strlen (name), MAX_NAME);
  for (i = 0; i < img->nb_snapshots; i++)
    if (strcmp (img->snapshots[i].name, name) == 0)
      return rb_error (EEXIST, "%s: a snapshot named \"%s\" already exists (id %s)",
                       img->path, name, img->snapshots[i].id);
  if (img->refcount_bits < 2)
    return rb_error (ENOTSUP, "%s: snapshots need refcounts of at least 2 bits (the image has %u)",
                     img->path, img->refcount_bits);
  if (img->nb_snapshots >= QCOW_MAX_SNAPSHOTS)
    return rb_error (EFBIG, "%s: too many snapshots (%d)", img->path, QCOW_MAX_SNAPSHOTS);
  return 0;
}

static int
create_locked (struct rb_image *img, const char *name)
{
  struct txn_state s = { .size = img->size, .l1_size = img->l1_size };
  CLEANUP_FREE uint8_t *buf = malloc (img->cluster_size);
  struct snapshot *sn;
  struct timespec ts;
  unsigned long id = 0;
  struct txn *t;
  int64_t off;
  uint32_t i;

  if (check_new_name (img, name) == -1)
    return -1;
  if (!buf)
    return rb_error (ENOMEM, "out of memory");
  if (!(t = txn_begin (img)))
    return -1;
  s.l1 = calloc (MAX (img->l1_size, 1), 8);
  s.snapshots = snapshots_copy (img, -1);
  if (!s.l1 || !s.snapshots) {
    rb_error (ENOMEM, "out of memory");
    return txn_fail (t, &s, img->nb_snapshots);
  }
  if (share_tables (t, img, img->l1, img->l1_size, s.l1, buf) == -1 ||
      (off = txn_new_l1 (t, s.l1, s.l1_size)) == -1)
    return txn_fail (t, &s, img->nb_snapshots);
  s.l1_table_offset = off;

  /* The snapshot keeps the current L1 table; ids as QEMU makes them. */
  for (i = 0; i < img->nb_snapshots; i++)
    id = MAX (id, strtoul (img->snapshots[i].id, NULL, 10));
  clock_gettime (CLOCK_REALTIME, &ts);
  sn = &s.snapshots[img->nb_snapshots];
  memset (sn, 0, sizeof *sn);
  sn->l1_table_offset = img->l1_table_offset;
  sn->l1_size = img->l1_size;
  sn->date_sec = ts.tv_sec;
  sn->date_nsec = ts.tv_nsec / 1000 * 1000;   /* QEMU's clock has microseconds */
  sn->disk_size = img->size;
  sn->icount = 0;
  sn->extra_size = SNAP_EXTRA_SIZE;
  sn->name = strdup (name);
  sn->extra = calloc (1, SNAP_EXTRA_SIZE);
  if (asprintf (&sn->id, "%lu", id + 1) == -1)
    sn->id = NULL;
  if (!sn->name || !sn->extra || !sn->id) {
    rb_error (ENOMEM, "out of memory");
    return txn_fail (t, &s, img->nb_snapshots + 1);
  }
  if (table_write (t, img, s.snapshots, img->nb_snapshots + 1, &s) == -1)
    return txn_fail (t, &s, img->nb_snapshots + 1);
  return txn_finish (t, &s);
}

int
rb_snapshot_create (struct rb_image *img, const char *name)
{
  return locked (img, create_locked, name);
}

static int
apply_locked (struct rb_image *img, const char *id_or_name)
{
  int idx = find_snapshot (img, id_or_name);
  struct txn_state s = { .snapshots = img->snapshots };
  CLEANUP_FREE uint8_t *buf = malloc (img->cluster_size);
  CLEANUP_FREE uint64_t *sn_l1 = NULL;
  const struct snapshot *sn;
  uint64_t need;
  struct txn *t;

  if (idx < 0)
    return not_found (img, id_or_name);
  if (!buf)
    return rb_error (ENOMEM, "out of memory");
  sn = &img->snapshots[idx];
  s.size = sn->disk_size ? sn->disk_size : img->size;
  if (s.size != img->size && img->version < 3)
    return rb_error (ENOTSUP, "%s: cannot apply snapshot \"%s\" of another disk size to a "
                     "version 2 image", img->path, id_or_name);
  if (s.size != img->size && img->nr_bitmaps)
    return rb_error (ENOTSUP, "%s: cannot change the disk size of an image with persistent "
                     "bitmaps (snapshot \"%s\")", img->path, id_or_name);
  need = DIV_ROUND_UP (s.size, img->cluster_size << img->l2_bits);
  if (sn->l1_size < need)
    return mark_corrupt (img, "snapshot %s's L1 table is too small for its disk size", sn->id);
  s.l1_size = MAX (img->l1_size, sn->l1_size);
  if (!(sn_l1 = read_snapshot_l1 (img, sn, 0)))
    return -1;
  if (!(t = txn_begin (img)))
    return -1;
  /* The guest view may change anywhere: the enabled bitmaps (live since
   * txn_begin marked them in use) record the whole disk (flush.c invariant 8).
   */
  bitmaps_note_write (img, 0, img->size);
  s.l1 = calloc (s.l1_size, 8);
  s.nb_snapshots = img->nb_snapshots;
  s.snapshots_offset = img->snapshots_offset;
  s.snapshots_size = img->snapshots_size;
  if (!s.l1) {
    rb_error (ENOMEM, "out of memory");
    return txn_fail (t, &s, 0);
  }
  if (drop_tables (t, img, img->l1, img->l1_size, buf) == -1 ||
      share_tables (t, img, sn_l1, sn->l1_size, s.l1, buf) == -1 ||
      txn_new_active_l1 (t, &s) == -1)
    return txn_fail (t, &s, 0);
  return txn_finish (t, &s);
}

int
rb_snapshot_apply (struct rb_image *img, const char *id_or_name)
{
  return locked (img, apply_locked, id_or_name);
}

/* After the deltas of a delete: copy every active table whose COPIED marks
 * no longer match the counts, and set each L1 entry's mark (new_l1).
 */
static int
remark_active (struct txn *t, struct rb_image *img, uint64_t *new_l1, uint8_t *buf)
{
  uint64_t i, j, off, rc;

  for (i = 0; i < img->l1_size; i++) {
    bool changed = false;
    if (txn_read_table (t, img->l1[i], buf, &off) == -1)
      return -1;
    new_l1[i] = 0;
    if (off == 0)
      continue;
    for (j = 0; j < img->l2_entries; j++) {
      uint8_t *e = buf + j * img->l2_entry_size;
      uint64_t v = get_be64 (e), host = v & L2E_OFFSET_MASK, want;
      if ((v & QCOW_OFLAG_COMPRESSED) || host == 0)
        continue;
      if (txn_refcount (t, host >> img->cluster_bits, &rc) == -1)
        return -1;
      want = rc == 1 ? QCOW_OFLAG_COPIED : 0;
      if ((v & QCOW_OFLAG_COPIED) != want) {
        put_be64 (e, (v & ~QCOW_OFLAG_COPIED) | want);
        changed = true;
      }
    }
    if (changed) {
      int64_t copy = txn_new_table (t, buf);
      if (copy == -1 || txn_ref (t, off >> img->cluster_bits, -1) == -1)
        return -1;
      new_l1[i] = (uint64_t) copy | QCOW_OFLAG_COPIED;
    }
    else {
      if (txn_refcount (t, off >> img->cluster_bits, &rc) == -1)
        return -1;
      new_l1[i] = off | (rc == 1 ? QCOW_OFLAG_COPIED : 0);
    }
  }
  return 0;
}

static int
delete_locked (struct rb_image *img, const char *id_or_name)
{
  int idx = find_snapshot (img, id_or_name);
  struct txn_state s = { .size = img->size, .l1_size = img->l1_size };
  CLEANUP_FREE uint8_t *buf = malloc (img->cluster_size);
  CLEANUP_FREE uint64_t *sn_l1 = NULL;
  const struct snapshot *sn;
  struct txn *t;

  if (idx < 0)
    return not_found (img, id_or_name);
  if (!buf)
    return rb_error (ENOMEM, "out of memory");
  sn = &img->snapshots[idx];
  if (!(sn_l1 = read_snapshot_l1 (img, sn, 0)))
    return -1;
  if (!(t = txn_begin (img)))
    return -1;
  s.l1 = calloc (MAX (img->l1_size, 1), 8);
  s.snapshots = snapshots_copy (img, idx);
  if (!s.l1 || !s.snapshots) {
    rb_error (ENOMEM, "out of memory");
    return txn_fail (t, &s, img->nb_snapshots - 1);
  }
  if (drop_tables (t, img, sn_l1, sn->l1_size, buf) == -1 ||
      txn_garbage_l1 (t, sn->l1_table_offset, sn->l1_size) == -1 ||
      remark_active (t, img, s.l1, buf) == -1 ||
      txn_new_active_l1 (t, &s) == -1 ||
      table_write (t, img, s.snapshots, img->nb_snapshots - 1, &s) == -1)
    return txn_fail (t, &s, img->nb_snapshots - 1);
  return txn_finish (t, &s);
}

int
rb_snapshot_delete (struct rb_image *img, const char *id_or_name)
{
  return locked (img, delete_locked, id_or_name);
}
