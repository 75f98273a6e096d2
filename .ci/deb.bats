#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# CI (.ci/run): the Debian packages, built from the release tarball with dpkg-buildpackage,
# checked by lintian, installed with apt-get into this machine, used from /usr (not from the
# build tree) and removed without leftovers.  Run by .ci/run with top= and build=.

load helpers

setup_file () {
  local tarball
  export W="$BATS_FILE_TMPDIR/deb"
  mkdir -p "$W"
  cd "$build"
  rm -f rblock-*.tar.gz
  outside_bats make dist >/dev/null
  tarball=$(ls rblock-*.tar.gz)
  tar xzf "$tarball" -C "$W"
  export SRC
  SRC=$(ls -d "$W"/rblock-*/)
  # The suites already ran in CI: nocheck (and the profile, for their build dependencies).
  (cd "$SRC" && DEB_BUILD_OPTIONS=nocheck DEB_BUILD_PROFILES=nocheck \
     dpkg-buildpackage -us -uc -b) > "$W/build.log" 2>&1 || { tail -40 "$W/build.log" >&3; return 1; }
  export SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
}

# clean_env CMD...: CMD with a PATH of the system's folders only (no build tree).
clean_env () {
  env -u top_builddir -u top_srcdir PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"
}

apt_get () {
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -y -q "$@"
}

@test "dpkg-buildpackage -b: nbdkit-plugin-rblock (plugin in nbdkit's plugindir, its man page) and rblock-tools (every program, man page and completion), configure.ac's version" {
  local plugindir progs p deps
  plugindir=$(pkg-config --variable=plugindir nbdkit)
  ls "$W"/nbdkit-plugin-rblock_*.deb "$W"/rblock-tools_*.deb
  dpkg-deb -c "$W"/nbdkit-plugin-rblock_*.deb | awk '{ print $6 }' > "$W/plugin.list"
  dpkg-deb -c "$W"/rblock-tools_*.deb | awk '{ print $6 }' > "$W/tools.list"
  grep -qx ".$plugindir/nbdkit-rblock-plugin.so" "$W/plugin.list"
  grep -qx './usr/share/man/man1/nbdkit-rblock-plugin.1.gz' "$W/plugin.list"
  # Every program make install put in debian/tmp/usr/bin, with its page and completion.
  progs=$(ls "$SRC/debian/tmp/usr/bin")
  [ -n "$progs" ]
  for p in $progs; do
    grep -qx "./usr/bin/$p" "$W/tools.list" || { echo "$p not packaged"; return 1; }
    grep -qx "./usr/share/man/man1/$p.1.gz" "$W/tools.list" || { echo "$p: no man page"; return 1; }
    grep -qx "./usr/share/bash-completion/completions/$p" "$W/tools.list" || { echo "$p: no completion"; return 1; }
  done
  echo "rblock-tools: $(echo $progs)"
  grep -qx './usr/bin/rb-rpc' "$W/tools.list"
  # One version: debian/changelog's is configure.ac's.
  [ "$(dpkg-deb -f "$W"/rblock-tools_*.deb Version)" = \
    "$(sed -n 's/^AC_INIT(\[rblock\], \[\([^]]*\)\].*/\1/p' "$SRC/configure.ac")" ]
  # Dependencies computed by dpkg-shlibdeps (${shlibs:Depends}), plus nbdkit for the plugin.
  deps=$(dpkg-deb -f "$W"/rblock-tools_*.deb Depends)
  echo "rblock-tools Depends: $deps"
  [[ $deps == *libc6* && $deps == *libnbd0* && $deps == *libzstd1* && $deps == *zlib1g* ]]
  deps=$(dpkg-deb -f "$W"/nbdkit-plugin-rblock_*.deb Depends)
  echo "nbdkit-plugin-rblock Depends: $deps"
  [[ $deps == nbdkit* && $deps == *libc6* && $deps == *libjson-c* ]]
}

@test "debian/control builds and tests with what CI installs: every .ci/packages entry is a Build-Depends (but the listed ones)" {
  local p bd missing=""
  # Not build dependencies: what debhelper and dh-autoreconf bring (build-essential, the
  # autotools, pkg-config: pkgconf), the essential bsdutils, CI's own tools, the VM suites'
  # (disabled in a package build: no network) and the benchmarks' fio.
  local not_bd=" build-essential autoconf automake libtool pkg-config bsdutils debhelper
    dh-autoreconf lintian qemu-system-x86 busybox-static nbd-client cpio fio "
  not_bd=" $(echo $not_bd) "
  bd=$(sed -n '/^Build-Depends:/,/^[A-Z][-A-Za-z]*:/p' "$SRC/debian/control" | sed 's/^Build-Depends://' |
       tr ',' '\n' | awk '{ print $1 }' | grep -v -e '^$' -e ':$')
  for p in $(grep -v -e '^#' -e '^[[:space:]]*$' "$SRC/.ci/packages"); do
    [[ $not_bd == *" $p "* ]] && continue
    grep -qx "$p" <<< "$bd" || missing+=" $p"
  done
  [ -z "$missing" ] || { echo "in .ci/packages, not in debian/control's Build-Depends:$missing"; return 1; }
}

@test "lintian: no errors on the packages" {
  local changes
  changes=$(ls "$W"/rblock_*.changes)
  run lintian --fail-on error "$changes"
  echo "$output"
  [ "$status" -eq 0 ]
  ! grep -q '^E:' <<< "$output"
}

@test "apt-get install ./*.deb: the installed plugin and programs work from /usr, then apt-get purge leaves nothing" {
  local T="$BATS_TEST_TMPDIR" v p files left
  v=$(sed -n 's/^AC_INIT(\[rblock\], \[\([^]]*\)\].*/\1/p' "$SRC/configure.ac")
  (cd "$W" && apt_get install ./nbdkit-plugin-rblock_*.deb ./rblock-tools_*.deb) >"$W/install.log" 2>&1 ||
    { tail -20 "$W/install.log"; return 1; }
  files=$(dpkg -L nbdkit-plugin-rblock rblock-tools)
  # The plugin by name, from nbdkit's plugindir.
  [ "$(clean_env nbdkit rblock --version | sed -n 2p)" = "rblock $v" ]
  qemu-img create -q -f qcow2 "$T/d.qcow2" 64M
  clean_env nbdkit -U - rblock file="$T/d.qcow2" \
    --run 'nbdsh -u "$uri" -c "h.pwrite(b\"Hello, world!\", 196608); h.flush()"'
  qemu-img check "$T/d.qcow2" | grep -q 'No errors were found'
  qemu-io -c 'read -v 196608 13' "$T/d.qcow2" | grep -q '^00030000:  48 65 6c 6c 6f 2c 20 77 6f 72 6c 64 21 '
  # The programs from /usr/bin: their --version, a conversion judged by qemu-img.
  for p in $(dpkg -L rblock-tools | grep '^/usr/bin/'); do
    [ "$(clean_env sh -c 'command -v "$1"' _ "${p##*/}")" = "$p" ]
    [ "$(clean_env "${p##*/}" --version)" = "${p##*/} $v" ]
    clean_env man -w "${p##*/}" | grep -q "^/usr/share/man/man1/${p##*/}.1.gz$"
  done
  head -c 3M /dev/urandom > "$T/r.raw"
  clean_env rb-convert "$T/r.raw" "$T/r.qcow2"
  qemu-img compare -q "$T/r.raw" "$T/r.qcow2"
  clean_env rb-check "$T/r.qcow2"
  clean_env man -w nbdkit-rblock-plugin | grep -q '^/usr/share/man/man1/nbdkit-rblock-plugin.1.gz$'
  # bash-completion finds the installed completion by the program's name.
  clean_env bash -c '. /usr/share/bash-completion/bash_completion; __load_completion rb-convert; complete -p rb-convert' |
    grep -q '_rblock_complete rb-convert$'
  # Removal: both packages gone, and every file they installed with them.
  apt_get purge nbdkit-plugin-rblock rblock-tools >"$W/purge.log" 2>&1 || { tail -20 "$W/purge.log"; return 1; }
  ! dpkg -s nbdkit-plugin-rblock >/dev/null 2>&1
  ! dpkg -s rblock-tools >/dev/null 2>&1
  left=$(for f in $files; do [ -d "$f" ] || [ ! -e "$f" ] || echo "$f"; done)
  [ -z "$left" ] || { echo "left after purge: $left"; return 1; }
  ! clean_env nbdkit rblock --version 2>/dev/null
}

teardown_file () {
  # Never leave the packages installed, whatever failed above.
  if dpkg -s rblock-tools >/dev/null 2>&1 || dpkg -s nbdkit-plugin-rblock >/dev/null 2>&1; then
    apt_get purge nbdkit-plugin-rblock rblock-tools >/dev/null 2>&1 || true
  fi
}
