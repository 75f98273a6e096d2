#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# nbdkit's conventions: cache=default|none and metadata-cache=SIZE, the block size nbdkit
# really serves, --dump-plugin capability lines, the export description.

load helpers

setup () {
  T="$BATS_TEST_TMPDIR"
}

teardown () {
  stop_rblock
}

# resident FILE: bytes of FILE in the page cache.
resident () {
  fincore -b -n -o RES "$1"
}

# evict FILE: write it back and drop it from the page cache.
evict () {
  sync "$1"
  dd if="$1" iflag=nocache count=0 status=none
  [ "$(resident "$1")" -lt $((1 << 20)) ]
}

@test "--dump-plugin prints rblock_* capability lines, and the claims hold: zstd and extended L2 images are served" {
  nbdkit "$RBLOCK_SO" --dump-plugin > "$T/dump"
  for want in rblock_zlib=yes rblock_zstd=yes rblock_extended_l2=yes rblock_rpc=yes \
              rblock_cache_none=yes rblock_backing=qcow2,raw rblock_snapshot=read-only \
              rblock_max_request=67108864; do
    grep -qx "$want" "$T/dump" || { echo "missing $want"; cat "$T/dump"; false; }
  done
  grep -qx 'rblock_bitmaps=maintained' "$T/dump"
  # Every line is key=value, as nbdkit's own.
  ! grep -v '^[a-z_0-9]*=' "$T/dump"
  head -c 3M /dev/urandom > "$T/r.raw"
  head -c 1M /dev/zero >> "$T/r.raw"
  qemu-img convert -c -O qcow2 -o compression_type=zstd "$T/r.raw" "$T/z.qcow2"
  qemu-img info "$T/z.qcow2" | grep -q 'compression type: zstd'
  qemu-img convert -O qcow2 -o extended_l2=on,cluster_size=128k "$T/r.raw" "$T/x.qcow2"
  for img in "$T/z.qcow2" "$T/x.qcow2"; do
    start_rblock "$img" -r
    assert_served_equals_qemu "$img"
    stop_rblock
  done
}

# nbdkit 1.32 answers a read or write over 64 MiB with ENOMEM; libnbd refuses to send one
# (ERANGE), so the limit is checked as advertised, and 64 MiB itself must work.
@test "the advertised maximum block size is what nbdkit 1.32 serves (64 MiB), and 64 MiB reads and writes work" {
  qemu-img create -q -f qcow2 "$T/b.qcow2" 80M
  start_rblock "$T/b.qcow2"
  [ "$(nbdinfo --json "$URI" | jq '.exports[0].block_size_maximum')" = 67108864 ]
  nbdsh -u "$URI" -c '
buf = bytes(range(256)) * (64 << 12)
h.pwrite(buf, 4096)
assert h.pread(64 << 20, 4096) == buf
'
  stop_rblock
  qemu_check_clean "$T/b.qcow2"
}

@test "the export description names the format, virtual size, cluster size, backing chain and snapshot" {
  qemu-img create -q -f raw "$T/base.raw" 8M
  qemu-img create -q -f qcow2 -o cluster_size=4096 -b "$T/base.raw" -F raw "$T/mid.qcow2"
  qemu-img create -q -f qcow2 -o compat=0.10 -b mid.qcow2 -F qcow2 "$T/top.qcow2" 16M
  start_rblock "$T/top.qcow2" -r
  [ "$(nbdinfo --json "$URI" | jq -r '.exports[0].description')" = \
    "qcow2 v2 (compat 0.10), virtual size 16777216 bytes, cluster size 65536; backing: $T/mid.qcow2 (qcow2), $T/base.raw (raw)" ]
  stop_rblock
  qemu-img snapshot -c snap1 "$T/mid.qcow2"
  start_rblock "$T/mid.qcow2" snapshot=snap1
  [ "$(nbdinfo --json "$URI" | jq -r '.exports[0].description')" = \
    "qcow2 v3 (compat 1.1), virtual size 8388608 bytes, cluster size 4096, internal snapshot snap1; backing: $T/base.raw (raw)" ]
}

@test "metadata-cache=SIZE sizes the metadata cache; cache=SIZE still works, with a deprecation warning; bad values are refused in one line" {
  # 512-byte clusters: 8 MiB of data needs 256 L2 tables; 64K of cache holds 96.
  qemu-img create -q -f qcow2 -o cluster_size=512 "$T/c.qcow2" 64M
  qemu-io -c 'write -P 7 0 4M' -c 'write -P 8 40M 4M' "$T/c.qcow2" > /dev/null
  qemu-img convert -O raw "$T/c.qcow2" "$T/want.raw"
  for p in metadata-cache=64K cache=64K metadata-cache=1G; do
    start_rblock "$T/c.qcow2" "$p" rpc="unix:$T/rpc.sock"
    for i in 1 2; do
      nbdcopy "$URI" "$T/got.raw"
      cmp "$T/got.raw" "$T/want.raw"
      misses[$i]=$(printf '%s' '{"method":"stats","id":1}' | timeout 10 nc -N -U "$T/rpc.sock" |
                   jq .result.engine.cache_misses)
    done
    second=$((misses[2] - misses[1]))
    echo "# $p: ${misses[1]} cache misses reading once, $second more reading again" >&3
    if [ "$p" = metadata-cache=1G ]; then [ "$second" -eq 0 ]; else [ "$second" -ge 100 ]; fi
    if [ "$p" = cache=64K ]; then
      grep -q 'warning: cache=64K: a size here is deprecated, use metadata-cache=64K' "$T/nbdkit.err"
    else
      ! grep -q deprecated "$T/nbdkit.err"
    fi
    stop_rblock
  done
  for p in cache=sometimes metadata-cache=lots; do
    run nbdkit -U "$T/x.sock" "$RBLOCK_SO" file="$T/c.qcow2" "$p" --run true
    [ "$status" -ne 0 ]
    [ "$(grep -c error <<< "$output")" -eq 1 ]
    [[ "$output" == *"${p#*=}"* ]]
  done
}

@test "cache=none keeps guest data out of the page cache (fincore); cache=default keeps it" {
  head -c 32M /dev/urandom > "$T/data.raw"
  qemu-img convert -O qcow2 "$T/data.raw" "$T/n.qcow2"
  for mode in none default; do
    evict "$T/n.qcow2"
    start_rblock "$T/n.qcow2" cache=$mode
    nbdcopy "$URI" "$T/got.raw"
    cmp "$T/got.raw" "$T/data.raw"
    res=$(resident "$T/n.qcow2")
    echo "# cache=$mode: $res bytes resident after reading 32 MiB" >&3
    if [ $mode = none ]; then [ "$res" -lt $((4 << 20)) ]; else [ "$res" -gt $((28 << 20)) ]; fi
    stop_rblock
  done
  # Writes: the cache holds at most the last few requests.
  for mode in none default; do
    rm -f "$T/w.qcow2"
    qemu-img create -q -f qcow2 "$T/w.qcow2" 32M
    start_rblock "$T/w.qcow2" cache=$mode
    nbdcopy "$T/data.raw" "$URI"
    res=$(resident "$T/w.qcow2")
    echo "# cache=$mode: $res bytes resident after writing 32 MiB" >&3
    if [ $mode = none ]; then [ "$res" -lt $((8 << 20)) ]; else [ "$res" -gt $((28 << 20)) ]; fi
    stop_rblock
    qemu_check_clean "$T/w.qcow2"
    qemu-img compare "$T/w.qcow2" "$T/data.raw"
  done
}
