/*
 * zero_check.c: ZeRO against one worker with gradient accumulation, on a toy quadratic.
 *
 * Run under mpirun with N ranks (N = 1, 2, 3 ...): `zero_check STAGE [NAN_STEP]`.
 *
 * The objective over a flat buffer theta of N_REAL elements (padded for the N workers): each
 * step has M_MICRO micro-batches; micro-batch k of step s has a target vector t_{s,k} and a
 * "token count" c_{s,k} (1..5), and its loss sum is c * sum_i (theta_i - t_i)^2 / N_REAL. The
 * step's loss is the sum over its micro-batches divided by N_total = sum of their c: exactly the
 * loss convention of training. Worker p takes micro-batches p, p+N, p+2N ...; gradients are
 * scaled by 1/N_total before the reduction, as the model's backward does.
 *
 * The reference, computed on every rank without any communication, is one worker that
 * accumulates all M_MICRO micro-batches in order and applies the same AdamW (adamw.h).
 * Checks, over STEPS steps with a warmup + cosine learning rate and clipping active in the
 * early steps:
 *   - loss of every step: |a - b| <= TOL_LOSS * |b|; learning rate and skips: equal
 *   - final parameters: max_i |a_i - b_i| <= TOL_PARAM * max_i |b_i| (float summation order
 *     differs between N workers and one accumulating worker, and AdamW's m / sqrt(v) magnifies
 *     it on elements with tiny gradients, so the bound is on the buffer's scale), and bitwise
 *     equal for N = 1
 *   - each worker's optimizer state holds n_padded / N elements (stages 1, 2) or n_padded (0)
 *   - with NAN_STEP: that step's gradient is NaN on the last worker, the step is skipped on
 *     every worker (reported), and the parameters are those of the reference, which skips it too
 * Prints one line per step ("step S loss L lr R norm G bytes B") and "PASS" or "FAIL: why"
 * on rank 0; exit code 0 only on PASS.
 */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adamw.h"
#include "comm.h"
#include "util.h"
#include "zero.h"

#define N_REAL 1000
#define M_MICRO 6
#define STEPS 20
#define TOL_LOSS 1e-6
#define TOL_PARAM 1e-6

static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static float target_of(int step, int k, int i)
{
    uint64_t h = mix64(((uint64_t)step << 40) ^ ((uint64_t)k << 20) ^ (uint64_t)i);
    return (float)((double)(h >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static int64_t count_of(int step, int k) { return 1 + (int64_t)(mix64(step * 131 + k) % 5); }

static int64_t step_total(int step)
{
    int64_t n = 0;
    for (int k = 0; k < M_MICRO; k++)
        n += count_of(step, k);
    return n;
}

/* loss sum of micro-batch k and grads += scale * d(loss sum)/d(theta) */
static double micro_fwd_bwd(const float *theta, float *grads, int step, int k, float scale)
{
    double loss = 0;
    float c = (float)count_of(step, k);
    for (int i = 0; i < N_REAL; i++) {
        float d = theta[i] - target_of(step, k, i);
        loss += (double)c * d * d / N_REAL;
        grads[i] += scale * (2.0f * c * d / N_REAL);
    }
    return loss;
}

static double lr_of(int step)
{
    /* 3 warmup steps, then cosine to zero at STEPS */
    const double base = 0.05;
    if (step < 3)
        return base * step / 3.0;
    double p = (double)(step - 3) / (STEPS - 3);
    return base * 0.5 * (1.0 + cos(M_PI * p));
}

static zero_hparams hparams_of(int step)
{
    zero_hparams h = {.lr = lr_of(step), .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8,
                      .weight_decay = 0.01, .max_grad_norm = 0.5, .step = step + 1};
    return h;
}

static void init_theta(float *theta, size_t n_padded)
{
    memset(theta, 0, n_padded * sizeof *theta);
    for (int i = 0; i < N_REAL; i++)
        theta[i] = 0.3f * target_of(9999, 0, i);
}

typedef struct {
    double loss[STEPS], lr[STEPS];
    int skipped[STEPS];
} trajectory;

/* One worker, all micro-batches accumulated, no communication. */
static void reference_run(float *theta, size_t n, int nan_step, trajectory *tr)
{
    float *grads = xcalloc(n, sizeof *grads), *m = xcalloc(n, sizeof *m);
    float *v = xcalloc(n, sizeof *v);
    for (int s = 0; s < STEPS; s++) {
        float scale = 1.0f / (float)step_total(s);
        double loss = 0;
        for (int k = 0; k < M_MICRO; k++)
            loss += micro_fwd_bwd(theta, grads, s, k, scale);
        if (s == nan_step)
            grads[0] = NAN;
        zero_hparams h = hparams_of(s);
        tr->loss[s] = loss / (double)step_total(s);
        tr->lr[s] = h.lr;
        double norm;
        float coef;
        tr->skipped[s] = adamw_clip_coef(adamw_grad_sq_norm(grads, (int64_t)n),
                                         h.max_grad_norm, &norm, &coef) != 0;
        if (!tr->skipped[s]) {
            adamw_grad_scale(grads, (int64_t)n, coef);
            adamw_hparams ah = {h.beta1, h.beta2, h.eps, h.weight_decay};
            adamw_step(theta, grads, m, v, (int64_t)n, h.step, h.lr, &ah);
        }
        memset(grads, 0, n * sizeof *grads);
    }
    free(grads);
    free(m);
    free(v);
}


static int fail(int rank, const char *fmt, double a, double b, int where)
{
    if (rank == 0) {
        printf("FAIL: ");
        printf(fmt, where, a, b);
        printf("\n");
    }
    return 1;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int stage = argc > 1 ? atoi(argv[1]) : 2;
    int nan_step = argc > 2 ? atoi(argv[2]) : -1;
    comm *c;
    if (comm_create(&c, MPI_COMM_WORLD, COMM_MPI, NULL))
        rb_die_err(RB_EXIT_RUNTIME);
    int rank = comm_rank(c), n_workers = comm_size(c);
    size_t n = zero_padded_size(N_REAL, n_workers, 4);

    /* distributed run */
    float *theta = xmalloc(n * sizeof *theta), *grads = xcalloc(n, sizeof *grads);
    init_theta(theta, n);
    zero_state z;
    if (zero_init(&z, c, NULL, kernel_ops_cpu(), stage, n, theta))
        rb_die_err(RB_EXIT_RUNTIME);
    size_t want_state = stage == 0 ? n : n / (size_t)n_workers;
    int bad = zero_state_elements(&z) != want_state;
    trajectory tr = {0};
    for (int s = 0; s < STEPS && !bad; s++) {
        /* the coordinator's N_total for the step, then this worker's micro-batches */
        float scale = 1.0f / (float)step_total(s);
        double local[2] = {0, 0};
        for (int k = rank; k < M_MICRO; k += n_workers)
            local[0] += micro_fwd_bwd(theta, grads, s, k, scale);
        if (s == nan_step && rank == n_workers - 1)
            grads[0] = NAN;
        if (comm_all_reduce(c, local, local, 1, COMM_F64))
            rb_die_err(RB_EXIT_RUNTIME);
        zero_hparams h = hparams_of(s);
        zero_step_info info;
        if (zero_step(&z, theta, grads, &h, &info))
            rb_die_err(RB_EXIT_RUNTIME);
        tr.loss[s] = local[0] / (double)step_total(s);
        tr.lr[s] = h.lr;
        tr.skipped[s] = info.skipped;
        if (rank == 0)
            printf("step %d loss %.9g lr %.9g norm %.9g skipped %d bytes %llu theory %llu\n", s,
                   tr.loss[s], tr.lr[s], info.grad_norm, info.skipped,
                   (unsigned long long)info.bytes_sent,
                   (unsigned long long)(2ull * n * 4 * (n_workers - 1) / n_workers));
    }

    /* the reference and the checks */
    float *ref = xmalloc(n * sizeof *ref);
    init_theta(ref, n);
    trajectory rt = {0};
    reference_run(ref, n, nan_step, &rt);
    if (bad)
        bad = fail(rank, "optimizer state: %d workers hold %g elements, want %g", 
                   (double)zero_state_elements(&z), (double)want_state, n_workers);
    for (int s = 0; s < STEPS && !bad; s++) {
        if (fabs(tr.loss[s] - rt.loss[s]) > TOL_LOSS * fabs(rt.loss[s]))
            bad = fail(rank, "step %d: loss %.9g, reference %.9g", tr.loss[s], rt.loss[s], s);
        else if (tr.lr[s] != rt.lr[s] || tr.skipped[s] != rt.skipped[s])
            bad = fail(rank, "step %d: lr or skip differs (%g vs %g)", tr.lr[s], rt.lr[s], s);
    }
    double max_diff = 0, max_ref = 0;
    size_t worst = 0;
    for (size_t i = 0; i < n; i++) {
        max_ref = fmax(max_ref, fabs(ref[i]));
        if (fabs(theta[i] - ref[i]) > max_diff)
            max_diff = fabs(theta[i] - ref[i]), worst = i;
        if (n_workers == 1 && theta[i] != ref[i] && !bad)
            bad = fail(rank, "parameter %d: %.9g, reference %.9g (1 worker: must be bitwise)",
                       theta[i], ref[i], (int)i);
    }
    double max_rel = max_diff / max_ref;
    if (!bad && max_rel > TOL_PARAM)
        bad = fail(rank, "parameter %d: %.9g, reference %.9g", theta[worst], ref[worst],
                   (int)worst);
    if (nan_step >= 0 && !bad && !tr.skipped[nan_step])
        bad = fail(rank, "step %d with a NaN gradient was not skipped (%g %g)", 0, 0, nan_step);

    /* every rank must agree */
    int any_bad = bad;
    MPI_Allreduce(&bad, &any_bad, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (rank == 0)
        printf("%s: stage %d, %d workers, %zu elements, optimizer state %zu per worker, "
               "max parameter difference / max |parameter| %.3g (tolerance %g)\n",
               any_bad ? "FAILED" : "PASS", stage, n_workers, n, zero_state_elements(&z),
               max_rel, TOL_PARAM);
    zero_free(&z);
    comm_destroy(c);
    free(theta);
    free(grads);
    free(ref);
    MPI_Finalize();
    return any_bad ? 1 : 0;
}
