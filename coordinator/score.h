/*
 * score.h: data-parallel batch scoring (`rubric score`), rank 0's side and the workers' loop.
 *
 * Rank 0 streams the input JSONL a line at a time (never the whole file), cuts it into chunks of
 * chunk_rows consecutive rows and hands a chunk to whichever worker asks (each worker holds one
 * chunk at a time, so a slow worker never stalls the others). Workers parse and score the rows
 * and send back finished output lines. Rank 0 reorders the chunks into input order in a window
 * of window_chunks chunks (bounded memory: a worker only gets chunk c once c < oldest unwritten
 * chunk + window) and appends them to <output>.partial.
 *
 * Output: one JSON object per input line, in input order:
 *   {"row": 0, "scores": [3, 4, 2], "text": "3 4 2", "status": "ok"}
 *   status "ok", "off_grammar" (the scores are the constrained answer; plain greedy decoding
 *   would have left the grammar) or "bad_row" (scores and text null, "error" says why).
 * "row" is the 0-based index of the line in the input file.
 *
 * Crash safety: <output>.journal starts with a JSON header (input, its size, chunk size, the
 * score shape, model, adapter) and gets one "commit <rows> <bytes>" line per written chunk, each
 * fsync'd after the partial output it describes. --resume checks the header, truncates the
 * partial output to the last commit and goes on from that row, so the finished output equals
 * an uninterrupted run's. At the end the partial output is renamed to <output>, the journal
 * removed, and the metrics computed from the input's "output" fields (when present).
 *
 * Without mpirun (one process) rank 0 scores the chunks itself.
 */
#ifndef RUBRIC_SCORE_H
#define RUBRIC_SCORE_H

#include <signal.h>
#include <stdint.h>

#include "config.h"
#include "prep.h"
#include "prompt.h"

typedef struct {
    const char *model_dir;
    const char *tokenizer_dir;  /* NULL: model_dir */
    const char *adapter;        /* NULL: base model only */
    const char *input;
    const char *output;
    const char *metrics_path;   /* NULL: metrics.json next to the output */
    const char *baseline_from;  /* reference set for the majority baseline (NULL: the input) */
    const char *backend;        /* "cpu", "cuda", "auto" */
    int resume;
    int k;                      /* scores per row; 0: inferred from the input as prep does */
    int score_min, score_max;
    int chunk_rows;             /* rows per chunk handed to a worker (default 64) */
    int batch_rows;             /* rows decoded together on a worker (score_batch_size) */
    int window_chunks;          /* reorder window; 0: 4 per worker, at least 16 */
    int prefix_cache;           /* 1 (default) */
    int full_logits;            /* 1: whole-vocabulary logits for every row at every pass */
    int max_prompt_tokens;      /* 0: the model's maximum */
    enum prompt_style style;
    const char *eos_token;
    double gpu_hour_cost;       /* > 0: log the cost per million rows */
    double worker_timeout_s;    /* base of rank 0's wait for a worker holding a chunk
                                 * (default SCORE_WORKER_TIMEOUT_S; see score_chunk_timeout) */
    void *model;                /* workers: a loaded `model *` to score with instead of
                                 * loading model_dir/adapter (rubric train's score_after_train
                                 * passes its trained model); the tokenizer still comes from
                                 * tokenizer_dir or model_dir */
    /* testing: a fake model whose scores are a hash of the row (no tokenizer, no model) */
    int fake_model;
    int fake_delay_us;          /* per row, to make the fake model slow */
} score_options;

/*
 * A worker that hangs must not hang the job. Rank 0 waits for a worker holding a chunk at most
 * worker_timeout_s + 5 x the slowest chunk so far (any worker's); for a worker's first chunk,
 * and for the workers to load the model, at least SCORE_FIRST_CHUNK_TIMEOUT_S (a real model
 * on CPUs can take minutes for both). Past that, rank 0 names the rank and the chunk and ends
 * the job with MPI_Abort (exit 1); the journal keeps what was written, for --resume.
 */
#define SCORE_WORKER_TIMEOUT_S 300.0
#define SCORE_FIRST_CHUNK_TIMEOUT_S 1800.0

/* The wait for a chunk: first is 1 for a worker's first chunk (or the model load),
 * slowest_chunk_s the slowest chunk measured so far (0: none yet). */
double score_chunk_timeout(double worker_timeout_s, int first, double slowest_chunk_s);

/* Set once rank 0 has opened the output (rows may be kept for --resume); before that a stop
 * leaves nothing to resume. Read by the signal handler of cmd_score. */
extern volatile sig_atomic_t score_output_open;

/* Defaults, then the scoring keys of a resolved config (score range, batch size, prompt style,
 * tokenizer, gpu_hour_cost). */
void score_options_defaults(score_options *o);
int score_options_from_config(score_options *o, const rubric_config *cfg);

/*
 * Run the whole scoring job on every rank of MPI_COMM_WORLD (MPI already initialised): rank 0
 * coordinates, ranks 1.. score. Returns 0 or an exit code (the same on every rank for input
 * problems found before scoring starts; a failure mid-run ends the job with rb_die).
 */
int score_run(const score_options *o);

/*
 * The metrics pass: read the input's "output" fields and the predictions line by line, and
 * print and write the metrics (with the majority baseline) to metrics_path. Rows without an
 * "output" are counted as unlabelled; when no row has one, nothing is written and *labelled is
 * 0. Returns 0 or an exit code.
 */
int score_metrics(const score_options *o, const char *preds_path, const char *metrics_path,
                  int *labelled);

/* Parse a truth answer text[0..len) into scores by rubric prep's rule (prep_score_shape:
 * "3 4 2", integers separated by single spaces, nothing around them), k of them, each in
 * score_min..score_max. Returns 0, or RB_EXIT_INPUT with the reason (err_set); *not_a_score
 * (when given) is 1 when the text is not that shape at all (prep's not_a_score). */
int score_parse_answer(prep_score_shape *shape, const char *text, size_t len, int k,
                       int score_min, int score_max, int *scores, int *not_a_score);

/* The default metrics path for an output path: metrics.json in the output's folder. */
char *score_default_metrics_path(const char *output);
/* The metrics file (--metrics, or the default beside --output) is neither the input, the
 * output, one of its side files, nor a directory. Returns 0 or RB_EXIT_INPUT. */
int score_check_metrics_path(const score_options *o);
/* --baseline-from, when given, is a readable regular file (the checks of --input). Returns 0
 * or RB_EXIT_INPUT. */
int score_check_baseline_path(const score_options *o);
/* --adapter names a file (a folder gets a clear error: a PEFT folder says how to use it).
 * Returns 0 or RB_EXIT_INPUT. */
int score_check_adapter_path(const char *adapter);

#endif
