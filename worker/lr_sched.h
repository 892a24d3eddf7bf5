/*
 * lr_sched.h: learning-rate schedules and the loss accounting of one optimizer step.
 * (Not named sched.h: worker/ is on the include path, and that name would hide the system
 * <sched.h> that <pthread.h> includes.)
 *
 * Schedules match transformers' get_{cosine,linear,constant}_schedule_with_warmup: the rate of
 * optimizer step s (0-based, the first update uses s = 0, as LambdaLR counts) is
 * base_lr * lambda(s), with lambda:
 *   s < warmup:  s / max(1, warmup)                      (all kinds)
 *   constant:    1
 *   linear:      max(0, (total - s) / max(1, total - warmup))
 *   cosine:      max(0, 0.5 * (1 + cos(pi * 2 * 0.5 * (s - warmup) / max(1, total - warmup))))
 */
#ifndef RUBRIC_LR_SCHED_H
#define RUBRIC_LR_SCHED_H

#include <stdint.h>

#include "config.h" /* enum lr_sched_kind */

typedef struct {
    enum lr_sched_kind kind;
    double base_lr;
    int64_t warmup_steps;
    int64_t total_steps;   /* optimizer steps of the whole run */
} lr_schedule;

/* Warmup steps from the config, as Axolotl's trainer builder computes them before handing an
 * integer to transformers: warmup_steps when >= 0, else floor(warmup_ratio * total_steps); a
 * result of exactly 1 becomes 2. (transformers alone, given a ratio, would round up:
 * TrainingArguments.get_warmup_steps uses ceil; Axolotl never passes it the ratio when the step
 * count is known.) */
int64_t sched_warmup_steps(int64_t warmup_steps, double warmup_ratio, int64_t total_steps);

/* Fill *s. Returns 0, or RB_EXIT_INPUT for total_steps < 1, warmup < 0 or base_lr < 0. */
int sched_init(lr_schedule *s, enum lr_sched_kind kind, double base_lr, int64_t warmup_steps,
               int64_t total_steps);

/* The learning rate of 0-based optimizer step `step`. */
double sched_lr(const lr_schedule *s, int64_t step);

/*
 * Loss of one optimizer step: the sum of the token losses over all its micro-batches and all
 * workers, divided by the number of supervised tokens they hold together (not a mean of means:
 * 1 token at 4.0 and 3 tokens at 2.0 give 2.5). A micro-batch without supervised tokens adds
 * (0, 0). The caller all-reduces loss_sum and n_tokens across workers before step_loss_mean.
 */
typedef struct {
    double loss_sum;   /* sum of per-token cross-entropy */
    int64_t n_tokens;  /* supervised tokens */
} step_loss;

void step_loss_add(step_loss *acc, double loss_sum, int64_t n_tokens);

/* loss_sum / n_tokens; 0 when n_tokens == 0 (never NaN). */
double step_loss_mean(const step_loss *acc);

/* Check a step before it is applied: returns 0, or RB_EXIT_RUNTIME with a message naming the
 * step when the loss or the gradient norm is not finite (the update must be skipped). */
int step_check_finite(int64_t step, double loss, double grad_norm);

#endif
