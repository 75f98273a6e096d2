#!/usr/bin/env bash
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# Installs the Debian packages of .ci/packages (when missing) and builds rblock in build/ (a
# VPATH build; or in BUILD_DIR: setup.sh [BUILD_DIR]).  scripts/demo.sh and .ci/run both build
# here, so they work in either order and share one build.
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${1:-$top/build}
mkdir -p "$build"
build=$(cd "$build" && pwd)
cd "$top"

mapfile -t pkgs < <(grep -v -e '^#' -e '^[[:space:]]*$' .ci/packages)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  export DEBIAN_FRONTEND=noninteractive
  # Another apt-get or dpkg may hold the lock (a busy machine): wait for it, bounded.
  $sudo apt-get -o DPkg::Lock::Timeout=600 update -qq
  $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# A source tree configured in place (./configure run in it) cannot host a VPATH build:
# clean it (make distclean keeps the sources, removes what configure and make made).
if [ "$build" != "$top" ] && [ -f "$top/config.status" ]; then
  echo "== the source tree was configured in place: make distclean there, so that $build can be configured"
  make -s -C "$top" distclean >/dev/null 2>&1 || rm -f "$top/config.status" "$top/config.h" "$top/Makefile"
fi

if [ ! -x configure ] || [ configure.ac -nt configure ]; then
  echo "== autoreconf"
  autoreconf -fi >/dev/null
fi
cd "$build"
if [ ! -f config.status ]; then
  echo "== configure ($build)"
  # configure is called by a relative path: automake refuses a source directory whose name
  # has a space in it, and the path of the checkout may have one.
  "$(realpath --relative-to=. "$top")/configure" -q ${RB_CONFIGURE_FLAGS:-}
fi
echo "== make"
make -j"$(nproc)" >/dev/null
echo "== built: $build/rblock.so and $build/utils/"
