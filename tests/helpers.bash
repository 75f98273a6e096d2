# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# Shared bats helpers: start/stop the plugin on a Unix socket, QEMU-tool oracles, map comparison.

RBLOCK_SO="$top_builddir/rblock.so"

# nbdsh runs "python3 -m nbd": use the system python3 (it has python3-libnbd).
nbdsh () { PATH="/usr/bin:$PATH" command nbdsh "$@"; }

# start_rblock IMAGE [nbdkit options and plugin parameters...]
# Serves IMAGE on $BATS_TEST_TMPDIR/nbd.sock; sets URI.  Options before the
# image (like -r) go to nbdkit: start_rblock disk.qcow2 -r cache=1M
start_rblock () {
  local img=$1; shift
  local nbdkit_opts=() params=()
  for a in "$@"; do
    if [[ "$a" == -* ]]; then nbdkit_opts+=("$a"); else params+=("$a"); fi
  done
  start_nbdkit "${nbdkit_opts[@]}" "$RBLOCK_SO" file="$img" "${params[@]}"
}

# start_nbdkit ARGS...: nbdkit -U $SOCK -P $PIDFILE ARGS (in that order, so options such
# as -r may stand anywhere in ARGS); waits for the socket; sets SOCK, PIDFILE and URI.
# nbdkit's stderr goes to $BATS_TEST_TMPDIR/nbdkit.err.
start_nbdkit () {
  SOCK="$BATS_TEST_TMPDIR/nbd.sock"
  PIDFILE="$BATS_TEST_TMPDIR/nbdkit.pid"
  URI="nbd+unix:///?socket=$SOCK"
  rm -f "$SOCK" "$PIDFILE"
  nbdkit -U "$SOCK" -P "$PIDFILE" "$@" \
    2>"$BATS_TEST_TMPDIR/nbdkit.err" || { cat "$BATS_TEST_TMPDIR/nbdkit.err"; return 1; }
  local i
  for i in $(seq 200); do
    [ -S "$SOCK" ] && [ -s "$PIDFILE" ] && return 0
    sleep 0.05
  done
  echo "nbdkit did not start"; cat "$BATS_TEST_TMPDIR/nbdkit.err"; return 1
}

# stop_rblock: stop the server started by start_rblock and wait until it is gone
# (so the image is closed, flushed and unlocked).
stop_rblock () {
  [ -n "${PIDFILE:-}" ] && [ -s "$PIDFILE" ] || return 0
  local pid i
  pid=$(cat "$PIDFILE")
  kill "$pid" 2>/dev/null || true
  for i in $(seq 200); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$PIDFILE"; return 0; }
    sleep 0.05
  done
  echo "nbdkit $pid did not stop"; kill -9 "$pid" 2>/dev/null; return 1
}

# qemu_check_clean IMAGE: qemu-img check says no errors and no leaks.
qemu_check_clean () {
  run qemu-img check "$1"
  if [ "$status" -ne 0 ] || [[ "$output" != *"No errors were found"* ]]; then
    echo "qemu-img check $1:"; echo "$output"; return 1
  fi
}

# guest_map_classes: merged "start length data|zero" runs of the served export (nbdinfo --map)
guest_map_classes () {
  nbdinfo --map "$URI" | awk '{ c = (int($3 / 2) % 2 ? "zero" : "data"); print $1, $2, c }' | merge_runs
}

# qemu_map_classes IMAGE: the same from qemu-img map --output=json
qemu_map_classes () {
  qemu-img map -U --output=json "$1" |
    jq -r '.[] | "\(.start) \(.length) \(if .data and (.zero | not) then "data" else "zero" end)"' | merge_runs
}

# merge_runs: merge adjacent "start length class" lines with the same class.
merge_runs () {
  awk 'NF == 3 {
         if (n && $3 == c && $1 == s + l) { l += $2; next }
         if (n) print s, l, c
         s = $1; l = $2; c = $3; n = 1
       }
       END { if (n) print s, l, c }'
}

# assert_served_equals_qemu IMAGE: bytes and data/zero map through the plugin equal QEMU's view.
assert_served_equals_qemu () {
  local img=$1 out="$BATS_TEST_TMPDIR/served.raw" want="$BATS_TEST_TMPDIR/qemu.raw"
  rm -f "$out" "$want"
  nbdcopy "$URI" "$out"
  qemu-img convert -U -O raw "$img" "$want"
  cmp "$out" "$want" || { echo "bytes differ for $img"; return 1; }
  diff <(guest_map_classes) <(qemu_map_classes "$img") || { echo "map differs for $img"; return 1; }
}
