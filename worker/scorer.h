/*
 * scorer.h: scoring rows on one worker: prompt encoding, a prefix KV cache, prefill of each
 * row's remainder with logits at the last position only, and greedy decoding under the score
 * grammar (worker/grammar.h).
 *
 * Prefix cache: every row of a dataset starts with the same rubric (the system turn). The KV
 * cache of that shared prefix (prompt_tokens.n_prefix tokens, at most all but the last prompt
 * token) is computed once and copied into each row's cache; only the rest of the row is
 * prefilled. One prefix is kept: a row with a different prefix replaces it. With the cache off
 * every row is prefilled whole; the scores are the same either way (tested).
 *
 * Decoding: the rows of a batch are prefilled together but their last prompt token (each from
 * its own cache, so no row attends to another; no logits, so the last layer only caches its
 * keys and values), then decoded together with model_extend_batch_sel, one pass per digit: a
 * row appends its newest token and, where the grammar forces the next one (the separator), that
 * one too, each stopping at the end token. A row already off the grammar gets the logits at the
 * grammar's ids only (scorer_options.full_logits: the whole vocabulary anyway).
 *
 * The backend interface (scorer_backend) lets the coordinator drive either this model scorer or
 * a fake one (coordinator/score.c, `--fake-model`, for tests of the data path at millions of
 * rows).
 */
#ifndef RUBRIC_SCORER_H
#define RUBRIC_SCORER_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "grammar.h"
#include "prompt.h"

/* One row's fields (not NUL-terminated). */
typedef struct {
    const char *instruction;
    size_t instruction_len;
    const char *input;
    size_t input_len;
} scorer_row;

/* One row's result. ok = 0: a row-level failure (too long, invalid text) described in error;
 * the row is reported as a bad row and the run goes on. */
typedef struct {
    int ok;
    int off_grammar;
    int n_scores;
    int scores[GRAMMAR_MAX_K];
    char error[256];
} scorer_result;

/* What a worker scores with. score_rows returns 0, or an exit code for a failure of the whole
 * worker (the run stops). */
typedef struct scorer_backend {
    int (*score_rows)(struct scorer_backend *b, const scorer_row *rows, int n,
                      scorer_result *out);
    void (*destroy)(struct scorer_backend *b);
} scorer_backend;

/* ---- the model scorer ---- */

typedef struct {
    const char *model_dir;      /* Hugging Face folder */
    const char *tokenizer_dir;  /* NULL: model_dir */
    const char *adapter;        /* checkpoint .h5 or PEFT folder/safetensors, or NULL */
    enum prompt_style style;
    const char *eos_token;      /* Alpaca style end token text, or NULL */
    int k, score_min, score_max;
    int batch_rows;             /* rows decoded together; default 8 */
    int prefix_cache;           /* 1: reuse the shared prefix's KV cache (default) */
    int full_logits;            /* 1: the whole vocabulary's logits at every pass, even for rows
                                 * already off the grammar (default 0: the grammar's ids only
                                 * there); the same answers either way */
    int max_prompt_tokens;      /* longer prompts are bad rows; 0: the model's maximum */
    const char *backend;        /* "cpu", "cuda" or "auto" */
    void *model;                /* a loaded `model *` to borrow (not freed) instead of loading
                                 * model_dir and adapter: scoring right after training */
} scorer_options;

void scorer_options_defaults(scorer_options *o);

typedef struct scorer scorer;

typedef struct {
    int64_t rows;
    int64_t prefix_hits;        /* rows that reused the cached prefix */
    int64_t prefix_builds;      /* prefixes computed */
    int64_t prefill_tokens;     /* tokens prefilled (prefixes included) */
    int64_t decode_steps;
    double prefill_seconds;     /* wall time in prefill (prefixes included) */
    double decode_seconds;      /* wall time in decoding (the LM head at every answer token) */
} scorer_stats;

/* Load the tokenizer, the model (and adapter) and build the grammar. Returns 0 or an exit
 * code. */
int scorer_new(scorer **out, const scorer_options *o);
void scorer_free(scorer *s);

/* Score n rows (any n; batched internally). */
int scorer_score(scorer *s, const scorer_row *rows, int n, scorer_result *out);
/* Score rows already encoded (tests). */
int scorer_score_tokens(scorer *s, const prompt_tokens *rows, int n, scorer_result *out);
void scorer_get_stats(const scorer *s, scorer_stats *st);
/* The grammar in use (tests and the coordinator's text rendering). */
const score_grammar *scorer_grammar(const scorer *s);
/* The loaded model (tests): a `model *` (worker/model.h). */
void *scorer_model(scorer *s);
const prompt_encoder *scorer_encoder(const scorer *s);

/* The config a rubric checkpoint (.h5) was trained with (its stored YAML), for the prompt
 * style, score range, LoRA shape and base model. Free with config_free(). */
int scorer_adapter_config(const char *ckpt_path, rubric_config *cfg);
/* The scores per row a rubric checkpoint's training data had (0: free text, unreadable, or a
 * checkpoint from before rubric recorded it). */
int scorer_adapter_scores(const char *ckpt_path);

/* Wrap a scorer as a backend (the backend owns it). */
scorer_backend *scorer_backend_new(scorer *s);

#endif
