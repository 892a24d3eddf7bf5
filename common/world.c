/* world.c: MPI start-up, roles and the workers' communicator (see world.h). */
#include "world.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

int world_check(const world *w, int mpi_rc, const char *what)
{
    if (mpi_rc == MPI_SUCCESS)
        return 0;
    char text[MPI_MAX_ERROR_STRING] = "";
    int len = 0;
    if (MPI_Error_string(mpi_rc, text, &len) != MPI_SUCCESS)
        snprintf(text, sizeof text, "MPI error %d", mpi_rc);
    return err_set(RB_EXIT_RUNTIME,
                   "rank %d: %s: %s; a rank may have died (see the log above for its error)",
                   w ? w->rank : -1, what, text);
}

/* How many distinct hosts: every rank's name, gathered to all. */
static int count_hosts(world *w)
{
    char *names = xcalloc((size_t)w->size, sizeof w->host);
    int rc = world_check(w, MPI_Allgather(w->host, sizeof w->host, MPI_CHAR, names,
                                          sizeof w->host, MPI_CHAR, w->world),
                         "gathering host names");
    int hosts = 0;
    for (int i = 0; !rc && i < w->size; i++) {
        int seen = 0;
        for (int j = 0; j < i && !seen; j++)
            seen = !strcmp(names + (size_t)i * sizeof w->host, names + (size_t)j * sizeof w->host);
        hosts += !seen;
    }
    w->n_hosts = hosts;
    free(names);
    return rc;
}

/* Ranks 1..N in their own communicator; one process: a dup of MPI_COMM_SELF. */
static int split_workers(world *w)
{
    int rc;
    if (w->single_process) {
        rc = MPI_Comm_dup(MPI_COMM_SELF, &w->workers);
    } else {
        int color = w->is_worker ? 1 : MPI_UNDEFINED;
        rc = MPI_Comm_split(w->world, color, w->rank, &w->workers);
    }
    if (rc != MPI_SUCCESS)
        return world_check(w, rc, "creating the workers' communicator");
    if (w->workers != MPI_COMM_NULL) {
        MPI_Comm_set_errhandler(w->workers, MPI_ERRORS_RETURN);
        MPI_Comm_rank(w->workers, &w->worker_index);
    }
    return 0;
}

int world_init(world *w, int *argc, char ***argv)
{
    memset(w, 0, sizeof *w);
    w->workers = MPI_COMM_NULL;
    w->worker_index = -1;

    /* MPI, with only the main thread calling it */
    int provided = 0, initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized && MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
        return err_set(RB_EXIT_RUNTIME, "MPI_Init_thread failed: start rubric directly or with "
                       "mpirun/srun, and check the MPI installation (ompi_info)");
    w->world = MPI_COMM_WORLD;
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &w->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &w->size);
    log_init(w->rank, log_get_level());
    if (!initialized && provided < MPI_THREAD_FUNNELED)
        log_warn("MPI gives thread level %d, below MPI_THREAD_FUNNELED; OpenMP threads must "
                 "not call MPI (they do not)", provided);

    /* roles */
    w->single_process = w->size == 1;
    w->is_coordinator = w->rank == 0;
    w->is_worker = w->single_process || w->rank > 0;
    w->n_workers = w->single_process ? 1 : w->size - 1;
    if (gethostname(w->host, sizeof w->host - 1) != 0)
        snprintf(w->host, sizeof w->host, "unknown");

    int rc = split_workers(w);
    if (!rc)
        rc = count_hosts(w);
    return rc;
}

void world_finalize(world *w)
{
    world_watchdog_disarm();
    int initialized = 0, finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (!initialized || finalized)
        return;
    if (w && w->workers != MPI_COMM_NULL)
        MPI_Comm_free(&w->workers);
    MPI_Finalize();
}

int world_node_place(MPI_Comm comm, int participant, int *index, int *count)
{
    *index = 0;
    *count = 1;
    int rank = 0, flag = participant ? 1 : 0, before = 0;
    MPI_Comm node;
    MPI_Comm_rank(comm, &rank);
    if (MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node) !=
        MPI_SUCCESS)
        return err_set(RB_EXIT_RUNTIME, "rank %d: MPI_Comm_split_type (the ranks of this "
                       "node) failed", rank);
    int node_rank = 0, rc = MPI_SUCCESS;
    MPI_Comm_rank(node, &node_rank);
    rc = MPI_Exscan(&flag, &before, 1, MPI_INT, MPI_SUM, node);
    if (rc == MPI_SUCCESS)
        rc = MPI_Allreduce(&flag, count, 1, MPI_INT, MPI_SUM, node);
    MPI_Comm_free(&node);
    if (rc != MPI_SUCCESS)
        return err_set(RB_EXIT_RUNTIME, "rank %d: counting the ranks of this node failed", rank);
    *index = node_rank == 0 ? 0 : before; /* Exscan leaves node rank 0's value undefined */
    return 0;
}

void world_describe(const world *w, char *buf, size_t size)
{
    if (w->single_process)
        snprintf(buf, size, "1 process on %s: coordinator and the single worker (rank 0)",
                 w->host);
    else if (w->n_workers == 1)
        snprintf(buf, size, "%d ranks on %d host%s: coordinator (rank 0) + 1 worker (rank 1)",
                 w->size, w->n_hosts, w->n_hosts == 1 ? "" : "s");
    else
        snprintf(buf, size,
                 "%d ranks on %d host%s: coordinator (rank 0) + %d workers (ranks 1-%d)",
                 w->size, w->n_hosts, w->n_hosts == 1 ? "" : "s", w->n_workers, w->size - 1);
}

/* ------------------------------------------------------------------------------------------ */
/* The watchdog: SIGALRM, a message prepared in advance, and _exit (async-signal-safe).      */

static char watchdog_msg[512];
static size_t watchdog_len;

static void watchdog_fire(int sig)
{
    (void)sig;
    ssize_t ignored = write(STDERR_FILENO, watchdog_msg, watchdog_len);
    (void)ignored;
    _exit(RB_EXIT_RUNTIME);
}

void world_watchdog_arm(const world *w, unsigned seconds, const char *what)
{
    int n = snprintf(watchdog_msg, sizeof watchdog_msg,
                     "rubric: error: [rank %d] waited more than %u s for %s; a rank may have "
                     "died or hung (see its log); stopping\n",
                     w ? w->rank : -1, seconds, what);
    watchdog_len = n < 0 ? 0 : RB_MIN((size_t)n, sizeof watchdog_msg - 1);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = watchdog_fire;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGALRM, &sa, NULL);
    alarm(seconds);
}

void world_watchdog_disarm(void) { alarm(0); }
