/* test_score_util.h: helpers of the score tests: run `rubric`, write inputs, compare files. */
#ifndef RUBRIC_TEST_SCORE_UTIL_H
#define RUBRIC_TEST_SCORE_UTIL_H

#include <criterion/criterion.h>
#include <dirent.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* 1 when this test binary (and so the product, built alike) runs under AddressSanitizer, or
 * CI says the build is sanitized (RUBRIC_SANITIZER): memory and time measurements are off. */
#if defined(__SANITIZE_ADDRESS__)
#define ST_ASAN_BUILD 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ST_ASAN_BUILD 1
#endif
#endif
#ifndef ST_ASAN_BUILD
#define ST_ASAN_BUILD 0
#endif

static inline int st_sanitized(void)
{
    const char *env = getenv("RUBRIC_SANITIZER");
    return ST_ASAN_BUILD || (env && *env);
}

static inline const char *st_bin(void)
{
    const char *bin = getenv("RUBRIC_BIN");
    cr_assert(bin, "RUBRIC_BIN is not set (run through meson test)");
    return bin;
}

/* A fresh temporary folder. */
static inline char *st_tmpdir(void)
{
    char *dir = strdup("/tmp/rubric-score-test-XXXXXX");
    cr_assert(mkdtemp(dir));
    return dir;
}

/* Start argv (NULL-terminated) in its own process group, output to log (append). */
static inline pid_t st_start(char *const argv[], const char *log)
{
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        setpgid(0, 0);
        FILE *f = fopen(log, "a");
        if (f) {
            dup2(fileno(f), 1);
            dup2(fileno(f), 2);
        }
        execvp(argv[0], argv);
        _exit(127);
    }
    setpgid(pid, pid);
    return pid;
}

/* The parent of a process, from /proc, or -1. */
static inline pid_t st_ppid(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    int ppid = -1;
    if (!p || sscanf(p + 1, " %*c %d", &ppid) != 1)
        return -1;
    return ppid;
}

/* SIGKILL a process and all its descendants (mpirun's ranks live in their own process
 * groups), as a batch system killing a job would. Each one is stopped first so none can
 * react to the others dying. */
static inline void st_kill_tree(pid_t root)
{
    pid_t tree[256];
    int n = 0;
    tree[n++] = root;
    kill(root, SIGSTOP);
    for (int grew = 1; grew;) {
        grew = 0;
        DIR *d = opendir("/proc");
        struct dirent *e;
        while (d && (e = readdir(d)) != NULL) {
            pid_t pid = (pid_t)atoi(e->d_name);
            if (pid <= 0)
                continue;
            int known = 0, child = 0;
            pid_t pp = st_ppid(pid);
            for (int i = 0; i < n; i++) {
                known |= tree[i] == pid;
                child |= tree[i] == pp;
            }
            if (child && !known && n < 256) {
                kill(pid, SIGSTOP);
                tree[n++] = pid;
                grew = 1;
            }
        }
        if (d)
            closedir(d);
    }
    for (int i = 0; i < n; i++)
        kill(tree[i], SIGKILL);
}

/* Wait for pid; returns its exit code (128+signal when killed); *maxrss_kb when not NULL. */
static inline int st_wait(pid_t pid, long *maxrss_kb)
{
    int status;
    struct rusage ru;
    cr_assert_eq(wait4(pid, &status, 0, &ru), pid);
    if (maxrss_kb)
        *maxrss_kb = ru.ru_maxrss;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static inline int st_run(char *const argv[], const char *log, long *maxrss_kb)
{
    return st_wait(st_start(argv, log), maxrss_kb);
}

/* Write n rows "instruction/input/output" (with a few bad lines every `bad_every` rows, 0: none)
 * to path. */
static inline void st_write_rows(const char *path, long n, int k, long bad_every)
{
    FILE *f = fopen(path, "w");
    cr_assert(f);
    for (long i = 0; i < n; i++) {
        if (bad_every && i % bad_every == 7) {
            static const char *bad[] = {"", "{not json", "[1, 2]", "{\"input\": \"no rubric\"}",
                                        "{\"instruction\": 5, \"input\": \"x\"}"};
            fprintf(f, "%s\n", bad[(i / bad_every) % 5]);
            continue;
        }
        fprintf(f, "{\"instruction\": \"Rate the text.\", \"input\": \"text number %ld\"", i);
        if (i % 11 != 3) {
            fprintf(f, ", \"output\": \"");
            for (int j = 0; j < k; j++)
                fprintf(f, j ? " %ld" : "%ld", (i * 7 + j * 3) % 6);
            fprintf(f, "\"");
        }
        fprintf(f, "}\n");
    }
    fclose(f);
}

static inline char *st_read(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)len + 1);
    cr_assert_eq(fread(buf, 1, (size_t)len, f), (size_t)len);
    buf[len] = '\0';
    fclose(f);
    if (n)
        *n = (size_t)len;
    return buf;
}

/* Wait until `text` occurs `count` times in the file (at most `seconds`). */
static inline void st_wait_for_text(const char *path, const char *text, int count, int seconds)
{
    for (int tries = 0; tries < seconds * 20; tries++) {
        char *all = st_read(path, NULL);
        int n = 0;
        for (const char *p = all; p && (p = strstr(p, text)) != NULL; p++)
            n++;
        free(all);
        if (n >= count)
            return;
        usleep(50000);
    }
    cr_assert_fail("%s: '%s' did not appear %d times in %d s", path, text, count, seconds);
}

static inline int st_same_file(const char *a, const char *b)
{
    size_t na = 0, nb = 0;
    char *x = st_read(a, &na), *y = st_read(b, &nb);
    int same = x && y && na == nb && memcmp(x, y, na) == 0;
    free(x);
    free(y);
    return same;
}

static inline void st_rm_rf(const char *dir)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

static inline char *st_path(const char *dir, const char *name)
{
    char *p = malloc(strlen(dir) + strlen(name) + 2);
    cr_assert(p, "out of memory");
    sprintf(p, "%s/%s", dir, name);
    return p;
}

#endif
