/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Shared pieces of the command-line utilities: sizes, progress, safe outputs, exit codes.
 */
#include <config.h>

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

#define MAX(a, b) ((a) > (b) ? (a) : (b))

static char tmp_path[4096];
static char final_path[4096];

void
die (int status, const char *fmt, ...)
{
  va_list ap;

  output_discard ();
  fprintf (stderr, "%s: ", progname);
  va_start (ap, fmt);
  vfprintf (stderr, fmt, ap);
  va_end (ap);
  fputc ('\n', stderr);
  exit (status);
}

void
die_rb (void)
{
  die (EXIT_TROUBLE, "%s", rb_errmsg ());
}

void
die_writer (struct rb_writer *w, const char *prefix)
{
  char msg[1024];

  snprintf (msg, sizeof msg, "%s", rb_errmsg ());
  if (w)
    rb_writer_abort (w);
  if (prefix)
    die (EXIT_TROUBLE, "%s: %s", prefix, msg);
  die (EXIT_TROUBLE, "%s", msg);
}

bool
all_zero (const void *p, size_t n)
{
  const uint8_t *c = p;
  size_t i;

  for (i = 0; i < n && i < 16; i++)
    if (c[i])
      return false;
  return n <= 16 || memcmp (c, c + 16, n - 16) == 0;
}

double
now (void)
{
  struct timespec ts;
  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* --progress=fd:N: the descriptor for "done/total" lines, -1 if not given. */
int progress_fd = -1;

int
progress_set_fd (const char *arg)
{
  char *end;
  long n;

  if (strncmp (arg, "fd:", 3) != 0 || !isdigit ((unsigned char) arg[3]))
    return -1;
  errno = 0;
  n = strtol (arg + 3, &end, 10);
  if (errno || *end || n > INT_MAX || fcntl ((int) n, F_GETFD) == -1)
    return -1;
  progress_fd = n;
  return 0;
}

/* Write the line "done/total" to p->fd.  A reader that went away (EPIPE) or
 * any other error ends the lines, never the program: SIGPIPE is blocked
 * around the write and a pending one is taken back.
 */
static void
progress_line (struct progress *p)
{
  char line[48];
  sigset_t pipe_set, old;
  const struct timespec zero = { 0, 0 };
  size_t n, off = 0;
  ssize_t r = 0;

  n = snprintf (line, sizeof line, "%" PRIu64 "/%" PRIu64 "\n", p->done, p->total);
  sigemptyset (&pipe_set);
  sigaddset (&pipe_set, SIGPIPE);
  pthread_sigmask (SIG_BLOCK, &pipe_set, &old);
  while (off < n) {
    r = write (p->fd, line + off, n - off);
    if (r == -1 && errno == EINTR)
      continue;
    if (r <= 0)
      break;
    off += r;
  }
  if (off < n) {
    if (errno == EPIPE)
      sigtimedwait (&pipe_set, NULL, &zero);
    p->fd = -1;
  }
  pthread_sigmask (SIG_SETMASK, &old, NULL);
}

void
progress_init (struct progress *p, bool wanted, uint64_t total)
{
  p->total = total;
  p->done = 0;
  p->start = p->last = now ();
  /* The bar on a terminal; lines on --progress=fd:N, or on stderr when it
   * is not a terminal.
   */
  p->on = wanted && progress_fd < 0 && isatty (2);
  p->fd = !wanted || p->on ? -1 : progress_fd >= 0 ? progress_fd : 2;
  if (p->fd >= 0)
    progress_line (p);
}

static void
human (char *buf, size_t n, double v)
{
  const char *u = "B";
  if (v >= 1 << 30) { v /= 1 << 30; u = "GiB"; }
  else if (v >= 1 << 20) { v /= 1 << 20; u = "MiB"; }
  else if (v >= 1 << 10) { v /= 1 << 10; u = "KiB"; }
  snprintf (buf, n, "%.1f %s", v, u);
}

void
progress_update (struct progress *p, uint64_t done)
{
  double t = now (), rate, pct;
  char a[32], b[32], r[32];

  p->done = done;
  if (p->fd >= 0) {
    /* A line a second at most: a wrapper reads them, nobody watches them. */
    if (t - p->last >= 1.0) {
      p->last = t;
      progress_line (p);
    }
    return;
  }
  if (!p->on || t - p->last < 0.2)
    return;
  p->last = t;
  rate = done / MAX (t - p->start, 1e-6);
  pct = p->total ? 100.0 * done / p->total : 100;
  human (a, sizeof a, done);
  human (b, sizeof b, p->total);
  human (r, sizeof r, rate);
  fprintf (stderr, "\r%5.1f%%  %s / %s  %s/s  ETA %.0fs   ", pct, a, b, r,
           rate > 0 ? (p->total - done) / rate : 0);
}

void
progress_cb (void *opaque, uint64_t done, uint64_t total)
{
  (void) total;
  progress_update (opaque, done);
}

void
progress_end (struct progress *p)
{
  if (p->fd >= 0) {
    p->done = p->total;
    progress_line (p);
  }
  if (p->on) {
    p->last = 0;
    progress_update (p, p->total);
    fputc ('\n', stderr);
  }
}

static void
on_signal (int sig)
{
  if (tmp_path[0])
    unlink (tmp_path);
  signal (sig, SIG_DFL);
  raise (sig);
}

const char *
output_prepare (const char *output, bool force, struct source **sources, int nr)
{
  struct stat st;
  char *copy, *dir;
  int i;

  if (stat (output, &st) == 0) {
    for (i = 0; i < nr; i++)
      if (sources[i] && sources[i]->dev == st.st_dev && sources[i]->ino == st.st_ino)
        die (EXIT_TROUBLE, "%s: refusing to overwrite an input", output);
    if (!force)
      die (EXIT_TROUBLE, "%s: already exists (use --force to overwrite it)", output);
    if (!S_ISREG (st.st_mode))
      die (EXIT_TROUBLE, "%s: not a regular file", output);
  }
  copy = strdup (output);
  if (!copy)
    die (EXIT_TROUBLE, "out of memory");
  dir = dirname (copy);
  if (snprintf (tmp_path, sizeof tmp_path, "%s/.%s.tmp.%d", dir,
                strrchr (output, '/') ? strrchr (output, '/') + 1 : output,
                (int) getpid ()) >= (int) sizeof tmp_path ||
      snprintf (final_path, sizeof final_path, "%s", output) >= (int) sizeof final_path)
    die (EXIT_TROUBLE, "%s: name too long", output);
  free (copy);
  signal (SIGINT, on_signal);
  signal (SIGTERM, on_signal);
  signal (SIGHUP, on_signal);
  return tmp_path;
}

int
output_commit (void)
{
  char dir[4096];
  int fd;

  if (rename (tmp_path, final_path) == -1)
    return rb_error (errno, "%s: %s", final_path, strerror (errno));
  tmp_path[0] = '\0';
  /* The rename is durable once the folder is (the file was synced). */
  snprintf (dir, sizeof dir, "%s", final_path);
  fd = open (dirname (dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd == -1 || fsync (fd) == -1) {
    int e = errno;
    if (fd >= 0)
      close (fd);
    return rb_error (e, "%s: cannot sync its folder: %s", final_path, strerror (e));
  }
  close (fd);
  return 0;
}

void
output_discard (void)
{
  if (tmp_path[0]) {
    unlink (tmp_path);
    tmp_path[0] = '\0';
  }
}

unsigned
threads_wanted (long given, unsigned max_auto, unsigned max)
{
  const char *env = getenv ("RBLOCK_THREADS");
  long n = given;

  if (n == 0 && env && *env)
    n = atol (env);
  if (n <= 0) {
    n = sysconf (_SC_NPROCESSORS_ONLN);
    if (n > (long) max_auto)
      n = max_auto;
  }
  return n < 1 ? 1 : n > (long) max ? max : n;
}
