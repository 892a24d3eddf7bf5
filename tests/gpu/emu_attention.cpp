/*
 * emu_attention.cpp: runs the CUDA attention kernels (kernels/cuda/cuda_attention_kernels.cuh)
 * and the tensor-core forward (cuda_attention_tc_kernels.cuh) on the host under
 * tests/gpu/cuda_emu.h and compares them with the CPU backend, for checking the kernels'
 * indexing and arithmetic where no GPU exists. A unit test of every build (tests/gpu/
 * meson.build); it needs a C++20 compiler and runs slowly: one thread per CUDA thread.
 */
#include "cuda_emu.h"

#include <cstdio>
#include <cstdlib>

#include "cuda_attention_kernels.cuh"
#include "cuda_attention_tc_kernels.cuh"

extern "C" {
#include "cpu/cpu_ops.h"
#include "../test_rand.h"
}

static uint64_t rng = 99;
static float frand()
{
    return test_frand(&rng);
}

static double max_rel(const std::vector<float> &got, const std::vector<float> &want)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < got.size(); i++) {
        if (!std::isfinite(got[i]))
            return INFINITY;
        num = std::max(num, std::fabs((double)got[i] - want[i]));
        den = std::max(den, std::fabs((double)want[i]));
    }
    return num / (den > 0 ? den : 1);
}

/* Poison the whole emulated shared memory with NaN before a launch: a read of an unwritten
 * or out-of-range element makes the result NaN (and fails). After the launch, nothing past
 * the kernel's stated size (its launch's dynamic shared memory) may have been written. */
static void smem_poison() { std::fill(emu_dynamic_smem, emu_dynamic_smem + 64 * 1024, NAN); }
static int smem_overrun(size_t floats)
{
    for (size_t i = floats; i < 64 * 1024; i++)
        if (!std::isnan(emu_dynamic_smem[i])) {
            printf("shared memory written past the %zu floats the launch asks for\n", floats);
            return 1;
        }
    return 0;
}

/* the cumulative offsets of segment lengths (n_seg + 1 entries); returns the longest */
static int cu_of(std::vector<int32_t> &cu, int n_seg, const int *len)
{
    cu.assign(n_seg + 1, 0);
    int longest = 0;
    for (int s = 0; s < n_seg; s++) {
        cu[s + 1] = cu[s] + len[s];
        longest = std::max(longest, len[s]);
    }
    return longest;
}

/* The keys of a packed forward as attention_fwd_rows takes them: each segment's keys and
 * values copied into a cache of its own, with 7 rows of NaN past its k_len (a read beyond the
 * keys poisons the output). */
struct kv_rows {
    std::vector<std::vector<float>> kc, vc;
    std::vector<const float *> kp, vp;
    std::vector<int32_t> len;
    kv_rows(const std::vector<float> &k, const std::vector<float> &v,
            const std::vector<int32_t> &cu_k, int n_seg, int kvd)
        : kc(n_seg), vc(n_seg), kp(n_seg), vp(n_seg), len(n_seg)
    {
        for (int s = 0; s < n_seg; s++) {
            len[s] = cu_k[s + 1] - cu_k[s];
            size_t from = (size_t)cu_k[s] * kvd, n = (size_t)len[s] * kvd;
            kc[s].assign((size_t)(len[s] + 7) * kvd, NAN);
            vc[s].assign((size_t)(len[s] + 7) * kvd, NAN);
            std::copy(k.begin() + from, k.begin() + from + n, kc[s].begin());
            std::copy(v.begin() + from, v.begin() + from + n, vc[s].begin());
            kp[s] = kc[s].data();
            vp[s] = vc[s].data();
        }
    }
    att_keys keys() const { return {NULL, NULL, NULL, kp.data(), vp.data(), len.data()}; }
};

static att_keys packed_keys(const std::vector<float> &k, const std::vector<float> &v,
                            const std::vector<int32_t> &cu_k)
{
    return {k.data(), v.data(), cu_k.data(), NULL, NULL, NULL};
}

/* 0 when the rows forward wrote bitwise what the packed one did */
static int rows_differ(const char *what, const std::vector<float> &rows,
                       const std::vector<float> &packed)
{
    int bad = rows.size() != packed.size() ||
              std::memcmp(rows.data(), packed.data(), sizeof(float) * rows.size()) != 0;
    printf("%s: attention_fwd_rows (one cache per segment) %s the packed forward%s\n", what,
           bad ? "differs from" : "bitwise equal to", bad ? "  FAIL" : "");
    return bad;
}

static int run_case(int n_seg, int heads, int kv_heads, int d, const int *nq, const int *nk,
                    bool backward)
{
    std::vector<int32_t> cu_q, cu_k;
    int max_q = cu_of(cu_q, n_seg, nq);
    cu_of(cu_k, n_seg, nk);
    int Tq = cu_q[n_seg], Tk = cu_k[n_seg];
    size_t sq = (size_t)Tq * heads * d, sk = (size_t)Tk * kv_heads * d, sl = (size_t)Tq * heads;
    std::vector<float> q(sq), k(sk), v(sk), g(sq);
    for (auto *vec : {&q, &k, &v, &g})
        for (auto &x : *vec)
            x = 2 * frand();
    float scale = 1.0f / std::sqrt((float)d);
    int tiles = (max_q + ATT_BQ - 1) / ATT_BQ;

    std::vector<float> out(sq, NAN), lse(sl, NAN), eout(sq, NAN), else_(sl, NAN);
    cpu_attention_fwd(out.data(), lse.data(), q.data(), k.data(), v.data(), cu_q.data(),
                      cu_k.data(), n_seg, max_q, heads, kv_heads, d, scale);
    size_t fwd_smem = att_fwd_smem_floats(d);
    smem_poison();
    emu_launch(dim3(n_seg * tiles, heads), dim3(ATT_THREADS), [&] {
        att_fwd_kernel(eout.data(), else_.data(), q.data(), packed_keys(k, v, cu_k),
                       cu_q.data(), tiles, heads, kv_heads, d, scale);
    });
    double e_out = max_rel(eout, out), e_lse = max_rel(else_, lse);
    int bad = !(e_out <= 2e-5) || !(e_lse <= 1e-6) || smem_overrun(fwd_smem);
    kv_rows kr(k, v, cu_k, n_seg, kv_heads * d);
    std::vector<float> rout(sq, NAN);
    emu_launch(dim3(n_seg * tiles, heads), dim3(ATT_THREADS), [&] {
        att_fwd_kernel(rout.data(), NULL, q.data(), kr.keys(), cu_q.data(), tiles, heads,
                       kv_heads, d, scale);
    });
    bad |= rows_differ("fwd", rout, eout);
    printf("fwd  seg %d heads %d/%d d %d: out %.2e lse %.2e%s\n", n_seg, heads, kv_heads, d,
           e_out, e_lse, bad ? "  FAIL" : "");
    if (!backward)
        return bad;

    std::vector<float> dq(sq, NAN), dk(sk, NAN), dv(sk, NAN);
    std::vector<float> edq(sq, NAN), edk(sk, NAN), edv(sk, NAN);
    cpu_attention_bwd(dq.data(), dk.data(), dv.data(), g.data(), q.data(), k.data(), v.data(),
                      out.data(), lse.data(), cu_q.data(), cu_k.data(), n_seg, max_q, heads,
                      kv_heads, d, scale);
    size_t dq_smem = att_dq_smem_floats(d), dkv_smem = att_dkv_smem_floats(d);
    smem_poison();
    emu_launch(dim3(n_seg * tiles, heads), dim3(ATT_THREADS), [&] {
        att_bwd_dq_kernel(edq.data(), g.data(), q.data(), k.data(), v.data(), out.data(),
                          lse.data(), cu_q.data(), cu_k.data(), tiles, heads, kv_heads, d,
                          scale);
    });
    int overrun = smem_overrun(dq_smem);
    smem_poison();
    emu_launch(dim3(n_seg * tiles, kv_heads), dim3(ATT_THREADS), [&] {
        att_bwd_dkv_kernel(edk.data(), edv.data(), g.data(), q.data(), k.data(), v.data(),
                           out.data(), lse.data(), cu_q.data(), cu_k.data(), tiles, heads,
                           kv_heads, d, scale);
    });
    double e_dq = max_rel(edq, dq), e_dk = max_rel(edk, dk), e_dv = max_rel(edv, dv);
    overrun |= smem_overrun(dkv_smem);
    int bad_b = !(e_dq <= 1e-4) || !(e_dk <= 1e-4) || !(e_dv <= 1e-4) || overrun;
    printf("bwd  seg %d heads %d/%d d %d: dq %.2e dk %.2e dv %.2e%s\n", n_seg, heads, kv_heads,
           d, e_dq, e_dk, e_dv, bad_b ? "  FAIL" : "");
    return bad || bad_b;
}

/* bf16 rounding, as the tensor-core kernel's tile loads do it */
static std::vector<float> bf16_rounded(const std::vector<float> &x)
{
    std::vector<float> y(x.size());
    for (size_t i = 0; i < x.size(); i++)
        y[i] = __bfloat162float(__float2bfloat16(x[i]));
    return y;
}

template <int D>
static void tc_bwd_launch(std::vector<float> &dq, std::vector<float> &dk, std::vector<float> &dv,
                          const std::vector<float> &g, const std::vector<float> &q,
                          const std::vector<float> &k, const std::vector<float> &v,
                          const std::vector<float> &out, const std::vector<float> &lse,
                          const std::vector<int32_t> &cu, int n_seg, int max_q, int heads,
                          int kv_heads, float scale)
{
    int tiles = (max_q + 63) / 64;
    emu_launch(dim3(n_seg * tiles, heads), dim3(ATT_TC_THREADS), [&] {
        att_bwd_dq_tc_kernel<D>(dq.data(), g.data(), q.data(), k.data(), v.data(), out.data(),
                                lse.data(), cu.data(), cu.data(), tiles, heads, kv_heads,
                                scale);
    });
    if (smem_overrun((att_tc_bwd_layout<D>::bytes + 3) / 4))
        dq[0] = NAN;
    smem_poison();
    emu_launch(dim3(n_seg * tiles, kv_heads), dim3(ATT_TC_THREADS), [&] {
        att_bwd_dkv_tc_kernel<D>(dk.data(), dv.data(), g.data(), q.data(), k.data(), v.data(),
                                 out.data(), lse.data(), cu.data(), cu.data(), tiles, heads,
                                 kv_heads, scale);
    });
    if (smem_overrun((att_tc_bwd_layout<D>::bytes + 3) / 4))
        dk[0] = NAN;
}

template <int D>
static void tc_launch(std::vector<float> &out, float *lse, const std::vector<float> &q,
                      const att_keys &ak, const std::vector<int32_t> &cu_q, int n_seg,
                      int max_q, int heads, int kv_heads, float scale)
{
    int tiles = (max_q + ATT_TC_BQ - 1) / ATT_TC_BQ;
    emu_launch(dim3(n_seg * tiles, heads), dim3(ATT_TC_THREADS), [&] {
        att_fwd_tc_kernel<D>(out.data(), lse, q.data(), ak, cu_q.data(), tiles, heads, kv_heads,
                             scale);
    });
}

static void tc_launch_d(int d, std::vector<float> &out, float *lse, const std::vector<float> &q,
                        const att_keys &ak, const std::vector<int32_t> &cu_q, int n_seg,
                        int max_q, int heads, int kv_heads, float scale)
{
    if (d == 32)
        tc_launch<32>(out, lse, q, ak, cu_q, n_seg, max_q, heads, kv_heads, scale);
    else if (d == 64)
        tc_launch<64>(out, lse, q, ak, cu_q, n_seg, max_q, heads, kv_heads, scale);
    else
        tc_launch<128>(out, lse, q, ak, cu_q, n_seg, max_q, heads, kv_heads, scale);
}

/* The tensor-core backward (cu_q == cu_k) from the CPU's forward results against the CPU
 * backward: on fp32 inputs within test_kernels_cuda's bf16 tolerance (3e-2), and on inputs
 * rounded to bf16 (then only P's and dS's rounding and the order of sums differ: 6e-3). */
static int run_tc_bwd(int n_seg, int heads, int kv_heads, int d, const int *n,
                      const std::vector<float> &q, const std::vector<float> &k,
                      const std::vector<float> &v, bool rounded)
{
    std::vector<int32_t> cu;
    int max_q = cu_of(cu, n_seg, n);
    int T = cu[n_seg];
    size_t sq = (size_t)T * heads * d, sk = (size_t)T * kv_heads * d;
    std::vector<float> g(sq);
    for (auto &x : g)
        x = frand();
    if (rounded)
        g = bf16_rounded(g);
    float scale = 1.0f / std::sqrt((float)d);
    std::vector<float> out(sq), lse((size_t)T * heads);
    cpu_attention_fwd(out.data(), lse.data(), q.data(), k.data(), v.data(), cu.data(),
                      cu.data(), n_seg, max_q, heads, kv_heads, d, scale);
    std::vector<float> dq(sq, NAN), dk(sk, NAN), dv(sk, NAN);
    cpu_attention_bwd(dq.data(), dk.data(), dv.data(), g.data(), q.data(), k.data(), v.data(),
                      out.data(), lse.data(), cu.data(), cu.data(), n_seg, max_q, heads,
                      kv_heads, d, scale);
    std::vector<float> edq(sq, NAN), edk(sk, NAN), edv(sk, NAN);
    smem_poison();
    if (d == 32)
        tc_bwd_launch<32>(edq, edk, edv, g, q, k, v, out, lse, cu, n_seg, max_q, heads,
                          kv_heads, scale);
    else if (d == 64)
        tc_bwd_launch<64>(edq, edk, edv, g, q, k, v, out, lse, cu, n_seg, max_q, heads,
                          kv_heads, scale);
    else
        tc_bwd_launch<128>(edq, edk, edv, g, q, k, v, out, lse, cu, n_seg, max_q, heads,
                           kv_heads, scale);
    double e_dq = max_rel(edq, dq), e_dk = max_rel(edk, dk), e_dv = max_rel(edv, dv);
    double tol = rounded ? 6e-3 : 3e-2;
    int bad = !(e_dq <= tol) || !(e_dk <= tol) || !(e_dv <= tol);
    printf("bwd tensor cores seg %d heads %d/%d d %d%s: dq %.2e dk %.2e dv %.2e%s\n", n_seg,
           heads, kv_heads, d, rounded ? " (bf16-rounded inputs)" : "", e_dq, e_dk, e_dv,
           bad ? "  FAIL" : "");
    return bad;
}

/* The tensor-core forward against the CPU backend twice: on the same fp32 inputs, within the
 * bf16 tolerance that test_kernels_cuda states (out 2e-2, lse 5e-3 of the largest value), and
 * on inputs already rounded to bf16, where only P's rounding and the order of sums differ
 * (out 5e-3, lse 1e-5): a tighter net for indexing and masking mistakes. With nk == NULL the
 * case is a training one (keys = queries) and the backward runs too. */
static int run_tc_case(int n_seg, int heads, int kv_heads, int d, const int *nq, const int *nk)
{
    bool backward = nk == NULL;
    if (backward)
        nk = nq;
    std::vector<int32_t> cu_q, cu_k;
    int max_q = cu_of(cu_q, n_seg, nq);
    cu_of(cu_k, n_seg, nk);
    int Tq = cu_q[n_seg], Tk = cu_k[n_seg];
    size_t sq = (size_t)Tq * heads * d, sk = (size_t)Tk * kv_heads * d, sl = (size_t)Tq * heads;
    std::vector<float> q(sq), k(sk), v(sk);
    for (auto *vec : {&q, &k, &v})
        for (auto &x : *vec)
            x = 2 * frand();
    float scale = 1.0f / std::sqrt((float)d);
    std::vector<float> qr = bf16_rounded(q), kr = bf16_rounded(k), vr = bf16_rounded(v);

    std::vector<float> out(sq, NAN), lse(sl, NAN), outr(sq, NAN), lser(sl, NAN);
    cpu_attention_fwd(out.data(), lse.data(), q.data(), k.data(), v.data(), cu_q.data(),
                      cu_k.data(), n_seg, max_q, heads, kv_heads, d, scale);
    cpu_attention_fwd(outr.data(), lser.data(), qr.data(), kr.data(), vr.data(), cu_q.data(),
                      cu_k.data(), n_seg, max_q, heads, kv_heads, d, scale);
    std::vector<float> eout(sq, NAN), else_(sl, NAN);
    smem_poison();
    tc_launch_d(d, eout, else_.data(), q, packed_keys(k, v, cu_k), cu_q, n_seg, max_q, heads,
                kv_heads, scale);
    size_t bytes = d == 32   ? att_tc_layout<32>::bytes
                   : d == 64 ? att_tc_layout<64>::bytes
                             : att_tc_layout<128>::bytes;
    double e_out = max_rel(eout, out), e_lse = max_rel(else_, lse);
    double r_out = max_rel(eout, outr), r_lse = max_rel(else_, lser);
    int bad = !(e_out <= 2e-2) || !(e_lse <= 5e-3) || !(r_out <= 5e-3) || !(r_lse <= 1e-5) ||
              smem_overrun((bytes + 3) / 4);
    kv_rows rows(k, v, cu_k, n_seg, kv_heads * d);
    std::vector<float> rout(sq, NAN);
    tc_launch_d(d, rout, NULL, q, rows.keys(), cu_q, n_seg, max_q, heads, kv_heads, scale);
    bad |= rows_differ("fwd tensor cores", rout, eout);
    printf("fwd tensor cores seg %d heads %d/%d d %d: out %.2e lse %.2e (bf16-rounded inputs: "
           "out %.2e lse %.2e)%s\n", n_seg, heads, kv_heads, d, e_out, e_lse, r_out, r_lse,
           bad ? "  FAIL" : "");
    if (backward) {
        bad += run_tc_bwd(n_seg, heads, kv_heads, d, nq, q, k, v, false);
        bad += run_tc_bwd(n_seg, heads, kv_heads, d, nq, qr, kr, vr, true);
    }
    return bad;
}

int main()
{
    int bad = 0;
    { int n[] = {1, 5, 33, 70}; bad += run_case(4, 4, 2, 16, n, n, true); }
    { int n[] = {16, 17, 40}; bad += run_case(3, 4, 4, 64, n, n, true); }
    { int n[] = {50, 31}; bad += run_case(2, 4, 2, 128, n, n, true); }
    { int n[] = {20}; bad += run_case(1, 2, 1, 256, n, n, true); }
    { int q[] = {1, 20, 7}, k[] = {50, 20, 90}; bad += run_case(3, 4, 2, 64, q, k, false); }
    /* the tensor-core forward: training (cu_q == cu_k), partial tiles, GQA, prefill */
    { int n[] = {1, 5, 64, 65, 130}; bad += run_tc_case(5, 4, 2, 32, n, NULL); }
    { int n[] = {17, 100}; bad += run_tc_case(2, 2, 2, 64, n, NULL); }
    { int n[] = {70, 3}; bad += run_tc_case(2, 4, 2, 128, n, NULL); }
    { int q[] = {1, 20, 7, 64}, k[] = {50, 20, 90, 130};
      bad += run_tc_case(4, 4, 1, 64, q, k); }
    { int q[] = {1, 2}, k[] = {200, 64}; bad += run_tc_case(2, 2, 1, 128, q, k); }
    printf(bad ? "emu_attention: %d case(s) FAILED\n" : "emu_attention: all cases passed\n", bad);
    return bad != 0;
}
