/*
 * model_config.c: read and write a Hugging Face config.json for qwen3, qwen2 and llama.
 *
 * Absent fields take the defaults of transformers' Qwen3Config, Qwen2Config and LlamaConfig
 * (configuration_qwen3.py, configuration_qwen2.py, configuration_llama.py), so a config.json
 * means to rubric what it means to transformers.
 */
#include "model_config.h"

#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "util.h"

static const char *const mc_supported = "qwen3, qwen2, llama";

/* ---- defaults ---- */

int model_config_init(model_config *mc, const char *model_type)
{
    memset(mc, 0, sizeof *mc);
    int qwen3 = strcmp(model_type, "qwen3") == 0, qwen2 = strcmp(model_type, "qwen2") == 0;
    int llama = strcmp(model_type, "llama") == 0;
    if (!qwen3 && !qwen2 && !llama)
        return err_set(RB_EXIT_INPUT, "model_type '%s' is not supported (supported: %s)",
                       model_type, mc_supported);
    snprintf(mc->model_type, sizeof mc->model_type, "%s", model_type);

    /* the class defaults of transformers' configuration_<type>.py */
    mc->vocab_size = llama ? 32000 : 151936;
    mc->hidden_size = 4096;
    mc->intermediate_size = llama ? 11008 : 22016;
    mc->num_hidden_layers = 32;
    mc->num_attention_heads = 32;
    mc->num_key_value_heads = 32; /* llama: None -> num_attention_heads, same value here */
    mc->head_dim = qwen3 ? 128 : 4096 / 32;
    mc->rope_theta = 10000.0;
    mc->rms_norm_eps = 1e-6;
    mc->max_position_embeddings = llama ? 2048 : 32768;
    mc->tie_word_embeddings = 0;
    mc->attention_bias = qwen2; /* qwen2's q/k/v always carry a bias */
    mc->o_bias = 0;
    mc->qk_norm = qwen3;
    mc->bos_token_id = llama ? 1 : -1;
    mc->eos_token_id = llama ? 2 : -1;
    snprintf(mc->torch_dtype, sizeof mc->torch_dtype, "float32");
    return 0;
}

int model_config_check(const model_config *mc, const char *where)
{
    const struct {
        const char *name;
        int value;
    } sizes[] = {
        {"vocab_size", mc->vocab_size},
        {"hidden_size", mc->hidden_size},
        {"intermediate_size", mc->intermediate_size},
        {"num_hidden_layers", mc->num_hidden_layers},
        {"num_attention_heads", mc->num_attention_heads},
        {"num_key_value_heads", mc->num_key_value_heads},
        {"head_dim", mc->head_dim},
        {"max_position_embeddings", mc->max_position_embeddings},
    };
    for (size_t i = 0; i < RB_ARRAY_LEN(sizes); i++)
        if (sizes[i].value <= 0)
            return err_set(RB_EXIT_INPUT, "%s: field '%s' must be a positive integer (is %d)",
                           where, sizes[i].name, sizes[i].value);
    if (mc->num_attention_heads % mc->num_key_value_heads != 0)
        return err_set(RB_EXIT_INPUT, "%s: num_attention_heads (%d) must be a multiple of "
                       "num_key_value_heads (%d) for grouped-query attention", where,
                       mc->num_attention_heads, mc->num_key_value_heads);
    if (mc->head_dim % 2 != 0)
        return err_set(RB_EXIT_INPUT, "%s: head_dim (%d) must be even for rotary embeddings",
                       where, mc->head_dim);
    if (!(mc->rope_theta > 0) || !isfinite(mc->rope_theta))
        return err_set(RB_EXIT_INPUT, "%s: field 'rope_theta' must be a positive number", where);
    if (!(mc->rms_norm_eps > 0) || !isfinite(mc->rms_norm_eps))
        return err_set(RB_EXIT_INPUT, "%s: field 'rms_norm_eps' must be a positive number",
                       where);
    if ((int64_t)mc->num_attention_heads * mc->head_dim > INT_MAX / 4)
        return err_set(RB_EXIT_INPUT, "%s: num_attention_heads x head_dim is too large", where);
    return 0;
}

/* ---- reading fields ---- */

typedef struct {
    const char *path;
    json_t *root;
} mc_src;

/* Set *out from an integer field; absent or null leaves *out. */
static int mc_get_int(const mc_src *src, const char *key, int *out)
{
    json_t *v = json_object_get(src->root, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < INT_MIN ||
        json_integer_value(v) > INT_MAX)
        return err_set(RB_EXIT_INPUT, "%s: field '%s' must be an integer", src->path, key);
    *out = (int)json_integer_value(v);
    return 0;
}

static int mc_get_real(const mc_src *src, json_t *obj, const char *key, double *out)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_number(v))
        return err_set(RB_EXIT_INPUT, "%s: field '%s' must be a number", src->path, key);
    *out = json_number_value(v);
    return 0;
}

static int mc_get_bool(const mc_src *src, const char *key, int *out)
{
    json_t *v = json_object_get(src->root, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_boolean(v))
        return err_set(RB_EXIT_INPUT, "%s: field '%s' must be true or false", src->path, key);
    *out = json_is_true(v);
    return 0;
}

/* A token id field: an integer, a list of integers (the first is kept) or null (-1). */
static int mc_get_token_id(const mc_src *src, const char *key, int64_t *out)
{
    json_t *v = json_object_get(src->root, key);
    if (!v)
        return 0;
    if (json_is_array(v))
        v = json_array_size(v) ? json_array_get(v, 0) : json_null();
    if (json_is_null(v)) {
        *out = -1;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return err_set(RB_EXIT_INPUT, "%s: field '%s' must be a token id (a non-negative "
                       "integer, a list of them, or null)", src->path, key);
    *out = json_integer_value(v);
    return 0;
}

/* A feature rubric does not implement must be off: `key` absent, null or false. */
static int mc_require_off(const mc_src *src, const char *key, const char *what)
{
    int on = 0;
    int rc = mc_get_bool(src, key, &on);
    if (rc)
        return rc;
    if (on)
        return err_set(RB_EXIT_INPUT, "%s: field '%s' is true, but rubric does not support %s; "
                       "use a model without it", src->path, key, what);
    return 0;
}

/* The RoPE type of a rope_scaling / rope_parameters object: only "default" is plain RoPE. */
static int mc_rope_plain(json_t *obj)
{
    json_t *type = json_object_get(obj, "rope_type");
    if (!type)
        type = json_object_get(obj, "type");
    if (type && !json_is_null(type))
        return json_is_string(type) && strcmp(json_string_value(type), "default") == 0;
    /* no type: plain only when nothing but rope_theta is set */
    const char *k;
    json_t *v;
    json_object_foreach(obj, k, v) {
        if (strcmp(k, "rope_theta") != 0)
            return 0;
    }
    return 1;
}

/* rope_theta at the top level (transformers 4) or in rope_parameters (transformers 5); any
 * scaling is refused. */
static int mc_read_rope(const mc_src *src, model_config *mc)
{
    int rc = mc_get_real(src, src->root, "rope_theta", &mc->rope_theta);
    const char *keys[] = {"rope_scaling", "rope_parameters"};
    for (size_t i = 0; i < RB_ARRAY_LEN(keys) && !rc; i++) {
        json_t *obj = json_object_get(src->root, keys[i]);
        if (!obj || json_is_null(obj))
            continue;
        if (!json_is_object(obj) || !mc_rope_plain(obj)) {
            char *text = json_dumps(obj, JSON_COMPACT | JSON_ENCODE_ANY);
            rc = err_set(RB_EXIT_INPUT, "%s: field '%s' (%s) asks for scaled or per-layer "
                         "rotary embeddings, which rubric does not support (plain RoPE only); "
                         "use a model without %s", src->path, keys[i], text ? text : "?",
                         keys[i]);
            free(text);
            break;
        }
        rc = mc_get_real(src, obj, "rope_theta", &mc->rope_theta);
    }
    return rc;
}

static int mc_read_dtype(const mc_src *src, model_config *mc)
{
    json_t *v = json_object_get(src->root, "torch_dtype");
    if (!v || json_is_null(v))
        v = json_object_get(src->root, "dtype");
    if (!v || json_is_null(v))
        return 0;
    const char *ok[] = {"bfloat16", "float16", "float32"};
    for (size_t i = 0; i < RB_ARRAY_LEN(ok); i++)
        if (json_is_string(v) && strcmp(json_string_value(v), ok[i]) == 0) {
            snprintf(mc->torch_dtype, sizeof mc->torch_dtype, "%s", ok[i]);
            return 0;
        }
    return err_set(RB_EXIT_INPUT, "%s: field 'torch_dtype' must be \"bfloat16\", \"float16\" or "
                   "\"float32\"", src->path);
}

static int mc_read_activation(const mc_src *src)
{
    json_t *v = json_object_get(src->root, "hidden_act");
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_string(v) || strcmp(json_string_value(v), "silu") != 0)
        return err_set(RB_EXIT_INPUT, "%s: field 'hidden_act' must be \"silu\" (rubric "
                       "implements the SwiGLU MLP only)", src->path);
    return 0;
}

/* transformers 5's layer_types: every layer must use full attention. */
static int mc_read_layer_types(const mc_src *src)
{
    json_t *v = json_object_get(src->root, "layer_types");
    if (!v || json_is_null(v))
        return 0;
    size_t i;
    json_t *t;
    if (!json_is_array(v))
        return err_set(RB_EXIT_INPUT, "%s: field 'layer_types' must be a list", src->path);
    json_array_foreach(v, i, t) {
        if (!json_is_string(t) || strcmp(json_string_value(t), "full_attention") != 0)
            return err_set(RB_EXIT_INPUT, "%s: field 'layer_types' entry %zu is not "
                           "\"full_attention\"; rubric does not support sliding-window "
                           "attention", src->path, i);
    }
    return 0;
}

/* The sizes; head_dim and num_key_value_heads follow transformers' rules when absent. */
static int mc_read_sizes(const mc_src *src, model_config *mc)
{
    int qwen3 = strcmp(mc->model_type, "qwen3") == 0;
    int llama = strcmp(mc->model_type, "llama") == 0;
    int head_dim = 0;
    json_t *kv = json_object_get(src->root, "num_key_value_heads");
    int rc = mc_get_int(src, "vocab_size", &mc->vocab_size);
    if (!rc) rc = mc_get_int(src, "hidden_size", &mc->hidden_size);
    if (!rc) rc = mc_get_int(src, "intermediate_size", &mc->intermediate_size);
    if (!rc) rc = mc_get_int(src, "num_hidden_layers", &mc->num_hidden_layers);
    if (!rc) rc = mc_get_int(src, "num_attention_heads", &mc->num_attention_heads);
    if (!rc) rc = mc_get_int(src, "num_key_value_heads", &mc->num_key_value_heads);
    if (!rc) rc = mc_get_int(src, "max_position_embeddings", &mc->max_position_embeddings);
    if (!rc) rc = mc_get_int(src, "head_dim", &head_dim);
    if (rc)
        return rc;

    /* kv heads: None (llama: also absent) means as many as the attention heads */
    if ((kv && json_is_null(kv)) || (llama && !kv))
        mc->num_key_value_heads = mc->num_attention_heads;

    /* head_dim: stated, else 128 for qwen3, else hidden_size / heads (which must divide) */
    if (head_dim)
        mc->head_dim = head_dim;
    else if (!qwen3 && mc->num_attention_heads > 0) {
        if (mc->hidden_size % mc->num_attention_heads != 0)
            return err_set(RB_EXIT_INPUT, "%s: hidden_size (%d) must be a multiple of "
                           "num_attention_heads (%d) when head_dim is not given", src->path,
                           mc->hidden_size, mc->num_attention_heads);
        mc->head_dim = mc->hidden_size / mc->num_attention_heads;
    }
    if (llama && mc->num_attention_heads > 0 && mc->hidden_size % mc->num_attention_heads != 0)
        return err_set(RB_EXIT_INPUT, "%s: hidden_size (%d) must be a multiple of "
                       "num_attention_heads (%d) for llama", src->path, mc->hidden_size,
                       mc->num_attention_heads);
    return 0;
}

/* Biases, norms and the features rubric refuses. */
static int mc_read_features(const mc_src *src, model_config *mc)
{
    int qwen2 = strcmp(mc->model_type, "qwen2") == 0;
    int llama = strcmp(mc->model_type, "llama") == 0;
    int rc = mc_get_bool(src, "tie_word_embeddings", &mc->tie_word_embeddings);
    if (!rc && !qwen2) {
        rc = mc_get_bool(src, "attention_bias", &mc->attention_bias);
        mc->o_bias = mc->attention_bias;
    }
    if (!rc && !llama)
        rc = mc_require_off(src, "use_sliding_window", "sliding-window attention");
    if (!rc && llama)
        rc = mc_require_off(src, "mlp_bias", "MLP biases");
    if (!rc) rc = mc_read_layer_types(src);
    if (!rc) rc = mc_read_activation(src);
    if (!rc) rc = mc_get_real(src, src->root, "rms_norm_eps", &mc->rms_norm_eps);
    if (!rc) rc = mc_read_rope(src, mc);
    if (!rc) rc = mc_read_dtype(src, mc);
    if (!rc) rc = mc_get_token_id(src, "bos_token_id", &mc->bos_token_id);
    if (!rc) rc = mc_get_token_id(src, "eos_token_id", &mc->eos_token_id);
    return rc;
}

static int mc_parse(model_config *mc, const char *path, const char *text, size_t len)
{
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return err_set(RB_EXIT_INPUT, "%s:%d:%d: not valid JSON: %s", path, jerr.line,
                       jerr.column, jerr.text);
    mc_src src = {path, root};
    int rc = 0;
    json_t *type = json_object_get(root, "model_type");
    if (!json_is_object(root))
        rc = err_set(RB_EXIT_INPUT, "%s: not a JSON object", path);
    else if (!json_is_string(type))
        rc = err_set(RB_EXIT_INPUT, "%s: field 'model_type' is missing or not a string "
                     "(supported: %s)", path, mc_supported);
    else if ((rc = model_config_init(mc, json_string_value(type))))
        err_prefix(rc, "%s", path);
    if (!rc) rc = mc_read_sizes(&src, mc);
    if (!rc) rc = mc_read_features(&src, mc);
    if (!rc) rc = model_config_check(mc, path);
    json_decref(root);
    return rc;
}

int model_config_load(model_config *mc, const char *dir)
{
    char *path = xasprintf("%s/config.json", dir);
    char *text = NULL;
    size_t len = 0;
    int rc = read_file(path, &text, &len);
    if (rc)
        err_prefix(rc, "model folder %s", dir);
    else
        rc = mc_parse(mc, path, text, len);
    if (!rc)
        mc->hash = XXH64(text, len, 0);
    free(text);
    free(path);
    return rc;
}

/* ---- writing ---- */

static const char *mc_architecture(const char *model_type)
{
    if (strcmp(model_type, "qwen2") == 0)
        return "Qwen2ForCausalLM";
    if (strcmp(model_type, "llama") == 0)
        return "LlamaForCausalLM";
    return "Qwen3ForCausalLM";
}

static json_t *mc_token_json(int64_t id) { return id >= 0 ? json_integer(id) : json_null(); }

/* The fields every type shares. */
static json_t *mc_to_json(const model_config *mc)
{
    json_t *o = json_object();
    json_object_set_new(o, "architectures", json_pack("[s]", mc_architecture(mc->model_type)));
    json_object_set_new(o, "model_type", json_string(mc->model_type));
    json_object_set_new(o, "vocab_size", json_integer(mc->vocab_size));
    json_object_set_new(o, "hidden_size", json_integer(mc->hidden_size));
    json_object_set_new(o, "intermediate_size", json_integer(mc->intermediate_size));
    json_object_set_new(o, "num_hidden_layers", json_integer(mc->num_hidden_layers));
    json_object_set_new(o, "num_attention_heads", json_integer(mc->num_attention_heads));
    json_object_set_new(o, "num_key_value_heads", json_integer(mc->num_key_value_heads));
    json_object_set_new(o, "head_dim", json_integer(mc->head_dim));
    json_object_set_new(o, "hidden_act", json_string("silu"));
    json_object_set_new(o, "max_position_embeddings", json_integer(mc->max_position_embeddings));
    json_object_set_new(o, "initializer_range", json_real(0.02));
    json_object_set_new(o, "rms_norm_eps", json_real(mc->rms_norm_eps));
    json_object_set_new(o, "rope_theta", json_real(mc->rope_theta));
    json_object_set_new(o, "rope_scaling", json_null());
    json_object_set_new(o, "attention_dropout", json_real(0.0));
    json_object_set_new(o, "tie_word_embeddings", json_boolean(mc->tie_word_embeddings));
    json_object_set_new(o, "bos_token_id", mc_token_json(mc->bos_token_id));
    json_object_set_new(o, "eos_token_id", mc_token_json(mc->eos_token_id));
    json_object_set_new(o, "torch_dtype", json_string(mc->torch_dtype));
    json_object_set_new(o, "use_cache", json_true());

    /* the type's own fields */
    if (strcmp(mc->model_type, "qwen2") != 0)
        json_object_set_new(o, "attention_bias", json_boolean(mc->attention_bias));
    if (strcmp(mc->model_type, "llama") == 0) {
        json_object_set_new(o, "mlp_bias", json_false());
        json_object_set_new(o, "pretraining_tp", json_integer(1));
    } else {
        json_object_set_new(o, "use_sliding_window", json_false());
        json_object_set_new(o, "sliding_window", json_null());
        json_object_set_new(o, "max_window_layers", json_integer(mc->num_hidden_layers));
    }
    return o;
}

/* Shortest of 15 or 17 significant digits that still reads back as the same doubles. */
static size_t mc_real_precision(const model_config *mc)
{
    const double v[] = {mc->rms_norm_eps, mc->rope_theta};
    for (size_t i = 0; i < RB_ARRAY_LEN(v); i++) {
        char buf[64];
        snprintf(buf, sizeof buf, "%.15g", v[i]);
        if (strtod(buf, NULL) != v[i])
            return 17;
    }
    return 15;
}

int model_config_save(const model_config *mc, const char *dir)
{
    int rc = model_config_check(mc, "model config");
    if (rc)
        return rc;
    if (strcmp(mc->model_type, "qwen2") == 0 && (!mc->attention_bias || mc->o_bias))
        return err_set(RB_EXIT_INPUT, "qwen2 always has q/k/v biases and no o_proj bias");
    if (strcmp(mc->model_type, "qwen2") != 0 && mc->o_bias != mc->attention_bias)
        return err_set(RB_EXIT_INPUT, "%s: attention_bias covers q, k, v and o together",
                       mc->model_type);

    json_t *o = mc_to_json(mc);
    char *text = json_dumps(o, JSON_INDENT(2) | JSON_SORT_KEYS |
                                   JSON_REAL_PRECISION(mc_real_precision(mc)));
    json_decref(o);
    char *path = xasprintf("%s/config.json", dir);
    char *with_nl = xasprintf("%s\n", text);
    rc = write_file_atomic(path, with_nl, strlen(with_nl));
    free(with_nl);
    free(text);
    free(path);
    return rc;
}
