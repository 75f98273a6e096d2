#!/bin/sh
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# As guest-nbd.sh with four connections (multi-conn).
RB_CONNECTIONS=4 sh /guest-nbd.sh "$1"
