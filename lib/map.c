/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Guest-to-host mapping in runs: reads, extents and lookup all ask map_run.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>

#include "internal.h"
#include "map.h"

/* Classify one L2 entry (and bitmap) at subcluster sc into a run kind. */
static int
classify (struct rb_image *img, uint64_t entry, uint64_t bitmap, unsigned sc,
          enum run_kind *kind, uint64_t *host, bool *copied)
{
  struct l2_info info;

  if (l2_decode (img, entry, &info) == -1)
    return -1;
  *copied = info.copied;
  *host = 0;
  if (info.kind == L2_COMPRESSED) {
    *kind = RUN_COMPRESSED;
    return 0;
  }
  if (img->extended_l2) {
    enum sc_state st;
    if (l2_subcluster_state (img, entry, bitmap, sc, &st) == -1)
      return -1;
    switch (st) {
    case SC_DATA:
      *kind = RUN_DATA;
      *host = info.host_offset + sc * img->subcluster_size;
      return 0;
    case SC_ZERO:                 /* host offset kept: QEMU's ZERO_ALLOC */
      *kind = RUN_ZERO;
      *host = info.host_offset ? info.host_offset + sc * img->subcluster_size : 0;
      return 0;
    default:                      /* host offset kept: QEMU's UNALLOCATED_ALLOC */
      *kind = RUN_UNALLOC;
      *host = info.host_offset ? info.host_offset + sc * img->subcluster_size : 0;
      return 0;
    }
  }
  switch (info.kind) {
  case L2_DATA: *kind = RUN_DATA; *host = info.host_offset; return 0;
  case L2_ZERO_PLAIN: *kind = RUN_ZERO; return 0;
  case L2_ZERO_ALLOC: *kind = RUN_ZERO; *host = info.host_offset; return 0;
  default: *kind = RUN_UNALLOC; return 0;
  }
}

/* Find the longest run of guest bytes starting at guest_offset, at most
 * max_len long, that map the same way (for DATA: to contiguous host bytes
 * with the same copied flag).  Runs stop at L2 table boundaries.  Called
 * under meta_lock.  Returns 0 / -1.
 */
int
map_run (struct rb_image *img, uint64_t guest_offset, uint64_t max_len, struct run *r)
{
  uint64_t gc = guest_offset >> img->cluster_bits;
  uint64_t l1_index = gc >> img->l2_bits;
  uint64_t unit = img->subcluster_size;      /* granularity of mapping */
  uint64_t table_end = (l1_index + 1) << (img->l2_bits + img->cluster_bits);
  uint64_t end = MIN (guest_offset + max_len, MIN (table_end, img->size));
  uint64_t l2_off, pos;
  uint8_t *table;
  bool first = true;

  r->guest_offset = guest_offset;
  r->length = 0;
  r->kind = RUN_UNALLOC;
  r->host_offset = 0;
  r->l2_entry = 0;
  r->copied = false;
  r->l2_table_offset = 0;

  if (l1_index >= img->l1_size) {
    r->length = end - guest_offset;
    return 0;
  }
  if (l1_get_l2_offset (img, l1_index, &l2_off) == -1)
    return -1;
  if (l2_off == 0) {
    r->length = end - guest_offset;
    return 0;
  }
  r->l2_table_offset = l2_off;
  table = cache_get (img->l2_cache, l2_off, false);
  if (!table)
    return -1;

  pos = guest_offset;
  while (pos < end) {
    uint64_t c = pos >> img->cluster_bits;
    uint64_t idx = c & (img->l2_entries - 1);
    uint64_t entry = get_be64 (table + idx * img->l2_entry_size);
    uint64_t bitmap = img->extended_l2 ? get_be64 (table + idx * img->l2_entry_size + 8) : 0;
    unsigned sc = (pos & (img->cluster_size - 1)) / unit;
    uint64_t unit_end = MIN (ROUND_DOWN (pos, unit) + unit, end);
    enum run_kind kind;
    uint64_t host;
    bool copied;

    if (classify (img, entry, bitmap, sc, &kind, &host, &copied) == -1) {
      cache_put (img->l2_cache, l2_off);
      return -1;
    }
    if (host)
      host += pos & (unit - 1);
    if (first) {
      r->kind = kind;
      r->host_offset = host;
      r->copied = copied;
      r->l2_entry = entry;
      first = false;
    }
    else if (kind != r->kind || kind == RUN_COMPRESSED ||
             (kind == RUN_DATA && copied != r->copied) ||
             (host != 0) != (r->host_offset != 0) ||
             (host && host != r->host_offset + r->length))
      break;
    /* Compressed clusters are one run each. */
    if (kind == RUN_COMPRESSED)
      unit_end = MIN (ROUND_DOWN (pos, img->cluster_size) + img->cluster_size, end);
    r->length += unit_end - pos;
    pos = unit_end;
  }
  cache_put (img->l2_cache, l2_off);
  return 0;
}
