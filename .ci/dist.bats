#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# CI (.ci/run): the release tarball.  make dist holds every file git tracks; make distcheck
# builds it out of tree, runs its suites, installs, uninstalls and cleans up without leftovers.
# Run by .ci/run with top= (the checkout) and build= (its build/).

load helpers

# The suites distcheck runs from the tarball in CI: together they use every kind of file the
# tests need (rb-tool, qcow2-patch.py, replay.py, the shared helpers, the plugin and rb-rpc,
# make install).  The main check already ran every suite from the same sources, and the first
# test proves the tarball holds all of them; RB_DISTCHECK_SUITES=all runs every suite here too.
DISTCHECK_SUITES="install-make.bats check-rbcheck.bats engine-bitmaps.bats engine-powerfail.bats
  diff-nbd.bats malformed-metadata.bats rpc-plugin.bats vm-clients.bats"

setup () {
  cd "$build"
}

@test "make dist: the tarball holds every file git tracks" {
  local tarball list missing
  [ -d "$top/.git" ] || [ -f "$top/.git" ] || skip "not a git checkout: nothing to compare the tarball with"
  rm -f rblock-*.tar.gz
  outside_bats make dist >/dev/null
  tarball=$(ls rblock-*.tar.gz)
  [ "$(echo "$tarball" | wc -l)" -eq 1 ]
  list=$(tar tzf "$tarball" | sed 's|^[^/]*/||' | grep -v '/$' | sort)
  # .gitignore and the .keep files of generated folders are git's, not the build's.
  missing=$(git -C "$top" ls-files | grep -v -x -e .gitignore -e 'm4/.keep' -e 'build-aux/.keep' |
            sort | comm -23 - <(echo "$list"))
  [ -z "$missing" ] || { echo "missing from $tarball:"; echo "$missing"; return 1; }
  # ...and what configure needs, generated: no autoreconf for the user of a tarball.
  for f in configure Makefile.in build-aux/tap-driver.sh build-aux/ltmain.sh config.h.in; do
    grep -qx "$f" <<< "$list" || { echo "$f missing from $tarball"; return 1; }
  done
  echo "$tarball: $(echo "$list" | wc -l) files"
}

@test "make distcheck: the tarball builds out of tree, passes its suites, installs and uninstalls cleanly" {
  local log="$BATS_TEST_TMPDIR/distcheck.log"
  local suites=${RB_DISTCHECK_SUITES:-$DISTCHECK_SUITES}
  [ "$suites" != all ] || suites=""
  # The fuzz smoke is short here (it runs for FUZZ_SECONDS per target in the main check).
  FUZZ_SECONDS=5 outside_bats make distcheck ${suites:+TESTS="$(echo $suites)"} >"$log" 2>&1 || {
    grep -E '^(FAIL|ERROR|# )|rror|distcleancheck|uninstall' "$log" | tail -40; return 1; }
  grep -E '^# (TOTAL|PASS|SKIP|FAIL|ERROR)' "$log"
  grep -q 'archives ready for distribution' "$log"
  # Inside distcheck only the VM suites skip (no network), and they say so.
  ! grep -E '^SKIP' "$log" | grep -v '^SKIP: vm-'
}
