# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# Helpers for the benchmarks: servers on Unix sockets, timing, ratios.  Sourced, not run.

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${RB_BUILD:-$top/build}
plugin="$build/rblock.so"
[ -e "$plugin" ] || { echo "no $plugin: build first (bash scripts/setup.sh build) or set RB_BUILD"; exit 2; }
work=$(mktemp -d "${TMPDIR:-/tmp}/rblock-bench.XXXXXX")
trap 'stop_server; rm -rf "$work"' EXIT
SERVER_PID=

# start_server NAME CMD...: run a server on $work/NAME.sock; sets URI.
start_server () {
  local name=$1; shift
  SOCK="$work/$name.sock"; URI="nbd+unix:///?socket=$SOCK"
  rm -f "$SOCK"
  "$@" &
  SERVER_PID=$!
  for _ in $(seq 200); do [ -S "$SOCK" ] && return 0; sleep 0.05; done
  echo "server $name did not start"; exit 2
}

stop_server () {
  [ -n "$SERVER_PID" ] || return 0
  kill "$SERVER_PID" 2>/dev/null
  wait "$SERVER_PID" 2>/dev/null
  SERVER_PID=
}

rblock_server () {   # image [nbdkit options]
  local img=$1; shift
  start_server rblock nbdkit -f "$@" -U "$work/rblock.sock" "$plugin" file="$img"
}
qemu_server () {     # image [qemu-nbd options]
  local img=$1; shift
  start_server qemu qemu-nbd -f qcow2 --cache=writeback --aio=threads --shared=8 --persistent "$@" -k "$work/qemu.sock" "$img"
}

# best_of N CMD...: the fastest of N runs, in seconds.
best_of () {
  local n=$1 best= t0 t1 t; shift
  for _ in $(seq "$n"); do
    t0=$(date +%s.%N); "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; return 1; }; t1=$(date +%s.%N)
    t=$(echo "$t1 - $t0" | bc -l)
    if [ -z "$best" ] || [ "$(echo "$t < $best" | bc -l)" = 1 ]; then best=$t; fi
  done
  printf '%.3f' "$best"
}

# ratio A B: B/A (>1 means A is faster)
ratio () { printf '%.2f' "$(echo "$2 / $1" | bc -l)"; }
