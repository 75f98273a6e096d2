/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * libFuzzer target: open a fuzzed image, read it, map it, check it; then write to it.
 */
#include <config.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rblock.h"

static int
count_extent (void *opaque, uint64_t off, uint64_t len, uint32_t type)
{
  (*(uint64_t *) opaque)++;
  return 0;
}

/* Read the start and the end of the disk, its extents and a few lookups. */
static void
exercise_read (struct rb_image *img)
{
  static char buf[1 << 20];
  uint64_t size = rb_get_size (img), n = 0, off;
  struct rb_mapping m;
  struct rb_check_result r;

  rb_pread (img, buf, size < sizeof buf ? size : sizeof buf, 0);
  if (size > sizeof buf)
    rb_pread (img, buf, sizeof buf, size - sizeof buf);
  rb_extents (img, size < (1ULL << 30) ? size : (1ULL << 30), 0, count_extent, &n);
  for (off = 0; off < size && off < (64ULL << 20); off += (size >> 4) + 4093)
    rb_lookup (img, off, &m);
  rb_check (img, &r, 0);
}

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  char path[] = "/tmp/rb-fuzz-XXXXXX";
  struct rb_open_opts o = { .flags = RB_OPEN_RDONLY | RB_OPEN_NO_LOCK | RB_OPEN_NO_BACKING,
                            .cache_size = 1 << 20 };
  struct rb_image *img;
  int fd = mkstemp (path);

  if (fd == -1 || write (fd, data, size) != (ssize_t) size)
    abort ();
  close (fd);
  img = rb_open (path, &o);
  if (img) {
    exercise_read (img);
    rb_close (img);
    /* The same image writable: a few writes, zeroes and a trim must fail
     * cleanly or succeed; never crash.
     */
    o.flags = RB_OPEN_NO_LOCK | RB_OPEN_NO_BACKING;
    img = rb_open (path, &o);
    if (img) {
      static char buf[70000];
      uint64_t sz = rb_get_size (img);
      memset (buf, 0x5a, sizeof buf);
      if (sz > 0) {
        rb_pwrite (img, buf, sz < 4096 ? sz : 4096, 0, 0);
        rb_pwrite (img, buf, sz < sizeof buf ? sz : sizeof buf, 0, 0);
        rb_zero (img, sz < 65536 ? sz : 65536, 0, RB_MAY_TRIM);
        rb_trim (img, sz, 0, 0);
        rb_pwrite (img, buf, 1, sz - 1, RB_FUA);
        exercise_read (img);
      }
      rb_close (img);
    }
  }
  unlink (path);
  return 0;
}
