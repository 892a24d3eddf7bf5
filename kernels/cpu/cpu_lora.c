/*
 * cpu_lora.c: the LoRA branch y += scale * (drop(x) . A^T) . B^T and its backward, on the CPU.
 * Dropout (p > 0) is regenerated from its seed in the backward instead of being stored.
 */
#include "cpu_ops.h"
#include "util.h"

void cpu_lora_fwd(float *y, int ldy, float *u, const float *x, const float *a, const float *b,
                  int T, int in, int out, int r, float scale, float p, uint64_t seed)
{
    /* u = drop(x) . A^T */
    const float *xin = x;
    if (p > 0.0f) {
        float *xd = cpu_scratch(1, (size_t)T * in);
        cpu_dropout(xd, x, (int64_t)T * in, p, seed);
        xin = xd;
    }
    cpu_gemm(0, 1, T, r, in, 1.0f, xin, in, a, in, 0.0f, u, r);

    /* y += scale * u . B^T */
    cpu_gemm(0, 1, T, out, r, scale, u, r, b, r, 1.0f, y, ldy);
}

void cpu_lora_bwd(float *dx, float *da, float *db, const float *dy, int lddy, const float *u,
                  const float *x, const float *a, const float *b, int T, int in, int out, int r,
                  float scale, float p, uint64_t seed, float *tmp)
{
    /* dB += scale * dy^T . u */
    cpu_gemm(1, 0, out, r, T, scale, dy, lddy, u, r, 1.0f, db, r);

    /* du = scale * dy . B   (tmp [T, r]) */
    float *du = tmp;
    cpu_gemm(0, 0, T, r, out, scale, dy, lddy, b, r, 0.0f, du, r);

    /* dA += du^T . drop(x) */
    const float *xin = x;
    if (p > 0.0f) {
        float *xd = cpu_scratch(1, (size_t)T * in);
        cpu_dropout(xd, x, (int64_t)T * in, p, seed);
        xin = xd;
    }
    cpu_gemm(1, 0, r, in, T, 1.0f, du, r, xin, in, 1.0f, da, in);

    /* dx += drop'(du . A): the mask and 1/(1-p) apply to the gradient too */
    if (!dx)
        return;
    if (p > 0.0f) {
        float *dxd = cpu_scratch(1, (size_t)T * in);
        cpu_gemm(0, 0, T, in, r, 1.0f, du, r, a, in, 0.0f, dxd, in);
        cpu_dropout(dxd, dxd, (int64_t)T * in, p, seed);
        cpu_add(dx, dxd, (int64_t)T * in);
    } else {
        cpu_gemm(0, 0, T, in, r, 1.0f, du, r, a, in, 1.0f, dx, in);
    }
}
