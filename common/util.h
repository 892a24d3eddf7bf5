/*
 * util.h: error reporting, checked allocation and crash-safe file replacement.
 *
 * Error convention (every module): a function that can fail returns 0 on success, or an exit
 * code on failure (RB_EXIT_RUNTIME or RB_EXIT_INPUT) after recording one message with
 * err_set(). The caller either adds context with err_prefix() and returns the code, or, at the
 * top of a command, prints err_msg() and exits with the code.
 */
#ifndef RUBRIC_UTIL_H
#define RUBRIC_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdnoreturn.h>

enum {
    RB_EXIT_OK = 0,
    RB_EXIT_RUNTIME = 1, /* a runtime failure: I/O, out of memory, a dead rank */
    RB_EXIT_INPUT = 2,   /* bad usage or bad input: the user can fix it */
};

#if defined(__GNUC__)
#define RB_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define RB_PRINTF(f, a)
#endif

/* Record the message of the current failure and return `code` (so `return err_set(...)`). */
int err_set(int code, const char *fmt, ...) RB_PRINTF(2, 3);
/* Put "prefix: " in front of the recorded message; returns `code`. */
int err_prefix(int code, const char *fmt, ...) RB_PRINTF(2, 3);
const char *err_msg(void);
void err_clear(void);

/* Print "rubric: error: <msg>" (with the rank under MPI) and end the process (all ranks under
 * MPI) with `code`. */
noreturn void rb_die(int code, const char *fmt, ...) RB_PRINTF(2, 3);
/* Print err_msg() and end with `code`. */
noreturn void rb_die_err(int code);
/* fn runs before rb_die / rb_die_err (an out-of-memory too) ends the process, newest first,
 * once: for removing what a failed command made. At most 4; the same fn once. */
void rb_at_die(void (*fn)(void));
/* What an out-of-memory error advises (default: lower the batch size); a static string. */
void rb_set_oom_hint(const char *hint);

/* Allocation that ends the process with a clear message when memory runs out. */
void *xmalloc(size_t n);
void *xcalloc(size_t count, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xasprintf(const char *fmt, ...) RB_PRINTF(1, 2);

/* Crash-safe file replacement: write to "<path>.tmp.<pid>", then fsync, rename over <path> and
 * fsync the folder. A reader never sees a half-written file. */
typedef struct {
    FILE *fp;
    char *path;
    char *tmp_path;
} atomic_file;

int atomic_file_open(atomic_file *af, const char *path);
/* Flush, fsync, close and rename into place. Returns 0 or RB_EXIT_RUNTIME. */
int atomic_file_commit(atomic_file *af);
/* Close and remove the temporary file (after a failure). */
void atomic_file_abort(atomic_file *af);
/* Rename tmp over final and fsync the folder holding it. */
int rename_durable(const char *tmp_path, const char *final_path);
/* Write a whole buffer to path through an atomic_file. */
int write_file_atomic(const char *path, const void *data, size_t n);

/* Read a whole file into a NUL-terminated buffer. Returns 0 or an exit code (err_set). */
int read_file(const char *path, char **data, size_t *n);
/* mkdir -p. */
int mkdir_p(const char *path);
int path_exists(const char *path);
int path_is_dir(const char *path);
/* 1 when a and b name the same file: the same string, or the same existing inode (so also
 * through "..", a symbolic link or a hard link). */
int same_path(const char *a, const char *b);

/* What keeps `dir` from being an output folder, or NULL when nothing does: it exists and is
 * not a folder, it cannot be made (mkdir -p), or it takes no new file (one is made and
 * removed, so a read-only mount or `chattr +i` counts, even for root). A missing folder is
 * made. The returned text (free it) starts with dir, e.g. "out/m is not writable (...)". */
char *dir_output_problem(const char *dir);
/* The highest folder of dir (dir itself or one above it) that does not exist, which making dir
 * would create (malloc'd); NULL when dir exists. */
char *path_first_missing(const char *dir);
/* rmdir deep, then each folder above it up to top, while they are empty */
void rmdir_empty_upto(const char *deep, const char *top);

/* A file this run will write at `path`: not a folder, its folder made and writable. Returns
 * 0, or RB_EXIT_INPUT with "WHAT PATH ...: give ..." (what: the option, e.g. "--output"). */
int check_output_file(const char *path, const char *what);

/* "s" unless n is 1: "%d worker%s", n, plural_s(n). */
static inline const char *plural_s(int64_t n) { return n == 1 ? "" : "s"; }

/* A byte count "500000", "200K", "5G" or "5GB" (K, M, G: powers of 1000, as transformers'
 * max_shard_size). Returns 0, or -1 for anything else (zero, negative, overflow). */
int parse_byte_size(const char *s, uint64_t *out);

/* Monotonic seconds. */
double now_seconds(void);

/* The memory this process may use, in bytes: the machine's physical memory, or its cgroup's
 * limit where lower (a container, a Slurm job's --mem); 0 when neither is known. */
double memory_limit_bytes(void);

#define RB_MIN(a, b) ((a) < (b) ? (a) : (b))
#define RB_MAX(a, b) ((a) > (b) ? (a) : (b))
#define RB_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#endif
