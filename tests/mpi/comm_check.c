/*
 * comm_check.c: each comm.h helper on the MPI backend, run under mpirun with N ranks.
 *
 * For every dtype the helpers support: reduce_scatter, all_gather (separate buffers and in
 * place), all_reduce (separate and in place), broadcast from the last rank, barrier; results
 * compared with values computed here from the rank formulas (exact: small integers). The
 * bytes-sent counter is compared with the ring-volume formulas of comm.h after each call.
 * Prints "PASS ..." or "FAIL: ..." on rank 0; exit 0 only on PASS.
 *
 *   comm_check          the MPI backend (host buffers)
 *   comm_check nccl     the NCCL backend (device buffers, staged with cudaMemcpy; rank r uses
 *                       GPU r % devices; NCCL needs one GPU per rank). Built with CUDA only;
 *                       exit 77 (skip) when there is no GPU.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"
#include "rubric_build.h"
#include "util.h"

#if RUBRIC_HAVE_CUDA
#include <cuda_runtime.h>
#endif

#define COUNT 37 /* elements per rank: odd, to catch byte-count mistakes */

/* value of element i contributed by rank r, as a double (exact in every dtype used) */
static double val(int r, size_t i) { return (double)((r + 1) * 3 + (int)(i % 11)); }

static void put(void *buf, comm_dtype dt, size_t i, double v)
{
    switch (dt) {
    case COMM_F32: ((float *)buf)[i] = (float)v; break;
    case COMM_F64: ((double *)buf)[i] = v; break;
    case COMM_I32: ((int32_t *)buf)[i] = (int32_t)v; break;
    case COMM_I64: ((int64_t *)buf)[i] = (int64_t)v; break;
    case COMM_U8: ((uint8_t *)buf)[i] = (uint8_t)v; break;
    }
}

static double get(const void *buf, comm_dtype dt, size_t i)
{
    switch (dt) {
    case COMM_F32: return ((const float *)buf)[i];
    case COMM_F64: return ((const double *)buf)[i];
    case COMM_I32: return ((const int32_t *)buf)[i];
    case COMM_I64: return (double)((const int64_t *)buf)[i];
    case COMM_U8: return ((const uint8_t *)buf)[i];
    }
    return 0;
}

static int use_device; /* NCCL: stage every buffer through device memory */

#if RUBRIC_HAVE_CUDA
static void *to_device(const void *host, size_t bytes)
{
    void *d = NULL;
    if (cudaMalloc(&d, bytes ? bytes : 1) != cudaSuccess ||
        cudaMemcpy(d, host, bytes, cudaMemcpyHostToDevice) != cudaSuccess)
        rb_die(1, "cudaMalloc/cudaMemcpy of %zu bytes failed", bytes);
    return d;
}

static void to_host(void *host, void *d, size_t bytes)
{
    if (cudaMemcpy(host, d, bytes, cudaMemcpyDeviceToHost) != cudaSuccess)
        rb_die(1, "cudaMemcpy back of %zu bytes failed", bytes);
    cudaFree(d);
}
#endif

/* The helpers on host buffers, staged through the device for NCCL. `in`/`out` sizes in bytes;
 * out_off: where `out` starts inside `in` for the in-place calls (or -1: separate buffers). */
typedef enum { OP_RS, OP_AG, OP_AR, OP_BC } op_kind;

static int run_op(comm *c, op_kind op, void *in, size_t in_bytes, void *out, size_t out_bytes,
                  size_t count, comm_dtype dt, int root)
{
    if (!use_device) {
        switch (op) {
        case OP_RS: return comm_reduce_scatter(c, in, out, count, dt);
        case OP_AG: return comm_all_gather(c, in, out, count, dt);
        case OP_AR: return comm_all_reduce(c, in, out, count, dt);
        case OP_BC: return comm_broadcast(c, in, count, dt, root);
        }
    }
#if RUBRIC_HAVE_CUDA
    /* in place when `in` lies inside `out` (all_gather) or equals it (all_reduce) */
    char *d_out = out ? to_device(out, out_bytes) : NULL;
    int inside = out && (char *)in >= (char *)out && (char *)in < (char *)out + out_bytes;
    char *d_in = inside ? d_out + ((char *)in - (char *)out) : to_device(in, in_bytes);
    int rc = 0;
    switch (op) {
    case OP_RS: rc = comm_reduce_scatter(c, d_in, d_out, count, dt); break;
    case OP_AG: rc = comm_all_gather(c, d_in, d_out, count, dt); break;
    case OP_AR: rc = comm_all_reduce(c, d_in, d_out, count, dt); break;
    case OP_BC: rc = comm_broadcast(c, d_in, count, dt, root); break;
    }
    if (!inside)
        to_host(in, d_in, in_bytes);
    if (d_out)
        to_host(out, d_out, out_bytes);
    return rc;
#else
    return err_set(1, "no CUDA in this build");
#endif
}

static int bad;
static char why[512];

static void expect(int ok, const char *what, comm_dtype dt, size_t i)
{
    if (!ok && !bad) {
        bad = 1;
        snprintf(why, sizeof why, "%s (dtype %d, element %zu)", what, (int)dt, i);
    }
}

static void check_bytes(comm *c, uint64_t want, const char *what, comm_dtype dt)
{
    expect(comm_bytes_sent(c) == want, what, dt, 0);
    comm_bytes_reset(c);
}

static void check_dtype(comm *c, comm_dtype dt)
{
    int rank = comm_rank(c), n = comm_size(c);
    size_t es = comm_dtype_size(dt), total = (size_t)COUNT * n;
    uint64_t ring = (uint64_t)total * es * (n - 1) / n;
    char *a = xcalloc(total, es), *b = xcalloc(total, es);

    /* reduce_scatter: block `rank` of the sum over ranks */
    for (size_t i = 0; i < total; i++)
        put(a, dt, i, val(rank, i));
    if (run_op(c, OP_RS, a, total * es, b, COUNT * es, COUNT, dt, 0))
        rb_die_err(1);
    for (size_t i = 0; i < COUNT; i++) {
        double s = 0;
        for (int r = 0; r < n; r++)
            s += val(r, (size_t)rank * COUNT + i);
        expect(get(b, dt, i) == s, "reduce_scatter", dt, i);
    }
    check_bytes(c, ring, "reduce_scatter bytes", dt);

    /* all_gather, separate buffers, then in place */
    for (size_t i = 0; i < COUNT; i++)
        put(a, dt, i, val(rank, i));
    if (run_op(c, OP_AG, a, COUNT * es, b, total * es, COUNT, dt, 0))
        rb_die_err(1);
    for (size_t i = 0; i < total; i++)
        expect(get(b, dt, i) == val((int)(i / COUNT), i % COUNT), "all_gather", dt, i);
    memset(b, 0, total * es);
    for (size_t i = 0; i < COUNT; i++)
        put(b, dt, (size_t)rank * COUNT + i, val(rank, i));
    if (run_op(c, OP_AG, b + (size_t)rank * COUNT * es, COUNT * es, b, total * es, COUNT, dt,
               0))
        rb_die_err(1);
    for (size_t i = 0; i < total; i++)
        expect(get(b, dt, i) == val((int)(i / COUNT), i % COUNT), "all_gather in place", dt, i);
    check_bytes(c, 2 * ring, "all_gather bytes", dt);

    /* all_reduce, separate and in place */
    for (size_t i = 0; i < COUNT; i++)
        put(a, dt, i, val(rank, i));
    if (run_op(c, OP_AR, a, COUNT * es, b, COUNT * es, COUNT, dt, 0) ||
        run_op(c, OP_AR, a, COUNT * es, a, COUNT * es, COUNT, dt, 0))
        rb_die_err(1);
    for (size_t i = 0; i < COUNT; i++) {
        double s = 0;
        for (int r = 0; r < n; r++)
            s += val(r, i);
        expect(get(b, dt, i) == s && get(a, dt, i) == s, "all_reduce", dt, i);
    }
    check_bytes(c, 2 * (2ull * COUNT * es * (n - 1) / n), "all_reduce bytes", dt);

    /* broadcast from the last rank */
    for (size_t i = 0; i < COUNT; i++)
        put(a, dt, i, val(rank, i));
    if (run_op(c, OP_BC, a, COUNT * es, NULL, 0, COUNT, dt, n - 1) || comm_barrier(c))
        rb_die_err(1);
    for (size_t i = 0; i < COUNT; i++)
        expect(get(a, dt, i) == val(n - 1, i), "broadcast", dt, i);
    check_bytes(c, rank == n - 1 && n > 1 ? (uint64_t)COUNT * es : 0, "broadcast bytes", dt);
    free(a);
    free(b);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    use_device = argc > 1 && strcmp(argv[1], "nccl") == 0;
    if (use_device) {
#if RUBRIC_HAVE_CUDA
        int devices = 0, rank;
        MPI_Comm_rank(MPI_COMM_WORLD, &rank);
        if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
            if (rank == 0)
                printf("SKIP: no GPU for the NCCL backend\n");
            MPI_Finalize();
            return 77;
        }
        cudaSetDevice(rank % devices);
#else
        printf("SKIP: a build without CUDA has no NCCL backend\n");
        MPI_Finalize();
        return 77;
#endif
    }
    comm *c;
    if (comm_create(&c, MPI_COMM_WORLD, use_device ? COMM_NCCL : COMM_MPI, NULL))
        rb_die_err(1);
    comm_dtype types[] = {COMM_F32, COMM_F64, COMM_I32, COMM_I64, COMM_U8};
    for (size_t k = 0; k < RB_ARRAY_LEN(types); k++)
        check_dtype(c, types[k]);

    int any = bad;
    MPI_Allreduce(&bad, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (comm_rank(c) == 0) {
        if (any)
            printf("FAIL: %s\n", bad ? why : "on another rank");
        else
            printf("PASS comm ops (%s), %d ranks, 5 dtypes\n",
                   comm_backend_name(comm_get_backend(c)), comm_size(c));
    }
    comm_destroy(c);
    MPI_Finalize();
    return any;
}
