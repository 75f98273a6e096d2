#!/usr/bin/env python3
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# Power-fail replay: rebuilds crash states from an RBLOCK_IOLOG write log and judges each with qemu-img check.
"""
usage: replay.py BASE LOG WORKDIR STATES SEED [--ignore-barriers]

A crash state keeps every write before the last completed sync and a random
subset (in random order) of the writes after it.  --ignore-barriers draws the
subset from all writes instead: the negative control, which must find
corruption, proving the harness bites.  Prints "N states, C corrupt".
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
        else:
            sys.exit('replay.py: bad log record at byte %d' % i)
    epochs.append(cur)
    return epochs

def main():
    base, log, work, states, seed = sys.argv[1:6]
    ignore = '--ignore-barriers' in sys.argv
    rnd = random.Random(int(seed))
    epochs = parse(log)
    allw = [w for e in epochs for w in e]
    corrupt = 0
    img = os.path.join(work, 'state.qcow2')
    for s in range(int(states)):
        shutil.copyfile(base, img)
        if ignore:
            keep, pending = [], [w for w in allw if rnd.random() < 0.5]
        else:
            k = rnd.randrange(len(epochs))
            keep = [w for e in epochs[:k] for w in e]
            pending = [w for w in epochs[k] if rnd.random() < 0.5]
        rnd.shuffle(pending)
        with open(img, 'r+b') as f:
            for off, d in keep + pending:
                f.seek(off); f.write(d)
        r = subprocess.run(['qemu-img', 'check', img], capture_output=True, text=True)
        # 0 clean, 3 leaks only: fine after a crash.  2 (corruptions) or 1 (check failed): not.
        if r.returncode not in (0, 3) or 'ERROR' in r.stdout + r.stderr:
            corrupt += 1
            if not ignore and corrupt <= 3:
                sys.stderr.write('state %d:\n%s%s\n' % (s, r.stdout, r.stderr))
    print('%s states, %d corrupt' % (states, corrupt))

main()
