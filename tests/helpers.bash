# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# Shared bats helpers: start/stop the plugin on a Unix socket, QEMU-tool oracles, map comparison.

RBLOCK_SO="$top_builddir/rblock.so"

# Waits are bounded but generous: a busy machine is slow, not broken.  RB_WAIT (seconds)
# bounds a wait for something that takes well under a second on a quiet machine.
RB_WAIT=${RB_WAIT:-120}

# wait_until SECONDS WHAT CMD...: run CMD until it succeeds (0), polling quickly at first,
# then every 0.2 s.  After SECONDS: "timed out after N s waiting for WHAT", 1 (the caller
# then shows what the server last said).
wait_until () {
  local limit=$1 what=$2 start=$SECONDS delay=0.01
  shift 2
  until "$@"; do
    if [ $((SECONDS - start)) -ge "$limit" ]; then
      echo "timed out after $((SECONDS - start)) s waiting for $what"
      return 1
    fi
    sleep "$delay"
    case $delay in 0.01) delay=0.05 ;; 0.05) delay=0.1 ;; *) delay=0.2 ;; esac
  done
}

# holds_write_lock FILE: some process holds QEMU's "write" permission lock (byte 101) on FILE
# (/proc/locks: looking takes no lock, so it cannot make the holder's open fail).
holds_write_lock () {
  awk -v i=":$(stat -c %i "$1") " '$0 ~ i && $(NF-1) <= 101 && $NF >= 101 { f = 1 } END { exit !f }' /proc/locks
}

# qemu_io_hold IMAGE: qemu-io holds IMAGE open for writing (with QEMU's write lock) until
# qemu_io_release.  Returns once qemu-io has answered a command, so the image is open and
# locked; a probe with qemu-img instead would itself hold a lock at times, and qemu-io,
# opening in such a moment, gives up.
qemu_io_hold () {
  local fifo="$BATS_TEST_TMPDIR/qemu-io.fifo"
  QIO_OUT="$BATS_TEST_TMPDIR/qemu-io.out"
  rm -f "$fifo" "$QIO_OUT"
  mkfifo "$fifo"
  qemu-io "$1" < "$fifo" > "$QIO_OUT" 2>&1 & QIO_PID=$!
  exec {QIO_FD}>"$fifo"
  echo length >&"$QIO_FD"
  wait_until "$RB_WAIT" "qemu-io to open $1" qemu_io_answered
  grep -q 'qemu-io> .*[0-9]' "$QIO_OUT" || { cat "$QIO_OUT"; return 1; }
}
qemu_io_answered () { grep -q 'qemu-io> .*[0-9]' "$QIO_OUT" || ! kill -0 "$QIO_PID" 2>/dev/null; }

# qemu_io_release: qemu-io of qemu_io_hold closes the image and exits (0).
qemu_io_release () {
  exec {QIO_FD}>&-
  wait "$QIO_PID"
}

# wait_progress PID FILE IDLE CAP WHAT: wait for process PID to end while FILE (its log) keeps
# growing: it may run as long as it makes progress, IDLE seconds at most without a new byte
# in FILE, CAP seconds in all.  0 when PID ended (its status is the caller's to collect);
# otherwise 1, after "WHAT made no progress for N s" (or "ran past N s") and FILE's last lines.
wait_progress () {
  local pid=$1 file=$2 idle=$3 cap=$4 what=$5 start=$SECONDS seen=$SECONDS size=-1 now_size
  while kill -0 "$pid" 2>/dev/null; do
    now_size=$(stat -c %s "$file" 2>/dev/null || echo 0)
    [ "$now_size" = "$size" ] || { size=$now_size; seen=$SECONDS; }
    if [ $((SECONDS - seen)) -ge "$idle" ] || [ $((SECONDS - start)) -ge "$cap" ]; then
      if [ $((SECONDS - start)) -ge "$cap" ]; then
        echo "$what ran past $cap s (still writing to its log)"
      else
        echo "$what made no progress for $idle s (nothing new in its log after $((seen - start)) s)"
      fi
      echo "last lines of $file:"; tail -20 "$file"
      return 1
    fi
    sleep 1
  done
  echo "$what ended after $((SECONDS - start)) s"
}

# nbdsh runs "python3 -m nbd": use the system python3 (it has python3-libnbd).
nbdsh () { PATH="/usr/bin:$PATH" command nbdsh "$@"; }

# process_gone PID: PID has exited (gone, or a zombie nobody reaped yet).
process_gone () {
  local st
  st=$(ps -o stat= -p "$1" 2>/dev/null) || return 0
  [[ $st == Z* ]]
}

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
  wait_until "$RB_WAIT" "nbdkit's socket and pidfile" eval '[ -S "$SOCK" ] && [ -s "$PIDFILE" ]' ||
    { echo "nbdkit's stderr:"; cat "$BATS_TEST_TMPDIR/nbdkit.err"; return 1; }
}

# stop_rblock: stop the server started by start_rblock and wait until it is gone
# (so the image is closed, flushed and unlocked).
stop_rblock () {
  [ -n "${PIDFILE:-}" ] && [ -s "$PIDFILE" ] || return 0
  local pid
  pid=$(cat "$PIDFILE")
  kill "$pid" 2>/dev/null || true
  wait_until "$RB_WAIT" "nbdkit $pid to exit" process_gone "$pid" ||
    { ps -o pid,stat,wchan:20,etime,args -p "$pid"; echo "nbdkit's stderr:"
      tail -20 "$BATS_TEST_TMPDIR/nbdkit.err" 2>/dev/null; kill -9 "$pid" 2>/dev/null; return 1; }
  rm -f "$PIDFILE"
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

# gen_ops SEED N SIZE CLUSTER [discard]: qemu-io commands: unaligned writes of random
# lengths (straddling clusters and L2 tables), write zeroes (with and without unmap),
# cluster-aligned discards, flushes.
gen_ops () {
  awk -v seed="$1" -v n="$2" -v size="$3" -v cs="$4" -v discard="${5:-1}" 'BEGIN {
    srand(seed)
    for (i = 0; i < n; i++) {
      r = rand()
      len = 1 + int(rand() * (rand() < 0.25 ? 3 * cs + 1000 : cs / 2 + 700))
      off = int(rand() * size)
      if (rand() < 0.3) off = int(off / cs) * cs
      if (off + len > size) len = size - off
      if (len <= 0) continue
      if (r < 0.55)      printf "write -P %d %d %d\n", 1 + int(rand() * 250), off, len
      else if (r < 0.70) printf "write -z %d %d\n", off, len
      else if (r < 0.78) printf "write -z -u %d %d\n", off, len
      else if (r < 0.88 && discard) {
        off = int(off / cs) * cs; len = int((len + cs - 1) / cs) * cs
        if (off + len > size) len = size - off
        if (len > 0) printf "discard %d %d\n", off, len
      }
      else               print "flush"
    }
  }'
}
