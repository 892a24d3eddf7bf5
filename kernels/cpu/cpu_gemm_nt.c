/*
 * cpu_gemm_nt.c: C = alpha A B^T + beta C for a few rows of A against a long B, without packing.
 *
 * The LM head at decode time (A: a few hidden rows, B: the [vocab, hidden] lm_head) is this shape.
 * OpenBLAS copies ("packs") the whole of B before every such call, and on some CPUs it runs its
 * SSE3 kernels: both cost more than the arithmetic. Here B is streamed once: OpenMP splits it
 * into blocks of rows, and each block meets every row of A.
 *
 * With AVX-512, A (small) is copied once per call into panels of 32 rows laid out k-major, so a
 * register tile of NP_NR rows of B times 32 rows of A runs as broadcasts of B's elements times
 * A's panel vectors: C[i][j] is one fused multiply-add chain over k in lane i of a vector,
 * whatever m is. Elsewhere, a 4 x 4 tile of dot products with vectors along k.
 *
 * Each C element's sum order depends only on k (never on m, n or the thread count), so a row's
 * result does not depend on which other rows share the call.
 */
#include <stdint.h>
#include <stdlib.h>

#include "cpu_ops.h"
#include "cpu_simd.h"
#include "util.h"


/* Rows of B per OpenMP work item of the dot-product path. */
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

#if CPU_X86
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
#if CPU_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return nt_tile_avx2;
#endif
    return nt_tile_generic;
}

#if CPU_X86
/* ---- AVX-512: A in k-major panels of 32 rows, B rows broadcast element by element ---- */

/* Rows of B per register tile (24 accumulators: NP_NR rows x 2 vectors of A rows). */
#define NP_NR 12
/* Rows of B per OpenMP work item (4 tiles; 48 KiB at k = 256, within the L2 cache). */
#define NP_JB 48

/* Copy A (m x k) into panels: panel g holds rows 32g..32g+31 as [k][32], rows past m as 0. */
static float *np_pack(const float *a, int lda, int m, int k)
{
    int groups = (m + 31) / 32;
    float *ap = xcalloc((size_t)groups * (size_t)k * 32, sizeof(float));
    for (int i = 0; i < m; i++) {
        float *dst = ap + (size_t)(i / 32) * (size_t)k * 32 + i % 32;
        const float *src = a + (int64_t)i * lda;
        for (int p = 0; p < k; p++)
            dst[(size_t)p * 32] = src[p];
    }
    return ap;
}

/* t[j][l] = sum_p panel[p][l] * B_j[p] for NP_NR rows of B and the panel's 32 (nv = 2) or first
 * 16 (nv = 1) lanes; one FMA chain per element, p in order. The next tile's rows of B (nb) are
 * prefetched meanwhile, a cache line of each per 16 steps: B comes from memory once, and twelve
 * streams at once are more than the hardware prefetcher follows well. */
__attribute__((target("avx512f,fma"))) static void
np_tile(const float *panel, int nv, const float *const *bp, const float *const *nb, int k,
        float t[NP_NR][32])
{
    __m512 acc[NP_NR][2];
    for (int j = 0; j < NP_NR; j++)
        acc[j][0] = acc[j][1] = _mm512_setzero_ps();
    for (int p0 = 0; p0 < k; p0 += 16) {
        for (int j = 0; j < NP_NR; j++)
            _mm_prefetch((const char *)(nb[j] + p0), _MM_HINT_T0);
        int p1 = RB_MIN(k, p0 + 16);
        if (nv == 2) {
            for (int p = p0; p < p1; p++) {
                __m512 a0 = _mm512_loadu_ps(panel + (size_t)p * 32);
                __m512 a1 = _mm512_loadu_ps(panel + (size_t)p * 32 + 16);
                for (int j = 0; j < NP_NR; j++) {
                    __m512 bj = _mm512_set1_ps(bp[j][p]);
                    acc[j][0] = _mm512_fmadd_ps(a0, bj, acc[j][0]);
                    acc[j][1] = _mm512_fmadd_ps(a1, bj, acc[j][1]);
                }
            }
        } else {
            for (int p = p0; p < p1; p++) {
                __m512 a0 = _mm512_loadu_ps(panel + (size_t)p * 32);
                for (int j = 0; j < NP_NR; j++)
                    acc[j][0] = _mm512_fmadd_ps(a0, _mm512_set1_ps(bp[j][p]), acc[j][0]);
            }
        }
    }
    for (int j = 0; j < NP_NR; j++) {
        _mm512_storeu_ps(t[j], acc[j][0]);
        _mm512_storeu_ps(t[j] + 16, acc[j][1]);
    }
}

static void np_gemm(int m, int n, int k, float alpha, const float *a, int lda, const float *b,
                    int ldb, float beta, float *c, int ldc)
{
    float *ap = np_pack(a, lda, m, k);
    int groups = (m + 31) / 32, n_blocks = (n + NP_JB - 1) / NP_JB;

#pragma omp parallel for schedule(static)
    for (int blk = 0; blk < n_blocks; blk++) {
        int j_end = RB_MIN(n, (blk + 1) * NP_JB);
        float t[NP_NR][32];
        for (int g = 0; g < groups; g++) {
            int rows = RB_MIN(32, m - 32 * g);
            const float *panel = ap + (size_t)g * (size_t)k * 32;
            for (int j0 = blk * NP_JB; j0 < j_end; j0 += NP_NR) {
                /* rows of B past the edge repeat the last one; their results are not stored */
                const float *bp[NP_NR], *nb[NP_NR];
                for (int j = 0; j < NP_NR; j++) {
                    bp[j] = b + (int64_t)RB_MIN(j0 + j, n - 1) * ldb;
                    nb[j] = b + (int64_t)RB_MIN(j0 + NP_NR + j, n - 1) * ldb;
                }
                np_tile(panel, rows > 16 ? 2 : 1, bp, nb, k, t);
                int cols = RB_MIN(NP_NR, n - j0);
                for (int i = 0; i < rows; i++) {
                    float *ci = c + (int64_t)(32 * g + i) * ldc + j0;
                    for (int j = 0; j < cols; j++)
                        ci[j] = alpha * t[j][i] + (beta == 0.0f ? 0.0f : beta * ci[j]);
                }
            }
        }
    }
    free(ap);
}
#endif

void cpu_gemm_nt_stream(int m, int n, int k, float alpha, const float *a, int lda,
                        const float *b, int ldb, float beta, float *c, int ldc)
{
#if CPU_X86
    if (cpu_avx512()) {
        np_gemm(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        return;
    }
#endif
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

#if CPU_X86
/* Rows of B (k) per pass over a column slice: NN_KB x 32 floats stay in the L1/L2 cache. */
#define NN_KB 256

/* One slice of 32 columns of C, all rows: C is read and written once per NN_KB rows of B, the
 * 8 x 32 tile of C in registers meanwhile (one broadcast of A per row, two loads of B). */
__attribute__((target("avx512f,fma"))) static void
nn_slice_avx512(int m, int k, int c0, int width, const float *a, int lda, const float *b, int ldb,
                float beta, float *c, int ldc)
{
    __mmask16 k0 = cpu_mask16(width), k1 = cpu_mask16(width - 16);
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
#if CPU_X86
    return cpu_avx512();
#else
    return 0;
#endif
}

void cpu_gemm_nn_stream(int m, int n, int k, const float *a, int lda, const float *b, int ldb,
                        float beta, float *c, int ldc)
{
#if CPU_X86
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
