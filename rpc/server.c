/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * JSON-RPC transport: TCP or Unix listener, one poll loop, a stream of JSON texts per connection.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
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

struct conn {
  int fd;
  json_tokener *tok;
  size_t pending;            /* bytes fed to the tokener for the current text */
  char *out;
  size_t out_len, out_off;
  time_t last;
  bool closing;              /* close once out is sent */
  bool discard;              /* drop all further input (after an oversized request) */
};

struct rpc_server {
  struct rpc_ctx ctx;
  int lfd;
  char *unix_path;
  int stop_pipe[2];
  pthread_t thread;
  bool started;
  unsigned max_conns, idle_timeout;
  struct conn *conns;
  size_t nconns;
};

static int stop_fd = -1;           /* for the signal handler of rpc_server_run */

static int
set_nonblock (int fd)
{
  int f = fcntl (fd, F_GETFL);
  return f == -1 ? -1 : fcntl (fd, F_SETFL, f | O_NONBLOCK);
}

/* Bind and listen on spec ("tcp:HOST:PORT" or "unix:PATH"). */
static int
listen_on (struct rpc_server *s, const char *spec)
{
  int fd;

  if (strncmp (spec, "unix:", 5) == 0) {
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    const char *path = spec + 5;
    if (!*path || strlen (path) >= sizeof sun.sun_path)
      return rb_error (EINVAL, "bad Unix socket path in \"%s\"", spec);
    strcpy (sun.sun_path, path);
    fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd == -1)
      return rb_error (errno, "socket: %s", strerrordesc_np (errno));
    unlink (path);
    if (bind (fd, (struct sockaddr *) &sun, sizeof sun) == -1 || chmod (path, 0600) == -1 ||
        listen (fd, 64) == -1) {
      int e = errno;
      close (fd);
      return rb_error (e, "%s: %s", spec, strerrordesc_np (e));
    }
    s->unix_path = strdup (path);
  }
  else if (strncmp (spec, "tcp:", 4) == 0) {
    char host[256];
    const char *colon = strrchr (spec + 4, ':');
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_NUMERICSERV }, *ai;
    int one = 1, r;
    if (!colon || colon == spec + 4 || (size_t) (colon - spec - 4) >= sizeof host || !colon[1])
      return rb_error (EINVAL, "bad listen address \"%s\" (want tcp:HOST:PORT or unix:PATH)", spec);
    memcpy (host, spec + 4, colon - spec - 4);
    host[colon - spec - 4] = '\0';
    r = getaddrinfo (host, colon + 1, &hints, &ai);
    if (r != 0)
      return rb_error (EINVAL, "%s: %s", spec, gai_strerror (r));
    fd = socket (ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd == -1) {
      freeaddrinfo (ai);
      return rb_error (errno, "socket: %s", strerrordesc_np (errno));
    }
    setsockopt (fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind (fd, ai->ai_addr, ai->ai_addrlen) == -1 || listen (fd, 64) == -1) {
      int e = errno;
      freeaddrinfo (ai);
      close (fd);
      return rb_error (e, "%s: %s", spec, strerrordesc_np (e));
    }
    freeaddrinfo (ai);
  }
  else
    return rb_error (EINVAL, "bad listen address \"%s\" (want tcp:HOST:PORT or unix:PATH)", spec);
  set_nonblock (fd);
  s->lfd = fd;
  return 0;
}

struct rpc_server *
rpc_server_new (struct rb_image *img, const struct rpc_config *cfg)
{
  struct rpc_server *s = calloc (1, sizeof *s);

  if (!s) {
    rb_error (ENOMEM, "out of memory");
    return NULL;
  }
  s->ctx.img = img;
  s->ctx.writable = cfg->writable;
  pthread_mutex_init (&s->ctx.lock, NULL);
  s->max_conns = cfg->max_connections ? cfg->max_connections : 64;
  s->idle_timeout = cfg->idle_timeout ? cfg->idle_timeout : 300;
  s->lfd = -1;
  s->stop_pipe[0] = s->stop_pipe[1] = -1;
  if (pipe2 (s->stop_pipe, O_CLOEXEC | O_NONBLOCK) == -1 ||
      listen_on (s, cfg->listen ? cfg->listen : "tcp:127.0.0.1:1234") == -1) {
    int e = errno;
    char msg[512];
    snprintf (msg, sizeof msg, "%s", rb_errmsg ());
    rpc_server_free (s);
    rb_error (e, "%s", msg);
    return NULL;
  }
  return s;
}

static void
conn_close (struct rpc_server *s, size_t i)
{
  close (s->conns[i].fd);
  json_tokener_free (s->conns[i].tok);
  free (s->conns[i].out);
  s->conns[i] = s->conns[--s->nconns];
}

/* Queue text (plus a newline) for the connection. */
static void
conn_send (struct conn *c, const char *text)
{
  size_t n = strlen (text);
  char *p = realloc (c->out, c->out_len + n + 1);

  if (!p) {
    c->closing = true;
    return;
  }
  c->out = p;
  memcpy (c->out + c->out_len, text, n);
  c->out[c->out_len + n] = '\n';
  c->out_len += n + 1;
}

static void
send_json (struct conn *c, json_object *o)
{
  conn_send (c, json_object_to_json_string_ext (o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
  json_object_put (o);
}

/* Feed received bytes to the tokener; answer every complete text. */
static void
conn_input (struct rpc_server *s, struct conn *c, const char *buf, size_t len)
{
  size_t off = 0;

  while (off < len && !c->closing && !c->discard) {
    json_object *text;
    enum json_tokener_error jerr;
    size_t used;

    /* Skip whitespace between texts. */
    if (c->pending == 0) {
      while (off < len && (buf[off] == ' ' || buf[off] == '\n' || buf[off] == '\r' || buf[off] == '\t'))
        off++;
      if (off == len)
        break;
    }
    text = json_tokener_parse_ex (c->tok, buf + off, len - off);
    jerr = json_tokener_get_error (c->tok);
    used = json_tokener_get_parse_end (c->tok);
    if (jerr == json_tokener_continue) {
      c->pending += len - off;
      if (c->pending > RPC_MAX_REQUEST) {
        send_json (c, rpc_error_response (NULL, RPC_INVALID_REQUEST,
                                          "Invalid Request: a request is larger than 1 MiB", NULL));
        /* The rest of the text cannot be skipped reliably: drop what follows
         * until the client closes (closing now could lose the reply).
         */
        c->discard = true;
      }
      return;
    }
    if (jerr != json_tokener_success) {
      char msg[200];
      snprintf (msg, sizeof msg, "Parse error: %s", jerr == json_tokener_error_depth
                ? "nesting deeper than 32 levels" : json_tokener_error_desc (jerr));
      send_json (c, rpc_error_response (NULL, RPC_PARSE_ERROR, msg, NULL));
      /* Resynchronise at the next line: drop the rest of this one. */
      json_tokener_reset (c->tok);
      c->pending = 0;
      while (off < len && buf[off] != '\n')
        off++;
      continue;
    }
    off += used;
    json_tokener_reset (c->tok);
    if (c->pending + used > RPC_MAX_REQUEST)   /* complete, but too large */
      send_json (c, rpc_error_response (NULL, RPC_INVALID_REQUEST,
                                        "Invalid Request: a request is larger than 1 MiB", NULL));
    else {
      json_object *reply = rpc_handle (&s->ctx, text);
      if (reply)
        send_json (c, reply);
    }
    c->pending = 0;
    json_object_put (text);
  }
}

static void
accept_conn (struct rpc_server *s)
{
  int fd = accept4 (s->lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
  struct conn *c;

  if (fd == -1)
    return;
  if (s->nconns >= s->max_conns) {
    const char *msg = "{\"jsonrpc\":\"2.0\",\"error\":{\"code\":-32000,\"message\":"
                      "\"too many connections\"},\"id\":null}\n";
    if (send (fd, msg, strlen (msg), MSG_NOSIGNAL) < 0) { /* nothing more to do */ }
    close (fd);
    return;
  }
  c = realloc (s->conns, (s->nconns + 1) * sizeof *c);
  if (!c) {
    close (fd);
    return;
  }
  s->conns = c;
  c = &s->conns[s->nconns++];
  memset (c, 0, sizeof *c);
  c->fd = fd;
  c->tok = json_tokener_new_ex (RPC_MAX_DEPTH);
  c->last = time (NULL);
}

/* The poll loop; returns when the stop pipe is written. */
static void
serve (struct rpc_server *s)
{
  for (;;) {
    struct pollfd *p = calloc (s->nconns + 2, sizeof *p);
    size_t i, n = s->nconns;
    time_t now;
    int r;

    if (!p)
      return;
    p[0].fd = s->stop_pipe[0];
    p[0].events = POLLIN;
    p[1].fd = s->lfd;
    p[1].events = POLLIN;
    for (i = 0; i < n; i++) {
      p[i + 2].fd = s->conns[i].fd;
      p[i + 2].events = (s->conns[i].closing ? 0 : POLLIN) |
        (s->conns[i].out_len > s->conns[i].out_off ? POLLOUT : 0);
    }
    r = poll (p, n + 2, 1000);
    if (r == -1 && errno != EINTR) {
      free (p);
      return;
    }
    if (p[0].revents) {
      free (p);
      return;
    }
    now = time (NULL);
    /* From the back, so closing (which moves the last one here) is safe. */
    for (i = n; i-- > 0; ) {
      struct conn *c = &s->conns[i];
      short ev = p[i + 2].revents;
      bool drop = false;

      if (ev & POLLIN) {
        char buf[65536];
        ssize_t k = read (c->fd, buf, sizeof buf);
        if (k > 0) {
          c->last = now;
          if (!c->discard)
            conn_input (s, c, buf, k);
        }
        else if (k == 0 || (errno != EAGAIN && errno != EINTR)) {
          /* End of input ends a pending text (a bare number needs a delimiter). */
          if (k == 0 && c->pending > 0)
            conn_input (s, c, "\n", 1);
          c->closing = true;
          drop = c->out_len == c->out_off;
        }
      }
      if (!drop && (ev & POLLOUT) && c->out_len > c->out_off) {
        ssize_t k = send (c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (k > 0) {
          c->out_off += k;
          c->last = now;
          if (c->out_off == c->out_len)
            c->out_off = c->out_len = 0;
        }
        else if (k == -1 && errno != EAGAIN && errno != EINTR)
          drop = true;
      }
      if (!drop && (ev & (POLLERR | POLLHUP)) && !(ev & POLLIN))
        drop = true;
      if (!drop && c->closing && c->out_len == c->out_off)
        drop = true;
      if (!drop && now - c->last > (time_t) s->idle_timeout)
        drop = true;
      if (drop)
        conn_close (s, i);
    }
    if (p[1].revents & POLLIN)
      accept_conn (s);
    free (p);
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
  if (!s)
    return;
  if (s->started) {
    if (write (s->stop_pipe[1], "x", 1) < 0) { /* the thread polls it */ }
    pthread_join (s->thread, NULL);
  }
  while (s->nconns)
    conn_close (s, s->nconns - 1);
  free (s->conns);
  if (s->lfd >= 0)
    close (s->lfd);
  if (s->unix_path) {
    unlink (s->unix_path);
    free (s->unix_path);
  }
  if (s->stop_pipe[0] >= 0)
    close (s->stop_pipe[0]);
  if (s->stop_pipe[1] >= 0)
    close (s->stop_pipe[1]);
  pthread_mutex_destroy (&s->ctx.lock);
  free (s);
}
