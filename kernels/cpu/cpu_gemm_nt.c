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
    static nt_tile_fn tile;
    if (!tile)
        tile = nt_pick();
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
