# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# Shared by the tools-*.bats suites: a matrix of QEMU-made and rblock-made images to compare tools on.

RB_INFO="$top_builddir/utils/rb-info"
RB_MAP="$top_builddir/utils/rb-map"
RB_CHECK="$top_builddir/utils/rb-check"
RB_CONVERT="$top_builddir/utils/rb-convert"
RB_DELTA="$top_builddir/utils/rb-delta"
RB_DIFF="$top_builddir/utils/rb-diff"
RB_CREATE="$top_builddir/utils/rb-create"
RB_MEASURE="$top_builddir/utils/rb-measure"

# qio IMAGE COMMAND...: qemu-io commands on IMAGE (format probed), quietly.
qio () {
  local img=$1 a=(); shift
  for c in "$@"; do a+=(-c "$c"); done
  qemu-io "${a[@]}" "$img" >/dev/null
}

# make_matrix DIR: build the image matrix in DIR (once per suite) and print
# the images' paths relative to DIR, one a line.  QEMU-made: every kind of
# cluster (data, zero plain and allocated, compressed zlib and zstd,
# extended L2 subclusters), v2, tiny and huge clusters, refcount widths,
# lazy refcounts, internal snapshots, bitmaps, a raw/qcow2 chain in a folder
# with relative names and a longer top, a qcow2 chain with extended L2 over a
# shorter base,
# preallocation metadata/falloc/full, a sparse raw file with a ragged size.
# rblock-made: rb-convert (plain and zstd-compressed) and rb-delta outputs,
# rb-create images (extended L2, preallocated) with rb-bitmap's bitmaps,
# written through the plugin, and rb-snapshot's snapshots.
make_matrix () {
  local d=$1
  if [ -s "$d/list" ]; then cat "$d/list"; return; fi
  mkdir -p "$d/chain"
  (
    set -e
    cd "$d"
    qemu-img create -q -f qcow2 plain.qcow2 4M
    qio plain.qcow2 'write -P 1 0 64k' 'write -P 2 1M 4k' 'write -z 2M 64k' \
      'write -P 3 3M 128k' 'write -z 3M 64k'
    qemu-img create -q -f qcow2 -o compat=0.10 v2.qcow2 2M
    qio v2.qcow2 'write -P 4 64k 64k' 'write -P 5 1M 1k'
    qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=1 c512.qcow2 1M
    qio c512.qcow2 'write -P 6 0 3k' 'write -P 7 700k 1536'
    qemu-img create -q -f qcow2 -o cluster_size=2M,refcount_bits=64 c2m.qcow2 6M
    qio c2m.qcow2 'write -P 8 2M 4k'
    qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=64k extl2.qcow2 2M
    qio extl2.qcow2 'write -P 9 4k 2k' 'write -P 10 64k 6k' 'write -z 68k 2k' 'write -z 512k 64k'
    head -c 1M /dev/urandom > rnd.raw
    base64 -w0 rnd.raw | head -c 1M > txt.raw
    cat txt.raw rnd.raw > mix.raw
    truncate -s 3M mix.raw
    qemu-img convert -q -c -f raw -O qcow2 mix.raw zlib.qcow2
    qemu-img convert -q -c -f raw -O qcow2 -o compression_type=zstd mix.raw zstd.qcow2
    qemu-img create -q -f qcow2 snap.qcow2 2M
    qio snap.qcow2 'write -P 11 0 64k'
    qemu-img snapshot -c first snap.qcow2
    qio snap.qcow2 'write -P 12 0 4k'
    qemu-img snapshot -c 'second, with spaces' snap.qcow2
    qemu-img create -q -f qcow2 bitmap.qcow2 2M
    qemu-img bitmap --add bitmap.qcow2 b0
    qemu-img bitmap --add -g 128k --disable bitmap.qcow2 b1
    qio bitmap.qcow2 'write -P 13 64k 64k'
    qemu-img create -q -f qcow2 -o lazy_refcounts=on lazy.qcow2 1M
    qio lazy.qcow2 'write -P 14 0 4k'
    truncate -s 4M chain/base.raw
    qemu-io -f raw -c 'write -P 15 0 64k' -c 'write -P 16 3M 4k' chain/base.raw >/dev/null
    qemu-img create -q -f qcow2 -b base.raw -F raw chain/mid.qcow2 4M
    qio chain/mid.qcow2 'write -P 17 1M 64k' 'write -z 2M 64k'
    qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 chain/top.qcow2 5M
    qio chain/top.qcow2 'write -P 18 1088k 64k' 'write -c -P 19 128k 64k'
    qemu-img create -q -f qcow2 chain/qbase.qcow2 1M
    qio chain/qbase.qcow2 'write -P 20 0 128k'
    qemu-img create -q -f qcow2 -o extended_l2=on -b qbase.qcow2 -F qcow2 chain/qtop.qcow2 2M
    qio chain/qtop.qcow2 'write -P 21 64k 4k' 'write -P 21 640k 8k'
    for m in metadata falloc full; do
      qemu-img create -q -f qcow2 -o preallocation=$m pre-$m.qcow2 3M
      qio pre-$m.qcow2 'write -P 22 64k 4k'
    done
    truncate -s 4000000 sparse.raw
    qemu-io -f raw -c 'write -P 23 1M 4k' -c 'write -P 24 3999000 1000' sparse.raw >/dev/null
    "$RB_CONVERT" mix.raw r-convert.qcow2
    "$RB_CONVERT" -z zstd -c 128k mix.raw r-zstd.qcow2
    cp mix.raw new.raw
    qemu-io -f raw -c 'write -P 25 512k 8k' -c 'write -z 2M 64k' new.raw >/dev/null
    "$RB_DELTA" mix.raw new.raw r-delta.qcow2
    # Made and written by rblock: rb-create, rb-bitmap, writes, zeros and trims
    # through the plugin (the bitmaps record them).
    "$RB_CREATE" -q -o cluster_size=16k,extended_l2=on r-written.qcow2 3M
    "$top_builddir/utils/rb-bitmap" -q --add r-written.qcow2 rec
    "$top_builddir/utils/rb-bitmap" -q --add -g 256k --disable r-written.qcow2 off
    "$RB_CREATE" -q -o preallocation=metadata,lazy_refcounts=on r-pre.qcow2 2M
    for img in r-written.qcow2 r-pre.qcow2; do
      nbdkit -U - "$RBLOCK_SO" file="$img" --run \
        'qemu-io -f raw -c "write -P 30 0 5k" -c "write -P 31 100k 64k" -c "write -z 1M 64k" \
                 -c "discard 100k 16k" -c "write -P 32 1500k 1k" "$uri"' >/dev/null
      qemu-img check -q "$img"             # what rblock wrote is clean
    done
    # An rb-snapshot chain of snapshots over rblock's writes (one deleted).
    "$RB_CREATE" -q r-snap.qcow2 2M
    for s in one two three; do
      nbdkit -U - "$RBLOCK_SO" file=r-snap.qcow2 --run "qemu-io -f raw -c 'write -P 33 ${#s}00k 64k' \"\$uri\"" >/dev/null
      "$top_builddir/utils/rb-snapshot" -q -c "$s" r-snap.qcow2
    done
    "$top_builddir/utils/rb-snapshot" -q -d two r-snap.qcow2
    qemu-img check -q r-snap.qcow2
    # ... and the bitmaps were stored back, not left in use.
    [ "$(qemu-img info --output=json r-written.qcow2 | jq -c '[."format-specific".data.bitmaps[].flags]')" = '[["auto"],[]]' ]
  ) >&2
  printf '%s\n' plain.qcow2 v2.qcow2 c512.qcow2 c2m.qcow2 extl2.qcow2 zlib.qcow2 zstd.qcow2 \
    snap.qcow2 bitmap.qcow2 lazy.qcow2 chain/base.raw chain/mid.qcow2 chain/top.qcow2 \
    chain/qbase.qcow2 chain/qtop.qcow2     pre-metadata.qcow2 pre-falloc.qcow2 pre-full.qcow2 sparse.raw mix.raw \
    r-convert.qcow2 r-zstd.qcow2 r-delta.qcow2 r-written.qcow2 r-pre.qcow2 r-snap.qcow2 > "$d/list"
  cat "$d/list"
}

# For a suite's setup_file and setup: the matrix in $M (built once), $T the test's folder.
matrix_setup_file () {
  M="$BATS_FILE_TMPDIR/m"
  mkdir -p "$M"
  make_matrix "$M" > /dev/null
}
matrix_setup () {
  M="$BATS_FILE_TMPDIR/m"
  T="$BATS_TEST_TMPDIR"
}
