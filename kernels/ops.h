/*
 * ops.h: the kernel operation table. The model calls every computation through one of these
 * tables and never knows which backend runs it.
 *
 * Backends: kernel_ops_cpu() (C, OpenBLAS, OpenMP; always built) and kernel_ops_cuda()
 * (cuBLAS and CUDA kernels; built only when RUBRIC_HAVE_CUDA). kernel_ops_select() picks one
 * by name.
 *
 * Memory: every buffer an op reads or writes lives in the backend's memory, allocated with
 * ops->alloc (zeroed) and moved with upload/download. Pointers are plain `float *`, `int32_t *`
 * or `void *`; on the CPU backend they are host memory. Host values (scalars, returned sums)
 * are always passed by value or returned. Integer index arrays (tokens, positions, targets,
 * cu_seqlens) also live in backend memory.
 *
 * Precision: all buffers are fp32 in this version. A later CUDA backend may keep bf16
 * activations internally, but the table's types stay fp32.
 *
 * Layouts are row-major. "Rows" are tokens: a [T, C] activation has T tokens of C features.
 * Every op that writes its output overwrites it unless its comment says "accumulates" (+=).
 * Ops are deterministic: the same inputs on the same backend and thread count give bitwise the
 * same outputs (gradient checkpointing relies on it).
 */
#ifndef RUBRIC_KERNEL_OPS_H
#define RUBRIC_KERNEL_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "adamw_math.h"
#include "rubric_build.h"

/* NF4 weight (QLoRA) as the backend sees it: bitsandbytes layout, block size `block`.
 * Element i (row-major [rows, cols]) is code (packed[i/2] >> 4) for even i, (packed[i/2] & 15)
 * for odd i, times absmax[i / block]. The double-quantized block scales are expanded to fp32
 * absmax once at load time (a 1/16-byte-per-weight cost) so dequantization is one lookup and
 * one multiply; worker/nf4.h holds the quantizer that produces these values. */
typedef struct {
    const uint8_t *packed;  /* [ceil(rows*cols/2)] two 4-bit codes per byte, high nibble first */
    const float *absmax;    /* [ceil(rows*cols/block)] per-block scale */
    int64_t rows, cols;
    int block;              /* 64 */
} kernel_nf4_weight;

typedef struct kernel_ops {
    const char *name; /* "cpu" or "cuda" */

    /* ---- memory ---- */
    void *(*alloc)(size_t bytes);                       /* zeroed; never NULL (dies) */
    void (*free)(void *p);                              /* NULL is fine */
    void (*upload)(void *dst, const void *host_src, size_t bytes);
    void (*download)(void *host_dst, const void *src, size_t bytes);
    void (*copy)(void *dst, const void *src, size_t bytes); /* backend to backend */
    void (*memset0)(void *p, size_t bytes);
    void (*sync)(void);                                 /* wait for queued work */

    /* ---- dense linear algebra ----
     * C[m,n] = alpha * op(A)[m,k] . op(B)[k,n] + beta * C, row-major, op(X) = X^T when trans_x.
     * lda/ldb/ldc are row strides in elements of the stored (untransposed) matrices. */
    void (*gemm)(int trans_a, int trans_b, int m, int n, int k, float alpha,
                 const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc);
    /* y[i] += alpha * x[i] */
    void (*axpy)(int64_t n, float alpha, const float *x, float *y);
    /* x[i] *= alpha */
    void (*scale)(int64_t n, float alpha, float *x);
    /* y[r, c] += bias[c] for r < rows (q/k/v biases of qwen2 / llama attention_bias) */
    void (*add_bias)(float *y, const float *bias, int rows, int cols);
    /* sum of x[i]^2 in double, returned to the host (gradient-norm clipping) */
    double (*sumsq)(int64_t n, const float *x);

    /* ---- embedding ----
     * out[t, :] = table[tokens[t], :] for t < n; table [vocab, dim]. */
    void (*embedding)(float *out, const float *table, const uint32_t *tokens, int n, int dim);
    /* out[i, :] = in[idx[i], :] for i < n (rows of width dim) */
    void (*gather_rows)(float *out, const float *in, const int32_t *idx, int n, int dim);
    /* out[idx[i], :] += in[i, :] for i < n; idx distinct */
    void (*scatter_add_rows)(float *out, const float *in, const int32_t *idx, int n, int dim);
    /* Rows of src [T, width] into per-segment buffers: rows cu[s] .. cu[s+1] become rows
     * end[s] - (cu[s+1] - cu[s]) .. end[s] of dst_rows[s] (scoring: each row's new keys or
     * values after its cached ones, with attention_fwd_rows' arrays; T = cu[n_seg]). dst_rows
     * (an array of backend pointers), cu and end live in backend memory. */
    void (*append_rows)(float *const *dst_rows, const float *src, const int32_t *cu,
                        const int32_t *end, int n_seg, int T, int width);

    /* ---- RMSNorm over the last dim: y = x * rstd * w, rstd = 1/sqrt(mean(x^2) + eps) ----
     * Also the per-head q/k norm: rows = T * heads, dim = head_dim. rstd [rows] is saved for
     * the backward. x and y may alias (in place). */
    void (*rmsnorm_fwd)(float *y, float *rstd, const float *x, const float *w, int rows,
                        int dim, float eps);
    /* dx = d/dx of the above given dy (w frozen: no weight gradient). Overwrites dx, which may
     * alias dy. */
    void (*rmsnorm_bwd)(float *dx, const float *dy, const float *x, const float *w,
                        const float *rstd, int rows, int dim);

    /* ---- RoPE, HF rotate_half convention, in place on x [T, heads * head_dim] ----
     * Pair (i, i + head_dim/2) of each head rotates by angle pos[t] * theta^(-2i/head_dim).
     * rope_bwd applies the inverse rotation (the transpose), for the gradient. */
    void (*rope_fwd)(float *x, const int32_t *pos, int n_tok, int heads, int head_dim,
                     float theta);
    void (*rope_bwd)(float *dx, const int32_t *pos, int n_tok, int heads, int head_dim,
                     float theta);

    /* ---- causal grouped-query attention over packed variable-length segments ----
     * q [Tq, heads * d] (row stride heads*d), k and v [Tk, kv_heads * d], out like q.
     * Segment s has queries cu_q[s]..cu_q[s+1] and keys cu_k[s]..cu_k[s+1]; causal alignment is
     * bottom-right (query j of a segment with nq queries and nk keys sees keys
     * 0..nk-nq+j): in training cu_q == cu_k (a plain causal mask), in prefill the keys are the
     * cache plus the new tokens. Attention never crosses segments. Query head h reads kv head
     * h / (heads / kv_heads). Flash style: online softmax, never the whole Tq x Tk matrix.
     * lse [Tq, heads] receives each row's logsumexp of the scaled scores (may be NULL in
     * inference). max_q: the longest segment's query count (a launch hint). */
    void (*attention_fwd)(float *out, float *lse, const float *q, const float *k,
                          const float *v, const int32_t *cu_q, const int32_t *cu_k,
                          int n_seg, int max_q, int heads, int kv_heads, int d, float scale);
    /* attention_fwd for scoring, over one KV cache per segment: segment s's queries are q rows
     * cu_q[s] .. cu_q[s+1], its keys and values the first k_len[s] rows of k_rows[s] and
     * v_rows[s] ([*, kv_heads * d] each, anywhere in backend memory), aligned bottom-right as
     * above; no lse. k_rows and v_rows are arrays of backend pointers; they, cu_q and k_len
     * live in backend memory. One call for every row of a batch, however its caches lie. */
    void (*attention_fwd_rows)(float *out, const float *q, const float *const *k_rows,
                               const float *const *v_rows, const int32_t *cu_q,
                               const int32_t *k_len, int n_seg, int max_q, int heads,
                               int kv_heads, int d, float scale);
    /* Backward of attention_fwd (cu_q == cu_k). Overwrites dq, dk, dv. */
    void (*attention_bwd)(float *dq, float *dk, float *dv, const float *dout,
                          const float *q, const float *k, const float *v, const float *out,
                          const float *lse, const int32_t *cu_q, const int32_t *cu_k,
                          int n_seg, int max_q, int heads, int kv_heads, int d, float scale);

    /* ---- SwiGLU: h = silu(gate) * up, elementwise over n ---- */
    void (*swiglu_fwd)(float *h, const float *gate, const float *up, int64_t n);
    /* dgate, dup from dh (overwrites both) */
    void (*swiglu_bwd)(float *dgate, float *dup, const float *dh, const float *gate,
                       const float *up, int64_t n);

    /* ---- LM head + cross-entropy at supervised rows only ----
     * hidden [n, dim] are the final-normed hidden states of the supervised rows, w [vocab, dim]
     * the LM head, targets [n] their target ids. Logits are made in blocks of rows so a full
     * [n, vocab] matrix never exists at once. Returns the loss sum (double, host); when
     * row_loss != NULL stores each row's loss. When dhidden != NULL writes
     * dhidden = grad_scale * d(loss sum)/d(hidden) (overwrites). */
    double (*lm_head_xent)(const float *hidden, const float *w, const int32_t *targets, int n,
                           int dim, int vocab, float grad_scale, float *row_loss,
                           float *dhidden);

    /* ---- LoRA: y += scale * (drop(x) . A^T) . B^T ----
     * x [T, in], A [r, in], B [out, r], y [T, out] (row stride ldy), u [T, r] saves
     * drop(x) . A^T for the backward. drop: see dropout below; p == 0 means none. */
    void (*lora_fwd)(float *y, int ldy, float *u, const float *x, const float *a,
                     const float *b, int T, int in, int out, int r, float scale, float p,
                     uint64_t seed);
    /* Accumulates dA, dB (+= grad) and dx (+=; dx may be NULL: not wanted), given dy [T, out]
     * (row stride lddy) and the saved u. tmp: scratch of T * r floats. */
    void (*lora_bwd)(float *dx, float *da, float *db, const float *dy, int lddy,
                     const float *u, const float *x, const float *a, const float *b, int T,
                     int in, int out, int r, float scale, float p, uint64_t seed, float *tmp);

    /* ---- dropout with a counter-based mask: element i is kept when hash(seed, i) >= p and
     * scaled by 1/(1-p). The same seed regenerates the same mask (backward, recompute). ---- */
    void (*dropout)(float *out, const float *in, int64_t n, float p, uint64_t seed);

    /* ---- elementwise ---- */
    /* y[i] += x[i] (residual add) */
    void (*add)(float *y, const float *x, int64_t n);

    /* ---- NF4 (QLoRA) ----
     * out[r - row0, :] = dequantized rows row0..row0+nrows of w (a tile of the weight). */
    void (*nf4_dequant_rows)(float *out, const kernel_nf4_weight *w, int64_t row0,
                             int64_t nrows);

    /* ---- AdamW over a flat partition: adamw_update (adamw_math.h) on each element, with the
     * step's scalars from adamw_scalars_at ---- */
    void (*adamw)(float *p, const float *g, float *m, float *v, int64_t n,
                  const adamw_scalars *s);

    /* 1 when backend buffers are plain host memory (the CPU backend): a caller may then read
     * files straight into them instead of staging and uploading. 0 for device memory. */
    int host_memory;
} kernel_ops;

/* The CPU backend (always available). */
const kernel_ops *kernel_ops_cpu(void);
/* "cpu-staged" (kernels/cpu/cpu_staged.c): the CPU backend's ops with host_memory = 0, so the
 * code above the table takes its device-memory paths (staging through upload/download, the
 * checkpoint copies) on the CPU, where tests can run them. Its buffers are guarded like device
 * memory: alloc returns the real address plus a constant (bits 63 and 55) that makes it
 * non-canonical on x86-64 (and a kernel-half address on aarch64), and every op translates its
 * backend pointers back before the CPU kernel runs, so a host dereference of a backend pointer
 * (memcpy, fread, HDF5, MPI) faults as it would on a GPU. An op given a host pointer where a
 * backend buffer belongs dies naming the op. Not for users: it is only slower. */
const kernel_ops *kernel_ops_cpu_staged(void);
#if RUBRIC_HAVE_CUDA
/* The CUDA backend; NULL when no usable GPU is present. */
const kernel_ops *kernel_ops_cuda(void);
/* Devices this process sees (0 when none or no driver); with device >= 0 also makes that one
 * current (before kernel_ops_cuda's first call, which then starts on it). Starts no context. */
int kernel_cuda_devices(int device);
/* kernel_gemm_precision_set for the CUDA backend. */
const char *kernel_cuda_gemm_precision(int precision);
#endif

/* Pick a backend by name: "cpu", "cuda" or "auto" (cuda when built and a GPU answers, else
 * cpu), or "cpu-staged" (tests). Returns NULL with err_set(RB_EXIT_INPUT) for an unknown or
 * unavailable name. */
const kernel_ops *kernel_ops_select(const char *name);

/* The GEMMs' precision on a GPU: fp32 (FMA on CUDA cores, the table's fp32 contract), tf32 or
 * bf16 (tensor cores on inputs rounded to a 10-bit or bf16 mantissa, fp32 accumulation and
 * output; storage stays fp32). */
enum kernel_gemm_precision { KERNEL_GEMM_FP32 = 0, KERNEL_GEMM_TF32, KERNEL_GEMM_BF16 };
/* Set it for every later GEMM of `ops` (process-wide) and return the name of the precision
 * that holds: RUBRIC_CUDA_GEMM=fp32|tf32|bf16 in the environment overrides the request (for
 * comparisons); the CPU backends always compute in fp32 ("fp32"). */
const char *kernel_gemm_precision_set(const kernel_ops *ops, int precision);

/* 0 when `name` is one kernel_ops_select knows, else err_set(RB_EXIT_INPUT) naming `what`
 * (e.g. "--backend") and the choices. Chooses nothing (starts no GPU). */
int kernel_backend_name_check(const char *name, const char *what);

/* Which GPU a process uses, for one of the `local_count` processes on a node that each run a
 * backend (local_index 0-based among them): before the CUDA backend starts, with "cuda" or
 * "auto", the process makes device (local_index % devices) current, devices being those it
 * sees (one when slurm/gpu_bind.sh gave each task its own). Then kernel_ops_select(name).
 * *gpus_seen (may be NULL) gets the devices this process sees (0 without CUDA or a GPU); a
 * caller for whom two processes on one GPU is an error compares it with local_count. Call it
 * before anything else starts the CUDA backend in the process. */
const kernel_ops *kernel_ops_select_local(const char *name, int local_index, int *gpus_seen);

#endif
