/*
 * prep.h: dataset preparation (rubric prep), the prepared-dataset cache, packing, the per-worker
 * schedule, and building packed micro-batches.
 *
 * Pipeline (rank 0): read every dataset file line by line -> validate (jsonl.h reasons, then
 * missing_field / field_not_string) -> exact dedup (XXH3-128 of the row's key-sorted compact
 * ASCII JSON; the first copy is kept) -> render + tokenize (prompt.h) -> length filter (prompt +
 * answer > sequence_len: dropped, never truncated) -> score check (see docs/prep.md) -> split
 * train/val from `seed` -> first-fit-decreasing packing -> one HDF5 file
 * <dataset_prepared_path>/<fingerprint>.h5, written atomically, plus report.json and
 * rejects.jsonl next to it. A later run with the same fingerprint reuses the file.
 *
 * Readers (every rank): prep_dataset_open the file, make a prep_schedule, and for each
 * (epoch, step, worker) get the bin ids of each micro-batch and prep_build_batch them.
 */
#ifndef RUBRIC_PREP_H
#define RUBRIC_PREP_H

#include <stdint.h>

#include "batch.h"
#include "config.h"
#include "tokenizer.h"

#define PREP_FORMAT_VERSION 1

/* Why a row was rejected (the "reason" of rejects.jsonl). The first five are jsonl.h's. */
enum prep_reason {
    PREP_BLANK_LINE = 1,
    PREP_BOM,
    PREP_INVALID_UTF8,
    PREP_NOT_JSON,
    PREP_NOT_OBJECT,
    PREP_MISSING_FIELD,
    PREP_FIELD_NOT_STRING,
    PREP_NOT_A_SCORE,        /* score dataset: output is not integers separated by one space */
    PREP_SCORE_OUT_OF_RANGE, /* score dataset: a score outside score_min..score_max */
    PREP_SCORE_COUNT,        /* score dataset: not the dataset's number of scores per row */
    PREP_N_REASONS
};

const char *prep_reason_name(int reason);

/* Score counts above this are counted together (as this many) when picking the mode. */
#define PREP_MAX_SCORE_COUNT 64

/* The number of scores per row of a score dataset, from counts[c] = rows whose output is c
 * in-range scores (c = 1..PREP_MAX_SCORE_COUNT): the most common count; of a tie, the
 * smallest; 0 when no row counts. `rubric score` infers K from its input with the same rule. */
int prep_score_count_mode(const int64_t *counts);

/* The shape of a score answer, one definition for prep and score: integers separated by
 * single spaces (^[0-9]+( [0-9]+)*$, PCRE2). One object per thread (it holds match data). */
typedef struct prep_score_shape prep_score_shape;
prep_score_shape *prep_score_shape_new(void); /* NULL (err_set) when PCRE2 fails */
void prep_score_shape_free(prep_score_shape *sh);
/* How many scores s[0..n) holds, 0 when it is not that shape; *in_range: all in lo..hi. */
int prep_score_shape_count(prep_score_shape *sh, const char *s, size_t n, int lo, int hi,
                           int *in_range);
/* The same, also storing the first max of the scores in scores[] (the values, in order). */
int prep_score_shape_values(prep_score_shape *sh, const char *s, size_t n, int lo, int hi,
                            int *in_range, int *scores, int max);

typedef struct {
    int64_t rows_read;                  /* physical lines of all files */
    int64_t rejected[PREP_N_REASONS];   /* by reason (index 0 unused) */
    int64_t rejected_total;
    int64_t duplicates;
    int64_t too_long;
    int64_t no_supervised;
    int64_t kept;
    int64_t train_rows, val_rows;
    int64_t tokens_total;               /* of kept rows, prompt + answer */
    int64_t tokens_supervised;
    int64_t train_bins, val_bins;
    double packing_efficiency;          /* train tokens / (train bins * sequence_len) */
    int score_dataset;                  /* 1 when the outputs are scores */
    int n_scores;                       /* scores per row (score datasets) */
    int64_t max_len;                    /* longest kept sample */
    double seconds;                     /* the build (0 when the cache was reused) */
    double rows_per_s;
    int cache_reused;
    /* "FILE:LINE: reason: detail" of the first rejected row ("" when none): what a strict
     * build stops at, kept in the report so a strict run reusing the cache fails the same way */
    char first_reject[2048];
    int first_reject_file;              /* its dataset's index in the config */
    int first_reject_at;                /* where "LINE: ..." starts in first_reject */
} prep_stats;

/* Run the pipeline, or reuse the cache when its fingerprint matches. *cache_path (malloc'ed)
 * names the HDF5 file. Returns 0, RB_EXIT_INPUT (bad data, strict mode, nothing usable) or
 * RB_EXIT_RUNTIME. */
int prep_run(const rubric_config *cfg, const tokenizer *tk, char **cache_path,
             prep_stats *stats);

/* The cache path this config and tokenizer map to (hashes the input files). */
int prep_cache_path(const rubric_config *cfg, const tokenizer *tk, char **path);

/* Print the report table (stdout) and return it as JSON (caller json_decref's). */
void prep_stats_print(const prep_stats *st, const char *cache_path);
char *prep_stats_to_json(const prep_stats *st, const char *cache_path);

/* 1 when path is an HDF5 file written by rubric prep (it carries the fingerprint and report
 * attributes), else 0. Never sets an error. */
int prep_is_dataset_file(const char *path);

/* Print a prepared dataset readably (rubric inspect): fingerprint, format version,
 * sequence_len, packing, samples, bins, tokens, scores per row and the report of its build.
 * The file is opened and checked as training opens it. Returns 0 or RB_EXIT_INPUT. */
int prep_dataset_print(const char *path);

/* ---- the prepared dataset, as every rank reads it ---------------------------------------- */

typedef struct {
    int32_t sequence_len;
    int32_t sample_packing;
    uint32_t pad_id;
    int32_t n_scores;          /* 0 for free-text datasets */
    int64_t n_samples;         /* kept rows, in input order (files in config order) */
    /* per sample (in input order) */
    int32_t *prefix_id;        /* index into the shared prefixes */
    int32_t *prefix_len;       /* tokens taken from the prefix */
    int64_t *suffix_offset;    /* into tokens */
    int32_t *len;              /* total tokens: prefix_len + own tokens */
    int32_t *sup_start;        /* tokens [sup_start, len) are supervised */
    uint8_t *split;            /* 0 train, 1 val */
    int32_t *file_index;       /* which dataset file */
    int64_t *line;             /* its physical line */
    /* token storage */
    uint32_t *tokens;          /* rows' own tokens, after their prefix; NULL when they are read
                                  from the file a sample at a time (see prep_dataset_open_ex) */
    int64_t n_tokens;
    int64_t h5_file, h5_tokens; /* open HDF5 ids in that case, else 0 */
    uint32_t *prefix_tokens;
    int64_t *prefix_offsets;   /* [n_prefixes + 1] */
    int64_t n_prefixes;
    /* bins: train bins [0, n_train_bins), then val bins */
    int64_t n_bins, n_train_bins;
    int64_t *bin_offsets;      /* [n_bins + 1] into bin_samples */
    int64_t *bin_samples;
    int64_t *bin_tokens;       /* [n_bins] tokens in each bin */
} prep_dataset;

/* Tokens up to this size are read into memory; larger datasets are read per sample. */
#define PREP_RESIDENT_TOKEN_BYTES ((int64_t)1 << 30)

/* Open a prepared dataset (every rank may). Everything but the tokens is read into memory
 * (about 50 bytes per sample and 24 per bin); the tokens too when they fit
 * PREP_RESIDENT_TOKEN_BYTES. Reading per sample goes through the serial HDF5 library: then
 * prep_sample_tokens / prep_build_batch must not be called from several threads at once. */
int prep_dataset_open(prep_dataset **out, const char *path);
int prep_dataset_open_ex(prep_dataset **out, const char *path, int64_t max_resident_bytes);
void prep_dataset_close(prep_dataset *ds);

/* Copy the tokens of sample i into out[0..len) (out must hold ds->len[i]). */
void prep_sample_tokens(const prep_dataset *ds, int64_t i, uint32_t *out);

/* ---- the schedule ------------------------------------------------------------------------ */

/*
 * Each optimizer step takes n_workers * grad_accum * micro_batch_size train bins from the
 * epoch's order (bins shuffled with XXH3 keys seeded by seed + epoch); every worker gets
 * grad_accum micro-batches of micro_batch_size bins. Bins are dealt to workers by greedy LPT on
 * token counts (largest first to the least-loaded worker with room), then within a worker to its
 * micro-batches the same way. The last step of an epoch is filled with empty bins (-1), which
 * prep_build_batch turns into padding, so every worker always runs the same number of
 * micro-batches and every sample is seen exactly once per epoch.
 */
typedef struct {
    const prep_dataset *ds;
    int n_workers, grad_accum, micro_batch_size;
    uint64_t seed;
    int64_t bins_per_step;
    int64_t steps_per_epoch;
    int cached_epoch;
    int64_t *order;            /* the cached epoch's bin order */
} prep_schedule;

int prep_schedule_init(prep_schedule *s, const prep_dataset *ds, int n_workers,
                       int grad_accum, int micro_batch_size, uint64_t seed);
void prep_schedule_free(prep_schedule *s);
/* bins[m * micro_batch_size + j]: bin j of micro-batch m of (epoch, step) on worker; -1 empty.
 * bins holds grad_accum * micro_batch_size entries. Returns 0 or RB_EXIT_INPUT (out of range).*/
int prep_schedule_step(prep_schedule *s, int epoch, int64_t step, int worker, int64_t *bins);

/*
 * Build one micro-batch from n_bins bins (-1: an empty bin) into b (allocated here; free with
 * packed_batch_free). Each bin is one sequence of seq_len tokens: sequence_len when packing,
 * else the longest sample rounded up to 64 (at most sequence_len). Every sample is a segment
 * with positions from 0; the rest of a sequence is one padding segment (pad_id, no targets).
 * targets[t] = tokens[t + 1] when token t + 1 is supervised and in the same segment, else -1.
 */
void prep_build_batch(const prep_dataset *ds, const int64_t *bins, int n_bins,
                      packed_batch *b);

#endif
