/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * libFuzzer target: the streaming writer (rb-convert, rb-delta) on fuzzed data and options; the
 * engine must read back exactly what was written and rb_check must find nothing.
 */
#include <config.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rblock.h"

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  static const uint32_t sizes[] = { 512, 4096, 16384, 65536 };
  static const uint32_t rbits[] = { 1, 2, 4, 8, 16, 32, 64, 16 };
  char path[] = "/tmp/rb-fuzzw-XXXXXX";
  struct rb_create_opts o = { 0 };
  struct rb_open_opts ro = { .flags = RB_OPEN_RDONLY | RB_OPEN_NO_LOCK };
  struct rb_check_result r;
  struct rb_writer *w;
  struct rb_image *img;
  uint8_t *model, *back, *cl;
  uint64_t disk, cs, gc, n;
  bool compress;
  int fd;

  if (size < 3)
    return 0;
  o.cluster_size = sizes[data[0] & 3];
  o.version = (data[0] & 4) ? 2 : 3;
  o.refcount_bits = o.version == 2 ? 16 : rbits[(data[0] >> 3) & 7];
  o.extended_l2 = o.version == 3 && o.cluster_size >= 16384 && (data[0] & 0x40);
  compress = (data[0] & 0x80) && !o.extended_l2;
  o.compression_type = compress && o.version == 3 && (data[1] & 1);
  data += 2;
  size -= 2;
  cs = o.cluster_size;
  disk = (size + 511) / 512 * 512;
  o.size = disk;
  model = calloc (1, disk);
  back = malloc (disk);
  cl = calloc (1, cs);
  if (!model || !back || !cl)
    abort ();
  memcpy (model, data, size);

  fd = mkstemp (path);
  if (fd == -1)
    abort ();
  close (fd);
  w = rb_writer_new (path, &o, true, (disk + cs - 1) / cs, compress);
  if (!w) {
    fprintf (stderr, "writer: %s\n", rb_errmsg ());
    abort ();
  }
  for (gc = 0; gc * cs < disk; gc++) {
    uint32_t alloc = 0, zero = 0;
    n = disk - gc * cs < cs ? disk - gc * cs : cs;
    memset (cl, 0, cs);
    memcpy (cl, model + gc * cs, n);
    if (o.extended_l2) {
      /* Subclusters with data are allocated; empty ones zero or left alone. */
      uint64_t scs = cs / 32, s;
      for (s = 0; s < 32; s++) {
        uint64_t i;
        bool nz = false;
        for (i = 0; i < scs; i++)
          nz |= cl[s * scs + i] != 0;
        if (nz)
          alloc |= 1u << s;
        else if (cl[0] & 1)
          zero |= 1u << s;
      }
    }
    else {
      uint64_t i;
      bool nz = false;
      for (i = 0; i < cs; i++)
        nz |= cl[i] != 0;
      alloc = nz;
      zero = !nz && o.version == 3 && (gc & 1);
    }
    if (rb_writer_put (w, gc, cl, alloc, zero) == -1) {
      fprintf (stderr, "put: %s\n", rb_errmsg ());
      abort ();
    }
  }
  if (rb_writer_finish (w) == -1) {
    fprintf (stderr, "finish: %s\n", rb_errmsg ());
    abort ();
  }
  img = rb_open (path, &ro);
  if (!img || rb_pread (img, back, disk, 0) == -1 || memcmp (back, model, disk) != 0) {
    fprintf (stderr, "read back: %s\n", img ? "differs" : rb_errmsg ());
    abort ();
  }
  if (rb_check (img, &r, 0) == -1 || r.corruptions || r.leaks) {
    fprintf (stderr, "check: %lu corruptions, %lu leaks\n",
             (unsigned long) r.corruptions, (unsigned long) r.leaks);
    abort ();
  }
  rb_close (img);
  unlink (path);
  free (model);
  free (back);
  free (cl);
  return 0;
}
