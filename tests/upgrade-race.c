/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * rb_make_writable while other threads read: readers never fail nor see wrong bytes.
 *
 * upgrade-race IMAGE: IMAGE's guest byte at offset o must be (o / 65536) % 251 + 1 (the
 * first 8 MiB; the test writes it with qemu-io).  Opens it read-only, starts four readers
 * that check random ranges, upgrades once every reader has read, writes the same pattern
 * into the next 8 MiB while the readers go on, and stops once every reader has read after
 * the upgrade.  Exit 0 if all reads were right, 1 otherwise, 2 on an engine error.
 */
#include <config.h>

#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rblock.h"

#define NR_READERS 4
#define AREA (8u << 20)

static struct rb_image *img;
static unsigned long reads[NR_READERS];   /* atomic */
static int stop, failed;                  /* atomic */

static unsigned char
expected (uint64_t off)
{
  return (off / 65536) % 251 + 1;
}

/* Read random ranges of the first 8 MiB and check each byte, until stop. */
static void *
reader (void *arg)
{
  unsigned id = (unsigned) (uintptr_t) arg, seed = id * 7919 + 1;
  static __thread unsigned char buf[256 << 10];

  while (!__atomic_load_n (&stop, __ATOMIC_ACQUIRE)) {
    uint64_t len = 1 + rand_r (&seed) % sizeof buf;
    uint64_t off = rand_r (&seed) % (AREA - len);
    uint64_t i;

    if (rb_pread (img, buf, len, off) == -1) {
      fprintf (stderr, "reader %u: pread %lu at %lu: %s\n", id, (unsigned long) len,
               (unsigned long) off, rb_errmsg ());
      __atomic_store_n (&failed, 1, __ATOMIC_RELEASE);
      break;
    }
    for (i = 0; i < len; i++)
      if (buf[i] != expected (off + i)) {
        fprintf (stderr, "reader %u: wrong byte at %lu\n", id, (unsigned long) (off + i));
        __atomic_store_n (&failed, 1, __ATOMIC_RELEASE);
        break;
      }
    __atomic_add_fetch (&reads[id], 1, __ATOMIC_RELEASE);
  }
  return NULL;
}

/* Wait until every reader has done more than since[] reads (or one failed). */
static void
wait_reads (const unsigned long *since)
{
  unsigned i;

  for (i = 0; i < NR_READERS; i++)
    while (__atomic_load_n (&reads[i], __ATOMIC_ACQUIRE) <= since[i] &&
           !__atomic_load_n (&failed, __ATOMIC_ACQUIRE))
      sched_yield ();
}

int
main (int argc, char **argv)
{
  struct rb_open_opts o = { .flags = RB_OPEN_RDONLY };
  pthread_t th[NR_READERS];
  unsigned long none[NR_READERS] = { 0 }, before[NR_READERS];
  static unsigned char chunk[65536];
  uint64_t off;
  unsigned i;
  int ret = 0;

  if (argc != 2) {
    fprintf (stderr, "usage: upgrade-race IMAGE\n");
    return 2;
  }
  img = rb_open (argv[1], &o);
  if (!img || !rb_is_readonly (img)) {
    fprintf (stderr, "upgrade-race: %s\n", rb_errmsg ());
    return 2;
  }
  for (i = 0; i < NR_READERS; i++)
    pthread_create (&th[i], NULL, reader, (void *) (uintptr_t) i);
  wait_reads (none);
  if (rb_make_writable (img) == -1 || rb_is_readonly (img)) {
    fprintf (stderr, "upgrade-race: rb_make_writable: %s\n", rb_errmsg ());
    ret = 2;
  }
  for (i = 0; i < NR_READERS; i++)
    before[i] = __atomic_load_n (&reads[i], __ATOMIC_ACQUIRE);
  for (off = AREA; ret == 0 && off < 2 * AREA; off += sizeof chunk) {
    memset (chunk, expected (off), sizeof chunk);
    if (rb_pwrite (img, chunk, sizeof chunk, off, 0) == -1) {
      fprintf (stderr, "upgrade-race: pwrite: %s\n", rb_errmsg ());
      ret = 2;
    }
  }
  wait_reads (before);
  __atomic_store_n (&stop, 1, __ATOMIC_RELEASE);
  for (i = 0; i < NR_READERS; i++)
    pthread_join (th[i], NULL);
  if (rb_close (img) == -1) {
    fprintf (stderr, "upgrade-race: close: %s\n", rb_errmsg ());
    ret = 2;
  }
  if (ret == 0 && failed)
    ret = 1;
  return ret;
}
