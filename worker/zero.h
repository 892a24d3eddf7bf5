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
 * Every buffer (params, grads, master, moments, grad_shard) lives in the memory of the kernel
 * backend `ops` and every computation on them is one of its ops (sumsq, scale, adamw, copy,
 * memset0), so the same code runs on host memory with the CPU backend and MPI collectives, and
 * on device memory with the CUDA backend and NCCL collectives. The global norm's one double is
 * all-reduced over `host_comm` (MPI, host memory; the same comm when that one is MPI). MPI
 * collectives on a backend whose buffers are not host memory (the cpu-staged test backend) go
 * through host copies (download, collective, upload): the same sums, bitwise. AdamW is
 * adamw_math.h's arithmetic on either backend, so one worker's step is bitwise the host
 * reference's (tests/mpi/zero_check.c).
 */
#ifndef RUBRIC_ZERO_H
#define RUBRIC_ZERO_H

#include <stddef.h>
#include <stdint.h>

#include "comm.h"
#include "ops.h"

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
    comm *comm;              /* collectives on the buffers: MPI (host) or NCCL (device) */
    comm *host_comm;         /* MPI: host scalars (the squared norm) */
    const kernel_ops *ops;   /* the backend holding every buffer */
    int stage;               /* 0, 1 or 2 */
    int rank, n_workers;
    size_t n_padded;         /* elements of the whole flat buffer */
    size_t part_begin, part_len;   /* this worker's partition */
    size_t state_begin, state_len; /* range covered by master / exp_avg / exp_avg_sq */
    float *master;           /* [state_len] fp32 master copy (backend memory) */
    float *exp_avg;          /* [state_len] AdamW first moment (backend memory) */
    float *exp_avg_sq;       /* [state_len] AdamW second moment (backend memory) */
    float *grad_shard;       /* [part_len] stage 2 only (NULL otherwise; backend memory) */
    float *host_stage;       /* [n_padded + part_len] host copies for MPI collectives on a
                              * backend whose memory is not host memory (cpu-staged); NULL
                              * otherwise */
} zero_state;

/* n rounded up to a multiple of n_workers * align (align >= 1). */
size_t zero_padded_size(size_t n, int n_workers, size_t align);

/* Set up the optimizer over `c` (every worker calls it). params [n_padded] (backend memory) is
 * the initial flat buffer (same on every worker); the master copy is taken from it, the moments
 * start at zero. host_comm: an MPI comm over the same ranks (NULL: c, which must then be MPI).
 * Errors (RB_EXIT_INPUT): n_padded not divisible by the worker count; NCCL collectives on a
 * host-memory backend, or MPI collectives on the CUDA backend's device memory. */
int zero_init(zero_state *z, comm *c, comm *host_comm, const kernel_ops *ops, int stage,
              size_t n_padded, const float *params);
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
