#!/usr/bin/env bash
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# rb-diff vs cmp -l vs the read limit (cat A B > /dev/null) on cached inputs with ~1% scattered
# changed sectors (each rewritten with random bytes).  SIZE_MB=... (default 1024), PERCENT=... (default 1), RUNS=... (default 3).
set -euo pipefail
. "$(dirname "$0")/common.sh"
mb=${SIZE_MB:-1024}
pct=${PERCENT:-1}
runs=${RUNS:-3}
diff="$build/utils/rb-diff"

echo "making two $mb MiB inputs, B with ${pct}% of its 512-byte sectors changed at random..."
head -c "$((mb << 20))" /dev/urandom > "$work/a"
cp "$work/a" "$work/b"
python3 - "$work/b" "$mb" "$pct" > "$work/want" <<'PY'
import os, random, sys
path, mb, pct = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
sectors = mb * 2048
random.seed(42)
changed = sorted(random.sample(range(sectors), int(sectors * pct / 100)))
fd = os.open(path, os.O_WRONLY)
for s in changed:
    os.pwrite(fd, os.urandom(512), s * 512)       # a rewritten sector
os.close(fd)
print(len(changed))
PY
cat "$work/a" "$work/b" > /dev/null     # everyone reads from the page cache

got=$("$diff" --count "$work/a" "$work/b" || true)
[ "$got" = "$(cat "$work/want")" ] || { echo "rb-diff counted $got changed sectors, want $(cat "$work/want")"; exit 2; }

rd () { "$diff" --quiet "$@" "$work/a" "$work/b"; [ $? -le 1 ]; }
rdj () { "$diff" --json "$work/a" "$work/b" > "$work/out.json" || [ $? -eq 1 ]; }
cl () { cmp -l "$work/a" "$work/b" > "$work/cmp.out" || [ $? -eq 1 ]; }
ct () { cat "$work/a" "$work/b" > /dev/null; }
set +e
c=$(best_of "$runs" ct); r=$(best_of "$runs" rd); j=$(best_of "$runs" rdj); m=$(best_of 1 cl)
set -e
gb=$(echo "2 * $mb / 1024" | bc -l)
printf 'diff %d MiB x2, %s%% sectors changed (%s sectors):\n' "$mb" "$pct" "$(cat "$work/want")"
printf '  cat A B >/dev/null (read limit)  %6ss  %5.2f GiB/s\n' "$c" "$(echo "$gb / $c" | bc -l)"
printf '  rb-diff --quiet                  %6ss  %5.2f GiB/s  %s x the read limit\n' "$r" "$(echo "$gb / $r" | bc -l)" "$(ratio "$r" "$c")"
printf '  rb-diff --json                   %6ss  %5.2f GiB/s  %s x the read limit\n' "$j" "$(echo "$gb / $j" | bc -l)" "$(ratio "$j" "$c")"
printf '  cmp -l > file                   %6ss  %5.2f GiB/s  rb-diff is %s x faster\n' "$m" "$(echo "$gb / $m" | bc -l)" "$(ratio "$r" "$m")"
