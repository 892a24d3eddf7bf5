/*
 * adamw.c: torch.optim.AdamW's single-tensor step on a flat fp32 partition in host memory (the
 * arithmetic is kernels/adamw_math.h's, shared with every backend's adamw op), and the
 * clip_grad_norm_ helpers.
 */
#include "adamw.h"

#include <math.h>

#include "adamw_math.h"

#include "util.h"

void adamw_step(float *params, const float *grads, float *m, float *v, int64_t count,
                int64_t step, double lr, const adamw_hparams *h)
{
    const adamw_scalars s = adamw_scalars_at(lr, h->beta1, h->beta2, h->eps, h->weight_decay,
                                             step);
    #pragma omp parallel for schedule(static) if (count > 65536)
    for (int64_t i = 0; i < count; i++)
        adamw_update(&params[i], &m[i], &v[i], grads[i], &s);
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
