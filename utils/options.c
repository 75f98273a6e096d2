/* rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
 * The one command-line parser of the utilities: shared habits (-f -U --output -o -p -q), sizes.
 */
#include <config.h>

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

/* Long-only shared options get codes above any character. */
enum { CODE_OUTPUT = 0x1000 };

/* The shared options, each with the OPT_* bit that enables it (0: always). */
static const struct {
  unsigned bit;
  const char *shortopt;            /* getopt syntax, "" for long only */
  struct option longopt;
} shared_opts[] = {
  { OPT_FORMAT, "f:", { "format", required_argument, NULL, 'f' } },
  { OPT_SHARE, "U", { "force-share", no_argument, NULL, 'U' } },
  { OPT_OUTPUT, "", { "output", required_argument, NULL, CODE_OUTPUT } },
  { OPT_OUTPUT, "j", { "json", no_argument, NULL, 'j' } },
  { OPT_CREATE, "o:", { "options", required_argument, NULL, 'o' } },
  { OPT_PROGRESS, "p", { "progress", optional_argument, NULL, 'p' } },
  { OPT_QUIET, "q", { "quiet", no_argument, NULL, 'q' } },
  { 0, "h", { "help", no_argument, NULL, 'h' } },
  { 0, "V", { "version", no_argument, NULL, 'V' } },
};
#define NR_SHARED (sizeof shared_opts / sizeof shared_opts[0])

void
cmdline_die (const struct cmdline *cl, const char *fmt, ...)
{
  va_list ap;

  fprintf (stderr, "%s: ", progname);
  va_start (ap, fmt);
  vfprintf (stderr, fmt, ap);
  va_end (ap);
  fputc ('\n', stderr);
  exit (cl->usage_status ? cl->usage_status : EXIT_USAGE);
}

/* Build the merged short and long option tables (once). */
static void
cmdline_build (struct cmdline *cl)
{
  size_t nlong = 0, i, n = 0, len;

  while (cl->longopts && cl->longopts[nlong].name)
    nlong++;
  len = 2 + (cl->shortopts ? strlen (cl->shortopts) : 0) + 2 * NR_SHARED;
  cl->all_short = malloc (len + 1);
  cl->all_long = calloc (nlong + NR_SHARED + 1, sizeof *cl->all_long);
  if (!cl->all_short || !cl->all_long)
    die (EXIT_TROUBLE, "out of memory");
  /* ':' first: getopt reports a missing value as ':' instead of '?'. */
  snprintf (cl->all_short, len + 1, ":%s", cl->shortopts ? cl->shortopts : "");
  for (i = 0; i < NR_SHARED; i++)
    if (!shared_opts[i].bit || (cl->shared & shared_opts[i].bit)) {
      strcat (cl->all_short, shared_opts[i].shortopt);
      cl->all_long[n++] = shared_opts[i].longopt;
    }
  for (i = 0; i < nlong; i++)
    cl->all_long[n++] = cl->longopts[i];
}

/* Die for getopt's '?' (unknown option) or ':' (missing value). */
static void __attribute__((noreturn))
bad_option (const struct cmdline *cl, int c, int argc, char **argv)
{
  const char *a = optind > 0 && optind <= argc ? argv[optind - 1] : "";
  const char *what = c == ':' ? "needs a value" : "is unknown";

  if (strncmp (a, "--", 2) == 0)
    cmdline_die (cl, "option '%.*s' %s (see --help)", (int) strcspn (a, "="), a, what);
  if (optopt > 0 && optopt < 0x100 && isprint (optopt))
    cmdline_die (cl, "option '-%c' %s (see --help)", optopt, what);
  cmdline_die (cl, "option '%s' %s (see --help)", a, what);
}

int
cmdline_next (struct cmdline *cl, int argc, char **argv)
{
  char msg[256];
  int c;

  if (!cl->all_short)
    cmdline_build (cl);
  opterr = 0;
  for (;;) {
    c = getopt_long (argc, argv, cl->all_short, cl->all_long, NULL);
    switch (c) {
    case -1:
      return -1;
    case '?':
    case ':':
      bad_option (cl, c, argc, argv);
    case 'h':
      cl->usage (stdout, EXIT_OK);
      exit (EXIT_OK);
    case 'V':
      printf ("%s %s\n", progname, PACKAGE_VERSION);
      exit (EXIT_OK);
    }
    /* A program's own option shadows a shared one with the same code. */
    if (cl->shortopts && c < 0x100 && strchr (cl->shortopts, c))
      return c;
    switch (c) {
    case 'f':
      if (!(cl->shared & OPT_FORMAT))
        return c;
      if (strcmp (optarg, "raw") != 0 && strcmp (optarg, "qcow2") != 0)
        cmdline_die (cl, "-f: unknown format '%s' (raw or qcow2)", optarg);
      cl->format = optarg;
      break;
    case 'U':
      if (!(cl->shared & OPT_SHARE))
        return c;
      cl->force_share = true;
      break;
    case CODE_OUTPUT:
      if (strcmp (optarg, "json") == 0)
        cl->json = true;
      else if (strcmp (optarg, "human") == 0)
        cl->json = false;
      else
        cmdline_die (cl, "--output: '%s' is neither human nor json", optarg);
      break;
    case 'j':
      if (!(cl->shared & OPT_OUTPUT))
        return c;
      cl->json = true;
      break;
    case 'o':
      if (!(cl->shared & OPT_CREATE))
        return c;
      if (strcmp (optarg, "help") == 0 || strcmp (optarg, "?") == 0) {
        fputs (create_options_help, stdout);
        exit (EXIT_OK);
      }
      if (create_options_parse (optarg, &cl->create, msg, sizeof msg) == -1)
        cmdline_die (cl, "-o: %s", msg);
      break;
    case 'p':
      if (!(cl->shared & OPT_PROGRESS))
        return c;
      cl->progress = true;
      /* --progress=fd:N (-p takes no value). */
      if (optarg && progress_set_fd (optarg) == -1)
        cmdline_die (cl, "--progress=%s: expected fd:N with N an open file descriptor", optarg);
      break;
    case 'q':
      if (!(cl->shared & OPT_QUIET))
        return c;
      cl->quiet = true;
      break;
    default:
      return c;
    }
  }
}

/* ---- sizes ---- */

/* Multiplier of a size suffix (any case), 0 if c is not one. */
static uint64_t
suffix_mul (char c)
{
  switch (toupper ((unsigned char) c)) {
  case 'B': return 1;
  case 'K': return 1ULL << 10;
  case 'M': return 1ULL << 20;
  case 'G': return 1ULL << 30;
  case 'T': return 1ULL << 40;
  case 'P': return 1ULL << 50;
  case 'E': return 1ULL << 60;
  default: return 0;
  }
}

/* QEMU's algorithm (util/cutils.c do_strtosz, 7.x): the integral part as an
 * unsigned 64-bit number, the fraction as 64-bit fixed point from strtod,
 * the product computed exactly in 128 bits and rounded half up.
 */
int
parse_size_full (const char *s, uint64_t *value)
{
  const char *end, *f;
  unsigned __int128 v;
  uint64_t val, valf = 0, mul;
  char *e;

  errno = 0;
  val = strtoull (s, &e, 10);
  end = e;
  if (end == s)
    return -EINVAL;
  if (errno == ERANGE)
    return -ERANGE;
  if (memchr (s, '-', end - s))
    return -EINVAL;
  if (val == 0 && (*end == 'x' || *end == 'X')) {
    /* Hex: reparse; no fraction (a suffix is accepted, as QEMU 7 does with a warning). */
    errno = 0;
    val = strtoull (s, &e, 16);
    end = e;
    if (errno == ERANGE)
      return -ERANGE;
    if (*end == '.')
      return -EINVAL;
  }
  else if (*end == '.') {
    /* A fraction; "1.k" is fine, an exponent is not. */
    double fraction;

    f = end;
    errno = 0;
    fraction = strtod (f, &e);
    if (e == f || errno == ERANGE || !isfinite (fraction))
      end = f + 1;
    else {
      if (memchr (f, 'e', e - f) || memchr (f, 'E', e - f))
        return -EINVAL;
      end = e;
      /* Fixed point; QEMU's cast of 2^64 (a fraction that rounds up to 1)
       * gives 0 on x86-64, and so does this.
       */
      valf = fraction * 0x1p64 >= 0x1p64 ? 0 : (uint64_t) (fraction * 0x1p64);
    }
  }
  mul = suffix_mul (*end);
  if (mul)
    end++;
  else
    mul = 1;
  if (*end)
    return -EINVAL;
  if (mul == 1) {
    if (valf != 0)                  /* a fraction needs a scale */
      return -EINVAL;
  }
  else {
    v = (unsigned __int128) val * mul + (((unsigned __int128) valf * mul) >> 64);
    v += ((uint64_t) ((unsigned __int128) valf * mul)) >> 63;   /* round half up */
    if (v >> 64)
      return -ERANGE;
    val = v;
  }
  *value = val;
  return 0;
}

int64_t
parse_size (const char *s)
{
  uint64_t v;

  if (parse_size_full (s, &v) < 0 || v > INT64_MAX)
    return -1;
  return v;
}

uint32_t
parse_cluster_size_opt (const char *arg)
{
  int64_t v = parse_size (arg);

  if (v < 512 || v > (2 << 20) || (v & (v - 1)))
    die (EXIT_USAGE, "--cluster-size: '%s' is not a power of two from 512 to 2M", arg);
  return v;
}

/* compat value to the header version (0 if unknown); qemu-img accepts both spellings. */
static uint32_t
compat_version (const char *arg)
{
  if (strcmp (arg, "0.10") == 0 || strcmp (arg, "v2") == 0)
    return 2;
  if (strcmp (arg, "1.1") == 0 || strcmp (arg, "v3") == 0)
    return 3;
  return 0;
}

uint32_t
parse_compat_opt (const char *arg)
{
  uint32_t v = compat_version (arg);

  if (!v)
    die (EXIT_USAGE, "--compat: '%s' is neither 0.10 nor 1.1", arg);
  return v;
}

/* ---- -o key=value,... ---- */

const char create_options_help[] =
"Creation options (-o key=value,...; as qemu-img create -f qcow2):\n"
"  size=SIZE                virtual disk size\n"
"  backing_file=NAME        file name of a base image\n"
"  backing_fmt=raw|qcow2    image format of the base image\n"
"  cluster_size=SIZE        qcow2 cluster size, 512 to 2M (default 64K)\n"
"  compat=0.10|1.1          qcow2 version 2 or 3 (also v2, v3; default 1.1)\n"
"  compression_type=zlib|zstd  compression of compressed clusters (default zlib)\n"
"  extended_l2=on|off       subcluster allocation (clusters of 16K or more)\n"
"  lazy_refcounts=on|off    postpone refcount updates (compat 1.1)\n"
"  preallocation=off|metadata|falloc|full\n"
"                           metadata: L2 tables and clusters allocated, not written;\n"
"                           falloc: space reserved with fallocate; full: zeros written\n"
"  refcount_bits=N          1, 2, 4, 8, 16, 32 or 64 (default 16)\n";

/* QEMU's boolean spellings (qapi_bool_parse).  1, 0, or -1 if none. */
static int
parse_bool (const char *v)
{
  static const char *const yes[] = { "on", "yes", "true", "y" };
  static const char *const no[] = { "off", "no", "false", "n" };
  size_t i;

  for (i = 0; i < 4; i++) {
    if (strcmp (v, yes[i]) == 0)
      return 1;
    if (strcmp (v, no[i]) == 0)
      return 0;
  }
  return -1;
}

/* Set one key.  0, or -1 with msg filled. */
static int
create_option_set (struct create_options *co, const char *key, const char *val,
                   char *msg, size_t msglen)
{
  struct rb_create_opts *o = &co->o;
  uint64_t n;
  int b, r;

#define BAD(...) do { snprintf (msg, msglen, __VA_ARGS__); return -1; } while (0)
  if (strcmp (key, "size") == 0 || strcmp (key, "cluster_size") == 0) {
    r = parse_size_full (val, &n);
    if (r == -ERANGE)
      BAD ("value '%s' is out of range for parameter '%s'", val, key);
    if (r < 0)
      BAD ("parameter '%s' expects a size (a number with an optional k, M, G, T, P or E suffix), not '%s'",
           key, val);
    if (key[0] == 's') {
      if (n > INT64_MAX)
        BAD ("size '%s' is larger than 8 EiB", val);
      o->size = n;
      co->given |= CO_SIZE;
    }
    else {
      if (n < 512 || n > (2 << 20) || (n & (n - 1)))
        BAD ("cluster size must be a power of two between 512 and 2048k, not '%s'", val);
      o->cluster_size = n;
      co->given |= CO_CLUSTER_SIZE;
    }
  }
  else if (strcmp (key, "compat") == 0) {
    if (!(o->version = compat_version (val)))
      BAD ("compat '%s' is neither 0.10 nor 1.1", val);
    co->compat = val;
    co->given |= CO_COMPAT;
  }
  else if (strcmp (key, "refcount_bits") == 0) {
    char *end;
    errno = 0;
    n = strtoull (val, &end, 10);
    if (errno || end == val || *end || n < 1 || n > 64 || (n & (n - 1)))
      BAD ("refcount width must be a power of two and may not exceed 64 bits, not '%s'", val);
    o->refcount_bits = n;
    co->given |= CO_REFCOUNT_BITS;
  }
  else if (strcmp (key, "lazy_refcounts") == 0 || strcmp (key, "extended_l2") == 0) {
    if ((b = parse_bool (val)) == -1)
      BAD ("parameter '%s' expects 'on' or 'off', not '%s'", key, val);
    if (key[0] == 'l') {
      o->lazy_refcounts = b;
      co->given |= CO_LAZY_REFCOUNTS;
    }
    else {
      o->extended_l2 = b;
      co->given |= CO_EXTENDED_L2;
    }
  }
  else if (strcmp (key, "compression_type") == 0) {
    if (strcmp (val, "zlib") == 0)
      o->compression_type = 0;
    else if (strcmp (val, "zstd") == 0)
      o->compression_type = 1;
    else
      BAD ("compression_type '%s' is neither zlib nor zstd", val);
    co->given |= CO_COMPRESSION;
  }
  else if (strcmp (key, "preallocation") == 0) {
    static const char *const modes[] = { "off", "metadata", "falloc", "full" };
    unsigned i;
    for (i = 0; i < 4 && strcmp (val, modes[i]) != 0; i++)
      ;
    if (i == 4)
      BAD ("preallocation '%s' is not off, metadata, falloc or full", val);
    o->preallocation = i;
    co->given |= CO_PREALLOCATION;
  }
  else if (strcmp (key, "backing_file") == 0) {
    o->backing_file = val;
    co->given |= CO_BACKING_FILE;
  }
  else if (strcmp (key, "backing_fmt") == 0) {
    if (strcmp (val, "raw") != 0 && strcmp (val, "qcow2") != 0)
      BAD ("backing_fmt '%s' is neither raw nor qcow2", val);
    o->backing_format = val;
    co->given |= CO_BACKING_FMT;
  }
  else
    BAD ("invalid parameter '%s' (-o help lists them)", key);
  return 0;
#undef BAD
}

int
create_options_parse (const char *list, struct create_options *co, char *msg, size_t msglen)
{
  char *copy = strdup (list), *p, *out;

  if (!copy)
    die (EXIT_TROUBLE, "out of memory");
  /* The copy is never freed: co's strings point into it. */
  p = copy;
  for (;;) {
    char *key = p, *val = NULL;

    /* key[=value] up to a single comma; ",," is a comma in the value. */
    out = p;
    while (*p && *p != '=' && *p != ',')
      *out++ = *p++;
    if (*p == '=') {
      *out = '\0';
      p++;
      val = out = p;
      while (*p) {
        if (*p == ',' && p[1] == ',') {
          *out++ = ',';
          p += 2;
        }
        else if (*p == ',')
          break;
        else
          *out++ = *p++;
      }
    }
    {
      bool more = *p == ',';
      *out = '\0';
      if (*key == '\0' || (more && p[1] == '\0')) {
        snprintf (msg, msglen, "invalid option list: '%s'", list);
        return -1;
      }
      if (!val) {
        /* "key" is key=on, "nokey" key=off (QEMU's short-form booleans). */
        if (strncmp (key, "no", 2) == 0 && strcmp (key, "no") != 0) {
          val = (char *) "off";
          key += 2;
        }
        else
          val = (char *) "on";
      }
      if (create_option_set (co, key, val, msg, msglen) == -1)
        return -1;
      if (!more)
        return 0;
      p++;
    }
  }
}

/* ---- images opened as -f and -U say ---- */

int
image_probe_format (const char *path, const struct cmdline *cl, bool *is_qcow2)
{
  uint8_t magic[4];
  ssize_t r;
  int fd;

  if (cl->format) {
    *is_qcow2 = strcmp (cl->format, "qcow2") == 0;
    return 0;
  }
  fd = open (path, O_RDONLY | O_CLOEXEC);
  if (fd == -1)
    return rb_error (errno, "%s: %s", path, strerror (errno));
  r = pread (fd, magic, 4, 0);
  close (fd);
  if (r == -1)
    return rb_error (errno, "%s: %s", path, strerror (errno));
  *is_qcow2 = r == 4 && memcmp (magic, "QFI\xfb", 4) == 0;
  return 0;
}

struct rb_image *
image_open_as (const char *path, const struct cmdline *cl, unsigned flags, bool *is_qcow2)
{
  struct rb_open_opts o = { .flags = flags };
  struct rb_image *img;
  bool q;

  if (image_probe_format (path, cl, &q) == -1)
    return NULL;
  if (cl->force_share)
    o.flags |= RB_OPEN_NO_LOCK;
  if (!q)
    o.flags |= RB_OPEN_RAW | RB_OPEN_RDONLY;
  if (is_qcow2)
    *is_qcow2 = q;
  img = rb_open (path, &o);
  /* The engine's messages usually name the file already. */
  if (!img && !strstr (rb_errmsg (), path))
    source_error_prefixed (path);
  return img;
}

char *
qemu_path_combine (const char *base, const char *name)
{
  const char *slash = strrchr (base, '/');
  size_t dir = slash && name[0] != '/' ? (size_t) (slash - base + 1) : 0;
  char *p = malloc (dir + strlen (name) + 1);

  if (!p)
    die (EXIT_TROUBLE, "out of memory");
  memcpy (p, base, dir);
  strcpy (p + dir, name);
  return p;
}

char **
image_chain_names (const char *path, const struct cmdline *cl, unsigned *n)
{
  struct cmdline layer = *cl;
  struct rb_info *info = malloc (sizeof *info);
  char **names = calloc (RB_MAX_CHAIN + 1, sizeof *names);
  unsigned i;

  if (!info || !names)
    die (EXIT_TROUBLE, "out of memory");
  names[0] = strdup (path);
  for (i = 0; names[i] && i < RB_MAX_CHAIN; i++) {
    bool q;
    struct rb_image *img = image_open_as (names[i], &layer, RB_OPEN_RDONLY | RB_OPEN_NO_BACKING, &q);
    if (!img)
      die_rb ();
    if (q && rb_get_info (img, info) == -1)
      die_rb ();
    rb_close (img);
    if (!q || !info->backing_file[0])
      break;
    names[i + 1] = qemu_path_combine (names[i], info->backing_file);
    layer.format = info->backing_format[0] ? info->backing_format : NULL;
  }
  if (!names[0])
    die (EXIT_TROUBLE, "out of memory");
  *n = i + 1;
  free (info);
  return names;
}

/* ---- JSON strings as QEMU writes them ---- */

/* Decode one UTF-8 sequence at s (n bytes left, n > 0) as QEMU's
 * mod_utf8_codepoint judges it: the code point, or -1 for an invalid
 * sequence (a stray or impossible byte, a missing continuation byte,
 * overlong forms other than C0 80, surrogates, noncharacters, beyond
 * U+10FFFF).  *len: bytes consumed (invalid: the lead byte and the
 * continuation bytes read before the fault).
 */
static int32_t
utf8_decode (const unsigned char *s, size_t n, size_t *len)
{
  static const int32_t min_cp[] = { 0x80, 0x800, 0x10000, 0x200000, 0x4000000 };
  unsigned lead = s[0], nr = 0, i;
  int32_t cp;

  *len = 1;
  if (lead < 0x80)
    return lead;
  if (lead >= 0xfe || !(lead & 0x40))
    return -1;
  while (lead & (0x80 >> nr))
    nr++;
  cp = lead & ((0x80 >> nr) - 1);
  for (i = 1; i < nr; i++) {
    if (i >= n || (s[i] & 0xc0) != 0x80)
      return -1;
    cp = (cp << 6) | (s[i] & 0x3f);
    *len = i + 1;
  }
  if (cp > 0x10ffff || (cp >= 0xfdd0 && cp <= 0xfdef) || (cp & 0xfffe) == 0xfffe ||
      (cp >= 0xd800 && cp <= 0xdfff) || (cp < min_cp[nr - 2] && !(cp == 0 && nr == 2)))
    return -1;
  return cp;
}

json_object *
json_string_qemu (const char *s)
{
  size_t n = strlen (s), i = 0, out = 0, len;
  unsigned char *buf = malloc (3 * n + 1);
  json_object *j;

  if (!buf)
    die (EXIT_TROUBLE, "out of memory");
  while (i < n) {
    int32_t cp = utf8_decode ((const unsigned char *) s + i, n - i, &len);
    if (cp == -1) {
      memcpy (buf + out, "\xef\xbf\xbd", 3);     /* U+FFFD */
      out += 3;
    }
    else if (cp == 0)
      buf[out++] = 0;                           /* C0 80: json-c writes \u0000 */
    else {
      memcpy (buf + out, s + i, len);
      out += len;
    }
    i += len;
  }
  j = json_object_new_string_len ((const char *) buf, out);
  free (buf);
  return j;
}

/* Bucket of key in QEMU's QDict (tdb_hash modulo 512 buckets). */
static unsigned
qdict_bucket (const char *key)
{
  uint32_t v = 0x238F13AF * (uint32_t) strlen (key);
  unsigned i;

  for (i = 0; key[i]; i++)
    v += (uint32_t) (unsigned char) key[i] << (i * 5 % 24);
  return (1103515243 * v + 12345) % 512;
}

void
json_qemu_order (json_object *j)
{
  size_t n, i, k;

  if (json_object_is_type (j, json_type_array)) {
    n = json_object_array_length (j);
    for (i = 0; i < n; i++)
      json_qemu_order (json_object_array_get_idx (j, i));
    return;
  }
  if (!json_object_is_type (j, json_type_object))
    return;
  {
    struct { const char *key; json_object *val; unsigned bucket; } *e;
    n = json_object_object_length (j);
    e = calloc (n + 1, sizeof *e);
    if (!e)
      die (EXIT_TROUBLE, "out of memory");
    i = 0;
    json_object_object_foreach (j, key, val) {
      e[i].key = strdup (key);
      e[i].val = json_object_get (val);
      e[i].bucket = qdict_bucket (key);
      if (!e[i].key)
        die (EXIT_TROUBLE, "out of memory");
      i++;
    }
    for (i = 0; i < n; i++)
      json_object_object_del (j, e[i].key);
    /* Buckets in order; within one, the last inserted first (QEMU's lists). */
    for (k = 0; k < 512; k++)
      for (i = n; i-- > 0; )
        if (e[i].bucket == k) {
          json_qemu_order (e[i].val);
          json_object_object_add (j, e[i].key, e[i].val);
          free ((char *) e[i].key);
        }
    free (e);
  }
}

/* ---- the shared options applied ---- */

unsigned
source_flags_for (const struct cmdline *cl, const char *format)
{
  unsigned flags = cl->force_share ? SOURCE_NO_LOCK : 0;

  if (format && strcmp (format, "raw") == 0)
    flags |= SOURCE_FORCE_RAW;
  else if (format && strcmp (format, "qcow2") == 0)
    flags |= SOURCE_FORCE_QCOW2;
  return flags;
}

void
create_options_apply (const struct cmdline *cl, struct rb_create_opts *o, unsigned allowed)
{
  static const struct { unsigned bit; const char *key; } keys[] = {
    { CO_SIZE, "size" }, { CO_CLUSTER_SIZE, "cluster_size" }, { CO_COMPAT, "compat" },
    { CO_REFCOUNT_BITS, "refcount_bits" }, { CO_LAZY_REFCOUNTS, "lazy_refcounts" },
    { CO_EXTENDED_L2, "extended_l2" }, { CO_COMPRESSION, "compression_type" },
    { CO_PREALLOCATION, "preallocation" }, { CO_BACKING_FILE, "backing_file" },
    { CO_BACKING_FMT, "backing_fmt" },
  };
  const struct create_options *co = &cl->create;
  size_t i;

  for (i = 0; i < sizeof keys / sizeof keys[0]; i++)
    if ((co->given & keys[i].bit) && !(allowed & keys[i].bit))
      cmdline_die (cl, "-o %s: not an option of %s", keys[i].key, progname);
  if (co->given & CO_SIZE) o->size = co->o.size;
  if (co->given & CO_CLUSTER_SIZE) o->cluster_size = co->o.cluster_size;
  if (co->given & CO_COMPAT) o->version = co->o.version;
  if (co->given & CO_REFCOUNT_BITS) o->refcount_bits = co->o.refcount_bits;
  if (co->given & CO_LAZY_REFCOUNTS) o->lazy_refcounts = co->o.lazy_refcounts;
  if (co->given & CO_EXTENDED_L2) o->extended_l2 = co->o.extended_l2;
  if (co->given & CO_COMPRESSION) o->compression_type = co->o.compression_type;
  if (co->given & CO_PREALLOCATION) o->preallocation = co->o.preallocation;
  if (co->given & CO_BACKING_FILE) o->backing_file = co->o.backing_file;
  if (co->given & CO_BACKING_FMT) o->backing_format = co->o.backing_format;
}

/* ---- streamed JSON: long lists without holding them in memory ---- */

/* Punctuation before the next member or element. */
static void
json_stream_next (struct json_stream *js)
{
  if (js->depth > 0 && js->count[js->depth - 1]++)
    fputs (js->lines && js->depth == 1 ? ",\n" : ",", js->f);
}

void
json_stream_open (struct json_stream *js, const char *key, bool array)
{
  if (js->depth >= JSON_STREAM_MAX_DEPTH)
    die (EXIT_TROUBLE, "JSON nested too deeply");
  if (key)
    json_stream_value (js, key, NULL);
  else
    json_stream_next (js);
  fputc (array ? '[' : '{', js->f);
  js->array[js->depth] = array;
  js->count[js->depth++] = 0;
}

void
json_stream_value (struct json_stream *js, const char *key, json_object *v)
{
  json_stream_next (js);
  if (key) {
    json_object *k = json_object_new_string (key);
    fprintf (js->f, "%s:", json_object_to_json_string_ext (k, JSON_C_TO_STRING_PLAIN));
    json_object_put (k);
    if (!v)
      return;                       /* json_stream_open writes the value */
  }
  fputs (json_object_to_json_string_ext (v, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE),
         js->f);
  json_object_put (v);
}

void
json_stream_close (struct json_stream *js)
{
  js->depth--;
  fputc (js->array[js->depth] ? ']' : '}', js->f);
  if (js->depth == 0)
    fputc ('\n', js->f);
}
