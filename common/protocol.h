/*
 * protocol.h: the messages between the coordinator (rank 0) and the workers (ranks 1..N).
 *
 * The coordinator drives: for every optimizer step, evaluation, checkpoint and the end it sends
 * one protocol_cmd to every worker (point to point, tag PROTOCOL_TAG_CMD); a worker answers a
 * STEP or EVAL with one protocol_report (tag PROTOCOL_TAG_REPORT). SAVE and LOAD are followed by
 * a collective checkpoint call over MPI_COMM_WORLD on every rank; STOP ends the workers' loop.
 *
 * The workers compute everything else themselves from the prepared dataset and the
 * deterministic schedule (coordinator/prep.h): which micro-batches are theirs, and the step's
 * supervised-token total (an all-reduce among the workers before the backward pass), so no
 * token crosses the coordinator.
 *
 * The coordinator waits for reports with a deadline: a worker that dies or hangs makes the job
 * exit non-zero with a message naming its rank (protocol_gather_reports), never a hang.
 * Messages are fixed-size structs sent as bytes (all ranks run the same binary).
 */
#ifndef RUBRIC_PROTOCOL_H
#define RUBRIC_PROTOCOL_H

#include <stdint.h>

#include "world.h"

enum { PROTOCOL_TAG_CMD = 7101, PROTOCOL_TAG_REPORT = 7102 };

typedef enum {
    PROTO_STEP = 1,   /* one optimizer step */
    PROTO_EVAL = 2,   /* loss over the validation bins */
    PROTO_SAVE = 3,   /* write a checkpoint (collective ckpt_save follows) */
    PROTO_STOP = 4,   /* leave the loop (training done, or a signal) */
} protocol_kind;

typedef struct {
    int32_t kind;          /* protocol_kind */
    int32_t flags;         /* reserved, 0 */
    int64_t step;          /* 0-based optimizer step (STEP), or steps done (EVAL, SAVE) */
    int64_t epoch;         /* epoch of that step */
    int64_t step_in_epoch; /* its index in the epoch's schedule */
    double lr;             /* learning rate of the step (STEP) */
} protocol_cmd;

typedef struct {
    int32_t kind;          /* the command answered */
    int32_t skipped;       /* STEP: 1 when the update was skipped (non-finite norm) */
    int64_t step;
    double loss_sum;       /* this worker's sum of token losses */
    int64_t n_supervised;  /* this worker's supervised tokens */
    int64_t n_tokens;      /* this worker's real (non-padding) tokens */
    double grad_norm;      /* STEP: global norm before clipping (same on every worker) */
    double compute_ms;     /* forward + backward (+ optimizer) time on this worker */
    uint64_t bytes_sent;   /* STEP: collective bytes this worker sent (comm.h's ring volume) */
} protocol_report;

/* Coordinator: send cmd to every worker rank (1..N). */
int protocol_send_cmd(const world *w, const protocol_cmd *cmd);
/* Worker: wait for the next command from rank 0. */
int protocol_recv_cmd(const world *w, protocol_cmd *cmd);
/* Worker: answer rank 0. */
int protocol_send_report(const world *w, const protocol_report *r);
/*
 * Coordinator: one report from each worker into reports[0..N) (index = worker rank - 1). Waits
 * at most timeout_s seconds in all; then, or when a receive fails, it records an error naming
 * the ranks that did not answer and returns RB_EXIT_RUNTIME (the caller aborts the job).
 */
int protocol_gather_reports(const world *w, protocol_report *reports, double timeout_s,
                            const char *what);

const char *protocol_kind_name(int kind);

#endif
