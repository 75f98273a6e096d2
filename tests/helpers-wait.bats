#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# The tests' waits (helpers.bash): bounded, generous, and saying what they waited for.
# wait_progress lets a slow process run on while its log grows (the VM suite's boots).

load helpers

setup () {
  T="$BATS_TEST_TMPDIR"
}

@test "wait_until: returns as soon as the condition holds; on expiry names what it waited for" {
  (sleep 1; touch "$T/flag") &
  wait_until 60 "the flag" test -e "$T/flag"
  [ -e "$T/flag" ]
  run wait_until 2 "a file that never comes" test -e "$T/never"
  [ "$status" -eq 1 ]
  [[ $output == "timed out after "*" s waiting for a file that never comes" ]]
}

@test "wait_progress: a process whose log keeps growing runs past the idle limit; it returns 0 when it ends" {
  local pid
  # 8 s of a line every 0.2 s, with 5 s allowed between lines.
  (for i in $(seq 40); do echo "step $i"; sleep 0.2; done) > "$T/log" &
  pid=$!
  run wait_progress "$pid" "$T/log" 5 600 "the writer"
  echo "$output"
  [ "$status" -eq 0 ]
  [[ $output == "the writer ended after "* ]]
  [ "$(tail -1 "$T/log")" = "step 40" ]
}

@test "wait_progress: a process that stops writing is given up after the idle limit, with its last lines" {
  local pid
  (echo "booting"; echo "stuck here"; exec sleep 300) > "$T/log" &
  pid=$!
  run wait_progress "$pid" "$T/log" 3 600 "the guest"
  kill "$pid"
  echo "$output"
  [ "$status" -eq 1 ]
  [[ ${lines[0]} == "the guest made no progress for 3 s"* ]]
  [ "${lines[-1]}" = "stuck here" ]
}

@test "wait_progress: the absolute cap ends even a process that keeps writing" {
  local pid
  (while :; do echo tick; sleep 0.1; done) > "$T/log" &
  pid=$!
  run wait_progress "$pid" "$T/log" 60 3 "the chatty one"
  kill "$pid"
  [ "$status" -eq 1 ]
  [[ ${lines[0]} == "the chatty one ran past 3 s"* ]]
}

@test "run-bats bounds every test: one that hangs fails as a timeout (BATS_TEST_TIMEOUT) and the suite goes on" {
  printf '@test "hangs" {\n  sleep 600\n}\n@test "after it" {\n  true\n}\n' > "$T/hang.bats"
  run env -i PATH=/usr/bin:/bin BATS_TEST_TIMEOUT=2 "$top_srcdir/tests/run-bats" "$T/hang.bats"
  echo "$output"
  [ "$status" -ne 0 ]
  [[ ${lines[1]} == "not ok 1 hangs # timeout after 2s" ]]
  [[ $output == *"ok 2 after it"* ]]
  # The default is there when nothing is set.
  grep -q 'BATS_TEST_TIMEOUT=${BATS_TEST_TIMEOUT:-1200}' "$top_srcdir/tests/run-bats"
}
