/* worker.c: a training worker: micro-batches, forward/backward, the ZeRO step, its reports. */
#include "worker.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "util.h"

static void table_from_model(worker_ctx *wk)
{
    wk->n_table = wk->tv.n_tensors;
    wk->table = xcalloc((size_t)wk->n_table + 1, sizeof *wk->table);
    for (int i = 0; i < wk->n_table; i++) {
        const lora_param *p = &wk->tv.table[i];
        wk->table[i] = (ckpt_param){xstrdup(p->name), p->offset, p->rows, p->cols};
    }
}

int worker_init(worker_ctx *wk, const world *w, const rubric_config *cfg,
                const char *dataset_path)
{
    memset(wk, 0, sizeof *wk);
    wk->w = w;
    wk->cfg = cfg;

    /* 1. the model, its flat LoRA buffer padded for an even cut into n_workers partitions */
    model_options o;
    model_options_defaults(&o);
    model_options_from_config(&o, cfg);
    o.flat_align = 16 * (int64_t)w->n_workers;
    int rc = model_load(&wk->m, cfg->base_model_dir, &o);
    if (rc)
        return err_prefix(rc, "worker %d: loading the model", w->worker_index);
    model_trainable(wk->m, &wk->tv);
    if (wk->tv.n == 0)
        return err_set(RB_EXIT_INPUT, "nothing to train: adapter is none or no LoRA target");
    table_from_model(wk);

    /* 2. the workers' collectives and the ZeRO optimizer state */
    if ((rc = comm_create(&wk->comm, w->workers, COMM_MPI, NULL)))
        return rc;
    rc = zero_init(&wk->zero, wk->comm, cfg->zero_stage, (size_t)wk->tv.n_padded,
                   wk->tv.params);
    if (rc)
        return err_prefix(rc, "worker %d", w->worker_index);

    /* 3. the prepared dataset and this run's schedule */
    if ((rc = prep_dataset_open(&wk->ds, dataset_path)))
        return rc;
    rc = prep_schedule_init(&wk->sched, wk->ds, w->n_workers, cfg->gradient_accumulation_steps,
                            cfg->micro_batch_size, cfg->seed);
    if (rc)
        return rc;
    size_t n_bins = (size_t)cfg->gradient_accumulation_steps * (size_t)cfg->micro_batch_size;
    wk->bins = xcalloc(n_bins, sizeof *wk->bins);
    wk->batches = xcalloc((size_t)cfg->gradient_accumulation_steps, sizeof *wk->batches);
    return 0;
}

void worker_free(worker_ctx *wk)
{
    if (wk->table)
        ckpt_params_free(wk->table, wk->n_table);
    zero_free(&wk->zero);
    comm_destroy(wk->comm);
    if (wk->ds) {
        prep_schedule_free(&wk->sched);
        prep_dataset_close(wk->ds);
    }
    model_free(wk->m);
    free(wk->bins);
    free(wk->batches);
    memset(wk, 0, sizeof *wk);
}

/* Real (non-padding) tokens of a micro-batch's bins. */
static int64_t bins_tokens(const prep_dataset *ds, const int64_t *bins, int n)
{
    int64_t t = 0;
    for (int i = 0; i < n; i++)
        if (bins[i] >= 0)
            t += ds->bin_tokens[bins[i]];
    return t;
}

/* Tests only: RUBRIC_TEST_DIE_AT_STEP="RANK:STEP" kills that rank in the middle of that step;
 * RUBRIC_TEST_STEP_SLEEP_MS=MS makes every step last MS longer (a window to signal in). */
static void maybe_die_for_test(const world *w, int64_t step)
{
    const char *spec = getenv("RUBRIC_TEST_DIE_AT_STEP");
    int r = -1;
    long long s = -1;
    if (spec && sscanf(spec, "%d:%lld", &r, &s) == 2 && r == w->rank && s == step)
        raise(SIGKILL);
    const char *sleep_ms = getenv("RUBRIC_TEST_STEP_SLEEP_MS");
    long ms = sleep_ms ? atol(sleep_ms) : 0;
    if (ms > 0) {
        struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) != 0) /* a signal (Ctrl-C) interrupts it: sleep on */
            ;
    }
}

int worker_step(worker_ctx *wk, const protocol_cmd *cmd, protocol_report *rep)
{
    const rubric_config *cfg = wk->cfg;
    int ga = cfg->gradient_accumulation_steps, mbs = cfg->micro_batch_size;
    double t0 = now_seconds();
    memset(rep, 0, sizeof *rep);
    rep->kind = PROTO_STEP;
    rep->step = cmd->step;

    /* 1. this worker's micro-batches of the step */
    int rc = prep_schedule_step(&wk->sched, (int)cmd->epoch, cmd->step_in_epoch,
                                wk->w->worker_index, wk->bins);
    if (rc)
        return err_prefix(rc, "step %lld", (long long)cmd->step);
    int64_t counts[2] = {0, 0}; /* supervised tokens of the step, all workers; real tokens */
    for (int k = 0; k < ga; k++) {
        prep_build_batch(wk->ds, wk->bins + (size_t)k * mbs, mbs, &wk->batches[k]);
        counts[0] += wk->batches[k].n_supervised;
        rep->n_tokens += bins_tokens(wk->ds, wk->bins + (size_t)k * mbs, mbs);
    }

    /* 2. N_total over all workers, before any backward pass */
    if ((rc = comm_all_reduce(wk->comm, counts, counts, 1, COMM_I64)))
        return err_prefix(rc, "step %lld: summing the supervised tokens", (long long)cmd->step);
    float grad_scale = counts[0] > 0 ? 1.0f / (float)counts[0] : 0.0f;
    maybe_die_for_test(wk->w, cmd->step);

    /* 3. forward + backward, gradients accumulated with 1 / N_total */
    for (int k = 0; k < ga && !rc; k++) {
        double loss_sum = 0;
        int64_t n_sup = 0;
        if (wk->batches[k].n_supervised > 0)
            rc = model_forward_backward(wk->m, &wk->batches[k], grad_scale, &loss_sum, &n_sup);
        rep->loss_sum += loss_sum;
        rep->n_supervised += n_sup;
    }
    for (int k = 0; k < ga; k++)
        packed_batch_free(&wk->batches[k]);
    if (rc)
        return err_prefix(rc, "step %lld: forward/backward", (long long)cmd->step);

    /* 4. the ZeRO step */
    zero_hparams h = {.lr = cmd->lr, .beta1 = cfg->adam_beta1, .beta2 = cfg->adam_beta2,
                      .eps = cfg->adam_epsilon, .weight_decay = cfg->weight_decay,
                      .max_grad_norm = cfg->max_grad_norm, .step = cmd->step + 1};
    zero_step_info info;
    if ((rc = zero_step(&wk->zero, wk->tv.params, wk->tv.grads, &h, &info)))
        return err_prefix(rc, "step %lld", (long long)cmd->step);
    rep->grad_norm = info.grad_norm;
    rep->skipped = info.skipped;
    rep->bytes_sent = info.bytes_sent;
    rep->compute_ms = (now_seconds() - t0) * 1e3;
    return 0;
}

int worker_eval(worker_ctx *wk, const protocol_cmd *cmd, protocol_report *rep)
{
    const prep_dataset *ds = wk->ds;
    int mbs = wk->cfg->micro_batch_size, n = wk->w->n_workers, me = wk->w->worker_index;
    double t0 = now_seconds();
    memset(rep, 0, sizeof *rep);
    rep->kind = PROTO_EVAL;
    rep->step = cmd->step;

    /* validation bins in micro-batches of micro_batch_size; micro-batch j to worker j % n */
    int64_t n_val = ds->n_bins - ds->n_train_bins;
    int64_t n_mb = (n_val + mbs - 1) / mbs;
    int64_t *bins = xmalloc((size_t)mbs * sizeof *bins);
    int rc = 0;
    for (int64_t j = me; j < n_mb && !rc; j += n) {
        for (int i = 0; i < mbs; i++) {
            int64_t v = j * mbs + i;
            bins[i] = v < n_val ? ds->n_train_bins + v : -1;
        }
        packed_batch b;
        prep_build_batch(ds, bins, mbs, &b);
        double loss_sum = 0;
        int64_t n_sup = 0;
        if (b.n_supervised > 0)
            rc = model_forward_loss(wk->m, &b, &loss_sum, &n_sup);
        rep->loss_sum += loss_sum;
        rep->n_supervised += n_sup;
        rep->n_tokens += bins_tokens(ds, bins, mbs);
        packed_batch_free(&b);
    }
    free(bins);
    rep->compute_ms = (now_seconds() - t0) * 1e3;
    return rc ? err_prefix(rc, "evaluation at step %lld", (long long)cmd->step) : 0;
}

void worker_ckpt_slice(worker_ctx *wk, int for_load, ckpt_slice *s)
{
    const zero_state *z = &wk->zero;
    size_t begin = for_load ? z->state_begin : z->part_begin;
    size_t len = for_load ? z->state_len : z->part_len;
    s->begin = (int64_t)begin;
    s->len = (int64_t)len;
    s->lora = wk->tv.params + begin;
    s->master = z->master + (begin - z->state_begin);
    s->exp_avg = z->exp_avg + (begin - z->state_begin);
    s->exp_avg_sq = z->exp_avg_sq + (begin - z->state_begin);
}

int worker_after_load(worker_ctx *wk) { return zero_sync_params(&wk->zero, wk->tv.params); }

/* A SAVE command: this worker's part of the collective checkpoint write. */
static int worker_save(worker_ctx *wk)
{
    ckpt_slice s;
    worker_ckpt_slice(wk, 0, &s);
    ckpt_meta none = {0}; /* only rank 0's meta is written */
    return ckpt_save(wk->w->world, wk->cfg->output_dir, &none, wk->table, wk->n_table, &s, 1,
                     wk->cfg->save_total_limit, NULL);
}

int worker_serve(worker_ctx *wk)
{
    /* SIGTERM / SIGUSR1 are ignored here (train.c): the coordinator saves, then says STOP */
    for (;;) {
        protocol_cmd cmd;
        protocol_report rep;
        int rc = protocol_recv_cmd(wk->w, &cmd);
        if (rc)
            return rc;
        switch (cmd.kind) {
        case PROTO_STEP:
            rc = worker_step(wk, &cmd, &rep);
            break;
        case PROTO_EVAL:
            rc = worker_eval(wk, &cmd, &rep);
            break;
        case PROTO_SAVE:
            rc = worker_save(wk);
            if (rc)
                return rc;
            continue;
        case PROTO_STOP:
            return 0;
        default:
            return err_set(RB_EXIT_RUNTIME, "rank %d: unknown command %d from the coordinator",
                           wk->w->rank, cmd.kind);
        }
        if (rc)
            return rc;
        if ((rc = protocol_send_report(wk->w, &rep)))
            return rc;
    }
}
