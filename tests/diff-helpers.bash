# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# Helpers of the rb-diff suites: an independent oracle (cmp -l reduced to sector ranges) and NBD servers.

RB_DIFF="$top_builddir/utils/rb-diff"

# oracle_ranges A B [SECTOR_SIZE]: "start count" lines of the changed sectors,
# from cmp -l on the common part plus the longer input's tail.
oracle_ranges () {
  local a=$1 b=$2 ss=${3:-512} sa sb
  sa=$(stat -c %s "$a"); sb=$(stat -c %s "$b")
  { cmp -l "$a" "$b" 2>/dev/null | awk -v ss="$ss" '{ print int(($1 - 1) / ss) }'
    awk -v sa="$sa" -v sb="$sb" -v ss="$ss" 'BEGIN {
      c = sa < sb ? sa : sb; l = sa < sb ? sb : sa
      if (l > c) for (s = int(c / ss); s < int((l + ss - 1) / ss); s++) print s }'
  } | sort -n -u | awk '
    NR == 1 { start = $1; n = 1; next }
    $1 == start + n { n++; next }
    { print start, n; start = $1; n = 1 }
    END { if (NR) print start, n }'
}

# oracle_count A B [SECTOR_SIZE]: number of changed sectors by the oracle.
oracle_count () {
  oracle_ranges "$@" | awk '{ n += $2 } END { print n + 0 }'
}

# json_ranges: "start count" lines from rb-diff --json on stdin.
json_ranges () {
  jq -r '.ranges[] | "\(.start) \(.count)"'
}

# assert_diff_matches_oracle A B [SECTOR_SIZE [rb-diff options...]]: rb-diff's
# --json ranges, --count and exit status agree with the oracle.
assert_diff_matches_oracle () {
  local a=$1 b=$2 ss=${3:-512}; shift 3 2>/dev/null || shift $#
  local want got want_status=0 want_count json
  want=$(oracle_ranges "$a" "$b" "$ss")
  [ -n "$want" ] && want_status=1
  run "$RB_DIFF" --json --sector-size "$ss" "$@" "$a" "$b"
  [ "$status" -eq "$want_status" ] || { echo "status $status, want $want_status: $output"; return 1; }
  json=$output
  echo "$json" | jq -e . >/dev/null || { echo "not JSON: $json"; return 1; }
  got=$(echo "$json" | json_ranges)
  [ "$got" = "$want" ] || { echo "ranges differ"; diff <(echo "$want") <(echo "$got") | head -20; return 1; }
  want_count=$(echo "$want" | awk '{ n += $2 } END { print n + 0 }')
  [ "$(echo "$json" | jq .changed_sectors)" = "$want_count" ] || { echo "changed_sectors: $json"; return 1; }
  [ "$(echo "$json" | jq .size_a)" = "$(stat -c %s "$a")" ]
  [ "$(echo "$json" | jq .size_b)" = "$(stat -c %s "$b")" ]
  [ "$(echo "$json" | jq .sector_size)" = "$ss" ]
  run "$RB_DIFF" --count --sector-size "$ss" "$@" "$a" "$b"
  [ "$status" -eq "$want_status" ] && [ "$output" = "$want_count" ] ||
    { echo "--count: $status $output"; return 1; }
}

# poke FILE OFFSET: change the byte at OFFSET (to its value plus one).
poke () {
  local f=$1 off=$2 cur
  cur=$(od -An -tu1 -j "$off" -N1 "$f" | tr -d ' ')
  printf "\\$(printf %03o $(( (${cur:-0} + 1) % 256 )))" |
    dd of="$f" bs=1 seek="$off" conv=notrunc status=none
}

# scribble FILE OFFSET COUNT: random bytes over [OFFSET, OFFSET+COUNT).
scribble () {
  head -c "$3" /dev/urandom | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}

# serve NAME NBDKIT-ARGS...: nbdkit on $BATS_TEST_TMPDIR/NAME.sock with a pidfile;
# sets NBD_URI.  Stopped by stop_servers.
serve () {
  local name=$1; shift
  local sock="$BATS_TEST_TMPDIR/$name.sock" pidf="$BATS_TEST_TMPDIR/$name.pid" i
  rm -f "$sock" "$pidf"
  nbdkit -U "$sock" -P "$pidf" "$@" 2>"$BATS_TEST_TMPDIR/$name.err" ||
    { cat "$BATS_TEST_TMPDIR/$name.err"; return 1; }
  wait_until "$RB_WAIT" "the server's socket and pidfile" eval '[ -S "$sock" ] && [ -s "$pidf" ]' || true
  [ -S "$sock" ] || { echo "nbdkit $name did not start"; return 1; }
  echo "$pidf" >> "$BATS_TEST_TMPDIR/servers"
  NBD_URI="nbd+unix:///?socket=$sock"
}

# serve_qemu NAME IMAGE FORMAT: qemu-nbd (read-only) on a Unix socket; sets NBD_URI.
serve_qemu () {
  local name=$1 img=$2 fmt=$3
  local sock="$BATS_TEST_TMPDIR/$name.sock" pidf="$BATS_TEST_TMPDIR/$name.pid" i
  rm -f "$sock" "$pidf"
  qemu-nbd -r -f "$fmt" -k "$sock" --pid-file="$pidf" --fork "$img" 2>"$BATS_TEST_TMPDIR/$name.err" ||
    { cat "$BATS_TEST_TMPDIR/$name.err"; return 1; }
  wait_until "$RB_WAIT" "the server's socket and pidfile" eval '[ -S "$sock" ] && [ -s "$pidf" ]' || true
  [ -S "$sock" ] || { echo "qemu-nbd $name did not start"; return 1; }
  echo "$pidf" >> "$BATS_TEST_TMPDIR/servers"
  NBD_URI="nbd+unix:///?socket=$sock"
}

# stop_servers: kill every server this test started (by pid) and wait for them.
stop_servers () {
  [ -f "$BATS_TEST_TMPDIR/servers" ] || return 0
  local pidf pid i
  while read -r pidf; do
    [ -s "$pidf" ] || continue
    pid=$(cat "$pidf")
    kill "$pid" 2>/dev/null || true
    wait_until "$RB_WAIT" "server $pid to exit" process_gone "$pid" || true
    kill -9 "$pid" 2>/dev/null || true
  done < "$BATS_TEST_TMPDIR/servers"
  rm -f "$BATS_TEST_TMPDIR/servers"
}
