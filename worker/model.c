/*
 * model.c: forward and backward of the decoder over one packed micro-batch.
 *
 * The residual stream at every layer input is kept (xs[0..L]). Without gradient checkpointing
 * every layer keeps its activations; with it, one set of activations is reused and the
 * backward recomputes each layer's forward from xs[l] with the very same code, so gradients
 * are bitwise the same either way. The LM head runs only on the supervised rows.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model_internal.h"
#include "util.h"

/* ---- workspace ---- */

static float *falloc(model *m, int64_t n) { return m->ops->alloc(sizeof(float) * (size_t)n); }

void model_acts_alloc(model *m, layer_acts *a, int T)
{
    const model_config *c = &m->cfg;
    int64_t C = c->hidden_size, I = c->intermediate_size, H = c->num_attention_heads;
    int64_t qd = H * c->head_dim, kvd = (int64_t)c->num_key_value_heads * c->head_dim;
    memset(a, 0, sizeof(*a));
    a->xn1 = falloc(m, T * C);
    a->rstd1 = falloc(m, T);
    a->q_lin = falloc(m, T * qd);
    a->rstd_q = falloc(m, T * H);
    a->q = falloc(m, T * qd);
    a->k_lin = falloc(m, T * kvd);
    a->rstd_k = falloc(m, T * c->num_key_value_heads);
    a->k = falloc(m, T * kvd);
    a->v = falloc(m, T * kvd);
    a->attn = falloc(m, T * qd);
    a->lse = falloc(m, T * H);
    a->x_mid = falloc(m, T * C);
    a->xn2 = falloc(m, T * C);
    a->rstd2 = falloc(m, T);
    a->gate = falloc(m, T * I);
    a->up = falloc(m, T * I);
    a->h = falloc(m, T * I);
    a->tmp = falloc(m, T * C);
    for (int mod = 0; mod < LORA_MOD_COUNT; mod++)
        a->u[mod] = m->n_params > 0 ? falloc(m, (int64_t)T * m->opt.lora_r) : NULL;
}

void model_acts_free(model *m, layer_acts *a)
{
    float *bufs[] = {a->xn1, a->rstd1, a->q_lin, a->rstd_q, a->q, a->k_lin, a->rstd_k, a->k,
                     a->v, a->attn, a->lse, a->x_mid, a->xn2, a->rstd2, a->gate, a->up, a->h,
                     a->tmp};
    for (size_t i = 0; i < RB_ARRAY_LEN(bufs); i++)
        m->ops->free(bufs[i]);
    for (int mod = 0; mod < LORA_MOD_COUNT; mod++)
        m->ops->free(a->u[mod]);
    memset(a, 0, sizeof(*a));
}

static void grads_alloc(model *m, grad_scratch *g, int T)
{
    const model_config *c = &m->cfg;
    int64_t C = c->hidden_size, I = c->intermediate_size;
    int64_t qd = (int64_t)c->num_attention_heads * c->head_dim;
    int64_t kvd = (int64_t)c->num_key_value_heads * c->head_dim;
    g->dres = falloc(m, T * C);
    g->dxn = falloc(m, T * C);
    g->dattn = falloc(m, T * qd);
    g->dq = falloc(m, T * qd);
    g->dk = falloc(m, T * kvd);
    g->dv = falloc(m, T * kvd);
    g->dh = falloc(m, T * I);
    g->dgate = falloc(m, T * I);
    g->dup = falloc(m, T * I);
    g->lora_tmp = falloc(m, (int64_t)T * RB_MAX(1, m->opt.lora_r));
}

static void grads_free(model *m, grad_scratch *g)
{
    float *bufs[] = {g->dres, g->dxn, g->dattn, g->dq, g->dk, g->dv, g->dh, g->dgate, g->dup,
                     g->lora_tmp};
    for (size_t i = 0; i < RB_ARRAY_LEN(bufs); i++)
        m->ops->free(bufs[i]);
    memset(g, 0, sizeof(*g));
}

static void release_tokens(model *m)
{
    const kernel_ops *ops = m->ops;
    for (int l = 0; m->xs && l <= m->cfg.num_hidden_layers; l++)
        ops->free(m->xs[l]);
    free(m->xs);
    m->xs = NULL;
    for (int i = 0; i < m->n_acts; i++)
        model_acts_free(m, &m->acts[i]);
    free(m->acts);
    m->acts = NULL;
    m->n_acts = 0;
    grads_free(m, &m->g);
    ops->free(m->bd.tokens);
    ops->free(m->bd.positions);
    m->bd.tokens = NULL;
    m->bd.positions = NULL;
    m->cap_tokens = 0;
}

/* Make the workspace hold T tokens, n_segs segments and n_sel supervised rows (0,0,0 frees). */
int model_reserve(model *m, int T, int n_segs, int n_sel)
{
    const kernel_ops *ops = m->ops;
    int C = m->cfg.hidden_size, L = m->cfg.num_hidden_layers;
    if (T > m->cap_tokens || T == 0) {
        release_tokens(m);
        if (T > 0) {
            m->xs = xcalloc((size_t)L + 1, sizeof(float *));
            for (int l = 0; l <= L; l++)
                m->xs[l] = falloc(m, (int64_t)T * C);
            m->n_acts = m->opt.gradient_checkpointing ? 1 : L;
            m->acts = xcalloc((size_t)m->n_acts, sizeof(layer_acts));
            for (int i = 0; i < m->n_acts; i++)
                model_acts_alloc(m, &m->acts[i], T);
            grads_alloc(m, &m->g, T);
            m->bd.tokens = ops->alloc(sizeof(uint32_t) * (size_t)T);
            m->bd.positions = ops->alloc(sizeof(int32_t) * (size_t)T);
            m->cap_tokens = T;
        }
    }
    if (n_segs + 1 > m->bd.cap_segs || T == 0) {
        ops->free(m->bd.cu_seqlens);
        m->bd.cu_seqlens = NULL;
        m->bd.cap_segs = 0;
        if (T > 0) {
            m->bd.cu_seqlens = ops->alloc(sizeof(int32_t) * (size_t)(n_segs + 1));
            m->bd.cap_segs = n_segs + 1;
        }
    }
    if (n_sel > m->cap_sel || T == 0) {
        float **bufs[] = {&m->sel_h, &m->sel_hn, &m->sel_rstd, &m->sel_dh};
        for (size_t i = 0; i < RB_ARRAY_LEN(bufs); i++) {
            ops->free(*bufs[i]);
            *bufs[i] = NULL;
        }
        ops->free(m->bd.sel_rows);
        ops->free(m->bd.sel_targets);
        m->bd.sel_rows = m->bd.sel_targets = NULL;
        m->cap_sel = 0;
        if (T > 0 && n_sel > 0) {
            for (size_t i = 0; i < RB_ARRAY_LEN(bufs); i++)
                *bufs[i] = falloc(m, (int64_t)n_sel * C);
            m->bd.sel_rows = ops->alloc(sizeof(int32_t) * (size_t)n_sel);
            m->bd.sel_targets = ops->alloc(sizeof(int32_t) * (size_t)n_sel);
            m->cap_sel = n_sel;
        }
    }
    if (T == 0) {
        ops->free(m->wtile);
        m->wtile = NULL;
    }
    return 0;
}

/* ---- one decoder layer, forward ---- */

static void qk_prepare(model *m, float *out, float *rstd, const float *lin, const float *norm,
                       const int32_t *pos, int T, int heads)
{
    const model_config *c = &m->cfg;
    int64_t n = (int64_t)T * heads * c->head_dim;
    if (norm)
        m->ops->rmsnorm_fwd(out, rstd, lin, norm, T * heads, c->head_dim, (float)c->rms_norm_eps);
    else
        m->ops->copy(out, lin, sizeof(float) * (size_t)n);
    m->ops->rope_fwd(out, pos, T, heads, c->head_dim, (float)c->rope_theta);
}

static void cache_append(model *m, int l, const layer_acts *a, const layer_io *io);

/* Attention of the layer's tokens: one packed call, or one call over every row's cache. */
static void attend(model *m, int l, layer_acts *a, const layer_io *io)
{
    const model_config *c = &m->cfg;
    const kernel_ops *ops = m->ops;
    int H = c->num_attention_heads, KV = c->num_key_value_heads, D = c->head_dim;
    float scale = 1.0f / sqrtf((float)D);

    if (!io->caches) {
        ops->attention_fwd(a->attn, a->lse, a->q, a->k, a->v, io->cu_q, io->cu_k, io->n_seg,
                           io->max_q, H, KV, D, scale);
        return;
    }
    cache_append(m, l, a, io);
    size_t at = (size_t)l * (size_t)io->n_rows;
    ops->attention_fwd_rows(a->attn, a->q, (const float *const *)(io->rows_k + at),
                            (const float *const *)(io->rows_v + at), io->rows_cu,
                            io->rows_klen, io->n_rows, io->max_count, H, KV, D, scale);
}

/* The layer's new keys and values go to each row's cache, after its cached tokens: one
 * append_rows for the keys and one for the values of every row. */
static void cache_append(model *m, int l, const layer_acts *a, const layer_io *io)
{
    int kvd = m->cfg.num_key_value_heads * m->cfg.head_dim;
    size_t at = (size_t)l * (size_t)io->n_rows;
    m->ops->append_rows(io->rows_k + at, a->k, io->rows_cu, io->rows_klen, io->n_rows, io->T,
                        kvd);
    m->ops->append_rows(io->rows_v + at, a->v, io->rows_cu, io->rows_klen, io->n_rows, io->T,
                        kvd);
}

void layer_forward(model *m, int l, const float *x_in, float *x_out, layer_acts *a,
                   const layer_io *io)
{
    const model_config *c = &m->cfg;
    const kernel_ops *ops = m->ops;
    const model_layer *ly = &m->layers[l];
    int T = io->T, C = c->hidden_size;
    int64_t TC = (int64_t)T * C, TI = (int64_t)T * c->intermediate_size;
    float eps = (float)c->rms_norm_eps, p = io->train ? (float)m->opt.lora_dropout : 0.0f;
    uint64_t seed[LORA_MOD_COUNT];
    for (int mod = 0; mod < LORA_MOD_COUNT; mod++)
        seed[mod] = lora_dropout_seed(m->opt.seed, m->fwd_calls, l, mod);

    /* 1. input norm, k/v projections, k norm (qwen3) and RoPE; a kv_only layer (the last
     * layer of a prefill whose outputs nobody reads) ends once they are cached */
    ops->rmsnorm_fwd(a->xn1, a->rstd1, x_in, ly->attn_norm, T, C, eps);
    linear_forward(m, &ly->lin[LORA_MOD_K], a->xn1, T, a->k_lin, a->u[LORA_MOD_K], p,
                   seed[LORA_MOD_K]);
    linear_forward(m, &ly->lin[LORA_MOD_V], a->xn1, T, a->v, a->u[LORA_MOD_V], p,
                   seed[LORA_MOD_V]);
    qk_prepare(m, a->k, a->rstd_k, a->k_lin, ly->k_norm, io->positions, T,
               c->num_key_value_heads);
    if (io->kv_only) {
        cache_append(m, l, a, io);
        return;
    }

    /* 2. q projection, per-head q norm (qwen3) and RoPE */
    linear_forward(m, &ly->lin[LORA_MOD_Q], a->xn1, T, a->q_lin, a->u[LORA_MOD_Q], p,
                   seed[LORA_MOD_Q]);
    qk_prepare(m, a->q, a->rstd_q, a->q_lin, ly->q_norm, io->positions, T,
               c->num_attention_heads);

    /* 3. attention, output projection, residual */
    attend(m, l, a, io);
    linear_forward(m, &ly->lin[LORA_MOD_O], a->attn, T, a->tmp, a->u[LORA_MOD_O], p,
                   seed[LORA_MOD_O]);
    ops->copy(a->x_mid, x_in, sizeof(float) * (size_t)TC);
    ops->add(a->x_mid, a->tmp, TC);

    /* 4. MLP: norm, gate and up, SwiGLU, down, residual */
    ops->rmsnorm_fwd(a->xn2, a->rstd2, a->x_mid, ly->mlp_norm, T, C, eps);
    linear_forward(m, &ly->lin[LORA_MOD_GATE], a->xn2, T, a->gate, a->u[LORA_MOD_GATE], p,
                   seed[LORA_MOD_GATE]);
    linear_forward(m, &ly->lin[LORA_MOD_UP], a->xn2, T, a->up, a->u[LORA_MOD_UP], p,
                   seed[LORA_MOD_UP]);
    ops->swiglu_fwd(a->h, a->gate, a->up, TI);
    linear_forward(m, &ly->lin[LORA_MOD_DOWN], a->h, T, a->tmp, a->u[LORA_MOD_DOWN], p,
                   seed[LORA_MOD_DOWN]);
    ops->copy(x_out, a->x_mid, sizeof(float) * (size_t)TC);
    ops->add(x_out, a->tmp, TC);
}

/* ---- one decoder layer, backward: m->g.dres holds d(loss)/d(x_out) and becomes d/d(x_in) --*/

static void layer_backward(model *m, int l, const float *x_in, const layer_acts *a,
                           const layer_io *io)
{
    const model_config *c = &m->cfg;
    const kernel_ops *ops = m->ops;
    const model_layer *ly = &m->layers[l];
    grad_scratch *g = &m->g;
    int T = io->T, C = c->hidden_size, H = c->num_attention_heads, KV = c->num_key_value_heads;
    int D = c->head_dim;
    int64_t TC = (int64_t)T * C;
    float p = io->train ? (float)m->opt.lora_dropout : 0.0f;
    uint64_t seed[LORA_MOD_COUNT];
    for (int mod = 0; mod < LORA_MOD_COUNT; mod++)
        seed[mod] = lora_dropout_seed(m->opt.seed, m->fwd_calls, l, mod);
    const model_linear *lin = ly->lin;

    /* 1. MLP: down, SwiGLU, gate and up, norm; add to the residual gradient */
    linear_backward(m, &lin[LORA_MOD_DOWN], g->dres, a->h, a->u[LORA_MOD_DOWN], T, g->dh, 0, p,
                    seed[LORA_MOD_DOWN]);
    ops->swiglu_bwd(g->dgate, g->dup, g->dh, a->gate, a->up, (int64_t)T * c->intermediate_size);
    linear_backward(m, &lin[LORA_MOD_GATE], g->dgate, a->xn2, a->u[LORA_MOD_GATE], T, g->dxn, 0,
                    p, seed[LORA_MOD_GATE]);
    linear_backward(m, &lin[LORA_MOD_UP], g->dup, a->xn2, a->u[LORA_MOD_UP], T, g->dxn, 1, p,
                    seed[LORA_MOD_UP]);
    ops->rmsnorm_bwd(g->dxn, g->dxn, a->x_mid, ly->mlp_norm, a->rstd2, T, C);
    ops->add(g->dres, g->dxn, TC);

    /* 2. output projection and attention */
    linear_backward(m, &lin[LORA_MOD_O], g->dres, a->attn, a->u[LORA_MOD_O], T, g->dattn, 0, p,
                    seed[LORA_MOD_O]);
    ops->attention_bwd(g->dq, g->dk, g->dv, g->dattn, a->q, a->k, a->v, a->attn, a->lse,
                       io->cu_q, io->cu_k, io->n_seg, io->max_q, H, KV, D,
                       1.0f / sqrtf((float)D));

    /* 3. RoPE and q/k norm backwards */
    ops->rope_bwd(g->dq, io->positions, T, H, D, (float)c->rope_theta);
    ops->rope_bwd(g->dk, io->positions, T, KV, D, (float)c->rope_theta);
    if (ly->q_norm) {
        ops->rmsnorm_bwd(g->dq, g->dq, a->q_lin, ly->q_norm, a->rstd_q, T * H, D);
        ops->rmsnorm_bwd(g->dk, g->dk, a->k_lin, ly->k_norm, a->rstd_k, T * KV, D);
    }

    /* 4. q/k/v projections; the input gradient only when a layer below needs it */
    float *dxn = l > 0 ? g->dxn : NULL;
    linear_backward(m, &lin[LORA_MOD_Q], g->dq, a->xn1, a->u[LORA_MOD_Q], T, dxn, 0, p,
                    seed[LORA_MOD_Q]);
    linear_backward(m, &lin[LORA_MOD_K], g->dk, a->xn1, a->u[LORA_MOD_K], T, dxn, 1, p,
                    seed[LORA_MOD_K]);
    linear_backward(m, &lin[LORA_MOD_V], g->dv, a->xn1, a->u[LORA_MOD_V], T, dxn, 1, p,
                    seed[LORA_MOD_V]);
    if (dxn) {
        ops->rmsnorm_bwd(g->dxn, g->dxn, x_in, ly->attn_norm, a->rstd1, T, C);
        ops->add(g->dres, g->dxn, TC);
    }
}

/* ---- a packed batch ---- */

/* Check a batch against the model: ids in the vocabulary, segments that tile the stream. */
static int batch_check(const model *m, const packed_batch *b)
{
    int V = m->cfg.vocab_size;
    if (b->n_tokens <= 0 || b->n_samples <= 0 || !b->cu_seqlens || b->cu_seqlens[0] != 0 ||
        b->cu_seqlens[b->n_samples] != b->n_tokens)
        return err_set(RB_EXIT_INPUT, "packed batch: %d tokens, %d segments: cu_seqlens must "
                       "run from 0 to n_tokens", b->n_tokens, b->n_samples);
    for (int s = 0; s < b->n_samples; s++)
        if (b->cu_seqlens[s + 1] < b->cu_seqlens[s])
            return err_set(RB_EXIT_INPUT, "packed batch: cu_seqlens decreases at segment %d", s);
    for (int t = 0; t < b->n_tokens; t++) {
        if (b->tokens[t] >= (uint32_t)V)
            return err_set(RB_EXIT_INPUT, "packed batch: token %u at %d is outside the "
                           "vocabulary (%d) of model %s", b->tokens[t], t, V, m->dir);
        if (b->targets[t] >= V)
            return err_set(RB_EXIT_INPUT, "packed batch: target %d at %d is outside the "
                           "vocabulary (%d) of model %s", b->targets[t], t, V, m->dir);
    }
    return 0;
}

/* Upload the batch and its supervised rows; fill io. Returns the supervised row count. */
static int batch_upload(model *m, const packed_batch *b, layer_io *io, int train)
{
    int T = b->n_tokens, n_sel = 0, max_q = 0;
    int32_t *rows = xmalloc(sizeof(int32_t) * (size_t)T);
    int32_t *tg = xmalloc(sizeof(int32_t) * (size_t)T);
    for (int t = 0; t < T; t++)
        if (b->targets[t] >= 0) {
            rows[n_sel] = t;
            tg[n_sel++] = b->targets[t];
        }
    for (int s = 0; s < b->n_samples; s++)
        max_q = RB_MAX(max_q, b->cu_seqlens[s + 1] - b->cu_seqlens[s]);

    const kernel_ops *ops = m->ops;
    model_reserve(m, T, b->n_samples, RB_MAX(n_sel, 1));
    ops->upload(m->bd.tokens, b->tokens, sizeof(uint32_t) * (size_t)T);
    ops->upload(m->bd.positions, b->positions, sizeof(int32_t) * (size_t)T);
    ops->upload(m->bd.cu_seqlens, b->cu_seqlens, sizeof(int32_t) * (size_t)(b->n_samples + 1));
    if (n_sel > 0) {
        ops->upload(m->bd.sel_rows, rows, sizeof(int32_t) * (size_t)n_sel);
        ops->upload(m->bd.sel_targets, tg, sizeof(int32_t) * (size_t)n_sel);
    }
    free(rows);
    free(tg);

    memset(io, 0, sizeof(*io));
    io->T = T;
    io->positions = m->bd.positions;
    io->cu_q = io->cu_k = m->bd.cu_seqlens;
    io->n_seg = b->n_samples;
    io->max_q = max_q;
    io->train = train;
    return n_sel;
}

static layer_acts *acts_of(model *m, int l)
{
    return m->n_acts == 1 ? &m->acts[0] : &m->acts[l];
}

/* Embedding and every layer: xs[L] holds the last hidden states. */
static void forward_layers(model *m, const layer_io *io)
{
    int L = m->cfg.num_hidden_layers;
    m->ops->embedding(m->xs[0], m->embed, m->bd.tokens, io->T, m->cfg.hidden_size);
    for (int l = 0; l < L; l++)
        layer_forward(m, l, m->xs[l], m->xs[l + 1], acts_of(m, l), io);
}

/* Final norm of the supervised rows and the LM head: returns the loss sum; with grad, leaves
 * grad_scale * d(loss)/d(xs[L]) in g.dres. */
static double head_loss(model *m, int n_sel, float grad_scale, int grad)
{
    const model_config *c = &m->cfg;
    const kernel_ops *ops = m->ops;
    int C = c->hidden_size, T = m->cap_tokens;
    ops->gather_rows(m->sel_h, m->xs[c->num_hidden_layers], m->bd.sel_rows, n_sel, C);
    ops->rmsnorm_fwd(m->sel_hn, m->sel_rstd, m->sel_h, m->final_norm, n_sel, C,
                     (float)c->rms_norm_eps);
    double loss = ops->lm_head_xent(m->sel_hn, m->lm_head, m->bd.sel_targets, n_sel, C,
                                    c->vocab_size, grad_scale, NULL, grad ? m->sel_dh : NULL);
    if (grad) {
        ops->rmsnorm_bwd(m->sel_dh, m->sel_dh, m->sel_h, m->final_norm, m->sel_rstd, n_sel, C);
        ops->memset0(m->g.dres, sizeof(float) * (size_t)T * C);
        ops->scatter_add_rows(m->g.dres, m->sel_dh, m->bd.sel_rows, n_sel, C);
    }
    return loss;
}

int model_forward_backward(model *m, const packed_batch *b, float grad_scale, double *loss_sum,
                           int64_t *n_tok)
{
    *loss_sum = 0.0;
    *n_tok = 0;
    int rc = batch_check(m, b);
    if (rc)
        return rc;
    layer_io io;
    int n_sel = batch_upload(m, b, &io, 1);
    if (n_sel == 0)
        return 0;

    /* 1. forward through every layer, then the LM head and its gradient */
    forward_layers(m, &io);
    *loss_sum = head_loss(m, n_sel, grad_scale, 1);
    *n_tok = n_sel;

    /* 2. backward, layer by layer (recomputing the layer first with checkpointing) */
    for (int l = m->cfg.num_hidden_layers - 1; l >= 0; l--) {
        if (m->opt.gradient_checkpointing)
            layer_forward(m, l, m->xs[l], m->xs[l + 1], acts_of(m, l), &io);
        layer_backward(m, l, m->xs[l], acts_of(m, l), &io);
    }
    m->fwd_calls++;
    return 0;
}

int model_forward_loss(model *m, const packed_batch *b, double *loss_sum, int64_t *n_tok)
{
    *loss_sum = 0.0;
    *n_tok = 0;
    int rc = batch_check(m, b);
    if (rc)
        return rc;
    layer_io io;
    int n_sel = batch_upload(m, b, &io, 0);
    if (n_sel == 0)
        return 0;
    forward_layers(m, &io);
    *loss_sum = head_loss(m, n_sel, 0.0f, 0);
    *n_tok = n_sel;
    return 0;
}

int model_logits_at(model *m, const packed_batch *b, const int32_t *rows, int n_rows,
                    float *logits)
{
    const model_config *c = &m->cfg;
    const kernel_ops *ops = m->ops;
    int rc = batch_check(m, b);
    if (rc)
        return rc;
    for (int i = 0; i < n_rows; i++)
        if (rows[i] < 0 || rows[i] >= b->n_tokens)
            return err_set(RB_EXIT_INPUT, "logits_at: row %d outside the batch (%d tokens)",
                           rows[i], b->n_tokens);
    layer_io io;
    batch_upload(m, b, &io, 0);
    forward_layers(m, &io);

    /* final norm and LM head at the chosen rows, a few rows at a time */
    int C = c->hidden_size, V = c->vocab_size;
    int32_t *d_rows = ops->alloc(sizeof(int32_t) * (size_t)n_rows);
    float *h = falloc(m, (int64_t)n_rows * C), *hn = falloc(m, (int64_t)n_rows * C);
    float *rstd = falloc(m, n_rows), *lg = falloc(m, (int64_t)V);
    ops->upload(d_rows, rows, sizeof(int32_t) * (size_t)n_rows);
    ops->gather_rows(h, m->xs[c->num_hidden_layers], d_rows, n_rows, C);
    ops->rmsnorm_fwd(hn, rstd, h, m->final_norm, n_rows, C, (float)c->rms_norm_eps);
    for (int i = 0; i < n_rows; i++) {
        ops->gemm(0, 1, 1, V, C, 1.0f, hn + (int64_t)i * C, C, m->lm_head, C, 0.0f, lg, V);
        ops->download(logits + (int64_t)i * V, lg, sizeof(float) * (size_t)V);
    }
    ops->free(d_rows);
    ops->free(h);
    ops->free(hn);
    ops->free(rstd);
    ops->free(lg);
    return 0;
}

double model_step_flops(const model_config *c, const packed_batch *b, int r)
{
    double T = b->n_tokens, C = c->hidden_size, I = c->intermediate_size;
    double qd = (double)c->num_attention_heads * c->head_dim;
    double kvd = (double)c->num_key_value_heads * c->head_dim;
    double io[7][2] = {{C, qd}, {C, kvd}, {C, kvd}, {qd, C}, {C, I}, {C, I}, {I, C}};
    double f = 0;
    for (int l = 0; l < c->num_hidden_layers; l++)
        for (int mod = 0; mod < 7; mod++) {
            double in = io[mod][0], out = io[mod][1];
            f += 2 * T * in * out;                       /* base forward */
            if (l > 0 || mod > 2)
                f += 2 * T * in * out;                   /* base backward (dx) */
            f += 2 * T * r * (in + out) * 3;             /* LoRA forward + backward */
        }
    double pairs = 0;
    for (int s = 0; s < b->n_samples; s++) {
        double n = b->cu_seqlens[s + 1] - b->cu_seqlens[s];
        pairs += n * (n + 1) / 2;
    }
    f += c->num_hidden_layers * pairs * qd * 2 * (2 + 5); /* attention fwd 2, bwd 5 matmuls */
    f += 2.0 * 2 * b->n_supervised * C * c->vocab_size;    /* LM head fwd + bwd */
    return f;
}
