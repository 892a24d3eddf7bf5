/* worker.c: a training worker: micro-batches, forward/backward, the ZeRO step, its reports. */
#include "worker.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "util.h"
#if RUBRIC_HAVE_CUDA
#include "cuda/cuda_info.h"
#endif

static void table_from_model(worker_ctx *wk)
{
    wk->n_table = wk->tv.n_tensors;
    wk->table = xcalloc((size_t)wk->n_table + 1, sizeof *wk->table);
    for (int i = 0; i < wk->n_table; i++) {
        const lora_param *p = &wk->tv.table[i];
        wk->table[i] = (ckpt_param){xstrdup(p->name), p->offset, p->rows, p->cols};
    }
}

/* On GPUs: no two workers on one physical device (NCCL runs one rank per GPU). The first
 * worker that shares its GPU with an earlier one, or 0. Collective over the workers. */
static int shared_gpu(const world *w, int *with)
{
    char mine[40] = "";
#if RUBRIC_HAVE_CUDA
    cuda_info_device_uuid(mine, sizeof mine);
#endif
    char *all = xcalloc((size_t)w->n_workers, sizeof mine);
    MPI_Allgather(mine, (int)sizeof mine, MPI_CHAR, all, (int)sizeof mine, MPI_CHAR,
                  w->workers);
    int dup = 0;
    *with = -1;
    for (int i = 0; i < w->worker_index && *mine; i++)
        if (strcmp(all + (size_t)i * sizeof mine, mine) == 0) {
            dup = 1, *with = i;
            break;
        }
    free(all);
    return dup;
}

/* Every worker takes the same kind of backend: with cuda (or auto finding GPUs) each worker
 * its own GPU. */
int worker_pick_backend(worker_ctx *wk, const world *w, const char *want)
{
    memset(wk, 0, sizeof *wk);
    wk->w = w;
    if (!want)
        want = "auto";
    int local = 0, n_local = 1, gpus = 0;
    int rc = world_node_place(w->workers, 1, &local, &n_local);
    if (rc)
        return rc;
    wk->ops = kernel_ops_select_local(want, local, &gpus);
    int on_gpu = wk->ops && strcmp(wk->ops->name, "cuda") == 0;
    int mine = !wk->ops ? RB_EXIT_INPUT : 0;
    int v[3] = {mine, on_gpu, !on_gpu}, all[3];
    MPI_Allreduce(v, all, 3, MPI_INT, MPI_MAX, w->workers);
    if (mine)
        return err_prefix(mine, "worker %d on %s", w->worker_index, w->host);
    if (all[0])
        return err_set(all[0], "choosing the backend failed on another worker (see its "
                       "message)");
    if (all[1] && all[2]) /* some workers found a GPU, others did not */
        return on_gpu ? err_set(RB_EXIT_INPUT, "another worker found no GPU (see its message)")
                      : err_set(RB_EXIT_INPUT, "worker %d on %s found no usable GPU while "
                                "other workers did: every worker needs one (slurm/gpu_bind.sh),"
                                " or use --backend cpu everywhere", w->worker_index, w->host);
    if (on_gpu) {
        int with = -1, dup = shared_gpu(w, &with), any = 0;
        MPI_Allreduce(&dup, &any, 1, MPI_INT, MPI_MAX, w->workers);
        if (dup)
            return err_set(RB_EXIT_INPUT, "worker %d on %s has the GPU of worker %d (%d "
                           "workers on this host, %d GPU%s visible to each): NCCL needs one "
                           "GPU per worker; ask Slurm for one per worker (--gres=gpu:%d) and "
                           "start them through slurm/gpu_bind.sh, or use --backend cpu",
                           w->worker_index, w->host, with, n_local, gpus, plural_s(gpus),
                           n_local);
        if (any)
            return err_set(RB_EXIT_INPUT, "two workers share a GPU (see the message of the "
                           "later one)");
        char name[96] = "?";
        int major = 0, minor = 0;
#if RUBRIC_HAVE_CUDA
        cuda_info_device(name, sizeof name, &major, &minor);
#endif
        snprintf(wk->backend_desc, sizeof wk->backend_desc, "cuda, one GPU per worker (%s, "
                 "sm_%d%d), NCCL collectives", name, major, minor);
    } else {
        snprintf(wk->backend_desc, sizeof wk->backend_desc, "%s, MPI collectives",
                 wk->ops->name);
    }
    return 0;
}

int worker_init(worker_ctx *wk, const rubric_config *cfg, const char *dataset_path)
{
    const world *w = wk->w;
    wk->cfg = cfg;

    /* 1. the model on the backend worker_pick_backend chose, its flat LoRA buffer padded for
     *    an even cut into n_workers partitions */
    model_options o;
    model_options_defaults(&o);
    model_options_from_config(&o, cfg);
    o.flat_align = 16 * (int64_t)w->n_workers;
    o.backend = wk->ops->name;
    int rc = model_load(&wk->m, cfg->base_model_dir, &o);
    if (rc)
        return err_prefix(rc, "worker %d: loading the model", w->worker_index);
    model_trainable(wk->m, &wk->tv);
    if (wk->tv.n == 0)
        return err_set(RB_EXIT_INPUT, "nothing to train: adapter is none or no LoRA target");
    table_from_model(wk);

    /* 2. the workers' collectives (on the backend's buffers; host scalars over MPI) and the
     *    ZeRO optimizer state */
    if ((rc = comm_create(&wk->host_comm, w->workers, COMM_MPI, NULL)))
        return rc;
    wk->comm = wk->host_comm;
    if (strcmp(wk->ops->name, "cuda") == 0 &&
        (rc = comm_create(&wk->comm, w->workers, COMM_NCCL, NULL)))
        return err_prefix(rc, "worker %d: NCCL", w->worker_index);
    rc = zero_init(&wk->zero, wk->comm, wk->host_comm, wk->ops, cfg->zero_stage,
                   (size_t)wk->tv.n_padded, wk->tv.params);
    if (rc)
        return err_prefix(rc, "worker %d", w->worker_index);

    /* 3. the prepared dataset and this run's schedule; a token id past the model's vocabulary
     *    (a model with fewer ids than its tokenizer) is found now, not at the first step */
    if ((rc = prep_dataset_open(&wk->ds, dataset_path)))
        return rc;
    uint32_t top = wk->ds->pad_id;
    int64_t n_prefix = wk->ds->n_prefixes ? wk->ds->prefix_offsets[wk->ds->n_prefixes] : 0;
    for (int64_t i = 0; i < n_prefix; i++)
        top = RB_MAX(top, wk->ds->prefix_tokens[i]);
    for (int64_t i = 0; wk->ds->tokens && i < wk->ds->n_tokens; i++)
        top = RB_MAX(top, wk->ds->tokens[i]);
    int vocab = model_get_config(wk->m)->vocab_size;
    if (top >= (uint32_t)vocab)
        return err_set(RB_EXIT_INPUT, "the prepared data holds token id %u, but the model %s has "
                       "a vocabulary of %d ids: its tokenizer has more ids than its embedding "
                       "rows (rubric init-model --vocab below the tokenizer's?)", top,
                       cfg->base_model_dir, vocab);
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
    if (wk->comm != wk->host_comm)
        comm_destroy(wk->comm);
    comm_destroy(wk->host_comm);
    free(wk->stage);
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
    if ((rc = comm_all_reduce(wk->host_comm, counts, counts, 1, COMM_I64)))
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
    float *lora = wk->tv.params + begin, *master = z->master + (begin - z->state_begin),
          *m = z->exp_avg + (begin - z->state_begin),
          *v = z->exp_avg_sq + (begin - z->state_begin);
    if (wk->ops->host_memory) {
        s->lora = lora, s->master = master, s->exp_avg = m, s->exp_avg_sq = v;
        return;
    }
    /* device memory: host copies, [lora | master | exp_avg | exp_avg_sq] of state_len each */
    if (!wk->stage)
        wk->stage = xcalloc(4 * z->state_len, sizeof(float));
    s->lora = wk->stage;
    s->master = wk->stage + z->state_len;
    s->exp_avg = wk->stage + 2 * z->state_len;
    s->exp_avg_sq = wk->stage + 3 * z->state_len;
    if (!for_load) {
        size_t bytes = len * sizeof(float);
        wk->ops->download(s->lora, lora, bytes);
        wk->ops->download(s->master, master, bytes);
        wk->ops->download(s->exp_avg, m, bytes);
        wk->ops->download(s->exp_avg_sq, v, bytes);
    }
}

int worker_after_load(worker_ctx *wk)
{
    zero_state *z = &wk->zero;
    if (!wk->ops->host_memory) { /* the load filled the host copies of the state's range */
        size_t bytes = z->state_len * sizeof(float);
        wk->ops->upload(z->master, wk->stage + z->state_len, bytes);
        wk->ops->upload(z->exp_avg, wk->stage + 2 * z->state_len, bytes);
        wk->ops->upload(z->exp_avg_sq, wk->stage + 3 * z->state_len, bytes);
    }
    return zero_sync_params(z, wk->tv.params);
}

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
