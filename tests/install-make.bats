#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# make install alone: the plugin in nbdkit's plugindir, every program with its man page and its
# bash completion, one version (configure.ac's) everywhere, and what was installed works.

load helpers

setup_file () {
  export D="$BATS_FILE_TMPDIR/inst"
  make -C "$top_builddir" install DESTDIR="$D" >/dev/null 2>&1
}

setup () {
  T="$BATS_TEST_TMPDIR"
  # The installed programs: bin_PROGRAMS of every directory (they all install into bindir).
  PROGS=$(find "$D" -path '*/bin/*' -type f -printf '%f\n' | sort)
  BIN=$(dirname "$(find "$D" -path '*/bin/*' -type f | head -1)")
  SHARE=$(dirname "$BIN")/share
}

# version_of_configure: the version in configure.ac's AC_INIT.
version_of_configure () {
  sed -n 's/^AC_INIT(\[rblock\], \[\([^]]*\)\].*/\1/p' "$top_srcdir/configure.ac"
}

# complete_words PROGRAM WORD...: what the installed completion offers for the last WORD.
complete_words () {
  local prog=$1; shift
  PATH="$BIN:$PATH" bash -c '
    . "$1"; shift
    COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1))
    _rblock_complete
    printf "%s\n" "${COMPREPLY[@]}" | sort' _ "$SHARE/bash-completion/completions/$prog" "$prog" "$@"
}

@test "make install DESTDIR=...: the plugin lands in nbdkit's plugindir and serves an image" {
  local plugindir so
  # The build's plugindir, expanded by make; nbdkit's own unless configure was told otherwise
  # (make distcheck installs under its prefix).
  plugindir=$(printf 'rb-print:\n\t@echo $(plugindir)\n' |
              env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -s -C "$top_builddir/plugin" -f Makefile -f - rb-print)
  echo "plugindir: $plugindir"; [ -n "$plugindir" ]
  "$top_builddir/config.status" --config | grep -q -- --with-plugindir ||
    [ "$plugindir" = "$(nbdkit --dump-config | sed -n 's/^plugindir=//p')" ]
  so="$D$plugindir/nbdkit-rblock-plugin.so"
  [ -f "$so" ]
  [ ! -e "$D$plugindir/nbdkit-rblock-plugin.la" ]
  nbdkit --dump-plugin "$so" | grep -qx 'name=rblock'
  qemu-img create -q -f qcow2 "$T/i.qcow2" 1M
  qemu-io -c 'write -P 0x42 0 4k' "$T/i.qcow2" >/dev/null
  [ "$(nbdkit -r -U - "$so" file="$T/i.qcow2" --run 'nbdcopy "$uri" - | head -c 1' | od -An -tx1 | tr -d ' ')" = 42 ]
}

@test "every installed program has a man page naming it and a completion file bash-completion finds" {
  local p n=0 man comp
  [ -n "$PROGS" ]
  for p in $PROGS; do
    n=$((n + 1))
    man="$SHARE/man/man1/$p.1"
    [ -f "$man" ] || { echo "$p: no man page $man"; return 1; }
    grep -qi "^\.TH \"\?$p\"\? 1 " "$man" ||
      { echo "$p: $man has no .TH $p 1 line"; head -80 "$man" | grep '^\.TH'; return 1; }
    MANWIDTH=80 man -l "$man" 2>/dev/null | grep -A2 '^NAME' | grep -q "$p" ||
      { echo "$p: NAME section of its man page does not name it"; return 1; }
    comp="$SHARE/bash-completion/completions/$p"
    [ -f "$comp" ] || { echo "$p: no completion $comp"; return 1; }
    # bash-completion's own loader, pointed at the install, registers the program.
    XDG_DATA_DIRS="$SHARE" bash -c '. /usr/share/bash-completion/bash_completion
      __load_completion "$1" && complete -p "$1"' _ "$p" | grep -q "_rblock_complete $p\$" ||
      { echo "$p: bash-completion does not load a completion for it from $SHARE"; return 1; }
  done
  echo "$n programs: $PROGS"
  # The plugin's page too, in nbdkit's style.
  grep -qi '^\.TH "\?nbdkit-rblock-plugin"\? 1 ' "$SHARE/man/man1/nbdkit-rblock-plugin.1"
}

@test "completion offers each program's options from its --help, and each one is an option the program accepts" {
  local p o out offered
  for p in $PROGS; do
    offered=$(complete_words "$p" "$p" --)
    echo "$p: $(echo $offered)"
    grep -qx -- --help <<< "$offered"
    grep -qx -- --version <<< "$offered"
    # Every long option in the option column of the help text is offered.
    for o in $("$BIN/$p" --help | grep -E '^[[:space:]]+-' | sed -E 's/^[[:space:]]+//; s/  .*//' |
               grep -o -E -- '--[a-z0-9][-a-z0-9]*' | sort -u); do
      grep -qx -- "$o=\?" <<< "$offered" || { echo "$p: $o not offered"; return 1; }
    done
    # ...and getopt knows it (an option needing an argument complains otherwise).
    for o in $offered; do
      [ "$o" != --help ] && [ "$o" != --version ] || continue
      out=$("$BIN/$p" "$o" </dev/null 2>&1 || true)
      [[ $out != *"unrecognized option"* && $out != *"invalid option"* ]] ||
        { echo "$p $o: $out"; return 1; }
    done
  done
}

@test "completion: option arguments with fixed choices, --name=value, prefixes, and file names otherwise" {
  [ "$(complete_words rb-convert rb-convert -O '')" = "$(printf 'qcow2\nraw')" ]
  [ "$(complete_words rb-convert rb-convert --output-format = r)" = raw ]
  [ "$(complete_words rb-convert rb-convert --comp)" = "$(printf -- '--compat\n--compress')" ]
  [ "$(complete_words rb-check rb-check --repair '')" = "$(printf 'all\nleaks')" ]
  # A SIZE argument and an operand: no words, so bash completes file names (complete -o default).
  [ -z "$(complete_words rb-convert rb-convert -c '')" ]
  [ -z "$(complete_words rb-convert rb-convert disk.raw '')" ]
  grep -q 'complete -o default -F _rblock_complete rb-convert$' "$SHARE/bash-completion/completions/rb-convert"
}

@test "--version of every program and nbdkit's for the plugin print configure.ac's version" {
  local v p so
  v=$(version_of_configure)
  [ -n "$v" ]
  for p in $PROGS; do
    [ "$("$BIN/$p" --version)" = "$p $v" ] || { echo "$p --version: $("$BIN/$p" --version)"; return 1; }
    # The man pages carry it too (pod2man --release).
    grep -q "^\.TH .*\"$v\"" "$SHARE/man/man1/$p.1"
  done
  so=$(find "$D" -name nbdkit-rblock-plugin.so)
  [ "$(nbdkit "$so" --version | sed -n 2p)" = "rblock $v" ]
  # The build tree's plugin, as tests and the README use it.
  [ "$(nbdkit "$RBLOCK_SO" --version | sed -n 2p)" = "rblock $v" ]
}
