#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# make install: the plugin lands in nbdkit's plugin directory, the programs and every man page
# in their places, and what was installed works.

load helpers

@test "make install DESTDIR=...: plugin in nbdkit's plugindir, programs and man pages installed and working" {
  local T="$BATS_TEST_TMPDIR" D="$BATS_TEST_TMPDIR/inst" plugindir so p
  make -C "$top_builddir" install DESTDIR="$D" >/dev/null
  plugindir=$(nbdkit --dump-config | sed -n 's/^plugindir=//p')
  [ -n "$plugindir" ]
  so="$D$plugindir/nbdkit-rblock-plugin.so"
  [ -f "$so" ]
  # nbdkit loads the installed plugin and it serves an image.
  nbdkit --dump-plugin "$so" | grep -qx 'name=rblock'
  qemu-img create -q -f qcow2 "$T/i.qcow2" 1M
  qemu-io -c 'write -P 0x42 0 4k' "$T/i.qcow2" >/dev/null
  [ "$(nbdkit -r -U - "$so" file="$T/i.qcow2" --run 'nbdcopy "$uri" - | head -c 1' | od -An -tx1 | tr -d ' ')" = 42 ]
  for p in rb-convert rb-diff rb-delta rb-check rb-rpc; do
    [ -x "$(find "$D" -path "*/bin/$p" | head -1)" ]
    "$(find "$D" -path "*/bin/$p" | head -1)" --version | grep -q "^$p "
  done
  # Man pages (pod2man is part of perl, which the build requires).
  for p in nbdkit-rblock-plugin rb-convert rb-diff rb-delta rb-check rb-rpc; do
    grep -q '^\.TH' "$(find "$D" -path "*/man1/$p.1" | head -1)"
  done
}
