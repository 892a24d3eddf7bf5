/*
 * zero.h: data-parallel optimizer steps over a flat trainable buffer (ZeRO stages 0, 1, 2).
 *
 * The trainable parameters are one flat fp32 buffer of n_padded elements, n_padded divisible by
 * the worker count N. Partition p owns elements [p*n_padded/N, (p+1)*n_padded/N).
 *
 *   stage 2  reduce-scatter the gradient buffer: each worker keeps the summed gradient of its
 *            partition only (grad_shard); fp32 master, exp_avg and exp_avg_sq exist only for the
 *            partition; after AdamW the partitions are all-gathered into every worker's params.
 *   stage 1  all-reduce the gradients; optimizer state sharded as in stage 2; all-gather.
 *   stage 0  all-reduce the gradients; every worker holds the whole optimizer state and updates
 *            the whole buffer (no all-gather).
 *
 * Global gradient norm: sqrt(all_reduce(sum over partitions of the partition's squared norm)),
 * in double (stages 0/1 compute it from the whole reduced buffer). Clipping as torch's
 * clip_grad_norm_: scale = max_grad_norm / (norm + 1e-6) when that is below 1. A non-finite
 * norm skips the step on every worker alike: parameters and optimizer state are left as they
 * were, and the step reports skipped = 1 (the caller says so, loudly).
 *
 * Gradients arrive already scaled by 1/N_total (N_total: supervised tokens of the whole step
 * over all workers), so the collectives only sum. zero_step consumes the gradients: it leaves
 * the caller's gradient buffer zeroed for the next step's accumulation.
 *
 * Buffers are host memory: the comm must be COMM_MPI. (A device-memory path needs a device
 * AdamW: not in this version.)
 */
#ifndef RUBRIC_ZERO_H
#define RUBRIC_ZERO_H

#include <stddef.h>
#include <stdint.h>

#include "comm.h"

typedef struct {
    double lr;
    double beta1, beta2, eps;
    double weight_decay;     /* decoupled (AdamW), applied to every trainable element */
    double max_grad_norm;    /* <= 0: no clipping */
    int64_t step;            /* optimizer step, 1-based (bias correction) */
} zero_hparams;

typedef struct {
    double grad_norm;        /* global norm before clipping (NaN/Inf when skipped) */
    double clip_scale;       /* factor applied to the gradients (1 when not clipped) */
    int skipped;             /* 1: non-finite norm, nothing was applied */
    uint64_t bytes_sent;     /* by this worker during the step (comm.h's ring volume) */
} zero_step_info;

typedef struct {
    comm *comm;
    int stage;               /* 0, 1 or 2 */
    int rank, n_workers;
    size_t n_padded;         /* elements of the whole flat buffer */
    size_t part_begin, part_len;   /* this worker's partition */
    size_t state_begin, state_len; /* range covered by master / exp_avg / exp_avg_sq */
    float *master;           /* [state_len] fp32 master copy */
    float *exp_avg;          /* [state_len] AdamW first moment */
    float *exp_avg_sq;       /* [state_len] AdamW second moment */
    float *grad_shard;       /* [part_len] stage 2 only (NULL otherwise) */
} zero_state;

/* n rounded up to a multiple of n_workers * align (align >= 1). */
size_t zero_padded_size(size_t n, int n_workers, size_t align);

/* Set up the optimizer over `c` (every worker calls it). params [n_padded] is the initial flat
 * buffer (same on every worker); the master copy is taken from it, the moments start at zero.
 * n_padded not divisible by the worker count, or a non-MPI comm, is an error (RB_EXIT_INPUT). */
int zero_init(zero_state *z, comm *c, int stage, size_t n_padded, const float *params);
void zero_free(zero_state *z);

/* One optimizer step: reduce the gradients, norm, clip, AdamW on this worker's state, gather
 * the parameters into params [n_padded]. grads [n_padded] is zeroed on return. */
int zero_step(zero_state *z, float *params, float *grads, const zero_hparams *h,
              zero_step_info *info);

/* After the optimizer state was replaced (checkpoint load): params = master over the state
 * range, then gathered. */
int zero_sync_params(zero_state *z, float *params);

/* Elements of optimizer state held by this worker (per moment); = part_len for stages 1/2. */
size_t zero_state_elements(const zero_state *z);

#endif
