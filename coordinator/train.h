/*
 * train.h: the training run, on every rank (rank 0 coordinates, ranks 1..N work; one process
 * alone is the coordinator with one in-process worker).
 *
 * Setup (all ranks, in lockstep): rank 0 prepares (or reuses) the dataset cache and tells
 * everyone its path; the workers load the model and set up ZeRO; rank 0 gets the table of
 * trainable tensors from the first worker; a checkpoint named by --resume,
 * resume_from_checkpoint or (with --requeue) the newest valid one in output_dir is loaded by
 * every rank, each reading its own slice.
 *
 * The loop (rank 0): per optimizer step a STEP command, the workers' reports, one step line
 * `step 12/300 | loss 1.2345 | lr 1.2e-04 | norm 0.83 | 3,456 tok/s | 812 ms` every
 * logging_steps, one row per step in <output_dir>/metrics.jsonl, evaluation on the validation
 * bins every eval_steps (0: at the end of each epoch), a checkpoint every save_steps and at the
 * end. SIGTERM or SIGUSR1 on rank 0 (Slurm's time limit or preemption), or Ctrl-C on one
 * process without mpirun: checkpoint at the end of the current step and exit 0; with --requeue
 * under Slurm, `scontrol requeue` the job. Without a resume, an output_dir holding checkpoints
 * is refused (exit 2); metrics.jsonl starts fresh at step 0 and, on a resume from step S,
 * keeps only the rows of steps <= S.
 */
#ifndef RUBRIC_TRAIN_H
#define RUBRIC_TRAIN_H

#include "config.h"
#include "world.h"

typedef struct {
    const char *resume;        /* --resume PATH|auto, or NULL (then resume_from_checkpoint) */
    int requeue;               /* --requeue: resume from output_dir if a checkpoint is there;
                                * on a signal, requeue the Slurm job after saving */
    const char *tokenizer_dir; /* --tokenizer, or NULL */
    double step_timeout_s;     /* base of the wait for workers' reports (default 60) */
    const char *backend;       /* --backend: cpu, cuda or auto (default: $RUBRIC_BACKEND, else
                                * auto) */
    const char *made_top;      /* rank 0: the highest folder of output_dir that did not exist
                                * before this command (NULL: output_dir existed); a run that
                                * fails while it holds the lock removes the lock file and these
                                * folders while nothing else is in them */
} train_options;

void train_options_defaults(train_options *o);

/* SIGTERM / SIGUSR1 (time limit, preemption), and SIGINT (Ctrl-C) on one process started
 * without a launcher (a second one ends it at once): the coordinator records them and
 * checkpoints at the next step boundary, even when they come during setup; workers ignore them
 * and follow the coordinator. Call as early as possible (before MPI_Init: use the launcher's
 * rank; whether a launcher started the process is judged at the first call). */
void train_install_signals(int is_coordinator);

/* Run the whole training on this rank. Returns 0 or an exit code (message in err_msg()). */
int train_run(const world *w, rubric_config *cfg, const train_options *opt);

#endif
