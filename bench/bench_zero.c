/*
 * bench_zero.c: the optimizer step of data-parallel training, ZeRO-2 against stage 0, at the
 * size of Qwen3-1.7B's QLoRA adapters (r = 16 on all 7 projections of 28 layers: 17,432,576
 * trainable parameters), with synthetic gradients.
 *
 *   mpirun -np N bench_zero [N_PARAMS] [STEPS]
 *
 * Per stage: milliseconds per optimizer step (collectives + norm + AdamW), the bytes each worker
 * sends per step (comm.h's ring volume) next to ZeRO-2's theoretical volume 2 (N-1)/N x 4 bytes
 * x n (reduce-scatter + all-gather; stage 0's all-reduce is the same 2 (N-1)/N x 4n), and the
 * optimizer-state bytes each worker holds. Printed on rank 0 with the ratios to stage 0 and to
 * the theory.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"
#include "util.h"
#include "zero.h"

/* 28 layers x r (in + out) summed over q, k, v, o, gate, up, down of Qwen3-1.7B, r = 16 */
#define QWEN3_1_7B_LORA_R16 (28ull * 16 * (4096 + 3072 + 3072 + 4096 + 8192 + 8192 + 8192))

typedef struct {
    double ms;
    uint64_t bytes;
    size_t state;
} result;

static result run_stage(comm *c, int stage, size_t n_real, int steps)
{
    int n = comm_size(c);
    size_t np = zero_padded_size(n_real, n, 16);
    float *params = xcalloc(np, sizeof *params), *grads = xcalloc(np, sizeof *grads);
    zero_state z;
    if (zero_init(&z, c, NULL, kernel_ops_cpu(), stage, np, params))
        rb_die_err(RB_EXIT_RUNTIME);
    result r = {0, 0, zero_state_elements(&z) * 3 * sizeof(float)};
    double total = 0;
    for (int s = 0; s <= steps; s++) {
        for (size_t i = 0; i < n_real; i++)
            grads[i] = (float)((i * 2654435761u + (size_t)s) % 1000) * 1e-6f;
        zero_hparams h = {.lr = 1e-4, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8,
                          .max_grad_norm = 1.0, .step = s + 1};
        zero_step_info info;
        comm_barrier(c);
        double t0 = now_seconds();
        if (zero_step(&z, params, grads, &h, &info))
            rb_die_err(RB_EXIT_RUNTIME);
        double dt = now_seconds() - t0;
        if (s > 0) { /* the first step warms up */
            total += dt;
            r.bytes = info.bytes_sent;
        }
    }
    double worst = total;
    MPI_Allreduce(&total, &worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    r.ms = worst / steps * 1e3;
    zero_free(&z);
    free(params);
    free(grads);
    return r;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    size_t n_real = argc > 1 ? (size_t)atoll(argv[1]) : (size_t)QWEN3_1_7B_LORA_R16;
    int steps = argc > 2 ? atoi(argv[2]) : 5;
    comm *c;
    if (comm_create(&c, MPI_COMM_WORLD, COMM_MPI, NULL))
        rb_die_err(RB_EXIT_RUNTIME);
    int n = comm_size(c);
    result s0 = run_stage(c, 0, n_real, steps), s2 = run_stage(c, 2, n_real, steps);
    size_t np = zero_padded_size(n_real, n, 16);
    double theory = 2.0 * (n - 1) / n * 4.0 * (double)np;
    if (comm_rank(c) == 0) {
        printf("bench_zero: %d worker%s, %zu trainable parameters (%.1f MB fp32), %d steps\n", n,
               n == 1 ? "" : "s", n_real, 4.0 * (double)n_real / 1e6, steps);
        printf("%-8s %10s %16s %16s %10s %18s\n", "stage", "ms/step", "bytes sent/step",
               "theory (ZeRO-2)", "ratio", "optimizer state");
        result rs[2] = {s0, s2};
        const char *names[2] = {"0", "2"};
        for (int i = 0; i < 2; i++)
            printf("%-8s %10.1f %16llu %16.0f %10.4f %15.1f MB\n", names[i], rs[i].ms,
                   (unsigned long long)rs[i].bytes, theory,
                   theory > 0 ? (double)rs[i].bytes / theory : 0.0, rs[i].state / 1e6);
        printf("stage 2 / stage 0: time %.2fx, optimizer state %.2fx\n", s2.ms / s0.ms,
               (double)s2.state / (double)s0.state);
    }
    comm_destroy(c);
    MPI_Finalize();
    return 0;
}
