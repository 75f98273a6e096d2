/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Compressed clusters: raw deflate (window bits 12, as QEMU) and zstd, both directions.
 */
#include <config.h>

#include <errno.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>

#include "internal.h"

/* Decompress exactly out_len bytes from in (which may carry trailing
 * padding) using the image's compression type.  Returns 0, or -1 with EIO.
 */
int
decompress_cluster (struct rb_image *img, const void *in, size_t in_len,
                    void *out, size_t out_len)
{
  if (img->compression_type == QCOW_COMPRESSION_ZLIB) {
    z_stream s;
    int r;

    memset (&s, 0, sizeof s);
    if (inflateInit2 (&s, -12) != Z_OK)
      return rb_error (ENOMEM, "inflateInit2 failed");
    s.next_in = (Bytef *) in;
    s.avail_in = in_len;
    s.next_out = out;
    s.avail_out = out_len;
    r = inflate (&s, Z_FINISH);
    inflateEnd (&s);
    /* QEMU accepts Z_BUF_ERROR when the output is full. */
    if ((r != Z_STREAM_END && r != Z_BUF_ERROR) || s.avail_out != 0)
      return mark_corrupt (img, "compressed cluster does not inflate to %zu bytes", out_len);
    return 0;
  }
  else {
    ZSTD_DCtx *d = ZSTD_createDCtx ();
    ZSTD_inBuffer ib = { in, in_len, 0 };
    ZSTD_outBuffer ob = { out, out_len, 0 };
    size_t r;

    if (!d)
      return rb_error (ENOMEM, "ZSTD_createDCtx failed");
    /* Streaming, so padding after the frame is ignored. */
    do {
      r = ZSTD_decompressStream (d, &ob, &ib);
      if (ZSTD_isError (r))
        break;
    } while (r != 0 && ob.pos < ob.size && ib.pos < ib.size);
    ZSTD_freeDCtx (d);
    if (ZSTD_isError (r) || ob.pos != out_len)
      return mark_corrupt (img, "compressed cluster does not decompress (zstd) to %zu bytes",
                           out_len);
    return 0;
  }
}

/* Compress in_len bytes into out (capacity out_len).  Returns the
 * compressed length, 0 if it would not fit, -1 on error.
 */
ssize_t
compress_buffer (int type, const void *in, size_t in_len, void *out, size_t out_len)
{
  if (type == QCOW_COMPRESSION_ZLIB) {
    z_stream s;
    int r;

    memset (&s, 0, sizeof s);
    if (deflateInit2 (&s, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY) != Z_OK)
      return rb_error (ENOMEM, "deflateInit2 failed");
    s.next_in = (Bytef *) in;
    s.avail_in = in_len;
    s.next_out = out;
    s.avail_out = out_len;
    r = deflate (&s, Z_FINISH);
    deflateEnd (&s);
    if (r != Z_STREAM_END)
      return 0;
    return out_len - s.avail_out;
  }
  else {
    size_t r = ZSTD_compress (out, out_len, in, in_len, 3);
    if (ZSTD_isError (r))
      return 0;
    return r;
  }
}
