/*
 * cpu_simd.h: vector helpers shared by the CPU kernels, each behind a runtime CPU check so one
 * binary runs on any x86-64 (and builds elsewhere, where only the portable paths exist).
 */
#ifndef RUBRIC_CPU_SIMD_H
#define RUBRIC_CPU_SIMD_H

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define CPU_X86 1

/* Whether this CPU runs AVX-512F (checked once). */
static inline int cpu_avx512(void)
{
    static int known = -1;
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("avx512f") ? 1 : 0;
    }
    return known;
}

/* exp(x) for x <= 0, 16 lanes: Cephes' expf (x = n ln2 + r, a degree-6 polynomial in r, then
 * scalef by 2^n, which flushes below the float range to 0): within 2 ulp of expf. A NaN lane
 * stays NaN (the clamp's max returns its second operand when either is NaN). */
__attribute__((target("avx512f,fma"))) static inline __m512 exp16(__m512 x)
{
    x = _mm512_max_ps(_mm512_set1_ps(-104.0f), x);
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 y = _mm512_set1_ps(1.9875691500e-4f);
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.3981999507e-3f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073e-3f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894e-2f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459e-1f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201e-1f));
    y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(y, n);
}

/* The logistic sigmoid of 16 lanes, for any x: e = exp(-|x|) <= 1, then 1 / (1 + e) for
 * x >= 0 and e / (1 + e) below (no overflow either way). */
__attribute__((target("avx512f,fma"))) static inline __m512 sigmoid16(__m512 x)
{
    __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(x)));
    __m512 r = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_add_ps(_mm512_set1_ps(1.0f), e));
    __mmask16 neg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
    return _mm512_mask_mul_ps(r, neg, r, e);
}

/* Lanes [0, n) of 16 (n clamped to 0..16). */
static inline __mmask16 cpu_mask16(int n)
{
    return (__mmask16)(n >= 16 ? 0xffffu : n <= 0 ? 0u : (1u << n) - 1u);
}
#else
#define CPU_X86 0
static inline int cpu_avx512(void) { return 0; }
#endif

#endif
