#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# CI (.ci/run): the README's two quick-start commands, `bash scripts/demo.sh` and
# `bash .ci/run`, in either order, twice, in a fresh copy of the checkout whose path has a
# space in it.  The inner .ci/run runs a few suites only (RB_CI_STEPS=check, RB_CI_SUITES):
# the point is the build directory they share, not the suites (the outer CI runs them all).
# Run by .ci/run with top= and build=.

load helpers

# The inner CI's suites: make install and the plugin, from the path with a space.
INNER_SUITES="install-make.bats check-rbcheck.bats"

setup () {
  [ -d "$top/.git" ] || [ -f "$top/.git" ] || skip "not a git checkout: no clone to make"
  W="$BATS_TEST_TMPDIR/quick start"
}

# fresh_copy DIR: the files git tracks in $top, as they are in the work tree (a clone of it).
fresh_copy () {
  mkdir -p "$1"
  git -C "$top" ls-files -z | (cd "$top" && tar --null -T - -cf -) | tar -C "$1" -xf -
}

# demo DIR: the demo runs and shows its results (Hello, world! read back, QEMU's check, the walk).
demo () {
  local out
  out=$(cd "$1" && TMPDIR="$BATS_TEST_TMPDIR" outside_bats bash scripts/demo.sh 2>&1) || { echo "demo.sh failed:"; echo "$out" | tail -30; return 1; }
  grep -q 'read back: Hello, world!' <<< "$out" || { echo "$out" | tail -30; return 1; }
  grep -q 'No errors were found' <<< "$out"
  grep -q '  |Hello, world!' <<< "$out"     # the hexdump of the host cluster
}

# ci DIR: the inner .ci/run passes and ran tests.
ci () {
  local out
  out=$(cd "$1" && RB_CI_STEPS=check RB_CI_SUITES="$INNER_SUITES" outside_bats bash .ci/run 2>&1) ||
    { echo ".ci/run failed:"; echo "$out" | tail -40; return 1; }
  echo "$out" | tail -1
  [[ $(echo "$out" | tail -1) =~ ^([1-9][0-9]*)\ passed,\ 0\ failed$ ]]
}

@test "demo.sh, .ci/run, demo.sh, .ci/run in a fresh copy under a path with a space" {
  fresh_copy "$W/a b"
  demo "$W/a b"
  ci "$W/a b"
  demo "$W/a b"
  ci "$W/a b"
}

@test ".ci/run first, then demo.sh twice, in a fresh copy under a path with a space" {
  fresh_copy "$W/c d"
  ci "$W/c d"
  demo "$W/c d"
  demo "$W/c d"
}

@test "a source tree configured in place (./configure) is cleaned, and .ci/run and demo.sh still build in build/" {
  fresh_copy "$W/e f"
  (cd "$W/e f" && outside_bats autoreconf -fi >/dev/null 2>&1 && outside_bats ./configure -q >/dev/null)
  [ -f "$W/e f/config.status" ]
  ci "$W/e f"
  [ ! -f "$W/e f/config.status" ]
  [ -f "$W/e f/build/config.status" ]
  demo "$W/e f"
}
