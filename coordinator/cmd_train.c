/* cmd_train.c: `rubric train CONFIG`: LoRA / QLoRA fine-tuning, coordinator + ZeRO workers. */
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "config.h"
#include "log.h"
#include "ops.h"
#include "train.h"
#include "util.h"
#include "world.h"

enum { OPT_RESUME = 1, OPT_REQUEUE, OPT_TOKENIZER, OPT_STEP_TIMEOUT, OPT_BACKEND };

static const struct option train_long_options[] = {
    {"resume", required_argument, NULL, OPT_RESUME},
    {"requeue", no_argument, NULL, OPT_REQUEUE},
    {"tokenizer", required_argument, NULL, OPT_TOKENIZER},
    {"step-timeout", required_argument, NULL, OPT_STEP_TIMEOUT},
    {"backend", required_argument, NULL, OPT_BACKEND},
    {NULL, 0, NULL, 0},
};

static int train_on_option(int opt, const char *arg, void *ctx)
{
    train_options *o = ctx;
    switch (opt) {
    case OPT_RESUME:
        o->resume = arg;
        break;
    case OPT_REQUEUE:
        o->requeue = 1;
        break;
    case OPT_TOKENIZER:
        o->tokenizer_dir = arg;
        break;
    case OPT_BACKEND:
        o->backend = arg;
        return kernel_backend_name_check(arg, "--backend");
    case OPT_STEP_TIMEOUT:
        o->step_timeout_s = atof(arg);
        if (o->step_timeout_s <= 0)
            return err_set(RB_EXIT_INPUT, "--step-timeout: '%s' is not a positive number of "
                           "seconds", arg);
        break;
    }
    return 0;
}

static const char train_summary[] =
    "Fine-tune LoRA / QLoRA adapters on the prepared dataset of CONFIG. Run it alone (one\n"
    "process: coordinator and one worker) or under mpirun / srun: rank 0 coordinates (data,\n"
    "schedule, logs, evaluation, checkpoints) and ranks 1..N are data-parallel workers with\n"
    "ZeRO (deepspeed: stage 2 by default: gradients reduce-scattered, AdamW state sharded).\n"
    "Each step prints `step S/T | loss | lr | norm | tok/s | ms`; output_dir gets\n"
    "metrics.jsonl (one row per step and per evaluation) and checkpoint-<step>.h5 every\n"
    "save_steps and at the end (see `rubric inspect`). An output_dir holding checkpoints of\n"
    "an earlier run is refused (exit 2) unless the run resumes (--resume, --requeue,\n"
    "resume_from_checkpoint); a run from step 0 starts a fresh metrics.jsonl, a resumed one\n"
    "drops the rows past its checkpoint. output_dir is checked before the model loads: a\n"
    "file, or a folder that cannot be made or written, is exit 2, and so is an output_dir\n"
    "another rubric train is using (locked: .rubric-train.lock). SIGTERM or SIGUSR1 on\n"
    "rank 0, or Ctrl-C (SIGINT) on one process without mpirun, saves a checkpoint after the\n"
    "current step and exits 0 (a second Ctrl-C exits at once). mpirun itself, when IT gets\n"
    "SIGTERM, passes SIGTERM to the ranks, which save the checkpoint, but then exits\n"
    "non-zero: look for `checkpoint of step N saved` in the log. A worker that dies or\n"
    "stops answering ends the job (exit 1) with a message naming its rank.\n"
    "With score_after_train: FILE and/or test_datasets in CONFIG, each file is scored after\n"
    "the final checkpoint on the same ranks with the trained model (see `rubric score`):\n"
    "output_dir gets predictions-<name>.jsonl and predictions-<name>.metrics.json (majority\n"
    "baseline from the training data). A failure to score exits 1; the checkpoint is safe.\n"
    "Limitations: a resume is bitwise only with the same worker count, the same backend and\n"
    "lora_dropout 0 (the dropout stream is not checkpointed); with another worker count the\n"
    "global batch (workers x accumulation x micro-batch) and so the data order change.";

static const char train_options_help[] =
    "      --resume PATH|auto   continue from a checkpoint (auto: the newest valid one in\n"
    "                           output_dir; default: resume_from_checkpoint)\n"
    "      --requeue            resume from output_dir when a checkpoint is there; after a\n"
    "                           SIGTERM/SIGUSR1 save, `scontrol requeue` the Slurm job\n"
    "      --tokenizer DIR      folder with tokenizer.json (default: the base model's)\n"
    "      --step-timeout S     base wait for the workers' reports, seconds (default 60;\n"
    "                           the wait also grows with the slowest step)\n"
    "      --backend NAME       the workers' kernels: cuda (one GPU per worker, NCCL), cpu\n"
    "                           (MPI), or auto: cuda when the workers find GPUs, cpu when\n"
    "                           none does, a mix is an error (default: $RUBRIC_BACKEND,\n"
    "                           else auto); testing only: cpu-staged (the CPU behind\n"
    "                           device-style memory, docs/cuda.md)\n";

int cmd_train(int argc, char **argv)
{
    train_install_signals(cli_launch_rank() == 0);
    world w;
    int rc = world_init(&w, &argc, &argv);
    if (rc) {
        log_error("%s", err_msg());
        return rc;
    }
    train_options opt;
    train_options_defaults(&opt);
    cli_spec spec = {
        .command = "train",
        .usage = "CONFIG [--set key=value]... [--resume PATH|auto] [--requeue]",
        .summary = train_summary,
        .options_help = train_options_help,
        .options = train_long_options,
        .on_option = train_on_option,
        .ctx = &opt,
        .config_positional = 1,
        .config_required = 1,
        .max_args = 0,
    };
    cli_common cli;
    rubric_config cfg;
    config_defaults(&cfg);
    rc = cli_parse_common(argc, argv, &spec, &cli);
    if (!rc && !cli.help &&
        (rc = kernel_backend_name_check(opt.backend, "RUBRIC_BACKEND in the environment")) &&
        cli_launch_rank() == 0)
        log_error("%s", err_msg());
    if (!rc && !cli.help) {
        config_free(&cfg);
        rc = cli_load_config(&cli, &cfg);
        if (!rc && !cli.print_config) {
            if (cli.strict)
                cfg.strict = 1;

            /* rank 0 reads the data: its files are checked before output_dir is made */
            int mine = w.rank == 0 ? config_check_datasets(&cfg) : 0;
            if (!mine && w.rank == 0)
                mine = config_check_score_files(&cfg);
            MPI_Allreduce(&mine, &rc, 1, MPI_INT, MPI_MAX, w.world);
            if (mine)
                log_error("%s", err_msg());
            else if (!rc && (rc = config_resolve_model(&cfg)))
                log_error("%s", err_msg());

            /* output_dir must take files now, not at the first checkpoint hours later; a run
             * that fails leaves no folder it made that holds nothing but its lock file
             * (train_run, which holds the lock) */
            char *made_top = NULL;
            if (!rc) {
                made_top = w.rank == 0 ? path_first_missing(cfg.output_dir) : NULL;
                mine = w.rank == 0 ? config_check_output_dir(&cfg) : 0;
                MPI_Allreduce(&mine, &rc, 1, MPI_INT, MPI_MAX, w.world);
                if (mine)
                    log_error("%s", err_msg());
            }
            if (!rc) {
                opt.made_top = made_top;
                rc = train_run(&w, &cfg, &opt);
                if (rc)
                    log_error("%s", err_msg());
            }
            free(made_top);
        }
    }
    config_free(&cfg);
    cli_free(&cli);
    world_finalize(&w);
    return rc;
}
