/*
 * cuda_reduce.h: warp and block reductions in a fixed order (a butterfly within each warp,
 * then the warps' results in warp order), so a sum is the same on every run.
 * Block sizes are multiples of 32, at most 1024.
 */
#ifndef RUBRIC_CUDA_REDUCE_H
#define RUBRIC_CUDA_REDUCE_H

#include <math.h>

template <typename T> __device__ __forceinline__ T warp_sum(T x)
{
    for (int off = 16; off > 0; off >>= 1)
        x += __shfl_xor_sync(0xffffffffu, x, off);
    return x;
}

__device__ __forceinline__ float warp_max(float x)
{
    for (int off = 16; off > 0; off >>= 1)
        x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, off));
    return x;
}

/* Sum over the block; every thread gets the result. `shared` holds 32 values of T. Contains
 * __syncthreads: every thread of the block must call it. */
template <typename T> __device__ T block_sum(T x, T *shared)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
    x = warp_sum(x);
    __syncthreads(); /* shared may still be read by a previous call */
    if (lane == 0)
        shared[warp] = x;
    __syncthreads();
    T total = 0;
    for (int w = 0; w < n_warps; w++)
        total += shared[w];
    return total;
}

__device__ inline float block_max(float x, float *shared)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
    x = warp_max(x);
    __syncthreads();
    if (lane == 0)
        shared[warp] = x;
    __syncthreads();
    float m = -INFINITY;
    for (int w = 0; w < n_warps; w++)
        m = fmaxf(m, shared[w]);
    return m;
}

#endif
