/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Shared pieces of the command-line utilities: sizes, progress, safe outputs, exit codes.
 */
#ifndef RBLOCK_COMMON_H
#define RBLOCK_COMMON_H

#include <stdbool.h>
#include <stdint.h>

#include "source.h"
#include "options.h"

#define EXIT_OK      0
#define EXIT_USAGE   1      /* bad arguments (rb-diff: inputs differ) */
#define EXIT_TROUBLE 2

extern const char *progname;

/* Print "progname: message" and exit with status. */
void die (int status, const char *fmt, ...) __attribute__((format (printf, 2, 3), noreturn));
/* die (EXIT_TROUBLE) with the engine's last message. */
void die_rb (void) __attribute__((noreturn));
/* The same after a writer failed: abort w first (unless NULL; the message is
 * kept), and put "prefix: " in front (unless NULL).
 */
void die_writer (struct rb_writer *w, const char *prefix) __attribute__((noreturn));

/* True if the n bytes at p are all zero. */
bool all_zero (const void *p, size_t n);

/* Progress (-p): a bar on stderr when it is a terminal (bytes, rate, ETA);
 * otherwise lines "done/total" (bytes; "0/total" first, "total/total" at
 * the end, at most one a second between) on --progress=fd:N, or on stderr.
 */
struct progress {
  bool on;                         /* the bar */
  int fd;                          /* the lines, -1 if none */
  uint64_t total, done;
  double start, last;
};
/* --progress=fd:N (set by the option parser), -1 if not given. */
extern int progress_fd;
/* Parse "fd:N" (N an open descriptor) into progress_fd.  0 / -1. */
int progress_set_fd (const char *arg);
void progress_init (struct progress *p, bool wanted, uint64_t total);
void progress_update (struct progress *p, uint64_t done);
void progress_end (struct progress *p);
/* An rb_progress_fn (rblock.h) updating the struct progress opaque points at. */
void progress_cb (void *opaque, uint64_t done, uint64_t total);

/* A new output file made safely: created under a temporary name in the
 * output's folder and renamed over OUTPUT only at the end; removed on
 * failure or SIGINT/SIGTERM.  Refuses an existing OUTPUT unless force, and
 * an OUTPUT that is the same file as any source.
 */
const char *output_prepare (const char *output, bool force, struct source **sources, int nr);
int output_commit (void);        /* rename the temporary over the output (0 / -1) */
void output_discard (void);      /* remove the temporary */

double now (void);

/* Threads to start, the utilities' one convention: given if > 0, else
 * RBLOCK_THREADS if set, else the online CPUs up to max_auto; 1 to max.
 */
unsigned threads_wanted (long given, unsigned max_auto, unsigned max);



#define MAX_U64(a, b) ((uint64_t) (a) > (uint64_t) (b) ? (uint64_t) (a) : (uint64_t) (b))
#define MIN_U64(a, b) ((uint64_t) (a) < (uint64_t) (b) ? (uint64_t) (a) : (uint64_t) (b))
#define ROUND_UP_U64(n, a) (((uint64_t) (n) + (a) - 1) / (a) * (a))
#define DIV_ROUND_UP_U64(n, d) (((uint64_t) (n) + (d) - 1) / (d))
#endif
