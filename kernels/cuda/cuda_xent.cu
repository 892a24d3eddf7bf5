/*
 * cuda_xent.cu: LM head + cross-entropy at the supervised rows, on the GPU.
 *
 * As on the CPU: rows in blocks whose logits ([rows, vocab]) fit XENT_BLOCK_FLOATS; per block
 * one cuBLAS GEMM for the logits, one kernel (a block per row) for the row's logsumexp, loss
 * and, for the gradient, grad_scale * (softmax - onehot) in place, and a second GEMM for
 * dhidden. Per-row losses are kept in double on the device and summed on the host in row
 * order, so the total does not depend on timing.
 */
#include <math.h>
#include <stdlib.h>

#include "cuda_common.h"
#include "cuda_xent_kernels.cuh"

#define XENT_BLOCK_FLOATS (16 * 1024 * 1024)

double cuda_lm_head_xent(const float *hidden, const float *w, const int32_t *targets, int n,
                         int dim, int vocab, float grad_scale, float *row_loss, float *dhidden)
{
    if (n <= 0)
        return 0.0;
    if (vocab <= 0 || dim <= 0)
        rb_die(CUDA_EXIT_RUNTIME, "LM head: vocab %d and dim %d must be positive", vocab, dim);
    int rb = XENT_BLOCK_FLOATS / vocab;
    rb = rb < 1 ? 1 : rb > n ? n : rb;
    float *logits = (float *)cuda_scratch(CUDA_SCRATCH_LOGITS, sizeof(float) * (size_t)rb * vocab);
    double *losses = (double *)cuda_scratch(CUDA_SCRATCH_LOSSES, sizeof(double) * (size_t)n);

    for (int r0 = 0; r0 < n; r0 += rb) {
        int m = n - r0 < rb ? n - r0 : rb;

        /* logits of this block of rows */
        cuda_gemm(0, 1, m, vocab, dim, 1.0f, hidden + (int64_t)r0 * dim, dim, w, dim, 0.0f,
                  logits, vocab);

        /* per-row loss (and softmax - onehot) */
        xent_row_kernel<<<m, XENT_THREADS>>>(logits, vocab, targets + r0, grad_scale,
                                             dhidden != NULL, losses + r0,
                                             row_loss ? row_loss + r0 : NULL);
        CUDA_CHECK_LAUNCH("xent_row_kernel");

        /* dhidden = dlogits . W */
        if (dhidden)
            cuda_gemm(0, 0, m, dim, vocab, 1.0f, logits, vocab, w, dim, 0.0f,
                      dhidden + (int64_t)r0 * dim, dim);
    }

    /* the total, in row order on the host */
    double *host = (double *)malloc(sizeof(double) * (size_t)n);
    if (!host)
        rb_die(CUDA_EXIT_RUNTIME, "out of memory for %d row losses", n);
    cuda_download(host, losses, sizeof(double) * (size_t)n);
    double total = 0.0;
    for (int i = 0; i < n; i++)
        total += host[i];
    free(host);
    return total;
}
