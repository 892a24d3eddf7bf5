/*
 * test_sched.c: worker/lr_sched.c against transformers' warmup schedules and
 * TrainingArguments.get_warmup_steps (tests/ref/gen_optim_fixtures.py): every step of 100-step
 * runs within 1e-7 relative; and the step-loss accounting.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <string.h>

#include "lr_sched.h"
#include "util.h"

#define FIXTURE "tests/fixtures/optim/schedules.json"
#define REL_TOL 1e-7

static json_t *load_fixture(void)
{
    json_error_t jerr;
    json_t *root = json_load_file(FIXTURE, 0, &jerr);
    cr_assert(root, "%s:%d: %s (run tests/ref/gen_optim_fixtures.py)", FIXTURE, jerr.line,
              jerr.text);
    return root;
}

static enum lr_sched_kind kind_of(const char *name)
{
    if (strcmp(name, "cosine") == 0)
        return SCHED_COSINE;
    if (strcmp(name, "linear") == 0)
        return SCHED_LINEAR;
    cr_assert_str_eq(name, "constant");
    return SCHED_CONSTANT;
}

Test(sched, every_step_matches_transformers)
{
    json_t *root = load_fixture();
    int64_t total = json_integer_value(json_object_get(root, "total_steps"));
    double base = json_number_value(json_object_get(root, "base_lr"));
    json_t *runs = json_object_get(root, "runs");
    cr_assert_eq(json_array_size(runs), 12, "3 kinds x 4 warmups");
    size_t r;
    json_t *run;
    json_array_foreach(runs, r, run) {
        const char *kind = json_string_value(json_object_get(run, "kind"));
        int64_t warmup = json_integer_value(json_object_get(run, "warmup_steps"));
        lr_schedule s;
        cr_assert_eq(sched_init(&s, kind_of(kind), base, warmup, total), 0, "%s", err_msg());
        json_t *lrs = json_object_get(run, "lr");
        cr_assert_eq((int64_t)json_array_size(lrs), total);
        for (int64_t step = 0; step < total; step++) {
            double want = json_number_value(json_array_get(lrs, (size_t)step));
            double got = sched_lr(&s, step);
            cr_assert(fabs(got - want) <= REL_TOL * fabs(want),
                      "%s warmup %lld step %lld: lr %.17g, transformers %.17g", kind,
                      (long long)warmup, (long long)step, got, want);
        }
    }
    json_decref(root);
}

/* Axolotl floors warmup_ratio * total (and bumps 1 to 2); transformers alone would round up. */
Test(sched, warmup_from_ratio_as_axolotl)
{
    json_t *root = load_fixture();
    json_t *cases = json_object_get(root, "warmup_from_ratio");
    cr_assert_geq(json_array_size(cases), 5);
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        double ratio = json_number_value(json_object_get(c, "ratio"));
        int64_t total = json_integer_value(json_object_get(c, "total"));
        int64_t want = json_integer_value(json_object_get(c, "axolotl_warmup_steps"));
        cr_assert_eq(sched_warmup_steps(-1, ratio, total), want, "ratio %g of %lld steps",
                     ratio, (long long)total);
    }
    cr_assert_eq(sched_warmup_steps(7, 0.5, 100), 7, "warmup_steps wins over the ratio");
    cr_assert_eq(sched_warmup_steps(1, 0.0, 100), 2, "Axolotl turns a warmup of 1 into 2");
    cr_assert_eq(sched_warmup_steps(-1, 0.0, 100), 0);
    json_decref(root);
}

Test(sched, rejects_bad_settings)
{
    lr_schedule s;
    cr_assert_eq(sched_init(&s, SCHED_COSINE, 1e-4, 0, 0), RB_EXIT_INPUT);
    cr_assert_eq(sched_init(&s, SCHED_LINEAR, 1e-4, -2, 10), RB_EXIT_INPUT);
    cr_assert_eq(sched_init(&s, SCHED_CONSTANT, NAN, 0, 10), RB_EXIT_INPUT);
}

/* The example: 1 token at 4.0 and 3 tokens at 2.0 average to 2.5, not 3.0. */
Test(step_loss, token_weighted_mean_over_micro_batches)
{
    step_loss acc = {0};
    step_loss_add(&acc, 1 * 4.0, 1);
    step_loss_add(&acc, 3 * 2.0, 3);
    cr_assert_float_eq(step_loss_mean(&acc), 2.5, 1e-15);
    step_loss_add(&acc, 0.0, 0); /* a micro-batch without supervised tokens */
    cr_assert_float_eq(step_loss_mean(&acc), 2.5, 1e-15);

    /* two workers: each sums its micro-batches, the sums are added (the all-reduce) */
    step_loss w1 = {0}, w2 = {0}, all = {0};
    step_loss_add(&w1, 4.0, 1);
    step_loss_add(&w2, 6.0, 3);
    step_loss_add(&all, w1.loss_sum + w2.loss_sum, w1.n_tokens + w2.n_tokens);
    cr_assert_float_eq(step_loss_mean(&all), 2.5, 1e-15);

    step_loss none = {0};
    cr_assert_eq(step_loss_mean(&none), 0.0, "no supervised token: 0, never NaN");
}

Test(step_loss, non_finite_stops_the_step)
{
    cr_assert_eq(step_check_finite(3, 2.5, 1.0), 0);
    cr_assert_eq(step_check_finite(3, NAN, 1.0), RB_EXIT_RUNTIME);
    cr_assert(strstr(err_msg(), "step 3"), "%s", err_msg());
    cr_assert_eq(step_check_finite(4, 2.0, INFINITY), RB_EXIT_RUNTIME);
    cr_assert(strstr(err_msg(), "gradient norm"), "%s", err_msg());
}
