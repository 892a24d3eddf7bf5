/*
 * model_config.h: a Hugging Face decoder's config.json (model_type qwen3, qwen2 or llama).
 *
 * qwen2 and llama differ from qwen3 only in the per-head q/k RMSNorm (qwen3 only) and the
 * projection biases (attention_bias, o_bias below).
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
    int attention_bias;        /* q/k/v projections have biases (qwen2 always; qwen3 and llama
                                  when config.json's attention_bias is true) */
    int o_bias;                /* o_proj has a bias (qwen3 and llama with attention_bias;
                                  never qwen2) */
    int qk_norm;               /* per-head RMSNorm on q and k (qwen3) */
    int64_t bos_token_id;      /* -1 when absent */
    int64_t eos_token_id;
    char torch_dtype[16];      /* "bfloat16", "float16", "float32" */
    uint64_t hash;             /* xxHash of config.json's bytes: the model's identity */
} model_config;

/* Read <dir>/config.json. Fields absent from the file take transformers' defaults for the
 * model_type. An unsupported model_type or setting (rope_scaling other than the default,
 * sliding-window attention, mlp_bias, an activation other than silu), a missing or
 * inconsistent field is a clear error naming the file and field (RB_EXIT_INPUT). An
 * eos_token_id list keeps its first id. */
int model_config_load(model_config *mc, const char *dir);
/* Fill mc with transformers' defaults for model_type ("qwen3", "qwen2", "llama"); hash 0.
 * Returns RB_EXIT_INPUT (err_set) for another type. */
int model_config_init(model_config *mc, const char *model_type);
/* Check sizes are positive and consistent (heads % kv_heads, even head_dim...); `where` names
 * the source in the message. */
int model_config_check(const model_config *mc, const char *where);
/* Write <dir>/config.json for mc (atomic), loadable by transformers' AutoConfig. */
int model_config_save(const model_config *mc, const char *dir);

#endif
