#!/usr/bin/env bash
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# The cost of keeping dirty bitmaps: random 4K writes (fio --ioengine=nbd, iodepth 16) into a
# full image without bitmaps and into the same image with 2 enabled bitmaps (512 B and 64 KiB
# granularity), rblock and qemu-nbd, rounds interleaved in one run (the order flips every
# round).  Printed: the best IOPS of each, and the server's CPU time per write (median over the
# rounds; on a busy machine IOPS swing by tens of percent, the CPU a write costs much less).
set -euo pipefail
. "$(dirname "$0")/common.sh"
size=${SIZE:-512M}
secs=${SECS:-8}
runs=${RUNS:-4}
hz=$(getconf CLK_TCK)

head -c "$size" /dev/urandom > "$work/src.raw"
qemu-img convert -O qcow2 "$work/src.raw" "$work/full.qcow2"
cp "$work/full.qcow2" "$work/plain.qcow2"         # both copies made the same way
cp "$work/full.qcow2" "$work/bitmaps.qcow2"
qemu-img bitmap --add -g 512 "$work/bitmaps.qcow2" fine
qemu-img bitmap --add -g 64K "$work/bitmaps.qcow2" coarse

# cpu_ticks PID: user + system clock ticks the process used so far.
cpu_ticks () { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# measure: fio against $URI (server $SERVER_PID); prints "IOPS CPU-microseconds-per-write".
measure () {
  local t0 t1 out
  t0=$(cpu_ticks "$SERVER_PID")
  out=$(fio --name=b --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k --iodepth=16 \
          --size="$size" --time_based --runtime="$secs" --output-format=json 2>/dev/null |
        sed -n '/^{/,$p' | jq -r '.jobs[0].write | "\(.iops | floor) \(.total_ios)"')
  t1=$(cpu_ticks "$SERVER_PID")
  set -- $out
  echo "$1 $(echo "($t1 - $t0) * 1000000 / $hz / $2" | bc -l | xargs printf '%.2f')"
}

declare -A iops cpu
for round in $(seq "$runs"); do
  order="plain bitmaps"
  [ $((round % 2)) = 0 ] && order="bitmaps plain"
  line="round $round:"
  for server in rblock_server qemu_server; do
    for img in $order; do
      k="${server%_server}/$img"
      "$server" "$work/$img.qcow2"; set -- $(measure); stop_server
      [ "${iops[$k]:-0}" -ge "$1" ] || iops[$k]=$1
      cpu[$k]="${cpu[$k]:-} $2"
      line="$line $k $1 IOPS ${2}us"
    done
  done
  echo "$line"
done
# The bitmaps were kept: QEMU reads them consistent after both servers wrote.
qemu-img info --output=json "$work/bitmaps.qcow2" |
  jq -e '[."format-specific".data.bitmaps[].flags] == [["auto"],["auto"]]' >/dev/null

median () { tr ' ' '\n' | grep . | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
pct () { printf '%+.1f%%' "$(echo "($2 / $1 - 1) * 100" | bc -l)"; }
echo "random 4K writes, iodepth 16, $size, $runs rounds of ${secs}s"
for s in rblock qemu; do
  cp_=$(echo "${cpu[$s/plain]}" | median) cb=$(echo "${cpu[$s/bitmaps]}" | median)
  printf '%-7s IOPS (best) %8s -> %8s with 2 bitmaps (%s); server CPU per write (median) %6sus -> %6sus (%s)\n' \
    "$s" "${iops[$s/plain]}" "${iops[$s/bitmaps]}" "$(pct "${iops[$s/plain]}" "${iops[$s/bitmaps]}")" \
    "$cp_" "$cb" "$(pct "$cp_" "$cb")"
done
