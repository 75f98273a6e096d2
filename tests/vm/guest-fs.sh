#!/bin/sh
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# Guest steps on a disk $1 (already attached): the seed's tip, a partition, an ext2 file system,
# a text file and random data with its checksum, caches dropped, read back.  Each step prints
# a line: the host's wait goes on while they come (a loaded host runs the guest slowly).
set -e
disk=$1
step () { echo "rb: step: $*"; }
printf 'Hello, world!' | dd of="$disk" bs=1 seek=$((3 * 65536)) conv=notrunc 2>/dev/null
step "Hello, world! written at 196608"
printf 'o\nn\np\n1\n2048\n\nw\n' | fdisk "$disk" >/dev/null 2>&1 || true
blockdev --rereadpt "$disk" 2>/dev/null || true
part=${disk}1
[ -b "${disk}p1" ] && part=${disk}p1
for i in $(seq 120); do [ -b "$part" ] && break; sleep 1; done
step "partition $part"
mke2fs -q "$part"
step "ext2 made"
mount "$part" /mnt
echo "rblock was here" > /mnt/hello.txt
dd if=/dev/urandom of=/mnt/random.bin bs=1M count=4 2>/dev/null
md5sum /mnt/random.bin | cut -d' ' -f1 > /mnt/random.md5
step "files written"
sync
umount /mnt
step "synced and unmounted"
echo 3 > /proc/sys/vm/drop_caches
mount "$part" /mnt
[ "$(md5sum /mnt/random.bin | cut -d' ' -f1)" = "$(cat /mnt/random.md5)" ]
umount /mnt
step "read back after dropping caches"
