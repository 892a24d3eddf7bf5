/* zero.c: ZeRO stages 0, 1 and 2 over comm.h, with the backend's AdamW op on the local state. */
#include "zero.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "adamw.h"
#include "util.h"

size_t zero_padded_size(size_t n, int n_workers, size_t align)
{
    size_t unit = (size_t)n_workers * (align ? align : 1);
    return (n + unit - 1) / unit * unit;
}

int zero_init(zero_state *z, comm *c, comm *host_comm, const kernel_ops *ops, int stage,
              size_t n_padded, const float *params)
{
    memset(z, 0, sizeof *z);
    if (!host_comm)
        host_comm = c;
    if (stage < 0 || stage > 2)
        return err_set(RB_EXIT_INPUT, "zero: stage %d is not supported (0, 1 or 2)", stage);
    if (comm_get_backend(host_comm) != COMM_MPI)
        return err_set(RB_EXIT_INPUT, "zero: the comm for host scalars must be MPI (got %s)",
                       comm_backend_name(comm_get_backend(host_comm)));
    if (comm_get_backend(c) == COMM_NCCL && ops->host_memory)
        return err_set(RB_EXIT_INPUT, "zero: NCCL collectives need device buffers, and the %s "
                       "backend's are host memory", ops->name);
    if (comm_get_backend(c) == COMM_MPI && strcmp(ops->name, "cuda") == 0)
        return err_set(RB_EXIT_INPUT, "zero: the CUDA backend's buffers are device memory, "
                       "which MPI collectives cannot read: use the NCCL comm");
    int n = comm_size(c);
    if (comm_size(host_comm) != n)
        return err_set(RB_EXIT_INPUT, "zero: the host comm has %d ranks, the buffers' %d",
                       comm_size(host_comm), n);
    if (n_padded == 0 || n_padded % (size_t)n != 0)
        return err_set(RB_EXIT_INPUT, "zero: the flat buffer has %zu elements, not a positive "
                       "multiple of the %d workers (pad it with zero_padded_size)", n_padded, n);

    z->comm = c;
    z->host_comm = host_comm;
    z->ops = ops;
    z->stage = stage;
    z->rank = comm_rank(c);
    z->n_workers = n;
    z->n_padded = n_padded;
    z->part_len = n_padded / (size_t)n;
    z->part_begin = (size_t)z->rank * z->part_len;
    z->state_begin = stage == 0 ? 0 : z->part_begin;
    z->state_len = stage == 0 ? n_padded : z->part_len;

    /* the optimizer state covers the partition only (stages 1 and 2); alloc zeroes */
    size_t bytes = z->state_len * sizeof(float);
    z->master = ops->alloc(bytes);
    ops->copy(z->master, params + z->state_begin, bytes);
    z->exp_avg = ops->alloc(bytes);
    z->exp_avg_sq = ops->alloc(bytes);
    if (stage == 2)
        z->grad_shard = ops->alloc(z->part_len * sizeof(float));
    if (comm_get_backend(c) == COMM_MPI && !ops->host_memory)
        z->host_stage = xmalloc((n_padded + z->part_len) * sizeof(float));
    return 0;
}

void zero_free(zero_state *z)
{
    if (z->ops) {
        z->ops->free(z->master);
        z->ops->free(z->exp_avg);
        z->ops->free(z->exp_avg_sq);
        z->ops->free(z->grad_shard);
    }
    free(z->host_stage);
    memset(z, 0, sizeof *z);
}

size_t zero_state_elements(const zero_state *z) { return z->state_len; }

/* Sum the gradients over the workers; returns where this worker's state-range gradient is. */
static int reduce_grads(zero_state *z, float *grads, float **g_local)
{
    int rc;
    float *h = z->host_stage; /* MPI on non-host backend memory: through host copies */
    if (h)
        z->ops->download(h, grads, z->n_padded * sizeof(float));
    if (z->stage == 2) {
        rc = h ? comm_reduce_scatter(z->comm, h, h + z->n_padded, z->part_len, COMM_F32)
               : comm_reduce_scatter(z->comm, grads, z->grad_shard, z->part_len, COMM_F32);
        if (!rc && h)
            z->ops->upload(z->grad_shard, h + z->n_padded, z->part_len * sizeof(float));
        *g_local = z->grad_shard;
    } else {
        float *buf = h ? h : grads;
        rc = comm_all_reduce(z->comm, buf, buf, z->n_padded, COMM_F32);
        if (!rc && h)
            z->ops->upload(grads, h, z->n_padded * sizeof(float));
        *g_local = grads + z->state_begin;
    }
    return rc ? err_prefix(rc, "zero stage %d: reducing the gradients", z->stage) : 0;
}

/* Global squared norm: partitions' squared norms summed over the workers (stages 1 and 2). */
static int global_sq_norm(zero_state *z, const float *g_local, double *sq)
{
    *sq = z->ops->sumsq((int64_t)z->state_len, g_local);
    if (z->stage == 0)
        return 0;
    int rc = comm_all_reduce(z->host_comm, sq, sq, 1, COMM_F64);
    return rc ? err_prefix(rc, "zero: all-reducing the gradient norm") : 0;
}

int zero_sync_params(zero_state *z, float *params)
{
    z->ops->copy(params + z->state_begin, z->master, z->state_len * sizeof(float));
    if (z->stage == 0)
        return 0;
    int rc;
    float *h = z->host_stage; /* MPI on non-host backend memory: through a host copy */
    if (h) {
        z->ops->download(h + z->part_begin, params + z->part_begin,
                         z->part_len * sizeof(float));
        rc = comm_all_gather(z->comm, h + z->part_begin, h, z->part_len, COMM_F32);
        if (!rc)
            z->ops->upload(params, h, z->n_padded * sizeof(float));
    } else {
        rc = comm_all_gather(z->comm, params + z->part_begin, params, z->part_len, COMM_F32);
    }
    return rc ? err_prefix(rc, "zero stage %d: gathering the parameters", z->stage) : 0;
}

int zero_step(zero_state *z, float *params, float *grads, const zero_hparams *h,
              zero_step_info *info)
{
    memset(info, 0, sizeof *info);
    uint64_t bytes0 = comm_bytes_sent(z->comm);

    /* 1. sum the gradients: reduce-scatter (stage 2) or all-reduce (stages 0, 1) */
    float *g;
    int rc = reduce_grads(z, grads, &g);
    if (rc)
        return rc;

    /* 2. global norm and clip coefficient; a non-finite norm skips the step everywhere */
    double sq;
    if ((rc = global_sq_norm(z, g, &sq)))
        return rc;
    float coef = 1.0f;
    if (adamw_clip_coef(sq, h->max_grad_norm, &info->grad_norm, &coef) != 0) {
        info->grad_norm = sqrt(sq);
        info->skipped = 1;
        info->clip_scale = 0;
    } else {
        info->clip_scale = coef;

        /* 3. clip, then AdamW on this worker's master copy and moments */
        if (coef != 1.0f)
            z->ops->scale((int64_t)z->state_len, coef, g);
        const adamw_scalars s = adamw_scalars_at(h->lr, h->beta1, h->beta2, h->eps,
                                                 h->weight_decay, h->step);
        z->ops->adamw(z->master, g, z->exp_avg, z->exp_avg_sq, (int64_t)z->state_len, &s);

        /* 4. every worker gets the updated parameters (all-gather of the partitions) */
        if ((rc = zero_sync_params(z, params)))
            return rc;
    }

    /* 5. the gradients are consumed */
    z->ops->memset0(grads, z->n_padded * sizeof(float));
    if (z->grad_shard)
        z->ops->memset0(z->grad_shard, z->part_len * sizeof(float));
    info->bytes_sent = comm_bytes_sent(z->comm) - bytes0;
    return 0;
}
