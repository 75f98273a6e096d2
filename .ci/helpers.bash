# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# Shared by the CI suites in .ci/: what they need to start make check or .ci/run themselves.

# outside_bats CMD...: run CMD without what this bats run exports (BATS_* variables and the
# bats_* functions): a bats started by CMD (make check) would take them for its own.
outside_bats () {
  (
    local v
    for v in $(compgen -e); do [[ $v != BATS_* ]] || export -n "$v"; done
    for v in $(declare -Fx | awk '{ print $3 }'); do [[ $v != bats_* ]] || export -fn "$v"; done
    PATH=${PATH#/usr/libexec/bats-core:}
    exec "$@"
  )
}
