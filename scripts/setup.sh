#!/usr/bin/env bash
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# Installs the Debian packages of .ci/packages (when missing) and builds rblock: in the source
# tree by default, or in BUILD_DIR (a VPATH build) when one is given: setup.sh [BUILD_DIR]
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
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
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x configure ] || [ configure.ac -nt configure ]; then
  echo "== autoreconf"
  autoreconf -fi >/dev/null
fi
build=${1:-.}
mkdir -p "$build"
cd "$build"
if [ ! -f config.status ]; then
  echo "== configure ($build)"
  "$top/configure" -q ${RB_CONFIGURE_FLAGS:-}
fi
echo "== make"
make -j"$(nproc)" >/dev/null
echo "== built: $(pwd)/rblock.so and $(pwd)/utils/"
