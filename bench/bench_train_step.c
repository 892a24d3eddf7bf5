/*
 * bench_train_step.c: rubric's side of bench_train_step.py. Times one LoRA training step
 * (zero grads, forward + backward of one packed micro-batch, AdamW over the flat buffer) and
 * measures OpenBLAS sgemm in the same process.
 *
 * usage: bench_train_step MODEL_DIR BATCH_JSON STEPS LORA_R [CHECKPOINTING]
 * Prints one JSON object: ms per step (median and best), achieved GFLOP/s (useful FLOPs:
 * causal attention, supervised-row LM head), sgemm GFLOP/s, peak RSS and model bytes.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "util.h"

static int32_t *ints(json_t *root, const char *key, int *n)
{
    json_t *a = json_object_get(root, key);
    *n = (int)json_array_size(a);
    int32_t *v = xmalloc(sizeof(int32_t) * (size_t)(*n + 1));
    for (int i = 0; i < *n; i++)
        v[i] = (int32_t)json_integer_value(json_array_get(a, (size_t)i));
    return v;
}

static void load_batch(const char *path, packed_batch *b)
{
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root)
        rb_die(RB_EXIT_INPUT, "%s:%d: %s", path, je.line, je.text);
    int n, n_cu, np, nt;
    int32_t *tok = ints(root, "tokens", &n), *pos = ints(root, "positions", &np);
    int32_t *tg = ints(root, "targets", &nt), *cu = ints(root, "cu_seqlens", &n_cu);
    packed_batch_init(b, 1, n, n_cu - 1);
    b->n_samples = n_cu - 1;
    for (int i = 0; i < n; i++) {
        b->tokens[i] = (uint32_t)tok[i];
        b->positions[i] = pos[i];
        b->targets[i] = tg[i];
        b->n_supervised += tg[i] >= 0;
    }
    memcpy(b->cu_seqlens, cu, sizeof(int32_t) * (size_t)n_cu);
    free(tok);
    free(pos);
    free(tg);
    free(cu);
    json_decref(root);
}

static double sgemm_gflops(const kernel_ops *ops)
{
    int m = 1024, n = 1536, k = 512, reps = 20;
    float *a = ops->alloc(sizeof(float) * (size_t)m * k);
    float *b = ops->alloc(sizeof(float) * (size_t)k * n);
    float *c = ops->alloc(sizeof(float) * (size_t)m * n);
    ops->gemm(0, 1, m, n, k, 1.0f, a, k, b, k, 0.0f, c, n);
    double t0 = now_seconds();
    for (int i = 0; i < reps; i++)
        ops->gemm(0, 1, m, n, k, 1.0f, a, k, b, k, 0.0f, c, n);
    double dt = now_seconds() - t0;
    ops->free(a);
    ops->free(b);
    ops->free(c);
    return 2.0 * m * n * k * reps / dt / 1e9;
}

/* Peak resident memory of this process image in MB (VmHWM: unlike getrusage's ru_maxrss it
 * does not inherit the peak of the process that forked us). */
static double peak_rss_mb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double kb = 0;
    while (f && fgets(line, sizeof(line), f))
        if (strncmp(line, "VmHWM:", 6) == 0)
            kb = atof(line + 6);
    if (f)
        fclose(f);
    return kb / 1024.0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    if (argc < 5)
        rb_die(RB_EXIT_INPUT, "usage: bench_train_step MODEL_DIR BATCH_JSON STEPS LORA_R [CKPT]");
    int steps = atoi(argv[3]), r = atoi(argv[4]), ckpt = argc > 5 ? atoi(argv[5]) : 0;
    model_options o;
    model_options_defaults(&o);
    o.lora_r = r;
    o.lora_alpha = 2.0 * r;
    o.gradient_checkpointing = ckpt;
    model *m = NULL;
    if (model_load(&m, argv[1], &o))
        rb_die_err(RB_EXIT_INPUT);
    packed_batch b;
    load_batch(argv[2], &b);

    const kernel_ops *ops = model_ops(m);
    model_trainable_view tv;
    model_trainable(m, &tv);
    float *mom = ops->alloc(sizeof(float) * (size_t)tv.n_padded);
    float *var = ops->alloc(sizeof(float) * (size_t)tv.n_padded);
    double *ms = xmalloc(sizeof(double) * (size_t)(steps + 1)), loss = 0;
    int64_t n_tok = 0;

    /* one warm-up step, then the timed ones */
    for (int s = 0; s <= steps; s++) {
        double t0 = now_seconds();
        model_zero_grad(m);
        if (model_forward_backward(m, &b, 1.0f / (float)b.n_supervised, &loss, &n_tok))
            rb_die_err(RB_EXIT_RUNTIME);
        adamw_scalars sc = adamw_scalars_at(1e-4, 0.9, 0.999, 1e-8, 0.0, s + 1);
        ops->adamw(tv.params, tv.grads, mom, var, tv.n_padded, &sc);
        ms[s] = (now_seconds() - t0) * 1e3;
    }
    qsort(ms + 1, (size_t)steps, sizeof(double), cmp_double);
    double med = ms[1 + steps / 2], best = ms[1];
    double flops = model_step_flops(model_get_config(m), &b, r);
    printf("{\"ms_per_step\": %.2f, \"ms_best\": %.2f, \"loss\": %.6f, \"n_tok\": %lld, "
           "\"gflop_per_step\": %.3f, \"achieved_gflops\": %.2f, \"sgemm_gflops\": %.2f, "
           "\"peak_rss_mb\": %.1f, \"model_mb\": %.1f, \"trainable\": %lld}\n",
           med, best, loss / (double)n_tok, (long long)n_tok, flops / 1e9,
           flops / (med * 1e-3) / 1e9, sgemm_gflops(ops), peak_rss_mb(),
           model_weight_bytes(m) / 1048576.0, (long long)tv.n);
    ops->free(mom);
    ops->free(var);
    free(ms);
    packed_batch_free(&b);
    model_free(m);
    return 0;
}
