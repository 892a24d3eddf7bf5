/* cmd_score.c: `rubric score`: data-parallel batch scoring with metrics (see score.h). */
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "config.h"
#include "jsonl.h"
#include "log.h"
#include "ops.h"
#include "score.h"
#include "scorer.h"
#include "util.h"
#include "world.h"

#include <unistd.h>

enum {
    OPT_MODEL = 1, OPT_ADAPTER, OPT_INPUT, OPT_OUTPUT, OPT_METRICS, OPT_RESUME, OPT_NUM_SCORES,
    OPT_CHUNK_ROWS, OPT_BATCH_ROWS, OPT_NO_PREFIX_CACHE, OPT_FULL_LOGITS, OPT_MAX_PROMPT,
    OPT_BASELINE, OPT_BACKEND, OPT_WINDOW, OPT_TOKENIZER, OPT_METRICS_ONLY, OPT_FAKE_MODEL,
    OPT_FAKE_DELAY, OPT_WORKER_TIMEOUT,
};

static const struct option score_long_options[] = {
    {"model", required_argument, NULL, OPT_MODEL},
    {"adapter", required_argument, NULL, OPT_ADAPTER},
    {"input", required_argument, NULL, OPT_INPUT},
    {"output", required_argument, NULL, OPT_OUTPUT},
    {"metrics", required_argument, NULL, OPT_METRICS},
    {"resume", no_argument, NULL, OPT_RESUME},
    {"num-scores", required_argument, NULL, OPT_NUM_SCORES},
    {"chunk-rows", required_argument, NULL, OPT_CHUNK_ROWS},
    {"batch-rows", required_argument, NULL, OPT_BATCH_ROWS},
    {"no-prefix-cache", no_argument, NULL, OPT_NO_PREFIX_CACHE},
    {"full-logits", no_argument, NULL, OPT_FULL_LOGITS},
    {"max-prompt-tokens", required_argument, NULL, OPT_MAX_PROMPT},
    {"baseline-from", required_argument, NULL, OPT_BASELINE},
    {"backend", required_argument, NULL, OPT_BACKEND},
    {"window-chunks", required_argument, NULL, OPT_WINDOW},
    {"worker-timeout", required_argument, NULL, OPT_WORKER_TIMEOUT},
    {"tokenizer", required_argument, NULL, OPT_TOKENIZER},
    {"metrics-only", no_argument, NULL, OPT_METRICS_ONLY},
    {"fake-model", no_argument, NULL, OPT_FAKE_MODEL},
    {"fake-delay-us", required_argument, NULL, OPT_FAKE_DELAY},
    {NULL, 0, NULL, 0},
};

static const char score_summary[] =
    "Score the rows of an Alpaca JSONL file (instruction, input; output optional) with a model\n"
    "and optional adapter. Rank 0 streams the input and hands chunks of rows to the workers\n"
    "(ranks 1..N) on demand; without mpirun one process does both. Each worker computes the KV\n"
    "cache of the shared rubric prefix once, prefills the rest of each row and decodes greedily\n"
    "under the score grammar (K digits in the score range, single spaces, <|im_end|>).\n"
    "The output has one JSON line per input line, in input order:\n"
    "  {\"row\": 0, \"scores\": [3, 4, 2], \"text\": \"3 4 2\", \"status\": \"ok\"}\n"
    "status is ok, off_grammar (plain greedy decoding would have left the grammar; the scores\n"
    "are the constrained answer) or bad_row (with \"error\"). It is written as OUTPUT.partial\n"
    "with a journal (OUTPUT.journal) and renamed at the end; after a crash or kill (Ctrl-C or\n"
    "SIGTERM end it at once with exit 1, keeping what is written), the same command with\n"
    "--resume goes on where it stopped. The input must be a regular file (it is read more\n"
    "than once); missing folders of --output and --metrics are created. When rows have an\n"
    "\"output\", the metrics (exact match, accuracy, off-by-1, MAE, Pearson, confusion\n"
    "matrices, off-grammar rate, and the majority baseline) are printed and written to\n"
    "OUTPUT-without-.jsonl.metrics.json.\n"
    "Limitations: scores are single digits (a score range within 0..9); one shared prefix is\n"
    "cached per worker; --adapter takes rubric checkpoints (.h5), not PEFT folders.";

static const char score_options_help[] =
    "      --model DIR|ID       Hugging Face model folder, or a hub id in the local cache\n"
    "                           (default: base_model of the config or of the adapter's\n"
    "                           checkpoint); a `rubric merge` folder's rubric_config.yml gives\n"
    "                           the prompt format and score range unless --config is given\n"
    "      --adapter CKPT.h5    rubric checkpoint; its stored config gives the prompt format,\n"
    "                           score range and base model unless set here (--config\n"
    "                           replaces it; --set KEY=VALUE overrides one of its keys)\n"
    "      --input FILE         rows to score (JSONL)\n"
    "      --output FILE        predictions (JSONL)\n"
    "      --metrics FILE       metrics JSON (default: OUTPUT's name with .metrics.json)\n"
    "      --resume             continue an interrupted run of the same command\n"
    "      --num-scores K       scores per row, 1..64 (default: the --adapter checkpoint's,\n"
    "                           from its training data; else as rubric prep decides it, the\n"
    "                           most common count among the rows' in-range score outputs;\n"
    "                           of a tie, the smaller)\n"
    "      --baseline-from FILE reference rows for the majority baseline (default: the input)\n"
    "      --metrics-only       only compute the metrics of an existing OUTPUT\n"
    "      --tokenizer DIR      folder with tokenizer.json (default: the model's)\n"
    "      --batch-rows N       rows decoded together per worker (default score_batch_size)\n"
    "      --chunk-rows N       rows per chunk handed to a worker (default 64)\n"
    "      --window-chunks N    chunks the coordinator may hold for reordering (default 4 per\n"
    "                           worker, at least 16)\n"
    "      --worker-timeout S   under mpirun, the base of rank 0's wait for a worker holding\n"
    "                           a chunk, seconds (default 300): past S + 5 x the slowest\n"
    "                           chunk so far (a worker's first chunk, and the model load: at\n"
    "                           least 30 min) the job ends, naming the rank and the chunk\n"
    "                           (exit 1); --resume continues it\n"
    "      --no-prefix-cache    prefill every row whole (for comparisons)\n"
    "      --full-logits        every pass over the whole vocabulary, also for rows already\n"
    "                           off the grammar (for comparisons: a model that stays in it)\n"
    "      --max-prompt-tokens N  longer prompts are bad rows (default: the model's maximum)\n"
    "      --backend NAME       cpu, cuda or auto: cuda when a GPU answers, each worker the\n"
    "                           next GPU of its node (default: $RUBRIC_BACKEND, else auto);\n"
    "                           testing only: cpu-staged (the CPU behind device-style memory)\n"
    "      --fake-model         testing only: scores are a hash of the row, no model is loaded\n"
    "      --fake-delay-us N    testing only: the fake model sleeps N microseconds per row\n";

typedef struct {
    score_options o;
    int metrics_only;
    int batch_set;
} score_cli;

static int parse_int(const char *arg, const char *name, int lo, int *out)
{
    char *end;
    long v = strtol(arg, &end, 10);
    if (*arg == '\0' || *end != '\0' || v < lo || v > 1 << 30)
        return err_set(RB_EXIT_INPUT, "--%s: '%s' is not an integer >= %d", name, arg, lo);
    *out = (int)v;
    return 0;
}

static int score_on_option(int opt, const char *arg, void *ctx)
{
    score_cli *sc = ctx;
    score_options *o = &sc->o;
    switch (opt) {
    case OPT_MODEL: o->model_dir = arg; return 0;
    case OPT_ADAPTER: o->adapter = arg; return 0;
    case OPT_INPUT: o->input = arg; return 0;
    case OPT_OUTPUT: o->output = arg; return 0;
    case OPT_METRICS: o->metrics_path = arg; return 0;
    case OPT_RESUME: o->resume = 1; return 0;
    case OPT_NUM_SCORES: {
        int rc = parse_int(arg, "num-scores", 1, &o->k);
        if (!rc && o->k > GRAMMAR_MAX_K)
            rc = err_set(RB_EXIT_INPUT, "--num-scores: %d is more than the %d scores per row "
                         "rubric decodes", o->k, GRAMMAR_MAX_K);
        return rc;
    }
    case OPT_CHUNK_ROWS: return parse_int(arg, "chunk-rows", 1, &o->chunk_rows);
    case OPT_BATCH_ROWS:
        sc->batch_set = 1;
        return parse_int(arg, "batch-rows", 1, &o->batch_rows);
    case OPT_NO_PREFIX_CACHE: o->prefix_cache = 0; return 0;
    case OPT_FULL_LOGITS: o->full_logits = 1; return 0;
    case OPT_MAX_PROMPT: return parse_int(arg, "max-prompt-tokens", 1, &o->max_prompt_tokens);
    case OPT_BASELINE: o->baseline_from = arg; return 0;
    case OPT_BACKEND: o->backend = arg; return kernel_backend_name_check(arg, "--backend");
    case OPT_WINDOW: return parse_int(arg, "window-chunks", 1, &o->window_chunks);
    case OPT_TOKENIZER: o->tokenizer_dir = arg; return 0;
    case OPT_METRICS_ONLY: sc->metrics_only = 1; return 0;
    case OPT_FAKE_MODEL: o->fake_model = 1; return 0;
    case OPT_FAKE_DELAY: return parse_int(arg, "fake-delay-us", 0, &o->fake_delay_us);
    case OPT_WORKER_TIMEOUT: {
        char *end;
        o->worker_timeout_s = strtod(arg, &end);
        if (*arg == '\0' || *end != '\0' || !(o->worker_timeout_s > 0) ||
            o->worker_timeout_s > 1e7)
            return err_set(RB_EXIT_INPUT, "--worker-timeout: '%s' is not a positive number of "
                           "seconds", arg);
        return 0;
    }
    default: return err_set(RB_EXIT_INPUT, "unknown option");
    }
}

/* --model given as a hub id (not a folder): its snapshot in the Hugging Face cache, as
 * training resolves base_model (with the same hint when it is not there). */
static int resolve_model_arg(const char **model_dir)
{
    if (!*model_dir || path_is_dir(*model_dir))
        return 0;
    rubric_config mc;
    config_defaults(&mc);
    mc.config_path = xstrdup("--model");
    mc.base_model = xstrdup(*model_dir);
    int rc = config_resolve_model(&mc);
    if (!rc)
        *model_dir = xstrdup(mc.base_model_dir); /* lives until exit */
    config_free(&mc);
    return rc;
}

/* A folder path relative to the checkpoint's folder, when it exists there (else NULL). */
static char *beside_checkpoint(const char *ckpt, const char *rel)
{
    if (!rel || rel[0] == '/')
        return NULL;
    const char *slash = strrchr(ckpt, '/');
    if (!slash)
        return NULL;
    char *p = xasprintf("%.*s/%s", (int)(slash - ckpt), ckpt, rel);
    if (path_is_dir(p))
        return p;
    free(p);
    return NULL;
}

/* The base model of an adapter's stored config: a folder (as stored, from the current folder
 * or the checkpoint's), or a hub id in the cache. The error names the checkpoint and says to
 * pass --model. */
static int resolve_adapter_base(const char *ckpt, rubric_config *ac, const char **model_dir)
{
    if (ac->base_model_dir) {
        *model_dir = xstrdup(ac->base_model_dir);
        return 0;
    }
    char *near = beside_checkpoint(ckpt, ac->base_model);
    if (near) {
        *model_dir = near; /* lives until exit */
        return 0;
    }
    int rc = config_resolve_model(ac);
    if (!rc) {
        *model_dir = xstrdup(ac->base_model_dir);
        return 0;
    }
    if (!path_exists(ac->base_model) && strchr(ac->base_model, '/') &&
        ac->base_model[0] != '/' && ac->base_model[0] != '.' && !strchr(ac->base_model, '\\') &&
        strchr(ac->base_model, '/') == strrchr(ac->base_model, '/')) {
        /* an org/name hub id: the cache hint says how to fetch it */
        char *why = xstrdup(err_msg());
        rc = err_set(RB_EXIT_INPUT, "%s: %s; or pass --model DIR (the base model folder)",
                     ckpt, why);
        free(why);
        return rc;
    }
    return err_set(RB_EXIT_INPUT, "%s: the base model it was trained on, '%s' (base_model of "
                   "its stored config), is not a folder here nor beside the checkpoint: pass "
                   "--model DIR (the base model folder)", ckpt, ac->base_model);
}

/* Where a bound of the score range comes from: --set, the stored config, or the default. */
static char *range_origin(const rubric_config *c, const char *key, const char *label)
{
    int line = config_key_line(c, key);
    if (line < 0)
        return xstrdup("--set");
    return line > 0 ? xasprintf("%s:%d", label, line)
                    : xasprintf("the default, not in %s", label);
}

/* The command line's --set assignments on top of a stored config (a checkpoint's, a merged
 * model's): what the user set here wins, as over --config. The score range they give is
 * checked here, naming where each bound comes from. */
static int apply_sets(const cli_common *cli, rubric_config *stored, const char *label)
{
    int rc = 0;
    for (int i = 0; !rc && i < cli->n_sets; i++)
        rc = config_set(stored, cli->sets[i]);
    if (rc)
        return err_prefix(rc, "%s", label);
    if (stored->score_min < stored->score_max)
        return 0;
    char *from_min = range_origin(stored, "score_min", label);
    char *from_max = range_origin(stored, "score_max", label);
    rc = err_set(RB_EXIT_INPUT, "score_max (%d, from %s) must be above score_min (%d, from %s): "
                 "give a range with --set score_min=A --set score_max=B, A < B",
                 stored->score_max, from_max, stored->score_min, from_min);
    free(from_min);
    free(from_max);
    return rc;
}

/* --print-config: the config scoring uses (rank 0 prints it). */
static void print_used_config(const rubric_config *used)
{
    if (cli_launch_rank() != 0)
        return;
    char *yaml = config_to_yaml(used);
    fputs(yaml, stdout);
    fflush(stdout);
    free(yaml);
}

/* A merged model folder (`rubric merge`) keeps its training config in rubric_config.yml:
 * without --config and --adapter it gives the prompt format and score range. */
static int merged_model_config(score_options *o, const cli_common *cli)
{
    char *path = xasprintf("%s/rubric_config.yml", o->model_dir);
    if (!path_exists(path)) {
        free(path);
        return 0;
    }
    rubric_config mcfg;
    int rc = config_load(&mcfg, path, 0);
    if (!rc)
        rc = apply_sets(cli, &mcfg, path);
    if (!rc && cli->print_config) {
        print_used_config(&mcfg);
    } else if (!rc) {
        const char *model_dir = o->model_dir, *tok = o->tokenizer_dir;
        rc = score_options_from_config(o, &mcfg);
        o->model_dir = model_dir;
        o->tokenizer_dir = tok;
        o->eos_token = o->eos_token ? xstrdup(o->eos_token) : NULL; /* lives until exit */
        if (!rc && cli_launch_rank() == 0)
            log_info("%s: prompt format and score range %d..%d from the merged model's "
                     "training config", path, o->score_min, o->score_max);
    }
    if (rc)
        rc = err_prefix(rc, "the merged model's training config (give --config FILE to score "
                        "with another)");
    config_free(&mcfg);
    free(path);
    return rc;
}

/* The --set keys go on top of a stored config rather than the defaults: with --adapter (a
 * checkpoint's training config) or a merged --model (its rubric_config.yml), and no --config.
 * Resolves a --model hub id on the way. */
static int sets_go_on_stored(score_cli *sc, const cli_common *cli, int *stored)
{
    score_options *o = &sc->o;
    *stored = 0;
    if (cli->config_path || o->fake_model)
        return 0;
    if (o->adapter) {
        *stored = 1;
        return 0;
    }
    int rc = resolve_model_arg(&o->model_dir);
    if (rc || !o->model_dir)
        return rc;
    char *path = xasprintf("%s/rubric_config.yml", o->model_dir);
    *stored = path_exists(path);
    free(path);
    return 0;
}

/* What the command line did not set comes from the config (with --set), else from the
 * adapter's stored config with the --set keys applied on top. With --print-config, the config
 * in use is printed and nothing else resolved. */
static int resolve_options(score_cli *sc, const cli_common *cli, rubric_config *cfg, int stored)
{
    score_options *o = &sc->o;
    score_options cl = *o;
    int rc = 0;
    if (cli->print_config && !stored) {
        print_used_config(cfg);
        return 0;
    }
    if (!o->fake_model)
        rc = resolve_model_arg(&o->model_dir);
    cl.model_dir = o->model_dir;
    if (!rc && !o->model_dir && !o->fake_model && cfg->base_model && !cfg->base_model_dir)
        rc = config_resolve_model(cfg); /* a hub id: its folder in the Hugging Face cache */
    if (!rc)
        rc = score_options_from_config(o, cfg);
    if (!rc)
        rc = score_check_adapter_path(o->adapter);
    if (!rc && o->adapter && !o->fake_model) {
        rubric_config ac;
        rc = scorer_adapter_config(o->adapter, &ac);
        char *label = xasprintf("%s's stored config", o->adapter);
        if (!rc && !cfg->config_path)
            rc = apply_sets(cli, &ac, label);
        free(label);
        if (!rc && cli->print_config) {
            print_used_config(&ac);
            config_free(&ac);
            return 0;
        }
        if (!rc && !cfg->config_path) {
            /* no --config: the checkpoint's training config decides format and range */
            const char *model_dir = o->model_dir;
            o->model_dir = NULL;
            rc = score_options_from_config(o, &ac);
            /* ac is freed below: keep copies of what points into it (they live until exit);
             * the base model is resolved below (it may be a hub id) */
            o->model_dir = cl.model_dir ? cl.model_dir : model_dir;
            if (o->tokenizer_dir && o->tokenizer_dir == ac.tokenizer_dir)
                o->tokenizer_dir = xstrdup(ac.tokenizer_dir);
            if (o->eos_token && o->eos_token == ac.eos_token)
                o->eos_token = xstrdup(ac.eos_token);
        }
        if (!rc && !o->model_dir && ac.base_model)
            rc = resolve_adapter_base(o->adapter, &ac, &o->model_dir);
        /* K: --num-scores, else what the adapter was trained to answer, else the input's */
        int trained = rc ? 0 : scorer_adapter_scores(o->adapter);
        if (!rc && o->k <= 0)
            o->k = trained;
        else if (!rc && trained > 0 && o->k != trained && cli_launch_rank() == 0)
            log_warn("--num-scores %d overrides the %d scores per row %s was trained to answer "
                     "(its scores_per_row): the model answers in a shape it did not learn; "
                     "drop --num-scores to score %d per row", o->k, trained, o->adapter,
                     trained);
        config_free(&ac);
    }
    if (!rc && cl.model_dir && !o->adapter && !cfg->config_path && !o->fake_model)
        rc = merged_model_config(o, cli);
    if (rc || cli->print_config)
        return rc;
    if (cl.model_dir)
        o->model_dir = cl.model_dir;
    if (cl.tokenizer_dir)
        o->tokenizer_dir = cl.tokenizer_dir;
    if (sc->batch_set)
        o->batch_rows = cl.batch_rows;
    return 0;
}

/* Ctrl-C or SIGTERM while scoring: say how to continue and stop. The journal keeps every
 * committed chunk, but the output is not complete, so the exit code is 1 (a runtime failure:
 * a script that goes on only after success must not use it). Rank 0 only. */
static void on_stop_signal(int sig)
{
    static const char msg[] = "\nrubric score: interrupted; the rows written so far are kept: "
                              "run the same command with --resume to continue\n";
    static const char early[] = "\nrubric score: interrupted before the output was opened; "
                                "nothing was written\n";
    int saved = score_output_open;
    ssize_t unused = saved ? write(STDERR_FILENO, msg, sizeof msg - 1)
                           : write(STDERR_FILENO, early, sizeof early - 1);
    (void)unused;
    (void)sig;
    _exit(RB_EXIT_RUNTIME); /* the output is not complete: a script must not go on with it */
}

static int run_metrics_only(const score_options *o)
{
    if (!o->input || !o->output)
        return err_set(RB_EXIT_INPUT, "--metrics-only needs --input and --output");
    int rc = jsonl_check_input(o->input, "--input");
    if (!rc)
        rc = score_check_baseline_path(o);
    if (!rc)
        rc = score_check_metrics_path(o);
    if (rc)
        return rc;
    char *path = o->metrics_path ? xstrdup(o->metrics_path)
                                 : score_default_metrics_path(o->output);
    int labelled;
    rc = score_metrics(o, o->output, path, &labelled);
    free(path);
    return rc;
}

int cmd_score(int argc, char **argv)
{
    score_cli sc = {0};
    score_options_defaults(&sc.o);
    cli_spec spec = {
        .command = "score",
        .usage = "--model DIR [--adapter CKPT.h5] --input ROWS.jsonl --output PREDS.jsonl "
                 "[--config FILE] [--resume] [options]",
        .summary = score_summary,
        .options_help = score_options_help,
        .options = score_long_options,
        .on_option = score_on_option,
        .ctx = &sc,
        .config_positional = 0,
        .config_required = 0,
        .max_args = 0,
    };
    cli_common cli;
    int rc = cli_parse_common(argc, argv, &spec, &cli);
    if (!rc && !cli.help &&
        (rc = kernel_backend_name_check(sc.o.backend, "RUBRIC_BACKEND in the environment")) &&
        cli_launch_rank() == 0)
        log_error("%s", err_msg());
    if (rc || cli.help) {
        cli_free(&cli);
        return rc;
    }

    /* the config: --config or the defaults, with --set unless they go on a stored config
     * (resolve_options applies them there); --print-config prints the one in use */
    int stored = 0;
    rc = sets_go_on_stored(&sc, &cli, &stored);
    if (rc) {
        if (cli_launch_rank() == 0)
            log_error("%s", err_msg());
        cli_free(&cli);
        return rc;
    }
    cli_common base = cli;
    base.print_config = 0;
    if (stored)
        base.n_sets = 0;
    rubric_config cfg;
    rc = cli_load_config(&base, &cfg);
    if (rc) {
        config_free(&cfg);
        cli_free(&cli);
        return rc;
    }

    world w;
    rc = resolve_options(&sc, &cli, &cfg, stored);
    if (!rc && cli.print_config) {
        config_free(&cfg);
        cli_free(&cli);
        return 0;
    }
    if (!rc)
        rc = world_init(&w, &argc, &argv);
    if (!rc) {
        if (w.rank == 0 && !sc.metrics_only) {
            if (signal(SIGINT, on_stop_signal) == SIG_IGN)
                signal(SIGINT, SIG_IGN); /* started ignoring it (nohup): keep so */
            signal(SIGTERM, on_stop_signal);
        }
        rc = sc.metrics_only ? (w.rank == 0 ? run_metrics_only(&sc.o) : 0) : score_run(&sc.o);
        if (rc && w.rank == 0)
            log_error("%s", err_msg());
        world_finalize(&w);
    } else if (cli_launch_rank() == 0) {
        log_error("%s", err_msg());
    }
    config_free(&cfg);
    cli_free(&cli);
    return rc;
}
