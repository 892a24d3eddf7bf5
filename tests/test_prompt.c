/* test_prompt.c: prompt rendering and encoding against Hugging Face references
 * (tests/fixtures/prep/prompt_cases.jsonl, made by tests/ref/gen_prep_fixtures.py with
 * transformers' apply_chat_template and the HF tokenizer). */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "prompt.h"
#include "tokenizer.h"
#include "util.h"

#define CASES "tests/fixtures/prep/prompt_cases.jsonl"
#define TOKDIR "share/qwen3-tokenizer"

static json_t **load_cases(int *n)
{
    char *text;
    size_t len;
    cr_assert_eq(read_file(CASES, &text, &len), 0, "%s", err_msg());
    json_t **cases = NULL;
    *n = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        json_error_t e;
        json_t *c = json_loads(line, 0, &e);
        cr_assert(c, "fixture: %s", e.text);
        cases = xrealloc(cases, (size_t)(*n + 1) * sizeof *cases);
        cases[(*n)++] = c;
    }
    free(text);
    cr_assert_gt(*n, 5);
    return cases;
}

static const char *field(json_t *c, const char *k)
{
    json_t *v = json_object_get(c, k);
    cr_assert(json_is_string(v), "fixture field %s", k);
    return json_string_value(v);
}

static size_t field_len(json_t *c, const char *k)
{
    return json_string_length(json_object_get(c, k));
}

static void assert_ids(const uint32_t *got, size_t n_got, json_t *want, size_t n_want,
                       const char *what, int i)
{
    cr_assert_eq(n_got, n_want, "case %d %s: %zu ids, HF has %zu", i, what, n_got, n_want);
    for (size_t t = 0; t < n_want; t++)
        cr_assert_eq(got[t], (uint32_t)json_integer_value(json_array_get(want, t)),
                     "case %d %s: id %zu differs", i, what, t);
}

Test(prompt, qwen3_text_matches_apply_chat_template)
{
    int n;
    json_t **cases = load_cases(&n);
    for (int i = 0; i < n; i++) {
        json_t *c = cases[i];
        size_t len;
        char *p = prompt_render_prompt(PROMPT_STYLE_QWEN3, field(c, "instruction"),
                                       field(c, "input"), &len);
        cr_assert_str_eq(p, field(c, "qwen3_prompt"), "case %d prompt", i);
        cr_assert_eq(len, strlen(p));
        char *f = prompt_render_full(PROMPT_STYLE_QWEN3, field(c, "instruction"),
                                     field(c, "input"), field(c, "output"), NULL);
        cr_assert_str_eq(f, field(c, "qwen3_full"), "case %d full conversation", i);
        free(p);
        free(f);
        json_decref(c);
    }
    free(cases);
}

Test(prompt, alpaca_text_matches_axolotl)
{
    int n;
    json_t **cases = load_cases(&n);
    for (int i = 0; i < n; i++) {
        json_t *c = cases[i];
        char *p = prompt_render_prompt(PROMPT_STYLE_ALPACA, field(c, "instruction"),
                                       field(c, "input"), NULL);
        cr_assert_str_eq(p, field(c, "alpaca_prompt"), "case %d", i);
        free(p);
        json_decref(c);
    }
    free(cases);
}

Test(prompt, qwen3_ids_and_labels_match_hf)
{
    tokenizer *tk;
    cr_assert_eq(tokenizer_load(&tk, TOKDIR), 0, "%s", err_msg());
    prompt_encoder pe;
    cr_assert_eq(prompt_encoder_init(&pe, tk, PROMPT_STYLE_QWEN3, NULL, 0), 0);
    uint32_t im_start = (uint32_t)tokenizer_token_id(tk, "<|im_start|>");
    uint32_t im_end = (uint32_t)tokenizer_token_id(tk, "<|im_end|>");
    prompt_cache cache = {0};
    prompt_tokens pt = {0}, pp = {0};
    int n;
    json_t **cases = load_cases(&n);
    for (int i = 0; i < n; i++) {
        json_t *c = cases[i];
        const char *ins = field(c, "instruction"), *in = field(c, "input");
        const char *out = field(c, "output");
        cr_assert_eq(prompt_encode(&pe, &cache, ins, strlen(ins), in, strlen(in), out,
                                   strlen(out), &pt), 0);
        cr_assert_eq(prompt_encode(&pe, &cache, ins, strlen(ins), in, strlen(in), NULL, 0,
                                   &pp), 0);
        json_t *hp = json_object_get(c, "qwen3_prompt_ids");
        json_t *hf = json_object_get(c, "qwen3_full_ids");

        /* the prompt is a prefix of the full sample; labels start at the answer */
        cr_assert_eq(pp.n_prompt, pp.ids.n);
        cr_assert_eq(pt.n_prompt, pp.ids.n, "case %d", i);
        cr_assert_eq(pt.sup_start, pt.n_prompt);
        cr_assert_eq(memcmp(pt.ids.ids, pp.ids.ids, pp.ids.n * 4), 0);
        cr_assert_eq(pt.ids.ids[pt.ids.n - 1], im_end, "the sample ends with <|im_end|>");
        cr_assert_eq(pt.n_prefix, pp.n_prefix);

        if (json_is_true(json_object_get(c, "has_special_text"))) {
            /* special-token text in the fields stays text: only the template's 3 turns */
            size_t starts = 0, ends = 0;
            for (size_t t = 0; t < pt.ids.n; t++) {
                starts += pt.ids.ids[t] == im_start;
                ends += pt.ids.ids[t] == im_end;
            }
            cr_assert_eq(starts, 3, "case %d: <|im_start|> typed in a field became a token", i);
            cr_assert_eq(ends, 3, "case %d", i);
        } else {
            /* HF ids: the prompt exactly; the full sample is HF's full rendering without its
             * final "\n" */
            assert_ids(pp.ids.ids, pp.ids.n, hp, json_array_size(hp), "prompt", i);
            assert_ids(pt.ids.ids, pt.ids.n, hf, json_array_size(hf) - 1, "full", i);
            /* the shared prefix ends after the system turn's <|im_end|> and "\n" */
            size_t want = 0;
            while (json_integer_value(json_array_get(hp, want)) != im_end)
                want++;
            cr_assert_eq(pp.n_prefix, want + 2, "case %d prefix", i);
        }
        json_decref(c);
    }
    free(cases);
    prompt_tokens_free(&pt);
    prompt_tokens_free(&pp);
    prompt_cache_free(&cache);
    prompt_encoder_free(&pe);
    tokenizer_free(tk);
}

Test(prompt, alpaca_ids_and_eos)
{
    tokenizer *tk;
    cr_assert_eq(tokenizer_load(&tk, TOKDIR), 0, "%s", err_msg());
    prompt_encoder pe;
    cr_assert_eq(prompt_encoder_init(&pe, tk, PROMPT_STYLE_ALPACA, "<|endoftext|>", 0), 0);
    uint32_t eos = (uint32_t)tokenizer_token_id(tk, "<|endoftext|>");
    prompt_tokens pt = {0};
    int n;
    json_t **cases = load_cases(&n);
    for (int i = 0; i < n; i++) {
        json_t *c = cases[i];
        if (json_is_true(json_object_get(c, "has_special_text"))) {
            json_decref(c);
            continue;
        }
        cr_assert_eq(prompt_encode(&pe, NULL, field(c, "instruction"),
                                   field_len(c, "instruction"), field(c, "input"),
                                   field_len(c, "input"), field(c, "output"),
                                   field_len(c, "output"), &pt), 0);
        json_t *hp = json_object_get(c, "alpaca_prompt_ids");
        json_t *ho = json_object_get(c, "output_ids");
        assert_ids(pt.ids.ids, pt.n_prompt, hp, json_array_size(hp), "alpaca prompt", i);
        assert_ids(pt.ids.ids + pt.n_prompt, pt.ids.n - pt.n_prompt - 1, ho,
                   json_array_size(ho), "alpaca output", i);
        cr_assert_eq(pt.ids.ids[pt.ids.n - 1], eos);
        cr_assert_leq(pt.n_prefix, pt.n_prompt);
        json_decref(c);
    }
    free(cases);
    prompt_tokens_free(&pt);
    prompt_encoder_free(&pe);
    tokenizer_free(tk);
}

Test(prompt, train_on_inputs_supervises_the_prompt)
{
    tokenizer *tk;
    cr_assert_eq(tokenizer_load(&tk, TOKDIR), 0, "%s", err_msg());
    prompt_encoder pe;
    cr_assert_eq(prompt_encoder_init(&pe, tk, PROMPT_STYLE_QWEN3, NULL, 1), 0);
    prompt_tokens pt = {0};
    cr_assert_eq(prompt_encode(&pe, NULL, "Rate.", 5, "text", 4, "3", 1, &pt), 0);
    cr_assert_eq(pt.sup_start, 0);
    cr_assert_gt(pt.n_prompt, 0);
    prompt_tokens_free(&pt);
    prompt_encoder_free(&pe);
    tokenizer_free(tk);
}
