#!/usr/bin/env bats
# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# Fault injection at every kind of image I/O (RBLOCK_FAULT): the error is reported
# cleanly, and qemu-img check finds no corruption afterwards (leaks are allowed).

RB_TOOL="$top_builddir/tests/rb-tool"

# fault_case EVENT ERRNO MODE: a workload on a 512-byte-cluster image (so every
# metadata path, refcount table growth included, is exercised) hits the fault.
fault_case () {
  local T="$BATS_TEST_TMPDIR/$1-$2-$3"
  mkdir -p "$T/d"
  qemu-img create -q -f qcow2 -o cluster_size=512 "$T/img.qcow2" 6M
  qemu-io -c 'write -P 9 0 64k' "$T/img.qcow2" >/dev/null
  qemu-img snapshot -c s1 "$T/img.qcow2"
  qemu-img convert -O raw "$T/img.qcow2" "$T/d/mirror"
  RBLOCK_FAULT="$1:$2:$3" run "$RB_TOOL" random "$T/img.qcow2" "$T/d" 7 3000
  echo "$output"
  # The fault must have been hit and reported as the workload's error.
  [ "$status" -eq 2 ]
  [[ "$output" == *"injected fault at $1"* ]]
  run qemu-img check "$T/img.qcow2"
  echo "$output"
  [ "$status" -eq 0 ] || [ "$status" -eq 3 ]
  [[ "$output" != *ERROR* ]]
  # The snapshot taken before is intact.
  qemu-img snapshot -a s1 "$T/img.qcow2"
  run qemu-io -c 'read -P 9 0 64k' "$T/img.qcow2"
  [[ "$output" != *"Pattern verification failed"* ]]
}

@test "fault at data_write (EIO, once): clean error and no corruption" {
  fault_case data_write EIO once
}

@test "fault at data_write (EIO, always): clean error and no corruption" {
  fault_case data_write EIO always
}

@test "fault at data_write (ENOSPC, once): clean error and no corruption" {
  fault_case data_write ENOSPC once
}

@test "fault at data_write (ENOSPC, always): clean error and no corruption" {
  fault_case data_write ENOSPC always
}

@test "fault at cow_read (EIO, once): clean error and no corruption" {
  fault_case cow_read EIO once
}

@test "fault at cow_read (EIO, always): clean error and no corruption" {
  fault_case cow_read EIO always
}

@test "fault at cow_read (ENOSPC, once): clean error and no corruption" {
  fault_case cow_read ENOSPC once
}

@test "fault at cow_read (ENOSPC, always): clean error and no corruption" {
  fault_case cow_read ENOSPC always
}

@test "fault at l1_update (EIO, once): clean error and no corruption" {
  fault_case l1_update EIO once
}

@test "fault at l1_update (EIO, always): clean error and no corruption" {
  fault_case l1_update EIO always
}

@test "fault at l1_update (ENOSPC, once): clean error and no corruption" {
  fault_case l1_update ENOSPC once
}

@test "fault at l1_update (ENOSPC, always): clean error and no corruption" {
  fault_case l1_update ENOSPC always
}

@test "fault at l2_alloc (EIO, once): clean error and no corruption" {
  fault_case l2_alloc EIO once
}

@test "fault at l2_alloc (EIO, always): clean error and no corruption" {
  fault_case l2_alloc EIO always
}

@test "fault at l2_alloc (ENOSPC, once): clean error and no corruption" {
  fault_case l2_alloc ENOSPC once
}

@test "fault at l2_alloc (ENOSPC, always): clean error and no corruption" {
  fault_case l2_alloc ENOSPC always
}

@test "fault at l2_update (EIO, once): clean error and no corruption" {
  fault_case l2_update EIO once
}

@test "fault at l2_update (EIO, always): clean error and no corruption" {
  fault_case l2_update EIO always
}

@test "fault at l2_update (ENOSPC, once): clean error and no corruption" {
  fault_case l2_update ENOSPC once
}

@test "fault at l2_update (ENOSPC, always): clean error and no corruption" {
  fault_case l2_update ENOSPC always
}

@test "fault at refblock_alloc (EIO, once): clean error and no corruption" {
  fault_case refblock_alloc EIO once
}

@test "fault at refblock_alloc (EIO, always): clean error and no corruption" {
  fault_case refblock_alloc EIO always
}

@test "fault at refblock_alloc (ENOSPC, once): clean error and no corruption" {
  fault_case refblock_alloc ENOSPC once
}

@test "fault at refblock_alloc (ENOSPC, always): clean error and no corruption" {
  fault_case refblock_alloc ENOSPC always
}

@test "fault at refblock_update (EIO, once): clean error and no corruption" {
  fault_case refblock_update EIO once
}

@test "fault at refblock_update (EIO, always): clean error and no corruption" {
  fault_case refblock_update EIO always
}

@test "fault at refblock_update (ENOSPC, once): clean error and no corruption" {
  fault_case refblock_update ENOSPC once
}

@test "fault at refblock_update (ENOSPC, always): clean error and no corruption" {
  fault_case refblock_update ENOSPC always
}

@test "fault at reftable_grow (EIO, once): clean error and no corruption" {
  fault_case reftable_grow EIO once
}

@test "fault at reftable_grow (EIO, always): clean error and no corruption" {
  fault_case reftable_grow EIO always
}

@test "fault at reftable_grow (ENOSPC, once): clean error and no corruption" {
  fault_case reftable_grow ENOSPC once
}

@test "fault at reftable_grow (ENOSPC, always): clean error and no corruption" {
  fault_case reftable_grow ENOSPC always
}

@test "fault at flush (EIO, once): clean error and no corruption" {
  fault_case flush EIO once
}

@test "fault at flush (EIO, always): clean error and no corruption" {
  fault_case flush EIO always
}

@test "fault at flush (ENOSPC, once): clean error and no corruption" {
  fault_case flush ENOSPC once
}

@test "fault at flush (ENOSPC, always): clean error and no corruption" {
  fault_case flush ENOSPC always
}

@test "fault at data_zero (EIO, once): clean error and no corruption" {
  fault_case data_zero EIO once
}

@test "fault at data_zero (EIO, always): clean error and no corruption" {
  fault_case data_zero EIO always
}

@test "fault at data_zero (ENOSPC, once): clean error and no corruption" {
  fault_case data_zero ENOSPC once
}

@test "fault at data_zero (ENOSPC, always): clean error and no corruption" {
  fault_case data_zero ENOSPC always
}
