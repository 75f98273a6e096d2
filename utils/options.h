/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * The one command-line parser of the utilities: shared habits (-f -U --output -o -p -q), sizes.
 */
#ifndef RBLOCK_OPTIONS_H
#define RBLOCK_OPTIONS_H

/* How a program uses it.
 *
 *   static const struct option longopts[] = { { "force", no_argument, NULL, 'F' }, ... , { 0 } };
 *   struct cmdline cl = { .shortopts = "c:", .longopts = longopts,
 *                         .shared = OPT_FORMAT | OPT_SHARE | OPT_PROGRESS, .usage = usage };
 *   while ((c = cmdline_next (&cl, argc, argv)) != -1)
 *     switch (c) {                    -- only the program's own options arrive here
 *     case 'c': ...
 *     }
 *   then cl.format, cl.force_share, cl.json, cl.progress, cl.quiet, cl.create ...
 *
 * cmdline_next handles the shared options it was asked for, -h/--help (calls
 * usage (stdout, 0)) and -V/--version itself.  A bad option or a missing
 * value prints one line "progname: ..." and exits with cl.usage_status
 * (EXIT_USAGE unless set: rb-diff uses 2 because 1 means "differ").
 *
 * The shared options, as qemu-img spells them:
 *   OPT_FORMAT    -f, --format FMT      raw|qcow2: no probing (cl.format, NULL = probe)
 *   OPT_SHARE     -U, --force-share     open readers without QEMU's locks
 *   OPT_OUTPUT    --output=human|json, --json, -j        (cl.json)
 *   OPT_CREATE    -o key=value,...      qemu-img's creation options (cl.create), repeatable
 *   OPT_PROGRESS  -p, --progress[=fd:N]   a bar on a terminal, else "done/total" lines
 *                                         (on fd N, or stderr): see struct progress
 *   OPT_QUIET     -q, --quiet
 */

#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <json-c/json.h>

#include "rblock.h"

#define OPT_FORMAT   0x01
#define OPT_SHARE    0x02
#define OPT_OUTPUT   0x04
#define OPT_CREATE   0x08
#define OPT_PROGRESS 0x10
#define OPT_QUIET    0x20

/* Which -o keys were given (create_options.given). */
#define CO_SIZE            0x001
#define CO_CLUSTER_SIZE    0x002
#define CO_COMPAT          0x004
#define CO_REFCOUNT_BITS   0x008
#define CO_LAZY_REFCOUNTS  0x010
#define CO_EXTENDED_L2     0x020
#define CO_COMPRESSION     0x040
#define CO_PREALLOCATION   0x080
#define CO_BACKING_FILE    0x100
#define CO_BACKING_FMT     0x200

/* The -o options, parsed into the engine's creation options.  Strings point
 * into memory owned by the cmdline (valid until the program exits).
 */
struct create_options {
  struct rb_create_opts o;         /* size, cluster_size, version, ... as given */
  unsigned given;                  /* CO_* */
  const char *compat;              /* compat as spelled ("v3", "1.1", ...), NULL if not given */
};

struct cmdline {
  /* Set by the program. */
  const char *shortopts;           /* its own options, getopt syntax (may be NULL) */
  const struct option *longopts;   /* its own, { 0 }-terminated (may be NULL) */
  unsigned shared;                 /* OPT_* */
  void (*usage) (FILE *f, int status);   /* prints the help, exits with status */
  int usage_status;                /* exit status of a usage error; 0 = EXIT_USAGE */

  /* Results of the shared options. */
  const char *format;              /* -f: "raw" or "qcow2"; NULL = probe */
  bool force_share;                /* -U */
  bool json;                       /* --output=json */
  bool progress;                   /* -p */
  bool quiet;                      /* -q */
  struct create_options create;    /* -o */

  /* Private. */
  char *all_short;
  struct option *all_long;
};

/* The next option of the program's own (getopt_long's return value, optarg
 * set), or -1 at the end of the options (optind: first operand).
 */
int cmdline_next (struct cmdline *cl, int argc, char **argv);

/* Die with cl's usage status and "progname: message" (a usage error). */
void cmdline_die (const struct cmdline *cl, const char *fmt, ...)
  __attribute__((format (printf, 2, 3), noreturn));

/* Parse a size exactly as qemu-img does (qemu_strtosz): decimal digits with
 * an optional fraction, or 0x hex; an optional suffix B K M G T P E (any
 * case, powers of 1024; a fraction needs a suffix other than B); leading
 * spaces and '+' allowed, '-' refused.  Returns 0, -EINVAL (malformed) or
 * -ERANGE (2^64 or more).
 */
int parse_size_full (const char *s, uint64_t *value);
/* The same for values up to INT64_MAX: returns the value or -1. */
int64_t parse_size (const char *s);

/* Parse an -o list ("key=value,key=value", ",," for a comma in a value,
 * "key" for key=on) into co.  Returns 0, or -1 with the reason in msg.
 * The list is copied; strings in co point into the copy.
 */
int create_options_parse (const char *list, struct create_options *co, char *msg, size_t msglen);

/* The help text of -o (the keys and their values). */
extern const char create_options_help[];

/* -c/--cluster-size and --compat values (die with EXIT_USAGE when invalid). */
uint32_t parse_cluster_size_opt (const char *arg);
uint32_t parse_compat_opt (const char *arg);

/* The format of path: -f if given, else the qcow2 magic decides
 * (*is_qcow2).  0 / -1 (message recorded).
 */
int image_probe_format (const char *path, const struct cmdline *cl, bool *is_qcow2);
/* rb_open path as -f and -U say (flags: more RB_OPEN_*; a raw file is
 * opened read-only with RB_OPEN_RAW).  *is_qcow2 (may be NULL) tells which.
 * NULL on error (rb_errmsg says why).
 */
struct rb_image *image_open_as (const char *path, const struct cmdline *cl, unsigned flags,
                                bool *is_qcow2);
/* A backing file name resolved as QEMU's path_combine does it: relative to
 * the folder of base, keeping base's spelling ("a/b.qcow2" + "c" = "a/c";
 * "b.qcow2" + "c" = "c").  A new string.
 */
char *qemu_path_combine (const char *base, const char *name);
/* The file names of path's backing chain as QEMU names them (path first,
 * each layer's backing name combined with the name above it), *n of them.
 * Dies on error.
 */
char **image_chain_names (const char *path, const struct cmdline *cl, unsigned *n);

/* source_open flags for an input whose format is forced to format (-f or
 * -F; NULL: probe), and -U.
 */
unsigned source_flags_for (const struct cmdline *cl, const char *format);
/* Copy the -o options given into o; an option outside `allowed` (CO_*) is
 * a usage error naming it.
 */
void create_options_apply (const struct cmdline *cl, struct rb_create_opts *o, unsigned allowed);

/* A JSON string for s (a file name: any bytes) that is valid UTF-8 JSON,
 * as QEMU writes it: invalid UTF-8 sequences become U+FFFD, one per
 * sequence, exactly where QEMU puts them.  json-c escapes the rest.
 */
json_object *json_string_qemu (const char *s);
/* Put the keys of every object in j (recursively) in the order QEMU's QDict
 * iterates them (its hash buckets), so output reads as qemu-img's.
 */
void json_qemu_order (json_object *j);

/* Streamed JSON, for outputs too long to hold as one json-c object (every
 * range of a diff): json-c writes each key and value, this only the
 * brackets and commas between them.
 *
 *   struct json_stream js = { .f = stdout };
 *   json_stream_open (&js, NULL, false);                       {
 *   json_stream_value (&js, "size", json_object_new_int64 (n));  "size":N
 *   json_stream_open (&js, "ranges", true);                      ,"ranges":[
 *   json_stream_value (&js, NULL, range_object);                   {...},{...}
 *   json_stream_close (&js); json_stream_close (&js);            ]}  and a newline
 */
#define JSON_STREAM_MAX_DEPTH 8
struct json_stream {
  FILE *f;
  bool lines;                      /* the top level's elements one a line */
  int depth;
  bool array[JSON_STREAM_MAX_DEPTH];
  uint64_t count[JSON_STREAM_MAX_DEPTH];
};
/* Open an object or array (as member key of the enclosing object, or the
 * next element of an array, or the top level: key NULL).
 */
void json_stream_open (struct json_stream *js, const char *key, bool array);
/* Write v (consumed; key: its member name, NULL in an array). */
void json_stream_value (struct json_stream *js, const char *key, json_object *v);
void json_stream_close (struct json_stream *js);

#endif
