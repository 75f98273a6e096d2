# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# Helpers for the benchmarks: servers on Unix sockets, timing, ratios.  Sourced, not run.

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${RB_BUILD:-$top/build}
plugin="$build/rblock.so"
[ -e "$plugin" ] || { echo "no $plugin: build first (bash scripts/setup.sh build) or set RB_BUILD"; exit 2; }
work=$(mktemp -d "${TMPDIR:-/tmp}/rblock-bench.XXXXXX")
trap 'stop_server; rm -rf "$work"; restore_page_reporting' EXIT
SERVER_PID=

# Free page reporting: a VM that gives its freed memory back to the host (virtio-balloon,
# /sys/module/page_reporting) pays a host fault, at random, for the fresh pages every
# round's output takes: single rounds of the same command swing 0.2x-10x and the ratios
# are noise.  RB_BENCH_NO_PAGE_REPORTING=1 (root) stops it for the benchmark (an order
# above the largest: nothing is reported), touches the free memory once so that it is
# backed again, and puts the old order back at the end.  Without it, a line says so.
page_reporting_param=/sys/module/page_reporting/parameters/page_reporting_order
page_reporting_old=
restore_page_reporting () {
  [ -z "$page_reporting_old" ] || echo "$page_reporting_old" > "$page_reporting_param"
}
if [ -r "$page_reporting_param" ] && [ "$(cat "$page_reporting_param")" -le 10 ]; then
  if [ "${RB_BENCH_NO_PAGE_REPORTING:-0}" = 1 ]; then
    old=$(cat "$page_reporting_param")
    echo 11 > "$page_reporting_param" 2>/dev/null ||
      { echo "RB_BENCH_NO_PAGE_REPORTING=1: cannot write $page_reporting_param (root?)"; exit 2; }
    page_reporting_old=$old
    touch_mb=$(awk '/^MemAvailable:/ { print int($2 / 1024 * 3 / 4) }' /proc/meminfo)
    echo "free page reporting stopped for this run (order $old -> 11); touching $touch_mb MiB of free memory..."
    # One buffer of that size, filled: dd's block is its buffer.
    dd if=/dev/zero of=/dev/null bs="${touch_mb}M" count=1 iflag=fullblock status=none
  else
    echo "note: free page reporting is on (the host takes freed memory back): single rounds vary widely;"
    echo "      RB_BENCH_NO_PAGE_REPORTING=1 (root) stops it for the run"
  fi
fi

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
