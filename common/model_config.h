/*
 * model_config.h: a Hugging Face decoder's config.json (model_type qwen3, qwen2 or llama).
 *
 * qwen2 and llama differ from qwen3 only in the per-head q/k RMSNorm (qwen3 only) and the
 * q/k/v projection biases (qwen2; llama when attention_bias is true).
 */
#ifndef RUBRIC_MODEL_CONFIG_H
#define RUBRIC_MODEL_CONFIG_H

#include <stdint.h>

typedef struct {
    char model_type[32];       /* "qwen3", "qwen2", "llama" */
    int vocab_size;
    int hidden_size;
    int intermediate_size;
    int num_hidden_layers;
    int num_attention_heads;
    int num_key_value_heads;
    int head_dim;              /* qwen3 states it; others: hidden_size / num_attention_heads */
    double rope_theta;
    double rms_norm_eps;
    int max_position_embeddings;
    int tie_word_embeddings;
    int attention_bias;        /* q/k/v (and o for llama if set) have biases */
    int qk_norm;               /* per-head RMSNorm on q and k (qwen3) */
    int64_t bos_token_id;      /* -1 when absent */
    int64_t eos_token_id;
    char torch_dtype[16];      /* "bfloat16", "float16", "float32" */
    uint64_t hash;             /* xxHash of config.json's bytes: the model's identity */
} model_config;

/* Read <dir>/config.json. An unsupported model_type, a missing or inconsistent field is a
 * clear error naming the file and field (RB_EXIT_INPUT). */
int model_config_load(model_config *mc, const char *dir);
/* Write <dir>/config.json for mc (atomic). */
int model_config_save(const model_config *mc, const char *dir);

#endif
