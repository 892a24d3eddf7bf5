/*
 * config.h: the resolved training/scoring configuration, read from Axolotl-style YAML.
 *
 * Every key, its default and its meaning are documented in docs/config.md (kept in step with
 * the key table in config.c). Strings are owned by the config and freed by config_free().
 */
#ifndef RUBRIC_CONFIG_H
#define RUBRIC_CONFIG_H

#include <stdint.h>

struct config_origin;

enum adapter_kind { ADAPTER_LORA = 0, ADAPTER_QLORA = 1, ADAPTER_NONE = 2 };
enum lr_sched_kind { SCHED_COSINE = 0, SCHED_LINEAR = 1, SCHED_CONSTANT = 2 };
enum prompt_format { PROMPT_AUTO = 0, PROMPT_CHATML_QWEN3 = 1, PROMPT_ALPACA = 2 };

/* LoRA target modules as a bit set. */
enum lora_target {
    LORA_Q = 1 << 0, LORA_K = 1 << 1, LORA_V = 1 << 2, LORA_O = 1 << 3,
    LORA_GATE = 1 << 4, LORA_UP = 1 << 5, LORA_DOWN = 1 << 6,
    LORA_ALL = 0x7f,
};

typedef struct {
    char *path;     /* JSONL file */
    char *type;     /* "alpaca" */
    char *ds_type;  /* "json" */
    int path_line;  /* where `path:`'s value is in the config (1-based); 0 unknown, -1 --set */
    int path_col;
} dataset_spec;

typedef struct {
    /* where it came from */
    char *config_path;     /* NULL when built from defaults only */
    char *yaml_text;       /* the file's text, stored in checkpoints */

    /* model */
    char *base_model;          /* as written: a directory or a hub id */
    char *base_model_dir;      /* resolved local directory (NULL until config_resolve_model) */
    char *tokenizer_dir;       /* tokenizer.json folder; default: base_model_dir */
    char *chat_template;       /* "qwen3" or NULL */
    enum prompt_format prompt_format;

    /* data */
    dataset_spec *datasets;
    int n_datasets;
    dataset_spec *test_datasets;
    int n_test_datasets;
    char *score_after_train;   /* JSONL to score after training, or NULL */
    char *dataset_prepared_path; /* default "last_run_prepared" */
    double val_set_size;       /* < 1: fraction; >= 1: row count */
    int train_on_inputs;
    int strict;
    int score_min, score_max;  /* allowed score range, default 0..5 */

    /* sequence */
    int sequence_len;
    int sample_packing;

    /* adapter */
    enum adapter_kind adapter;
    int load_in_4bit;
    int lora_r;
    double lora_alpha;
    double lora_dropout;
    unsigned lora_targets;     /* enum lora_target bits */

    /* optimisation */
    int micro_batch_size;
    int gradient_accumulation_steps;
    int num_epochs;
    int64_t max_steps;         /* -1: from epochs */
    char *optimizer;           /* "adamw_torch", "adamw_torch_4bit", ... */
    double learning_rate;
    enum lr_sched_kind lr_scheduler;
    double warmup_ratio;
    int64_t warmup_steps;      /* -1: from warmup_ratio */
    double weight_decay;
    double adam_beta1, adam_beta2, adam_epsilon;
    double max_grad_norm;      /* <= 0: no clipping */
    int gradient_checkpointing;
    uint64_t seed;

    /* precision and kernels (informational on the CPU backend) */
    char *bf16;                /* "auto", "true", "false" */
    int tf32;
    int flash_attention;

    /* distribution */
    char *deepspeed;           /* path of a DeepSpeed JSON, or NULL */
    int zero_stage;            /* 0, 1 or 2 (from the DeepSpeed JSON; default 2) */
    int64_t reduce_bucket_size;
    int64_t allgather_bucket_size;

    /* output, logging, checkpoints */
    char *output_dir;          /* default "./outputs" */
    int logging_steps;
    int64_t eval_steps;        /* 0: at the end of each epoch only */
    int64_t save_steps;        /* 0: at the end only */
    int save_total_limit;      /* 0: keep all */
    char *resume_from_checkpoint; /* path, "auto" or NULL */

    /* scoring */
    double gpu_hour_cost;      /* for the cost line of score benchmarks */
    int score_batch_size;

    /* added with config.c */
    char *deepspeed_path;      /* the DeepSpeed JSON actually read (resolved path), or NULL */
    int evals_per_epoch;       /* 0: unset (eval_steps decides) */
    int saves_per_epoch;       /* 0: unset (save_steps decides) */
    char *pad_token;           /* special_tokens.pad_token, or NULL: the tokenizer's */
    char *eos_token;           /* special_tokens.eos_token, or NULL */
    char *bos_token;           /* special_tokens.bos_token, or NULL */
    struct config_origin *origin; /* internal: where each key was set (config.c) */
} rubric_config;

/* Fill every field with its default. */
void config_defaults(rubric_config *cfg);

/*
 * Read a YAML file into cfg (defaults first). Unknown keys are a warning naming file:line, or an
 * error when `strict`. A wrong type or value is an error with file:line:column and what was
 * expected. Returns 0 or RB_EXIT_INPUT (message in err_msg()).
 */
int config_load(rubric_config *cfg, const char *path, int strict);

/* The same for YAML text held in memory (e.g. the config stored in a checkpoint); `label`
 * names it in messages. config_path stays NULL. */
int config_load_text(rubric_config *cfg, const char *label, const char *text, int strict);

/* Apply one "key=value" override (value parsed as YAML scalar or flow sequence). */
int config_set(rubric_config *cfg, const char *assignment);

/* Check cross-key consistency, read the DeepSpeed JSON, log the info lines about keys rubric
 * handles differently. Call after load and overrides. */
int config_finalize(rubric_config *cfg);

/*
 * For the commands that read the training data (train, prep), before they create anything:
 * `datasets` has at least one entry and each path (as written: relative to the working
 * directory) is an existing regular file. Errors name the config file and the line:column of
 * the entry's `path:` value (or of `datasets:`): "cfg.yml:12:11: datasets[0].path: ...".
 * Returns 0 or RB_EXIT_INPUT.
 */
int config_check_datasets(const rubric_config *cfg);
/* The files `rubric train` scores after training (test_datasets, score_after_train) exist and
 * are regular readable files, checked before training so a typo does not surface after it:
 * 0, or RB_EXIT_INPUT naming the file:line:column of the key. */
int config_check_score_files(const rubric_config *cfg);

/* train, before the model loads: output_dir is a folder (made when missing) in which a file can
 * be created. 0, or RB_EXIT_INPUT naming the file:line:column of the key and the reason. */
int config_check_output_dir(const rubric_config *cfg);

/* Resolve base_model to a local folder (a path, or a hub id in the Hugging Face cache). */
int config_resolve_model(rubric_config *cfg);

/* Write the resolved config as YAML (what --print-config prints). */
char *config_to_yaml(const rubric_config *cfg);

void config_free(rubric_config *cfg);

/* The line of the config file a key was set on, 0 when it has its default (or came from --set,
 * which is -1). For messages of later stages: "config.yml:12: sequence_len: ...". */
int config_key_line(const rubric_config *cfg, const char *key);

/* Where a key was set, for messages: "config.yml:12:1", "--set", or the config file when the
 * key has its default. Free with free(). */
char *config_key_place(const rubric_config *cfg, const char *key);

/* The i-th key rubric knows (the table docs/config.md documents); NULL past the end. */
const char *config_key_name(int i);

/* The path of the config file for messages ("<defaults>" when none). */
const char *config_source(const rubric_config *cfg);

#endif
