/*
 * test_adamw.c: worker/adamw.c against torch.optim.AdamW and torch.nn.utils.clip_grad_norm_
 * (tests/ref/gen_optim_fixtures.py): parameters and both moments after every step within 1e-6
 * relative; norms and clipped gradients within 1e-6 relative.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "adamw.h"
#include "util.h"

#define FIXTURE "tests/fixtures/optim/adamw.json"
#define REL_TOL 1e-6

static json_t *load_fixture(void)
{
    json_error_t jerr;
    json_t *root = json_load_file(FIXTURE, 0, &jerr);
    cr_assert(root, "%s:%d: %s (run tests/ref/gen_optim_fixtures.py)", FIXTURE, jerr.line,
              jerr.text);
    return root;
}

static float *floats(json_t *arr, int64_t n)
{
    cr_assert_eq((int64_t)json_array_size(arr), n, "array of %zu values, expected %lld",
                 json_array_size(arr), (long long)n);
    float *out = xmalloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++)
        out[i] = (float)json_number_value(json_array_get(arr, (size_t)i));
    return out;
}

/* |got - want| <= tol * max(|want|, floor): relative, with an absolute floor for values that
 * are (near) zero, such as a moment whose gradients were all zero. */
static void assert_close(const float *got, json_t *want, int64_t n, double floor,
                         const char *what, int step)
{
    for (int64_t i = 0; i < n; i++) {
        double w = json_number_value(json_array_get(want, (size_t)i));
        double err = fabs((double)got[i] - w);
        cr_assert(err <= REL_TOL * fmax(fabs(w), floor),
                  "%s[%lld] after step %d: got %.9g, torch %.9g (relative error %.3g)", what,
                  (long long)i, step, (double)got[i], w, err / fmax(fabs(w), 1e-30));
    }
}

static void run_case(json_t *run)
{
    const char *name = json_string_value(json_object_get(run, "name"));
    int64_t n = json_integer_value(json_object_get(run, "n"));
    adamw_hparams h = {
        .beta1 = json_number_value(json_object_get(run, "beta1")),
        .beta2 = json_number_value(json_object_get(run, "beta2")),
        .eps = json_number_value(json_object_get(run, "eps")),
        .weight_decay = json_number_value(json_object_get(run, "weight_decay")),
    };
    float *p = floats(json_object_get(run, "params0"), n);
    float *m = xcalloc((size_t)n, sizeof(float)), *v = xcalloc((size_t)n, sizeof(float));

    json_t *steps = json_object_get(run, "steps");
    cr_assert(json_array_size(steps) >= 5, "%s: too few steps", name);
    size_t s;
    json_t *st;
    json_array_foreach(steps, s, st) {
        float *g = floats(json_object_get(st, "grad"), n);
        double lr = json_number_value(json_object_get(st, "lr"));
        adamw_step(p, g, m, v, n, (int64_t)s + 1, lr, &h);
        assert_close(p, json_object_get(st, "params"), n, 1e-6, name, (int)s);
        assert_close(m, json_object_get(st, "exp_avg"), n, 1e-12, "exp_avg", (int)s);
        assert_close(v, json_object_get(st, "exp_avg_sq"), n, 1e-20, "exp_avg_sq", (int)s);
        free(g);
    }
    free(p);
    free(m);
    free(v);
}

Test(adamw, matches_torch_adamw_over_several_steps)
{
    json_t *root = load_fixture();
    json_t *runs = json_object_get(root, "runs");
    cr_assert_eq(json_array_size(runs), 2);
    size_t i;
    json_t *run;
    json_array_foreach(runs, i, run) run_case(run);
    json_decref(root);
}

/* The partition can be cut anywhere: updating two halves separately equals one update. */
Test(adamw, partition_split_is_exact)
{
    enum { N = 1001 };
    float p1[N], p2[N], g[N], m1[N] = {0}, m2[N] = {0}, v1[N] = {0}, v2[N] = {0};
    for (int i = 0; i < N; i++) {
        p1[i] = p2[i] = (float)sin(i * 0.37);
        g[i] = (float)cos(i * 1.3) * 0.01f;
    }
    adamw_hparams h = {0.9, 0.999, 1e-8, 0.1};
    for (int step = 1; step <= 3; step++) {
        adamw_step(p1, g, m1, v1, N, step, 1e-3, &h);
        adamw_step(p2, g, m2, v2, 400, step, 1e-3, &h);
        adamw_step(p2 + 400, g + 400, m2 + 400, v2 + 400, N - 400, step, 1e-3, &h);
    }
    cr_assert_eq(memcmp(p1, p2, sizeof p1), 0);
    cr_assert_eq(memcmp(v1, v2, sizeof v1), 0);
}

/* clip_grad_norm_: norm, coefficient and clipped gradients, with the squared norm computed in
 * two partitions and summed as the all-reduce does. */
Test(adamw, clipping_matches_torch_clip_grad_norm)
{
    json_t *root = load_fixture();
    json_t *cases = json_object_get(root, "clip");
    cr_assert_geq(json_array_size(cases), 3);
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        json_t *jg = json_object_get(c, "grads");
        int64_t n = (int64_t)json_array_size(jg);
        float *g = floats(jg, n);
        int64_t cut = n / 3;
        double sq = adamw_grad_sq_norm(g, cut) + adamw_grad_sq_norm(g + cut, n - cut);
        double norm;
        float coef;
        double max_norm = json_number_value(json_object_get(c, "max_norm"));
        cr_assert_eq(adamw_clip_coef(sq, max_norm, &norm, &coef), 0, "%s", err_msg());
        double want = json_number_value(json_object_get(c, "total_norm"));
        cr_assert(fabs(norm - want) <= REL_TOL * want, "norm %.9g, torch %.9g", norm, want);
        cr_assert(coef <= 1.0f);
        adamw_grad_scale(g, n, coef);
        assert_close(g, json_object_get(c, "clipped"), n, 1e-30, "clipped grad", 0);
        free(g);
    }
    json_decref(root);
}

Test(adamw, clip_disabled_and_non_finite)
{
    double norm;
    float coef;
    cr_assert_eq(adamw_clip_coef(400.0, 0.0, &norm, &coef), 0);
    cr_assert_eq(norm, 20.0);
    cr_assert_eq(coef, 1.0f, "max_grad_norm 0 means no clipping");
    cr_assert_eq(adamw_clip_coef(400.0, 1.0, &norm, &coef), 0);
    cr_assert_float_eq(coef, 1.0f / 20.0f, 1e-6);

    cr_assert_eq(adamw_clip_coef(INFINITY, 1.0, &norm, &coef), RB_EXIT_RUNTIME);
    cr_assert(strstr(err_msg(), "not finite"), "%s", err_msg());
    cr_assert_eq(adamw_clip_coef(NAN, 1.0, &norm, &coef), RB_EXIT_RUNTIME);

    float g[5] = {1, 2, 3, 4, 5};
    cr_assert(adamw_all_finite(g, 5));
    cr_assert(isfinite(adamw_grad_sq_norm(g, 5)));
    g[3] = NAN;
    cr_assert(!adamw_all_finite(g, 5));
    cr_assert(!isfinite(adamw_grad_sq_norm(g, 5)));
    g[3] = -INFINITY;
    cr_assert(!adamw_all_finite(g, 5));
}
