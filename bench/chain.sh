#!/usr/bin/env bash
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# rb-commit vs qemu-img commit and rb-rebase vs qemu-img rebase on the same chains: a 1 GiB
# qcow2 base full of data, an overlay with ~5% of the disk changed in 64 KiB pieces, and
# (for rebase) a new base that differs from the old one in another ~5%.  Each run starts
# from fresh, cached copies; the rounds alternate between the tools and the best of RUNS
# of each is printed with the ratio; both results are checked.  SIZE_MB=... to resize.
set -euo pipefail
. "$(dirname "$0")/common.sh"
mb=${SIZE_MB:-1024}
runs=${RUNS:-3}
u="$build/utils"

# scatter IMG SEED PATTERN: write ~5% of the disk in 64 KiB pieces at random places.
scatter () {
  awk -v n="$(( mb * 16 * 5 / 100 ))" -v slots="$(( mb * 16 ))" -v s="$2" \
    'BEGIN { srand(s); for (i = 0; i < n; i++) print int(rand() * slots) }' | sort -n -u |
    awk -v p="$3" '{ printf "write -P %d %d 64k\n", p + NR % 7, $1 * 65536 }' > "$work/cmds"
  qemu-io "$1" < "$work/cmds" > /dev/null
}

echo "making a $mb MiB base, an overlay with ~5% changed and a new base with another ~5%..."
head -c "${mb}M" /dev/urandom > "$work/base.raw"
qemu-img convert -O qcow2 "$work/base.raw" "$work/base.qcow2"
rm "$work/base.raw"
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$work/top.qcow2"
scatter "$work/top.qcow2" 7 16
cp "$work/base.qcow2" "$work/newbase.qcow2"
scatter "$work/newbase.qcow2" 11 64
qemu-img convert -O raw "$work/top.qcow2" "$work/want.raw"

# once CMD...: seconds CMD takes (after fresh copies and a sync, not timed).
once () {
  local t0 t1
  fresh; sync
  t0=$(date +%s.%N); "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }; t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc -l
}

# pair "A..." "B...": the best of RUNS of each, the rounds interleaved (A B A B ...)
# so that a machine getting busier or quieter weighs on both alike.  Sets ta, tb.
pair () {
  local t
  ta=; tb=
  for _ in $(seq "$runs"); do
    t=$(once $1); if [ -z "$ta" ] || [ "$(echo "$t < $ta" | bc -l)" = 1 ]; then ta=$t; fi
    t=$(once $2); if [ -z "$tb" ] || [ "$(echo "$t < $tb" | bc -l)" = 1 ]; then tb=$t; fi
  done
  ta=$(printf '%.3f' "$ta"); tb=$(printf '%.3f' "$tb")
}

fresh () {   # the chain in $work/run/
  rm -rf "$work/run"; mkdir "$work/run"
  cp "$work/base.qcow2" "$work/top.qcow2" "$work/newbase.qcow2" "$work/run/"
  cat "$work/run/"*.qcow2 > /dev/null
}

pair "$u/rb-commit -q $work/run/top.qcow2" "qemu-img commit -q $work/run/top.qcow2"
printf 'commit, %d MiB base, ~5%% changed: rb-commit %ss  qemu-img commit %ss  speed ratio %s\n' \
  "$mb" "$ta" "$tb" "$(ratio "$ta" "$tb")"
qemu-img compare -q "$work/want.raw" "$work/run/base.qcow2"    # qemu-img's, the last round
fresh; "$u/rb-commit" -q "$work/run/top.qcow2"
qemu-img compare -q "$work/want.raw" "$work/run/base.qcow2"
qemu-img check -q "$work/run/base.qcow2"

pair "$u/rb-rebase -q -b newbase.qcow2 -F qcow2 $work/run/top.qcow2" \
  "qemu-img rebase -q -b newbase.qcow2 -F qcow2 $work/run/top.qcow2"
printf 'rebase, %d MiB backing files ~5%% apart: rb-rebase %ss  qemu-img rebase %ss  speed ratio %s\n' \
  "$mb" "$ta" "$tb" "$(ratio "$ta" "$tb")"
qemu-img compare -q "$work/want.raw" "$work/run/top.qcow2"
fresh; "$u/rb-rebase" -q -b newbase.qcow2 -F qcow2 "$work/run/top.qcow2"
qemu-img compare -q "$work/want.raw" "$work/run/top.qcow2"
qemu-img check -q "$work/run/top.qcow2"
rb_size=$(stat -c %s "$work/run/top.qcow2")
fresh; qemu-img rebase -q -b newbase.qcow2 -F qcow2 "$work/run/top.qcow2"
printf 'rebased overlay: rb-rebase %d bytes  qemu-img %d bytes\n' "$rb_size" "$(stat -c %s "$work/run/top.qcow2")"
