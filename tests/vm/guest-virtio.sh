#!/bin/sh
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# QEMU as the NBD client: the disk is /dev/vda.
set -e
sh /guest-fs.sh /dev/vda
