#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# Read/write through nbdkit ./rblock.so: randomised workloads over NBD mirrored on a raw file,
# several connections at once, snapshots kept, kill -9, a full disk, QEMU's locks.

load helpers

setup () {
  T="$BATS_TEST_TMPDIR"
}

teardown () {
  stop_rblock
  mountpoint -q "$T/full" 2>/dev/null && umount "$T/full" || true
}

# nbd_workload IMAGE SEED N [discard]: run the same random commands on IMAGE over NBD and on
# a raw mirror; afterwards the two compare equal and IMAGE checks clean.
nbd_workload () {
  local img=$1 cs size
  cs=$(qemu-img info --output=json "$img" | jq '."cluster-size"')
  size=$(qemu-img info --output=json "$img" | jq '."virtual-size"')
  qemu-img convert -O raw "$img" "$T/mirror.raw"
  gen_ops "$2" "$3" "$size" "$cs" "${4:-1}" > "$T/ops"
  mapfile -t ops < "$T/ops"
  local args=()
  for o in "${ops[@]}"; do args+=(-c "$o"); done
  start_rblock "$img"
  qemu-io -f raw "${args[@]}" "$URI" > "$T/nbd.out" 2>&1
  ! grep -i -E 'error|failed' "$T/nbd.out"
  # Reads through the server match the mirror before the server stops.
  qemu-io -f raw "${args[@]}" "$T/mirror.raw" > /dev/null 2>&1
  nbdcopy "$URI" "$T/served.raw"
  stop_rblock
  cmp "$T/served.raw" "$T/mirror.raw"
  qemu-img compare "$img" "$T/mirror.raw"
  qemu_check_clean "$img"
}

@test "random I/O over NBD: 512 B, 4K, 64K and 2M clusters, compat 0.10 and 1.1" {
  for cfg in 512:1.1 4096:0.10 65536:1.1 65536:0.10 2097152:1.1; do
    rm -f "$T/w.qcow2"
    qemu-img create -q -f qcow2 -o cluster_size=${cfg%:*},compat=${cfg#*:} "$T/w.qcow2" 24M
    nbd_workload "$T/w.qcow2" 1 300
  done
}

@test "random I/O over NBD: refcount_bits 1 and 64" {
  for rb in 1 64; do
    rm -f "$T/w.qcow2"
    qemu-img create -q -f qcow2 -o refcount_bits=$rb,cluster_size=4096 "$T/w.qcow2" 16M
    nbd_workload "$T/w.qcow2" 2 300
  done
}

@test "random I/O over NBD: extended L2 (subclusters), alone and over a backing file" {
  qemu-img create -q -f qcow2 -o extended_l2=on "$T/w.qcow2" 24M
  nbd_workload "$T/w.qcow2" 3 300
  head -c 24M /dev/urandom > "$T/base.raw"
  qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=32768 -b base.raw -F raw "$T/x.qcow2" 24M
  nbd_workload "$T/x.qcow2" 4 300
}

@test "random I/O over NBD on overlays: the backing file never changes" {
  head -c 24M /dev/urandom > "$T/base.raw"
  sum=$(md5sum < "$T/base.raw")
  for compat in 1.1 0.10; do
    rm -f "$T/o.qcow2"
    qemu-img create -q -f qcow2 -o compat=$compat -b base.raw -F raw "$T/o.qcow2" 32M
    # Version 2 cannot hide the backing file on discard: no discards there.
    nbd_workload "$T/o.qcow2" 5 300 $([ $compat = 0.10 ] && echo 0 || echo 1)
  done
  [ "$(md5sum < "$T/base.raw")" = "$sum" ]
}

@test "random I/O over NBD on a compressed image rewrites compressed clusters" {
  head -c 4M /dev/urandom > "$T/src.raw"
  yes qcow2 | head -c 8M >> "$T/src.raw"
  qemu-img convert -c -O qcow2 "$T/src.raw" "$T/c.qcow2"
  nbd_workload "$T/c.qcow2" 6 300
}

@test "four connections writing at once (disjoint and overlapping) leave a clean, exact image" {
  qemu-img create -q -f qcow2 -o cluster_size=4096 "$T/m.qcow2" 32M
  start_rblock "$T/m.qcow2"
  pids=()
  for k in 0 1 2 3; do
    # Interleaved clusters: every L2 table is shared by all four writers.
    args=()
    for i in $(seq 0 63); do args+=(-c "write -P $((k + 1)) $(( (i * 4 + k) * 4096 )) 4096"); done
    args+=(-c "write -P $((k + 11)) $(( (16 << 20) + k * 1048576 )) 3M")   # overlapping tails
    qemu-io -f raw "${args[@]}" "$URI" > "$T/q$k.out" 2>&1 &
    pids+=($!)
  done
  # The writers' own pids: a bare wait would also wait for bats's BATS_TEST_TIMEOUT timer.
  for p in "${pids[@]}"; do wait "$p"; done
  ! grep -i -E 'error|failed' "$T"/q*.out
  stop_rblock
  qemu_check_clean "$T/m.qcow2"
  for k in 0 1 2 3; do
    for i in 0 17 63; do
      qemu-io -c "read -P $((k + 1)) $(( (i * 4 + k) * 4096 )) 4096" "$T/m.qcow2" | grep -q 'read 4096/4096'
      ! qemu-io -c "read -P $((k + 1)) $(( (i * 4 + k) * 4096 )) 4096" "$T/m.qcow2" | grep -q 'verification failed'
    done
  done
  # Where writers overlapped, every 512-byte sector holds one writer's pattern.
  qemu-img convert -O raw "$T/m.qcow2" "$T/m.raw"
  run python3 - "$T/m.raw" <<'PY'
import sys
d = open(sys.argv[1], 'rb').read()[16 << 20:(16 << 20) + 6 * 1048576]
bad = [i for i in range(0, len(d), 512) if len(set(d[i:i+512])) != 1 or d[i] not in (11, 12, 13, 14)]
print(len(bad))
PY
  [ "$output" = 0 ]
}

@test "writes through the plugin leave an internal snapshot intact (qemu-img snapshot -a)" {
  qemu-img create -q -f qcow2 "$T/s.qcow2" 16M
  qemu-io -c 'write -P 7 0 16M' "$T/s.qcow2" >/dev/null
  qemu-img snapshot -c before "$T/s.qcow2"
  qemu-img convert -O raw "$T/s.qcow2" "$T/before.raw"
  nbd_workload "$T/s.qcow2" 7 300
  ! qemu-img compare -q "$T/s.qcow2" "$T/before.raw"
  qemu-img snapshot -a before "$T/s.qcow2"
  qemu-img compare "$T/s.qcow2" "$T/before.raw"
  qemu_check_clean "$T/s.qcow2"
}

@test "kill -9 of nbdkit mid-workload: never corrupt, flushed writes survive" {
  for round in 1 2 3 4 5 6; do
    rm -f "$T/k.qcow2"
    qemu-img create -q -f qcow2 -o cluster_size=4096 "$T/k.qcow2" 32M
    start_rblock "$T/k.qcow2"
    # Phase 1: 8 MiB acknowledged and flushed.
    qemu-io -f raw -c 'write -P 0x5a 0 8M' -c flush "$URI" >/dev/null
    # Phase 2: a long write workload on the other 24 MiB, killed part way.
    gen_ops "$round" 4000 $((24 << 20)) 4096 | awk '{ if ($1 == "write" || $1 == "discard") { $NF = $NF; $(NF-1) = $(NF-1) + 8388608 } print }' > "$T/ops2"
    mapfile -t ops < "$T/ops2"
    args=(); for o in "${ops[@]}"; do args+=(-c "$o"); done
    qemu-io -f raw "${args[@]}" "$URI" >/dev/null 2>&1 &
    qpid=$!
    sleep "0.$((round * 13 % 9 + 1))"
    kill -9 "$(cat "$PIDFILE")"
    wait "$qpid" || true
    rm -f "$PIDFILE"
    run qemu-img check "$T/k.qcow2"
    [ "$status" -eq 0 ] || [ "$status" -eq 3 ] || { echo "round $round: $output"; false; }
    [[ "$output" != *ERROR* ]]
    run qemu-io -c 'read -P 0x5a 0 8M' "$T/k.qcow2"
    [[ "$output" != *"verification failed"* ]] || { echo "round $round lost flushed data"; false; }
  done
}

@test "the seed's tip end to end: Hello, world! at guest cluster 3 over NBD, found by qemu-img map and hexdump" {
  qemu-img create -q -f qcow2 "$T/h.qcow2" 64M
  start_rblock "$T/h.qcow2"
  nbdsh -u "$URI" -c 'h.pwrite(b"Hello, world!", 3 * 65536)' -c 'h.flush()'
  stop_rblock
  qemu_check_clean "$T/h.qcow2"
  host=$(qemu-img map --output=json "$T/h.qcow2" | jq '.[] | select(.start == 196608 and .data) | .offset')
  [ -n "$host" ] && [ "$host" -gt 0 ]
  run hexdump -C -s "$host" -n 13 "$T/h.qcow2"
  [[ "$output" == *"|Hello, world!|"* ]]
}

@test "discard frees whole clusters; over a backing file it leaves zeros, not stale data" {
  qemu-img create -q -f qcow2 "$T/d.qcow2" 8M
  qemu-io -c 'write -P 1 0 8M' "$T/d.qcow2" >/dev/null
  start_rblock "$T/d.qcow2"
  qemu-io -f raw -c 'discard 1M 2M' -c 'discard 5M 100k' "$URI" >/dev/null
  stop_rblock
  qemu_check_clean "$T/d.qcow2"
  [ "$(qemu-img map --output=json "$T/d.qcow2" | jq -c '[.[] | select(.start == 1048576)][0] | [.length, .data]')" = "[2097152,false]" ]
  # 100k inside 5M: only the whole cluster (64k) in it goes; the rest keeps its data.
  qemu-io -c 'read -P 1 5M 64k' "$T/d.qcow2" | grep -q 'read 65536'
  ! qemu-io -c 'read -P 1 5M 64k' "$T/d.qcow2" | grep -q failed
  head -c 4M /dev/urandom > "$T/b.raw"
  qemu-img create -q -f qcow2 -b b.raw -F raw "$T/o.qcow2" 4M
  qemu-io -c 'write -P 2 0 4M' "$T/o.qcow2" >/dev/null
  start_rblock "$T/o.qcow2"
  qemu-io -f raw -c 'discard 1M 1M' "$URI" >/dev/null
  nbdcopy "$URI" "$T/o.raw"
  stop_rblock
  cmp -i 1048576:0 -n 1048576 "$T/o.raw" /dev/zero
  qemu_check_clean "$T/o.qcow2"
}

@test "a full disk: the client gets ENOSPC, the image checks clean, earlier data intact" {
  mkdir -p "$T/full"
  mount -t tmpfs -o size=6M tmpfs "$T/full" || { echo "mounting a tmpfs needs root (CI runs as root)"; false; }
  qemu-img create -q -f qcow2 "$T/full/d.qcow2" 64M
  start_rblock "$T/full/d.qcow2"
  run qemu-io -f raw -c 'write -P 1 0 4M' -c flush -c 'write -P 2 4M 8M' -c flush "$URI"
  [[ "$output" == *"No space left on device"* ]]
  stop_rblock
  qemu_check_clean "$T/full/d.qcow2"
  ! qemu-io -c 'read -P 1 0 4M' "$T/full/d.qcow2" | grep -q failed
}

@test "QEMU's locks: an image served to a client that may write is refused to qemu-img and to a second server" {
  qemu-img create -q -f qcow2 "$T/l.qcow2" 8M
  start_rblock "$T/l.qcow2"
  # Write access (and QEMU's write lock) comes with the first client that may write.
  nbdsh -u "$URI" -c 'assert not h.is_read_only()'
  run qemu-img info "$T/l.qcow2"
  [ "$status" -ne 0 ]
  [[ "$output" == *'Failed to get shared "write" lock'* ]]
  run nbdkit -U "$T/second.sock" "$RBLOCK_SO" file="$T/l.qcow2" --run true
  [ "$status" -ne 0 ]
  [[ "$output" == *"in use by another process"* ]]
  stop_rblock
  qemu-img info "$T/l.qcow2" >/dev/null
}

@test "FUA writes and flushes make data durable for a new server" {
  qemu-img create -q -f qcow2 "$T/f.qcow2" 8M
  start_rblock "$T/f.qcow2"
  qemu-io -f raw -c 'write -f -P 9 0 1M' "$URI" >/dev/null
  pid=$(cat "$PIDFILE")
  kill -9 "$pid"; rm -f "$PIDFILE"
  wait_until "$RB_WAIT" "the killed nbdkit to be gone (its locks released)" process_gone "$pid"
  ! qemu-io -c 'read -P 9 0 1M' "$T/f.qcow2" | grep -q failed
  qemu_check_clean "$T/f.qcow2"
}

@test "EIO and ENOSPC from the image file reach the NBD client as EIO and ENOSPC; the image stays consistent" {
  for err in EIO ENOSPC; do
    rm -f "$T/e.qcow2"
    qemu-img create -q -f qcow2 "$T/e.qcow2" 8M
    RBLOCK_FAULT="data_write:$err:after=3" start_rblock "$T/e.qcow2"
    run qemu-io -f raw -c 'write -P 1 0 64k' -c 'write -P 2 1M 64k' -c 'write -P 3 2M 64k' \
                -c 'write -P 4 3M 64k' -c 'write -P 5 4M 64k' -c flush "$URI"
    if [ $err = EIO ]; then [[ "$output" == *"Input/output error"* ]]; else [[ "$output" == *"No space left on device"* ]]; fi
    stop_rblock
    qemu_check_clean "$T/e.qcow2"
    ! qemu-io -c 'read -P 1 0 64k' -c 'read -P 3 2M 64k' "$T/e.qcow2" | grep -q failed
  done
}
