#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# The utilities' one option parser (utils/options.c): sizes and -o lists as qemu-img parses them, shared options.

bats_require_minimum_version 1.5.0

OPTS="$top_builddir/tests/opts-tool"

setup () {
  T="$BATS_TEST_TMPDIR"
}

# qemu_size STRING: what QEMU's size parser (qemu_strtosz, through qemu-io's
# offset argument) makes of STRING: the value, or EINVAL / ERANGE.
qemu_size () {
  local out
  out=$(qemu-io --image-opts -c "read -p $1 1" driver=null-co,size=4611686018427387904 2>&1 | grep -v warning: | head -1)
  case "$out" in
    "read 1/1 bytes at offset "*) echo "${out##* }" ;;
    *"argument too large"*) echo ERANGE ;;
    *"non-numeric argument"*) echo EINVAL ;;
    *) echo "unexpected: $out" ;;
  esac
}

@test "sizes: every form parses to exactly qemu-img's value (suffixes, decimals, hex, rounding)" {
  n=0
  for s in 0 1 512 65536 1k 1K 1m 1M 1g 1.5G 1.5g 2T 1P 3.99E 0.5k 1.k 1. 1.0k 1.7777k 0.0001k \
           0.000000000000000001E 3.3333333333333333333M 1.999999999999999999999k 1.0000001k \
           1.0005k 0.9999k 7.7777777M 0x10 0X20 0x10k 1b 1B +1k 00012 4611686018427387903 0.5b 0.5 1.5 1e3 1.5e3k 1kB 1KiB \
           1,5k 1.5.k k 00x10 0x 1_000 0x1.5k 1.5ek 16E 18446744073709551616 99999999999999999999; do
    want=$(qemu_size "$s")
    got=$("$OPTS" size "$s")
    [ "$got" = "$want" ] || { echo "size '$s': rb '$got', qemu '$want'"; return 1; }
    n=$((n + 1))
  done
  echo "$n sizes compared" >&3
  # Forms qemu-io cannot be handed in one argument; qemu-img create is the oracle there.
  for s in " 1k" "" "1k " "-1" "-0"; do
    rm -f "$T/sz.img"
    if qemu-img create -q -f raw "$T/sz.img" -- "$s" 2>/dev/null; then want=ok; else want=EINVAL; fi
    got=$("$OPTS" size "$s"); [ "$got" = EINVAL ] || got=ok
    [ "$got" = "$want" ] || { echo "size '$s': rb '$got', qemu '$want'"; return 1; }
  done
}

@test "sizes: 8 EiB and more are out of range (2^64 is ERANGE, 2^63 parses but is over INT64_MAX)" {
  [ "$("$OPTS" size 16E)" = ERANGE ]
  [ "$("$OPTS" size 8E)" = 9223372036854775808 ]
  [ "$(qemu_size 8E)" = ERANGE ]      # qemu-io, like rblock's parse_size, refuses above INT64_MAX
  run "$OPTS" parse -o size=8E
  [ "$status" -eq 1 ] && [[ "$output" == "opts-tool: -o: size '8E' is larger than 8 EiB" ]]
}

# qemu_create_fields OPTIONS: qemu-img create -f qcow2 -o OPTIONS, then the fields
# the options set (or "refused").
qemu_create_fields () {
  rm -f "$T/q.qcow2"
  qemu-img create -q -f qcow2 -o "$1" "$T/q.qcow2" 1M 2>/dev/null || { echo refused; return; }
  qemu-img info --output=json "$T/q.qcow2" | jq -c '[."cluster-size", ."format-specific".data.compat,
    ."format-specific".data."refcount-bits", (."format-specific".data."lazy-refcounts" // false),
    (."format-specific".data."extended-l2" // false), ."format-specific".data."compression-type"]'
}

rb_create_fields () {
  run "$OPTS" parse -o "$1"
  [ "$status" -eq 0 ] || { echo refused; return; }
  echo "$output" | jq -c '[(if .cluster_size == 0 then 65536 else .cluster_size end),
    (if .version == 2 then "0.10" else "1.1" end), (if .refcount_bits == 0 then 16 else .refcount_bits end),
    .lazy_refcounts, .extended_l2, (if .compression_type == 1 then "zstd" else "zlib" end)]'
}

@test "-o: qemu-img's option lists give the same creation options, and the same lists are refused" {
  n=0
  for o in cluster_size=4k cluster_size=2M cluster_size=512 cluster_size=1.5k cluster_size=3k \
           cluster_size=4M cluster_size= cluster_size=64k,cluster_size=8k compat=0.10 compat=v2 compat=1.1 \
           compat=v3 compat=2 compat=1.0 refcount_bits=1 refcount_bits=64 refcount_bits=3 \
           refcount_bits=128 refcount_bits=x lazy_refcounts lazy_refcounts=on lazy_refcounts=yes \
           lazy_refcounts=y lazy_refcounts=true lazy_refcounts=off lazy_refcounts=no lazy_refcounts=1 \
           nolazy_refcounts extended_l2=on,cluster_size=64k extended_l2=maybe compression_type=zstd \
           compression_type=zlib compression_type=lz4 bogus=1 "cluster_size=4k," ",cluster_size=4k" \
           "cluster_size=4k,,compat=1.1" preallocation=off preallocation=bogus; do
    want=$(qemu_create_fields "$o")
    got=$(rb_create_fields "$o")
    [ "$got" = "$want" ] || { echo "-o '$o': rb '$got', qemu '$want'"; "$OPTS" parse -o "$o"; return 1; }
    n=$((n + 1))
  done
  echo "$n option lists compared" >&3
}

@test "-o: repeated -o accumulate (the last value wins), ',,' is a comma in a value, help lists the keys" {
  run "$OPTS" parse -o cluster_size=4k -o compat=0.10,cluster_size=16k -o "backing_file=a,,b.qcow2,backing_fmt=qcow2"
  [ "$status" -eq 0 ]
  [ "$(echo "$output" | jq -c '[.cluster_size, .version, .backing_file, .backing_fmt]')" = '[16384,2,"a,b.qcow2","qcow2"]' ]
  run "$OPTS" parse -o preallocation=metadata,size=1.5G
  [ "$(echo "$output" | jq -c '[.preallocation, .size]')" = '[1,1610612736]' ]
  run "$OPTS" parse -o help
  [ "$status" -eq 0 ]
  for k in size backing_file backing_fmt cluster_size compat compression_type extended_l2 \
           lazy_refcounts preallocation refcount_bits; do
    [[ "$output" == *"  $k="* ]] || { echo "missing $k"; return 1; }
  done
  run "$OPTS" parse -o bogus=1
  [ "$status" -eq 1 ] && [ "${#lines[@]}" -eq 1 ] && [[ "$output" == "opts-tool: -o: invalid parameter 'bogus'"* ]]
}

@test "shared options: -f, -U, --output, --json, -p, -q in short and long forms, operands in any place" {
  run "$OPTS" parse -f raw -U --output=json -p -q a b
  [ "$status" -eq 0 ]
  [ "$(echo "$output" | jq -c '[.format, ."force-share", .json, .progress, .quiet, .operands]')" = '["raw",true,true,true,true,["a","b"]]' ]
  run "$OPTS" parse a --format qcow2 --force-share --json --progress --quiet b
  [ "$(echo "$output" | jq -c '[.format, ."force-share", .json, .progress, .quiet, .operands]')" = '["qcow2",true,true,true,true,["a","b"]]' ]
  run "$OPTS" parse -j --output human x
  [ "$(echo "$output" | jq -c '[.json, .format, ."force-share", .operands]')" = '[false,null,false,["x"]]' ]
  run "$OPTS" parse -Uqc 5 -- -f
  [ "$(echo "$output" | jq -c '[."force-share", .quiet, .count, .format, .operands]')" = '[true,true,"5",null,["-f"]]' ]
  run "$OPTS" parse --count=7
  [ "$(echo "$output" | jq -r .count)" = 7 ]
}

@test "shared options: bad values, unknown options and missing values are one-line usage errors (exit 1)" {
  run --separate-stderr "$OPTS" parse -f vmdk x
  [ "$status" -eq 1 ] && [ -z "$output" ] && [ "$stderr" = "opts-tool: -f: unknown format 'vmdk' (raw or qcow2)" ]
  run --separate-stderr "$OPTS" parse --output=xml x
  [ "$status" -eq 1 ] && [ "$stderr" = "opts-tool: --output: 'xml' is neither human nor json" ]
  run --separate-stderr "$OPTS" parse --bogus=1 x
  [ "$status" -eq 1 ] && [ "$stderr" = "opts-tool: option '--bogus' is unknown (see --help)" ]
  run --separate-stderr "$OPTS" parse -z x
  [ "$status" -eq 1 ] && [ "$stderr" = "opts-tool: option '-z' is unknown (see --help)" ]
  run --separate-stderr "$OPTS" parse x -f
  [ "$status" -eq 1 ] && [ "$stderr" = "opts-tool: option '-f' needs a value (see --help)" ]
  run --separate-stderr "$OPTS" parse x --output
  [ "$status" -eq 1 ] && [ "$stderr" = "opts-tool: option '--output' needs a value (see --help)" ]
}

@test "shared options: --help and -h print the program's help on stdout (exit 0), --version its version" {
  run --separate-stderr "$OPTS" parse --help
  [ "$status" -eq 0 ] && [[ "$output" == "usage: opts-tool"* ]] && [ -z "$stderr" ]
  run "$OPTS" parse -h
  [ "$status" -eq 0 ] && [[ "$output" == "usage: opts-tool"* ]]
  run "$OPTS" parse --version
  [ "$status" -eq 0 ] && [[ "$output" == "opts-tool "[0-9]* ]]
}
