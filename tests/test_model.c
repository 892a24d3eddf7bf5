/*
 * test_model.c: the model against transformers + PEFT (fixtures from
 * tests/ref/gen_model_fixtures.py), and its own invariants: packed == separate samples,
 * gradient checkpointing bitwise, empty batches, KV-cache inference == full forward, QLoRA ==
 * fp32 with the dequantized weights, clear load errors.
 *
 * "Relative error" of a tensor is max|got - want| / max|want| (infinity norms).
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "adamw.h"
#include "model_internal.h"
#include "nf4.h"
#include "safetensors.h"
#include "util.h"


#define FIX "tests/fixtures/model/"

/* ---- helpers ---- */

static int32_t *json_ints(json_t *root, const char *key, int *n)
{
    json_t *a = json_object_get(root, key);
    cr_assert(json_is_array(a), "batch.json: %s", key);
    *n = (int)json_array_size(a);
    int32_t *v = xmalloc(sizeof(int32_t) * (size_t)(*n + 1));
    for (int i = 0; i < *n; i++)
        v[i] = (int32_t)json_integer_value(json_array_get(a, (size_t)i));
    return v;
}

/* The fixture's packed batch. */
static void load_batch(const char *name, packed_batch *b)
{
    char *path = xasprintf(FIX "%s/batch.json", name);
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    cr_assert(root, "%s: %s", path, je.text);
    int n, n_cu, n_pos, n_tg;
    int32_t *tok = json_ints(root, "tokens", &n);
    int32_t *pos = json_ints(root, "positions", &n_pos);
    int32_t *tg = json_ints(root, "targets", &n_tg);
    int32_t *cu = json_ints(root, "cu_seqlens", &n_cu);
    packed_batch_init(b, 1, n, n_cu - 1);
    b->n_samples = n_cu - 1;
    b->n_supervised = 0;
    for (int i = 0; i < n; i++) {
        b->tokens[i] = (uint32_t)tok[i];
        b->positions[i] = pos[i];
        b->targets[i] = tg[i];
        b->n_supervised += tg[i] >= 0;
    }
    memcpy(b->cu_seqlens, cu, sizeof(int32_t) * (size_t)n_cu);
    free(tok);
    free(pos);
    free(tg);
    free(cu);
    json_decref(root);
    free(path);
}

/* Sub-batch of segment s of b (positions as they are). */
static void segment_batch(const packed_batch *b, int s, packed_batch *out)
{
    int t0 = b->cu_seqlens[s], n = b->cu_seqlens[s + 1] - t0;
    packed_batch_init(out, 1, n, 1);
    out->n_samples = 1;
    out->cu_seqlens[1] = n;
    out->n_supervised = 0;
    for (int i = 0; i < n; i++) {
        out->tokens[i] = b->tokens[t0 + i];
        out->positions[i] = b->positions[t0 + i];
        out->targets[i] = b->targets[t0 + i];
        out->n_supervised += out->targets[i] >= 0;
    }
}

static double dropout_p = 0.0;

static model *load_model(const char *name, enum adapter_kind adapter, int ckpt, int adapter_file)
{
    model_options o;
    model_options_defaults(&o);
    o.lora_dropout = dropout_p;
    o.adapter = adapter;
    o.lora_r = 4;
    o.lora_alpha = 8;
    o.flat_align = 64;
    o.gradient_checkpointing = ckpt;
    model *m = NULL;
    char *dir = xasprintf(FIX "%s", name);
    int rc = model_load(&m, dir, &o);
    cr_assert_eq(rc, 0, "model_load %s: %s", dir, err_msg());
    if (adapter_file) {
        rc = model_load_adapter(m, dir);
        cr_assert_eq(rc, 0, "model_load_adapter %s: %s", dir, err_msg());
    }
    free(dir);
    return m;
}

static double rel_err(const float *got, const float *want, int64_t n)
{
    double num = 0.0, den = 0.0;
    for (int64_t i = 0; i < n; i++) {
        num = fmax(num, fabs((double)got[i] - want[i]));
        den = fmax(den, fabs((double)want[i]));
    }
    return num / (den > 0 ? den : 1.0);
}

static float *read_expected(safetensors_set *st, const char *name, int64_t n)
{
    const st_tensor *t = safetensors_find(st, name);
    cr_assert(t, "expected.safetensors has no %s", name);
    float *v = xmalloc(sizeof(float) * (size_t)n);
    cr_assert_eq(safetensors_read_f32(st, name, 0, NULL, v), 0, "%s: %s", name, err_msg());
    return v;
}

static float *grads_host(model *m)
{
    model_trainable_view tv;
    model_trainable(m, &tv);
    float *g = xmalloc(sizeof(float) * (size_t)tv.n_padded);
    model_ops(m)->download(g, tv.grads, sizeof(float) * (size_t)tv.n_padded);
    return g;
}

/* ---- against transformers + PEFT ---- */

static void check_reference(const char *name)
{
    model *m = load_model(name, ADAPTER_LORA, 0, 1);
    packed_batch b;
    load_batch(name, &b);
    char *path = xasprintf(FIX "%s/expected.safetensors", name);
    safetensors_set *st = NULL;
    cr_assert_eq(safetensors_open_file(&st, path), 0, "%s", err_msg());
    int V = model_get_config(m)->vocab_size;

    /* loss and gradients of loss_sum / n_tok */
    double loss_sum;
    int64_t n_tok;
    model_zero_grad(m);
    cr_assert_eq(model_forward_backward(m, &b, 1.0f / (float)b.n_supervised, &loss_sum, &n_tok),
                 0, "%s", err_msg());
    double want_loss;
    const st_tensor *lt = safetensors_find(st, "loss_sum");
    memcpy(&want_loss, safetensors_data(st, lt), sizeof(double));
    cr_assert_eq(n_tok, b.n_supervised);
    cr_assert(fabs(loss_sum - want_loss) <= 1e-4 * fabs(want_loss), "%s: loss %.8f vs %.8f",
              name, loss_sum, want_loss);

    model_trainable_view tv;
    model_trainable(m, &tv);
    float *g = grads_host(m);
    for (int i = 0; i < tv.n_tensors; i++) {
        const lora_param *p = &tv.table[i];
        char *key = xasprintf("grad.%s", p->name);
        int64_t n = (int64_t)p->rows * p->cols;
        float *want = read_expected(st, key, n);
        double e = rel_err(g + p->offset, want, n);
        cr_assert(e <= 1e-4, "%s: %s relative error %.3g", name, key, e);
        free(want);
        free(key);
    }

    /* logits at the supervised rows */
    int32_t *rows = xmalloc(sizeof(int32_t) * (size_t)n_tok);
    int k = 0;
    for (int t = 0; t < b.n_tokens; t++)
        if (b.targets[t] >= 0)
            rows[k++] = t;
    float *logits = xmalloc(sizeof(float) * (size_t)(n_tok * V));
    cr_assert_eq(model_logits_at(m, &b, rows, k, logits), 0, "%s", err_msg());
    float *want_logits = read_expected(st, "logits", n_tok * V);
    double e = rel_err(logits, want_logits, n_tok * V);
    cr_assert(e <= 1e-4, "%s: logits relative error %.3g", name, e);

    /* one AdamW step (lr 1e-2, betas 0.9/0.999, eps 1e-8, wd 0.01, as the script) */
    const kernel_ops *ops = model_ops(m);
    float *mom = ops->alloc(sizeof(float) * (size_t)tv.n_padded);
    float *var = ops->alloc(sizeof(float) * (size_t)tv.n_padded);
    adamw_scalars sc = adamw_scalars_at(1e-2, 0.9, 0.999, 1e-8, 0.01, 1);
    ops->adamw(tv.params, tv.grads, mom, var, tv.n_padded, &sc);
    float *params = xmalloc(sizeof(float) * (size_t)tv.n_padded);
    ops->download(params, tv.params, sizeof(float) * (size_t)tv.n_padded);
    for (int i = 0; i < tv.n_tensors; i++) {
        const lora_param *p = &tv.table[i];
        char *key = xasprintf("updated.%s", p->name);
        int64_t n = (int64_t)p->rows * p->cols;
        float *want = read_expected(st, key, n);
        /* 5e-5, not the logits' 1e-5: Adam's first step moves each weight by about
         * lr * g / (|g| + eps), so a tiny gradient's rounding error (the gradients agree to
         * 1e-4 of their norm) reaches the update; how far depends on the BLAS kernels the CPU
         * gets (1.02e-5 on an AMD EPYC, under 1e-5 on an Intel Xeon). */
        double e2 = rel_err(params + p->offset, want, n);
        cr_assert(e2 <= 5e-5, "%s: %s relative error %.3g", name, key, e2);
        free(want);
        free(key);
    }

    ops->free(mom);
    ops->free(var);
    free(params);
    free(want_logits);
    free(logits);
    free(rows);
    free(g);
    free(path);
    safetensors_close(st);
    packed_batch_free(&b);
    model_free(m);
}

Test(model_reference, qwen3) { check_reference("qwen3"); }
Test(model_reference, qwen3_tied) { check_reference("qwen3_tied"); }
Test(model_reference, llama) { check_reference("llama"); }
Test(model_reference, qwen2_bias) { check_reference("qwen2"); }

/* ---- invariants ---- */

Test(model, packed_equals_separate)
{
    model *m = load_model("qwen3", ADAPTER_LORA, 0, 1);
    packed_batch b, s0, s1;
    load_batch("qwen3", &b);
    segment_batch(&b, 0, &s0);
    segment_batch(&b, 1, &s1);
    float scale = 1.0f / (float)b.n_supervised;
    double l_packed, l0, l1;
    int64_t n_packed, n0, n1;

    model_zero_grad(m);
    cr_assert_eq(model_forward_backward(m, &b, scale, &l_packed, &n_packed), 0);
    float *g_packed = grads_host(m);
    model_zero_grad(m);
    cr_assert_eq(model_forward_backward(m, &s0, scale, &l0, &n0), 0);
    cr_assert_eq(model_forward_backward(m, &s1, scale, &l1, &n1), 0);
    float *g_sep = grads_host(m);

    cr_assert_eq(n_packed, n0 + n1);
    cr_assert(fabs(l_packed - (l0 + l1)) <= 1e-5 * fabs(l_packed), "loss %.8f vs %.8f",
              l_packed, l0 + l1);
    model_trainable_view tv;
    model_trainable(m, &tv);
    double e = rel_err(g_packed, g_sep, tv.n_padded);
    cr_assert(e <= 1e-5, "grads packed vs separate: relative error %.3g", e);
    free(g_packed);
    free(g_sep);
    packed_batch_free(&b);
    packed_batch_free(&s0);
    packed_batch_free(&s1);
    model_free(m);
}

static void check_checkpointing(double p)
{
    dropout_p = p;
    model *a = load_model("qwen3", ADAPTER_LORA, 0, 1);
    model *c = load_model("qwen3", ADAPTER_LORA, 1, 1);
    packed_batch b;
    load_batch("qwen3", &b);
    double la, lc;
    int64_t na, nc;
    model_zero_grad(a);
    model_zero_grad(c);
    cr_assert_eq(model_forward_backward(a, &b, 0.25f, &la, &na), 0);
    cr_assert_eq(model_forward_backward(c, &b, 0.25f, &lc, &nc), 0);
    float *ga = grads_host(a), *gc = grads_host(c);
    model_trainable_view tv;
    model_trainable(a, &tv);
    cr_assert(la == lc, "loss %.17g vs %.17g", la, lc);
    cr_assert(memcmp(ga, gc, sizeof(float) * (size_t)tv.n_padded) == 0,
              "gradients differ with gradient checkpointing");
    if (p > 0) { /* the masks did act: the no-dropout (eval) loss differs */
        double le;
        int64_t ne;
        cr_assert_eq(model_forward_loss(a, &b, &le, &ne), 0);
        cr_assert(le != la, "dropout %g changed nothing", p);
    }
    free(ga);
    free(gc);
    packed_batch_free(&b);
    model_free(a);
    model_free(c);
    dropout_p = 0.0;
}

Test(model, checkpointing_is_bitwise) { check_checkpointing(0.0); }
/* with LoRA dropout the recompute must regenerate the very same masks */
Test(model, checkpointing_is_bitwise_with_dropout) { check_checkpointing(0.2); }

/* Dropout is on in training only; eval loss equals the training forward's loss without it. */
Test(model, eval_loss_equals_training_loss)
{
    model *m = load_model("llama", ADAPTER_LORA, 0, 1);
    packed_batch b;
    load_batch("llama", &b);
    double lt, le;
    int64_t nt, ne;
    cr_assert_eq(model_forward_loss(m, &b, &le, &ne), 0);
    model_zero_grad(m);
    cr_assert_eq(model_forward_backward(m, &b, 1.0f, &lt, &nt), 0);
    cr_assert(le == lt && ne == nt, "eval %.9g/%lld vs train %.9g/%lld", le, (long long)ne, lt,
              (long long)nt);
    packed_batch_free(&b);
    model_free(m);
}

Test(model, no_supervised_token_adds_nothing)
{
    model *m = load_model("qwen3_tied", ADAPTER_LORA, 0, 1);
    packed_batch b;
    load_batch("qwen3_tied", &b);
    for (int t = 0; t < b.n_tokens; t++)
        b.targets[t] = -1;
    b.n_supervised = 0;
    double loss = -1;
    int64_t n = -1;
    model_zero_grad(m);
    cr_assert_eq(model_forward_backward(m, &b, 1.0f, &loss, &n), 0);
    cr_assert(loss == 0.0 && n == 0);
    float *g = grads_host(m);
    model_trainable_view tv;
    model_trainable(m, &tv);
    for (int64_t i = 0; i < tv.n_padded; i++)
        cr_assert(g[i] == 0.0f, "grad %lld = %g", (long long)i, g[i]);
    cr_assert_eq(model_forward_loss(m, &b, &loss, &n), 0);
    cr_assert(loss == 0.0 && n == 0);
    free(g);
    packed_batch_free(&b);
    model_free(m);
}

Test(model, flat_buffer_layout)
{
    model *m = load_model("qwen3", ADAPTER_LORA, 0, 0);
    model_trainable_view tv;
    model_trainable(m, &tv);
    /* 2 layers x 7 modules x (A, B) */
    cr_assert_eq(tv.n_tensors, 28);
    cr_assert_eq(tv.n_padded % 64, 0);
    cr_assert(tv.n_padded >= tv.n && tv.n_padded - tv.n < 64);
    cr_assert_str_eq(tv.table[0].name,
                     "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
    int64_t off = 0;
    for (int i = 0; i < tv.n_tensors; i++) {
        cr_assert_eq(tv.table[i].offset, off);
        off += (int64_t)tv.table[i].rows * tv.table[i].cols;
    }
    cr_assert_eq(off, tv.n);

    /* A ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT), B = 0 */
    float *p = xmalloc(sizeof(float) * (size_t)tv.n_padded);
    model_ops(m)->download(p, tv.params, sizeof(float) * (size_t)tv.n_padded);
    const lora_param *a = &tv.table[0], *bb = &tv.table[1];
    float bound = 1.0f / sqrtf((float)a->cols), mx = 0.0f;
    for (int64_t i = 0; i < (int64_t)a->rows * a->cols; i++)
        mx = fmaxf(mx, fabsf(p[a->offset + i]));
    cr_assert(mx <= bound && mx > 0.8f * bound, "lora_A max %g, bound %g", mx, bound);
    for (int64_t i = 0; i < (int64_t)bb->rows * bb->cols; i++)
        cr_assert(p[bb->offset + i] == 0.0f);
    for (int64_t i = tv.n; i < tv.n_padded; i++)
        cr_assert(p[i] == 0.0f);
    free(p);
    model_free(m);
}

/* KV-cache inference equals the full forward at the last token, also through copy/truncate. */
Test(model, kv_cache_matches_full_forward)
{
    model *m = load_model("qwen3", ADAPTER_LORA, 0, 1);
    packed_batch b, s1;
    load_batch("qwen3", &b);
    segment_batch(&b, 1, &s1);
    int n = s1.n_tokens, V = model_get_config(m)->vocab_size;
    int32_t last = n - 1;
    float *want = xmalloc(sizeof(float) * (size_t)V), *got = xmalloc(sizeof(float) * (size_t)V);
    cr_assert_eq(model_logits_at(m, &s1, &last, 1, want), 0, "%s", err_msg());

    /* prefix of 5 once, copied, then the rest in two pieces */
    model_kv_cache *prefix, *row;
    cr_assert_eq(model_kv_cache_new(m, 32, &prefix), 0);
    cr_assert_eq(model_kv_cache_new(m, 32, &row), 0);
    cr_assert_eq(model_prefill(m, prefix, s1.tokens, 5, NULL), 0, "%s", err_msg());
    cr_assert_eq(model_kv_cache_copy(row, prefix), 0);
    cr_assert_eq(model_prefill(m, row, s1.tokens + 5, 3, NULL), 0);
    cr_assert_eq(model_prefill(m, row, s1.tokens + 8, n - 8, got), 0);
    cr_assert_eq(model_kv_cache_len(row), n);
    double e = rel_err(got, want, V);
    cr_assert(e <= 1e-5, "prefill logits relative error %.3g", e);

    /* truncate back to the prefix and redo the rest token by token, batched with a twin */
    model_kv_cache_truncate(row, 5);
    model_kv_cache *twin;
    cr_assert_eq(model_kv_cache_new(m, 32, &twin), 0);
    cr_assert_eq(model_kv_cache_copy(twin, prefix), 0);
    model_kv_cache *rows[2] = {row, twin};
    float *two = xmalloc(sizeof(float) * 2 * (size_t)V);
    for (int t = 5; t < n; t++) {
        uint32_t toks[2] = {s1.tokens[t], s1.tokens[t]};
        cr_assert_eq(model_decode_batch(m, rows, toks, 2, two), 0, "%s", err_msg());
    }
    cr_assert(rel_err(two, want, V) <= 1e-5, "decode row 0: %.3g", rel_err(two, want, V));
    cr_assert(rel_err(two + V, want, V) <= 1e-5);

    /* overflowing the cache is an error, not a write past the end */
    cr_assert_neq(model_prefill(m, row, s1.tokens, 32, NULL), 0);
    free(two);
    model_kv_cache_free(twin);
    model_kv_cache_free(row);
    model_kv_cache_free(prefix);
    free(want);
    free(got);
    packed_batch_free(&s1);
    packed_batch_free(&b);
    model_free(m);
}

/* R pairs of caches holding the same prefixes (row r: the prefix[r] fixture tokens before
 * start[r]); the rows' own tokens (counts[r] from start[r]) gathered into toks. Returns their
 * total. */
static int cache_pairs(model *m, const packed_batch *b, int R, const int *start,
                       const int *counts, const int *prefix, model_kv_cache **batched,
                       model_kv_cache **single, uint32_t *toks)
{
    int n_tok = 0;
    for (int r = 0; r < R; r++) {
        cr_assert(start[r] + counts[r] <= b->n_tokens, "fixture batch too short");
        cr_assert_eq(model_kv_cache_new(m, 32, &batched[r]), 0);
        cr_assert_eq(model_kv_cache_new(m, 32, &single[r]), 0);
        if (prefix[r]) {
            const uint32_t *p = b->tokens + start[r] - prefix[r];
            cr_assert_eq(model_prefill(m, batched[r], p, prefix[r], NULL), 0, "%s", err_msg());
            cr_assert_eq(model_prefill(m, single[r], p, prefix[r], NULL), 0, "%s", err_msg());
        }
        memcpy(toks + n_tok, b->tokens + start[r], sizeof(uint32_t) * (size_t)counts[r]);
        n_tok += counts[r];
    }
    return n_tok;
}

/* The caches of each pair hold the same keys and values: one more decode step agrees (within
 * 4e-6). A cache given twice to `batched_fn` is an error. Frees the caches. */
static void decode_agrees_and_free(model *m, const packed_batch *b, int R,
                                   model_kv_cache **batched, model_kv_cache **single,
                                   int (*batched_fn)(model *, model_kv_cache **,
                                                     const uint32_t *, const int *, int,
                                                     float *))
{
    int V = model_get_config(m)->vocab_size;
    uint32_t next[8];
    for (int r = 0; r < R; r++)
        next[r] = b->tokens[r];
    float *dec = xmalloc(sizeof(float) * (size_t)R * (size_t)V);
    float *want = xmalloc(sizeof(float) * (size_t)V);
    cr_assert_eq(model_decode_batch(m, batched, next, R, dec), 0, "%s", err_msg());
    for (int r = 0; r < R; r++) {
        cr_assert_eq(model_prefill(m, single[r], next + r, 1, want), 0);
        double e = rel_err(dec + (int64_t)r * V, want, V);
        cr_assert(e <= 4e-6, "row %d: the next decode step differs by %.3g", r, e);
    }
    model_kv_cache *twice[2] = {batched[0], batched[0]};
    int two[2] = {1, 1};
    cr_assert_neq(batched_fn(m, twice, next, two, 2, NULL), 0, "a cache given twice");
    for (int r = 0; r < R; r++) {
        model_kv_cache_free(batched[r]);
        model_kv_cache_free(single[r]);
    }
    free(dec);
    free(want);
}

/* Batched prefill (rows of different lengths, one on top of a cached prefix, one of a single
 * token) equals one model_prefill per row within 4e-6 (max abs difference over max abs logit,
 * ~30 float ulps): the logits, and the caches it leaves (checked by one more decode step on each
 * side). Not bitwise: OpenBLAS's sgemm rounds a row differently with the number of rows in the
 * call (measured: 7e-7 to 1.1e-6 on the fixture, depending on the CPU's kernels). */
Test(model, prefill_batch_equals_per_row_prefill)
{
    model *m = load_model("qwen3", ADAPTER_LORA, 0, 1);
    packed_batch b;
    load_batch("qwen3", &b);
    int V = model_get_config(m)->vocab_size;
    enum { R = 3 };
    int start[R] = {2, 9, 20}, counts[R] = {5, 9, 1}, prefix[R] = {2, 0, 3};

    /* both sides: the same prefixes, then the rows at once or one by one */
    model_kv_cache *batched[R], *single[R];
    uint32_t toks[32];
    cache_pairs(m, &b, R, start, counts, prefix, batched, single, toks);
    float *got = xmalloc(sizeof(float) * R * (size_t)V), *want = xmalloc(sizeof(float) * (size_t)V);
    cr_assert_eq(model_prefill_batch(m, batched, toks, counts, R, got), 0, "%s", err_msg());
    for (int r = 0; r < R; r++) {
        cr_assert_eq(model_prefill(m, single[r], b.tokens + start[r], counts[r], want), 0);
        cr_assert_eq(model_kv_cache_len(batched[r]), prefix[r] + counts[r]);
        double e = rel_err(got + (int64_t)r * V, want, V);
        cr_assert(e <= 4e-6, "row %d: batched prefill logits differ from model_prefill by %.3g",
                  r, e);
    }
    decode_agrees_and_free(m, &b, R, batched, single, model_prefill_batch);
    free(got);
    free(want);
    packed_batch_free(&b);
    model_free(m);
}

/* The extend tests' start: rows of 2, 1 and 3 tokens on top of cached prefixes of 3, 6 and 2
 * fixture tokens, in pairs of caches (batched, single). */
enum { EXT_ROWS = 3 };
typedef struct {
    model *m;
    packed_batch b;
    int V, n_tok;
    int counts[EXT_ROWS];
    model_kv_cache *batched[EXT_ROWS], *single[EXT_ROWS];
    uint32_t toks[8];
} extend_fixture;

static void extend_fixture_init(extend_fixture *f)
{
    int start[EXT_ROWS] = {4, 10, 15}, counts[EXT_ROWS] = {2, 1, 3}, prefix[EXT_ROWS] = {3, 6, 2};
    f->m = load_model("qwen3", ADAPTER_LORA, 0, 1);
    load_batch("qwen3", &f->b);
    f->V = model_get_config(f->m)->vocab_size;
    memcpy(f->counts, counts, sizeof counts);
    f->n_tok = cache_pairs(f->m, &f->b, EXT_ROWS, start, counts, prefix, f->batched, f->single,
                           f->toks);
}

/* model_extend_batch gives the logits of every appended token: equal (within 4e-6, as above)
 * to appending them one at a time, rows of 1, 2 and 3 tokens on top of different cache
 * lengths; the caches end the same (one more decode step agrees). */
Test(model, extend_batch_equals_token_by_token)
{
    extend_fixture f;
    extend_fixture_init(&f);
    model *m = f.m;
    int V = f.V, n_tok = f.n_tok, *counts = f.counts;
    enum { R = EXT_ROWS };
    model_kv_cache **batched = f.batched, **single = f.single;
    uint32_t *toks = f.toks;
    float *got = xmalloc(sizeof(float) * (size_t)n_tok * (size_t)V);
    float *want = xmalloc(sizeof(float) * (size_t)V);
    cr_assert_eq(model_extend_batch(m, batched, toks, counts, R, got), 0, "%s", err_msg());
    for (int r = 0, at = 0; r < R; r++)
        for (int q = 0; q < counts[r]; q++, at++) {
            cr_assert_eq(model_prefill(m, single[r], toks + at, 1, want), 0);
            double e = rel_err(got + (int64_t)at * V, want, V);
            cr_assert(e <= 4e-6, "row %d token %d: logits differ by %.3g", r, q, e);
        }
    for (int r = 0; r < R; r++)
        cr_assert_eq(model_kv_cache_len(batched[r]), model_kv_cache_len(single[r]));
    decode_agrees_and_free(m, &f.b, R, batched, single, model_extend_batch);
    free(got);
    free(want);
    packed_batch_free(&f.b);
    model_free(m);
}

/* model_extend_batch_sel: the rows it makes whole equal token-by-token appends (within 4e-6,
 * as above); the others get their selected entries only (within 1e-6 of the whole row's
 * largest logit) and keep every other entry as it was (poisoned here with NaN); an id outside
 * the vocabulary is refused. */
Test(model, extend_batch_sel_makes_selected_logits_only)
{
    extend_fixture f;
    extend_fixture_init(&f);
    model *m = f.m;
    int V = f.V, n_tok = f.n_tok, *counts = f.counts;
    enum { R = EXT_ROWS };
    model_kv_cache **batched = f.batched, **single = f.single;
    uint32_t *toks = f.toks;
    uint8_t full[6] = {1, 0, 0, 1, 0, 1};
    uint32_t ids[4] = {0, 7, (uint32_t)V / 2, (uint32_t)V - 1};
    model_logit_sel sel = {.full = full, .ids = ids, .n_ids = 4};
    cr_assert_eq(n_tok, 6);
    float *got = xmalloc(sizeof(float) * (size_t)n_tok * (size_t)V);
    float *want = xmalloc(sizeof(float) * (size_t)V);
    for (int64_t i = 0; i < (int64_t)n_tok * V; i++)
        got[i] = NAN;
    cr_assert_eq(model_extend_batch_sel(m, batched, toks, counts, R, &sel, got), 0, "%s",
                 err_msg());
    for (int r = 0, at = 0; r < R; r++)
        for (int q = 0; q < counts[r]; q++, at++) {
            cr_assert_eq(model_prefill(m, single[r], toks + at, 1, want), 0);
            const float *row = got + (int64_t)at * V;
            if (full[at]) {
                double e = rel_err(row, want, V);
                cr_assert(e <= 4e-6, "row %d token %d: logits differ by %.3g", r, q, e);
                continue;
            }
            double top = 0.0;
            for (int v = 0; v < V; v++)
                top = fmax(top, fabs(want[v]));
            for (int v = 0, j = 0; v < V; v++) {
                if (j < 4 && (uint32_t)v == ids[j]) {
                    cr_assert(fabs(row[v] - want[v]) <= 1e-6 * top, "token %d id %d: %g vs %g",
                              at, v, row[v], want[v]);
                    j++;
                } else {
                    cr_assert(isnan(row[v]), "token %d: id %d was written", at, v);
                }
            }
        }
    uint32_t bad = (uint32_t)V;
    model_logit_sel wrong = {.full = full, .ids = &bad, .n_ids = 1};
    cr_assert_neq(model_extend_batch_sel(m, batched, toks, counts, R, &wrong, got), 0);
    for (int r = 0; r < R; r++) {
        model_kv_cache_free(batched[r]);
        model_kv_cache_free(single[r]);
    }
    free(got);
    free(want);
    packed_batch_free(&f.b);
    model_free(m);
}

/* QLoRA: the forward equals the fp32 path run with the dequantized NF4 weights. */
Test(model, qlora_equals_dequantized_fp32)
{
    model *q = load_model("qwen3", ADAPTER_QLORA, 0, 1);
    model *f = load_model("qwen3", ADAPTER_LORA, 0, 1);
    const kernel_ops *ops = model_ops(q);
    for (int l = 0; l < model_get_config(q)->num_hidden_layers; l++)
        for (int mod = 0; mod < LORA_MOD_COUNT; mod++) {
            model_linear *lq = &q->layers[l].lin[mod], *lf = &f->layers[l].lin[mod];
            cr_assert(lq->w == NULL && lf->w != NULL);
            ops->nf4_dequant_rows(lf->w, &lq->nf4, 0, lq->out);
        }
    packed_batch b;
    load_batch("qwen3", &b);
    double lq, lf;
    int64_t nq, nf;
    model_zero_grad(q);
    model_zero_grad(f);
    cr_assert_eq(model_forward_backward(q, &b, 0.1f, &lq, &nq), 0, "%s", err_msg());
    cr_assert_eq(model_forward_backward(f, &b, 0.1f, &lf, &nf), 0);
    cr_assert(fabs(lq - lf) <= 1e-6 * fabs(lf), "loss %.8f vs %.8f", lq, lf);
    float *gq = grads_host(q), *gf = grads_host(f);
    model_trainable_view tv;
    model_trainable(q, &tv);
    double e = rel_err(gq, gf, tv.n_padded);
    cr_assert(e <= 1e-5, "grads relative error %.3g", e);
    cr_assert(model_weight_bytes(q) < model_weight_bytes(f));
    free(gq);
    free(gf);
    packed_batch_free(&b);
    model_free(q);
    model_free(f);
}

/* ---- load errors ---- */

Test(model, missing_tensor_is_a_clear_error)
{
    /* a folder whose model.safetensors is the adapter file: no base tensors at all */
    char dir[] = "/tmp/rubric_model_XXXXXX";
    cr_assert(mkdtemp(dir));
    char *data;
    size_t n;
    cr_assert_eq(read_file(FIX "qwen3/config.json", &data, &n), 0);
    char *p = xasprintf("%s/config.json", dir);
    cr_assert_eq(write_file_atomic(p, data, n), 0);
    free(data);
    free(p);
    cr_assert_eq(read_file(FIX "qwen3/adapter_model.safetensors", &data, &n), 0);
    p = xasprintf("%s/model.safetensors", dir);
    cr_assert_eq(write_file_atomic(p, data, n), 0);
    free(data);

    model_options o;
    model_options_defaults(&o);
    model *m = NULL;
    int rc = model_load(&m, dir, &o);
    cr_assert_eq(rc, RB_EXIT_INPUT);
    cr_assert_null(m);
    cr_assert(strstr(err_msg(), "model.embed_tokens.weight"), "message: %s", err_msg());
    remove(p);
    free(p);
    p = xasprintf("%s/config.json", dir);
    remove(p);
    free(p);
    rmdir(dir);
}

Test(model, bad_token_is_an_error)
{
    model *m = load_model("qwen3", ADAPTER_LORA, 0, 0);
    packed_batch b;
    load_batch("qwen3", &b);
    b.tokens[3] = 100000;
    double loss;
    int64_t n;
    cr_assert_eq(model_forward_backward(m, &b, 1.0f, &loss, &n), RB_EXIT_INPUT);
    cr_assert(strstr(err_msg(), "100000"), "message: %s", err_msg());
    packed_batch_free(&b);
    model_free(m);
}

/* The config's bf16 / tf32 choose a GPU's GEMM precision as Axolotl's keys mean them; the CPU
 * backends answer fp32 whatever is asked. */
Test(model, gemm_precision_follows_bf16_and_tf32)
{
    static const struct {
        const char *yaml;
        int want;
    } cases[] = {
        {"base_model: m\n", KERNEL_GEMM_BF16},
        {"base_model: m\nbf16: auto\ntf32: true\n", KERNEL_GEMM_BF16},
        {"base_model: m\nbf16: true\n", KERNEL_GEMM_BF16},
        {"base_model: m\nbf16: false\ntf32: true\n", KERNEL_GEMM_TF32},
        {"base_model: m\nbf16: false\n", KERNEL_GEMM_FP32},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        rubric_config cfg;
        config_defaults(&cfg);
        cr_assert_eq(config_load_text(&cfg, "t.yml", cases[i].yaml, 0), 0, "%s", err_msg());
        cr_expect_eq(model_gemm_precision_of(&cfg), cases[i].want, "case %zu: %s", i,
                     cases[i].yaml);
        model_options o;
        model_options_defaults(&o);
        model_options_from_config(&o, &cfg);
        cr_expect_eq(o.gemm_precision, cases[i].want, "case %zu", i);
        config_free(&cfg);
    }
    model_options o;
    model_options_defaults(&o);
    cr_expect_eq(o.gemm_precision, KERNEL_GEMM_BF16, "the default is bf16: auto's");
    cr_expect_str_eq(kernel_gemm_precision_set(kernel_ops_cpu(), KERNEL_GEMM_BF16), "fp32");
    cr_expect_str_eq(kernel_gemm_precision_set(kernel_ops_cpu_staged(), KERNEL_GEMM_TF32),
                     "fp32");
}
