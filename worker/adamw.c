/*
 * adamw.c: torch.optim.AdamW's single-tensor step on a flat fp32 partition, and the
 * clip_grad_norm_ helpers. Scalars are computed in double as Python does, then rounded to fp32
 * where torch hands them to its fp32 kernels, and each kernel's fp32 operations keep torch's
 * order.
 */
#include "adamw.h"

#include <math.h>

#include "util.h"

/* torch's lerp(a, b, w) for a scalar weight, as its vectorized CPU kernel computes it: one
 * fused multiply-add from the nearer end. */
static inline float lerp_f32(float a, float b, float w)
{
    return fabsf(w) < 0.5f ? fmaf(w, b - a, a) : fmaf(w - 1.0f, b - a, b);
}

void adamw_step(float *params, const float *grads, float *m, float *v, int64_t count,
                int64_t step, double lr, const adamw_hparams *h)
{
    /* 1. the step's scalars, as torch's _single_tensor_adam computes them in Python */
    double bias_c1 = 1.0 - pow(h->beta1, (double)step);
    double bias_c2 = 1.0 - pow(h->beta2, (double)step);
    const float decay = (float)(1.0 - lr * h->weight_decay);
    const float w1 = (float)(1.0 - h->beta1);
    const float beta2 = (float)h->beta2, w2 = (float)(1.0 - h->beta2);
    const float bc2_sqrt = (float)pow(bias_c2, 0.5);
    const float eps = (float)h->eps;
    const float neg_step_size = (float)(-(lr / bias_c1));
    const int decays = h->weight_decay != 0.0;

    /* 2. per element: decay, moments, denominator, update */
    #pragma omp parallel for schedule(static) if (count > 65536)
    for (int64_t i = 0; i < count; i++) {
        float g = grads[i];
        float p = decays ? params[i] * decay : params[i];
        float mi = lerp_f32(m[i], g, w1);
        float vi = v[i] * beta2 + w2 * g * g;
        float denom = sqrtf(vi) / bc2_sqrt + eps;
        params[i] = p + neg_step_size * mi / denom;
        m[i] = mi;
        v[i] = vi;
    }
}

double adamw_grad_sq_norm(const float *g, int64_t count)
{
    double sum = 0.0;
    #pragma omp parallel for schedule(static) reduction(+ : sum) if (count > 65536)
    for (int64_t i = 0; i < count; i++)
        sum += (double)g[i] * (double)g[i];
    return sum;
}

int adamw_clip_coef(double global_sq_norm, double max_norm, double *norm, float *coef)
{
    *norm = sqrt(global_sq_norm);
    *coef = 1.0f;
    if (!isfinite(*norm))
        return err_set(RB_EXIT_RUNTIME,
                       "the gradient norm is %g (not finite); the step is not applied. Lower "
                       "learning_rate, check the data for extreme samples, or set "
                       "max_grad_norm", *norm);
    if (max_norm <= 0.0)
        return 0;
    /* torch: max_norm / (norm + 1e-6) on a tensor is reciprocal(norm + 1e-6) * max_norm */
    float c = (1.0f / ((float)*norm + 1e-6f)) * (float)max_norm;
    *coef = c < 1.0f ? c : 1.0f;
    return 0;
}

void adamw_grad_scale(float *g, int64_t count, float coef)
{
    if (coef == 1.0f)
        return;
    #pragma omp parallel for schedule(static) if (count > 65536)
    for (int64_t i = 0; i < count; i++)
        g[i] *= coef;
}

int adamw_all_finite(const float *x, int64_t count)
{
    int bad = 0;
    #pragma omp parallel for schedule(static) reduction(| : bad) if (count > 65536)
    for (int64_t i = 0; i < count; i++)
        bad |= !isfinite(x[i]);
    return !bad;
}
