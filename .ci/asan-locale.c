/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Preloaded after the ASan runtime into the uninstrumented nbdkit (.ci/run): ASan starts before any newlocale.
 *
 * Without it, libp11-kit's constructor (nbdkit links it through GnuTLS) calls
 * newlocale(LC_ALL_MASK, "POSIX") before ASan is initialised; newlocale takes
 * glibc's setlocale lock and mallocs, ASan initialises lazily inside that
 * malloc and its dlerror() -> dcgettext() takes and releases the same lock
 * (EDEADLK ignored); newlocale then releases it again and the lock stays
 * broken, so the next freelocale (p11-kit's destructor at exit) or newlocale
 * (json-c) waits forever.  Here a malloc before the real newlocale starts ASan
 * outside the lock.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <locale.h>
#include <stdlib.h>

/* The real newlocale, after one malloc (volatile: GCC drops a malloc/free
 * pair) that makes ASan initialise with no lock held.
 */
locale_t
newlocale (int category_mask, const char *locale, locale_t base)
{
  static locale_t (*real) (int, const char *, locale_t);
  void *volatile p = malloc (1);

  free (p);
  if (!real)
    real = (locale_t (*) (int, const char *, locale_t)) dlsym (RTLD_NEXT, "newlocale");
  return real (category_mask, locale, base);
}
