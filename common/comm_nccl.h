/*
 * comm_nccl.h: the NCCL backend of comm.h (private to comm.c; built only with CUDA).
 * Buffers are device pointers; every call is enqueued on `stream` (a cudaStream_t) and waited
 * for, so a return means the data is in place.
 */
#ifndef RUBRIC_COMM_NCCL_H
#define RUBRIC_COMM_NCCL_H

#include <mpi.h>
#include <stddef.h>

#include "comm.h"

/* Rank 0 of mpi_comm makes the unique id, MPI broadcasts it, every rank joins. */
int comm_nccl_init(void **nccl, MPI_Comm mpi_comm, int rank, int size);
void comm_nccl_free(void *nccl);
int comm_nccl_reduce_scatter(void *nccl, void *stream, const void *send, void *recv,
                             size_t count, comm_dtype dt, int rank);
int comm_nccl_all_gather(void *nccl, void *stream, const void *send, void *recv, size_t count,
                         comm_dtype dt, int rank);
int comm_nccl_all_reduce(void *nccl, void *stream, const void *send, void *recv, size_t count,
                         comm_dtype dt, int rank);
int comm_nccl_broadcast(void *nccl, void *stream, void *buf, size_t count, comm_dtype dt,
                        int root, int rank);
int comm_nccl_sync(void *stream, int rank);

#endif
