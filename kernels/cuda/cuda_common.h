/*
 * cuda_common.h: what every file of the CUDA backend shares: the checking macros (a failed
 * CUDA, cuBLAS or NCCL call ends the process with the call's text, file and line), the cuBLAS
 * handle, scratch buffers, launch helpers and the backend's functions (cuda_*.cu), assembled
 * into a kernel_ops table by cuda_table.cu. Internal to kernels/cuda.
 *
 * All work is queued on the legacy default stream, in call order; cuBLAS uses the same stream.
 * Ops that return a host value (sumsq, lm_head_xent) wait for their own result.
 */
#ifndef RUBRIC_CUDA_COMMON_H
#define RUBRIC_CUDA_COMMON_H

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "ops.h"

/* From common/util.h and common/log.h, declared here because those headers are C-only
 * (stdnoreturn.h). rb_die ends the process; code 1 is RB_EXIT_RUNTIME, level 2 LOG_INFO. */
__attribute__((noreturn)) void rb_die(int code, const char *fmt, ...);
void log_msg(int level, const char *fmt, ...);
#define CUDA_EXIT_RUNTIME 1
#define CUDA_LOG_WARN 1
#define CUDA_LOG_INFO 2

/* cuBLAS's status as a name (cublasGetStatusName exists from CUDA 11.4 on). */
const char *cuda_cublas_status_name(int status);

#define CUDA_CHECK(call)                                                                      \
    do {                                                                                      \
        cudaError_t cuda_check_err_ = (call);                                                 \
        if (cuda_check_err_ != cudaSuccess)                                                   \
            rb_die(CUDA_EXIT_RUNTIME, "%s:%d: %s failed: %s (%s)", __FILE__, __LINE__, #call, \
                   cudaGetErrorString(cuda_check_err_), cudaGetErrorName(cuda_check_err_));   \
    } while (0)

/* After a kernel launch: a bad configuration shows up here, a fault at the next sync. */
#define CUDA_CHECK_LAUNCH(what)                                                               \
    do {                                                                                      \
        cudaError_t cuda_check_err_ = cudaGetLastError();                                     \
        if (cuda_check_err_ != cudaSuccess)                                                   \
            rb_die(CUDA_EXIT_RUNTIME, "%s:%d: launching %s failed: %s (%s)", __FILE__,        \
                   __LINE__, what, cudaGetErrorString(cuda_check_err_),                       \
                   cudaGetErrorName(cuda_check_err_));                                        \
    } while (0)

#define CUBLAS_CHECK(call)                                                                    \
    do {                                                                                      \
        cublasStatus_t cublas_check_st_ = (call);                                             \
        if (cublas_check_st_ != CUBLAS_STATUS_SUCCESS)                                        \
            rb_die(CUDA_EXIT_RUNTIME, "%s:%d: %s failed: %s", __FILE__, __LINE__, #call,      \
                   cuda_cublas_status_name((int)cublas_check_st_));                           \
    } while (0)

#define NCCL_CHECK(call)                                                                      \
    do {                                                                                      \
        ncclResult_t nccl_check_res_ = (call);                                                \
        if (nccl_check_res_ != ncclSuccess)                                                   \
            rb_die(CUDA_EXIT_RUNTIME, "%s:%d: %s failed: %s", __FILE__, __LINE__, #call,      \
                   ncclGetErrorString(nccl_check_res_));                                      \
    } while (0)

/* Threads per block of the elementwise kernels, and their grid for n elements (grid-stride
 * loops cover the rest, so the grid is capped). */
#define CUDA_THREADS 256

static inline unsigned cuda_grid_for(int64_t n)
{
    int64_t blocks = (n + CUDA_THREADS - 1) / CUDA_THREADS;
    if (blocks < 1)
        blocks = 1;
    if (blocks > 65536)
        blocks = 65536;
    return (unsigned)blocks;
}

/* The backend's cuBLAS handle (created by kernel_ops_cuda). */
cublasHandle_t cuda_blas(void);
/* the GEMMs' precision now (enum kernel_gemm_precision); attention follows it (bf16: tensor
 * cores) */
int cuda_gemm_precision_now(void);

/* Scratch device memory reused across calls, grown on demand; one buffer per slot. Growing
 * frees the old buffer (cudaFree waits for the queued work that may still use it). */
enum { CUDA_SCRATCH_DROPOUT = 0, CUDA_SCRATCH_LOGITS, CUDA_SCRATCH_LOSSES, CUDA_SCRATCH_SUMSQ,
       CUDA_SCRATCH_ROPE, CUDA_SCRATCH_COPY, CUDA_SCRATCH_N };
void *cuda_scratch(int slot, size_t bytes);

/* ---- the backend's ops (names as in kernels/ops.h) ---- */

/* cuda_table.cu: memory and GEMM */
void *cuda_alloc(size_t bytes);
void cuda_free(void *p);
void cuda_upload(void *dst, const void *src, size_t bytes);
void cuda_download(void *dst, const void *src, size_t bytes);
void cuda_copy(void *dst, const void *src, size_t bytes);
void cuda_memset0(void *p, size_t bytes);
void cuda_sync(void);
void cuda_gemm(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a,
               int lda, const float *b, int ldb, float beta, float *c, int ldc);

/* cuda_basic.cu: elementwise, rows, norms, RoPE, SwiGLU, dropout, NF4, AdamW */
void cuda_axpy(int64_t n, float alpha, const float *x, float *y);
void cuda_scale(int64_t n, float alpha, float *x);
void cuda_add_bias(float *y, const float *bias, int rows, int cols);
double cuda_sumsq(int64_t n, const float *x);
void cuda_embedding(float *out, const float *table, const uint32_t *tokens, int n, int dim);
void cuda_gather_rows(float *out, const float *in, const int32_t *idx, int n, int dim);
void cuda_scatter_add_rows(float *out, const float *in, const int32_t *idx, int n, int dim);
void cuda_append_rows(float *const *dst_rows, const float *src, const int32_t *cu,
                      const int32_t *end, int n_seg, int T, int width);
void cuda_rmsnorm_fwd(float *y, float *rstd, const float *x, const float *w, int rows, int dim,
                      float eps);
void cuda_rmsnorm_bwd(float *dx, const float *dy, const float *x, const float *w,
                      const float *rstd, int rows, int dim);
void cuda_rope_fwd(float *x, const int32_t *pos, int n_tok, int heads, int head_dim,
                   float theta);
void cuda_rope_bwd(float *dx, const int32_t *pos, int n_tok, int heads, int head_dim,
                   float theta);
void cuda_swiglu_fwd(float *h, const float *gate, const float *up, int64_t n);
void cuda_swiglu_bwd(float *dgate, float *dup, const float *dh, const float *gate,
                     const float *up, int64_t n);
void cuda_dropout(float *out, const float *in, int64_t n, float p, uint64_t seed);
void cuda_add(float *y, const float *x, int64_t n);
void cuda_nf4_dequant_rows(float *out, const kernel_nf4_weight *w, int64_t row0,
                           int64_t nrows);
void cuda_adamw(float *p, const float *g, float *m, float *v, int64_t n, const adamw_scalars *s);

/* cuda_attention.cu */
void cuda_attention_fwd(float *out, float *lse, const float *q, const float *k, const float *v,
                        const int32_t *cu_q, const int32_t *cu_k, int n_seg, int max_q,
                        int heads, int kv_heads, int d, float scale);
void cuda_attention_fwd_rows(float *out, const float *q, const float *const *k_rows,
                             const float *const *v_rows, const int32_t *cu_q,
                             const int32_t *k_len, int n_seg, int max_q, int heads,
                             int kv_heads, int d, float scale);
void cuda_attention_bwd(float *dq, float *dk, float *dv, const float *dout, const float *q,
                        const float *k, const float *v, const float *out, const float *lse,
                        const int32_t *cu_q, const int32_t *cu_k, int n_seg, int max_q,
                        int heads, int kv_heads, int d, float scale);

/* cuda_xent.cu */
double cuda_lm_head_xent(const float *hidden, const float *w, const int32_t *targets, int n,
                         int dim, int vocab, float grad_scale, float *row_loss,
                         float *dhidden);

/* cuda_lora.cu */
void cuda_lora_fwd(float *y, int ldy, float *u, const float *x, const float *a, const float *b,
                   int T, int in, int out, int r, float scale, float p, uint64_t seed);
void cuda_lora_bwd(float *dx, float *da, float *db, const float *dy, int lddy, const float *u,
                   const float *x, const float *a, const float *b, int T, int in, int out,
                   int r, float scale, float p, uint64_t seed, float *tmp);

#ifdef __cplusplus
}
#endif

#endif
