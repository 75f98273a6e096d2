#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# libFuzzer smoke: each target replays tests/fuzz/regress/ and fuzzes for FUZZ_SECONDS (default 30).

setup_file () {
  command -v clang >/dev/null || { echo "clang is required (CI installs it from .ci/packages)" >&2; return 1; }
}

@test "fuzz-image (open, read, map, check and write fuzzed images): no crash, no hang" {
  FUZZ_OUT="$BATS_TEST_TMPDIR" FUZZ_SECONDS="${FUZZ_SECONDS:-30}" run "$top_srcdir/tests/fuzz/run.sh" fuzz-image
  echo "$output" | tail -30
  [ "$status" -eq 0 ]
  [[ "$output" == *"Done "*" runs in "* ]]
  echo "# $(echo "$output" | grep -o 'Done [0-9]* runs in [0-9]* second(s)' | tail -1)" >&3
}

@test "fuzz-plugin (write/zero/trim/flush/extents through the plugin callbacks on fuzzed images, model-checked): no crash, no mismatch" {
  FUZZ_OUT="$BATS_TEST_TMPDIR" FUZZ_SECONDS="${FUZZ_SECONDS:-30}" run "$top_srcdir/tests/fuzz/run.sh" fuzz-plugin
  echo "$output" | tail -30
  [ "$status" -eq 0 ]
  [[ "$output" == *"Done "*" runs in "* ]]
  echo "# $(echo "$output" | grep -o 'Done [0-9]* runs in [0-9]* second(s)' | tail -1)" >&3
}

@test "fuzz-model (operation sequences vs a flat buffer, clean check at the end): no mismatch" {
  FUZZ_OUT="$BATS_TEST_TMPDIR" FUZZ_SECONDS="${FUZZ_SECONDS:-30}" run "$top_srcdir/tests/fuzz/run.sh" fuzz-model
  echo "$output" | tail -30
  [ "$status" -eq 0 ]
  [[ "$output" == *"Done "*" runs in "* ]]
  echo "# $(echo "$output" | grep -o 'Done [0-9]* runs in [0-9]* second(s)' | tail -1)" >&3
}

@test "fuzz-writer (the streaming writer on fuzzed data and options, read back and checked): no mismatch" {
  FUZZ_OUT="$BATS_TEST_TMPDIR" FUZZ_SECONDS="${FUZZ_SECONDS:-30}" run "$top_srcdir/tests/fuzz/run.sh" fuzz-writer
  echo "$output" | tail -30
  [ "$status" -eq 0 ]
  [[ "$output" == *"Done "*" runs in "* ]]
  echo "# $(echo "$output" | grep -o 'Done [0-9]* runs in [0-9]* second(s)' | tail -1)" >&3
}

@test "fuzz-rpc (the JSON-RPC framer and dispatcher on fuzzed streams): no crash" {
  FUZZ_OUT="$BATS_TEST_TMPDIR" FUZZ_SECONDS="${FUZZ_SECONDS:-30}" run "$top_srcdir/tests/fuzz/run.sh" fuzz-rpc
  echo "$output" | tail -30
  [ "$status" -eq 0 ]
  [[ "$output" == *"Done "*" runs in "* ]]
  echo "# $(echo "$output" | grep -o 'Done [0-9]* runs in [0-9]* second(s)' | tail -1)" >&3
}
