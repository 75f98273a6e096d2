#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# Real clients end to end (issue 8): a Linux guest under qemu-system-x86_64 uses the kernel's NBD
# client, QEMU's NBD client, and boots from an overlay served by nbdkit ./rblock.so.  Every
# verdict comes from host-side checks of the image, never from what the guest says alone.

load helpers

setup_file () {
  # configure --disable-vm-tests (make distcheck): no network there to fetch the kernel.
  [ "${RB_VM_TESTS:-yes}" != no ] || return 0
  export RB_VM_DIR
  RB_VM_DIR=$(RB_VM_CACHE="${RB_VM_CACHE:-$top_builddir/tests/vm-cache}" bash "$top_srcdir/tests/vm/build.sh")
}

setup () {
  [ "${RB_VM_TESTS:-yes}" != no ] ||
    skip "VM suites disabled by configure --disable-vm-tests (they download a Debian kernel)"
  T="$BATS_TEST_TMPDIR"
}

teardown () {
  stop_rblock
  if [ -s "${T:-}/warm.pid" ]; then kill "$(cat "$T/warm.pid")" 2>/dev/null || true; fi
}

# listen_tcp NAME NBDKIT_ARGS...: nbdkit on 127.0.0.1 at a free port, its pid in $T/NAME.pid
# and its messages in $T/NAME.err; sets LISTEN_PORT.
listen_tcp () {
  local name=$1 p; shift
  for p in $(shuf -i 20000-60000 -n 20); do
    if nbdkit -i 127.0.0.1 -p "$p" -P "$T/$name.pid" "$@" 2>"$T/$name.err"; then
      LISTEN_PORT=$p
      return 0
    fi
  done
  cat "$T/$name.err"; return 1
}

# serve_tcp IMAGE [nbdkit options]: the plugin serving IMAGE (listen_tcp nbdkit: stop_rblock
# stops it); sets PORT.  SERVE_PARAMS: more key=value parameters after the plugin's (filters).
serve_tcp () {
  local img=$1; shift
  PIDFILE="$T/nbdkit.pid"
  # shellcheck disable=SC2086
  listen_tcp nbdkit "$@" "$RBLOCK_SO" file="$img" ${SERVE_PARAMS:-} && PORT=$LISTEN_PORT
}

# boot SCENARIO [qemu args]: boot the guest, serial console in $T/serial.log (BOOT_APPEND: more
# of the kernel's command line; cryptomgr.notests skips the crypto self-tests, slow under TCG,
# where a loaded CI machine once saw a guest stall for 18 minutes).  The guest runs
# under TCG (no KVM), so on a loaded machine a boot may take minutes: it may run as long as
# the serial log keeps growing (kernel messages, a line per guest step), RB_VM_IDLE (300) s at
# most without a new line, RB_VM_CAP (1080) s in all, within run-bats' 1200 s a test; then
# its last lines are shown.
boot () {
  local scenario=$1 qpid rc msg; shift
  qemu-system-x86_64 -m 256 -smp 1 -nographic -no-reboot \
    -kernel "$RB_VM_DIR/vmlinuz" -initrd "$RB_VM_DIR/initrd.img" \
    -append "console=ttyS0 panic=-1 cryptomgr.notests rb.scenario=$scenario rb.port=${PORT:-0} ${BOOT_APPEND:-}" \
    -netdev user,id=n0 -device virtio-net-pci,netdev=n0 "$@" > "$T/serial.log" 2>&1 &
  qpid=$!
  if ! msg=$(wait_progress "$qpid" "$T/serial.log" "${RB_VM_IDLE:-300}" "${RB_VM_CAP:-1080}" \
               "the guest ($scenario)"); then
    echo "$msg"
    kill -9 "$qpid" 2>/dev/null; wait "$qpid" 2>/dev/null
    return 1
  fi
  echo "# $msg" >&3      # how long boots take, in the suite's log
  wait "$qpid" && rc=0 || rc=$?
  [ "$rc" -eq 0 ] || { echo "qemu exited with $rc:"; tail -30 "$T/serial.log"; return 1; }
}

# host_checks IMAGE: what the guest did, judged on the host.
host_checks () {
  local img=$1
  qemu_check_clean "$img" || return 1
  qemu-img convert -O raw "$img" "$T/disk.raw"
  [ "$(dd if="$T/disk.raw" bs=1 skip=196608 count=13 2>/dev/null)" = "Hello, world!" ] ||
    { echo "no Hello, world! at 196608"; tail -20 "$T/serial.log"; return 1; }
  [ "$(qemu-img map --output=json "$img" | jq '[.[] | select(.start <= 196608 and .start + .length > 196608 and .data)] | length')" = 1 ] ||
    { echo "guest cluster 3 not allocated"; return 1; }
  dd if="$T/disk.raw" of="$T/part.img" bs=1M skip=1 status=none
  e2fsck -fn "$T/part.img" || { echo "e2fsck found problems"; return 1; }
  [ "$(debugfs -R 'cat /hello.txt' "$T/part.img" 2>/dev/null)" = "rblock was here" ] ||
    { echo "hello.txt missing"; return 1; }
  [ "$(debugfs -R 'cat /random.bin' "$T/part.img" 2>/dev/null | md5sum | cut -d' ' -f1)" = \
    "$(debugfs -R 'cat /random.md5' "$T/part.img" 2>/dev/null)" ] || { echo "random.bin checksum differs"; return 1; }
}

# damaged IMAGE KIND: $T/bad.qcow2, IMAGE's guest content with one kind of damage.
damaged () {
  local img=$1 kind=$2
  qemu-img convert -O raw "$img" "$T/d.raw"
  dd if="$T/d.raw" of="$T/d.part" bs=1M skip=1 status=none
  case $kind in
    hello-bytes) printf 'Hellx' | dd of="$T/d.raw" bs=1 seek=196608 conv=notrunc status=none ;;
    fsck) debugfs -w -R 'set_inode_field /hello.txt links_count 5' "$T/d.part" 2>/dev/null ;;
    file) debugfs -w -R 'rm /hello.txt' "$T/d.part" 2>/dev/null ;;
    checksum) echo 0123456789abcdef0123456789abcdef > "$T/md5"
              debugfs -w -R 'rm /random.md5' "$T/d.part" 2>/dev/null
              debugfs -w -R "write $T/md5 random.md5" "$T/d.part" 2>/dev/null ;;
  esac
  [ "$kind" = hello-bytes ] || dd if="$T/d.part" of="$T/d.raw" bs=1M seek=1 conv=notrunc status=none
  rm -f "$T/bad.qcow2"
  qemu-img convert -O qcow2 "$T/d.raw" "$T/bad.qcow2"
}

@test "kernel nbd-client on /dev/nbd0: seed's tip, partition, ext2, files, checked on the host" {
  local kind
  qemu-img create -q -f qcow2 "$T/disk.qcow2" 64M
  serve_tcp "$T/disk.qcow2"
  boot nbd
  stop_rblock
  host_checks "$T/disk.qcow2"
  # Each host check bites on its own kind of damage (the negative control below drops every
  # write, which only the first check needs to see).
  for kind in hello-bytes fsck file checksum; do
    damaged "$T/disk.qcow2" "$kind"
    run host_checks "$T/bad.qcow2"
    echo "$kind: $status ${lines[-1]}"
    [ "$status" -ne 0 ]
  done
  [ "$(damaged "$T/disk.qcow2" none && host_checks "$T/bad.qcow2" >/dev/null && echo intact)" = intact ]
}

@test "kernel nbd-client with 4 connections (multi-conn): 4 connections counted on the host, writes spread over several" {
  local n used
  qemu-img create -q -f qcow2 "$T/disk.qcow2" 64M
  SERVE_PARAMS="logfile=$T/log.txt" serve_tcp "$T/disk.qcow2" --filter=log
  # The guest's warm-up devices (see tests/vm/guest-nbd4.sh) connect to a server of their own.
  listen_tcp warm memory 16M
  BOOT_APPEND="rb.warm=$LISTEN_PORT" boot nbd4 -smp 4
  kill "$(cat "$T/warm.pid")" && rm "$T/warm.pid"
  stop_rblock
  host_checks "$T/disk.qcow2"
  # The log filter names each connection: four connected, and more than one carried writes;
  # the guest's kernel declared none of them dead.
  n=$(grep -o 'connection=[0-9]* Connect' "$T/log.txt" | sort -u | wc -l)
  used=$(grep -E 'Write id=' "$T/log.txt" | grep -o 'connection=[0-9]*' | sort -u | wc -l)
  echo "connections $n, with writes $used; $(grep 'receive workers' "$T/serial.log")"
  grep 'nbd0: Connection timed out' "$T/serial.log" && return 1
  [ "$n" -eq 4 ] && [ "$used" -ge 2 ]
}

@test "QEMU as the NBD client: a virtio disk on nbd://127.0.0.1:PORT" {
  qemu-img create -q -f qcow2 "$T/disk.qcow2" 64M
  serve_tcp "$T/disk.qcow2"
  boot virtio -drive "file=nbd://127.0.0.1:$PORT,format=raw,if=virtio"
  stop_rblock
  host_checks "$T/disk.qcow2"
}

@test "boot from an overlay served by rblock: the guest writes into its root, the base is untouched" {
  mkdir -p "$T/rootfs"/{bin,sbin,proc,dev,sys,tmp}
  cp /bin/busybox "$T/rootfs/bin/busybox"
  cp "$top_srcdir/tests/vm/rootfs-init" "$T/rootfs/sbin/init"
  chmod +x "$T/rootfs/sbin/init"
  mke2fs -q -t ext2 -d "$T/rootfs" "$T/root.img" 32M
  "$top_builddir/utils/rb-convert" "$T/root.img" "$T/base.qcow2"
  qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$T/overlay.qcow2"
  sum=$(md5sum < "$T/base.qcow2")
  serve_tcp "$T/overlay.qcow2"
  boot boot
  stop_rblock
  [ "$(md5sum < "$T/base.qcow2")" = "$sum" ]
  qemu_check_clean "$T/base.qcow2"
  qemu_check_clean "$T/overlay.qcow2"
  [ "$(qemu-img map --output=json "$T/overlay.qcow2" | jq '[.[] | select(.depth == 0 and .data)] | length')" -gt 0 ]
  start_rblock "$T/overlay.qcow2" -r
  nbdcopy "$URI" "$T/root-after.img"
  stop_rblock
  [ "$(debugfs -R 'cat /guest-was-here.txt' "$T/root-after.img" 2>/dev/null)" = \
    "written by the guest booted from the overlay" ]
}

@test "negative control: a server that drops writes (nbdkit cow filter) fails the host checks" {
  qemu-img create -q -f qcow2 "$T/disk.qcow2" 64M
  serve_tcp "$T/disk.qcow2" --filter=cow
  boot nbd
  stop_rblock
  grep -q "rb: guest steps done" "$T/serial.log"     # the guest saw its writes...
  run host_checks "$T/disk.qcow2"
  [ "$status" -ne 0 ]                                # ...the image did not get them
}
