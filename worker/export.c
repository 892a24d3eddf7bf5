/*
 * export.c: PEFT adapter folders and merged Hugging Face models out of rubric checkpoints
 * (layouts in export.h and docs/export.md).
 */
#include "export.h"

#include <cblas.h>
#include <dirent.h>
#include <hdf5.h>
#include <jansson.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "lora.h"
#include "model_config.h"
#include "nf4.h"
#include "scorer.h"
#include "util.h"

const char *const export_tokenizer_files[] = {
    "tokenizer.json",    "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "vocab.json",            "merges.txt",
    "tokenizer.model",   "chat_template.jinja",   "chat_template.json",
    NULL,
};

/* ---- reading the checkpoint's adapter ------------------------------------------------------ */

/* Parse a PEFT LoRA name into (layer, module, is_b); 0 when it is not one. */
static int export_parse_name(const char *name, int *layer, int *module, int *is_b)
{
    int l, end = 0;
    char parent[32], mod[32], ab;
    if (sscanf(name, "base_model.model.model.layers.%d.%31[a-z_].%31[a-z_].lora_%c.weight%n",
               &l, parent, mod, &ab, &end) != 4 || name[end] != '\0' || l < 0)
        return 0;
    for (int m = 0; m < LORA_MOD_COUNT; m++) {
        if (strcmp(mod, lora_module_name(m)) || strcmp(parent, lora_module_parent(m)))
            continue;
        if (ab != 'A' && ab != 'B')
            return 0;
        *layer = l;
        *module = m;
        *is_b = ab == 'B';
        char *canon = lora_param_name(l, m, *is_b);
        int same = strcmp(canon, name) == 0; /* rejects "layers.01" and the like */
        free(canon);
        return same;
    }
    return 0;
}

static int export_tensor_cmp(const void *x, const void *y)
{
    const export_tensor *a = x, *b = y;
    if (a->layer != b->layer)
        return a->layer < b->layer ? -1 : 1;
    if (a->module != b->module)
        return a->module < b->module ? -1 : 1;
    return a->is_b - b->is_b;
}

/* Read one /lora dataset (float32, 2-D) into t. */
static int export_read_dataset(hid_t lora, const char *path, const char *name, export_tensor *t)
{
    hid_t d = H5Dopen2(lora, name, H5P_DEFAULT);
    if (d < 0)
        return err_set(RB_EXIT_INPUT, "%s: cannot open /lora/%s", path, name);
    hid_t s = H5Dget_space(d);
    hsize_t dims[2] = {0, 0};
    int nd = H5Sget_simple_extent_ndims(s);
    if (nd == 2)
        H5Sget_simple_extent_dims(s, dims, NULL);
    H5Sclose(s);
    if (nd != 2 || dims[0] == 0 || dims[1] == 0) {
        H5Dclose(d);
        return err_set(RB_EXIT_INPUT, "%s: /lora/%s is not a non-empty 2-D tensor", path, name);
    }
    t->rows = (int64_t)dims[0];
    t->cols = (int64_t)dims[1];
    t->data = xmalloc(sizeof(float) * (size_t)(t->rows * t->cols));
    herr_t st = H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, t->data);
    H5Dclose(d);
    return st < 0 ? err_set(RB_EXIT_INPUT, "%s: cannot read /lora/%s", path, name) : 0;
}

/* Every /lora dataset, by name. */
static int export_read_lora(const char *path, export_adapter *a)
{
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0)
        return err_set(RB_EXIT_INPUT, "%s: cannot open as HDF5", path);
    hid_t g = H5Gopen2(f, "lora", H5P_DEFAULT);
    H5G_info_t info = {0};
    int rc = 0;
    if (g < 0 || H5Gget_info(g, &info) < 0)
        rc = err_set(RB_EXIT_INPUT, "%s: no /lora group (not a rubric checkpoint?)", path);
    else if (info.nlinks == 0)
        rc = err_set(RB_EXIT_INPUT, "%s: /lora holds no tensor (adapter none?)", path);
    if (!rc)
        a->tensors = xcalloc((size_t)info.nlinks, sizeof(export_tensor));
    for (hsize_t i = 0; !rc && i < info.nlinks; i++) {
        ssize_t len = H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, NULL, 0,
                                         H5P_DEFAULT);
        if (len <= 0) {
            rc = err_set(RB_EXIT_INPUT, "%s: cannot read the name of /lora entry %llu", path,
                         (unsigned long long)i);
            break;
        }
        export_tensor *t = &a->tensors[a->n_tensors++];
        t->name = xcalloc((size_t)len + 1, 1);
        H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, t->name, (size_t)len + 1,
                           H5P_DEFAULT);
        if (!export_parse_name(t->name, &t->layer, &t->module, &t->is_b))
            rc = err_set(RB_EXIT_INPUT, "%s: /lora/%s is not a PEFT LoRA name "
                         "(base_model.model.model.layers.N.<self_attn|mlp>.<x_proj>."
                         "lora_<A|B>.weight)", path, t->name);
        else
            rc = export_read_dataset(g, path, t->name, t);
    }
    if (g >= 0)
        H5Gclose(g);
    H5Fclose(f);
    return rc;
}

/* Every A has its B, r agrees with the config, A and B agree on the module's sizes. */
static int export_check_pairs(export_adapter *a)
{
    int r = a->cfg.lora_r;
    for (int i = 0; i < a->n_tensors; i++) {
        const export_tensor *t = &a->tensors[i];
        const export_tensor *o = export_adapter_find(a, t->layer, t->module, !t->is_b);
        if (!o)
            return err_set(RB_EXIT_INPUT, "%s: /lora/%s has no lora_%c partner", a->path,
                           t->name, t->is_b ? 'A' : 'B');
        int64_t rank = t->is_b ? t->cols : t->rows;
        if (rank != r)
            return err_set(RB_EXIT_INPUT, "%s: /lora/%s is [%lld, %lld] but the stored config "
                           "says lora_r %d", a->path, t->name, (long long)t->rows,
                           (long long)t->cols, r);
        a->targets |= lora_module_bit(t->module);
    }
    return 0;
}

int export_adapter_read(const char *ckpt_path, export_adapter *a)
{
    memset(a, 0, sizeof *a);
    config_defaults(&a->cfg);

    /* 1. the file (a training output folder: its newest complete checkpoint), and that it
     *    checks out (complete mark, every dataset's hash) */
    if (!path_exists(ckpt_path)) {
        a->path = xstrdup(ckpt_path);
        return err_set(RB_EXIT_INPUT, "--adapter %s: no such file (give a checkpoint-<step>.h5 "
                       "or the output_dir holding them)", ckpt_path);
    }
    int rc = 0;
    if (path_is_dir(ckpt_path)) {
        rc = ckpt_find_latest(ckpt_path, &a->path);
        if (rc)
            return rc;
        log_info("--adapter %s: using its newest complete checkpoint, %s", ckpt_path, a->path);
    } else {
        a->path = xstrdup(ckpt_path);
    }
    ckpt_path = a->path;
    rc = ckpt_verify(ckpt_path);

    /* 2. /state and the config the run was trained with */
    if (!rc)
        rc = ckpt_read_meta(ckpt_path, &a->meta);
    if (!rc) {
        config_free(&a->cfg);
        rc = scorer_adapter_config(ckpt_path, &a->cfg);
    }
    a->qlora = a->cfg.adapter == ADAPTER_QLORA || a->cfg.load_in_4bit;

    /* 3. the LoRA tensors, in model order */
    if (!rc)
        rc = export_read_lora(ckpt_path, a);
    if (!rc)
        qsort(a->tensors, (size_t)a->n_tensors, sizeof(export_tensor), export_tensor_cmp);
    if (!rc)
        rc = export_check_pairs(a);
    return rc;
}

void export_adapter_free(export_adapter *a)
{
    for (int i = 0; i < a->n_tensors; i++) {
        free(a->tensors[i].name);
        free(a->tensors[i].data);
    }
    free(a->tensors);
    ckpt_meta_free(&a->meta);
    config_free(&a->cfg);
    free(a->path);
    memset(a, 0, sizeof *a);
}

const export_tensor *export_adapter_find(const export_adapter *a, int layer, int module,
                                         int is_b)
{
    for (int i = 0; i < a->n_tensors; i++) {
        const export_tensor *t = &a->tensors[i];
        if (t->layer == layer && t->module == module && t->is_b == is_b)
            return t;
    }
    return NULL;
}

/* ---- output folders ------------------------------------------------------------------------ */

/* 0 when an existing out_dir may be written into: empty, a previous export of this kind, or
 * --force; else RB_EXIT_INPUT saying what to do. */
static int export_check_existing(const char *out_dir, const char *marker, int force)
{
    DIR *d = opendir(out_dir);
    if (!d)
        return err_set(RB_EXIT_INPUT, "--out %s: cannot list the folder", out_dir);
    int entries = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            entries++;
    closedir(d);
    char *m = marker ? xasprintf("%s/%s", out_dir, marker) : NULL;
    int ours = m && path_exists(m);
    free(m);
    if (entries == 0 || ours)
        return 0;
    if (force) {
        log_warn("--out %s is not empty%s%s; writing into it (--force)", out_dir,
                 marker ? " and holds no " : "", marker ? marker : "");
        return 0;
    }
    if (!marker)
        return err_set(RB_EXIT_INPUT, "--out %s is not empty (%d entr%s); choose a new or empty "
                       "folder, or pass --force to write into it (files of the same names are "
                       "replaced)", out_dir, entries, entries == 1 ? "y" : "ies");
    return err_set(RB_EXIT_INPUT, "--out %s is not empty and holds no previous export (no %s); "
                   "choose a new folder, or pass --force to write into it", out_dir, marker);
}

int export_prepare_dir(const char *out_dir, const char *marker, int force)
{
    if (path_exists(out_dir) && !path_is_dir(out_dir))
        return err_set(RB_EXIT_INPUT, "--out %s exists and is not a folder", out_dir);
    int rc = path_exists(out_dir) ? export_check_existing(out_dir, marker, force) : 0;
    if (rc)
        return rc;

    /* made when missing; a folder that takes no file is refused before any work */
    char *problem = dir_output_problem(out_dir);
    if (!problem)
        return 0;
    rc = err_set(RB_EXIT_INPUT, "--out %s; give a folder this user can write to", problem);
    free(problem);
    return rc;
}

/* Write a JSON value to path (2-space indent, newline at the end), atomically. */
static int export_write_json(const char *path, json_t *j, size_t flags)
{
    char *text = json_dumps(j, JSON_INDENT(2) | flags);
    if (!text)
        return err_set(RB_EXIT_RUNTIME, "%s: cannot serialise JSON", path);
    char *body = xasprintf("%s\n", text);
    int rc = write_file_atomic(path, body, strlen(body));
    free(body);
    free(text);
    return rc;
}

/* Copy src/name to dst/name when it exists; *copied += 1 then. */
static int export_copy_file(const char *src_dir, const char *dst_dir, const char *name,
                            int *copied)
{
    char *from = xasprintf("%s/%s", src_dir, name);
    char *to = xasprintf("%s/%s", dst_dir, name);
    char *data = NULL;
    size_t n = 0;
    int rc = 0;
    if (path_exists(from)) {
        rc = read_file(from, &data, &n);
        rc = rc ? rc : write_file_atomic(to, data, n);
        *copied += !rc;
    }
    free(data);
    free(from);
    free(to);
    return rc;
}

/* ---- the PEFT adapter folder --------------------------------------------------------------- */

/* A JSON number as Python would print it: an integer when the value is one. */
static json_t *export_json_number(double v)
{
    if (v == (double)(long long)v && v > -1e15 && v < 1e15)
        return json_integer((json_int_t)v);
    return json_real(v);
}

/* adapter_config.json as PEFT's LoraConfig.to_dict() writes it, restricted to the keys PEFT
 * has known since 0.10 (older PEFT rejects unknown keys; newer fills the missing ones with
 * their defaults, which are what rubric trains: no DoRA, no rsLoRA, no bias). */
static json_t *export_adapter_config(const export_adapter *a, const char *base_name)
{
    json_t *targets = json_array();
    for (int m = 0; m < LORA_MOD_COUNT; m++)
        if (a->targets & lora_module_bit(m))
            json_array_append_new(targets, json_string(lora_module_name(m)));
    json_t *c = json_object();
    json_object_set_new(c, "alpha_pattern", json_object());
    json_object_set_new(c, "auto_mapping", json_null());
    json_object_set_new(c, "base_model_name_or_path", base_name ? json_string(base_name)
                                                                : json_null());
    json_object_set_new(c, "bias", json_string("none"));
    json_object_set_new(c, "fan_in_fan_out", json_false());
    json_object_set_new(c, "inference_mode", json_true());
    json_object_set_new(c, "init_lora_weights", json_true());
    json_object_set_new(c, "layer_replication", json_null());
    json_object_set_new(c, "layers_pattern", json_null());
    json_object_set_new(c, "layers_to_transform", json_null());
    json_object_set_new(c, "loftq_config", json_object());
    json_object_set_new(c, "lora_alpha", export_json_number(a->cfg.lora_alpha));
    json_object_set_new(c, "lora_dropout", json_real(a->cfg.lora_dropout));
    json_object_set_new(c, "megatron_config", json_null());
    json_object_set_new(c, "megatron_core", json_string("megatron.core"));
    json_object_set_new(c, "modules_to_save", json_null());
    json_object_set_new(c, "peft_type", json_string("LORA"));
    json_object_set_new(c, "r", json_integer(a->cfg.lora_r));
    json_object_set_new(c, "rank_pattern", json_object());
    json_object_set_new(c, "revision", json_null());
    json_object_set_new(c, "target_modules", targets);
    json_object_set_new(c, "task_type", json_string("CAUSAL_LM"));
    json_object_set_new(c, "use_dora", json_false());
    json_object_set_new(c, "use_rslora", json_false());
    return c;
}

/* base_model_name_or_path: a relative local folder that exists (from the checkpoint's folder,
 * else from the current one) becomes absolute, so the export loads from anywhere; a hub id
 * or a folder found nowhere stays as stored. Returns a new string (or NULL). */
static char *export_base_name(const export_adapter *a)
{
    const char *stored = a->cfg.base_model ? a->cfg.base_model : a->meta.base_model;
    if (!stored || stored[0] == '/')
        return stored ? xstrdup(stored) : NULL;
    char resolved[PATH_MAX];
    const char *slash = a->path ? strrchr(a->path, '/') : NULL;
    if (slash) {
        char *near = xasprintf("%.*s/%s", (int)(slash - a->path), a->path, stored);
        int ok = path_is_dir(near) && realpath(near, resolved);
        free(near);
        if (ok)
            return xstrdup(resolved);
    }
    if (path_is_dir(stored) && realpath(stored, resolved))
        return xstrdup(resolved);
    return xstrdup(stored);
}

int export_adapter_write(const export_adapter *a, const char *out_dir,
                         const char *base_model_name)
{
    /* 1. the tensors, F32, PEFT's saved names */
    st_write_tensor *w = xcalloc((size_t)a->n_tensors, sizeof *w);
    for (int i = 0; i < a->n_tensors; i++) {
        const export_tensor *t = &a->tensors[i];
        w[i] = (st_write_tensor){.name = t->name, .dtype = ST_F32, .ndim = 2,
                                 .shape = {t->rows, t->cols}, .data = t->data};
    }
    const char *meta[] = {"format", "pt", NULL};
    char *path = xasprintf("%s/adapter_model.safetensors", out_dir);
    int rc = safetensors_write(path, w, a->n_tensors, meta);
    free(path);
    free(w);

    /* 2. adapter_config.json last: a folder with a config has its weights */
    if (!rc) {
        char *base = base_model_name ? xstrdup(base_model_name) : export_base_name(a);
        json_t *c = export_adapter_config(a, base);
        free(base);
        path = xasprintf("%s/adapter_config.json", out_dir);
        rc = export_write_json(path, c, JSON_SORT_KEYS);
        free(path);
        json_decref(c);
    }
    return rc;
}

/* ---- merging ------------------------------------------------------------------------------- */

void export_merge_delta(float *w, const float *b, const float *a, int64_t out, int64_t in,
                        int64_t r, float scale)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)out, (blasint)in,
                (blasint)r, scale, b, (blasint)r, a, (blasint)in, 1.0f, w, (blasint)in);
}

/* The (layer, module) of a decoder linear weight name ("model.layers.3.mlp.up_proj.weight");
 * 0 when it is not one. */
static int export_linear_of(const char *name, int *layer, int *module)
{
    int l, end = 0;
    char parent[32], mod[32];
    if (sscanf(name, "model.layers.%d.%31[a-z_].%31[a-z_].weight%n", &l, parent, mod,
               &end) != 3 || name[end] != '\0')
        return 0;
    for (int m = 0; m < LORA_MOD_COUNT; m++)
        if (!strcmp(mod, lora_module_name(m)) && !strcmp(parent, lora_module_parent(m))) {
            *layer = l;
            *module = m;
            return 1;
        }
    return 0;
}

/* fp32 values converted to the output dtype (a new buffer). */
static void *export_convert(const float *x, int64_t n, st_dtype dtype)
{
    if (dtype == ST_F32) {
        float *out = xmalloc(sizeof(float) * (size_t)n);
        memcpy(out, x, sizeof(float) * (size_t)n);
        return out;
    }
    uint16_t *out = xmalloc(sizeof(uint16_t) * (size_t)n);
    for (int64_t i = 0; i < n; i++)
        out[i] = dtype == ST_BF16 ? f32_to_bf16(x[i]) : f32_to_f16(x[i]);
    return out;
}

/* What merging did, for the summary line and the checks. */
typedef struct {
    int merged;       /* linears with W + scale * B @ A */
    int nf4;          /* linears put through the NF4 round trip */
    int converted;    /* other float tensors converted */
    int copied_raw;   /* non-float tensors copied as they are */
    int dropped_head; /* lm_head.weight left out (tied) */
    uint64_t bytes;
} export_merge_stats;

/* One base tensor into its output form: *w gets name, dtype, shape and a new buffer. */
static int export_merge_tensor(const export_adapter *a, const model_config *mc,
                               const safetensors_set *st, const st_tensor *t, st_dtype dtype,
                               st_write_tensor *w, export_merge_stats *s)
{
    int64_t n = st_tensor_numel(t);
    w->name = t->name;
    w->ndim = t->ndim;
    memcpy(w->shape, t->shape, sizeof w->shape);
    if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16 && t->dtype != ST_F64) {
        void *raw = xmalloc((size_t)(t->end - t->begin) + 1);
        memcpy(raw, safetensors_data(st, t), (size_t)(t->end - t->begin));
        w->dtype = t->dtype;
        w->data = raw;
        s->copied_raw++;
        s->bytes += t->end - t->begin;
        return 0;
    }

    /* 1. fp32 values of the base tensor */
    float *x = xmalloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    int rc = safetensors_read_f32(st, t->name, 0, NULL, x);
    int layer, mod, linear = !rc && export_linear_of(t->name, &layer, &mod) && t->ndim == 2;
    if (linear && layer >= mc->num_hidden_layers)
        linear = 0;

    /* 2. QLoRA: the NF4 round trip training saw (every decoder linear, as model_load) */
    if (linear && a->qlora) {
        nf4_tensor q;
        rc = nf4_quantize(x, n, 1, &q);
        if (!rc) {
            nf4_dequantize(&q, 0, n, x);
            nf4_free(&q);
            s->nf4++;
        }
    }

    /* 3. W + (alpha / r) * B @ A */
    const export_tensor *la = linear ? export_adapter_find(a, layer, mod, 0) : NULL;
    const export_tensor *lb = linear ? export_adapter_find(a, layer, mod, 1) : NULL;
    if (!rc && la && lb) {
        if (la->cols != t->shape[1] || lb->rows != t->shape[0])
            rc = err_set(RB_EXIT_INPUT, "%s: %s is [%lld, %lld] but the adapter's %s is "
                         "[%lld, %lld] and %s [%lld, %lld]: was it trained on this model?",
                         safetensors_file_of(st, t), t->name, (long long)t->shape[0],
                         (long long)t->shape[1], la->name, (long long)la->rows,
                         (long long)la->cols, lb->name, (long long)lb->rows,
                         (long long)lb->cols);
        else {
            float scale = (float)(a->cfg.lora_alpha / a->cfg.lora_r);
            export_merge_delta(x, lb->data, la->data, t->shape[0], t->shape[1], la->rows,
                               scale);
            s->merged++;
        }
    } else if (!rc) {
        s->converted++;
    }

    /* 4. in the output dtype */
    if (!rc) {
        w->dtype = dtype;
        w->data = export_convert(x, n, dtype);
        s->bytes += (uint64_t)n * st_dtype_size(dtype);
    }
    free(x);
    return rc;
}

/* The base model is the one the adapter was trained on (config.json hash), and --out is not
 * the base folder. */
static int export_check_base(const export_adapter *a, const model_config *mc,
                             const export_merge_options *o)
{
    char in_real[PATH_MAX], out_real[PATH_MAX];
    if (realpath(o->model_dir, in_real) && realpath(o->out_dir, out_real) &&
        strcmp(in_real, out_real) == 0)
        return err_set(RB_EXIT_INPUT, "--out %s is the base model folder; merge into a new "
                       "folder", o->out_dir);
    if (a->meta.base_model_hash == 0 || a->meta.base_model_hash == mc->hash)
        return 0;
    if (o->force) {
        log_warn("%s/config.json (hash %016llx) is not the base model %s was trained on "
                 "(%s, hash %016llx); merging anyway (--force)", o->model_dir,
                 (unsigned long long)mc->hash, a->path,
                 a->meta.base_model ? a->meta.base_model : "?",
                 (unsigned long long)a->meta.base_model_hash);
        return 0;
    }
    return err_set(RB_EXIT_INPUT, "%s/config.json (hash %016llx) is not the base model %s was "
                   "trained on (%s, hash %016llx); pass that model's folder, or --force to "
                   "merge anyway", o->model_dir, (unsigned long long)mc->hash, a->path,
                   a->meta.base_model ? a->meta.base_model : "?",
                   (unsigned long long)a->meta.base_model_hash);
}

/* Every adapter tensor found its linear in the base model. */
static int export_check_used(const export_adapter *a, const model_config *mc,
                             const export_merge_stats *s)
{
    for (int i = 0; i < a->n_tensors; i++)
        if (a->tensors[i].layer >= mc->num_hidden_layers)
            return err_set(RB_EXIT_INPUT, "%s: %s is past the base model's %d layers",
                           a->path, a->tensors[i].name, mc->num_hidden_layers);
    if (s->merged * 2 != a->n_tensors)
        return err_set(RB_EXIT_INPUT, "%s: %d LoRA pairs but only %d of them matched a linear "
                       "weight of the base model", a->path, a->n_tensors / 2, s->merged);
    return 0;
}

static const char *export_torch_dtype(st_dtype d)
{
    return d == ST_F32 ? "float32" : d == ST_F16 ? "float16" : "bfloat16";
}

/* config.json: the base's, with its dtype key ("dtype" in transformers 5, "torch_dtype"
 * before) set to the merged dtype. */
static int export_write_config(const export_merge_options *o)
{
    char *src = xasprintf("%s/config.json", o->model_dir);
    json_error_t jerr;
    json_t *c = json_load_file(src, 0, &jerr);
    int rc = 0;
    if (!c || !json_is_object(c)) {
        rc = err_set(RB_EXIT_INPUT, "%s:%d: %s", src, jerr.line, c ? "not an object"
                                                                 : jerr.text);
    } else {
        const char *dt = export_torch_dtype(o->dtype);
        int has_new = json_object_get(c, "dtype") != NULL;
        if (has_new)
            json_object_set_new(c, "dtype", json_string(dt));
        if (json_object_get(c, "torch_dtype") || !has_new)
            json_object_set_new(c, "torch_dtype", json_string(dt));
        char *dst = xasprintf("%s/config.json", o->out_dir);
        rc = export_write_json(dst, c, 0);
        free(dst);
    }
    json_decref(c);
    free(src);
    return rc;
}

/* generation_config.json: the base's, else one with the config's bos/eos ids. */
static int export_write_generation_config(const export_merge_options *o, const model_config *mc)
{
    int copied = 0;
    int rc = export_copy_file(o->model_dir, o->out_dir, "generation_config.json", &copied);
    if (rc || copied)
        return rc;
    json_t *g = json_object();
    if (mc->bos_token_id >= 0)
        json_object_set_new(g, "bos_token_id", json_integer(mc->bos_token_id));
    if (mc->eos_token_id >= 0)
        json_object_set_new(g, "eos_token_id", json_integer(mc->eos_token_id));
    char *dst = xasprintf("%s/generation_config.json", o->out_dir);
    rc = export_write_json(dst, g, JSON_SORT_KEYS);
    free(dst);
    json_decref(g);
    return rc;
}

static int export_copy_tokenizer(const export_merge_options *o)
{
    int copied = 0, rc = 0;
    for (int i = 0; export_tokenizer_files[i] && !rc; i++)
        rc = export_copy_file(o->model_dir, o->out_dir, export_tokenizer_files[i], &copied);
    if (!rc && copied == 0)
        log_warn("%s has no tokenizer files (tokenizer.json, tokenizer_config.json...); the "
                 "merged folder has none either: copy them before loading it by name",
                 o->model_dir);
    return rc;
}

/* rubric_config.yml: the checkpoint's stored training config, so `rubric score --model OUT`
 * renders the prompt format and score range the adapter was trained with. */
static int export_write_training_config(const export_adapter *a,
                                        const export_merge_options *o)
{
    const char *yaml = a->meta.config_yaml;
    if (!yaml || !*yaml) {
        log_warn("%s: no stored training config: the merged folder has no rubric_config.yml "
                 "(score it with --config)", a->path);
        return 0;
    }
    char *path = xasprintf("%s/rubric_config.yml", o->out_dir);
    int rc = write_file_atomic(path, yaml, strlen(yaml));
    free(path);
    return rc;
}

int export_merge(const export_adapter *a, const export_merge_options *o)
{
    /* 1. the base model, and that it is the one the adapter was trained on */
    model_config mc;
    int rc = model_config_load(&mc, o->model_dir);
    if (rc)
        return rc;
    if ((rc = export_check_base(a, &mc, o)))
        return rc;
    safetensors_set *st = NULL;
    if ((rc = safetensors_open_dir(&st, o->model_dir)))
        return rc;

    /* 2. every tensor: NF4 round trip (QLoRA), merged, converted; lm_head left out if tied */
    int n = safetensors_count(st), n_out = 0;
    st_write_tensor *w = xcalloc((size_t)n + 1, sizeof *w);
    export_merge_stats s = {0};
    for (int i = 0; i < n && !rc; i++) {
        const st_tensor *t = safetensors_at(st, i);
        if (mc.tie_word_embeddings && strcmp(t->name, "lm_head.weight") == 0) {
            s.dropped_head = 1;
            continue;
        }
        rc = export_merge_tensor(a, &mc, st, t, o->dtype, &w[n_out], &s);
        n_out += !rc;
    }
    if (!rc)
        rc = export_check_used(a, &mc, &s);

    /* 3. the weights first, then the files that describe them */
    if (!rc)
        rc = export_prepare_dir(o->out_dir, "config.json", o->force);
    const char *meta[] = {"format", "pt", NULL};
    if (!rc)
        rc = safetensors_write_dir(o->out_dir, w, n_out, meta, o->max_shard_bytes);
    for (int i = 0; i < n_out; i++)
        free((void *)w[i].data);
    free(w);
    safetensors_close(st);
    rc = rc ? rc : export_write_generation_config(o, &mc);
    rc = rc ? rc : export_copy_tokenizer(o);
    rc = rc ? rc : export_write_training_config(a, o);
    rc = rc ? rc : export_write_config(o);
    if (!rc)
        log_info("merged %d adapted linears (scale %g%s) into %s: %d tensors, %s, %.1f MB%s",
                 s.merged, a->cfg.lora_alpha / a->cfg.lora_r,
                 a->qlora ? ", base through NF4 as trained" : "", o->out_dir, n_out,
                 export_torch_dtype(o->dtype), (double)s.bytes / 1e6,
                 s.dropped_head ? ", lm_head tied to the embeddings" : "");
    return rc;
}
