# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# Helpers of the model suites (engine-model, plugin-model): starting images with known data.

MT="$top_builddir/tests/mt-model"

# new_image NAME SIZE QEMU-IMG-OPTIONS [-c]: $T/NAME.qcow2 made by qemu-img convert (compressed
# with -c) from a deterministic raw disk of data runs and holes (mt-model --fill-raw, $SEED).
new_image () {
  "$MT" --fill-raw "$T/$1.fill" --size "$2" --seed "$SEED"
  qemu-img convert -q ${4:-} -f raw -O qcow2 -o "$3" "$T/$1.fill" "$T/$1.qcow2"
  rm -f "$T/$1.fill"
}

# new_overlay NAME SIZE QEMU-IMG-OPTIONS BACKING BACKING-FORMAT: an image over BACKING with
# some clusters of its own (qemu-io writes), so reads come from both.
new_overlay () {
  qemu-img create -q -f qcow2 -o "$3" -b "$4" -F "$5" "$T/$1.qcow2" "$2"
  qemu-io -f qcow2 -c 'write -P 0x11 0 100k' -c 'write -P 0x22 1M 64k' -c 'write -z 2M 1M' \
    -c 'write -P 0x33 3333333 77777' "$T/$1.qcow2" >/dev/null
}
