/*
 * world.h: the MPI roles of one rubric run.
 *
 * Rank 0 is the coordinator; ranks 1..N are the workers, which have their own communicator for
 * the collectives of training. Started as one process (no mpirun, or -np 1), rank 0 is both the
 * coordinator and the single in-process worker: n_workers is 1, worker_index 0, and `workers`
 * is a one-rank communicator (a dup of MPI_COMM_SELF).
 *
 * MPI calls on these communicators return their errors (MPI_ERRORS_RETURN); world_check()
 * turns one into a message naming this rank and the operation, and suggesting a dead peer.
 */
#ifndef RUBRIC_WORLD_H
#define RUBRIC_WORLD_H

#include <mpi.h>

typedef struct {
    int rank, size;        /* in MPI_COMM_WORLD */
    int is_coordinator;    /* rank 0 */
    int is_worker;         /* ranks 1..N; also rank 0 when size == 1 */
    int single_process;    /* size == 1: rank 0 is coordinator and the in-process worker */
    int n_workers;         /* size - 1, or 1 when size == 1 */
    int worker_index;      /* 0-based among the workers; -1 on a coordinator-only rank 0 */
    MPI_Comm world;        /* MPI_COMM_WORLD */
    MPI_Comm workers;      /* the workers' communicator; MPI_COMM_NULL on rank 0 when size > 1 */
    char host[64];         /* this rank's host name */
    int n_hosts;           /* distinct hosts among all ranks */
} world;

/*
 * MPI_Init_thread (MPI_THREAD_FUNNELED), roles, the workers' communicator, error handlers, and
 * log_init(rank, <current level>). Collective over MPI_COMM_WORLD. Returns 0 or
 * RB_EXIT_RUNTIME (message in err_msg()).
 */
int world_init(world *w, int *argc, char ***argv);

/* Free the workers' communicator and MPI_Finalize. Safe to call twice. */
void world_finalize(world *w);

/* Turn an MPI return code into 0, or RB_EXIT_RUNTIME with the message
 * "rank R: <what>: <MPI's error text>; a rank may have died (see the log above)". */
int world_check(const world *w, int mpi_rc, const char *what);

/* Where this rank stands among the ranks of `comm` on its node that take part (participant
 * != 0: e.g. the workers, which each want a GPU): *index its 0-based place among them (in rank
 * order), *count how many there are on the node. Collective over comm (every rank calls it,
 * taking part or not). Returns 0 or RB_EXIT_RUNTIME. */
int world_node_place(MPI_Comm comm, int participant, int *index, int *count);

/* "3 ranks on 1 host: coordinator (rank 0) + 2 workers (ranks 1-2)" into buf. */
void world_describe(const world *w, char *buf, size_t size);

/*
 * A watchdog for a bounded wait: after `seconds` without world_watchdog_disarm(), this rank
 * prints "rubric: error: [rank R] waited more than S s for <what> ..." and exits with
 * RB_EXIT_RUNTIME (mpirun then stops the other ranks). One at a time per process; uses SIGALRM.
 */
void world_watchdog_arm(const world *w, unsigned seconds, const char *what);
void world_watchdog_disarm(void);

#endif
