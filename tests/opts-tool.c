/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * Test driver of the utilities' option parser: prints what utils/options.c makes of its arguments.
 *
 *   opts-tool size STRING...      one line each: the value, EINVAL or ERANGE
 *   opts-tool parse [ARGS...]     every shared option enabled, plus its own -c N and
 *                                 --count N; prints one JSON object of the results
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "common.h"

const char *progname = "opts-tool";

static void __attribute__((noreturn))
usage (FILE *f, int status)
{
  fprintf (f, "usage: %s size STRING... | parse [ARGS...]\n", progname);
  exit (status);
}

int
main (int argc, char **argv)
{
  static const struct option longopts[] = {
    { "count", required_argument, NULL, 'c' },
    { NULL, 0, NULL, 0 },
  };
  struct cmdline cl = {
    .shortopts = "c:", .longopts = longopts, .usage = usage,
    .shared = OPT_FORMAT | OPT_SHARE | OPT_OUTPUT | OPT_CREATE | OPT_PROGRESS | OPT_QUIET,
  };
  const struct rb_create_opts *o = &cl.create.o;
  json_object *j, *ops;
  const char *count = NULL;
  int c, i;

  if (argc >= 2 && strcmp (argv[1], "size") == 0) {
    for (i = 2; i < argc; i++) {
      uint64_t v;
      int r = parse_size_full (argv[i], &v);
      if (r == 0)
        printf ("%" PRIu64 "\n", v);
      else
        printf ("%s\n", r == -ERANGE ? "ERANGE" : "EINVAL");
    }
    return 0;
  }
  if (argc < 2 || strcmp (argv[1], "parse") != 0)
    usage (stderr, 1);
  argv[1] = argv[0];
  argc--;
  argv++;
  while ((c = cmdline_next (&cl, argc, argv)) != -1) {
    switch (c) {
    case 'c': count = optarg; break;
    default: usage (stderr, 1);
    }
  }
  j = json_object_new_object ();
  json_object_object_add (j, "format", cl.format ? json_object_new_string (cl.format) : NULL);
  json_object_object_add (j, "force-share", json_object_new_boolean (cl.force_share));
  json_object_object_add (j, "json", json_object_new_boolean (cl.json));
  json_object_object_add (j, "progress", json_object_new_boolean (cl.progress));
  json_object_object_add (j, "quiet", json_object_new_boolean (cl.quiet));
  json_object_object_add (j, "count", count ? json_object_new_string (count) : NULL);
  json_object_object_add (j, "given", json_object_new_int (cl.create.given));
  json_object_object_add (j, "size", json_object_new_uint64 (o->size));
  json_object_object_add (j, "cluster_size", json_object_new_int64 (o->cluster_size));
  json_object_object_add (j, "version", json_object_new_int64 (o->version));
  json_object_object_add (j, "refcount_bits", json_object_new_int64 (o->refcount_bits));
  json_object_object_add (j, "compression_type", json_object_new_int64 (o->compression_type));
  json_object_object_add (j, "extended_l2", json_object_new_boolean (o->extended_l2));
  json_object_object_add (j, "lazy_refcounts", json_object_new_boolean (o->lazy_refcounts));
  json_object_object_add (j, "preallocation", json_object_new_int64 (o->preallocation));
  json_object_object_add (j, "backing_file",
                          o->backing_file ? json_object_new_string (o->backing_file) : NULL);
  json_object_object_add (j, "backing_fmt",
                          o->backing_format ? json_object_new_string (o->backing_format) : NULL);
  ops = json_object_new_array ();
  for (i = optind; i < argc; i++)
    json_object_array_add (ops, json_object_new_string (argv[i]));
  json_object_object_add (j, "operands", ops);
  printf ("%s\n", json_object_to_json_string_ext (j, JSON_C_TO_STRING_PLAIN));
  json_object_put (j);
  return 0;
}
