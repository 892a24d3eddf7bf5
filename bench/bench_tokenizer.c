/*
 * bench_tokenizer.c: single-thread encode throughput of rubric's tokenizer.
 *
 *   bench_tokenizer TOKENIZER_DIR DATA.jsonl [PASSES]
 *
 * Encodes every field (instruction, input, output) of every row of DATA.jsonl, PASSES times
 * after one warm-up pass, and prints one JSON line: bytes, texts, tokens, the best pass's
 * seconds, and an xxh64 digest of all ids (little-endian uint32) so a driver can check them
 * against Hugging Face `tokenizers`. It then times the pathological inputs (100,000 digits,
 * 50,000 spaces, a 40,000-letter word; best of 5 calls), one JSON line each. Run it through
 * bench/bench_tokenizer.py, which runs HF in the same run and prints the ratios.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "tokenizer.h"
#include "util.h"

typedef struct {
    char **text;
    size_t *len;
    size_t n, cap, bytes;
} text_list;

static void texts_add(text_list *t, const char *s, size_t len)
{
    if (t->n == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 1024;
        t->text = xrealloc(t->text, t->cap * sizeof *t->text);
        t->len = xrealloc(t->len, t->cap * sizeof *t->len);
    }
    t->text[t->n] = xmalloc(len + 1);
    memcpy(t->text[t->n], s, len + 1);
    t->len[t->n++] = len;
    t->bytes += len;
}

static void texts_load(text_list *t, const char *path)
{
    static const char *const fields[] = {"instruction", "input", "output"};
    FILE *f = fopen(path, "rb");
    if (!f)
        rb_die(RB_EXIT_INPUT, "cannot open %s", path);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    long line_no = 0;
    while ((n = getline(&line, &cap, f)) >= 0) {
        line_no++;
        json_error_t jerr;
        json_t *row = json_loadb(line, (size_t)n, 0, &jerr);
        if (!row)
            rb_die(RB_EXIT_INPUT, "%s:%ld: not JSON: %s", path, line_no, jerr.text);
        for (int k = 0; k < 3; k++) {
            json_t *v = json_object_get(row, fields[k]);
            if (json_is_string(v))
                texts_add(t, json_string_value(v), json_string_length(v));
        }
        json_decref(row);
    }
    free(line);
    fclose(f);
}

/* One pass over all texts; returns seconds, fills tokens and digest. */
static double encode_pass(const tokenizer *tk, const text_list *t, size_t *tokens,
                          uint64_t *digest)
{
    XXH64_state_t *st = XXH64_createState();
    XXH64_reset(st, 0);
    token_vec ids = {0};
    *tokens = 0;
    double t0 = now_seconds();
    for (size_t i = 0; i < t->n; i++) {
        ids.n = 0;
        if (tokenizer_encode(tk, t->text[i], t->len[i], TOK_MATCH_ADDED, &ids))
            rb_die_err(RB_EXIT_INPUT);
        XXH64_update(st, ids.ids, ids.n * sizeof *ids.ids);
        *tokens += ids.n;
    }
    double dt = now_seconds() - t0;
    *digest = XXH64_digest(st);
    XXH64_freeState(st);
    token_vec_free(&ids);
    return dt;
}

/* Time one pathological input: `count` copies of `unit` (or pseudo-random letters when unit
 * is NULL, the same generator as the Python driver: a linear congruential sequence). */
static void time_pathological(const tokenizer *tk, const char *name, const char *unit,
                              size_t count)
{
    size_t len = unit ? strlen(unit) * count : count;
    char *s = xmalloc(len + 1);
    if (unit) {
        for (size_t i = 0; i < count; i++)
            memcpy(s + i * strlen(unit), unit, strlen(unit));
    } else {
        uint32_t x = 12345;
        for (size_t i = 0; i < count; i++) {
            x = x * 1103515245u + 12345u;
            s[i] = (char)('a' + (x >> 16) % 26);
        }
    }
    s[len] = '\0';
    token_vec ids = {0};
    double dt = 1e30;
    for (int rep = 0; rep < 5; rep++) {
        ids.n = 0;
        double t0 = now_seconds();
        if (tokenizer_encode(tk, s, len, TOK_MATCH_ADDED, &ids))
            rb_die_err(RB_EXIT_INPUT);
        dt = RB_MIN(dt, now_seconds() - t0);
    }
    printf("{\"case\": \"%s\", \"bytes\": %zu, \"tokens\": %zu, \"seconds\": %.6f, "
           "\"digest\": \"%016llx\"}\n",
           name, len, ids.n, dt,
           (unsigned long long)XXH64(ids.ids, ids.n * sizeof *ids.ids, 0));
    token_vec_free(&ids);
    free(s);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s TOKENIZER_DIR DATA.jsonl [PASSES]\n", argv[0]);
        return RB_EXIT_INPUT;
    }
    int passes = argc > 3 ? atoi(argv[3]) : 3;

    /* load */
    double t0 = now_seconds();
    tokenizer *tk;
    if (tokenizer_load(&tk, argv[1]))
        rb_die_err(RB_EXIT_INPUT);
    double load_s = now_seconds() - t0;
    text_list t = {0};
    texts_load(&t, argv[2]);

    /* warm-up, then the best of the timed passes */
    size_t tokens;
    uint64_t digest;
    encode_pass(tk, &t, &tokens, &digest);
    double best = 1e30;
    for (int p = 0; p < passes; p++)
        best = RB_MIN(best, encode_pass(tk, &t, &tokens, &digest));
    printf("{\"case\": \"data\", \"bytes\": %zu, \"texts\": %zu, \"tokens\": %zu, "
           "\"seconds\": %.6f, \"load_seconds\": %.3f, \"digest\": \"%016llx\"}\n",
           t.bytes, t.n, tokens, best, load_s, (unsigned long long)digest);

    /* pathological inputs */
    time_pathological(tk, "100000 digits", "0123456789", 10000);
    time_pathological(tk, "50000 spaces", " ", 50000);
    time_pathological(tk, "40000-letter word", NULL, 40000);

    for (size_t i = 0; i < t.n; i++)
        free(t.text[i]);
    free(t.text);
    free(t.len);
    tokenizer_free(tk);
    return 0;
}
