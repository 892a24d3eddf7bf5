/*
 * export_tool.c: helpers for the export fixtures and tests/ref/check_export.py (not a test).
 *
 *   export_tool make-ckpt --model DIR --out DIR [--adapter lora|qlora] [--r R] [--alpha A]
 *                         [--targets q_proj,v_proj,...] [--seed S] [--b-scale X]
 *                         [--scores K]
 *       A rubric checkpoint (checkpoint-1.h5, written by ckpt_save on MPI_COMM_SELF) for the
 *       model, with PEFT's lora_A init and lora_B drawn uniformly from [-X, X] (default 0.05),
 *       so the adapter changes the logits, as a trained one does. --scores K records K
 *       scores per row (scores_per_row, as training on K-score data does; default 0: none).
 *   export_tool logits --model DIR [--ckpt CKPT.h5 [--adapter-dir DIR]] --tokens 1,2,3
 *                      --out FILE.safetensors
 *       rubric's logits [T, vocab] (fp32) for one sequence: the base model alone, or with the
 *       checkpoint's LoRA (read by ckpt_load, or from a PEFT folder by model_load_adapter when
 *       --adapter-dir is given; the LoRA shape comes from the checkpoint's config either way).
 */
#include <getopt.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt.h"
#include "config.h"
#include "model.h"
#include "model_config.h"
#include "nf4.h"
#include "safetensors.h"
#include "scorer.h"
#include "util.h"

typedef struct {
    const char *model, *out, *adapter, *targets, *ckpt, *adapter_dir, *tokens;
    int r, scores;
    double alpha, b_scale;
    uint64_t seed;
} tool_opts;

static void tool_die(const char *what)
{
    fprintf(stderr, "export_tool: %s: %s\n", what, err_msg());
    exit(1);
}

static void tool_parse(tool_opts *o, int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", 1, 0, 'm'}, {"out", 1, 0, 'o'},     {"adapter", 1, 0, 'a'},
        {"r", 1, 0, 'r'},     {"alpha", 1, 0, 'l'},   {"targets", 1, 0, 't'},
        {"seed", 1, 0, 's'},  {"b-scale", 1, 0, 'b'}, {"ckpt", 1, 0, 'c'},
        {"adapter-dir", 1, 0, 'd'}, {"tokens", 1, 0, 'k'}, {"scores", 1, 0, 'n'},
        {0, 0, 0, 0},
    };
    memset(o, 0, sizeof *o);
    o->adapter = "lora";
    o->targets = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj";
    o->r = 8;
    o->alpha = 16;
    o->b_scale = 0.05;
    o->seed = 7;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'm': o->model = optarg; break;
        case 'o': o->out = optarg; break;
        case 'a': o->adapter = optarg; break;
        case 'r': o->r = atoi(optarg); break;
        case 'l': o->alpha = atof(optarg); break;
        case 't': o->targets = optarg; break;
        case 's': o->seed = strtoull(optarg, NULL, 10); break;
        case 'b': o->b_scale = atof(optarg); break;
        case 'c': o->ckpt = optarg; break;
        case 'd': o->adapter_dir = optarg; break;
        case 'k': o->tokens = optarg; break;
        case 'n': o->scores = atoi(optarg); break;
        default: fprintf(stderr, "export_tool: bad option\n"); exit(2);
        }
    }
    if (!o->model || !o->out) {
        fprintf(stderr, "export_tool: --model and --out are required\n");
        exit(2);
    }
}

/* xorshift64* uniform in [-1, 1) */
static double tool_uniform(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return (double)((*s * 0x2545F4914F6CDD1Dull) >> 11) * 0x1.0p-52 - 1.0;
}

static int tool_make_ckpt(const tool_opts *o)
{
    /* 1. the config a training run would have stored */
    rubric_config cfg;
    config_defaults(&cfg);
    char *sets[] = {xasprintf("base_model=%s", o->model), xasprintf("adapter=%s", o->adapter),
                    xasprintf("lora_r=%d", o->r), xasprintf("lora_alpha=%g", o->alpha),
                    xasprintf("lora_target_modules=[%s]", o->targets),
                    xasprintf("seed=%llu", (unsigned long long)o->seed)};
    for (size_t i = 0; i < RB_ARRAY_LEN(sets); i++) {
        if (config_set(&cfg, sets[i]))
            tool_die(sets[i]);
        free(sets[i]);
    }
    if (!strcmp(o->adapter, "qlora"))
        cfg.load_in_4bit = 1;
    char *yaml = config_to_yaml(&cfg);

    /* 2. the model's LoRA table, A as PEFT initialises it, B random */
    model_options mo;
    model_options_defaults(&mo);
    model_options_from_config(&mo, &cfg);
    mo.backend = "cpu";
    model *m;
    if (model_load(&m, o->model, &mo))
        tool_die("model_load");
    model_trainable_view v;
    model_trainable(m, &v);
    float *host = xmalloc(sizeof(float) * (size_t)v.n_padded);
    model_ops(m)->download(host, v.params, sizeof(float) * (size_t)v.n_padded);
    uint64_t s = o->seed * 0x9E3779B97F4A7C15ull + 1;
    ckpt_param *params = xcalloc((size_t)v.n_tensors, sizeof *params);
    for (int i = 0; i < v.n_tensors; i++) {
        const lora_param *p = &v.table[i];
        params[i] = (ckpt_param){p->name, p->offset, p->rows, p->cols};
        if (strstr(p->name, "lora_B"))
            for (int64_t j = 0; j < (int64_t)p->rows * p->cols; j++)
                host[p->offset + j] = (float)(o->b_scale * tool_uniform(&s));
    }

    /* 3. checkpoint-1.h5 through the real writer */
    ckpt_meta meta = {.step = 1, .total_steps = 1, .seed = o->seed, .n_rng = 1,
                      .rng_state = {o->seed}, .sched_kind = "constant", .base_lr = 1e-4,
                      .config_yaml = yaml, .base_model = (char *)o->model,
                      .base_model_hash = model_get_config(m)->hash, .world_size = 1,
                      .zero_stage = 2, .n_scores = o->scores};
    ckpt_slice slice = {.begin = 0, .len = v.n, .lora = host};
    char *path = NULL;
    if (mkdir_p(o->out) ||
        ckpt_save(MPI_COMM_SELF, o->out, &meta, params, v.n_tensors, &slice, 0, 0, &path))
        tool_die("ckpt_save");
    printf("%s\n", path);
    free(path);
    free(params);
    free(host);
    free(yaml);
    model_free(m);
    config_free(&cfg);
    return 0;
}

/* Load the checkpoint's LoRA into the model's flat buffer with ckpt_load. */
static void tool_load_ckpt(model *m, const char *ckpt)
{
    model_trainable_view v;
    model_trainable(m, &v);
    ckpt_param *params = xcalloc((size_t)v.n_tensors, sizeof *params);
    for (int i = 0; i < v.n_tensors; i++)
        params[i] = (ckpt_param){v.table[i].name, v.table[i].offset, v.table[i].rows,
                                 v.table[i].cols};
    float *host = xcalloc((size_t)v.n_padded, sizeof(float));
    ckpt_slice slice = {.begin = 0, .len = v.n, .lora = host};
    ckpt_meta meta;
    memset(&meta, 0, sizeof meta);
    if (ckpt_load(MPI_COMM_SELF, ckpt, params, v.n_tensors, model_get_config(m)->hash, &slice,
                  0, &meta))
        tool_die("ckpt_load");
    model_ops(m)->upload(v.params, host, sizeof(float) * (size_t)v.n_padded);
    ckpt_meta_free(&meta);
    free(host);
    free(params);
}

static int tool_logits(const tool_opts *o)
{
    /* 1. the model, with the checkpoint's LoRA shape and weights when given */
    model_options mo;
    model_options_defaults(&mo);
    mo.adapter = ADAPTER_NONE;
    if (o->ckpt) {
        rubric_config cfg;
        if (scorer_adapter_config(o->ckpt, &cfg))
            tool_die("checkpoint config");
        model_options_from_config(&mo, &cfg);
        config_free(&cfg);
    }
    mo.backend = "cpu";
    model *m;
    if (model_load(&m, o->model, &mo))
        tool_die("model_load");
    if (o->adapter_dir && model_load_adapter(m, o->adapter_dir))
        tool_die("model_load_adapter");
    else if (o->ckpt && !o->adapter_dir)
        tool_load_ckpt(m, o->ckpt);

    /* 2. one sequence of the given tokens, logits at every row */
    int T = 0;
    uint32_t tok[1024];
    for (const char *p = o->tokens; p && *p && T < 1024;) {
        char *end;
        tok[T++] = (uint32_t)strtoul(p, &end, 10);
        p = *end == ',' ? end + 1 : end;
    }
    packed_batch b;
    packed_batch_init(&b, 1, T, 1);
    b.n_samples = 1;
    b.cu_seqlens[0] = 0;
    b.cu_seqlens[1] = T;
    int32_t *rows = xmalloc(sizeof(int32_t) * (size_t)T);
    for (int t = 0; t < T; t++) {
        b.tokens[t] = tok[t];
        b.positions[t] = t;
        b.targets[t] = -1;
        rows[t] = t;
    }
    int V = model_get_config(m)->vocab_size;
    float *logits = xmalloc(sizeof(float) * (size_t)T * V);
    if (model_logits_at(m, &b, rows, T, logits))
        tool_die("model_logits_at");

    /* 3. out as a safetensors file */
    st_write_tensor t = {.name = "logits", .dtype = ST_F32, .ndim = 2, .shape = {T, V},
                         .data = logits};
    if (safetensors_write(o->out, &t, 1, NULL))
        tool_die(o->out);
    free(logits);
    free(rows);
    packed_batch_free(&b);
    model_free(m);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: export_tool make-ckpt|logits [options]\n");
        return 2;
    }
    /* model.c references NF4 weakly: pull worker/nf4.c out of the archive for QLoRA */
    void *volatile need_nf4 = (void *)nf4_quantize;
    (void)need_nf4;
    MPI_Init(&argc, &argv);
    tool_opts o;
    tool_parse(&o, argc - 1, argv + 1);
    int rc = !strcmp(argv[1], "make-ckpt") ? tool_make_ckpt(&o)
             : !strcmp(argv[1], "logits")  ? tool_logits(&o)
                                           : 2;
    MPI_Finalize();
    return rc;
}
