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
#include "cpu_simd.h"
#include "util.h"

#ifndef XENT_BLOCK_FLOATS
#define XENT_BLOCK_FLOATS (16 * 1024 * 1024)
#endif

/* Loss of one row of logits; turns the row into grad_scale * (softmax - onehot) when grad.
 * One expf per logit: the row keeps exp(l - max), then is scaled by grad_scale / sum. */
static double xent_row_generic(float *row, int vocab, int target, float grad_scale, int grad)
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

#if CPU_X86
/* xent_row_generic with 16 lanes: the max, then exp and the sum (in double, lanes added in a
 * fixed order), then the scaling. Deterministic; the tail goes through masked loads. */
__attribute__((target("avx512f,fma"))) static double
xent_row_avx512(float *row, int vocab, int target, float grad_scale, int grad)
{
    float target_logit = row[target];
    __m512 vmx = _mm512_set1_ps(-INFINITY);
    int j = 0;
    for (; j + 16 <= vocab; j += 16)
        vmx = _mm512_max_ps(vmx, _mm512_loadu_ps(row + j));
    __mmask16 tail = (__mmask16)((1u << (vocab - j)) - 1u);
    vmx = _mm512_mask_max_ps(vmx, tail, vmx, _mm512_maskz_loadu_ps(tail, row + j));
    float mx = _mm512_reduce_max_ps(vmx);

    __m512 vm = _mm512_set1_ps(mx);
    __m512d s_lo = _mm512_setzero_pd(), s_hi = _mm512_setzero_pd();
    for (j = 0; j < vocab; j += 16) {
        __mmask16 k = vocab - j >= 16 ? (__mmask16)0xffff : tail;
        __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, row + j), vm));
        e = _mm512_maskz_mov_ps(k, e);
        s_lo = _mm512_add_pd(s_lo, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        s_hi = _mm512_add_pd(s_hi, _mm512_cvtps_pd(
            _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
        if (grad)
            _mm512_mask_storeu_ps(row + j, k, e);
    }
    double lanes[16];
    _mm512_storeu_pd(lanes, s_lo);
    _mm512_storeu_pd(lanes + 8, s_hi);
    double sum = 0.0;
    for (int q = 0; q < 16; q++)
        sum += lanes[q];

    double loss = (double)mx + log(sum) - (double)target_logit;
    if (grad) {
        __m512 vk = _mm512_set1_ps((float)(grad_scale / sum));
        for (j = 0; j < vocab; j += 16) {
            __mmask16 k = vocab - j >= 16 ? (__mmask16)0xffff : tail;
            _mm512_mask_storeu_ps(row + j, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, row + j), vk));
        }
        row[target] -= grad_scale;
    }
    return loss;
}
#endif

typedef double (*xent_row_fn)(float *row, int vocab, int target, float grad_scale, int grad);

static xent_row_fn xent_row_pick(void)
{
#if CPU_X86
    if (cpu_avx512())
        return xent_row_avx512;
#endif
    return xent_row_generic;
}

double cpu_lm_head_xent(const float *hidden, const float *w, const int32_t *targets, int n,
                        int dim, int vocab, float grad_scale, float *row_loss, float *dhidden)
{
    int rb = (int)RB_MAX(1, RB_MIN((int64_t)n, XENT_BLOCK_FLOATS / vocab));
    float *logits = cpu_scratch(0, (size_t)rb * vocab);
    double *losses = xmalloc(sizeof(double) * (size_t)rb);
    double total = 0.0;
    xent_row_fn xent_row = xent_row_pick();

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
