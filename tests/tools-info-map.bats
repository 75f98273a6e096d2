#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# rb-info and rb-map against qemu-img info and qemu-img map on a matrix of QEMU-made and rblock-made images.

bats_require_minimum_version 1.5.0
load helpers
load tools-helpers
load bitmap-helpers

# The matrix, built once for the suite, in $M; $T is the test's folder.
setup_file () { matrix_setup_file; }
setup () { matrix_setup; }

# info_json TOOL ARGS...: the tool's info JSON with its keys sorted.
# Normalised: nothing.  Every field must be equal: sizes, names, formats,
# snapshots' dates, clocks and icount, feature flags, bitmaps.
info_norm='.'

@test "rb-info --output=json equals qemu-img info --output=json on every image of the matrix" {
  n=0
  while read -r img; do
    want=$(cd "$M" && qemu-img info --output=json "$img" | jq -S "$info_norm")
    got=$(cd "$M" && "$RB_INFO" --output=json "$img" | jq -S "$info_norm")
    [ "$got" = "$want" ] || { echo "== $img"; diff <(echo "$want") <(echo "$got"); return 1; }
    n=$((n + 1))
  done < <(make_matrix "$M")
  echo "$n images compared" >&3
}

@test "rb-info prints qemu-img info's human report line for line (bitmaps and snapshots too)" {
  while read -r img; do
    want=$(cd "$M" && qemu-img info "$img")
    got=$(cd "$M" && "$RB_INFO" "$img")
    [ "$got" = "$want" ] || { echo "== $img"; diff <(echo "$want") <(echo "$got"); return 1; }
  done < <(make_matrix "$M")
}

@test "rb-info --backing-chain: the array (and the human reports) equal qemu-img's, from another folder too" {
  for img in chain/top.qcow2 "$M/chain/top.qcow2" r-delta.qcow2; do
    want=$(cd "$M" && qemu-img info --backing-chain --output=json "$img" | jq -S .)
    got=$(cd "$M" && "$RB_INFO" --backing-chain --output=json "$img" | jq -S .)
    [ "$got" = "$want" ] || { echo "== $img"; diff <(echo "$want") <(echo "$got"); return 1; }
    [ "$(echo "$got" | jq length)" -ge 2 ]
    want=$(cd "$M" && qemu-img info --backing-chain "$img")
    got=$(cd "$M" && "$RB_INFO" --backing-chain "$img")
    [ "$got" = "$want" ] || { echo "== $img"; diff <(echo "$want") <(echo "$got"); return 1; }
  done
  # The full backing name keeps the top's folder: "chain/mid.qcow2" seen from $M.
  [ "$(cd "$M" && "$RB_INFO" --output=json chain/top.qcow2 | jq -r '."full-backing-filename"')" = chain/mid.qcow2 ]
}

@test "rb-info: snapshots (names with spaces, dates, clocks) and the dirty and corrupt flags as qemu-img shows them" {
  want=$(cd "$M" && qemu-img info --output=json snap.qcow2 | jq -c '.snapshots')
  got=$(cd "$M" && "$RB_INFO" --output=json snap.qcow2 | jq -c '.snapshots')
  [ "$got" = "$want" ] && [ "$(echo "$got" | jq -r '.[1].name')" = "second, with spaces" ]
  cp "$M/plain.qcow2" "$T/flags.qcow2"
  # Set the dirty (bit 0) and corrupt (bit 1) incompatible bits (byte 79 of the header).
  printf '\003' | dd of="$T/flags.qcow2" bs=1 seek=79 conv=notrunc status=none
  want=$(qemu-img info --output=json "$T/flags.qcow2" | jq -S .)
  got=$("$RB_INFO" --output=json "$T/flags.qcow2" | jq -S .)
  [ "$got" = "$want" ] && [ "$(echo "$got" | jq -c '[."dirty-flag", ."format-specific".data.corrupt]')" = '[true,true]' ]
  [ "$("$RB_INFO" "$T/flags.qcow2")" = "$(qemu-img info "$T/flags.qcow2")" ]
}

@test "rb-info: a missing backing file is no error (as qemu-img info), except with --backing-chain (exit 2, naming it)" {
  qemu-img create -q -f qcow2 -u -b gone.qcow2 -F qcow2 "$T/orphan.qcow2" 1M
  want=$(qemu-img info --output=json "$T/orphan.qcow2" | jq -S .)
  got=$("$RB_INFO" --output=json "$T/orphan.qcow2" | jq -S .)
  [ "$got" = "$want" ] && [ "$(echo "$got" | jq -r '."backing-filename"')" = gone.qcow2 ]
  run qemu-img info --backing-chain "$T/orphan.qcow2"
  [ "$status" -ne 0 ]
  run --separate-stderr "$RB_INFO" --backing-chain "$T/orphan.qcow2"
  [ "$status" -eq 2 ] && [ -z "$output" ] && [[ "$stderr" == "rb-info: "*gone.qcow2* ]]
}

# map_json TOOL ARGS...: the map JSON, one entry a line (keys sorted).
# Normalised (and why): rb-map prints "compressed" on qcow2 images as QEMU 8
# does; QEMU 7.2 has no such key, so it is removed here, after checking
# that it is true exactly where 7.2 shows data with no offset.
map_norm='[.[] | del(.compressed)] | .[] | tojson'

# same_map IMAGE [OPTIONS]: rb-map --output=json equals qemu-img map --output=json.
same_map () {
  local img=$1 want got; shift
  want=$(cd "$M" && qemu-img map --output=json "$@" "$img" | jq -S -r "$map_norm")
  got=$(cd "$M" && "$RB_MAP" --output=json "$@" "$img" | jq -S -r "$map_norm")
  [ "$got" = "$want" ] || { echo "== $img $*"; diff <(echo "$want") <(echo "$got"); return 1; }
  # compressed: exactly the data entries without an offset
  if [[ "$img" == *.qcow2 ]]; then
    got=$(cd "$M" && "$RB_MAP" --output=json "$@" "$img" |
          jq -c '[.[] | select(.compressed != (.data and (has("offset") | not)))] | length')
    [ "$got" = 0 ] || { echo "$img: compressed flag wrong on $got entries"; return 1; }
  fi
}

@test "rb-map --output=json equals qemu-img map --output=json on every image of the matrix" {
  n=0
  while read -r img; do
    same_map "$img"
    n=$((n + 1))
  done < <(make_matrix "$M")
  echo "$n images compared" >&3
  # The matrix does exercise every kind of entry.
  all=$(while read -r img; do (cd "$M" && "$RB_MAP" --output=json "$img"); done < <(make_matrix "$M") | jq -s -c add)
  for kind in '.depth == 2' '.present == false and .depth > 0' '.zero and .data' '.zero and has("offset") and (.data | not)' \
              '.compressed' '.present == false and .depth == 0'; do
    [ "$(echo "$all" | jq "[.[] | select($kind)] | length")" -gt 0 ] || { echo "no entry with $kind"; return 1; }
  done
}

@test "rb-map --start-offset and --max-length (unaligned, past the end, zero length) as qemu-img map" {
  for args in "--start-offset=1000 --max-length=100000" "--start-offset=64k" "--max-length=1.5k" \
              "--start-offset=5M" "--start-offset=1M --max-length=0" "--start-offset=4194303"; do
    # shellcheck disable=SC2086
    same_map chain/top.qcow2 $args
    # shellcheck disable=SC2086
    same_map sparse.raw $args
  done
  run "$RB_MAP" --start-offset=-1 "$M/plain.qcow2"
  [ "$status" -eq 1 ] && [[ "$output" == *"--start-offset"* ]]
}

@test "rb-map's human output equals qemu-img map's (files named as QEMU names them); compressed runs are refused as qemu-img refuses them" {
  while read -r img; do
    want=$(cd "$M" && qemu-img map "$img" 2>/dev/null) && wst=0 || wst=$?
    got=$(cd "$M" && "$RB_MAP" "$img" 2>/dev/null) && gst=0 || gst=$?
    [ "$got" = "$want" ] || { echo "== $img"; diff <(echo "$want") <(echo "$got"); return 1; }
    if [ "$wst" -ne 0 ]; then
      [ "$gst" -eq 2 ] || { echo "$img: qemu-img failed ($wst), rb-map exit $gst"; return 1; }
    else
      [ "$gst" -eq 0 ]
    fi
  done < <(make_matrix "$M")
  run --separate-stderr "$RB_MAP" "$M/zlib.qcow2"
  [ "$status" -eq 2 ] && [[ "$stderr" == "rb-map: "*compressed* ]]
}

@test "preallocated images: never-written clusters map as zero through the plugin and rb-map, as qemu-img map says (metadata, falloc, full)" {
  for m in metadata falloc full; do
    img="$M/pre-$m.qcow2"
    start_rblock "$img" -r
    got=$(guest_map_classes)
    stop_rblock
    want=$(qemu_map_classes "$img")
    [ "$got" = "$want" ] || { echo "== $m"; diff <(echo "$want") <(echo "$got"); return 1; }
    same_map "pre-$m.qcow2"
  done
  # metadata preallocation: the 4k written is data, the rest of the 3M is zero.
  [ "$(qemu_map_classes "$M/pre-metadata.qcow2" | grep -c data)" -eq 1 ]
  [ "$(qemu_map_classes "$M/pre-metadata.qcow2" | awk '$3 == "data" { print $2 }')" = 4096 ]
}

# read_bytes LOG: guest bytes read by clients, from nbdkit's log filter.
read_bytes () {
  local n=0 c
  for c in $(grep -o 'Read id=[0-9]* offset=0x[0-9a-f]* count=0x[0-9a-f]*' "$1" | sed 's/.*count=//'); do
    n=$((n + c))
  done
  echo "$n"
}

@test "preallocated images: nbdcopy and rb-convert skip the never-written clusters (they read only the written cluster)" {
  img="$M/pre-metadata.qcow2"
  start_rblock "$img" -r --filter=log logfile="$T/nbdcopy.log"
  nbdcopy "$URI" "$T/copy.raw"
  stop_rblock
  qemu-img compare -q -f raw "$T/copy.raw" "$img"
  # nbdcopy reads whole requests (256 KiB) that hold data: one, of the 3 MiB.
  n=$(read_bytes "$T/nbdcopy.log")
  [ "$n" -gt 0 ] && [ "$n" -le 262144 ] || { echo "nbdcopy read $n bytes"; return 1; }
  start_rblock "$img" -r --filter=log logfile="$T/convert.log"
  "$RB_CONVERT" "$URI" "$T/out.qcow2"
  stop_rblock
  qemu_check_clean "$T/out.qcow2"
  qemu-img compare -q "$img" "$T/out.qcow2"
  [ "$(read_bytes "$T/convert.log")" -eq 65536 ]      # the one cluster written
  [ "$(qemu-img check --output=json "$T/out.qcow2" | jq '."allocated-clusters"')" -eq 1 ]
  # Straight from the file, rb-convert stores the same.
  "$RB_CONVERT" "$img" "$T/direct.qcow2"
  qemu-img compare -q "$img" "$T/direct.qcow2"
  [ "$(qemu-img check --output=json "$T/direct.qcow2" | jq '."allocated-clusters"')" -eq 1 ]
}

@test "rb-info: bitmaps (enabled, disabled, their granularity, in use after a killed writer) as qemu-img info lists them" {
  qemu-img create -q -f qcow2 "$T/bm.qcow2" 4M
  qemu-img bitmap --add "$T/bm.qcow2" enabled
  qemu-img bitmap --add -g 1M --disable "$T/bm.qcow2" 'disabled, "quoted"'
  qemu-nbd -f qcow2 -k "$T/q.sock" --pid-file="$T/q.pid" --fork "$T/bm.qcow2"
  wait_until "$RB_WAIT" "qemu-nbd's pidfile" test -s "$T/q.pid"
  pid=$(cat "$T/q.pid")
  # QEMU marks the bitmaps in use on disk while it has the image open for writing.
  in_use () { qemu-img info -U --output=json "$T/bm.qcow2" | jq -e '[."format-specific".data.bitmaps[].flags[]] | index("in-use")' >/dev/null; }
  wait_until "$RB_WAIT" "the bitmap marked in use" in_use
  kill -9 "$pid"
  wait_until "$RB_WAIT" "qemu-nbd $pid to exit" process_gone "$pid"
  want=$(qemu-img info --output=json "$T/bm.qcow2" | jq -S .)
  got=$("$RB_INFO" --output=json "$T/bm.qcow2" | jq -S .)
  [ "$got" = "$want" ] || { diff <(echo "$want") <(echo "$got"); return 1; }
  [ "$(echo "$got" | jq -c '[."format-specific".data.bitmaps[] | [.name, .granularity, .flags]]')" = \
    '[["enabled",65536,["in-use","auto"]],["disabled, \"quoted\"",1048576,["in-use"]]]' ]
  # (A disabled bitmap no writer touched has no flags at all: bitmap.qcow2 of the matrix.)
  [ "$("$RB_INFO" "$T/bm.qcow2")" = "$(qemu-img info "$T/bm.qcow2")" ]
}

@test "rb-info: a bitmap whose data cluster is outside the file is listed as qemu-img info lists it (its data is not read)" {
  qemu-img create -q -f qcow2 "$T/bm.qcow2" 1G
  qemu-img bitmap --add "$T/bm.qcow2" bad
  qemu-img bitmap --add "$T/bm.qcow2" good
  qemu-io -c 'write 0 1M' -c 'write 512M 1M' "$T/bm.qcow2" > /dev/null
  patch_bitmap "$T/bm.qcow2" bad data 0x7fff0000
  want=$(qemu-img info --output=json "$T/bm.qcow2" | jq -S .)
  got=$("$RB_INFO" --output=json "$T/bm.qcow2" | jq -S .)
  [ "$got" = "$want" ] || { diff <(echo "$want") <(echo "$got"); return 1; }
  [ "$(echo "$got" | jq -c '[."format-specific".data.bitmaps[].name]')" = '["bad","good"]' ]
  [ "$("$RB_INFO" "$T/bm.qcow2")" = "$(qemu-img info "$T/bm.qcow2")" ]
  # Counting its dirty bytes reads the data: rb-bitmap's listing names the bad entry.
  run "$top_builddir/utils/rb-bitmap" "$T/bm.qcow2"
  [ "$status" -eq 2 ] && [[ "$output" == *"corrupt image: bitmap 'bad': table entry 0 "* ]] ||
    { echo "status $status: $output"; false; }
}

@test "rb-info: an image with more than 64 internal snapshots lists them all, as qemu-img" {
  qemu-img create -q -f qcow2 "$T/many.qcow2" 1M
  for i in $(seq 70); do qemu-img snapshot -c "s$i" "$T/many.qcow2"; done
  want=$(qemu-img info --output=json "$T/many.qcow2" | jq -S .)
  got=$("$RB_INFO" --output=json "$T/many.qcow2" | jq -S .)
  [ "$got" = "$want" ] && [ "$(echo "$got" | jq '.snapshots | length')" = 70 ]
  [ "$("$RB_INFO" "$T/many.qcow2")" = "$(qemu-img info "$T/many.qcow2")" ]
}
