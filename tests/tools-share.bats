#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# The shared habits on every program that reads images: -U next to a running qemu-nbd, -f forcing the format, JSON from hostile names.

bats_require_minimum_version 1.5.0
load helpers
load tools-helpers

setup () {
  T="$BATS_TEST_TMPDIR"
}

teardown () {
  if [ -s "$T/qnbd.pid" ]; then
    pid=$(cat "$T/qnbd.pid")
    kill "$pid" 2>/dev/null || true
    wait_until "$RB_WAIT" "qemu-nbd $pid to exit" process_gone "$pid"
  fi
}

# hold_writable IMAGE: a qemu-nbd serving IMAGE read-write (it holds QEMU's write lock).
hold_writable () {
  rm -f "$T/qnbd.sock" "$T/qnbd.pid"
  qemu-nbd -f qcow2 -k "$T/qnbd.sock" --pid-file="$T/qnbd.pid" --fork "$1" 2>"$T/qnbd.err" ||
    { cat "$T/qnbd.err"; return 1; }
  wait_until "$RB_WAIT" "qemu-nbd's pidfile" test -s "$T/qnbd.pid"
  [ -s "$T/qnbd.pid" ]
  # The lock is really held: qemu-img itself is refused.
  run qemu-img info "$1"
  [ "$status" -ne 0 ] && [[ "$output" == *lock* ]]
}

lock_msg='image is in use by another process'

@test "-U: next to a qemu-nbd writing the image, every reader works with -U and is refused without it (lock message)" {
  qemu-img create -q -f qcow2 "$T/vm.qcow2" 4M
  qio "$T/vm.qcow2" 'write -P 7 0 1M' 'write -z 2M 64k'
  qemu-img create -q -f qcow2 "$T/other.qcow2" 4M
  qemu-img convert -f qcow2 -O raw "$T/vm.qcow2" "$T/vm.raw"
  hold_writable "$T/vm.qcow2"

  run --separate-stderr "$RB_INFO" "$T/vm.qcow2"
  [ "$status" -eq 2 ] && [[ "$stderr" == *"$lock_msg"* ]]
  [ "$("$RB_INFO" -U --output=json "$T/vm.qcow2" | jq -S .)" = "$(qemu-img info -U --output=json "$T/vm.qcow2" | jq -S .)" ]

  run --separate-stderr "$RB_MAP" "$T/vm.qcow2"
  [ "$status" -eq 2 ] && [[ "$stderr" == *"$lock_msg"* ]]
  [ "$("$RB_MAP" --force-share --output=json "$T/vm.qcow2" | jq -c 'map(del(.compressed))')" = \
    "$(qemu-img map -U --output=json "$T/vm.qcow2" | jq -c .)" ]

  run --separate-stderr "$RB_CHECK" "$T/vm.qcow2"
  [ "$status" -eq 1 ] && [[ "$stderr" == *"$lock_msg"* ]]
  [ "$("$RB_CHECK" -U --output=json "$T/vm.qcow2" | jq -S 'del(."leaks-past-eof")')" = \
    "$(qemu-img check -U --output=json "$T/vm.qcow2" | jq -S .)" ]

  run --separate-stderr "$RB_CONVERT" "$T/vm.qcow2" "$T/copy.qcow2"
  [ "$status" -eq 2 ] && [[ "$stderr" == *"$lock_msg"* ]] && [ ! -e "$T/copy.qcow2" ]
  "$RB_CONVERT" -U "$T/vm.qcow2" "$T/copy.qcow2"
  qemu_check_clean "$T/copy.qcow2"
  qemu-img compare -q -f raw -F qcow2 "$T/vm.raw" "$T/copy.qcow2"

  run --separate-stderr "$RB_DIFF" "$T/vm.qcow2" "$T/vm.raw"
  [ "$status" -eq 2 ] && [[ "$stderr" == *"$lock_msg"* ]]
  run "$RB_DIFF" -U --json "$T/vm.qcow2" "$T/vm.raw"
  [ "$status" -eq 0 ] && [ "$(echo "$output" | jq .changed_sectors)" = 0 ]

  run --separate-stderr "$RB_DELTA" "$T/other.qcow2" "$T/vm.qcow2" "$T/d.qcow2"
  [ "$status" -eq 2 ] && [[ "$stderr" == *"$lock_msg"* ]] && [ ! -e "$T/d.qcow2" ]
  "$RB_DELTA" -U "$T/other.qcow2" "$T/vm.qcow2" "$T/d.qcow2"
  qemu_check_clean "$T/d.qcow2"
  qemu-img compare -q -f raw -F qcow2 "$T/vm.raw" "$T/d.qcow2"
}

@test "-U: writers stay refused next to a running qemu-nbd: rb-check --repair gets the lock message, and -U with --repair is a usage error" {
  qemu-img create -q -f qcow2 "$T/vm.qcow2" 4M
  hold_writable "$T/vm.qcow2"
  run --separate-stderr "$RB_CHECK" --repair leaks "$T/vm.qcow2"
  [ "$status" -eq 1 ] && [[ "$stderr" == *"$lock_msg"* ]]
  run --separate-stderr "$RB_CHECK" -U --repair leaks "$T/vm.qcow2"
  [ "$status" -eq 1 ] && [[ "$stderr" == "rb-check: --force-share (-U) opens the image read-only"* ]]
  # The image is untouched and still QEMU's.
  teardown
  qemu_check_clean "$T/vm.qcow2"
}

@test "-f raw: a raw disk whose first bytes are qcow2's magic is read as raw by every program, as qemu-img -f raw" {
  qemu-img create -q -f qcow2 "$T/inner.qcow2" 1M
  qio "$T/inner.qcow2" 'write -P 9 0 64k'
  # A raw disk that happens to hold a qcow2 file at offset 0 (say a guest wrote one), plus data.
  cp "$T/inner.qcow2" "$T/disk.img"
  truncate -s 2M "$T/disk.img"
  qemu-io -f raw -c 'write -P 3 1M 64k' "$T/disk.img" >/dev/null
  size=$(stat -c %s "$T/disk.img")

  [ "$("$RB_INFO" -f raw --output=json "$T/disk.img" | jq -S .)" = "$(qemu-img info -f raw --output=json "$T/disk.img" | jq -S .)" ]
  [ "$("$RB_INFO" -f raw --output=json "$T/disk.img" | jq -c '[.format, ."virtual-size"]')" = "[\"raw\",$size]" ]
  [ "$("$RB_INFO" --output=json "$T/disk.img" | jq -r .format)" = qcow2 ]    # probed: the magic wins
  [ "$("$RB_MAP" -f raw --output=json "$T/disk.img" | jq -c .)" = "$(qemu-img map -f raw --output=json "$T/disk.img" | jq -c .)" ]
  run "$RB_CHECK" -f raw "$T/disk.img"
  [ "$status" -eq 63 ]

  "$RB_CONVERT" -f raw "$T/disk.img" "$T/conv.qcow2"
  qemu_check_clean "$T/conv.qcow2"
  qemu-img compare -q -f raw -F qcow2 "$T/disk.img" "$T/conv.qcow2"
  [ "$(qemu-img info --output=json "$T/conv.qcow2" | jq '."virtual-size"')" = "$size" ]

  cp "$T/disk.img" "$T/disk2.img"
  qemu-io -f raw -c 'write -P 4 1536k 4k' "$T/disk2.img" >/dev/null
  run "$RB_DIFF" -f raw -F raw --json "$T/disk.img" "$T/disk2.img"
  [ "$status" -eq 1 ] && [ "$(echo "$output" | jq -c '[.size_a, .changed_bytes, .ranges]')" = "[$size,4096,[{\"start\":3072,\"count\":8}]]" ]
  run "$RB_DIFF" -F raw "$T/disk.img" "$T/disk2.img"     # A probed as qcow2: 1 MiB, sizes differ
  [ "$status" -eq 1 ] && [[ "$output" == *"bytes longer"* ]]

  "$RB_DELTA" -f raw "$T/disk.img" "$T/disk2.img" "$T/delta.qcow2"
  [ "$(qemu-img info --output=json "$T/delta.qcow2" | jq -r '."backing-filename-format"')" = raw ]
  qemu_check_clean "$T/delta.qcow2"
  qemu-img compare -q -f raw -F qcow2 "$T/disk2.img" "$T/delta.qcow2"
}

@test "-f qcow2 on a file that is not qcow2 is an error naming it; -f with another format is a usage error" {
  head -c 1M /dev/zero > "$T/plain.raw"
  for tool in "$RB_INFO" "$RB_MAP" "$RB_CONVERT"; do
    args=("$T/plain.raw"); [ "$tool" = "$RB_CONVERT" ] && args+=("$T/out.qcow2")
    run --separate-stderr "$tool" -f qcow2 "${args[@]}"
    [ "$status" -eq 2 ] && [[ "$stderr" == *plain.raw* ]] || { echo "$tool: $status $stderr"; return 1; }
  done
  run --separate-stderr "$RB_CHECK" -f qcow2 "$T/plain.raw"
  [ "$status" -eq 1 ] && [[ "$stderr" == *plain.raw* ]]
  run --separate-stderr "$RB_DIFF" -f qcow2 "$T/plain.raw" "$T/plain.raw"
  [ "$status" -eq 2 ] && [[ "$stderr" == *plain.raw* ]]
  run --separate-stderr "$RB_DIFF" -F vmdk "$T/plain.raw" "$T/plain.raw"
  [ "$status" -eq 2 ] && [ "$stderr" = "rb-diff: -F: unknown format 'vmdk' (raw or qcow2)" ]
  run --separate-stderr "$RB_INFO" -f vmdk "$T/plain.raw"
  [ "$status" -eq 1 ] && [ "$stderr" = "rb-info: -f: unknown format 'vmdk' (raw or qcow2)" ]
}

@test "JSON stays valid and equals qemu-img's for hostile file names (quotes, backslashes, newlines, tabs, control bytes, invalid UTF-8)" {
  n=0
  for name in 'q"uote' 'back\slash' $'new\nline' $'tab\tand\x01ctl' $'bad\xff\xfeutf8' $'trunc\xc3' \
              $'overlong\xc0\xafx' $'ok-\xc3\xa9t\xc3\xa9' $'surrogate\xed\xa0\x80' '[brackets] & $dollar'; do
    d="$T/$n"; mkdir "$d"
    qemu-img create -q -f qcow2 "$d/$name" 1M
    qemu-img create -q -f qcow2 -b "$name" -F qcow2 "$d/top.qcow2"
    for tool in info check; do
      rb=$([ $tool = info ] && echo "$RB_INFO" || echo "$RB_CHECK")
      for img in "$d/$name" "$d/top.qcow2"; do
        "$rb" --output=json "$img" > "$T/out.json"
        jq -e . "$T/out.json" > /dev/null || { echo "invalid JSON from rb-$tool for $(printf %q "$img")"; cat "$T/out.json"; return 1; }
        # Every text field equals qemu-img's (the file name and the backing names).
        want=$(qemu-img $tool --output=json "$img" | jq -c '[.filename, ."backing-filename", ."full-backing-filename"]')
        got=$(jq -c '[.filename, ."backing-filename", ."full-backing-filename"]' "$T/out.json")
        [ "$got" = "$want" ] || { echo "rb-$tool $(printf %q "$img"): $got, qemu: $want"; return 1; }
      done
    done
    "$RB_INFO" --backing-chain --output=json "$d/top.qcow2" | jq -e 'length == 2' > /dev/null
    n=$((n + 1))
  done
  echo "$n hostile names" >&3
}
