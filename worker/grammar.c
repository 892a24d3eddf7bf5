/* grammar.c: the score grammar automaton and constrained greedy decoding (see grammar.h). */
#include "grammar.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

/* The digit value of "d" with d in range, or -1. */
static int digit_of(const char *s, int lo, int hi)
{
    if (s[0] < '0' || s[0] > '9' || s[1] != '\0')
        return -1;
    int d = s[0] - '0';
    return d >= lo && d <= hi ? d : -1;
}

static void push_id(uint32_t **ids, int **vals, int *n, uint32_t id, int val)
{
    *ids = xrealloc(*ids, sizeof **ids * (size_t)(*n + 1));
    if (vals) {
        *vals = xrealloc(*vals, sizeof **vals * (size_t)(*n + 1));
        (*vals)[*n] = val;
    }
    (*ids)[(*n)++] = id;
}

/* Sort the token sets into the categories of the grammar. */
static void classify(score_grammar *g, uint32_t id, const char *text)
{
    int d;
    if (id == g->end_id)
        return;
    if ((d = digit_of(text, g->score_min, g->score_max)) >= 0)
        push_id(&g->digit_ids, &g->digit_vals, &g->n_digit, id, d);
    else if (strcmp(text, " ") == 0)
        push_id(&g->space_ids, NULL, &g->n_space, id, 0);
    else if (text[0] == ' ' && (d = digit_of(text + 1, g->score_min, g->score_max)) >= 0)
        push_id(&g->space_digit_ids, &g->space_digit_vals, &g->n_space_digit, id, d);
}

static int check_complete(const score_grammar *g)
{
    for (int v = g->score_min; v <= g->score_max; v++) {
        int found = 0;
        for (int i = 0; i < g->n_digit; i++)
            found |= g->digit_vals[i] == v;
        if (!found)
            return err_set(RB_EXIT_INPUT, "the vocabulary has no token for the digit '%d'", v);
    }
    if (g->k > 1 && g->n_space == 0 && g->n_space_digit == 0)
        return err_set(RB_EXIT_INPUT, "the vocabulary has no token for a single space");
    return 0;
}

int grammar_init_from_texts(score_grammar *g, grammar_text_fn text_of, void *ctx,
                            uint32_t n_ids, int k, int score_min, int score_max,
                            uint32_t end_id, uint32_t vocab)
{
    memset(g, 0, sizeof *g);
    if (k < 1 || k > GRAMMAR_MAX_K)
        return err_set(RB_EXIT_INPUT, "scores per row must be 1..%d, got %d", GRAMMAR_MAX_K, k);
    if (score_min < 0 || score_max > 9 || score_min > score_max)
        return err_set(RB_EXIT_INPUT, "the score grammar needs single digits: score range "
                       "%d..%d must lie within 0..9", score_min, score_max);
    if (end_id >= vocab || n_ids > vocab)
        return err_set(RB_EXIT_INPUT, "the end token id %u or the tokenizer's %u ids do not fit "
                       "the model's vocabulary of %u", end_id, n_ids, vocab);
    g->k = k;
    g->score_min = score_min;
    g->score_max = score_max;
    g->end_id = end_id;
    g->vocab = vocab;
    for (uint32_t id = 0; id < n_ids; id++) {
        const char *text = text_of(ctx, id);
        if (text)
            classify(g, id, text);
    }
    int rc = check_complete(g);
    if (rc)
        grammar_free(g);
    return rc;
}

typedef struct {
    const tokenizer *tk;
    char *last;
} tk_ctx;

static const char *tk_text(void *ctx, uint32_t id)
{
    tk_ctx *c = ctx;
    free(c->last);
    c->last = NULL;
    size_t len;
    if (tokenizer_decode(c->tk, &id, 1, &c->last, &len) != 0)
        return NULL;
    return strlen(c->last) == len ? c->last : NULL;
}

int grammar_init(score_grammar *g, const tokenizer *tk, int k, int score_min, int score_max,
                 uint32_t end_id, uint32_t vocab)
{
    tk_ctx c = {tk, NULL};
    int rc = grammar_init_from_texts(g, tk_text, &c, tokenizer_vocab_size(tk), k, score_min,
                                     score_max, end_id, vocab);
    free(c.last);
    return rc ? err_prefix(rc, "building the score grammar") : 0;
}

void grammar_free(score_grammar *g)
{
    free(g->digit_ids);
    free(g->digit_vals);
    free(g->space_ids);
    free(g->space_digit_ids);
    free(g->space_digit_vals);
    memset(g, 0, sizeof *g);
}

void grammar_state_init(grammar_state *s) { memset(s, 0, sizeof *s); }

int grammar_max_tokens(const score_grammar *g) { return 2 * g->k; }

/* ---- the automaton --------------------------------------------------------------------- */

enum { WANT_DIGIT, WANT_SEP_OR_END, WANT_DONE };

static int want(const score_grammar *g, const grammar_state *s)
{
    if (s->done)
        return WANT_DONE;
    if (s->n_scores == 0 || s->after_space)
        return WANT_DIGIT;
    return WANT_SEP_OR_END;
}

static int append(uint32_t *ids, int n, int cap, const uint32_t *src, int n_src)
{
    for (int i = 0; i < n_src; i++, n++)
        if (n < cap)
            ids[n] = src[i];
    return n;
}

int grammar_allowed(const score_grammar *g, const grammar_state *s, uint32_t *ids, int cap)
{
    switch (want(g, s)) {
    case WANT_DIGIT:
        return append(ids, 0, cap, g->digit_ids, g->n_digit);
    case WANT_SEP_OR_END:
        if (s->n_scores == g->k)
            return append(ids, 0, cap, &g->end_id, 1);
        return append(ids, append(ids, 0, cap, g->space_ids, g->n_space), cap,
                      g->space_digit_ids, g->n_space_digit);
    default:
        return 0;
    }
}

int grammar_forced(const score_grammar *g, const grammar_state *s, uint32_t *id)
{
    uint32_t ids[2];
    if (grammar_allowed(g, s, ids, 2) != 1)
        return 0;
    *id = ids[0];
    return 1;
}

static int find(const uint32_t *ids, int n, uint32_t id)
{
    for (int i = 0; i < n; i++)
        if (ids[i] == id)
            return i;
    return -1;
}

int grammar_accepts(const score_grammar *g, const grammar_state *s, uint32_t id)
{
    switch (want(g, s)) {
    case WANT_DIGIT:
        return find(g->digit_ids, g->n_digit, id) >= 0;
    case WANT_SEP_OR_END:
        if (s->n_scores == g->k)
            return id == g->end_id;
        return find(g->space_ids, g->n_space, id) >= 0 ||
               find(g->space_digit_ids, g->n_space_digit, id) >= 0;
    default:
        return 0;
    }
}

int grammar_advance(const score_grammar *g, grammar_state *s, uint32_t id)
{
    if (!grammar_accepts(g, s, id))
        return err_set(RB_EXIT_RUNTIME, "token %u is not allowed after %d scores", id,
                       s->n_scores);
    s->tokens[s->n_tokens++] = id;
    int i;
    if (want(g, s) == WANT_DIGIT) {
        i = find(g->digit_ids, g->n_digit, id);
        s->scores[s->n_scores++] = g->digit_vals[i];
        s->after_space = 0;
    } else if (id == g->end_id) {
        s->done = 1;
    } else if ((i = find(g->space_digit_ids, g->n_space_digit, id)) >= 0) {
        s->scores[s->n_scores++] = g->space_digit_vals[i];
    } else {
        s->after_space = 1;
    }
    return 0;
}

/* First index of the largest finite-or-infinite value (NaN never wins), or 0. */
static uint32_t argmax_all(const float *x, uint32_t n)
{
    uint32_t best = 0;
    float v = -INFINITY;
    int any = 0;
    for (uint32_t i = 0; i < n; i++)
        if (x[i] > v || (!any && !isnan(x[i]))) {
            v = x[i];
            best = i;
            any = 1;
        }
    return best;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

int grammar_all_ids(const score_grammar *g, uint32_t *ids, int cap)
{
    int total = g->n_digit + g->n_space + g->n_space_digit + 1;
    uint32_t *all = xmalloc(sizeof(uint32_t) * (size_t)total);
    int n = 0;
    for (int i = 0; i < g->n_digit; i++)
        all[n++] = g->digit_ids[i];
    for (int i = 0; i < g->n_space; i++)
        all[n++] = g->space_ids[i];
    for (int i = 0; i < g->n_space_digit; i++)
        all[n++] = g->space_digit_ids[i];
    all[n++] = g->end_id;
    qsort(all, (size_t)n, sizeof *all, cmp_u32);
    int u = 0;
    for (int i = 0; i < n; i++)
        if (u == 0 || all[i] != all[u - 1])
            all[u++] = all[i];
    for (int i = 0; i < u && i < cap; i++)
        ids[i] = all[i];
    free(all);
    return u;
}

uint32_t grammar_step(const score_grammar *g, grammar_state *s, const float *logits)
{
    uint32_t allowed[64];
    int n = grammar_allowed(g, s, allowed, (int)RB_ARRAY_LEN(allowed));
    if (n > (int)RB_ARRAY_LEN(allowed))
        n = (int)RB_ARRAY_LEN(allowed);

    /* the best allowed id; ties go to the lowest id, as in the unconstrained argmax */
    uint32_t pick = allowed[0];
    for (int i = 1; i < n; i++) {
        float a = logits[allowed[i]], b = logits[pick];
        if (a > b || (a == b && allowed[i] < pick) || (isnan(b) && !isnan(a)))
            pick = allowed[i];
    }

    /* would plain greedy have stayed in the grammar? (asked until the first time it would not) */
    if (!s->off_grammar && argmax_all(logits, g->vocab) != pick)
        s->off_grammar = 1;

    grammar_advance(g, s, pick);
    return pick;
}

int grammar_answer_text(const grammar_state *s, char *buf, size_t n)
{
    int at = 0;
    if (n > 0)
        buf[0] = '\0';
    for (int i = 0; i < s->n_scores && (size_t)at + 3 <= n; i++)
        at += snprintf(buf + at, n - (size_t)at, i ? " %d" : "%d", s->scores[i]);
    return at;
}
