/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * On-disk constants of the qcow2 format (QEMU docs/interop/qcow2.txt section names in comments).
 */
#ifndef RBLOCK_FORMAT_H
#define RBLOCK_FORMAT_H

#include <stdint.h>

/* "Header" */
#define QCOW_MAGIC               0x514649fbU   /* 'Q' 'F' 'I' 0xfb */
#define QCOW_V2_HEADER_LENGTH    72
#define QCOW_V3_HEADER_LENGTH    104           /* minimum for version 3 */
#define QCOW_MIN_CLUSTER_BITS    9
#define QCOW_MAX_CLUSTER_BITS    21
#define QCOW_MAX_BACKING_NAME    1023
#define QCOW_MAX_L1_BYTES        (32ULL << 20) /* QEMU's QCOW_MAX_L1_SIZE */
#define QCOW_MAX_REFTABLE_BYTES  (8ULL << 20)  /* QEMU's QCOW_MAX_REFTABLE_SIZE */
#define QCOW_MAX_SNAPSHOTS       65536
#define QCOW_MAX_SNAPSHOT_EXTRA  1024

/* Header field offsets (all big-endian). */
#define HDR_MAGIC                 0
#define HDR_VERSION               4
#define HDR_BACKING_FILE_OFFSET   8
#define HDR_BACKING_FILE_SIZE     16
#define HDR_CLUSTER_BITS          20
#define HDR_SIZE                  24
#define HDR_CRYPT_METHOD          32
#define HDR_L1_SIZE               36
#define HDR_L1_TABLE_OFFSET       40
#define HDR_REFCOUNT_TABLE_OFFSET 48
#define HDR_REFCOUNT_TABLE_CLUSTERS 56
#define HDR_NB_SNAPSHOTS          60
#define HDR_SNAPSHOTS_OFFSET      64
#define HDR_INCOMPATIBLE_FEATURES 72
#define HDR_COMPATIBLE_FEATURES   80
#define HDR_AUTOCLEAR_FEATURES    88
#define HDR_REFCOUNT_ORDER        96
#define HDR_HEADER_LENGTH         100
#define HDR_COMPRESSION_TYPE      104

/* Incompatible feature bits. */
#define QCOW_INCOMPAT_DIRTY        (1ULL << 0)
#define QCOW_INCOMPAT_CORRUPT      (1ULL << 1)
#define QCOW_INCOMPAT_DATA_FILE    (1ULL << 2)
#define QCOW_INCOMPAT_COMPRESSION  (1ULL << 3)
#define QCOW_INCOMPAT_EXTL2        (1ULL << 4)
#define QCOW_INCOMPAT_KNOWN        0x1fULL
/* Compatible feature bits. */
#define QCOW_COMPAT_LAZY_REFCOUNTS (1ULL << 0)
/* Autoclear feature bits. */
#define QCOW_AUTOCLEAR_BITMAPS     (1ULL << 0)
#define QCOW_AUTOCLEAR_DATA_FILE_RAW (1ULL << 1)

#define QCOW_COMPRESSION_ZLIB      0
#define QCOW_COMPRESSION_ZSTD      1

/* "Header extensions" */
#define QCOW_EXT_END               0x00000000U
#define QCOW_EXT_BACKING_FORMAT    0xe2792acaU
#define QCOW_EXT_FEATURE_TABLE     0x6803f857U
#define QCOW_EXT_BITMAPS           0x23852875U
#define QCOW_EXT_CRYPTO            0x0537be77U
#define QCOW_EXT_DATA_FILE         0x44415441U

/* "Cluster mapping": L1 and L2 entries. */
#define L1E_OFFSET_MASK            0x00fffffffffffe00ULL
#define L1E_RESERVED_MASK          0x7f000000000001ffULL
#define L2E_OFFSET_MASK            0x00fffffffffffe00ULL
#define L2E_STD_RESERVED_MASK      0x3f000000000001feULL
#define QCOW_OFLAG_COPIED          (1ULL << 63)
#define QCOW_OFLAG_COMPRESSED      (1ULL << 62)
#define QCOW_OFLAG_ZERO            (1ULL << 0)

/* "Extended L2 Entries" */
#define QCOW_SUBCLUSTERS           32
#define QCOW_EXTL2_MIN_CLUSTER_BITS 14

/* "Refcount table" */
#define REFT_OFFSET_MASK           0xfffffffffffffe00ULL
#define REFT_RESERVED_MASK         0x1ffULL

/* "Bitmaps extension", "Bitmap directory", "Bitmap table"; the limits are QEMU's. */
#define BITMAPS_EXT_SIZE           24
#define BME_ENTRY_FIXED            24          /* directory entry bytes before extra data and name */
#define BME_FLAG_IN_USE            (1u << 0)
#define BME_FLAG_AUTO              (1u << 1)
#define BME_FLAG_EXTRA_COMPAT      (1u << 2)
#define BME_KNOWN_FLAGS            0x7u
#define BME_TYPE_DIRTY             1
#define BME_MIN_GRANULARITY_BITS   9
#define BME_MAX_GRANULARITY_BITS   31
#define BME_MAX_NAME_SIZE          1023
#define BME_MAX_TABLE_SIZE         0x8000000u  /* entries of one bitmap table */
#define BME_MAX_PHYS_SIZE          0x20000000u /* bytes of one bitmap's data */
#define BME_MAX_BITMAPS            65535
#define BME_MAX_DIR_SIZE           (1024u * BME_MAX_BITMAPS)
#define BME_TABLE_OFFSET_MASK      0x00fffffffffffe00ULL   /* table entry: data cluster */
#define BME_TABLE_RESERVED_MASK    0xff000000000001feULL
#define BME_TABLE_ALL_ONES         1ULL

/* "Snapshots": fixed part of a table entry. */
#define SNAP_HDR_SIZE              40

#endif /* RBLOCK_FORMAT_H */
