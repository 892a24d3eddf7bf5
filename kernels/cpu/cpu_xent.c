/*
 * cpu_xent.c: LM head + cross-entropy at the supervised rows, on the CPU.
 *
 * Rows are taken in blocks small enough that a block's logits ([rows, vocab]) stay within
 * XENT_BLOCK_FLOATS; each block is one sgemm for the logits, a per-row logsumexp, and (for the
 * gradient) the softmax minus the one-hot turned into dhidden by a second sgemm. No logit is
 * recomputed and no [n, vocab] matrix exists for all rows at once.
 */
#include <math.h>
#include <stdlib.h>

#include "cpu_ops.h"
#include "util.h"

#define XENT_BLOCK_FLOATS (16 * 1024 * 1024)

/* Loss of one row of logits; turns the row into grad_scale * (softmax - onehot) when grad.
 * One expf per logit: the row keeps exp(l - max), then is scaled by grad_scale / sum. */
static double xent_row(float *row, int vocab, int target, float grad_scale, int grad)
{
    float mx = -INFINITY, target_logit = row[target];
    for (int j = 0; j < vocab; j++)
        mx = row[j] > mx ? row[j] : mx;
    double sum = 0.0;
    for (int j = 0; j < vocab; j++) {
        float e = expf(row[j] - mx);
        sum += e;
        if (grad)
            row[j] = e;
    }
    double loss = (double)mx + log(sum) - (double)target_logit;
    if (grad) {
        float k = (float)(grad_scale / sum);
        for (int j = 0; j < vocab; j++)
            row[j] *= k;
        row[target] -= grad_scale;
    }
    return loss;
}

double cpu_lm_head_xent(const float *hidden, const float *w, const int32_t *targets, int n,
                        int dim, int vocab, float grad_scale, float *row_loss, float *dhidden)
{
    int rb = (int)RB_MAX(1, RB_MIN((int64_t)n, XENT_BLOCK_FLOATS / vocab));
    float *logits = cpu_scratch(0, (size_t)rb * vocab);
    double *losses = xmalloc(sizeof(double) * (size_t)rb);
    double total = 0.0;

    for (int r0 = 0; r0 < n; r0 += rb) {
        int m = RB_MIN(rb, n - r0);

        /* logits of this block of rows */
        cpu_gemm(0, 1, m, vocab, dim, 1.0f, hidden + (int64_t)r0 * dim, dim, w, dim, 0.0f,
                 logits, vocab);

        /* per-row loss (and softmax - onehot) */
#pragma omp parallel for schedule(static)
        for (int i = 0; i < m; i++)
            losses[i] = xent_row(logits + (int64_t)i * vocab, vocab, targets[r0 + i], grad_scale,
                                 dhidden != NULL);
        for (int i = 0; i < m; i++) {
            total += losses[i];
            if (row_loss)
                row_loss[r0 + i] = (float)losses[i];
        }

        /* dhidden = dlogits . W */
        if (dhidden)
            cpu_gemm(0, 0, m, dim, vocab, 1.0f, logits, vocab, w, dim, 0.0f,
                     dhidden + (int64_t)r0 * dim, dim);
    }
    free(losses);
    return total;
}
