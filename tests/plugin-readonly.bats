#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# Read-only means read-only: -r anywhere, read-only filters, unwritable files; write access
# (QEMU's write lock, dirty repair) only when a client that may write connects.

load helpers

setup () {
  T="$BATS_TEST_TMPDIR"
  RSOCK="$T/rpc.sock"
  # probe.py, run inside an NBD connection (so the plugin's .open has run):
  # RO=1: the export is read-only; RO=0: a write reads back (RO=- neither); then QEMU's
  # reader (qemu-img info without -U) opens the image and QEMU's writer
  # (qemu-io, of WIMG if set: another path to the file, "" for none) is refused, as by any
# QEMU reader: only reader locks are held.
  cat > "$T/probe.py" <<'EOF'
import os, subprocess, sys
img = os.environ["IMG"]
if os.environ["RO"] == "1":
    assert h.is_read_only(), "export is writable"
elif os.environ["RO"] == "0":
    h.pwrite(b"\x5a" * 4096, 1 << 20)
    assert h.pread(4096, 1 << 20) == b"\x5a" * 4096
r = subprocess.run(["qemu-img", "info", img], capture_output=True, text=True)
assert r.returncode == 0, "qemu-img info without -U: " + r.stderr
wimg = os.environ.get("WIMG", img)
if wimg:
    r = subprocess.run(["qemu-io", "-c", "write 0 512", wimg], capture_output=True, text=True)
    assert r.returncode != 0 and '"write" lock' in r.stdout + r.stderr, "qemu-io writer: " + r.stdout + r.stderr
EOF
}

teardown () {
  stop_rblock
  if mountpoint -q "$T/ro" 2>/dev/null; then umount "$T/ro"; fi
  if [ -e "$T/imm.qcow2" ]; then chattr -i "$T/imm.qcow2" 2>/dev/null || true; fi
}

# probe IMAGE RO: run probe.py in a connection to $URI.
probe () {
  IMG="$1" RO="$2" nbdsh -u "$URI" -c "exec(open('$T/probe.py').read())"
}

# A lazy-refcounts image left dirty by a QEMU crash (qemu-io abort), and a copy of it.
make_dirty () {
  qemu-img create -q -f qcow2 -o lazy_refcounts=on,cluster_size=4096 "$1" 16M
  qemu-io -c 'write -P 5 0 1M' -c 'flush' -c 'write -P 6 3M 2M' -c 'flush' -c abort "$1" >/dev/null 2>&1 || true
  qemu-img info "$1" | grep -q 'cleanly shut down: no'
  cp "$1" "$1.copy"
}

# assert_dirty_untouched IMAGE: byte for byte its copy; still dirty (nothing repaired).
assert_dirty_untouched () {
  cmp "$1" "$1.copy" || { echo "$1 was modified"; return 1; }
  qemu-img info "$1" | grep -q 'cleanly shut down: no'
}

rpc () {
  printf '%s' "$1" | timeout 10 nc -N -U "$RSOCK"
}

@test "-r anywhere on nbdkit's command line: read-only export, only reader locks, a dirty image untouched" {
  local d="$T/d.qcow2" i
  make_dirty "$d"
  qemu-img convert -U -O raw "$d" "$T/want.raw"
  placements=(
    "-r @SO@ file=@IMG@"
    "--threads 4 -r @SO@ file=@IMG@"
    "@SO@ file=@IMG@ -r"
    "--filter cow -r @SO@ file=@IMG@"
    "@SO@ file=@IMG@ --readonly"
    "-t 2 -vr @SO@ file=@IMG@"
  )
  for p in "${placements[@]}"; do
    p=${p//@SO@/$RBLOCK_SO}; p=${p//@IMG@/$d}
    read -r -a args <<< "$p"
    start_nbdkit "${args[@]}"
    probe "$d" 1 || { echo "placement: $p"; false; }
    nbdcopy "$URI" "$T/got.raw"
    cmp "$T/got.raw" "$T/want.raw"
    stop_rblock
    assert_dirty_untouched "$d" || { echo "placement: $p"; false; }
  done
}

@test "--run CMD -r: the captive client gets a read-only export and the dirty image stays as it was" {
  local d="$T/d.qcow2"
  make_dirty "$d"
  IMG="$d" RO=1 nbdkit -U - "$RBLOCK_SO" file="$d" \
    --run "PATH=/usr/bin:\$PATH nbdsh -u \"\$uri\" -c \"exec(open('$T/probe.py').read())\"" -r
  assert_dirty_untouched "$d"
}

@test "read-only filters (cow, checkwrite) never make the image writable: writes stay in the filter, the file unchanged" {
  local d="$T/d.qcow2"
  make_dirty "$d"
  # cow: the client writes (into cow's overlay) and reads its write back.
  start_nbdkit --filter=cow "$RBLOCK_SO" file="$d"
  probe "$d" 0
  stop_rblock
  assert_dirty_untouched "$d"
  # checkwrite: a write of the same bytes is accepted, a different one is EIO.
  start_nbdkit --filter=checkwrite "$RBLOCK_SO" file="$d"
  IMG="$d" RO=- nbdsh -u "$URI" -c '
h.pwrite(b"\x05" * 4096, 0)
try:
    h.pwrite(b"\x07" * 4096, 0)
    raise SystemExit("checkwrite accepted a change")
except nbd.Error as e:
    assert e.errno == "EIO", e
' -c "exec(open('$T/probe.py').read())"
  stop_rblock
  assert_dirty_untouched "$d"
  # nbdkit 1.32 has no readonly filter; when one is installed it must behave the same.
  if nbdkit --filter=readonly null --dump-plugin >/dev/null 2>&1; then
    start_nbdkit --filter=readonly "$RBLOCK_SO" file="$d"
    probe "$d" 1
    stop_rblock
    assert_dirty_untouched "$d"
  else
    echo "# no readonly filter in nbdkit $(nbdkit --version | cut -d' ' -f2): not run" >&3
  fi
}

@test "a dirty image served writable is repaired only when a client that may write connects" {
  local d="$T/d.qcow2"
  make_dirty "$d"
  start_nbdkit "$RBLOCK_SO" file="$d"
  # Started, no client yet: nothing repaired, no write lock.
  assert_dirty_untouched "$d"
  qemu-img info "$d" > /dev/null
  # A client that may write: repaired, QEMU's write lock held.
  nbdsh -u "$URI" -c 'assert not h.is_read_only()' -c 'h.pwrite(b"\x09" * 512, 8 << 20)'
  run qemu-img info "$d"
  [ "$status" -ne 0 ]
  [[ "$output" == *'Failed to get shared "write" lock'* ]]
  stop_rblock
  ! qemu-img info "$d" | grep -q 'cleanly shut down: no'
  qemu_check_clean "$d"
  qemu-io -c 'read -P 5 0 1M' -c 'read -P 6 3M 2M' -c 'read -P 9 8M 512' "$d" > "$T/out"
  ! grep -q 'verification failed' "$T/out"
}

@test "an image file that cannot be opened for writing is served read-only (debug message), no write lock" {
  if [ "$(id -u)" -eq 0 ]; then
    # root ignores chmod 0444: use a read-only bind mount, else an immutable file.
    mkdir "$T/src" "$T/ro"
    qemu-img create -q -f qcow2 "$T/src/p.qcow2" 16M
    qemu-io -c 'write -P 3 0 64k' "$T/src/p.qcow2" > /dev/null
    if mount --bind -o ro "$T/src" "$T/ro" 2>/dev/null; then
      img="$T/ro/p.qcow2" wimg="$T/src/p.qcow2"
    elif cp "$T/src/p.qcow2" "$T/imm.qcow2" && chattr +i "$T/imm.qcow2" 2>/dev/null; then
      img="$T/imm.qcow2" wimg=""
    else
      skip "running as root without mount --bind -o ro or chattr +i: no file root cannot open for writing"
    fi
  else
    img="$T/p.qcow2" wimg=""
    qemu-img create -q -f qcow2 "$img" 16M
    qemu-io -c 'write -P 3 0 64k' "$img" > /dev/null
    chmod 0444 "$img"
  fi
  cp "$img" "$T/copy.qcow2"
  start_nbdkit -v "$RBLOCK_SO" file="$img" rpc="unix:$RSOCK" rpc-writable=true
  WIMG="$wimg" probe "$img" 1
  grep -q "serving read-only: .*cannot open for writing" "$T/nbdkit.err"
  wait_until "$RB_WAIT" "the RPC socket" test -S "$RSOCK"
  r=$(rpc '{"jsonrpc":"2.0","method":"write","params":{"offset":0,"data":"UlBD"},"id":1}')
  [ "$(jq .error.data.errno <<< "$r")" = 30 ]      # EROFS
  stop_rblock
  cmp "$img" "$T/copy.qcow2"
}

@test "rpc-writable=true writes only while the image is writable: refused under -r and before a writable client" {
  local img="$T/r.qcow2"
  qemu-img create -q -f qcow2 "$img" 16M
  cp "$img" "$T/copy.qcow2"
  write='{"jsonrpc":"2.0","method":"write","params":{"offset":0,"data":"UlBD"},"id":1}'
  avail='{"jsonrpc":"2.0","method":"list_methods","id":2}'
  start_nbdkit --threads 4 -r "$RBLOCK_SO" file="$img" rpc="unix:$RSOCK" rpc-writable=true
  wait_until "$RB_WAIT" "the RPC socket" test -S "$RSOCK"
  probe "$img" 1
  r=$(rpc "$write")
  [ "$(jq .error.data.errno <<< "$r")" = 30 ]
  [[ "$(jq -r .error.message <<< "$r")" == *"read-only"* ]]
  [ "$(rpc "$avail" | jq '.result[] | select(.name == "write") | .available')" = false ]
  stop_rblock
  cmp "$img" "$T/copy.qcow2"
  # Without -r: refused until an NBD client that may write has connected, then served.
  start_nbdkit "$RBLOCK_SO" file="$img" rpc="unix:$RSOCK" rpc-writable=true
  wait_until "$RB_WAIT" "the RPC socket" test -S "$RSOCK"
  [ "$(rpc "$write" | jq .error.data.errno)" = 30 ]
  cmp "$img" "$T/copy.qcow2"
  nbdsh -u "$URI" -c 'assert not h.is_read_only()'
  rpc "$write" | jq -e '.result' > /dev/null
  [ "$(rpc "$avail" | jq '.result[] | select(.name == "write") | .available')" = true ]
  [ "$(nbdsh -u "$URI" -c 'import sys; sys.stdout.write(h.pread(3, 0).decode())')" = RPC ]
  stop_rblock
  qemu_check_clean "$img"
}

@test "rb_make_writable while four threads read: every read right, writes after it land, the image checks clean" {
  local img="$T/u.qcow2" args=()
  qemu-img create -q -f qcow2 -o cluster_size=65536 "$img" 32M
  for i in $(seq 0 127); do args+=(-c "write -P $((i % 251 + 1)) $((i * 65536)) 64k"); done
  qemu-io "${args[@]}" "$img" > /dev/null
  "$top_builddir/tests/upgrade-race" "$img"
  qemu_check_clean "$img"
  args=(); for i in $(seq 0 255); do args+=(-c "read -P $((i % 251 + 1)) $((i * 65536)) 64k"); done
  qemu-io "${args[@]}" "$img" > "$T/out"
  ! grep -q 'verification failed' "$T/out"
}

@test "--run without -r: the captive client may write (nbdkit's parent shares the read-only descriptor)" {
  local img="$T/w.qcow2"
  qemu-img create -q -f qcow2 "$img" 16M
  nbdkit -U - "$RBLOCK_SO" file="$img" \
    --run 'PATH=/usr/bin:$PATH nbdsh -u "$uri" -c "assert not h.is_read_only()" -c "h.pwrite(b\"captive!\", 65536)"'
  qemu_check_clean "$img"
  qemu-img convert -O raw "$img" "$T/w.raw"
  [ "$(dd if="$T/w.raw" bs=1 skip=65536 count=8 status=none)" = "captive!" ]
}
