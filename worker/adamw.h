/*
 * adamw.h: the optimizer step on one flat fp32 partition (ZeRO-2: each worker updates only its
 * own slice of the trainable-parameter buffer), and the gradient-clipping helpers.
 *
 * adamw_step is torch.optim.AdamW (decoupled weight decay, non-amsgrad, single-tensor path) as
 * kernels/adamw_math.h defines it for every backend.
 *
 * Clipping as torch.nn.utils.clip_grad_norm_: every worker computes the squared norm of its
 * partition (adamw_grad_sq_norm), the caller all-reduces (sums) those, adamw_clip_coef turns the
 * global squared norm into min(1, max_norm / (norm + 1e-6)), and adamw_grad_scale applies it.
 */
#ifndef RUBRIC_ADAMW_H
#define RUBRIC_ADAMW_H

#include <stdint.h>

typedef struct {
    double beta1, beta2;   /* e.g. 0.9, 0.999 */
    double eps;            /* e.g. 1e-8 */
    double weight_decay;   /* decoupled, e.g. 0.0 or 0.01 */
} adamw_hparams;

/* One AdamW update of count elements: params, m (exp_avg) and v (exp_avg_sq) are updated in
 * place from grads. step >= 1 is the 1-based step count of this update; lr the scheduled rate
 * of this step. OpenMP-parallel. */
void adamw_step(float *params, const float *grads, float *m, float *v, int64_t count,
                int64_t step, double lr, const adamw_hparams *h);

/* Sum of squares of g[0 .. count), accumulated in double (OpenMP). Non-finite input gives a
 * non-finite result. */
double adamw_grad_sq_norm(const float *g, int64_t count);

/* From the global (all-reduced) squared gradient norm: *norm = sqrt(global_sq_norm) and *coef =
 * min(1, max_norm / (norm + 1e-6)) computed in fp32 as torch does; max_norm <= 0 means no
 * clipping (*coef = 1). Returns 0, or RB_EXIT_RUNTIME when the norm is not finite (err_set says
 * so; the step must then not be applied). */
int adamw_clip_coef(double global_sq_norm, double max_norm, double *norm, float *coef);

/* g[i] *= coef (skipped when coef == 1, which is exact anyway). */
void adamw_grad_scale(float *g, int64_t count, float coef);

/* 1 when all of x[0 .. count) are finite, else 0. */
int adamw_all_finite(const float *x, int64_t count);

#endif
