/*
 * test_kernels_cpu.c: every op of the CPU backend against a naive double-precision
 * implementation, and the backward ops against finite differences of their forward ops.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "adamw.h"
#include "cpu/cpu_ops.h"
#include "nf4.h"
#include "ops.h"
#include "util.h"
#include "test_rand.h"


static const kernel_ops *K;

static void setup(void) { K = kernel_ops_cpu(); }

TestSuite(kernels_cpu, .init = setup);

/* ---- helpers ---- */

static uint64_t rng_state = 12345;

static float frand(void) /* uniform in [-1, 1) */
{
    return test_frand(&rng_state);
}

static float *rand_buf(int64_t n, float scale)
{
    float *v = xmalloc(sizeof(float) * (size_t)(n ? n : 1));
    for (int64_t i = 0; i < n; i++)
        v[i] = scale * frand();
    return v;
}

static float *copy_buf(const float *x, int64_t n)
{
    float *v = xmalloc(sizeof(float) * (size_t)n);
    memcpy(v, x, sizeof(float) * (size_t)n);
    return v;
}

static double max_rel(const float *got, const double *want, int64_t n)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        num = fmax(num, fabs(got[i] - want[i]));
        den = fmax(den, fabs(want[i]));
    }
    return num / (den > 0 ? den : 1);
}

static double max_rel_f(const float *got, const float *want, int64_t n)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        num = fmax(num, fabs((double)got[i] - want[i]));
        den = fmax(den, fabs((double)want[i]));
    }
    return num / (den > 0 ? den : 1);
}

static double dot(const float *a, const float *b, int64_t n)
{
    double s = 0;
    for (int64_t i = 0; i < n; i++)
        s += (double)a[i] * b[i];
    return s;
}

/* ---- GEMM ---- */

Test(kernels_cpu, gemm_all_transposes)
{
    int m = 7, n = 5, k = 9;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            int lda = (ta ? m : k) + 2, ldb = (tb ? k : n) + 1, ldc = n + 3;
            float *a = rand_buf((int64_t)(ta ? k : m) * lda, 1);
            float *b = rand_buf((int64_t)(tb ? n : k) * ldb, 1);
            float *c = rand_buf((int64_t)m * ldc, 1), *c0 = copy_buf(c, (int64_t)m * ldc);
            K->gemm(ta, tb, m, n, k, 0.5f, a, lda, b, ldb, 2.0f, c, ldc);
            for (int i = 0; i < m; i++)
                for (int j = 0; j < n; j++) {
                    double s = 0;
                    for (int p = 0; p < k; p++)
                        s += (double)(ta ? a[p * lda + i] : a[i * lda + p]) *
                             (tb ? b[j * ldb + p] : b[p * ldb + j]);
                    double want = 0.5 * s + 2.0 * c0[i * ldc + j];
                    cr_assert(fabs(c[i * ldc + j] - want) < 1e-5, "ta %d tb %d", ta, tb);
                }
            free(a);
            free(b);
            free(c);
            free(c0);
        }
}

/* The LM-head shape (A B^T, B long: the streaming kernel) against double precision, edges
 * included (m, n not multiples of the tile, k with a tail, padded leading dimensions, beta 0
 * and not), and each row's result independent of the other rows in the call. */
Test(kernels_cpu, gemm_lm_head_shape)
{
    int n = 4099, k = 83, lda = 90, ldb = 85, ldc = n + 2;
    int ms[] = {1, 3, 8, 70};
    for (size_t t = 0; t < RB_ARRAY_LEN(ms); t++) {
        int m = ms[t];
        float beta = t % 2 ? 0.0f : 0.25f;
        float *a = rand_buf((int64_t)m * lda, 1), *b = rand_buf((int64_t)n * ldb, 1);
        float *c = rand_buf((int64_t)m * ldc, 1), *c0 = copy_buf(c, (int64_t)m * ldc);
        K->gemm(0, 1, m, n, k, 1.5f, a, lda, b, ldb, beta, c, ldc);
        double worst = 0;
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) {
                double want = 1.5 * dot(a + (int64_t)i * lda, b + (int64_t)j * ldb, k) +
                              (beta == 0.0f ? 0.0 : beta * c0[(int64_t)i * ldc + j]);
                worst = fmax(worst, fabs(c[(int64_t)i * ldc + j] - want));
            }
        cr_assert(worst < 1e-4, "m %d: max abs error %.3g", m, worst);

        /* the last row alone gives the same bits (up to 64 rows: always the streaming kernel) */
        float *one = xmalloc(sizeof(float) * (size_t)n);
        K->gemm(0, 1, 1, n, k, 1.5f, a + (int64_t)(m - 1) * lda, lda, b, ldb, 0.0f, one, n);
        if (beta == 0.0f && m <= 64)
            cr_assert(memcmp(one, c + (int64_t)(m - 1) * ldc, sizeof(float) * (size_t)n) == 0,
                      "m %d: a row's logits depend on the other rows", m);
        free(one);
        free(a);
        free(b);
        free(c);
        free(c0);
    }
}

/* The streaming A B kernel (the LM head's backward with slow OpenBLAS kernels) against double
 * precision, column slices not a multiple of 32, rows not of 8, k not of its block. */
Test(kernels_cpu, gemm_nn_stream)
{
    if (!cpu_gemm_nn_stream_available())
        cr_skip_test("no AVX-512 here: the kernel is never chosen");
    int m = 11, n = 45, k = 700, lda = k + 3, ldb = n + 5, ldc = n + 1;
    for (int t = 0; t < 2; t++) {
        float beta = t ? 0.5f : 0.0f;
        float *a = rand_buf((int64_t)m * lda, 1), *b = rand_buf((int64_t)k * ldb, 1);
        float *c = rand_buf((int64_t)m * ldc, 1), *c0 = copy_buf(c, (int64_t)m * ldc);
        cpu_gemm_nn_stream(m, n, k, a, lda, b, ldb, beta, c, ldc);
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) {
                double s = beta * c0[(int64_t)i * ldc + j];
                for (int p = 0; p < k; p++)
                    s += (double)a[(int64_t)i * lda + p] * b[(int64_t)p * ldb + j];
                cr_assert(fabs(c[(int64_t)i * ldc + j] - s) < 1e-4, "beta %g (%d, %d): %g vs %g",
                          beta, i, j, c[(int64_t)i * ldc + j], s);
            }
        for (int i = 0; i < m; i++) /* the padding between rows is not written */
            cr_assert(c[(int64_t)i * ldc + n] == c0[(int64_t)i * ldc + n]);
        free(a);
        free(b);
        free(c);
        free(c0);
    }
}

/* ---- RMSNorm ---- */

Test(kernels_cpu, rmsnorm_forward_and_backward)
{
    int rows = 3, dim = 16;
    int64_t n = (int64_t)rows * dim;
    float *x = rand_buf(n, 2), *w = rand_buf(dim, 1), *y = xmalloc(sizeof(float) * n);
    float *rstd = xmalloc(sizeof(float) * rows), *dy = rand_buf(n, 1);
    float *dx = xmalloc(sizeof(float) * n);
    K->rmsnorm_fwd(y, rstd, x, w, rows, dim, 1e-6f);
    double *want = xmalloc(sizeof(double) * n);
    for (int r = 0; r < rows; r++) {
        double ss = 0;
        for (int c = 0; c < dim; c++)
            ss += (double)x[r * dim + c] * x[r * dim + c];
        double rs = 1.0 / sqrt(ss / dim + 1e-6);
        for (int c = 0; c < dim; c++)
            want[r * dim + c] = w[c] * x[r * dim + c] * rs;
    }
    cr_assert(max_rel(y, want, n) < 1e-6);

    /* backward against central differences of L = sum(dy * y) */
    K->rmsnorm_bwd(dx, dy, x, w, rstd, rows, dim);
    for (int64_t i = 0; i < n; i++) {
        float h = 1e-2f, keep = x[i];
        x[i] = keep + h;
        K->rmsnorm_fwd(y, rstd, x, w, rows, dim, 1e-6f);
        double lp = dot(dy, y, n);
        x[i] = keep - h;
        K->rmsnorm_fwd(y, rstd, x, w, rows, dim, 1e-6f);
        double lm = dot(dy, y, n);
        x[i] = keep;
        want[i] = (lp - lm) / (2 * h);
    }
    cr_assert(max_rel(dx, want, n) < 1e-3, "rmsnorm_bwd vs FD: %g", max_rel(dx, want, n));
    free(x); free(w); free(y); free(rstd); free(dy); free(dx); free(want);
}

/* ---- RoPE ---- */

Test(kernels_cpu, rope_matches_rotate_half_and_inverts)
{
    int T = 4, H = 3, D = 8;
    int64_t n = (int64_t)T * H * D;
    int32_t pos[4] = {0, 1, 7, 300};
    float *x = rand_buf(n, 1), *x0 = copy_buf(x, n);
    double *want = xmalloc(sizeof(double) * n);
    K->rope_fwd(x, pos, T, H, D, 10000.0f);
    for (int t = 0; t < T; t++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < D; i++) {
                int j = i % (D / 2);
                double ang = pos[t] * pow(10000.0, -2.0 * j / D);
                const float *v = x0 + (t * H + h) * D;
                double rot = i < D / 2 ? -v[i + D / 2] : v[i - D / 2];
                want[(t * H + h) * D + i] = v[i] * cos(ang) + rot * sin(ang);
            }
    cr_assert(max_rel(x, want, n) < 1e-5, "rope %g", max_rel(x, want, n));
    K->rope_bwd(x, pos, T, H, D, 10000.0f);
    cr_assert(max_rel_f(x, x0, n) < 1e-6, "rope_bwd is the inverse rotation");
    free(x); free(x0); free(want);
}

/* ---- attention ---- */

/* Naive attention in double: query i of segment s sees keys 0..nk-nq+i of its segment. */
static void attention_naive(double *out, const float *q, const float *k, const float *v,
                            const int32_t *cu_q, const int32_t *cu_k, int n_seg, int H, int KV,
                            int D, double scale)
{
    for (int s = 0; s < n_seg; s++) {
        int nq = cu_q[s + 1] - cu_q[s], nk = cu_k[s + 1] - cu_k[s];
        for (int h = 0; h < H; h++) {
            int g = h / (H / KV);
            for (int i = 0; i < nq; i++) {
                const float *qi = q + ((int64_t)(cu_q[s] + i) * H + h) * D;
                int vis = nk - nq + i + 1;
                double *sc = xmalloc(sizeof(double) * vis), mx = -1e300, sum = 0;
                for (int j = 0; j < vis; j++) {
                    const float *kj = k + ((int64_t)(cu_k[s] + j) * KV + g) * D;
                    sc[j] = 0;
                    for (int c = 0; c < D; c++)
                        sc[j] += (double)qi[c] * kj[c];
                    sc[j] *= scale;
                    mx = fmax(mx, sc[j]);
                }
                for (int j = 0; j < vis; j++)
                    sum += (sc[j] = exp(sc[j] - mx));
                double *o = out + ((int64_t)(cu_q[s] + i) * H + h) * D;
                for (int c = 0; c < D; c++) {
                    o[c] = 0;
                    for (int j = 0; j < vis; j++)
                        o[c] += sc[j] / sum * v[((int64_t)(cu_k[s] + j) * KV + g) * D + c];
                }
                free(sc);
            }
        }
    }
}

Test(kernels_cpu, attention_forward_packed_gqa)
{
    /* three segments, one longer than a 64-row query block */
    int H = 4, KV = 2, D = 8, T = 100;
    int32_t cu[4] = {0, 13, 13 + 70, 100};
    int64_t nq = (int64_t)T * H * D, nk = (int64_t)T * KV * D;
    float *q = rand_buf(nq, 1), *k = rand_buf(nk, 1), *v = rand_buf(nk, 1);
    float *out = xmalloc(sizeof(float) * nq), *lse = xmalloc(sizeof(float) * T * H);
    double *want = xmalloc(sizeof(double) * nq);
    K->attention_fwd(out, lse, q, k, v, cu, cu, 3, 70, H, KV, D, 0.35f);
    attention_naive(want, q, k, v, cu, cu, 3, H, KV, D, 0.35);
    cr_assert(max_rel(out, want, nq) < 1e-5, "attention %g", max_rel(out, want, nq));
    free(q); free(k); free(v); free(out); free(lse); free(want);
}

Test(kernels_cpu, attention_forward_with_cached_keys)
{
    /* prefill: 5 new queries after 9 cached keys (bottom-right causal alignment) */
    int H = 2, KV = 1, D = 4;
    int32_t cu_q[2] = {0, 5}, cu_k[2] = {0, 14};
    float *q = rand_buf(5 * H * D, 1), *k = rand_buf(14 * KV * D, 1), *v = rand_buf(14 * KV * D, 1);
    float *out = xmalloc(sizeof(float) * 5 * H * D);
    double *want = xmalloc(sizeof(double) * 5 * H * D);
    K->attention_fwd(out, NULL, q, k, v, cu_q, cu_k, 1, 5, H, KV, D, 0.5f);
    attention_naive(want, q, k, v, cu_q, cu_k, 1, H, KV, D, 0.5);
    cr_assert(max_rel(out, want, 5 * H * D) < 1e-5);
    free(q); free(k); free(v); free(out); free(want);
}

/* attention_fwd_rows: each row's keys in a cache of its own (NaN past its k_len), against the
 * naive reference on the packed keys, and bitwise equal to attention_fwd on them */
Test(kernels_cpu, attention_forward_rows_of_caches)
{
    int H = 4, KV = 2, D = 16, n = 4, kvd = KV * D;
    int32_t cu_q[5] = {0, 1, 6, 7, 77}, cu_k[5] = {0, 30, 36, 37, 177}, k_len[4];
    int Tq = cu_q[n], Tk = cu_k[n];
    float *q = rand_buf((int64_t)Tq * H * D, 1), *k = rand_buf((int64_t)Tk * kvd, 1);
    float *v = rand_buf((int64_t)Tk * kvd, 1);
    const float *k_rows[4], *v_rows[4];
    float *caches[8];
    for (int r = 0; r < n; r++) {
        k_len[r] = cu_k[r + 1] - cu_k[r];
        for (int j = 0; j < 2; j++) {
            float *c = xmalloc(sizeof(float) * (size_t)(k_len[r] + 5) * kvd);
            for (int64_t i = 0; i < (int64_t)(k_len[r] + 5) * kvd; i++)
                c[i] = NAN;
            memcpy(c, (j ? v : k) + (int64_t)cu_k[r] * kvd, sizeof(float) * k_len[r] * kvd);
            caches[2 * r + j] = c;
        }
        k_rows[r] = caches[2 * r];
        v_rows[r] = caches[2 * r + 1];
    }
    int64_t nq = (int64_t)Tq * H * D;
    float *out = xmalloc(sizeof(float) * nq), *packed = xmalloc(sizeof(float) * nq);
    double *want = xmalloc(sizeof(double) * nq);
    K->attention_fwd_rows(out, q, k_rows, v_rows, cu_q, k_len, n, 70, H, KV, D, 0.25f);
    K->attention_fwd(packed, NULL, q, k, v, cu_q, cu_k, n, 70, H, KV, D, 0.25f);
    attention_naive(want, q, k, v, cu_q, cu_k, n, H, KV, D, 0.25);
    cr_assert(max_rel(out, want, nq) < 1e-5, "rows vs naive %g", max_rel(out, want, nq));
    cr_assert(memcmp(out, packed, sizeof(float) * nq) == 0, "rows vs packed: not bitwise");
    for (int i = 0; i < 2 * n; i++)
        free(caches[i]);
    free(q); free(k); free(v); free(out); free(packed); free(want);
}

Test(kernels_cpu, attention_backward_vs_finite_differences)
{
    int H = 4, KV = 2, D = 4, T = 75;
    int32_t cu[3] = {0, 6, 75};
    int64_t nq = (int64_t)T * H * D, nk = (int64_t)T * KV * D;
    float *q = rand_buf(nq, 1), *k = rand_buf(nk, 1), *v = rand_buf(nk, 1), *r = rand_buf(nq, 1);
    float *out = xmalloc(sizeof(float) * nq), *lse = xmalloc(sizeof(float) * T * H);
    float *dq = xmalloc(sizeof(float) * nq), *dk = rand_buf(nk, 9), *dv = rand_buf(nk, 9);
    K->attention_fwd(out, lse, q, k, v, cu, cu, 2, 69, H, KV, D, 0.5f);
    K->attention_bwd(dq, dk, dv, r, q, k, v, out, lse, cu, cu, 2, 69, H, KV, D, 0.5f);

    /* L = sum(r * out); check a spread of entries of each input */
    float *ins[3] = {q, k, v}, *grads[3] = {dq, dk, dv};
    int64_t sizes[3] = {nq, nk, nk};
    double *o = xmalloc(sizeof(double) * nq);
    for (int which = 0; which < 3; which++)
        for (int64_t i = 0; i < sizes[which]; i += 37) {
            float keep = ins[which][i];
            double l[2];
            for (int sgn = 0; sgn < 2; sgn++) {
                ins[which][i] = keep + (sgn ? -1e-3f : 1e-3f);
                attention_naive(o, q, k, v, cu, cu, 2, H, KV, D, 0.5);
                l[sgn] = 0;
                for (int64_t j = 0; j < nq; j++)
                    l[sgn] += r[j] * o[j];
            }
            ins[which][i] = keep;
            double fd = (l[0] - l[1]) / 2e-3;
            cr_assert(fabs(grads[which][i] - fd) < 1e-3 * fmax(1.0, fabs(fd)),
                      "input %d elem %lld: %g vs FD %g", which, (long long)i, grads[which][i], fd);
        }
    free(q); free(k); free(v); free(r); free(out); free(lse); free(dq); free(dk); free(dv);
    free(o);
}

/* ---- SwiGLU ---- */

Test(kernels_cpu, swiglu_forward_and_backward)
{
    int64_t n = 40;
    float *g = rand_buf(n, 4), *u = rand_buf(n, 2), *h = xmalloc(sizeof(float) * n);
    float *dh = rand_buf(n, 1), *dg = xmalloc(sizeof(float) * n), *du = xmalloc(sizeof(float) * n);
    K->swiglu_fwd(h, g, u, n);
    K->swiglu_bwd(dg, du, dh, g, u, n);
    for (int64_t i = 0; i < n; i++) {
        double sg = 1 / (1 + exp(-(double)g[i]));
        cr_assert(fabs(h[i] - g[i] * sg * u[i]) < 1e-5);
        double e = 1e-3;
        double fd_g = ((g[i] + e) / (1 + exp(-(g[i] + e))) - (g[i] - e) / (1 + exp(-(g[i] - e)))) /
                      (2 * e) * u[i] * dh[i];
        cr_assert(fabs(dg[i] - fd_g) < 1e-4 * fmax(1, fabs(fd_g)), "dgate %g vs %g", dg[i], fd_g);
        cr_assert(fabs(du[i] - g[i] * sg * dh[i]) < 1e-5);
    }
    free(g); free(u); free(h); free(dh); free(dg); free(du);
}

/* Gates far into both tails (the vector sigmoid's exp never overflows), a length that is not a
 * multiple of 16 (the masked tail), against double precision. */
Test(kernels_cpu, swiglu_extreme_gates)
{
    static const float gates[] = {-1e4f, -100.0f, -88.5f, -30.0f, -1e-3f, 0.0f, 1e-3f, 30.0f,
                                  88.5f, 100.0f, 1e4f};
    int64_t n = 37;
    float g[37], u[37], h[37], dh[37], dg[37], du[37];
    for (int64_t i = 0; i < n; i++) {
        g[i] = gates[i % RB_ARRAY_LEN(gates)];
        u[i] = 0.5f + 0.01f * (float)i;
        dh[i] = 1.0f - 0.02f * (float)i;
    }
    K->swiglu_fwd(h, g, u, n);
    K->swiglu_bwd(dg, du, dh, g, u, n);
    for (int64_t i = 0; i < n; i++) {
        double sg = 1 / (1 + exp(-(double)g[i]));
        double want_h = g[i] * sg * u[i], want_du = dh[i] * g[i] * sg;
        double want_dg = dh[i] * u[i] * sg * (1 + g[i] * (1 - sg));
        cr_assert(isfinite(h[i]) && isfinite(dg[i]) && isfinite(du[i]), "gate %g", g[i]);
        cr_assert(fabs(h[i] - want_h) <= 1e-6 * fmax(1, fabs(want_h)), "h(%g) = %g, want %g",
                  g[i], h[i], want_h);
        cr_assert(fabs(du[i] - want_du) <= 1e-6 * fmax(1, fabs(want_du)), "gate %g", g[i]);
        cr_assert(fabs(dg[i] - want_dg) <= 1e-5 * fmax(1, fabs(want_dg)), "dgate(%g) = %g, want %g",
                  g[i], dg[i], want_dg);
    }
}

/* A NaN score is never softened into a finite output: the row of the head that saw it is NaN,
 * and the other head (another row of scores) is untouched. */
Test(kernels_cpu, attention_nan_propagates)
{
    int H = 2, KV = 1, D = 16, T = 20;
    int32_t cu[2] = {0, T};
    float *q = rand_buf((int64_t)T * H * D, 1), *k = rand_buf((int64_t)T * KV * D, 1);
    float *v = rand_buf((int64_t)T * KV * D, 1);
    float *out = xmalloc(sizeof(float) * T * H * D), *lse = xmalloc(sizeof(float) * T * H);
    q[(int64_t)7 * H * D + 3] = NAN; /* query 7, head 0 */
    K->attention_fwd(out, lse, q, k, v, cu, cu, 1, T, H, KV, D, 0.25f);
    for (int t = 0; t < T; t++)
        for (int h = 0; h < H; h++) {
            int bad = t == 7 && h == 0;
            float o = out[(int64_t)t * H * D + h * D];
            cr_assert(bad ? isnan(o) && isnan(lse[t * H + h]) : isfinite(o),
                      "query %d head %d: %g", t, h, o);
        }
    free(q); free(k); free(v); free(out); free(lse);
}

Test(kernels_cpu, lm_head_xent_nan_is_not_a_loss)
{
    int n = 2, dim = 16, V = 1000;
    int32_t tg[2] = {3, 999};
    float *hd = rand_buf((int64_t)n * dim, 1), *w = rand_buf((int64_t)V * dim, 1);
    float rl[2];
    w[(int64_t)500 * dim + 2] = NAN; /* one vocabulary row: every row's logit 500 is NaN */
    double loss = K->lm_head_xent(hd, w, tg, n, dim, V, 1.0f, rl, NULL);
    cr_assert(isnan(loss) && isnan(rl[0]) && isnan(rl[1]), "loss %g (%g, %g)", loss, rl[0],
              rl[1]);
    free(hd); free(w);
}

/* ---- LM head + cross-entropy ---- */

static double xent_naive(const float *hd, const float *w, const int32_t *tg, int n, int dim,
                         int V, double *row_loss)
{
    double total = 0;
    for (int i = 0; i < n; i++) {
        double *lg = xmalloc(sizeof(double) * V), mx = -1e300, s = 0;
        for (int j = 0; j < V; j++) {
            lg[j] = dot(hd + (int64_t)i * dim, w + (int64_t)j * dim, dim);
            mx = fmax(mx, lg[j]);
        }
        for (int j = 0; j < V; j++)
            s += exp(lg[j] - mx);
        double l = mx + log(s) - lg[tg[i]];
        if (row_loss)
            row_loss[i] = l;
        total += l;
        free(lg);
    }
    return total;
}

Test(kernels_cpu, lm_head_xent_loss_and_gradient)
{
    int n = 5, dim = 12, V = 300;
    int32_t tg[5] = {0, 299, 17, 17, 150};
    float *hd = rand_buf((int64_t)n * dim, 1), *w = rand_buf((int64_t)V * dim, 1);
    float *rl = xmalloc(sizeof(float) * n), *dh = xmalloc(sizeof(float) * n * dim);
    double want_rows[5];
    double loss = K->lm_head_xent(hd, w, tg, n, dim, V, 0.25f, rl, dh);
    double want = xent_naive(hd, w, tg, n, dim, V, want_rows);
    cr_assert(fabs(loss - want) < 1e-5 * fabs(want), "loss %g vs %g", loss, want);
    cr_assert(max_rel(rl, want_rows, n) < 1e-5);
    for (int64_t i = 0; i < (int64_t)n * dim; i++) {
        float keep = hd[i];
        hd[i] = keep + 1e-3f;
        double lp = xent_naive(hd, w, tg, n, dim, V, NULL);
        hd[i] = keep - 1e-3f;
        double lm = xent_naive(hd, w, tg, n, dim, V, NULL);
        hd[i] = keep;
        double fd = 0.25 * (lp - lm) / 2e-3;
        cr_assert(fabs(dh[i] - fd) < 1e-4 * fmax(1, fabs(fd)), "dh %g vs FD %g", dh[i], fd);
    }
    /* no gradient asked: same loss */
    cr_assert(K->lm_head_xent(hd, w, tg, n, dim, V, 1.0f, NULL, NULL) == loss);
    free(hd); free(w); free(rl); free(dh);
}

/* A vocabulary that is not a multiple of the vector width and logits spread over +-40 (the
 * exp of the vectorized path far into its range, and underflowing terms). */
Test(kernels_cpu, lm_head_xent_wide_logits)
{
    int n = 3, dim = 16, V = 1037;
    int32_t tg[3] = {5, 1036, 700};
    float *hd = rand_buf((int64_t)n * dim, 4), *w = rand_buf((int64_t)V * dim, 2);
    float *rl = xmalloc(sizeof(float) * n), *dh = xmalloc(sizeof(float) * n * dim);
    double want_rows[3];
    double loss = K->lm_head_xent(hd, w, tg, n, dim, V, 1.0f, rl, dh);
    double want = xent_naive(hd, w, tg, n, dim, V, want_rows);
    cr_assert(fabs(loss - want) < 1e-5 * fabs(want), "loss %g vs %g", loss, want);
    cr_assert(max_rel(rl, want_rows, n) < 1e-5);

    /* dh = (softmax - onehot) W, from double-precision probabilities */
    for (int i = 0; i < n; i++) {
        double *p = xmalloc(sizeof(double) * V), mx = -1e300, s = 0;
        for (int j = 0; j < V; j++) {
            p[j] = dot(hd + (int64_t)i * dim, w + (int64_t)j * dim, dim);
            mx = fmax(mx, p[j]);
        }
        for (int j = 0; j < V; j++)
            s += (p[j] = exp(p[j] - mx));
        for (int c = 0; c < dim; c++) {
            double g = -w[(int64_t)tg[i] * dim + c];
            for (int j = 0; j < V; j++)
                g += p[j] / s * w[(int64_t)j * dim + c];
            cr_assert(fabs(dh[(int64_t)i * dim + c] - g) < 1e-5 * fmax(1, fabs(g)),
                      "row %d col %d: dh %g vs %g", i, c, dh[(int64_t)i * dim + c], g);
        }
        free(p);
    }
    free(hd); free(w); free(rl); free(dh);
}

/* ---- LoRA and dropout ---- */

/* L = sum(R * y) with y = x W0 + scale * drop(x) A^T B^T, as a function of x, A and B. */
static double lora_loss(const float *x, const float *a, const float *b, const float *r, int T,
                        int in, int out, int rk, float scale, float p, uint64_t seed)
{
    float *y = xcalloc((size_t)T * out, sizeof(float)), *u = xmalloc(sizeof(float) * T * rk);
    K->lora_fwd(y, out, u, x, a, b, T, in, out, rk, scale, p, seed);
    double l = dot(r, y, (int64_t)T * out);
    free(y);
    free(u);
    return l;
}

static void check_lora(float p)
{
    int T = 6, in = 10, out = 7, rk = 3;
    float scale = 2.0f;
    uint64_t seed = 99;
    float *x = rand_buf(T * in, 1), *a = rand_buf(rk * in, 1), *b = rand_buf(out * rk, 1);
    float *r = rand_buf(T * out, 1), *y = xcalloc((size_t)T * out, sizeof(float));
    float *u = xmalloc(sizeof(float) * T * rk), *tmp = xmalloc(sizeof(float) * T * rk);
    float *dx = xcalloc((size_t)T * in, sizeof(float));
    float *da = xcalloc((size_t)rk * in, sizeof(float));
    float *db = xcalloc((size_t)out * rk, sizeof(float));
    K->lora_fwd(y, out, u, x, a, b, T, in, out, rk, scale, p, seed);
    K->lora_bwd(dx, da, db, r, out, u, x, a, b, T, in, out, rk, scale, p, seed, tmp);

    float *ins[3] = {x, a, b}, *grads[3] = {dx, da, db};
    int64_t sizes[3] = {(int64_t)T * in, (int64_t)rk * in, (int64_t)out * rk};
    for (int which = 0; which < 3; which++)
        for (int64_t i = 0; i < sizes[which]; i++) {
            float keep = ins[which][i];
            ins[which][i] = keep + 1e-2f;
            double lp = lora_loss(x, a, b, r, T, in, out, rk, scale, p, seed);
            ins[which][i] = keep - 1e-2f;
            double lm = lora_loss(x, a, b, r, T, in, out, rk, scale, p, seed);
            ins[which][i] = keep;
            double fd = (lp - lm) / 2e-2;
            cr_assert(fabs(grads[which][i] - fd) < 2e-3 * fmax(1, fabs(fd)),
                      "p %g input %d elem %lld: %g vs FD %g", p, which, (long long)i,
                      grads[which][i], fd);
        }
    free(x); free(a); free(b); free(r); free(y); free(u); free(tmp); free(dx); free(da); free(db);
}

Test(kernels_cpu, lora_backward_vs_finite_differences) { check_lora(0.0f); }
Test(kernels_cpu, lora_with_dropout_backward_vs_finite_differences) { check_lora(0.3f); }

Test(kernels_cpu, dropout_mask_is_seeded)
{
    int64_t n = 100000;
    float *x = xmalloc(sizeof(float) * n), *a = xmalloc(sizeof(float) * n);
    float *b = xmalloc(sizeof(float) * n);
    for (int64_t i = 0; i < n; i++)
        x[i] = 1.0f;
    K->dropout(a, x, n, 0.25f, 7);
    K->dropout(b, x, n, 0.25f, 7);
    cr_assert(memcmp(a, b, sizeof(float) * n) == 0, "same seed, same mask");
    int64_t kept = 0;
    for (int64_t i = 0; i < n; i++) {
        cr_assert(a[i] == 0.0f || fabsf(a[i] - 1.0f / 0.75f) < 1e-6f);
        kept += a[i] != 0.0f;
    }
    cr_assert(fabs((double)kept / n - 0.75) < 0.01, "kept fraction %g", (double)kept / n);
    K->dropout(b, x, n, 0.25f, 8);
    cr_assert(memcmp(a, b, sizeof(float) * n) != 0, "another seed, another mask");
    free(x); free(a); free(b);
}

/* ---- rows, residual, reductions ---- */

Test(kernels_cpu, embedding_gather_scatter_add)
{
    float table[4 * 3] = {0, 1, 2, 10, 11, 12, 20, 21, 22, 30, 31, 32};
    uint32_t tok[3] = {3, 0, 3};
    float out[9];
    K->embedding(out, table, tok, 3, 3);
    cr_assert(out[0] == 30 && out[4] == 1 && out[8] == 32);
    int32_t idx[2] = {2, 0};
    float g[6];
    K->gather_rows(g, table, idx, 2, 3);
    cr_assert(g[0] == 20 && g[5] == 2);
    float acc[12] = {0};
    K->scatter_add_rows(acc, g, idx, 2, 3);
    K->scatter_add_rows(acc, g, idx, 2, 3);
    cr_assert(acc[6] == 40 && acc[2] == 4 && acc[3] == 0);
    float y[3] = {1, 2, 3};
    K->add(y, out, 3);
    K->axpy(3, 2.0f, out, y);
    cr_assert(y[0] == 91 && y[2] == 99);
    K->add_bias(out, y, 3, 3);
    cr_assert(out[3] == 91);
    cr_assert(fabs(K->sumsq(3, y) - (91.0 * 91 + 95.0 * 95 + 99.0 * 99)) < 1e-9);
}

/* append_rows: each segment's rows land after its `end - count` cached rows; nothing else of
 * the destinations is written */
Test(kernels_cpu, append_rows_after_each_cache)
{
    int dim = 3, cap = 6;
    float src[7 * 3];
    for (int i = 0; i < 7 * 3; i++)
        src[i] = (float)i;
    int32_t cu[4] = {0, 2, 2, 7}, end[3] = {5, 1, 5};
    float dst[3][6 * 3];
    float *rows[3] = {dst[0], dst[1], dst[2]};
    for (int s = 0; s < 3; s++)
        for (int i = 0; i < cap * dim; i++)
            dst[s][i] = -1.0f;
    K->append_rows(rows, src, cu, end, 3, 7, dim);
    for (int s = 0; s < 3; s++) {
        int n = cu[s + 1] - cu[s], first = end[s] - n;
        for (int r = 0; r < cap; r++)
            for (int c = 0; c < dim; c++) {
                float want = r >= first && r < end[s]
                                 ? src[(cu[s] + r - first) * dim + c] : -1.0f;
                cr_assert_eq(dst[s][r * dim + c], want, "segment %d row %d col %d", s, r, c);
            }
    }
}

Test(kernels_cpu, sumsq_large_is_chunk_ordered)
{
    int64_t n = 300001;
    float *x = rand_buf(n, 1);
    double want = 0;
    for (int64_t i = 0; i < n; i++)
        want += (double)x[i] * x[i];
    double got = K->sumsq(n, x);
    cr_assert(fabs(got - want) < 1e-9 * want);
    cr_assert(K->sumsq(n, x) == got, "deterministic");
    free(x);
}

/* ---- AdamW ---- */

Test(kernels_cpu, adamw_matches_torch_formula)
{
    int64_t n = 50;
    float *p = rand_buf(n, 1), *m = rand_buf(n, 0.1f), *v = rand_buf(n, 0.01f), *g = rand_buf(n, 1);
    for (int64_t i = 0; i < n; i++)
        v[i] = fabsf(v[i]);
    double *want = xmalloc(sizeof(double) * n);
    double lr = 1e-3, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.1;
    int64_t step = 3;
    for (int64_t i = 0; i < n; i++) {
        double pp = p[i] * (1 - lr * wd);
        double mm = b1 * m[i] + (1 - b1) * g[i], vv = b2 * v[i] + (1 - b2) * (double)g[i] * g[i];
        double den = sqrt(vv) / sqrt(1 - pow(b2, step)) + eps;
        want[i] = pp - lr / (1 - pow(b1, step)) * mm / den;
    }
    adamw_scalars sc = adamw_scalars_at(lr, b1, b2, eps, wd, step);
    K->adamw(p, g, m, v, n, &sc);
    cr_assert(max_rel(p, want, n) < 1e-6, "adamw %g", max_rel(p, want, n));
    free(p); free(m); free(v); free(g); free(want);
}

/* ---- NF4 ---- */

Test(kernels_cpu, nf4_dequant_rows_matches_nf4_module)
{
    int64_t rows = 9, cols = 50, n = rows * cols; /* blocks straddle rows; last block partial */
    float *w = rand_buf(n, 3);
    nf4_tensor q;
    cr_assert_eq(nf4_quantize(w, n, 1, &q), 0);
    float *absmax = xmalloc(sizeof(float) * q.n_blocks);
    for (int64_t b = 0; b < q.n_blocks; b++)
        absmax[b] = nf4_block_absmax(&q, b);
    kernel_nf4_weight kw = {q.codes, absmax, rows, cols, 64};
    float *want = xmalloc(sizeof(float) * n), *got = xmalloc(sizeof(float) * n);
    nf4_dequantize(&q, 0, n, want);
    K->nf4_dequant_rows(got, &kw, 0, rows);
    cr_assert(memcmp(got, want, sizeof(float) * n) == 0, "whole weight");
    K->nf4_dequant_rows(got, &kw, 3, 4);
    cr_assert(memcmp(got, want + 3 * cols, sizeof(float) * 4 * cols) == 0, "a tile of rows");
    nf4_free(&q);
    free(w); free(absmax); free(want); free(got);
}

Test(kernels_cpu, select_backend)
{
    cr_assert_eq(kernel_ops_select("cpu"), kernel_ops_cpu());
    cr_assert_not_null(kernel_ops_select("auto"));
    cr_assert_null(kernel_ops_select("tpu"));
    cr_assert(strstr(err_msg(), "tpu"));
}

/* The table's AdamW and worker/adamw.h's (what ZeRO runs) are the same arithmetic: bitwise. */
Test(kernels_cpu, adamw_matches_adamw_module)
{
    int64_t n = 1000;
    float *p = rand_buf(n, 1), *g = rand_buf(n, 1), *m = xcalloc((size_t)n, sizeof(float));
    float *v = xcalloc((size_t)n, sizeof(float)), *p2 = copy_buf(p, n);
    float *m2 = xcalloc((size_t)n, sizeof(float)), *v2 = xcalloc((size_t)n, sizeof(float));
    adamw_hparams h = {0.9, 0.999, 1e-8, 0.01};
    for (int64_t step = 1; step <= 3; step++) {
        adamw_scalars sc = adamw_scalars_at(1e-2, 0.9, 0.999, 1e-8, 0.01, step);
        K->adamw(p, g, m, v, n, &sc);
        adamw_step(p2, g, m2, v2, n, step, 1e-2, &h);
    }
    cr_assert(memcmp(p, p2, sizeof(float) * (size_t)n) == 0, "adamw op vs adamw_step: %g",
              max_rel_f(p, p2, n));
    cr_assert(memcmp(m, m2, sizeof(float) * (size_t)n) == 0 &&
              memcmp(v, v2, sizeof(float) * (size_t)n) == 0, "moments differ");
    free(p); free(g); free(m); free(v); free(p2); free(m2); free(v2);
}
