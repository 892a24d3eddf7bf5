/*
 * worker.h: a training worker (ranks 1..N, or rank 0's in-process worker when rubric runs as
 * one process): the model with its LoRA buffer, its ZeRO optimizer state, the prepared dataset
 * and the schedule, and the handlers of the coordinator's commands (common/protocol.h).
 *
 * One optimizer step on a worker:
 *   1. its micro-batches of (epoch, step) from the deterministic schedule (prep.h)
 *   2. N_total = supervised tokens of the whole step, all workers (an all-reduce among them)
 *   3. forward + backward of each micro-batch with grad_scale 1 / N_total
 *   4. zero_step: reduce-scatter, global norm, clip, AdamW on the partition, all-gather
 *   5. a report: loss sum, tokens, norm, time, bytes sent
 */
#ifndef RUBRIC_WORKER_H
#define RUBRIC_WORKER_H

#include <stdint.h>

#include "ckpt.h"
#include "comm.h"
#include "config.h"
#include "model.h"
#include "prep.h"
#include "protocol.h"
#include "world.h"
#include "zero.h"

typedef struct {
    const world *w;
    const rubric_config *cfg;
    model *m;
    model_trainable_view tv;
    const kernel_ops *ops;   /* the model's backend (every worker the same kind) */
    comm *comm;              /* over the workers' communicator: NCCL on GPUs, else MPI */
    comm *host_comm;         /* MPI over the same ranks (host scalars); == comm when MPI */
    char backend_desc[160];  /* "cuda: NVIDIA A40 ..." for rank 0's banner */
    float *stage;            /* host copies of the checkpoint slice (device backends only) */
    zero_state zero;
    prep_dataset *ds;
    prep_schedule sched;
    ckpt_param *table;       /* the trainable tensors, for checkpoints */
    int n_table;
    int64_t *bins;           /* [grad_accum * micro_batch_size] */
    packed_batch *batches;   /* [grad_accum] */
} worker_ctx;

/* First (it clears *wk): choose the backend, `backend` cpu, cuda or auto (NULL: auto). Every
 * worker must get the same kind, and with cuda each its own GPU (device local index % the
 * devices it sees); else RB_EXIT_INPUT naming the worker and host. Collective over the
 * workers; cheap, so a run can fail here before its data preparation. */
int worker_pick_backend(worker_ctx *wk, const world *w, const char *backend);
/* Then: load the model, open the prepared dataset, set up ZeRO (NCCL collectives on GPUs, MPI
 * on the CPU). Collective over the workers. */
int worker_init(worker_ctx *wk, const rubric_config *cfg, const char *dataset_path);
void worker_free(worker_ctx *wk);

/* The handlers (cmd->kind STEP and EVAL); the report is filled for the coordinator. */
int worker_step(worker_ctx *wk, const protocol_cmd *cmd, protocol_report *rep);
int worker_eval(worker_ctx *wk, const protocol_cmd *cmd, protocol_report *rep);

/* This worker's flat range for a checkpoint: its partition when saving; when loading, the
 * range its optimizer state covers (the partition, or everything for ZeRO stage 0). The
 * slice's pointers are host memory: on a device backend, host copies (downloaded now when
 * saving; worker_after_load uploads what a load put there). */
void worker_ckpt_slice(worker_ctx *wk, int for_load, ckpt_slice *s);
/* After a checkpoint was loaded into the slice: make every worker's parameters whole again. */
int worker_after_load(worker_ctx *wk);

/* The loop of a worker rank: wait for commands, handle them, answer, until STOP. */
int worker_serve(worker_ctx *wk);

#endif
