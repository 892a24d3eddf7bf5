/* metrics.c: scoring metrics from integer counts (see metrics.h). */
#include "metrics.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

int metrics_init(metrics_acc *m, int k, int score_min, int score_max)
{
    memset(m, 0, sizeof *m);
    if (k < 1 || k > METRICS_MAX_K)
        return err_set(RB_EXIT_INPUT, "scores per row must be 1..%d, got %d", METRICS_MAX_K, k);
    int range = score_max - score_min + 1;
    if (range < 1 || range > METRICS_MAX_RANGE)
        return err_set(RB_EXIT_INPUT, "score range %d..%d must hold 1..%d values", score_min,
                       score_max, METRICS_MAX_RANGE);
    m->k = k;
    m->score_min = score_min;
    m->score_max = score_max;
    m->range = range;
    m->n_counts = METRICS_N_HEADER + (int64_t)k * range * range;
    m->counts = xcalloc((size_t)m->n_counts, sizeof *m->counts);
    return 0;
}

void metrics_free(metrics_acc *m)
{
    free(m->counts);
    memset(m, 0, sizeof *m);
}

void metrics_reset(metrics_acc *m) { memset(m->counts, 0, (size_t)m->n_counts * 8); }

static int64_t *cell(const metrics_acc *m, int position, int t, int p)
{
    int64_t at = METRICS_N_HEADER + ((int64_t)position * m->range + t) * m->range + p;
    return &m->counts[at];
}

int64_t metrics_confusion(const metrics_acc *m, int position, int truth, int pred)
{
    return *cell(m, position, truth - m->score_min, pred - m->score_min);
}

int metrics_add_row(metrics_acc *m, const int *truth, const int *pred, int off_grammar)
{
    for (int i = 0; i < m->k; i++) {
        if (truth[i] < m->score_min || truth[i] > m->score_max)
            return err_set(RB_EXIT_INPUT, "truth score %d at position %d is outside %d..%d",
                           truth[i], i + 1, m->score_min, m->score_max);
        if (pred[i] < m->score_min || pred[i] > m->score_max)
            return err_set(RB_EXIT_INPUT, "predicted score %d at position %d is outside %d..%d",
                           pred[i], i + 1, m->score_min, m->score_max);
    }
    int all_right = 1;
    for (int i = 0; i < m->k; i++) {
        (*cell(m, i, truth[i] - m->score_min, pred[i] - m->score_min))++;
        all_right &= truth[i] == pred[i];
    }
    m->counts[METRICS_ROWS]++;
    m->counts[METRICS_EXACT] += all_right;
    m->counts[METRICS_OFF_GRAMMAR] += off_grammar != 0;
    return 0;
}

void metrics_add_bad(metrics_acc *m) { m->counts[METRICS_BAD]++; }

void metrics_add_unlabelled(metrics_acc *m) { m->counts[METRICS_UNLABELLED]++; }

int metrics_merge(metrics_acc *dst, const metrics_acc *src)
{
    if (dst->k != src->k || dst->score_min != src->score_min ||
        dst->score_max != src->score_max)
        return err_set(RB_EXIT_RUNTIME, "cannot merge metrics of %d scores in %d..%d with "
                       "metrics of %d scores in %d..%d", src->k, src->score_min, src->score_max,
                       dst->k, dst->score_min, dst->score_max);
    for (int64_t i = 0; i < dst->n_counts; i++)
        dst->counts[i] += src->counts[i];
    return 0;
}

static metric_value defined(double v) { return (metric_value){1, v, NULL}; }

static metric_value undefined(const char *reason) { return (metric_value){0, 0.0, reason}; }

static metric_value ratio(int64_t num, int64_t den)
{
    return den > 0 ? defined((double)num / (double)den) : undefined("no scored rows");
}

/* Pearson r from the confusion counts of positions [p0, p1): two passes (means, then centred
 * sums) over the cells, as stable as numpy's. */
static metric_value pearson_from(const metrics_acc *m, int p0, int p1, int64_t rows)
{
    if (rows < 3)
        return undefined("fewer than 3 rows");
    double n = 0, sx = 0, sy = 0;
    for (int p = p0; p < p1; p++)
        for (int t = 0; t < m->range; t++)
            for (int q = 0; q < m->range; q++) {
                double c = (double)*cell(m, p, t, q);
                n += c, sx += c * t, sy += c * q;
            }
    double mx = sx / n, my = sy / n, sxx = 0, syy = 0, sxy = 0;
    for (int p = p0; p < p1; p++)
        for (int t = 0; t < m->range; t++)
            for (int q = 0; q < m->range; q++) {
                double c = (double)*cell(m, p, t, q);
                sxx += c * (t - mx) * (t - mx);
                syy += c * (q - my) * (q - my);
                sxy += c * (t - mx) * (q - my);
            }
    if (sxx == 0)
        return undefined("truth is constant");
    if (syy == 0)
        return undefined("prediction is constant");
    double r = sxy / sqrt(sxx * syy);
    return defined(r > 1 ? 1 : r < -1 ? -1 : r);
}

static void stats_from(const metrics_acc *m, int p0, int p1, metrics_stats *s)
{
    int64_t n = 0, right = 0, near = 0, abs_err = 0;
    for (int p = p0; p < p1; p++)
        for (int t = 0; t < m->range; t++)
            for (int q = 0; q < m->range; q++) {
                int64_t c = *cell(m, p, t, q);
                int d = abs(t - q);
                n += c;
                right += d == 0 ? c : 0;
                near += d <= 1 ? c : 0;
                abs_err += c * d;
            }
    s->accuracy = ratio(right, n);
    s->off_by_one = ratio(near, n);
    s->mae = ratio(abs_err, n);
    s->pearson = pearson_from(m, p0, p1, m->counts[METRICS_ROWS]);
}

void metrics_compute(const metrics_acc *m, metrics_result *r)
{
    memset(r, 0, sizeof *r);
    r->k = m->k;
    r->score_min = m->score_min;
    r->score_max = m->score_max;
    r->rows = m->counts[METRICS_ROWS];
    r->bad_rows = m->counts[METRICS_BAD];
    r->unlabelled_rows = m->counts[METRICS_UNLABELLED];
    r->off_grammar_rows = m->counts[METRICS_OFF_GRAMMAR];
    r->exact_rows = m->counts[METRICS_EXACT];
    r->exact_match = ratio(r->exact_rows, r->rows);
    r->off_grammar_rate = ratio(r->off_grammar_rows, r->rows);
    stats_from(m, 0, m->k, &r->overall);
    for (int p = 0; p < m->k; p++)
        stats_from(m, p, p + 1, &r->position[p]);
}

void metrics_baseline_modes(const metrics_acc *m, int *modes)
{
    for (int p = 0; p < m->k; p++) {
        int64_t best = -1;
        modes[p] = m->score_min;
        for (int t = 0; t < m->range; t++) {
            int64_t n = 0;
            for (int q = 0; q < m->range; q++)
                n += *cell(m, p, t, q);
            if (n > best) {
                best = n;
                modes[p] = m->score_min + t;
            }
        }
    }
}

/* ---- printing ---------------------------------------------------------------------------- */

static void fmt_value(char *buf, size_t n, metric_value v)
{
    if (v.defined)
        snprintf(buf, n, "%.4f", v.value);
    else
        snprintf(buf, n, "n/a");
}

static void print_stats_line(FILE *out, const char *label, const metrics_stats *s)
{
    char a[32], o[32], e[32], r[32];
    fmt_value(a, sizeof a, s->accuracy);
    fmt_value(o, sizeof o, s->off_by_one);
    fmt_value(e, sizeof e, s->mae);
    fmt_value(r, sizeof r, s->pearson);
    fprintf(out, "  %-10s %10s %10s %10s %10s\n", label, a, o, e, r);
}

static void print_confusion(FILE *out, const metrics_acc *m, int p)
{
    fprintf(out, "  position %d confusion (rows: truth, columns: prediction)\n      ", p + 1);
    for (int q = 0; q < m->range; q++)
        fprintf(out, " %7d", m->score_min + q);
    fprintf(out, "\n");
    for (int t = 0; t < m->range; t++) {
        fprintf(out, "  %3d ", m->score_min + t);
        for (int q = 0; q < m->range; q++)
            fprintf(out, " %7lld", (long long)*cell(m, p, t, q));
        fprintf(out, "\n");
    }
}

static void print_undefined_notes(FILE *out, const metrics_result *r)
{
    if (!r->overall.pearson.defined)
        fprintf(out, "  pearson (all) is undefined: %s\n", r->overall.pearson.reason);
    for (int p = 0; p < r->k; p++)
        if (!r->position[p].pearson.defined)
            fprintf(out, "  pearson (position %d) is undefined: %s\n", p + 1,
                    r->position[p].pearson.reason);
}

static void print_one(FILE *out, const char *title, const metrics_acc *m, int confusion)
{
    metrics_result r;
    metrics_compute(m, &r);
    char em[32], og[32];
    fmt_value(em, sizeof em, r.exact_match);
    fmt_value(og, sizeof og, r.off_grammar_rate);
    fprintf(out, "%s: %lld rows scored, %lld bad, %lld without truth; exact match %s, "
            "off-grammar rate %s\n", title, (long long)r.rows, (long long)r.bad_rows,
            (long long)r.unlabelled_rows, em, og);
    fprintf(out, "  %-10s %10s %10s %10s %10s\n", "", "accuracy", "off-by-1", "MAE", "pearson");
    print_stats_line(out, "all", &r.overall);
    for (int p = 0; p < r.k; p++) {
        char label[32];
        snprintf(label, sizeof label, "pos %d", p + 1);
        print_stats_line(out, label, &r.position[p]);
    }
    print_undefined_notes(out, &r);
    if (confusion)
        for (int p = 0; p < r.k; p++)
            print_confusion(out, m, p);
}

void metrics_print(FILE *out, const metrics_acc *m, const metrics_acc *baseline,
                   const int *baseline_modes, const char *baseline_undefined)
{
    print_one(out, "model", m, 1);
    if (!baseline && baseline_undefined)
        fprintf(out, "\nmajority baseline: undefined: %s\n", baseline_undefined);
    if (!baseline)
        return;
    fprintf(out, "\n");
    char title[64 + 4 * METRICS_MAX_K];
    int at = snprintf(title, sizeof title, "majority baseline (answers");
    for (int p = 0; p < baseline->k; p++)
        at += snprintf(title + at, sizeof title - (size_t)at, " %d", baseline_modes[p]);
    snprintf(title + at, sizeof title - (size_t)at, ")");
    print_one(out, title, baseline, 0);
}

/* ---- JSON -------------------------------------------------------------------------------- */

/* Set key to the value or to null, noting the reason in `undef` under undef_key. */
static void json_set_metric(json_t *obj, const char *key, metric_value v, json_t *undef,
                            const char *undef_key)
{
    if (v.defined) {
        json_object_set_new(obj, key, json_real(v.value));
        return;
    }
    json_object_set_new(obj, key, json_null());
    json_object_set_new(undef, undef_key ? undef_key : key, json_string(v.reason));
}

static void json_set_stats(json_t *obj, const metrics_stats *s, json_t *undef)
{
    json_set_metric(obj, "accuracy", s->accuracy, undef, NULL);
    json_set_metric(obj, "off_by_one_accuracy", s->off_by_one, undef, NULL);
    json_set_metric(obj, "mae", s->mae, undef, NULL);
    json_set_metric(obj, "pearson", s->pearson, undef, NULL);
}

static json_t *json_confusion(const metrics_acc *m, int p)
{
    json_t *rows = json_array();
    for (int t = 0; t < m->range; t++) {
        json_t *row = json_array();
        for (int q = 0; q < m->range; q++)
            json_array_append_new(row, json_integer(*cell(m, p, t, q)));
        json_array_append_new(rows, row);
    }
    return rows;
}

static json_t *json_positions(const metrics_acc *m, const metrics_result *r, int confusion)
{
    json_t *arr = json_array();
    for (int p = 0; p < m->k; p++) {
        json_t *o = json_object(), *undef = json_object();
        json_object_set_new(o, "position", json_integer(p + 1));
        json_set_stats(o, &r->position[p], undef);
        if (confusion)
            json_object_set_new(o, "confusion", json_confusion(m, p));
        if (json_object_size(undef) > 0)
            json_object_set_new(o, "undefined", undef);
        else
            json_decref(undef);
        json_array_append_new(arr, o);
    }
    return arr;
}

static json_t *json_one(const metrics_acc *m, int confusion)
{
    metrics_result r;
    metrics_compute(m, &r);
    json_t *o = json_object(), *undef = json_object();
    json_object_set_new(o, "rows", json_integer(r.rows));
    json_object_set_new(o, "bad_rows", json_integer(r.bad_rows));
    json_object_set_new(o, "unlabelled_rows", json_integer(r.unlabelled_rows));
    json_object_set_new(o, "off_grammar_rows", json_integer(r.off_grammar_rows));
    json_set_metric(o, "exact_match", r.exact_match, undef, NULL);
    json_set_metric(o, "off_grammar_rate", r.off_grammar_rate, undef, NULL);
    json_set_stats(o, &r.overall, undef);
    json_object_set_new(o, "positions", json_positions(m, &r, confusion));
    if (json_object_size(undef) > 0)
        json_object_set_new(o, "undefined", undef);
    else
        json_decref(undef);
    return o;
}

json_t *metrics_to_json(const metrics_acc *m, const metrics_acc *baseline,
                        const int *baseline_modes, const char *baseline_undefined)
{
    json_t *root = json_one(m, 1);
    json_object_set_new(root, "scores_per_row", json_integer(m->k));
    json_object_set_new(root, "score_min", json_integer(m->score_min));
    json_object_set_new(root, "score_max", json_integer(m->score_max));
    if (baseline) {
        json_t *b = json_one(baseline, 0), *modes = json_array();
        for (int p = 0; p < baseline->k; p++)
            json_array_append_new(modes, json_integer(baseline_modes[p]));
        json_object_set_new(b, "answers", modes);
        json_object_set_new(root, "majority_baseline", b);
    } else if (baseline_undefined) {
        json_object_set_new(root, "majority_baseline", json_null());
        json_t *undef = json_object_get(root, "undefined");
        if (!undef) {
            undef = json_object();
            json_object_set_new(root, "undefined", undef);
        }
        json_object_set_new(undef, "majority_baseline", json_string(baseline_undefined));
    }
    return root;
}

int metrics_write_json(const char *path, const metrics_acc *m, const metrics_acc *baseline,
                       const int *baseline_modes, const char *baseline_undefined)
{
    json_t *root = metrics_to_json(m, baseline, baseline_modes, baseline_undefined);
    char *text = json_dumps(root, JSON_INDENT(2) | JSON_REAL_PRECISION(17));
    json_decref(root);
    if (!text)
        return err_set(RB_EXIT_RUNTIME, "%s: could not format the metrics as JSON", path);
    size_t n = strlen(text);
    text = xrealloc(text, n + 2);
    text[n] = '\n';
    int rc = write_file_atomic(path, text, n + 1);
    free(text);
    return rc ? err_prefix(rc, "writing metrics") : 0;
}
