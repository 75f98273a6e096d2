#!/bin/sh
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# The kernel's NBD client: nbd-client to the host's server on port $1, the file-system steps, disconnect.
set -e
nbd-client 10.0.2.2 "$1" /dev/nbd0 ${RB_CONNECTIONS:+-C $RB_CONNECTIONS}
echo "rb: step: nbd-client connected to 10.0.2.2:$1"
sh /guest-fs.sh /dev/nbd0
nbd-client -d /dev/nbd0
