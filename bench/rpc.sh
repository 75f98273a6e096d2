#!/usr/bin/env bash
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# JSON-RPC requests per second (rb-rpc over a Unix socket): get_version and 4 KiB reads, on one
# persistent connection and on four at once (a request is sent when the previous reply is in).
set -euo pipefail
. "$(dirname "$0")/common.sh"
secs=${SECS:-3}
qemu-img create -q -f qcow2 "$work/r.qcow2" 256M
qemu-io -c 'write -P 7 0 128M' "$work/r.qcow2" >/dev/null
"$build/rpc/rb-rpc" -l "unix:$work/rpc.sock" "$work/r.qcow2" &
SERVER_PID=$!
for _ in $(seq 100); do [ -S "$work/rpc.sock" ] && break; sleep 0.05; done

python3 - "$work/rpc.sock" "$secs" <<'PY'
import json, socket, sys, time, threading
path, secs = sys.argv[1], float(sys.argv[2])

def client(method, params, counter):
    s = socket.socket(socket.AF_UNIX); s.connect(path)
    f = s.makefile('rb')
    n, i, end = 0, 0, time.time() + secs
    while time.time() < end:
        p = dict(params)
        if method == 'read':
            p['offset'] = (i * 4096) % (128 << 20); i += 7919
        s.sendall(json.dumps({"jsonrpc": "2.0", "method": method, "params": p, "id": n}).encode() + b"\n")
        r = json.loads(f.readline())
        assert r.get("id") == n and "result" in r, r
        n += 1
    counter.append(n)

for method, params in (("get_version", {}), ("read", {"length": 4096})):
    for conns in (1, 4):
        counts = []
        ts = [threading.Thread(target=client, args=(method, params, counts)) for _ in range(conns)]
        [t.start() for t in ts]; [t.join() for t in ts]
        print("%-12s %d connection(s): %8.0f requests/s" % (method, conns, sum(counts) / secs))
PY
