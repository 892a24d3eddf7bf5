/* test_prep.c: rubric prep: bad rows, strict mode, dedup against the Python recipe, scores,
 * length filter, split, packing and schedule invariants, batches, the cache. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "batch.h"
#include "config.h"
#include "prep.h"
#include "tokenizer.h"
#include "util.h"

#define TOKDIR "share/qwen3-tokenizer"
#define FIX "tests/fixtures/prep/"
/* The repository's own EmoBank subset (2,000 rows): every clone has it. */
#define EMOBANK "data/emobank/train.jsonl"
/* The full shared data: present in CI and /work, absent from users' clones. */
#define SHARED_DATA "../shared/data"

/* Skip (visibly) a case that needs ../shared/data when that file is absent. */
#define SKIP_UNLESS_SHARED(path)                                                                \
    do {                                                                                        \
        if (access((path), R_OK) != 0)                                                          \
            cr_skip_test("../shared/data not found: %s (this case runs where it exists)",     \
                         (path));                                                               \
    } while (0)

static tokenizer *tk;
static char tmpdir[64];

static void setup(void)
{
    cr_assert_eq(tokenizer_load(&tk, TOKDIR), 0, "%s", err_msg());
    strcpy(tmpdir, "/tmp/rubric_test_prep_XXXXXX");
    cr_assert(mkdtemp(tmpdir));
}

static void teardown(void)
{
    tokenizer_free(tk);
    char *cmd = xasprintf("rm -rf '%s'", tmpdir);
    cr_assert_eq(system(cmd), 0);
    free(cmd);
}

/* A config with the given dataset files (NULL-terminated). */
static void make_config(rubric_config *cfg, const char *const *paths)
{
    config_defaults(cfg);
    cfg->n_datasets = 0;
    while (paths[cfg->n_datasets])
        cfg->n_datasets++;
    cfg->datasets = xcalloc((size_t)cfg->n_datasets, sizeof *cfg->datasets);
    for (int i = 0; i < cfg->n_datasets; i++) {
        cfg->datasets[i].path = xstrdup(paths[i]);
        cfg->datasets[i].type = xstrdup("alpaca");
    }
    cfg->chat_template = xstrdup("qwen3");
    cfg->prompt_format = PROMPT_CHATML_QWEN3;
    free(cfg->dataset_prepared_path);
    cfg->dataset_prepared_path = xasprintf("%s/prepared", tmpdir);
    cfg->sequence_len = 8192;
    cfg->sample_packing = 1;
    cfg->val_set_size = 0;
    cfg->seed = 42;
}

static char *write_tmp(const char *name, const char *text, size_t len)
{
    char *path = xasprintf("%s/%s", tmpdir, name);
    cr_assert_eq(write_file_atomic(path, text, len), 0);
    return path;
}

static json_t *read_rejects(const rubric_config *cfg, int *n)
{
    char *path = xasprintf("%s/rejects.jsonl", cfg->dataset_prepared_path);
    char *text;
    size_t len;
    cr_assert_eq(read_file(path, &text, &len), 0);
    json_t *arr = json_array();
    for (char *l = strtok(text, "\n"); l; l = strtok(NULL, "\n")) {
        json_t *o = json_loads(l, 0, NULL);
        cr_assert(o, "rejects.jsonl holds invalid JSON: %s", l);
        json_array_append_new(arr, o);
    }
    *n = (int)json_array_size(arr);
    free(text);
    free(path);
    return arr;
}

#define ROW(i, o) "{\"instruction\": \"Rate.\", \"input\": \"row " #i "\", \"output\": \"" o "\"}\n"

static const char bad_rows[] =
    ROW(1, "3 4 2")                                       /* 1 ok */
    "\n"                                                  /* 2 blank_line */
    "\xEF\xBB\xBF" ROW(3, "1 1 1")                        /* 3 bom */
    "{\"instruction\": \"Rate.\", \"input\": \"bad \xC3\x28\", \"output\": \"1 2 3\"}\n" /* 4 */
    "{\"instruction\": \"Rate.\", \"input\": \"x\", \"output\": \n"  /* 5 not_json */
    "[1, 2, 3]\n"                                         /* 6 not_object */
    "{\"instruction\": \"Rate.\", \"output\": \"1 2 3\"}\n"          /* 7 missing_field */
    "{\"instruction\": \"Rate.\", \"input\": 5, \"output\": \"1 2 3\"}\n"  /* 8 not string */
    ROW(9, "2 2 2")                                       /* 9 ok */
    "   \t\r\n"                                           /* 10 blank_line (CRLF) */
    ROW(11, "5 5 5")                                      /* 11 ok */
    "{\"instruction\": \"Rate.\", \"input\": \"nul\\u0000\", \"output\": \"1 2 3\"}\n"; /* 12 */

struct expected_reject {
    int line;
    const char *reason;
};

static const struct expected_reject bad_expected[] = {
    {2, "blank_line"}, {3, "bom"}, {4, "invalid_utf8"}, {5, "not_json"}, {6, "not_object"},
    {7, "missing_field"}, {8, "field_not_string"}, {10, "blank_line"}, {12, "not_json"},
};

Test(prep, bad_rows_are_skipped_counted_and_listed, .init = setup, .fini = teardown)
{
    char *path = write_tmp("bad.jsonl", bad_rows, sizeof bad_rows - 1);
    const char *paths[] = {path, NULL};
    rubric_config cfg;
    make_config(&cfg, paths);
    char *cache;
    prep_stats st;
    cr_assert_eq(prep_run(&cfg, tk, &cache, &st), 0, "%s", err_msg());
    cr_assert_eq(st.rows_read, 12);
    cr_assert_eq(st.kept, 3);
    cr_assert_eq(st.rejected_total, (int64_t)RB_ARRAY_LEN(bad_expected));
    cr_assert_eq(st.rejected[PREP_BLANK_LINE], 2);
    cr_assert_eq(st.rejected[PREP_NOT_JSON], 2);

    int n;
    json_t *rej = read_rejects(&cfg, &n);
    cr_assert_eq(n, (int)RB_ARRAY_LEN(bad_expected));
    for (int i = 0; i < n; i++) {
        json_t *o = json_array_get(rej, (size_t)i);
        cr_assert_str_eq(json_string_value(json_object_get(o, "file")), path);
        cr_assert_eq(json_integer_value(json_object_get(o, "line")), bad_expected[i].line);
        cr_assert_str_eq(json_string_value(json_object_get(o, "reason")),
                         bad_expected[i].reason, "line %d", bad_expected[i].line);
        cr_assert(json_is_string(json_object_get(o, "text")));
    }
    /* the detail names the field */
    const char *d = json_string_value(json_object_get(json_array_get(rej, 5), "detail"));
    cr_assert(strstr(d, "'input'"), "detail: %s", d);
    json_decref(rej);

    /* the kept rows are lines 1, 9, 11 */
    prep_dataset *ds;
    cr_assert_eq(prep_dataset_open(&ds, cache), 0, "%s", err_msg());
    cr_assert_eq(ds->n_samples, 3);
    cr_assert_eq(ds->line[0], 1);
    cr_assert_eq(ds->line[1], 9);
    cr_assert_eq(ds->line[2], 11);
    prep_dataset_close(ds);
    free(cache);
    free(path);
    config_free(&cfg);
}

Test(prep, strict_mode_stops_at_the_first_bad_row, .init = setup, .fini = teardown)
{
    char *path = write_tmp("bad.jsonl", bad_rows, sizeof bad_rows - 1);
    const char *paths[] = {path, NULL};
    rubric_config cfg;
    make_config(&cfg, paths);
    cfg.strict = 1;
    char *cache;
    prep_stats st;
    cr_assert_eq(prep_run(&cfg, tk, &cache, &st), RB_EXIT_INPUT);
    char *where = xasprintf("%s:2: blank_line", path);
    cr_assert(strstr(err_msg(), where), "message: %s", err_msg());
    free(where);

    /* a field error names the field; nothing is cached */
    static const char missing[] = ROW(1, "1 1 1") "{\"instruction\": \"x\", \"input\": \"y\"}\n";
    char *p2 = write_tmp("missing.jsonl", missing, sizeof missing - 1);
    free(cfg.datasets[0].path);
    cfg.datasets[0].path = xstrdup(p2);
    cr_assert_eq(prep_run(&cfg, tk, &cache, &st), RB_EXIT_INPUT);
    cr_assert(strstr(err_msg(), ":2: missing_field: field 'output' is missing"), "%s",
              err_msg());
    char *cmd = xasprintf("test -z \"$(ls %s/prepared | grep -v '^rejects.jsonl$')\"",
                          tmpdir);
    cr_assert_eq(system(cmd), 0, "a failed prep left files besides rejects.jsonl");
    free(cmd);
    free(p2);
    free(path);
    config_free(&cfg);
}

Test(prep, strict_mode_exit_code_of_the_command, .init = setup, .fini = teardown)
{
    const char *bin = getenv("RUBRIC_BIN");
    cr_assert(bin, "RUBRIC_BIN is not set");
    char *data = write_tmp("bad.jsonl", bad_rows, sizeof bad_rows - 1);
    char *yml = xasprintf("chat_template: qwen3\ndatasets:\n  - path: %s\n    type: alpaca\n"
                          "dataset_prepared_path: %s/prepared\nstrict: true\n", data, tmpdir);
    char *cfg = write_tmp("cfg.yml", yml, strlen(yml));
    char *cmd = xasprintf("%s prep %s --tokenizer %s >/dev/null 2>%s/err.txt", bin, cfg,
                          TOKDIR, tmpdir);
    int st = system(cmd);
    cr_assert(WIFEXITED(st));
    cr_assert_eq(WEXITSTATUS(st), 2);
    char *errp = xasprintf("%s/err.txt", tmpdir), *err;
    size_t n;
    cr_assert_eq(read_file(errp, &err, &n), 0);
    cr_assert(strstr(err, "bad.jsonl:2: blank_line"), "stderr: %s", err);

    /* without strict the same data runs: one warning per reason names rejects.jsonl, and
     * the report table shows where the rejects are listed */
    free(cmd);
    free(err);
    cmd = xasprintf("%s prep %s --tokenizer %s --set strict=false >%s/out.txt 2>%s", bin, cfg,
                    TOKDIR, tmpdir, errp);
    st = system(cmd);
    cr_assert_eq(WEXITSTATUS(st), 0);
    cr_assert_eq(read_file(errp, &err, &n), 0);
    char *rejects = xasprintf("%s/prepared/rejects.jsonl", tmpdir);
    static const char *const reasons[] = {"blank_line", "bom", "invalid_utf8", "not_json",
                                          "not_object", "missing_field", "field_not_string"};
    for (size_t i = 0; i < RB_ARRAY_LEN(reasons); i++) {
        int count = 0;
        for (size_t k = 0; k < RB_ARRAY_LEN(bad_expected); k++)
            count += strcmp(bad_expected[k].reason, reasons[i]) == 0;
        char *want = xasprintf("prep: rejected %d of 12 rows (%s); see %s", count, reasons[i],
                               rejects);
        cr_assert(strstr(err, want), "no warning '%s' in stderr: %s", want, err);
        free(want);
    }
    char *outp = xasprintf("%s/out.txt", tmpdir), *out;
    cr_assert_eq(read_file(outp, &out, &n), 0);
    cr_assert(strstr(out, "listed in") && strstr(out, rejects), "report: %s", out);
    free(out);

    /* strict again: the cache of the non-strict build matches, but its skipped rows are the
     * same error a fresh strict build gives (exit 2, the first bad row named) */
    free(cmd);
    free(err);
    cmd = xasprintf("%s prep %s --tokenizer %s --strict >/dev/null 2>%s", bin, cfg, TOKDIR,
                    errp);
    st = system(cmd);
    cr_assert(WIFEXITED(st));
    cr_assert_eq(WEXITSTATUS(st), 2, "--strict reused a cache whose build rejected rows");
    cr_assert_eq(read_file(errp, &err, &n), 0);
    cr_assert(strstr(err, "bad.jsonl:2: blank_line"), "stderr: %s", err);
    free(err), free(errp), free(cmd), free(cfg), free(yml), free(data), free(rejects);
    free(outp);
}

Test(prep, strict_run_reusing_a_cache_with_rejects_fails_like_a_fresh_one, .init = setup,
     .fini = teardown)
{
    char *path = write_tmp("bad.jsonl", bad_rows, sizeof bad_rows - 1);
    const char *paths[] = {path, NULL};
    rubric_config cfg;
    make_config(&cfg, paths);
    char *cache, *fresh_msg;
    prep_stats st;

    /* the error of a fresh strict build, in a folder of its own */
    cfg.strict = 1;
    cr_assert_eq(prep_run(&cfg, tk, &cache, &st), RB_EXIT_INPUT);
    fresh_msg = xstrdup(err_msg());

    /* a normal build in another folder, then strict there: the cache matches */
    cfg.strict = 0;
    free(cfg.dataset_prepared_path);
    cfg.dataset_prepared_path = xasprintf("%s/prepared2", tmpdir);
    cr_assert_eq(prep_run(&cfg, tk, &cache, &st), 0, "%s", err_msg());
    cr_assert_eq(st.cache_reused, 0);
    char *want = xasprintf("%s:2: blank_line", path);
    cr_assert(strstr(st.first_reject, want), "first_reject: %s", st.first_reject);
    free(cache);
    cfg.strict = 1;
    cr_assert_eq(prep_run(&cfg, tk, &cache, &st), RB_EXIT_INPUT);
    cr_assert_str_eq(err_msg(), fresh_msg);

    /* the same bytes under another name match the cache; the error names this config's file */
    char *copy = write_tmp("copy.jsonl", bad_rows, sizeof bad_rows - 1);
    free(cfg.datasets[0].path);
    cfg.datasets[0].path = xstrdup(copy);
    cr_assert_eq(prep_run(&cfg, tk, &cache, &st), RB_EXIT_INPUT);
    char *want_copy = xasprintf("%s:2: blank_line", copy);
    cr_assert(strstr(err_msg(), want_copy), "%s", err_msg());
    free(want_copy), free(copy);

    /* report.json says where the rejects are and which row a strict build stops at */
    char *rp = xasprintf("%s/report.json", cfg.dataset_prepared_path);
    json_t *rep = json_load_file(rp, 0, NULL);
    cr_assert(rep);
    char *rej = xasprintf("%s/rejects.jsonl", cfg.dataset_prepared_path);
    cr_assert_str_eq(json_string_value(json_object_get(rep, "rejects")), rej);
    cr_assert(strstr(json_string_value(json_object_get(rep, "first_reject")), want));
    json_decref(rep);

    /* clean data: strict reuses the cache */
    static const char good[] = ROW(1, "3 4 2") ROW(2, "1 1 1");
    char *p2 = write_tmp("good.jsonl", good, sizeof good - 1);
    free(cfg.datasets[0].path);
    cfg.datasets[0].path = xstrdup(p2);
    cfg.strict = 0;
    cr_assert_eq(prep_run(&cfg, tk, &cache, &st), 0, "%s", err_msg());
    free(cache);
    cfg.strict = 1;
    cr_assert_eq(prep_run(&cfg, tk, &cache, &st), 0, "%s", err_msg());
    cr_assert_eq(st.cache_reused, 1);
    free(cache);
    free(rej), free(rp), free(want), free(fresh_msg), free(p2), free(path);
    config_free(&cfg);
}

Test(prep, a_directory_or_missing_dataset_is_an_input_error, .init = setup, .fini = teardown)
{
    char *dir = xasprintf("%s/data_dir", tmpdir);
    cr_assert_eq(mkdir_p(dir), 0);
    const char *paths[] = {dir, NULL};
    rubric_config cfg;
    make_config(&cfg, paths);
    char *cache;
    prep_stats st;
    cr_assert_eq(prep_run(&cfg, tk, &cache, &st), RB_EXIT_INPUT);
    char *want = xasprintf("%s is a directory", dir);
    cr_assert(strstr(err_msg(), want), "%s", err_msg());
    cr_assert(!path_exists(cfg.dataset_prepared_path), "work was done before the check");
    free(cfg.datasets[0].path);
    cfg.datasets[0].path = xasprintf("%s/missing.jsonl", tmpdir);
    cr_assert_eq(prep_run(&cfg, tk, &cache, &st), RB_EXIT_INPUT);
    cr_assert(strstr(err_msg(), "missing.jsonl: cannot open: No such file"), "%s", err_msg());
    free(want), free(dir);
    config_free(&cfg);
}

/* Run `rubric inspect PATH`: exit status; stdout and stderr (malloc'ed). */
static int run_inspect(const char *path, char **out, char **err)
{
    const char *bin = getenv("RUBRIC_BIN");
    cr_assert(bin, "RUBRIC_BIN is not set");
    char *cmd = xasprintf("%s inspect %s >%s/i.out 2>%s/i.err", bin, path, tmpdir, tmpdir);
    int st = system(cmd);
    free(cmd);
    size_t n;
    char *p = xasprintf("%s/i.out", tmpdir);
    cr_assert_eq(read_file(p, out, &n), 0);
    free(p);
    p = xasprintf("%s/i.err", tmpdir);
    cr_assert_eq(read_file(p, err, &n), 0);
    free(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

Test(prep, inspect_prints_a_prepared_dataset_and_refuses_other_files, .init = setup,
     .fini = teardown)
{
    char *path = write_tmp("bad.jsonl", bad_rows, sizeof bad_rows - 1);
    const char *paths[] = {path, NULL};
    rubric_config cfg;
    make_config(&cfg, paths);
    char *cache, *out, *err;
    prep_stats st;
    cr_assert_eq(prep_run(&cfg, tk, &cache, &st), 0, "%s", err_msg());

    /* the prepared dataset: its fingerprint (the file name) and the report's counts */
    cr_assert_eq(run_inspect(cache, &out, &err), 0, "stderr: %s", err);
    char fp[17];
    snprintf(fp, sizeof fp, "%s", strrchr(cache, '/') + 1);
    cr_assert(strstr(out, fp), "no fingerprint %s in: %s", fp, out);
    char *line = xasprintf("samples (train + val)        %12lld", (long long)st.kept);
    cr_assert(strstr(out, line), "no '%s' in: %s", line, out);
    free(line);
    line = xasprintf("rows read                    %12lld", (long long)st.rows_read);
    cr_assert(strstr(out, line), "no '%s' in: %s", line, out);
    free(line);
    line = xasprintf("scores per row               %12d", st.n_scores);
    cr_assert(strstr(out, line), "no '%s' in: %s", line, out);
    free(line), free(out), free(err);

    /* a JSONL file: not HDF5, and never the advice to delete it */
    cr_assert_eq(run_inspect(path, &out, &err), 2);
    cr_assert(strstr(err, "(not an HDF5 file)"), "stderr: %s", err);
    cr_assert(!strstr(err, "delete"), "stderr: %s", err);
    free(out), free(err);

    /* a directory */
    cr_assert_eq(run_inspect(tmpdir, &out, &err), 2);
    cr_assert(strstr(err, "is a directory"), "stderr: %s", err);
    free(out), free(err);
    free(cache), free(path);
    config_free(&cfg);
}

Test(prep, empty_or_unusable_file_is_an_error, .init = setup, .fini = teardown)
{
    char *empty = write_tmp("empty.jsonl", "", 0);
    const char *paths[] = {empty, NULL};
    rubric_config cfg;
    make_config(&cfg, paths);
    char *cache;
    prep_stats st;
    cr_assert_eq(prep_run(&cfg, tk, &cache, &st), RB_EXIT_INPUT);
    cr_assert(strstr(err_msg(), "empty"), "%s", err_msg());
    config_free(&cfg);

    static const char junk[] = "not json\n[1]\n\n";
    char *bad = write_tmp("junk.jsonl", junk, sizeof junk - 1);
    const char *paths2[] = {bad, NULL};
    make_config(&cfg, paths2);
    cr_assert_eq(prep_run(&cfg, tk, &cache, &st), RB_EXIT_INPUT);
    cr_assert(strstr(err_msg(), "junk.jsonl: none of its 3 lines"), "%s", err_msg());
    config_free(&cfg);
    free(empty);
    free(bad);
}

/* The kept physical lines of one file must equal the Python recipe's. */
static void check_dedup(const char *data_path, const char *fixture_key)
{
    json_error_t e;
    json_t *fx = json_load_file(FIX "dedup_kept.json", 0, &e);
    cr_assert(fx, "%s", e.text);
    json_t *want = json_object_get(fx, fixture_key);
    cr_assert(json_is_array(want));

    const char *paths[] = {data_path, NULL};
    rubric_config cfg;
    make_config(&cfg, paths);
    cfg.score_max = 9; /* keep every row: this test is about duplicates only */
    char *cache;
    prep_stats st;
    cr_assert_eq(prep_run(&cfg, tk, &cache, &st), 0, "%s", err_msg());
    cr_assert_eq(st.rejected_total, 0, "%s: rejected rows", fixture_key);
    cr_assert_eq(st.too_long, 0);
    prep_dataset *ds;
    cr_assert_eq(prep_dataset_open(&ds, cache), 0, "%s", err_msg());
    cr_assert_eq((size_t)ds->n_samples, json_array_size(want), "%s: kept %lld, Python %zu",
                 fixture_key, (long long)ds->n_samples, json_array_size(want));
    cr_assert_eq(st.duplicates, st.rows_read - ds->n_samples);
    for (int64_t i = 0; i < ds->n_samples; i++)
        cr_assert_eq(ds->line[i], json_integer_value(json_array_get(want, (size_t)i)),
                     "%s: kept row %lld", fixture_key, (long long)i);
    prep_dataset_close(ds);
    free(cache);
    config_free(&cfg);
    json_decref(fx);
}

Test(prep, dedup_matches_python_on_crafted_rows, .init = setup, .fini = teardown)
{
    check_dedup(FIX "dedup_rows.jsonl", "dedup_rows.jsonl");
}

Test(prep, dedup_matches_python_on_shared_data, .init = setup, .fini = teardown,
     .timeout = 240)
{
    static const char *const files[] = {"emobank/train.jsonl", "emobank/dev.jsonl",
                                        "ellipse/train.jsonl"};
    char path[256];
    for (size_t i = 0; i < RB_ARRAY_LEN(files); i++) {
        snprintf(path, sizeof path, SHARED_DATA "/%s", files[i]);
        SKIP_UNLESS_SHARED(path);
    }
    for (size_t i = 0; i < RB_ARRAY_LEN(files); i++) {
        snprintf(path, sizeof path, SHARED_DATA "/%s", files[i]);
        check_dedup(path, files[i]);
    }
}

Test(prep, score_rows_that_do_not_fit_are_rejected, .init = setup, .fini = teardown)
{
    static const char rows[] =
        ROW(1, "3 4 2") ROW(2, "0 5 1") ROW(3, "3 4") ROW(4, "7 1 1") ROW(5, "good")
        ROW(6, "1 1 1") ROW(7, "3  4 2");
    char *path = write_tmp("scores.jsonl", rows, sizeof rows - 1);
    const char *paths[] = {path, NULL};
    rubric_config cfg;
    make_config(&cfg, paths);
    char *cache;
    prep_stats st;
    cr_assert_eq(prep_run(&cfg, tk, &cache, &st), 0, "%s", err_msg());
    cr_assert_eq(st.score_dataset, 1);
    cr_assert_eq(st.n_scores, 3);
    cr_assert_eq(st.kept, 3);
    cr_assert_eq(st.rejected[PREP_SCORE_COUNT], 1);
    cr_assert_eq(st.rejected[PREP_SCORE_OUT_OF_RANGE], 1);
    cr_assert_eq(st.rejected[PREP_NOT_A_SCORE], 2);
    int n;
    json_t *rej = read_rejects(&cfg, &n);
    cr_assert_eq(n, 4);
    int lines[4] = {0};
    for (int i = 0; i < n; i++)
        lines[i] = (int)json_integer_value(json_object_get(json_array_get(rej, (size_t)i),
                                                           "line"));
    cr_assert(lines[0] == 3 && lines[1] == 4 && lines[2] == 5 && lines[3] == 7);
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(rej, 0), "reason")),
                     "score_count");
    json_decref(rej);
    free(cache);
    config_free(&cfg);

    /* free-text outputs: not a score dataset, nothing rejected */
    static const char text_rows[] = ROW(1, "a fine answer") ROW(2, "another one") ROW(3, "3");
    char *p2 = write_tmp("text.jsonl", text_rows, sizeof text_rows - 1);
    const char *paths2[] = {p2, NULL};
    make_config(&cfg, paths2);
    cr_assert_eq(prep_run(&cfg, tk, &cache, &st), 0, "%s", err_msg());
    cr_assert_eq(st.score_dataset, 0);
    cr_assert_eq(st.kept, 3);
    cr_assert_eq(st.rejected_total, 0);
    free(cache);
    config_free(&cfg);
    free(p2);
    free(path);
}

/* A tie between two counts goes to the smaller one, whatever the row order (docs/prep.md):
 * 2 rows of 3 scores and 2 rows of 2 give 2 per row and reject the 3-score rows. */
Test(prep, score_count_tie_takes_the_smaller_count, .init = setup, .fini = teardown)
{
    static const char three_first[] = ROW(1, "3 4 2") ROW(2, "1 2 3") ROW(3, "3 4") ROW(4, "0 1");
    static const char two_first[] = ROW(1, "3 4") ROW(2, "0 1") ROW(3, "3 4 2") ROW(4, "1 2 3");
    const char *texts[] = {three_first, two_first};
    const char *names[] = {"tie_a.jsonl", "tie_b.jsonl"};
    for (int t = 0; t < 2; t++) {
        char *path = write_tmp(names[t], texts[t], strlen(texts[t]));
        const char *paths[] = {path, NULL};
        rubric_config cfg;
        make_config(&cfg, paths);
        char *cache;
        prep_stats st;
        cr_assert_eq(prep_run(&cfg, tk, &cache, &st), 0, "%s", err_msg());
        cr_assert_eq(st.score_dataset, 1);
        cr_assert_eq(st.n_scores, 2, "%s: K = %d", names[t], st.n_scores);
        cr_assert_eq(st.kept, 2);
        cr_assert_eq(st.rejected[PREP_SCORE_COUNT], 2);
        free(cache);
        config_free(&cfg);
        free(path);
    }
}

Test(prep, long_rows_are_dropped_and_counted, .init = setup, .fini = teardown)
{
    const char *paths[] = {EMOBANK, NULL};
    rubric_config cfg;
    make_config(&cfg, paths);
    cfg.sequence_len = 215;
    char *cache;
    prep_stats st;
    cr_assert_eq(prep_run(&cfg, tk, &cache, &st), 0, "%s", err_msg());
    cr_assert_gt(st.too_long, 0);
    cr_assert_gt(st.kept, 0);
    cr_assert_eq(st.kept + st.too_long + st.duplicates, st.rows_read);
    cr_assert_leq(st.max_len, 215);
    prep_dataset *ds;
    cr_assert_eq(prep_dataset_open(&ds, cache), 0);
    for (int64_t i = 0; i < ds->n_samples; i++)
        cr_assert_leq(ds->len[i], 215);
    prep_dataset_close(ds);
    free(cache);
    config_free(&cfg);
}

Test(prep, unknown_special_tokens_are_input_errors, .init = setup, .fini = teardown)
{
    const char *paths[] = {EMOBANK, NULL};
    static const char *const keys[] = {"pad_token", "eos_token"};
    for (int k = 0; k < 2; k++) {
        rubric_config cfg;
        make_config(&cfg, paths);
        if (k == 0) {
            cfg.pad_token = xstrdup("<|no_such_token|>");
        } else {
            cfg.prompt_format = PROMPT_ALPACA;
            cfg.eos_token = xstrdup("<|no_such_token|>");
        }
        char *cache = NULL;
        prep_stats st;
        cr_assert_eq(prep_run(&cfg, tk, &cache, &st), RB_EXIT_INPUT, "%s: no error", keys[k]);
        char *want = xasprintf("special_tokens.%s: the tokenizer has no '<|no_such_token|>' "
                               "token", keys[k]);
        cr_assert(strstr(err_msg(), want), "%s", err_msg());
        cr_assert_null(cache);
        free(want);
        config_free(&cfg);
    }
}

Test(prep, val_split_is_deterministic, .init = setup, .fini = teardown)
{
    const char *paths[] = {EMOBANK, NULL};
    rubric_config cfg;
    make_config(&cfg, paths);
    cfg.val_set_size = 0.1;
    char *cache1, *cache2;
    prep_stats st;
    cr_assert_eq(prep_run(&cfg, tk, &cache1, &st), 0, "%s", err_msg());
    cr_assert_eq(st.val_rows, (int64_t)((st.kept + 9) / 10), "ceil(0.1 * kept)");
    prep_dataset *a, *b;
    cr_assert_eq(prep_dataset_open(&a, cache1), 0);

    /* another seed: another split, same size */
    cfg.seed = 7;
    cr_assert_eq(prep_run(&cfg, tk, &cache2, &st), 0, "%s", err_msg());
    cr_assert_str_neq(cache1, cache2);
    cr_assert_eq(prep_dataset_open(&b, cache2), 0);
    int64_t differ = 0, val_a = 0;
    for (int64_t i = 0; i < a->n_samples; i++) {
        differ += a->split[i] != b->split[i];
        val_a += a->split[i];
    }
    cr_assert_eq(val_a, st.val_rows);
    cr_assert_gt(differ, 0);

    /* a count, and the same seed again: the same rows */
    prep_dataset_close(b);
    free(cache2);
    cfg.seed = 42;
    cfg.val_set_size = 100;
    free(cfg.dataset_prepared_path);
    cfg.dataset_prepared_path = xasprintf("%s/prepared2", tmpdir);
    cr_assert_eq(prep_run(&cfg, tk, &cache2, &st), 0);
    cr_assert_eq(st.val_rows, 100);
    cr_assert_eq(prep_dataset_open(&b, cache2), 0);
    /* the 100 lowest keys are a subset of the 10% lowest keys for the same seed */
    for (int64_t i = 0; i < b->n_samples; i++)
        if (b->split[i])
            cr_assert_eq(a->split[i], 1, "row %lld", (long long)i);
    prep_dataset_close(a);
    prep_dataset_close(b);
    free(cache1);
    free(cache2);
    config_free(&cfg);
}

/* Check one built micro-batch against the dataset; marks the samples seen. */
static void check_batch(const prep_dataset *ds, const int64_t *bins, int n_bins,
                        const packed_batch *b, int *seen)
{
    cr_assert_eq(b->n_seq, n_bins);
    cr_assert_eq(b->n_tokens, b->n_seq * b->seq_len);
    cr_assert_eq(b->cu_seqlens[0], 0);
    cr_assert_eq(b->cu_seqlens[b->n_samples], b->n_tokens);
    int64_t sup = 0;
    int seg = 0;
    uint32_t *tok = xmalloc((size_t)ds->sequence_len * sizeof *tok);
    for (int s = 0; s < n_bins; s++) {
        int32_t at = s * b->seq_len, end = at + b->seq_len;
        cr_assert_eq(b->cu_seqlens[seg], at, "a segment crosses sequence %d", s);
        if (bins[s] >= 0) {
            cr_assert_leq(ds->bin_tokens[bins[s]], b->seq_len);
            for (int64_t k = ds->bin_offsets[bins[s]]; k < ds->bin_offsets[bins[s] + 1]; k++) {
                int64_t i = ds->bin_samples[k];
                seen[i]++;
                int32_t len = ds->len[i];
                cr_assert_eq(b->cu_seqlens[seg + 1] - b->cu_seqlens[seg], len);
                prep_sample_tokens(ds, i, tok);
                for (int32_t t = 0; t < len; t++) {
                    cr_assert_eq(b->tokens[at + t], tok[t]);
                    cr_assert_eq(b->positions[at + t], t, "positions restart at 0");
                    int supervised_next = t + 1 < len && t + 1 >= ds->sup_start[i];
                    int32_t want = supervised_next ? (int32_t)tok[t + 1] : -1;
                    cr_assert_eq(b->targets[at + t], want, "sample %lld token %d",
                                 (long long)i, t);
                    sup += want >= 0;
                }
                at += len;
                seg++;
            }
        }
        if (at < end) {
            /* padding: its own segment, positions from 0, no targets */
            cr_assert_eq(b->cu_seqlens[seg], at);
            cr_assert_eq(b->cu_seqlens[seg + 1], end);
            for (int32_t t = at; t < end; t++) {
                cr_assert_eq(b->targets[t], -1);
                cr_assert_eq(b->positions[t], t - at);
                cr_assert_eq(b->tokens[t], ds->pad_id);
            }
            seg++;
        }
    }
    cr_assert_eq(seg, b->n_samples);
    cr_assert_eq(sup, b->n_supervised);
    free(tok);
}

/* resident 0: the tokens are read from the file a sample at a time */
static void check_schedule(const char *cache, int n_workers, int ga, int mbs, int64_t resident)
{
    prep_dataset *ds;
    cr_assert_eq(prep_dataset_open_ex(&ds, cache, resident), 0, "%s", err_msg());
    cr_assert_eq(ds->tokens == NULL, resident == 0);
    prep_schedule s;
    cr_assert_eq(prep_schedule_init(&s, ds, n_workers, ga, mbs, 42), 0);
    int per = ga * mbs;
    int64_t *bins = xmalloc((size_t)per * sizeof *bins);
    int *seen = xcalloc((size_t)ds->n_samples, sizeof *seen);
    int64_t max_bin = 0;
    for (int64_t k = 0; k < ds->n_train_bins; k++)
        max_bin = RB_MAX(max_bin, ds->bin_tokens[k]);

    for (int epoch = 0; epoch < 2; epoch++) {
        memset(seen, 0, (size_t)ds->n_samples * sizeof *seen);
        for (int64_t step = 0; step < s.steps_per_epoch; step++) {
            int64_t lo = INT64_MAX, hi = 0;
            for (int w = 0; w < n_workers; w++) {
                cr_assert_eq(prep_schedule_step(&s, epoch, step, w, bins), 0);
                int64_t load = 0;
                for (int m = 0; m < ga; m++) {
                    packed_batch b;
                    prep_build_batch(ds, bins + m * mbs, mbs, &b);
                    check_batch(ds, bins + m * mbs, mbs, &b, seen);
                    packed_batch_free(&b);
                }
                for (int j = 0; j < per; j++)
                    load += bins[j] >= 0 ? ds->bin_tokens[bins[j]] : 0;
                lo = RB_MIN(lo, load);
                hi = RB_MAX(hi, load);
            }
            /* LPT balance: workers differ by at most one bin's tokens */
            cr_assert_leq(hi - lo, max_bin, "step %lld: loads %lld..%lld", (long long)step,
                          (long long)lo, (long long)hi);
        }
        for (int64_t i = 0; i < ds->n_samples; i++)
            cr_assert_eq(seen[i], ds->split[i] ? 0 : 1, "epoch %d: sample %lld seen %d times",
                         epoch, (long long)i, seen[i]);
    }

    /* any rank computes the same step on its own (a fresh schedule, resumed mid-epoch) */
    prep_schedule s2;
    cr_assert_eq(prep_schedule_init(&s2, ds, n_workers, ga, mbs, 42), 0);
    int64_t *again = xmalloc((size_t)per * sizeof *again);
    int64_t step = s.steps_per_epoch / 2;
    cr_assert_eq(prep_schedule_step(&s, 1, step, n_workers - 1, bins), 0);
    cr_assert_eq(prep_schedule_step(&s2, 1, step, n_workers - 1, again), 0);
    cr_assert_eq(memcmp(bins, again, (size_t)per * sizeof *bins), 0);
    cr_assert_eq(prep_schedule_step(&s2, 0, s.steps_per_epoch, 0, again), RB_EXIT_INPUT);
    free(again);
    prep_schedule_free(&s2);
    prep_schedule_free(&s);
    free(seen);
    free(bins);
    prep_dataset_close(ds);
}

Test(prep, packing_schedule_and_batches, .init = setup, .fini = teardown, .timeout = 240)
{
    const char *paths[] = {EMOBANK, NULL};
    rubric_config cfg;
    make_config(&cfg, paths);
    cfg.sequence_len = 1024;
    cfg.val_set_size = 0.05;
    char *cache;
    prep_stats st;
    cr_assert_eq(prep_run(&cfg, tk, &cache, &st), 0, "%s", err_msg());

    /* every sample in exactly one bin, no bin over sequence_len, splits never mixed */
    prep_dataset *ds;
    cr_assert_eq(prep_dataset_open(&ds, cache), 0);
    int *in = xcalloc((size_t)ds->n_samples, sizeof *in);
    for (int64_t k = 0; k < ds->n_bins; k++) {
        int64_t tokens = 0;
        for (int64_t j = ds->bin_offsets[k]; j < ds->bin_offsets[k + 1]; j++) {
            int64_t i = ds->bin_samples[j];
            in[i]++;
            tokens += ds->len[i];
            cr_assert_eq(ds->split[i], k >= ds->n_train_bins);
        }
        cr_assert_eq(tokens, ds->bin_tokens[k]);
        cr_assert_leq(tokens, 1024);
    }
    for (int64_t i = 0; i < ds->n_samples; i++)
        cr_assert_eq(in[i], 1);
    /* first-fit decreasing uses at most 11/9 OPT + 6/9 bins, and OPT >= tokens / capacity */
    int64_t train_tokens = 0;
    for (int64_t k = 0; k < ds->n_train_bins; k++)
        train_tokens += ds->bin_tokens[k];
    double opt_low = ceil((double)train_tokens / 1024.0);
    cr_assert_leq((double)ds->n_train_bins, 11.0 / 9.0 * opt_low + 1.0);
    cr_assert_float_eq(st.packing_efficiency,
                       (double)train_tokens / (1024.0 * (double)ds->n_train_bins), 1e-9);
    free(in);
    prep_dataset_close(ds);

    check_schedule(cache, 3, 2, 2, PREP_RESIDENT_TOKEN_BYTES);
    check_schedule(cache, 1, 1, 1, 0);
    free(cache);

    /* without packing: one sample per sequence */
    cfg.sample_packing = 0;
    cr_assert_eq(prep_run(&cfg, tk, &cache, &st), 0, "%s", err_msg());
    cr_assert_eq(st.train_bins, st.train_rows);
    check_schedule(cache, 2, 3, 4, PREP_RESIDENT_TOKEN_BYTES);
    free(cache);
    config_free(&cfg);
}

Test(prep, cache_is_reused_and_rebuilt, .init = setup, .fini = teardown)
{
    static const char rows[] = ROW(1, "3 4 2") ROW(2, "1 1 1");
    char *path = write_tmp("data.jsonl", rows, sizeof rows - 1);
    const char *paths[] = {path, NULL};
    rubric_config cfg;
    make_config(&cfg, paths);
    char *c1, *c2, *c3, *c4;
    prep_stats st;
    cr_assert_eq(prep_run(&cfg, tk, &c1, &st), 0, "%s", err_msg());
    cr_assert_eq(st.cache_reused, 0);
    cr_assert_eq(prep_run(&cfg, tk, &c2, &st), 0);
    cr_assert_eq(st.cache_reused, 1);
    cr_assert_str_eq(c1, c2);
    cr_assert_eq(st.kept, 2, "the reused report carries the counts");

    /* a changed input file: a new fingerprint, rebuilt */
    static const char more[] = ROW(1, "3 4 2") ROW(2, "1 1 1") ROW(3, "2 2 2");
    cr_assert_eq(write_file_atomic(path, more, sizeof more - 1), 0);
    cr_assert_eq(prep_run(&cfg, tk, &c3, &st), 0);
    cr_assert_eq(st.cache_reused, 0);
    cr_assert_eq(st.kept, 3);
    cr_assert_str_neq(c1, c3);

    /* a config key that matters: rebuilt; one that does not (micro_batch_size): reused */
    cfg.sequence_len = 4096;
    cr_assert_eq(prep_run(&cfg, tk, &c4, &st), 0);
    cr_assert_eq(st.cache_reused, 0);
    cr_assert_str_neq(c3, c4);
    free(c4);
    cfg.micro_batch_size = 7;
    cr_assert_eq(prep_run(&cfg, tk, &c4, &st), 0);
    cr_assert_eq(st.cache_reused, 1);

    /* a damaged cache file with the right name is rebuilt, not trusted */
    cr_assert_eq(write_file_atomic(c4, "junk", 4), 0);
    free(c4);
    cr_assert_eq(prep_run(&cfg, tk, &c4, &st), 0);
    cr_assert_eq(st.cache_reused, 0);
    prep_dataset *ds;
    cr_assert_eq(prep_dataset_open(&ds, c4), 0, "%s", err_msg());
    cr_assert_eq(ds->n_samples, 3);
    prep_dataset_close(ds);

    /* report.json is written */
    char *rp = xasprintf("%s/report.json", cfg.dataset_prepared_path);
    json_t *rep = json_load_file(rp, 0, NULL);
    cr_assert(rep);
    cr_assert_eq(json_integer_value(json_object_get(rep, "kept")), 3);
    json_decref(rep);
    free(rp);
    free(c1), free(c2), free(c3), free(c4), free(path);
    config_free(&cfg);
}

Test(prep, several_files_alpaca_style, .init = setup, .fini = teardown)
{
    static const char a[] = ROW(1, "3 4 2") ROW(2, "1 1 1");
    static const char b[] = ROW(2, "1 1 1") "oops\n" ROW(3, "2 2 2");
    char *pa = write_tmp("a.jsonl", a, sizeof a - 1), *pb = write_tmp("b.jsonl", b, sizeof b - 1);
    const char *paths[] = {pa, pb, NULL};
    rubric_config cfg;
    make_config(&cfg, paths);
    free(cfg.chat_template);
    cfg.chat_template = NULL;
    cfg.prompt_format = PROMPT_ALPACA;
    char *cache;
    prep_stats st;
    cr_assert_eq(prep_run(&cfg, tk, &cache, &st), 0, "%s", err_msg());
    cr_assert_eq(st.rows_read, 5);
    cr_assert_eq(st.duplicates, 1, "a row repeated in a later file is a duplicate");
    cr_assert_eq(st.kept, 3);

    /* the reject names the second file and its own line number */
    int n;
    json_t *rej = read_rejects(&cfg, &n);
    cr_assert_eq(n, 1);
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(rej, 0), "file")), pb);
    cr_assert_eq(json_integer_value(json_object_get(json_array_get(rej, 0), "line")), 2);
    json_decref(rej);

    /* Alpaca samples: the prompt text encoded whole, the answer ends with the eos id */
    prep_dataset *ds;
    cr_assert_eq(prep_dataset_open(&ds, cache), 0);
    cr_assert_eq(ds->file_index[2], 1);
    cr_assert_eq(ds->line[2], 3);
    uint32_t eos = (uint32_t)tokenizer_token_id(tk, "<|im_end|>");
    uint32_t *tok = xmalloc((size_t)ds->len[0] * sizeof *tok);
    prep_sample_tokens(ds, 0, tok);
    cr_assert_eq(tok[ds->len[0] - 1], eos);
    char *text;
    size_t len;
    cr_assert_eq(tokenizer_decode(tk, tok, (size_t)ds->sup_start[0], &text, &len), 0);
    cr_assert(strstr(text, "### Instruction:\nRate.\n\n### Input:\nrow 1\n\n### Response:\n"),
              "%s", text);
    free(text);
    free(tok);
    prep_dataset_close(ds);
    free(cache), free(pa), free(pb);
    config_free(&cfg);
}
