/* cmd_prep.c: `rubric prep CONFIG`: prepare (or reuse) the dataset cache and print the report. */
#include <stdio.h>
#include <stdlib.h>

#include "cli.h"
#include "commands.h"
#include "config.h"
#include "log.h"
#include "prep.h"
#include "tokenizer.h"
#include "util.h"

enum { OPT_TOKENIZER = 1 };

static const struct option prep_options[] = {
    {"tokenizer", required_argument, NULL, OPT_TOKENIZER},
    {NULL, 0, NULL, 0},
};

typedef struct {
    const char *tokenizer_dir;
} prep_cli;

static int prep_on_option(int opt, const char *arg, void *ctx)
{
    prep_cli *pc = ctx;
    if (opt == OPT_TOKENIZER)
        pc->tokenizer_dir = arg;
    return 0;
}

static const char prep_summary[] =
    "Read the datasets of CONFIG (Alpaca JSONL), validate every row, drop exact duplicates,\n"
    "render and tokenize the prompts, drop rows longer than sequence_len (never truncated),\n"
    "split off val_set_size rows by seed and pack the rest into sequence_len bins. The result\n"
    "is cached as dataset_prepared_path/<fingerprint>.h5 and reused while the input files,\n"
    "the tokenizer and the keys that shape it (prompt format, sequence_len, sample_packing,\n"
    "train_on_inputs, val_set_size, seed, score range, eos/pad tokens) are unchanged.\n"
    "Bad rows are skipped and listed with file, line and reason in rejects.jsonl (strict: true\n"
    "or --strict: the first bad row is an error, exit 2). The report is printed and written to\n"
    "report.json. Both files describe the last build in that folder.\n"
    "Limitations: rows with \"\\u0000\", lone surrogate escapes, NaN/Infinity or integers\n"
    "beyond 64 bits are rejected as not_json (Python's json accepts them); the whole prepared\n"
    "dataset is held in memory (about 4 bytes per token outside the shared system prompt).";

static const char prep_options_help[] =
    "      --tokenizer DIR      folder with tokenizer.json (default: tokenizer_config, else\n"
    "                           base_model's folder)\n";

static int load_tokenizer(const rubric_config *cfg, const char *override, tokenizer **tk)
{
    if (override)
        return tokenizer_load(tk, override);
    if (cfg->tokenizer_dir)
        return tokenizer_load(tk, cfg->tokenizer_dir);
    rubric_config tmp = *cfg;
    tmp.base_model_dir = NULL;
    tmp.tokenizer_dir = NULL;
    /* resolve base_model on a shallow copy, then take its folder */
    int rc = config_resolve_model(&tmp);
    if (!rc)
        rc = tokenizer_load(tk, tmp.tokenizer_dir);
    free(tmp.base_model_dir);
    free(tmp.tokenizer_dir);
    return rc;
}

int cmd_prep(int argc, char **argv)
{
    prep_cli pc = {0};
    cli_spec spec = {
        .command = "prep",
        .usage = "CONFIG [--set key=value]... [--strict] [--tokenizer DIR]",
        .summary = prep_summary,
        .options_help = prep_options_help,
        .options = prep_options,
        .on_option = prep_on_option,
        .ctx = &pc,
        .config_positional = 1,
        .config_required = 1,
        .max_args = 0,
    };
    cli_common cli;
    rubric_config cfg;
    int done = 0;
    int rc = cli_begin(argc, argv, &spec, &cli, &cfg, &done);
    if (done)
        return rc;
    if (cli.strict)
        cfg.strict = 1;

    tokenizer *tk = NULL;
    char *cache = NULL;
    prep_stats st;
    rc = config_check_datasets(&cfg);
    if (!rc)
        rc = load_tokenizer(&cfg, pc.tokenizer_dir, &tk);
    if (!rc)
        rc = prep_run(&cfg, tk, &cache, &st);
    if (rc)
        log_error("%s", err_msg());
    else
        prep_stats_print(&st, cache);
    free(cache);
    tokenizer_free(tk);
    config_free(&cfg);
    cli_free(&cli);
    return rc;
}
