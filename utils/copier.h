/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * A small pool of threads doing rb-convert's kernel copies, fed in order through a bounded queue.
 */
#ifndef RBLOCK_COPIER_H
#define RBLOCK_COPIER_H

#include <stdint.h>

/* One copy: len bytes from offset in of the source to offset out of the output. */
struct copy_job { uint64_t in, out, len; };

/* Does one job in a pool thread: 0, or -1 with the message recorded (rb_error). */
typedef int (*copy_fn) (void *opaque, const struct copy_job *job);

struct copier;

/* Start nr threads calling fn.  NULL with the message recorded. */
struct copier *copier_start (unsigned nr, copy_fn fn, void *opaque);
/* Queue a job (waits while the queue is full).  0, or -1 with the first
 * failed job's message once one failed (nothing queued then).
 */
int copier_submit (struct copier *c, uint64_t in, uint64_t out, uint64_t len);
/* Wait until every queued job is done: 0, or -1 with the first failure's message. */
int copier_wait (struct copier *c);
/* Drop the queued jobs, wait for the running ones, join the threads, free c. */
void copier_stop (struct copier *c);

#endif
