/*
 * log.h: levelled logging for every rank, and the progress display.
 *
 * Messages go to stderr as "rubric: <level>: <text>"; a worker's carry "[rank N]". By default
 * only rank 0 prints info and debug; warnings and errors print on every rank.
 */
#ifndef RUBRIC_LOG_H
#define RUBRIC_LOG_H

#include <stdint.h>

#include "util.h"

enum log_level { LOG_ERROR = 0, LOG_WARN = 1, LOG_INFO = 2, LOG_DEBUG = 3 };

/* Set this process's rank (-1 when not under MPI) and the level. */
void log_init(int rank, enum log_level level);
void log_set_level(enum log_level level);
enum log_level log_get_level(void);
/* Parse "error", "warn", "info" or "debug"; returns -1 when unknown. */
int log_level_parse(const char *name);
/* Let workers print info too (--log-all-ranks). */
void log_set_all_ranks(int on);

void log_msg(enum log_level level, const char *fmt, ...) RB_PRINTF(2, 3);
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)

/*
 * A progress display for a long loop on rank 0: a bar with rate and ETA redrawn in place when
 * stderr is a terminal, a plain line every `interval` seconds otherwise (Slurm log files).
 */
typedef struct {
    const char *label;
    const char *unit;
    int64_t total;    /* 0 when unknown */
    int64_t done;
    int64_t base;     /* done before this run (a resume): left out of the rate */
    double t_start;
    double t_last;
    double interval;  /* seconds between plain lines */
    int tty;
    int active;
} progress;

void progress_start(progress *p, const char *label, int64_t total, const char *unit);
void progress_update(progress *p, int64_t done);
void progress_finish(progress *p);

#endif
