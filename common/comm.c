/* comm.c: the collectives of training over MPI (host buffers) or NCCL (device buffers). */
#include "comm.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "rubric_build.h"
#include "util.h"

#if RUBRIC_HAVE_CUDA
#include "comm_nccl.h"
#endif

struct comm {
    comm_backend backend;
    MPI_Comm mpi;
    int rank, size;
    uint64_t bytes_sent;
    void *nccl;    /* ncclComm_t, NCCL only */
    void *stream;  /* cudaStream_t, NCCL only */
};

/* MPI counts are int: larger collectives go in chunks of this many elements. */
#define COMM_MPI_CHUNK ((size_t)1 << 30)

static MPI_Datatype mpi_type(comm_dtype dt)
{
    switch (dt) {
    case COMM_F32: return MPI_FLOAT;
    case COMM_F64: return MPI_DOUBLE;
    case COMM_I32: return MPI_INT32_T;
    case COMM_I64: return MPI_INT64_T;
    case COMM_U8: return MPI_UINT8_T;
    }
    return MPI_DATATYPE_NULL;
}

size_t comm_dtype_size(comm_dtype dt)
{
    static const size_t sizes[] = {4, 8, 4, 8, 1};
    return sizes[dt];
}

const char *comm_backend_name(comm_backend b) { return b == COMM_NCCL ? "nccl" : "mpi"; }

int comm_check_mpi(int rc, const char *what, MPI_Comm where)
{
    if (rc == MPI_SUCCESS)
        return 0;
    char text[MPI_MAX_ERROR_STRING] = "";
    int len = 0, rank = -1;
    MPI_Error_string(rc, text, &len);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    return err_set(RB_EXIT_RUNTIME, "%s failed on rank %d: %s (a peer may have died; see its "
                   "log above)", what, rank, text);
}

int comm_create(comm **out, MPI_Comm mpi_comm, comm_backend backend, void *cuda_stream)
{
    *out = NULL;
#if !RUBRIC_HAVE_CUDA
    if (backend == COMM_NCCL)
        return err_set(RB_EXIT_INPUT, "comm_create: the NCCL backend needs a build with CUDA "
                       "(this one is CPU-only); use the MPI backend");
#endif
    comm *c = xcalloc(1, sizeof *c);
    c->backend = backend;
    c->stream = cuda_stream;
    int rc = comm_check_mpi(MPI_Comm_dup(mpi_comm, &c->mpi), "MPI_Comm_dup", mpi_comm);
    if (rc) {
        free(c);
        return rc;
    }
    MPI_Comm_set_errhandler(c->mpi, MPI_ERRORS_RETURN);
    MPI_Comm_rank(c->mpi, &c->rank);
    MPI_Comm_size(c->mpi, &c->size);
#if RUBRIC_HAVE_CUDA
    if (backend == COMM_NCCL) {
        rc = comm_nccl_init(&c->nccl, c->mpi, c->rank, c->size);
        if (rc) {
            MPI_Comm_free(&c->mpi);
            free(c);
            return rc;
        }
    }
#endif
    *out = c;
    return 0;
}

void comm_destroy(comm *c)
{
    if (!c)
        return;
#if RUBRIC_HAVE_CUDA
    if (c->nccl)
        comm_nccl_free(c->nccl);
#endif
    MPI_Comm_free(&c->mpi);
    free(c);
}

int comm_rank(const comm *c) { return c->rank; }
int comm_size(const comm *c) { return c->size; }
comm_backend comm_get_backend(const comm *c) { return c->backend; }
MPI_Comm comm_mpi(const comm *c) { return c->mpi; }
uint64_t comm_bytes_sent(const comm *c) { return c->bytes_sent; }
void comm_bytes_reset(comm *c) { c->bytes_sent = 0; }

/* Ring-algorithm volume: `parts` passes of (N-1)/N of `bytes`. */
static void count_ring(comm *c, size_t bytes, int parts)
{
    c->bytes_sent += (uint64_t)parts * (uint64_t)bytes * (uint64_t)(c->size - 1) /
                     (uint64_t)c->size;
}

static int check_block_count(const comm *c, size_t count, const char *what)
{
    if (count > (size_t)INT_MAX)
        return err_set(RB_EXIT_RUNTIME, "%s on rank %d: %zu elements per rank is more than "
                       "MPI's int count allows", what, c->rank, count);
    return 0;
}

int comm_reduce_scatter(comm *c, const void *send, void *recv, size_t count_per_rank,
                        comm_dtype dt)
{
    count_ring(c, count_per_rank * (size_t)c->size * comm_dtype_size(dt), 1);
#if RUBRIC_HAVE_CUDA
    if (c->backend == COMM_NCCL)
        return comm_nccl_reduce_scatter(c->nccl, c->stream, send, recv, count_per_rank, dt,
                                        c->rank);
#endif
    int rc = check_block_count(c, count_per_rank, "reduce_scatter");
    if (rc)
        return rc;
    return comm_check_mpi(MPI_Reduce_scatter_block(send, recv, (int)count_per_rank,
                                                   mpi_type(dt), MPI_SUM, c->mpi),
                          "reduce_scatter (MPI_Reduce_scatter_block)", c->mpi);
}

int comm_all_gather(comm *c, const void *send, void *recv, size_t count_per_rank,
                    comm_dtype dt)
{
    size_t esz = comm_dtype_size(dt);
    count_ring(c, count_per_rank * (size_t)c->size * esz, 1);
#if RUBRIC_HAVE_CUDA
    if (c->backend == COMM_NCCL)
        return comm_nccl_all_gather(c->nccl, c->stream, send, recv, count_per_rank, dt,
                                    c->rank);
#endif
    int rc = check_block_count(c, count_per_rank, "all_gather");
    if (rc)
        return rc;
    const void *own = (const char *)recv + (size_t)c->rank * count_per_rank * esz;
    if (send == own)
        send = MPI_IN_PLACE;
    return comm_check_mpi(MPI_Allgather(send, (int)count_per_rank, mpi_type(dt), recv,
                                        (int)count_per_rank, mpi_type(dt), c->mpi),
                          "all_gather (MPI_Allgather)", c->mpi);
}

int comm_all_reduce(comm *c, const void *send, void *recv, size_t count, comm_dtype dt)
{
    size_t esz = comm_dtype_size(dt);
    count_ring(c, count * esz, 2);
#if RUBRIC_HAVE_CUDA
    if (c->backend == COMM_NCCL)
        return comm_nccl_all_reduce(c->nccl, c->stream, send, recv, count, dt, c->rank);
#endif
    for (size_t done = 0; done < count; done += COMM_MPI_CHUNK) {
        size_t n = RB_MIN(COMM_MPI_CHUNK, count - done);
        void *r = (char *)recv + done * esz;
        const void *s = send == recv ? MPI_IN_PLACE : (const char *)send + done * esz;
        int rc = comm_check_mpi(MPI_Allreduce(s, r, (int)n, mpi_type(dt), MPI_SUM, c->mpi),
                                "all_reduce (MPI_Allreduce)", c->mpi);
        if (rc)
            return rc;
    }
    return 0;
}

int comm_broadcast(comm *c, void *buf, size_t count, comm_dtype dt, int root)
{
    size_t esz = comm_dtype_size(dt);
    if (c->rank == root && c->size > 1)
        c->bytes_sent += (uint64_t)(count * esz);
#if RUBRIC_HAVE_CUDA
    if (c->backend == COMM_NCCL)
        return comm_nccl_broadcast(c->nccl, c->stream, buf, count, dt, root, c->rank);
#endif
    for (size_t done = 0; done < count; done += COMM_MPI_CHUNK) {
        size_t n = RB_MIN(COMM_MPI_CHUNK, count - done);
        int rc = comm_check_mpi(MPI_Bcast((char *)buf + done * esz, (int)n, mpi_type(dt), root,
                                          c->mpi),
                                "broadcast (MPI_Bcast)", c->mpi);
        if (rc)
            return rc;
    }
    return 0;
}

int comm_barrier(comm *c)
{
#if RUBRIC_HAVE_CUDA
    if (c->backend == COMM_NCCL) {
        int rc = comm_nccl_sync(c->stream, c->rank);
        if (rc)
            return rc;
    }
#endif
    return comm_check_mpi(MPI_Barrier(c->mpi), "barrier (MPI_Barrier)", c->mpi);
}
