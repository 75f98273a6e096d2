/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * libFuzzer target: write/zero/trim/flush/extents sequences through the plugin's callbacks on a fuzzed image.
 */
#include <config.h>

#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The plugin itself, callbacks and all, in this translation unit: the
 * target drives the same functions nbdkit calls.
 */
#include "../../plugin/rblock-plugin.c"
#include "../../plugin/exports.c"

/* ---- the parts of nbdkit the plugin calls ---- */
struct nbdkit_extents {
  uint64_t n, next;                /* extents added, end of the last one */
  uint64_t offset;                 /* start of the request */
};

void
nbdkit_error (const char *fs, ...)
{
}

void
nbdkit_set_error (int err)
{
}

void
nbdkit_debug (const char *fs, ...)
{
}

const char *
nbdkit_strdup_intern (const char *str)
{
  return str;
}

const char *
nbdkit_export_name (void)
{
  return "";
}

int
nbdkit_add_export (struct nbdkit_exports *list, const char *name, const char *description)
{
  return 0;
}

char *
nbdkit_realpath (const char *path)
{
  return realpath (path, NULL);
}

int64_t
nbdkit_parse_size (const char *str)
{
  return strtoll (str, NULL, 10);
}

int
nbdkit_parse_bool (const char *str)
{
  return strcmp (str, "true") == 0;
}

int
nbdkit_add_extent (struct nbdkit_extents *e, uint64_t offset, uint64_t length, uint32_t type)
{
  /* Extents come in order, contiguous, from the request's start. */
  if (length == 0 || (e->n == 0 && offset != e->offset) || (e->n && offset != e->next))
    abort ();
  e->n++;
  e->next = offset + length;
  return 0;
}

/* ---- the target ---- */
#define MODEL_MAX (8u << 20)       /* guest sizes up to this are checked against a model */

static uint64_t
le (const uint8_t *p, int n)
{
  uint64_t v = 0;
  while (n--)
    v = v << 8 | p[n];
  return v;
}

/* Clear the backing file name: a fuzzed name could be a FIFO or a terminal. */
static void
drop_backing (uint8_t *img, size_t size)
{
  if (size >= 20 && memcmp (img, "QFI\xfb", 4) == 0)
    memset (img + 8, 0, 12);       /* backing_file_offset, backing_file_size */
}

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

/* Input: 2 bytes (le16) of operation bytes, the operations (8 bytes each),
 * then the image.  Operation: kind, flags, count (le16 * 8 + low bits),
 * offset (le32 scaled onto the disk).
 */
int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  static uint8_t buf[1 << 20], model_buf[1 << 20];
  char path[] = "/tmp/rb-fuzz-plugin-XXXXXX";
  struct rb_open_opts o = { .flags = RB_OPEN_NO_LOCK | RB_OPEN_NO_BACKING, .cache_size = 1 << 20 };
  struct rb_check_result before, after;
  struct rb_image *img;
  void *h;
  size_t ops_len, i;
  uint8_t *copy, *model = NULL;
  uint64_t disk;
  bool clean;
  int fd;

  if (size < 2)
    return 0;
  ops_len = le (data, 2) % (size - 1);
  ops_len -= ops_len % 8;
  copy = malloc (size - 2 - ops_len + 1);
  if (!copy)
    abort ();
  memcpy (copy, data + 2 + ops_len, size - 2 - ops_len);
  drop_backing (copy, size - 2 - ops_len);
  fd = mkstemp (path);
  if (fd == -1 || write (fd, copy, size - 2 - ops_len) != (ssize_t) (size - 2 - ops_len))
    abort ();
  close (fd);
  free (copy);

  if (plugin.config ("file", path) == -1 || plugin.config_complete () == -1)
    abort ();
  /* What get_ready and a writable connection's open do, without the locks and the chain. */
  if (!export_open_file (path, &o) || !(h = plugin.open (0)))
    goto out;
  img = IMG (h);
  disk = plugin.get_size (h);
  clean = rb_check (img, &before, 0) == 0 && before.corruptions == 0 && before.check_errors == 0;
  /* On a clean, small image every read must agree with a model of the disk. */
  if (clean && disk <= MODEL_MAX && (model = malloc (disk ? disk : 1)) &&
      plugin.pread (h, model, disk, 0, 0) == -1) {
    free (model);
    model = NULL;
  }

  for (i = 0; i + 8 <= ops_len; i += 8) {
    const uint8_t *op = data + 2 + i;
    uint32_t count = (le (op + 2, 2) * 8 + (op[1] >> 5)) % sizeof buf + 1;
    uint64_t offset = disk ? le (op + 4, 4) * 512 % disk : 0;
    uint32_t flags = (op[1] & 1 ? NBDKIT_FLAG_FUA : 0) | (op[1] & 2 ? NBDKIT_FLAG_MAY_TRIM : 0) |
      (op[1] & 4 ? NBDKIT_FLAG_FAST_ZERO : 0) | (op[1] & 8 ? NBDKIT_FLAG_REQ_ONE : 0);
    bool ok;

    if (disk == 0)
      break;
    if (count > disk - offset)
      count = disk - offset;
    switch (op[0] % 6) {
    case 0:
      if (plugin.pread (h, buf, count, offset, 0) == 0 && model &&
          memcmp (buf, model + offset, count) != 0)
        abort ();                  /* read back something else than was written */
      break;
    case 1:
      memset (buf, op[1] | 1, count);
      ok = plugin.pwrite (h, buf, count, offset, flags & NBDKIT_FLAG_FUA) == 0;
      if (model && ok)
        memcpy (model + offset, buf, count);
      else if (model)
        goto stop_model;           /* after a failed write the model knows nothing */
      break;
    case 2:
      ok = plugin.zero (h, count, offset, flags & ~NBDKIT_FLAG_REQ_ONE) == 0;
      if (model && ok)
        memset (model + offset, 0, count);
      else if (model && !(flags & NBDKIT_FLAG_FAST_ZERO))
        goto stop_model;
      break;
    case 3:
      /* Trimmed bytes read as anything: afterwards the model takes what is read. */
      if (plugin.trim (h, count, offset, flags & NBDKIT_FLAG_FUA) == 0 && model) {
        if (plugin.pread (h, model_buf, count, offset, 0) == -1)
          goto stop_model;
        memcpy (model + offset, model_buf, count);
      }
      else if (model)
        goto stop_model;
      break;
    case 4:
      plugin.flush (h, 0);
      break;
    case 5: {
      struct nbdkit_extents e = { 0, offset, offset };
      if (plugin.extents (h, count, offset, flags & NBDKIT_FLAG_REQ_ONE, &e) == 0 && e.n == 0)
        abort ();                  /* success with no extent */
      break;
    }
    }
    continue;
  stop_model:
    free (model);
    model = NULL;
  }

  /* Whatever was done to a clean image leaves it free of corruption. */
  if (clean && plugin.flush (h, 0) == 0 && rb_check (img, &after, 0) == 0 &&
      after.corruptions != 0)
    abort ();
  free (model);
  plugin.close (h);
 out:
  plugin.cleanup ();
  plugin.unload ();
  filename = NULL;
  directory = NULL;
  snapshot = NULL;
  rpc_listen = NULL;
  unlink (path);
  return 0;
}
