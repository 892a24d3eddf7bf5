/* test_score.c: `rubric score`'s data path with the fake model: output format and order, bad
 * rows, metrics, MPI equals one process, and resume after kills at random points. */
#include <jansson.h>

#include "test_score_util.h"

#include "config.h"
#include "metrics.h"
#include "prep.h"
#include "score.h"
#include "tokenizer.h"
#include "util.h"

static int parse(prep_score_shape *sh, const char *text, int k, int *s, int *not_a_score)
{
    return score_parse_answer(sh, text, strlen(text), k, 0, 5, s, not_a_score);
}

/* A truth is read by rubric prep's rule: integers separated by single spaces, nothing around
 * them (what prep rejects as not_a_score is not a truth here either). */
Test(score, parse_answer)
{
    int s[6], shape_bad = 0;
    prep_score_shape *sh = prep_score_shape_new();
    cr_assert(sh);
    cr_assert_eq(parse(sh, "3 4 2", 3, s, &shape_bad), 0);
    cr_assert(s[0] == 3 && s[1] == 4 && s[2] == 2 && !shape_bad);
    cr_assert_eq(parse(sh, "3 4", 3, s, &shape_bad), RB_EXIT_INPUT);
    cr_assert(!shape_bad);
    cr_assert_eq(parse(sh, "3 4 2 1", 3, s, NULL), RB_EXIT_INPUT);
    cr_assert_eq(parse(sh, "3 6 2", 3, s, &shape_bad), RB_EXIT_INPUT);
    cr_assert(!shape_bad);
    const char *not_scores[] = {" 3  3 3 ", "  1\t5 2\n", "3 4 2\n", "3  4 2", "3,4,2",
                                "3 4x 2", "", "-1 2 3"};
    for (size_t i = 0; i < sizeof not_scores / sizeof not_scores[0]; i++) {
        shape_bad = 0;
        cr_assert_eq(parse(sh, not_scores[i], 3, s, &shape_bad), RB_EXIT_INPUT, "'%s'",
                     not_scores[i]);
        cr_assert(shape_bad, "'%s'", not_scores[i]);
        cr_assert(strstr(err_msg(), "not_a_score"), "%s", err_msg());
    }
    prep_score_shape_free(sh);
    char *p = score_default_metrics_path("out/preds.jsonl");
    cr_assert_str_eq(p, "out/preds.metrics.json");
    free(p);
}

/* Run `rubric score --fake-model` (np 0: one process, else under mpirun -np np). */
static int run_score(int np, const char *in, const char *out, const char *log, int resume,
                     int delay_us, pid_t *started)
{
    char delay[32], nps[16];
    snprintf(delay, sizeof delay, "%d", delay_us);
    snprintf(nps, sizeof nps, "%d", np);
    char *argv[32];
    int a = 0;
    if (np > 0) {
        argv[a++] = "mpirun";
        argv[a++] = "-np";
        argv[a++] = nps;
        argv[a++] = "--oversubscribe";
    }
    argv[a++] = (char *)st_bin();
    argv[a++] = "score";
    argv[a++] = "--fake-model";
    argv[a++] = "--input";
    argv[a++] = (char *)in;
    argv[a++] = "--output";
    argv[a++] = (char *)out;
    argv[a++] = "--chunk-rows";
    argv[a++] = "16";
    argv[a++] = "--fake-delay-us";
    argv[a++] = delay;
    if (resume)
        argv[a++] = "--resume";
    argv[a] = NULL;
    pid_t pid = st_start(argv, log);
    if (started) {
        *started = pid;
        return 0;
    }
    return st_wait(pid, NULL);
}

static json_t *line_json(const char *line)
{
    json_error_t e;
    json_t *j = json_loads(line, 0, &e);
    cr_assert(j, "not JSON: %s (%s)", line, e.text);
    return j;
}

Test(score, fake_model_output_rows_in_order_with_bad_rows)
{
    char *dir = st_tmpdir(), *in = st_path(dir, "rows.jsonl"), *out = st_path(dir, "p.jsonl");
    char *log = st_path(dir, "log");
    long n = 300;
    st_write_rows(in, n, 3, 40);
    cr_assert_eq(run_score(0, in, out, log, 0, 0, NULL), 0, "see %s", log);

    /* one line per input line, rows 0..n-1 in order; bad lines are bad rows */
    FILE *f = fopen(out, "r");
    cr_assert(f);
    char *line = NULL;
    size_t cap = 0;
    long row = 0, bad = 0;
    while (getline(&line, &cap, f) > 0) {
        json_t *j = line_json(line);
        cr_assert_eq(json_integer_value(json_object_get(j, "row")), row);
        const char *status = json_string_value(json_object_get(j, "status"));
        int expect_bad = row % 40 == 7;
        if (expect_bad) {
            cr_assert_str_eq(status, "bad_row", "row %ld", row);
            cr_assert(json_is_null(json_object_get(j, "scores")));
            const char *err = json_string_value(json_object_get(j, "error"));
            char where[32];
            snprintf(where, sizeof where, "line %ld:", row + 1);
            cr_assert(err && strstr(err, where), "row %ld: error '%s'", row, err);
            bad++;
        } else {
            cr_assert(!strcmp(status, "ok") || !strcmp(status, "off_grammar"), "%s", status);
            json_t *sc = json_object_get(j, "scores");
            cr_assert_eq(json_array_size(sc), 3);
            char text[16];
            snprintf(text, sizeof text, "%d %d %d",
                     (int)json_integer_value(json_array_get(sc, 0)),
                     (int)json_integer_value(json_array_get(sc, 1)),
                     (int)json_integer_value(json_array_get(sc, 2)));
            cr_assert_str_eq(json_string_value(json_object_get(j, "text")), text);
        }
        json_decref(j);
        row++;
    }
    free(line);
    fclose(f);
    cr_assert_eq(row, n);
    cr_assert(bad > 5);

    /* nothing left behind, metrics next to the output with the row counts */
    char *partial = st_path(dir, "p.jsonl.partial"), *journal = st_path(dir, "p.jsonl.journal");
    cr_assert(access(partial, F_OK) != 0 && access(journal, F_OK) != 0);
    char *mpath = st_path(dir, "p.metrics.json");
    json_error_t e;
    json_t *m = json_load_file(mpath, 0, &e);
    cr_assert(m, "%s: %s", mpath, e.text);
    long unlabelled = 0;
    for (long i = 0; i < n; i++)
        unlabelled += i % 40 != 7 && i % 11 == 3;
    cr_assert_eq(json_integer_value(json_object_get(m, "bad_rows")), bad);
    cr_assert_eq(json_integer_value(json_object_get(m, "unlabelled_rows")), unlabelled);
    cr_assert_eq(json_integer_value(json_object_get(m, "rows")), n - bad - unlabelled);
    cr_assert(json_object_get(m, "majority_baseline"));
    json_decref(m);
    st_rm_rf(dir);
}

Test(score, bad_usage_writes_nothing)
{
    char *dir = st_tmpdir(), *out = st_path(dir, "p.jsonl"), *log = st_path(dir, "log");
    char *missing = st_path(dir, "missing.jsonl");
    cr_assert_eq(run_score(0, missing, out, log, 0, 0, NULL), 2);
    cr_assert(access(out, F_OK) != 0);
    char *in = st_path(dir, "rows.jsonl");
    FILE *f = fopen(in, "w");
    fprintf(f, "{\"instruction\": \"r\", \"input\": \"no output anywhere\"}\n");
    fclose(f);
    cr_assert_eq(run_score(0, in, out, log, 0, 0, NULL), 2);
    char *text = st_read(log, NULL);
    cr_assert(strstr(text, "--num-scores"), "%s", text);
    free(text);
    cr_assert(access(out, F_OK) != 0);
    st_rm_rf(dir);
}

Test(score, mpi_workers_equal_one_process, .timeout = 240)
{
    char *dir = st_tmpdir(), *in = st_path(dir, "rows.jsonl"), *log = st_path(dir, "log");
    char *one = st_path(dir, "one.jsonl"), *mpi = st_path(dir, "mpi.jsonl");
    st_write_rows(in, 2000, 4, 97);
    cr_assert_eq(run_score(0, in, one, log, 0, 0, NULL), 0);
    cr_assert_eq(run_score(4, in, mpi, log, 0, 0, NULL), 0, "see %s", log);
    cr_assert(st_same_file(one, mpi));
    char *m1 = st_path(dir, "one.metrics.json"), *m2 = st_path(dir, "mpi.metrics.json");
    cr_assert(st_same_file(m1, m2));
    st_rm_rf(dir);
}

/* Kill a run at random points, resume until it completes, compare with an uninterrupted run. */
static void kill_and_resume(int np, unsigned seed)
{
    char *dir = st_tmpdir(), *in = st_path(dir, "rows.jsonl"), *log = st_path(dir, "log");
    char *ref = st_path(dir, "ref.jsonl"), *out = st_path(dir, "out.jsonl");
    long n = 6000;
    st_write_rows(in, n, 3, 113);
    cr_assert_eq(run_score(0, in, ref, log, 0, 0, NULL), 0);

    /* about 6000 rows * 500 us / workers: a few seconds per full run */
    srand(seed);
    char *journal = st_path(dir, "out.jsonl.journal");
    int interrupted = 0, rc = -1;
    for (int attempt = 0; attempt < 12 && rc != 0; attempt++) {
        pid_t pid;
        run_score(np, in, out, log, attempt > 0, 500, &pid);
        if (attempt < 4) {
            /* once this run has started scoring, at a random moment */
            st_wait_for_text(log, "chunks of 16 rows", attempt + 2, 60);
            usleep((useconds_t)(rand() % 1200000));
            st_kill_tree(pid);
        }
        rc = st_wait(pid, NULL);
        if (rc != 0 && rc != 128 + SIGKILL)
            cr_assert_fail("run %d ended with %d; see %s", attempt, rc, log);
        interrupted += rc != 0 && access(journal, F_OK) == 0;
    }
    cr_assert_eq(rc, 0, "see %s", log);
    cr_assert(interrupted >= 1);
    char *text = st_read(log, NULL);
    cr_assert(strstr(text, "resuming"), "no run resumed from the journal; see %s", log);
    free(text);
    cr_assert(st_same_file(ref, out), "resumed output differs from the uninterrupted run");
    char *mr = st_path(dir, "ref.metrics.json"), *mo = st_path(dir, "out.metrics.json");
    cr_assert(st_same_file(mr, mo));
    st_rm_rf(dir);
}

Test(score, resume_after_kills_one_process, .timeout = 240)
{
    kill_and_resume(0, (unsigned)time(NULL));
}

Test(score, resume_after_kills_under_mpirun, .timeout = 300)
{
    kill_and_resume(3, (unsigned)time(NULL) + 1);
}

Test(score, resume_refuses_a_changed_input)
{
    char *dir = st_tmpdir(), *in = st_path(dir, "rows.jsonl"), *log = st_path(dir, "log");
    char *out = st_path(dir, "out.jsonl");
    st_write_rows(in, 3000, 3, 0);
    pid_t pid;
    run_score(0, in, out, log, 0, 300, &pid);
    st_wait_for_text(log, "chunks of 16 rows", 1, 60);
    usleep(500000);
    st_kill_tree(pid);
    st_wait(pid, NULL);
    char *journal = st_path(dir, "out.jsonl.journal");
    cr_assert(access(journal, F_OK) == 0);
    st_write_rows(in, 3001, 3, 0);
    cr_assert_eq(run_score(0, in, out, log, 1, 0, NULL), 2);
    char *text = st_read(log, NULL);
    cr_assert(strstr(text, "other inputs or options"), "%s", text);
    free(text);
    cr_assert(access(out, F_OK) != 0);
    st_rm_rf(dir);
}

Test(score, resume_of_a_finished_run_only_recomputes_metrics)
{
    char *dir = st_tmpdir(), *in = st_path(dir, "rows.jsonl"), *log = st_path(dir, "log");
    char *out = st_path(dir, "out.jsonl"), *copy = st_path(dir, "copy.jsonl");
    st_write_rows(in, 500, 2, 0);
    cr_assert_eq(run_score(0, in, out, log, 0, 0, NULL), 0);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", out, copy);
    cr_assert_eq(system(cmd), 0);
    cr_assert_eq(run_score(0, in, out, log, 1, 0, NULL), 0);
    cr_assert(st_same_file(out, copy));
    char *text = st_read(log, NULL);
    cr_assert(strstr(text, "already complete"), "%s", text);
    free(text);
    st_rm_rf(dir);
}

/* A kill between writing output and committing it leaves uncommitted bytes in the partial
 * output and maybe a torn journal line: resume drops both. */
Test(score, resume_drops_uncommitted_output_and_torn_commits, .timeout = 240)
{
    char *dir = st_tmpdir(), *in = st_path(dir, "rows.jsonl"), *log = st_path(dir, "log");
    char *ref = st_path(dir, "ref.jsonl"), *out = st_path(dir, "out.jsonl");
    char *partial = st_path(dir, "out.jsonl.partial"), *journal = st_path(dir, "out.jsonl.journal");
    st_write_rows(in, 4000, 3, 0);
    cr_assert_eq(run_score(0, in, ref, log, 0, 0, NULL), 0);
    pid_t pid;
    run_score(0, in, out, log, 0, 500, &pid);
    st_wait_for_text(journal, "commit ", 3, 60);
    st_kill_tree(pid);
    st_wait(pid, NULL);

    FILE *f = fopen(partial, "a");
    fprintf(f, "{\"row\": 123456, \"scores\": [9, 9, 9], \"text\": \"uncommitted\"}\n{\"row\": 1");
    fclose(f);
    f = fopen(journal, "a");
    fprintf(f, "commit 999999 999999");
    fclose(f);

    cr_assert_eq(run_score(0, in, out, log, 1, 0, NULL), 0, "see %s", log);
    cr_assert(st_same_file(ref, out), "resumed output differs from the uninterrupted run");
    st_rm_rf(dir);
}

/* Run a shell command line (output appended to log); its exit code. */
static int run_sh(const char *cmdline, const char *log)
{
    char *argv[] = {"/bin/sh", "-c", (char *)cmdline, NULL};
    return st_run(argv, log, NULL);
}

static int log_has(const char *log, const char *text)
{
    char *all = st_read(log, NULL);
    int has = all && strstr(all, text);
    free(all);
    return has;
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    cr_assert(f, "%s", path);
    fputs(text, f);
    fclose(f);
}

/* Replace line `lineno` (1-based) of path by text (without its '\n'). */
static void replace_line(const char *path, int lineno, const char *text)
{
    char *all = st_read(path, NULL);
    char *at = all;
    for (int i = 1; i < lineno; i++)
        at = strchr(at, '\n') + 1;
    char *next = strchr(at, '\n') + 1;
    FILE *f = fopen(path, "w");
    cr_assert(f, "%s", path);
    fwrite(all, 1, (size_t)(at - all), f);
    fprintf(f, "%s\n", text);
    fputs(next, f);
    fclose(f);
    free(all);
}

/* An empty line first in its chunk (the sanitizer build caught memcpy to a NULL buffer). */
Test(score, empty_line_first_in_a_chunk)
{
    char *dir = st_tmpdir(), *in = st_path(dir, "rows.jsonl"), *out = st_path(dir, "p.jsonl");
    char *log = st_path(dir, "log");
    write_text(in, "{\"instruction\": \"r\", \"output\": \"1 2\"}\n\n\n"
                   "{\"instruction\": \"r\", \"output\": \"2 3\"}\n");
    char *argv[] = {(char *)st_bin(), "score", "--fake-model", "--input", in, "--output", out,
                    "--chunk-rows", "1", NULL};
    cr_assert_eq(st_run(argv, log, NULL), 0, "see %s", log);
    char *text = st_read(out, NULL);
    int lines = 0;
    for (const char *p = text; p && *p; p++)
        lines += *p == '\n';
    cr_assert_eq(lines, 4, "%s", text);
    cr_assert(strstr(text, "{\"row\": 1, \"scores\": null"), "%s", text);
    free(text);
    st_rm_rf(dir);
}

/* No .partial, .journal or output next to out. */
static void assert_nothing_written(const char *out)
{
    char side[600];
    snprintf(side, sizeof side, "%s.partial", out);
    cr_assert(access(side, F_OK) != 0, "%s exists", side);
    snprintf(side, sizeof side, "%s.journal", out);
    cr_assert(access(side, F_OK) != 0, "%s exists", side);
}

Test(score, output_that_is_the_input_is_refused)
{
    char *dir = st_tmpdir(), *in = st_path(dir, "rows.jsonl"), *log = st_path(dir, "log");
    char *other = st_path(dir, "link.jsonl"), *keep = st_path(dir, "keep.jsonl");
    st_write_rows(in, 50, 3, 0);
    st_write_rows(keep, 50, 3, 0);
    cr_assert_eq(link(in, other), 0);

    /* the same path, and another name of the same file */
    cr_assert_eq(run_score(0, in, in, log, 0, 0, NULL), 2, "see %s", log);
    cr_assert(log_has(log, "is the input file"), "see %s", log);
    cr_assert_eq(run_score(0, in, other, log, 0, 0, NULL), 2, "see %s", log);
    cr_assert(st_same_file(in, keep), "the input was changed");
    assert_nothing_written(in);
    assert_nothing_written(other);
    st_rm_rf(dir);
}

Test(score, folders_as_input_or_output_are_refused_up_front)
{
    char *dir = st_tmpdir(), *in = st_path(dir, "rows.jsonl"), *log = st_path(dir, "log");
    char *sub = st_path(dir, "sub"), *out = st_path(dir, "p.jsonl");
    st_write_rows(in, 50, 3, 0);
    cr_assert_eq(mkdir(sub, 0755), 0);

    /* --output a folder */
    cr_assert_eq(run_score(0, in, sub, log, 0, 0, NULL), 2, "see %s", log);
    cr_assert(log_has(log, "is a directory"), "see %s", log);
    assert_nothing_written(sub);

    /* --input a folder, with and without --num-scores */
    cr_assert_eq(run_score(0, sub, out, log, 0, 0, NULL), 2, "see %s", log);
    char *argv[] = {(char *)st_bin(), "score", "--fake-model", "--input", sub, "--output", out,
                    "--num-scores", "3", NULL};
    cr_assert_eq(st_run(argv, log, NULL), 2, "see %s", log);
    cr_assert(!log_has(log, "read error"), "see %s", log);
    cr_assert(access(out, F_OK) != 0);
    assert_nothing_written(out);

    /* an unreadable input (root reads everything: checked as another user only) */
    if (geteuid() != 0) {
        cr_assert_eq(chmod(in, 0), 0);
        cr_assert_eq(run_score(0, in, out, log, 0, 0, NULL), 2, "see %s", log);
        assert_nothing_written(out);
    }
    st_rm_rf(dir);
}

Test(score, resume_of_a_finished_run_with_another_input_is_refused)
{
    char *dir = st_tmpdir(), *in = st_path(dir, "rows.jsonl"), *log = st_path(dir, "log");
    char *other = st_path(dir, "other.jsonl"), *out = st_path(dir, "p.jsonl");
    char *mpath = st_path(dir, "p.metrics.json"), *mkeep = st_path(dir, "keep.json");
    st_write_rows(in, 200, 3, 0);
    st_write_rows(other, 20, 3, 0);
    cr_assert_eq(run_score(0, in, out, log, 0, 0, NULL), 0, "see %s", log);
    char *cmd = malloc(strlen(mpath) + strlen(mkeep) + 16);
    sprintf(cmd, "cp '%s' '%s'", mpath, mkeep);
    cr_assert_eq(system(cmd), 0);

    /* the same input: metrics only; another input: exit 2, the metrics untouched */
    cr_assert_eq(run_score(0, in, out, log, 1, 0, NULL), 0, "see %s", log);
    cr_assert(log_has(log, "already complete"), "see %s", log);
    cr_assert_eq(run_score(0, other, out, log, 1, 0, NULL), 2, "see %s", log);
    cr_assert(log_has(log, "made from another input"), "see %s", log);
    cr_assert(st_same_file(mpath, mkeep));
    free(cmd);
    st_rm_rf(dir);
}

Test(score, model_hub_id_not_in_the_cache_says_how_to_fetch_it)
{
    char *dir = st_tmpdir(), *in = st_path(dir, "rows.jsonl"), *log = st_path(dir, "log");
    char *out = st_path(dir, "p.jsonl");
    st_write_rows(in, 20, 3, 0);
    char *cmd = malloc(strlen(dir) * 2 + strlen(st_bin()) + strlen(in) + strlen(out) + 128);
    sprintf(cmd, "HF_HOME='%s/hf' HF_HUB_CACHE= '%s' score --model Org/NotCached --input '%s' "
            "--output '%s'", dir, st_bin(), in, out);
    cr_assert_eq(run_sh(cmd, log), 2, "see %s", log);
    cr_assert(log_has(log, "huggingface-cli download Org/NotCached"), "see %s", log);
    cr_assert(!log_has(log, "scoring "), "the run started; see %s", log);
    cr_assert(access(out, F_OK) != 0);
    assert_nothing_written(out);
    free(cmd);
    st_rm_rf(dir);
}

Test(score, truths_of_another_shape_get_a_num_scores_hint)
{
    char *dir = st_tmpdir(), *in = st_path(dir, "rows.jsonl"), *log = st_path(dir, "log");
    char *out = st_path(dir, "p.jsonl");
    st_write_rows(in, 30, 3, 0);
    char *argv[] = {(char *)st_bin(), "score", "--fake-model", "--input", in, "--output", out,
                    "--num-scores", "2", NULL};
    cr_assert_eq(st_run(argv, log, NULL), 0, "see %s", log);
    cr_assert(log_has(log, "--num-scores"), "no hint; see %s", log);
    cr_assert(log_has(log, "unusable \"output\""), "no count reconciliation; see %s", log);
    st_rm_rf(dir);
}

/* An "output" that rubric prep rejects (not_a_score: " 3  3 3 ") is no truth for the metrics
 * either: the row is counted with the unusable outputs, and the summary says so. */
Test(score, truths_are_read_as_prep_reads_them)
{
    char *dir = st_tmpdir(), *in = st_path(dir, "rows.jsonl"), *log = st_path(dir, "log");
    char *out = st_path(dir, "p.jsonl");
    st_write_rows(in, 30, 3, 0);
    replace_line(in, 1, "{\"instruction\": \"Rate the text.\", \"input\": \"odd\", "
                        "\"output\": \" 3  3 3 \"}");
    char *argv[] = {(char *)st_bin(), "score", "--fake-model", "--input", in, "--output", out,
                    NULL};
    cr_assert_eq(st_run(argv, log, NULL), 0, "see %s", log);
    cr_assert(log_has(log, "1 unusable \"output\", 1 of them not scores as rubric prep reads "
                           "them (not_a_score)"), "see %s", log);
    cr_assert(log_has(log, "line 1: \"output\" \" 3  3 3 \""), "not named; see %s", log);
    json_error_t e;
    char *mpath = st_path(dir, "p.metrics.json");
    json_t *m = json_load_file(mpath, 0, &e);
    cr_assert(m, "%s: %s", mpath, e.text);
    long unlabelled = 0;
    for (long i = 0; i < 30; i++)
        unlabelled += i % 11 == 3;
    cr_assert_eq(json_integer_value(json_object_get(m, "bad_rows")), 1);
    cr_assert_eq(json_integer_value(json_object_get(m, "rows")), 30 - 1 - unlabelled);
    json_decref(m);
    st_rm_rf(dir);
}

Test(score, resume_of_an_interrupted_run_with_another_input_is_refused, .timeout = 120)
{
    char *dir = st_tmpdir(), *in = st_path(dir, "rows.jsonl"), *log = st_path(dir, "log");
    char *other = st_path(dir, "other.jsonl"), *out = st_path(dir, "p.jsonl");
    char *journal = st_path(dir, "p.jsonl.journal");
    st_write_rows(in, 3000, 3, 0);
    st_write_rows(other, 3000, 3, 0);

    /* interrupt a slow run once it has committed something */
    pid_t pid;
    run_score(0, in, out, log, 0, 1000, &pid);
    st_wait_for_text(log, "chunks of 16 rows", 1, 60);
    usleep(300000);
    st_kill_tree(pid);
    st_wait(pid, NULL);
    cr_assert(access(journal, F_OK) == 0, "no journal; see %s", log);

    /* the journal names the input that differs */
    cr_assert_eq(run_score(0, other, out, log, 1, 0, NULL), 2, "see %s", log);
    cr_assert(log_has(log, "its input is"), "see %s", log);
    cr_assert(access(out, F_OK) != 0);
    st_rm_rf(dir);
}

/* --metrics may name neither the input nor the output: refused up front, both kept. */
Test(score, metrics_path_that_is_the_input_or_output_is_refused)
{
    char *dir = st_tmpdir(), *in = st_path(dir, "rows.jsonl"), *log = st_path(dir, "log");
    char *out = st_path(dir, "p.jsonl"), *keep = st_path(dir, "keep.jsonl");
    st_write_rows(in, 20, 3, 0);
    st_write_rows(keep, 20, 3, 0);
    char *a1[] = {(char *)st_bin(), "score", "--fake-model", "--input", in, "--output", out,
                  "--metrics", in, NULL};
    cr_assert_eq(st_run(a1, log, NULL), 2, "see %s", log);
    cr_assert(log_has(log, "is the input file"), "see %s", log);
    cr_assert(st_same_file(in, keep), "the input was changed");
    assert_nothing_written(out);
    cr_assert(access(out, F_OK) != 0);

    char *a2[] = {(char *)st_bin(), "score", "--fake-model", "--input", in, "--output", out,
                  "--metrics", out, NULL};
    cr_assert_eq(st_run(a2, log, NULL), 2, "see %s", log);
    cr_assert(log_has(log, "would replace the predictions"), "see %s", log);
    assert_nothing_written(out);

    /* the same checks in --metrics-only, once the predictions exist */
    char *a3[] = {(char *)st_bin(), "score", "--fake-model", "--input", in, "--output", out,
                  NULL};
    cr_assert_eq(st_run(a3, log, NULL), 0, "see %s", log);
    char *saved = st_read(out, NULL);
    char *a4[] = {(char *)st_bin(), "score", "--metrics-only", "--input", in, "--output", out,
                  "--metrics", out, NULL};
    cr_assert_eq(st_run(a4, log, NULL), 2, "see %s", log);
    char *now = st_read(out, NULL);
    cr_assert_str_eq(now, saved, "the predictions were changed");
    free(saved);
    free(now);
    char *empty[] = {(char *)st_bin(), "score", "--fake-model", "--input", in, "--output", "",
                     NULL};
    cr_assert_eq(st_run(empty, log, NULL), 2, "see %s", log);
    st_rm_rf(dir);
}

/* A pipe as --input is refused (the input is read more than once; a FIFO would hang or lose
 * rows), with nothing written. */
Test(score, a_pipe_as_input_is_refused)
{
    char *dir = st_tmpdir(), *fifo = st_path(dir, "rows.fifo"), *log = st_path(dir, "log");
    char *out = st_path(dir, "p.jsonl");
    cr_assert_eq(mkfifo(fifo, 0644), 0);
    char *argv[] = {(char *)st_bin(), "score", "--fake-model", "--input", fifo, "--output", out,
                    "--num-scores", "3", NULL};
    cr_assert_eq(st_run(argv, log, NULL), 2, "see %s", log);
    cr_assert(log_has(log, "not a regular file"), "see %s", log);
    assert_nothing_written(out);
    cr_assert(access(out, F_OK) != 0);
    st_rm_rf(dir);
}

/* --metrics-only: predictions of another input (more lines, or rows out of order) are refused,
 * not silently compared line by line. */
Test(score, metrics_only_checks_the_predictions_are_of_the_input)
{
    char *dir = st_tmpdir(), *log = st_path(dir, "log");
    char *big = st_path(dir, "big.jsonl"), *out = st_path(dir, "p.jsonl");
    char *small = st_path(dir, "small.jsonl");
    st_write_rows(big, 30, 3, 0);
    st_write_rows(small, 10, 3, 0);
    char *a1[] = {(char *)st_bin(), "score", "--fake-model", "--input", big, "--output", out,
                  NULL};
    cr_assert_eq(st_run(a1, log, NULL), 0, "see %s", log);
    char *a2[] = {(char *)st_bin(), "score", "--metrics-only", "--input", small, "--output", out,
                  NULL};
    cr_assert_eq(st_run(a2, log, NULL), 2, "see %s", log);
    cr_assert(log_has(log, "more lines than"), "see %s", log);

    /* two prediction lines swapped */
    char *text = st_read(out, NULL);
    char *l1 = strchr(text, '\n') + 1, *l2 = strchr(l1, '\n') + 1, *l3 = strchr(l2, '\n') + 1;
    FILE *f = fopen(out, "w");
    fwrite(text, 1, (size_t)(l1 - text), f);
    fwrite(l2, 1, (size_t)(l3 - l2), f);
    fwrite(l1, 1, (size_t)(l2 - l1), f);
    fputs(l3, f);
    fclose(f);
    free(text);
    char *a3[] = {(char *)st_bin(), "score", "--metrics-only", "--input", big, "--output", out,
                  NULL};
    cr_assert_eq(st_run(a3, log, NULL), 2, "see %s", log);
    cr_assert(log_has(log, "not in its order"), "see %s", log);
    st_rm_rf(dir);
}

/* A rescore of the same output without truths removes the earlier run's metrics file. */
Test(score, no_truths_leave_no_stale_metrics)
{
    char *dir = st_tmpdir(), *in = st_path(dir, "rows.jsonl"), *log = st_path(dir, "log");
    char *plain = st_path(dir, "plain.jsonl"), *out = st_path(dir, "p.jsonl");
    char *metrics = st_path(dir, "p.metrics.json");
    st_write_rows(in, 20, 3, 0);
    write_text(plain, "{\"instruction\": \"r\", \"input\": \"a\"}\n"
                      "{\"instruction\": \"r\", \"input\": \"b\"}\n");
    char *a1[] = {(char *)st_bin(), "score", "--fake-model", "--input", in, "--output", out,
                  NULL};
    cr_assert_eq(st_run(a1, log, NULL), 0, "see %s", log);
    cr_assert(access(metrics, F_OK) == 0, "no metrics after a labelled run");
    char *a2[] = {(char *)st_bin(), "score", "--fake-model", "--input", plain, "--output", out,
                  "--num-scores", "3", NULL};
    cr_assert_eq(st_run(a2, log, NULL), 0, "see %s", log);
    cr_assert(access(metrics, F_OK) != 0, "%s of the earlier run is still there", metrics);
    st_rm_rf(dir);
}

/* --resume identifies the adapter by its bytes, not its name: the same file given by another
 * path resumes; another checkpoint copied over the same name is refused. */
Test(score, resume_checks_the_adapter_contents, .timeout = 120)
{
    char *dir = st_tmpdir(), *in = st_path(dir, "rows.jsonl"), *log = st_path(dir, "log");
    char *out = st_path(dir, "out.jsonl"), *ad = st_path(dir, "a.h5");
    char *journal = st_path(dir, "out.jsonl.journal");
    st_write_rows(in, 3000, 3, 0);
    write_text(ad, "first checkpoint");
    char rel[600];
    snprintf(rel, sizeof rel, "%s/./a.h5", dir);
    for (int round = 0; round < 2; round++) {
        char *a1[] = {(char *)st_bin(), "score", "--fake-model", "--adapter", ad, "--input", in,
                      "--output", out, "--chunk-rows", "16", "--fake-delay-us", "3000", NULL};
        char *run_log = st_path(dir, round ? "log1" : "log0");
        pid_t pid = st_start(a1, run_log);
        st_wait_for_text(run_log, "chunks of 16 rows", 1, 60);
        usleep(500000);
        st_kill_tree(pid);
        st_wait(pid, NULL);
        cr_assert(access(journal, F_OK) == 0);
        if (round == 1)
            write_text(ad, "another checkpoint");
        char *a2[] = {(char *)st_bin(), "score", "--fake-model", "--adapter", rel, "--input", in,
                      "--output", out, "--chunk-rows", "16", "--resume", NULL};
        int rc = st_run(a2, log, NULL);
        if (round == 0) {
            cr_assert_eq(rc, 0, "the same adapter by another path: see %s", log);
            cr_assert_eq(unlink(out), 0);
            unlink(st_path(dir, "out.metrics.json"));
        } else {
            cr_assert_eq(rc, 2, "see %s", log);
            cr_assert(log_has(log, "adapter_bytes"), "see %s", log);
        }
    }
    st_rm_rf(dir);
}

/* SIGTERM (or Ctrl-C) while scoring ends the run at once with a line saying how to continue,
 * exit 0 as a stopped `rubric train` (the rows written are saved, not lost); the journal is
 * there and --resume finishes the output. */
Test(score, sigterm_says_how_to_resume, .timeout = 120)
{
    char *dir = st_tmpdir(), *in = st_path(dir, "rows.jsonl"), *log = st_path(dir, "log");
    char *out = st_path(dir, "p.jsonl"), *journal = st_path(dir, "p.jsonl.journal");
    st_write_rows(in, 3000, 3, 0);
    pid_t pid;
    run_score(0, in, out, log, 0, 3000, &pid);
    st_wait_for_text(log, "chunks of 16 rows", 1, 60);
    usleep(500000);
    cr_assert_eq(kill(pid, SIGTERM), 0);
    cr_assert_eq(st_wait(pid, NULL), RB_EXIT_RUNTIME, "see %s", log);
    cr_assert(log_has(log, "--resume to continue"), "see %s", log);
    cr_assert(access(journal, F_OK) == 0);
    cr_assert_eq(run_score(0, in, out, log, 1, 0, NULL), 0, "see %s", log);
    cr_assert(access(out, F_OK) == 0 && access(journal, F_OK) != 0);
    st_rm_rf(dir);
}

/* The rank mpirun gave a process (OMPI_COMM_WORLD_RANK in its environment), or -1. */
static int rank_of(pid_t pid)
{
    char path[64], env[1 << 16];
    snprintf(path, sizeof path, "/proc/%d/environ", (int)pid);
    FILE *f = fopen(path, "rb"); /* a /proc file has no size: read what comes */
    if (!f)
        return -1;
    size_t n = fread(env, 1, sizeof env - 1, f);
    fclose(f);
    env[n] = '\0';
    int rank = -1;
    for (size_t at = 0; at < n; at += strlen(env + at) + 1)
        if (strncmp(env + at, "OMPI_COMM_WORLD_RANK=", 21) == 0)
            rank = atoi(env + at + 21);
    return rank;
}

/* The pid of rank `rank` among the children of mpirun `launcher` (waits for it to start). */
static pid_t find_rank(pid_t launcher, int rank)
{
    for (int tries = 0; tries < 200; tries++) {
        DIR *d = opendir("/proc");
        struct dirent *e;
        pid_t found = -1;
        while (d && (e = readdir(d)) != NULL && found < 0) {
            pid_t pid = (pid_t)atoi(e->d_name);
            if (pid > 0 && st_ppid(pid) == launcher && rank_of(pid) == rank)
                found = pid;
        }
        if (d)
            closedir(d);
        if (found > 0)
            return found;
        usleep(50000);
    }
    cr_assert_fail("no rank %d under mpirun %d", rank, (int)launcher);
    return -1;
}

/* Wait for pid at most `seconds`: its exit code (128+signal), or -1 when it is still running. */
static int wait_at_most(pid_t pid, double seconds)
{
    for (int tries = 0; tries < (int)(seconds * 20); tries++) {
        int status;
        pid_t got = waitpid(pid, &status, WNOHANG);
        cr_assert(got >= 0);
        if (got == pid)
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        usleep(50000);
    }
    return -1;
}

/* A worker that hangs (SIGSTOP) mid-run: rank 0 ends the job within --worker-timeout + 5 x
 * the slowest chunk, naming the rank and its chunk; --resume then completes the output, equal
 * to an uninterrupted run's. */
Test(score, hung_worker_ends_the_job_and_resume_completes, .timeout = 120)
{
    char *dir = st_tmpdir(), *in = st_path(dir, "rows.jsonl"), *log = st_path(dir, "log");
    char *ref = st_path(dir, "ref.jsonl"), *out = st_path(dir, "out.jsonl");
    char *journal = st_path(dir, "out.jsonl.journal");
    st_write_rows(in, 3000, 3, 0);
    cr_assert_eq(run_score(0, in, ref, log, 0, 0, NULL), 0, "see %s", log);

    char *argv[] = {"mpirun", "-np", "3", "--oversubscribe", (char *)st_bin(), "score",
                    "--fake-model", "--input", in, "--output", out, "--chunk-rows", "16",
                    "--fake-delay-us", "3000", "--worker-timeout", "2", NULL};
    pid_t pid = st_start(argv, log);
    /* every worker has sent chunks back (the window is written in order) */
    st_wait_for_text(journal, "commit ", 4, 60);
    pid_t worker = find_rank(pid, 2);
    cr_assert_eq(kill(worker, SIGSTOP), 0);
    double t0 = now_seconds();
    int rc = wait_at_most(pid, 30);
    if (rc < 0) {
        st_kill_tree(pid);
        st_wait(pid, NULL);
        cr_assert_fail("the job did not end within 30 s of a worker hanging; see %s", log);
    }
    double took = now_seconds() - t0;
    cr_assert_neq(rc, 0, "see %s", log);
    cr_assert(took < 20, "the job took %.1f s to end", took);
    cr_assert(log_has(log, "rank 2 has sent nothing for"), "see %s", log);
    cr_assert(log_has(log, "while holding chunk"), "see %s", log);
    cr_assert(log_has(log, "--resume to continue"), "see %s", log);
    /* the limit (2 s + 5 x a chunk of ~0.05 s) is printed with its tenths, not rounded */
    char *all = st_read(log, NULL), *lim = strstr(all, "past its limit of ");
    cr_assert(lim, "see %s", log);
    int whole, tenths;
    cr_assert_eq(sscanf(lim, "past its limit of %d.%1d s", &whole, &tenths), 2, "%.80s", lim);
    cr_assert(whole * 10 + tenths > 20, "the limit is above 2 s: %.80s", lim);
    cr_assert(log_has(log, "(--worker-timeout 2 + 5 x"), "see %s", log);
    free(all);
    kill(worker, SIGKILL); /* in case the launcher left it stopped */
    cr_assert(access(journal, F_OK) == 0, "no journal to resume from");

    cr_assert_eq(run_score(3, in, out, log, 1, 0, NULL), 0, "see %s", log);
    cr_assert(log_has(log, "resuming"), "see %s", log);
    cr_assert(st_same_file(ref, out), "the resumed output differs from an uninterrupted run");
    st_rm_rf(dir);
}

/* --worker-timeout takes a positive number of seconds; the deadline grows with slow chunks
 * and is long before a worker's first chunk (the model load). */
Test(score, worker_timeout_rule)
{
    cr_assert_eq(score_chunk_timeout(300, 0, 10), 350);
    cr_assert_eq(score_chunk_timeout(2, 0, 0.1), 2.5);
    cr_assert_eq(score_chunk_timeout(2, 1, 0.1), SCORE_FIRST_CHUNK_TIMEOUT_S);
    cr_assert_eq(score_chunk_timeout(2, 0, 0), SCORE_FIRST_CHUNK_TIMEOUT_S);
    cr_assert_eq(score_chunk_timeout(4000, 1, 0), 4000);
    char *dir = st_tmpdir(), *in = st_path(dir, "rows.jsonl"), *log = st_path(dir, "log");
    char *out = st_path(dir, "p.jsonl");
    st_write_rows(in, 20, 3, 0);
    const char *bad[] = {"0", "-1", "x", "", "2s"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char *argv[] = {(char *)st_bin(), "score", "--fake-model", "--input", in, "--output",
                        out, "--worker-timeout", (char *)bad[i], NULL};
        cr_assert_eq(st_run(argv, log, NULL), 2, "'%s': see %s", bad[i], log);
    }
    cr_assert(log_has(log, "--worker-timeout"), "see %s", log);
    assert_nothing_written(out);
    st_rm_rf(dir);
}

/* --baseline-from is checked like --input before anything runs: missing, a folder. */
Test(score, baseline_from_is_checked_up_front)
{
    char *dir = st_tmpdir(), *in = st_path(dir, "rows.jsonl"), *log = st_path(dir, "log");
    char *out = st_path(dir, "p.jsonl"), *missing = st_path(dir, "missing.jsonl");
    st_write_rows(in, 3000, 3, 0);
    const char *refs[] = {missing, dir};
    for (int i = 0; i < 2; i++) {
        /* slow rows: a check at the end would take 9 s, and write the output */
        char *argv[] = {(char *)st_bin(), "score", "--fake-model", "--input", in, "--output",
                        out, "--fake-delay-us", "3000", "--baseline-from", (char *)refs[i],
                        NULL};
        double t0 = now_seconds();
        cr_assert_eq(st_run(argv, log, NULL), 2, "see %s", log);
        cr_assert(now_seconds() - t0 < 5, "the check came after the scoring");
        cr_assert(access(out, F_OK) != 0, "the rows were scored; see %s", log);
        assert_nothing_written(out);
    }
    cr_assert(log_has(log, "check --baseline-from"), "see %s", log);
    cr_assert(log_has(log, "is a directory (--baseline-from"), "see %s", log);
    cr_assert(!log_has(log, "scoring "), "the run started; see %s", log);

    /* the same in --metrics-only */
    char *a[] = {(char *)st_bin(), "score", "--metrics-only", "--input", in, "--output", out,
                 "--baseline-from", missing, NULL};
    cr_assert_eq(st_run(a, log, NULL), 2, "see %s", log);
    st_rm_rf(dir);
}

/* --output or --metrics naming the --baseline-from file (by path, symlink or hard link) would
 * overwrite the reference rows: exit 2 up front, the reference untouched. */
Test(score, output_or_metrics_that_is_the_baseline_is_refused)
{
    char *dir = st_tmpdir(), *in = st_path(dir, "rows.jsonl"), *log = st_path(dir, "log");
    char *ref = st_path(dir, "ref.jsonl"), *keep = st_path(dir, "keep.jsonl");
    char *sym = st_path(dir, "sym.jsonl"), *hard = st_path(dir, "hard.jsonl");
    char *out = st_path(dir, "p.jsonl");
    st_write_rows(in, 20, 3, 0);
    st_write_rows(ref, 30, 3, 0);
    st_write_rows(keep, 30, 3, 0);
    cr_assert_eq(symlink(ref, sym), 0);
    cr_assert_eq(link(ref, hard), 0);
    const char *names[] = {ref, sym, hard};
    for (int i = 0; i < 3; i++) {
        char *a1[] = {(char *)st_bin(), "score", "--fake-model", "--input", in, "--output",
                      (char *)names[i], "--baseline-from", ref, NULL};
        cr_assert_eq(st_run(a1, log, NULL), 2, "--output %s: see %s", names[i], log);
        cr_assert(log_has(log, "is the --baseline-from file"), "see %s", log);
        cr_assert(st_same_file(ref, keep), "--output %s: the reference was changed", names[i]);
        assert_nothing_written(names[i]);
        char *a2[] = {(char *)st_bin(), "score", "--fake-model", "--input", in, "--output", out,
                      "--metrics", (char *)names[i], "--baseline-from", ref, NULL};
        cr_assert_eq(st_run(a2, log, NULL), 2, "--metrics %s: see %s", names[i], log);
        cr_assert(log_has(log, "is the --baseline-from file"), "see %s", log);
        cr_assert(st_same_file(ref, keep), "--metrics %s: the reference was changed", names[i]);
        cr_assert(access(out, F_OK) != 0, "the rows were scored; see %s", log);
    }

    /* the same in --metrics-only, once the predictions exist */
    char *a3[] = {(char *)st_bin(), "score", "--fake-model", "--input", in, "--output", out,
                  NULL};
    cr_assert_eq(st_run(a3, log, NULL), 0, "see %s", log);
    char *a4[] = {(char *)st_bin(), "score", "--metrics-only", "--input", in, "--output", out,
                  "--metrics", sym, "--baseline-from", ref, NULL};
    cr_assert_eq(st_run(a4, log, NULL), 2, "see %s", log);
    cr_assert(st_same_file(ref, keep), "the reference was changed");
    st_rm_rf(dir);
}

/* A run that fails loading the model (a folder without config.json) leaves none of the
 * folders it made for --output and --metrics; folders that were there stay. */
Test(score, a_model_that_does_not_load_leaves_no_new_folders, .timeout = 60)
{
    char *dir = st_tmpdir(), *in = st_path(dir, "rows.jsonl"), *log = st_path(dir, "log");
    char *model = st_path(dir, "model"), *keep = st_path(dir, "keep");
    char *fresh = st_path(dir, "fresh"), *fresh_m = st_path(dir, "fresh-m");
    st_write_rows(in, 10, 3, 0);
    cr_assert_eq(mkdir(model, 0755), 0);
    cr_assert_eq(mkdir(keep, 0755), 0);
    char *outs[] = {st_path(dir, "fresh/a/b/p.jsonl"), st_path(dir, "keep/p.jsonl"),
                    st_path(dir, "keep/new/p.jsonl")};
    char *metrics = st_path(dir, "fresh-m/m.json");
    for (int np = 0; np <= 2; np += 2) {
        for (int i = 0; i < 3; i++) {
            char *argv[32];
            int a = 0;
            if (np) {
                argv[a++] = "mpirun";
                argv[a++] = "-np";
                argv[a++] = "2";
                argv[a++] = "--oversubscribe";
            }
            char *rest[] = {(char *)st_bin(), "score", "--model", model, "--input", in,
                            "--output", outs[i], "--metrics", metrics, "--backend", "cpu",
                            NULL};
            memcpy(argv + a, rest, sizeof rest);
            cr_assert_eq(st_run(argv, log, NULL), 2, "see %s", log);
            cr_assert(access(fresh, F_OK) != 0, "%s was left behind; see %s", fresh, log);
            cr_assert(access(fresh_m, F_OK) != 0, "%s was left behind; see %s", fresh_m, log);
            cr_assert(path_is_dir(keep), "%s (there before) was removed", keep);
            cr_assert(access(outs[2], F_OK) != 0 && access(st_path(keep, "new"), F_OK) != 0,
                      "keep/new was left behind; see %s", log);
        }
    }
    st_rm_rf(dir);
}

/* OUTPUT.partial or OUTPUT.journal that is a folder: exit 2 up front, naming it, the folder
 * left as it was (also with --resume). */
Test(score, side_files_that_are_folders_are_refused_up_front)
{
    char *dir = st_tmpdir(), *in = st_path(dir, "rows.jsonl"), *log = st_path(dir, "log");
    char *out = st_path(dir, "p.jsonl");
    st_write_rows(in, 20, 3, 0);
    const char *sides[] = {"p.jsonl.partial", "p.jsonl.journal"};
    for (int i = 0; i < 2; i++) {
        char *side = st_path(dir, sides[i]);
        cr_assert_eq(mkdir(side, 0755), 0);
        for (int resume = 0; resume < 2; resume++) {
            char *argv[] = {(char *)st_bin(), "score", "--fake-model", "--input", in, "--output",
                            out, resume ? "--resume" : NULL, NULL};
            cr_assert_eq(st_run(argv, log, NULL), 2, "%s: see %s", side, log);
            char want[700];
            snprintf(want, sizeof want, "%s is a directory", side);
            cr_assert(log_has(log, want), "not named; see %s", log);
            cr_assert(path_is_dir(side) && access(out, F_OK) != 0);
        }
        cr_assert_eq(rmdir(side), 0);
    }
    st_rm_rf(dir);
}

/* A missing output folder that cannot be made (under a file, which stops root too) is the
 * user's path: exit 2 before any work, like an unwritable folder. */
Test(score, output_folder_that_cannot_be_made_is_bad_input)
{
    char *dir = st_tmpdir(), *in = st_path(dir, "rows.jsonl"), *log = st_path(dir, "log");
    char *file = st_path(dir, "file"), *out = st_path(dir, "file/sub/x.jsonl");
    char *mout = st_path(dir, "p.jsonl"), *metrics = st_path(dir, "file/sub/m.json");
    st_write_rows(in, 20, 3, 0);
    write_text(file, "a file, not a folder\n");
    cr_assert_eq(run_score(0, in, out, log, 0, 0, NULL), 2, "see %s", log);
    cr_assert(log_has(log, "--output"), "see %s", log);
    cr_assert(log_has(log, "/file is a file, not a folder"), "see %s", log);
    char *argv[] = {(char *)st_bin(), "score", "--fake-model", "--input", in, "--output", mout,
                    "--metrics", metrics, NULL};
    cr_assert_eq(st_run(argv, log, NULL), 2, "see %s", log);
    cr_assert(log_has(log, "--metrics"), "see %s", log);
    assert_nothing_written(mout);
    st_rm_rf(dir);
}

/* K as `rubric prep` decides it for the file: its prepared dataset's scores per row. */
static int prep_k(const char *dir, const char *path)
{
    tokenizer *tk;
    cr_assert_eq(tokenizer_load(&tk, "share/qwen3-tokenizer"), 0, "%s", err_msg());
    rubric_config cfg;
    config_defaults(&cfg);
    cfg.n_datasets = 1;
    cfg.datasets = xcalloc(1, sizeof *cfg.datasets);
    cfg.datasets[0].path = xstrdup(path);
    cfg.datasets[0].type = xstrdup("alpaca");
    free(cfg.dataset_prepared_path);
    cfg.dataset_prepared_path = xasprintf("%s/prepared", dir);
    cfg.val_set_size = 0;
    char *cache = NULL;
    prep_stats st;
    cr_assert_eq(prep_run(&cfg, tk, &cache, &st), 0, "%s", err_msg());
    cr_assert(st.score_dataset);
    free(cache);
    config_free(&cfg);
    tokenizer_free(tk);
    return st.n_scores;
}

/* K as `rubric score` infers it (from its start line), checked against its output rows. */
static int score_k(const char *in, const char *out, const char *log)
{
    char *argv[] = {(char *)st_bin(), "score", "--fake-model", "--input", (char *)in,
                    "--output", (char *)out, NULL};
    cr_assert_eq(st_run(argv, log, NULL), 0, "see %s", log);
    char *text = st_read(log, NULL);
    const char *at = strstr(text, " scores per row in ");
    cr_assert(at, "see %s", log);
    while (at > text && at[-1] >= '0' && at[-1] <= '9')
        at--;
    int k = atoi(at);
    free(text);
    text = st_read(out, NULL);
    *strchr(text, '\n') = '\0';
    json_t *row0 = line_json(text);
    cr_assert_eq((int)json_array_size(json_object_get(row0, "scores")), k);
    json_decref(row0);
    free(text);
    unlink(log);
    return k;
}

/* With no --num-scores, score takes K by prep's rule (the most common count among in-range
 * score outputs; of a tie, the smallest), not from the first labelled row: both agree. */
Test(score, k_is_inferred_by_prep_rule, .timeout = 60)
{
    char *dir = st_tmpdir(), *log = st_path(dir, "log"), *out = st_path(dir, "p.jsonl");
    char *tie = st_path(dir, "tie.jsonl"), *most = st_path(dir, "most.jsonl");
    /* two rows of 3 scores first, then two of 2: a tie, the smaller count wins */
    write_text(tie, "{\"instruction\": \"r\", \"input\": \"a\", \"output\": \"1 2 3\"}\n"
                    "{\"instruction\": \"r\", \"input\": \"b\", \"output\": \"2 2 3\"}\n"
                    "{\"instruction\": \"r\", \"input\": \"c\", \"output\": \"1 2\"}\n"
                    "{\"instruction\": \"r\", \"input\": \"d\", \"output\": \"4 5\"}\n");
    /* a row of 2 first, then three of 3, and rows prep does not count (out of range, not
     * scores, unlabelled) */
    write_text(most, "{\"instruction\": \"r\", \"input\": \"a\", \"output\": \"1 2\"}\n"
                     "{\"instruction\": \"r\", \"input\": \"b\", \"output\": \"2 2 3\"}\n"
                     "{\"instruction\": \"r\", \"input\": \"c\", \"output\": \"1 2 0\"}\n"
                     "{\"instruction\": \"r\", \"input\": \"d\", \"output\": \"4 5 1\"}\n"
                     "{\"instruction\": \"r\", \"input\": \"e\", \"output\": \"7 8\"}\n"
                     "{\"instruction\": \"r\", \"input\": \"f\", \"output\": \"9 9\"}\n"
                     "{\"instruction\": \"r\", \"input\": \"g\", \"output\": \"1  2\"}\n"
                     "{\"instruction\": \"r\", \"input\": \"h\"}\n");
    cr_assert_eq(prep_k(dir, tie), 2);
    cr_assert_eq(score_k(tie, out, log), 2);
    cr_assert_eq(prep_k(dir, most), 3);
    cr_assert_eq(score_k(most, out, log), 3);
    st_rm_rf(dir);
}

/* --baseline-from whose rows give no reference (outputs of another K, or no output): a
 * warning naming the file and why, and the baseline undefined (null, with its reason under
 * "undefined"), not answers made up of score_min. */
Test(score, baseline_from_without_usable_rows_is_undefined, .timeout = 60)
{
    char *dir = st_tmpdir(), *in = st_path(dir, "rows.jsonl"), *log = st_path(dir, "log");
    char *out = st_path(dir, "p.jsonl"), *metrics = st_path(dir, "p.metrics.json");
    char *two = st_path(dir, "two.jsonl"), *none = st_path(dir, "none.jsonl");
    st_write_rows(in, 30, 3, 0);
    write_text(two, "{\"instruction\": \"r\", \"output\": \"1 2\"}\n"
                    "{\"instruction\": \"r\", \"output\": \"3 4\"}\n");
    write_text(none, "{\"instruction\": \"r\", \"input\": \"a\"}\n");
    const char *refs[] = {two, none};
    const char *why[] = {"2 rows have an \"output\" of another shape or range",
                         "no row has an \"output\")"};
    for (int i = 0; i < 2; i++) {
        unlink(log);
        char *argv[] = {(char *)st_bin(), "score", "--fake-model", "--input", in, "--output",
                        out, "--baseline-from", (char *)refs[i], NULL};
        cr_assert_eq(st_run(argv, log, NULL), 0, "see %s", log);
        char want[700];
        snprintf(want, sizeof want, "warn: %s: no row has an \"output\" of 3 scores in 0..5",
                 refs[i]);
        cr_assert(log_has(log, want), "no '%s'; see %s", want, log);
        cr_assert(log_has(log, why[i]), "no '%s'; see %s", why[i], log);
        cr_assert(log_has(log, "majority baseline: undefined: no row of"), "see %s", log);
        cr_assert(!log_has(log, "majority baseline (answers"), "a made-up baseline; see %s",
                  log);
        json_error_t e;
        json_t *j = json_load_file(metrics, 0, &e);
        cr_assert(j, "%s: %s", metrics, e.text);
        cr_assert(json_is_null(json_object_get(j, "majority_baseline")));
        const char *reason = json_string_value(
            json_object_get(json_object_get(j, "undefined"), "majority_baseline"));
        cr_assert(reason && strstr(reason, refs[i]), "reason '%s'", reason);
        cr_assert(json_is_real(json_object_get(j, "accuracy")), "the model's metrics are kept");
        json_decref(j);
    }

    /* without --baseline-from the input's own rows decide */
    unlink(log);
    char *own[] = {(char *)st_bin(), "score", "--fake-model", "--input", in, "--output", out,
                   NULL};
    cr_assert_eq(st_run(own, log, NULL), 0, "see %s", log);
    cr_assert(!log_has(log, "undefined: no row of"), "see %s", log);
    json_t *j = json_load_file(metrics, 0, NULL);
    cr_assert(json_is_object(json_object_get(j, "majority_baseline")));
    json_decref(j);
    st_rm_rf(dir);
}

/* A file where --output or --metrics needs a folder (dir/afile/x.jsonl): exit 2 before any
 * work, naming the option and the file, not after every row is scored. */
Test(score, a_file_as_a_folder_of_output_or_metrics_is_caught_up_front, .timeout = 60)
{
    char *dir = st_tmpdir(), *in = st_path(dir, "rows.jsonl"), *log = st_path(dir, "log");
    char *file = st_path(dir, "afile"), *out = st_path(dir, "p.jsonl");
    char *bad_out = st_path(dir, "afile/x.jsonl"), *bad_metrics = st_path(dir, "afile/m.json");
    st_write_rows(in, 3000, 3, 0);
    write_text(file, "a file\n");
    const char *what[] = {"--output", "--metrics"};
    for (int i = 0; i < 2; i++) {
        unlink(log);
        /* slow rows: a check at the end would take 9 s */
        char *argv[] = {(char *)st_bin(), "score", "--fake-model", "--input", in, "--output",
                        i ? out : bad_out, "--fake-delay-us", "3000", i ? "--metrics" : NULL,
                        bad_metrics, NULL};
        double t0 = now_seconds();
        cr_assert_eq(st_run(argv, log, NULL), 2, "see %s", log);
        cr_assert(now_seconds() - t0 < 5, "the check came after the scoring");
        char want[700];
        snprintf(want, sizeof want, "%s %s: %s is a file, not a folder", what[i],
                 i ? bad_metrics : bad_out, file);
        cr_assert(log_has(log, want), "no '%s'; see %s", want, log);
        cr_assert(!log_has(log, "scoring "), "the run started; see %s", log);
        assert_nothing_written(out);
    }
    /* --metrics-only too */
    char *a[] = {(char *)st_bin(), "score", "--metrics-only", "--input", in, "--output", out,
                 "--metrics", bad_metrics, NULL};
    cr_assert_eq(st_run(a, log, NULL), 2, "see %s", log);
    st_rm_rf(dir);
}

/* --metrics-only on predictions of another K says so; predictions shorter than the input are
 * the user's files (exit 2), as with --resume. */
Test(score, metrics_only_names_the_score_count_and_a_short_output)
{
    char *dir = st_tmpdir(), *in = st_path(dir, "rows.jsonl"), *log = st_path(dir, "log");
    char *out = st_path(dir, "p.jsonl"), *small = st_path(dir, "small.jsonl");
    char *short_out = st_path(dir, "short.jsonl");
    st_write_rows(in, 30, 3, 0);
    st_write_rows(small, 10, 3, 0);
    char *a1[] = {(char *)st_bin(), "score", "--fake-model", "--input", in, "--output", out,
                  NULL};
    cr_assert_eq(st_run(a1, log, NULL), 0, "see %s", log);
    char *a2[] = {(char *)st_bin(), "score", "--metrics-only", "--num-scores", "2", "--input",
                  in, "--output", out, NULL};
    cr_assert_eq(st_run(a2, log, NULL), 2, "see %s", log);
    cr_assert(log_has(log, "p.jsonl:1: the prediction has 3 scores, where K is 2"), "see %s",
              log);
    cr_assert(!log_has(log, "not a line of rubric score's output"), "see %s", log);

    /* 10 predictions of a 30-row input */
    char *a3[] = {(char *)st_bin(), "score", "--fake-model", "--input", small, "--output",
                  short_out, NULL};
    cr_assert_eq(st_run(a3, log, NULL), 0, "see %s", log);
    char *a4[] = {(char *)st_bin(), "score", "--metrics-only", "--input", in, "--output",
                  short_out, NULL};
    cr_assert_eq(st_run(a4, log, NULL), 2, "see %s", log);
    cr_assert(log_has(log, "short.jsonl has 10 lines, fewer than"), "see %s", log);
    st_rm_rf(dir);
}

/* --metrics-only: a prediction with a score out of the range, a score that is not an integer,
 * or an unknown status is the predictions file's error (file, line, field; exit 2), not a row
 * silently dropped from the counts or scored as 0. */
Test(score, metrics_only_checks_each_predictions_fields)
{
    char *dir = st_tmpdir(), *in = st_path(dir, "rows.jsonl"), *log = st_path(dir, "log");
    char *out = st_path(dir, "p.jsonl"), *good = st_path(dir, "good.jsonl");
    st_write_rows(in, 30, 3, 0);
    char *a1[] = {(char *)st_bin(), "score", "--fake-model", "--input", in, "--output", good,
                  NULL};
    cr_assert_eq(st_run(a1, log, NULL), 0, "see %s", log);
    static const struct {
        const char *line, *error;
    } cases[] = {
        {"{\"row\": 6, \"scores\": [9, 3, 3], \"text\": \"9 3 3\", \"status\": \"ok\"}",
         "p.jsonl:7: scores[0]: 9 is outside 0..5"},
        {"{\"row\": 6, \"scores\": [3, -2, 3], \"text\": \"3 -2 3\", \"status\": \"ok\"}",
         "p.jsonl:7: scores[1]: -2 is outside 0..5"},
        {"{\"row\": 6, \"scores\": [\"a\", 3, 3], \"text\": \"a 3 3\", \"status\": \"ok\"}",
         "p.jsonl:7: scores[0]: \"a\" is not an integer"},
        {"{\"row\": 6, \"scores\": [3, 3, 3.7], \"text\": \"3 3 3.7\", \"status\": "
         "\"off_grammar\"}",
         "p.jsonl:7: scores[2]: 3.7 is not an integer"},
        {"{\"row\": 6, \"scores\": [3, 3, 3], \"text\": \"3 3 3\", \"status\": \"maybe\"}",
         "p.jsonl:7: status: \"maybe\" is not ok, off_grammar or bad_row"},
        {"{\"row\": 6, \"scores\": null, \"text\": null, \"status\": \"ok\"}",
         "p.jsonl:7: scores: null is not a list of scores"},
        {"{\"row\": 6, \"scores\": [3, 3, 3], \"text\": \"3 3 3\"}",
         "p.jsonl:7: status: (missing) (ok, off_grammar or bad_row): not a line of rubric "
         "score's output"},
        {"{\"row\": 6, \"scores\": [3, 3, 4e400], \"status\": \"ok\"}",
         "p.jsonl:7: not JSON (real number overflow"},
        {"3 3 3", "p.jsonl:7: not JSON ("},
        {"[3, 3, 3]", "p.jsonl:7: not a JSON object"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *text = st_read(good, NULL);
        write_text(out, text);
        free(text);
        replace_line(out, 7, cases[i].line);
        char *a2[] = {(char *)st_bin(), "score", "--metrics-only", "--input", in, "--output",
                      out, NULL};
        cr_assert_eq(st_run(a2, log, NULL), 2, "%s: see %s", cases[i].line, log);
        cr_assert(log_has(log, cases[i].error), "no '%s'; see %s", cases[i].error, log);
        cr_assert(access(st_path(dir, "p.metrics.json"), F_OK) != 0, "metrics written");
    }
    st_rm_rf(dir);
}

/* After --resume the progress line's rate counts the rows scored in this run, as the final
 * summary does, not the rows done before it. */
Test(score, resumed_progress_rate_counts_this_runs_rows, .timeout = 120)
{
    char *dir = st_tmpdir(), *in = st_path(dir, "rows.jsonl"), *log = st_path(dir, "log");
    char *out = st_path(dir, "p.jsonl"), *journal = st_path(dir, "p.jsonl.journal");
    char *log2 = st_path(dir, "log2");
    st_write_rows(in, 1200, 3, 0);
    pid_t pid;
    run_score(0, in, out, log, 0, 1000, &pid);
    st_wait_for_text(journal, "commit ", 60, 60); /* 960 rows or more */
    kill(pid, SIGKILL);
    st_wait(pid, NULL);
    cr_assert(access(journal, F_OK) == 0);
    cr_assert_eq(run_score(0, in, out, log2, 1, 5000, NULL), 0, "see %s", log2);
    char *all = st_read(log2, NULL);
    const char *prog = strstr(all, "scoring: "), *sum = strstr(all, "rows/s on 1 worker");
    cr_assert(prog && sum, "see %s", log2);
    long long rows;
    double prog_rate, sum_rate;
    cr_assert_eq(sscanf(prog, "scoring: %lld rows, %lf rows/s", &rows, &prog_rate), 2, "%s",
                 all);
    while (sum > all && sum[-1] != '(')
        sum--;
    cr_assert_eq(sscanf(sum, "%lf rows/s", &sum_rate), 1, "%s", all);
    cr_assert_eq(rows, 1200);
    /* at most 240 rows left at 5 ms: the old rate, 1200 rows over that time, is 5x or more */
    cr_assert(prog_rate < 2 * sum_rate, "progress %.1f rows/s, summary %.1f rows/s: %s",
              prog_rate, sum_rate, all);
    free(all);
    st_rm_rf(dir);
}

/* Counts in score's messages agree with their nouns: "1 row has", "2 rows have". */
Test(score, messages_count_in_the_singular_and_plural)
{
    char *dir = st_tmpdir(), *log = st_path(dir, "log"), *out = st_path(dir, "p.jsonl");
    char *one = st_path(dir, "one.jsonl"), *two = st_path(dir, "two.jsonl");
    write_text(one, "{\"instruction\": \"r\", \"input\": \"a\", \"output\": \"7 8\"}\n"
                    "{\"instruction\": \"r\", \"input\": \"b\"}\n");
    write_text(two, "{\"instruction\": \"r\", \"input\": \"a\", \"output\": \"7 8\"}\n"
                    "{\"instruction\": \"r\", \"input\": \"b\", \"output\": \"9 9\"}\n");
    char *a1[] = {(char *)st_bin(), "score", "--fake-model", "--input", one, "--output", out,
                  NULL};
    cr_assert_eq(st_run(a1, log, NULL), 2, "see %s", log);
    cr_assert(log_has(log, "(1 row has scores outside it, the first at line 1)"), "see %s",
              log);
    char *a2[] = {(char *)st_bin(), "score", "--fake-model", "--input", two, "--output", out,
                  NULL};
    cr_assert_eq(st_run(a2, log, NULL), 2, "see %s", log);
    cr_assert(log_has(log, "(2 rows have scores outside it"), "see %s", log);

    /* one row, one score, chunks of one row */
    unlink(log);
    char *a3[] = {(char *)st_bin(), "score", "--fake-model", "--input", one, "--output", out,
                  "--num-scores", "1", "--chunk-rows", "1", NULL};
    cr_assert_eq(st_run(a3, log, NULL), 0, "see %s", log);
    cr_assert(log_has(log, "1 score per row in 0..5, 1 worker, chunks of 1 row "), "see %s",
              log);
    cr_assert(log_has(log, "scored 2 rows in"), "see %s", log);
    st_rm_rf(dir);
}
