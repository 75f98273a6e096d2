#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# libFuzzer smoke: each target replays tests/fuzz/regress/ and fuzzes for FUZZ_SECONDS (default 30).

setup_file () {
  command -v clang >/dev/null || { echo "clang is required (CI installs it from .ci/packages)" >&2; return 1; }
}

# fuzz_target NAME: build NAME, replay its regression inputs, fuzz for FUZZ_SECONDS; it must
# finish cleanly, and the log gets its run count.
fuzz_target () {
  FUZZ_OUT="$BATS_TEST_TMPDIR" FUZZ_SECONDS="${FUZZ_SECONDS:-30}" run "$top_srcdir/tests/fuzz/run.sh" "$1"
  echo "$output" | tail -30
  [ "$status" -eq 0 ]
  [[ "$output" == *"Done "*" runs in "* ]]
  echo "# $(echo "$output" | grep -o 'Done [0-9]* runs in [0-9]* second(s)' | tail -1)" >&3
}

@test "fuzz-image (open, read, map, check and write fuzzed images): no crash, no hang" {
  fuzz_target fuzz-image
}

@test "fuzz-plugin (write/zero/trim/flush/extents through the plugin callbacks on fuzzed images, model-checked): no crash, no mismatch" {
  fuzz_target fuzz-plugin
}

@test "fuzz-model (operation sequences vs a flat buffer, clean check at the end): no mismatch" {
  fuzz_target fuzz-model
}

@test "fuzz-writer (the streaming writer on fuzzed data and options, read back and checked): no mismatch" {
  fuzz_target fuzz-writer
}

@test "fuzz-rpc (the JSON-RPC framer and dispatcher on fuzzed streams): no crash" {
  fuzz_target fuzz-rpc
}
