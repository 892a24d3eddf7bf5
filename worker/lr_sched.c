/*
 * lr_sched.c: transformers' warmup schedules (LambdaLR lambdas) and the step-loss accounting.
 * Arithmetic is in double, in the order of transformers' Python code.
 */
#include "lr_sched.h"

#include <math.h>

#include "util.h"

int64_t sched_warmup_steps(int64_t warmup_steps, double warmup_ratio, int64_t total_steps)
{
    int64_t steps = warmup_steps;
    if (steps < 0)
        steps = warmup_ratio > 0.0 ? (int64_t)floor(warmup_ratio * (double)total_steps) : 0;
    return steps == 1 ? 2 : steps;
}

int sched_init(lr_schedule *s, enum lr_sched_kind kind, double base_lr, int64_t warmup_steps,
               int64_t total_steps)
{
    if (total_steps < 1)
        return err_set(RB_EXIT_INPUT,
                       "the run has %lld optimizer steps; it needs at least 1 (check the data "
                       "size, micro_batch_size, gradient_accumulation_steps and num_epochs)",
                       (long long)total_steps);
    if (warmup_steps < 0)
        return err_set(RB_EXIT_INPUT, "warmup_steps is %lld; it must be 0 or more",
                       (long long)warmup_steps);
    if (!(base_lr >= 0.0) || !isfinite(base_lr))
        return err_set(RB_EXIT_INPUT, "learning_rate is %g; it must be a finite number >= 0",
                       base_lr);
    if (kind != SCHED_COSINE && kind != SCHED_LINEAR && kind != SCHED_CONSTANT)
        return err_set(RB_EXIT_INPUT, "unknown lr_scheduler (%d)", (int)kind);
    s->kind = kind;
    s->base_lr = base_lr;
    s->warmup_steps = warmup_steps;
    s->total_steps = total_steps;
    return 0;
}

/* The LambdaLR factor of 0-based step `step`. */
static double sched_factor(const lr_schedule *s, int64_t step)
{
    int64_t warmup = s->warmup_steps, total = s->total_steps;
    if (step < warmup)
        return (double)step / (double)RB_MAX((int64_t)1, warmup);
    if (s->kind == SCHED_CONSTANT)
        return 1.0;
    double span = (double)RB_MAX((int64_t)1, total - warmup);
    if (s->kind == SCHED_LINEAR)
        return fmax(0.0, (double)(total - step) / span);

    /* cosine, num_cycles = 0.5 */
    double progress = (double)(step - warmup) / span;
    return fmax(0.0, 0.5 * (1.0 + cos(M_PI * 0.5 * 2.0 * progress)));
}

double sched_lr(const lr_schedule *s, int64_t step)
{
    return s->base_lr * sched_factor(s, step);
}

void step_loss_add(step_loss *acc, double loss_sum, int64_t n_tokens)
{
    acc->loss_sum += loss_sum;
    acc->n_tokens += n_tokens;
}

double step_loss_mean(const step_loss *acc)
{
    return acc->n_tokens > 0 ? acc->loss_sum / (double)acc->n_tokens : 0.0;
}

int step_check_finite(int64_t step, double loss, double grad_norm)
{
    if (!isfinite(loss))
        return err_set(RB_EXIT_RUNTIME,
                       "step %lld: the loss is %g (not finite); the update was not applied. "
                       "Lower learning_rate or check the data of this step",
                       (long long)step, loss);
    if (!isfinite(grad_norm))
        return err_set(RB_EXIT_RUNTIME,
                       "step %lld: the gradient norm is %g (not finite); the update was not "
                       "applied. Lower learning_rate or set max_grad_norm",
                       (long long)step, grad_norm);
    return 0;
}
