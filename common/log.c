/* log.c: levelled logging and the progress display. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int log_rank = -1;
static int log_all_ranks;
static enum log_level log_level_now = LOG_INFO;
static int progress_line_open; /* a tty progress bar is drawn on the current line */

static const char *const level_names[] = {"error", "warn", "info", "debug"};

void log_init(int rank, enum log_level level)
{
    log_rank = rank;
    log_level_now = level;
}

void log_set_level(enum log_level level) { log_level_now = level; }

enum log_level log_get_level(void) { return log_level_now; }

void log_set_all_ranks(int on) { log_all_ranks = on; }

int log_level_parse(const char *name)
{
    for (int i = 0; i < (int)RB_ARRAY_LEN(level_names); i++)
        if (strcmp(name, level_names[i]) == 0)
            return i;
    if (strcmp(name, "warning") == 0)
        return LOG_WARN;
    return -1;
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    if (level > log_level_now)
        return;
    if (level >= LOG_INFO && log_rank > 0 && !log_all_ranks)
        return;
    char text[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    char rank_tag[32] = "";
    if (log_rank > 0)
        snprintf(rank_tag, sizeof rank_tag, "[rank %d] ", log_rank);
    if (progress_line_open) {
        fputs("\r\033[K", stderr);
        progress_line_open = 0;
    }
    if (level == LOG_INFO)
        fprintf(stderr, "%s%s\n", rank_tag, text);
    else
        fprintf(stderr, "rubric: %s%s: %s\n", rank_tag, level_names[level], text);
    fflush(stderr);
}

static void format_duration(char *buf, size_t n, double s)
{
    if (s < 0 || s > 1e7) {
        snprintf(buf, n, "--:--");
        return;
    }
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(buf, n, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
    else
        snprintf(buf, n, "%02ld:%02ld", t / 60, t % 60);
}

void progress_start(progress *p, const char *label, int64_t total, const char *unit)
{
    memset(p, 0, sizeof *p);
    p->label = label;
    p->unit = unit;
    p->total = total;
    p->t_start = p->t_last = now_seconds();
    p->interval = 10.0;
    p->tty = isatty(STDERR_FILENO);
    p->active = (log_rank <= 0) && log_level_now >= LOG_INFO;
}

static void progress_draw(progress *p, double now, int final)
{
    double elapsed = now - p->t_start;
    double rate = elapsed > 0 ? (double)(p->done - p->base) / elapsed : 0;
    char eta[32], spent[32];
    format_duration(spent, sizeof spent, elapsed);
    if (p->total > 0 && rate > 0)
        format_duration(eta, sizeof eta, (double)(p->total - p->done) / rate);
    else
        snprintf(eta, sizeof eta, "--:--");
    if (p->tty) {
        char bar[31];
        int filled = p->total > 0 ? (int)(30.0 * (double)p->done / (double)p->total) : 0;
        for (int i = 0; i < 30; i++)
            bar[i] = i < filled ? '#' : '.';
        bar[30] = '\0';
        fprintf(stderr, "\r\033[K%s [%s] %lld/%lld %s  %.1f %s/s  %s<%s", p->label, bar,
                (long long)p->done, (long long)p->total, p->unit, rate, p->unit, spent, eta);
        progress_line_open = !final;
        if (final)
            fputc('\n', stderr);
    } else if (p->total > 0) {
        fprintf(stderr, "%s: %lld/%lld %s (%.1f%%), %.1f %s/s, elapsed %s, eta %s\n", p->label,
                (long long)p->done, (long long)p->total, p->unit,
                100.0 * (double)p->done / (double)p->total, rate, p->unit, spent, eta);
    } else {
        fprintf(stderr, "%s: %lld %s, %.1f %s/s, elapsed %s\n", p->label, (long long)p->done,
                p->unit, rate, p->unit, spent);
    }
    fflush(stderr);
}

void progress_update(progress *p, int64_t done)
{
    p->done = done;
    if (!p->active)
        return;
    double now = now_seconds();
    double every = p->tty ? 0.2 : p->interval;
    if (now - p->t_last < every)
        return;
    p->t_last = now;
    progress_draw(p, now, 0);
}

void progress_finish(progress *p)
{
    if (!p->active)
        return;
    progress_draw(p, now_seconds(), 1);
    p->active = 0;
}
