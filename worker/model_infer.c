/*
 * model_infer.c: incremental inference for scoring. A KV cache holds one row's keys (after
 * q/k norm and RoPE) and values for every layer; prefill appends tokens to it and returns the
 * logits of the last one; decode_batch advances several rows by one token with the linear
 * layers batched across rows; prefill_batch does the same for several tokens per row. The LM
 * head runs only at each row's last token (on the CPU backend, a streaming kernel: see
 * kernels/cpu/cpu_gemm_nt.c).
 */
#include <stdlib.h>
#include <string.h>

#include "model_internal.h"
#include "util.h"

/* ---- the cache ---- */

static int64_t kv_width(const model *m)
{
    return (int64_t)m->cfg.num_key_value_heads * m->cfg.head_dim;
}

int model_kv_cache_new(model *m, int capacity, model_kv_cache **out)
{
    if (capacity <= 0)
        return err_set(RB_EXIT_INPUT, "KV cache capacity must be >= 1 (got %d)", capacity);
    int L = m->cfg.num_hidden_layers;
    model_kv_cache *c = xcalloc(1, sizeof(*c));
    c->m = m;
    c->cap = capacity;
    c->k = xcalloc((size_t)L, sizeof(float *));
    c->v = xcalloc((size_t)L, sizeof(float *));
    for (int l = 0; l < L; l++) {
        c->k[l] = m->ops->alloc(sizeof(float) * (size_t)(capacity * kv_width(m)));
        c->v[l] = m->ops->alloc(sizeof(float) * (size_t)(capacity * kv_width(m)));
    }
    *out = c;
    return 0;
}

void model_kv_cache_free(model_kv_cache *c)
{
    if (!c)
        return;
    for (int l = 0; l < c->m->cfg.num_hidden_layers; l++) {
        c->m->ops->free(c->k[l]);
        c->m->ops->free(c->v[l]);
    }
    free(c->k);
    free(c->v);
    free(c);
}

int model_kv_cache_len(const model_kv_cache *c) { return c->len; }
int model_kv_cache_capacity(const model_kv_cache *c) { return c->cap; }

void model_kv_cache_truncate(model_kv_cache *c, int len)
{
    if (len >= 0 && len < c->len)
        c->len = len;
}

int model_kv_cache_copy(model_kv_cache *dst, const model_kv_cache *src)
{
    if (dst->m != src->m)
        return err_set(RB_EXIT_RUNTIME, "KV cache copy between different models");
    if (dst->cap < src->len)
        return err_set(RB_EXIT_RUNTIME, "KV cache copy: %d tokens do not fit capacity %d",
                       src->len, dst->cap);
    size_t bytes = sizeof(float) * (size_t)(src->len * kv_width(src->m));
    for (int l = 0; l < src->m->cfg.num_hidden_layers; l++) {
        src->m->ops->copy(dst->k[l], src->k[l], bytes);
        src->m->ops->copy(dst->v[l], src->v[l], bytes);
    }
    dst->len = src->len;
    return 0;
}

/* ---- workspace ---- */

void model_infer_release(model *m)
{
    const kernel_ops *ops = m->ops;
    if (m->infer_cap > 0)
        model_acts_free(m, &m->infer_acts);
    void *bufs[] = {m->infer_x[0], m->infer_x[1], m->infer_tokens, m->infer_pos, m->infer_cu,
                    m->infer_last, m->infer_h, m->infer_hn, m->infer_rstd, m->infer_logits,
                    m->head_sel, m->infer_part, m->infer_part_hn, m->infer_part_logits,
                    m->infer_kv_rows};
    for (size_t i = 0; i < RB_ARRAY_LEN(bufs); i++)
        ops->free(bufs[i]);
    free(m->sel_ids);
    m->infer_x[0] = m->infer_x[1] = NULL;
    m->infer_tokens = NULL;
    m->infer_pos = m->infer_cu = m->infer_last = m->infer_part = NULL;
    m->infer_kv_rows = NULL;
    m->infer_h = m->infer_hn = m->infer_rstd = m->infer_logits = NULL;
    m->head_sel = m->infer_part_hn = m->infer_part_logits = NULL;
    m->sel_ids = NULL;
    m->n_sel_ids = 0;
    m->infer_cap = m->infer_cap_rows = 0;
}

static void infer_reserve(model *m, int T, int n_rows)
{
    if (T <= m->infer_cap && n_rows <= m->infer_cap_rows)
        return;
    T = RB_MAX(T, m->infer_cap);
    n_rows = RB_MAX(n_rows, m->infer_cap_rows);
    model_infer_release(m);
    const kernel_ops *ops = m->ops;
    int64_t C = m->cfg.hidden_size;
    model_acts_alloc(m, &m->infer_acts, T);
    for (int i = 0; i < 2; i++)
        m->infer_x[i] = ops->alloc(sizeof(float) * (size_t)(T * C));
    m->infer_tokens = ops->alloc(sizeof(uint32_t) * (size_t)T);
    m->infer_pos = ops->alloc(sizeof(int32_t) * (size_t)T);
    m->infer_cu = ops->alloc(sizeof(int32_t) * (2 * (size_t)n_rows + 1));
    m->infer_kv_rows =
        ops->alloc(sizeof(float *) * 2 * (size_t)m->cfg.num_hidden_layers * (size_t)n_rows);
    m->infer_last = ops->alloc(sizeof(int32_t) * (size_t)n_rows);
    m->infer_h = ops->alloc(sizeof(float) * (size_t)(n_rows * C));
    m->infer_hn = ops->alloc(sizeof(float) * (size_t)(n_rows * C));
    m->infer_rstd = ops->alloc(sizeof(float) * (size_t)n_rows);
    m->infer_part = ops->alloc(sizeof(int32_t) * (size_t)n_rows);
    m->infer_part_hn = ops->alloc(sizeof(float) * (size_t)(n_rows * C));
    m->infer_logits = ops->host_memory
                          ? NULL
                          : ops->alloc(sizeof(float) * (size_t)n_rows * m->cfg.vocab_size);
    m->infer_cap = T;
    m->infer_cap_rows = n_rows;
}

/* The LM head's rows at sel's ids, gathered once per id set (and after a workspace resize),
 * and room for the selected logits of every output row. */
static void sel_prepare(model *m, const model_logit_sel *sel)
{
    const kernel_ops *ops = m->ops;
    size_t n = (size_t)sel->n_ids;
    if (m->sel_ids && m->n_sel_ids == sel->n_ids &&
        memcmp(m->sel_ids, sel->ids, sizeof(uint32_t) * n) == 0)
        return;
    ops->free(m->head_sel);
    ops->free(m->infer_part_logits);
    free(m->sel_ids);
    int C = m->cfg.hidden_size;
    m->sel_ids = xmalloc(sizeof(uint32_t) * n);
    memcpy(m->sel_ids, sel->ids, sizeof(uint32_t) * n);
    m->n_sel_ids = sel->n_ids;
    int32_t *idx = xmalloc(sizeof(int32_t) * n);
    for (size_t i = 0; i < n; i++)
        idx[i] = (int32_t)sel->ids[i];
    int32_t *idx_dev = ops->alloc(sizeof(int32_t) * n);
    ops->upload(idx_dev, idx, sizeof(int32_t) * n);
    m->head_sel = ops->alloc(sizeof(float) * n * (size_t)C);
    ops->gather_rows(m->head_sel, m->lm_head, idx_dev, sel->n_ids, C);
    ops->free(idx_dev);
    free(idx);
    m->infer_part_logits = ops->alloc(sizeof(float) * n * (size_t)m->infer_cap_rows);
}

/* The LM head at the n_out final-normed rows of m->infer_hn into logits (host): whole rows, or
 * with sel only the selected entries of the rows sel->full leaves out. */
static void lm_head_rows(model *m, int n_out, const model_logit_sel *sel, float *logits)
{
    const kernel_ops *ops = m->ops;
    int C = m->cfg.hidden_size, V = m->cfg.vocab_size;
    /* a backend on host memory writes the caller's buffer directly (no copy of n_out x V
     * floats per decoding step) */
    float *dst = ops->host_memory ? logits : m->infer_logits;

    /* 1. runs of consecutive whole rows, one GEMM each */
    for (int t = 0; t < n_out;) {
        int end = t;
        while (end < n_out && (!sel || sel->full[end]))
            end++;
        if (end > t) {
            ops->gemm(0, 1, end - t, V, C, 1.0f, m->infer_hn + (int64_t)t * C, C, m->lm_head,
                      C, 0.0f, dst + (int64_t)t * V, V);
            if (dst != logits)
                ops->download(logits + (int64_t)t * V, dst + (int64_t)t * V,
                              sizeof(float) * (size_t)(end - t) * V);
        }
        t = end + 1;
    }
    if (!sel)
        return;

    /* 2. the other rows against the LM head's selected rows only */
    int32_t *part = xmalloc(sizeof(int32_t) * (size_t)RB_MAX(n_out, 1));
    int k = 0;
    for (int t = 0; t < n_out; t++)
        if (!sel->full[t])
            part[k++] = t;
    if (k > 0) {
        int n = sel->n_ids;
        sel_prepare(m, sel);
        ops->upload(m->infer_part, part, sizeof(int32_t) * (size_t)k);
        ops->gather_rows(m->infer_part_hn, m->infer_hn, m->infer_part, k, C);
        ops->gemm(0, 1, k, n, C, 1.0f, m->infer_part_hn, C, m->head_sel, C, 0.0f,
                  m->infer_part_logits, n);
        float *got = xmalloc(sizeof(float) * (size_t)k * (size_t)n);
        ops->download(got, m->infer_part_logits, sizeof(float) * (size_t)k * (size_t)n);
        for (int i = 0; i < k; i++)
            for (int j = 0; j < n; j++)
                logits[(int64_t)part[i] * V + sel->ids[j]] = got[(int64_t)i * n + j];
        free(got);
    }
    free(part);
}

/* ---- one step over several rows ---- */

/* Row r appends counts[r] tokens (taken in order from tokens) to caches[r]; logits (host, or
 * NULL) of each row's last token [n_rows, V], or with all_logits of every token [T, V]. */
static int infer_step(model *m, model_kv_cache **caches, const int *counts, int n_rows,
                      const uint32_t *tokens, float *logits, int all_logits,
                      const model_logit_sel *sel)
{
    const model_config *c = &m->cfg;
    const kernel_ops *ops = m->ops;
    int T = 0, C = c->hidden_size, V = c->vocab_size;

    /* 1. check room and ids, build positions, per-row segment bounds and last rows */
    for (int r = 0; r < n_rows; r++) {
        if (caches[r]->m != m)
            return err_set(RB_EXIT_RUNTIME, "KV cache of another model");
        if (counts[r] <= 0 || caches[r]->len + counts[r] > caches[r]->cap)
            return err_set(RB_EXIT_INPUT, "KV cache row %d: %d + %d tokens exceed capacity %d",
                           r, caches[r]->len, counts[r], caches[r]->cap);
        T += counts[r];
    }
    for (int t = 0; t < T; t++)
        if (tokens[t] >= (uint32_t)V)
            return err_set(RB_EXIT_INPUT, "token %u is outside the vocabulary (%d)", tokens[t],
                           V);
    int n_out = all_logits ? T : n_rows, max_count = 0; /* rows of logits */
    int L = c->num_hidden_layers;
    int32_t *pos = xmalloc(sizeof(int32_t) * (size_t)T);
    int32_t *cu = xmalloc(sizeof(int32_t) * (2 * (size_t)n_rows + 1)); /* cu, then k_len */
    int32_t *last = xmalloc(sizeof(int32_t) * (size_t)n_out);
    float **kv = xmalloc(sizeof(float *) * 2 * (size_t)L * (size_t)n_rows);
    cu[0] = 0;
    for (int r = 0, t = 0; r < n_rows; r++) {
        int len = caches[r]->len, cnt = counts[r];
        for (int i = 0; i < cnt; i++)
            pos[t + i] = len + i;
        cu[r + 1] = cu[r] + cnt;
        cu[n_rows + 1 + r] = len + cnt;
        max_count = RB_MAX(max_count, cnt);
        for (int l = 0; l < L; l++) {
            kv[(size_t)l * n_rows + r] = caches[r]->k[l];
            kv[(size_t)(L + l) * n_rows + r] = caches[r]->v[l];
        }
        t += cnt;
        if (!all_logits)
            last[r] = t - 1;
    }
    for (int t = 0; all_logits && t < T; t++)
        last[t] = t;
    infer_reserve(m, T, n_out);
    ops->upload(m->infer_tokens, tokens, sizeof(uint32_t) * (size_t)T);
    ops->upload(m->infer_pos, pos, sizeof(int32_t) * (size_t)T);
    ops->upload(m->infer_cu, cu, sizeof(int32_t) * (2 * (size_t)n_rows + 1));
    ops->upload(m->infer_last, last, sizeof(int32_t) * (size_t)n_out);
    ops->upload(m->infer_kv_rows, kv, sizeof(float *) * 2 * (size_t)L * (size_t)n_rows);
    free(pos);
    free(cu);
    free(last);
    free(kv);

    /* 2. the layers, appending keys and values to each row's cache. Without logits nothing
     * reads the last layer's output, only its keys and values: it stops once they are cached
     * (a prefill skips 1/L of its layers' work but the k/v projections). */
    layer_io io = {.T = T, .positions = m->infer_pos, .caches = caches, .n_rows = n_rows,
                   .rows_cu = m->infer_cu, .rows_klen = m->infer_cu + n_rows + 1,
                   .rows_k = m->infer_kv_rows, .rows_v = m->infer_kv_rows + (size_t)L * n_rows,
                   .max_count = max_count};
    ops->embedding(m->infer_x[0], m->embed, m->infer_tokens, T, C);
    for (int l = 0; l < L; l++) {
        io.kv_only = !logits && l == L - 1;
        layer_forward(m, l, m->infer_x[l % 2], m->infer_x[(l + 1) % 2], &m->infer_acts, &io);
    }
    for (int r = 0; r < n_rows; r++)
        caches[r]->len += counts[r];

    /* 3. final norm and LM head at each row's last token (or at every token) */
    if (logits) {
        ops->gather_rows(m->infer_h, m->infer_x[c->num_hidden_layers % 2], m->infer_last, n_out,
                         C);
        ops->rmsnorm_fwd(m->infer_hn, m->infer_rstd, m->infer_h, m->final_norm, n_out, C,
                         (float)c->rms_norm_eps);
        lm_head_rows(m, n_out, sel, logits);
    }
    return 0;
}

int model_prefill(model *m, model_kv_cache *c, const uint32_t *tokens, int n, float *logits)
{
    return infer_step(m, &c, &n, 1, tokens, logits, 0, NULL);
}

/* Rows and caches for a batched call: at least one row, no cache given twice. */
static int check_rows(model_kv_cache **caches, int n_rows, const char *fn)
{
    if (n_rows <= 0)
        return err_set(RB_EXIT_RUNTIME, "%s: no rows (n_rows %d)", fn, n_rows);
    for (int r = 0; r < n_rows; r++)
        for (int q = 0; q < r; q++)
            if (caches[q] == caches[r])
                return err_set(RB_EXIT_RUNTIME, "%s: rows %d and %d share one KV cache", fn, q,
                               r);
    return 0;
}

int model_prefill_batch(model *m, model_kv_cache **caches, const uint32_t *tokens,
                        const int *counts, int n_rows, float *logits)
{
    int rc = check_rows(caches, n_rows, "model_prefill_batch");
    return rc ? rc : infer_step(m, caches, counts, n_rows, tokens, logits, 0, NULL);
}

int model_extend_batch(model *m, model_kv_cache **caches, const uint32_t *tokens,
                       const int *counts, int n_rows, float *logits)
{
    return model_extend_batch_sel(m, caches, tokens, counts, n_rows, NULL, logits);
}

int model_extend_batch_sel(model *m, model_kv_cache **caches, const uint32_t *tokens,
                           const int *counts, int n_rows, const model_logit_sel *sel,
                           float *logits)
{
    int rc = check_rows(caches, n_rows, "model_extend_batch");
    for (int i = 0; !rc && sel && i < sel->n_ids; i++)
        if (sel->ids[i] >= (uint32_t)m->cfg.vocab_size)
            rc = err_set(RB_EXIT_RUNTIME, "model_extend_batch: selected id %u is outside the "
                         "vocabulary (%d)", sel->ids[i], m->cfg.vocab_size);
    if (!rc && sel && sel->n_ids <= 0)
        rc = err_set(RB_EXIT_RUNTIME, "model_extend_batch: a selection without ids");
    return rc ? rc : infer_step(m, caches, counts, n_rows, tokens, logits, 1, sel);
}

int model_decode_batch(model *m, model_kv_cache **caches, const uint32_t *tokens, int n_rows,
                       float *logits)
{
    int *counts = xmalloc(sizeof(int) * (size_t)RB_MAX(n_rows, 1));
    for (int r = 0; r < n_rows; r++)
        counts[r] = 1;
    int rc = infer_step(m, caches, counts, n_rows, tokens, logits, 0, NULL);
    free(counts);
    return rc;
}
