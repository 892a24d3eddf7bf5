/*
 * comm.h: the collectives of training, behind one interface with two backends.
 *
 *   COMM_MPI   buffers in host memory, MPI collectives on an MPI communicator.
 *   COMM_NCCL  buffers in device memory, NCCL collectives on one CUDA stream; the ncclUniqueId
 *              is made by rank 0 of the MPI communicator and broadcast over MPI. Compiled only
 *              when RUBRIC_HAVE_CUDA (build/rubric_build.h), usable only where a GPU exists.
 *
 * Every helper takes ELEMENT counts and a dtype, never byte counts. Every call is checked: a
 * failure returns RB_EXIT_RUNTIME with a message naming the call, the backend, the rank and the
 * library's own error text (err_msg()). MPI calls run with MPI_ERRORS_RETURN on the
 * communicator, so a dead peer is an error return, not a silent abort.
 *
 * Bytes sent: each helper adds to a per-communicator counter the bytes this rank sends under
 * the bandwidth-optimal (ring) algorithm for that collective with N ranks and B bytes of
 * payload (the model everyone quotes for ZeRO's volume):
 *   reduce_scatter (B = whole input)  (N-1)/N * B
 *   all_gather     (B = whole output) (N-1)/N * B
 *   all_reduce                        2 (N-1)/N * B
 *   broadcast                         B on the root, 0 elsewhere
 * It is the algorithmic volume, not a wire measurement (MPI may pick another algorithm).
 */
#ifndef RUBRIC_COMM_H
#define RUBRIC_COMM_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { COMM_F32 = 0, COMM_F64, COMM_I32, COMM_I64, COMM_U8 } comm_dtype;
typedef enum { COMM_MPI = 0, COMM_NCCL = 1 } comm_backend;

typedef struct comm comm;

/* Make a communicator over the ranks of `mpi_comm` (collective over it). The MPI communicator
 * is duplicated, so the caller may free its own. For COMM_NCCL, `cuda_stream` is the
 * cudaStream_t the collectives run on (NULL: the default stream); the current CUDA device must
 * already be set. Returns 0 or RB_EXIT_RUNTIME (RB_EXIT_INPUT for NCCL in a build without
 * CUDA). */
int comm_create(comm **out, MPI_Comm mpi_comm, comm_backend backend, void *cuda_stream);
void comm_destroy(comm *c);

int comm_rank(const comm *c);
int comm_size(const comm *c);
comm_backend comm_get_backend(const comm *c);
const char *comm_backend_name(comm_backend b);
/* The duplicated MPI communicator underneath (both backends have one). */
MPI_Comm comm_mpi(const comm *c);
size_t comm_dtype_size(comm_dtype dt);

/* Sum-reduce `send` ([count_per_rank * size] elements) and leave block `rank` of the result in
 * `recv` ([count_per_rank] elements). recv must not overlap send. */
int comm_reduce_scatter(comm *c, const void *send, void *recv, size_t count_per_rank,
                        comm_dtype dt);
/* Gather each rank's `send` ([count_per_rank]) into `recv` ([count_per_rank * size]) in rank
 * order. send may be recv + rank * count_per_rank (in place). */
int comm_all_gather(comm *c, const void *send, void *recv, size_t count_per_rank,
                    comm_dtype dt);
/* Sum-reduce `count` elements of every rank's `send` into every rank's `recv`; send == recv is
 * in place. */
int comm_all_reduce(comm *c, const void *send, void *recv, size_t count, comm_dtype dt);
/* Copy `count` elements of root's buf to every rank's buf. */
int comm_broadcast(comm *c, void *buf, size_t count, comm_dtype dt, int root);
/* Wait for every rank (and, for NCCL, for the stream to drain). */
int comm_barrier(comm *c);

/* The bytes-sent counter (see the top of this file). */
uint64_t comm_bytes_sent(const comm *c);
void comm_bytes_reset(comm *c);

/* Check an MPI return code; on failure record "<what> failed on rank R: <MPI text>" and return
 * RB_EXIT_RUNTIME. For use by other modules' MPI calls too. */
int comm_check_mpi(int rc, const char *what, MPI_Comm where);

#endif
