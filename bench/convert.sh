#!/usr/bin/env bash
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# rb-convert vs qemu-img convert on a source that is about half random data in scattered
# 1 MiB extents and half zeros (written zeros and holes), rounds interleaved A/B.
# SIZE_MB=... RUNS=... ; TMPDIR=... picks the file system (source and outputs on it);
# RB_ARGS=... more rb-convert options (RB_ARGS=-C: the kernel's copy_file_range path).
set -euo pipefail
. "$(dirname "$0")/common.sh"
mb=${SIZE_MB:-1024}
runs=${RUNS:-5}
conv="$build/utils/rb-convert"

echo "making a $mb MiB source in $work ($(stat -f -c %T "$work")): random 1 MiB extents, written zeros and holes..."
truncate -s "${mb}M" "$work/src.raw"
awk -v n="$mb" 'BEGIN { srand(42); for (i = 0; i < n; i++) { r = rand(); print i, (r < 0.5 ? "data" : r < 0.75 ? "zero" : "hole") } }' |
while read -r i kind; do
  case $kind in
    data) echo "$i" >> "$work/data.list" ;;
    zero) dd if=/dev/zero of="$work/src.raw" bs=1M count=1 seek="$i" conv=notrunc status=none ;;
  esac
done
head -c "$(( $(wc -l < "$work/data.list") << 20 ))" /dev/urandom > "$work/rand"
k=0
while read -r i; do
  dd if="$work/rand" of="$work/src.raw" bs=1M count=1 skip=$k seek="$i" conv=notrunc status=none
  k=$((k + 1))
done < "$work/data.list"
mv "$work/rand" "$work/data.raw"   # the data bytes alone, for the floor row
sync
cat "$work/src.raw" "$work/data.raw" > /dev/null     # every command reads from the page cache

# timed OUT CMD...: run CMD once (OUT removed and everything synced first, outside the
# timing); prints "wall cpu" in seconds.
timed () {
  local out=$1; shift
  rm -f "$out"; sync
  { TIMEFORMAT='%R %U %S'; time "$@" > /dev/null 2> "$work/err"; } 2> "$work/time" ||
    { echo "failed: $*" >&2; cat "$work/err" >&2; exit 2; }
  awk '{ printf "%.3f %.3f\n", $1, $2 + $3 }' "$work/time"
}

# median: of the numbers on stdin
median () { sort -g | awk '{ v[NR] = $1 } END { printf "%.3f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# compare LABEL RB_ARGS -- QEMU_ARGS: RUNS interleaved rounds of rb-convert and qemu-img
# convert (the order alternating); medians of wall and CPU time, and the median of the
# rounds' speed ratios (qemu-img time / rb-convert time, > 1: rb-convert faster).
compare () {
  local label=$1 r q i; shift
  local rb_args=() qi_args=()
  # shellcheck disable=SC2206
  rb_args=(${RB_ARGS:-})
  while [ "$1" != -- ]; do rb_args+=("$1"); shift; done; shift
  qi_args=("$@")
  : > "$work/rb.t"; : > "$work/qi.t"
  for i in $(seq "$runs"); do
    if [ $((i % 2)) = 1 ]; then
      timed "$work/rb.out" "$conv" "${rb_args[@]}" "$work/src.raw" "$work/rb.out" >> "$work/rb.t"
      timed "$work/qi.out" qemu-img convert "${qi_args[@]}" "$work/src.raw" "$work/qi.out" >> "$work/qi.t"
    else
      timed "$work/qi.out" qemu-img convert "${qi_args[@]}" "$work/src.raw" "$work/qi.out" >> "$work/qi.t"
      timed "$work/rb.out" "$conv" "${rb_args[@]}" "$work/src.raw" "$work/rb.out" >> "$work/rb.t"
    fi
  done
  qemu-img compare -q "$work/src.raw" "$work/rb.out"
  qemu-img compare -q "$work/rb.out" "$work/qi.out"
  rb_med=$(cut -d' ' -f1 "$work/rb.t" | median)
  qi_med=$(cut -d' ' -f1 "$work/qi.t" | median)
  printf '%-34s rb-convert %ss (cpu %ss)  qemu-img %ss (cpu %ss)  speed ratio %s (rounds %s)\n' "$label" \
    "$rb_med" "$(cut -d' ' -f2 "$work/rb.t" | median)" \
    "$qi_med" "$(cut -d' ' -f2 "$work/qi.t" | median)" \
    "$(paste -d' ' "$work/qi.t" "$work/rb.t" | awk '{ print $1 / $3 }' | median)" \
    "$(paste -d' ' "$work/qi.t" "$work/rb.t" | awk '{ printf "%.2f ", $1 / $3 }' | sed 's/ $//')"
}

echo "$mb MiB, half data, $runs rounds, medians (times exclude removing the old output and a sync):"
# Same durability on both sides: qemu-img convert's default is cache=unsafe (no flush at
# all), which rb-convert --no-sync matches; rb-convert's default syncs before the rename,
# which qemu-img convert -t writeback (flush at the end) matches.
compare "to qcow2, no flush:" --no-sync -- -O qcow2
# The floor: only the data's bytes (no zeros to find, no metadata) copied into a new file
# by cp (copy_file_range: one copy in the kernel) and by dd bs=4M (read and write), and
# written from memory by fio (one writer, 1 MiB writes, nothing read, no fallocate: fio's
# own run time), with no flush.  On tmpfs nothing writes a file faster: writes to one file
# take its inode lock (a second writer waits), space allocated first (fallocate) measured
# slower, and two threads writing through a shared mapping no faster than one pwrite writer,
# so qemu-img's time over fio's is the most any converter could be faster than qemu-img
# there.  On ext4 space reserved first (as rb-convert does) is faster than fio's writes.
: > "$work/cp.t"; : > "$work/dd.t"; : > "$work/fio.t"
data_mb=$(( $(stat -c %s "$work/data.raw") >> 20 ))
for i in $(seq "$runs"); do
  timed "$work/cp.out" cp "$work/data.raw" "$work/cp.out" >> "$work/cp.t"
  timed "$work/dd.out" dd if="$work/data.raw" of="$work/dd.out" bs=4M >> "$work/dd.t"
  if command -v fio > /dev/null; then
    rm -f "$work/fio.out"; sync
    fio --name=w --ioengine=psync --rw=write --bs=1M --size="${data_mb}M" --fallocate=none \
        --filename="$work/fio.out" --output-format=json 2>/dev/null | sed -n '/^{/,$p' |
      jq '.jobs[0].write.runtime / 1000' >> "$work/fio.t"
  fi
done
rm -f "$work/cp.out" "$work/dd.out" "$work/fio.out"
cp_med=$(cut -d' ' -f1 "$work/cp.t" | median)
dd_med=$(cut -d' ' -f1 "$work/dd.t" | median)
floor=$(printf '%s\n%s\n' "$cp_med" "$dd_med" | sort -g | head -1)
printf '%-34s cp %ss  dd %ss; to qcow2 with no flush, rb-convert takes %sx the faster, qemu-img %sx\n' \
  "the data alone ($data_mb MiB), no flush:" "$cp_med" "$dd_med" \
  "$(echo "$rb_med / $floor" | bc -l | xargs printf '%.2f')" "$(echo "$qi_med / $floor" | bc -l | xargs printf '%.2f')"
if [ -s "$work/fio.t" ]; then
  wr_med=$(median < "$work/fio.t")
  qi_wr=$(echo "$qi_med / $wr_med" | bc -l | xargs printf '%.2f')
  printf '%-34s fio %ss; rb-convert takes %sx that, qemu-img %sx (on tmpfs the most any converter could gain over qemu-img)\n' \
    "the data alone written from memory:" "$wr_med" \
    "$(echo "$rb_med / $wr_med" | bc -l | xargs printf '%.2f')" "$qi_wr"
fi
compare "to qcow2, durable:" -- -t writeback -O qcow2
printf 'qcow2 output size: rb-convert %d bytes (%d KiB on disk)  qemu-img %d bytes (%d KiB on disk)\n' \
  "$(stat -c %s "$work/rb.out")" "$(du -k "$work/rb.out" | cut -f1)" \
  "$(stat -c %s "$work/qi.out")" "$(du -k "$work/qi.out" | cut -f1)"
compare "to raw, no flush:" -O raw --no-sync -- -O raw
