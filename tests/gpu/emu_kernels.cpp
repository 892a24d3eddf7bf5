/*
 * emu_kernels.cpp: runs the CUDA backend's elementwise, row, norm, RoPE, SwiGLU, dropout, NF4,
 * AdamW, sum-of-squares and cross-entropy kernels on the host under tests/gpu/cuda_emu.h and
 * compares them with the CPU backend (the same tolerances as tests/test_kernels_cuda.c): a
 * unit test of every build (tests/gpu/meson.build), where no GPU is needed.
 *
 * The emulator's launches use small blocks and grids, so the grid-stride loops wrap.
 */
#include "cuda_emu.h"

#include <cstdio>
#include <cstdlib>

#include "cuda_basic_kernels.cuh"
#include "cuda_xent_kernels.cuh"

extern "C" {
#include "cpu/cpu_ops.h"
#include "../test_rand.h"
}

typedef std::vector<float> vec;
static uint64_t rng = 7;
static float frand()
{
    return test_frand(&rng);
}
static vec rnd(size_t n, float s)
{
    vec v(n);
    for (auto &x : v)
        x = s * frand();
    return v;
}

static int failures;
static void check(const char *what, const vec &got, const vec &want, double tol)
{
    double num = 0, den = 0;
    int bad = got.size() != want.size();
    for (size_t i = 0; !bad && i < got.size(); i++) {
        if (!std::isfinite(got[i]) || !std::isfinite(want[i]) ||
            (tol == 0 && std::memcmp(&got[i], &want[i], sizeof(float)) != 0))
            bad = 1;
        num = std::max(num, std::fabs((double)got[i] - want[i]));
        den = std::max(den, std::fabs((double)want[i]));
    }
    double rel = num / (den > 0 ? den : 1);
    bad |= !(rel <= tol);
    failures += bad;
    printf("%-28s max rel %.2e (tolerance %.0e)%s\n", what, rel, tol, bad ? "  FAIL" : "");
}

#define EW dim3(3), dim3(64) /* elementwise launches: 3 blocks of 64 threads */

static void elementwise()
{
    int rows = 13, cols = 77;
    size_t n = (size_t)rows * cols;
    vec x = rnd(n, 2), y = rnd(n, 2), bias = rnd(cols, 1), ey = y;
    cpu_axpy((int64_t)n, 0.37f, x.data(), y.data());
    emu_launch(EW, [&] { axpy_kernel((int64_t)n, 0.37f, x.data(), ey.data()); });
    check("axpy", ey, y, 0);
    cpu_scale((int64_t)n, -1.3f, y.data());
    emu_launch(EW, [&] { scale_kernel((int64_t)n, -1.3f, ey.data()); });
    check("scale", ey, y, 0);
    cpu_add(y.data(), x.data(), (int64_t)n);
    emu_launch(EW, [&] { add_kernel(ey.data(), x.data(), (int64_t)n); });
    check("add", ey, y, 0);
    cpu_add_bias(y.data(), bias.data(), rows, cols);
    emu_launch(EW, [&] { add_bias_kernel(ey.data(), bias.data(), (int64_t)n, cols); });
    check("add_bias", ey, y, 0);

    vec g = rnd(n, 6), u = rnd(n, 2), dh = rnd(n, 1), h(n), eh(n, NAN);
    cpu_swiglu_fwd(h.data(), g.data(), u.data(), (int64_t)n);
    emu_launch(EW, [&] { swiglu_fwd_kernel(eh.data(), g.data(), u.data(), (int64_t)n); });
    check("swiglu_fwd", eh, h, 1e-6);
    vec dg(n), du(n), edg(n, NAN), edu(n, NAN);
    cpu_swiglu_bwd(dg.data(), du.data(), dh.data(), g.data(), u.data(), (int64_t)n);
    emu_launch(EW, [&] {
        swiglu_bwd_kernel(edg.data(), edu.data(), dh.data(), g.data(), u.data(), (int64_t)n);
    });
    check("swiglu_bwd dgate", edg, dg, 1e-6);
    check("swiglu_bwd dup", edu, du, 1e-6);

    vec o(n), eo(n, NAN);
    cpu_dropout(o.data(), x.data(), (int64_t)n, 0.25f, 77);
    float keep = 1.0f / (1.0f - 0.25f);
    emu_launch(EW, [&] { dropout_kernel(eo.data(), x.data(), (int64_t)n, 0.25f, keep, 77); });
    check("dropout", eo, o, 0);

    vec p = rnd(n, 1), m(n, 0), v(n, 0), ep = p, em = m, ev = v;
    for (int step = 1; step <= 3; step++) {
        vec gr = rnd(n, 0.1f);
        adamw_scalars sc = adamw_scalars_at(1e-3, 0.9, 0.999, 1e-8, 0.01, step);
        cpu_adamw(p.data(), gr.data(), m.data(), v.data(), (int64_t)n, &sc);
        emu_launch(EW, [&] {
            adamw_kernel(ep.data(), gr.data(), em.data(), ev.data(), (int64_t)n, sc);
        });
    }
    check("adamw p", ep, p, 0);
    check("adamw m", em, m, 0);
    check("adamw v", ev, v, 0);
}

static void rows_and_nf4()
{
    int vocab = 50, dim = 24, n = 17;
    vec table = rnd((size_t)vocab * dim, 1), etable = table;
    std::vector<uint32_t> tok(n);
    std::vector<int32_t> idx(n);
    for (int i = 0; i < n; i++) {
        tok[i] = (uint32_t)((i * 37 + 11) % vocab);
        idx[i] = (i * 7 + 3) % vocab;
    }
    vec out((size_t)n * dim), eout((size_t)n * dim, NAN), gth = out, egth = eout;
    cpu_embedding(out.data(), table.data(), tok.data(), n, dim);
    emu_launch(EW, [&] {
        gather_kernel<uint32_t>(eout.data(), table.data(), tok.data(), n, dim);
    });
    check("embedding", eout, out, 0);
    cpu_gather_rows(gth.data(), table.data(), idx.data(), n, dim);
    emu_launch(EW, [&] {
        gather_kernel<int32_t>(egth.data(), table.data(), idx.data(), n, dim);
    });
    check("gather_rows", egth, gth, 0);
    cpu_scatter_add_rows(table.data(), out.data(), idx.data(), n, dim);
    emu_launch(EW, [&] { scatter_add_kernel(etable.data(), out.data(), idx.data(), n, dim); });
    check("scatter_add_rows", etable, table, 0);

    /* append_rows: 3 segments of 2, 0 and 5 rows after 4, 1 and 0 cached ones; the
     * destinations' other rows stay NaN on both sides */
    int32_t cu[4] = {0, 2, 2, 7}, end[3] = {6, 1, 5}, cap = 8;
    std::vector<vec> dst(3, vec((size_t)cap * dim, NAN)), edst = dst;
    float *dp[3] = {dst[0].data(), dst[1].data(), dst[2].data()};
    float *edp[3] = {edst[0].data(), edst[1].data(), edst[2].data()};
    cpu_append_rows(dp, out.data(), cu, end, 3, 7, dim);
    emu_launch(EW, [&] { append_rows_kernel(edp, out.data(), cu, end, 3, 7, dim); });
    for (int sg = 0; sg < 3; sg++) {
        bool same = std::memcmp(dst[sg].data(), edst[sg].data(), sizeof(float) * cap * dim) == 0;
        failures += !same;
        printf("%-28s segment %d %s\n", "append_rows", sg, same ? "bitwise equal" : "FAIL");
    }

    int64_t rows = 9, cols = 70, ne = rows * cols;
    std::vector<uint8_t> packed((size_t)(ne + 1) / 2);
    for (auto &b : packed)
        b = (uint8_t)(frand() * 127 + 128);
    vec absmax = rnd((size_t)(ne + 63) / 64, 2);
    kernel_nf4_weight w = {packed.data(), absmax.data(), rows, cols, 64};
    vec deq((size_t)(5 * cols)), edeq((size_t)(5 * cols), NAN);
    cpu_nf4_dequant_rows(deq.data(), &w, 3, 5);
    emu_launch(EW, [&] {
        nf4_dequant_kernel(edeq.data(), packed.data(), absmax.data(), 3 * cols, 5 * cols, 64);
    });
    check("nf4_dequant_rows", edeq, deq, 0);
}

static unsigned row_threads(int dim) /* as cuda_basic.cu */
{
    int t = (dim + 31) / 32 * 32;
    return (unsigned)(t < 32 ? 32 : t > 256 ? 256 : t);
}

static void norms_rope_sumsq()
{
    int shapes[][2] = {{6, 300}, {5, 7}, {4, 64}};
    for (auto &sh : shapes) {
        int rows = sh[0], dim = sh[1];
        size_t n = (size_t)rows * dim;
        vec x = rnd(n, 2), w = rnd(dim, 1), dy = rnd(n, 1);
        vec y(n), rstd(rows), ey(n, NAN), erstd(rows, NAN);
        cpu_rmsnorm_fwd(y.data(), rstd.data(), x.data(), w.data(), rows, dim, 1e-6f);
        emu_launch(dim3(rows), dim3(row_threads(dim)), [&] {
            rmsnorm_fwd_kernel(ey.data(), erstd.data(), x.data(), w.data(), dim, 1e-6f);
        });
        check("rmsnorm_fwd y", ey, y, 2e-6);
        check("rmsnorm_fwd rstd", erstd, rstd, 2e-6);
        vec dx = dy, edx = dy;
        cpu_rmsnorm_bwd(dx.data(), dx.data(), x.data(), w.data(), rstd.data(), rows, dim);
        emu_launch(dim3(rows), dim3(row_threads(dim)), [&] {
            rmsnorm_bwd_kernel(edx.data(), edx.data(), x.data(), w.data(), rstd.data(), dim);
        });
        check("rmsnorm_bwd (in place)", edx, dx, 1e-5);
    }

    int n_tok = 20, heads = 3, hd = 64;
    size_t n = (size_t)n_tok * heads * hd;
    std::vector<int32_t> pos(n_tok);
    for (int t = 0; t < n_tok; t++)
        pos[t] = (t * 97) % 4096;
    vec x = rnd(n, 1), ex = x, inv(hd / 2);
    for (int i = 0; i < hd / 2; i++)
        inv[i] = 1.0f / powf(1e6f, (float)(2 * i) / (float)hd);
    cpu_rope_fwd(x.data(), pos.data(), n_tok, heads, hd, 1e6f);
    emu_launch(EW, [&] {
        rope_kernel(ex.data(), pos.data(), inv.data(), n_tok, heads, hd, 1.0f);
    });
    check("rope_fwd", ex, x, 1e-5);
    cpu_rope_bwd(x.data(), pos.data(), n_tok, heads, hd, 1e6f);
    emu_launch(EW, [&] {
        rope_kernel(ex.data(), pos.data(), inv.data(), n_tok, heads, hd, -1.0f);
    });
    check("rope_bwd", ex, x, 1e-5);

    int64_t ns = 2 * SUMSQ_CHUNK + 1234, parts = (ns + SUMSQ_CHUNK - 1) / SUMSQ_CHUNK;
    vec xs = rnd((size_t)ns, 3);
    std::vector<double> part((size_t)parts + 1, NAN);
    emu_launch(dim3((unsigned)parts), dim3(64),
               [&] { sumsq_chunks_kernel(xs.data(), ns, part.data()); });
    emu_launch(dim3(1), dim3(64),
               [&] { sumsq_total_kernel(part.data(), parts, part.data() + parts); });
    double want = cpu_sumsq(ns, xs.data()), got = part[(size_t)parts];
    int bad = !(std::fabs(got - want) <= 1e-12 * want);
    failures += bad;
    printf("%-28s %.17g vs %.17g%s\n", "sumsq", got, want, bad ? "  FAIL" : "");
}

static void xent()
{
    int n = 5, dim = 16, vocab = 1000;
    vec hid = rnd((size_t)n * dim, 1), w = rnd((size_t)vocab * dim, 0.5f);
    std::vector<int32_t> tg(n);
    for (int i = 0; i < n; i++)
        tg[i] = (i * 7919 + 13) % vocab;
    vec rl(n), gh((size_t)n * dim);
    double want = cpu_lm_head_xent(hid.data(), w.data(), tg.data(), n, dim, vocab, 0.01f,
                                   rl.data(), gh.data());
    vec logits((size_t)n * vocab), erl(n, NAN), egh((size_t)n * dim, NAN);
    std::vector<double> loss(n, NAN);
    cpu_gemm(0, 1, n, vocab, dim, 1.0f, hid.data(), dim, w.data(), dim, 0.0f, logits.data(),
             vocab);
    emu_launch(dim3(n), dim3(128), [&] {
        xent_row_kernel(logits.data(), vocab, tg.data(), 0.01f, 1, loss.data(), erl.data());
    });
    cpu_gemm(0, 0, n, dim, vocab, 1.0f, logits.data(), vocab, w.data(), dim, 0.0f, egh.data(),
             dim);
    double got = 0;
    for (double l : loss)
        got += l;
    int bad = !(std::fabs(got - want) <= 1e-6 * std::fabs(want));
    failures += bad;
    printf("%-28s %.10g vs %.10g%s\n", "lm_head_xent loss", got, want, bad ? "  FAIL" : "");
    check("lm_head_xent row_loss", erl, rl, 1e-5);
    check("lm_head_xent dhidden", egh, gh, 5e-5);
}

int main()
{
    elementwise();
    rows_and_nf4();
    norms_rope_sumsq();
    xent();
    printf(failures ? "emu_kernels: %d check(s) FAILED\n" : "emu_kernels: all checks passed\n",
           failures);
    return failures != 0;
}
