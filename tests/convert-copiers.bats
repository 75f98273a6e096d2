#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# rb-convert's copier threads (RBLOCK_THREADS; the kernel copies the data with -C): a source of hundreds of scattered data runs
# comes out the same with 1 and 3 threads (qemu-img compare, check, and byte for byte), the
# copies after the first are made off the main thread, and a copy failing in a copier thread
# (ENOSPC, EIO) is one line, exit 2, no output left.

load helpers

RB_CONVERT="$top_builddir/utils/rb-convert"

setup () {
  T="$BATS_TEST_TMPDIR"
  command -v strace > /dev/null || { echo "strace is needed (.ci/packages lists it)"; return 1; }
}

teardown () {
  if mountpoint -q "$T/small" 2>/dev/null; then umount "$T/small"; fi
}

# scattered FILE MIB N: a MIB MiB sparse file with N data extents of 4 KiB to 200 KiB at
# pseudo-random places (fixed seed), every fifth with a 64 KiB zero run in its middle, and
# data in the last bytes.
scattered () {
  local f=$1 mib=$2 n=$3
  truncate -s $((mib * 1048576 - 777)) "$f"
  head -c $((n * 204800)) /dev/urandom > "$T/scatter.rand"
  awk -v n="$n" -v mib="$mib" 'BEGIN { srand(7); for (i = 0; i < n; i++)
      print int(rand() * (mib * 256 - 64)) * 4096, (1 + int(rand() * 50)) * 4096, i }' |
  while read -r off len i; do
    dd if="$T/scatter.rand" of="$f" bs=4096 skip=$((i * 50)) seek=$((off / 4096)) count=$((len / 4096)) \
      conv=notrunc status=none
    [ $((i % 5)) != 0 ] || dd if=/dev/zero of="$f" bs=4096 seek=$((off / 4096 + 8)) count=16 \
      conv=notrunc status=none
  done
  printf 'the end' | dd of="$f" bs=1 seek=$((mib * 1048576 - 784)) conv=notrunc status=none
  rm -f "$T/scatter.rand"
}

# copy_threads TRACE: "main copier-copies copier-threads": copy_file_range calls made by the
# main thread (the traced process's first pid), by other threads, and how many threads
# (a call strace splits, "unfinished ..." then "resumed", is counted at its start).
copy_threads () {
  awk 'NR == 1 { main = $1 } / copy_file_range\(/ { if ($1 == main) m++; else { o++; t[$1] = 1 } }
       END { n = 0; for (k in t) n++; print m + 0, o + 0, n }' "$1"
}

@test "rb-convert: hundreds of scattered data runs, 1 and 3 copier threads: the same images, qcow2 and raw" {
  scattered "$T/src.raw" 48 400
  for cs in 4K 64K 2M; do
    for n in 1 3; do
      RBLOCK_THREADS=$n strace -f -qq -e trace=execve,copy_file_range -o "$T/trace$n" \
        "$RB_CONVERT" -C -c $cs "$T/src.raw" "$T/t$n.qcow2"
      run qemu-img compare "$T/src.raw" "$T/t$n.qcow2"
      [ "$status" -eq 0 ] || { echo "-c $cs, $n threads: $output"; false; }
      qemu_check_clean "$T/t$n.qcow2"
    done
    # The layout is decided in order: the files are the same, byte for byte.
    cmp "$T/t1.qcow2" "$T/t3.qcow2"
    [ "$(qemu-img map --output=json "$T/t1.qcow2")" = "$(qemu-img map --output=json "$T/t3.qcow2")" ]
    # One thread: every copy in the main thread.  Three: the first there, the rest in copiers.
    read -r m1 o1 k1 < <(copy_threads "$T/trace1")
    read -r m o k < <(copy_threads "$T/trace3")
    [ "$o1" -eq 0 ] && [ "$m1" -ge 20 ] && [ "$m" -eq 1 ] && [ $((m + o)) -eq "$m1" ] &&
      [ "$k" -ge 1 ] && [ "$k" -le 3 ] || { echo "-c $cs: 1 thread: $m1 $o1 $k1, 3 threads: $m $o $k"; false; }
    rm -f "$T"/t?.qcow2
  done
  for n in 1 3; do
    RBLOCK_THREADS=$n strace -f -qq -e trace=execve,copy_file_range -o "$T/trace$n" \
      "$RB_CONVERT" -C -O raw "$T/src.raw" "$T/r$n.raw"
    cmp "$T/src.raw" "$T/r$n.raw"
  done
  read -r m1 o1 k1 < <(copy_threads "$T/trace1")
  read -r m o k < <(copy_threads "$T/trace3")
  [ "$o1" -eq 0 ] && [ "$m1" -gt 100 ] && [ "$m" -eq 1 ] && [ $((m + o)) -eq "$m1" ] ||
    { echo "raw: 1 thread: $m1 $o1 $k1, 3 threads: $m $o $k"; false; }
  # The same holes in both, the 64 KiB zero runs among them (36 of them are whole, as qemu-img finds).
  holes1=$(qemu-img map -f raw --output=json "$T/r1.raw" | jq -c '[.[] | select(.data | not)]')
  [ "$(qemu-img map -f raw --output=json "$T/r3.raw" | jq -c '[.[] | select(.data | not)]')" = "$holes1" ]
  [ "$(jq '[.[] | select(.length == 65536)] | length' <<< "$holes1")" -ge 30 ]
}

@test "rb-convert -n onto a raw file with 3 copier threads: identical to the source, old data zeroed" {
  scattered "$T/src.raw" 24 200
  head -c $((24 * 1048576)) /dev/urandom > "$T/disk.raw"
  RBLOCK_THREADS=3 strace -f -qq -e trace=execve,copy_file_range -o "$T/trace" \
    "$RB_CONVERT" -C -n "$T/src.raw" "$T/disk.raw"
  cmp -n "$(stat -c %s "$T/src.raw")" "$T/src.raw" "$T/disk.raw"
  read -r m o k < <(copy_threads "$T/trace")
  [ "$m" -eq 1 ] && [ "$o" -gt 50 ] || { echo "$m $o $k"; false; }
}

@test "rb-convert: EIO in a copier thread's copy: one line naming the output, exit 2, nothing left" {
  scattered "$T/src.raw" 24 200
  for n in 1 3; do
    RBLOCK_THREADS=$n RBLOCK_FAULT=data_write:EIO:after=40 run "$RB_CONVERT" -C "$T/src.raw" "$T/out.qcow2"
    [ "$status" -eq 2 ] || { echo "$n threads: status $status: $output"; false; }
    [ "${#lines[@]}" -eq 1 ] || { echo "$output"; false; }
    [[ "$output" == "rb-convert: $T/out.qcow2: "*"Input/output error"* ]] || { echo "$output"; false; }
    [ ! -e "$T/out.qcow2" ]
    [ -z "$(ls -A "$T" | grep '\.tmp\.' || true)" ]
  done
}

@test "rb-convert: a full file system under copier threads: 'No space left on device', exit 2, nothing left" {
  mkdir -p "$T/small"
  mount -t tmpfs -o size=14M tmpfs "$T/small" || { echo "mounting a tmpfs needs root (CI runs as root)"; false; }
  # About 8 MiB of data: the source fits, its copy does not (the kernel copies within the file system).
  scattered "$T/small/src.raw" 32 80
  used=$(du -k "$T/small/src.raw" | cut -f1)
  [ "$used" -gt 6000 ] && [ "$used" -lt 10000 ] || { echo "the source uses $used KiB"; false; }
  # (4 KiB units: the mapped chunks hold no hole, whose pages a full tmpfs cannot give.)
  for fmt in qcow2 raw; do
    out="$T/small/out.$fmt"
    RBLOCK_THREADS=3 strace -f -qq -e trace=execve,copy_file_range -o "$T/trace" \
      "$RB_CONVERT" -C -O $fmt $([ $fmt = raw ] || echo -c 4K) "$T/small/src.raw" "$out" 2> "$T/err" && { echo "$fmt: succeeded"; false; }
    [ "$(wc -l < "$T/err")" -eq 1 ] || { cat "$T/err"; false; }
    grep -q "^rb-convert: $out: .*No space left on device" "$T/err" || { cat "$T/err"; false; }
    # It was a copier thread's copy that failed.
    grep -v "^$(head -1 "$T/trace" | cut -d' ' -f1) " "$T/trace" | grep -Eq 'copy_file_range(\(| resumed).*ENOSPC'
    [ "$(ls -A "$T/small")" = src.raw ]
  done
}
