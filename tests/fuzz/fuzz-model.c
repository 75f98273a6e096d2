/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * libFuzzer target: random operation sequences on a fresh image against a flat-buffer model.
 */
#include <config.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rblock.h"

#define DISK (2u << 20)

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

static uint32_t
take (const uint8_t **p, const uint8_t *end, unsigned n)
{
  uint32_t v = 0;
  while (n-- && *p < end)
    v = (v << 8) | *(*p)++;
  return v;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  static uint8_t model[DISK], buf[DISK];
  static const uint32_t sizes[] = { 512, 4096, 16384, 65536 };
  const uint8_t *p = data, *end = data + size;
  char path[] = "/tmp/rb-fuzzm-XXXXXX";
  struct rb_open_opts o = { .flags = RB_OPEN_NO_LOCK };
  struct rb_create_opts c = { .size = DISK };
  struct rb_check_result r;
  struct rb_image *img;
  uint32_t cfg;
  int fd;

  if (size < 2)
    return 0;
  cfg = take (&p, end, 1);
  c.cluster_size = sizes[cfg & 3];
  c.version = (cfg & 4) ? 2 : 3;
  c.refcount_bits = c.version == 2 ? 16 : 1u << ((cfg >> 3) & 7 % 7);
  if (c.refcount_bits > 64)
    c.refcount_bits = 16;
  c.extended_l2 = c.version == 3 && c.cluster_size >= 16384 && (cfg & 0x80);
  fd = mkstemp (path);
  if (fd == -1)
    abort ();
  close (fd);
  if (rb_create (path, &c, true) == -1) {
    fprintf (stderr, "create: %s\n", rb_errmsg ());
    abort ();
  }
  img = rb_open (path, &o);
  if (!img)
    abort ();
  memset (model, 0, DISK);
  while (p < end) {
    uint32_t op = take (&p, end, 1);
    uint32_t off = take (&p, end, 3) % DISK;
    uint32_t len = take (&p, end, 2) * ((op & 0x10) ? 64 : 1) % (DISK - off) + 1;
    if (off + len > DISK)
      len = DISK - off;
    switch (op % 6) {
    case 0: case 1:
      memset (buf, op, len);
      buf[0] = off;
      if (rb_pwrite (img, buf, len, off, 0) == -1) abort ();
      memcpy (model + off, buf, len);
      break;
    case 2:
      if (rb_zero (img, len, off, (op & 0x20) ? RB_MAY_TRIM : 0) == -1) abort ();
      memset (model + off, 0, len);
      break;
    case 3:
      if (rb_trim (img, len, off, 0) == -1 || rb_pread (img, buf, len, off) == -1) abort ();
      memcpy (model + off, buf, len);       /* trimmed bytes are unspecified */
      break;
    case 4:
      if (rb_flush (img) == -1) abort ();
      break;
    default:
      if (rb_pread (img, buf, len, off) == -1 || memcmp (buf, model + off, len) != 0)
        abort ();
    }
  }
  if (rb_close (img) == -1)
    abort ();
  img = rb_open (path, &o);
  if (!img || rb_pread (img, buf, DISK, 0) == -1 || memcmp (buf, model, DISK) != 0)
    abort ();
  if (rb_check (img, &r, 0) == -1 || r.corruptions || r.leaks) {
    fprintf (stderr, "check: %lu corruptions %lu leaks\n",
             (unsigned long) r.corruptions, (unsigned long) r.leaks);
    abort ();
  }
  rb_close (img);
  unlink (path);
  return 0;
}
