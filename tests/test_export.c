/*
 * test_export.c: `rubric export-adapter` and `rubric merge` against PEFT's numbers stored in
 * tests/fixtures/export/ (tests/ref/gen_export_fixtures.py: PEFT's LoRA model built from each
 * checkpoint with h5py, its logits and merge_and_unload() weights), plus the folder layouts
 * and the refusals. The torch-side check of the same outputs (transformers loading the merged
 * folder, PEFT loading the adapter folder) is tests/ref/check_export.py.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "export.h"
#include "model.h"
#include "model_config.h"
#include "safetensors.h"
#include "scorer.h"
#include "util.h"

#define FIX "tests/fixtures/export"
#define TOL_LOGITS 1e-3

/* ---- helpers ---- */

typedef struct {
    char name[16];
    char base[256];
    char ckpt[256];
    char shard[16];
    int n_tokens;
    uint32_t tokens[64];
    int n_merged;
    char merged[4][96];
} fixture_case;

static int load_cases(fixture_case *out, int max)
{
    json_error_t e;
    json_t *j = json_load_file(FIX "/cases.json", 0, &e);
    cr_assert(j, "cannot read " FIX "/cases.json: %s", e.text);
    int n = 0;
    for (size_t i = 0; i < json_array_size(j) && n < max; i++, n++) {
        json_t *c = json_array_get(j, i);
        fixture_case *f = &out[n];
        memset(f, 0, sizeof *f);
        snprintf(f->name, sizeof f->name, "%s", json_string_value(json_object_get(c, "name")));
        snprintf(f->base, sizeof f->base, FIX "/%s",
                 json_string_value(json_object_get(c, "base")));
        snprintf(f->ckpt, sizeof f->ckpt, FIX "/%s",
                 json_string_value(json_object_get(c, "ckpt")));
        json_t *s = json_object_get(c, "max_shard_size");
        snprintf(f->shard, sizeof f->shard, "%s", s ? json_string_value(s) : "");
        json_t *t = json_object_get(c, "tokens");
        for (size_t k = 0; k < json_array_size(t) && k < 64; k++)
            f->tokens[f->n_tokens++] = (uint32_t)json_integer_value(json_array_get(t, k));
        json_t *m = json_object_get(c, "merged");
        for (size_t k = 0; k < json_array_size(m) && k < 4; k++)
            snprintf(f->merged[f->n_merged++], 96, "%s",
                     json_string_value(json_array_get(m, k)));
    }
    json_decref(j);
    cr_assert_gt(n, 0);
    return n;
}

/* Run `rubric <args>` (output to a log file); the exit code. */
static int rubric(const char *args)
{
    const char *bin = getenv("RUBRIC_BIN");
    cr_assert(bin, "RUBRIC_BIN is not set (run through meson test)");
    char *cmd = xasprintf("%s %s >/tmp/test_export.log 2>&1", bin, args);
    int st = system(cmd);
    free(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static char *tmp_dir(void)
{
    char *d = xstrdup("/tmp/rubric-test-export-XXXXXX");
    cr_assert(mkdtemp(d));
    return d;
}

static void rm_rf(const char *d)
{
    char *cmd = xasprintf("rm -rf '%s'", d);
    cr_assert_eq(system(cmd), 0);
    free(cmd);
}

static float *expected_tensor(const char *name, int64_t *numel)
{
    safetensors_set *st;
    cr_assert_eq(safetensors_open_file(&st, FIX "/expected.safetensors"), 0, "%s", err_msg());
    const st_tensor *t = safetensors_find(st, name);
    cr_assert(t, "expected.safetensors lacks %s", name);
    *numel = st_tensor_numel(t);
    float *x = xmalloc(sizeof(float) * (size_t)*numel);
    cr_assert_eq(safetensors_read_f32(st, name, 0, NULL, x), 0, "%s", err_msg());
    safetensors_close(st);
    return x;
}

/* max|x - ref| / max|ref| */
static double rel_err(const float *x, const float *ref, int64_t n)
{
    double d = 0, m = 1e-30;
    for (int64_t i = 0; i < n; i++) {
        d = fmax(d, fabs((double)x[i] - ref[i]));
        m = fmax(m, fabs((double)ref[i]));
    }
    return d / m;
}

/* rubric's logits [T, vocab] of a model folder, with the checkpoint's LoRA shape and the PEFT
 * adapter folder when adapter_dir is given. */
static float *model_logits(const char *dir, const char *ckpt, const char *adapter_dir,
                           const fixture_case *f, int *vocab)
{
    model_options mo;
    model_options_defaults(&mo);
    mo.adapter = ADAPTER_NONE;
    if (ckpt) {
        rubric_config cfg;
        cr_assert_eq(scorer_adapter_config(ckpt, &cfg), 0, "%s", err_msg());
        model_options_from_config(&mo, &cfg);
        config_free(&cfg);
    }
    mo.backend = "cpu";
    model *m;
    cr_assert_eq(model_load(&m, dir, &mo), 0, "%s: %s", dir, err_msg());
    if (adapter_dir)
        cr_assert_eq(model_load_adapter(m, adapter_dir), 0, "%s", err_msg());
    int T = f->n_tokens, V = model_get_config(m)->vocab_size;
    packed_batch b;
    packed_batch_init(&b, 1, T, 1);
    b.n_samples = 1;
    b.cu_seqlens[0] = 0;
    b.cu_seqlens[1] = T;
    int32_t rows[64];
    for (int t = 0; t < T; t++) {
        b.tokens[t] = f->tokens[t];
        b.positions[t] = t;
        b.targets[t] = -1;
        rows[t] = t;
    }
    float *lg = xmalloc(sizeof(float) * (size_t)T * V);
    cr_assert_eq(model_logits_at(m, &b, rows, T, lg), 0, "%s", err_msg());
    packed_batch_free(&b);
    model_free(m);
    *vocab = V;
    return lg;
}

static void check_logits(const fixture_case *f, const float *lg, int V, const char *what)
{
    char *key = xasprintf("%s.peft_logits", f->name);
    int64_t n;
    float *ref = expected_tensor(key, &n);
    cr_assert_eq(n, (int64_t)f->n_tokens * V, "%s: %lld logits, expected %lld", key,
                 (long long)n, (long long)f->n_tokens * V);
    double e = rel_err(lg, ref, n);
    cr_log_info("%s: %s vs PEFT logits: max relative error %.2e", f->name, what, e);
    cr_expect_leq(e, TOL_LOGITS, "%s: %s vs PEFT: relative error %.3g", f->name, what, e);
    free(ref);
    free(key);
}

static json_t *load_json(const char *dir, const char *file)
{
    char *p = xasprintf("%s/%s", dir, file);
    json_error_t e;
    json_t *j = json_load_file(p, 0, &e);
    cr_assert(j, "%s: %s", p, e.text);
    free(p);
    return j;
}

static int file_same(const char *a, const char *b)
{
    char *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    int same = !read_file(a, &x, &nx) && !read_file(b, &y, &ny) && nx == ny &&
               memcmp(x, y, nx) == 0;
    free(x);
    free(y);
    return same;
}

/* ---- the merge arithmetic ---- */

Test(export, merge_delta_is_w_plus_scaled_b_times_a)
{
    int64_t out = 7, in = 5, r = 3;
    float w[35], w0[35], b[21], a[15];
    for (int i = 0; i < 35; i++)
        w[i] = w0[i] = (float)sin(i + 1.0);
    for (int i = 0; i < 21; i++)
        b[i] = (float)cos(i * 0.7);
    for (int i = 0; i < 15; i++)
        a[i] = (float)(i % 4) - 1.5f;
    export_merge_delta(w, b, a, out, in, r, 0.5f);
    for (int64_t o = 0; o < out; o++)
        for (int64_t i = 0; i < in; i++) {
            double s = 0;
            for (int64_t k = 0; k < r; k++)
                s += (double)b[o * r + k] * a[k * in + i];
            cr_assert_float_eq(w[o * in + i], w0[o * in + i] + 0.5 * s, 1e-5);
        }
}

/* ---- export-adapter ---- */

Test(export, adapter_is_peft_layout_and_bit_equal_to_the_checkpoint)
{
    fixture_case cs[8];
    int n = load_cases(cs, 8);
    for (int c = 0; c < n; c++) {
        char *out = tmp_dir(), *ad = xasprintf("%s/adapter", out);
        char *args = xasprintf("export-adapter --adapter %s --out %s", cs[c].ckpt, ad);
        cr_assert_eq(rubric(args), 0, "%s", args);

        /* every tensor bit-equal to what h5py read from /lora, F32, nothing else */
        char *path = xasprintf("%s/adapter_model.safetensors", ad);
        safetensors_set *st;
        cr_assert_eq(safetensors_open_file(&st, path), 0, "%s", err_msg());
        int checked = 0;
        for (int i = 0; i < safetensors_count(st); i++) {
            const st_tensor *t = safetensors_at(st, i);
            char *key = xasprintf("%s.lora.%s", cs[c].name, t->name);
            int64_t ne;
            float *ref = expected_tensor(key, &ne);
            cr_assert_eq(t->dtype, ST_F32);
            cr_assert_eq(st_tensor_numel(t), ne, "%s", t->name);
            cr_assert_eq(memcmp(safetensors_data(st, t), ref, sizeof(float) * (size_t)ne), 0,
                         "%s: %s differs from the checkpoint", cs[c].name, t->name);
            checked++;
            free(ref);
            free(key);
        }
        safetensors_close(st);

        /* adapter_config.json: what PEFT and vLLM read */
        json_t *j = load_json(ad, "adapter_config.json");
        cr_expect_str_eq(json_string_value(json_object_get(j, "peft_type")), "LORA");
        cr_expect_str_eq(json_string_value(json_object_get(j, "task_type")), "CAUSAL_LM");
        cr_expect_str_eq(json_string_value(json_object_get(j, "bias")), "none");
        cr_expect(json_is_true(json_object_get(j, "inference_mode")));
        cr_expect(json_is_false(json_object_get(j, "fan_in_fan_out")));
        cr_expect(json_is_false(json_object_get(j, "use_dora")));
        cr_expect(json_is_false(json_object_get(j, "use_rslora")));
        cr_expect(json_is_string(json_object_get(j, "base_model_name_or_path")));
        rubric_config cfg;
        cr_assert_eq(scorer_adapter_config(cs[c].ckpt, &cfg), 0, "%s", err_msg());
        cr_expect_eq(json_integer_value(json_object_get(j, "r")), cfg.lora_r);
        cr_expect_float_eq(json_number_value(json_object_get(j, "lora_alpha")), cfg.lora_alpha,
                           1e-12);
        json_t *tm = json_object_get(j, "target_modules");
        cr_expect_eq(checked, 2 * (int)json_array_size(tm) * 2, "%s: %d tensors for %zu "
                     "targets x 2 layers", cs[c].name, checked, json_array_size(tm));
        unsigned bits = 0;
        static const char *const mods[] = {"q_proj", "k_proj", "v_proj", "o_proj",
                                           "gate_proj", "up_proj", "down_proj"};
        for (size_t k = 0; k < json_array_size(tm); k++)
            for (int m = 0; m < 7; m++)
                if (!strcmp(json_string_value(json_array_get(tm, k)), mods[m]))
                    bits |= 1u << m;
        cr_expect_eq(bits, cfg.lora_targets, "%s: target_modules", cs[c].name);
        config_free(&cfg);
        json_decref(j);

        /* a second export into the same folder is fine (it holds an adapter) */
        cr_expect_eq(rubric(args), 0, "re-export into %s", ad);
        rm_rf(out);
        free(path);
        free(args);
        free(ad);
        free(out);
    }
}

Test(export, exported_adapter_loads_back_to_peft_logits)
{
    fixture_case cs[8];
    int n = load_cases(cs, 8);
    for (int c = 0; c < n; c++) {
        char *out = tmp_dir();
        char *args = xasprintf("export-adapter --adapter %s --out %s", cs[c].ckpt, out);
        cr_assert_eq(rubric(args), 0, "%s", args);
        int V;
        float *lg = model_logits(cs[c].base, cs[c].ckpt, out, &cs[c], &V);
        check_logits(&cs[c], lg, V, "base + exported adapter (model_load_adapter)");
        free(lg);
        rm_rf(out);
        free(args);
        free(out);
    }
}

/* ---- merge ---- */

Test(export, merged_f32_model_computes_peft_logits)
{
    fixture_case cs[8];
    int n = load_cases(cs, 8);
    for (int c = 0; c < n; c++) {
        char *out = tmp_dir();
        char *shard = cs[c].shard[0] ? xasprintf(" --max-shard-size %s", cs[c].shard)
                                      : xstrdup("");
        char *args = xasprintf("merge --model %s --adapter %s --out %s --dtype f32%s",
                               cs[c].base, cs[c].ckpt, out, shard);
        cr_assert_eq(rubric(args), 0, "%s", args);

        /* the logits of the merged model alone (no adapter) */
        int V;
        float *lg = model_logits(out, NULL, NULL, &cs[c], &V);
        check_logits(&cs[c], lg, V, "merged f32 model");
        free(lg);

        /* the adapted weights against PEFT's merge_and_unload() */
        safetensors_set *st;
        cr_assert_eq(safetensors_open_dir(&st, out), 0, "%s", err_msg());
        for (int k = 0; k < cs[c].n_merged; k++) {
            char *key = xasprintf("%s.merged.%s", cs[c].name, cs[c].merged[k]);
            int64_t ne;
            float *ref = expected_tensor(key, &ne);
            float *got = xmalloc(sizeof(float) * (size_t)ne);
            cr_assert_eq(safetensors_read_f32(st, cs[c].merged[k], 0, NULL, got), 0, "%s",
                         err_msg());
            double e = rel_err(got, ref, ne);
            cr_expect_leq(e, 1e-5, "%s: %s vs merge_and_unload: %.3g", cs[c].name,
                          cs[c].merged[k], e);
            free(got);
            free(ref);
            free(key);
        }

        /* tied embeddings stay tied: no lm_head written; untied: one */
        model_config mc;
        cr_assert_eq(model_config_load(&mc, out), 0, "%s", err_msg());
        cr_expect_eq(safetensors_find(st, "lm_head.weight") == NULL, mc.tie_word_embeddings,
                     "%s: lm_head.weight present %d with tie_word_embeddings %d", cs[c].name,
                     safetensors_find(st, "lm_head.weight") != NULL, mc.tie_word_embeddings);
        safetensors_close(st);
        char *index = xasprintf("%s/model.safetensors.index.json", out);
        cr_expect_eq(path_exists(index), cs[c].shard[0] != 0, "%s: index %s", cs[c].name,
                     index);
        free(index);
        rm_rf(out);
        free(args);
        free(shard);
        free(out);
    }
}

Test(export, merge_default_is_bf16_rounding_of_the_f32_merge_with_files)
{
    fixture_case cs[8];
    load_cases(cs, 8);
    const fixture_case *f = &cs[0];
    char *o32 = tmp_dir(), *o16 = tmp_dir();
    char *a32 = xasprintf("merge --model %s --adapter %s --out %s --dtype f32", f->base, f->ckpt,
                          o32);
    char *a16 = xasprintf("merge --model %s --adapter %s --out %s", f->base, f->ckpt, o16);
    cr_assert_eq(rubric(a32), 0, "%s", a32);
    cr_assert_eq(rubric(a16), 0, "%s", a16);

    /* every tensor BF16, equal to the fp32 merge rounded */
    safetensors_set *s32, *s16;
    cr_assert_eq(safetensors_open_dir(&s32, o32), 0, "%s", err_msg());
    cr_assert_eq(safetensors_open_dir(&s16, o16), 0, "%s", err_msg());
    cr_assert_eq(safetensors_count(s32), safetensors_count(s16));
    for (int i = 0; i < safetensors_count(s16); i++) {
        const st_tensor *t = safetensors_at(s16, i);
        const st_tensor *u = safetensors_find(s32, t->name);
        cr_assert(u, "%s missing from the f32 merge", t->name);
        cr_assert_eq(t->dtype, ST_BF16, "%s is %s", t->name, st_dtype_name(t->dtype));
        int64_t n = st_tensor_numel(t);
        const uint8_t *h = safetensors_data(s16, t), *x = safetensors_data(s32, u);
        for (int64_t k = 0; k < n; k++) {
            uint16_t hb;
            float xf;
            memcpy(&hb, h + 2 * k, 2);
            memcpy(&xf, x + 4 * k, 4);
            cr_assert_eq(hb, f32_to_bf16(xf), "%s[%lld]", t->name, (long long)k);
        }
    }
    safetensors_close(s32);
    safetensors_close(s16);

    /* config.json says bfloat16; the other files come from the base folder */
    json_t *cj = load_json(o16, "config.json");
    json_t *dt = json_object_get(cj, "dtype");
    dt = dt ? dt : json_object_get(cj, "torch_dtype");
    cr_expect_str_eq(json_string_value(dt), "bfloat16");
    json_decref(cj);
    static const char *const same[] = {"generation_config.json", "tokenizer.json",
                                       "tokenizer_config.json"};
    for (size_t i = 0; i < RB_ARRAY_LEN(same); i++) {
        char *a = xasprintf("%s/%s", f->base, same[i]), *b = xasprintf("%s/%s", o16, same[i]);
        cr_expect(file_same(a, b), "%s is not a copy of %s", b, a);
        free(a);
        free(b);
    }
    rm_rf(o32);
    rm_rf(o16);
    free(a32);
    free(a16);
    free(o32);
    free(o16);
}

/* ---- refusals ---- */

Test(export, refuses_other_base_model_foreign_folder_and_bad_input)
{
    fixture_case cs[8];
    int n = load_cases(cs, 8);
    const fixture_case *lora = NULL, *other = NULL;
    for (int c = 0; c < n; c++)
        if (!strcmp(cs[c].name, "lora"))
            lora = &cs[c];
    for (int c = 0; c < n; c++)
        if (lora && strcmp(cs[c].base, lora->base))
            other = &cs[c];
    cr_assert(lora && other, "cases.json needs a 'lora' case and one on another base");
    char *dir = tmp_dir(), *out = xasprintf("%s/out", dir);

    /* 1. a base model whose config.json is not the trained one: exit 2, nothing written */
    char *a = xasprintf("merge --model %s --adapter %s --out %s", other->base, lora->ckpt, out);
    cr_expect_eq(rubric(a), 2, "%s", a);
    cr_expect(!path_exists(out), "%s written after a refused merge", out);
    char *forced = xasprintf("%s --force", a);
    cr_expect_eq(rubric(forced), 0, "%s", forced);
    free(forced);
    free(a);
    rm_rf(out);

    /* 2. a non-empty folder that holds no export: exit 2; --force writes into it */
    mkdir_p(out);
    char *junk = xasprintf("%s/notes.txt", out);
    write_file_atomic(junk, "mine\n", 5);
    a = xasprintf("export-adapter --adapter %s --out %s", lora->ckpt, out);
    cr_expect_eq(rubric(a), 2, "%s", a);
    char *cfg = xasprintf("%s/adapter_config.json", out);
    cr_expect(!path_exists(cfg));
    forced = xasprintf("%s --force", a);
    cr_expect_eq(rubric(forced), 0, "%s", forced);
    cr_expect(path_exists(cfg) && path_exists(junk));
    free(forced);
    free(a);
    a = xasprintf("merge --model %s --adapter %s --out %s", lora->base, lora->ckpt, out);
    cr_expect_eq(rubric(a), 2, "merge into an adapter folder: %s", a);
    free(a);

    /* 3. --out is the base folder */
    a = xasprintf("merge --model %s --adapter %s --out %s --force", lora->base, lora->ckpt,
                  lora->base);
    cr_expect_eq(rubric(a), 2, "%s", a);
    free(a);

    /* 4. a damaged checkpoint, usage errors */
    char *bad = xasprintf("%s/bad.h5", dir);
    char *data = NULL;
    size_t len = 0;
    cr_assert_eq(read_file(lora->ckpt, &data, &len), 0);
    for (size_t i = len / 2; i < len / 2 + 64 && i < len; i++)
        data[i] ^= 0x5a;
    write_file_atomic(bad, data, len);
    free(data);
    a = xasprintf("export-adapter --adapter %s --out %s/x", bad, dir);
    cr_expect_eq(rubric(a), 2, "damaged checkpoint: %s", a);
    free(a);
    cr_expect_eq(rubric("merge --adapter x.h5 --out y"), 2);
    cr_expect_eq(rubric("export-adapter --out y"), 2);
    a = xasprintf("merge --model %s --adapter %s --out %s/z --dtype f8", lora->base, lora->ckpt,
                  dir);
    cr_expect_eq(rubric(a), 2, "%s", a);
    free(a);
    a = xasprintf("merge --model %s --adapter %s --out %s/z --max-shard-size 0", lora->base,
                  lora->ckpt, dir);
    cr_expect_eq(rubric(a), 2, "%s", a);
    free(a);
    cr_expect_eq(rubric("export-adapter --adapter x.h5 --out y --dtype f32"), 2);

    free(bad);
    free(cfg);
    free(junk);
    rm_rf(dir);
    free(out);
    free(dir);
}

/* ---- what a merged folder and an exported adapter carry ---- */

static void write_rows(const char *path)
{
    const char *rows = "{\"instruction\": \"r\", \"output\": \"1 2 3\"}\n";
    cr_assert_eq(write_file_atomic(path, rows, strlen(rows)), 0, "%s", err_msg());
}

/* Run `cd cwd && rubric <args>` with its output in log; the exit code. */
static int rubric_in(const char *cwd, const char *args, const char *log)
{
    const char *bin = getenv("RUBRIC_BIN");
    cr_assert(bin, "RUBRIC_BIN is not set (run through meson test)");
    char abs_bin[PATH_MAX];
    cr_assert(realpath(bin, abs_bin));
    char *cmd = xasprintf("cd '%s' && '%s' %s >'%s' 2>&1", cwd, abs_bin, args, log);
    int st = system(cmd);
    free(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int log_has(const char *log, const char *text)
{
    char *all = NULL;
    size_t n = 0;
    int has = !read_file(log, &all, &n) && strstr(all, text);
    free(all);
    return has;
}

Test(export, merge_keeps_the_training_config_and_score_reads_it)
{
    fixture_case cs[8];
    load_cases(cs, 8);
    const fixture_case *f = &cs[0];
    char *dir = tmp_dir(), *log = xasprintf("%s/log", dir);
    char src[PATH_MAX];
    cr_assert(getcwd(src, sizeof src));
    char *a = xasprintf("merge --model %s --adapter %s --out %s/m", f->base, f->ckpt, dir);
    cr_assert_eq(rubric_in(src, a, log), 0, "%s (see %s)", a, log);
    free(a);

    /* rubric_config.yml is the checkpoint's stored config */
    char *yml = xasprintf("%s/m/rubric_config.yml", dir);
    rubric_config stored, merged;
    cr_assert_eq(scorer_adapter_config(f->ckpt, &stored), 0, "%s", err_msg());
    cr_assert_eq(config_load(&merged, yml, 0), 0, "%s", err_msg());
    cr_assert_str_eq(merged.yaml_text, stored.yaml_text);
    config_free(&stored);
    config_free(&merged);

    /* score --model the merged folder takes its prompt format and range from it (a range
     * edited to 0..3 shows it is read; scoring then stops at this fixture's tokenizer) */
    char *text = NULL;
    size_t n = 0;
    cr_assert_eq(read_file(yml, &text, &n), 0);
    char *at = strstr(text, "score_max: 5");
    cr_assert(at, "%s", text);
    at[11] = '3';
    cr_assert_eq(write_file_atomic(yml, text, n), 0);
    free(text);
    char *in = xasprintf("%s/rows.jsonl", dir);
    write_rows(in);
    a = xasprintf("score --model %s/m --input %s --output %s/p.jsonl", dir, in, dir);
    rubric_in(src, a, log);
    cr_assert(log_has(log, "from the merged model's training config"), "see %s", log);
    cr_assert(log_has(log, "scores per row in 0..3"), "see %s", log);
    free(a);
    free(in);
    free(yml);
    rm_rf(dir);
    free(log);
    free(dir);
}

Test(export, adapter_records_an_absolute_base_model_folder)
{
    fixture_case cs[8];
    load_cases(cs, 8);
    const fixture_case *f = &cs[0];
    char *dir = tmp_dir(), *log = xasprintf("%s/log", dir);
    char src[PATH_MAX], base[PATH_MAX];
    cr_assert(getcwd(src, sizeof src));
    cr_assert(realpath(f->base, base));

    /* the stored base_model is relative to the source root, where this runs */
    rubric_config stored;
    cr_assert_eq(scorer_adapter_config(f->ckpt, &stored), 0, "%s", err_msg());
    cr_assert(stored.base_model && stored.base_model[0] != '/', "%s", stored.base_model);
    char *a = xasprintf("export-adapter --adapter %s --out %s/a", f->ckpt, dir);
    cr_assert_eq(rubric_in(src, a, log), 0, "%s (see %s)", a, log);
    json_t *j = load_json(dir, "a/adapter_config.json");
    cr_assert_str_eq(json_string_value(json_object_get(j, "base_model_name_or_path")), base);
    json_decref(j);
    free(a);

    /* from elsewhere, with the folder nowhere to be found: as stored */
    char *copy = xasprintf("%s/ckpt.h5", dir), *data = NULL;
    size_t n = 0;
    cr_assert_eq(read_file(f->ckpt, &data, &n), 0);
    cr_assert_eq(write_file_atomic(copy, data, n), 0);
    free(data);
    a = xasprintf("export-adapter --adapter %s --out %s/b", copy, dir);
    cr_assert_eq(rubric_in(dir, a, log), 0, "%s (see %s)", a, log);
    j = load_json(dir, "b/adapter_config.json");
    cr_assert_str_eq(json_string_value(json_object_get(j, "base_model_name_or_path")),
                     stored.base_model);
    json_decref(j);
    config_free(&stored);
    free(a);
    free(copy);
    rm_rf(dir);
    free(log);
    free(dir);
}

Test(export, score_adapter_with_a_missing_base_names_the_checkpoint)
{
    fixture_case cs[8];
    load_cases(cs, 8);
    const fixture_case *f = &cs[0];
    char *dir = tmp_dir(), *log = xasprintf("%s/log", dir);
    char *copy = xasprintf("%s/ckpt.h5", dir), *in = xasprintf("%s/rows.jsonl", dir);
    char *data = NULL;
    size_t n = 0;
    cr_assert_eq(read_file(f->ckpt, &data, &n), 0);
    cr_assert_eq(write_file_atomic(copy, data, n), 0);
    free(data);
    write_rows(in);

    /* the stored relative base_model does not resolve from dir: exit 2, naming the checkpoint
     * (not a temporary file) and saying to pass --model */
    char *a = xasprintf("score --adapter %s --input %s --output %s/p.jsonl", copy, in, dir);
    cr_assert_eq(rubric_in(dir, a, log), 2, "%s (see %s)", a, log);
    cr_assert(log_has(log, copy), "see %s", log);
    cr_assert(log_has(log, "--model"), "see %s", log);
    cr_assert(!log_has(log, "rubric-adapter-config"), "see %s", log);
    free(a);
    rm_rf(dir);
    free(copy);
    free(in);
    free(log);
    free(dir);
}
