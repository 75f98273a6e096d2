#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# Corrupt L1/L2 entries, compressed clusters and refcount blocks found while serving: the
# request fails with EIO and a message, the rest of the image still reads, nbdkit does not
# crash, a read-only image is never written, and a writable one is marked corrupt.

load helpers
load malformed-helpers

setup () {
  T="$BATS_TEST_TMPDIR"
  IMG="$T/bad.qcow2"
  mk_small_image "$IMG"
}

teardown () {
  stop_rblock_logged
}

# serve_read_only_and_probe: serve $IMG read-only; guest 0 fails with EIO (message in the
# log matching $1), guest 4M still reads 0x33, block status at 0 fails, the file is unchanged.
serve_read_only_and_probe () {
  cp "$IMG" "$T/before.qcow2"
  start_rblock_logged "$IMG" -r
  run nbd_try "$URI" pread 0 512
  [ "$output" = EIO ]
  grep -E -q -- "$1" "$SERVER_LOG" || { cat "$SERVER_LOG"; false; }
  run nbd_read_hex "$URI" $((4 << 20)) 4
  [ "$output" = 33333333 ]
  run nbd_try "$URI" pread $((6 << 20)) 4096       # unallocated, another L2 table
  [ "$output" = ok ]
  run nbd_try "$URI" block_status 0 4096
  [ "$output" = EIO ]
  server_alive
  stop_rblock_logged
  cmp "$IMG" "$T/before.qcow2"
}

@test "an L1 entry past the end of the file: EIO there, the rest reads, the file is untouched" {
  patch_qcow2 "$IMG" l1 0 'COPIED | (eof + 16 * cs)'
  qemu_finds_corruption "$IMG"
  serve_read_only_and_probe 'corrupt image: .*L1 entry 0'
}

@test "an L1 entry that is not cluster aligned: EIO there, the rest reads" {
  patch_qcow2 "$IMG" l1 0 'old + 512'
  qemu_finds_corruption "$IMG"
  serve_read_only_and_probe 'corrupt image: .*L1 entry 0.*align'
}

@test "an L2 entry past the end of the file: EIO there, the rest reads, the file is untouched" {
  patch_qcow2 "$IMG" l2 0 'COPIED | (eof + 16 * cs)'
  qemu_finds_corruption "$IMG"
  serve_read_only_and_probe 'corrupt image: .*L2 entry'
}

@test "an L2 entry that is not cluster aligned: EIO there, the rest reads" {
  patch_qcow2 "$IMG" l2 0 'old + 512'
  qemu_finds_corruption "$IMG"
  serve_read_only_and_probe 'corrupt image: .*L2 entry.*align'
}

@test "a zlib and a zstd compressed cluster holding garbage read as EIO, their neighbours read" {
  head -c 1M /dev/urandom > "$T/src.raw"          # incompressible: stored as normal clusters
  yes rblock | head -c 1M >> "$T/src.raw"         # compressible: compressed clusters
  for ct in zlib zstd; do
    rm -f "$T/c.qcow2"
    qemu-img convert -c -O qcow2 -o compression_type=$ct "$T/src.raw" "$T/c.qcow2"
    host=$(patch_qcow2 "$T/c.qcow2" host $((1 << 20)))
    patch_qcow2 "$T/c.qcow2" poke "$host" ffffffffffffffffffffffffffffffffffffffff
    qemu-io -r -U -c "read 1M 64k" "$T/c.qcow2" | grep -q 'Input/output error'  # oracle
    start_rblock_logged "$T/c.qcow2" -r
    run nbd_try "$URI" pread $((1 << 20)) 65536
    [ "$output" = EIO ]
    grep -q 'corrupt image: .*compressed' "$SERVER_LOG" || { cat "$SERVER_LOG"; false; }
    run nbd_read_hex "$URI" $(((1 << 20) + 65536)) 6           # the next compressed cluster
    [ "$output" = "$(head -c $(((1 << 20) + 65542)) "$T/src.raw" | tail -c 6 | xxd -p)" ]
    run nbd_read_hex "$URI" 4096 8                             # a normal cluster
    [ "$output" = "$(head -c 4104 "$T/src.raw" | tail -c 8 | xxd -p)" ]
    stop_rblock_logged
  done
}

@test "a compressed cluster descriptor past the end of the file reads as EIO" {
  yes rblock | head -c 1M > "$T/src.raw"
  qemu-img convert -c -O qcow2 "$T/src.raw" "$T/c.qcow2"
  # cluster_bits 16: the compressed host offset is the low 54 bits of the L2 entry.
  patch_qcow2 "$T/c.qcow2" l2 65536 'COMPRESSED | (eof + 16 * cs)'
  start_rblock_logged "$T/c.qcow2" -r
  run nbd_try "$URI" pread 65536 512
  [ "$output" = EIO ]
  run nbd_try "$URI" pread 0 512
  [ "$output" = ok ]
  server_alive
}

@test "served read-write, a corrupt L2 entry marks the image corrupt and writes fail with EIO" {
  patch_qcow2 "$IMG" l2 0 'COPIED | (eof + 16 * cs)'
  start_rblock_logged "$IMG"
  run nbd_try "$URI" pread 0 512
  [ "$output" = EIO ]
  run nbd_try "$URI" pwrite $((6 << 20)) 4096 7
  [ "$output" = EIO ]
  run nbd_read_hex "$URI" $((4 << 20)) 4
  [ "$output" = 33333333 ]
  stop_rblock_logged
  # QEMU sees the corrupt bit, as after its own corruption detection.
  qemu-img info "$IMG" | grep -q 'corrupt: true'
  run qemu-io -r -c "read -P 0 6M 4k" "$IMG"
  [[ "$output" != *"Pattern verification failed"* ]]
}

@test "a refcount block past the end of the file: reads work, an allocating write fails with EIO" {
  rt=$(patch_qcow2 "$IMG" get refcount_table_offset)
  patch_qcow2 "$IMG" poke "$rt" "$(printf '%016x' $((1 << 32)))"
  qemu_finds_corruption "$IMG"
  start_rblock_logged "$IMG"
  run nbd_read_hex "$URI" 0 4
  [ "$output" = 5a5a5a5a ]
  run nbd_try "$URI" pwrite $((6 << 20)) 4096 7
  [ "$output" = EIO ]
  grep -q 'corrupt image: .*refcount block' "$SERVER_LOG" || { cat "$SERVER_LOG"; false; }
  server_alive
}

@test "a write to a data cluster that overlaps the L1 table is refused and the L1 table survives" {
  l1=$(patch_qcow2 "$IMG" get l1_table_offset)
  patch_qcow2 "$IMG" l2 0 "COPIED | $l1"
  l1_before=$(xxd -p -s "$l1" -l 32 "$IMG")
  start_rblock_logged "$IMG"
  run nbd_try "$URI" pwrite 0 512 7
  [ "$output" = EIO ]
  grep -q 'metadata' "$SERVER_LOG" || { cat "$SERVER_LOG"; false; }
  run nbd_read_hex "$URI" $((4 << 20)) 4
  [ "$output" = 33333333 ]
  stop_rblock_logged
  [ "$(xxd -p -s "$l1" -l 32 "$IMG")" = "$l1_before" ]
}

@test "a write to a data cluster that is another active L2 table (not in the cache) is refused as QEMU does; the table survives" {
  l1=$(patch_qcow2 "$IMG" get l1_table_offset)
  # L1 entry 2 maps guest 4M..6M (the 0x33 data); point guest cluster 0 at its L2 table.
  l2b=$(python3 -c "import struct; f = open('$IMG', 'rb'); f.seek($l1 + 16); print(struct.unpack('>Q', f.read(8))[0] & 0x00fffffffffffe00)")
  [ "$l2b" -gt 0 ]
  patch_qcow2 "$IMG" l2 0 "COPIED | $l2b"
  # The oracle: QEMU refuses this write (on a copy: it marks the image corrupt).
  cp "$IMG" "$T/qemu.qcow2"
  run qemu-io -c 'write -P 7 0 4k' "$T/qemu.qcow2"
  [[ "$output" == *"Preventing invalid write on metadata (overlaps with active L2 table)"* ]]
  table_before=$(xxd -p -s "$l2b" -l 4096 "$IMG" | md5sum)
  start_rblock_logged "$IMG"
  run nbd_try "$URI" pwrite 0 4096 7
  [ "$output" = EIO ]
  grep -q 'overwrite metadata (an active L2 table)' "$SERVER_LOG" || { cat "$SERVER_LOG"; false; }
  run nbd_read_hex "$URI" $((4 << 20)) 4
  [ "$output" = 33333333 ]
  stop_rblock_logged
  [ "$(xxd -p -s "$l2b" -l 4096 "$IMG" | md5sum)" = "$table_before" ]
  # Marked corrupt, as QEMU marks it.
  qemu-img info --output=json "$IMG" | jq -e '."format-specific".data.corrupt == true'
}

@test "corrupt images served read-only stay byte-for-byte identical after a full read attempt" {
  patch_qcow2 "$IMG" l2 4096 'COPIED | (eof + 16 * cs)' -- l1 2 'old + 512'
  cp "$IMG" "$T/before.qcow2"
  start_rblock_logged "$IMG" -r
  for off in 0 4096 $((4 << 20)) $((6 << 20)); do
    nbd_try "$URI" pread $off 4096 >/dev/null
    nbd_try "$URI" pwrite $off 512 1 >/dev/null
  done
  run nbd_try "$URI" pwrite 0 512 1
  [ "$output" = EPERM ]
  stop_rblock_logged
  cmp "$IMG" "$T/before.qcow2"
}

@test "an extended L2 bitmap marking a subcluster both allocated and zero reads as EIO there" {
  rm -f "$IMG"
  qemu-img create -q -f qcow2 -o extended_l2=on "$IMG" 8M
  qemu-io -c 'write -P 0x61 0 64k' -c 'write -P 0x62 128k 2048' -c 'write -P 0x63 1M 64k' \
    "$IMG" >/dev/null
  patch_qcow2 "$IMG" bitmap 131072 'old | (1 << 32)'      # subcluster 0: alloc and zero
  qemu_finds_corruption "$IMG"
  cp "$IMG" "$T/before.qcow2"
  start_rblock_logged "$IMG" -r
  run nbd_try "$URI" pread 131072 512
  [ "$output" = EIO ]
  grep -q 'corrupt image: .*subcluster' "$SERVER_LOG" || { cat "$SERVER_LOG"; false; }
  run nbd_read_hex "$URI" 0 2
  [ "$output" = 6161 ]
  run nbd_read_hex "$URI" $((1 << 20)) 2
  [ "$output" = 6363 ]
  stop_rblock_logged
  cmp "$IMG" "$T/before.qcow2"
}

@test "a refcount table entry of 0 (no block for the header's range): reads work, an allocating write fails with EIO, only the corrupt bit is written" {
  rt=$(patch_qcow2 "$IMG" get refcount_table_offset)
  patch_qcow2 "$IMG" poke "$rt" 0000000000000000
  qemu_finds_corruption "$IMG"
  cp "$IMG" "$T/before.qcow2"
  start_rblock_logged "$IMG" -r
  run nbd_read_hex "$URI" 0 4
  [ "$output" = 5a5a5a5a ]
  run nbd_read_hex "$URI" $((4 << 20)) 4
  [ "$output" = 33333333 ]
  stop_rblock_logged
  cmp "$IMG" "$T/before.qcow2"
  start_rblock_logged "$IMG"
  run nbd_try "$URI" pwrite $((6 << 20)) 4096 7      # needs a new L2 table and data cluster
  [ "$output" = EIO ]
  grep -q 'corrupt image: .*no refcount block covers the header' "$SERVER_LOG" ||
    { cat "$SERVER_LOG"; false; }
  run nbd_try "$URI" pwrite 0 4096 7                 # in place, but the image is now corrupt
  [ "$output" = EIO ]
  run nbd_read_hex "$URI" 0 4
  [ "$output" = 5a5a5a5a ]
  server_alive
  stop_rblock_logged
  # Nothing written but the corrupt bit: the header cluster and the rest are as they were.
  patch_qcow2 "$T/before.qcow2" set incompatible_features 'old | 2'
  cmp "$IMG" "$T/before.qcow2"
  qemu-img info "$IMG" | grep -q 'corrupt: true'
}
