/*
 * gpu_train_step.c: times LoRA training steps of a model on a chosen backend, for
 * tests/gpu/check.sh (`rubric train` has no backend option yet).
 *
 * usage: gpu_train_step MODEL_DIR BACKEND STEPS SEQ_LEN N_SEQ [LORA_R [QLORA]]
 * Each step: zero the gradients, forward + backward of one packed micro-batch of N_SEQ random
 * samples of SEQ_LEN tokens (the last 16 of each supervised, as in rubric scoring data), AdamW
 * over the flat LoRA buffer, then a sync. Prints one line of key=value pairs: the median
 * ms per step after one warm-up step, tokens/s, the step's useful FLOPs (frozen base: forward
 * and input-gradient GEMMs, LoRA, causal attention, LM head at supervised rows), TFLOP/s,
 * the loss, and the GPU's peak memory (CUDA backend only).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "util.h"
#if RUBRIC_HAVE_CUDA
#include "cuda/cuda_info.h"
#endif

#define SUPERVISED_PER_SAMPLE 16

static void make_batch(packed_batch *b, int n_seq, int seq_len, int vocab)
{
    packed_batch_init(b, 1, n_seq * seq_len, n_seq);
    b->n_samples = n_seq;
    uint64_t st = 7;
    for (int s = 0; s < n_seq; s++) {
        b->cu_seqlens[s] = s * seq_len;
        for (int i = 0; i < seq_len; i++) {
            int t = s * seq_len + i;
            st = st * 6364136223846793005ULL + 1442695040888963407ULL;
            b->tokens[t] = (uint32_t)((st >> 33) % (uint64_t)vocab);
            b->positions[t] = i;
            b->targets[t] = -1;
        }
        for (int i = seq_len - 1 - SUPERVISED_PER_SAMPLE; i < seq_len - 1; i++)
            if (i >= 0) {
                int t = s * seq_len + i;
                b->targets[t] = (int32_t)b->tokens[t + 1];
                b->n_supervised++;
            }
    }
    b->cu_seqlens[n_seq] = n_seq * seq_len;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    if (argc < 6)
        rb_die(RB_EXIT_INPUT, "usage: gpu_train_step MODEL_DIR BACKEND STEPS SEQ_LEN N_SEQ "
               "[LORA_R [QLORA]]");
    int steps = atoi(argv[3]), seq_len = atoi(argv[4]), n_seq = atoi(argv[5]);
    int r = argc > 6 ? atoi(argv[6]) : 16, qlora = argc > 7 ? atoi(argv[7]) : 0;
    if (steps < 1 || seq_len < 2 || n_seq < 1 || r < 1)
        rb_die(RB_EXIT_INPUT, "gpu_train_step: STEPS, N_SEQ, LORA_R >= 1 and SEQ_LEN >= 2");

    /* 1. the model on the backend asked for */
    model_options o;
    model_options_defaults(&o);
    o.backend = argv[2];
    o.lora_r = r;
    o.lora_alpha = 2.0 * r;
    o.adapter = qlora ? ADAPTER_QLORA : ADAPTER_LORA;
    model *m = NULL;
    if (model_load(&m, argv[1], &o))
        rb_die_err(RB_EXIT_INPUT);
    const kernel_ops *ops = model_ops(m);
    const model_config *cfg = model_get_config(m);

    /* 2. one micro-batch of random samples, reused every step */
    packed_batch b;
    make_batch(&b, n_seq, seq_len, (int)cfg->vocab_size);

    /* 3. a warm-up step, then the timed ones */
    model_trainable_view tv;
    model_trainable(m, &tv);
    float *mom = ops->alloc(sizeof(float) * (size_t)tv.n_padded);
    float *var = ops->alloc(sizeof(float) * (size_t)tv.n_padded);
    double *ms = xmalloc(sizeof(double) * (size_t)(steps + 1)), loss = 0, loss0 = 0;
    int64_t n_tok = 0;
    for (int s = 0; s <= steps; s++) {
        ops->sync();
        double t0 = now_seconds();
        model_zero_grad(m);
        if (model_forward_backward(m, &b, 1.0f / (float)b.n_supervised, &loss, &n_tok))
            rb_die_err(RB_EXIT_RUNTIME);
        adamw_scalars sc = adamw_scalars_at(1e-4, 0.9, 0.999, 1e-8, 0.0, s + 1);
        ops->adamw(tv.params, tv.grads, mom, var, tv.n_padded, &sc);
        ops->sync();
        ms[s] = (now_seconds() - t0) * 1e3;
        if (s == 0)
            loss0 = loss / (double)(n_tok ? n_tok : 1);
        if (s == 0 || s == steps)
            fprintf(stderr, "gpu_train_step: step %d loss %.4f (%.1f ms)\n", s,
                    loss / (double)(n_tok ? n_tok : 1), ms[s]);
    }

    /* 4. the report */
    qsort(ms + 1, (size_t)steps, sizeof(double), cmp_double);
    double med = ms[1 + steps / 2], flops = model_step_flops(cfg, &b, r);
    double peak_mib = 0;
#if RUBRIC_HAVE_CUDA
    if (strcmp(ops->name, "cuda") == 0)
        peak_mib = (double)cuda_info_peak_bytes() / 1048576.0;
#endif
    printf("backend=%s ms_per_step=%.2f tokens_per_s=%.0f gflop_per_step=%.2f tflops=%.3f "
           "loss0=%.5f loss=%.5f peak_mib=%.0f tokens=%d trainable=%lld\n",
           ops->name, med, b.n_tokens / (med * 1e-3), flops / 1e9, flops / (med * 1e-3) / 1e12,
           loss0, loss / (double)(n_tok ? n_tok : 1), peak_mib, b.n_tokens, (long long)tv.n);
    ops->free(mom);
    ops->free(var);
    free(ms);
    packed_batch_free(&b);
    model_free(m);
    return 0;
}
