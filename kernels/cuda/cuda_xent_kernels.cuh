/*
 * cuda_xent_kernels.cuh: the row kernel of cuda_xent.cu, apart from its launch so that
 * tests/gpu/emu_kernels.cpp can run it on the host.
 */
#ifndef RUBRIC_CUDA_XENT_KERNELS_CUH
#define RUBRIC_CUDA_XENT_KERNELS_CUH

#include <math.h>
#include <stdint.h>

#include "cuda_reduce.h"

#define XENT_THREADS 512

/* One block per row of logits. A target outside [0, vocab) gives a NaN loss (the CPU would
 * read out of bounds), so a bad target shows in the loss instead of being read. */
__global__ void __launch_bounds__(XENT_THREADS)
xent_row_kernel(float *logits, int vocab, const int32_t *targets, float grad_scale, int grad,
                double *loss_out, float *row_loss)
{
    __shared__ float shared_f[32];
    __shared__ double shared_d[32];
    float *row = logits + (int64_t)blockIdx.x * vocab;
    int target = targets[blockIdx.x];

    /* max, then the sum of exp in double */
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x)
        mx = fmaxf(mx, row[j]);
    mx = block_max(mx, shared_f);
    double sum = 0.0;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x)
        sum += (double)expf(row[j] - mx);
    sum = block_sum(sum, shared_d);

    /* the loss in double, as cpu_xent.c: max + log(sum) - logit[target] */
    int valid = target >= 0 && target < vocab;
    double loss = valid ? (double)mx + log(sum) - (double)row[target] : (double)NAN;
    __syncthreads(); /* row[target] is read by all before it is overwritten */
    if (threadIdx.x == 0) {
        loss_out[blockIdx.x] = loss;
        if (row_loss)
            row_loss[blockIdx.x] = (float)loss;
    }
    if (!grad)
        return;

    /* dlogits = grad_scale * (softmax - onehot), in place: exp(l - max) * (grad_scale / sum) */
    float k = (float)((double)grad_scale / sum);
    for (int j = threadIdx.x; j < vocab; j += blockDim.x)
        row[j] = expf(row[j] - mx) * k;
    __syncthreads();
    if (threadIdx.x == 0 && valid)
        row[target] -= grad_scale;
}

#endif
