/*
 * metrics.h: scoring metrics from (truth, prediction) score vectors, accumulated a row at a time.
 *
 * A row has K scores (positions), each an integer in [score_min, score_max]. The accumulator
 * holds only integer counts: per row kind (scored, bad, unlabelled, off-grammar, exact match)
 * and, per position, the confusion matrix truth x prediction. Every metric is derived from those
 * counts, so two accumulators merge by adding counts (metrics_merge, or an MPI_SUM reduction of
 * metrics_acc.counts as int64), and the result does not depend on the order rows arrived in.
 *
 * Derived metrics (metrics_compute):
 *   exact_match        rows with all K scores right / scored rows
 *   accuracy           right answers / answers (all positions pooled; and per position)
 *   off_by_one         answers with |truth - prediction| <= 1 / answers (pooled; per position)
 *   mae                mean |truth - prediction| (pooled; per position)
 *   pearson            Pearson r between truth and prediction (pooled over all answers; and
 *                      per position). Undefined, with a reason, when there are fewer than 3
 *                      rows or either side is constant.
 *   off_grammar_rate   scored rows whose unconstrained greedy answer left the grammar / rows
 * A metric with no rows to average over is undefined too ("no scored rows").
 *
 * The majority baseline predicts, at each position, the most common truth score of a reference
 * set (ties: the lowest score); metrics_baseline_modes() finds it from an accumulator fed with
 * that set, and the baseline is scored by feeding (truth, modes) rows to a second accumulator.
 */
#ifndef RUBRIC_METRICS_H
#define RUBRIC_METRICS_H

#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#define METRICS_MAX_K 64
#define METRICS_MAX_RANGE 32 /* score_max - score_min + 1 */

/* Indices of the row counters at the start of metrics_acc.counts. */
enum {
    METRICS_ROWS = 0,      /* rows scored (truth and prediction both valid) */
    METRICS_BAD,           /* rows without a usable prediction or truth */
    METRICS_UNLABELLED,    /* rows with a prediction but no truth */
    METRICS_OFF_GRAMMAR,   /* scored rows flagged off-grammar */
    METRICS_EXACT,         /* scored rows with every position right */
    METRICS_N_HEADER,
};

typedef struct {
    int k;               /* scores per row */
    int score_min, score_max;
    int range;           /* score_max - score_min + 1 */
    /* METRICS_N_HEADER row counters, then K confusion matrices of range x range (row: truth,
     * column: prediction, both offset by score_min). */
    int64_t *counts;
    int64_t n_counts;
} metrics_acc;

/* One derived value: defined, or undefined with a reason (never NaN). */
typedef struct {
    int defined;
    double value;
    const char *reason;  /* static string when !defined */
} metric_value;

typedef struct {
    metric_value accuracy, off_by_one, mae, pearson;
} metrics_stats;

typedef struct {
    int k, score_min, score_max;
    int64_t rows, bad_rows, unlabelled_rows, off_grammar_rows, exact_rows;
    metric_value exact_match, off_grammar_rate;
    metrics_stats overall;
    metrics_stats position[METRICS_MAX_K];
} metrics_result;

/* Set up an empty accumulator. Returns 0, or RB_EXIT_INPUT when k or the range is out of
 * bounds (1..METRICS_MAX_K, 1..METRICS_MAX_RANGE). */
int metrics_init(metrics_acc *m, int k, int score_min, int score_max);
void metrics_free(metrics_acc *m);
void metrics_reset(metrics_acc *m);

/* Add one scored row. Returns 0, or RB_EXIT_INPUT (nothing added) when a score is out of
 * range: the caller decides whether that row is then bad. */
int metrics_add_row(metrics_acc *m, const int *truth, const int *pred, int off_grammar);
void metrics_add_bad(metrics_acc *m);
void metrics_add_unlabelled(metrics_acc *m);

/* dst += src. Returns 0, or RB_EXIT_RUNTIME when the shapes differ. */
int metrics_merge(metrics_acc *dst, const metrics_acc *src);

/* Derive every metric from the counts. */
void metrics_compute(const metrics_acc *m, metrics_result *r);

/* Per position, the most common truth score (ties: the lowest); score_min where a position saw
 * no rows. modes has m->k entries. */
void metrics_baseline_modes(const metrics_acc *m, int *modes);

/* The confusion count at (position, truth score, predicted score). */
int64_t metrics_confusion(const metrics_acc *m, int position, int truth, int pred);

/* A readable table: the overall metrics, then one line per position, then (when baseline is
 * not NULL) the majority baseline next to the model. baseline NULL with baseline_undefined
 * set: the baseline is reported as undefined, for that reason (a reference set without a
 * usable row). */
void metrics_print(FILE *out, const metrics_acc *m, const metrics_acc *baseline,
                   const int *baseline_modes, const char *baseline_undefined);

/* The metrics as JSON: undefined values are null, with their reason in an "undefined" object
 * beside them. baseline may be NULL: with baseline_undefined, "majority_baseline" is null
 * and the reason is under "undefined"; without, there is no "majority_baseline". */
json_t *metrics_to_json(const metrics_acc *m, const metrics_acc *baseline,
                        const int *baseline_modes, const char *baseline_undefined);
/* Write metrics_to_json() to path (atomic). Returns 0 or RB_EXIT_RUNTIME. */
int metrics_write_json(const char *path, const metrics_acc *m, const metrics_acc *baseline,
                       const int *baseline_modes, const char *baseline_undefined);

#endif
