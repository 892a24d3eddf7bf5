/* test_grammar.c: the score grammar over the real Qwen3 vocabulary and over a synthetic one. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "grammar.h"
#include "tokenizer.h"
#include "util.h"

#define TOKENIZER_DIR "share/qwen3-tokenizer"
#define QWEN3_VOCAB 151936u

static tokenizer *tk;
static uint32_t im_end;

static void load_tokenizer(void)
{
    if (tk)
        return;
    cr_assert_eq(tokenizer_load(&tk, TOKENIZER_DIR), 0, "%s", err_msg());
    int64_t id = tokenizer_token_id(tk, "<|im_end|>");
    cr_assert(id >= 0);
    im_end = (uint32_t)id;
}

/* The id the tokenizer itself gives a one-token text. */
static uint32_t encode_one(const char *text)
{
    token_vec v = {0};
    cr_assert_eq(tokenizer_encode(tk, text, strlen(text), TOK_LITERAL, &v), 0);
    cr_assert_eq(v.n, 1, "'%s' encodes to %zu tokens", text, v.n);
    uint32_t id = v.ids[0];
    token_vec_free(&v);
    return id;
}

/* Decode the state's tokens and check the text is "<K ints in range, single spaces><|im_end|>"
 * equal to the recorded scores. */
static void check_answer(const score_grammar *g, const grammar_state *s)
{
    cr_assert(s->done);
    cr_assert_eq(s->n_scores, g->k);
    char *text;
    size_t len;
    cr_assert_eq(tokenizer_decode(tk, s->tokens, (size_t)s->n_tokens, &text, &len), 0);
    const char *end = "<|im_end|>";
    cr_assert(len > strlen(end) && strcmp(text + len - strlen(end), end) == 0, "'%s'", text);
    text[len - strlen(end)] = '\0';
    char want[3 * GRAMMAR_MAX_K + 1];
    grammar_answer_text(s, want, sizeof want);
    cr_assert_str_eq(text, want);
    /* parse back independently of the state */
    const char *p = text;
    for (int i = 0; i < g->k; i++) {
        cr_assert(*p >= '0' + g->score_min && *p <= '0' + g->score_max, "'%s'", text);
        cr_assert_eq(*p - '0', s->scores[i]);
        p++;
        if (i + 1 < g->k)
            cr_assert_eq(*p++, ' ', "'%s'", text);
    }
    cr_assert_eq(*p, '\0', "'%s'", text);
    free(text);
}

/* Walk every path of the automaton. Returns the number of complete answers. */
static int walk(const score_grammar *g, grammar_state *s,
                void (*check)(const score_grammar *, const grammar_state *))
{
    if (s->done) {
        check(g, s);
        return 1;
    }
    uint32_t ids[64];
    int n = grammar_allowed(g, s, ids, 64);
    cr_assert(n > 0 && n <= 64);
    cr_assert(s->n_tokens < grammar_max_tokens(g));
    int total = 0;
    for (int i = 0; i < n; i++) {
        grammar_state next = *s;
        cr_assert_eq(grammar_advance(g, &next, ids[i]), 0);
        total += walk(g, &next, check);
    }
    return total;
}

Test(grammar, qwen3_token_sets_match_the_tokenizer)
{
    load_tokenizer();
    score_grammar g;
    cr_assert_eq(grammar_init(&g, tk, 3, 0, 5, im_end, QWEN3_VOCAB), 0, "%s", err_msg());
    cr_assert_eq(g.n_digit, 6);
    for (int i = 0; i < g.n_digit; i++) {
        char d[2] = {(char)('0' + g.digit_vals[i]), 0};
        cr_assert_eq(g.digit_ids[i], encode_one(d));
    }
    cr_assert_eq(g.n_space, 1);
    token_vec v = {0};
    cr_assert_eq(tokenizer_encode(tk, "3 4", 3, TOK_LITERAL, &v), 0);
    cr_assert_eq(v.n, 3, "Qwen3 splits '3 4' into digit, space, digit");
    cr_assert_eq(v.ids[1], g.space_ids[0]);
    token_vec_free(&v);
    /* Qwen3's pre-tokenizer splits digits: no merged " <digit>" tokens exist */
    cr_assert_eq(g.n_space_digit, 0);
    grammar_free(&g);
}

Test(grammar, every_qwen3_path_is_a_well_formed_answer)
{
    load_tokenizer();
    int shapes[][3] = {{3, 0, 5}, {6, 1, 5}, {1, 0, 9}};
    int want[] = {216, 15625, 10};
    for (size_t c = 0; c < RB_ARRAY_LEN(shapes); c++) {
        score_grammar g;
        cr_assert_eq(grammar_init(&g, tk, shapes[c][0], shapes[c][1], shapes[c][2], im_end,
                                  QWEN3_VOCAB), 0, "%s", err_msg());
        grammar_state s;
        grammar_state_init(&s);
        cr_assert_eq(walk(&g, &s, check_answer), want[c]);
        grammar_free(&g);
    }
}

/* Plain greedy: argmax over the whole vocabulary, first index on ties. */
static uint32_t plain_argmax(const float *x, uint32_t n)
{
    uint32_t best = 0;
    for (uint32_t i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

static void random_logits(float *x, uint32_t n, unsigned *seed)
{
    for (uint32_t i = 0; i < n; i++)
        x[i] = (float)rand_r(seed) / (float)RAND_MAX * 4.0f - 2.0f;
}

Test(grammar, constrained_equals_plain_greedy_inside_the_grammar)
{
    load_tokenizer();
    score_grammar g;
    cr_assert_eq(grammar_init(&g, tk, 4, 0, 5, im_end, QWEN3_VOCAB), 0);
    float *logits = xmalloc(sizeof(float) * QWEN3_VOCAB);
    unsigned seed = 7;
    for (int trial = 0; trial < 40; trial++) {
        grammar_state s;
        grammar_state_init(&s);
        while (!s.done) {
            /* random logits where a random allowed id happens to be the global max */
            random_logits(logits, QWEN3_VOCAB, &seed);
            uint32_t ids[64];
            int n = grammar_allowed(&g, &s, ids, 64);
            uint32_t target = ids[rand_r(&seed) % (unsigned)n];
            logits[target] = 3.0f + (float)(trial % 3);
            uint32_t plain = plain_argmax(logits, QWEN3_VOCAB);
            cr_assert_eq(grammar_step(&g, &s, logits), plain);
        }
        cr_assert_eq(s.off_grammar, 0);
        check_answer(&g, &s);
    }
    free(logits);
    grammar_free(&g);
}

Test(grammar, off_grammar_is_flagged_and_answer_stays_well_formed)
{
    load_tokenizer();
    score_grammar g;
    cr_assert_eq(grammar_init(&g, tk, 3, 1, 5, im_end, QWEN3_VOCAB), 0);
    float *logits = xmalloc(sizeof(float) * QWEN3_VOCAB);
    uint32_t newline = encode_one("\n"), zero = encode_one("0"), four = encode_one("4");
    unsigned seed = 11;
    for (int bad_step = 0; bad_step < 6; bad_step++) {
        grammar_state s;
        grammar_state_init(&s);
        for (int step = 0; !s.done; step++) {
            random_logits(logits, QWEN3_VOCAB, &seed);
            uint32_t ids[64];
            int n = grammar_allowed(&g, &s, ids, 64);
            logits[ids[rand_r(&seed) % (unsigned)n]] = 5.0f;
            /* at bad_step plain greedy wants something else: a newline, or 0 (out of range) */
            if (step == bad_step) {
                logits[bad_step % 2 ? zero : newline] = 10.0f;
                logits[four] = 9.0f;  /* the best allowed digit when a digit is due */
            }
            uint32_t plain = plain_argmax(logits, QWEN3_VOCAB);
            uint32_t got = grammar_step(&g, &s, logits);
            cr_assert_eq(got == plain, step != bad_step, "step %d", step);
            if (step == bad_step && (step % 2) == 0)
                cr_assert_eq(got, four);
        }
        cr_assert_eq(s.off_grammar, 1, "bad step %d", bad_step);
        check_answer(&g, &s);
    }
    /* NaN logits never win, and never make an answer malformed */
    grammar_state s;
    grammar_state_init(&s);
    while (!s.done) {
        for (uint32_t i = 0; i < QWEN3_VOCAB; i++)
            logits[i] = NAN;
        grammar_step(&g, &s, logits);
    }
    check_answer(&g, &s);
    free(logits);
    grammar_free(&g);
}

/* A synthetic vocabulary with merged " <digit>" tokens and a duplicate digit. */
static const char *synthetic[] = {"a", "0", "1", "2", " ", " 1", " 2", "<end>", "  ", "2", "12",
                                  " x", "3"};

static const char *synthetic_text(void *ctx, uint32_t id) { return synthetic[id]; }

static void check_synthetic(const score_grammar *g, const grammar_state *s)
{
    char text[256] = "";
    for (int i = 0; i < s->n_tokens; i++)
        strcat(text, synthetic[s->tokens[i]]);
    char want[64];
    grammar_answer_text(s, want, sizeof want);
    strcat(want, "<end>");
    cr_assert_str_eq(text, want);
    cr_assert_eq(s->n_scores, g->k);
}

Test(grammar, merged_space_digit_tokens)
{
    score_grammar g;
    cr_assert_eq(grammar_init_from_texts(&g, synthetic_text, NULL, RB_ARRAY_LEN(synthetic), 3, 0,
                                         2, 7, 20), 0, "%s", err_msg());
    cr_assert_eq(g.n_digit, 4);       /* 0 1 2 and the second "2" */
    cr_assert_eq(g.n_space, 1);
    cr_assert_eq(g.n_space_digit, 2); /* " 1" " 2" */
    grammar_state s;
    grammar_state_init(&s);
    /* per separator: " " then 4 digit ids, or 2 merged ids: 6 ways; first digit: 4 ways */
    cr_assert_eq(walk(&g, &s, check_synthetic), 4 * 6 * 6);
    /* every id it can allow, once each, ascending: "0" "1" "2" " " " 1" " 2" <end> "2" */
    uint32_t all[16], want_all[] = {1, 2, 3, 4, 5, 6, 7, 9};
    cr_assert_eq(grammar_all_ids(&g, all, 16), 8);
    cr_assert_arr_eq(all, want_all, sizeof want_all);
    cr_assert_eq(grammar_all_ids(&g, all, 2), 8, "a short buffer still gets the count");
    grammar_free(&g);

    /* a range the vocabulary cannot express is a clear error */
    cr_assert_eq(grammar_init_from_texts(&g, synthetic_text, NULL, RB_ARRAY_LEN(synthetic), 3, 0,
                                         4, 7, 20), RB_EXIT_INPUT);
    cr_assert(strstr(err_msg(), "digit '4'"));
}

/* grammar_forced on Qwen3: a digit is never forced, the separator after a digit is, the end
 * token after the last digit is, and nothing once done; a vocabulary with merged " <digit>"
 * tokens has a choice after a digit, so nothing is forced there. */
Test(grammar, forced_tokens)
{
    load_tokenizer();
    score_grammar g;
    cr_assert_eq(grammar_init(&g, tk, 2, 0, 5, im_end, QWEN3_VOCAB), 0, "%s", err_msg());
    grammar_state s;
    grammar_state_init(&s);
    uint32_t id = 0;
    cr_assert_eq(grammar_forced(&g, &s, &id), 0, "the first digit is a choice");
    cr_assert_eq(grammar_advance(&g, &s, g.digit_ids[3]), 0);
    cr_assert_eq(grammar_forced(&g, &s, &id), 1);
    cr_assert_eq(id, g.space_ids[0]);
    cr_assert_eq(grammar_advance(&g, &s, id), 0);
    cr_assert_eq(grammar_forced(&g, &s, &id), 0, "the second digit is a choice");
    cr_assert_eq(grammar_advance(&g, &s, g.digit_ids[0]), 0);
    cr_assert_eq(grammar_forced(&g, &s, &id), 1);
    cr_assert_eq(id, im_end);
    cr_assert_eq(grammar_advance(&g, &s, id), 0);
    cr_assert(s.done);
    cr_assert_eq(grammar_forced(&g, &s, &id), 0, "nothing after the end");
    grammar_free(&g);

    cr_assert_eq(grammar_init_from_texts(&g, synthetic_text, NULL, RB_ARRAY_LEN(synthetic), 3, 0,
                                         2, 7, 20), 0, "%s", err_msg());
    grammar_state_init(&s);
    cr_assert_eq(grammar_advance(&g, &s, g.digit_ids[0]), 0);
    cr_assert_eq(grammar_forced(&g, &s, &id), 0, "' ' or a merged ' <digit>': a choice");
    grammar_free(&g);
}
