/*
 * cpu_basic.c: the CPU backend's memory, BLAS wrappers and elementwise kernels.
 *
 * Loops are OpenMP-parallel with static schedules (deterministic); reductions that cross
 * threads are done per row, never split across threads, so results do not depend on timing.
 */
#include "cpu_blas.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "cpu_ops.h"
#include "cpu_simd.h"
#include "log.h"
#include "util.h"

/* Parallelise an elementwise loop only when it is big enough to pay for waking the OpenMP
 * threads, which then spin for a while and compete with OpenBLAS's own threads (the pthread
 * build of OpenBLAS keeps a separate pool): most of these loops are memory-bound anyway. */
#define CPU_PAR_MIN (1 << 22)

/* ---- memory ---- */

void *cpu_alloc(size_t bytes)
{
    void *p = NULL;
    size_t n = bytes ? (bytes + 63) / 64 * 64 : 64;
    if (posix_memalign(&p, 64, n) != 0)
        rb_die(RB_EXIT_RUNTIME, "out of memory allocating %zu bytes on the CPU backend", bytes);
    memset(p, 0, n);
    return p;
}

void cpu_free(void *p) { free(p); }
void cpu_upload(void *dst, const void *src, size_t bytes) { memcpy(dst, src, bytes); }
void cpu_download(void *dst, const void *src, size_t bytes) { memcpy(dst, src, bytes); }
void cpu_copy(void *dst, const void *src, size_t bytes) { memmove(dst, src, bytes); }
void cpu_memset0(void *p, size_t bytes) { memset(p, 0, bytes); }
void cpu_sync(void) {}

float *cpu_scratch(int slot, size_t n_floats)
{
    static float *buf[8];
    static size_t cap[8];
    if (n_floats > cap[slot]) {
        free(buf[slot]);
        buf[slot] = cpu_alloc(n_floats * sizeof(float));
        cap[slot] = n_floats;
    }
    return buf[slot];
}

/* ---- BLAS ---- */

/* 1 when OpenBLAS chose a kernel far below what the CPU can run (decided once). */
static int blas_slow = -1;

static int cpu_blas_slow(void)
{
    if (blas_slow >= 0)
        return blas_slow;
    const char *core = openblas_get_corename();
    int fast_cpu = 0;
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    fast_cpu = __builtin_cpu_supports("avx512f") || __builtin_cpu_supports("avx2");
#endif
    blas_slow = fast_cpu && core && (strcmp(core, "Prescott") == 0 || strcmp(core, "Core2") == 0 ||
                                     strcmp(core, "Nehalem") == 0 ||
                                     strcmp(core, "Sandybridge") == 0);
    return blas_slow;
}

void cpu_blas_check(void)
{
    static int done;
    if (done)
        return;
    done = 1;
    if (!cpu_blas_slow())
        return;
    const char *want = cpu_avx512() ? "SkylakeX" : "Haswell";
    /* once per job, not once per rank: the launchers' rank variables, when set, leave it to
     * ranks 0 and 1 (the coordinator and the first worker); the others say it at debug level */
    const char *rank_vars[] = {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"};
    int rank = 0;
    for (size_t i = 0; i < sizeof rank_vars / sizeof *rank_vars && rank == 0; i++) {
        const char *v = getenv(rank_vars[i]);
        rank = v ? atoi(v) : 0;
    }
    log_msg(rank <= 1 ? LOG_WARN : LOG_DEBUG,
            "OpenBLAS runs its '%s' kernels on a CPU that can run '%s' ones (several times "
            "faster): start rubric with OPENBLAS_CORETYPE=%s in the environment",
            openblas_get_corename(), want, want);
}

/* The LM-head shape (A B^T with B a long [vocab, hidden] matrix) goes to the streaming kernel:
 * OpenBLAS packs the whole of B on every call, which costs more than the arithmetic for a few
 * rows of A; with OpenBLAS on its slow kernels the streaming one also wins for many rows
 * (measured in docs/model.md). Small k (attention heads) stays with OpenBLAS. Likewise the LM
 * head's backward (A B with k = vocab) when OpenBLAS is slow, on AVX-512. */
static int use_nt_stream(int trans_a, int trans_b, int m, int n, int k)
{
    if (trans_a || !trans_b || n < 4096 || k < 64)
        return 0;
    return m <= 64 || cpu_blas_slow();
}

void cpu_gemm(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a,
              int lda, const float *b, int ldb, float beta, float *c, int ldc)
{
    if (m == 0 || n == 0)
        return;
    if (k == 0) {
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
                c[(int64_t)i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[(int64_t)i * ldc + j];
        return;
    }
    if (!trans_a && !trans_b && alpha == 1.0f && k >= 65536 && m >= 16 && cpu_blas_slow() &&
        cpu_gemm_nn_stream_available()) {
        cpu_gemm_nn_stream(m, n, k, a, lda, b, ldb, beta, c, ldc);
        return;
    }
    if (use_nt_stream(trans_a, trans_b, m, n, k)) {
        cpu_gemm_nt_stream(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        return;
    }
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, m, n, k, alpha, a, lda, b, ldb, beta, c,
                ldc);
}

void cpu_axpy(int64_t n, float alpha, const float *x, float *y)
{
#pragma omp parallel for schedule(static) if (n > CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        y[i] += alpha * x[i];
}

void cpu_scale(int64_t n, float alpha, float *x)
{
#pragma omp parallel for schedule(static) if (n > CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        x[i] *= alpha;
}

void cpu_add(float *y, const float *x, int64_t n)
{
#pragma omp parallel for schedule(static) if (n > CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        y[i] += x[i];
}

void cpu_add_bias(float *y, const float *bias, int rows, int cols)
{
#pragma omp parallel for schedule(static) if ((int64_t)rows * cols > CPU_PAR_MIN)
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++)
            y[(int64_t)r * cols + c] += bias[c];
}

/* Sum of squares in fixed-size chunks, each chunk in double, chunks added in order. */
double cpu_sumsq(int64_t n, const float *x)
{
    enum { CHUNK = 65536 };
    int64_t n_chunks = (n + CHUNK - 1) / CHUNK;
    double *part = xcalloc((size_t)(n_chunks ? n_chunks : 1), sizeof(double));
#pragma omp parallel for schedule(static) if (n_chunks > 1)
    for (int64_t c = 0; c < n_chunks; c++) {
        double s = 0.0;
        int64_t end = RB_MIN(n, (c + 1) * CHUNK);
        for (int64_t i = c * CHUNK; i < end; i++)
            s += (double)x[i] * x[i];
        part[c] = s;
    }
    double total = 0.0;
    for (int64_t c = 0; c < n_chunks; c++)
        total += part[c];
    free(part);
    return total;
}

/* ---- rows ---- */

void cpu_embedding(float *out, const float *table, const uint32_t *tokens, int n, int dim)
{
#pragma omp parallel for schedule(static) if ((int64_t)n * dim > CPU_PAR_MIN)
    for (int t = 0; t < n; t++)
        memcpy(out + (int64_t)t * dim, table + (int64_t)tokens[t] * dim, sizeof(float) * dim);
}

void cpu_gather_rows(float *out, const float *in, const int32_t *idx, int n, int dim)
{
    for (int i = 0; i < n; i++)
        memcpy(out + (int64_t)i * dim, in + (int64_t)idx[i] * dim, sizeof(float) * dim);
}

void cpu_scatter_add_rows(float *out, const float *in, const int32_t *idx, int n, int dim)
{
    for (int i = 0; i < n; i++) {
        float *o = out + (int64_t)idx[i] * dim;
        const float *s = in + (int64_t)i * dim;
        for (int c = 0; c < dim; c++)
            o[c] += s[c];
    }
}

void cpu_append_rows(float *const *dst_rows, const float *src, const int32_t *cu,
                     const int32_t *end, int n_seg, int T, int width)
{
    (void)T;
    for (int s = 0; s < n_seg; s++) {
        int n = cu[s + 1] - cu[s];
        memcpy(dst_rows[s] + (int64_t)(end[s] - n) * width, src + (int64_t)cu[s] * width,
               sizeof(float) * (size_t)n * (size_t)width);
    }
}

/* ---- RMSNorm ---- */

void cpu_rmsnorm_fwd(float *y, float *rstd, const float *x, const float *w, int rows, int dim,
                     float eps)
{
#pragma omp parallel for schedule(static) if ((int64_t)rows * dim > CPU_PAR_MIN)
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (int64_t)r * dim;
        float *yr = y + (int64_t)r * dim;
        float ss = 0.0f;
        for (int c = 0; c < dim; c++)
            ss += xr[c] * xr[c];
        float rs = 1.0f / sqrtf(ss / (float)dim + eps);
        rstd[r] = rs;
        for (int c = 0; c < dim; c++)
            yr[c] = w[c] * (xr[c] * rs);
    }
}

/* y = w * x * rs, rs = (mean(x^2) + eps)^-1/2: dx = rs * (g - x * rs^2 * mean(g * x)),
 * g = dy * w. */
void cpu_rmsnorm_bwd(float *dx, const float *dy, const float *x, const float *w,
                     const float *rstd, int rows, int dim)
{
#pragma omp parallel for schedule(static) if ((int64_t)rows * dim > CPU_PAR_MIN)
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (int64_t)r * dim;
        const float *gr = dy + (int64_t)r * dim;
        float *dr = dx + (int64_t)r * dim;
        float rs = rstd[r];
        float dot = 0.0f;
        for (int c = 0; c < dim; c++)
            dot += gr[c] * w[c] * xr[c];
        float k = rs * rs * rs * dot / (float)dim;
        for (int c = 0; c < dim; c++)
            dr[c] = rs * gr[c] * w[c] - k * xr[c];
    }
}

/* ---- RoPE (rotate_half): angles as HF computes them, in fp32 ---- */

static void rope_apply(float *x, const int32_t *pos, int n_tok, int heads, int head_dim,
                       float theta, float sign)
{
    int half = head_dim / 2;
    float inv_freq[512];
    for (int i = 0; i < half; i++)
        inv_freq[i] = 1.0f / powf(theta, (float)(2 * i) / (float)head_dim);
#pragma omp parallel for schedule(static) if ((int64_t)n_tok * heads * head_dim > CPU_PAR_MIN)
    for (int t = 0; t < n_tok; t++) {
        float cs[256], sn[256];
        for (int i = 0; i < half; i++) {
            float ang = (float)pos[t] * inv_freq[i];
            cs[i] = cosf(ang);
            sn[i] = sign * sinf(ang);
        }
        for (int h = 0; h < heads; h++) {
            float *v = x + ((int64_t)t * heads + h) * head_dim;
            for (int i = 0; i < half; i++) {
                float a = v[i], b = v[i + half];
                v[i] = a * cs[i] - b * sn[i];
                v[i + half] = b * cs[i] + a * sn[i];
            }
        }
    }
}

void cpu_rope_fwd(float *x, const int32_t *pos, int n_tok, int heads, int head_dim, float theta)
{
    rope_apply(x, pos, n_tok, heads, head_dim, theta, 1.0f);
}

void cpu_rope_bwd(float *dx, const int32_t *pos, int n_tok, int heads, int head_dim,
                  float theta)
{
    rope_apply(dx, pos, n_tok, heads, head_dim, theta, -1.0f);
}

/* ---- SwiGLU ---- */

#if CPU_X86
/* SwiGLU over [i0, i1) in 16 lanes (sigmoid16: no overflow for any gate). */
__attribute__((target("avx512f,fma"))) static void swiglu_fwd_avx512(float *h, const float *gate,
                                                                     const float *up, int64_t i0,
                                                                     int64_t i1)
{
    for (int64_t i = i0; i < i1; i += 16) {
        __mmask16 k = cpu_mask16((int)RB_MIN(i1 - i, 16));
        __m512 g = _mm512_maskz_loadu_ps(k, gate + i);
        __m512 y = _mm512_mul_ps(_mm512_mul_ps(g, sigmoid16(g)), _mm512_maskz_loadu_ps(k, up + i));
        _mm512_mask_storeu_ps(h + i, k, y);
    }
}

__attribute__((target("avx512f,fma"))) static void
swiglu_bwd_avx512(float *dgate, float *dup, const float *dh, const float *gate, const float *up,
                  int64_t i0, int64_t i1)
{
    __m512 one = _mm512_set1_ps(1.0f);
    for (int64_t i = i0; i < i1; i += 16) {
        __mmask16 k = cpu_mask16((int)RB_MIN(i1 - i, 16));
        __m512 g = _mm512_maskz_loadu_ps(k, gate + i), sig = sigmoid16(g);
        __m512 d = _mm512_maskz_loadu_ps(k, dh + i), u = _mm512_maskz_loadu_ps(k, up + i);
        _mm512_mask_storeu_ps(dup + i, k, _mm512_mul_ps(_mm512_mul_ps(d, g), sig));
        __m512 t = _mm512_fmadd_ps(g, _mm512_sub_ps(one, sig), one);
        _mm512_mask_storeu_ps(dgate + i, k,
                              _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(d, u), sig), t));
    }
}
#endif

/* Elementwise work in OpenMP chunks of whole 16-lane vectors. */
#define SWIGLU_CHUNK 4096

void cpu_swiglu_fwd(float *h, const float *gate, const float *up, int64_t n)
{
#if CPU_X86
    if (cpu_avx512()) {
        int64_t chunks = (n + SWIGLU_CHUNK - 1) / SWIGLU_CHUNK;
#pragma omp parallel for schedule(static) if (n > CPU_PAR_MIN)
        for (int64_t c = 0; c < chunks; c++)
            swiglu_fwd_avx512(h, gate, up, c * SWIGLU_CHUNK, RB_MIN(n, (c + 1) * SWIGLU_CHUNK));
        return;
    }
#endif
#pragma omp parallel for schedule(static) if (n > CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        float g = gate[i];
        h[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

void cpu_swiglu_bwd(float *dgate, float *dup, const float *dh, const float *gate,
                    const float *up, int64_t n)
{
#if CPU_X86
    if (cpu_avx512()) {
        int64_t chunks = (n + SWIGLU_CHUNK - 1) / SWIGLU_CHUNK;
#pragma omp parallel for schedule(static) if (n > CPU_PAR_MIN)
        for (int64_t c = 0; c < chunks; c++)
            swiglu_bwd_avx512(dgate, dup, dh, gate, up, c * SWIGLU_CHUNK,
                              RB_MIN(n, (c + 1) * SWIGLU_CHUNK));
        return;
    }
#endif
#pragma omp parallel for schedule(static) if (n > CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        float g = gate[i], sig = 1.0f / (1.0f + expf(-g));
        float d = dh[i];
        dup[i] = d * g * sig;
        dgate[i] = d * up[i] * sig * (1.0f + g * (1.0f - sig));
    }
}

/* ---- dropout: element i kept when the xxHash of (i, seed) maps to u >= p ---- */

void cpu_dropout(float *out, const float *in, int64_t n, float p, uint64_t seed)
{
    if (p <= 0.0f) {
        if (out != in)
            memcpy(out, in, sizeof(float) * (size_t)n);
        return;
    }
    float keep_scale = 1.0f / (1.0f - p);
#pragma omp parallel for schedule(static) if (n > CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        uint64_t h = XXH3_64bits_withSeed(&i, sizeof(i), seed);
        float u = (float)(h >> 40) * (1.0f / 16777216.0f);
        out[i] = u >= p ? in[i] * keep_scale : 0.0f;
    }
}

/* ---- NF4 ---- */

/* bitsandbytes' NF4 code values (the quantiles of N(0,1) normalised to [-1, 1]). */
static const float nf4_values[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f,
};

void cpu_nf4_dequant_rows(float *out, const kernel_nf4_weight *w, int64_t row0, int64_t nrows)
{
    int64_t first = row0 * w->cols, n = nrows * w->cols;
#pragma omp parallel for schedule(static) if (n > CPU_PAR_MIN)
    for (int64_t j = 0; j < n; j++) {
        int64_t i = first + j;
        uint8_t byte = w->packed[i >> 1];
        int code = (i & 1) ? (byte & 15) : (byte >> 4);
        out[j] = nf4_values[code] * w->absmax[i / w->block];
    }
}

/* ---- AdamW (torch.optim.AdamW, non-fused, fp32) ---- */

void cpu_adamw(float *p, const float *g, float *m, float *v, int64_t n, const adamw_scalars *s)
{
#pragma omp parallel for schedule(static) if (n > CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        adamw_update(&p[i], &m[i], &v[i], g[i], s);
}
