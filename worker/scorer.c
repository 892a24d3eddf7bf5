/* scorer.c: one worker's scoring: prefix KV cache, prefill, grammar-constrained greedy decoding
 * (see scorer.h). */
#include "scorer.h"

#include <mpi.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ckpt.h"
#include "config.h"
#include "log.h"
#include "model.h"
#include "util.h"

struct scorer {
    scorer_options o;
    tokenizer *tk;
    prompt_encoder pe;
    prompt_cache pcache;
    model *m;
    score_grammar g;
    uint32_t vocab;
    int max_prompt;             /* longest prompt accepted, in tokens */

    /* the shared prefix: its ids and its KV cache */
    model_kv_cache *prefix;
    uint32_t *prefix_ids;
    int n_prefix;

    /* per batch row: a KV cache, the encoded prompt, the decoder state */
    model_kv_cache **caches;
    prompt_tokens *enc;
    grammar_state *states;
    float *logits;              /* [2 * batch_rows, vocab] */
    uint32_t *grammar_ids;      /* every id the grammar allows: the logits an off-grammar row
                                 * still needs */
    int n_grammar_ids;

    scorer_stats stats;
};

void scorer_options_defaults(scorer_options *o)
{
    memset(o, 0, sizeof *o);
    o->style = PROMPT_STYLE_QWEN3;
    o->k = 3;
    o->score_min = 0;
    o->score_max = 5;
    o->batch_rows = 32; /* score_batch_size's default: more rows share each LM head read */
    o->prefix_cache = 1;
    o->backend = "auto";
}

/* ---- loading ------------------------------------------------------------------------------ */

int scorer_adapter_config(const char *path, rubric_config *cfg)
{
    ckpt_meta meta;
    memset(&meta, 0, sizeof meta);
    int rc = ckpt_read_meta(path, &meta);
    if (rc)
        return rc;
    char *label = xasprintf("%s:/state/config_yaml", path);
    rc = config_load_text(cfg, label, meta.config_yaml, 0);
    free(label);
    ckpt_meta_free(&meta);
    return rc ? err_prefix(rc, "%s: the config stored in the checkpoint", path) : 0;
}

int scorer_adapter_scores(const char *path)
{
    ckpt_meta meta;
    memset(&meta, 0, sizeof meta);
    int k = ckpt_read_meta(path, &meta) == 0 ? meta.n_scores : 0;
    ckpt_meta_free(&meta);
    return k;
}

/* The LoRA shape of a rubric checkpoint, from the config stored in it. */
static int adapter_options(const char *path, model_options *mo)
{
    rubric_config cfg;
    int rc = scorer_adapter_config(path, &cfg);
    if (rc)
        return rc;
    model_options_from_config(mo, &cfg);
    config_free(&cfg);
    return 0;
}

/* Read the LoRA weights of a rubric checkpoint into the model's flat buffer. */
static int adapter_load(scorer *s, const char *path)
{
    model_trainable_view v;
    model_trainable(s->m, &v);
    ckpt_param *params = xcalloc((size_t)RB_MAX(v.n_tensors, 1), sizeof *params);
    for (int i = 0; i < v.n_tensors; i++)
        params[i] = (ckpt_param){v.table[i].name, v.table[i].offset, v.table[i].rows,
                                 v.table[i].cols};
    /* the file is read into host memory: the buffer itself on the CPU, else a host copy */
    const kernel_ops *ops = model_ops(s->m);
    float *host = ops->host_memory ? v.params : xmalloc(sizeof(float) * (size_t)RB_MAX(v.n, 1));
    ckpt_slice slice = {0, v.n, host, NULL, NULL, NULL};
    ckpt_meta meta;
    memset(&meta, 0, sizeof meta);
    int rc = ckpt_load(MPI_COMM_SELF, path, params, v.n_tensors, model_get_config(s->m)->hash,
                       &slice, 0, &meta);
    if (!rc && host != v.params)
        ops->upload(v.params, host, sizeof(float) * (size_t)v.n);
    if (host != v.params)
        free(host);
    ckpt_meta_free(&meta);
    free(params);
    return rc;
}

static int scorer_load_model(scorer *s)
{
    model_options mo;
    model_options_defaults(&mo);
    mo.adapter = ADAPTER_NONE;
    mo.backend = s->o.backend ? s->o.backend : "auto";
    int rc = 0;
    if (s->o.model) {
        s->m = s->o.model;     /* borrowed: the training ranks' model, adapter in place */
    } else {
        rc = s->o.adapter ? adapter_options(s->o.adapter, &mo) : 0;
        mo.lora_dropout = 0;
        if (!rc)
            rc = model_load(&s->m, s->o.model_dir, &mo);
        if (!rc && s->o.adapter)
            rc = adapter_load(s, s->o.adapter);
    }
    if (rc)
        return rc;
    const model_config *mc = model_get_config(s->m);
    s->vocab = (uint32_t)mc->vocab_size;
    s->max_prompt = s->o.max_prompt_tokens > 0 ? s->o.max_prompt_tokens
                                               : mc->max_position_embeddings - 2 * s->o.k;
    return 0;
}

int scorer_new(scorer **out, const scorer_options *o)
{
    scorer *s = xcalloc(1, sizeof *s);
    s->o = *o;
    if (s->o.batch_rows < 1)
        s->o.batch_rows = 1;
    const char *tk_dir = o->tokenizer_dir ? o->tokenizer_dir : o->model_dir;

    /* tokenizer and prompt encoder, then the model, then the grammar over its vocabulary */
    int rc = tokenizer_load(&s->tk, tk_dir);
    if (!rc)
        rc = prompt_encoder_init(&s->pe, s->tk, o->style, o->eos_token, 0);
    if (!rc)
        rc = scorer_load_model(s);
    if (!rc)
        rc = grammar_init(&s->g, s->tk, o->k, o->score_min, o->score_max, s->pe.eos, s->vocab);
    if (rc) {
        scorer_free(s);
        return err_prefix(rc, "loading the scorer");
    }

    int b = s->o.batch_rows;
    s->caches = xcalloc((size_t)b, sizeof *s->caches);
    s->enc = xcalloc((size_t)b, sizeof *s->enc);
    s->states = xcalloc((size_t)b, sizeof *s->states);
    s->logits = xmalloc(sizeof(float) * 2 * (size_t)b * s->vocab); /* 2 tokens a row a pass */
    s->n_grammar_ids = grammar_all_ids(&s->g, NULL, 0);
    s->grammar_ids = xmalloc(sizeof(uint32_t) * (size_t)s->n_grammar_ids);
    grammar_all_ids(&s->g, s->grammar_ids, s->n_grammar_ids);
    *out = s;
    return 0;
}

void scorer_free(scorer *s)
{
    if (!s)
        return;
    for (int i = 0; s->caches && i < s->o.batch_rows; i++) {
        model_kv_cache_free(s->caches[i]);
        prompt_tokens_free(&s->enc[i]);
    }
    model_kv_cache_free(s->prefix);
    free(s->caches);
    free(s->enc);
    free(s->states);
    free(s->logits);
    free(s->grammar_ids);
    free(s->prefix_ids);
    grammar_free(&s->g);
    if (s->m && !s->o.model)
        model_free(s->m);
    prompt_cache_free(&s->pcache);
    if (s->tk) {
        prompt_encoder_free(&s->pe);
        tokenizer_free(s->tk);
    }
    free(s);
}

const score_grammar *scorer_grammar(const scorer *s) { return &s->g; }

void *scorer_model(scorer *s) { return s->m; }

const prompt_encoder *scorer_encoder(const scorer *s) { return &s->pe; }

void scorer_get_stats(const scorer *s, scorer_stats *st) { *st = s->stats; }

/* ---- prefill ------------------------------------------------------------------------------ */

/* A cache able to hold `need` tokens (grown in steps of 256). */
static int ensure_cache(scorer *s, model_kv_cache **c, int need)
{
    if (*c && model_kv_cache_capacity(*c) >= need)
        return 0;
    model_kv_cache_free(*c);
    *c = NULL;
    return model_kv_cache_new(s->m, (need + 255) / 256 * 256, c);
}

/* Make the cached prefix hold ids[0..n). */
static int prefix_prepare(scorer *s, const uint32_t *ids, int n)
{
    if (s->n_prefix == n && memcmp(s->prefix_ids, ids, sizeof *ids * (size_t)n) == 0) {
        s->stats.prefix_hits++;
        return 0;
    }
    s->n_prefix = 0;
    int rc = ensure_cache(s, &s->prefix, n);
    if (rc)
        return rc;
    model_kv_cache_truncate(s->prefix, 0);
    rc = model_prefill(s->m, s->prefix, ids, n, NULL);
    if (rc)
        return rc;
    s->prefix_ids = xrealloc(s->prefix_ids, sizeof *ids * (size_t)RB_MAX(n, 1));
    memcpy(s->prefix_ids, ids, sizeof *ids * (size_t)n);
    s->n_prefix = n;
    s->stats.prefix_builds++;
    s->stats.prefill_tokens += n;
    return 0;
}

/* Get a row's cache ready for its prompt: the shared prefix copied in (or the cache emptied);
 * *rest receives how many prompt tokens, but the last, remain to prefill after it. */
static int prepare_row(scorer *s, const prompt_tokens *pt, model_kv_cache **cache, int *rest)
{
    const uint32_t *ids = pt->ids.ids;
    int n = (int)pt->n_prompt;
    int rc = ensure_cache(s, cache, n + grammar_max_tokens(&s->g));
    if (rc)
        return rc;

    /* the shared prefix, at most all but the last prompt token */
    int shared = s->o.prefix_cache ? RB_MIN((int)pt->n_prefix, n - 1) : 0;
    if (shared > 0) {
        rc = prefix_prepare(s, ids, shared);
        if (!rc)
            rc = model_kv_cache_copy(*cache, s->prefix);
    } else {
        model_kv_cache_truncate(*cache, 0);
    }
    *rest = n - 1 - shared;
    s->stats.prefill_tokens += n - shared;
    return rc;
}

/* Most tokens one batched prefill call takes (rows are grouped to stay under it). */
#define SCORER_PREFILL_GROUP_TOKENS 4096

/* Fill rows [0, n)' caches with their prompts except the last token (whose logits are computed
 * for the whole batch at once, so the LM head runs once per batch, not once per row): the rest
 * after the shared prefix goes through the model for groups of rows at once. */
static int prefill_rows(scorer *s, int n)
{
    int rest[n > 0 ? n : 1];
    int rc = 0;
    for (int i = 0; i < n && !rc; i++)
        rc = prepare_row(s, &s->enc[i], &s->caches[i], &rest[i]);

    model_kv_cache *caches[n > 0 ? n : 1];
    int counts[n > 0 ? n : 1];
    uint32_t *tokens = NULL;
    size_t cap = 0;
    for (int i = 0; i < n && !rc;) {
        /* a group of rows with tokens to prefill, under the token budget (at least one row) */
        int rows = 0;
        size_t total = 0;
        for (; i < n; i++) {
            if (rest[i] <= 0)
                continue;
            if (rows > 0 && total + (size_t)rest[i] > SCORER_PREFILL_GROUP_TOKENS)
                break;
            const prompt_tokens *pt = &s->enc[i];
            size_t from = (size_t)(pt->n_prompt - 1) - (size_t)rest[i];
            if (total + (size_t)rest[i] > cap) {
                cap = RB_MAX(total + (size_t)rest[i], 2 * cap);
                tokens = xrealloc(tokens, sizeof *tokens * cap);
            }
            memcpy(tokens + total, pt->ids.ids + from, sizeof *tokens * (size_t)rest[i]);
            total += (size_t)rest[i];
            caches[rows] = s->caches[i];
            counts[rows++] = rest[i];
        }
        if (rows > 0)
            rc = model_prefill_batch(s->m, caches, tokens, counts, rows, NULL);
    }
    free(tokens);
    return rc;
}

/* ---- decoding ----------------------------------------------------------------------------- */

/* Decode rows [0, n) of the batch slots (prompts in s->enc) under the grammar. */
static int decode_batch(scorer *s, int n, scorer_result *out)
{
    size_t V = s->vocab;
    int rc = 0;

    /* prefill each row but its last prompt token */
    model_kv_cache *caches[n > 0 ? n : 1];
    int rows[n > 0 ? n : 1];
    double t0 = now_seconds();
    rc = prefill_rows(s, n);
    double t1 = now_seconds();
    s->stats.prefill_seconds += t1 - t0;
    for (int i = 0; i < n && !rc; i++)
        grammar_state_init(&s->states[i]);

    /* then one pass per answer digit, all rows still going together. A row appends its newest
     * token (at first the last prompt token, whose logits give the first digit) and, when the
     * grammar allows only one token after it (the separator after a digit), that token too;
     * the pass's logits at both give the forced token's off-grammar check and the next digit.
     * K digits take K + 1 passes, not 2K. (The end token after the last digit is only
     * checked, never fed.) A row already off the grammar needs no argmax over the whole
     * vocabulary any more: its logits are made at the grammar's ids only. */
    uint32_t feed[2 * (n > 0 ? n : 1)];
    uint8_t full[2 * (n > 0 ? n : 1)];
    int counts[n > 0 ? n : 1];
    model_logit_sel sel = {.full = full, .ids = s->grammar_ids, .n_ids = s->n_grammar_ids};
    while (!rc) {
        int active = 0, total = 0;
        for (int i = 0; i < n; i++) {
            grammar_state *st = &s->states[i];
            if (st->done)
                continue;
            uint32_t forced;
            caches[active] = s->caches[i];
            full[total] = s->o.full_logits || !st->off_grammar;
            feed[total++] = st->n_tokens ? st->tokens[st->n_tokens - 1]
                                         : s->enc[i].ids.ids[s->enc[i].n_prompt - 1];
            counts[active] = 1;
            if (grammar_forced(&s->g, st, &forced) && forced != s->g.end_id) {
                full[total] = s->o.full_logits || !st->off_grammar;
                feed[total++] = forced;
                counts[active] = 2;
            }
            rows[active++] = i;
        }
        if (active == 0)
            break;
        rc = model_extend_batch_sel(s->m, caches, feed, counts, active, &sel, s->logits);
        s->stats.decode_steps++;
        for (int j = 0, at = 0; j < active && !rc; j++)
            for (int q = 0; q < counts[j]; q++, at++)
                grammar_step(&s->g, &s->states[rows[j]], s->logits + (size_t)at * V);
    }

    s->stats.decode_seconds += now_seconds() - t1;
    for (int i = 0; i < n && !rc; i++) {
        memset(&out[i], 0, sizeof out[i]);
        out[i].ok = 1;
        out[i].off_grammar = s->states[i].off_grammar;
        out[i].n_scores = s->states[i].n_scores;
        memcpy(out[i].scores, s->states[i].scores, sizeof(int) * (size_t)out[i].n_scores);
    }
    return rc;
}

/* Encode row i into batch slot `slot`. Returns 1 when it can be scored, 0 for a bad row. */
static int encode_row(scorer *s, const scorer_row *row, int slot, scorer_result *res)
{
    prompt_tokens *pt = &s->enc[slot];
    if (prompt_encode(&s->pe, &s->pcache, row->instruction, row->instruction_len, row->input,
                      row->input_len, NULL, 0, pt) != 0) {
        memset(res, 0, sizeof *res);
        snprintf(res->error, sizeof res->error, "%s", err_msg());
        return 0;
    }
    if ((int)pt->n_prompt > s->max_prompt || pt->n_prompt < 1) {
        memset(res, 0, sizeof *res);
        snprintf(res->error, sizeof res->error, "the prompt has %u tokens; at most %d fit "
                 "(--max-prompt-tokens, or the model's maximum length)", pt->n_prompt,
                 s->max_prompt);
        return 0;
    }
    return 1;
}

int scorer_score(scorer *s, const scorer_row *rows, int n, scorer_result *out)
{
    int B = s->o.batch_rows;
    int *where = xmalloc(sizeof *where * (size_t)B);
    scorer_result *tmp = xmalloc(sizeof *tmp * (size_t)B);
    int rc = 0;
    for (int at = 0; at < n && !rc;) {
        /* fill the batch slots with rows that encode; bad rows get their result at once */
        int m = 0;
        for (; at < n && m < B; at++)
            if (encode_row(s, &rows[at], m, &out[at]))
                where[m++] = at;
        rc = decode_batch(s, m, tmp);
        for (int j = 0; j < m && !rc; j++)
            out[where[j]] = tmp[j];
        s->stats.rows += m;
    }
    free(where);
    free(tmp);
    return rc;
}

int scorer_score_tokens(scorer *s, const prompt_tokens *rows, int n, scorer_result *out)
{
    int B = s->o.batch_rows, rc = 0;
    for (int at = 0; at < n && !rc; at += B) {
        int m = RB_MIN(B, n - at);
        for (int j = 0; j < m; j++) {
            prompt_tokens *pt = &s->enc[j];
            pt->ids.n = 0;
            for (size_t t = 0; t < rows[at + j].ids.n; t++)
                token_vec_push(&pt->ids, rows[at + j].ids.ids[t]);
            pt->n_prefix = rows[at + j].n_prefix;
            pt->n_prompt = rows[at + j].n_prompt;
            pt->sup_start = rows[at + j].sup_start;
        }
        rc = decode_batch(s, m, out + at);
        s->stats.rows += m;
    }
    return rc;
}

/* ---- as a backend ------------------------------------------------------------------------- */

typedef struct {
    scorer_backend base;
    scorer *s;
} model_backend;

static int backend_score(scorer_backend *b, const scorer_row *rows, int n, scorer_result *out)
{
    return scorer_score(((model_backend *)b)->s, rows, n, out);
}

static void backend_destroy(scorer_backend *b)
{
    model_backend *mb = (model_backend *)b;
    scorer_stats st = mb->s->stats;
    log_debug("scorer: %lld rows, %lld prefix reuses, %lld prefixes built, %lld tokens "
              "prefilled in %.2f s, %lld decode steps in %.2f s", (long long)st.rows,
              (long long)st.prefix_hits, (long long)st.prefix_builds,
              (long long)st.prefill_tokens, st.prefill_seconds, (long long)st.decode_steps,
              st.decode_seconds);
    scorer_free(mb->s);
    free(mb);
}

scorer_backend *scorer_backend_new(scorer *s)
{
    model_backend *b = xcalloc(1, sizeof *b);
    b->base.score_rows = backend_score;
    b->base.destroy = backend_destroy;
    b->s = s;
    return &b->base;
}
