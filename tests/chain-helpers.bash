# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# Helpers of the image-wide command suites (snapshot, resize, commit, rebase): test images,
# a state signature, the kill-at-every-write loop.

SHIM="$top_builddir/tests/.libs/crashshim.so"

# mk_image IMG SIZE [qemu-img -o options]: a qcow2 with data, zeros, a hole and
# (when the format allows) compressed clusters, written by qemu-io.
mk_image () {
  local img=$1 size=$2 opts=${3:-}
  qemu-img create -q -f qcow2 ${opts:+-o "$opts"} "$img" "$size"
  qemu-io -c 'write -P 0x11 0 192k' -c 'write -P 0x22 300k 5k' -c 'write -z 512k 128k' \
    -c 'write -P 0x33 1M 64k' -c 'write -P 0x44 2M 8k' "$img" >/dev/null
  if [[ "$opts" != *extended_l2=on* ]]; then
    qemu-io -c 'write -c -P 0x55 3M 64k' "$img" >/dev/null
  fi
}

# sparse_sum FILE: a checksum of a sparse file's bytes that skips its holes
# (size, then offset and bytes of each data extent, all-zero blocks left out).
sparse_sum () {
  python3 -c '
import hashlib, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY); size = os.fstat(fd).st_size
h = hashlib.md5(str(size).encode()); pos = 0
while pos < size:
    try: pos = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError: break
    end = os.lseek(fd, pos, os.SEEK_HOLE)
    while pos < end:
        b = os.pread(fd, min(1 << 20, end - pos), pos)
        for i in range(0, len(b), 4096):
            if b[i:i + 4096].strip(b"\0"): h.update(str(pos + i).encode() + b[i:i + 4096])
        pos += len(b)
print(h.hexdigest())' "$1"
}

# state_sig IMG: one line per fact a user sees: virtual size, backing file and
# format, the snapshots (id, name) and a checksum of the guest view and of each
# snapshot's view.
state_sig () {
  local img=$1 raw="$BATS_TEST_TMPDIR/sig.raw" id
  qemu-img info -U --output=json "$img" |
    jq -c '[.["virtual-size"], .["backing-filename"], .["backing-filename-format"],
            [.snapshots[]? | [.id, .name]]]'
  qemu-img convert -U -O raw "$img" "$raw" 2>&1 && sparse_sum "$raw" 2>&1
  for id in $(qemu-img info -U --output=json "$img" | jq -r '.snapshots[]?.id'); do
    qemu-img convert -U -l "snapshot.id=$id" -O raw "$img" "$raw" 2>&1 && echo "$id $(sparse_sum "$raw" 2>&1)"
  done
  rm -f "$raw"
}

# check_ok IMG: qemu-img check finds no corruption (leaks allowed).
check_ok () {
  run qemu-img check "$1"
  if { [ "$status" -ne 0 ] && [ "$status" -ne 3 ]; } || [[ "$output" == *ERROR* ]]; then
    echo "qemu-img check $1 ($status):"; echo "$output"; return 1
  fi
}

# crash_loop IMG CMD...: CMD changes IMG.  For every N, a fresh copy of IMG
# is changed by CMD killed at its N-th write to IMG (whole, then torn at 512
# bytes); each time qemu-img check must find no corruption and the image must
# show the state before or the state after CMD (state_sig).  IMG is left
# changed by a complete run.
crash_loop () {
  local img=$1; shift
  local T="$BATS_TEST_TMPDIR" name n total torn sig
  name=$(basename "$img")
  cp "$img" "$T/crash.orig"
  state_sig "$img" > "$T/sig.old"
  RB_CRASH_FILE="$name" RB_CRASH_COUNT="$T/count" LD_PRELOAD="$SHIM" "$@" >/dev/null
  total=$(cat "$T/count")
  state_sig "$img" > "$T/sig.new"
  ! cmp -s "$T/sig.old" "$T/sig.new" || { echo "the command changed nothing"; return 1; }
  check_ok "$img"
  cp "$img" "$T/crash.done"
  [ "$total" -ge 1 ] || { echo "no writes"; return 1; }
  for n in $(seq 1 "$total"); do
    for torn in "" 1; do
      cp "$T/crash.orig" "$img"
      run env RB_CRASH_FILE="$name" RB_CRASH_AT="$n" ${torn:+RB_CRASH_TORN=1} \
        LD_PRELOAD="$SHIM" "$@"
      [ "$status" -eq 137 ] || { echo "write $n${torn:+ torn}: not killed ($status): $output"; return 1; }
      check_ok "$img" || { echo "after write $n${torn:+ torn}"; return 1; }
      state_sig "$img" > "$T/sig.now"
      if ! cmp -s "$T/sig.now" "$T/sig.old" && ! cmp -s "$T/sig.now" "$T/sig.new"; then
        echo "write $n${torn:+ torn}: neither the old nor the new state"
        diff "$T/sig.old" "$T/sig.now"; diff "$T/sig.new" "$T/sig.now"
        return 1
      fi
    done
  done
  cp "$T/crash.done" "$img"
  echo "# $name: killed at each of $total writes (whole and torn): old or new state" >&3
}

# untouched_after IMG CMD...: CMD must fail with exit status 1 and one line on
# stderr, and leave IMG byte for byte as it was.
untouched_after () {
  local img=$1; shift
  cp "$img" "$BATS_TEST_TMPDIR/before"
  run "$@"
  [ "$status" -eq 1 ] || { echo "status $status: $output"; return 1; }
  [ "${#lines[@]}" -eq 1 ] || { echo "not one line: $output"; return 1; }
  cmp "$img" "$BATS_TEST_TMPDIR/before"
}
