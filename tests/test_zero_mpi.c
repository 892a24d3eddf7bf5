/*
 * test_zero_mpi.c: ZeRO stages 0, 1 and 2 with 1, 2 and 3 workers against one worker that
 * accumulates the same global batch (tests/mpi/zero_check.c does the run and the comparison;
 * see its header for the objective and the tolerances). Each case runs
 * `mpirun -np N zero_check STAGE [NAN_STEP]` and must print PASS and exit 0. The comm.h
 * helpers themselves (every op and dtype, and the bytes counter) are checked by
 * tests/mpi/comm_check.c with 1, 2 and 3 ranks.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Run a helper under mpirun; returns its exit status and copies its PASS/FAIL lines. */
static int run_helper(int np, const char *args, char *last, size_t cap)
{
    const char *dir = getenv("RUBRIC_MPI_HELPERS");
    cr_assert(dir, "RUBRIC_MPI_HELPERS is not set (run through meson test)");
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "mpirun --allow-run-as-root --oversubscribe -np %d %s/%s 2>&1",
             np, dir, args);
    FILE *p = popen(cmd, "r");
    cr_assert(p, "cannot run %s", cmd);
    char line[1024];
    last[0] = '\0';
    while (fgets(line, sizeof line, p))
        if (strncmp(line, "PASS", 4) == 0 || strncmp(line, "FAIL", 4) == 0)
            snprintf(last + strlen(last), cap - strlen(last), "%s", line);
    int status = pclose(p);
    return status;
}

static void check(int np, int stage, int nan_step)
{
    char out[4096], args[128];
    snprintf(args, sizeof args, "zero_check %d %d", stage, nan_step);
    int status = run_helper(np, args, out, sizeof out);
    cr_log_info("np %d stage %d: %s", np, stage, out);
    cr_assert_eq(status, 0, "zero_check with %d workers, stage %d failed:\n%s", np, stage, out);
    cr_assert(strstr(out, "PASS"), "no PASS line:\n%s", out);
}

Test(zero_mpi, stage2_1_2_3_workers_match_accumulation, .timeout = 240)
{
    for (int np = 1; np <= 3; np++)
        check(np, 2, -1);
}

Test(zero_mpi, stage1_and_0_match_accumulation, .timeout = 240)
{
    for (int np = 2; np <= 3; np++) {
        check(np, 1, -1);
        check(np, 0, -1);
    }
}

Test(zero_mpi, nan_gradient_skips_the_step_everywhere, .timeout = 120)
{
    check(3, 2, 10);
    check(2, 0, 4);
}

Test(zero_mpi, comm_helpers_every_op_and_dtype, .timeout = 120)
{
    for (int np = 1; np <= 3; np++) {
        char out[4096];
        int status = run_helper(np, "comm_check", out, sizeof out);
        cr_assert_eq(status, 0, "comm_check with %d ranks failed:\n%s", np, out);
        cr_assert(strstr(out, "PASS"), "no PASS line:\n%s", out);
    }
}
