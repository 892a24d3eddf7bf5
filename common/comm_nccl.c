/* comm_nccl.c: the NCCL backend of comm.h (device buffers; built only with CUDA). */
#include "comm_nccl.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include "util.h"

static ncclDataType_t nccl_type(comm_dtype dt)
{
    switch (dt) {
    case COMM_F32: return ncclFloat32;
    case COMM_F64: return ncclFloat64;
    case COMM_I32: return ncclInt32;
    case COMM_I64: return ncclInt64;
    case COMM_U8: return ncclUint8;
    }
    return ncclFloat32;
}

static int check_nccl(ncclResult_t r, const char *what, int rank)
{
    if (r == ncclSuccess)
        return 0;
    return err_set(RB_EXIT_RUNTIME, "%s failed on rank %d: %s", what, rank,
                   ncclGetErrorString(r));
}

static int check_cuda(cudaError_t e, const char *what, int rank)
{
    if (e == cudaSuccess)
        return 0;
    return err_set(RB_EXIT_RUNTIME, "%s failed on rank %d: %s", what, rank,
                   cudaGetErrorString(e));
}

int comm_nccl_sync(void *stream, int rank)
{
    return check_cuda(cudaStreamSynchronize((cudaStream_t)stream),
                      "cudaStreamSynchronize after an NCCL collective", rank);
}

int comm_nccl_init(void **nccl, MPI_Comm mpi_comm, int rank, int size)
{
    *nccl = NULL;
    ncclUniqueId id;
    if (rank == 0) {
        int rc = check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId", rank);
        if (rc)
            return rc;
    }
    int mrc = MPI_Bcast(&id, (int)sizeof id, MPI_BYTE, 0, mpi_comm);
    if (mrc != MPI_SUCCESS)
        return err_set(RB_EXIT_RUNTIME, "MPI_Bcast of the NCCL unique id failed on rank %d",
                       rank);
    ncclComm_t c;
    int rc = check_nccl(ncclCommInitRank(&c, size, id, rank), "ncclCommInitRank", rank);
    if (rc)
        return rc;
    *nccl = c;
    return 0;
}

void comm_nccl_free(void *nccl) { ncclCommDestroy((ncclComm_t)nccl); }

int comm_nccl_reduce_scatter(void *nccl, void *stream, const void *send, void *recv,
                             size_t count, comm_dtype dt, int rank)
{
    int rc = check_nccl(ncclReduceScatter(send, recv, count, nccl_type(dt), ncclSum,
                                          (ncclComm_t)nccl, (cudaStream_t)stream),
                        "reduce_scatter (ncclReduceScatter)", rank);
    return rc ? rc : comm_nccl_sync(stream, rank);
}

int comm_nccl_all_gather(void *nccl, void *stream, const void *send, void *recv, size_t count,
                         comm_dtype dt, int rank)
{
    int rc = check_nccl(ncclAllGather(send, recv, count, nccl_type(dt), (ncclComm_t)nccl,
                                      (cudaStream_t)stream),
                        "all_gather (ncclAllGather)", rank);
    return rc ? rc : comm_nccl_sync(stream, rank);
}

int comm_nccl_all_reduce(void *nccl, void *stream, const void *send, void *recv, size_t count,
                         comm_dtype dt, int rank)
{
    int rc = check_nccl(ncclAllReduce(send, recv, count, nccl_type(dt), ncclSum,
                                      (ncclComm_t)nccl, (cudaStream_t)stream),
                        "all_reduce (ncclAllReduce)", rank);
    return rc ? rc : comm_nccl_sync(stream, rank);
}

int comm_nccl_broadcast(void *nccl, void *stream, void *buf, size_t count, comm_dtype dt,
                        int root, int rank)
{
    int rc = check_nccl(ncclBroadcast(buf, buf, count, nccl_type(dt), root, (ncclComm_t)nccl,
                                      (cudaStream_t)stream),
                        "broadcast (ncclBroadcast)", rank);
    return rc ? rc : comm_nccl_sync(stream, rank);
}
