/*
 * cli.h: the options every config-taking command shares (train, prep, score); a command
 * without a config (init-model) takes the logging ones only (cli_spec.no_config).
 *
 *   rubric train [CONFIG] [--config FILE] [--set key=value]... [--strict] [--print-config]
 *                [--log-level LEVEL] [--quiet] [--log-all-ranks] [-h|--help] [own options]
 *
 * A command passes its own options in a cli_spec; they are parsed in the same getopt_long pass
 * and handed to spec->on_option. Usage errors print one line and a hint, and return
 * RB_EXIT_INPUT; under mpirun/srun only the launcher's rank 0 prints them.
 *
 * Typical use in a command:
 *
 *     cli_common cli;
 *     int rc = cli_parse_common(argc, argv, &spec, &cli);
 *     if (rc || cli.help)
 *         return rc;                          // 2 on a usage error, 0 after --help
 *     rubric_config cfg;
 *     rc = cli_load_config(&cli, &cfg);       // load + --set + finalize (+ --print-config)
 *     if (rc || cli.print_config) { config_free(&cfg); cli_free(&cli); return rc; }
 */
#ifndef RUBRIC_CLI_H
#define RUBRIC_CLI_H

#include <getopt.h>
#include <stdio.h>

#include "config.h"
#include "util.h"

/* Called for each of the command's own options; return 0 or RB_EXIT_INPUT (after err_set). */
typedef int (*cli_option_fn)(int opt, const char *arg, void *ctx);

typedef struct {
    const char *command;            /* "train": for messages and the usage line */
    const char *usage;              /* after "usage: rubric train ", e.g. "[CONFIG] [options]" */
    const char *summary;            /* one paragraph printed by --help, or NULL */
    const char *options_help;       /* the command's own options, one per line, or NULL */
    const struct option *options;   /* its own long options, zero-terminated, or NULL;
                                     * use `val` values below CLI_OPT_BASE */
    const char *short_options;      /* its own short options for getopt ("o:"), or NULL;
                                     * -c, -h and -q are taken by the common options */
    cli_option_fn on_option;        /* required when options or short_options are given */
    void *ctx;                      /* passed to on_option */
    int config_positional;          /* the first positional argument is the config */
    int config_required;            /* a config is needed (usage error without one) */
    int max_args;                   /* positional arguments allowed besides the config */
    int no_config;                  /* the command takes no config: --config, --set, --strict
                                     * and --print-config are not among its options */
} cli_spec;

/* The common options' `val` values in struct option start here. */
enum { CLI_OPT_BASE = 0x1000 };

typedef struct {
    const char *config_path;        /* --config or the positional config; NULL when none */
    char **sets;                    /* --set assignments, in order */
    int n_sets;
    int strict;                     /* --strict */
    int print_config;               /* --print-config: print the resolved config and stop */
    int quiet;                      /* --quiet: warnings and errors only */
    int log_all_ranks;              /* --log-all-ranks */
    int log_level;                  /* --log-level as enum log_level, or -1 */
    int help;                       /* --help was printed: the command returns 0 */
    char **args;                    /* other positional arguments (pointers into argv) */
    int n_args;
} cli_common;

/*
 * Parse argv (argv[0] is the command name). Applies the log options at once (log_set_level,
 * log_set_all_ranks). Returns 0, or RB_EXIT_INPUT after printing the error and a hint.
 * Free with cli_free() in every case.
 */
int cli_parse_common(int argc, char **argv, const cli_spec *spec, cli_common *out);

/*
 * The config of a command: config_load (defaults only when no config was given), each --set in
 * order, config_finalize; with --print-config, the resolved YAML goes to stdout (rank 0 only).
 * Returns 0 or an exit code with the message printed. Free cfg with config_free() in every case.
 */
int cli_load_config(const cli_common *cli, rubric_config *cfg);

/*
 * cli_parse_common, then cli_load_config: the start of a config-taking command. Sets *done = 0
 * when the command goes on (free cli and cfg later); otherwise (--help, --print-config, or an
 * error) everything is already freed, *done = 1, and the return value is the exit code.
 */
int cli_begin(int argc, char **argv, const cli_spec *spec, cli_common *cli, rubric_config *cfg,
              int *done);

/* Print the command's --help text to `out`. */
void cli_print_help(const cli_spec *spec, FILE *out);

/* Print "rubric <cmd>: error: <msg>" and the hint line (rank 0 of the launch only); returns
 * RB_EXIT_INPUT. For a command's own usage checks after parsing. */
int cli_usage_error(const cli_spec *spec, const char *fmt, ...) RB_PRINTF(2, 3);

/* The rank the launcher (mpirun, srun) gives this process, read from its environment before
 * MPI_Init; 0 when not launched by one. */
int cli_launch_rank(void);

void cli_free(cli_common *cli);

#endif
