/*
 * cpu_staged.c: the "cpu-staged" test backend. The CPU kernels behind buffers the host cannot
 * dereference, so code above the table that touches a backend pointer directly (memcpy, fread,
 * HDF5, MPI, a plain loop) faults here as it would on a GPU instead of working by accident.
 *
 * The guard: alloc returns the real (posix_memalign'd) address plus STAGED_GUARD, and every op
 * subtracts it again from each backend pointer argument before calling the cpu_* op. Pointer
 * arithmetic above the table (buf + offset within the buffer) survives the round trip because
 * the translation is an addition mod 2^64. STAGED_GUARD sets bits 63 and 55:
 *  - x86-64: user addresses are below 2^47 (4-level paging) or 2^56 (5-level, LA57), so a
 *    guarded address has bit 63 set and bits 56..62 clear: it is non-canonical under either
 *    paging mode, and any load or store through it raises #GP (SIGSEGV), whatever is mapped.
 *  - aarch64 (top-byte-ignore on): bits 56..63 are ignored but bit 55 set selects the kernel
 *    half (TTBR1), which user mode cannot access: it faults too.
 * alloc checks that the real address is below 2^55 (so the sum neither carries into the guard
 * bits nor wraps) and each op checks that its pointers carry the guard, naming the op when a
 * host pointer is passed where a backend buffer belongs. NULL stays NULL (optional outputs).
 * Host values (scalars, the returned sums, adamw's scalars struct, the nf4 weight descriptor
 * itself) are not translated; the nf4 descriptor's packed and absmax are, in a local copy.
 */
#include <stdint.h>
#include <stdlib.h>

#include "cpu_blas.h"
#include "cpu_ops.h"
#include "util.h"

#define STAGED_GUARD ((uintptr_t)0x8080000000000000ULL)
#define STAGED_REAL_LIMIT ((uintptr_t)1 << 55)

static int is_guarded(const void *p)
{
    return ((uintptr_t)p & STAGED_GUARD) == STAGED_GUARD;
}

/* The real address of backend pointer p (NULL stays NULL); `what` names the op for the error. */
static void *real(const void *p, const char *what)
{
    if (!p)
        return NULL;
    if (!is_guarded(p))
        rb_die(RB_EXIT_RUNTIME, "cpu-staged: %s got %p, which is not a backend buffer "
               "(a host pointer where the backend's memory belongs)", what, p);
    return (void *)((uintptr_t)p - STAGED_GUARD);
}

/* A host pointer argument (upload's source, download's destination) must not be guarded. */
static void *host(const void *p, const char *what)
{
    if (p && is_guarded(p))
        rb_die(RB_EXIT_RUNTIME, "cpu-staged: %s got backend buffer %p where host memory "
               "belongs", what, p);
    return (void *)p;
}

/* The op's name from its wrapper's (staged_gemm: gemm), for the messages above. */
#define OP (__func__ + sizeof "staged_" - 1)
#define R(p) real((p), OP)

/* An array of n backend pointers held in backend memory (attention_fwd_rows' caches,
 * append_rows' destinations): both levels translated, into a host array (free it). */
static void **real_array(const void *arr, int n, const char *what)
{
    void *const *in = real(arr, what);
    void **out = xmalloc(sizeof(void *) * (size_t)(n + 1));
    for (int i = 0; i < n; i++)
        out[i] = real(in[i], what);
    return out;
}

/* ---- memory ---- */

static void *staged_alloc(size_t bytes)
{
    void *p = cpu_alloc(bytes);
    if ((uintptr_t)p >= STAGED_REAL_LIMIT)
        rb_die(RB_EXIT_RUNTIME, "cpu-staged: the allocator returned %p, above the 2^55 the "
               "guard needs", p);
    return (void *)((uintptr_t)p + STAGED_GUARD);
}

static void staged_free(void *p) { cpu_free(R(p)); }

static void staged_upload(void *dst, const void *src, size_t bytes)
{
    cpu_upload(R(dst), host(src, OP), bytes);
}

static void staged_download(void *dst, const void *src, size_t bytes)
{
    cpu_download(host(dst, OP), R(src), bytes);
}

static void staged_copy(void *dst, const void *src, size_t bytes)
{
    cpu_copy(R(dst), R(src), bytes);
}
static void staged_memset0(void *p, size_t bytes) { cpu_memset0(R(p), bytes); }

/* ---- dense linear algebra ---- */

static void staged_gemm(int trans_a, int trans_b, int m, int n, int k, float alpha,
                        const float *a, int lda, const float *b, int ldb, float beta, float *c,
                        int ldc)
{
    cpu_gemm(trans_a, trans_b, m, n, k, alpha, R(a), lda, R(b), ldb, beta, R(c), ldc);
}

static void staged_axpy(int64_t n, float alpha, const float *x, float *y)
{
    cpu_axpy(n, alpha, R(x), R(y));
}

static void staged_scale(int64_t n, float alpha, float *x) { cpu_scale(n, alpha, R(x)); }

static void staged_add_bias(float *y, const float *bias, int rows, int cols)
{
    cpu_add_bias(R(y), R(bias), rows, cols);
}

static double staged_sumsq(int64_t n, const float *x) { return cpu_sumsq(n, R(x)); }

/* ---- embedding ---- */

static void staged_embedding(float *out, const float *table, const uint32_t *tokens, int n,
                             int dim)
{
    cpu_embedding(R(out), R(table), R(tokens), n, dim);
}

static void staged_gather_rows(float *out, const float *in, const int32_t *idx, int n, int dim)
{
    cpu_gather_rows(R(out), R(in), R(idx), n, dim);
}

static void staged_scatter_add_rows(float *out, const float *in, const int32_t *idx, int n,
                                    int dim)
{
    cpu_scatter_add_rows(R(out), R(in), R(idx), n, dim);
}

static void staged_append_rows(float *const *dst_rows, const float *src, const int32_t *cu,
                               const int32_t *end, int n_seg, int T, int width)
{
    void **d = real_array(dst_rows, n_seg, OP);
    cpu_append_rows((float *const *)d, R(src), R(cu), R(end), n_seg, T, width);
    free(d);
}

/* ---- RMSNorm ---- */

static void staged_rmsnorm_fwd(float *y, float *rstd, const float *x, const float *w, int rows,
                               int dim, float eps)
{
    cpu_rmsnorm_fwd(R(y), R(rstd), R(x), R(w), rows, dim, eps);
}

static void staged_rmsnorm_bwd(float *dx, const float *dy, const float *x, const float *w,
                               const float *rstd, int rows, int dim)
{
    cpu_rmsnorm_bwd(R(dx), R(dy), R(x), R(w), R(rstd), rows, dim);
}

/* ---- RoPE ---- */

static void staged_rope_fwd(float *x, const int32_t *pos, int n_tok, int heads, int head_dim,
                            float theta)
{
    cpu_rope_fwd(R(x), R(pos), n_tok, heads, head_dim, theta);
}

static void staged_rope_bwd(float *dx, const int32_t *pos, int n_tok, int heads, int head_dim,
                            float theta)
{
    cpu_rope_bwd(R(dx), R(pos), n_tok, heads, head_dim, theta);
}

/* ---- attention ---- */

static void staged_attention_fwd(float *out, float *lse, const float *q, const float *k,
                                 const float *v, const int32_t *cu_q, const int32_t *cu_k,
                                 int n_seg, int max_q, int heads, int kv_heads, int d,
                                 float scale)
{
    cpu_attention_fwd(R(out), R(lse), R(q), R(k), R(v), R(cu_q), R(cu_k), n_seg, max_q, heads,
                      kv_heads, d, scale);
}

static void staged_attention_fwd_rows(float *out, const float *q, const float *const *k_rows,
                                      const float *const *v_rows, const int32_t *cu_q,
                                      const int32_t *k_len, int n_seg, int max_q, int heads,
                                      int kv_heads, int d, float scale)
{
    void **k = real_array(k_rows, n_seg, OP), **v = real_array(v_rows, n_seg, OP);
    cpu_attention_fwd_rows(R(out), R(q), (const float *const *)k, (const float *const *)v,
                           R(cu_q), R(k_len), n_seg, max_q, heads, kv_heads, d, scale);
    free(k);
    free(v);
}

static void staged_attention_bwd(float *dq, float *dk, float *dv, const float *dout,
                                 const float *q, const float *k, const float *v,
                                 const float *out, const float *lse, const int32_t *cu_q,
                                 const int32_t *cu_k, int n_seg, int max_q, int heads,
                                 int kv_heads, int d, float scale)
{
    cpu_attention_bwd(R(dq), R(dk), R(dv), R(dout), R(q), R(k), R(v), R(out), R(lse), R(cu_q),
                      R(cu_k), n_seg, max_q, heads, kv_heads, d, scale);
}

/* ---- SwiGLU ---- */

static void staged_swiglu_fwd(float *h, const float *gate, const float *up, int64_t n)
{
    cpu_swiglu_fwd(R(h), R(gate), R(up), n);
}

static void staged_swiglu_bwd(float *dgate, float *dup, const float *dh, const float *gate,
                              const float *up, int64_t n)
{
    cpu_swiglu_bwd(R(dgate), R(dup), R(dh), R(gate), R(up), n);
}

/* ---- LM head + cross-entropy ---- */

static double staged_lm_head_xent(const float *hidden, const float *w, const int32_t *targets,
                                  int n, int dim, int vocab, float grad_scale, float *row_loss,
                                  float *dhidden)
{
    return cpu_lm_head_xent(R(hidden), R(w), R(targets), n, dim, vocab, grad_scale,
                            R(row_loss), R(dhidden));
}

/* ---- LoRA ---- */

static void staged_lora_fwd(float *y, int ldy, float *u, const float *x, const float *a,
                            const float *b, int T, int in, int out, int r, float scale, float p,
                            uint64_t seed)
{
    cpu_lora_fwd(R(y), ldy, R(u), R(x), R(a), R(b), T, in, out, r, scale, p, seed);
}

static void staged_lora_bwd(float *dx, float *da, float *db, const float *dy, int lddy,
                            const float *u, const float *x, const float *a, const float *b,
                            int T, int in, int out, int r, float scale, float p, uint64_t seed,
                            float *tmp)
{
    cpu_lora_bwd(R(dx), R(da), R(db), R(dy), lddy, R(u), R(x), R(a), R(b), T, in, out, r, scale,
                 p, seed, R(tmp));
}

/* ---- dropout, elementwise ---- */

static void staged_dropout(float *out, const float *in, int64_t n, float p, uint64_t seed)
{
    cpu_dropout(R(out), R(in), n, p, seed);
}

static void staged_add(float *y, const float *x, int64_t n) { cpu_add(R(y), R(x), n); }

/* ---- NF4: the descriptor is a host struct; its packed and absmax are backend buffers ---- */

static void staged_nf4_dequant_rows(float *out, const kernel_nf4_weight *w, int64_t row0,
                                    int64_t nrows)
{
    kernel_nf4_weight rw = *w;
    rw.packed = R(w->packed);
    rw.absmax = R(w->absmax);
    cpu_nf4_dequant_rows(R(out), &rw, row0, nrows);
}

/* ---- AdamW: s is a host struct ---- */

static void staged_adamw(float *p, const float *g, float *m, float *v, int64_t n,
                         const adamw_scalars *s)
{
    cpu_adamw(R(p), R(g), R(m), R(v), n, s);
}

static const kernel_ops cpu_staged_ops = {
    .name = "cpu-staged",
    .alloc = staged_alloc,
    .free = staged_free,
    .upload = staged_upload,
    .download = staged_download,
    .copy = staged_copy,
    .memset0 = staged_memset0,
    .sync = cpu_sync,
    .gemm = staged_gemm,
    .axpy = staged_axpy,
    .scale = staged_scale,
    .add_bias = staged_add_bias,
    .sumsq = staged_sumsq,
    .embedding = staged_embedding,
    .gather_rows = staged_gather_rows,
    .scatter_add_rows = staged_scatter_add_rows,
    .append_rows = staged_append_rows,
    .rmsnorm_fwd = staged_rmsnorm_fwd,
    .rmsnorm_bwd = staged_rmsnorm_bwd,
    .rope_fwd = staged_rope_fwd,
    .rope_bwd = staged_rope_bwd,
    .attention_fwd = staged_attention_fwd,
    .attention_fwd_rows = staged_attention_fwd_rows,
    .attention_bwd = staged_attention_bwd,
    .swiglu_fwd = staged_swiglu_fwd,
    .swiglu_bwd = staged_swiglu_bwd,
    .lm_head_xent = staged_lm_head_xent,
    .lora_fwd = staged_lora_fwd,
    .lora_bwd = staged_lora_bwd,
    .dropout = staged_dropout,
    .add = staged_add,
    .nf4_dequant_rows = staged_nf4_dequant_rows,
    .adamw = staged_adamw,
    .host_memory = 0,
};

const kernel_ops *kernel_ops_cpu_staged(void)
{
    cpu_blas_check();
    return &cpu_staged_ops;
}
