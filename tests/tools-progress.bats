#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# -p for wrappers: "done/total" lines on --progress=fd:N (as nbdcopy --progress=FD), or on
# stderr when it is not a terminal; a reader that goes away never stops the work.  (The
# terminal's bar is tested in convert-rb-convert.bats.)

load helpers

RB_CONVERT="$top_builddir/utils/rb-convert"
RB_DIFF="$top_builddir/utils/rb-diff"
RB_DELTA="$top_builddir/utils/rb-delta"

setup () {
  T="$BATS_TEST_TMPDIR"
  truncate -s 24M "$T/a.raw"
  dd if=/dev/urandom of="$T/a.raw" bs=1M count=5 seek=2 conv=notrunc status=none
  cp "$T/a.raw" "$T/b.raw"
  dd if=/dev/urandom of="$T/b.raw" bs=64k count=3 seek=200 conv=notrunc status=none
  SIZE=$(stat -c %s "$T/a.raw")
}

# progress_lines FILE TOTAL: FILE is "0/TOTAL", then non-decreasing "N/TOTAL", then "TOTAL/TOTAL".
progress_lines () {
  local file=$1 total=$2 prev=-1 n line
  echo "progress: $(wc -l < "$file") lines, first '$(head -1 "$file")', last '$(tail -1 "$file")'"
  [ "$(head -1 "$file")" = "0/$total" ]
  [ "$(tail -1 "$file")" = "$total/$total" ]
  while IFS= read -r line; do
    [[ $line =~ ^([0-9]+)/$total$ ]] || { echo "bad line '$line'"; return 1; }
    n=${BASH_REMATCH[1]}
    [ "$n" -ge "$prev" ] && [ "$n" -le "$total" ] || { echo "'$line' after $prev"; return 1; }
    prev=$n
  done < "$file"
}

@test "rb-convert --progress=fd:3: done/total lines on fd 3, nothing on stderr, the image as QEMU converts it" {
  "$RB_CONVERT" --progress=fd:3 "$T/a.raw" "$T/a.qcow2" 3>"$T/progress" 2>"$T/err"
  progress_lines "$T/progress" "$SIZE"
  [ ! -s "$T/err" ]
  qemu-img compare "$T/a.raw" "$T/a.qcow2"
  qemu_check_clean "$T/a.qcow2"
}

@test "rb-diff and rb-delta --progress=fd:N: the same lines; their results unchanged" {
  local out
  run "$RB_DIFF" --progress=fd:5 --count "$T/a.raw" "$T/b.raw" 5>"$T/p.diff"
  [ "$status" -eq 1 ]
  [ "$output" = "$(( 3 * 65536 / 512 ))" ]
  progress_lines "$T/p.diff" "$SIZE"
  "$RB_DELTA" --progress=fd:4 "$T/a.raw" "$T/b.raw" "$T/d.qcow2" 4>"$T/p.delta"
  progress_lines "$T/p.delta" "$SIZE"
  qemu-img compare "$T/b.raw" "$T/d.qcow2"
  qemu_check_clean "$T/d.qcow2"
}

@test "-p with stderr not a terminal (a pipe): the lines on stderr" {
  "$RB_CONVERT" -p "$T/a.raw" "$T/a.qcow2" 2>&1 >/dev/null | cat > "$T/progress"
  progress_lines "$T/progress" "$SIZE"
  qemu-img compare "$T/a.raw" "$T/a.qcow2"
}

@test "a progress reader that is gone (EPIPE): the conversion completes, exit 0" {
  # fd 3 is a pipe whose read end is closed before rb-convert starts, SIGPIPE at its default.
  python3 -c '
import os, signal, sys
r, w = os.pipe()
os.close(r)
os.dup2(w, 3)
signal.signal(signal.SIGPIPE, signal.SIG_DFL)
os.execv(sys.argv[1], sys.argv[1:])' "$RB_CONVERT" --progress=fd:3 "$T/a.raw" "$T/a.qcow2"
  qemu-img compare "$T/a.raw" "$T/a.qcow2"
  qemu_check_clean "$T/a.qcow2"
}

@test "--progress=fd:N with N not open, or not fd:N: a one-line usage error, nothing written" {
  local bad
  for bad in fd:9 fd: fd:-1 fd:3x 3 tty; do
    run "$RB_CONVERT" --progress="$bad" "$T/a.raw" "$T/x.qcow2"
    echo "$bad: $status $output"
    [ "$status" -eq 1 ]
    [ "${#lines[@]}" -eq 1 ]
    [[ $output == "rb-convert: --progress=$bad: expected fd:N with N an open file descriptor" ]]
    [ ! -e "$T/x.qcow2" ]
  done
  run "$RB_DIFF" --progress=fd:9 "$T/a.raw" "$T/b.raw"
  [ "$status" -eq 2 ]
  [[ $output == "rb-diff: --progress=fd:9: expected fd:N"* ]]
}
