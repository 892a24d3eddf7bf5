/*
 * emu_attention.cpp: runs the CUDA attention kernels (kernels/cuda/cuda_attention_kernels.cuh)
 * on the host under tests/gpu/cuda_emu.h and compares them with the CPU backend, for checking
 * the kernels' indexing and arithmetic where no GPU exists. A development check, not part of
 * the build (it needs a C++20 compiler and runs slowly: one thread per CUDA thread):
 *
 *   g++ -std=c++20 -O1 -Wno-unknown-pragmas -Ikernels -Ikernels/cuda -Ibuild-cuda -Icommon \
 *       tests/gpu/emu_attention.cpp \
 *       build-cuda/librubric.a $(pkg-config --libs openblas libxxhash) -lm -fopenmp \
 *       $(mpicc --showme:link) -o /tmp/emu_attention && /tmp/emu_attention
 */
#include "cuda_emu.h"

#include <cstdio>
#include <cstdlib>

#include "cuda_attention_kernels.cuh"

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

static int run_case(int n_seg, int heads, int kv_heads, int d, const int *nq, const int *nk,
                    bool backward)
{
    std::vector<int32_t> cu_q(n_seg + 1, 0), cu_k(n_seg + 1, 0);
    int max_q = 0;
    for (int s = 0; s < n_seg; s++) {
        cu_q[s + 1] = cu_q[s] + nq[s];
        cu_k[s + 1] = cu_k[s] + nk[s];
        max_q = std::max(max_q, nq[s]);
    }
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
    size_t fwd_smem = (size_t)ATT_BQ * d + (size_t)ATT_BK * (d + 1) + (size_t)ATT_BK * d;
    smem_poison();
    emu_launch(dim3(n_seg * tiles, heads), dim3(ATT_THREADS), [&] {
        att_fwd_kernel(eout.data(), else_.data(), q.data(), k.data(), v.data(), cu_q.data(),
                       cu_k.data(), tiles, heads, kv_heads, d, scale);
    });
    double e_out = max_rel(eout, out), e_lse = max_rel(else_, lse);
    int bad = !(e_out <= 2e-5) || !(e_lse <= 1e-6) || smem_overrun(fwd_smem);
    printf("fwd  seg %d heads %d/%d d %d: out %.2e lse %.2e%s\n", n_seg, heads, kv_heads, d,
           e_out, e_lse, bad ? "  FAIL" : "");
    if (!backward)
        return bad;

    std::vector<float> dq(sq, NAN), dk(sk, NAN), dv(sk, NAN);
    std::vector<float> edq(sq, NAN), edk(sk, NAN), edv(sk, NAN);
    cpu_attention_bwd(dq.data(), dk.data(), dv.data(), g.data(), q.data(), k.data(), v.data(),
                      out.data(), lse.data(), cu_q.data(), cu_k.data(), n_seg, max_q, heads,
                      kv_heads, d, scale);
    size_t dq_smem = 2 * (size_t)ATT_BQ * d + 2 * (size_t)ATT_BK * (d + 1);
    size_t dkv_smem = dq_smem + 2 * (size_t)ATT_BK;
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

int main()
{
    int bad = 0;
    { int n[] = {1, 5, 33, 70}; bad += run_case(4, 4, 2, 16, n, n, true); }
    { int n[] = {16, 17, 40}; bad += run_case(3, 4, 4, 64, n, n, true); }
    { int n[] = {50, 31}; bad += run_case(2, 4, 2, 128, n, n, true); }
    { int n[] = {20}; bad += run_case(1, 2, 1, 256, n, n, true); }
    { int q[] = {1, 20, 7}, k[] = {50, 20, 90}; bad += run_case(3, 4, 2, 64, q, k, false); }
    printf(bad ? "emu_attention: %d case(s) FAILED\n" : "emu_attention: all cases passed\n", bad);
    return bad != 0;
}
