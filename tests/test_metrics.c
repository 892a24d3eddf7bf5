/* test_metrics.c: common/metrics.c against numpy/scipy (tests/ref/gen_metrics_fixtures.py). */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"
#include "util.h"

#define FIXTURE "tests/fixtures/score/metrics_cases.json"
#define TOL 1e-9

static json_t *load_cases(void)
{
    json_error_t jerr;
    json_t *root = json_load_file(FIXTURE, 0, &jerr);
    cr_assert(root, "%s:%d: %s (run tests/ref/gen_metrics_fixtures.py)", FIXTURE, jerr.line,
              jerr.text);
    json_t *cases = json_object_get(root, "cases");
    cr_assert(json_array_size(cases) >= 10);
    json_incref(cases);
    json_decref(root);
    return cases;
}

static void row_ints(json_t *arr, int *out, int k)
{
    cr_assert_eq((int)json_array_size(arr), k);
    for (int i = 0; i < k; i++)
        out[i] = (int)json_integer_value(json_array_get(arr, (size_t)i));
}

/* Feed rows [from, to) of a case into m. */
static void feed(metrics_acc *m, json_t *c, size_t from, size_t to, const int *constant_pred)
{
    int k = (int)json_integer_value(json_object_get(c, "k"));
    json_t *truth = json_object_get(c, "truth"), *pred = json_object_get(c, "pred");
    json_t *og = json_object_get(c, "off_grammar");
    int t[METRICS_MAX_K], p[METRICS_MAX_K];
    for (size_t r = from; r < to; r++) {
        row_ints(json_array_get(truth, r), t, k);
        if (constant_pred)
            memcpy(p, constant_pred, sizeof(int) * (size_t)k);
        else
            row_ints(json_array_get(pred, r), p, k);
        int off = constant_pred ? 0 : (int)json_integer_value(json_array_get(og, r));
        cr_assert_eq(metrics_add_row(m, t, p, off), 0, "%s", err_msg());
    }
}

static void check_value(const char *what, metric_value got, json_t *want)
{
    json_t *v = json_object_get(want, "value"), *reason = json_object_get(want, "reason");
    if (json_is_null(v)) {
        cr_assert(!got.defined, "%s: expected undefined (%s), got %.17g", what,
                  json_string_value(reason), got.value);
        cr_assert_str_eq(got.reason, json_string_value(reason), "%s", what);
        return;
    }
    cr_assert(got.defined, "%s: expected %.17g, got undefined (%s)", what, json_real_value(v),
              got.reason);
    cr_assert(isfinite(got.value), "%s", what);
    cr_assert(fabs(got.value - json_number_value(v)) <= TOL, "%s: got %.17g, want %.17g", what,
              got.value, json_number_value(v));
}

static void check_stats(const char *name, const char *where, const metrics_stats *s, json_t *e)
{
    char what[256];
    snprintf(what, sizeof what, "%s %s accuracy", name, where);
    check_value(what, s->accuracy, json_object_get(e, "accuracy"));
    snprintf(what, sizeof what, "%s %s off_by_one", name, where);
    check_value(what, s->off_by_one, json_object_get(e, "off_by_one_accuracy"));
    snprintf(what, sizeof what, "%s %s mae", name, where);
    check_value(what, s->mae, json_object_get(e, "mae"));
    snprintf(what, sizeof what, "%s %s pearson", name, where);
    check_value(what, s->pearson, json_object_get(e, "pearson"));
}

static void check_all(const char *name, const metrics_acc *m, json_t *e, int confusion)
{
    metrics_result r;
    metrics_compute(m, &r);
    cr_assert_eq(r.rows, json_integer_value(json_object_get(e, "rows")), "%s rows", name);
    cr_assert_eq(r.exact_rows, json_integer_value(json_object_get(e, "exact_rows")), "%s", name);
    cr_assert_eq(r.off_grammar_rows, json_integer_value(json_object_get(e, "off_grammar_rows")),
                 "%s", name);
    check_value(name, r.exact_match, json_object_get(e, "exact_match"));
    check_value(name, r.off_grammar_rate, json_object_get(e, "off_grammar_rate"));
    check_stats(name, "overall", &r.overall, json_object_get(e, "overall"));
    json_t *positions = json_object_get(e, "positions");
    for (int p = 0; p < m->k; p++) {
        char where[32];
        snprintf(where, sizeof where, "position %d", p + 1);
        json_t *pe = json_array_get(positions, (size_t)p);
        check_stats(name, where, &r.position[p], pe);
        if (!confusion)
            continue;
        json_t *conf = json_object_get(pe, "confusion");
        for (int t = 0; t < m->range; t++)
            for (int q = 0; q < m->range; q++) {
                json_int_t want = json_integer_value(
                    json_array_get(json_array_get(conf, (size_t)t), (size_t)q));
                cr_assert_eq(metrics_confusion(m, p, m->score_min + t, m->score_min + q), want,
                             "%s confusion[%d][%d][%d]", name, p, t, q);
            }
    }
}

static void init_case(metrics_acc *m, json_t *c)
{
    cr_assert_eq(metrics_init(m, (int)json_integer_value(json_object_get(c, "k")),
                              (int)json_integer_value(json_object_get(c, "score_min")),
                              (int)json_integer_value(json_object_get(c, "score_max"))), 0);
}

Test(metrics, matches_numpy_scipy)
{
    json_t *cases = load_cases();
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        const char *name = json_string_value(json_object_get(c, "name"));
        metrics_acc m;
        init_case(&m, c);
        feed(&m, c, 0, json_array_size(json_object_get(c, "truth")), NULL);
        for (json_int_t b = 0; b < json_integer_value(json_object_get(c, "bad_rows")); b++)
            metrics_add_bad(&m);
        for (json_int_t u = 0; u < json_integer_value(json_object_get(c, "unlabelled_rows")); u++)
            metrics_add_unlabelled(&m);
        check_all(name, &m, json_object_get(c, "expected"), 1);
        metrics_result r;
        metrics_compute(&m, &r);
        cr_assert_eq(r.bad_rows, json_integer_value(json_object_get(c, "bad_rows")));
        cr_assert_eq(r.unlabelled_rows, json_integer_value(json_object_get(c, "unlabelled_rows")));
        metrics_free(&m);
    }
    json_decref(cases);
}

Test(metrics, merge_of_parts_equals_whole)
{
    json_t *cases = load_cases();
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        size_t n = json_array_size(json_object_get(c, "truth"));
        metrics_acc whole, a, b;
        init_case(&whole, c);
        init_case(&a, c);
        init_case(&b, c);
        feed(&whole, c, 0, n, NULL);
        feed(&a, c, n / 3, n, NULL);  /* a different order than whole */
        feed(&b, c, 0, n / 3, NULL);
        cr_assert_eq(metrics_merge(&a, &b), 0);
        cr_assert_eq(memcmp(a.counts, whole.counts, (size_t)whole.n_counts * 8), 0);
        check_all(json_string_value(json_object_get(c, "name")), &a,
                  json_object_get(c, "expected"), 1);
        metrics_free(&whole);
        metrics_free(&a);
        metrics_free(&b);
    }
    json_decref(cases);
}

Test(metrics, majority_baseline)
{
    json_t *cases = load_cases();
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        const char *name = json_string_value(json_object_get(c, "name"));
        metrics_acc ref, base;
        init_case(&ref, c);
        init_case(&base, c);
        json_t *reference = json_object_get(c, "reference");
        int t[METRICS_MAX_K], modes[METRICS_MAX_K];
        for (size_t r = 0; r < json_array_size(reference); r++) {
            row_ints(json_array_get(reference, r), t, ref.k);
            cr_assert_eq(metrics_add_row(&ref, t, t, 0), 0);
        }
        metrics_baseline_modes(&ref, modes);
        json_t *want = json_object_get(c, "baseline_modes");
        for (int p = 0; p < ref.k; p++)
            cr_assert_eq(modes[p], json_integer_value(json_array_get(want, (size_t)p)),
                         "%s mode %d", name, p);
        feed(&base, c, 0, json_array_size(json_object_get(c, "truth")), modes);
        check_all(name, &base, json_object_get(c, "expected_baseline"), 0);
        metrics_free(&ref);
        metrics_free(&base);
    }
    json_decref(cases);
}

Test(metrics, json_has_null_with_reason_and_round_trips)
{
    metrics_acc m;
    cr_assert_eq(metrics_init(&m, 2, 0, 5), 0);
    int t[2] = {3, 1}, p[2] = {3, 2};
    metrics_add_row(&m, t, p, 1);
    metrics_add_row(&m, t, p, 0);
    json_t *j = metrics_to_json(&m, &m, t, NULL);
    cr_assert(json_is_null(json_object_get(j, "pearson")));
    json_t *undef = json_object_get(j, "undefined");
    cr_assert_str_eq(json_string_value(json_object_get(undef, "pearson")), "fewer than 3 rows");
    cr_assert_float_eq(json_real_value(json_object_get(j, "exact_match")), 0.0, 1e-12);
    cr_assert_float_eq(json_real_value(json_object_get(j, "off_grammar_rate")), 0.5, 1e-12);
    json_t *pos = json_array_get(json_object_get(j, "positions"), 1);
    cr_assert_eq(json_array_size(json_object_get(pos, "confusion")), 6);
    cr_assert(json_object_get(j, "majority_baseline"));
    char *text = json_dumps(j, 0);
    cr_assert(text && !strstr(text, "nan") && !strstr(text, "NaN"));
    free(text);
    json_decref(j);

    /* out-of-range scores are refused without changing the counts */
    int bad[2] = {6, 0};
    cr_assert_eq(metrics_add_row(&m, bad, p, 0), RB_EXIT_INPUT);
    cr_assert_eq(m.counts[METRICS_ROWS], 2);
    metrics_acc other;
    cr_assert_eq(metrics_init(&other, 3, 0, 5), 0);
    cr_assert_eq(metrics_merge(&m, &other), RB_EXIT_RUNTIME);
    metrics_free(&other);
    metrics_free(&m);
}
