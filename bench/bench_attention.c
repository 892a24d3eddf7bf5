/*
 * bench_attention.c: rubric's side of bench_attention.py. Times the attention op of a backend
 * (forward, then backward) on packed causal segments of one length, random inputs.
 *
 * usage: bench_attention BACKEND PRECISION N_SEG SEQ HEADS KV_HEADS HEAD_DIM REPS
 *   BACKEND cpu | cuda; PRECISION fp32 | tf32 | bf16 (the CUDA GEMM and attention mode;
 *   the CPU is always fp32). Prints one JSON object: the median ms of the forward and of the
 *   backward over REPS runs after a warm-up, and their TFLOP/s counting causal pairs only
 *   (forward 4 d per pair and head: Q K^T and P V; backward 10 d: S again, dP, dV, dK, dQ).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"
#include "util.h"

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static float *dev_random(const kernel_ops *ops, int64_t n, uint64_t seed)
{
    float *h = xmalloc(sizeof(float) * (size_t)n);
    for (int64_t i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        h[i] = (float)((double)(seed >> 11) / 9007199254740992.0 * 2.0 - 1.0);
    }
    float *d = ops->alloc(sizeof(float) * (size_t)n);
    ops->upload(d, h, sizeof(float) * (size_t)n);
    free(h);
    return d;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(double), cmp_double);
    return v[n / 2];
}

int main(int argc, char **argv)
{
    if (argc != 9)
        rb_die(RB_EXIT_INPUT, "usage: bench_attention BACKEND PRECISION N_SEG SEQ HEADS "
               "KV_HEADS HEAD_DIM REPS");
    const char *backend = argv[1], *precision = argv[2];
    int n_seg = atoi(argv[3]), seq = atoi(argv[4]), heads = atoi(argv[5]);
    int kv_heads = atoi(argv[6]), d = atoi(argv[7]), reps = atoi(argv[8]);
    if (n_seg < 1 || seq < 1 || heads < 1 || kv_heads < 1 || heads % kv_heads || d < 1 ||
        reps < 1)
        rb_die(RB_EXIT_INPUT, "bench_attention: sizes >= 1, KV_HEADS dividing HEADS");
    const kernel_ops *ops = kernel_ops_select(backend);
    if (!ops)
        rb_die_err(RB_EXIT_INPUT);
    int p = strcmp(precision, "bf16") == 0   ? KERNEL_GEMM_BF16
            : strcmp(precision, "tf32") == 0 ? KERNEL_GEMM_TF32
                                             : KERNEL_GEMM_FP32;
    const char *held = kernel_gemm_precision_set(ops, p);

    /* 1. inputs: n_seg segments of seq tokens, keys = queries (training) */
    int64_t T = (int64_t)n_seg * seq, nq = T * heads * d, nk = T * kv_heads * d;
    float *q = dev_random(ops, nq, 1), *k = dev_random(ops, nk, 2), *v = dev_random(ops, nk, 3);
    float *g = dev_random(ops, nq, 4);
    float *out = ops->alloc(sizeof(float) * (size_t)nq);
    float *lse = ops->alloc(sizeof(float) * (size_t)(T * heads));
    float *dq = ops->alloc(sizeof(float) * (size_t)nq);
    float *dk = ops->alloc(sizeof(float) * (size_t)nk);
    float *dv = ops->alloc(sizeof(float) * (size_t)nk);
    int32_t *cu_h = xmalloc(sizeof(int32_t) * (size_t)(n_seg + 1));
    for (int s = 0; s <= n_seg; s++)
        cu_h[s] = s * seq;
    int32_t *cu = ops->alloc(sizeof(int32_t) * (size_t)(n_seg + 1));
    ops->upload(cu, cu_h, sizeof(int32_t) * (size_t)(n_seg + 1));
    float scale = 1.0f / sqrtf((float)d);

    /* 2. a warm-up, then reps timed forwards and backwards */
    double *fwd = xmalloc(sizeof(double) * (size_t)reps), *bwd = xmalloc(sizeof(double) * reps);
    for (int r = -1; r < reps; r++) {
        ops->sync();
        double t0 = now_seconds();
        ops->attention_fwd(out, lse, q, k, v, cu, cu, n_seg, seq, heads, kv_heads, d, scale);
        ops->sync();
        double t1 = now_seconds();
        ops->attention_bwd(dq, dk, dv, g, q, k, v, out, lse, cu, cu, n_seg, seq, heads,
                           kv_heads, d, scale);
        ops->sync();
        double t2 = now_seconds();
        if (r >= 0) {
            fwd[r] = (t1 - t0) * 1e3;
            bwd[r] = (t2 - t1) * 1e3;
        }
    }

    /* 3. the report: FLOPs over the causal pairs only */
    double pairs = (double)n_seg * seq * (seq + 1) / 2.0;
    double f_fwd = 4.0 * d * pairs * heads, f_bwd = 10.0 * d * pairs * heads;
    double mf = median(fwd, reps), mb = median(bwd, reps);
    printf("{\"backend\": \"%s\", \"precision\": \"%s\", \"fwd_ms\": %.4f, \"bwd_ms\": %.4f, "
           "\"fwd_tflops\": %.4f, \"bwd_tflops\": %.4f}\n", ops->name, held, mf, mb,
           f_fwd / (mf * 1e-3) / 1e12, f_bwd / (mb * 1e-3) / 1e12);

    void *bufs[] = {q, k, v, g, out, lse, dq, dk, dv, cu};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        ops->free(bufs[i]);
    free(cu_h);
    free(fwd);
    free(bwd);
    return 0;
}
