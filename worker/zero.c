/* zero.c: ZeRO stages 0, 1 and 2 over comm.h, with AdamW (adamw.h) on the local state. */
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

int zero_init(zero_state *z, comm *c, int stage, size_t n_padded, const float *params)
{
    memset(z, 0, sizeof *z);
    if (stage < 0 || stage > 2)
        return err_set(RB_EXIT_INPUT, "zero: stage %d is not supported (0, 1 or 2)", stage);
    if (comm_get_backend(c) != COMM_MPI)
        return err_set(RB_EXIT_INPUT, "zero: the optimizer runs on host buffers and needs the "
                       "MPI backend (got %s)", comm_backend_name(comm_get_backend(c)));
    int n = comm_size(c);
    if (n_padded == 0 || n_padded % (size_t)n != 0)
        return err_set(RB_EXIT_INPUT, "zero: the flat buffer has %zu elements, not a positive "
                       "multiple of the %d workers (pad it with zero_padded_size)", n_padded, n);

    z->comm = c;
    z->stage = stage;
    z->rank = comm_rank(c);
    z->n_workers = n;
    z->n_padded = n_padded;
    z->part_len = n_padded / (size_t)n;
    z->part_begin = (size_t)z->rank * z->part_len;
    z->state_begin = stage == 0 ? 0 : z->part_begin;
    z->state_len = stage == 0 ? n_padded : z->part_len;

    /* the optimizer state covers the partition only (stages 1 and 2) */
    z->master = xmalloc(z->state_len * sizeof(float));
    memcpy(z->master, params + z->state_begin, z->state_len * sizeof(float));
    z->exp_avg = xcalloc(z->state_len, sizeof(float));
    z->exp_avg_sq = xcalloc(z->state_len, sizeof(float));
    if (stage == 2)
        z->grad_shard = xcalloc(z->part_len, sizeof(float));
    return 0;
}

void zero_free(zero_state *z)
{
    free(z->master);
    free(z->exp_avg);
    free(z->exp_avg_sq);
    free(z->grad_shard);
    memset(z, 0, sizeof *z);
}

size_t zero_state_elements(const zero_state *z) { return z->state_len; }

/* Sum the gradients over the workers; returns where this worker's state-range gradient is. */
static int reduce_grads(zero_state *z, float *grads, float **g_local)
{
    int rc;
    if (z->stage == 2) {
        rc = comm_reduce_scatter(z->comm, grads, z->grad_shard, z->part_len, COMM_F32);
        *g_local = z->grad_shard;
    } else {
        rc = comm_all_reduce(z->comm, grads, grads, z->n_padded, COMM_F32);
        *g_local = grads + z->state_begin;
    }
    return rc ? err_prefix(rc, "zero stage %d: reducing the gradients", z->stage) : 0;
}

/* Global squared norm: partitions' squared norms summed over the workers (stages 1 and 2). */
static int global_sq_norm(zero_state *z, const float *g_local, double *sq)
{
    *sq = adamw_grad_sq_norm(g_local, (int64_t)z->state_len);
    if (z->stage == 0)
        return 0;
    int rc = comm_all_reduce(z->comm, sq, sq, 1, COMM_F64);
    return rc ? err_prefix(rc, "zero: all-reducing the gradient norm") : 0;
}

int zero_sync_params(zero_state *z, float *params)
{
    memcpy(params + z->state_begin, z->master, z->state_len * sizeof(float));
    if (z->stage == 0)
        return 0;
    int rc = comm_all_gather(z->comm, params + z->part_begin, params, z->part_len, COMM_F32);
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
        adamw_grad_scale(g, (int64_t)z->state_len, coef);
        adamw_hparams ah = {h->beta1, h->beta2, h->eps, h->weight_decay};
        adamw_step(z->master, g, z->exp_avg, z->exp_avg_sq, (int64_t)z->state_len, h->step,
                   h->lr, &ah);

        /* 4. every worker gets the updated parameters (all-gather of the partitions) */
        if ((rc = zero_sync_params(z, params)))
            return rc;
    }

    /* 5. the gradients are consumed */
    memset(grads, 0, z->n_padded * sizeof(float));
    if (z->grad_shard)
        memset(z->grad_shard, 0, z->part_len * sizeof(float));
    info->bytes_sent = comm_bytes_sent(z->comm) - bytes0;
    return 0;
}
