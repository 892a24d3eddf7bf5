/*
 * cuda_attention.cu: causal grouped-query attention over packed segments, flash style, fp32.
 *
 * Forward: a block owns ATT_BQ query rows of one head in one segment; it walks the keys those
 * rows may see in tiles of ATT_BK (K and V tiles in shared memory), keeping each row's running
 * max, sum and output in registers (online softmax). A warp owns ATT_RPW rows; within a tile,
 * lane j scores key j, the warp reduces the tile's max and sum with shuffles, then every lane
 * adds p_j * V[j] to the output columns it holds (lane + 32 e). The [Tq, Tk] score matrix never
 * exists; only the logsumexp per row and head is saved.
 *
 * Backward (two kernels, no atomics, every output element written by one warp in a fixed
 * order, so the result is the same on every run):
 *   dQ:     blocks over (query tile, head) like the forward: P recomputed from the logsumexp,
 *           dS = P * (dO.V^T - rowsum(dO * O)) * scale, dQ = dS K.
 *   dK, dV: blocks over (key tile, kv head); they loop over the heads of the group and the
 *           query tiles that can see the keys: dV += P^T dO, dK += dS^T Q.
 * rowsum(dO * O) is recomputed where needed (a d-long dot per row) instead of stored.
 *
 * With bf16 GEMMs (the model's `bf16`, or RUBRIC_CUDA_GEMM=bf16) and head_dim 32, 64 or 128
 * the forward and both backward kernels run on tensor cores instead
 * (cuda_attention_tc_kernels.cuh: bf16 operands, fp32 accumulation, tiles of 64 x 64).
 *
 * Limits: head_dim at most ATT_MAXD (256); max_q must be at least every segment's query count
 * (and, in the backward, key count): the grid is sized from it.
 */
#include <math.h>

#include "cuda_common.h"
#include "cuda_attention_kernels.cuh"
#include "cuda_attention_tc_kernels.cuh"

/* ---- launches ---- */

/* Shared memory past 48 KiB must be asked for, per kernel. */
static void att_allow_smem(const void *kernel, size_t bytes, size_t *granted)
{
    if (bytes <= 48 * 1024 || bytes <= *granted)
        return;
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    (int)bytes));
    *granted = bytes;
}

static void att_check_shape(const char *what, int n_seg, int max_q, int heads, int kv_heads,
                            int d)
{
    if (d <= 0 || d > ATT_MAXD || heads <= 0 || kv_heads <= 0 || heads % kv_heads ||
        n_seg < 0 || max_q < 0)
        rb_die(CUDA_EXIT_RUNTIME, "%s: unsupported shape (head_dim %d, at most %d; heads %d, "
               "kv_heads %d, a divisor; %d segments; max_q %d)", what, d, ATT_MAXD, heads,
               kv_heads, n_seg, max_q);
    if ((int64_t)n_seg * ((max_q + ATT_BQ - 1) / ATT_BQ) > 2147483647 || heads > 65535)
        rb_die(CUDA_EXIT_RUNTIME, "%s: %d segments of up to %d queries is too large a grid",
               what, n_seg, max_q);
}

/* the tensor-core forward for one head_dim */
template <int D>
static void att_fwd_tc_launch(float *out, float *lse, const float *q, const att_keys &ak,
                              const int32_t *cu_q, int n_seg, int max_q, int heads,
                              int kv_heads, float scale)
{
    int tiles = (max_q + ATT_TC_BQ - 1) / ATT_TC_BQ;
    if (n_seg == 0 || tiles == 0)
        return;
    static size_t granted;
    size_t smem = att_tc_layout<D>::bytes;
    att_allow_smem((const void *)att_fwd_tc_kernel<D>, smem, &granted);
    dim3 grid((unsigned)(n_seg * tiles), (unsigned)heads);
    att_fwd_tc_kernel<D><<<grid, ATT_TC_THREADS, smem>>>(out, lse, q, ak, cu_q, tiles, heads,
                                                         kv_heads, scale);
    CUDA_CHECK_LAUNCH("att_fwd_tc_kernel");
}

/* the tensor cores serve bf16 GEMMs and these head sizes */
static int att_tc_wanted(int d)
{
    return cuda_gemm_precision_now() == KERNEL_GEMM_BF16 && (d == 32 || d == 64 || d == 128);
}

/* the tensor-core backward for one head_dim (cu_q == cu_k) */
template <int D>
static void att_bwd_tc_launch(float *dq, float *dk, float *dv, const float *dout,
                              const float *q, const float *k, const float *v, const float *out,
                              const float *lse, const int32_t *cu_q, const int32_t *cu_k,
                              int n_seg, int max_q, int heads, int kv_heads, float scale)
{
    int tiles = (max_q + 63) / 64;
    if (n_seg == 0 || tiles == 0)
        return;
    static size_t granted_dq, granted_dkv;
    size_t smem = att_tc_bwd_layout<D>::bytes;
    att_allow_smem((const void *)att_bwd_dq_tc_kernel<D>, smem, &granted_dq);
    att_allow_smem((const void *)att_bwd_dkv_tc_kernel<D>, smem, &granted_dkv);
    dim3 grid_dq((unsigned)(n_seg * tiles), (unsigned)heads);
    att_bwd_dq_tc_kernel<D><<<grid_dq, ATT_TC_THREADS, smem>>>(dq, dout, q, k, v, out, lse,
                                                               cu_q, cu_k, tiles, heads,
                                                               kv_heads, scale);
    CUDA_CHECK_LAUNCH("att_bwd_dq_tc_kernel");
    dim3 grid_dkv((unsigned)(n_seg * tiles), (unsigned)kv_heads);
    att_bwd_dkv_tc_kernel<D><<<grid_dkv, ATT_TC_THREADS, smem>>>(dk, dv, dout, q, k, v, out,
                                                                 lse, cu_q, cu_k, tiles, heads,
                                                                 kv_heads, scale);
    CUDA_CHECK_LAUNCH("att_bwd_dkv_tc_kernel");
}

/* both forwards: tensor cores or fp32, packed keys or one cache per segment */
static void att_fwd_launch(float *out, float *lse, const float *q, const att_keys &ak,
                           const int32_t *cu_q, int n_seg, int max_q, int heads, int kv_heads,
                           int d, float scale)
{
    att_check_shape("attention forward", n_seg, max_q, heads, kv_heads, d);
    if (att_tc_wanted(d)) {
        if (d == 32)
            att_fwd_tc_launch<32>(out, lse, q, ak, cu_q, n_seg, max_q, heads, kv_heads, scale);
        else if (d == 64)
            att_fwd_tc_launch<64>(out, lse, q, ak, cu_q, n_seg, max_q, heads, kv_heads, scale);
        else
            att_fwd_tc_launch<128>(out, lse, q, ak, cu_q, n_seg, max_q, heads, kv_heads, scale);
        return;
    }
    int tiles = (max_q + ATT_BQ - 1) / ATT_BQ;
    if (n_seg == 0 || tiles == 0)
        return;
    static size_t granted;
    size_t smem = sizeof(float) * att_fwd_smem_floats(d);
    att_allow_smem((const void *)att_fwd_kernel, smem, &granted);
    dim3 grid((unsigned)(n_seg * tiles), (unsigned)heads);
    att_fwd_kernel<<<grid, ATT_THREADS, smem>>>(out, lse, q, ak, cu_q, tiles, heads, kv_heads,
                                                 d, scale);
    CUDA_CHECK_LAUNCH("att_fwd_kernel");
}

void cuda_attention_fwd(float *out, float *lse, const float *q, const float *k, const float *v,
                        const int32_t *cu_q, const int32_t *cu_k, int n_seg, int max_q,
                        int heads, int kv_heads, int d, float scale)
{
    att_keys ak = {k, v, cu_k, NULL, NULL, NULL};
    att_fwd_launch(out, lse, q, ak, cu_q, n_seg, max_q, heads, kv_heads, d, scale);
}

void cuda_attention_fwd_rows(float *out, const float *q, const float *const *k_rows,
                             const float *const *v_rows, const int32_t *cu_q,
                             const int32_t *k_len, int n_seg, int max_q, int heads,
                             int kv_heads, int d, float scale)
{
    att_keys ak = {NULL, NULL, NULL, k_rows, v_rows, k_len};
    att_fwd_launch(out, NULL, q, ak, cu_q, n_seg, max_q, heads, kv_heads, d, scale);
}

void cuda_attention_bwd(float *dq, float *dk, float *dv, const float *dout, const float *q,
                        const float *k, const float *v, const float *out, const float *lse,
                        const int32_t *cu_q, const int32_t *cu_k, int n_seg, int max_q,
                        int heads, int kv_heads, int d, float scale)
{
    att_check_shape("attention backward", n_seg, max_q, heads, kv_heads, d);
    if (att_tc_wanted(d)) {
        if (d == 32)
            att_bwd_tc_launch<32>(dq, dk, dv, dout, q, k, v, out, lse, cu_q, cu_k, n_seg,
                                  max_q, heads, kv_heads, scale);
        else if (d == 64)
            att_bwd_tc_launch<64>(dq, dk, dv, dout, q, k, v, out, lse, cu_q, cu_k, n_seg,
                                  max_q, heads, kv_heads, scale);
        else
            att_bwd_tc_launch<128>(dq, dk, dv, dout, q, k, v, out, lse, cu_q, cu_k, n_seg,
                                   max_q, heads, kv_heads, scale);
        return;
    }
    int tiles = (max_q + ATT_BQ - 1) / ATT_BQ;
    if (n_seg == 0 || tiles == 0)
        return;

    /* 1. dQ, over (query tile, head) */
    static size_t granted_dq, granted_dkv;
    size_t smem_dq = sizeof(float) * att_dq_smem_floats(d);
    att_allow_smem((const void *)att_bwd_dq_kernel, smem_dq, &granted_dq);
    dim3 grid_dq((unsigned)(n_seg * tiles), (unsigned)heads);
    att_bwd_dq_kernel<<<grid_dq, ATT_THREADS, smem_dq>>>(dq, dout, q, k, v, out, lse, cu_q, cu_k,
                                                         tiles, heads, kv_heads, d, scale);
    CUDA_CHECK_LAUNCH("att_bwd_dq_kernel");

    /* 2. dK and dV, over (key tile, kv head); keys per segment = queries (cu_q == cu_k) */
    size_t smem_dkv = sizeof(float) * att_dkv_smem_floats(d);
    att_allow_smem((const void *)att_bwd_dkv_kernel, smem_dkv, &granted_dkv);
    dim3 grid_dkv((unsigned)(n_seg * tiles), (unsigned)kv_heads);
    att_bwd_dkv_kernel<<<grid_dkv, ATT_THREADS, smem_dkv>>>(dk, dv, dout, q, k, v, out, lse,
                                                            cu_q, cu_k, tiles, heads, kv_heads,
                                                            d, scale);
    CUDA_CHECK_LAUNCH("att_bwd_dkv_kernel");
}
