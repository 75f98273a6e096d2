/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Small helpers: rounding, overflow-checked arithmetic, big-endian access, cleanup attributes.
 */
#ifndef RBLOCK_UTIL_H
#define RBLOCK_UTIL_H

#include <stdbool.h>
#include <stdint.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <endian.h>

#define ROUND_UP(n, a)   (((n) + (a) - 1) / (a) * (a))
#define ROUND_DOWN(n, a) ((n) / (a) * (a))
#define DIV_ROUND_UP(n, d) (((n) + (d) - 1) / (d))
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))
#define IS_ALIGNED(n, a) (((n) & ((a) - 1)) == 0)

/* Overflow-checked arithmetic: return true on overflow. */
#define ADD_OVERFLOW(a, b, r) __builtin_add_overflow ((a), (b), (r))
#define MUL_OVERFLOW(a, b, r) __builtin_mul_overflow ((a), (b), (r))

static inline uint64_t get_be64 (const void *p) { uint64_t v; memcpy (&v, p, 8); return be64toh (v); }
static inline uint32_t get_be32 (const void *p) { uint32_t v; memcpy (&v, p, 4); return be32toh (v); }
static inline uint16_t get_be16 (const void *p) { uint16_t v; memcpy (&v, p, 2); return be16toh (v); }
static inline void put_be64 (void *p, uint64_t v) { v = htobe64 (v); memcpy (p, &v, 8); }
static inline void put_be32 (void *p, uint32_t v) { v = htobe32 (v); memcpy (p, &v, 4); }
static inline void put_be16 (void *p, uint16_t v) { v = htobe16 (v); memcpy (p, &v, 2); }

/* True if all `len` bytes at p are zero. */
static inline bool
is_zero (const void *p, size_t len)
{
  const unsigned char *c = p;
  size_t i;

  for (i = 0; i < len && i < 16; i++)
    if (c[i])
      return false;
  if (len <= 16)
    return true;
  return memcmp (c, c + 16, len - 16) == 0;
}

#define CLEANUP_FREE __attribute__((cleanup (cleanup_free)))
static inline void cleanup_free (void *ptr) { free (*(void **) ptr); }

#endif /* RBLOCK_UTIL_H */
