/*
 * test_world_mpi.c: the MPI roles of common/world.c, run by meson under
 * `mpirun --allow-run-as-root --oversubscribe -np N test_world_mpi N` (N = 3 and 1).
 *
 * With N ranks: rank 0 is the coordinator and no worker (N > 1); ranks 1..N-1 are workers with
 * worker_index rank-1 and a workers' communicator of N-1 ranks, which an all-reduce over it
 * confirms (the sum of worker indices is 0+1+..+N-2). With one rank: rank 0 is coordinator and
 * the single worker, n_workers 1, and `workers` is a one-rank communicator. Every rank also
 * checks that a failing MPI call returns (MPI_ERRORS_RETURN) and that world_check names the
 * rank. Rank 0 collects every rank's verdict and prints PASS or FAIL; exit code 0 only on PASS.
 * With N = 1 it first checks the watchdog, in a child forked before MPI starts: armed for 1 s
 * and never disarmed, the child must end with exit code 1 and the "waited more than" message.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "log.h"
#include "util.h"
#include "world.h"

static int failures;

#define CHECK(cond, ...)                                                                      \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            fprintf(stderr, "FAIL [rank %d] %s:%d: ", w.rank, __FILE__, __LINE__);             \
            fprintf(stderr, __VA_ARGS__);                                                     \
            fputc('\n', stderr);                                                              \
            failures++;                                                                       \
        }                                                                                     \
    } while (0)

/* A child that waits forever under a 1 s watchdog; returns 0 when it ended as it should. */
static int check_watchdog(void)
{
    int fds[2];
    if (pipe(fds) != 0)
        return 1;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], STDERR_FILENO);
        world_watchdog_arm(NULL, 1, "a message that never comes");
        for (;;)
            pause();
    }
    close(fds[1]);
    char text[1024] = "";
    size_t len = 0;
    ssize_t got;
    while (len < sizeof text - 1 && (got = read(fds[0], text + len, sizeof text - 1 - len)) > 0)
        len += (size_t)got;
    text[len] = '\0';
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    int ok = WIFEXITED(status) && WEXITSTATUS(status) == RB_EXIT_RUNTIME &&
             strstr(text, "waited more than 1 s for a message that never comes");
    if (!ok)
        fprintf(stderr, "FAIL: watchdog: status %d, message '%s'\n", status, text);
    return !ok;
}

int main(int argc, char **argv)
{
    int expected_size = argc > 1 ? atoi(argv[1]) : 3;
    int watchdog_failed = expected_size == 1 ? check_watchdog() : 0;
    world w;
    if (world_init(&w, &argc, &argv) != 0) {
        fprintf(stderr, "FAIL: world_init: %s\n", err_msg());
        return 1;
    }

    /* roles */
    CHECK(w.size == expected_size, "size %d, expected %d", w.size, expected_size);
    CHECK(w.is_coordinator == (w.rank == 0), "is_coordinator %d on rank %d", w.is_coordinator,
          w.rank);
    if (w.size == 1) {
        CHECK(w.single_process && w.is_worker, "one rank must be coordinator and worker");
        CHECK(w.n_workers == 1 && w.worker_index == 0, "n_workers %d worker_index %d",
              w.n_workers, w.worker_index);
    } else {
        CHECK(!w.single_process, "single_process with %d ranks", w.size);
        CHECK(w.n_workers == w.size - 1, "n_workers %d", w.n_workers);
        CHECK(w.is_worker == (w.rank > 0), "is_worker %d on rank %d", w.is_worker, w.rank);
        CHECK(w.worker_index == w.rank - 1, "worker_index %d on rank %d", w.worker_index,
              w.rank);
        if (w.rank == 0)
            CHECK(w.workers == MPI_COMM_NULL, "the coordinator has a workers' communicator");
    }

    /* the workers' communicator: its size, and a collective over it alone */
    if (w.is_worker) {
        int wsize = 0, sum = 0;
        CHECK(w.workers != MPI_COMM_NULL, "a worker without the workers' communicator");
        MPI_Comm_size(w.workers, &wsize);
        CHECK(wsize == w.n_workers, "workers' communicator has %d ranks, expected %d", wsize,
              w.n_workers);
        int rc = MPI_Allreduce(&w.worker_index, &sum, 1, MPI_INT, MPI_SUM, w.workers);
        CHECK(rc == MPI_SUCCESS, "all-reduce over the workers failed");
        CHECK(sum == w.n_workers * (w.n_workers - 1) / 2, "sum of worker indices %d", sum);
    }

    /* world_node_place: one host, so the workers (participants) are numbered 0..n_workers-1
     * in rank order and rank 0, when it only coordinates, is not counted (which GPU a worker
     * takes); also over the workers' own communicator, everyone taking part */
    {
        int index = -1, count = -1;
        CHECK(world_node_place(w.world, w.is_worker, &index, &count) == 0, "%s", err_msg());
        CHECK(count == w.n_workers, "node place: %d participants, expected %d", count,
              w.n_workers);
        if (w.is_worker)
            CHECK(index == w.worker_index, "node place: index %d, expected %d", index,
                  w.worker_index);
        if (w.is_worker) {
            index = count = -1;
            CHECK(world_node_place(w.workers, 1, &index, &count) == 0, "%s", err_msg());
            CHECK(index == w.worker_index && count == w.n_workers,
                  "node place among the workers: %d of %d", index, count);
        }
    }

    /* errors return: a send to a rank that does not exist, named by world_check */
    int junk = 0;
    int rc = MPI_Send(&junk, 1, MPI_INT, w.size + 5, 0, w.world);
    CHECK(rc != MPI_SUCCESS, "a send to rank %d succeeded", w.size + 5);
    CHECK(world_check(&w, rc, "sending to a missing rank") == RB_EXIT_RUNTIME,
          "world_check did not fail");
    char want[64];
    snprintf(want, sizeof want, "rank %d: sending to a missing rank", w.rank);
    CHECK(strstr(err_msg(), want), "message '%s' lacks '%s'", err_msg(), want);

    char layout[256];
    world_describe(&w, layout, sizeof layout);
    CHECK(strstr(layout, w.size == 1 ? "single worker" : "coordinator (rank 0)"), "layout '%s'",
          layout);

    CHECK(!watchdog_failed, "the watchdog did not stop a stuck process");

    /* every rank's verdict to rank 0 */
    int total = 0;
    MPI_Reduce(&failures, &total, 1, MPI_INT, MPI_SUM, 0, w.world);
    if (w.rank == 0)
        printf("%s: %s (%d failed checks)\n", total ? "FAIL" : "PASS", layout, total);
    world_finalize(&w);
    return w.rank == 0 && total ? 1 : (failures ? 1 : 0);
}
