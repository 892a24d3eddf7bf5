/*
 * grammar.h: the score grammar as a small automaton over token ids, and greedy decoding under it.
 *
 * An answer is K scores, each one digit in [score_min, score_max], separated by single spaces,
 * then the end token (<|im_end|>):      d ( " " d ){K-1} <end>
 *
 * The token sets are built from the vocabulary by decoding every id: the ids that decode to
 * exactly one allowed digit, to exactly " ", and to " <digit>" (a merged space+digit token; the
 * Qwen3 vocabulary has none, since its pre-tokenizer splits digits, but other vocabularies may).
 * A merged token counts as a separator and a digit. Every path through the automaton decodes to
 * a well-formed answer of K ints.
 *
 * At each step the decoder takes the argmax of the logits over the allowed ids only (ties: the
 * lowest id, as torch.argmax), and also checks the unconstrained argmax over the whole
 * vocabulary: a row is flagged off-grammar when, at any step, plain greedy decoding would have
 * picked a token outside the allowed set. Where plain greedy stays in the grammar, the
 * constrained answer is exactly the plain greedy one.
 */
#ifndef RUBRIC_GRAMMAR_H
#define RUBRIC_GRAMMAR_H

#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"

#define GRAMMAR_MAX_K 64

typedef struct {
    int k, score_min, score_max;
    uint32_t end_id;
    uint32_t vocab;          /* logits per row the decoder expects (>= every id) */
    /* ids decoding to one allowed digit, with their value */
    uint32_t *digit_ids;
    int *digit_vals;
    int n_digit;
    /* ids decoding to " " */
    uint32_t *space_ids;
    int n_space;
    /* ids decoding to " <digit>" with an allowed digit, with their value */
    uint32_t *space_digit_ids;
    int *space_digit_vals;
    int n_space_digit;
} score_grammar;

/* Where one row is in the automaton. */
typedef struct {
    int n_scores;            /* digits emitted so far */
    int after_space;         /* a separator was emitted and a digit is due */
    int done;                /* the end token was emitted */
    int off_grammar;         /* plain greedy left the grammar at some step */
    int n_tokens;
    int scores[GRAMMAR_MAX_K];
    uint32_t tokens[2 * GRAMMAR_MAX_K];
} grammar_state;

/*
 * Build the grammar from a tokenizer: k scores in [score_min, score_max] (0..9), end token
 * end_id. vocab: the logits width (the model's vocab_size, which may exceed the tokenizer's).
 * Returns 0, or RB_EXIT_INPUT when an allowed digit or the space has no token, or k/range is
 * out of bounds.
 */
int grammar_init(score_grammar *g, const tokenizer *tk, int k, int score_min, int score_max,
                 uint32_t end_id, uint32_t vocab);

/* The same from a function giving each id's decoded text (tests, other vocabularies). text_of
 * returns a string valid until the next call, or NULL for an id with no text. */
typedef const char *(*grammar_text_fn)(void *ctx, uint32_t id);
int grammar_init_from_texts(score_grammar *g, grammar_text_fn text_of, void *ctx,
                            uint32_t n_ids, int k, int score_min, int score_max,
                            uint32_t end_id, uint32_t vocab);
void grammar_free(score_grammar *g);

void grammar_state_init(grammar_state *s);

/* The ids allowed next (none once done). Writes at most `cap` ids; returns how many exist. */
int grammar_allowed(const score_grammar *g, const grammar_state *s, uint32_t *ids, int cap);
/* 1 when exactly one id is allowed next (the separator after a digit, or the end token after
 * the last score), written to *id; 0 otherwise (a choice is due, or the answer is done). */
int grammar_forced(const score_grammar *g, const grammar_state *s, uint32_t *id);
/* 1 when id is allowed next. */
int grammar_accepts(const score_grammar *g, const grammar_state *s, uint32_t id);

/* Every id the grammar ever allows (digits, separators, the end token), each once, ascending.
 * Writes at most `cap` ids; returns how many exist. */
int grammar_all_ids(const score_grammar *g, uint32_t *ids, int cap);

/* One greedy step: pick the best allowed id from logits [g->vocab], update the off-grammar flag,
 * advance the state, and return the id. Must not be called once s->done. A row already flagged
 * off-grammar stays so: its step reads the logits at the allowed ids only (the rest of the row
 * need not be computed). */
uint32_t grammar_step(const score_grammar *g, grammar_state *s, const float *logits);
/* Advance by a given (allowed) id; returns 0, or RB_EXIT_RUNTIME when it is not allowed. */
int grammar_advance(const score_grammar *g, grammar_state *s, uint32_t id);

/* The most tokens an answer takes: K digits, K-1 separators, the end token. */
int grammar_max_tokens(const score_grammar *g);

/* The answer's text "3 4 2" (without the end token) into buf; returns its length. */
int grammar_answer_text(const grammar_state *s, char *buf, size_t n);

#endif
