/*
 * test_kernels_staged.c: the "cpu-staged" test backend (kernels/cpu/cpu_staged.c). Its buffers
 * are guarded: alloc's address is not the memory, a host dereference faults, a host pointer
 * given to an op is refused; and its ops, fed through upload and read back through download,
 * give bitwise the CPU table's results on host buffers (NULL optional outputs included).
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "nf4.h"
#include "ops.h"
#include "util.h"
#include "test_rand.h"


static const kernel_ops *K, *S;

static void setup(void)
{
    K = kernel_ops_cpu();
    S = kernel_ops_select("cpu-staged");
}

TestSuite(kernels_staged, .init = setup);

/* ---- helpers ---- */

static uint64_t rng_state = 777;

static float *rand_buf(int64_t n, float scale)
{
    float *v = xmalloc(sizeof(float) * (size_t)(n ? n : 1));
    for (int64_t i = 0; i < n; i++)
        v[i] = scale * test_frand(&rng_state);
    return v;
}

/* A staged buffer holding `bytes` of host data. */
static void *up(const void *host, size_t bytes)
{
    void *d = S->alloc(bytes);
    S->upload(d, host, bytes);
    return d;
}

/* The staged buffer's `bytes`, downloaded into fresh host memory. */
static void *down(const void *d, size_t bytes)
{
    void *h = xmalloc(bytes ? bytes : 1);
    S->download(h, d, bytes);
    return h;
}

/* The staged buffer's contents equal host buffer `want` bit for bit. */
static int same(const void *d, const void *want, size_t bytes)
{
    void *h = down(d, bytes);
    int eq = memcmp(h, want, bytes) == 0;
    free(h);
    return eq;
}

/* x86-64 canonical form: bits 63..47 all equal (LA57 / aarch64: see cpu_staged.c). */
static int canonical(const void *p)
{
    uint64_t top = (uint64_t)(uintptr_t)p >> 47;
    return top == 0 || top == (1ULL << 17) - 1;
}

/* ---- the guard ---- */

Test(kernels_staged, alloc_returns_a_guarded_address)
{
    cr_assert_not_null(S);
    cr_assert_str_eq(S->name, "cpu-staged");
    cr_assert_eq(S->host_memory, 0);
    float host[16];
    for (int i = 0; i < 16; i++)
        host[i] = (float)i;
    float *d = up(host, sizeof host);
    cr_assert_not_null(d);
    cr_assert(!canonical(d), "%p is an address the host could dereference", (void *)d);
    cr_assert(!canonical(d + 15), "an interior pointer too");
    void *heap = malloc(64); /* a real host address is canonical */
    cr_assert(canonical(heap));
    free(heap);
    cr_assert(same(d, host, sizeof host), "upload / download round trip");

    /* interior pointers translate: copy the second half over the first, zero the tail */
    S->copy(d, d + 8, 8 * sizeof(float));
    S->memset0(d + 12, 4 * sizeof(float));
    float want[16];
    for (int i = 0; i < 16; i++)
        want[i] = i < 8 ? (float)(i + 8) : i < 12 ? (float)i : 0.0f;
    cr_assert(same(d, want, sizeof want));
    S->free(d);
    S->free(NULL);
}

/* Under AddressSanitizer the fault is ASan's report (then abort or exit 1, as ASAN_OPTIONS
 * say), not a plain SIGSEGV: the two fault checks run in the ordinary builds only. */
#if defined(__SANITIZE_ADDRESS__)
#define FAULT_TEST_DISABLED 1
#else
#define FAULT_TEST_DISABLED 0
#endif

Test(kernels_staged, host_read_of_a_backend_pointer_faults, .signal = SIGSEGV,
     .disabled = FAULT_TEST_DISABLED)
{
    float *d = S->alloc(64);
    volatile float x = *(volatile float *)d;
    (void)x;
}

Test(kernels_staged, host_memcpy_into_a_backend_pointer_faults, .signal = SIGSEGV,
     .disabled = FAULT_TEST_DISABLED)
{
    float host[16] = {1};
    void *d = S->alloc(sizeof host);
    void *volatile dst = d; /* hide it from the optimizer */
    memcpy(dst, host, sizeof host);
}

Test(kernels_staged, op_given_a_host_pointer_dies, .exit_code = RB_EXIT_RUNTIME)
{
    float host[8] = {0};
    S->scale(8, 2.0f, host);
}

Test(kernels_staged, upload_from_a_backend_pointer_dies, .exit_code = RB_EXIT_RUNTIME)
{
    void *a = S->alloc(64), *b = S->alloc(64);
    S->upload(a, b, 64);
}

/* ---- ops: staged == cpu, bitwise ---- */

Test(kernels_staged, gemm)
{
    int m = 7, n = 5, k = 9;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            int lda = (ta ? m : k) + 2, ldb = (tb ? k : n) + 1, ldc = n + 3;
            size_t na = (size_t)(ta ? k : m) * lda, nb = (size_t)(tb ? n : k) * ldb;
            size_t nc = (size_t)m * ldc;
            float *a = rand_buf(na, 1), *b = rand_buf(nb, 1), *c = rand_buf(nc, 1);
            float *da = up(a, na * 4), *db = up(b, nb * 4), *dc = up(c, nc * 4);
            K->gemm(ta, tb, m, n, k, 0.5f, a, lda, b, ldb, 2.0f, c, ldc);
            S->gemm(ta, tb, m, n, k, 0.5f, da, lda, db, ldb, 2.0f, dc, ldc);
            cr_assert(same(dc, c, nc * 4), "ta %d tb %d", ta, tb);
            /* a sub-matrix through an interior pointer (row 1 of A and C) */
            K->gemm(0, 1, 2, 3, 4, 1.0f, a + lda, lda, b, ldb, 0.0f, c + ldc, ldc);
            S->gemm(0, 1, 2, 3, 4, 1.0f, da + lda, lda, db, ldb, 0.0f, dc + ldc, ldc);
            cr_assert(same(dc, c, nc * 4), "interior pointers, ta %d tb %d", ta, tb);
            S->free(da); S->free(db); S->free(dc);
            free(a); free(b); free(c);
        }
}

Test(kernels_staged, rmsnorm_fwd_and_bwd)
{
    int rows = 5, dim = 24;
    size_t n = (size_t)rows * dim;
    float *x = rand_buf(n, 2), *w = rand_buf(dim, 1), *dy = rand_buf(n, 1);
    float *y = xcalloc(n, 4), *rstd = xcalloc(rows, 4), *dx = xcalloc(n, 4);
    float *sx = up(x, n * 4), *sw = up(w, dim * 4), *sdy = up(dy, n * 4);
    float *sy = S->alloc(n * 4), *srstd = S->alloc(rows * 4), *sdx = S->alloc(n * 4);
    K->rmsnorm_fwd(y, rstd, x, w, rows, dim, 1e-6f);
    S->rmsnorm_fwd(sy, srstd, sx, sw, rows, dim, 1e-6f);
    cr_assert(same(sy, y, n * 4) && same(srstd, rstd, rows * 4));
    K->rmsnorm_bwd(dx, dy, x, w, rstd, rows, dim);
    S->rmsnorm_bwd(sdx, sdy, sx, sw, srstd, rows, dim);
    cr_assert(same(sdx, dx, n * 4));
    S->free(sx); S->free(sw); S->free(sdy); S->free(sy); S->free(srstd); S->free(sdx);
    free(x); free(w); free(dy); free(y); free(rstd); free(dx);
}

Test(kernels_staged, embedding_gather_scatter_with_index_arrays)
{
    int vocab = 40, dim = 8, n = 6;
    uint32_t tok[6] = {3, 39, 0, 3, 17, 8};
    int32_t idx[6] = {5, 1, 0, 7, 2, 9};
    float *table = rand_buf((int64_t)vocab * dim, 1);
    float *out = xcalloc((size_t)n * dim, 4), *acc = xcalloc((size_t)vocab * dim, 4);
    float *st = up(table, (size_t)vocab * dim * 4), *sout = S->alloc((size_t)n * dim * 4);
    float *sacc = S->alloc((size_t)vocab * dim * 4);
    uint32_t *stok = up(tok, sizeof tok);
    int32_t *sidx = up(idx, sizeof idx);
    K->embedding(out, table, tok, n, dim);
    S->embedding(sout, st, stok, n, dim);
    cr_assert(same(sout, out, (size_t)n * dim * 4), "embedding");
    K->gather_rows(out, table, idx, n, dim);
    S->gather_rows(sout, st, sidx, n, dim);
    cr_assert(same(sout, out, (size_t)n * dim * 4), "gather_rows");
    K->scatter_add_rows(acc, out, idx, n, dim);
    S->scatter_add_rows(sacc, sout, sidx, n, dim);
    cr_assert(same(sacc, acc, (size_t)vocab * dim * 4), "scatter_add_rows");
    S->free(st); S->free(sout); S->free(sacc); S->free(stok); S->free(sidx);
    free(table); free(out); free(acc);
}

Test(kernels_staged, lm_head_xent_with_and_without_outputs)
{
    int n = 5, dim = 12, V = 300;
    int32_t tg[5] = {0, 299, 17, 17, 150};
    size_t nh = (size_t)n * dim, nw = (size_t)V * dim;
    float *hd = rand_buf(nh, 1), *w = rand_buf(nw, 1);
    float *rl = xcalloc(n, 4), *dh = xcalloc(nh, 4);
    float *shd = up(hd, nh * 4), *sw = up(w, nw * 4), *srl = S->alloc(n * 4);
    float *sdh = S->alloc(nh * 4);
    int32_t *stg = up(tg, sizeof tg);
    double want = K->lm_head_xent(hd, w, tg, n, dim, V, 0.25f, rl, dh);
    double got = S->lm_head_xent(shd, sw, stg, n, dim, V, 0.25f, srl, sdh);
    cr_assert(memcmp(&got, &want, sizeof got) == 0, "loss %.17g vs %.17g", got, want);
    cr_assert(same(srl, rl, n * 4) && same(sdh, dh, nh * 4));
    double got0 = S->lm_head_xent(shd, sw, stg, n, dim, V, 1.0f, NULL, NULL);
    cr_assert(memcmp(&got0, &want, sizeof got0) == 0, "NULL outputs: same loss");
    S->free(shd); S->free(sw); S->free(srl); S->free(sdh); S->free(stg);
    free(hd); free(w); free(rl); free(dh);
}

Test(kernels_staged, attention_with_cu_seqlens)
{
    int H = 4, KV = 2, D = 8, T = 100;
    int32_t cu[4] = {0, 13, 83, 100};
    size_t nq = (size_t)T * H * D, nk = (size_t)T * KV * D, nl = (size_t)T * H;
    float *q = rand_buf(nq, 1), *k = rand_buf(nk, 1), *v = rand_buf(nk, 1);
    float *out = xcalloc(nq, 4), *lse = xcalloc(nl, 4);
    float *sq = up(q, nq * 4), *sk = up(k, nk * 4), *sv = up(v, nk * 4);
    float *sout = S->alloc(nq * 4), *slse = S->alloc(nl * 4);
    int32_t *scu = up(cu, sizeof cu);
    K->attention_fwd(out, lse, q, k, v, cu, cu, 3, 70, H, KV, D, 0.35f);
    S->attention_fwd(sout, slse, sq, sk, sv, scu, scu, 3, 70, H, KV, D, 0.35f);
    cr_assert(same(sout, out, nq * 4) && same(slse, lse, nl * 4));
    S->attention_fwd(sout, NULL, sq, sk, sv, scu, scu, 3, 70, H, KV, D, 0.35f);
    cr_assert(same(sout, out, nq * 4), "lse NULL");
    S->free(sq); S->free(sk); S->free(sv); S->free(sout); S->free(slse); S->free(scu);
    free(q); free(k); free(v); free(out); free(lse);
}

/* attention_fwd_rows: the arrays of cache pointers are backend memory holding backend
 * pointers; a host pointer among them is refused like any other */
Test(kernels_staged, attention_fwd_rows_pointer_arrays)
{
    int H = 4, KV = 2, D = 8, kvd = KV * D;
    int32_t cu_q[3] = {0, 1, 9}, k_len[2] = {20, 40};
    size_t nq = (size_t)9 * H * D;
    float *q = rand_buf(nq, 1), *out = xcalloc(nq, 4);
    float *k[2], *v[2], *sk[2], *sv[2];
    for (int r = 0; r < 2; r++) {
        k[r] = rand_buf((size_t)k_len[r] * kvd, 1);
        v[r] = rand_buf((size_t)k_len[r] * kvd, 1);
        sk[r] = up(k[r], (size_t)k_len[r] * kvd * 4);
        sv[r] = up(v[r], (size_t)k_len[r] * kvd * 4);
    }
    const float *kr[2] = {k[0], k[1]}, *vr[2] = {v[0], v[1]};
    K->attention_fwd_rows(out, q, kr, vr, cu_q, k_len, 2, 8, H, KV, D, 0.35f);
    float *sq = up(q, nq * 4), *sout = S->alloc(nq * 4);
    int32_t *scu = up(cu_q, sizeof cu_q), *slen = up(k_len, sizeof k_len);
    const float *const *skr = up(sk, sizeof sk), *const *svr = up(sv, sizeof sv);
    S->attention_fwd_rows(sout, sq, skr, svr, scu, slen, 2, 8, H, KV, D, 0.35f);
    cr_assert(same(sout, out, nq * 4), "attention_fwd_rows through the staged backend");
    S->free(sq); S->free(sout); S->free(scu); S->free(slen);
    S->free((void *)skr); S->free((void *)svr);
    for (int r = 0; r < 2; r++) {
        S->free(sk[r]); S->free(sv[r]); free(k[r]); free(v[r]);
    }
    free(q); free(out);
}

Test(kernels_staged, append_rows_pointer_array)
{
    int dim = 5, cap = 9;
    size_t ns = (size_t)6 * dim, nd = (size_t)cap * dim;
    float *src = rand_buf(ns, 1), *d0 = rand_buf(nd, 1), *d1 = rand_buf(nd, 1);
    int32_t cu[3] = {0, 4, 6}, end[2] = {7, 2};
    float *sd0 = up(d0, nd * 4), *sd1 = up(d1, nd * 4), *ssrc = up(src, ns * 4);
    float *rows[2] = {d0, d1}, *srows_h[2] = {sd0, sd1};
    K->append_rows(rows, src, cu, end, 2, 6, dim);
    float *const *srows = up(srows_h, sizeof srows_h);
    int32_t *scu = up(cu, sizeof cu), *send = up(end, sizeof end);
    S->append_rows(srows, ssrc, scu, send, 2, 6, dim);
    cr_assert(same(sd0, d0, nd * 4) && same(sd1, d1, nd * 4), "append_rows through staged");
    S->free(sd0); S->free(sd1); S->free(ssrc); S->free((void *)srows); S->free(scu);
    S->free(send);
    free(src); free(d0); free(d1);
}

Test(kernels_staged, attention_fwd_rows_host_pointer_in_array_dies, .exit_code = RB_EXIT_RUNTIME)
{
    int H = 2, KV = 1, D = 8;
    int32_t cu_q[2] = {0, 1}, k_len[1] = {4};
    float *k = rand_buf(4 * KV * D, 1), *q = rand_buf(H * D, 1);
    float *sk = up(k, sizeof(float) * 4 * KV * D), *sq = up(q, sizeof(float) * H * D);
    const float *host_rows[1] = {k}, *dev_rows[1] = {sk};
    const float *const *bad = up(host_rows, sizeof host_rows);
    const float *const *good = up(dev_rows, sizeof dev_rows);
    float *sout = S->alloc(sizeof(float) * H * D);
    int32_t *scu = up(cu_q, sizeof cu_q), *slen = up(k_len, sizeof k_len);
    S->attention_fwd_rows(sout, sq, bad, good, scu, slen, 1, 1, H, KV, D, 0.35f);
}

Test(kernels_staged, lora_bwd_with_and_without_dx)
{
    int T = 6, in = 10, out = 7, rk = 3;
    size_t nx = (size_t)T * in, na = (size_t)rk * in, nb = (size_t)out * rk;
    size_t ny = (size_t)T * out, nu = (size_t)T * rk;
    float *x = rand_buf(nx, 1), *a = rand_buf(na, 1), *b = rand_buf(nb, 1), *dy = rand_buf(ny, 1);
    float *y = xcalloc(ny, 4), *u = xcalloc(nu, 4), *tmp = xcalloc(nu, 4);
    float *dx = xcalloc(nx, 4), *da = xcalloc(na, 4), *db = xcalloc(nb, 4);
    float *sx = up(x, nx * 4), *sa = up(a, na * 4), *sb = up(b, nb * 4), *sdy = up(dy, ny * 4);
    float *sy = S->alloc(ny * 4), *su = S->alloc(nu * 4), *stmp = S->alloc(nu * 4);
    float *sdx = S->alloc(nx * 4), *sda = S->alloc(na * 4), *sdb = S->alloc(nb * 4);
    K->lora_fwd(y, out, u, x, a, b, T, in, out, rk, 2.0f, 0.3f, 99);
    S->lora_fwd(sy, out, su, sx, sa, sb, T, in, out, rk, 2.0f, 0.3f, 99);
    cr_assert(same(sy, y, ny * 4) && same(su, u, nu * 4), "lora_fwd");
    K->lora_bwd(dx, da, db, dy, out, u, x, a, b, T, in, out, rk, 2.0f, 0.3f, 99, tmp);
    S->lora_bwd(sdx, sda, sdb, sdy, out, su, sx, sa, sb, T, in, out, rk, 2.0f, 0.3f, 99, stmp);
    cr_assert(same(sdx, dx, nx * 4) && same(sda, da, na * 4) && same(sdb, db, nb * 4));
    K->lora_bwd(NULL, da, db, dy, out, u, x, a, b, T, in, out, rk, 2.0f, 0.3f, 99, tmp);
    S->lora_bwd(NULL, sda, sdb, sdy, out, su, sx, sa, sb, T, in, out, rk, 2.0f, 0.3f, 99, stmp);
    cr_assert(same(sda, da, na * 4) && same(sdb, db, nb * 4), "dx NULL");
    S->free(sx); S->free(sa); S->free(sb); S->free(sdy); S->free(sy); S->free(su);
    S->free(stmp); S->free(sdx); S->free(sda); S->free(sdb);
    free(x); free(a); free(b); free(dy); free(y); free(u); free(tmp); free(dx); free(da);
    free(db);
}

Test(kernels_staged, adamw_and_sumsq)
{
    int64_t n = 1000;
    size_t bytes = (size_t)n * 4;
    float *p = rand_buf(n, 1), *g = rand_buf(n, 1), *m = rand_buf(n, 0.1f), *v = rand_buf(n, 0.01f);
    for (int64_t i = 0; i < n; i++)
        v[i] = v[i] < 0 ? -v[i] : v[i];
    float *sp = up(p, bytes), *sg = up(g, bytes), *sm = up(m, bytes), *sv = up(v, bytes);
    for (int64_t step = 1; step <= 3; step++) {
        adamw_scalars sc = adamw_scalars_at(1e-2, 0.9, 0.999, 1e-8, 0.01, step); /* host */
        K->adamw(p, g, m, v, n, &sc);
        S->adamw(sp, sg, sm, sv, n, &sc);
    }
    cr_assert(same(sp, p, bytes) && same(sm, m, bytes) && same(sv, v, bytes));
    double a = K->sumsq(n, p), b = S->sumsq(n, sp);
    cr_assert(memcmp(&a, &b, sizeof a) == 0, "sumsq %.17g vs %.17g", b, a);
    S->free(sp); S->free(sg); S->free(sm); S->free(sv);
    free(p); free(g); free(m); free(v);
}

Test(kernels_staged, nf4_dequant_rows)
{
    int64_t rows = 9, cols = 50, n = rows * cols; /* blocks straddle rows; last block partial */
    float *w = rand_buf(n, 3);
    nf4_tensor q;
    cr_assert_eq(nf4_quantize(w, n, 1, &q), 0);
    float *absmax = xmalloc(sizeof(float) * q.n_blocks);
    for (int64_t b = 0; b < q.n_blocks; b++)
        absmax[b] = nf4_block_absmax(&q, b);
    size_t n_codes = (size_t)(n + 1) / 2, n_abs = (size_t)q.n_blocks * 4;
    kernel_nf4_weight kw = {q.codes, absmax, rows, cols, 64};
    kernel_nf4_weight sw = {up(q.codes, n_codes), up(absmax, n_abs), rows, cols, 64};
    float *got = xcalloc((size_t)n, 4), *sgot = S->alloc((size_t)n * 4);
    K->nf4_dequant_rows(got, &kw, 0, rows);
    S->nf4_dequant_rows(sgot, &sw, 0, rows);
    cr_assert(same(sgot, got, (size_t)n * 4), "whole weight");
    K->nf4_dequant_rows(got, &kw, 3, 4);
    S->nf4_dequant_rows(sgot, &sw, 3, 4);
    cr_assert(same(sgot, got, (size_t)n * 4), "a tile of rows");
    S->free((void *)sw.packed); S->free((void *)sw.absmax); S->free(sgot);
    nf4_free(&q);
    free(w); free(absmax); free(got);
}
