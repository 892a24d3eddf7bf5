/*
 * test_model_config.c: config.json reading against transformers' resolved configs (fixtures
 * from tests/ref/gen_safetensors_fixtures.py), bad configs, saving, and `rubric init-model`.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <xxhash.h>

#include "model_config.h"
#include "safetensors.h"
#include "util.h"

#define FIX "tests/fixtures/safetensors"

static json_t *load_json(const char *path)
{
    json_error_t e;
    json_t *j = json_load_file(path, 0, &e);
    cr_assert(j, "cannot read %s: %s", path, e.text);
    return j;
}

static int64_t jint(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    cr_assert(v, "expected.json lacks %s", k);
    return json_is_boolean(v) ? json_is_true(v) : json_integer_value(v);
}

/* Every field rubric reads equals what transformers resolved for the same config.json. */
static void expect_config(const char *name)
{
    char *dir = xasprintf(FIX "/configs/%s", name);
    char *exp_path = xasprintf("%s/expected.json", dir);
    json_t *e = load_json(exp_path);
    model_config mc;
    cr_assert_eq(model_config_load(&mc, dir), 0, "%s: %s", name, err_msg());

    cr_assert_str_eq(mc.model_type, json_string_value(json_object_get(e, "model_type")));
    const struct {
        const char *key;
        int64_t got;
    } f[] = {
        {"vocab_size", mc.vocab_size},
        {"hidden_size", mc.hidden_size},
        {"intermediate_size", mc.intermediate_size},
        {"num_hidden_layers", mc.num_hidden_layers},
        {"num_attention_heads", mc.num_attention_heads},
        {"num_key_value_heads", mc.num_key_value_heads},
        {"head_dim", mc.head_dim},
        {"max_position_embeddings", mc.max_position_embeddings},
        {"tie_word_embeddings", mc.tie_word_embeddings},
        {"attention_bias", mc.attention_bias},
        {"o_bias", mc.o_bias},
        {"qk_norm", mc.qk_norm},
        {"bos_token_id", mc.bos_token_id},
        {"eos_token_id", mc.eos_token_id},
    };
    for (size_t i = 0; i < RB_ARRAY_LEN(f); i++)
        cr_assert_eq(f[i].got, jint(e, f[i].key), "%s: %s is %lld, transformers says %lld",
                     name, f[i].key, (long long)f[i].got, (long long)jint(e, f[i].key));
    cr_assert_eq(mc.rope_theta, json_real_value(json_object_get(e, "rope_theta")), "%s theta",
                 name);
    cr_assert_eq(mc.rms_norm_eps, json_real_value(json_object_get(e, "rms_norm_eps")), "%s eps",
                 name);

    /* the hash is XXH64 of the file's bytes */
    char *path = xasprintf("%s/config.json", dir), *text;
    size_t len;
    cr_assert_eq(read_file(path, &text, &len), 0);
    cr_assert_eq(mc.hash, XXH64(text, len, 0));
    free(text);
    free(path);
    json_decref(e);
    free(exp_path);
    free(dir);
}

Test(model_config, real_configs_resolve_as_transformers_does)
{
    expect_config("qwen3-0.6b");
    expect_config("qwen2.5-0.5b");
    expect_config("tinyllama-1.1b");
    expect_config("llama-bias");
    expect_config("qwen3-saved-by-transformers");
}

Test(model_config, absent_fields_take_transformers_defaults)
{
    expect_config("qwen3-defaults");
    expect_config("qwen2-defaults");
    expect_config("llama-defaults");
}

Test(model_config, every_config_fixture_is_checked)
{
    DIR *d = opendir(FIX "/configs");
    cr_assert(d);
    struct dirent *e;
    int n = 0;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') {
            expect_config(e->d_name);
            n++;
        }
    closedir(d);
    cr_assert_geq(n, 8);
}

static void expect_bad(const char *name, const char *must_contain)
{
    char *dir = xasprintf(FIX "/bad_configs/%s", name);
    model_config mc;
    err_clear();
    cr_assert_eq(model_config_load(&mc, dir), RB_EXIT_INPUT, "%s was accepted", name);
    cr_assert(strstr(err_msg(), dir) && strstr(err_msg(), "config.json"),
              "%s: message does not name the file: %s", name, err_msg());
    cr_assert(strstr(err_msg(), must_contain), "%s: message lacks '%s': %s", name,
              must_contain, err_msg());
    free(dir);
}

Test(model_config, bad_configs_are_refused_naming_file_and_field)
{
    expect_bad("gpt2", "qwen3, qwen2, llama");
    expect_bad("no-model-type", "model_type");
    expect_bad("rope-scaling-llama3", "rope_scaling");
    expect_bad("heads-not-multiple", "num_key_value_heads");
    expect_bad("negative-hidden", "hidden_size");
    expect_bad("string-layers", "num_hidden_layers");
    expect_bad("sliding-window", "use_sliding_window");
    expect_bad("gelu", "hidden_act");
    expect_bad("mlp-bias", "mlp_bias");
    expect_bad("odd-head-dim", "head_dim");
    expect_bad("bad-json", "config.json:4");
    expect_bad("no-such-model", "cannot open");
}

Test(model_config, save_then_load_gives_the_same_model)
{
    const char *names[] = {"qwen3-0.6b", "qwen2.5-0.5b", "tinyllama-1.1b", "llama-bias"};
    for (size_t i = 0; i < RB_ARRAY_LEN(names); i++) {
        char *dir = xasprintf(FIX "/configs/%s", names[i]);
        char tmpl[] = "/tmp/rubric-test-mc-XXXXXX";
        cr_assert(mkdtemp(tmpl));
        model_config a, b;
        cr_assert_eq(model_config_load(&a, dir), 0, "%s", err_msg());
        cr_assert_eq(model_config_save(&a, tmpl), 0, "%s", err_msg());
        cr_assert_eq(model_config_load(&b, tmpl), 0, "%s", err_msg());
        b.hash = a.hash;
        cr_assert_eq(memcmp(&a, &b, sizeof a), 0, "%s changed through save/load", names[i]);
        char *cmd = xasprintf("rm -rf '%s'", tmpl);
        cr_assert_eq(system(cmd), 0);
        free(cmd);
        free(dir);
    }
}

/* ---- rubric init-model ---- */

static int run_rubric(const char *args)
{
    const char *bin = getenv("RUBRIC_BIN");
    cr_assert(bin, "RUBRIC_BIN is not set");
    char *cmd = xasprintf("'%s' init-model %s 2>/dev/null", bin, args);
    int st = system(cmd);
    free(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static char *tmp_dir(void)
{
    char tmpl[] = "/tmp/rubric-test-init-XXXXXX";
    cr_assert(mkdtemp(tmpl));
    return xstrdup(tmpl);
}

static void rm_rf(const char *dir)
{
    char *cmd = xasprintf("rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
    free(cmd);
}

static int same_file(const char *a, const char *b)
{
    char *x, *y;
    size_t nx, ny;
    cr_assert_eq(read_file(a, &x, &nx), 0, "%s", err_msg());
    cr_assert_eq(read_file(b, &y, &ny), 0, "%s", err_msg());
    int same = nx == ny && memcmp(x, y, nx) == 0;
    free(x);
    free(y);
    return same;
}

Test(init_model, same_seed_same_bytes_other_seed_other_weights)
{
    char *d = tmp_dir();
    char *args[3] = {
        xasprintf("--out %s/a --vocab 1000 --seed 5", d),
        xasprintf("--out %s/b --vocab 1000 --seed 5", d),
        xasprintf("--out %s/c --vocab 1000 --seed 6", d),
    };
    for (int i = 0; i < 3; i++)
        cr_assert_eq(run_rubric(args[i]), 0, "init-model %s failed", args[i]);
    const char *files[] = {"model.safetensors", "config.json", "generation_config.json",
                           "tokenizer.json"};
    for (size_t i = 0; i < RB_ARRAY_LEN(files); i++) {
        char *a = xasprintf("%s/a/%s", d, files[i]), *b = xasprintf("%s/b/%s", d, files[i]);
        cr_assert(same_file(a, b), "%s differs between two runs with one seed", files[i]);
        free(a);
        free(b);
    }
    char *a = xasprintf("%s/a/model.safetensors", d), *c = xasprintf("%s/c/model.safetensors", d);
    cr_assert_not(same_file(a, c), "seeds 5 and 6 gave the same weights");
    free(a);
    free(c);
    for (int i = 0; i < 3; i++)
        free(args[i]);
    rm_rf(d);
    free(d);
}

/* A non-empty --out (a real model, a run's checkpoints) is refused, exit 2, its files kept;
 * an empty existing folder is fine; --force writes into it, leaving other files alone. */
Test(init_model, non_empty_out_needs_force)
{
    char *d = tmp_dir();
    char *st = xasprintf("%s/model.safetensors", d), *ck = xasprintf("%s/checkpoint-40.h5", d);
    char *cfg = xasprintf("%s/config.json", d);
    cr_assert_eq(write_file_atomic(st, "real weights", 12), 0);
    cr_assert_eq(write_file_atomic(ck, "a checkpoint", 12), 0);
    char *args = xasprintf("--out %s --vocab 1000", d);
    cr_assert_eq(run_rubric(args), 2, "init-model into a non-empty folder did not exit 2");
    char *text;
    size_t n;
    cr_assert_eq(read_file(st, &text, &n), 0);
    cr_expect_str_eq(text, "real weights", "model.safetensors was replaced");
    free(text);
    cr_expect_not(path_exists(cfg), "config.json was written into a non-empty folder");

    /* the message says what to do */
    char *cmd = xasprintf("'%s' init-model %s 2>&1 | grep -q 'is not empty.*--force'",
                          getenv("RUBRIC_BIN"), args);
    cr_expect_eq(system(cmd), 0, "the message does not name --force");
    free(cmd);

    /* --force: written, the checkpoint left as it was */
    char *forced = xasprintf("%s --force", args);
    cr_assert_eq(run_rubric(forced), 0, "init-model --force failed");
    cr_assert_eq(read_file(st, &text, &n), 0);
    cr_expect(n > 12 && memcmp(text, "real weights", 12) != 0, "--force did not write");
    free(text);
    cr_expect(path_exists(cfg));
    cr_assert_eq(read_file(ck, &text, &n), 0);
    cr_expect_str_eq(text, "a checkpoint");
    free(text);

    /* an existing empty folder needs no --force */
    char *empty = xasprintf("%s/empty", d), *eargs = xasprintf("--out %s --vocab 1000", empty);
    cr_assert_eq(mkdir(empty, 0755), 0);
    cr_assert_eq(run_rubric(eargs), 0, "init-model into an empty folder failed");
    free(empty);
    free(eargs);
    free(forced);
    free(args);
    free(cfg);
    free(ck);
    free(st);
    rm_rf(d);
    free(d);
}

/* Run init-model with args; returns the exit status, stdout and stderr together in *out. */
static int run_rubric_output(const char *args, char **out)
{
    char *cmd = xasprintf("'%s' init-model %s 2>&1", getenv("RUBRIC_BIN"), args);
    FILE *p = popen(cmd, "r");
    cr_assert(p);
    size_t cap = 1 << 16, n = 0;
    *out = xmalloc(cap);
    for (size_t got; (got = fread(*out + n, 1, cap - 1 - n, p)) > 0;)
        n += got;
    (*out)[n] = '\0';
    int st = pclose(p);
    free(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* A write that fails half way (here a file-size limit) and an out-of-memory end (an address
 * space limit) remove the --out folder and every folder above it that the run made. */
Test(init_model, failed_run_removes_every_folder_it_made)
{
    char *d = tmp_dir();
    const char *limits[] = {"trap '' XFSZ; ulimit -f 200", "ulimit -v 1500000"};
    const char *shape[] = {"--hidden 256", "--hidden 1024 --layers 40 --heads 8 --kv-heads 4 "
                           "--head-dim 128 --intermediate 4096 --vocab 1000"};
    /* under ASan an address space limit stops the binary before main (its shadow memory) */
    int cases = getenv("RUBRIC_SANITIZER") ? 1 : 2;
    for (int i = 0; i < cases; i++) {
        char *cmd = xasprintf("(%s; '%s' init-model --out %s/n1/n2/m %s) >/dev/null 2>&1",
                              limits[i], getenv("RUBRIC_BIN"), d, shape[i]);
        int st = system(cmd);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 1, "%s: status %d", cmd, st);
        char *n1 = xasprintf("%s/n1", d);
        cr_assert_not(path_exists(n1), "%s left %s", cmd, n1);
        free(n1);
        free(cmd);
    }
    rm_rf(d);
    free(d);
}

/* --force over a sharded model: the shards, the index and any other *.safetensors are gone,
 * so the folder holds one consistent model (and the other way round). */
Test(init_model, force_replaces_a_sharded_model_whole)
{
    char *d = tmp_dir();
    char *sharded = xasprintf("--out %s --vocab 1000 --no-tie --max-shard-size 50K", d);
    cr_assert_eq(run_rubric(sharded), 0, "init-model %s failed", sharded);
    char *index = xasprintf("%s/model.safetensors.index.json", d);
    char *stray = xasprintf("%s/old-extra.safetensors", d), *keep = xasprintf("%s/notes.txt", d);
    char *shards = xasprintf("ls '%s'/model-0000[2-9]-of-0000?.safetensors >/dev/null", d);
    cr_assert(system(shards) == 0 && path_exists(index), "no shards to replace");
    cr_assert_eq(write_file_atomic(stray, "x", 1), 0);
    cr_assert_eq(write_file_atomic(keep, "mine", 4), 0);

    char *single = xasprintf("--out %s --vocab 1000 --force", d);
    cr_assert_eq(run_rubric(single), 0, "init-model %s failed", single);
    char *cmd = xasprintf("cd '%s' && test \"$(ls *.safetensors)\" = model.safetensors", d);
    cr_expect_eq(system(cmd), 0, "stale weights were left in %s", d);
    free(cmd);
    cr_expect_not(path_exists(index), "the old index was left");
    cr_expect(path_exists(keep), "--force removed a file that is not weights");
    safetensors_set *s;
    cr_assert_eq(safetensors_open_dir(&s, d), 0, "%s", err_msg());
    cr_expect_null(safetensors_find(s, "lm_head.weight"), "the untied model's head is read");
    safetensors_close(s);

    /* and back to shards: no model.safetensors left to win over the index */
    char *again = xasprintf("%s --force", sharded);
    cr_assert_eq(run_rubric(again), 0, "init-model %s failed", again);
    char *one = xasprintf("%s/model.safetensors", d);
    cr_expect_not(path_exists(one), "model.safetensors was left next to the shards");
    cr_assert_eq(safetensors_open_dir(&s, d), 0, "%s", err_msg());
    cr_expect_not_null(safetensors_find(s, "lm_head.weight"));
    safetensors_close(s);

    free(one);
    free(again);
    free(single);
    free(keep);
    free(stray);
    free(index);
    free(shards);
    free(sharded);
    rm_rf(d);
    free(d);
}

/* An --out that takes no file (chattr +i, even for root; mode 0555 for a user) or cannot be
 * made: exit 2 before any work, naming the folder and what to do. */
Test(init_model, unwritable_out_is_refused_up_front)
{
    char *d = tmp_dir();
    char *ro = xasprintf("%s/ro", d), *lock = xasprintf("chattr +i '%s' 2>/dev/null", ro);
    cr_assert_eq(mkdir(ro, 0555), 0);
    if (geteuid() == 0 && system(lock) != 0) {
        cr_log_warn("chattr +i is not supported here: the unwritable-folder case is skipped");
    } else {
        const char *outs[] = {"", "/sub"};
        for (int i = 0; i < 2; i++) {
            char *args = xasprintf("--out %s%s --vocab 1000", ro, outs[i]), *out;
            cr_expect_eq(run_rubric_output(args, &out), 2, "%s: %s", args, out);
            cr_expect(strstr(out, ro), "%s: %s", args, out);
            cr_expect(strstr(out, "give a folder this user can write to"), "%s: %s", args, out);
            cr_expect(!strstr(out, ".tmp."), "%s: it tried to write first: %s", args, out);
            free(out);
            free(args);
        }
    }
    char *unlock = xasprintf("chattr -i '%s' 2>/dev/null; true", ro);
    cr_expect_eq(system(unlock), 0);
    free(unlock);
    free(lock);
    free(ro);
    rm_rf(d);
    free(d);
}

/* The common options of the other commands: -q and --log-level quiet the info lines; a
 * config option is not one of init-model's; a value given to a flag is named. */
Test(init_model, takes_the_common_logging_options)
{
    char *d = tmp_dir(), *out;
    char *loud = xasprintf("--out %s/a --vocab 1000", d);
    cr_assert_eq(run_rubric_output(loud, &out), 0, "%s", out);
    cr_expect(strstr(out, "wrote "), "no info line without -q: %s", out);
    free(out);
    const char *quiet[] = {"-q", "--quiet", "--log-level error"};
    for (int i = 0; i < 3; i++) {
        char *args = xasprintf("%s --out %s/q%d --vocab 1000", quiet[i], d, i);
        cr_assert_eq(run_rubric_output(args, &out), 0, "%s: %s", args, out);
        cr_expect(!strstr(out, "wrote "), "%s printed info lines: %s", args, out);
        free(out);
        free(args);
    }
    char *cfg = xasprintf("--out %s/c --config x.yml", d);
    cr_expect_eq(run_rubric_output(cfg, &out), 2, "%s", out);
    cr_expect(strstr(out, "unknown option '--config'"), "%s", out);
    free(out);
    char *flag = xasprintf("--out %s/f --force=1", d);
    cr_expect_eq(run_rubric_output(flag, &out), 2, "%s", out);
    cr_expect(strstr(out, "--force takes no value"), "%s", out);
    free(out);
    cr_expect_eq(run_rubric_output("--help", &out), 0, "%s", out);
    cr_expect(strstr(out, "-q, --quiet") && strstr(out, "--max-shard-size"), "%s", out);
    free(out);
    free(flag);
    free(cfg);
    free(loud);
    rm_rf(d);
    free(d);
}

/* The tensors transformers' state_dict holds for mc, with their shapes. */
static int expected_tensors(const model_config *mc, char names[][96], int64_t shapes[][2])
{
    int n = 0, h = mc->hidden_size, q = mc->num_attention_heads * mc->head_dim;
    int kv = mc->num_key_value_heads * mc->head_dim, ff = mc->intermediate_size;
#define ADD(d0, d1, ...)                                                                          \
    do {                                                                                          \
        snprintf(names[n], 96, __VA_ARGS__);                                                      \
        shapes[n][0] = (d0);                                                                      \
        shapes[n][1] = (d1);                                                                      \
        n++;                                                                                      \
    } while (0)
    ADD(mc->vocab_size, h, "model.embed_tokens.weight");
    ADD(h, 0, "model.norm.weight");
    if (!mc->tie_word_embeddings)
        ADD(mc->vocab_size, h, "lm_head.weight");
    for (int l = 0; l < mc->num_hidden_layers; l++) {
        ADD(q, h, "model.layers.%d.self_attn.q_proj.weight", l);
        ADD(kv, h, "model.layers.%d.self_attn.k_proj.weight", l);
        ADD(kv, h, "model.layers.%d.self_attn.v_proj.weight", l);
        ADD(h, q, "model.layers.%d.self_attn.o_proj.weight", l);
        if (mc->attention_bias) {
            ADD(q, 0, "model.layers.%d.self_attn.q_proj.bias", l);
            ADD(kv, 0, "model.layers.%d.self_attn.k_proj.bias", l);
            ADD(kv, 0, "model.layers.%d.self_attn.v_proj.bias", l);
        }
        if (mc->o_bias)
            ADD(h, 0, "model.layers.%d.self_attn.o_proj.bias", l);
        if (mc->qk_norm) {
            ADD(mc->head_dim, 0, "model.layers.%d.self_attn.q_norm.weight", l);
            ADD(mc->head_dim, 0, "model.layers.%d.self_attn.k_norm.weight", l);
        }
        ADD(ff, h, "model.layers.%d.mlp.gate_proj.weight", l);
        ADD(ff, h, "model.layers.%d.mlp.up_proj.weight", l);
        ADD(h, ff, "model.layers.%d.mlp.down_proj.weight", l);
        ADD(h, 0, "model.layers.%d.input_layernorm.weight", l);
        ADD(h, 0, "model.layers.%d.post_attention_layernorm.weight", l);
    }
#undef ADD
    return n;
}

/* Run init-model with args, then check config, names, shapes and initial values. */
static void check_init(const char *args, const char *type, int tie, st_dtype dtype)
{
    char *d = tmp_dir();
    char *full = xasprintf("--out %s/m %s", d, args);
    cr_assert_eq(run_rubric(full), 0, "init-model %s failed", full);
    char *dir = xasprintf("%s/m", d);

    model_config mc;
    cr_assert_eq(model_config_load(&mc, dir), 0, "%s", err_msg());
    cr_assert_str_eq(mc.model_type, type);
    cr_assert_eq(mc.tie_word_embeddings, tie);
    cr_assert_str_eq(mc.torch_dtype, dtype == ST_BF16 ? "bfloat16" : "float32");

    safetensors_set *s;
    cr_assert_eq(safetensors_open_dir(&s, dir), 0, "%s", err_msg());
    static char names[512][96];
    static int64_t shapes[512][2];
    int n = expected_tensors(&mc, names, shapes);
    cr_assert_eq(safetensors_count(s), n, "%d tensors, expected %d", safetensors_count(s), n);
    for (int i = 0; i < n; i++) {
        const st_tensor *t = safetensors_find(s, names[i]);
        cr_assert(t, "%s is missing", names[i]);
        cr_assert_eq(t->dtype, dtype, "%s dtype", names[i]);
        int nd = shapes[i][1] ? 2 : 1;
        float *v = xmalloc((size_t)(shapes[i][0] * (nd == 2 ? shapes[i][1] : 1)) * 4);
        cr_assert_eq(safetensors_read_f32(s, names[i], nd, shapes[i], v), 0, "%s", err_msg());
        int64_t cnt = st_tensor_numel(t);
        /* norms are one, biases zero, weights normal(0, 0.02) */
        if (strstr(names[i], "norm")) {
            for (int64_t k = 0; k < cnt; k++)
                cr_assert_eq(v[k], 1.0f, "%s[%lld]", names[i], (long long)k);
        } else if (strstr(names[i], ".bias")) {
            for (int64_t k = 0; k < cnt; k++)
                cr_assert_eq(v[k], 0.0f, "%s[%lld]", names[i], (long long)k);
        } else {
            double sum = 0, sq = 0;
            for (int64_t k = 0; k < cnt; k++) {
                sum += v[k];
                sq += (double)v[k] * v[k];
            }
            double mean = sum / (double)cnt, sd = sqrt(sq / (double)cnt - mean * mean);
            double se = 0.02 / sqrt((double)cnt);
            cr_assert_lt(fabs(mean), 6 * se, "%s mean %g", names[i], mean);
            cr_assert_lt(fabs(sd - 0.02), 0.02 * 6 / sqrt((double)cnt) + 1e-4, "%s std %g",
                         names[i], sd);
        }
        free(v);
    }
    safetensors_close(s);

    /* a complete Hugging Face folder: the tokenizer and generation config are there */
    const char *files[] = {"tokenizer.json", "tokenizer_config.json", "generation_config.json"};
    for (size_t i = 0; i < RB_ARRAY_LEN(files); i++) {
        char *p = xasprintf("%s/%s", dir, files[i]);
        cr_assert(path_exists(p), "%s missing", files[i]);
        free(p);
    }
    rm_rf(d);
    free(dir);
    free(full);
    free(d);
}

Test(init_model, qwen3_tied_bf16_names_shapes_and_values)
{
    check_init("--vocab 1000", "qwen3", 1, ST_BF16);
}

Test(init_model, qwen3_untied_f32_custom_shape)
{
    check_init("--vocab 500 --no-tie --dtype f32 --hidden 32 --layers 3 --heads 8 --kv-heads 2 "
               "--head-dim 8 --intermediate 48", "qwen3", 0, ST_F32);
}

Test(init_model, sharded_output_reads_back_through_the_index)
{
    check_init("--vocab 1000 --no-tie --max-shard-size 50K", "qwen3", 0, ST_BF16);
}

Test(init_model, qwen2_has_qkv_biases_llama_has_none)
{
    check_init("--vocab 300 --type qwen2 --heads 4 --kv-heads 4", "qwen2", 1, ST_BF16);
    check_init("--vocab 300 --type llama --no-tie", "llama", 0, ST_BF16);
}

Test(init_model, bad_options_exit_2_and_write_nothing)
{
    char *d = tmp_dir();
    const char *bad[] = {"--hidden 0", "--type gpt2", "--heads 4 --kv-heads 3", "--dtype f16",
                         "--bogus", "--head-dim 15", "--tokenizer /nonexistent",
                         "--max-shard-size 0", "--max-shard-size 12Q",
                         "--hidden 999999999", "--layers 1000000000 --hidden 4096"};
    for (size_t i = 0; i < RB_ARRAY_LEN(bad); i++) {
        char *args = xasprintf("--out %s/m --vocab 100 %s", d, bad[i]);
        cr_assert_eq(run_rubric(args), 2, "init-model %s did not exit 2", bad[i]);
        char *m = xasprintf("%s/m", d);
        cr_assert_not(path_exists(m), "init-model %s created its folder", bad[i]);
        free(m);
        free(args);
    }
    cr_assert_eq(run_rubric("--vocab 100"), 2, "a missing --out must exit 2");

    /* a shape beyond memory: a range error naming the options, not an out-of-memory exit 1 */
    char *out, *args = xasprintf("--out %s/m --hidden 999999999", d);
    cr_assert_eq(run_rubric_output(args, &out), 2, "%s", out);
    cr_assert(strstr(out, "of memory this process may use") && strstr(out, "lower --hidden"),
              "%s", out);
    free(out);
    free(args);
    rm_rf(d);
    free(d);
}
