#!/usr/bin/env bash
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# The main job on a demo image: set up, serve a qcow2 with nbdkit ./rblock.so, write and read
# "Hello, world!" at guest cluster 3 over NBD, then follow the mapping L1 -> L2 -> host by hand.
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$top/scripts/setup.sh" "$top/build"
plugin="$top/build/rblock.so"

demo=$(mktemp -d "${TMPDIR:-/tmp}/rblock-demo.XXXXXX")
sock="$demo/nbd.sock"
uri="nbd+unix:///?socket=$sock"
trap 'kill "$(cat "$demo/nbdkit.pid" 2>/dev/null)" 2>/dev/null || true' EXIT

# nbdsh runs "python3 -m nbd": use the system python3, which has python3-libnbd.
nbdsh () { PATH="/usr/bin:$PATH" command nbdsh "$@"; }
be64 () { od -An -tu8 --endian=big -j "$2" -N 8 "$1" | tr -d ' '; }
be32 () { od -An -tu4 --endian=big -j "$2" -N 4 "$1" | tr -d ' '; }

echo
echo "== 1. a 64 MiB qcow2 image (64 KiB clusters), served by nbdkit ./rblock.so"
qemu-img create -q -f qcow2 "$demo/disk.qcow2" 64M
nbdkit -U "$sock" -P "$demo/nbdkit.pid" "$plugin" file="$demo/disk.qcow2"
# nbdkit returns once its socket listens; its pidfile follows (bounded, generous wait).
for i in $(seq 600); do [ -s "$demo/nbdkit.pid" ] && break; sleep 0.1; done
[ -s "$demo/nbdkit.pid" ] || { echo "nbdkit wrote no pidfile in 60 s"; exit 1; }
nbdinfo "$uri" | grep -E 'export-size|is_read_only|can_multi_conn|can_extents|block_size_preferred'

echo
echo "== 2. write \"Hello, world!\" at guest offset 3 * 65536 = 196608 over NBD, read it back"
nbdsh -u "$uri" -c 'h.pwrite(b"Hello, world!", 3 * 65536); h.flush()'
nbdsh -u "$uri" -c 'print("read back:", h.pread(13, 3 * 65536).decode())'
nbdinfo --map "$uri"

pid=$(cat "$demo/nbdkit.pid")
kill "$pid"
# Gone means the image is closed, flushed and unlocked (bounded, generous wait).
for i in $(seq 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
! kill -0 "$pid" 2>/dev/null || { echo "nbdkit did not exit in 60 s"; exit 1; }

echo
echo "== 3. the image is valid for QEMU"
qemu-img check "$demo/disk.qcow2"
qemu-img map --output=json "$demo/disk.qcow2"

echo
echo "== 4. the mapping by hand (see README: how qcow2 maps a guest offset)"
img="$demo/disk.qcow2"
cluster_bits=$(be32 "$img" 20)
cs=$((1 << cluster_bits))
l2_entries=$((cs / 8))
guest=196608
gc=$((guest / cs)); l1_index=$((gc / l2_entries)); l2_index=$((gc % l2_entries))
l1_off=$(be64 "$img" 40)
l2_table=$(( $(be64 "$img" $((l1_off + 8 * l1_index))) & 0x00fffffffffffe00 ))
host=$(( $(be64 "$img" $((l2_table + 8 * l2_index))) & 0x00fffffffffffe00 ))
refcount_order=$(be32 "$img" 96)
rb_entries=$((cs * 8 >> refcount_order))
hc=$((host / cs))
rt_off=$(be64 "$img" 48)
rb_off=$(( $(be64 "$img" $((rt_off + 8 * (hc / rb_entries)))) & ~511 ))
refcount=$(od -An -tu2 --endian=big -j $((rb_off + 2 * (hc % rb_entries))) -N 2 "$img" | tr -d ' ')
printf 'guest offset %d -> guest cluster %d -> L1 index %d, L2 index %d\n' $guest $gc $l1_index $l2_index
printf 'L1 table at %#x: entry %d -> L2 table at %#x\n' "$l1_off" $l1_index "$l2_table"
printf 'L2 entry %d -> host cluster at %#x (host cluster %d)\n' $l2_index "$host" $hc
printf 'refcount table index %d, refcount block index %d (block at %#x): refcount %d\n' \
  $((hc / rb_entries)) $((hc % rb_entries)) "$rb_off" "$refcount"
echo "hexdump of the host file at $host:"
hexdump -C -s "$host" -n 16 "$img"
echo
echo "demo files are in $demo"
