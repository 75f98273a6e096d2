#!/usr/bin/env python3
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# Power-fail replay: rebuilds crash states from an RBLOCK_IOLOG write log and judges each with qemu-img check.
"""
usage: replay.py BASE LOG WORKDIR STATES SEED [--ignore-barriers | --ignore-durable]
       replay.py --count LOG        prints "W writes, D durable, S syncs"

A crash state keeps every write before the last completed sync and a random
subset (in random order) of the writes after it, up to a crash point.  A durable
write (a 'D' record after it: pwritev2 RWF_DSYNC syncs only its own range) before
the crash point is always kept, and the writes it supersedes are dropped.
--ignore-barriers draws the subset from all writes instead: the negative control,
which must find corruption, proving the harness bites; --ignore-durable treats
durable writes as plain ones (the control for them).  Prints "N states, C corrupt".
"""
import os, random, shutil, struct, subprocess, sys

def parse(log):
    epochs, cur = [], []
    with open(log, 'rb') as f:
        data = f.read()
    i = 0
    while i < len(data):
        kind = data[i:i+1]
        if kind == b'S':
            epochs.append(cur); cur = []; i += 1
        elif kind == b'W':
            off, n = struct.unpack('>QQ', data[i+1:i+17])
            cur.append((off, data[i+17:i+17+n])); i += 17 + n
        elif kind == b'Z':              # a range made to read as zeros (fallocate)
            off, n = struct.unpack('>QQ', data[i+1:i+17])
            cur.append((off, bytes(n))); i += 17
        elif kind == b'D':              # [off, off+n) made durable by itself
            off, n = struct.unpack('>QQ', data[i+1:i+17])
            cur.append((off, n)); i += 17
        else:
            sys.exit('replay.py: bad log record at byte %d' % i)
    epochs.append(cur)
    return epochs

def is_write(e):
    return isinstance(e[1], bytes)

def covers(a, b):       # range a = (off, len) holds all of range b
    return a[0] <= b[0] and b[0] + b[1] <= a[0] + a[1]

def crash_state(epoch, rnd, honour_durable):
    """The writes of the epoch a crash lands in: (durable, pending)."""
    p = len(epoch) if rnd.random() < 0.5 else rnd.randrange(len(epoch) + 1)
    ev = epoch[:p] if honour_durable else [e for e in epoch[:p] if is_write(e)]
    durable = set()
    for j, e in enumerate(ev):
        if not is_write(e):
            for i in range(j):
                if is_write(ev[i]) and covers(e, (ev[i][0], len(ev[i][1]))):
                    durable.add(i)
    keep, pending = [], []
    for i, e in enumerate(ev):
        if not is_write(e):
            continue
        r = (e[0], len(e[1]))
        if i in durable:
            keep.append(e)
        elif not any(covers((ev[d][0], len(ev[d][1])), r) for d in durable if d > i):
            if rnd.random() < 0.5:
                pending.append(e)
    return keep, pending

def main():
    if sys.argv[1] == '--count':
        epochs = parse(sys.argv[2])
        items = [e for ep in epochs for e in ep]
        w = sum(1 for e in items if is_write(e))
        print('%d writes, %d durable, %d syncs' % (w, len(items) - w, len(epochs) - 1))
        return
    base, log, work, states, seed = sys.argv[1:6]
    ignore = '--ignore-barriers' in sys.argv
    ignore_durable = '--ignore-durable' in sys.argv
    rnd = random.Random(int(seed))
    epochs = parse(log)
    allw = [w for e in epochs for w in e if is_write(w)]
    corrupt = 0
    img = os.path.join(work, 'state.qcow2')
    for s in range(int(states)):
        shutil.copyfile(base, img)
        if ignore:
            keep, pending = [], [w for w in allw if rnd.random() < 0.5]
        else:
            k = rnd.randrange(len(epochs))
            keep = [w for e in epochs[:k] for w in e if is_write(w)]
            durable, pending = crash_state(epochs[k], rnd, not ignore_durable)
            keep += durable
        rnd.shuffle(pending)
        with open(img, 'r+b') as f:
            for off, d in keep + pending:
                f.seek(off); f.write(d)
        r = subprocess.run(['qemu-img', 'check', img], capture_output=True, text=True)
        # 0 clean, 3 leaks only: fine after a crash.  2 (corruptions) or 1 (check failed): not.
        if r.returncode not in (0, 3) or 'ERROR' in r.stdout + r.stderr:
            corrupt += 1
            if not ignore and not ignore_durable and corrupt <= 3:
                sys.stderr.write('state %d:\n%s%s\n' % (s, r.stdout, r.stderr))
    print('%s states, %d corrupt' % (states, corrupt))

main()
