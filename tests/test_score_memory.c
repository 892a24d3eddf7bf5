/* test_score_memory.c: `rubric score` keeps memory flat whatever the input size: a 1M-row run
 * (fake model, one process: coordinator and worker together) peaks no higher than a 20k-row
 * run, give or take a few MB. */
#include "test_score_util.h"

static long peak_kb(const char *dir, const char *name, long rows)
{
    char *in = st_path(dir, name), *log = st_path(dir, "log");
    char out_name[64];
    snprintf(out_name, sizeof out_name, "%s.out.jsonl", name);
    char *out = st_path(dir, out_name);
    st_write_rows(in, rows, 3, 100003);
    char *argv[] = {(char *)st_bin(), "score", "--fake-model", "--input", in, "--output", out,
                    "--chunk-rows", "2048", NULL};
    long kb = 0;
    cr_assert_eq(st_run(argv, log, &kb), 0, "see %s", log);

    /* every row came out, in order */
    FILE *f = fopen(out, "r");
    char *line = NULL;
    size_t cap = 0;
    long n = 0;
    while (getline(&line, &cap, f) > 0) {
        char want[48];
        snprintf(want, sizeof want, "{\"row\": %ld,", n);
        cr_assert(strncmp(line, want, strlen(want)) == 0, "line %ld: %s", n + 1, line);
        n++;
    }
    free(line);
    fclose(f);
    cr_assert_eq(n, rows);
    unlink(in);
    unlink(out);
    free(in);
    free(out);
    free(log);
    return kb;
}

Test(score_memory, flat_from_20k_to_1m_rows, .timeout = 600)
{
    if (st_sanitized())
        cr_skip_test("built with a sanitizer (ASan's quarantine and shadow memory grow with "
                     "the work done): peak RSS is not the product's");
    char *dir = st_tmpdir();
    long small = peak_kb(dir, "small.jsonl", 20000);
    long large = peak_kb(dir, "large.jsonl", 1000000);
    cr_log_info("peak RSS: 20k rows %ld KB, 1M rows %ld KB", small, large);
    cr_assert(large <= small + 8 * 1024, "peak RSS grew from %ld KB (20k rows) to %ld KB (1M)",
              small, large);
    st_rm_rf(dir);
}
