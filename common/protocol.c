/* protocol.c: coordinator <-> worker messages (point to point, with a deadline on replies). */
#include "protocol.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util.h"

const char *protocol_kind_name(int kind)
{
    switch (kind) {
    case PROTO_STEP: return "step";
    case PROTO_EVAL: return "eval";
    case PROTO_SAVE: return "save";
    case PROTO_STOP: return "stop";
    }
    return "unknown";
}

int protocol_send_cmd(const world *w, const protocol_cmd *cmd)
{
    for (int r = 1; r < w->size; r++) {
        int rc = world_check(w, MPI_Send(cmd, (int)sizeof *cmd, MPI_BYTE, r, PROTOCOL_TAG_CMD,
                                         w->world),
                             "sending a command to a worker");
        if (rc)
            return err_prefix(rc, "%s command to rank %d", protocol_kind_name(cmd->kind), r);
    }
    return 0;
}

int protocol_recv_cmd(const world *w, protocol_cmd *cmd)
{
    return world_check(w, MPI_Recv(cmd, (int)sizeof *cmd, MPI_BYTE, 0, PROTOCOL_TAG_CMD,
                                   w->world, MPI_STATUS_IGNORE),
                       "receiving a command from the coordinator");
}

int protocol_send_report(const world *w, const protocol_report *r)
{
    return world_check(w, MPI_Send(r, (int)sizeof *r, MPI_BYTE, 0, PROTOCOL_TAG_REPORT,
                                   w->world),
                       "sending a report to the coordinator");
}

static void sleep_briefly(void)
{
    struct timespec ts = {0, 2000000}; /* 2 ms */
    nanosleep(&ts, NULL);
}

/* The ranks that have not answered, as "1, 3". */
static void missing_ranks(const int *done, int n, char *buf, size_t cap)
{
    buf[0] = '\0';
    for (int i = 0; i < n; i++)
        if (!done[i])
            snprintf(buf + strlen(buf), cap - strlen(buf), "%s%d", buf[0] ? ", " : "", i + 1);
}

int protocol_gather_reports(const world *w, protocol_report *reports, double timeout_s,
                            const char *what)
{
    int n = w->size - 1;
    MPI_Request *req = xcalloc((size_t)n, sizeof *req);
    int *done = xcalloc((size_t)n, sizeof *done);
    int rc = 0, left = n;
    for (int i = 0; i < n && !rc; i++)
        rc = world_check(w, MPI_Irecv(&reports[i], (int)sizeof reports[i], MPI_BYTE, i + 1,
                                      PROTOCOL_TAG_REPORT, w->world, &req[i]),
                         "posting a receive for a worker's report");

    /* poll until every worker answered or the deadline passed */
    double deadline = now_seconds() + timeout_s;
    while (!rc && left > 0) {
        for (int i = 0; i < n && !rc; i++) {
            if (done[i])
                continue;
            int flag = 0;
            rc = world_check(w, MPI_Test(&req[i], &flag, MPI_STATUS_IGNORE),
                             "waiting for a worker's report");
            if (rc)
                err_prefix(rc, "rank %d", i + 1);
            if (flag)
                done[i] = 1, left--;
        }
        if (!rc && left > 0) {
            if (now_seconds() > deadline) {
                char ranks[256];
                missing_ranks(done, n, ranks, sizeof ranks);
                rc = err_set(RB_EXIT_RUNTIME, "%s: no answer from worker rank%s %s within %.0f s;"
                             " it died or hangs (see its log above); stopping the job", what,
                             left > 1 ? "s" : "", ranks, timeout_s);
            } else {
                sleep_briefly();
            }
        }
    }
    free(req); /* on failure the job is aborted; pending requests die with it */
    free(done);
    return rc;
}
