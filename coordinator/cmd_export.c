/*
 * cmd_export.c: `rubric export-adapter` (a checkpoint's adapter in PEFT's layout) and
 * `rubric merge` (the adapter merged into the base model, in Hugging Face layout). The logic
 * is in worker/export.c; this file parses the options.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "export.h"
#include "log.h"
#include "util.h"

typedef struct {
    const char *model;
    const char *adapter;
    const char *out;
    const char *base_name;
    const char *dtype;
    uint64_t max_shard_bytes;
    int force;
    int help;
} export_cli;

static void export_adapter_usage(FILE *fp)
{
    fprintf(fp,
            "usage: rubric export-adapter --adapter CKPT.h5 --out DIR [options]\n"
            "\n"
            "Write a checkpoint's LoRA adapter in PEFT's layout (adapter_config.json,\n"
            "adapter_model.safetensors), which PeftModel.from_pretrained and vLLM's\n"
            "--lora-modules load. See docs/export.md.\n"
            "\n"
            "  --adapter CKPT.h5    a rubric checkpoint (checkpoint-<step>.h5), or the\n"
            "                       output_dir holding them (its newest complete one)\n"
            "  --out DIR            the adapter folder (created)\n"
            "  --base-model NAME    base_model_name_or_path to record (default: the\n"
            "                       checkpoint config's base_model, as written)\n"
            "  --force              write into a non-empty folder that holds no adapter\n"
            "  --log-level LEVEL    error, warn, info (default) or debug\n");
}

static void merge_usage(FILE *fp)
{
    fprintf(fp,
            "usage: rubric merge --model DIR --adapter CKPT.h5 --out DIR [options]\n"
            "\n"
            "Merge a checkpoint's adapter into its base model: W' = W + (lora_alpha / r) B A in\n"
            "every adapted linear (QLoRA: W after the NF4 round trip training used). Writes a\n"
            "Hugging Face folder: config.json, generation_config.json, model.safetensors\n"
            "(sharded with an index past --max-shard-size) and the base's tokenizer files.\n"
            "Needs memory for the whole merged model. See docs/export.md.\n"
            "\n"
            "  --model DIR          the base model folder the adapter was trained on\n"
            "  --adapter CKPT.h5    a rubric checkpoint (checkpoint-<step>.h5), or the\n"
            "                       output_dir holding them (its newest complete one)\n"
            "  --out DIR            the merged model folder (created; not the base folder)\n"
            "  --dtype T            bf16 (default), f16 or f32\n"
            "  --max-shard-size N   shards of at most N bytes (suffix K, M, G: 1e3, 1e6, 1e9;\n"
            "                       default 5G, as transformers)\n"
            "  --force              merge into a base model whose config.json differs from\n"
            "                       the one trained on; write into a non-empty foreign folder\n"
            "  --log-level LEVEL    error, warn, info (default) or debug\n");
}

/* A byte count: digits with an optional K, M or G (powers of 1000, as transformers). */
static int export_parse_size(const char *s, uint64_t *out)
{
    if (parse_byte_size(s, out) != 0)
        return err_set(RB_EXIT_INPUT, "--max-shard-size needs a positive size such as "
                       "500000, 200M or 5G, got '%s'", s);
    return 0;
}

static int export_parse_level(const char *s)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    static const enum log_level levels[] = {LOG_ERROR, LOG_WARN, LOG_INFO, LOG_DEBUG};
    for (size_t i = 0; i < RB_ARRAY_LEN(names); i++)
        if (strcmp(s, names[i]) == 0) {
            log_set_level(levels[i]);
            return 0;
        }
    return err_set(RB_EXIT_INPUT, "--log-level needs error, warn, info or debug, got '%s'", s);
}

/* Parse both commands' options; `merge` allows --model, --dtype and --max-shard-size. */
static int export_parse(export_cli *o, int argc, char **argv, int merge)
{
    enum { O_MODEL = 256, O_ADAPTER, O_OUT, O_BASE, O_DTYPE, O_SHARD, O_FORCE, O_LEVEL,
           O_HELP };
    static const struct option opts[] = {
        {"model", required_argument, 0, O_MODEL},  {"adapter", required_argument, 0, O_ADAPTER},
        {"out", required_argument, 0, O_OUT},      {"base-model", required_argument, 0, O_BASE},
        {"dtype", required_argument, 0, O_DTYPE},  {"max-shard-size", required_argument, 0,
                                                    O_SHARD},
        {"force", no_argument, 0, O_FORCE},        {"log-level", required_argument, 0, O_LEVEL},
        {"help", no_argument, 0, O_HELP},          {0, 0, 0, 0},
    };
    memset(o, 0, sizeof *o);
    o->dtype = "bf16";
    o->max_shard_bytes = 5000000000ull;
    optind = 0;
    opterr = 0;
    int c, rc = 0;
    while (!rc && (c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        int merge_only = c == O_MODEL || c == O_DTYPE || c == O_SHARD;
        if ((merge_only && !merge) || (c == O_BASE && merge))
            return err_set(RB_EXIT_INPUT, "%s does not take %s", argv[0], argv[optind - 1]);
        switch (c) {
        case O_MODEL: o->model = optarg; break;
        case O_ADAPTER: o->adapter = optarg; break;
        case O_OUT: o->out = optarg; break;
        case O_BASE: o->base_name = optarg; break;
        case O_DTYPE: o->dtype = optarg; break;
        case O_SHARD: rc = export_parse_size(optarg, &o->max_shard_bytes); break;
        case O_FORCE: o->force = 1; break;
        case O_LEVEL: rc = export_parse_level(optarg); break;
        case O_HELP: case 'h': o->help = 1; return 0;
        case ':': return err_set(RB_EXIT_INPUT, "%s needs a value", argv[optind - 1]);
        default: return err_set(RB_EXIT_INPUT, "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (rc)
        return rc;
    if (optind < argc)
        return err_set(RB_EXIT_INPUT, "unexpected argument '%s'", argv[optind]);
    if (merge && !o->model)
        return err_set(RB_EXIT_INPUT, "--model DIR (the base model folder) is required");
    if (!o->adapter)
        return err_set(RB_EXIT_INPUT, "--adapter CKPT.h5 (a rubric checkpoint) is required");
    if (!o->out)
        return err_set(RB_EXIT_INPUT, "--out DIR is required");
    return 0;
}

static int export_parse_dtype(const char *s, st_dtype *d)
{
    if (!strcmp(s, "bf16") || !strcmp(s, "bfloat16"))
        *d = ST_BF16;
    else if (!strcmp(s, "f16") || !strcmp(s, "fp16") || !strcmp(s, "float16"))
        *d = ST_F16;
    else if (!strcmp(s, "f32") || !strcmp(s, "fp32") || !strcmp(s, "float32"))
        *d = ST_F32;
    else
        return err_set(RB_EXIT_INPUT, "--dtype needs bf16, f16 or f32, got '%s'", s);
    return 0;
}

/* Print the error with a hint line and return its code. */
static int export_fail(const char *cmd, int rc)
{
    log_error("%s", err_msg());
    if (rc == RB_EXIT_INPUT)
        fprintf(stderr, "(rubric %s --help lists the options)\n", cmd);
    return rc;
}

int cmd_export_adapter(int argc, char **argv)
{
    export_cli o;
    int rc = export_parse(&o, argc, argv, 0);
    if (!rc && o.help) {
        export_adapter_usage(stdout);
        return 0;
    }
    if (rc)
        return export_fail("export-adapter", rc);

    export_adapter a;
    rc = export_adapter_read(o.adapter, &a);
    rc = rc ? rc : export_prepare_dir(o.out, "adapter_config.json", o.force);
    rc = rc ? rc : export_adapter_write(&a, o.out, o.base_name);
    if (!rc)
        log_info("wrote %s: PEFT LoRA adapter, r %d, alpha %g, %d tensors, step %lld of %s",
                 o.out, a.cfg.lora_r, a.cfg.lora_alpha, a.n_tensors, (long long)a.meta.step,
                 a.path);
    export_adapter_free(&a);
    return rc ? export_fail("export-adapter", rc) : 0;
}

int cmd_merge(int argc, char **argv)
{
    export_cli o;
    int rc = export_parse(&o, argc, argv, 1);
    if (!rc && o.help) {
        merge_usage(stdout);
        return 0;
    }
    export_merge_options mo = {.model_dir = o.model, .out_dir = o.out, .dtype = ST_BF16,
                               .max_shard_bytes = o.max_shard_bytes, .force = o.force};
    rc = rc ? rc : export_parse_dtype(o.dtype, &mo.dtype);
    if (rc)
        return export_fail("merge", rc);

    export_adapter a;
    rc = export_adapter_read(o.adapter, &a);
    rc = rc ? rc : export_merge(&a, &mo);
    export_adapter_free(&a);
    return rc ? export_fail("merge", rc) : 0;
}
