/*
 * config.c: the Axolotl-style YAML config, read with libyaml's document API.
 *
 * One table (config_keys below) lists every key rubric knows: its type, where it lands in
 * rubric_config, its allowed range, and, for keys rubric reads but does not act on the way
 * Axolotl does, the info line it logs. docs/config.md documents the same table for users.
 *
 * Messages name the place: "config.yml:7:10: lora_r: expected an integer from 1 to 4096, got
 * \"abc\"".
 * Overrides from the command line (config_set) read "--set:1:8: ..." with the column inside
 * the "key=value" text.
 */
#include "config.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

#include "jsonl.h"
#include "log.h"
#include "util.h"

/* ------------------------------------------------------------------------------------------ */
/* The key table                                                                              */

enum key_kind {
    K_STR,     /* char * (choices optional) */
    K_BOOL,    /* int, YAML 1.1 booleans */
    K_INT,     /* int in [lo, hi] */
    K_INT64,   /* int64_t in [lo, hi] */
    K_U64,     /* uint64_t */
    K_DOUBLE,  /* double in [lo, hi] (open ends by flag) */
    K_CUSTOM,  /* a setter and an emitter of its own */
    K_IGNORED, /* accepted, not used: logs `info` when set */
};

enum key_flags {
    F_LO_OPEN = 1,  /* lo itself is not allowed */
    F_HI_OPEN = 2,  /* hi itself is not allowed */
    F_NULLABLE = 4, /* a string (at off) whose default is NULL: `key:` (null) clears it */
    F_NO_EMIT = 8,  /* not printed by config_to_yaml */
};

typedef struct load_ctx load_ctx;
typedef struct key_def key_def;
typedef int (*key_setter)(rubric_config *cfg, const key_def *k, load_ctx *cx, yaml_node_t *n);
typedef int (*key_emitter)(const rubric_config *cfg, const key_def *k, yaml_emitter_t *em);

struct key_def {
    const char *name;
    enum key_kind kind;
    size_t off;
    double lo, hi;
    int flags;
    const char *expect;             /* "a positive integer"; derived when NULL */
    const char *const *choices;     /* K_STR: allowed values, NULL-terminated */
    key_setter set;                 /* K_CUSTOM */
    key_emitter emit;               /* K_CUSTOM */
    const char *info;               /* logged by config_finalize when the key is set (true) */
};

/* Where each key was set: line and column in the config (1-based), -1 for --set, 0 default. */
struct config_origin {
    int *line;
    int *col;
};

/* One parse: the document, and how to name places in messages. */
struct load_ctx {
    const char *file;       /* config path, or "--set" */
    yaml_document_t *doc;
    int col_shift;          /* --set: characters before the value in "key=value" */
    int is_override;        /* from --set */
    int strict;             /* unknown keys are errors */
};

#define OFF(field) offsetof(rubric_config, field)
#define BIG 1e18

static int set_adapter(rubric_config *, const key_def *, load_ctx *, yaml_node_t *);
static int set_lr_scheduler(rubric_config *, const key_def *, load_ctx *, yaml_node_t *);
static int set_prompt_format(rubric_config *, const key_def *, load_ctx *, yaml_node_t *);
static int set_chat_template(rubric_config *, const key_def *, load_ctx *, yaml_node_t *);
static int set_targets(rubric_config *, const key_def *, load_ctx *, yaml_node_t *);
static int set_target_linear(rubric_config *, const key_def *, load_ctx *, yaml_node_t *);
static int set_datasets(rubric_config *, const key_def *, load_ctx *, yaml_node_t *);
static int set_test_datasets(rubric_config *, const key_def *, load_ctx *, yaml_node_t *);
static int set_val_set_size(rubric_config *, const key_def *, load_ctx *, yaml_node_t *);
static int set_bf16(rubric_config *, const key_def *, load_ctx *, yaml_node_t *);
static int set_special_tokens(rubric_config *, const key_def *, load_ctx *, yaml_node_t *);
static int set_load_in_8bit(rubric_config *, const key_def *, load_ctx *, yaml_node_t *);
static int set_auto_resume(rubric_config *, const key_def *, load_ctx *, yaml_node_t *);
static int emit_adapter(const rubric_config *, const key_def *, yaml_emitter_t *);
static int emit_lr_scheduler(const rubric_config *, const key_def *, yaml_emitter_t *);
static int emit_prompt_format(const rubric_config *, const key_def *, yaml_emitter_t *);
static int emit_targets(const rubric_config *, const key_def *, yaml_emitter_t *);
static int emit_datasets(const rubric_config *, const key_def *, yaml_emitter_t *);
static int emit_test_datasets(const rubric_config *, const key_def *, yaml_emitter_t *);
static int emit_val_set_size(const rubric_config *, const key_def *, yaml_emitter_t *);
static int emit_bf16(const rubric_config *, const key_def *, yaml_emitter_t *);
static int emit_special_tokens(const rubric_config *, const key_def *, yaml_emitter_t *);

static const char *const optimizer_choices[] = {
    "adamw_torch", "adamw_torch_fused", "adamw_hf", "adamw", "adamw_torch_4bit",
    "adamw_bnb_8bit", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", NULL};

/* The optimizers whose moments Axolotl keeps below fp32; rubric keeps them in fp32. */
static const char *const low_bit_optimizers[] = {
    "adamw_torch_4bit", "adamw_bnb_8bit", "adamw_8bit", "paged_adamw_8bit", NULL};

/* Table rows, by kind. `expect` is the "expected ..." text; NULL derives it from the range. */
#define STR(n, f, fl, ex) {.name = n, .kind = K_STR, .off = OFF(f), .flags = fl, .expect = ex}
#define CHOICE(n, f, fl, ch) {.name = n, .kind = K_STR, .off = OFF(f), .flags = fl, .choices = ch}
#define BOOL(n, f) {.name = n, .kind = K_BOOL, .off = OFF(f)}
#define BOOL_INFO(n, f, in) {.name = n, .kind = K_BOOL, .off = OFF(f), .info = in}
#define INT(n, f, l, h) {.name = n, .kind = K_INT, .off = OFF(f), .lo = l, .hi = h}
#define I64(n, f, l, h, ex) \
    {.name = n, .kind = K_INT64, .off = OFF(f), .lo = l, .hi = h, .expect = ex}
#define DBL(n, f, l, h, fl, ex) \
    {.name = n, .kind = K_DOUBLE, .off = OFF(f), .lo = l, .hi = h, .flags = fl, .expect = ex}
#define CUSTOM(n, ex, s, e) {.name = n, .kind = K_CUSTOM, .expect = ex, .set = s, .emit = e}
#define CUSTOM_NO_EMIT(n, ex, s) \
    {.name = n, .kind = K_CUSTOM, .flags = F_NO_EMIT, .expect = ex, .set = s}
#define IGNORED(n, in) {.name = n, .kind = K_IGNORED, .flags = F_NO_EMIT, .info = in}
#define WANDB_INFO "rubric does not report to Weights & Biases; metrics go to its log"
#define HUB_INFO "rubric never uploads; the trained adapter is written under output_dir"
#define DATASETS_EXPECT "a list of {path, type: alpaca, ds_type: json}"

static const key_def config_keys[] = {
    /* model */
    STR("base_model", base_model, 0, "a hub id (Org/Name) or a local folder"),
    STR("tokenizer_config", tokenizer_dir, F_NULLABLE, "a folder holding tokenizer.json"),
    {.name = "chat_template", .kind = K_CUSTOM, .off = OFF(chat_template), .flags = F_NULLABLE,
     .expect = "qwen3 or tokenizer_default (Qwen3's own template)", .set = set_chat_template},
    CUSTOM("prompt_format", "auto, chat_template or alpaca", set_prompt_format,
           emit_prompt_format),
    IGNORED("base_model_config", "rubric reads config.json from the base_model folder"),
    IGNORED("model_type", "rubric reads the architecture from the model's config.json"),
    IGNORED("tokenizer_type", "rubric reads tokenizer.json with its own tokenizer"),
    IGNORED("trust_remote_code", "rubric runs no remote code; it has its own Qwen3 model"),
    IGNORED("is_llama_derived_model", "rubric reads the architecture from config.json"),
    IGNORED("is_qwen_derived_model", "rubric reads the architecture from config.json"),

    /* data */
    CUSTOM("datasets", DATASETS_EXPECT, set_datasets, emit_datasets),
    CUSTOM("test_datasets", DATASETS_EXPECT, set_test_datasets, emit_test_datasets),
    STR("score_after_train", score_after_train, F_NULLABLE, "a JSONL path"),
    STR("dataset_prepared_path", dataset_prepared_path, 0, "a folder"),
    CUSTOM("val_set_size", "a fraction in [0, 1) or a whole row count >= 1", set_val_set_size,
           emit_val_set_size),
    BOOL("train_on_inputs", train_on_inputs),
    BOOL("strict", strict),
    INT("score_min", score_min, 0, 9),
    INT("score_max", score_max, 0, 9),
    CUSTOM("special_tokens", "a mapping of pad_token, eos_token, bos_token", set_special_tokens,
           emit_special_tokens),
    IGNORED("shuffle_merged_datasets", "rubric shuffles with `seed` on the coordinator"),
    IGNORED("dataset_processes", "rubric prepares data on the coordinator (rank 0)"),
    IGNORED("dataset_num_proc", "rubric prepares data on the coordinator (rank 0)"),
    IGNORED("push_dataset_to_hub", HUB_INFO),

    /* sequence */
    INT("sequence_len", sequence_len, 16, 1 << 20),
    BOOL("sample_packing", sample_packing),
    IGNORED("pad_to_sequence_len", "rubric pads each micro-batch to its own length"),
    IGNORED("eval_sample_packing", "rubric evaluates unpacked rows, one prompt each"),
    IGNORED("group_by_length", "rubric orders rows by `seed` (packing fills sequences)"),

    /* adapter */
    CUSTOM("adapter", "lora, qlora or none", set_adapter, emit_adapter),
    BOOL("load_in_4bit", load_in_4bit),
    CUSTOM_NO_EMIT("load_in_8bit", "true or false", set_load_in_8bit),
    INT("lora_r", lora_r, 1, 4096),
    DBL("lora_alpha", lora_alpha, 0, BIG, F_LO_OPEN, "a number > 0"),
    DBL("lora_dropout", lora_dropout, 0, 1, F_HI_OPEN, "a number in [0, 1)"),
    CUSTOM("lora_target_modules",
           "a list of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj "
           "(or all-linear)",
           set_targets, emit_targets),
    CUSTOM_NO_EMIT("lora_target_linear", "true or false", set_target_linear),
    IGNORED("lora_fan_in_fan_out", "rubric stores LoRA weights in PEFT's layout"),
    IGNORED("lora_model_dir", "rubric starts adapters from zero; use resume_from_checkpoint"),

    /* optimisation */
    INT("micro_batch_size", micro_batch_size, 1, 1 << 16),
    INT("gradient_accumulation_steps", gradient_accumulation_steps, 1, 1 << 20),
    INT("num_epochs", num_epochs, 1, 1 << 20),
    I64("max_steps", max_steps, -1, BIG, "a positive integer (or -1: from num_epochs)"),
    CHOICE("optimizer", optimizer, 0, optimizer_choices),
    DBL("learning_rate", learning_rate, 0, 10, F_LO_OPEN, "a number > 0"),
    CUSTOM("lr_scheduler", "cosine, linear or constant", set_lr_scheduler, emit_lr_scheduler),
    DBL("warmup_ratio", warmup_ratio, 0, 1, F_HI_OPEN, "a number in [0, 1)"),
    I64("warmup_steps", warmup_steps, -1, BIG, "an integer >= 0 (or -1: from warmup_ratio)"),
    DBL("weight_decay", weight_decay, 0, 10, 0, "a number >= 0"),
    DBL("adam_beta1", adam_beta1, 0, 1, F_HI_OPEN, "a number in [0, 1)"),
    DBL("adam_beta2", adam_beta2, 0, 1, F_HI_OPEN, "a number in [0, 1)"),
    DBL("adam_epsilon", adam_epsilon, 0, 1, F_LO_OPEN, "a number in (0, 1]"),
    DBL("max_grad_norm", max_grad_norm, 0, BIG, 0, "a number >= 0 (0: no clipping)"),
    BOOL("gradient_checkpointing", gradient_checkpointing),
    IGNORED("gradient_checkpointing_kwargs", "rubric recomputes each block's activations itself"),
    {.name = "seed", .kind = K_U64, .off = OFF(seed)},

    /* precision and kernels */
    {.name = "bf16", .kind = K_CUSTOM, .expect = "auto, true or false", .set = set_bf16,
     .emit = emit_bf16,
     .info = "the CPU backend computes in fp32 whatever bf16 says; bf16 applies to CUDA"},
    {.name = "fp16", .kind = K_BOOL, .flags = F_NO_EMIT,
     .info = "rubric never trains in fp16 (no loss scaling): bf16 on CUDA, fp32 on the CPU"},
    BOOL_INFO("tf32", tf32,
              "on CUDA, TF32 tensor-core GEMMs when bf16 is false; the CPU backend computes in "
              "fp32"),
    BOOL_INFO("flash_attention", flash_attention,
              "no effect: rubric has its own attention kernels, which keep packed samples "
              "apart"),
    IGNORED("xformers_attention", "no effect: rubric has its own attention kernels"),
    IGNORED("sdp_attention", "no effect: rubric has its own attention kernels"),
    IGNORED("torch_compile", "no effect: rubric is compiled C and CUDA"),

    /* distribution */
    STR("deepspeed", deepspeed, F_NULLABLE, "a DeepSpeed JSON path"),
    INT("zero_stage", zero_stage, 0, 2),
    I64("reduce_bucket_size", reduce_bucket_size, 1, BIG, "a positive element count"),
    I64("allgather_bucket_size", allgather_bucket_size, 1, BIG, "a positive element count"),
    IGNORED("fsdp", "rubric shards with ZeRO (see deepspeed), not FSDP"),
    IGNORED("fsdp_config", "rubric shards with ZeRO (see deepspeed), not FSDP"),
    IGNORED("local_rank", "rubric takes ranks from MPI"),
    IGNORED("ddp_timeout", "rubric bounds its waits itself"),

    /* output, logging, checkpoints */
    STR("output_dir", output_dir, 0, "a folder"),
    INT("logging_steps", logging_steps, 1, 1 << 30),
    I64("eval_steps", eval_steps, 0, BIG,
        "a whole number of steps >= 0 (for a fraction of an epoch use evals_per_epoch)"),
    INT("evals_per_epoch", evals_per_epoch, 0, 1 << 20),
    I64("save_steps", save_steps, 0, BIG,
        "a whole number of steps >= 0 (for a fraction of an epoch use saves_per_epoch)"),
    INT("saves_per_epoch", saves_per_epoch, 0, 1 << 20),
    INT("save_total_limit", save_total_limit, 0, 1 << 20),
    STR("resume_from_checkpoint", resume_from_checkpoint, F_NULLABLE,
        "a checkpoint path or auto"),
    CUSTOM_NO_EMIT("auto_resume_from_checkpoints", "true or false", set_auto_resume),
    IGNORED("save_safetensors", "rubric always writes adapters as safetensors"),
    IGNORED("early_stopping_patience", "rubric trains for the configured steps"),
    IGNORED("eval_table_size", "rubric reports scoring metrics instead"),
    IGNORED("eval_max_new_tokens", "rubric decodes scores under a fixed grammar"),
    IGNORED("debug", "use --log-level debug"),
    IGNORED("hub_model_id", HUB_INFO),
    IGNORED("hub_strategy", HUB_INFO),
    IGNORED("wandb_project", WANDB_INFO),
    IGNORED("wandb_entity", WANDB_INFO),
    IGNORED("wandb_watch", WANDB_INFO),
    IGNORED("wandb_name", WANDB_INFO),
    IGNORED("wandb_run_id", WANDB_INFO),
    IGNORED("wandb_log_model", WANDB_INFO),
    IGNORED("wandb_mode", WANDB_INFO),

    /* scoring */
    DBL("gpu_hour_cost", gpu_hour_cost, 0, BIG, 0, "a number >= 0"),
    INT("score_batch_size", score_batch_size, 1, 1 << 20),
};

#define N_KEYS ((int)RB_ARRAY_LEN(config_keys))

static int key_index(const char *name)
{
    for (int i = 0; i < N_KEYS; i++)
        if (strcmp(config_keys[i].name, name) == 0)
            return i;
    return -1;
}

static void *field(rubric_config *cfg, const key_def *k) { return (char *)cfg + k->off; }

static const void *cfield(const rubric_config *cfg, const key_def *k)
{
    return (const char *)cfg + k->off;
}

/* ------------------------------------------------------------------------------------------ */
/* Defaults                                                                                   */

void config_defaults(rubric_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->prompt_format = PROMPT_AUTO;
    cfg->dataset_prepared_path = xstrdup("last_run_prepared");
    cfg->val_set_size = 0.0;
    cfg->score_min = 0;
    cfg->score_max = 5;

    cfg->sequence_len = 2048;
    cfg->sample_packing = 0;

    cfg->adapter = ADAPTER_LORA;
    cfg->lora_r = 8;
    cfg->lora_alpha = 16;
    cfg->lora_dropout = 0.0;
    cfg->lora_targets = LORA_Q | LORA_V;

    cfg->micro_batch_size = 1;
    cfg->gradient_accumulation_steps = 1;
    cfg->num_epochs = 1;
    cfg->max_steps = -1;
    cfg->optimizer = xstrdup("adamw_torch");
    cfg->learning_rate = 2e-4;
    cfg->lr_scheduler = SCHED_COSINE;
    cfg->warmup_ratio = 0.0;
    cfg->warmup_steps = -1;
    cfg->weight_decay = 0.0;
    cfg->adam_beta1 = 0.9;
    cfg->adam_beta2 = 0.999;
    cfg->adam_epsilon = 1e-8;
    cfg->max_grad_norm = 1.0;
    cfg->seed = 42;

    cfg->bf16 = xstrdup("auto");

    cfg->zero_stage = 2;
    cfg->reduce_bucket_size = 500000000;
    cfg->allgather_bucket_size = 500000000;

    cfg->output_dir = xstrdup("./outputs");
    cfg->logging_steps = 1;
    cfg->score_batch_size = 32;

    cfg->origin = xcalloc(1, sizeof *cfg->origin);
    cfg->origin->line = xcalloc(N_KEYS, sizeof(int));
    cfg->origin->col = xcalloc(N_KEYS, sizeof(int));
}

static void dataset_list_free(dataset_spec *list, int n)
{
    for (int i = 0; i < n; i++) {
        free(list[i].path);
        free(list[i].type);
        free(list[i].ds_type);
    }
    free(list);
}

void config_free(rubric_config *cfg)
{
    if (!cfg)
        return;
    char **strings[] = {
        &cfg->config_path, &cfg->yaml_text, &cfg->base_model, &cfg->base_model_dir,
        &cfg->tokenizer_dir, &cfg->chat_template, &cfg->score_after_train,
        &cfg->dataset_prepared_path, &cfg->optimizer, &cfg->bf16, &cfg->deepspeed,
        &cfg->output_dir, &cfg->resume_from_checkpoint, &cfg->deepspeed_path, &cfg->pad_token,
        &cfg->eos_token, &cfg->bos_token,
    };
    for (size_t i = 0; i < RB_ARRAY_LEN(strings); i++)
        free(*strings[i]);
    dataset_list_free(cfg->datasets, cfg->n_datasets);
    dataset_list_free(cfg->test_datasets, cfg->n_test_datasets);
    if (cfg->origin) {
        free(cfg->origin->line);
        free(cfg->origin->col);
        free(cfg->origin);
    }
    memset(cfg, 0, sizeof *cfg);
}

int config_key_line(const rubric_config *cfg, const char *key)
{
    int i = key_index(key);
    return i < 0 || !cfg->origin ? 0 : cfg->origin->line[i];
}

const char *config_key_name(int i) { return i >= 0 && i < N_KEYS ? config_keys[i].name : NULL; }

const char *config_source(const rubric_config *cfg)
{
    return cfg->config_path ? cfg->config_path : "<defaults>";
}

/* "config.yml:12:1" for a key's place, "--set" for an override, the file for a default. */
static char *key_place(const rubric_config *cfg, const char *key)
{
    return config_key_place(cfg, key);
}

char *config_key_place(const rubric_config *cfg, const char *key)
{
    int i = key_index(key);
    int line = i < 0 ? 0 : cfg->origin->line[i];
    if (line < 0)
        return xstrdup("--set");
    if (line == 0)
        return xstrdup(config_source(cfg));
    return xasprintf("%s:%d:%d", config_source(cfg), line, cfg->origin->col[i]);
}

/* ------------------------------------------------------------------------------------------ */
/* Reading scalars                                                                            */

static int node_line(const yaml_node_t *n) { return (int)n->start_mark.line + 1; }

static int node_col(const load_ctx *cx, const yaml_node_t *n)
{
    return (int)n->start_mark.column + 1 + cx->col_shift;
}

static const char *scalar_text(const yaml_node_t *n)
{
    return n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

static int is_null(const yaml_node_t *n)
{
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return 0;
    const char *s = scalar_text(n);
    return !*s || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") ||
           !strcmp(s, "NULL");
}

/* What the user wrote, for "got ...": the scalar quoted (shortened), or its kind. */
static void describe_node(const yaml_node_t *n, char *buf, size_t size)
{
    if (n->type == YAML_SEQUENCE_NODE) {
        snprintf(buf, size, "a list");
    } else if (n->type == YAML_MAPPING_NODE) {
        snprintf(buf, size, "a mapping");
    } else if (is_null(n)) {
        snprintf(buf, size, "nothing (null)");
    } else {
        const char *s = scalar_text(n);
        snprintf(buf, size, "\"%.60s%s\"", s, strlen(s) > 60 ? "..." : "");
    }
}

/* Record "file:line:col: key: expected <what>, got <node>" and return RB_EXIT_INPUT. */
static int expected(load_ctx *cx, const yaml_node_t *n, const char *key, const char *what)
{
    char got[96];
    describe_node(n, got, sizeof got);
    return err_set(RB_EXIT_INPUT, "%s:%d:%d: %s: expected %s, got %s", cx->file, node_line(n),
                   node_col(cx, n), key, what, got);
}

static int parse_bool_text(const char *s, int *out)
{
    static const char *const yes[] = {"true", "True", "TRUE", "yes", "Yes", "YES", "on", "On",
                                      "ON"};
    static const char *const no[] = {"false", "False", "FALSE", "no", "No", "NO", "off", "Off",
                                     "OFF"};
    for (size_t i = 0; i < RB_ARRAY_LEN(yes); i++) {
        if (!strcmp(s, yes[i]))
            return *out = 1, 1;
        if (!strcmp(s, no[i]))
            return *out = 0, 1;
    }
    return 0;
}

static int parse_double_text(const char *s, double *out)
{
    if (!*s || isspace((unsigned char)*s))
        return 0;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (*end || errno == ERANGE || !isfinite(v))
        return 0;
    *out = v;
    return 1;
}

/* A whole number: "16", "-1", or a float form with no fraction ("5e8", "1.0e3"). */
static int parse_int_text(const char *s, int64_t *out)
{
    if (!*s || isspace((unsigned char)*s))
        return 0;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (!*end && errno != ERANGE) {
        *out = v;
        return 1;
    }
    double d;
    if (!parse_double_text(s, &d) || d != floor(d) || fabs(d) > 9.0e18)
        return 0;
    *out = (int64_t)d;
    return 1;
}

static int get_bool(load_ctx *cx, const yaml_node_t *n, const char *key, int *out)
{
    const char *s = scalar_text(n);
    if (!s || !parse_bool_text(s, out))
        return expected(cx, n, key, "true or false");
    return 0;
}

static int get_string(load_ctx *cx, const yaml_node_t *n, const char *key, const char *what,
                      char **out)
{
    const char *s = scalar_text(n);
    if (!s || is_null(n))
        return expected(cx, n, key, what ? what : "a string");
    free(*out);
    *out = xstrdup(s);
    return 0;
}

/* "an integer from 1 to 4096", "an integer >= 0", ...: the range, unless it has no useful top */
static void int_expectation(const key_def *k, char *buf, size_t size)
{
    if (k->expect)
        snprintf(buf, size, "%s", k->expect);
    else if (k->lo == 1 && k->hi >= INT_MAX / 2)
        snprintf(buf, size, "a positive integer");
    else if (k->lo == 0 && k->hi >= INT_MAX / 2)
        snprintf(buf, size, "an integer >= 0");
    else
        snprintf(buf, size, "an integer from %.0f to %.0f", k->lo, k->hi);
}

static int get_int64(load_ctx *cx, const key_def *k, const yaml_node_t *n, int64_t *out)
{
    char what[160];
    int_expectation(k, what, sizeof what);
    const char *s = scalar_text(n);
    int64_t v;
    if (!s || !parse_int_text(s, &v) || (double)v < k->lo || (double)v > k->hi)
        return expected(cx, n, k->name, what);
    *out = v;
    return 0;
}

static int get_double(load_ctx *cx, const key_def *k, const yaml_node_t *n, double *out)
{
    char what[160];
    if (k->expect)
        snprintf(what, sizeof what, "%s", k->expect);
    else
        snprintf(what, sizeof what, "a number from %g to %g", k->lo, k->hi);
    const char *s = scalar_text(n);
    double v;
    if (!s || !parse_double_text(s, &v))
        return expected(cx, n, k->name, what);
    int low = (k->flags & F_LO_OPEN) ? v <= k->lo : v < k->lo;
    int high = (k->flags & F_HI_OPEN) ? v >= k->hi : v > k->hi;
    if (low || high)
        return expected(cx, n, k->name, what);
    *out = v;
    return 0;
}

/* A string that must be one of `choices`: "one of qwen3, chatml, tokenizer_default". */
static int get_choice(load_ctx *cx, const key_def *k, const yaml_node_t *n, char **out)
{
    char what[512] = "one of ";
    for (int i = 0; k->choices[i]; i++) {
        size_t len = strlen(what);
        snprintf(what + len, sizeof what - len, "%s%s", i ? ", " : "", k->choices[i]);
    }
    const char *s = scalar_text(n);
    if (s)
        for (int i = 0; k->choices[i]; i++)
            if (!strcmp(s, k->choices[i])) {
                free(*out);
                *out = xstrdup(s);
                return 0;
            }
    return expected(cx, n, k->name, what);
}

/* ------------------------------------------------------------------------------------------ */
/* Setters of the simple kinds                                                                */

static int set_simple(rubric_config *cfg, const key_def *k, load_ctx *cx, yaml_node_t *n)
{
    int64_t i64;
    int rc;
    switch (k->kind) {
    case K_STR:
        if (k->choices)
            return get_choice(cx, k, n, (char **)field(cfg, k));
        return get_string(cx, n, k->name, k->expect, (char **)field(cfg, k));
    case K_BOOL: {
        int v = 0;
        if ((rc = get_bool(cx, n, k->name, &v)))
            return rc;
        if (k->off)
            *(int *)field(cfg, k) = v;
        return 0;
    }
    case K_INT:
        if ((rc = get_int64(cx, k, n, &i64)))
            return rc;
        *(int *)field(cfg, k) = (int)i64;
        return 0;
    case K_INT64:
        if ((rc = get_int64(cx, k, n, &i64)))
            return rc;
        *(int64_t *)field(cfg, k) = i64;
        return 0;
    case K_U64: {
        const char *s = scalar_text(n);
        char *end;
        errno = 0;
        unsigned long long v = s && *s && *s != '-' ? strtoull(s, &end, 10) : 0;
        if (!s || !*s || *s == '-' || *end || errno == ERANGE)
            return expected(cx, n, k->name, "an integer >= 0");
        *(uint64_t *)field(cfg, k) = v;
        return 0;
    }
    case K_DOUBLE:
        return get_double(cx, k, n, (double *)field(cfg, k));
    case K_IGNORED:
        return 0;
    case K_CUSTOM:
        return k->set(cfg, k, cx, n);
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Custom setters                                                                             */

static int set_adapter(rubric_config *cfg, const key_def *k, load_ctx *cx, yaml_node_t *n)
{
    static const char *const names[] = {"lora", "qlora", "none"};
    const char *s = scalar_text(n);
    for (int i = 0; s && i < 3; i++)
        if (!strcmp(s, names[i])) {
            cfg->adapter = (enum adapter_kind)i;
            return 0;
        }
    return expected(cx, n, k->name, k->expect);
}

static int set_lr_scheduler(rubric_config *cfg, const key_def *k, load_ctx *cx, yaml_node_t *n)
{
    const char *s = scalar_text(n);
    if (s && !strcmp(s, "cosine"))
        cfg->lr_scheduler = SCHED_COSINE;
    else if (s && !strcmp(s, "linear"))
        cfg->lr_scheduler = SCHED_LINEAR;
    else if (s && (!strcmp(s, "constant") || !strcmp(s, "constant_with_warmup")))
        cfg->lr_scheduler = SCHED_CONSTANT;
    else
        return expected(cx, n, k->name, "cosine, linear or constant");
    return 0;
}

static int set_prompt_format(rubric_config *cfg, const key_def *k, load_ctx *cx, yaml_node_t *n)
{
    const char *s = scalar_text(n);
    if (s && !strcmp(s, "auto"))
        cfg->prompt_format = PROMPT_AUTO;
    else if (s && (!strcmp(s, "chat_template") || !strcmp(s, "qwen3")))
        cfg->prompt_format = PROMPT_CHATML_QWEN3;
    else if (s && !strcmp(s, "alpaca"))
        cfg->prompt_format = PROMPT_ALPACA;
    else
        return expected(cx, n, k->name, k->expect);
    return 0;
}

/* The Qwen3 template; tokenizer_default names the same one for a Qwen3 tokenizer. */
static int set_chat_template(rubric_config *cfg, const key_def *k, load_ctx *cx, yaml_node_t *n)
{
    const char *s = scalar_text(n);
    if (!s || (strcmp(s, "qwen3") && strcmp(s, "tokenizer_default")))
        return expected(cx, n, k->name, k->expect);
    free(cfg->chat_template);
    cfg->chat_template = xstrdup("qwen3");
    return 0;
}

static const char *const target_names[] = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                           "gate_proj", "up_proj", "down_proj"};

/* One module name into its bit; "all-linear" is every one. */
static int target_bit(const char *s, unsigned *bits)
{
    if (!strcmp(s, "all-linear") || !strcmp(s, "all_linear")) {
        *bits = LORA_ALL;
        return 1;
    }
    for (int i = 0; i < 7; i++)
        if (!strcmp(s, target_names[i])) {
            *bits = 1u << i;
            return 1;
        }
    return 0;
}

static int set_targets(rubric_config *cfg, const key_def *k, load_ctx *cx, yaml_node_t *n)
{
    unsigned bits = 0, bit;
    if (n->type == YAML_SCALAR_NODE) {
        if (!target_bit(scalar_text(n), &bit))
            return expected(cx, n, k->name, k->expect);
        cfg->lora_targets = bit;
        return 0;
    }
    if (n->type != YAML_SEQUENCE_NODE)
        return expected(cx, n, k->name, k->expect);
    for (yaml_node_item_t *it = n->data.sequence.items.start; it < n->data.sequence.items.top;
         it++) {
        yaml_node_t *item = yaml_document_get_node(cx->doc, *it);
        const char *s = scalar_text(item);
        if (!s || !target_bit(s, &bit))
            return expected(cx, item, k->name,
                            "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj or "
                            "all-linear (the linear layers of a Qwen3 block)");
        bits |= bit;
    }
    if (!bits)
        return expected(cx, n, k->name, "at least one module");
    cfg->lora_targets = bits;
    return 0;
}

static int set_target_linear(rubric_config *cfg, const key_def *k, load_ctx *cx, yaml_node_t *n)
{
    int on = 0, rc;
    if ((rc = get_bool(cx, n, k->name, &on)))
        return rc;
    if (on)
        cfg->lora_targets = LORA_ALL;
    return 0;
}

static int set_val_set_size(rubric_config *cfg, const key_def *k, load_ctx *cx, yaml_node_t *n)
{
    const char *s = scalar_text(n);
    double v;
    if (!s || !parse_double_text(s, &v) || v < 0 || (v >= 1 && v != floor(v)))
        return expected(cx, n, k->name, k->expect);
    cfg->val_set_size = v;
    return 0;
}

static int set_bf16(rubric_config *cfg, const key_def *k, load_ctx *cx, yaml_node_t *n)
{
    const char *s = scalar_text(n);
    int on = 0;
    if (s && !strcmp(s, "auto")) {
        free(cfg->bf16);
        cfg->bf16 = xstrdup("auto");
        return 0;
    }
    if (!s || !parse_bool_text(s, &on))
        return expected(cx, n, k->name, k->expect);
    free(cfg->bf16);
    cfg->bf16 = xstrdup(on ? "true" : "false");
    return 0;
}

static int set_load_in_8bit(rubric_config *cfg, const key_def *k, load_ctx *cx, yaml_node_t *n)
{
    int on = 0, rc;
    if ((rc = get_bool(cx, n, k->name, &on)))
        return rc;
    if (on)
        return err_set(RB_EXIT_INPUT,
                       "%s:%d:%d: load_in_8bit: 8-bit base weights are not supported; use "
                       "load_in_4bit: true with adapter: qlora (NF4), or adapter: lora",
                       cx->file, node_line(n), node_col(cx, n));
    return 0;
}

static int set_auto_resume(rubric_config *cfg, const key_def *k, load_ctx *cx, yaml_node_t *n)
{
    int on = 0, rc;
    if ((rc = get_bool(cx, n, k->name, &on)))
        return rc;
    if (on && !cfg->resume_from_checkpoint)
        cfg->resume_from_checkpoint = xstrdup("auto");
    return 0;
}

/* Each mapping key once: "duplicate key 'lora_r' (first at line 7)". */
static int check_duplicate(load_ctx *cx, yaml_node_pair_t *start, yaml_node_pair_t *pair,
                           const char *where)
{
    yaml_node_t *key = yaml_document_get_node(cx->doc, pair->key);
    for (yaml_node_pair_t *p = start; p < pair; p++) {
        yaml_node_t *other = yaml_document_get_node(cx->doc, p->key);
        if (other->type == YAML_SCALAR_NODE && key->type == YAML_SCALAR_NODE &&
            !strcmp(scalar_text(other), scalar_text(key)))
            return err_set(RB_EXIT_INPUT, "%s:%d:%d: %s%s: duplicate key (first at line %d)",
                           cx->file, node_line(key), node_col(cx, key), where,
                           scalar_text(key), node_line(other));
    }
    return 0;
}

/* Whether name is one of names (NULL-terminated). */
static int in_names(const char *name, const char *const *names)
{
    for (int i = 0; name && names[i]; i++)
        if (!strcmp(name, names[i]))
            return 1;
    return 0;
}

/* The edit distance of a and b (insertions, deletions, substitutions); 99 for long names. */
static int edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 60 || lb >= 64)
        return 99;
    int row[64];
    for (size_t j = 0; j <= lb; j++)
        row[j] = (int)j;
    for (size_t i = 1; i <= la; i++) {
        int diag = row[0];
        row[0] = (int)i;
        for (size_t j = 1; j <= lb; j++) {
            int up = row[j];
            int cost = a[i - 1] != b[j - 1];
            row[j] = RB_MIN(RB_MIN(row[j] + 1, row[j - 1] + 1), diag + cost);
            diag = up;
        }
    }
    return row[lb];
}

/* A close name among `names` (NULL-terminated) for "did you mean": edit distance at most 2. */
static const char *suggest_among(const char *name, const char *const *names)
{
    const char *best = NULL;
    int best_d = 3;
    for (int i = 0; name && names[i]; i++) {
        int d = edit_distance(name, names[i]);
        if (d < best_d) {
            best_d = d;
            best = names[i];
        }
    }
    return best;
}

/* A close known top-level key for "did you mean". */
static const char *suggest_key(const char *name)
{
    const char *best = NULL;
    int best_d = 3;
    for (int k = 0; k < N_KEYS; k++) {
        int d = edit_distance(name, config_keys[k].name);
        if (d < best_d) {
            best_d = d;
            best = config_keys[k].name;
        }
    }
    return best;
}

/* " (did you mean 'path'?)" into hint, or "" when no known name is close. */
static void nested_hint(const char *name, const char *const *names, char *hint, size_t size)
{
    const char *near = suggest_among(name, names);
    if (near)
        snprintf(hint, size, " (did you mean '%s'?)", near);
    else if (size)
        hint[0] = '\0';
}

/* An unknown key: a warning naming its place, or an error under strict. */
static int unknown_key(load_ctx *cx, const yaml_node_t *key, const char *where,
                       const char *hint)
{
    const char *name = scalar_text(key) ? scalar_text(key) : "?";
    if (cx->strict)
        return err_set(RB_EXIT_INPUT, "%s:%d:%d: unknown key '%s%s'%s (strict: remove it, or run "
                       "without --strict to ignore it with a warning)",
                       cx->file, node_line(key), node_col(cx, key), where, name, hint);
    log_warn("%s:%d:%d: unknown key '%s%s'%s; ignored (see docs/config.md)", cx->file,
             node_line(key), node_col(cx, key), where, name, hint);
    return 0;
}

/* The keys of a dataset entry: read, or accepted and ignored (Hub dataset options). */
static const char *const dataset_keys[] = {"path", "type", "ds_type", "data_files", "split",
                                           "name", "train_on_split", "shards", NULL};

/* One entry of `key` (datasets or test_datasets), the index-th; messages read "datasets[0].". */
static int parse_dataset(load_ctx *cx, const char *key, int index, yaml_node_t *n,
                         dataset_spec *ds)
{
    const char *what = "a mapping like {path: data/train.jsonl, type: alpaca}";
    char where[64];
    snprintf(where, sizeof where, "%s[%d].", key, index);
    if (n->type != YAML_MAPPING_NODE)
        return expected(cx, n, key, what);
    yaml_node_pair_t *start = n->data.mapping.pairs.start;
    for (yaml_node_pair_t *p = start; p < n->data.mapping.pairs.top; p++) {
        yaml_node_t *kn = yaml_document_get_node(cx->doc, p->key);
        yaml_node_t *vn = yaml_document_get_node(cx->doc, p->value);
        const char *name = scalar_text(kn);
        int rc = check_duplicate(cx, start, p, where);
        if (rc)
            return rc;
        char full[96];
        snprintf(full, sizeof full, "%s%s", where, name ? name : "?");
        if (name && !strcmp(name, "path")) {
            rc = get_string(cx, vn, full, "a JSONL file path", &ds->path);
            ds->path_line = cx->is_override ? -1 : node_line(vn);
            ds->path_col = cx->is_override ? 0 : node_col(cx, vn);
        } else if (name && !strcmp(name, "type")) {
            const char *s = scalar_text(vn);
            if (!s || strcmp(s, "alpaca"))
                return expected(cx, vn, full,
                                "alpaca (rows with instruction, input and output)");
            rc = get_string(cx, vn, full, NULL, &ds->type);
        } else if (name && !strcmp(name, "ds_type")) {
            const char *s = scalar_text(vn);
            if (!s || (strcmp(s, "json") && strcmp(s, "jsonl")))
                return expected(cx, vn, full, "json (JSON Lines)");
            rc = get_string(cx, vn, full, NULL, &ds->ds_type);
        } else if (!in_names(name, dataset_keys)) {
            char hint[96];
            nested_hint(name, dataset_keys, hint, sizeof hint);
            rc = unknown_key(cx, kn, where, hint);
        }
        if (rc)
            return rc;
    }
    if (!ds->path)
        return err_set(RB_EXIT_INPUT, "%s:%d:%d: %s: an entry has no path (write `- path: "
                       "data/train.jsonl` and `type: alpaca`)",
                       cx->file, node_line(n), node_col(cx, n), key);
    if (!ds->type)
        ds->type = xstrdup("alpaca");
    if (!ds->ds_type)
        ds->ds_type = xstrdup("json");
    return 0;
}

static int parse_dataset_list(load_ctx *cx, const char *key, yaml_node_t *n, dataset_spec **out,
                              int *count)
{
    if (n->type != YAML_SEQUENCE_NODE)
        return expected(cx, n, key, "a list of {path: FILE.jsonl, type: alpaca} entries");
    int len = (int)(n->data.sequence.items.top - n->data.sequence.items.start);
    dataset_spec *list = xcalloc(len ? len : 1, sizeof *list);
    for (int i = 0; i < len; i++) {
        yaml_node_t *item = yaml_document_get_node(cx->doc, n->data.sequence.items.start[i]);
        int rc = parse_dataset(cx, key, i, item, &list[i]);
        if (rc) {
            dataset_list_free(list, len);
            return rc;
        }
    }
    dataset_list_free(*out, *count);
    *out = list;
    *count = len;
    return 0;
}

static int set_datasets(rubric_config *cfg, const key_def *k, load_ctx *cx, yaml_node_t *n)
{
    return parse_dataset_list(cx, k->name, n, &cfg->datasets, &cfg->n_datasets);
}

static int set_test_datasets(rubric_config *cfg, const key_def *k, load_ctx *cx, yaml_node_t *n)
{
    return parse_dataset_list(cx, k->name, n, &cfg->test_datasets, &cfg->n_test_datasets);
}

static int set_special_tokens(rubric_config *cfg, const key_def *k, load_ctx *cx, yaml_node_t *n)
{
    if (n->type != YAML_MAPPING_NODE)
        return expected(cx, n, k->name, k->expect);
    yaml_node_pair_t *start = n->data.mapping.pairs.start;
    for (yaml_node_pair_t *p = start; p < n->data.mapping.pairs.top; p++) {
        yaml_node_t *kn = yaml_document_get_node(cx->doc, p->key);
        yaml_node_t *vn = yaml_document_get_node(cx->doc, p->value);
        const char *name = scalar_text(kn) ? scalar_text(kn) : "?";
        char full[96];
        snprintf(full, sizeof full, "special_tokens.%s", name);
        int rc = check_duplicate(cx, start, p, "special_tokens.");
        if (!rc && !strcmp(name, "pad_token"))
            rc = get_string(cx, vn, full, "a token string", &cfg->pad_token);
        else if (!rc && !strcmp(name, "eos_token"))
            rc = get_string(cx, vn, full, "a token string", &cfg->eos_token);
        else if (!rc && !strcmp(name, "bos_token"))
            rc = get_string(cx, vn, full, "a token string", &cfg->bos_token);
        else if (!rc && strcmp(name, "unk_token")) {
            static const char *const token_keys[] = {"pad_token", "eos_token", "bos_token",
                                                     "unk_token", NULL};
            char hint[96];
            nested_hint(name, token_keys, hint, sizeof hint);
            rc = unknown_key(cx, kn, "special_tokens.", hint);
        }
        if (rc)
            return rc;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Applying a document                                                                        */

static int apply_key(rubric_config *cfg, load_ctx *cx, int idx, yaml_node_t *kn, yaml_node_t *vn)
{
    const key_def *k = &config_keys[idx];

    /* `key:` with nothing: keep the default (or clear a string whose default is none) */
    if (is_null(vn)) {
        if (k->flags & F_NULLABLE) {
            char **s = (char **)field(cfg, k);
            free(*s);
            *s = NULL;
        }
        return 0;
    }
    int rc = set_simple(cfg, k, cx, vn);
    if (rc)
        return rc;

    /* a boolean read only for its info line (fp16): false needs no line */
    int on = 0;
    if (k->kind == K_BOOL && !k->off && parse_bool_text(scalar_text(vn), &on) && !on)
        return 0;
    cfg->origin->line[idx] = cx->is_override ? -1 : node_line(kn);
    cfg->origin->col[idx] = cx->is_override ? 0 : node_col(cx, kn);
    return 0;
}

/* The top-level mapping: `strict: true` in the file counts before any unknown key. */
static int apply_mapping(rubric_config *cfg, load_ctx *cx, yaml_node_t *root)
{
    yaml_node_pair_t *start = root->data.mapping.pairs.start;
    yaml_node_pair_t *top = root->data.mapping.pairs.top;
    for (yaml_node_pair_t *p = start; p < top; p++) {
        yaml_node_t *kn = yaml_document_get_node(cx->doc, p->key);
        yaml_node_t *vn = yaml_document_get_node(cx->doc, p->value);
        int on;
        if (scalar_text(kn) && !strcmp(scalar_text(kn), "strict") && scalar_text(vn) &&
            parse_bool_text(scalar_text(vn), &on) && on)
            cx->strict = 1;
    }
    for (yaml_node_pair_t *p = start; p < top; p++) {
        yaml_node_t *kn = yaml_document_get_node(cx->doc, p->key);
        yaml_node_t *vn = yaml_document_get_node(cx->doc, p->value);
        int rc = check_duplicate(cx, start, p, "");
        if (rc)
            return rc;
        const char *name = scalar_text(kn);
        if (!name)
            return expected(cx, kn, "key", "a plain key name");
        int idx = key_index(name);
        if (idx < 0) {
            const char *near = suggest_key(name);
            char hint[128] = "";
            if (near)
                snprintf(hint, sizeof hint, " (did you mean '%s'?)", near);
            rc = unknown_key(cx, kn, "", hint);
        } else {
            rc = apply_key(cfg, cx, idx, kn, vn);
        }
        if (rc)
            return rc;
    }
    return 0;
}

/* "label:line:col" of a parser mark; --set maps a later line to the end of its value. */
static void mark_place(const yaml_mark_t *m, int col_shift, size_t len, size_t *line,
                       size_t *col)
{
    *line = m->line + 1;
    *col = m->column + 1 + (size_t)col_shift;
    if (col_shift && *line > 1) { /* --set: the end of the one-line value */
        *line = 1;
        *col = (size_t)col_shift + len + 1;
    }
}

static int syntax_error(yaml_parser_t *parser, const char *label, size_t len, int col_shift)
{
    char context[256] = "";
    if (parser->context)
        snprintf(context, sizeof context, " %s started at %zu:%zu", parser->context,
                 parser->context_mark.line + 1,
                 parser->context_mark.column + 1 + (size_t)col_shift);
    size_t line, col;
    mark_place(&parser->problem_mark, col_shift, len, &line, &col);
    return err_set(RB_EXIT_INPUT, "%s:%zu:%zu: YAML syntax error: %s%s", label, line, col,
                   parser->problem ? parser->problem : "malformed YAML", context);
}

/* After the first document, the stream must end: a second document (after `---`) would
 * otherwise be dropped without a word. */
static int expect_stream_end(yaml_parser_t *parser, const char *label, size_t len,
                             int col_shift)
{
    yaml_event_t ev;
    if (!yaml_parser_parse(parser, &ev))
        return syntax_error(parser, label, len, col_shift);
    int rc = 0;
    if (ev.type == YAML_DOCUMENT_START_EVENT) {
        size_t line, col;
        mark_place(&ev.start_mark, col_shift, len, &line, &col);
        rc = err_set(RB_EXIT_INPUT, "%s:%zu:%zu: a second YAML document starts here; rubric "
                     "reads one document per config file (remove this `---` and merge the "
                     "keys into one mapping)", label, line, col);
    }
    yaml_event_delete(&ev);
    return rc;
}

/* Parse YAML text into a document (exactly one); a syntax error names its place. */
static int load_document(const char *label, const char *text, size_t len, int col_shift,
                         yaml_document_t *doc)
{
    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser))
        return err_set(RB_EXIT_RUNTIME, "%s: cannot start the YAML parser", label);
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    if (!yaml_parser_load(&parser, doc)) {
        int rc = syntax_error(&parser, label, len, col_shift);
        yaml_parser_delete(&parser);
        return rc;
    }

    /* an empty stream has no root and nothing after it */
    int rc = 0;
    if (yaml_document_get_root_node(doc))
        rc = expect_stream_end(&parser, label, len, col_shift);
    yaml_parser_delete(&parser);
    if (rc)
        yaml_document_delete(doc);
    return rc;
}

/* Parse cfg->yaml_text (len bytes) as the config named `label` and apply it over the
 * defaults already in cfg. */
static int config_parse_text(rubric_config *cfg, const char *label, size_t len, int strict)
{
    yaml_document_t doc;
    int rc = load_document(label, cfg->yaml_text, len, 0, &doc);
    if (rc)
        return rc;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    load_ctx cx = {.file = label, .doc = &doc, .strict = strict};
    if (!root || is_null(root))
        rc = err_set(RB_EXIT_INPUT, "%s:1:1: the config is empty; expected a mapping of keys "
                     "such as `base_model: Qwen/Qwen3-1.7B` (see docs/config.md)", label);
    else if (root->type != YAML_MAPPING_NODE)
        rc = expected(&cx, root, "config", "a mapping of keys (key: value lines)");
    else
        rc = apply_mapping(cfg, &cx, root);
    cfg->strict = cfg->strict || cx.strict;
    yaml_document_delete(&doc);
    return rc;
}

int config_load(rubric_config *cfg, const char *path, int strict)
{
    config_defaults(cfg);
    cfg->config_path = xstrdup(path);
    cfg->strict = strict;

    /* the file's text, kept for checkpoints */
    size_t len;
    int rc = read_file(path, &cfg->yaml_text, &len);
    if (rc) {
        char why[512];
        snprintf(why, sizeof why, "%s", err_msg());
        return err_set(RB_EXIT_INPUT, "%s (give the path of an Axolotl-style YAML config, e.g. "
                       "jobs/example_axolotl.yml)", why);
    }
    return config_parse_text(cfg, path, len, strict);
}

int config_load_text(rubric_config *cfg, const char *label, const char *text, int strict)
{
    config_defaults(cfg);
    cfg->strict = strict;
    cfg->yaml_text = xstrdup(text ? text : "");
    return config_parse_text(cfg, label, strlen(cfg->yaml_text), strict);
}

int config_set(rubric_config *cfg, const char *assignment)
{
    const char *eq = strchr(assignment, '=');
    if (!eq || eq == assignment)
        return err_set(RB_EXIT_INPUT, "--set '%s': expected key=value (e.g. --set lora_r=8)",
                       assignment);
    char *name = xasprintf("%.*s", (int)(eq - assignment), assignment);
    int idx = key_index(name);
    if (idx < 0) {
        const char *near = suggest_key(name);
        int rc = err_set(RB_EXIT_INPUT, "--set:1:1: unknown key '%s'%s%s%s (see docs/config.md)",
                         name, near ? " (did you mean '" : "", near ? near : "",
                         near ? "'?)" : "");
        free(name);
        return rc;
    }

    /* the value is YAML: a scalar, or a flow list like [q_proj, v_proj] */
    yaml_document_t doc;
    int shift = (int)(eq - assignment) + 1;
    int rc = load_document("--set", eq + 1, strlen(eq + 1), shift, &doc);
    if (rc) {
        free(name);
        return rc;
    }
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    load_ctx cx = {.file = "--set", .doc = &doc, .col_shift = shift, .is_override = 1,
                   .strict = 1};
    const key_def *k = &config_keys[idx];
    if (!root && (k->flags & F_NULLABLE)) {
        char **s = (char **)field(cfg, k); /* "deepspeed=": none */
        free(*s);
        *s = NULL;
        cfg->origin->line[idx] = -1;
    } else if (!root) {
        rc = err_set(RB_EXIT_INPUT, "--set:1:%d: %s: expected a value after '='", shift + 1,
                     name);
    } else {
        yaml_node_t key_node = *root;
        key_node.start_mark.column = 0;
        rc = apply_key(cfg, &cx, idx, &key_node, root);
        if (!rc)
            cfg->origin->line[idx] = -1;
    }
    yaml_document_delete(&doc);
    free(name);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* The DeepSpeed JSON                                                                         */

/* The path to read: absolute as is; relative, next to the config first, then from the cwd. */
static char *deepspeed_find(const rubric_config *cfg, char **looked)
{
    const char *p = cfg->deepspeed;
    if (p[0] == '/') {
        *looked = xstrdup(p);
        return path_exists(p) ? xstrdup(p) : NULL;
    }
    char *beside = NULL;
    if (cfg->config_path) {
        const char *slash = strrchr(cfg->config_path, '/');
        if (slash)
            beside = xasprintf("%.*s/%s", (int)(slash - cfg->config_path), cfg->config_path, p);
    }
    if (beside && path_exists(beside)) {
        *looked = beside;
        return xstrdup(beside);
    }
    *looked = beside ? xasprintf("%s and %s", beside, p) : xstrdup(p);
    free(beside);
    return path_exists(p) ? xstrdup(p) : NULL;
}

/* A bucket size: a number, or "auto" (keep the default). */
static int deepspeed_bucket(json_t *zero, const char *name, const char *place, const char *file,
                            int64_t *out)
{
    json_t *v = json_object_get(zero, name);
    if (!v || (json_is_string(v) && !strcmp(json_string_value(v), "auto")))
        return 0;
    double d = json_is_number(v) ? json_number_value(v) : -1;
    if (d < 1 || d != floor(d) || d > 9e18)
        return err_set(RB_EXIT_INPUT, "%s: deepspeed: %s: zero_optimization.%s: expected a "
                       "positive element count or \"auto\"", place, file, name);
    *out = (int64_t)d;
    return 0;
}

static int deepspeed_stage(json_t *zero, const char *place, const char *file, int *stage)
{
    json_t *v = json_object_get(zero, "stage");
    if (!v)
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 3)
        return err_set(RB_EXIT_INPUT, "%s: deepspeed: %s: zero_optimization.stage: expected 0, 1 "
                       "or 2", place, file);
    if (json_integer_value(v) == 3)
        return err_set(RB_EXIT_INPUT, "%s: deepspeed: %s: ZeRO stage 3 (sharded parameters) is "
                       "not supported; use stage 2 (e.g. deepspeed_configs/zero2.json): rubric "
                       "shards gradients and optimizer state, and LoRA weights are small",
                       place, file);
    *stage = (int)json_integer_value(v);
    return 0;
}

/* Offloading to the CPU or NVMe is not done: say so once. */
static void deepspeed_offload_info(json_t *zero, const char *file)
{
    const char *names[] = {"offload_optimizer", "offload_param"};
    for (int i = 0; i < 2; i++) {
        json_t *dev = json_object_get(json_object_get(zero, names[i]), "device");
        if (json_is_string(dev) && strcmp(json_string_value(dev), "none"))
            log_info("deepspeed: %s: zero_optimization.%s: not done; rubric keeps the optimizer "
                     "shard in each worker's memory", file, names[i]);
    }
}

static int config_read_deepspeed(rubric_config *cfg)
{
    if (!cfg->deepspeed)
        return 0;
    char *place = key_place(cfg, "deepspeed");
    char *looked = NULL;
    char *path = deepspeed_find(cfg, &looked);
    int rc = 0;
    if (!path) {
        log_warn("%s: deepspeed: %s not found (looked for %s); using ZeRO stage 2 with default "
                 "bucket sizes", place, cfg->deepspeed, looked);
        cfg->zero_stage = 2;
        goto done;
    }

    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (!root) {
        rc = err_set(RB_EXIT_INPUT, "%s:%d:%d: invalid JSON: %s (from deepspeed: at %s)", path,
                     jerr.line, jerr.column, jerr.text, place);
        goto done;
    }
    json_t *zero = json_object_get(root, "zero_optimization");
    int stage = 0;
    if (json_is_object(zero)) {
        rc = deepspeed_stage(zero, place, path, &stage);
        if (!rc)
            rc = deepspeed_bucket(zero, "reduce_bucket_size", place, path,
                                  &cfg->reduce_bucket_size);
        if (!rc)
            rc = deepspeed_bucket(zero, "allgather_bucket_size", place, path,
                                  &cfg->allgather_bucket_size);
        if (!rc)
            deepspeed_offload_info(zero, path);
    } else {
        log_info("deepspeed: %s has no zero_optimization: stage 0 (plain data parallel)", path);
    }
    if (!rc) {
        cfg->zero_stage = stage;
        free(cfg->deepspeed_path);
        cfg->deepspeed_path = xstrdup(path);
    }
    json_decref(root);
done:
    free(path);
    free(looked);
    free(place);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* Finalize: cross-key checks and info lines                                                  */

static int in_list(const char *s, const char *const *list)
{
    for (int i = 0; s && list[i]; i++)
        if (!strcmp(s, list[i]))
            return 1;
    return 0;
}

static int config_cross_checks(rubric_config *cfg)
{
    char *place = NULL;
    int rc = 0;
    if (cfg->adapter == ADAPTER_QLORA && !cfg->load_in_4bit) {
        log_info("adapter: qlora: the base weights are quantized to NF4 (load_in_4bit: true)");
        cfg->load_in_4bit = 1;
    } else if (cfg->adapter == ADAPTER_LORA && cfg->load_in_4bit) {
        place = key_place(cfg, "load_in_4bit");
        log_warn("%s: load_in_4bit: true with adapter: lora: training as qlora (NF4 base "
                 "weights); write adapter: qlora to silence this", place);
        cfg->adapter = ADAPTER_QLORA;
    } else if (cfg->adapter == ADAPTER_NONE && cfg->load_in_4bit) {
        place = key_place(cfg, "load_in_4bit");
        rc = err_set(RB_EXIT_INPUT, "%s: load_in_4bit: needs adapter: qlora (a 4-bit base is "
                     "not trained directly)", place);
    } else if (cfg->warmup_steps >= 0 && cfg->warmup_ratio > 0) {
        place = key_place(cfg, "warmup_steps");
        rc = err_set(RB_EXIT_INPUT, "%s: warmup_steps and warmup_ratio are both set; keep one",
                     place);
    } else if (cfg->evals_per_epoch > 0 && cfg->eval_steps > 0) {
        place = key_place(cfg, "evals_per_epoch");
        rc = err_set(RB_EXIT_INPUT, "%s: evals_per_epoch and eval_steps are both set; keep one",
                     place);
    } else if (cfg->saves_per_epoch > 0 && cfg->save_steps > 0) {
        place = key_place(cfg, "saves_per_epoch");
        rc = err_set(RB_EXIT_INPUT, "%s: saves_per_epoch and save_steps are both set; keep one",
                     place);
    } else if (cfg->score_min >= cfg->score_max) {
        /* the place of the bound that was set (a default has none to name) */
        int max_default = config_key_line(cfg, "score_max") == 0;
        place = key_place(cfg, max_default ? "score_min" : "score_max");
        rc = err_set(RB_EXIT_INPUT, "%s: score_max (%d%s) must be above score_min (%d)", place,
                     cfg->score_max, max_default ? ", the default" : "", cfg->score_min);
    }
    free(place);
    return rc;
}

/* The prompt format: chat_template qwen3 with alpaca rows renders through the chat template. */
static void config_pick_prompt_format(rubric_config *cfg)
{
    if (cfg->prompt_format != PROMPT_AUTO)
        return;
    if (!cfg->chat_template) {
        cfg->prompt_format = PROMPT_ALPACA;
        return;
    }
    cfg->prompt_format = PROMPT_CHATML_QWEN3;
    char *place = key_place(cfg, "chat_template");
    log_info("%s: chat_template: %s: alpaca rows are rendered through the Qwen3 chat template "
             "(system = instruction, user = input, assistant = output), as they will be served; "
             "Axolotl would train on the plain Alpaca text. Set prompt_format: alpaca for that",
             place, cfg->chat_template);
    free(place);
}

static void config_log_infos(const rubric_config *cfg)
{
    for (int i = 0; i < N_KEYS; i++) {
        const key_def *k = &config_keys[i];
        if (!k->info || !cfg->origin->line[i])
            continue;
        if (k->kind == K_BOOL && k->off && !*(const int *)cfield(cfg, k))
            continue;
        if (!strcmp(k->name, "bf16") && !strcmp(cfg->bf16, "false"))
            continue;
        char *place = key_place(cfg, k->name);
        log_info("%s: %s: %s", place, k->name, k->info);
        free(place);
    }
    if (in_list(cfg->optimizer, low_bit_optimizers)) {
        char *place = key_place(cfg, "optimizer");
        log_info("%s: optimizer: %s: the AdamW moments are kept in fp32 for now (low-bit moments "
                 "are not implemented); ZeRO shards them across the workers",
                 place, cfg->optimizer);
        free(place);
    }
}

int config_finalize(rubric_config *cfg)
{
    int rc = config_cross_checks(cfg);
    if (!rc)
        rc = config_read_deepspeed(cfg);
    if (rc)
        return rc;
    config_pick_prompt_format(cfg);
    config_log_infos(cfg);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* The dataset files (train, prep)                                                            */

/* "cfg.yml:12:11" for the i-th entry's path, "--set" for an override, the file when unknown. */
static char *dataset_place(const rubric_config *cfg, const dataset_spec *ds, const char *key)
{
    if (ds->path_line < 0)
        return xstrdup("--set");
    if (ds->path_line == 0)
        return key_place(cfg, key);
    return xasprintf("%s:%d:%d", config_source(cfg), ds->path_line, ds->path_col);
}

/* What is wrong with a dataset path (NULL: nothing), as the code reads it: from the cwd. */
static const char *dataset_path_problem(const char *path)
{
    switch (jsonl_path_check(path, 1)) {
    case JSONL_PATH_OK:
        return NULL;
    case JSONL_PATH_MISSING:
        return errno == ENOENT || errno == ENOTDIR ? "does not exist" : strerror(errno);
    case JSONL_PATH_DIR:
        return "is a directory, not a JSONL file";
    case JSONL_PATH_NOT_REGULAR:
        return "is not a regular file";
    default:
        return "cannot be read (permission denied)";
    }
}

/* Each entry of a dataset list (key: "datasets" or "test_datasets") names a readable regular
 * file; the first that does not is the error, at its path's place. */
static int check_dataset_list(const rubric_config *cfg, const dataset_spec *list, int n,
                              const char *key)
{
    for (int i = 0; i < n; i++) {
        const dataset_spec *ds = &list[i];
        const char *problem = dataset_path_problem(ds->path);
        if (!problem)
            continue;
        char *place = dataset_place(cfg, ds, key);
        char cwd[PATH_MAX], hint[PATH_MAX + 64] = "";
        if (ds->path[0] != '/' && getcwd(cwd, sizeof cwd))
            snprintf(hint, sizeof hint, " (relative paths are read from the working "
                     "directory, %s)", cwd);
        int rc = err_set(RB_EXIT_INPUT, "%s: %s[%d].path: %s %s%s", place, key, i, ds->path,
                         problem, hint);
        free(place);
        return rc;
    }
    return 0;
}

int config_check_datasets(const rubric_config *cfg)
{
    if (cfg->n_datasets < 1) {
        char *place = key_place(cfg, "datasets");
        int rc = err_set(RB_EXIT_INPUT, "%s: datasets: no dataset given; add at least one "
                         "entry, e.g. `datasets:` then `  - path: data/train.jsonl` and "
                         "`    type: alpaca`", place);
        free(place);
        return rc;
    }
    return check_dataset_list(cfg, cfg->datasets, cfg->n_datasets, "datasets");
}

int config_check_score_files(const rubric_config *cfg)
{
    int rc = check_dataset_list(cfg, cfg->test_datasets, cfg->n_test_datasets, "test_datasets");
    if (rc)
        return rc;
    const char *problem = cfg->score_after_train ? dataset_path_problem(cfg->score_after_train)
                                                 : NULL;
    if (problem) {
        char *place = key_place(cfg, "score_after_train");
        int rc = err_set(RB_EXIT_INPUT, "%s: score_after_train: %s %s", place,
                         cfg->score_after_train, problem);
        free(place);
        return rc;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* output_dir (train)                                                                         */

int config_check_output_dir(const rubric_config *cfg)
{
    const char *dir = cfg->output_dir;
    char *problem = !dir || !dir[0] ? xstrdup("is empty") : dir_output_problem(dir);
    if (!problem)
        return 0;
    char *place = key_place(cfg, "output_dir");
    int rc = err_set(RB_EXIT_INPUT, "%s: output_dir: %s; checkpoints and logs go there: give a "
                     "folder this user can write to (e.g. --set output_dir=outputs/run)", place,
                     problem);
    free(place);
    free(problem);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* base_model: a local folder or a hub id in the Hugging Face cache                           */

/* The hub cache folder: HF_HUB_CACHE, $HF_HOME/hub, else ~/.cache/huggingface/hub. */
static char *hf_cache_dir(void)
{
    const char *v = getenv("HF_HUB_CACHE");
    if (v && *v)
        return xstrdup(v);
    v = getenv("HF_HOME");
    if (v && *v)
        return xasprintf("%s/hub", v);
    v = getenv("XDG_CACHE_HOME");
    if (v && *v)
        return xasprintf("%s/huggingface/hub", v);
    v = getenv("HOME");
    return xasprintf("%s/.cache/huggingface/hub", v && *v ? v : ".");
}

/* "Org/Name": one slash, no leading '.', '/' or '~', no spaces. */
static int looks_like_hub_id(const char *s)
{
    const char *slash = strchr(s, '/');
    if (!slash || slash == s || strchr(slash + 1, '/') || !slash[1])
        return 0;
    return s[0] != '.' && s[0] != '~' && !strchr(s, ' ');
}

/* The single folder under <repo>/snapshots, or NULL when there are none or several. */
static char *hf_only_snapshot(const char *repo)
{
    char *dir = xasprintf("%s/snapshots", repo);
    DIR *d = opendir(dir);
    char *found = NULL;
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));) {
        if (e->d_name[0] == '.')
            continue;
        n++;
        free(found);
        found = xasprintf("%s/%s", dir, e->d_name);
    }
    if (d)
        closedir(d);
    free(dir);
    if (n != 1 || !path_is_dir(found)) {
        free(found);
        return NULL;
    }
    return found;
}

/* models--Org--Name/snapshots/<refs/main>; NULL when not cached. */
static char *hf_snapshot(const char *cache, const char *id)
{
    /* the id's slash becomes "--" */
    const char *slash = strchr(id, '/');
    char *repo = xasprintf("%s/models--%.*s--%s", cache, (int)(slash - id), id, slash + 1);

    /* the revision refs/main names */
    char *ref_path = xasprintf("%s/refs/main", repo);
    char *rev = NULL, *snap = NULL;
    if (read_file(ref_path, &rev, NULL) == 0) {
        rev[strcspn(rev, " \t\r\n")] = '\0';
        snap = xasprintf("%s/snapshots/%s", repo, rev);
        if (!path_is_dir(snap)) {
            free(snap);
            snap = NULL;
        }
    }
    err_clear();

    /* no refs/main (a download of a pinned revision): the only snapshot, if there is one */
    if (!snap)
        snap = hf_only_snapshot(repo);
    free(rev);
    free(ref_path);
    free(repo);
    return snap;
}

int config_resolve_model(rubric_config *cfg)
{
    char *place = key_place(cfg, "base_model");
    int rc = 0;
    free(cfg->base_model_dir);
    cfg->base_model_dir = NULL;
    if (!cfg->base_model) {
        rc = err_set(RB_EXIT_INPUT, "%s: base_model is not set (e.g. base_model: "
                     "Qwen/Qwen3-1.7B, or a local folder with config.json)", place);
        goto done;
    }

    /* a local folder */
    if (path_is_dir(cfg->base_model)) {
        /* absolute: checkpoints and exported adapters record it, read from other folders */
        char *abs = realpath(cfg->base_model, NULL);
        cfg->base_model_dir = abs ? abs : xstrdup(cfg->base_model);
    } else if (looks_like_hub_id(cfg->base_model)) {
        char *cache = hf_cache_dir();
        cfg->base_model_dir = hf_snapshot(cache, cfg->base_model);
        if (!cfg->base_model_dir)
            rc = err_set(RB_EXIT_INPUT, "%s: base_model: '%s' is not a local folder and not in "
                         "the Hugging Face cache (%s). rubric never downloads: fetch it with "
                         "`huggingface-cli download %s` (or set HF_HOME to the cache that has "
                         "it), or give a local folder",
                         place, cfg->base_model, cache, cfg->base_model);
        free(cache);
        char *weights = cfg->base_model_dir ? xasprintf("%s/config.json", cfg->base_model_dir)
                                            : NULL;
        if (weights && !path_exists(weights))
            rc = err_set(RB_EXIT_INPUT, "%s: base_model: the cached '%s' (%s) has no config.json: "
                         "an incomplete download; run `huggingface-cli download %s` again",
                         place, cfg->base_model, cfg->base_model_dir, cfg->base_model);
        free(weights);
    } else {
        rc = err_set(RB_EXIT_INPUT, "%s: base_model: folder '%s' does not exist", place,
                     cfg->base_model);
    }
    if (!rc && !cfg->tokenizer_dir)
        cfg->tokenizer_dir = xstrdup(cfg->base_model_dir);
done:
    free(place);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* Writing the resolved config (libyaml's emitter)                                            */

typedef struct {
    char *data;
    size_t len, cap;
} yaml_buffer;

static int buffer_write(void *data, unsigned char *text, size_t size)
{
    yaml_buffer *b = data;
    if (b->len + size + 1 > b->cap) {
        b->cap = (b->len + size + 1) * 2;
        b->data = xrealloc(b->data, b->cap);
    }
    memcpy(b->data + b->len, text, size);
    b->len += size;
    b->data[b->len] = '\0';
    return 1;
}

static int emit_scalar(yaml_emitter_t *em, const char *text, int plain_ok)
{
    yaml_event_t ev;
    yaml_scalar_style_t style = plain_ok ? YAML_ANY_SCALAR_STYLE : YAML_DOUBLE_QUOTED_SCALAR_STYLE;
    yaml_scalar_event_initialize(&ev, NULL, (yaml_char_t *)YAML_STR_TAG, (yaml_char_t *)text,
                                 (int)strlen(text), plain_ok, 1, style);
    return yaml_emitter_emit(em, &ev);
}

/* A string value: quoted when it would read back as something else (a number, true, null). */
static int emit_string(yaml_emitter_t *em, const char *s)
{
    if (!s)
        return emit_scalar(em, "null", 1);
    int b;
    double d;
    int ambiguous = !*s || parse_bool_text(s, &b) || parse_double_text(s, &d) ||
                    !strcmp(s, "null") || !strcmp(s, "~");
    return emit_scalar(em, s, !ambiguous);
}

static int emit_double(yaml_emitter_t *em, double v)
{
    char buf[64];
    snprintf(buf, sizeof buf, "%.15g", v);
    if (strtod(buf, NULL) != v)
        snprintf(buf, sizeof buf, "%.17g", v);
    /* "1.0e-08", not "1e-08": YAML 1.1 readers (PyYAML) need the dot to see a number */
    char *e = strpbrk(buf, "eE");
    if (!strchr(buf, '.') && e) {
        memmove(e + 2, e, strlen(e) + 1);
        memcpy(e, ".0", 2);
    } else if (!strpbrk(buf, ".n")) {
        strcat(buf, ".0");
    }
    return emit_scalar(em, buf, 1);
}

static int emit_int(yaml_emitter_t *em, long long v)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%lld", v);
    return emit_scalar(em, buf, 1);
}

static int emit_start(yaml_emitter_t *em, int mapping, int flow)
{
    yaml_event_t ev;
    if (mapping)
        yaml_mapping_start_event_initialize(&ev, NULL, NULL, 1,
                                            flow ? YAML_FLOW_MAPPING_STYLE
                                                 : YAML_BLOCK_MAPPING_STYLE);
    else
        yaml_sequence_start_event_initialize(&ev, NULL, NULL, 1,
                                             flow ? YAML_FLOW_SEQUENCE_STYLE
                                                  : YAML_BLOCK_SEQUENCE_STYLE);
    return yaml_emitter_emit(em, &ev);
}

static int emit_end(yaml_emitter_t *em, int mapping)
{
    yaml_event_t ev;
    if (mapping)
        yaml_mapping_end_event_initialize(&ev);
    else
        yaml_sequence_end_event_initialize(&ev);
    return yaml_emitter_emit(em, &ev);
}

static int emit_adapter(const rubric_config *cfg, const key_def *k, yaml_emitter_t *em)
{
    static const char *const names[] = {"lora", "qlora", "none"};
    return emit_string(em, names[cfg->adapter]);
}

static int emit_lr_scheduler(const rubric_config *cfg, const key_def *k, yaml_emitter_t *em)
{
    static const char *const names[] = {"cosine", "linear", "constant"};
    return emit_string(em, names[cfg->lr_scheduler]);
}

static int emit_prompt_format(const rubric_config *cfg, const key_def *k, yaml_emitter_t *em)
{
    static const char *const names[] = {"auto", "chat_template", "alpaca"};
    return emit_string(em, names[cfg->prompt_format]);
}

static int emit_targets(const rubric_config *cfg, const key_def *k, yaml_emitter_t *em)
{
    int ok = emit_start(em, 0, 1);
    for (int i = 0; ok && i < 7; i++)
        if (cfg->lora_targets & (1u << i))
            ok = emit_string(em, target_names[i]);
    return ok && emit_end(em, 0);
}

static int emit_dataset_list(yaml_emitter_t *em, const dataset_spec *list, int n)
{
    int ok = emit_start(em, 0, 0);
    for (int i = 0; ok && i < n; i++) {
        ok = emit_start(em, 1, 0) && emit_string(em, "path") && emit_string(em, list[i].path) &&
             emit_string(em, "type") && emit_string(em, list[i].type) &&
             emit_string(em, "ds_type") && emit_string(em, list[i].ds_type) && emit_end(em, 1);
    }
    return ok && emit_end(em, 0);
}

static int emit_datasets(const rubric_config *cfg, const key_def *k, yaml_emitter_t *em)
{
    return emit_dataset_list(em, cfg->datasets, cfg->n_datasets);
}

static int emit_test_datasets(const rubric_config *cfg, const key_def *k, yaml_emitter_t *em)
{
    return emit_dataset_list(em, cfg->test_datasets, cfg->n_test_datasets);
}

static int emit_val_set_size(const rubric_config *cfg, const key_def *k, yaml_emitter_t *em)
{
    if (cfg->val_set_size >= 1)
        return emit_int(em, (long long)cfg->val_set_size);
    return emit_double(em, cfg->val_set_size);
}

static int emit_bf16(const rubric_config *cfg, const key_def *k, yaml_emitter_t *em)
{
    return emit_scalar(em, cfg->bf16, 1);
}

static int emit_special_tokens(const rubric_config *cfg, const key_def *k, yaml_emitter_t *em)
{
    const char *names[] = {"pad_token", "eos_token", "bos_token"};
    const char *values[] = {cfg->pad_token, cfg->eos_token, cfg->bos_token};
    int ok = emit_start(em, 1, 0);
    for (int i = 0; ok && i < 3; i++)
        if (values[i])
            ok = emit_string(em, names[i]) && emit_string(em, values[i]);
    return ok && emit_end(em, 1);
}

static int emit_value(const rubric_config *cfg, const key_def *k, yaml_emitter_t *em)
{
    switch (k->kind) {
    case K_STR:
        return emit_string(em, *(char *const *)cfield(cfg, k));
    case K_BOOL:
        return emit_scalar(em, *(const int *)cfield(cfg, k) ? "true" : "false", 1);
    case K_INT:
        return emit_int(em, *(const int *)cfield(cfg, k));
    case K_INT64:
        return emit_int(em, (long long)*(const int64_t *)cfield(cfg, k));
    case K_U64: {
        char buf[32];
        snprintf(buf, sizeof buf, "%llu", (unsigned long long)*(const uint64_t *)cfield(cfg, k));
        return emit_scalar(em, buf, 1);
    }
    case K_DOUBLE:
        return emit_double(em, *(const double *)cfield(cfg, k));
    case K_CUSTOM:
        return k->emit ? k->emit(cfg, k, em) : emit_string(em, *(char *const *)cfield(cfg, k));
    case K_IGNORED:
        break;
    }
    return 1;
}

char *config_to_yaml(const rubric_config *cfg)
{
    yaml_emitter_t em;
    yaml_buffer buf = {0};
    yaml_event_t ev;
    yaml_emitter_initialize(&em);
    yaml_emitter_set_output(&em, buffer_write, &buf);
    yaml_emitter_set_width(&em, 100);
    yaml_emitter_set_unicode(&em, 1);

    yaml_stream_start_event_initialize(&ev, YAML_UTF8_ENCODING);
    int ok = yaml_emitter_emit(&em, &ev);
    yaml_document_start_event_initialize(&ev, NULL, NULL, NULL, 1);
    ok = ok && yaml_emitter_emit(&em, &ev) && emit_start(&em, 1, 0);
    for (int i = 0; ok && i < N_KEYS; i++) {
        const key_def *k = &config_keys[i];
        if (k->kind == K_IGNORED || (k->flags & F_NO_EMIT))
            continue;
        ok = emit_string(&em, k->name) && emit_value(cfg, k, &em);
    }
    ok = ok && emit_end(&em, 1);
    yaml_document_end_event_initialize(&ev, 1);
    ok = ok && yaml_emitter_emit(&em, &ev);
    yaml_stream_end_event_initialize(&ev);
    ok = ok && yaml_emitter_emit(&em, &ev);
    if (!ok)
        rb_die(RB_EXIT_RUNTIME, "config_to_yaml: the YAML emitter failed: %s",
               em.problem ? em.problem : "unknown problem");
    yaml_emitter_delete(&em);
    return buf.data ? buf.data : xstrdup("");
}
