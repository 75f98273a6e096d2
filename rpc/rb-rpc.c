/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * rb-rpc: a JSON-RPC 2.0 server for one qcow2 image (read-only unless --writable).
 */
#include <config.h>

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
"  -l, --listen tcp:HOST:PORT|unix:PATH   where to listen (default tcp:127.0.0.1:1234;\n"
"                                         Unix sockets are made mode 0600)\n"
"  -w, --writable                         allow write and flush (opens the image read-write)\n"
"      --max-connections N                default 64\n"
"      --idle-timeout SECONDS             default 300\n"
"  -h, --help / -V, --version\n"
"\n"
"methods:\n", progname);
  for (m = rpc_methods; m->name; m++)
    fprintf (f, "  %-20s %-38s %s\n", m->name, m->params, m->description);
  fprintf (f,
"\n"
"examples:\n"
"  %s disk.qcow2 &\n"
"  echo '{\"jsonrpc\":\"2.0\",\"method\":\"read_guest_cluster\",\"params\":{\"cluster\":2},\"id\":1}' \\\n"
"    | nc -N localhost 1234 | jq\n"
"  echo '{\"method\":\"get_version\",\"id\":42}' | nc -N localhost 1234\n", progname);
  exit (status);
}

int
main (int argc, char **argv)
{
  static const struct option longopts[] = {
    { "listen", required_argument, NULL, 'l' },
    { "writable", no_argument, NULL, 'w' },
    { "max-connections", required_argument, NULL, 'M' },
    { "idle-timeout", required_argument, NULL, 'T' },
    { "help", no_argument, NULL, 'h' },
    { "version", no_argument, NULL, 'V' },
    { NULL, 0, NULL, 0 },
  };
  struct rpc_config cfg = { .listen = "tcp:127.0.0.1:1234" };
  struct rb_open_opts o = { .flags = RB_OPEN_RDONLY };
  struct rpc_server *srv;
  struct rb_image *img;
  char *end;
  long v;
  int c;

  while ((c = getopt_long (argc, argv, "l:whV", longopts, NULL)) != -1) {
    switch (c) {
    case 'l': cfg.listen = optarg; break;
    case 'w': cfg.writable = true; o.flags = 0; break;
    case 'M': case 'T':
      v = strtol (optarg, &end, 10);
      if (*end || v < 1 || v > 1000000) {
        fprintf (stderr, "%s: %s: '%s' is not a number from 1 to 1000000\n", progname,
                 c == 'M' ? "--max-connections" : "--idle-timeout", optarg);
        exit (1);
      }
      if (c == 'M') cfg.max_connections = v; else cfg.idle_timeout = v;
      break;
    case 'h': usage (stdout, 0);
    case 'V': printf ("%s %s\n", progname, PACKAGE_VERSION); exit (0);
    default: usage (stderr, 1);
    }
  }
  if (argc - optind != 1)
    usage (stderr, 1);
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
  rpc_server_run (srv);
  rpc_server_free (srv);
  if (rb_close (img) == -1) {
    fprintf (stderr, "%s: %s\n", progname, rb_errmsg ());
    exit (2);
  }
  return 0;
}
