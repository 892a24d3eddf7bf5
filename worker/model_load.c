/*
 * model_load.c: loading a Hugging Face decoder into backend memory, the flat LoRA buffer and
 * its table, PEFT adapter files, and the model's options.
 */
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "model_internal.h"
#include "nf4.h"
#include "safetensors.h"
#include "util.h"

void model_options_defaults(model_options *o)
{
    memset(o, 0, sizeof(*o));
    o->adapter = ADAPTER_LORA;
    o->lora_r = 8;
    o->lora_alpha = 16.0;
    o->lora_dropout = 0.0;
    o->lora_targets = LORA_ALL;
    o->seed = 42;
    o->flat_align = 1;
    o->backend = "cpu";
    o->gemm_precision = KERNEL_GEMM_BF16;
}

int model_gemm_precision_of(const rubric_config *cfg)
{
    if (strcmp(cfg->bf16, "false") != 0) /* true, or auto: every supported card has bf16 */
        return KERNEL_GEMM_BF16;
    return cfg->tf32 ? KERNEL_GEMM_TF32 : KERNEL_GEMM_FP32;
}

void model_options_from_config(model_options *o, const rubric_config *cfg)
{
    o->adapter = cfg->adapter;
    if (cfg->load_in_4bit && o->adapter == ADAPTER_LORA)
        o->adapter = ADAPTER_QLORA;
    o->lora_r = cfg->lora_r;
    o->lora_alpha = cfg->lora_alpha;
    o->lora_dropout = cfg->lora_dropout;
    o->lora_targets = cfg->lora_targets;
    o->gradient_checkpointing = cfg->gradient_checkpointing;
    o->seed = cfg->seed;
    o->gemm_precision = model_gemm_precision_of(cfg);
}

/* ---- weights ---- */


/* Read a tensor of the given shape into a new backend buffer. */
static int load_tensor(model *m, const safetensors_set *st, const char *name, int ndim,
                       int64_t d0, int64_t d1, float **out)
{
    int64_t shape[2] = {d0, d1}, n = ndim == 1 ? d0 : d0 * d1;
    size_t bytes = sizeof(float) * (size_t)n;
    float *buf = m->ops->alloc(bytes);
    float *host = m->ops->host_memory ? buf : xmalloc(bytes); /* no staging copy on the CPU */
    int rc = safetensors_read_f32(st, name, ndim, shape, host);
    if (!rc && host != buf)
        m->ops->upload(buf, host, bytes);
    if (host != buf)
        free(host);
    if (rc) {
        m->ops->free(buf);
        return err_prefix(rc, "model %s", m->dir);
    }
    *out = buf;
    m->base_bytes += n * (int64_t)sizeof(float);
    return 0;
}

/* QLoRA: quantize a weight as bitsandbytes does and keep codes + fp32 block scales. */
static int load_linear_nf4(model *m, const safetensors_set *st, const char *name,
                           model_linear *lin)
{
    int64_t shape[2] = {lin->out, lin->in}, n = shape[0] * shape[1];
    float *host = xmalloc(sizeof(float) * (size_t)n);
    int rc = safetensors_read_f32(st, name, 2, shape, host);
    nf4_tensor q;
    if (!rc)
        rc = nf4_quantize(host, n, 1, &q);
    free(host);
    if (rc)
        return err_prefix(rc, "model %s: %s", m->dir, name);

    /* block scales expanded to fp32 once: dequantizing a tile is then one multiply */
    float *absmax = xmalloc(sizeof(float) * (size_t)q.n_blocks);
    for (int64_t b = 0; b < q.n_blocks; b++)
        absmax[b] = nf4_block_absmax(&q, b);
    size_t code_bytes = (size_t)(n + 1) / 2;
    uint8_t *packed = m->ops->alloc(code_bytes);
    float *scales = m->ops->alloc(sizeof(float) * (size_t)q.n_blocks);
    m->ops->upload(packed, q.codes, code_bytes);
    m->ops->upload(scales, absmax, sizeof(float) * (size_t)q.n_blocks);
    lin->nf4 = (kernel_nf4_weight){packed, scales, lin->out, lin->in, NF4_BLOCK};
    m->base_bytes += (int64_t)nf4_bytes(&q);
    free(absmax);
    nf4_free(&q);
    return 0;
}

static int load_linear(model *m, const safetensors_set *st, int l, int mod, int in, int out,
                       int has_bias)
{
    model_linear *lin = &m->layers[l].lin[mod];
    lin->in = in;
    lin->out = out;
    lin->lora_a_off = lin->lora_b_off = -1;
    char *name = xasprintf("model.layers.%d.%s.%s.weight", l, lora_module_parent(mod),
                           lora_module_name(mod));
    int rc = m->opt.adapter == ADAPTER_QLORA ? load_linear_nf4(m, st, name, lin)
                                             : load_tensor(m, st, name, 2, out, in, &lin->w);
    free(name);
    if (!rc && has_bias) {
        name = xasprintf("model.layers.%d.%s.%s.bias", l, lora_module_parent(mod),
                         lora_module_name(mod));
        rc = load_tensor(m, st, name, 1, out, 0, &lin->bias);
        free(name);
    }
    return rc;
}

static int load_layer(model *m, const safetensors_set *st, int l)
{
    const model_config *c = &m->cfg;
    model_layer *ly = &m->layers[l];
    int C = c->hidden_size, I = c->intermediate_size, D = c->head_dim;
    int qd = c->num_attention_heads * D, kvd = c->num_key_value_heads * D;
    int qkv_bias = c->attention_bias || strcmp(c->model_type, "qwen2") == 0;
    int o_bias = c->o_bias;
    char name[160];
    int rc = 0;

    snprintf(name, sizeof(name), "model.layers.%d.input_layernorm.weight", l);
    rc = rc ? rc : load_tensor(m, st, name, 1, C, 0, &ly->attn_norm);
    snprintf(name, sizeof(name), "model.layers.%d.post_attention_layernorm.weight", l);
    rc = rc ? rc : load_tensor(m, st, name, 1, C, 0, &ly->mlp_norm);
    if (c->qk_norm) {
        snprintf(name, sizeof(name), "model.layers.%d.self_attn.q_norm.weight", l);
        rc = rc ? rc : load_tensor(m, st, name, 1, D, 0, &ly->q_norm);
        snprintf(name, sizeof(name), "model.layers.%d.self_attn.k_norm.weight", l);
        rc = rc ? rc : load_tensor(m, st, name, 1, D, 0, &ly->k_norm);
    }
    rc = rc ? rc : load_linear(m, st, l, LORA_MOD_Q, C, qd, qkv_bias);
    rc = rc ? rc : load_linear(m, st, l, LORA_MOD_K, C, kvd, qkv_bias);
    rc = rc ? rc : load_linear(m, st, l, LORA_MOD_V, C, kvd, qkv_bias);
    rc = rc ? rc : load_linear(m, st, l, LORA_MOD_O, qd, C, o_bias);
    rc = rc ? rc : load_linear(m, st, l, LORA_MOD_GATE, C, I, 0);
    rc = rc ? rc : load_linear(m, st, l, LORA_MOD_UP, C, I, 0);
    rc = rc ? rc : load_linear(m, st, l, LORA_MOD_DOWN, I, C, 0);
    return rc;
}

static int load_base(model *m)
{
    const model_config *c = &m->cfg;
    safetensors_set *st = NULL;
    int rc = safetensors_open_dir(&st, m->dir);
    if (rc)
        return rc;
    m->layers = xcalloc((size_t)c->num_hidden_layers, sizeof(model_layer));
    rc = load_tensor(m, st, "model.embed_tokens.weight", 2, c->vocab_size, c->hidden_size,
                     &m->embed);
    for (int l = 0; !rc && l < c->num_hidden_layers; l++)
        rc = load_layer(m, st, l);
    rc = rc ? rc : load_tensor(m, st, "model.norm.weight", 1, c->hidden_size, 0, &m->final_norm);
    if (!rc && c->tie_word_embeddings)
        m->lm_head = m->embed;
    else if (!rc)
        rc = load_tensor(m, st, "lm_head.weight", 2, c->vocab_size, c->hidden_size, &m->lm_head);
    safetensors_close(st);
    return rc;
}

/* ---- the flat trainable buffer ---- */

static void table_add(model *m, int layer, int mod, int is_b, int rows, int cols, int64_t *off)
{
    lora_param *p = &m->table[m->n_table++];
    p->name = lora_param_name(layer, mod, is_b);
    p->offset = *off;
    p->rows = rows;
    p->cols = cols;
    *off += (int64_t)rows * cols;
}

static void build_trainable(model *m)
{
    const model_options *o = &m->opt;
    int L = m->cfg.num_hidden_layers, r = o->lora_r;
    int64_t off = 0;
    int use_lora = o->adapter != ADAPTER_NONE && r > 0;

    /* lay out A then B of every targeted module, layer by layer */
    m->table = xcalloc((size_t)L * LORA_MOD_COUNT * 2 + 1, sizeof(lora_param));
    for (int l = 0; use_lora && l < L; l++)
        for (int mod = 0; mod < LORA_MOD_COUNT; mod++) {
            model_linear *lin = &m->layers[l].lin[mod];
            if (!(o->lora_targets & lora_module_bit(mod)))
                continue;
            lin->lora_a_off = off;
            table_add(m, l, mod, 0, r, lin->in, &off);
            lin->lora_b_off = off;
            table_add(m, l, mod, 1, lin->out, r, &off);
        }
    int64_t align = o->flat_align > 0 ? o->flat_align : 1;
    m->n_params = off;
    m->n_padded = (off + align - 1) / align * align;
    if (m->n_padded == 0)
        m->n_padded = align;
    m->lora_scale = use_lora ? (float)(o->lora_alpha / r) : 0.0f;

    /* A as PEFT initialises it, B zero, padding zero */
    float *host = xcalloc((size_t)m->n_padded, sizeof(float));
    for (int l = 0; use_lora && l < L; l++)
        for (int mod = 0; mod < LORA_MOD_COUNT; mod++) {
            model_linear *lin = &m->layers[l].lin[mod];
            if (lin->lora_a_off >= 0)
                lora_init_a(host + lin->lora_a_off, r, lin->in, o->seed, l, mod);
        }
    m->params = m->ops->alloc(sizeof(float) * (size_t)m->n_padded);
    m->grads = m->ops->alloc(sizeof(float) * (size_t)m->n_padded);
    m->ops->upload(m->params, host, sizeof(float) * (size_t)m->n_padded);
    free(host);
}

static int check_shape(const model *m)
{
    const model_config *c = &m->cfg;
    if (c->num_key_value_heads <= 0 || c->num_attention_heads % c->num_key_value_heads != 0)
        return err_set(RB_EXIT_INPUT, "%s/config.json: num_attention_heads %d is not a multiple "
                       "of num_key_value_heads %d", m->dir, c->num_attention_heads,
                       c->num_key_value_heads);
    if (c->head_dim % 2 != 0 || c->head_dim > 512)
        return err_set(RB_EXIT_INPUT, "%s/config.json: head_dim %d must be even and <= 512",
                       m->dir, c->head_dim);
    return 0;
}

int model_load(model **out, const char *dir, const model_options *opt)
{
    *out = NULL;
    const kernel_ops *ops = kernel_ops_select(opt->backend);
    if (!ops)
        return err_prefix(RB_EXIT_INPUT, "model options");
    if (opt->adapter != ADAPTER_NONE && opt->lora_r <= 0)
        return err_set(RB_EXIT_INPUT, "lora_r must be >= 1 (got %d)", opt->lora_r);

    kernel_gemm_precision_set(ops, opt->gemm_precision);
    model *m = xcalloc(1, sizeof(*m));
    m->ops = ops;
    m->opt = *opt;
    m->opt.backend = NULL;
    m->dir = xstrdup(dir);
    int rc = model_config_load(&m->cfg, dir);
    rc = rc ? rc : check_shape(m);
    rc = rc ? rc : load_base(m);
    if (rc) {
        model_free(m);
        return rc;
    }
    build_trainable(m);
    log_debug("model %s: %s, %d layers, hidden %d, %lld trainable parameters (%lld padded)",
              dir, m->cfg.model_type, m->cfg.num_hidden_layers, m->cfg.hidden_size,
              (long long)m->n_params, (long long)m->n_padded);
    *out = m;
    return 0;
}

static void free_linear(model *m, model_linear *lin)
{
    m->ops->free(lin->w);
    m->ops->free((void *)lin->nf4.packed);
    m->ops->free((void *)lin->nf4.absmax);
    m->ops->free(lin->bias);
}

void model_free(model *m)
{
    if (!m)
        return;
    const kernel_ops *ops = m->ops;
    for (int l = 0; m->layers && l < m->cfg.num_hidden_layers; l++) {
        model_layer *ly = &m->layers[l];
        ops->free(ly->attn_norm);
        ops->free(ly->mlp_norm);
        ops->free(ly->q_norm);
        ops->free(ly->k_norm);
        for (int mod = 0; mod < LORA_MOD_COUNT; mod++)
            free_linear(m, &ly->lin[mod]);
    }
    free(m->layers);
    if (m->lm_head != m->embed)
        ops->free(m->lm_head);
    ops->free(m->embed);
    ops->free(m->final_norm);
    ops->free(m->params);
    ops->free(m->grads);
    for (int i = 0; i < m->n_table; i++)
        free(m->table[i].name);
    free(m->table);
    model_reserve(m, 0, 0, 0);
    model_infer_release(m);
    free(m->dir);
    free(m);
}

/* ---- accessors ---- */

const model_config *model_get_config(const model *m) { return &m->cfg; }
const kernel_ops *model_ops(const model *m) { return m->ops; }

int64_t model_weight_bytes(const model *m)
{
    return m->base_bytes + 2 * m->n_padded * (int64_t)sizeof(float);
}

void model_trainable(model *m, model_trainable_view *out)
{
    out->params = m->params;
    out->grads = m->grads;
    out->n = m->n_params;
    out->n_padded = m->n_padded;
    out->n_tensors = m->n_table;
    out->table = m->table;
}

int model_find_param(const model *m, const char *name)
{
    for (int i = 0; i < m->n_table; i++)
        if (strcmp(m->table[i].name, name) == 0)
            return i;
    return -1;
}

void model_zero_grad(model *m)
{
    m->ops->memset0(m->grads, sizeof(float) * (size_t)m->n_padded);
}

int model_load_adapter(model *m, const char *path)
{
    safetensors_set *st = NULL;
    char *file = path_is_dir(path) ? xasprintf("%s/adapter_model.safetensors", path)
                                   : xstrdup(path);
    int rc = safetensors_open_file(&st, file);
    free(file);
    if (rc)
        return err_prefix(rc, "adapter");
    float *host = xmalloc(sizeof(float) * (size_t)(m->n_padded));
    m->ops->download(host, m->params, sizeof(float) * (size_t)m->n_padded);
    for (int i = 0; !rc && i < m->n_table; i++) {
        const lora_param *p = &m->table[i];
        int64_t shape[2] = {p->rows, p->cols};
        rc = safetensors_read_f32(st, p->name, 2, shape, host + p->offset);
    }
    if (!rc)
        m->ops->upload(m->params, host, sizeof(float) * (size_t)m->n_padded);
    else
        err_prefix(rc, "adapter %s (r %d, targets 0x%x)", path, m->opt.lora_r,
                   m->opt.lora_targets);
    free(host);
    safetensors_close(st);
    return rc;
}
