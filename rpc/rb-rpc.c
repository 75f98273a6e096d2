/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * rb-rpc: a JSON-RPC 2.0 server for one qcow2 image (read-only unless --writable).
 */
#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "rpc-internal.h"

static const char *progname = "rb-rpc";

static void __attribute__((noreturn))
usage (FILE *f, int status)
{
  const struct rpc_method *m;

  fprintf (f,
"usage: %s [OPTIONS] IMAGE\n"
"\n"
"Serve JSON-RPC 2.0 requests about a qcow2 image: a stream of JSON texts per connection,\n"
"one newline-terminated reply per request; batches and notifications as the spec says.\n"
"\n"
"  -l, --listen unix:PATH|tcp:HOST:PORT   where to listen (default unix:$XDG_RUNTIME_DIR/rb-rpc.sock,\n"
"                                         or unix:rb-rpc.sock here; Unix sockets are mode 0600)\n"
"      --listen-any                       allow TCP on an address that is not loopback\n"
"      --token-file PATH                  every request must carry this secret (\"token\" member,\n"
"                                         or an \"auth\" call first on the connection)\n"
"  -w, --writable                         allow write and flush (opens the image read-write)\n"
"      --max-connections N                default 64 (then the longest idle one gives way)\n"
"      --idle-timeout SECONDS             default 300\n"
"      --max-memory BYTES[K|M|G]          waiting replies and requests, all clients (default 64M)\n"
"  -h, --help / -V, --version\n"
"\n"
"methods:\n", progname);
  for (m = rpc_methods; m->name; m++)
    fprintf (f, "  %-20s %-38s %s\n", m->name, m->params, m->description);
  fprintf (f,
"\n"
"examples:\n"
"  %s -l tcp:127.0.0.1:1234 disk.qcow2 &\n"
"  echo '{\"jsonrpc\":\"2.0\",\"method\":\"read_guest_cluster\",\"params\":{\"cluster\":2},\"id\":1}' \\\n"
"    | nc -N localhost 1234 | jq\n"
"  echo '{\"method\":\"get_version\",\"id\":42}' | nc -N localhost 1234\n"
"  %s -l unix:/run/rb.sock --token-file secret disk.qcow2 &\n"
"  echo '{\"method\":\"info\",\"token\":\"'\"$(cat secret)\"'\",\"id\":1}' | nc -N -U /run/rb.sock\n",
           progname, progname);
  exit (status);
}

/* A number from 1 to max, with an optional K, M or G (binary) suffix. */
static unsigned long long
number (const char *opt, const char *arg, unsigned long long max, bool suffix)
{
  unsigned long long v, mult = 1;
  char *end;

  errno = 0;
  v = strtoull (arg, &end, 10);
  if (suffix && *end && !end[1]) {
    switch (*end) {
    case 'k': case 'K': mult = 1ULL << 10; end++; break;
    case 'm': case 'M': mult = 1ULL << 20; end++; break;
    case 'g': case 'G': mult = 1ULL << 30; end++; break;
    }
  }
  if (errno || end == arg || *end || arg[0] == '-' || v < 1 || v > max / mult) {
    fprintf (stderr, "%s: %s: '%s' is not a number from 1 to %llu%s\n", progname, opt, arg,
             max, suffix ? " (K, M, G allowed)" : "");
    exit (1);
  }
  return v * mult;
}

int
main (int argc, char **argv)
{
  enum { OPT_ANY = 256, OPT_TOKEN, OPT_MEM };
  static const struct option longopts[] = {
    { "listen", required_argument, NULL, 'l' },
    { "listen-any", no_argument, NULL, OPT_ANY },
    { "token-file", required_argument, NULL, OPT_TOKEN },
    { "writable", no_argument, NULL, 'w' },
    { "max-connections", required_argument, NULL, 'M' },
    { "idle-timeout", required_argument, NULL, 'T' },
    { "max-memory", required_argument, NULL, OPT_MEM },
    { "help", no_argument, NULL, 'h' },
    { "version", no_argument, NULL, 'V' },
    { NULL, 0, NULL, 0 },
  };
  struct rpc_config cfg = { .listen = NULL };
  struct rb_open_opts o = { .flags = RB_OPEN_RDONLY };
  struct rpc_server *srv;
  struct rb_image *img;
  char *dflt = NULL;
  int c;

  while ((c = getopt_long (argc, argv, "l:whV", longopts, NULL)) != -1) {
    switch (c) {
    case 'l': cfg.listen = optarg; break;
    case OPT_ANY: cfg.listen_any = true; break;
    case OPT_TOKEN: cfg.token_file = optarg; break;
    case 'w': cfg.writable = true; o.flags = 0; break;
    case 'M': cfg.max_connections = number ("--max-connections", optarg, 1000000, false); break;
    case 'T': cfg.idle_timeout = number ("--idle-timeout", optarg, 1000000, false); break;
    case OPT_MEM: cfg.max_memory = number ("--max-memory", optarg, 1ULL << 40, true); break;
    case 'h': usage (stdout, 0);
    case 'V': printf ("%s %s\n", progname, PACKAGE_VERSION); exit (0);
    default: usage (stderr, 1);
    }
  }
  if (argc - optind != 1)
    usage (stderr, 1);
  if (!cfg.listen) {
    /* A private socket by default: the user's runtime folder, else here. */
    const char *dir = getenv ("XDG_RUNTIME_DIR");
    struct stat sb;
    if (!dir || !*dir || stat (dir, &sb) == -1 || !S_ISDIR (sb.st_mode))
      dir = NULL;
    if (asprintf (&dflt, "unix:%s%s", dir ? dir : "", dir ? "/rb-rpc.sock" : "rb-rpc.sock") == -1) {
      fprintf (stderr, "%s: out of memory\n", progname);
      exit (2);
    }
    cfg.listen = dflt;
  }
  img = rb_open (argv[optind], &o);
  if (!img) {
    fprintf (stderr, "%s: %s\n", progname, rb_errmsg ());
    exit (2);
  }
  srv = rpc_server_new (img, &cfg);
  if (!srv) {
    fprintf (stderr, "%s: %s\n", progname, rb_errmsg ());
    rb_close (img);
    exit (2);
  }
  if (dflt)
    fprintf (stderr, "%s: listening on %s\n", progname, dflt);
  rpc_server_run (srv);
  rpc_server_free (srv);
  free (dflt);
  if (rb_close (img) == -1) {
    fprintf (stderr, "%s: %s\n", progname, rb_errmsg ());
    exit (2);
  }
  return 0;
}
