/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Thread-local last error: errno plus a one-line message, read with rb_errmsg.
 */
#include <config.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

static __thread char errmsg[512];
static __thread int errnum;

/* Record errno err and a formatted one-line message; sets errno; returns -1. */
int
rb_error (int err, const char *fmt, ...)
{
  va_list ap;

  va_start (ap, fmt);
  vsnprintf (errmsg, sizeof errmsg, fmt, ap);
  va_end (ap);
  errnum = err;
  errno = err;
  return -1;
}

/* Like rb_error, appending ": strerror(err)". */
int
rb_error_errno (int err, const char *fmt, ...)
{
  va_list ap;
  size_t len;

  va_start (ap, fmt);
  vsnprintf (errmsg, sizeof errmsg, fmt, ap);
  va_end (ap);
  len = strlen (errmsg);
  /* strerrordesc_np: no locale, so no locale lock (strerror's lock
   * deadlocked nbdkit's exit with the ASan runtime preloaded).
   */
  if (len < sizeof errmsg)
    snprintf (errmsg + len, sizeof errmsg - len, ": %s",
              strerrordesc_np (err) ? strerrordesc_np (err) : "unknown error");
  errnum = err;
  errno = err;
  return -1;
}

/* Returns the message of this thread's last error ("" if none). */
const char *
rb_errmsg (void)
{
  return errmsg;
}

int
rb_errno (void)
{
  return errnum;
}

/* Keep this thread's last error in s (see error_restore). */
void
error_save (struct saved_error *s)
{
  s->err = errnum;
  snprintf (s->msg, sizeof s->msg, "%s", errmsg);
}

/* Record the error kept in s as this thread's last error again.  Returns -1. */
int
error_restore (const struct saved_error *s)
{
  return rb_error (s->err, "%s", s->msg);
}

static rb_warning_fn warning_fn;
static void *warning_opaque;

void
rb_set_warning_fn (rb_warning_fn fn, void *opaque)
{
  __atomic_store_n (&warning_opaque, opaque, __ATOMIC_RELAXED);
  __atomic_store_n (&warning_fn, fn, __ATOMIC_RELEASE);
}

/* Format a one-line warning and pass it to the warning function, if any
 * (lib/ never prints).
 */
void
rb_warning (const char *fmt, ...)
{
  rb_warning_fn fn = __atomic_load_n (&warning_fn, __ATOMIC_ACQUIRE);
  char msg[512];
  va_list ap;

  if (!fn)
    return;
  va_start (ap, fmt);
  vsnprintf (msg, sizeof msg, fmt, ap);
  va_end (ap);
  fn (__atomic_load_n (&warning_opaque, __ATOMIC_RELAXED), msg);
}
