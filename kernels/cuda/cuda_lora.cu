/*
 * cuda_lora.cu: the LoRA branch y += scale * (drop(x) . A^T) . B^T and its backward, as two
 * pairs of cuBLAS GEMMs (cpu_lora.c's steps, on the GPU). Dropout (p > 0) is regenerated from
 * its seed in the backward with the CPU backend's mask.
 */
#include "cuda_common.h"

/* drop(x) in a scratch buffer, or x itself when p == 0 */
static const float *lora_dropped(const float *x, int64_t n, float p, uint64_t seed)
{
    if (p <= 0.0f)
        return x;
    float *xd = (float *)cuda_scratch(CUDA_SCRATCH_DROPOUT, sizeof(float) * (size_t)n);
    cuda_dropout(xd, x, n, p, seed);
    return xd;
}

void cuda_lora_fwd(float *y, int ldy, float *u, const float *x, const float *a, const float *b,
                   int T, int in, int out, int r, float scale, float p, uint64_t seed)
{
    /* u = drop(x) . A^T */
    const float *xin = lora_dropped(x, (int64_t)T * in, p, seed);
    cuda_gemm(0, 1, T, r, in, 1.0f, xin, in, a, in, 0.0f, u, r);

    /* y += scale * u . B^T */
    cuda_gemm(0, 1, T, out, r, scale, u, r, b, r, 1.0f, y, ldy);
}

void cuda_lora_bwd(float *dx, float *da, float *db, const float *dy, int lddy, const float *u,
                   const float *x, const float *a, const float *b, int T, int in, int out,
                   int r, float scale, float p, uint64_t seed, float *tmp)
{
    /* dB += scale * dy^T . u */
    cuda_gemm(1, 0, out, r, T, scale, dy, lddy, u, r, 1.0f, db, r);

    /* du = scale * dy . B   (tmp [T, r]) */
    float *du = tmp;
    cuda_gemm(0, 0, T, r, out, scale, dy, lddy, b, r, 0.0f, du, r);

    /* dA += du^T . drop(x) */
    const float *xin = lora_dropped(x, (int64_t)T * in, p, seed);
    cuda_gemm(1, 0, r, in, T, 1.0f, du, r, xin, in, 1.0f, da, in);

    /* dx += drop'(du . A): the mask and 1/(1-p) apply to the gradient too */
    if (!dx)
        return;
    if (p > 0.0f) {
        float *dxd = (float *)cuda_scratch(CUDA_SCRATCH_DROPOUT,
                                           sizeof(float) * (size_t)T * in);
        cuda_gemm(0, 0, T, in, r, 1.0f, du, r, a, in, 0.0f, dxd, in);
        cuda_dropout(dxd, dxd, (int64_t)T * in, p, seed);
        cuda_add(dx, dxd, (int64_t)T * in);
    } else {
        cuda_gemm(0, 0, T, in, r, 1.0f, du, r, a, in, 1.0f, dx, in);
    }
}
