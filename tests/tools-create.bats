#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# rb-create against qemu-img create: the same images field by field and byte for byte, the same refusals.

bats_require_minimum_version 1.5.0
load helpers
load tools-helpers

setup () {
  T="$BATS_TEST_TMPDIR"
  cd "$T"
}

teardown () {
  if [ -s "$T/qnbd.pid" ]; then
    pid=$(cat "$T/qnbd.pid")
    kill "$pid" 2>/dev/null || true
    wait_until "$RB_WAIT" "qemu-nbd $pid to exit" process_gone "$pid"
  fi
}

# Normalised when comparing rb-create's images with qemu-img create's, and why:
# - filename: the two files have different names;
# - actual-size: QEMU writes the zeros of the header, refcount table and refcount
#   block clusters, rblock leaves them as holes (zeros come from the file system),
#   so rblock's file has fewer blocks allocated.
info_of () { qemu-img info --output=json "$1" > "$T/i.json" && jq -S 'del(.filename, ."actual-size")' "$T/i.json"; }
check_of () { qemu-img check --output=json "$1" > "$T/c.json" && jq -S 'del(.filename)' "$T/c.json"; }

# same_as_qemu ARGS...: rb-create ARGS and qemu-img create -f qcow2 ARGS, where the
# word IMG in ARGS stands for the image (RB and Q: its paths), give the same image
# and print the same "Formatting" line.
same_as_qemu () {
  local a want got
  RB=; Q=
  for a in "$@"; do [[ "$a" == *IMG* ]] && { RB=${a/IMG/rb.qcow2}; Q=${a/IMG/q.qcow2}; }; done
  rm -f "$RB" "$Q"
  want=$(qemu-img create -f qcow2 "${@/IMG/q.qcow2}") || { echo "qemu-img refused: $*"; return 1; }
  got=$("$RB_CREATE" "${@/IMG/rb.qcow2}")
  [ "$got" = "${want//q.qcow2/rb.qcow2}" ] || { echo "Formatting line: $got / $want"; return 1; }
  a=$(info_of "$Q") && got=$(info_of "$RB") && [ "$got" = "$a" ] ||
    { echo "== info $*"; diff <(info_of "$Q") <(info_of "$RB"); return 1; }
  a=$(check_of "$Q") && got=$(check_of "$RB") && [ "$got" = "$a" ] ||
    { echo "== check $*"; diff <(check_of "$Q") <(check_of "$RB"); return 1; }
  qemu_check_clean "$RB"
}

# same_bytes: RB holds QEMU's bytes up to the end of Q (header, extensions,
# backing name, refcount table and block, L1), where QEMU's file ends.
same_bytes () {
  local n
  n=$(stat -c %s "$Q")
  cmp -n "$n" "$Q" "$RB" || { echo "$RB differs from $Q in its first $n bytes"; return 1; }
}

@test "rb-create makes qemu-img create's image for every option, field by field and byte for byte" {
  mkdir -p sub
  qemu-img create -q -f qcow2 sub/base.qcow2 3M
  truncate -s 5M sub/base.raw
  n=0
  # (QEMU's layout is reproduced while its first refcount block covers the metadata;
  # a larger L1 makes QEMU grow its refcount table, a history rblock does not replay:
  # 512-byte clusters over 10G is such a case and is compared field by field only.)
  while read -r line; do
    eval "args=($line)"
    same_as_qemu "${args[@]}"
    same_bytes
    n=$((n + 1))
  done <<'EOF'
IMG 1M
IMG 0
IMG 1
IMG 1.5G
-o cluster_size=512 IMG 1M
-o cluster_size=4k IMG 1T
-o cluster_size=8k IMG 16M
-o cluster_size=2M,refcount_bits=64 IMG 6M
-o compat=0.10 IMG 3M
-o compat=v2,cluster_size=4096 IMG 3M
-o refcount_bits=1 IMG 1M
-o refcount_bits=8,lazy_refcounts=on IMG 1M
-o extended_l2=on IMG 2M
-o extended_l2=on,cluster_size=16k IMG 2M
-o compression_type=zstd IMG 1M
-o cluster_size=64k IMG 1P
-b sub/base.qcow2 -F qcow2 IMG
-b base.qcow2 -F qcow2 -o cluster_size=4k sub/IMG
-b sub/base.raw -F raw IMG 2M
-o backing_file=sub/base.qcow2,backing_fmt=qcow2,compat=0.10 IMG
-u -b sub/base.qcow2 -F qcow2 IMG 1G
EOF
  echo "$n option sets compared" >&3
  same_as_qemu -o cluster_size=512 IMG 10G
}

@test "preallocation=metadata|falloc|full: the image qemu-img makes (every cluster allocated, zeros), the data after the metadata" {
  for m in metadata falloc full; do
    same_as_qemu -o preallocation=$m IMG 3M
    qemu-img compare -q -f qcow2 q.qcow2 rb.qcow2
    # rblock puts the L2 tables after the data (QEMU before it): only the offsets differ.
    [ "$(qemu-img map --output=json rb.qcow2 | jq -c 'map(del(.offset))')" = \
      "$(qemu-img map --output=json q.qcow2 | jq -c 'map(del(.offset))')" ]
    [ "$(qemu-img check --output=json rb.qcow2 | jq '."allocated-clusters"')" = 48 ]
    # rblock's own view agrees with QEMU's, through rb-map and the plugin.
    [ "$("$RB_MAP" --output=json rb.qcow2 | jq -c 'map(del(.offset, .compressed))')" = \
      "$(qemu-img map --output=json rb.qcow2 | jq -c 'map(del(.offset))')" ]
    actual=$(qemu-img info --output=json rb.qcow2 | jq '."actual-size"')
    case $m in
      metadata) [ "$actual" -lt 1048576 ] ;;                     # the data area is a hole
      *) [ "$actual" -ge 3145728 ] ;;                            # the data area is allocated
    esac
  done
  # Extended L2 over a backing file: allocated clusters, unallocated subclusters (as QEMU).
  qemu-img create -q -f qcow2 base.qcow2 2M
  qio base.qcow2 'write -P 5 0 1M'
  same_as_qemu -o preallocation=metadata,extended_l2=on -b base.qcow2 -F qcow2 IMG
  qemu-img compare -q base.qcow2 rb.qcow2
  [ "$(qemu-img map --output=json rb.qcow2 | jq -c 'map(del(.offset))')" = \
    "$(qemu-img map --output=json q.qcow2 | jq -c 'map(del(.offset))')" ]
}

@test "-f raw: the raw file qemu-img create -f raw makes (preallocation off, falloc, full); metadata is refused" {
  for m in off falloc full; do
    rm -f q.raw rb.raw
    want=$(qemu-img create -f raw -o preallocation=$m q.raw 1.5M)
    got=$("$RB_CREATE" -f raw -o preallocation=$m rb.raw 1.5M)
    [ "$got" = "${want//q.raw/rb.raw}" ]
    [ "$(qemu-img info --output=json rb.raw | jq -S 'del(.filename)')" = "$(qemu-img info --output=json q.raw | jq -S 'del(.filename)')" ]
    cmp q.raw rb.raw
  done
  run --separate-stderr "$RB_CREATE" -f raw -o preallocation=metadata m.raw 1M
  [ "$status" -eq 1 ] && [ ! -e m.raw ] && [[ "$stderr" == *metadata* ]]
  run "$RB_CREATE" -f raw -o cluster_size=4k m.raw 1M
  [ "$status" -eq 1 ] && [ ! -e m.raw ]
}

@test "-b: the size defaults to the backing file's, the name resolves from IMAGE's folder, -F is needed, -u skips the check" {
  mkdir -p a/b
  qemu-img create -q -f qcow2 a/base.qcow2 3M
  "$RB_CREATE" -q -b ../base.qcow2 -F qcow2 a/b/top.qcow2
  [ "$(qemu-img info --output=json a/b/top.qcow2 | jq -c '[."virtual-size", ."backing-filename", ."full-backing-filename"]')" = \
    '[3145728,"../base.qcow2","a/b/../base.qcow2"]' ]
  qemu-img info --backing-chain a/b/top.qcow2 > /dev/null
  # A name that does not resolve from IMAGE's folder is refused, as qemu-img refuses it.
  run qemu-img create -f qcow2 -b base.qcow2 -F qcow2 a/b/q.qcow2
  [ "$status" -ne 0 ]
  run --separate-stderr "$RB_CREATE" -b base.qcow2 -F qcow2 a/b/bad.qcow2
  [ "$status" -eq 2 ] && [ ! -e a/b/bad.qcow2 ] && [[ "$stderr" == *"could not open the backing file"*base.qcow2* ]]
  run --separate-stderr "$RB_CREATE" -b ../base.qcow2 a/b/noformat.qcow2
  [ "$status" -eq 1 ] && [ ! -e a/b/noformat.qcow2 ] && [[ "$stderr" == *"-b needs -F"*"looks like qcow2"* ]]
  run "$RB_CREATE" -u -b not-yet.qcow2 -F qcow2 a/later.qcow2
  [ "$status" -eq 1 ] && [ ! -e a/later.qcow2 ]        # -u: no size to take
  "$RB_CREATE" -q -u -b not-yet.qcow2 -F qcow2 a/later.qcow2 1M
  [ "$(qemu-img info --output=json a/later.qcow2 | jq -r '."backing-filename"')" = not-yet.qcow2 ]
  # -b and -F win over -o backing_file and backing_fmt, as in qemu-img.
  qemu-img create -q -f raw a/other.raw 1M
  "$RB_CREATE" -q -o backing_file=base.qcow2,backing_fmt=qcow2 -b other.raw -F raw a/win.qcow2
  [ "$(qemu-img info --output=json a/win.qcow2 | jq -c '[."backing-filename", ."backing-filename-format", ."virtual-size"]')" = '["other.raw","raw",1048576]' ]
}

@test "an existing IMAGE is refused without --force, replaced with it, never while QEMU writes it, never the backing file" {
  qemu-img create -q -f qcow2 old.qcow2 1M
  qio old.qcow2 'write -P 1 0 64k'
  run --separate-stderr "$RB_CREATE" old.qcow2 2M
  [ "$status" -eq 2 ] && [[ "$stderr" == *"already exists"*--force* ]]
  [ "$(qemu-img info --output=json old.qcow2 | jq '."virtual-size"')" = 1048576 ]
  "$RB_CREATE" -q --force old.qcow2 2M
  [ "$(qemu-img info --output=json old.qcow2 | jq '."virtual-size"')" = 2097152 ]
  [ "$(qemu-img map --output=json old.qcow2 | jq '[.[] | select(.data)] | length')" = 0 ]
  qemu_check_clean old.qcow2
  run --separate-stderr "$RB_CREATE" --force -b old.qcow2 -F qcow2 old.qcow2
  [ "$status" -eq 2 ] && [[ "$stderr" == *"backing file itself"* ]]
  rm -f "$T/qnbd.pid"
  qemu-nbd -f qcow2 -k "$T/qnbd.sock" --pid-file="$T/qnbd.pid" --fork old.qcow2
  wait_until "$RB_WAIT" "qemu-nbd's pidfile" test -s "$T/qnbd.pid"
  run --separate-stderr "$RB_CREATE" --force old.qcow2 4M
  [ "$status" -eq 2 ] && [[ "$stderr" == *"in use by another process"* ]]
  teardown
  [ "$(qemu-img info --output=json old.qcow2 | jq '."virtual-size"')" = 2097152 ]
}

@test "options qemu-img refuses are refused (exit 1, nothing created), with the reason" {
  while read -r line; do
    eval "args=($line)"
    rm -f q.qcow2 rb.qcow2
    run qemu-img create -q -f qcow2 "${args[@]/IMG/q.qcow2}"
    [ "$status" -ne 0 ] || { echo "qemu-img accepted ${args[*]}"; return 1; }
    run --separate-stderr "$RB_CREATE" -q "${args[@]/IMG/rb.qcow2}"
    [ "$status" -eq 1 ] && [ -n "$stderr" ] && [ ! -e rb.qcow2 ] ||
      { echo "rb-create ${args[*]}: status $status, $stderr"; return 1; }
  done <<'EOF'
-o extended_l2=on,cluster_size=4k IMG 1M
-o compression_type=zstd,compat=0.10 IMG 1M
-o lazy_refcounts=on,compat=0.10 IMG 1M
-o extended_l2=on,compat=0.10 IMG 1M
-o refcount_bits=32,compat=0.10 IMG 1M
-o preallocation=metadata -u -b x.qcow2 -F qcow2 IMG 1M
-o size=1M IMG 1M
IMG
IMG 1.5
IMG 8E
IMG -- -1
-o cluster_size=3k IMG 1M
-o bogus=1 IMG 1M
EOF
}

@test "--force on a full disk: exit 2, the old IMAGE intact, nothing left behind" {
  mkdir -p "$T/full"
  mount -t tmpfs -o size=2M tmpfs "$T/full" || { echo "mounting a tmpfs needs root (CI runs as root)"; false; }
  qemu-img create -q -f qcow2 "$T/full/old.qcow2" 1M
  qio "$T/full/old.qcow2" 'write -P 6 0 64k'
  before=$(qemu-img info --output=json "$T/full/old.qcow2" | jq -S 'del(."actual-size")')
  run --separate-stderr "$RB_CREATE" -q --force -o preallocation=full "$T/full/old.qcow2" 8M
  after=$(qemu-img info --output=json "$T/full/old.qcow2" | jq -S 'del(."actual-size")')
  qemu-io -c 'read -P 6 0 64k' "$T/full/old.qcow2" > "$T/read.out" 2>&1 || true
  ls -A "$T/full" > "$T/left"
  umount "$T/full"
  [ "$status" -eq 2 ] && [[ "$stderr" == *"No space left on device"* ]]
  [ "$after" = "$before" ]
  grep -q 'read 65536/65536' "$T/read.out"
  [ "$(cat "$T/left")" = old.qcow2 ]
}
