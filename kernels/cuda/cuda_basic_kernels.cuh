/*
 * cuda_basic_kernels.cuh: the kernels of cuda_basic.cu, apart from their launches so that
 * tests/gpu/emu_kernels.cpp can run them on the host under a thread-per-CUDA-thread emulator.
 */
#ifndef RUBRIC_CUDA_BASIC_KERNELS_CUH
#define RUBRIC_CUDA_BASIC_KERNELS_CUH

#include <math.h>
#include <stdint.h>

#include "adamw_math.h"
#include "cuda_hash.h"
#include "cuda_reduce.h"

#define GRID_STRIDE(i, n)                                                                     \
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n);                 \
         i += (int64_t)gridDim.x * blockDim.x)

/* sum of squares: elements per chunk (one block each) */
#define SUMSQ_CHUNK 65536

__global__ void axpy_kernel(int64_t n, float alpha, const float *x, float *y)
{
    GRID_STRIDE(i, n) y[i] = __fadd_rn(y[i], __fmul_rn(alpha, x[i]));
}

__global__ void scale_kernel(int64_t n, float alpha, float *x)
{
    GRID_STRIDE(i, n) x[i] = __fmul_rn(x[i], alpha);
}

__global__ void add_kernel(float *y, const float *x, int64_t n)
{
    GRID_STRIDE(i, n) y[i] = __fadd_rn(y[i], x[i]);
}

__global__ void add_bias_kernel(float *y, const float *bias, int64_t total, int cols)
{
    GRID_STRIDE(i, total) y[i] = __fadd_rn(y[i], bias[i % cols]);
}

__global__ void sumsq_chunks_kernel(const float *x, int64_t n, double *part)
{
    __shared__ double shared[32];
    int64_t start = (int64_t)blockIdx.x * SUMSQ_CHUNK;
    int64_t end = start + SUMSQ_CHUNK < n ? start + SUMSQ_CHUNK : n;
    double s = 0.0;
    for (int64_t i = start + threadIdx.x; i < end; i += blockDim.x)
        s += (double)x[i] * (double)x[i];
    s = block_sum(s, shared);
    if (threadIdx.x == 0)
        part[blockIdx.x] = s;
}

__global__ void sumsq_total_kernel(const double *part, int64_t n_parts, double *total)
{
    __shared__ double shared[32];
    double s = 0.0;
    for (int64_t i = threadIdx.x; i < n_parts; i += blockDim.x)
        s += part[i];
    s = block_sum(s, shared);
    if (threadIdx.x == 0)
        *total = s;
}

/* out[i, :] = in[idx[i], :] for idx either uint32 tokens or int32 row numbers */
template <typename I>
__global__ void gather_kernel(float *out, const float *in, const I *idx, int n, int dim)
{
    int64_t total = (int64_t)n * dim;
    GRID_STRIDE(e, total) {
        int64_t i = e / dim, c = e % dim;
        out[e] = in[(int64_t)idx[i] * dim + c];
    }
}

/* out[idx[i], :] += in[i, :]; idx distinct, so no two threads write one element. */
__global__ void scatter_add_kernel(float *out, const float *in, const int32_t *idx, int n,
                                   int dim)
{
    int64_t total = (int64_t)n * dim;
    GRID_STRIDE(e, total) {
        int64_t i = e / dim, c = e % dim;
        float *o = out + (int64_t)idx[i] * dim + c;
        *o = __fadd_rn(*o, in[e]);
    }
}

/* Row t of src [T, width] into dst_rows[s] for the segment s holding it (cu[s] <= t <
 * cu[s+1], found by binary search), at row end[s] - (cu[s+1] - cu[s]) + (t - cu[s]). */
__global__ void append_rows_kernel(float *const *dst_rows, const float *src, const int32_t *cu,
                                   const int32_t *end, int n_seg, int T, int width)
{
    int64_t total = (int64_t)T * width;
    GRID_STRIDE(e, total) {
        int t = (int)(e / width), c = (int)(e % width), lo = 0, hi = n_seg - 1;
        while (lo < hi) { /* the last s with cu[s] <= t */
            int mid = (lo + hi + 1) / 2;
            if (cu[mid] <= t)
                lo = mid;
            else
                hi = mid - 1;
        }
        int row = end[lo] - (cu[lo + 1] - cu[lo]) + (t - cu[lo]);
        dst_rows[lo][(int64_t)row * width + c] = src[e];
    }
}

/* y may alias x: each thread reads x[c] and writes y[c] for the same c, after the sum. */
__global__ void rmsnorm_fwd_kernel(float *y, float *rstd, const float *x, const float *w,
                                   int dim, float eps)
{
    __shared__ float shared[32];
    int64_t row = blockIdx.x;
    const float *xr = x + row * dim;
    float *yr = y + row * dim;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < dim; c += blockDim.x)
        ss += xr[c] * xr[c];
    ss = block_sum(ss, shared);
    float rs = 1.0f / sqrtf(ss / (float)dim + eps);
    for (int c = threadIdx.x; c < dim; c += blockDim.x)
        yr[c] = w[c] * (xr[c] * rs);
    if (threadIdx.x == 0)
        rstd[row] = rs;
}

/* dx = rs * dy * w - (rs^3 * mean(dy * w * x)) * x; dx may alias dy (same-index writes after
 * the sum). */
__global__ void rmsnorm_bwd_kernel(float *dx, const float *dy, const float *x, const float *w,
                                   const float *rstd, int dim)
{
    __shared__ float shared[32];
    int64_t row = blockIdx.x;
    const float *xr = x + row * dim, *gr = dy + row * dim;
    float *dr = dx + row * dim;
    float rs = rstd[row];
    float dot = 0.0f;
    for (int c = threadIdx.x; c < dim; c += blockDim.x)
        dot += gr[c] * w[c] * xr[c];
    dot = block_sum(dot, shared);
    float k = rs * rs * rs * dot / (float)dim;
    for (int c = threadIdx.x; c < dim; c += blockDim.x)
        dr[c] = rs * gr[c] * w[c] - k * xr[c];
}

__global__ void rope_kernel(float *x, const int32_t *pos, const float *inv_freq, int n_tok,
                            int heads, int head_dim, float sign)
{
    int half = head_dim / 2;
    int64_t total = (int64_t)n_tok * heads * half;
    GRID_STRIDE(e, total) {
        int64_t i = e % half, th = e / half; /* th = t * heads + h */
        int64_t t = th / heads;
        float ang = (float)pos[t] * inv_freq[i];
        float cs = cosf(ang), sn = sign * sinf(ang);
        float *v = x + th * head_dim;
        float a = v[i], b = v[i + half];
        v[i] = __fsub_rn(__fmul_rn(a, cs), __fmul_rn(b, sn));
        v[i + half] = __fadd_rn(__fmul_rn(b, cs), __fmul_rn(a, sn));
    }
}

__global__ void swiglu_fwd_kernel(float *h, const float *gate, const float *up, int64_t n)
{
    GRID_STRIDE(i, n) {
        float g = gate[i];
        h[i] = __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), up[i]);
    }
}

__global__ void swiglu_bwd_kernel(float *dgate, float *dup, const float *dh, const float *gate,
                                  const float *up, int64_t n)
{
    GRID_STRIDE(i, n) {
        float g = gate[i], sig = __fdiv_rn(1.0f, __fadd_rn(1.0f, expf(-g)));
        float d = dh[i], u = up[i];
        dup[i] = __fmul_rn(__fmul_rn(d, g), sig);
        float inner = __fadd_rn(1.0f, __fmul_rn(g, __fsub_rn(1.0f, sig)));
        dgate[i] = __fmul_rn(__fmul_rn(__fmul_rn(d, u), sig), inner);
    }
}

__global__ void dropout_kernel(float *out, const float *in, int64_t n, float p, float keep_scale,
                               uint64_t seed)
{
    GRID_STRIDE(i, n) {
        float u = cuda_hash_uniform(i, seed);
        out[i] = u >= p ? __fmul_rn(in[i], keep_scale) : 0.0f;
    }
}

__constant__ float nf4_code_values[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f,
};

__global__ void nf4_dequant_kernel(float *out, const uint8_t *packed, const float *absmax,
                                   int64_t first, int64_t n, int block)
{
    GRID_STRIDE(j, n) {
        int64_t i = first + j;
        uint8_t byte = packed[i >> 1];
        int code = (i & 1) ? (byte & 15) : (byte >> 4);
        out[j] = __fmul_rn(nf4_code_values[code], absmax[i / block]);
    }
}

__global__ void adamw_kernel(float *p, const float *g, float *m, float *v, int64_t n,
                             adamw_scalars s)
{
    GRID_STRIDE(i, n) {
        adamw_update(&p[i], &m[i], &v[i], g[i], &s);
    }
}

#endif
