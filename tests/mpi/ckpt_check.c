/*
 * ckpt_check.c: parallel checkpoint write / read / re-shard checks, run under mpirun.
 *
 * Rank 0 plays the coordinator (an empty slice) and ranks 1..N-1 the workers; with one rank,
 * rank 0 is the only worker. A synthetic table of LoRA-shaped tensors whose boundaries cut
 * across the workers' partitions; element i of the flat buffer has known values, so any rank
 * can check what it read.
 *
 *   ckpt_check write DIR STEP [LIMIT]   save checkpoint-STEP.h5, load it back, compare
 *   ckpt_check read DIR [STEP]          load the newest valid checkpoint (or checkpoint-STEP),
 *                                       compare this topology's slices and the /state values
 *   ckpt_check bad PATH [shape|hash]    loading must fail on every rank and leave the slices
 *                                       untouched (with `shape`: the model's table differs;
 *                                       with `hash`: another base model)
 * Prints "PASS ..." or "FAIL: ..." on rank 0; exit 0 only on PASS.
 */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt.h"
#include "util.h"

#define BASE_HASH 0x1234abcd5678ef90ull
#define N_PARAMS 5
static const int64_t shapes[N_PARAMS][2] = {{3, 7}, {7, 3}, {4, 5}, {1, 9}, {6, 2}};

static float value_of(int k, int64_t i)
{
    switch (k) {
    case 0: return (float)sin(0.37 * (double)i);            /* lora */
    case 1: return (float)sin(0.37 * (double)i) + 1e-3f;    /* master */
    case 2: return (float)cos(0.11 * (double)i);            /* exp_avg */
    default: return 1e-3f * (float)i;                       /* exp_avg_sq */
    }
}

static int make_table(ckpt_param *p, int alter_shape)
{
    int64_t off = 0;
    for (int i = 0; i < N_PARAMS; i++) {
        p[i].name = xasprintf("base_model.model.model.layers.%d.mlp.up_proj.lora_%c.weight", i / 2,
                              i % 2 ? 'B' : 'A');
        p[i].rows = shapes[i][0];
        p[i].cols = shapes[i][1] + (alter_shape && i == 2);
        p[i].offset = off;
        off += p[i].rows * p[i].cols;
    }
    return (int)off;
}

/* This rank's flat range: workers split n_padded evenly; the coordinator has none. */
static void my_range(int rank, int size, int64_t n, int64_t *begin, int64_t *len)
{
    int workers = size > 1 ? size - 1 : 1, w = size > 1 ? rank - 1 : 0;
    int64_t padded = (n + workers - 1) / workers * workers, part = padded / workers;
    *begin = w < 0 ? 0 : w * part;
    *len = w < 0 ? 0 : part;
}

static void fill(ckpt_slice *s, int expected)
{
    float *b[4] = {s->lora, s->master, s->exp_avg, s->exp_avg_sq};
    for (int k = 0; k < 4; k++)
        for (int64_t j = 0; j < s->len; j++)
            b[k][j] = expected ? value_of(k, s->begin + j) : -777.0f;
}

/* Count elements that differ from the expected values (padding past n is not in the file). */
static int64_t mismatches(const ckpt_slice *s, int64_t n, float sentinel_mode)
{
    float *b[4] = {s->lora, s->master, s->exp_avg, s->exp_avg_sq};
    int64_t bad = 0;
    for (int k = 0; k < 4; k++)
        for (int64_t j = 0; j < s->len; j++) {
            float want = sentinel_mode ? -777.0f : value_of(k, s->begin + j);
            if (s->begin + j < n && b[k][j] != want)
                bad++;
        }
    return bad;
}

static void alloc_slice(ckpt_slice *s, int64_t begin, int64_t len)
{
    s->begin = begin;
    s->len = len;
    s->lora = xcalloc((size_t)len + 1, sizeof(float));
    s->master = xcalloc((size_t)len + 1, sizeof(float));
    s->exp_avg = xcalloc((size_t)len + 1, sizeof(float));
    s->exp_avg_sq = xcalloc((size_t)len + 1, sizeof(float));
}

static int report(int rank, int bad, const char *what)
{
    int any = bad;
    MPI_Allreduce(&bad, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (rank == 0)
        printf("%s %s\n", any ? "FAIL:" : "PASS", what);
    return any ? 1 : 0;
}

static int mode_write(int rank, int size, const ckpt_param *t, int64_t n, const char *dir,
                      int64_t step, int limit)
{
    ckpt_slice s;
    int64_t b, l;
    my_range(rank, size, n, &b, &l);
    alloc_slice(&s, b, l);
    fill(&s, 1);
    ckpt_meta m = {.step = step, .epoch = 1, .data_cursor = 3, .total_steps = 40, .loss = 1.25,
                   .lr = 2e-4, .seed = 42, .n_rng = 2, .rng_state = {7, 11},
                   .sched_kind = "cosine", .base_lr = 3e-4, .warmup_steps = 4,
                   .config_yaml = "base_model: ./tiny\nlora_r: 8\n", .base_model = "./tiny",
                   .base_model_hash = BASE_HASH, .world_size = size > 1 ? size - 1 : 1,
                   .zero_stage = 2};
    char *path = NULL;
    int rc = ckpt_save(MPI_COMM_WORLD, dir, &m, t, N_PARAMS, &s, 1, limit, &path);
    if (rc) {
        fprintf(stderr, "rank %d: %s\n", rank, err_msg());
        return report(rank, 1, "ckpt_save");
    }
    fill(&s, 0);
    ckpt_meta got;
    rc = ckpt_load(MPI_COMM_WORLD, path, t, N_PARAMS, BASE_HASH, &s, 1, &got);
    if (rc)
        fprintf(stderr, "rank %d: %s\n", rank, err_msg());
    int bad = rc || mismatches(&s, n, 0) != 0 || got.step != step;
    if (rank == 0)
        printf("wrote %s\n", path);
    ckpt_meta_free(&got);
    free(path);
    return report(rank, bad, "write and read back");
}

static int mode_read(int rank, int size, const ckpt_param *t, int64_t n, const char *dir,
                     int64_t step)
{
    char *path = NULL;
    int rc = 0;
    if (step >= 0)
        path = xasprintf("%s/checkpoint-%lld.h5", dir, (long long)step);
    else if (rank == 0)
        rc = ckpt_find_latest(dir, &path);
    if (rc) {
        fprintf(stderr, "%s\n", err_msg());
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    int64_t len = path ? (int64_t)strlen(path) + 1 : 0;
    MPI_Bcast(&len, 1, MPI_INT64_T, 0, MPI_COMM_WORLD);
    if (!path)
        path = xcalloc((size_t)len, 1);
    MPI_Bcast(path, (int)len, MPI_CHAR, 0, MPI_COMM_WORLD);

    ckpt_slice s;
    int64_t b, l;
    my_range(rank, size, n, &b, &l);
    alloc_slice(&s, b, l);
    ckpt_meta m;
    rc = ckpt_load(MPI_COMM_WORLD, path, t, N_PARAMS, BASE_HASH, &s, 1, &m);
    if (rc)
        fprintf(stderr, "rank %d: %s\n", rank, err_msg());
    int bad = rc || mismatches(&s, n, 0) != 0;
    bad = bad || m.epoch != 1 || m.data_cursor != 3 || m.n_rng != 2 || m.rng_state[1] != 11 ||
          strcmp(m.config_yaml, "base_model: ./tiny\nlora_r: 8\n") != 0 ||
          strcmp(m.sched_kind, "cosine") != 0 || m.loss != 1.25;
    if (rank == 0)
        printf("read %s (step %lld, written by %d workers) with %d ranks\n", path,
               (long long)m.step, m.world_size, size);
    ckpt_meta_free(&m);
    free(path);
    return report(rank, bad, "read and re-shard");
}

static int mode_bad(int rank, int size, const ckpt_param *t, int64_t n, const char *path,
                    uint64_t hash)
{
    ckpt_slice s;
    int64_t b, l;
    my_range(rank, size, n, &b, &l);
    alloc_slice(&s, b, l);
    fill(&s, 0);
    ckpt_meta m;
    int rc = ckpt_load(MPI_COMM_WORLD, path, t, N_PARAMS, hash, &s, 1, &m);
    if (rank == 0)
        printf("error: %s\n", rc ? err_msg() : "(none)");
    int bad = rc == 0 || mismatches(&s, n, 1) != 0;
    return report(rank, bad, "bad checkpoint refused, nothing loaded");
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (argc < 3) {
        fprintf(stderr, "usage: ckpt_check write|read|bad DIR|PATH [...]\n");
        MPI_Finalize();
        return 2;
    }
    const char *mode = argv[1];
    const char *variant = argc > 3 ? argv[3] : "";
    ckpt_param t[N_PARAMS];
    int64_t n = make_table(t, strcmp(mode, "bad") == 0 && strcmp(variant, "shape") == 0);
    int rc;
    if (strcmp(mode, "write") == 0)
        rc = mode_write(rank, size, t, n, argv[2], argc > 3 ? atoll(argv[3]) : 1,
                        argc > 4 ? atoi(argv[4]) : 0);
    else if (strcmp(mode, "read") == 0)
        rc = mode_read(rank, size, t, n, argv[2], argc > 3 ? atoll(argv[3]) : -1);
    else
        rc = mode_bad(rank, size, t, n, argv[2],
                      strcmp(variant, "hash") == 0 ? BASE_HASH + 1 : BASE_HASH);
    for (int i = 0; i < N_PARAMS; i++)
        free(t[i].name);
    MPI_Finalize();
    return rc;
}
