/* test_score_model.c: the model scorer (worker/scorer.c) on tiny random Qwen3 models made by
 * `rubric init-model` with the real Qwen3 vocabulary:
 *   - scores with and without the prefix cache, and with any batch size, are identical, and
 *     equal an independent greedy decode written here (whole-prompt prefill, one token at a
 *     time, its own allowed-token sets);
 *   - constrained greedy equals plain greedy where plain greedy stays in the grammar, and the
 *     row is flagged off-grammar where it does not (a model whose LM head is set so that plain
 *     greedy answers "<digit><|im_end|>").
 */
#include "test_score_util.h"

#include <math.h>
#include <mpi.h>

#include "ckpt.h"
#include "config.h"
#include "model.h"
#include "prompt.h"
#include "safetensors.h"
#include "scorer.h"
#include "tokenizer.h"
#include "util.h"

#define TOK_DIR "share/qwen3-tokenizer"

static const char *rubric_a =
    "You are an experienced assessor. Score the text on three measures, in this order: "
    "clarity, grammar and vocabulary. Use integers from 0 (unscorable) to 5 (excellent). "
    "Answer with exactly three space-separated integers and nothing else.";
static const char *rubric_b = "Rate the sentence for valence, arousal and dominance (0-5).";

typedef struct {
    const char *instruction;
    char input[128];
} row_text;

static int make_rows(row_text *rows)
{
    static const char *texts[] = {
        "The cat sat on the mat.", "I has went to school yesterday, it were fun.",
        "Quantum fluctuations notwithstanding, the results hold.", "ok",
        "We should plant more trees in our city because they give shade.",
        "Dear Sir, I writes to complain about the noise.", "Hello world!",
        "Technology changes how students learn; some changes help, others distract.",
    };
    int n = 0;
    for (int i = 0; i < 14; i++) {
        rows[n].instruction = i >= 6 && i < 8 ? rubric_b : rubric_a;
        snprintf(rows[n].input, sizeof rows[n].input, "%s (%d)", texts[i % 8], i);
        n++;
    }
    return n;
}

static char *init_model(const char *dir, const char *name, int untied_f32)
{
    char *out = st_path(dir, name), *log = st_path(dir, "init.log");
    char *argv[] = {(char *)st_bin(), "init-model", "--out", out, "--seed", "5",
                    untied_f32 ? "--no-tie" : "--tie", "--dtype", untied_f32 ? "f32" : "bf16",
                    "--tokenizer", TOK_DIR, NULL};
    cr_assert_eq(st_run(argv, log, NULL), 0, "rubric init-model failed; see %s", log);
    free(log);
    return out;
}

static scorer *new_scorer_full(const char *model_dir, int k, int prefix_cache, int batch,
                               int full_logits)
{
    scorer_options o;
    scorer_options_defaults(&o);
    o.model_dir = model_dir;
    o.tokenizer_dir = TOK_DIR;
    o.style = PROMPT_STYLE_QWEN3;
    o.k = k;
    o.score_min = 0;
    o.score_max = 5;
    o.prefix_cache = prefix_cache;
    o.batch_rows = batch;
    o.backend = "cpu";
    o.full_logits = full_logits;
    scorer *s;
    cr_assert_eq(scorer_new(&s, &o), 0, "%s", err_msg());
    return s;
}

static scorer *new_scorer(const char *model_dir, int k, int prefix_cache, int batch)
{
    return new_scorer_full(model_dir, k, prefix_cache, batch, 0);
}

static void score_all(scorer *s, const row_text *rows, int n, scorer_result *out)
{
    scorer_row r[32];
    for (int i = 0; i < n; i++)
        r[i] = (scorer_row){rows[i].instruction, strlen(rows[i].instruction), rows[i].input,
                            strlen(rows[i].input)};
    cr_assert_eq(scorer_score(s, r, n, out), 0, "%s", err_msg());
}

/* ---- an independent decoder --------------------------------------------------------------- */

typedef struct {
    uint32_t digit[10];
    uint32_t space, end;
} token_ids;

static uint32_t one_id(const tokenizer *tk, const char *text)
{
    token_vec v = {0};
    cr_assert_eq(tokenizer_encode(tk, text, strlen(text), TOK_LITERAL, &v), 0);
    cr_assert_eq(v.n, 1);
    uint32_t id = v.ids[0];
    token_vec_free(&v);
    return id;
}

static void get_ids(const tokenizer *tk, token_ids *t)
{
    for (int d = 0; d <= 9; d++) {
        char s[2] = {(char)('0' + d), 0};
        t->digit[d] = one_id(tk, s);
    }
    t->space = one_id(tk, " ");
    t->end = (uint32_t)tokenizer_token_id(tk, "<|im_end|>");
}

static uint32_t argmax_of(const float *x, const uint32_t *ids, int n, uint32_t vocab)
{
    uint32_t best = ids ? ids[0] : 0;
    for (int i = 0; i < (ids ? n : (int)vocab); i++) {
        uint32_t id = ids ? ids[i] : (uint32_t)i;
        if (x[id] > x[best] || (x[id] == x[best] && id < best))
            best = id;
    }
    return best;
}

/* Greedy decode of one prompt, whole-prompt prefill, one token per step. constrained: the
 * grammar's choices (scores, off-grammar flag); else plain greedy up to 2k tokens. */
static int decode_ref(model *m, const prompt_tokens *pt, const token_ids *t, int k,
                      int constrained, uint32_t *tokens, int *scores, int *off)
{
    uint32_t V = (uint32_t)model_get_config(m)->vocab_size;
    float *logits = malloc(sizeof(float) * V);
    model_kv_cache *c;
    cr_assert_eq(model_kv_cache_new(m, (int)pt->n_prompt + 2 * k + 2, &c), 0);
    cr_assert_eq(model_prefill(m, c, pt->ids.ids, (int)pt->n_prompt, logits), 0);
    int n = 0, n_scores = 0;
    *off = 0;
    while (n < 2 * k) {
        uint32_t allowed[8];
        int na = 0;
        if (n % 2 == 0)
            for (int d = 0; d <= 5; d++)
                allowed[na++] = t->digit[d];
        else
            allowed[na++] = n_scores == k ? t->end : t->space;
        uint32_t plain = argmax_of(logits, NULL, 0, V);
        uint32_t pick = constrained ? argmax_of(logits, allowed, na, V) : plain;
        *off |= plain != pick;
        tokens[n++] = pick;
        for (int d = 0; d <= 9 && constrained && n % 2 == 1; d++)
            if (pick == t->digit[d])
                scores[n_scores++] = d;
        if (pick == t->end)
            break;
        cr_assert_eq(model_prefill(m, c, &pick, 1, logits), 0);
    }
    model_kv_cache_free(c);
    free(logits);
    return n;
}

static void encode_row(const prompt_encoder *pe, const row_text *r, prompt_tokens *pt)
{
    memset(pt, 0, sizeof *pt);
    cr_assert_eq(prompt_encode(pe, NULL, r->instruction, strlen(r->instruction), r->input,
                               strlen(r->input), NULL, 0, pt), 0);
}

Test(score_model, prefix_cache_and_batches_give_identical_scores, .timeout = 300)
{
    char *dir = st_tmpdir(), *mdir = init_model(dir, "random", 0);
    row_text rows[32];
    int n = make_rows(rows);
    scorer_result cached[32], whole[32], batched[32], full[32];

    scorer *a = new_scorer(mdir, 3, 1, 4);
    score_all(a, rows, n, cached);
    scorer_stats st;
    scorer_get_stats(a, &st);
    /* rubric a (6 rows), rubric b (2 rows), rubric a again (6 rows) */
    cr_assert_eq(st.prefix_builds, 3);
    cr_assert_eq(st.prefix_hits, n - 3);

    scorer *b = new_scorer(mdir, 3, 0, 1);
    score_all(b, rows, n, whole);
    scorer *c = new_scorer(mdir, 3, 1, 5);
    score_all(c, rows, n, batched);
    /* whole-vocabulary logits at every pass, also once a row is off the grammar */
    scorer *d = new_scorer_full(mdir, 3, 1, 4, 1);
    score_all(d, rows, n, full);

    /* the reference decoder, on the first scorer's model */
    tokenizer *tk;
    cr_assert_eq(tokenizer_load(&tk, TOK_DIR), 0);
    token_ids t;
    get_ids(tk, &t);
    int distinct = 0, n_off = 0;
    for (int i = 0; i < n; i++) {
        prompt_tokens pt;
        encode_row(scorer_encoder(a), &rows[i], &pt);
        uint32_t toks[16];
        int ref[16], off;
        decode_ref(scorer_model(a), &pt, &t, 3, 1, toks, ref, &off);
        prompt_tokens_free(&pt);
        cr_assert(cached[i].ok && whole[i].ok && batched[i].ok, "row %d", i);
        for (int j = 0; j < 3; j++) {
            cr_assert_eq(cached[i].scores[j], ref[j], "row %d score %d", i, j);
            cr_assert_eq(whole[i].scores[j], ref[j], "row %d score %d", i, j);
            cr_assert_eq(batched[i].scores[j], ref[j], "row %d score %d", i, j);
            cr_assert_eq(full[i].scores[j], ref[j], "row %d score %d", i, j);
        }
        cr_assert_eq(full[i].off_grammar, off);
        cr_assert_eq(cached[i].off_grammar, off);
        cr_assert_eq(whole[i].off_grammar, off);
        cr_assert_eq(batched[i].off_grammar, off);
        distinct += i > 0 && memcmp(ref, cached[0].scores, sizeof(int) * 3) != 0;
        n_off += off;
    }
    cr_assert(distinct > 0, "every row got the same scores: the test would prove little");
    /* off-grammar rows take the grammar-ids-only logits after their first step */
    cr_assert(n_off > 0, "no row left the grammar: the selected-logits path went untested");
    tokenizer_free(tk);
    scorer_free(a);
    scorer_free(b);
    scorer_free(c);
    scorer_free(d);
    st_rm_rf(dir);
}

/* Set the LM head so that plain greedy answers "<digit><|im_end|>": the row of digit d0 points
 * along the embedding of the prompt's last token, the row of <|im_end|> along every digit's
 * embedding, the space's row more weakly along the digits, every other row zero. */
static void craft_lm_head(const char *mdir, uint32_t last_prompt_token, const token_ids *t,
                          int d0)
{
    safetensors_set *set;
    cr_assert_eq(safetensors_open_dir(&set, mdir), 0, "%s", err_msg());
    int n = safetensors_count(set);
    st_write_tensor *w = calloc((size_t)n, sizeof *w);
    float **data = calloc((size_t)n, sizeof *data);
    float *embed = NULL, *head = NULL;
    int64_t V = 0, H = 0;
    for (int i = 0; i < n; i++) {
        const st_tensor *st = safetensors_at(set, i);
        data[i] = malloc(sizeof(float) * (size_t)st_tensor_numel(st));
        cr_assert_eq(safetensors_read_f32(set, st->name, 0, NULL, data[i]), 0);
        w[i] = (st_write_tensor){strdup(st->name), ST_F32, st->ndim, {0}, data[i]};
        memcpy(w[i].shape, st->shape, sizeof st->shape);
        if (!strcmp(st->name, "model.embed_tokens.weight"))
            embed = data[i], V = st->shape[0], H = st->shape[1];
        if (!strcmp(st->name, "lm_head.weight"))
            head = data[i];
    }
    cr_assert(embed && head, "the model must have an untied lm_head");
    memset(head, 0, sizeof(float) * (size_t)(V * H));
    float *row_d0 = head + (int64_t)t->digit[d0] * H, *row_end = head + (int64_t)t->end * H;
    float *row_sp = head + (int64_t)t->space * H;
    for (int64_t j = 0; j < H; j++) {
        row_d0[j] = 50.0f * embed[(int64_t)last_prompt_token * H + j];
        for (int d = 0; d <= 5; d++) {
            row_end[j] += 50.0f * embed[(int64_t)t->digit[d] * H + j];
            row_sp[j] += 20.0f * embed[(int64_t)t->digit[d] * H + j];
        }
    }
    safetensors_close(set);
    cr_assert_eq(safetensors_write_dir(mdir, w, n, NULL, 0), 0, "%s", err_msg());
    for (int i = 0; i < n; i++) {
        free((char *)w[i].name);
        free(data[i]);
    }
    free(w);
    free(data);
}

Test(score_model, constrained_equals_plain_greedy_inside_the_grammar, .timeout = 300)
{
    char *dir = st_tmpdir(), *mdir = init_model(dir, "crafted", 1);
    tokenizer *tk;
    cr_assert_eq(tokenizer_load(&tk, TOK_DIR), 0);
    token_ids t;
    get_ids(tk, &t);
    row_text rows[32];
    int n = make_rows(rows);

    /* every prompt ends with the same token ("\n\n" after the empty think block) */
    prompt_encoder pe;
    cr_assert_eq(prompt_encoder_init(&pe, tk, PROMPT_STYLE_QWEN3, NULL, 0), 0);
    prompt_tokens pt;
    encode_row(&pe, &rows[0], &pt);
    uint32_t last = pt.ids.ids[pt.n_prompt - 1];
    prompt_tokens_free(&pt);
    craft_lm_head(mdir, last, &t, 4);

    scorer *one = new_scorer(mdir, 1, 1, 3), *three = new_scorer(mdir, 3, 1, 3);
    scorer_result r1[32], r3[32];
    score_all(one, rows, n, r1);
    score_all(three, rows, n, r3);
    for (int i = 0; i < n; i++) {
        encode_row(&pe, &rows[i], &pt);
        uint32_t plain[16];
        int unused[16], off;
        int np = decode_ref(scorer_model(one), &pt, &t, 1, 0, plain, unused, &off);
        prompt_tokens_free(&pt);

        /* plain greedy is "<digit><|im_end|>": inside the K=1 grammar */
        cr_assert_eq(np, 2, "row %d: plain greedy took %d tokens", i, np);
        cr_assert(plain[0] >= t.digit[0] && plain[0] <= t.digit[5] && plain[1] == t.end,
                  "row %d: plain greedy gave %u %u", i, plain[0], plain[1]);
        cr_assert(r1[i].ok && !r1[i].off_grammar, "row %d", i);
        cr_assert_eq(r1[i].scores[0], (int)(plain[0] - t.digit[0]), "row %d", i);

        /* with K=3 plain greedy ends after one score: off-grammar, first score the same */
        cr_assert(r3[i].ok && r3[i].off_grammar, "row %d", i);
        cr_assert_eq(r3[i].scores[0], (int)(plain[0] - t.digit[0]), "row %d", i);
    }
    prompt_encoder_free(&pe);
    tokenizer_free(tk);
    scorer_free(one);
    scorer_free(three);
    st_rm_rf(dir);
}

/* A rubric checkpoint (.h5) given as --adapter is loaded with the LoRA shape of its stored
 * config: the scores equal a decode on the in-memory model with those LoRA weights, and differ
 * from the base model's. */
Test(score_model, adapter_checkpoint_is_applied, .timeout = 300)
{
    MPI_Init(NULL, NULL);
    char *dir = st_tmpdir(), *mdir = init_model(dir, "random", 0);

    /* the base model with a random LoRA on every module */
    model_options mo;
    model_options_defaults(&mo);
    mo.adapter = ADAPTER_LORA;
    mo.lora_r = 4;
    mo.lora_alpha = 8;
    mo.lora_targets = LORA_ALL;
    mo.backend = "cpu";
    model *m;
    cr_assert_eq(model_load(&m, mdir, &mo), 0, "%s", err_msg());
    model_trainable_view v;
    model_trainable(m, &v);
    unsigned seed = 3;
    for (int64_t i = 0; i < v.n; i++)
        v.params[i] = ((float)rand_r(&seed) / (float)RAND_MAX - 0.5f) * 0.6f;

    /* saved as a checkpoint whose config says so */
    char *yaml = malloc(strlen(mdir) + 256);
    sprintf(yaml, "base_model: %s\nchat_template: qwen3\nadapter: lora\nlora_r: 4\n"
                  "lora_alpha: 8\nlora_target_linear: true\n", mdir);
    ckpt_param *params = calloc((size_t)v.n_tensors, sizeof *params);
    for (int i = 0; i < v.n_tensors; i++)
        params[i] = (ckpt_param){v.table[i].name, v.table[i].offset, v.table[i].rows,
                                 v.table[i].cols};
    ckpt_meta meta;
    memset(&meta, 0, sizeof meta);
    meta.step = 1;
    meta.config_yaml = yaml;
    meta.base_model = mdir;
    meta.base_model_hash = model_get_config(m)->hash;
    meta.sched_kind = "constant";
    meta.world_size = 1;
    ckpt_slice slice = {0, v.n, v.params, NULL, NULL, NULL};
    char *ckpt;
    cr_assert_eq(ckpt_save(MPI_COMM_SELF, dir, &meta, params, v.n_tensors, &slice, 0, 0, &ckpt),
                 0, "%s", err_msg());

    /* the config stored in it is what score reads */
    rubric_config cfg;
    cr_assert_eq(scorer_adapter_config(ckpt, &cfg), 0, "%s", err_msg());
    cr_assert_eq(cfg.lora_r, 4);
    config_free(&cfg);

    scorer_options o;
    scorer_options_defaults(&o);
    o.model_dir = mdir;
    o.tokenizer_dir = TOK_DIR;
    o.adapter = ckpt;
    o.k = 3;
    o.backend = "cpu";
    scorer *with;
    cr_assert_eq(scorer_new(&with, &o), 0, "%s", err_msg());
    scorer *base = new_scorer(mdir, 3, 1, 4);
    row_text rows[32];
    int n = make_rows(rows);
    scorer_result ra[32], rb[32];
    score_all(with, rows, n, ra);
    score_all(base, rows, n, rb);

    tokenizer *tk;
    cr_assert_eq(tokenizer_load(&tk, TOK_DIR), 0);
    token_ids t;
    get_ids(tk, &t);
    int differ = 0;
    for (int i = 0; i < n; i++) {
        prompt_tokens pt;
        encode_row(scorer_encoder(base), &rows[i], &pt);
        uint32_t toks[16];
        int ref[16], off;
        decode_ref(m, &pt, &t, 3, 1, toks, ref, &off);
        prompt_tokens_free(&pt);
        for (int j = 0; j < 3; j++)
            cr_assert_eq(ra[i].scores[j], ref[j], "row %d score %d", i, j);
        cr_assert_eq(ra[i].off_grammar, off);
        differ += memcmp(ra[i].scores, rb[i].scores, sizeof(int) * 3) != 0;
    }
    cr_assert(differ > 0, "the adapter changed no score: the test would prove nothing");
    tokenizer_free(tk);
    scorer_free(with);
    scorer_free(base);
    model_free(m);
    free(params);
    free(yaml);
    free(ckpt);
    st_rm_rf(dir);
    MPI_Finalize();
}

/* ---- `rubric score` on a real (tiny) model: the command's own behaviour ------------------ */

static int log_contains(const char *log, const char *text)
{
    char *all = st_read(log, NULL);
    int has = all && strstr(all, text);
    free(all);
    return has;
}

/* A few rows with three-score outputs. */
static char *write_rows(const char *dir, int n)
{
    char *in = st_path(dir, "rows.jsonl");
    FILE *f = fopen(in, "w");
    cr_assert(f);
    for (int i = 0; i < n; i++)
        fprintf(f, "{\"instruction\": \"%s\", \"input\": \"text %d\", \"output\": \"%d 4 1\"}\n",
                rubric_b, i, i % 6);
    fclose(f);
    return in;
}

/* Every prediction of out: scores within lo..hi; returns the rows. */
static int assert_scores_within(const char *out, int lo, int hi)
{
    FILE *f = fopen(out, "r");
    cr_assert(f, "%s", out);
    char line[1024];
    int rows = 0;
    while (fgets(line, sizeof line, f)) {
        const char *s = strstr(line, "\"scores\": [");
        cr_assert(s, "%s", line);
        int a, b, c;
        cr_assert_eq(sscanf(s, "\"scores\": [%d, %d, %d]", &a, &b, &c), 3, "%s", line);
        cr_assert(a >= lo && a <= hi && b >= lo && b <= hi && c >= lo && c <= hi, "%s", line);
        rows++;
    }
    fclose(f);
    return rows;
}

/* A rubric checkpoint (LoRA r 4) for the model in mdir, written under dir by export_tool;
 * scores: the scores_per_row it records ("0": none). */
static char *make_ckpt_scores(const char *dir, const char *mdir, const char *log,
                              const char *scores)
{
    const char *tool = getenv("RUBRIC_EXPORT_TOOL");
    cr_assert(tool, "RUBRIC_EXPORT_TOOL is not set (run through meson test)");
    char *cdir = st_path(dir, "ckpt");
    char *mk[] = {(char *)tool, "make-ckpt", "--model", (char *)mdir, "--out", cdir, "--r", "4",
                  "--scores", (char *)scores, NULL};
    cr_assert_eq(st_run(mk, log, NULL), 0, "see %s", log);
    return st_path(cdir, "checkpoint-1.h5");
}

static char *make_ckpt(const char *dir, const char *mdir, const char *log)
{
    return make_ckpt_scores(dir, mdir, log, "0");
}

/* --num-scores other than the checkpoint's scores_per_row overrides it (docs/score.md: K is
 * --num-scores, else the checkpoint's), with a warning before anything is scored. */
Test(score_model, num_scores_over_the_checkpoints_says_so_up_front, .timeout = 300)
{
    char *dir = st_tmpdir(), *mdir = init_model(dir, "random", 0), *log = st_path(dir, "log");
    char *in = write_rows(dir, 4), *out = st_path(dir, "p.jsonl");
    char *ckpt = make_ckpt_scores(dir, mdir, log, "3");
    for (int i = 0; i < 2; i++) {
        char *argv[] = {(char *)st_bin(), "score", "--adapter", ckpt, "--model", mdir, "--input",
                        in, "--output", out, "--tokenizer", TOK_DIR, "--backend", "cpu",
                        "--num-scores", i ? "3" : "5", NULL};
        unlink(log);
        cr_assert_eq(st_run(argv, log, NULL), 0, "see %s", log);
        char *text = st_read(log, NULL);
        const char *warn = strstr(text, "--num-scores 5 overrides the 3 scores per row");
        const char *start = strstr(text, "scoring ");
        if (i == 0) {
            cr_assert(warn, "no warning; see %s", log);
            cr_assert(start && warn < start, "the warning came after the start; see %s", log);
            cr_assert(log_contains(log, "5 scores per row"), "see %s", log);
        } else {
            cr_assert(!strstr(text, "overrides"), "a warning for the same K; see %s", log);
        }
        free(text);
    }
    st_rm_rf(dir);
}

/* --set on top of an adapter's stored config (no --config): the key set here wins. */
Test(score_model, set_applies_on_top_of_the_adapters_stored_config, .timeout = 300)
{
    char *dir = st_tmpdir(), *mdir = init_model(dir, "random", 0), *log = st_path(dir, "log");
    char *in = write_rows(dir, 12), *out = st_path(dir, "p.jsonl");
    char *ckpt = make_ckpt(dir, mdir, log);

    /* the stored config's range (0..5), then --set score_max=3 over it */
    char *plain[] = {(char *)st_bin(), "score", "--adapter", ckpt, "--input", in, "--output", out,
                     "--tokenizer", TOK_DIR, "--backend", "cpu", NULL};
    cr_assert_eq(st_run(plain, log, NULL), 0, "see %s", log);
    cr_assert(log_contains(log, "3 scores per row in 0..5"), "see %s", log);
    unlink(log);
    char *set[] = {(char *)st_bin(), "score", "--adapter", ckpt, "--input", in, "--output", out,
                   "--tokenizer", TOK_DIR, "--backend", "cpu", "--set", "score_max=3",
                   "--set", "score_min=1", "--num-scores", "3", NULL};
    cr_assert_eq(st_run(set, log, NULL), 0, "see %s", log);
    cr_assert(log_contains(log, "3 scores per row in 1..3"), "--set was ignored; see %s", log);
    cr_assert_eq(assert_scores_within(out, 1, 3), 12);
    st_rm_rf(dir);
}

/* The scorer's bad rows (a prompt too long) name their line, as the other bad rows do. */
Test(score_model, too_long_prompts_name_their_line, .timeout = 300)
{
    char *dir = st_tmpdir(), *mdir = init_model(dir, "random", 0), *log = st_path(dir, "log");
    char *in = write_rows(dir, 3), *out = st_path(dir, "p.jsonl");
    char *argv[] = {(char *)st_bin(), "score", "--model", mdir, "--input", in, "--output", out,
                    "--tokenizer", TOK_DIR, "--backend", "cpu", "--max-prompt-tokens", "10",
                    NULL};
    cr_assert_eq(st_run(argv, log, NULL), 0, "see %s", log);
    char *text = st_read(out, NULL);
    for (int i = 0; i < 3; i++) {
        char want[64];
        snprintf(want, sizeof want, "\"error\": \"line %d: the prompt has ", i + 1);
        cr_assert(strstr(text, want), "no '%s' in %s", want, text);
    }
    free(text);
    st_rm_rf(dir);
}

/* Under mpirun, a model that does not load (a truncated model.safetensors): the worker's
 * error, exit 2, no resume hint, and no empty .partial or .journal left behind. */
Test(score_model, a_broken_model_under_mpirun_leaves_nothing, .timeout = 300)
{
    char *dir = st_tmpdir(), *mdir = init_model(dir, "random", 0), *log = st_path(dir, "log");
    char *in = write_rows(dir, 3), *out = st_path(dir, "p.jsonl");
    char *weights = st_path(mdir, "model.safetensors");
    cr_assert_eq(truncate(weights, 100000), 0);
    char *argv[] = {"mpirun", "-np", "3", "--oversubscribe", (char *)st_bin(), "score",
                    "--model", mdir, "--input", in, "--output", out, "--tokenizer", TOK_DIR,
                    "--backend", "cpu", NULL};
    cr_assert_eq(st_run(argv, log, NULL), 2, "see %s", log);
    cr_assert(log_contains(log, "truncated"), "no loader error; see %s", log);
    cr_assert(log_contains(log, "could not load the model"), "see %s", log);
    cr_assert(!log_contains(log, "--resume"), "a resume hint with nothing to resume; see %s",
              log);
    char *partial = st_path(dir, "p.jsonl.partial"), *journal = st_path(dir, "p.jsonl.journal");
    cr_assert(access(partial, F_OK) != 0, "%s was left behind", partial);
    cr_assert(access(journal, F_OK) != 0, "%s was left behind", journal);
    cr_assert(access(out, F_OK) != 0);
    st_rm_rf(dir);
}

/* --print-config prints the config scoring uses: an adapter's stored config with --set on
 * top, a merged model's rubric_config.yml with --set on top, or --config then --set. */
Test(score_model, print_config_shows_the_config_scoring_uses, .timeout = 300)
{
    char *dir = st_tmpdir(), *mdir = init_model(dir, "random", 0), *log = st_path(dir, "log");
    char *in = write_rows(dir, 3), *out = st_path(dir, "p.jsonl");
    char *ckpt = make_ckpt(dir, mdir, log);

    unlink(log);
    char *a1[] = {(char *)st_bin(), "score", "--adapter", ckpt, "--input", in, "--output", out,
                  "--set", "score_max=3", "--print-config", NULL};
    cr_assert_eq(st_run(a1, log, NULL), 0, "see %s", log);
    char want[600];
    snprintf(want, sizeof want, "base_model: %s\n", mdir);
    cr_assert(log_contains(log, want), "not the checkpoint's base model; see %s", log);
    cr_assert(log_contains(log, "\nlora_r: 4\n"), "not the checkpoint's config; see %s", log);
    cr_assert(log_contains(log, "\nscore_max: 3\n"), "--set is missing; see %s", log);
    cr_assert(access(out, F_OK) != 0, "--print-config scored the rows");

    /* a merged model's rubric_config.yml, then --set */
    unlink(log);
    char *rc_yml = st_path(mdir, "rubric_config.yml");
    FILE *f = fopen(rc_yml, "w");
    cr_assert(f);
    fprintf(f, "base_model: %s\nscore_max: 7\nlora_r: 12\n", mdir);
    fclose(f);
    char *a2[] = {(char *)st_bin(), "score", "--model", mdir, "--input", in, "--output", out,
                  "--set", "score_min=2", "--print-config", NULL};
    cr_assert_eq(st_run(a2, log, NULL), 0, "see %s", log);
    cr_assert(log_contains(log, "\nlora_r: 12\n"), "not rubric_config.yml; see %s", log);
    cr_assert(log_contains(log, "\nscore_min: 2\n") && log_contains(log, "\nscore_max: 7\n"),
              "see %s", log);

    /* --config replaces the stored config; --set on top of it */
    unlink(log);
    char *cfg = st_path(dir, "c.yml");
    f = fopen(cfg, "w");
    cr_assert(f);
    fprintf(f, "score_max: 4\nlora_r: 6\n");
    fclose(f);
    char *a3[] = {(char *)st_bin(), "score", "--adapter", ckpt, "--config", cfg, "--input", in,
                  "--output", out, "--set", "score_min=1", "--print-config", NULL};
    cr_assert_eq(st_run(a3, log, NULL), 0, "see %s", log);
    cr_assert(log_contains(log, "\nlora_r: 6\n") && log_contains(log, "\nscore_min: 1\n") &&
              log_contains(log, "\nscore_max: 4\n"), "see %s", log);
    st_rm_rf(dir);
}

/* --set score_min over an adapter's stored config: checked against the stored score_max (not
 * the defaults'), and an error names where each bound comes from. */
Test(score_model, set_score_range_over_an_adapter_names_its_origin, .timeout = 300)
{
    char *dir = st_tmpdir(), *mdir = init_model(dir, "random", 0), *log = st_path(dir, "log");
    char *in = write_rows(dir, 3), *out = st_path(dir, "p.jsonl");
    char *ckpt = make_ckpt(dir, mdir, log);

    unlink(log);
    char *a1[] = {(char *)st_bin(), "score", "--adapter", ckpt, "--input", in, "--output", out,
                  "--set", "score_min=6", NULL};
    cr_assert_eq(st_run(a1, log, NULL), 2, "see %s", log);
    cr_assert(!log_contains(log, "<defaults>"), "see %s", log);
    char want[600];
    snprintf(want, sizeof want, "score_max (5, from %s's stored config", ckpt);
    cr_assert(log_contains(log, want), "no '%s'; see %s", want, log);
    cr_assert(log_contains(log, "score_min (6, from --set)"), "see %s", log);

    /* both bounds set: the defaults' score_max (5) is not in the way */
    unlink(log);
    char *a2[] = {(char *)st_bin(), "score", "--adapter", ckpt, "--input", in, "--output", out,
                  "--set", "score_min=6", "--set", "score_max=9", "--print-config", NULL};
    cr_assert_eq(st_run(a2, log, NULL), 0, "see %s", log);
    cr_assert(log_contains(log, "\nscore_min: 6\n") && log_contains(log, "\nscore_max: 9\n"),
              "see %s", log);
    st_rm_rf(dir);
}
