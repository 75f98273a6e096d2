#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# rb-convert's data paths: file to file by copy_file_range (-C, or by default where the output's
# file system shares blocks; strace counts the calls), the fallback when the kernel refuses,
# and the read loop (the default on tmpfs and ext4, and for qcow2 and NBD sources) with, on
# ext4, each data run's space reserved before it is written; every output judged by qemu-img
# compare, check and map.

load helpers

RB_CONVERT="$top_builddir/utils/rb-convert"

setup () {
  T="$BATS_TEST_TMPDIR"
  command -v strace > /dev/null || { echo "strace is needed (.ci/packages lists it)"; return 1; }
  SHM_DIR=/dev/shm/rb-convert-copy.$$
}

teardown () {
  stop_rblock
  rm -rf "$SHM_DIR"
  if mountpoint -q "$T/other" 2>/dev/null; then umount "$T/other"; fi
  local d
  for d in xfs ext4 noextents full; do
    if mountpoint -q "$T/$d" 2>/dev/null; then umount "$T/$d"; fi
  done
}

# loop_fs DIR SIZE MKFS...: a file system made by MKFS on a SIZE image, loop-mounted at DIR
# (teardown unmounts it); a skip, saying why, where nothing can be loop-mounted.
loop_fs () {
  local dir=$1 size=$2; shift 2
  truncate -s "$size" "$dir.img"
  "$@" "$dir.img" > /dev/null
  mkdir -p "$dir"
  mount -o loop "$dir.img" "$dir" ||
    skip "no loop-mounted file system here (needs root and /dev/loop*)"
}

# make_source FILE: holes, random data with all-zero runs inside it (4K, 64K, 1M), data
# touching the ends, and an unaligned size whose last partial cluster holds data.
make_source () {
  local f=$1
  truncate -s $((23 * 1048576 + 1234)) "$f"
  dd if=/dev/urandom of="$f" bs=64k count=3 conv=notrunc status=none
  dd if=/dev/urandom of="$f" bs=1M count=6 seek=2 conv=notrunc status=none
  dd if=/dev/zero of="$f" bs=4k count=1 seek=$((2 * 256 + 5)) conv=notrunc status=none
  dd if=/dev/zero of="$f" bs=64k count=1 seek=$((3 * 16 + 3)) conv=notrunc status=none
  dd if=/dev/zero of="$f" bs=1M count=1 seek=5 conv=notrunc status=none
  dd if=/dev/urandom of="$f" bs=1000 count=33 seek=12345 conv=notrunc status=none
  printf 'the last bytes' | dd of="$f" bs=1 seek=$((23 * 1048576 + 1220)) conv=notrunc status=none
}

# traced FILE CMD...: run CMD under strace, counting its data calls into FILE.
traced () {
  local out=$1; shift
  strace -f -qq -e trace=copy_file_range,pwrite64,pwritev,write,fallocate -o "$out" "$@"
}

# reserved_then_written TRACE MIN: every fallocate in TRACE reserves (KEEP_SIZE) the range the
# very next call writes (a pwrite64 of the same offset and length), and they reserve MIN bytes
# or more.
reserved_then_written () {
  sed -nE -e 's/^[0-9]+ +fallocate\([0-9]+, FALLOC_FL_KEEP_SIZE, ([0-9]+), ([0-9]+)\) = 0$/R \1 \2/p' \
    -e 's/^[0-9]+ +pwrite64\([0-9]+, .*, ([0-9]+), ([0-9]+)\) = [0-9]+$/W \2 \1/p' \
    -e 's/^[0-9]+ +(fallocate|pwrite64)\(.*$/X/p' "$1" |
  awk -v min="$2" '
    want != "" { if ($0 != want) { print "reserved " want " then: " $0; bad = 1 } want = "" }
    $1 == "R" { want = "W " $2 " " $3; total += $3 }
    $1 == "X" { print "unexpected call: " NR; bad = 1 }
    END { if (want != "") { print "reserved " want ", never written"; bad = 1 }
          if (total < min) { print "reserved " total " bytes, fewer than " min; bad = 1 }
          exit bad }'
}
count () { grep -c "^[0-9]* *$1(" "$2" || true; }

# assert_same SRC OUT: identical by qemu-img, clean if qcow2.
assert_same () {
  run qemu-img compare "$1" "$2"
  [ "$status" -eq 0 ] || { echo "$output"; return 1; }
  if [[ "$2" == *.qcow2 ]]; then qemu_check_clean "$2"; fi
}

# zero_not_allocated OUT: the 1 MiB zero run at 5M and the hole at 8M..11M hold no data.
zero_not_allocated () {
  [ "$(qemu-img map --output=json "$1" | jq '[.[] | select(.data and .start < 6291456 and .start + .length > 5242880)] | length')" = 0 ] &&
  [ "$(qemu-img map --output=json "$1" | jq '[.[] | select(.data and .start < 11534336 and .start + .length > 8388608)] | length')" = 0 ]
}

# raw_holes FILE SIZE: the [start,length] of what qemu-img map finds not data below SIZE
# (qemu-img also reports the rest of a partial last sector past the end of the file).
raw_holes () {
  qemu-img map -f raw --output=json "$1" | jq -c --argjson n "$2" '[.[] | select((.data | not) and .start < $n) | [.start, .length]]'
}

@test "rb-convert -C: a file source is copied by copy_file_range, no data pwrite, at every cluster size" {
  make_source "$T/src.raw"
  for cs in 512 4K 64K 2M; do
    rm -f "$T/out.qcow2"
    traced "$T/trace" "$RB_CONVERT" -C -c $cs "$T/src.raw" "$T/out.qcow2"
    assert_same "$T/src.raw" "$T/out.qcow2"
    # (2M clusters around the zero runs also hold data.)
    [ $cs = 2M ] || zero_not_allocated "$T/out.qcow2"
    [ "$(count copy_file_range "$T/trace")" -gt 0 ]
    # pwrites are the metadata only: header, L1, refcounts, the L2 tables.
    [ "$(awk '/pwrite64\(/ { n += $NF } END { print n + 0 }' "$T/trace")" -lt $((8 * 1048576)) ]
  done
}

@test "rb-convert -C -O raw: a file source copied by copy_file_range, 4K zero runs left as holes" {
  make_source "$T/src.raw"
  traced "$T/trace" "$RB_CONVERT" -C -O raw "$T/src.raw" "$T/out.raw"
  cmp "$T/src.raw" "$T/out.raw"
  [ "$(count copy_file_range "$T/trace")" -gt 0 ]
  [ "$(count pwrite64 "$T/trace")" -eq 0 ]
  # The 4K zero page inside the data is a hole (as qemu-img convert -S 4k makes it).
  qemu-img convert -f raw -O raw "$T/src.raw" "$T/want.raw"
  size=$(stat -c %s "$T/src.raw")
  [ "$(raw_holes "$T/out.raw" "$size")" = "$(raw_holes "$T/want.raw" "$size")" ]
  [[ "$(raw_holes "$T/out.raw" "$size")" == *"[$((2097152 + 5 * 4096)),4096]"* ]]
}

@test "rb-convert -C: across file systems (copy_file_range refused) the data is written from the mapping" {
  mkdir -p "$T/other"
  mount -t tmpfs -o size=64M tmpfs "$T/other" ||
    skip "no second file system can be mounted here (needs root): cannot test the fallback"
  make_source "$T/other/src.raw"
  traced "$T/trace" "$RB_CONVERT" -C "$T/other/src.raw" "$T/out.qcow2"
  assert_same "$T/other/src.raw" "$T/out.qcow2"
  zero_not_allocated "$T/out.qcow2"
  # One refused try, then plain writes of the data.
  [ "$(grep -c 'copy_file_range(.*EXDEV' "$T/trace")" -eq 1 ]
  [ "$(count copy_file_range "$T/trace")" -eq 1 ]
  [ "$(awk '/pwrite64\(/ { n += $NF } END { print n + 0 }' "$T/trace")" -gt $((5 * 1048576)) ]
  traced "$T/trace" "$RB_CONVERT" -C -O raw "$T/other/src.raw" "$T/out.raw"
  cmp "$T/other/src.raw" "$T/out.raw"
  [ "$(count copy_file_range "$T/trace")" -eq 1 ]
}

@test "rb-convert without -C on tmpfs and ext4: the data read and written, no copy_file_range, the same images" {
  local w fs
  # The whole conversion on each file system: source and outputs (tmpfs's in $SHM_DIR,
  # which teardown removes).
  for w in "$T/default" "$SHM_DIR"; do
    mkdir -p "$w"
    fs=$(stat -f -c %T "$w")
    case $fs in tmpfs|ext2/ext3) ;; *) continue ;; esac
    make_source "$w/src.raw"
    traced "$T/trace" "$RB_CONVERT" "$w/src.raw" "$w/out.qcow2"
    traced "$T/trace-raw" "$RB_CONVERT" -O raw "$w/src.raw" "$w/out.raw"
    "$RB_CONVERT" -C "$w/src.raw" "$w/copied.qcow2"
    assert_same "$w/src.raw" "$w/out.qcow2"
    cmp "$w/src.raw" "$w/out.raw"
    zero_not_allocated "$w/out.qcow2"
    [ "$(count copy_file_range "$T/trace")" -eq 0 ] && [ "$(count copy_file_range "$T/trace-raw")" -eq 0 ] ||
      { echo "$fs: copy_file_range called"; false; }
    # tmpfs: no reservation (its pages would be allocated up front: measured slower).
    if [ "$fs" = tmpfs ]; then
      [ "$(count fallocate "$T/trace")" -eq 0 ] && [ "$(count fallocate "$T/trace-raw")" -eq 0 ] ||
        { echo "tmpfs: fallocate called"; false; }
    fi
    # The data went through pwrite (more than the metadata), and the layout is the kernel copy's.
    [ "$(awk '/pwrite64\(/ { n += $NF } END { print n + 0 }' "$T/trace")" -gt $((5 * 1048576)) ]
    cmp "$w/out.qcow2" "$w/copied.qcow2"
    rm -rf "$w"
  done
}

@test "rb-convert: qcow2 and NBD sources keep the read loop (no copy_file_range) and come out identical" {
  make_source "$T/src.raw"
  qemu-img convert -f raw -O qcow2 -o cluster_size=4k "$T/src.raw" "$T/src.qcow2"
  traced "$T/trace" "$RB_CONVERT" "$T/src.qcow2" "$T/out.qcow2"
  assert_same "$T/src.raw" "$T/out.qcow2"
  zero_not_allocated "$T/out.qcow2"
  [ "$(count copy_file_range "$T/trace")" -eq 0 ]
  traced "$T/trace" "$RB_CONVERT" -O raw "$T/src.qcow2" "$T/out.raw"
  qemu-img convert -O raw "$T/src.qcow2" "$T/want.raw"
  cmp "$T/out.raw" "$T/want.raw"
  [ "$(count copy_file_range "$T/trace")" -eq 0 ]
  start_rblock "$T/src.qcow2" -r
  traced "$T/trace" "$RB_CONVERT" -c 2M "$URI" "$T/nbd.qcow2"
  stop_rblock
  assert_same "$T/src.raw" "$T/nbd.qcow2"
  [ "$(count copy_file_range "$T/trace")" -eq 0 ]
}

@test "rb-convert -z: compression needs the bytes: no copy_file_range, still identical" {
  make_source "$T/src.raw"
  traced "$T/trace" "$RB_CONVERT" -z zstd "$T/src.raw" "$T/out.qcow2"
  assert_same "$T/src.raw" "$T/out.qcow2"
  [ "$(count copy_file_range "$T/trace")" -eq 0 ]
}

@test "rb-convert -S 0: every byte written, holes included (qcow2 fully allocated, raw without holes)" {
  make_source "$T/src.raw"
  "$RB_CONVERT" -S 0 "$T/src.raw" "$T/out.qcow2"
  assert_same "$T/src.raw" "$T/out.qcow2"
  [ "$(qemu-img map --output=json "$T/out.qcow2" | jq '[.[] | select(.data | not)] | length')" = 0 ]
  "$RB_CONVERT" -S 0 -O raw "$T/src.raw" "$T/out.raw"
  cmp "$T/src.raw" "$T/out.raw"
  [ "$(raw_holes "$T/out.raw" "$(stat -c %s "$T/src.raw")")" = "[]" ]
  # The same with a qcow2 source (read loop).
  qemu-img convert -f raw -O qcow2 "$T/src.raw" "$T/src.qcow2"
  "$RB_CONVERT" -S 0 -O raw "$T/src.qcow2" "$T/out2.raw"
  # (The qcow2's guest disk is whole sectors: its raw image is the source, zero-padded.)
  qemu-img convert -O raw "$T/src.qcow2" "$T/want.raw"
  cmp "$T/want.raw" "$T/out2.raw"
  [ "$(raw_holes "$T/out2.raw" "$(stat -c %s "$T/src.raw")")" = "[]" ]
  run "$RB_CONVERT" -S 1000 "$T/src.raw" "$T/bad.qcow2"
  [ "$status" -eq 1 ]
  [[ "$output" == *"--sparse-size"* ]]
}

@test "rb-convert: ENOSPC from the kernel copy is reported, exit 2, nothing left" {
  make_source "$T/src.raw"
  RBLOCK_FAULT=data_write:ENOSPC:after=2 run "$RB_CONVERT" "$T/src.raw" "$T/out.qcow2"
  [ "$status" -eq 2 ]
  [[ "$output" == *"No space left on device"* ]] || { echo "$output"; false; }
  [ ! -e "$T/out.qcow2" ]
  [ -z "$(ls -A "$T" | grep '\.tmp\.' || true)" ]
}

@test "rb-convert: a file source that shrinks under the mapping is an error naming it, not a crash" {
  # The kernel's copy (-C) and the writes from the mapping (the default: the source is in the
  # page cache), to qcow2 and raw, compressed too: the scan of the mapping hits pages past the
  # end (SIGBUS is caught, those pages are read instead), the copy meets the end, or a write
  # from the mapping meets a page that is gone (EFAULT, not "Bad address"); before the 1st,
  # 2nd, 3rd, 5th and 8th mapping.  The conversion fails naming the input.
  local at opt
  head -c 40M /dev/urandom > "$T/src0.raw"
  for at in 1 2 3 5 8; do
    for opt in -C "-C -O raw" "" "-O raw" "-z zlib"; do
      cp "$T/src0.raw" "$T/src.raw"
      # shellcheck disable=SC2086
      RB_SHRINK_FILE="$T/src.raw" RB_SHRINK_AT=$at RB_SHRINK_TO=1048576 \
        LD_PRELOAD="$top_builddir/tests/.libs/shrinkshim.so${LD_PRELOAD:+ $LD_PRELOAD}" \
        run "$RB_CONVERT" $opt "$T/src.raw" "$T/out"
      [ "$status" -eq 2 ] || { echo "$at '$opt': status $status: $output"; false; }
      [ "${#lines[@]}" -eq 1 ]
      [[ "$output" == "rb-convert: $T/src.raw: "*" shr"* ]] || { echo "$at '$opt': $output"; false; }
      [ ! -e "$T/out" ]
      [ -z "$(ls -A "$T" | grep '\.tmp\.' || true)" ]
      [ "$(stat -c %s "$T/src.raw")" -eq 1048576 ]
    done
  done
}

# source_calls TRACE FILE CALL: how many CALLs of FILE's descriptor (strace -y) TRACE holds
# (mmap: the mappings of it, pread64: the reads of whole 4 MiB chunks).
source_calls () {
  case $3 in
    mmap) grep -cE "mmap\(NULL, [0-9]+, PROT_READ, MAP_SHARED, [0-9]+<$2>" "$1" || true ;;
    pread64) grep -cE "pread64\([0-9]+<$2>, .*, 4194304, [0-9]+\) = 4194304" "$1" || true ;;
  esac
}

@test "rb-convert: a file source in the page cache is written from its mapping, one not in it is read" {
  # In the page cache the data goes from the source's mapping to the output (no copy into a
  # buffer: measured faster); a chunk with a page not in it is read (a read reads ahead where
  # faults on a mapping would read page by page: measured faster).  The images are the same.
  local fs
  fs=$(stat -f -c %T "$T")
  command -v fincore > /dev/null || { echo "fincore (util-linux) is needed"; false; }
  head -c 40M /dev/urandom > "$T/src.raw"
  dd if=/dev/zero of="$T/src.raw" bs=1M count=2 seek=9 conv=notrunc status=none
  strace -f -qq -y -e trace=mmap,pread64 -o "$T/trace" "$RB_CONVERT" "$T/src.raw" "$T/cached.qcow2"
  assert_same "$T/src.raw" "$T/cached.qcow2"
  [ "$(source_calls "$T/trace" "$T/src.raw" mmap)" -eq 10 ] || { grep src.raw "$T/trace"; false; }
  [ "$(source_calls "$T/trace" "$T/src.raw" pread64)" -eq 0 ] || { grep src.raw "$T/trace"; false; }
  strace -f -qq -y -e trace=mmap,pread64 -o "$T/trace" "$RB_CONVERT" -O raw "$T/src.raw" "$T/cached.raw"
  cmp "$T/src.raw" "$T/cached.raw"
  [ "$(source_calls "$T/trace" "$T/src.raw" pread64)" -eq 0 ] || { grep src.raw "$T/trace"; false; }
  # Out of the page cache (its clean pages dropped; tmpfs keeps them: that half needs a disk).
  [ "$fs" != tmpfs ] || skip "$T is on tmpfs: its pages cannot leave the page cache"
  sync "$T/src.raw"
  python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$T/src.raw"
  [ "$(fincore -n -b -o RES "$T/src.raw")" -lt $((1 << 20)) ] || { fincore "$T/src.raw"; false; }
  strace -f -qq -y -e trace=mmap,pread64 -o "$T/trace" "$RB_CONVERT" "$T/src.raw" "$T/read.qcow2"
  [ "$(source_calls "$T/trace" "$T/src.raw" pread64)" -ge 1 ] || { grep src.raw "$T/trace"; false; }
  assert_same "$T/src.raw" "$T/read.qcow2"
  cmp "$T/cached.qcow2" "$T/read.qcow2"
}

@test "rb-convert: a source on a full tmpfs whose clusters hold holes is read (not called shrunk, no EFAULT)" {
  # Mapping a hole of a tmpfs file needs a page; a full tmpfs has none (SIGBUS).
  mkdir -p "$T/other"
  mount -t tmpfs -o size=4M tmpfs "$T/other" || { echo "mounting a tmpfs needs root (CI runs as root)"; false; }
  truncate -s 12M "$T/other/src.raw"
  # Data in the 6th page of some clusters (the look for zeros meets the holes before it),
  # in the first page of others (it does not: the write from the mapping meets them).
  for i in $(seq 0 7 180); do
    dd if=/dev/urandom of="$T/other/src.raw" bs=4k count=1 seek=$((i * 16 + (i % 2) * 5)) \
      conv=notrunc status=none
  done
  dd if=/dev/zero of="$T/other/fill" bs=64k status=none 2>/dev/null || true
  [ "$(df --output=avail -k "$T/other" | tail -1)" -eq 0 ]
  "$RB_CONVERT" "$T/other/src.raw" "$T/out.qcow2"
  assert_same "$T/other/src.raw" "$T/out.qcow2"
  "$RB_CONVERT" -O raw -S 64k "$T/other/src.raw" "$T/out.raw"
  cmp "$T/other/src.raw" "$T/out.raw"
}

@test "rb-convert: sources of 0, 1, 511, 512, 513 and 65537 bytes: identical and clean, qcow2 and raw" {
  for n in 0 1 511 512 513 65537; do
    head -c $n /dev/urandom > "$T/s$n.raw"
    "$RB_CONVERT" "$T/s$n.raw" "$T/s$n.qcow2"
    assert_same "$T/s$n.raw" "$T/s$n.qcow2"
    "$RB_CONVERT" -O raw "$T/s$n.raw" "$T/o$n.raw"
    cmp "$T/s$n.raw" "$T/o$n.raw"
  done
  # The empty image is QEMU's: no L1 table.
  [ "$(qemu-img info --output=json "$T/s0.qcow2" | jq '."virtual-size"')" = 0 ]
  qemu-img create -q -f qcow2 "$T/q0.qcow2" 0
  [ "$(stat -c %s "$T/s0.qcow2")" = "$(stat -c %s "$T/q0.qcow2")" ]
}

@test "rb-convert on XFS (reflinks): the output's data shares the source's extents, nothing copied" {
  command -v mkfs.xfs > /dev/null || { echo "mkfs.xfs is needed (.ci/packages lists xfsprogs)"; false; }
  loop_fs "$T/xfs" 320M mkfs.xfs -q -f
  make_source "$T/xfs/src.raw"
  "$RB_CONVERT" "$T/xfs/src.raw" "$T/xfs/out.qcow2"
  "$RB_CONVERT" -O raw "$T/xfs/src.raw" "$T/xfs/out.raw"
  assert_same "$T/xfs/src.raw" "$T/xfs/out.qcow2"
  cmp "$T/xfs/src.raw" "$T/xfs/out.raw"
  # filefrag: the extents flagged shared hold (about) all the data, 5.2 MiB of it.
  for f in out.qcow2 out.raw; do
    shared=$(filefrag -v "$T/xfs/$f" | awk '/shared/ { n += $6 } END { print n * 4096 }')
    [ "$shared" -ge $((5 * 1048576)) ] || { filefrag -v "$T/xfs/$f"; false; }
  done
}

@test "rb-convert onto ext4: each data run's space reserved just before it is written; identical, clean, none left unwritten" {
  loop_fs "$T/ext4" 256M mkfs.ext4 -q -F
  make_source "$T/ext4/src.raw"
  traced "$T/trace" "$RB_CONVERT" "$T/ext4/src.raw" "$T/ext4/out.qcow2"
  traced "$T/trace-raw" "$RB_CONVERT" -O raw "$T/ext4/src.raw" "$T/ext4/out.raw"
  assert_same "$T/ext4/src.raw" "$T/ext4/out.qcow2"
  cmp "$T/ext4/src.raw" "$T/ext4/out.raw"
  zero_not_allocated "$T/ext4/out.qcow2"
  # The source holds 5.2 MiB of data in runs of 1 to 6 MiB (the rest: single clusters).
  reserved_then_written "$T/trace" $((5 * 1048576))
  reserved_then_written "$T/trace-raw" $((5 * 1048576))
  # Nothing reserved and not written: no extent still unwritten once the output is synced,
  # and the raw output's zero runs are holes (no space at all).
  for f in out.qcow2 out.raw; do
    ! filefrag -v "$T/ext4/$f" | grep -q unwritten || { filefrag -v "$T/ext4/$f"; false; }
  done
  [ "$(du -k "$T/ext4/out.raw" | cut -f1)" -lt "$(du -k "$T/ext4/src.raw" | cut -f1)" ]
}

@test "rb-convert onto ext3 (ext4 without extents: no fallocate): one refused reservation, then none; the same images" {
  loop_fs "$T/noextents" 256M mkfs.ext4 -q -F -t ext3
  make_source "$T/src.raw"
  traced "$T/trace" "$RB_CONVERT" "$T/src.raw" "$T/noextents/out.qcow2"
  traced "$T/trace-raw" "$RB_CONVERT" -O raw "$T/src.raw" "$T/noextents/out.raw"
  assert_same "$T/src.raw" "$T/noextents/out.qcow2"
  cmp "$T/src.raw" "$T/noextents/out.raw"
  for t in trace trace-raw; do
    [ "$(count fallocate "$T/$t")" -eq 1 ] && grep -q 'fallocate(.*EOPNOTSUPP' "$T/$t" ||
      { grep fallocate "$T/$t"; false; }
  done
}

@test "rb-convert onto a full ext4: the write's ENOSPC reported, exit 2, nothing left and no space kept" {
  loop_fs "$T/full" 32M mkfs.ext4 -q -F
  make_source "$T/src.raw"
  # Room for about 3 MiB: the first runs' reservations succeed, a later one is refused.
  avail=$(df --output=avail -k "$T/full" | tail -1)
  dd if=/dev/zero of="$T/full/fill" bs=1k count=$((avail - 3072)) status=none
  sync
  avail=$(df --output=avail -k "$T/full" | tail -1)
  for args in "" "-O raw"; do
    # shellcheck disable=SC2086
    run "$RB_CONVERT" $args "$T/src.raw" "$T/full/out"
    [ "$status" -eq 2 ] || { echo "$args: status $status: $output"; false; }
    [ "${#lines[@]}" -eq 1 ] && [[ "$output" == "rb-convert: "*"No space left on device"* ]] ||
      { echo "$args: $output"; false; }
    [ ! -e "$T/full/out" ]
    [ -z "$(ls -A "$T/full" | grep '\.tmp\.' || true)" ]
    sync
    [ "$(df --output=avail -k "$T/full" | tail -1)" -eq "$avail" ] || { df -k "$T/full"; false; }
  done
}
