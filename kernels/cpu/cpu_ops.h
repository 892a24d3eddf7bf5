/*
 * cpu_ops.h: the CPU backend's functions (kernels/cpu/cpu_*.c), assembled into a kernel_ops table
 * by cpu_table.c. Internal to kernels/; everyone else goes through kernels/ops.h.
 */
#ifndef RUBRIC_CPU_OPS_H
#define RUBRIC_CPU_OPS_H

#include "ops.h"

/* cpu_basic.c: memory, BLAS wrappers, elementwise, norms, RoPE, SwiGLU, dropout, AdamW, NF4 */
void *cpu_alloc(size_t bytes);
void cpu_free(void *p);
void cpu_upload(void *dst, const void *src, size_t bytes);
void cpu_download(void *dst, const void *src, size_t bytes);
void cpu_copy(void *dst, const void *src, size_t bytes);
void cpu_memset0(void *p, size_t bytes);
void cpu_sync(void);
void cpu_gemm(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a,
              int lda, const float *b, int ldb, float beta, float *c, int ldc);
/* cpu_gemm_nt.c: C = alpha A B^T + beta C streaming B once, no packing (cpu_gemm's choice for a
 * few rows of A against a long B, e.g. the LM head at decode time). */
void cpu_gemm_nt_stream(int m, int n, int k, float alpha, const float *a, int lda,
                        const float *b, int ldb, float beta, float *c, int ldc);
/* C = A B + beta C (alpha 1) with k long, per 32-column slices of C (AVX-512 only: check
 * cpu_gemm_nn_stream_available): cpu_gemm's choice for the LM head's backward when OpenBLAS
 * runs slow kernels. Each element's sum runs over k in order, whatever the thread count. */
int cpu_gemm_nn_stream_available(void);
void cpu_gemm_nn_stream(int m, int n, int k, const float *a, int lda, const float *b, int ldb,
                        float beta, float *c, int ldc);
void cpu_axpy(int64_t n, float alpha, const float *x, float *y);
void cpu_scale(int64_t n, float alpha, float *x);
void cpu_add_bias(float *y, const float *bias, int rows, int cols);
double cpu_sumsq(int64_t n, const float *x);
void cpu_embedding(float *out, const float *table, const uint32_t *tokens, int n, int dim);
void cpu_gather_rows(float *out, const float *in, const int32_t *idx, int n, int dim);
void cpu_scatter_add_rows(float *out, const float *in, const int32_t *idx, int n, int dim);
void cpu_append_rows(float *const *dst_rows, const float *src, const int32_t *cu,
                     const int32_t *end, int n_seg, int T, int width);
void cpu_rmsnorm_fwd(float *y, float *rstd, const float *x, const float *w, int rows, int dim,
                     float eps);
void cpu_rmsnorm_bwd(float *dx, const float *dy, const float *x, const float *w,
                     const float *rstd, int rows, int dim);
void cpu_rope_fwd(float *x, const int32_t *pos, int n_tok, int heads, int head_dim,
                  float theta);
void cpu_rope_bwd(float *dx, const int32_t *pos, int n_tok, int heads, int head_dim,
                  float theta);
void cpu_swiglu_fwd(float *h, const float *gate, const float *up, int64_t n);
void cpu_swiglu_bwd(float *dgate, float *dup, const float *dh, const float *gate,
                    const float *up, int64_t n);
void cpu_dropout(float *out, const float *in, int64_t n, float p, uint64_t seed);
void cpu_add(float *y, const float *x, int64_t n);
void cpu_nf4_dequant_rows(float *out, const kernel_nf4_weight *w, int64_t row0, int64_t nrows);
void cpu_adamw(float *p, const float *g, float *m, float *v, int64_t n, const adamw_scalars *s);

/* cpu_attention.c */
void cpu_attention_fwd(float *out, float *lse, const float *q, const float *k, const float *v,
                       const int32_t *cu_q, const int32_t *cu_k, int n_seg, int max_q,
                       int heads, int kv_heads, int d, float scale);
void cpu_attention_fwd_rows(float *out, const float *q, const float *const *k_rows,
                            const float *const *v_rows, const int32_t *cu_q,
                            const int32_t *k_len, int n_seg, int max_q, int heads, int kv_heads,
                            int d, float scale);
void cpu_attention_bwd(float *dq, float *dk, float *dv, const float *dout, const float *q,
                       const float *k, const float *v, const float *out, const float *lse,
                       const int32_t *cu_q, const int32_t *cu_k, int n_seg, int max_q,
                       int heads, int kv_heads, int d, float scale);

/* cpu_xent.c */
double cpu_lm_head_xent(const float *hidden, const float *w, const int32_t *targets, int n,
                        int dim, int vocab, float grad_scale, float *row_loss, float *dhidden);

/* cpu_lora.c */
void cpu_lora_fwd(float *y, int ldy, float *u, const float *x, const float *a, const float *b,
                  int T, int in, int out, int r, float scale, float p, uint64_t seed);
void cpu_lora_bwd(float *dx, float *da, float *db, const float *dy, int lddy, const float *u,
                  const float *x, const float *a, const float *b, int T, int in, int out, int r,
                  float scale, float p, uint64_t seed, float *tmp);

/* Scratch memory reused across calls (grown on demand; one per slot). */
float *cpu_scratch(int slot, size_t n_floats);

#endif
