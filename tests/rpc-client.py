#!/usr/bin/env python3
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# A byte-exact JSON-RPC client for the tests: send raw bytes, flood without reading, big batches.
"""usage:
  rpc-client.py send ADDR            stdin's bytes to the server, its replies (raw) to stdout
  rpc-client.py check-utf8           stdin must be lines of strict UTF-8 JSON; prints them
  rpc-client.py flood ADDR N LENGTH  N pipelined reads of LENGTH bytes, never reading a reply;
                                     prints "sent ..." then "closed" when the server hangs up
  rpc-client.py batch ADDR N LENGTH  one batch of N reads of LENGTH bytes, reads the reply;
                                     prints a summary (JSON)
  rpc-client.py batch-start ADDR N LENGTH  the same batch; prints "first byte" once the
                                     reply starts, then reads no more (waits for a hang-up)
  rpc-client.py idle ADDR            sends a space every 0.2 s, never a request; prints what
                                     the server says and "closed" when it hangs up
  rpc-client.py silent ADDR          sends nothing; prints "closed" when the server hangs up
ADDR is unix:PATH or tcp:HOST:PORT."""
import json
import socket
import sys


def connect(addr, timeout=60):
    if addr.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(addr[5:])
    else:
        host, port = addr[4:].rsplit(":", 1)
        s = socket.create_connection((host, int(port)), timeout=timeout)
    return s


def read_all(s):
    out = b""
    while True:
        b = s.recv(1 << 20)
        if not b:
            return out
        out += b


def wait_hangup(s, timeout=120):
    """Wait (without reading) until the server closes the connection."""
    import select
    p = select.poll()
    p.register(s, select.POLLRDHUP | select.POLLHUP)
    if p.poll(timeout * 1000):
        print("closed", flush=True)


def send_batch(args):
    """Connect to ADDR, send one batch of N reads of LENGTH bytes (ids 0..N-1)."""
    s = connect(args[0])
    n, length = int(args[1]), int(args[2])
    batch = [{"jsonrpc": "2.0", "method": "read", "id": i,
              "params": {"offset": 0, "length": length}} for i in range(n)]
    s.sendall(json.dumps(batch).encode() + b"\n")
    return s, n


def main():
    cmd = sys.argv[1]
    if cmd == "send":
        s = connect(sys.argv[2])
        s.sendall(sys.stdin.buffer.read())
        s.shutdown(socket.SHUT_WR)
        sys.stdout.buffer.write(read_all(s))
    elif cmd == "check-utf8":
        data = sys.stdin.buffer.read()
        text = data.decode("utf-8")            # strict: invalid UTF-8 raises
        for line in text.splitlines():
            print(json.dumps(json.loads(line), ensure_ascii=False))
    elif cmd == "flood":
        s = connect(sys.argv[2])
        n, length = int(sys.argv[3]), int(sys.argv[4])
        req = "".join(json.dumps({"jsonrpc": "2.0", "method": "read", "id": i,
                                  "params": {"offset": 0, "length": length}}) + "\n"
                      for i in range(n)).encode()
        s.setblocking(False)
        sent = 0
        # Send what the server takes; it stops reading once its replies wait.
        import select
        while sent < len(req):
            _, w, _ = select.select([], [s], [], 2)
            if not w:
                break
            try:
                sent += s.send(req[sent:])
            except BlockingIOError:
                pass
        print("sent %d of %d bytes" % (sent, len(req)), flush=True)
        wait_hangup(s)
    elif cmd == "batch":
        s, n = send_batch(sys.argv[2:5])
        s.shutdown(socket.SHUT_WR)
        data = read_all(s)
        replies = json.loads(data.decode("utf-8"))
        codes = {}
        for r in replies:
            if "error" in r:
                codes[str(r["error"]["code"])] = codes.get(str(r["error"]["code"]), 0) + 1
        print(json.dumps({"bytes": len(data), "replies": len(replies),
                          "results": sum(1 for r in replies if "result" in r),
                          "errors": codes,
                          "ids": sorted(r["id"] for r in replies) == list(range(n))}))
    elif cmd == "batch-start":
        s, n = send_batch(sys.argv[2:5])
        if s.recv(1) == b"[":
            print("first byte", flush=True)
        wait_hangup(s)
    elif cmd == "silent":
        s = connect(sys.argv[2])
        print("connected", flush=True)
        wait_hangup(s)
    elif cmd == "idle":
        import time
        s = connect(sys.argv[2])
        s.setblocking(False)
        print("connected", flush=True)
        for _ in range(600):
            try:
                b = s.recv(65536)
                if not b:
                    break
                sys.stdout.write(b.decode("utf-8", "replace"))
                sys.stdout.flush()
            except BlockingIOError:
                pass
            try:
                s.send(b" ")
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.2)
        print("closed", flush=True)
    else:
        sys.exit(__doc__)


main()
