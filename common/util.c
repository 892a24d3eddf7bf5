/* util.c: error reporting, checked allocation and crash-safe file replacement. */
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

static _Thread_local char err_buf[4096];

int err_set(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_buf, sizeof err_buf, fmt, ap);
    va_end(ap);
    return code;
}

int err_prefix(int code, const char *fmt, ...)
{
    char joined[2 * sizeof err_buf];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(joined, sizeof err_buf, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if ((size_t)n > sizeof err_buf - 1)
        n = (int)sizeof err_buf - 1;
    memcpy(joined + n, ": ", 2);
    memcpy(joined + n + 2, err_buf, sizeof err_buf);
    memcpy(err_buf, joined, sizeof err_buf - 1);
    err_buf[sizeof err_buf - 1] = '\0';
    return code;
}

const char *err_msg(void) { return err_buf[0] ? err_buf : "unknown error"; }

void err_clear(void) { err_buf[0] = '\0'; }

/* what runs before a fatal error ends the process (rb_at_die), newest first */
static void (*die_hooks[4])(void);
static int n_die_hooks;
static const char *oom_hint;

void rb_at_die(void (*fn)(void))
{
    for (int i = 0; i < n_die_hooks; i++)
        if (die_hooks[i] == fn)
            return;
    if (n_die_hooks < (int)RB_ARRAY_LEN(die_hooks))
        die_hooks[n_die_hooks++] = fn;
}

void rb_set_oom_hint(const char *hint) { oom_hint = hint; }

static noreturn void die_now(int code)
{
    while (n_die_hooks > 0)
        die_hooks[--n_die_hooks]();
    int initialized = 0, finalized = 0, world = 1;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (initialized && !finalized) {
        MPI_Comm_size(MPI_COMM_WORLD, &world);
        if (world > 1) {
            fflush(stdout);
            fflush(stderr);
            MPI_Abort(MPI_COMM_WORLD, code);
        }
        MPI_Finalize();
    }
    exit(code);
}

noreturn void rb_die(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_buf, sizeof err_buf, fmt, ap);
    va_end(ap);
    log_msg(LOG_ERROR, "%s", err_buf);
    die_now(code);
}

noreturn void rb_die_err(int code)
{
    log_msg(LOG_ERROR, "%s", err_msg());
    die_now(code);
}

static noreturn void die_oom(size_t n)
{
    rb_die(RB_EXIT_RUNTIME, "out of memory allocating %zu bytes; %s, or use a machine with "
           "more memory", n, oom_hint ? oom_hint : "lower the batch size (training: "
           "micro_batch_size or sequence_len; scoring: --batch-rows or score_batch_size)");
}

void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        die_oom(n);
    return p;
}

void *xcalloc(size_t count, size_t size)
{
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p)
        die_oom(count * size);
    return p;
}

void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        die_oom(n);
    return q;
}

char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    return memcpy(xmalloc(n), s, n);
}

char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *s = xmalloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

static int fsync_dir_of(const char *path)
{
    char *copy = xstrdup(path);
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY);
    free(copy);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

int rename_durable(const char *tmp_path, const char *final_path)
{
    if (rename(tmp_path, final_path) != 0)
        return err_set(RB_EXIT_RUNTIME, "cannot rename %s to %s: %s", tmp_path, final_path,
                       strerror(errno));
    fsync_dir_of(final_path);
    return 0;
}

int atomic_file_open(atomic_file *af, const char *path)
{
    af->path = xstrdup(path);
    af->tmp_path = xasprintf("%s.tmp.%ld", path, (long)getpid());
    af->fp = fopen(af->tmp_path, "wb");
    if (!af->fp) {
        int rc = err_set(RB_EXIT_RUNTIME, "cannot write %s: %s", af->tmp_path, strerror(errno));
        free(af->path);
        free(af->tmp_path);
        af->path = af->tmp_path = NULL;
        return rc;
    }
    return 0;
}

int atomic_file_commit(atomic_file *af)
{
    int rc = 0;
    if (fflush(af->fp) != 0 || ferror(af->fp) || fsync(fileno(af->fp)) != 0)
        rc = err_set(RB_EXIT_RUNTIME, "cannot write %s: %s", af->tmp_path, strerror(errno));
    if (fclose(af->fp) != 0 && rc == 0)
        rc = err_set(RB_EXIT_RUNTIME, "cannot close %s: %s", af->tmp_path, strerror(errno));
    af->fp = NULL;
    if (rc == 0)
        rc = rename_durable(af->tmp_path, af->path);
    if (rc != 0)
        unlink(af->tmp_path);
    free(af->path);
    free(af->tmp_path);
    af->path = af->tmp_path = NULL;
    return rc;
}

void atomic_file_abort(atomic_file *af)
{
    if (af->fp)
        fclose(af->fp);
    if (af->tmp_path)
        unlink(af->tmp_path);
    free(af->path);
    free(af->tmp_path);
    af->fp = NULL;
    af->path = af->tmp_path = NULL;
}

int write_file_atomic(const char *path, const void *data, size_t n)
{
    atomic_file af;
    int rc = atomic_file_open(&af, path);
    if (rc)
        return rc;
    if (n && fwrite(data, 1, n, af.fp) != n) {
        rc = err_set(RB_EXIT_RUNTIME, "cannot write %s: %s", af.tmp_path, strerror(errno));
        atomic_file_abort(&af);
        return rc;
    }
    return atomic_file_commit(&af);
}

int read_file(const char *path, char **data, size_t *n)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return err_set(errno == ENOENT ? RB_EXIT_INPUT : RB_EXIT_RUNTIME, "cannot open %s: %s",
                       path, strerror(errno));
    size_t cap = 1 << 16, len = 0;
    char *buf = xmalloc(cap);
    for (;;) {
        if (cap - len < 1 << 15)
            buf = xrealloc(buf, cap *= 2);
        size_t got = fread(buf + len, 1, cap - len - 1, fp);
        len += got;
        if (got == 0)
            break;
    }
    int bad = ferror(fp);
    fclose(fp);
    if (bad) {
        free(buf);
        return err_set(RB_EXIT_RUNTIME, "cannot read %s", path);
    }
    buf[len] = '\0';
    *data = buf;
    if (n)
        *n = len;
    return 0;
}

int mkdir_p(const char *path)
{
    char *p = xstrdup(path);
    for (char *s = p + 1; *s; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        if (mkdir(p, 0755) != 0 && errno != EEXIST) {
            int rc = err_set(RB_EXIT_RUNTIME, "cannot create folder %s: %s", p, strerror(errno));
            free(p);
            return rc;
        }
        *s = '/';
    }
    int rc = 0;
    if (mkdir(p, 0755) != 0 && errno != EEXIST)
        rc = err_set(RB_EXIT_RUNTIME, "cannot create folder %s: %s", p, strerror(errno));
    free(p);
    return rc;
}

int path_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

int path_is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int same_path(const char *a, const char *b)
{
    struct stat sa, sb;
    return strcmp(a, b) == 0 || (stat(a, &sa) == 0 && stat(b, &sb) == 0 &&
                                 sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino);
}

char *path_first_missing(const char *dir)
{
    if (!dir || !dir[0] || path_exists(dir))
        return NULL;
    char *top = xstrdup(dir);
    for (;;) {
        char *copy = xstrdup(top), *up = xstrdup(dirname(copy));
        free(copy);
        if (strcmp(up, top) == 0 || path_exists(up)) {
            free(up);
            return top;
        }
        free(top);
        top = up;
    }
}

void rmdir_empty_upto(const char *deep, const char *top)
{
    char *d = xstrdup(deep);
    while (rmdir(d) == 0 && strcmp(d, top) != 0) {
        char *copy = xstrdup(d);
        free(d);
        d = xstrdup(dirname(copy));
        free(copy);
    }
    free(d);
}

char *dir_output_problem(const char *dir)
{
    struct stat st;
    if (!dir || !dir[0])
        return xstrdup("(an empty path) is not a folder");
    if (stat(dir, &st) == 0 && !S_ISDIR(st.st_mode))
        return xasprintf("%s exists and is not a folder", dir);
    if (mkdir_p(dir) != 0)
        return xasprintf("%s: %s", dir, err_msg());

    /* writable: a test file is made and removed */
    char *probe = xasprintf("%s/.rubric-write-test.%ld", dir, (long)getpid());
    int fd = open(probe, O_WRONLY | O_CREAT | O_EXCL, 0600);
    char *problem = NULL;
    if (fd < 0) {
        problem = xasprintf("%s is not writable (creating a file in it: %s)", dir,
                            strerror(errno));
    } else {
        close(fd);
        if (unlink(probe) != 0)
            problem = xasprintf("%s is not writable (a test file %s could not be removed: %s)",
                                dir, probe, strerror(errno));
    }
    free(probe);
    return problem;
}

int check_output_file(const char *path, const char *what)
{
    if (!path || !path[0])
        return err_set(RB_EXIT_INPUT, "%s is empty: give a file name", what);
    if (path_is_dir(path))
        return err_set(RB_EXIT_INPUT, "%s %s is a directory: give a file name (e.g. %s/out.jsonl)",
                       what, path, path);
    char *copy = xstrdup(path);
    char *problem = dir_output_problem(dirname(copy));
    free(copy);
    if (!problem)
        return 0;
    int rc = err_set(RB_EXIT_INPUT, "%s %s: its folder %s; give a path in a folder this user can "
                     "write to", what, path, problem);
    free(problem);
    return rc;
}

int parse_byte_size(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    uint64_t mult = 1;
    if (*end == 'K' || *end == 'k')
        mult = 1000, end++;
    else if (*end == 'M' || *end == 'm')
        mult = 1000 * 1000, end++;
    else if (*end == 'G' || *end == 'g')
        mult = 1000 * 1000 * 1000, end++;
    if (*end == 'B' || *end == 'b')
        end++;
    if (errno || end == s || *end || v == 0 || s[0] == '-' || v > UINT64_MAX / mult)
        return -1;
    *out = v * mult;
    return 0;
}

double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* a cgroup limit file's bytes ("max", absent or unreadable: none) */
static double cgroup_limit_at(const char *path)
{
    char *text = NULL;
    size_t n = 0;
    if (read_file(path, &text, &n) != 0)
        return 0.0;
    char *end = NULL;
    double v = strtod(text, &end);
    int ok = end != text && v > 0;
    free(text);
    return ok ? v : 0.0;
}

/* the lowest memory limit of this process's cgroup and its parents (v2: memory.max up the
 * unified hierarchy; v1: the memory controller's memory.limit_in_bytes); 0 when none */
static double cgroup_memory_limit(void)
{
    char *text = NULL;
    size_t n = 0;
    if (read_file("/proc/self/cgroup", &text, &n) != 0)
        return 0.0;
    double best = 0.0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2)
            continue;
        *c2 = 0;
        const char *controllers = c1 + 1, *cg = c2 + 1;
        int v2 = strcmp(line, "0") == 0 && !*controllers;
        if (!v2 && strcmp(controllers, "memory") != 0)
            continue;
        char *dir = v2 ? xasprintf("/sys/fs/cgroup%s", cg)
                       : xasprintf("/sys/fs/cgroup/memory%s", cg);
        for (;;) {
            char *f = xasprintf("%s/%s", dir, v2 ? "memory.max" : "memory.limit_in_bytes");
            double v = cgroup_limit_at(f);
            free(f);
            if (v > 0 && (best == 0.0 || v < best))
                best = v;
            char *slash = strrchr(dir, '/');
            if (!v2 || !slash || slash - dir <= (ptrdiff_t)strlen("/sys/fs/cgroup"))
                break;
            *slash = 0;
        }
        free(dir);
    }
    free(text);
    return best;
}

double memory_limit_bytes(void)
{
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    double have = pages > 0 && page > 0 ? (double)pages * (double)page : 0.0;
    double cg = cgroup_memory_limit();
    return cg > 0 && (have == 0.0 || cg < have) ? cg : have;
}
