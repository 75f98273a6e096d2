#!/bin/sh
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# As guest-nbd.sh with four connections (multi-conn), once the kernel has the workers for them.
#
# Linux 6.1's nbd runs each connection's receive loop as a work item on the device's
# WQ_MEM_RECLAIM workqueue.  When the kernel is slow to create a kworker (over 8 ms: an
# emulated guest on a loaded host), that workqueue's rescuer takes the queued loops and runs
# them one after another, each until its connection closes: the other connections' replies go
# unread until the 30 s timeout declares them dead (seen on a loaded 2-core CI machine).  So
# first single-connection devices to a second server (rb.warm=PORT), connected one after
# another, make the kernel create the workers; they stay idle for minutes once disconnected.
warm=$(sed -n 's/.*rb\.warm=\([^ ]*\).*/\1/p' /proc/cmdline)
need=6                       # four loops, one spare for the last to start, one more
pool= k=1
# workers: the kworkers of the nbd receive loops' pool (kworker/uN:M).
workers () {
  [ -n "$pool" ] || { echo 0; return; }
  cat /proc/[0-9]*/comm 2>/dev/null | grep -c "^kworker/$pool:"
}
while [ "$k" -le 12 ] && [ "$(workers)" -lt "$need" ]; do
  nbd-client 10.0.2.2 "$warm" "/dev/nbd$k" >/dev/null || { echo "rb: warm-up device $k failed"; exit 1; }
  sleep 1
  [ -n "$pool" ] || pool=$(cat /proc/[0-9]*/comm 2>/dev/null |
                           sed -n "s|^kworker/\(u[0-9]*\):[0-9]*+nbd$k-recv\$|\1|p" | head -1)
  k=$((k + 1))
done
echo "rb: step: $(workers) receive workers (pool ${pool:-?}) after $((k - 1)) warm-up devices"
while [ "$k" -gt 1 ]; do k=$((k - 1)); nbd-client -d "/dev/nbd$k" >/dev/null 2>&1; done
RB_CONNECTIONS=4 sh /guest-nbd.sh "$1"
