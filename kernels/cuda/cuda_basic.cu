/*
 * cuda_basic.cu: the CUDA backend's elementwise kernels, row copies, RMSNorm, RoPE, SwiGLU,
 * dropout, NF4 dequantization and AdamW.
 *
 * Elementwise arithmetic that the CPU backend does with plain fp32 operations uses the _rn
 * intrinsics here, so nvcc does not contract a*b+c into one FMA and the result is bitwise the
 * CPU's (axpy, scale, add, add_bias, dropout, NF4, AdamW). Kernels calling expf, sinf, cosf
 * or reducing (RMSNorm, SwiGLU, RoPE, sumsq) agree with the CPU to a few ulp, not bitwise.
 */
#include <math.h>

#include "cuda_common.h"
#include "cuda_basic_kernels.cuh"

/* ---- elementwise ---- */

void cuda_axpy(int64_t n, float alpha, const float *x, float *y)
{
    if (n <= 0)
        return;
    axpy_kernel<<<cuda_grid_for(n), CUDA_THREADS>>>(n, alpha, x, y);
    CUDA_CHECK_LAUNCH("axpy_kernel");
}

void cuda_scale(int64_t n, float alpha, float *x)
{
    if (n <= 0)
        return;
    scale_kernel<<<cuda_grid_for(n), CUDA_THREADS>>>(n, alpha, x);
    CUDA_CHECK_LAUNCH("scale_kernel");
}

void cuda_add(float *y, const float *x, int64_t n)
{
    if (n <= 0)
        return;
    add_kernel<<<cuda_grid_for(n), CUDA_THREADS>>>(y, x, n);
    CUDA_CHECK_LAUNCH("add_kernel");
}

void cuda_add_bias(float *y, const float *bias, int rows, int cols)
{
    int64_t total = (int64_t)rows * cols;
    if (total <= 0)
        return;
    add_bias_kernel<<<cuda_grid_for(total), CUDA_THREADS>>>(y, bias, total, cols);
    CUDA_CHECK_LAUNCH("add_bias_kernel");
}

/* ---- sum of squares: fixed chunks of SUMSQ_CHUNK elements, one block each, a double per
 * chunk; then one block adds the chunks' sums. The split depends only on n. ---- */

#define SUMSQ_THREADS 256

double cuda_sumsq(int64_t n, const float *x)
{
    if (n <= 0)
        return 0.0;
    int64_t n_parts = (n + SUMSQ_CHUNK - 1) / SUMSQ_CHUNK;
    if (n_parts > 2147483647)
        rb_die(CUDA_EXIT_RUNTIME, "cuda_sumsq: %lld elements is too many", (long long)n);
    double *part = (double *)cuda_scratch(CUDA_SCRATCH_SUMSQ, sizeof(double) * (n_parts + 1));
    sumsq_chunks_kernel<<<(unsigned)n_parts, SUMSQ_THREADS>>>(x, n, part);
    CUDA_CHECK_LAUNCH("sumsq_chunks_kernel");
    sumsq_total_kernel<<<1, 1024>>>(part, n_parts, part + n_parts);
    CUDA_CHECK_LAUNCH("sumsq_total_kernel");
    double total = 0.0;
    cuda_download(&total, part + n_parts, sizeof(double));
    return total;
}

/* ---- rows ---- */

void cuda_embedding(float *out, const float *table, const uint32_t *tokens, int n, int dim)
{
    int64_t total = (int64_t)n * dim;
    if (total <= 0)
        return;
    gather_kernel<uint32_t><<<cuda_grid_for(total), CUDA_THREADS>>>(out, table, tokens, n, dim);
    CUDA_CHECK_LAUNCH("gather_kernel (embedding)");
}

void cuda_gather_rows(float *out, const float *in, const int32_t *idx, int n, int dim)
{
    int64_t total = (int64_t)n * dim;
    if (total <= 0)
        return;
    gather_kernel<int32_t><<<cuda_grid_for(total), CUDA_THREADS>>>(out, in, idx, n, dim);
    CUDA_CHECK_LAUNCH("gather_kernel (rows)");
}

void cuda_scatter_add_rows(float *out, const float *in, const int32_t *idx, int n, int dim)
{
    int64_t total = (int64_t)n * dim;
    if (total <= 0)
        return;
    scatter_add_kernel<<<cuda_grid_for(total), CUDA_THREADS>>>(out, in, idx, n, dim);
    CUDA_CHECK_LAUNCH("scatter_add_kernel");
}

void cuda_append_rows(float *const *dst_rows, const float *src, const int32_t *cu,
                      const int32_t *end, int n_seg, int T, int width)
{
    int64_t total = (int64_t)T * width;
    if (total <= 0 || n_seg <= 0)
        return;
    append_rows_kernel<<<cuda_grid_for(total), CUDA_THREADS>>>(dst_rows, src, cu, end, n_seg,
                                                               T, width);
    CUDA_CHECK_LAUNCH("append_rows_kernel");
}

/* ---- RMSNorm: one block per row ---- */

static int row_threads(int dim)
{
    int t = (dim + 31) / 32 * 32;
    return t < 32 ? 32 : t > 256 ? 256 : t;
}

void cuda_rmsnorm_fwd(float *y, float *rstd, const float *x, const float *w, int rows, int dim,
                      float eps)
{
    if (rows <= 0 || dim <= 0)
        return;
    rmsnorm_fwd_kernel<<<rows, row_threads(dim)>>>(y, rstd, x, w, dim, eps);
    CUDA_CHECK_LAUNCH("rmsnorm_fwd_kernel");
}

void cuda_rmsnorm_bwd(float *dx, const float *dy, const float *x, const float *w,
                      const float *rstd, int rows, int dim)
{
    if (rows <= 0 || dim <= 0)
        return;
    rmsnorm_bwd_kernel<<<rows, row_threads(dim)>>>(dx, dy, x, w, rstd, dim);
    CUDA_CHECK_LAUNCH("rmsnorm_bwd_kernel");
}

/* ---- RoPE: the inverse frequencies come from the host's powf (the CPU backend's values);
 * angles, cosines and sines are computed per element on the GPU. ---- */

/* The device copy of inv_freq for (theta, head_dim), uploaded again only when they change. */
static const float *rope_inv_freq(float theta, int head_dim)
{
    static float last_theta = -1.0f;
    static int last_dim = -1;
    int half = head_dim / 2;
    float *dev = (float *)cuda_scratch(CUDA_SCRATCH_ROPE, sizeof(float) * 512);
    if (theta != last_theta || head_dim != last_dim) {
        float host[512];
        for (int i = 0; i < half; i++)
            host[i] = 1.0f / powf(theta, (float)(2 * i) / (float)head_dim);
        cuda_upload(dev, host, sizeof(float) * (size_t)half);
        last_theta = theta;
        last_dim = head_dim;
    }
    return dev;
}

static void rope_apply(float *x, const int32_t *pos, int n_tok, int heads, int head_dim,
                       float theta, float sign)
{
    if (head_dim <= 0 || head_dim % 2 || head_dim > 1024)
        rb_die(CUDA_EXIT_RUNTIME, "RoPE: head_dim %d must be even and at most 1024", head_dim);
    int64_t total = (int64_t)n_tok * heads * (head_dim / 2);
    if (total <= 0)
        return;
    const float *inv_freq = rope_inv_freq(theta, head_dim);
    rope_kernel<<<cuda_grid_for(total), CUDA_THREADS>>>(x, pos, inv_freq, n_tok, heads,
                                                         head_dim, sign);
    CUDA_CHECK_LAUNCH("rope_kernel");
}

void cuda_rope_fwd(float *x, const int32_t *pos, int n_tok, int heads, int head_dim,
                   float theta)
{
    rope_apply(x, pos, n_tok, heads, head_dim, theta, 1.0f);
}

void cuda_rope_bwd(float *dx, const int32_t *pos, int n_tok, int heads, int head_dim,
                   float theta)
{
    rope_apply(dx, pos, n_tok, heads, head_dim, theta, -1.0f);
}

/* ---- SwiGLU ---- */

void cuda_swiglu_fwd(float *h, const float *gate, const float *up, int64_t n)
{
    if (n <= 0)
        return;
    swiglu_fwd_kernel<<<cuda_grid_for(n), CUDA_THREADS>>>(h, gate, up, n);
    CUDA_CHECK_LAUNCH("swiglu_fwd_kernel");
}

void cuda_swiglu_bwd(float *dgate, float *dup, const float *dh, const float *gate,
                     const float *up, int64_t n)
{
    if (n <= 0)
        return;
    swiglu_bwd_kernel<<<cuda_grid_for(n), CUDA_THREADS>>>(dgate, dup, dh, gate, up, n);
    CUDA_CHECK_LAUNCH("swiglu_bwd_kernel");
}

/* ---- dropout: the CPU backend's mask (cuda_hash.h), bit for bit ---- */

void cuda_dropout(float *out, const float *in, int64_t n, float p, uint64_t seed)
{
    if (n <= 0)
        return;
    if (p <= 0.0f) {
        cuda_copy(out, in, sizeof(float) * (size_t)n);
        return;
    }
    float keep_scale = 1.0f / (1.0f - p);
    dropout_kernel<<<cuda_grid_for(n), CUDA_THREADS>>>(out, in, n, p, keep_scale, seed);
    CUDA_CHECK_LAUNCH("dropout_kernel");
}

/* ---- NF4: one code lookup and one (unfused) multiply per element ---- */

void cuda_nf4_dequant_rows(float *out, const kernel_nf4_weight *w, int64_t row0, int64_t nrows)
{
    if (row0 < 0 || nrows < 0 || row0 + nrows > w->rows || w->block <= 0)
        rb_die(CUDA_EXIT_RUNTIME, "NF4 dequantize: rows %lld..%lld of a %lld-row weight (block "
               "%d) are out of range", (long long)row0, (long long)(row0 + nrows),
               (long long)w->rows, w->block);
    int64_t n = nrows * w->cols;
    if (n <= 0)
        return;
    nf4_dequant_kernel<<<cuda_grid_for(n), CUDA_THREADS>>>(out, w->packed, w->absmax,
                                                             row0 * w->cols, n, w->block);
    CUDA_CHECK_LAUNCH("nf4_dequant_kernel");
}

/* ---- AdamW: adamw_math.h's update, bit for bit the CPU's ---- */

void cuda_adamw(float *p, const float *g, float *m, float *v, int64_t n, const adamw_scalars *s)
{
    if (n <= 0)
        return;
    adamw_kernel<<<cuda_grid_for(n), CUDA_THREADS>>>(p, g, m, v, n, *s);
    CUDA_CHECK_LAUNCH("adamw_kernel");
}
