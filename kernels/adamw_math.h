/*
 * adamw_math.h: torch.optim.AdamW's step (decoupled weight decay, non-amsgrad, single-tensor
 * path), defined once for every backend and for ZeRO's host-side partition update:
 *   p *= 1 - lr * wd
 *   m  = lerp(m, g, 1 - beta1)           v = v * beta2 + (1 - beta2) * g * g
 *   denom = sqrt(v) / sqrt(1 - beta2^t) + eps
 *   p -= lr / (1 - beta1^t) * m / denom
 * with t the 1-based step count (torch's state['step'] after its increment).
 *
 * adamw_scalars_at computes the step's scalars in double, as torch's Python code does, then
 * rounds them to fp32 where torch hands them to its fp32 kernels. adamw_update is one element:
 * torch's fp32 operations in its order, lerp as its vectorized CPU kernel computes it (one fused
 * multiply-add from the nearer end). Compiled by nvcc, each operation goes through the
 * round-to-nearest intrinsics, so the compiler cannot fuse a multiply and an add that torch
 * rounds separately: the GPU update equals the CPU one bit for bit.
 */
#ifndef RUBRIC_ADAMW_MATH_H
#define RUBRIC_ADAMW_MATH_H

#include <math.h>
#include <stdint.h>

typedef struct {
    float decay;          /* 1 - lr * weight_decay */
    float one_m_b1;       /* 1 - beta1: the lerp weight */
    float beta2;
    float one_m_b2;       /* 1 - beta2 */
    float bc2_sqrt;       /* sqrt(1 - beta2^t) */
    float eps;
    float neg_step_size;  /* -lr / (1 - beta1^t) */
    int decays;           /* weight_decay != 0 */
} adamw_scalars;

static inline adamw_scalars adamw_scalars_at(double lr, double beta1, double beta2, double eps,
                                             double weight_decay, int64_t step)
{
    double bias_c1 = 1.0 - pow(beta1, (double)step);
    double bias_c2 = 1.0 - pow(beta2, (double)step);
    adamw_scalars s;
    s.decay = (float)(1.0 - lr * weight_decay);
    s.one_m_b1 = (float)(1.0 - beta1);
    s.beta2 = (float)beta2;
    s.one_m_b2 = (float)(1.0 - beta2);
    s.bc2_sqrt = (float)pow(bias_c2, 0.5);
    s.eps = (float)eps;
    s.neg_step_size = (float)(-(lr / bias_c1));
    s.decays = weight_decay != 0.0;
    return s;
}

#ifdef __CUDACC__
#define ADAMW_HD __device__
#define ADAMW_MUL(a, b) __fmul_rn(a, b)
#define ADAMW_ADD(a, b) __fadd_rn(a, b)
#define ADAMW_SUB(a, b) __fsub_rn(a, b)
#define ADAMW_DIV(a, b) __fdiv_rn(a, b)
#define ADAMW_SQRT(a) __fsqrt_rn(a)
#else
#define ADAMW_HD
#define ADAMW_MUL(a, b) ((a) * (b))
#define ADAMW_ADD(a, b) ((a) + (b))
#define ADAMW_SUB(a, b) ((a) - (b))
#define ADAMW_DIV(a, b) ((a) / (b))
#define ADAMW_SQRT(a) sqrtf(a)
#endif

/* One element: *p, *m, *v updated in place from the gradient g. */
static inline ADAMW_HD void adamw_update(float *p, float *m, float *v, float g,
                                         const adamw_scalars *s)
{
    float pi = s->decays ? ADAMW_MUL(*p, s->decay) : *p;
    float w = s->one_m_b1, d = ADAMW_SUB(g, *m);
    float mi = fabsf(w) < 0.5f ? fmaf(w, d, *m) : fmaf(w - 1.0f, d, g);
    float vi = ADAMW_ADD(ADAMW_MUL(*v, s->beta2), ADAMW_MUL(ADAMW_MUL(s->one_m_b2, g), g));
    float denom = ADAMW_ADD(ADAMW_DIV(ADAMW_SQRT(vi), s->bc2_sqrt), s->eps);
    *p = ADAMW_ADD(pi, ADAMW_DIV(ADAMW_MUL(s->neg_step_size, mi), denom));
    *m = mi;
    *v = vi;
}

#endif
