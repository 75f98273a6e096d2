/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * JSON-RPC transport: the listener, one poll loop over the connections, memory and connection limits.
 */
#include <config.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "rpc-internal.h"

#define READ_CHUNK 65536
#define EVICT_GRACE 1.0          /* seconds: a connection younger than this is never evicted */

/* One client.  active: when it last did something useful (connected, sent a
 * complete request, took some of its replies); whitespace and partial
 * requests do not count, so they cannot keep a connection alive.
 */
struct conn {
  int fd;
  struct rpc_session s;
  double active;
  bool eof;                  /* the client sent everything it will */
  bool dead;                 /* closed at the end of this round */
};

struct rpc_server {
  struct rpc_state st;
  int lfd;
  char *unix_path;           /* to remove at the end, if still ours */
  dev_t unix_dev;
  ino_t unix_ino;
  int stop_pipe[2];
  pthread_t thread;
  bool started;
  unsigned max_conns, idle_timeout;
  size_t max_memory;
  struct conn *conns;
  size_t nconns;
  struct pollfd *pfds;
  char *buf;                 /* READ_CHUNK */
};

static int stop_fd = -1;           /* for the signal handler of rpc_server_run */

static double
now_seconds (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Make a Unix socket at path: a stale socket (nobody listens) is replaced,
 * anything else there is refused.  Returns the listening fd or -1.
 */
static int
listen_unix (struct rpc_server *s, const char *spec, const char *path)
{
  struct sockaddr_un sun = { .sun_family = AF_UNIX };
  struct stat sb;
  int fd, e;

  if (!*path || strlen (path) >= sizeof sun.sun_path)
    return rb_error (EINVAL, "bad Unix socket path in \"%s\"", spec);
  strcpy (sun.sun_path, path);
  if (lstat (path, &sb) == 0) {
    if (!S_ISSOCK (sb.st_mode))
      return rb_error (EEXIST, "%s: %s exists and is not a socket: not replacing it", spec, path);
    int tries;
    /* Refused three times 50 ms apart: not a server between bind and listen. */
    for (tries = 0; tries < 3; tries++) {
      const struct timespec pause = { 0, 50 * 1000 * 1000 };
      if (tries)
        nanosleep (&pause, NULL);
      fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
      if (fd == -1)
        return rb_error (errno, "socket: %s", strerrordesc_np (errno));
      e = connect (fd, (struct sockaddr *) &sun, sizeof sun) == 0 ? 0 : errno;
      close (fd);
      if (e != ECONNREFUSED)
        break;
    }
    if (e == 0 || e == EAGAIN)
      return rb_error (EADDRINUSE, "%s: a server is already listening on %s", spec, path);
    if (e != ECONNREFUSED)
      return rb_error (e, "%s: %s", spec, strerrordesc_np (e));
    if (unlink (path) == -1)      /* stale: its server is gone */
      return rb_error (errno, "%s: cannot remove the stale socket: %s", spec, strerrordesc_np (errno));
  }
  else if (errno != ENOENT)
    return rb_error (errno, "%s: %s", spec, strerrordesc_np (errno));
  fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd == -1)
    return rb_error (errno, "socket: %s", strerrordesc_np (errno));
  /* The mode of the socket's inode is the socket file's mode: 0600 from the
   * first moment (no window where others may connect), then exactly 0600.
   */
  if (fchmod (fd, 0600) == -1 || bind (fd, (struct sockaddr *) &sun, sizeof sun) == -1) {
    e = errno;
    close (fd);
    return rb_error (e, "%s: %s", spec, strerrordesc_np (e));
  }
  if (chmod (path, 0600) == -1 || listen (fd, 64) == -1 || stat (path, &sb) == -1) {
    e = errno;
    close (fd);
    unlink (path);
    return rb_error (e, "%s: %s", spec, strerrordesc_np (e));
  }
  s->unix_path = strdup (path);
  s->unix_dev = sb.st_dev;
  s->unix_ino = sb.st_ino;
  return fd;
}

/* Whether addr is a loopback address (127/8, ::1, ::ffff:127/104). */
static bool
is_loopback (const struct sockaddr *addr)
{
  if (addr->sa_family == AF_INET)
    return (ntohl (((const struct sockaddr_in *) addr)->sin_addr.s_addr) >> 24) == 127;
  if (addr->sa_family == AF_INET6) {
    const struct in6_addr *a = &((const struct sockaddr_in6 *) addr)->sin6_addr;
    return IN6_IS_ADDR_LOOPBACK (a) || (IN6_IS_ADDR_V4MAPPED (a) && a->s6_addr[12] == 127);
  }
  return false;
}

/* TCP on HOST:PORT; only loopback unless any.  Returns the listening fd or -1. */
static int
listen_tcp (const char *spec, bool any)
{
  char host[256];
  const char *colon = strrchr (spec + 4, ':');
  struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                            .ai_flags = AI_NUMERICSERV | AI_PASSIVE }, *ai;
  int one = 1, r, fd, e;
  size_t hl;

  if (!colon || colon == spec + 4 || !colon[1])
    return rb_error (EINVAL, "bad listen address \"%s\" (want tcp:HOST:PORT or unix:PATH)", spec);
  hl = colon - spec - 4;
  if (hl >= sizeof host)
    return rb_error (EINVAL, "bad listen address \"%s\" (host name too long)", spec);
  memcpy (host, spec + 4, hl);
  host[hl] = '\0';
  if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {      /* tcp:[::1]:PORT */
    memmove (host, host + 1, hl - 2);
    host[hl - 2] = '\0';
  }
  r = getaddrinfo (host, colon + 1, &hints, &ai);
  if (r != 0)
    return rb_error (EINVAL, "%s: %s", spec, gai_strerror (r));
  if (!any && !is_loopback (ai->ai_addr)) {
    freeaddrinfo (ai);
    return rb_error (EPERM, "%s: %s is not a loopback address, and JSON-RPC has no encryption: "
                     "listen there only when asked explicitly (rb-rpc --listen-any, "
                     "plugin rpc-listen-any=true)", spec, host);
  }
  fd = socket (ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd == -1) {
    e = errno;
    freeaddrinfo (ai);
    return rb_error (e, "socket: %s", strerrordesc_np (e));
  }
  setsockopt (fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind (fd, ai->ai_addr, ai->ai_addrlen) == -1 || listen (fd, 64) == -1) {
    e = errno;
    freeaddrinfo (ai);
    close (fd);
    return rb_error (e, "%s: %s", spec, strerrordesc_np (e));
  }
  freeaddrinfo (ai);
  return fd;
}

/* Read the shared secret: one line of UTF-8 text (a final newline is not
 * part of it).  Returns 0 / -1.
 */
static int
read_token (struct rpc_state *st, const char *path)
{
  char buf[RPC_MAX_TOKEN + 2];
  size_t n = 0, i;
  ssize_t k;
  struct stat sb;
  int fd = open (path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);

  if (fd == -1)
    return rb_error (errno, "token file %s: %s", path, strerrordesc_np (errno));
  if (fstat (fd, &sb) == -1 || !S_ISREG (sb.st_mode)) {
    close (fd);
    return rb_error (EINVAL, "token file %s: not a regular file", path);
  }
  while (n < sizeof buf && (k = read (fd, buf + n, sizeof buf - n)) > 0)
    n += k;
  close (fd);
  if (n > 0 && buf[n - 1] == '\n')
    n--;
  if (n > 0 && buf[n - 1] == '\r')
    n--;
  if (n == 0)
    return rb_error (EINVAL, "token file %s is empty", path);
  if (n > RPC_MAX_TOKEN)
    return rb_error (EINVAL, "token file %s: the token is longer than %u bytes", path, RPC_MAX_TOKEN);
  for (i = 0; i < n; i++)
    if ((unsigned char) buf[i] < 0x20 || buf[i] == 0x7f)
      return rb_error (EINVAL, "token file %s: the token holds a control character (one line of text wanted)", path);
  if (!rpc_utf8_valid (buf, n))
    return rb_error (EINVAL, "token file %s: the token is not UTF-8 text", path);
  st->token = malloc (n + 1);
  if (!st->token)
    return rb_error (ENOMEM, "out of memory");
  memcpy (st->token, buf, n);
  st->token[n] = '\0';
  st->token_len = n;
  memset (buf, 0, sizeof buf);
  return 0;
}

struct rpc_server *
rpc_server_new (struct rb_image *img, const struct rpc_config *cfg)
{
  struct rpc_server *s = calloc (1, sizeof *s);
  const char *spec = cfg->listen;
  int fd = -1;

  if (!s) {
    rb_error (ENOMEM, "out of memory");
    return NULL;
  }
  s->st.img = img;
  s->st.resolve_image = cfg->resolve_image;
  s->st.release_image = cfg->release_image;
  s->st.opaque = cfg->opaque;
  s->st.writable = cfg->writable;
  pthread_mutex_init (&s->st.lock, NULL);
  s->max_conns = cfg->max_connections ? cfg->max_connections : 64;
  s->idle_timeout = cfg->idle_timeout ? cfg->idle_timeout : 300;
  s->max_memory = cfg->max_memory ? cfg->max_memory : 64u << 20;
  s->lfd = -1;
  s->stop_pipe[0] = s->stop_pipe[1] = -1;
  s->buf = malloc (READ_CHUNK);
  if (!s->buf || pipe2 (s->stop_pipe, O_CLOEXEC | O_NONBLOCK) == -1)
    rb_error (ENOMEM, "out of memory");
  else if (cfg->token_file && read_token (&s->st, cfg->token_file) == -1)
    ;
  else if (!spec)
    rb_error (EINVAL, "no listen address (want unix:PATH or tcp:HOST:PORT)");
  else if (strncmp (spec, "unix:", 5) == 0)
    fd = listen_unix (s, spec, spec + 5);
  else if (strncmp (spec, "tcp:", 4) == 0)
    fd = listen_tcp (spec, cfg->listen_any);
  else
    rb_error (EINVAL, "bad listen address \"%s\" (want unix:PATH or tcp:HOST:PORT)", spec);
  if (fd == -1) {
    int e = errno;
    char msg[512];
    snprintf (msg, sizeof msg, "%s", rb_errmsg ());
    rpc_server_free (s);
    rb_error (e, "%s", msg);
    return NULL;
  }
  fcntl (fd, F_SETFL, fcntl (fd, F_GETFL) | O_NONBLOCK);
  s->lfd = fd;
  return s;
}

/* Tell a client why it is closed, if its replies are all sent (so the
 * notice does not land inside one); best effort, never blocks.
 */
static void
notify (struct conn *c, int code, const char *why)
{
  json_object *o;
  const char *text;
  size_t n;

  if (rpc_session_unsent (&c->s) > 0 || !(o = rpc_error_response (NULL, code, why, NULL)))
    return;
  text = json_object_to_json_string_length (o, JSON_C_TO_STRING_PLAIN, &n);
  if (text && send (c->fd, text, n, MSG_NOSIGNAL | MSG_DONTWAIT) == (ssize_t) n &&
      send (c->fd, "\n", 1, MSG_NOSIGNAL | MSG_DONTWAIT) == 1) {
    /* sent */
  }
  json_object_put (o);
}

static void
conn_close (struct rpc_server *s, size_t i)
{
  close (s->conns[i].fd);
  rpc_session_free (&s->conns[i].s);
  s->conns[i] = s->conns[--s->nconns];
}

/* The connection, other than except, that has been idle longest, if for at
 * least EVICT_GRACE; with holding, only one that holds memory.  -1 if none.
 */
static ssize_t
longest_idle (struct rpc_server *s, ssize_t except, double now, bool holding)
{
  ssize_t best = -1;
  size_t i;

  for (i = 0; i < s->nconns; i++) {
    struct conn *c = &s->conns[i];
    if ((ssize_t) i == except || c->dead || now - c->active < EVICT_GRACE ||
        (holding && rpc_session_memory (&c->s) == 0))
      continue;
    if (best == -1 || c->active < s->conns[best].active)
      best = i;
  }
  return best;
}

static size_t
memory_used (struct rpc_server *s)
{
  size_t i, total = 0;

  for (i = 0; i < s->nconns; i++)
    if (!s->conns[i].dead)
      total += rpc_session_memory (&s->conns[i].s);
  return total;
}

/* Over the memory bound, the longest idle connections holding memory give
 * way to connection i, about to work (they are marked dead).  Returns
 * whether the memory used is within the bound now.
 */
static bool
make_room (struct rpc_server *s, size_t i, double now)
{
  size_t used = memory_used (s);

  while (used > s->max_memory) {
    ssize_t v = longest_idle (s, i, now, true);
    if (v == -1)
      return false;
    notify (&s->conns[v], RPC_LIMIT_ERROR, "connection closed: the server's memory for "
            "waiting replies and requests is used up, and this connection was the longest idle");
    s->conns[v].dead = true;
    used -= rpc_session_memory (&s->conns[v].s);
  }
  return true;
}

static void
accept_conn (struct rpc_server *s, double now)
{
  int fd = accept4 (s->lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
  struct conn *c;

  if (fd == -1)
    return;
  if (s->nconns >= s->max_conns) {
    ssize_t v = longest_idle (s, -1, now, false);
    if (v == -1) {
      struct conn refused = { .fd = fd };
      notify (&refused, RPC_LIMIT_ERROR, "too many connections, none of them idle: try again later");
      close (fd);
      return;
    }
    notify (&s->conns[v], RPC_LIMIT_ERROR, "connection closed: the server is at its connection "
            "limit, and this connection was the longest idle");
    conn_close (s, v);
  }
  c = realloc (s->conns, (s->nconns + 1) * sizeof *c);
  if (!c) {
    close (fd);
    return;
  }
  s->conns = c;
  c = &s->conns[s->nconns];
  memset (c, 0, sizeof *c);
  c->fd = fd;
  c->active = now;
  if (rpc_session_init (&c->s, &s->st) == -1) {
    rpc_session_free (&c->s);
    close (fd);
    return;
  }
  s->nconns++;
}

/* Send what the socket takes of the connection's replies, without waiting. */
static void
conn_send (struct conn *c, double now)
{
  ssize_t k;

  if (rpc_session_unsent (&c->s) == 0)
    return;
  k = send (c->fd, c->s.out + c->s.out_off, rpc_session_unsent (&c->s), MSG_NOSIGNAL | MSG_DONTWAIT);
  if (k > 0) {
    rpc_session_sent (&c->s, k);
    c->active = now;
  }
  else if (k == -1 && errno != EAGAIN && errno != EINTR)
    c->dead = true;
}

/* One connection's turn in a round: read, send, answer one request. */
static void
serve_conn (struct rpc_server *s, size_t i, short ev, double now)
{
  struct conn *c = &s->conns[i];
  bool request;

  if (c->dead)
    return;
  if (ev & POLLERR) {
    c->dead = true;
    return;
  }
  if ((ev & POLLIN) && rpc_session_wants_input (&c->s)) {
    ssize_t k = read (c->fd, s->buf, READ_CHUNK);
    if (k > 0) {
      if (rpc_session_feed (&c->s, s->buf, k) == -1)
        c->dead = true;
    }
    else if (k == 0) {
      c->eof = true;
      rpc_session_eof (&c->s);
    }
    else if (errno != EAGAIN && errno != EINTR)
      c->dead = true;
  }
  else if ((ev & POLLHUP) && !(ev & POLLIN))
    c->dead = true;                   /* gone: nobody reads the replies */
  if (!c->dead && (ev & POLLOUT))
    conn_send (c, now);
  /* Over the memory bound, a connection with replies waiting waits too
   * (after the longest idle ones gave way).  A new reply goes out at once
   * if the socket takes it (no poll round in between).
   */
  if (!c->dead && rpc_session_has_work (&c->s) &&
      (make_room (s, i, now) || rpc_session_unsent (&c->s) == 0)) {
    rpc_session_step (&c->s, &request);
    if (request)
      c->active = now;
    conn_send (c, now);
  }
  if (!c->dead && rpc_session_unsent (&c->s) == 0 &&
      (c->s.broken || (c->eof && !c->s.batch && c->s.in_off == c->s.in_len)))
    c->dead = true;                   /* all answered */
  if (!c->dead && now - c->active > (double) s->idle_timeout)
    c->dead = true;
}

/* The poll loop; returns when the stop pipe is written.  A round gives each
 * connection at most one request (or batch member), so one client cannot
 * hold the others (or a stop) for longer than one request takes.
 */
static void
serve (struct rpc_server *s)
{
  size_t alloc = 0;

  for (;;) {
    size_t i, n = s->nconns;
    bool busy = false;
    double now;
    int r;

    if (n + 2 > alloc) {
      struct pollfd *p = realloc (s->pfds, (n + 2) * sizeof *p);
      if (!p)
        return;
      s->pfds = p;
      alloc = n + 2;
    }
    s->pfds[0] = (struct pollfd) { .fd = s->stop_pipe[0], .events = POLLIN };
    s->pfds[1] = (struct pollfd) { .fd = s->lfd, .events = POLLIN };
    for (i = 0; i < n; i++) {
      struct conn *c = &s->conns[i];
      short ev = 0;
      if (!c->eof && rpc_session_wants_input (&c->s))
        ev |= POLLIN;
      if (rpc_session_unsent (&c->s) > 0)
        ev |= POLLOUT;
      if (rpc_session_has_work (&c->s))
        busy = true;
      s->pfds[i + 2] = (struct pollfd) { .fd = c->fd, .events = ev };
    }
    r = poll (s->pfds, n + 2, busy ? 0 : 1000);
    if (r == -1 && errno != EINTR)
      return;
    if (r > 0 && s->pfds[0].revents)
      return;
    now = now_seconds ();
    for (i = 0; i < n; i++)
      serve_conn (s, i, r > 0 ? s->pfds[i + 2].revents : 0, now);
    for (i = s->nconns; i-- > 0; )
      if (s->conns[i].dead)
        conn_close (s, i);
    if (r > 0 && (s->pfds[1].revents & POLLIN))
      accept_conn (s, now);
  }
}

static void *
thread_main (void *arg)
{
  sigset_t all;

  sigfillset (&all);
  pthread_sigmask (SIG_BLOCK, &all, NULL);
  serve (arg);
  return NULL;
}

int
rpc_server_start (struct rpc_server *s)
{
  int e = pthread_create (&s->thread, NULL, thread_main, s);

  if (e)
    return rb_error (e, "cannot start the JSON-RPC thread: %s", strerrordesc_np (e));
  s->started = true;
  return 0;
}

static void
on_signal (int sig)
{
  if (stop_fd >= 0 && write (stop_fd, "x", 1) < 0) { /* best effort */ }
}

int
rpc_server_run (struct rpc_server *s)
{
  struct sigaction sa;

  memset (&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  stop_fd = s->stop_pipe[1];
  sigaction (SIGINT, &sa, NULL);
  sigaction (SIGTERM, &sa, NULL);
  signal (SIGPIPE, SIG_IGN);
  serve (s);
  stop_fd = -1;
  return 0;
}

void
rpc_server_free (struct rpc_server *s)
{
  struct stat sb;

  if (!s)
    return;
  if (s->started) {
    if (write (s->stop_pipe[1], "x", 1) < 0) { /* the thread polls it */ }
    pthread_join (s->thread, NULL);
  }
  while (s->nconns)
    conn_close (s, s->nconns - 1);
  free (s->conns);
  free (s->pfds);
  free (s->buf);
  if (s->lfd >= 0)
    close (s->lfd);
  /* Remove the socket only if it is still the one we made. */
  if (s->unix_path && lstat (s->unix_path, &sb) == 0 && sb.st_dev == s->unix_dev &&
      sb.st_ino == s->unix_ino)
    unlink (s->unix_path);
  free (s->unix_path);
  if (s->stop_pipe[0] >= 0)
    close (s->stop_pipe[0]);
  if (s->stop_pipe[1] >= 0)
    close (s->stop_pipe[1]);
  if (s->st.token) {
    memset (s->st.token, 0, s->st.token_len);
    free (s->st.token);
  }
  pthread_mutex_destroy (&s->st.lock);
  free (s);
}
