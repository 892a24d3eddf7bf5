/*
 * cmd_init_model.c: `rubric init-model`: write a randomly initialised decoder as a complete
 * Hugging Face model folder (config.json, model.safetensors, generation_config.json and the
 * tokenizer files), seeded and reproducible: the same options give byte-identical files.
 *
 * Initialisation follows transformers' _init_weights: linear and embedding weights are
 * normal(0, initializer_range = 0.02), biases zero, RMSNorm weights one. Each tensor draws from
 * its own xoshiro256** stream seeded by splitmix64(seed + XXH64(tensor name)), normals by
 * Box-Muller, so a tensor's values depend only on the seed, its name and its shape.
 */
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <libgen.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "cli.h"
#include "commands.h"
#include "export.h"
#include "log.h"
#include "model_config.h"
#include "rubric_build.h"
#include "safetensors.h"
#include "util.h"

#define INIT_STD 0.02 /* transformers' initializer_range default */

/* ---- the seeded generator ---- */

typedef struct {
    uint64_t s[4];
} init_rng;

static uint64_t splitmix64_next(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl64(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t init_rng_next(init_rng *r)
{
    uint64_t *s = r->s;
    uint64_t out = rotl64(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl64(s[3], 45);
    return out;
}

static void init_rng_seed(init_rng *r, uint64_t seed, const char *name)
{
    uint64_t x = seed + XXH64(name, strlen(name), 0);
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64_next(&x);
}

/* Fill out[0..n) with normal(0, std) draws, two per Box-Muller pair. */
static void init_rng_normal(init_rng *r, float *out, int64_t n, double std)
{
    const double two_pi = 6.283185307179586;
    for (int64_t i = 0; i < n; i += 2) {
        double u1 = (double)((init_rng_next(r) >> 11) + 1) * 0x1.0p-53; /* (0, 1] */
        double u2 = (double)(init_rng_next(r) >> 11) * 0x1.0p-53;       /* [0, 1) */
        double rad = sqrt(-2.0 * log(u1));
        out[i] = (float)(std * rad * cos(two_pi * u2));
        if (i + 1 < n)
            out[i + 1] = (float)(std * rad * sin(two_pi * u2));
    }
}

/* ---- options ---- */

typedef struct {
    const char *out;
    const char *tokenizer;
    const char *dtype; /* "bf16" or "f32" */
    uint64_t seed;
    uint64_t max_shard_bytes; /* 0: one model.safetensors */
    double init_std;          /* std of the linear layers' normal init */
    double embed_std;         /* std of the embeddings and an untied LM head */
    int help;
    int force; /* write into a non-empty --out */
    model_config mc;
} init_options;

static const char init_summary[] =
    "Write a randomly initialised model as a Hugging Face folder (config.json,\n"
    "model.safetensors, generation_config.json, tokenizer files).";

static const char init_options_help[] =
    "  --out DIR            the folder to write: a new or empty one (created)\n"
    "  --force              write into a non-empty --out anyway: its weights\n"
    "                       (*.safetensors, the shard index) are removed first, and\n"
    "                       config.json and the tokenizer files replaced; other\n"
    "                       files stay\n"
    "  --type T             qwen3 (default), qwen2 or llama\n"
    "  --hidden N           hidden size (64)\n"
    "  --layers N           decoder layers (2)\n"
    "  --heads N            attention heads (4)\n"
    "  --kv-heads N         key/value heads (2)\n"
    "  --head-dim N         head dimension (16)\n"
    "  --intermediate N     MLP size (192)\n"
    "  --vocab N            vocabulary size (151936, Qwen3's)\n"
    "  --rope-theta X       RoPE base (1000000)\n"
    "  --tie | --no-tie     tie the LM head to the embeddings (default: tied)\n"
    "  --seed N             random seed (1); the same seed gives identical files\n"
    "  --init-std X         std of the normal init of linear layers (0.02, as HF)\n"
    "  --embed-std X        std of the embeddings and LM head (default: --init-std).\n"
    "                       With frozen tied embeddings at std 0.02 a tiny random\n"
    "                       model's logits span only about +-1 and its loss cannot\n"
    "                       fall far below ln(vocab); a larger value lets a LoRA\n"
    "                       demo show learning\n"
    "  --dtype bf16|f32     stored weight type (bf16)\n"
    "  --tokenizer DIR      tokenizer files to copy (default: the bundled Qwen3 one)\n"
    "  --max-shard-size N   cut the weights into shards of at most N bytes (suffix\n"
    "                       K, M or G: 1e3, 1e6, 1e9) with an index (default: one file)\n";

static int init_parse_int(const char *opt, const char *s, int64_t min, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < min)
        return err_set(RB_EXIT_INPUT, "%s needs an integer >= %lld, got '%s'", opt,
                       (long long)min, s);
    *out = v;
    return 0;
}

/* A standard deviation: a finite number > 0 and <= 10. */
static int init_parse_std(const char *opt, const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v > 0 && v <= 10))
        return err_set(RB_EXIT_INPUT, "%s needs a number in (0, 10], got '%s'", opt, s);
    *out = v;
    return 0;
}

/* A byte count: digits with an optional K, M or G (powers of 1000, as transformers'
 * max_shard_size). */
static int init_parse_size(const char *s, uint64_t *out)
{
    if (parse_byte_size(s, out) != 0)
        return err_set(RB_EXIT_INPUT, "--max-shard-size needs a positive size such as 500000, "
                       "200K or 2G, got '%s'", s);
    return 0;
}

enum { O_OUT = 256, O_TYPE, O_HIDDEN, O_LAYERS, O_HEADS, O_KV, O_HD, O_INTER, O_VOCAB,
       O_THETA, O_TIE, O_NOTIE, O_SEED, O_DTYPE, O_TOK, O_SHARD, O_STD, O_ESTD, O_FORCE };

static const struct option init_longopts[] = {
    {"out", required_argument, 0, O_OUT},        {"type", required_argument, 0, O_TYPE},
    {"hidden", required_argument, 0, O_HIDDEN},  {"layers", required_argument, 0, O_LAYERS},
    {"heads", required_argument, 0, O_HEADS},    {"kv-heads", required_argument, 0, O_KV},
    {"head-dim", required_argument, 0, O_HD},    {"intermediate", required_argument, 0, O_INTER},
    {"vocab", required_argument, 0, O_VOCAB},    {"rope-theta", required_argument, 0, O_THETA},
    {"tie", no_argument, 0, O_TIE},              {"no-tie", no_argument, 0, O_NOTIE},
    {"seed", required_argument, 0, O_SEED},      {"dtype", required_argument, 0, O_DTYPE},
    {"tokenizer", required_argument, 0, O_TOK},  {"max-shard-size", required_argument, 0, O_SHARD},
    {"init-std", required_argument, 0, O_STD},   {"embed-std", required_argument, 0, O_ESTD},
    {"force", no_argument, 0, O_FORCE},          {0, 0, 0, 0},
};

/* The options as given, before the model config is built from them. */
typedef struct {
    init_options *o;
    const char *type;
    int64_t sizes[7]; /* hidden .. vocab, in enum order */
    int64_t seed;
    double theta;
    int tie;
} init_parse_state;

/* the size options, in the order of init_parse_state's sizes */
static const char *const size_opts[] = {"--hidden", "--layers", "--heads", "--kv-heads",
                                        "--head-dim", "--intermediate", "--vocab"};

/* One option of init-model's own (cli_spec.on_option). */
static int init_on_option(int c, const char *arg, void *ctx)
{
    init_parse_state *ps = ctx;
    init_options *o = ps->o;
    switch (c) {
    case O_OUT: o->out = arg; return 0;
    case O_TYPE: ps->type = arg; return 0;
    case O_HIDDEN: case O_LAYERS: case O_HEADS: case O_KV: case O_HD: case O_INTER:
    case O_VOCAB:
        return init_parse_int(size_opts[c - O_HIDDEN], arg, 1, &ps->sizes[c - O_HIDDEN]);
    case O_THETA:
        ps->theta = strtod(arg, NULL);
        if (!(ps->theta > 0))
            return err_set(RB_EXIT_INPUT, "--rope-theta needs a positive number, got '%s'",
                           arg);
        return 0;
    case O_TIE: ps->tie = 1; return 0;
    case O_NOTIE: ps->tie = 0; return 0;
    case O_SEED: return init_parse_int("--seed", arg, 0, &ps->seed);
    case O_DTYPE: o->dtype = arg; return 0;
    case O_TOK: o->tokenizer = arg; return 0;
    case O_SHARD: return init_parse_size(arg, &o->max_shard_bytes);
    case O_STD: return init_parse_std("--init-std", arg, &o->init_std);
    case O_ESTD: return init_parse_std("--embed-std", arg, &o->embed_std);
    case O_FORCE: o->force = 1; return 0;
    }
    return err_set(RB_EXIT_INPUT, "unknown option");
}

static int init_check_args(init_options *o, const init_parse_state *ps);

/* Parse argv through the shared parser (so -q, --log-level... as in the other commands).
 * Returns 0 (o->help set after --help), or an exit code with the message printed. */
static int init_parse_args(init_options *o, int argc, char **argv)
{
    init_parse_state ps = {.o = o, .type = "qwen3", .sizes = {64, 2, 4, 2, 16, 192, 151936},
                           .seed = 1, .theta = 1e6, .tie = 1};
    memset(o, 0, sizeof *o);
    o->dtype = "bf16";
    o->init_std = INIT_STD;
    o->embed_std = -1; /* follows --init-std */
    const cli_spec spec = {
        .command = "init-model",
        .usage = "--out DIR [options]",
        .summary = init_summary,
        .options_help = init_options_help,
        .options = init_longopts,
        .on_option = init_on_option,
        .ctx = &ps,
        .no_config = 1,
    };
    cli_common cli;
    int rc = cli_parse_common(argc, argv, &spec, &cli);
    o->help = cli.help;
    cli_free(&cli);
    if (rc || o->help)
        return rc ? rc : 0;
    rc = init_check_args(o, &ps);
    if (rc) {
        log_error("%s", err_msg());
        fprintf(stderr, "(rubric init-model --help lists the options)\n");
    }
    return rc;
}

/* The options' values together, then the model config they describe. */
static int init_check_args(init_options *o, const init_parse_state *ps)
{
    const char *type = ps->type;
    const int64_t *sizes = ps->sizes;
    int64_t seed = ps->seed;
    double theta = ps->theta;
    int tie = ps->tie, rc;
    if (!o->out)
        return err_set(RB_EXIT_INPUT, "init-model: --out DIR is required");
    if (o->embed_std < 0)
        o->embed_std = o->init_std;
    if (strcmp(o->dtype, "bf16") != 0 && strcmp(o->dtype, "f32") != 0)
        return err_set(RB_EXIT_INPUT, "init-model: --dtype must be bf16 or f32, got '%s'",
                       o->dtype);
    for (int i = 0; i < 7; i++)
        if (sizes[i] > 1 << 30)
            return err_set(RB_EXIT_INPUT, "init-model: %s %lld is too large (at most 2^30)",
                           size_opts[i], (long long)sizes[i]);

    /* the config: the type's defaults, then the requested shape */
    model_config *mc = &o->mc;
    if ((rc = model_config_init(mc, type)))
        return err_prefix(rc, "init-model: --type");
    mc->hidden_size = (int)sizes[0];
    mc->num_hidden_layers = (int)sizes[1];
    mc->num_attention_heads = (int)sizes[2];
    mc->num_key_value_heads = (int)sizes[3];
    mc->head_dim = (int)sizes[4];
    mc->intermediate_size = (int)sizes[5];
    mc->vocab_size = (int)sizes[6];
    mc->rope_theta = theta;
    mc->max_position_embeddings = 40960;
    mc->tie_word_embeddings = tie;
    mc->bos_token_id = mc->vocab_size > 151643 ? 151643 : -1; /* Qwen's <|endoftext|> */
    mc->eos_token_id = mc->vocab_size > 151645 ? 151645 : -1; /* Qwen's <|im_end|> */
    snprintf(mc->torch_dtype, sizeof mc->torch_dtype, "%s",
             strcmp(o->dtype, "bf16") == 0 ? "bfloat16" : "float32");
    o->seed = (uint64_t)seed;
    return model_config_check(mc, "init-model");
}

/* ---- the weights ---- */

typedef struct {
    st_write_tensor *t;
    int n, cap;
    int count_only;          /* only count: elements, the largest tensor (nothing allocated) */
    double elements;         /* a double: a silly shape must not overflow the count */
    int64_t largest;
    char largest_name[320];
} init_tensors;

enum init_kind { INIT_NORMAL, INIT_EMBED, INIT_ZERO, INIT_ONE };

/* Add tensor `name` of shape [d0] or [d0, d1] (d1 = 0), initialised by kind. */
static void init_add(init_tensors *ts, const init_options *o, enum init_kind kind, int64_t d0,
                     int64_t d1, const char *fmt, ...)
{
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);

    int64_t n = d0 * (d1 ? d1 : 1);
    if (ts->count_only) {
        ts->elements += n;
        if (n > ts->largest) {
            ts->largest = n;
            if (d1)
                snprintf(ts->largest_name, sizeof ts->largest_name, "%s [%lld, %lld]", name,
                         (long long)d0, (long long)d1);
            else
                snprintf(ts->largest_name, sizeof ts->largest_name, "%s [%lld]", name,
                         (long long)d0);
        }
        return;
    }
    float *v = xmalloc((size_t)n * sizeof *v);
    if (kind == INIT_NORMAL || kind == INIT_EMBED) {
        init_rng r;
        init_rng_seed(&r, o->seed, name);
        init_rng_normal(&r, v, n, kind == INIT_EMBED ? o->embed_std : o->init_std);
    } else {
        for (int64_t i = 0; i < n; i++)
            v[i] = kind == INIT_ONE ? 1.0f : 0.0f;
    }

    st_write_tensor t = {.name = xstrdup(name), .ndim = d1 ? 2 : 1, .shape = {d0, d1}};
    if (strcmp(o->dtype, "bf16") == 0) {
        uint16_t *h = xmalloc((size_t)n * sizeof *h);
        for (int64_t i = 0; i < n; i++)
            h[i] = f32_to_bf16(v[i]);
        free(v);
        t.dtype = ST_BF16;
        t.data = h;
    } else {
        t.dtype = ST_F32;
        t.data = v;
    }
    if (ts->n == ts->cap) {
        ts->cap = ts->cap ? 2 * ts->cap : 32;
        ts->t = xrealloc(ts->t, (size_t)ts->cap * sizeof *ts->t);
    }
    ts->t[ts->n++] = t;
}

/* Every tensor of the model, named and ordered as transformers' state_dict. */
static void init_build(init_tensors *ts, const init_options *o)
{
    const model_config *mc = &o->mc;
    int64_t h = mc->hidden_size, q = (int64_t)mc->num_attention_heads * mc->head_dim;
    int64_t kv = (int64_t)mc->num_key_value_heads * mc->head_dim, ff = mc->intermediate_size;

    init_add(ts, o, INIT_EMBED, mc->vocab_size, h, "model.embed_tokens.weight");
    for (int l = 0; l < mc->num_hidden_layers; l++) {
        const char *p = "model.layers";

        /* attention: projections, their biases, the per-head q/k norms */
        init_add(ts, o, INIT_NORMAL, q, h, "%s.%d.self_attn.q_proj.weight", p, l);
        if (mc->attention_bias)
            init_add(ts, o, INIT_ZERO, q, 0, "%s.%d.self_attn.q_proj.bias", p, l);
        init_add(ts, o, INIT_NORMAL, kv, h, "%s.%d.self_attn.k_proj.weight", p, l);
        if (mc->attention_bias)
            init_add(ts, o, INIT_ZERO, kv, 0, "%s.%d.self_attn.k_proj.bias", p, l);
        init_add(ts, o, INIT_NORMAL, kv, h, "%s.%d.self_attn.v_proj.weight", p, l);
        if (mc->attention_bias)
            init_add(ts, o, INIT_ZERO, kv, 0, "%s.%d.self_attn.v_proj.bias", p, l);
        init_add(ts, o, INIT_NORMAL, h, q, "%s.%d.self_attn.o_proj.weight", p, l);
        if (mc->o_bias)
            init_add(ts, o, INIT_ZERO, h, 0, "%s.%d.self_attn.o_proj.bias", p, l);
        if (mc->qk_norm) {
            init_add(ts, o, INIT_ONE, mc->head_dim, 0, "%s.%d.self_attn.q_norm.weight", p, l);
            init_add(ts, o, INIT_ONE, mc->head_dim, 0, "%s.%d.self_attn.k_norm.weight", p, l);
        }

        /* the SwiGLU MLP and the two norms */
        init_add(ts, o, INIT_NORMAL, ff, h, "%s.%d.mlp.gate_proj.weight", p, l);
        init_add(ts, o, INIT_NORMAL, ff, h, "%s.%d.mlp.up_proj.weight", p, l);
        init_add(ts, o, INIT_NORMAL, h, ff, "%s.%d.mlp.down_proj.weight", p, l);
        init_add(ts, o, INIT_ONE, h, 0, "%s.%d.input_layernorm.weight", p, l);
        init_add(ts, o, INIT_ONE, h, 0, "%s.%d.post_attention_layernorm.weight", p, l);
    }
    init_add(ts, o, INIT_ONE, h, 0, "model.norm.weight");
    if (!mc->tie_word_embeddings)
        init_add(ts, o, INIT_EMBED, mc->vocab_size, h, "lm_head.weight");
}

static void init_free(init_tensors *ts)
{
    for (int i = 0; i < ts->n; i++) {
        free((void *)ts->t[i].name);
        free((void *)ts->t[i].data);
    }
    free(ts->t);
}

/* ---- the other files of the folder ---- */

static int init_write_generation_config(const init_options *o)
{
    json_t *g = json_object();
    if (o->mc.bos_token_id >= 0)
        json_object_set_new(g, "bos_token_id", json_integer(o->mc.bos_token_id));
    if (o->mc.eos_token_id >= 0)
        json_object_set_new(g, "eos_token_id", json_integer(o->mc.eos_token_id));
    if (o->mc.bos_token_id >= 0)
        json_object_set_new(g, "pad_token_id", json_integer(o->mc.bos_token_id));
    json_object_set_new(g, "do_sample", json_false());
    char *text = json_dumps(g, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(g);
    char *body = xasprintf("%s\n", text);
    char *path = xasprintf("%s/generation_config.json", o->out);
    int rc = write_file_atomic(path, body, strlen(body));
    free(path);
    free(body);
    free(text);
    return rc;
}

/* The tokenizer folder: --tokenizer, else the bundled one (the build's share folder, then
 * share/ next to the executable). */
static int init_find_tokenizer(const init_options *o, char **dir)
{
    if (o->tokenizer) {
        char *p = xasprintf("%s/tokenizer.json", o->tokenizer);
        int ok = path_exists(p);
        free(p);
        if (!ok)
            return err_set(RB_EXIT_INPUT, "init-model: --tokenizer %s has no tokenizer.json",
                           o->tokenizer);
        *dir = xstrdup(o->tokenizer);
        return 0;
    }
    char exe[4096] = "";
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[n > 0 ? n : 0] = '\0';
    char *exe_dir = xstrdup(dirname(exe));
    char *cands[] = {
        xasprintf("%s/qwen3-tokenizer", RUBRIC_SHARE_DIR),
        xasprintf("%s/share/qwen3-tokenizer", exe_dir),
        xasprintf("%s/../share/rubric/qwen3-tokenizer", exe_dir),
    };
    free(exe_dir);
    *dir = NULL;
    for (size_t i = 0; i < RB_ARRAY_LEN(cands); i++) {
        char *p = xasprintf("%s/tokenizer.json", cands[i]);
        if (!*dir && path_exists(p))
            *dir = xstrdup(cands[i]);
        free(p);
    }
    int rc = *dir ? 0 : err_set(RB_EXIT_INPUT, "init-model: the bundled tokenizer is not in "
                                "%s or %s; pass --tokenizer DIR", cands[0], cands[1]);
    for (size_t i = 0; i < RB_ARRAY_LEN(cands); i++)
        free(cands[i]);
    return rc;
}

static int init_copy_tokenizer(const init_options *o, const char *src)
{
    static const char *const files[] = {
        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
        "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja",
    };
    int rc = 0;
    for (size_t i = 0; i < RB_ARRAY_LEN(files) && !rc; i++) {
        char *from = xasprintf("%s/%s", src, files[i]);
        char *to = xasprintf("%s/%s", o->out, files[i]);
        char *data = NULL;
        size_t n = 0;
        if (path_exists(from) && !(rc = read_file(from, &data, &n)))
            rc = write_file_atomic(to, data, n);
        free(data);
        free(from);
        free(to);
    }
    return rc;
}

/* ---- the command ---- */

/* Remove a file of the folder; 0, or RB_EXIT_RUNTIME naming it. */
static int init_remove(const char *dir, const char *name)
{
    char *path = xasprintf("%s/%s", dir, name);
    int rc = unlink(path) != 0 && errno != ENOENT
                 ? err_set(RB_EXIT_RUNTIME, "--force: cannot remove the old %s: %s", path,
                           strerror(errno))
                 : 0;
    free(path);
    return rc;
}

/* --force over an earlier model: its weights go first (the shard index and every
 * *.safetensors, the index's shards among them), so the folder ends up with one consistent
 * model whatever the earlier one's sharding was. */
static int init_remove_old_weights(const char *dir)
{
    int rc = init_remove(dir, "model.safetensors.index.json");

    DIR *d = opendir(dir);
    for (struct dirent *e; !rc && d && (e = readdir(d));) {
        size_t n = strlen(e->d_name), k = strlen(".safetensors");
        if (n > k && strcmp(e->d_name + n - k, ".safetensors") == 0)
            rc = init_remove(dir, e->d_name);
    }
    if (d)
        closedir(d);
    return rc;
}

/* The weights are made in memory: a shape whose tensors (plus the f32 copy of the largest
 * while it is converted) exceed this machine's memory is a range error, before anything is
 * written. */
static int init_check_memory(const init_options *o)
{
    /* every layer has the same tensors: count the model without layers and with one */
    init_options one = *o;
    init_tensors none = {.count_only = 1}, ts = {.count_only = 1};
    one.mc.num_hidden_layers = 0;
    init_build(&none, &one);
    one.mc.num_hidden_layers = o->mc.num_hidden_layers > 0 ? 1 : 0;
    init_build(&ts, &one);
    ts.elements = none.elements + (ts.elements - none.elements) * o->mc.num_hidden_layers;
    double width = strcmp(o->dtype, "bf16") == 0 ? 2.0 : 4.0;
    /* the weights, one fp32 tensor, and a fifth more for the writer's buffers (measured:
     * about 1.17 x the first two for a 630M-parameter bf16 model) */
    double need = 1.2 * (ts.elements * width + (double)ts.largest * 4.0);
    double have = memory_limit_bytes();
    if (have > 0 && need > have)
        return err_set(RB_EXIT_INPUT, "init-model: the model would have %.4g parameters "
                       "(%.1f GiB in %s; largest tensor %s), more than the %.1f GiB of memory "
                       "this process may use (the machine's, or its cgroup's limit as under "
                       "Slurm --mem): lower --hidden, --intermediate, --layers or --vocab",
                       ts.elements, need / 1073741824.0, o->dtype, ts.largest_name,
                       have / 1073741824.0);
    return 0;
}

/* A failed init-model leaves no folder it made: the new --out's files (flat), then it and
 * each new folder above it, also when the failure ends the process (out of memory). */
static char *made_out, *made_top;

static void init_remove_made(void)
{
    if (!made_out)
        return;
    DIR *d = opendir(made_out);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char *path = xasprintf("%s/%s", made_out, e->d_name);
        unlink(path);
        free(path);
    }
    if (d)
        closedir(d);
    rmdir_empty_upto(made_out, made_top);
    if (path_exists(made_out))
        log_warn("init-model failed; could not remove the folder it made, %s (not empty, or "
                 "not writable)", made_out);
    free(made_out);
    free(made_top);
    made_out = made_top = NULL;
}

static int init_model_write(const init_options *o);

static int init_model_run(const init_options *o)
{
    int rc = init_check_memory(o);
    if (rc)
        return rc;
    rb_set_oom_hint("lower --hidden, --intermediate, --layers or --vocab");
    made_top = path_first_missing(o->out);
    if (made_top) {
        made_out = xstrdup(o->out);
        rb_at_die(init_remove_made);
    }
    rc = init_model_write(o);
    if (rc)
        init_remove_made();
    free(made_out);
    free(made_top);
    made_out = made_top = NULL;
    return rc;
}

static int init_model_write(const init_options *o)
{
    /* 1. the tokenizer first, so a missing one fails before anything is written */
    char *tok_dir = NULL;
    int rc = init_find_tokenizer(o, &tok_dir);
    if (rc)
        return rc;
    if (o->mc.vocab_size < 151669 && !o->tokenizer)
        log_warn("--vocab %d is smaller than the Qwen3 tokenizer's 151669 ids; token ids past "
                 "it will be rejected", o->mc.vocab_size);
    /* a non-empty folder (a real model, a run's checkpoints) is refused without --force, an
     * unwritable one always (before any work) */
    if ((rc = export_prepare_dir(o->out, NULL, o->force)) ||
        (o->force && (rc = init_remove_old_weights(o->out)))) {
        free(tok_dir);
        return rc;
    }

    /* 2. the weights */
    init_tensors ts = {0};
    init_build(&ts, o);
    int64_t params = 0;
    for (int i = 0; i < ts.n; i++)
        params += ts.t[i].shape[0] * (ts.t[i].ndim == 2 ? ts.t[i].shape[1] : 1);
    const char *meta[] = {"format", "pt", NULL};
    rc = safetensors_write_dir(o->out, ts.t, ts.n, meta, o->max_shard_bytes);
    init_free(&ts);

    /* 3. config.json, generation_config.json, the tokenizer files */
    if (!rc) rc = model_config_save(&o->mc, o->out);
    if (!rc) rc = init_write_generation_config(o);
    if (!rc) rc = init_copy_tokenizer(o, tok_dir);
    if (!rc)
        log_info("wrote %s: %s, hidden %d, %d layer%s, %d/%d heads x %d, MLP %d, vocab %d, %s "
                 "embeddings, %lld parameters (%s), seed %llu", o->out, o->mc.model_type,
                 o->mc.hidden_size, o->mc.num_hidden_layers,
                 plural_s(o->mc.num_hidden_layers), o->mc.num_attention_heads,
                 o->mc.num_key_value_heads, o->mc.head_dim, o->mc.intermediate_size,
                 o->mc.vocab_size, o->mc.tie_word_embeddings ? "tied" : "untied",
                 (long long)params, o->dtype, (unsigned long long)o->seed);
    free(tok_dir);
    return rc;
}

int cmd_init_model(int argc, char **argv)
{
    init_options o;
    int rc = init_parse_args(&o, argc, argv); /* errors printed */
    if (rc || o.help)
        return rc;
    rc = init_model_run(&o);
    if (rc) {
        log_error("%s", err_msg());
        if (rc == RB_EXIT_INPUT)
            fprintf(stderr, "(rubric init-model --help lists the options)\n");
    }
    return rc;
}
