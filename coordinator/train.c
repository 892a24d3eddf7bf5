/* train.c: the training run: setup on every rank, then rank 0's loop over optimizer steps. */
#include "train.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <libgen.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt.h"
#include "log.h"
#include "lr_sched.h"
#include "model_config.h"
#include "prep.h"
#include "protocol.h"
#include "score.h"
#include "tokenizer.h"
#include "util.h"
#include "worker.h"

typedef struct {
    const world *w;
    rubric_config *cfg;
    const train_options *opt;
    worker_ctx wk;            /* this rank's worker role (ranks 1..N, or rank 0 alone) */
    worker_ctx *local;        /* rank 0's in-process worker (single process), else NULL */
    prep_dataset *ds;         /* rank 0: the dataset, for the schedule's shape */
    prep_schedule sched;
    lr_schedule lrs;
    int64_t total_steps, steps_per_epoch, warmup_steps;
    ckpt_param *table;        /* rank 0's copy of the trainable tensors */
    int n_table;
    uint64_t base_hash;
    FILE *metrics;
    double max_step_s;        /* slowest step so far (for the report deadline) */
    double last_loss, last_lr;
    int64_t last_eval_step;
    protocol_report *reports; /* [n_workers] */
    int finished;             /* rank 0: every step done (not stopped by a signal) */
    char backend_desc[160];   /* the workers' backend, from the first worker */
    int lock_fd;              /* rank 0: <output_dir>/.rubric-train.lock, held for the run */
} trainer;

static volatile sig_atomic_t train_signal;

static void on_stop_signal(int sig)
{
    if (sig == SIGINT) {
        /* Ctrl-C: save like SIGTERM; a second Ctrl-C ends the process at once */
        static const char msg[] = "\nrubric: interrupted: a checkpoint is saved after this step "
                                  "(Ctrl-C again to exit at once, without it)\n";
        signal(SIGINT, SIG_DFL);
        ssize_t n = write(STDERR_FILENO, msg, sizeof msg - 1);
        (void)n;
    }
    train_signal = sig;
}

static int sigint_installed;

/* One process without a launcher: Ctrl-C reaches rubric itself and is handled like SIGTERM
 * (under mpirun, the launcher turns it into a SIGTERM to every rank). */
static void install_sigint(void)
{
    if (signal(SIGINT, on_stop_signal) == SIG_IGN)
        signal(SIGINT, SIG_IGN); /* started ignoring it (nohup, a background job): keep so */
    else
        sigint_installed = 1;
}

void train_install_signals(int is_coordinator)
{
    /* judged at the first call, before MPI_Init (a singleton MPI sets launcher variables) */
    static int checked, alone;
    if (!checked) {
        checked = 1;
        alone = !getenv("OMPI_COMM_WORLD_SIZE") && !getenv("PMIX_RANK") &&
                !getenv("PMI_RANK") && !getenv("PMI_SIZE") && !getenv("SLURM_STEP_ID");
    }
    signal(SIGTERM, is_coordinator ? on_stop_signal : SIG_IGN);
    signal(SIGUSR1, is_coordinator ? on_stop_signal : SIG_IGN);
    if (is_coordinator && alone && !train_signal)
        install_sigint();
}

void train_options_defaults(train_options *o)
{
    memset(o, 0, sizeof *o);
    o->step_timeout_s = 60;
    const char *env = getenv("RUBRIC_BACKEND");
    o->backend = env && *env ? env : "auto";
}

/* ------------------------------------------------------------------ helpers over the world */

/* The worst code of all ranks (a rank that did not fail itself says another one did). */
static int agree(const world *w, int rc, const char *what)
{
    int worst = rc;
    MPI_Allreduce(&rc, &worst, 1, MPI_INT, MPI_MAX, w->world);
    if (worst && !rc)
        err_set(worst, "%s failed on another rank (see its message)", what);
    return worst;
}

/* Root's string (or NULL) to every rank. */
static void bcast_string(const world *w, char **s)
{
    int64_t n = w->rank == 0 && *s ? (int64_t)strlen(*s) + 1 : 0;
    MPI_Bcast(&n, 1, MPI_INT64_T, 0, w->world);
    if (w->rank != 0)
        *s = n ? xmalloc((size_t)n) : NULL;
    if (n)
        MPI_Bcast(*s, (int)n, MPI_CHAR, 0, w->world);
}

/* 1234567 -> "1,234,567" */
static const char *with_commas(double v, char *buf, size_t cap)
{
    char raw[32];
    snprintf(raw, sizeof raw, "%.0f", v < 0 ? 0 : v);
    size_t n = strlen(raw), o = 0;
    for (size_t i = 0; i < n && o + 2 < cap; i++) {
        if (i > 0 && (n - i) % 3 == 0)
            buf[o++] = ',';
        buf[o++] = raw[i];
    }
    buf[o] = '\0';
    return buf;
}

/* ------------------------------------------------------------------ setup */

/* Rank 0: prepare (or reuse) the dataset cache. */
static int prepare_dataset(trainer *t, char **path)
{
    tokenizer *tk = NULL;
    const char *dir = t->opt->tokenizer_dir ? t->opt->tokenizer_dir : t->cfg->tokenizer_dir;
    int rc = tokenizer_load(&tk, dir);
    prep_stats st;
    if (!rc)
        rc = prep_run(t->cfg, tk, path, &st);
    tokenizer_free(tk);
    if (rc)
        return err_prefix(rc, "preparing the dataset");
    log_info("dataset: %s (%s; %" PRId64 " train row%s in %" PRId64 " bin%s, %" PRId64
             " validation row%s, packing %.1f%%)", *path, st.cache_reused ? "cached" : "built",
             st.train_rows, plural_s(st.train_rows), st.train_bins, plural_s(st.train_bins),
             st.val_rows, plural_s(st.val_rows), 100.0 * st.packing_efficiency);
    return 0;
}

/* Rank 0: the schedule's shape, the learning-rate schedule, the base model's identity. */
static int coordinator_init(trainer *t, const char *dataset_path)
{
    rubric_config *cfg = t->cfg;
    int rc = prep_dataset_open(&t->ds, dataset_path);
    if (!rc)
        rc = prep_schedule_init(&t->sched, t->ds, t->w->n_workers,
                                cfg->gradient_accumulation_steps, cfg->micro_batch_size,
                                cfg->seed);
    if (rc)
        return rc;
    t->steps_per_epoch = t->sched.steps_per_epoch;
    if (t->steps_per_epoch < 1)
        return err_set(RB_EXIT_INPUT, "the training split is empty: nothing to train on");
    t->total_steps = cfg->max_steps > 0 ? cfg->max_steps
                                        : (int64_t)cfg->num_epochs * t->steps_per_epoch;
    t->warmup_steps = sched_warmup_steps(cfg->warmup_steps, cfg->warmup_ratio, t->total_steps);
    rc = sched_init(&t->lrs, cfg->lr_scheduler, cfg->learning_rate, t->warmup_steps,
                    t->total_steps);
    if (rc)
        return rc;
    model_config mc;
    if ((rc = model_config_load(&mc, cfg->base_model_dir)))
        return rc;
    t->base_hash = mc.hash;
    t->reports = xcalloc((size_t)t->w->n_workers, sizeof *t->reports);
    t->last_eval_step = -1;
    return 0;
}

/* Rank 0 gets the trainable tensors' table from the first worker. */
static int share_table(trainer *t)
{
    int root = t->w->single_process ? 0 : 1;
    ckpt_param *tab = t->w->rank == root ? t->wk.table : NULL;
    int n = t->w->rank == root ? t->wk.n_table : 0;
    ckpt_params_bcast(t->w->world, root, &tab, &n);
    char desc[sizeof t->wk.backend_desc] = "";
    if (t->w->rank == root)
        memcpy(desc, t->wk.backend_desc, sizeof desc);
    MPI_Bcast(desc, (int)sizeof desc, MPI_CHAR, root, t->w->world);
    memcpy(t->backend_desc, desc, sizeof desc);
    if (t->w->rank == root) {
        t->table = tab;
        t->n_table = n;
    } else if (t->w->is_coordinator) {
        t->table = tab;
        t->n_table = n;
    } else {
        ckpt_params_free(tab, n);
    }
    return 0;
}

static const char *sched_name(enum lr_sched_kind k)
{
    return k == SCHED_LINEAR ? "linear" : k == SCHED_CONSTANT ? "constant" : "cosine";
}

/*
 * How long rank 0 waits for the workers' reports. A dead worker ends the job through the
 * launcher within seconds; this deadline catches a hung one. Before the first step is measured
 * the wait is at least TRAIN_FIRST_STEP_TIMEOUT_S (a real model's first step on CPUs can take
 * minutes); then the base plus 5x the slowest step, scaled for an evaluation by its
 * micro-batches per worker over the step's.
 */
#define TRAIN_FIRST_STEP_TIMEOUT_S 1800.0

static double report_timeout(const trainer *t, int kind)
{
    double base = t->opt->step_timeout_s;
    if (t->max_step_s <= 0)
        return RB_MAX(base, TRAIN_FIRST_STEP_TIMEOUT_S);
    double factor = 1;
    if (kind == PROTO_EVAL) {
        int64_t mbs = t->cfg->micro_batch_size, n = t->w->n_workers;
        int64_t val_mb = (t->ds->n_bins - t->ds->n_train_bins + mbs - 1) / mbs;
        factor = RB_MAX(1.0, (double)((val_mb + n - 1) / n) /
                                 (double)t->cfg->gradient_accumulation_steps);
    }
    return base + 5.0 * t->max_step_s * factor;
}

/* ------------------------------------------------------------------ checkpoints */

/* This rank's slice: its worker's (save: partition; load: its state's range), or nothing. */
static void my_slice(trainer *t, int for_load, ckpt_slice *s)
{
    memset(s, 0, sizeof *s);
    if (t->w->is_worker)
        worker_ckpt_slice(&t->wk, for_load, s);
}

/* Rank 0: write checkpoint-<done>.h5 (the workers join through a SAVE command). */
static int save_checkpoint(trainer *t, int64_t done)
{
    rubric_config *cfg = t->cfg;
    double t0 = now_seconds();
    if (!t->w->single_process) {
        protocol_cmd cmd = {.kind = PROTO_SAVE, .step = done};
        int rc = protocol_send_cmd(t->w, &cmd);
        if (rc)
            return rc;
    }
    char *yaml = config_to_yaml(cfg);
    ckpt_meta m = {.step = done, .epoch = done / t->steps_per_epoch,
                   .data_cursor = done % t->steps_per_epoch, .total_steps = t->total_steps,
                   .loss = t->last_loss, .lr = t->last_lr, .seed = cfg->seed, .n_rng = 1,
                   .rng_state = {cfg->seed}, .sched_kind = (char *)sched_name(cfg->lr_scheduler),
                   .base_lr = cfg->learning_rate, .warmup_steps = t->warmup_steps,
                   .config_yaml = yaml, .base_model = cfg->base_model_dir,
                   .base_model_hash = t->base_hash, .world_size = t->w->n_workers,
                   .zero_stage = cfg->zero_stage, .n_scores = t->ds ? t->ds->n_scores : 0};
    ckpt_slice s;
    my_slice(t, 0, &s);
    char *path = NULL;
    /* a worker that hangs in the collective write must not hang the job */
    unsigned limit = (unsigned)report_timeout(t, PROTO_STEP) + 600;
    world_watchdog_arm(t->w, limit, "a checkpoint write");
    int rc = ckpt_save(t->w->world, cfg->output_dir, &m, t->table, t->n_table, &s, 1,
                       cfg->save_total_limit, &path);
    world_watchdog_disarm();
    free(yaml);
    if (rc)
        return err_prefix(rc, "saving the checkpoint of step %" PRId64, done);
    log_info("saved %s (%.1f s)", path, now_seconds() - t0);
    free(path);
    return 0;
}

/* Rank 0: which checkpoint to resume from (NULL: none). */
static int resume_path(trainer *t, char **path)
{
    *path = NULL;
    const char *want = t->opt->resume ? t->opt->resume : t->cfg->resume_from_checkpoint;
    /* a requeued job continues from its own newest checkpoint when it has one */
    if (t->opt->requeue && want && strcmp(want, "auto") != 0) {
        if (ckpt_find_latest(t->cfg->output_dir, path) == 0)
            return 0;
    }
    if (!want && t->opt->requeue)
        want = "auto";
    if (!want)
        return 0;
    if (strcmp(want, "auto") != 0) {
        if (!path_exists(want))
            return err_set(RB_EXIT_INPUT, "resume: %s does not exist", want);
        *path = xstrdup(want);
        return 0;
    }
    if (ckpt_find_latest(t->cfg->output_dir, path) != 0) {
        log_info("resume auto: no checkpoint in %s yet; starting from step 0",
                 t->cfg->output_dir);
        *path = NULL;
    }
    return 0;
}

/* max_steps of the run that wrote a checkpoint, from the config stored in it (0: unknown). */
static int64_t ckpt_max_steps(const ckpt_meta *m)
{
    rubric_config was;
    int64_t v = 0;
    if (m->config_yaml && config_load_text(&was, "the checkpoint's config", m->config_yaml, 0) == 0)
        v = was.max_steps;
    else
        err_clear();
    config_free(&was);
    return v;
}

/* Rank 0, resuming: say why the checkpoint's run had another length. A changed max_steps is
 * the plain case (the hint of a complete run says to raise it); else another shape of run. */
static void report_total_steps(const trainer *t, const ckpt_meta *m)
{
    if (m->total_steps == t->total_steps || m->step >= t->total_steps)
        return; /* the same length, or nothing left to train (coordinate says so) */
    int64_t was = ckpt_max_steps(m), now = t->cfg->max_steps;
    if (was != 0 && was != now) {
        char before[64], after[64];
        if (was > 0)
            snprintf(before, sizeof before, "max_steps %" PRId64, was);
        else
            snprintf(before, sizeof before, "from num_epochs");
        if (now > 0)
            snprintf(after, sizeof after, "max_steps is now %" PRId64, now);
        else
            snprintf(after, sizeof after, "max_steps is now -1 (from num_epochs)");
        log_info("%s (the checkpoint's run had %" PRId64 " step%s, %s): the run continues to "
                 "step %" PRId64 "; the learning-rate schedule follows the new length", after,
                 m->total_steps, plural_s(m->total_steps), before, t->total_steps);
        return;
    }
    log_warn("the checkpoint's run had %" PRId64 " step%s, this one has %" PRId64 " (another "
             "dataset, worker count or batch size?): the schedule and the data order follow "
             "this run", m->total_steps, plural_s(m->total_steps), t->total_steps);
}

/* Every rank: load the checkpoint, each its own slice; *start = the steps it had done. */
static int resume(trainer *t, int64_t *start)
{
    *start = 0;
    char *path = NULL;
    int rc = t->w->rank == 0 ? resume_path(t, &path) : 0;
    if ((rc = agree(t->w, rc, "finding the checkpoint to resume from")))
        return rc;
    bcast_string(t->w, &path);
    if (!path)
        return 0;

    uint64_t hash = t->w->is_worker ? model_get_config(t->wk.m)->hash : t->base_hash;
    ckpt_slice s;
    my_slice(t, 1, &s);
    ckpt_meta m;
    rc = ckpt_load(t->w->world, path, t->w->is_worker ? t->wk.table : t->table,
                   t->w->is_worker ? t->wk.n_table : t->n_table, hash, &s, 1, &m);
    if (!rc && t->w->is_worker)
        rc = worker_after_load(&t->wk);
    rc = agree(t->w, rc, "loading the checkpoint");
    if (!rc && t->w->rank == 0) {
        log_info("resumed from %s: step %" PRId64 ", epoch %" PRId64 " (written by %d worker%s,"
                 " now %d)", path, m.step, m.epoch, m.world_size, m.world_size == 1 ? "" : "s",
                 t->w->n_workers);
        report_total_steps(t, &m);
        t->last_loss = m.loss;
        t->last_lr = m.lr;
    }
    *start = m.step;
    if (!rc)
        ckpt_meta_free(&m);
    free(path);
    return rc;
}

/* The step of "checkpoint-<step>.h5" (a finished name, not a .tmp), or -1. */
static int64_t ckpt_name_step(const char *name)
{
    char *end;
    if (strncmp(name, "checkpoint-", 11) != 0)
        return -1;
    long long step = strtoll(name + 11, &end, 10);
    return end != name + 11 && strcmp(end, ".h5") == 0 ? step : -1;
}

/*
 * Rank 0, before any work: a run that does not resume must not write into an output_dir
 * holding an earlier run's checkpoints (they would be mixed with the new ones, and `auto` or
 * export-adapter would pick the old newest one). Like HF Trainer's overwrite_output_dir.
 */
static int check_fresh_output_dir(const trainer *t)
{
    if (t->opt->resume || t->opt->requeue || t->cfg->resume_from_checkpoint)
        return 0;
    DIR *d = opendir(t->cfg->output_dir);
    if (!d)
        return 0;
    int64_t newest = -1;
    struct dirent *e;
    while ((e = readdir(d)))
        newest = RB_MAX(newest, ckpt_name_step(e->d_name));
    closedir(d);
    if (newest < 0)
        return 0;
    return err_set(RB_EXIT_INPUT, "output_dir %s already holds checkpoints of an earlier run "
                   "(newest: checkpoint-%" PRId64 ".h5); continue it with --resume auto, or "
                   "choose another output_dir, or delete them", t->cfg->output_dir, newest);
}

/*
 * Rank 0, first of all: one run at a time in an output_dir. An exclusive flock on
 * <output_dir>/.rubric-train.lock, held until the process ends (the kernel releases it even
 * on a crash, so a file left by an earlier run is simply taken); the holder writes its pid and
 * host into it, which the refused run names.
 */
static char *lock_path(const trainer *t)
{
    return xasprintf("%s/.rubric-train.lock", t->cfg->output_dir);
}

static int lock_output_dir(trainer *t)
{
    char *path = lock_path(t);
    /* never through a symbolic link (it would overwrite what it points to), never a FIFO */
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0644);
    struct stat sb;
    if (fd >= 0 && (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode))) {
        close(fd);
        fd = -1;
        errno = EINVAL;
    }
    if (fd < 0) {
        int e = errno;
        int rc = e == ELOOP || e == EISDIR || e == EINVAL || e == ENXIO
            ? err_set(RB_EXIT_INPUT, "output_dir %s: the lock file %s is %s, not a regular "
                      "file: remove it", t->cfg->output_dir, path,
                      e == ELOOP ? "a symbolic link" : e == EISDIR ? "a folder" : "something else")
            : err_set(RB_EXIT_RUNTIME, "output_dir %s: cannot open the lock file %s: %s",
                      t->cfg->output_dir, path, strerror(e));
        free(path);
        return rc;
    }
    int locked = flock(fd, LOCK_EX | LOCK_NB) == 0, e = errno;
    if (!locked && (e == ENOSYS || e == ENOLCK || e == EOPNOTSUPP || e == EINVAL)) {
        /* a shared filesystem without locks (Lustre without -o flock, NFS without lockd):
         * run unlocked rather than not at all */
        log_warn("output_dir %s: not locked against a second run (the filesystem has no "
                 "flock: %s); make sure no other rubric train writes there", t->cfg->output_dir,
                 strerror(e));
        close(fd);
        free(path);
        return 0;
    }
    if (!locked) {
        /* the holder writes its line right after taking the lock: wait up to 2 s for it */
        char who[256] = "";
        for (int tries = 0; e == EWOULDBLOCK && tries < 200; tries++) {
            ssize_t n = pread(fd, who, sizeof who - 1, 0);
            who[n > 0 ? n : 0] = 0;
            if (strchr(who, '\n'))
                break;
            usleep(10000);
        }
        who[strcspn(who, "\n")] = 0;
        close(fd);
        int rc = e == EWOULDBLOCK
            ? err_set(RB_EXIT_INPUT, "output_dir %s is in use by another rubric train (%s; lock "
                      "file %s): wait for it to finish, or choose another output_dir",
                      t->cfg->output_dir, who[0] ? who : "pid and host not yet written", path)
            : err_set(RB_EXIT_RUNTIME, "output_dir %s: cannot lock %s: %s", t->cfg->output_dir,
                      path, strerror(e));
        free(path);
        return rc;
    }
    char host[128] = "?";
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = 0;
    char who[256];
    int n = snprintf(who, sizeof who, "pid %ld on host %s\n", (long)getpid(), host);
    /* written over the old line, then cut: a reader never finds the file empty */
    if (pwrite(fd, who, (size_t)n, 0) != n || ftruncate(fd, n) != 0)
        log_warn("output_dir %s: cannot write pid and host into %s: %s", t->cfg->output_dir,
                 path, strerror(errno));
    free(path);
    t->lock_fd = fd;
    return 0;
}

/*
 * Rank 0: metrics.jsonl of a run resumed from step `start` keeps only the rows of steps
 * <= start (training and evaluation), so that the steps redone after the checkpoint appear
 * once; rewritten atomically. A run from step 0 starts a fresh log.
 */
static int trim_metrics(const char *mpath, int64_t start)
{
    FILE *in = fopen(mpath, "r");
    if (!in)
        return 0;
    atomic_file af;
    int rc = atomic_file_open(&af, mpath);
    if (rc) {
        fclose(in);
        return rc;
    }
    char *line = NULL;
    size_t cap = 0;
    int64_t lineno = 0, dropped = 0;
    while (getline(&line, &cap, in) >= 0) {
        lineno++;
        json_t *row = json_loads(line, 0, NULL);
        json_t *step = row ? json_object_get(row, "step") : NULL;
        if (json_is_integer(step) && json_integer_value(step) <= start) {
            fputs(line, af.fp);
            if (line[strlen(line) - 1] != '\n')
                fputc('\n', af.fp);
        } else
            dropped++;
        json_decref(row);
    }
    free(line);
    fclose(in);
    rc = atomic_file_commit(&af);
    if (rc)
        return err_prefix(rc, "rewriting %s", mpath);
    if (dropped)
        log_info("%s: dropped %" PRId64 " of %" PRId64 " row%s past step %" PRId64
                 " (redone after the checkpoint)", mpath, dropped, lineno, plural_s(lineno),
                 start);
    return 0;
}

static void open_metrics(trainer *t, int64_t start)
{
    char *mpath = xasprintf("%s/metrics.jsonl", t->cfg->output_dir);
    int rc = start > 0 ? trim_metrics(mpath, start) : 0;
    if (rc)
        log_warn("%s", err_msg());
    t->metrics = rc ? NULL : fopen(mpath, start > 0 ? "a" : "w");
    if (!t->metrics)
        log_warn("cannot open %s: no metrics log", mpath);
    free(mpath);
}

/* ------------------------------------------------------------------ the coordinator's loop */

/* Run a STEP or EVAL on every worker and collect the reports. */
static int run_command(trainer *t, const protocol_cmd *cmd)
{
    if (t->local)
        return cmd->kind == PROTO_STEP ? worker_step(t->local, cmd, &t->reports[0])
                                       : worker_eval(t->local, cmd, &t->reports[0]);
    int rc = protocol_send_cmd(t->w, cmd);
    if (rc)
        return rc;
    double timeout = report_timeout(t, cmd->kind);
    char what[64];
    snprintf(what, sizeof what, "%s %" PRId64, protocol_kind_name(cmd->kind), cmd->step);
    return protocol_gather_reports(t->w, t->reports, timeout, what);
}

/* The workers' reports summed: loss sum, supervised and real tokens, the largest bytes. */
static void sum_reports(const trainer *t, double *loss_sum, int64_t *n_sup, int64_t *n_tok,
                        uint64_t *bytes)
{
    *loss_sum = 0, *n_sup = 0, *n_tok = 0, *bytes = 0;
    for (int i = 0; i < t->w->n_workers; i++) {
        *loss_sum += t->reports[i].loss_sum;
        *n_sup += t->reports[i].n_supervised;
        *n_tok += t->reports[i].n_tokens;
        *bytes = RB_MAX(*bytes, t->reports[i].bytes_sent);
    }
}

static void metrics_row(trainer *t, json_t *row)
{
    if (t->metrics) {
        json_dumpf(row, t->metrics, JSON_COMPACT | JSON_REAL_PRECISION(17));
        fputc('\n', t->metrics);
        fflush(t->metrics);
    }
    json_decref(row);
}

static int evaluate(trainer *t, int64_t done)
{
    if (t->ds->n_bins == t->ds->n_train_bins || t->last_eval_step == done)
        return 0;
    t->last_eval_step = done;
    double t0 = now_seconds();
    protocol_cmd cmd = {.kind = PROTO_EVAL, .step = done};
    int rc = run_command(t, &cmd);
    if (rc)
        return rc;
    double loss_sum;
    int64_t n_sup, n_tok;
    uint64_t bytes;
    sum_reports(t, &loss_sum, &n_sup, &n_tok, &bytes);
    double loss = n_sup ? loss_sum / (double)n_sup : 0, ms = (now_seconds() - t0) * 1e3;
    char toks[32];
    log_info("eval step %" PRId64 "/%" PRId64 " | val loss %.4f | %s tokens | %.0f ms", done,
             t->total_steps, loss, with_commas((double)n_sup, toks, sizeof toks), ms);
    metrics_row(t, json_pack("{s:I, s:f, s:I, s:f}", "step", (json_int_t)done, "eval_loss",
                             loss, "eval_tokens", (json_int_t)n_sup, "eval_ms", ms));
    return 0;
}

/* One optimizer step: command, reports, the step line and the metrics row. */
static int train_step(trainer *t, int64_t step)
{
    double t0 = now_seconds();
    protocol_cmd cmd = {.kind = PROTO_STEP, .step = step, .epoch = step / t->steps_per_epoch,
                        .step_in_epoch = step % t->steps_per_epoch,
                        .lr = sched_lr(&t->lrs, step)};
    int rc = run_command(t, &cmd);
    if (rc)
        return rc;
    double loss_sum, wall = now_seconds() - t0;
    int64_t n_sup, n_tok;
    uint64_t bytes;
    sum_reports(t, &loss_sum, &n_sup, &n_tok, &bytes);
    double loss = n_sup ? loss_sum / (double)n_sup : 0, norm = t->reports[0].grad_norm;
    t->max_step_s = RB_MAX(t->max_step_s, wall);
    t->last_loss = loss;
    t->last_lr = cmd.lr;
    if (t->reports[0].skipped)
        log_error("step %" PRId64 ": the gradient norm is %g (not finite): the update was "
                  "skipped on every worker; parameters and optimizer state are unchanged",
                  step + 1, norm);

    int64_t done = step + 1;
    if (done % t->cfg->logging_steps == 0 || done == t->total_steps || step == 0) {
        char tps[32];
        log_info("step %" PRId64 "/%" PRId64 " | loss %.4f | lr %.1e | norm %.2f | %s tok/s | "
                 "%.0f ms", done, t->total_steps, loss, cmd.lr, norm,
                 with_commas((double)n_tok / wall, tps, sizeof tps), wall * 1e3);
    }
    metrics_row(t, json_pack("{s:I, s:I, s:f, s:f, s:f, s:I, s:I, s:f, s:f, s:I, s:b}",
                             "step", (json_int_t)done, "epoch", (json_int_t)cmd.epoch,
                             "loss", loss, "lr", cmd.lr, "grad_norm", norm,
                             "tokens", (json_int_t)n_tok, "supervised_tokens", (json_int_t)n_sup,
                             "tok_per_s", (double)n_tok / wall, "step_ms", wall * 1e3,
                             "bytes_sent_per_worker", (json_int_t)bytes,
                             "skipped", t->reports[0].skipped));
    return 0;
}

static int due(int64_t done, int64_t every, int64_t steps_per_epoch)
{
    return every > 0 ? done % every == 0 : done % steps_per_epoch == 0;
}

static void stop_workers(trainer *t)
{
    protocol_cmd cmd = {.kind = PROTO_STOP};
    if (!t->w->single_process)
        protocol_send_cmd(t->w, &cmd);
}

/* After a signal: the checkpoint is written; requeue the Slurm job when asked. */
static void after_signal(trainer *t, int64_t done)
{
    const char *job = getenv("SLURM_JOB_ID");
    if (t->opt->requeue && job) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "scontrol requeue %s", job);
        fflush(NULL); /* the child must not repeat our buffered output */
        int rc = system(cmd);
        log_info("signal %d: checkpoint of step %" PRId64 " saved; `%s` %s", (int)train_signal,
                 done, cmd, rc == 0 ? "done" : "failed (requeue the job by hand)");
    } else {
        log_info("signal %d: checkpoint of step %" PRId64 " saved; continue with --resume auto",
                 (int)train_signal, done);
    }
}

static void banner(const trainer *t, int64_t start)
{
    char where[256], n[32];
    world_describe(t->w, where, sizeof where);
    int64_t elements = 0;
    for (int i = 0; i < t->n_table; i++)
        elements += t->table[i].rows * t->table[i].cols;
    log_info("train: %s; backend %s", where, t->backend_desc);
    const rubric_config *cfg = t->cfg;
    log_info("train: %" PRId64 " step%s (%" PRId64 " per epoch, %" PRId64 " warmup, %s lr "
             "%.2e), %d worker%s x %d micro-batch%s x %d bin%s per step, ZeRO stage %d",
             t->total_steps, plural_s(t->total_steps), t->steps_per_epoch, t->warmup_steps,
             sched_name(cfg->lr_scheduler), cfg->learning_rate, t->w->n_workers,
             plural_s(t->w->n_workers), cfg->gradient_accumulation_steps,
             cfg->gradient_accumulation_steps == 1 ? "" : "es", cfg->micro_batch_size,
             plural_s(cfg->micro_batch_size), cfg->zero_stage);
    log_info("train: %d LoRA tensor%s, %s trainable parameters; output in %s%s", t->n_table,
             plural_s(t->n_table), with_commas((double)elements, n, sizeof n), cfg->output_dir,
             start ? " (resumed)" : "");
}

static int coordinate(trainer *t, int64_t start)
{
    rubric_config *cfg = t->cfg;

    /* a resumed run that is already complete: nothing to do */
    if (start >= t->total_steps) {
        log_info("train: the checkpoint of step %" PRId64 " already completes this run (%"
                 PRId64 " step%s): nothing to train (score it with `rubric score --adapter`, "
                 "or raise max_steps / num_epochs to train further)", start, t->total_steps,
                 plural_s(t->total_steps));
        stop_workers(t);
        return 0;
    }
    open_metrics(t, start);
    banner(t, start);

    /* the progress counts this process's steps, so that its rate and ETA are right */
    char label[64];
    if (start > 0)
        snprintf(label, sizeof label, "train (steps %" PRId64 "-%" PRId64 ")", start + 1,
                 t->total_steps);
    else
        snprintf(label, sizeof label, "train");
    progress prog;
    progress_start(&prog, label, t->total_steps - start, "steps");
    int rc = 0;
    int64_t done = start;
    for (int64_t step = start; step < t->total_steps && !rc; step++) {
        if (train_signal) {
            rc = save_checkpoint(t, done);
            if (!rc) {
                stop_workers(t);
                after_signal(t, done);
            }
            progress_finish(&prog);
            return rc;
        }
        /* a failed step (a hung worker) is not done, and its line is progress_finish's */
        if ((rc = train_step(t, step)))
            break;
        done = step + 1;
        if (due(done, cfg->eval_steps, t->steps_per_epoch) || done == t->total_steps)
            rc = evaluate(t, done);
        if (!rc && ((cfg->save_steps > 0 && done % cfg->save_steps == 0) ||
                    done == t->total_steps))
            rc = save_checkpoint(t, done);
        if (!rc && done < t->total_steps) /* the last line is progress_finish's */
            progress_update(&prog, done - start);
    }
    prog.done = done - start;
    progress_finish(&prog);
    if (sigint_installed)
        signal(SIGINT, SIG_DFL); /* scoring after training: Ctrl-C ends the process again */
    if (!rc) {
        stop_workers(t);
        log_info("train: done, %" PRId64 " step%s, last loss %.4f", done, plural_s(done),
                 t->last_loss);
        t->finished = 1;
    }
    return rc;
}

/* ------------------------------------------------------------------ scoring after training */

/* The files to score after training: score_after_train, then each of test_datasets. */
static int score_files(const rubric_config *cfg, const char **files)
{
    int n = 0;
    if (cfg->score_after_train)
        files[n++] = cfg->score_after_train;
    for (int i = 0; i < cfg->n_test_datasets; i++)
        files[n++] = cfg->test_datasets[i].path;
    return n;
}

/* "data/test.jsonl" -> "test" (the basename without .jsonl or .json). */
static char *file_stem(const char *path)
{
    char *copy = xstrdup(path);
    char *stem = xstrdup(basename(copy));
    free(copy);
    size_t n = strlen(stem);
    if (n > 6 && strcmp(stem + n - 6, ".jsonl") == 0)
        stem[n - 6] = '\0';
    else if (n > 5 && strcmp(stem + n - 5, ".json") == 0)
        stem[n - 5] = '\0';
    return stem;
}

/* <output_dir>/predictions-<stem>.jsonl; a stem used by an earlier file gets -2, -3, ... */
static char *predictions_path(const rubric_config *cfg, const char **files, int i)
{
    char *stem = file_stem(files[i]);
    int same = 0;
    for (int j = 0; j < i; j++) {
        char *other = file_stem(files[j]);
        same += strcmp(other, stem) == 0;
        free(other);
    }
    char *path = same ? xasprintf("%s/predictions-%s-%d.jsonl", cfg->output_dir, stem, same + 1)
                      : xasprintf("%s/predictions-%s.jsonl", cfg->output_dir, stem);
    free(stem);
    return path;
}

/* Every rank: score one file with the trained model, which the workers lend to the scorer
 * (no reload); the majority baseline comes from the first training dataset. */
static int score_one(trainer *t, const char *input, const char *output)
{
    score_options o;
    score_options_defaults(&o);
    int rc = score_options_from_config(&o, t->cfg);
    if (rc)
        return rc;
    if (t->opt->tokenizer_dir)
        o.tokenizer_dir = t->opt->tokenizer_dir;
    o.input = input;
    o.output = output;
    o.baseline_from = t->cfg->n_datasets > 0 ? t->cfg->datasets[0].path : NULL;
    if (t->ds && t->ds->n_scores > 0)
        o.k = t->ds->n_scores; /* the model was trained to answer that many (rank 0 decides) */
    o.model = t->w->is_worker ? t->wk.m : NULL;
    return score_run(&o);
}

/*
 * Every rank, after the final checkpoint: score score_after_train and test_datasets on the same
 * ranks. Skipped when training stopped early (a signal). A failure is a runtime error (exit 1):
 * the checkpoint is already safe.
 */
static int score_after_training(trainer *t)
{
    const char **files = xcalloc((size_t)t->cfg->n_test_datasets + 1, sizeof *files);
    int n = score_files(t->cfg, files), rc = 0;
    int finished = t->finished;
    MPI_Bcast(&finished, 1, MPI_INT, 0, t->w->world);
    for (int i = 0; i < n && finished && !rc; i++) {
        char *out = predictions_path(t->cfg, files, i);
        char *metrics = score_default_metrics_path(out);
        double t0 = now_seconds();
        rc = agree(t->w, score_one(t, files[i], out), "scoring after training");
        if (rc)
            rc = err_prefix(RB_EXIT_RUNTIME, "score_after_train: %s (the final checkpoint in %s "
                            "is saved; score it with `rubric score --adapter`)", files[i],
                            t->cfg->output_dir);
        else if (t->w->rank == 0)
            log_info("score_after_train: %s -> %s%s%s (%.1f s)", files[i], out,
                     path_exists(metrics) ? ", " : " (no labels: no metrics)",
                     path_exists(metrics) ? metrics : "", now_seconds() - t0);
        free(metrics);
        free(out);
    }
    free(files);
    return rc;
}

/* ------------------------------------------------------------------ the run */

/* rc: the run's result; a failed run that made output_dir and holds its lock leaves no
 * folder holding nothing but the lock file (only the lock's holder: a refused concurrent run
 * that also saw output_dir missing must not remove the winner's) */
static void trainer_free(trainer *t, int rc)
{
    if (t->w->is_worker)
        worker_free(&t->wk);
    if (t->w->is_coordinator && !t->w->single_process && t->table)
        ckpt_params_free(t->table, t->n_table);
    if (t->ds) {
        prep_schedule_free(&t->sched);
        prep_dataset_close(t->ds);
    }
    if (t->metrics)
        fclose(t->metrics);
    free(t->reports);
    if (t->lock_fd >= 0 && rc && t->opt->made_top) {
        char *lock = lock_path(t);
        unlink(lock); /* still held: no other run can have taken it */
        free(lock);
        rmdir_empty_upto(t->cfg->output_dir, t->opt->made_top);
    }
    if (t->lock_fd >= 0)
        close(t->lock_fd); /* releases the output_dir */
}

int train_run(const world *w, rubric_config *cfg, const train_options *opt)
{
    trainer t = {.w = w, .cfg = cfg, .opt = opt, .lock_fd = -1};

    train_install_signals(w->is_coordinator);

    /* 1. rank 0 checks output_dir and prepares the dataset (the files to score after training
     *    were checked by cmd_train with config_check_score_files); everyone learns where it is */
    char *path = NULL;
    int rc = w->rank == 0 ? lock_output_dir(&t) : 0;
    if (!rc && w->rank == 0)
        rc = check_fresh_output_dir(&t);
    rc = agree(w, rc, "checking output_dir");

    /* the workers' backend, rank 0's choice (another node's ranks may not see its
     * RUBRIC_BACKEND); a missing GPU is found before the data preparation */
    char *backend = w->rank == 0 ? xstrdup(opt->backend ? opt->backend : "auto") : NULL;
    bcast_string(w, &backend);
    if (!rc)
        rc = agree(w, w->is_worker ? worker_pick_backend(&t.wk, w, backend) : 0,
                   "choosing the backend");
    free(backend);
    if (!rc && w->rank == 0)
        rc = prepare_dataset(&t, &path);
    rc = agree(w, rc, "preparing the dataset");
    if (!rc)
        bcast_string(w, &path);

    /* 2. the workers load the model; rank 0 sets up the schedule */
    if (!rc) {
        int mine = w->is_worker ? worker_init(&t.wk, cfg, path) : 0;
        if (!mine && w->is_coordinator)
            mine = coordinator_init(&t, path);
        rc = agree(w, mine, "setting up training");
    }
    t.local = w->single_process ? &t.wk : NULL;

    /* 3. the table of trainable tensors to rank 0; 4. resume */
    int64_t start = 0;
    if (!rc)
        rc = share_table(&t);
    if (!rc)
        rc = resume(&t, &start);

    /* 5. the loop (rank 0) and the workers' service; a failure here ends every rank */
    if (!rc) {
        rc = w->is_coordinator ? coordinate(&t, start) : worker_serve(&t.wk);
        if (rc)
            rb_die_err(rc);
    }

    /* 6. score the test files on the same ranks, with the trained model still in memory */
    if (!rc)
        rc = score_after_training(&t);
    free(path);
    trainer_free(&t, rc);
    return rc;
}
