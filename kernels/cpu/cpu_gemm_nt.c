/*
 * cpu_gemm_nt.c: C = alpha A B^T + beta C for a few rows of A against a long B, without packing.
 *
 * The LM head at decode time (A: a few hidden rows, B: the [vocab, hidden] lm_head) is this shape.
 * OpenBLAS copies ("packs") the whole of B before every such call, and on some CPUs it runs its
 * SSE3 kernels: both cost more than the arithmetic. Here B is streamed once: OpenMP splits it
 * into blocks of NT_JB rows, and each block meets every row of A as dot products, computed by a
 * register tile of MR rows of A times NR rows of B with vectors along k.
 *
 * Each C element is one dot product whose order depends only on k (never on m, n or the thread
 * count), so a row's result does not depend on which other rows share the call.
 */
#include <stdint.h>

#include "cpu_ops.h"
#include "util.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define NT_X86 1
#else
#define NT_X86 0
#endif

/* Rows of B per OpenMP work item: NT_JB * k floats stay in the L2 cache. */
#define NT_JB 64

typedef void (*nt_tile_fn)(const float *const *ap, const float *const *bp, int k,
                           float out[4][4]);

/* Store one tile: rows i0.., cols j0.. of C, only those inside m x n. */
static void nt_store(float out[4][4], int i0, int j0, int m, int n, float alpha, float beta,
                     float *c, int ldc)
{
    for (int i = 0; i < 4 && i0 + i < m; i++)
        for (int j = 0; j < 4 && j0 + j < n; j++) {
            float *cij = c + (int64_t)(i0 + i) * ldc + j0 + j;
            *cij = alpha * out[i][j] + (beta == 0.0f ? 0.0f : beta * *cij);
        }
}

/* Portable 4 x 4 tile: four partial sums per dot product, added pairwise. */
static void nt_tile_generic(const float *const *ap, const float *const *bp, int k,
                            float out[4][4])
{
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) {
            const float *a = ap[i], *b = bp[j];
            float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
            int p = 0;
            for (; p + 4 <= k; p += 4) {
                s0 += a[p] * b[p];
                s1 += a[p + 1] * b[p + 1];
                s2 += a[p + 2] * b[p + 2];
                s3 += a[p + 3] * b[p + 3];
            }
            for (; p < k; p++)
                s0 += a[p] * b[p];
            out[i][j] = (s0 + s1) + (s2 + s3);
        }
}

#if NT_X86
/* AVX-512: 16 accumulators of 16 lanes, k in steps of 16, the tail through a masked load. */
__attribute__((target("avx512f,fma"))) static void
nt_tile_avx512(const float *const *ap, const float *const *bp, int k, float out[4][4])
{
    __m512 acc[4][4];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++)
            acc[i][j] = _mm512_setzero_ps();
    int p = 0;
    for (; p + 16 <= k; p += 16) {
        __m512 b[4];
        for (int j = 0; j < 4; j++)
            b[j] = _mm512_loadu_ps(bp[j] + p);
        for (int i = 0; i < 4; i++) {
            __m512 a = _mm512_loadu_ps(ap[i] + p);
            for (int j = 0; j < 4; j++)
                acc[i][j] = _mm512_fmadd_ps(a, b[j], acc[i][j]);
        }
    }
    if (p < k) {
        __mmask16 mask = (__mmask16)((1u << (k - p)) - 1u);
        __m512 b[4];
        for (int j = 0; j < 4; j++)
            b[j] = _mm512_maskz_loadu_ps(mask, bp[j] + p);
        for (int i = 0; i < 4; i++) {
            __m512 a = _mm512_maskz_loadu_ps(mask, ap[i] + p);
            for (int j = 0; j < 4; j++)
                acc[i][j] = _mm512_fmadd_ps(a, b[j], acc[i][j]);
        }
    }
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++)
            out[i][j] = _mm512_reduce_add_ps(acc[i][j]);
}

/* AVX2: a 4 x 4 tile of 8-lane accumulators would spill; two 4 x 2 halves instead. */
__attribute__((target("avx2,fma"))) static void
nt_tile_avx2(const float *const *ap, const float *const *bp, int k, float out[4][4])
{
    for (int jh = 0; jh < 4; jh += 2) {
        __m256 acc[4][2];
        for (int i = 0; i < 4; i++)
            acc[i][0] = acc[i][1] = _mm256_setzero_ps();
        int p = 0;
        for (; p + 8 <= k; p += 8) {
            __m256 b0 = _mm256_loadu_ps(bp[jh] + p), b1 = _mm256_loadu_ps(bp[jh + 1] + p);
            for (int i = 0; i < 4; i++) {
                __m256 a = _mm256_loadu_ps(ap[i] + p);
                acc[i][0] = _mm256_fmadd_ps(a, b0, acc[i][0]);
                acc[i][1] = _mm256_fmadd_ps(a, b1, acc[i][1]);
            }
        }
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 2; j++) {
                float lanes[8];
                _mm256_storeu_ps(lanes, acc[i][j]);
                float s = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) +
                          ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
                for (int q = p; q < k; q++)
                    s += ap[i][q] * bp[jh + j][q];
                out[i][jh + j] = s;
            }
    }
}
#endif

static nt_tile_fn nt_pick(void)
{
#if NT_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f"))
        return nt_tile_avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return nt_tile_avx2;
#endif
    return nt_tile_generic;
}

void cpu_gemm_nt_stream(int m, int n, int k, float alpha, const float *a, int lda,
                        const float *b, int ldb, float beta, float *c, int ldc)
{
    nt_tile_fn tile = nt_pick();
    int n_blocks = (n + NT_JB - 1) / NT_JB;

#pragma omp parallel for schedule(static)
    for (int blk = 0; blk < n_blocks; blk++) {
        int j_end = RB_MIN(n, (blk + 1) * NT_JB);
        for (int i0 = 0; i0 < m; i0 += 4) {
            /* rows past the edge repeat the last row; their results are not stored */
            const float *ap[4];
            for (int i = 0; i < 4; i++)
                ap[i] = a + (int64_t)RB_MIN(i0 + i, m - 1) * lda;
            for (int j0 = blk * NT_JB; j0 < j_end; j0 += 4) {
                const float *bp[4];
                for (int j = 0; j < 4; j++)
                    bp[j] = b + (int64_t)RB_MIN(j0 + j, n - 1) * ldb;
                float out[4][4];
                tile(ap, bp, k, out);
                nt_store(out, i0, j0, m, n, alpha, beta, c, ldc);
            }
        }
    }
}

/* ---- C = A B + beta C with k long (the LM head's backward: dlogits [m, vocab] . W) ---- */

#if NT_X86
/* Rows of B (k) per pass over a column slice: NN_KB x 32 floats stay in the L1/L2 cache. */
#define NN_KB 256

static __mmask16 nn_mask(int width) /* lanes [0, width) of 16, width clamped to 0..16 */
{
    width = RB_MAX(0, RB_MIN(16, width));
    return (__mmask16)(width == 16 ? 0xffffu : (1u << width) - 1u);
}

/* One slice of 32 columns of C, all rows: C is read and written once per NN_KB rows of B, the
 * 8 x 32 tile of C in registers meanwhile (one broadcast of A per row, two loads of B). */
__attribute__((target("avx512f,fma"))) static void
nn_slice_avx512(int m, int k, int c0, int width, const float *a, int lda, const float *b, int ldb,
                float beta, float *c, int ldc)
{
    __mmask16 k0 = nn_mask(width), k1 = nn_mask(width - 16);
    for (int i = 0; i < m; i++) {
        float *ci = c + (int64_t)i * ldc + c0;
        __m512 vb = _mm512_set1_ps(beta);
        __m512 x0 = beta == 0.0f ? _mm512_setzero_ps()
                                 : _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(k0, ci));
        __m512 x1 = beta == 0.0f ? _mm512_setzero_ps()
                                 : _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(k1, ci + 16));
        _mm512_mask_storeu_ps(ci, k0, x0);
        _mm512_mask_storeu_ps(ci + 16, k1, x1);
    }
    for (int p0 = 0; p0 < k; p0 += NN_KB) {
        int p1 = RB_MIN(k, p0 + NN_KB);
        for (int i0 = 0; i0 < m; i0 += 8) {
            /* rows past the edge repeat the last row: same inputs, same value stored twice */
            const float *ar[8];
            float *cr[8];
            __m512 acc[8][2];
            for (int r = 0; r < 8; r++) {
                int i = RB_MIN(i0 + r, m - 1);
                ar[r] = a + (int64_t)i * lda;
                cr[r] = c + (int64_t)i * ldc + c0;
                acc[r][0] = _mm512_maskz_loadu_ps(k0, cr[r]);
                acc[r][1] = _mm512_maskz_loadu_ps(k1, cr[r] + 16);
            }
            for (int p = p0; p < p1; p++) {
                const float *bp = b + (int64_t)p * ldb + c0;
                __m512 b0 = _mm512_maskz_loadu_ps(k0, bp), b1 = _mm512_maskz_loadu_ps(k1, bp + 16);
                for (int r = 0; r < 8; r++) {
                    __m512 av = _mm512_set1_ps(ar[r][p]);
                    acc[r][0] = _mm512_fmadd_ps(av, b0, acc[r][0]);
                    acc[r][1] = _mm512_fmadd_ps(av, b1, acc[r][1]);
                }
            }
            for (int r = 0; r < 8; r++) {
                _mm512_mask_storeu_ps(cr[r], k0, acc[r][0]);
                _mm512_mask_storeu_ps(cr[r] + 16, k1, acc[r][1]);
            }
        }
    }
}
#endif

int cpu_gemm_nn_stream_available(void)
{
#if NT_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f");
#else
    return 0;
#endif
}

void cpu_gemm_nn_stream(int m, int n, int k, const float *a, int lda, const float *b, int ldb,
                        float beta, float *c, int ldc)
{
#if NT_X86
    int n_slices = (n + 31) / 32;
#pragma omp parallel for schedule(static)
    for (int s = 0; s < n_slices; s++)
        nn_slice_avx512(m, k, 32 * s, RB_MIN(32, n - 32 * s), a, lda, b, ldb, beta, c, ldc);
#else
    (void)m, (void)n, (void)k, (void)a, (void)lda, (void)b, (void)ldb, (void)beta, (void)c;
    (void)ldc;
    rb_die(RB_EXIT_RUNTIME, "cpu_gemm_nn_stream: needs AVX-512 (check "
           "cpu_gemm_nn_stream_available first)");
#endif
}
