/*
 * test_ckpt.c: HDF5 checkpoints (common/ckpt.h). The parallel parts run under mpirun through
 * tests/mpi/ckpt_check.c (see its header); this file drives it, damages files, and checks what
 * `rubric inspect` and h5py (tests/mpi/ckpt_h5py_check.py) make of them.
 *
 *   - written by 3 workers (+ coordinator), read back by 1, 2, 3 and 4 workers: every slice
 *     equal to what was written (re-sharding), /state equal
 *   - h5py reads every part; values equal to numpy's evaluation of the writer's formulas
 *   - truncated, bit-flipped (inside a dataset), foreign HDF5, non-HDF5, other shapes, other
 *     base model: a clear error on every rank and nothing loaded
 *   - auto (newest valid) skips a corrupt newer file and an interrupted .tmp
 *   - save_total_limit keeps the newest ones
 *   - a job killed (SIGKILL) after writing the body but before sealing leaves the previous
 *     checkpoint intact, and no new file under a final name
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt.h"
#include "util.h"

static char dir[256];

static void make_dir(void)
{
    snprintf(dir, sizeof dir, "/tmp/rubric_test_ckpt_XXXXXX");
    cr_assert(mkdtemp(dir), "mkdtemp");
}

static void remove_dir(void)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

/* Run a shell command; returns its exit status and its output (last 4 KB). */
static int run(char *out, size_t cap, const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    strncat(cmd, " 2>&1", sizeof cmd - strlen(cmd) - 1);
    FILE *p = popen(cmd, "r");
    cr_assert(p, "cannot run %s", cmd);
    size_t n = 0;
    char line[1024];
    out[0] = '\0';
    while (fgets(line, sizeof line, p)) {
        size_t l = strlen(line);
        if (n + l >= cap)
            n = 0;
        memcpy(out + n, line, l + 1);
        n += l;
    }
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static int check(char *out, size_t cap, int np, const char *args)
{
    const char *helpers = getenv("RUBRIC_MPI_HELPERS");
    cr_assert(helpers, "RUBRIC_MPI_HELPERS is not set (run through meson test)");
    return run(out, cap, "mpirun --allow-run-as-root --oversubscribe -np %d %s/ckpt_check %s", np,
               helpers, args);
}

static void write_ckpt(int np, int step, int limit)
{
    char out[4096], args[512];
    snprintf(args, sizeof args, "write %s %d %d", dir, step, limit);
    int rc = check(out, sizeof out, np, args);
    cr_assert_eq(rc, 0, "write failed:\n%s", out);
    cr_assert(strstr(out, "PASS"), "%s", out);
}

static void copy_file(const char *from, const char *to)
{
    char out[1024];
    cr_assert_eq(run(out, sizeof out, "cp '%s' '%s'", from, to), 0, "%s", out);
}

static void expect_refused(const char *path, const char *variant, const char *why)
{
    char out[4096], args[512];
    snprintf(args, sizeof args, "bad %s %s", path, variant);
    int rc = check(out, sizeof out, 3, args);
    cr_assert_eq(rc, 0, "loading %s was not refused cleanly:\n%s", path, out);
    cr_assert(strstr(out, why), "the error does not say '%s':\n%s", why, out);
}

/* Flip one byte in the middle of a dataset's data (its file offset from HDF5). */
static void corrupt_dataset(const char *path, const char *dataset)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    cr_assert(f >= 0);
    hid_t d = H5Dopen2(f, dataset, H5P_DEFAULT);
    cr_assert(d >= 0, "no %s", dataset);
    haddr_t off = H5Dget_offset(d);
    hsize_t size = H5Dget_storage_size(d);
    H5Dclose(d);
    H5Fclose(f);
    cr_assert(off != HADDR_UNDEF && size > 8);
    int fd = open(path, O_RDWR);
    unsigned char b;
    cr_assert_eq(pread(fd, &b, 1, (off_t)(off + size / 2)), 1);
    b ^= 0x10;
    cr_assert_eq(pwrite(fd, &b, 1, (off_t)(off + size / 2)), 1);
    close(fd);
}

TestSuite(ckpt, .init = make_dir, .fini = remove_dir, .timeout = 240);

Test(ckpt, written_by_3_workers_read_by_1_to_4)
{
    write_ckpt(4, 5, 0);
    char out[4096], args[512];
    snprintf(args, sizeof args, "read %s", dir);
    for (int np = 1; np <= 5; np++) {
        int rc = check(out, sizeof out, np, args);
        cr_assert_eq(rc, 0, "reading with %d ranks failed:\n%s", np, out);
        cr_assert(strstr(out, "PASS read and re-shard"), "%s", out);
    }
}

Test(ckpt, h5py_reads_every_part_and_inspect_prints_it)
{
    write_ckpt(3, 7, 0);
    char out[8192];
    const char *root = getenv("RUBRIC_SOURCE_ROOT"), *bin = getenv("RUBRIC_BIN");
    cr_assert(root && bin);
    if (run(out, sizeof out, "python3 -c 'import h5py, numpy'") != 0) {
        cr_log_warn("h5py is not installed: the h5py check is skipped");
    } else {
        int rc = run(out, sizeof out, "python3 %s/tests/mpi/ckpt_h5py_check.py "
                     "%s/checkpoint-7.h5 --synthetic", root, dir);
        cr_assert_eq(rc, 0, "h5py check failed:\n%s", out);
    }
    int rc = run(out, sizeof out, "%s inspect %s/checkpoint-7.h5", bin, dir);
    cr_assert_eq(rc, 0, "%s", out);
    cr_assert(strstr(out, "step          7 / 40"), "%s", out);
    cr_assert(strstr(out, "layers.1.mlp.up_proj.lora_A.weight"), "%s", out);
    cr_assert(strstr(out, "[4, 5]"), "%s", out);
    cr_assert(strstr(out, "AdamW master, exp_avg, exp_avg_sq for all 5 tensors"), "%s", out);
    cr_assert(strstr(out, "lora_r: 8"), "the config is not printed:\n%s", out);
}

Test(ckpt, damaged_or_foreign_files_are_refused)
{
    write_ckpt(3, 5, 0);
    char good[512], bad[512], out[4096];
    snprintf(good, sizeof good, "%s/checkpoint-5.h5", dir);

    /* truncated */
    snprintf(bad, sizeof bad, "%s/truncated.h5", dir);
    copy_file(good, bad);
    struct stat st;
    stat(bad, &st);
    cr_assert_eq(truncate(bad, st.st_size / 2), 0);
    expect_refused(bad, "", "truncated or corrupt");

    /* one flipped bit inside a dataset */
    snprintf(bad, sizeof bad, "%s/flipped.h5", dir);
    copy_file(good, bad);
    corrupt_dataset(bad, "/optim/base_model.model.model.layers.1.mlp.up_proj.lora_A.weight/"
                         "exp_avg");
    expect_refused(bad, "", "does not match its xxh64");

    /* an HDF5 file that is not a checkpoint, and a file that is not HDF5 */
    snprintf(bad, sizeof bad, "%s/foreign.h5", dir);
    hid_t f = H5Fcreate(bad, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    H5Fclose(f);
    expect_refused(bad, "", "not a rubric checkpoint");
    snprintf(bad, sizeof bad, "%s/text.h5", dir);
    FILE *t = fopen(bad, "w");
    fputs("not hdf5\n", t);
    fclose(t);
    expect_refused(bad, "", "is not a checkpoint (not an HDF5 file)");

    /* the model's table or base model differ */
    expect_refused(good, "shape", "has shape [4, 5], the model's is [4, 6]");
    expect_refused(good, "hash", "trained on another base model");

    /* rubric inspect says the same, with exit code 2 */
    const char *bin = getenv("RUBRIC_BIN");
    snprintf(bad, sizeof bad, "%s/flipped.h5", dir);
    cr_assert_eq(run(out, sizeof out, "%s inspect %s", bin, bad), 2, "%s", out);
    cr_assert(strstr(out, "does not match its xxh64"), "%s", out);
}

/* What ckpt_verify and ckpt_read_meta say, and that only a damaged checkpoint gets the advice
 * to delete it (a missing path or the user's other files never do). */
static void expect_message(const char *path, const char *want, int advice)
{
    ckpt_meta m;
    int rcs[2] = {ckpt_verify(path), 0};
    char *msgs[2] = {xstrdup(err_msg()), NULL};
    rcs[1] = ckpt_read_meta(path, &m);
    if (rcs[1] == 0)
        ckpt_meta_free(&m);
    msgs[1] = xstrdup(err_msg());
    for (int i = 0; i < 2; i++) {
        const char *fn = i ? "ckpt_read_meta" : "ckpt_verify";
        if (i == 1 && advice && rcs[i] == 0) {
            free(msgs[i]);
            continue; /* read_meta reads /state only: it need not see the damage */
        }
        cr_assert_eq(rcs[i], RB_EXIT_INPUT, "%s %s: %d", fn, path, rcs[i]);
        cr_assert(strstr(msgs[i], path), "%s: %s", fn, msgs[i]);
        if (i == 0 || !advice)
            cr_assert(strstr(msgs[i], want), "%s: wanted '%s': %s", fn, want, msgs[i]);
        if (i == 0)
            cr_assert_eq(strstr(msgs[i], "delete it") != NULL, advice, "%s: %s", fn, msgs[i]);
        else
            cr_assert_null(strstr(msgs[i], "delete it"), "%s: %s", fn, msgs[i]);
        free(msgs[i]);
    }
}

Test(ckpt, missing_or_non_hdf5_files_are_named_as_such)
{
    write_ckpt(3, 5, 0);
    char good[512], bad[512];
    snprintf(good, sizeof good, "%s/checkpoint-5.h5", dir);

    snprintf(bad, sizeof bad, "%s/no-such.h5", dir);
    expect_message(bad, "no such file", 0);
    snprintf(bad, sizeof bad, "%s/rows.jsonl", dir);
    FILE *t = fopen(bad, "w");
    fputs("{\"instruction\": \"x\"}\n", t);
    fclose(t);
    expect_message(bad, "is not a checkpoint (not an HDF5 file)", 0);
    expect_message(dir, "is a directory", 0);
    snprintf(bad, sizeof bad, "%s/foreign.h5", dir);
    hid_t f = H5Fcreate(bad, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    H5Fclose(f);
    expect_message(bad, "not a rubric checkpoint", 0);

    /* real checkpoints, damaged: the advice stays */
    snprintf(bad, sizeof bad, "%s/truncated.h5", dir);
    copy_file(good, bad);
    struct stat st;
    stat(bad, &st);
    cr_assert_eq(truncate(bad, st.st_size / 2), 0);
    expect_message(bad, "truncated or corrupt", 1);
    snprintf(bad, sizeof bad, "%s/flipped.h5", dir);
    copy_file(good, bad);
    corrupt_dataset(bad, "/optim/base_model.model.model.layers.1.mlp.up_proj.lora_A.weight/"
                         "exp_avg");
    expect_message(bad, "does not match its xxh64", 1);
    cr_assert_eq(ckpt_verify(good), 0, "%s", err_msg());
}

Test(ckpt, auto_takes_the_newest_valid_and_limit_keeps_the_newest)
{
    write_ckpt(3, 5, 0);
    write_ckpt(3, 10, 0);
    char path[512], out[4096], args[512];

    /* a corrupt newest file and an interrupted write are skipped */
    snprintf(path, sizeof path, "%s/checkpoint-10.h5", dir);
    corrupt_dataset(path, "/lora/base_model.model.model.layers.0.mlp.up_proj.lora_B.weight");
    snprintf(path, sizeof path, "%s/checkpoint-15.h5.tmp", dir);
    FILE *t = fopen(path, "w");
    fputs("half a file", t);
    fclose(t);
    snprintf(args, sizeof args, "read %s", dir);
    cr_assert_eq(check(out, sizeof out, 3, args), 0, "%s", out);
    cr_assert(strstr(out, "checkpoint-5.h5 (step 5"), "auto did not take step 5:\n%s", out);
    cr_assert(strstr(out, "skipping invalid checkpoint"), "no warning:\n%s", out);

    /* save_total_limit 2: steps 20, 30, 40 leave 30 and 40 */
    write_ckpt(2, 20, 2);
    write_ckpt(2, 30, 2);
    write_ckpt(2, 40, 2);
    cr_assert(run(out, sizeof out, "ls %s/checkpoint-*.h5 | wc -l", dir) == 0);
    cr_assert_eq(atoi(out), 2, "expected 2 checkpoints, ls says %s", out);
    snprintf(path, sizeof path, "%s/checkpoint-40.h5", dir);
    cr_assert_eq(access(path, F_OK), 0);
    snprintf(path, sizeof path, "%s/checkpoint-30.h5", dir);
    cr_assert_eq(access(path, F_OK), 0);
}

Test(ckpt, killed_while_writing_keeps_the_previous_checkpoint)
{
    write_ckpt(3, 5, 0);
    char out[4096], args[512];
    snprintf(args, sizeof args, "write %s 6 0", dir);
    setenv("RUBRIC_TEST_CKPT_DIE_BEFORE_SEAL", "1", 1);
    int rc = check(out, sizeof out, 3, args);
    unsetenv("RUBRIC_TEST_CKPT_DIE_BEFORE_SEAL");
    cr_assert_neq(rc, 0, "the job was supposed to die:\n%s", out);
    char path[512];
    snprintf(path, sizeof path, "%s/checkpoint-6.h5", dir);
    cr_assert_neq(access(path, F_OK), 0, "a half-written checkpoint-6.h5 exists");
    snprintf(args, sizeof args, "read %s", dir);
    cr_assert_eq(check(out, sizeof out, 3, args), 0, "%s", out);
    cr_assert(strstr(out, "checkpoint-5.h5 (step 5"), "%s", out);
}
