# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# Helpers for the malformed-image suites: patch qemu-img-made images, assert refusal or EIO.
# Load after helpers.bash (it sets RBLOCK_SO and the nbdsh wrapper).

# patch_qcow2 IMAGE OP ARGS... [-- OP ARGS...]: see tests/qcow2-patch.py --help.
patch_qcow2 () {
  python3 "$top_srcdir/tests/qcow2-patch.py" "$@"
}

# mk_small_image IMAGE [CLUSTER_SIZE [qemu-img create -o OPTIONS]]: an 8 MiB qcow2, by
# default with 4 KiB clusters (so four L1 entries of 2 MiB each), holding 0x5a at 0..128K
# and 0x33 at 4M..4M+64K.
mk_small_image () {
  rm -f "$1"
  qemu-img create -q -f qcow2 -o "cluster_size=${2:-4096}${3:+,$3}" "$1" 8M
  qemu-io -c 'write -P 0x5a 0 128k' -c 'write -P 0x33 4M 64k' "$1" >/dev/null
}

# no_sanitizer_report FILE: FILE holds no ASan/UBSan report and no failed assertion.
no_sanitizer_report () {
  if grep -E -q 'Sanitizer|runtime error:|Assertion .* failed' "$1"; then
    echo "sanitizer report or assertion in $1:"; cat "$1"; return 1
  fi
}

# nbdkit_is_asan_wrapper: the nbdkit on PATH is the CI's script that preloads libasan into the
# un-instrumented /usr/bin/nbdkit (.ci/run's sanitizer run).
nbdkit_is_asan_wrapper () {
  local n
  n=$(command -v nbdkit) && head -c 2 "$n" | grep -q '#!' && grep -q libasan "$n"
}

# assert_refused IMAGE REGEX [nbdkit options and plugin parameters...]
# nbdkit refuses to serve IMAGE at start-up: it exits with status 1 (not a signal, not a
# timeout), before running anything, with exactly one line on stderr matching REGEX
# (grep -E) and no sanitizer report.
# Known environment problem: with libasan preloaded into nbdkit 1.32 (not instrumented), any
# error whose text came from strerror leaves nbdkit hung in exit() (libp11-kit's destructor
# waits in __freelocale; `nbdkit file /nonexistent` does the same).  Under that wrapper only, a
# server that printed its refusal and is still in exit() 5 s later counts as having exited 1.
assert_refused () {
  local img=$1 re=$2; shift 2
  local err="$BATS_TEST_TMPDIR/refused.err" out="$BATS_TEST_TMPDIR/refused.out"
  local st=0 lines pid i waited=0
  : > "$err"
  nbdkit -U "$BATS_TEST_TMPDIR/refused.sock" "$@" "$RBLOCK_SO" file="$img" \
    --run 'echo SERVED' >"$out" 2>"$err" </dev/null 3>&- &
  pid=$!
  for i in $(seq 1200); do
    kill -0 "$pid" 2>/dev/null || break
    if [ -s "$err" ] && nbdkit_is_asan_wrapper; then
      waited=$((waited + 1))
      if [ "$waited" -ge 100 ]; then
        echo "# nbdkit hung in exit after its refusal (preloaded ASan); killed" >&3
        kill -9 "$pid"; st=1; break
      fi
    fi
    sleep 0.05
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -9 "$pid"; wait "$pid" 2>/dev/null
    echo "nbdkit still running 60 s after start on $img; stderr:"; cat "$err"; return 1
  fi
  if [ "$st" -eq 0 ]; then wait "$pid" || st=$?; else wait "$pid" 2>/dev/null || true; fi
  if [ "$st" -ne 1 ] || grep -q SERVED "$out"; then
    echo "nbdkit exited with $st on $img (want 1, refused before serving); stderr:"
    cat "$err"; return 1
  fi
  no_sanitizer_report "$err"
  lines=$(wc -l < "$err")
  if [ "$lines" -ne 1 ] || ! grep -E -q -- "$re" "$err"; then
    echo "want one line matching /$re/, got $lines:"; cat "$err"; return 1
  fi
}

# qemu_refuses IMAGE: the oracle agrees the image is unusable (qemu-img info fails on the
# image or its backing chain).
qemu_refuses () {
  if qemu-img info -U --backing-chain "$1" >/dev/null 2>&1; then
    echo "qemu-img info accepts $1: the test image is not malformed"; return 1
  fi
}

# qemu_finds_corruption IMAGE: the oracle opens IMAGE but qemu-img check exits 2 (corruptions).
qemu_finds_corruption () {
  local out st=0
  out=$(qemu-img check -U "$1" 2>&1) || st=$?
  if [ "$st" -ne 2 ]; then
    echo "qemu-img check exited $st on $1 (want 2):"; echo "$out"; return 1
  fi
}

# start_rblock_logged IMAGE [nbdkit options and plugin parameters...]
# Like start_rblock, but nbdkit runs in the foreground in the background so that everything
# it prints (plugin errors, sanitizer reports) lands in $SERVER_LOG; stop it with
# stop_rblock_logged, which also asserts that it exited cleanly.
start_rblock_logged () {
  local img=$1; shift
  local nbdkit_opts=() params=() a i
  for a in "$@"; do
    if [[ "$a" == -* ]]; then nbdkit_opts+=("$a"); else params+=("$a"); fi
  done
  SOCK="$BATS_TEST_TMPDIR/nbd.sock"
  PIDFILE="$BATS_TEST_TMPDIR/nbdkit.pid"
  SERVER_LOG="$BATS_TEST_TMPDIR/nbdkit.log"
  URI="nbd+unix:///?socket=$SOCK"
  rm -f "$SOCK" "$PIDFILE"
  nbdkit -f "${nbdkit_opts[@]}" -U "$SOCK" -P "$PIDFILE" "$RBLOCK_SO" file="$img" \
    "${params[@]}" </dev/null >"$SERVER_LOG" 2>&1 3>&- &
  SERVER_PID=$!
  wait_until "$RB_WAIT" "nbdkit's socket and pidfile" eval '[ -S "$SOCK" ] && [ -s "$PIDFILE" ] || ! server_alive' &&
    [ -S "$SOCK" ] && [ -s "$PIDFILE" ] && return 0
  echo "nbdkit did not start:"; cat "$SERVER_LOG"; stop_rblock_logged; return 1
}

# server_alive: the server of start_rblock_logged is running (not gone, not a zombie).
server_alive () {
  local st
  st=$(ps -o stat= -p "$SERVER_PID" 2>/dev/null) || return 1
  [[ "$st" != Z* ]]
}

# stop_rblock_logged: SIGTERM the server, wait (bounded) for it, and assert that it exited
# with status 0 and printed no sanitizer report.  Safe to call twice.
stop_rblock_logged () {
  [ -n "${SERVER_PID:-}" ] || return 0
  local pid=$SERVER_PID st=0 i
  SERVER_PID=
  kill "$pid" 2>/dev/null || true
  wait_until "$RB_WAIT" "nbdkit $pid to exit" process_gone "$pid" || true
  if ps -o stat= -p "$pid" 2>/dev/null | grep -q -v '^Z'; then
    echo "nbdkit $pid did not stop"; kill -9 "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; return 1
  fi
  st=0; wait "$pid" 2>/dev/null || st=$?
  no_sanitizer_report "$SERVER_LOG"
  if [ "$st" -ne 0 ]; then
    echo "nbdkit exited with status $st; its output:"; cat "$SERVER_LOG"; return 1
  fi
}

# nbd_try URI OP OFFSET LENGTH [BYTE]: one request on one connection (nbdsh); prints "ok" or
# the errno name (EIO, EPERM, ...).  OP is pread, pwrite (LENGTH bytes of BYTE) or
# block_status.  One request at a time: nbdkit 1.32 may abort when a client drops its
# connection while other requests are in flight, so failures are probed with single requests.
nbd_try () {
  nbdsh --base-allocation -u "$1" -c "
import sys
try:
    op, off, n = '$2', $3, $4
    if op == 'pread':
        h.pread(n, off)
    elif op == 'pwrite':
        h.pwrite(bytes([${5:-0}]) * n, off)
    else:
        h.block_status(n, off, lambda *a: 0)
    print('ok')
except nbd.Error as e:
    print(e.errno)
"
}

# nbd_read_hex URI OFFSET LENGTH: the bytes read there, as hex (exit non-zero on error).
nbd_read_hex () {
  nbdsh -u "$1" -c "import sys; sys.stdout.write(h.pread($3, $2).hex())"
}
