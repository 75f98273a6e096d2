#!/bin/bash
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# Builds the libFuzzer targets with clang (ASan+UBSan), makes seeds with qemu-img, replays
# tests/fuzz/regress/ and fuzzes each target for FUZZ_SECONDS.  Usage: run.sh [TARGET...]
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
out=${FUZZ_OUT:-$(mktemp -d)}
secs=${FUZZ_SECONDS:-30}
mkdir -p "$out"
printf '#define PACKAGE_VERSION "fuzz"\n' > "$out/config.h"
flags="-g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -I$out -I$src/lib -D_GNU_SOURCE"
libsrc=$(ls "$src"/lib/*.c | grep -v '/writer\.c$' || true)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(fuzz-image fuzz-plugin fuzz-model fuzz-writer fuzz-rpc)

seeds () {   # seeds for the image target, made by QEMU
  local d=$1 i=0
  mkdir -p "$d"
  for opts in cluster_size=512 cluster_size=4096,compat=0.10 cluster_size=65536,refcount_bits=1 \
              cluster_size=16384,extended_l2=on cluster_size=65536,refcount_bits=64; do
    i=$((i + 1))
    qemu-img create -q -f qcow2 -o "$opts" "$d/s$i.qcow2" 1M
    qemu-io -c 'write -P 1 0 4k' -c 'write -z 64k 64k' -c 'write -P 2 300k 1k' "$d/s$i.qcow2" >/dev/null
  done
  head -c 256k /dev/urandom > "$out/r.raw"
  qemu-img convert -c -O qcow2 -o cluster_size=4096 "$out/r.raw" "$d/comp.qcow2"
  qemu-img snapshot -c s "$d/s1.qcow2"
  qemu-img create -q -f qcow2 -o cluster_size=4096 "$d/bitmaps.qcow2" 1M   # persistent bitmaps
  qemu-img bitmap --add "$d/bitmaps.qcow2" b0
  qemu-img bitmap --add --granularity 1k "$d/bitmaps.qcow2" b1
  qemu-io -c 'write -P 3 0 8k' -c 'write -P 4 512k 4k' "$d/bitmaps.qcow2" >/dev/null
}

plugin_seeds () {   # the image seeds behind a tape of operations (see fuzz-plugin.c)
  local d=$1 f
  seeds "$out/img-seeds"
  for f in "$out"/img-seeds/*; do
    python3 - "$f" "$d/$(basename "$f")" <<'PY'
import random, struct, sys
random.seed(sys.argv[1])
ops = b"".join(bytes([k, random.randrange(256)]) + struct.pack("<HI", random.randrange(1 << 13), random.randrange(1 << 12))
               for k in (1, 0, 2, 5, 1, 3, 0, 4, 1, 0, 2, 0, 5, 3, 1, 0))
img = open(sys.argv[1], "rb").read()
open(sys.argv[2], "wb").write(struct.pack("<H", len(ops)) + ops + img)
PY
  done
}

rc=0
for t in "${targets[@]}"; do
  echo "== $t: build"
  extra=""
  [ "$t" = fuzz-rpc ] && extra="-I$src/rpc $src/rpc/session.c $src/rpc/jsonrpc.c $src/rpc/methods.c $(pkg-config --cflags --libs json-c)"
  [ "$t" = fuzz-plugin ] && extra="-I$src/rpc $src/rpc/server.c $src/rpc/session.c $src/rpc/jsonrpc.c $src/rpc/methods.c $(pkg-config --cflags --libs json-c)"
  # shellcheck disable=SC2086
  clang $flags -o "$out/$t" "$src/tests/fuzz/$t.c" $libsrc $extra -lz -lzstd -lpthread
  corpus="$out/corpus-$t"
  mkdir -p "$corpus"
  [ "$t" = fuzz-image ] && seeds "$corpus"
  [ "$t" = fuzz-plugin ] && plugin_seeds "$corpus"
  if [ "$t" = fuzz-rpc ]; then
    printf '%s\n' '{"jsonrpc":"2.0","method":"read","params":{"offset":8192,"length":100},"id":1}' > "$corpus/s1"
    printf '%s' '[{"method":"lookup","params":{"offset":9000},"id":"a"},{"jsonrpc":"2.0","method":"map"}]' > "$corpus/s2"
    printf '%s' '{"jsonrpc":"2.0","method":"write","params":{"offset":0,"data":"SGVsbG8="},"id":null}{"method":"info","id":2}' > "$corpus/s3"
    # The first byte picks the token mode (bit 0) and the read size (see fuzz-rpc.c).
    printf '\x00%s' '[{"method":"auth","params":{"token":"s3cret"},"id":1},{"method":"check","id":2}]' > "$corpus/s4"
    printf '\x21%s\n%s' '{"method":"read","params":{"offset":0,"length":8},"token":"s3cret","id":"\u00e9"}' \
      '{"method":"a\xff\xfe","id":3}{"method":"stats","export":"x","id":4}' > "$corpus/s5"
  fi
  regress="$src/tests/fuzz/regress/$t"
  mapfile -t inputs < <(find "$regress" -type f ! -name '.*' 2>/dev/null | sort)
  if [ ${#inputs[@]} -gt 0 ]; then
    echo "== $t: replay ${#inputs[@]} regression inputs"
    "$out/$t" -runs=0 "${inputs[@]}" || rc=1
  fi
  echo "== $t: fuzz for ${secs}s"
  dict=""
  [ -f "$src/tests/fuzz/qcow2.dict" ] && { [ "$t" = fuzz-image ] || [ "$t" = fuzz-plugin ]; } && dict="-dict=$src/tests/fuzz/qcow2.dict"
  (cd "$out" && "$out/$t" $dict -max_total_time="$secs" -max_len=1048576 -rss_limit_mb=2048 \
      -timeout=20 -print_final_stats=1 "$corpus" 2>&1 | tail -25) || rc=1
  if ls "$out"/crash-* "$out"/leak-* "$out"/timeout-* 2>/dev/null | grep -q .; then
    echo "== $t: crashers in $out"; rc=1
  fi
done
exit $rc
