/* cli.c: the options shared by the config-taking commands (see cli.h). */
#include "cli.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

enum {
    OPT_CONFIG = CLI_OPT_BASE,
    OPT_SET,
    OPT_STRICT,
    OPT_PRINT_CONFIG,
    OPT_LOG_LEVEL,
    OPT_QUIET,
    OPT_LOG_ALL_RANKS,
    OPT_HELP,
};

static const struct option common_options[] = {
    {"config", required_argument, NULL, OPT_CONFIG},
    {"set", required_argument, NULL, OPT_SET},
    {"strict", no_argument, NULL, OPT_STRICT},
    {"print-config", no_argument, NULL, OPT_PRINT_CONFIG},
    {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
    {"quiet", no_argument, NULL, OPT_QUIET},
    {"log-all-ranks", no_argument, NULL, OPT_LOG_ALL_RANKS},
    {"help", no_argument, NULL, OPT_HELP},
};

static const char config_help[] =
    "  -c, --config FILE     Axolotl-style YAML config (or give it as the first argument)\n"
    "      --set KEY=VALUE   override a config key (repeatable), e.g. --set lora_r=8\n"
    "      --strict          unknown config keys are errors, not warnings\n"
    "      --print-config    print the resolved config as YAML and stop\n";

static const char common_help[] =
    "      --log-level LEVEL error, warn, info (default) or debug\n"
    "  -q, --quiet           warnings and errors only (same as --log-level warn)\n"
    "      --log-all-ranks   let workers print info lines too (tagged with their rank)\n"
    "  -h, --help            this help\n";

int cli_launch_rank(void)
{
    static const char *const vars[] = {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK",
                                       "SLURM_PROCID"};
    for (size_t i = 0; i < RB_ARRAY_LEN(vars); i++) {
        const char *v = getenv(vars[i]);
        if (v && *v)
            return atoi(v);
    }
    return 0;
}

void cli_print_help(const cli_spec *spec, FILE *out)
{
    fprintf(out, "usage: rubric %s %s\n", spec->command, spec->usage ? spec->usage : "");
    if (spec->summary)
        fprintf(out, "\n%s\n", spec->summary);
    if (spec->options_help)
        fprintf(out, "\noptions:\n%s", spec->options_help);
    fprintf(out, "\ncommon options:\n%s%s", spec->no_config ? "" : config_help, common_help);
    fprintf(out, "\nExit codes: 0 success, 1 runtime failure, 2 bad usage or bad input.\n");
    if (!spec->no_config)
        fprintf(out, "Config keys, defaults and meanings: docs/config.md.\n");
}

int cli_usage_error(const cli_spec *spec, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (cli_launch_rank() == 0) {
        fprintf(stderr, "rubric %s: error: %s\n", spec->command, msg);
        fprintf(stderr, "Try 'rubric %s --help'.\n", spec->command);
    }
    return RB_EXIT_INPUT;
}

static int is_config_option(int val)
{
    return val == OPT_CONFIG || val == OPT_SET || val == OPT_STRICT || val == OPT_PRINT_CONFIG;
}

/* The long options: the common ones (less the config ones for a command without a config),
 * then the command's own. */
static struct option *merged_options(const cli_spec *spec)
{
    size_t n_own = 0;
    while (spec->options && spec->options[n_own].name)
        n_own++;
    struct option *all = xcalloc(RB_ARRAY_LEN(common_options) + n_own + 1, sizeof *all);
    size_t n = 0;
    for (size_t i = 0; i < RB_ARRAY_LEN(common_options); i++)
        if (!spec->no_config || !is_config_option(common_options[i].val))
            all[n++] = common_options[i];
    if (n_own)
        memcpy(all + n, spec->options, n_own * sizeof *all);
    return all;
}

/* The message for an option getopt rejected ('?'): a value given to a flag ("--strict=1":
 * glibc sets optopt to the flag's val), an unknown short option, or an unknown long one. */
static int unknown_option_error(const cli_spec *spec, const struct option *longs,
                                const char *arg)
{
    const char *eq = arg && strncmp(arg, "--", 2) == 0 ? strchr(arg, '=') : NULL;
    for (const struct option *o = longs; eq && optopt && o->name; o++)
        if (o->has_arg == no_argument && o->val == optopt &&
            strncmp(o->name, arg + 2, (size_t)(eq - arg - 2)) == 0)
            return cli_usage_error(spec, "--%s takes no value (got '%s'); give it alone, as "
                                   "--%s", o->name, arg, o->name);
    if (optopt > ' ' && optopt < 127)
        return cli_usage_error(spec, "unknown option '-%c'", optopt);
    return cli_usage_error(spec, "unknown option '%s'", arg ? arg : "?");
}

/* One common option into `out`; 0 or a usage error. */
static int take_common(const cli_spec *spec, int opt, const char *arg, cli_common *out)
{
    switch (opt) {
    case 'c':
    case OPT_CONFIG:
        if (out->config_path)
            return cli_usage_error(spec, "two configs given ('%s' and '%s'); give one",
                                   out->config_path, arg);
        out->config_path = arg;
        return 0;
    case OPT_SET:
        if (!strchr(arg, '=') || arg[0] == '=')
            return cli_usage_error(spec, "--set '%s': expected KEY=VALUE, e.g. --set lora_r=8",
                                   arg);
        out->sets = xrealloc(out->sets, (size_t)(out->n_sets + 1) * sizeof *out->sets);
        out->sets[out->n_sets++] = (char *)arg;
        return 0;
    case OPT_STRICT:
        out->strict = 1;
        return 0;
    case OPT_PRINT_CONFIG:
        out->print_config = 1;
        return 0;
    case OPT_LOG_LEVEL:
        out->log_level = log_level_parse(arg);
        if (out->log_level < 0)
            return cli_usage_error(spec, "--log-level '%s': expected error, warn, info or debug",
                                   arg);
        return 0;
    case 'q':
    case OPT_QUIET:
        out->quiet = 1;
        return 0;
    case OPT_LOG_ALL_RANKS:
        out->log_all_ranks = 1;
        return 0;
    }
    return -1;
}

/* The positional arguments: the config first (when the command takes it so), then the rest. */
static int take_positionals(const cli_spec *spec, int argc, char **argv, cli_common *out)
{
    int i = optind;
    if (spec->config_positional && !out->config_path && i < argc)
        out->config_path = argv[i++];
    out->args = argv + i;
    out->n_args = argc - i;
    if (out->n_args > spec->max_args)
        return cli_usage_error(spec, "unexpected argument '%s'", out->args[spec->max_args]);
    if (spec->config_required && !out->config_path)
        return cli_usage_error(spec, "no config given (rubric %s CONFIG.yml, or --config FILE)",
                               spec->command);
    return 0;
}

static void apply_logging(const cli_common *out)
{
    if (out->log_level >= 0)
        log_set_level((enum log_level)out->log_level);
    else if (out->quiet)
        log_set_level(LOG_WARN);
    log_set_all_ranks(out->log_all_ranks);
}

int cli_parse_common(int argc, char **argv, const cli_spec *spec, cli_common *out)
{
    memset(out, 0, sizeof *out);
    out->log_level = -1;
    struct option *longs = merged_options(spec);
    /* a leading ':' reports a missing value as ':' instead of '?' */
    char *shorts = xasprintf(":hq%s%s", spec->no_config ? "" : "c:",
                             spec->short_options ? spec->short_options : "");

    /* one pass over the options, common and own */
    int rc = 0, opt;
    optind = 0; /* glibc: a full restart, so a command may parse more than once */
    opterr = 0;
    while (!rc && (opt = getopt_long(argc, argv, shorts, longs, NULL)) != -1) {
        const char *arg = optarg;
        if (opt == 'h' || opt == OPT_HELP) {
            out->help = 1;
        } else if (opt == '?') {
            rc = unknown_option_error(spec, longs, optind > 0 ? argv[optind - 1] : NULL);
        } else if (opt == ':') {
            rc = cli_usage_error(spec, "option '%s' needs a value", argv[optind - 1]);
        } else if ((rc = take_common(spec, opt, arg, out)) == -1) {
            rc = spec->on_option ? spec->on_option(opt, arg, spec->ctx) : RB_EXIT_INPUT;
            if (rc)
                rc = cli_usage_error(spec, "%s", err_msg());
        }
    }
    free(longs);
    free(shorts);
    if (rc)
        return rc;

    /* --help wins over everything else */
    if (out->help) {
        if (cli_launch_rank() == 0)
            cli_print_help(spec, stdout);
        return 0;
    }
    rc = take_positionals(spec, argc, argv, out);
    if (!rc)
        apply_logging(out);
    return rc;
}

int cli_load_config(const cli_common *cli, rubric_config *cfg)
{
    /* every rank reads the config; only the launch's rank 0 prints its warnings and errors */
    int quiet_rank = cli_launch_rank() != 0;
    enum log_level saved = log_get_level();
    if (quiet_rank)
        log_set_level(LOG_ERROR);

    int rc;
    if (cli->config_path) {
        rc = config_load(cfg, cli->config_path, cli->strict);
    } else {
        config_defaults(cfg);
        cfg->strict = cli->strict;
        rc = 0;
    }
    for (int i = 0; !rc && i < cli->n_sets; i++)
        rc = config_set(cfg, cli->sets[i]);
    if (!rc)
        rc = config_finalize(cfg);
    log_set_level(saved);
    if (rc) {
        if (!quiet_rank)
            log_error("%s", err_msg());
        return rc;
    }
    if (cli->print_config && !quiet_rank) {
        char *yaml = config_to_yaml(cfg);
        fputs(yaml, stdout);
        fflush(stdout);
        free(yaml);
    }
    return 0;
}

void cli_free(cli_common *cli)
{
    free(cli->sets);
    cli->sets = NULL;
    cli->n_sets = 0;
}

int cli_begin(int argc, char **argv, const cli_spec *spec, cli_common *cli, rubric_config *cfg,
              int *done)
{
    *done = 1;
    int rc = cli_parse_common(argc, argv, spec, cli);
    if (rc || cli->help) {
        cli_free(cli);
        return rc;
    }
    rc = cli_load_config(cli, cfg);
    if (rc || cli->print_config) {
        config_free(cfg);
        cli_free(cli);
        return rc;
    }
    *done = 0;
    return 0;
}
